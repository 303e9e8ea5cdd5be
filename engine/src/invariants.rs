//! The engine's internal invariants, checked in full on demand (tests, the crash simulator).

use crate::cache::Engine;
use crate::device::BlockDevice;

impl<D: BlockDevice> Engine<D> {
    /// Checks every structural invariant; returns the first that is broken.
    pub fn check_invariants(&self) -> Result<(), String> {
        let ids = [
            ("durable_record", self.durable_record),
            ("last_writeback", self.last_writeback),
            ("last_durable", self.last_durable),
            ("last_flushed", self.last_flushed),
            ("last_sealed", self.last_sealed),
        ];
        for w in ids.windows(2) {
            if w[0].1 > w[1].1 {
                return Err(format!("{} {} > {} {}", w[0].0, w[0].1, w[1].0, w[1].1));
            }
        }
        let nr = self.geo.nr_segments;
        let newest = self.last_sealed + self.open_seg.is_some() as u64;
        if newest.saturating_sub(nr) > self.durable_record {
            return Err(format!(
                "segment {newest} occupies a slot whose previous segment is not recorded (record {})",
                self.durable_record
            ));
        }
        if let Some(open) = &self.open_seg {
            if open.id != self.last_sealed + 1 || open.len >= self.n {
                return Err(format!(
                    "open segment {} (len {}) out of place",
                    open.id, open.len
                ));
            }
        }
        for (i, seg) in self.sealed.iter().enumerate() {
            if seg.id != self.last_flushed + 1 + i as u64 {
                return Err(format!("sealed queue holds {} at position {i}", seg.id));
            }
        }
        if self.sealed.len() as u64 != self.last_sealed - self.last_flushed {
            return Err("sealed queue length disagrees with ids".into());
        }
        let bufs = self.free_bufs.len() + self.sealed.len() + self.open_seg.is_some() as usize;
        if bufs != self.pool_size {
            return Err(format!(
                "{bufs} RAM buffers accounted for, pool has {}",
                self.pool_size
            ));
        }
        if let Some(p) = &self.plog {
            let regions = p.geo().nr_regions as u64;
            if p.open_id > newest {
                return Err(format!(
                    "plog appends to segment {} past the newest {newest}",
                    p.open_id
                ));
            }
            if p.head > p.geo().region_sectors as u64 {
                return Err(format!("plog head {} past the region end", p.head));
            }
            let staged = (p.stage.len() / crate::format::SECTOR_SIZE) as u64;
            if p.stage.len() > crate::plog::PLOG_STAGE_BYTES
                || p.stage.len() % crate::format::SECTOR_SIZE != 0
                || p.stage_entries > p.entries
                || (staged > 0 && p.stage_at + staged != p.head)
                || (staged == 0) != (p.stage_entries == 0)
            {
                return Err(format!(
                    "plog stage of {} bytes ({} entries) at {} does not end at head {}",
                    p.stage.len(),
                    p.stage_entries,
                    p.stage_at,
                    p.head
                ));
            }
            if newest.saturating_sub(regions) > self.last_durable
                && !crate::cache::quirk!(self, H7PlogReuseBeforeDurable)
            {
                return Err(format!(
                    "segment {newest} took the plog region of segment {}, which is not durable (last durable {})",
                    newest - regions,
                    self.last_durable
                ));
            }
        }
        self.index.check()?;
        for slot in 0..nr {
            if self.index.live_in_slot(slot) == 0 {
                continue;
            }
            let id = self.slots[slot as usize].id;
            if id <= self.last_writeback || id > newest || self.geo.slot_of(id) != slot {
                return Err(format!(
                    "slot {slot} holds live blocks of segment {id} outside the dirty range"
                ));
            }
            for (idx, mb) in self.index.live_of_slot(slot) {
                if self.index.pos_of(idx) >= self.slots[slot as usize].len {
                    return Err(format!("live metablock {idx} beyond segment {id}'s length"));
                }
                if mb.block * crate::format::SECTORS_PER_BLOCK >= self.backing_sectors {
                    return Err(format!("live block {} beyond the backing device", mb.block));
                }
            }
        }
        Ok(())
    }
}
