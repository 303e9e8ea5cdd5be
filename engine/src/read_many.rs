//! Several client reads at once: [`Engine::read_many`].
//!
//! `read` serves a request one 4 KiB piece at a time, each piece a device read of its own, so a
//! driver with many reads queued would wait for one device round trip after another. Reads do
//! not change the cache's state (only its hit counters, and a device error or a bad CRC kills
//! the cache), so the pieces of several reads can be planned against one unchanged index, their
//! device reads handed to each device as one [`BlockDevice::read_batch`] (which a device may run
//! concurrently), and the results put together exactly as `read` would have.
//!
//! Equivalence with `read` called for each request in order, the property the tests check:
//! the buffers and the hit counters are the same, and errors are too because the batched path
//! only ever completes when every device read and CRC check succeeded. If anything fails it
//! counts nothing and the batch is redone with `read`, one request after the other, which
//! reports (and dies of) the error at the same request, with the same counters, as the
//! sequential run would. A device that fails a read only now and then may succeed on the second
//! try; the outcome is then one a sequential run could have had too.

use std::collections::BTreeMap;

use crate::cache::{sector_mask, Engine, Source};
use crate::device::{BlockDevice, ReadReq};
use crate::error::Result;
use crate::format::{self, BLOCK_SIZE, SECTORS_PER_BLOCK, SECTOR_SIZE};

/// Most client reads planned together: a driver's queue depth of 32 fits in one batch.
pub const READ_MANY_MAX_REQUESTS: usize = 32;
/// Most bytes of client reads planned together (a larger single read is planned alone). The
/// blocks read from the cache device need scratch memory of at most this size.
pub const READ_MANY_MAX_BYTES: usize = 8 << 20;

/// Where the cached copy of a hit piece's block is found once the device reads are done.
enum CachedFrom {
    OpenSegment,
    /// The sealed (not yet written) segment at this position of `Engine::sealed`.
    Sealed(usize),
    /// Block number `k` of the batch's scratch buffer, read from the cache device.
    Scratch(usize),
}

struct CachedBlock {
    dirty: u8,
    /// Position of the block in its segment.
    pos: usize,
    from: CachedFrom,
}

/// One block piece of one client read, as `read_piece` would see it.
struct Piece {
    first: usize,
    count: usize,
    /// `None`: a miss, read from the backing device only.
    cached: Option<CachedBlock>,
}

impl Piece {
    /// Whether some wanted sectors are only on the backing device.
    fn needs_backing(&self) -> bool {
        let want = sector_mask(self.first, self.count);
        self.cached.as_ref().is_none_or(|c| c.dirty & want != want)
    }
}

/// Backing-device reads that do not overlap one another, for one `read_batch` call (the
/// trait promises the device independent requests).
struct Wave<'b> {
    /// Start -> end sector of each request in `reqs`.
    taken: BTreeMap<u64, u64>,
    reqs: Vec<ReadReq<'b>>,
}

/// Puts `req` into the first wave it does not overlap, or a new one. Two client reads of the
/// same sectors in one batch are the only way to need a second wave.
fn add_to_wave<'b>(waves: &mut Vec<Wave<'b>>, req: ReadReq<'b>) {
    let (start, end) = (
        req.sector,
        req.sector + (req.buf.len() / SECTOR_SIZE) as u64,
    );
    let fits = |w: &Wave<'_>| {
        w.taken
            .range(..end)
            .next_back()
            .is_none_or(|(_, &taken_end)| taken_end <= start)
    };
    match waves.iter_mut().find(|w| fits(w)) {
        Some(w) => {
            w.taken.insert(start, end);
            w.reqs.push(req);
        }
        None => waves.push(Wave {
            taken: BTreeMap::from([(start, end)]),
            reqs: vec![req],
        }),
    }
}

