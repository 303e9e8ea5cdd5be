//! Offline inspection of a cache device: [`check`] (an fsck that says what `Engine::open` would
//! do with the device and whether that is sound) and [`dump`] (the metadata, decoded).
//!
//! Both only read: they never write or flush, so they are safe on a device that a crashed engine
//! left behind and on images taken for a bug report. They take any bytes as input (a fuzz target
//! feeds them garbage), so every loop is bounded by the geometry, which comes from the device
//! size and a validated segment order, never from a length read off the device; a `length` byte
//! larger than the geometry allows is reported, not followed.
//!
//! `check` mirrors recovery's decisions (docs/DESIGN.md, "Replay"): the same superblock and
//! record rules (the record choice is recovery's own [`chosen_record`]), the same walk from
//! `record + 1` demanding exact ids, a sane length and a matching checksum, and the same set of
//! slots invalidated after it. `engine/tests/inspect.rs` holds the two to agreement on many
//! random crash images.
//!
//! Type 1 ([`check_with_plog`], [`dump_with_plog`]): the plog superblock decision is
//! recovery's own `open_superblock`, a region's run of valid entries is recovery's own
//! `verified_run`, and what replay would apply is found by running `Engine::open_with_plog`
//! itself on copy-on-write overlays ([`OverlayDevice`]): one implementation of the type-1
//! walk, and still nothing is written to the devices. The overlays hold only what recovery
//! writes (the rebuilt segments, zeroed headers, voided region starts, the new superblocks).

use std::fmt;

use crate::cache::{Config, Engine, FormatPolicy};
use crate::device::{check_access, BlockDevice, DeviceRole, IoError, IoOp};
use crate::error::{Error, Result};
use crate::format::plog::{
    EntryHeader, PlogSuperblock, PLOG_BACKUP_SB_SECTOR, PLOG_FIRST_REGION_SECTOR, PLOG_SB_SECTOR,
};
use crate::format::{
    self, Geometry, RecordExt, Superblock, SuperblockExt, BLOCK_SIZE, FORMAT_VERSION,
    SECTORS_PER_BLOCK, SECTOR_SIZE,
};
use crate::plog::{verified_run, RunOwner};
use crate::recovery::{chosen_record, RecoveryReport};

/// Recovery refuses a record above this as corrupt (ids grow by one per segment).
const MAX_PLAUSIBLE_RECORD: u64 = u64::MAX / 4;

/// `dump` lists at most this many metablocks in all; segments beyond it are listed by header
/// only. Bounds memory and output on large caches (dump one segment by id to see its blocks).
pub const DUMP_MAX_LISTED_BLOCKS: usize = 1 << 20;

/// `Display` of a check report lists at most this many slots; `to_json` lists them all.
const DISPLAY_MAX_SLOTS: usize = 512;

// ----- what the superblock region says -----

/// How sector 0 reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuperblockKind {
    /// The device is too small to hold sector 0.
    Missing,
    /// All zero: never formatted.
    Blank,
    /// Neither blank nor the dm-writeboost magic: someone else's data.
    Foreign,
    /// The magic with our valid extension.
    Ours,
    /// The magic without a valid extension: an upstream dm-writeboost image (order 10).
    Upstream,
}

impl SuperblockKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SuperblockKind::Missing => "missing",
            SuperblockKind::Blank => "blank",
            SuperblockKind::Foreign => "foreign",
            SuperblockKind::Ours => "ours",
            SuperblockKind::Upstream => "upstream",
        }
    }
}

/// Sector 0, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuperblockInfo {
    pub kind: SuperblockKind,
    /// The u32 at offset 0 (the magic when it is right).
    pub magic: u32,
    /// Our extension, when it validates.
    pub ext: Option<SuperblockExt>,
}

/// Which copy of the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordCopyName {
    Primary,
    Backup,
}

impl RecordCopyName {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordCopyName::Primary => "primary",
            RecordCopyName::Backup => "backup",
        }
    }
}

/// One record copy (primary: sector 2047, backup: sector 2039).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordCopy {
    pub name: RecordCopyName,
    pub sector: u64,
    /// The u64 at offset 0: `last_writeback_segment_id` as upstream reads it.
    pub raw_id: u64,
    /// Our extension, when its magic and CRC are right.
    pub ext: Option<RecordExt>,
    /// Whether recovery may use this copy: for our images the extension validates and belongs
    /// to the superblock's generation; for upstream images only the primary's offset 0 counts.
    pub valid: bool,
}

/// Where the record recovery uses came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordSource {
    /// Only the primary copy holds the chosen value.
    Primary,
    /// Only the backup copy holds it (the primary is invalid or older: a torn record update).
    Backup,
    /// Both valid copies agree.
    Both,
    /// An upstream image: the u64 at offset 0 of sector 2047, nothing else.
    UpstreamPrimary,
}

impl RecordSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordSource::Primary => "primary",
            RecordSource::Backup => "backup",
            RecordSource::Both => "both",
            RecordSource::UpstreamPrimary => "upstream-primary",
        }
    }
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

// ----- check -----

/// What a slot holds, judged the way replay judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SlotClass {
    /// Header id 0: never written, or zeroed by format or by replay's invalidation.
    Empty,
    /// Intact (length within the geometry, checksum right, id belongs to this slot) and inside
    /// the run of ids `record + 1 ..` that replay applies.
    Valid,
    /// Intact, id at or below the record: already written back; replay ignores it.
    Stale,
    /// Intact, id above the record but past the point where the replay walk stops (after a gap
    /// or a torn segment): replay does not apply it and invalidates it. Normal after a power cut
    /// that persisted a later segment write but not an earlier one.
    Unreachable,
    /// The header claims an id that belongs in this slot, but the length is impossible or the
    /// checksum fails: a partially written (torn) or rotted segment.
    Torn,
    /// The header's id does not belong in this slot (slot of id `k` is `(k-1) % nr_segments`):
    /// garbage, or a header from another geometry.
    Misplaced,
}

impl SlotClass {
    pub fn as_str(self) -> &'static str {
        match self {
            SlotClass::Empty => "empty",
            SlotClass::Valid => "valid",
            SlotClass::Stale => "stale",
            SlotClass::Unreachable => "unreachable",
            SlotClass::Torn => "torn",
            SlotClass::Misplaced => "misplaced",
        }
    }
}

/// One non-empty slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotReport {
    pub slot: u64,
    pub id: u64,
    /// The header's length byte, as found (may exceed the geometry in a torn header).
    pub length: u8,
    pub class: SlotClass,
    /// `length` is at most the geometry's blocks per segment.
    pub length_ok: bool,
    /// The segment checksum matches (false when `length` is impossible: nothing to check).
    pub checksum_ok: bool,
    /// Metablocks with dirty bits (counted only when `length_ok`).
    pub dirty_metablocks: u32,
    /// Metablocks whose recorded block CRC does not match their data block.
    pub bad_block_crcs: u32,
    /// Dirty metablocks whose backing sector is not 4 KiB aligned (recovery refuses them).
    pub unaligned_metablocks: u32,
}

/// Number of slots in each class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCounts {
    pub empty: u64,
    pub valid: u64,
    pub stale: u64,
    pub unreachable: u64,
    pub torn: u64,
    pub misplaced: u64,
}

impl SlotCounts {
    fn add(&mut self, class: SlotClass) {
        let c = match class {
            SlotClass::Empty => &mut self.empty,
            SlotClass::Valid => &mut self.valid,
            SlotClass::Stale => &mut self.stale,
            SlotClass::Unreachable => &mut self.unreachable,
            SlotClass::Torn => &mut self.torn,
            SlotClass::Misplaced => &mut self.misplaced,
        };
        *c += 1;
    }
}

/// Why the replay walk ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The next id's slot is empty: the normal end of the log.
    EmptySlot,
    /// The next id's slot holds another id (an older lap, or garbage).
    OtherId { found: u64 },
    /// The next id's slot holds that id, but its length or checksum is wrong.
    Torn,
    /// Every slot was applied: the walk covers at most one lap.
    WholeRing,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EmptySlot => "empty-slot",
            StopReason::OtherId { .. } => "other-id",
            StopReason::Torn => "torn",
            StopReason::WholeRing => "whole-ring",
        }
    }
}

/// Where the replay walk ends: the first id it does not apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayStop {
    pub id: u64,
    pub slot: u64,
    pub reason: StopReason,
}

/// What `Engine::open` would replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayPlan {
    pub record: u64,
    /// Ids `record + 1 ..= last_applied` are applied; `last_applied == record` when none is.
    pub segments_applied: u64,
    pub last_applied: u64,
    /// Distinct backing blocks with a dirty copy after replay (`RecoveryReport::dirty_blocks`).
    pub dirty_blocks: u64,
    pub stop: ReplayStop,
    /// Slots whose header replay zeroes: every slot holding an id at or past `stop.id`
    /// (`RecoveryReport::stale_invalidated`).
    pub invalidated_slots: u64,
    /// The smallest backing device (sectors) the applied dirty blocks fit in.
    pub backing_sectors_needed: u64,
}

