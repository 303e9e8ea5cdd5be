#![no_main]
//! Body: `fuzz_targets::ops::run` (fuzz-targets/src/ops.rs), replayed on stable by
//! fuzz-targets/tests/corpora.rs.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::ops::run(data));
