#!/bin/sh
# Instructions per call of the per-call rows of `make bench` (emmap_bench_rows), counted
# by valgrind's callgrind: exact and repeatable (within a few instructions between runs),
# unlike wall time on a shared machine. `make bench-instructions` builds everything and
# runs this; it needs valgrind (Debian: apt-get install valgrind) and nothing else that
# the build does not already need.
#
#   test/bench/instructions.sh [N] [OUTDIR] [--breakdown REGEX] [--top K]
#
# N calls per phase (default 20000), 5 phases per row, the median phase / N reported;
# OUTDIR (default _build/bench/cg) keeps callgrind's dumps. With --breakdown, the rows
# whose name matches REGEX also get the instructions per call of each function (JIT code
# named after its Erlang function through the VM's perf map), i.e. where they go.
#
# The VM runs with one scheduler of each kind and no busy waiting, so that only the
# calls measured run (+S 1 +SDcpu 1 +SDio 1 +A 0 +sbwt none); the JIT's code is
# self-modifying, hence --smc-check=all. The dumps are made at each call of
# emmap_bench_floor:mark() (--dump-before=emmap_bench_mark). Every number includes the
# bench loop (`loop overhead | empty fun` is that loop alone). Takes a few minutes.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
N=${1:-20000}
out=${2:-$top/_build/bench/cg}
case $out in /*) ;; *) out=$PWD/$out ;; esac
cd "$here"
[ $# -ge 2 ] && shift 2 || shift $#
command -v valgrind >/dev/null || { echo "instructions.sh: valgrind is needed (apt-get install valgrind)"; exit 1; }
floor="$top/target/release/libemmap_bench_floor"
[ -f "$floor.so" ] || { echo "instructions.sh: no $floor.so: run make bench-floor"; exit 1; }
ebin=$(mktemp -d)
trap 'rm -rf "$ebin"' EXIT
erlc -o "$ebin" emmap_bench_rows.erl emmap_bench_floor.erl
rm -rf "$out"
mkdir -p "$out"
EMMAP_BENCH_FLOOR="$floor" CG_NAMES="$out/names.txt" \
valgrind --tool=callgrind --trace-children=yes --smc-check=all \
    --dump-before=emmap_bench_mark --dump-instr=yes --callgrind-out-file="$out/cg.%p" \
    erl +S 1 +SDcpu 1 +SDio 1 +A 0 +sbwt none +sbwtdcpu none +sbwtdio none +JPperf map \
    -noinput -noshell -pa "$ebin" -pa "$top/_build/test/lib/emmap/ebin" \
    -pa "$top/_build/test/lib/emmap/test" \
    -eval "io:format(\"beam pid ~s~n\", [os:getpid()]), emmap_bench_rows:cg($N), halt()." \
    > "$out/log.txt" 2>&1 || { tail -20 "$out/log.txt"; exit 1; }
pid=$(sed -n 's/^beam pid \([0-9]*\)$/\1/p' "$out/log.txt")
[ -f "/tmp/perf-$pid.map" ] && mv "/tmp/perf-$pid.map" "$out/perf.map"
escript "$here/cg_report.escript" "$out" "$N" "$@"
