%%% @doc emmap and the world outside the VM: other OS processes, `kill -9', truncation by
%%% someone else, leaks of descriptors and mappings, and security basics.
%%%
%%% Tests that need a second VM start `erl' as an OS process through a port (see
%%% `start_child/2'); the child runs one of the `child_*' functions exported below and talks
%%% over stdout, one line per acknowledgement. Every child is killed in an `after' clause
%%% and every wait has a timeout, so a misbehaving child cannot hang the suite.
%%%
%%% CI runs the small variants; `make soak' (EMMAP_SOAK=1) runs the long ones.
-module(emmap_os_tests).

-include_lib("eunit/include/eunit.hrl").
-include_lib("kernel/include/file.hrl").

-import(emmap_test_lib, [mode/1, maps_lines/0, mapped/1, open_fds/0]).

%% Run inside child VMs.
-export([child_durability/3, child_hammer/4, child_truncate/3, child_ro_resize/2,
         child_anon_shared_resize/0]).

-define(MAGIC, 16#E33A9D0C5EEDF00D).

%%%===========================================================================
%%% helpers
%%%===========================================================================

soak() -> os:getenv("EMMAP_SOAK") =/= false.

tmp(Tag) ->
    filename:join("/tmp", "emmap_os_" ++ Tag ++ "_" ++ os:getpid() ++ "_"
                  ++ integer_to_list(erlang:unique_integer([positive]))).


%% Polls Pred every 10 ms for up to Ms milliseconds (destructors run after GC).
wait_until(Pred, Ms) when Ms =< 0 -> Pred();
wait_until(Pred, Ms) ->
    case Pred() of
        true -> true;
        false ->
            erlang:garbage_collect(),
            timer:sleep(10),
            wait_until(Pred, Ms - 10)
    end.

%% Starts `erl' running Mod:Fun(Args...) (Args printed with ~p, so any term works) and
%% returns {Port, OsPid}. stdout and stderr come back as lines.
start_child(Fun, Args) ->
    Erl = os:find_executable("erl"),
    Ebin = filename:dirname(code:which(emmap)),
    TestDir = filename:dirname(code:which(?MODULE)),
    Call = lists:flatten(io_lib:format("~s:~s(~s).", [?MODULE, Fun, args_text(Args)])),
    Port = open_port({spawn_executable, Erl},
                     [{args, ["-noshell", "-pa", Ebin, "-pa", TestDir, "-eval", Call]},
                      {line, 4096}, binary, exit_status, use_stdio, stderr_to_stdout]),
    {os_pid, OsPid} = erlang:port_info(Port, os_pid),
    {Port, OsPid}.

args_text(Args) ->
    string:join([lists:flatten(io_lib:format("~p", [A])) || A <- Args], ", ").

kill9(OsPid) ->
    _ = os:cmd("kill -9 " ++ integer_to_list(OsPid) ++ " 2>/dev/null"),
    ok.

%% Kills the child (if still running) and drains its port messages.
stop_child({Port, OsPid}) ->
    kill9(OsPid),
    catch port_close(Port),
    flush_port(Port).

flush_port(Port) ->
    receive {Port, _} -> flush_port(Port) after 0 -> ok end.

%% Next line from the child, or {exit, Status}, or timeout.
next_line(Port, Timeout) ->
    receive
        {Port, {data, {eol, L}}} -> {line, L};
        {Port, {data, {noeol, L}}} -> {line, L};
        {Port, {exit_status, S}} -> {exit, S}
    after Timeout -> timeout
    end.

%% Waits for the child's exit status, draining output.
wait_exit(Port, Timeout) ->
    receive
        {Port, {exit_status, S}} -> S;
        {Port, {data, _}} -> wait_exit(Port, Timeout)
    after Timeout -> timeout
    end.

%%%===========================================================================
%%% 3. No leaks: 100,000 mappings opened and dropped
%%%===========================================================================

%% 100,000 in CI too: it takes 3-6 s on the 2-core CI machine (measured), well under 30 s.
-define(LEAK_TOTAL, 100000).
-define(LEAK_BATCH, 2000).

leak_workload(P, Kind) ->
    case Kind of
        close_copy ->
            {ok, M} = emmap:open(P, [read, write, shared]),
            {ok, <<0>>} = emmap:pread(M, 0, 1),
            ok = emmap:close(M),
            none;
        drop_copy ->
            {ok, M} = emmap:open(P, [read, shared]),
            {ok, <<0>>} = emmap:pread(M, 1, 1),
            none;
        direct_close_keep ->
            {ok, M} = emmap:open(P, [read, shared, direct]),
            {ok, B} = emmap:pread(M, 0, 16),
            ok = emmap:close(M),
            B;
        direct_drop_keep ->
            {ok, M} = emmap:open(P, [read, shared, direct, nolock]),
            {ok, B} = emmap:pread(M, 8, 8),
            B;
        anon_drop ->
            {ok, M} = emmap:open("", 0, 4096, [anon, read, write]),
            ok = emmap:pwrite(M, 0, <<"x">>),
            none;
        anon_resize_close ->
            {ok, M} = emmap:open("", 0, 4096, [anon, read, write, direct]),
            {ok, B} = emmap:pread(M, 0, 8),
            {ok, _} = emmap:resize(M, 8192),
            ok = emmap:close(M),
            B
    end.

leak_kinds() ->
    [close_copy, drop_copy, direct_close_keep, direct_drop_keep, anon_drop, anon_resize_close].

%% One batch in a fresh process: open N mappings, keep the binaries until the end, report
%% the fd and maps counts at their peak, then exit (dropping everything).
leak_batch(P, N) ->
    Kinds = list_to_tuple(leak_kinds()),
    K = tuple_size(Kinds),
    Self = self(),
    {Pid, Ref} = spawn_monitor(fun() ->
        Kept = [leak_workload(P, element(1 + I rem K, Kinds)) || I <- lists:seq(1, N)],
        Peak = {open_fds(), length(maps_lines())},
        %% the kept direct binaries still read the file's bytes
        true = lists:all(fun(none) -> true; (B) -> binary:copy(B) =:= <<0:(8 * byte_size(B))>> end, Kept),
        Self ! {peak, self(), Peak},
        exit(normal)
    end),
    Peak = receive {peak, Pid, Pk} -> Pk end,
    receive {'DOWN', Ref, process, Pid, normal} -> ok end,
    Peak.

no_leaks_after_100k_mappings_test_() ->
    {timeout, 300, fun() ->
        P = tmp("leak"),
        ok = file:write_file(P, <<0:4096/unit:8>>),
        try
            %% warm up: the VM's own allocators settle on the same workload first
            _ = leak_batch(P, 600),
            true = wait_until(fun() -> mapped(P) =:= 0 end, 5000),
            Fds0 = open_fds(), Maps0 = length(maps_lines()),
            T0 = erlang:monotonic_time(millisecond),
            Peaks = [leak_batch(P, ?LEAK_BATCH) || _ <- lists:seq(1, ?LEAK_TOTAL div ?LEAK_BATCH)],
            PeakFds = lists:max([F || {F, _} <- Peaks]),
            PeakMaps = lists:max([M || {_, M} <- Peaks]),
            FdsOk = wait_until(fun() -> open_fds() =< Fds0 end, 5000),
            MapsOk = wait_until(fun() -> length(maps_lines()) =< Maps0 andalso mapped(P) =:= 0 end, 5000),
            T1 = erlang:monotonic_time(millisecond),
            Fds1 = open_fds(), Maps1 = length(maps_lines()),
            io:format(user, "~nleaks: ~w mappings (~w kinds, batches of ~w) in ~w ms: "
                      "fds start/peak/end = ~w/~w/~w, /proc/self/maps lines start/peak/end = ~w/~w/~w~n",
                      [?LEAK_TOTAL, length(leak_kinds()), ?LEAK_BATCH, T1 - T0,
                       Fds0, PeakFds, Fds1, Maps0, PeakMaps, Maps1]),
            ?assert(PeakMaps > Maps0),                  % the workload really mapped things
            ?assert(FdsOk),
            ?assert(MapsOk),
            ?assertEqual(0, mapped(P))
        after
            file:delete(P)
        end
    end}.

%%%===========================================================================
%%% 4. Durability: kill -9 at a random moment, every acknowledged update is there
%%%===========================================================================

-define(DUR_RECORDS, 4000000).              % records the (sparse) log file has room for

%% @doc Child: loops forever incrementing counter 0 and appending record N at N*16 of the
%% shared log mapping, acknowledging each on stdout after the call returned.
child_durability(CountersPath, LogPath, Seed) ->
    rand:seed(exsss, Seed),
    C = emmap:open_counters(CountersPath, 2),
    {ok, M} = emmap:open(LogPath, [read, write, shared]),
    io:put_chars("ready\n"),
    durability_loop(C, M).

durability_loop(C, M) ->
    N = emmap:inc_counter(C, 0),
    io:put_chars(["i ", integer_to_list(N), "\n"]),
    ok = emmap:pwrite(M, N * 16, <<N:64/little, ?MAGIC:64/little>>),
    _ = emmap:inc_counter(C, 1, N),            % counter 1 = sum of all N written
    io:put_chars(["w ", integer_to_list(N), "\n"]),
    case rand:uniform(64) of
        1 -> ok = emmap:flush(M);
        _ -> ok
    end,
    durability_loop(C, M).

%% One round: start a child, let it run a random number of acknowledgements (or a random
%% time), kill -9, then check. Returns the number of increments acknowledged.
durability_round(CP, LP, Round) ->
    Child = {Port, OsPid} = start_child(child_durability, [CP, LP, {Round, 17, 42}]),
    try
        {line, <<"ready">>} = next_line(Port, 30000),
        Target = rand:uniform(3000),
        Deadline = erlang:monotonic_time(millisecond) + rand:uniform(400),
        {Incs, Writes} = collect_acks(Port, Target, Deadline, [], []),
        kill9(OsPid),
        Status = wait_exit(Port, 10000),
        ?assertEqual(128 + 9, Status),                % it died of SIGKILL, not of anything else
        {Incs, Writes}
    after
        stop_child(Child)
    end.

collect_acks(Port, Target, Deadline, Incs, Writes) ->
    Now = erlang:monotonic_time(millisecond),
    case length(Writes) >= Target orelse Now >= Deadline of
        true -> {Incs, Writes};
        false ->
            case next_line(Port, max(1, Deadline - Now)) of
                {line, <<"i ", N/binary>>} ->
                    collect_acks(Port, Target, Deadline, [binary_to_integer(N) | Incs], Writes);
                {line, <<"w ", N/binary>>} ->
                    collect_acks(Port, Target, Deadline, Incs, [binary_to_integer(N) | Writes]);
                timeout -> {Incs, Writes};
                Other -> erlang:error({unexpected_child_output, Other})
            end
    end.

durability_kill9_test_() ->
    Rounds = case soak() of true -> 60; false -> 8 end,
    {timeout, 60 + Rounds * 15, fun() ->
        CP = tmp("dur_counters"), LP = tmp("dur_log"),
        {ok, F} = file:open(LP, [write, raw]),      % sparse: room for ?DUR_RECORDS records
        {ok, _} = file:position(F, 16 * ?DUR_RECORDS),
        ok = file:truncate(F),
        ok = file:close(F),
        try
            {Acked, _, _, Extra} =
                lists:foldl(fun(Round, Acc) -> durability_check(CP, LP, Round, Acc) end,
                            {0, 0, 0, 0}, lists:seq(1, Rounds)),
            io:format(user, "~ndurability: ~w kill -9 rounds survived; ~w acknowledged "
                      "increments and writes, all present after reopening (~w more done "
                      "but killed before their acknowledgement)~n", [Rounds, Acked, Extra]),
            ?assert(Acked > 0)
        after
            file:delete(CP), file:delete(LP)
        end
    end}.

%% Acc: {acknowledged writes so far, counter 0 and counter 1 after the previous round,
%% increments done but not acknowledged so far}.
durability_check(CP, LP, Round, {Acked, Expected, PrevV1, Extra}) ->
    {Incs, Writes} = durability_round(CP, LP, Round),
    %% The old values acknowledged this round continue exactly where the file left off.
    ?assertEqual(lists:seq(Expected, Expected + length(Incs) - 1), lists:reverse(Incs)),
    C = emmap:open_counters(CP),
    V0 = emmap:read_counter(C, 0),
    V1 = emmap:read_counter(C, 1),
    ok = emmap:close_counters(C),
    %% every acknowledged increment is there
    ?assert(V0 >= Expected + length(Incs)),
    {ok, F} = file:open(LP, [read, raw, binary]),
    {ok, Log} = file:pread(F, Expected * 16, (V0 - Expected + 64) * 16),
    ok = file:close(F),
    Have = [N || N <- lists:seq(Expected, V0 - 1),
                 binary:part(Log, (N - Expected) * 16, 16) =:= <<N:64/little, ?MAGIC:64/little>>],
    %% every acknowledged write is in the file ...
    ?assertEqual([], Writes -- Have),
    %% ... and nothing that was never done: no record at or past the counter
    ?assertEqual(<<0:(16 * 64)/unit:8>>, binary:part(Log, (V0 - Expected) * 16, 16 * 64)),
    %% counter 1 grew by the sum of the N whose add ran: every acknowledged write's (the add
    %% runs before the acknowledgement) and only N whose record is there (it runs after)
    ?assert(V1 - PrevV1 >= lists:sum(Writes)),
    ?assert(V1 - PrevV1 =< lists:sum(Have)),
    {Acked + length(Writes), V0, V1, Extra + V0 - Expected - length(Incs)}.

%%%===========================================================================
%%% 5. Cross-OS-process atomicity
%%%===========================================================================

%% @doc Child: waits for "go", then does Count iterations of: old = inc_counter(C, 0);
%% mark bit `old' in the bitmap file with patomic_or (a bit already set means two
%% increments returned the same old value); inc_counter(C, 1, Step); dec_counter(C, 2).
child_hammer(CountersPath, BitmapPath, Count, Step) ->
    C = emmap:open_counters(CountersPath),
    {ok, M} = emmap:open(BitmapPath, [read, write, shared, nolock]),
    io:put_chars("ready\n"),
    "go\n" = io:get_line(""),
    {Dups, Min, Max} = hammer(C, M, Count, Step, {0, infinity, -1}),
    io:put_chars(io_lib:format("done ~w ~w ~w~n", [Dups, Min, Max])),
    halt(0).

