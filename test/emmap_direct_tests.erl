%%% @doc `direct' binaries are mutable: they show the mapping's bytes as they are now. A
%%% BIF that parses a binary may read it twice (to size its result, then to build it), so
%%% parsing one while another process writes its bytes can crash the VM (README: "Direct
%%% binaries: shared, mutable memory"). This suite checks that emmap's own calls never do that
%%% with a `direct' binary that other Erlang processes and another OS process rewrite all
%%% the time: given as data to `pwrite'/`write', as a path to `open'/`open_counters', in
%%% option lists, as queue messages and blocks, and read through `emmap_io' devices (which
%%% convert what they read) and a queue opened with `direct'. Every call must answer as
%%% documented; a file the calls did not name must stay as it was.
%%%
%%% It runs in a child VM (a crash there fails the test instead of ending the suite); this
%%% VM is the other OS process that rewrites the bytes while the child works.
-module(emmap_direct_tests).

-include_lib("eunit/include/eunit.hrl").

-export([child_calls/2]).

%% The rewritten file: text at [0, ?TEXT), a path at [?TEXT, ?TEXT + ?PATH).
-define(TEXT, 4096).
-define(PATH, 16).
-define(SIZE, 8192).

%% What the text region is rewritten with: ASCII (a latin1 to UTF-8 conversion doubles
%% nothing), bytes above 127 (it doubles them all), valid 2-byte UTF-8, a term and a line.
text_patterns() ->
    [binary:copy(<<"a">>, ?TEXT), binary:copy(<<16#C4>>, ?TEXT),
     binary:copy(<<16#C3, 16#A9>>, ?TEXT div 2),
     pad(<<"{term, [1, 2, <<\"x\">>]}.\nline\n">>, $z, ?TEXT)].

%% Names in Dir the path region is rewritten with, all ?PATH bytes long: one names the
%% sentinel file, one has a NUL, one is not UTF-8.
path_patterns(Dir) ->
    [pad(list_to_binary(filename:join(Dir, N)), $_, byte_size(list_to_binary(Dir)) + ?PATH)
     || N <- ["keep", "p1", [$p, 16#C4, 16#C4], [$p, $2, 0]]].

pad(B, Byte, Len) ->
    <<B/binary, (binary:copy(<<Byte>>, Len - byte_size(B)))/binary>>.

%% Rewrites the two regions of the mapping M in turn, until stopped.
flipper(M, Texts, Paths, PathAt, I) ->
    receive
        stop -> ok
    after 0 ->
        ok = emmap:pwrite(M, 0, lists:nth(1 + I rem length(Texts), Texts)),
        ok = emmap:pwrite(M, PathAt, lists:nth(1 + I rem length(Paths), Paths)),
        flipper(M, Texts, Paths, PathAt, I + 1)
    end.

%%%===========================================================================
%%% Child VM
%%%===========================================================================

%% Runs every kind of call for Ms milliseconds while two processes rewrite the bytes (and
%% the parent VM does too); prints `result: ok' or what went wrong.
child_calls(Dir, Ms) ->
    Src = filename:join(Dir, "src"),
    Keep = filename:join(Dir, "keep" ++ lists:duplicate(?PATH - 4, $_)),
    {ok, M} = emmap:open(Src, [read, write, shared, direct]),
    {ok, Text} = emmap:pread(M, 0, ?TEXT),
    PathLen = byte_size(list_to_binary(Dir)) + ?PATH,
    {ok, Path} = emmap:pread(M, ?TEXT, PathLen),
    Flippers = [spawn_link(fun() -> flipper(M, text_patterns(), path_patterns(Dir), ?TEXT, K) end)
                || K <- [0, 1]],
    Deadline = erlang:monotonic_time(millisecond) + Ms,
    Self = self(),
    Workers = [spawn_link(fun() -> Self ! {self(), W(Dir, Text, Path, Deadline)} end)
               || W <- [fun data_calls/4, fun path_calls/4, fun option_calls/4,
                        fun queue_calls/4, fun block_calls/4, fun io_read_calls/4,
                        fun io_write_calls/4]],
    Results = [receive {W, R} -> R end || W <- Workers],
    [F ! stop || F <- Flippers],
    Bad = [R || R <- Results, element(1, R) =/= ok],
    Sentinel = file:read_file(Keep),
    Result = case {Bad, Sentinel} of
                 {[], {ok, <<"sentinel">>}} -> ok;
                 _ -> {Bad, Sentinel}
             end,
    io:format("calls: ~p~nresult: ~p~n", [[N || {ok, N} <- Results], Result]),
    halt(0).

