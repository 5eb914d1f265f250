%%% The examples of the user's README, run exactly as written, in a real VM.
%%%
%%% The text of each example is kept here verbatim (and checked against the user's README
%%% when `../shared/spec/seed-README.md' is present). It is evaluated the way the Erlang
%%% shell does: `erl_eval' with bindings carried from one expression to the next. The
%%% README's counters example calls `io_format/2', which the shell resolves as a local
%%% function; the evaluator here maps it to `io:format/2'. Its `% Prints:' comment is the
%%% expected output.
%%%
%%% The two-shell example runs twice: as two Erlang processes, and as two OS processes
%%% (two `erl' VMs driven over ports), with the lines interleaved as the README shows.
-module(emmap_seed_tests).

-include_lib("eunit/include/eunit.hrl").

-export([demo/0, serve/0]).

-define(COUNTERS_EXAMPLE,
"F  = emmap:open_counters(\"/tmp/mem.bin\", 2),
N1 = emmap:inc_counter(F, 0),
N2 = emmap:inc_counter(F, 0, 5),
N3 = emmap:inc_counter(F, 0),
N4 = emmap:inc_counter(F, 0, 2),
N5 = emmap:set_counter(F, 0, 15),
N6 = emmap:read_counter(F, 0),
emmap:close_counters(F),
io_format(\"N1=~w, N2=~w, N3=~w, N4=~w, N5=~w, N6=~w\\n\",
          [N1, N2, N3, N4, N5, N6]).  % Prints: N1=0, N2=1, N3=6, N4=7, N5=9, N6=15
").

-define(SHELLS_EXAMPLE,
"shell1> {ok, MM} = emmap:open(\"/tmp/mem.data\", 0, 8, [create, direct, read, write, shared, nolock]).
shell2> {ok, MM} = emmap:open(\"/tmp/mem.data\", 0, 8, [create, direct, read, write, shared, nolock]).

shell1> emmap:pwrite(MM, 0, <<\"test1\">>).
shell2> {ok, Bin} = emmap:pread(MM, 0, 5).
{ok, <<\"test1\">>}

shell1> emmap:pwrite(MM, 0, <<\"test2\">>).
shell2> Bin.
<<\"test2\">>

shell1> emmap:pwrite(MM, 0, <<\"test3\">>).
shell2> Bin.
<<\"test3\">>
").

-define(BASIC_EXAMPLE,
"{ok, Mem} = emmap:open(\"filename\", [read, shared, direct]),
{ok, Binary} = file:pread(Mem, 100, 40),
...
ok = file:close(Mem).
").

%%%---------------------------------------------------------------------------
%%% Evaluating text like the shell does
%%%---------------------------------------------------------------------------

%% Evaluates `Text' (a sequence of expressions ending in `.') with `Bindings'.
eval(Text, Bindings) ->
    {ok, Tokens, _} = erl_scan:string(Text),
    {ok, Exprs} = erl_parse:parse_exprs(Tokens),
    {value, V, B} = erl_eval:exprs(Exprs, Bindings, {value, fun local/2}),
    {V, B}.

%% Shell-local functions the README uses.
local(io_format, Args) -> apply(io, format, Args);
local(Name, Args) -> erlang:error({undefined_shell_command, Name, length(Args)}).

%% Runs the counters example, returning what it printed.
run_counters_example() ->
    _ = file:delete("/tmp/mem.bin"),
    emmap_test_lib:eval_printing(?COUNTERS_EXAMPLE).

%% The two-shell example as a list of steps: {ShellNo, Command, Expected | none}.
shell_steps(Text) ->
    Lines = [L || L <- string:split(Text, "\n", all), L =/= ""],
    steps(Lines).

steps([]) -> [];
steps(["shell" ++ [N, $>, $\s | Cmd] | Rest]) ->
    case Rest of
        [Next | Rest1] when hd(Next) =/= $s ->
            [{N - $0, Cmd, Next} | steps(Rest1)];
        _ ->
            [{N - $0, Cmd, none} | steps(Rest)]
    end.

expected_term(none) -> none;
expected_term(Text) ->
    {V, _} = eval(Text ++ ".", erl_eval:new_bindings()),
    {value, V}.

%% Runs the two-shell example, each shell being `Shell(N)' (a fun taking a command and
%% returning the value it evaluates to, as a term copied at that moment).
run_shells_example(Shells) ->
    _ = file:delete("/tmp/mem.data"),
    [begin
         Got = (maps:get(N, Shells))(Cmd),
         {N, Cmd, Got, expected_term(Exp)}
     end || {N, Cmd, Exp} <- shell_steps(?SHELLS_EXAMPLE)].

