%%% Errors that explain themselves: every emmap function that raises `badarg' raises it
%%% with EEP-54 `error_info' from its own frame, and `erl_error:format_exception/3' (what
%%% the shell prints) names the wrong argument and says why.
%%%
%%% - one bad call per function, with the text it must print;
%%% - every exported function is either in that list or said (below) not to raise badarg;
%%% - a property: for random junk arguments to every such function, a call that raises
%%%   badarg carries the error_info and `emmap_errors:format_error/2' explains at least one
%%%   argument (its rules and the functions' own checks agree), and `format_error/2' never
%%%   fails, whatever it is given;
%%% - the README's sample shell output is what the shell prints.
-module(emmap_errors_tests).

-include_lib("eunit/include/eunit.hrl").
-include_lib("kernel/include/file.hrl").

-define(MODULES, [emmap, emmap_counters, emmap_blocks, emmap_queue, emmap_queue_server,
                  emmap_io]).

%% Functions that never raise badarg: what they do with any argument, in one line.
-define(NO_BADARG,
        [{emmap, sigbus_handler, 0},                % no arguments
         {emmap_queue, stop, 1},                    % gen_server:stop/1 exits for a bad server
         {emmap_queue, enqueue, 2},                 % gen_server:call/3: the same
         {emmap_queue, dequeue, 1},
         {emmap_queue, inspect, 1},
         {emmap_queue, info, 1},
         {emmap_queue_server, stop, 1},
         {emmap_queue_server, enqueue, 2},
         {emmap_queue_server, dequeue, 1},
         {emmap_queue_server, inspect, 1},
         {emmap_queue_server, info, 1},
         {emmap_queue_server, init, 1},             % gen_server callbacks: answer, never raise
         {emmap_queue_server, handle_call, 3},
         {emmap_queue_server, handle_cast, 2},
         {emmap_queue_server, handle_info, 2},
         {emmap_queue_server, terminate, 2},
         {emmap_io, format_error, 1},               % any term has a text
         {emmap_io, loop, 1}]).                     % the device process itself

tmp(Name) ->
    filename:join("/tmp", "emmap_errors_" ++ os:getpid() ++ "_"
                  ++ integer_to_list(erlang:unique_integer([positive])) ++ "_" ++ Name).

