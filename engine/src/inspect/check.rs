//! `check`: recovery's scan and plan, explained. The only decisions here are what to show; what
//! recovery would do comes from `recovery::plan`, the functions `Engine::open` uses.

use crate::cache::FormatPolicy;
use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::format::{self, Geometry, SECTORS_PER_BLOCK};
use crate::recovery::plan::{
    self, LayoutDecision, RecoverLayout, Refusal, ReplayQuirks, StopReason, WalkPlan,
    MAX_PLAUSIBLE_RECORD,
};
use crate::recovery::scan::{self, LayoutScan, RecordSector, SegmentScan, SlotHeader, Writer};

use super::plog::{read_plog_info, recover_on_overlays, PlogReport};
use super::report::*;
use super::{number_list, RecordCopy, RecordInfo, SuperblockInfo, SuperblockKind};

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

/// The superblock region as `check` and `dump` show it, with `open`'s decision on it.
pub(super) struct LayoutView {
    pub superblock: SuperblockInfo,
    pub records: Option<RecordInfo>,
    /// The geometry the slots are read with: the one `open` would use, or, where `open`
    /// refuses an image of ours or upstream's, the one it was formatted with (forensics).
    pub geometry: Option<Geometry>,
    /// `open` (not allowed to format) would recover the device.
    pub recover: Option<RecoverLayout>,
    pub problems: Vec<Problem>,
    pub notes: Vec<Note>,
}

fn record_copy(c: &RecordSector, generation: u64) -> RecordCopy {
    RecordCopy {
        name: c.name,
        sector: c.sector,
        raw_id: c.raw_id,
        ext: c.ext,
        valid: plan::trusted_value(c, generation).is_some(),
    }
}

fn record_info(layout: &LayoutScan) -> Option<RecordInfo> {
    let rs = layout.records?;
    let sb = layout.superblock;
    let generation = sb.ext.map_or(0, |e| e.generation);
    let choice = match sb.kind {
        SuperblockKind::Ours | SuperblockKind::Upstream => {
            plan::choose_record(&rs, generation, sb.kind == SuperblockKind::Upstream)
        }
        _ => None,
    };
    Some(RecordInfo {
        primary: record_copy(&rs[0], generation),
        backup: record_copy(&rs[1], generation),
        interrupted_format: plan::interrupted_format(layout),
        record: choice.map(|c| c.value),
        source: choice.map(|c| c.source),
    })
}

/// What each refusal is called in a report, and its words.
fn refusal_problem(r: &Refusal, layout: &LayoutScan) -> Problem {
    let kind = match r {
        Refusal::TooSmall(_) => ProblemKind::TooSmall,
        Refusal::Blank => ProblemKind::Blank,
        Refusal::InterruptedFormat => ProblemKind::InterruptedFormat,
        Refusal::Foreign => ProblemKind::Foreign,
        Refusal::UnsupportedVersion(_) => ProblemKind::UnsupportedVersion,
        Refusal::CacheResized { .. } => ProblemKind::CacheResized,
        Refusal::PlogUnexpected => ProblemKind::PlogUnexpected,
        Refusal::PlogMissing => ProblemKind::PlogMissing,
        Refusal::UnsupportedType(_) => ProblemKind::UnsupportedType,
        Refusal::Geometry(_) => ProblemKind::Geometry,
        Refusal::NoValidRecord { .. } => ProblemKind::NoValidRecord,
        Refusal::ImplausibleRecord(_) => ProblemKind::ImplausibleRecord,
    };
    let detail = match r {
        Refusal::Blank => "sector 0 is all zero: the device is not formatted".to_string(),
        Refusal::InterruptedFormat => "a record copy carries the formatting flag: a format was \
             cut short; opening formats the device again (it holds no data)"
            .to_string(),
        Refusal::Foreign => format!(
            "sector 0 starts with 0x{:08x}, not the superblock magic 0x{:08x}",
            layout.superblock.magic,
            format::SUPERBLOCK_MAGIC
        ),
        Refusal::PlogUnexpected if layout.superblock.ext.is_none() => "a plog device was given \
             but the cache device is an upstream dm-writeboost image (type 0)"
            .to_string(),
        Refusal::ImplausibleRecord(v) => {
            format!("superblock record {v} is not a plausible segment id")
        }
        other => Error::from(other.clone()).to_string(),
    };
    problem(kind, detail)
}

