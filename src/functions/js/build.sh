#!/usr/bin/env bash
# Builds the JavaScript engine that the server ships (engine.wasm, next to this script): QuickJS
# (quickjs-ng) compiled to WebAssembly with engine.c and prelude.js. Every input is pinned: the
# QuickJS sources come from the rquickjs-sys crate on crates.io, checked against its SHA-256, and
# the compiler is Debian 12's clang 14 with wasi-libc (apt-get install clang-14 lld wasi-libc
# libclang-rt-14-dev-wasm32). The build is reproducible; engine.wasm.sha256 records the output,
# the test suite checks the shipped engine against it, and CI (.ci/run) rebuilds and compares
# when this toolchain is present.
#
#   src/functions/js/build.sh            rebuild engine.wasm and engine.wasm.sha256
#   src/functions/js/build.sh --check    rebuild into a temporary file and compare
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
QUICKJS_CRATE=rquickjs-sys
QUICKJS_VERSION=0.14.0
QUICKJS_SHA256=cee271d0eeba64f0915b846cb7ae02e16faf3dfdffdca91731101d9d30fe3423
CLANG_VERSION=14

check=false
[ "${1:-}" = "--check" ] && check=true
clang="$(command -v "clang-$CLANG_VERSION" || true)"
if [ -z "$clang" ] || [ ! -f /usr/lib/wasm32-wasi/libc.a ] \
  || [ ! -f "/usr/lib/llvm-$CLANG_VERSION/lib/clang/"*"/lib/wasi/libclang_rt.builtins-wasm32.a" ]; then
  echo "cannot build the engine: needs clang-$CLANG_VERSION, lld, wasi-libc and libclang-rt-$CLANG_VERSION-dev-wasm32 (Debian 12)" >&2
  exit 3
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
crate="$work/quickjs.crate"
cache="${EB_QUICKJS_CRATE:-}"
if [ -n "$cache" ] && [ -f "$cache" ]; then
  cp "$cache" "$crate"
elif ! command -v curl >/dev/null 2>&1; then
  echo "cannot build the engine: needs curl to fetch the pinned QuickJS sources (or EB_QUICKJS_CRATE=<the .crate file>)" >&2
  exit 3
elif ! curl -fsSL --retry 3 -o "$crate" \
    "https://static.crates.io/crates/$QUICKJS_CRATE/$QUICKJS_CRATE-$QUICKJS_VERSION.crate"; then
  echo "cannot build the engine: static.crates.io did not serve $QUICKJS_CRATE $QUICKJS_VERSION" >&2
  exit 3
fi
echo "$QUICKJS_SHA256  $crate" | sha256sum --check --quiet
tar -xzf "$crate" -C "$work"
src="$work/$QUICKJS_CRATE-$QUICKJS_VERSION/quickjs"

# prelude.js as a C array, so the engine carries it.
{
  echo "static const unsigned char prelude_js[] = {"
  od -An -v -tx1 "$here/prelude.js" | sed -e 's/ \([0-9a-f][0-9a-f]\)/0x\1,/g'
  echo "};"
  echo "static const unsigned int prelude_js_len = sizeof prelude_js;"
} > "$work/prelude.h"

cp "$here/engine.c" "$work/engine.c"
cd "$work"
flags=(
  --target=wasm32-wasi -O2 -DNDEBUG
  -D_WASI_EMULATED_PROCESS_CLOCKS -D_WASI_EMULATED_SIGNAL -D_GNU_SOURCE
  -ffile-prefix-map="$work"=/build -fno-ident -w
  -I "$src" -I "$work"
)
objects=()
for file in "$src/quickjs.c" "$src/libregexp.c" "$src/libunicode.c" "$src/dtoa.c" engine.c; do
  object="$work/$(basename "$file" .c).o"
  "$clang" "${flags[@]}" -c "$file" -o "$object"
  objects+=("$object")
done
out="$work/engine.wasm"
"$clang" --target=wasm32-wasi -O2 -nostartfiles -fuse-ld=lld \
  -Wl,--no-entry -Wl,--stack-first -Wl,-z,stack-size=1048576 -Wl,--gc-sections -Wl,--strip-all \
  "${objects[@]}" -lwasi-emulated-process-clocks -lwasi-emulated-signal -o "$out"

sum="$(sha256sum "$out" | cut -d' ' -f1)"
if $check; then
  recorded="$(cut -d' ' -f1 "$here/engine.wasm.sha256")"
  shipped="$(sha256sum "$here/engine.wasm" | cut -d' ' -f1)"
  if [ "$sum" != "$recorded" ] || [ "$shipped" != "$recorded" ]; then
    echo "the engine does not match its build: built $sum, recorded $recorded, shipped $shipped" >&2
    exit 1
  fi
  echo "the engine matches its build: $sum"
else
  cp "$out" "$here/engine.wasm"
  echo "$sum  engine.wasm" > "$here/engine.wasm.sha256"
  echo "built engine.wasm ($(wc -c < "$out") bytes): $sum"
fi