/// Something that makes the device unsound: `open` would refuse or format it, or would accept
/// data it cannot serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// Too small for the smallest geometry (superblock region + 2 segments of order 4).
    TooSmall,
    /// Sector 0 is all zero: not formatted (`open` formats it when allowed).
    Blank,
    /// Sector 0 is neither blank nor a wbcache/dm-writeboost superblock.
    Foreign,
    /// The records say a format was cut short; `open` formats again (the device holds no data).
    InterruptedFormat,
    UnsupportedVersion,
    /// Formatted at another size.
    CacheResized,
    UnsupportedType,
    /// The superblock's order does not give a geometry for this device.
    Geometry,
    /// Neither record copy is valid for the superblock's generation.
    NoValidRecord,
    /// The record is too large to be a segment id.
    ImplausibleRecord,
    /// A dirty metablock of a segment replay applies maps an unaligned backing sector.
    UnalignedMetablock,
    /// A dirty metablock of a segment replay applies maps a sector past the backing device.
    BackingTooSmall,
    /// The backing device given to the check is empty or not whole 4 KiB blocks.
    BackingSize,
    /// A segment replay applies passes its checksum but a block fails its own CRC: reads of it
    /// would fail and kill the cache.
    BlockCrcMismatch,
    /// The cache is of type 1 but no plog device was given: it cannot be opened (or checked)
    /// without one.
    PlogMissing,
    /// A plog device was given for a type-0 or upstream cache: `open` refuses the pair.
    PlogUnexpected,
    /// Neither plog superblock copy is valid (or the plog device is too small to hold them).
    PlogSuperblock,
    /// The plog belongs to another format of a cache (its generation differs).
    PlogGeneration,
    PlogVersion,
    /// The plog device was formatted at another size.
    PlogResized,
    /// The stored plog geometry or segment order does not fit the device or the cache.
    PlogGeometry,
    /// Type 1: recovery, run on copy-on-write overlays of the devices, fails.
    RecoveryFails,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::TooSmall => "too-small",
            ProblemKind::Blank => "blank",
            ProblemKind::Foreign => "foreign",
            ProblemKind::InterruptedFormat => "interrupted-format",
            ProblemKind::UnsupportedVersion => "unsupported-version",
            ProblemKind::CacheResized => "cache-resized",
            ProblemKind::UnsupportedType => "unsupported-type",
            ProblemKind::Geometry => "geometry",
            ProblemKind::NoValidRecord => "no-valid-record",
            ProblemKind::ImplausibleRecord => "implausible-record",
            ProblemKind::UnalignedMetablock => "unaligned-metablock",
            ProblemKind::BackingTooSmall => "backing-too-small",
            ProblemKind::BackingSize => "backing-size",
            ProblemKind::BlockCrcMismatch => "block-crc-mismatch",
            ProblemKind::PlogMissing => "plog-missing",
            ProblemKind::PlogUnexpected => "plog-unexpected",
            ProblemKind::PlogSuperblock => "plog-superblock",
            ProblemKind::PlogGeneration => "plog-generation",
            ProblemKind::PlogVersion => "plog-version",
            ProblemKind::PlogResized => "plog-resized",
            ProblemKind::PlogGeometry => "plog-geometry",
            ProblemKind::RecoveryFails => "recovery-fails",
        }
    }
}

/// Something worth knowing that does not make the device unsound (normal after a power cut).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteKind {
    /// The walk stops at a torn segment.
    TornAtEnd,
    /// Torn slots outside the walk (ignored by replay, or invalidated by it).
    TornSlots,
    /// Intact segments past the end of the walk, discarded by replay.
    UnreachableSegments,
    MisplacedSlots,
    /// One record copy is invalid (a torn record update; the other copy is used).
    RecordCopyInvalid,
    /// Both copies are valid but differ (a power cut between the backup and primary writes).
    RecordCopiesDiffer,
    /// One plog superblock copy is invalid or older (a torn superblock update; the other is
    /// used).
    PlogSuperblockCopy,
    /// Type 1: recovery would rebuild segments from the plog (the acknowledged writes that only
    /// the plog holds; normal after a power cut).
    PlogReplay,
}

impl NoteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoteKind::TornAtEnd => "torn-at-end",
            NoteKind::TornSlots => "torn-slots",
            NoteKind::UnreachableSegments => "unreachable-segments",
            NoteKind::MisplacedSlots => "misplaced-slots",
            NoteKind::RecordCopyInvalid => "record-copy-invalid",
            NoteKind::RecordCopiesDiffer => "record-copies-differ",
            NoteKind::PlogSuperblockCopy => "plog-superblock-copy",
            NoteKind::PlogReplay => "plog-replay",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub kind: NoteKind,
    pub detail: String,
}

/// The result of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    pub device_sectors: u64,
    pub superblock: SuperblockInfo,
    /// `None` when the device is too small to hold the record sectors.
    pub records: Option<RecordInfo>,
    /// `None` when the superblock gives none (blank, foreign, unsupported version, bad order).
    pub geometry: Option<Geometry>,
    pub slot_counts: SlotCounts,
    /// Every non-empty slot, in slot order.
    pub slots: Vec<SlotReport>,
    /// What replay would do; `None` when `open` would refuse the device or format it.
    pub replay: Option<ReplayPlan>,
    /// Empty iff `sound`.
    pub problems: Vec<Problem>,
    pub notes: Vec<Note>,
    /// `open` would recover the device (no format, no refusal) and nothing replay relies on is
    /// inconsistent. Torn or unreachable slots past the end of the walk are normal after a crash
    /// and do not make a device unsound.
    pub sound: bool,
    /// Type 1 ([`check_with_plog`]): the plog and what the whole recovery would do. For a
    /// type-1 cache, `replay` above is the cache-device part of the walk only.
    pub plog: Option<PlogReport>,
}

/// Offline fsck of a cache device; reads only. `Err` only for a device I/O error: whatever the
/// content, the answer is a report (with problems when it is not sound).
pub fn check<D: BlockDevice>(cache: &mut D) -> Result<CheckReport> {
    check_inner(cache, None, None)
}

/// [`check`], also verifying that every block replay applies fits a backing device of
/// `backing_sectors` sectors, as `Engine::open` does.
pub fn check_against_backing<D: BlockDevice>(
    cache: &mut D,
    backing_sectors: u64,
) -> Result<CheckReport> {
    check_inner(cache, None, Some(backing_sectors))
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
    check_inner(cache, Some(plog), backing_sectors)
}

fn io<T>(r: std::result::Result<T, crate::device::IoError>) -> Result<T> {
    r.map_err(|source| Error::Io {
        role: DeviceRole::Cache,
        source,
    })
}

/// Superblock, records and geometry: what `open` reads before the slots, and its verdict.
struct Layout {
    superblock: SuperblockInfo,
    records: Option<RecordInfo>,
    geometry: Option<Geometry>,
    /// `open` would replay (rather than refuse or format).
    recovers: bool,
    problems: Vec<Problem>,
    notes: Vec<Note>,
}

fn problem(kind: ProblemKind, detail: impl Into<String>) -> Problem {
    Problem {
        kind,
        detail: detail.into(),
    }
}

fn note(kind: NoteKind, detail: impl Into<String>) -> Note {
    Note {
        kind,
        detail: detail.into(),
    }
}

fn read_superblock<D: BlockDevice>(cache: &mut D) -> Result<SuperblockInfo> {
    if cache.size_sectors() == 0 {
        return Ok(SuperblockInfo {
            kind: SuperblockKind::Missing,
            magic: 0,
            ext: None,
        });
    }
    let mut s = [0u8; SECTOR_SIZE];
    io(cache.read(0, &mut s))?;
    let magic = u32::from_le_bytes(s[..4].try_into().expect("4 bytes"));
    let (kind, ext) = match format::decode_superblock(&s) {
        Superblock::Blank => (SuperblockKind::Blank, None),
        Superblock::Foreign => (SuperblockKind::Foreign, None),
        Superblock::Valid(Some(ext)) => (SuperblockKind::Ours, Some(ext)),
        Superblock::Valid(None) => (SuperblockKind::Upstream, None),
    };
    Ok(SuperblockInfo { kind, magic, ext })
}

fn read_record_copy<D: BlockDevice>(
    cache: &mut D,
    name: RecordCopyName,
    sector: u64,
) -> Result<RecordCopy> {
    let mut s = [0u8; SECTOR_SIZE];
    io(cache.read(sector, &mut s))?;
    Ok(RecordCopy {
        name,
        sector,
        raw_id: format::decode_record(&s),
        ext: format::decode_record_ext(&s),
        valid: false,
    })
}

/// Both copies, and the record recovery would take from them (`None` when it refuses them).
fn read_records<D: BlockDevice>(
    cache: &mut D,
    superblock: &SuperblockInfo,
) -> Result<Option<RecordInfo>> {
    if cache.size_sectors() <= format::RECORD_SECTOR {
        return Ok(None);
    }
    let mut primary = read_record_copy(cache, RecordCopyName::Primary, format::RECORD_SECTOR)?;
    let mut backup = read_record_copy(cache, RecordCopyName::Backup, format::BACKUP_RECORD_SECTOR)?;
    // Recovery looks for the flag in any copy that decodes, whatever its generation.
    let interrupted_format = [primary.ext, backup.ext]
        .iter()
        .flatten()
        .any(|r| r.flags & format::RECORD_FLAG_FORMATTING != 0);
    let (record, source) = match (superblock.kind, superblock.ext) {
        (SuperblockKind::Ours, Some(ext)) => {
            for copy in [&mut primary, &mut backup] {
                copy.valid = copy.ext.is_some_and(|r| r.generation == ext.generation);
            }
            match chosen_record(&[primary.ext, backup.ext], ext.generation) {
                Ok(id) => {
                    let holds = |c: &RecordCopy| c.valid && c.raw_id == id;
                    let source = match (holds(&primary), holds(&backup)) {
                        (true, true) => RecordSource::Both,
                        (true, false) => RecordSource::Primary,
                        _ => RecordSource::Backup,
                    };
                    (Some(id), Some(source))
                }
                Err(_) => (None, None),
            }
        }
        (SuperblockKind::Upstream, _) => {
            primary.valid = true;
            (Some(primary.raw_id), Some(RecordSource::UpstreamPrimary))
        }
        _ => (None, None),
    };
    Ok(Some(RecordInfo {
        primary,
        backup,
        interrupted_format,
        record,
        source,
    }))
}

