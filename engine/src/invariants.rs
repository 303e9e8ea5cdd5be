//! The engine's internal invariants, checked in full on demand (tests, the crash simulator).

use crate::cache::{quirk, Engine};

impl Engine {
    /// Checks every structural invariant; returns the first that is broken.
    pub fn check_invariants(&self) -> Result<(), String> {
        let s = &self.segs;
        let ids = [
            ("durable_record", self.durable_record),
            ("last_writeback", self.last_writeback),
            ("last_durable", s.last_durable),
            ("last_written", s.last_written),
            ("last_sealed", s.last_sealed),
        ];
        for w in ids.windows(2) {
            if w[0].1 > w[1].1 {
                return Err(format!("{} {} > {} {}", w[0].0, w[0].1, w[1].0, w[1].1));
            }
        }
        let nr = self.geo.nr_segments;
        let newest = s.last_sealed + s.open.is_some() as u64;
        if newest.saturating_sub(nr) > self.durable_record {
            return Err(format!(
                "segment {newest} occupies a slot whose previous segment is not recorded (record {})",
                self.durable_record
            ));
        }
        if let Some(open) = &s.open {
            if open.id != s.last_sealed + 1 || open.len >= self.n {
                return Err(format!(
                    "open segment {} (len {}) out of place",
                    open.id, open.len
                ));
            }
        }
        for (i, seg) in s.sealed.iter().enumerate() {
            if seg.id != s.last_durable + 1 + i as u64 {
                return Err(format!("sealed queue holds {} at position {i}", seg.id));
            }
        }
        if s.sealed.len() as u64 != s.last_sealed - s.last_durable {
            return Err("sealed queue length disagrees with ids".into());
        }
        let (accounted, allocated) = s.buffers_accounted();
        if accounted != allocated || allocated > s.pool {
            return Err(format!(
                "{accounted} RAM buffers accounted for, {allocated} allocated, pool {}",
                s.pool
            ));
        }
        self.check_plog_invariants(newest)?;
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

    fn check_plog_invariants(&self, newest: u64) -> Result<(), String> {
        let Some(p) = &self.plog else { return Ok(()) };
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
        if p.stage.len() > crate::cache::PLOG_STAGE_BYTES
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
        if newest.saturating_sub(regions) > self.segs.last_durable
            && !quirk!(self, H7PlogReuseBeforeDurable)
        {
            return Err(format!(
                "segment {newest} took the plog region of segment {}, which is not durable (last durable {})",
                newest - regions,
                self.segs.last_durable
            ));
        }
        Ok(())
    }
}
