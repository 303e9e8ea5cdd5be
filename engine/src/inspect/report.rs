//! The types of a check report.

use crate::format::Geometry;

use super::plog::PlogReport;
use super::{RecordInfo, ReplayStop, SuperblockInfo};

/// What a slot holds, judged the way replay judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SlotClass {
    /// Header id 0: never written, or zeroed by format or by replay's invalidation.
    Empty,
    /// Intact (length within the geometry, checksum right, id belongs to this slot) and inside
    /// the run of ids replay applies.
    Valid,
    /// Intact, id at or below what is written back (the record, or the ring's bound): replay
    /// ignores it.
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
    pub(super) fn add(&mut self, class: SlotClass) {
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

/// What `Engine::open` would replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayPlan {
    /// The chosen record (the largest trusted copy).
    pub record: u64,
    /// The last id provably written back: the record, or more when the ring proves it (see
    /// `recovery::plan`, rule 3). The walk starts after it.
    pub written_back: u64,
    /// Ids `written_back + 1 ..= last_applied` are applied; `last_applied == written_back` when
    /// none is.
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
    /// Older copies whose dirty sectors replay writes back because a newer copy of the same
    /// block dropped them (upstream images only).
    pub replay_writebacks: u64,
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
    /// Replay would have to drop intact segments past the end of the log that wbcache did not
    /// write and that are not written back: recovery refuses (dm-writeboost would apply them).
    WouldDiscard,
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
            ProblemKind::WouldDiscard => "would-discard",
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
    /// The record lags what the ring proves written back (upstream writes its record only when
    /// asked): recovery starts after the ring's bound and makes it the record.
    RecordLags,
    /// Replay writes back an older copy's sectors that a newer copy dropped (upstream images).
    ReplayWritebacks,
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
            NoteKind::RecordLags => "record-lags",
            NoteKind::ReplayWritebacks => "replay-writebacks",
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