/// Reads what `open` reads before the slots and decides as it does (recovery.rs, `open`).
/// `plog_given`: a plog device goes with the cache (type 1 needs one, type 0 refuses one).
fn read_layout<D: BlockDevice>(cache: &mut D, plog_given: bool) -> Result<Layout> {
    let sectors = cache.size_sectors();
    let superblock = read_superblock(cache)?;
    let records = read_records(cache, &superblock)?;
    let mut layout = Layout {
        superblock,
        records,
        geometry: None,
        recovers: false,
        problems: Vec::new(),
        notes: Vec::new(),
    };
    if let Err(e) = Geometry::new(format::MIN_ORDER, sectors) {
        layout
            .problems
            .push(problem(ProblemKind::TooSmall, e.to_string()));
        return Ok(layout);
    }
    let interrupted = records.is_some_and(|r| r.interrupted_format);
    // The order of these verdicts is `open`'s: blank first, then an interrupted format
    // (formatted again whatever sector 0 holds), then foreign content.
    if superblock.kind == SuperblockKind::Blank {
        layout.problems.push(problem(
            ProblemKind::Blank,
            "sector 0 is all zero: the device is not formatted",
        ));
        return Ok(layout);
    }
    if interrupted {
        layout.problems.push(problem(
            ProblemKind::InterruptedFormat,
            "a record copy carries the formatting flag: a format was cut short; opening formats \
             the device again (it holds no data)",
        ));
    }
    if superblock.kind == SuperblockKind::Foreign {
        if !interrupted {
            layout.problems.push(problem(
                ProblemKind::Foreign,
                format!(
                    "sector 0 starts with 0x{:08x}, not the superblock magic 0x{:08x}",
                    superblock.magic,
                    format::SUPERBLOCK_MAGIC
                ),
            ));
        }
        // Nothing of ours to read.
        return Ok(layout);
    }
    let mut recovers = !interrupted;
    let geometry = match superblock.ext {
        Some(ext) => {
            if ext.format_version != FORMAT_VERSION {
                layout.problems.push(problem(
                    ProblemKind::UnsupportedVersion,
                    Error::UnsupportedVersion(ext.format_version).to_string(),
                ));
                // The layout of another version is unknown: read no further.
                return Ok(layout);
            }
            if ext.cache_sectors != sectors {
                layout.problems.push(problem(
                    ProblemKind::CacheResized,
                    Error::CacheResized {
                        formatted: ext.cache_sectors,
                        actual: sectors,
                    }
                    .to_string(),
                ));
                recovers = false;
            }
            // The type decisions of `open`.
            let refusal = match (ext.cache_type, plog_given) {
                (0, false) | (1, true) => None,
                (0, true) => Some((ProblemKind::PlogUnexpected, Error::PlogUnexpected)),
                (1, false) => Some((ProblemKind::PlogMissing, Error::PlogMissing)),
                (t, _) => Some((ProblemKind::UnsupportedType, Error::UnsupportedType(t))),
            };
            if let Some((kind, e)) = refusal {
                layout.problems.push(problem(kind, e.to_string()));
                recovers = false;
            }
            // Slots are laid out from sector 2048 whatever the size; scan only those that
            // existed when the device was formatted.
            Geometry::new(ext.order, ext.cache_sectors.min(sectors))
        }
        None => {
            if plog_given {
                layout.problems.push(problem(
                    ProblemKind::PlogUnexpected,
                    "a plog device was given but the cache device is an upstream dm-writeboost \
                     image (type 0)",
                ));
                recovers = false;
            }
            Geometry::new(format::UPSTREAM_ORDER, sectors)
        }
    };
    match geometry {
        Ok(g) => layout.geometry = Some(g),
        Err(e) => {
            layout
                .problems
                .push(problem(ProblemKind::Geometry, e.to_string()));
            return Ok(layout);
        }
    }
    let records = records.expect("a device of a valid geometry holds the record sectors");
    for copy in [records.primary, records.backup] {
        if superblock.kind == SuperblockKind::Ours && !copy.valid {
            layout.notes.push(note(
                NoteKind::RecordCopyInvalid,
                format!(
                    "the {} record copy (sector {}) is not valid for generation {}",
                    copy.name.as_str(),
                    copy.sector,
                    superblock.ext.map_or(0, |e| e.generation)
                ),
            ));
        }
    }
    if records.primary.valid
        && records.backup.valid
        && records.primary.raw_id != records.backup.raw_id
    {
        layout.notes.push(note(
            NoteKind::RecordCopiesDiffer,
            format!(
                "record copies differ (primary {}, backup {}); the larger is used",
                records.primary.raw_id, records.backup.raw_id
            ),
        ));
    }
    match records.record {
        None => {
            layout.problems.push(problem(
                ProblemKind::NoValidRecord,
                format!(
                    "neither copy of the superblock record (sectors {} and {}) is valid for \
                     generation {}",
                    format::RECORD_SECTOR,
                    format::BACKUP_RECORD_SECTOR,
                    superblock.ext.map_or(0, |e| e.generation)
                ),
            ));
            recovers = false;
        }
        Some(r) if r > MAX_PLAUSIBLE_RECORD => {
            layout.problems.push(problem(
                ProblemKind::ImplausibleRecord,
                format!("superblock record {r} is not a plausible segment id"),
            ));
            recovers = false;
        }
        Some(_) => {}
    }
    layout.recovers = recovers;
    Ok(layout)
}

/// A slot's header and what its bytes say, before it is placed relative to the walk.
struct SlotScan {
    report: SlotReport,
    /// What replay's `load_segment` accepts: exact id (checked by the walk), sane length,
    /// matching checksum.
    intact: bool,
}

/// Reads slot `slot` (header, then the data blocks its length claims, if sane) into `segbuf`.
fn scan_slot<D: BlockDevice>(
    cache: &mut D,
    geo: &Geometry,
    slot: u64,
    segbuf: &mut [u8],
) -> Result<Option<SlotScan>> {
    let base = geo.slot_sector(slot);
    io(cache.read(base, &mut segbuf[..BLOCK_SIZE]))?;
    let h = format::decode_segment_header(segbuf);
    if h.id == 0 {
        return Ok(None);
    }
    let len = h.length as usize;
    let length_ok = len <= geo.blocks_per_segment();
    let mut report = SlotReport {
        slot,
        id: h.id,
        length: h.length,
        class: SlotClass::Torn,
        length_ok,
        checksum_ok: false,
        dirty_metablocks: 0,
        bad_block_crcs: 0,
        unaligned_metablocks: 0,
    };
    if length_ok {
        let bytes = format::segment_len_bytes(len);
        if len > 0 {
            io(cache.read(base + SECTORS_PER_BLOCK, &mut segbuf[BLOCK_SIZE..bytes]))?;
        }
        report.checksum_ok = format::segment_checksum_ok(&segbuf[..bytes]);
        for j in 0..len {
            let m = format::decode_metablock(segbuf, j);
            let data = &segbuf[BLOCK_SIZE * (1 + j)..BLOCK_SIZE * (2 + j)];
            if m.block_crc
                .is_some_and(|crc| crc != format::block_crc(data))
            {
                report.bad_block_crcs += 1;
            }
            if m.dirty_bits != 0 {
                report.dirty_metablocks += 1;
                if m.sector % SECTORS_PER_BLOCK != 0 {
                    report.unaligned_metablocks += 1;
                }
            }
        }
    }
    if geo.slot_of(h.id) != slot {
        report.class = SlotClass::Misplaced;
    }
    let intact = length_ok && report.checksum_ok;
    Ok(Some(SlotScan { report, intact }))
}

/// The replay walk over scanned slots, exactly as recovery walks: from `record + 1`, at most one
/// lap, each id must be in its slot and intact.
fn walk(geo: &Geometry, ids: &[(u64, bool)], record: u64) -> ReplayStop {
    let mut expected = record + 1;
    for _ in 0..geo.nr_segments {
        let slot = geo.slot_of(expected);
        let (found, intact) = ids[slot as usize];
        if found != expected {
            let reason = if found == 0 {
                StopReason::EmptySlot
            } else {
                StopReason::OtherId { found }
            };
            return ReplayStop {
                id: expected,
                slot,
                reason,
            };
        }
        if !intact {
            return ReplayStop {
                id: expected,
                slot,
                reason: StopReason::Torn,
            };
        }
        expected += 1;
    }
    ReplayStop {
        id: expected,
        slot: geo.slot_of(expected),
        reason: StopReason::WholeRing,
    }
}

/// Distinct backing blocks with a dirty copy after applying ids `first..=last` (recovery's
/// `index.live_total()`: a dirty metablock makes its block live, clean ones are skipped), and
/// the backing size they need. Memory is bounded by the applied segments' metablocks.
fn applied_dirty_blocks<D: BlockDevice>(
    cache: &mut D,
    geo: &Geometry,
    first: u64,
    last: u64,
    header: &mut [u8],
) -> Result<(u64, u64)> {
    let mut blocks = Vec::new();
    let mut needed = 0u64;
    for id in first..=last {
        io(cache.read(geo.slot_sector(geo.slot_of(id)), &mut header[..BLOCK_SIZE]))?;
        // The walk checked the length against the geometry; the min keeps this loop bounded
        // even if the device changed under us.
        let len = (header[format::HEADER_LENGTH_OFFSET] as usize).min(geo.blocks_per_segment());
        for j in 0..len {
            let m = format::decode_metablock(header, j);
            if m.dirty_bits == 0 {
                continue;
            }
            blocks.push(m.sector / SECTORS_PER_BLOCK);
            needed = needed.max(m.sector.saturating_add(SECTORS_PER_BLOCK));
        }
    }
    blocks.sort_unstable();
    blocks.dedup();
    Ok((blocks.len() as u64, needed))
}

