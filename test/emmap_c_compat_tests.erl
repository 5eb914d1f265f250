%%% Non-BEAM processes share counters files with Erlang through c_src_compat/: the header
%%% (emmap_counters.h) and the command-line tool built from it (emmap-counter).
-module(emmap_c_compat_tests).

-include_lib("eunit/include/eunit.hrl").

-define(EACH, 250000).                          % increments per side

-import(emmap_test_lib, [tmp_path/1, rm_rf/1]).

root() -> emmap_readme:root().

%% Builds emmap-counter with c_src_compat/Makefile (warnings are errors there) into Dir.
tool(Dir) ->
    ok = filelib:ensure_dir(Dir ++ "/"),
    Cmd = "make -s -C " ++ filename:join(root(), "c_src_compat") ++ " OUT=" ++ Dir ++ " 2>&1",
    ?assertEqual("", os:cmd(Cmd)),
    filename:join(Dir, "emmap-counter").

%% Builds test/c/counter_hammer.c, a C program that includes the header, into Dir.
hammer(Dir) ->
    Out = filename:join(Dir, "counter_hammer"),
    Cmd = "cc -O2 -Wall -Wextra -Werror -pedantic -std=c11 -D_DEFAULT_SOURCE -I "
          ++ filename:join(root(), "c_src_compat") ++ " -o " ++ Out ++ " "
          ++ filename:join([root(), "test", "c", "counter_hammer.c"]) ++ " 2>&1",
    ?assertEqual("", os:cmd(Cmd)),
    Out.

run(Tool, P, Args) ->
    os:cmd(Tool ++ " " ++ P ++ " " ++ Args ++ " 2>&1").

with_cc(Fun) ->
    case os:find_executable("cc") of
        false -> {"skipped: no C compiler on PATH", fun() -> ok end};
        _ -> {timeout, 120, Fun}
    end.

