%%% @doc Concurrent model-based test: several Erlang processes ("actors") issue random
%%% calls on shared emmap handles at the same time, and every result is checked.
%%%
%%% How results stay deterministic under concurrency:
%%% - The mapping is laid out so that each actor owns some bytes: 4 atomic slots (8 bytes
%%%   each, 8-aligned) and a 96-byte range. An actor reads and writes only its own bytes,
%%%   so its own sequential model predicts every value it reads and every old value its
%%%   atomics return. Offset 0 is a shared counter: every actor adds known amounts; the
%%%   final value must be the exact sum of the adds that succeeded.
%%% - Each handle's file position belongs to one actor (handle index rem number of actors),
%%%   which alone calls `position', `read' and `write' on it.
%%% - Handle-level events (open, close, resize) are shared. They happen between rounds, while
%%%   every actor waits (a synchronisation point), and, with `lock' only, also during a
%%%   round from a "chaos" process, concurrently with the actors. With `nolock' the caller
%%%   promises not to close/resize concurrently, so that only happens between rounds.
%%%   An operation racing with a close returns either its normal result or
%%%   `{error, closed}'; once an actor has seen `closed' on a handle, every later call on
%%%   it must answer `{error, closed}' too. A write that answered `closed' wrote nothing.
%%% - Binaries from reads are kept (across rounds, closes and resizes) and checked later:
%%%   right length; copy-mode binaries never change; direct binaries of a shared file
%%%   mapping show the latest bytes; other direct binaries show one of the versions the
%%%   actor wrote at or after the read (after a resize that moved an anonymous or private
%%%   mapping they may be stale).
%%% - At the end every open handle, and for a shared file the file itself, must hold
%%%   exactly the composite of all actors' models, zeros everywhere else (so wrong-range
%%%   writes would be caught), and the shared counter must equal the sum of all adds.
%%%
%%% Variants (chosen by the generator): backing `shared_file', `private_file',
%%% `anon_private', `anon_shared'; `direct' or copy; `lock' or `nolock'.
%%% CI: 2 x 300 programs (lock, nolock). `make soak': 2 x 5,000.
%%%
%%% By hand: `{ok, P} = proper_gen:pick(emmap_statem_tests:program(lock)),
%%% emmap_statem_tests:run(P)' runs one program and returns `{true, []}' or the failures.
-module(emmap_statem_tests).

-include_lib("eunit/include/eunit.hrl").
-include("emmap_proper.hrl").

-import(proper_types, [range/2, elements/1, list/1, vector/2, frequency/1, oneof/1,
                       bool/0, binary/0, integer/2, non_empty/1]).

-export([prop_concurrent/1, program/1, run/1]).

