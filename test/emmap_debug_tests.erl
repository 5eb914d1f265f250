%%% The `debug' open option: the handle reports open, resize, truncate, allocate and close to the logger
%%% (level notice, from module emmap), and nothing is written to standard error.
-module(emmap_debug_tests).

-include_lib("eunit/include/eunit.hrl").

%% logger handler callback: forwards emmap's events to the collecting test process.
-export([log/2]).

-define(HANDLER, emmap_debug_tests_handler).

log(#{meta := #{mfa := {emmap, _, _}}} = Event, #{config := #{to := Pid}}) ->
    Pid ! {emmap_log, Event},
    ok;
log(_, _) ->
    ok.

%% Every emmap event logged so far (after a short wait for the last one).
events() ->
    receive {emmap_log, E} -> [E | events()]
    after 200 -> []
    end.

%% Runs Fun with our handler collecting, and the console's default handler (if any) quiet.
with_handler(Fun) ->
    ok = logger:add_handler(?HANDLER, ?MODULE, #{level => all, config => #{to => self()}}),
    Default = logger:get_handler_config(default),
    _ = [logger:set_handler_config(default, level, none) || {ok, _} <- [Default]],
    try Fun()
    after
        ok = logger:remove_handler(?HANDLER),
        _ = [logger:set_handler_config(default, level, L) || {ok, #{level := L}} <- [Default]]
    end.

debug_option_reports_to_logger_test() ->
    P = emmap_test_lib:tmp_path("debug"),
    with_handler(fun() ->
        try
            %% no `debug': nothing is reported
            {ok, Quiet} = emmap:open(P, 0, 4096, [create, read, write, shared]),
            {ok, 8192} = emmap:resize(Quiet, 8192),
            ok = emmap:close(Quiet),
            ?assertEqual([], events()),
            %% `debug': open, resize, close, each a notice report with the parameters
            {ok, M} = emmap:open(P, 0, 0, [read, write, shared, debug]),
            #{address := Addr} = emmap:info(M),
            {ok, 16384} = emmap:resize(M, 16384),
            #{address := Addr2} = emmap:info(M),
            {ok, 100} = emmap:position(M, 100),
            ok = emmap:truncate(M),
            ok = emmap:allocate(M, 0, 16384),
            #{address := Addr3} = emmap:info(M),
            ok = emmap:close(M),
            [Open, Resize, Truncate, Allocate, Close] = events(),
            ?assertMatch(#{msg := {report, #{emmap := truncate, result := {ok, 100},
                                              old_size := 16384, size := 100}}},
                         Truncate),
            ?assertMatch(#{msg := {report, #{emmap := allocate, result := ok,
                                              old_size := 100, size := 16384,
                                              offset := 0, length := 16384}}},
                         Allocate),
            [?assertMatch(#{level := notice, meta := #{mfa := {emmap, _, _}}}, E)
             || E <- [Open, Resize, Close]],
            ?assertMatch(#{msg := {report, #{emmap := open, result := ok, path := P,
                                              offset := 0, length := 0, size := 8192,
                                              address := Addr, shared := true,
                                              writable := true,
                                              options := [read, write, shared, debug]}}},
                         Open),
            ?assert(is_integer(Addr) andalso Addr > 0),
            ?assertMatch(#{msg := {report, #{emmap := resize, result := {ok, 16384},
                                              requested := 16384, old_size := 8192,
                                              old_address := Addr, size := 16384,
                                              address := Addr2}}},
                         Resize),
            ?assertMatch(#{msg := {report, #{emmap := close, result := ok, size := 16384,
                                              address := Addr3}}},
                         Close),
            %% a failed open with `debug' reports its error too
            Missing = P ++ ".missing",
            {error, enoent} = emmap:open(Missing, 0, 8, [read, debug]),
            [Failed] = events(),
            ?assertMatch(#{msg := {report, #{emmap := open, result := {error, enoent},
                                              path := Missing}}},
                         Failed)
        after
            file:delete(P)
        end
    end).

%% In a fresh VM with the default logger configuration, the README's example: the reports
%% appear on standard output through logger's default handler, and standard error stays
%% empty. A failed open is reported too.
debug_output_goes_to_logger_not_stderr_test_() ->
    {timeout, 60, fun() ->
        P = emmap_test_lib:tmp_path("debug"),
        Err = P ++ ".stderr",
        Ebin = filename:dirname(code:which(emmap)),
        Readme = emmap_readme:block("### Debug output", "erlang"),
        Example = emmap_readme:replace_path(Readme, "/tmp/emmap_debug.bin", P),
        ?assertNotEqual(Readme, lists:flatten(Example)),
        [Exprs, _] = string:split(string:trim(Example), ".", trailing),
        Eval = [Exprs, ", {error, enoent} = emmap:open(\"", P, ".none\", [read, debug]), "
                "logger_std_h:filesync(default), halt()."],
        Cmd = ["erl -noshell -pa '", Ebin, "' -eval '", Eval, "' 2>'", Err, "'"],
        try
            Out = os:cmd(lists:flatten(Cmd)),
            ?assertEqual({ok, <<>>}, file:read_file(Err)),
            ?assertEqual(4, length(string:split(Out, "NOTICE REPORT", all)) - 1),
            [?assertNotEqual(nomatch, string:find(Out, S))
             || S <- ["emmap: open", "emmap: resize", "emmap: close", P, "enoent",
                      "old_size: 4096"]]
        after
            file:delete(P),
            file:delete(Err)
        end
    end}.

%% What the README says silences them does.
module_level_silences_reports_test() ->
    P = emmap_test_lib:tmp_path("debug"),
    with_handler(fun() ->
        ok = logger:set_module_level(emmap, warning),
        try
            {ok, M} = emmap:open(P, 0, 4096, [create, read, write, shared, debug]),
            ok = emmap:close(M),
            ?assertEqual([], events())
        after
            ok = logger:unset_module_level(emmap),
            file:delete(P)
        end
    end).
