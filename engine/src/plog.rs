//! Type 1: the persistent log (plog). Every accepted write piece is appended to the plog region
//! of the segment it went into, so a client FLUSH or FUA needs only the plog to be durable; no
//! segment is sealed for it. Segments still fill, seal and go to the cache device as in type 0.
//!
//! The rules (docs/DESIGN.md, "Type 1"):
//! - segment `id` logs into region `(id - 1) % nr_regions`, and that region is taken over only
//!   once segment `id - nr_regions` is durable on the cache device (H7);
//! - a region that cannot take the next entry seals the open segment early;
//! - recovery walks the cache log first and continues into the plog where the cache log ends,
//!   taking a valid cache segment over its region whenever there is one (H8), accepting a run
//!   of entries only when every entry before it is there (torn anywhere), and moving to a new
//!   epoch only after the recovered segments are durable, which voids every older entry (H4);
//! - entries are gathered in a bounded RAM stage (contiguous sectors of the open region) and
//!   written as one device write when durability is needed (client FLUSH or FUA), when the open
//!   region changes, when the next entry would overflow the stage, and at shutdown. Unflushed
//!   writes carry no durability promise (the contract, docs/DESIGN.md), so losing the stage in a power cut is what a
//!   device with a volatile write cache may do anyway: every crash image of the staged plog is
//!   one the unstaged plog could also have left (its writes could be lost or torn in any subset).

use crate::cache::{quirk, Engine};
use crate::device::{BlockDevice, DeviceRole, IoError};
use crate::error::{Error, Result};
use crate::format::plog::{
    self as pf, EntryHeader, PlogGeometry, PlogSuperblock, PLOG_BACKUP_SB_SECTOR, PLOG_SB_SECTOR,
    PLOG_VERSION,
};
use crate::format::{BLOCK_SIZE, SECTORS_PER_BLOCK, SECTOR_SIZE};
use crate::recovery::RecoveryReport;

/// Bound of the plog write stage, in bytes. 128 KiB: the 16 full-block entries (16 × 4.5 KiB =
/// 72 KiB) a client writes between two FLUSHes at flush-every-16 go out as one write, and a
/// gathered write is long enough that an SSD's fixed per-request cost (about 20 µs, 20 KB of
/// transfer at 1 GB/s) is a small part of it; yet it stays within the request size devices take
/// in one piece (Linux `max_sectors_kb` is 128 KiB or more almost everywhere). What the stage
/// holds is acknowledged, not yet durable data the RAM buffers hold too, so its size costs no
/// durability. A region can be smaller (at low segment orders): the stage never crosses the open
/// region's end either.
pub(crate) const PLOG_STAGE_BYTES: usize = 128 * 1024;

// The largest entry (a header and a full block) fits the stage with room to gather more.
const _: () = assert!(PLOG_STAGE_BYTES >= 8 * (SECTOR_SIZE + BLOCK_SIZE));
const _: () = assert!(PLOG_STAGE_BYTES % SECTOR_SIZE == 0);

/// The plog device and where appending stands.
pub(crate) struct Plog<D: BlockDevice> {
    pub dev: D,
    pub sb: PlogSuperblock,
    /// The segment whose region is being appended to (0: none yet in this epoch).
    pub open_id: u64,
    /// Sectors used in that region, the staged ones included.
    pub head: u64,
    /// Entries in that region.
    pub entries: u32,
    /// Entries of the region before it, when that one was filled in this epoch (else 0).
    pub prev_entries: u32,
    /// Entries appended to the open region but not yet written to the device: whole entries,
    /// the contiguous sectors `[stage_at, head)` of the open region. At most
    /// [`PLOG_STAGE_BYTES`]; allocated once.
    pub stage: Vec<u8>,
    /// Region offset (sectors) of the first staged sector; meaningful while `stage` is not empty.
    pub stage_at: u64,
    /// Entries in the stage (the last `stage_entries` of the open region's `entries`).
    pub stage_entries: u32,
    /// Entries were written to the device since the last plog flush.
    pub unflushed: bool,
    /// Entries appended (staged or written) since open.
    pub entries_appended: u64,
    pub flushes: u64,
}

