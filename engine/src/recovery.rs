//! Opening a cache: format a blank device, or recover a formatted one by replaying its log.
//!
//! Replay (docs/DESIGN.md, "Replay", says why each step is safe):
//! 1. read the superblock and the record `r` (last written-back id);
//! 2. read the first sector of every slot (ids only);
//! 3. walk ids `r+1, r+2, ...`: the slot of id `k` must hold exactly id `k`, a sane length and a
//!    matching checksum (the whole segment is read for that); stop at the first that does not;
//! 4. every slot whose id is at or past the first missing id is stale (never covered by a FLUSH);
//!    zero its header and flush, so it can never be accepted once those ids are reused (H3);
//! 5. flush both devices: what was read may still sit in a volatile cache after a process
//!    crash, and the engine is about to treat it as durable.

use std::collections::VecDeque;

use crate::cache::{quirk, Config, Engine, FormatPolicy, SlotInfo};
use crate::device::{BlockDevice, DeviceRole, ReadReq, WriteReq};
use crate::error::{Error, Result};
use crate::format::{
    self, Geometry, Superblock, SuperblockExt, BLOCK_SIZE, FORMAT_VERSION, SECTORS_PER_BLOCK,
    SECTOR_SIZE,
};
use crate::index::{Index, Mb};
use crate::status::Stats;
use crate::tunables::Tunables;

/// What `open` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub formatted: bool,
    pub upstream_image: bool,
    pub record: u64,
    /// Segments replayed (ids `record+1 ..= last_applied`).
    pub segments_applied: u64,
    pub last_applied: u64,
    /// Why the walk stopped, if it stopped at a slot holding something.
    pub stop_reason: Option<String>,
    pub stale_invalidated: u64,
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

/// Slots read per batch while scanning headers: bounds memory for huge caches.
const SCAN_BATCH: u64 = 256;

impl<D: BlockDevice> Engine<D> {
    /// Opens a type-0 cache: formats or recovers `cache` in front of `backing`.
    pub fn open(cache: D, backing: D, cfg: Config) -> Result<(Self, RecoveryReport)> {
        Self::open_with_plog(cache, backing, None, cfg)
    }

