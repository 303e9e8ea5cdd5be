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
}

/// Slots read per batch while scanning headers: bounds memory for huge caches.
const SCAN_BATCH: u64 = 256;

impl<D: BlockDevice> Engine<D> {
    /// Opens the cache: formats or recovers `cache` in front of `backing`.
    pub fn open(mut cache: D, backing: D, cfg: Config) -> Result<(Self, RecoveryReport)> {
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
        let mut report = RecoveryReport::default();
        let ext = match (format::decode_superblock(&sb), cfg.format) {
            (_, FormatPolicy::Always) | (Superblock::Blank, FormatPolicy::IfBlank) => {
                let ext = format_device(&mut cache, cfg.segment_size_order, cfg.generation)?;
                report.formatted = true;
                Some(ext)
            }
            (Superblock::Blank, FormatPolicy::Never) => return Err(Error::Unformatted),
            (Superblock::Foreign, _) => return Err(Error::UnknownContent),
            (Superblock::Valid(ext), _) => ext,
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
                if ext.cache_type != 0 {
                    return Err(Error::UnsupportedType(ext.cache_type));
                }
                (ext.order, ext.generation)
            }
            None => {
                report.upstream_image = true;
                (format::UPSTREAM_ORDER, 0)
            }
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
            #[cfg(feature = "quirks")]
            quirks: cfg.quirks,
        };
        engine.replay(&mut report)?;
        Self::backing_io(engine.backing.flush())?;
        report.dirty_blocks = engine.index.live_total();
        Ok((engine, report))
    }

    fn replay(&mut self, report: &mut RecoveryReport) -> Result<()> {
        let geo = self.geo;
        let nr = geo.nr_segments;
        let mut sector = [0u8; SECTOR_SIZE];
        Self::cache_io(self.cache.read(format::RECORD_SECTOR, &mut sector))?;
        report.bytes_read += (BLOCK_SIZE + SECTOR_SIZE) as u64;
        let record = format::decode_record(&sector);
        // Ids are u64 and grow by one per segment: a record near the top is corruption.
        if record > u64::MAX / 4 {
            return Err(Error::Corrupt {
                role: DeviceRole::Cache,
                sector: format::RECORD_SECTOR,
                what: format!("superblock record {record} is not a plausible segment id"),
            });
        }
        report.record = record;

        // Ids of every slot, from the first sector of each header.
        let mut slot_ids = vec![0u64; nr as usize];
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
            }
            report.bytes_read += count * SECTOR_SIZE as u64;
            first += count;
        }

        // Walk the log from the record. At most one lap: every id lives in its own slot.
        let mut expected = record + 1;
        let mut segbuf = vec![0u8; geo.segment_bytes()];
        for _ in 0..nr {
            let slot = geo.slot_of(expected);
            let found = slot_ids[slot as usize];
            if found != expected {
                if found != 0 {
                    report.stop_reason = Some(format!(
                        "slot {slot} holds id {found}, not the next id {expected}"
                    ));
                }
                break;
            }
            let base = geo.slot_sector(slot);
            Self::cache_io(self.cache.read(base, &mut segbuf[..BLOCK_SIZE]))?;
            let h = format::decode_segment_header(&segbuf);
            let len = h.length as usize;
            if h.id != expected || len > self.n {
                report.stop_reason =
                    Some(format!("segment {expected} has length {len} > {}", self.n));
                break;
            }
            let bytes = format::segment_len_bytes(len);
            if len > 0 {
                Self::cache_io(
                    self.cache
                        .read(base + SECTORS_PER_BLOCK, &mut segbuf[BLOCK_SIZE..bytes]),
                )?;
            }
            report.bytes_read += bytes as u64;
            if !format::segment_checksum_ok(&segbuf[..bytes]) && !quirk!(self, LcNoChecksum) {
                report.stop_reason = Some(format!(
                    "segment {expected} in slot {slot} fails its checksum (torn)"
                ));
                break;
            }
            self.apply_segment(expected, slot, &segbuf[..bytes], len)?;
            expected += 1;
        }
        let last_applied = expected - 1;
        report.last_applied = last_applied.max(record);
        report.segments_applied = last_applied.saturating_sub(record);

        // Invalidate stale segments at or past the first missing id (H3), durably, before any
        // new segment can reuse those ids.
        let zeros = [0u8; BLOCK_SIZE];
        let stale: Vec<u64> = (0..nr)
            .filter(|&s| slot_ids[s as usize] >= expected)
            .collect();
        if !stale.is_empty() {
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
        Ok(())
    }

    /// Applies one verified segment to the index: newest copy wins.
    fn apply_segment(&mut self, id: u64, slot: u64, seg: &[u8], len: usize) -> Result<()> {
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

/// Formats a cache device: crash-safe in this order (H10):
/// 1. zero sector 0, flush: an interrupted format leaves a blank device, which is formatted
///    again on the next open, never a half-old cache;
/// 2. zero every segment header and the record, flush: no old segment can be replayed;
/// 3. write the superblock with FUA.
pub fn format_device<D: BlockDevice>(
    cache: &mut D,
    order: u8,
    generation: u64,
) -> Result<SuperblockExt> {
    let io = |r| Engine::<D>::cache_io(r);
    let cache_sectors = cache.size_sectors();
    let geo = Geometry::new(order, cache_sectors)?;
    let zeros = [0u8; BLOCK_SIZE];
    io(cache.write(0, &zeros, false))?;
    io(cache.flush())?;
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
        io(cache.write_batch(&reqs))?;
        first += count;
    }
    io(cache.write(
        format::RECORD_BLOCK_SECTOR,
        &format::encode_record_block(0),
        false,
    ))?;
    io(cache.flush())?;
    let ext = SuperblockExt {
        format_version: FORMAT_VERSION,
        order,
        cache_type: 0,
        flags: 0,
        generation,
        cache_sectors,
    };
    io(cache.write(0, &format::encode_superblock(&ext), true))?;
    Ok(ext)
}
