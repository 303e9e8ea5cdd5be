//! `FileDevice`: `engine::BlockDevice` over a regular file or a block device.
//!
//! - One owner per device (`ownership`): opening claims the device for as long as the
//!   `FileDevice` lives, with an open-file-description lock (write lock read-write, read lock
//!   read-only) and, for a block device opened read-write, O_EXCL; a device another process
//!   holds is a `DeviceError::InUse` that names it and, where the OS says, the holder.
//! - O_DIRECT where the file system supports it (the page cache would only double-buffer what
//!   the engine already caches, and would hide the device's own flush semantics); if opening
//!   with O_DIRECT fails with EINVAL (tmpfs, some FUSE file systems), the device falls back to
//!   buffered I/O with a one-line notice. Durability is the same either way: `flush` is
//!   `fdatasync`, which also writes back the page cache.
//! - O_DIRECT needs offsets, lengths and memory aligned to the logical block size. All
//!   transfers go through an aligned bounce buffer. The engine writes runs of 512-byte
//!   sectors to the backing device (writeback of partially dirty blocks); on a device whose
//!   logical block size is 4096 such a write becomes a read-modify-write of the covering
//!   aligned blocks, here in the device layer. That is safe because the engine thread is the
//!   only user of the device and a write batch runs stretches that share an aligned block one
//!   after the other (no concurrent writer can interleave between the read and the write), and
//!   a 4096-byte-sector device tears at 4096 bytes anyway.
//! - FUA is a write followed by `fdatasync` (not RWF_DSYNC: one code path for files and block
//!   devices, and the engine issues FUA only for its two record blocks).
//! - In a batch (`write_batch`, `read_batch`) each stretch of consecutive requests that are
//!   contiguous on the device (each starts where the previous one ends) becomes one transfer of
//!   at most `MAX_MERGED_BYTES` through a bounce buffer, with read-modify-write only at the
//!   stretch's unaligned edges. Stretches that share an aligned block keep their batch order,
//!   so even a batch that broke the trait's no-overlap promise ends with the later request's
//!   data. A batch with FUA requests syncs once, after all of its writes.
//! - A read batch of several stretches runs them concurrently, up to `POOL_THREADS` at a time,
//!   on a small pool of threads the device starts at its first such batch (each with its own
//!   handle of the file; `pread` at an offset shares no file position). Each thread reads into
//!   a bounce buffer the device lends it, and the calling thread copies the data out, so no
//!   borrowed memory crosses threads. The batch still returns only when all of it is done, and
//!   a failure reports the first failing stretch in batch order, as the one-by-one loop did.
//!   A batch of one stretch is read on the calling thread (no hand-off for a lone read).
//! - A write batch of several stretches runs them concurrently on the same pool (the engine
//!   thread never has a read batch and a write batch out at once). The calling thread copies
//!   each stretch's data into a bounce buffer it lends a pool thread, which does the
//!   read-modify-write of the stretch's unaligned edges itself and writes it. Running stretches
//!   concurrently gives up their order, so only stretches whose aligned ranges touch no other
//!   stretch's go to the pool; the others (overlapping requests, or sub-block runs sharing one
//!   aligned block on a 4096-byte device, whose read-modify-writes must not race) are written
//!   one after the other on the calling thread, in batch order, as before. The batch returns
//!   only when every write is done; with FUA requests it then syncs once, and only if every
//!   write succeeded. A failure reports the first failing stretch in batch order.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use engine::device::check_access;
use engine::{Access, BlockDevice, DeviceRole, IoError, ReadReq, WriteReq};

pub(crate) mod aligned_buf;
pub mod handle;
mod io_pool;
mod open;
mod ownership;
mod stretches;
mod transfer;

use aligned_buf::AlignedBuf;
use io_pool::{IoPool, PoolJob, PoolOp};
pub use open::DeviceError;
pub use ownership::same_device;
use stretches::{merge_runs, sharing_aligned_blocks};