    /// Opens a cache with or without a plog device. Formatting with a plog makes a type-1
    /// cache; a type-1 cache must be opened with its plog and a type-0 cache without one.
    pub fn open_with_plog(
        mut cache: D,
        backing: D,
        mut plog: Option<D>,
        cfg: Config,
    ) -> Result<(Self, RecoveryReport)> {
        if cfg.nr_rambuf_pool == 0 || cfg.nr_rambuf_pool > 1024 {
            return Err(Error::InvalidPool(cfg.nr_rambuf_pool));
        }
        let backing_sectors = backing.size_sectors();
        if backing_sectors == 0 || backing_sectors % SECTORS_PER_BLOCK != 0 {
            return Err(Error::BackingSize {
                sectors: backing_sectors,
            });
        }
        let cache_sectors = cache.size_sectors();
        // Smaller than the smallest geometry: nothing to read, nothing to format.
        Geometry::new(format::MIN_ORDER, cache_sectors)?;
        let mut sb = [0u8; BLOCK_SIZE];
        Self::cache_io(cache.read(0, &mut sb))?;
        let records = read_records(&mut cache)?;
        // A format that was cut short left a durable marker in the records before it touched
        // anything else; such a device holds no data and is formatted again.
        let interrupted_format = records
            .iter()
            .flatten()
            .any(|r| r.flags & format::RECORD_FLAG_FORMATTING != 0);
        let mut report = RecoveryReport::default();
        let superblock = format::decode_superblock(&sb);
        let format_now = match (superblock, cfg.format) {
            (_, FormatPolicy::Always) => true,
            (Superblock::Blank, FormatPolicy::IfBlank) => true,
            (Superblock::Blank, FormatPolicy::Never) => return Err(Error::Unformatted),
            (_, FormatPolicy::IfBlank) if interrupted_format => true,
            (_, FormatPolicy::Never) if interrupted_format => return Err(Error::InterruptedFormat),
            (Superblock::Foreign, _) => return Err(Error::UnknownContent),
            (Superblock::Valid(_), _) => false,
        };
        let (ext, records) = if format_now {
            #[cfg(feature = "quirks")]
            let magic_first = cfg.quirks.has(crate::quirks::Quirk::H10MagicFirst);
            #[cfg(not(feature = "quirks"))]
            let magic_first = false;
            let ext = format_device_in_order(
                &mut cache,
                plog.as_mut(),
                cfg.segment_size_order,
                cfg.generation,
                magic_first,
            )?;
            report.formatted = true;
            let rec = format::RecordExt {
                last_writeback_id: 0,
                flags: 0,
                generation: ext.generation,
            };
            (Some(ext), [Some(rec), Some(rec)])
        } else {
            match superblock {
                Superblock::Valid(ext) => (ext, records),
                _ => unreachable!("only a valid superblock is recovered"),
            }
        };
        let (order, generation) = match ext {
            Some(ext) => {
                if ext.format_version != FORMAT_VERSION {
                    return Err(Error::UnsupportedVersion(ext.format_version));
                }
                if ext.cache_sectors != cache_sectors {
                    return Err(Error::CacheResized {
                        formatted: ext.cache_sectors,
                        actual: cache_sectors,
                    });
                }
                match (ext.cache_type, plog.is_some()) {
                    (0, false) | (1, true) => {}
                    (0, true) => return Err(Error::PlogUnexpected),
                    (1, false) => return Err(Error::PlogMissing),
                    (t, _) => return Err(Error::UnsupportedType(t)),
                }
                (ext.order, ext.generation)
            }
            None => {
                if plog.is_some() {
                    return Err(Error::PlogUnexpected);
                }
                report.upstream_image = true;
                (format::UPSTREAM_ORDER, 0)
            }
        };
        let plog = match plog {
            Some(mut dev) => {
                #[cfg(feature = "quirks")]
                let (ignore_generation, regions_from_pool) = (
                    cfg.quirks.has(crate::quirks::Quirk::H10MagicFirst)
                        || cfg.quirks.has(crate::quirks::Quirk::H4PlogStaleEntries),
                    cfg.quirks
                        .has(crate::quirks::Quirk::H9PlogGeometryFromTunables),
                );
                #[cfg(not(feature = "quirks"))]
                let (ignore_generation, regions_from_pool) = (false, false);
                #[allow(unused_mut)]
                let mut sb =
                    crate::plog::open_superblock(&mut dev, generation, order, ignore_generation)?;
                if regions_from_pool {
                    // The seed sized the plog from nr_rambuf_pool on every start.
                    let fit = (dev.size_sectors() - format::plog::PLOG_FIRST_REGION_SECTOR)
                        / sb.geometry.region_sectors as u64;
                    sb.geometry.nr_regions =
                        (cfg.nr_rambuf_pool as u64 + 1).clamp(2, fit.max(2)) as u32;
                }
                report.plog_epoch = sb.epoch;
                Some(crate::plog::Plog::new(dev, sb))
            }
            None => None,
        };
        let geo = Geometry::new(order, cache_sectors)?;
        let n = geo.blocks_per_segment();
        let mut engine = Engine {
            cache,
            backing,
            geo,
            n,
            backing_sectors,
            generation,
            tunables: cfg.tunables.unwrap_or_else(|| Tunables::defaults(order)),
            index: Index::new(geo.nr_segments, n),
            slots: vec![SlotInfo::default(); geo.nr_segments as usize],
            open_seg: None,
            sealed: VecDeque::new(),
            free_bufs: Engine::<D>::new_pool(&geo, cfg.nr_rambuf_pool),
            pool_size: cfg.nr_rambuf_pool,
            last_sealed: 0,
            last_flushed: 0,
            last_durable: 0,
            last_writeback: 0,
            durable_record: 0,
            record_needs_durable_log: false,
            now_ms: 0,
            last_record_ms: 0,
            last_sync_ms: 0,
            backing_load: 0,
            draining: false,
            dead: None,
            stats: Stats::default(),
            plog,
            #[cfg(feature = "quirks")]
            quirks: cfg.quirks,
        };
        let record = match ext {
            Some(ext) => chosen_record(&records, ext.generation)?,
            None => upstream_record(&mut engine.cache)?,
        };
        engine.replay(record, &mut report)?;
        Self::backing_io(engine.backing.flush())?;
        if engine.is_type1() {
            if !report.formatted {
                engine.plog_new_epoch()?;
            }
            report.plog_epoch = engine.plog.as_ref().map_or(0, |p| p.sb.epoch);
        }
        // Rebuilding segments went through the write path; the counters are for clients.
        engine.stats = Stats::default();
        report.dirty_blocks = engine.index.live_total();
        Ok((engine, report))
    }

