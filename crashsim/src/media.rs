//! The media model of one device (docs/DESIGN.md, Media assumptions): a durable image plus the writes that completed into
//! the volatile cache and are not durable yet. The live devices and the crash replayer both run
//! this same code, so a crash state is exactly what the run had at that moment.

use crate::image::Image;
use engine::format::SECTOR_SIZE;
use engine::DeviceRole;
use std::rc::Rc;

/// A write that completed but is not durable yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingWrite {
    /// Global sequence number of the write in the world's log.
    pub seq: u64,
    pub role: DeviceRole,
    /// Where the data landed (differs from the address asked for when misdirected).
    pub sector: u64,
    pub data: Rc<[u8]>,
    /// Per sector: false once a later durable (FUA) write covered it. A crash must not let this
    /// older version override the durable one.
    pub live: Vec<bool>,
    /// The device's atomic write unit, in sectors, when the write was issued.
    pub unit_sectors: u64,
}

impl PendingWrite {
    pub fn sectors(&self) -> u64 {
        (self.data.len() / SECTOR_SIZE) as u64
    }

    /// The atomic units of the write: `(first sector, sectors)`, split at multiples of the unit
    /// size (units are aligned to the device, not to the write).
    pub fn units(&self) -> Vec<(u64, u64)> {
        let end = self.sector + self.sectors();
        let mut out = Vec::new();
        let mut s = self.sector;
        while s < end {
            let unit_end = ((s / self.unit_sectors + 1) * self.unit_sectors).min(end);
            out.push((s, unit_end - s));
            s = unit_end;
        }
        out
    }

    pub fn unit_count(&self) -> usize {
        self.units().len()
    }

    /// Does the write cover any sector of `[sector, sector + sectors)` (live or not)?
    pub fn overlaps(&self, sector: u64, sectors: u64) -> bool {
        sector < self.sector + self.sectors() && self.sector < sector + sectors
    }

    /// The bytes this write puts into device sector `s`, if it covers it and is still live there.
    pub(crate) fn live_sector(&self, s: u64) -> Option<&[u8]> {
        let i = s.checked_sub(self.sector)? as usize;
        if i < self.live.len() && self.live[i] {
            Some(&self.data[i * SECTOR_SIZE..(i + 1) * SECTOR_SIZE])
        } else {
            None
        }
    }

    /// Copies the live sectors in `[first, first + count)` into `image`.
    pub(crate) fn apply_range(&self, image: &mut Image, first: u64, count: u64) {
        for s in first..first + count {
            if let Some(bytes) = self.live_sector(s) {
                image.sector_mut(s).copy_from_slice(bytes);
            }
        }
    }
}

/// Durable image and pending writes of one device.
#[derive(Clone, Debug)]
pub(crate) struct Media {
    pub durable: Image,
    pub pending: Vec<PendingWrite>,
}

impl Media {
    pub fn new(image: Image) -> Self {
        Media {
            durable: image,
            pending: Vec::new(),
        }
    }

    /// A write completed. Durable at once when `durable` (an honoured FUA), else pending.
    pub fn write(&mut self, w: PendingWrite, durable: bool) {
        if !durable {
            self.pending.push(w);
            return;
        }
        // Older pending versions of these sectors must never win over the durable one.
        let (start, sectors) = (w.sector, w.sectors());
        for p in self
            .pending
            .iter_mut()
            .filter(|p| p.overlaps(start, sectors))
        {
            for s in start.max(p.sector)..(start + sectors).min(p.sector + p.sectors()) {
                p.live[(s - p.sector) as usize] = false;
            }
        }
        self.durable.write(start as usize * SECTOR_SIZE, &w.data);
    }

    /// A device flush submitted at log sequence `covers_before`: the pending writes that had
    /// completed by then become durable, in completion order; later ones stay pending.
    pub fn flush_before(&mut self, covers_before: u64) {
        let (covered, later): (Vec<PendingWrite>, Vec<PendingWrite>) =
            std::mem::take(&mut self.pending)
                .into_iter()
                .partition(|p| p.seq < covers_before);
        for p in covered {
            p.apply_range(&mut self.durable, p.sector, p.sectors());
        }
        self.pending = later;
    }

    /// The sectors the pending writes completed before `covers_before` cover.
    pub fn pending_sectors_before(&self, covers_before: u64) -> Vec<u64> {
        let mut sectors: Vec<u64> = self
            .pending
            .iter()
            .filter(|p| p.seq < covers_before)
            .flat_map(|p| p.sector..p.sector + p.sectors())
            .collect();
        sectors.sort_unstable();
        sectors.dedup();
        sectors
    }

    pub fn flip_bit(&mut self, byte: u64, bit: u8) {
        self.durable.flip_bit(byte, bit);
    }

    /// Is sector `s` shadowed by a pending write (so reads do not see the durable bytes)?
    pub fn pending_covers(&self, s: u64) -> bool {
        self.pending.iter().any(|p| p.live_sector(s).is_some())
    }
}
