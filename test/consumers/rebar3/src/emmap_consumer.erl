-module(emmap_consumer).
-export([run/1]).

%% Counters from a dependent application: open, count, reopen, read.
run(Path) ->
    C = emmap:open_counters(Path, 2),
    0 = emmap:inc_counter(C, 1, 41),
    41 = emmap:inc_counter(C, 1),
    ok = emmap:close_counters(C),
    C2 = emmap:open_counters(Path),
    V = emmap:read_counter(C2, 1),
    ok = emmap:close_counters(C2),
    V.
