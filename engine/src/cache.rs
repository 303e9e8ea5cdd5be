//! The engine: state, the client request path (read, write, FUA, flush, discard) and the
//! segment pipeline (open -> sealed in RAM -> written -> durable -> written back -> recorded).
//!
//! Segment ids only grow. With `L_x` the last id in state x, the engine keeps
//! `durable_record <= last_writeback <= last_durable <= last_flushed <= last_sealed`, the open
//! segment (if any) is `last_sealed + 1`, and a slot is reused for id `k` only when
//! `k - nr_segments <= durable_record`: the segment it held is written back, the backing device
//! flushed, and a record saying so is durable. That last rule is what lets replay start at
//! `record + 1` and demand exact, contiguous ids (see docs/DESIGN.md).

use std::collections::VecDeque;

use crate::device::{BlockDevice, DeviceRole, IoError};
use crate::error::{Error, Result};
use crate::format::{
    self, Geometry, BLOCK_SIZE, MAX_BLOCKS_PER_SEGMENT, SECTORS_PER_BLOCK, SECTOR_SIZE,
};
use crate::index::{Index, Mb};
use crate::status::Stats;
use crate::tunables::Tunables;

/// What to do with the cache device's content on open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatPolicy {
    /// Format a blank device (sector 0 all zero); recover a formatted one; refuse anything else.
    IfBlank,
    /// Recover a formatted device; refuse blank or unknown ones.
    Never,
    /// Format whatever is there (the user asked for it).
    Always,
}

/// Options for [`Engine::open`].
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Segment size order, used when formatting; a formatted device keeps its own.
    pub segment_size_order: u8,
    /// Number of RAM buffers (open + sealed-but-unwritten segments).
    pub nr_rambuf_pool: usize,
    /// Tunables; `None` takes the seed's defaults for the device's order.
    pub tunables: Option<Tunables>,
    pub format: FormatPolicy,
    /// Written into the superblock when formatting; ties a future plog to this device. The
    /// engine has no randomness, so the driver picks it.
    pub generation: u64,
    /// Seed hazards switched back on (test builds only).
    #[cfg(feature = "quirks")]
    pub quirks: crate::quirks::Quirks,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            segment_size_order: format::UPSTREAM_ORDER,
            nr_rambuf_pool: 8,
            tunables: None,
            format: FormatPolicy::IfBlank,
            generation: 0,
            #[cfg(feature = "quirks")]
            quirks: crate::quirks::Quirks::none(),
        }
    }
}

/// Whether a seed hazard is switched on; always false without the `quirks` feature.
macro_rules! quirk {
    ($engine:expr, $q:ident) => {{
        #[cfg(feature = "quirks")]
        let on = $engine.quirks.has(crate::quirks::Quirk::$q);
        #[cfg(not(feature = "quirks"))]
        let on = false;
        on
    }};
}
pub(crate) use quirk;

/// A segment held in a RAM buffer: its on-disk image, built in place.
pub(crate) struct RamSegment {
    pub id: u64,
    pub buf: Box<[u8]>,
    /// Data blocks placed so far.
    pub len: usize,
}

/// What a slot of the cache device holds, as far as the engine knows.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SlotInfo {
    pub id: u64,
    pub len: usize,
}

pub struct Engine<D: BlockDevice> {
    pub(crate) cache: D,
    pub(crate) backing: D,
    pub(crate) geo: Geometry,
    /// Data blocks per segment.
    pub(crate) n: usize,
    pub(crate) backing_sectors: u64,
    pub(crate) generation: u64,
    pub(crate) tunables: Tunables,
    pub(crate) index: Index,
    pub(crate) slots: Vec<SlotInfo>,
    pub(crate) open_seg: Option<RamSegment>,
    pub(crate) sealed: VecDeque<RamSegment>,
    pub(crate) free_bufs: Vec<Box<[u8]>>,
    pub(crate) pool_size: usize,
    pub(crate) last_sealed: u64,
    pub(crate) last_flushed: u64,
    pub(crate) last_durable: u64,
    pub(crate) last_writeback: u64,
    pub(crate) durable_record: u64,
    /// A written-back segment held blocks whose newer copies may not be durable yet.
    pub(crate) record_needs_durable_log: bool,
    pub(crate) now_ms: u64,
    pub(crate) last_record_ms: u64,
    pub(crate) last_sync_ms: u64,
    pub(crate) backing_load: u8,
    pub(crate) draining: bool,
    pub(crate) dead: Option<String>,
    pub(crate) stats: Stats,
    /// Type 1: the persistent log. `None` in type 0.
    pub(crate) plog: Option<crate::plog::Plog<D>>,
    #[cfg(feature = "quirks")]
    pub(crate) quirks: crate::quirks::Quirks,
}

