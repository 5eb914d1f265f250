%%% emmap as a dependency, the way users take it:
%%%  - a rebar3 project (test/consumers/rebar3) gets it through _checkouts: the commands
%%%    CONTRIBUTING.md gives run as written: the project's own EUnit tests,
%%%    `rebar3 release', and the release started, used and stopped; README's rebar3
%%%    dependency forms are the fixture's;
%%%  - a package made of the files the .app.src lists, without the built library (what a
%%%    git dependency holds), builds the NIF from scratch as a dependency, and
%%%    `r3:compile()' in `rebar3 shell' after an edit of emmap's source reloads emmap with
%%%    handles open;
%%%  - an Elixir project (test/consumers/elixir) gets it as a mix path dependency built by
%%%    rebar3: CONTRIBUTING.md's commands run `mix test' (whose first test is the README's
%%%    Elixir example), and in `iex -S mix' the reloads IEx offers keep emmap working;
%%%  - README's git dependency lines work in projects made by `rebar3 new app' and `mix new';
%%%  - in all of these, `h(emmap, open)' (IEx: `h :emmap.open') shows the documentation;
%%%  - a package that also holds the library built from its sources installs, from rebar3
%%%    and from mix, where there is no Rust at all, and refuses a library built from other
%%%    sources; a warning in emmap's sources does not stop a dependent project's build,
%%%    while emmap's own test build fails on it.
-module(emmap_consumer_tests).

-include_lib("eunit/include/eunit.hrl").

-import(emmap_test_lib, [tmp_dir/1, rm_rf/1]).

%% What native/build.sh prints before it runs cargo.
-define(BUILDING, "emmap: building the Rust NIF with cargo, ~30 s the first time\n").

root() -> emmap_readme:root().

%% Runs a shell command (sh) in Dir, returning {ExitStatus, Output}.
sh(Cmd, Dir, Env) ->
    Port = open_port({spawn_executable, "/bin/sh"},
                     [{args, ["-c", Cmd ++ " 2>&1"]}, {cd, Dir}, {env, Env},
                      exit_status, binary, stream, use_stdio]),
    collect(Port, [], 600000).

collect(Port, Acc, Timeout) ->
    receive
        {Port, {data, D}} -> collect(Port, [D | Acc], Timeout);
        {Port, {exit_status, S}} -> {S, no_ansi(lists:reverse(Acc))}
    after Timeout ->
        catch port_close(Port),
        erlang:error({timeout, iolist_to_binary(lists:reverse(Acc))})
    end.

contains(_Bin, "") ->
    true;
contains(Bin, Part) ->
    binary:match(Bin, iolist_to_binary(Part)) =/= nomatch.

%% rebar3 colours its output even on a pipe.
no_ansi(Bin) ->
    iolist_to_binary(re:replace(Bin, "\e\\[[0-9;]*m", "", [global])).

%% CONTRIBUTING.md's lines under `Heading', with the one temporary directory they name
%% replaced by ours.
contributing_sh(Heading, FromTmp, ToTmp) ->
    Text = emmap_readme:block(emmap_readme:read("CONTRIBUTING.md"), Heading, "sh"),
    ?assertNotEqual(nomatch, string:find(Text, FromTmp)),
    "set -e\n" ++ string:replace(Text, FromTmp, ToTmp, all).

%%%===========================================================================
%%% rebar3: the example project's commands
%%%===========================================================================

-define(REBAR3_HEADING, "### The example rebar3 project").
-define(README_REBAR3, "### rebar3").

