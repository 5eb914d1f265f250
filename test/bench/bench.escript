#!/usr/bin/env escript
%% -*- erlang -*-
%%! +sbwt none +sbwtdcpu none +sbwtdio none
%%
%% emmap benchmark: ns/op (median of rounds) and ops/s, with the Erlang-native alternative
%% measured in the same run. Run it with `make bench` (which builds first).
%% Writes the table to stdout and as CSV to test/bench/results.csv.
-mode(compile).

-define(ROUNDS, 7).
-define(SMALL_OPS, 200000).
-define(FILE_SIZE, 64 * 1024 * 1024).
-define(NOFFS, 65536).

main(Args) ->
    Top = filename:dirname(filename:dirname(filename:dirname(filename:absname(escript:script_name())))),
    [code:add_patha(filename:join([Top, "_build", P, "lib", "emmap", D]))
     || P <- ["default", "test"], D <- ["ebin", "test"]],
    {module, emmap} = code:ensure_loaded(emmap),
    load_benches(Top),
    Quick = lists:member("quick", Args),
    Rows = run(Quick),
    print(Rows),
    Csv = filename:join([Top, "test", "bench", "results.csv"]),
    ok = file:write_file(Csv, csv(Rows)),
    io:format("~nCSV written to ~s~n", [Csv]).

%% The bench modules next to this script are no test modules (the EUnit run does not
%% compile or collect them): they are compiled and loaded here.
load_benches(Top) ->
    [begin
         Src = filename:join([Top, "test", "bench", atom_to_list(M) ++ ".erl"]),
         {ok, M, Bin} = compile:file(Src, [binary, report, warnings_as_errors, debug_info]),
         {module, M} = code:load_binary(M, Src, Bin)
     end || M <- [emmap_queue_bench, emmap_blocks_bench]],
    ok.

%%% ------------------------------------------------------------------ running