impl<D: BlockDevice> Plog<D> {
    /// A plog opened at superblock `sb`, nothing appended yet.
    pub fn new(dev: D, sb: PlogSuperblock) -> Self {
        Plog {
            dev,
            sb,
            open_id: 0,
            head: 0,
            entries: 0,
            prev_entries: 0,
            stage: Vec::with_capacity(PLOG_STAGE_BYTES),
            stage_at: 0,
            stage_entries: 0,
            unflushed: false,
            entries_appended: 0,
            flushes: 0,
        }
    }

    pub fn geo(&self) -> PlogGeometry {
        self.sb.geometry
    }

    /// Writes the staged entries as one device write (not flushed) and empties the stage. Each
    /// staged entry is checked right before it goes out: its header decodes, it is the next
    /// entry of the open region, and its CRC verifies.
    pub fn write_stage(&mut self) -> Result<()> {
        if self.stage.is_empty() {
            return Ok(());
        }
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
        let sector = geo.region_sector(geo.region_of(self.open_id)) + self.stage_at;
        plog_io(self.dev.write(sector, &self.stage, false))?;
        self.stage.clear();
        self.stage_entries = 0;
        self.unflushed = true;
        Ok(())
    }
}

pub(crate) fn plog_io<T>(r: std::result::Result<T, IoError>) -> Result<T> {
    r.map_err(|source| Error::Io {
        role: DeviceRole::Plog,
        source,
    })
}

fn plog_corrupt(sector: u64, what: String) -> Error {
    Error::Corrupt {
        role: DeviceRole::Plog,
        sector,
        what,
    }
}

/// Reads both superblock copies of a plog device.
pub(crate) fn read_superblocks<D: BlockDevice>(dev: &mut D) -> Result<[Option<PlogSuperblock>; 2]> {
    if dev.size_sectors() < pf::PLOG_FIRST_REGION_SECTOR {
        return Err(Error::PlogGeometry(pf::PlogGeometryError::TooSmall {
            sectors: dev.size_sectors(),
            blocks: 1,
            need: pf::PLOG_FIRST_REGION_SECTOR,
        }));
    }
    let mut out = [None; 2];
    for (i, sector) in [PLOG_SB_SECTOR, PLOG_BACKUP_SB_SECTOR]
        .into_iter()
        .enumerate()
    {
        let mut buf = [0u8; SECTOR_SIZE];
        plog_io(dev.read(sector, &mut buf))?;
        out[i] = pf::decode_superblock(&buf);
    }
    Ok(out)
}

/// Writes both superblock copies, backup first, each with FUA: a torn write leaves one valid.
pub(crate) fn write_superblocks<D: BlockDevice>(dev: &mut D, sb: &PlogSuperblock) -> Result<()> {
    let block = pf::encode_superblock(sb);
    plog_io(dev.write(PLOG_BACKUP_SB_SECTOR, &block, true))?;
    plog_io(dev.write(PLOG_SB_SECTOR, &block, true))
}

/// Formats a plog device for a cache of `generation` with segments of `order`. The new epoch is
/// past every epoch an old superblock of the device names, so no entry written before can ever
/// verify again, even under the same generation.
pub(crate) fn format_plog<D: BlockDevice>(
    dev: &mut D,
    order: u8,
    generation: u64,
) -> Result<PlogSuperblock> {
    let blocks = (1usize << (order - 3)) - 1;
    let sectors = dev.size_sectors();
    let geometry = PlogGeometry::for_device(sectors, blocks)?;
    let old_epoch = read_superblocks(dev)?
        .iter()
        .flatten()
        .map(|s| s.epoch)
        .max()
        .unwrap_or(0);
    let sb = PlogSuperblock {
        version: PLOG_VERSION,
        generation,
        epoch: old_epoch.saturating_add(1),
        plog_sectors: sectors,
        geometry,
        segment_order: order,
    };
    write_superblocks(dev, &sb)?;
    Ok(sb)
}

