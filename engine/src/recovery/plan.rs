//! Plan: what recovery does with a scanned cache device, decided by pure functions over the
//! values `scan.rs` read. `Engine::open` carries the plan out (`apply.rs`); `wbcache check`
//! explains the same plan. docs/DESIGN.md ("Replay") says why each rule is safe.
//!
//! The rules, in order:
//! 1. The layout: format, refuse, or recover (superblock, interrupted format, version, size,
//!    type) — [`decide_layout`].
//! 2. The record is a hint: the largest value any record copy may be trusted for (our
//!    extension of this generation, or a record sector in the shape upstream writes) —
//!    [`choose_record`]. Upstream writes it only when asked (`update_sb_record_interval`), so a
//!    real cache whose log wrapped usually still says 0.
//! 3. The ring bounds what can be dirty: a writer reuses the slot of id `k` only once `k - nr`
//!    is written back, so the highest intact id `V` proves everything up to `V - nr` written
//!    back, and a slot holding exactly id `k + nr` (torn or not) proves `k` written back. The
//!    walk starts past `max(record, those bounds)` — [`plan_walk`].
//! 4. The walk demands exact, contiguous ids and intact segments (checksum), and stops at the
//!    first slot that is not; what lies past it was never covered by a completed flush of
//!    either writer (both make segments durable in id order before acknowledging one).
//! 5. Past the end: slots holding an id at or past the first missing one are zeroed so those
//!    ids can be reused (H3) — but an intact segment there that wbcache did not write (no block
//!    CRCs) is data upstream would apply, so recovery refuses instead — [`discard_refusal`].
//! 6. Applying segments in id order, newest copy wins; where a newer copy has fewer dirty
//!    sectors than the copy it replaces (upstream before 2.1, or a clean read-cache entry), the
//!    older copy's other sectors are written back first, as upstream's replay does —
//!    [`plan_index`].

use std::collections::BTreeMap;

use crate::cache::FormatPolicy;
use crate::device::DeviceRole;
use crate::error::Error;
use crate::format::{
    self, Geometry, GeometryError, RecordExt, SuperblockExt, FORMAT_VERSION, SECTORS_PER_BLOCK,
};

use super::scan::{
    LayoutScan, RecordCopyName, RecordSector, SegmentScan, SlotHeader, SuperblockKind, Writer,
};

/// A record above this is corruption, not a segment id (ids grow by one per segment).
pub const MAX_PLAUSIBLE_RECORD: u64 = u64::MAX / 4;

/// A segment whose header claims an id above this is corruption, never intact, so arithmetic
/// on ids and laps cannot overflow. The engine never writes one (it stops with a corruption
/// error first), so a record it writes is never refused as implausible.
pub const MAX_SEGMENT_ID: u64 = MAX_PLAUSIBLE_RECORD;

/// What to do with the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutDecision {
    Format,
    Recover(RecoverLayout),
}

/// A device to recover: its geometry, whose format it is, and the record it starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoverLayout {
    pub geometry: Geometry,
    /// `None`: an upstream image (no extension): order 10, type 0, generation 0.
    pub ext: Option<SuperblockExt>,
    pub record: RecordChoice,
}

impl RecoverLayout {
    pub fn generation(&self) -> u64 {
        self.ext.map_or(0, |e| e.generation)
    }
}

/// A record copy recovery may trust, and the value it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordChoice {
    pub value: u64,
    pub source: RecordSource,
}

/// Where the chosen record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordSource {
    /// Only the primary copy holds the chosen value.
    Primary,
    /// Only the backup copy holds it (the primary is invalid or older: a torn record update).
    Backup,
    /// Both valid copies agree.
    Both,
    /// The primary in upstream's shape (zeros, the id at offset 0): written by dm-writeboost.
    UpstreamPrimary,
    /// No copy can be trusted (garbage in an upstream image's record): 0, and the ring bound.
    None,
}

impl RecordSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordSource::Primary => "primary",
            RecordSource::Backup => "backup",
            RecordSource::Both => "both",
            RecordSource::UpstreamPrimary => "upstream-primary",
            RecordSource::None => "none",
        }
    }
}