run(Quick) ->
    Dir = "/tmp/emmap_bench_" ++ os:getpid(),
    ok = filelib:ensure_dir(Dir ++ "/"),
    Path = filename:join(Dir, "data"),
    ok = file:write_file(Path, <<>>),
    {ok, Fd0} = file:open(Path, [raw, binary, write]),
    ok = file:pwrite(Fd0, ?FILE_SIZE - 1, <<0>>),
    ok = file:close(Fd0),
    {ok, Copy} = emmap:open(Path, [read, write, shared]),
    {ok, Direct} = emmap:open(Path, [read, write, shared, direct]),
    {ok, CopyNL} = emmap:open(Path, [read, write, shared, nolock]),
    {ok, Raw} = file:open(Path, [raw, binary, read, write]),
    %% touch every page once so page faults do not pollute the first round
    [ok = emmap:pwrite(Copy, P, <<1>>) || P <- lists:seq(0, ?FILE_SIZE - 1, 4096)],
    Hot = offsets(4096 - 40),
    Rand = offsets(?FILE_SIZE - 40),
    Slot = rand_slots(),
    Bin40 = binary:copy(<<"x">>, 40),
    N = case Quick of true -> 20000; false -> ?SMALL_OPS end,
    RawN = N,                       % raw file calls are small ops too: same count
    Counters = emmap:open_counters(filename:join(Dir, "counters"), 4),
    Atomics = atomics:new(1, []),
    Ctrs = counters:new(1, [write_concurrency]),
    Ets = ets:new(bench, [public, set, {write_concurrency, true}]),
    true = ets:insert(Ets, {k, 0}),
    Small =
      [{"pread 40B hot page", "emmap copy", N, fun(O) -> {ok, _} = emmap:pread(Copy, O, 40) end, Hot},
       {"pread 40B hot page", "emmap copy nolock", N, fun(O) -> {ok, _} = emmap:pread(CopyNL, O, 40) end, Hot},
       {"pread 40B hot page", "emmap direct", N, fun(O) -> {ok, _} = emmap:pread(Direct, O, 40) end, Hot},
       {"pread 40B hot page", "file:pread raw", RawN, fun(O) -> {ok, _} = file:pread(Raw, O, 40) end, Hot},
       {"pread 40B random 64MiB", "emmap copy", N, fun(O) -> {ok, _} = emmap:pread(Copy, O, 40) end, Rand},
       {"pread 40B random 64MiB", "emmap direct", N, fun(O) -> {ok, _} = emmap:pread(Direct, O, 40) end, Rand},
       {"pread 40B random 64MiB", "file:pread raw", RawN, fun(O) -> {ok, _} = file:pread(Raw, O, 40) end, Rand},
       {"pwrite 40B hot page", "emmap", N, fun(O) -> ok = emmap:pwrite(Copy, O, Bin40) end, Hot},
       {"pwrite 40B hot page", "emmap nolock", N, fun(O) -> ok = emmap:pwrite(CopyNL, O, Bin40) end, Hot},
       {"pwrite 40B hot page", "file:pwrite raw", RawN, fun(O) -> ok = file:pwrite(Raw, O, Bin40) end, Hot},
       {"pwrite 40B random 64MiB", "emmap", N, fun(O) -> ok = emmap:pwrite(Copy, O, Bin40) end, Rand},
       {"pwrite 40B random 64MiB", "file:pwrite raw", RawN, fun(O) -> ok = file:pwrite(Raw, O, Bin40) end, Rand},
       {"atomic add", "emmap:patomic add", N, fun(_) -> {ok, _} = emmap:patomic(Copy, 64, add, 1) end, Slot},
       {"atomic add", "emmap:patomic add nolock", N, fun(_) -> {ok, _} = emmap:patomic(CopyNL, 64, add, 1) end, Slot},
       {"atomic add", "emmap:inc_counter", N, fun(_) -> emmap:inc_counter(Counters, 0) end, Slot},
       {"atomic add", "atomics:add_get", N, fun(_) -> atomics:add_get(Atomics, 1, 1) end, Slot},
       {"atomic add", "counters:add+get", N, fun(_) -> counters:add(Ctrs, 1, 1), counters:get(Ctrs, 1) end, Slot},
       {"atomic add", "ets:update_counter", N, fun(_) -> ets:update_counter(Ets, k, 1) end, Slot},
       {"loop overhead", "empty fun", N, fun(_) -> ok end, Slot}],
    SmallRows = [measure(Op, Impl, Ops, F, Offs) || {Op, Impl, Ops, F, Offs} <- Small],
    BigN = case Quick of true -> 50; false -> 300 end,
    Mi = 1024 * 1024,
    BigOffs = list_to_tuple([rand:uniform(63) * Mi || _ <- lists:seq(1, ?NOFFS)]),
    Big =
      [{"pread 1MiB", "emmap copy", BigN, fun(O) -> {ok, _} = emmap:pread(Copy, O, Mi) end, BigOffs},
       {"pread 1MiB", "emmap direct", BigN * 100, fun(O) -> {ok, _} = emmap:pread(Direct, O, Mi) end, BigOffs},
       {"pread 1MiB", "file:pread raw", BigN, fun(O) -> {ok, _} = file:pread(Raw, O, Mi) end, BigOffs}],
    BigRows = [measure(Op, Impl, Ops, F, Offs) || {Op, Impl, Ops, F, Offs} <- Big],
    Scale = scaling(Copy, Direct, Bin40, Rand, N),
    Resp = responsiveness(Copy, Quick),
    Extra = extra_rows(N),
    emmap:close(Copy), emmap:close(Direct), emmap:close(CopyNL), file:close(Raw),
    emmap:close_counters(Counters),
    _ = os:cmd("rm -rf " ++ Dir),
    SmallRows ++ BigRows ++ Scale ++ Resp ++ Extra.

%% Rows from the queue and block-storage benches (each prints its own table too), after
%% the two container rows of the performance targets, each next to its floor.
extra_rows(N) ->
    Containers = container_rows(N),
    Queue = [{"queue push+pop pair", Name, Ns, 1.0e9 / Ns} || {Name, Ns} <- emmap_queue_bench:run()],
    Blocks = [{"block storage 1531 B", atom_to_list(Op), Ns, 1.0e9 / Ns}
              || {Op, Ns} <- emmap_blocks_bench:run()],
    Containers ++ Queue ++ Blocks.

