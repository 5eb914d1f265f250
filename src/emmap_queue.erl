%%% @doc A persistent FIFO queue of Erlang terms in a memory-mapped file.
%%%
%%% The file format is the original emmap queue's, so files move between the two
%%% implementations both ways.
%%%
%%% == Two ways to use it ==
%%%
%%% As a container: `open/3' returns a queue handle `Q' (an `emmap' mapping, so
%%% `emmap:info/1', `emmap:sync/1' and friends work on it too) and `push/2,3', `pop/1',
%%% `peek_front/1', `peek/3' etc. operate on it directly, in the calling process. Each
%%% operation runs under the handle's own lock, so several processes may share a handle:
%%% every pushed term is popped exactly once, and the terms one process pushes come out
%%% in its order. The funs of `try_pop/2' and `pop/3' run outside the lock (in the caller),
%%% so they cannot hold the message against other poppers: if another process pops it
%%% while the fun runs, the call raises `error({emmap_queue, queue_modified_while_popping})'
%%% (the message is then removed once, by that process); several consumers that need a fun
%%% should use the server. Open a file through one handle at a time (nothing stops a
%%% second `open/3' of the same file, and two handles would corrupt each other).
%%%
%%% As a process: `start_link/4' starts a `gen_server' that owns the queue; `enqueue/2',
%%% `dequeue/1', `try_dequeue/2', `inspect/1' and `info/1' can be called from any number
%%% of processes. The server uses the purging variants (`pop_and_purge/1',
%%% `try_pop_and_purge/2') and closes the mapping when it terminates. (The server is the
%%% module `emmap_queue_server'; the functions here call it.)
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
%%% atomic store (of the word holding `Tail' and `NextTail', or of the word holding `Size'
%%% and `Head'), so no field is ever seen half written. The pages belong to the OS, so when the VM is killed (even with `kill -9')
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
%%% the wrong type raise `error:badarg', and the shell says which argument is wrong and why.
-module(emmap_queue).

-include("emmap_internal.hrl").

%% Container API
-export([open/3, close/1, flush/1, sync/1]).
-export([push/2, push/3, pop/1, pop_and_purge/1, try_pop/2, try_pop_and_purge/2,
         peek_front/1, peek_back/1, peek/3, rpeek/3, pop/3]).
-export([is_empty/1, length/1, purge/1, erase/1, metadata/1]).

%% Server API (emmap_queue_server)
-export([start_link/4, stop/1, enqueue/2, dequeue/1, try_dequeue/2, inspect/1, info/1]).

-export_type([queue/0, metadata/0, server/0, fold_fun/0, failure/0]).

-compile({no_auto_import, [length/1, erase/1]}).

-define(HDR, 16).
-define(MAX_OFFSET, 16#FFFFFFFF).


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
    try open_checked(File, Size, Opts)
    catch error:badarg -> ?BADARG([File, Size, Opts])
    end;
open(File, Size, Opts) ->
    ?BADARG([File, Size, Opts]).

open_checked(File, Size, Opts) ->
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
    end.

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
attach(?H(R) = M) ->
    case emmap_nif:queue_attach(R) of
        ok ->
            {ok, M};
        {error, _} = E ->
            ok = emmap:close(M),
            E
    end.

%% @doc Closes the queue. Everything pushed is already in the file. Idempotent.
-spec close(Q :: queue()) -> ok.
close(?H(_) = Q) ->
    try emmap:close(Q) catch error:badarg -> ?BADARG([Q]) end;
close(Q) ->
    ?BADARG([Q]).

%% @doc Asks the OS to write the queue's dirty pages to disk soon (`emmap:flush/1');
%% returns at once. Not needed to survive a crash of the VM, only a power loss.
-spec flush(Q :: queue()) -> ok | failure().
flush(?H(_) = Q) ->
    try emmap:flush(Q) catch error:badarg -> ?BADARG([Q]) end;
flush(Q) ->
    ?BADARG([Q]).

%% @doc Writes the queue's dirty pages to disk and waits (`emmap:sync/1'): what was pushed
%% before survives a power loss.
-spec sync(Q :: queue()) -> ok | failure().
sync(?H(_) = Q) ->
    try emmap:sync(Q) catch error:badarg -> ?BADARG([Q]) end;
sync(Q) ->
    ?BADARG([Q]).

%% @doc Appends `Term' (uncompressed). Same as `push(Q, Term, 0)'.
-spec push(Q :: queue(), Term :: term()) -> ok | {error, full} | failure().
push(?H(R) = Q, Term) ->
    Bin = term_to_binary(Term, [{compressed, 0}, {minor_version, 2}]),
    ?NIF_CALL(emmap_nif:queue_push(R, Bin), [Q, Term]);
push(Q, Term) ->
    ?BADARG([Q, Term]).

