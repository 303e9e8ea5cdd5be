//! `check`: `engine::inspect::check`, `check_against_backing` and `dump` (and their text and
//! JSON renderings) on arbitrary cache images (the cache device of any template, type 0 or 1,
//! patched by the input, an [`ImageInput`], at most [`image::MAX_CACHE_SECTORS`]): never a
//! panic, and never an error on a readable in-memory device (`Err` means a device I/O error,
//! i.e. a read outside the device).
//!
//! Agreement with recovery, kept to what inspect.rs promises: when `SyncEngine::open` (never
//! formatting, no plog) recovers the image, `check_against_backing` on the same bytes must plan
//! a replay from the same record, and must not call the superblock region (sector 0, the
//! records, the geometry) unsound.

use engine::inspect::ProblemKind;
use engine::{MemDevice, SyncEngine};

use crate::image::{self, backing_image, backing_sectors, open_config, ImageInput};

/// Problems about the superblock region: `open` refuses (or would format) a device with any of
/// them, so a device it recovers has none.
pub fn superblock_problem(kind: ProblemKind) -> bool {
    matches!(
        kind,
        ProblemKind::TooSmall
            | ProblemKind::Blank
            | ProblemKind::Foreign
            | ProblemKind::InterruptedFormat
            | ProblemKind::UnsupportedVersion
            | ProblemKind::CacheResized
            | ProblemKind::UnsupportedType
            | ProblemKind::Geometry
            | ProblemKind::NoValidRecord
            | ProblemKind::ImplausibleRecord
    )
}

/// The input: the cache device of any template (type 0 or 1) patched.
pub type Input = ImageInput;

/// Runs the raw bytes of a corpus file as `fuzz_target!` does.
pub fn run(data: &[u8]) {
    if let Some(input) = crate::decode(data) {
        run_input(input);
    }
}

pub fn run_input(input: Input) {
    let d = input.build(|_| true, |t| &t.cache, image::MAX_CACHE_SECTORS);
    let mut dev = MemDevice::from_bytes(d.image.clone());
    let report = engine::check(&mut dev).unwrap_or_else(|e| panic!("check failed: {e}"));
    let _ = (report.to_string(), report.to_json());
    let against = engine::check_against_backing(&mut dev, backing_sectors())
        .unwrap_or_else(|e| panic!("check_against_backing failed: {e}"));
    let _ = (against.to_string(), against.to_json());
    let dump = engine::dump(&mut dev, None).unwrap_or_else(|e| panic!("dump failed: {e}"));
    let _ = (dump.to_string(), dump.to_json());
    let one = engine::dump(&mut dev, Some(d.probe))
        .unwrap_or_else(|e| panic!("dump of one segment failed: {e}"));
    let _ = (one.to_string(), one.to_json());
    assert!(
        dev.bytes() == d.image.as_slice(),
        "check or dump wrote to the device"
    );

    let Ok((_engine, recovery)) = SyncEngine::open(
        MemDevice::from_bytes(d.image),
        MemDevice::from_bytes(backing_image()),
        open_config(),
    ) else {
        return;
    };
    let bad: Vec<_> = against
        .problems
        .iter()
        .filter(|p| superblock_problem(p.kind))
        .collect();
    assert!(
        bad.is_empty(),
        "open recovered the image but check reports superblock problems: {bad:?}"
    );
    let plan = against
        .replay
        .as_ref()
        .unwrap_or_else(|| panic!("open recovered the image but check plans no replay: {against}"));
    assert_eq!(
        plan.record, recovery.record,
        "check and open start the replay from different records"
    );
}
