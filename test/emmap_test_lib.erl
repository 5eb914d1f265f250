%%% The one library of the test modules: temporary files and directories, polling for a
%%% condition, child VMs, a lock shared by concurrent test runs, capturing what code
%%% prints, and reading this OS process's file descriptors and mappings. (Evaluating README
%%% text is emmap_readme's.)
%%%
%%% Temporary names hold the OS process id and a number unique in the VM, so that two test
%%% runs on one machine (two `make test' in two checkouts) never meet, and no two tests of
%%% one run either: /tmp/emmap_<Tag>_<OsPid>_<N>.
-module(emmap_test_lib).

-include_lib("kernel/include/file.hrl").

%% temporary files and directories
-export([tmp_path/0, tmp_path/1, tmp_path/2, tmp_dir/1, rm_rf/1]).
-export([with_path/1, with_file/2, with_dir/2]).
%% waiting
-export([eventually/1, eventually/2]).
%% child VMs
-export([start_child/3, start_child/4, start_vm/2, stop_child/1, next_line/2,
         wait_exit/2, collect/2, collect_lines/2, run_child/4, run_vm/2, result_terms/1]).
%% one test at a time across concurrent runs
-export([with_lock/2]).
%% output, descriptors, mappings, modes, schedulers
-export([capture/1, open_fds/0, maps_lines/0, mapped/1, mode/1]).
-export([off_normal_schedulers/1]).

%%%===========================================================================
%%% Temporary files and directories
%%%===========================================================================

%% A path in /tmp that nothing has: /tmp/emmap_t_<OsPid>_<N>. The file is not created.
tmp_path() ->
    tmp_path("t").

%% The same with `Tag' in the name (say what the file is for: "queue", "cut", ...).
tmp_path(Tag) ->
    tmp_path("/tmp", Tag).

%% The same in directory `Dir' (/dev/shm, say).
tmp_path(Dir, Tag) ->
    filename:join(Dir, lists:concat(["emmap_", Tag, "_", os:getpid(), "_",
                                     erlang:unique_integer([positive])])).

%% A new, empty directory in /tmp. (A directory left by a killed run of a VM that had the
%% same OS process id may have the name: then the next name is taken.)
tmp_dir(Tag) ->
    D = tmp_path(Tag),
    case file:make_dir(D) of
        ok -> D;
        {error, eexist} -> tmp_dir(Tag)
    end.

%% Removes a file or a directory with everything in it (links are removed, not
%% followed); a missing one is fine.
rm_rf(Path) ->
    _ = case file:read_link_info(Path) of
            {ok, #file_info{type = directory}} -> file:del_dir_r(Path);
            {ok, _} -> file:delete(Path);
            {error, _} -> ok
        end,
    ok.

%% Runs Fun(Path) with a new temporary path (no file there), removing whatever Fun left
%% there afterwards.
with_path(Fun) ->
    P = tmp_path(),
    try Fun(P) after file:delete(P) end.

%% Runs Fun(Path) on a new temporary file holding `Bytes', removed afterwards.
with_file(Bytes, Fun) ->
    with_path(fun(P) ->
                      ok = file:write_file(P, Bytes),
                      Fun(P)
              end).

%% Runs Fun(Dir) in a new temporary directory, removed with its contents afterwards.
with_dir(Tag, Fun) ->
    D = tmp_dir(Tag),
    try Fun(D) after rm_rf(D) end.

%%%===========================================================================
%%% Waiting
%%%===========================================================================

%% Whether Pred() holds within 3 s (see eventually/2).
eventually(Pred) ->
    eventually(Pred, 3000).

%% Polls Pred() every 5 ms, collecting the caller's garbage in between (resource
%% destructors run once the last reference is collected), until it returns true or `Ms'
%% milliseconds have passed; then returns the last answer.
eventually(Pred, Ms) ->
    poll(Pred, erlang:monotonic_time(millisecond) + Ms).

poll(Pred, Deadline) ->
    case Pred() of
        true ->
            true;
        false ->
            case erlang:monotonic_time(millisecond) >= Deadline of
                true ->
                    Pred();
                false ->
                    erlang:garbage_collect(),
                    timer:sleep(5),
                    poll(Pred, Deadline)
            end
    end.

%%%===========================================================================
%%% Child VMs
%%%===========================================================================
%%
%% A child is `erl -noshell' with emmap's ebin and the test modules on its path, started
%% through a port. Options (a map):
%%   line => N | false   output as lines of at most N bytes (default 4096), or as a stream
%%   stderr => merged | own
%%                       standard error comes through the port with standard output
%%                       (default), or goes where this VM's goes
%%   erl_args => [Arg]   more arguments for `erl' (before -eval)
%%   timeout => Ms       run_child/4, run_vm/2: how long the child may stay silent
%%                       (default 120,000)

%% Starts a child VM running Mod:Fun(Args...) (the arguments written with ~p, so any term
%% that reads back works). Returns {Port, OsPid}: `erl' execs the VM in its own process.
start_child(Mod, Fun, Args) ->
    start_child(Mod, Fun, Args, #{}).

start_child(Mod, Fun, Args, Opts) ->
    start_vm(call_text(Mod, Fun, Args), Opts).

call_text(Mod, Fun, Args) ->
    ArgText = lists:join(", ", [io_lib:format("~p", [A]) || A <- Args]),
    lists:flatten(io_lib:format("~w:~w(~s).", [Mod, Fun, ArgText])).

%% Starts a child VM evaluating the expressions `Eval' (ending in a dot).
start_vm(Eval, Opts) ->
    Erl = os:find_executable("erl"),
    Paths = lists:append([["-pa", filename:dirname(code:which(M))]
                          || M <- [emmap, ?MODULE]]),
    Args = ["-noshell" | Paths] ++ maps:get(erl_args, Opts, []) ++ ["-eval", Eval],
    Lines = case maps:get(line, Opts, 4096) of
                false -> [stream];
                N -> [{line, N}]
            end,
    Stderr = case maps:get(stderr, Opts, merged) of
                 merged -> [stderr_to_stdout];
                 own -> []
             end,
    Port = open_port({spawn_executable, Erl},
                     [{args, Args}, binary, exit_status, use_stdio] ++ Lines ++ Stderr),
    {os_pid, OsPid} = erlang:port_info(Port, os_pid),
    {Port, OsPid}.

%% Kills the child (if it still runs) and drops what its port still has to say.
stop_child({Port, OsPid}) ->
    _ = os:cmd("kill -9 " ++ integer_to_list(OsPid) ++ " 2>/dev/null"),
    catch port_close(Port),
    flush_port(Port).

flush_port(Port) ->
    receive {Port, _} -> flush_port(Port) after 0 -> ok end.

%% The child's next line ({line, L}), or {exit, Status}, or `timeout' (line mode).
next_line(Port, Timeout) ->
    receive
        {Port, {data, {eol, L}}} -> {line, L};
        {Port, {data, {noeol, L}}} -> {line, L};
        {Port, {exit_status, S}} -> {exit, S}
    after Timeout -> timeout
    end.

%% The child's exit status (its output dropped), or `timeout'.
wait_exit(Port, Timeout) ->
    receive
        {Port, {exit_status, S}} -> S;
        {Port, {data, _}} -> wait_exit(Port, Timeout)
    after Timeout -> timeout
    end.

%% Everything the child prints until it exits: {ExitStatus, Output}, or {timeout, Output}
%% once it has been silent for `Timeout' ms (stream mode).
collect(Port, Timeout) ->
    collect(Port, Timeout, []).

collect(Port, Timeout, Acc) ->
    receive
        {Port, {data, D}} -> collect(Port, Timeout, [D | Acc]);
        {Port, {exit_status, S}} -> {S, iolist_to_binary(lists:reverse(Acc))}
    after Timeout ->
        {timeout, iolist_to_binary(lists:reverse(Acc))}
    end.

%% The same in line mode: {ExitStatus | timeout, Lines}.
collect_lines(Port, Timeout) ->
    collect_lines(Port, Timeout, []).

collect_lines(Port, Timeout, Acc) ->
    case next_line(Port, Timeout) of
        {line, L} -> collect_lines(Port, Timeout, [L | Acc]);
        {exit, S} -> {S, lists:reverse(Acc)};
        timeout -> {timeout, lists:reverse(Acc)}
    end.

%% Runs Mod:Fun(Args...) in a child VM to its end: {ExitStatus | timeout, Output} (Output
%% a binary, or a list of lines in line mode). The child is killed afterwards in any case.
run_child(Mod, Fun, Args, Opts) ->
    run_vm(call_text(Mod, Fun, Args), Opts).

run_vm(Eval, Opts) ->
    {Port, _} = Child = start_vm(Eval, Opts),
    Timeout = maps:get(timeout, Opts, 120000),
    try
        case maps:get(line, Opts, 4096) of
            false -> collect(Port, Timeout);
            _ -> collect_lines(Port, Timeout)
        end
    after
        stop_child(Child)
    end.

%% The terms a child printed one per line (lines starting with `{'), in order.
result_terms(Lines) ->
    [begin
         {ok, Toks, _} = erl_scan:string(binary_to_list(L) ++ "."),
         {ok, T} = erl_parse:parse_term(Toks),
         T
     end || <<"{", _/binary>> = L <- Lines].

%%%===========================================================================
%%% One at a time across test runs
%%%===========================================================================

%% Runs Fun() holding the lock /tmp/emmap_<Name>.lock, which no other OS process holds
%% meanwhile: for the few tests that must use a fixed path (the user's README examples
%% run as written), so that two test runs on one machine take turns. The lock is
%% flock(1)'s (util-linux): the kernel lets go of it when the `flock' process ends, which
%% it does when this VM closes the port or dies, so a killed run leaves no stale lock.
with_lock(Name, Fun) ->
    Lock = filename:join("/tmp", "emmap_" ++ Name ++ ".lock"),
    Flock = case os:find_executable("flock") of
                false -> erlang:error({not_found, "flock (util-linux)"});
                F -> F
            end,
    Port = open_port({spawn_executable, Flock},
                     [{args, [Lock, "sh", "-c", "echo locked; exec cat"]},
                      {line, 64}, binary, exit_status, use_stdio]),
    receive
        {Port, {data, {eol, <<"locked">>}}} -> ok;
        {Port, {exit_status, S}} -> erlang:error({flock_failed, Lock, S})
    after 300000 ->
        catch port_close(Port),
        erlang:error({lock_not_free_after_5_minutes, Lock})
    end,
    try Fun()
    after
        catch port_close(Port),
        flush_port(Port)
    end.

%%%===========================================================================
%%% Output, descriptors, mappings, modes
%%%===========================================================================

%% What `Fun' prints on standard output (through the group leader).
capture(Fun) ->
    Self = self(),
    GL = group_leader(),
    Catcher = spawn_link(fun() -> catcher(Self, []) end),
    group_leader(Catcher, Self),
    try Fun() after group_leader(GL, Self) end,
    Catcher ! {done, Self},
    receive {Catcher, Chars} -> Chars end.

catcher(Owner, Acc) ->
    receive
        {io_request, From, Ref, {put_chars, Enc, Chars}} ->
            From ! {io_reply, Ref, ok},
            catcher(Owner, [unicode:characters_to_list(Chars, Enc) | Acc]);
        {io_request, From, Ref, {put_chars, Enc, M, F, A}} ->
            From ! {io_reply, Ref, ok},
            catcher(Owner, [unicode:characters_to_list(apply(M, F, A), Enc) | Acc]);
        {io_request, From, Ref, _} ->
            From ! {io_reply, Ref, {error, enotsup}},
            catcher(Owner, Acc);
        {done, Owner} ->
            Owner ! {self(), lists:flatten(lists:reverse(Acc))}
    end.

open_fds() ->
    {ok, Fds} = file:list_dir("/proc/self/fd"),
    length(Fds).

maps_lines() ->
    {ok, B} = file:read_file("/proc/self/maps"),
    binary:split(B, <<"\n">>, [global, trim]).

%% How many of this process's mappings are of files whose path contains `Path' (a file,
%% a directory, or a library such as "/emmap.so").
mapped(Path) ->
    P = list_to_binary(Path),
    length([L || L <- maps_lines(), binary:match(L, P) =/= nomatch]).

%% Permission bits of a file.
mode(P) ->
    {ok, #file_info{mode = M}} = file:read_file_info(P),
    M band 8#7777.

%%%===========================================================================
%%% Schedulers
%%%===========================================================================

%% Runs `Fun()' with a single normal scheduler online while a bystander process pings an
%% echo process every millisecond, and returns `{Result, MaxRoundTripMs, DirtyIoShare}':
%% the longest round trip seen during the call, and the busy time of the dirty I/O
%% schedulers as a share of the call's wall time. Work done in a NIF on the normal
%% scheduler would hold up the bystander for as long as it takes; work moved to a dirty
%% I/O scheduler shows up in the share instead.
off_normal_schedulers(Fun) ->
    Was = erlang:system_flag(scheduler_wall_time, true),
    Online = erlang:system_flag(schedulers_online, 1),
    Echo = spawn_link(fun Loop() -> receive {ping, From} -> From ! pong, Loop() end end),
    Self = self(),
    Pinger = spawn_link(fun() -> ping(Echo, Self, 0) end),
    try
        receive {pinger, Pinger, running} -> ok end,
        {A0, W0} = dirty_io_busy(),
        Res = Fun(),
        {A1, W1} = dirty_io_busy(),
        Pinger ! {stop, Self},
        Max = receive {pinger, Pinger, max, M} -> M end,
        {Res, Max, (A1 - A0) / max(1, W1 - W0)}
    after
        unlink(Pinger), exit(Pinger, kill),
        unlink(Echo), exit(Echo, kill),
        erlang:system_flag(schedulers_online, Online),
        erlang:system_flag(scheduler_wall_time, Was)
    end.

ping(Echo, Owner, Max) ->
    T0 = erlang:monotonic_time(millisecond),
    Echo ! {ping, self()},
    receive pong -> ok end,
    Rtt = erlang:monotonic_time(millisecond) - T0,
    Max == 0 andalso (Owner ! {pinger, self(), running}),
    receive
        {stop, Owner} -> Owner ! {pinger, self(), max, max(Max, Rtt)}
    after 1 ->
        ping(Echo, Owner, max(Max, max(Rtt, 1)))
    end.

%% Busy time of all dirty I/O schedulers so far, and the time of one of them (its busy
%% and idle time: the wall time since measuring began), in the same unit.
dirty_io_busy() ->
    First = erlang:system_info(schedulers) + erlang:system_info(dirty_cpu_schedulers) + 1,
    Dio = [{A, T} || {Id, A, T} <- erlang:statistics(scheduler_wall_time_all), Id >= First],
    {lists:sum([A || {A, _} <- Dio]), element(2, hd(Dio))}.
