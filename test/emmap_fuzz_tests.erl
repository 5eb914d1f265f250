%%% @doc Fuzzing the boundary: every exported function of `emmap' with random terms.
%%%
%%% Each call must either return a documented result (`ok', `eof', `{ok, _}', `{error,
%%% Reason}' with a documented reason, the function's normal result) or raise `error:badarg'
%%% (and `error:{emmap_counters, File, Why}' for `open_counters'). Anything else is a
%%% finding: `function_clause', `case_clause', `badmatch', a `throw', an exit, a result of
%%% the wrong shape, a hang, or the VM dying.
%%%
%%% To see the VM dying, the fuzzing runs in child `erl' OS processes ("shards"). A shard
%%% writes each call to a log file before making it (a plain write(2): it survives the
%%% process being killed), so the last line of a dead shard's log is the call that killed
%%% it. The shard prints one line per violation and a summary.
%%%
%%% Arguments are drawn from pools that mix plausible values (real handles of every kind,
%%% open and closed; positions at the edges of the mapping and of the 64-bit range; real
%%% option lists) with junk (wrong types, bignums past 2^64, improper and deep lists,
%%% binaries with NUL, atoms, tuples shaped like handles: `{file_descriptor, emmap, Ref}').
%%% Handles returned by `open' and binaries returned by reads join the pools, so calls act
%%% on each other's results. Sizes stay either small (=< 200,000 bytes) or absurd (>= 2^62),
%%% so no call asks the machine for gigabytes of real memory.
%%%
%%% The specific boundary cases (positions near 2^64 that wrap, a 2^64-1 length in direct
%%% mode, NUL in paths, improper option lists) are separate tests below.
-module(emmap_fuzz_tests).

-include_lib("eunit/include/eunit.hrl").
-include_lib("kernel/include/file.hrl").

-export([child_fuzz/4]).

-import(emmap_test_lib, [tmp_dir/1, rm_rf/1, mapped/1]).

-define(U64, 16#FFFFFFFFFFFFFFFF).
-define(I64MAX, 16#7FFFFFFFFFFFFFFF).
-define(I64MIN, -16#8000000000000000).

soak() -> os:getenv("EMMAP_SOAK") =/= false.

%%%===========================================================================
%%% The fuzz tests (parent side)
%%%===========================================================================

%% CI: 8 shards x 5,000 calls = 40,000 random calls (about 7 s on 2 cores).
%% Soak: 40 shards x 25,000 calls = 1,000,000.
%%
%% Profile `safe' leaves out two kinds of handle: read-only private-file and read-only
%% anonymous mappings, whose `resize' used to kill the VM (SIGSEGV, fixed: it answers
%% `{error, eacces}' now; see emmap_os_tests:readonly_resize_never_crashes_the_vm_test_).
%% `fuzz_all_handle_kinds_test_' keeps them in.
fuzz_test_() ->
    {Shards, Calls} = case soak() of true -> {40, 25000}; false -> {8, 5000} end,
    {timeout, 120 + Shards * Calls div 100, fun() -> run_shards(safe, Shards, Calls) end}.

fuzz_all_handle_kinds_test_() ->
    {Shards, Calls} = case soak() of true -> {8, 25000}; false -> {2, 3000} end,
    {timeout, 120 + Shards * Calls div 100, fun() -> run_shards(all, Shards, Calls) end}.

%% Seeds differ from run to run; EMMAP_FUZZ_SEED=N repeats a run (the seed is printed).
run_shards(Profile, Shards, Calls) ->
    Base = case os:getenv("EMMAP_FUZZ_SEED") of
               false -> erlang:system_time(microsecond) rem 1000000007;
               S -> list_to_integer(S)
           end,
    T0 = erlang:monotonic_time(millisecond),
    Results = [run_shard(Profile, {Base, S, 7}, Calls) || S <- lists:seq(1, Shards)],
    T1 = erlang:monotonic_time(millisecond),
    Done = lists:sum([N || {_, N, _, _} <- Results]),
    Bad = lists:append([B || {_, _, B, _} <- Results]),
    Died = [{Seed, Status, Last} || {Seed, _, _, {died, Status, Last}} <- Results],
    Stats = merge_stats([S || {_, _, _, {ok, S}} <- Results]),
    io:format(user, "~nfuzz (~w, EMMAP_FUZZ_SEED=~w): ~w shards, ~w calls made in ~w ms; "
              "outcomes: ~w~n", [Profile, Base, Shards, Done, T1 - T0, Stats]),
    [io:format(user, "fuzz VIOLATION: ~ts~n", [B]) || B <- lists:sublist(Bad, 40)],
    [io:format(user, "fuzz shard ~w: VM died (exit status ~p); last call: ~ts~n", [Seed, S, L])
     || {Seed, S, L} <- Died],
    ?assertEqual([], Died),
    ?assertEqual([], Bad),
    ?assert(Done >= Shards * Calls).

merge_stats(Maps) ->
    lists:sort(maps:to_list(lists:foldl(
        fun(M, Acc) -> maps:fold(fun(K, V, A) -> maps:update_with(K, fun(X) -> X + V end, V, A) end, Acc, M) end,
        #{}, Maps))).

%% One shard in a child VM. Returns {Seed, CallsMade, Violations, {ok, Stats} | {died, ...}}.
run_shard(Profile, Seed, Calls) ->
    Dir = tmp_dir("fuzz"),
    {Port, _} = Child = emmap_test_lib:start_child(?MODULE, child_fuzz,
                                                   [Seed, Calls, Profile, Dir],
                                                   #{line => 1 bsl 16}),
    try
        shard_loop(Port, Seed, Dir, Calls * 20 + 60000, [], none)
    after
        emmap_test_lib:stop_child(Child),
        rm_rf(Dir)
    end.

shard_loop(Port, Seed, Dir, Timeout, Bad, Stats) ->
    receive
        {Port, {data, {eol, <<"BAD ", B/binary>>}}} ->
            shard_loop(Port, Seed, Dir, Timeout, [B | Bad], Stats);
        {Port, {data, {eol, <<"STATS ", S/binary>>}}} ->
            shard_loop(Port, Seed, Dir, Timeout, Bad, binary_to_term(base64:decode(S)));
        {Port, {data, _Other}} ->
            shard_loop(Port, Seed, Dir, Timeout, Bad, Stats);
        {Port, {exit_status, 0}} when Stats =/= none ->
            {Seed, maps:get(calls, Stats), lists:reverse(Bad), {ok, maps:remove(calls, Stats)}};
        {Port, {exit_status, S}} ->
            {N, Last} = last_logged(Dir),
            {Seed, N, lists:reverse(Bad), {died, S, Last}}
    after Timeout ->
            {N, Last} = last_logged(Dir),
            {Seed, N, lists:reverse(Bad), {died, hang, Last}}
    end.

last_logged(Dir) ->
    case file:read_file(filename:join(Dir, "calls.log")) of
        {ok, B} ->
            Lines = binary:split(B, <<"\n">>, [global, trim]),
            {length(Lines), case Lines of [] -> <<"none">>; _ -> lists:last(Lines) end};
        _ -> {0, <<"no log">>}
    end.

%%%===========================================================================
%%% The child: pools, calls, oracle
%%%===========================================================================

%% @doc Runs in a child VM: Calls random calls, then prints STATS and halts.
child_fuzz(Seed, Calls, Profile, Dir) ->
    rand:seed(exsss, Seed),
    %% relative paths (random atoms, strings, binaries) land in the shard's directory
    ok = file:set_cwd(Dir),
    {ok, Log} = file:open(filename:join(Dir, "calls.log"), [raw, write, binary]),
    St = setup(Profile, Dir),
    Funs = [FA || FA <- emmap:module_info(exports),
                  not lists:member(FA, [{module_info, 0}, {module_info, 1}])],
    {_, Stats} = lists:foldl(fun(I, {S, Acc}) -> one_call(I, Funs, S, Log, Acc) end,
                             {St, #{calls => 0}}, lists:seq(1, Calls)),
    io:put_chars(["STATS ", base64:encode(term_to_binary(Stats)), "\n"]),
    erlang:halt(0).

one_call(I, Funs, St, Log, Stats) ->
    {F, A} = lists:nth(rand:uniform(length(Funs)), Funs),
    Args = args(F, A, St),
    ok = file:write(Log, [integer_to_list(I), " ", describe(F, Args, St), "\n"]),
    Outcome = try {returned, apply(emmap, F, Args)}
              catch Class:Reason -> {raised, Class, Reason}
              end,
    Verdict = verdict(F, A, Args, Outcome),
    case Verdict of
        {bad, Why} ->
            io:put_chars(["BAD ", describe(F, Args, St), " -> ",
                          io_lib:format("~0tP: ~0tP", [Outcome, 12, Why, 8]), "\n"]);
        _ -> ok
    end,
    Key = case Verdict of {bad, _} -> bad; _ -> Verdict end,
    Stats1 = maps:update_with(Key, fun(X) -> X + 1 end, 1,
                              maps:update_with(calls, fun(X) -> X + 1 end, Stats)),
    {absorb(F, Outcome, St), Stats1}.

%%% ---------------------------------------------------------------- pools

-record(st, {dir, handles = [], opened = [], counters = [], bins = [], sizes = []}).

setup(Profile, Dir) ->
    Pattern = fun(N) -> list_to_binary([I rem 251 || I <- lists:seq(1, N)]) end,
    F4k = filename:join(Dir, "f4k"), F64k = filename:join(Dir, "f64k"),
    F12 = filename:join(Dir, "f12"), Empty = filename:join(Dir, "empty"),
    ok = file:write_file(F4k, Pattern(4096)),
    ok = file:write_file(F64k, Pattern(65536)),
    ok = file:write_file(F12, Pattern(12)),
    ok = file:write_file(Empty, <<>>),
    ok = file:make_dir(filename:join(Dir, "sub")),
    Inc = {max_inc_size, 65536},
    Open = fun(P, Off, Len, Opts) -> {ok, M} = emmap:open(P, Off, Len, Opts), M end,
    Safe =
        [{anon_rw, Open("", 0, 65536, [anon, read, write, Inc])},
         {anon_rw_direct_nolock, Open("", 0, 8192, [anon, read, write, direct, nolock, Inc])},
         {anon_shared_fixed, Open("", 0, 4096, [anon, read, write, shared, fixed_size])},
         {file_shared_rw, Open(F64k, 0, 0, [read, write, shared, Inc])},
         {file_shared_direct, Open(F64k, 0, 0, [read, write, shared, direct, Inc])},
         {file_private_rw, Open(F4k, 0, 0, [read, write, private, Inc])},
         {file_window_odd, Open(F64k, 4097, 1000, [read, write, shared, direct])},
         {file_shared_ro, Open(F4k, 0, 0, [read, shared, direct])},
         {file_odd_size, Open(F12, 0, 0, [read, write, shared, nolock])}],
    Closed =
        [begin M = Open("", 0, 4096, [anon, read, write | O]), ok = emmap:close(M), {L, M} end
         || {L, O} <- [{closed_anon, []}, {closed_direct_nolock, [direct, nolock]}]],
    Unsafe = case Profile of
                 all -> [{file_private_ro, Open(F4k, 0, 0, [read])},
                         {anon_ro, Open("", 0, 4096, [anon, read])}];
                 safe -> []
             end,
    {ok, Raw} = file:open(filename:join(Dir, "raw"), [raw, read, write, binary]),
    {file_descriptor, prim_file, #{handle := PrimRes}} = Raw,
    {_, #file_descriptor{data = EmRes}} = hd(Safe),
    Forged = [{forged_ref, {file_descriptor, emmap, make_ref()}},
              {forged_other_resource, {file_descriptor, emmap, PrimRes}},
              {forged_binary, {file_descriptor, emmap, <<"not a handle">>}},
              {forged_module, {file_descriptor, prim_file, EmRes}},
              {forged_short, {file_descriptor, emmap}},
              {forged_long, {file_descriptor, emmap, EmRes, extra}},
              {raw_file, Raw}],
    C = emmap:open_counters(filename:join(Dir, "cnt"), 4),
    C2 = emmap:open_counters(filename:join(Dir, "cnt_closed"), 2),
    ok = emmap:close_counters(C2),
    {_, RoH} = lists:keyfind(file_shared_ro, 1, Safe),
    {_, OddH} = lists:keyfind(file_window_odd, 1, Safe),
    Counters = [{counters, C}, {counters_closed, C2}, {counters_forged_n, {element(1, C), 1000}},
                {counters_ro, {RoH, 2}}, {counters_misaligned, {OddH, 4}},
                {counters_forged_handle, {{file_descriptor, emmap, make_ref()}, 2}}],
    #st{dir = Dir, handles = Safe ++ Closed ++ Unsafe ++ Forged, counters = Counters}.

pick(L) -> lists:nth(rand:uniform(length(L)), L).

%% Keeps handles from `open', binaries from reads and counters from `open_counters' (each
%% in a short FIFO; handles dropped from it are closed).
absorb(open, {returned, {ok, M}}, St = #st{opened = O}) ->
    {Keep, Drop} = lists:split(min(6, length(O)), [{opened, M} | O]),
    [catch emmap:close(H) || {_, H} <- Drop],
    St#st{opened = Keep};
absorb(F, {returned, {ok, B}}, St = #st{bins = Bs}) when is_binary(B), F =/= open ->
    St#st{bins = lists:sublist([B | Bs], 8)};
absorb(open_counters, {returned, C}, St = #st{counters = Cs}) ->
    St#st{counters = lists:sublist([{opened_counters, C} | Cs], 10)};
absorb(_, _, St) -> St.

handle(#st{handles = H, opened = O}) ->
    {_, M} = pick(H ++ O),
    M.

%%% ---------------------------------------------------------------- arguments

%% Per function: what each argument is meant to be. In 3 calls out of 5 every argument is
%% drawn from its hinted pool; otherwise each argument is any term with probability 1/3.
hints(open, 2) -> [path, opts];
hints(open, 4) -> [path, size, size, opts];
hints(pread, 2) -> [handle, pos_lens];
hints(pread, 3) -> [handle, pos, len];
hints(pwrite, 2) -> [handle, pos_datas];
hints(pwrite, 3) -> [handle, pos, data];
hints(read, 2) -> [handle, len];
hints(write, 2) -> [handle, data];
hints(position, 2) -> [handle, location];
hints(advise, 4) -> [handle, pos, len, advice];
hints(resize, 2) -> [handle, size];
hints(allocate, 3) -> [handle, pos, len];
hints(copy, 3) -> [handle, handle, len];
hints(ipread_s32bu_p32bu, 3) -> [handle, pos, len];
hints(read_handle_info, 2) -> [handle, info_opts];
hints(patomic, 4) -> [handle, pos, op, value];
hints(patomic_cas, 4) -> [handle, pos, value, value];
hints(patomic_read_integer, 2) -> [handle, pos];
hints(open_counters, 1) -> [cpath];
hints(open_counters, 2) -> [cpath, count];
hints(close_counters, 1) -> [counters];
hints(F, 2) when F =:= inc_counter; F =:= dec_counter; F =:= read_counter -> [counters, index];
hints(F, 3) when F =:= inc_counter; F =:= dec_counter; F =:= set_counter -> [counters, index, value];
hints(_, 3) -> [handle, pos, value];             % patomic_add/sub/.../write_integer
hints(_, 1) -> [handle];                         % close, info, read_line, flush, sync, ...
hints(_, A) -> [any || _ <- lists:seq(1, A)].

args(F, A, St) ->
    Wild = rand:uniform(5) > 3,
    Args = [case Wild andalso rand:uniform(3) =:= 1 of
                true -> any(St, 3);
                false -> gen(H, St)
            end || H <- hints(F, A)],
    %% `open' with `truncate' may name a file the pools map: emmap must refuse that
    %% (ebusy) rather than cut a mapped file under the other handles.
    _ = St,
    Args.

ints() ->
    [0, 1, -1, 7, 8, 16, 4095, 4096, 4097, 65535, 65536, 65537,
     ?I64MAX - 7, ?I64MAX, ?I64MAX + 1, ?I64MIN, ?I64MIN - 1,
     ?U64 - 7, ?U64 - 4, ?U64 - 3, ?U64, ?U64 + 1, ?U64 + 8, -?U64, 1 bsl 100, -(1 bsl 100),
     16#7FFFFFFFFFFFFFF, 16#800000000000000].

gen(handle, St) -> handle(St);
gen(pos, _) ->
    case rand:uniform(3) of
        1 -> pick(ints());
        2 -> rand:uniform(70000) - 1;
        3 -> 8 * (rand:uniform(8300) - 1)
    end;
gen(len, _) ->
    case rand:uniform(3) of
        1 -> pick([0, 1, 8, 64, 65, 65536, 65537, 70000, 1 bsl 32, ?I64MAX, ?U64, ?U64 + 1,
                   1 bsl 100, -1, -(1 bsl 64)]);
        _ -> rand:uniform(5000) - 1
    end;
gen(size, _) ->
    %% small or absurd, never in between (no gigabytes of real memory)
    case rand:uniform(3) of
        1 -> pick([0, 1, 12, 4096, 8192, 65536, 65537, 131072, 200000, -1, 1 bsl 62, ?I64MAX,
                   ?U64, ?U64 + 1, 1 bsl 100]);
        _ -> rand:uniform(200000)
    end;
gen(value, _) ->
    case rand:uniform(2) of
        1 -> pick(ints());
        2 -> rand:uniform(1 bsl 64) - (1 bsl 63)
    end;
gen(op, _) ->
    pick([add, sub, 'band', 'bor', 'bxor', xchg, 'and', 'or', 'xor',
          mul, 'ADD', "add", <<"add">>, 0, 5, {add}, undefined]);
gen(info_opts, St) ->
    pick([[], [{time, posix}], [{time, universal}], [{time, local}], [{time, bogus}], [raw],
          [{time, posix} | tail], any(St, 2)]);
gen(advice, _) ->
    pick([normal, sequential, random, no_reuse, will_need, dont_need, sometimes, 0, "normal"]);
gen(location, St) ->
    case rand:uniform(6) of
        1 -> gen(pos, St);
        2 -> pick([bof, cur, eof]);
        3 -> {pick([bof, cur, eof]), gen(pos, St)};
        4 -> {pick([bof, cur, eof]), -gen(pos, St)};
        5 -> pick([{sideways, 1}, {cur, a}, {cur}, {cur, 1, 2}, {bof, 1.0}, "bof"]);
        6 -> any(St, 2)
    end;
gen(data, St) ->
    case rand:uniform(8) of
        1 -> <<>>;
        2 -> crypto_bytes(rand:uniform(100));
        3 -> <<"a", 0, "b", 0>>;
        4 -> binary:copy(<<"z">>, 70000);                    % dirty-scheduler write path
        5 -> deep_iolist(rand:uniform(200));
        6 -> [<<"ab">>, "cd", [$e | <<"f">>] | <<"g">>];      % improper tail: still iodata
        7 -> case St#st.bins of [] -> <<"x">>; Bs -> pick(Bs) end;   % maybe a direct binary
        8 -> pick([[1, 256], [-1], [a], [<<"a">> | b], "abc", 1.5, [[[[]]]], [<<1:3>>],
                   <<1:3>>])
    end;
gen(pos_lens, St) ->
    L = [{gen(pos, St), gen(len, St)} || _ <- lists:seq(1, rand:uniform(4) - 1)],
    case rand:uniform(5) of
        1 -> L ++ [{a, 1}];
        2 -> L ++ foo;
        3 -> [{1, 2, 3} | L];
        _ -> L
    end;
gen(pos_datas, St) ->
    L = [{gen(pos, St), gen(data, St)} || _ <- lists:seq(1, rand:uniform(4) - 1)],
    case rand:uniform(5) of
        1 -> L ++ [{a, <<"x">>}];
        2 -> L ++ foo;
        3 -> [x | L];
        _ -> L
    end;
gen(path, St = #st{dir = Dir}) ->
    J = fun(N) -> filename:join(Dir, N) end,
    New = "new_" ++ integer_to_list(rand:uniform(20)),
    case rand:uniform(12) of
        1 -> J("f4k");
        2 -> J("f64k");
        3 -> J(New);
        4 -> list_to_binary(J(New));
        5 -> list_to_atom(J(pick(["f4k", "f12", New])));
        6 -> [Dir, [$/, [pick(["f4k", New])]]];                     % deep char list
        7 -> J("sub");
        8 -> J(pick(["f12", "empty"]));
        9 -> pick(["", <<>>, '', "/nonexistent_emmap_dir/x", "/dev/zero", J("sub/../f4k")]);
        10 -> pick([J("a\0b"), list_to_binary(J("a\0b")), J(New) ++ [0], [J("x"), 0],
                    list_to_atom(J("c\0d"))]);
        11 -> pick([[16#110000], [-1], [J("x") | y], J("ü"), [J("y"), <<"z">>], {J("x")}]);
        12 -> any(St, 2)
    end;
gen(cpath, St = #st{dir = Dir}) ->
    case rand:uniform(4) of
        1 -> filename:join(Dir, "cnt");
        2 -> filename:join(Dir, "cnt_new_" ++ integer_to_list(rand:uniform(10)));
        3 -> filename:join(Dir, pick(["f12", "empty", "sub", "cnt_closed"]));
        4 -> gen(path, St)
    end;
gen(count, _) -> pick([0, 1, 2, 3, 4, 5, 510, 1000, -1, (1 bsl 56) - 1, 1 bsl 56, ?U64, a, 1.0]);
gen(index, _) -> pick([0, 1, 2, 3, 4, 5, 999, 1000, -1, ?U64, 1 bsl 100, a]);
gen(counters, #st{counters = Cs}) -> element(2, pick(Cs));
gen(opts, St) ->
    Atoms = [read, write, create, truncate, shared, private, shared_validate, sync, direct,
             lock, nolock, populate, noreserve, nonblock, anon, fixed, auto_unlink, hugetlb,
             huge_2mb, huge_1gb, nocache, uninitialized, fixed_size, fit, debug],
    One = fun() ->
                  case rand:uniform(10) of
                      N when N =< 6 -> pick(Atoms);
                      7 -> {size, gen(size, St)};
                      8 -> {pick([chmod, max_inc_size, address]),
                            pick([0, 1, 8#600, 8#7777, 8#10000, 4096, 65536, 1 bsl 46, ?U64,
                                  ?U64 + 1, -1, a])};
                      9 -> pick([bogus, "read", {size}, {size, 1, 2}, {size, a}, {read, 1}, 1]);
                      10 -> pick([read, write, shared, create])
                  end
          end,
    L = [One() || _ <- lists:seq(1, rand:uniform(7) - 1)],
    case rand:uniform(8) of
        1 -> L ++ bad_tail;
        2 -> [read | write];
        _ -> L
    end;
gen(any, St) -> any(St, 3).

%% Any term, Depth levels deep at most.
any(St, Depth) ->
    case rand:uniform(case Depth of 0 -> 7; _ -> 10 end) of
        1 -> pick(ints());
        2 -> pick([ok, error, eof, undefined, true, false, '', add, read, direct,
                   file_descriptor, emmap, 'EMMAP']);
        3 -> pick([<<>>, <<0>>, <<"a", 0, "b">>, crypto_bytes(9), <<1:5>>]);
        4 -> handle(St);
        5 -> pick([1.0, -0.0, 1.0e300, self(), make_ref(), fun() -> ok end, #{}, #{a => 1}]);
        6 -> pick([[], "abc", [0], [a | b], deep_iolist(rand:uniform(50))]);
        7 -> pick([{}, {a}, {file_descriptor, emmap, make_ref()}, {file_descriptor, emmap}]);
        8 -> [any(St, Depth - 1) || _ <- lists:seq(1, rand:uniform(3))];
        9 -> list_to_tuple([any(St, Depth - 1) || _ <- lists:seq(1, rand:uniform(4) - 1)]);
        10 -> [any(St, Depth - 1) | any(St, Depth - 1)]
    end.

crypto_bytes(N) -> << <<(rand:uniform(256) - 1)>> || _ <- lists:seq(1, N) >>.

deep_iolist(0) -> <<"end">>;
deep_iolist(N) -> [deep_iolist(N - 1), $a].

%% A readable one-line form of a call, with handles named by their pool label.
describe(F, Args, St) ->
    Labels = [{H, L} || {L, H} <- St#st.handles ++ St#st.opened ++ St#st.counters],
    Named = [label(A, Labels) || A <- Args],
    io_lib:format("emmap:~s(~ts)", [F, lists:join(", ", [io_lib:format("~0tP", [A, 10])
                                                         || A <- Named])]).

label(T, Labels) ->
    case lists:keyfind(T, 1, Labels) of
        {_, L} -> {'$pool', L};
        false -> T
    end.

%%% ---------------------------------------------------------------- oracle

reasons() ->
    [closed, einval, eacces, alignment, fixed_size, eexist, enoent, eisdir, enomem, enospc,
     enotsup, truncated,
     %% the operating system's errors, as the NIF names them
     ebadf, ebusy, enotdir, enodev, efbig, emfile, enfile, erofs, etxtbsy, eagain, eoverflow,
     enametoolong, eloop, eopnotsupp, eio, eintr, efault, enxio, edquot, eperm,
     %% block storage's own (emmap_blocks:block_error())
     not_initialized, corrupt, mismatch, full].

is_reason(A) -> lists:member(A, reasons()).

is_err({error, A}) -> is_reason(A);
is_err(_) -> false.

is_i64(V) -> is_integer(V) andalso V >= ?I64MIN andalso V =< ?I64MAX.

is_handle(#file_descriptor{module = emmap, data = R}) -> is_reference(R);
is_handle(_) -> false.

counters_fun(F) -> lists:member(F, [inc_counter, dec_counter, set_counter, read_counter]).

%% Classifies an outcome: an atom naming an accepted class, or {bad, Why}.
verdict(F, A, _Args, {raised, error, badarg}) when is_atom(F), is_integer(A) -> badarg;
verdict(open_counters, _, _, {raised, error, {emmap_counters, _, _}}) -> emmap_counters;
verdict(F, _, _, {raised, error, R}) ->
    case counters_fun(F) andalso is_reason(R) of
        %% counters calls return bare integers, so a failure is raised as error:Reason
        %% (closed, einval, eacces, alignment): not in the README's table, reported.
        true -> counters_raised_reason;
        false -> {bad, raised_other_error}
    end;
verdict(_, _, _, {raised, C, _}) -> {bad, {raised, C}};
verdict(F, A, Args, {returned, R}) ->
    case {is_err(R), result_ok(F, A, Args, R)} of
        {true, _} -> error_tuple;
        {false, true} -> normal;
        {false, false} -> {bad, wrong_result_shape}
    end.

result_ok(open, _, _, {ok, M}) -> is_handle(M);
result_ok(close, 1, _, R) -> R =:= ok;
result_ok(info, 1, _, R) ->
    is_map(R) andalso lists:sort(maps:keys(R)) =:=
        lists:sort([size, exist, path, offset, direct, shared, writable, lock, anon,
                    fixed_size, max_inc_size, closed, address, lost_from]);
result_ok(sigbus_handler, 0, _, #{enabled := On, library := Lib} = R) ->
    map_size(R) =:= 2 andalso is_boolean(On) andalso (Lib =:= undefined orelse is_binary(Lib));
result_ok(pread, 3, [_, _, Len], R) -> read_ok(R, Len);
result_ok(pread, 2, _, {ok, L}) ->
    is_list(L) andalso lists:all(fun(B) -> B =:= eof orelse is_binary(B) end, L);
result_ok(pwrite, 3, _, R) -> R =:= ok;
result_ok(pwrite, 2, _, ok) -> true;
result_ok(pwrite, 2, _, {error, {N, Reason}}) -> is_integer(N) andalso N >= 0 andalso is_reason(Reason);
result_ok(read, 2, [_, Len], R) -> read_ok(R, Len);
result_ok(read_line, 1, _, R) -> R =:= eof orelse element(1, R) =:= ok andalso is_binary(element(2, R));
result_ok(write, 2, _, R) -> R =:= ok;
result_ok(position, 2, _, {ok, P}) -> is_integer(P) andalso P >= 0 andalso P =< ?I64MAX;
result_ok(F, _, _, R) when F =:= flush; F =:= sync; F =:= datasync; F =:= advise -> R =:= ok;
result_ok(truncate, 1, _, R) -> R =:= ok;
result_ok(allocate, 3, _, R) -> R =:= ok;
result_ok(read_handle_info, _, _, {ok, I}) -> is_record(I, file_info);
result_ok(copy, 3, [_, _, Len], {ok, N}) ->
    is_integer(N) andalso N >= 0 andalso (Len =:= infinity orelse N =< Len);
result_ok(ipread_s32bu_p32bu, 3, _, eof) -> true;
result_ok(ipread_s32bu_p32bu, 3, _, {ok, {S, P, D}}) ->
    is_integer(S) andalso is_integer(P) andalso (D =:= eof orelse is_binary(D));
result_ok(resize, _, _, {ok, N}) -> is_integer(N) andalso N > 0;
result_ok(patomic_cas, 4, _, {B, V}) -> is_boolean(B) andalso is_i64(V);
result_ok(patomic_write_integer, 3, _, R) -> R =:= ok;
result_ok(patomic_read_integer, 2, _, {ok, V}) -> is_i64(V);
result_ok(F, _, _, {ok, V}) when F =:= patomic; F =:= patomic_add; F =:= patomic_sub;
                                 F =:= patomic_and; F =:= patomic_or; F =:= patomic_xor;
                                 F =:= patomic_xchg -> is_i64(V);
result_ok(open_counters, _, _, {M, N}) -> is_handle(M) andalso is_integer(N) andalso N > 0;
result_ok(close_counters, 1, _, R) -> R =:= ok;
result_ok(F, _, _, V) when F =:= inc_counter; F =:= dec_counter; F =:= set_counter;
                           F =:= read_counter -> is_i64(V);
result_ok(init_block_storage, _, _, R) -> R =:= ok;
result_ok(store_block, 2, _, A) -> is_integer(A) andalso A >= 0;
result_ok(read_block, 2, _, R) -> R =:= eof orelse is_binary(R);
result_ok(free_block, 2, _, R) -> is_boolean(R);
result_ok(read_blocks, 1, _, L) -> is_blocks(L);
result_ok(read_blocks, 3, _, {L, C}) -> is_blocks(L) andalso (C =:= eof orelse is_integer(C));
result_ok(repair_block_storage, 1, _, R) -> R =:= ok;
result_ok(repair_block_storage, 3, _, C) -> C =:= eof orelse (is_integer(C) andalso C >= 0);
result_ok(_, _, _, _) -> false.

is_blocks(L) ->
    is_list(L) andalso lists:all(fun({A, B}) -> is_integer(A) andalso is_binary(B);
                                    (_) -> false end, L).

read_ok(eof, _) -> true;
read_ok({ok, B}, Len) when is_binary(B), is_integer(Len) -> byte_size(B) =< Len;
read_ok(_, _) -> false.

%%%===========================================================================
%%% Specific boundary cases
%%%===========================================================================

modes() ->
    [[], [direct], [nolock], [direct, nolock]].

%% Runs Fun(Path, Bytes) on a new file of Size patterned bytes.
with_file(Size, Fun) ->
    Bytes = list_to_binary([I rem 253 || I <- lists:seq(1, Size)]),
    emmap_test_lib:with_file(Bytes, fun(P) -> Fun(P, Bytes) end).

%% Pos + Len past 2^64 must not wrap around to a small position inside the mapping.
positions_that_wrap_past_2_64_test() ->
    with_file(4096, fun(P, Bytes) ->
        [begin
             {ok, M} = emmap:open(P, [read, write, shared | Mode]),
             Eight = <<"WRAPWRAP">>,
             [?assertEqual({Mode, Pos, {error, einval}}, {Mode, Pos, emmap:pwrite(M, Pos, Eight)})
              || Pos <- [?U64 - 3, ?U64 - 7, ?U64, ?U64 - 4095, ?I64MAX - 3, ?I64MAX + 1]],
             ?assertEqual({error, {0, einval}}, emmap:pwrite(M, [{?U64 - 3, Eight}])),
             ?assertEqual(eof, emmap:pread(M, ?U64 - 3, 8)),
             ?assertEqual(eof, emmap:pread(M, ?U64 - 3, ?U64)),
             ?assertEqual({ok, [eof, eof]}, emmap:pread(M, [{?U64 - 3, 8}, {?U64 - 4095, 8192}])),
             [?assertEqual({Mode, Pos, {error, einval}}, {Mode, Pos, Op(M, Pos)})
              || Pos <- [?U64 - 7, ?U64 - 3, ?U64 - 4087, ?I64MAX - 7, ?I64MAX + 1],
                 Op <- [fun(H, X) -> emmap:patomic_add(H, X, 1) end,
                        fun(H, X) -> emmap:patomic(H, X, xchg, -1) end,
                        fun(H, X) -> emmap:patomic_cas(H, X, 0, 1) end,
                        fun(H, X) -> emmap:patomic_read_integer(H, X) end,
                        fun(H, X) -> emmap:patomic_write_integer(H, X, 7) end]],
             %% a hint about bytes past the end is about nothing (as for files): no wrap
             ?assertEqual(ok, emmap:advise(M, ?U64 - 3, 8, normal)),
             %% the handle position can sit at 2^63 - 1, the largest file offset, and no
             %% further (it could reach 2^64 - 1); a write from the top must not wrap
             {ok, ?I64MAX} = emmap:position(M, ?I64MAX),
             ?assertEqual({error, einval}, emmap:position(M, {cur, ?I64MAX - 2})),
             ?assertEqual({error, einval}, emmap:position(M, {cur, 1})),
             ?assertEqual({ok, ?I64MAX}, emmap:position(M, cur)),
             ?assertEqual({error, einval}, emmap:write(M, Eight)),
             ?assertEqual(eof, emmap:read(M, 8)),
             ?assertEqual({ok, ?I64MAX - 3}, emmap:position(M, {cur, -3})),
             ?assertEqual({error, einval}, emmap:write(M, Eight)),
             ?assertEqual({ok, ?I64MAX - 3}, emmap:position(M, cur)),
             ?assertEqual({error, einval}, emmap:write(M, <<"x">>)),
             ?assertEqual(eof, emmap:read_line(M)),
             %% nothing was written anywhere
             ?assertEqual({ok, Bytes}, emmap:pread(M, 0, 4096)),
             ok = emmap:close(M),
             ?assertEqual({ok, Bytes}, file:read_file(P))
         end || Mode <- modes()]
    end).

%% A 2^64-1 (or larger) length in direct mode gives the part up to the end: an O(1)
%% binary of the right size, pointing into the mapping.
direct_read_of_2_64_minus_1_bytes_test() ->
    with_file(10000, fun(P, _) ->
        [begin
             {ok, Bytes} = file:read_file(P),
             {ok, M} = emmap:open(P, [read, write, shared, direct | Lock]),
             {ok, All} = emmap:pread(M, 0, ?U64),
             ?assertEqual(Bytes, All),
             {ok, Tail} = emmap:pread(M, 9990, ?U64),
             ?assertEqual(binary:part(Bytes, 9990, 10), Tail),
             ?assertEqual({ok, All}, emmap:pread(M, 0, ?U64 + 1)),
             ?assertEqual({ok, All}, emmap:pread(M, 0, 1 bsl 200)),
             ?assertEqual(eof, emmap:pread(M, 10000, ?U64)),
             ?assertEqual({ok, [All, eof]}, emmap:pread(M, [{0, ?U64}, {?U64, ?U64}])),
             {ok, 5} = emmap:position(M, 5),
             {ok, Rest} = emmap:read(M, ?U64),
             ?assertEqual(binary:part(Bytes, 5, 9995), Rest),
             ?assertEqual(eof, emmap:read(M, ?U64)),
             %% they are views of the mapping: a later write shows through
             ok = emmap:pwrite(M, 9995, <<"LATER">>),
             ?assertEqual(<<"LATER">>, binary:part(All, 9995, 5)),
             ?assertEqual(<<"LATER">>, binary:part(Tail, 5, 5)),
             ok = emmap:close(M),
             ?assertEqual(10000, byte_size(All))
         end || Lock <- [[lock], [nolock]]]
    end).

%% A NUL anywhere in the path is badarg in every path form; the name is not cut at the NUL
%% (no file named by the part before it appears), for open and open_counters alike.
nul_in_path_is_badarg_test() ->
    Dir = tmp_dir("fuzz"),
    try
        Base = filename:join(Dir, "cut"),
        Forms = [Base ++ [0] ++ "x", Base ++ [0], [0 | Base],
                 list_to_binary(Base ++ [0] ++ "x"), <<(list_to_binary(Base))/binary, 0>>,
                 list_to_atom(Base ++ [0] ++ "x"), [Dir, "/cut", [0], "x"],
                 [Dir, <<"/cut", 0, "x">>]],
        [begin
             ?assertError(badarg, emmap:open(F, [create, read, write, {size, 8}])),
             ?assertError(badarg, emmap:open(F, 0, 8, [create, read, write, shared])),
             ?assertError(badarg, emmap:open_counters(F, 1)),
             ?assertError(badarg, emmap:open_counters(F))
         end || F <- Forms],
        ?assertEqual({ok, []}, file:list_dir(Dir))
    after
        rm_rf(Dir)
    end.

%% An option list that is not a proper list is badarg, and nothing is created or mapped.
improper_option_list_is_badarg_test() ->
    Dir = tmp_dir("fuzz"),
    try
        P = filename:join(Dir, "f"),
        Maps0 = mapped(Dir),
        Lists = [[read | write], [create, read, write, {size, 8} | shared],
                 [create, {size, 8} | {chmod, 8#600}], [create, read | [write | direct]],
                 [anon | read], [anon, {size, 4096} | write], [create | <<"write">>]],
        [begin
             ?assertError(badarg, emmap:open(P, Opts)),
             ?assertError(badarg, emmap:open(P, 0, 8, Opts)),
             ?assertError(badarg, emmap:open("", 0, 4096, Opts))
         end || Opts <- Lists],
        ?assertEqual({ok, []}, file:list_dir(Dir)),
        ?assertEqual(Maps0, mapped(Dir))
    after
        rm_rf(Dir)
    end.

%% README: "something that is not an emmap handle" raises badarg. A tuple shaped like a
%% handle with a reference that is not an emmap resource must not be taken for one, even
%% when the other arguments are out of range (those are checked first in emmap.erl).
forged_handles_raise_badarg_test() ->
    Dir = tmp_dir("fuzz"),
    try forged_handles(Dir) after rm_rf(Dir) end.

forged_handles(Dir) ->
    {ok, Raw} = file:open(filename:join(Dir, "raw"), [raw, read, write, binary]),
    #file_descriptor{data = #{handle := PrimRes}} = Raw,
    Forged = [{file_descriptor, emmap, make_ref()}, {file_descriptor, emmap, PrimRes}],
    Calls = [fun(H) -> emmap:pread(H, -1, 1) end,
             fun(H) -> emmap:pread(H, 1 bsl 64, 1) end,
             fun(H) -> emmap:pwrite(H, -1, <<"x">>) end,
             fun(H) -> emmap:pwrite(H, 1 bsl 64, <<"x">>) end,
             fun(H) -> emmap:position(H, 1 bsl 64) end,
             fun(H) -> emmap:advise(H, -1, 0, normal) end,
             fun(H) -> emmap:resize(H, -1) end,
             fun(H) -> emmap:resize(H, 1 bsl 64) end,
             fun(H) -> emmap:patomic_add(H, -8, 1) end,
             fun(H) -> emmap:patomic_cas(H, -8, 0, 1) end,
             fun(H) -> emmap:patomic_read_integer(H, -8) end,
             fun(H) -> emmap:patomic_write_integer(H, -8, 1) end,
             fun(H) -> emmap:truncate(H) end,
             fun(H) -> emmap:allocate(H, -1, 1) end,
             fun(H) -> emmap:allocate(H, 0, 0) end,
             fun(H) -> emmap:read_handle_info(H) end,
             fun(H) -> emmap:copy(H, H, 1) end,
             fun(H) -> emmap:ipread_s32bu_p32bu(H, 0, -1) end,
             fun(H) -> emmap:ipread_s32bu_p32bu(H, -1, 1) end],
    Got = [{I, H, catch_all(fun() -> C(H) end)}
           || H <- Forged, {I, C} <- lists:zip(lists:seq(1, length(Calls)), Calls)],
    ok = file:close(Raw),
    ?assertEqual([], [G || G = {_, _, R} <- Got, R =/= {raised, error, badarg}]).

catch_all(F) ->
    try F() catch C:R -> {raised, C, R} end.

%% README, Errors: "A well-typed request that cannot be done returns {error, Reason} and
%% changes nothing". An `open' that fails must leave an existing file as it was, also when
%% it was asked to `truncate' it or to grow it (`fit').
%%
%% Found by this test (fixed): `truncate' used to empty the file before the length was
%% checked and before mmap, and `fit' grew it before mmap; when the open then failed, the
%% caller got {error, _} and had lost the file's contents (or had a file of another size).
%% The repro that used to lose data:
%%   file:write_file("/tmp/p", <<"precious data">>),
%%   {error, einval} = emmap:open("/tmp/p", [truncate, read, write, shared]),
%%   {ok, <<>>} = file:read_file("/tmp/p").
failed_open_changes_nothing_test() ->
    Dir = tmp_dir("fuzz"),
    try
        P = filename:join(Dir, "precious"),
        Orig = <<"precious data">>,
        {ok, Taken} = emmap:open("", 0, 4096, [anon]),
        #{address := A} = emmap:info(Taken),
        Cases = [{no_length, 0, 0, [truncate, read, write, shared]},
                 {window_past_end, 100, 0, [truncate, read, write, shared]},
                 {too_big, 0, 1 bsl 62, [truncate, read, write, shared]},
                 {mmap_fails, 0, 8, [truncate, read, write, shared, hugetlb]},
                 {address_taken, 0, 8, [truncate, read, write, shared, {address, A}]},
                 {fit_then_mmap_fails, 0, 1 bsl 30, [read, write, shared, fit, hugetlb]},
                 {fit_then_address_taken, 0, 8192, [read, write, shared, fit, {address, A}]}],
        Got = [begin
                   ok = file:write_file(P, Orig),
                   R = emmap:open(P, Off, Len, Opts),
                   {Name, R, file:read_file(P)}
               end || {Name, Off, Len, Opts} <- Cases],
        ok = emmap:close(Taken),
        [?assertMatch({_, {error, _}, _}, G) || G <- Got],
        ?assertEqual([], [G || G = {_, _, Now} <- Got, Now =/= {ok, Orig}])
    after
        rm_rf(Dir)
    end.
