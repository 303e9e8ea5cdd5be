#![no_main]
//! Body: `fuzz_targets::cache_image::run_input` (fuzz-targets/src/cache_image.rs), on an input
//! that `arbitrary` builds from libFuzzer's bytes; fuzz-targets/tests/corpora.rs replays the
//! corpus files on stable through `fuzz_targets::cache_image::run`, which decodes them alike.

libfuzzer_sys::fuzz_target!(|input: fuzz_targets::cache_image::Input| {
    fuzz_targets::cache_image::run_input(input)
});
