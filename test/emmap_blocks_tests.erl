%%% Block storage (emmap_blocks): API, errors, a PropEr model test, a 100,000-operation
%%% random run, crash consistency across `kill -9' of an OS process, garbage files, the
%%% length of NIF calls, direct mode, and the README section's example.
%%%
%%% PropEr is used through its API (`proper:forall/2', `proper_types') rather than the
%%% macros of `proper.hrl', so that only the `proper' application itself is needed.
-module(emmap_blocks_tests).

-include_lib("eunit/include/eunit.hrl").

-export([crash_child/4]).

-import(emmap_test_lib, [tmp_path/1, with_path/1]).

-define(B, emmap_blocks).

%%%---------------------------------------------------------------------------
%%% utilities
%%%---------------------------------------------------------------------------

%% A new storage in a new file (deleted afterwards); Fun gets the handle and the path.
with_storage(BS, Init, Opts, Fun) ->
    P = tmp_path("blocks"),
    {ok, M} = emmap:open(P, 0, 1, [create, write, shared | Opts]),
    try
        ok = ?B:init_block_storage(M, BS, Init),
        Fun(M, P)
    after
        emmap:close(M),
        file:delete(P)
    end.

%% Reads everything through read_blocks/3 in chunks of N, checking the chunk rules.
read_chunks(M, N) ->
    read_chunks(M, 0, N, []).

read_chunks(_M, eof, _N, Acc) ->
    lists:append(lists:reverse(Acc));
read_chunks(M, Start, N, Acc) ->
    {L, Cont} = ?B:read_blocks(M, Start, N),
    ?assert(length(L) =< N),
    ?assert(Cont =:= eof orelse length(L) =:= N),
    read_chunks(M, Cont, N, [L | Acc]).

repair_chunks(M, N) ->
    repair_chunks(M, 0, N).

repair_chunks(_M, eof, _N) -> ok;
repair_chunks(M, Start, N) ->
    Cont = ?B:repair_block_storage(M, Start, N),
    ?assert(Cont =:= eof orelse (is_integer(Cont) andalso Cont =:= Start + N)),
    repair_chunks(M, Cont, N).

%% The address a store must return: the lowest one not in use, if below the capacity.
lowest_free(Model, Cap) ->
    lowest_free(Model, 0, Cap).

lowest_free(_Model, A, Cap) when A >= Cap -> full;
lowest_free(Model, A, Cap) ->
    case maps:is_key(A, Model) of
        true -> lowest_free(Model, A + 1, Cap);
        false -> A
    end.

sorted(Model) -> lists:sort(maps:to_list(Model)).

%%%---------------------------------------------------------------------------
%%% API
%%%---------------------------------------------------------------------------

round_trip_test() ->
    with_storage(1, #{}, [], fun(M, _) ->
        ?assertError(badarg, ?B:store_block(M, <<1, 2, 3>>)),
        Addrs = [begin
                     D = integer_to_binary(N),
                     A = ?B:store_block(M, D),
                     ?assertEqual(D, ?B:read_block(M, A)),
                     A
                 end || N <- lists:seq(0, 9)],
        ?assertEqual(lists:seq(0, 9), Addrs),
        L1 = ?B:read_blocks(M),
        ?assertEqual([{N, integer_to_binary(N)} || N <- lists:seq(0, 9)], L1),
        ?assertEqual({L1, eof}, ?B:read_blocks(M, 0, 100)),
        ?assertEqual(L1, read_chunks(M, 3)),
        ?assertEqual(L1, read_chunks(M, 1)),
        ?assertEqual({lists:sublist(L1, 4, 2), 5}, ?B:read_blocks(M, 3, 2)),
        [?assertEqual(true, ?B:free_block(M, A)) || A <- Addrs],
        ?assertEqual([], ?B:read_blocks(M)),
        ?assertEqual({[], eof}, ?B:read_blocks(M, 0, 5)),
        ?assertEqual(ok, ?B:repair_block_storage(M))
    end).

lowest_free_address_is_reused_test() ->
    with_storage(4, #{}, [], fun(M, _) ->
        [N = ?B:store_block(M, <<N:32>>) || N <- lists:seq(0, 199)],
        [true = ?B:free_block(M, A) || A <- [150, 3, 64, 199, 70]],
        ?assertEqual([3, 64, 70, 150, 199, 200],
                     [?B:store_block(M, <<"new!">>) || _ <- lists:seq(1, 6)]),
        ?assertEqual(<<"new!">>, ?B:read_block(M, 64)),
        ?assertEqual(<<65:32>>, ?B:read_block(M, 65))
    end).