%% @doc Appends `Term', encoded by `term_to_binary/2' with compression level `Level'
%% (from 0, none, to 9, the smallest). Grows the file when the message does not fit (see
%% the module doc); returns `{error, full}' if it cannot grow (`fixed_size', or the
%% 4 GiB limit of the format). Constant time, apart from growth.
-spec push(Q :: queue(), Term :: term(), Level :: 0..9) -> ok | {error, full} | failure().
push(?H(R) = Q, Term, Level) when is_integer(Level), Level >= 0, Level =< 9 ->
    Bin = term_to_binary(Term, [{compressed, Level}, {minor_version, 2}]),
    ?NIF_CALL(emmap_nif:queue_push(R, Bin), [Q, Term, Level]);
push(Q, Term, Level) ->
    ?BADARG([Q, Term, Level]).

%% @doc Removes and returns the oldest term; `nil' if the queue is empty. The space it
%% took is reclaimed only by a later purge (see `pop_and_purge/1').
-spec pop(Q :: queue()) -> term() | nil | failure().
pop(?H(R) = Q) -> ?NIF_CALL(pop_one(R, false), [Q]);
pop(Q) -> ?BADARG([Q]).

%% @doc Like `pop/1', and when this empties the queue, also resets the header to
%% 16/16/16 so the whole segment is free again.
-spec pop_and_purge(Q :: queue()) -> term() | nil | failure().
pop_and_purge(?H(R) = Q) -> ?NIF_CALL(pop_one(R, true), [Q]);
pop_and_purge(Q) -> ?BADARG([Q]).

%% Only NIF calls (no fun of the caller's) in here: a `badarg' means a bad handle.
pop_one(R, Purge) ->
    case emmap_nif:queue_pop(R, Purge) of
        {ok, Term} ->
            Term;
        {compressed, Bin, H, Next} ->
            %% Decoded here; removed only if it is still the oldest message (else
            %% another process popped it meanwhile: take the next one).
            case inflate(Bin, H, Next) of
                {ok, Term} ->
                    case emmap_nif:queue_advance(R, H, Next, Purge) of
                        ok -> Term;
                        moved -> pop_one(R, Purge);
                        {error, _} = E -> E
                    end;
                {error, _} = E ->
                    E
            end;
        Other ->
            Other                               % nil or {error, _}
    end.

%% @doc Calls `Fun' on the oldest term and removes that term only if `Fun' returns;
%% returns what `Fun' returned (`nil' without calling it if the queue is empty). If `Fun'
%% raises, the exception reaches the caller and the queue is unchanged. `Fun' may push to
%% the same queue but must not pop from it. If another process pops the term while `Fun'
%% runs, `error({emmap_queue, queue_modified_while_popping})' is raised (the term was
%% removed once, by that process).
-spec try_pop(Q :: queue(), Fun :: fun((term()) -> Result)) -> Result | nil | failure().
try_pop(?H(R) = Q, Fun) when is_function(Fun, 1) ->
    take(R, ?NIF_CALL(front(R), [Q, Fun]), Fun, false);
try_pop(Q, Fun) ->
    ?BADARG([Q, Fun]).

%% @doc `try_pop/2' that purges the queue when it becomes empty (see `pop_and_purge/1').
-spec try_pop_and_purge(Q :: queue(), Fun :: fun((term()) -> Result)) ->
          Result | nil | failure().
try_pop_and_purge(?H(R) = Q, Fun) when is_function(Fun, 1) ->
    take(R, ?NIF_CALL(front(R), [Q, Fun]), Fun, true);
try_pop_and_purge(Q, Fun) ->
    ?BADARG([Q, Fun]).

%% Runs Fun on the oldest message (what front/1 found) and removes it once Fun has
%% returned.
take(R, {ok, Term, H, Next}, Fun, Purge) ->
    Res = Fun(Term),
    keep(advance(R, H, Next, Purge), Res);
take(_R, Other, _Fun, _Purge) ->
    Other.                                      % nil or {error, _}

