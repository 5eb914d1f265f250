%%% Non-BEAM processes share counters files with Erlang through c_src_compat/.
-module(emmap_c_compat_tests).

-include_lib("eunit/include/eunit.hrl").

tool() ->
    {ok, Cwd} = file:get_cwd(),
    Out = filename:join("/tmp", "emmap_counter_" ++ os:getpid()),
    Cmd = "make -s -C " ++ filename:join(Cwd, "c_src_compat") ++ " OUT=" ++ Out ++ " 2>&1",
    ok = filelib:ensure_dir(Out ++ "/"),
    ?assertEqual("", os:cmd(Cmd)),
    filename:join(Out, "emmap-counter").

c_and_erlang_count_together_test_() ->
    case os:find_executable("cc") of
        false ->
            {"skipped: no C compiler on PATH", fun() -> ok end};
        _ ->
            {timeout, 120, fun() ->
                Tool = tool(),
                P = "/tmp/emmap_cc_" ++ os:getpid() ++ ".bin",
                _ = file:delete(P),
                %% C creates the file; Erlang opens it with the count from its header.
                ?assertEqual("2\n", os:cmd(Tool ++ " " ++ P ++ " create 2")),
                C = emmap:open_counters(P),
                %% Both sides add 100,000 to counter 1 at the same time.
                Self = self(),
                spawn_link(fun() -> Self ! {c, os:cmd(Tool ++ " " ++ P ++ " inc 1 1 100000")} end),
                [emmap:inc_counter(C, 1) || _ <- lists:seq(1, 100000)],
                receive {c, _} -> ok end,
                ?assertEqual(200000, emmap:read_counter(C, 1)),
                ?assertEqual("200000\n", os:cmd(Tool ++ " " ++ P ++ " read 1")),
                ?assertEqual(0, emmap:set_counter(C, 0, -5)),
                ?assertEqual("-5\n", os:cmd(Tool ++ " " ++ P ++ " read 0")),
                ok = emmap:close_counters(C),
                %% A file that is not a counters file is refused and left alone.
                ok = file:write_file(P, <<"not a counters file at all">>),
                ?assertMatch("emmap-counter: " ++ _, os:cmd(Tool ++ " " ++ P ++ " read 0 2>&1")),
                ?assertEqual({ok, <<"not a counters file at all">>}, file:read_file(P)),
                ok = file:delete(P),
                _ = os:cmd("rm -rf " ++ filename:dirname(Tool))
            end}
    end.
