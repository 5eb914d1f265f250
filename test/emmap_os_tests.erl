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

-import(emmap_test_lib, [mode/1, maps_lines/0, mapped/1, open_fds/0, tmp_path/1, tmp_dir/1,
                         rm_rf/1, eventually/2, stop_child/1, next_line/2, wait_exit/2,
                         collect_lines/2, result_terms/1]).

%% Run inside child VMs.
-export([child_durability/3, child_hammer/4, child_ro_resize/2, child_anon_shared_resize/0,
         child_cut_matrix/1, child_cut_others/1, child_cut_storm/2, child_wait/1,
         child_switched_off/2]).

-define(MAGIC, 16#E33A9D0C5EEDF00D).

%%%===========================================================================
%%% utilities
%%%===========================================================================

soak() -> os:getenv("EMMAP_SOAK") =/= false.

start_child(Fun, Args) ->
    start_child(Fun, Args, []).

%% Starts `erl' running ?MODULE:Fun(Args...); its output comes back as lines.
start_child(Fun, Args, ErlArgs) ->
    emmap_test_lib:start_child(?MODULE, Fun, Args, #{erl_args => ErlArgs}).

kill9(OsPid) ->
    _ = os:cmd("kill -9 " ++ integer_to_list(OsPid) ++ " 2>/dev/null"),
    ok.

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
        P = tmp_path("leak"),
        ok = file:write_file(P, <<0:4096/unit:8>>),
        try
            %% warm up: the VM's own allocators settle on the same workload first
            _ = leak_batch(P, 600),
            true = eventually(fun() -> mapped(P) =:= 0 end, 5000),
            Fds0 = open_fds(), Maps0 = length(maps_lines()),
            T0 = erlang:monotonic_time(millisecond),
            Peaks = [leak_batch(P, ?LEAK_BATCH) || _ <- lists:seq(1, ?LEAK_TOTAL div ?LEAK_BATCH)],
            PeakFds = lists:max([F || {F, _} <- Peaks]),
            PeakMaps = lists:max([M || {_, M} <- Peaks]),
            FdsOk = eventually(fun() -> open_fds() =< Fds0 end, 5000),
            MapsOk = eventually(fun() -> length(maps_lines()) =< Maps0 andalso mapped(P) =:= 0 end, 5000),
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
        CP = tmp_path("dur_counters"), LP = tmp_path("dur_log"),
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
        CP = tmp_path("xproc_counters"), BP = tmp_path("xproc_bitmap"),
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

%% Each child runs its cases one after the other, printing `{start, Case}' before and
%% `{Case, Result}' after each (one term per line), then `done'. A child killed by a case
%% shows which one in its last line.

report(Case, Result) ->
    io:format("~w~n", [{Case, Result}]).

%% Cuts the file to N bytes from outside the VM (`truncate -s') or through a raw handle.
cut(P, shell, N) ->
    "" = os:cmd("truncate -s " ++ integer_to_list(N) ++ " " ++ P),
    ok;
cut(P, raw, N) ->
    {ok, F} = file:open(P, [read, write, raw]),
    {ok, N} = file:position(F, N),
    ok = file:truncate(F),
    ok = file:close(F).

-define(LINES, binary:copy(<<"abcdefghijklmno\n">>, 4096)).    % 64 KiB, 16-byte lines

raised(F) ->
    try F() catch error:E -> {raised, E} end.

%% @doc Child: every mode (copy/direct, lock/nolock) and call (pread, pwrite, atomic,
%% read_line, counters) after the file was cut to 100 bytes from a shell or a raw handle.
child_cut_matrix(Dir) ->
    report(handler, maps:get(enabled, emmap:sigbus_handler())),
    Fds0 = open_fds(),
    Cases = [{Mode, Lock, Op, How} || Mode <- [copy, direct], Lock <- [lock, nolock],
                                      Op <- [pread, pwrite, atomic, read_line],
                                      How <- [shell, raw]]
        ++ [{counters, How} || How <- [shell, raw]],
    [begin report(start, Case), report(Case, cut_case(Dir, Case)) end || Case <- Cases],
    %% nothing stays mapped or open once the handles and binaries are gone
    Released = eventually(fun() -> mapped(Dir) =:= 0 andalso open_fds() =< Fds0 end, 5000),
    %% another file works as before
    Other = filename:join(Dir, "other"),
    {ok, M} = emmap:open(Other, 0, 8192, [create, read, write, shared]),
    ok = emmap:pwrite(M, 5000, <<"fine">>),
    report(after_all, {Released, emmap:pread(M, 5000, 4), emmap:close(M)}),
    io:format("done~n"),
    halt(0).

cut_case(Dir, {Mode, Lock, Op, How} = Case) ->
    P = filename:join(Dir, lists:flatten(io_lib:format("~w_~w_~w_~w", tuple_to_list(Case)))),
    ok = file:write_file(P, ?LINES),
    {ok, M} = emmap:open(P, [read, write, shared, Lock] ++ [direct || Mode =:= direct]),
    {ok, Old} = emmap:pread(M, 40000, 16),          % direct: points into the mapping
    ok = cut(P, How, 100),
    R = case Op of
            pread -> emmap:pread(M, 40000, 16);
            pwrite -> emmap:pwrite(M, 40000, <<"x">>);
            atomic -> emmap:patomic_add(M, 40000, 1);
            read_line -> {ok, 40000} = emmap:position(M, 40000), emmap:read_line(M)
        end,
    Pos = emmap:position(M, cur),
    %% the rest of the page holding the new end reads zeros, with no error
    Within = emmap:pread(M, 200, 4),
    %% the binary taken before the cut, read by BIFs and by another process
    Self = self(),
    spawn(fun() -> Self ! {crc, erlang:crc32(Old)} end),
    Crc = receive {crc, C} -> C after 5000 -> timeout end,
    OldNow = binary:copy(Old),
    #{lost_from := Lost} = emmap:info(M),
    ok = emmap:close(M),
    {ok, Disk} = file:read_file(P),
    {R, Pos, Within, is_integer(Lost), Disk =:= binary:part(?LINES, 0, 100),
     OldNow, Crc =:= erlang:crc32(OldNow)};
cut_case(Dir, {counters, How}) ->
    P = filename:join(Dir, "counters_" ++ atom_to_list(How)),
    C = emmap:open_counters(P, 8192),               % 16 + 65536 bytes
    0 = emmap:inc_counter(C, 5000),
    ok = cut(P, How, 100),
    R1 = raised(fun() -> emmap:inc_counter(C, 5000) end),
    R2 = raised(fun() -> emmap:read_counter(C, 6000) end),
    R3 = emmap:inc_counter(C, 1),                   % in the first 100 bytes: still there
    ok = emmap:close_counters(C),
    {R1, R2, R3, filelib:file_size(P)}.

run_child(Fun, Args, ErlArgs) ->
    emmap_test_lib:run_child(?MODULE, Fun, Args, #{erl_args => ErlArgs}).

%% Was: the VM died with SIGBUS (exit status 135) at the first access past the new end,
%% whichever way it touched the page. Now each call answers `{error, truncated}', nothing
%% reaches the file, the old direct binary reads zeros from any process, and the VM lives.
truncated_file_answers_truncated_in_every_mode_test_() ->
    {timeout, 180, fun() ->
        D = tmp_dir("cut"),
        try
            {Status, Lines} = run_child(child_cut_matrix, [D], []),
            Results = result_terms(Lines),
            io:format(user, "~ncut to 100 bytes (mode, lock, call, who cuts) -> answer: ~p~n",
                      [[{C, element(1, R)} || {{_, _} = C, R} <- Results]
                       ++ [{C, element(1, R)} || {{_, _, _, _} = C, R} <- Results]]),
            ?assertEqual({0, true}, {Status, lists:member(<<"done">>, Lines)}),
            ?assertEqual({handler, true}, hd(Results)),
            Cases = [R || {{_, _, _, _}, _} = R <- Results],
            ?assertEqual(32, length(Cases)),
            [begin
                 %% a direct binary taken before the cut now reads zeros; a copy is a copy
                 OldNow = case Mode of
                              direct -> <<0:128>>;
                              copy -> <<"abcdefghijklmno\n">>
                          end,
                 %% a read_line that failed left the position where it was
                 Pos = case Op of read_line -> 40000; _ -> 0 end,
                 ?assertEqual({Case, {{error, truncated}, {ok, Pos}, {ok, <<0, 0, 0, 0>>},
                                      true, true, OldNow, true}},
                              {Case, R})
             end || {{Mode, _, Op, _} = Case, R} <- Cases],
            [?assertEqual({{counters, How}, {{raised, truncated}, {raised, truncated}, 0, 100}},
                          lists:keyfind({counters, How}, 1, Results)) || How <- [shell, raw]],
            ?assertMatch({after_all, {true, {ok, <<"fine">>}, ok}},
                         lists:keyfind(after_all, 1, Results))
        after
            rm_rf(D)
        end
    end}.

%% @doc Child: a window at an offset, `{address, A}', the queue (container and server),
%% block storage and an `emmap_io' device, each after a cut.
child_cut_others(Dir) ->
    File = fun(Name) ->
                   P = filename:join(Dir, Name),
                   ok = file:write_file(P, ?LINES),
                   P
           end,
    P1 = File("window"),
    {ok, W} = emmap:open(P1, 8192, 32768, [read, write, shared]),
    ok = cut(P1, shell, 10000),
    report(window, {emmap:pread(W, 0, 4), emmap:pread(W, 20000, 4),
                    emmap:pwrite(W, 20000, <<"x">>), emmap:close(W)}),
    P2 = File("address"),
    {ok, Probe} = emmap:open("", 0, 1 bsl 20, [anon]),
    #{address := A} = emmap:info(Probe),
    ok = emmap:close(Probe),
    {ok, AM} = emmap:open(P2, [read, write, shared, {address, A}]),
    ok = cut(P2, raw, 100),
    report(address, {maps:get(address, emmap:info(AM)) =:= A, emmap:pread(AM, 40000, 4),
                     emmap:patomic_read_integer(AM, 40000), emmap:close(AM)}),
    PQ = filename:join(Dir, "queue"),
    {ok, Q} = emmap_queue:open(PQ, 65536, []),
    [ok = emmap_queue:push(Q, {item, I, binary:copy(<<"q">>, 100)}) || I <- lists:seq(1, 200)],
    ok = cut(PQ, shell, 4096),
    Push = emmap_queue:push(Q, last),
    report(queue, {Push, pop_until_error(Q, 0), emmap_queue:close(Q)}),
    PS = filename:join(Dir, "queue_server"),
    {ok, Srv} = emmap_queue:start_link(undefined, PS, 65536, []),
    [ok = emmap_queue:enqueue(Srv, binary:copy(<<"s">>, 1000)) || _ <- lists:seq(1, 20)],
    ok = cut(PS, raw, 100),
    report(queue_server, {emmap_queue:enqueue(Srv, more), is_process_alive(Srv),
                          emmap_queue:stop(Srv)}),
    PB = filename:join(Dir, "blocks"),
    {ok, B} = emmap:open(PB, 0, 0, [create, read, write, shared, {size, 65536}]),
    ok = emmap:init_block_storage(B, 1000, #{max_blocks => 64}),
    Addrs = [emmap:store_block(B, binary:copy(<<"b">>, 1000)) || _ <- lists:seq(1, 40)],
    ok = cut(PB, raw, 8192),
    Last = lists:last(Addrs),
    report(blocks, {emmap:read_block(B, Last), emmap:store_block(B, binary:copy(<<"c">>, 1000)),
                    emmap:free_block(B, Last), emmap:read_blocks(B), emmap:close(B)}),
    PI = File("io"),
    {ok, Dev} = emmap_io:open(PI, [read, write, shared, binary]),
    ok = cut(PI, shell, 100),
    {ok, 40000} = file:position(Dev, 40000),
    report(io, {io:get_line(Dev, ''), file:pread(Dev, 40000, 10),
                file:pwrite(Dev, 40000, <<"x">>), is_process_alive(Dev), file:close(Dev)}),
    report(released, eventually(fun() -> mapped(Dir) =:= 0 end, 5000)),
    io:format("done~n"),
    halt(0).

%% Pops until the first error: {messages popped, the error}.
pop_until_error(Q, N) ->
    case emmap_queue:pop(Q) of
        {error, _} = E -> {N, E};
        nil -> {N, nil};
        _ -> pop_until_error(Q, N + 1)
    end.

truncated_file_under_other_apis_test_() ->
    {timeout, 120, fun() ->
        D = tmp_dir("cut_others"),
        try
            {Status, Lines} = run_child(child_cut_others, [D], []),
            R = result_terms(Lines),
            io:format(user, "~ncut under a window, {address, A}, queue, blocks, emmap_io: ~p~n", [R]),
            ?assertEqual(0, Status),
            T = {error, truncated},
            ?assertEqual({window, {{ok, <<"abcd">>}, T, T, ok}}, lists:keyfind(window, 1, R)),
            ?assertEqual({address, {true, T, T, ok}}, lists:keyfind(address, 1, R)),
            %% messages in the first page still pop; the first one past the cut does not
            {queue, {T, {Popped, T}, ok}} = lists:keyfind(queue, 1, R),
            ?assert(Popped > 0 andalso Popped < 200),
            ?assertEqual({queue_server, {T, true, ok}}, lists:keyfind(queue_server, 1, R)),
            ?assertEqual({blocks, {T, T, T, T, ok}}, lists:keyfind(blocks, 1, R)),
            ?assertEqual({io, {T, T, T, true, ok}}, lists:keyfind(io, 1, R)),
            ?assertEqual({released, true}, lists:keyfind(released, 1, R))
        after
            rm_rf(D)
        end
    end}.

%% @doc Child: 4 processes read, write, do atomics and read lines on shared handles (copy
%% with lock, direct without) and on handles of their own, while another OS process cuts
%% the file to 100 bytes and grows it back `Rounds' times. Reports each process's answers.
child_cut_storm(Dir, Rounds) ->
    P = filename:join(Dir, "storm"),
    ok = file:write_file(P, ?LINES),
    {ok, H1} = emmap:open(P, [read, write, shared]),
    {ok, H2} = emmap:open(P, [read, write, shared, direct, nolock]),
    Stop = atomics:new(1, []),
    Self = self(),
    Workers = [spawn(fun() -> Self ! {done, self(), storm(P, H1, H2, Stop, #{})} end)
               || _ <- lists:seq(1, 4)],
    Cmd = lists:flatten(io_lib:format(
            "for i in $(seq ~w); do truncate -s 100 ~s; truncate -s 65536 ~s; done; echo cut",
            [Rounds, P, P])),
    T0 = erlang:monotonic_time(millisecond),
    "cut\n" = os:cmd(Cmd),
    T1 = erlang:monotonic_time(millisecond),
    atomics:put(Stop, 1, 1),
    Answers = [receive {done, W, C} -> C after 30000 -> hang end || W <- Workers],
    %% a fresh handle sees the file as it now is
    {ok, H3} = emmap:open(P, [read, write, shared]),
    Fresh = emmap:pread(H3, 40000, 4),
    [ok = emmap:close(H) || H <- [H1, H2, H3]],
    report(storm, {Rounds, T1 - T0, Answers, Fresh}),
    io:format("done~n"),
    halt(0).

storm(P, H1, H2, Stop, Acc) ->
    case atomics:get(Stop, 1) of
        1 -> Acc;
        0 ->
            Pos = rand:uniform(65536 - 32) - 1,
            R = case rand:uniform(6) of
                    1 -> emmap:pread(H1, Pos, 16);
                    2 -> case emmap:pread(H2, Pos, 16) of
                             {ok, B} -> {ok, binary:copy(B)};    % read the direct binary
                             Other -> Other
                         end;
                    3 -> emmap:pwrite(H1, Pos, <<"xyz">>);
                    4 -> emmap:patomic_add(H2, Pos band bnot 7, 1);
                    5 -> emmap:read_line(H1);
                    6 -> case emmap:open(P, [read, write, shared]) of
                             {ok, M} ->
                                 {ok, _} = emmap:position(M, Pos),
                                 Line = emmap:read_line(M),
                                 ok = emmap:close(M),
                                 Line;
                             E -> E
                         end
                end,
            storm(P, H1, H2, Stop, maps:update_with(kind(R), fun(N) -> N + 1 end, 1, Acc))
    end.

kind(ok) -> ok;
kind({ok, B}) when is_binary(B) -> ok;
kind({ok, I}) when is_integer(I) -> ok;
kind(eof) -> eof;
kind({error, truncated}) -> truncated;
kind({error, eio}) -> eio;
kind(Other) -> {undocumented, Other}.

%% 4 processes on shared and own handles while another OS process cuts the file and grows
%% it back 200 times [2,000]: the VM lives, no call hangs, every answer is `ok', `{ok, _}',
%% `eof', `{error, truncated}' or `{error, eio}'.
cut_and_regrow_under_load_test_() ->
    Rounds = case soak() of true -> 2000; false -> 200 end,
    {timeout, 120 + Rounds div 10, fun() ->
        D = tmp_dir("storm"),
        try
            {Status, Lines} = run_child(child_cut_storm, [D, Rounds], []),
            [{storm, {Rounds, Ms, Answers, Fresh}}] = result_terms(Lines),
            ?assertEqual(0, Status),
            ?assertEqual([], [A || A <- Answers, not is_map(A)]),        % no hang
            Total = lists:foldl(fun(M, T) -> maps:merge_with(fun(_, X, Y) -> X + Y end, M, T) end,
                                #{}, Answers),
            io:format(user, "~ncut and regrown ~w times in ~w ms under 4 processes: "
                      "answers ~w; a fresh handle then reads ~w~n",
                      [Rounds, Ms, Total, Fresh]),
            ?assertEqual([], [K || K <- maps:keys(Total), not is_atom(K)]),
            ?assert(maps:get(ok, Total, 0) > 0),
            ?assert(maps:get(truncated, Total, 0) + maps:get(eio, Total, 0) > 0),
            ?assertMatch({ok, <<_:4/binary>>}, Fresh)
        after
            rm_rf(D)
        end
    end}.

%% @doc Child: maps a file and waits (the test sends it `kill -BUS').
child_wait(Dir) ->
    {ok, M} = emmap:open(filename:join(Dir, "wait"), 0, 4096, [create, read, write, shared]),
    {ok, _} = emmap:pread(M, 0, 4),
    report(handler, maps:get(enabled, emmap:sigbus_handler())),
    "go\n" = io:get_line(""),
    halt(0).

%% SIGBUS sent from outside is not a fault on emmap memory: the VM ends as it does
%% without emmap, killed by the signal (exit status 128 + 7).
kill_bus_still_ends_the_vm_test_() ->
    {timeout, 60, fun() ->
        D = tmp_dir("killbus"),
        Child = {Port, OsPid} = start_child(child_wait, [D], []),
        try
            ?assertEqual({line, <<"{handler,true}">>}, next_line(Port, 30000)),
            _ = os:cmd("kill -BUS " ++ integer_to_list(OsPid)),
            ?assertEqual(135, wait_exit(Port, 30000))
        after
            stop_child(Child),
            rm_rf(D)
        end
    end}.

%% @doc Child: with the handler switched off (`How' says where), a cut file kills the VM
%% at the first access past the new end, as before.
child_switched_off(Dir, How) ->
    case How of
        app_env ->
            ok = application:load(emmap),
            ok = application:set_env(emmap, sigbus_handler, false);
        command_line -> ok;                      % erl -emmap sigbus_handler false
        config_file -> ok                        % erl -config F (a plain shell, not a release)
    end,
    %% The lines go to the pipe before the next step (io:format hands them to the I/O
    %% server, which may not have written `{cut,ok}' yet when the VM dies).
    {ok, Out} = file:open("/proc/self/fd/1", [write, raw]),
    Report = fun(Case, Result) -> ok = file:write(Out, io_lib:format("~w~n", [{Case, Result}])) end,
    Report(handler, emmap:sigbus_handler()),
    P = filename:join(Dir, "off"),
    ok = file:write_file(P, ?LINES),
    {ok, M} = emmap:open(P, [read, write, shared]),
    ok = cut(P, shell, 100),
    Report(cut, ok),
    Report(survived, emmap:pread(M, 40000, 16)),
    halt(0).

switched_off_the_vm_dies_as_before_test_() ->
    {timeout, 60, fun() ->
        D = tmp_dir("off"),
        try
            Config = filename:join(D, "off.config"),
            ok = file:write_file(Config, "[{emmap, [{sigbus_handler, false}]}].\n"),
            R = [{How, run_child(child_switched_off, [D, How], Args)}
                 || {How, Args} <- [{command_line, ["-emmap", "sigbus_handler", "false"]},
                                    {config_file, ["-config", Config]},
                                    {app_env, []}]],
            io:format(user, "~nswitched off (how) -> {exit status, output}: ~p~n", [R]),
            [?assertEqual({How, {135, [<<"{handler,#{enabled => false,library => undefined}}">>,
                                       <<"{cut,ok}">>]}},
                          {How, {S, [L || L <- Ls, binary:match(L, <<"{">>) =:= {0, 1}]}})
             || {How, {S, Ls}} <- R]
        after
            rm_rf(D)
        end
    end}.

%%%===========================================================================
%%% 7. Security basics
%%%===========================================================================

created_files_are_private_test() ->
    OldUmask = current_umask(),
    P1 = tmp_path("mode"), P2 = tmp_path("mode"), P3 = tmp_path("mode"),
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
    P = tmp_path("unlink"), Moved = P ++ ".moved", Victim = tmp_path("victim"),
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
    P = tmp_path("lying"),
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
    P = tmp_path("addr"),
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
        P = tmp_path("ro_resize"),
        ok = file:write_file(P, <<"abcd", 0:(4092 * 8)>>),
        try
            Results =
                [begin
                     Child = {Port, _} = start_child(child_ro_resize, [Kind, P]),
                     try
                         ?assertEqual({line, <<"opened">>}, next_line(Port, 30000)),
                         true = port_command(Port, <<"go\n">>),
                         {Kind, collect_lines(Port, 30000)}
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
            Res = collect_lines(Port, 30000),
            %% 5000 is past the unchanged 4096 bytes: refused, and the VM lives on.
            ?assertEqual({0, [<<"pwrite {error,einval}">>, <<"pread eof">>]}, Res)
        after
            stop_child(Child)
        end
    end}.
