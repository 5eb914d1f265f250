%%% Reading Markdown documents (the README, the user's guide kept in test/contract/) and
%%% running their Erlang examples the way the shell does, for the tests that check that
%%% the examples run as written and print what they say.
-module(emmap_readme).

-export([root/0, readme/0, read/1]).
-export([section/1, section/2, fenced/1, blocks/2, block/2, block/3, examples/2]).
-export([eval/2, eval_printing/1, expected_print/1, replace_path/3]).

%% The checkout's root (rebar3 runs tests from there, and `make demo' runs from there).
root() ->
    {ok, Cwd} = file:get_cwd(),
    Cwd.

%% The README's text.
readme() ->
    read("README.md").

%% The text of a file of the checkout (a path relative to the root). Fails if it is
%% missing.
read(RelPath) ->
    Path = filename:join(root(), RelPath),
    case file:read_file(Path) of
        {ok, Text} -> Text;
        {error, Why} -> erlang:error({cannot_read, Path, Why})
    end.

%% The text under the README's heading line `Heading' (e.g. "## Errors"), up to the next
%% heading of the same or a higher level. Fails if the README has no such heading.
section(Heading) ->
    section(readme(), Heading).

%% The same in the Markdown text `Doc'.
section(Doc, Heading) ->
    Level = length(lists:takewhile(fun(C) -> C =:= $# end, Heading)),
    Rest = case binary:split(Doc, iolist_to_binary(["\n", Heading, "\n"])) of
               [_, R] -> R;
               [_] -> erlang:error({no_heading, Heading})
           end,
    Lines = binary:split(Rest, <<"\n">>, [global]),
    Body = lists:takewhile(fun(L) -> not ends_section(L, Level) end, skip_fenced(Lines)),
    unicode:characters_to_list(lists:join("\n", [L || {L, _} <- Body])).

%% Lines tagged with whether they are inside a fenced block (where `#' is no heading).
skip_fenced(Lines) ->
    {Tagged, _} = lists:mapfoldl(
        fun(L, In) ->
            Fence = binary:match(L, <<"```">>) =:= {0, 3},
            {{L, In orelse Fence}, In xor Fence}
        end, false, Lines),
    Tagged.

ends_section({_, true}, _Level) -> false;
ends_section({L, false}, Level) ->
    Hashes = length(lists:takewhile(fun(C) -> C =:= $# end, binary_to_list(L))),
    Hashes > 0 andalso Hashes =< Level andalso byte_size(L) > Hashes
        andalso binary:at(L, Hashes) =:= $\s.

%% The fenced blocks of language `Lang' (e.g. "sh", "erlang") in `Text', in order, each
%% with its final newline.
blocks(Text, Lang) ->
    [B || {L, B} <- fenced(Text), L =:= Lang].

%% Every fenced block in `Text', in order: {Lang, Body} ("" for a block with no language).
fenced(Text) ->
    case re:run(Text, "```([a-z]*)\n(.*?)```", [dotall, global, unicode,
                                                 {capture, all_but_first, list}]) of
        {match, Bs} -> [{L, B} || [L, B] <- Bs];
        nomatch -> []
    end.

%% Every fenced block of language `Lang' in the Markdown text `Doc', in order, each with
%% the heading line it stands under: [{Heading, Body}].
examples(Doc, Lang) ->
    Lines = binary:split(Doc, <<"\n">>, [global]),
    {_, _, Acc} = lists:foldl(
        fun(L, {Heading, none, Acc}) ->
                case L of
                    <<"```", Tag/binary>> -> {Heading, {binary_to_list(Tag), []}, Acc};
                    <<"#", _/binary>> -> {binary_to_list(L), none, Acc};
                    _ -> {Heading, none, Acc}
                end;
           (<<"```">>, {Heading, {Tag, Body}, Acc}) when Tag =:= Lang ->
                Text = unicode:characters_to_list([[B, $\n] || B <- lists:reverse(Body)]),
                {Heading, none, [{Heading, Text} | Acc]};
           (<<"```">>, {Heading, {_, _}, Acc}) ->
                {Heading, none, Acc};
           (L, {Heading, {Tag, Body}, Acc}) ->
                {Heading, {Tag, [L | Body]}, Acc}
        end, {"", none, []}, Lines),
    lists:reverse(Acc).

%% The one block of language `Lang' in the README's section `Heading'.
block(Heading, Lang) ->
    block(readme(), Heading, Lang).

%% The same in the Markdown text `Doc'.
block(Doc, Heading, Lang) ->
    case blocks(section(Doc, Heading), Lang) of
        [B] -> B;
        Bs -> erlang:error({not_one_block, Heading, Lang, length(Bs)})
    end.

%%%===========================================================================
%%% Running examples as the shell does
%%%===========================================================================

%% Evaluates `Text', one or more expressions each ending in a dot, one after the other
%% with the bindings carried from one to the next, starting from `Bindings'; returns the
%% last value and the bindings. The user's guide calls `io_format/2' as a function local
%% to the shell: it is `io:format/2'.
eval(Text, Bindings) ->
    {ok, Tokens, _} = erl_scan:string(Text),
    lists:foldl(fun(Form, {_, B}) ->
                        {ok, Exprs} = erl_parse:parse_exprs(Form),
                        {value, V, B1} = erl_eval:exprs(Exprs, B, {value, fun local/2}),
                        {V, B1}
                end, {none, Bindings}, split_at_dots(Tokens, [], [])).

split_at_dots([], [], Acc) ->
    lists:reverse(Acc);
split_at_dots([], Cur, _Acc) ->
    erlang:error({no_final_dot, lists:reverse(Cur)});
split_at_dots([{dot, _} = D | T], Cur, Acc) ->
    split_at_dots(T, [], [lists:reverse([D | Cur]) | Acc]);
split_at_dots([Tok | T], Cur, Acc) ->
    split_at_dots(T, [Tok | Cur], Acc).

local(io_format, Args) -> apply(io, format, Args);
local(Name, Args) -> erlang:error({undefined_shell_command, Name, length(Args)}).

%% Evaluates `Text' with fresh bindings; returns what it printed.
eval_printing(Text) ->
    emmap_test_lib:capture(fun() -> eval(Text, erl_eval:new_bindings()) end).

%% The output an example promises in its `% Prints: ...' comment.
expected_print(Text) ->
    case string:split(Text, "% Prints: ") of
        [_, Expected] -> string:trim(Expected) ++ "\n";
        [_] -> erlang:error({no_prints_comment, Text})
    end.

%% `Text' with every `From' replaced by `To' (a README example's fixed file name by a
%% temporary one). Fails if `From' is not in it, so that a test cannot go on running an
%% example whose path changed.
replace_path(Text, From, To) ->
    case string:find(Text, From) of
        nomatch -> erlang:error({not_in_example, From});
        _ -> lists:flatten(string:replace(Text, From, To, all))
    end.