/// Whether a record copy may be trusted, and for which value: our extension of this
/// generation, or (the primary only) a sector in the shape upstream's record write leaves.
pub fn trusted_value(copy: &RecordSector, generation: u64) -> Option<u64> {
    match copy.ext {
        Some(RecordExt {
            generation: g,
            last_writeback_id,
            ..
        }) if g == generation => Some(last_writeback_id),
        Some(_) => None,
        None if copy.name == RecordCopyName::Primary && copy.upstream_form => Some(copy.raw_id),
        None => None,
    }
}

/// The record: the largest trusted value. Every record any writer made durable is a true
/// promise (its segments were written back and the backing device flushed first), so the
/// largest is right; a stale copy of ours never wins over a newer upstream record.
/// `None` when no copy can be trusted; an upstream image then starts from 0.
pub fn choose_record(
    records: &[RecordSector; 2],
    generation: u64,
    upstream: bool,
) -> Option<RecordChoice> {
    let [p, b] = records.map(|c| trusted_value(&c, generation));
    let value = p.max(b);
    let source = match (p, b) {
        (Some(x), Some(y)) if x == y => RecordSource::Both,
        (Some(x), _) if Some(x) == value => {
            if records[0].ext.is_some() {
                RecordSource::Primary
            } else {
                RecordSource::UpstreamPrimary
            }
        }
        (_, Some(_)) => RecordSource::Backup,
        _ if upstream => RecordSource::None,
        _ => return None,
    };
    Some(RecordChoice {
        value: value.unwrap_or(0),
        source,
    })
}

/// Whether a record copy carries the "formatting" flag (any generation: a format marks the
/// records before it knows which generation was there).
pub fn interrupted_format(layout: &LayoutScan) -> bool {
    layout.records.is_some_and(|rs| {
        rs.iter()
            .filter_map(|r| r.ext)
            .any(|r| r.flags & format::RECORD_FLAG_FORMATTING != 0)
    })
}

/// Why `open` refuses a device (each becomes the matching [`Error`]; `wbcache check` names it
/// as a problem).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Too small for the smallest geometry.
    TooSmall(GeometryError),
    /// Sector 0 is all zero and formatting was not allowed.
    Blank,
    /// The records say a format was cut short and formatting was not allowed.
    InterruptedFormat,
    /// Sector 0 is neither blank nor a wbcache/dm-writeboost superblock.
    Foreign,
    UnsupportedVersion(u32),
    CacheResized {
        formatted: u64,
        actual: u64,
    },
    PlogUnexpected,
    PlogMissing,
    UnsupportedType(u8),
    /// The superblock's order gives no geometry for this device.
    Geometry(GeometryError),
    /// No record copy can be trusted (our images keep two; upstream's has one).
    NoValidRecord {
        generation: u64,
    },
    /// The record is too large to be a segment id.
    ImplausibleRecord(u64),
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Error {
        match r {
            Refusal::TooSmall(e) | Refusal::Geometry(e) => Error::Geometry(e),
            Refusal::Blank => Error::Unformatted,
            Refusal::InterruptedFormat => Error::InterruptedFormat,
            Refusal::Foreign => Error::UnknownContent,
            Refusal::UnsupportedVersion(v) => Error::UnsupportedVersion(v),
            Refusal::CacheResized { formatted, actual } => {
                Error::CacheResized { formatted, actual }
            }
            Refusal::PlogUnexpected => Error::PlogUnexpected,
            Refusal::PlogMissing => Error::PlogMissing,
            Refusal::UnsupportedType(t) => Error::UnsupportedType(t),
            Refusal::NoValidRecord { generation } => Error::Corrupt {
                role: DeviceRole::Cache,
                sector: format::RECORD_SECTOR,
                what: format!(
                    "neither copy of the superblock record (sectors {} and {}) is valid for \
                     generation {generation:#x}",
                    format::RECORD_SECTOR,
                    format::BACKUP_RECORD_SECTOR
                ),
            },
            Refusal::ImplausibleRecord(r) => Error::Corrupt {
                role: DeviceRole::Cache,
                sector: format::RECORD_SECTOR,
                what: format!("superblock record {r} is not a plausible segment id"),
            },
        }
    }
}

