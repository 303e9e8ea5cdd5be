//! Replays every committed fuzz input (`fuzz/corpus/<target>/` and, where present,
//! `fuzz/regressions/<target>/`) through the target bodies, on stable: what the fuzzers found
//! once stays fixed, and the bodies keep building and passing without nightly. Also: every seed
//! decodes back to the structured value it was written as, the committed seed files are the
//! seeds, and the corpora reach what they are meant to (every op kind, both cache types, every
//! template, every NBD command, ...).

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use fuzz_targets::image::ImageInput;
use fuzz_targets::nbd_stream::{self, Cmd, Length, Name, Offset, OptCode, OptData};
use fuzz_targets::ops::{self, Op, Persisted, StepKind};

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

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The committed corpus files of `target`, decoded.
fn corpus<T: for<'a> arbitrary::Arbitrary<'a>>(target: &str) -> Vec<(String, T)> {
    files(&fuzz_dir().join("corpus").join(target))
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).expect("read corpus file");
            let v = fuzz_targets::decode(&data)
                .unwrap_or_else(|| panic!("{} does not decode", p.display()));
            (p.display().to_string(), v)
        })
        .collect()
}

fn replay(target: &str) {
    let fuzz = fuzz_dir();
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

#[test]
fn seeds_decode_to_their_values() {
    for seed in fuzz_targets::seeds::seeds() {
        assert_eq!(
            seed.decoded().as_ref(),
            Some(&seed.value),
            "{}/{} decodes to another value: the encoder no longer matches arbitrary's format",
            seed.target,
            seed.name
        );
    }
}

#[test]
fn committed_seeds_are_the_seeds() {
    for (target, name, bytes) in fuzz_targets::seeds::all() {
        let path = fuzz_dir().join("corpus").join(target).join(&name);
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `cargo run -p wbcache-fuzz-targets --example seeds`",
                path.display()
            )
        });
        assert!(
            committed == bytes,
            "{} differs from its seed; run `cargo run -p wbcache-fuzz-targets --example seeds`",
            path.display()
        );
    }
}

fn missing<T: Ord + std::fmt::Debug + Clone>(want: &[T], have: &BTreeSet<T>) -> Vec<T> {
    want.iter().filter(|w| !have.contains(w)).cloned().collect()
}

