//! Type 1 at run time: every accepted write piece is appended to the plog region of the
//! segment it went into, so a client FLUSH or FUA needs only the plog to be durable; no segment
//! is sealed for it. Segments still fill, seal and go to the cache device as in type 0.
//!
//! - Segment `id` logs into region `(id - 1) % nr_regions`, taken over only once segment
//!   `id - nr_regions` is durable on the cache device (R8, H7).
//! - A region that cannot take the next entry seals the open segment early.
//! - Entries are gathered in a bounded RAM stage (contiguous sectors of the open region) and
//!   written as one device write when durability is needed (a FLUSH or FUA), when the open
//!   region changes, when the next entry would overflow the stage, and at shutdown. Unflushed
//!   writes carry no durability promise, so losing the stage in a power cut is what a device
//!   with a volatile write cache may do anyway (docs/DESIGN.md, "Type 1").
//!
//! Recovery's side of the plog is in `recovery::plog`.

use crate::device::DeviceRole;
use crate::format::plog::{self as pf, EntryHeader, PlogGeometry, PlogSuperblock};
use crate::format::{BLOCK_SIZE, SECTORS_PER_BLOCK, SECTOR_SIZE};
use crate::io::IoData;

use super::writes::Blocked;
use super::{quirk, Engine, Purpose};

/// Bound of the plog write stage, in bytes. 128 KiB: the 16 full-block entries (16 × 4.5 KiB =
/// 72 KiB) a client writes between two FLUSHes at flush-every-16 go out as one write, and a
/// gathered write is long enough that an SSD's fixed per-request cost is a small part of it;
/// yet it stays within the request size devices take in one piece. What the stage holds is
/// acknowledged, not yet durable data the RAM buffers hold too, so its size costs no
/// durability. A region can be smaller (at low segment orders): the stage never crosses the
/// open region's end either.
pub(crate) const PLOG_STAGE_BYTES: usize = 128 * 1024;

// The largest entry (a header and a full block) fits the stage with room to gather more.
const _: () = assert!(PLOG_STAGE_BYTES >= 8 * (SECTOR_SIZE + BLOCK_SIZE));
const _: () = assert!(PLOG_STAGE_BYTES % SECTOR_SIZE == 0);

/// Where appending stands.
pub(crate) struct Plog {
    pub sb: PlogSuperblock,
    /// The segment whose region is being appended to (0: none yet in this epoch).
    pub open_id: u64,
    /// Sectors used in that region, the staged ones included.
    pub head: u64,
    /// Entries in that region.
    pub entries: u32,
    /// Entries of the region before it, when that one was filled in this epoch (else 0).
    pub prev_entries: u32,
    /// Entries appended to the open region but not yet handed to the device: whole entries,
    /// the contiguous sectors `[stage_at, head)` of the open region. At most
    /// [`PLOG_STAGE_BYTES`].
    pub stage: Vec<u8>,
    pub stage_at: u64,
    pub stage_entries: u32,
    /// Entries appended (staged or written) since open.
    pub entries_appended: u64,
}

impl Plog {
    /// A plog opened at superblock `sb`, nothing appended yet.
    pub fn new(sb: PlogSuperblock) -> Self {
        Plog {
            sb,
            open_id: 0,
            head: 0,
            entries: 0,
            prev_entries: 0,
            stage: Vec::with_capacity(PLOG_STAGE_BYTES),
            stage_at: 0,
            stage_entries: 0,
            entries_appended: 0,
        }
    }

    pub fn geo(&self) -> PlogGeometry {
        self.sb.geometry
    }

    /// Checks every staged entry right before it goes out: its header decodes, it is the next
    /// entry of the open region, its CRC verifies.
    fn check_stage(&self) {
        let geo = self.geo();
        let sectors = (self.stage.len() / SECTOR_SIZE) as u64;
        assert!(
            self.stage.len() <= PLOG_STAGE_BYTES,
            "the plog stage is bounded"
        );
        assert_eq!(self.stage.len() % SECTOR_SIZE, 0);
        assert_eq!(
            self.stage_at + sectors,
            self.head,
            "the stage ends at the region head"
        );
        assert!(
            self.head <= geo.region_sectors as u64,
            "the stage lies inside its region"
        );
        assert!(self.open_id > 0 && self.stage_entries <= self.entries);
        let first_seq = self.entries - self.stage_entries;
        let mut at = 0usize;
        for k in 0..self.stage_entries {
            let hdr = &self.stage[at..at + SECTOR_SIZE];
            let h = pf::decode_entry_header(hdr).expect("a staged entry header decodes");
            assert_eq!(
                h.segment_id, self.open_id,
                "staged entry of the open region"
            );
            assert_eq!(h.seq, first_seq + k, "staged entries are consecutive");
            assert_eq!((h.generation, h.epoch), (self.sb.generation, self.sb.epoch));
            let end = at + h.footprint() as usize * SECTOR_SIZE;
            assert!(end <= self.stage.len(), "a staged entry is whole");
            assert!(
                pf::entry_crc_ok(hdr, &self.stage[at + SECTOR_SIZE..end]),
                "a staged entry's CRC verifies"
            );
            at = end;
        }
        assert_eq!(at, self.stage.len(), "the stage holds whole entries only");
    }
}

