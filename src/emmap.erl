%%% @doc Memory-mapped files and shared memory for Erlang.
%%%
%%% `open/2,4' maps a file (or anonymous memory) and returns a handle that the `file' module
%%% understands: `file:pread/3', `file:pwrite/3', `file:read/2', `file:read_line/1',
%%% `file:write/2', `file:position/2', `file:sync/1', `file:truncate/1', `file:allocate/3',
%%% `file:read_file_info/1', `file:copy/3' and `file:close/1' all work on it.
%%% The same operations are exported here, together with 64-bit atomics on the mapping
%%% (`patomic/4' and friends). The persistent counters (`open_counters/2' and friends) are
%%% `emmap_counters'' and block storage (`store_block/2' and friends) `emmap_blocks'':
%%% this module exports them too.
%%%
%%% Errors: arguments of the wrong type raise `error:badarg', and the shell (or
%%% `erl_error:format_exception/3') says which argument is wrong and why; a well-typed
%%% request that cannot be carried out returns `{error, Reason}' and changes nothing. See
%%% the README for the full table of reasons.
%%%
%%% Inside: the NIF library is loaded by `emmap_nif', which holds its stubs. The functions
%%% here match the handle, pass its resource, and leave every integer to the NIF, which
%%% answers `badarg' for a wrong type and the documented error for a value out of range.
-module(emmap).

-include("emmap_internal.hrl").
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

%% A NIF answering a bare value `V' (an integer or a binary, tested by `Is'), made
%% `{ok, V}' here; its other answers (`eof', `{error, Reason}') as they are. Its `badarg'
%% is raised again as `?BADARG(Args)'.
%% (The variables in these macros end in `_' so that they never meet one of the
%% function's own.)
-define(OK(Is, Call, Args),
        try Call of
            OK_ when Is(OK_) -> {ok, OK_};
            Other_ -> Other_
        catch
            error:badarg -> ?BADARG(Args)
        end).

%% A size-changing NIF's answer: the new size as `{ok, Size}'.
-define(SIZED(Call), case Call of Size_ when is_integer(Size_) -> {ok, Size_}; E_ -> E_ end).

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
-type counters() :: emmap_counters:counters().
%% A counters file opened by `open_counters/1,2'.
-type filename() :: file:name_all().

%%%===========================================================================
%%% Mapping
%%%===========================================================================

%% @doc Maps a whole file (or, for a new file, `{size, N}' bytes of it).
%% Same as `open(File, 0, 0, Options)'.
-spec open(filename(), [open_option()]) -> {ok, mmap_file()} | {error, posix_reason()}.
open(File, Options) ->
    try open(File, 0, 0, Options)
    catch error:badarg -> ?BADARG([File, Options])
    end.

%% @doc Maps `Len' bytes of `File' starting at byte `Offset' (which need not be page
%% aligned). `Len = 0' maps the rest of an existing file, or `{size, N}' bytes.
%% A new file needs `create' and a length. With `anon' the file name is ignored.
%% A file that cannot be mapped (a FIFO, a socket, a device, a `/proc' or `/sys' file) is
%% `{error, einval}' at once: opening never waits.
%%
%% `{error, einval}' stands for each of these: `Offset' or `Len' past 2^64 - 1; a length
%% that does not match the file (without `fit'); a new file without a length; a window
%% past the end of the file; a file that cannot be mapped (above); `{address, A}' below
%% `vm.mmap_min_addr'; options that exclude each other (`shared' with `private', two huge
%% page sizes, ...). Wrong types raise `badarg': a negative `Offset' or `Len', an option
%% emmap does not know, an option list that is not a proper list, a path with a NUL byte.
-spec open(filename(), non_neg_integer(), non_neg_integer(), [open_option()]) ->
          {ok, mmap_file()} | {error, posix_reason()}.
open(File, Offset, Len, Options) ->
    try
        Path = case lists:member(anon, Options) of
                   true -> <<>>;
                   false -> path_to_binary(File)
               end,
        emmap_nif:open(Path, Offset, Len, Options)
    of
        R when is_reference(R) ->
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
    catch
        error:badarg -> ?BADARG([File, Offset, Len, Options])
    end.

%% A handle opened with `debug' reports what happens to its mapping to the logger: a map
%% report at level notice, from this module (no domain: logger's default handler drops
%% events of domains other than OTP's own).
debug_report(Event, Info, Result, Report) ->
    Keys = [path, offset, size, address, shared, writable, direct, lock, anon, fixed_size],
    ?LOG_NOTICE(maps:merge(maps:with(Keys, Info), Report#{emmap => Event, result => Result})).

%% The path as the NIF takes it: a binary in the file system's encoding (the NIF copies
%% it before looking at it, and refuses a NUL in it).
path_to_binary(File) when is_binary(File) ->
    File;
path_to_binary(File) when is_list(File); is_atom(File) ->
    Flat = try filename:flatten(File) catch _:_ -> erlang:error(badarg) end,
    case unicode:characters_to_binary(Flat, unicode, file:native_name_encoding()) of
        Bin when is_binary(Bin) -> Bin;
        _ -> erlang:error(badarg)
    end;
path_to_binary(_) ->
    erlang:error(badarg).

%% @doc Closes the handle. Idempotent. The memory is released now, unless `direct'
%% binaries read from it may still exist (then when the last one is garbage-collected) or
%% the handle was opened with `nolock' (then when the handle itself is collected).
-spec close(mmap_file()) -> ok.
close(?H(R) = M) ->
    try emmap_nif:debug(R) of
        false ->
            emmap_nif:close(R);
        true ->
            Before = info(M),
            Res = emmap_nif:close(R),
            debug_report(close, Before, Res, #{}),
            Res
    catch
        error:badarg -> ?BADARG([M])
    end;
close(M) ->
    ?BADARG([M]).

%% @doc Facts about a handle: `size', `exist' (the file existed before `open'), `path',
%% `offset', `direct', `shared', `writable', `lock', `anon', `fixed_size',
%% `max_inc_size', `closed', `address' (of byte 0; 0 once closed) and `lost_from':
%% `undefined', or the offset from which the mapping no longer reaches the file because
%% someone else cut it shorter (calls touching bytes there answer `{error, truncated}' or
%% `{error, eio}'; reopen the file to see it again).
-spec info(mmap_file()) -> #{atom() => term()}.
info(?H(R) = M) ->
    try emmap_nif:info(R) of
        #{path := P} = I when is_binary(P) ->
            case unicode:characters_to_list(P, file:native_name_encoding()) of
                L when is_list(L) -> I#{path := L};
                _ -> I
            end;
        I ->
            I
    catch
        error:badarg -> ?BADARG([M])
    end;
info(M) ->
    ?BADARG([M]).

%% @doc Whether emmap's SIGBUS handler is on (`enabled'), and the library file that
%% installed it (`library', `undefined' if none did). With it on, an access to a page of a
%% mapping that another process cut away answers an error instead of killing the VM (see
%% the README, "Truncation by someone else"). The application environment value
%% `sigbus_handler' (`false' turns it off) is applied when the library is loaded.
-spec sigbus_handler() -> #{enabled := boolean(), library := file:filename_all() | undefined}.
sigbus_handler() ->
    emmap_nif:sigbus().

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
%% A negative `Pos' is `{error, einval}'; a `Pos' past 2^64 - 1 is `eof'; a `Len' past
%% 2^64 - 1 reads to the end.
-spec pread(mmap_file(), integer(), non_neg_integer()) ->
          {ok, binary()} | eof | {error, posix_reason()}.
pread(?H(R), Pos, Len) ->
    %% The NIF answers its `badarg' (with its arguments) rather than raising it: no `try'
    %% frame on this, the hottest call.
    case emmap_nif:pread(R, Pos, Len) of
        Bin when is_binary(Bin) -> {ok, Bin};
        {'$emmap_badarg', R1, Pos1, Len1} -> ?BADARG([?H(R1), Pos1, Len1]);
        Other -> Other
    end;
pread(M, Pos, Len) ->
    ?BADARG([M, Pos, Len]).

%% @doc Reads several ranges: `{ok, [binary() | eof]}', or the first error.
-spec pread(mmap_file(), [{integer(), non_neg_integer()}]) ->
          {ok, [binary() | eof]} | {error, posix_reason()}.
pread(?H(_) = M, LocNums) ->
    try pread_list(M, LocNums, [])
    catch error:badarg -> ?BADARG([M, LocNums])
    end;
pread(M, LocNums) ->
    ?BADARG([M, LocNums]).

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
%% `{error, eacces}'. A `Pos' outside 0..2^64-1 is `{error, einval}' too.
-spec pwrite(mmap_file(), integer(), iodata()) -> ok | {error, posix_reason()}.
pwrite(?H(R), Pos, Data) when is_binary(Data) ->
    %% As in pread/3: the NIF answers its `badarg'.
    case emmap_nif:pwrite(R, Pos, Data) of
        ok -> ok;
        {'$emmap_badarg', R1, Pos1, Data1} -> ?BADARG([?H(R1), Pos1, Data1]);
        Other -> Other
    end;
pwrite(?H(R) = M, Pos, Data) ->
    try emmap_nif:pwrite(R, Pos, iolist_to_binary(Data)) of
        {'$emmap_badarg', _, _, _} -> ?BADARG([M, Pos, Data]);
        Answer -> Answer
    catch
        error:badarg -> ?BADARG([M, Pos, Data])
    end;
pwrite(M, Pos, Data) ->
    ?BADARG([M, Pos, Data]).

%% @doc Writes several ranges in order: `ok', or `{error, {N, Reason}}' where `N' writes
%% succeeded before the failing one.
-spec pwrite(mmap_file(), [{integer(), iodata()}]) ->
          ok | {error, {non_neg_integer(), posix_reason()}}.
pwrite(?H(_) = M, LocBytes) ->
    try pwrite_list(M, LocBytes, 0)
    catch error:badarg -> ?BADARG([M, LocBytes])
    end;
pwrite(M, LocBytes) ->
    ?BADARG([M, LocBytes]).

pwrite_list(_M, [], _N) ->
    ok;
pwrite_list(M, [{Pos, Data} | Rest], N) ->
    case pwrite(M, Pos, Data) of
        ok -> pwrite_list(M, Rest, N + 1);
        {error, Reason} -> {error, {N, Reason}}
    end;
pwrite_list(_M, _, _) ->
    erlang:error(badarg).

%% @doc Reads up to `Len' bytes at the handle's position and advances it.
%% `Len = 0' gives `{ok, <<>>}'; at or past the end, `eof'.
-spec read(mmap_file(), non_neg_integer()) -> {ok, binary()} | eof | {error, posix_reason()}.
read(?H(R) = M, Len) ->
    ?OK(is_binary, emmap_nif:read(R, Len), [M, Len]);
read(M, Len) ->
    ?BADARG([M, Len]).

%% @doc Reads one line (up to and including `\n') at the handle's position and advances
%% past it. `\r\n' is returned as `\n', as for raw files. The last line may lack `\n'.
-spec read_line(mmap_file()) -> {ok, binary()} | eof | {error, posix_reason()}.
read_line(?H(R) = M) ->
    ?OK(is_binary, emmap_nif:read_line(R), [M]);
read_line(M) ->
    ?BADARG([M]).

%% @doc Writes `Data' at the handle's position and advances it past the bytes written.
%% Processes sharing the handle each get a range of their own (the range is reserved with
%% a compare-and-swap of the position). `{error, einval}' if it does not fit, and then the
%% position stays; empty `Data' is `ok' wherever the position is.
-spec write(mmap_file(), iodata()) -> ok | {error, posix_reason()}.
write(?H(R) = M, Data) when is_binary(Data) ->
    ?NIF_CALL(emmap_nif:write(R, Data), [M, Data]);
write(?H(R) = M, Data) ->
    ?NIF_CALL(emmap_nif:write(R, iolist_to_binary(Data)), [M, Data]);
write(M, Data) ->
    ?BADARG([M, Data]).

%% @doc Sets the handle's position, as `file:position/2' does. Positions past the end are
%% allowed (reads there give `eof') up to 2^63 - 1, the largest file offset; a negative
%% one, or one past 2^63 - 1, is `{error, einval}' and the position stays (a raw file
%% answers `{error, badarg}' where `Location' is outside the signed 64-bit range).
-spec position(mmap_file(), Location) -> {ok, non_neg_integer()} | {error, posix_reason()}
      when Location :: integer() | {bof | cur | eof, integer()} | bof | cur | eof.
position(?H(R) = M, Location) ->
    ?OK(is_integer, emmap_nif:position(R, Location), [M, Location]);
position(M, Location) ->
    ?BADARG([M, Location]).

%% @doc Asks the OS to write dirty pages back to the file (`msync(MS_ASYNC)'); returns at
%% once. Data already survives a crash of the VM without it: the pages belong to the OS.
-spec flush(mmap_file()) -> ok | {error, posix_reason()}.
flush(?H(R) = M) -> ?NIF_CALL(emmap_nif:flush(R), [M]);
flush(M) -> ?BADARG([M]).

%% @doc Writes dirty pages and file metadata to disk and waits for it
%% (`msync(MS_SYNC)' + `fsync'): after `ok' the data survives power loss.
%% Runs on a dirty I/O scheduler.
-spec sync(mmap_file()) -> ok | {error, posix_reason()}.
sync(?H(R) = M) -> ?NIF_CALL(emmap_nif:sync(R, false), [M]);
sync(M) -> ?BADARG([M]).

%% @doc Like `sync/1', but skips metadata that is not needed to read the data back
%% (`fdatasync').
-spec datasync(mmap_file()) -> ok | {error, posix_reason()}.
datasync(?H(R) = M) -> ?NIF_CALL(emmap_nif:sync(R, true), [M]);
datasync(M) -> ?BADARG([M]).

%% @doc Gives the kernel a hint about how `[Offset, Offset + Length)' will be used
%% (`madvise'); `Length = 0' means to the end. `dont_need' is ignored on private and
%% anonymous mappings, where it would discard data. An `Offset' or `Length' outside
%% 0..2^64-1 is `{error, einval}'; a range past the end of the mapping is about nothing
%% there (`ok', as for files).
-spec advise(mmap_file(), integer(), integer(), Advice) -> ok | {error, posix_reason()}
      when Advice :: normal | sequential | random | no_reuse | will_need | dont_need.
advise(?H(R) = M, Off, Len, Advice) ->
    ?NIF_CALL(emmap_nif:advise(R, Off, Len, Advice), [M, Off, Len, Advice]);
advise(M, Off, Len, Advice) ->
    ?BADARG([M, Off, Len, Advice]).

%% @doc Makes the mapping end at the handle's position, as `file:truncate/1' makes a file
%% end there. Past the end it grows like `resize/2'. Shrinking keeps the memory mapped
%% (`direct' binaries stay valid; those pointing past the new end see zeros once a shared
%% file is cut) and, for a shared file mapping, cuts the file too. Errors:
%% `{error, fixed_size}' for a `fixed_size' mapping unless the size would not change,
%% `{error, eacces}' when read-only, `{error, ebusy}' while another handle of this VM maps
%% the same file, `{error, einval}' when the file goes on after the mapped window.
-spec truncate(mmap_file()) -> ok | {error, posix_reason()}.
truncate(?H(R) = M) ->
    try size_change(R, truncate, fun() -> ?SIZED(emmap_nif:truncate(R)) end, #{}) of
        {ok, _} -> ok;
        E -> E
    catch
        error:badarg -> ?BADARG([M])
    end;
truncate(M) ->
    ?BADARG([M]).

%% @doc Makes sure `[Offset, Offset + Length)' is inside the mapping, growing it like
%% `resize/2' if needed, and for a shared file reserves its disk blocks (`fallocate'), so
%% later writes there cannot fail for lack of space. As for files, `Length = 0' or a
%% negative argument is `{error, einval}' (so is one past 2^64 - 1, or a range whose end
%% is); a `fixed_size' mapping that would have to grow answers `{error, fixed_size}'.
-spec allocate(mmap_file(), integer(), integer()) -> ok | {error, posix_reason()}.
allocate(?H(R) = M, Off, Len) ->
    try size_change(R, allocate, fun() -> emmap_nif:allocate(R, Off, Len) end,
                    #{offset => Off, length => Len})
    catch error:badarg -> ?BADARG([M, Off, Len])
    end;
allocate(M, Off, Len) ->
    ?BADARG([M, Off, Len]).

%% @doc `read_handle_info(Mem, [])'.
-spec read_handle_info(mmap_file()) -> {ok, #file_info{}} | {error, posix_reason()}.
read_handle_info(M) ->
    try read_handle_info(M, [])
    catch error:badarg -> ?BADARG([M])
    end.

%% @doc What `file:read_file_info/1,2' answers for the handle: the mapped file's metadata,
%% except that `size' is the size of the mapping (what reads see) and `access' says
%% whether the mapping is writable. Anonymous memory reports `type = other' and zeros for
%% the file fields. `Options' as for `file:read_file_info/2' (`{time, local | universal |
%% posix}').
-spec read_handle_info(mmap_file(), [{time, local | universal | posix}]) ->
          {ok, #file_info{}} | {error, posix_reason()}.
read_handle_info(?H(R) = M, Opts) ->
    try {time_type(Opts), emmap_nif:stat(R)} of
        {_, {error, _} = E} ->
            E;
        {TimeType, Stat} ->
            #{size := Size, writable := W} = info(M),
            Access = if W -> read_write; true -> read end,
            {ok, file_info(Stat, Size, Access, TimeType)}
    catch
        error:badarg -> ?BADARG([M, Opts])
    end;
read_handle_info(M, Opts) ->
    ?BADARG([M, Opts]).

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
file_info({Mode, Links, Dev, Rdev, Ino, Uid, Gid, ATime, MTime, CTime}, Size, Access,
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
copy(Src, Dst, Length) ->
    try copy_checked(Src, Dst, Length)
    catch error:badarg -> ?BADARG([Src, Dst, Length])
    end.

copy_checked(?H(S) = Src, ?H(D) = Dst, Length)
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
copy_checked(_, _, _) ->
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
%% answers as for a raw file. A `MaxSize' at or past 2^31 is `{error, einval}'; an atom
%% (`infinity') means 2^31 - 1.
-spec ipread_s32bu_p32bu(mmap_file(), integer(), non_neg_integer() | infinity) ->
          {ok, {non_neg_integer(), non_neg_integer(), binary() | eof}} | eof
          | {error, posix_reason()}.
ipread_s32bu_p32bu(?H(R) = M, Pos, Max) ->
    Max1 = if is_atom(Max) -> (1 bsl 31) - 1; true -> Max end,
    try emmap_nif:ipread(R, Pos, Max1) of
        {_, _, _} = Found -> {ok, Found};
        Other -> Other
    catch
        error:badarg -> ?BADARG([M, Pos, Max])
    end;
ipread_s32bu_p32bu(M, Pos, Max) ->
    ?BADARG([M, Pos, Max]).

%% @doc Grows the mapping: doubles it while it is below `max_inc_size' (default 64 MiB),
%% else grows it by `max_inc_size'. See `resize/2'.
-spec resize(mmap_file()) -> {ok, pos_integer()} | {error, posix_reason()}.
resize(?H(R) = M) ->
    try size_change(R, resize, fun() -> ?SIZED(emmap_nif:resize(R, grow)) end,
                    #{requested => 0})
    catch error:badarg -> ?BADARG([M])
    end;
resize(M) ->
    ?BADARG([M]).

%% @doc Grows the mapping (and a shared file) to `NewSize' bytes. Existing `direct'
%% binaries stay valid. `{error, fixed_size}' for a `fixed_size' mapping,
%% `{error, einval}' for a size below the current one (0 and negative sizes included) or
%% past 2^64 - 1, `{error, eacces}' for a read-only shared file.
-spec resize(mmap_file(), pos_integer()) -> {ok, pos_integer()} | {error, posix_reason()}.
resize(?H(R) = M, NewSize) when is_integer(NewSize) ->
    try size_change(R, resize, fun() -> ?SIZED(emmap_nif:resize(R, NewSize)) end,
                    #{requested => NewSize})
    catch error:badarg -> ?BADARG([M, NewSize])
    end;
resize(M, NewSize) ->
    ?BADARG([M, NewSize]).

%% Runs Change(), a call that may change the mapping's size or address; with `debug' it is
%% reported with the size and address before and after.
size_change(R, Event, Change, Report) ->
    case emmap_nif:debug(R) of
        false -> Change();
        true ->
            #{size := OldSize, address := OldAddress} = emmap_nif:info(R),
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
%% (`{error, alignment}') and `Pos + 8' must fit (`{error, einval}', also for a negative
%% `Pos'). A `Value' outside `[-2^63, 2^64)' raises `badarg'.
-spec patomic(mmap_file(), integer(), atomic_op(), integer()) ->
          {ok, integer()} | {error, posix_reason()}.
%% `add' is tested on its own, first: in one search with the other operations (which the
%% VM orders by atom number) it came sixth.
patomic(M, Pos, add, V) ->
    case M of
        ?H(R) ->
            %% As in pread/3: the NIF answers its `badarg'.
            case emmap_nif:atomic_add(R, Pos, V) of
                Old when is_integer(Old) -> {ok, Old};
                {'$emmap_badarg', R1, Pos1, V1} -> ?BADARG([?H(R1), Pos1, add, V1]);
                Other -> Other
            end;
        _ -> ?BADARG([M, Pos, add, V])
    end;
patomic(M, Pos, Op, V) ->
    case M of
        ?H(R) ->
            case Op of
                sub -> ?OK(is_integer, emmap_nif:atomic_sub(R, Pos, V), [M, Pos, sub, V]);
                'band' -> ?OK(is_integer, emmap_nif:atomic_and(R, Pos, V), [M, Pos, 'band', V]);
                'bor' -> ?OK(is_integer, emmap_nif:atomic_or(R, Pos, V), [M, Pos, 'bor', V]);
                'bxor' -> ?OK(is_integer, emmap_nif:atomic_xor(R, Pos, V), [M, Pos, 'bxor', V]);
                xchg -> ?OK(is_integer, emmap_nif:atomic_xchg(R, Pos, V), [M, Pos, xchg, V]);
                'and' -> ?OK(is_integer, emmap_nif:atomic_and(R, Pos, V), [M, Pos, 'and', V]);
                'or' -> ?OK(is_integer, emmap_nif:atomic_or(R, Pos, V), [M, Pos, 'or', V]);
                'xor' -> ?OK(is_integer, emmap_nif:atomic_xor(R, Pos, V), [M, Pos, 'xor', V]);
                _ -> ?BADARG([M, Pos, Op, V])
            end;
        _ ->
            ?BADARG([M, Pos, Op, V])
    end.

%% @doc `patomic(Mem, Pos, add, Value)'.
-spec patomic_add(mmap_file(), integer(), integer()) -> {ok, integer()} | {error, posix_reason()}.
patomic_add(?H(R), Pos, V) ->
    case emmap_nif:atomic_add(R, Pos, V) of
        Old when is_integer(Old) -> {ok, Old};
        {'$emmap_badarg', R1, Pos1, V1} -> ?BADARG([?H(R1), Pos1, V1]);
        Other -> Other
    end;
patomic_add(M, Pos, V) ->
    ?BADARG([M, Pos, V]).

%% @doc `patomic(Mem, Pos, sub, Value)'.
-spec patomic_sub(mmap_file(), integer(), integer()) -> {ok, integer()} | {error, posix_reason()}.
patomic_sub(?H(R) = M, Pos, V) ->
    ?OK(is_integer, emmap_nif:atomic_sub(R, Pos, V), [M, Pos, V]);
patomic_sub(M, Pos, V) ->
    ?BADARG([M, Pos, V]).

%% @doc `patomic(Mem, Pos, '"'"'band'"'"', Value)'.
-spec patomic_and(mmap_file(), integer(), integer()) -> {ok, integer()} | {error, posix_reason()}.
patomic_and(?H(R) = M, Pos, V) ->
    ?OK(is_integer, emmap_nif:atomic_and(R, Pos, V), [M, Pos, V]);
patomic_and(M, Pos, V) ->
    ?BADARG([M, Pos, V]).

%% @doc `patomic(Mem, Pos, bor, Value)'.
-spec patomic_or(mmap_file(), integer(), integer()) -> {ok, integer()} | {error, posix_reason()}.
patomic_or(?H(R) = M, Pos, V) ->
    ?OK(is_integer, emmap_nif:atomic_or(R, Pos, V), [M, Pos, V]);
patomic_or(M, Pos, V) ->
    ?BADARG([M, Pos, V]).

%% @doc `patomic(Mem, Pos, bxor, Value)'.
-spec patomic_xor(mmap_file(), integer(), integer()) -> {ok, integer()} | {error, posix_reason()}.
patomic_xor(?H(R) = M, Pos, V) ->
    ?OK(is_integer, emmap_nif:atomic_xor(R, Pos, V), [M, Pos, V]);
patomic_xor(M, Pos, V) ->
    ?BADARG([M, Pos, V]).

%% @doc `patomic(Mem, Pos, xchg, Value)': stores `Value', returns the previous one.
-spec patomic_xchg(mmap_file(), integer(), integer()) -> {ok, integer()} | {error, posix_reason()}.
patomic_xchg(?H(R) = M, Pos, V) ->
    ?OK(is_integer, emmap_nif:atomic_xchg(R, Pos, V), [M, Pos, V]);
patomic_xchg(M, Pos, V) ->
    ?BADARG([M, Pos, V]).

%% @doc Compare-and-swap: if the value at `Pos' is `Expected', stores `New' and returns
%% `{true, Expected}'; otherwise returns `{false, Current}'.
-spec patomic_cas(mmap_file(), integer(), integer(), integer()) ->
          {boolean(), integer()} | {error, posix_reason()}.
patomic_cas(?H(R) = M, Pos, Expected, New) ->
    ?NIF_CALL(emmap_nif:atomic_cas(R, Pos, Expected, New), [M, Pos, Expected, New]);
patomic_cas(M, Pos, Expected, New) ->
    ?BADARG([M, Pos, Expected, New]).

%% @doc Atomically loads the signed 64-bit integer at `Pos'.
-spec patomic_read_integer(mmap_file(), integer()) -> {ok, integer()} | {error, posix_reason()}.
patomic_read_integer(?H(R) = M, Pos) ->
    ?OK(is_integer, emmap_nif:atomic_load(R, Pos), [M, Pos]);
patomic_read_integer(M, Pos) ->
    ?BADARG([M, Pos]).

%% @doc Atomically stores the signed 64-bit integer `Value' at `Pos'.
-spec patomic_write_integer(mmap_file(), integer(), integer()) -> ok | {error, posix_reason()}.
patomic_write_integer(?H(R) = M, Pos, V) ->
    ?NIF_CALL(emmap_nif:atomic_store(R, Pos, V), [M, Pos, V]);
patomic_write_integer(M, Pos, V) ->
    ?BADARG([M, Pos, V]).

%%%===========================================================================
%%% Persistent counters (implemented in emmap_counters)
%%%===========================================================================

%% @doc Opens an existing counters file, with as many counters as its header says.
%% Raises `{emmap_counters, File, Reason}' on failure.
-spec open_counters(filename()) -> counters().
open_counters(File) -> emmap_counters:open_counters(File).

%% @doc Opens (creating if needed) a file of `N' persistent 64-bit counters, all 0 in a
%% new file. `N = 0' takes the count from an existing file's header. Raises
%% `{emmap_counters, File, Reason}' on failure. See `emmap_counters:open_counters/2'.
-spec open_counters(filename(), non_neg_integer()) -> counters().
open_counters(File, N) -> emmap_counters:open_counters(File, N).

%% @doc Closes a counters file. The values are already in the file.
-spec close_counters(counters()) -> ok.
close_counters(C) -> emmap_counters:close_counters(C).

%% @doc Adds 1 to counter `I' and returns its previous value.
-spec inc_counter(counters(), non_neg_integer()) -> integer().
inc_counter(C, I) -> emmap_counters:inc_counter(C, I).

%% @doc Adds `K' to counter `I' and returns its previous value.
-spec inc_counter(counters(), non_neg_integer(), integer()) -> integer().
inc_counter(C, I, K) -> emmap_counters:inc_counter(C, I, K).

%% @doc Subtracts 1 from counter `I' and returns its previous value.
-spec dec_counter(counters(), non_neg_integer()) -> integer().
dec_counter(C, I) -> emmap_counters:dec_counter(C, I).

%% @doc Subtracts `K' from counter `I' and returns its previous value.
-spec dec_counter(counters(), non_neg_integer(), integer()) -> integer().
dec_counter(C, I, K) -> emmap_counters:dec_counter(C, I, K).

%% @doc Sets counter `I' to `V' and returns its previous value.
-spec set_counter(counters(), non_neg_integer(), integer()) -> integer().
set_counter(C, I, V) -> emmap_counters:set_counter(C, I, V).

%% @doc The current value of counter `I'.
-spec read_counter(counters(), non_neg_integer()) -> integer().
read_counter(C, I) -> emmap_counters:read_counter(C, I).

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