/// The superblock an existing plog is opened with: the newest valid copy of this generation.
pub(crate) fn open_superblock<D: BlockDevice>(
    dev: &mut D,
    generation: u64,
    order: u8,
    ignore_generation: bool,
) -> Result<PlogSuperblock> {
    let copies = read_superblocks(dev)?;
    let valid: Vec<PlogSuperblock> = copies.iter().flatten().copied().collect();
    if valid.is_empty() {
        return Err(plog_corrupt(
            PLOG_SB_SECTOR,
            "neither plog superblock copy (sectors 0 and 8) is valid: not a wbcache plog, or never formatted".into(),
        ));
    }
    let sb = valid
        .iter()
        .filter(|s| ignore_generation || s.generation == generation)
        .max_by_key(|s| s.epoch)
        .copied()
        .ok_or(Error::PlogMismatch {
            cache: generation,
            plog: valid[0].generation,
        })?;
    if sb.version != PLOG_VERSION {
        return Err(Error::UnsupportedVersion(sb.version));
    }
    let sectors = dev.size_sectors();
    if sb.plog_sectors != sectors {
        return Err(Error::PlogResized {
            formatted: sb.plog_sectors,
            actual: sectors,
        });
    }
    if sb.segment_order != order {
        return Err(plog_corrupt(
            PLOG_SB_SECTOR,
            format!(
                "plog was formatted for segment order {} but the cache has order {order}",
                sb.segment_order
            ),
        ));
    }
    sb.geometry.validate(sectors, (1usize << (order - 3)) - 1)?;
    Ok(sb)
}

/// One region as recovery reads it: the run of entries that verify, from the first.
pub(crate) struct Region {
    pub buf: Vec<u8>,
    /// Offsets (in sectors) and headers of the verified entries, in order.
    pub entries: Vec<(u64, EntryHeader)>,
}

/// Why recovery continues into, or stops at, the plog. Kept for the report.
pub(crate) enum PlanItem {
    /// A valid cache segment after a segment rebuilt from the plog: loaded into RAM and
    /// written again with the rebuilt ones, so the counters stay a prefix.
    Cache { id: u64, slot: u64, len: usize },
    /// A segment rebuilt from the first `count` entries of its region.
    Plog { id: u64, count: usize },
}

impl PlanItem {
    pub fn id(&self) -> u64 {
        match self {
            PlanItem::Cache { id, .. } | PlanItem::Plog { id, .. } => *id,
        }
    }
}

/// Whose entries a region's run must be: recovery's expectation, also used by `inspect`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RunOwner {
    pub segment_id: u64,
    /// `None`: any generation (seed quirks only).
    pub generation: Option<u64>,
    /// `None`: any epoch (seed quirk H4 only).
    pub epoch: Option<u64>,
}

/// The run of entries of one region (`region` holds the whole region) that verify, from entry
/// 0 on: each must carry the owner's segment id, generation and epoch and its own position, be
/// well formed, fit the region and a backing device of `backing_sectors`, and pass its CRC.
/// Returns (offset in sectors, header) of each. Bounded by the region size (H4): every entry
/// takes at least two sectors. Recovery and `inspect` both read runs through this function.
pub(crate) fn verified_run(
    region: &[u8],
    owner: RunOwner,
    backing_sectors: u64,
) -> Vec<(u64, EntryHeader)> {
    let region_sectors = (region.len() / SECTOR_SIZE) as u64;
    let mut entries = Vec::new();
    let mut at = 0u64;
    while at < region_sectors {
        let hs = at as usize * SECTOR_SIZE;
        let Some(h) = pf::decode_entry_header(&region[hs..hs + SECTOR_SIZE]) else {
            break;
        };
        let end = at + h.footprint();
        // Checked: the sector comes off the device and may be anything.
        let fits = end <= region_sectors
            && h.sector
                .checked_add(h.len as u64)
                .is_some_and(|e| e <= backing_sectors);
        let ours = h.segment_id == owner.segment_id
            && h.seq == entries.len() as u32
            && owner.generation.is_none_or(|g| h.generation == g)
            && owner.epoch.is_none_or(|e| h.epoch == e);
        if !fits || !ours {
            break;
        }
        let data = &region[hs + SECTOR_SIZE..end as usize * SECTOR_SIZE];
        if !pf::entry_crc_ok(&region[hs..hs + SECTOR_SIZE], data) {
            break;
        }
        entries.push((at, h));
        at = end;
    }
    entries
}

