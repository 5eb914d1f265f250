%%% Reading the README's sections and code blocks, for tests that run its snippets as
%%% written.
-module(emmap_readme).

-export([section/1, blocks/2, block/2, root/0]).

%% The checkout's root (rebar3 runs tests from there).
root() ->
    {ok, Cwd} = file:get_cwd(),
    Cwd.

%% The text under the heading line `Heading' (e.g. "## Errors"), up to the next heading of
%% the same or a higher level. Fails if the README has no such heading.
section(Heading) ->
    {ok, Readme} = file:read_file(filename:join(root(), "README.md")),
    Level = length(lists:takewhile(fun(C) -> C =:= $# end, Heading)),
    [_, Rest] = binary:split(Readme, iolist_to_binary(["\n", Heading, "\n"])),
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
    case re:run(Text, "```" ++ Lang ++ "\n(.*?)```", [dotall, global, unicode,
                                                       {capture, all_but_first, list}]) of
        {match, Bs} -> [B || [B] <- Bs];
        nomatch -> []
    end.

%% The one block of language `Lang' in the section `Heading'.
block(Heading, Lang) ->
    [B] = blocks(section(Heading), Lang),
    B.
