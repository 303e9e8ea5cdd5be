//! The bodies of the fuzz targets in `fuzz/` (cargo-fuzz, nightly), in a library that builds on
//! stable so `cargo test` replays every committed corpus file through the very same code
//! (`tests/corpora.rs`).
//!
//! Every target takes a structured input built by the `arbitrary` crate (`#[derive(Arbitrary)]`
//! types in each module: `ops::Input`, `image::ImageInput`, `nbd_stream::Input`), so libFuzzer's
//! mutations of the bytes stay mutations of fields. Each module has `run_input(Input)`, which
//! the cargo-fuzz targets call through `fuzz_target!(|input: ...|)`, and `run(&[u8])`, which
//! decodes raw bytes the same way ([`decode`]) for the corpus replay. Any bytes decode (an
//! exhausted input reads as zeros, `false` and empty lists), every field is mapped into its
//! range, and lists are truncated to bounds, so every input is valid and every run bounded.
//! Seeds are written as structured values and turned into bytes by [`encode`] (`seeds`).
//! A target *fails* by panicking: a panic of the code under test, a broken
//! engine invariant, an oracle violation or a broken property all end the same way, which is
//! what libFuzzer records as a crash.

pub mod cache_image;
pub mod check;
pub mod encode;
pub mod image;
pub mod nbd_stream;
pub mod ops;
pub mod plog_image;
pub mod seeds;

/// The targets, by the names of `fuzz/fuzz_targets/*.rs` and `fuzz/corpus/*`.
pub const TARGETS: [&str; 5] = ["ops", "cache_image", "plog_image", "nbd_stream", "check"];

/// Decodes raw bytes into a target's input as libFuzzer's `fuzz_target!` does
/// (`arbitrary_take_rest`); `None` only where `arbitrary` gives an error. (`fuzz_target!` also
/// skips an input shorter than the type's minimal size hint; this runs it.)
pub fn decode<T: for<'a> arbitrary::Arbitrary<'a>>(data: &[u8]) -> Option<T> {
    T::arbitrary_take_rest(arbitrary::Unstructured::new(data)).ok()
}

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
