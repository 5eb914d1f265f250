%%% Every module of the application is documented and typed: each has a module @doc, and
%%% each exported function a -spec and an @doc with text (internal exports too: NIF stubs,
%%% gen_server callbacks). `make docs' checks that edoc builds the HTML without warnings;
%%% these tests check what edoc does not complain about. Modules added later (their
%%% names come from the .app file) are checked the same way.
%%%
%%% The same documentation is in each .beam as an EEP-48 "Docs" chunk (put there after
%%% compiling by native/doc_chunks.escript), which is what `h(emmap, open)' in the shell
%%% and `h :emmap.open' in IEx read: the tests below check it holds every exported
%%% function's doc, and that what is marked `@private' is hidden.
-module(emmap_docs_tests).

-include_lib("eunit/include/eunit.hrl").

modules() ->
    _ = application:load(emmap),
    {ok, Mods} = application:get_key(emmap, modules),
    ?assert(length(Mods) >= 3),
    lists:sort(Mods).

%% {Name, Arity} => {File, FirstLine} for each function definition and spec of module M,
%% from its debug_info (which knows which file, the module or an included one, each form
%% came from).
forms(M) ->
    {ok, {M, [{abstract_code, {raw_abstract_v1, Forms}}]}} =
        beam_lib:chunks(code:which(M), [abstract_code]),
    forms(Forms, undefined, #{}, #{}).

forms([], _File, Funs, Specs) ->
    {Funs, Specs};
forms([{attribute, _, file, {File, _}} | T], _, Funs, Specs) ->
    forms(T, File, Funs, Specs);
forms([{function, A, N, Ar, _} | T], File, Funs, Specs) ->
    forms(T, File, Funs#{{N, Ar} => {File, erl_anno:line(A)}}, Specs);
forms([{attribute, A, spec, {{N, Ar}, _}} | T], File, Funs, Specs) ->
    forms(T, File, Funs, Specs#{{N, Ar} => {File, erl_anno:line(A)}});
forms([_ | T], File, Funs, Specs) ->
    forms(T, File, Funs, Specs).

exports(M) ->
    M:module_info(exports) -- [{module_info, 0}, {module_info, 1}].

lines(File) ->
    {ok, B} = file:read_file(File),
    list_to_tuple(binary:split(B, <<"\n">>, [global])).

%% The comment block right above line L (blank lines between are allowed, as edoc does).
comment_above(Lines, L) ->
    comment_above(Lines, L - 1, skip_blank, []).

comment_above(_Lines, 0, _, Acc) ->
    Acc;
comment_above(Lines, L, State, Acc) ->
    Line = string:trim(element(L, Lines)),
    case {State, Line} of
        {skip_blank, <<>>} -> comment_above(Lines, L - 1, skip_blank, Acc);
        {_, <<"%", _/binary>>} -> comment_above(Lines, L - 1, comment, [Line | Acc]);
        _ -> Acc
    end.

%% Whether a comment block has an @doc tag followed by some text.
has_doc(Block) ->
    Text = iolist_to_binary([[string:trim(L, leading, "% "), $\n] || L <- Block]),
    case binary:split(Text, <<"@doc">>) of
        [_, After] ->
            %% the text runs to the next tag; it must not be empty
            [Doc | _] = binary:split(After, <<"\n@">>),
            string:trim(Doc) =/= <<>>;
        [_] ->
            false
    end.

every_export_has_a_spec_test() ->
    Missing = [{M, F} || M <- modules(),
                         {_, Specs} <- [forms(M)],
                         F <- exports(M), not maps:is_key(F, Specs)],
    ?assertEqual([], Missing).

every_export_has_a_doc_test() ->
    Missing =
        [{M, F} || M <- modules(),
                   {Funs, Specs} <- [forms(M)],
                   F <- exports(M),
                   not documented(F, Funs, Specs)],
    ?assertEqual([], Missing).

documented(F, Funs, Specs) ->
    has_doc(doc_comment(F, Funs, Specs)).

every_module_has_a_module_doc_test() ->
    Missing = [M || M <- modules(),
                    not has_doc(module_comment(proplists:get_value(source, M:module_info(compile))))],
    ?assertEqual([], Missing).

%% The comment block above the -module attribute.
module_comment(Source) ->
    Lines = lines(Source),
    [L | _] = [I || I <- lists:seq(1, tuple_size(Lines)),
                    binary:match(element(I, Lines), <<"-module(">>) =:= {0, 8}],
    comment_above(Lines, L).

%% The checks above find what they look for (so that an empty result means something).
checker_finds_missing_docs_test() ->
    ?assert(has_doc([<<"%% @doc Reads.">>])),
    ?assert(has_doc([<<"%% @private">>, <<"%% @doc NIF stub.">>])),
    ?assertNot(has_doc([<<"%% @private">>])),
    ?assertNot(has_doc([<<"%% @doc">>, <<"%% @see foo/1">>])),
    ?assertNot(has_doc([<<"%% Reads.">>])),
    {Funs, Specs} = forms(emmap),
    ?assert(maps:is_key({open, 4}, Specs)),
    ?assert(documented({open, 4}, Funs, Specs)),
    %% a local function without a doc comment is seen as undocumented
    ?assertNot(documented({path_to_binary, 1}, Funs, Specs)).

%%%---------------------------------------------------------------------------
%%% Documentation for the shell (EEP-48 chunks)
%%%---------------------------------------------------------------------------

-define(FORMAT, <<"application/erlang+html">>).

%% Each module's chunk is inside its .beam (so it goes wherever the .beam goes, into a
%% release too), in the format the shell renders, with the module's doc, unless the module
%% is marked @private or @hidden.
every_module_has_docs_for_the_shell_test() ->
    [begin
         Beam = code:which(M),
         ?assertMatch({M, {ok, {M, [{"Docs", _}]}}}, {M, beam_lib:chunks(Beam, ["Docs"])}),
         {ok, {docs_v1, _, erlang, Format, ModDoc, _, _}} = code:get_doc(M),
         ?assertEqual(?FORMAT, Format),
         Comment = module_comment(proplists:get_value(source, M:module_info(compile))),
         case is_private(Comment) of
             true -> ?assertMatch({M, D} when D =:= hidden; D =:= none, {M, ModDoc});
             false -> ?assertMatch({M, #{<<"en">> := [_ | _]}}, {M, ModDoc})
         end
     end || M <- modules()].

%% Every exported function has an entry: hidden when its comment says @private, otherwise
%% with its doc text. Nothing that is not exported is listed.
every_export_has_docs_for_the_shell_test() ->
    Wrong =
        [{M, F, Doc}
         || M <- modules(),
            {ok, {docs_v1, _, _, _, _, _, Entries}} <- [code:get_doc(M)],
            {Funs, Specs} <- [forms(M)],
            F <- exports(M),
            Doc <- [case [D || {{function, N, A}, _, _, D, _} <- Entries, {N, A} =:= F] of
                        [D] -> D;
                        Ds -> {entries, length(Ds)}
                    end],
            not case is_private(doc_comment(F, Funs, Specs)) of
                    true -> Doc =:= hidden;
                    false -> is_map(Doc) andalso maps:get(<<"en">>, Doc, []) =/= []
                end],
    ?assertEqual([], Wrong),
    Extra = [{M, K} || M <- modules(),
                       {ok, {docs_v1, _, _, _, _, _, Entries}} <- [code:get_doc(M)],
                       {{function, N, A} = K, _, _, _, _} <- Entries,
                       not lists:member({N, A}, exports(M))],
    ?assertEqual([], Extra).

%% What h/2 prints: the spec and the doc text (its first words, as written in the source).
shell_h_prints_the_doc_test() ->
    [begin
         {ok, Docs} = code:get_doc(M),
         Text = unicode:characters_to_binary(render(M, F, Docs)),
         {Funs, Specs} = forms(M),
         [{_, A} | _] = lists:sort([FA || {N, _} = FA <- exports(M), N =:= F]),
         Words = first_words(doc_comment({F, A}, Funs, Specs)),
         ?assertEqual(3, length(Words)),
         ?assertMatch({_, {match, _}}, {Text, re:run(Text, "-spec " ++ atom_to_list(F) ++ "\\(")}),
         ?assertMatch({_, {match, _}}, {Text, re:run(Text, lists:join("\\s+", Words))})
     end || {M, F} <- [{emmap, open}, {emmap, patomic_cas}, {emmap_queue, is_empty},
                       {emmap_io, open}, {emmap_blocks, read_blocks}]].

%% shell_docs:render/4 asks its group leader for its options, which EUnit's cannot answer:
%% it runs with the console's.
render(M, F, Docs) ->
    Self = self(),
    Pid = spawn_link(fun() ->
                         group_leader(whereis(user), self()),
                         Self ! {self(), shell_docs:render(M, F, Docs, #{ansi => false})}
                     end),
    receive {Pid, Text} -> Text end.

%% The hook that makes the chunks (native/doc_chunks.escript) never fails a build: a module
%% edoc cannot read is reported and left without docs, the others get theirs; a .beam
%% that has its chunk already is left alone.
doc_chunks_script_never_fails_the_build_test() ->
    D = emmap_test_lib:tmp_dir("doc_chunks"),
    Script = filename:absname("native/doc_chunks.escript"),
    Sh = fun(Cmd) -> os:cmd("cd '" ++ D ++ "' && " ++ Cmd ++ " 2>&1; echo \"status=$?\"") end,
    ok = filelib:ensure_dir(filename:join(D, "ebin") ++ "/"),
    try
        "status=0\n" = Sh("mkdir -p src && cp " ++ filename:absname("src") ++ "/* src/"),
        Mods = modules(),
        [begin
             {ok, _, Chunks} = beam_lib:all_chunks(code:which(M)),
             {ok, Bin} = beam_lib:build_module([C || {Id, _} = C <- Chunks, Id =/= "Docs"]),
             ok = file:write_file(filename:join([D, "ebin", atom_to_list(M) ++ ".beam"]), Bin)
         end || M <- Mods],
        Broken = filename:join(D, "src/emmap_io.erl"),
        {ok, Src} = file:read_file(Broken),
        ok = file:write_file(Broken, [Src, "\nbroken(\n"]),
        Out = Sh("escript " ++ Script ++ " ebin"),
        ?assertEqual({Out, true}, {Out, lists:suffix("status=0\n", Out)}),
        ?assertMatch({match, _}, re:run(Out, "emmap: warning: no documentation for the shell in ebin/emmap_io.beam")),
        Has = fun(M) -> element(1, beam_lib:chunks(filename:join([D, "ebin", atom_to_list(M) ++ ".beam"]), ["Docs"])) =:= ok end,
        ?assertEqual([M || M <- Mods, M =/= emmap_io], [M || M <- Mods, Has(M)]),
        %% a second run does only what is left: the broken module again
        ?assertMatch({match, [_]}, re:run(Sh("escript " ++ Script ++ " ebin"), "emmap: warning", [global]))
    after
        emmap_test_lib:rm_rf(D)
    end.

%% The first three words of a doc comment's text, up to a word with markup in it.
first_words(Block) ->
    Text = iolist_to_binary([[string:trim(L, leading, "% "), $\n] || L <- Block]),
    [_, After] = binary:split(Text, <<"@doc">>),
    lists:sublist(lists:takewhile(fun(W) -> re:run(W, "^[A-Za-z,.:;-]+$") =/= nomatch end,
                                  string:lexemes(binary_to_list(After), " \n")), 3).

is_private(Block) ->
    lists:any(fun(L) -> re:run(L, "@(private|hidden)\\b") =/= nomatch end, Block).

%% The comment block of an exported function (above its -spec when that comes first).
doc_comment(F, Funs, Specs) ->
    {File, FunLine} = maps:get(F, Funs),
    Start = case maps:find(F, Specs) of
                {ok, {File, SpecLine}} when SpecLine < FunLine -> SpecLine;
                _ -> FunLine
            end,
    comment_above(lines(File), Start).

%% The .app.src carries what a package registry asks for, and its `files' list names files
%% that exist (emmap_consumer_tests builds a package made of exactly these).
app_metadata_is_complete_test() ->
    {ok, [{application, emmap, Props}]} = file:consult("src/emmap.app.src"),
    Get = fun(K) -> proplists:get_value(K, Props) end,
    ?assert(length(Get(description)) > 20),
    ?assertMatch([_ | _], Get(vsn)),
    ?assertEqual(["MIT"], Get(licenses)),
    {ok, License} = file:read_file("LICENSE"),
    ?assertMatch({0, _}, binary:match(License, <<"MIT License">>)),
    [?assertMatch({[_ | _], "https://" ++ _}, L) || L <- Get(links)],
    ?assertMatch([_ | _], Get(links)),
    Files = Get(files),
    [?assert(filelib:is_file(F)) || F <- Files],
    %% everything the build reads is in the package, and the library once it is built,
    %% with the record of what it was built from (neither is in git: a clone builds them)
    [?assert(lists:member(F, Files)) || F <- ["src", "native", "Cargo.toml", "Cargo.lock",
                                              "rebar.config", "priv/.gitkeep",
                                              "priv/emmap.so", "priv/emmap.so.sha256"]],
    {ok, Ignore} = file:read_file(".gitignore"),
    [?assertMatch({match, _}, re:run(Ignore, "\\n" ++ P ++ "\\n")) || P <- ["/priv/\\*.so", "/priv/\\*.so.sha256"]].

%% Every reason the library can return or raise is in a row of the README's Errors table:
%% the core's reasons (errno names included), block storage's and the queue's, the literal
%% `{error, atom}' results of the Erlang modules, and what they raise: `badarg',
%% `open_counters''s `{emmap_counters, File, Reason}' reasons, the queue's
%% `{emmap_queue, Reason}' and `{bad_return_value, Term}'.
errors_are_listed_in_the_readme_test() ->
    Section = emmap_readme:section("## Errors"),
    Table = [L || L <- string:split(Section, "\n", all), string:prefix(L, "|") =/= nomatch],
    Listed = [list_to_atom(A) || L <- Table, [A] <- match_all(L, "`([a-z_]+)`")],
    Core = [F || F <- filelib:wildcard("native/emmap_core/src/**/*.rs"),
                 filename:basename(F) =/= "tests.rs"],
    FromRust = lists:append([[list_to_atom(A) || [A] <- match_all(read(F), "=> \"([a-z_]+)\"")]
                             || F <- Core]),
    Sources = [read(F) || F <- filelib:wildcard("src/*.erl")],
    Returned = lists:append([[list_to_atom(A) || [A] <- match_all(S, "\\{error, ([a-z][a-z_]*)\\}")]
                             || S <- Sources]),
    Raised = lists:append(
               [[list_to_atom(A) || [A] <- match_all(S, "counters_fail\\(File, ([a-z][a-z_]*)\\)")
                                        ++ match_all(S, "erlang:error\\(\\{emmap_queue, ([a-z][a-z_]*)\\}")
                                        ++ match_all(S, "erlang:error\\(\\{([a-z][a-z_]*), Other\\}")
                                        ++ match_all(S, "erlang:error\\(([a-z][a-z_]*)[,)]")]
                || S <- Sources]),
    ?assert(lists:member(size_mismatch, Raised)),
    ?assert(lists:member(bad_header, Returned)),
    ?assert(lists:member(queue_modified_while_popping, Raised)),
    ?assert(lists:member(badarg, Raised)),
    %% not a result of an emmap call: code:priv_dir/1's
    Internal = [bad_name],
    Reasons = lists:usort(FromRust ++ Returned ++ Raised) -- Internal,
    ?assert(length(Reasons) > 30),
    ?assertEqual([], Reasons -- Listed).

read(F) ->
    {ok, B} = file:read_file(F),
    B.

match_all(Text, Re) ->
    case re:run(Text, Re, [global, {capture, all_but_first, list}]) of
        {match, Ms} -> Ms;
        nomatch -> []
    end.

%% The README's docs command is the Makefile target that `make test' (what CI runs)
%% depends on, so it runs, warning-free, on every CI run.
readme_docs_command_is_run_by_make_test_test() ->
    ?assertEqual("make docs\n", emmap_readme:block("## Documentation", "sh")),
    Make = binary_to_list(read("Makefile")),
    ?assertMatch({match, _}, re:run(Make, "\ndocs: ")),
    {match, [Prereqs]} = re:run(Make, "\ntest: ([^\n]*)", [{capture, all_but_first, list}]),
    ?assert(lists:member("docs", string:lexemes(Prereqs, " "))).
