#!/usr/bin/env escript
%% -*- erlang -*-
%%
%% Instructions per call from the output directory of test/bench/instructions.sh.
%%
%%   escript cg_report.escript OUTDIR N [--breakdown REGEX] [--top K]
%%
%% For row k (OUTDIR/names.txt, in order) emmap_bench_rows:cg/1 made 1 + ?PHASES dumps:
%% the warm-up, then ?PHASES phases of N calls each. Instructions per call = the median
%% phase / N (a phase's fixed cost, one mark call, is a few hundred instructions: below
%% 0.05 per call at N = 20000). `spread' is (max - min) / N over the phases: a major
%% garbage collection or background work in one phase shows there, not in the median.
%% With --breakdown, the rows whose name matches REGEX also get each function's own
%% instructions per call in the median phase; JIT code is named after the Erlang function
%% it belongs to, through the VM's perf map (+JPperf map writes /tmp/perf-PID.map, which
%% instructions.sh moves to OUTDIR/perf.map).
-mode(compile).

-define(PHASES, 5).

main([Out, NStr | Opts]) ->
    N = list_to_integer(NStr),
    Brk = case opt("--breakdown", Opts) of
              false -> false;
              Re -> {ok, MP} = re:compile(Re), MP
          end,
    Top = case opt("--top", Opts) of false -> 25; T -> list_to_integer(T) end,
    {ok, Log} = file:read_file(filename:join(Out, "log.txt")),
    {match, [Pid]} = re:run(Log, "beam pid (\\d+)", [{capture, all_but_first, list}]),
    {ok, NamesBin} = file:read_file(filename:join(Out, "names.txt")),
    Names = [binary_to_list(L) || L <- binary:split(NamesBin, <<"\n">>, [global, trim_all])],
    Dump = fun(I) -> filename:join(Out, "cg." ++ Pid ++ "." ++ integer_to_list(I)) end,
    Rows = lists:append(
             [begin
                  Ds = [Dump((?PHASES + 1) * K + 2 + I) || I <- lists:seq(0, ?PHASES - 1)],
                  case lists:all(fun filelib:is_regular/1, Ds) of
                      false -> [];
                      true ->
                          Ts = lists:sort([{totals(D), D} || D <- Ds]),
                          {Med, MedDump} = lists:nth(?PHASES div 2 + 1, Ts),
                          {Min, _} = hd(Ts),
                          {Max, _} = lists:last(Ts),
                          [{Name, Med / N, (Max - Min) / N, MedDump}]
                  end
              end || {K, Name} <- lists:zip(lists:seq(0, length(Names) - 1), Names)]),
    Per = maps:from_list([{Name, P} || {Name, P, _, _} <- Rows]),
    Base = maps:get("atomic add | atomics:add_get", Per, undefined),
    Loop = maps:get("loop overhead | empty fun", Per, 0),
    Width = lists:max([length("row") | [string:length(Nm) || {Nm, _, _, _} <- Rows]]),
    io:format("~ts  ~8s ~7s ~8s ~9s~n",
              [string:pad("row", Width), "Ir/call", "spread", "-loop", "x add_get"]),
    io:format("~s~n", [lists:duplicate(Width + 36, $-)]),
    [io:format("~ts  ~8.1f ~7.1f ~8.1f ~9s~n",
               [string:pad(Name, Width), P, float(S), P - Loop,
                case Base of
                    undefined -> "-";
                    _ -> io_lib:format("~.2f", [P / Base])
                end])
     || {Name, P, S, _} <- Rows],
    targets(Out, Per),
    case Brk of
        false -> ok;
        _ ->
            PerfMap = perf_map(Out),
            [breakdown(Name, P, D, N, PerfMap, Top)
             || {Name, P, _, D} <- Rows, re:run(Name, Brk) =/= nomatch]
    end,
    ok;
main(_) ->
    io:format(standard_error,
              "usage: cg_report.escript OUTDIR N [--breakdown REGEX] [--top K]~n", []),
    halt(2).

%% The performance targets of make bench in instructions: each row's count, its ratio
%% to its reference's count and its distance to its floor's (OUTDIR/targets.txt, written
%% by emmap_bench_rows:cg/1; a reference or floor not counted here, such as file:pread
%% or a binary:copy, is `-').
targets(Out, Per) ->
    case file:read_file(filename:join(Out, "targets.txt")) of
        {ok, B} ->
            Get = fun(<<"-">>) -> undefined;
                     (K) -> maps:get(binary_to_list(K), Per, undefined)
                  end,
            Rows = [begin
                        [Label, Row, Ref, Floor] = binary:split(L, <<"\t">>, [global]),
                        {Label, Get(Row), Ref, Get(Ref), Floor, Get(Floor)}
                    end || L <- binary:split(B, <<"\n">>, [global, trim_all])],
            Fmt = fun(undefined) -> "-"; (X) -> io_lib:format("~.1f", [X]) end,
            Body = [[Label, Fmt(R), short(RefN),
                     case {R, RefI} of
                         {undefined, _} -> "-";
                         {_, undefined} -> "-";
                         _ -> io_lib:format("~.2f", [R / RefI])
                     end,
                     short(FloorN), Fmt(FloorI),
                     case {R, FloorI} of
                         {undefined, _} -> "-";
                         {_, undefined} -> "-";
                         _ -> signed(R - FloorI)
                     end]
                    || {Label, R, RefN, RefI, FloorN, FloorI} <- Rows],
            io:format("~nThe performance targets of make bench, in instructions per call (the limits of "
                      "make bench apply to its ns ratios, not to these)~n~n"),
            table(["target", "Ir/call", "reference", "ratio", "floor", "floor Ir", "over floor"],
                  Body, [left, right, left, right, left, right, right]);
        _ ->
            ok
    end.