/// How many of the first requests of `reads` go into one batch (at least one).
fn batch_len(reads: &[ReadReq<'_>]) -> usize {
    let mut bytes = 0usize;
    let mut n = 0;
    for r in reads.iter().take(READ_MANY_MAX_REQUESTS) {
        if n > 0 && bytes.saturating_add(r.buf.len()) > READ_MANY_MAX_BYTES {
            break;
        }
        bytes = bytes.saturating_add(r.buf.len());
        n += 1;
    }
    n
}

impl<D: BlockDevice> Engine<D> {
    /// Reads each request's `buf.len()` bytes at its `sector`, with the same outcome (data,
    /// result, hit counters, dead or not) as calling [`Engine::read`] for each in order, but
    /// with the device reads of up to [`READ_MANY_MAX_REQUESTS`] requests issued together.
    /// Returns one result per request, in order.
    pub fn read_many(&mut self, reads: &mut [ReadReq<'_>]) -> Vec<Result<()>> {
        let mut results = Vec::with_capacity(reads.len());
        let mut rest = reads;
        while !rest.is_empty() {
            let (batch, later) = rest.split_at_mut(batch_len(rest));
            match self.read_together(batch) {
                Some(done) => results.extend(done),
                None => {
                    for r in batch.iter_mut() {
                        results.push(self.read(r.sector, r.buf));
                    }
                }
            }
            rest = later;
        }
        results
    }

    /// The batched path: `None` when the cache is dead or any device read or CRC check failed,
    /// in which case nothing was counted and the caller redoes the batch with `read`.
    fn read_together(&mut self, reads: &mut [ReadReq<'_>]) -> Option<Vec<Result<()>>> {
        self.check_alive().ok()?;
        // Bad extents fail alone, with no I/O and no state change, as in `read`.
        let extents: Vec<Result<()>> = reads
            .iter()
            .map(|r| self.check_extent(r.sector, r.buf.len()))
            .collect();

        // Plan every piece against the index as it is now (nothing below changes it).
        let mut pieces: Vec<Piece> = Vec::new();
        // Cache-device blocks to read, each once however many pieces want it: (index, sector).
        let mut cache_reads: Vec<(u32, u64)> = Vec::new();
        let mut scratch_of: BTreeMap<u32, usize> = BTreeMap::new();
        for (r, extent) in reads.iter().zip(&extents) {
            if extent.is_err() {
                continue;
            }
            let planned = Self::for_each_piece(r.sector, r.buf.len(), |block, first, count, _| {
                let cached = self.index.lookup(block).map(|idx| CachedBlock {
                    dirty: self.index.get(idx).dirty,
                    pos: self.index.pos_of(idx),
                    from: match self.source_of(idx) {
                        Source::Ram { seg: None } => CachedFrom::OpenSegment,
                        Source::Ram { seg: Some(i) } => CachedFrom::Sealed(i),
                        Source::CacheDevice { sector } => {
                            let next = cache_reads.len();
                            let k = *scratch_of.entry(idx).or_insert_with(|| {
                                cache_reads.push((idx, sector));
                                next
                            });
                            CachedFrom::Scratch(k)
                        }
                    },
                });
                pieces.push(Piece {
                    first,
                    count,
                    cached,
                });
                Ok(())
            });
            planned.ok()?;
        }

        // Backing reads straight into the client buffers, as `read_piece` does.
        {
            let mut waves: Vec<Wave<'_>> = Vec::new();
            let mut next_piece = pieces.iter();
            for (r, extent) in reads.iter_mut().zip(&extents) {
                if extent.is_err() {
                    continue;
                }
                let mut sector = r.sector;
                let mut buf: &mut [u8] = &mut *r.buf;
                while !buf.is_empty() {
                    let p = next_piece.next()?;
                    let (piece_buf, rest) =
                        std::mem::take(&mut buf).split_at_mut(p.count * SECTOR_SIZE);
                    buf = rest;
                    if p.needs_backing() {
                        add_to_wave(
                            &mut waves,
                            ReadReq {
                                sector,
                                buf: piece_buf,
                            },
                        );
                    }
                    sector += p.count as u64;
                }
            }
            for w in &mut waves {
                self.backing.read_batch(&mut w.reqs).ok()?;
            }
        }

        // Cached blocks on the cache device, each verified against its CRC as in
        // `load_cached_block`.
        let mut scratch = vec![0u8; cache_reads.len() * BLOCK_SIZE];
        {
            let mut reqs: Vec<ReadReq<'_>> = scratch
                .chunks_exact_mut(BLOCK_SIZE)
                .zip(&cache_reads)
                .map(|(buf, &(_, sector))| ReadReq { sector, buf })
                .collect();
            self.cache.read_batch(&mut reqs).ok()?;
        }
        for (block, &(idx, _)) in scratch.chunks_exact(BLOCK_SIZE).zip(&cache_reads) {
            if let Some(crc) = self.index.get(idx).crc {
                if format::block_crc(block) != crc {
                    return None;
                }
            }
        }

        // Everything read: lay the dirty sectors of each cached block over the backing data.
        let mut next_piece = pieces.iter();
        for (r, extent) in reads.iter_mut().zip(&extents) {
            if extent.is_err() {
                continue;
            }
            let mut off = 0;
            while off < r.buf.len() {
                let p = next_piece.next()?;
                let out = &mut r.buf[off..off + p.count * SECTOR_SIZE];
                off += p.count * SECTOR_SIZE;
                let Some(c) = &p.cached else { continue };
                let in_segment = (1 + c.pos) * BLOCK_SIZE..(2 + c.pos) * BLOCK_SIZE;
                let data: &[u8] = match c.from {
                    CachedFrom::OpenSegment => &self.open_seg.as_ref()?.buf[in_segment],
                    CachedFrom::Sealed(i) => &self.sealed.get(i)?.buf[in_segment],
                    CachedFrom::Scratch(k) => &scratch[k * BLOCK_SIZE..(k + 1) * BLOCK_SIZE],
                };
                for s in p.first..p.first + p.count {
                    if c.dirty & (1 << s) != 0 {
                        let o = (s - p.first) * SECTOR_SIZE;
                        out[o..o + SECTOR_SIZE]
                            .copy_from_slice(&data[s * SECTOR_SIZE..(s + 1) * SECTOR_SIZE]);
                    }
                }
            }
        }
        for p in &pieces {
            let on_buffer = p
                .cached
                .as_ref()
                .is_some_and(|c| !matches!(c.from, CachedFrom::Scratch(_)));
            let full = p.count == SECTORS_PER_BLOCK as usize;
            self.stats.count(false, p.cached.is_some(), on_buffer, full);
        }
        Some(extents)
    }
}
