%%% @doc A persistent FIFO queue of Erlang terms in a memory-mapped file.
%%%
%%% The file format is the original emmap queue's, so files move between the two
%%% implementations both ways.
%%%
%%% == Two ways to use it ==
%%%
%%% As a container: `open/3' returns a queue handle `Q' (an `emmap' mapping, so
%%% `emmap:info/1', `emmap:sync/1' and friends work on it too) and `push/2,3', `pop/1',
%%% `peek_front/1', `peek/3' etc. operate on it directly, in the calling process. These
%%% functions read and write the header without any locking: use a handle from one process
%%% at a time, and open a file through one handle at a time (nothing stops a second
%%% `open/3' of the same file; two writers would corrupt each other).
%%%
%%% As a process: `start_link/4' starts a `gen_server' that owns the queue; `enqueue/2',
%%% `dequeue/1', `try_dequeue/2', `inspect/1' and `info/1' can be called from any number
%%% of processes. The server uses the purging variants (`pop_and_purge/1',
%%% `try_pop_and_purge/2') and closes the mapping when it terminates.
%%%
%%% == File format ==
%%%
%%% All integers are unsigned 32-bit big-endian. The file starts with a 16-byte header:
%%% ```
%%% offset 0   Size      size of the segment (= the file size)
%%% offset 4   Head      offset of the oldest message
%%% offset 8   Tail      end of the last committed message
%%% offset 12  NextTail  end of a message being written (= Tail when none is)
%%% '''
%%% followed by messages, oldest first, from `Head' to `Tail'. A message is
%%% `<<Sz:32, Bin/binary, 0:(Pad*8), Sz:32>>' with
%%% `Bin = term_to_binary(Term, [{compressed, Level}, {minor_version, 2}])',
%%% `Sz0 = byte_size(Bin) + 8', `Pad = Sz0 rem 8' and `Sz = Sz0 + Pad' (the original's
%%% padding rule, kept as is: frames are not always a multiple of 8 bytes). The trailing
%%% copy of `Sz' lets the queue be walked backwards (`peek_back/1', `rpeek/3').
%%% An empty queue has `Head = Tail'; a purged one has `Head = Tail = NextTail = 16'.
%%% The header must satisfy `16 =< Head =< Tail =< NextTail =< Size' and `Size' must
%%% match the file; anything else is `{error, corrupt_header}'. The same error is
%%% returned when a frame the header points at does not fit (its `Sz' is below 8 or runs
%%% past `Tail', its two copies of `Sz' differ, `Sz' disagrees with the encoded term's
%%% length, or the term does not decode): header offsets are never trusted blindly, and a
%%% bad file never crashes the caller. `erase/1' resets a queue whose header went bad
%%% while it was open; `open/3' with the `truncate' option starts a corrupt file afresh.
%%%
%%% == Crash safety ==
%%%
%%% A push writes `NextTail = Tail + Sz', then the message at `Tail', then the new `Tail'
%%% (the commit). A pop writes the new `Head'. Every header update is one aligned 64-bit
%%% atomic store (`emmap:patomic_write_integer/3' of the word holding `Tail' and
%%% `NextTail', or of the word holding `Size' and `Head'), so no field is ever seen half
%%% written. The pages belong to the OS, so when the VM is killed (even with `kill -9')
%%% every store made before is in the file: a message is either committed in full or not
%%% at all, and a push that returned `ok' is never lost. `open/3' repairs what an
%%% interrupted operation leaves behind:
%%% <ul>
%%% <li>`NextTail =/= Tail' (a push interrupted before its commit): `NextTail' is reset to
%%% `Tail', dropping the half-written message.</li>
%%% <li>`Size' smaller than the file (a growth interrupted after the file was extended,
%%% before the header was updated): `Size' is set to the file size. A `Size' larger than
%%% the file is corrupt.</li>
%%% <li>`Tail = NextTail = 16 < Head' (a purge interrupted between its two stores; only an
%%% empty queue is purged): `Head' is set to 16.</li>
%%% <li>`Tail = NextTail = 0' with nothing but zeros in the file (created, but killed
%%% before the header was written): the header is written. Zeros in the header of a file
%%% that holds anything else are corrupt.</li>
%%% </ul>
%%% Surviving a power loss needs the pages on disk: call `sync/1' after the pushes that
%%% must survive one (the OS may write pages back in any order, so without it a power loss
%%% can lose or tear recent messages).
%%%
%%% == Growth and reclaiming space ==
%%%
%%% The segment is linear: messages are appended at `Tail' and consumed from `Head'; there
%%% is no wrap-around (the format has no way to express it), and live messages are never
%%% moved (moving them cannot be committed atomically in this format). When a message does
%%% not fit, the file grows through `emmap:resize/2' by the rule of `emmap:resize/1',
%%% repeated until it fits: double while below `max_inc_size' (an `emmap' open option,
%%% default 64 MiB), else grow by `max_inc_size'. The `Size' field is updated after the
%%% file has grown. A queue opened with `fixed_size' never grows: `push' returns
%%% `{error, full}'. The format's 32-bit offsets cap a queue at 4 GiB - 1 bytes; beyond,
%%% `push' returns `{error, full}' too. Growth never moves or reorders messages.
%%%
%%% The space before `Head' is reclaimed when the queue becomes empty: the purging
%%% operations (`pop_and_purge/1', `try_pop_and_purge/2', `purge/1', `erase/1', and the
%%% server's `dequeue/1' and `try_dequeue/2') reset the header to 16/16/16 so the next
%%% message is written at offset 16 again. `pop/1', `try_pop/2' and `pop/3' leave `Head'
%%% where it is. A queue that is never drained keeps growing; the file never shrinks.
%%%
%%% == Return values ==
%%%
%%% `pop/1', `peek_front/1' and friends return the term itself, `nil' for an empty queue,
%%% or `{error, Reason}' (`corrupt_header', `closed', ...). A queue that stores the atom
%%% `nil' or `{error, _}' tuples cannot tell these apart from those answers; wrap such
%%% terms (for example in a one-element tuple) or use `peek/3' and `pop/3'. Arguments of
%%% the wrong type raise `error:badarg'.
-module(emmap_queue).
-behaviour(gen_server).

-include_lib("kernel/include/file.hrl").

%% Container API
-export([open/3, close/1, flush/1, sync/1]).
-export([push/2, push/3, pop/1, pop_and_purge/1, try_pop/2, try_pop_and_purge/2,
         peek_front/1, peek_back/1, peek/3, rpeek/3, pop/3]).
-export([is_empty/1, length/1, purge/1, erase/1, metadata/1]).

%% Server API
-export([start_link/4, stop/1, enqueue/2, dequeue/1, try_dequeue/2, inspect/1, info/1]).

%% gen_server callbacks
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-export_type([queue/0, metadata/0, server/0, fold_fun/0, failure/0]).

-compile({no_auto_import, [length/1, erase/1]}).

-define(HDR, 16).
-define(MAX_OFFSET, 16#FFFFFFFF).
%% Bytes read at a message's start in one go; a larger message takes a second read.
-define(FIRST_READ, 256).
%% Chunk size when checking that a file holds nothing but zeros.
-define(ZERO_CHUNK, 1048576).

-define(Q(Q), #file_descriptor{module = emmap} = Q).

-type queue() :: emmap:mmap_file().
%% A queue handle returned by `open/3': an `emmap' mapping of the queue file.

