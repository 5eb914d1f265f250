%%% The PropEr macros the test modules use, as proper.hrl defines them. Debian's
%%% erlang-proper ships only the beams (proper.hrl is in erlang-proper-dev, which CI does
%%% not install), so they are defined here, once. eunit.hrl has a ?LET of its own, hence
%%% ?BIND for proper.hrl's ?LET.

-define(FORALL(X, RawType, Prop), proper:forall(RawType, fun(X) -> Prop end)).
-define(BIND(X, RawType, Gen), proper_types:bind(RawType, fun(X) -> Gen end, false)).
-define(SUCHTHAT(X, RawType, Cond), proper_types:add_constraint(RawType, fun(X) -> Cond end, true)).
-define(WHENFAIL(Action, Prop), proper:whenfail(fun() -> Action end, fun() -> Prop end)).
