//! The text rendering of check and dump reports (`Display`).

use std::fmt;

use crate::format::plog::PlogSuperblock;
use crate::format::Geometry;
use crate::recovery::RecoveryReport;

use super::*;

/// `Display` of a check report lists at most this many slots; `to_json` lists them all.
const DISPLAY_MAX_SLOTS: usize = 512;

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

/// "from record R", and the ring's bound when it is higher.
fn from_record(record: u64, written_back: u64) -> String {
    if written_back > record {
        format!("from record {record} (the ring proves {written_back} written back)")
    } else {
        format!("from record {record}")
    }
}

fn fmt_plog_recovery(f: &mut fmt::Formatter<'_>, r: &RecoveryReport) -> fmt::Result {
    writeln!(
        f,
        "recovery with the plog (the engine's own, run on in-memory overlays):"
    )?;
    if r.segments_applied == 0 {
        writeln!(
            f,
            "  {}, applies nothing",
            from_record(r.record, r.written_back)
        )?;
    } else {
        writeln!(
            f,
            "  {}, applies ids {}..={} ({} segments, {} dirty blocks)",
            from_record(r.record, r.written_back),
            r.written_back + 1,
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
                let from = from_record(r.record, r.written_back);
                if r.segments_applied == 0 {
                    writeln!(f, "replay: {from}, applies nothing")?;
                } else {
                    writeln!(
                        f,
                        "replay: {from}, applies ids {}..={} ({} segments, {} dirty blocks, \
                         needs a backing device of at least {} sectors)",
                        r.written_back + 1,
                        r.last_applied,
                        r.segments_applied,
                        r.dirty_blocks,
                        r.backing_sectors_needed
                    )?;
                }
                if r.replay_writebacks > 0 {
                    writeln!(
                        f,
                        "  writes back {} older cached block(s) first",
                        r.replay_writebacks
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