%% Calls Fun(I) until the deadline; each answer must satisfy Ok. {ok, Calls} or
%% {bad, Answer}.
repeat(Deadline, Ok, Fun) ->
    repeat(Deadline, Ok, Fun, 0).

repeat(Deadline, Ok, Fun, I) ->
    case erlang:monotonic_time(millisecond) > Deadline of
        true ->
            {ok, I};
        false ->
            R = try Fun(I) catch C:E -> {raised, C, E} end,
            case Ok(R) of
                true -> repeat(Deadline, Ok, Fun, I + 1);
                false -> {bad, R}
            end
    end.

%% As data to pwrite, write and pwrite lists: always ok.
data_calls(Dir, Text, _Path, Deadline) ->
    {ok, Dst} = emmap:open(filename:join(Dir, "dst"), 0, 3 * ?TEXT,
                           [create, read, write, shared]),
    repeat(Deadline, fun(R) -> R =:= [ok, ok, ok, ok, {ok, 0}] end,
           fun(_) ->
                   [emmap:pwrite(Dst, 0, Text), file:pwrite(Dst, 1, [Text, "x" | Text]),
                    emmap:pwrite(Dst, [{0, Text}, {?TEXT, binary:part(Text, 0, 100)}]),
                    emmap:write(Dst, Text), emmap:position(Dst, bof)]
           end).