-type metadata() :: #{head := non_neg_integer(), tail := non_neg_integer(),
                      next_tail := non_neg_integer(), size := non_neg_integer()}.
%% The four header fields, as stored.

-type server() :: pid() | atom() | {atom(), node()} | {global, term()}
                | {via, module(), term()}.
%% A queue server, as `gen_server:call/3' accepts it.

-type fold_fun() :: fun((Term :: term(), Acc :: term()) -> {cont, term()} | {halt, term()}).
%% Called on each message in turn; `{cont, Acc}' goes on to the next, `{halt, Acc}' stops.

-type failure() :: {error, corrupt_header | emmap:posix_reason()}.
%% `corrupt_header': see the module doc; otherwise an `emmap' error, such as `closed'.

-record(state, {q :: queue()}).

%%%===========================================================================
%%% Container API
%%%===========================================================================

%% @doc Opens the queue in `File', creating it with `Size' bytes if it does not exist.
%%
%% `Opts' are `emmap:open/4' options; `read', `write' and `shared' are always added
%% (and `create' when the file is missing). Useful ones: `fixed_size' (never grow: `push'
%% returns `{error, full}' when the segment is full), `{max_inc_size, N}' (growth step,
%% see the module doc), `auto_unlink' (remove a file this call creates once the queue is
%% closed), `truncate' (discard an existing file and start afresh), `nolock'. `direct' has
%% no effect: terms are always decoded from a copy of the file's bytes.
%%
%% An existing file is mapped whole and `Size' is ignored (it may be 0); its header is
%% checked and repaired as the module doc describes. A new file needs
%% `16 =< Size =< 4294967295'. Returns `{error, corrupt_header}' (and changes nothing)
%% for a file that is not a valid queue, `{error, enoent}' for a missing file with
%% `Size = 0', and `emmap:open/4''s errors otherwise.
-spec open(File :: file:name_all(), Size :: non_neg_integer(),
           Opts :: [emmap:open_option()]) ->
          {ok, queue()} | failure().
