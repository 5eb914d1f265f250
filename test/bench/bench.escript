#!/usr/bin/env escript
%% -*- erlang -*-
%%! +sbwt none +sbwtdcpu none +sbwtdio none
%%
%% emmap benchmark: ns/op (median of rounds) and ops/s, with the Erlang-native alternative
%% measured in the same run. Run it with `make bench` (which builds first).
%%
%% The machine is shared: another process may take the core away for milliseconds at any
%% moment, and a timed stretch that is interrupted measures the interruption. So rows are
%% timed in short stretches (a round of a per-call row is ?CALLS calls, a fraction of a
%% millisecond), in many rounds, each round running every row of a group once in a fresh
%% random order; a row's figure is the median over the rounds, a ratio the median of the
%% per-round ratios. Most short stretches run uninterrupted, and the median ignores the
%% rest.
%% Writes the tables to stdout and as CSV to _build/bench/results.csv (every row) and
%% _build/bench/targets.csv (the performance targets).
-mode(compile).

%% Rounds of the interleaved groups (full run, `quick' run); calls per round of a
%% per-call row (the `file:' rows, system calls, do ?FILE_CALLS).
-define(ROUNDS, 1001).
-define(QUICK_ROUNDS, 101).
-define(CALLS, 2000).
-define(FILE_CALLS, 50).
%% Calls per process in the scaling rows.
-define(SCALE_OPS, 200000).
-define(FILE_SIZE, 64 * 1024 * 1024).
-define(NOFFS, 65536).

main(Args) ->
    Top = filename:dirname(filename:dirname(filename:dirname(filename:absname(escript:script_name())))),
    [code:add_patha(filename:join([Top, "_build", P, "lib", "emmap", D]))
     || P <- ["default", "test"], D <- ["ebin", "test"]],
    {module, emmap} = code:ensure_loaded(emmap),
    case os:getenv("EMMAP_BENCH_FLOOR") of
        false -> os:putenv("EMMAP_BENCH_FLOOR",
                           filename:join([Top, "target", "release", "libemmap_bench_floor"]));
        _ -> ok
    end,
    load_benches(Top),
    Quick = lists:member("quick", Args),
    {_, Load0} = uptime(),
    Rows = run(Quick),
    print(Rows),
    Targets = targets(Rows),
    print_targets(Targets, Load0),
    Out = filename:join([Top, "_build", "bench"]),
    ok = filelib:ensure_dir(filename:join(Out, "x")),
    Csv = filename:join(Out, "results.csv"),
    ok = file:write_file(Csv, csv(Rows)),
    TCsv = filename:join(Out, "targets.csv"),
    ok = file:write_file(TCsv, targets_csv(Targets)),
    io:format("~nCSV written to ~s and ~s~n", [Csv, TCsv]).

%% The bench modules next to this script are no test modules (the EUnit run does not
%% compile or collect them): they are compiled and loaded here. `emmap_bench_floor' loads
%% the bench-only NIF library of the floors, which `make bench' builds (test/bench/floor).
load_benches(Top) ->
    [begin
         Src = filename:join([Top, "test", "bench", atom_to_list(M) ++ ".erl"]),
         {ok, M, Bin} = compile:file(Src, [binary, report, warnings_as_errors, debug_info]),
         {module, M} = code:load_binary(M, Src, Bin)
     end || M <- [emmap_queue_bench, emmap_blocks_bench, emmap_bench_floor, emmap_bench_rows]],
    ok.

%%% ------------------------------------------------------------------ running

run(Quick) ->
    Rounds = case Quick of true -> ?QUICK_ROUNDS; false -> ?ROUNDS end,
    Ctx = emmap_bench_rows:setup(),
    #{copy := Copy, direct := Direct, raw := Raw, rand := Rand} = Ctx,
    Bin40 = binary:copy(<<"x">>, 40),
    SmallRows = interleaved([{Op, Impl, calls(Impl), F, Offs}
                             || {Op, Impl, F, Offs} <- emmap_bench_rows:rows(Ctx)], Rounds),
    Mi = 1024 * 1024,
    BigOffs = list_to_tuple([rand:uniform(63) * Mi || _ <- lists:seq(1, ?NOFFS)]),
    {ok, Mib} = emmap:pread(Copy, 0, Mi),
    Big =
      [{"pread 1MiB", "emmap copy", 2, fun(O) -> {ok, _} = emmap:pread(Copy, O, Mi) end, BigOffs},
       {"pread 1MiB", "emmap direct", 200, fun(O) -> {ok, _} = emmap:pread(Direct, O, Mi) end, BigOffs},
       {"pread 1MiB", "file:pread raw", 2, fun(O) -> {ok, _} = file:pread(Raw, O, Mi) end, BigOffs},
       {"pread 1MiB", "floor: binary:copy 1MiB", 4, fun(_) -> binary:copy(Mib) end, BigOffs}],
    BigRows = interleaved(Big, Rounds),
    Scale = scaling(Copy, Direct, Bin40, Rand, case Quick of true -> 20000; false -> ?SCALE_OPS end),
    Resp = responsiveness(Copy, Quick),
    Extra = extra_rows(Ctx, Rounds),
    emmap_bench_rows:cleanup(Ctx),
    SmallRows ++ BigRows ++ Scale ++ Resp ++ Extra.

calls("file:" ++ _) -> ?FILE_CALLS;
calls(_) -> ?CALLS.

%% Rows from the queue and block-storage benches (each prints its own table too), after
%% the two container rows of the performance targets, each next to its floor.
extra_rows(Ctx, Rounds) ->
    Containers = fresh([{Op, Impl, 250, F, Offs}
                        || {Op, Impl, F, Offs} <- emmap_bench_rows:containers(Ctx)], Rounds),
    Queue = [{"queue push+pop pair", Name, Ns, 1.0e9 / Ns} || {Name, Ns} <- emmap_queue_bench:run()],
    Blocks = [{"block storage 1531 B", atom_to_list(Op), Ns, 1.0e9 / Ns}
              || {Op, Ns} <- emmap_blocks_bench:run()],
    Containers ++ Queue ++ Blocks.

%% `interleaved/2' in a new process (this one's heap holds large tuples of offsets, which
%% would slow down every garbage collection of rows that allocate).
fresh(Rows, Rounds) ->
    Self = self(),
    Pid = spawn_link(fun() -> Self ! {self(), interleaved(Rows, Rounds)} end),
    receive {Pid, Result} -> Result end.

%% Each row `{Op, Impl, N, F, Offsets}' measured in `Rounds' rounds of N calls, each
%% round running every row once in a fresh random order (so a disturbance of the machine
%% hits all rows alike, not the few that ran at that moment); a row walks on through its
%% offsets from round to round. Returns `{Op, Impl, MedianNs, OpsPerS, Rounds}', `Rounds'
%% the ns of each round in round order, from which `targets/1' takes per-round ratios.
interleaved(Rows, Rounds) ->
    Keyed = lists:zip(lists:seq(1, length(Rows)), Rows),
    [warm(F, Offs, 5 * N) || {_, {_, _, N, F, Offs}} <- Keyed],
    Runs = [maps:from_list([{K, time(F, Offs, N, (R * N) band (?NOFFS - 1))}
                            || {K, {_, _, N, F, Offs}} <- shuffle(Keyed)])
            || R <- lists:seq(1, Rounds)],
    [begin
         Ts = [maps:get(K, Run) || Run <- Runs],
         Ns = median(Ts),
         {Op, Impl, Ns, 1.0e9 / Ns, Ts}
     end || {K, {Op, Impl, _, _, _}} <- Keyed].

warm(F, Offs, N) -> emmap_bench_rows:loop(F, Offs, N, 0).

time(F, Offs, N, I) ->
    T0 = erlang:monotonic_time(nanosecond),
    emmap_bench_rows:loop(F, Offs, N, I),
    (erlang:monotonic_time(nanosecond) - T0) / N.

shuffle(L) -> [X || {_, X} <- lists:sort([{rand:uniform(), X} || X <- L])].

loop(F, Offs, N, I) -> emmap_bench_rows:loop(F, Offs, N, I).

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

%%% ------------------------------------------------------------------ targets

target_defs() -> emmap_bench_rows:targets().

%% `{Label, Ns, RefName, Ratio, TargetText, Met, FloorName, FloorNs}' per target whose
%% rows ran.
targets(Rows) ->
    Find = fun(none) -> none;
              ({Op, Impl}) ->
                   case [R || R <- Rows, element(1, R) =:= Op, element(2, R) =:= Impl] of
                       [R | _] -> R;
                       [] -> none
                   end
           end,
    [begin
         Row = Find(RowKey),
         Ref = Find(RefKey),
         Floor = Find(FloorKey),
         Ns = element(3, Row),
         {Ratio, TText, Met} =
             case Target of
                 {ratio, Max} when Ref =/= none ->
                     R = ratio(Row, Ref),
                     {R, io_lib:format("<= ~.2fx", [Max]), R =< Max};
                 {ns, Max} ->
                     {none, io_lib:format("<= ~s", [fmt_ns(Max)]), Ns =< Max}
             end,
         {Label, Ns, ref_name(Ref), Ratio, lists:flatten(TText), Met,
          ref_name(Floor), case Floor of none -> none; _ -> element(3, Floor) end}
     end || {Label, RowKey, RefKey, Target, FloorKey} <- target_defs(),
            Find(RowKey) =/= none].

%% The median of the per-round ratios where both rows were measured round by round in
%% the same rounds, else the ratio of the medians.
ratio({_, _, _, _, Ts}, {_, _, _, _, Rs}) when length(Ts) =:= length(Rs) ->
    median([T / R || {T, R} <- lists:zip(Ts, Rs)]);
ratio(Row, Ref) ->
    element(3, Row) / element(3, Ref).

ref_name(none) -> "-";
ref_name(R) -> element(2, R).

fmt_ns(Ns) when Ns >= 1.0e6 -> io_lib:format("~.2f ms", [Ns / 1.0e6]);
fmt_ns(Ns) when Ns >= 1.0e4 -> io_lib:format("~.1f us", [Ns / 1.0e3]);
fmt_ns(Ns) -> io_lib:format("~.1f ns", [float(Ns)]).

uptime() ->
    case file:read_file("/proc/loadavg") of
        {ok, B} -> {ok, hd(string:split(string:trim(B), " ", all)) };
        _ -> {error, "?"}
    end.

print_targets(Targets, Load0) ->
    {_, Load1} = uptime(),
    io:format("~nPerformance targets: each row's ratio to its reference row and its floor, all "
              "measured in this run~n(load average at start ~s, at end ~s; "
              "every ns figure includes the bench loop, see `loop overhead')~n~n",
              [Load0, Load1]),
    Head = ["target", "ns/op", "reference", "ratio", "target", "met", "floor", "floor ns",
            "over floor"],
    Body = [[Label, fmt_ns(Ns), Ref, fmt_ratio(Ratio), TText, yes_no(Met), Floor,
             case FNs of none -> "-"; _ -> fmt_ns(FNs) end,
             case FNs of none -> "-"; _ -> fmt_over(Ns, FNs) end]
            || {Label, Ns, Ref, Ratio, TText, Met, Floor, FNs} <- Targets],
    table(Head, Body, [left, right, left, right, left, left, left, right, right]),
    Met = length([x || {_, _, _, _, _, true, _, _} <- Targets]),
    io:format("~nmet: ~b of ~b~n", [Met, length(Targets)]).

%% Prints rows of strings in columns as wide as their widest cell (never cut).
table(Head, Body, Align) ->
    Cells = [[lists:flatten(C) || C <- Row] || Row <- [Head | Body]],
    Widths = lists:foldl(fun(Row, Ws) -> [max(W, string:length(C)) || {W, C} <- lists:zip(Ws, Row)] end,
                         [0 || _ <- Head], Cells),
    Line = fun(Row) ->
                   Padded = [case A of
                                 left -> string:pad(C, W, trailing);
                                 right -> string:pad(C, W, leading)
                             end || {C, W, A} <- lists:zip3(Row, Widths, Align)],
                   io:format("~ts~n", [string:trim(lists:join("  ", Padded), trailing)])
           end,
    [H | B] = Cells,
    Line(H),
    io:format("~s~n", [lists:duplicate(lists:sum(Widths) + 2 * (length(Widths) - 1), $-)]),
    lists:foreach(Line, B).

fmt_ratio(none) -> "-";
fmt_ratio(R) -> io_lib:format("~.2f", [R]).

%% How far a row is above its floor, in ns (the floor's figure includes the loop too).
fmt_over(Ns, FNs) when Ns >= FNs -> io_lib:format("+~s", [fmt_ns(Ns - FNs)]);
fmt_over(Ns, FNs) -> io_lib:format("-~s", [fmt_ns(FNs - Ns)]).

yes_no(true) -> "yes";
yes_no(false) -> "NO".

targets_csv(Targets) ->
    ["target,ns_per_op,reference,ratio,target_limit,met,floor,floor_ns\n" |
     [io_lib:format("~s,~.1f,~s,~s,~s,~s,~s,~s~n",
                    [Label, float(Ns), Ref, fmt_ratio(Ratio), TText, yes_no(Met), Floor,
                     case FNs of none -> "-"; _ -> io_lib:format("~.1f", [float(FNs)]) end])
      || {Label, Ns, Ref, Ratio, TText, Met, Floor, FNs} <- Targets]].

%%% ------------------------------------------------------------------ output

print(Rows) ->
    io:format("~n"),
    table(["operation", "implementation", "ns/op", "ops/s"],
          [[Op, Impl, io_lib:format("~.1f", [float(Ns)]), fmt_rate(Rate)]
           || {Op, Impl, Ns, Rate} <- [row4(R) || R <- Rows]],
          [left, left, right, right]).

fmt_rate(R) when R == 0 -> "-";
fmt_rate(R) -> integer_to_list(round(R)).

csv(Rows) ->
    ["operation,implementation,ns_per_op,ops_per_s\n" |
     [io_lib:format("~s,~s,~.1f,~w~n", [Op, Impl, float(Ns), round(Rate)])
      || {Op, Impl, Ns, Rate} <- [row4(R) || R <- Rows]]].

row4({Op, Impl, Ns, Rate, _Rounds}) -> {Op, Impl, Ns, Rate};
row4(R) -> R.