    fn replay(&mut self, record: u64, report: &mut RecoveryReport) -> Result<()> {
        let geo = self.geo;
        let nr = geo.nr_segments;
        report.bytes_read += (BLOCK_SIZE + 2 * SECTOR_SIZE) as u64;
        // Ids are u64 and grow by one per segment: a record near the top is corruption.
        if record > u64::MAX / 4 {
            return Err(Error::Corrupt {
                role: DeviceRole::Cache,
                sector: format::RECORD_SECTOR,
                what: format!("superblock record {record} is not a plausible segment id"),
            });
        }
        report.record = record;

        // Id and length of every slot, from the first sector of each header. The length lets
        // `load_segment` read a segment in one request; its checksum still decides.
        let mut slot_ids = vec![0u64; nr as usize];
        let mut slot_lens = vec![0u8; nr as usize];
        let mut bufs = vec![0u8; SCAN_BATCH as usize * SECTOR_SIZE];
        let mut first = 0;
        while first < nr {
            let count = SCAN_BATCH.min(nr - first);
            let mut reqs: Vec<ReadReq<'_>> = bufs
                .chunks_mut(SECTOR_SIZE)
                .take(count as usize)
                .enumerate()
                .map(|(i, buf)| ReadReq {
                    sector: geo.slot_sector(first + i as u64),
                    buf,
                })
                .collect();
            Self::cache_io(self.cache.read_batch(&mut reqs))?;
            for i in 0..count as usize {
                let h =
                    format::decode_segment_header(&bufs[i * SECTOR_SIZE..(i + 1) * SECTOR_SIZE]);
                slot_ids[(first as usize) + i] = h.id;
                slot_lens[(first as usize) + i] = h.length;
            }
            report.bytes_read += count * SECTOR_SIZE as u64;
            first += count;
        }

        let mut segbuf = vec![0u8; geo.segment_bytes()];
        if quirk!(self, H6ReplayBelowRecord) {
            // The seed replayed what the ring still held at or below the record, as dirty.
            for id in (record + 1).saturating_sub(nr).max(1)..=record {
                let slot = geo.slot_of(id);
                if slot_ids[slot as usize] == id {
                    if let Some(len) =
                        self.load_segment(slot, id, slot_lens[slot as usize], &mut segbuf, report)?
                    {
                        self.apply_segment(id, slot, &segbuf, len)?;
                    }
                }
            }
        }

        // Walk the log from the record. At most one lap: every id lives in its own slot.
        let mut expected = record + 1;
        for _ in 0..nr {
            let slot = geo.slot_of(expected);
            let found = slot_ids[slot as usize];
            if found != expected {
                if found != 0 && quirk!(self, H2NoContiguity) {
                    // The seed applied whatever valid segment a slot held, in slot order.
                    if let Some(len) = self.load_segment(
                        slot,
                        found,
                        slot_lens[slot as usize],
                        &mut segbuf,
                        report,
                    )? {
                        self.apply_segment(found, slot, &segbuf, len)?;
                        expected += 1;
                        continue;
                    }
                }
                if found != 0 {
                    report.stop_reason = Some(format!(
                        "slot {slot} holds id {found}, not the next id {expected}"
                    ));
                }
                break;
            }
            match self.load_segment(
                slot,
                expected,
                slot_lens[slot as usize],
                &mut segbuf,
                report,
            )? {
                Some(len) => self.apply_segment(expected, slot, &segbuf, len)?,
                None => {
                    report.stop_reason = Some(format!(
                        "segment {expected} in slot {slot} fails its checksum or length (torn)"
                    ));
                    if quirk!(self, H1TornSlotForgetsLog) {
                        // The seed's replay aborted at the torn slot and forgot the whole log.
                        self.index = Index::new(nr, self.n);
                        self.slots.fill(SlotInfo::default());
                        expected = record + 1;
                    }
                    break;
                }
            }
            expected += 1;
        }
        // Type 1: go on into the plog where the cache log ends; then void what lies past the
        // end of the plan before anything else is written, so that a recovery cut short and run
        // again makes the same plan.
        let plan = if self.is_type1() && !report.formatted {
            let plan = self.plog_plan(expected, &slot_ids, &slot_lens, report)?;
            let end = plan.last().map_or(expected - 1, |p| p.id());
            self.plog_void_after(end, report)?;
            plan
        } else {
            Vec::new()
        };
        let kept_on_cache = |id: u64| {
            plan.iter()
                .any(|p| matches!(p, crate::plog::PlanItem::Cache { id: c, .. } if *c == id))
        };

        let last_applied = expected - 1;
        report.last_applied = plan.last().map_or(last_applied, |p| p.id()).max(record);
        report.segments_applied = report.last_applied - record;

        // Invalidate stale segments at or past the first missing id (H3), durably, before any
        // new segment can reuse those ids. Valid segments the plan takes stay (H8).
        let zeros = [0u8; BLOCK_SIZE];
        let stale: Vec<u64> = (0..nr)
            .filter(|&s| slot_ids[s as usize] >= expected && !kept_on_cache(slot_ids[s as usize]))
            .collect();
        if !stale.is_empty() && !quirk!(self, H3NoStaleInvalidation) {
            let reqs: Vec<WriteReq<'_>> = stale
                .iter()
                .map(|&s| WriteReq {
                    sector: geo.slot_sector(s),
                    data: &zeros,
                    fua: false,
                })
                .collect();
            Self::cache_io(self.cache.write_batch(&reqs))?;
            report.stale_invalidated = stale.len() as u64;
            report.bytes_written += (stale.len() * BLOCK_SIZE) as u64;
        }
        // Even with nothing to invalidate: what replay read may not be durable yet.
        Self::cache_io(self.cache.flush())?;

        let last = last_applied.max(record);
        self.last_sealed = last;
        self.last_flushed = last;
        self.last_durable = last;
        self.last_writeback = record;
        self.durable_record = record;
        if !plan.is_empty() {
            // Rebuild, then make it all durable on the cache device: only then may the plog
            // move to a new epoch and so drop the entries.
            self.plog_execute(&plan, report)?;
            let before = self.last_durable;
            self.make_all_durable()?;
            report.bytes_written += (self.last_durable - before) * self.geo.segment_bytes() as u64;
        }
        Ok(())
    }