open(File, Size, Opts) when is_integer(Size), Size >= 0, is_list(Opts) ->
    _ = erlang:length(Opts),                    % badarg for an improper list
    %% `direct' is left out: terms are decoded from the bytes read, and binary_to_term on
    %% a `direct' binary whose bytes another process changes meanwhile can crash the VM.
    Base = [read, write, shared | [O || O <- Opts, O =/= direct]],
    case emmap:open(File, 0, 0, Base) of
        {ok, M} ->
            attach(M);
        {error, Why} when Why =:= enoent; Why =:= einval ->
            %% Missing, or empty (or just truncated): create it with Size bytes.
            create(File, Size, Base, Why);
        {error, _} = E ->
            E
    end;
open(_, _, _) ->
    erlang:error(badarg).

create(_File, 0, _Opts, Why) ->
    {error, Why};
create(_File, Size, _Opts, _Why) when Size < ?HDR; Size > ?MAX_OFFSET ->
    {error, einval};
create(File, Size, Opts, _Why) ->
    case emmap:open(File, 0, 0, [create, {size, Size} | Opts]) of
        {ok, M} -> attach(M);
        {error, _} = E -> E
    end.

%% Checks (and if needed repairs or initialises) the header of a fresh mapping.
attach(M) ->
    case prepare(M) of
        ok ->
            {ok, M};
        {error, _} = E ->
            ok = emmap:close(M),
            E
    end.

prepare(M) ->
    #{size := FSize, exist := Existed} = emmap:info(M),
    case emmap:pread(M, 0, ?HDR) of
        _ when FSize > ?MAX_OFFSET ->
            {error, corrupt_header};
        {ok, <<0:128>>} when not Existed ->
            init_header(M, FSize);
        {ok, <<S:32, H:32, T:32, N:32>>} ->
            recover(M, FSize, S, H, T, N);
        {ok, _} ->
            {error, corrupt_header};             % shorter than a header
        eof ->
            {error, corrupt_header};
        {error, _} = E ->
            E
    end.

%% Nothing was ever committed to a file whose Tail word is zero: if the whole file is
%% zeros except a partly written header, write the header.
recover(M, FSize, S, H, 0, 0) ->
    Partial = (S =:= 0 andalso H =:= 0) orelse (S =:= FSize andalso H =:= ?HDR),
    case Partial andalso all_zero(M, ?HDR, FSize) of
        true -> init_header(M, FSize);
        false -> {error, corrupt_header}
    end;
recover(M, FSize, S, H, T, N)
  when ?HDR =< T, T =< N, N =< S, S =< FSize, ?HDR =< H, H =< S ->
    if
        H =< T ->
            repair(M, FSize, S, H, H, T, N);
        T =:= ?HDR, N =:= ?HDR ->
            %% A purge interrupted between its two stores.
            repair(M, FSize, S, H, ?HDR, T, N);
        true ->
            {error, corrupt_header}
    end;
recover(_M, _FSize, _S, _H, _T, _N) ->
    {error, corrupt_header}.

%% Writes back what differs: NextTail (reset to Tail), Size (set to the file's size),
%% Head (H0 as stored, H as it should be).
repair(M, FSize, S, H0, H, T, N) ->
    chain([fun() -> N =:= T orelse put_word(M, 8, T, T) end,
           fun() -> (S =:= FSize andalso H0 =:= H) orelse put_word(M, 0, FSize, H) end]).

init_header(_M, FSize) when FSize < ?HDR ->
    {error, corrupt_header};
init_header(M, FSize) ->
    chain([fun() -> put_word(M, 0, FSize, ?HDR) end,
           fun() -> put_word(M, 8, ?HDR, ?HDR) end]).

all_zero(_M, Pos, End) when Pos >= End ->
    true;
all_zero(M, Pos, End) ->
    Len = min(?ZERO_CHUNK, End - Pos),
    case emmap:pread(M, Pos, Len) of
        {ok, Bin} when byte_size(Bin) =:= Len ->
            Bin =:= <<0:(Len * 8)>> andalso all_zero(M, Pos + Len, End);
        _ ->
            false
    end.

%% @doc Closes the queue. Everything pushed is already in the file. Idempotent.
-spec close(Q :: queue()) -> ok.
close(?Q(Q)) -> emmap:close(Q);
close(_) -> erlang:error(badarg).

%% @doc Asks the OS to write the queue's dirty pages to disk soon (`emmap:flush/1');
%% returns at once. Not needed to survive a crash of the VM, only a power loss.
-spec flush(Q :: queue()) -> ok | failure().
flush(?Q(Q)) -> emmap:flush(Q);
flush(_) -> erlang:error(badarg).

