%%% @doc Differential tests: emmap handles against raw files.
%%%
%%% The same random sequence of `file:pread/2,3', `file:pwrite/2,3', `file:read/2',
%%% `file:read_line/1', `file:position/2', `file:write/2', `file:truncate/1',
%%% `file:allocate/3', `file:sync/1', `file:datasync/1', `file:advise/4',
%%% `file:read_file_info/1,2', `file:ipread_s32bu_p32bu/3' and `file:copy/3' (both ways
%%% between the handle and a second open file) calls runs through the `file' module on an
%%% emmap handle and on a raw handle (`[raw, binary, read, write]') of a second file with
%%% the same initial contents. Every result, the position after every call, the size
%%% (`file:read_file_info/1') and the whole contents after every call must be equal.
%%% Written data comes as iodata of every shape (binaries, byte lists, deep lists,
%%% improper tails). The sequences come from a
%%% `proper_statem' model that only knows the contents and the position; it is used to keep
%%% writes inside the file (emmap never grows a file by writing) and is itself checked
%%% against the raw file's position after every call.
%%%
%%% Writes that do not fit are the one documented difference: emmap answers
%%% `{error, einval}' and changes nothing, where a raw file would grow. Those are generated
%%% as separate commands that check exactly that against the untouched raw file. An empty
%%% write needs no room: past the end it answers `ok' on both, as an ordinary command.
%%%
%%% Positions go up to and past 2^63 (`{eof, 2^63 - 1}' and the like): no position may
%%% exceed 2^63 - 1, the largest file offset. The raw files live on tmpfs (`/dev/shm'),
%%% whose largest offset is exactly that (ext4 stops at 16 TiB); without a tmpfs there the
%%% far positions are left out. Two differences remain and are allowed for: a location
%%% outside the signed 64-bit range is `{error, badarg}' for a raw file and
%%% `{error, einval}' for emmap, and a read that would end past 2^63 - 1 is `einval' for a
%%% raw file (the kernel's overflow check) where emmap answers `eof'; such reads (and
%%% `read_line' and `copy' in the last MiB below 2^63, which read ahead) are not generated.
%%%
%%% Variants: `[read, write, shared]', plus `direct', `nolock', `direct' + `nolock',
%%% `private', and a window (`shared', non-zero offset, bytes before and after it).
%%%
%%% About raw files (OTP 25, prim_file): `read_line/1' reads ahead into a buffer, and a
%%% later `pwrite/2,3' drops that buffer without moving the OS file position back, so the
%%% raw handle's position jumps to the end of the look-ahead (see
%%% `emmap_position_after_read_line_and_pwrite_test'). Every step here asks both handles for
%%% `file:position(F, cur)', which for a raw file also drops that buffer properly, so the
%%% oracle stays right.
-module(emmap_diff_tests).
-behaviour(proper_statem).

-include_lib("eunit/include/eunit.hrl").
-include_lib("kernel/include/file.hrl").
-include("emmap_proper.hrl").

-import(proper_types, [range/2, elements/1, exactly/1, frequency/1, list/1, non_empty/1,
                       vector/2]).

%% proper_statem callbacks
-export([initial_state/0, command/1, precondition/2, postcondition/3, next_state/3]).
%% commands
-export([do_pread/2, do_pread_list/1, do_pwrite/2, do_pwrite_list/1, do_read/1,
         do_read_line/0, do_position/1, do_write/1, do_copy_within/3,
         do_bad_pwrite/2, do_bad_write/1, do_bad_pwrite_list/1,
         do_truncate/0, do_allocate/2, do_sync/0, do_datasync/0, do_advise/3, do_info/1,
         do_ipread/2, do_copy_out/1, do_copy_in/1, do_bad_copy_out/1, do_oposition/1]).
%% properties, for running by hand: proper:quickcheck(emmap_diff_tests:prop_diff(direct))
-export([prop_diff/1, variants/0]).

-define(KEY, '$emmap_diff_tests').
-define(OPENED, '$emmap_diff_tests_opened').
-define(NUMTESTS, 300).
%% PropEr's size grows to this over the run; sequences get up to about this many calls
%% (proper_statem:more_commands/2 has no effect in PropEr 1.2, max_size does).
-define(MAX_SIZE, 50).
%% The largest file position.
-define(MAXPOS, ((1 bsl 63) - 1)).
%% Where a raw file's read-ahead (read_line, copy's 64 KiB chunks) would pass ?MAXPOS.
-define(TOP, (?MAXPOS - (1 bsl 20))).

%% Model: the bytes of the mapped range and the handle position. Until the first write the
%% bytes stay in their generated form, {chunks, Chunks}, which keeps a counterexample
%% short; the callbacks work on norm(State).
%% `other' and `opos' model the second file that `file:copy/3' copies to and from; `flex'
%% says whether the size may change (not in the window variant: a window into a larger
%% file cannot be truncated or grown like a file); `far' whether positions near and past
%% 2^63 are generated (the raw files are on tmpfs).
-record(s, {data = <<"x">> :: binary() | {chunks, [tuple()]}, pos = 0 :: integer(),
            other = other_contents() :: binary(), opos = 0 :: non_neg_integer(),
            flex = true :: boolean(), far = false :: boolean()}).

%%%===========================================================================
%%% EUnit entry point for the properties
%%%===========================================================================

variants() ->
    [shared, direct, nolock, direct_nolock, private, window].

%% The second file's initial bytes.
other_contents() ->
    << <<(I rem 251)>> || I <- lists:seq(1, 300) >>.

opts(shared) -> [read, write, shared];
opts(direct) -> [read, write, shared, direct];
opts(nolock) -> [read, write, shared, nolock];
opts(direct_nolock) -> [read, write, shared, direct, nolock];
opts(private) -> [read, write, private];
opts(window) -> [read, write, shared].

diff_test_() ->
    [{"differential vs raw file: " ++ atom_to_list(V),
      {timeout, 120,
       fun() ->
               %% (without a tmpfs the raw file cannot reach 2^63 - 1: say what is left out)
               oracle_on_tmpfs() orelse
                   io:format(user, "~ndifferential (~w): no tmpfs at /dev/shm, positions "
                             "near 2^63 are not generated~n", [V]),
               ?assert(proper:quickcheck(prop_diff(V), [{numtests, ?NUMTESTS}, {max_size, ?MAX_SIZE},
                                                        {to_file, user}]))
       end}}
     || V <- variants()].

%%%===========================================================================
%%% Property
%%%===========================================================================

prop_diff(Variant) ->
    ?FORALL(Setup, setup_gen(Variant),
            ?FORALL(Cmds, proper_statem:commands(?MODULE, #s{data = {chunks, setup_chunks(Setup)},
                                                              flex = Variant =/= window,
                                                              far = oracle_on_tmpfs()}),
                    run_case(Setup, Cmds))).

%% {Variant, Chunks, Prefix, Suffix}: the mapped bytes are expand(Chunks); in the window
%% variant the mapped file also has Prefix bytes before them and Suffix bytes after.
setup_gen(window) ->
    {exactly(window), contents_gen(), pad_gen(1), pad_gen(0)};
setup_gen(V) ->
    {exactly(V), contents_gen(), exactly(none), exactly(none)}.

setup_chunks({_, Chunks, _, _}) -> Chunks.

pad_gen(Min) ->
    %% Newlines around the window: a read_line or read leaking out of it would show.
    {elements([$\n, $P]),
     frequency([{3, range(Min, 64)},
                {1, elements([4095, 4096, 4097, 8191])},
                {1, range(Min, 9000)}])}.

pad(none) -> <<>>;
pad({Byte, N}) -> binary:copy(<<Byte>>, N).

%% The Debian build of PropEr 1.2 calls erlang:get_stacktrace/0 (gone since OTP 23) when
%% a property raises, so exceptions are caught and reported here.
run_case(Setup, Cmds) ->
    try
        run_case1(Setup, Cmds)
    catch
        Class:Reason:Stack ->
            io:format(user, "~nException: ~p:~P~n~P~n", [Class, Reason, 30, Stack, 30]),
            false
    end.

run_case1({Variant, _, Pre, Suf}, Cmds) ->
    %% The initial state inside Cmds is the truth about the contents.
    [{init, Init} | _] = Cmds,
    #s{data = Contents} = norm(Init),
    PreB = pad(Pre),
    SufB = pad(Suf),
    Size = byte_size(Contents),
    in_tmp_dir(
      fun(Dir) ->
              P1 = filename:join(Dir, "mapped"),
              P2 = oracle_path(Dir, "raw"),
              ok = file:write_file(P1, [PreB, Contents, SufB]),
              ok = file:write_file(P2, Contents),
              Em = opened(emmap:open(P1, byte_size(PreB), Size, opts(Variant))),
              Raw = opened(file:open(P2, [raw, binary, read, write])),
              O1 = filename:join(Dir, "other_mapped"),
              O2 = oracle_path(Dir, "other_raw"),
              ok = file:write_file(O1, other_contents()),
              ok = file:write_file(O2, other_contents()),
              EmO = opened(emmap:open(O1, [read, write, shared])),
              RawO = opened(file:open(O2, [raw, binary, read, write])),
              put(?KEY, {Em, Raw, EmO, RawO}),
              {History, State, Result} = proper_statem:run_commands(?MODULE, Cmds),
              Final = case Result of
                          ok -> final_checks(Variant, Em, P1, P2, Contents, PreB, SufB,
                                             norm(State));
                          _ -> not_run
                      end,
              Ok = Result =:= ok andalso Final =:= [],
              ?WHENFAIL(report(Variant, PreB, SufB, Contents, Cmds, History, State, Result,
                               Final),
                        Ok)
      end).

%% After a sequence: the whole range through emmap, the raw file, the model and the mapped
%% file on disk must all agree.
final_checks(Variant, Em, P1, P2, Orig, PreB, SufB, #s{data = Model}) ->
    Size = byte_size(Model),
    {ok, RawAll} = file:read_file(P2),
    EmAll = copy(file:pread(Em, 0, Size + 1)),
    {ok, EmSeq} = file:position(Em, bof),
    EmRead = copy(file:read(Em, Size + 1)),
    Disk = file:read_file(P1),
    DiskExpected = case Variant of
                       private -> {ok, <<PreB/binary, Orig/binary>>};
                       _ -> {ok, <<PreB/binary, RawAll/binary>>}
                   end,
    %% An empty file reads as eof.
    All = case RawAll of <<>> -> eof; _ -> {ok, RawAll} end,
    [{Name, Got, Expected}
     || {Name, Got, Expected} <-
            [{emmap_pread_all, EmAll, All},
             {emmap_read_all, {EmSeq, EmRead}, {0, All}},
             {model, Model, RawAll},
             {size, maps:get(size, emmap:info(Em)), Size},
             {disk, strip_suffix(Disk, SufB), DiskExpected}],
        Got =/= Expected].

strip_suffix({ok, Bin}, Suf) ->
    N = byte_size(Bin) - byte_size(Suf),
    case Bin of
        <<Main:N/binary, Suf/binary>> -> {ok, Main};
        _ -> {suffix_changed, Bin}
    end;
strip_suffix(Other, _) ->
    Other.

report(Variant, PreB, SufB, Contents, Cmds, History, State, Result, Final) ->
    io:format(user, "~nVariant: ~p (~p), ~p bytes mapped~s~nInitial contents: ~P~n"
              "Result: ~P~nFinal check failures: ~P~nModel position: ~p~nSteps:~n",
              [Variant, opts(Variant), byte_size(Contents),
               case PreB of
                   <<>> -> "";
                   _ -> io_lib:format(" at offset ~p, ~p bytes after them",
                                      [byte_size(PreB), byte_size(SufB)])
               end,
               Contents, 60, Result, 40, Final, 40, State#s.pos]),
    Steps = lists:zip(lists:sublist(strip_init(Cmds), length(History)), History),
    lists:foreach(
      fun({{set, _, Call}, {S, R}}) ->
              io:format(user, "  pos ~p: ~lP~n      -> ~lP~n", [S#s.pos, Call, 20, R, 30])
      end, Steps).

strip_init([{init, _} | Cmds]) -> Cmds;
strip_init(Cmds) -> Cmds.

%%%===========================================================================
%%% Generators
%%%===========================================================================

%% Initial contents as a list of chunks (readable when shrunk), expanded by expand/1.
contents_gen() ->
    ?SUCHTHAT(Cs,
              frequency([{15, non_empty(list(chunk_gen()))},
                         {1, big_contents_gen()}]),
              byte_size(expand(Cs)) > 0).

chunk_gen() ->
    frequency([{4, {lf, text_gen()}},       % "text\n"
               {3, {crlf, text_gen()}},     % "text\r\n"
               {1, {cr, text_gen()}},       % "text\r" (a lone CR is not a line end)
               {2, {text, text_gen()}},     % no line end
               {2, {bytes, bytes_gen()}}]). % anything, \n and \r often

%% A line longer than emmap's 64 KiB line scan on a normal scheduler, and longer than its
%% 64 KiB copy limit for reads.
big_contents_gen() ->
    ?BIND({A, N, End, B},
          {list(chunk_gen()), range(65530, 70000), elements([<<>>, <<"\n">>, <<"\r\n">>]),
           list(chunk_gen())},
          A ++ [{fill, $x, N}, {bytes, End} | B]).

text_gen() ->
    ?BIND(L, list(range($a, $z)), list_to_binary(L)).

bytes_gen() ->
    ?BIND(L, list(byte_gen()), list_to_binary(L)).

byte_gen() ->
    frequency([{3, elements([$\n, $\r])}, {6, range($a, $e)}, {1, range(0, 255)}]).

expand(Chunks) ->
    iolist_to_binary([chunk(C) || C <- Chunks]).

chunk({lf, T}) -> [T, $\n];
chunk({crlf, T}) -> [T, "\r\n"];
chunk({cr, T}) -> [T, $\r];
chunk({text, T}) -> T;
chunk({bytes, B}) -> B;
chunk({fill, Byte, N}) -> binary:copy(<<Byte>>, N).

%% Data to write: a literal binary, the same bytes as iodata of another shape
%% ({shaped, Shape, Bin}), or {fill, Byte, Len} for long ones.
data_of_len(Len) when Len =< 64 ->
    ?BIND({L, Shape}, {vector(Len, byte_gen()), shape_gen()},
          case Shape of
              binary -> list_to_binary(L);
              _ -> {shaped, Shape, list_to_binary(L)}
          end);
data_of_len(Len) ->
    ?BIND(B, byte_gen(), {fill, B, Len}).

shape_gen() ->
    frequency([{4, exactly(binary)}, {1, exactly(bytes)}, {1, exactly(deep)},
               {1, exactly(improper)}, {1, exactly(mixed)}]).

%% The bytes Bin as iodata of shape Shape.
shaped(bytes, Bin) ->
    binary_to_list(Bin);
shaped(deep, Bin) ->
    [[[B]] || <<B>> <= Bin] ++ [[], [[]]];
shaped(improper, <<>>) ->
    [[] | <<>>];
shaped(improper, <<H, T/binary>>) ->
    [H | T];
shaped(mixed, Bin) ->
    H = byte_size(Bin) div 2,
    <<A:H/binary, B/binary>> = Bin,
    [[], binary_to_list(A), [<<>>, [B | <<>>]]].

data(B) when is_binary(B) -> B;
data({shaped, Shape, B}) -> shaped(Shape, B);
data({fill, Byte, N}) -> binary:copy(<<Byte>>, N).

bytes_of(D) -> iolist_to_binary(data(D)).

dlen(B) when is_binary(B) -> byte_size(B);
dlen({shaped, _, B}) -> byte_size(B);
dlen({fill, _, N}) -> N;
dlen(N) when is_integer(N) -> N.

%% Data of at most Max bytes.
data_gen(Max) ->
    ?BIND(Len, len_upto(Max), data_of_len(Len)).

len_upto(Max) ->
    frequency([{6, range(0, min(Max, 12))}, {2, range(0, Max)}, {1, exactly(Max)},
               {1, exactly(0)}]).

%% Data that does not fit in Avail bytes (Avail may be negative: position past the end).
bad_data_gen(Avail) ->
    Min = max(1, Avail + 1),
    ?BIND(Len, range(Min, Min + 8), data_of_len(Len)).

pos_gen(Size) ->
    frequency([{6, range(0, Size)}, {1, exactly(Size)}, {2, range(Size, Size + 10)},
               {1, range(-3, -1)}]).

len_gen(Size) ->
    frequency([{4, range(0, 10)}, {3, range(0, Size + 10)}, {1, exactly(0)},
               {1, exactly(200000)}]).

location_gen(Size, P, Far) ->
    frequency([{3, pos_gen(Size)},
               {1, elements([bof, cur, eof])},
               {3, {elements([bof, cur, eof]), range(-Size - 5, Size + 5)}}]
              ++ [{2, far_location_gen(Size, P)} || Far]).

%% Locations around 2^63 - 1 (the largest file position) from every base, just below the
%% last MiB, and outside the signed 64-bit range.
far_location_gen(Size, P) ->
    ?BIND(K, range(-3, 3),
          elements([?MAXPOS + K, {bof, ?MAXPOS + K}, {cur, ?MAXPOS - P + K},
                    {eof, ?MAXPOS - Size + K}, {eof, ?MAXPOS + K}, {cur, ?MAXPOS + K},
                    {bof, ?TOP - 1000 + K}, (1 bsl 62) + K, {cur, -(1 bsl 63) + K},
                    {eof, -(1 bsl 63) + K}, (1 bsl 64) + K, {bof, -(1 bsl 64) + K}])).

%% [Pos, Data] with the data inside the file, or a negative position (einval for both).
%% Sometimes the data is an `ipread_s32bu_p32bu/3' header (size, pointer) that points into
%% the file.
pwrite_args(Size) ->
    frequency([{8, ?BIND(Len, len_upto(Size),
                         ?BIND(Pos, range(0, Size - Len), [Pos, data_of_len(Len)]))},
               {2, ?BIND(Pos, range(0, max(0, Size - 8)), [Pos, header_gen(Size)])},
               {1, [range(-3, -1), data_gen(4)]},
               {1, [empty_pos_gen(Size), data_of_len(0)]}]).

%% Where an empty write goes: past the end (fine: it needs no room), up to and past the
%% largest file position.
empty_pos_gen(Size) ->
    frequency([{4, range(Size, Size + 5000)},
               {1, ?BIND(K, range(-2, 2), exactly(?MAXPOS + K))}]).

header_gen(Size) ->
    ?BIND({Len, Ptr}, {frequency([{4, range(0, 12)}, {1, range(0, Size + 4)},
                                  {1, exactly(16#FFFFFFFF)}]),
                       frequency([{4, range(0, Size)}, {1, range(Size, Size + 4)}])},
          <<Len:32, Ptr:32>>).

pwrite_pair(Size) ->
    ?BIND([Pos, D], pwrite_args(Size), {Pos, D}).

fit_pair(Size) ->
    ?BIND(Len, len_upto(Size), ?BIND(Pos, range(0, Size - Len), {Pos, data_of_len(Len)})).

%% [Pos, Data] that ends past the end of the file.
bad_pwrite_args(Size) ->
    frequency([{4, ?BIND(Len, range(1, 10),
                         ?BIND(Pos, range(max(0, Size - Len + 1), Size + 5),
                               [Pos, data_of_len(Len)]))},
               {1, [range(Size + 1, Size + 5), data_of_len(70000)]}]).

%% A list of writes of which one (not the first, often) does not fit.
bad_pwrite_list_gen(Size) ->
    ?BIND({Good, Bad, Rest},
          {list(fit_pair(Size)), bad_pwrite_args(Size), list(pwrite_pair(Size))},
          [Good ++ [list_to_tuple(Bad) | Rest]]).

%% [Src, Len, Dst]: pread Len at Src, pwrite the binary at Dst. In direct mode the binary
%% points into the mapping itself, possibly overlapping the target.
copy_args(Size) ->
    ?BIND({Src, Len},
          {range(0, Size - 1), frequency([{3, range(1, min(Size, 16))}, {1, range(1, Size)}])},
          ?BIND(Dst, range(0, Size - min(Len, Size - Src)), [Src, Len, Dst])).

%% Lengths for allocate/3: 0 and negative are einval for both; growth stays modest.
alloc_len_gen(Size) ->
    frequency([{4, range(1, 16)}, {1, range(1, Size + 20)}, {1, elements([0, -1])}]).

advise_len_gen(Size) ->
    frequency([{4, range(0, Size + 10)}, {1, exactly(0)}, {1, exactly(-1)}]).

advice_gen() ->
    elements([normal, sequential, random, no_reuse, will_need, dont_need]).

max_gen() ->
    frequency([{3, range(0, 16)}, {2, exactly(infinity)}, {1, range(0, 1000)},
               {1, elements([(1 bsl 31) - 1, 1 bsl 31, -1])}]).

copy_len_gen() ->
    frequency([{4, range(0, 40)}, {1, exactly(infinity)}, {1, exactly(0)}]).

%%%===========================================================================
%%% proper_statem callbacks
%%%===========================================================================

initial_state() ->
    #s{}.

norm(S = #s{data = {chunks, C}}) -> S#s{data = expand(C)};
norm(S = #s{}) -> S.

command(S) ->
    command1(norm(S)).

command1(#s{data = D, pos = P, other = O, flex = Flex, far = Far}) ->
    Size = byte_size(D),
    Avail = Size - P,
    Write = [{4, {call, ?MODULE, do_write, [data_gen(Avail)]}} || Avail >= 0]
        ++ [{1, {call, ?MODULE, do_write, [data_of_len(0)]}} || Avail < 0],
    Resize = [{2, {call, ?MODULE, do_truncate, []}} || Flex]
        ++ [{2, {call, ?MODULE, do_allocate, [pos_gen(Size), alloc_len_gen(Size)]}} || Flex],
    OSize = byte_size(O),
    frequency(
      Write ++ Resize ++
          [{1, {call, ?MODULE, do_sync, []}},
           {1, {call, ?MODULE, do_datasync, []}},
           {1, {call, ?MODULE, do_advise, [pos_gen(Size), advise_len_gen(Size), advice_gen()]}},
           {2, {call, ?MODULE, do_info, [elements([[], [{time, posix}], [{time, universal}]])]}},
           {3, {call, ?MODULE, do_ipread, [pos_gen(Size), max_gen()]}},
           {2, {call, ?MODULE, do_copy_out, [copy_len_gen()]}},
           {2, {call, ?MODULE, do_copy_in, [copy_len_gen()]}},
           {1, {call, ?MODULE, do_bad_copy_out, [range(1, 40)]}},
           {2, {call, ?MODULE, do_oposition, [range(0, OSize + 3)]}}] ++
          [{5, {call, ?MODULE, do_pread, [pos_gen(Size), len_gen(Size)]}},
           {2, {call, ?MODULE, do_pread_list, [list({pos_gen(Size), len_gen(Size)})]}},
           {5, {call, ?MODULE, do_pwrite, pwrite_args(Size)}},
           {2, {call, ?MODULE, do_pwrite_list, [list(pwrite_pair(Size))]}},
           {4, {call, ?MODULE, do_read, [len_gen(Size)]}},
           {7, {call, ?MODULE, do_read_line, []}},
           {5, {call, ?MODULE, do_position, [location_gen(Size, P, Far)]}},
           {2 * min(Size, 1), {call, ?MODULE, do_copy_within, copy_args(max(Size, 1))}},
           {1, {call, ?MODULE, do_bad_pwrite, bad_pwrite_args(Size)}},
           {1, {call, ?MODULE, do_bad_write, [bad_data_gen(Avail)]}},
           {1, {call, ?MODULE, do_bad_pwrite_list, bad_pwrite_list_gen(Size)}}]).

precondition(S = #s{data = {chunks, _}}, Call) ->
    precondition(norm(S), Call);
precondition(#s{data = D, pos = P}, {call, _, do_write, [Data]}) ->
    fits(P, Data, byte_size(D));
precondition(#s{data = D, pos = P}, {call, _, do_bad_write, [Data]}) ->
    not fits(P, Data, byte_size(D));
precondition(#s{data = D}, {call, _, do_pwrite, [Pos, Data]}) ->
    fits(Pos, Data, byte_size(D)) orelse fails_alike(Pos, Data);
precondition(#s{data = D}, {call, _, do_bad_pwrite, [Pos, Data]}) ->
    Pos >= 0 andalso not fits(Pos, Data, byte_size(D));
precondition(#s{data = D}, {call, _, do_pwrite_list, [L]}) ->
    lists:all(fun({Pos, Data}) -> fits(Pos, Data, byte_size(D)) orelse fails_alike(Pos, Data) end,
              L);
%% Reads that would end past 2^63 - 1 (see the module doc).
precondition(#s{pos = P}, {call, _, do_read, [N]}) ->
    N =:= 0 orelse P + N =< ?MAXPOS;
precondition(#s{pos = P}, {call, _, do_read_line, []}) ->
    P =< ?TOP;
precondition(#s{data = D}, {call, _, do_bad_pwrite_list, [L]}) ->
    case lists:dropwhile(fun({Pos, Data}) -> fits(Pos, Data, byte_size(D)) end, L) of
        [{Pos, _} | _] -> Pos >= 0;
        [] -> false
    end;
precondition(#s{flex = Flex, data = D, pos = P}, {call, _, do_truncate, []}) ->
    %% (growing to a far position would make a raw file of exabytes: nothing to compare)
    Flex andalso P =< byte_size(D) + 100000;
precondition(#s{flex = Flex, data = D}, {call, _, do_allocate, [Off, Len]}) ->
    Flex orelse Off + Len =< byte_size(D);
precondition(S, {call, _, do_copy_out, [Len]}) ->
    {N, _} = copy_out_span(S, Len),
    S#s.pos =< ?TOP andalso (N =:= 0 orelse S#s.opos + N =< byte_size(S#s.other));
precondition(S, {call, _, do_bad_copy_out, [Len]}) ->
    {N, _} = copy_out_span(S, Len),
    N > 0 andalso S#s.opos + N > byte_size(S#s.other);
precondition(S = #s{data = D, pos = P}, {call, _, do_copy_in, [Len]}) ->
    {N, _} = copy_in_span(S, Len),
    N =:= 0 orelse P + N =< byte_size(D);
precondition(_, _) ->
    true.

%% {Bytes copied, the bytes} for file:copy(Main, Other, Len) and the reverse.
copy_out_span(#s{data = D, pos = P}, Len) ->
    span(D, P, Len).

copy_in_span(#s{other = O, opos = OP}, Len) ->
    span(O, OP, Len).

span(Bin, Pos, Len) when Pos >= byte_size(Bin) ->
    _ = Len,
    {0, <<>>};
span(Bin, Pos, Len) ->
    N = min(Len, byte_size(Bin) - Pos),
    {N, binary:part(Bin, Pos, N)}.

%% Whether a write of Data at Pos succeeds: it fits in the file, or it is empty (which
%% needs no room) at a file position.
fits(Pos, Data, Size) ->
    case dlen(Data) of
        0 -> Pos >= 0 andalso Pos =< ?MAXPOS;
        N -> Pos >= 0 andalso Pos + N =< Size
    end.

%% Writes that fail for a raw file as for emmap: at a negative position, or (empty ones)
%% past the largest file position.
fails_alike(Pos, Data) ->
    Pos < 0 orelse Pos > ?MAXPOS andalso dlen(Data) =:= 0.

next_state(S, _Res, {call, _, F, Args}) ->
    N = norm(S),
    N1 = next_model(N, F, Args),
    case N1#s.data =:= N#s.data of
        true -> N1#s{data = S#s.data};    % keep the compact form while nothing is written
        false -> N1
    end.

%% Every step answers #{em, raw, em_pos, raw_pos, same}; for the commands that only run
%% on emmap, `raw' is the answer emmap must give.
postcondition(S, {call, _, F, Args},
              #{em := E, raw := R, em_pos := EP, raw_pos := RP, same := Same,
                other := Other}) ->
    #s{pos = ModelPos, opos = ModelOPos, other = ModelO} = next_model(norm(S), F, Args),
    E =:= R andalso EP =:= RP andalso RP =:= {ok, ModelPos} andalso Same
        andalso Other =:= {{ok, ModelOPos}, {ok, ModelOPos}, {ok, ModelO}, {ok, ModelO}};
postcondition(_, _, _) ->
    false.

%%%===========================================================================
%%% Model
%%%===========================================================================

next_model(S, do_pread, _) ->
    S;
next_model(S, do_pread_list, _) ->
    S;
next_model(S, do_pwrite, [Pos, D]) ->
    apply_pwrites(S, [{Pos, D}]);
next_model(S, do_pwrite_list, [L]) ->
    apply_pwrites(S, L);
next_model(S, do_bad_pwrite, _) ->
    S;
next_model(S, do_bad_pwrite_list, [L]) ->
    apply_pwrites(S, L);
next_model(S = #s{data = D, pos = P}, do_read, [N]) ->
    case N > 0 andalso P < byte_size(D) of
        true -> S#s{pos = min(P + N, byte_size(D))};
        false -> S
    end;
next_model(S = #s{data = D, pos = P}, do_read_line, []) ->
    Size = byte_size(D),
    if
        P >= Size -> S;
        true ->
            case binary:match(D, <<"\n">>, [{scope, {P, Size - P}}]) of
                {I, 1} -> S#s{pos = I + 1};
                nomatch -> S#s{pos = Size}
            end
    end;
next_model(S, do_position, [Loc]) ->
    case seek(S, Loc) of
        N when N >= 0, N =< ?MAXPOS -> S#s{pos = N};
        _ -> S
    end;
next_model(S = #s{data = D, pos = P}, do_write, [Data]) ->
    S#s{data = patch(D, P, bytes_of(Data)), pos = P + dlen(Data)};
next_model(S, do_bad_write, _) ->
    S;
next_model(S = #s{data = D}, do_copy_within, [Src, Len, Dst]) ->
    N = min(Len, byte_size(D) - Src),
    S#s{data = patch(D, Dst, binary:part(D, Src, N))};
next_model(S = #s{data = D, pos = P}, do_truncate, []) ->
    S#s{data = resized(D, P)};
next_model(S = #s{data = D}, do_allocate, [Off, Len]) when Off >= 0, Len > 0 ->
    S#s{data = resized(D, max(byte_size(D), Off + Len))};
next_model(S, do_allocate, _) ->
    S;
next_model(S, F, _) when F =:= do_sync; F =:= do_datasync; F =:= do_advise; F =:= do_info;
                         F =:= do_ipread; F =:= do_bad_copy_out ->
    S;
next_model(S = #s{pos = P, other = O, opos = OP}, do_copy_out, [Len]) ->
    {N, B} = copy_out_span(S, Len),
    S#s{pos = P + N, other = patch(O, OP, B), opos = OP + N};
next_model(S = #s{data = D, pos = P, opos = OP}, do_copy_in, [Len]) ->
    {N, B} = copy_in_span(S, Len),
    S#s{data = patch(D, P, B), pos = P + N, opos = OP + N};
next_model(S, do_oposition, [OP]) ->
    S#s{opos = OP}.

%% D cut or padded with zeros to N bytes.
resized(D, N) when N =< byte_size(D) ->
    binary:part(D, 0, N);
resized(D, N) ->
    <<D/binary, 0:((N - byte_size(D)) * 8)>>.

%% Writes in order up to the first one that does not fit (negative, or past the end).
apply_pwrites(S = #s{data = D}, [{Pos, Data} | Rest]) ->
    case fits(Pos, Data, byte_size(D)) of
        true -> apply_pwrites(S#s{data = patch(D, Pos, bytes_of(Data))}, Rest);
        false -> S
    end;
apply_pwrites(S, []) ->
    S.

patch(D, _Pos, <<>>) ->
    D;
patch(D, Pos, B) ->
    N = byte_size(B),
    <<Pre:Pos/binary, _:N/binary, Post/binary>> = D,
    <<Pre/binary, B/binary, Post/binary>>.

seek(#s{}, N) when is_integer(N) -> N;
seek(#s{}, bof) -> 0;
seek(#s{pos = P}, cur) -> P;
seek(#s{data = D}, eof) -> byte_size(D);
seek(#s{}, {bof, N}) -> N;
seek(#s{pos = P}, {cur, N}) -> P + N;
seek(#s{data = D}, {eof, N}) -> byte_size(D) + N.

%%%===========================================================================
%%% Commands
%%%===========================================================================

handles() ->
    get(?KEY).

%% Runs F on the emmap handle (copying the answer at once: in direct mode its binaries
%% point into the mapping) and then on the raw handle.
both(F) ->
    {Em, Raw, _, _} = handles(),
    E = safe(F, Em),
    R = safe(F, Raw),
    step(E, R).

%% The same, for F(Main, Other).
both2(F) ->
    {Em, Raw, EmO, RawO} = handles(),
    E = safe(fun(H) -> F(H, EmO) end, Em),
    R = safe(fun(H) -> F(H, RawO) end, Raw),
    step(E, R).

step(E, R) ->
    {Em, Raw, EmO, RawO} = handles(),
    %% position(cur) on the raw handle also drops prim_file's read_line look-ahead buffer
    %% (see the module doc); on emmap it changes nothing.
    EP = safe(fun(F) -> file:position(F, cur) end, Em),
    RP = safe(fun(F) -> file:position(F, cur) end, Raw),
    Same = safe(fun full/1, Em) =:= safe(fun full/1, Raw),
    Other = {safe(fun(F) -> file:position(F, cur) end, EmO),
             safe(fun(F) -> file:position(F, cur) end, RawO),
             safe(fun(F) -> file:pread(F, 0, 1000) end, EmO),
             safe(fun(F) -> file:pread(F, 0, 1000) end, RawO)},
    #{em => E, raw => R, em_pos => EP, raw_pos => RP, same => Same, other => Other}.

%% F(Handle), with the answer copied at once (in direct mode its binaries point into the
%% mapping) and exceptions turned into values: the Debian build of PropEr 1.2 crashes on
%% erlang:get_stacktrace/0 when a command raises, losing the history.
safe(F, H) ->
    try copy(F(H))
    catch Class:Reason -> {raised, Class, Reason}
    end.

%% The size file:read_file_info/1 reports, and every byte.
full(F) ->
    {ok, #file_info{size = Size}} = file:read_file_info(F),
    {Size, file:pread(F, 0, Size + 1)}.

do_pread(Pos, Len) ->
    both(fun(F) -> file:pread(F, Pos, Len) end).

do_pread_list(L) ->
    both(fun(F) -> file:pread(F, L) end).

do_pwrite(Pos, D) ->
    both(fun(F) -> file:pwrite(F, Pos, data(D)) end).

do_pwrite_list(L) ->
    L1 = [{Pos, data(D)} || {Pos, D} <- L],
    both(fun(F) -> file:pwrite(F, L1) end).

do_truncate() ->
    both(fun(F) -> file:truncate(F) end).

do_allocate(Off, Len) ->
    both(fun(F) -> file:allocate(F, Off, Len) end).

do_sync() ->
    both(fun(F) -> file:sync(F) end).

do_datasync() ->
    both(fun(F) -> file:datasync(F) end).

do_advise(Off, Len, Advice) ->
    both(fun(F) -> file:advise(F, Off, Len, Advice) end).

%% What a file user looks at: size, type, access, and the type of the times asked for.
do_info(Opts) ->
    both(fun(F) ->
                 case file:read_file_info(F, Opts) of
                     {ok, #file_info{size = S, type = T, access = A, mtime = M}} ->
                         {ok, S, T, A, time_kind(M)};
                     Other -> Other
                 end
         end).

time_kind(T) when is_integer(T) -> posix;
time_kind({{_, _, _}, {_, _, _}}) -> datetime.

do_ipread(Pos, Max) ->
    both(fun(F) -> file:ipread_s32bu_p32bu(F, Pos, Max) end).

do_copy_out(Len) ->
    both2(fun(Main, Other) -> file:copy(Main, Other, Len) end).

do_copy_in(Len) ->
    both2(fun(Main, Other) -> file:copy(Other, Main, Len) end).

%% A copy into the second file that does not fit: emmap answers {error, einval} and
%% moves nothing (a raw file would grow).
do_bad_copy_out(Len) ->
    {Em, _, EmO, _} = handles(),
    step(safe(fun(F) -> file:copy(F, EmO, Len) end, Em), {error, einval}).

do_oposition(OP) ->
    both2(fun(_, Other) -> file:position(Other, OP) end).

do_read(N) ->
    both(fun(F) -> file:read(F, N) end).

do_read_line() ->
    both(fun(F) -> file:read_line(F) end).

%% A location outside the signed 64-bit range is `{error, badarg}' for a raw file and
%% `{error, einval}' for emmap (a well-typed request it cannot do), the one difference.
do_position(Loc) ->
    {Em, Raw, _, _} = handles(),
    Call = fun(F) -> file:position(F, Loc) end,
    E = safe(Call, Em),
    R = case {safe(Call, Raw), in_i64(Loc)} of
            {{error, badarg}, false} -> {error, einval};
            {Other, _} -> Other
        end,
    step(E, R).

in_i64({_, D}) -> in_i64(D);
in_i64(X) when is_integer(X) -> X >= -(1 bsl 63) andalso X =< ?MAXPOS;
in_i64(_) -> true.

do_write(D) ->
    both(fun(F) -> file:write(F, data(D)) end).

do_copy_within(Src, Len, Dst) ->
    both(fun(F) ->
                 case file:pread(F, Src, Len) of
                     {ok, B} -> file:pwrite(F, Dst, B);
                     Other -> {pread, Other}
                 end
         end).

%% Writes past the end: emmap must answer {error, einval} and change nothing (checked by
%% step/2 against the untouched raw file and the model).
do_bad_pwrite(Pos, D) ->
    {Em, _, _, _} = handles(),
    step(safe(fun(F) -> file:pwrite(F, Pos, data(D)) end, Em), {error, einval}).

do_bad_write(D) ->
    {Em, _, _, _} = handles(),
    step(safe(fun(F) -> file:write(F, data(D)) end, Em), {error, einval}).

%% A list whose K-th write does not fit: emmap answers {error, {K, einval}} after doing the
%% K writes before it; the raw file gets just those K writes.
do_bad_pwrite_list(L) ->
    {Em, Raw, _, _} = handles(),
    {ok, #file_info{size = Size}} = file:read_file_info(Raw),
    L1 = [{Pos, data(D)} || {Pos, D} <- L],
    {Good, _} = lists:splitwith(fun({Pos, B}) -> fits(Pos, iolist_size(B), Size) end, L1),
    E = safe(fun(F) -> file:pwrite(F, L1) end, Em),
    R = case safe(fun(F) -> file:pwrite(F, Good) end, Raw) of
            ok -> {error, {length(Good), einval}};
            Other -> {raw_prefix_failed, Other}
        end,
    step(E, R).

copy(B) when is_binary(B) -> binary:copy(B);
copy(L) when is_list(L) -> [copy(X) || X <- L];
copy(T) when is_tuple(T) -> list_to_tuple(copy(tuple_to_list(T)));
copy(X) -> X.

%% Runs Fun(Dir) in a new directory under /tmp; afterwards closes every handle that went
%% through opened/1 and removes the directory with its files.
in_tmp_dir(Fun) ->
    Dir = emmap_test_lib:tmp_dir("diff"),
    try
        Fun(Dir)
    after
        erase(?KEY),
        [_ = file:close(H) || H <- erase_opened()],
        [begin
             [_ = file:delete(filename:join(D, N)) || {ok, Ns} <- [file:list_dir(D)], N <- Ns],
             _ = file:del_dir(D)
         end || D <- lists:usort([Dir, oracle_dir(Dir)])]
    end.

%% The raw files go to tmpfs when there is one: its largest file offset is 2^63 - 1, as for
%% emmap (see the module doc).
oracle_path(Dir, Name) ->
    D = oracle_dir(Dir),
    ok = filelib:ensure_dir(filename:join(D, Name)),
    filename:join(D, Name).

oracle_dir(Dir) ->
    case oracle_on_tmpfs() of
        true -> filename:join("/dev/shm", filename:basename(Dir));
        false -> Dir
    end.

%% Whether a raw file in /dev/shm takes the position 2^63 - 1 (asked once per VM).
oracle_on_tmpfs() ->
    case persistent_term:get(?MODULE, undefined) of
        undefined ->
            P = emmap_test_lib:tmp_path("/dev/shm", "diff_probe"),
            Ok = case file:open(P, [raw, binary, read, write]) of
                     {ok, F} ->
                         R = file:position(F, ?MAXPOS),
                         ok = file:close(F),
                         _ = file:delete(P),
                         R =:= {ok, ?MAXPOS};
                     {error, _} ->
                         false
                 end,
            persistent_term:put(?MODULE, Ok),
            Ok;
        Ok ->
            Ok
    end.

opened({ok, H}) ->
    put(?OPENED, [H | get_opened()]),
    H;
opened(Error) ->
    erlang:error({open_failed, Error}).

get_opened() ->
    case get(?OPENED) of
        undefined -> [];
        Hs -> Hs
    end.

erase_opened() ->
    Hs = get_opened(),
    erase(?OPENED),
    Hs.

%%%===========================================================================
%%% Hand-picked edge cases
%%%===========================================================================

%% Runs Fun(Em, Raw) on an emmap handle (each option set given) and a raw handle over
%% files holding Contents, and then checks that both files hold the same bytes.
with_pair(Contents, Fun) ->
    [with_pair(Contents, opts(V), Fun) || V <- [shared, direct, nolock, private]],
    ok.

with_pair(Contents, Opts, Fun) ->
    in_tmp_dir(
      fun(Dir) ->
              P1 = filename:join(Dir, "mapped"),
              P2 = filename:join(Dir, "raw"),
              ok = file:write_file(P1, Contents),
              ok = file:write_file(P2, Contents),
              Em = opened(emmap:open(P1, 0, 0, Opts)),
              Raw = opened(file:open(P2, [raw, binary, read, write])),
              Fun(Em, Raw),
              {ok, RawAll} = file:read_file(P2),
              ?assertEqual({Opts, {ok, RawAll}},
                           {Opts, copy(file:pread(Em, 0, byte_size(Contents) + 1))})
      end).

%% Asserts that Call gives the same answer and leaves the same position on both handles.
same(Em, Raw, Call) ->
    E = copy(Call(Em)),
    R = Call(Raw),
    ?assertEqual(R, E),
    ?assertEqual(file:position(Raw, cur), file:position(Em, cur)),
    E.

pread_len0_test() ->
    with_pair(<<"hello\n">>,
              fun(Em, Raw) ->
                      [?assertEqual(eof, same(Em, Raw, fun(F) -> file:pread(F, P, 0) end))
                       || P <- [0, 3, 5, 6, 7, 100]],
                      ?assertEqual({error, einval},
                                   same(Em, Raw, fun(F) -> file:pread(F, -1, 0) end)),
                      ?assertEqual({ok, [eof, <<"h">>, eof]},
                                   same(Em, Raw, fun(F) -> file:pread(F, [{0, 0}, {0, 1}, {6, 1}]) end))
              end).

pread_clipped_and_negative_test() ->
    with_pair(<<"0123456789">>,
              fun(Em, Raw) ->
                      ?assertEqual({ok, <<"89">>}, same(Em, Raw, fun(F) -> file:pread(F, 8, 10) end)),
                      ?assertEqual({ok, <<"0123456789">>},
                                   same(Em, Raw, fun(F) -> file:pread(F, 0, 1 bsl 20) end)),
                      ?assertEqual({error, einval}, same(Em, Raw, fun(F) -> file:pread(F, -1, 2) end)),
                      ?assertEqual({error, einval},
                                   same(Em, Raw, fun(F) -> file:pread(F, [{0, 1}, {-5, 1}]) end)),
                      ?assertEqual(eof, same(Em, Raw, fun(F) -> file:pread(F, 1 bsl 40, 1) end))
              end).

read0_test() ->
    with_pair(<<"abc">>,
              fun(Em, Raw) ->
                      Read0 = fun(F) -> file:read(F, 0) end,
                      ?assertEqual({ok, <<>>}, same(Em, Raw, Read0)),
                      ?assertEqual({ok, <<"abc">>}, same(Em, Raw, fun(F) -> file:read(F, 5) end)),
                      ?assertEqual({ok, <<>>}, same(Em, Raw, Read0)),   % at eof
                      ?assertEqual(eof, same(Em, Raw, fun(F) -> file:read(F, 1) end)),
                      ?assertEqual({ok, 10}, same(Em, Raw, fun(F) -> file:position(F, 10) end)),
                      ?assertEqual({ok, <<>>}, same(Em, Raw, Read0)),   % past eof
                      ?assertEqual(eof, same(Em, Raw, fun(F) -> file:read(F, 1) end))
              end).

position_before_start_test() ->
    with_pair(<<"abcdef">>,
              fun(Em, Raw) ->
                      P = fun(Loc) -> same(Em, Raw, fun(F) -> file:position(F, Loc) end) end,
                      ?assertEqual({ok, 2}, P(2)),
                      ?assertEqual({error, einval}, P({eof, -7})),   % position stays 2
                      ?assertEqual({ok, 2}, P(cur)),
                      ?assertEqual({ok, 0}, P({eof, -6})),
                      ?assertEqual({error, einval}, P({cur, -1})),
                      ?assertEqual({error, einval}, P(-1)),
                      ?assertEqual({error, einval}, P({bof, -1})),
                      ?assertEqual({ok, 16}, P({eof, 10})),
                      ?assertEqual({ok, 6}, P({cur, -10})),
                      ?assertEqual({ok, 6}, P(eof))
              end).

%% Positions up to and past 2^63: none may exceed 2^63 - 1 (`{eof, 2^63 - 1}' answered
%% {ok, 2^63 + 4095}), and empty writes at the largest position are ok, as for a raw file
%% on tmpfs (ext4 stops at 16 TiB). Locations outside the signed 64-bit range: badarg for
%% the raw file, einval for emmap.
far_positions_test() ->
    in_tmp_dir(
      fun(Dir) ->
              P1 = filename:join(Dir, "mapped"),
              P2 = oracle_path(Dir, "raw"),
              ok = file:write_file(P1, <<"0123456789">>),
              ok = file:write_file(P2, <<"0123456789">>),
              Em = opened(emmap:open(P1, [read, write, shared])),
              Raw = opened(file:open(P2, [raw, binary, read, write])),
              Max = ?MAXPOS,
              Cases = [{{eof, Max}, {error, einval}},
                       {{eof, Max - 10}, {ok, Max}},
                       {{eof, Max - 9}, {error, einval}},
                       {{cur, 1}, {error, einval}},          % at Max after the above
                       {{cur, 0}, {ok, Max}},
                       {Max, {ok, Max}},
                       {{bof, Max}, {ok, Max}},
                       {{cur, -Max}, {ok, 0}},
                       {{cur, Max}, {ok, Max}},
                       {{cur, -(1 bsl 63)}, {error, einval}},
                       {{eof, -10}, {ok, 0}},
                       {{eof, Max - 11}, {ok, Max - 1}},
                       {{cur, 2}, {error, einval}}],
              Moves = [begin
                           E = file:position(Em, Loc),
                           R = file:position(Raw, Loc),
                           ?assertEqual({Loc, Want}, {Loc, E}),
                           {Loc, E, R}
                       end || {Loc, Want} <- Cases],
              Writes = [{Pos, file:pwrite(Em, Pos, <<>>), file:pwrite(Raw, Pos, <<>>)}
                        || Pos <- [10, 11, 5000, Max, Max + 1, 1 bsl 64]],
              ?assertEqual([ok, ok, ok, ok, {error, einval}, {error, einval}],
                           [E || {_, E, _} <- Writes]),
              {ok, _} = file:position(Em, Max),
              ?assertEqual(ok, file:write(Em, <<>>)),
              ?assertEqual({error, einval}, file:write(Em, <<"x">>)),
              ?assertEqual({ok, Max}, file:position(Em, cur)),
              %% out of the signed 64-bit range: einval (a raw file says badarg)
              [?assertEqual({Loc, {error, einval}}, {Loc, file:position(Em, Loc)})
               || Loc <- [1 bsl 63, {bof, 1 bsl 63}, {cur, 1 bsl 63}, {eof, 1 bsl 64},
                          {cur, -(1 bsl 63) - 1}, -(1 bsl 64)]],
              ?assertEqual({ok, Max}, file:position(Em, cur)),
              case oracle_on_tmpfs() of
                  true ->
                      [?assertEqual({Loc, R}, {Loc, E}) || {Loc, E, R} <- Moves],
                      [?assertEqual({Pos, R}, {Pos, E}) || {Pos, E, R} <- Writes];
                  false ->
                      ok                                % no tmpfs: no raw file to compare
              end
      end).

read_line_test() ->
    with_pair(<<"one\r\ntwo\n\r\n\nthree\r">>,
              fun(Em, Raw) ->
                      RL = fun() -> same(Em, Raw, fun(F) -> file:read_line(F) end) end,
                      ?assertEqual({ok, <<"one\n">>}, RL()),
                      ?assertEqual({ok, <<"two\n">>}, RL()),
                      ?assertEqual({ok, <<"\n">>}, RL()),          % "\r\n"
                      ?assertEqual({ok, <<"\n">>}, RL()),          % "\n"
                      ?assertEqual({ok, <<"three\r">>}, RL()),     % lone CR at the end
                      ?assertEqual(eof, RL()),
                      ?assertEqual(eof, RL()),
                      ?assertEqual({ok, 4}, same(Em, Raw, fun(F) -> file:position(F, 4) end)),
                      ?assertEqual({ok, <<"\n">>}, RL()),          % between CR and LF
                      ?assertEqual({ok, 3}, same(Em, Raw, fun(F) -> file:position(F, 3) end)),
                      ?assertEqual({ok, <<"\n">>}, RL()),          % at the CR of CRLF
                      ?assertEqual({ok, 99}, same(Em, Raw, fun(F) -> file:position(F, 99) end)),
                      ?assertEqual(eof, RL())
              end).

long_lines_test() ->
    Long = binary:copy(<<"y">>, 70000),
    with_pair(<<"a\n", Long/binary, "\r\n", Long/binary, "\n", Long/binary>>,
              fun(Em, Raw) ->
                      RL = fun() -> same(Em, Raw, fun(F) -> file:read_line(F) end) end,
                      ?assertEqual({ok, <<"a\n">>}, RL()),
                      ?assertEqual({ok, <<Long/binary, "\n">>}, RL()),
                      ?assertEqual({ok, <<Long/binary, "\n">>}, RL()),
                      ?assertEqual({ok, Long}, RL()),
                      ?assertEqual(eof, RL()),
                      {ok, _} = same(Em, Raw, fun(F) -> file:position(F, 1) end),
                      {ok, _} = same(Em, Raw, fun(F) -> file:read(F, 100000) end),
                      {ok, _} = same(Em, Raw, fun(F) -> file:pread(F, 5, 150000) end),
                      Big = binary:copy(<<"z\r\n">>, 30000),
                      ok = same(Em, Raw, fun(F) -> file:pwrite(F, 10, Big) end),
                      ok = same(Em, Raw, fun(F) -> file:write(F, Big) end),
                      ?assertEqual({ok, 10}, same(Em, Raw, fun(F) -> file:position(F, 10) end)),
                      ?assertEqual({ok, <<"z\n">>}, RL())
              end).

%% Lines, reads and writes right at emmap's 64 KiB limits (line scan, copy on a normal
%% scheduler, write on a normal scheduler), with CRLF straddling the scan limit.
limits_test() ->
    Lines = [<<(binary:copy(<<"q">>, N))/binary, End/binary>>
             || N <- [65534, 65535, 65536, 65537], End <- [<<"\r\n">>, <<"\n">>]],
    with_pair(iolist_to_binary(Lines),
              fun(Em, Raw) ->
                      [?assertMatch({ok, _}, same(Em, Raw, fun(F) -> file:read_line(F) end))
                       || _ <- Lines],
                      ?assertEqual(eof, same(Em, Raw, fun(F) -> file:read_line(F) end)),
                      [begin
                           {ok, _} = same(Em, Raw, fun(F) -> file:position(F, P) end),
                           {ok, _} = same(Em, Raw, fun(F) -> file:read(F, N) end),
                           {ok, _} = same(Em, Raw, fun(F) -> file:pread(F, P + 1, N) end),
                           ok = same(Em, Raw, fun(F) -> file:pwrite(F, P, binary:copy(<<"w">>, N)) end),
                           ok = same(Em, Raw, fun(F) -> file:write(F, binary:copy(<<"\r">>, N)) end),
                           {ok, _} = same(Em, Raw, fun(F) -> file:position(F, P + 65530) end),
                           {ok, _} = same(Em, Raw, fun(F) -> file:read_line(F) end)
                       end
                       || P <- [0, 3, 70000], N <- [65535, 65536, 65537]]
              end).

iodata_writes_test() ->
    with_pair(<<"0123456789">>,
              fun(Em, Raw) ->
                      ok = same(Em, Raw, fun(F) -> file:pwrite(F, 1, ["a", [<<"b">>, $c], []]) end),
                      ok = same(Em, Raw, fun(F) -> file:write(F, [$x, <<"y">>]) end),
                      ok = same(Em, Raw, fun(F) -> file:pwrite(F, [{5, [<<"p">>, "q"]}, {9, <<>>}]) end),
                      ok = same(Em, Raw, fun(F) -> file:pwrite(F, 10, <<>>) end)  % empty at the end
              end).

negative_pwrite_test() ->
    with_pair(<<"0123456789">>,
              fun(Em, Raw) ->
                      ?assertEqual({error, einval},
                                   same(Em, Raw, fun(F) -> file:pwrite(F, -1, <<"x">>) end)),
                      ?assertEqual({error, einval},
                                   same(Em, Raw, fun(F) -> file:pwrite(F, -1, <<>>) end)),
                      ?assertEqual({error, {1, einval}},
                                   same(Em, Raw, fun(F) -> file:pwrite(F, [{0, <<"A">>}, {-2, <<"B">>}, {1, <<"C">>}]) end))
              end).

%% The documented difference: writes that do not fit answer {error, einval} and change
%% nothing (neither the bytes, nor the position, nor the size of the file).
write_past_end_test() ->
    Orig = <<"0123456789">>,
    [with_em(Orig, Opts,
             fun(Em, Path) ->
                     Unchanged = fun() ->
                                         ?assertEqual({ok, Orig}, copy(file:pread(Em, 0, 100))),
                                         ?assertEqual(10, maps:get(size, emmap:info(Em))),
                                         ?assertEqual(10, filelib:file_size(Path))
                                 end,
                     ?assertEqual({error, einval}, file:pwrite(Em, 10, <<"x">>)),
                     ?assertEqual({error, einval}, file:pwrite(Em, 9, <<"xy">>)),
                     ?assertEqual({error, einval}, file:pwrite(Em, 0, binary:copy(<<"x">>, 11))),
                     ?assertEqual({error, einval}, file:pwrite(Em, 5, binary:copy(<<"x">>, 70000))),
                     %% an empty write needs no room: ok past the end, as for raw files
                     ?assertEqual(ok, file:pwrite(Em, 11, <<>>)),
                     ?assertEqual(ok, file:pwrite(Em, 5000, <<>>)),
                     ?assertEqual(ok, file:pwrite(Em, (1 bsl 63) - 1, <<>>)),
                     ?assertEqual({error, einval}, file:pwrite(Em, 1 bsl 63, <<>>)),
                     ?assertEqual({error, einval}, file:pwrite(Em, 1 bsl 63, <<"x">>)),
                     ?assertEqual({error, einval}, file:pwrite(Em, 1 bsl 70, <<"x">>)),
                     Unchanged(),
                     ?assertEqual({ok, 8}, file:position(Em, 8)),
                     ?assertEqual({error, einval}, file:write(Em, <<"abc">>)),
                     ?assertEqual({ok, 8}, file:position(Em, cur)),
                     ?assertEqual({ok, 12}, file:position(Em, 12)),
                     ?assertEqual(ok, file:write(Em, <<>>)),
                     ?assertEqual(ok, file:write(Em, [[], <<>>])),
                     ?assertEqual({error, einval}, file:write(Em, <<"a">>)),
                     ?assertEqual({ok, 12}, file:position(Em, cur)),
                     Unchanged(),
                     %% the writes before the failing one are done, and counted
                     ?assertEqual({error, {2, einval}},
                                  file:pwrite(Em, [{0, <<"A">>}, {9, <<"B">>}, {9, <<"CD">>}, {1, <<"E">>}])),
                     ?assertEqual({ok, <<"A12345678B">>}, copy(file:pread(Em, 0, 100))),
                     ?assertEqual({ok, 10}, file:position(Em, 10)),
                     ?assertEqual(ok, file:write(Em, <<>>))     % empty, exactly at the end
             end)
     || Opts <- [opts(shared), opts(direct), opts(nolock), opts(private)]].

with_em(Contents, Opts, Fun) ->
    in_tmp_dir(
      fun(Dir) ->
              Path = filename:join(Dir, "mapped"),
              ok = file:write_file(Path, Contents),
              Fun(opened(emmap:open(Path, 0, 0, Opts)), Path)
      end).

%% prim_file (OTP 25) loses a raw handle's position after read_line + pwrite (its
%% look-ahead buffer is dropped without seeking back); emmap keeps it.
emmap_position_after_read_line_and_pwrite_test() ->
    [with_em(<<"ab\ncd\nef\n">>, Opts,
             fun(Em, _) ->
                     ?assertEqual({ok, <<"ab\n">>}, file:read_line(Em)),
                     ?assertEqual(ok, file:pwrite(Em, 0, <<"x">>)),
                     ?assertEqual({ok, 3}, file:position(Em, cur)),
                     ?assertEqual({ok, <<"cd\n">>}, file:read_line(Em)),
                     ?assertEqual(ok, file:pwrite(Em, [{0, <<"y">>}])),
                     ?assertEqual({ok, <<"ef">>}, file:read(Em, 2))
             end)
     || Opts <- [opts(shared), opts(direct), opts(nolock)]].

%% In direct mode binaries point into the mapping and show later writes; copies do not.
direct_binaries_alias_test() ->
    with_em(<<"abcdef\n">>, opts(direct),
            fun(Em, _) ->
                    {ok, B} = file:pread(Em, 0, 3),
                    C = binary:copy(B),
                    {ok, L} = file:read_line(Em),
                    ok = file:pwrite(Em, 0, <<"XYZ">>),
                    ?assertEqual(<<"XYZ">>, B),
                    ?assertEqual(<<"abc">>, C),
                    ?assertEqual(<<"XYZdef\n">>, L),
                    %% a direct binary written back over an overlapping range
                    ok = file:pwrite(Em, 2, B),
                    ?assertEqual({ok, <<"XYXYZf\n">>}, copy(file:pread(Em, 0, 10)))
            end).

closed_handle_test() ->
    with_em(<<"abc\n">>, opts(shared),
            fun(Em, _) ->
                    ok = file:close(Em),
                    ?assertEqual({error, closed}, file:pread(Em, 0, 1)),
                    ?assertEqual({error, closed}, file:read_line(Em)),
                    ?assertEqual({error, closed}, file:pwrite(Em, 0, <<"x">>)),
                    ?assertEqual({error, closed}, file:position(Em, 0))
            end).

%% file:copy/2,3 between an emmap handle and a raw file, both ways (file.erl copies
%% through read/write then), and between two emmap handles (emmap:copy/3).
copy_between_emmap_and_raw_files_test() ->
    Src = << <<(I rem 256)>> || I <- lists:seq(1, 200000) >>,
    in_tmp_dir(
      fun(Dir) ->
              P = fun(N) -> filename:join(Dir, N) end,
              ok = file:write_file(P("em_src"), Src),
              ok = file:write_file(P("em_dst"), binary:copy(<<0>>, 200000)),
              Em = opened(emmap:open(P("em_src"), [read, write, shared, direct])),
              Raw = opened(file:open(P("raw"), [raw, binary, read, write])),
              ?assertEqual({ok, 3}, file:position(Em, 3)),
              ?assertEqual({ok, 199997}, file:copy(Em, Raw)),
              ?assertEqual({ok, 200000}, file:position(Em, cur)),
              ?assertEqual({ok, binary:part(Src, 3, 199997)}, file:read_file(P("raw"))),
              Dst = opened(emmap:open(P("em_dst"), [read, write, shared])),
              {ok, 0} = file:position(Raw, bof),
              ?assertEqual({ok, 100}, file:copy(Raw, Dst, 100)),
              ?assertEqual({ok, 100}, file:position(Dst, cur)),
              {ok, 0} = file:position(Em, bof),
              ?assertEqual({ok, 150000}, file:copy(Em, Dst, 150000)),
              ?assertEqual({ok, 150100}, file:position(Dst, cur)),
              ?assertEqual({ok, binary:part(Src, 0, 150000)}, copy(file:pread(Dst, 100, 150000))),
              %% Does not fit: nothing copied, neither position moves.
              ?assertEqual({error, einval}, file:copy(Em, Dst)),
              ?assertEqual({ok, 150000}, file:position(Em, cur)),
              ?assertEqual({ok, 150100}, file:position(Dst, cur)),
              %% Past the end of the source: nothing to copy.
              {ok, _} = file:position(Em, 300000),
              ?assertEqual({ok, 0}, file:copy(Em, Dst, 10)),
              %% A handle copied onto itself reads, then writes after what it read.
              {ok, 0} = file:position(Dst, bof),
              ?assertEqual({ok, 5}, file:copy(Dst, Dst, 5)),
              ?assertEqual({ok, <<4, 5, 6, 7, 8, 4, 5, 6, 7, 8>>}, copy(file:pread(Dst, 0, 10))),
              ?assertEqual({ok, 10}, file:position(Dst, cur)),
              ok = file:close(Dst),
              ?assertEqual({error, closed}, file:copy(Em, Dst, 1))
      end).

%% truncate/1 on a mapping: the file ends at the position; direct binaries that pointed
%% past the new end stay readable (zeros); growing again gives zeros; a window into a
%% larger file, a fixed_size mapping and a file mapped by another handle refuse.
truncate_and_allocate_test() ->
    Orig = binary:copy(<<"0123456789">>, 1000),
    with_em(Orig, opts(direct),
            fun(Em, Path) ->
                    {ok, Tail} = file:pread(Em, 9000, 10),
                    {ok, 5000} = file:position(Em, 5000),
                    ?assertEqual(ok, file:truncate(Em)),
                    ?assertEqual(5000, filelib:file_size(Path)),
                    ?assertEqual(<<0:80>>, Tail),
                    ?assertEqual(eof, file:pread(Em, 5000, 1)),
                    ?assertEqual({error, einval}, file:pwrite(Em, 4999, <<"ab">>)),
                    ?assertMatch({ok, #file_info{size = 5000, type = regular, access = read_write}},
                                 file:read_file_info(Em)),
                    ?assertEqual(ok, file:allocate(Em, 6000, 100)),
                    ?assertEqual(6100, filelib:file_size(Path)),
                    ?assertEqual({ok, <<"789", 0:8>>}, copy(file:pread(Em, 4997, 4))),
                    ?assertEqual(ok, file:sync(Em)),
                    ?assertEqual(ok, file:datasync(Em)),
                    {ok, Disk} = file:read_file(Path),
                    ?assertEqual(binary:part(Orig, 0, 5000), binary:part(Disk, 0, 5000)),
                    ?assertEqual(<<0:(1100 * 8)>>, binary:part(Disk, 5000, 1100))
            end),
    with_em(Orig, [read, write, shared, fixed_size],
            fun(Em, Path) ->
                    {ok, 10000} = file:position(Em, eof),
                    ?assertEqual(ok, file:truncate(Em)),          % nothing to change
                    {ok, 10} = file:position(Em, 10),
                    ?assertEqual({error, fixed_size}, file:truncate(Em)),
                    ?assertEqual({error, fixed_size}, file:allocate(Em, 9999, 2)),
                    ?assertEqual(ok, file:allocate(Em, 0, 10000)),
                    ?assertEqual({ok, Orig}, file:read_file(Path))
            end),
    in_tmp_dir(
      fun(Dir) ->
              P = filename:join(Dir, "win"),
              ok = file:write_file(P, Orig),
              Win = opened(emmap:open(P, 100, 100, [read, write, shared])),
              {ok, 50} = file:position(Win, 50),
              ?assertEqual({error, einval}, file:truncate(Win)),
              ok = file:close(Win),
              A = opened(emmap:open(P, [read, write, shared])),
              B = opened(emmap:open(P, [read, shared])),
              ?assertEqual({error, ebusy}, file:truncate(A)),
              ?assertEqual({error, ebusy}, emmap:open(P, 0, 10, [read, write, shared, truncate])),
              ok = file:close(B),
              ?assertEqual(ok, file:truncate(A)),
              ?assertEqual(0, filelib:file_size(P))
      end).

%% ipread_s32bu_p32bu/3 (the indirect read dets uses) answers what a raw file answers.
ipread_test() ->
    with_pair(<<0, 0, 0, 4, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 50, 0, 0, 0, 12, "abcdefghij">>,
              fun(Em, Raw) ->
                      [same(Em, Raw, fun(F) -> file:ipread_s32bu_p32bu(F, Pos, Max) end)
                       || Pos <- [0, 8, 16, 30, 33, 34, 100, -1],
                          Max <- [-1, 0, 3, 4, 100, infinity, (1 bsl 31) - 1, 1 bsl 31]],
                      ?assertEqual({ok, {4, 10, <<0, 0, 0, 0>>}},
                                   same(Em, Raw, fun(F) -> file:ipread_s32bu_p32bu(F, 0, 4) end))
              end).
