# emmap: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
REBAR ?= rebar3
export PATH := $(HOME)/.cargo/bin:$(PATH)

DEB_PKGS := erlang-nox erlang-dev erlang-eunit erlang-dialyzer erlang-tools rebar3 erlang-proper elixir gcc make

.PHONY: all deps compile demo docs test test-rust test-erlang lint dialyzer bench bench-floor bench-instructions soak clean

all: compile

## deps: install what is missing (Debian packages as root, else print the command)
deps:
	@missing=""; \
	for c in erl rebar3 cargo; do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	[ -d /usr/lib/erlang/lib/proper-* ] 2>/dev/null || ls -d /usr/lib/erlang/lib/proper-* >/dev/null 2>&1 || missing="$$missing proper"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	echo "emmap: missing:$$missing"; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_PKGS); \
	else \
	  echo "run: sudo apt-get update && sudo apt-get install -y $(DEB_PKGS)"; \
	fi; \
	command -v cargo >/dev/null || { echo "emmap: Rust is needed: https://rustup.rs (curl https://sh.rustup.rs -sSf | sh)"; exit 1; }; \
	command -v rebar3 >/dev/null || exit 1

compile: deps
	$(REBAR) compile

## demo: build, then run the README examples in a real VM and print what they print
demo: deps
	$(REBAR) as test compile
	erl -noshell -pa _build/test/lib/emmap/ebin -pa _build/test/lib/emmap/test \
	    -eval 'emmap_seed_tests:demo(), halt().'

## test: every check: fmt/clippy/dialyzer, docs, Rust tests, then EUnit (incl. PropEr properties)
test: deps lint docs test-rust test-erlang

test-rust:
	cargo test --locked --quiet --workspace

test-erlang:
	$(REBAR) eunit

lint:
	cargo fmt --check
	cargo clippy --locked --quiet --all-targets -- -D warnings
	cargo fmt --check --manifest-path $(FLOOR)/Cargo.toml
	cargo clippy --locked --quiet --manifest-path $(FLOOR)/Cargo.toml --target-dir target -- -D warnings
	$(REBAR) dialyzer

## docs: HTML documentation of every module in doc/ (open doc/index.html); fails on any
## edoc warning and if a module of src/ has no page (internal modules, marked `@private',
## have none)
docs: deps
	@out="$$($(REBAR) edoc 2>&1)"; status=$$?; printf '%s\n' "$$out"; \
	if [ $$status -ne 0 ]; then exit $$status; fi; \
	if printf '%s\n' "$$out" | grep -qi 'warning'; then echo "emmap: edoc warnings (above)"; exit 1; fi; \
	for f in src/*.erl; do m=$$(basename $$f .erl); \
	  grep -q '^%%% @private' $$f && continue; \
	  [ -s doc/$$m.html ] || { echo "emmap: no doc/$$m.html"; exit 1; }; done

## soak: long variants of the reliability tests (EMMAP_SOAK=1): 2 x 5,000 concurrent
## programs, 1,000,000 fuzzed calls, 60 kill -9 rounds, 2 x 2,000,000 cross-process increments
soak: deps
	EMMAP_SOAK=1 $(REBAR) eunit --module=emmap_statem_tests,emmap_fuzz_tests,emmap_os_tests

## bench: ns/op table (emmap vs file, atomics, counters, ets ...), then the performance
## targets: each row's ratio to its reference row and its distance to its floor, all
## measured in the same run; `make bench ARGS=quick` for a short run
bench: deps bench-floor
	$(REBAR) as test compile
	escript test/bench/bench.escript $(ARGS)

## bench-instructions: instructions per call of the same rows under valgrind's callgrind
## (exact, unlike wall time on a shared machine); see test/bench/instructions.sh
bench-instructions: deps bench-floor
	$(REBAR) as test compile
	test/bench/instructions.sh $(ARGS)

# The empty NIFs of the bench's floors: a crate of its own under test/bench/floor, built
# into target/ here only; never part of the emmap library or its package.
FLOOR := test/bench/floor
bench-floor:
	cargo build --locked --quiet --release --manifest-path $(FLOOR)/Cargo.toml --target-dir target

clean:
	$(REBAR) clean
	cargo clean
	rm -f priv/emmap.so priv/emmap.so.sha256
	rm -rf doc
