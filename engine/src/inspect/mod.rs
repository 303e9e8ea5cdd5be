//! Offline inspection of a cache device: [`check`] (an fsck that says what `Engine::open` would
//! do with the device and whether that is sound) and [`dump`] (the metadata, decoded).
//!
//! Both only read: they never write or flush, so they are safe on a device that a crashed engine
//! left behind and on images taken for a bug report. They take any bytes as input (a fuzz target
//! feeds them garbage), so every loop is bounded by the geometry, which comes from the device
//! size and a validated segment order, never from a length read off the device.
//!
//! `check` decides nothing of its own: it runs recovery's scan (`recovery::scan`, reading every
//! slot rather than only those the walk needs) and recovery's plan (`recovery::plan`: the
//! layout decision, the record, the ring bound, the walk, what lies past its end, what applying
//! leaves), and explains them. Type 1 ([`check_with_plog`]) also runs the engine's own recovery
//! on copy-on-write overlays of the devices ([`OverlayDevice`]), so the plog walk has one
//! implementation.
//!
//! Modules: `report` (the check report's types), `check`, `plog` (the plog part of both tools),
//! `dump`, and the renderings `text` (`Display`) and `json` (`to_json`).

mod check;
mod dump;
mod json;
mod plog;
mod report;
mod text;

use crate::device::{BlockDevice, DeviceRole};
use crate::error::{Error, Result};
use crate::format::RecordExt;

pub use crate::recovery::plan::{RecordSource, ReplayStop, StopReason};
pub use crate::recovery::scan::{RecordCopyName, SuperblockInfo, SuperblockKind};
pub use dump::{BlockDump, Dump, MissingSegment, SegmentDump, DUMP_MAX_LISTED_BLOCKS};
pub use plog::{
    OverlayDevice, PlogInfo, PlogReport, PlogSuperblockCopy, RegionReport, RegionState,
};
pub use report::{
    CheckReport, Note, NoteKind, Problem, ProblemKind, ReplayPlan, SlotClass, SlotCounts,
    SlotReport,
};

/// One record copy (primary: sector 2047, backup: sector 2039).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordCopy {
    pub name: RecordCopyName,
    pub sector: u64,
    /// The u64 at offset 0: `last_writeback_segment_id` as upstream reads it.
    pub raw_id: u64,
    /// Our extension, when its magic and CRC are right.
    pub ext: Option<RecordExt>,
    /// Whether recovery may trust this copy: our extension of the superblock's generation, or
    /// (the primary only) a sector in the shape upstream's record write leaves.
    pub valid: bool,
}

/// Both record copies and what recovery makes of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordInfo {
    pub primary: RecordCopy,
    pub backup: RecordCopy,
    /// A valid copy carries the "formatting" flag: a format was cut short, and `open` formats
    /// the device again (it holds no data).
    pub interrupted_format: bool,
    /// The record recovery would start from (`last_writeback_segment_id`), if it can choose one.
    pub record: Option<u64>,
    pub source: Option<RecordSource>,
}

/// Offline fsck of a cache device; reads only. `Err` only for a device I/O error: whatever the
/// content, the answer is a report (with problems when it is not sound).
pub fn check<D: BlockDevice>(cache: &mut D) -> Result<CheckReport> {
    check::check_inner(cache, None, None)
}

/// [`check`], also verifying that every block replay applies fits a backing device of
/// `backing_sectors` sectors, as `Engine::open` does.
pub fn check_against_backing<D: BlockDevice>(
    cache: &mut D,
    backing_sectors: u64,
) -> Result<CheckReport> {
    check::check_inner(cache, None, Some(backing_sectors))
}

/// [`check`] of a cache with its plog device (type 1), optionally against a backing device of
/// `backing_sectors`. Besides the cache device it reports both plog superblock copies, every
/// region, and what recovery would do: the real `Engine::open_with_plog` runs on
/// copy-on-write overlays ([`OverlayDevice`]), so nothing is written to either device and the
/// plog walk has one implementation. Sound means that recovery would succeed.
pub fn check_with_plog<D: BlockDevice>(
    cache: &mut D,
    plog: &mut D,
    backing_sectors: Option<u64>,
) -> Result<CheckReport> {
    check::check_inner(cache, Some(plog), backing_sectors)
}

/// Decodes the metadata of a cache device: superblock, both records, geometry, and for every
/// non-empty slot (or only for segment `segment`) the header and metablocks. Reads only.
pub fn dump<D: BlockDevice>(cache: &mut D, segment: Option<u64>) -> Result<Dump> {
    dump::dump_inner(cache, None, segment)
}

/// [`dump`], and the plog device of a type-1 cache: both superblock copies (and the one
/// recovery would use) and a summary of every region. Reads only.
pub fn dump_with_plog<D: BlockDevice>(
    cache: &mut D,
    plog: &mut D,
    segment: Option<u64>,
) -> Result<Dump> {
    dump::dump_inner(cache, Some(plog), segment)
}

fn io<T>(r: std::result::Result<T, crate::device::IoError>) -> Result<T> {
    r.map_err(|source| Error::Io {
        role: DeviceRole::Cache,
        source,
    })
}

/// At most 16 numbers, then "...".
fn number_list(ids: &[u64]) -> String {
    let mut s = ids
        .iter()
        .take(16)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > 16 {
        s.push_str(", ...");
    }
    s
}