fn check_inner<D: BlockDevice>(
    cache: &mut D,
    plog: Option<&mut D>,
    backing_sectors: Option<u64>,
) -> Result<CheckReport> {
    let device_sectors = cache.size_sectors();
    let Layout {
        superblock,
        records,
        geometry,
        recovers,
        mut problems,
        mut notes,
    } = read_layout(cache, plog.is_some())?;
    let mut report = CheckReport {
        device_sectors,
        superblock,
        records,
        geometry,
        slot_counts: SlotCounts::default(),
        slots: Vec::new(),
        replay: None,
        problems: Vec::new(),
        notes: Vec::new(),
        sound: false,
        plog: None,
    };
    let backing_ok = backing_sectors.is_none_or(|b| b != 0 && b % SECTORS_PER_BLOCK == 0);
    if let Some(b) = backing_sectors {
        if !backing_ok {
            problems.push(problem(
                ProblemKind::BackingSize,
                Error::BackingSize { sectors: b }.to_string(),
            ));
        }
    }
    if let Some(geo) = geometry {
        let nr = geo.nr_segments;
        let mut segbuf = vec![0u8; geo.segment_bytes()];
        // (id, intact) of every slot: what the walk looks at. 9 bytes per slot (recovery keeps
        // 8), bounded by the device size.
        let mut ids = vec![(0u64, false); nr as usize];
        let mut slots = Vec::new();
        for slot in 0..nr {
            if let Some(scan) = scan_slot(cache, &geo, slot, &mut segbuf)? {
                ids[slot as usize] = (scan.report.id, scan.intact);
                slots.push(scan.report);
            }
        }
        // A record recovery refuses still classifies slots (as if it were 0), for forensics.
        let record = records
            .and_then(|r| r.record)
            .filter(|&r| r <= MAX_PLAUSIBLE_RECORD)
            .unwrap_or(0);
        let stop = walk(&geo, &ids, record);
        let last_applied = stop.id - 1;
        let mut torn_elsewhere = Vec::new();
        let mut unreachable = Vec::new();
        let mut misplaced = Vec::new();
        let mut invalidated = 0;
        for s in slots.iter_mut() {
            if s.id >= stop.id {
                invalidated += 1;
            }
            if s.class != SlotClass::Misplaced {
                s.class = match (ids[s.slot as usize].1, s.id) {
                    (false, _) => SlotClass::Torn,
                    (true, id) if id <= record => SlotClass::Stale,
                    (true, id) if id <= last_applied => SlotClass::Valid,
                    (true, _) => SlotClass::Unreachable,
                };
            }
            match s.class {
                SlotClass::Torn if s.slot != stop.slot || stop.reason != StopReason::Torn => {
                    torn_elsewhere.push(s.id)
                }
                SlotClass::Unreachable => unreachable.push(s.id),
                SlotClass::Misplaced => misplaced.push(s.slot),
                SlotClass::Valid => {
                    if s.unaligned_metablocks > 0 {
                        problems.push(problem(
                            ProblemKind::UnalignedMetablock,
                            format!(
                                "segment {} in slot {} has {} dirty metablock(s) with a backing \
                                 sector that is not 4 KiB aligned; recovery refuses it",
                                s.id, s.slot, s.unaligned_metablocks
                            ),
                        ));
                    }
                    if s.bad_block_crcs > 0 {
                        problems.push(problem(
                            ProblemKind::BlockCrcMismatch,
                            format!(
                                "segment {} in slot {} passes its checksum but {} block(s) fail \
                                 their own CRC; reading them would kill the cache",
                                s.id, s.slot, s.bad_block_crcs
                            ),
                        ));
                    }
                }
                _ => {}
            }
            report.slot_counts.add(s.class);
        }
        report.slot_counts.empty = nr - slots.len() as u64;
        if stop.reason == StopReason::Torn {
            notes.push(note(
                NoteKind::TornAtEnd,
                format!(
                    "segment {} in slot {} is torn (length or checksum): replay stops there; \
                     normal after a power cut during its write",
                    stop.id, stop.slot
                ),
            ));
        }
        if !torn_elsewhere.is_empty() {
            notes.push(note(
                NoteKind::TornSlots,
                format!(
                    "{} torn slot(s) outside the replayed log (ids {}); replay ignores them",
                    torn_elsewhere.len(),
                    number_list(&torn_elsewhere)
                ),
            ));
        }
        if !unreachable.is_empty() {
            notes.push(note(
                NoteKind::UnreachableSegments,
                format!(
                    "{} intact segment(s) after the end of the log (ids {}) are discarded by \
                     replay: normal when a power cut kept a later segment write and lost an \
                     earlier one",
                    unreachable.len(),
                    number_list(&unreachable)
                ),
            ));
        }
        if !misplaced.is_empty() {
            notes.push(note(
                NoteKind::MisplacedSlots,
                format!(
                    "{} slot(s) hold an id that does not belong there (slots {})",
                    misplaced.len(),
                    number_list(&misplaced)
                ),
            ));
        }
        if recovers {
            let (dirty_blocks, needed) = if last_applied > record {
                applied_dirty_blocks(cache, &geo, record + 1, last_applied, &mut segbuf)?
            } else {
                (0, 0)
            };
            if let Some(b) = backing_sectors {
                if needed > b {
                    problems.push(problem(
                        ProblemKind::BackingTooSmall,
                        format!(
                            "replay maps backing sectors up to {needed}, past the end of the \
                             {b}-sector backing device (wrong backing device?)"
                        ),
                    ));
                }
            }
            report.replay = Some(ReplayPlan {
                record,
                segments_applied: last_applied - record,
                last_applied,
                dirty_blocks,
                stop,
                invalidated_slots: invalidated,
                backing_sectors_needed: needed,
            });
        }
        report.slots = slots;
    }
    if let Some(plog) = plog {
        let info = read_plog_info(plog, superblock.ext, geometry, backing_sectors)?;
        problems.extend(info.problem.clone());
        for copy in &info.copies {
            let used = copy.superblock.is_some() && copy.superblock == info.superblock;
            if info.superblock.is_some() && !used {
                notes.push(note(
                    NoteKind::PlogSuperblockCopy,
                    format!(
                        "the {} plog superblock copy (sector {}) is {}; the other copy is used",
                        copy.name.as_str(),
                        copy.sector,
                        if copy.superblock.is_some() {
                            "older or of another generation"
                        } else {
                            "not valid"
                        }
                    ),
                ));
            }
        }
        // Recovery runs only where `open` would get that far: a cache it recovers (which
        // includes being of type 1 with a plog given) and a plog superblock it accepts.
        let recovery = if recovers && backing_ok && info.superblock.is_some() {
            match recover_on_overlays(cache, plog, backing_sectors)? {
                Ok(rep) => {
                    if rep.plog_segments_rebuilt > 0 {
                        notes.push(note(
                            NoteKind::PlogReplay,
                            format!(
                                "recovery rebuilds {} segment(s) from {} plog entries",
                                rep.plog_segments_rebuilt, rep.plog_entries_replayed
                            ),
                        ));
                    }
                    Some(rep)
                }
                Err(e) => {
                    problems.push(problem(ProblemKind::RecoveryFails, e.to_string()));
                    None
                }
            }
        } else {
            None
        };
        report.plog = Some(PlogReport { info, recovery });
    }
    report.sound = problems.is_empty();
    report.problems = problems;
    report.notes = notes;
    Ok(report)
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

// ----- type 1: the plog -----

/// Stands in for the backing device's size when the check is given none: recovery then rejects
/// no block for lying past the end of the backing device.
const UNKNOWN_BACKING_SECTORS: u64 = 1 << 60;

/// RAM buffers of the recovery that [`check_with_plog`] runs: the outcome does not depend on
/// it, only how much of the rebuilt log is held in RAM rather than in the overlay.
const CHECK_RAMBUF_POOL: usize = 2;

/// A copy-on-write view of a device: reads fall through to the underlying device (or read
/// zeros when there is none) unless the sector was written through the overlay; writes and
/// flushes stay in memory. The underlying device is never written or flushed, so the engine's
/// own recovery can run on it to find out what it would do.
///
/// Memory: one entry per written sector (all-zero sectors, such as invalidated headers and
/// voided regions, take no data buffer).
pub struct OverlayDevice<'a, D: BlockDevice> {
    base: Option<&'a mut D>,
    sectors: u64,
    /// Sectors written through the overlay; `None` = all zero.
    written: std::collections::BTreeMap<u64, Option<Box<[u8]>>>,
}

impl<'a, D: BlockDevice> OverlayDevice<'a, D> {
    /// An overlay over `base`.
    pub fn new(base: &'a mut D) -> Self {
        OverlayDevice {
            sectors: base.size_sectors(),
            base: Some(base),
            written: Default::default(),
        }
    }

    /// An overlay over nothing: a device of `sectors` zero sectors.
    pub fn zeros(sectors: u64) -> Self {
        OverlayDevice {
            base: None,
            sectors,
            written: Default::default(),
        }
    }

    /// Sectors written through the overlay.
    pub fn sectors_written(&self) -> usize {
        self.written.len()
    }
}