/// The engine's block: a backing device is a whole number of these (a cache or plog device
/// need only be a whole number of sectors), and no device is smaller.
pub const DEVICE_GRAIN: u64 = 4096;
const SECTOR: u64 = 512;
/// Cap on one merged transfer of a batch. The bounce buffer lives as long as the device and
/// grows to the largest transfer, so this bounds its memory (plus two alignment units); 4 MiB is
/// far past the size where a sequential O_DIRECT write or read stops getting faster per byte,
/// and a writeback batch (up to 32 segments' blocks) still becomes a handful of transfers. A
/// single request larger than this is still one transfer, as with `write`.
const MAX_MERGED_BYTES: usize = 4 << 20;
/// Most transfers of one batch in flight at once: the threads of a device's I/O pool.
/// Enough to keep an SSD's queue busy with a client's queue depth of 32 split over the cache
/// and the backing device, or with a writeback batch of scattered blocks, few enough to cost
/// little on a small machine. Measured once on the 2-core bench VM: 4 KiB O_DIRECT random
/// writes reach 5x the one-at-a-time rate at 8 in flight and 6.3x at 16, and the nbd-fio
/// randwrite job (forced writeback in the foreground) ran about 25 k IOPS with 16 threads
/// against 19–23 k with 8.
const POOL_THREADS: usize = 16;
/// Bounce buffers of the pool up to this size are kept for the next batch; larger ones
/// (long sequential stretches) are freed, so the pool keeps at most `POOL_THREADS` of these.
const KEPT_POOL_BUFFER_BYTES: usize = 1 << 20;

/// How to open a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    /// O_DIRECT, or buffered I/O where the file system refuses O_DIRECT.
    DirectIfSupported,
    Buffered,
}

pub struct FileDevice {
    file: File,
    path: PathBuf,
    role: DeviceRole,
    sectors: u64,
    direct: bool,
    /// Alignment of offsets and lengths under O_DIRECT (the logical block size); 1 otherwise.
    align: u64,
    bounce: AlignedBuf,
    busy_ns: u64,
    /// Started at the first batch of several stretches.
    pool: Option<IoPool>,
}

impl FileDevice {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Which device of the set this is.
    pub fn role(&self) -> DeviceRole {
        self.role
    }

    /// Whether O_DIRECT is in use.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Alignment the device layer rounds transfers to (1 when buffered).
    pub fn alignment(&self) -> u64 {
        self.align
    }

    /// Another descriptor of the device's open file (a `dup`: same O_DIRECT mode, and the
    /// ownership lock still covers it).
    pub fn try_clone_file(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    fn aligned_range(&self, off: u64, len: u64) -> (u64, u64) {
        transfer::aligned_range(self.align, off, len)
    }

    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_scatter(off, &mut [buf])
    }