/// What `Engine::open` does with the device: format it, refuse it, or recover it.
/// `plog_given`: a plog device goes with the cache.
pub fn decide_layout(
    layout: &LayoutScan,
    policy: FormatPolicy,
    plog_given: bool,
) -> Result<LayoutDecision, Refusal> {
    let sectors = layout.device_sectors;
    let formatted = matches!(
        layout.superblock.kind,
        SuperblockKind::Ours | SuperblockKind::Upstream
    );
    if layout.records.is_none() || !formatted {
        // Too small for the smallest geometry: nothing to read, nothing to format. A formatted
        // device too small for its own order is named by that order below (a truncated
        // order-10 image is not "too small for order 4").
        Geometry::new(format::MIN_ORDER, sectors).map_err(Refusal::TooSmall)?;
    }
    let interrupted = interrupted_format(layout);
    let kind = layout.superblock.kind;
    let format_now = match (kind, policy) {
        (_, FormatPolicy::Always) => true,
        (SuperblockKind::Blank, FormatPolicy::IfBlank) => true,
        (SuperblockKind::Blank, FormatPolicy::Never) => return Err(Refusal::Blank),
        (_, FormatPolicy::IfBlank) if interrupted => true,
        (_, FormatPolicy::Never) if interrupted => return Err(Refusal::InterruptedFormat),
        (SuperblockKind::Foreign | SuperblockKind::Missing, _) => return Err(Refusal::Foreign),
        (SuperblockKind::Ours | SuperblockKind::Upstream, _) => false,
    };
    if format_now {
        return Ok(LayoutDecision::Format);
    }
    let ext = layout.superblock.ext;
    let order = match ext {
        Some(ext) => {
            check_ext(&ext, sectors, plog_given)?;
            ext.order
        }
        None if plog_given => return Err(Refusal::PlogUnexpected),
        None => format::UPSTREAM_ORDER,
    };
    let geometry = Geometry::new(order, sectors).map_err(Refusal::Geometry)?;
    let records = layout
        .records
        .expect("a device of a valid geometry holds the record sectors");
    let generation = ext.map_or(0, |e| e.generation);
    let record = choose_record(&records, generation, ext.is_none())
        .ok_or(Refusal::NoValidRecord { generation })?;
    if record.value > MAX_PLAUSIBLE_RECORD {
        return Err(Refusal::ImplausibleRecord(record.value));
    }
    Ok(LayoutDecision::Recover(RecoverLayout {
        geometry,
        ext,
        record,
    }))
}

/// Our superblock extension against the device and the devices given.
fn check_ext(ext: &SuperblockExt, sectors: u64, plog_given: bool) -> Result<(), Refusal> {
    if ext.format_version != FORMAT_VERSION {
        return Err(Refusal::UnsupportedVersion(ext.format_version));
    }
    if ext.cache_sectors != sectors {
        return Err(Refusal::CacheResized {
            formatted: ext.cache_sectors,
            actual: sectors,
        });
    }
    match (ext.cache_type, plog_given) {
        (0, false) | (1, true) => Ok(()),
        (0, true) => Err(Refusal::PlogUnexpected),
        (1, false) => Err(Refusal::PlogMissing),
        (t, _) => Err(Refusal::UnsupportedType(t)),
    }
}

/// Seed hazards of replay, switched back on for the crash tester (all false in production).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayQuirks {
    /// H1: a torn segment where the walk stops makes replay forget the whole log.
    pub torn_forgets_log: bool,
    /// H2: a valid segment of another id where the next id should be is applied.
    pub no_contiguity: bool,
    /// H3: nothing past the end is invalidated.
    pub no_stale_invalidation: bool,
    /// H6: segments at or below the record are applied as dirty.
    pub below_record: bool,
    /// dm-lc: checksums are not checked.
    pub no_checksum: bool,
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

/// A slot holding an id at or past the end of the walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PastEnd {
    pub slot: u64,
    pub id: u64,
    /// `Some(writer)` when the segment is intact and its id belongs to the slot.
    pub intact: Option<Writer>,
}

/// The cache-device part of recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalkPlan {
    /// The chosen record (the hint).
    pub record: u64,
    /// The last id provably written back: the record, or what the ring proves when the
    /// record lags. The walk starts after it; recovery makes it the durable record.
    pub written_back: u64,
    /// Ids applied, with their slots, in the order they are applied.
    pub applied: Vec<(u64, u64)>,
    pub stop: ReplayStop,
    /// The first id the walk did not apply; the next segment written takes it.
    pub first_missing: u64,
    /// Every slot holding an id at or past `first_missing`, in slot order.
    pub past_end: Vec<PastEnd>,
}