%% As a path: open (existing or created files, or errors), a failed open that created a
%% file (an address below the kernel's minimum: after the file was created), counters.
path_calls(_Dir, _Text, Path, Deadline) ->
    Ok = fun({A, B, C}) ->
                 lists:member(A, [opened, {error, enoent}, {error, einval}, badarg])
                     andalso lists:member(B, [{error, einval}, {error, eacces}, badarg])
                     andalso (C =:= counted orelse C =:= badarg
                              orelse element(1, C) =:= emmap_counters)
         end,
    repeat(Deadline, Ok,
           fun(_) ->
                   A = case catch emmap:open(Path, [read]) of
                           {ok, M} -> ok = emmap:close(M), opened;
                           {'EXIT', {badarg, _}} -> badarg;
                           E -> E
                       end,
                   B = case catch emmap:open(Path, 0, 4096, [create, read, write, shared,
                                                              {address, 1}]) of
                           {'EXIT', {badarg, _}} -> badarg;
                           E2 -> E2
                       end,
                   C = try emmap:close_counters(emmap:open_counters(Path, 1)), counted
                       catch error:badarg -> badarg;
                             error:Why -> Why
                       end,
                   {A, B, C}
           end).

%% Inside option lists: badarg, whatever the bytes.
option_calls(Dir, Text, Path, Deadline) ->
    P = filename:join(Dir, "dst"),
    Calls = [fun() -> emmap:open(P, [read, {size, Text}]) end,
             fun() -> emmap:open(P, [read, Path]) end,
             fun() -> emmap:open(P, [read, {chmod, Path}]) end,
             fun() -> emmap_io:open(P, [read, {encoding, Text}]) end,
             fun() -> emmap_io:open(P, [read, Path]) end,
             fun() -> emmap_queue:open(P, 4096, [Path]) end],
    repeat(Deadline, fun(R) -> lists:all(fun(X) -> X =:= badarg end, R) end,
           fun(_) ->
                   [try F(), returned catch error:badarg -> badarg end || F <- Calls]
           end).

%% As queue messages, in a queue opened with `direct' (which has no effect).
queue_calls(Dir, Text, Path, Deadline) ->
    {ok, Q} = emmap_queue:open(filename:join(Dir, "queue"), 4096, [direct]),
    repeat(Deadline,
           fun({ok, {msg, T, [P]}, nil}) -> is_binary(T) andalso is_binary(P);
              (_) -> false
           end,
           fun(_) ->
                   R = emmap_queue:push(Q, {msg, Text, [Path]}, 1),
                   {R, emmap_queue:pop_and_purge(Q), emmap_queue:pop(Q)}
           end).

%% As blocks.
block_calls(Dir, Text, _Path, Deadline) ->
    {ok, M} = emmap:open(filename:join(Dir, "blocks"), 0, 1, [create, read, write, shared]),
    ok = emmap:init_block_storage(M, 64, #{max_blocks => 16}),
    repeat(Deadline,
           fun({A, B, true}) -> is_integer(A) andalso byte_size(B) =:= 64;
              (_) -> false
           end,
           fun(I) ->
                   A = emmap:store_block(M, binary:part(Text, I rem 64, 64)),
                   {A, emmap:read_block(M, A), emmap:free_block(M, A)}
           end).

%% Reading the rewritten file through emmap_io devices opened with `direct', which
%% convert what they read (latin1 to UTF-8 for a unicode request, UTF-8 to a list, ...).
io_read_calls(Dir, _Text, _Path, Deadline) ->
    Src = filename:join(Dir, "src"),
    {ok, L} = emmap_io:open(Src, [read, shared, direct, binary]),
    {ok, U} = emmap_io:open(Src, [read, shared, direct, binary, {encoding, unicode}]),
    {ok, UL} = emmap_io:open(Src, [read, shared, direct, list, {encoding, unicode}]),
    repeat(Deadline, fun(R) -> lists:all(fun answer/1, R) end,
           fun(I) ->
                   lists:append(
                     [[file:position(D, bof), io:get_chars(D, '', ?TEXT),
                       file:position(D, bof), io:get_line(D, ''), file:read(D, 100),
                       file:pread(D, 0, 200)]
                      ++ [X || I rem 16 =:= 0,              % term scans take longer
                               X <- [file:position(D, bof), io:read(D, ''),
                                     file:position(D, bof), io:fread(D, '', "~s")]]
                      || D <- [L, U, UL]])
           end).

%% A documented answer of an I/O call: data, eof, ok, {ok, _}, {error, _} (and `raised'
%% for io:put_chars, which raises for a device error).
answer(X) when is_binary(X); is_list(X) -> true;
answer(X) when X =:= ok; X =:= eof; X =:= raised -> true;
answer(X) when is_tuple(X), tuple_size(X) >= 2 -> element(1, X) =:= ok orelse element(1, X) =:= error;
answer(_) -> false.

%% Writing the rewritten bytes through emmap_io devices that convert them.
io_write_calls(Dir, Text, _Path, Deadline) ->
    {ok, D} = emmap_io:open(filename:join(Dir, "utf16"), 0, 4 * ?TEXT,
                            [create, read, write, shared, {encoding, utf16}]),
    {ok, D8} = emmap_io:open(filename:join(Dir, "utf8"), 0, 4 * ?TEXT,
                             [create, read, write, shared, {encoding, unicode}]),
    repeat(Deadline, fun(R) -> lists:all(fun answer/1, R) end,
           fun(_) ->
                   [file:position(D, bof), catch_raise(fun() -> io:put_chars(D, Text) end),
                    file:position(D8, bof), catch_raise(fun() -> io:put_chars(D8, [Text]) end),
                    file:pwrite(D8, 0, Text)]
           end).

%% io:put_chars raises for a device error (bytes that are not UTF-8, say).
catch_raise(F) ->
    try F() catch error:_ -> raised end.

%%%===========================================================================
%%% The test
%%%===========================================================================

direct_binaries_rewritten_meanwhile_test_() ->
    {timeout, 120, fun() ->
        Dir = emmap_test_lib:tmp_dir("direct"),
        Src = filename:join(Dir, "src"),
        Keep = filename:join(Dir, "keep" ++ lists:duplicate(?PATH - 4, $_)),
        try
            ok = file:write_file(Src, <<0:(?SIZE * 8)>>),
            ok = file:write_file(Keep, <<"sentinel">>),
            %% This VM is the other OS process that rewrites the bytes.
            {ok, M} = emmap:open(Src, [read, write, shared]),
            {Writer, WRef} = spawn_monitor(fun() -> flipper(M, lists:reverse(text_patterns()),
                                                            path_patterns(Dir), ?TEXT, 0) end),
            {Status, Out} = try emmap_test_lib:run_child(?MODULE, child_calls, [Dir, 3000],
                                                         #{line => false, timeout => 90000})
                            after
                                Writer ! stop,
                                receive {'DOWN', WRef, process, Writer, _} -> ok end
                            end,
            ok = emmap:close(M),
            io:format(user, "~n~s", [Out]),
            ?assertEqual(0, Status),
            ?assertMatch({match, _}, re:run(Out, "\nresult: ok\n"))
        after
            emmap_test_lib:rm_rf(Dir)
        end
    end}.
