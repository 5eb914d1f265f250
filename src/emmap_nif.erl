%%% @private
%%% @doc The NIF library's module: loads `priv/emmap.so' and holds a stub for each of its
%%% NIFs (native/emmap_nif/src/entry.rs lists them). Internal: `emmap', `emmap_counters',
%%% `emmap_blocks' and `emmap_queue' call these functions; nothing else should.
%%%
%%% The NIFs take the resource inside a handle (`R' in `#file_descriptor{module = emmap,
%%% data = R}'), never the handle itself. Each decodes its handle first and its integers
%%% itself: a wrong type raises `badarg' (the calling function raises it again with an
%%% explanation, see `emmap_errors'; the hottest, `pread', `pwrite', `atomic_add' and
%%% `counter_add', answer ``{'$emmap_badarg', Arg1, ..., ArgN}'' instead, so that their
%%% callers need no `try'), an integer out of range answers the documented
%%% `{error, Reason}'. Answers are bare (`Bin', `Old', `ok', `eof', `{error, Reason}'); the
%%% calling function builds `{ok, V}' where the API has it. Each NIF decides itself
%%% whether it runs on the caller's scheduler or moves to a dirty I/O one
%%% (native/emmap_nif/src/schedule.rs); the queue's run under the handle's queue lock.
%%%
%%% Reloading this module (any of the ways the VM offers) keeps every handle working: see
%%% native/emmap_nif/src/resource.rs.
-module(emmap_nif).

%% a handle's life
-export([open/4, close/1, info/1, debug/1, sigbus/0, stat/1, flush/1, sync/2, advise/4,
         resize/2, truncate/1, allocate/3]).
%% reads and writes
-export([pread/3, pwrite/3, read/2, read_line/1, write/2, position/2, ipread/3]).
%% atomics
-export([atomic_add/3, atomic_sub/3, atomic_and/3, atomic_or/3, atomic_xor/3,
         atomic_xchg/3, atomic_cas/4, atomic_load/2, atomic_store/3, counter_add/3]).
%% block storage
-export([block_init/3, block_store/2, block_read/2, block_free/2, block_chunk/3,
         block_repair/3]).
%% the queue
-export([queue_attach/1, queue_push/2, queue_pop/2, queue_peek/2, queue_front/1,
         queue_advance/4, queue_header/2, queue_frame/4, queue_count/3, queue_purge/1,
         queue_erase/1]).

-export_type([resource/0, error/0]).

-on_load(init/0).

-type resource() :: reference().
%% The resource inside an emmap handle.
-type error() :: {error, atom()}.

%%%===========================================================================
%%% Loading
%%%===========================================================================

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

%%%===========================================================================
%%% A handle's life
%%%===========================================================================

%% @doc NIF: maps `Path' (a binary, empty for `anon') and answers the new handle's
%% resource.
-spec open(binary(), non_neg_integer(), non_neg_integer(), [emmap:open_option()]) ->
          resource() | error().
open(_Path, _Offset, _Len, _Options) -> ?NIF.

%% @doc NIF: closes the handle.
-spec close(resource()) -> ok.
close(_R) -> ?NIF.

%% @doc NIF: `emmap:info/1''s map, with the path as a binary.
-spec info(resource()) -> #{atom() => term()}.
info(_R) -> ?NIF.

%% @doc NIF: whether the handle was opened with `debug'.
-spec debug(resource()) -> boolean().
debug(_R) -> ?NIF.

%% @doc NIF: the SIGBUS handler's state.
-spec sigbus() -> #{enabled := boolean(), library := binary() | undefined}.
sigbus() -> ?NIF.

%% @doc NIF: the mapped file's `{Mode, Links, Dev, Rdev, Inode, Uid, Gid, Atime, Mtime,
%% Ctime}', or `undefined' for anonymous memory.
-spec stat(resource()) -> tuple() | undefined | error().
stat(_R) -> ?NIF.

%% @doc NIF: schedules write-back of the dirty pages.
-spec flush(resource()) -> ok | error().
flush(_R) -> ?NIF.