impl<D: BlockDevice> BlockDevice for OverlayDevice<'_, D> {
    fn size_sectors(&self) -> u64 {
        self.sectors
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> std::result::Result<(), IoError> {
        check_access(IoOp::Read, self.sectors, sector, buf.len())?;
        match self.base.as_deref_mut() {
            Some(base) => base.read(sector, buf)?,
            None => buf.fill(0),
        }
        let end = sector + (buf.len() / SECTOR_SIZE) as u64;
        for (&s, data) in self.written.range(sector..end) {
            let at = (s - sector) as usize * SECTOR_SIZE;
            let dst = &mut buf[at..at + SECTOR_SIZE];
            match data {
                Some(d) => dst.copy_from_slice(d),
                None => dst.fill(0),
            }
        }
        Ok(())
    }

    fn write(&mut self, sector: u64, data: &[u8], _fua: bool) -> std::result::Result<(), IoError> {
        check_access(IoOp::Write, self.sectors, sector, data.len())?;
        for (i, d) in data.chunks_exact(SECTOR_SIZE).enumerate() {
            let kept = d.iter().any(|&b| b != 0).then(|| d.into());
            self.written.insert(sector + i as u64, kept);
        }
        Ok(())
    }

    fn flush(&mut self) -> std::result::Result<(), IoError> {
        Ok(())
    }
}

/// One plog superblock copy (primary: sector 0, backup: sector 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlogSuperblockCopy {
    pub name: RecordCopyName,
    pub sector: u64,
    /// The copy, when its magic and CRC are right.
    pub superblock: Option<PlogSuperblock>,
    /// It decodes and carries the cache superblock's generation.
    pub generation_matches: bool,
}

/// What a plog region holds, judged against the superblock recovery uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionState {
    /// Entry 0 does not decode: never written, voided by recovery, or garbage.
    Empty,
    /// Entry 0 is of the current generation and epoch and the run of valid entries starts
    /// there (`valid_entries` ≥ 1).
    Current,
    /// Entry 0 names the current generation and epoch but fails verification (CRC, shape,
    /// position): a torn first entry; the region holds nothing recovery would use.
    Invalid,
    /// Entry 0 is of an older epoch or another generation: void, recovery ignores it.
    Stale,
    /// Entry 0 is current but names a segment that does not log into this region.
    Misplaced,
}

impl RegionState {
    pub fn as_str(self) -> &'static str {
        match self {
            RegionState::Empty => "empty",
            RegionState::Current => "current",
            RegionState::Invalid => "invalid",
            RegionState::Stale => "stale",
            RegionState::Misplaced => "misplaced",
        }
    }
}

/// One plog region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionReport {
    pub region: u32,
    /// First sector of the region on the plog device.
    pub sector: u64,
    /// Entry 0's header, when it decodes (whatever its epoch).
    pub first: Option<EntryHeader>,
    pub state: RegionState,
    /// Entries of the current epoch that verify, from entry 0 on (what recovery could replay
    /// of this region).
    pub valid_entries: u32,
    /// Sectors those entries take (headers and data).
    pub sectors_used: u64,
    /// The smallest backing device (sectors) those entries fit in.
    pub backing_sectors_needed: u64,
}

/// The plog device, decoded: superblocks and regions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlogInfo {
    pub device_sectors: u64,
    /// Primary, backup; `None` copies when the device is too small to hold them.
    pub copies: [PlogSuperblockCopy; 2],
    /// The superblock recovery would use (`None` when it would refuse the plog, or when the
    /// cache device gives no generation and order to judge it by).
    pub superblock: Option<PlogSuperblock>,
    /// Why recovery would refuse the plog.
    pub problem: Option<Problem>,
    /// Every region, when `superblock` is known.
    pub regions: Vec<RegionReport>,
}

/// The type-1 part of a [`CheckReport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlogReport {
    pub info: PlogInfo,
    /// What `Engine::open_with_plog` reports when run on copy-on-write overlays of the devices:
    /// the whole recovery (cache segments applied, plog segments rebuilt, entries replayed,
    /// regions voided, where and why it stops, the epoch it moves to). `None` when recovery
    /// fails or `open` would not get that far (the problems say why).
    pub recovery: Option<RecoveryReport>,
}

fn plog_io<T>(r: std::result::Result<T, IoError>) -> Result<T> {
    r.map_err(|source| Error::Io {
        role: DeviceRole::Plog,
        source,
    })
}

/// Names why recovery refuses a plog superblock (`open_superblock`'s error).
fn plog_problem(e: Error, any_copy_valid: bool) -> Problem {
    let kind = match &e {
        Error::PlogMismatch { .. } => ProblemKind::PlogGeneration,
        Error::UnsupportedVersion(_) => ProblemKind::PlogVersion,
        Error::PlogResized { .. } => ProblemKind::PlogResized,
        Error::PlogGeometry(_) => ProblemKind::PlogGeometry,
        // Its own "corrupt" covers both: no valid copy, and a segment order of another cache.
        Error::Corrupt { .. } if any_copy_valid => ProblemKind::PlogGeometry,
        _ => ProblemKind::PlogSuperblock,
    };
    problem(kind, format!("plog: {e}"))
}

/// Reads both plog superblock copies and, when the cache device gives a generation and a
/// geometry, decides as recovery does (`open_superblock`, the same function) and summarises
/// every region. Reads only; `Err` only for an I/O error.
fn read_plog_info<D: BlockDevice>(
    plog: &mut D,
    cache_ext: Option<SuperblockExt>,
    geometry: Option<Geometry>,
    backing_sectors: Option<u64>,
) -> Result<PlogInfo> {
    let device_sectors = plog.size_sectors();
    let generation = cache_ext.map(|e| e.generation);
    let decoded = if device_sectors >= PLOG_FIRST_REGION_SECTOR {
        crate::plog::read_superblocks(plog)?
    } else {
        [None; 2]
    };
    let copy = |i: usize, name, sector| PlogSuperblockCopy {
        name,
        sector,
        superblock: decoded[i],
        generation_matches: decoded[i].is_some_and(|s| Some(s.generation) == generation),
    };
    let mut info = PlogInfo {
        device_sectors,
        copies: [
            copy(0, RecordCopyName::Primary, PLOG_SB_SECTOR),
            copy(1, RecordCopyName::Backup, PLOG_BACKUP_SB_SECTOR),
        ],
        superblock: None,
        problem: None,
        regions: Vec::new(),
    };
    // Without our superblock and a geometry there is nothing to judge the plog by; the cache
    // device's own problems say why.
    let (Some(ext), Some(geo)) = (cache_ext, geometry) else {
        return Ok(info);
    };
    let any_valid = decoded.iter().any(|c| c.is_some());
    if device_sectors < PLOG_FIRST_REGION_SECTOR {
        info.problem = Some(problem(
            ProblemKind::PlogSuperblock,
            format!(
                "plog: the device has {device_sectors} sectors, too few for its superblocks \
                 ({PLOG_FIRST_REGION_SECTOR})"
            ),
        ));
        return Ok(info);
    }
    let sb = match crate::plog::open_superblock(plog, ext.generation, geo.order, false) {
        Ok(sb) => sb,
        Err(e @ Error::Io { .. }) => return Err(e),
        Err(e) => {
            info.problem = Some(plog_problem(e, any_valid));
            return Ok(info);
        }
    };
    info.superblock = Some(sb);
    let pgeo = sb.geometry;
    // `open_superblock` validated the geometry: regions lie inside the device, each at most
    // `MAX_REGION_SECTORS` long, at most `MAX_REGIONS` of them.
    let mut buf = vec![0u8; pgeo.region_sectors as usize * SECTOR_SIZE];
    let backing = backing_sectors.unwrap_or(UNKNOWN_BACKING_SECTORS);
    for region in 0..pgeo.nr_regions {
        let sector = pgeo.region_sector(region);
        plog_io(plog.read(sector, &mut buf))?;
        let first = crate::format::plog::decode_entry_header(&buf[..SECTOR_SIZE]);
        let mut r = RegionReport {
            region,
            sector,
            first,
            state: RegionState::Empty,
            valid_entries: 0,
            sectors_used: 0,
            backing_sectors_needed: 0,
        };
        if let Some(h) = first {
            r.state = if h.generation != sb.generation || h.epoch != sb.epoch {
                RegionState::Stale
            } else if pgeo.region_of(h.segment_id) != region {
                RegionState::Misplaced
            } else {
                let owner = RunOwner {
                    segment_id: h.segment_id,
                    generation: Some(sb.generation),
                    epoch: Some(sb.epoch),
                };
                let run = verified_run(&buf, owner, backing);
                r.valid_entries = run.len() as u32;
                for (_, e) in &run {
                    r.sectors_used += e.footprint();
                    r.backing_sectors_needed = r
                        .backing_sectors_needed
                        .max(e.sector.saturating_add(e.len as u64));
                }
                if run.is_empty() {
                    RegionState::Invalid
                } else {
                    RegionState::Current
                }
            };
        }
        info.regions.push(r);
    }
    Ok(info)
}

/// Runs the engine's own recovery (`FormatPolicy::Never`) on overlays of the devices and
/// returns its report, or the error it fails with. Nothing reaches the devices: the overlays
/// keep what recovery writes (stale headers zeroed, regions voided, the rebuilt segments, the
/// new plog epoch) in memory and drop it. The outer `Err` is an I/O error of a device.
fn recover_on_overlays<D: BlockDevice>(
    cache: &mut D,
    plog: &mut D,
    backing_sectors: Option<u64>,
) -> Result<std::result::Result<RecoveryReport, Error>> {
    let cfg = Config {
        nr_rambuf_pool: CHECK_RAMBUF_POOL,
        format: FormatPolicy::Never,
        ..Config::default()
    };
    let backing = OverlayDevice::zeros(backing_sectors.unwrap_or(UNKNOWN_BACKING_SECTORS));
    match Engine::open_with_plog(
        OverlayDevice::new(cache),
        backing,
        Some(OverlayDevice::new(plog)),
        cfg,
    ) {
        Ok((_engine, report)) => Ok(Ok(report)),
        Err(e @ Error::Io { .. }) => Err(e),
        Err(e) => Ok(Err(e)),
    }
}

