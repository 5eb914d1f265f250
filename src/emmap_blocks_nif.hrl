%%% NIF stubs for block storage (`emmap_blocks'), included by emmap.erl.
%%%
%%% The NIF library is loaded by `emmap' (its entry names that module), and `load_nif'
%%% refuses a library that defines a NIF its module lacks: every NIF of
%%% native/emmap_nif/src/blocks.rs needs a stub here. They are exported for `emmap_blocks',
%%% which holds the API. Each NIF decides itself whether it runs on the caller's scheduler
%%% or moves to a dirty one (native/emmap_nif/src/schedule.rs).
%%% Include this file before the first function definition of the including module.

-export([block_init_nif/3, block_store_nif/2, block_read_nif/2, block_free_nif/2,
         block_chunk_nif/3, block_repair_nif/3]).

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