rebar3_readme_commands_test_() ->
    {timeout, 600, fun() ->
        D = tmp_dir("consumer"),
        Proj = filename:join(D, "emmap_consumer"),
        Rel = filename:join(Proj, "_build/default/rel/emmap_consumer"),
        Script = contributing_sh(?REBAR3_HEADING, "/tmp/emmap_consumer", Proj),
        %% the release's node gets a name of its own (the script reads VMARGS_PATH), so
        %% that two test runs on one machine do not meet
        VmArgs = filename:join(D, "vm.args"),
        ok = file:write_file(VmArgs, ["-sname emmap_consumer_", filename:basename(D),
                                      "\n-setcookie emmap_consumer\n"]),
        Env = [{"VMARGS_PATH", VmArgs}],
        try
            {S, Out} = sh(Script, root(), Env),
            ?assertEqual({0, true}, {S, contains(Out, "3 tests, 0 failures")}),
            %% `eval' on the started release printed emmap_consumer:run/1's answer
            ?assertMatch({match, _}, re:run(Out, "(^|\n)42\n")),
            %% the release holds its own copy of the NIF library (no link into _build)
            So = filename:join(Rel, "lib/emmap-" ++ vsn() ++ "/priv/emmap.so"),
            {ok, Info} = file:read_link_info(So),
            ?assertEqual(regular, element(3, Info)),
            ?assertEqual(file:read_file(filename:join(root(), "priv/emmap.so")),
                         file:read_file(So)),
            %% each module's documentation travels inside its .beam, into the release
            Beams = filelib:wildcard(filename:join(Rel, "lib/emmap-" ++ vsn() ++ "/ebin/*.beam")),
            ?assertEqual(length(modules()), length(Beams)),
            [?assertMatch({B, {ok, {_, [{"Docs", <<_:8, _/binary>>}]}}},
                          {B, beam_lib:chunks(B, ["Docs"])})
             || B <- Beams],
            %% and it is really stopped
            ?assertMatch({S1, _} when S1 =/= 0, sh("bin/emmap_consumer ping", Rel, Env))
        after
            _ = sh("bin/emmap_consumer stop", Rel, Env),
            rm_rf(D)
        end
    end}.

vsn() ->
    _ = application:load(emmap),
    {ok, V} = application:get_key(emmap, vsn),
    V.

modules() ->
    _ = application:load(emmap),
    {ok, Ms} = application:get_key(emmap, modules),
    Ms.

%% The README shows the fixture's own rebar.config line, and the `applications' entry its
%% .app.src has (without which the release would leave emmap out).
rebar3_readme_shows_the_fixture_config_test() ->
    {ok, Config} = file:consult(filename:join(root(), "test/consumers/rebar3/rebar.config")),
    ?assertEqual([emmap], proplists:get_value(deps, Config)),
    Erl = emmap_readme:blocks(emmap_readme:section(?README_REBAR3), "erlang"),
    ?assert(lists:member("{deps, [emmap]}.\n", Erl)),
    ?assert(lists:member("{applications, [kernel, stdlib, emmap]}\n", Erl)),
    {ok, [{application, _, App}]} =
        file:consult(filename:join(root(), "test/consumers/rebar3/src/emmap_consumer.app.src")),
    ?assertEqual([kernel, stdlib, emmap], proplists:get_value(applications, App)).

%%%===========================================================================
%%% rebar3: the package builds; r3:compile() in rebar3 shell reloads emmap
%%%===========================================================================

%% The built library and the record of what it was built from (native/build.sh).
-define(BUILT, ["priv/emmap.so", "priv/emmap.so.sha256"]).

%% Copies the files the .app.src lists (what a package holds) to Dest: `sources', what a
%% git dependency has (the built files are not committed), or `built', with the library
%% this checkout built.
package(Dest, Kind) ->
    {ok, [{application, emmap, Props}]} = file:consult(filename:join(root(), "src/emmap.app.src")),
    Files = proplists:get_value(files, Props),
    ?assertEqual([], ?BUILT -- Files),
    ok = filelib:ensure_dir(filename:join(Dest, "priv") ++ "/"),
    [{0, _} = sh("cp -r '" ++ F ++ "' '" ++ filename:join(Dest, F) ++ "'", root(), [])
     || F <- Files, Kind =:= built orelse not lists:member(F, ?BUILT)],
    ok.

rebar3_package_build_and_shell_reload_test_() ->
    {timeout, 600, fun() ->
        D = tmp_dir("consumer"),
        Proj = filename:join(D, "consumer"),
        Pkg = filename:join(Proj, "_checkouts/emmap"),
        Data = filename:join(D, "data.bin"),
        try
            {0, _} = sh("cp -r test/consumers/rebar3 '" ++ Proj ++ "'", root(), []),
            ok = package(Pkg, sources),
            %% a from-scratch build of the NIF (its own cargo target directory), announced
            {S, Out} = sh("rebar3 compile", Proj, []),
            ?assertEqual({0, <<>>}, {S, case S of 0 -> <<>>; _ -> Out end}),
            ?assertMatch([_], binary:matches(Out, <<?BUILDING>>)),
            ?assert(filelib:is_regular(filename:join(Pkg, "priv/emmap.so"))),
            ?assert(filelib:is_regular(filename:join(Pkg, "priv/emmap.so.sha256"))),
            Edit = fun() ->
                %% rebar3 compares modification times in whole seconds: let the edit be
                %% later than the shell's own compile
                timer:sleep(1100),
                %% both the API module and the one with the -on_load that loads the NIF
                %% library (which rebar3 deletes and purges before loading it again)
                [begin
                     Src = filename:join(Pkg, "src/" ++ M ++ ".erl"),
                     {ok, Text} = file:read_file(Src),
                     Mod = list_to_binary("-module(" ++ M ++ ")."),
                     ok = file:write_file(Src, [binary:replace(Text, Mod,
                                                               <<Mod/binary, "\n-export([reload_mark/0]).">>),
                                                "\nreload_mark() -> reloaded.\n"])
                 end || M <- ["emmap", "emmap_nif"]]
            end,
            Lines = [{"{ok, M} = emmap:open(\"" ++ Data ++ "\", 0, 64, [create, read, write, shared, direct]).", "{ok,{file_descriptor,emmap,"},
                     {"{ok, B} = emmap:pread(M, 0, 4).", "{ok,<<0,0,0,0>>}"},
                     {"C = emmap:open_counters(\"" ++ Data ++ ".counters\", 1).", "{{file_descriptor,emmap,"},
                     %% the shell shows emmap's documentation
                     {"h(emmap, open).", doc_words(emmap, open)},
                     {"h(emmap_queue, is_empty).", doc_words(emmap_queue, is_empty)},
                     {Edit, ""},
                     {"r3:compile().", "\nok\n"},
                     {"emmap:reload_mark().", "reloaded"},
                     {"emmap_nif:reload_mark().", "reloaded"},
                     %% the recompiled module's documentation is made anew
                     {"{ok, Docs} = code:get_doc(emmap), lists:keymember({function, reload_mark, 0}, 1, element(7, Docs)).", "true"},
                     {"emmap:pwrite(M, 0, <<\"new!\">>).", "ok"},
                     {"B.", "<<\"new!\">>"},
                     {"emmap:inc_counter(C, 0).", "0"},
                     {"{ok, M2} = emmap:open(\"" ++ Data ++ "\", [read, shared]), emmap:pread(M2, 0, 4).", "{ok,<<\"new!\">>}"},
                     {"halt().", ""}],
            Outs = session("rebar3", ["shell"], Proj, [], fun(N) -> integer_to_list(N) ++ "> " end, Lines),
            [?assertEqual({L, true}, {L, contains(O, Expect)})
             || {{L, Expect}, O} <- lists:zip(Lines, Outs), is_list(L)]
        after
            rm_rf(D)
        end
    end}.

%% The first words of the doc comment of function F of module M (its first clause that has
%% a -spec), as h/2 prints them.
doc_words(M, F) ->
    {ok, Src} = file:read_file(filename:join([root(), "src", atom_to_list(M) ++ ".erl"])),
    {match, [Words]} = re:run(Src, "%% @doc ([A-Za-z]+ [A-Za-z]+ [A-Za-z]+)[^\n]*\n(?:%[^\n]*\n)*-spec "
                                   ++ atom_to_list(F) ++ "\\(",
                              [{capture, all_but_first, list}]),
    Words.

%% Runs an interactive shell with its standard input on a pipe: waits for its prompt,
%% sends a line (or runs a fun here, between two lines), waits for the next prompt, and so
%% on. Returns what each line printed. The last line must end the shell.
session(Exe, Args, Dir, Env, Prompt, Lines) ->
    Port = open_port({spawn_executable, os:find_executable(Exe)},
                     [{args, Args}, {cd, Dir}, {env, Env}, binary, exit_status, use_stdio,
                      stderr_to_stdout]),
    {os_pid, OsPid} = erlang:port_info(Port, os_pid),
    try
        _Banner = until(Port, Prompt(1), <<>>),
        {Outs, _} = lists:mapfoldl(
            fun({Fun, _}, N) when is_function(Fun) ->
                    Fun(),
                    {<<>>, N};
               ({Line, _}, N) ->
                    true = port_command(Port, [Line, "\n"]),
                    {until(Port, Prompt(N + 1), <<>>), N + 1}
            end, 1, lists:droplast(Lines)),
        {Last, _} = lists:last(Lines),
        true = port_command(Port, [Last, "\n"]),
        {Status, LastOut} = collect(Port, [], 60000),
        ?assertEqual(0, Status),
        Outs ++ [LastOut]
    after
        _ = os:cmd("kill -9 " ++ integer_to_list(OsPid) ++ " 2>/dev/null"),
        catch port_close(Port)
    end.

%% Output up to (not including) `Prompt' at the end of what was printed.
until(Port, Prompt, Acc) ->
    P = list_to_binary(Prompt),
    case byte_size(Acc) >= byte_size(P) andalso
         binary:part(Acc, byte_size(Acc), -byte_size(P)) =:= P of
        true ->
            no_ansi(binary:part(Acc, 0, byte_size(Acc) - byte_size(P)));
        false ->
            receive
                {Port, {data, D}} -> until(Port, Prompt, <<Acc/binary, D/binary>>);
                {Port, {exit_status, S}} -> erlang:error({shell_exited, S, Acc})
            after 300000 -> erlang:error({no_prompt, Prompt, Acc})
            end
    end.

%%%===========================================================================
%%% mix: the example project's commands; reloads in IEx
%%%===========================================================================

-define(MIX_HEADING, "### The example mix project").

with_mix(Fun) ->
    case os:find_executable("mix") of
        false -> {"skipped: Elixir (mix) is not installed", fun() -> ok end};
        _ -> {timeout, 600, Fun}
    end.

%% A command that runs the fixture's tests. The first of them is the README's Elixir
%% example, which uses the fixed files /tmp/emmap_elixir.bin and
%% /tmp/emmap_elixir_counters.bin as written: two test runs on one machine take turns.
mix_test(Cmd, Dir, Env) ->
    emmap_test_lib:with_lock("elixir_example", fun() -> sh(Cmd, Dir, Env) end).

%% Says that the mix part of a test did not run, and why. (CI installs Elixir, see
%% .ci/run: there every part runs.)
no_mix(Test) ->
    io:format(user, "~n~s: the mix part is skipped: Elixir (mix) is not installed~n", [Test]).

%% mix keeps its archives in MIX_HOME: a fresh one, so nothing of the user's is used or
%% changed.
mix_env(D) ->
    [{"MIX_HOME", filename:join(D, ".mix")}].

mix_readme_commands_test_() ->
    with_mix(fun() ->
        D = tmp_dir("consumer"),
        Proj = filename:join(D, "emmap_consumer_ex"),
        Script = contributing_sh(?MIX_HEADING, "/tmp/emmap_consumer_ex", Proj),
        try
            {S, Out} = mix_test(Script, root(), mix_env(D)),
            ?assertEqual({0, true}, {S, contains(Out, "4 tests, 0 failures")})
        after
            rm_rf(D)
        end
    end).

%% The README's Elixir example (in the quick start) is, line for line, the fixture's first
%% test; its mix.exs path dependency is the fixture's (with the fixture's default path).
mix_readme_shows_the_fixture_test() ->
    [_Git, Dep] = emmap_readme:blocks(emmap_readme:section("### mix"), "elixir"),
    [Example] = emmap_readme:blocks(emmap_readme:section("## Quick start"), "elixir"),
    {ok, Test} = file:read_file(filename:join(root(), "test/consumers/elixir/test/emmap_consumer_test.exs")),
    Trimmed = [string:trim(L) || L <- string:split(Example, "\n", all), string:trim(L) =/= ""],
    TestLines = [string:trim(L) || L <- string:split(binary_to_list(Test), "\n", all)],
    ?assert(length(Trimmed) > 10),
    ?assertEqual({Trimmed, true}, {Trimmed, is_sublist(Trimmed, TestLines)}),
    {ok, MixExs} = file:read_file(filename:join(root(), "test/consumers/elixir/mix.exs")),
    ?assertEqual("{:emmap, path: \"../emmap\", manager: :rebar3}", string:trim(Dep)),
    ?assert(contains(MixExs, "{:emmap, path: System.get_env(\"EMMAP_PATH\", \"../../..\"), manager: :rebar3}")).

is_sublist(Sub, List) ->
    lists:prefix(Sub, List) orelse (List =/= [] andalso is_sublist(Sub, tl(List))).

iex_reloads_keep_emmap_working_test_() ->
    with_mix(fun() ->
        D = tmp_dir("consumer"),
        Proj = filename:join(D, "consumer"),
        Data = filename:join(D, "data.bin"),
        Env = [{"EMMAP_PATH", root()}, {"MIX_REBAR3", os:find_executable("rebar3")}
               | mix_env(D)],
        try
            {0, _} = sh("cp -r test/consumers/elixir '" ++ Proj ++ "'", root(), []),
            {0, _} = sh("mix compile", Proj, Env),
            Lines = [{"{:ok, m} = :emmap.open(~c\"" ++ Data ++ "\", 0, 64, [:create, :read, :write, :shared, :direct])", "{:ok, {:file_descriptor, :emmap,"},
                     {"{:ok, b} = :emmap.pread(m, 0, 4)", "{:ok, <<0, 0, 0, 0>>}"},
                     {"h :emmap.open", doc_words(emmap, open)},
                     {"r :emmap", "{:reloaded, [:emmap]}"},
                     {"r :emmap_nif", "{:reloaded, [:emmap_nif]}"},
                     {":emmap.pwrite(m, 0, \"one!\")", ":ok"},
                     {"l :emmap", "{:module, :emmap}"},
                     {"l :emmap_nif", "{:module, :emmap_nif}"},
                     {":emmap.pwrite(m, 0, \"two!\")", ":ok"},
                     {"recompile()", ""},
                     {"Mix.Task.run(\"deps.compile\", [\"emmap\"])", ":ok"},
                     {"l :emmap", "{:module, :emmap}"},
                     {"b", "\"two!\""},
                     {"{:ok, m2} = :emmap.open(~c\"" ++ Data ++ "\", [:read, :shared]); :emmap.pread(m2, 0, 4)", "{:ok, \"two!\"}"},
                     {"System.halt()", ""}],
            Outs = session("iex", ["-S", "mix"], Proj, Env,
                           fun(N) -> "iex(" ++ integer_to_list(N) ++ ")> " end, Lines),
            [?assertEqual({L, true}, {L, contains(O, Expect)})
             || {{L, Expect}, O} <- lists:zip(Lines, Outs)]
        after
            rm_rf(D)
        end
    end).

%%%===========================================================================
%%% A package with the library built: no Rust needed
%%%===========================================================================

%% An environment in which there is no Rust: cargo and rustc are on no directory of PATH
%% (a directory that holds them is replaced by links to its other programs), and HOME is
%% elsewhere, so that build.sh's `~/.cargo/bin' does not exist either.
no_rust_env(D) ->
    Shadow = filename:join(D, "bin-without-rust"),
    ok = filelib:ensure_dir(Shadow ++ "/"),
    Rusty = fun(Dir) -> lists:any(fun(E) -> filelib:is_regular(filename:join(Dir, E)) end,
                                  ["cargo", "rustc"])
            end,
    Dirs = lists:append(
             [case Rusty(Dir) of
                  false -> [Dir];
                  true ->
                      [ok = file:make_symlink(filename:join(Dir, E), filename:join(Shadow, E))
                       || E <- element(2, file:list_dir(Dir)),
                          not lists:prefix("cargo", E), not lists:prefix("rust", E),
                          not filelib:is_file(filename:join(Shadow, E))],
                      []
              end || Dir <- string:lexemes(os:getenv("PATH"), ":")]),
    Home = filename:join(D, "home"),
    ok = filelib:ensure_dir(Home ++ "/"),
    Env = [{"PATH", lists:join(":", Dirs ++ [Shadow])}, {"HOME", Home},
           {"CARGO_HOME", false}, {"RUSTUP_HOME", false}, {"RUSTUP_TOOLCHAIN", false}],
    %% the tools a user has are there; Rust is not
    ?assertMatch({0, _}, sh("command -v erl && command -v rebar3 && command -v sha256sum", "/", Env)),
    ?assertMatch({S, _} when S =/= 0, sh("command -v cargo", "/", Env)),
    ?assertMatch({S, _} when S =/= 0, sh("command -v rustc", "/", Env)),
    ?assertMatch({S, _} when S =/= 0, sh("command -v cargo", "/", [{"PATH", "$HOME/.cargo/bin:$PATH"} | Env])),
    Env.

%% A rebar3 project (the fixture) with emmap in _checkouts, a link to Pkg.
rebar3_consumer(Proj, Pkg) ->
    {0, _} = sh("cp -r test/consumers/rebar3 '" ++ Proj ++ "' && mkdir -p '" ++ Proj ++ "/_checkouts' && ln -s '"
                ++ Pkg ++ "' '" ++ Proj ++ "/_checkouts/emmap'", root(), []),
    ok.

%% A mix project (the fixture) with emmap as a path dependency on Pkg.
mix_consumer(Proj, Pkg, D, Env) ->
    {0, _} = sh("cp -r test/consumers/elixir '" ++ Proj ++ "'", root(), []),
    [{"EMMAP_PATH", Pkg}, {"MIX_REBAR3", os:find_executable("rebar3")} | mix_env(D)] ++ Env.

prebuilt_library_needs_no_rust_test_() ->
    {timeout, 900, fun() ->
        D = tmp_dir("consumer"),
        Pkg = filename:join(D, "emmap"),
        try
            ok = package(Pkg, built),
            Env = no_rust_env(D),
            {ok, Lib} = file:read_file(filename:join(Pkg, "priv/emmap.so")),
            %% rebar3: the project's tests (file:pread/3 on a mapping, counters, docs)
            Proj = filename:join(D, "consumer"),
            ok = rebar3_consumer(Proj, Pkg),
            {S, Out} = sh("rebar3 eunit", Proj, Env),
            ?assertEqual({0, true, nomatch}, {S, contains(Out, "3 tests, 0 failures"),
                                              binary:match(Out, <<"cargo">>)}),
            %% mix: the fixture's tests (emmap:pread/3 on a direct mapping among them)
            case os:find_executable("mix") of
                false ->
                    no_mix("prebuilt_library_needs_no_rust");
                _ ->
                    ExProj = filename:join(D, "consumer_ex"),
                    ExEnv = mix_consumer(ExProj, Pkg, D, Env),
                    {S2, Out2} = mix_test("mix test", ExProj, ExEnv),
                    ?assertEqual({0, true, nomatch}, {S2, contains(Out2, "4 tests, 0 failures"),
                                                      binary:match(Out2, <<"cargo">>)})
            end,
            ?assertEqual({ok, Lib}, file:read_file(filename:join(Pkg, "priv/emmap.so"))),
            %% a changed source: the library is not used; cargo is asked for, and its
            %% absence said plainly
            Rs = filename:join(Pkg, "native/emmap_nif/src/lib.rs"),
            ok = file:write_file(Rs, "\n// changed\n", [append]),
            {S3, Out3} = sh("rebar3 compile", Proj, Env),
            ?assertNotEqual(0, S3),
            ?assert(contains(Out3, ?BUILDING)),
            ?assertMatch({match, _},
                         re:run(Out3, "\nemmap: priv/emmap.so was built from other sources or for another "
                                      "target than [a-z0-9_]+-linux-(gnu|musl), and cargo is not installed: "
                                      "install Rust \\(https://rustup.rs\\) and retry\n"))
        after
            rm_rf(D)
        end
    end}.

%% README's git dependency lines, as written but for the URL, in projects made fresh by
%% `rebar3 new app' and `mix new': emmap is fetched from a git repository holding the
%% package (with the library built, so that no Rust is needed), the project builds, and a
%% pread, a counter and the documentation work. The rebar3 project's .app.src gets the
%% `applications' line README shows, and starting the project starts emmap; mix lists
%% emmap among the project's applications by itself, as README says.
readme_git_dependencies_work_test_() ->
    {timeout, 900, fun() ->
        D = tmp_dir("consumer"),
        Repo = filename:join(D, "emmap"),
        Url = "file://" ++ Repo,
        Data = filename:join(D, "data.bin"),
        Counters = filename:join(D, "counters.bin"),
        try
            ok = package(Repo, built),
            {0, _} = sh("git init -q -b main && git add -A && "
                        "git -c user.name=t -c user.email=t@example.com commit -q -m package",
                        Repo, []),
            Env = no_rust_env(D),
            %% rebar3
            [Deps, _Checkouts, Apps] = emmap_readme:blocks(emmap_readme:section(?README_REBAR3),
                                                           "erlang"),
            {0, _} = sh("rebar3 new app gitdep", D, Env),
            Proj = filename:join(D, "gitdep"),
            ok = edit(filename:join(Proj, "rebar.config"), "\\{deps, \\[\\]\\}\\.",
                      string:replace(Deps, "\"URL\"", "\"" ++ Url ++ "\"")),
            ok = edit(filename:join(Proj, "src/gitdep.app.src"), "\\{applications,[^}]*\\]\\}",
                      string:trim(Apps)),
            {S, Out} = sh("rebar3 compile", Proj, Env),
            ?assertEqual({0, nomatch}, {S, binary:match(Out, <<"cargo">>)}),
            Check = ["{ok, M} = emmap:open(\"", Data, "\", 0, 64, [create, read, write, shared]), "
                     "{ok, <<0, 0>>} = file:pread(M, 0, 2), "
                     "C = emmap:open_counters(\"", Counters, "\", 1), 0 = emmap:inc_counter(C, 0), "
                     "{ok, {docs_v1, _, _, _, _, _, _}} = code:get_doc(emmap), "
                     "{ok, Started} = application:ensure_all_started(gitdep), "
                     "true = lists:member(emmap, Started), "
                     "io:format(\"emmap works~n\"), halt()."],
            {S1, Out1} = sh(lists:flatten(["erl -noshell -pa _build/default/lib/*/ebin -eval '",
                                           Check, "'"]), Proj, Env),
            ?assertEqual({0, <<"emmap works\n">>}, {S1, Out1}),
            %% mix
            case os:find_executable("mix") of
                false ->
                    no_mix("readme_git_dependencies_work");
                _ ->
                    [Git, _Path] = emmap_readme:blocks(emmap_readme:section("### mix"), "elixir"),
                    ExEnv = [{"MIX_REBAR3", os:find_executable("rebar3")} | mix_env(D)] ++ Env,
                    {0, _} = sh("mix new gitdep_ex", D, ExEnv),
                    ExProj = filename:join(D, "gitdep_ex"),
                    ok = edit(filename:join(ExProj, "mix.exs"),
                              "defp deps do\\n    \\[.*?\\n    \\]",
                              ["defp deps do\n    [\n      ",
                               string:trim(string:replace(Git, "\"URL\"", "\"" ++ Url ++ "\"")),
                               "\n    ]"]),
                    ok = file:delete(Counters),
                    ExCheck = ["{:ok, m} = :emmap.open(~c\"", Data, "\", 0, 64, [:create, :read, :write, :shared]); "
                               "{:ok, <<0, 0>>} = :file.pread(m, 0, 2); "
                               "c = :emmap.open_counters(~c\"", Counters, "\", 1); 0 = :emmap.inc_counter(c, 0); "
                               "{:docs_v1, _, _, _, _, _, _} = Code.fetch_docs(:emmap); "
                               "true = :emmap in Application.spec(:gitdep_ex, :applications); "
                               "IO.puts(\"emmap works\")"],
                    {S2, Out2} = sh(lists:flatten(["mix deps.get && mix compile && mix run -e '",
                                                   ExCheck, "'"]), ExProj, ExEnv),
                    ?assertEqual({0, true, nomatch},
                                 {S2, contains(Out2, "\nemmap works\n"), binary:match(Out2, <<"cargo">>)})
            end
        after
            rm_rf(D)
        end
    end}.

%% Replaces the one match of the regular expression `Re' (dotall) in file `F' by `With'.
edit(F, Re, With) ->
    {ok, Old} = file:read_file(F),
    {match, [_]} = re:run(Old, Re, [dotall, global]),
    New = re:replace(Old, Re, iolist_to_binary(string:replace(With, "\\", "\\\\", all)),
                     [dotall, {return, binary}]),
    file:write_file(F, New).

%% native/build.sh in a package with the library built, with a stand-in `cargo' that logs
%% its arguments and fails: it is run exactly when something the library is made from, its
%% target, or the library itself differs from the record; a change that cargo does not read
%% (a README in native/) keeps the library.
build_script_uses_the_library_only_when_it_matches_the_sources_test_() ->
    {timeout, 120, fun() ->
        D = tmp_dir("consumer"),
        Pkg = filename:join(D, "emmap"),
        try
            ok = package(Pkg, built),
            Log = filename:join(D, "cargo.log"),
            Fake = filename:join(D, "fake-cargo"),
            ok = filelib:ensure_dir(Fake ++ "/"),
            ok = file:write_file(filename:join(Fake, "cargo"),
                                 ["#!/bin/sh\necho \"cargo $*\" >> '", Log, "'\nexit 3\n"]),
            ok = file:change_mode(filename:join(Fake, "cargo"), 8#755),
            NoRust = no_rust_env(D),
            {_, Path} = lists:keyfind("PATH", 1, NoRust),
            Env = lists:keystore("PATH", 1, NoRust, {"PATH", [Fake, ":" | Path]}),
            Build = fun() ->
                _ = file:delete(Log),
                {S, Out} = sh("sh native/build.sh", Pkg, Env),
                Cargo = case file:read_file(Log) of {ok, L} -> L; _ -> none end,
                {S, Out, Cargo}
            end,
            Rebuilds = fun() ->
                {S, Out, Cargo} = Build(),
                ?assertEqual({3, <<?BUILDING>>}, {S, Out}),
                ?assertMatch(<<"cargo build --locked --release ", _/binary>>, Cargo)
            end,
            Keeps = fun() -> ?assertEqual({0, <<>>, none}, Build()) end,
            %% the line README quotes
            ?assert(contains(read("README.md"), "`" ++ string:trim(?BUILDING) ++ "`")),
            %% Change applies Edit to file F of the package, checks Then, restores F, and
            %% checks that the library is used again
            Change = fun(F, Edit, Then) ->
                Path1 = filename:join(Pkg, F),
                {ok, Old} = file:read_file(Path1),
                ok = file:write_file(Path1, Edit(Old)),
                Then(),
                ok = file:write_file(Path1, Old),
                Keeps()
            end,
            Append = fun(Old) -> <<Old/binary, "\n">> end,
            Keeps(),
            Change("native/emmap_core/src/lib.rs", Append, Rebuilds),
            Change("native/emmap_nif/Cargo.toml", Append, Rebuilds),
            Change("Cargo.lock", Append, Rebuilds),
            Change("Cargo.toml", Append, Rebuilds),
            Change("native/build.sh", Append, Rebuilds),
            Change("priv/emmap.so", Append, Rebuilds),
            Change("priv/emmap.so.sha256",
                   fun(Old) -> re:replace(Old, "\ntarget [^\n]*", "\ntarget riscv64-linux-gnu",
                                          [{return, binary}]) end,
                   Rebuilds),
            Change("native/README.md", Append, Keeps),
            %% a new source file counts too
            New = filename:join(Pkg, "native/emmap_nif/src/extra.rs"),
            ok = file:write_file(New, "\n"),
            Rebuilds(),
            ok = file:delete(New),
            Keeps(),
            %% no record: built; no cargo at all: said so, and nothing is left half done
            ok = file:delete(filename:join(Pkg, "priv/emmap.so.sha256")),
            Rebuilds(),
            {S, Out} = sh("sh native/build.sh", Pkg, NoRust),
            ?assertEqual(1, S),
            ?assert(contains(Out, "and cargo is not installed: install Rust (https://rustup.rs)")),
            ?assert(filelib:is_regular(filename:join(Pkg, "priv/emmap.so")))
        after
            rm_rf(D)
        end
    end}.

%% Every cargo command the build and the Makefile run builds exactly what Cargo.lock says,
%% and the workspace declares the Rust version it needs: at least what every locked crate
%% declares.
cargo_runs_locked_and_rust_version_is_declared_test_() ->
    {timeout, 120, fun() ->
        Lines = [L || F <- ["native/build.sh", "Makefile", ".ci/run"],
                      L <- string:split(binary_to_list(read(F)), "\n", all),
                      re:run(L, "^\\s*cargo (build|test|clippy|check|run|bench)\\b") =/= nomatch],
        ?assert(length(Lines) >= 3),
        [?assertEqual({L, true}, {L, string:find(L, " --locked") =/= nomatch}) || L <- Lines],
        {match, [Ours]} = re:run(read("Cargo.toml"), "\nrust-version = \"([0-9.]+)\"",
                                 [{capture, all_but_first, list}]),
        [?assertEqual({C, <<"rust-version.workspace = true">>}, {C, match_line(read(C), "rust-version")})
         || C <- ["native/emmap_core/Cargo.toml", "native/emmap_nif/Cargo.toml"]],
        {0, Json} = sh("cargo metadata --locked --offline --format-version 1", root(), []),
        Theirs = [V || [V] <- match_all(Json, "\"rust_version\":\"([0-9.]+)\"")],
        ?assert(length(Theirs) > 5),
        [?assertEqual({V, true}, {V, version(V) =< version(Ours)}) || V <- Theirs]
    end}.

read(F) ->
    {ok, B} = file:read_file(filename:join(root(), F)),
    B.

match_line(Text, Prefix) ->
    [L] = [L || L <- binary:split(Text, <<"\n">>, [global]),
                lists:prefix(Prefix, binary_to_list(L))],
    L.

match_all(Text, Re) ->
    case re:run(Text, Re, [global, {capture, all_but_first, list}]) of
        {match, Ms} -> Ms;
        nomatch -> []
    end.

version(V) ->
    [list_to_integer(P) || P <- string:lexemes(V, ".")] ++ [0, 0, 0].

%%%===========================================================================
%%% Warnings: never an error in a dependent project's build
%%%===========================================================================

%% emmap_io.erl with an unused function in it (two warnings: the function, its variable).
inject_warning(Pkg) ->
    Src = filename:join(Pkg, "src/emmap_io.erl"),
    ok = file:write_file(Src, "\ninjected_warning() -> Injected = 1, ok.\n", [append]).

warnings_do_not_break_a_dependent_build_test_() ->
    {timeout, 900, fun() ->
        D = tmp_dir("consumer"),
        Pkg = filename:join(D, "emmap"),
        try
            ok = package(Pkg, built),
            Env = [{"ERL_COMPILER_OPTIONS", false} | no_rust_env(D)],
            %% emmap's own test build (`make test' runs `rebar3 eunit', which compiles with
            %% the test profile) passes as it is
            {match, _} = re:run(read("Makefile"), "\ntest-erlang:\n\t\\$\\(REBAR\\) eunit\n"),
            ?assertMatch({0, _}, sh("rebar3 as test compile", Pkg, Env)),
            %% rebar3 compares modification times in whole seconds
            timer:sleep(1100),
            ok = inject_warning(Pkg),
            %% a rebar3 project: builds, shows the warnings
            Proj = filename:join(D, "consumer"),
            ok = rebar3_consumer(Proj, Pkg),
            {S, Out} = sh("rebar3 compile", Proj, Env),
            ?assertEqual({0, true, true}, {S, contains(Out, "Warning: function injected_warning/0 is unused"),
                                           contains(Out, "Warning: variable 'Injected' is unused")}),
            %% a mix project: builds
            case os:find_executable("mix") of
                false ->
                    no_mix("warnings_do_not_break_a_dependent_build");
                _ ->
                    ExProj = filename:join(D, "consumer_ex"),
                    {S2, Out2} = sh("mix compile", ExProj, mix_consumer(ExProj, Pkg, D, Env)),
                    ?assertEqual({0, true}, {S2, contains(Out2, "injected_warning/0 is unused")})
            end,
            %% while emmap's own test build fails on it
            {S3, Out3} = sh("rebar3 as test compile", Pkg, Env),
            ?assertNotEqual(0, S3),
            ?assertMatch({match, _}, re:run(Out3, "Compiling src/emmap_io.erl failed\n"
                                                  "src/emmap_io.erl:[0-9:]+ function injected_warning/0 is unused"))
        after
            rm_rf(D)
        end
    end}.