// ----- dump -----

/// One metablock of a dumped segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockDump {
    pub index: usize,
    /// Backing sector of the block.
    pub sector: u64,
    pub dirty_bits: u8,
    /// The block CRC the metablock records (our images; upstream leaves none).
    pub crc: Option<u32>,
    /// Whether the data block matches `crc` (`None` without one).
    pub crc_ok: Option<bool>,
}

/// One segment's header and metablocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentDump {
    pub slot: u64,
    pub id: u64,
    pub length: u8,
    pub checksum: u32,
    pub length_ok: bool,
    pub checksum_ok: bool,
    /// The id belongs in this slot.
    pub in_its_slot: bool,
    /// `min(length, blocks per segment)` metablocks, unless the listing cap was reached.
    pub blocks: Vec<BlockDump>,
    /// The metablocks were left out because the dump reached [`DUMP_MAX_LISTED_BLOCKS`].
    pub blocks_omitted: bool,
}

/// A requested segment id that is not on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingSegment {
    pub id: u64,
    /// The slot it would live in (`None` for id 0, which means "empty").
    pub slot: Option<u64>,
    /// The id that slot holds instead (0: empty).
    pub found: u64,
}

/// The result of [`dump`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dump {
    pub device_sectors: u64,
    pub superblock: SuperblockInfo,
    pub records: Option<RecordInfo>,
    pub geometry: Option<Geometry>,
    /// The segment id asked for, if any.
    pub requested: Option<u64>,
    /// Non-empty slots in slot order, or just the requested segment.
    pub segments: Vec<SegmentDump>,
    pub missing: Option<MissingSegment>,
    /// Why there are no segments (no geometry), if that is the case.
    pub unreadable: Option<String>,
    /// The plog device ([`dump_with_plog`]).
    pub plog: Option<PlogInfo>,
}

/// Decodes the metadata of a cache device: superblock, both records, geometry, and for every
/// non-empty slot (or only for segment `segment`) the header and metablocks. Reads only.
pub fn dump<D: BlockDevice>(cache: &mut D, segment: Option<u64>) -> Result<Dump> {
    dump_inner(cache, None, segment)
}

/// [`dump`], and the plog device of a type-1 cache: both superblock copies (and the one
/// recovery would use) and a summary of every region. Reads only.
pub fn dump_with_plog<D: BlockDevice>(
    cache: &mut D,
    plog: &mut D,
    segment: Option<u64>,
) -> Result<Dump> {
    dump_inner(cache, Some(plog), segment)
}

fn dump_inner<D: BlockDevice>(
    cache: &mut D,
    plog: Option<&mut D>,
    segment: Option<u64>,
) -> Result<Dump> {
    let layout = read_layout(cache, plog.is_some())?;
    let plog = match plog {
        Some(p) => Some(read_plog_info(
            p,
            layout.superblock.ext,
            layout.geometry,
            None,
        )?),
        None => None,
    };
    let mut out = Dump {
        device_sectors: cache.size_sectors(),
        superblock: layout.superblock,
        records: layout.records,
        geometry: layout.geometry,
        requested: segment,
        segments: Vec::new(),
        missing: None,
        unreadable: None,
        plog,
    };
    let Some(geo) = layout.geometry else {
        out.unreadable = Some(
            layout
                .problems
                .last()
                .map_or_else(|| "no geometry".to_string(), |p| p.detail.clone()),
        );
        return Ok(out);
    };
    let mut segbuf = vec![0u8; geo.segment_bytes()];
    let mut listed = 0usize;
    match segment {
        Some(0) => {
            out.missing = Some(MissingSegment {
                id: 0,
                slot: None,
                found: 0,
            })
        }
        Some(id) => {
            let slot = geo.slot_of(id);
            match dump_slot(cache, &geo, slot, &mut segbuf, &mut listed)? {
                Some(seg) if seg.id == id => out.segments.push(seg),
                other => {
                    out.missing = Some(MissingSegment {
                        id,
                        slot: Some(slot),
                        found: other.map_or(0, |s| s.id),
                    })
                }
            }
        }
        None => {
            for slot in 0..geo.nr_segments {
                if let Some(seg) = dump_slot(cache, &geo, slot, &mut segbuf, &mut listed)? {
                    out.segments.push(seg);
                }
            }
        }
    }
    Ok(out)
}

/// The header of `slot` and, while under the listing cap, its metablocks; `None` when empty.
fn dump_slot<D: BlockDevice>(
    cache: &mut D,
    geo: &Geometry,
    slot: u64,
    segbuf: &mut [u8],
    listed: &mut usize,
) -> Result<Option<SegmentDump>> {
    let base = geo.slot_sector(slot);
    io(cache.read(base, &mut segbuf[..BLOCK_SIZE]))?;
    let h = format::decode_segment_header(segbuf);
    if h.id == 0 {
        return Ok(None);
    }
    let len = h.length as usize;
    let length_ok = len <= geo.blocks_per_segment();
    // A torn header may claim more blocks than fit: list only what the geometry allows, and
    // read data only for those.
    let shown = len.min(geo.blocks_per_segment());
    let bytes = format::segment_len_bytes(shown);
    if shown > 0 {
        io(cache.read(base + SECTORS_PER_BLOCK, &mut segbuf[BLOCK_SIZE..bytes]))?;
    }
    let checksum_ok = length_ok && format::segment_checksum_ok(&segbuf[..bytes]);
    let blocks_omitted = *listed + shown > DUMP_MAX_LISTED_BLOCKS;
    let mut blocks = Vec::new();
    if !blocks_omitted {
        *listed += shown;
        blocks.reserve(shown);
        for j in 0..shown {
            let m = format::decode_metablock(segbuf, j);
            let data = &segbuf[BLOCK_SIZE * (1 + j)..BLOCK_SIZE * (2 + j)];
            blocks.push(BlockDump {
                index: j,
                sector: m.sector,
                dirty_bits: m.dirty_bits,
                crc: m.block_crc,
                crc_ok: m.block_crc.map(|crc| crc == format::block_crc(data)),
            });
        }
    }
    Ok(Some(SegmentDump {
        slot,
        id: h.id,
        length: h.length,
        checksum: h.checksum,
        length_ok,
        checksum_ok,
        in_its_slot: geo.slot_of(h.id) == slot,
        blocks,
        blocks_omitted,
    }))
}

// ----- text -----

fn fmt_superblock(f: &mut fmt::Formatter<'_>, sb: &SuperblockInfo) -> fmt::Result {
    write!(f, "superblock: {}", sb.kind.as_str())?;
    if sb.kind != SuperblockKind::Missing {
        write!(f, " (magic 0x{:08x})", sb.magic)?;
    }
    writeln!(f)?;
    if let Some(e) = sb.ext {
        writeln!(
            f,
            "  format version {}, segment order {}, cache type {}, flags 0x{:x}, generation {}, \
             formatted at {} sectors",
            e.format_version, e.order, e.cache_type, e.flags, e.generation, e.cache_sectors
        )?;
    }
    Ok(())
}

fn fmt_records(f: &mut fmt::Formatter<'_>, records: &Option<RecordInfo>) -> fmt::Result {
    let Some(r) = records else {
        return writeln!(f, "records: device too small to hold them");
    };
    writeln!(f, "records:")?;
    for c in [r.primary, r.backup] {
        write!(
            f,
            "  {:7} (sector {}): id {}, ",
            c.name.as_str(),
            c.sector,
            c.raw_id
        )?;
        match c.ext {
            Some(e) => write!(
                f,
                "extension: flags 0x{:x}, generation {}",
                e.flags, e.generation
            )?,
            None => write!(f, "no valid extension")?,
        }
        writeln!(f, " -> {}", if c.valid { "valid" } else { "not used" })?;
    }
    match (r.record, r.source) {
        (Some(id), Some(src)) => writeln!(f, "  record in use: {id} (from {})", src.as_str())?,
        _ => writeln!(f, "  record in use: none")?,
    }
    if r.interrupted_format {
        writeln!(f, "  a format was interrupted (formatting flag set)")?;
    }
    Ok(())
}

fn fmt_geometry(f: &mut fmt::Formatter<'_>, g: &Option<Geometry>) -> fmt::Result {
    match g {
        Some(g) => writeln!(
            f,
            "geometry: order {}, {} segments of {} sectors, {} blocks per segment",
            g.order,
            g.nr_segments,
            g.segment_sectors(),
            g.blocks_per_segment()
        ),
        None => writeln!(f, "geometry: unknown"),
    }
}

fn fmt_plog_sb(sb: &PlogSuperblock) -> String {
    format!(
        "version {}, generation {}, epoch {}, formatted at {} sectors, {} regions of {} \
         sectors, segment order {}",
        sb.version,
        sb.generation,
        sb.epoch,
        sb.plog_sectors,
        sb.geometry.nr_regions,
        sb.geometry.region_sectors,
        sb.segment_order
    )
}

