%%% @doc An I/O device backed by a memory mapping: a process that owns an `emmap' handle
%%% and answers both the Erlang I/O protocol and the `file' module's requests, as the
%%% process behind a non-`raw' `file:open/2' does.
%%%
%%% `open/2,4' maps a file (with the options of `emmap:open/2,4') and returns the pid of
%%% such a process; `from_handle/1,2' hands an already open handle to a new one. With the
%%% pid, `io:put_chars/2', `io:format/3', `io:get_line/2', `io:get_chars/3',
%%% `io:read/2', `io:fread/3', `io:setopts/2', `io:getopts/1', `file:read/2',
%%% `file:read_line/1', `file:write/2', `file:pread/2,3', `file:pwrite/2,3',
%%% `file:position/2', `file:sync/1', `file:datasync/1', `file:advise/4',
%%% `file:allocate/3', `file:truncate/1', `file:read_file_info/2' and `file:close/1'
%%% work, with the results a `file:open(Path, [read, write])' pid gives on the same bytes.
%%%
%%% The process is linked to the process that started it (its owner). When the owner
%%% exits, the mapping is closed and the process exits with the owner's reason.
%%% `file:close/1' closes the mapping and ends the process normally.
%%%
%%% There is no read-ahead buffer: every request reads or writes the mapping at the
%%% handle's own position, so `file:position/2' and the `io' reads always agree.
%%%
%%% Differences from a `file:open/2' pid (see the README for the full list): a write
%%% that does not fit in the mapping answers `{error, einval}' and writes nothing (a file
%%% would grow); a request that fails leaves the position where it was; and the process
%%% stays up after any failed request (the OTP file server exits after a failed write, a
%%% failed `sync' or a translation error, so later calls there get `{error, terminated}').
-module(emmap_io).

-include("emmap_internal.hrl").

-export([open/2, open/4, from_handle/1, from_handle/2, format_error/1]).
%% The device process's loop, entered again after each request (see loop/1).
-export([loop/1]).

-export_type([io_option/0, encoding/0]).

-type encoding() :: latin1 | unicode | utf8 | utf16 | utf32
                  | {utf16, big | little} | {utf32, big | little}.
%% An encoding of the characters in the mapping, as for `file:open/2'.

-type io_option() :: binary | list | {encoding, encoding()}.
%% How data is returned (`list', the default, or `binary') and how characters are
%% stored in the mapping (`{encoding, latin1}', the default).

%% Encodings once expanded, as the state keeps them.
-type enc() :: latin1 | unicode | {utf16, big | little} | {utf32, big | little}.

-record(st, {h :: emmap:mmap_file(),
             mref :: reference(),
             mode = list :: list | binary,
             enc = latin1 :: enc(),
             direct = false :: boolean()}).     % the handle reads `direct' binaries

%% Encodings a request may carry (the I/O protocol has these two).
-define(IS_REQ_ENC(E), (E =:= latin1 orelse E =:= unicode)).
%% First read of a line or term scan, and the largest later step.
-define(FIRST_CHUNK, 256).
-define(MAX_CHUNK, 1048576).

%%%===========================================================================
%%% API
%%%===========================================================================

%% @doc Maps a whole file (or `{size, N}' bytes of a new one) and starts an I/O device
%% process owning the mapping. Same as `open(File, 0, 0, Options)'.
-spec open(file:name_all(), [emmap:open_option() | io_option()]) ->
          {ok, pid()} | {error, emmap:posix_reason()}.
open(File, Options) ->
    try open(File, 0, 0, Options)
    catch error:badarg -> ?BADARG([File, Options])
    end.

%% @doc Maps `Len' bytes of `File' from byte `Offset' with `emmap:open/4' and starts an I/O
%% device process, linked to the caller, that owns the mapping. `Options' are those of
%% `emmap:open/4' plus `binary' or `list' (the default: reads return strings) and
%% `{encoding, E}' (default `latin1'). Wrong types raise `badarg' in the caller, as
%% `emmap:open/4' does; a mapping that cannot be made returns its `{error, Reason}' and
%% starts no process.
-spec open(file:name_all(), non_neg_integer(), non_neg_integer(),
           [emmap:open_option() | io_option()]) ->
          {ok, pid()} | {error, emmap:posix_reason()}.
open(File, Offset, Len, Options) when is_list(Options) ->
    {Mode, Enc, MapOpts} =
        try
            _ = length(Options),                % badarg for an improper list
            {IoOpts, MapOpts0} = lists:partition(fun is_io_option/1, Options),
            {Mode0, Enc0} = io_options(IoOpts),
            {Mode0, Enc0, MapOpts0}
        catch
            error:badarg -> ?BADARG([File, Offset, Len, Options])
        end,
    %% The process maps the file itself, so that the handle is referenced by it alone:
    %% when the process dies, even by `kill', nothing else keeps the mapping alive.
    Owner = self(),
    Ref = make_ref(),
    Pid = spawn_link(fun() -> open_init(Owner, Ref, File, Offset, Len, MapOpts, Mode, Enc) end),
    MRef = erlang:monitor(process, Pid),
    receive
        {Ref, Answer} ->
            erlang:demonitor(MRef, [flush]),
            case Answer of
                ok -> {ok, Pid};
                {error, _} = Error -> Error;
                badarg -> ?BADARG([File, Offset, Len, Options]);
                {raise, Class, Reason} -> erlang:raise(Class, Reason, [])
            end;
        {'DOWN', MRef, process, Pid, Reason} ->
            {error, Reason}
    end;
open(File, Offset, Len, Options) ->
    ?BADARG([File, Offset, Len, Options]).

%% @doc Starts an I/O device process (in `list' mode, `latin1') that owns the open handle
%% `Handle'. Same as `from_handle(Handle, [])'.
-spec from_handle(emmap:mmap_file()) -> {ok, pid()} | {error, closed}.
from_handle(Handle) ->
    try from_handle(Handle, [])
    catch error:badarg -> ?BADARG([Handle])
    end.

%% @doc Starts an I/O device process, linked to the caller, that owns the open handle
%% `Handle': the process closes it when it ends. `IoOptions' are `binary', `list' and
%% `{encoding, E}'. The process reads and writes at the handle's position, which it shares
%% with anyone else still using `Handle'. A closed handle gives `{error, closed}';
%% something that is not an emmap handle raises `badarg'.
-spec from_handle(emmap:mmap_file(), [io_option()]) -> {ok, pid()} | {error, closed}.
from_handle(?H(_) = H, IoOptions) when is_list(IoOptions) ->
    try
        _ = length(IoOptions),
        lists:all(fun is_io_option/1, IoOptions) orelse erlang:error(badarg),
        {io_options(IoOptions), emmap:info(H)}
    of
        {_, #{closed := true}} -> {error, closed};
        {{Mode, Enc}, #{}} -> {ok, start(H, Mode, Enc)}
    catch
        error:badarg -> ?BADARG([H, IoOptions])
    end;
from_handle(H, IoOptions) ->
    ?BADARG([H, IoOptions]).

%% @doc Text for the `Descriptor' of an error `{Location, emmap_io, Descriptor}', such as
%% the `{error, {Location, emmap_io, invalid_unicode}}' that `io:read/2' can return for
%% bytes that are not valid in the device's encoding.
-spec format_error(term()) -> string().
format_error(invalid_unicode) ->
    "the bytes are not valid in the device's encoding";
format_error(Other) ->
    lists:flatten(io_lib:format("~tp", [Other])).

%%%===========================================================================
%%% Options
%%%===========================================================================

is_io_option(binary) -> true;
is_io_option(list) -> true;
is_io_option({encoding, _}) -> true;
is_io_option(_) -> false.

%% Open options: the last of `binary'/`list' wins, as does the last encoding.
io_options(Opts) ->
    lists:foldl(fun(binary, {_, E}) -> {binary, E};
                   (list, {_, E}) -> {list, E};
                   ({encoding, E0}, {M, _}) ->
                        case expand_enc(E0) of
                            {ok, E} -> {M, E};
                            error -> erlang:error(badarg)
                        end
                end, {list, latin1}, Opts).

-spec expand_enc(term()) -> {ok, enc()} | error.
expand_enc(latin1) -> {ok, latin1};
expand_enc(unicode) -> {ok, unicode};
expand_enc(utf8) -> {ok, unicode};
expand_enc(utf16) -> {ok, {utf16, big}};
expand_enc(utf32) -> {ok, {utf32, big}};
expand_enc({utf16, E} = Enc) when E =:= big; E =:= little -> {ok, Enc};
expand_enc({utf32, E} = Enc) when E =:= big; E =:= little -> {ok, Enc};
expand_enc(_) -> error.

%%%===========================================================================
%%% The process
%%%===========================================================================

start(H, Mode, Enc) ->
    Owner = self(),
    spawn_link(fun() -> init(Owner, H, Mode, Enc) end).

open_init(Owner, Ref, File, Offset, Len, MapOpts, Mode, Enc) ->
    process_flag(trap_exit, true),
    Opened = try emmap:open(File, Offset, Len, MapOpts)
             catch
                 error:badarg -> badarg;
                 Class:Reason -> {raise, Class, Reason}
             end,
    case Opened of
        {ok, H} ->
            Owner ! {Ref, ok},
            init(Owner, H, Mode, Enc);
        Failed ->
            %% No exit signal for an owner that traps exits: the open just failed.
            unlink(Owner),
            Owner ! {Ref, Failed}
    end.

init(Owner, H, Mode, Enc) ->
    process_flag(trap_exit, true),
    %% The monitor tells when the owner exits, whatever its reason (a link's exit signal
    %% says nothing for `normal', and is lost if it came before trap_exit was set).
    MRef = erlang:monitor(process, Owner),
    #{direct := Direct} = emmap:info(H),
    loop(#st{h = H, mref = MRef, mode = Mode, enc = Enc, direct = Direct}).

%% @private
%% @doc The device process's loop. It survives reloads of this module: after each message
%% it calls itself by its full name (so it runs the newest code from then on), and it waits
%% for the next message hibernated (so while it waits no code of this module is in use:
%% when `c:l/1' purges the old code, a process still running that code would be killed,
%% and through the link its owner). Hibernating costs a garbage collection when the
%% mailbox runs empty (about a microsecond); while requests keep coming it does not wait.
%%
%% Serving a request creates no fun: on OTP 25 the VM can crash when a process creates a
%% fun of a module while that module is being reloaded over itself (erlang/otp#6541, fixed
%% in OTP 26), so the code below passes atoms and tuples saying what to do instead.
-spec loop(#st{}) -> no_return().
loop(#st{h = H, mref = MRef} = S) ->
    receive
        {io_request, From, ReplyAs, Request} when is_pid(From) ->
            {Reply, S1} = guarded(io, Request, S),
            From ! {io_reply, ReplyAs, Reply},
            ?MODULE:loop(S1);
        {file_request, From, ReplyAs, close} when is_pid(From) ->
            Reply = emmap:close(H),
            From ! {file_reply, ReplyAs, Reply},
            exit(normal);
        {file_request, From, ReplyAs, Request} when is_pid(From) ->
            {Reply, S1} = guarded(file, Request, S),
            From ! {file_reply, ReplyAs, Reply},
            ?MODULE:loop(S1);
        {'DOWN', MRef, process, _, Reason} ->
            %% The owner has exited.
            stop(Reason, S);
        {'EXIT', _, normal} ->
            ?MODULE:loop(S);
        {'EXIT', _, Reason} ->
            %% An exit signal (from the owner's link or from exit/2) stops the process as
            %% it would stop one that does not trap exits, but the mapping is closed first.
            stop(Reason, S);
        _ ->
            ?MODULE:loop(S)
    after 0 ->
        erlang:hibernate(?MODULE, loop, [S])
    end.

-spec stop(term(), #st{}) -> no_return().
stop(Reason, #st{h = H}) ->
    ok = emmap:close(H),
    exit(Reason).

%% Runs one request of Kind (`io' or `file'). Nothing a client sends may end the process:
%% an exception is answered with `{error, badarg}' (and the position is put back).
guarded(Kind, Request, #st{h = H} = S) ->
    Before = emmap:position(H, cur),
    try
        case Kind of
            io -> io_request(Request, S);
            file -> file_request(Request, S)
        end
    catch
        _:_ ->
            restore(H, Before),
            {{error, badarg}, S}
    end.

restore(H, {ok, P}) -> _ = emmap:position(H, P), ok;
restore(_H, _) -> ok.

%% A pread or pwrite: the read or write after moving to At; a failure puts the position
%% back.
at_location(H, At, What, S) ->
    Before = emmap:position(H, cur),
    Reply = case emmap:position(H, At) of
                {ok, _} -> located(What, S);
                Error -> Error
            end,
    case Reply of
        {error, _} -> restore(H, Before);
        _ -> ok
    end,
    Reply.

%%%===========================================================================
%%% I/O protocol requests
%%%===========================================================================

io_request({put_chars, Enc, Chars}, S) when ?IS_REQ_ENC(Enc) ->
    {put_chars(Chars, Enc, S), S};
io_request({put_chars, Enc, M, F, A}, S)
  when ?IS_REQ_ENC(Enc), is_atom(M), is_atom(F), is_list(A) ->
    try apply(M, F, A) of
        Chars when is_list(Chars); is_binary(Chars) -> {put_chars(Chars, Enc, S), S};
        _ -> {{error, F}, S}
    catch
        _:_ -> {{error, F}, S}
    end;
io_request({get_chars, Enc, _Prompt, N}, S) when ?IS_REQ_ENC(Enc), is_integer(N), N >= 0 ->
    {get_chars(N, Enc, S), S};
io_request({get_line, Enc, _Prompt}, S) when ?IS_REQ_ENC(Enc) ->
    {get_line(Enc, S), S};
io_request({get_until, Enc, _Prompt, M, F, A}, S)
  when ?IS_REQ_ENC(Enc), is_atom(M), is_atom(F), is_list(A) ->
    {get_until(Enc, {M, F, A}, S), S};
io_request({setopts, Opts}, S) when is_list(Opts) ->
    setopts(Opts, S);
io_request(getopts, #st{mode = Mode, enc = Enc} = S) ->
    {[{binary, Mode =:= binary}, {encoding, Enc}], S};
io_request({get_geometry, _}, S) ->
    {{error, enotsup}, S};
io_request({requests, Requests}, S) when is_list(Requests) ->
    requests(Requests, ok, S);
%% The forms without an encoding (clients from before OTP R13) mean latin1.
io_request({put_chars, Chars}, S) ->
    io_request({put_chars, latin1, Chars}, S);
io_request({put_chars, M, F, A}, S) ->
    io_request({put_chars, latin1, M, F, A}, S);
io_request({get_chars, Prompt, N}, S) ->
    io_request({get_chars, latin1, Prompt, N}, S);
io_request({get_line, Prompt}, S) ->
    io_request({get_line, latin1, Prompt}, S);
io_request({get_until, Prompt, M, F, A}, S) ->
    io_request({get_until, latin1, Prompt, M, F, A}, S);
io_request(_, S) ->
    {{error, request}, S}.

%% Requests in order; the first one that fails ends the list and gives the reply.
requests([], Last, S) ->
    {Last, S};
requests([R | Rs], _, S) ->
    case guarded(io, R, S) of
        {{error, _}, _} = Failed -> Failed;
        {Reply, S1} -> requests(Rs, Reply, S1)
    end;
requests(_, _, S) ->
    {{error, request}, S}.

%% put_chars: converts from the request's encoding to the device's and writes at the
%% position. All or nothing: a write that does not fit changes nothing.
put_chars(Chars, latin1, #st{h = H, enc = latin1}) ->
    case to_bytes(Chars) of
        {ok, Bin} -> emmap:write(H, Bin);
        error -> {error, badarg}
    end;
put_chars(Chars, InEnc, #st{h = H, enc = Enc}) ->
    case unicode:characters_to_binary(owned(Chars), InEnc, Enc) of
        Bin when is_binary(Bin) -> emmap:write(H, Bin);
        _ -> {error, {no_translation, InEnc, Enc}}
    end.

%% Chardata from a client, with every binary in it copied before a unicode BIF converts
%% it: a binary may be a `direct' one of some mapping, whose bytes another process may
%% change while the BIF reads them twice (to size the result, then to fill it), which can
%% crash the VM. A copy cannot change.
owned(B) when is_binary(B) -> binary:copy(B);
owned([H | T]) -> [owned(H) | owned(T)];
owned(X) -> X.

%% Whether every byte is below 128 (eight at a time while they are).
is_ascii(<<W:64, Rest/binary>>) when W band 16#8080808080808080 =:= 0 -> is_ascii(Rest);
is_ascii(<<C, Rest/binary>>) when C < 128 -> is_ascii(Rest);
is_ascii(<<>>) -> true;
is_ascii(_) -> false.

%% Bytes read from the mapping at Pos, for parsing: with `direct' they would point into
%% the mapping (see owned/1), so they are copied.
pread_owned(H, Pos, Len, #st{direct = true}) ->
    case emmap:pread(H, Pos, Len) of
        {ok, Bin} -> {ok, binary:copy(Bin)};
        Other -> Other
    end;
pread_owned(H, Pos, Len, #st{}) ->
    emmap:pread(H, Pos, Len).

to_bytes(Bin) when is_binary(Bin) -> {ok, Bin};
to_bytes(Data) ->
    try {ok, iolist_to_binary(Data)} catch error:badarg -> error end.

%% get_chars: N characters of the device's encoding from the position, returned in the
%% device's mode and converted to OutEnc. N = 0 gives an empty result even at the end.
get_chars(0, OutEnc, #st{mode = Mode, enc = Enc}) ->
    {ok, Empty} = cast(<<>>, Mode, Enc, OutEnc),
    Empty;
get_chars(N, OutEnc, #st{h = H, mode = Mode, enc = latin1, direct = Direct}) ->
    %% One byte per character: the converted form always exists.
    case emmap:read(H, N) of
        {ok, Bin} when Direct, Mode =:= binary, OutEnc =/= latin1 ->
            %% A `direct' binary is not given to a BIF to convert (see owned/1): ASCII is
            %% the same bytes in UTF-8, returned as read; anything else converts a copy.
            case is_ascii(Bin) of
                true ->
                    Bin;
                false ->
                    {ok, Data} = cast(binary:copy(Bin), Mode, latin1, OutEnc),
                    Data
            end;
        {ok, Bin} ->
            {ok, Data} = cast(Bin, Mode, latin1, OutEnc),
            Data;
        Other ->
            Other
    end;
get_chars(N, OutEnc, #st{h = H} = S) ->
    case emmap:position(H, cur) of
        {ok, P} -> get_chars_at(P, N, OutEnc, S);
        Error -> Error
    end.

get_chars_at(P, N, OutEnc, #st{h = H, mode = Mode, enc = Enc} = S) ->
    Want = N * 4,                               % no character takes more than 4 bytes
    case pread_owned(H, P, Want, S) of
        {ok, Bin} ->
            case char_prefix(Bin, N, Enc, byte_size(Bin) < Want, OutEnc) of
                {ok, Len} ->
                    deliver(H, P + Len, binary_part(Bin, 0, Len), Mode, Enc, OutEnc);
                Other ->
                    Other
            end;
        Other ->
            Other
    end.

%% The byte length of the first N characters of Bin (or of all of them, when Bin holds
%% fewer). AtEnd: Bin reaches the end of the mapping.
char_prefix(Bin, N, Enc, AtEnd, OutEnc) ->
    case count_chars(Bin, N, Enc, 0) of
        {ok, Len} ->
            {ok, Len};
        {bad, Len} ->
            Rest = binary_part(Bin, Len, byte_size(Bin) - Len),
            case AtEnd andalso incomplete(Rest, Enc) of
                %% A character cut off by the end of the mapping cannot be converted.
                true -> {error, {no_translation, Enc, OutEnc}};
                false -> {error, invalid_unicode}
            end
    end.

count_chars(_Bin, 0, _Enc, Len) ->
    {ok, Len};
count_chars(Bin, _N, _Enc, Len) when Len =:= byte_size(Bin) ->
    {ok, Len};
count_chars(Bin, N, Enc, Len) ->
    case char_size(Bin, Len, Enc) of
        bad -> {bad, Len};
        W -> count_chars(Bin, N - 1, Enc, Len + W)
    end.

%% The size in bytes of the valid character at byte Off of Bin, or `bad'.
char_size(Bin, Off, unicode) ->
    case Bin of
        <<_:Off/binary, C/utf8, _/binary>> when C < 16#80 -> 1;
        <<_:Off/binary, C/utf8, _/binary>> when C < 16#800 -> 2;
        <<_:Off/binary, C/utf8, _/binary>> when C < 16#10000 -> 3;
        <<_:Off/binary, _/utf8, _/binary>> -> 4;
        _ -> bad
    end;
char_size(Bin, Off, {utf16, big}) ->
    case Bin of
        <<_:Off/binary, C/utf16-big, _/binary>> -> utf16_size(C);
        _ -> bad
    end;
char_size(Bin, Off, {utf16, little}) ->
    case Bin of
        <<_:Off/binary, C/utf16-little, _/binary>> -> utf16_size(C);
        _ -> bad
    end;
char_size(Bin, Off, {utf32, big}) ->
    case Bin of
        <<_:Off/binary, _/utf32-big, _/binary>> -> 4;
        _ -> bad
    end;
char_size(Bin, Off, {utf32, little}) ->
    case Bin of
        <<_:Off/binary, _/utf32-little, _/binary>> -> 4;
        _ -> bad
    end.

utf16_size(C) when C < 16#10000 -> 2;
utf16_size(_) -> 4.

%% Rest is the start of a valid character that the data ends before.
incomplete(Rest, Enc) ->
    case unicode:characters_to_binary(Rest, Enc, Enc) of
        {incomplete, <<>>, _} -> true;
        _ -> false
    end.

%% The bytes of one line (through the first newline, `\r\n' returned as `\n'), converted.
get_line(OutEnc, #st{h = H, mode = Mode, enc = Enc} = S) ->
    case emmap:position(H, cur) of
        {ok, P} ->
            case find_line(P, S) of
                {ok, Line, Len} -> deliver(H, P + Len, Line, Mode, Enc, OutEnc);
                Other -> Other
            end;
        Error ->
            Error
    end.

%% Bytes read from the device as the request wants them; only once that worked does the
%% position move past them (to NewPos).
deliver(H, NewPos, Bytes, Mode, Enc, OutEnc) ->
    case cast(Bytes, Mode, Enc, OutEnc) of
        {ok, Data} ->
            {ok, _} = emmap:position(H, NewPos),
            Data;
        Error ->
            Error
    end.

%% {ok, Line, BytesConsumed} | eof | {error, _}. Reads in growing steps from P.
find_line(P, #st{enc = Enc} = S) ->
    NL = unicode:characters_to_binary("\n", unicode, Enc),
    CR = unicode:characters_to_binary("\r", unicode, Enc),
    find_line(P, NL, CR, <<>>, ?FIRST_CHUNK, S).

find_line(P, NL, CR, Acc, Step, #st{h = H} = S) ->
    case pread_owned(H, P + byte_size(Acc), Step, S) of
        eof when Acc =:= <<>> ->
            eof;
        eof ->
            {ok, Acc, byte_size(Acc)};
        {ok, Bin} ->
            From = byte_size(Acc),
            All = <<Acc/binary, Bin/binary>>,
            W = byte_size(NL),
            case find_unit(All, From, NL) of
                nomatch when byte_size(Bin) < Step ->
                    {ok, All, byte_size(All)};  % the end of the mapping: a last line
                nomatch ->
                    find_line(P, NL, CR, All, min(Step * 2, ?MAX_CHUNK), S);
                I when I >= W, binary_part(All, I - W, W) =:= CR ->
                    {ok, <<(binary_part(All, 0, I - W))/binary, NL/binary>>, I + W};
                I ->
                    {ok, binary_part(All, 0, I + W), I + W}
            end;
        {error, _} = Error ->
            Error
    end.

%% The first offset at or after From where Unit starts at a multiple of its size.
%% (From is always such a multiple: the steps are multiples of 4.)
find_unit(All, From, Unit) ->
    Scope = {scope, {From, byte_size(All) - From}},
    case byte_size(Unit) of
        1 ->
            case binary:match(All, Unit, [Scope]) of
                {I, _} -> I;
                nomatch -> nomatch
            end;
        W ->
            case [I || {I, _} <- binary:matches(All, Unit, [Scope]), I rem W =:= 0] of
                [I | _] -> I;
                [] -> nomatch
            end
    end.

%% get_until: feeds the characters at the position to io_lib:get_until/4 (which calls
%% M:F) in growing steps until it stops, then leaves the position after what it used.
get_until(OutEnc, MFA, #st{h = H} = S) ->
    case emmap:position(H, cur) of
        {ok, P} -> until(start, P, <<>>, ?FIRST_CHUNK, OutEnc, MFA, S);
        Error -> Error
    end.

%% Fed: where the bytes given to the function end; Pending: bytes after Fed that do not
%% yet make a whole character.
until(Cont, Fed, Pending, Step, OutEnc, MFA, #st{h = H, mode = Mode, enc = Enc} = S) ->
    case pread_owned(H, Fed + byte_size(Pending), Step, S) of
        eof when Pending =:= <<>> ->
            feed(Cont, eof, Fed, ok, Step, OutEnc, MFA, S);
        eof ->
            invalid_reply(Cont, MFA);
        {ok, Bin} ->
            Bytes = <<Pending/binary, Bin/binary>>,
            {Chars, Used, Status} = decode(Bytes, Enc),
            Rest = binary_part(Bytes, Used, byte_size(Bytes) - Used),
            case Chars of
                [] when Status =:= invalid ->
                    invalid_reply(Cont, MFA);
                [] ->
                    until(Cont, Fed, Rest, Step, OutEnc, MFA, S);
                _ ->
                    case chars_as(Chars, Mode, OutEnc) of
                        {ok, Data} ->
                            Next = case Status of
                                       invalid -> invalid;
                                       _ -> {more, Rest}
                                   end,
                            feed(Cont, Data, Fed + Used, Next, Step, OutEnc, MFA, S);
                        error ->
                            {error, {no_translation, Enc, OutEnc}}
                    end
            end;
        {error, _} = Error ->
            Error
    end.

feed(Cont, Data, Fed, Next, Step, OutEnc, {_, F, _} = MFA,
     #st{h = H, enc = Enc} = S) ->
    try io_lib:get_until(Cont, Data, OutEnc, MFA) of
        {stop, Result, Left} ->
            {ok, _} = emmap:position(H, max(0, Fed - left_bytes(Left, OutEnc, Enc))),
            Result;
        Cont1 when Data =:= eof ->
            %% A function that asks for more after the end would never stop.
            _ = Cont1,
            {error, F};
        Cont1 ->
            case Next of
                invalid -> invalid_reply(Cont1, MFA);
                {more, Pending} ->
                    until(Cont1, Fed, Pending, min(Step * 2, ?MAX_CHUNK), OutEnc, MFA, S)
            end
    catch
        _:_ -> {error, F}
    end.

%% How many bytes of the device the characters the function left over take.
left_bytes(Left, _OutEnc, Enc) when is_list(Left) ->
    encoded_size(Left, unicode, Enc);
left_bytes(Left, OutEnc, Enc) when is_binary(Left) ->
    encoded_size(Left, OutEnc, Enc);
left_bytes(_, _, _) ->
    0.

encoded_size(Chars, From, To) ->
    case unicode:characters_to_binary(Chars, From, To) of
        Bin when is_binary(Bin) -> byte_size(Bin);
        _ -> 0
    end.

%% The answer for bytes that are not valid in the encoding. For io:read (erl_scan) it is
%% an error with the location the scan had reached, if it had started.
invalid_reply(Cont, {erl_scan, tokens, _}) ->
    try erl_scan:continuation_location(Cont) of
        Loc -> {error, {Loc, ?MODULE, invalid_unicode}, Loc}
    catch
        _:_ -> {error, tokens}
    end;
invalid_reply(_Cont, {_, F, _}) ->
    {error, F}.

%% {Chars, BytesUsed, ok | incomplete | invalid}
decode(Bytes, Enc) ->
    case unicode:characters_to_list(Bytes, Enc) of
        Chars when is_list(Chars) -> {Chars, byte_size(Bytes), ok};
        {incomplete, Chars, Rest} -> {Chars, byte_size(Bytes) - rest_size(Rest), incomplete};
        {error, Chars, Rest} -> {Chars, byte_size(Bytes) - rest_size(Rest), invalid}
    end.

rest_size(Rest) -> iolist_size(Rest).

chars_as(Chars, list, _OutEnc) ->
    {ok, Chars};
chars_as(Chars, binary, OutEnc) ->
    case unicode:characters_to_binary(Chars, unicode, OutEnc) of
        Bin when is_binary(Bin) -> {ok, Bin};
        _ -> error
    end.

%% Bytes of the device's encoding as the client gets them: a string or a binary, in the
%% request's encoding.
cast(Bin, binary, latin1, latin1) ->
    {ok, Bin};
cast(Bin, binary, Enc, OutEnc) ->
    case unicode:characters_to_binary(Bin, Enc, OutEnc) of
        Out when is_binary(Out) -> {ok, Out};
        _ -> {error, {no_translation, Enc, OutEnc}}
    end;
cast(Bin, list, latin1, _OutEnc) ->
    {ok, binary_to_list(Bin)};
cast(Bin, list, Enc, OutEnc) ->
    case unicode:characters_to_list(Bin, Enc) of
        Chars when is_list(Chars) ->
            case OutEnc =:= latin1 andalso beyond_latin1(Chars) of
                false -> {ok, Chars};
                true -> {error, {no_translation, Enc, OutEnc}}
            end;
        _ ->
            {error, {no_translation, Enc, OutEnc}}
    end.

beyond_latin1([C | _]) when C > 255 -> true;
beyond_latin1([_ | Cs]) -> beyond_latin1(Cs);
beyond_latin1([]) -> false.

%% setopts: `binary', `list', `{binary, Bool}', `{list, Bool}', `{encoding, E}' and the
%% atoms `latin1' and `unicode'. Another option: `{error, enotsup}'; an unknown encoding:
%% `{error, badarg}'. When an option is given twice, the first one counts.
setopts(Opts, #st{mode = Mode0} = S) ->
    case setopts_parse(Opts, undefined, undefined) of
        {ok, Mode1, Enc1} ->
            Mode = case Mode1 of undefined -> Mode0; _ -> Mode1 end,
            case Enc1 of
                undefined -> {ok, S#st{mode = Mode}};
                _ ->
                    case expand_enc(Enc1) of
                        {ok, Enc} -> {ok, S#st{mode = Mode, enc = Enc}};
                        error -> {{error, badarg}, S}
                    end
            end;
        Error ->
            {Error, S}
    end.

setopts_parse([], Mode, Enc) ->
    {ok, Mode, Enc};
setopts_parse([Opt | Opts], Mode, Enc) ->
    case Opt of
        binary -> setopts_parse(Opts, first(Mode, binary), Enc);
        list -> setopts_parse(Opts, first(Mode, list), Enc);
        {binary, true} -> setopts_parse(Opts, first(Mode, binary), Enc);
        {binary, false} -> setopts_parse(Opts, first(Mode, list), Enc);
        {list, true} -> setopts_parse(Opts, first(Mode, list), Enc);
        {list, false} -> setopts_parse(Opts, first(Mode, binary), Enc);
        {binary, _} -> {error, badarg};
        {list, _} -> {error, badarg};
        latin1 -> setopts_parse(Opts, Mode, first(Enc, latin1));
        unicode -> setopts_parse(Opts, Mode, first(Enc, unicode));
        {encoding, E} -> setopts_parse(Opts, Mode, first(Enc, E));
        _ -> {error, enotsup}
    end;
setopts_parse(_, _, _) ->
    {error, badarg}.

first(undefined, New) -> New;
first(Old, _) -> Old.

%%%===========================================================================
%%% file requests
%%%===========================================================================

file_request({pread, At, Size}, #st{h = H} = S) when is_integer(Size), Size >= 0 ->
    {at_location(H, At, {pread, Size}, S), S};
file_request({pwrite, At, Data}, #st{h = H} = S) ->
    {at_location(H, At, {pwrite, Data}, S), S};
file_request({position, At}, #st{h = H} = S) ->
    {emmap:position(H, At), S};
file_request(Request, #st{h = H} = S)
  when Request =:= truncate; Request =:= sync; Request =:= datasync;
       element(1, Request) =:= advise, tuple_size(Request) =:= 4;
       element(1, Request) =:= allocate, tuple_size(Request) =:= 3;
       element(1, Request) =:= read_handle_info, tuple_size(Request) =:= 2 ->
    {forward(Request, H), S};
file_request(_, S) ->
    {{error, request}, S}.

%% The read or write of a pread or pwrite, at the position.
located({pread, Size}, S) ->
    case get_chars(Size, latin1, S) of
        Data when is_list(Data); is_binary(Data) -> {ok, Data};
        Other -> Other
    end;
located({pwrite, Data}, S) ->
    put_chars(Data, latin1, S).

%% The handle's own answer to the same `file' call. A call the handle's module does not
%% implement answers `{error, enotsup}'; one it raises `badarg' (or another exception)
%% for, `{error, badarg}'.
forward(Request, H) ->
    try forward_call(Request, H)
    catch
        error:undef -> {error, enotsup};
        _:_ -> {error, badarg}
    end.

forward_call(truncate, H) -> file:truncate(H);
forward_call(sync, H) -> file:sync(H);
forward_call(datasync, H) -> file:datasync(H);
forward_call({advise, Offset, Length, Advice}, H) -> file:advise(H, Offset, Length, Advice);
forward_call({allocate, Offset, Length}, H) -> file:allocate(H, Offset, Length);
forward_call({read_handle_info, Opts}, H) -> file:read_file_info(H, Opts).