hammer(_C, _M, 0, _Step, Acc) -> Acc;
hammer(C, M, K, Step, {Dups, Min, Max}) ->
    Old = emmap:inc_counter(C, 0),
    Mask = 1 bsl (Old band 63),
    {ok, Prev} = emmap:patomic_or(M, (Old bsr 6) * 8, Mask),
    _ = emmap:inc_counter(C, 1, Step),
    _ = emmap:dec_counter(C, 2),
    Dups1 = case Prev band Mask of 0 -> Dups; _ -> Dups + 1 end,
    hammer(C, M, K - 1, Step, {Dups1, min(Min, Old), max(Max, Old)}).

cross_process_counters_are_exact_test_() ->
    Procs = 2,
    Count = case soak() of true -> 2000000; false -> 250000 end,
    {timeout, 300, fun() ->
        CP = tmp("xproc_counters"), BP = tmp("xproc_bitmap"),
        Total = Procs * Count,
        ok = file:write_file(BP, <<0:(((Total + 63) div 64) * 64)>>),
        emmap:close_counters(emmap:open_counters(CP, 3)),
        Children = [start_child(child_hammer, [CP, BP, Count, I]) || I <- lists:seq(1, Procs)],
        try
            [{line, <<"ready">>} = next_line(Port, 30000) || {Port, _} <- Children],
            T0 = erlang:monotonic_time(millisecond),
            [true = port_command(Port, <<"go\n">>) || {Port, _} <- Children],
            Done = [case next_line(Port, 240000) of
                        {line, <<"done ", D/binary>>} ->
                            [binary_to_integer(X) || X <- binary:split(D, <<" ">>, [global])];
                        Other -> erlang:error({child, Other})
                    end || {Port, _} <- Children],
            Dups = [D || [D, _, _] <- Done],
            Ranges = [{Min, Max} || [_, Min, Max] <- Done],
            [?assertEqual(0, wait_exit(Port, 30000)) || {Port, _} <- Children],
            T1 = erlang:monotonic_time(millisecond),
            C = emmap:open_counters(CP),
            Values = [emmap:read_counter(C, I) || I <- [0, 1, 2]],
            ok = emmap:close_counters(C),
            {ok, Bitmap} = file:read_file(BP),
            SetBits = lists:sum([popcount(W) || <<W:64/native>> <= Bitmap]),
            io:format(user, "~ncross-process: ~w erl OS processes x ~w increments in ~w ms: "
                      "counters = ~w, distinct old values = ~w, old-value ranges seen "
                      "by each process = ~w~n",
                      [Procs, Count, T1 - T0, Values, SetBits, Ranges]),
            %% the processes really ran at the same time: their old values interleave
            [{Min1, Max1}, {Min2, Max2} | _] = Ranges,
            ?assert(Min1 < Max2 andalso Min2 < Max1),
            ?assertEqual([0 || _ <- Children], Dups),
            ?assertEqual([Total, Count * lists:sum(lists:seq(1, Procs)), -Total], Values),
            ?assertEqual(Total, SetBits)
        after
            [stop_child(Ch) || Ch <- Children],
            file:delete(CP), file:delete(BP)
        end
    end}.