%% @doc Writes the queue's dirty pages to disk and waits (`emmap:sync/1'): what was pushed
%% before survives a power loss.
-spec sync(Q :: queue()) -> ok | failure().
sync(?Q(Q)) -> emmap:sync(Q);
sync(_) -> erlang:error(badarg).

%% @doc Appends `Term' (uncompressed). Same as `push(Q, Term, 0)'.
-spec push(Q :: queue(), Term :: term()) -> ok | {error, full} | failure().
push(Q, Term) ->
    push(Q, Term, 0).

%% @doc Appends `Term', encoded by `term_to_binary/2' with compression level `Level'
%% (from 0, none, to 9, the smallest). Grows the file when the message does not fit (see
%% the module doc); returns `{error, full}' if it cannot grow (`fixed_size', or the
%% 4 GiB limit of the format). Constant time, apart from growth.
-spec push(Q :: queue(), Term :: term(), Level :: 0..9) -> ok | {error, full} | failure().
push(?Q(Q), Term, Level) when is_integer(Level), Level >= 0, Level =< 9 ->
    Bin = term_to_binary(Term, [{compressed, Level}, {minor_version, 2}]),
    Sz0 = byte_size(Bin) + 8,
    Pad = Sz0 rem 8,
    Sz = Sz0 + Pad,
    case header(Q) of
        {ok, {S, H, T, _N}} ->
            NewTail = T + Sz,
            case room(Q, S, H, NewTail) of
                ok ->
                    Msg = <<Sz:32, Bin/binary, 0:(Pad * 8), Sz:32>>,
                    chain([fun() -> put_word(Q, 8, T, NewTail) end,
                           fun() -> emmap:pwrite(Q, T, Msg) end,
                           fun() -> put_word(Q, 8, NewTail, NewTail) end]);
                {error, _} = E ->
                    E
            end;
        {error, _} = E ->
            E
    end;
push(_, _, _) ->
    erlang:error(badarg).

%% Makes the segment at least End bytes long.
room(_Q, S, _H, End) when End =< S ->
    ok;
room(_Q, _S, _H, End) when End > ?MAX_OFFSET ->
    {error, full};
room(Q, _S, H, End) ->
    case emmap:info(Q) of
        #{closed := true} ->
            {error, closed};
        #{fixed_size := true} ->
            {error, full};
        #{size := Cur, max_inc_size := Inc} ->
            Target = min(?MAX_OFFSET, grow_target(Cur, Inc, End)),
            case emmap:resize(Q, Target) of
                {ok, NewSize} -> put_word(Q, 0, NewSize, H);
                {error, fixed_size} -> {error, full};
                {error, _} = E -> E
            end
    end.

%% The size emmap:resize/1 would reach, applied until it is at least End.
grow_target(Cur, _Inc, End) when Cur >= End -> Cur;
grow_target(Cur, Inc, End) -> grow_target(Cur + min(max(Cur, 1), Inc), Inc, End).

%% @doc Removes and returns the oldest term; `nil' if the queue is empty. The space it
%% took is reclaimed only by a later purge (see `pop_and_purge/1').
-spec pop(Q :: queue()) -> term() | nil | failure().
pop(?Q(Q)) -> take(Q, none, false);
pop(_) -> erlang:error(badarg).

%% @doc Like `pop/1', and when this empties the queue, also resets the header to
%% 16/16/16 so the whole segment is free again.
-spec pop_and_purge(Q :: queue()) -> term() | nil | failure().
pop_and_purge(?Q(Q)) -> take(Q, none, true);
pop_and_purge(_) -> erlang:error(badarg).

%% @doc Calls `Fun' on the oldest term and removes that term only if `Fun' returns;
%% returns what `Fun' returned (`nil' without calling it if the queue is empty). If `Fun'
%% raises, the exception reaches the caller and the queue is unchanged. `Fun' may push to
%% the same queue but must not pop from it.
-spec try_pop(Q :: queue(), Fun :: fun((term()) -> Result)) -> Result | nil | failure().
try_pop(?Q(Q), Fun) when is_function(Fun, 1) -> take(Q, Fun, false);
try_pop(_, _) -> erlang:error(badarg).

%% @doc `try_pop/2' that purges the queue when it becomes empty (see `pop_and_purge/1').
-spec try_pop_and_purge(Q :: queue(), Fun :: fun((term()) -> Result)) ->
          Result | nil | failure().
