%% @doc A dependent application's use of emmap: persistent counters.
-module(emmap_consumer).
-export([run/1]).

%% @doc Counts in a counters file at `Path', reopens it and returns counter 1 (42 for a new
%% file).
-spec run(file:filename()) -> integer().
run(Path) ->
    C = emmap:open_counters(Path, 2),
    0 = emmap:inc_counter(C, 1, 41),
    41 = emmap:inc_counter(C, 1),
    ok = emmap:close_counters(C),
    C2 = emmap:open_counters(Path),
    V = emmap:read_counter(C2, 1),
    ok = emmap:close_counters(C2),
    V.