impl<D: BlockDevice> Engine<D> {
    pub(crate) fn is_type1(&self) -> bool {
        self.plog.is_some()
    }

    /// Before a write piece of `sectors` sectors: a region that cannot take its entry seals the
    /// open segment, so the piece goes to a new segment with a fresh region.
    pub(crate) fn plog_make_room(&mut self, sectors: usize) {
        let Some(p) = &self.plog else { return };
        let Some(open) = &self.open_seg else { return };
        if p.open_id == open.id && p.head + 1 + sectors as u64 > p.geo().region_sectors as u64 {
            self.seal_open();
        }
    }

    /// Before segment `id` opens: its region last held segment `id - nr_regions`, which must be
    /// durable on the cache device before its entries are overwritten (H7).
    pub(crate) fn plog_take_region(&mut self, id: u64) -> Result<()> {
        let Some(p) = &self.plog else { return Ok(()) };
        let need = id.saturating_sub(p.geo().nr_regions as u64);
        if need == 0 {
            return Ok(());
        }
        if quirk!(self, H7PlogReuseBeforeDurable) {
            // The seed waited only until that segment was written, not until it was durable.
            while self.last_flushed < need {
                self.write_oldest_sealed()?;
            }
            return Ok(());
        }
        if self.last_durable < need {
            // Everything sealed, with one flush: when the daemons lag, waiting for just the one
            // segment would cost a cache flush per new segment in the client path.
            self.make_durable_upto(self.last_sealed)?;
        }
        Ok(())
    }

    /// Appends the entry of one write piece that went into segment `id`: into the stage, which
    /// is written first if the region changes or the entry would overflow it.
    pub(crate) fn plog_append(
        &mut self,
        id: u64,
        block: u64,
        first: usize,
        data: &[u8],
    ) -> Result<()> {
        let Some(p) = self.plog.as_mut() else {
            return Ok(());
        };
        if p.open_id != id {
            assert!(id > p.open_id, "plog regions are taken in id order");
            // The open region changes: its staged entries go out first.
            p.write_stage()?;
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
        let geo = p.geo();
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
            p.head + footprint <= geo.region_sectors as u64,
            "plog_make_room leaves room for the entry"
        );
        let bytes = footprint as usize * SECTOR_SIZE;
        if p.stage.len() + bytes > PLOG_STAGE_BYTES {
            p.write_stage()?;
        }
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
        p.entries += 1;
        p.stage_entries += 1;
        p.entries_appended += 1;
        Ok(())
    }

    /// What a client FLUSH and a FUA write need: in type 1 the plog durable (the stage written,
    /// then the device flushed), in type 0 every segment durable.
    pub(crate) fn make_acknowledged_durable(&mut self) -> Result<()> {
        match self.plog.as_mut() {
            Some(p) => {
                p.write_stage()?;
                if p.unflushed {
                    plog_io(p.dev.flush())?;
                    p.unflushed = false;
                    p.flushes += 1;
                }
                Ok(())
            }
            None => self.make_all_durable(),
        }
    }

