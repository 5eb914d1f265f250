%%% @doc Reads racing the handle's own changes.
%%%
%%% Long copy reads (`pread' of more than 64 KiB without `direct') are made in slices on
%%% the caller's scheduler, rescheduling in between: their bytes must equal a raw file
%%% handle's around every slice boundary, and every other call may run between two
%%% slices: `close/1' (`{error, closed}'), `truncate/1' (a result that ends at the new end,
%%% or `eof'), `resize/2' (the copy goes on), another handle cutting the file
%%% (`{error, truncated}' or `eio'), the reading process killed (the unfinished result is
%%% released). The scheduler running such a copy keeps serving other processes.
%%%
%%% `direct' reads stop entering the handle's readers once the handle has handed out a
%%% direct binary: processes doing direct reads while another resizes, truncates and
%%% closes the handle get one of the documented answers, and the VM lives.
-module(emmap_race_tests).

-include_lib("eunit/include/eunit.hrl").

-define(KiB, 1024).
-define(MiB, (1024 * 1024)).
-define(SLICE, (256 * ?KiB)).

%% A file of `Size' random bytes: Fun(Path, Bytes).
with_random_file(Size, Fun) ->
    Bytes = crypto:strong_rand_bytes(Size),
    emmap_test_lib:with_file(Bytes, fun(P) -> Fun(P, Bytes) end).

%%%---------------------------------------------------------------------------
%%% Long copies: the same bytes as a raw file
%%%---------------------------------------------------------------------------

slice_boundaries_match_a_raw_file_test_() ->
    {timeout, 120, fun() ->
        Size = 20 * ?MiB + 77,
        with_random_file(Size, fun(P, _) ->
            {ok, M} = emmap:open(P, 0, Size, [read, shared]),
            {ok, W} = emmap:open(P, 4096, Size - 4096, [read, shared]),
            {ok, R} = file:open(P, [raw, read, binary]),
            Lens = [64 * ?KiB, 64 * ?KiB + 1, ?SLICE - 1, ?SLICE, ?SLICE + 1, 2 * ?SLICE,
                    ?MiB - 1, ?MiB, ?MiB + 1, 3 * ?SLICE + 1, 17 * ?MiB, 30 * ?MiB],
            Poss = [0, 1, 4095, ?SLICE - 1, Size - ?SLICE - 1, Size - 64 * ?KiB - 1,
                    Size - 1, Size, Size + 1],
            [?assertEqual({Pos, Len, file:pread(R, Pos, Len)},
                          {Pos, Len, emmap:pread(M, Pos, Len)})
             || Pos <- Poss, Len <- Lens],
            %% A window at an offset: its byte 0 is the file's byte 4096.
            [?assertEqual({Pos, Len, file:pread(R, Pos + 4096, min(Len, Size - 4096 - Pos))},
                          {Pos, Len, emmap:pread(W, Pos, Len)})
             || Pos <- [0, 1, ?SLICE + 3], Len <- [?SLICE + 1, 5 * ?MiB]],
            ok = file:close(R),
            ok = emmap:close(W),
            ok = emmap:close(M)
        end)
    end}.

%%%---------------------------------------------------------------------------
%%% Long copies while the handle changes
%%%---------------------------------------------------------------------------

%% Readers doing 8 MiB copies at Pos while Action runs: every answer must be Allowed.
copies_while(Opts, Action, Allowed) ->
    Size = 16 * ?MiB,
    with_random_file(Size, fun(P, Bytes) ->
        {ok, M} = emmap:open(P, 0, Size, [read, write, shared | Opts]),
        Self = self(),
        Pos = 4 * ?MiB + 5,
        Len = 8 * ?MiB,
        Readers = [spawn_link(fun() -> copy_loop(Self, M, Pos, Len, []) end)
                   || _ <- lists:seq(1, 3)],
        timer:sleep(20),
        Action(M, P),
        timer:sleep(20),
        [R ! stop || R <- Readers],
        Answers = lists:append([receive {answers, R, A} -> A end || R <- Readers]),
        ?assert(length(Answers) >= 3),
        [?assertEqual({A, true}, {A, Allowed(A, binary:part(Bytes, Pos, Len), Pos)}) || A <- Answers, not is_tuple(A) orelse element(1, A) =/= ok],
        [?assert(Allowed(A, binary:part(Bytes, Pos, Len), Pos)) || A <- Answers],
        emmap:close(M),
        Answers
    end).

%% On `stop' (sent after the action), one more read: at least one answer comes after it.
copy_loop(Owner, M, Pos, Len, Acc) ->
    A = emmap:pread(M, Pos, Len),
    receive
        stop -> Owner ! {answers, self(), [emmap:pread(M, Pos, Len), A | Acc]}
    after 0 ->
        copy_loop(Owner, M, Pos, Len, [A | Acc])
    end.

close_between_slices_test_() ->
    {timeout, 60, fun() ->
        Allowed = fun({ok, B}, Want, _) -> B =:= Want;
                     (A, _, _) -> A =:= {error, closed}
                  end,
        As = copies_while([], fun(M, _) -> ok = emmap:close(M) end, Allowed),
        ?assert(lists:member({error, closed}, As))
    end}.

%% `truncate/1' to 6 MiB, inside the range read: a copy ends at the new end, or is whole.
truncate_between_slices_test_() ->
    {timeout, 60, fun() ->
        NewEnd = 6 * ?MiB,
        Allowed = fun({ok, B}, Want, Pos) ->
                          (B =:= Want) orelse (B =:= binary:part(Want, 0, NewEnd - Pos));
                     (_, _, _) -> false
                  end,
        Cut = fun(M, _) ->
                      {ok, _} = emmap:position(M, NewEnd),
                      ok = emmap:truncate(M)
              end,
        copies_while([], Cut, Allowed)
    end}.

resize_between_slices_test_() ->
    {timeout, 60, fun() ->
        Allowed = fun({ok, B}, Want, _) -> B =:= Want;
                     (_, _, _) -> false
                  end,
        Grow = fun(M, _) ->
                       [{ok, _} = emmap:resize(M, (16 + I) * ?MiB) || I <- lists:seq(1, 8)],
                       ok
               end,
        copies_while([], Grow, Allowed)
    end}.

%% Another handle cuts the file inside the range read: the copies that saw it answer
%% `truncated' (or `eio'), never bytes that are not the file's.
cut_by_someone_else_between_slices_test_() ->
    {timeout, 60, fun() ->
        Allowed = fun({ok, B}, Want, _) -> B =:= Want;
                     (A, _, _) -> lists:member(A, [{error, truncated}, {error, eio}])
                  end,
        Cut = fun(_, P) ->
                      {ok, F} = file:open(P, [raw, read, write]),
                      {ok, _} = file:position(F, 6 * ?MiB),
                      ok = file:truncate(F),
                      ok = file:close(F)
              end,
        As = copies_while([], Cut, Allowed),
        ?assert(lists:member({error, truncated}, As) orelse lists:member({error, eio}, As))
    end}.

%% Readers killed in the middle of 32 MiB copies: the results they were filling are
%% released (binary memory comes back to where it was).
killed_between_slices_test_() ->
    {timeout, 60, fun() ->
        Size = 32 * ?MiB,
        with_random_file(Size, fun(P, _) ->
            {ok, M} = emmap:open(P, 0, Size, [read, shared]),
            {ok, _} = emmap:pread(M, 0, Size),
            erlang:garbage_collect(),
            Before = erlang:memory(binary),
            [begin
                 Pid = spawn(fun() -> emmap:pread(M, 0, Size) end),
                 timer:sleep(I rem 3),
                 exit(Pid, kill)
             end || I <- lists:seq(1, 40)],
            ?assert(emmap_test_lib:eventually(
                      fun() -> erlang:memory(binary) < Before + 4 * ?MiB end, 10000)),
            ok = emmap:close(M)
        end)
    end}.

%% With one normal scheduler, a process pinging another keeps getting answers while a
%% 64 MiB copy is being made: the copy gives the scheduler back between slices.
a_long_copy_gives_the_scheduler_back_test_() ->
    {timeout, 60, fun() ->
        Size = 64 * ?MiB,
        with_random_file(Size, fun(P, Bytes) ->
            {ok, M} = emmap:open(P, 0, Size, [read, shared]),
            Online = erlang:system_flag(schedulers_online, 1),
            Echo = spawn_link(fun Loop() -> receive {ping, F} -> F ! pong, Loop() end end),
            Self = self(),
            Pinger = spawn_link(fun() -> Self ! ready, pings(Echo, 0) end),
            try
                receive ready -> ok end,
                Pinger ! {count, self()},
                N0 = receive {pings, N} -> N end,
                ?assertEqual({ok, Bytes}, emmap:pread(M, 0, Size)),
                Pinger ! {count, self()},
                N1 = receive {pings, N2} -> N2 end,
                %% Each slice reschedules; the pinger runs in between.
                ?assert(N1 - N0 >= 2)
            after
                unlink(Pinger), exit(Pinger, kill),
                unlink(Echo), exit(Echo, kill),
                erlang:system_flag(schedulers_online, Online),
                ok = emmap:close(M)
            end
        end)
    end}.

pings(Echo, N) ->
    receive
        {count, From} -> From ! {pings, N}, pings(Echo, N)
    after 0 ->
        Echo ! {ping, self()},
        receive pong -> ok end,
        pings(Echo, N + 1)
    end.

%%%---------------------------------------------------------------------------
%%% Direct reads while the handle changes
%%%---------------------------------------------------------------------------

%% Processes doing direct reads (after the handle has handed out a direct binary, so
%% they no longer enter its readers) while another process resizes, truncates and
%% finally closes it. Every answer is one of: a binary of the file's bytes (or zeros
%% where `truncate/1' cut meanwhile), `eof' (past a new end), `{error, closed}'.
direct_reads_while_resized_truncated_closed_test_() ->
    {timeout, 60, fun() ->
        [direct_race(Opts) || Opts <- [[], [nolock]]]
    end}.

direct_race(Opts) ->
    Size = ?MiB,
    with_random_file(Size, fun(P, Bytes) ->
        {ok, M} = emmap:open(P, 0, Size, [read, write, shared, direct | Opts]),
        {ok, First} = emmap:pread(M, 0, 40),
        Self = self(),
        Readers = [spawn_link(fun() -> direct_loop(Self, M, I, 0, #{}) end)
                   || I <- lists:seq(1, 4)],
        Changes = lists:append([[{resize, 2 * Size}, {truncate, Size div 2},
                                 {resize, Size}, {truncate, 3 * Size div 4}]
                                || _ <- lists:seq(1, 10)]),
        [change(M, C) || C <- Changes],
        ok = emmap:close(M),
        timer:sleep(10),
        [R ! stop || R <- Readers],
        Seen = lists:foldl(fun(R, Acc) ->
                                   receive {seen, R, S} -> maps:merge_with(fun(_, A, B) -> A + B end, Acc, S) end
                           end, #{}, Readers),
        ?debugFmt("direct reads ~p: ~p", [Opts, Seen]),
        [?assert(lists:member(K, [data, zeros, eof, closed])) || K <- maps:keys(Seen)],
        ?assert(maps:get(closed, Seen, 0) > 0),
        %% The first binary still reads the file's first bytes.
        ?assertEqual(binary:part(Bytes, 0, 40), First)
    end).

change(M, {resize, N}) -> {ok, _} = emmap:resize(M, N);
change(M, {truncate, N}) -> {ok, _} = emmap:position(M, N), ok = emmap:truncate(M).

direct_loop(Owner, M, I, K, Seen) ->
    Pos = (K * 4099 + I * 977) rem (2 * 1024 * 1024),
    Kind = case emmap:pread(M, Pos, 40) of
               {ok, B} when is_binary(B) -> classify(B);
               eof -> eof;
               {error, closed} -> closed;
               Other -> {unexpected, Other}
           end,
    Seen1 = maps:update_with(Kind, fun(V) -> V + 1 end, 1, Seen),
    receive
        stop ->
            %% One more read, after the close: `{error, closed}'.
            Last = case emmap:pread(M, Pos, 40) of
                       {error, closed} -> closed;
                       Other2 -> {unexpected, Other2}
                   end,
            Owner ! {seen, self(), maps:update_with(Last, fun(V) -> V + 1 end, 1, Seen1)}
    after 0 ->
        direct_loop(Owner, M, I, K + 1, Seen1)
    end.

%% Random file bytes, or zeros (from a cut, or grown memory): either way bytes the
%% mapping holds; what matters is that the read answered.
classify(B) ->
    case B =:= binary:copy(<<0>>, byte_size(B)) of
        true -> zeros;
        false -> data
    end.