/// The geometry to show slots with where `open` refuses: an image of ours (of this format
/// version) at its formatted order, an upstream image at order 10.
fn forensic_geometry(layout: &LayoutScan, refusal: &Refusal) -> Option<Geometry> {
    if matches!(
        refusal,
        Refusal::TooSmall(_) | Refusal::Blank | Refusal::Foreign | Refusal::UnsupportedVersion(_)
    ) {
        return None;
    }
    let sectors = layout.device_sectors;
    match (layout.superblock.kind, layout.superblock.ext) {
        (SuperblockKind::Ours, Some(ext)) if ext.format_version == format::FORMAT_VERSION => {
            // Slots are laid out from sector 2048 whatever the size; read only those that
            // existed when the device was formatted.
            Geometry::new(ext.order, ext.cache_sectors.min(sectors)).ok()
        }
        (SuperblockKind::Upstream, _) => Geometry::new(format::UPSTREAM_ORDER, sectors).ok(),
        _ => None,
    }
}

/// Reads the superblock region and says what `open` (never formatting) makes of it.
pub(super) fn read_layout_view<D: BlockDevice + ?Sized>(
    cache: &mut D,
    plog_given: bool,
) -> Result<LayoutView> {
    let layout = scan::read_layout(cache)?;
    let mut view = LayoutView {
        superblock: layout.superblock,
        records: record_info(&layout),
        geometry: None,
        recover: None,
        problems: Vec::new(),
        notes: Vec::new(),
    };
    match plan::decide_layout(&layout, FormatPolicy::Never, plog_given) {
        Ok(LayoutDecision::Recover(r)) => {
            view.geometry = Some(r.geometry);
            view.recover = Some(r);
        }
        Ok(LayoutDecision::Format) => unreachable!("FormatPolicy::Never never formats"),
        Err(refusal) => {
            view.problems.push(refusal_problem(&refusal, &layout));
            view.geometry = forensic_geometry(&layout, &refusal);
        }
    }
    if let (Some(r), Some(_)) = (view.records, view.geometry) {
        record_notes(&r, &view.superblock, &mut view.notes);
    }
    Ok(view)
}

fn record_notes(r: &RecordInfo, sb: &SuperblockInfo, notes: &mut Vec<Note>) {
    for copy in [r.primary, r.backup] {
        if sb.kind == SuperblockKind::Ours && !copy.valid {
            notes.push(note(
                NoteKind::RecordCopyInvalid,
                format!(
                    "the {} record copy (sector {}) is not valid for generation {:#x}",
                    copy.name.as_str(),
                    copy.sector,
                    sb.ext.map_or(0, |e| e.generation)
                ),
            ));
        }
    }
    let value = |c: &RecordCopy| c.ext.map_or(c.raw_id, |e| e.last_writeback_id);
    if r.primary.valid && r.backup.valid && value(&r.primary) != value(&r.backup) {
        notes.push(note(
            NoteKind::RecordCopiesDiffer,
            format!(
                "record copies differ (primary {}, backup {}); the larger is used",
                value(&r.primary),
                value(&r.backup)
            ),
        ));
    }
}

/// A slot as the report shows it; its class comes from the walk.
fn slot_report(s: &SegmentScan, geo: &Geometry, walk: &WalkPlan) -> SlotReport {
    let dirty = s.metablocks.iter().filter(|m| m.dirty_bits != 0);
    let class = if geo.slot_of(s.id) != s.slot {
        SlotClass::Misplaced
    } else if !s.intact(false) {
        SlotClass::Torn
    } else if s.id <= walk.written_back {
        SlotClass::Stale
    } else if walk.applied.iter().any(|&(id, _)| id == s.id) {
        SlotClass::Valid
    } else {
        SlotClass::Unreachable
    };
    SlotReport {
        slot: s.slot,
        id: s.id,
        length: s.length,
        class,
        length_ok: s.length_ok,
        checksum_ok: s.checksum_ok,
        dirty_metablocks: dirty.clone().count() as u32,
        bad_block_crcs: s.bad_block_crcs,
        unaligned_metablocks: dirty.filter(|m| m.sector % SECTORS_PER_BLOCK != 0).count() as u32,
    }
}

/// The slot classes, walk and plan of one cache device, as problems, notes and a replay plan.
struct SlotVerdicts {
    slots: Vec<SlotReport>,
    counts: SlotCounts,
    replay: ReplayPlan,
    problems: Vec<Problem>,
    notes: Vec<Note>,
}

