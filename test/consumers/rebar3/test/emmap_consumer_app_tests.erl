%% The dependent project's own tests: emmap works from here (`rebar3 eunit').
-module(emmap_consumer_app_tests).
-include_lib("eunit/include/eunit.hrl").

tmp(Name) ->
    filename:join("/tmp", Name ++ "_" ++ os:getpid() ++ "_"
                  ++ integer_to_list(erlang:unique_integer([positive]))).

counters_test() ->
    P = tmp("emmap_consumer_counters"),
    try ?assertEqual(42, emmap_consumer:run(P))
    after file:delete(P)
    end.

file_functions_on_a_mapping_test() ->
    P = tmp("emmap_consumer_file"),
    try
        {ok, M} = emmap:open(P, 0, 64, [create, read, write, shared]),
        ok = file:pwrite(M, 10, <<"from a dependency">>),
        ?assertEqual({ok, <<"dependency">>}, file:pread(M, 17, 10)),
        ?assertEqual({ok, 0}, emmap:patomic_add(M, 32, 5)),
        ok = file:close(M),
        {ok, Raw} = file:read_file(P),
        ?assertEqual(<<"from a dependency">>, binary:part(Raw, 10, 17))
    after
        file:delete(P)
    end.

%% emmap's documentation is there for the shell's h/2: each of its modules, each function
%% (emmap's internal modules have theirs hidden).
docs_for_the_shell_test() ->
    _ = application:load(emmap),
    {ok, Mods} = application:get_key(emmap, modules),
    Internal = [emmap_nif, emmap_errors],
    [?assertMatch({M, {ok, {docs_v1, _, erlang, <<"application/erlang+html">>, #{<<"en">> := _}, _, _}}},
                  {M, code:get_doc(M)})
     || M <- Mods -- Internal],
    [?assertMatch({M, {ok, {docs_v1, _, erlang, <<"application/erlang+html">>, hidden, _, _}}},
                  {M, code:get_doc(M)})
     || M <- Internal],
    {ok, {docs_v1, _, _, _, _, _, Docs}} = code:get_doc(emmap),
    ?assertMatch([#{<<"en">> := [_ | _]}],
                 [D || {{function, open, 2}, _, _, D, _} <- Docs]),
    %% what h(emmap, pread, 3) prints (shell_docs asks the console for its options)
    Self = self(),
    spawn_link(fun() ->
                   group_leader(whereis(user), self()),
                   Self ! {text, shell_docs:render(emmap, pread, 3, element(2, code:get_doc(emmap)),
                                                   #{ansi => false})}
               end),
    Text = receive {text, T} -> unicode:characters_to_binary(T) end,
    ?assertNotEqual(nomatch, binary:match(Text, <<"-spec pread(">>)).