    fn read_scatter(&mut self, off: u64, bufs: &mut [&mut [u8]]) -> io::Result<()> {
        transfer::read_scatter(
            &self.file,
            self.align,
            self.direct,
            &mut self.bounce,
            off,
            bufs,
        )
    }

    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        self.write_gather(off, &[data])
    }

    fn write_gather(&mut self, off: u64, pieces: &[&[u8]]) -> io::Result<()> {
        transfer::write_gather(
            &self.file,
            self.align,
            self.direct,
            &mut self.bounce,
            off,
            pieces,
        )
    }

    /// Runs jobs `0..count` on the pool, up to `POOL_THREADS` at a time: `prepare(job, buf)`
    /// makes job `job` around a lent bounce buffer, and `finish(job, buf)` sees the buffer of
    /// each job that succeeded. Returns `None` if no pool could be started (nothing ran); on
    /// failure, the first failing job in job order with its error (the others all finished
    /// anyway).
    fn run_on_pool(
        &mut self,
        count: usize,
        mut prepare: impl FnMut(usize, AlignedBuf) -> PoolJob,
        mut finish: impl FnMut(usize, &mut AlignedBuf),
    ) -> Option<Result<(), (usize, io::Error)>> {
        // Taken out for the batch and put back only if it still works, so a broken pool is
        // replaced by a fresh one at the next batch.
        let mut pool = match self.pool.take() {
            Some(pool) => pool,
            None => IoPool::start(&self.file, &self.path).ok()?,
        };
        let gone = || io::Error::other("the I/O threads are gone");
        let mut failed: Option<(usize, io::Error)> = None;
        let (mut next, mut in_flight) = (0, 0);
        while next < count || in_flight > 0 {
            while next < count && in_flight < POOL_THREADS {
                let job = prepare(next, pool.spare.pop().unwrap_or_else(AlignedBuf::new));
                let sent = pool.work.as_ref().map(|w| w.send(job));
                if !matches!(sent, Some(Ok(()))) {
                    // The threads are gone (they never exit while the pool lives); the jobs
                    // still out own their buffers, so nothing borrowed is left behind.
                    return Some(Err(failed.map_or((next, gone()), |f| f)));
                }
                next += 1;
                in_flight += 1;
            }
            let Ok(mut done) = pool.done.recv() else {
                return Some(Err(failed.map_or((next, gone()), |f| f)));
            };
            in_flight -= 1;
            match done.result {
                Ok(()) => finish(done.job, &mut done.buf),
                Err(e) => {
                    if failed.as_ref().is_none_or(|(i, _)| done.job < *i) {
                        failed = Some((done.job, e));
                    }
                }
            }
            if done.buf.cap <= KEPT_POOL_BUFFER_BYTES {
                pool.spare.push(done.buf);
            }
        }
        self.pool = Some(pool);
        Some(failed.map_or(Ok(()), Err))
    }

    /// Reads each stretch of `reads` (index ranges of contiguous requests, from `merge_runs`)
    /// on the pool. On failure, returns the index of the first failing stretch in batch order
    /// with its error; the others all finished anyway.
    fn read_stretches_concurrently(
        &mut self,
        reads: &mut [ReadReq<'_>],
        stretches: &[std::ops::Range<usize>],
    ) -> Result<(), (usize, io::Error)> {
        let align = self.align;
        let span = |reqs: &[ReadReq<'_>]| {
            let off = reqs[0].sector * SECTOR;
            let len: u64 = reqs.iter().map(|r| r.buf.len() as u64).sum();
            let start = off / align * align;
            (
                off,
                start,
                ((off + len).div_ceil(align) * align - start) as usize,
            )
        };
        let spans: Vec<(u64, u64, usize)> =
            stretches.iter().map(|s| span(&reads[s.clone()])).collect();
        let prepare = |job: usize, buf| {
            let (_, start, len) = spans[job];
            PoolJob {
                job,
                op: PoolOp::Read,
                start,
                len,
                buf,
            }
        };
        let finish = |job: usize, buf: &mut AlignedBuf| {
            let (off, start, len) = spans[job];
            let bounce = buf.get(len);
            let mut at = (off - start) as usize;
            for r in reads[stretches[job].clone()].iter_mut() {
                r.buf.copy_from_slice(&bounce[at..at + r.buf.len()]);
                at += r.buf.len();
            }
        };
        match self.run_on_pool(stretches.len(), prepare, finish) {
            Some(r) => r,
            // No threads to be had: read one stretch after the other, as before.
            None => self.read_stretches_in_order(reads, stretches),
        }
    }

    /// Writes each stretch of `writes` (index ranges of contiguous requests, from
    /// `merge_runs`): those whose aligned range touches no other stretch's on the pool, the
    /// rest on the calling thread in batch order (see the module doc). On failure, returns the
    /// index of the first failing stretch in batch order with its error.
    fn write_stretches_concurrently(
        &mut self,
        writes: &[WriteReq<'_>],
        stretches: &[std::ops::Range<usize>],
    ) -> Result<(), (usize, io::Error)> {
        // (byte offset, bytes, aligned start, aligned end) of each stretch.
        let spans: Vec<(u64, u64, u64, u64)> = stretches
            .iter()
            .map(|s| {
                let reqs = &writes[s.clone()];
                let off = reqs[0].sector * SECTOR;
                let len: u64 = reqs.iter().map(|w| w.data.len() as u64).sum();
                let (start, end) = self.aligned_range(off, len);
                (off, len, start, end)
            })
            .collect();
        let aligned: Vec<(u64, u64)> = spans.iter().map(|&(.., start, end)| (start, end)).collect();
        let mut in_order = sharing_aligned_blocks(&aligned);
        let pooled: Vec<usize> = (0..stretches.len()).filter(|&i| !in_order[i]).collect();
        let unit = self.align as usize;
        let prepare = |job: usize, mut buf: AlignedBuf| {
            let stretch = pooled[job];
            let (off, len, start, end) = spans[stretch];
            let out = buf.get((end - start) as usize);
            let data_at = (off - start) as usize;
            let mut at = data_at;
            for w in &writes[stretches[stretch].clone()] {
                out[at..at + w.data.len()].copy_from_slice(w.data);
                at += w.data.len();
            }
            PoolJob {
                job,
                op: PoolOp::Write {
                    data_at,
                    data_len: len as usize,
                    unit,
                },
                start,
                len: (end - start) as usize,
                buf,
            }
        };
        let pool_result = if pooled.len() > 1 {
            match self.run_on_pool(pooled.len(), prepare, |_, _| {}) {
                Some(r) => r.map_err(|(job, e)| (pooled[job], e)),
                // No threads to be had: write them on this thread with the rest.
                None => {
                    in_order.iter_mut().for_each(|o| *o = true);
                    Ok(())
                }
            }
        } else {
            in_order.iter_mut().for_each(|o| *o = true);
            Ok(())
        };
        // Disjoint from every pooled stretch, so writing these after the pool changes nothing
        // but when they land; they stop at the first failure, as the one-by-one loop did.
        let mut pieces: Vec<&[u8]> = Vec::new();
        let mut in_order_result = Ok(());
        for (i, stretch) in stretches.iter().enumerate() {
            if !in_order[i] {
                continue;
            }
            pieces.clear();
            pieces.extend(writes[stretch.clone()].iter().map(|w| w.data));
            if let Err(e) = self.write_gather(spans[i].0, &pieces) {
                in_order_result = Err((i, e));
                break;
            }
        }
        match (pool_result, in_order_result) {
            (Err(a), Err(b)) => Err(if a.0 < b.0 { a } else { b }),
            (Err(f), Ok(())) | (Ok(()), Err(f)) => Err(f),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    /// Reads each stretch on the calling thread, in order, stopping at the first failure.
    fn read_stretches_in_order(
        &mut self,
        reads: &mut [ReadReq<'_>],
        stretches: &[std::ops::Range<usize>],
    ) -> Result<(), (usize, io::Error)> {
        for (i, stretch) in stretches.iter().enumerate() {
            let reqs = &mut reads[stretch.clone()];
            let sector = reqs[0].sector;
            let mut bufs: Vec<&mut [u8]> = reqs.iter_mut().map(|r| &mut *r.buf).collect();
            self.read_scatter(sector * SECTOR, &mut bufs)
                .map_err(|e| (i, e))?;
        }
        Ok(())
    }

    /// Writes each stretch on the calling thread, in order, stopping at the first failure.
    fn write_stretches_in_order(
        &mut self,
        writes: &[WriteReq<'_>],
        stretches: &[std::ops::Range<usize>],
    ) -> Result<(), (usize, io::Error)> {
        let mut pieces: Vec<&[u8]> = Vec::new();
        for (i, stretch) in stretches.iter().enumerate() {
            let reqs = &writes[stretch.clone()];
            pieces.clear();
            pieces.extend(reqs.iter().map(|w| w.data));
            self.write_gather(reqs[0].sector * SECTOR, &pieces)
                .map_err(|e| (i, e))?;
        }
        Ok(())
    }

    fn timed<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        let t = Instant::now();
        let r = f(self);
        self.busy_ns += t.elapsed().as_nanos() as u64;
        r
    }
}

fn io_err(op: Access, sector: u64, len: usize, e: io::Error) -> IoError {
    IoError::new(op, sector, (len as u64) / SECTOR, e.to_string())
}

impl BlockDevice for FileDevice {
    fn size_sectors(&self) -> u64 {
        self.sectors
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        check_access(Access::Read, self.sectors, sector, buf.len())?;
        self.timed(|d| d.read_at(sector * SECTOR, buf))
            .map_err(|e| io_err(Access::Read, sector, buf.len(), e))
    }

    fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
        check_access(Access::Write, self.sectors, sector, data.len())?;
        self.timed(|d| {
            d.write_at(sector * SECTOR, data)?;
            if fua {
                d.file.sync_data()?;
            }
            Ok(())
        })
        .map_err(|e| io_err(Access::Write, sector, data.len(), e))
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.timed(|d| d.file.sync_data())
            .map_err(|e| io_err(Access::Flush, 0, 0, e))
    }

    /// In order, contiguous stretches merged (see the module doc); one `fdatasync` at the end
    /// if any request is FUA, which makes each FUA request durable before the batch returns,
    /// as `write` would. Every request is checked before any is written. An error names the
    /// first request of the transfer that failed and the transfer's length (for the final
    /// sync: the first FUA request).
    fn write_batch(&mut self, writes: &[WriteReq<'_>]) -> Result<(), IoError> {
        for w in writes {
            check_access(Access::Write, self.sectors, w.sector, w.data.len())?;
        }
        let runs = merge_runs(writes.iter().map(|w| (w.sector, w.data.len())));
        self.timed(|d| {
            if runs.len() > 1 {
                d.write_stretches_concurrently(writes, &runs)
            } else {
                d.write_stretches_in_order(writes, &runs)
            }
        })
        .map_err(|(i, e)| {
            let reqs = &writes[runs[i].clone()];
            let len: usize = reqs.iter().map(|w| w.data.len()).sum();
            io_err(Access::Write, reqs[0].sector, len, e)
        })?;
        if let Some(w) = writes.iter().find(|w| w.fua) {
            self.timed(|d| d.file.sync_data())
                .map_err(|e| io_err(Access::Write, w.sector, w.data.len(), e))?;
        }
        Ok(())
    }

    /// Contiguous stretches merged into one read each, several stretches read concurrently
    /// (see the module doc). Every request is checked before any is read; an error names the
    /// first request of the first transfer in batch order that failed and that transfer's
    /// length.
    fn read_batch(&mut self, reads: &mut [ReadReq<'_>]) -> Result<(), IoError> {
        for r in reads.iter() {
            check_access(Access::Read, self.sectors, r.sector, r.buf.len())?;
        }
        let runs = merge_runs(reads.iter().map(|r| (r.sector, r.buf.len())));
        let r = self.timed(|d| {
            if runs.len() > 1 {
                d.read_stretches_concurrently(reads, &runs)
            } else {
                d.read_stretches_in_order(reads, &runs)
            }
        });
        r.map_err(|(i, e)| {
            let reqs = &reads[runs[i].clone()];
            let len: usize = reqs.iter().map(|r| r.buf.len()).sum();
            io_err(Access::Read, reqs[0].sector, len, e)
        })
    }
}

impl std::fmt::Debug for FileDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDevice")
            .field("path", &self.path)
            .field("role", &self.role)
            .field("sectors", &self.sectors)
            .field("direct", &self.direct)
            .field("align", &self.align)
            .finish_non_exhaustive()
    }
}

impl FileDevice {
    /// Nanoseconds spent in this handle's own transfers (the executor's threads keep their own).
    pub fn busy_ns(&self) -> u64 {
        self.busy_ns
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