    /// Reads region of segment `id` and verifies its run of entries from the first: each must
    /// carry this generation, epoch, id and its position, be well formed, fit the region, and
    /// pass its CRC. Bounded by the region size (H4).
    pub(crate) fn plog_read_region(&mut self, id: u64) -> Result<Region> {
        let ignore_epoch = quirk!(self, H4PlogStaleEntries);
        let ignore_generation = ignore_epoch || quirk!(self, H10MagicFirst);
        let backing_sectors = self.backing_sectors;
        let p = self.plog.as_mut().expect("type 1");
        let geo = p.geo();
        let region_sectors = geo.region_sectors as u64;
        let mut buf = vec![0u8; region_sectors as usize * SECTOR_SIZE];
        plog_io(p.dev.read(geo.region_sector(geo.region_of(id)), &mut buf))?;
        let expect = RunOwner {
            segment_id: id,
            generation: (!ignore_generation).then_some(p.sb.generation),
            epoch: (!ignore_epoch).then_some(p.sb.epoch),
        };
        let entries = verified_run(&buf, expect, backing_sectors);
        Ok(Region { buf, entries })
    }

    /// Decides how far recovery goes past the end of the cache log (`first_missing` is the
    /// first id the cache walk did not apply). Reads only.
    pub(crate) fn plog_plan(
        &mut self,
        first_missing: u64,
        segments: &[crate::recovery::scan::SegmentScan],
        report: &mut RecoveryReport,
    ) -> Result<Vec<PlanItem>> {
        let nr_regions = self.plog.as_ref().expect("type 1").geo().nr_regions as u64;
        let seed_replay = quirk!(self, H8PlogRewritesCache);
        let ignore_checksum = quirk!(self, LcNoChecksum);
        let mut plan = Vec::new();
        // Entries of the previous segment when it came from the plog: the next one may follow
        // only if it confirms that run was complete.
        let mut prev_from_plog: Option<usize> = None;
        let mut id = first_missing;
        // Bounded: a segment opens only once the one `nr_regions` before it is durable, so no id
        // at or past `first_missing + nr_regions` was ever opened.
        for _ in 0..nr_regions {
            let region = self.plog_read_region(id)?;
            report.bytes_read += region.buf.len() as u64;
            let count = region.entries.len();
            if seed_replay {
                // The seed rebuilt every region with entries and wrote it over the cache slot,
                // whatever the slot held and whether the run before it was complete.
                if count == 0 {
                    break;
                }
                plan.push(PlanItem::Plog { id, count });
                id += 1;
                continue;
            }
            if let Some(prev) = prev_from_plog {
                let confirmed = region
                    .entries
                    .first()
                    .is_some_and(|(_, h)| h.prev_entries as usize == prev);
                if !confirmed {
                    report.stop_reason = Some(format!(
                        "plog region of segment {} may be incomplete ({prev} entries, not confirmed by segment {id})",
                        id - 1
                    ));
                    break;
                }
            }
            let on_cache =
                crate::recovery::intact_on_cache(segments, &self.geo, id, ignore_checksum);
            if let Some(seg) = on_cache {
                plan.push(PlanItem::Cache {
                    id,
                    slot: seg.slot,
                    len: seg.length as usize,
                });
                prev_from_plog = None;
            } else if count > 0 {
                plan.push(PlanItem::Plog { id, count });
                prev_from_plog = Some(count);
            } else {
                if prev_from_plog.is_none() {
                    report.stop_reason = Some(format!(
                        "segment {id} is neither on the cache device nor in the plog"
                    ));
                }
                break;
            }
            id += 1;
        }
        Ok(plan)
    }