signed(X) when X >= 0 -> io_lib:format("+~.1f", [X]);
signed(X) -> io_lib:format("~.1f", [X]).

%% `Impl' of an `Op | Impl' name.
short(<<"-">>) -> "-";
short(Name) -> lists:last(string:split(Name, " | ")).

%% Prints rows of strings in columns as wide as their widest cell.
table(Head, Body, Align) ->
    Cells = [[unicode:characters_to_list(C) || C <- Row] || Row <- [Head | Body]],
    Widths = lists:foldl(fun(Row, Ws) -> [max(W, string:length(C)) || {W, C} <- lists:zip(Ws, Row)] end,
                         [0 || _ <- Head], Cells),
    Line = fun(Row) ->
                   Padded = [case A of
                                 left -> string:pad(C, W, trailing);
                                 right -> string:pad(C, W, leading)
                             end || {C, W, A} <- lists:zip3(Row, Widths, Align)],
                   io:format("~ts~n", [string:trim(lists:join("  ", Padded), trailing)])
           end,
    [H | Rest] = Cells,
    Line(H),
    io:format("~s~n", [lists:duplicate(lists:sum(Widths) + 2 * (length(Widths) - 1), $-)]),
    lists:foreach(Line, Rest).

opt(Key, Opts) ->
    case lists:dropwhile(fun(O) -> O =/= Key end, Opts) of
        [_, V | _] -> V;
        _ -> false
    end.

