//! The bodies of the fuzz targets in `fuzz/` (cargo-fuzz, nightly), in a library that builds on
//! stable so `cargo test` replays every committed corpus file through the very same code
//! (`tests/corpora.rs`).
//!
//! Every target takes raw bytes and decodes them with a bounded [`bytes::Reader`] (an exhausted
//! input reads as zeros), so any input is valid, every run is bounded, and seeds can be written
//! by hand (`seeds`). A target *fails* by panicking: a panic of the code under test, a broken
//! engine invariant, an oracle violation or a broken property all end the same way, which is
//! what libFuzzer records as a crash.

pub mod bytes;
pub mod cache_image;
pub mod check;
pub mod image;
pub mod nbd_stream;
pub mod ops;
pub mod plog_image;
pub mod seeds;

/// The targets, by the names of `fuzz/fuzz_targets/*.rs` and `fuzz/corpus/*`.
pub const TARGETS: [&str; 5] = ["ops", "cache_image", "plog_image", "nbd_stream", "check"];

/// Runs one target's body on one input. Panics on a finding; `false` for an unknown target.
pub fn run(target: &str, data: &[u8]) -> bool {
    match target {
        "ops" => ops::run(data),
        "cache_image" => cache_image::run(data),
        "plog_image" => plog_image::run(data),
        "nbd_stream" => nbd_stream::run(data),
        "check" => check::run(data),
        _ => return false,
    }
    true
}
