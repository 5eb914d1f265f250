%%% @doc Fixed-size block storage on a memory mapping: a small persistent slab allocator.
%%%
%%% `init_block_storage/2,3' lays a storage out in a mapping opened with `write' (usually
%%% `shared', so it persists in the file). `store_block/2' puts a binary of exactly the
%%% block size in the lowest free slot and returns the slot's address, a small integer;
%%% `read_block/2' and `free_block/2' take that address. The file grows as slots are needed
%%% (through `emmap:resize/2'), unless the mapping was opened with `fixed_size'.
%%%
%%% Every call is short: reads and stores touch one block, and the whole-storage calls
%%% (`read_blocks/1', `repair_block_storage/1') loop in Erlang over bounded NIF steps.
%%% Work that may take longer (blocks over 64 KiB, a store that grows the file) moves
%%% itself to a dirty I/O scheduler inside the NIF.
%%% After a crash, call `repair_block_storage/1' (or `/3' in steps) before storing or
%%% freeing: it never loses a block whose `store_block/2' returned, and forgets every block
%%% whose `free_block/2' returned. The layout is documented in `native/emmap_core/BLOCKS.md'.
%%%
%%% Errors: arguments of the wrong type raise `error:badarg' (so does a block of the wrong
%%% size), and the shell says which argument is wrong and why; a storage that cannot do what is asked answers `{error, Reason}' with `Reason'
%%% one of `not_initialized' (no storage in this mapping), `corrupt' (a damaged header),
%%% `mismatch' (`init' with another block size or capacity than the file has), `full',
%%% or an error of the mapping (`closed', `eacces' for a read-only mapping, `alignment'
%%% for a mapping that does not start 8-byte aligned, ...).
-module(emmap_blocks).

-include("emmap_internal.hrl").

-export([init_block_storage/2, init_block_storage/3,
         store_block/2, read_block/2, free_block/2,
         read_blocks/1, read_blocks/3,
         repair_block_storage/1, repair_block_storage/3]).

-export_type([addr/0, continuation/0, init_options/0, block_error/0]).

-define(U64MAX, 16#FFFFFFFFFFFFFFFF).

-type addr() :: non_neg_integer().
%% The address of a block: its slot number, from 0.
-type continuation() :: non_neg_integer().
%% Where a chunked `read_blocks/3' or `repair_block_storage/3' goes on.
-type init_options() :: #{max_blocks => pos_integer()}.
%% `max_blocks': the capacity (default 262144, at most 67108864).
-type block_error() :: not_initialized | corrupt | mismatch | full | emmap:posix_reason().

%%%===========================================================================
%%% Setting up
%%%===========================================================================

%% @doc Same as `init_block_storage(Mem, BlockSize, #{})'.
-spec init_block_storage(emmap:mmap_file(), pos_integer()) -> ok | {error, block_error()}.
init_block_storage(Mem, BlockSize) ->
    try init_block_storage(Mem, BlockSize, #{})
    catch error:badarg -> ?BADARG([Mem, BlockSize])
    end.

%% @doc Makes `Mem' a block storage for blocks of `BlockSize' bytes (at most 1 GiB), with
%% room for `max_blocks' of them (default 262144, at most 2^26). The mapping grows to hold
%% the storage's header and bitmap (`{error, fixed_size}' if it is too small and may not
%% grow). If `Mem' already holds a storage with this block size (and this capacity, when
%% one is given), it is kept as it is and `ok' is returned; with another one the answer is
%% `{error, mismatch}'. A damaged header gives `{error, corrupt}' and is not overwritten.
%% A block size over 1 GiB or a capacity over 2^26 is `{error, einval}'.
-spec init_block_storage(emmap:mmap_file(), pos_integer(), init_options()) ->
          ok | {error, block_error()}.
init_block_storage(?H(R) = M, BlockSize, Opts) when is_map(Opts) ->
    try
        MaxBlocks = case maps:to_list(Opts) of
                        [] -> 0;
                        [{max_blocks, N}] when is_integer(N), N > 0 -> N;
                        _ -> erlang:error(badarg)
                    end,
        emmap_nif:block_init(R, BlockSize, MaxBlocks)
    catch
        error:badarg -> ?BADARG([M, BlockSize, Opts])
    end;
init_block_storage(M, BlockSize, Opts) ->
    ?BADARG([M, BlockSize, Opts]).

%%%===========================================================================
%%% One block
%%%===========================================================================

%% @doc Stores `Bin' in the lowest free slot and returns its address. `Bin' must be exactly
%% the block size (else `error:badarg'). `{error, full}' when every slot is taken, or
%% every slot a `fixed_size' mapping can hold.
-spec store_block(emmap:mmap_file(), binary()) -> addr() | {error, block_error()}.
store_block(?H(R) = M, Bin) ->
    ?NIF_CALL(emmap_nif:block_store(R, Bin), [M, Bin]);
store_block(M, Bin) ->
    ?BADARG([M, Bin]).

%% @doc The block at `Addr', or `eof' if there is none (a free slot, or an address outside
%% the storage). In `direct' mode the binary points into the mapping, as `emmap:pread/3'
%% does: no copy, and it shows what is stored there later.
-spec read_block(emmap:mmap_file(), integer()) -> binary() | eof | {error, block_error()}.
read_block(?H(R) = M, Addr) ->
    ?NIF_CALL(emmap_nif:block_read(R, Addr), [M, Addr]);
read_block(M, Addr) ->
    ?BADARG([M, Addr]).

%% @doc Frees the block at `Addr': `true' if there was one, `false' if there was none.
%% In a storage made by this version (layout 3) a free looks only at the slot's commit
%% marker, not at the block's bytes: a block whose bytes were damaged after it was stored
%% (`read_block/2' gives `eof' for it) is still freed, and the answer is `true'.
-spec free_block(emmap:mmap_file(), integer()) -> boolean() | {error, block_error()}.
free_block(?H(R) = M, Addr) ->
    ?NIF_CALL(emmap_nif:block_free(R, Addr), [M, Addr]);
free_block(M, Addr) ->
    ?BADARG([M, Addr]).

%%%===========================================================================
%%% Every block
%%%===========================================================================

%% @doc Every block, as `{Addr, Bin}' in address order. Runs as many short NIF steps as
%% needed, so other processes keep running meanwhile; blocks stored or freed during the
%% walk may or may not be in the list.
-spec read_blocks(emmap:mmap_file()) -> [{addr(), binary()}] | {error, block_error()}.
read_blocks(?H(R) = M) ->
    try collect(R, 0, infinity, []) of
        {L, eof} -> L;
        {error, _} = E -> E
    catch
        error:badarg -> ?BADARG([M])
    end;
read_blocks(M) ->
    ?BADARG([M]).

%% @doc At most `Max' blocks with addresses from `Start' on, in address order, and where
%% to go on: `{Blocks, Continuation}', or `{Blocks, eof}' once the end is reached. Start
%% with `0'; passing `eof' back gives `{[], eof}'. Exactly `Max' blocks are returned unless
%% the end comes first (then the continuation is `eof').
-spec read_blocks(emmap:mmap_file(), continuation() | eof, pos_integer()) ->
          {[{addr(), binary()}], continuation() | eof} | {error, block_error()}.
read_blocks(?H(R) = M, Start, Max)
  when Start =:= eof orelse is_integer(Start) andalso Start >= 0, is_integer(Max), Max > 0 ->
    try collect(R, Start, Max, [])
    catch error:badarg -> ?BADARG([M, Start, Max])
    end;
read_blocks(M, Start, Max) ->
    ?BADARG([M, Start, Max]).

collect(_R, Next, 0, Acc) ->
    {lists:append(lists:reverse(Acc)), Next};
collect(_R, eof, _Left, Acc) ->
    {lists:append(lists:reverse(Acc)), eof};
collect(_R, Start, _Left, Acc) when Start > ?U64MAX ->
    {lists:append(lists:reverse(Acc)), eof};    % past every address
collect(R, Start, Left, Acc) ->
    Max = case Left of infinity -> ?U64MAX; _ -> min(Left, ?U64MAX) end,
    case emmap_nif:block_chunk(R, Start, Max) of
        {L, Next} when is_list(L) ->
            Left1 = case Left of infinity -> infinity; _ -> Left - length(L) end,
            collect(R, Next, Left1, [L | Acc]);
        {error, _} = E ->
            E
    end.

%%%===========================================================================
%%% Repair
%%%===========================================================================

%% @doc Makes the storage's bookkeeping consistent after a crash: a slot that was being
%% stored or freed when the writer died is freed, every block whose `store_block/2'
%% returned is kept. Runs in short NIF steps. Nothing may store or free in the storage
%% (from any process or OS process) while it runs.
-spec repair_block_storage(emmap:mmap_file()) -> ok | {error, block_error()}.
repair_block_storage(?H(R) = M) ->
    try repair(R, 0, infinity) of
        eof -> ok;
        {error, _} = E -> E
    catch
        error:badarg -> ?BADARG([M])
    end;
repair_block_storage(M) ->
    ?BADARG([M]).

%% @doc Repairs the slots `[Start, Start + Max)' and returns where to go on, or `eof' once
%% every slot has been looked at. Start with `0'; passing `eof' back gives `eof'. The same
%% rules as for `repair_block_storage/1' apply.
-spec repair_block_storage(emmap:mmap_file(), continuation() | eof, pos_integer()) ->
          continuation() | eof | {error, block_error()}.
repair_block_storage(?H(R) = M, Start, Max)
  when Start =:= eof orelse is_integer(Start) andalso Start >= 0, is_integer(Max), Max > 0 ->
    try repair(R, Start, Max)
    catch error:badarg -> ?BADARG([M, Start, Max])
    end;
repair_block_storage(M, Start, Max) ->
    ?BADARG([M, Start, Max]).

repair(_R, eof, _Left) ->
    eof;
repair(_R, Start, _Left) when Start > ?U64MAX ->
    eof;                                        % past every slot
repair(_R, Next, Left) when is_integer(Left), Left =< 0 ->
    Next;
repair(R, Start, Left) ->
    Max = case Left of infinity -> ?U64MAX; _ -> min(Left, ?U64MAX) end,
    case emmap_nif:block_repair(R, Start, Max) of
        Next when is_integer(Next) ->
            Left1 = case Left of infinity -> infinity; _ -> Left - (Next - Start) end,
            repair(R, Next, Left1);
        eof ->
            eof;
        {error, _} = E ->
            E
    end.