%% Handles and values every test below uses: {Handle, Counters, Queue, Blocks, Cleanup,
%% Path} (Path: a file name random calls may create).
setup() ->
    {ok, M} = emmap:open("", 0, 65536, [anon, read, write]),
    CP = tmp("counters"),
    C = emmap:open_counters(CP, 4),
    QP = tmp("queue"),
    {ok, Q} = emmap_queue:open(QP, 4096, []),
    {ok, B} = emmap:open("", 0, 4096, [anon, read, write]),
    ok = emmap_blocks:init_block_storage(B, 64, #{max_blocks => 16}),
    JP = tmp("junk"),
    Cleanup = fun() ->
                      [catch emmap:close(H) || H <- [M, B]],
                      catch emmap:close_counters(C),
                      catch emmap_queue:close(Q),
                      [file:delete(F) || F <- [CP, QP, JP]]
              end,
    {M, C, Q, B, Cleanup, JP}.

%% One bad call per function: {Module, Function, Args, ArgumentNumber, Text}.
bad_calls({M, C, Q, B, _, _}) ->
    NotH = {file_descriptor, emmap, make_ref()},
    Fun2 = fun(_, A) -> {cont, A} end,
    [{emmap, open, ["/tmp/x", [read, bogus]], 2, "not an emmap option: bogus"},
     {emmap, open, [<<"/tmp/a", 0, "b">>, [read]], 1, "a path may not contain NUL"},
     {emmap, open, ["/tmp/x", -1, 0, [read]], 2, "negative"},
     {emmap, open, ["/tmp/x", 0, 0, [read | write]], 4, "not a proper list"},
     {emmap, close, [x], 1, "not an emmap handle"},
     {emmap, info, [NotH], 1, "not an emmap handle"},
     {emmap, pread, [M, foo, 1], 2, "not an integer"},
     {emmap, pread, [M, 0, -1], 3, "the length is negative"},
     {emmap, pread, [M, [{0, a}]], 2, "element 1 is not {Position, Length}"},
     {emmap, pwrite, [M, 0, [1, a]], 3, "not iodata"},
     {emmap, pwrite, [M, [{0, <<"a">>} | x]], 2, "not a proper list"},
     {emmap, read, [M, a], 2, "not an integer"},
     {emmap, read_line, [x], 1, "not an emmap handle"},
     {emmap, write, [M, 1.0], 2, "not iodata"},
     {emmap, position, [M, {sideways, 1}], 2, "not a location"},
     {emmap, flush, [x], 1, "not an emmap handle"},
     {emmap, sync, [x], 1, "not an emmap handle"},
     {emmap, datasync, [x], 1, "not an emmap handle"},
     {emmap, advise, [M, 0, 0, sometimes], 4, "not an advice: sometimes"},
     {emmap, truncate, [x], 1, "not an emmap handle"},
     {emmap, resize, [NotH], 1, "not an emmap handle"},
     {emmap, resize, [M, big], 2, "not an integer"},
     {emmap, allocate, [M, a, 1], 2, "not an integer"},
     {emmap, read_handle_info, [x], 1, "not an emmap handle"},
     {emmap, read_handle_info, [M, [{time, bogus}]], 2, "{time, bogus}: the time type is local, universal or posix"},
     {emmap, copy, [M, x, 1], 2, "not an emmap handle"},
     {emmap, copy, [M, M, -1], 3, "negative"},
     {emmap, ipread_s32bu_p32bu, [M, 0, "max"], 3, "not an integer or infinity"},
     {emmap, patomic, [M, 8, mul, 1], 3, "unknown atomic operation: mul"},
     {emmap, patomic, [M, 8, add, 1 bsl 64], 4, "outside -2^63..2^64-1"},
     {emmap, patomic_add, [M, 8, 1.0], 3, "not an integer"},
     {emmap, patomic_sub, [M, x, 1], 2, "not an integer"},
     {emmap, patomic_and, [x, 8, 1], 1, "not an emmap handle"},
     {emmap, patomic_or, [M, 8, -1 - (1 bsl 63)], 3, "outside -2^63..2^64-1"},
     {emmap, patomic_xor, [M, 8, "1"], 3, "not an integer"},
     {emmap, patomic_xchg, [NotH, 8, 1], 1, "not an emmap handle"},
     {emmap, patomic_cas, [M, 8, 0, a], 4, "not an integer"},
     {emmap, patomic_read_integer, [M, 8.0], 2, "not an integer"},
     {emmap, patomic_write_integer, [M, 8, 1 bsl 64], 3, "outside -2^63..2^64-1"},
     {emmap, open_counters, [{x}], 1, "not a file name"},
     {emmap, open_counters, [tmp("c"), -1], 2, "outside 0..2^56-1"},
     {emmap, close_counters, [M], 1, "not a counters file"},
     {emmap, inc_counter, [C, 4], 2, "index outside 0..3"},
     {emmap, inc_counter, [C, 0, a], 3, "not an integer"},
     {emmap, dec_counter, [C, -1], 2, "index outside 0..3"},
     {emmap, dec_counter, [x, 0, 1], 1, "not a counters file"},
     {emmap, set_counter, [C, a, 1], 2, "not an integer"},
     {emmap, read_counter, [{NotH, 4}, 0], 1, "no emmap handle in it"},
     {emmap_counters, open_counters, [{x}], 1, "not a file name"},
     {emmap_counters, open_counters, [tmp("c"), a], 2, "not an integer"},
     {emmap_counters, close_counters, [x], 1, "not a counters file"},
     {emmap_counters, inc_counter, [C, 99], 2, "index outside 0..3"},
     {emmap_counters, inc_counter, [C, 0, 1 bsl 64], 3, "outside -2^63..2^64-1"},
     {emmap_counters, dec_counter, [C, x], 2, "not an integer"},
     {emmap_counters, dec_counter, [C, 0, x], 3, "not an integer"},
     {emmap_counters, set_counter, [C, 0, 1.5], 3, "not an integer"},
     {emmap_counters, read_counter, [C, 4], 2, "index outside 0..3"},
     {emmap, init_block_storage, [M, 0], 2, "a block size is positive"},
     {emmap, init_block_storage, [M, 64, #{max_blocks => 0}], 3, "not block storage options"},
     {emmap, store_block, [B, <<"short">>], 2, "exactly the storage's block size"},
     {emmap, read_block, [B, a], 2, "not an integer"},
     {emmap, free_block, [x, 0], 1, "not an emmap handle"},
     {emmap, read_blocks, [x], 1, "not an emmap handle"},
     {emmap, read_blocks, [B, -1, 1], 2, "not a continuation"},
     {emmap, repair_block_storage, [NotH], 1, "not an emmap handle"},
     {emmap, repair_block_storage, [B, 0, 0], 3, "not positive"},
     {emmap_blocks, init_block_storage, [x, 64], 1, "not an emmap handle"},
     {emmap_blocks, init_block_storage, [B, a, #{}], 2, "not an integer"},
     {emmap_blocks, store_block, [B, "block"], 2, "not a binary"},
     {emmap_blocks, read_block, [NotH, 0], 1, "not an emmap handle"},
     {emmap_blocks, free_block, [B, 1.0], 2, "not an integer"},
     {emmap_blocks, read_blocks, [NotH], 1, "not an emmap handle"},
     {emmap_blocks, read_blocks, [B, 0, a], 3, "not an integer"},
     {emmap_blocks, repair_block_storage, [x], 1, "not an emmap handle"},
     {emmap_blocks, repair_block_storage, [B, x, 1], 2, "not a continuation"},
     {emmap_queue, open, [tmp("q"), -1, []], 2, "negative"},
     {emmap_queue, open, [tmp("q"), 1024, [no_such_option]], 3, "not an emmap option: no_such_option"},
     {emmap_queue, close, [x], 1, "not a queue"},
     {emmap_queue, flush, [x], 1, "not a queue"},
     {emmap_queue, sync, [NotH], 1, "not a queue"},
     {emmap_queue, push, [x, term], 1, "not a queue"},
     {emmap_queue, push, [Q, term, 10], 3, "not a compression level"},
     {emmap_queue, pop, [NotH], 1, "not a queue"},
     {emmap_queue, pop_and_purge, [x], 1, "not a queue"},
     {emmap_queue, try_pop, [Q, not_a_fun], 2, "not a fun of arity 1"},
     {emmap_queue, try_pop_and_purge, [NotH, fun(X) -> X end], 1, "not a queue"},
     {emmap_queue, peek_front, [x], 1, "not a queue"},
     {emmap_queue, peek_back, [NotH], 1, "not a queue"},
     {emmap_queue, peek, [Q, acc, fun(_) -> ok end], 3, "not a fun of arity 2"},
     {emmap_queue, rpeek, [x, acc, Fun2], 1, "not a queue"},
     {emmap_queue, pop, [Q, acc, undefined], 3, "not a fun of arity 2"},
     {emmap_queue, is_empty, [x], 1, "not a queue"},
     {emmap_queue, length, [NotH], 1, "not a queue"},
     {emmap_queue, purge, [x], 1, "not a queue"},
     {emmap_queue, erase, [x], 1, "not a queue"},
     {emmap_queue, metadata, [make_ref()], 1, "not a queue"},
     {emmap_queue, start_link, ["name", tmp("q"), 1024, []], 1, "not a server name"},
     {emmap_queue, try_dequeue, [self(), not_a_fun], 2, "not a fun of arity 1"},
     {emmap_queue_server, start_link, [undefined, {x}, 1024, []], 2, "not a file name"},
     {emmap_queue_server, try_dequeue, [self(), fun() -> ok end], 2, "not a fun of arity 1"},
     {emmap_io, open, [tmp("io"), [create, {encoding, bogus}]], 2, "not an emmap or emmap_io option: {encoding,bogus}"},
     {emmap_io, open, [tmp("io"), 0, -5, [read]], 3, "negative"},
     {emmap_io, from_handle, [x], 1, "not an emmap handle"},
     {emmap_io, from_handle, [M, [read]], 2, "not an emmap_io option"}].

%% Raises `error:badarg' from the function itself (or from the one it delegates to, with
%% the same arguments: see impl/2), with error_info naming emmap_errors, and the formatted
%% exception names the argument and the cause.
bad_calls_explain_themselves_test() ->
    S = setup(),
    try
        Wrong = [{Mod, F, Args, N, Want, Got}
                 || {Mod, F, Args, N, Want} <- bad_calls(S),
                    Got <- [explained(Mod, F, Args, N, Want)],
                    Got =/= ok],
        ?assertEqual([], Wrong)
    after
        (element(5, S))()
    end.

explained(Mod, F, Args, N, Want) ->
    Impl = impl(Mod, F),
    try apply(Mod, F, Args) of
        Result -> {returned, Result}
    catch
        error:badarg:Stack ->
            case Stack of
                [{Impl, F, Args, Info} | _] ->
                    case proplists:get_value(error_info, Info) of
                        #{module := emmap_errors} ->
                            Text = format(Stack),
                            Head = lists:flatten(io_lib:format("*** argument ~w: ", [N])),
                            Lines = [L || L0 <- string:split(Text, "\n", all),
                                          L <- [string:trim(L0)],
                                          string:prefix(L, Head) =/= nomatch],
                            case [L || L <- Lines, string:find(L, Want) =/= nomatch] of
                                [] -> {text, Text};
                                _ -> ok
                            end;
                        Other ->
                            {error_info, Other}
                    end;
                [Top | _] ->
                    {frame, Top}
            end;
        Class:Reason ->
            {raised, Class, Reason}
    end.

%% The module whose function raises: `emmap' passes the counters and block storage calls
%% on to `emmap_counters' and `emmap_blocks', `emmap_queue' its server calls to
%% `emmap_queue_server', as one-line delegates (a tail call: their frame is the one left).
impl(emmap, F) ->
    Counters = [open_counters, close_counters, inc_counter, dec_counter, set_counter,
                read_counter],
    Blocks = [init_block_storage, store_block, read_block, free_block, read_blocks,
              repair_block_storage],
    case {lists:member(F, Counters), lists:member(F, Blocks)} of
        {true, _} -> emmap_counters;
        {_, true} -> emmap_blocks;
        _ -> emmap
    end;
impl(emmap_queue, F) when F =:= start_link; F =:= try_dequeue ->
    emmap_queue_server;
impl(Mod, _F) ->
    Mod.

format(Stack) ->
    lists:flatten(erl_error:format_exception(error, badarg, Stack)).

%% Every exported function either has a bad call above or is listed as one that never
%% raises badarg.
every_function_is_covered_test() ->
    S = setup(),
    try
        Covered = lists:usort([{Mod, F, length(Args)} || {Mod, F, Args, _, _} <- bad_calls(S)]),
        All = [{Mod, F, A} || Mod <- ?MODULES, {F, A} <- Mod:module_info(exports),
                              F =/= module_info],
        ?assertEqual([], All -- (Covered ++ ?NO_BADARG)),
        ?assertEqual([], (Covered ++ ?NO_BADARG) -- All)
    after
        (element(5, S))()
    end.

%%%---------------------------------------------------------------------------
%%% Random bad arguments
%%%---------------------------------------------------------------------------

%% Junk and near-misses for every kind of argument.
junk({M, C, Q, B, _, Path}) ->
    NotH = {file_descriptor, emmap, make_ref()},
    {Dead, DeadRef} = spawn_monitor(fun() -> ok end),
    receive {'DOWN', DeadRef, process, Dead, _} -> ok end,
    [M, C, Q, B, NotH, {file_descriptor, emmap}, {file_descriptor, prim_file, make_ref()},
     {M, 4}, {NotH, 4}, {M, a}, {x},
     0, 1, 8, 63, 64, -1, -8, 1 bsl 56, 1 bsl 63, 1 bsl 64, -(1 bsl 63) - 1, 1 bsl 100, 9, 10,
     1.0, a, bogus, eof, infinity, undefined, add, mul, cur, {cur, 1}, {cur, a}, bof,
     normal, sometimes, read, direct, anon,
     "", Path, <<>>, <<"x">>, <<0>>, <<1:3>>, <<"/tmp/a", 0>>,
     binary:copy(<<"b">>, 64), [read], [read, bogus], [read | write], [anon],
     [{size, 8}], [{size, -1}], [{time, posix}], [{time, bogus}], [{0, 1}], [{0, a}],
     [{0, <<"x">>}], [1, a], [[[]]], [binary], [{encoding, bogus}],
     #{}, #{max_blocks => 4}, #{max_blocks => 0}, #{x => 1},
     fun(_) -> ok end, fun(_, A) -> {cont, A} end, fun() -> ok end, Dead, make_ref(),
     {local, q}, {global, q}, {via, 1, 2}].

%% The functions that raise badarg, with their arity.
raising(S) ->
    lists:usort([{Mod, F, length(Args)} || {Mod, F, Args, _, _} <- bad_calls(S)]).

%% Calls every badarg-raising function with random junk: when it raises badarg, the frame
%% carries error_info and format_error/2 explains at least one argument.
random_badargs_are_explained_test_() ->
    {timeout, 120, fun() ->
        S = setup(),
        %% Atoms, strings and binaries are file names too: whatever a random call creates
        %% lands in a directory of its own.
        {ok, Cwd} = file:get_cwd(),
        Dir = tmp("cwd"),
        ok = file:make_dir(Dir),
        ok = file:set_cwd(Dir),
        try
            Funs = raising(S),
            Junk = list_to_tuple(junk(S)),
            Gen = proper_types:bind(
                    proper_types:elements(Funs),
                    fun({Mod, F, A}) ->
                            {Mod, F, proper_types:vector(A, proper_types:integer(1, tuple_size(Junk)))}
                    end, false),
            Prop = proper:forall(
                     Gen,
                     fun({Mod, F, Picks}) ->
                             Args = [element(I, Junk) || I <- Picks],
                             check_random_call(Mod, F, Args)
                     end),
            ?assert(proper:quickcheck(Prop, [{numtests, 3000}, {to_file, user}, noshrink]))
        after
            ok = file:set_cwd(Cwd),
            _ = os:cmd("rm -rf '" ++ Dir ++ "'"),
            (element(5, S))()
        end
    end}.

check_random_call(Mod, F, Args) ->
    Self = self(),
    Delegate = impl(Mod, F),
    %% In a process of its own: a call may start a server or a device linked to it.
    {Pid, Ref} =
        spawn_monitor(fun() ->
                              process_flag(trap_exit, true),
                              Outcome = try apply(Mod, F, Args) of
                                            _ -> ok
                                        catch
                                            error:badarg:Stack -> {badarg, Stack};
                                            _:_ -> ok
                                        end,
                              Self ! {self(), Outcome},
                              cleanup()
                      end),
    receive
        {Pid, ok} ->
            demonitor(Ref, [flush]),
            true;
        {Pid, {badarg, [{Impl, F, Args, Info} | _] = Stack}} when Impl =:= Mod; Impl =:= Delegate ->
            demonitor(Ref, [flush]),
            Explained = emmap_errors:format_error(badarg, Stack),
            Good = proplists:get_value(error_info, Info) =:= #{module => emmap_errors}
                andalso map_size(Explained) > 0
                andalso is_list(format(Stack)),
            Good orelse io:format(user, "~nnot explained: ~p:~p(~0tP) -> ~p~n",
                                  [Mod, F, Args, 20, Explained]),
            Good;
        {Pid, {badarg, Stack}} ->
            demonitor(Ref, [flush]),
            io:format(user, "~nbadarg from another frame: ~p:~p(~0tP): ~0tP~n",
                      [Mod, F, Args, 20, Stack, 20]),
            false;
        {'DOWN', Ref, process, Pid, Why} ->
            io:format(user, "~ncall died: ~p:~p(~0tP): ~p~n", [Mod, F, Args, 20, Why]),
            false
    after 10000 ->
        exit(Pid, kill),
        false
    end.

%% What a random call may have left behind in its process: stop it (and anything linked).
cleanup() ->
    receive {'EXIT', _, _} -> cleanup() after 0 -> ok end.

%% format_error/2 answers a map of strings for anything: any reason, any stack, any
%% arguments in a frame of any emmap function.
format_error_never_fails_test_() ->
    {timeout, 60, fun() ->
        S = setup(),
        try
            Funs = raising(S) ++ [{emmap, nothing, 1}, {lists, map, 2}],
            Junk = list_to_tuple(junk(S)),
            Term = proper_types:oneof([proper_types:term(),
                                       proper_types:elements(tuple_to_list(Junk))]),
            Gen = proper_types:tuple(
                    [proper_types:elements(Funs),
                     proper_types:list(Term),
                     proper_types:oneof([proper_types:exactly(badarg), proper_types:term()]),
                     proper_types:oneof([proper_types:exactly([]), proper_types:term()])]),
            Prop = proper:forall(
                     Gen,
                     fun({{Mod, F, _}, Args, Reason, Info}) ->
                             Out = emmap_errors:format_error(Reason, [{Mod, F, Args, Info}]),
                             Odd = emmap_errors:format_error(Reason, Args),
                             is_map(Out) andalso is_map(Odd)
                                 andalso lists:all(fun io_lib:char_list/1, maps:values(Out))
                     end),
            ?assert(proper:quickcheck(Prop, [{numtests, 3000}, {to_file, user}]))
        after
            (element(5, S))()
        end
    end}.

%% The README's sample (Errors section) is what the shell prints, line for line.
readme_sample_is_what_the_shell_prints_test() ->
    Section = emmap_readme:section("## Errors"),
    [Sample] = [B || B <- emmap_readme:blocks(Section, ""), string:find(B, "1> ") =/= nomatch],
    [Call | Printed] = string:split(string:trim(Sample), "\n", all),
    "1> " ++ Expr = Call,
    {ok, Tokens, _} = erl_scan:string(Expr),
    {ok, [Parsed]} = erl_parse:parse_exprs(Tokens),
    Stack = try erl_eval:expr(Parsed, erl_eval:new_bindings()) of
                R -> erlang:error({no_exception, R})
            catch
                error:badarg:St -> St
            end,
    Text = format(lists:sublist(Stack, 1)),
    ?assertEqual([strip(L) || L <- Printed],
                 [strip(L) || L <- string:split(string:trim(Text), "\n", all)]).

%% A line without its indentation and the shell's "** " in front of the exception.
strip(Line) ->
    case string:trim(Line) of
        "** " ++ Rest -> Rest;
        Trimmed -> Trimmed
    end.