fn judge_slots(
    geo: &Geometry,
    headers: &[SlotHeader],
    segments: &[SegmentScan],
    record: u64,
    backing_sectors: Option<u64>,
) -> SlotVerdicts {
    // The plan sees exactly what recovery's scan reads.
    let wanted = plan::wanted_for_walk(geo, record, ReplayQuirks::default());
    let walk_segs: Vec<SegmentScan> = segments
        .iter()
        .filter(|s| wanted(s.slot, headers[s.slot as usize]))
        .cloned()
        .collect();
    let walk = plan::plan_walk(geo, headers, &walk_segs, record, ReplayQuirks::default());
    let ix = plan::plan_index(&walk, &walk_segs, backing_sectors);
    let mut out = SlotVerdicts {
        slots: segments
            .iter()
            .map(|s| slot_report(s, geo, &walk))
            .collect(),
        counts: SlotCounts::default(),
        replay: ReplayPlan {
            record,
            written_back: walk.written_back,
            segments_applied: walk.last_applied() - walk.written_back,
            last_applied: walk.last_applied(),
            dirty_blocks: ix.dirty_blocks,
            stop: walk.stop,
            invalidated_slots: plan::invalidations(&walk, |_| false).len() as u64,
            backing_sectors_needed: ix.backing_sectors_needed,
            replay_writebacks: ix.replay_writebacks.len() as u64,
        },
        problems: Vec::new(),
        notes: Vec::new(),
    };
    for s in &out.slots {
        out.counts.add(s.class);
    }
    out.counts.empty = geo.nr_segments - out.slots.len() as u64;
    slot_problems(&mut out, backing_sectors);
    if let Some(e) = plan::discard_refusal(&walk, |_| false) {
        out.problems
            .push(problem(ProblemKind::WouldDiscard, e.to_string()));
    }
    walk_notes(&mut out, &walk);
    out
}

fn slot_problems(out: &mut SlotVerdicts, backing_sectors: Option<u64>) {
    for s in out.slots.iter().filter(|s| s.class == SlotClass::Valid) {
        if s.unaligned_metablocks > 0 {
            out.problems.push(problem(
                ProblemKind::UnalignedMetablock,
                format!(
                    "segment {} in slot {} has {} dirty metablock(s) with a backing sector that \
                     is not 4 KiB aligned; recovery refuses it",
                    s.id, s.slot, s.unaligned_metablocks
                ),
            ));
        }
        if s.bad_block_crcs > 0 {
            out.problems.push(problem(
                ProblemKind::BlockCrcMismatch,
                format!(
                    "segment {} in slot {} passes its checksum but {} block(s) fail their own \
                     CRC; reading them would kill the cache",
                    s.id, s.slot, s.bad_block_crcs
                ),
            ));
        }
    }
    let needed = out.replay.backing_sectors_needed;
    if let Some(b) = backing_sectors.filter(|&b| needed > b) {
        out.problems.push(problem(
            ProblemKind::BackingTooSmall,
            format!(
                "replay maps backing sectors up to {needed}, past the end of the {b}-sector \
                 backing device (wrong backing device?)"
            ),
        ));
    }
}

