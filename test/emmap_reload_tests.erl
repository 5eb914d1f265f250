%%% Reloading emmap's modules (what `c:l/1', `code:load_file/1', rebar3's `r3:compile()'
%%% and IEx's `recompile'/`r/1' do) keeps them working, keeps the handles opened before
%%% the reload working, and still releases their memory when they are collected. Both
%%% `emmap_nif' (which loads the NIF library, in its on_load function) and `emmap' (the
%%% API) are reloaded each time.
%%%
%%% The reloads run in a child VM: purging a module's old code kills processes running it,
%%% which must not happen to the test runner. The rebar3 shell flow itself is tested in
%%% emmap_consumer_tests.
-module(emmap_reload_tests).

-include_lib("eunit/include/eunit.hrl").
-include_lib("kernel/include/file.hrl").

-export([child_reload/1, child_eval/1, child_other_library/1, child_io_reload/1]).

-import(emmap_test_lib, [mapped/1, eventually/2, with_dir/2, with_path/1]).

%% The ways a module gets reloaded, in the order the child applies them.
%%  c_l:         c:l/1 (purge old code, load the file: the NIF library's upgrade callback)
%%  load_binary: code:load_binary/3 with the module's object code, as IEx's r/1 and Elixir's
%%               recompile load modules (also an upgrade)
%%  rebar3:      code:delete/1, code:purge/1, code:load_file/1: what rebar3's r3:compile()
%%               does for a module with -on_load (a fresh load; the old type is gone from
%%               the VM's table but its handles are alive)
-define(RELOADS, [c_l, c_l, load_binary, rebar3, c_l, rebar3, load_binary]).
%% The modules reloaded each time: the one that loads the NIF library, then the API.
-define(MODULES, [emmap_nif, emmap]).

reload(How) ->
    [{module, M} = reload(M, How) || M <- ?MODULES],
    {module, emmap}.

reload(M, c_l) ->
    {module, M} = c:l(M);
reload(M, load_binary) ->
    {M, Bin, File} = code:get_object_code(M),
    {module, M} = code:load_binary(M, File, Bin);
reload(M, rebar3) ->
    true = code:delete(M),
    _ = code:purge(M),
    {module, M} = code:load_file(M).

%% Child VM: reloads emmap_nif and emmap again and again with handles of every kind open,
%% checking after each reload that every handle made so far (before or between reloads)
%% still works.
%% Returns `ok' or crashes with the failed match.
child_reload(Dir) ->
    P = filename:join(Dir, "data.bin"),
    CP = filename:join(Dir, "counters.bin"),
    Lib = "/emmap.so",                          % the NIF library (priv/ may be a symlink)
    {ok, Lock} = emmap:open(P, 0, 4096, [create, read, write, shared]),
    {ok, NoLock} = emmap:open(P, 0, 4096, [read, write, shared, nolock]),
    {ok, Direct} = emmap:open(P, 0, 4096, [read, write, shared, direct]),
    C = emmap:open_counters(CP, 1),
    ok = emmap:pwrite(Lock, 0, <<"before">>),
    {ok, Bin} = emmap:pread(Direct, 0, 6),       % a direct binary made before any reload
    LibMaps = mapped(Lib),
    true = LibMaps > 0,
    Handles = lists:foldl(
        fun({N, How}, Hs) ->
            {module, emmap} = reload(How),
            %% the old code goes away completely
            [false = begin _ = code:purge(M), erlang:check_old_code(M) end || M <- ?MODULES],
            %% still the one library, mapped once: nothing loaded twice, nothing leaked
            LibMaps = mapped(Lib),
            %% the reloaded module works: a new handle
            {ok, New} = emmap:open(P, [read, write, shared]),
            Tag = list_to_binary(io_lib:format("~6..0w", [N])),
            %% every handle from before works
            [ok = emmap:pwrite(H, 0, Tag) || H <- [New | Hs]],
            [{ok, Tag} = emmap:pread(H, 0, 6) || H <- [New | Hs]],
            {ok, Tag} = file:pread(Direct, 0, 6),
            Tag = Bin,                              % the old direct binary shows the write
            {ok, _} = emmap:patomic_add(NoLock, 8, 1),
            N = emmap:inc_counter(C, 0) + 1,
            Size = 4096 * (N + 1),
            {ok, Size} = emmap:resize(Lock, Size),
            %% something that is not a handle is still badarg
            {'EXIT', {badarg, _}} =
                (catch emmap:pread(#file_descriptor{module = emmap, data = make_ref()}, 0, 1)),
            [New | Hs]
        end,
        [Lock, NoLock, Direct],
        lists:zip(lists:seq(1, length(?RELOADS)), ?RELOADS)),
    Count = length(?RELOADS),
    {ok, Count} = emmap:patomic_read_integer(NoLock, 8),
    Count = emmap:read_counter(C, 0),
    ok = emmap:close_counters(C),
    [ok = emmap:close(H) || H <- Handles],
    %% the direct binary keeps its mapping after close; collecting everything releases all
    true = mapped(P) > 0,
    <<_:6/binary>> = Bin,
    release(P).

%% Called with no reference to the handles or the binary left: every destructor (of
%% resource types from before and after the reloads) must run.
release(P) ->
    true = eventually(fun() -> mapped(P) =:= 0 end, 3000),
    ok.

%% Runs ?MODULE:Fun(Arg) in a child VM that prints `result: R' for what it returned or
%% raised; returns {ExitStatus, Output}.
child(Fun, Arg) ->
    Call = lists:flatten(io_lib:format(
        "try ~s:~s(~p) of R -> io:format(\"result: ~~p~~n\", [R]), halt(0) "
        "catch C:E:S -> io:format(\"result: ~~p~~n\", [{C, E, S}]), halt(1) end.",
        [?MODULE, Fun, Arg])),
    emmap_test_lib:run_vm(Call, #{line => false, timeout => 60000}).

%% Child VM: evaluates Text as the shell would and returns what it printed.
child_eval(Text) ->
    emmap_readme:eval_printing(Text).

reload_keeps_module_and_handles_working_test_() ->
    {timeout, 90, fun() ->
        with_dir("reload", fun(Dir) ->
            %% nothing else is printed: no warning report from a failed on_load either
            ?assertEqual({0, <<"result: ok\n">>}, child(child_reload, Dir))
        end)
    end}.

%% Child VM: emmap_io loaded again and again (c:l/1 purges the code before the last
%% load, so the second reload used to kill every device, and through the link its owner)
%% while devices are open: idle ones, one in use by a client the whole time, and ones
%% opened between reloads. After each reload every device answers and every owner lives.
child_io_reload(Dir) ->
    process_flag(trap_exit, true),
    Self = self(),
    P = fun(N) -> filename:join(Dir, N) end,
    %% An owner opens a device, reports it and then serves requests to use it.
    Owner = fun(Name, Open) ->
                    spawn_link(fun() ->
                                       {ok, D} = Open(P(Name)),
                                       Self ! {device, self(), D},
                                       owner_loop(D)
                               end)
            end,
    Open1 = fun(F) -> emmap_io:open(F, [create, read, write, shared, {size, 4096}]) end,
    Open2 = fun(F) -> emmap_io:open(F, [create, read, write, shared, binary,
                                        {encoding, unicode}, {size, 4096}]) end,
    Open3 = fun(F) ->
                    {ok, M} = emmap:open(F, 0, 4096, [create, read, write, shared, direct]),
                    emmap_io:from_handle(M, [binary])
            end,
    First = [Owner(N, O) || {N, O} <- [{"a", Open1}, {"b", Open2}, {"c", Open3}]],
    Devices0 = [receive {device, O, D} -> {O, D} end || O <- First],
    %% one device is used by a client during all reloads
    {_, Busy} = hd(Devices0),
    Client = spawn_link(fun() -> busy_client(Busy, 0) end),
    Devices = lists:foldl(
        fun(I, Ds) ->
            %% c:l/1 purges the code the previous c:l/1 made old, then loads
            {module, emmap_io} = c:l(emmap_io),
            %% (a request that is being served while the code is purged is served by the
            %% old code, and its process dies, as for any module: let the busy device
            %% finish the request it was serving when the code was loaded)
            client_progress(Client),
            New = Owner("n" ++ integer_to_list(I), Open1),
            Ds1 = [receive {device, New, NewD} -> {New, NewD} end | Ds],
            [check_device(O, D, I) || {O, D} <- Ds1],
            Ds1
        end, Devices0, lists:seq(1, 3)),
    Client ! {stop, self()},
    N = receive {client, Count} -> Count end,
    receive {'EXIT', Client, normal} -> ok end,
    true = N > 0,
    %% the last old code goes too; the devices, all waiting, are not in it
    true = erlang:check_old_code(emmap_io),
    true = code:purge(emmap_io) orelse true,
    false = erlang:check_old_code(emmap_io),
    [check_device(O, D, 4) || {O, D} <- Devices],
    [begin
         true = is_process_alive(O),
         true = is_process_alive(D),
         ok = file:close(D),
         O ! stop
     end || {O, D} <- Devices],
    [receive {'EXIT', O, normal} -> ok end || {O, _} <- Devices],
    receive {'EXIT', Pid, Why} -> {unexpected_exit, Pid, Why} after 0 -> ok end.

owner_loop(D) ->
    receive
        {use, From, I} ->
            %% (each request is done whole; a client of the same device may move the
            %% position between two of them)
            Line = iolist_to_binary(io_lib:format("reload ~w~n", [I])),
            ok = file:pwrite(D, 0, Line),
            {ok, Got} = file:pread(D, 0, byte_size(Line)),
            From ! {used, self(), Got},
            owner_loop(D);
        stop ->
            ok
    end.

%% The owner uses its device; the owner and the device are alive.
check_device(Owner, D, I) ->
    true = is_process_alive(D),
    Owner ! {use, self(), I},
    Want = lists:flatten(io_lib:format("reload ~w~n", [I])),
    receive
        {used, Owner, Got} ->
            Want = unicode:characters_to_list(Got)
    after 10000 ->
        erlang:error({no_answer, Owner, D})
    end.

busy_client(D, N) ->
    receive
        {stop, From} -> From ! {client, N};
        {count, From} -> From ! {client, N}, busy_client(D, N)
    after 0 ->
        %% requests along every path: file and I/O protocol, reads, writes, a term scan
        {ok, _} = file:pread(D, 2048, 16),
        ok = file:pwrite(D, 2048, <<"{busy, 1}.\n">>),
        {ok, _} = file:position(D, 2048),
        {ok, {busy, 1}} = io:read(D, ''),
        _ = io:get_chars(D, '', 3),
        _ = io:get_line(D, ''),
        {ok, _} = file:read_file_info(D),
        busy_client(D, N + 1)
    end.

%% Returns once the busy client has had two more requests answered.
client_progress(Client) ->
    Count = fun() ->
                    Client ! {count, self()},
                    receive {client, C} -> C after 10000 -> erlang:error(client_stuck) end
            end,
    N0 = Count(),
    client_progress(Count, N0 + 2).

client_progress(Count, Want) ->
    case Count() >= Want of
        true -> ok;
        false -> timer:sleep(1), client_progress(Count, Want)
    end.

reload_emmap_io_keeps_devices_test_() ->
    {timeout, 90, fun() ->
        with_dir("reload_io", fun(Dir) ->
            ?assertEqual({0, <<"result: ok\n">>}, child(child_io_reload, Dir))
        end)
    end}.

%% The README's reload example runs as written (with its file in our directory).
readme_example_test_() ->
    {timeout, 60, fun() ->
        Text = emmap_readme:block("### Reloading code", "erlang"),
        with_path(fun(P) ->
            Example = emmap_readme:replace_path(Text, "/tmp/emmap_reload.bin", P),
            ?assertNotEqual(Text, Example),
            ?assertEqual({0, <<"result: []\n">>}, child(child_eval, Example))
        end)
    end}.

%% Child VM: emmap (emmap_nif and emmap) reloaded from another directory (as a release
%% upgrade to another version installs it) loads that directory's library, a second instance with its own resource
%% type: handles from before are badarg to the new code, new ones work, and the old
%% library releases the old handles' memory when they are collected.
child_other_library(Dir) ->
    P = filename:join(Dir, "data.bin"),
    {ok, Old} = emmap:open(P, 0, 4096, [create, read, write, shared, direct]),
    {ok, Bin} = emmap:pread(Old, 0, 4),
    %% a file someone will cut, mapped through the first library
    Cut = filename:join(Dir, "cut.bin"),
    ok = file:write_file(Cut, binary:copy(<<"c">>, 65536)),
    {ok, OldCut} = emmap:open(Cut, [read, write, shared, direct]),
    {ok, CutBin} = emmap:pread(OldCut, 40000, 4),
    #{enabled := true, library := FirstLib} = emmap:sigbus_handler(),
    Libs = mapped("/emmap.so"),
    Other = filename:join(Dir, "emmap-9.9.9"),
    ok = filelib:ensure_dir(filename:join(Other, "ebin") ++ "/"),
    ok = filelib:ensure_dir(filename:join(Other, "priv") ++ "/"),
    [{ok, _} = file:copy(code:which(M), filename:join(Other, "ebin/" ++ atom_to_list(M) ++ ".beam"))
     || M <- ?MODULES],
    {ok, _} = file:copy(filename:join(code:priv_dir(emmap), "emmap.so"),
                        filename:join(Other, "priv/emmap.so")),
    true = code:add_patha(filename:join(Other, "ebin")),
    [{module, M} = c:l(M) || M <- ?MODULES],
    true = mapped("/emmap-9.9.9/priv/emmap.so") > 0,
    true = mapped("/emmap.so") > Libs,          % both libraries are loaded
    {'EXIT', {badarg, _}} = (catch emmap:pread(Old, 0, 4)),
    {'EXIT', {badarg, _}} = (catch emmap:close(Old)),
    {ok, New} = emmap:open(P, [read, write, shared]),
    ok = emmap:pwrite(New, 0, <<"new!">>),
    <<"new!">> = Bin,                           % the old direct binary is still mapped
    %% one SIGBUS handler for the process: the second library uses the first one's
    #{enabled := true, library := FirstLib} = emmap:sigbus_handler(),
    %% and a cut file is survived through either library's mappings
    {ok, NewCut} = emmap:open(Cut, [read, write, shared]),
    "" = os:cmd("truncate -s 100 " ++ Cut),
    {error, truncated} = emmap:pread(NewCut, 40000, 4),
    <<0, 0, 0, 0>> = binary:copy(CutBin),
    ok = emmap:close(NewCut),
    [_ = code:purge(M) || M <- ?MODULES],
    ok = emmap:close(New),
    release_other(P, Libs).

%% With the old handle and binary dropped, the old library's destructor releases their
%% memory. (The old library itself stays mapped: glibc does not unload a library whose
%% thread-local values have destructors while the threads that hold them live, and the
%% VM's schedulers live as long as the VM.)
release_other(P, Libs) ->
    true = eventually(fun() -> mapped(P) =:= 0 end, 3000),
    true = mapped("/emmap.so") > Libs,
    ok.

reload_from_another_library_test_() ->
    {timeout, 90, fun() ->
        with_dir("reload_other", fun(Dir) ->
            ?assertEqual({0, <<"result: ok\n">>}, child(child_other_library, Dir))
        end)
    end}.
