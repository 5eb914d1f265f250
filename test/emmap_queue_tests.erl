%%% Tests of emmap_queue: byte compatibility with the documented file format (fixtures
%%% built by hand, files parsed by hand), the container API, corrupt files, growth, a
%%% proper_statem model, the gen_server under 8 concurrent clients, kill -9 of a VM in the
%%% middle of pushes and pops, and the README example.
-module(emmap_queue_tests).
-behaviour(proper_statem).

-include_lib("eunit/include/eunit.hrl").
-include("emmap_proper.hrl").

-import(emmap_test_lib, [tmp_path/1, with_file/2]).
-import(proper_types, [range/2, elements/1, exactly/1, frequency/1, boolean/0]).

%% proper_statem callbacks and commands
-export([initial_state/0, command/1, precondition/2, postcondition/3, next_state/3]).
-export([do_push/2, do_pop/1, do_try_pop/2, do_peek_front/0, do_peek_back/0, do_peek/2,
         do_pop_fold/2, do_length/0, do_purge/0, do_erase/0, do_reopen/0]).
-export([prop_queue/0, config_gen/0]).
%% body of the OS process killed by the crash test
-export([crash_child/3]).

-define(KEY, '$emmap_queue_tests').
-define(MAX, 16#FFFFFFFF).

%%%===========================================================================
%%% Utilities
%%%===========================================================================

%% Runs Fun(Q, File) on a new queue, then closes it and removes the file.
with_queue(Size, Opts, Fun) ->
    F = tmp_path("queue"),
    {ok, Q} = emmap_queue:open(F, Size, Opts),
    try Fun(Q, F)
    after
        emmap_queue:close(Q),
        file:delete(F)
    end.

meta(S, H, T, N) -> #{size => S, head => H, tail => T, next_tail => N}.

%% The format, written down again from the spec (formats.md), independently of the
%% module: a message frame, an encoded term, a whole file.
spec_enc(Term) -> spec_enc(Term, 0).
spec_enc(Term, Level) -> term_to_binary(Term, [{compressed, Level}, {minor_version, 2}]).

spec_frame(Bin) ->
    Sz0 = byte_size(Bin) + 8,
    Pad = Sz0 rem 8,
    Sz = Sz0 + Pad,
    <<Sz:32, Bin/binary, 0:(Pad * 8), Sz:32>>.

spec_file(Size, Head, Tail, Next, Body) ->
    Fill = Size - 16 - byte_size(Body),
    <<Size:32, Head:32, Tail:32, Next:32, Body/binary, 0:(Fill * 8)>>.

%% Parses a queue file by hand: {Size, Head, Tail, NextTail, [{Offset, Bin}]}, where each
%% Bin is the term's encoding (padding checked to be zeros, both sizes checked equal).
parse(Bytes) ->
    <<Size:32, Head:32, Tail:32, Next:32, _/binary>> = Bytes,
    {Size, Head, Tail, Next, walk(Bytes, Head, Tail)}.

walk(_B, T, T) ->
    [];
walk(B, Pos, T) ->
    <<_:Pos/binary, Sz:32, _/binary>> = B,
    Len = Sz - 8,
    <<_:Pos/binary, Sz:32, Body:Len/binary, Sz:32, _/binary>> = B,
    %% The term's length L is the one with L + 8 + (L + 8) rem 8 = Sz whose bytes decode
    %% exactly; the rest of Body is padding.
    {_, L} = binary_to_term(Body, [used]),
    ?assertEqual(Sz, L + 8 + (L + 8) rem 8),
    <<Bin:L/binary, Pad/binary>> = Body,
    ?assertEqual(<<0:(byte_size(Pad) * 8)>>, Pad),
    [{Pos, Bin} | walk(B, Pos + Sz, T)].

all(Q) ->
    case emmap_queue:peek(Q, [], fun(T, A) -> {cont, [T | A]} end) of
        L when is_list(L) -> lists:reverse(L);
        Other -> Other
    end.

%%%===========================================================================
%%% Byte compatibility
%%%===========================================================================

push_a_metadata_test() ->
    with_queue(1024, [], fun(Q, _) ->
        ?assertEqual(meta(1024, 16, 16, 16), emmap_queue:metadata(Q)),
        ok = emmap_queue:push(Q, a),
        ?assertEqual(meta(1024, 16, 32, 32), emmap_queue:metadata(Q))
    end).

six_pushes_header_and_bytes_test() ->
    %% By hand: `a' encodes as <<131,119,1,$a>> (4 bytes): Sz0 = 12, Pad = 4, Sz = 16;
    %% `1' as <<131,97,1>> (3 bytes): Sz0 = 11, Pad = 3, Sz = 14.
    %% 16 + 3 * 16 + 3 * 14 = 106.
    ?assertEqual(<<131, 119, 1, $a>>, spec_enc(a)),
    ?assertEqual(<<131, 97, 1>>, spec_enc(1)),
    Atom = fun(C) -> <<16:32, 131, 119, 1, C, 0:32, 16:32>> end,
    Int = fun(I) -> <<14:32, 131, 97, I, 0:24, 14:32>> end,
    Body = <<(Atom($a))/binary, (Atom($b))/binary, (Atom($c))/binary,
             (Int(1))/binary, (Int(2))/binary, (Int(3))/binary>>,
    ?assertEqual(90, byte_size(Body)),
    with_queue(1024, [], fun(Q, F) ->
        [ok = emmap_queue:push(Q, T) || T <- [a, b, c, 1, 2, 3]],
        ?assertEqual(meta(1024, 16, 106, 106), emmap_queue:metadata(Q)),
        ?assertEqual(6, emmap_queue:length(Q)),
        %% The file itself, byte for byte.
        ?assertEqual({ok, spec_file(1024, 16, 106, 106, Body)}, file:read_file(F))
    end).

%% Files written by hand from the format description open and pop the same terms.
hand_built_fixture_test() ->
    Big = binary:copy(<<"fixture ">>, 300),
    Terms = [a, 1, {hello, <<"world">>, [1, 2.5, "str"]}, <<>>, [], Big, -123456789012345,
             #{k => v}],
    Bins = [spec_enc(T) || T <- lists:droplast(Terms)] ++ [spec_enc(lists:last(Terms), 9)],
    Body = << <<(spec_frame(B))/binary>> || B <- Bins >>,
    Tail = 16 + byte_size(Body),
    with_file(spec_file(4096, 16, Tail, Tail, Body), fun(F) ->
        {ok, Q} = emmap_queue:open(F, 0, []),
        ?assertEqual(meta(4096, 16, Tail, Tail), emmap_queue:metadata(Q)),
        ?assertEqual(length(Terms), emmap_queue:length(Q)),
        ?assertEqual(lists:last(Terms), emmap_queue:peek_back(Q)),
        ?assertEqual(Terms, all(Q)),
        ?assertEqual(lists:reverse(Terms), emmap_queue:rpeek(Q, [], fun(T, A) -> {cont, A ++ [T]} end)),
        ?assertEqual(Terms, [emmap_queue:pop_and_purge(Q) || _ <- Terms]),
        ?assertEqual(nil, emmap_queue:pop(Q)),
        ?assertEqual(meta(4096, 16, 16, 16), emmap_queue:metadata(Q)),
        ok = emmap_queue:close(Q),
        {ok, Bytes} = file:read_file(F),
        ?assertEqual(<<4096:32, 16:32, 16:32, 16:32>>, binary:part(Bytes, 0, 16))
    end).

%% A file as a crash leaves it: some messages popped (Head > 16), a push interrupted
%% after writing NextTail and half its message. Opening drops the half message.
fixture_with_popped_prefix_and_interrupted_push_test() ->
    [F1, F2, F3] = [spec_frame(spec_enc(T)) || T <- [gone, {kept, 1}, {kept, 2}]],
    Half = binary:part(spec_frame(spec_enc({half, binary:copy(<<7>>, 100)})), 0, 50),
    Head = 16 + byte_size(F1),
    Tail = Head + byte_size(F2) + byte_size(F3),
    Next = Tail + 120,
    with_file(spec_file(512, Head, Tail, Next, <<F1/binary, F2/binary, F3/binary, Half/binary>>),
              fun(F) ->
        {ok, Q} = emmap_queue:open(F, 0, []),
        ?assertEqual(meta(512, Head, Tail, Tail), emmap_queue:metadata(Q)),
        {ok, <<_:12/binary, Next1:32>>} = read_head(F, 16),
        ?assertEqual(Tail, Next1),
        ?assertEqual([{kept, 1}, {kept, 2}], all(Q)),
        %% The next push goes where the half message was.
        ok = emmap_queue:push(Q, new),
        ?assertEqual([{kept, 1}, {kept, 2}, new], all(Q)),
        ?assertEqual({kept, 1}, emmap_queue:pop(Q)),
        ok = emmap_queue:close(Q)
    end).

read_head(F, N) ->
    {ok, Fd} = file:open(F, [read, raw, binary]),
    try file:pread(Fd, 0, N) after file:close(Fd) end.

%% What push writes parses by hand into the pushed terms, at every compression level.
parse_what_push_wrote_test() ->
    Terms = [{I, binary:copy(<<"abc">>, I * 40), lists:seq(1, I)} || I <- lists:seq(0, 9)],
    with_queue(256, [], fun(Q, F) ->
        [ok = emmap_queue:push(Q, T, L) || {T, L} <- lists:zip(Terms, lists:seq(0, 9))],
        ok = emmap_queue:push(Q, last),
        ok = emmap_queue:flush(Q),
        {ok, Bytes} = file:read_file(F),
        {Size, Head, Tail, Next, Frames} = parse(Bytes),
        ?assertEqual(byte_size(Bytes), Size),
        ?assertEqual({16, Tail}, {Head, Next}),
        ?assertEqual(Terms ++ [last], [binary_to_term(B) || {_, B} <- Frames]),
        %% Each encoding is exactly term_to_binary's at the level used.
        Expected = [spec_enc(T, L) || {T, L} <- lists:zip(Terms, lists:seq(0, 9))]
                   ++ [spec_enc(last)],
        ?assertEqual(Expected, [B || {_, B} <- Frames]),
        %% Compressed frames are compressed (tag 80), and smaller.
        [<<131, 80, _/binary>> = B || {_, B} <- lists:sublist(Frames, 3, 8)],
        ?assertEqual(Tail, lists:sum([byte_size(spec_frame(B)) || B <- Expected]) + 16)
    end).

%% The original's own gen_server test, with the same numbers: a 512-byte segment, then
%% {I, Blob} messages of 276 bytes each (Blob is 256 bytes).
original_growth_sequence_test() ->
    F = tmp_path("queue"),
    {ok, Pid} = emmap_queue:start_link(undefined, F, 512, [auto_unlink]),
    try
        ok = emmap_queue:enqueue(Pid, a),
        ok = emmap_queue:enqueue(Pid, b),
        ok = emmap_queue:enqueue(Pid, c),
        ?assertEqual(a, emmap_queue:dequeue(Pid)),
        ?assertEqual(b, emmap_queue:inspect(Pid)),
        ?assertEqual(b, emmap_queue:dequeue(Pid)),
        ?assertError(failed, emmap_queue:try_dequeue(Pid, fun(c) -> erlang:error(failed) end)),
        ?assertEqual(c, emmap_queue:try_dequeue(Pid, fun(c) -> c end)),
        ?assertEqual(nil, emmap_queue:dequeue(Pid)),
        Blob = list_to_binary(string:copies("x", 256)),
        Steps = [{1, 512, 292}, {2, 1024, 568}, {3, 1024, 844}, {4, 2048, 1120}],
        [begin
             ?assertEqual(ok, emmap_queue:enqueue(Pid, {I, Blob})),
             ?assertEqual(meta(S, 16, T, T), emmap_queue:info(Pid))
         end || {I, S, T} <- Steps],
        [begin
             ?assertEqual({I, Blob}, emmap_queue:dequeue(Pid)),
             ?assertEqual(meta(2048, H, 1120, 1120), emmap_queue:info(Pid))
         end || {I, H} <- [{1, 292}, {2, 568}, {3, 844}]],
        %% The last dequeue purges.
        ?assertEqual({4, Blob}, emmap_queue:dequeue(Pid)),
        ?assertEqual(meta(2048, 16, 16, 16), emmap_queue:info(Pid)),
        ?assertEqual({ok, 2048}, {ok, filelib:file_size(F)})
    after
        ok = emmap_queue:stop(Pid)
    end,
    ?assertNot(filelib:is_regular(F)).

%%%===========================================================================
%%% Container API
%%%===========================================================================

pop_peek_and_empty_test() ->
    with_queue(1024, [], fun(Q, _) ->
        ?assertEqual(nil, emmap_queue:pop(Q)),
        ?assertEqual(nil, emmap_queue:pop_and_purge(Q)),
        ?assertEqual(nil, emmap_queue:peek_front(Q)),
        ?assertEqual(nil, emmap_queue:peek_back(Q)),
        ?assertEqual(nil, emmap_queue:try_pop(Q, fun(_) -> erlang:error(not_called) end)),
        ?assertEqual(acc, emmap_queue:peek(Q, acc, fun(_, _) -> erlang:error(not_called) end)),
        ?assertEqual(acc, emmap_queue:pop(Q, acc, fun(_, _) -> erlang:error(not_called) end)),
        ?assert(emmap_queue:is_empty(Q)),
        ?assertEqual(0, emmap_queue:length(Q)),
        [ok = emmap_queue:push(Q, T) || T <- [x, y]],
        ?assertNot(emmap_queue:is_empty(Q)),
        ?assertEqual(x, emmap_queue:peek_front(Q)),
        ?assertEqual(y, emmap_queue:peek_back(Q)),
        %% pop/1 leaves Head at the end; pop_and_purge/1 resets it.
        ?assertEqual(x, emmap_queue:pop(Q)),
        ?assertEqual(y, emmap_queue:pop(Q)),
        ?assertEqual(meta(1024, 48, 48, 48), emmap_queue:metadata(Q)),
        ?assert(emmap_queue:is_empty(Q)),
        ok = emmap_queue:push(Q, z),
        ?assertEqual(meta(1024, 48, 64, 64), emmap_queue:metadata(Q)),
        ?assertEqual(z, emmap_queue:pop_and_purge(Q)),
        ?assertEqual(meta(1024, 16, 16, 16), emmap_queue:metadata(Q))
    end).

try_pop_test() ->
    with_queue(1024, [], fun(Q, _) ->
        [ok = emmap_queue:push(Q, T) || T <- [1, 2]],
        Before = emmap_queue:metadata(Q),
        ?assertError(boom, emmap_queue:try_pop(Q, fun(1) -> erlang:error(boom) end)),
        ?assertThrow(boom, emmap_queue:try_pop(Q, fun(1) -> throw(boom) end)),
        ?assertExit(boom, emmap_queue:try_pop_and_purge(Q, fun(1) -> exit(boom) end)),
        ?assertEqual(Before, emmap_queue:metadata(Q)),
        ?assertEqual(2, emmap_queue:length(Q)),
        ?assertEqual({got, 1}, emmap_queue:try_pop(Q, fun(X) -> {got, X} end)),
        ?assertEqual({got, 2}, emmap_queue:try_pop_and_purge(Q, fun(X) -> {got, X} end)),
        ?assertEqual(meta(1024, 16, 16, 16), emmap_queue:metadata(Q)),
        %% A fun that pushes to the same queue (and makes it grow) is fine.
        ok = emmap_queue:push(Q, first),
        Big = binary:copy(<<1>>, 5000),
        ?assertEqual(first, emmap_queue:try_pop(Q, fun(X) -> ok = emmap_queue:push(Q, Big), X end)),
        ?assertEqual(8192, maps:get(size, emmap_queue:metadata(Q))),
        ?assertEqual([Big], all(Q)),
        %% One that pops from it is not.
        ?assertError({emmap_queue, queue_modified_while_popping},
                     emmap_queue:try_pop(Q, fun(_) -> emmap_queue:pop(Q) end))
    end).

folds_test() ->
    with_queue(64, [], fun(Q, _) ->
        Terms = lists:seq(1, 10),
        [ok = emmap_queue:push(Q, T) || T <- Terms],
        Upto = fun(K) -> fun(T, A) when length(A) + 1 >= K -> {halt, A ++ [T]};
                            (T, A) -> {cont, A ++ [T]}
                         end
               end,
        ?assertEqual(Terms, all(Q)),
        ?assertEqual([1, 2, 3], emmap_queue:peek(Q, [], Upto(3))),
        ?assertEqual([10, 9], emmap_queue:rpeek(Q, [], Upto(2))),
        ?assertEqual(55, emmap_queue:peek(Q, 0, fun(T, A) -> {cont, T + A} end)),
        ?assertError({bad_return_value, oops}, emmap_queue:peek(Q, 0, fun(_, _) -> oops end)),
        ?assertError({bad_return_value, oops}, emmap_queue:rpeek(Q, 0, fun(_, _) -> oops end)),
        ?assertEqual(10, emmap_queue:length(Q)),
        %% pop/3: every term handed to the fun and returned from is gone.
        ?assertEqual([1, 2, 3, 4], emmap_queue:pop(Q, [], Upto(4))),
        ?assertEqual(5, emmap_queue:peek_front(Q)),
        ?assertError(boom, emmap_queue:pop(Q, [], fun(7, _) -> erlang:error(boom);
                                                      (T, A) -> {cont, [T | A]} end)),
        ?assertEqual([7, 8, 9, 10], all(Q)),
        ?assertError({bad_return_value, oops}, emmap_queue:pop(Q, 0, fun(_, _) -> oops end)),
        ?assertEqual(7, emmap_queue:peek_front(Q)),
        ?assertEqual([7, 8, 9, 10], emmap_queue:pop(Q, [], fun(T, A) -> {cont, A ++ [T]} end)),
        ?assert(emmap_queue:is_empty(Q)),
        %% pop/3 does not purge.
        #{head := H, tail := H} = emmap_queue:metadata(Q),
        ?assert(H > 16)
    end).

purge_and_erase_test() ->
    with_queue(1024, [], fun(Q, _) ->
        ?assert(emmap_queue:purge(Q)),
        [ok = emmap_queue:push(Q, T) || T <- [a, b]],
        ?assertNot(emmap_queue:purge(Q)),
        ?assertEqual(meta(1024, 16, 48, 48), emmap_queue:metadata(Q)),
        a = emmap_queue:pop(Q),
        b = emmap_queue:pop(Q),
        ?assertEqual(meta(1024, 48, 48, 48), emmap_queue:metadata(Q)),
        ?assert(emmap_queue:purge(Q)),
        ?assertEqual(meta(1024, 16, 16, 16), emmap_queue:metadata(Q)),
        [ok = emmap_queue:push(Q, T) || T <- [a, b, c]],
        ok = emmap_queue:erase(Q),
        ?assertEqual(meta(1024, 16, 16, 16), emmap_queue:metadata(Q)),
        ?assertEqual(nil, emmap_queue:pop(Q))
    end).

compression_levels_test() ->
    Term = {data, binary:copy(<<"compressible ">>, 2000), lists:seq(1, 500)},
    with_queue(1024, [], fun(Q, _) ->
        Sizes = [begin
                     #{tail := T0} = emmap_queue:metadata(Q),
                     ok = emmap_queue:push(Q, Term, L),
                     #{tail := T1} = emmap_queue:metadata(Q),
                     T1 - T0
                 end || L <- lists:seq(0, 9)],
        [Plain | Compressed] = Sizes,
        ?assertEqual(byte_size(spec_frame(spec_enc(Term))), Plain),
        [?assert(S < Plain div 10) || S <- Compressed],
        ?assertEqual(lists:duplicate(10, Term), [emmap_queue:pop(Q) || _ <- Sizes])
    end).

reopen_keeps_messages_test() ->
    F = tmp_path("queue"),
    {ok, Q} = emmap_queue:open(F, 100, []),
    Terms = [{I, lists:seq(1, I)} || I <- lists:seq(1, 50)],
    [ok = emmap_queue:push(Q, T) || T <- Terms],
    {1, _} = emmap_queue:pop(Q),
    M = emmap_queue:metadata(Q),
    ok = emmap_queue:close(Q),
    %% The Size argument is ignored for an existing file.
    {ok, Q2} = emmap_queue:open(F, 64, []),
    ?assertEqual(M, emmap_queue:metadata(Q2)),
    ?assertEqual(tl(Terms), all(Q2)),
    ok = emmap_queue:close(Q2),
    ok = file:delete(F).

growth_doubles_up_to_max_inc_size_test() ->
    with_queue(1000, [{max_inc_size, 3000}], fun(Q, F) ->
        Sizes = [begin
                     ok = emmap_queue:push(Q, binary:copy(<<I>>, 900)),
                     maps:get(size, emmap_queue:metadata(Q))
                 end || I <- lists:seq(1, 12)],
        %% 1000 -> 2000 (double) -> 4000 (double) -> 7000, 10000, 13000 (by 3000)
        ?assertEqual([1000, 2000, 4000, 4000, 7000, 7000, 7000, 10000, 10000, 10000,
                      13000, 13000], Sizes),
        ?assertEqual(13000, filelib:file_size(F)),
        %% One message larger than several steps grows in one go, by the same rule.
        ok = emmap_queue:push(Q, binary:copy(<<0>>, 20000)),
        ?assertEqual(34000, maps:get(size, emmap_queue:metadata(Q))),
        ?assertEqual([binary:copy(<<I>>, 900) || I <- lists:seq(1, 12)]
                     ++ [binary:copy(<<0>>, 20000)], all(Q))
    end).

fixed_size_full_test() ->
    with_queue(256, [fixed_size], fun(Q, F) ->
        Pushes = fun Loop(N) ->
                         case emmap_queue:push(Q, {N, <<"0123456789">>}) of
                             ok -> Loop(N + 1);
                             {error, full} -> N
                         end
                 end,
        N = Pushes(0),
        ?assert(N > 5),
        Full = emmap_queue:metadata(Q),
        ?assertEqual(256, maps:get(size, Full)),
        ?assertEqual({error, full}, emmap_queue:push(Q, {N, <<"0123456789">>})),
        ?assertEqual({error, full}, emmap_queue:push(Q, binary:copy(<<1>>, 1000))),
        ?assertEqual(Full, emmap_queue:metadata(Q)),
        ?assertEqual(256, filelib:file_size(F)),
        ?assertEqual([{I, <<"0123456789">>} || I <- lists:seq(0, N - 1)], all(Q)),
        %% Popping alone frees nothing (linear segment); draining with purge does.
        {0, _} = emmap_queue:pop(Q),
        ?assertEqual({error, full}, emmap_queue:push(Q, {N, <<"0123456789">>})),
        _ = [emmap_queue:pop_and_purge(Q) || _ <- lists:seq(1, N - 1)],
        ?assertEqual(meta(256, 16, 16, 16), emmap_queue:metadata(Q)),
        ?assertEqual(ok, emmap_queue:push(Q, again))
    end).

bad_arguments_raise_badarg_test() ->
    NotQ = {file_descriptor, prim_file, x},
    [?assertError(badarg, F()) || F <- [
        fun() -> emmap_queue:open("/tmp/x", -1, []) end,
        fun() -> emmap_queue:open("/tmp/x", 1024, not_a_list) end,
        fun() -> emmap_queue:open("/tmp/x", 1024, [read | write]) end,
        fun() -> emmap_queue:open("/tmp/x", size, []) end,
        fun() -> emmap_queue:open({not_a, name}, 1024, []) end,
        fun() -> emmap_queue:open(tmp_path("queue"), 1024, [no_such_option]) end,
        fun() -> emmap_queue:push(NotQ, a) end,
        fun() -> emmap_queue:pop(NotQ) end,
        fun() -> emmap_queue:close(not_a_queue) end,
        fun() -> emmap_queue:metadata(make_ref()) end,
        fun() -> emmap_queue:start_link("name", tmp_path("queue"), 1024, []) end,
        fun() -> emmap_queue:start_link(undefined, {not_a, name}, 1024, []) end,
        fun() -> emmap_queue:start_link(undefined, tmp_path("queue"), -1, []) end,
        fun() -> emmap_queue:start_link(undefined, tmp_path("queue"), 1024, nolist) end
    ]],
    with_queue(1024, [], fun(Q, _) ->
        [?assertError(badarg, F()) || F <- [
            fun() -> emmap_queue:push(Q, a, 10) end,
            fun() -> emmap_queue:push(Q, a, -1) end,
            fun() -> emmap_queue:push(Q, a, best) end,
            fun() -> emmap_queue:try_pop(Q, not_a_fun) end,
            fun() -> emmap_queue:try_pop_and_purge(Q, fun(_, _) -> ok end) end,
            fun() -> emmap_queue:peek(Q, acc, fun(_) -> ok end) end,
            fun() -> emmap_queue:rpeek(Q, acc, undefined) end,
            fun() -> emmap_queue:pop(Q, acc, fun(_) -> ok end) end,
            fun() -> emmap_queue:try_dequeue(self(), not_a_fun) end
        ]],
        ?assertEqual(meta(1024, 16, 16, 16), emmap_queue:metadata(Q))
    end).

closed_queue_answers_closed_test() ->
    F = tmp_path("queue"),
    {ok, Q} = emmap_queue:open(F, 1024, []),
    ok = emmap_queue:push(Q, a),
    ok = emmap_queue:close(Q),
    ok = emmap_queue:close(Q),
    [?assertEqual({error, closed}, R) || R <- [
        emmap_queue:push(Q, b), emmap_queue:pop(Q), emmap_queue:pop_and_purge(Q),
        emmap_queue:try_pop(Q, fun(X) -> X end), emmap_queue:peek_front(Q),
        emmap_queue:peek_back(Q), emmap_queue:peek(Q, [], fun(_, A) -> {cont, A} end),
        emmap_queue:rpeek(Q, [], fun(_, A) -> {cont, A} end),
        emmap_queue:pop(Q, [], fun(_, A) -> {cont, A} end), emmap_queue:is_empty(Q),
        emmap_queue:length(Q), emmap_queue:purge(Q), emmap_queue:erase(Q),
        emmap_queue:metadata(Q), emmap_queue:flush(Q), emmap_queue:sync(Q)]],
    ok = file:delete(F).

open_errors_test() ->
    F = tmp_path("queue"),
    ?assertEqual({error, enoent}, emmap_queue:open(F, 0, [])),
    ?assertEqual({error, einval}, emmap_queue:open(F, 8, [])),
    ?assertEqual({error, einval}, emmap_queue:open(F, 1 bsl 32, [])),
    ?assertNot(filelib:is_file(F)),
    ?assertEqual({error, enoent}, emmap_queue:open("/tmp/no/such/dir/q", 1024, [])),
    ?assertMatch({error, _}, emmap_queue:open("/tmp", 1024, [])),
    %% An existing empty file is a new queue of Size bytes.
    ok = file:write_file(F, <<>>),
    ?assertEqual({error, einval}, emmap_queue:open(F, 0, [])),
    {ok, Q} = emmap_queue:open(F, 300, []),
    ?assertEqual(meta(300, 16, 16, 16), emmap_queue:metadata(Q)),
    ok = emmap_queue:push(Q, a),
    ok = emmap_queue:close(Q),
    %% truncate starts afresh.
    {ok, Q2} = emmap_queue:open(F, 200, [truncate]),
    ?assertEqual(meta(200, 16, 16, 16), emmap_queue:metadata(Q2)),
    ok = emmap_queue:close(Q2),
    ok = file:delete(F).

auto_unlink_and_sync_test() ->
    F = tmp_path("queue"),
    {ok, Q} = emmap_queue:open(F, 1024, [auto_unlink]),
    ok = emmap_queue:push(Q, a),
    ok = emmap_queue:sync(Q),
    ok = emmap_queue:flush(Q),
    ?assert(filelib:is_regular(F)),
    ok = emmap_queue:close(Q),
    ?assertNot(filelib:is_regular(F)).

%%%===========================================================================
%%% Corrupt files and repairs
%%%===========================================================================

corrupt_headers_are_refused_test() ->
    Frame = spec_frame(spec_enc(hello)),           % 24 bytes
    Body = <<Frame/binary, Frame/binary>>,
    Cases = [
        {head_below_16, spec_file(1024, 8, 64, 64, Body)},
        {head_past_tail, spec_file(1024, 64, 40, 40, Body)},
        {tail_past_next_tail, spec_file(1024, 16, 64, 40, Body)},
        {next_tail_past_size, spec_file(1024, 16, 64, 2000, Body)},
        {tail_past_size, spec_file(1024, 16, 2000, 2000, Body)},
        {size_larger_than_file, <<(spec_file(1024, 16, 64, 64, Body))/binary>>},
        {zero_header_with_data, spec_file(1024, 0, 0, 0, Body)},
        {zero_tail_with_data, <<1024:32, 16:32, 0:64, Body/binary, 0:((1024 - 64) * 8)>>},
        {all_ones, binary:copy(<<255>>, 1024)},
        {text, binary:copy(<<"not a queue\n">>, 100)},
        {shorter_than_header, <<0, 0, 4, 0, 0, 0>>},
        {huge_size, spec_file(1024, 16, 64, 64, Body)}
    ],
    [begin
         Bytes = case Name of
                     size_larger_than_file ->
                         <<_:32, Rest/binary>> = B, <<2048:32, Rest/binary>>;
                     huge_size ->
                         <<_:32, Rest/binary>> = B, <<?MAX:32, Rest/binary>>;
                     _ -> B
                 end,
         with_file(Bytes, fun(F) ->
             ?assertEqual({Name, {error, corrupt_header}}, {Name, emmap_queue:open(F, 1024, [])}),
             ?assertEqual({Name, {ok, Bytes}}, {Name, file:read_file(F)})
         end)
     end || {Name, B} <- Cases],
    %% A server on a corrupt file does not start.
    with_file(spec_file(1024, 8, 64, 64, Body), fun(F) ->
        process_flag(trap_exit, true),
        #{level := Level} = logger:get_primary_config(),
        ok = logger:set_primary_config(level, none),       % no crash report in the output
        try
            ?assertEqual({error, corrupt_header}, emmap_queue:start_link(undefined, F, 0, [])),
            receive {'EXIT', _, corrupt_header} -> ok after 1000 -> erlang:error(no_exit) end
        after
            ok = logger:set_primary_config(level, Level),
            process_flag(trap_exit, false)
        end
    end).

repairs_at_open_test() ->
    Frame = spec_frame(spec_enc(hello)),
    Body = <<Frame/binary, Frame/binary>>,
    T = 16 + byte_size(Body),
    Cases = [
        %% growth interrupted after the file grew, before the header said so
        {size_below_file, spec_file(1024, 16, T, T, Body), <<512:32>>, meta(1024, 16, T, T), 2},
        %% push interrupted before its commit
        {next_tail_ahead, spec_file(1024, 16, T, T + 100, Body), <<>>, meta(1024, 16, T, T), 2},
        %% purge interrupted between its two stores (Tail/NextTail written, Head not)
        {purge_half_done, spec_file(1024, T, 16, 16, Body), <<>>, meta(1024, 16, 16, 16), 0},
        %% created, killed before the header was written
        {all_zero, <<0:(1024 * 8)>>, <<>>, meta(1024, 16, 16, 16), 0},
        %% killed between the header's two stores at creation
        {half_header, <<1024:32, 16:32, 0:((1024 - 8) * 8)>>, <<>>, meta(1024, 16, 16, 16), 0}
    ],
    [begin
         Bytes = case Patch of
                     <<>> -> B;
                     <<_/binary>> -> <<_:32, R/binary>> = B, <<Patch/binary, R/binary>>
                 end,
         with_file(Bytes, fun(F) ->
             {ok, Q} = emmap_queue:open(F, 0, []),
             ?assertEqual({Name, Meta}, {Name, emmap_queue:metadata(Q)}),
             ?assertEqual({Name, Len}, {Name, emmap_queue:length(Q)}),
             ?assertEqual({Name, lists:duplicate(Len, hello)}, {Name, all(Q)}),
             ok = emmap_queue:push(Q, more),
             ?assertEqual(more, emmap_queue:peek_back(Q)),
             ok = emmap_queue:close(Q)
         end)
     end || {Name, B, Patch, Meta, Len} <- Cases].

corrupt_frames_test() ->
    Good = spec_frame(spec_enc(hello)),
    Len = byte_size(Good),
    <<_:32, Inner:(Len - 8)/binary, _:32>> = Good,
    Bad = [
        {size_below_8, <<4:32, Inner/binary, 4:32>>},
        {size_zero, <<0:32, Inner/binary, 0:32>>},
        {size_past_tail, <<1000:32, Inner/binary, 1000:32>>},
        {trailer_differs, <<Len:32, Inner/binary, (Len - 8):32>>},
        {size_disagrees_with_term, <<Len:32, 131, 97, 1, 0:((Len - 11) * 8), Len:32>>},
        {not_a_term, <<Len:32, 0:((Len - 8) * 8), Len:32>>},
        {truncated_term, <<Len:32, 131, 104, 3, 97, 1, 0:((Len - 13) * 8), Len:32>>}
    ],
    [begin
         ?assertEqual({Name, Len}, {Name, byte_size(Frame)}),
         %% The bad frame first (pop, peek_front), then one at the back (peek_back).
         Body = <<Frame/binary, Good/binary>>,
         T = 16 + byte_size(Body),
         with_file(spec_file(1024, 16, T, T, Body), fun(F) ->
             {ok, Q} = emmap_queue:open(F, 0, []),
             M = emmap_queue:metadata(Q),
             Err = {error, corrupt_header},
             Fold = fun(X, A) -> {cont, [X | A]} end,
             [?assertEqual({Name, Op, Err}, {Name, Op, R}) || {Op, R} <- [
                 {pop, emmap_queue:pop(Q)},
                 {pop_and_purge, emmap_queue:pop_and_purge(Q)},
                 {try_pop, emmap_queue:try_pop(Q, fun(X) -> X end)},
                 {peek_front, emmap_queue:peek_front(Q)},
                 {peek, emmap_queue:peek(Q, [], Fold)},
                 {pop3, emmap_queue:pop(Q, [], Fold)}]
                 ++ [{length, emmap_queue:length(Q)} || Name =/= size_disagrees_with_term,
                                                       Name =/= not_a_term,
                                                       Name =/= truncated_term,
                                                       Name =/= trailer_differs]],
             ?assertEqual(M, emmap_queue:metadata(Q)),
             ok = emmap_queue:close(Q)
         end),
         Body2 = <<Good/binary, Frame/binary>>,
         with_file(spec_file(1024, 16, T, T, Body2), fun(F) ->
             {ok, Q} = emmap_queue:open(F, 0, []),
             ?assertEqual({Name, hello}, {Name, emmap_queue:peek_front(Q)}),
             ?assertEqual({Name, {error, corrupt_header}}, {Name, emmap_queue:peek_back(Q)}),
             ?assertEqual({Name, {error, corrupt_header}},
                          {Name, emmap_queue:rpeek(Q, [], fun(X, A) -> {cont, [X | A]} end)}),
             ?assertEqual({Name, hello}, {Name, emmap_queue:pop(Q)}),
             ?assertEqual({Name, {error, corrupt_header}}, {Name, emmap_queue:pop(Q)}),
             %% erase/1 makes it usable again.
             ok = emmap_queue:erase(Q),
             ok = emmap_queue:push(Q, fresh),
             ?assertEqual([fresh], all(Q)),
             ok = emmap_queue:close(Q)
         end)
     end || {Name, Frame} <- Bad].

header_corrupted_while_open_test() ->
    with_queue(1024, [], fun(Q, _) ->
        [ok = emmap_queue:push(Q, T) || T <- [a, b, c]],       % frames of 16 bytes: Tail 64
        Err = {error, corrupt_header},
        Fold = fun(X, A) -> {cont, [X | A]} end,
        Ops = #{push => fun() -> emmap_queue:push(Q, x) end,
                pop => fun() -> emmap_queue:pop(Q) end,
                pop_and_purge => fun() -> emmap_queue:pop_and_purge(Q) end,
                try_pop => fun() -> emmap_queue:try_pop(Q, fun(X) -> X end) end,
                pop3 => fun() -> emmap_queue:pop(Q, [], Fold) end,
                peek_front => fun() -> emmap_queue:peek_front(Q) end,
                peek_back => fun() -> emmap_queue:peek_back(Q) end,
                peek => fun() -> emmap_queue:peek(Q, [], Fold) end,
                rpeek => fun() -> emmap_queue:rpeek(Q, [], Fold) end,
                length => fun() -> emmap_queue:length(Q) end,
                is_empty => fun() -> emmap_queue:is_empty(Q) end,
                purge => fun() -> emmap_queue:purge(Q) end},
        All = maps:keys(Ops),
        Cases = [{<<1024:32, 16:32, 2000:32, 2000:32>>, All},    % Tail past Size
                 {<<1024:32, 100:32, 64:32, 64:32>>, All},       % Head past Tail
                 {<<1024:32, 0:32, 64:32, 64:32>>, All},         % Head below 16
                 {<<1024:32, 16:32, 64:32, 60:32>>, All},        % NextTail below Tail
                 {<<16:32, 16:32, 64:32, 64:32>>, All},          % Size below Tail
                 %% The invariant holds but an end is not at a frame boundary: whatever
                 %% reads a frame there says so.
                 {<<1024:32, 17:32, 64:32, 64:32>>,
                  [pop, pop_and_purge, try_pop, pop3, peek_front, peek, rpeek, length]},
                 {<<1024:32, 16:32, 63:32, 63:32>>, [peek_back, peek, rpeek, length]}],
        [begin
             ok = emmap:pwrite(Q, 0, H),
             [?assertEqual({H, Op, Err}, {H, Op, (maps:get(Op, Ops))()}) || Op <- Which],
             ?assertEqual({ok, H}, emmap:pread(Q, 0, 16)),     % nothing was written
             ok = emmap:pwrite(Q, 0, <<1024:32, 16:32, 64:32, 64:32>>),
             ?assertEqual([a, b, c], all(Q))
         end || {H, Which} <- Cases],
        ok = emmap:pwrite(Q, 0, <<1024:32, 100:32, 64:32, 64:32>>),
        ok = emmap_queue:erase(Q),
        ?assertEqual(meta(1024, 16, 16, 16), emmap_queue:metadata(Q)),
        ok = emmap_queue:push(Q, d),
        ?assertEqual([d], all(Q))
    end).

%%%===========================================================================
%%% proper_statem model
%%%===========================================================================

%% The model knows the queue's terms (with their frame sizes) and the header the file
%% must have after every command, growth included.
-record(s, {q = queue:new() :: queue:queue({term(), pos_integer()}),
            head = 16 :: non_neg_integer(),
            tail = 16 :: non_neg_integer(),
            size = 1024 :: pos_integer(),
            fixed = false :: boolean(),
            inc = 64 bsl 20 :: pos_integer(),
            extra = [] :: [atom()]}).                % more emmap options

prop_queue_test_() ->
    {timeout, 120,
     fun() ->
             ?assert(proper:quickcheck(prop_queue(), [{numtests, 500}, {to_file, user}]))
     end}.

prop_queue() ->
    ?FORALL(Init, config_gen(),
            ?FORALL(Cmds, proper_statem:more_commands(3, proper_statem:commands(?MODULE, Init)),
                    run_case(Cmds))).

config_gen() ->
    ?BIND({Size, Fixed, Inc, Extra},
          {frequency([{3, elements([16, 64, 100, 1024])}, {2, range(16, 5000)}]),
           frequency([{4, exactly(false)}, {1, exactly(true)}]),
           elements([64 bsl 20, 300, 4096, 100000]),
           frequency([{4, exactly([])}, {1, elements([[direct], [nolock], [direct, nolock],
                                                      [populate]])}])},
          exactly(#s{size = case Fixed of true -> Size * 8; false -> Size end,
                     fixed = Fixed, inc = Inc, extra = Extra})).