#[test]
fn ops_corpus_reaches_every_op_kind_and_setting() {
    let inputs: Vec<(String, ops::Input)> = corpus("ops");
    let mut seen = BTreeSet::new();
    for (_, i) in &inputs {
        let s = &i.setup;
        for (flag, name) in [
            (s.type1, "type 1"),
            (!s.type1, "type 0"),
            (s.order5, "order 5"),
            (!s.order5, "order 4"),
            (s.unit8, "4 KiB units"),
            (!s.unit8, "512-byte units"),
            (s.garbage_torn, "garbage-torn"),
            (s.zero_torn, "zero-torn"),
            (s.torn_runs, "torn-runs"),
            (s.intervals, "timer intervals"),
            (s.eio_write, "eio-write"),
            (s.eio_read, "eio-read"),
            (s.behind, "no writeback ahead"),
            (s.allow_writeback, "allow_writeback"),
            (s.completion.is_some(), "seeded completion"),
            (s.completion.is_none(), "in-order completion"),
            (!i.more.is_empty(), "several cuts"),
            (i.recovery_cut.is_some(), "a cut in recovery"),
        ] {
            if flag {
                seen.insert(name.to_string());
            }
        }
        for op in &i.ops {
            seen.insert(
                match op {
                    Op::Write { .. } => "write",
                    Op::Partial { .. } => "partial write",
                    Op::Multi { .. } => "multi-block write",
                    Op::Fua { .. } => "FUA write",
                    Op::Discard { .. } => "discard",
                    Op::Zeroes { .. } => "write-zeroes",
                    Op::ReadMany { .. } => "read-many",
                    Op::Flush => "FLUSH",
                    Op::Step(_) => "step",
                    Op::Background(_) => "background step",
                    Op::DropCaches => "drop_caches",
                    Op::Tick => "tick",
                    Op::Tunable { .. } => "tunable",
                    Op::Reformat => "reformat",
                }
                .to_string(),
            );
            if let Op::Step(k) | Op::Background(k) = op {
                seen.insert(format!("{k:?}"));
            }
        }
        for c in i.crashes().chain(i.recovery_cut.as_ref()) {
            for p in &c.persisted {
                seen.insert(
                    match p {
                        Persisted::Lost => "lost",
                        Persisted::Whole => "persisted whole",
                        Persisted::Torn(_) => "torn",
                    }
                    .to_string(),
                );
            }
        }
        let w = i.workload();
        assert!(w.validate().is_ok(), "{w} is not a valid workload");
    }
    let want: Vec<String> = [
        "type 0",
        "type 1",
        "order 4",
        "order 5",
        "512-byte units",
        "4 KiB units",
        "garbage-torn",
        "zero-torn",
        "torn-runs",
        "timer intervals",
        "eio-write",
        "eio-read",
        "no writeback ahead",
        "allow_writeback",
        "seeded completion",
        "in-order completion",
        "several cuts",
        "a cut in recovery",
        "write",
        "partial write",
        "multi-block write",
        "FUA write",
        "discard",
        "write-zeroes",
        "read-many",
        "FLUSH",
        "step",
        "background step",
        "drop_caches",
        "tick",
        "tunable",
        "reformat",
        "lost",
        "persisted whole",
        "torn",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(
        [
            StepKind::Seal,
            StepKind::FlushSegment,
            StepKind::Writeback,
            StepKind::Record,
            StepKind::Sync,
        ]
        .iter()
        .map(|k| format!("{k:?}")),
    )
    .collect();
    assert_eq!(
        missing(&want, &seen),
        Vec::<String>::new(),
        "the ops corpus misses these"
    );
}

/// Every template the target accepts, a resized image, XOR and overwrite patches.
fn images_reach(target: &str, plog: Option<bool>) {
    let inputs: Vec<(String, ImageInput)> = corpus(target);
    let n = fuzz_targets::image::templates()
        .iter()
        .filter(|t| plog.is_none_or(|p| t.plog.is_some() == p))
        .count();
    let templates: BTreeSet<usize> = inputs
        .iter()
        .map(|(_, i)| usize::from(i.template) % n)
        .collect();
    let want: Vec<usize> = (0..n).collect();
    assert_eq!(
        missing(&want, &templates),
        Vec::<usize>::new(),
        "{target}: templates no corpus file starts from"
    );
    assert!(
        inputs.iter().any(|(_, i)| i.size.is_some()),
        "{target}: no resized image"
    );
    assert!(
        inputs
            .iter()
            .any(|(_, i)| i.patches.iter().any(|p| !p.overwrite)),
        "{target}: no XOR patch"
    );
    assert!(
        inputs
            .iter()
            .any(|(_, i)| i.patches.iter().any(|p| p.overwrite)),
        "{target}: no overwriting patch"
    );
}

#[test]
fn image_corpora_reach_every_template() {
    images_reach("cache_image", Some(false));
    images_reach("plog_image", Some(true));
    images_reach("check", None);
}

#[test]
fn nbd_corpus_reaches_every_command_and_option() {
    let inputs: Vec<(String, nbd_stream::Input)> = corpus("nbd_stream");
    let mut seen = BTreeSet::new();
    for (_, i) in &inputs {
        seen.insert(
            if i.handshake.is_some() {
                "handshake"
            } else {
                "no handshake"
            }
            .to_string(),
        );
        for o in i.handshake.iter().flat_map(|h| &h.options) {
            seen.insert(format!("option {}", o.option.code()));
            if o.bad_magic.is_some() {
                seen.insert("bad option magic".into());
            }
            if o.length.is_some() {
                seen.insert("option length".into());
            }
            if let OptData::Info {
                name: Name::Ours, ..
            } = o.data
            {
                seen.insert("info of our export".into());
            }
        }
        for r in &i.requests {
            seen.insert(format!("cmd {}", r.cmd.code()));
            let out_of_range = r.offset.bytes() + u64::from(r.length.bytes())
                > fuzz_targets::image::backing_sectors() * 512;
            if out_of_range {
                seen.insert("out of range".into());
            }
            if r.bad_magic.is_some() {
                seen.insert("bad request magic".into());
            }
            if r.garbage.is_some() {
                seen.insert("garbage".into());
            }
            if let Offset::Raw(_) = r.offset {
                seen.insert("raw offset".into());
            }
            if let Length::Bytes(_) = r.length {
                seen.insert("byte length".into());
            }
            if let Cmd::Other(_) = r.cmd {
                seen.insert("unknown cmd".into());
            }
        }
    }
    let mut want: Vec<String> = [
        "handshake",
        "no handshake",
        "bad option magic",
        "option length",
        "info of our export",
        "out of range",
        "bad request magic",
        "garbage",
        "raw offset",
        "byte length",
        "unknown cmd",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for c in [
        OptCode::ExportName,
        OptCode::Abort,
        OptCode::List,
        OptCode::Info,
        OptCode::Go,
        OptCode::StructuredReply,
    ] {
        want.push(format!("option {}", c.code()));
    }
    for c in [
        Cmd::Read,
        Cmd::Write,
        Cmd::Disc,
        Cmd::Flush,
        Cmd::Trim,
        Cmd::WriteZeroes,
    ] {
        want.push(format!("cmd {}", c.code()));
    }
    assert_eq!(
        missing(&want, &seen),
        Vec::<String>::new(),
        "the nbd_stream corpus misses these"
    );
}
