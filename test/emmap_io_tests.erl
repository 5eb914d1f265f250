%%% Tests of emmap_io, the I/O device process over a mapping.
%%%
%%% Most tests are differential: the same calls go to an emmap_io pid over one file and to
%%% a `file:open(Path, [read, write, binary])' pid over a second file with the same bytes;
%%% the answers, the positions and the files' contents must be equal. Where the two are
%%% documented to differ (a write past the end of the mapping, a process that stays up
%%% after a failed request), the test says so and checks emmap_io's documented answer.
%%%
%%% The property (`prop_diff/1') runs random sequences of io:put_chars/format/get_line/
%%% get_chars/read/fread/setopts and file:read/read_line/write/pread/pwrite/position.
%%% After every call both devices are asked for their position (which also empties the
%%% OTP server's read-ahead buffer) and both files are read: positions and bytes must be
%%% equal. Writes that would not fit in the mapping go to emmap_io alone, which must refuse
%%% them and change nothing (the file pid would grow its file).
%%% A sequence stops being compared (the calls so far all had to agree) when:
%%%  - the OTP server has ended itself (it exits after a failed translation, e.g.
%%%    io:put_chars of a character above 255 to a latin1 device, or a read whose
%%%    characters do not fit the request's encoding); emmap_io must still be up;
%%%  - the device's encoding is unicode and the file is not valid UTF-8: the OTP server
%%%    then also rejects a read when invalid bytes merely sit in its 8 KiB read-ahead
%%%    after the characters asked for, which emmap_io (no read-ahead) does not copy.
%%% How many calls were compared and why sequences stopped is printed after the run.
-module(emmap_io_tests).

-include_lib("eunit/include/eunit.hrl").
-include_lib("kernel/include/file.hrl").

-include("emmap_proper.hrl").

-import(emmap_test_lib, [tmp_dir/1, rm_rf/1, with_file/2, eventually/1, mapped/1]).
-import(proper_types, [range/2, elements/1, exactly/1, frequency/1, list/1, oneof/1,
                       vector/2]).

%% For running by hand: proper:quickcheck(emmap_io_tests:prop_diff(shared)).
-export([prop_diff/1, case_gen/0]).
%% A get_until function that always wants more (for bad_requests_test).
-export([never_stops/2]).

-define(STATS, emmap_io_tests_stats).

%%%===========================================================================
%%% Utilities
%%%===========================================================================

%% Runs Fun(Device) on an OTP file pid and on an emmap_io pid over two files holding
%% Content; returns {RealResult, EmmapResult, RealFile, EmmapFile} (the files' bytes after
%% both devices are closed). EmOpts: options of emmap_io:open/2 besides read/write/shared.
both(Content, Fun) ->
    both(Content, [binary], Fun).

both(Content, EmOpts, Fun) ->
    Dir = tmp_dir("io"),
    P1 = filename:join(Dir, "real"),
    P2 = filename:join(Dir, "emmap"),
    ok = file:write_file(P1, Content),
    ok = file:write_file(P2, Content),
    {ok, R} = file:open(P1, [read, write, binary]),
    {ok, E} = emmap_io:open(P2, [read, write, shared | EmOpts]),
    case lists:member(binary, EmOpts) of
        true -> ok;
        false -> ok = io:setopts(R, [list])
    end,
    try
        RR = Fun(R),
        ER = Fun(E),
        _ = file:close(R),
        ok = file:close(E),
        {ok, B1} = file:read_file(P1),
        {ok, B2} = file:read_file(P2),
        {RR, ER, B1, B2}
    after
        rm_rf(Dir)
    end.

%% The same calls on both; both must answer the same and leave the same bytes.
%% Returns the (common) answers.
same(Content, Fun) ->
    same(Content, [binary], Fun).

same(Content, EmOpts, Fun) ->
    {RR, ER, B1, B2} = both(Content, EmOpts, Fun),
    ?assertEqual(RR, ER),
    ?assertEqual(B1, B2),
    ER.

%% A call's answer, or the exception it raised (class and reason; the io functions
%% put the device in the stack trace, which differs).
res(F) ->
    try F() catch C:R -> {raised, C, R} end.

%%%===========================================================================
%%% (a) Each function, by hand, on an emmap_io pid (and the same on a file pid)
%%%===========================================================================

put_chars_test() ->
    Res = same(<<"0123456789abcdef">>,
               fun(D) ->
                       [res(fun() -> io:put_chars(D, "h\x{e9}llo") end),
                        res(fun() -> io:put_chars(D, <<" w">>) end),
                        file:position(D, cur)]
               end),
    ?assertEqual([ok, ok, {ok, 7}], Res),
    {_, _, _, Bytes} = both(<<"0123456789abcdef">>, fun(D) -> io:put_chars(D, "h\x{e9}llo") end),
    %% A latin1 device stores one byte per character.
    ?assertEqual(<<"h", 16#e9, "llo56789abcdef">>, Bytes).

format_test() ->
    {_, _, _, Bytes} = both(binary:copy(<<".">>, 40),
                            fun(D) ->
                                    ok = io:format(D, "~p ~s|~w~n", [{a, 1}, "x", [1, 2]]),
                                    ok = io:nl(D),
                                    ok = io:write(D, {b, "c"}),
                                    file:position(D, cur)
                            end),
    ?assertEqual(<<"{a,1} x|[1,2]\n\n{b,[99]}", (binary:copy(<<".">>, 17))/binary>>, Bytes),
    same(binary:copy(<<".">>, 40),
         fun(D) ->
                 [res(fun() -> io:format(D, "~p~n", [[{x, 3.5}, <<"b">>]]) end),
                  %% A format that does not match its arguments: badarg, nothing written.
                  res(fun() -> io:format(D, "~p ~p", lists:reverse([x])) end),
                  file:position(D, cur)]
         end).

get_line_test() ->
    Content = <<"one\ntwo\r\nthree\rstill three\n\r\n\nlast">>,
    Expected = [<<"one\n">>, <<"two\n">>, <<"three\rstill three\n">>, <<"\n">>, <<"\n">>,
                <<"last">>, eof, eof],
    ?assertEqual(Expected,
                 same(Content, fun(D) -> [io:get_line(D, '') || _ <- Expected] end)),
    ?assertEqual([binary_to_list(L) || L <- Expected, L =/= eof] ++ [eof, eof],
                 same(Content, [list],
                      fun(D) -> [io:get_line(D, "prompt> ") || _ <- Expected] end)),
    %% file:read_line/1 goes through the same request.
    ?assertEqual([{ok, <<"one\n">>}, {ok, <<"two\n">>}],
                 same(Content, fun(D) -> [file:read_line(D), file:read_line(D)] end)).

%% Lines longer than the first read step (256 bytes) and than a few doublings of it, a
%% `\r\n' split over two steps, and a last line without a newline.
get_line_long_test() ->
    L1 = <<(binary:copy(<<"a">>, 255))/binary, "\r\n">>,
    L2 = <<(binary:copy(<<"b">>, 300000))/binary, "\n">>,
    L3 = binary:copy(<<"c">>, 5000),
    Res = same(<<L1/binary, L2/binary, L3/binary>>,
               fun(D) -> [io:get_line(D, ''), io:get_line(D, ''), io:get_line(D, ''),
                          io:get_line(D, ''), file:position(D, cur)] end),
    ?assertEqual([<<(binary:copy(<<"a">>, 255))/binary, "\n">>, L2, L3, eof,
                  {ok, 257 + 300001 + 5000}], Res).

get_chars_test() ->
    Res = same(<<"abcdef", 16#e9, "gh">>,
               fun(D) ->
                       [io:get_chars(D, '', 0), io:get_chars(D, '', 2),
                        file:position(D, cur), io:get_chars(D, '', 5),
                        io:get_chars(D, '', 100), io:get_chars(D, '', 1),
                        io:get_chars(D, '', 0), file:position(D, cur)]
               end),
    %% In binary mode, io:get_chars/3 asks for unicode: the latin1 byte 16#e9 comes back
    %% as the two bytes of its UTF-8 form.
    ?assertEqual([<<>>, <<"ab">>, {ok, 2}, <<"cdef", 16#c3, 16#a9>>, <<"gh">>, eof, <<>>,
                  {ok, 9}], Res),
    ?assertEqual(["ab", [$c, $d, $e, $f, 16#e9], "gh", eof],
                 same(<<"abcdef", 16#e9, "gh">>, [list],
                      fun(D) -> [io:get_chars(D, '', N) || N <- [2, 5, 100, 1]] end)).

read_term_test() ->
    Content = <<"{a, 1}. foo.\n\"str\" . [x|y].\n"
                "bad bad. 'q'.\n% a comment\n 3.5. unterminated">>,
    Calls = fun(D) ->
                    lists:append([[io:read(D, ''), file:position(D, cur)] || _ <- lists:seq(1, 9)])
            end,
    Res = same(Content, Calls),
    ?assertMatch([{ok, {a, 1}}, _, {ok, foo}, _, {ok, "str"}, _, {ok, [x | y]}, _,
                  {error, {_, erl_parse, _}}, _, {ok, q}, _, {ok, 3.5}, _,
                  {error, {_, erl_parse, _}}, _, eof, _], Res),
    ?assertEqual(Res, same(Content, [list], Calls)),
    %% io:read/3 reports where it ended.
    ?assertEqual([{ok, foo, 2}, {ok, bar, 2}, {eof, 3}],
                 same(<<"foo.\n\nbar.">>, fun(D) -> [io:read(D, '', 1), io:read(D, '', 1),
                                                     io:read(D, '', 3)] end)).

fread_test() ->
    Res = same(<<"12 abc 3.5 x">>,
               fun(D) -> [io:fread(D, '', "~d"), io:fread(D, '', "~a"), io:fread(D, '', "~f"),
                          io:fread(D, '', "~d"), file:position(D, cur)] end),
    ?assertMatch([{ok, [12]}, {ok, [abc]}, {ok, [3.5]}, {error, {fread, integer}}, _], Res).

setopts_getopts_test() ->
    Res = same(<<"h", 16#e9, "\nrest">>,
               fun(D) ->
                       [io:getopts(D),
                        io:setopts(D, [list]), io:getopts(D), io:get_line(D, ''),
                        file:position(D, 0),
                        io:setopts(D, [binary]), io:get_line(D, ''),
                        io:setopts(D, [{binary, false}]), file:read(D, 2),
                        io:setopts(D, [{encoding, utf8}]), io:getopts(D),
                        io:setopts(D, [latin1]), io:getopts(D),
                        io:setopts(D, [unicode, list]), io:getopts(D),
                        io:setopts(D, [{echo, true}]), io:setopts(D, [{encoding, klingon}]),
                        io:getopts(D)]
               end),
    ?assertEqual([[{binary, true}, {encoding, latin1}],
                  ok, [{binary, false}, {encoding, latin1}], [$h, 16#e9, $\n],
                  {ok, 0},
                  ok, <<"h", 16#c3, 16#a9, "\n">>,
                  ok, {ok, "re"},
                  ok, [{binary, false}, {encoding, unicode}],
                  ok, [{binary, false}, {encoding, latin1}],
                  ok, [{binary, false}, {encoding, unicode}],
                  {error, enotsup}, {error, badarg},
                  [{binary, false}, {encoding, unicode}]], Res).

%% The other io functions that go through the same requests.
more_io_functions_test() ->
    Content = <<"X = 1 + 2, Y. f(A) -> A.\n{t}. ", (binary:copy(<<".">>, 20))/binary>>,
    Res = same(Content,
               fun(D) ->
                       [io:parse_erl_exprs(D, ''), io:parse_erl_form(D, ''),
                        io:read(D, '', 1, []), file:position(D, cur),
                        io:fwrite(D, "~w", [ok]), file:position(D, cur),
                        file:position(D, 0), io:parse_erl_exprs(D, '', 5),
                        io:parse_erl_form(D, '', {7, 1})]
               end),
    ?assertMatch([{ok, [{match, _, _, _}, {var, _, 'Y'}], _},
                  {ok, {function, _, f, 1, _}, _},
                  {ok, {t}, _}, {ok, 30}, ok, {ok, 32}, {ok, 0},
                  {ok, [_, _], 5}, {ok, {function, {7, _}, f, 1, _}, {8, _}}], Res).

%% file:copy/2 with the device as the destination (copy_test has it as the source).
copy_to_device_test() ->
    {_, _, RealBytes, EmBytes} =
        both(binary:copy(<<"-">>, 20),
             fun(D) ->
                     with_file(<<"copied">>, fun(Src) -> {ok, 2} = file:position(D, 2),
                                                         {ok, 6} = file:copy(Src, D) end)
             end),
    ?assertEqual(<<"--copied------------">>, EmBytes),
    ?assertEqual(RealBytes, EmBytes).

%% With `direct', binaries read from a latin1 device point into the mapping.
direct_test() ->
    with_file(<<"0123456789">>,
              fun(P) ->
                      {ok, D} = emmap_io:open(P, [read, write, shared, direct, binary]),
                      {ok, B1} = file:pread(D, 0, 4),
                      {ok, 0} = file:position(D, 0),
                      B2 = io:get_chars(D, '', 4),
                      ok = file:pwrite(D, 0, <<"abcd">>),
                      ?assertEqual({<<"abcd">>, <<"abcd">>}, {B1, B2}),
                      ok = file:close(D)
              end).

%% Open options: list is the default, like file:open/2; binary and {encoding, E}.
open_options_test() ->
    with_file(<<"ab\ncd">>,
              fun(P) ->
                      {ok, D1} = emmap_io:open(P, [read]),
                      ?assertEqual([{binary, false}, {encoding, latin1}], io:getopts(D1)),
                      ?assertEqual("ab\n", io:get_line(D1, '')),
                      ok = file:close(D1),
                      %% A window of the file: bytes 1 and 2.
                      {ok, D2} = emmap_io:open(P, 1, 2, [read, binary, {encoding, utf8}]),
                      ?assertEqual([{binary, true}, {encoding, unicode}], io:getopts(D2)),
                      ?assertEqual(<<"b\n">>, io:get_line(D2, '')),
                      ?assertEqual(eof, io:get_line(D2, '')),
                      ok = file:close(D2)
              end).

file_read_write_test() ->
    Res = same(<<"0123456789">>,
               fun(D) ->
                       [file:read(D, 3), file:write(D, <<"ab">>), file:position(D, cur),
                        file:read(D, 0), file:read(D, 100), file:read(D, 1),
                        file:position(D, 2), file:write(D, ["x", <<"y">>, $z]),
                        file:position(D, bof), file:read(D, 10)]
               end),
    ?assertEqual([{ok, <<"012">>}, ok, {ok, 5}, {ok, <<>>}, {ok, <<"56789">>}, eof,
                  {ok, 2}, ok, {ok, 0}, {ok, <<"01xyz56789">>}], Res),
    ?assertEqual([{ok, "012"}, {ok, "345"}],
                 same(<<"0123456789">>, [list], fun(D) -> [file:read(D, 3), file:read(D, 3)] end)).

%% pread/pwrite on an I/O device move its position (they are position + read/write),
%% unlike on a raw file.
pread_pwrite_test() ->
    Res = same(<<"0123456789">>,
               fun(D) ->
                       [file:pread(D, 2, 3), file:position(D, cur),
                        file:pwrite(D, 7, <<"AB">>), file:position(D, cur),
                        file:pread(D, {bof, 1}, 2), file:pread(D, {cur, 1}, 2),
                        file:pread(D, {eof, -2}, 5), file:pread(D, cur, 1),
                        file:pread(D, 10, 1), file:pread(D, 20, 0), file:position(D, cur),
                        file:pread(D, -1, 1), file:pwrite(D, -1, <<"x">>),
                        file:position(D, cur), file:pread(D, 0, 10)]
               end),
    ?assertEqual([{ok, <<"234">>}, {ok, 5}, ok, {ok, 9}, {ok, <<"12">>}, {ok, <<"45">>},
                  {ok, <<"B9">>}, eof, eof, {ok, <<>>}, {ok, 20},
                  {error, einval}, {error, einval}, {ok, 20}, {ok, <<"0123456AB9">>}], Res).

pread_pwrite_list_test() ->
    Res = same(<<"0123456789">>,
               fun(D) ->
                       [file:pwrite(D, [{0, <<"a">>}, {5, "bc"}]),
                        file:pread(D, [{0, 2}, {4, 3}, {50, 1}]),
                        file:pwrite(D, [{1, <<"x">>}, {-1, <<"y">>}, {2, <<"z">>}]),
                        file:pread(D, [{0, 3}])]
               end),
    ?assertEqual([ok, {ok, [<<"a1">>, <<"4bc">>, eof]}, {error, {1, einval}},
                  {ok, [<<"ax2">>]}], Res).

position_test() ->
    Res = same(<<"0123456789">>,
               fun(D) ->
                       [file:position(D, 3), file:position(D, {cur, 2}), file:position(D, cur),
                        file:position(D, {eof, -1}), file:position(D, eof),
                        file:position(D, {bof, 4}), file:position(D, bof),
                        file:position(D, 15), file:read(D, 1),
                        file:position(D, -1), file:position(D, {cur, -100}),
                        file:position(D, cur), file:position(D, nonsense)]
               end),
    ?assertEqual([{ok, 3}, {ok, 5}, {ok, 5}, {ok, 9}, {ok, 10}, {ok, 4}, {ok, 0},
                  {ok, 15}, eof, {error, einval}, {error, einval}, {ok, 15},
                  {error, badarg}], Res).

requests_test() ->
    Res = same(<<"0123456789">>,
               fun(D) ->
                       [io:requests(D, [{put_chars, unicode, "ab"},
                                        {get_chars, unicode, '', 2}]),
                        file:position(D, cur),
                        io:requests(D, []),
                        io:requests(D, [{get_chars, unicode, '', 1}, {setopts, [{echo, true}]},
                                        {get_chars, unicode, '', 1}]),
                        file:position(D, cur)]
               end),
    ?assertEqual([<<"23">>, {ok, 4}, ok, {error, enotsup}, {ok, 5}], Res).

close_test() ->
    %% After close, a file pid and an emmap_io pid answer the same.
    Res = same(<<"abc">>,
               fun(D) ->
                       [file:close(D), is_process_alive(D), file:close(D),
                        file:read(D, 1), res(fun() -> io:get_line(D, '') end),
                        file:position(D, 0), res(fun() -> io:put_chars(D, "x") end),
                        file:pread(D, 0, 1)]
               end),
    ?assertEqual([ok, false, ok, {error, terminated}, {error, terminated},
                  {error, terminated}, {raised, error, terminated}, {error, terminated}], Res).

%% A file:open pid is not linked to its owner; an emmap_io pid is (issue 8).
close_releases_mapping_test() ->
    with_file(binary:copy(<<"z">>, 8192),
              fun(P) ->
                      {ok, D} = emmap_io:open(P, [read, write, shared]),
                      ?assert(mapped(P) >= 1),
                      {links, Links} = process_info(D, links),
                      ?assert(lists:member(self(), Links)),
                      MRef = monitor(process, D),
                      ok = file:close(D),
                      receive {'DOWN', MRef, process, D, Why} -> ?assertEqual(normal, Why) end,
                      ?assertEqual(0, mapped(P))
              end).

%% The documented difference: a write that does not fit in the mapping answers
%% {error, einval} (io:put_chars/format raise badarg, as for any device error), writes
%% nothing and leaves the position alone; a file would grow.
write_past_end_test() ->
    with_file(<<"0123456789">>,
              fun(P) ->
                      {ok, D} = emmap_io:open(P, [read, write, shared, binary]),
                      {ok, 8} = file:position(D, 8),
                      ?assertEqual({error, einval}, file:write(D, <<"abc">>)),
                      ?assertEqual({ok, 8}, file:position(D, cur)),
                      ?assertEqual({raised, error, badarg},
                                   res(fun() -> io:put_chars(D, "abc") end)),
                      ?assertEqual({raised, error, badarg},
                                   res(fun() -> io:format(D, "~p", [abc]) end)),
                      ?assertEqual({error, einval}, file:pwrite(D, 9, <<"xy">>)),
                      %% an empty write needs no room: ok past the end, as for a file pid
                      ?assertEqual(ok, file:pwrite(D, 11, <<>>)),
                      ?assertEqual({ok, 11}, file:position(D, cur)),  % a pwrite moves it
                      {ok, 8} = file:position(D, 8),
                      ?assertEqual(ok, file:write(D, <<"ab">>)),  % exactly to the end
                      ?assertEqual({ok, 10}, file:position(D, cur)),
                      ?assertEqual({error, {1, einval}}, file:pwrite(D, [{0, "A"}, {10, "B"}])),
                      ok = file:close(D),
                      ?assertEqual({ok, <<"A1234567ab">>}, file:read_file(P))
              end).

read_only_test() ->
    with_file(<<"0123">>,
              fun(P) ->
                      {ok, D} = emmap_io:open(P, [read, binary]),
                      ?assertEqual({error, eacces}, file:write(D, <<"x">>)),
                      ?assertEqual({error, eacces}, file:pwrite(D, 0, <<"x">>)),
                      ?assertEqual({raised, error, badarg}, res(fun() -> io:put_chars(D, "x") end)),
                      ?assertEqual({ok, <<"0123">>}, file:read(D, 10)),
                      ok = file:close(D),
                      ?assertEqual({ok, <<"0123">>}, file:read_file(P))
              end).

%% Unicode: characters are counted as characters, written as UTF-8, and a character
%% that a latin1 request (file:read/2) cannot hold is a translation error.
unicode_test() ->
    Content = <<"a\x{e9}\x{20ac}\n\x{1f600}z"/utf8>>,
    Res = same(Content,
               fun(D) ->
                       ok = io:setopts(D, [{encoding, unicode}]),
                       [io:get_chars(D, '', 2), file:position(D, cur), file:position(D, 0),
                        file:read(D, 2), io:get_line(D, ''), io:get_chars(D, '', 5),
                        io:get_chars(D, '', 1), file:position(D, 3),
                        %% Last: the OTP server ends itself after this error.
                        file:read(D, 1)]
               end),
    ?assertEqual([<<"a\x{e9}"/utf8>>, {ok, 3}, {ok, 0}, {ok, <<"a", 16#e9>>},
                  <<"\x{20ac}\n"/utf8>>, <<"\x{1f600}z"/utf8>>, eof, {ok, 3},
                  {error, {no_translation, unicode, latin1}}], Res),
    ?assertEqual([[$a, 16#e9], [16#20ac, $\n], [16#1f600, $z]],
                 same(Content, [list, {encoding, unicode}],
                      fun(D) ->
                              ok = io:setopts(D, [{encoding, unicode}]),
                              [io:get_chars(D, '', 2), io:get_line(D, ''),
                               io:get_chars(D, '', 9)]
                      end)),
    {_, _, _, Bytes} = both(binary:copy(<<".">>, 12), [binary, {encoding, unicode}],
                            fun(D) ->
                                    ok = io:setopts(D, [{encoding, unicode}]),
                                    ok = io:put_chars(D, [16#20ac, $x]),
                                    ok = io:format(D, "~ts", [[16#e9]]),
                                    file:write(D, <<16#e9>>)
                            end),
    ?assertEqual(<<"\x{20ac}x\x{e9}\x{e9}"/utf8, "....">>, Bytes).

%% io:put_chars of a character above 255 to a latin1 device: the same error as from a
%% file pid. The OTP server then ends itself; emmap_io stays up and wrote nothing.
no_translation_test() ->
    {R, E, B1, B2} = both(<<"0123">>,
                          fun(D) ->
                                  A = res(fun() -> io:put_chars(D, [$a, 1000]) end),
                                  timer:sleep(20),
                                  {A, is_process_alive(D), file:read(D, 4)}
                          end),
    ?assertEqual({{raised, error, no_translation}, false, {error, terminated}}, R),
    ?assertEqual({{raised, error, no_translation}, true, {ok, <<"0123">>}}, E),
    ?assertEqual(B1, B2).

%% Bytes that are not UTF-8 on a unicode device. At the start of a read (a position in
%% the middle of a character) both devices answer the same; see the module doc for the
%% case where only the OTP server complains.
invalid_unicode_test() ->
    Content = <<"\x{e9}\x{e9}. x"/utf8>>,
    Calls = [fun(D) -> io:get_chars(D, '', 1) end,
             fun(D) -> io:get_line(D, '') end,
             fun(D) -> file:read(D, 1) end,
             fun(D) -> io:read(D, '') end],
    Res = [same(Content,
                fun(D) ->
                        ok = io:setopts(D, [{encoding, unicode}]),
                        {ok, 1} = file:position(D, 1),
                        res(fun() -> C(D) end)
                end) || C <- Calls],
    ?assertEqual([{error, invalid_unicode}, {error, {no_translation, unicode, unicode}},
                  {error, invalid_unicode}, {error, tokens}], Res),
    %% A last character cut off by the end cannot be converted.
    ?assertEqual([{error, {no_translation, unicode, unicode}}],
                 same(<<16#c3>>, fun(D) -> ok = io:setopts(D, [{encoding, unicode}]),
                                           [io:get_chars(D, '', 1)] end)),
    ?assertEqual([{error, {no_translation, unicode, unicode}}],
                 same(<<"ab", 16#c3>>, fun(D) -> ok = io:setopts(D, [{encoding, unicode}]),
                                                 [io:get_chars(D, '', 5)] end)),
    %% Invalid bytes reached by io:read after it started: emmap_io's error names itself.
    with_file(<<"foo(\n", 16#ff, ").">>,
              fun(P) ->
                      {ok, D} = emmap_io:open(P, [read, {encoding, unicode}]),
                      {error, {Loc, emmap_io, invalid_unicode} = Info} = io:read(D, ''),
                      ?assertEqual(2, Loc),
                      ?assertMatch([_ | _], emmap_io:format_error(element(3, Info))),
                      ok = file:close(D)
              end).

%% UTF-16 and UTF-32 devices, over text in that encoding.
utf16_utf32_test_() ->
    [{atom_to_list(E) ++ atom_to_list(End),
      fun() ->
              Enc = {E, End},
              Text = unicode:characters_to_binary("ab\x{e9}\r\n\x{1f600}{x, 1}. \x{20ac}\nend",
                                                  unicode, Enc),
              Res = same(<<Text/binary, (binary:copy(<<0>>, 24))/binary>>,
                         fun(D) ->
                                 ok = io:setopts(D, [{encoding, Enc}]),
                                 [io:get_chars(D, '', 2), io:get_line(D, ''),
                                  io:get_chars(D, '', 1), io:read(D, ''), io:get_line(D, ''),
                                  file:position(D, cur),
                                  io:put_chars(D, "\x{20ac}!"),
                                  file:position(D, 0), file:read(D, 2)]
                         end),
              ?assertMatch([<<"ab">>, <<"\x{e9}\n"/utf8>>, <<"\x{1f600}"/utf8>>, {ok, {x, 1}},
                            <<"\x{20ac}\n"/utf8>>, {ok, _}, ok, {ok, 0}, {ok, <<"ab">>}], Res)
      end} || E <- [utf16, utf32], End <- [big, little]].

%% Requests forwarded to the handle: the pid answers what the same call on the handle
%% answers. truncate and allocate are compared with a twin handle in the same state (two
%% equal files, same position); emmap may implement them or not, so no fixed answer is
%% expected here. A call the handle's module lacks (undef) answers {error, enotsup}.
forwarded_test() ->
    Dir = tmp_dir("io"),
    try
        [P1, P2] = [filename:join(Dir, N) || N <- ["a", "b"]],
        Content = binary:copy(<<"0123456789">>, 10),
        ok = file:write_file(P1, Content),
        ok = file:write_file(P2, Content),
        {ok, H1} = emmap:open(P1, [read, write, shared]),
        {ok, H2} = emmap:open(P2, [read, write, shared]),
        {ok, D} = emmap_io:from_handle(H1, [binary]),
        Direct = fun(F) -> try F() catch error:undef -> {error, enotsup};
                                         _:_ -> {error, badarg} end end,
        ?assertEqual(ok, file:sync(D)),
        ?assertEqual(ok, file:datasync(D)),
        ?assertEqual(ok, file:advise(D, 0, 10, sequential)),
        ?assertEqual(file:advise(H2, 0, 10, will_need), file:advise(D, 0, 10, will_need)),
        ?assertEqual({error, badarg}, file:advise(D, 0, 10, no_such_advice)),
        %% The same handle's answer (H2's file is another inode).
        ?assertEqual(Direct(fun() -> file:read_file_info(H1, [{time, posix}]) end),
                     file:read_file_info(D, [{time, posix}])),
        {ok, 40} = file:position(D, 40),
        {ok, 40} = file:position(H2, 40),
        ?assertEqual(Direct(fun() -> file:allocate(H2, 0, 200) end), file:allocate(D, 0, 200)),
        ?assertEqual(Direct(fun() -> file:truncate(H2) end), file:truncate(D)),
        ?assertEqual(file:position(H2, cur), file:position(D, cur)),
        ?assertEqual(maps:get(size, emmap:info(H2)), maps:get(size, emmap:info(H1))),
        ?assertEqual(file:pread(H2, 0, 200), file:pread(D, 0, 200)),
        ok = file:close(D),
        ok = emmap:close(H2),
        ?assertEqual(file:read_file(P2), file:read_file(P1))
    after
        rm_rf(Dir)
    end.

copy_test() ->
    with_file(<<"copy me, please">>,
              fun(P) ->
                      {ok, D} = emmap_io:open(P, [read, binary]),
                      Dest = P ++ ".copy",
                      ?assertEqual({ok, 15}, file:copy(D, Dest)),
                      ?assertEqual({ok, <<"copy me, please">>}, file:read_file(Dest)),
                      ok = file:delete(Dest),
                      ok = file:close(D)
              end).

geometry_and_unknown_requests_test() ->
    with_file(<<"x">>,
              fun(P) ->
                      {ok, D} = emmap_io:open(P, [read]),
                      ?assertEqual({error, enotsup}, io:columns(D)),
                      ?assertEqual({error, enotsup}, io:rows(D)),
                      ?assertEqual({error, request}, io:request(D, {get_password, unicode})),
                      ?assertEqual({error, request}, io:request(D, {no, such, request})),
                      ?assertEqual({error, request}, file_request(D, {no_such_request})),
                      ?assertEqual("x", io:get_line(D, '')),
                      ok = file:close(D)
              end).

%% The request forms of clients from before OTP R13 (no encoding: latin1).
old_forms_test() ->
    Res = same(<<"abcdef\nxyz">>,
               fun(D) ->
                       [io:request(D, {get_chars, '', 2}), io:request(D, {get_line, ''}),
                        io:request(D, {put_chars, <<"XY">>}),
                        io:request(D, {put_chars, io_lib, format, ["~w", [z]]}),
                        file:position(D, 0),
                        io:request(D, {get_until, '', io_lib, collect_chars, [3]})]
               end),
    ?assertEqual([<<"ab">>, <<"cdef\n">>, ok, ok, {ok, 0}, <<"abc">>], Res).

file_request(Pid, Request) ->
    raw_request(file_request, Pid, Request).

from_handle_test() ->
    with_file(<<"line one\nline two\n">>,
              fun(P) ->
                      {ok, H} = emmap:open(P, [read, write, shared]),
                      {ok, D} = emmap_io:from_handle(H),
                      ?assertEqual("line one\n", io:get_line(D, '')),
                      %% One position, shared with the handle.
                      ?assertEqual({ok, 9}, file:position(H, cur)),
                      {ok, 14} = file:position(H, 14),
                      ?assertEqual("two\n", io:get_line(D, '')),
                      %% The handle can be grown under the device: then a write that did
                      %% not fit does.
                      {ok, 18} = file:position(D, eof),
                      ?assertEqual({error, einval}, file:write(D, "more\n")),
                      {ok, 23} = emmap:resize(H, 23),
                      ?assertEqual(ok, file:write(D, "more\n")),
                      {ok, 9} = file:position(D, 9),
                      ?assertEqual(["line two\n", "more\n", eof],
                                   [io:get_line(D, '') || _ <- [1, 2, 3]]),
                      ok = file:close(D),
                      %% The process owned the handle: it is closed.
                      ?assertEqual({error, closed}, emmap:pread(H, 0, 1)),
                      ?assertEqual({error, closed}, emmap_io:from_handle(H)),
                      ?assertError(badarg, emmap_io:from_handle(not_a_handle)),
                      ?assertError(badarg, emmap_io:from_handle(H, [bogus])),
                      ?assertError(badarg, emmap_io:from_handle(H, [{encoding, klingon}])),
                      ?assertError(badarg, emmap_io:from_handle(H, [binary | list]))
              end).

open_errors_test() ->
    with_file(<<"x">>,
              fun(P) ->
                      ?assertError(badarg, emmap_io:open(P, notalist)),
                      ?assertError(badarg, emmap_io:open(P, [read | write])),
                      ?assertError(badarg, emmap_io:open(P, [no_such_option])),
                      ?assertError(badarg, emmap_io:open(P, [{encoding, klingon}])),
                      ?assertError(badarg, emmap_io:open(P, -1, 0, [read])),
                      ?assertError(badarg, emmap_io:open(make_ref(), [read])),
                      ?assertEqual({error, enoent}, emmap_io:open(P ++ ".missing", [read])),
                      ?assertEqual({error, einval}, emmap_io:open(P, 0, 5, [read])),
                      %% Failed opens leave nothing behind: no process, no message.
                      process_flag(trap_exit, true),
                      {error, enoent} = emmap_io:open(P ++ ".missing", [read]),
                      {'EXIT', _} = (catch emmap_io:open(P, [no_such_option])),
                      process_flag(trap_exit, false),
                      receive Msg -> ?assertEqual(no_message, Msg) after 50 -> ok end
              end).

%% The README section's example runs as written (with its file in a name of our own) and
%% prints what it says.
readme_example_test() ->
    Text = emmap_readme:block("## As an I/O device: emmap_io", "erlang"),
    emmap_test_lib:with_path(fun(P) ->
        Example = emmap_readme:replace_path(Text, "/tmp/emmap_io_example.txt", P),
        Expected = emmap_readme:expected_print(Example),
        ?assertEqual("19 {point,1,2} \"hello\\n\" <<\"{point\">>\n", Expected),
        ?assertEqual(Expected, emmap_readme:eval_printing(Example)),
        ?assertEqual({error, enoent}, file:read_file(P))
    end).

%%%===========================================================================
%%% (c) Owner, links, concurrency, bad requests
%%%===========================================================================

%% When the owner exits (any reason), the process closes the mapping and exits with the
%% owner's reason; the data written is in the file.
owner_exit_test_() ->
    [{lists:flatten(io_lib:format("owner exits: ~p", [How])), fun() -> owner_exit(How) end}
     || How <- [normal, {shutdown, bye}, some_failure, kill]].

owner_exit(How) ->
    with_file(<<>>,
              fun(P) ->
                      ok = file:delete(P),
                      Self = self(),
                      Owner = spawn(fun() ->
                                            {ok, D} = emmap_io:open(P, [create, read, write, shared,
                                                                        {size, 4096}]),
                                            ok = io:put_chars(D, "persisted"),
                                            Self ! {device, D},
                                            receive go -> exit(How) end
                                    end),
                      D = receive {device, Dev} -> Dev end,
                      ?assert(mapped(P) >= 1),
                      MRef = monitor(process, D),
                      case How of
                          kill -> exit(Owner, kill);
                          _ -> Owner ! go
                      end,
                      Why = receive {'DOWN', MRef, process, D, W} -> W end,
                      Expected = case How of
                                     kill -> killed;
                                     _ -> How
                                 end,
                      ?assertEqual(Expected, Why),
                      ?assertEqual(0, mapped(P)),
                      {ok, <<"persisted", _/binary>>} = file:read_file(P)
              end).

%% The link works both ways: if the device is killed, an owner that traps exits is told
%% (and the mapping, referenced by nothing else, is released).
link_test() ->
    with_file(binary:copy(<<"k">>, 4096),
              fun(P) ->
                      Self = self(),
                      Owner = spawn(fun() ->
                                            process_flag(trap_exit, true),
                                            {ok, D} = emmap_io:open(P, [read, write, shared]),
                                            Self ! {device, D},
                                            receive {'EXIT', D, Why} -> Self ! {exit, Why} end
                                    end),
                      D = receive {device, Dev} -> Dev end,
                      ?assert(mapped(P) >= 1),
                      exit(D, kill),
                      ?assertEqual(killed, receive {exit, W} -> W after 5000 -> timeout end),
                      ?assert(eventually(fun() -> mapped(P) =:= 0 end)),
                      exit(Owner, kill)
              end).

%% Exit signals from processes other than the owner: `normal' is ignored, another reason
%% stops the device (mapping closed first), as for a process that does not trap exits.
other_exit_signals_test() ->
    with_file(binary:copy(<<"s">>, 4096),
              fun(P) ->
                      {ok, D} = emmap_io:open(P, [read, write, shared]),
                      exit(D, normal),
                      ?assertEqual("ss", io:get_chars(D, '', 2)),
                      MRef = monitor(process, D),
                      unlink(D),
                      exit(D, shutdown),
                      ?assertEqual(shutdown, receive {'DOWN', MRef, _, _, W} -> W end),
                      ?assertEqual(0, mapped(P))
              end).

%% Many clients at once: every request is done whole, in some order. 8 writers append 100
%% fixed-width records each at the shared position; then 8 readers take lines until eof.
concurrent_clients_test() ->
    NW = 8, NR = 100, W = 16,
    with_file(binary:copy(<<"-">>, NW * NR * W),
              fun(P) ->
                      {ok, D} = emmap_io:open(P, [read, write, shared, binary]),
                      Record = fun(C, I) -> iolist_to_binary(io_lib:format("c~2..0w r~4..0w .....~n", [C, I])) end,
                      16 = byte_size(Record(1, 1)),
                      run_all([fun() -> [ok = io:put_chars(D, Record(C, I)) || I <- lists:seq(1, NR)] end
                               || C <- lists:seq(1, NW)]),
                      {ok, All} = file:read_file(P),
                      Records = [binary_part(All, O, W) || O <- lists:seq(0, byte_size(All) - 1, W)],
                      Expected = lists:sort([Record(C, I) || C <- lists:seq(1, NW), I <- lists:seq(1, NR)]),
                      ?assertEqual(Expected, lists:sort(Records)),
                      {ok, 0} = file:position(D, 0),
                      Self = self(),
                      run_all([fun() -> Self ! {lines, read_lines(D, [])} end || _ <- lists:seq(1, NW)]),
                      Read = lists:append([receive {lines, L} -> L end || _ <- lists:seq(1, NW)]),
                      ?assertEqual(Expected, lists:sort(Read)),
                      ok = file:close(D)
              end).

read_lines(D, Acc) ->
    case io:get_line(D, '') of
        eof -> Acc;
        Line -> read_lines(D, [Line | Acc])
    end.

run_all(Funs) ->
    Refs = [element(2, spawn_monitor(F)) || F <- Funs],
    [receive {'DOWN', R, process, _, Why} -> ?assertEqual(normal, Why) end || R <- Refs],
    ok.

%% Malformed requests, random terms as requests and stray messages: each request gets an
%% answer, and the device keeps working with its data and position intact.
bad_requests_test() ->
    with_file(<<"0123456789">>,
              fun(P) ->
                      {ok, D} = emmap_io:open(P, [read, write, shared, binary]),
                      {ok, 3} = file:position(D, 3),
                      Bad = [{put_chars, unicode, foo}, {put_chars, latin1, [1000]},
                             {put_chars, unicode, [-1]}, {put_chars, klingon, "x"},
                             {put_chars, unicode, no_module, f, []},
                             {put_chars, unicode, erlang, binary_to_term, [<<>>]},
                             {get_chars, unicode, '', -1}, {get_chars, unicode, '', foo},
                             {get_line, klingon, ''},
                             {get_until, unicode, '', no_module, f, []},
                             {get_until, unicode, '', erlang, error, [x]},
                             {get_until, unicode, '', ?MODULE, never_stops, []},
                             {setopts, foo}, {setopts, [binary | list]}, {setopts, [{binary, 7}]},
                             {requests, foo}, {requests, [getopts | bad]},
                             {requests, [{put_chars, latin1, <<"ab">>}, bad]},
                             {get_geometry, rows}, getopts, [], 42, {}],
                      IoReplies = [io:request(D, B) || B <- Bad],
                      ?assertEqual([{error, badarg}, {error, badarg},
                                    {error, badarg}, {error, request},
                                    {error, f}, {error, binary_to_term},
                                    {error, request}, {error, request},
                                    {error, request},
                                    {error, f}, {error, error}, {error, never_stops},
                                    {error, request}, {error, badarg}, {error, badarg},
                                    {error, request}, {error, request},
                                    {error, request},
                                    {error, enotsup}, [{binary, true}, {encoding, latin1}],
                                    {error, request}, {error, request}, {error, request}],
                                   IoReplies),
                      %% The one good request in the list above did its work.
                      ?assertEqual({ok, 5}, file:position(D, cur)),
                      {ok, 3} = file:position(D, 3),
                      FileBad = [{pread, foo, 1}, {pread, 0, -1}, {pwrite, foo, <<"x">>},
                                 {pwrite, 0, [1000]}, {pwrite, 0, foo}, {position, {bof, x}},
                                 {advise, a, b, c}, {read_handle_info, foo},
                                 pread, {}],
                      FileReplies = [file_request(D, B) || B <- FileBad],
                      ?assertEqual([{error, badarg}, {error, request}, {error, badarg},
                                    {error, badarg}, {error, badarg}, {error, badarg},
                                    {error, badarg}, {error, badarg},
                                    {error, request}, {error, request}], FileReplies),
                      %% Random terms, as I/O and as file requests (no {put_chars, ...}
                      %% or {get_until, ...} with a module: those run the client's code).
                      %% Each gets an answer.
                      Terms = [T || I <- lists:seq(1, 300),
                                    {ok, T} <- [proper_gen:pick(proper_types:any(), I rem 20)],
                                    safe_random_request(T)],
                      ?assert(length(Terms) > 250),
                      [?assertNotEqual(no_reply, raw_request(io_request, D, T)) || T <- Terms],
                      [?assertNotEqual(no_reply, raw_request(file_request, D, T)) || T <- Terms],
                      [D ! M || M <- [hello, {io_request, not_a_pid, x, getopts},
                                      {file_request, not_a_pid, x, close}, {'EXIT', x}]],
                      ?assert(is_process_alive(D)),
                      ok = io:setopts(D, [binary, {encoding, latin1}]),
                      ?assertEqual({ok, 3}, file:position(D, cur)),
                      ?assertEqual({ok, <<"012ab56789">>}, file:pread(D, 0, 10)),
                      ok = file:close(D)
              end).

%% One request as the io and file modules send it; `no_reply' after 5 s.
raw_request(Tag, Pid, Request) ->
    MRef = monitor(process, Pid),
    Pid ! {Tag, self(), MRef, Request},
    receive
        {io_reply, MRef, Reply} -> demonitor(MRef, [flush]), Reply;
        {file_reply, MRef, Reply} -> demonitor(MRef, [flush]), Reply;
        {'DOWN', MRef, _, _, _} -> {error, terminated}
    after 5000 -> no_reply
    end.

safe_random_request(T) when is_tuple(T), tuple_size(T) >= 4 ->
    not lists:member(element(1, T), [put_chars, get_until]);
safe_random_request(_) ->
    true.

never_stops(Cont, _Chars) -> {more, Cont}.

%%%===========================================================================
%%% (b) Differential property: random sequences against a file:open pid
%%%===========================================================================

diff_test_() ->
    {timeout, 300,
     fun() ->
             ets:new(?STATS, [named_table, public]),
             try
                 T0 = erlang:monotonic_time(millisecond),
                 [?assert(proper:quickcheck(prop_diff(V), [{numtests, N}, {max_size, 40},
                                                          {to_file, user}]))
                  || {V, N} <- [{shared, 600}, {direct, 200}]],
                 report_stats(erlang:monotonic_time(millisecond) - T0)
             after
                 ets:delete(?STATS)
             end
     end}.

report_stats(Ms) ->
    Get = fun(K) -> case ets:lookup(?STATS, K) of [{_, V}] -> V; [] -> 0 end end,
    Seqs = Get(sequences),
    io:format(user, "~nemmap_io differential: ~p sequences, ~p calls compared "
              "(~p writes past the end checked on emmap_io alone), ~p ms; sequences ended: "
              "~p complete, ~p OTP server gone, ~p file not UTF-8 on a unicode device~n",
              [Seqs, Get(calls), Get(overflow), Ms, Get(complete), Get(ref_stopped),
               Get(not_utf8)]),
    io:format(user, "OTP server ended by: ~p~n",
              [[{Name, N} || {{stopped_by, Name}, N} <- ets:tab2list(?STATS)]]),
    %% The property must be exercising something: most sequences run to their end.
    ?assert(Seqs >= 800),
    ?assert(Get(complete) * 2 >= Seqs),
    ?assert(Get(calls) >= 10 * Seqs).

bump(K) -> bump(K, 1).
bump(K, N) ->
    try ets:update_counter(?STATS, K, N, {K, 0}) catch error:badarg -> ok end.

prop_diff(Variant) ->
    ?FORALL({Enc, Mode, Content, Ops}, case_gen(),
            run_case(Variant, Enc, Mode, Content, Ops)).

%% {Encoding, Mode, Content, Ops}: on a unicode device the content is UTF-8.
case_gen() ->
    ?BIND(Enc, elements([latin1, latin1, unicode]),
          ?BIND(Chunks, content_gen(Enc),
                begin
                    %% A mapping has at least one byte.
                    Content = case iolist_to_binary(Chunks) of
                                  <<>> -> <<"x\n">>;
                                  C -> C
                              end,
                    {exactly(Enc), elements([binary, list]), exactly(Content),
                     ?BIND(N, range(5, 60), vector(N, op_gen(byte_size(Content))))}
                end)).

%% The Debian build of PropEr calls erlang:get_stacktrace/0 when a property raises, so
%% exceptions are reported here.
run_case(Variant, Enc, Mode, Content, Ops) ->
    {Verdict, Trace} =
        try run_case1(Variant, Enc, Mode, Content, Ops)
        catch C:R:St -> {{exception, C, R, St}, []}
        end,
    ?WHENFAIL(io:format(user, "~nVariant ~p, encoding ~p, mode ~p~nContent (~p bytes): ~p~n"
                        "Verdict: ~p~nTrace (op, OTP answer, emmap_io answer):~n~s",
                        [Variant, Enc, Mode, byte_size(Content), Content, Verdict,
                         [io_lib:format("  ~p~n    -> ~p~n    -> ~p~n", [O, A, B])
                          || {O, A, B} <- lists:reverse(Trace)]]),
              Verdict =:= ok).

em_opts(shared) -> [read, write, shared, binary];
em_opts(direct) -> [read, write, shared, direct, binary].

run_case1(Variant, Enc, Mode, Content, Ops) ->
    Dir = tmp_dir("io"),
    P1 = filename:join(Dir, "real"),
    P2 = filename:join(Dir, "emmap"),
    try
        ok = file:write_file(P1, Content),
        ok = file:write_file(P2, Content),
        {ok, R} = file:open(P1, [read, write, binary]),
        {ok, E} = emmap_io:open(P2, em_opts(Variant)),
        put(devices, [R, E]),
        Setup = [{setopts, [{encoding, Enc}]}, {setopts, [Mode]}],
        [ok = do(Op, R) || Op <- Setup],
        [ok = do(Op, E) || Op <- Setup],
        bump(sequences),
        steps(Ops, R, E, P1, P2, byte_size(Content), [])
    after
        [_ = file:close(D) || D <- get(devices)],
        rm_rf(Dir)
    end.

steps([], R, E, P1, P2, _Size, Trace) ->
    bump(complete),
    {final_check(R, E, P1, P2), Trace};
steps([Op | Ops], R, E, P1, P2, Size, Trace) ->
    {ok, Raw} = file:read_file(P1),
    Enc = proplists:get_value(encoding, io:getopts(R)),
    case Enc =:= unicode andalso not is_binary(unicode:characters_to_binary(Raw, unicode)) of
        true ->
            bump(not_utf8),
            {final_check(R, E, P1, P2), Trace};
        false ->
            {ok, Pos} = file:position(R, cur),
            bump(calls),
            case fits(Op, Pos, Size, Enc) of
                true ->
                    A = do(Op, R),
                    B = do(Op, E),
                    Trace1 = [{Op, A, B} | Trace],
                    if
                        A =/= B ->
                            {{different_answers, A, B}, Trace1};
                        true ->
                            case is_process_alive(R) of
                                false ->
                                    bump(ref_stopped),
                                    bump({stopped_by, op_name(Op)}),
                                    {check_all([{emmap_io_alive, is_process_alive(E), true},
                                                {contents, file:read_file(P2), file:read_file(P1)}]),
                                     Trace1};
                                true ->
                                    next(Ops, R, E, P1, P2, Size, Trace1)
                            end
                    end;
                false ->
                    %% Does not fit in the mapping: emmap_io refuses and changes nothing;
                    %% the file pid (which would grow the file) is not asked.
                    bump(overflow),
                    B = do(Op, E),
                    Trace1 = [{Op, not_asked, B} | Trace],
                    case check_all([{overflow_answer, B, overflow_answer(Op)},
                                    {position, file:position(E, cur), {ok, Pos}}]) of
                        ok -> next(Ops, R, E, P1, P2, Size, Trace1);
                        Bad -> {Bad, Trace1}
                    end
            end
    end.

op_name(Op) when is_tuple(Op) -> element(1, Op);
op_name(Op) -> Op.

next(Ops, R, E, P1, P2, Size, Trace) ->
    case check_all([{position, file:position(E, cur), file:position(R, cur)},
                    {contents, file:read_file(P2), file:read_file(P1)}]) of
        ok -> steps(Ops, R, E, P1, P2, Size, Trace);
        Bad -> {Bad, Trace}
    end.

final_check(R, E, P1, P2) ->
    check_all([{position, file:position(E, cur), file:position(R, cur)},
               {getopts, io:getopts(E), io:getopts(R)},
               {contents, file:read_file(P2), file:read_file(P1)}]).

check_all(Checks) ->
    case [{Name, Got, Expected} || {Name, Got, Expected} <- Checks, Got =/= Expected] of
        [] -> ok;
        Failed -> {failed, Failed}
    end.

%% Whether a write fits in the file (whose size never changes: writes that would grow it
%% are not sent to the file pid). Requests that write nothing always "fit", empty writes
%% past the end too.
fits(Op, Pos, Size, Enc) ->
    case write_of(Op, Pos, Size, Enc) of
        {_Target, 0} -> true;
        {Target, Bytes} when Target >= 0 -> Target + Bytes =< Size;
        _ -> true
    end.

%% {Target, Bytes} for a request that writes (Target < 0: refused by both), else none.
write_of({put_chars, Chars}, Pos, _Size, Enc) ->
    encoded(Pos, Chars, unicode, Enc);
write_of({format, Fmt, Args}, Pos, _Size, Enc) ->
    encoded(Pos, io_lib:format(Fmt, Args), unicode, Enc);
write_of({write, Bin}, Pos, _Size, Enc) ->
    encoded(Pos, Bin, latin1, Enc);
write_of({pwrite, At, Bin}, Pos, Size, Enc) ->
    encoded(target(At, Pos, Size), Bin, latin1, Enc);
write_of(_, _, _, _) ->
    none.

encoded(Target, Chars, From, Enc) ->
    case unicode:characters_to_binary(Chars, From, Enc) of
        B when is_binary(B) -> {Target, byte_size(B)};
        _ -> none                               % a translation error: nothing is written
    end.

target(N, _Pos, _Size) when is_integer(N) -> N;
target(bof, _, _) -> 0;
target(cur, Pos, _) -> Pos;
target(eof, _, Size) -> Size;
target({bof, D}, _, _) -> D;
target({cur, D}, Pos, _) -> Pos + D;
target({eof, D}, _, Size) -> Size + D.

overflow_answer({put_chars, _}) -> {raised, error, badarg};
overflow_answer({format, _, _}) -> {raised, error, badarg};
overflow_answer({write, _}) -> {error, einval};
overflow_answer({pwrite, _, _}) -> {error, einval}.

do(Op, D) ->
    res(fun() -> do1(Op, D) end).

do1({put_chars, Chars}, D) -> io:put_chars(D, Chars);
do1({format, Fmt, Args}, D) -> io:format(D, Fmt, Args);
do1(get_line, D) -> io:get_line(D, '');
do1({get_chars, N}, D) -> io:get_chars(D, '', N);
do1(read_term, D) -> io:read(D, '');
do1({fread, Fmt}, D) -> io:fread(D, '', Fmt);
do1({setopts, Opts}, D) -> io:setopts(D, Opts);
do1(getopts, D) -> io:getopts(D);
do1({read, N}, D) -> file:read(D, N);
do1(read_line, D) -> file:read_line(D);
do1({write, Bin}, D) -> file:write(D, Bin);
do1({pread, At, N}, D) -> file:pread(D, At, N);
do1({pwrite, At, Bin}, D) -> file:pwrite(D, At, Bin);
do1({position, At}, D) -> file:position(D, At).

%%% Generators

%% Text with line ends, terms for io:read, latin1 bytes and multi-byte characters.
content_gen(Enc) ->
    frequency([{20, list(piece_gen(Enc))},
               {1, ?BIND({A, N, B}, {list(piece_gen(Enc)), range(250, 3000), list(piece_gen(Enc))},
                         A ++ [binary:copy(<<"w">>, N) | B])}]).

piece_gen(unicode) ->
    frequency([{10, text_piece_gen()},
               {3, ?BIND(C, wide_char_gen(), unicode:characters_to_binary([C]))}]);
piece_gen(latin1) ->
    frequency([{12, text_piece_gen()},
               {1, ?BIND(L, list(range(128, 255)), list_to_binary(L))}]).

text_piece_gen() ->
    frequency([{4, ?BIND(T, text_gen(), [T, $\n])},
               {2, ?BIND(T, text_gen(), [T, "\r\n"])},
               {1, ?BIND(T, text_gen(), [T, $\r])},
               {3, elements([<<"{a, 1}. ">>, <<"foo.\n">>, <<"\"s t\". ">>, <<"1.5. ">>,
                             <<"[x|y].\n">>, <<"bad bad. ">>, <<"'q'. ">>, <<"% c\n">>,
                             <<"12 34 ">>, <<"-7 ">>])},
               {2, ?BIND(T, text_gen(), T)}]).

text_gen() ->
    ?BIND(L, list(frequency([{8, range($a, $z)}, {2, exactly($\s)}, {1, exactly($.)}])),
          list_to_binary(L)).

wide_char_gen() ->
    elements([16#e9, 16#fc, 16#3a8, 16#20ac, 16#4e2d, 16#1f600]).

%% Characters for io:put_chars/format: mostly ASCII, some latin1, a few above 255.
%% Characters for io:put_chars/format: mostly ASCII, some latin1; in one op of six also
%% characters above 255 (the OTP server ends itself when they go to a latin1 device).
chars_gen() ->
    frequency([{5, narrow_chars_gen()}, {1, wide_chars_gen()}]).

narrow_chars_gen() ->
    list(frequency([{10, range($a, $z)}, {2, elements([$\n, $\s, $., $\r])},
                    {2, range(16#a0, 16#ff)}])).

wide_chars_gen() ->
    list(frequency([{10, range($a, $z)}, {2, elements([$\n, $\s, $., $\r])},
                    {2, range(16#a0, 16#ff)}, {2, wide_char_gen()}])).

bytes_gen() ->
    ?BIND(L, list(frequency([{8, range($a, $z)}, {2, elements([$\n, $\r, $.])},
                             {1, range(128, 255)}])),
          list_to_binary(L)).

location_gen(Size) ->
    frequency([{6, range(-2, Size + 3)},
               {1, elements([bof, cur, eof])},
               {2, {elements([bof, cur, eof]), range(-6, 6)}}]).

op_gen(Size) ->
    frequency([{3, ?BIND(C, chars_gen(), oneof([{put_chars, exactly(C)},
                                                 {put_chars, exactly(unicode:characters_to_binary(C))}]))},
               {2, frequency([{3, {format, exactly("~p~n"),
                                   [elements([foo, {a, 1}, [1, 2], "s", 1.5, <<"b">>])]}},
                              {3, {format, exactly("~s."), [narrow_chars_gen()]}},
                              {1, {format, exactly("~ts"), [wide_chars_gen()]}}])},
               {4, exactly(get_line)},
               {4, {get_chars, frequency([{5, range(0, 12)}, {1, range(0, 400)}])}},
               {3, exactly(read_term)},
               {1, {fread, elements(["~d", "~a", "~s", "~f"])}},
               {2, {setopts, elements([[binary], [list], [{encoding, unicode}], [{encoding, latin1}]])}},
               {1, exactly(getopts)},
               {3, {read, frequency([{5, range(0, 12)}, {1, range(0, 400)}])}},
               {2, exactly(read_line)},
               {3, {write, bytes_gen()}},
               {3, {pread, location_gen(Size), range(0, 20)}},
               {3, {pwrite, location_gen(Size), bytes_gen()}},
               {3, {position, location_gen(Size)}}]).