opts(#s{fixed = Fixed, inc = Inc, extra = Extra}) ->
    [{max_inc_size, Inc} | [fixed_size || Fixed]] ++ Extra.

%% The Debian build of PropEr 1.2 calls erlang:get_stacktrace/0 (gone since OTP 23) when a
%% property raises, so exceptions are caught and reported here.
run_case(Cmds) ->
    [{init, Init} | _] = Cmds,
    F = tmp_path("queue"),
    try
        {ok, Q} = emmap_queue:open(F, Init#s.size, opts(Init)),
        put(?KEY, {Q, F, opts(Init)}),
        {History, State, Result} = proper_statem:run_commands(?MODULE, Cmds),
        ?WHENFAIL(io:format(user, "~nFailed: ~P~nState: ~P~nHistory: ~P~n",
                            [Result, 30, State, 30, History, 30]),
                  Result =:= ok)
    catch
        Class:Reason:Stack ->
            io:format(user, "~nException: ~p:~P~n~P~n", [Class, Reason, 30, Stack, 30]),
            false
    after
        case get(?KEY) of
            {Q1, _, _} -> emmap_queue:close(Q1);
            _ -> ok
        end,
        erase(?KEY),
        file:delete(F)
    end.

initial_state() -> #s{}.

command(_S) ->
    frequency([{10, {call, ?MODULE, do_push, [term_gen(), level_gen()]}},
               {4, {call, ?MODULE, do_pop, [boolean()]}},
               {3, {call, ?MODULE, do_try_pop, [boolean(), outcome_gen()]}},
               {1, {call, ?MODULE, do_peek_front, []}},
               {1, {call, ?MODULE, do_peek_back, []}},
               {1, {call, ?MODULE, do_peek, [elements([front, back]), range(1, 5)]}},
               {2, {call, ?MODULE, do_pop_fold, [range(1, 4), boolean()]}},
               {1, {call, ?MODULE, do_length, []}},
               {1, {call, ?MODULE, do_purge, []}},
               {1, {call, ?MODULE, do_erase, []}},
               {2, {call, ?MODULE, do_reopen, []}}]).

%% Terms from a few bytes to 1 MiB encoded (a binary of 1048570 bytes encodes in exactly
%% 1 MiB); big ones rare. (PropEr's range/2 keeps to the low end of a wide range, so the
%% big sizes are listed.)
term_gen() ->
    frequency([{40, proper_types:any()},
               {6, ?BIND(N, range(0, 300), blob(N))},
               {3, ?BIND(N, range(300, 70000), blob(N))},
               {1, ?BIND(N, elements([70000, 131072, 300000, 700000, 1048570]), blob(N))}]).

blob(N) ->
    Pattern = integer_to_binary(N * 7919),
    binary:part(binary:copy(Pattern, N div byte_size(Pattern) + 1), 0, N).

level_gen() -> frequency([{4, exactly(0)}, {1, range(1, 9)}]).

outcome_gen() -> elements([ok, ok, error, throw, exit]).

precondition(_S, _Call) -> true.

%% The frame size of Term at Level, by the spec's rule.
frame_size(Term, Level) ->
    byte_size(spec_frame(spec_enc(Term, Level))).

grow(Cur, _Inc, End) when Cur >= End -> Cur;
grow(Cur, Inc, End) -> grow(Cur + min(Cur, Inc), Inc, End).

next_state(S, _R, {call, _, do_push, [T, L]}) ->
    Sz = frame_size(T, L),
    End = S#s.tail + Sz,
    if
        End =< S#s.size ->
            S#s{q = queue:in({T, Sz}, S#s.q), tail = End};
        S#s.fixed; End > ?MAX ->
            S;
        true ->
            S#s{q = queue:in({T, Sz}, S#s.q), tail = End,
                size = min(?MAX, grow(S#s.size, S#s.inc, End))}
    end;
next_state(S, _R, {call, _, do_pop, [Purge]}) ->
    pop_model(S, Purge);
next_state(S, _R, {call, _, do_try_pop, [Purge, ok]}) ->
    pop_model(S, Purge);
next_state(S, _R, {call, _, do_pop_fold, [K, Raise]}) ->
    N = case Raise andalso queue:len(S#s.q) >= K of
            true -> K - 1;
            false -> min(K, queue:len(S#s.q))
        end,
    lists:foldl(fun(_, S1) -> pop_model(S1, false) end, S, lists:seq(1, N));
next_state(#s{head = H, tail = H} = S, _R, {call, _, do_purge, []}) ->
    S#s{head = 16, tail = 16};
next_state(S, _R, {call, _, do_erase, []}) ->
    S#s{q = queue:new(), head = 16, tail = 16};
next_state(S, _R, _Call) ->
    S.

pop_model(S, Purge) ->
    case queue:out(S#s.q) of
        {empty, _} ->
            S;
        {{value, {_, Sz}}, Q1} ->
            case Purge andalso queue:is_empty(Q1) of
                true -> S#s{q = Q1, head = 16, tail = 16};
                false -> S#s{q = Q1, head = S#s.head + Sz}
            end
    end.

front(S) ->
    case queue:peek(S#s.q) of
        {value, {T, _}} -> T;
        empty -> nil
    end.

terms(S) -> [T || {T, _} <- queue:to_list(S#s.q)].

postcondition(S, Call, {Res, Meta}) ->
    S1 = next_state(S, Res, Call),
    Expected = meta(S1#s.size, S1#s.head, S1#s.tail, S1#s.tail),
    Meta =:= Expected andalso result_ok(S, Call, Res).

result_ok(S, {call, _, do_push, [T, L]}, Res) ->
    Fits = S#s.tail + frame_size(T, L) =< S#s.size,
    case Res of
        ok -> Fits orelse not S#s.fixed;
        {error, full} -> not Fits andalso S#s.fixed
    end;
result_ok(S, {call, _, do_pop, _}, Res) ->
    Res =:= front(S);
result_ok(S, {call, _, do_try_pop, [_, Outcome]}, Res) ->
    case {front(S), Outcome} of
        {nil, _} -> Res =:= nil;
        {T, ok} -> Res =:= {got, T};
        {T, Class} -> Res =:= {raised, Class, T}
    end;
result_ok(S, {call, _, do_peek_front, []}, Res) ->
    Res =:= front(S);
result_ok(S, {call, _, do_peek_back, []}, Res) ->
    case queue:peek_r(S#s.q) of
        {value, {T, _}} -> Res =:= T;
        empty -> Res =:= nil
    end;
result_ok(S, {call, _, do_peek, [front, K]}, Res) ->
    Res =:= lists:sublist(terms(S), K);
result_ok(S, {call, _, do_peek, [back, K]}, Res) ->
    Res =:= lists:sublist(lists:reverse(terms(S)), K);
result_ok(S, {call, _, do_pop_fold, [K, Raise]}, Res) ->
    Ts = terms(S),
    case Raise andalso length(Ts) >= K of
        true -> Res =:= {raised, lists:sublist(Ts, K - 1)};
        false -> Res =:= lists:sublist(Ts, K)
    end;
result_ok(S, {call, _, do_length, []}, Res) ->
    Res =:= {queue:len(S#s.q), queue:is_empty(S#s.q)};
result_ok(S, {call, _, do_purge, []}, Res) ->
    Res =:= (S#s.head =:= S#s.tail);
result_ok(_S, {call, _, do_erase, []}, Res) ->
    Res =:= ok;
result_ok(_S, {call, _, do_reopen, []}, Res) ->
    Res =:= ok.

%% Commands: each returns {Result, metadata after it}.
q() -> element(1, get(?KEY)).

with_meta(Res) -> {Res, emmap_queue:metadata(q())}.

do_push(T, L) -> with_meta(emmap_queue:push(q(), T, L)).

do_pop(false) -> with_meta(emmap_queue:pop(q()));
do_pop(true) -> with_meta(emmap_queue:pop_and_purge(q())).

do_try_pop(Purge, Outcome) ->
    Fun = fun(T) ->
                  case Outcome of
                      ok -> {got, T};
                      error -> erlang:error({no, T});
                      throw -> throw({no, T});
                      exit -> exit({no, T})
                  end
          end,
    Res = try
              case Purge of
                  true -> emmap_queue:try_pop_and_purge(q(), Fun);
                  false -> emmap_queue:try_pop(q(), Fun)
              end
          catch
              Class:{no, T} -> {raised, Class, T}
          end,
    with_meta(Res).

do_peek_front() -> with_meta(emmap_queue:peek_front(q())).

do_peek_back() -> with_meta(emmap_queue:peek_back(q())).

do_peek(Dir, K) ->
    Fun = fun(T, A) when length(A) + 1 >= K -> {halt, A ++ [T]};
             (T, A) -> {cont, A ++ [T]}
          end,
    with_meta(case Dir of
                  front -> emmap_queue:peek(q(), [], Fun);
                  back -> emmap_queue:rpeek(q(), [], Fun)
              end).

do_pop_fold(K, Raise) ->
    Fun = fun(_T, A) when Raise, length(A) + 1 =:= K -> throw({stop, A});
             (T, A) when length(A) + 1 >= K -> {halt, A ++ [T]};
             (T, A) -> {cont, A ++ [T]}
          end,
    with_meta(try emmap_queue:pop(q(), [], Fun)
              catch throw:{stop, A} -> {raised, A}
              end).

do_length() -> with_meta({emmap_queue:length(q()), emmap_queue:is_empty(q())}).

do_purge() -> with_meta(emmap_queue:purge(q())).

do_erase() -> with_meta(emmap_queue:erase(q())).

do_reopen() ->
    {Q, F, Opts} = get(?KEY),
    ok = emmap_queue:close(Q),
    {ok, Q2} = emmap_queue:open(F, 0, Opts),
    put(?KEY, {Q2, F, Opts}),
    with_meta(ok).

%%%===========================================================================
%%% gen_server
%%%===========================================================================

server_test() ->
    F = tmp_path("queue"),
    try server(F) after file:delete(F) end.

server(F) ->
    {ok, Pid} = emmap_queue:start_link(test_queue_server, F, 1024, []),
    ?assertEqual(Pid, whereis(test_queue_server)),
    ?assertEqual({error, {already_started, Pid}},
                 emmap_queue:start_link(test_queue_server, F, 1024, [])),
    ok = emmap_queue:enqueue(test_queue_server, {job, 1}),
    ok = emmap_queue:enqueue(Pid, {job, 2}),
    ?assertEqual({job, 1}, emmap_queue:inspect(Pid)),
    %% The exception from try_dequeue's fun reaches the caller with its class.
    ?assertThrow(later, emmap_queue:try_dequeue(Pid, fun(_) -> throw(later) end)),
    ?assertExit(later, emmap_queue:try_dequeue(Pid, fun(_) -> exit(later) end)),
    ?assertError(later, emmap_queue:try_dequeue(Pid, fun(_) -> erlang:error(later) end)),
    ?assertEqual({job, 1}, emmap_queue:inspect(Pid)),
    ?assertEqual({done, 1}, emmap_queue:try_dequeue(Pid, fun({job, N}) -> {done, N} end)),
    ok = emmap_queue:stop(Pid),
    ?assertEqual(undefined, whereis(test_queue_server)),
    %% The server closed the mapping; a new one finds the message.
    {ok, Pid2} = emmap_queue:start_link({local, test_queue_server}, F, 0, []),
    Sz = byte_size(spec_frame(spec_enc({job, 1}))),
    ?assertEqual(meta(1024, 16 + Sz, 16 + 2 * Sz, 16 + 2 * Sz), emmap_queue:info(Pid2)),
    ?assertEqual({job, 2}, emmap_queue:dequeue(Pid2)),
    ?assertEqual(nil, emmap_queue:dequeue(Pid2)),
    ?assertEqual(nil, emmap_queue:try_dequeue(Pid2, fun(X) -> X end)),
    ?assertEqual(meta(1024, 16, 16, 16), emmap_queue:info(Pid2)),
    %% fixed_size: {error, full} reaches the client.
    ok = emmap_queue:stop(Pid2),
    {ok, Pid3} = emmap_queue:start_link(undefined, F, 0, [fixed_size]),
    ?assertEqual({error, full}, emmap_queue:enqueue(Pid3, binary:copy(<<0>>, 2000))),
    ok = emmap_queue:stop(Pid3).

%% 8 clients push and pop at once through the server; every message comes out exactly
%% once, and each client's messages come out in the order it pushed them.
server_concurrency_test_() ->
    {timeout, 60, fun() -> F = tmp_path("queue"), try server_concurrency(F) after file:delete(F) end end}.

server_concurrency(F) ->
    {ok, Pid} = emmap_queue:start_link(undefined, F, 256, []),
    Clients = 8,
    N = 400,
    Parent = self(),
    %% Funs given to try_dequeue run in the server, one at a time: a monotonic stamp
    %% there records the global order in which messages left the queue.
    Stamp = fun(M) -> {M, erlang:unique_integer([monotonic])} end,
    Ws = [spawn_link(fun() -> client(Pid, Id, N, Stamp, Parent) end)
          || Id <- lists:seq(1, Clients)],
    Got = lists:append([receive {done, W, L} -> L end || W <- Ws]),
    Rest = drain(Pid, Stamp, []),
    All = Got ++ Rest,
    Msgs = [M || {M, _} <- All],
    ?assertEqual(Clients * N, length(Msgs)),
    ?assertEqual(lists:sort([{Id, Seq} || Id <- lists:seq(1, Clients), Seq <- lists:seq(1, N)]),
                 lists:sort(Msgs)),
    Ordered = [M || {M, S} <- lists:keysort(2, All), is_integer(S)],
    [?assertEqual({Id, lists:sort(Seqs)}, {Id, Seqs})
     || Id <- lists:seq(1, Clients), Seqs <- [[S || {I, S} <- Ordered, I =:= Id]]],
    %% (client/5 checked that each consumer saw each producer's messages in order.)
    ?assertEqual(meta(maps:get(size, emmap_queue:info(Pid)), 16, 16, 16), emmap_queue:info(Pid)),
    ok = emmap_queue:stop(Pid).

client(Pid, Id, N, Stamp, Parent) ->
    rand:seed(exsss, {Id, Id * 7, Id * 13}),
    Got = lists:foldl(
            fun(Seq, Acc) ->
                    ok = emmap_queue:enqueue(Pid, {Id, Seq}),
                    case rand:uniform(6) of
                        1 ->
                            %% A failing fun leaves the message where it was.
                            try emmap_queue:try_dequeue(Pid, fun(_) -> throw(not_now) end) of
                                nil -> Acc
                            catch throw:not_now -> Acc
                            end;
                        2 ->
                            case emmap_queue:dequeue(Pid) of
                                nil -> Acc;
                                M -> [{M, unstamped} | Acc]
                            end;
                        R when R =< 4 ->
                            case emmap_queue:try_dequeue(Pid, Stamp) of
                                nil -> Acc;
                                MS -> [MS | Acc]
                            end;
                        _ ->
                            Acc
                    end
            end, [], lists:seq(1, N)),
    Mine = lists:reverse(Got),
    %% What this client dequeued, per producer, is in order.
    [true = lists:sort(Seqs) =:= Seqs
     || P <- lists:seq(1, 8), Seqs <- [[S || {{I, S}, _} <- Mine, I =:= P]]],
    Parent ! {done, self(), Mine}.

drain(Pid, Stamp, Acc) ->
    case emmap_queue:try_dequeue(Pid, Stamp) of
        nil -> lists:reverse(Acc);
        MS -> drain(Pid, Stamp, [MS | Acc])
    end.

server_closes_queue_when_parent_dies_test() ->
    F = tmp_path("queue"),
    Self = self(),
    Owner = spawn(fun() ->
                          {ok, Pid} = emmap_queue:start_link(undefined, F, 1024, [auto_unlink]),
                          ok = emmap_queue:enqueue(Pid, a),
                          Self ! {server, Pid},
                          receive stop -> exit(shutdown) end
                  end),
    Pid = receive {server, P} -> P end,
    MRef = monitor(process, Pid),
    ?assert(filelib:is_regular(F)),
    Owner ! stop,
    receive {'DOWN', MRef, process, Pid, _} -> ok end,
    %% terminate/2 closed the mapping, and auto_unlink removed the file.
    ?assertNot(filelib:is_regular(F)).

%%%===========================================================================
%%% Several processes on one handle
%%%===========================================================================

%% 4 producers and 4 consumers share one handle (no server): every term comes out exactly
%% once, each consumer sees each producer's terms in push order, and the file is a valid,
%% empty queue afterwards. The segment starts small, so pushes grow it (on dirty
%% schedulers) while others pop. Consumers mix pop/1, pop_and_purge/1, try_pop/2 and
%% pop/3; a fun-based pop whose term another process took meanwhile raises, as
%% documented, and counts as nothing taken.
shared_handle_test_() ->
    {timeout, 120, fun() -> with_queue(256, [], fun shared_handle/2) end}.

shared_handle(Q, F) ->
    Producers = 4,
    N = 3000,
    Parent = self(),
    Ps = [spawn_link(fun() ->
                             [ok = emmap_queue:push(Q, {P, I, binary:copy(<<P>>, I rem 97)})
                              || I <- lists:seq(1, N)],
                             Parent ! {pushed, self()}
                     end) || P <- lists:seq(1, Producers)],
    Cs = [spawn_link(fun() -> rand:seed(exsss, {C, 1, 2}), consume(Q, Parent, []) end)
          || C <- lists:seq(1, 4)],
    [receive {pushed, P} -> ok end || P <- Ps],
    [C ! stop || C <- Cs],
    Got = [receive {consumed, C, L} -> L end || C <- Cs],
    Rest = fun Drain(Acc) ->
                   case emmap_queue:pop_and_purge(Q) of
                       nil -> lists:reverse(Acc);
                       T -> Drain([T | Acc])
                   end
           end([]),
    All = lists:append(Got) ++ Rest,
    ?debugFmt("shared handle: consumers took ~w, ~w were left", [[length(L) || L <- Got],
                                                                length(Rest)]),
    ?assert(length(Rest) < Producers * N),
    Keys = [{P, I} || {P, I, _} <- All],
    ?assertEqual(Producers * N, length(Keys)),
    ?assertEqual([{P, I} || P <- lists:seq(1, Producers), I <- lists:seq(1, N)],
                 lists:sort(Keys)),
    [?assertEqual(binary:copy(<<P>>, I rem 97), B) || {P, I, B} <- All],
    [?assertEqual(lists:sort(Is), Is)
     || L <- Got ++ [Rest], P <- lists:seq(1, Producers),
        Is <- [[I || {P1, I, _} <- L, P1 =:= P]]],
    %% Empty (the last pop may not have purged); purging resets the header.
    ?assert(emmap_queue:is_empty(Q)),
    ?assert(emmap_queue:purge(Q)),
    #{size := S} = emmap_queue:metadata(Q),
    ?assertEqual(meta(S, 16, 16, 16), emmap_queue:metadata(Q)),
    ?assert(S > 256),
    {ok, Q2} = emmap_queue:open(F, 0, []),
    ?assertEqual(meta(S, 16, 16, 16), emmap_queue:metadata(Q2)),
    ok = emmap_queue:close(Q2).

consume(Q, Parent, Acc) ->
    receive
        stop -> Parent ! {consumed, self(), lists:reverse(Acc)}
    after 0 ->
        Taken = case rand:uniform(5) of
                    1 -> [emmap_queue:pop(Q)];
                    2 -> [emmap_queue:pop_and_purge(Q)];
                    3 -> try [emmap_queue:try_pop(Q, fun(T) -> T end)]
                         catch error:{emmap_queue, queue_modified_while_popping} -> []
                         end;
                    4 -> try emmap_queue:pop(Q, [], fun(T, A) -> {halt, [T | A]} end)
                         catch error:{emmap_queue, queue_modified_while_popping} -> []
                         end;
                    5 -> _ = emmap_queue:peek_front(Q), _ = emmap_queue:length(Q), []
                end,
        consume(Q, Parent, [T || T <- Taken, T =/= nil] ++ Acc)
    end.

%%%===========================================================================
%%% Long operations leave the normal schedulers free
%%%===========================================================================

%% A term of 48 MiB is pushed into a small queue (the file grows) and popped again, with a
%% single normal scheduler online: the copies and the growth run on a dirty I/O scheduler
%% (which is busy for much of each call), and a bystander process keeps getting answers.
huge_terms_run_on_dirty_schedulers_test_() ->
    {timeout, 120, fun() ->
        Big = {big, binary:copy(<<"0123456789abcdef">>, 3 * 1024 * 1024)},
        with_queue(4096, [], fun(Q, _) ->
            {ok, MaxPush, DirtyPush} =
                emmap_test_lib:off_normal_schedulers(fun() -> emmap_queue:push(Q, Big) end),
            {Big, MaxPop, DirtyPop} =
                emmap_test_lib:off_normal_schedulers(fun() -> emmap_queue:pop_and_purge(Q) end),
            ?debugFmt("48 MiB push/pop: longest bystander round trip ~w/~w ms, "
                      "dirty I/O busy ~.2f/~.2f of the call", [MaxPush, MaxPop, DirtyPush, DirtyPop]),
            ?assert(DirtyPush > 0.3),
            ?assert(DirtyPop > 0.3),
            ?assert(MaxPush < 500),
            ?assert(MaxPop < 500),
            ?assertEqual(meta(maps:get(size, emmap_queue:metadata(Q)), 16, 16, 16),
                         emmap_queue:metadata(Q))
        end)
    end}.

%%%===========================================================================
%%% kill -9 in the middle of pushes and pops
%%%===========================================================================

%% A separate VM pushes (and in `mixed' mode also pops) and acknowledges each call after
%% it returns; it is killed with SIGKILL at a random moment. Reopening must show every
%% acknowledged push, no acknowledged pop, nothing half written, everything in order.
%% Acknowledgements go either to stdout (a line per call) or, much faster, to a counters
%% file (emmap:set_counter/3): then most of the child's time is spent inside push and
%% pop, and the kill often lands in the middle of one (or of a growth).
kill_9_test_() ->
    {timeout, 60,
     fun() ->
             rand:seed(exsss),
             [crash_round(Mode, Ack)
              || _ <- [1, 2], Ack <- [stdout, counters], Mode <- [push, mixed]]
     end}.

%% The payload of message N: checkable, of varying size (the segment grows meanwhile).
payload(N) ->
    {seq, N, binary:copy(<<(N rem 251)>>, (N * 7919) rem 600)}.

%% @private Runs in the child VM.
crash_child(File, Mode, Ack) ->
    io:format("pid ~s~n", [os:getpid()]),
    {ok, Q} = emmap_queue:open(File, 1024, []),
    A = case Ack of
            stdout -> stdout;
            {counters, AckFile} -> emmap:open_counters(AckFile, 2)
        end,
    child_loop(Q, 1, Mode, A).

child_loop(Q, N, Mode, A) ->
    ok = emmap_queue:push(Q, payload(N)),
    ack(A, push, N),
    Pops = case Mode of
               push -> 0;
               mixed when N rem 40 =:= 0 -> all;       % drain: exercises the purge
               mixed when N rem 5 =:= 0 -> 3;
               mixed -> 0
           end,
    child_pop(Q, Pops, A),
    child_loop(Q, N + 1, Mode, A).

child_pop(_Q, 0, _A) ->
    ok;
child_pop(Q, K, A) ->
    case emmap_queue:pop_and_purge(Q) of
        nil ->
            ok;
        {seq, S, _} = M ->
            M = payload(S),
            ack(A, pop, S),
            child_pop(Q, case K of all -> all; _ -> K - 1 end, A)
    end.

ack(stdout, push, N) -> io:format("p ~w~n", [N]);
ack(stdout, pop, S) -> io:format("o ~w~n", [S]);
ack(C, push, 1) -> _ = emmap:set_counter(C, 0, 1), io:format("p 1~n");
ack(C, push, N) -> _ = emmap:set_counter(C, 0, N), ok;
ack(C, pop, S) -> _ = emmap:set_counter(C, 1, S), ok.

crash_round(Mode, Ack) ->
    F = tmp_path("queue"),
    AckFile = F ++ ".acks",
    ChildAck = case Ack of
                   stdout -> stdout;
                   counters -> {counters, AckFile}
               end,
    {Port, _} = Child = emmap_test_lib:start_child(?MODULE, crash_child, [F, Mode, ChildAck],
                                                   #{line => 256, stderr => own}),
    try
        OsPid = receive {Port, {data, {eol, <<"pid ", P/binary>>}}} -> binary_to_list(P)
                after 20000 -> erlang:error(child_did_not_start)
                end,
        %% Wait for the first acknowledgement, keep reading for a random while (the
        %% child must never block on a full pipe), then kill it.
        Acks0 = collect(Port, {0, []}, first_ack),
        Wait = case Ack of stdout -> 400; counters -> 150 end,
        Acks1 = collect(Port, Acks0, erlang:monotonic_time(millisecond) + rand:uniform(Wait)),
        _ = os:cmd("kill -9 " ++ OsPid),
        {Pushed, Popped} = case collect(Port, Acks1, exit) of
                               {Ps, Os} when Ack =:= stdout ->
                                   {Ps, lists:reverse(Os)};
                               {_, []} ->
                                   C = emmap:open_counters(AckFile),
                                   Acked = {emmap:read_counter(C, 0), emmap:read_counter(C, 1)},
                                   ok = emmap:close_counters(C),
                                   {element(1, Acked), lists:seq(1, element(2, Acked))}
                           end,
        check_after_crash(F, {Mode, Ack}, Pushed, Popped)
    after
        emmap_test_lib:stop_child(Child),
        file:delete(F),
        file:delete(AckFile)
    end.

%% Acknowledgements: {highest push acknowledged, pops acknowledged (newest first)}.
collect(Port, Acks, Until) when is_integer(Until) ->
    case Until - erlang:monotonic_time(millisecond) of
        Left when Left =< 0 -> Acks;
        Left -> collect(Port, Acks, Until, Left)
    end;
collect(Port, Acks, Until) ->
    collect(Port, Acks, Until, 20000).

collect(Port, Acks, Until, Timeout) ->
    receive
        {Port, {data, {eol, <<"p ", N/binary>>}}} ->
            {_, Os} = Acks,
            Acks1 = {binary_to_integer(N), Os},
            case Until of
                first_ack -> Acks1;
                _ -> collect(Port, Acks1, Until)
            end;
        {Port, {data, {eol, <<"o ", N/binary>>}}} ->
            {Ps, Os} = Acks,
            collect(Port, {Ps, [binary_to_integer(N) | Os]}, Until);
        {Port, {data, _Partial}} ->
            collect(Port, Acks, Until);
        {Port, {exit_status, S}} when Until =:= exit ->
            ?assertEqual(128 + 9, S),
            Acks;
        {Port, {exit_status, S}} ->
            erlang:error({child_exited, S})
    after Timeout ->
            case Until of
                exit -> erlang:error(child_not_killed);
                first_ack -> erlang:error(no_ack);
                _ -> Acks
            end
    end.

check_after_crash(F, Mode, Pushed, Popped) ->
    %% Pops are acknowledged in order: 1, 2, 3, ...
    ?assertEqual(lists:seq(1, length(Popped)), Popped),
    LastPopped = length(Popped),
    {ok, Q} = emmap_queue:open(F, 0, []),
    #{tail := T, next_tail := T, head := H, size := S} = emmap_queue:metadata(Q),
    ?assertEqual(S, filelib:file_size(F)),
    ?assert(H =< T),
    Content = all(Q),
    %% Every message intact...
    ?assertEqual(Content, [payload(N) || {seq, N, _} <- Content]),
    Seqs = [N || {seq, N, _} <- Content],
    Info = {Mode, {acked_pushes, Pushed}, {acked_pops, LastPopped},
            {found, length(Seqs), lists:sublist(Seqs, 3),
             lists:nthtail(max(0, length(Seqs) - 3), Seqs)}},
    case Seqs of
        [] ->
            %% Everything pushed was popped; at least the acknowledged ones were.
            ?assertMatch({mixed, _}, Mode);
        [First | _] ->
            Last = lists:last(Seqs),
            %% ... in order, without gaps; every acknowledged push is there unless an
            %% acknowledged pop took it; no acknowledged pop comes back. (An operation
            %% can be done but not yet acknowledged when the kill lands.)
            ?assertEqual({Info, lists:seq(First, Last)}, {Info, Seqs}),
            ?assertEqual({Info, true}, {Info, Last >= Pushed}),
            ?assertEqual({Info, true}, {Info, First > LastPopped}),
            element(1, Mode) =:= push andalso ?assertEqual({Info, 1}, {Info, First})
    end,
    %% And the queue works on.
    ok = emmap_queue:push(Q, after_crash),
    ?assertEqual(after_crash, emmap_queue:peek_back(Q)),
    ?assertEqual(length(Seqs) + 1, emmap_queue:length(Q)),
    ok = emmap_queue:close(Q),
    length(Seqs).

%%%===========================================================================
%%% README examples
%%%===========================================================================

%% The two examples of the README's queue section, as written there.
readme_examples() ->
    emmap_readme:blocks(emmap_readme:section("## Persistent FIFO queue"), "erlang").

%% The container example runs as written (with its file in a name of our own), prints what
%% it says and leaves no file.
readme_example_test() ->
    [Text, _] = readme_examples(),
    emmap_test_lib:with_path(fun(P) ->
        Example = emmap_readme:replace_path(Text, "/tmp/orders.queue", P),
        ?assertEqual("[3,2]\n", emmap_readme:expected_print(Example)),
        ?assertEqual(emmap_readme:expected_print(Example), emmap_readme:eval_printing(Example)),
        ?assertNot(filelib:is_file(P))
    end).

%% The same for the server example (its queue file goes with auto_unlink).
readme_server_example_test() ->
    [_, Text] = readme_examples(),
    emmap_test_lib:with_path(fun(P) ->
        Example = emmap_readme:replace_path(Text, "/tmp/jobs.queue", P),
        ?assertEqual("{sent,\"ann@example.com\"}\n", emmap_readme:expected_print(Example)),
        ?assertEqual(emmap_readme:expected_print(Example), emmap_readme:eval_printing(Example)),
        ?assertNot(filelib:is_file(P))
    end).

%% The section has these two examples and no other: each one is run above.
readme_examples_are_in_the_docs_test() ->
    Examples = readme_examples(),
    ?assertEqual(2, length(Examples)),
    ?assertMatch(["File = \"/tmp/orders.queue\"," ++ _,
                  "{ok, _} = emmap_queue:start_link(jobs, \"/tmp/jobs.queue\"" ++ _], Examples).