try_pop_and_purge(?Q(Q), Fun) when is_function(Fun, 1) -> take(Q, Fun, true);
try_pop_and_purge(_, _) -> erlang:error(badarg).

%% Pops the oldest message; with a Fun, only once Fun has returned (and then its result).
take(Q, Fun, Purge) ->
    case header(Q) of
        {ok, {_S, H, H, _N}} ->
            nil;
        {ok, {S, H, T, N}} ->
            case read_frame(Q, H, T) of
                {ok, Term, Next} when Fun =:= none ->
                    %% Nothing ran since the header was read: it is still current.
                    case Purge andalso Next =:= T andalso T =:= N of
                        true -> keep(purge_header(Q, S), Term);
                        false -> keep(put_word(Q, 0, S, Next), Term)
                    end;
                {ok, Term, Next} ->
                    Res = Fun(Term),
                    keep(advance(Q, H, Next, Purge), Res);
                {error, _} = E ->
                    E
            end;
        {error, _} = E ->
            E
    end.

keep(ok, Res) -> Res;
keep({error, _} = E, _Res) -> E.

%% Moves Head from H (where the message just consumed starts) to Next. The header is
%% read again: a fun called in between may have pushed (and grown the file).
advance(Q, H, Next, Purge) ->
    case header(Q) of
        {ok, {S, H, T, T}} when Purge, Next =:= T ->
            purge_header(Q, S);
        {ok, {S, H, T, _N}} when Next =< T ->
            put_word(Q, 0, S, Next);
        {ok, _} ->
            erlang:error({emmap_queue, queue_modified_while_popping});
        {error, _} = E ->
            E
    end.

%% Tail and NextTail first, then Head: an interruption in between leaves
%% Tail = NextTail = 16 < Head, which open/3 recognises.
purge_header(Q, S) ->
    chain([fun() -> put_word(Q, 8, ?HDR, ?HDR) end,
           fun() -> put_word(Q, 0, S, ?HDR) end]).

%% @doc The oldest term, left in the queue; `nil' if the queue is empty.
-spec peek_front(Q :: queue()) -> term() | nil | failure().
peek_front(?Q(Q)) ->
    case header(Q) of
        {ok, {_S, H, H, _N}} -> nil;
        {ok, {_S, H, T, _N}} -> term_of(read_frame(Q, H, T));
        {error, _} = E -> E
    end;
peek_front(_) ->
    erlang:error(badarg).

%% @doc The newest term, left in the queue; `nil' if the queue is empty.
-spec peek_back(Q :: queue()) -> term() | nil | failure().
peek_back(?Q(Q)) ->
    case header(Q) of
        {ok, {_S, H, H, _N}} -> nil;
        {ok, {_S, H, T, _N}} -> term_of(read_frame_before(Q, H, T));
        {error, _} = E -> E
    end;
peek_back(_) ->
    erlang:error(badarg).

term_of({ok, Term, _}) -> Term;
term_of({error, _} = E) -> E.

%% @doc Folds `Fun' over the terms from the oldest to the newest, without removing them.
%% `Fun(Term, Acc)' returns `{cont, Acc1}' to go on or `{halt, Acc1}' to stop; the result
%% is the last `Acc'. `Fun' must not modify the queue.
-spec peek(Q :: queue(), Acc, Fun :: fold_fun()) -> Acc | failure().
peek(?Q(Q), Acc, Fun) when is_function(Fun, 2) ->
    case header(Q) of
        {ok, {_S, H, T, _N}} -> fold_fwd(Q, H, T, Acc, Fun);
        {error, _} = E -> E
    end;
peek(_, _, _) ->
    erlang:error(badarg).

fold_fwd(_Q, T, T, Acc, _Fun) ->
    Acc;
fold_fwd(Q, Pos, T, Acc, Fun) ->
    case read_frame(Q, Pos, T) of
        {ok, Term, Next} ->
            case Fun(Term, Acc) of
                {cont, Acc1} -> fold_fwd(Q, Next, T, Acc1, Fun);
                {halt, Acc1} -> Acc1;
                Other -> erlang:error({bad_return_value, Other})
            end;
        {error, _} = E ->
            E
    end.

