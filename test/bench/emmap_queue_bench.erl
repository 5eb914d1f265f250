%%% Benchmark rows for emmap_queue: push+pop pairs against the `queue' module (in memory)
%%% and `disk_log' (persistent), for a small and a 4 KiB term.
%%%
%%% `run()' prints a table and returns `[{Name, NsPerOp}]', where one op is one push+pop
%%% pair and the value is the median of 5 rounds.
%%%
%%% Each pair pushes one term and pops it again, so the queue holds at most one message:
%%% - emmap_queue: `push/2' + `pop_and_purge/1' on a 64 KiB file (`[read, write, shared]'
%%%   mapping; data reaches the page cache, no msync);
%%% - emmap_queue server: `enqueue/2' + `dequeue/1' through the gen_server, from one
%%%   client;
%%% - queue: `queue:in/2' + `queue:out/1' (memory only, for scale);
%%% - disk_log: `disk_log:log/2' + `disk_log:chunk/3' of one term (a halt log read back
%%%   with a continuation: disk_log cannot remove from the front, so this is the closest
%%%   persistent push+pop it has; no fsync either).
-module(emmap_queue_bench).

-export([run/0, run/1]).

-define(ROUNDS, 5).

%% @doc Runs every row, prints the table, returns the rows.
-spec run() -> [{string(), float()}].
run() ->
    run(1).

%% @doc Like `run/0' with every iteration count multiplied by `Scale' (use < 1 for a quick
%% look).
-spec run(number()) -> [{string(), float()}].
run(Scale) ->
    Terms = [{"100 B", {msg, 12345, binary:copy(<<"p">>, 80)}},
             {"4 KiB", {msg, 12345, binary:copy(<<"p">>, 4096)}}],
    Rows = lists:append(
             [[{"emmap_queue push+pop_and_purge, " ++ Label,
                median(fun() -> emmap_queue_pairs(Term, n(40000, Scale)) end)},
               {"emmap_queue server enqueue+dequeue, " ++ Label,
                median(fun() -> server_pairs(Term, n(20000, Scale)) end)},
               {"queue in+out (memory), " ++ Label,
                median(fun() -> queue_pairs(Term, n(400000, Scale)) end)},
               {"disk_log log+chunk, " ++ Label,
                median(fun() -> disk_log_pairs(Term, n(10000, Scale)) end)}]
              || {Label, Term} <- Terms]),
    print(Rows),
    Rows.

n(N, Scale) -> max(1, round(N * Scale)).

%% The median of ?ROUNDS rounds of Fun() (which returns ns per op).
median(Fun) ->
    Ns = lists:sort([Fun() || _ <- lists:seq(1, ?ROUNDS)]),
    lists:nth((?ROUNDS + 1) div 2, Ns).

%% Runs Body(N) and returns ns per iteration.
timed(N, Body) ->
    T0 = erlang:monotonic_time(nanosecond),
    Body(N),
    (erlang:monotonic_time(nanosecond) - T0) / N.

tmp(Tag) ->
    emmap_test_lib:tmp_path("queue_bench_" ++ Tag).

emmap_queue_pairs(Term, N) ->
    F = tmp("q"),
    {ok, Q} = emmap_queue:open(F, 65536, []),
    try
        timed(N, fun Loop(0) -> ok;
                     Loop(I) ->
                         ok = emmap_queue:push(Q, Term),
                         Term = emmap_queue:pop_and_purge(Q),
                         Loop(I - 1)
                 end)
    after
        emmap_queue:close(Q),
        file:delete(F)
    end.

server_pairs(Term, N) ->
    F = tmp("s"),
    {ok, Pid} = emmap_queue:start_link(undefined, F, 65536, []),
    try
        timed(N, fun Loop(0) -> ok;
                     Loop(I) ->
                         ok = emmap_queue:enqueue(Pid, Term),
                         Term = emmap_queue:dequeue(Pid),
                         Loop(I - 1)
                 end)
    after
        emmap_queue:stop(Pid),
        file:delete(F)
    end.

queue_pairs(Term, N) ->
    timed(N, fun(K) -> queue_loop(Term, queue:new(), K) end).

queue_loop(_Term, Q, 0) ->
    Q;
queue_loop(Term, Q, I) ->
    {{value, Term}, Q1} = queue:out(queue:in(Term, Q)),
    queue_loop(Term, Q1, I - 1).

disk_log_pairs(Term, N) ->
    F = tmp("d"),
    Name = list_to_atom(filename:basename(F)),
    {ok, L} = disk_log:open([{name, Name}, {file, F}, {type, halt}, {format, internal}]),
    try
        timed(N, fun(K) -> disk_log_loop(L, Term, start, K) end)
    after
        ok = disk_log:close(L),
        file:delete(F)
    end.

disk_log_loop(_L, _Term, _Cont, 0) ->
    ok;
disk_log_loop(L, Term, Cont, I) ->
    ok = disk_log:log(L, Term),
    {Cont1, [Term]} = disk_log:chunk(L, Cont, 1),
    disk_log_loop(L, Term, Cont1, I - 1).

print(Rows) ->
    io:format("~n~-48s ~14s~n", ["emmap_queue benchmark (median of 5)", "ns per pair"]),
    io:format("~s~n", [lists:duplicate(63, $-)]),
    [io:format("~-48s ~14.1f~n", [Name, Ns]) || {Name, Ns} <- Rows],
    ok.