    /// Voids the region of every segment past `last` that still starts with an entry of this
    /// epoch, so a recovery cut short and run again decides exactly as this one did. Flushed.
    pub(crate) fn plog_void_after(&mut self, last: u64, report: &mut RecoveryReport) -> Result<()> {
        let p = self.plog.as_mut().expect("type 1");
        let geo = p.geo();
        let mut voided = 0u64;
        for r in 0..geo.nr_regions {
            let sector = geo.region_sector(r);
            let mut hs = [0u8; SECTOR_SIZE];
            plog_io(p.dev.read(sector, &mut hs))?;
            let live = pf::decode_entry_header(&hs).is_some_and(|h| {
                h.epoch == p.sb.epoch && h.generation == p.sb.generation && h.segment_id > last
            });
            if live {
                plog_io(p.dev.write(sector, &[0u8; SECTOR_SIZE], false))?;
                voided += 1;
            }
        }
        report.bytes_read += geo.nr_regions as u64 * SECTOR_SIZE as u64;
        if voided > 0 {
            plog_io(p.dev.flush())?;
            report.plog_regions_voided = voided;
            report.bytes_written += voided * SECTOR_SIZE as u64;
        }
        Ok(())
    }

    /// Carries out a plan: cache segments are loaded into RAM buffers, plog runs are written
    /// again through the write path (without logging them again), each into the segment of
    /// its own id; everything ends sealed in RAM.
    pub(crate) fn plog_execute(
        &mut self,
        plan: &[PlanItem],
        report: &mut RecoveryReport,
    ) -> Result<()> {
        for item in plan {
            assert_eq!(item.id(), self.last_sealed + 1, "plan runs in id order");
            match *item {
                PlanItem::Cache { id, slot, len } => {
                    let mut buf = self.take_free_buffer()?;
                    let base = self.geo.slot_sector(slot);
                    let bytes = crate::format::segment_len_bytes(len);
                    Self::cache_io(self.cache.read(base, &mut buf[..bytes]))?;
                    report.bytes_read += bytes as u64;
                    if !crate::format::segment_checksum_ok(&buf[..bytes]) {
                        return Err(Error::Corrupt {
                            role: DeviceRole::Cache,
                            sector: base,
                            what: format!("segment {id} changed while recovery read it"),
                        });
                    }
                    let metablocks: Vec<_> = (0..len)
                        .map(|j| crate::format::decode_metablock(&buf, j))
                        .collect();
                    self.apply_segment(id, slot, &metablocks);
                    self.push_loaded_segment(id, buf, len);
                }
                PlanItem::Plog { id, count } => {
                    let region = self.plog_read_region(id)?;
                    report.bytes_read += region.buf.len() as u64;
                    assert!(region.entries.len() >= count, "region {id} shrank");
                    for &(at, h) in &region.entries[..count] {
                        let s = at as usize * SECTOR_SIZE;
                        let data =
                            &region.buf[s + SECTOR_SIZE..s + SECTOR_SIZE * h.footprint() as usize];
                        let block = h.sector / SECTORS_PER_BLOCK;
                        let first = (h.sector % SECTORS_PER_BLOCK) as usize;
                        let went_to = self.place_piece(block, first, data)?;
                        assert_eq!(went_to, id, "a rebuilt segment holds what it held");
                    }
                    self.seal_open();
                    report.plog_segments_rebuilt += 1;
                    report.plog_entries_replayed += count as u64;
                }
            }
        }
        Ok(())
    }

    /// The new epoch: every entry written so far is void from here on. Only after everything
    /// recovered is durable on the cache device.
    pub(crate) fn plog_new_epoch(&mut self) -> Result<()> {
        let p = self.plog.as_mut().expect("type 1");
        p.sb.epoch =
            p.sb.epoch
                .checked_add(1)
                .ok_or_else(|| plog_corrupt(PLOG_SB_SECTOR, "plog epoch is exhausted".into()))?;
        assert!(p.stage.is_empty(), "recovery appends nothing to the plog");
        write_superblocks(&mut p.dev, &p.sb)?;
        p.open_id = 0;
        p.head = 0;
        p.entries = 0;
        p.prev_entries = 0;
        p.unflushed = false;
        Ok(())
    }
}

const _: () = assert!(pf::MAX_REGION_SECTORS as usize * SECTOR_SIZE <= 2 * 1024 * 1024);
const _: () = assert!(BLOCK_SIZE == SECTORS_PER_BLOCK as usize * SECTOR_SIZE);
