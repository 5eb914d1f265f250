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