%% Queue push + pop of a 100-byte term and block store + read + free of 1531 bytes, hot
%% (the queue holds at most one message, the block goes back to the same slot), each in a
%% fresh process with a plain loop, next to a floor measured the same way in the same run:
%% for the queue, the term_to_binary a push needs and two NIF calls; for blocks, a pwrite
%% and a pread of 1531 bytes and an atomic read: the same three calls and copies without
%% bookkeeping or checksums.
container_rows(N) ->
    Dir = "/tmp/emmap_bench_c_" ++ os:getpid(),
    ok = filelib:ensure_dir(Dir ++ "/"),
    {ok, Q} = emmap_queue:open(filename:join(Dir, "q"), 65536, []),
    {ok, M} = emmap:open(filename:join(Dir, "b"), 0, 1, [create, read, write, shared]),
    ok = emmap_blocks:init_block_storage(M, 1531),
    {ok, F} = emmap:open(filename:join(Dir, "f"), 0, 1 bsl 20, [create, read, write, shared]),
    Term = {msg, 12345, binary:copy(<<"p">>, 80)},
    Bin = binary:copy(<<"b">>, 1531),
    Rows =
      [fresh("queue push+pop 100 B", "emmap_queue push+pop_and_purge", N,
             fun() -> ok = emmap_queue:push(Q, Term), Term = emmap_queue:pop_and_purge(Q) end),
       fresh("queue push+pop 100 B", "floor: term_to_binary+2 NIFs", N,
             fun() ->
                     <<_/binary>> = term_to_binary(Term, [{compressed, 0}, {minor_version, 2}]),
                     {ok, _} = emmap:patomic_read_integer(F, 0),
                     {ok, _} = emmap:patomic_read_integer(F, 0)
             end),
       fresh("blocks store+read+free 1531 B", "emmap_blocks", N,
             fun() ->
                     A = emmap_blocks:store_block(M, Bin),
                     <<_/binary>> = emmap_blocks:read_block(M, A),
                     true = emmap_blocks:free_block(M, A)
             end),
       fresh("blocks store+read+free 1531 B", "floor: pwrite+pread+patomic", N,
             fun() ->
                     ok = emmap:pwrite(F, 4096, Bin),
                     {ok, _} = emmap:pread(F, 4096, 1531),
                     {ok, _} = emmap:patomic_read_integer(F, 0)
             end)],
    ok = emmap_queue:close(Q), ok = emmap:close(M), ok = emmap:close(F),
    _ = os:cmd("rm -rf " ++ Dir),
    Rows.

%% Median ns per call of F() over the rounds, measured in a new process (this one's heap
%% holds large tuples of offsets, which would slow down every garbage collection).
fresh(Op, Impl, N, F) ->
    Self = self(),
    Pid = spawn_link(fun() ->
                             _ = plain_loop(F, min(N, 10000)),
                             Ts = [begin
                                       T0 = erlang:monotonic_time(nanosecond),
                                       plain_loop(F, N),
                                       (erlang:monotonic_time(nanosecond) - T0) / N
                                   end || _ <- lists:seq(1, ?ROUNDS)],
                             Self ! {self(), median(Ts)}
                     end),
    Ns = receive {Pid, T} -> T end,
    {Op, Impl, Ns, 1.0e9 / Ns}.

plain_loop(_F, 0) -> ok;
plain_loop(F, N) -> F(), plain_loop(F, N - 1).

offsets(Max) ->
    list_to_tuple([rand:uniform(Max + 1) - 1 || _ <- lists:seq(1, ?NOFFS)]).

rand_slots() ->
    list_to_tuple(lists:duplicate(?NOFFS, 0)).

%% Median ns/op over the rounds.
measure(Op, Impl, N, F, Offs) ->
    _ = loop(F, Offs, min(N, 10000), 0),
    Ts = [begin
              T0 = erlang:monotonic_time(nanosecond),
              loop(F, Offs, N, 0),
              (erlang:monotonic_time(nanosecond) - T0) / N
          end || _ <- lists:seq(1, ?ROUNDS)],
    Ns = median(Ts),
    {Op, Impl, Ns, 1.0e9 / Ns}.

loop(_F, _Offs, 0, _I) -> ok;
loop(F, Offs, N, I) ->
    F(element(I + 1, Offs)),
    loop(F, Offs, N - 1, (I + 1) band (?NOFFS - 1)).

