#![no_main]
//! Body: `fuzz_targets::check::run_input` (fuzz-targets/src/check.rs), on an input
//! that `arbitrary` builds from libFuzzer's bytes; fuzz-targets/tests/corpora.rs replays the
//! corpus files on stable through `fuzz_targets::check::run`, which decodes them the same way.

libfuzzer_sys::fuzz_target!(
    |input: fuzz_targets::check::Input| fuzz_targets::check::run_input(input)
);
