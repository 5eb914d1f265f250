%%% @doc Memory-mapped files and shared memory for Erlang.
%%%
%%% `open/2,4' maps a file (or anonymous memory) and returns a handle that the `file' module
%%% understands: `file:pread/3', `file:pwrite/3', `file:read/2', `file:read_line/1',
%%% `file:write/2', `file:position/2', `file:sync/1', `file:truncate/1', `file:allocate/3',
%%% `file:read_file_info/1', `file:copy/3' and `file:close/1' all work on it.
%%% The same operations are exported here, together with 64-bit atomics on the mapping
%%% (`patomic/4' and friends) and persistent counters (`open_counters/2' and friends).
%%%
%%% Errors: arguments of the wrong type raise `error:badarg'; a well-typed request that
%%% cannot be carried out returns `{error, Reason}' and changes nothing. See the README for
%%% the full table of reasons.
-module(emmap).

-include_lib("kernel/include/file.hrl").
-include_lib("kernel/include/logger.hrl").

-export([open/2, open/4, close/1, info/1, sigbus_handler/0]).
-export([pread/2, pread/3, pwrite/2, pwrite/3, read/2, read_line/1, write/2, position/2]).
-export([flush/1, sync/1, datasync/1, advise/4, truncate/1, resize/1, resize/2]).
-export([allocate/3, read_handle_info/1, read_handle_info/2, copy/3,
         ipread_s32bu_p32bu/3]).
-export([patomic/4, patomic_add/3, patomic_sub/3, patomic_and/3, patomic_or/3,
         patomic_xor/3, patomic_xchg/3, patomic_cas/4,
         patomic_read_integer/2, patomic_write_integer/3]).
-export([open_counters/1, open_counters/2, close_counters/1,
         inc_counter/2, inc_counter/3, dec_counter/2, dec_counter/3,
         set_counter/3, read_counter/2]).

-export([init_block_storage/2, init_block_storage/3, store_block/2, read_block/2,
         free_block/2, read_blocks/1, read_blocks/3,
         repair_block_storage/1, repair_block_storage/3]).

-export_type([mmap_file/0, open_option/0, counters/0, atomic_op/0, posix_reason/0]).

-on_load(init/0).

-define(H(R), #file_descriptor{module = ?MODULE, data = R}).
-define(U64MAX, 16#FFFFFFFFFFFFFFFF).
-define(I64MIN, -16#8000000000000000).
-define(I64MAX, 16#7FFFFFFFFFFFFFFF).
%% Largest small integer on a 64-bit VM: comparisons against it stay cheap (no bignum
%% compare), so hot-path guards test it first and leave the full range to a slower clause.
-define(SMALL, 16#7FFFFFFFFFFFFFF).
-define(IS_POS(X), is_integer(X), X >= 0, X =< ?SMALL).
%% Writes larger than this run on a dirty I/O scheduler.
-define(DIRTY_WRITE, 65536).
%% Copies larger than this are made on a dirty I/O scheduler (the NIF answers `dirty').
-define(DIRTY_COPY, 65536).
-define(COUNTERS_MAGIC, "EMMAP01\n").

-type mmap_file() :: #file_descriptor{}.
%% A handle returned by `open/2,4'.

-type open_option() ::
        read | write | create | truncate | shared | private | shared_validate | sync
      | direct | lock | nolock | populate | noreserve | nonblock | anon | fixed
      | auto_unlink | hugetlb | huge_2mb | huge_1gb | nocache | uninitialized
      | fixed_size | fit | debug
      | {address, pos_integer()} | {chmod, non_neg_integer()} | {size, non_neg_integer()}
      | {max_inc_size, pos_integer()}.
%% See the README for what each option does.

-type atomic_op() :: add | sub | 'band' | 'bor' | 'bxor' | xchg | 'and' | 'or' | 'xor'.
-type posix_reason() :: closed | einval | eacces | alignment | fixed_size | eexist
                      | enoent | enomem | eisdir | truncated | eio | atom().
-opaque counters() :: {mmap_file(), pos_integer()}.
-type filename() :: file:name_all().
-include("emmap_containers_nif.hrl").  % block storage and queue NIF stubs

%%%===========================================================================
%%% Loading
%%%===========================================================================

%% @private
-spec init() -> ok | {error, term()}.
init() ->
    SoName =
        case code:priv_dir(emmap) of
            {error, bad_name} ->
                Ebin = filename:dirname(code:which(?MODULE)),
                filename:join([filename:dirname(Ebin), "priv", "emmap"]);
            Dir ->
                filename:join(Dir, "emmap")
        end,
    erlang:load_nif(SoName, #{sigbus_handler => sigbus_setting()}).

%% The `sigbus_handler' application environment value: only `false' turns the handler
%% off. Read when the library is loaded, which may happen before the application is (a
%% plain `erl -pa ...' shell, with or without `-config'): then the application is loaded
%% first, which reads `-config' files and `-emmap Key Value' arguments. Without an
%% `emmap.app' in the code path, the command line is looked at directly. (Safe in an
%% on_load function: the reads are ETS lookups, the application controller never waits
%% for this module, and `init' answers requests while on_load functions run.)
sigbus_setting() ->
    Get = fun() -> try application:get_env(emmap, sigbus_handler) catch _:_ -> undefined end end,
    Env = case Get() of
              undefined ->
                  _ = (catch application:load(emmap)),
                  Get();
              Found ->
                  Found
          end,
    case Env of
        {ok, V} -> V =/= false;
        undefined ->
            Args = case init:get_argument(emmap) of
                       {ok, As} -> As;
                       error -> []
                   end,
            lists:foldl(fun(["sigbus_handler", V], _) -> V =/= "false";
                           (_, Acc) -> Acc
                        end, true, Args)
    end.

-define(NIF, erlang:nif_error({not_loaded, ?MODULE, ?LINE})).

open_nif(_Path, _Off, _Len, _Opts) -> ?NIF.
sigbus_nif() -> ?NIF.
handle_nif(_R) -> ?NIF.
close_nif(_R) -> ?NIF.
info_nif(_R) -> ?NIF.
debug_nif(_R) -> ?NIF.
pread_nif(_R, _Pos, _Len) -> ?NIF.
pread_dirty_nif(_R, _Pos, _Len) -> ?NIF.
read_nif(_R, _Len) -> ?NIF.
read_dirty_nif(_R, _Len) -> ?NIF.
read_line_nif(_R) -> ?NIF.
read_line_dirty_nif(_R) -> ?NIF.
pwrite_nif(_R, _Pos, _Bin) -> ?NIF.
pwrite_dirty_nif(_R, _Pos, _Bin) -> ?NIF.
write_nif(_R, _Bin) -> ?NIF.
write_dirty_nif(_R, _Bin) -> ?NIF.
position_nif(_R, _Whence, _Delta) -> ?NIF.
flush_nif(_R) -> ?NIF.
sync_nif(_R, _DataOnly) -> ?NIF.
advise_nif(_R, _Off, _Len, _Advice) -> ?NIF.
resize_nif(_R, _Size) -> ?NIF.
truncate_nif(_R) -> ?NIF.
allocate_nif(_R, _Off, _Len) -> ?NIF.
stat_nif(_R) -> ?NIF.
patomic_nif(_R, _Pos, _Op, _V) -> ?NIF.
patomic_old_nif(_R, _Pos, _Op, _V) -> ?NIF.
patomic_cas_nif(_R, _Pos, _Exp, _New) -> ?NIF.
patomic_read_nif(_R, _Pos) -> ?NIF.
patomic_value_nif(_R, _Pos) -> ?NIF.
patomic_write_nif(_R, _Pos, _V) -> ?NIF.

%%%===========================================================================
%%% Mapping
%%%===========================================================================

%% @doc Maps a whole file (or, for a new file, `{size, N}' bytes of it).
%% Same as `open(File, 0, 0, Options)'.
-spec open(filename(), [open_option()]) -> {ok, mmap_file()} | {error, posix_reason()}.
open(File, Options) ->
    open(File, 0, 0, Options).

%% @doc Maps `Len' bytes of `File' starting at byte `Offset' (which need not be page
%% aligned). `Len = 0' maps the rest of an existing file, or `{size, N}' bytes.
%% A new file needs `create' and a length. With `anon' the file name is ignored.
%% A file that cannot be mapped (a FIFO, a socket, a device, a `/proc' or `/sys' file) is
%% `{error, einval}' at once: opening never waits.
-spec open(filename(), non_neg_integer(), non_neg_integer(), [open_option()]) ->
          {ok, mmap_file()} | {error, posix_reason()}.
open(File, Offset, Len, Options)
  when is_integer(Offset), Offset >= 0, is_integer(Len), Len >= 0, is_list(Options) ->
    _ = length(Options),                        % badarg for an improper list
    Path = case lists:member(anon, Options) of
               true -> <<>>;
               false -> path_to_binary(File)
           end,
    if
        Offset > ?U64MAX; Len > ?U64MAX -> {error, einval};
        true ->
            case open_nif(Path, Offset, Len, Options) of
                {ok, R} ->
                    _ = lists:member(debug, Options) andalso
                        debug_report(open, info(?H(R)), ok,
                                     #{path => File, offset => Offset, length => Len,
                                       options => Options}),
                    {ok, ?H(R)};
                {error, _} = E ->
                    _ = lists:member(debug, Options) andalso
                        debug_report(open, #{}, E, #{path => File, offset => Offset,
                                                     length => Len, options => Options}),
                    E
            end
    end;
open(_, _, _, _) ->
    erlang:error(badarg).

%% A handle opened with `debug' reports what happens to its mapping to the logger: a map
%% report at level notice, from this module (no domain: logger's default handler drops
%% events of domains other than OTP's own).
debug_report(Event, Info, Result, Report) ->
    Keys = [path, offset, size, address, shared, writable, direct, lock, anon, fixed_size],
    ?LOG_NOTICE(maps:merge(maps:with(Keys, Info), Report#{emmap => Event, result => Result})).

path_to_binary(File) when is_binary(File) ->
    %% A copy: the path may be a `direct' binary that another process is changing.
    no_nul(binary:copy(File));
path_to_binary(File) when is_list(File); is_atom(File) ->
    Flat = try filename:flatten(File) catch _:_ -> erlang:error(badarg) end,
    case unicode:characters_to_binary(Flat, unicode, file:native_name_encoding()) of
        Bin when is_binary(Bin) -> no_nul(Bin);
        _ -> erlang:error(badarg)
    end;
path_to_binary(_) ->
    erlang:error(badarg).

no_nul(Bin) ->
    case binary:match(Bin, <<0>>) of
        nomatch -> Bin;
        _ -> erlang:error(badarg)
    end.

%% @doc Closes the handle. Idempotent. The memory is released now, unless `direct'
%% binaries read from it may still exist (then when the last one is garbage-collected) or
%% the handle was opened with `nolock' (then when the handle itself is collected).
-spec close(mmap_file()) -> ok.
close(?H(R)) ->
    case debug_nif(R) of
        false -> close_nif(R);
        true ->
            Before = info(?H(R)),
            Res = close_nif(R),
            debug_report(close, Before, Res, #{}),
            Res
    end;
close(_) -> erlang:error(badarg).

%% @doc Facts about a handle: `size', `exist' (the file existed before `open'), `path',
%% `offset', `direct', `shared', `writable', `lock', `anon', `fixed_size',
%% `max_inc_size', `closed', `address' (of byte 0; 0 once closed) and `lost_from':
%% `undefined', or the offset from which the mapping no longer reaches the file because
%% someone else cut it shorter (calls touching bytes there answer `{error, truncated}' or
%% `{error, eio}'; reopen the file to see it again).
-spec info(mmap_file()) -> #{atom() => term()}.
info(?H(R)) ->
    I = info_nif(R),
    case I of
        #{path := P} when is_binary(P) ->
            case unicode:characters_to_list(P, file:native_name_encoding()) of
                L when is_list(L) -> I#{path := L};
                _ -> I
            end;
        _ -> I
    end;
info(_) -> erlang:error(badarg).

%% @doc Whether emmap's SIGBUS handler is on (`enabled'), and the library file that
%% installed it (`library', `undefined' if none did). With it on, an access to a page of a
%% mapping that another process cut away answers an error instead of killing the VM (see
%% the README, "Truncation by someone else"). The application environment value
%% `sigbus_handler' (`false' turns it off) is applied when the library is loaded.
-spec sigbus_handler() -> #{enabled := boolean(), library := file:filename_all() | undefined}.
sigbus_handler() ->
    sigbus_nif().

%%%===========================================================================
%%% Reading and writing
%%%===========================================================================

%% @doc Reads up to `Len' bytes at `Pos'. Returns fewer bytes at the end of the mapping and
%% `eof' at or past it, or for `Len = 0' (as raw files do). In `direct' mode the binary
%% points into the mapping and shows later writes: it is mutable. A BIF that parses a
%% binary (`binary_to_term/1', `unicode:characters_to_list/2', `binary_to_atom/2', ...)
%% while another process or OS process writes its bytes can return garbage, create a
%% broken atom or crash the VM. Copy it first (`binary:copy/1'), or read through a second
%% handle opened without `direct', when anything may write those bytes meanwhile.
-spec pread(mmap_file(), integer(), non_neg_integer()) ->
          {ok, binary()} | eof | {error, posix_reason()}.
pread(?H(R), Pos, Len) when ?IS_POS(Pos), is_integer(Len), Len >= 0, Len =< ?DIRTY_COPY ->
    pread_nif(R, Pos, Len);                     % never answers `dirty' for such a length
pread(?H(R), Pos, Len)
  when is_integer(Pos), Pos >= 0, Pos =< ?U64MAX, is_integer(Len), Len >= 0 ->
    L = min(Len, ?U64MAX),
    case pread_nif(R, Pos, L) of
        dirty -> pread_dirty_nif(R, Pos, L);
        Res -> Res
    end;
pread(?H(R), Pos, Len) when is_integer(Pos), is_integer(Len), Len >= 0 ->
    true = handle_nif(R),
    if Pos < 0 -> {error, einval};
       true -> eof
    end;
pread(_, _, _) ->
    erlang:error(badarg).

%% @doc Reads several ranges: `{ok, [binary() | eof]}', or the first error.
-spec pread(mmap_file(), [{integer(), non_neg_integer()}]) ->
          {ok, [binary() | eof]} | {error, posix_reason()}.
pread(?H(_) = M, LocNums) when is_list(LocNums) ->
    pread_list(M, LocNums, []);
pread(_, _) ->
    erlang:error(badarg).

pread_list(_M, [], Acc) ->
    {ok, lists:reverse(Acc)};
pread_list(M, [{Pos, Len} | Rest], Acc) ->
    case pread(M, Pos, Len) of
        {ok, Bin} -> pread_list(M, Rest, [Bin | Acc]);
        eof -> pread_list(M, Rest, [eof | Acc]);
        {error, _} = E -> E
    end;
pread_list(_M, _, _) ->
    erlang:error(badarg).

%% @doc Writes `Data' at `Pos': all of it, or nothing and `{error, einval}' if it does not
%% fit in the mapping. Empty `Data' needs no room: `ok' at any position from 0 to
%% 2^63 - 1, past the end too, as for a raw file. A read-only mapping answers
%% `{error, eacces}'.
-spec pwrite(mmap_file(), integer(), iodata()) -> ok | {error, posix_reason()}.
pwrite(?H(R), Pos, Bin) when is_binary(Bin), byte_size(Bin) =< ?DIRTY_WRITE, ?IS_POS(Pos) ->
    pwrite_nif(R, Pos, Bin);
pwrite(?H(R), Pos, Data) when is_integer(Pos) ->
    Bin = to_binary(Data),
    if
        Pos < 0; Pos > ?U64MAX -> true = handle_nif(R), {error, einval};
        byte_size(Bin) > ?DIRTY_WRITE -> pwrite_dirty_nif(R, Pos, Bin);
        true -> pwrite_nif(R, Pos, Bin)
    end;
pwrite(_, _, _) ->
    erlang:error(badarg).

%% @doc Writes several ranges in order: `ok', or `{error, {N, Reason}}' where `N' writes
%% succeeded before the failing one.
-spec pwrite(mmap_file(), [{integer(), iodata()}]) ->
          ok | {error, {non_neg_integer(), posix_reason()}}.
pwrite(?H(_) = M, LocBytes) when is_list(LocBytes) ->
    pwrite_list(M, LocBytes, 0);
pwrite(_, _) ->
    erlang:error(badarg).

pwrite_list(_M, [], _N) ->
    ok;
pwrite_list(M, [{Pos, Data} | Rest], N) ->
    case pwrite(M, Pos, Data) of
        ok -> pwrite_list(M, Rest, N + 1);
        {error, Reason} -> {error, {N, Reason}}
    end;
pwrite_list(_M, _, _) ->
    erlang:error(badarg).

to_binary(Bin) when is_binary(Bin) -> Bin;
to_binary(Data) ->
    try iolist_to_binary(Data) catch _:_ -> erlang:error(badarg) end.

%% @doc Reads up to `Len' bytes at the handle's position and advances it.
%% `Len = 0' gives `{ok, <<>>}'; at or past the end, `eof'.
-spec read(mmap_file(), non_neg_integer()) -> {ok, binary()} | eof | {error, posix_reason()}.
read(?H(R), 0) ->
    case position_nif(R, 1, 0) of
        {ok, _} -> {ok, <<>>};
        E -> E
    end;
read(?H(R), Len) when is_integer(Len), Len > 0 ->
    L = min(Len, ?U64MAX),
    case read_nif(R, L) of
        dirty -> read_dirty_nif(R, L);
        Res -> Res
    end;
read(_, _) ->
    erlang:error(badarg).

%% @doc Reads one line (up to and including `\n') at the handle's position and advances
%% past it. `\r\n' is returned as `\n', as for raw files. The last line may lack `\n'.
-spec read_line(mmap_file()) -> {ok, binary()} | eof | {error, posix_reason()}.
read_line(?H(R)) ->
    case read_line_nif(R) of
        dirty -> read_line_dirty_nif(R);
        Res -> Res
    end;
read_line(_) ->
    erlang:error(badarg).

%% @doc Writes `Data' at the handle's position and advances it past the bytes written.
%% Processes sharing the handle each get a range of their own (the range is reserved with
%% a compare-and-swap of the position). `{error, einval}' if it does not fit, and then the
%% position stays; empty `Data' is `ok' wherever the position is.
-spec write(mmap_file(), iodata()) -> ok | {error, posix_reason()}.
write(?H(R), Data) ->
    Bin = to_binary(Data),
    if
        byte_size(Bin) > ?DIRTY_WRITE -> write_dirty_nif(R, Bin);
        true -> write_nif(R, Bin)
    end;
write(_, _) ->
    erlang:error(badarg).

%% @doc Sets the handle's position, as `file:position/2' does. Positions past the end are
%% allowed (reads there give `eof') up to 2^63 - 1, the largest file offset; a negative
%% one, or one past 2^63 - 1, is `{error, einval}' and the position stays (a raw file
%% answers `{error, badarg}' where `Location' is outside the signed 64-bit range).
-spec position(mmap_file(), Location) -> {ok, non_neg_integer()} | {error, posix_reason()}
      when Location :: integer() | {bof | cur | eof, integer()} | bof | cur | eof.
position(?H(R), Where) ->
    {Whence, Delta} =
        case Where of
            P when is_integer(P) -> {0, P};
            bof -> {0, 0};
            cur -> {1, 0};
            eof -> {2, 0};
            {bof, D} when is_integer(D) -> {0, D};
            {cur, D} when is_integer(D) -> {1, D};
            {eof, D} when is_integer(D) -> {2, D};
            _ -> erlang:error(badarg)
        end,
    if
        Delta < ?I64MIN; Delta > ?I64MAX -> true = handle_nif(R), {error, einval};
        true -> position_nif(R, Whence, Delta)
    end;
position(_, _) ->
    erlang:error(badarg).

%% @doc Asks the OS to write dirty pages back to the file (`msync(MS_ASYNC)'); returns at
%% once. Data already survives a crash of the VM without it: the pages belong to the OS.
-spec flush(mmap_file()) -> ok | {error, posix_reason()}.
flush(?H(R)) -> flush_nif(R);
flush(_) -> erlang:error(badarg).

%% @doc Writes dirty pages and file metadata to disk and waits for it
%% (`msync(MS_SYNC)' + `fsync'): after `ok' the data survives power loss.
%% Runs on a dirty I/O scheduler.
-spec sync(mmap_file()) -> ok | {error, posix_reason()}.
sync(?H(R)) -> sync_nif(R, false);
sync(_) -> erlang:error(badarg).

%% @doc Like `sync/1', but skips metadata that is not needed to read the data back
%% (`fdatasync').
-spec datasync(mmap_file()) -> ok | {error, posix_reason()}.
datasync(?H(R)) -> sync_nif(R, true);
datasync(_) -> erlang:error(badarg).

%% @doc Gives the kernel a hint about how `[Offset, Offset + Length)' will be used
%% (`madvise'); `Length = 0' means to the end. `dont_need' is ignored on private and
%% anonymous mappings, where it would discard data.
-spec advise(mmap_file(), integer(), integer(), Advice) -> ok | {error, posix_reason()}
      when Advice :: normal | sequential | random | no_reuse | will_need | dont_need.
advise(?H(R), Off, Len, Advice) when is_integer(Off), is_integer(Len) ->
    Code = case Advice of
               normal -> 0;
               random -> 1;
               sequential -> 2;
               will_need -> 3;
               dont_need -> 4;
               no_reuse -> 0;
               _ -> erlang:error(badarg)
           end,
    if
        Off < 0; Len < 0; Off > ?U64MAX; Len > ?U64MAX -> true = handle_nif(R), {error, einval};
        true -> advise_nif(R, Off, Len, Code)
    end;
advise(_, _, _, _) ->
    erlang:error(badarg).

%% @doc Makes the mapping end at the handle's position, as `file:truncate/1' makes a file
%% end there. Past the end it grows like `resize/2'. Shrinking keeps the memory mapped
%% (`direct' binaries stay valid; those pointing past the new end see zeros once a shared
%% file is cut) and, for a shared file mapping, cuts the file too. Errors:
%% `{error, fixed_size}' for a `fixed_size' mapping unless the size would not change,
%% `{error, eacces}' when read-only, `{error, ebusy}' while another handle of this VM maps
%% the same file, `{error, einval}' when the file goes on after the mapped window.
-spec truncate(mmap_file()) -> ok | {error, posix_reason()}.
truncate(?H(R)) ->
    case size_change(R, truncate, fun() -> truncate_nif(R) end, #{}) of
        {ok, _} -> ok;
        E -> E
    end;
truncate(_) -> erlang:error(badarg).

%% @doc Makes sure `[Offset, Offset + Length)' is inside the mapping, growing it like
%% `resize/2' if needed, and for a shared file reserves its disk blocks (`fallocate'), so
%% later writes there cannot fail for lack of space. As for files, `Length = 0' or a
%% negative argument is `{error, einval}'; a `fixed_size' mapping that would have to grow
%% answers `{error, fixed_size}'.
-spec allocate(mmap_file(), integer(), integer()) -> ok | {error, posix_reason()}.
allocate(?H(R), Off, Len) when is_integer(Off), is_integer(Len) ->
    if
        Off < 0; Len =< 0; Off > ?U64MAX; Len > ?U64MAX -> true = handle_nif(R), {error, einval};
        true ->
            size_change(R, allocate, fun() -> allocate_nif(R, Off, Len) end,
                        #{offset => Off, length => Len})
    end;
allocate(_, _, _) ->
    erlang:error(badarg).

%% @doc `read_handle_info(Mem, [])'.
-spec read_handle_info(mmap_file()) -> {ok, #file_info{}} | {error, posix_reason()}.
read_handle_info(M) ->
    read_handle_info(M, []).

%% @doc What `file:read_file_info/1,2' answers for the handle: the mapped file's metadata,
%% except that `size' is the size of the mapping (what reads see) and `access' says
%% whether the mapping is writable. Anonymous memory reports `type = other' and zeros for
%% the file fields. `Options' as for `file:read_file_info/2' (`{time, local | universal |
%% posix}').
-spec read_handle_info(mmap_file(), [{time, local | universal | posix}]) ->
          {ok, #file_info{}} | {error, posix_reason()}.
read_handle_info(?H(R) = M, Opts) when is_list(Opts) ->
    TimeType = time_type(Opts),
    case stat_nif(R) of
        {ok, Stat} ->
            #{size := Size, writable := W} = info(M),
            Access = if W -> read_write; true -> read end,
            {ok, file_info(Stat, Size, Access, TimeType)};
        E ->
            E
    end;
read_handle_info(_, _) ->
    erlang:error(badarg).

time_type(Opts) ->
    _ = length(Opts),                           % badarg for an improper list
    case proplists:get_value(time, Opts, local) of
        T when T =:= local; T =:= universal; T =:= posix -> T;
        _ -> erlang:error(badarg)
    end.

file_info(undefined, Size, Access, TimeType) ->
    Now = erlang:system_time(second),
    T = from_posix(Now, TimeType),
    #file_info{size = Size, type = other, access = Access, atime = T, mtime = T, ctime = T,
               mode = 0, links = 0, major_device = 0, minor_device = 0, inode = 0,
               uid = 0, gid = 0};
file_info({{Mode, Links, Dev, Rdev, Ino}, {Uid, Gid, ATime, MTime, CTime}}, Size, Access,
          TimeType) ->
    #file_info{size = Size, type = file_type(Mode), access = Access,
               atime = from_posix(ATime, TimeType), mtime = from_posix(MTime, TimeType),
               ctime = from_posix(CTime, TimeType), mode = Mode, links = Links,
               major_device = Dev, minor_device = Rdev, inode = Ino, uid = Uid, gid = Gid}.

file_type(Mode) ->
    case Mode band 8#170000 of
        8#100000 -> regular;
        8#040000 -> directory;
        8#120000 -> symlink;
        8#020000 -> device;
        8#060000 -> device;
        _ -> other
    end.

from_posix(Secs, posix) ->
    Secs;
from_posix(Secs, universal) ->
    calendar:system_time_to_universal_time(Secs, second);
from_posix(Secs, local) ->
    calendar:system_time_to_local_time(Secs, second).

%% @doc Copies up to `Length' bytes (or all, with `infinity') from `Source''s position to
%% `Dest''s position and advances both, as `file:copy/3' does for two open files (it calls
%% this when both are emmap handles). The bytes must fit in `Dest': otherwise
%% `{error, einval}' and nothing is copied or moved.
-spec copy(mmap_file(), mmap_file(), non_neg_integer() | infinity) ->
          {ok, non_neg_integer()} | {error, posix_reason()}.
copy(?H(S) = Src, ?H(D) = Dst, Length)
  when is_integer(Length), Length >= 0; Length =:= infinity ->
    case {position(Src, cur), maps:get(size, info(Src)), position(Dst, cur)} of
        {{ok, SPos}, SSize, {ok, DPos}} ->
            N = min(Length, max(0, SSize - SPos)),
            %% The same handle reads first, then writes after what it read.
            DEnd = if S =:= D -> DPos + 2 * N; true -> DPos + N end,
            case maps:get(size, info(Dst)) of
                DSize when DEnd =< DSize -> copy_chunks(Src, Dst, N, 0);
                _ when N =:= 0 -> {ok, 0};
                _ -> {error, einval}
            end;
        {{error, _} = E, _, _} -> E;
        {_, _, {error, _} = E} -> E
    end;
copy(_, _, _) ->
    erlang:error(badarg).

-define(COPY_CHUNK, 1048576).

copy_chunks(_Src, _Dst, 0, Done) ->
    {ok, Done};
copy_chunks(Src, Dst, Left, Done) ->
    case read(Src, min(Left, ?COPY_CHUNK)) of
        {ok, Bin} ->
            case write(Dst, Bin) of
                ok -> copy_chunks(Src, Dst, Left - byte_size(Bin), Done + byte_size(Bin));
                {error, _} = E -> E
            end;
        eof -> {ok, Done};
        {error, _} = E -> E
    end.

%% @doc Reads a 32-bit big-endian size and a 32-bit big-endian pointer at `Pos', then
%% `Size' bytes at the pointer: `{ok, {Size, Pointer, Data | eof}}'. `eof' when the
%% header is not all there or `Size > MaxSize'. The indirect read `dets' uses; same
%% answers as for a raw file.
-spec ipread_s32bu_p32bu(mmap_file(), integer(), non_neg_integer() | infinity) ->
          {ok, {non_neg_integer(), non_neg_integer(), binary() | eof}} | eof
          | {error, posix_reason()}.
ipread_s32bu_p32bu(M, Pos, Max) when is_atom(Max) ->
    ipread_s32bu_p32bu(M, Pos, (1 bsl 31) - 1);
ipread_s32bu_p32bu(?H(R) = M, Pos, Max) when is_integer(Pos), is_integer(Max) ->
    if
        Max >= 1 bsl 31 -> true = handle_nif(R), {error, einval};
        true ->
            case pread(M, Pos, 8) of
                {ok, <<Size:32, _:32>>} when Size > Max -> eof;
                {ok, <<0:32, Ptr:32>>} -> {ok, {0, Ptr, eof}};
                {ok, <<Size:32, Ptr:32>>} ->
                    case pread(M, Ptr, Size) of
                        {ok, Data} -> {ok, {Size, Ptr, Data}};
                        eof -> {ok, {Size, Ptr, eof}};
                        {error, _} = E -> E
                    end;
                {ok, _} -> eof;
                Other -> Other
            end
    end;
ipread_s32bu_p32bu(_, _, _) ->
    erlang:error(badarg).

%% @doc Grows the mapping: doubles it while it is below `max_inc_size' (default 64 MiB),
%% else grows it by `max_inc_size'. See `resize/2'.
-spec resize(mmap_file()) -> {ok, pos_integer()} | {error, posix_reason()}.
resize(?H(R)) -> resize_logged(R, 0);
resize(_) -> erlang:error(badarg).

%% @doc Grows the mapping (and a shared file) to `NewSize' bytes. Existing `direct'
%% binaries stay valid. `{error, fixed_size}' for a `fixed_size' mapping,
%% `{error, einval}' for a size below the current one, `{error, eacces}' for a read-only
%% shared file.
-spec resize(mmap_file(), pos_integer()) -> {ok, pos_integer()} | {error, posix_reason()}.
resize(?H(R), NewSize) when is_integer(NewSize), NewSize > 0 ->
    if NewSize > ?U64MAX -> true = handle_nif(R), {error, einval};
       true -> resize_logged(R, NewSize)
    end;
resize(?H(R), NewSize) when is_integer(NewSize) ->
    true = handle_nif(R),
    {error, einval};
resize(_, _) ->
    erlang:error(badarg).

resize_logged(R, Size) ->
    size_change(R, resize, fun() -> resize_nif(R, Size) end, #{requested => Size}).

%% Runs Change(), a call that may change the mapping's size or address; with `debug' it is
%% reported with the size and address before and after.
size_change(R, Event, Change, Report) ->
    case debug_nif(R) of
        false -> Change();
        true ->
            #{size := OldSize, address := OldAddress} = info_nif(R),
            Res = Change(),
            debug_report(Event, info(?H(R)), Res,
                         Report#{old_size => OldSize, old_address => OldAddress}),
            Res
    end.

%%%===========================================================================
%%% Atomics
%%%===========================================================================

%% @doc Atomically applies `Op' with `Value' to the signed 64-bit integer (native byte
%% order) at `Pos' and returns the previous value. Values wrap; `Value' may be given in
%% the unsigned range too. `Pos' must be 8-byte aligned in memory
%% (`{error, alignment}') and `Pos + 8' must fit (`{error, einval}').
-spec patomic(mmap_file(), integer(), atomic_op(), integer()) ->
          {ok, integer()} | {error, posix_reason()}.
patomic(?H(R), Pos, add, V) when ?IS_POS(Pos), is_integer(V), V >= -?SMALL, V =< ?SMALL ->
    patomic_nif(R, Pos, 0, V);
patomic(?H(R), Pos, Op, Value) ->
    atomic(R, Pos, op_code(Op), Value);
patomic(_, _, _, _) ->
    erlang:error(badarg).

op_code(add) -> 0;
op_code(sub) -> 1;
op_code('band') -> 2;
op_code('and') -> 2;
op_code('bor') -> 3;
op_code('or') -> 3;
op_code('bxor') -> 4;
op_code('xor') -> 4;
op_code(xchg) -> 5;
op_code(_) -> erlang:error(badarg).

atomic(R, Pos, Code, V) when ?IS_POS(Pos), is_integer(V), V >= -?SMALL, V =< ?SMALL ->
    patomic_nif(R, Pos, Code, V);
atomic(R, Pos, Code, V) when is_integer(Pos), is_integer(V) ->
    V1 = to_i64(V),
    if Pos < 0; Pos > ?U64MAX -> true = handle_nif(R), {error, einval};
       true -> patomic_nif(R, Pos, Code, V1)
    end;
atomic(_, _, _, _) ->
    erlang:error(badarg).

%% Integers in [-2^63, 2^64) as the signed 64-bit value with the same bits.
to_i64(V) when is_integer(V), V >= ?I64MIN, V =< ?I64MAX -> V;
to_i64(V) when is_integer(V), V > ?I64MAX, V =< ?U64MAX -> V - (1 bsl 64);
to_i64(_) -> erlang:error(badarg).

%% @doc `patomic(Mem, Pos, add, Value)'.
-spec patomic_add(mmap_file(), integer(), integer()) -> {ok, integer()} | {error, posix_reason()}.
patomic_add(?H(R), Pos, V) when ?IS_POS(Pos), is_integer(V), V >= -?SMALL, V =< ?SMALL ->
    patomic_nif(R, Pos, 0, V);
patomic_add(?H(R), Pos, V) -> atomic(R, Pos, 0, V);
patomic_add(_, _, _) -> erlang:error(badarg).

%% @doc `patomic(Mem, Pos, sub, Value)'.
-spec patomic_sub(mmap_file(), integer(), integer()) -> {ok, integer()} | {error, posix_reason()}.
patomic_sub(?H(R), Pos, V) -> atomic(R, Pos, 1, V);
patomic_sub(_, _, _) -> erlang:error(badarg).

%% @doc `patomic(Mem, Pos, '"'"'band'"'"', Value)'.
-spec patomic_and(mmap_file(), integer(), integer()) -> {ok, integer()} | {error, posix_reason()}.
patomic_and(M, Pos, V) -> patomic(M, Pos, 'band', V).

%% @doc `patomic(Mem, Pos, bor, Value)'.
-spec patomic_or(mmap_file(), integer(), integer()) -> {ok, integer()} | {error, posix_reason()}.
patomic_or(M, Pos, V) -> patomic(M, Pos, 'bor', V).

%% @doc `patomic(Mem, Pos, bxor, Value)'.
-spec patomic_xor(mmap_file(), integer(), integer()) -> {ok, integer()} | {error, posix_reason()}.
patomic_xor(M, Pos, V) -> patomic(M, Pos, 'bxor', V).

%% @doc `patomic(Mem, Pos, xchg, Value)': stores `Value', returns the previous one.
-spec patomic_xchg(mmap_file(), integer(), integer()) -> {ok, integer()} | {error, posix_reason()}.
patomic_xchg(M, Pos, V) -> patomic(M, Pos, xchg, V).

%% @doc Compare-and-swap: if the value at `Pos' is `Expected', stores `New' and returns
%% `{true, Expected}'; otherwise returns `{false, Current}'.
-spec patomic_cas(mmap_file(), integer(), integer(), integer()) ->
          {boolean(), integer()} | {error, posix_reason()}.
patomic_cas(?H(R), Pos, E, N)
  when ?IS_POS(Pos), is_integer(E), E >= -?SMALL, E =< ?SMALL, is_integer(N), N >= -?SMALL, N =< ?SMALL ->
    patomic_cas_nif(R, Pos, E, N);
patomic_cas(?H(R), Pos, Expected, New) when is_integer(Pos), is_integer(Expected), is_integer(New) ->
    E = to_i64(Expected),
    N = to_i64(New),
    if Pos < 0; Pos > ?U64MAX -> true = handle_nif(R), {error, einval};
       true -> patomic_cas_nif(R, Pos, E, N)
    end;
patomic_cas(_, _, _, _) ->
    erlang:error(badarg).

%% @doc Atomically loads the signed 64-bit integer at `Pos'.
-spec patomic_read_integer(mmap_file(), integer()) -> {ok, integer()} | {error, posix_reason()}.
patomic_read_integer(?H(R), Pos) when ?IS_POS(Pos) ->
    patomic_read_nif(R, Pos);
patomic_read_integer(?H(R), Pos) when is_integer(Pos) ->
    if Pos < 0; Pos > ?U64MAX -> true = handle_nif(R), {error, einval};
       true -> patomic_read_nif(R, Pos)
    end;
patomic_read_integer(_, _) ->
    erlang:error(badarg).

%% @doc Atomically stores the signed 64-bit integer `Value' at `Pos'.
-spec patomic_write_integer(mmap_file(), integer(), integer()) -> ok | {error, posix_reason()}.
patomic_write_integer(?H(R), Pos, V) when ?IS_POS(Pos), is_integer(V), V >= -?SMALL, V =< ?SMALL ->
    patomic_write_nif(R, Pos, V);
patomic_write_integer(?H(R), Pos, Value) when is_integer(Pos), is_integer(Value) ->
    V = to_i64(Value),
    if Pos < 0; Pos > ?U64MAX -> true = handle_nif(R), {error, einval};
       true -> patomic_write_nif(R, Pos, V)
    end;
patomic_write_integer(_, _, _) ->
    erlang:error(badarg).

%%%===========================================================================
%%% Persistent counters
%%%===========================================================================

%% @doc Opens an existing counters file, with as many counters as its header says.
%% Raises `{emmap_counters, File, Reason}' on failure.
-spec open_counters(filename()) -> counters().
open_counters(File) ->
    open_counters(File, 0).

%% @doc Opens (creating if needed) a file of `N' persistent 64-bit counters, all 0 in a
%% new file. `N = 0' takes the count from an existing file's header. Only a new file, or
%% one of the right size that holds nothing but zeros, is initialised. Raises
%% `{emmap_counters, File, Reason}', changing nothing in the file, for an existing file of
%% another size than `16 + 8 * N' (`size_mismatch'), one whose header is not a counters
%% header or does not describe the file (`bad_header'), or one `open/4' refuses (its
%% reason, such as `enoent').
-spec open_counters(filename(), non_neg_integer()) -> counters().
open_counters(File, N) when is_integer(N), N >= 0, N < (1 bsl 56) ->
    Size = 16 + 8 * N,
    Opts = [read, write, shared, nolock],
    Res = case N of
              0 -> open(File, 0, 0, Opts);
              _ -> open(File, 0, 0, [create, {size, Size} | Opts])
          end,
    M = case Res of
            {ok, M0} -> M0;
            {error, einval} when N > 0 -> counters_fail(File, size_mismatch);
            {error, Why} -> counters_fail(File, Why)
        end,
    #{exist := Existed, size := FileSize} = info(M),
    case counters_setup(M, N, Existed, FileSize, 2) of
        {ok, HN} ->
            {M, HN};
        {error, Why2} ->
            close(M),
            counters_fail(File, Why2)
    end;
open_counters(_, _) ->
    erlang:error(badarg).

-spec counters_fail(filename(), term()) -> no_return().
counters_fail(File, Why) ->
    erlang:error({emmap_counters, File, Why}).

%% `{ok, Count}' for a valid header that describes the file, after initialising a new or
%% all-zero file; else `{error, bad_header}', having written nothing. Another opener may be
%% initialising the same new file: the steps are the same for both (the count, then the
%% magic with a compare-and-swap from 0), so whichever comes second finds the header
%% written or writes the same bytes; Retries bounds the rereads this takes.
counters_setup(M, N, Existed, FileSize, Retries) ->
    <<Magic:64/signed-native>> = <<?COUNTERS_MAGIC>>,
    case counters_header(M, N, Existed, 20) of
        {ok, HN} when HN > 0, FileSize =:= 16 + 8 * HN, HN =:= N orelse N =:= 0 ->
            {ok, HN};
        {zero, HN} when N > 0, HN =:= 0 orelse HN =:= N, Retries > 0 ->
            %% New, or all zeros so far (a magic of 0 and a count of 0 or N: nothing to
            %% lose), or being initialised by another opener right now.
            case not Existed orelse all_zero(M, 16, FileSize) of
                true ->
                    ok = pwrite(M, 8, <<N:64/little>>),
                    _ = patomic_cas(M, 0, 0, Magic),
                    counters_setup(M, N, Existed, FileSize, Retries - 1);
                false ->
                    %% a counter is set: another opener may have just finished
                    counters_setup(M, N, Existed, FileSize, Retries - 1)
            end;
        _ ->
            {error, bad_header}
    end.

%% `{ok, Count}' for a counters header, `{zero, Count}' for a magic that is still 0, else
%% `bad'. An existing file without a magic may be being initialised by another process
%% (the count is written first, then the magic): for `N = 0' (which cannot initialise it),
%% that process is given a few milliseconds to finish.
counters_header(M, N, Existed, Tries) ->
    case pread(M, 0, 16) of
        {ok, <<"EMMAP", _, _, $\n, HN:64/little>>} ->
            {ok, HN};
        {ok, <<0:64, _:64>>} when N =:= 0, Existed, Tries > 0 ->
            timer:sleep(1),
            counters_header(M, N, Existed, Tries - 1);
        {ok, <<0:64, HN:64/little>>} ->
            {zero, HN};
        _ ->
            bad
    end.

%% Whether bytes [Pos, End) of the mapping are all zero (read in chunks of 64 KiB).
all_zero(_M, Pos, End) when Pos >= End ->
    true;
all_zero(M, Pos, End) ->
    Len = min(65536, End - Pos),
    case pread(M, Pos, Len) of
        {ok, Bin} when byte_size(Bin) =:= Len ->
            Bin =:= <<0:(Len * 8)>> andalso all_zero(M, Pos + Len, End);
        _ ->
            false
    end.

%% @doc Closes a counters file. The values are already in the file.
-spec close_counters(counters()) -> ok.
close_counters({?H(_) = M, _}) -> close(M);
close_counters(_) -> erlang:error(badarg).

-define(COUNTER(I, N), is_integer(I), I >= 0, I < N).

%% @doc Adds 1 to counter `I' and returns its previous value.
-spec inc_counter(counters(), non_neg_integer()) -> integer().
inc_counter({?H(R), N}, I) when ?COUNTER(I, N) ->
    counter_result(patomic_old_nif(R, 16 + 8 * I, 0, 1));
inc_counter(_, _) ->
    erlang:error(badarg).

%% @doc Adds `K' to counter `I' and returns its previous value.
-spec inc_counter(counters(), non_neg_integer(), integer()) -> integer().
inc_counter({?H(R), N}, I, K) when ?COUNTER(I, N), is_integer(K), K >= -?SMALL, K =< ?SMALL ->
    counter_result(patomic_old_nif(R, 16 + 8 * I, 0, K));
inc_counter({?H(R), N}, I, K) when ?COUNTER(I, N), is_integer(K) ->
    counter_result(patomic_old_nif(R, 16 + 8 * I, 0, to_i64(K)));
inc_counter(_, _, _) ->
    erlang:error(badarg).

%% @doc Subtracts 1 from counter `I' and returns its previous value.
-spec dec_counter(counters(), non_neg_integer()) -> integer().
dec_counter(C, I) -> dec_counter(C, I, 1).

%% @doc Subtracts `K' from counter `I' and returns its previous value.
-spec dec_counter(counters(), non_neg_integer(), integer()) -> integer().
dec_counter({?H(R), N}, I, K) when ?COUNTER(I, N), is_integer(K) ->
    counter_result(patomic_old_nif(R, 16 + 8 * I, 1, to_i64(K)));
dec_counter(_, _, _) ->
    erlang:error(badarg).

%% @doc Sets counter `I' to `V' and returns its previous value.
-spec set_counter(counters(), non_neg_integer(), integer()) -> integer().
set_counter({?H(R), N}, I, V) when ?COUNTER(I, N), is_integer(V) ->
    counter_result(patomic_old_nif(R, 16 + 8 * I, 5, to_i64(V)));
set_counter(_, _, _) ->
    erlang:error(badarg).

%% @doc The current value of counter `I'.
-spec read_counter(counters(), non_neg_integer()) -> integer().
read_counter({?H(R), N}, I) when ?COUNTER(I, N) ->
    counter_result(patomic_value_nif(R, 16 + 8 * I));
read_counter(_, _) ->
    erlang:error(badarg).

counter_result(V) when is_integer(V) -> V;
counter_result({error, Why}) -> erlang:error(Why).

%%%===========================================================================
%%% Block storage (implemented in emmap_blocks)
%%%===========================================================================

%% @doc Sets up fixed-size block storage (262,144 slots) in the mapping. See
%% `emmap_blocks:init_block_storage/3'.
-spec init_block_storage(mmap_file(), pos_integer()) -> ok | {error, emmap_blocks:block_error()}.
init_block_storage(M, BlockSize) -> emmap_blocks:init_block_storage(M, BlockSize).

%% @doc Sets up block storage with `#{max_blocks => N}' slots; an existing storage of the
%% same geometry is kept.
-spec init_block_storage(mmap_file(), pos_integer(), emmap_blocks:init_options()) ->
          ok | {error, emmap_blocks:block_error()}.
init_block_storage(M, BlockSize, Opts) -> emmap_blocks:init_block_storage(M, BlockSize, Opts).

%% @doc Stores a block (exactly the storage's block size, else `badarg') at the lowest free
%% address and returns it; `{error, full}' when no slot is left.
-spec store_block(mmap_file(), binary()) -> emmap_blocks:addr() | {error, emmap_blocks:block_error()}.
store_block(M, Bin) -> emmap_blocks:store_block(M, Bin).

%% @doc The block at `Addr', or `eof' for a free or unknown address.
-spec read_block(mmap_file(), integer()) -> binary() | eof | {error, emmap_blocks:block_error()}.
read_block(M, Addr) -> emmap_blocks:read_block(M, Addr).

%% @doc Frees the block at `Addr': `true' if there was one, else `false'.
-spec free_block(mmap_file(), integer()) -> boolean() | {error, emmap_blocks:block_error()}.
free_block(M, Addr) -> emmap_blocks:free_block(M, Addr).

%% @doc Every stored block, `[{Addr, Bin}]' in address order.
-spec read_blocks(mmap_file()) -> [{emmap_blocks:addr(), binary()}] | {error, emmap_blocks:block_error()}.
read_blocks(M) -> emmap_blocks:read_blocks(M).

%% @doc Up to `Max' blocks from `Start': `{Blocks, Continuation | eof}'.
-spec read_blocks(mmap_file(), emmap_blocks:continuation() | eof, pos_integer()) ->
          {[{emmap_blocks:addr(), binary()}], emmap_blocks:continuation() | eof}
        | {error, emmap_blocks:block_error()}.
read_blocks(M, Start, Max) -> emmap_blocks:read_blocks(M, Start, Max).

%% @doc Makes the storage's bookkeeping consistent after a crash, keeping every block whose
%% store returned. Not to be run while other processes store or free.
-spec repair_block_storage(mmap_file()) -> ok | {error, emmap_blocks:block_error()}.
repair_block_storage(M) -> emmap_blocks:repair_block_storage(M).

%% @doc One bounded step of `repair_block_storage/1' over up to `Max' slots from `Start'.
-spec repair_block_storage(mmap_file(), emmap_blocks:continuation() | eof, pos_integer()) ->
          emmap_blocks:continuation() | eof | {error, emmap_blocks:block_error()}.
repair_block_storage(M, Start, Max) -> emmap_blocks:repair_block_storage(M, Start, Max).