impl WalkPlan {
    /// The last id applied (`written_back` when none is).
    pub fn last_applied(&self) -> u64 {
        self.first_missing - 1
    }
}

/// The segments read in full, by slot, for the walk to consult.
pub struct Segments<'a> {
    by_slot: BTreeMap<u64, &'a SegmentScan>,
}

impl<'a> Segments<'a> {
    pub fn new(scans: &'a [SegmentScan]) -> Self {
        Segments {
            by_slot: scans.iter().map(|s| (s.slot, s)).collect(),
        }
    }

    pub fn get(&self, slot: u64) -> Option<&'a SegmentScan> {
        self.by_slot.get(&slot).copied()
    }

    /// The segment in `slot` if it is intact and carries `id`.
    fn intact(&self, slot: u64, id: u64, ignore_checksum: bool) -> Option<&'a SegmentScan> {
        self.get(slot)
            .filter(|s| s.id == id && s.intact(ignore_checksum))
    }
}

/// Which slots the walk may need in full, given the chosen record: every slot whose header
/// claims an id above it that belongs there (with quirk H6, a lap below it too; with H2, any).
pub fn wanted_for_walk(
    geo: &Geometry,
    record: u64,
    quirks: ReplayQuirks,
) -> impl Fn(u64, SlotHeader) -> bool + '_ {
    let floor = if quirks.no_contiguity {
        0
    } else if quirks.below_record {
        record.saturating_sub(geo.nr_segments)
    } else {
        record
    };
    move |slot, h: SlotHeader| h.id > floor && geo.slot_of(h.id) == slot
}

/// The lower bound on what is written back: the record, raised by the ring (see the module
/// docs, rule 3). Bounded: at most one lap of exact next-lap ids is skipped.
pub fn written_back_bound(
    geo: &Geometry,
    headers: &[SlotHeader],
    segs: &Segments<'_>,
    record: u64,
    ignore_checksum: bool,
) -> u64 {
    let nr = geo.nr_segments;
    let highest_intact = headers
        .iter()
        .enumerate()
        .filter(|&(slot, h)| {
            h.id != 0
                && geo.slot_of(h.id) == slot as u64
                && segs.intact(slot as u64, h.id, ignore_checksum).is_some()
        })
        .map(|(_, h)| h.id)
        .max()
        .unwrap_or(0);
    let mut bound = record.max(highest_intact.saturating_sub(nr));
    // A slot holding exactly the next lap's id proves its previous occupant written back, even
    // when that later write is torn (a power cut during it).
    for _ in 0..nr {
        let next = bound + 1;
        if headers[geo.slot_of(next) as usize].id == next + nr {
            bound = next;
        } else {
            break;
        }
    }
    bound
}

/// The walk: from the written-back bound, exact ids, intact segments, at most one lap.
pub fn plan_walk(
    geo: &Geometry,
    headers: &[SlotHeader],
    segments: &[SegmentScan],
    record: u64,
    quirks: ReplayQuirks,
) -> WalkPlan {
    let segs = Segments::new(segments);
    let nr = geo.nr_segments;
    let lc = quirks.no_checksum;
    let written_back = written_back_bound(geo, headers, &segs, record, lc);
    let mut applied = Vec::new();
    if quirks.below_record {
        // The seed replayed what the ring still held at or below the record, as dirty.
        for id in (record + 1).saturating_sub(nr).max(1)..=record {
            let slot = geo.slot_of(id);
            if segs.intact(slot, id, lc).is_some() {
                applied.push((id, slot));
            }
        }
    }
    let mut expected = written_back + 1;
    let mut stop = None;
    for _ in 0..nr {
        let slot = geo.slot_of(expected);
        let found = headers[slot as usize].id;
        if found != expected {
            if found != 0 && quirks.no_contiguity {
                // The seed applied whatever valid segment a slot held, in slot order.
                if segs
                    .get(slot)
                    .is_some_and(|s| s.id == found && s.intact(lc))
                {
                    applied.push((found, slot));
                    expected += 1;
                    continue;
                }
            }
            let reason = if found == 0 {
                StopReason::EmptySlot
            } else {
                StopReason::OtherId { found }
            };
            stop = Some(ReplayStop {
                id: expected,
                slot,
                reason,
            });
            break;
        }
        if segs.intact(slot, expected, lc).is_none() {
            stop = Some(ReplayStop {
                id: expected,
                slot,
                reason: StopReason::Torn,
            });
            if quirks.torn_forgets_log {
                // The seed's replay aborted at the torn slot and forgot the whole log.
                applied.clear();
                expected = written_back + 1;
            }
            break;
        }
        applied.push((expected, slot));
        expected += 1;
    }
    let stop = stop.unwrap_or(ReplayStop {
        id: expected,
        slot: geo.slot_of(expected),
        reason: StopReason::WholeRing,
    });
    let first_missing = expected;
    let past_end = headers
        .iter()
        .enumerate()
        .filter(|(_, h)| h.id >= first_missing)
        .map(|(slot, h)| {
            let slot = slot as u64;
            let intact = (geo.slot_of(h.id) == slot)
                .then(|| segs.intact(slot, h.id, lc).map(|s| s.writer))
                .flatten();
            PastEnd {
                slot,
                id: h.id,
                intact,
            }
        })
        .collect();
    WalkPlan {
        record,
        written_back,
        applied,
        stop,
        first_missing,
        past_end,
    }
}

