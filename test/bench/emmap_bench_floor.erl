%%% Stubs of the bench-only NIF library test/bench/floor (empty NIFs, and NIFs that copy
%%% to and from a mapping of their own: the floors of `make bench'). Not part of emmap. The library is found through the environment
%%% variable EMMAP_BENCH_FLOOR (its path without the extension), else in the checkout's
%%% target/release/, where `make bench' builds it.
-module(emmap_bench_floor).

-export([new/0, int/3, ok_int/3, bin40/3, copy40/3, write/3, map/2, map_write/3, map_copy/3,
         mark/0]).
-on_load(init/0).

init() ->
    Lib = case os:getenv("EMMAP_BENCH_FLOOR") of
              false ->
                  Here = filename:dirname(filename:absname(code:which(?MODULE))),
                  Top = filename:dirname(filename:dirname(Here)),
                  filename:join([Top, "target", "release", "libemmap_bench_floor"]);
              Path ->
                  Path
          end,
    erlang:load_nif(Lib, 0).

%% @doc A resource of the floor library's own type.
-spec new() -> reference().
new() -> erlang:nif_error(not_loaded).

%% @doc `I' (the shape of the NIF under `emmap:inc_counter/2').
-spec int(reference(), integer(), integer()) -> integer().
int(_R, _I, _J) -> erlang:nif_error(not_loaded).

%% @doc `{ok, I}' (the shape of an atomic operation's NIF).
-spec ok_int(reference(), integer(), integer()) -> {ok, integer()}.
ok_int(_R, _I, _J) -> erlang:nif_error(not_loaded).

%% @doc `{ok, Bin}', `Bin' a 40-byte resource binary (a `direct' read).
-spec bin40(reference(), integer(), integer()) -> {ok, binary()}.
bin40(_R, _I, _J) -> erlang:nif_error(not_loaded).

%% @doc `{ok, Bin}', `Bin' a new 40-byte binary (a copying read).
-spec copy40(reference(), integer(), integer()) -> {ok, binary()}.
copy40(_R, _I, _J) -> erlang:nif_error(not_loaded).

%% @doc `ok' after inspecting `Bin' (a `pwrite').
-spec write(reference(), integer(), binary()) -> ok.
write(_R, _I, _Bin) -> erlang:nif_error(not_loaded).

%% @doc A resource holding a shared read-write mapping of the first `Size' bytes of the
%% existing file `Path' (unmapped when the resource is freed).
-spec map(binary(), pos_integer()) -> reference().
map(_Path, _Size) -> erlang:nif_error(not_loaded).

%% @doc `ok' after copying `Bin' into the mapping of `map/2' at offset `I' (a `pwrite'
%% that stores its bytes).
-spec map_write(reference(), non_neg_integer(), binary()) -> ok.
map_write(_R, _I, _Bin) -> erlang:nif_error(not_loaded).

%% @doc `{ok, Bin}', `Bin' a new binary of the `N' bytes at offset `I' of the mapping of
%% `map/2' (a copying read that reads its bytes).
-spec map_copy(reference(), non_neg_integer(), non_neg_integer()) -> {ok, binary()}.
map_copy(_R, _I, _N) -> erlang:nif_error(not_loaded).

%% @doc `ok'; callgrind runs dump a profile at each call.
-spec mark() -> ok.
mark() -> erlang:nif_error(not_loaded).