fn walk_notes(out: &mut SlotVerdicts, walk: &WalkPlan) {
    let stop = walk.stop;
    if walk.written_back > walk.record {
        out.notes.push(note(
            NoteKind::RecordLags,
            format!(
                "the record says {} but the ring proves segments up to {} written back (a \
                 writer reuses a slot only after its previous segment is written back; \
                 dm-writeboost writes its record only when asked); replay starts after {} and \
                 records it",
                walk.record, walk.written_back, walk.written_back
            ),
        ));
    }
    if stop.reason == StopReason::Torn {
        out.notes.push(note(
            NoteKind::TornAtEnd,
            format!(
                "segment {} in slot {} is torn (length or checksum): replay stops there; normal \
                 after a power cut during its write",
                stop.id, stop.slot
            ),
        ));
    }
    let torn: Vec<u64> = out
        .slots
        .iter()
        .filter(|s| s.class == SlotClass::Torn)
        .filter(|s| s.slot != stop.slot || stop.reason != StopReason::Torn)
        .map(|s| s.id)
        .collect();
    if !torn.is_empty() {
        out.notes.push(note(
            NoteKind::TornSlots,
            format!(
                "{} torn slot(s) outside the replayed log (ids {}); replay ignores them",
                torn.len(),
                number_list(&torn)
            ),
        ));
    }
    let ours_past_end: Vec<u64> = walk
        .past_end
        .iter()
        .filter(|p| p.intact == Some(Writer::Wbcache))
        .map(|p| p.id)
        .collect();
    if !ours_past_end.is_empty() {
        out.notes.push(note(
            NoteKind::UnreachableSegments,
            format!(
                "{} intact segment(s) after the end of the log (ids {}) are discarded by replay: \
                 wbcache wrote them and never acknowledged a flush covering them (it makes \
                 segments durable in id order first); normal when a power cut kept a later \
                 segment write and lost an earlier one",
                ours_past_end.len(),
                number_list(&ours_past_end)
            ),
        ));
    }
    let misplaced: Vec<u64> = out
        .slots
        .iter()
        .filter(|s| s.class == SlotClass::Misplaced)
        .map(|s| s.slot)
        .collect();
    if !misplaced.is_empty() {
        out.notes.push(note(
            NoteKind::MisplacedSlots,
            format!(
                "{} slot(s) hold an id that does not belong there (slots {})",
                misplaced.len(),
                number_list(&misplaced)
            ),
        ));
    }
    if out.replay.replay_writebacks > 0 {
        out.notes.push(note(
            NoteKind::ReplayWritebacks,
            format!(
                "replay writes back {} older cached block(s) whose dirty sectors a newer copy \
                 does not carry, as dm-writeboost's replay does",
                out.replay.replay_writebacks
            ),
        ));
    }
}

pub(super) fn check_inner<D: BlockDevice>(
    cache: &mut D,
    plog: Option<&mut D>,
    backing_sectors: Option<u64>,
) -> Result<CheckReport> {
    let device_sectors = cache.size_sectors();
    let view = read_layout_view(cache, plog.is_some())?;
    let (mut problems, mut notes) = (view.problems, view.notes);
    let mut report = CheckReport {
        device_sectors,
        superblock: view.superblock,
        records: view.records,
        geometry: view.geometry,
        slot_counts: SlotCounts::default(),
        slots: Vec::new(),
        replay: None,
        problems: Vec::new(),
        notes: Vec::new(),
        sound: false,
        plog: None,
    };
    let backing_ok = backing_sectors.is_none_or(|b| b != 0);
    if let Some(b) = backing_sectors.filter(|_| !backing_ok) {
        problems.push(problem(
            ProblemKind::BackingSize,
            Error::BackingSize { sectors: b }.to_string(),
        ));
    }
    if let Some(geo) = view.geometry {
        let headers = scan::read_headers(cache, &geo)?;
        let segments = scan::read_segments(cache, &geo, &headers, |_, h| h.id != 0)?;
        // A record recovery refuses still classifies slots (as if it were 0), for forensics.
        let record = view
            .records
            .and_then(|r| r.record)
            .filter(|&r| r <= MAX_PLAUSIBLE_RECORD)
            .unwrap_or(0);
        let v = judge_slots(&geo, &headers, &segments, record, backing_sectors);
        problems.extend(v.problems);
        notes.extend(v.notes);
        report.slots = v.slots;
        report.slot_counts = v.counts;
        if view.recover.is_some() {
            report.replay = Some(v.replay);
        }
    }
    if let Some(plog) = plog {
        let recovers = view.recover.is_some();
        report.plog = Some(plog_part(
            cache,
            plog,
            &report,
            recovers && backing_ok,
            backing_sectors,
            &mut problems,
            &mut notes,
        )?);
    }
    report.sound = problems.is_empty();
    report.problems = problems;
    report.notes = notes;
    Ok(report)
}

/// The plog's superblocks and regions, and what the whole recovery would do (run on overlays,
/// only where `open` would get that far).
fn plog_part<D: BlockDevice>(
    cache: &mut D,
    plog: &mut D,
    report: &CheckReport,
    recovers: bool,
    backing_sectors: Option<u64>,
    problems: &mut Vec<Problem>,
    notes: &mut Vec<Note>,
) -> Result<PlogReport> {
    let info = read_plog_info(
        plog,
        report.superblock.ext,
        report.geometry,
        backing_sectors,
    )?;
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
    let recovery = if recovers && info.superblock.is_some() {
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
    Ok(PlogReport { info, recovery })
}
