%%% emmap as a dependency: built by rebar3 for an Erlang project, and by mix (with rebar3
%%% as the manager) for an Elixir project, each then used for real.
-module(emmap_consumer_tests).

-include_lib("eunit/include/eunit.hrl").

root() ->
    {ok, Cwd} = file:get_cwd(),                 % rebar3 runs tests from the project root
    Cwd.

tmp() ->
    D = filename:join("/tmp", "emmap_consumer_" ++ integer_to_list(erlang:unique_integer([positive]))),
    ok = filelib:ensure_dir(D ++ "/"),
    D.

%% Runs a shell command, returning {ExitStatus, Output}.
sh(Cmd, Env) ->
    Port = open_port({spawn, "sh -c '" ++ Cmd ++ "' 2>&1"},
                     [{env, Env}, exit_status, binary, stream, use_stdio]),
    collect(Port, []).

collect(Port, Acc) ->
    receive
        {Port, {data, D}} -> collect(Port, [D | Acc]);
        {Port, {exit_status, S}} -> {S, iolist_to_binary(lists:reverse(Acc))}
    after 300000 -> erlang:error(timeout)
    end.

copy_fixture(Name, Dest) ->
    Src = filename:join([root(), "test", "consumers", Name]),
    {0, _} = sh("cp -r " ++ Src ++ "/. " ++ Dest, []),
    ok.

rebar3_dependency_test_() ->
    {timeout, 600, fun() ->
        D = tmp(),
        copy_fixture("rebar3", D),
        ok = file:make_dir(filename:join(D, "_checkouts")),
        ok = file:make_symlink(root(), filename:join([D, "_checkouts", "emmap"])),
        {S, Out} = sh("cd " ++ D ++ " && rebar3 compile", []),
        ?assertMatch({0, _}, {S, Out}),
        Data = filename:join(D, "counters.bin"),
        {S2, Out2} = sh("cd " ++ D ++ " && erl -noshell -pa _build/default/lib/*/ebin "
                        "-pa _build/default/checkouts/*/ebin "
                        "-eval \"io:format(\\\"~p~n\\\", [emmap_consumer:run(\\\"" ++ Data ++ "\\\")]), halt().\"", []),
        ?assertEqual({0, <<"42\n">>}, {S2, Out2}),
        {0, _} = sh("rm -rf " ++ D, [])
    end}.

elixir_mix_dependency_test_() ->
    case os:find_executable("mix") of
        false ->
            %% Elixir is not installed here: nothing to build the fixture with.
            {"skipped: no mix on PATH", fun() -> ok end};
        _ ->
            {timeout, 600, fun() ->
                D = tmp(),
                copy_fixture("elixir", D),
                Env = [{"EMMAP_PATH", root()}, {"MIX_REBAR3", os:find_executable("rebar3")},
                       {"MIX_HOME", filename:join(D, ".mix")}, {"HEX_OFFLINE", "1"},
                       {"MIX_ENV", "dev"}],
                Data = filename:join(D, "data.bin"),
                {S, Out} = sh("cd " ++ D ++ " && mix compile && mix run -e "
                              "\"IO.inspect(EmmapConsumer.run(\\\"" ++ Data ++ "\\\"))\"", Env),
                ?assertMatch({0, _}, {S, Out}),
                ?assertNotEqual(nomatch, binary:match(Out, <<"\"hello from elixir\"">>)),
                {0, _} = sh("rm -rf " ++ D, [])
            end}
    end.
