%%% NIF stubs for block storage (`emmap_blocks') and the persistent queue (`emmap_queue'),
%%% included by emmap.erl.
%%%
%%% The NIF library is loaded by `emmap' (its entry names that module), and `load_nif'
%%% refuses a library that defines a NIF its module lacks: every NIF of
%%% native/emmap_nif/src/blocks.rs and native/emmap_nif/src/queue.rs needs a stub here.
%%% They are exported for `emmap_blocks' and `emmap_queue', which hold the APIs. Each NIF
%%% decides itself whether it runs on the caller's scheduler or moves to a dirty one
%%% (native/emmap_nif/src/schedule.rs); the queue's run under the handle's queue lock.
%%% Include this file before the first function definition of the including module.

-export([block_init_nif/3, block_store_nif/2, block_read_nif/2, block_free_nif/2,
         block_chunk_nif/3, block_repair_nif/3]).
-export([queue_attach_nif/1, queue_push_nif/2, queue_pop_nif/2, queue_peek_nif/2,
         queue_front_nif/1, queue_advance_nif/4, queue_header_nif/2, queue_frame_nif/4,
         queue_count_nif/3, queue_purge_nif/1, queue_erase_nif/1]).

-define(STUB_NIF, erlang:nif_error({not_loaded, ?MODULE, ?LINE})).

%% @private
%% @doc NIF stub for `emmap_blocks'.
-spec block_init_nif(reference(), pos_integer(), non_neg_integer()) -> ok | {error, atom()}.
block_init_nif(_R, _BlockSize, _MaxBlocks) -> ?STUB_NIF.
%% @private
%% @doc NIF stub for `emmap_blocks'.
-spec block_store_nif(reference(), binary()) -> non_neg_integer() | {error, atom()}.
block_store_nif(_R, _Bin) -> ?STUB_NIF.
%% @private
%% @doc NIF stub for `emmap_blocks'.
-spec block_read_nif(reference(), integer()) -> binary() | eof | {error, atom()}.
block_read_nif(_R, _Addr) -> ?STUB_NIF.
%% @private
%% @doc NIF stub for `emmap_blocks'.
-spec block_free_nif(reference(), integer()) -> boolean() | {error, atom()}.
block_free_nif(_R, _Addr) -> ?STUB_NIF.
%% @private
%% @doc NIF stub for `emmap_blocks'.
-spec block_chunk_nif(reference(), non_neg_integer(), pos_integer()) ->
          {[{non_neg_integer(), binary()}], non_neg_integer() | eof} | {error, atom()}.
block_chunk_nif(_R, _Start, _Max) -> ?STUB_NIF.
%% @private
%% @doc NIF stub for `emmap_blocks'.
-spec block_repair_nif(reference(), non_neg_integer(), pos_integer()) ->
          non_neg_integer() | eof | {error, atom()}.
block_repair_nif(_R, _Start, _Max) -> ?STUB_NIF.
%% @private
%% @doc NIF stub for `emmap_queue'.
-spec queue_attach_nif(reference()) -> ok | {error, atom()}.
queue_attach_nif(_R) -> ?STUB_NIF.
%% @private
%% @doc NIF stub for `emmap_queue'.
-spec queue_push_nif(reference(), binary()) -> ok | {error, atom()}.
queue_push_nif(_R, _Bin) -> ?STUB_NIF.
%% @private
%% @doc NIF stub for `emmap_queue'.
-spec queue_pop_nif(reference(), boolean()) ->
          {ok, term()} | {compressed, binary(), non_neg_integer(), non_neg_integer()}
        | nil | {error, atom()}.
queue_pop_nif(_R, _Purge) -> ?STUB_NIF.
%% @private
%% @doc NIF stub for `emmap_queue'.
-spec queue_peek_nif(reference(), boolean()) ->
          {ok, term()} | {compressed, binary(), non_neg_integer(), non_neg_integer()}
        | nil | {error, atom()}.
queue_peek_nif(_R, _Back) -> ?STUB_NIF.
%% @private
%% @doc NIF stub for `emmap_queue'.
-spec queue_front_nif(reference()) ->
          {ok, term(), non_neg_integer(), non_neg_integer()}
        | {compressed, binary(), non_neg_integer(), non_neg_integer()}
        | nil | {error, atom()}.
queue_front_nif(_R) -> ?STUB_NIF.
%% @private
%% @doc NIF stub for `emmap_queue'.
-spec queue_advance_nif(reference(), non_neg_integer(), non_neg_integer(), boolean()) ->
          ok | moved | {error, atom()}.
queue_advance_nif(_R, _Head, _Next, _Purge) -> ?STUB_NIF.
%% @private
%% @doc NIF stub for `emmap_queue'.
-spec queue_header_nif(reference(), boolean()) ->
          {non_neg_integer(), non_neg_integer(), non_neg_integer(), non_neg_integer()}
        | {error, atom()}.
queue_header_nif(_R, _Check) -> ?STUB_NIF.
%% @private
%% @doc NIF stub for `emmap_queue'.
-spec queue_frame_nif(reference(), non_neg_integer(), non_neg_integer(), boolean()) ->
          {ok, term(), non_neg_integer()}
        | {compressed, binary(), non_neg_integer(), non_neg_integer()}
        | {error, atom()}.
queue_frame_nif(_R, _Pos, _Limit, _Back) -> ?STUB_NIF.
%% @private
%% @doc NIF stub for `emmap_queue'.
-spec queue_count_nif(reference(), non_neg_integer(), non_neg_integer()) ->
          {non_neg_integer(), non_neg_integer()} | {error, atom()}.
queue_count_nif(_R, _Pos, _End) -> ?STUB_NIF.
%% @private
%% @doc NIF stub for `emmap_queue'.
-spec queue_purge_nif(reference()) -> boolean() | {error, atom()}.
queue_purge_nif(_R) -> ?STUB_NIF.
%% @private
%% @doc NIF stub for `emmap_queue'.
-spec queue_erase_nif(reference()) -> ok | {error, atom()}.
queue_erase_nif(_R) -> ?STUB_NIF.
