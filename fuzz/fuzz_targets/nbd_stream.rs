#![no_main]
//! Body: `fuzz_targets::nbd_stream::run` (fuzz-targets/src/nbd_stream.rs), replayed on stable by
//! fuzz-targets/tests/corpora.rs.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::nbd_stream::run(data));