%% @doc NIF: writes the dirty pages (and the metadata, unless `DataOnly') to disk.
-spec sync(resource(), boolean()) -> ok | error().
sync(_R, _DataOnly) -> ?NIF.

%% @doc NIF: `madvise'.
-spec advise(resource(), integer(), integer(), atom()) -> ok | error().
advise(_R, _Offset, _Length, _Advice) -> ?NIF.

%% @doc NIF: grows the mapping to `Size' bytes, or by its growth rule (`grow'); answers
%% the new size.
-spec resize(resource(), integer() | grow) -> pos_integer() | error().
resize(_R, _Size) -> ?NIF.

%% @doc NIF: makes the mapping end at the handle's position; answers the new size.
-spec truncate(resource()) -> non_neg_integer() | error().
truncate(_R) -> ?NIF.

%% @doc NIF: makes sure `[Offset, Offset + Length)' is mapped and has disk blocks.
-spec allocate(resource(), integer(), integer()) -> ok | error().
allocate(_R, _Offset, _Length) -> ?NIF.

%%%===========================================================================
%%% Reads and writes
%%%===========================================================================

%% @doc NIF: up to `Len' bytes at `Pos'. Answers its `badarg' as ``{'$emmap_badarg', R,
%% Pos, Len}'' (`emmap:pread/3' raises it).
-spec pread(resource(), integer(), integer()) ->
          binary() | eof | error() | {'$emmap_badarg', term(), term(), term()}.
pread(_R, _Pos, _Len) -> ?NIF.

%% @doc NIF: writes `Bin' at `Pos'. Answers its `badarg' as ``{'$emmap_badarg', R, Pos,
%% Bin}'' (`emmap:pwrite/3' raises it).
-spec pwrite(resource(), integer(), binary()) ->
          ok | error() | {'$emmap_badarg', term(), term(), term()}.
pwrite(_R, _Pos, _Bin) -> ?NIF.

%% @doc NIF: up to `Len' bytes at the handle's position, which moves past them.
-spec read(resource(), integer()) -> binary() | eof | error().
read(_R, _Len) -> ?NIF.

%% @doc NIF: the line at the handle's position, which moves past it.
-spec read_line(resource()) -> binary() | eof | error().
read_line(_R) -> ?NIF.

%% @doc NIF: writes `Bin' at the handle's position, which moves past it.
-spec write(resource(), binary()) -> ok | error().
write(_R, _Bin) -> ?NIF.

%% @doc NIF: moves the handle's position; answers the new one.
-spec position(resource(), term()) -> non_neg_integer() | error().
position(_R, _Location) -> ?NIF.

%% @doc NIF: the indirect read of `emmap:ipread_s32bu_p32bu/3'.
-spec ipread(resource(), integer(), integer()) ->
          {non_neg_integer(), non_neg_integer(), binary() | eof} | eof | error().
ipread(_R, _Pos, _Max) -> ?NIF.

%%%===========================================================================
%%% Atomics: the old value
%%%===========================================================================

%% @doc NIF: atomic add; the old value. Answers its `badarg' as ``{'$emmap_badarg', R,
%% Pos, V}'' (its callers raise it).
-spec atomic_add(resource(), integer(), integer()) ->
          integer() | error() | {'$emmap_badarg', term(), term(), term()}.
atomic_add(_R, _Pos, _V) -> ?NIF.

%% @doc NIF: atomic add on counter `I' of a counters file (offset `16 + 8 * I'); the old
%% value. Answers its `badarg' as ``{'$emmap_badarg', R, I, K}'' (its callers raise it).
-spec counter_add(resource(), integer(), integer()) ->
          integer() | error() | {'$emmap_badarg', term(), term(), term()}.
counter_add(_R, _I, _K) -> ?NIF.

%% @doc NIF: atomic subtract; the old value.
-spec atomic_sub(resource(), integer(), integer()) -> integer() | error().
atomic_sub(_R, _Pos, _V) -> ?NIF.

%% @doc NIF: atomic bitwise and; the old value.
-spec atomic_and(resource(), integer(), integer()) -> integer() | error().
atomic_and(_R, _Pos, _V) -> ?NIF.

%% @doc NIF: atomic bitwise or; the old value.
-spec atomic_or(resource(), integer(), integer()) -> integer() | error().
atomic_or(_R, _Pos, _V) -> ?NIF.

%% @doc NIF: atomic bitwise exclusive or; the old value.
-spec atomic_xor(resource(), integer(), integer()) -> integer() | error().
atomic_xor(_R, _Pos, _V) -> ?NIF.

%% @doc NIF: atomic exchange; the old value.
-spec atomic_xchg(resource(), integer(), integer()) -> integer() | error().
atomic_xchg(_R, _Pos, _V) -> ?NIF.

%% @doc NIF: compare-and-swap.
-spec atomic_cas(resource(), integer(), integer(), integer()) ->
          {boolean(), integer()} | error().
atomic_cas(_R, _Pos, _Expected, _New) -> ?NIF.

%% @doc NIF: atomic load.
-spec atomic_load(resource(), integer()) -> integer() | error().
atomic_load(_R, _Pos) -> ?NIF.

%% @doc NIF: atomic store.
-spec atomic_store(resource(), integer(), integer()) -> ok | error().
atomic_store(_R, _Pos, _V) -> ?NIF.

%%%===========================================================================
%%% Block storage (emmap_blocks)
%%%===========================================================================

%% @doc NIF: sets up block storage (`MaxBlocks = 0': the default capacity).
-spec block_init(resource(), integer(), integer()) -> ok | error().
block_init(_R, _BlockSize, _MaxBlocks) -> ?NIF.

%% @doc NIF: stores a block; its address.
-spec block_store(resource(), binary()) -> non_neg_integer() | error().
block_store(_R, _Bin) -> ?NIF.

%% @doc NIF: the block at `Addr'.
-spec block_read(resource(), integer()) -> binary() | eof | error().
block_read(_R, _Addr) -> ?NIF.

%% @doc NIF: frees the block at `Addr'.
-spec block_free(resource(), integer()) -> boolean() | error().
block_free(_R, _Addr) -> ?NIF.

%% @doc NIF: one bounded step of `emmap_blocks:read_blocks/1,3'.
-spec block_chunk(resource(), non_neg_integer(), pos_integer()) ->
          {[{non_neg_integer(), binary()}], non_neg_integer() | eof} | error().
block_chunk(_R, _Start, _Max) -> ?NIF.

%% @doc NIF: one bounded step of `emmap_blocks:repair_block_storage/1,3'.
-spec block_repair(resource(), non_neg_integer(), pos_integer()) ->
          non_neg_integer() | eof | error().
block_repair(_R, _Start, _Max) -> ?NIF.

%%%===========================================================================
%%% The queue (emmap_queue)
%%%===========================================================================

%% @doc NIF: checks, repairs or initialises the header of a queue file just opened.
-spec queue_attach(resource()) -> ok | error().
queue_attach(_R) -> ?NIF.

%% @doc NIF: appends the encoded term `Bin'.
-spec queue_push(resource(), binary()) -> ok | error().
queue_push(_R, _Bin) -> ?NIF.

%% @doc NIF: removes and returns the oldest term.
-spec queue_pop(resource(), boolean()) ->
          {ok, term()} | {compressed, binary(), non_neg_integer(), non_neg_integer()}
        | nil | error().
queue_pop(_R, _Purge) -> ?NIF.

%% @doc NIF: the oldest or newest term, left in the queue.
-spec queue_peek(resource(), boolean()) ->
          {ok, term()} | {compressed, binary(), non_neg_integer(), non_neg_integer()}
        | nil | error().
queue_peek(_R, _Back) -> ?NIF.

%% @doc NIF: the oldest term and where it lies.
-spec queue_front(resource()) ->
          {ok, term(), non_neg_integer(), non_neg_integer()}
        | {compressed, binary(), non_neg_integer(), non_neg_integer()}
        | nil | error().
queue_front(_R) -> ?NIF.

%% @doc NIF: removes the message at `Head' if it is still the oldest.
-spec queue_advance(resource(), non_neg_integer(), non_neg_integer(), boolean()) ->
          ok | moved | error().
queue_advance(_R, _Head, _Next, _Purge) -> ?NIF.

%% @doc NIF: the header `{Size, Head, Tail, NextTail}'.
-spec queue_header(resource(), boolean()) ->
          {non_neg_integer(), non_neg_integer(), non_neg_integer(), non_neg_integer()}
        | error().
queue_header(_R, _Check) -> ?NIF.

%% @doc NIF: one step of a fold.
-spec queue_frame(resource(), non_neg_integer(), non_neg_integer(), boolean()) ->
          {ok, term(), non_neg_integer()}
        | {compressed, binary(), non_neg_integer(), non_neg_integer()}
        | error().
queue_frame(_R, _Pos, _Limit, _Back) -> ?NIF.

%% @doc NIF: counts messages in a bounded step.
-spec queue_count(resource(), non_neg_integer(), non_neg_integer()) ->
          {non_neg_integer(), non_neg_integer()} | error().
queue_count(_R, _Pos, _End) -> ?NIF.

%% @doc NIF: resets the header of an empty queue.
-spec queue_purge(resource()) -> boolean() | error().
queue_purge(_R) -> ?NIF.

%% @doc NIF: drops every message.
-spec queue_erase(resource()) -> ok | error().
queue_erase(_R) -> ?NIF.