%% The total instruction count of a dump (its `summary:' or `totals:' line).
totals(Path) ->
    {ok, B} = file:read_file(Path),
    case re:run(B, "^(?:summary|totals): (\\d+)", [multiline, {capture, all_but_first, binary}]) of
        {match, [T]} -> binary_to_integer(T);
        nomatch -> 0
    end.

breakdown(Name, P, Dump, N, PerfMap, Top) ->
    Costs = self_costs(Dump, PerfMap),
    Sorted = lists:sort(fun({_, A}, {_, B}) -> abs(A) >= abs(B) end, maps:to_list(Costs)),
    io:format("~n== ~ts: ~.1f Ir/call~n", [Name, P]),
    [io:format("   ~8.1f  ~ts~n", [V / N, B])
     || {B, V} <- lists:sublist(Sorted, Top), abs(V / N) >= 0.5],
    ok.

%% #{Bucket => self instructions} of a dump made with --dump-instr=yes: native code by
%% object and function name, JIT code by the Erlang function its address lies in.
self_costs(Path, PerfMap) ->
    {ok, B} = file:read_file(Path),
    Lines = binary:split(B, <<"\n">>, [global, trim_all]),
    St0 = #{ob => undefined, fn => undefined, addr => 0, skip => false,
            names => #{}, costs => #{}},
    #{costs := Costs} = lists:foldl(fun(L, St) -> cost_line(L, St, PerfMap) end, St0, Lines),
    Costs.

cost_line(<<"ob=", V/binary>>, St, _) -> named(ob, ob, V, St);
cost_line(<<"fn=", V/binary>>, St, _) -> named(fn, fn, V, St);
cost_line(<<"cob=", V/binary>>, St, _) -> named(ob, none, V, St);
cost_line(<<"cfn=", V/binary>>, St, _) -> named(fn, none, V, St);
cost_line(<<"calls=", _/binary>>, St, _) -> St#{skip := true};
cost_line(<<C, _/binary>> = L, #{addr := Addr0} = St, PerfMap)
  when C >= $0, C =< $9; C =:= $+; C =:= $-; C =:= $* ->
    case binary:split(L, <<" ">>, [global, trim_all]) of
        [Pos | Rest] ->
            Addr = position(Pos, Addr0),
            case St of
                #{skip := true} ->
                    St#{addr := Addr, skip := false};
                #{fn := Fn, ob := Ob, costs := Costs} when Fn =/= undefined, length(Rest) >= 2 ->
                    Ir = binary_to_integer(lists:nth(2, Rest)),
                    Key = bucket(Ob, Fn, Addr, PerfMap),
                    St#{addr := Addr, costs := maps:update_with(Key, fun(X) -> X + Ir end, Ir, Costs)};
                _ ->
                    St#{addr := Addr}
            end;
        [] ->
            St
    end;
cost_line(_, St, _) -> St.

%% Name compression: `(id) name' defines id, `(id)' refers to it.
named(Kind, Slot, V, #{names := Names} = St) ->
    {Name, Names1} =
        case re:run(V, "^\\((\\d+)\\)(?: (.*))?$", [{capture, all_but_first, binary}]) of
            {match, [Id, Nm]} -> {Nm, Names#{{Kind, Id} => Nm}};
            {match, [Id]} -> {maps:get({Kind, Id}, Names, V), Names};
            nomatch -> {V, Names}
        end,
    St1 = St#{names := Names1},
    case Slot of
        none -> St1;
        _ -> St1#{Slot := Name}
    end.

position(<<"*">>, Last) -> Last;
position(<<"+", T/binary>>, Last) -> Last + number(T);
position(<<"-", T/binary>>, Last) -> Last - number(T);
position(T, _) -> number(T).

number(<<"0x", H/binary>>) -> binary_to_integer(H, 16);
number(D) -> binary_to_integer(D).

bucket(Ob, Fn, Addr, PerfMap) ->
    case Ob =:= undefined orelse Ob =:= <<"???">>
        orelse binary:match(Ob, [<<"memfd">>, <<"vmem">>]) =/= nomatch of
        true -> jit_name(Addr, PerfMap);
        false -> iolist_to_binary([filename:basename(Ob), ": ", Fn])
    end.

%% The VM's perf map (moved into OUTDIR by instructions.sh) as a gb_tree of
%% start => {end, label}.
perf_map(Out) ->
    case file:read_file(filename:join(Out, "perf.map")) of
        {ok, B} ->
            lists:foldl(
              fun(L, T) ->
                      case binary:split(L, <<" ">>) of
                          [A, Rest] ->
                              [S, Label] = binary:split(Rest, <<" ">>),
                              Start = hex(A),
                              gb_trees:enter(Start, {Start + hex(S), Label}, T);
                          _ -> T
                      end
              end, gb_trees:empty(), binary:split(B, <<"\n">>, [global, trim_all]));
        _ ->
            gb_trees:empty()
    end.

hex(<<"0x", H/binary>>) -> binary_to_integer(H, 16);
hex(H) -> binary_to_integer(H, 16).

jit_name(Addr, PerfMap) ->
    case floor_entry(Addr, PerfMap) of
        {Start, {End, Label}} when Addr >= Start, Addr < End ->
            L1 = string:trim(Label, leading, "$"),
            iolist_to_binary(["JIT ", string:replace(L1, "-CodeInfoPrologue", "", all)]);
        _ ->
            <<"JIT ?">>
    end.

%% The entry with the greatest start =< Addr (gb_trees has no floor lookup: walk down).
floor_entry(Addr, {_, Tree}) -> floor_walk(Addr, Tree, none).

floor_walk(_Addr, nil, Best) -> Best;
floor_walk(Addr, {K, V, Smaller, Bigger}, Best) ->
    if K =< Addr -> floor_walk(Addr, Bigger, {K, V});
       true -> floor_walk(Addr, Smaller, Best)
    end.
