%%% @doc Persistent 64-bit counters in a file, shared by every process (and OS process)
%%% that maps it.
%%%
%%% `open_counters/1,2' opens (or creates) a counters file and returns a counters value;
%%% `inc_counter/2,3', `dec_counter/2,3' and `set_counter/3' change a counter atomically
%%% and return its previous value, `read_counter/2' returns it. The functions are also
%%% exported by `emmap'.
%%%
%%% File format (the original emmap's): the 8 bytes `"EMMAP01\n"', the count N as an
%%% unsigned 64-bit little-endian integer, then N signed 64-bit counters in native byte
%%% order, each updated with sequentially consistent atomic operations, so that C programs
%%% using `c_src_compat/emmap_counters.h' count in the same file.
%%%
%%% Errors: these calls return bare integers, so their failures are raised: `badarg' for
%%% an index outside `0..N-1' or a value that is not an integer in `[-2^63, 2^64)' (the
%%% shell says which), `error:closed' after `close_counters/1', `error:truncated' (or
%%% `eio') for a counter in a part of the file someone else cut away, and
%%% `{emmap_counters, File, Reason}' from `open_counters/1,2'.
-module(emmap_counters).

-include("emmap_internal.hrl").

-export([open_counters/1, open_counters/2, close_counters/1,
         inc_counter/2, inc_counter/3, dec_counter/2, dec_counter/3,
         set_counter/3, read_counter/2]).

-export_type([counters/0]).

-opaque counters() :: {emmap:mmap_file(), pos_integer()}.
%% A counters file opened by `open_counters/1,2'.

-define(COUNTERS_MAGIC, "EMMAP01\n").

%% Counter I of a file of N.
-define(INDEX(I, N), is_integer(I), I >= 0, I < N).
%% The byte offset of counter I.
-define(SLOT(I), (16 + 8 * I)).

%% A NIF answering the counter's value; its `{error, Reason}' raised as `error:Reason'.
%% (Its variables end in `_' so that they never meet one of the function's own.)
-define(VALUE(Call, Args),
        try Call of
            Value_ when is_integer(Value_) -> Value_;
            {error, Why_} -> erlang:error(Why_)
        catch
            error:badarg -> ?BADARG(Args)
        end).

%% `?VALUE' for `emmap_nif:counter_add/3', which answers its `badarg' as
%% `{'$emmap_badarg', R, I, K}' rather than raising it: no `try' frame.
-define(ADDED(Call, Args),
        case Call of
            Value_ when is_integer(Value_) -> Value_;
            {error, Why_} -> erlang:error(Why_);
            {'$emmap_badarg', _, _, _} -> ?BADARG(Args)
        end).

%% @doc Opens an existing counters file, with as many counters as its header says.
%% Raises `{emmap_counters, File, Reason}' on failure.
-spec open_counters(file:name_all()) -> counters().
open_counters(File) ->
    try open_counters(File, 0)
    catch error:badarg -> ?BADARG([File])
    end.

%% @doc Opens (creating if needed) a file of `N' persistent 64-bit counters, all 0 in a
%% new file. `N = 0' takes the count from an existing file's header. Only a new file, or
%% one of the right size that holds nothing but zeros, is initialised. Raises
%% `{emmap_counters, File, Reason}', changing nothing in the file, for an existing file of
%% another size than `16 + 8 * N' (`size_mismatch'), one whose header is not a counters
%% header or does not describe the file (`bad_header'), or one `open/4' refuses (its
%% reason, such as `enoent').
-spec open_counters(file:name_all(), non_neg_integer()) -> counters().
open_counters(File, N) when is_integer(N), N >= 0, N < (1 bsl 56) ->
    Size = 16 + 8 * N,
    Opts = [read, write, shared, nolock],
    Res = try
              case N of
                  0 -> emmap:open(File, 0, 0, Opts);
                  _ -> emmap:open(File, 0, 0, [create, {size, Size} | Opts])
              end
          catch
              error:badarg -> ?BADARG([File, N])
          end,
    M = case Res of
            {ok, M0} -> M0;
            {error, einval} when N > 0 -> counters_fail(File, size_mismatch);
            {error, Why} -> counters_fail(File, Why)
        end,
    #{exist := Existed, size := FileSize} = emmap:info(M),
    case counters_setup(M, N, Existed, FileSize, 2) of
        {ok, HN} ->
            {M, HN};
        {error, Why2} ->
            emmap:close(M),
            counters_fail(File, Why2)
    end;
open_counters(File, N) ->
    ?BADARG([File, N]).

-spec counters_fail(file:name_all(), atom()) -> no_return().
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
                    ok = emmap:pwrite(M, 8, <<N:64/little>>),
                    _ = emmap:patomic_cas(M, 0, 0, Magic),
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
    case emmap:pread(M, 0, 16) of
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
    case emmap:pread(M, Pos, Len) of
        {ok, Bin} when byte_size(Bin) =:= Len ->
            Bin =:= <<0:(Len * 8)>> andalso all_zero(M, Pos + Len, End);
        _ ->
            false
    end.

%% @doc Closes a counters file. The values are already in the file.
-spec close_counters(counters()) -> ok.
close_counters({?H(_) = M, _} = C) ->
    try emmap:close(M)
    catch error:badarg -> ?BADARG([C])
    end;
close_counters(C) ->
    ?BADARG([C]).

%% @doc Adds 1 to counter `I' and returns its previous value.
-spec inc_counter(counters(), non_neg_integer()) -> integer().
inc_counter({?H(R), N} = C, I) when ?INDEX(I, N) ->
    ?ADDED(emmap_nif:counter_add(R, I, 1), [C, I]);
inc_counter(C, I) ->
    ?BADARG([C, I]).

%% @doc Adds `K' to counter `I' and returns its previous value.
-spec inc_counter(counters(), non_neg_integer(), integer()) -> integer().
inc_counter({?H(R), N} = C, I, K) when ?INDEX(I, N) ->
    ?ADDED(emmap_nif:counter_add(R, I, K), [C, I, K]);
inc_counter(C, I, K) ->
    ?BADARG([C, I, K]).

%% @doc Subtracts 1 from counter `I' and returns its previous value.
-spec dec_counter(counters(), non_neg_integer()) -> integer().
dec_counter({?H(R), N} = C, I) when ?INDEX(I, N) ->
    ?VALUE(emmap_nif:atomic_sub(R, ?SLOT(I), 1), [C, I]);
dec_counter(C, I) ->
    ?BADARG([C, I]).

%% @doc Subtracts `K' from counter `I' and returns its previous value.
-spec dec_counter(counters(), non_neg_integer(), integer()) -> integer().
dec_counter({?H(R), N} = C, I, K) when ?INDEX(I, N) ->
    ?VALUE(emmap_nif:atomic_sub(R, ?SLOT(I), K), [C, I, K]);
dec_counter(C, I, K) ->
    ?BADARG([C, I, K]).

%% @doc Sets counter `I' to `V' and returns its previous value.
-spec set_counter(counters(), non_neg_integer(), integer()) -> integer().
set_counter({?H(R), N} = C, I, V) when ?INDEX(I, N) ->
    ?VALUE(emmap_nif:atomic_xchg(R, ?SLOT(I), V), [C, I, V]);
set_counter(C, I, V) ->
    ?BADARG([C, I, V]).

%% @doc The current value of counter `I'.
-spec read_counter(counters(), non_neg_integer()) -> integer().
read_counter({?H(R), N} = C, I) when ?INDEX(I, N) ->
    ?VALUE(emmap_nif:atomic_load(R, ?SLOT(I)), [C, I]);
read_counter(C, I) ->
    ?BADARG([C, I]).