%% Both sides start together (the C process waits for Erlang's "go" in counter 0) and
%% each adds 1 to counter 1 250,000 times: the total is exact, and the interleaving each
%% side observed shows they really ran at the same time.
c_and_erlang_count_together_test_() ->
    with_cc(fun() ->
        Dir = tmp_path("together"),
        try
            Tool = tool(Dir),
            Hammer = hammer(Dir),
            P = filename:join(Dir, "counters.bin"),
            %% C creates the file; Erlang opens it with the count from its header.
            ?assertEqual("2\n", run(Tool, P, "create 2")),
            C = emmap:open_counters(P),
            %% Both sides' sums are exact in every round; that the two really ran at the
            %% same time is seen in most rounds, but on a busy machine the OS may run one
            %% side's whole round before the other's: up to 5 rounds to see it once.
            {CInterleaved, ErlInterleaved} = race_rounds(C, Tool, Hammer, P, 5),
            ?assert(CInterleaved + ErlInterleaved > 0),
            ok = emmap:close_counters(C)
        after
            rm_rf(Dir)
        end
    end).

race_rounds(C, Tool, Hammer, P, Left) ->
    R = {CI, EI} = race_round(C, Tool, Hammer, P),
    case CI + EI > 0 orelse Left =< 1 of
        true -> R;
        false -> race_rounds(C, Tool, Hammer, P, Left - 1)
    end.

%% One round: the C process waits for counter 0 ("go"), then both sides add 1 to counter 1
%% ?EACH times; the sum is exact, seen from both sides.
race_round(C, Tool, Hammer, P) ->
    _ = emmap:set_counter(C, 1, 0),
    _ = emmap:set_counter(C, 0, 0),
    Self = self(),
    spawn_link(fun() -> Self ! {c, os:cmd(Hammer ++ " " ++ P ++ " " ++ integer_to_list(?EACH))} end),
    timer:sleep(50),                    % let the C process map the file and wait
    0 = emmap:set_counter(C, 0, 1),     % go
    ErlInterleaved = count(C, ?EACH, emmap:read_counter(C, 1) - 1, 0),
    CInterleaved = receive {c, Out} -> list_to_integer(string:trim(Out))
                   after 60000 -> erlang:error(c_side_timeout)
                   end,
    io:format(user, "~nC and BEAM: ~w increments each; additions that saw the other "
              "side's: C ~w, BEAM ~w~n", [?EACH, CInterleaved, ErlInterleaved]),
    ?assertEqual(2 * ?EACH, emmap:read_counter(C, 1)),
    ?assertEqual(integer_to_list(2 * ?EACH) ++ "\n", run(Tool, P, "get 1")),
    {CInterleaved, ErlInterleaved}.

count(_C, 0, _Prev, Interleaved) ->
    Interleaved;
count(C, N, Prev, Interleaved) ->
    Old = emmap:inc_counter(C, 1),
    count(C, N - 1, Old, Interleaved + if Old =:= Prev + 1 -> 0; true -> 1 end).

%% A VM writes counters and exits; the CLI reads what it wrote. The CLI adds; a restarted
%% VM sees it, adds, exits; the CLI sees that. The pages outlive each process.
cli_and_restarted_vms_see_each_others_counters_test_() ->
    with_cc(fun() ->
        Dir = tmp_path("restart"),
        try
            Tool = tool(Dir),
            P = filename:join(Dir, "counters.bin"),
            %% VM 1: creates 3 counters, counts, and halts without closing anything
            ?assertEqual("done\n", vm("C = emmap:open_counters(\"" ++ P ++ "\", 3), "
                                       "[emmap:inc_counter(C, 0, 7) || _ <- lists:seq(1, 5)], "
                                       "0 = emmap:set_counter(C, 1, -42), "
                                       "io:format(\"done~n\")")),
            ?assertEqual("35\n", run(Tool, P, "get 0")),
            ?assertEqual("-42\n", run(Tool, P, "get 1")),
            ?assertEqual("0\n", run(Tool, P, "get 2")),
            ?assertEqual("0\n", run(Tool, P, "inc 2 1000")),
            %% VM 2: opens the existing file (count from the header)
            ?assertEqual("[35,-42,1000]\n",
                         vm("C = emmap:open_counters(\"" ++ P ++ "\"), "
                            "io:format(\"~w~n\", [[emmap:read_counter(C, I) || I <- [0, 1, 2]]]), "
                            "35 = emmap:inc_counter(C, 0), ok = emmap:close_counters(C)")),
            ?assertEqual("36\n", run(Tool, P, "get 0")),
            ?assertEqual("-42\n", run(Tool, P, "set 1 5")),
            ?assertEqual("5\n", run(Tool, P, "read 1"))      % `read' is `get'
        after
            rm_rf(Dir)
        end
    end).

%% Runs Exprs (no trailing dot) in a new VM that then halts; returns what it printed.
vm(Exprs) ->
    {_, Out} = emmap_test_lib:run_vm(Exprs ++ ", halt().", #{line => false}),
    binary_to_list(Out).

%% What the tool refuses: files that are not counters files (left as they were), indexes
%% out of range, unknown commands.
cli_refuses_bad_input_test_() ->
    with_cc(fun() ->
        Dir = tmp_path("refuse"),
        try
            Tool = tool(Dir),
            P = filename:join(Dir, "counters.bin"),
            C = emmap:open_counters(P, 2),
            ?assertEqual(0, emmap:set_counter(C, 0, -5)),
            ?assertEqual("-5\n", run(Tool, P, "get 0")),
            ok = emmap:close_counters(C),
            ?assertMatch("emmap-counter: index 2 >= 2" ++ _, run(Tool, P, "get 2")),
            ?assertMatch("usage: " ++ _, run(Tool, P, "frobnicate 0")),
            ?assertMatch("emmap-counter: " ++ _, run(Tool, P ++ ".missing", "get 0")),
            ok = file:write_file(P, <<"not a counters file at all">>),
            ?assertMatch("emmap-counter: " ++ _, run(Tool, P, "get 0")),
            ?assertEqual({ok, <<"not a counters file at all">>}, file:read_file(P))
        after
            rm_rf(Dir)
        end
    end).

%% The README's C interop snippets, as written, in order: the tool (built by its make
%% line), the Erlang lines, the C program and its build line. They run in a copy of
%% c_src_compat (the make line builds in place), with the counters file in our own
%% directory instead of /tmp/emmap_hits.bin.
readme_snippets_run_as_written_test_() ->
    with_cc(fun() ->
        Dir = tmp_path("readme"),
        try
            ok = filelib:ensure_dir(Dir ++ "/"),
            "" = os:cmd("cp -r " ++ filename:join(root(), "c_src_compat") ++ " " ++ Dir ++ " 2>&1"),
            Section = emmap_readme:section("## Sharing counters with C programs"),
            File = filename:join(Dir, "hits.bin"),
            Sub = fun(Text) -> emmap_readme:replace_path(Text, "/tmp/emmap_hits.bin", File) end,
            [Tool, Build] = emmap_readme:blocks(Section, "sh"),
            [Erlang] = emmap_readme:blocks(Section, "erlang"),
            [C] = emmap_readme:blocks(Section, "c"),
            ?assert(lists:suffix("4\n0\n5\n", sh(Sub(Tool), Dir))),
            Printed = emmap_readme:eval_printing(lists:flatten(Sub(Erlang))),
            ?assertEqual("", Printed),
            ok = file:write_file(filename:join(Dir, "hits.c"), Sub(C)),
            ?assertEqual("counter 2 was 6\n16\n", sh(Sub(Build), Dir))
        after
            rm_rf(Dir)
        end
    end).

%% Runs sh lines in Dir, stopping at the first failure; returns the output.
sh(Lines, Dir) ->
    os:cmd("cd " ++ Dir ++ " && set -e && " ++ lists:flatten(string:replace(Lines, "\n", " && ", all))
           ++ " true 2>&1").