%% The oldest message: {ok, Term, Head, Next}, nil or {error, _}. (Only NIF calls in
%% here: a `badarg' means a bad handle.)
front(R) ->
    case emmap_nif:queue_front(R) of
        {compressed, Bin, H, Next} ->
            case inflate(Bin, H, Next) of
                {ok, Term} -> {ok, Term, H, Next};
                {error, _} = E -> E
            end;
        Other ->
            Other
    end.

keep(ok, Res) -> Res;
keep({error, _} = E, _Res) -> E.

%% Moves Head from H (where the message just consumed starts) to Next, if that message is
%% still the oldest: a fun called in between may have pushed (and grown the file), but
%% must not have popped.
advance(R, H, Next, Purge) ->
    case emmap_nif:queue_advance(R, H, Next, Purge) of
        moved -> erlang:error({emmap_queue, queue_modified_while_popping});
        Res -> Res
    end.

%% @doc The oldest term, left in the queue; `nil' if the queue is empty.
-spec peek_front(Q :: queue()) -> term() | nil | failure().
peek_front(?H(R) = Q) -> ?NIF_CALL(peek_one(R, false), [Q]);
peek_front(Q) -> ?BADARG([Q]).

%% @doc The newest term, left in the queue; `nil' if the queue is empty.
-spec peek_back(Q :: queue()) -> term() | nil | failure().
peek_back(?H(R) = Q) -> ?NIF_CALL(peek_one(R, true), [Q]);
peek_back(Q) -> ?BADARG([Q]).

peek_one(R, Back) ->
    case emmap_nif:queue_peek(R, Back) of
        {ok, Term} -> Term;
        {compressed, Bin, Start, End} -> term_of(inflate(Bin, Start, End));
        Other -> Other
    end.

term_of({ok, Term}) -> Term;
term_of({error, _} = E) -> E.

%% @doc Folds `Fun' over the terms from the oldest to the newest, without removing them.
%% `Fun(Term, Acc)' returns `{cont, Acc1}' to go on or `{halt, Acc1}' to stop; the result
%% is the last `Acc'. `Fun' must not modify the queue.
-spec peek(Q :: queue(), Acc, Fun :: fold_fun()) -> Acc | failure().
peek(?H(R) = Q, Acc, Fun) when is_function(Fun, 2) ->
    case ?NIF_CALL(header(R), [Q, Acc, Fun]) of
        {_S, H, T, _N} -> fold_fwd(R, H, T, Acc, Fun);
        {error, _} = E -> E
    end;
peek(Q, Acc, Fun) ->
    ?BADARG([Q, Acc, Fun]).

fold_fwd(_R, T, T, Acc, _Fun) ->
    Acc;
fold_fwd(R, Pos, T, Acc, Fun) ->
    case frame(R, Pos, T, false) of
        {ok, Term, Next} ->
            case Fun(Term, Acc) of
                {cont, Acc1} -> fold_fwd(R, Next, T, Acc1, Fun);
                {halt, Acc1} -> Acc1;
                Other -> erlang:error({bad_return_value, Other})
            end;
        {error, _} = E ->
            E
    end.

%% @doc Like `peek/3', from the newest term to the oldest.
-spec rpeek(Q :: queue(), Acc, Fun :: fold_fun()) -> Acc | failure().
rpeek(?H(R) = Q, Acc, Fun) when is_function(Fun, 2) ->
    case ?NIF_CALL(header(R), [Q, Acc, Fun]) of
        {_S, H, T, _N} -> fold_back(R, H, T, Acc, Fun);
        {error, _} = E -> E
    end;
rpeek(Q, Acc, Fun) ->
    ?BADARG([Q, Acc, Fun]).

fold_back(_R, H, H, Acc, _Fun) ->
    Acc;
fold_back(R, H, End, Acc, Fun) ->
    case frame(R, End, H, true) of
        {ok, Term, Start} ->
            case Fun(Term, Acc) of
                {cont, Acc1} -> fold_back(R, H, Start, Acc1, Fun);
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
%% `Fun' may push to the same queue but must not pop from it (nor may another process
%% meanwhile: see `try_pop/2').
-spec pop(Q :: queue(), Acc, Fun :: fold_fun()) -> Acc | failure().
pop(?H(R) = Q, Acc, Fun) when is_function(Fun, 2) ->
    pop_fold(R, ?NIF_CALL(front(R), [Q, Acc, Fun]), Acc, Fun);
pop(Q, Acc, Fun) ->
    ?BADARG([Q, Acc, Fun]).

%% Front: what front/1 found.
pop_fold(R, Front, Acc, Fun) ->
    case Front of
        nil ->
            Acc;
        {ok, Term, H, Next} ->
            {Go, Acc1} = case Fun(Term, Acc) of
                             {cont, _} = C -> C;
                             {halt, _} = C -> C;
                             Other -> erlang:error({bad_return_value, Other})
                         end,
            case {advance(R, H, Next, false), Go} of
                {ok, cont} -> pop_fold(R, front(R), Acc1, Fun);
                {ok, halt} -> Acc1;
                {{error, _} = E, _} -> E
            end;
        {error, _} = E ->
            E
    end.

%% @doc Whether the queue holds no message.
-spec is_empty(Q :: queue()) -> boolean() | failure().
is_empty(?H(R) = Q) ->
    case ?NIF_CALL(header(R), [Q]) of
        {_S, H, T, _N} -> H =:= T;
        {error, _} = E -> E
    end;
is_empty(Q) ->
    ?BADARG([Q]).

%% @doc The number of messages. Walks the queue: linear in the number of messages.
-spec length(Q :: queue()) -> non_neg_integer() | failure().
length(?H(R) = Q) ->
    case ?NIF_CALL(header(R), [Q]) of
        {_S, H, T, _N} -> count(R, H, T, 0);
        {error, _} = E -> E
    end;
length(Q) ->
    ?BADARG([Q]).

%% In bounded NIF steps.
count(_R, T, T, N) ->
    N;
count(R, Pos, T, N) ->
    case emmap_nif:queue_count(R, Pos, T) of
        {K, Next} when is_integer(K) -> count(R, Next, T, N + K);
        {error, _} = E -> E
    end.

%% @doc Reclaims the whole segment if the queue is empty (resets the header to
%% 16/16/16) and returns `true'; returns `false', changing nothing, if it is not empty.
-spec purge(Q :: queue()) -> boolean() | failure().
purge(?H(R) = Q) -> ?NIF_CALL(emmap_nif:queue_purge(R), [Q]);
purge(Q) -> ?BADARG([Q]).

%% @doc Drops every message and resets the header to 16/16/16 (with `Size' set to the
%% mapping's size). Works on a queue whose header went bad while it was open, too.
-spec erase(Q :: queue()) -> ok | failure().
erase(?H(R) = Q) -> ?NIF_CALL(emmap_nif:queue_erase(R), [Q]);
erase(Q) -> ?BADARG([Q]).

%% @doc The header fields as stored: `#{head, tail, next_tail, size}'. Not checked, so
%% it also shows a corrupt header.
-spec metadata(Q :: queue()) -> metadata() | failure().
metadata(?H(R) = Q) ->
    case ?NIF_CALL(emmap_nif:queue_header(R, false), [Q]) of
        {S, H, T, N} -> #{head => H, tail => T, next_tail => N, size => S};
        {error, _} = E -> E
    end;
metadata(Q) ->
    ?BADARG([Q]).

%% The header, if it satisfies the invariant: {Size, Head, Tail, NextTail}.
header(R) ->
    emmap_nif:queue_header(R, true).

%% One step of a fold (see emmap_nif:queue_frame/4): {ok, Term, NextPos} or {error, _}.
frame(R, Pos, Limit, Back) ->
    case emmap_nif:queue_frame(R, Pos, Limit, Back) of
        {compressed, Bin, Start, End} ->
            case inflate(Bin, Start, End) of
                {ok, Term} when Back -> {ok, Term, Start};
                {ok, Term} -> {ok, Term, End};
                {error, _} = E -> E
            end;
        Other ->
            Other
    end.

%% Decodes a compressed term (the bytes between the frame's two sizes, padding included),
%% which must fill its frame from Start to End as an uncompressed one must.
inflate(Bin, Start, End) ->
    Sz = End - Start,
    try binary_to_term(Bin, [used]) of
        {Term, Used} when Used + 8 + (Used + 8) rem 8 =:= Sz -> {ok, Term};
        _ -> {error, corrupt_header}
    catch
        error:badarg -> {error, corrupt_header}
    end.

%%%===========================================================================
%%% Server API (the gen_server is emmap_queue_server)
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
start_link(Name, File, Size, Opts) ->
    emmap_queue_server:start_link(Name, File, Size, Opts).

%% @doc Stops the server, closing the queue.
-spec stop(Server :: server()) -> ok.
stop(Server) ->
    emmap_queue_server:stop(Server).

%% @doc Appends `Term' to the server's queue (`push/2').
-spec enqueue(Server :: server(), Term :: term()) -> ok | {error, full} | failure().
enqueue(Server, Term) ->
    emmap_queue_server:enqueue(Server, Term).

%% @doc Removes and returns the oldest term (`pop_and_purge/1'); `nil' if empty.
-spec dequeue(Server :: server()) -> term() | nil | failure().
dequeue(Server) ->
    emmap_queue_server:dequeue(Server).

%% @doc Calls `Fun' on the oldest term inside the server and removes the term only if
%% `Fun' returns (`try_pop_and_purge/2'); returns what `Fun' returned, or `nil' if the
%% queue is empty. An exception in `Fun' is raised again in the caller, with the same
%% class, reason and stack trace, and the queue is unchanged. `Fun' runs in the server:
%% it must not call the server, and the server answers nobody else while it runs.
-spec try_dequeue(Server :: server(), Fun :: fun((term()) -> Result)) ->
          Result | nil | failure().
try_dequeue(Server, Fun) ->
    emmap_queue_server:try_dequeue(Server, Fun).

%% @doc The oldest term, left in the queue (`peek_front/1'); `nil' if empty.
-spec inspect(Server :: server()) -> term() | nil | failure().
inspect(Server) ->
    emmap_queue_server:inspect(Server).

%% @doc The server's queue header (`metadata/1').
-spec info(Server :: server()) -> metadata() | failure().
info(Server) ->
    emmap_queue_server:info(Server).
