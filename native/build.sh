#!/bin/sh
# Builds the NIF in release mode and installs it as priv/emmap.so.
# Called by rebar3's pre-compile hook; safe to run by hand.
# The .so is copied under a temporary name and then renamed over the old one, so a VM
# that has the old library loaded keeps a valid mapping of it.
set -eu
cd "$(dirname "$0")/.."
PATH="$HOME/.cargo/bin:$PATH"
export PATH
if ! command -v cargo >/dev/null 2>&1; then
    echo "emmap: cargo not found; install Rust (https://rustup.rs) and retry" >&2
    exit 1
fi
cargo build --release --quiet -p emmap_nif --target-dir "$PWD/target"
src=target/release/libemmap.so
[ -f "$src" ] || src=target/release/libemmap.dylib
mkdir -p priv
tmp="priv/.emmap.so.$$"
cp "$src" "$tmp"
mv -f "$tmp" priv/emmap.so
