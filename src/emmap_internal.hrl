%%% Macros shared by emmap's modules (not part of the API).

-include_lib("kernel/include/file.hrl").

%% An emmap handle and the resource inside it. The `file' module calls `emmap' for
%% handles of this shape, whichever module made them.
-define(H(R), #file_descriptor{module = emmap, data = R}).

%% Raises `badarg' for a call of the function this is written in, with `Args' its
%% arguments: the shell and `erl_error:format_exception/3' then ask
%% `emmap_errors:format_error/2' which argument is wrong and why. Write it in the public
%% function itself (not in a helper), so that the stack frame names that function.
-define(BADARG(Args), erlang:error(badarg, Args, [{error_info, #{module => emmap_errors}}])).

%% A call to NIF `Call' whose `badarg' is raised again as `?BADARG(Args)'.
-define(NIF_CALL(Call, Args), try Call catch error:badarg -> ?BADARG(Args) end).