/// Bit mask of sectors `[first, first + count)` of a block.
pub(crate) fn sector_mask(first: usize, count: usize) -> u8 {
    debug_assert!(first + count <= SECTORS_PER_BLOCK as usize && count > 0);
    (((1u16 << count) - 1) << first) as u8
}

/// Where the newest copy of a cached block lives.
pub(crate) enum Source {
    Ram { seg: Option<usize> },
    CacheDevice { sector: u64 },
}

impl<D: BlockDevice> Engine<D> {
    /// Size of the exported device in sectors (the backing device's size).
    pub fn size_sectors(&self) -> u64 {
        self.backing_sectors
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn is_dead(&self) -> bool {
        self.dead.is_some()
    }

    pub fn cache_device(&self) -> &D {
        &self.cache
    }

    pub fn backing_device(&self) -> &D {
        &self.backing
    }

    /// Gives the devices back (cache, backing) without any further I/O: what a power cut does.
    /// A type-1 cache's plog device is dropped; [`Engine::into_all_devices`] keeps it.
    pub fn into_devices(self) -> (D, D) {
        (self.cache, self.backing)
    }

    /// Gives every device back (cache, backing, plog) without any further I/O: a power cut. In
    /// type 1 the plog's RAM stage (entries appended since the last plog write, none of them
    /// covered by a FLUSH) is lost with the RAM buffers.
    pub fn into_all_devices(self) -> (D, D, Option<D>) {
        (self.cache, self.backing, self.plog.map(|p| p.dev))
    }

    /// 0: RAM buffers only; 1: with a persistent log.
    pub fn cache_type(&self) -> u8 {
        self.plog.is_some() as u8
    }

    pub fn plog_device(&self) -> Option<&D> {
        self.plog.as_ref().map(|p| &p.dev)
    }

    // ----- guards -----

    pub(crate) fn check_alive(&self) -> Result<()> {
        match &self.dead {
            Some(cause) => Err(Error::Dead {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn check_extent(&self, sector: u64, len: usize) -> Result<()> {
        if len % SECTOR_SIZE != 0 {
            return Err(Error::Unaligned { len });
        }
        let sectors = (len / SECTOR_SIZE) as u64;
        match sector.checked_add(sectors) {
            Some(end) if end <= self.backing_sectors => Ok(()),
            _ => Err(Error::OutOfRange {
                sector,
                sectors,
                size: self.backing_sectors,
            }),
        }
    }

    /// Runs `f`; a device error or corruption found by it kills the cache.
    pub(crate) fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.check_alive()?;
        let r = f(self);
        if let Err(e) = &r {
            if matches!(e, Error::Io { .. } | Error::Corrupt { .. }) {
                self.dead = Some(e.to_string());
            }
        }
        r
    }

    pub(crate) fn cache_io<T>(r: std::result::Result<T, IoError>) -> Result<T> {
        r.map_err(|source| Error::Io {
            role: DeviceRole::Cache,
            source,
        })
    }

    pub(crate) fn backing_io<T>(r: std::result::Result<T, IoError>) -> Result<T> {
        r.map_err(|source| Error::Io {
            role: DeviceRole::Backing,
            source,
        })
    }

    /// Calls `f(block, first_sector_in_block, sectors, byte_offset)` for each block piece of an
    /// extent, in address order.
    pub(crate) fn for_each_piece(
        sector: u64,
        len: usize,
        mut f: impl FnMut(u64, usize, usize, usize) -> Result<()>,
    ) -> Result<()> {
        let mut s = sector;
        let end = sector + (len / SECTOR_SIZE) as u64;
        let mut off = 0;
        while s < end {
            let block = s / SECTORS_PER_BLOCK;
            let first = (s % SECTORS_PER_BLOCK) as usize;
            let count = ((SECTORS_PER_BLOCK as usize - first) as u64).min(end - s) as usize;
            f(block, first, count, off)?;
            s += count as u64;
            off += count * SECTOR_SIZE;
        }
        Ok(())
    }

    // ----- client requests -----

    /// Reads `buf.len()` bytes at `sector`: the newest acknowledged data of each sector.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<()> {
        self.check_extent(sector, buf.len())?;
        self.guarded(|e| {
            Self::for_each_piece(sector, buf.len(), |block, first, count, off| {
                e.read_piece(
                    block,
                    first,
                    count,
                    &mut buf[off..off + count * SECTOR_SIZE],
                )
            })
        })
    }

    /// Writes `data` at `sector`. With `fua`, returns only once the data (and everything
    /// acknowledged before it) is durable.
    pub fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<()> {
        self.check_extent(sector, data.len())?;
        self.guarded(|e| {
            Self::for_each_piece(sector, data.len(), |block, first, count, off| {
                e.write_piece(block, first, &data[off..off + count * SECTOR_SIZE])
            })?;
            if fua && !quirk!(e, WcIgnoresFua) {
                e.make_acknowledged_durable()?;
            }
            Ok(())
        })
    }

    /// Client FLUSH: every write acknowledged before it is durable when it returns.
    pub fn flush(&mut self) -> Result<()> {
        self.guarded(|e| e.make_acknowledged_durable())
    }

    /// Discard: the sectors read as zeros afterwards, before and after a crash, exactly as if
    /// zeros had been written (it goes through the log, so no stale cached copy can reappear
    /// and the prefix property holds). It frees no space on either device.
    pub fn discard(&mut self, sector: u64, sectors: u64) -> Result<()> {
        if quirk!(self, H14DiscardBackingOnly) {
            // The seed passed discards to the backing device only.
            self.check_extent(sector, sectors as usize * SECTOR_SIZE)?;
            let zeros = vec![0u8; sectors as usize * SECTOR_SIZE];
            return self.guarded(|e| Self::backing_io(e.backing.write(sector, &zeros, false)));
        }
        self.write_zeroes(sector, sectors, false)
    }

    /// Writes zeros to `sectors` sectors at `sector`, a block at a time.
    pub fn write_zeroes(&mut self, sector: u64, sectors: u64, fua: bool) -> Result<()> {
        let len = sectors
            .checked_mul(SECTOR_SIZE as u64)
            .filter(|&l| l <= usize::MAX as u64);
        let Some(len) = len else {
            return Err(Error::OutOfRange {
                sector,
                sectors,
                size: self.backing_sectors,
            });
        };
        self.check_extent(sector, len as usize)?;
        static ZEROS: [u8; BLOCK_SIZE] = [0; BLOCK_SIZE];
        self.guarded(|e| {
            Self::for_each_piece(sector, len as usize, |block, first, count, _| {
                e.write_piece(block, first, &ZEROS[..count * SECTOR_SIZE])
            })?;
            if fua {
                e.make_acknowledged_durable()?;
            }
            Ok(())
        })
    }

    pub(crate) fn source_of(&self, idx: u32) -> Source {
        let slot = self.index.slot_of(idx);
        let id = self.slots[slot as usize].id;
        if self.open_seg.as_ref().is_some_and(|s| s.id == id) {
            return Source::Ram { seg: None };
        }
        if let Some(i) = self.sealed.iter().position(|s| s.id == id) {
            return Source::Ram { seg: Some(i) };
        }
        Source::CacheDevice {
            sector: self.geo.block_sector(slot, self.index.pos_of(idx)),
        }
    }

    /// Copies the newest cached 4 KiB block at `idx` into `out`, verifying what comes from the
    /// cache device against its CRC. Returns whether it came from a RAM buffer.
    fn load_cached_block(&mut self, idx: u32, out: &mut [u8]) -> Result<bool> {
        let pos = self.index.pos_of(idx);
        let range = (1 + pos) * BLOCK_SIZE..(2 + pos) * BLOCK_SIZE;
        match self.source_of(idx) {
            Source::Ram { seg: None } => {
                out.copy_from_slice(&self.open_seg.as_ref().expect("open").buf[range]);
                Ok(true)
            }
            Source::Ram { seg: Some(i) } => {
                out.copy_from_slice(&self.sealed[i].buf[range]);
                Ok(true)
            }
            Source::CacheDevice { sector } => {
                Self::cache_io(self.cache.read(sector, out))?;
                let mb = self.index.get(idx);
                if let Some(crc) = mb.crc {
                    if format::block_crc(out) != crc {
                        return Err(Error::Corrupt {
                            role: DeviceRole::Cache,
                            sector,
                            what: format!("data block of backing block {} fails its CRC", mb.block),
                        });
                    }
                }
                Ok(false)
            }
        }
    }

    fn read_piece(&mut self, block: u64, first: usize, count: usize, out: &mut [u8]) -> Result<()> {
        let want = sector_mask(first, count);
        let Some(idx) = self.index.lookup(block) else {
            self.stats
                .count(false, false, false, count == SECTORS_PER_BLOCK as usize);
            return Self::backing_io(
                self.backing
                    .read(block * SECTORS_PER_BLOCK + first as u64, out),
            );
        };
        let mb = self.index.get(idx);
        if mb.dirty & want != want {
            // Some of the wanted sectors are only on the backing device.
            Self::backing_io(
                self.backing
                    .read(block * SECTORS_PER_BLOCK + first as u64, out),
            )?;
        }
        let mut data = [0u8; BLOCK_SIZE];
        let on_buffer = self.load_cached_block(idx, &mut data)?;
        for s in first..first + count {
            if mb.dirty & (1 << s) != 0 {
                let o = (s - first) * SECTOR_SIZE;
                out[o..o + SECTOR_SIZE]
                    .copy_from_slice(&data[s * SECTOR_SIZE..(s + 1) * SECTOR_SIZE]);
            }
        }
        self.stats
            .count(false, true, on_buffer, count == SECTORS_PER_BLOCK as usize);
        Ok(())
    }

    /// One accepted write piece: into the open segment, then (type 1) into the plog.
    fn write_piece(&mut self, block: u64, first: usize, data: &[u8]) -> Result<()> {
        self.plog_make_room(data.len() / SECTOR_SIZE);
        let id = self.place_piece(block, first, data)?;
        self.plog_append(id, block, first, data)
    }

    /// Puts a write piece into the open segment (opening one if needed); returns the id of the
    /// segment it went into. Recovery rebuilds segments from the plog through this very path.
    pub(crate) fn place_piece(&mut self, block: u64, first: usize, data: &[u8]) -> Result<u64> {
        let count = data.len() / SECTOR_SIZE;
        let bits = sector_mask(first, count);
        let full = count == SECTORS_PER_BLOCK as usize;
        let byte_off = first * SECTOR_SIZE;

        // Overwrite in the open segment: in place.
        if let Some(idx) = self.index.lookup(block) {
            if let Some(open) = self.open_seg.as_mut() {
                if self.slots[self.index.slot_of(idx) as usize].id == open.id {
                    let at = (1 + self.index.pos_of(idx)) * BLOCK_SIZE + byte_off;
                    open.buf[at..at + data.len()].copy_from_slice(data);
                    let id = open.id;
                    self.index.get_mut(idx).dirty |= bits;
                    self.stats.count(true, true, true, full);
                    return Ok(id);
                }
            }
        }

        // Room first: making room may write back (and so drop) the block's older copy.
        self.ensure_open_room()?;
        let (open_id, pos) = {
            let open = self
                .open_seg
                .as_ref()
                .expect("ensure_open_room opened a segment");
            (open.id, open.len)
        };
        let slot = self.geo.slot_of(open_id);
        let mut block_buf = [0u8; BLOCK_SIZE];
        let mut dirty = bits;
        let mut hit = false;
        let mut on_buffer = false;
        if let Some(old) = self.index.lookup(block) {
            hit = true;
            let on_cache_device = matches!(self.source_of(old), Source::CacheDevice { .. });
            if !full && quirk!(self, H12UnflushedOneShotWriteback) && on_cache_device {
                // The seed wrote the old dirty sectors back in the foreground, unflushed, and
                // the new copy carried only its own sectors.
                let mut old_data = [0u8; BLOCK_SIZE];
                self.load_cached_block(old, &mut old_data)?;
                let reqs =
                    crate::background::dirty_runs(block, self.index.get(old).dirty, &old_data);
                Self::backing_io(self.backing.write_batch(&reqs))?;
            } else if !full {
                // Keep the old copy's dirty sectors: the new copy must be a superset, so replay
                // of the newest copy alone is right and no foreground writeback is needed.
                on_buffer = self.load_cached_block(old, &mut block_buf)?;
                dirty |= self.index.get(old).dirty;
            }
            self.index.remove(old);
        }
        block_buf[byte_off..byte_off + data.len()].copy_from_slice(data);
        let open = self.open_seg.as_mut().expect("open");
        open.buf[(1 + pos) * BLOCK_SIZE..(2 + pos) * BLOCK_SIZE].copy_from_slice(&block_buf);
        open.len += 1;
        let idx = self.index.idx(slot, pos);
        self.index.insert(
            idx,
            Mb {
                block,
                crc: None,
                dirty,
            },
        );
        self.slots[slot as usize].len = open.len;
        self.stats.count(true, hit, on_buffer, full);
        if open.len == self.n {
            self.seal_open();
        }
        Ok(open_id)
    }

    // ----- the segment pipeline -----

    /// Makes sure an open segment with a free block exists.
    fn ensure_open_room(&mut self) -> Result<()> {
        if let Some(open) = &self.open_seg {
            if open.len < self.n {
                return Ok(());
            }
            self.seal_open();
        }
        let id = self.last_sealed + 1;
        self.make_room_for(id)?;
        self.plog_take_region(id)?;
        let buf = self.take_free_buffer()?;
        let slot = self.geo.slot_of(id);
        assert_eq!(
            self.index.live_in_slot(slot),
            0,
            "slot {slot} reused while it holds live data"
        );
        self.slots[slot as usize] = SlotInfo { id, len: 0 };
        self.open_seg = Some(RamSegment { id, buf, len: 0 });
        Ok(())
    }

    /// A free RAM buffer, writing sealed segments out until one is free.
    pub(crate) fn take_free_buffer(&mut self) -> Result<Box<[u8]>> {
        // Bounded: each pass writes one sealed segment and frees its buffer.
        for _ in 0..=self.pool_size {
            if !self.free_bufs.is_empty() {
                break;
            }
            self.write_oldest_sealed()?;
        }
        Ok(self
            .free_bufs
            .pop()
            .expect("a RAM buffer is free after writing sealed ones"))
    }

    /// Queues a segment image read back from the cache device (already sealed and applied to
    /// the index) as if it had just been sealed: recovery rewrites it with the rebuilt ones.
    pub(crate) fn push_loaded_segment(&mut self, id: u64, buf: Box<[u8]>, len: usize) {
        assert!(
            self.open_seg.is_none(),
            "no open segment while recovery loads"
        );
        assert_eq!(id, self.last_sealed + 1, "segments are sealed in id order");
        self.last_sealed = id;
        self.sealed.push_back(RamSegment { id, buf, len });
    }

    /// Seals the open segment: fills in metablocks, CRCs, id, length and checksum, and queues it
    /// for writing. An empty open segment is discarded, never written (H11).
    pub(crate) fn seal_open(&mut self) {
        let Some(mut seg) = self.open_seg.take() else {
            return;
        };
        if seg.len == 0 {
            self.free_bufs.push(seg.buf);
            return;
        }
        let slot = self.geo.slot_of(seg.id);
        for j in 0..seg.len {
            let idx = self.index.idx(slot, j);
            let data = &seg.buf[(1 + j) * BLOCK_SIZE..(2 + j) * BLOCK_SIZE];
            let crc = format::block_crc(data);
            let mb = self.index.get_mut(idx);
            mb.crc = Some(crc);
            let meta = format::Metablock {
                sector: mb.block * SECTORS_PER_BLOCK,
                dirty_bits: mb.dirty,
                block_crc: Some(crc),
            };
            format::encode_metablock(&mut seg.buf, j, &meta);
        }
        format::seal_segment(&mut seg.buf, seg.id, seg.len);
        if seg.len < self.n {
            self.stats.partial_flushed += 1;
        }
        assert_eq!(
            seg.id,
            self.last_sealed + 1,
            "segments are sealed in id order"
        );
        self.last_sealed = seg.id;
        self.sealed.push_back(seg);
    }

    /// Writes the oldest sealed segment to its slot (not yet durable).
    pub(crate) fn write_oldest_sealed(&mut self) -> Result<()> {
        let Some(seg) = self.sealed.front() else {
            return Ok(());
        };
        let bytes = format::segment_len_bytes(seg.len);
        // Assert the image right before it goes out.
        debug_assert!(
            format::segment_checksum_ok(&seg.buf[..bytes]),
            "segment {} image",
            seg.id
        );
        assert_eq!(
            seg.id,
            self.last_flushed + 1,
            "segments are written in id order"
        );
        let sector = self.geo.slot_sector(self.geo.slot_of(seg.id));
        Self::cache_io(self.cache.write(sector, &seg.buf[..bytes], false))?;
        let seg = self.sealed.pop_front().expect("front exists");
        self.last_flushed = seg.id;
        self.free_bufs.push(seg.buf);
        Ok(())
    }

    /// Writes sealed segments up to `target` and flushes the cache device so that every
    /// segment with id <= `target` is durable.
    pub(crate) fn make_durable_upto(&mut self, target: u64) -> Result<()> {
        assert!(
            target <= self.last_sealed,
            "only sealed segments can be made durable"
        );
        if quirk!(self, WcFlushBeforeData) && self.last_durable < target {
            // dm-writecache's old order: the flush goes out before the writes it should cover.
            Self::cache_io(self.cache.flush())?;
            while self.last_flushed < target {
                self.write_oldest_sealed()?;
            }
            self.last_durable = self.last_flushed;
            return Ok(());
        }
        while self.last_flushed < target {
            self.write_oldest_sealed()?;
        }
        if self.last_durable < target {
            Self::cache_io(self.cache.flush())?;
            self.last_durable = self.last_flushed;
        }
        Ok(())
    }

    /// Seals the open segment and makes every sealed segment durable: what a client FLUSH, a
    /// FUA write and the sync daemon need in type 0.
    pub(crate) fn make_all_durable(&mut self) -> Result<()> {
        self.seal_open();
        self.make_durable_upto(self.last_sealed)
    }

    /// Frees the slot for segment `id` if it still holds a segment that is not written back and
    /// recorded: forced writeback, whatever `allow_writeback` says (the log is full).
    fn make_room_for(&mut self, id: u64) -> Result<()> {
        let need = id.saturating_sub(self.geo.nr_segments);
        if need <= self.durable_record {
            return Ok(());
        }
        // Bounded: each batch writes back at least one segment.
        for _ in 0..=self.geo.nr_segments {
            if self.last_writeback >= need {
                break;
            }
            self.writeback_batch()?;
        }
        assert!(
            self.last_writeback >= need,
            "forced writeback made no progress"
        );
        self.write_record()?;
        Ok(())
    }

    /// Pool of RAM buffers for a geometry.
    pub(crate) fn new_pool(geo: &Geometry, pool: usize) -> Vec<Box<[u8]>> {
        (0..pool)
            .map(|_| vec![0u8; geo.segment_bytes()].into_boxed_slice())
            .collect()
    }
}

// Compile-time facts the request path relies on.
const _: () = assert!(MAX_BLOCKS_PER_SEGMENT < u8::MAX as usize);
const _: () = assert!(SECTORS_PER_BLOCK == 8, "dirty bits are one u8");
