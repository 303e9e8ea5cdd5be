//! Replays every committed fuzz input (`fuzz/corpus/<target>/` and, where present,
//! `fuzz/regressions/<target>/`) through the target bodies, on stable: what the fuzzers found
//! once stays fixed, and the bodies keep building and passing without nightly.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.expect("read corpus directory entry").path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn replay(target: &str) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let corpus = files(&fuzz.join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ is missing or empty: every target keeps a seed corpus"
    );
    let all: Vec<PathBuf> = corpus
        .into_iter()
        .chain(files(&fuzz.join("regressions").join(target)))
        .collect();
    let mut failed = Vec::new();
    for path in &all {
        let data = std::fs::read(path).expect("read corpus file");
        let r = catch_unwind(AssertUnwindSafe(|| {
            assert!(fuzz_targets::run(target, &data), "unknown target {target}")
        }));
        if r.is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {target} inputs fail: {failed:?}",
        failed.len(),
        all.len()
    );
}

#[test]
fn every_target_has_a_test() {
    assert_eq!(
        fuzz_targets::TARGETS,
        ["ops", "cache_image", "plog_image", "nbd_stream", "check"]
    );
}

#[test]
fn ops() {
    replay("ops");
}

#[test]
fn cache_image() {
    replay("cache_image");
}

#[test]
fn plog_image() {
    replay("plog_image");
}

#[test]
fn nbd_stream() {
    replay("nbd_stream");
}

#[test]
fn check() {
    replay("check");
}
