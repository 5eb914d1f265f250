%%% @doc Files that cannot be mapped: FIFOs, sockets, character devices, `/proc' and `/sys'
%%% files. `emmap:open' answers `{error, einval}' for each, at once, with any options, and
%%% never waits: a read-only open of a FIFO used to wait for a writer, holding a dirty I/O
%%% scheduler, and a dozen of them blocked `file:read_file/1' of unrelated files for the
%%% whole node.
%%%
%%% The FIFO test runs in a child VM, which is killed if an open hangs, so a regression
%%% fails the test instead of blocking the VM that runs the suite.
-module(emmap_special_files_tests).

-include_lib("eunit/include/eunit.hrl").

-export([child_fifo/2]).

%% More concurrent opens than the VM has dirty I/O schedulers (10 by default).
-define(OPENS, 16).

option_sets() ->
    [[read], [read, write, shared], [read, write, shared, create, {size, 4096}],
     [read, write, shared, fit, {size, 4096}], [read, direct, nolock]].

%% Child VM: ?OPENS processes open the FIFO at once, with every option set, while another
%% process reads an unrelated file again and again; prints what each got.
child_fifo(Fifo, Other) ->
    Self = self(),
    Sets = option_sets(),
    Opens = [spawn_link(fun() -> Self ! {open, self(), Opts, emmap:open(Fifo, Opts)} end)
             || I <- lists:seq(1, ?OPENS), Opts <- [lists:nth(1 + I rem length(Sets), Sets)]],
    Reader = spawn_link(fun() ->
                            Self ! {read, [file:read_file(Other) || _ <- lists:seq(1, 50)]}
                        end),
    Results = [receive {open, Pid, Opts, R} -> {Opts, R} end || Pid <- Opens],
    Reads = receive {read, Rs} -> lists:usort(Rs) end,
    _ = Reader,
    io:format("result: ~p~n", [{lists:usort([R || {_, R} <- Results]), Reads}]),
    halt(0).

fifo_opens_never_block_test_() ->
    {timeout, 120, fun() ->
        Fifo = emmap_test_lib:tmp_path("fifo"),
        Other = emmap_test_lib:tmp_path("other"),
        ok = file:write_file(Other, <<"unrelated">>),
        "" = os:cmd("mkfifo " ++ Fifo),
        try
            %% all refused, and the other file read every time
            ?assertEqual({ok, {[{error, einval}], [{ok, <<"unrelated">>}]}},
                         child(child_fifo, [Fifo, Other], 60000)),
            %% the FIFO is still a FIFO (nothing created or replaced)
            ?assertEqual("p", os:cmd("stat -c %A " ++ Fifo ++ " | cut -c1 | tr -d '\\n'"))
        after
            file:delete(Fifo),
            file:delete(Other)
        end
    end}.

%% Sockets, character devices and pseudo files, with every option set; emmap_io and the
%% queue, which open through emmap:open, refuse them the same way. Nothing is created.
other_special_files_test() ->
    Sock = emmap_test_lib:tmp_path("sock"),
    {ok, L} = gen_tcp:listen(0, [{ifaddr, {local, Sock}}]),
    Sys = "/sys/kernel/mm/transparent_hugepage/enabled",
    Paths = [Sock, "/dev/zero", "/dev/null", "/dev/urandom", "/proc/self/status",
             "/proc/self/maps"] ++ [Sys || filelib:is_file(Sys)],
    try
        Got = [{P, Opts, emmap:open(P, Opts)} || P <- Paths, Opts <- option_sets()],
        ?assertEqual([], [G || {_, _, R} = G <- Got, R =/= {error, einval}]),
        ?assertEqual([], [{P, R} || P <- Paths,
                                    R <- [emmap_io:open(P, [read]),
                                          emmap_queue:open(P, 4096, [])],
                                    R =/= {error, einval}]),
        ?assertEqual(false, filelib:is_regular(Sock))
    after
        gen_tcp:close(L),
        file:delete(Sock)
    end.

%% Runs ?MODULE:Fun(Args...) in a child VM and returns {ok, Term} for the `result: Term'
%% line it prints, or {Status, Output}, or {timeout, Output} (the child is killed) when it
%% has printed nothing for Ms.
child(Fun, Args, Ms) ->
    case emmap_test_lib:run_child(?MODULE, Fun, Args, #{line => false, timeout => Ms}) of
        {0, Out} ->
            {match, [Text]} = re:run(Out, "result: (.*)", [dotall, {capture, all_but_first, list}]),
            {ok, Tokens, _} = erl_scan:string(Text ++ "."),
            erl_parse:parse_term(Tokens);
        Other ->
            Other
    end.