%% A shell in this VM: a process with its own bindings.
erlang_shell() ->
    Pid = spawn_link(fun() -> shell_loop(erl_eval:new_bindings()) end),
    fun(Cmd) ->
            Pid ! {eval, self(), Cmd},
            receive {Pid, R} -> R end
    end.

shell_loop(B) ->
    receive
        {eval, From, Cmd} ->
            {V, B1} = eval(Cmd, B),
            %% What the shell prints is the value now: copy it before replying.
            From ! {self(), binary_to_term(term_to_binary(V))},
            shell_loop(B1)
    end.

%% A shell in a separate OS process: an `erl' VM reading commands on stdin.
os_shell() ->
    Erl = os:find_executable("erl"),
    Paths = lists:append([["-pa", D] || D <- [filename:dirname(code:which(emmap)),
                                             filename:dirname(code:which(?MODULE))]]),
    Port = open_port({spawn_executable, Erl},
                     [{args, ["-noshell" | Paths] ++ ["-eval", "emmap_seed_tests:serve()"]},
                      {line, 1 bsl 20}, binary, exit_status, use_stdio]),
    fun(Cmd) ->
            true = port_command(Port, [Cmd, $\n]),
            receive
                {Port, {data, {eol, <<"ok ", B64/binary>>}}} ->
                    binary_to_term(base64:decode(B64));
                {Port, {data, {eol, Other}}} ->
                    erlang:error({os_shell, Other});
                {Port, {exit_status, S}} ->
                    erlang:error({os_shell_exit, S})
            after 30000 ->
                    erlang:error(os_shell_timeout)
            end
    end.

%% @doc Body of an OS-process shell: one command per line in, one value per line out.
serve() ->
    serve(erl_eval:new_bindings()).

serve(B) ->
    case io:get_line("") of
        eof -> halt(0);
        Line ->
            {V, B1} = eval(string:trim(Line), B),
            io:put_chars(["ok ", base64:encode(term_to_binary(V)), "\n"]),
            serve(B1)
    end.

%%%---------------------------------------------------------------------------
%%% Demo: what `make demo' prints
%%%---------------------------------------------------------------------------

