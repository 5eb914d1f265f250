%%% Behaviour a user relies on: options, errors, closed handles, direct binaries across
%%% close and resize, concurrency and resource release.
-module(emmap_tests).

-include_lib("eunit/include/eunit.hrl").
-include_lib("kernel/include/file.hrl").

-import(emmap_test_lib, [mode/1, mapped/1, open_fds/0, eventually/1, with_file/2]).
-import(emmap_test_lib, [tmp_path/0, tmp_path/2, tmp_dir/1]).

%%%---------------------------------------------------------------------------
%%% utilities
%%%---------------------------------------------------------------------------

%% Runs Fun in a fresh process and waits for its result; its heap (and every binary and
%% handle it held) is gone once this returns.
in_process(Fun) ->
    {Pid, Ref} = spawn_monitor(fun() -> exit({done, Fun()}) end),
    receive {'DOWN', Ref, process, Pid, {done, R}} -> R;
            {'DOWN', Ref, process, Pid, Other} -> erlang:error(Other)
    end.

%%%---------------------------------------------------------------------------
%%% file module integration
%%%---------------------------------------------------------------------------

file_module_dispatches_to_emmap_test() ->
    with_file(<<"line one\nline two\r\nend">>, fun(P) ->
        {ok, M} = emmap:open(P, [read, write, shared]),
        ?assertEqual({ok, <<"line">>}, file:pread(M, 0, 4)),
        ?assertEqual(ok, file:pwrite(M, 0, [<<"L">>, "I" | <<"NE">>])),
        ?assertEqual({ok, <<"LINE one\n">>}, file:read_line(M)),
        ?assertEqual({ok, <<"line two\n">>}, file:read_line(M)),
        ?assertEqual({ok, <<"end">>}, file:read(M, 10)),
        ?assertEqual(eof, file:read(M, 1)),
        ?assertEqual({ok, 2}, file:position(M, {bof, 2})),
        ?assertEqual(ok, file:write(M, <<"ne">>)),
        ?assertEqual({ok, 4}, file:position(M, cur)),
        ?assertEqual({ok, [<<"LIne">>, eof]}, file:pread(M, [{0, 4}, {100, 1}])),
        ?assertEqual(ok, file:pwrite(M, [{0, <<"l">>}, {1, <<"i">>}])),
        ?assertEqual({error, {1, einval}}, file:pwrite(M, [{0, <<"x">>}, {1000, <<"y">>}])),
        ?assertEqual(ok, file:sync(M)),
        ?assertEqual(ok, file:datasync(M)),
        ?assertEqual(ok, file:advise(M, 0, 0, will_need)),
        ?assertEqual(ok, file:close(M)),
        ?assertEqual({ok, <<"xine one\nline two\r\nend">>}, file:read_file(P))
    end).

%%%---------------------------------------------------------------------------
%%% errors
%%%---------------------------------------------------------------------------

