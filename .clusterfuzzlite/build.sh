#!/bin/bash -eu
# Builds every cargo-fuzz target of fuzz/ into $OUT, each with its committed corpus as the seed
# corpus, as ClusterFuzzLite (and OSS-Fuzz) expect. Their build image provides $SRC, $OUT, the
# nightly toolchain, cargo-fuzz and the sanitizer flags; scale/cflite-build-locally.sh runs this
# script on a workstation the same way.
cd "$SRC/wbcache"
cargo fuzz build --fuzz-dir fuzz -O --debug-assertions
built="fuzz/target/x86_64-unknown-linux-gnu/release"
targets=$(cargo fuzz list --fuzz-dir fuzz)
[ -n "$targets" ] || { echo "build.sh: cargo fuzz list found no target" >&2; exit 1; }
for t in $targets; do
  cp "$built/$t" "$OUT/$t"
  if [ -d "fuzz/corpus/$t" ] && [ -n "$(ls -A "fuzz/corpus/$t")" ]; then
    (cd "fuzz/corpus/$t" && zip -q -r "$OUT/${t}_seed_corpus.zip" .)
  fi
done
echo "build.sh: built $(echo $targets | wc -w) fuzz targets into $OUT:" $targets
