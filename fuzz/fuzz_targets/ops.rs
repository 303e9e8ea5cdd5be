#![no_main]
//! Body: `fuzz_targets::ops::run_input` (fuzz-targets/src/ops.rs), on an input
//! that `arbitrary` builds from libFuzzer's bytes; fuzz-targets/tests/corpora.rs replays the
//! corpus files on stable through `fuzz_targets::ops::run`, which decodes them the same way.

libfuzzer_sys::fuzz_target!(|input: fuzz_targets::ops::Input| fuzz_targets::ops::run_input(input));