/// Recovery refuses to drop an intact segment past the end of the walk that wbcache did not
/// write (`kept`: ids a type-1 plan keeps on the cache device): upstream dm-writeboost would
/// apply it, and nothing proves it written back or superseded. A wbcache segment past the end
/// was never covered by a completed flush (wbcache makes segments durable in id order before
/// it acknowledges one), so dropping it loses nothing acknowledged as durable.
pub fn discard_refusal(walk: &WalkPlan, kept: impl Fn(u64) -> bool) -> Option<Error> {
    let ids: Vec<u64> = walk
        .past_end
        .iter()
        .filter(|p| p.intact == Some(Writer::Other) && !kept(p.id))
        .map(|p| p.id)
        .collect();
    (!ids.is_empty()).then(|| Error::WouldDiscard {
        ids,
        stop: walk.stop.id,
        why: match walk.stop.reason {
            StopReason::EmptySlot => "its slot is empty".into(),
            StopReason::OtherId { found } => format!("its slot holds segment {found}"),
            StopReason::Torn => "it is torn".into(),
            StopReason::WholeRing => "the ring ends".into(),
        },
    })
}

/// Slots recovery zeroes: every slot past the end that the plan does not keep.
pub fn invalidations(walk: &WalkPlan, kept: impl Fn(u64) -> bool) -> Vec<u64> {
    walk.past_end
        .iter()
        .filter(|p| !kept(p.id))
        .map(|p| p.slot)
        .collect()
}

/// An older copy's dirty sectors that a newer copy of the same block does not carry: replay
/// writes them to the backing device before dropping the older copy, as upstream's does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayWriteback {
    pub slot: u64,
    pub pos: usize,
    pub block: u64,
    pub bits: u8,
    pub crc: Option<u32>,
}

/// What applying the walk's segments leaves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexPlan {
    /// Distinct backing blocks with a dirty copy.
    pub dirty_blocks: u64,
    /// The smallest backing device (sectors) every dirty sector of an applied segment fits.
    pub backing_sectors_needed: u64,
    pub replay_writebacks: Vec<ReplayWriteback>,
    /// The first dirty metablock with an unaligned sector, or past `backing_sectors`.
    pub out_of_range: Option<(u64, u64, u64)>,
}

/// The last sector a dirty metablock touches, plus one.
fn dirty_end(sector: u64, dirty: u8) -> u64 {
    sector.saturating_add(8 - dirty.leading_zeros() as u64)
}

