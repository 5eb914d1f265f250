%%% Block storage benchmark: nanoseconds per store_block, read_block and free_block.
%%%
%%% `run()' runs 5 rounds of 20,000 operations each on a fresh file-backed storage of
%%% 1531-byte blocks and returns the median of the rounds as `[{Name, NsPerOp}]', after
%%% printing a table. `run(BlockSize, Ops)' does the same for another size and count.
-module(emmap_blocks_bench).

-export([run/0, run/2]).

-define(ROUNDS, 5).

-spec run() -> [{store | read | free, float()}].
run() ->
    run(1531, 20000).

-spec run(pos_integer(), pos_integer()) -> [{store | read | free, float()}].
run(BlockSize, Ops) ->
    Rounds = [round(BlockSize, Ops) || _ <- lists:seq(1, ?ROUNDS)],
    Result = [{Name, median([proplists:get_value(Name, R) || R <- Rounds])}
              || Name <- [store, read, free]],
    io:format("~nemmap_blocks: block size ~w, ~w ops per round, median of ~w rounds~n",
              [BlockSize, Ops, ?ROUNDS]),
    io:format("~-8s ~12s ~14s~n", ["op", "ns/op", "ops/s"]),
    [io:format("~-8s ~12.1f ~14w~n", [Name, Ns, round(1.0e9 / Ns)]) || {Name, Ns} <- Result],
    Result.

round(BlockSize, Ops) ->
    P = emmap_test_lib:tmp_path("blocks_bench"),
    {ok, M} = emmap:open(P, 0, 1, [create, read, write, shared]),
    try
        ok = emmap_blocks:init_block_storage(M, BlockSize),
        Bin = rand:bytes(BlockSize),
        Store = per_op(fun() -> store(M, Bin, Ops) end, Ops),
        Addrs = shuffle(lists:seq(0, Ops - 1)),
        Read = per_op(fun() -> read(M, Addrs) end, Ops),
        Free = per_op(fun() -> free(M, Addrs) end, Ops),
        [{store, Store}, {read, Read}, {free, Free}]
    after
        emmap:close(M),
        file:delete(P)
    end.

per_op(Fun, Ops) ->
    T0 = erlang:monotonic_time(nanosecond),
    Fun(),
    (erlang:monotonic_time(nanosecond) - T0) / Ops.

store(_M, _Bin, 0) -> ok;
store(M, Bin, N) ->
    A = emmap_blocks:store_block(M, Bin),
    true = is_integer(A),
    store(M, Bin, N - 1).

read(_M, []) -> ok;
read(M, [A | As]) ->
    <<_/binary>> = emmap_blocks:read_block(M, A),
    read(M, As).

free(_M, []) -> ok;
free(M, [A | As]) ->
    true = emmap_blocks:free_block(M, A),
    free(M, As).

shuffle(L) ->
    [X || {_, X} <- lists:sort([{rand:uniform(), X} || X <- L])].

median(Xs) ->
    lists:nth((length(Xs) + 1) div 2, lists:sort(Xs)).