impl Engine {
    /// Hands the staged entries to the device as one write (not flushed) and empties the stage.
    pub(crate) fn plog_write_stage(&mut self) {
        let Some(p) = self.plog.as_mut() else { return };
        if p.stage.is_empty() {
            return;
        }
        p.check_stage();
        let geo = p.geo();
        let sector = geo.region_sector(geo.region_of(p.open_id)) + p.stage_at;
        let stage = std::mem::replace(&mut p.stage, Vec::with_capacity(PLOG_STAGE_BYTES));
        p.stage_entries = 0;
        self.issue_write(
            DeviceRole::Plog,
            sector,
            IoData::from_vec(stage),
            false,
            Purpose::PlogWrite,
        );
    }

    /// Before a write piece of `sectors` sectors: a region that cannot take its entry seals the
    /// open segment, so the piece goes to a new segment with a fresh region.
    pub(crate) fn plog_make_room(&mut self, sectors: usize) {
        let Some(p) = &self.plog else { return };
        let Some(open) = &self.segs.open else { return };
        if p.open_id == open.id && p.head + 1 + sectors as u64 > p.geo().region_sectors as u64 {
            crate::probe!(PlogRegionSealed);
            self.seal_open();
        }
    }

    /// Before segment `id` opens: its region last held segment `id - nr_regions`, which must be
    /// durable on the cache device before its entries are overwritten (R8, H7).
    pub(crate) fn plog_take_region(&mut self, id: u64) -> Result<(), Blocked> {
        self.writes.region_need = None;
        let Some(p) = &self.plog else { return Ok(()) };
        let need = id.saturating_sub(p.geo().nr_regions as u64);
        if need == 0 {
            return Ok(());
        }
        if quirk!(self, H7PlogReuseBeforeDurable) {
            // The seed waited only until that segment was written, not until it was durable.
            if self.segs.last_written >= need {
                return Ok(());
            }
            self.issue_segment_writes_upto(need);
            return Err(Blocked::Region);
        }
        if self.segs.last_durable >= need {
            return Ok(());
        }
        // Everything sealed, with one flush: when the daemons lag, waiting for just the one
        // segment would cost a cache flush per new segment in the client path.
        self.writes.region_need = Some(self.segs.last_sealed);
        Err(Blocked::Region)
    }

    /// Appends the entry of one write piece that went into segment `id`: into the stage, which
    /// is written first if the region changes or the entry would overflow it.
    pub(crate) fn plog_append(&mut self, id: u64, block: u64, first: usize, data: &[u8]) {
        let Some(p) = self.plog.as_mut() else { return };
        if p.open_id != id {
            assert!(id > p.open_id, "plog regions are taken in id order");
            // The open region changes: its staged entries go out first.
            self.plog_write_stage();
            let p = self.plog.as_mut().expect("type 1");
            // Recovery may go on past this region only if it finds all of the previous one.
            p.prev_entries = if p.open_id != 0 && p.open_id + 1 == id {
                p.entries
            } else {
                0
            };
            p.open_id = id;
            p.head = 0;
            p.entries = 0;
        }
        let p = self.plog.as_mut().expect("type 1");
        let h = EntryHeader {
            generation: p.sb.generation,
            epoch: p.sb.epoch,
            segment_id: id,
            seq: p.entries,
            prev_entries: p.prev_entries,
            sector: block * SECTORS_PER_BLOCK + first as u64,
            len: (data.len() / SECTOR_SIZE) as u8,
        };
        let footprint = h.footprint();
        assert!(
            p.head + footprint <= p.geo().region_sectors as u64,
            "plog_make_room leaves room for the entry"
        );
        let bytes = footprint as usize * SECTOR_SIZE;
        if p.stage.len() + bytes > PLOG_STAGE_BYTES {
            self.plog_write_stage();
        }
        let p = self.plog.as_mut().expect("type 1");
        if p.stage.is_empty() {
            p.stage_at = p.head;
        }
        p.stage.extend_from_slice(&pf::encode_entry(&h, data));
        p.stage.extend_from_slice(data);
        assert!(
            p.stage.len() <= PLOG_STAGE_BYTES,
            "the plog stage is bounded"
        );
        p.head += footprint;
        if p.head == p.geo().region_sectors as u64 {
            crate::probe!(PlogRegionExact);
        }
        p.entries += 1;
        p.stage_entries += 1;
        p.entries_appended += 1;
    }
}