init_is_idempotent_and_checks_geometry_test() ->
    with_storage(16, #{max_blocks => 100}, [], fun(M, P) ->
        A = ?B:store_block(M, <<0:128>>),
        ?assertEqual(ok, ?B:init_block_storage(M, 16)),
        ?assertEqual(ok, ?B:init_block_storage(M, 16, #{max_blocks => 100})),
        ?assertEqual(<<0:128>>, ?B:read_block(M, A)),
        ?assertEqual({error, mismatch}, ?B:init_block_storage(M, 17)),
        ?assertEqual({error, mismatch}, ?B:init_block_storage(M, 16, #{max_blocks => 99})),
        %% The file keeps its geometry: reopen it whole and use it without init.
        {ok, M2} = emmap:open(P, [read, write, shared]),
        ?assertEqual(<<0:128>>, ?B:read_block(M2, A)),
        [_ | _] = [?B:store_block(M2, <<1:128>>) || _ <- lists:seq(1, 99)],
        ?assertEqual({error, full}, ?B:store_block(M2, <<2:128>>)),
        ok = emmap:close(M2)
    end).

capacity_default_and_configured_test() ->
    with_path(fun(P) ->
        {ok, M} = emmap:open(P, 0, 1, [create, write, shared]),
        ok = ?B:init_block_storage(M, 8),
        %% Default capacity 262144: a 32 KiB bitmap and a 512-byte summary after the
        %% 64-byte header (see BLOCKS.md).
        ?assertEqual(64 + 32768 + 512, maps:get(size, emmap:info(M))),
        ok = emmap:close(M)
    end),
    with_storage(8, #{max_blocks => 3}, [], fun(M, _) ->
        ?assertEqual([0, 1, 2], [?B:store_block(M, <<I:64>>) || I <- [1, 2, 3]]),
        ?assertEqual({error, full}, ?B:store_block(M, <<4:64>>)),
        ?assertEqual(true, ?B:free_block(M, 1)),
        ?assertEqual(1, ?B:store_block(M, <<5:64>>))
    end).

fixed_size_mapping_fills_up_test() ->
    with_path(fun(P) ->
        %% Room for the header and bitmap of 1000 slots (64 + 128 + 8, rounded to 256)
        %% and for 3 slots of 16 + 8 bytes.
        {ok, M} = emmap:open(P, 0, 256 + 3 * 24 + 10, [create, write, shared, fixed_size]),
        ?assertEqual({error, fixed_size}, ?B:init_block_storage(M, 16)),
        ok = ?B:init_block_storage(M, 16, #{max_blocks => 1000}),
        ?assertEqual([0, 1, 2], [?B:store_block(M, <<I:128>>) || I <- [1, 2, 3]]),
        ?assertEqual({error, full}, ?B:store_block(M, <<4:128>>)),
        ?assertEqual(true, ?B:free_block(M, 0)),
        ?assertEqual(0, ?B:store_block(M, <<5:128>>)),
        ok = emmap:close(M)
    end).

bad_arguments_raise_badarg_test() ->
    with_storage(8, #{}, [], fun(M, _) ->
        [?assertError(badarg, F()) || F <- [
            fun() -> ?B:store_block(M, <<1:56>>) end,
            fun() -> ?B:store_block(M, <<1:72>>) end,
            fun() -> ?B:store_block(M, [<<1:64>>]) end,
            fun() -> ?B:store_block(not_a_handle, <<1:64>>) end,
            fun() -> ?B:read_block(M, 1.0) end,
            fun() -> ?B:read_block(make_ref(), 1) end,
            fun() -> ?B:free_block(M, "1") end,
            fun() -> ?B:read_blocks(self()) end,
            fun() -> ?B:read_blocks(M, -1, 10) end,
            fun() -> ?B:read_blocks(M, 0, 0) end,
            fun() -> ?B:read_blocks(M, foo, 10) end,
            fun() -> ?B:repair_block_storage(M, 0, 0) end,
            fun() -> ?B:repair_block_storage(M, -5, 1) end,
            fun() -> ?B:repair_block_storage({}) end,
            fun() -> ?B:init_block_storage(M, 0) end,
            fun() -> ?B:init_block_storage(M, -1) end,
            fun() -> ?B:init_block_storage(M, 8, [{max_blocks, 4}]) end,
            fun() -> ?B:init_block_storage(M, 8, #{max_blocks => 0}) end,
            fun() -> ?B:init_block_storage(M, 8, #{max_blocks => many}) end,
            fun() -> ?B:init_block_storage(M, 8, #{other => 1}) end]],
        %% Addresses no storage has are answered, not refused.
        [?assertEqual(eof, ?B:read_block(M, A)) || A <- [-1, 0, 262144, 1 bsl 64, 1 bsl 200]],
        [?assertEqual(false, ?B:free_block(M, A)) || A <- [-1, 0, 262144, 1 bsl 64]],
        ?assertEqual({[], eof}, ?B:read_blocks(M, eof, 3)),
        ?assertEqual({[], eof}, ?B:read_blocks(M, 1 bsl 70, 3)),
        ?assertEqual(eof, ?B:repair_block_storage(M, eof, 3)),
        ?assertEqual(eof, ?B:repair_block_storage(M, 1 bsl 70, 3)),
        ?assertEqual(eof, ?B:repair_block_storage(M, 262143, 1 bsl 80))
    end).

errors_are_returned_test() ->
    with_path(fun(P) ->
        {ok, M} = emmap:open(P, 0, 4096, [create, write, shared]),
        NotInit = {error, not_initialized},
        ?assertEqual(NotInit, ?B:store_block(M, <<1>>)),
        ?assertEqual(NotInit, ?B:read_block(M, 0)),
        ?assertEqual(NotInit, ?B:free_block(M, 0)),
        ?assertEqual(NotInit, ?B:read_blocks(M)),
        ?assertEqual(NotInit, ?B:read_blocks(M, 0, 1)),
        ?assertEqual(NotInit, ?B:repair_block_storage(M)),
        ?assertEqual(NotInit, ?B:repair_block_storage(M, 0, 1)),
        ?assertEqual({error, einval}, ?B:init_block_storage(M, 1 bsl 31)),
        ?assertEqual({error, einval}, ?B:init_block_storage(M, 1 bsl 65)),
        ?assertEqual({error, einval}, ?B:init_block_storage(M, 8, #{max_blocks => 1 bsl 27})),
        ok = ?B:init_block_storage(M, 8),
        0 = ?B:store_block(M, <<"12345678">>),
        %% A damaged header (here: the block size field) is reported, never trusted,
        %% and init does not overwrite it.
        {ok, <<BS:64/little>>} = emmap:pread(M, 16, 8),
        ok = emmap:pwrite(M, 16, <<(BS + 1):64/little>>),
        Corrupt = {error, corrupt},
        ?assertEqual(Corrupt, ?B:read_block(M, 0)),
        ?assertEqual(Corrupt, ?B:store_block(M, <<"12345678">>)),
        ?assertEqual(Corrupt, ?B:read_blocks(M)),
        ?assertEqual(Corrupt, ?B:repair_block_storage(M)),
        ?assertEqual(Corrupt, ?B:init_block_storage(M, 8)),
        ok = emmap:pwrite(M, 16, <<BS:64/little>>),
        ?assertEqual(<<"12345678">>, ?B:read_block(M, 0)),
        %% A read-only handle reads but does not write.
        {ok, RO} = emmap:open(P, [read, shared]),
        ?assertEqual(<<"12345678">>, ?B:read_block(RO, 0)),
        ?assertEqual([{0, <<"12345678">>}], ?B:read_blocks(RO)),
        ?assertEqual({error, eacces}, ?B:store_block(RO, <<"abcdefgh">>)),
        ?assertEqual({error, eacces}, ?B:free_block(RO, 0)),
        ?assertEqual({error, eacces}, ?B:repair_block_storage(RO)),
        ?assertEqual({error, eacces}, ?B:init_block_storage(RO, 8)),
        ok = emmap:close(RO),
        ok = emmap:close(M),
        Closed = {error, closed},
        ?assertEqual(Closed, ?B:store_block(M, <<"12345678">>)),
        ?assertEqual(Closed, ?B:read_block(M, 0)),
        ?assertEqual(Closed, ?B:free_block(M, 0)),
        ?assertEqual(Closed, ?B:read_blocks(M)),
        ?assertEqual(Closed, ?B:repair_block_storage(M)),
        ?assertEqual(Closed, ?B:init_block_storage(M, 8))
    end).

%% A mapping that starts at an offset that is not 8-aligned cannot hold atomics.
misaligned_mapping_test() ->
    with_path(fun(P) ->
        ok = file:write_file(P, <<0:(8 * 70000)>>),
        {ok, M} = emmap:open(P, 4, 65536, [read, write, shared]),
        ?assertEqual({error, alignment}, ?B:init_block_storage(M, 8, #{max_blocks => 64})),
        ?assertEqual({error, alignment}, ?B:read_block(M, 0)),
        ok = emmap:close(M)
    end).

anonymous_and_private_mappings_test() ->
    {ok, M} = emmap:open("", 0, 4096, [anon, write]),
    ok = ?B:init_block_storage(M, 100, #{max_blocks => 5000}),
    Addrs = [?B:store_block(M, <<I:800>>) || I <- lists:seq(1, 3000)],
    ?assertEqual(lists:seq(0, 2999), Addrs),
    ?assertEqual(<<2000:800>>, ?B:read_block(M, 1999)),
    ?assertEqual(3000, length(?B:read_blocks(M))),
    ok = emmap:close(M),
    with_path(fun(P) ->
        {ok, Mp} = emmap:open(P, 0, 1, [create, write, private]),
        ok = ?B:init_block_storage(Mp, 10),
        [_ = ?B:store_block(Mp, <<I:80>>) || I <- lists:seq(1, 2000)],
        ?assertEqual(<<7:80>>, ?B:read_block(Mp, 6)),
        ok = emmap:close(Mp),
        ?assertEqual(1, filelib:file_size(P))      % private: the file is not touched
    end).

%% Anonymous shared memory is not grown by block storage (see may_resize in blocks.rs):
%% it behaves as a fixed_size mapping.
anonymous_shared_mappings_grow_test() ->
    %% Anonymous shared memory grows by copying into a new mapping (never in place, where
    %% pages past its backing object would fault): the storage grows like any other.
    {ok, M} = emmap:open("", 0, 4096, [anon, read, write, shared]),
    ok = ?B:init_block_storage(M, 100, #{max_blocks => 1000}),
    Bins = [<<I:800>> || I <- lists:seq(1, 1000)],
    ?assertEqual(lists:seq(0, 999), [?B:store_block(M, B) || B <- Bins]),
    ?assertEqual({error, full}, ?B:store_block(M, <<0:800>>)),
    ?assertEqual(lists:zip(lists:seq(0, 999), Bins), ?B:read_blocks(M)),
    ok = emmap:close(M).

%% Blocks above 64 KiB are copied and checked on dirty schedulers.
big_blocks_test_() ->
    [fun() -> big_blocks(Opts) end || Opts <- [[], [direct]]].

big_blocks(Opts) ->
    with_storage(100000, #{max_blocks => 20}, Opts, fun(M, _) ->
        Bins = [rand:bytes(100000) || _ <- lists:seq(1, 20)],
        ?assertEqual(lists:seq(0, 19), [?B:store_block(M, B) || B <- Bins]),
        ?assertEqual({error, full}, ?B:store_block(M, hd(Bins))),
        ?assertEqual(lists:nth(8, Bins), ?B:read_block(M, 7)),
        ?assertEqual(lists:zip(lists:seq(0, 19), Bins), ?B:read_blocks(M)),
        ?assertEqual(lists:zip(lists:seq(0, 19), Bins), read_chunks(M, 7)),
        ?assertEqual(ok, ?B:repair_block_storage(M)),
        ok = repair_chunks(M, 3),
        ?assertEqual(true, ?B:free_block(M, 7)),
        ?assertEqual(eof, ?B:read_block(M, 7))
    end).

%%%---------------------------------------------------------------------------
%%% direct mode
%%%---------------------------------------------------------------------------

direct_mode_reads_point_into_the_mapping_test() ->
    with_storage(8, #{}, [direct], fun(M, _) ->
        A = ?B:store_block(M, <<"original">>),
        Bin = ?B:read_block(M, A),
        [{A, Bin2}] = ?B:read_blocks(M),
        ?assertEqual(<<"original">>, Bin),
        %% The binaries are the mapping's bytes: storing again in the freed slot shows.
        true = ?B:free_block(M, A),
        A = ?B:store_block(M, <<"replaced">>),
        ?assertEqual(<<"replaced">>, Bin),
        ?assertEqual(<<"replaced">>, Bin2),
        %% They stay valid across growth and close.
        [_ = ?B:store_block(M, <<I:64>>) || I <- lists:seq(1, 20000)],
        ok = emmap:close(M),
        ?assertEqual(<<"replaced">>, Bin),
        ?assertEqual({error, closed}, ?B:read_block(M, A))
    end).

%%%---------------------------------------------------------------------------
%%% PropEr model test: an Erlang map says what the storage must answer
%%%---------------------------------------------------------------------------

proper_model_test_() ->
    {timeout, 300, fun() ->
        ?assert(proper:quickcheck(prop_model(), [{numtests, 500}, {to_file, user}]))
    end}.

prop_model() ->
    proper:forall(scenario(), fun run_model/1).

scenario() ->
    Geometry = {proper_types:integer(1, 40), proper_types:integer(1, 150),
                proper_types:bool()},
    proper_types:bind(Geometry,
                      fun({BS, Cap, Direct}) ->
                              {BS, Cap, Direct, proper_types:list(op(BS, Cap))}
                      end, false).

op(BS, Cap) ->
    Addr = proper_types:integer(-1, Cap + 2),
    proper_types:frequency(
      [{8, {store, proper_types:binary(BS)}},
       {2, {store_many, proper_types:integer(1, 60), proper_types:byte()}},
       {4, {free, Addr}},
       {4, {read, Addr}},
       {2, {read_blocks, proper_types:integer(0, Cap + 1), proper_types:integer(1, 20)}},
       {1, read_all},
       {1, {repair, proper_types:integer(1, 100)}},
       {1, reopen}]).

run_model({BS, Cap, Direct, Ops}) ->
    P = tmp_path("blocks"),
    Opts = [write, shared] ++ [direct || Direct],
    {ok, M} = emmap:open(P, 0, 1, [create | Opts]),
    try
        ok = ?B:init_block_storage(M, BS, #{max_blocks => Cap}),
        {M1, Model} = lists:foldl(fun(Op, {Mi, Mod}) ->
                                          model_step(Op, Mi, Mod, P, Opts, BS, Cap)
                                  end, {M, #{}}, Ops),
        ?assertEqual(sorted(Model), ?B:read_blocks(M1)),
        ok = emmap:close(M1),
        true
    after
        emmap:close(M),
        file:delete(P)
    end.

model_step({store, Bin}, M, Model, _P, _Opts, _BS, Cap) ->
    case lowest_free(Model, Cap) of
        full ->
            ?assertEqual({error, full}, ?B:store_block(M, Bin)),
            {M, Model};
        A ->
            ?assertEqual(A, ?B:store_block(M, Bin)),
            {M, Model#{A => Bin}}
    end;
model_step({store_many, N, Byte}, M, Model, P, Opts, BS, Cap) ->
    Bin = binary:copy(<<Byte>>, BS),
    lists:foldl(fun(_, {Mi, Mod}) -> model_step({store, Bin}, Mi, Mod, P, Opts, BS, Cap) end,
                {M, Model}, lists:seq(1, N));
model_step({free, A}, M, Model, _P, _Opts, _BS, _Cap) ->
    ?assertEqual(maps:is_key(A, Model), ?B:free_block(M, A)),
    {M, maps:remove(A, Model)};
model_step({read, A}, M, Model, _P, _Opts, _BS, _Cap) ->
    ?assertEqual(maps:get(A, Model, eof), ?B:read_block(M, A)),
    {M, Model};
model_step({read_blocks, Start, Max}, M, Model, _P, _Opts, _BS, _Cap) ->
    Want = [E || {A, _} = E <- sorted(Model), A >= Start],
    {L, Cont} = ?B:read_blocks(M, Start, Max),
    if
        length(Want) > Max ->
            ?assertEqual(lists:sublist(Want, Max), L),
            ?assertEqual(element(1, lists:last(L)) + 1, Cont);
        length(Want) < Max ->
            ?assertEqual({Want, eof}, {L, Cont});
        true ->
            ?assertEqual(Want, L),
            ?assert(Cont =:= eof orelse ?B:read_blocks(M, Cont, Max) =:= {[], eof})
    end,
    {M, Model};
model_step(read_all, M, Model, _P, _Opts, _BS, _Cap) ->
    ?assertEqual(sorted(Model), ?B:read_blocks(M)),
    {M, Model};
model_step({repair, N}, M, Model, _P, _Opts, _BS, _Cap) ->
    ok = repair_chunks(M, N),
    ?assertEqual(sorted(Model), ?B:read_blocks(M)),
    {M, Model};
model_step(reopen, M, Model, P, Opts, _BS, _Cap) ->
    ok = emmap:close(M),
    {ok, M2} = emmap:open(P, Opts),
    ok = ?B:repair_block_storage(M2),
    {M2, Model}.

%%%---------------------------------------------------------------------------
%%% 100,000 random operations with block size 1531, against a map
%%%---------------------------------------------------------------------------

big_random_test_() ->
    {timeout, 120, fun big_random/0}.

big_random() ->
    BS = 1531,
    P = tmp_path("blocks"),
    S0 = rand:seed_s(exsss, {17, 4, 2024}),
    try
        {ok, M} = emmap:open(P, 0, 1, [create, write, shared]),
        ok = ?B:init_block_storage(M, BS),
        {Model, S1} = random_ops(50000, M, #{}, BS, S0),
        ?assertEqual(sorted(Model), ?B:read_blocks(M)),
        ok = emmap:close(M),
        {ok, M2} = emmap:open(P, [write, shared]),
        ok = ?B:repair_block_storage(M2),
        ?assertEqual(sorted(Model), ?B:read_blocks(M2)),
        {Model2, _} = random_ops(50000, M2, Model, BS, S1),
        ?assertEqual(sorted(Model2), ?B:read_blocks(M2)),
        ok = emmap:close(M2)
    after
        file:delete(P)
    end.

random_ops(0, _M, Model, _BS, S) ->
    {Model, S};
random_ops(N, M, Model, BS, S) ->
    {Limit, S1} = rand:uniform_s(200, S),
    case map_size(Model) < Limit of
        true ->
            {Data, S2} = rand:bytes_s(BS, S1),
            A = ?B:store_block(M, Data),
            ?assertEqual(lowest_free(Model, 262144), A),
            random_ops(N - 1, M, Model#{A => Data}, BS, S2);
        false ->
            {I, S2} = rand:uniform_s(map_size(Model), S1),
            A = lists:nth(I, maps:keys(Model)),
            {Data, Model1} = maps:take(A, Model),
            ?assertEqual(Data, ?B:read_block(M, A)),
            ?assertEqual(true, ?B:free_block(M, A)),
            ?assertEqual(eof, ?B:read_block(M, A)),
            random_ops(N - 1, M, Model1, BS, S2)
    end.

%%%---------------------------------------------------------------------------
%%% Concurrent Erlang processes
%%%---------------------------------------------------------------------------

concurrent_processes_never_share_a_slot_test_() ->
    {timeout, 60, fun() ->
        with_storage(16, #{}, [], fun(M, _) ->
            Self = self(),
            Pids = [spawn_link(fun() -> Self ! {self(), worker(M, W, 4000, #{})} end)
                    || W <- lists:seq(1, 4)],
            Mine = [receive {Pid, R} -> R end || Pid <- Pids],
            All = lists:append([maps:to_list(Mm) || Mm <- Mine]),
            ?assertEqual(length(All), length(lists:usort([A || {A, _} <- All]))),
            ?assertEqual(lists:sort(All), ?B:read_blocks(M)),
            ?assertEqual(ok, ?B:repair_block_storage(M)),
            ?assertEqual(lists:sort(All), ?B:read_blocks(M))
        end)
    end}.

worker(_M, _W, 0, Mine) ->
    Mine;
worker(M, W, N, Mine) ->
    Data = <<W:64, N:64>>,
    A = ?B:store_block(M, Data),
    ?assert(is_integer(A)),
    ?assertNot(maps:is_key(A, Mine)),
    Mine1 = Mine#{A => Data},
    case N rem 3 of
        0 ->
            [{Victim, D} | _] = maps:to_list(Mine1),
            ?assertEqual(D, ?B:read_block(M, Victim)),
            ?assertEqual(true, ?B:free_block(M, Victim)),
            worker(M, W, N - 1, maps:remove(Victim, Mine1));
        _ ->
            worker(M, W, N - 1, Mine1)
    end.

%%%---------------------------------------------------------------------------
%%% Crash consistency: an OS process stores and frees, acknowledging each call on
%%% stdout, and is killed with `kill -9' at a random moment. After repair the storage
%%% holds exactly what the child's operations 1..K left, for some K at or past the
%%% last acknowledged one: every acknowledged store not later freed is there with its
%%% bytes, every acknowledged free is gone, and nothing else is.
%%%---------------------------------------------------------------------------

crash_test_() ->
    {timeout, 60, fun() ->
        T0 = erlang:monotonic_time(millisecond),
        %% Small blocks give many operations per round; with 1 MiB blocks the child
        %% spends much of its time inside store (copying and checksumming on a dirty
        %% scheduler), so that the kill often interrupts one.
        Small = [{Seed, 200, 300, KillAt} || {Seed, KillAt} <- [{1, 2000}, {2, 900}, {3, 3100}]],
        Big = [{Seed, 1 bsl 20, 16, 20 + Seed * 37 rem 100} || Seed <- lists:seq(4, 12)],
        Rounds = [crash_round(Seed, BS, MaxLive, KillAt)
                  || {Seed, BS, MaxLive, KillAt} <- Small ++ Big],
        Ms = erlang:monotonic_time(millisecond) - T0,
        %% For each round: acknowledged operations, operations done past the last
        %% acknowledgement, and whether repair had to clear bits (an interrupted call).
        ?debugFmt("crash rounds {acked, unacked done, repaired}: ~w, ~w ms", [Rounds, Ms]),
        ?assert(Ms < 20000)
    end}.

crash_round(Seed, BS, MaxLive, KillAt) ->
    P = tmp_path("blocks"),
    try
        {ok, M0} = emmap:open(P, 0, 1, [create, write, shared]),
        ok = ?B:init_block_storage(M0, BS),
        ok = emmap:close(M0),
        {Port, _} = Child = emmap_test_lib:start_child(?MODULE, crash_child,
                                                       [P, Seed, BS, MaxLive],
                                                       #{line => 256, stderr => own}),
        Acks = try
                   OsPid = receive {Port, {data, {eol, <<"pid ", Pid/binary>>}}} -> Pid
                           after 20000 -> erlang:error(child_did_not_start)
                           end,
                   %% Let it run until a number of acknowledgements (or time) has passed.
                   Lines0 = collect_acks(Port, KillAt, []),
                   _ = os:cmd("kill -9 " ++ binary_to_list(OsPid)),
                   Lines = drain(Port, Lines0),
                   [parse_ack(L) || L <- lists:reverse(Lines)]
               after
                   emmap_test_lib:stop_child(Child)
               end,
        {K, Repaired} = check_after_crash(P, Seed, BS, MaxLive, Acks),
        {length(Acks), K - length(Acks), Repaired}
    after
        file:delete(P)
    end.

collect_acks(_Port, 0, Acc) ->
    Acc;
collect_acks(Port, N, Acc) ->
    receive
        {Port, {data, {eol, L}}} -> collect_acks(Port, N - 1, [L | Acc]);
        {Port, {exit_status, S}} -> erlang:error({child_exited, S, Acc})
    after 2000 ->
        Acc
    end.

%% Every complete line the child wrote before it died is an acknowledgement.
drain(Port, Acc) ->
    receive
        {Port, {data, {eol, L}}} -> drain(Port, [L | Acc]);
        {Port, {data, {noeol, _}}} -> drain(Port, Acc);
        {Port, {exit_status, _}} -> Acc
    after 10000 ->
        erlang:error(child_not_dead)
    end.

parse_ack(L) ->
    [Kind, N, A] = binary:split(L, <<" ">>, [global]),
    {binary_to_atom(Kind), binary_to_integer(N), binary_to_integer(A)}.

%% The bytes of the child's N-th operation: N at both ends of a fixed filler (built once
%% per process, so that making a block costs one copy).
crash_data(N, BS) ->
    Filler = case get({crash_filler, BS}) of
                 undefined ->
                     F = binary:part(binary:copy(<<"emmap crash test">>, BS div 16 + 1),
                                     0, BS - 16),
                     put({crash_filler, BS}, F),
                     F;
                 F ->
                     F
             end,
    <<N:64, Filler/binary, N:64>>.

%% The child's choice of operation: a pure function of the random state and the live
%% blocks, so that the parent can replay it. Returns `{Op, State}'.
crash_next(Live, S, MaxLive) ->
    {X, S1} = rand:uniform_s(100, S),
    Size = map_size(Live),
    if
        Size =:= 0; X =< 55, Size < MaxLive ->
            {store, S1};
        true ->
            {I, S2} = rand:uniform_s(Size, S1),
            {{free, lists:nth(I, lists:sort(maps:keys(Live)))}, S2}
    end.

%% @doc Body of the child VM: stores and frees forever, one acknowledgement per call.
%% Acknowledgements go straight to file descriptor 1 (not through the I/O server), so that
%% the child spends most of its time inside store and free, and synchronously (a raw file
%% write, not a port, whose queue would die with the child): every call that returned
%% has its acknowledgement in the pipe, however far the child ran ahead of the parent
%% while the parent was starting `kill'.
crash_child(Path, Seed, BS, MaxLive) ->
    {ok, M} = emmap:open(Path, [read, write, shared]),
    {ok, Out} = file:open("/proc/self/fd/1", [write, raw, binary]),
    ok = file:write(Out, ["pid ", os:getpid(), "\n"]),
    crash_loop(M, Out, {BS, MaxLive}, 1, #{}, rand:seed_s(exsss, Seed)).

crash_loop(M, Out, {BS, MaxLive} = G, N, Live, S) ->
    case crash_next(Live, S, MaxLive) of
        {store, S1} ->
            A = ?B:store_block(M, crash_data(N, BS)),
            ok = file:write(Out, ["s ", integer_to_list(N), " ", integer_to_list(A), "\n"]),
            crash_loop(M, Out, G, N + 1, Live#{A => N}, S1);
        {{free, A}, S1} ->
            true = ?B:free_block(M, A),
            ok = file:write(Out, ["f ", integer_to_list(N), " ", integer_to_list(A), "\n"]),
            crash_loop(M, Out, G, N + 1, maps:remove(A, Live), S1)
    end.

check_after_crash(P, Seed, BS, MaxLive, Acks) ->
    {ok, M} = emmap:open(P, [read, write, shared]),
    try
        %% The bitmap of the default capacity: 32 KiB after the header.
        {ok, Meta0} = emmap:pread(M, 64, 32768),
        Before = ?B:read_blocks(M),
        ok = ?B:repair_block_storage(M),
        {ok, Meta1} = emmap:pread(M, 64, 32768),
        Actual = ?B:read_blocks(M),
        %% Reads never showed unfinished slots, so repair changes no read.
        ?assertEqual(Before, Actual),
        %% Replay: the states after 0, 1, 2, ... operations, checking that the child's
        %% acknowledgements are exactly the operations the replay predicts.
        States = replay(Acks, #{}, rand:seed_s(exsss, Seed), MaxLive, 1, length(Acks) + 500),
        Acked = length(Acks),
        %% Every block holds the exact bytes of the store that made it (its number is in
        %% its first 8 bytes); which stores those are is compared with the replay.
        ActualN = [begin
                       <<N:64, _/binary>> = Bin,
                       ?assertEqual(crash_data(N, BS), Bin),
                       {A, N}
                   end || {A, Bin} <- Actual],
        Matches = [K || {K, Live, _} <- States, K >= Acked,
                        lists:sort(maps:to_list(Live)) =:= ActualN],
        ?assertMatch([_ | _], Matches),
        K = hd(Matches),
        %% The same in terms of acknowledgements: an address that no unacknowledged
        %% operation touched holds exactly what the acknowledged ones left there.
        Touched = [A || {N, _, {_, A}} <- States, N > Acked, N =< K],
        LastAcked = maps:from_list([{A, {Kind, N}} || {N, _, {Kind, A}} <- States, N =< Acked]),
        [case maps:get(A, LastAcked) of
             {s, N} -> ?assertEqual(crash_data(N, BS), ?B:read_block(M, A));
             {f, _} -> ?assertEqual(eof, ?B:read_block(M, A))
         end || A <- maps:keys(LastAcked), not lists:member(A, Touched)],
        %% After repair the storage works on: the next store takes the lowest free slot.
        {_, LiveK, _} = lists:keyfind(K, 1, States),
        ?assertEqual(lowest_free(LiveK, 262144), ?B:store_block(M, crash_data(0, BS))),
        {K, Meta0 =/= Meta1}
    after
        emmap:close(M)
    end.

%% `[{N, LiveAfterN, OpN}]' for N = 0 .. Max (op 0 is `none').
replay(Acks, Live, S, MaxLive, N, Max) ->
    [{N - 1, Live, none} | replay1(Acks, Live, S, MaxLive, N, Max)].

replay1(_Acks, _Live, _S, _MaxLive, N, Max) when N > Max ->
    [];
replay1(Acks, Live, S, MaxLive, N, Max) ->
    {Op, S1} = crash_next(Live, S, MaxLive),
    {Kind, A} = case Op of
                    store -> {s, lowest_free(Live, 262144)};
                    {free, Af} -> {f, Af}
                end,
    case Acks of
        [{K, N, Ack} | _] -> ?assertEqual({Kind, A}, {K, Ack});
        [] -> ok
    end,
    Live1 = case Kind of s -> Live#{A => N}; f -> maps:remove(A, Live) end,
    [{N, Live1, {Kind, A}} | replay1(tl_or_nil(Acks), Live1, S1, MaxLive, N + 1, Max)].

tl_or_nil([]) -> [];
tl_or_nil([_ | T]) -> T.

%%%---------------------------------------------------------------------------
%%% Layout versions, written by hand from BLOCKS.md
%%%---------------------------------------------------------------------------

-define(M64, 16#FFFFFFFFFFFFFFFF).
-define(K0, 16#9E3779B97F4A7C15).
-define(HEADER_SEED, 16#6865616465722131).
-define(SLOT_SEED, 16#736C6F7421646174).
-define(TAG, 16#B10CC0DE).

%% Version 1's 64-bit checksum, as BLOCKS.md describes it.
v1_checksum(Seed, Bin) ->
    Ks = [?K0, 16#C2B2AE3D27D4EB4F, 16#165667B19E3779F9, 16#D6E8FEB86659FD93],
    [K0, K1, _, _] = Ks,
    Acc0 = [Seed bxor K0, rotl(Seed, 17) bxor K1, rotl(Seed, 29) bxor lists:nth(3, Ks),
            rotl(Seed, 43) bxor lists:nth(4, Ks)],
    Acc = v1_lanes(Bin, Acc0, Ks),
    lists:foldl(fun(A, H) -> fmix(H bxor A) end, fmix(Seed bxor byte_size(Bin)), Acc).

v1_lanes(<<W0:64/little, W1:64/little, W2:64/little, W3:64/little, Rest/binary>>, Acc, Ks) ->
    v1_lanes(Rest, [lane(A, W, K) || {A, W, K} <- lists:zip3(Acc, [W0, W1, W2, W3], Ks)], Ks);
v1_lanes(Rest, [A0 | As], [K0 | _] = Ks) when byte_size(Rest) >= 8 ->
    <<W:64/little, Rest1/binary>> = Rest,
    v1_lanes(Rest1, [lane(A0, W, K0) | As], Ks);
v1_lanes(<<>>, Acc, _Ks) ->
    Acc;
v1_lanes(Tail, [A0, A1 | As], [_, K1 | _]) ->
    Pad = 8 - byte_size(Tail),
    <<W:64/little>> = <<Tail/binary, 0:(Pad * 8)>>,
    [A0, lane(A1, W, K1) | As].

lane(A, W, K) -> rotl(((A bxor W) * K) band ?M64, 31).
rotl(X, R) -> ((X bsl R) bor (X bsr (64 - R))) band ?M64.
fmix(H0) ->
    H1 = ((H0 bxor (H0 bsr 33)) * 16#ff51afd7ed558ccd) band ?M64,
    H2 = ((H1 bxor (H1 bsr 33)) * 16#c4ceb9fe1a85ec53) band ?M64,
    H2 bxor (H2 bsr 33).

v1_marker(Addr, Block) ->
    H = v1_checksum(?SLOT_SEED bxor ((Addr * ?K0) band ?M64), Block),
    (?TAG bsl 32) bor ((H bxor (H bsr 32)) band 16#FFFFFFFF).

%% Standard CRC-32C, a bit at a time.
crc32c(Bin) -> crc32c(16#FFFFFFFF, Bin) bxor 16#FFFFFFFF.
crc32c(C, <<B, Rest/binary>>) -> crc32c(crc_bits(C bxor B, 8), Rest);
crc32c(C, <<>>) -> C.
crc_bits(C, 0) -> C;
crc_bits(C, N) when C band 1 =:= 1 -> crc_bits((C bsr 1) bxor 16#82F63B78, N - 1);
crc_bits(C, N) -> crc_bits(C bsr 1, N - 1).

v2_marker(Addr, Block) ->
    (?TAG bsl 32) bor crc32c(<<Addr:64/little, Block/binary>>).

%% Version 3: a 16-bit tag, the marker's own 16-bit check (the bare CRC-32C register,
%% started at "mark", over the address and the block size and CRC), the CRC of version 2.
v3_marker(Addr, Block) ->
    Crc = crc32c(<<Addr:64/little, Block/binary>>),
    C = crc32c(16#6d61726b, <<Addr:64/little, Crc:32/little, (byte_size(Block)):32/little>>),
    Check = (C bxor (C bsr 16)) band 16#FFFF,
    (16#B1C3 bsl 48) bor (Check bsl 32) bor Crc.

%% The geometry of a storage, by BLOCKS.md's formulas.
geometry(BS, Cap) ->
    Stride = (BS + 8 + 7) div 8 * 8,
    Words = (Cap + 63) div 64,
    SummaryWords = (Words + 63) div 64,
    SummaryOff = 64 + 8 * Words,
    DataOff = (SummaryOff + 8 * SummaryWords + 63) div 64 * 64,
    {Stride, Words, SummaryWords, SummaryOff, DataOff}.

header(Version, BS, Cap) ->
    {Stride, _, _, SummaryOff, DataOff} = geometry(BS, Cap),
    H = <<"EMMAPBLK", Version:32/little, 64:32/little, BS:64/little, Cap:64/little,
          Stride:64/little, SummaryOff:64/little, DataOff:64/little>>,
    <<H/binary, (v1_checksum(?HEADER_SEED, H)):64/little>>.

%% A whole storage file: `Slots' is `[{Addr, Block, Marker}]' (bit set for each), the
%% summary says every bitmap word may have a free bit.
storage_file(Version, BS, Cap, Slots) ->
    {Stride, Words, SummaryWords, SummaryOff, DataOff} = geometry(BS, Cap),
    Bits = lists:foldl(fun({A, _, _}, Acc) -> Acc bor (1 bsl A) end, 0, Slots),
    Bitmap = << <<((Bits bsr (64 * W)) band ?M64):64/little>> || W <- lists:seq(0, Words - 1) >>,
    Summary = << <<?M64:64/little>> || _ <- lists:seq(1, SummaryWords) >>,
    Meta = <<(header(Version, BS, Cap))/binary, Bitmap/binary, Summary/binary>>,
    true = SummaryOff + 8 * SummaryWords =:= byte_size(Meta),
    Top = lists:max([0 | [A + 1 || {A, _, _} <- Slots]]),
    Data = << <<(slot(A, Slots, BS, Stride))/binary>> || A <- lists:seq(0, Top - 1) >>,
    <<Meta/binary, 0:((DataOff - byte_size(Meta)) * 8), Data/binary>>.

slot(A, Slots, BS, Stride) ->
    case lists:keyfind(A, 1, Slots) of
        {A, Block, Marker} -> <<Marker:64/little, Block/binary, 0:((Stride - 8 - BS) * 8)>>;
        false -> <<0:(Stride * 8)>>
    end.

marker_in(Bytes, BS, Cap, Addr) ->
    {Stride, _, _, _, DataOff} = geometry(BS, Cap),
    <<_:(DataOff + Addr * Stride)/binary, M:64/little, _/binary>> = Bytes,
    M.

%% A version 1 file, written by hand, reads, stores and frees as version 1: new blocks get
%% version 1 markers, a slot whose marker does not match is no block, repair drops it.
version_1_files_written_by_hand_work_test() ->
    ?assertEqual(16#E3069283, crc32c(<<"123456789">>)),
    BS = 24,
    Cap = 100,
    Block = fun(I) -> binary:copy(<<I>>, BS) end,
    Good = [{A, Block(A), v1_marker(A, Block(A))} || A <- lists:seq(0, 9), A =/= 4],
    Torn = {12, Block(12), v1_marker(12, Block(99))},
    File = storage_file(1, BS, Cap, [Torn | Good]),
    with_path(fun(P) ->
        ok = file:write_file(P, File),
        {ok, M} = emmap:open(P, [read, write, shared]),
        ?assertEqual(ok, ?B:init_block_storage(M, BS, #{max_blocks => Cap})),
        ?assertEqual({error, mismatch}, ?B:init_block_storage(M, BS + 1)),
        ?assertEqual([{A, B} || {A, B, _} <- Good], ?B:read_blocks(M)),
        ?assertEqual(eof, ?B:read_block(M, 4)),
        ?assertEqual(eof, ?B:read_block(M, 12)),
        ?assertEqual(false, ?B:free_block(M, 12)),
        ?assertEqual(ok, ?B:repair_block_storage(M)),
        ?assertEqual(4, ?B:store_block(M, <<"four: version one marker">>)),
        ?assertEqual([10, 11, 12], [?B:store_block(M, Block(A)) || A <- [10, 11, 12]]),
        ?assertEqual(true, ?B:free_block(M, 5)),
        ok = emmap:close(M),
        {ok, Bytes} = file:read_file(P),
        ?assertEqual(header(1, BS, Cap), binary:part(Bytes, 0, 64)),
        ?assertEqual(v1_marker(4, <<"four: version one marker">>), marker_in(Bytes, BS, Cap, 4)),
        ?assertEqual(v1_marker(10, Block(10)), marker_in(Bytes, BS, Cap, 10)),
        ?assertEqual(v1_marker(12, Block(12)), marker_in(Bytes, BS, Cap, 12)),
        ?assertEqual(0, marker_in(Bytes, BS, Cap, 5)),
        {ok, M2} = emmap:open(P, [read, write, shared]),
        ?assertEqual([0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12],
                     [A || {A, _} <- ?B:read_blocks(M2)]),
        ok = emmap:close(M2)
    end).

%% New storages are version 3: the header says so, and each marker holds the tag, its own
%% check and the CRC-32C of the address and the block. A file written by hand the same way
%% reads back; a block whose bytes were damaged since its store is no block to reads, and
%% free_block/2 frees it (its marker proves it was stored there); a marker copied from
%% another slot is neither.
version_3_markers_test() ->
    BS = 1531,
    with_storage(BS, #{max_blocks => 64}, [], fun(M, P) ->
        Blocks = [rand:bytes(BS) || _ <- lists:seq(1, 5)],
        ?assertEqual([0, 1, 2, 3, 4], [?B:store_block(M, B) || B <- Blocks]),
        ok = emmap:sync(M),
        {ok, Bytes} = file:read_file(P),
        ?assertEqual(header(3, BS, 64), binary:part(Bytes, 0, 64)),
        [?assertEqual(v3_marker(A, B), marker_in(Bytes, BS, 64, A))
         || {A, B} <- lists:zip(lists:seq(0, 4), Blocks)]
    end),
    Block = fun(A) -> binary:copy(<<A>>, 10) end,
    Slots = [{A, Block(A), v3_marker(A, Block(A))} || A <- [0, 2, 70]],
    Moved = {3, Block(2), v3_marker(2, Block(2))},
    Damaged = {5, Block(6), v3_marker(5, Block(5))},
    with_path(fun(P) ->
        ok = file:write_file(P, storage_file(3, 10, 100, [Moved, Damaged | Slots])),
        {ok, M} = emmap:open(P, [read, write, shared]),
        ?assertEqual(ok, ?B:init_block_storage(M, 10, #{max_blocks => 100})),
        ?assertEqual([{A, B} || {A, B, _} <- Slots], ?B:read_blocks(M)),
        ?assertEqual(eof, ?B:read_block(M, 3)),
        ?assertEqual(eof, ?B:read_block(M, 5)),
        ?assertEqual(false, ?B:free_block(M, 3)),
        ?assertEqual(true, ?B:free_block(M, 5)),
        ?assertEqual(false, ?B:free_block(M, 5)),
        ?assertEqual(true, ?B:free_block(M, 70)),
        ?assertEqual(ok, ?B:repair_block_storage(M)),
        ?assertEqual([1, 3, 4], [?B:store_block(M, Block(A)) || A <- [1, 3, 4]]),
        ok = emmap:close(M),
        {ok, Bytes} = file:read_file(P),
        ?assertEqual(header(3, 10, 100), binary:part(Bytes, 0, 64)),
        [?assertEqual(v3_marker(A, Block(A)), marker_in(Bytes, 10, 100, A)) || A <- [1, 3, 4]]
    end).

%% A version 2 file, written by hand, reads, stores and frees as version 2 (new blocks get
%% version 2 markers; the header keeps saying 2); a block copied with its marker to another
%% slot is no block there, and neither is a block whose bytes do not match its marker.
version_2_files_written_by_hand_work_test() ->
    Block = fun(A) -> binary:copy(<<A>>, 10) end,
    Slots = [{A, Block(A), v2_marker(A, Block(A))} || A <- [0, 2, 70]],
    Moved = {3, Block(2), v2_marker(2, Block(2))},
    Damaged = {5, Block(6), v2_marker(5, Block(5))},
    with_path(fun(P) ->
        ok = file:write_file(P, storage_file(2, 10, 100, [Moved, Damaged | Slots])),
        {ok, M} = emmap:open(P, [read, write, shared]),
        ?assertEqual(ok, ?B:init_block_storage(M, 10)),
        %% Slot 3 holds slot 2's bytes and marker: not a block there.
        ?assertEqual([{A, B} || {A, B, _} <- Slots], ?B:read_blocks(M)),
        ?assertEqual(eof, ?B:read_block(M, 3)),
        ?assertEqual(false, ?B:free_block(M, 3)),
        ?assertEqual(false, ?B:free_block(M, 5)),
        ?assertEqual(true, ?B:free_block(M, 2)),
        ?assertEqual(ok, ?B:repair_block_storage(M)),
        ?assertEqual([1, 2, 3], [?B:store_block(M, Block(A)) || A <- [1, 2, 3]]),
        ok = emmap:close(M),
        {ok, Bytes} = file:read_file(P),
        ?assertEqual(header(2, 10, 100), binary:part(Bytes, 0, 64)),
        [?assertEqual(v2_marker(A, Block(A)), marker_in(Bytes, 10, 100, A)) || A <- [1, 2, 3]],
        {ok, M2} = emmap:open(P, [read, write, shared]),
        ?assertEqual([0, 1, 2, 3, 70], [A || {A, _} <- ?B:read_blocks(M2)]),
        ok = emmap:close(M2)
    end).

%% Blocks of 24 MiB: stores and reads run on a dirty I/O scheduler (busy for much of each
%% call), and a bystander keeps getting answers from the one normal scheduler. A free reads
%% only the block's marker (layout version 3): it stays on the normal scheduler.
huge_blocks_run_on_dirty_schedulers_test_() ->
    {timeout, 120, fun() ->
        BS = 24 bsl 20,
        with_storage(BS, #{max_blocks => 3}, [], fun(M, _) ->
            Bin = binary:copy(<<"emmap block ">>, BS div 12),
            Off = fun(F) -> emmap_test_lib:off_normal_schedulers(F) end,
            {0, MaxS, DirtyS} = Off(fun() -> ?B:store_block(M, Bin) end),
            {Bin, MaxR, DirtyR} = Off(fun() -> ?B:read_block(M, 0) end),
            {true, MaxF, DirtyF} = Off(fun() -> ?B:free_block(M, 0) end),
            ?debugFmt("24 MiB store/read/free: longest bystander round trip ~w/~w/~w ms, "
                      "dirty I/O busy ~.2f/~.2f/~.2f of the call",
                      [MaxS, MaxR, MaxF, DirtyS, DirtyR, DirtyF]),
            [?assert(D > 0.3) || D <- [DirtyS, DirtyR]],
            ?assert(DirtyF < 0.3),
            [?assert(Max < 500) || Max <- [MaxS, MaxR, MaxF]]
        end)
    end}.

%%%---------------------------------------------------------------------------
%%% Garbage: random bytes as a storage file give an error or a consistent result
%%%---------------------------------------------------------------------------

garbage_files_test_() ->
    {timeout, 120, fun() ->
        S = rand:seed_s(exsss, {9, 9, 9}),
        lists:foldl(fun(I, Si) -> garbage_round(I, Si) end, S, lists:seq(1, 300)),
        ok
    end}.

garbage_round(I, S0) ->
    {Size, S1} = rand:uniform_s(60000, S0),
    {Bytes0, S2} = rand:bytes_s(Size, S1),
    {BS, S3} = rand:uniform_s(64, S2),
    {Cap, S4} = rand:uniform_s(3000, S3),
    %% Kinds: 0 pure noise, 1 the original's <<BS:32, Limit:32, noise>>, 2 a valid header
    %% on noise, 3 a real storage with noise sprayed over it.
    Kind = I rem 4,
    {Bytes, S5} = garbage_bytes(Kind, Bytes0, BS, Cap, S4),
    with_path(fun(P) ->
        ok = file:write_file(P, Bytes),
        {ok, M} = emmap:open(P, [read, write, shared]),
        try
            check_garbage(M, Kind, BS)
        after
            emmap:close(M)
        end
    end),
    S5.

garbage_bytes(0, Bytes, _BS, _Cap, S) ->
    {Bytes, S};
garbage_bytes(1, <<_:64, Rest/binary>>, BS, _Cap, S) ->
    {<<BS:32/little, 16#FFFF:32/little, Rest/binary>>, S};
garbage_bytes(1, Bytes, _BS, _Cap, S) ->
    {Bytes, S};
garbage_bytes(2, Bytes, BS, Cap, S) ->
    Header = real_storage(BS, Cap, 0),
    {<<Header:64/binary, (tail(Bytes, 64))/binary>>, S};
garbage_bytes(3, _Bytes, BS, Cap, S) ->
    Real = real_storage(BS, Cap, min(Cap, 500)),
    {Hits, S1} = rand:uniform_s(40, S),
    spray(Real, Hits, S1).

tail(B, N) when byte_size(B) > N -> binary:part(B, N, byte_size(B) - N);
tail(_, _) -> <<>>.

%% The bytes of a storage with `N' blocks stored, made through the API.
real_storage(BS, Cap, N) ->
    with_path(fun(P) ->
        {ok, M} = emmap:open(P, 0, 1, [create, write, shared]),
        ok = ?B:init_block_storage(M, BS, #{max_blocks => Cap}),
        [_ = ?B:store_block(M, binary:copy(<<I>>, BS)) || I <- lists:seq(1, N)],
        [_ = ?B:free_block(M, A) || A <- lists:seq(0, N, 3)],
        ok = emmap:close(M),
        {ok, B} = file:read_file(P),
        B
    end).

spray(B, 0, S) ->
    {B, S};
spray(B, Hits, S) ->
    {Pos, S1} = rand:uniform_s(byte_size(B), S),
    {Len, S2} = rand:uniform_s(16, S1),
    {Noise, S3} = rand:bytes_s(min(Len, byte_size(B) - Pos + 1), S2),
    <<Pre:(Pos - 1)/binary, _:(byte_size(Noise))/binary, Post/binary>> = B,
    spray(<<Pre/binary, Noise/binary, Post/binary>>, Hits - 1, S3).

check_garbage(M, Kind, BS) ->
    case ?B:read_blocks(M) of
        {error, E} ->
            ?assert(lists:member(E, [not_initialized, corrupt])),
            ?assert(Kind =/= 2 orelse E =:= corrupt),
            %% Every call answers the same error, none crashes.
            ?assertEqual({error, E}, ?B:read_block(M, 0)),
            ?assertEqual({error, E}, ?B:free_block(M, 1)),
            ?assertEqual({error, E}, ?B:store_block(M, <<0>>)),
            ?assertEqual({error, E}, ?B:repair_block_storage(M)),
            ?assertEqual({error, E}, ?B:read_blocks(M, 0, 10));
        L1 when is_list(L1) ->
            ?assert(Kind >= 2),
            ?assertEqual(L1, read_chunks(M, 7)),
            [?assertEqual(B, ?B:read_block(M, A)) || {A, B} <- L1],
            ok = repair_chunks(M, 100),
            L2 = ?B:read_blocks(M),
            %% Repair only drops what was never a readable block.
            ?assertEqual(L1, L2),
            ok = ?B:repair_block_storage(M),
            ?assertEqual(L2, ?B:read_blocks(M)),
            %% And the storage keeps working.
            case ?B:store_block(M, binary:copy(<<"z">>, BS)) of
                A when is_integer(A) ->
                    ?assertEqual(binary:copy(<<"z">>, BS), ?B:read_block(M, A)),
                    ?assertEqual(true, ?B:free_block(M, A));
                {error, full} ->
                    ok
            end
    end.

%%%---------------------------------------------------------------------------
%%% Long calls stay short: every NIF step of read_blocks/1 and repair/1 on a full store
%%%---------------------------------------------------------------------------

nif_steps_are_short_test_() ->
    {timeout, 120, fun() ->
        [nif_steps(BS, Cap) || {BS, Cap} <- [{8, 262144}, {1531, 20000}, {60000, 200}]]
    end}.

nif_steps(BS, Cap) ->
    with_storage(BS, #{max_blocks => Cap}, [], fun(M, _) ->
        Bin = binary:copy(<<"x">>, BS),
        fill(M, Bin, Cap),
        ?assertEqual({error, full}, ?B:store_block(M, Bin)),
        {file_descriptor, emmap, R} = M,
        %% Each walk is timed step by step, three times; a step's time is its fastest
        %% of the three (that removes the OS's preemptions, not the NIF's own work).
        Walk = fun(F) -> [step_times(F, 0, []) || _ <- [1, 2, 3]] end,
        Chunk = Walk(fun(S) -> emmap_nif:block_chunk(R, S, 1 bsl 64 - 1) end),
        Repair = Walk(fun(S) -> emmap_nif:block_repair(R, S, 1 bsl 64 - 1) end),
        [begin
             Mins = [lists:min(Ts) || Ts <- transpose(Walks)],
             Worst = lists:max(Mins),
             ?debugFmt("block size ~w, ~w blocks: ~s: ~w steps, slowest ~w us",
                       [BS, Cap, Name, length(Mins), Worst]),
             ?assert(Worst < 1000)
         end || {Name, Walks} <- [{"read_blocks", Chunk}, {"repair", Repair}]],
        ?assertEqual(Cap, length(?B:read_blocks(M))),
        ?assertEqual(ok, ?B:repair_block_storage(M))
    end).

fill(_M, _Bin, 0) -> ok;
fill(M, Bin, N) ->
    _ = ?B:store_block(M, Bin),
    fill(M, Bin, N - 1).

step_times(F, Start, Acc) ->
    T0 = erlang:monotonic_time(microsecond),
    Res = F(Start),
    Us = erlang:monotonic_time(microsecond) - T0,
    case Res of
        {_, eof} -> lists:reverse([Us | Acc]);
        {_, Next} -> step_times(F, Next, [Us | Acc]);
        eof -> lists:reverse([Us | Acc]);
        Next when is_integer(Next) -> step_times(F, Next, [Us | Acc])
    end.

transpose([[] | _]) -> [];
transpose(Ls) -> [[hd(L) || L <- Ls] | transpose([tl(L) || L <- Ls])].

%%%---------------------------------------------------------------------------
%%% The README section's example runs as written and prints what it says
%%%---------------------------------------------------------------------------

doc_section_example_test() ->
    Section = emmap_readme:section("## Block storage: fixed-size blocks in a file"),
    [{"erlang", Example}, {"", Output}] = emmap_readme:fenced(Section),
    with_path(fun(P) ->
        Printed = emmap_readme:eval_printing(
                    emmap_readme:replace_path(Example, "/tmp/blocks_example.bin", P)),
        ?assertEqual(Output, Printed)
    end).