%% @doc Runs every README example and prints what it shows.
demo() ->
    io:format("== Atomic persistent counters (README example, as written)~n~s~n",
              [?COUNTERS_EXAMPLE]),
    io:format("prints: ~s~n", [run_counters_example()]),
    io:format("== Shared memory, two Erlang processes as shell1/shell2~n", []),
    print_shells(run_shells_example(#{1 => erlang_shell(), 2 => erlang_shell()})),
    io:format("== Shared memory, two OS processes (two erl VMs) as shell1/shell2~n", []),
    print_shells(run_shells_example(#{1 => os_shell(), 2 => os_shell()})),
    io:format("== Basic usage~n", []),
    Res = basic_usage(),
    io:format("file:pread(Mem, 100, 40) -> ~p~n", [Res]),
    ok.

print_shells(Steps) ->
    [io:format("shell~w> ~s~n~p~n", [N, Cmd, Got]) || {N, Cmd, Got, _} <- Steps],
    ok.

%% The basic-usage example with its `...' removed, on a file named "filename".
basic_usage() ->
    Dir = tmp_dir(),
    {ok, Cwd} = file:get_cwd(),
    ok = file:set_cwd(Dir),
    try
        ok = file:write_file("filename", [binary:copy(<<"0123456789">>, 20)]),
        Text = string:replace(?BASIC_EXAMPLE, "...\n", "", all),
        {_, B} = eval(lists:flatten(Text), erl_eval:new_bindings()),
        {value, Binary} = erl_eval:binding('Binary', B),
        _ = file:delete("filename"),
        {ok, Binary}
    after
        ok = file:set_cwd(Cwd),
        _ = file:del_dir(Dir)
    end.

tmp_dir() ->
    D = filename:join("/tmp", "emmap_seed_" ++ integer_to_list(erlang:unique_integer([positive]))),
    ok = file:make_dir(D),
    D.

%%%---------------------------------------------------------------------------
%%% Tests
%%%---------------------------------------------------------------------------

counters_example_prints_what_it_says_test() ->
    ?assertEqual("N1=0, N2=1, N3=6, N4=7, N5=9, N6=15\n", emmap_test_lib:expected_print(?COUNTERS_EXAMPLE)),
    ?assertEqual(emmap_test_lib:expected_print(?COUNTERS_EXAMPLE), run_counters_example()),
    %% ... and the counter is persistent: reopening shows the last value.
    F = emmap:open_counters("/tmp/mem.bin"),
    ?assertEqual(15, emmap:read_counter(F, 0)),
    ?assertEqual(0, emmap:read_counter(F, 1)),
    ok = emmap:close_counters(F),
    ok = file:delete("/tmp/mem.bin").

shells_as_erlang_processes_test() ->
    check_shells(run_shells_example(#{1 => erlang_shell(), 2 => erlang_shell()})).

shells_as_os_processes_test_() ->
    {timeout, 60, fun() ->
        check_shells(run_shells_example(#{1 => os_shell(), 2 => os_shell()}))
    end}.

check_shells(Steps) ->
    %% Every line with an expected value shows exactly that value; test1..3 are all seen.
    Checked = [begin ?assertEqual({N, Cmd, Exp}, {N, Cmd, Got}), Exp end
               || {N, Cmd, Got, {value, Exp}} <- Steps],
    ?assertEqual([{ok, <<"test1">>}, <<"test2">>, <<"test3">>], Checked),
    ok = file:delete("/tmp/mem.data").

basic_usage_test() ->
    ?assertEqual({ok, <<"0123456789012345678901234567890123456789">>}, basic_usage()).

%% The examples here are the user's text, verbatim.
examples_match_the_readme_test() ->
    case file:read_file(seed_readme()) of
        {ok, Readme} ->
            [?assertNotEqual(nomatch, binary:match(Readme, list_to_binary(Ex)))
             || Ex <- [?COUNTERS_EXAMPLE, ?SHELLS_EXAMPLE, ?BASIC_EXAMPLE]];
        {error, enoent} ->
            %% Outside the project's workspace the user's README is not beside the repo.
            ?debugMsg("skipped: ../shared/spec/seed-README.md not found")
    end.

seed_readme() ->
    {ok, Cwd} = file:get_cwd(),                 % rebar3 runs tests from the project root
    filename:join([filename:dirname(Cwd), "shared", "spec", "seed-README.md"]).

%% Our own README's version of the counters example (with `io:format') runs as written too.
readme_counters_example_test() ->
    {ok, Readme} = file:read_file("README.md"),
    {match, Blocks} = re:run(Readme, "```erlang\n(.*?)```", [dotall, global, {capture, all_but_first, list}]),
    [Example] = [B || [B] <- Blocks, string:find(B, "emmap:open_counters(\"/tmp/mem.bin\", 2)") =/= nomatch],
    _ = file:delete("/tmp/mem.bin"),
    ?assertEqual("N1=0, N2=1, N3=6, N4=7, N5=9, N6=15\n", emmap_test_lib:expected_print(Example)),
    ?assertEqual(emmap_test_lib:expected_print(Example), emmap_test_lib:eval_printing(Example)),
    ok = file:delete("/tmp/mem.bin").
