%%% Every Erlang example of README.md runs, and prints what it says it prints.
%%%
%%% The README's Erlang blocks are of three kinds, told apart by their text:
%%%  - dependency and application settings (`{deps, ...}.', `{applications, ...}'): they
%%%    must read as Erlang terms of the shape rebar3 takes (emmap_consumer_tests and the
%%%    fixtures use them in real projects);
%%%  - a transcript of two shells (`shell1> ...', `shell2> ...'): each shell is a process
%%%    with its own bindings, the commands run in the order shown, and every line that shows
%%%    a value is compared with the value of the command above it;
%%%  - everything else: evaluated as the shell does (emmap_readme:eval/2), from fresh
%%%    bindings, with what it prints compared with its `% Prints:' comment where it has one.
%%% The files an example names under /tmp are moved into a directory of this test's own,
%%% so that a concurrent run of the suite is not disturbed; the section tests run the
%%% same examples with their own paths too. The quick start also runs exactly as written,
%%% in a fresh VM that has nothing prepared.
-module(emmap_readme_tests).

-include_lib("eunit/include/eunit.hrl").

-export([run_text/1]).

examples() ->
    emmap_readme:examples(emmap_readme:readme(), "erlang").

kind(Text) ->
    case {string:prefix(Text, "{deps,"), string:prefix(Text, "{applications,"),
          string:find(Text, "shell1> ")} of
        {nomatch, nomatch, nomatch} -> expressions;
        {nomatch, nomatch, _} -> shells;
        _ -> settings
    end.

%%%---------------------------------------------------------------------------
%%% Tests
%%%---------------------------------------------------------------------------

%% One test per example, named by the heading it stands under.
every_erlang_example_runs_test_() ->
    Examples = examples(),
    [{Heading ++ " #" ++ integer_to_list(N), {timeout, 60, fun() -> run(Text) end}}
     || {N, {Heading, Text}} <- lists:zip(lists:seq(1, length(Examples)), Examples)].

%% The README has the examples a user needs first: the quick start, the dependency forms,
%% and one per part of the API.
the_examples_cover_the_readme_test() ->
    Headings = [H || {H, _} <- examples()],
    [?assert(lists:member(H, Headings))
     || H <- ["## Quick start", "### rebar3", "## Direct binaries: shared, mutable memory",
              "## Atomics", "## Persistent counters", "## Persistent FIFO queue",
              "## Block storage: fixed-size blocks in a file", "## As an I/O device: emmap_io",
              "## Sharing counters with C programs"]],
    Kinds = lists:usort([kind(T) || {_, T} <- examples()]),
    ?assertEqual([expressions, settings, shells], Kinds).

%% The quick start, as written (its own paths in /tmp), in a fresh VM: nothing loaded,
%% no file prepared. Two runs on one machine take turns.
quick_start_runs_as_written_in_a_fresh_vm_test_() ->
    {timeout, 60, fun() ->
        [Text] = [T || {"## Quick start", T} <- examples()],
        Expected = emmap_readme:expected_print(Text),
        ?assertEqual("hello from emmap, count 5\n", Expected),
        File = emmap_test_lib:tmp_path("quickstart"),
        ok = file:write_file(File, Text),
        try
            emmap_test_lib:with_lock("quickstart", fun() ->
                {Status, Out} = emmap_test_lib:run_child(?MODULE, run_text, [File],
                                                          #{line => false}),
                ?assertEqual({0, Expected}, {Status, binary_to_list(Out)}),
                %% and it cleaned up after itself
                ?assertNot(filelib:is_file("/tmp/quickstart.bin")),
                ?assertNot(filelib:is_file("/tmp/quickstart.counters"))
            end)
        after
            file:delete(File)
        end
    end}.

%% @doc In a child VM: evaluates the Erlang text in `File' as the shell does, then halts
%% (status 0; an exception ends the VM with another status).
run_text(File) ->
    {ok, Text} = file:read_file(File),
    _ = emmap_readme:eval(binary_to_list(Text), erl_eval:new_bindings()),
    halt(0).

%%%---------------------------------------------------------------------------
%%% Running one example
%%%---------------------------------------------------------------------------

run(Text) ->
    case kind(Text) of
        settings -> check_settings(Text);
        shells -> emmap_test_lib:with_dir("readme", fun(Dir) -> run_shells(moved(Text, Dir)) end);
        expressions -> emmap_test_lib:with_dir("readme", fun(Dir) -> run_expressions(Text, Dir) end)
    end.

%% `Text' with every path under /tmp moved into `Dir'.
moved(Text, Dir) ->
    lists:flatten(string:replace(Text, "\"/tmp/", "\"" ++ Dir ++ "/", all)).

run_expressions(Text, Dir) ->
    Moved = moved(Text, Dir),
    ok = precondition(Moved, Dir),
    %% The debug example's logger reports are checked by emmap_debug_tests; here they would
    %% only fill the test output.
    ok = logger:set_module_level(emmap, warning),
    Printed = try
                  emmap_readme:eval_printing(Moved)
              after
                  logger:unset_module_level(emmap)
              end,
    case string:find(Text, "% Prints: ") of
        nomatch -> ok;
        _ -> ?assertEqual(emmap_readme:expected_print(Text), Printed)
    end.

%% The C interop example's Erlang block follows shell commands that create the counters
%% file with 4 counters and add 5 to counter 2 (emmap_c_compat_tests runs those commands,
%% and then this block); here the file is made in that state with emmap itself.
precondition(Text, Dir) ->
    Hits = filename:join(Dir, "emmap_hits.bin"),
    case string:find(Text, Hits) of
        nomatch -> ok;
        _ ->
            C = emmap:open_counters(Hits, 4),
            0 = emmap:inc_counter(C, 2, 5),
            emmap:close_counters(C)
    end.

%% Dependency forms: terms, and emmap's dependency either by name (`_checkouts') or from
%% git with a branch, tag or ref.
check_settings(Text) ->
    {ok, Tokens, _} = erl_scan:string(case lists:last(string:trim(Text)) of
                                          $. -> Text;
                                          _ -> string:trim(Text) ++ "."
                                      end),
    {ok, Term} = erl_parse:parse_term(Tokens),
    case Term of
        {deps, Deps} ->
            [Emmap] = [D || D <- Deps, D =:= emmap orelse element(1, D) =:= emmap],
            case Emmap of
                emmap -> ok;
                {emmap, {git, Url, {Kind, _}}} ->
                    ?assert(is_list(Url)),
                    ?assert(lists:member(Kind, [branch, tag, ref]))
            end;
        {applications, Apps} ->
            ?assertEqual([kernel, stdlib, emmap], Apps)
    end.

%% Two shells as two processes, each with its own bindings; a line after a command that is
%% not a command is the value that command shows.
run_shells(Text) ->
    Lines = [L || L <- string:split(Text, "\n", all), string:trim(L) =/= ""],
    Shells = #{},
    Checked = shells(Lines, Shells, 0),
    ?assert(Checked > 0).

shells([], Shells, Checked) ->
    [exit(P, kill) || P <- maps:values(Shells)],
    Checked;
shells(["shell" ++ [N, $>, $\s | Cmd] | Rest], Shells, Checked) ->
    Shells1 = case Shells of
                  #{N := _} -> Shells;
                  _ -> Shells#{N => spawn(fun() -> shell_loop(erl_eval:new_bindings()) end)}
              end,
    Pid = maps:get(N, Shells1),
    Pid ! {eval, self(), Cmd},
    Got = receive {Pid, V} -> V after 30000 -> erlang:error({no_answer, Cmd}) end,
    case Rest of
        ["shell" ++ _ | _] ->
            shells(Rest, Shells1, Checked);
        [Shown | Rest1] ->
            {Expected, _} = emmap_readme:eval(Shown ++ ".", erl_eval:new_bindings()),
            ?assertEqual({Cmd, Expected}, {Cmd, Got}),
            shells(Rest1, Shells1, Checked + 1);
        [] ->
            shells(Rest, Shells1, Checked)
    end.

shell_loop(B) ->
    receive
        {eval, From, Cmd} ->
            {V, B1} = emmap_readme:eval(Cmd, B),
            %% what the shell shows is the value at this moment: a copy
            From ! {self(), binary_to_term(term_to_binary(V))},
            shell_loop(B1)
    end.
