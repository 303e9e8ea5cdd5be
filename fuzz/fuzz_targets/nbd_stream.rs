#![no_main]
//! Body: `fuzz_targets::nbd_stream::run_input` (fuzz-targets/src/nbd_stream.rs), on an input
//! that `arbitrary` builds from libFuzzer's bytes; fuzz-targets/tests/corpora.rs replays the
//! corpus files on stable through `fuzz_targets::nbd_stream::run`, which decodes them the same way.

libfuzzer_sys::fuzz_target!(|input: fuzz_targets::nbd_stream::Input| {
    fuzz_targets::nbd_stream::run_input(input)
});
