%%% NIF stubs for block storage, included by emmap.erl.
%%%
%%% The NIF library is loaded by `emmap' (its entry names that module), and `load_nif'
%%% refuses a library that defines a NIF its module lacks: every NIF of
%%% native/emmap_nif/src/blocks.rs needs a stub here. They are exported for `emmap_blocks',
%%% which holds the API.
%%% Include this file before the first function definition of the including module.

-export([block_init_nif/3, block_store_nif/2, block_store_dirty_nif/2,
         block_read_nif/2, block_read_dirty_nif/2, block_free_nif/2, block_free_dirty_nif/2,
         block_chunk_nif/3, block_chunk_dirty_nif/3,
         block_repair_nif/3, block_repair_dirty_nif/3]).

-define(BLOCK_NIF, erlang:nif_error({not_loaded, ?MODULE, ?LINE})).

%% @private
%% @doc NIF stub for `emmap_blocks'.
-spec block_init_nif(reference(), pos_integer(), non_neg_integer()) -> ok | {error, atom()}.
block_init_nif(_R, _BlockSize, _MaxBlocks) -> ?BLOCK_NIF.
%% @private
%% @doc NIF stub for `emmap_blocks'.
-spec block_store_nif(reference(), binary()) -> non_neg_integer() | dirty | {error, atom()}.
block_store_nif(_R, _Bin) -> ?BLOCK_NIF.
%% @private
%% @doc NIF stub for `emmap_blocks'.
-spec block_store_dirty_nif(reference(), binary()) -> non_neg_integer() | {error, atom()}.
block_store_dirty_nif(_R, _Bin) -> ?BLOCK_NIF.
%% @private
%% @doc NIF stub for `emmap_blocks'.
-spec block_read_nif(reference(), non_neg_integer()) -> binary() | eof | dirty | {error, atom()}.
block_read_nif(_R, _Addr) -> ?BLOCK_NIF.
%% @private
%% @doc NIF stub for `emmap_blocks'.
-spec block_read_dirty_nif(reference(), non_neg_integer()) -> binary() | eof | {error, atom()}.
block_read_dirty_nif(_R, _Addr) -> ?BLOCK_NIF.
%% @private
%% @doc NIF stub for `emmap_blocks'.
-spec block_free_nif(reference(), non_neg_integer()) -> boolean() | dirty | {error, atom()}.
block_free_nif(_R, _Addr) -> ?BLOCK_NIF.
%% @private
%% @doc NIF stub for `emmap_blocks'.
-spec block_free_dirty_nif(reference(), non_neg_integer()) -> boolean() | {error, atom()}.
block_free_dirty_nif(_R, _Addr) -> ?BLOCK_NIF.
%% @private
%% @doc NIF stub for `emmap_blocks'.
-spec block_chunk_nif(reference(), non_neg_integer(), pos_integer()) ->
          {[{non_neg_integer(), binary()}], non_neg_integer() | eof} | dirty | {error, atom()}.
block_chunk_nif(_R, _Start, _Max) -> ?BLOCK_NIF.
%% @private
%% @doc NIF stub for `emmap_blocks'.
-spec block_chunk_dirty_nif(reference(), non_neg_integer(), pos_integer()) ->
          {[{non_neg_integer(), binary()}], non_neg_integer() | eof} | {error, atom()}.
block_chunk_dirty_nif(_R, _Start, _Max) -> ?BLOCK_NIF.
%% @private
%% @doc NIF stub for `emmap_blocks'.
-spec block_repair_nif(reference(), non_neg_integer(), pos_integer()) ->
          non_neg_integer() | eof | dirty | {error, atom()}.
block_repair_nif(_R, _Start, _Max) -> ?BLOCK_NIF.
%% @private
%% @doc NIF stub for `emmap_blocks'.
-spec block_repair_dirty_nif(reference(), non_neg_integer(), pos_integer()) ->
          non_neg_integer() | eof | {error, atom()}.
block_repair_dirty_nif(_R, _Start, _Max) -> ?BLOCK_NIF.