    /// Reads the segment in `slot`, expected to carry `id`, into `segbuf`. Returns its length if
    /// the header and the checksum are right, `None` if it is torn or not that segment.
    /// `len_hint` is the length the slot scan saw: the header block and that many data blocks
    /// are read in one request (upstream reads a whole segment in one); if the header read now
    /// says otherwise, the rest is read as the header says and the checksum decides as always.
    pub(crate) fn load_segment(
        &mut self,
        slot: u64,
        id: u64,
        len_hint: u8,
        segbuf: &mut [u8],
        report: &mut RecoveryReport,
    ) -> Result<Option<usize>> {
        let base = self.geo.slot_sector(slot);
        let first = format::segment_len_bytes((len_hint as usize).min(self.n));
        Self::cache_io(self.cache.read(base, &mut segbuf[..first]))?;
        let h = format::decode_segment_header(segbuf);
        let len = h.length as usize;
        if h.id != id || len > self.n {
            report.bytes_read += first as u64;
            return Ok(None);
        }
        let bytes = format::segment_len_bytes(len);
        if bytes > first {
            Self::cache_io(self.cache.read(
                base + (first / SECTOR_SIZE) as u64,
                &mut segbuf[first..bytes],
            ))?;
        }
        report.bytes_read += bytes.max(first) as u64;
        let ok = format::segment_checksum_ok(&segbuf[..bytes]) || quirk!(self, LcNoChecksum);
        Ok(ok.then_some(len))
    }

