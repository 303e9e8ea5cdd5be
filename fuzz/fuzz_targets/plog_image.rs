#![no_main]
//! Body: `fuzz_targets::plog_image::run` (fuzz-targets/src/plog_image.rs), replayed on stable by
//! fuzz-targets/tests/corpora.rs.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::plog_image::run(data));
