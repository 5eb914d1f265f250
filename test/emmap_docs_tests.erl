%%% Every module of the application is documented and typed: each has a module @doc, and
%%% each exported function a -spec and an @doc with text (internal exports too: NIF stubs,
%%% gen_server callbacks). `make docs' checks that edoc builds the HTML without warnings;
%%% these tests check what edoc does not complain about. Modules added later (their
%%% names come from the .app file) are checked the same way.
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
    {File, FunLine} = maps:get(F, Funs),
    %% the doc comment sits above the -spec when the spec comes first
    Start = case maps:find(F, Specs) of
                {ok, {File, SpecLine}} when SpecLine < FunLine -> SpecLine;
                _ -> FunLine
            end,
    has_doc(comment_above(lines(File), Start)).

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
    %% everything the build reads is in the package
    [?assert(lists:member(F, Files)) || F <- ["src", "native", "Cargo.toml", "Cargo.lock",
                                              "rebar.config", "priv/.gitkeep"]].

%% Every `{error, Reason}' atom the library can return is in the README's Errors table:
%% the core's reasons (errno names included), block storage's, and the literal
%% `{error, atom}' results of the Erlang modules.
errors_are_listed_in_the_readme_test() ->
    Section = emmap_readme:section("## Errors"),
    Listed = [list_to_atom(A) || [A] <- match_all(Section, "`([a-z_]+)`")],
    FromRust = lists:append([[list_to_atom(A) || [A] <- match_all(read(F), "=> \"([a-z_]+)\"")]
                             || F <- ["native/emmap_core/src/error.rs",
                                      "native/emmap_core/src/blocks.rs"]]),
    FromErlang = lists:append([[list_to_atom(A) || [A] <- match_all(read(F), "\\{error, ([a-z][a-z_]*)\\}")]
                               || F <- filelib:wildcard("src/*.erl")]),
    %% not results of an emmap call: code:priv_dir/1's, the NIF's internal answers, and
    %% what the queue server says to a message that is not a request
    Internal = [bad_name, badarg, dirty],
    Reasons = lists:usort(FromRust ++ FromErlang) -- Internal,
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