%% @doc Like `peek/3', from the newest term to the oldest.
-spec rpeek(Q :: queue(), Acc, Fun :: fold_fun()) -> Acc | failure().
rpeek(?Q(Q), Acc, Fun) when is_function(Fun, 2) ->
    case header(Q) of
        {ok, {_S, H, T, _N}} -> fold_back(Q, H, T, Acc, Fun);
        {error, _} = E -> E
    end;
rpeek(_, _, _) ->
    erlang:error(badarg).

fold_back(_Q, H, H, Acc, _Fun) ->
    Acc;
fold_back(Q, H, End, Acc, Fun) ->
    case read_frame_before(Q, H, End) of
        {ok, Term, Start} ->
            case Fun(Term, Acc) of
                {cont, Acc1} -> fold_back(Q, H, Start, Acc1, Fun);
                {halt, Acc1} -> Acc1;
                Other -> erlang:error({bad_return_value, Other})
            end;
        {error, _} = E ->
            E
    end.

%% @doc Pops while folding: `Fun(Term, Acc)' is called on the oldest term, which is
%% removed once `Fun' returns `{cont, Acc1}' (then the next term follows) or
%% `{halt, Acc1}' (then it stops). Returns the last `Acc', also when the queue runs
%% empty. If `Fun' raises (or returns anything else), the term it was given stays in the
%% queue, the ones before are gone, and the exception reaches the caller. Does not purge.
%% `Fun' may push to the same queue but must not pop from it.
-spec pop(Q :: queue(), Acc, Fun :: fold_fun()) -> Acc | failure().
pop(?Q(Q), Acc, Fun) when is_function(Fun, 2) ->
    pop_fold(Q, Acc, Fun);
pop(_, _, _) ->
    erlang:error(badarg).

pop_fold(Q, Acc, Fun) ->
    case header(Q) of
        {ok, {_S, H, H, _N}} ->
            Acc;
        {ok, {_S, H, T, _N}} ->
            case read_frame(Q, H, T) of
                {ok, Term, Next} ->
                    {Go, Acc1} = case Fun(Term, Acc) of
                                     {cont, _} = C -> C;
                                     {halt, _} = C -> C;
                                     Other -> erlang:error({bad_return_value, Other})
                                 end,
                    case {advance(Q, H, Next, false), Go} of
                        {ok, cont} -> pop_fold(Q, Acc1, Fun);
                        {ok, halt} -> Acc1;
                        {{error, _} = E, _} -> E
                    end;
                {error, _} = E ->
                    E
            end;
        {error, _} = E ->
            E
    end.

%% @doc Whether the queue holds no message.
-spec is_empty(Q :: queue()) -> boolean() | failure().
is_empty(?Q(Q)) ->
    case header(Q) of
        {ok, {_S, H, T, _N}} -> H =:= T;
        {error, _} = E -> E
    end;
is_empty(_) ->
    erlang:error(badarg).

%% @doc The number of messages. Walks the queue: linear in the number of messages.
-spec length(Q :: queue()) -> non_neg_integer() | failure().
length(?Q(Q)) ->
    case header(Q) of
        {ok, {_S, H, T, _N}} -> count(Q, H, T, 0);
        {error, _} = E -> E
    end;
length(_) ->
    erlang:error(badarg).

count(_Q, T, T, N) ->
    N;
count(Q, Pos, T, N) ->
    case emmap:pread(Q, Pos, 4) of
        {ok, <<Sz:32>>} when Sz >= 8, Sz =< T - Pos -> count(Q, Pos + Sz, T, N + 1);
        {error, _} = E -> E;
        _ -> {error, corrupt_header}
    end.

%% @doc Reclaims the whole segment if the queue is empty (resets the header to
%% 16/16/16) and returns `true'; returns `false', changing nothing, if it is not empty.
-spec purge(Q :: queue()) -> boolean() | failure().
purge(?Q(Q)) ->
    case header(Q) of
        {ok, {_S, ?HDR, ?HDR, ?HDR}} ->
            true;
        {ok, {S, H, H, _N}} ->
            case purge_header(Q, S) of
                ok -> true;
                {error, _} = E -> E
            end;
        {ok, _} ->
            false;
        {error, _} = E ->
            E
    end;
purge(_) ->
    erlang:error(badarg).