/// Applies the walk's segments to a block map, in order, newest copy wins (rule 6).
pub fn plan_index(
    walk: &WalkPlan,
    segments: &[SegmentScan],
    backing_sectors: Option<u64>,
) -> IndexPlan {
    let segs = Segments::new(segments);
    let mut map: BTreeMap<u64, ReplayWriteback> = BTreeMap::new();
    let mut out = IndexPlan::default();
    for &(id, slot) in &walk.applied {
        let seg = segs.get(slot).expect("an applied segment was scanned");
        for (pos, m) in seg.metablocks.iter().enumerate() {
            let block = m.sector / SECTORS_PER_BLOCK;
            if m.dirty_bits == 0 {
                // Upstream's clean read-cache entry: the backing device has the block.
                map.remove(&block);
                continue;
            }
            let end = dirty_end(m.sector, m.dirty_bits);
            out.backing_sectors_needed = out.backing_sectors_needed.max(end);
            let beyond = backing_sectors.is_some_and(|b| end > b);
            if (m.sector % SECTORS_PER_BLOCK != 0 || beyond) && out.out_of_range.is_none() {
                out.out_of_range = Some((id, slot, m.sector));
            }
            let new = ReplayWriteback {
                slot,
                pos,
                block,
                bits: m.dirty_bits,
                crc: m.block_crc,
            };
            if let Some(old) = map.insert(block, new) {
                let lost = old.bits & !m.dirty_bits;
                if lost != 0 {
                    out.replay_writebacks
                        .push(ReplayWriteback { bits: lost, ..old });
                }
            }
        }
    }
    out.dirty_blocks = map.len() as u64;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Metablock;

    fn geo(nr: u64) -> Geometry {
        Geometry::new(4, format::SUPERBLOCK_SECTORS + nr * 16).unwrap()
    }

    fn seg(slot: u64, id: u64, ok: bool, writer: Writer) -> SegmentScan {
        SegmentScan {
            slot,
            id,
            length: 1,
            length_ok: true,
            checksum_ok: ok,
            changed: false,
            writer,
            metablocks: vec![Metablock {
                sector: id * 8,
                dirty_bits: 0xFF,
                block_crc: None,
            }],
            bad_block_crcs: 0,
        }
    }

    /// Headers and full scans of a ring holding `ids` (0 = empty); `torn` ids fail checksums.
    fn ring(ids: &[u64], torn: &[u64], writer: Writer) -> (Vec<SlotHeader>, Vec<SegmentScan>) {
        let headers = ids.iter().map(|&id| SlotHeader { id, length: 1 }).collect();
        let segs = ids
            .iter()
            .enumerate()
            .filter(|(_, &id)| id != 0)
            .map(|(s, &id)| seg(s as u64, id, !torn.contains(&id), writer))
            .collect();
        (headers, segs)
    }

    fn applied(w: &WalkPlan) -> Vec<u64> {
        w.applied.iter().map(|a| a.0).collect()
    }

    #[test]
    fn wrapped_log_with_a_stale_record_starts_at_the_oldest_segment() {
        // 4 slots, ids 5..=8, record 0: upstream never wrote it.
        let (h, s) = ring(&[5, 6, 7, 8], &[], Writer::Other);
        let w = plan_walk(&geo(4), &h, &s, 0, ReplayQuirks::default());
        assert_eq!(w.written_back, 4);
        assert_eq!(applied(&w), [5, 6, 7, 8]);
        assert_eq!(w.stop.reason, StopReason::WholeRing);
        assert!(w.past_end.is_empty());
    }

    #[test]
    fn a_torn_newest_segment_still_lets_the_ring_bound_the_log() {
        // Slot 0 held 5 and is being rewritten with 9 (torn); 6, 7, 8 are intact.
        let (h, s) = ring(&[9, 6, 7, 8], &[9], Writer::Other);
        let w = plan_walk(&geo(4), &h, &s, 0, ReplayQuirks::default());
        assert_eq!(
            w.written_back, 5,
            "slot 0 holding id 9 proves 5 written back"
        );
        assert_eq!(applied(&w), [6, 7, 8]);
        assert_eq!(w.stop.reason, StopReason::Torn);
        assert_eq!(invalidations(&w, |_| false), [0]);
        assert!(
            discard_refusal(&w, |_| false).is_none(),
            "a torn segment holds no data"
        );
    }

    #[test]
    fn the_record_wins_when_it_is_ahead_of_the_ring_bound() {
        let (h, s) = ring(&[5, 6, 7, 8], &[], Writer::Wbcache);
        let w = plan_walk(&geo(4), &h, &s, 6, ReplayQuirks::default());
        assert_eq!((w.written_back, applied(&w)), (6, vec![7, 8]));
    }

    #[test]
    fn past_a_hole_our_segments_are_dropped_and_upstream_ones_refused() {
        // First lap: 1, 2, hole at 3, 4 intact.
        for writer in [Writer::Wbcache, Writer::Other] {
            let (h, s) = ring(&[1, 2, 0, 4], &[], writer);
            let w = plan_walk(&geo(4), &h, &s, 0, ReplayQuirks::default());
            assert_eq!(applied(&w), [1, 2]);
            assert_eq!(w.stop.reason, StopReason::EmptySlot);
            assert_eq!(w.past_end.len(), 1);
            let refusal = discard_refusal(&w, |_| false);
            assert_eq!(refusal.is_some(), writer == Writer::Other, "{writer:?}");
            assert!(
                discard_refusal(&w, |id| id == 4).is_none(),
                "kept by a plog plan"
            );
        }
    }

    #[test]
    fn a_previous_lap_is_never_applied_after_newer_segments() {
        // Slot 2 still holds 3: the write of 7 was lost; 8 persisted.
        let (h, s) = ring(&[5, 6, 3, 8], &[], Writer::Wbcache);
        let w = plan_walk(&geo(4), &h, &s, 4, ReplayQuirks::default());
        assert_eq!(applied(&w), [5, 6]);
        assert_eq!(w.stop.reason, StopReason::OtherId { found: 3 });
        assert_eq!(
            invalidations(&w, |_| false),
            [3],
            "8 is past the end, 3 is not"
        );
    }

    #[test]
    fn records_pick_the_largest_trusted_copy() {
        let ours = |id, gen| {
            let b = format::encode_record_block(&RecordExt {
                last_writeback_id: id,
                flags: 0,
                generation: gen,
            });
            b[format::BLOCK_SIZE - format::SECTOR_SIZE..].to_vec()
        };
        let upstream = |id: u64| {
            let mut s = vec![0u8; format::SECTOR_SIZE];
            s[..8].copy_from_slice(&id.to_le_bytes());
            s
        };
        let p = |b: &[u8]| RecordSector::decode(RecordCopyName::Primary, 2047, b);
        let b = |b: &[u8]| RecordSector::decode(RecordCopyName::Backup, 2039, b);
        // The kernel overwrote our primary with a newer record; our backup is stale.
        let c = choose_record(&[p(&upstream(60)), b(&ours(5, 7))], 7, false).unwrap();
        assert_eq!((c.value, c.source), (60, RecordSource::UpstreamPrimary));
        // Our own copies: the larger wins (a torn update leaves the backup newer).
        let c = choose_record(&[p(&ours(4, 7)), b(&ours(5, 7))], 7, false).unwrap();
        assert_eq!((c.value, c.source), (5, RecordSource::Backup));
        // Another generation and garbage are not trusted.
        let mut junk = upstream(99);
        junk[100] = 1;
        assert_eq!(choose_record(&[p(&junk), b(&ours(5, 8))], 7, false), None);
        let c = choose_record(&[p(&junk), b(&junk)], 0, true).unwrap();
        assert_eq!((c.value, c.source), (0, RecordSource::None));
    }

    #[test]
    fn replay_writes_back_what_a_newer_copy_drops() {
        let mk = |slot, id, sector, dirty| SegmentScan {
            metablocks: vec![Metablock {
                sector,
                dirty_bits: dirty,
                block_crc: None,
            }],
            ..seg(slot, id, true, Writer::Other)
        };
        let segs = vec![
            mk(0, 1, 8, 0x0F),
            mk(1, 2, 8, 0xF0),
            mk(2, 3, 16, 0x01),
            mk(3, 4, 16, 0),
        ];
        let (h, _) = ring(&[1, 2, 3, 4], &[], Writer::Other);
        let w = plan_walk(&geo(4), &h, &segs, 0, ReplayQuirks::default());
        let ix = plan_index(&w, &segs, Some(1 << 20));
        assert_eq!(
            ix.replay_writebacks,
            [ReplayWriteback {
                slot: 0,
                pos: 0,
                block: 1,
                bits: 0x0F,
                crc: None
            }]
        );
        assert_eq!(ix.dirty_blocks, 1, "the clean entry drops block 2");
        assert_eq!(
            ix.backing_sectors_needed, 17,
            "sector 16 is dirty in block 2"
        );
        assert_eq!(
            plan_index(&w, &segs, Some(12)).out_of_range,
            Some((2, 1, 8))
        );
    }
}
