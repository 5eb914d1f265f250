#!/usr/bin/env escript
%% -*- erlang -*-
%%
%% Puts each module's documentation, made by edoc from its comments, into its .beam as an
%% EEP-48 "Docs" chunk. code:get_doc/1 looks there first, so `h(emmap, open)' in the Erlang
%% shell and `h :emmap.open' in IEx show it wherever the .beam goes: the checkout's _build,
%% a rebar3 or mix dependency's, a release.
%%
%% rebar3 runs this after compiling (a post-compile hook in rebar.config), in the
%% application's directory; the ebin directory it compiled into comes from rebar3's
%% environment (or mix's, which builds emmap with `rebar3 bare compile'), or is given as the
%% one argument. Only .beam files without a Docs chunk are done: the compiler writes none, so
%% those are exactly the modules compiled since the last run.
%%
%% In the chunk: exported functions and types. A function marked `@private' (or one whose
%% comment edoc does not see: the stubs in emmap_blocks_nif.hrl) is hidden, a module marked
%% `@private' or `@hidden' too. Documentation is not worth a failed build: any problem here
%% is reported as a warning and the build goes on (the test suite checks the chunks).

-include_lib("kernel/include/file.hrl").

main(Args) ->
    try
        run(Args)
    catch
        Class:Reason -> warn("", Class, Reason)
    end.

warn(What, Class, Reason) ->
    io:format(standard_error, "emmap: warning: no documentation for the shell~s (~p:~P)~n",
              [What, Class, Reason, 12]).

run(Args) ->
    [AppSrc] = filelib:wildcard("src/*.app.src"),
    App = filename:basename(AppSrc, ".app.src"),
    Ebin = ebin(App, Args),
    [document(Src, Beam)
     || Src <- lists:sort(filelib:wildcard("src/*.erl")),
        Beam <- [filename:join(Ebin, filename:basename(Src, ".erl") ++ ".beam")],
        filelib:is_regular(Beam),
        not has_docs(Beam)],
    ok.

ebin(_App, [Ebin]) ->
    Ebin;
ebin(App, []) ->
    Env = fun(Name) -> case os:getenv(Name) of false -> ""; V -> V end end,
    Dirs = case Env("REBAR_BARE_COMPILER_OUTPUT_DIR") of
               "" -> [];
               Out -> [filename:join(Out, "ebin")]
           end
        ++ case same_dir(filename:join(Env("REBAR_CHECKOUTS_DIR"), App), ".") of
               true -> [filename:join([Env("REBAR_CHECKOUTS_OUT_DIR"), App, "ebin"])];
               false -> []
           end
        ++ [filename:join([Env("REBAR_DEPS_DIR"), App, "ebin"])],
    case [D || D <- Dirs, filelib:is_regular(filename:join(D, App ++ ".app"))] of
        [Ebin | _] -> Ebin;
        [] -> erlang:error({no_ebin_directory, Dirs})
    end.

%% Whether two paths name one directory (a checkout is often a symbolic link).
same_dir(A, B) ->
    case {file:read_file_info(A), file:read_file_info(B)} of
        {{ok, #file_info{major_device = D, inode = I}},
         {ok, #file_info{major_device = D, inode = I}}} ->
            true;
        _ ->
            false
    end.

has_docs(Beam) ->
    case beam_lib:chunks(Beam, ["Docs"]) of
        {ok, {_, [{"Docs", _}]}} -> true;
        _ -> false
    end.

%% One module's failure leaves the others documented.
document(Src, Beam) ->
    try
        embed(filter(edoc_chunk(Src), Beam), Beam)
    catch
        Class:Reason -> warn(" in " ++ Beam, Class, Reason)
    end.

embed(Docs, Beam) ->
    {ok, _Mod, Chunks} = beam_lib:all_chunks(Beam),
    {ok, New} = beam_lib:build_module([C || {Id, _} = C <- Chunks, Id =/= "Docs"]
                                      ++ [{"Docs", term_to_binary(Docs, [compressed])}]),
    Tmp = Beam ++ ".docs",
    ok = file:write_file(Tmp, New),
    ok = file:rename(Tmp, Beam).

%% The EEP-48 term edoc makes for a source file (what edoc_doclet_chunks writes to a file).
edoc_chunk(Src) ->
    Opts = [return_entries, private, hidden, {show_private, false},
            {preprocess, true}, {includes, ["include", "src"]}],
    {_Module, Doc, Entries} = edoc:get_doc(Src, Opts),
    binary_to_term(edoc:layout(Doc, [{layout, edoc_layout_chunks}, {entries, Entries},
                                     {source, Src} | Opts])).

%% Keeps what the module exports; an exported function without documentation is hidden.
filter({docs_v1, Anno, Lang, Format, ModDoc, Meta, Entries}, Beam) ->
    {ok, {_, [{exports, Exports}]}} = beam_lib:chunks(Beam, [exports]),
    Types = exported_types(Beam),
    Kept = [case Kind of
                function when Doc =:= #{} -> {KNA, A, S, hidden, M};
                _ -> E
            end
            || {{Kind, N, Ar} = KNA, A, S, Doc, M} = E <- Entries,
               case Kind of
                   function -> lists:member({N, Ar}, Exports);
                   type -> Types =:= all orelse lists:member({N, Ar}, Types);
                   _ -> true
               end],
    {docs_v1, Anno, Lang, Format, ModDoc, Meta, Kept}.

exported_types(Beam) ->
    case beam_lib:chunks(Beam, [abstract_code]) of
        {ok, {_, [{abstract_code, {raw_abstract_v1, Forms}}]}} ->
            lists:append([Ts || {attribute, _, export_type, Ts} <- Forms]);
        _ ->
            all                                 % compiled without debug_info
    end.
