#![no_main]
//! Body: `fuzz_targets::plog_image::run_input` (fuzz-targets/src/plog_image.rs), on an input
//! that `arbitrary` builds from libFuzzer's bytes; fuzz-targets/tests/corpora.rs replays the
//! corpus files on stable through `fuzz_targets::plog_image::run`, which decodes them the same way.

libfuzzer_sys::fuzz_target!(|input: fuzz_targets::plog_image::Input| {
    fuzz_targets::plog_image::run_input(input)
});
