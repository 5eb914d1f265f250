%%% @doc The queue server of `emmap_queue': a `gen_server' that owns a queue opened with
%%% `emmap_queue:open/3', for any number of client processes. `emmap_queue' exports the
%%% same functions (`emmap_queue:start_link/4', `enqueue/2', ...), which call these.
%%%
%%% The server pops with the purging variants (`emmap_queue:pop_and_purge/1',
%%% `emmap_queue:try_pop_and_purge/2'), so the segment is reclaimed each time the queue
%%% runs empty, and it closes the mapping when it terminates.
-module(emmap_queue_server).
-behaviour(gen_server).

-include("emmap_internal.hrl").

%% Server API
-export([start_link/4, stop/1, enqueue/2, dequeue/1, try_dequeue/2, inspect/1, info/1]).

%% gen_server callbacks
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-record(state, {q :: emmap_queue:queue()}).

%%%===========================================================================
%%% Server API
%%%===========================================================================

%% @doc `emmap_queue:start_link/4': starts a server owning a queue, linked to the caller.
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
        _ -> ?BADARG([Name, File, Size, Opts])
    end;
start_link(Name, File, Size, Opts) ->
    ?BADARG([Name, File, Size, Opts]).

%% @doc `emmap_queue:stop/1': stops the server, closing the queue.
-spec stop(Server :: emmap_queue:server()) -> ok.
stop(Server) ->
    gen_server:stop(Server).

%% @doc `emmap_queue:enqueue/2': appends `Term' to the server's queue.
-spec enqueue(Server :: emmap_queue:server(), Term :: term()) ->
          ok | {error, full} | emmap_queue:failure().
enqueue(Server, Term) ->
    gen_server:call(Server, {push, Term}, infinity).

%% @doc `emmap_queue:dequeue/1': removes and returns the oldest term.
-spec dequeue(Server :: emmap_queue:server()) -> term() | nil | emmap_queue:failure().
dequeue(Server) ->
    gen_server:call(Server, pop, infinity).

%% @doc `emmap_queue:try_dequeue/2': calls `Fun' on the oldest term in the server, removing
%% it if `Fun' returns.
-spec try_dequeue(Server :: emmap_queue:server(), Fun :: fun((term()) -> Result)) ->
          Result | nil | emmap_queue:failure().
try_dequeue(Server, Fun) when is_function(Fun, 1) ->
    case gen_server:call(Server, {try_pop, Fun}, infinity) of
        {ok, Res} -> Res;
        {raise, Class, Reason, Stack} -> erlang:raise(Class, Reason, Stack)
    end;
try_dequeue(Server, Fun) ->
    ?BADARG([Server, Fun]).

%% @doc `emmap_queue:inspect/1': the oldest term, left in the queue.
-spec inspect(Server :: emmap_queue:server()) -> term() | nil | emmap_queue:failure().
inspect(Server) ->
    gen_server:call(Server, peek, infinity).

%% @doc `emmap_queue:info/1': the server's queue header.
-spec info(Server :: emmap_queue:server()) -> emmap_queue:metadata() | emmap_queue:failure().
info(Server) ->
    gen_server:call(Server, info, infinity).

%%%---------------------------------------------------------------------------
%%% gen_server callbacks
%%%---------------------------------------------------------------------------

%% @private
%% @doc gen_server callback of the queue server.
-spec init({file:name_all(), non_neg_integer(), [emmap:open_option()]}) ->
          {ok, #state{}} | {stop, term()}.
init({File, Size, Opts}) ->
    process_flag(trap_exit, true),              % so that terminate/2 closes the queue
    try emmap_queue:open(File, Size, Opts) of
        {ok, Q} -> {ok, #state{q = Q}};
        {error, Reason} -> {stop, Reason}
    catch
        error:badarg -> {stop, badarg}
    end.

%% @private
%% @doc gen_server callback of the queue server.
-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call({push, Term}, _From, #state{q = Q} = St) ->
    {reply, emmap_queue:push(Q, Term), St};
handle_call(pop, _From, #state{q = Q} = St) ->
    {reply, emmap_queue:pop_and_purge(Q), St};
handle_call({try_pop, Fun}, _From, #state{q = Q} = St) ->
    Reply = try {ok, emmap_queue:try_pop_and_purge(Q, Fun)}
            catch Class:Reason:Stack -> {raise, Class, Reason, Stack}
            end,
    {reply, Reply, St};
handle_call(peek, _From, #state{q = Q} = St) ->
    {reply, emmap_queue:peek_front(Q), St};
handle_call(info, _From, #state{q = Q} = St) ->
    {reply, emmap_queue:metadata(Q), St};
handle_call(_Other, _From, St) ->
    {reply, {error, badarg}, St}.

%% @private
%% @doc gen_server callback of the queue server.
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, St) ->
    {noreply, St}.

%% @private
%% @doc gen_server callback of the queue server.
-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info(_Msg, St) ->
    {noreply, St}.

%% @private
%% @doc gen_server callback of the queue server.
-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, #state{q = Q}) ->
    emmap_queue:close(Q).