-define(U64, 16#FFFFFFFFFFFFFFFF).
-define(I64MAX, 16#7FFFFFFFFFFFFFFF).
-define(I64MIN, -16#8000000000000000).
-define(SIZE0, 4096).           % initial mapping size
-define(STRIDE, 256).           % bytes per actor
-define(FIRST, 64).             % first actor's base
-define(SLOTS, 4).
-define(RLEN, 96).              % an actor's byte range
-define(ROFF, 32).              % range offset inside an actor's area (after the slots)
-define(MAX_GROW, 1 bsl 20).    % no resize beyond this

%%%===========================================================================
%%% EUnit entry points
%%%===========================================================================

numtests() ->
    case os:getenv("EMMAP_SOAK") of false -> 300; _ -> 5000 end.

concurrent_lock_test_() ->
    {timeout, 3600, fun() -> run_prop(lock) end}.

concurrent_nolock_test_() ->
    {timeout, 3600, fun() -> run_prop(nolock) end}.

run_prop(Lock) ->
    N = numtests(),
    T0 = erlang:monotonic_time(millisecond),
    erase(emmap_statem_stats),
    Res = proper:quickcheck(prop_concurrent(Lock), [{numtests, N}, {to_file, user}]),
    T1 = erlang:monotonic_time(millisecond),
    Stats = get_stats(),
    io:format(user, "~nconcurrent (~w): ~w programs in ~w ms; ~p~n",
              [Lock, N, T1 - T0, Stats]),
    ?assert(Res =:= true),
    %% ... and it checked something: every program ran to its end, its actors made calls
    %% (about 700 per program), and the final contents were compared through the open
    %% handles (about 30 per program) and, for shared files, with the file itself.
    Count = fun(K) -> proplists:get_value(K, Stats, 0) end,
    ?assert(Count(programs) >= N),
    ?assert(Count(actor_ops) >= 10 * N),
    ?assert(Count(final_image_checks) >= N),
    ?assert(Count(final_file_checks) > 0).

bump(K, N) ->
    S = case get(emmap_statem_stats) of undefined -> #{}; M -> M end,
    put(emmap_statem_stats, maps:update_with(K, fun(X) -> X + N end, N, S)).

get_stats() ->
    case get(emmap_statem_stats) of undefined -> #{}; M -> lists:sort(maps:to_list(M)) end.

%%%===========================================================================
%%% Generators
%%%===========================================================================

prop_concurrent(Lock) ->
    ?FORALL(Prog, program(Lock),
            begin
                {Ok, Failures} = run(Prog),
                ?WHENFAIL(io:format(user, "~nprogram:~n~p~nfailures:~n~p~n",
                                    [Prog, lists:sublist(Failures, 20)]),
                          Ok)
            end).

program(Lock) ->
    proper_types:bind(
      {elements([shared_file, private_file, anon_private, anon_shared]),
       elements([direct, copy]), range(4, 5)},
      fun({Backing, Mode, NActors}) ->
              {#{backing => Backing, mode => Mode, lock => Lock, actors => NActors},
               non_empty(list(round(Lock, NActors)))}
      end, false).

round(Lock, NActors) ->
    {list(event()), vector(NActors, list(op())),
     case Lock of lock -> list(chaos()); nolock -> [] end}.

hsel() -> range(0, 99).

event() ->
    frequency([{3, {open, bool()}}, {2, {close, hsel()}}, {3, {resize, hsel(), grow()}}]).

chaos() ->
    frequency([{2, {close, hsel()}}, {4, {resize, hsel(), grow()}}, {3, {pause, range(0, 1)}},
               {1, {info, hsel()}}]).

grow() -> oneof([double, same, {to, range(1, 70000)}, {below, range(1, 4096)}]).

data() -> non_empty(binary()).

value() ->
    frequency([{4, integer(-1000, 1000)},
               {2, elements([?I64MAX, ?I64MIN, -1, 0, ?U64, 1 bsl 63, ?I64MAX - 1])},
               {2, integer(?I64MIN, ?U64)}]).

op() ->
    frequency(
      [{6, {pread, hsel(), range(0, ?RLEN - 1), range(0, 40)}},
       {4, {pread_keep, hsel(), range(0, ?RLEN - 1), range(1, 40)}},
       {6, {pwrite, hsel(), range(0, ?RLEN - 1), data(), elements([bin, iolist])}},
       {2, {pwrite_list, hsel(), non_empty(list({range(0, ?RLEN - 1), data()}))}},
       {2, {pread_list, hsel(), non_empty(list({range(0, ?RLEN - 1), range(0, 30)}))}},
       {6, {atomic, hsel(), range(0, ?SLOTS - 1),
            elements([add, sub, 'band', 'bor', 'bxor', xchg, 'and', 'or', 'xor']), value()}},
       {3, {cas, hsel(), range(0, ?SLOTS - 1), bool(), value()}},
       {3, {aread, hsel(), range(0, ?SLOTS - 1)}},
       {2, {awrite, hsel(), range(0, ?SLOTS - 1), value()}},
       {5, {shared_add, hsel(), range(1, 1000)}},
       {1, {misaligned, hsel(), range(0, ?SLOTS - 1), range(1, 7)}},
       {1, {wild_pread, hsel(), elements([?U64, ?U64 - 3, 1 bsl 63, 1 bsl 40]), range(1, 100)}},
       {1, {wild_write, hsel(), elements([?U64, ?U64 - 3, ?U64 - 7, 1 bsl 63, 1 bsl 40]),
            range(1, 16)}},
       {1, {wild_atomic, hsel(), elements([?U64 - 7, 1 bsl 40, 1 bsl 63])}},
       {1, {flush, hsel()}},
       {1, {info, hsel()}},
       {2, check_bins},
       {1, yield},
       {3, {seek, hsel(), range(0, ?RLEN - 1)}},
       {3, {seq_read, hsel(), range(0, 40)}},
       {2, {seq_write, hsel(), data()}}]).

%%%===========================================================================
%%% Running a program
%%%===========================================================================

%% A handle as the coordinator knows it.
-record(h, {idx, h, mem, ro, size, closed = false}).

run({Cfg = #{actors := NA, backing := Backing}, Rounds}) ->
    Path = emmap_test_lib:tmp_path("statem"),
    case Backing of
        B when B =:= shared_file; B =:= private_file ->
            ok = file:write_file(Path, <<0:(?SIZE0 * 8)>>);
        _ -> ok
    end,
    Coord = #{cfg => Cfg, path => Path, hs => [], fsize => ?SIZE0, fails => []},
    Self = self(),
    Actors = [spawn_link(fun() -> actor_init(Self, I, NA, Cfg) end) || I <- lists:seq(0, NA - 1)],
    try
        C1 = open_handle(open_handle(Coord, false), false),
        C2 = lists:foldl(fun(R, C) -> do_round(C, R, Actors) end, C1, Rounds),
        C3 = final_checks(C2, Actors),
        [ok = emmap:close(H) || #h{h = H} <- maps:get(hs, C3)],
        Fails = maps:get(fails, C3),
        bump(programs, 1),
        bump(rounds, length(Rounds)),
        {Fails =:= [], Fails}
    after
        [begin unlink(A), exit(A, kill) end || A <- Actors],
        _ = file:delete(Path)
    end.

opts(#{backing := B, mode := Mode, lock := Lock}, RO) ->
    Base = case B of
               shared_file -> [shared];
               private_file -> [private];
               anon_private -> [anon];
               anon_shared -> [anon, shared]
           end,
    W = case RO of true -> []; false -> [write] end,
    M = case Mode of direct -> [direct]; copy -> [] end,
    [read, Lock | Base ++ W ++ M].

open_handle(C = #{cfg := Cfg = #{backing := B}, path := P, hs := Hs, fsize := FS}, RO) ->
    Idx = length(Hs),
    {Res, Size} = case B of
                      shared_file -> {emmap:open(P, opts(Cfg, RO)), FS};
                      private_file -> {emmap:open(P, opts(Cfg, RO)), ?SIZE0};
                      _ -> {emmap:open("", 0, ?SIZE0, opts(Cfg, RO)), ?SIZE0}
                  end,
    case Res of
        {ok, H} ->
            Mem = case B of shared_file -> file; _ -> {mem, Idx} end,
            C#{hs := Hs ++ [#h{idx = Idx, h = H, mem = Mem, ro = RO, size = Size}]};
        Other ->
            fail(C, {open_failed, RO, Other})
    end.

fail(C = #{fails := F}, What) -> C#{fails := [What | F]}.

pick(Hs, Sel) -> lists:nth(1 + Sel rem length(Hs), Hs).

replace(Hs, H = #h{idx = I}) -> lists:keyreplace(I, #h.idx, Hs, H).

do_round(C0, {Events, ActorOps, Chaos}, Actors) ->
    %% 1. shared events at a synchronisation point: every actor is waiting
    C = lists:foldl(fun(E, Acc) -> event(Acc, E) end, C0, Events),
    #{hs := Hs} = C,
    %% 2. the actors (and, with lock, the chaos process) run concurrently
    Go = make_ref(),
    View = [{I, H, Mem, RO, Cl} || #h{idx = I, h = H, mem = Mem, ro = RO, closed = Cl} <- Hs],
    [A ! {round, Go, View, Ops} || {A, Ops} <- lists:zip(Actors, ActorOps)],
    Self = self(),
    ChaosPid = spawn_link(fun() ->
                                  receive Go -> ok end,
                                  Self ! {chaos_done, Go, chaos_run(C, Chaos)}
                          end),
    [A ! Go || A <- Actors],
    ChaosPid ! Go,
    C1 = receive
             {chaos_done, Go, CC} -> CC
         after 60000 -> fail(C, chaos_hang)
         end,
    bump(chaos_ops, length(Chaos)),
    lists:foldl(fun(A, Acc) ->
                        receive
                            {done, A, Go, Fails, Raced} ->
                                bump(actor_ops, length(lists:nth(index_of(A, Actors), ActorOps))),
                                bump(closes_seen_mid_round, Raced),
                                lists:foldl(fun(F, Acc2) -> fail(Acc2, F) end, Acc, Fails)
                        after 60000 -> fail(Acc, {actor_hang, A})
                        end
                end, C1, Actors).

index_of(X, L) -> length(lists:takewhile(fun(Y) -> Y =/= X end, L)) + 1.

event(C, {open, RO}) ->
    bump(opens, 1),
    open_handle(C, RO);
event(C = #{hs := Hs}, {close, Sel}) ->
    H = pick(Hs, Sel),
    bump(closes, 1),
    case emmap:close(H#h.h) of
        ok -> C#{hs := replace(Hs, H#h{closed = true})};
        Other -> fail(C, {close, H#h.idx, Other})
    end;
event(C, {resize, Sel, Grow}) ->
    resize(C, Sel, Grow).

%% Resize as the model predicts it; used between rounds and by the chaos process (the
%% only two resizers, never at the same time, so sizes are known exactly).
resize(C = #{hs := Hs, cfg := #{backing := B}, fsize := FS}, Sel, Grow) ->
    H = #h{h = M, size = Size, ro = RO, closed = Closed} = pick(Hs, Sel),
    if
        true ->
            {Call, Expect, NewSize} =
                case Grow of
                    _ when Closed -> {fun() -> emmap:resize(M) end, {error, closed}, Size};
                    _ when RO -> {fun() -> emmap:resize(M, Size + 4096) end, {error, eacces}, Size};
                    _ when Size >= ?MAX_GROW -> {fun() -> emmap:resize(M, Size) end, {ok, Size}, Size};
                    double -> {fun() -> emmap:resize(M) end, {ok, 2 * Size}, 2 * Size};
                    same -> {fun() -> emmap:resize(M, Size) end, {ok, Size}, Size};
                    {to, X} -> {fun() -> emmap:resize(M, Size + X) end, {ok, Size + X}, Size + X};
                    {below, D} -> {fun() -> emmap:resize(M, Size - D) end, {error, einval}, Size}
                end,
            bump(resizes, 1),
            case Call() of
                Expect ->
                    FS1 = case B of shared_file -> max(FS, NewSize); _ -> FS end,
                    C#{hs := replace(Hs, H#h{size = NewSize}), fsize := FS1};
                Got ->
                    fail(C, {resize, H#h.idx, Grow, Size, expected, Expect, got, Got})
            end
    end.

chaos_run(C, Ops) ->
    lists:foldl(fun({pause, N}, Acc) -> [erlang:yield() || _ <- lists:seq(0, 20 * N)], Acc;
                   ({close, Sel}, Acc) -> erlang:yield(), event(Acc, {close, Sel});
                   ({resize, Sel, G}, Acc) -> erlang:yield(), resize(Acc, Sel, G);
                   ({info, Sel}, Acc = #{hs := Hs}) ->
                        H = pick(Hs, Sel),
                        case emmap:info(H#h.h) of
                            #{closed := true, size := 0} when H#h.closed -> Acc;
                            #{closed := false, size := S} when not H#h.closed, S =:= H#h.size -> Acc;
                            I -> fail(Acc, {chaos_info, H#h.idx, H, I})
                        end
                end, C, Ops).

%%%===========================================================================
%%% Final checks (after the last round, every actor waiting)
%%%===========================================================================

final_checks(C = #{hs := Hs, cfg := #{backing := B}, path := P}, Actors) ->
    Ref = make_ref(),
    View = [{I, H, Mem, RO, Cl} || #h{idx = I, h = H, mem = Mem, ro = RO, closed = Cl} <- Hs],
    [A ! {final, Ref, View} || A <- Actors],
    Models = [receive {model, A, Ref, Fails, M} -> {Fails, M}
              after 60000 -> {[{actor_hang_final, A}], #{}}
              end || A <- Actors],
    C1 = lists:foldl(fun({Fails, _}, Acc) -> lists:foldl(fun(F, A2) -> fail(A2, F) end, Acc, Fails) end,
                     C, Models),
    Mems = lists:usort([Mem || #h{mem = Mem} <- Hs]),
    lists:foldl(
      fun(Mem, Acc) ->
              Image = composite(Mem, [M || {_, M} <- Models]),
              Open = [H || H = #h{mem = Me, closed = false} <- Hs, Me =:= Mem],
              Acc1 = lists:foldl(
                       fun(#h{idx = I, h = M, size = Size}, A2) ->
                               bump(final_image_checks, 1),
                               Want = pad(Image, Size),
                               case emmap:pread(M, 0, Size) of
                                   {ok, Want} -> A2;
                                   Got -> fail(A2, {final_image, I, Mem, diff(Want, Got)})
                               end
                       end, Acc, Open),
              case {Mem, B} of
                  {file, shared_file} ->
                      bump(final_file_checks, 1),
                      {ok, Bytes} = file:read_file(P),
                      Want = pad(Image, byte_size(Bytes)),
                      case Bytes of
                          Want -> Acc1;
                          _ -> fail(Acc1, {final_file, diff(Want, {ok, Bytes})})
                      end;
                  _ -> Acc1
              end
      end, C1, Mems).

pad(Image, Size) when byte_size(Image) =< Size ->
    <<Image/binary, 0:((Size - byte_size(Image)) * 8)>>.

%% First differing offset, with a few bytes either side.
diff(Want, {ok, Got}) when is_binary(Got), byte_size(Got) =:= byte_size(Want) ->
    Pos = binary:longest_common_prefix([Want, Got]),
    Lo = max(0, Pos - 8),
    {at, Pos, want, binary:part(Want, Lo, min(24, byte_size(Want) - Lo)),
     got, binary:part(Got, Lo, min(24, byte_size(Got) - Lo))};
diff(Want, Got) -> {size, byte_size(Want), got, Got}.

%% The expected contents of memory object Mem: the shared counter, each actor's slots and
%% range, zeros elsewhere.
composite(Mem, Models) ->
    Len = ?FIRST + length(Models) * ?STRIDE,
    Sum = lists:sum([maps:get(shared, maps:get(Mem, M, #{}), 0) || M <- Models]),
    Parts = lists:append(
              [begin
                   #{slots := Slots, bytes := Bytes} = maps:get(Mem, M, fresh()),
                   Base = ?FIRST + I * ?STRIDE,
                   [{Base, << <<V:64/signed-native>> || V <- tuple_to_list(Slots) >>},
                    {Base + ?ROFF, Bytes}]
               end || {I, M} <- lists:zip(lists:seq(0, length(Models) - 1), Models)]),
    lists:foldl(fun({Off, B}, Img) ->
                        <<Pre:Off/binary, _:(byte_size(B))/binary, Post/binary>> = Img,
                        <<Pre/binary, B/binary, Post/binary>>
                end, <<(wrap(Sum)):64/signed-native, 0:((Len - 8) * 8)>>, Parts).

fresh() ->
    #{slots => list_to_tuple(lists:duplicate(?SLOTS, 0)), bytes => <<0:(?RLEN * 8)>>,
      versions => [], shared => 0}.

wrap(X) -> ((X + (1 bsl 63)) band ?U64) - (1 bsl 63).

to_i64(V) when V > ?I64MAX -> V - (1 bsl 64);
to_i64(V) -> V.

%%%===========================================================================
%%% Actors
%%%===========================================================================

%% Actor state: its index, the config, per memory object its model (bytes of its range,
%% with every version it wrote; slots; its adds to the shared counter), per handle whether
%% it has seen `closed' and (if it owns the handle's position) the position, the binaries
%% it keeps, and the failures found.
-record(a, {i, n, cfg, mems = #{}, seen = #{}, pos = #{}, bins = [], fails = [], vsn = 0,
            raced = 0}).

actor_init(Coord, I, N, Cfg) ->
    actor_loop(Coord, #a{i = I, n = N, cfg = Cfg}).

actor_loop(Coord, S) ->
    receive
        {round, Go, View, Ops} ->
            receive Go -> ok end,
            %% a yield after every call lets the actors and the chaos process interleave
            S1 = lists:foldl(fun(Op, Acc) -> Acc1 = step(Op, View, Acc), erlang:yield(), Acc1 end,
                             S#a{fails = [], raced = 0}, Ops),
            Coord ! {done, self(), Go, lists:reverse(S1#a.fails), S1#a.raced},
            actor_loop(Coord, S1#a{fails = []});
        {final, Ref, View} ->
            S1 = final(View, S),
            Models = maps:map(fun(_, M) -> maps:remove(versions, M) end, S1#a.mems),
            Coord ! {model, self(), Ref, lists:reverse(S1#a.fails), Models}
    end.

base(#a{i = I}) -> ?FIRST + I * ?STRIDE.
range_start(S) -> base(S) + ?ROFF.
slot_pos(S, K) -> base(S) + 8 * K.

mem(S, Mem) -> maps:get(Mem, S#a.mems, fresh()).
put_mem(S, Mem, M) -> S#a{mems = maps:put(Mem, M, S#a.mems)}.

%% Checks Got against Expected, honouring `closed': a handle closed before the round is
%% closed for every call; one closed during the round may answer closed from some point on.
%% Returns {applied | closed, S}: `applied' when the call took effect as expected.
expect(Op, {I, _, _, _, KnownClosed}, Expected, Got, S = #a{seen = Seen}) ->
    SeenClosed = KnownClosed orelse maps:get(I, Seen, false),
    case Got of
        {error, closed} ->
            %% `raced': closed by the chaos process while this round was running
            Raced = case SeenClosed of false -> 1; true -> 0 end,
            {closed, S#a{seen = maps:put(I, true, Seen), raced = S#a.raced + Raced}};
        _ when SeenClosed ->
            {closed, flunk(S, {after_closed, I, Op, expected, {error, closed}, got, Got})};
        Expected ->
            {applied, S};
        _ ->
            {closed, flunk(S, {I, Op, expected, Expected, got, Got})}
    end.

flunk(S = #a{fails = F, i = Me}, What) -> S#a{fails = [{actor, Me, What} | F]}.

ro_or(RO, Normal) -> case RO of true -> {error, eacces}; false -> Normal end.

write_model(S, Mem, Off, Data) ->
    M = #{bytes := B, versions := Vs} = mem(S, Mem),
    <<Pre:Off/binary, _:(byte_size(Data))/binary, Post/binary>> = B,
    B1 = <<Pre/binary, Data/binary, Post/binary>>,
    V = S#a.vsn + 1,
    put_mem(S#a{vsn = V}, Mem, M#{bytes := B1, versions := [{V, B1} | Vs]}).

step(yield, _View, S) -> erlang:yield(), S;
step(check_bins, _View, S) -> check_bins(S);
step(Op, View, S) ->
    Sel = element(2, Op),
    HV = lists:nth(1 + Sel rem length(View), View),
    bump_local(element(1, Op)),
    op(Op, HV, S).

bump_local(_) -> ok.

op({pread, _, Off, Len0}, HV = {_, H, Mem, _, _}, S) ->
    Len = min(Len0, ?RLEN - Off),
    #{bytes := B} = mem(S, Mem),
    Exp = case Len of 0 -> eof; _ -> {ok, binary:part(B, Off, Len)} end,
    {_, S1} = expect(pread, HV, Exp, emmap:pread(H, range_start(S) + Off, Len), S),
    S1;
op({pread_keep, _, Off, Len0}, HV = {I, H, Mem, _, _}, S) ->
    Len = max(1, min(Len0, ?RLEN - Off)),
    #{bytes := B} = mem(S, Mem),
    Got = emmap:pread(H, range_start(S) + Off, Len),
    case expect(pread_keep, HV, {ok, binary:part(B, Off, Len)}, Got, S) of
        {applied, S1} ->
            {ok, Bin} = Got,
            S1#a{bins = [{I, Mem, Off, Len, S#a.vsn, Bin} | lists:sublist(S1#a.bins, 30)]};
        {closed, S1} -> S1
    end;
op({pwrite, _, Off, Data0, Form}, HV = {_, H, Mem, RO, _}, S) ->
    Data = binary:part(Data0, 0, min(byte_size(Data0), ?RLEN - Off)),
    Arg = case Form of
              bin -> Data;
              iolist -> [binary:part(Data, 0, byte_size(Data) div 2),
                         binary_to_list(binary:part(Data, byte_size(Data) div 2,
                                                    byte_size(Data) - byte_size(Data) div 2))]
          end,
    case expect(pwrite, HV, ro_or(RO, ok), emmap:pwrite(H, range_start(S) + Off, Arg), S) of
        {applied, S1} when not RO -> write_model(S1, Mem, Off, Data);
        {_, S1} -> S1
    end;
op({pwrite_list, _, Pairs0}, HV = {_, H, Mem, RO, _}, S) ->
    Pairs = [{Off, binary:part(D, 0, min(byte_size(D), ?RLEN - Off))} || {Off, D} <- Pairs0],
    Exp = case {RO, Pairs} of {true, [_ | _]} -> {error, {0, eacces}}; _ -> ok end,
    Got = emmap:pwrite(H, [{range_start(S) + Off, D} || {Off, D} <- Pairs]),
    {I, _, _, _, KnownClosed} = HV,
    SeenClosed = KnownClosed orelse maps:get(I, S#a.seen, false),
    case Got of
        {error, {N, closed}} when N > 0, SeenClosed ->
            flunk(S, {after_closed, I, pwrite_list, N, writes_done});
        {error, {N, closed}} when N > 0 ->
            %% closed in the middle: the first N writes happened
            {_, S1} = expect(pwrite_list, HV, Exp, {error, closed}, S),
            lists:foldl(fun({Off, D}, Acc) -> write_model(Acc, Mem, Off, D) end, S1,
                        lists:sublist(Pairs, N));
        {error, {0, closed}} ->
            {_, S1} = expect(pwrite_list, HV, Exp, {error, closed}, S),
            S1;
        _ ->
            case expect(pwrite_list, HV, Exp, Got, S) of
                {applied, S1} when not RO ->
                    lists:foldl(fun({Off, D}, Acc) -> write_model(Acc, Mem, Off, D) end, S1, Pairs);
                {_, S1} -> S1
            end
    end;
op({pread_list, _, Locs0}, HV = {_, H, Mem, _, _}, S) ->
    Locs = [{Off, min(L, ?RLEN - Off)} || {Off, L} <- Locs0],
    #{bytes := B} = mem(S, Mem),
    Exp = {ok, [case L of 0 -> eof; _ -> binary:part(B, Off, L) end || {Off, L} <- Locs]},
    Got = emmap:pread(H, [{range_start(S) + Off, L} || {Off, L} <- Locs]),
    {_, S1} = expect(pread_list, HV, Exp, Got, S),
    S1;
op({atomic, _, K, AOp, V}, HV = {_, H, Mem, RO, _}, S) ->
    M = #{slots := Slots} = mem(S, Mem),
    Old = element(K + 1, Slots),
    V1 = to_i64(V),
    New = case AOp of
              add -> wrap(Old + V1);
              sub -> wrap(Old - V1);
              A when A =:= 'band'; A =:= 'and' -> Old band V1;
              A when A =:= 'bor'; A =:= 'or' -> Old bor V1;
              A when A =:= 'bxor'; A =:= 'xor' -> Old bxor V1;
              xchg -> V1
          end,
    case expect({atomic, AOp, V}, HV, ro_or(RO, {ok, Old}),
                emmap:patomic(H, slot_pos(S, K), AOp, V), S) of
        {applied, S1} when not RO -> put_mem(S1, Mem, M#{slots := setelement(K + 1, Slots, New)});
        {_, S1} -> S1
    end;
op({cas, _, K, Hit, New}, HV = {_, H, Mem, RO, _}, S) ->
    M = #{slots := Slots} = mem(S, Mem),
    Cur = element(K + 1, Slots),
    Expected = case Hit of true -> Cur; false -> wrap(Cur + 1) end,
    Exp = ro_or(RO, {Hit, Cur}),
    case expect(cas, HV, Exp, emmap:patomic_cas(H, slot_pos(S, K), Expected, New), S) of
        {applied, S1} when Hit, not RO -> put_mem(S1, Mem, M#{slots := setelement(K + 1, Slots, to_i64(New))});
        {_, S1} -> S1
    end;
op({aread, _, K}, HV = {_, H, Mem, _, _}, S) ->
    #{slots := Slots} = mem(S, Mem),
    {_, S1} = expect(aread, HV, {ok, element(K + 1, Slots)},
                     emmap:patomic_read_integer(H, slot_pos(S, K)), S),
    S1;
op({awrite, _, K, V}, HV = {_, H, Mem, RO, _}, S) ->
    M = #{slots := Slots} = mem(S, Mem),
    case expect(awrite, HV, ro_or(RO, ok), emmap:patomic_write_integer(H, slot_pos(S, K), V), S) of
        {applied, S1} when not RO -> put_mem(S1, Mem, M#{slots := setelement(K + 1, Slots, to_i64(V))});
        {_, S1} -> S1
    end;
op({shared_add, _, V}, HV = {_, H, Mem, RO, _}, S) ->
    Got = emmap:patomic_add(H, 0, V),
    Got1 = case Got of {ok, X} when is_integer(X) -> ok; _ -> Got end,   % old value: racy
    case expect(shared_add, HV, ro_or(RO, ok), Got1, S) of
        {applied, S1} when not RO ->
            M = #{shared := Sum} = mem(S1, Mem),
            put_mem(S1, Mem, M#{shared := Sum + V});
        {_, S1} -> S1
    end;
op({misaligned, _, K, D}, HV = {_, H, _, RO, _}, S) ->
    Pos = slot_pos(S, K) + D,
    {_, S1} = expect(misaligned_add, HV, ro_or(RO, {error, alignment}), emmap:patomic_add(H, Pos, 1), S),
    {_, S2} = expect(misaligned_read, HV, {error, alignment}, emmap:patomic_read_integer(H, Pos), S1),
    S2;
op({wild_pread, _, Pos, Len}, HV = {_, H, _, _, _}, S) ->
    {_, S1} = expect({wild_pread, Pos}, HV, eof, emmap:pread(H, Pos, Len), S),
    S1;
op({wild_write, _, Pos, Len}, HV = {_, H, _, RO, _}, S) ->
    {_, S1} = expect({wild_write, Pos}, HV, ro_or(RO, {error, einval}),
                     emmap:pwrite(H, Pos, binary:copy(<<"W">>, Len)), S),
    S1;
op({wild_atomic, _, Pos}, HV = {_, H, _, RO, _}, S) ->
    {_, S1} = expect({wild_atomic, Pos}, HV, ro_or(RO, {error, einval}), emmap:patomic_add(H, Pos, 1), S),
    {_, S2} = expect({wild_read, Pos}, HV, {error, einval}, emmap:patomic_read_integer(H, Pos), S1),
    S2;
op({flush, _}, HV = {_, H, _, _, _}, S) ->
    {_, S1} = expect(flush, HV, ok, emmap:flush(H), S),
    S1;
op({info, _}, HV = {I, H, _, _, KnownClosed}, S) ->
    Info = emmap:info(H),
    SeenClosed = KnownClosed orelse maps:get(I, S#a.seen, false),
    case Info of
        #{closed := true, size := 0, address := 0} ->
            S#a{seen = maps:put(I, true, S#a.seen)};
        #{closed := false, size := Sz} when not SeenClosed, Sz >= ?SIZE0 -> S;
        _ -> flunk(S, {info, I, HV, Info})
    end;
op({seek, _, K} = Op, HV = {I, H, _, _, _}, S) ->
    case owner(I, S) of
        false -> op({pread, 0, K, 8}, HV, S);
        true ->
            P = range_start(S) + K,
            case expect(Op, HV, {ok, P}, emmap:position(H, P), S) of
                {applied, S1} -> S1#a{pos = maps:put(I, P, S1#a.pos)};
                {closed, S1} -> S1
            end
    end;
op({seq_read, _, N}, HV = {I, H, Mem, _, _}, S) ->
    case {owner(I, S), cursor(I, S)} of
        {false, _} -> op({pread, 0, 0, N}, HV, S);
        {true, none} -> op({seek, 0, 0}, HV, S);
        {true, P} ->
            Off = P - range_start(S),
            Len = min(N, ?RLEN - Off),
            #{bytes := B} = mem(S, Mem),
            Exp = {ok, binary:part(B, Off, Len)},            % Len 0: read(H, 0) is {ok, <<>>}
            case expect({seq_read, P, Len}, HV, Exp, emmap:read(H, Len), S) of
                {applied, S1} -> S1#a{pos = maps:put(I, P + Len, S1#a.pos)};
                {closed, S1} -> S1
            end
    end;
op({seq_write, _, Data0}, HV = {I, H, Mem, RO, _}, S) ->
    case {owner(I, S), cursor(I, S)} of
        {false, _} -> op({pwrite, 0, 0, Data0, bin}, HV, S);
        {true, none} -> op({seek, 0, 0}, HV, S);
        {true, P} ->
            Off = P - range_start(S),
            Data = binary:part(Data0, 0, min(byte_size(Data0), ?RLEN - Off)),
            case expect({seq_write, P}, HV, ro_or(RO, ok), emmap:write(H, Data), S) of
                {applied, S1} when not RO ->
                    S2 = write_model(S1, Mem, Off, Data),
                    S2#a{pos = maps:put(I, P + byte_size(Data), S2#a.pos)};
                {_, S1} -> S1
            end
    end.

owner(I, #a{i = Me, n = N}) -> I rem N =:= Me.

%% The position, when it is known to be inside the actor's range.
cursor(I, S) ->
    case maps:get(I, S#a.pos, none) of
        P when is_integer(P), P >= 0 -> P;
        _ -> none
    end.

%% Kept binaries: right length; copy: the bytes at read time; direct on a shared file:
%% the latest bytes; other direct: a version written at or after the read.
check_bins(S = #a{bins = Bins, cfg = #{mode := Mode, backing := B}}) ->
    lists:foldl(
      fun({I, Mem, Off, Len, V0, Bin}, Acc) ->
              #{bytes := Latest, versions := Vs} = mem(Acc, Mem),
              All = [{0, <<0:(?RLEN * 8)>>} | lists:reverse(Vs)],
              AtRead = lists:last([X || {V, X} <- All, V =< V0]),
              Since = [AtRead | [X || {V, X} <- All, V > V0]],
              Slice = fun(X) -> binary:part(X, Off, Len) end,
              Ok = byte_size(Bin) =:= Len andalso
                  case {Mode, B} of
                      {copy, _} -> Bin =:= Slice(AtRead);
                      {direct, shared_file} -> Bin =:= Slice(Latest);
                      {direct, _} -> lists:member(Bin, [Slice(X) || X <- Since])
                  end,
              case Ok of
                  true -> Acc;
                  false -> flunk(Acc, {kept_binary, I, Mode, B, Off, Len, Bin,
                                       at_read, Slice(AtRead), latest, Slice(Latest)})
              end
      end, S, Bins).

%% Every actor, every handle: closed ones answer closed; open ones hold the model.
final(View, S) ->
    S1 = check_bins(S),
    lists:foldl(
      fun(HV = {I, H, Mem, _, Closed}, Acc) ->
              #{bytes := B, slots := Slots} = mem(Acc, Mem),
              R1 = emmap:pread(H, range_start(Acc), ?RLEN),
              R2 = [emmap:patomic_read_integer(H, slot_pos(Acc, K)) || K <- lists:seq(0, ?SLOTS - 1)],
              case Closed of
                  true ->
                      case [R || R <- [R1 | R2], R =/= {error, closed}] of
                          [] -> Acc;
                          Bad -> flunk(Acc, {final_closed, I, Bad})
                      end;
                  false ->
                      Want = [{ok, B} | [{ok, V} || V <- tuple_to_list(Slots)]],
                      case [R1 | R2] of
                          Want -> Acc;
                          Got -> flunk(Acc, {final_open, I, HV, want, Want, got, Got})
                      end
              end
      end, S1, View).
