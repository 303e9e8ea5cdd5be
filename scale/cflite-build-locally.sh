#!/usr/bin/env bash
# Runs .clusterfuzzlite/build.sh on this machine as ClusterFuzzLite's build image would (same
# $SRC/$OUT/$WORK layout, nightly cargo-fuzz, AddressSanitizer), then runs every fuzzer it
# built over its seed corpus: the check that the ClusterFuzzLite configuration builds what it
# should. Needs the nightly toolchain, cargo-fuzz and zip; takes a few minutes.
# Usage: scale/cflite-build-locally.sh [OUT_DIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export SRC="$work/src" WORK="$work/work" OUT="${1:-$work/out}"
mkdir -p "$SRC" "$WORK" "$OUT"
ln -s "$repo" "$SRC/wbcache"
export RUSTUP_TOOLCHAIN=nightly SANITIZER=address
command -v cargo-fuzz >/dev/null || { echo "cflite-build-locally: cargo-fuzz is missing (cargo install cargo-fuzz)" >&2; exit 2; }
bash "$repo/.clusterfuzzlite/build.sh"
expected=$(cd "$repo" && cargo fuzz list --fuzz-dir fuzz)
n=0
for t in $expected; do
  [ -x "$OUT/$t" ] || { echo "cflite-build-locally: $t was not built into \$OUT" >&2; exit 1; }
  corpus="$WORK/corpus-$t"
  mkdir -p "$corpus"
  if [ -f "$OUT/${t}_seed_corpus.zip" ]; then unzip -q -o "$OUT/${t}_seed_corpus.zip" -d "$corpus"; fi
  # Every seed input once, then 2000 new ones: a built fuzzer that runs.
  "$OUT/$t" -runs=2000 "$corpus" >"$WORK/$t.log" 2>&1 || { tail -20 "$WORK/$t.log"; exit 1; }
  echo "cflite-build-locally: $t: $(grep -c . <(ls "$corpus")) seed inputs, $(grep -o 'Done [0-9]* runs' "$WORK/$t.log")"
  n=$((n + 1))
done
echo "cflite-build-locally: PASSED: build.sh built all $n fuzz targets, and each ran its seed corpus"