    /// Applies one verified segment to the index: newest copy wins.
    pub(crate) fn apply_segment(
        &mut self,
        id: u64,
        slot: u64,
        seg: &[u8],
        len: usize,
    ) -> Result<()> {
        self.slots[slot as usize] = SlotInfo { id, len };
        for j in 0..len {
            let m = format::decode_metablock(seg, j);
            if m.dirty_bits == 0 {
                // Upstream's clean read-cache entries: the backing device has the data.
                continue;
            }
            if m.sector % SECTORS_PER_BLOCK != 0 || m.sector >= self.backing_sectors {
                return Err(Error::SegmentOutOfRange {
                    id,
                    slot,
                    sector: m.sector,
                    backing_sectors: self.backing_sectors,
                });
            }
            let block = m.sector / SECTORS_PER_BLOCK;
            if let Some(old) = self.index.lookup(block) {
                self.index.remove(old);
            }
            let idx = self.index.idx(slot, j);
            if self.index.get(idx).dirty != 0 {
                // The same block twice in one segment: the later metablock wins.
                self.index.remove(idx);
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
        Ok(())
    }
}

/// Zeroes the header block of every slot (not flushed).
fn zero_headers<D: BlockDevice>(cache: &mut D, geo: &Geometry) -> Result<()> {
    let zeros = [0u8; BLOCK_SIZE];
    let mut first = 0;
    while first < geo.nr_segments {
        let count = SCAN_BATCH.min(geo.nr_segments - first);
        let reqs: Vec<WriteReq<'_>> = (first..first + count)
            .map(|s| WriteReq {
                sector: geo.slot_sector(s),
                data: &zeros,
                fua: false,
            })
            .collect();
        Engine::<D>::cache_io(cache.write_batch(&reqs))?;
        first += count;
    }
    Ok(())
}

/// Reads both record copies (primary, backup) and decodes our extension of each.
fn read_records<D: BlockDevice>(cache: &mut D) -> Result<[Option<format::RecordExt>; 2]> {
    let mut out = [None; 2];
    for (i, sector) in [format::RECORD_SECTOR, format::BACKUP_RECORD_SECTOR]
        .into_iter()
        .enumerate()
    {
        let mut buf = [0u8; SECTOR_SIZE];
        Engine::<D>::cache_io(cache.read(sector, &mut buf))?;
        out[i] = format::decode_record_ext(&buf);
    }
    Ok(out)
}

/// The record of one of our images: the larger valid copy of this generation. Both are written
/// only after the backing device was flushed, so either value is a true promise; the backup is
/// written first, so a torn primary leaves the backup with the newer value.
pub(crate) fn chosen_record(
    records: &[Option<format::RecordExt>; 2],
    generation: u64,
) -> Result<u64> {
    records
        .iter()
        .flatten()
        .filter(|r| r.generation == generation)
        .map(|r| r.last_writeback_id)
        .max()
        .ok_or_else(|| Error::Corrupt {
            role: DeviceRole::Cache,
            sector: format::RECORD_SECTOR,
            what: format!(
                "neither copy of the superblock record (sectors {} and {}) is valid for generation {generation}",
                format::RECORD_SECTOR,
                format::BACKUP_RECORD_SECTOR
            ),
        })
}

/// The record of an upstream image: the u64 at offset 0 of sector 2047, as upstream reads it.
fn upstream_record<D: BlockDevice>(cache: &mut D) -> Result<u64> {
    let mut buf = [0u8; SECTOR_SIZE];
    Engine::<D>::cache_io(cache.read(format::RECORD_SECTOR, &mut buf))?;
    Ok(format::decode_record(&buf))
}

/// Writes both record copies, backup first, each with FUA.
pub(crate) fn write_records<D: BlockDevice>(cache: &mut D, rec: &format::RecordExt) -> Result<()> {
    let block = format::encode_record_block(rec);
    Engine::<D>::cache_io(cache.write(format::BACKUP_RECORD_BLOCK_SECTOR, &block, true))?;
    Engine::<D>::cache_io(cache.write(format::RECORD_BLOCK_SECTOR, &block, true))
}

/// Formats a cache device, crash-safe in this order (H10), whatever a power cut tears:
/// 1. both record copies say "formatting" (flushed): from here on an interrupted format is
///    recognised and redone, even if sector 0 is left torn;
/// 2. zero sector 0 and every segment header, flush: no old segment can be replayed;
/// 3. write the superblock with FUA;
/// 4. write both record copies (id 0, no flag) with FUA: the device is ready.
pub fn format_device<D: BlockDevice>(
    cache: &mut D,
    order: u8,
    generation: u64,
) -> Result<SuperblockExt> {
    format_device_in_order(cache, None, order, generation, false)
}

/// Formats a type-1 cache: as [`format_device`], and the plog device gets its superblock for
/// this generation (in a new epoch) after the old segments are invalidated and before the cache
/// superblock makes the device usable (H10): no entry of an older cache can be replayed.
pub fn format_device_with_plog<D: BlockDevice>(
    cache: &mut D,
    plog: &mut D,
    order: u8,
    generation: u64,
) -> Result<SuperblockExt> {
    format_device_in_order(cache, Some(plog), order, generation, false)
}

/// `magic_first` is seed hazard H10 (quirk `h10`): the superblock goes out before anything old
/// is invalidated and without the formatting marker.
fn format_device_in_order<D: BlockDevice>(
    cache: &mut D,
    mut plog: Option<&mut D>,
    order: u8,
    generation: u64,
    magic_first: bool,
) -> Result<SuperblockExt> {
    let io = |r| Engine::<D>::cache_io(r);
    let cache_sectors = cache.size_sectors();
    let geo = Geometry::new(order, cache_sectors)?;
    if let Some(p) = plog.as_deref_mut() {
        // Refuse a plog too small before anything is written.
        format::plog::PlogGeometry::for_device(p.size_sectors(), geo.blocks_per_segment())?;
    }
    let ext = SuperblockExt {
        format_version: FORMAT_VERSION,
        order,
        cache_type: plog.is_some() as u8,
        flags: 0,
        generation,
        cache_sectors,
    };
    // The records of a ready, empty cache.
    let ready = format::RecordExt {
        last_writeback_id: 0,
        flags: 0,
        generation,
    };
    if magic_first {
        io(cache.write(0, &format::encode_superblock(&ext), true))?;
        zero_headers(cache, &geo)?;
        io(cache.flush())?;
        write_records(cache, &ready)?;
        if let Some(p) = plog {
            // The seed's order: the old plog is still there while the cache is usable.
            crate::plog::format_plog(p, order, generation)?;
        }
        return Ok(ext);
    }
    let marker = format::RecordExt {
        last_writeback_id: 0,
        flags: format::RECORD_FLAG_FORMATTING,
        generation,
    };
    let block = format::encode_record_block(&marker);
    io(cache.write(format::BACKUP_RECORD_BLOCK_SECTOR, &block, false))?;
    io(cache.write(format::RECORD_BLOCK_SECTOR, &block, false))?;
    io(cache.flush())?;
    io(cache.write(0, &[0u8; BLOCK_SIZE], false))?;
    zero_headers(cache, &geo)?;
    io(cache.flush())?;
    if let Some(p) = plog {
        crate::plog::format_plog(p, order, generation)?;
    }
    io(cache.write(0, &format::encode_superblock(&ext), true))?;
    write_records(cache, &ready)?;
    Ok(ext)
}
