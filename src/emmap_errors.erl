%%% @private
%%% @doc What the shell says about a `badarg' from emmap: which argument is wrong and why.
%%%
%%% Every function of `emmap', `emmap_counters', `emmap_blocks', `emmap_queue',
%%% `emmap_queue_server' and `emmap_io' that raises `badarg' raises it with
%%% `error_info' naming this module (EEP 54), from the function's own stack frame with
%%% its arguments. `erl_error:format_exception/3', which the shell uses, then calls
%%% `format_error/2', which looks at those arguments and describes each one that is wrong:
%%%
%%% ```
%%% 1> emmap:open("/tmp/x", [read, bogus]).
%%% ** exception error: bad argument
%%%      in function  emmap:open/2
%%%         called as emmap:open("/tmp/x",[read,bogus])
%%%         *** argument 2: not an emmap option: bogus
%%% '''
%%%
%%% Nothing is computed when the exception is raised: only when it is formatted, from the
%%% arguments in the frame. The rules here restate what the functions accept (the NIF
%%% library decides for itself; emmap_errors_tests checks that the two agree).
-module(emmap_errors).

-include("emmap_internal.hrl").

-export([format_error/2]).

-define(U64MAX, 16#FFFFFFFFFFFFFFFF).
-define(I64MIN, -16#8000000000000000).

%% The atoms `emmap:open/2,4' accepts as options, and the `{Name, Value}' pairs.
-define(FLAGS, [read, write, create, truncate, shared, private, shared_validate, sync,
                direct, lock, nolock, populate, noreserve, nonblock, anon, fixed,
                auto_unlink, hugetlb, huge_2mb, huge_1gb, nocache, uninitialized,
                fixed_size, fit, debug]).
-define(ATOMIC_OPS, [add, sub, 'band', 'bor', 'bxor', xchg, 'and', 'or', 'xor']).
-define(ADVICE, [normal, sequential, random, no_reuse, will_need, dont_need]).

%% @doc The EEP-54 callback: for `badarg' raised by one of emmap's functions, a map from
%% the position of each wrong argument to what is wrong with it. Empty when nothing can
%% be said (then the shell prints the plain "bad argument"). Never fails.
-spec format_error(term(), erlang:stacktrace()) -> #{pos_integer() | general => string()}.
format_error(badarg, [{M, F, Args, _Info} | _]) when is_list(Args) ->
    try explain(kinds(M, F, length(Args)), Args)
    catch _:_ -> #{}
    end;
format_error(_, _) ->
    #{}.

explain(unknown, _Args) ->
    #{};
explain(Kinds, Args) ->
    maps:from_list([{N, lists:flatten(Why)}
                    || {N, Kind, Arg} <- lists:zip3(lists:seq(1, length(Args)), Kinds, Args),
                       Why <- [cause(Kind, Arg, Args)],
                       Why =/= ok]).

%%%===========================================================================
%%% What each function takes
%%%===========================================================================

-define(IS_COUNTERS_MOD(M), (M =:= emmap orelse M =:= emmap_counters)).
-define(IS_BLOCKS_MOD(M), (M =:= emmap orelse M =:= emmap_blocks)).

kinds(emmap, open, 2) -> [path, opts];
kinds(emmap, open, 4) -> [path, offset, offset, opts];
kinds(emmap, F, 1)
  when F =:= close; F =:= info; F =:= read_line; F =:= flush; F =:= sync; F =:= datasync;
       F =:= truncate; F =:= resize; F =:= read_handle_info ->
    [handle];
kinds(emmap, pread, 3) -> [handle, pos, len];
kinds(emmap, pread, 2) -> [handle, pos_lens];
kinds(emmap, pwrite, 3) -> [handle, pos, iodata];
kinds(emmap, pwrite, 2) -> [handle, pos_datas];
kinds(emmap, read, 2) -> [handle, len];
kinds(emmap, write, 2) -> [handle, iodata];
kinds(emmap, position, 2) -> [handle, location];
kinds(emmap, advise, 4) -> [handle, pos, pos, advice];
kinds(emmap, allocate, 3) -> [handle, pos, pos];
kinds(emmap, resize, 2) -> [handle, pos];
kinds(emmap, read_handle_info, 2) -> [handle, info_opts];
kinds(emmap, copy, 3) -> [handle, handle, copy_len];
kinds(emmap, ipread_s32bu_p32bu, 3) -> [handle, pos, max_size];
kinds(emmap, patomic, 4) -> [handle, pos, op, word];
kinds(emmap, F, 3)
  when F =:= patomic_add; F =:= patomic_sub; F =:= patomic_and; F =:= patomic_or;
       F =:= patomic_xor; F =:= patomic_xchg; F =:= patomic_write_integer ->
    [handle, pos, word];
kinds(emmap, patomic_cas, 4) -> [handle, pos, word, word];
kinds(emmap, patomic_read_integer, 2) -> [handle, pos];
kinds(M, open_counters, 1) when ?IS_COUNTERS_MOD(M) -> [path];
kinds(M, open_counters, 2) when ?IS_COUNTERS_MOD(M) -> [path, count];
kinds(M, close_counters, 1) when ?IS_COUNTERS_MOD(M) -> [counters];
kinds(M, F, 2)
  when ?IS_COUNTERS_MOD(M), F =:= inc_counter orelse F =:= dec_counter
                            orelse F =:= read_counter ->
    [counters, index];
kinds(M, F, 3)
  when ?IS_COUNTERS_MOD(M), F =:= inc_counter orelse F =:= dec_counter
                            orelse F =:= set_counter ->
    [counters, index, word];
kinds(M, init_block_storage, 2) when ?IS_BLOCKS_MOD(M) -> [handle, block_size];
kinds(M, init_block_storage, 3) when ?IS_BLOCKS_MOD(M) -> [handle, block_size, block_opts];
kinds(M, store_block, 2) when ?IS_BLOCKS_MOD(M) -> [handle, block];
kinds(M, F, 2) when ?IS_BLOCKS_MOD(M), F =:= read_block orelse F =:= free_block ->
    [handle, addr];
kinds(M, F, 1) when ?IS_BLOCKS_MOD(M), F =:= read_blocks orelse F =:= repair_block_storage ->
    [handle];
kinds(M, F, 3) when ?IS_BLOCKS_MOD(M), F =:= read_blocks orelse F =:= repair_block_storage ->
    [handle, continuation, positive];
kinds(emmap_queue, open, 3) -> [path, size, opts];
kinds(emmap_queue, F, 1)
  when F =:= close; F =:= flush; F =:= sync; F =:= pop; F =:= pop_and_purge;
       F =:= peek_front; F =:= peek_back; F =:= is_empty; F =:= length; F =:= purge;
       F =:= erase; F =:= metadata ->
    [queue];
kinds(emmap_queue, push, 2) -> [queue, any];
kinds(emmap_queue, push, 3) -> [queue, any, level];
kinds(emmap_queue, F, 2) when F =:= try_pop; F =:= try_pop_and_purge -> [queue, fun1];
kinds(emmap_queue, F, 3) when F =:= peek; F =:= rpeek; F =:= pop -> [queue, any, fun2];
kinds(M, start_link, 4) when M =:= emmap_queue; M =:= emmap_queue_server ->
    [server_name, file_name, size, opts];
kinds(M, try_dequeue, 2) when M =:= emmap_queue; M =:= emmap_queue_server -> [any, fun1];
kinds(emmap_io, open, 2) -> [path, io_opts];
kinds(emmap_io, open, 4) -> [path, offset, offset, io_opts];
kinds(emmap_io, from_handle, 1) -> [handle];
kinds(emmap_io, from_handle, 2) -> [handle, io_only_opts];
kinds(_, _, _) -> unknown.

%%%===========================================================================
%%% What is wrong with an argument
%%%===========================================================================

%% `ok', or what is wrong with argument Arg of kind Kind (All: every argument).
cause(any, _, _) ->
    ok;
cause(handle, H, _) ->
    case is_handle(H) of
        true -> ok;
        false -> "not an emmap handle"
    end;
cause(queue, Q, _) ->
    case is_handle(Q) of
        true -> ok;
        false -> "not a queue (from emmap_queue:open/3)"
    end;
cause(counters, {H, N}, _) when is_integer(N), N > 0 ->
    case is_handle(H) of
        true -> ok;
        false -> "not a counters file (from open_counters/1,2): no emmap handle in it"
    end;
cause(counters, _, _) ->
    "not a counters file (from open_counters/1,2)";
cause(path, File, All) ->
    case lists:member(anon, options_of(All)) of
        true -> ok;                             % ignored
        false -> path(File)
    end;
cause(file_name, File, _) when is_list(File); is_binary(File); is_atom(File) ->
    path(File);
cause(file_name, _, _) ->
    "not a file name";
cause(Kind, X, _) when Kind =:= offset; Kind =:= size ->
    non_neg(X);
cause(pos, X, _) ->
    integer(X);
cause(len, X, _) ->
    case integer(X) of
        ok when X < 0 -> "the length is negative";
        Why -> Why
    end;
cause(word, X, _) when is_integer(X), X >= ?I64MIN, X =< ?U64MAX ->
    ok;
cause(word, X, _) when is_integer(X) ->
    "outside -2^63..2^64-1: not a 64-bit value";
cause(word, _, _) ->
    "not an integer";
cause(op, Op, _) ->
    case lists:member(Op, ?ATOMIC_OPS) of
        true -> ok;
        false -> io_lib:format("unknown atomic operation: ~0tP (one of ~w)", [Op, 5, ?ATOMIC_OPS])
    end;
cause(opts, Opts, _) ->
    options(Opts, fun is_open_option/1, "not an emmap option");
cause(io_opts, Opts, _) ->
    options(Opts, fun(O) -> is_open_option(O) orelse is_io_option(O) end,
            "not an emmap or emmap_io option");
cause(io_only_opts, Opts, _) ->
    options(Opts, fun is_io_option/1, "not an emmap_io option (binary, list or {encoding, E})");
cause(iodata, Data, _) ->
    case is_iodata(Data) of
        true -> ok;
        false -> "not iodata"
    end;
cause(pos_lens, L, _) ->
    elements(L, fun({P, N}) -> is_integer(P) andalso is_integer(N) andalso N >= 0;
                   (_) -> false
                end, "not {Position, Length} with integers, Length >= 0");
cause(pos_datas, L, _) ->
    elements(L, fun({P, D}) -> is_integer(P) andalso is_iodata(D);
                   (_) -> false
                end, "not {Position, Data} with an integer and iodata");
cause(location, L, _) ->
    case L of
        _ when is_integer(L) -> ok;
        _ when L =:= bof; L =:= cur; L =:= eof -> ok;
        {W, D} when (W =:= bof orelse W =:= cur orelse W =:= eof), is_integer(D) -> ok;
        _ -> "not a location: an integer, bof, cur, eof or {bof | cur | eof, Offset}"
    end;
cause(advice, A, _) ->
    case lists:member(A, ?ADVICE) of
        true -> ok;
        false -> io_lib:format("not an advice: ~0tP (one of ~w)", [A, 5, ?ADVICE])
    end;
cause(info_opts, Opts, _) ->
    case proper_list(Opts) of
        false ->
            "not a proper list";
        true ->
            case proplists:get_value(time, Opts, local) of
                T when T =:= local; T =:= universal; T =:= posix -> ok;
                T -> io_lib:format("{time, ~0tP}: the time type is local, universal or posix",
                                   [T, 5])
            end
    end;
cause(copy_len, infinity, _) ->
    ok;
cause(copy_len, N, _) ->
    non_neg(N);
cause(max_size, M, _) when is_integer(M); is_atom(M) ->
    ok;
cause(max_size, _, _) ->
    "not an integer or infinity";
cause(count, N, _) when is_integer(N), N >= 0, N < (1 bsl 56) ->
    ok;
cause(count, N, _) when is_integer(N) ->
    "not a count of counters: outside 0..2^56-1";
cause(count, _, _) ->
    "not an integer";
cause(index, I, [C | _]) ->
    case {integer(I), C} of
        {ok, {_, N}} when is_integer(N), (I < 0 orelse I >= N) ->
            io_lib:format("index outside 0..~w", [N - 1]);
        {Why, _} ->
            Why
    end;
cause(block_size, S, _) ->
    case integer(S) of
        ok when S =< 0 -> "a block size is positive";
        Why -> Why
    end;
cause(block_opts, Opts, _) ->
    case Opts of
        #{max_blocks := N} when map_size(Opts) =:= 1, is_integer(N), N > 0 -> ok;
        _ when Opts =:= #{} -> ok;
        _ -> "not block storage options: #{} or #{max_blocks => N} with N > 0"
    end;
cause(block, B, _) when is_binary(B) ->
    "a block must be exactly the storage's block size";
cause(block, _, _) ->
    "not a binary";
cause(addr, A, _) ->
    integer(A);
cause(continuation, C, _) when C =:= eof; is_integer(C), C >= 0 ->
    ok;
cause(continuation, _, _) ->
    "not a continuation: 0, a value an earlier call returned, or eof";
cause(positive, N, _) when is_integer(N), N > 0 ->
    ok;
cause(positive, N, _) ->
    case integer(N) of
        ok -> "not positive";
        Why -> Why
    end;
cause(level, L, _) when is_integer(L), L >= 0, L =< 9 ->
    ok;
cause(level, _, _) ->
    "not a compression level: an integer in 0..9";
cause(fun1, F, _) ->
    is_fun(F, 1);
cause(fun2, F, _) ->
    is_fun(F, 2);
cause(server_name, N, _) ->
    case N of
        _ when is_atom(N) -> ok;
        {local, A} when is_atom(A) -> ok;
        {global, _} -> ok;
        {via, M, _} when is_atom(M) -> ok;
        _ -> "not a server name: undefined, an atom, {local, Atom}, {global, Term} or "
                 "{via, Module, Term}"
    end.

%%%===========================================================================
%%% Checks
%%%===========================================================================

%% An emmap handle of this library (opened, closed or not).
is_handle(?H(R)) when is_reference(R) ->
    try emmap_nif:debug(R) of
        _ -> true
    catch
        _:_ -> false
    end;
is_handle(_) ->
    false.

integer(X) when is_integer(X) -> ok;
integer(_) -> "not an integer".

non_neg(X) ->
    case integer(X) of
        ok when X < 0 -> "negative";
        Why -> Why
    end.

is_fun(F, N) when is_function(F, N) -> ok;
is_fun(_, N) -> io_lib:format("not a fun of arity ~w", [N]).

proper_list(L) when is_list(L) ->
    try length(L) of _ -> true catch error:badarg -> false end;
proper_list(_) ->
    false.

is_iodata(B) when is_binary(B) ->
    true;
is_iodata(L) when is_list(L) ->
    try iolist_size(L) of _ -> true catch error:badarg -> false end;
is_iodata(_) ->
    false.

%% The options among the arguments (open's last argument), as far as they are a list.
options_of(All) ->
    case lists:last(All) of
        Opts when is_list(Opts) -> proper_part(Opts);
        _ -> []
    end.

proper_part([H | T]) -> [H | proper_part(T)];
proper_part(_) -> [].

%% A file name, as emmap:open/4 takes it.
path(File) when is_binary(File) ->
    no_nul(File);
path(File) when is_list(File); is_atom(File) ->
    try
        Flat = filename:flatten(File),
        unicode:characters_to_binary(Flat, unicode, file:native_name_encoding())
    of
        Bin when is_binary(Bin) -> no_nul(Bin);
        _ -> "not a file name: characters the file system's encoding does not have"
    catch
        _:_ -> "not a file name"
    end;
path(_) ->
    "not a file name".

no_nul(Bin) ->
    case binary:match(Bin, <<0>>) of
        nomatch -> ok;
        _ -> "a path may not contain NUL"
    end.

%% A proper list whose elements all pass Good; else what is wrong, naming the first
%% element that does not.
options(Opts, Good, Text) ->
    elements(Opts, Good, fun(O) -> io_lib:format("~s: ~0tP", [Text, O, 8]) end).

elements(L, Good, Text) ->
    case proper_list(L) of
        false ->
            "not a proper list";
        true ->
            case lists:dropwhile(Good, L) of
                [] -> ok;
                [Bad | _] when is_function(Text) -> Text(Bad);
                [Bad | _] -> io_lib:format("element ~w is ~s", [index_of(Bad, L), Text])
            end
    end.

index_of(X, L) ->
    length(lists:takewhile(fun(Y) -> Y =/= X end, L)) + 1.

is_open_option(O) when is_atom(O) ->
    lists:member(O, ?FLAGS);
is_open_option({size, N}) ->
    is_integer(N) andalso N >= 0 andalso N =< ?U64MAX;
is_open_option({chmod, N}) ->
    is_integer(N) andalso N >= 0 andalso N =< 8#7777;
is_open_option({K, N}) when K =:= address; K =:= max_inc_size ->
    is_integer(N) andalso N > 0 andalso N =< ?U64MAX;
is_open_option(_) ->
    false.

is_io_option(binary) -> true;
is_io_option(list) -> true;
is_io_option({encoding, E}) ->
    lists:member(E, [latin1, unicode, utf8, utf16, utf32])
        orelse lists:member(E, [{U, End} || U <- [utf16, utf32], End <- [big, little]]);
is_io_option(_) -> false.