fn fmt_plog_info(f: &mut fmt::Formatter<'_>, p: &PlogInfo) -> fmt::Result {
    writeln!(f, "plog device: {} sectors", p.device_sectors)?;
    for c in &p.copies {
        write!(
            f,
            "  superblock {:7} (sector {}): ",
            c.name.as_str(),
            c.sector
        )?;
        match &c.superblock {
            Some(sb) => writeln!(
                f,
                "{}{}",
                fmt_plog_sb(sb),
                if c.generation_matches {
                    ""
                } else {
                    " (NOT this cache's generation)"
                }
            )?,
            None => writeln!(f, "not valid")?,
        }
    }
    match (&p.superblock, &p.problem) {
        (Some(sb), _) => writeln!(f, "  in use: epoch {}", sb.epoch)?,
        (None, Some(pr)) => writeln!(f, "  in use: none ({})", pr.detail)?,
        (None, None) => writeln!(
            f,
            "  in use: not judged (the cache device gives no generation)"
        )?,
    }
    let empty = p
        .regions
        .iter()
        .filter(|r| r.state == RegionState::Empty)
        .count();
    if !p.regions.is_empty() {
        writeln!(
            f,
            "  regions: {}, {empty} of them empty (not listed)",
            p.regions.len()
        )?;
    }
    for r in p.regions.iter().filter(|r| r.state != RegionState::Empty) {
        write!(
            f,
            "  region {:>2} (sector {:>8}): {}",
            r.region,
            r.sector,
            r.state.as_str()
        )?;
        if let Some(h) = &r.first {
            write!(
                f,
                "; first entry: segment {}, epoch {}, prev_entries {}",
                h.segment_id, h.epoch, h.prev_entries
            )?;
        }
        if r.state == RegionState::Current {
            write!(
                f,
                "; {} valid entries, {} sectors",
                r.valid_entries, r.sectors_used
            )?;
        }
        writeln!(f)?;
    }
    Ok(())
}

fn fmt_plog_recovery(f: &mut fmt::Formatter<'_>, r: &RecoveryReport) -> fmt::Result {
    writeln!(
        f,
        "recovery with the plog (the engine's own, run on in-memory overlays):"
    )?;
    if r.segments_applied == 0 {
        writeln!(f, "  from record {}, applies nothing", r.record)?;
    } else {
        writeln!(
            f,
            "  from record {}, applies ids {}..={} ({} segments, {} dirty blocks)",
            r.record,
            r.record + 1,
            r.last_applied,
            r.segments_applied,
            r.dirty_blocks
        )?;
    }
    writeln!(
        f,
        "  rebuilds {} segment(s) from the plog ({} entries replayed); voids {} region(s); \
         invalidates {} slot(s); moves the plog to epoch {}",
        r.plog_segments_rebuilt,
        r.plog_entries_replayed,
        r.plog_regions_voided,
        r.stale_invalidated,
        r.plog_epoch
    )?;
    if let Some(why) = &r.stop_reason {
        writeln!(f, "  stops: {why}")?;
    }
    Ok(())
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "cache device: {} sectors: {}",
            self.device_sectors,
            if self.sound { "SOUND" } else { "NOT SOUND" }
        )?;
        fmt_superblock(f, &self.superblock)?;
        fmt_records(f, &self.records)?;
        fmt_geometry(f, &self.geometry)?;
        if self.geometry.is_some() {
            let c = &self.slot_counts;
            writeln!(
                f,
                "slots: {} empty, {} valid, {} stale, {} unreachable, {} torn, {} misplaced",
                c.empty, c.valid, c.stale, c.unreachable, c.torn, c.misplaced
            )?;
        }
        match &self.replay {
            Some(r) => {
                if r.segments_applied == 0 {
                    writeln!(f, "replay: from record {}, applies nothing", r.record)?;
                } else {
                    writeln!(
                        f,
                        "replay: from record {}, applies ids {}..={} ({} segments, {} dirty \
                         blocks, needs a backing device of at least {} sectors)",
                        r.record,
                        r.record + 1,
                        r.last_applied,
                        r.segments_applied,
                        r.dirty_blocks,
                        r.backing_sectors_needed
                    )?;
                }
                let why = match r.stop.reason {
                    StopReason::EmptySlot => "the slot is empty".to_string(),
                    StopReason::OtherId { found } => format!("the slot holds id {found}"),
                    StopReason::Torn => "the segment is torn".to_string(),
                    StopReason::WholeRing => "every slot was applied".to_string(),
                };
                writeln!(
                    f,
                    "  stops at id {} (slot {}): {why}; invalidates {} slot(s)",
                    r.stop.id, r.stop.slot, r.invalidated_slots
                )?;
            }
            None => writeln!(
                f,
                "replay: none (opening would refuse or format the device)"
            )?,
        }
        if let Some(p) = &self.plog {
            fmt_plog_info(f, &p.info)?;
            if let Some(r) = &p.recovery {
                fmt_plog_recovery(f, r)?;
            }
        }
        for p in &self.problems {
            writeln!(f, "PROBLEM {}: {}", p.kind.as_str(), p.detail)?;
        }
        for n in &self.notes {
            writeln!(f, "note {}: {}", n.kind.as_str(), n.detail)?;
        }
        if !self.slots.is_empty() {
            writeln!(f, "non-empty slots:")?;
            for s in self.slots.iter().take(DISPLAY_MAX_SLOTS) {
                writeln!(
                    f,
                    "  slot {:>6}  id {:>10}  {:11}  length {:>3}{}  checksum {}  dirty {}{}{}",
                    s.slot,
                    s.id,
                    s.class.as_str(),
                    s.length,
                    if s.length_ok { "" } else { " (too long)" },
                    if s.checksum_ok { "ok" } else { "BAD" },
                    s.dirty_metablocks,
                    if s.bad_block_crcs > 0 {
                        format!("  bad block CRCs {}", s.bad_block_crcs)
                    } else {
                        String::new()
                    },
                    if s.unaligned_metablocks > 0 {
                        format!("  unaligned {}", s.unaligned_metablocks)
                    } else {
                        String::new()
                    },
                )?;
            }
            if self.slots.len() > DISPLAY_MAX_SLOTS {
                writeln!(
                    f,
                    "  ... {} more (see the JSON output)",
                    self.slots.len() - DISPLAY_MAX_SLOTS
                )?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Dump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "cache device: {} sectors", self.device_sectors)?;
        fmt_superblock(f, &self.superblock)?;
        fmt_records(f, &self.records)?;
        fmt_geometry(f, &self.geometry)?;
        if let Some(p) = &self.plog {
            fmt_plog_info(f, p)?;
        }
        if let Some(why) = &self.unreadable {
            writeln!(f, "segments: not readable: {why}")?;
        }
        if let Some(m) = &self.missing {
            match m.slot {
                None => writeln!(f, "segment 0 does not exist (id 0 means an empty slot)")?,
                Some(slot) if m.found == 0 => writeln!(
                    f,
                    "segment {} is not on the device: slot {slot} is empty",
                    m.id
                )?,
                Some(slot) => writeln!(
                    f,
                    "segment {} is not on the device: slot {slot} holds id {}",
                    m.id, m.found
                )?,
            }
        }
        for s in &self.segments {
            writeln!(
                f,
                "segment {} in slot {}{}: length {}{}, checksum 0x{:08x} {}",
                s.id,
                s.slot,
                if s.in_its_slot {
                    ""
                } else {
                    " (id does not belong in this slot)"
                },
                s.length,
                if s.length_ok { "" } else { " (too long)" },
                s.checksum,
                if s.checksum_ok { "ok" } else { "BAD" },
            )?;
            if s.blocks_omitted {
                writeln!(
                    f,
                    "  metablocks omitted (listing cap reached; dump this id alone)"
                )?;
            }
            for b in &s.blocks {
                let crc = match (b.crc, b.crc_ok) {
                    (Some(c), Some(true)) => format!("crc 0x{c:08x} ok"),
                    (Some(c), _) => format!("crc 0x{c:08x} BAD"),
                    (None, _) => "no crc".to_string(),
                };
                writeln!(
                    f,
                    "  [{:>3}] sector {:>12}  dirty {:08b}  {crc}",
                    b.index, b.sector, b.dirty_bits
                )?;
            }
        }
        Ok(())
    }
}

// ----- JSON (hand-written: the project has no serde) -----

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON object from already-encoded values.
fn json_obj(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{}", json_str(k), v))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn json_arr(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(","))
}

fn json_opt<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| "null".to_string(), f)
}

fn json_superblock(sb: &SuperblockInfo) -> String {
    json_obj(&[
        ("kind", json_str(sb.kind.as_str())),
        ("magic", sb.magic.to_string()),
        (
            "extension",
            json_opt(sb.ext, |e| {
                json_obj(&[
                    ("format_version", e.format_version.to_string()),
                    ("segment_size_order", e.order.to_string()),
                    ("cache_type", e.cache_type.to_string()),
                    ("flags", e.flags.to_string()),
                    ("generation", e.generation.to_string()),
                    ("cache_sectors", e.cache_sectors.to_string()),
                ])
            }),
        ),
    ])
}

fn json_records(r: &Option<RecordInfo>) -> String {
    json_opt(r.as_ref(), |r| {
        let copy = |c: &RecordCopy| {
            json_obj(&[
                ("sector", c.sector.to_string()),
                ("raw_id", c.raw_id.to_string()),
                (
                    "extension",
                    json_opt(c.ext, |e| {
                        json_obj(&[
                            ("last_writeback_id", e.last_writeback_id.to_string()),
                            ("flags", e.flags.to_string()),
                            ("generation", e.generation.to_string()),
                        ])
                    }),
                ),
                ("valid", c.valid.to_string()),
            ])
        };
        json_obj(&[
            ("primary", copy(&r.primary)),
            ("backup", copy(&r.backup)),
            ("interrupted_format", r.interrupted_format.to_string()),
            ("record", json_opt(r.record, |v| v.to_string())),
            ("source", json_opt(r.source, |s| json_str(s.as_str()))),
        ])
    })
}