median(L) ->
    S = lists:sort(L),
    lists:nth((length(S) + 1) div 2, S).

%% Total ops/s with 1, 2 and 4 processes each doing N ops.
scaling(Copy, Direct, Bin40, Rand, N) ->
    Ops = [{"pread 40B copy", fun(O) -> {ok, _} = emmap:pread(Copy, O, 40) end},
           {"pread 40B direct", fun(O) -> {ok, _} = emmap:pread(Direct, O, 40) end},
           {"pwrite 40B", fun(O) -> ok = emmap:pwrite(Copy, O, Bin40) end},
           {"patomic add (shared slot)", fun(_) -> {ok, _} = emmap:patomic(Copy, 64, add, 1) end},
           {"patomic add (own slot)", own_slot}],
    [begin
         Ts = [par_run(P, F, Copy, Rand, N) || _ <- lists:seq(1, 5)],
         T = median(Ts),
         Total = P * N,
         {"scaling: " ++ Name, integer_to_list(P) ++ " procs", T / Total * P, Total / (T / 1.0e9)}
     end || {Name, F} <- Ops, P <- [1, 2, 4]].

par_run(P, F0, Copy, Rand, N) ->
    Self = self(),
    Pids = [spawn_opt(fun() ->
                          F = case F0 of
                                  own_slot -> fun(_) -> {ok, _} = emmap:patomic(Copy, 4096 + 64 * K, add, 1) end;
                                  _ -> F0
                              end,
                          receive go -> ok end,
                          loop(F, Rand, N, K * 1000),
                          Self ! {done, self()}
                      end, [link]) || K <- lists:seq(1, P)],
    T0 = erlang:monotonic_time(nanosecond),
    [Pid ! go || Pid <- Pids],
    [receive {done, Pid} -> ok end || Pid <- Pids],
    erlang:monotonic_time(nanosecond) - T0.

%% While one process reads 64 MiB copies back to back, how long does a message round trip
%% to another process take?
responsiveness(Copy, Quick) ->
    Reader = spawn_link(fun() -> big_reads(Copy) end),
    Echo = spawn_link(fun Echo() -> receive {ping, From} -> From ! pong, Echo() end end),
    timer:sleep(50),
    Samples = [begin
                   T0 = erlang:monotonic_time(microsecond),
                   Echo ! {ping, self()},
                   receive pong -> ok end,
                   T = erlang:monotonic_time(microsecond) - T0,
                   timer:sleep(1),
                   T
               end || _ <- lists:seq(1, case Quick of true -> 300; false -> 2000 end)],
    unlink(Reader), exit(Reader, kill),
    unlink(Echo), exit(Echo, kill),
    S = lists:sort(Samples),
    Len = length(S),
    P = fun(Q) -> lists:nth(max(1, round(Q * Len)), S) end,
    [{"ping latency during 64MiB copy reads", "p50 round trip", P(0.5) * 1000.0, 0.0},
     {"ping latency during 64MiB copy reads", "p99 round trip", P(0.99) * 1000.0, 0.0},
     {"ping latency during 64MiB copy reads", "max round trip", lists:last(S) * 1000.0, 0.0}].

big_reads(Copy) ->
    {ok, _} = emmap:pread(Copy, 0, ?FILE_SIZE),
    big_reads(Copy).

%%% ------------------------------------------------------------------ output

print(Rows) ->
    io:format("~n~-40s ~-28s ~12s ~14s~n", ["operation", "implementation", "ns/op", "ops/s"]),
    io:format("~s~n", [lists:duplicate(97, $-)]),
    [io:format("~-40s ~-28s ~12.1f ~14s~n", [Op, Impl, float(Ns), fmt_rate(Rate)])
     || {Op, Impl, Ns, Rate} <- Rows],
    ok.

fmt_rate(R) when R == 0 -> "-";
fmt_rate(R) -> integer_to_list(round(R)).

csv(Rows) ->
    ["operation,implementation,ns_per_op,ops_per_s\n" |
     [io_lib:format("~s,~s,~.1f,~w~n", [Op, Impl, float(Ns), round(Rate)]) || {Op, Impl, Ns, Rate} <- Rows]].