wrong_types_raise_badarg_test() ->
    with_file(<<0:64/unit:8>>, fun(P) ->
        {ok, M} = emmap:open(P, [read, write, shared]),
        Bad = [fun() -> emmap:open(123, []) end,
               fun() -> emmap:open(P, [bogus_option]) end,
               fun() -> emmap:open(P, [read | write]) end,     % improper list
               fun() -> emmap:open(P, read) end,
               fun() -> emmap:open(P, [{size, -1}]) end,
               fun() -> emmap:open(P, [{chmod, foo}]) end,
               fun() -> emmap:open(P, -1, 8, []) end,
               fun() -> emmap:open(P ++ [0] ++ "x", []) end,  % NUL in path
               fun() -> emmap:open(<<"/tmp/a", 0, "b">>, [create, {size, 8}]) end,
               fun() -> emmap:pread(M, a, 1) end,
               fun() -> emmap:pread(M, 0, -1) end,
               fun() -> emmap:pread(not_a_handle, 0, 1) end,
               fun() -> emmap:pwrite(M, 0, [1, foo]) end,
               fun() -> emmap:pwrite(M, 0, 1000) end,
               fun() -> emmap:read(M, -1) end,
               fun() -> emmap:position(M, {sideways, 1}) end,
               fun() -> emmap:patomic(M, 0, mul, 1) end,
               fun() -> emmap:patomic(M, 0, add, 1 bsl 64) end,
               fun() -> emmap:patomic(M, 0, add, 1.0) end,
               fun() -> emmap:patomic_cas(M, 0, 0, -(1 bsl 63) - 1) end,
               fun() -> emmap:resize(M, foo) end,
               fun() -> emmap:advise(M, 0, 0, sometimes) end,
               fun() -> emmap:close(make_ref()) end,
               fun() -> emmap:info(#file_descriptor{module = emmap, data = make_ref()}) end],
        [?assertError(badarg, F()) || F <- Bad],
        %% ... and nothing was written.
        ?assertEqual({ok, <<0:64/unit:8>>}, file:read_file(P)),
        emmap:close(M)
    end).

impossible_requests_return_errors_and_change_nothing_test() ->
    with_file(<<0:64/unit:8>>, fun(P) ->
        {ok, M} = emmap:open(P, [read, write, shared]),
        Big = 1 bsl 64,
        ?assertEqual({error, einval}, emmap:pwrite(M, 60, <<"12345">>)),
        ?assertEqual({error, einval}, emmap:pwrite(M, -1, <<"1">>)),
        ?assertEqual({error, einval}, emmap:pwrite(M, 16#FFFFFFFFFFFFFFFF, <<"1">>)),
        ?assertEqual({error, einval}, emmap:pwrite(M, Big, <<"1">>)),
        ?assertEqual({error, einval}, emmap:pread(M, -1, 1)),
        ?assertEqual(eof, emmap:pread(M, 16#FFFFFFFFFFFFFFFF, 16#FFFFFFFFFFFFFFFF)),
        ?assertEqual(eof, emmap:pread(M, Big, 1)),
        ?assertEqual({ok, <<0:32>>}, emmap:pread(M, 60, Big)),
        ?assertEqual({error, alignment}, emmap:patomic_add(M, 4, 1)),
        ?assertEqual({error, einval}, emmap:patomic_add(M, 64, 1)),
        ?assertEqual({error, einval}, emmap:patomic_add(M, 16#FFFFFFFFFFFFFFF8, 1)),
        ?assertEqual({error, einval}, emmap:patomic_add(M, -8, 1)),
        ?assertEqual({error, einval}, emmap:patomic_read_integer(M, Big)),
        ?assertEqual({error, einval}, emmap:position(M, -1)),
        ?assertEqual({error, einval}, emmap:position(M, {cur, -1})),
        ?assertEqual({error, einval}, emmap:position(M, Big)),
        ?assertEqual({error, einval}, emmap:resize(M, 8)),
        ?assertEqual({error, einval}, emmap:advise(M, -1, 1, normal)),
        ?assertEqual({error, einval}, emmap:allocate(M, 0, 0)),
        ?assertEqual({error, einval}, emmap:allocate(M, -1, 5)),
        {ok, M2} = emmap:open(P, [read, shared]),
        ?assertEqual({error, ebusy}, emmap:truncate(M)),      % M2 maps the file too
        ?assertEqual({ok, <<0:64/unit:8>>}, file:read_file(P)),
        ?assertEqual({ok, <<0:64>>}, emmap:pread(M2, 56, 8)),
        ok = emmap:close(M2),
        ok = emmap:close(M),
        {ok, RO} = emmap:open(P, [read, shared]),
        ?assertEqual({error, eacces}, emmap:pwrite(RO, 0, <<"x">>)),
        ?assertEqual({error, eacces}, emmap:write(RO, <<"x">>)),
        ?assertEqual({error, eacces}, emmap:truncate(RO)),
        ?assertEqual({error, eacces}, emmap:allocate(RO, 0, 1)),
        ?assertEqual({error, eacces}, emmap:patomic_add(RO, 0, 1)),
        ?assertEqual({error, eacces}, emmap:patomic_write_integer(RO, 0, 1)),
        ?assertEqual({error, eacces}, emmap:resize(RO, 128)),
        ?assertEqual({ok, 0}, emmap:patomic_read_integer(RO, 0)),
        ok = emmap:close(RO),
        ?assertEqual({ok, <<0:64/unit:8>>}, file:read_file(P))
    end).

open_errors_test() ->
    P = tmp_path(),
    ?assertEqual({error, enoent}, emmap:open(P, [read])),
    ?assertEqual({error, enoent}, emmap:open(P, 0, 8, [read, write])),
    %% create without a length: an error, and no file left behind
    ?assertEqual({error, einval}, emmap:open(P, [create, read, write])),
    ?assertEqual(false, filelib:is_file(P)),
    ?assertEqual({error, eisdir}, emmap:open("/tmp", [read])),
    ?assertEqual({error, einval}, emmap:open(P, [create, write, shared, private, {size, 8}])),
    ?assertEqual({error, einval}, emmap:open(P, 0, 8, [create, write, {size, 16}])),
    ?assertEqual({error, einval}, emmap:open(P, [anon, fixed, {size, 4096}])),
    with_file(<<"12345678">>, fun(F) ->
        %% a length other than the file's is an error without `fit'
        ?assertEqual({error, einval}, emmap:open(F, 0, 4, [read])),
        ?assertEqual({error, einval}, emmap:open(F, 0, 16, [read, write])),
        ?assertEqual({ok, <<"12345678">>}, file:read_file(F))
    end).

closed_handle_answers_closed_everywhere_test() ->
    [begin
         {ok, M} = emmap:open("", 0, 4096, [anon, read, write | Extra]),
         ok = emmap:close(M),
         ok = emmap:close(M),
         ?assertEqual({error, closed}, emmap:pread(M, 0, 1)),
         ?assertEqual({error, closed}, emmap:pread(M, [{0, 1}])),
         ?assertEqual({error, closed}, emmap:pwrite(M, 0, <<"x">>)),
         ?assertEqual({error, {0, closed}}, emmap:pwrite(M, [{0, <<"x">>}])),
         ?assertEqual({error, closed}, emmap:read(M, 1)),
         ?assertEqual({error, closed}, emmap:read(M, 0)),
         ?assertEqual({error, closed}, emmap:read_line(M)),
         ?assertEqual({error, closed}, emmap:write(M, <<"x">>)),
         ?assertEqual({error, closed}, emmap:position(M, 0)),
         ?assertEqual({error, closed}, emmap:flush(M)),
         ?assertEqual({error, closed}, emmap:sync(M)),
         ?assertEqual({error, closed}, emmap:datasync(M)),
         ?assertEqual({error, closed}, emmap:advise(M, 0, 0, normal)),
         ?assertEqual({error, closed}, emmap:resize(M)),
         ?assertEqual({error, closed}, emmap:resize(M, 8192)),
         [?assertEqual({error, closed}, emmap:patomic(M, 0, Op, 1))
          || Op <- [add, sub, 'band', 'bor', 'bxor', xchg, 'and', 'or', 'xor']],
         ?assertEqual({error, closed}, emmap:patomic_cas(M, 0, 0, 1)),
         ?assertEqual({error, closed}, emmap:patomic_read_integer(M, 0)),
         ?assertEqual({error, closed}, emmap:patomic_write_integer(M, 0, 1)),
         ?assertEqual({error, closed}, file:pread(M, 0, 1)),
         ?assertMatch(#{closed := true, size := 0}, emmap:info(M))
     end || Extra <- [[], [nolock], [direct], [direct, nolock]]],
    ok.

%%%---------------------------------------------------------------------------
%%% options
%%%---------------------------------------------------------------------------

anon_test() ->
    {ok, M} = emmap:open("ignored", 0, 8192, [anon, read, write, shared]),
    ?assertMatch(#{anon := true, size := 8192, exist := false, path := undefined}, emmap:info(M)),
    ?assertEqual({ok, <<0:64>>}, emmap:pread(M, 100, 8)),
    ok = emmap:pwrite(M, 100, <<"anon">>),
    ?assertEqual({ok, <<"anon">>}, emmap:pread(M, 100, 4)),
    ?assertEqual({error, einval}, emmap:open("", 4096, 4096, [anon])),
    ?assertEqual({error, einval}, emmap:open("", 0, 0, [anon])),
    emmap:close(M).

create_chmod_and_size_test() ->
    P = tmp_path(),
    {ok, M} = emmap:open(P, [create, read, write, {size, 100}]),
    ?assertMatch(#{exist := false, size := 100, writable := true}, emmap:info(M)),
    ?assertEqual(8#600, mode(P)),
    ok = emmap:close(M),
    {ok, M2} = emmap:open(P, [create, read, write]),
    ?assertMatch(#{exist := true, size := 100}, emmap:info(M2)),
    ok = emmap:close(M2),
    ok = file:delete(P),
    {ok, M3} = emmap:open(P, 0, 64, [create, read, write, {chmod, 8#640}]),
    ?assertEqual(8#640, mode(P)),
    ?assertEqual(P, maps:get(path, emmap:info(M3))),
    ok = emmap:close(M3),
    ok = file:delete(P).

path_forms_test() ->
    P = tmp_path(),
    {ok, M1} = emmap:open(list_to_binary(P), 0, 16, [create, write]),
    {ok, M2} = emmap:open(["/tmp", [$/ | lists:nthtail(5, P)]], 0, 16, [read]),
    {ok, M3} = emmap:open(list_to_atom(P), 0, 16, [read]),
    [?assertMatch(#{size := 16, path := P}, emmap:info(M)) || M <- [M1, M2, M3]],
    [emmap:close(M) || M <- [M1, M2, M3]],
    ok = file:delete(P).

truncate_test() ->
    with_file(<<"old contents">>, fun(P) ->
        {ok, M} = emmap:open(P, 0, 4, [truncate, read, write, shared]),
        ?assertEqual({ok, <<0:32>>}, emmap:pread(M, 0, 4)),
        ?assertEqual(4, filelib:file_size(P)),
        ok = emmap:close(M),
        ?assertEqual({error, eacces}, emmap:open(P, 0, 4, [truncate, read]))
    end).

private_vs_shared_visibility_test() ->
    with_file(<<"aaaaaaaa">>, fun(P) ->
        {ok, Shared} = emmap:open(P, [read, write, shared]),
        {ok, Private} = emmap:open(P, [read, write, private]),
        {ok, Default} = emmap:open(P, [read, write]),
        ok = emmap:pwrite(Private, 0, <<"p">>),
        ok = emmap:pwrite(Default, 1, <<"d">>),
        ok = emmap:pwrite(Shared, 2, <<"s">>),
        %% private writes stay private; shared ones reach the file and other mappings
        ?assertEqual({ok, <<"aasaaaaa">>}, file:read_file(P)),
        ?assertEqual({ok, <<"aas">>}, emmap:pread(Shared, 0, 3)),
        ?assertEqual({ok, <<"pa">>}, emmap:pread(Private, 0, 2)),
        ?assertMatch(#{shared := false}, emmap:info(Default)),
        [emmap:close(M) || M <- [Shared, Private, Default]]
    end).

populate_and_friends_test() ->
    with_file(binary:copy(<<"x">>, 10000), fun(P) ->
        [begin
             {ok, M} = emmap:open(P, [read, shared | Opts]),
             ?assertEqual({ok, <<"xx">>}, emmap:pread(M, 9998, 2)),
             emmap:close(M)
         end || Opts <- [[populate], [noreserve], [nonblock], [nocache], [debug],
                         [populate, nonblock], [shared_validate], [lock], [nolock]]]
    end).

address_option_test() ->
    %% Find a free, page-aligned spot (map, note the address, unmap) and ask for it.
    %% The VM may take the spot in between, so try a few times.
    {M, A} = map_at_free_address(20),
    ?assertMatch(#{address := A}, emmap:info(M)),
    %% The same address again is taken: never replaced, just refused.
    ?assertEqual({error, eexist}, emmap:open("", 0, 4096, [anon, fixed, {address, A}])),
    ok = emmap:pwrite(M, 0, <<"here">>),
    ?assertEqual({ok, <<"here">>}, emmap:pread(M, 0, 4)),
    emmap:close(M).

%% {address, A} below vm.mmap_min_addr (and always page 0) is einval. The kernel does not
%% stop a VM running as root (as CI does): {address, 1} mapped the file at address 0, the
%% null page, and info/1 then said `address => 0', as for a closed handle.
low_address_option_test() ->
    Min = case file:read_file("/proc/sys/vm/mmap_min_addr") of
              {ok, B} -> max(4096, binary_to_integer(string:trim(B)));
              _ -> 65536
          end,
    with_file(<<0:4096/unit:8>>, fun(P) ->
        [begin
             ?assertEqual({A, {error, einval}},
                          {A, emmap:open("", 0, 4096, [anon, read, write, {address, A}])}),
             ?assertEqual({A, {error, einval}},
                          {A, emmap:open(P, [read, write, shared, fixed, {address, A}])})
         end || A <- lists:usort([1, 4095, Min - 1])],
        {ok, M} = emmap:open(P, [read, shared]),
        #{address := Addr} = emmap:info(M),
        ?assert(Addr >= Min),
        ok = emmap:close(M),
        ?assertMatch(#{address := 0, closed := true}, emmap:info(M))
    end).

map_at_free_address(0) ->
    erlang:error(no_free_address_found);
map_at_free_address(Tries) ->
    {ok, Probe} = emmap:open("", 0, 1 bsl 20, [anon]),
    #{address := A} = emmap:info(Probe),
    ok = emmap:close(Probe),
    case emmap:open("", 0, 4096, [anon, read, write, {address, A}]) of
        {ok, M} -> {M, A};
        {error, eexist} -> map_at_free_address(Tries - 1)
    end.

%% A grow that fails changes nothing: not the file on disk, not the mapping. resize to
%% 2^47 bytes on tmpfs (where the file may grow that far, but no mapping can) used to leave
%% a 2^47-byte file behind; an {address, A} mapping boxed in by a neighbour grew its file
%% from 4096 to 8192 bytes before answering enomem.
failed_growth_changes_nothing_test() ->
    Dir = case filelib:is_dir("/dev/shm") of true -> "/dev/shm"; false -> "/tmp" end,
    P = tmp_path(Dir, "grow"),
    try
        [begin
             ok = file:write_file(P, binary:copy(<<"k">>, 4096)),
             {ok, M} = emmap:open(P, [read, write, shared | Lock]),
             Unchanged = fun(What) ->
                                 ?assertEqual({What, 4096}, {What, filelib:file_size(P)}),
                                 ?assertMatch({What, #{size := 4096}}, {What, emmap:info(M)}),
                                 ?assertEqual({What, {ok, <<"kk">>}}, {What, emmap:pread(M, 4094, 2)})
                         end,
             ?assertMatch({error, _}, emmap:resize(M, 1 bsl 47)),
             Unchanged(resize),
             {ok, _} = emmap:position(M, 1 bsl 47),
             ?assertMatch({error, _}, emmap:truncate(M)),
             Unchanged(truncate),
             ?assertMatch({error, _}, emmap:allocate(M, 0, 1 bsl 47)),
             ?assertMatch({error, _}, emmap:allocate(M, 4096, 1 bsl 45)),
             Unchanged(allocate),
             ?assertEqual({ok, 8192}, emmap:resize(M, 8192)),
             ?assertEqual(8192, filelib:file_size(P)),
             ok = emmap:close(M)
         end || Lock <- [[], [nolock]]],
        ok = file:write_file(P, binary:copy(<<"k">>, 4096)),
        {Boxed, Neighbour} = boxed_in_mapping(P, 20),
        ?assertEqual({error, enomem}, emmap:resize(Boxed, 8192)),
        ?assertEqual({error, enomem}, emmap:allocate(Boxed, 4000, 200)),
        {ok, _} = emmap:position(Boxed, 8192),
        ?assertEqual({error, enomem}, emmap:truncate(Boxed)),
        ?assertEqual(4096, filelib:file_size(P)),
        ?assertMatch(#{size := 4096}, emmap:info(Boxed)),
        ?assertEqual({ok, <<"kk">>}, emmap:pread(Boxed, 4094, 2)),
        [ok = emmap:close(X) || X <- [Boxed, Neighbour]]
    after
        file:delete(P)
    end.

%% A 4096-byte mapping of P at a fixed address with anonymous memory right after it.
boxed_in_mapping(_P, 0) ->
    erlang:error(no_free_address_found);
boxed_in_mapping(P, Tries) ->
    {ok, Probe} = emmap:open("", 0, 1 bsl 20, [anon]),
    #{address := A} = emmap:info(Probe),
    ok = emmap:close(Probe),
    case {emmap:open(P, [read, write, shared, {address, A}]),
          emmap:open("", 0, 4096, [anon, read, {address, A + 4096}])} of
        {{ok, M}, {ok, N}} -> {M, N};
        {M, N} -> [emmap:close(X) || {ok, X} <- [M, N]], boxed_in_mapping(P, Tries - 1)
    end.

fit_test() ->
    with_file(<<"12345678">>, fun(P) ->
        %% a smaller file grows to Len ...
        {ok, M} = emmap:open(P, 0, 16, [read, write, shared, fit]),
        ?assertMatch(#{size := 16}, emmap:info(M)),
        ?assertEqual(16, filelib:file_size(P)),
        emmap:close(M),
        %% ... a larger one is mapped whole
        {ok, M2} = emmap:open(P, 0, 4, [read, fit]),
        ?assertMatch(#{size := 16}, emmap:info(M2)),
        emmap:close(M2)
    end).

offset_window_test() ->
    Data = list_to_binary([I rem 256 || I <- lists:seq(0, 9999)]),
    with_file(Data, fun(P) ->
        {ok, M} = emmap:open(P, 4097, 100, [read, write, shared]),
        ?assertEqual({ok, binary:part(Data, 4097, 100)}, emmap:pread(M, 0, 200)),
        ?assertMatch(#{size := 100, offset := 4097}, emmap:info(M)),
        ok = emmap:pwrite(M, 0, <<"W">>),
        ?assertEqual({ok, <<"W">>}, file:pread(element(2, file:open(P, [read, raw, binary])), 4097, 1)),
        %% byte 0 is at an odd address: atomics there are misaligned
        ?assertEqual({error, alignment}, emmap:patomic_add(M, 0, 1)),
        ?assertMatch({ok, _}, emmap:patomic_read_integer(M, 7)),
        emmap:close(M)
    end).

fixed_size_test() ->
    {ok, M} = emmap:open("", 0, 4096, [anon, read, write, fixed_size]),
    ?assertEqual({error, fixed_size}, emmap:resize(M)),
    ?assertEqual({error, fixed_size}, emmap:resize(M, 8192)),
    ?assertMatch(#{size := 4096, fixed_size := true}, emmap:info(M)),
    emmap:close(M).

max_inc_size_test() ->
    P = tmp_path(),
    {ok, M} = emmap:open(P, 0, 4096, [create, read, write, shared, {max_inc_size, 8192}]),
    ?assertEqual({ok, 8192}, emmap:resize(M)),       % doubles while below the step
    ?assertEqual({ok, 16384}, emmap:resize(M)),
    ?assertEqual({ok, 24576}, emmap:resize(M)),      % then grows by it
    ?assertEqual(24576, filelib:file_size(P)),
    ?assertEqual({ok, 100000}, emmap:resize(M, 100000)),
    ok = emmap:pwrite(M, 99996, <<"tail">>),
    emmap:close(M),
    ?assertEqual({ok, <<"tail">>}, file:pread(element(2, file:open(P, [read, raw, binary])), 99996, 4)),
    ok = file:delete(P).

auto_unlink_test() ->
    P = tmp_path(),
    {ok, M} = emmap:open(P, 0, 64, [create, read, write, shared, auto_unlink]),
    ?assert(filelib:is_file(P)),
    ok = emmap:close(M),
    ?assertNot(filelib:is_file(P)),
    %% direct: the file goes when the last binary does
    {ok, D} = emmap:open(P, 0, 64, [create, read, write, shared, direct, auto_unlink]),
    Holder = spawn(fun() -> {ok, B} = emmap:pread(D, 0, 8), receive stop -> byte_size(B) end end),
    timer:sleep(20),
    ok = emmap:close(D),
    ?assert(filelib:is_file(P)),
    Holder ! stop,
    ?assert(eventually(fun() -> not filelib:is_file(P) end)),
    %% an existing file is never removed by auto_unlink
    ok = file:write_file(P, <<0:64>>),
    {ok, E} = emmap:open(P, [read, write, shared, auto_unlink]),
    ok = emmap:close(E),
    ?assert(filelib:is_file(P)),
    ok = file:delete(P).

%%%---------------------------------------------------------------------------
%%% direct mode lifetimes
%%%---------------------------------------------------------------------------

direct_binaries_see_writes_test() ->
    with_file(<<"abcd0123">>, fun(P) ->
        {ok, R} = emmap:open(P, [read, shared, direct, nolock]),
        {ok, W} = emmap:open(P, [read, write, shared]),
        {ok, Bin} = emmap:pread(R, 2, 2),
        ?assertEqual(<<"cd">>, Bin),
        ok = emmap:pwrite(W, 2, <<"xx">>),
        ?assertEqual(<<"xx">>, Bin),
        {ok, Line} = emmap:read_line(R),
        ?assertEqual(<<"abxx0123">>, Line),
        emmap:close(R), emmap:close(W)
    end).

direct_binary_survives_close_test() ->
    [begin
         P = tmp_path(),
         {Bin, Tag} = in_process(fun() ->
             {ok, M} = emmap:open(P, 0, 4096, [create, read, write, shared, direct | Lock]),
             ok = emmap:pwrite(M, 0, <<"keep me">>),
             {ok, B} = emmap:pread(M, 0, 7),
             ok = emmap:close(M),
             {B, ok}
         end),
         ok = Tag,
         %% The handle and its process are gone and the handle was closed: the binary still
         %% reads the right bytes, because the mapping lives as long as it does.
         ?assertEqual(1, mapped(P)),
         erlang:garbage_collect(),
         ?assertEqual(<<"keep me">>, Bin),
         ?assertEqual(<<"keep me">>, binary:copy(Bin)),
         ok = file:delete(P)
     end || Lock <- [[lock], [nolock]]].

direct_mapping_released_after_binaries_collected_test() ->
    P = tmp_path(),
    in_process(fun() ->
        {ok, M} = emmap:open(P, 0, 4096, [create, read, write, shared, direct]),
        {ok, B} = emmap:pread(M, 0, 10),
        ok = emmap:close(M),
        ?assertEqual(1, mapped(P)),
        byte_size(B)
    end),
    ?assert(eventually(fun() -> mapped(P) =:= 0 end)),
    ok = file:delete(P).

copy_mode_close_unmaps_at_once_test() ->
    P = tmp_path(),
    {ok, M} = emmap:open(P, 0, 4096, [create, read, write, shared]),
    ?assertEqual(1, mapped(P)),
    ok = emmap:close(M),
    ?assertEqual(0, mapped(P)),
    ok = file:delete(P).

direct_binaries_survive_resize_test() ->
    [begin
         {ok, M} = emmap:open(Path, 0, 4096, [create, anon, read, write, direct | Opts]),
         ok = emmap:pwrite(M, 4000, <<"before">>),
         {ok, B} = emmap:pread(M, 4000, 6),
         {ok, _} = emmap:resize(M, 1 bsl 20),
         %% fill memory so a freed region would likely be reused
         {ok, Other} = emmap:open("", 0, 1 bsl 22, [anon, read, write]),
         ok = emmap:pwrite(Other, 0, binary:copy(<<"Z">>, 1 bsl 22)),
         {ok, _} = emmap:resize(M, 1 bsl 24),
         ?assertEqual(<<"before">>, B),
         ?assertEqual({ok, <<"before">>}, emmap:pread(M, 4000, 6)),
         ok = emmap:pwrite(M, (1 bsl 24) - 4, <<"end!">>),
         ok = emmap:close(M),
         ?assertEqual(<<"before">>, B),
         emmap:close(Other)
     end || {Path, Opts} <- [{"", []}, {"", [nolock]}, {"", [shared]}]],
    %% a shared file, growing several times while a binary is alive
    P = tmp_path(),
    {ok, F} = emmap:open(P, 0, 4096, [create, read, write, shared, direct]),
    ok = emmap:pwrite(F, 0, <<"file">>),
    {ok, FB} = emmap:pread(F, 0, 4),
    [{ok, _} = emmap:resize(F) || _ <- lists:seq(1, 6)],
    ok = emmap:pwrite(F, 0, <<"FILE">>),
    ?assertEqual(<<"FILE">>, FB),                    % shared pages: still the same file
    ok = emmap:close(F),
    ?assertEqual(<<"FILE">>, FB),
    ok = file:delete(P).

%%%---------------------------------------------------------------------------
%%% concurrency
%%%---------------------------------------------------------------------------

atomics_exact_under_contention_test_() ->
    {timeout, 60, fun() ->
        [begin
             {ok, M} = emmap:open("", 0, 4096, [anon, read, write, shared | Lock]),
             Procs = 8, N = 20000,
             Self = self(),
             Pids = [spawn_link(fun() ->
                         [{ok, _} = emmap:patomic_add(M, 8, 1) || _ <- lists:seq(1, N)],
                         [{ok, _} = emmap:patomic_sub(M, 16, 2) || _ <- lists:seq(1, N)],
                         Self ! {done, self()}
                     end) || _ <- lists:seq(1, Procs)],
             [receive {done, P} -> ok end || P <- Pids],
             ?assertEqual({ok, Procs * N}, emmap:patomic_read_integer(M, 8)),
             ?assertEqual({ok, -2 * Procs * N}, emmap:patomic_read_integer(M, 16)),
             emmap:close(M)
         end || Lock <- [[], [nolock]]]
    end}.

%% write/2 from several processes on one handle: each write reserves its range with a
%% compare-and-swap of the shared position, so no advance is lost and no two writes share
%% a byte (it loaded the position, wrote and stored it: 2 x 200,000 one-byte writes left
%% the position near 326,000). Then a write that does not fit changes nothing.
concurrent_writes_on_one_handle_test_() ->
    {timeout, 120, fun() ->
        [concurrent_writes(Procs, Width, Opts)
         || {Procs, Width} <- [{2, 1}, {4, 1}, {4, 5}],
            Opts <- [[shared], [shared, nolock], [anon, shared]]]
    end}.

concurrent_writes(Procs, Width, Opts) ->
    N = 200000 div Width,
    Total = Procs * N * Width,
    P = tmp_path(),
    {ok, M} = emmap:open(P, 0, Total, [create, read, write | Opts]),
    Self = self(),
    Pids = [spawn_link(fun() ->
                Rec = binary:copy(<<($a + I)>>, Width),
                [ok = emmap:write(M, Rec) || _ <- lists:seq(1, N)],
                Self ! {done, self()}
            end) || I <- lists:seq(0, Procs - 1)],
    [receive {done, Pid} -> ok end || Pid <- Pids],
    Case = {Procs, Width, Opts},
    ?assertEqual({Case, {ok, Total}}, {Case, emmap:position(M, cur)}),
    {ok, All} = emmap:pread(M, 0, Total),
    Count = fun(C, Acc) -> maps:update_with(C, fun(X) -> X + 1 end, 1, Acc) end,
    Counts = lists:sort(maps:to_list(lists:foldl(Count, #{}, binary_to_list(All)))),
    ?assertEqual({Case, [{$a + I, N * Width} || I <- lists:seq(0, Procs - 1)]}, {Case, Counts}),
    %% every record is whole: its bytes all come from one write
    ?assertEqual({Case, []}, {Case, [R || <<R:Width/binary>> <= All,
                                         R =/= binary:copy(binary:part(R, 0, 1), Width)]}),
    ?assertEqual({error, einval}, emmap:write(M, <<"x">>)),
    ?assertEqual({ok, Total}, emmap:position(M, cur)),
    ok = emmap:close(M),
    file:delete(P).

atomic_ops_and_wrapping_test() ->
    {ok, M} = emmap:open("", 0, 64, [anon, read, write]),
    ?assertEqual({ok, 0}, emmap:patomic_add(M, 0, 10)),
    ?assertEqual({ok, 10}, emmap:patomic_sub(M, 0, 5)),
    ?assertEqual({ok, 5}, emmap:patomic_and(M, 0, 7)),
    ?assertEqual({ok, 5}, emmap:patomic_or(M, 0, 2)),
    ?assertEqual({ok, 7}, emmap:patomic_xor(M, 0, 9)),
    ?assertEqual({ok, 14}, emmap:patomic_xchg(M, 0, 16#7FFFFFFFFFFFFFFF)),
    ?assertEqual({ok, 16#7FFFFFFFFFFFFFFF}, emmap:patomic(M, 0, add, 1)),
    ?assertEqual({ok, -16#8000000000000000}, emmap:patomic_read_integer(M, 0)),
    ?assertEqual(ok, emmap:patomic_write_integer(M, 0, 16#FFFFFFFFFFFFFFFF)),
    ?assertEqual({ok, -1}, emmap:patomic_read_integer(M, 0)),
    ?assertEqual({false, -1}, emmap:patomic_cas(M, 0, 0, 5)),
    ?assertEqual({true, -1}, emmap:patomic_cas(M, 0, -1, 5)),
    ?assertEqual({ok, <<5:64/native>>}, emmap:pread(M, 0, 8)),
    emmap:close(M).

close_and_resize_race_with_readers_test_() ->
    {timeout, 120, fun() ->
        [race_round(Opts) || Opts <- [[], [direct], [nolock], [direct, nolock]], _ <- lists:seq(1, 10)],
        ok
    end}.

race_round(Opts) ->
    {ok, M} = emmap:open("", 0, 65536, [anon, read, write | Opts]),
    Self = self(),
    Allowed = fun({ok, _}) -> true; (ok) -> true; (eof) -> true; ({error, closed}) -> true;
                 ({true, _}) -> true; ({false, _}) -> true; (_) -> false end,
    Workers = [spawn_link(fun() ->
                   R = [Allowed(Op(M)) || _ <- lists:seq(1, 300),
                                          Op <- [fun(H) -> emmap:pread(H, 100, 100) end,
                                                 fun(H) -> emmap:pwrite(H, 200, <<"x">>) end,
                                                 fun(H) -> emmap:patomic_add(H, 8, 1) end,
                                                 fun(H) -> emmap:read(H, 10) end,
                                                 fun(H) -> emmap:position(H, 0) end]],
                   Self ! {self(), lists:all(fun(X) -> X end, R)}
               end) || _ <- lists:seq(1, 4)],
    case lists:member(nolock, Opts) of
        true -> ok;                       % nolock: caller promises no concurrent resize
        false -> {ok, _} = emmap:resize(M)
    end,
    ok = emmap:close(M),
    [receive {W, AllOk} -> ?assert(AllOk) end || W <- Workers],
    ok.

%%%---------------------------------------------------------------------------
%%% resources
%%%---------------------------------------------------------------------------

no_fd_or_mapping_leaks_test_() ->
    {timeout, 120, fun() ->
        P = tmp_path(),
        ok = file:write_file(P, <<0:4096/unit:8>>),
        Fds0 = open_fds(),
        in_process(fun() ->
            [begin {ok, M} = emmap:open(P, [read, write, shared]), ok = emmap:close(M) end
             || _ <- lists:seq(1, 2000)],
            [begin {ok, _} = emmap:open(P, [read, shared, direct]) end || _ <- lists:seq(1, 2000)],
            Bins = [begin {ok, M} = emmap:open(P, [read, shared, direct]),
                          {ok, B} = emmap:pread(M, 0, 16), ok = emmap:close(M), B end
                    || _ <- lists:seq(1, 2000)],
            length(Bins)
        end),
        %% (The VM's own allocators map and unmap memory as they please, so the total
        %% number of mappings is no measure; the file's mappings and the fds are.)
        ?assert(eventually(fun() -> open_fds() =< Fds0 end)),
        ?assert(eventually(fun() -> mapped(P) =:= 0 end)),
        ok = file:delete(P)
    end}.

%%%---------------------------------------------------------------------------
%%% counters
%%%---------------------------------------------------------------------------

counters_test() ->
    P = tmp_path(),
    C = emmap:open_counters(P, 3),
    ?assertEqual(16 + 3 * 8, filelib:file_size(P)),
    ?assertEqual(0, emmap:inc_counter(C, 2, 10)),
    ?assertEqual(10, emmap:dec_counter(C, 2)),
    ?assertEqual(9, emmap:dec_counter(C, 2, 4)),
    ?assertEqual(5, emmap:read_counter(C, 2)),
    ?assertError(badarg, emmap:inc_counter(C, 3)),
    ?assertError(badarg, emmap:read_counter(C, -1)),
    ?assertError(badarg, emmap:set_counter(C, 0, foo)),
    ok = emmap:close_counters(C),
    {ok, <<"EMMAP01\n", 3:64/little, 0:64, 0:64, 5:64/native>>} = file:read_file(P),
    %% reopen: with its own N, or with 0 (take it from the header)
    C2 = emmap:open_counters(P, 3),
    ?assertEqual(5, emmap:read_counter(C2, 2)),
    ok = emmap:close_counters(C2),
    C3 = emmap:open_counters(P),
    ?assertEqual(5, emmap:read_counter(C3, 2)),
    ok = emmap:close_counters(C3),
    %% another N, or a damaged file: an error naming the file, and nothing changed
    {ok, Before} = file:read_file(P),
    ?assertError({emmap_counters, P, _}, emmap:open_counters(P, 4)),
    ?assertError({emmap_counters, P, _}, emmap:open_counters(P, 2)),
    ?assertEqual({ok, Before}, file:read_file(P)),
    ok = file:write_file(P, <<"garbage!", 99:64/little, 0:64>>),
    ?assertError({emmap_counters, P, bad_header}, emmap:open_counters(P, 0)),
    %% right size, but not a counters file: refused too, and left as it was
    ?assertError({emmap_counters, P, bad_header}, emmap:open_counters(P, 1)),
    ?assertEqual({ok, <<"garbage!", 99:64/little, 0:64>>}, file:read_file(P)),
    %% right size and nothing but zeros: initialised
    ok = file:write_file(P, <<0:(24 * 8)>>),
    C4 = emmap:open_counters(P, 1),
    ?assertEqual(0, emmap:read_counter(C4, 0)),
    ok = emmap:close_counters(C4),
    ?assertEqual({ok, <<"EMMAP01\n", 1:64/little, 0:64>>}, file:read_file(P)),
    ok = file:delete(P),
    ?assertError({emmap_counters, P, enoent}, emmap:open_counters(P)),
    ?assertEqual(false, filelib:is_file(P)).

%% A counters file whose header is damaged is never initialised again: the counters it
%% holds are not lost (a counter holding 42 read 0 after its magic was damaged). Only a new
%% file or one of nothing but zeros is initialised.
damaged_counters_header_is_kept_test() ->
    P = tmp_path(),
    try
        C = emmap:open_counters(P, 3),
        42 = emmap:set_counter(C, 1, 42) + 42,
        ok = emmap:close_counters(C),
        {ok, Good} = file:read_file(P),
        <<_:8/binary, Count:8/binary, Counters/binary>> = Good,
        %% (any "EMMAP??\n" is a valid magic: the format allows other versions)
        Damaged = [{magic, <<"XMMAP01\n", Count/binary, Counters/binary>>},
                   {magic_zeroed, <<0:64, Count/binary, Counters/binary>>},
                   {magic_one_bit, <<"EMMAP01\r", Count/binary, Counters/binary>>},
                   {count, <<"EMMAP01\n", 4:64/little, Counters/binary>>},
                   {count_zero, <<"EMMAP01\n", 0:64/little, Counters/binary>>},
                   {count_high_byte, <<"EMMAP01\n", (3 + (1 bsl 56)):64/little, Counters/binary>>},
                   {header_zeroed, <<0:128, Counters/binary>>},
                   {garbage, list_to_binary([I * 37 rem 256 || I <- lists:seq(1, 40)])}],
        [begin
             ok = file:write_file(P, Bytes),
             [?assertEqual({Name, N, {emmap_counters, P, bad_header}},
                           {Name, N, try emmap:open_counters(P, N) of
                                         Got -> {opened, Got}
                                     catch error:E -> E
                                     end})
              || N <- [3, 0]],
             ?assertEqual({Name, {ok, Bytes}}, {Name, file:read_file(P)})
         end || {Name, Bytes} <- Damaged],
        %% put right, the value is still there
        ok = file:write_file(P, Good),
        C2 = emmap:open_counters(P, 3),
        ?assertEqual(42, emmap:read_counter(C2, 1)),
        ok = emmap:close_counters(C2)
    after
        file:delete(P)
    end.

%% Many processes open the same new counters file at once and count at once: each open
%% succeeds (whoever initialises it), and no increment is lost (an opener that came second
%% used to initialise the file again, zeroing what the first had counted).
concurrent_counters_initialisation_test_() ->
    {timeout, 60, fun() ->
        Self = self(),
        Procs = 8,
        [begin
             P = tmp_path(),
             Pids = [spawn_link(fun() ->
                         receive go -> ok end,
                         C = emmap:open_counters(P, 4),
                         _ = emmap:inc_counter(C, 0),
                         _ = emmap:inc_counter(C, 3, 10),
                         ok = emmap:close_counters(C),
                         Self ! {done, self()}
                     end) || _ <- lists:seq(1, Procs)],
             [Pid ! go || Pid <- Pids],
             [receive {done, Pid} -> ok end || Pid <- Pids],
             C = emmap:open_counters(P),
             ?assertEqual({Round, [Procs, 0, 0, 10 * Procs]},
                          {Round, [emmap:read_counter(C, I) || I <- lists:seq(0, 3)]}),
             ok = emmap:close_counters(C),
             ok = file:delete(P)
         end || Round <- lists:seq(1, 100)]
    end}.

%% Options whose outcome depends on the kernel or file system: a mapping or a clean error.
hugetlb_and_map_sync_test() ->
    [case emmap:open("", 0, 2 * 1024 * 1024, [anon, read, write | Opts]) of
         {ok, M} ->
             ok = emmap:pwrite(M, 0, <<"huge">>),
             ?assertEqual({ok, <<"huge">>}, emmap:pread(M, 0, 4)),
             emmap:close(M);
         {error, Reason} ->
             ?assert(is_atom(Reason))
     end || Opts <- [[hugetlb], [huge_2mb], [hugetlb, huge_1gb]]],
    with_file(<<0:4096/unit:8>>, fun(P) ->
        %% MAP_SYNC needs a DAX file system; elsewhere the kernel refuses it.
        case emmap:open(P, [read, write, shared_validate, sync]) of
            {ok, M} -> emmap:close(M);
            {error, R} -> ?assertEqual(eopnotsupp, R)
        end
    end).

%% Anonymous shared memory grows by a copy into new shared memory (in place, the pages past
%% its backing object would fault with SIGBUS): contents kept, new bytes usable.
anon_shared_resize_test() ->
    {ok, M} = emmap:open("", 0, 4096, [anon, shared, read, write]),
    ok = emmap:pwrite(M, 4092, <<"keep">>),
    ?assertEqual({ok, 1 bsl 20}, emmap:resize(M, 1 bsl 20)),
    ?assertEqual({ok, <<"keep">>}, emmap:pread(M, 4092, 4)),
    ok = emmap:pwrite(M, (1 bsl 20) - 4, <<"tail">>),
    ?assertEqual({ok, <<"tail">>}, emmap:pread(M, (1 bsl 20) - 4, 4)),
    ok = emmap:close(M).

%% Growing needs write access (a read-only mapping cannot be copied into or extended).
read_only_resize_is_eacces_test() ->
    with_file(<<0:32768>>, fun(P) ->
        [begin
             {ok, M} = emmap:open(P, [read | Opts]),
             ?assertEqual({error, eacces}, emmap:resize(M, 65536)),
             ?assertEqual({ok, <<0:32>>}, emmap:pread(M, 0, 4)),
             ok = emmap:close(M)
         end || Opts <- [[], [shared], [private]]]
    end),
    {ok, A} = emmap:open("", 0, 4096, [anon]),
    ?assertEqual({error, eacces}, emmap:resize(A)),
    ok = emmap:close(A).

%% A handle cut to zero bytes maps no page of its file any more; once closed, nothing keeps
%% the file's inode, and a new file may get its number. That file must not look mapped
%% (truncate answering ebusy), even while the old handle waits for the garbage collector.
inode_reuse_after_cut_to_zero_test() ->
    Dir = tmp_dir("inode"),
    Old = lists:map(
            fun(N) ->
                    P = filename:join(Dir, "f" ++ integer_to_list(N)),
                    ok = file:write_file(P, <<"some bytes">>),
                    {ok, M} = emmap:open(P, [read, write, shared, nolock]),
                    ?assertEqual({N, ok}, {N, file:truncate(M)}),    % position 0: cut to zero
                    ok = emmap:close(M),
                    ok = file:delete(P),
                    M                                   % kept alive: not collected yet
            end, lists:seq(1, 300)),
    ?assertEqual(300, length(Old)),
    ok = file:del_dir(Dir).

%% truncate/1 shrinking and growing a mapping while other processes read, write and hold
%% direct binaries into it (also into the part being cut off): every call answers one of
%% its documented results, every old binary stays readable, and the VM stays up (a page
%% left mapped to the cut-off part of a file would kill it with SIGBUS).
truncate_under_concurrent_callers_test_() ->
    %% The timeout on each case: one around the list would leave each case eunit's default
    %% 5 s, which a loaded machine exceeds.
    [{lists:flatten(io_lib:format("~p", [Opts])), {timeout, 120, fun() -> truncate_race(Opts) end}}
     || Opts <- [[shared, direct], [shared, direct, nolock], [shared], [shared, nolock],
                 [private, direct], [anon, shared, direct]]].

truncate_race(Opts) ->
    Size = 16 * 4096,
    with_file(binary:copy(<<"z">>, Size), fun(P) ->
        {ok, M} = case lists:member(anon, Opts) of
                      true -> emmap:open("", 0, Size, [read, write | Opts]);
                      false -> emmap:open(P, [read, write | Opts])
                  end,
        Self = self(),
        Workers = [spawn_link(fun() -> Self ! {done, self(), truncate_worker(M, I, Size, [], 0)} end)
                   || I <- lists:seq(1, 3)],
        %% 200 cuts and regrowths while the workers run; then they stop.
        [cut_and_regrow(M, Size) || _ <- lists:seq(1, 200)],
        [W ! stop || W <- Workers],
        Results = [receive {done, W, R} -> R after 60000 -> timeout end || W <- Workers],
        [?assertMatch({ok, N} when N > 0, R) || R <- Results],
        ?assertEqual(Size, maps:get(size, emmap:info(M))),
        case lists:member(shared, Opts) andalso not lists:member(anon, Opts) of
            true -> ?assertEqual(Size, filelib:file_size(P));
            false -> ok
        end,
        ok = emmap:close(M)
    end).

cut_and_regrow(M, Size) ->
    Cut = rand:uniform(Size) - 1,
    {ok, Cut} = emmap:position(M, Cut),
    ok = emmap:truncate(M),
    {ok, Size} = emmap:position(M, Size),
    ok = emmap:truncate(M).

%% Random preads (keeping up to 16 binaries and reading them all now and then) and
%% pwrites until told to stop; {ok, Calls} if every answer was a documented one.
truncate_worker(M, I, Size, Bins, N) ->
    receive
        stop ->
            _ = [binary:copy(B) || B <- Bins],
            {ok, N}
    after 0 ->
        truncate_step(M, I, Size, Bins, N)
    end.

truncate_step(M, I, Size, Bins, N) ->
    Pos = rand:uniform(Size) - 1,
    Bins1 = case rand:uniform(2) of
                1 ->
                    case emmap:pread(M, Pos, 100) of
                        {ok, B} -> lists:sublist([B | Bins], 16);
                        eof -> Bins
                    end;
                2 ->
                    case emmap:pwrite(M, Pos, <<I, I, I, I>>) of
                        ok -> Bins;
                        {error, einval} -> Bins
                    end
            end,
    case N rem 500 of
        0 -> [true = is_integer(lists:sum(binary_to_list(B))) || B <- Bins1];
        _ -> ok
    end,
    truncate_worker(M, I, Size, Bins1, N + 1).