popcount(0) -> 0;
popcount(W) -> (W band 1) + popcount(W bsr 1).

%%%===========================================================================
%%% 6. Someone else truncates the mapped file
%%%===========================================================================

%% @doc Child: maps a 64 KiB file, truncates it to 100 bytes (with file:truncate, or by
%% waiting for the test to run `truncate -s 100'), then, once the test says "go", touches
%% the mapping past the new end in the way `How' says. Each step is acknowledged.
child_truncate(Path, Who, How) ->
    Opts = case How of
               old_direct_binary -> [read, write, shared, direct];
               _ -> [read, write, shared]
           end,
    {ok, M} = emmap:open(Path, Opts),
    {ok, Old} = emmap:pread(M, 40000, 16),
    io:format("mapped ~s~n", [Old]),
    case Who of
        self ->
            {ok, F} = file:open(Path, [read, write, raw]),
            {ok, 100} = file:position(F, 100),
            ok = file:truncate(F),
            ok = file:close(F);
        other ->
            "truncated\n" = io:get_line("")
    end,
    io:format("within_last_page ~w~n", [emmap:pread(M, 200, 4)]),
    io:format("size_still ~w~n", [maps:get(size, emmap:info(M))]),
    %% the test has read everything above before the access that may fault
    "go\n" = io:get_line(""),
    R = case How of
            pread -> emmap:pread(M, 40000, 16);
            pwrite -> emmap:pwrite(M, 40000, <<"x">>);
            patomic -> emmap:patomic_add(M, 40000, 1);
            old_direct_binary -> {ok, binary:copy(Old)}
        end,
    io:format("survived ~w~n", [R]),
    halt(0).

truncate_case(Who, How) ->
    P = tmp("trunc"),
    ok = file:write_file(P, binary:copy(<<"a">>, 65536)),
    Child = {Port, _} = start_child(child_truncate, [P, Who, How]),
    try
        ?assertEqual({line, <<"mapped aaaaaaaaaaaaaaaa">>}, next_line(Port, 30000)),
        case Who of
            other ->
                "" = os:cmd("truncate -s 100 " ++ P),
                true = port_command(Port, <<"truncated\n">>);
            self -> ok
        end,
        %% Bytes past the new end on the last page are zero: the kernel cleared them.
        ?assertEqual({line, <<"within_last_page {ok,<<0,0,0,0>>}">>}, next_line(Port, 30000)),
        ?assertEqual({line, <<"size_still 65536">>}, next_line(Port, 30000)),
        true = port_command(Port, <<"go\n">>),
        collect_lines(Port, 30000, [])
    after
        stop_child(Child),
        file:delete(P)
    end.

collect_lines(Port, Timeout, Acc) ->
    case next_line(Port, Timeout) of
        {line, L} -> collect_lines(Port, Timeout, [L | Acc]);
        {exit, S} -> {S, lists:reverse(Acc)};
        timeout -> {timeout, lists:reverse(Acc)}
    end.

%% Measured: the child is killed by SIGBUS (exit status 128 + 7) at the first access past
%% the new end, whichever way it touches the page; the test VM is unaffected.
truncated_file_faults_with_sigbus_test_() ->
    {timeout, 120, fun() ->
        Cases = [{self, pread}, {self, pwrite}, {self, patomic}, {self, old_direct_binary},
                 {other, pread}],
        Results = [{Case, truncate_case(Who, How)} || {Who, How} = Case <- Cases],
        io:format(user, "~ntruncation (who truncates, access past the new end) -> child exit "
                  "status: ~w~n", [[{C, S} || {C, {S, _}} <- Results]]),
        %% 135 = killed by SIGBUS (7); nothing after the faulting access ran
        [?assertEqual({Case, {135, []}}, {Case, R}) || {Case, R} <- Results],
        ok
    end}.

%%%===========================================================================
%%% 7. Security basics
%%%===========================================================================

created_files_are_private_test() ->
    OldUmask = current_umask(),
    P1 = tmp("mode"), P2 = tmp("mode"), P3 = tmp("mode"),
    try
        %% counters files and fit/truncate paths create with 0600 too
        emmap:close_counters(emmap:open_counters(P1, 1)),
        ?assertEqual(8#600, mode(P1)),
        {ok, M} = emmap:open(P2, 0, 100, [create, read, write, shared, fit]),
        ok = emmap:close(M),
        ?assertEqual(8#600, mode(P2)),
        %% {chmod, M} is used as given for a new file...
        {ok, M3} = emmap:open(P3, 0, 100, [create, read, write, {chmod, 8#644}]),
        ok = emmap:close(M3),
        ?assertEqual(8#644 band bnot OldUmask, mode(P3)),
        %% ... and never changes an existing file's mode, either way
        ok = file:change_mode(P2, 8#640),
        {ok, M4} = emmap:open(P2, 0, 100, [create, read, write, {chmod, 8#666}]),
        ok = emmap:close(M4),
        ?assertEqual(8#640, mode(P2)),
        {ok, M5} = emmap:open(P2, 0, 100, [create, read, write, {chmod, 8#600}]),
        ok = emmap:close(M5),
        ?assertEqual(8#640, mode(P2))
    after
        [file:delete(P) || P <- [P1, P2, P3]]
    end.

current_umask() ->
    list_to_integer(string:trim(os:cmd("umask")), 8).

auto_unlink_removes_only_its_own_file_test() ->
    P = tmp("unlink"), Moved = P ++ ".moved", Victim = tmp("victim"),
    try
        %% 1. the file was renamed and another file now has the path: neither is removed
        {ok, M1} = emmap:open(P, 0, 64, [create, read, write, shared, auto_unlink]),
        ok = file:rename(P, Moved),
        ok = file:write_file(P, <<"someone else's">>),
        ok = emmap:close(M1),
        ?assertEqual({ok, <<"someone else's">>}, file:read_file(P)),
        ?assert(filelib:is_regular(Moved)),
        ok = file:delete(P), ok = file:delete(Moved),
        %% 2. the path was replaced by a symlink to a victim: the victim and the link stay
        ok = file:write_file(Victim, <<"victim">>),
        {ok, M2} = emmap:open(P, 0, 64, [create, read, write, shared, auto_unlink]),
        ok = file:delete(P),
        ok = file:make_symlink(Victim, P),
        ok = emmap:close(M2),
        ?assertEqual({ok, <<"victim">>}, file:read_file(Victim)),
        ?assertMatch({ok, #file_info{type = symlink}}, file:read_link_info(P)),
        ok = file:delete(P),
        %% 3. opened with create over an existing file: it did not create it, keeps it
        ok = file:write_file(P, <<0:64>>),
        {ok, M3} = emmap:open(P, 0, 8, [create, read, write, shared, auto_unlink]),
        ok = emmap:close(M3),
        ?assertEqual({ok, <<0:64>>}, file:read_file(P)),
        %% 4. a failed open of an existing file with auto_unlink leaves it alone
        ?assertEqual({error, einval}, emmap:open(P, 0, 4, [create, read, write, auto_unlink])),
        ?assertEqual({ok, <<0:64>>}, file:read_file(P))
    after
        [file:delete(F) || F <- [P, Moved, Victim]]
    end.

%% A counters file whose header lies about the count (or whose size does not fit it) is
%% rejected by every open, whatever N is asked for, and is left exactly as it was. A file
%% without a valid magic is rejected too, also for the N whose size it has exactly (only a
%% file of nothing but zeros is initialised).
lying_counters_headers_are_rejected_test() ->
    P = tmp("lying"),
    Native = fun(Vs) -> << <<V:64/signed-native>> || V <- Vs >> end,
    Files =
        [{count_larger_than_file, <<"EMMAP01\n", 1000:64/little, (Native([1, 2]))/binary>>},
         {count_smaller_than_file, <<"EMMAP01\n", 1:64/little, (Native([1, 2, 3]))/binary>>},
         {count_zero, <<"EMMAP01\n", 0:64/little, (Native([1]))/binary>>},
         {count_huge, <<"EMMAP01\n", 16#FFFFFFFFFFFFFFFF:64/little, (Native([1]))/binary>>},
         {count_wraps_size, <<"EMMAP01\n", (1 bsl 61):64/little, (Native([1]))/binary>>},
         {count_wraps_size_2, <<"EMMAP01\n", ((1 bsl 61) + 1):64/little, (Native([1]))/binary>>},
         {ragged_size, <<"EMMAP01\n", 2:64/little, (Native([1, 2]))/binary, "xyz">>},
         {header_only, <<"EMMAP01\n", 2:64/little>>},
         {short_header, <<"EMMAP01\n", 2:32/little>>},
         {no_magic, <<"XMMAP01\n", 1:64/little, (Native([1, 2, 3]))/binary>>},
         {empty, <<>>}],
    try
        [begin
             ok = file:write_file(P, Bytes),
             {ok, Before} = file:read_file_info(P, [{time, posix}]),
             %% (an empty file holds nothing: with N > 0 it becomes a new counters file)
             Ns = [N || N <- [0, 1, 2, 3, 4, 1000], Bytes =/= <<>> orelse N =:= 0],
             [?assertError({emmap_counters, P, _}, emmap:open_counters(P, N)) || N <- Ns],
             ?assertError({emmap_counters, P, _}, emmap:open_counters(P)),
             %% the file is unchanged: bytes, size and modification time
             ?assertEqual({Name, {ok, Bytes}}, {Name, file:read_file(P)}),
             {ok, After} = file:read_file_info(P, [{time, posix}]),
             ?assertEqual({Name, Before#file_info.size, Before#file_info.mtime},
                          {Name, After#file_info.size, After#file_info.mtime})
         end || {Name, Bytes} <- Files],
        ok
    after
        file:delete(P)
    end.

%% `{address, A}' over memory the VM already uses is refused and the memory is untouched:
%% an emmap file mapping (at, inside and overlapping its start), and the VM's own code and
%% heap mappings found in /proc/self/maps.
address_never_replaces_existing_memory_test() ->
    P = tmp("addr"),
    Data = list_to_binary([I rem 251 || I <- lists:seq(1, 16384)]),
    ok = file:write_file(P, Data),
    try
        {ok, M} = emmap:open(P, [read, write, shared]),
        #{address := A} = emmap:info(M),
        Page = 4096,
        Tries = [{A, 4096}, {A + 100, 8}, {A + Page, 4096}, {A + 3 * Page, 1 bsl 20}]
            ++ [{A - Page, 2 * Page} || not mapped_at(A - Page)]
            ++ vm_addresses(),
        [?assertEqual({Addr, Len, {error, eexist}},
                      {Addr, Len, emmap:open("", 0, Len, [anon, read, write, {address, Addr}])})
         || {Addr, Len} <- Tries],
        [?assertEqual({error, eexist},
                      emmap:open(P, [read, write, shared, fixed, {address, Addr}]))
         || {Addr, _} <- Tries],
        ?assertEqual({ok, Data}, emmap:pread(M, 0, 16384)),
        ?assertEqual({ok, Data}, file:read_file(P)),
        ?assertEqual(A, maps:get(address, emmap:info(M))),
        ok = emmap:close(M)
    after
        file:delete(P)
    end.

mapped_at(Addr) ->
    lists:any(fun(L) ->
                      [Range | _] = binary:split(L, <<" ">>),
                      [S, E] = [binary_to_integer(X, 16) || X <- binary:split(Range, <<"-">>)],
                      Addr >= S andalso Addr < E
              end, maps_lines()).

%% Start addresses of the VM's executable mapping and of its heap, from /proc/self/maps.
vm_addresses() ->
    Lines = maps_lines(),
    Pick = fun(Pred) ->
                   case [L || L <- Lines, Pred(L)] of
                       [L | _] ->
                           [Range | _] = binary:split(L, <<" ">>),
                           [S, _] = binary:split(Range, <<"-">>),
                           [{binary_to_integer(S, 16), 4096}];
                       [] -> []
                   end
           end,
    Beam = Pick(fun(L) -> binary:match(L, <<"beam.smp">>) =/= nomatch end),
    Heap = Pick(fun(L) -> binary:match(L, <<"[heap]">>) =/= nomatch end),
    Nif = Pick(fun(L) -> binary:match(L, <<"emmap.so">>) =/= nomatch end),
    ?assertNotEqual([], Beam),
    Beam ++ Heap ++ Nif.

%%%===========================================================================
%%% Read-only mappings that resize by copying (found by this suite)
%%%===========================================================================

%% @doc Child: opens a read-only mapping that `resize' can only grow by making a new region
%% and copying into it (a private file mapping; an anonymous one with a page mapped right
%% after it), resizes it and prints the result.
child_ro_resize(Kind, Path) ->
    {ok, M} = case Kind of
                  private_file -> emmap:open(Path, [read]);
                  anon -> emmap:open("", 0, 4096, [anon, read])
              end,
    _ = case Kind of
            anon ->
                %% occupy the page after it, so growing in place is impossible
                #{address := A} = emmap:info(M),
                emmap:open("", 0, 4096, [anon, read, {address, A + 4096}]);
            private_file -> ok
        end,
    io:format("opened~n"),
    "go\n" = io:get_line(""),
    R = emmap:resize(M, 65536),
    io:format("resize ~w~n", [R]),
    io:format("read ~p~n", [emmap:pread(M, 0, 4)]),
    halt(0).

%% Found by the fuzz test (fixed): `resize' of a read-only private-file or anonymous
%% mapping that could not grow in place copied the old contents into a new mapping created
%% read-only, and the VM died of SIGSEGV (exit status 139). Expected: `{error, eacces}' or
%% `{ok, 65536}' with the old bytes still readable, and the VM alive. The old repro:
%%   erl -pa _build/default/lib/emmap/ebin -eval
%%     'file:write_file("/tmp/ro", <<0:32768>>), {ok, M} = emmap:open("/tmp/ro", [read]),
%%      emmap:resize(M, 65536).'
%% Run in a child VM so the failure cannot take the test VM down with it.
readonly_resize_never_crashes_the_vm_test_() ->
    {timeout, 60, fun() ->
        P = tmp("ro_resize"),
        ok = file:write_file(P, <<"abcd", 0:(4092 * 8)>>),
        try
            Results =
                [begin
                     Child = {Port, _} = start_child(child_ro_resize, [Kind, P]),
                     try
                         ?assertEqual({line, <<"opened">>}, next_line(Port, 30000)),
                         true = port_command(Port, <<"go\n">>),
                         {Kind, collect_lines(Port, 30000, [])}
                     after
                         stop_child(Child)
                     end
                 end || Kind <- [private_file, anon]],
            io:format(user, "~nread-only resize (kind, {exit status, output}): ~p~n", [Results]),
            [?assertMatch({_, {0, [<<"resize ", _/binary>>, <<"read ", _/binary>>]}}, R)
             || R <- Results],
            [?assert(lists:member(Res, [<<"resize {error,eacces}">>, <<"resize {ok,65536}">>]))
             || {_, {0, [Res, _]}} <- Results],
            ?assertMatch({private_file, {0, [_, <<"read {ok,<<\"abcd\">>}">>]}},
                         lists:keyfind(private_file, 1, Results)),
            ?assertEqual({ok, <<"abcd", 0:(4092 * 8)>>}, file:read_file(P))
        after
            file:delete(P)
        end
    end}.

%% @doc Child: an anonymous shared mapping with free address space after it, grown by
%% `resize' (in place), then written past its first page.
child_anon_shared_resize() ->
    {ok, Probe} = emmap:open("", 0, 1 bsl 20, [anon]),
    #{address := A} = emmap:info(Probe),
    ok = emmap:close(Probe),
    {ok, M} = emmap:open("", 0, 4096, [anon, shared, read, write, {address, A}]),
    io:format("resize ~w~n", [emmap:resize(M, 65536)]),
    io:format("in_place ~w~n", [maps:get(address, emmap:info(M)) =:= A]),
    "go\n" = io:get_line(""),
    io:format("pwrite ~w~n", [emmap:pwrite(M, 5000, <<"x">>)]),
    io:format("pread ~w~n", [emmap:pread(M, 5000, 1)]),
    halt(0).

%% Found by emmap_statem_tests (fixed): `resize' of an `[anon, shared]' mapping used to
%% grow it in place with mremap, but the shared anonymous memory object behind it keeps its
%% old size, so the first access past the old end killed the VM with SIGBUS (exit status
%% 135). Such memory now grows by a copy into a new mapping. With `{address, A}' the
%% mapping must not move, so `resize' answers an error instead, and the old size keeps
%% working. Without `{address, A}' it grows (emmap_tests covers that). Run in a child VM.
anon_shared_resize_never_crashes_the_vm_test_() ->
    {timeout, 60, fun() ->
        Child = {Port, _} = start_child(child_anon_shared_resize, []),
        try
            ?assertEqual({line, <<"resize {error,enomem}">>}, next_line(Port, 30000)),
            {line, InPlace} = next_line(Port, 30000),
            ?assertEqual(<<"in_place true">>, InPlace),
            true = port_command(Port, <<"go\n">>),
            Res = collect_lines(Port, 30000, []),
            %% 5000 is past the unchanged 4096 bytes: refused, and the VM lives on.
            ?assertEqual({0, [<<"pwrite {error,einval}">>, <<"pread eof">>]}, Res)
        after
            stop_child(Child)
        end
    end}.
