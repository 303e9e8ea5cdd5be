#![no_main]
//! Body: `fuzz_targets::check::run` (fuzz-targets/src/check.rs), replayed on stable by
//! fuzz-targets/tests/corpora.rs.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::check::run(data));