%% @doc Drops every message and resets the header to 16/16/16 (with `Size' set to the
%% mapping's size). Works on a queue whose header went bad while it was open, too.
-spec erase(Q :: queue()) -> ok | failure().
erase(?Q(Q)) ->
    case emmap:info(Q) of
        #{closed := true} -> {error, closed};
        #{size := S} -> purge_header(Q, S)
    end;
erase(_) ->
    erlang:error(badarg).

%% @doc The header fields as stored: `#{head, tail, next_tail, size}'. Not checked, so
%% it also shows a corrupt header.
-spec metadata(Q :: queue()) -> metadata() | failure().
metadata(?Q(Q)) ->
    case emmap:pread(Q, 0, ?HDR) of
        {ok, <<S:32, H:32, T:32, N:32>>} -> #{head => H, tail => T, next_tail => N, size => S};
        {error, _} = E -> E;
        _ -> {error, corrupt_header}
    end;
metadata(_) ->
    erlang:error(badarg).

%%%---------------------------------------------------------------------------
%%% Header and frames
%%%---------------------------------------------------------------------------

%% The header, if it satisfies the invariant.
header(Q) ->
    case emmap:pread(Q, 0, ?HDR) of
        {ok, <<S:32, H:32, T:32, N:32>>} when ?HDR =< H, H =< T, T =< N, N =< S ->
            {ok, {S, H, T, N}};
        {error, _} = E ->
            E;
        _ ->
            {error, corrupt_header}
    end.

%% Stores two header fields, A at Pos and B at Pos + 4 (Pos is 0 or 8), as one aligned
%% 64-bit atomic store.
put_word(Q, Pos, A, B) ->
    <<V:64/signed-native>> = <<A:32, B:32>>,
    emmap:patomic_write_integer(Q, Pos, V).

%% Runs the steps in order while they return ok (or true).
chain([]) ->
    ok;
chain([F | Rest]) ->
    case F() of
        ok -> chain(Rest);
        true -> chain(Rest);
        {error, _} = E -> E
    end.

%% The message starting at Pos, which must end at or before Limit:
%% {ok, Term, EndOfMessage}.
read_frame(Q, Pos, Limit) ->
    Avail = Limit - Pos,
    First = min(Avail, ?FIRST_READ),
    case Avail >= 8 andalso emmap:pread(Q, Pos, First) of
        {ok, <<Sz:32, _/binary>> = B} when byte_size(B) =:= First, Sz >= 8, Sz =< Avail ->
            if
                Sz =< First ->
                    decode(binary_part(B, 4, Sz - 4), Sz, Pos);
                true ->
                    case emmap:pread(Q, Pos + 4, Sz - 4) of
                        {ok, Rest} when byte_size(Rest) =:= Sz - 4 -> decode(Rest, Sz, Pos);
                        {error, _} = E -> E;
                        _ -> {error, corrupt_header}
                    end
            end;
        {error, _} = E ->
            E;
        _ ->
            {error, corrupt_header}
    end.

%% The message ending at End, which must start at or after H: {ok, Term, Start}.
read_frame_before(Q, H, End) ->
    case End - H >= 8 andalso emmap:pread(Q, End - 4, 4) of
        {ok, <<Sz:32>>} when Sz >= 8, Sz =< End - H ->
            Start = End - Sz,
            case read_frame(Q, Start, End) of
                {ok, Term, End} -> {ok, Term, Start};
                {ok, _, _} -> {error, corrupt_header};
                {error, _} = E -> E
            end;
        {error, _} = E ->
            E;
        _ ->
            {error, corrupt_header}
    end.

%% Body: the message without its leading size (the term, the padding, the trailing size).
decode(Body, Sz, Pos) ->
    Len = Sz - 8,
    case Body of
        <<Bin:Len/binary, Sz:32>> ->
            try binary_to_term(Bin, [used]) of
                {Term, Used} when Used + 8 + (Used + 8) rem 8 =:= Sz -> {ok, Term, Pos + Sz};
                _ -> {error, corrupt_header}
            catch
                error:badarg -> {error, corrupt_header}
            end;
        _ ->
            {error, corrupt_header}
    end.

%%%===========================================================================
%%% Server API
%%%===========================================================================

%% @doc Starts a server owning the queue `open(File, Size, Opts)', linked to the caller.
%% `Name' is an atom to register locally, `{local, A}', `{global, T}', `{via, M, T}', or
%% `undefined' for no name. Returns `{error, Reason}' if the queue cannot be opened (the
%% server then exits with `Reason', which a linked caller that does not trap exits
%% receives as an exit signal, as with any `gen_server').
-spec start_link(Name, File :: file:name_all(), Size :: non_neg_integer(),
                 Opts :: [emmap:open_option()]) ->
          {ok, pid()} | {error, term()}
      when Name :: undefined | atom() | {local, atom()} | {global, term()}
                 | {via, module(), term()}.
start_link(Name, File, Size, Opts)
  when is_list(File) orelse is_binary(File) orelse is_atom(File),
       is_integer(Size), Size >= 0, is_list(Opts) ->
    Args = {File, Size, Opts},
    case Name of
        undefined -> gen_server:start_link(?MODULE, Args, []);
        _ when is_atom(Name) -> gen_server:start_link({local, Name}, ?MODULE, Args, []);
        {local, A} when is_atom(A) -> gen_server:start_link(Name, ?MODULE, Args, []);
        {global, _} -> gen_server:start_link(Name, ?MODULE, Args, []);
        {via, M, _} when is_atom(M) -> gen_server:start_link(Name, ?MODULE, Args, []);
        _ -> erlang:error(badarg)
    end;
start_link(_, _, _, _) ->
    erlang:error(badarg).

%% @doc Stops the server, closing the queue.
-spec stop(Server :: server()) -> ok.
stop(Server) ->
    gen_server:stop(Server).

%% @doc Appends `Term' to the server's queue (`push/2').
-spec enqueue(Server :: server(), Term :: term()) -> ok | {error, full} | failure().
enqueue(Server, Term) ->
    gen_server:call(Server, {push, Term}, infinity).

%% @doc Removes and returns the oldest term (`pop_and_purge/1'); `nil' if empty.
-spec dequeue(Server :: server()) -> term() | nil | failure().
dequeue(Server) ->
    gen_server:call(Server, pop, infinity).

%% @doc Calls `Fun' on the oldest term inside the server and removes the term only if
%% `Fun' returns (`try_pop_and_purge/2'); returns what `Fun' returned, or `nil' if the
%% queue is empty. An exception in `Fun' is raised again in the caller, with the same
%% class, reason and stack trace, and the queue is unchanged. `Fun' runs in the server:
%% it must not call the server, and the server answers nobody else while it runs.
-spec try_dequeue(Server :: server(), Fun :: fun((term()) -> Result)) ->
          Result | nil | failure().
try_dequeue(Server, Fun) when is_function(Fun, 1) ->
    case gen_server:call(Server, {try_pop, Fun}, infinity) of
        {ok, Res} -> Res;
        {raise, Class, Reason, Stack} -> erlang:raise(Class, Reason, Stack)
    end;
try_dequeue(_, _) ->
    erlang:error(badarg).

%% @doc The oldest term, left in the queue (`peek_front/1'); `nil' if empty.
-spec inspect(Server :: server()) -> term() | nil | failure().
inspect(Server) ->
    gen_server:call(Server, peek, infinity).

%% @doc The server's queue header (`metadata/1').
-spec info(Server :: server()) -> metadata() | failure().
info(Server) ->
    gen_server:call(Server, info, infinity).

%%%---------------------------------------------------------------------------
%%% gen_server callbacks
%%%---------------------------------------------------------------------------

%%% @private
%% @doc gen_server callback of the queue server.
-spec init({file:name_all(), non_neg_integer(), [emmap:open_option()]}) ->
          {ok, #state{}} | {stop, term()}.
init({File, Size, Opts}) ->
    process_flag(trap_exit, true),              % so that terminate/2 closes the queue
    try open(File, Size, Opts) of
        {ok, Q} -> {ok, #state{q = Q}};
        {error, Reason} -> {stop, Reason}
    catch
        error:badarg -> {stop, badarg}
    end.

%%% @private
%% @doc gen_server callback of the queue server.
-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call({push, Term}, _From, #state{q = Q} = St) ->
    {reply, push(Q, Term), St};
handle_call(pop, _From, #state{q = Q} = St) ->
    {reply, pop_and_purge(Q), St};
handle_call({try_pop, Fun}, _From, #state{q = Q} = St) ->
    Reply = try {ok, try_pop_and_purge(Q, Fun)}
            catch Class:Reason:Stack -> {raise, Class, Reason, Stack}
            end,
    {reply, Reply, St};
handle_call(peek, _From, #state{q = Q} = St) ->
    {reply, peek_front(Q), St};
handle_call(info, _From, #state{q = Q} = St) ->
    {reply, metadata(Q), St};
handle_call(_Other, _From, St) ->
    {reply, {error, badarg}, St}.

%%% @private
%% @doc gen_server callback of the queue server.
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, St) ->
    {noreply, St}.

%%% @private
%% @doc gen_server callback of the queue server.
-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info(_Msg, St) ->
    {noreply, St}.

%%% @private
%% @doc gen_server callback of the queue server.
-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, #state{q = Q}) ->
    close(Q).
