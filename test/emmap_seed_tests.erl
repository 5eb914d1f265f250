%%% The examples of the user's guide (the README this library replaces), run exactly as
%%% written, in a real VM.
%%%
%%% The guide is kept in the repository, byte for byte, as test/contract/seed-README.md,
%%% and the examples are taken from it: no other copy of their text is kept. Without that
%%% file every test here fails. Where the user's own file is found too
%%% (`shared/spec/seed-README.md' beside the checkout or beside a directory above it), the
%%% copy must equal it, so that a changed contract fails the suite until the copy and the
%%% code follow it. Every Erlang example of the guide is run by a test here.
%%%
%%% An example is evaluated the way the Erlang shell does (emmap_readme:eval/2): bindings
%%% carried from one expression to the next; the counters example's `io_format/2', a
%%% function local to the user's shell, is `io:format/2'. Its `% Prints:' comment is the
%%% expected output. The two-shell example runs twice: as two Erlang processes, and as two
%%% OS processes (two `erl' VMs driven over ports), with the lines interleaved as the guide
%%% shows.
%%%
%%% The counters example uses /tmp/mem.bin and the two-shell example /tmp/mem.data. They
%%% run as written, with those names: each run removes what an earlier run left there, and
%%% holds a lock meanwhile (emmap_test_lib:with_lock/2) so that two test runs on one
%%% machine do not use the files at the same time.
-module(emmap_seed_tests).

-include_lib("eunit/include/eunit.hrl").

-export([demo/0, serve/0]).

%% The copy of the user's guide, from the checkout's root.
-define(CONTRACT, "test/contract/seed-README.md").
%% The lock of the tests that use /tmp/mem.bin and /tmp/mem.data.
-define(LOCK, "seed_examples").

%%%---------------------------------------------------------------------------
%%% The examples, from the guide
%%%---------------------------------------------------------------------------

contract() ->
    emmap_readme:read(?CONTRACT).

example(Heading) ->
    emmap_readme:block(contract(), Heading, "erlang").

basic_example() -> example("## Basic Usage").
atomic_example() -> example("## Atomic operations on the memory mapped file").
counters_example() -> example("## Atomic persistent counters").
shells_example() -> example("## Shared memory and using mutable binaries").

%%%---------------------------------------------------------------------------
%%% Running them
%%%---------------------------------------------------------------------------

%% Runs the counters example, returning what it printed.
run_counters_example() ->
    _ = file:delete("/tmp/mem.bin"),
    emmap_readme:eval_printing(counters_example()).

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
    {V, _} = emmap_readme:eval(Text ++ ".", erl_eval:new_bindings()),
    {value, V}.

%% Runs the two-shell example, each shell being `Shell(N)' (a fun taking a command and
%% returning the value it evaluates to, as a term copied at that moment).
run_shells_example(Shells) ->
    _ = file:delete("/tmp/mem.data"),
    [begin
         Got = (maps:get(N, Shells))(Cmd),
         {N, Cmd, Got, expected_term(Exp)}
     end || {N, Cmd, Exp} <- shell_steps(shells_example())].

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
            {V, B1} = emmap_readme:eval(Cmd, B),
            %% What the shell prints is the value now: copy it before replying.
            From ! {self(), binary_to_term(term_to_binary(V))},
            shell_loop(B1)
    end.

%% A shell in a separate OS process: an `erl' VM reading commands on stdin. (It ends when
%% its standard input does: when the process that started it, which owns the port, ends.)
os_shell() ->
    {Port, _} = emmap_test_lib:start_child(?MODULE, serve, [],
                                           #{line => 1 bsl 20, stderr => own}),
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
            {V, B1} = emmap_readme:eval(string:trim(Line), B),
            io:put_chars(["ok ", base64:encode(term_to_binary(V)), "\n"]),
            serve(B1)
    end.

%% The basic-usage example with its `...' removed, on a file named "filename" (in a
%% directory of our own: the example names the file relative to the current directory).
basic_usage() ->
    Text = string:replace(basic_example(), "...\n", "", all),
    Dir = emmap_test_lib:tmp_dir("seed"),
    {ok, Cwd} = file:get_cwd(),
    ok = file:set_cwd(Dir),
    try
        ok = file:write_file("filename", [binary:copy(<<"0123456789">>, 20)]),
        {_, B} = emmap_readme:eval(lists:flatten(Text), erl_eval:new_bindings()),
        {value, Binary} = erl_eval:binding('Binary', B),
        _ = file:delete("filename"),
        {ok, Binary}
    after
        ok = file:set_cwd(Cwd),
        _ = file:del_dir(Dir)
    end.

%%%---------------------------------------------------------------------------
%%% Demo: what `make demo' prints
%%%---------------------------------------------------------------------------

%% @doc Runs every README example and prints what it shows.
demo() ->
    emmap_test_lib:with_lock(?LOCK, fun() ->
        io:format("== Atomic persistent counters (README example, as written)~n~s~n",
                  [counters_example()]),
        io:format("prints: ~s~n", [run_counters_example()]),
        io:format("== Shared memory, two Erlang processes as shell1/shell2~n", []),
        print_shells(run_shells_example(#{1 => erlang_shell(), 2 => erlang_shell()})),
        io:format("== Shared memory, two OS processes (two erl VMs) as shell1/shell2~n", []),
        print_shells(run_shells_example(#{1 => os_shell(), 2 => os_shell()}))
    end),
    io:format("== Basic usage~n", []),
    Res = basic_usage(),
    io:format("file:pread(Mem, 100, 40) -> ~p~n", [Res]),
    QuickStart = emmap_readme:block("## Quick start", "erlang"),
    io:format("== README's quick start, as written~n~s~n", [QuickStart]),
    emmap_test_lib:with_lock("quickstart", fun() ->
        io:format("prints: ~s", [emmap_readme:eval_printing(QuickStart)])
    end),
    ok.

print_shells(Steps) ->
    [io:format("shell~w> ~s~n~p~n", [N, Cmd, Got]) || {N, Cmd, Got, _} <- Steps],
    ok.

%%%---------------------------------------------------------------------------
%%% Tests
%%%---------------------------------------------------------------------------

counters_example_prints_what_it_says_test() ->
    emmap_test_lib:with_lock(?LOCK, fun() ->
        Example = counters_example(),
        ?assertEqual("N1=0, N2=1, N3=6, N4=7, N5=9, N6=15\n", emmap_readme:expected_print(Example)),
        ?assertEqual(emmap_readme:expected_print(Example), run_counters_example()),
        %% ... and the counter is persistent: reopening shows the last value.
        F = emmap:open_counters("/tmp/mem.bin"),
        ?assertEqual(15, emmap:read_counter(F, 0)),
        ?assertEqual(0, emmap:read_counter(F, 1)),
        ok = emmap:close_counters(F),
        ok = file:delete("/tmp/mem.bin")
    end).

shells_as_erlang_processes_test() ->
    emmap_test_lib:with_lock(?LOCK, fun() ->
        check_shells(run_shells_example(#{1 => erlang_shell(), 2 => erlang_shell()}))
    end).

shells_as_os_processes_test_() ->
    {timeout, 60, fun() ->
        emmap_test_lib:with_lock(?LOCK, fun() ->
            check_shells(run_shells_example(#{1 => os_shell(), 2 => os_shell()}))
        end)
    end}.

check_shells(Steps) ->
    %% Every line with an expected value shows exactly that value; test1..3 are all seen.
    Checked = [begin ?assertEqual({N, Cmd, Exp}, {N, Cmd, Got}), Exp end
               || {N, Cmd, Got, {value, Exp}} <- Steps],
    ?assertEqual([{ok, <<"test1">>}, <<"test2">>, <<"test3">>], Checked),
    ok = file:delete("/tmp/mem.data").

basic_usage_test() ->
    ?assertEqual({ok, <<"0123456789012345678901234567890123456789">>}, basic_usage()).

%% The atomic-operations example, on a handle `Mem' and a `Position' of the caller's (the
%% guide leaves both to the reader): it binds the old value and adds 1.
atomic_example_test() ->
    emmap_test_lib:with_file(<<0:128>>, fun(P) ->
        {ok, Mem} = emmap:open(P, [read, write, shared]),
        B0 = erl_eval:add_binding('Position', 8,
                                  erl_eval:add_binding('Mem', Mem, erl_eval:new_bindings())),
        {_, B} = emmap_readme:eval(atomic_example(), B0),
        ?assertEqual({value, 0}, erl_eval:binding('OldValue', B)),
        ?assertEqual({ok, 1}, emmap:patomic_read_integer(Mem, 8)),
        ok = emmap:close(Mem)
    end).

%% The examples run here are the user's text, verbatim: they come from the copy of the
%% guide, which must be there, and the guide has no Erlang example that is not run.
examples_match_the_readme_test() ->
    ?assert(filelib:is_regular(filename:join(emmap_readme:root(), ?CONTRACT))),
    Run = [basic_example(), atomic_example(), counters_example(), shells_example()],
    ?assertEqual(Run, emmap_readme:blocks(contract(), "erlang")),
    ?assertNotEqual(nomatch, string:find(counters_example(), "\"/tmp/mem.bin\"")),
    ?assertNotEqual(nomatch, string:find(shells_example(), "\"/tmp/mem.data\"")).

%% The copy is the user's file byte for byte, where the user's file can be found: in
%% shared/spec/ beside the checkout, or beside a directory above it (a checkout made with
%% `git worktree' may sit deeper than the main one).
contract_copy_is_the_users_guide_test() ->
    Copy = contract(),
    case users_guide(filename:dirname(emmap_readme:root())) of
        {ok, Path, Users} ->
            ?assertEqual({Path, true}, {Path, Users =:= Copy});
        none ->
            %% Outside the project's workspace there is nothing to compare with; the copy
            %% alone is the contract then (the tests above use it).
            io:format(user, "~nseed-README: no shared/spec/seed-README.md above the "
                      "checkout; the copy in " ?CONTRACT " is the contract~n", [])
    end.

users_guide(Dir) ->
    Path = filename:join([Dir, "shared", "spec", "seed-README.md"]),
    case file:read_file(Path) of
        {ok, Text} -> {ok, Path, Text};
        {error, _} ->
            case filename:dirname(Dir) of
                Dir -> none;
                Up -> users_guide(Up)
            end
    end.

%% Our own README's version of the counters example (with `io:format') runs as written too.
readme_counters_example_test() ->
    Example = emmap_readme:block("## Persistent counters", "erlang"),
    ?assertNotEqual(nomatch, string:find(Example, "emmap:open_counters(\"/tmp/mem.bin\", 2)")),
    emmap_test_lib:with_lock(?LOCK, fun() ->
        _ = file:delete("/tmp/mem.bin"),
        ?assertEqual("N1=0, N2=1, N3=6, N4=7, N5=9, N6=15\n", emmap_readme:expected_print(Example)),
        ?assertEqual(emmap_readme:expected_print(Example), emmap_readme:eval_printing(Example)),
        ok = file:delete("/tmp/mem.bin")
    end).
