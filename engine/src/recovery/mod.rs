//! Opening a cache: format a blank device, or recover a formatted one by replaying its log.
//!
//! Recovery is three steps, each in its own module, so that `wbcache check` explains exactly
//! the plan that `open` carries out:
//! - [`scan`] reads the superblock region, the first sector of every slot and the whole
//!   segments the walk may need, into plain values;
//! - [`plan`] decides, by pure functions over those values: format, refuse or recover; the
//!   record; what the ring proves written back; the walk; what lies past its end; what
//!   applying leaves;
//! - `apply` (here) does it: builds the index, writes back what a newer copy dropped, makes a
//!   raised written-back bound durable, voids plog regions and stale slots, flushes.
//!
//! docs/DESIGN.md ("Replay") says why each step is safe.

mod formatting;
mod open;
pub mod plan;
pub(crate) mod plog;
pub mod scan;

use crate::cache::{Engine, SlotInfo};
use crate::format::{Geometry, Metablock, SECTORS_PER_BLOCK};
use crate::index::Mb;

pub use formatting::{format_device, format_device_with_plog};
pub use open::{DeviceSizes, Opening};
use plan::WalkPlan;
use scan::SegmentScan;

/// What `open` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub formatted: bool,
    pub upstream_image: bool,
    /// The record recovery started from (the largest trusted copy).
    pub record: u64,
    /// The last id provably written back: the record, or higher when the ring proves more
    /// (an upstream cache whose record lags its log). Recovery makes it the durable record.
    pub written_back: u64,
    /// Segments replayed (ids `written_back + 1 ..= last_applied`).
    pub segments_applied: u64,
    pub last_applied: u64,
    /// Why the walk stopped, if it stopped at a slot holding something.
    pub stop_reason: Option<String>,
    pub stale_invalidated: u64,
    /// Older copies' dirty sectors written to the backing device because a newer copy of the
    /// same block carried fewer (upstream images only).
    pub replay_writebacks: u64,
    pub dirty_blocks: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Type 1: segments rebuilt from plog entries, and the entries written again.
    pub plog_segments_rebuilt: u64,
    pub plog_entries_replayed: u64,
    /// Type 1: regions past the recovered end voided so a repeated recovery decides the same.
    pub plog_regions_voided: u64,
    /// Type 1: the plog epoch the cache runs in after recovery (0 in type 0).
    pub plog_epoch: u64,
}

impl Engine {
    /// Applies one intact segment's metablocks to the index: newest copy wins; a clean entry
    /// (upstream's read cache) drops an older copy, the backing device has the block.
    pub(crate) fn apply_segment(&mut self, id: u64, slot: u64, metablocks: &[Metablock]) {
        if crate::cache::quirk!(self, ReplayAssert) {
            assert!(id < 2, "replay-assert quirk: applying segment {id}");
        }
        self.slots[slot as usize] = SlotInfo {
            id,
            len: metablocks.len(),
            partial: metablocks
                .iter()
                .any(|m| crate::format::partly_dirty(m.dirty_bits)),
        };
        for (j, m) in metablocks.iter().enumerate() {
            let block = m.sector / SECTORS_PER_BLOCK;
            self.bypass.note_copy(block, id);
            if let Some(old) = self.index.lookup(block) {
                self.index.remove(old);
            }
            let idx = self.index.idx(slot, j);
            if self.index.get(idx).dirty != 0 {
                // The same slot applied twice (seed quirks) or the same block twice in one
                // segment: the later metablock wins.
                self.index.remove(idx);
            }
            if m.dirty_bits == 0 {
                continue;
            }
            self.index.insert(
                idx,
                Mb {
                    block,
                    crc: m.block_crc,
                    dirty: m.dirty_bits,
                },
            );
        }
    }
}

/// The walk's stop, in words, when it stopped at a slot holding something.
fn stop_reason(walk: &WalkPlan) -> Option<String> {
    let s = walk.stop;
    match s.reason {
        plan::StopReason::OtherId { found } => Some(format!(
            "slot {} holds id {found}, not the next id {}",
            s.slot, s.id
        )),
        plan::StopReason::Torn => Some(format!(
            "segment {} in slot {} fails its checksum or length (torn)",
            s.id, s.slot
        )),
        plan::StopReason::EmptySlot | plan::StopReason::WholeRing => None,
    }
}

/// The segments of a scan, by slot (for the type-1 plan's look at the cache device).
pub(crate) fn intact_on_cache<'a>(
    segments: &'a [SegmentScan],
    geo: &Geometry,
    id: u64,
    ignore_checksum: bool,
) -> Option<&'a SegmentScan> {
    let slot = geo.slot_of(id);
    segments
        .iter()
        .find(|s| s.slot == slot && s.id == id && s.intact(ignore_checksum))
}
