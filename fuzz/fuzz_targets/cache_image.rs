#![no_main]
//! Body: `fuzz_targets::cache_image::run` (fuzz-targets/src/cache_image.rs), replayed on stable by
//! fuzz-targets/tests/corpora.rs.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::cache_image::run(data));
