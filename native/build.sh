#!/bin/sh
# Installs the NIF as priv/emmap.so. Called by rebar3's pre-compile hook; safe to run by hand.
#
# priv/emmap.so.sha256 records what the library was built from: a SHA-256 over the native
# sources, Cargo.toml, Cargo.lock and this script, the target it was built for, and the
# library's own SHA-256. When all three still hold, the library is used as it is and cargo
# is not run (nor needed). Otherwise cargo builds it (`--locked`: exactly the crate
# versions in Cargo.lock) and the record is rewritten. Needs only a POSIX shell and
# coreutils' sha256sum for the check.
#
# The library is copied under a temporary name and then renamed over the old one, so a VM
# that has the old library loaded keeps a valid mapping of it.
set -eu
cd "$(dirname "$0")/.."

lib=priv/emmap.so
record=priv/emmap.so.sha256

# The target the library is for: machine, OS and C library (glibc or musl).
target() {
    libc=gnu
    case "$(ldd --version 2>&1 || true)" in *musl*) libc=musl ;; esac
    for f in /lib/ld-musl-*; do
        if [ -e "$f" ]; then libc=musl; fi
    done
    echo "$(uname -m)-$(uname -s | tr 'A-Z' 'a-z')-$libc"
}

# SHA-256 over every file cargo reads to build the library (names included).
sources_sha256() {
    { echo Cargo.toml; echo Cargo.lock; echo native/build.sh
      find native -type f \( -path 'native/*/src/*' -o -path 'native/*/Cargo.toml' \
                             -o -path 'native/*/build.rs' \); } |
        LC_ALL=C sort |
        while IFS= read -r f; do sha256sum "$f"; done |
        sha256sum | cut -c1-64
}

file_sha256() {
    sha256sum "$1" | cut -c1-64
}

sources=$(sources_sha256)
tgt=$(target)

if [ -f "$lib" ] && [ -f "$record" ] &&
   [ "$(grep -v '^#' "$record")" = "$(printf 'sources %s\ntarget %s\nlibrary %s' \
                                       "$sources" "$tgt" "$(file_sha256 "$lib")")" ]; then
    exit 0
fi

echo "emmap: building the Rust NIF with cargo, ~30 s the first time"
PATH="$HOME/.cargo/bin:$PATH"
export PATH
if ! command -v cargo >/dev/null 2>&1; then
    if [ -f "$lib" ]; then
        why="$lib was built from other sources or for another target than $tgt"
    else
        why="there is no $lib built for $tgt"
    fi
    echo "emmap: $why, and cargo is not installed: install Rust (https://rustup.rs) and retry" >&2
    exit 1
fi
# The library's thread-locals (the per-thread reader slot of `readers.rs`, read by every
# data call on a `lock` handle) belong to a library the VM loads at run time: by default
# each access calls `__tls_get_addr`. With TLS descriptors it is one indirect call to a
# resolver of two instructions when the C library placed them in its static TLS block.
# Only for x86-64 glibc (elsewhere descriptors are the default or unsupported), only when
# this rustc's LLVM knows the option, and never over flags set by the caller (`RUSTFLAGS`
# takes precedence over this variable).
if [ "$tgt" = x86_64-linux-gnu ] && [ -z "${CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS+x}" ] &&
   rustc -C llvm-args=-enable-tlsdesc --print cfg >/dev/null 2>&1; then
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C llvm-args=-enable-tlsdesc"
    export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS
fi
cargo build --locked --release --quiet -p emmap_nif --target-dir "$PWD/target"
mkdir -p priv
tmp="priv/.emmap.so.$$"
cp target/release/libemmap.so "$tmp"
mv -f "$tmp" "$lib"
{ echo "# $lib was built from these sources for this target (native/build.sh checks it)"
  echo "sources $sources"
  echo "target $tgt"
  echo "library $(file_sha256 "$lib")"; } > "$tmp"
mv -f "$tmp" "$record"
