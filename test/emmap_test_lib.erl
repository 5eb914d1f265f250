%%% Helpers shared by the test modules: capturing what code prints, evaluating README
%%% text as the shell would, and reading this OS process's file descriptors and mappings.
-module(emmap_test_lib).

-include_lib("kernel/include/file.hrl").

-export([capture/1, eval_printing/1, expected_print/1]).
-export([open_fds/0, maps_lines/0, mapped/1, mode/1]).
-export([off_normal_schedulers/1]).

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

%% Evaluates `Text' (expressions ending in `.') with fresh bindings, as the shell does;
%% returns what it printed. `io_format/2', which the user's README calls as a shell-local
%% function, is `io:format/2'.
eval_printing(Text) ->
    {ok, Tokens, _} = erl_scan:string(Text),
    {ok, Exprs} = erl_parse:parse_exprs(Tokens),
    capture(fun() -> erl_eval:exprs(Exprs, erl_eval:new_bindings(), {value, fun local/2}) end).

local(io_format, Args) -> apply(io, format, Args);
local(Name, Args) -> erlang:error({undefined_shell_command, Name, length(Args)}).

%% The output an example promises in its `% Prints: ...' comment.
expected_print(Text) ->
    [_, Expected] = string:split(Text, "% Prints: "),
    string:trim(Expected) ++ "\n".

open_fds() ->
    {ok, Fds} = file:list_dir("/proc/self/fd"),
    length(Fds).

maps_lines() ->
    {ok, B} = file:read_file("/proc/self/maps"),
    binary:split(B, <<"\n">>, [global, trim]).

%% How many of this process's mappings are of the file `Path'.
mapped(Path) ->
    P = list_to_binary(Path),
    length([L || L <- maps_lines(), binary:match(L, P) =/= nomatch]).

%% Permission bits of a file.
mode(P) ->
    {ok, #file_info{mode = M}} = file:read_file_info(P),
    M band 8#7777.

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