fn json_geometry(g: &Option<Geometry>) -> String {
    json_opt(g.as_ref(), |g| {
        json_obj(&[
            ("order", g.order.to_string()),
            ("nr_segments", g.nr_segments.to_string()),
            ("segment_sectors", g.segment_sectors().to_string()),
            ("blocks_per_segment", g.blocks_per_segment().to_string()),
        ])
    })
}

fn json_plog_sb(sb: &PlogSuperblock) -> String {
    json_obj(&[
        ("version", sb.version.to_string()),
        ("generation", sb.generation.to_string()),
        ("epoch", sb.epoch.to_string()),
        ("plog_sectors", sb.plog_sectors.to_string()),
        ("region_sectors", sb.geometry.region_sectors.to_string()),
        ("nr_regions", sb.geometry.nr_regions.to_string()),
        ("segment_order", sb.segment_order.to_string()),
    ])
}

fn json_problem(p: &Problem) -> String {
    json_obj(&[
        ("kind", json_str(p.kind.as_str())),
        ("detail", json_str(&p.detail)),
    ])
}

fn json_plog_info(p: &PlogInfo) -> String {
    json_obj(&[
        ("device_sectors", p.device_sectors.to_string()),
        (
            "superblock_copies",
            json_arr(p.copies.iter().map(|c| {
                json_obj(&[
                    ("name", json_str(c.name.as_str())),
                    ("sector", c.sector.to_string()),
                    ("superblock", json_opt(c.superblock.as_ref(), json_plog_sb)),
                    ("generation_matches", c.generation_matches.to_string()),
                ])
            })),
        ),
        ("superblock", json_opt(p.superblock.as_ref(), json_plog_sb)),
        ("problem", json_opt(p.problem.as_ref(), json_problem)),
        (
            "regions",
            json_arr(p.regions.iter().map(|r| {
                json_obj(&[
                    ("region", r.region.to_string()),
                    ("sector", r.sector.to_string()),
                    ("state", json_str(r.state.as_str())),
                    (
                        "first",
                        json_opt(r.first.as_ref(), |h| {
                            json_obj(&[
                                ("segment_id", h.segment_id.to_string()),
                                ("generation", h.generation.to_string()),
                                ("epoch", h.epoch.to_string()),
                                ("seq", h.seq.to_string()),
                                ("prev_entries", h.prev_entries.to_string()),
                            ])
                        }),
                    ),
                    ("valid_entries", r.valid_entries.to_string()),
                    ("sectors_used", r.sectors_used.to_string()),
                    (
                        "backing_sectors_needed",
                        r.backing_sectors_needed.to_string(),
                    ),
                ])
            })),
        ),
    ])
}

fn json_recovery(r: &RecoveryReport) -> String {
    json_obj(&[
        ("record", r.record.to_string()),
        ("segments_applied", r.segments_applied.to_string()),
        ("last_applied", r.last_applied.to_string()),
        ("dirty_blocks", r.dirty_blocks.to_string()),
        ("stop_reason", json_opt(r.stop_reason.as_deref(), json_str)),
        ("stale_invalidated", r.stale_invalidated.to_string()),
        ("plog_segments_rebuilt", r.plog_segments_rebuilt.to_string()),
        ("plog_entries_replayed", r.plog_entries_replayed.to_string()),
        ("plog_regions_voided", r.plog_regions_voided.to_string()),
        ("plog_epoch", r.plog_epoch.to_string()),
    ])
}

impl CheckReport {
    /// The whole report as one JSON object (every non-empty slot listed).
    pub fn to_json(&self) -> String {
        let c = &self.slot_counts;
        let replay = json_opt(self.replay.as_ref(), |r| {
            let (reason, found) = match r.stop.reason {
                StopReason::OtherId { found } => (r.stop.reason.as_str(), Some(found)),
                other => (other.as_str(), None),
            };
            json_obj(&[
                ("record", r.record.to_string()),
                ("segments_applied", r.segments_applied.to_string()),
                ("last_applied", r.last_applied.to_string()),
                ("dirty_blocks", r.dirty_blocks.to_string()),
                (
                    "stop",
                    json_obj(&[
                        ("id", r.stop.id.to_string()),
                        ("slot", r.stop.slot.to_string()),
                        ("reason", json_str(reason)),
                        ("found", json_opt(found, |v| v.to_string())),
                    ]),
                ),
                ("invalidated_slots", r.invalidated_slots.to_string()),
                (
                    "backing_sectors_needed",
                    r.backing_sectors_needed.to_string(),
                ),
            ])
        });
        let plog = json_opt(self.plog.as_ref(), |p| {
            json_obj(&[
                ("info", json_plog_info(&p.info)),
                ("recovery", json_opt(p.recovery.as_ref(), json_recovery)),
            ])
        });
        json_obj(&[
            ("sound", self.sound.to_string()),
            ("device_sectors", self.device_sectors.to_string()),
            ("superblock", json_superblock(&self.superblock)),
            ("records", json_records(&self.records)),
            ("geometry", json_geometry(&self.geometry)),
            (
                "slot_counts",
                json_obj(&[
                    ("empty", c.empty.to_string()),
                    ("valid", c.valid.to_string()),
                    ("stale", c.stale.to_string()),
                    ("unreachable", c.unreachable.to_string()),
                    ("torn", c.torn.to_string()),
                    ("misplaced", c.misplaced.to_string()),
                ]),
            ),
            ("replay", replay),
            (
                "problems",
                json_arr(self.problems.iter().map(|p| {
                    json_obj(&[
                        ("kind", json_str(p.kind.as_str())),
                        ("detail", json_str(&p.detail)),
                    ])
                })),
            ),
            (
                "notes",
                json_arr(self.notes.iter().map(|n| {
                    json_obj(&[
                        ("kind", json_str(n.kind.as_str())),
                        ("detail", json_str(&n.detail)),
                    ])
                })),
            ),
            ("plog", plog),
            (
                "slots",
                json_arr(self.slots.iter().map(|s| {
                    json_obj(&[
                        ("slot", s.slot.to_string()),
                        ("id", s.id.to_string()),
                        ("length", s.length.to_string()),
                        ("class", json_str(s.class.as_str())),
                        ("length_ok", s.length_ok.to_string()),
                        ("checksum_ok", s.checksum_ok.to_string()),
                        ("dirty_metablocks", s.dirty_metablocks.to_string()),
                        ("bad_block_crcs", s.bad_block_crcs.to_string()),
                        ("unaligned_metablocks", s.unaligned_metablocks.to_string()),
                    ])
                })),
            ),
        ])
    }
}

impl Dump {
    /// The whole dump as one JSON object.
    pub fn to_json(&self) -> String {
        json_obj(&[
            ("device_sectors", self.device_sectors.to_string()),
            ("superblock", json_superblock(&self.superblock)),
            ("records", json_records(&self.records)),
            ("geometry", json_geometry(&self.geometry)),
            ("requested", json_opt(self.requested, |v| v.to_string())),
            (
                "missing",
                json_opt(self.missing, |m| {
                    json_obj(&[
                        ("id", m.id.to_string()),
                        ("slot", json_opt(m.slot, |v| v.to_string())),
                        ("found", m.found.to_string()),
                    ])
                }),
            ),
            ("unreadable", json_opt(self.unreadable.as_deref(), json_str)),
            ("plog", json_opt(self.plog.as_ref(), json_plog_info)),
            (
                "segments",
                json_arr(self.segments.iter().map(|s| {
                    json_obj(&[
                        ("slot", s.slot.to_string()),
                        ("id", s.id.to_string()),
                        ("length", s.length.to_string()),
                        ("checksum", s.checksum.to_string()),
                        ("length_ok", s.length_ok.to_string()),
                        ("checksum_ok", s.checksum_ok.to_string()),
                        ("in_its_slot", s.in_its_slot.to_string()),
                        ("blocks_omitted", s.blocks_omitted.to_string()),
                        (
                            "blocks",
                            json_arr(s.blocks.iter().map(|b| {
                                json_obj(&[
                                    ("index", b.index.to_string()),
                                    ("sector", b.sector.to_string()),
                                    ("dirty_bits", b.dirty_bits.to_string()),
                                    ("crc", json_opt(b.crc, |v| v.to_string())),
                                    ("crc_ok", json_opt(b.crc_ok, |v| v.to_string())),
                                ])
                            })),
                        ),
                    ])
                })),
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\nd\u{1}é"), "\"a\\\"b\\\\c\\nd\\u0001é\"");
        assert_eq!(
            json_obj(&[("k", json_str("v")), ("n", "1".into())]),
            "{\"k\":\"v\",\"n\":1}"
        );
        assert_eq!(json_arr(Vec::<String>::new()), "[]");
    }

    #[test]
    fn walk_stops_like_recovery() {
        let geo = Geometry::new(4, 2048 + 4 * 16).unwrap();
        // Record 4: ids 5, 6 in slots 0, 1; slot 2 holds 3 (previous lap), slot 3 holds 4.
        let ids = [(5, true), (6, true), (3, true), (4, true)];
        let stop = walk(&geo, &ids, 4);
        assert_eq!(
            stop,
            ReplayStop {
                id: 7,
                slot: 2,
                reason: StopReason::OtherId { found: 3 }
            }
        );
        let torn = [(5, true), (6, false), (0, false), (0, false)];
        assert_eq!(walk(&geo, &torn, 4).reason, StopReason::Torn);
        let full = [(5, true), (6, true), (7, true), (8, true)];
        let stop = walk(&geo, &full, 4);
        assert_eq!((stop.id, stop.reason), (9, StopReason::WholeRing));
        assert_eq!(
            walk(&geo, &[(0, false); 4], 0).reason,
            StopReason::EmptySlot
        );
    }
}
