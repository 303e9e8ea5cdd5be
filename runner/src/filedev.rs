//! `FileDevice`: `engine::BlockDevice` over a regular file or a block device.
//!
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

use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use engine::device::check_access;
use engine::{BlockDevice, IoError, IoOp, ReadReq, WriteReq};
use thiserror::Error;

use crate::core::BusyTime;

/// Every device is a whole number of these (the engine's block).
pub const DEVICE_GRAIN: u64 = 4096;
const SECTOR: u64 = 512;
/// Memory alignment of the bounce buffer: enough for any logical block size we accept.
const BUF_ALIGN: usize = 4096;
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

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("{path}: no such file or device")]
    NotFound { path: PathBuf },
    #[error("{path}: cannot open: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path}: is neither a regular file nor a block device")]
    NotFileOrBlockDevice { path: PathBuf },
    #[error("{path}: cannot determine its size: {source}")]
    Size { path: PathBuf, source: io::Error },
    #[error("{path}: size {size} bytes is not a multiple of {DEVICE_GRAIN} bytes")]
    NotBlockMultiple { path: PathBuf, size: u64 },
    #[error("{path}: size {size} bytes is too small: at least {min} bytes are needed")]
    TooSmall { path: PathBuf, size: u64, min: u64 },
    #[error("{path}: logical block size {size} is not supported (512 or 4096 only)")]
    BlockSize { path: PathBuf, size: u64 },
}

/// How to open a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    /// O_DIRECT, or buffered I/O where the file system refuses O_DIRECT.
    DirectIfSupported,
    Buffered,
}

/// A heap buffer aligned to `BUF_ALIGN`, grown on demand.
struct AlignedBuf {
    ptr: *mut u8,
    cap: usize,
}

// The buffer is plain owned memory; it moves between threads with its device.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn new() -> Self {
        AlignedBuf {
            ptr: std::ptr::null_mut(),
            cap: 0,
        }
    }

    fn get(&mut self, len: usize) -> &mut [u8] {
        if len > self.cap {
            let cap = len.next_power_of_two().max(BUF_ALIGN);
            let layout = Layout::from_size_align(cap, BUF_ALIGN).expect("bounce buffer layout");
            // SAFETY: the layout has a non-zero size.
            let ptr = unsafe { alloc::alloc_zeroed(layout) };
            if ptr.is_null() {
                alloc::handle_alloc_error(layout);
            }
            self.free();
            self.ptr = ptr;
            self.cap = cap;
        }
        // SAFETY: `ptr` points to `cap >= len` initialised (zeroed, then written) bytes owned
        // by `self`, and the returned borrow keeps `self` mutably borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }

    fn free(&mut self) {
        if !self.ptr.is_null() {
            let layout = Layout::from_size_align(self.cap, BUF_ALIGN).expect("layout");
            // SAFETY: allocated in `get` with this very layout.
            unsafe { alloc::dealloc(self.ptr, layout) };
            self.ptr = std::ptr::null_mut();
            self.cap = 0;
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        self.free();
    }
}

/// What a pool thread does with a [`PoolJob`].
#[derive(Clone, Copy)]
enum PoolOp {
    /// Read the job's `len` bytes into its buffer.
    Read,
    /// Write the job's `len` bytes from its buffer. The data is at `data_at..data_at +
    /// data_len`; the bytes around it (the partly covered aligned blocks at the edges) are read
    /// from the device first, `unit` bytes (the alignment) at a time.
    Write {
        data_at: usize,
        data_len: usize,
        unit: usize,
    },
}

/// One transfer for the pool: `op` on `len` bytes at byte offset `start`, through `buf`.
struct PoolJob {
    /// The job's place in its batch (the order errors are judged in).
    job: usize,
    op: PoolOp,
    start: u64,
    len: usize,
    buf: AlignedBuf,
}

/// A finished [`PoolJob`]: its buffer comes back (with the data, for a read) or the error.
struct PoolJobDone {
    job: usize,
    buf: AlignedBuf,
    result: io::Result<()>,
}

/// The threads that run a batch's stretches concurrently. Dropping it ends them.
struct IoPool {
    /// `None` only while dropping: closing the channel is what ends the threads.
    work: Option<Sender<PoolJob>>,
    done: Receiver<PoolJobDone>,
    threads: Vec<JoinHandle<()>>,
    /// Bounce buffers not lent out.
    spare: Vec<AlignedBuf>,
}

impl IoPool {
    /// Starts `POOL_THREADS` threads doing I/O on their own handles of `file`.
    fn start(file: &File, path: &Path) -> io::Result<Self> {
        let (work_tx, work_rx) = mpsc::channel::<PoolJob>();
        let (done_tx, done_rx) = mpsc::channel();
        let work_rx = Arc::new(Mutex::new(work_rx));
        let mut pool = IoPool {
            work: Some(work_tx),
            done: done_rx,
            threads: Vec::new(),
            spare: Vec::new(),
        };
        for i in 0..POOL_THREADS {
            let file = file.try_clone()?;
            let (work_rx, done_tx) = (work_rx.clone(), done_tx.clone());
            let name = format!("wbcache-io-{i}");
            let t = std::thread::Builder::new()
                .name(name)
                .spawn(move || Self::serve(file, &work_rx, &done_tx))
                .map_err(|e| io::Error::other(format!("{}: I/O thread: {e}", path.display())))?;
            pool.threads.push(t);
        }
        Ok(pool)
    }

    /// A pool thread: does I/O until the device drops the pool (or stops listening).
    fn serve(file: File, work: &Mutex<Receiver<PoolJob>>, done: &Sender<PoolJobDone>) {
        // The edge blocks of an unaligned write are read here, never into the job's buffer,
        // whose middle already holds the data.
        let mut edge = AlignedBuf::new();
        loop {
            // The receiver stays usable after a panic elsewhere: it is only ever received from.
            let next = work.lock().unwrap_or_else(|p| p.into_inner()).recv();
            let Ok(job) = next else { return };
            let PoolJob {
                job,
                op,
                start,
                len,
                mut buf,
            } = job;
            // A panic here must still answer, or the batch would wait for this job forever.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match op {
                PoolOp::Read => file.read_exact_at(buf.get(len), start),
                PoolOp::Write {
                    data_at,
                    data_len,
                    unit,
                } => Self::write_job(
                    &file,
                    &mut edge,
                    buf.get(len),
                    start,
                    data_at,
                    data_len,
                    unit,
                ),
            }))
            .unwrap_or_else(|_| Err(io::Error::other("an I/O thread panicked")));
            let reply = PoolJobDone { job, buf, result };
            if done.send(reply).is_err() {
                return;
            }
        }
    }
}

impl IoPool {
    /// Writes `out` (aligned to `unit`) at `start`, after filling the bytes before `data_at`
    /// and after `data_at + data_len` from the device's current content (read-modify-write of
    /// the partly covered edge blocks; none when the data is aligned).
    fn write_job(
        file: &File,
        edge: &mut AlignedBuf,
        out: &mut [u8],
        start: u64,
        data_at: usize,
        data_len: usize,
        unit: usize,
    ) -> io::Result<()> {
        if data_at != 0 {
            let e = edge.get(unit);
            file.read_exact_at(e, start)?;
            out[..data_at].copy_from_slice(&e[..data_at]);
        }
        let data_end = data_at + data_len;
        if data_end != out.len() {
            let last = out.len() - unit;
            let e = edge.get(unit);
            file.read_exact_at(e, start + last as u64)?;
            out[data_end..].copy_from_slice(&e[data_end - last..]);
        }
        file.write_all_at(out, start)
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        self.work = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub struct FileDevice {
    file: File,
    path: PathBuf,
    sectors: u64,
    direct: bool,
    /// Alignment of offsets and lengths under O_DIRECT (the logical block size); 1 otherwise.
    align: u64,
    bounce: AlignedBuf,
    busy_ns: u64,
    /// Started at the first batch of several stretches.
    pool: Option<IoPool>,
}

// ioctl numbers from <linux/fs.h>: BLKSSZGET = _IO(0x12, 104), BLKGETSIZE64 = _IOR(0x12, 114,
// size_t). libc does not export them.
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

fn open_file(path: &Path, direct: bool, writable: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(writable);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

fn ioctl_u64(file: &File, req: libc::c_ulong) -> io::Result<u64> {
    let mut v: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer, which points to `v`.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), req as _, &mut v as *mut u64) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

fn ioctl_int(file: &File, req: libc::c_ulong) -> io::Result<u64> {
    let mut v: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int to the pointer, which points to `v`.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), req as _, &mut v as *mut libc::c_int) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v as u64)
}

impl FileDevice {
    /// Opens `path` for reading and writing. `min_bytes`: the smallest size the caller accepts.
    pub fn open(path: &Path, mode: IoMode, min_bytes: u64) -> Result<Self, DeviceError> {
        Self::open_with(path, mode, min_bytes, true)
    }

    /// Opens `path` for reading only (the offline `check` and `dump`): every write or flush
    /// through it fails, so an inspection cannot change the device even by mistake, and a
    /// read-only image can be inspected.
    pub fn open_read_only(path: &Path, mode: IoMode) -> Result<Self, DeviceError> {
        Self::open_with(path, mode, 0, false)
    }

    fn open_with(
        path: &Path,
        mode: IoMode,
        min_bytes: u64,
        writable: bool,
    ) -> Result<Self, DeviceError> {
        let p = || path.to_path_buf();
        let meta = std::fs::metadata(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => DeviceError::NotFound { path: p() },
            _ => DeviceError::Open { path: p(), source },
        })?;
        let ft = meta.file_type();
        let is_block = ft.is_block_device();
        if !ft.is_file() && !is_block {
            return Err(DeviceError::NotFileOrBlockDevice { path: p() });
        }
        let mut direct = mode == IoMode::DirectIfSupported;
        let file = match open_file(path, direct, writable) {
            Ok(f) => f,
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                eprintln!(
                    "wbcache: {}: O_DIRECT is not supported here; using buffered I/O",
                    path.display()
                );
                direct = false;
                open_file(path, false, writable)
                    .map_err(|source| DeviceError::Open { path: p(), source })?
            }
            Err(source) => return Err(DeviceError::Open { path: p(), source }),
        };
        let size = if is_block {
            ioctl_u64(&file, BLKGETSIZE64)
                .map_err(|source| DeviceError::Size { path: p(), source })?
        } else {
            meta.len()
        };
        if size < min_bytes.max(DEVICE_GRAIN) {
            return Err(DeviceError::TooSmall {
                path: p(),
                size,
                min: min_bytes.max(DEVICE_GRAIN),
            });
        }
        if size % DEVICE_GRAIN != 0 {
            return Err(DeviceError::NotBlockMultiple { path: p(), size });
        }
        let mut dev = FileDevice {
            file,
            path: p(),
            sectors: size / SECTOR,
            direct,
            align: 1,
            bounce: AlignedBuf::new(),
            busy_ns: 0,
            pool: None,
        };
        if direct {
            dev.align = if is_block {
                let lbs = ioctl_int(&dev.file, BLKSSZGET)
                    .map_err(|source| DeviceError::Size { path: p(), source })?;
                if lbs != 512 && lbs != 4096 {
                    return Err(DeviceError::BlockSize {
                        path: p(),
                        size: lbs,
                    });
                }
                lbs
            } else {
                dev.probe_file_alignment()
            };
            if dev.align == 0 {
                eprintln!(
                    "wbcache: {}: O_DIRECT reads fail at 512 and 4096 bytes; using buffered I/O",
                    path.display()
                );
                dev.file = open_file(path, false, writable)
                    .map_err(|source| DeviceError::Open { path: p(), source })?;
                dev.direct = false;
                dev.align = 1;
            }
        }
        Ok(dev)
    }

    /// The smallest O_DIRECT unit the file's file system accepts (512 or 4096), or 0 if
    /// neither works.
    fn probe_file_alignment(&mut self) -> u64 {
        for unit in [512u64, 4096] {
            let buf = self.bounce.get(unit as usize);
            match self.file.read_exact_at(buf, 0) {
                Ok(()) => return unit,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
                // Some other error: the first real read will report it.
                Err(_) => return unit,
            }
        }
        0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether O_DIRECT is in use.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Alignment the device layer rounds transfers to (1 when buffered).
    pub fn alignment(&self) -> u64 {
        self.align
    }

    fn aligned_range(&self, off: u64, len: u64) -> (u64, u64) {
        let a = self.align;
        (off / a * a, (off + len).div_ceil(a) * a)
    }

    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_scatter(off, &mut [buf])
    }

    /// Reads the bytes at `off` into `bufs`, one after the other (contiguous on the device), in
    /// one read of the covering aligned range.
    fn read_scatter(&mut self, off: u64, bufs: &mut [&mut [u8]]) -> io::Result<()> {
        if let [buf] = bufs {
            if !self.direct {
                return self.file.read_exact_at(buf, off);
            }
        }
        let len: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        let (start, end) = self.aligned_range(off, len);
        let bounce = self.bounce.get((end - start) as usize);
        self.file.read_exact_at(bounce, start)?;
        let mut at = (off - start) as usize;
        for buf in bufs.iter_mut() {
            buf.copy_from_slice(&bounce[at..at + buf.len()]);
            at += buf.len();
        }
        Ok(())
    }

    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        self.write_gather(off, &[data])
    }

    /// Writes `pieces`, one after the other, at `off` in one write of the covering aligned
    /// range.
    fn write_gather(&mut self, off: u64, pieces: &[&[u8]]) -> io::Result<()> {
        if let [data] = pieces {
            if !self.direct {
                return self.file.write_all_at(data, off);
            }
        }
        let len: u64 = pieces.iter().map(|p| p.len() as u64).sum();
        let a = self.align;
        let (start, end) = self.aligned_range(off, len);
        let bounce = self.bounce.get((end - start) as usize);
        // Read-modify-write of the partly covered first and last aligned blocks.
        if off != start {
            self.file.read_exact_at(&mut bounce[..a as usize], start)?;
        }
        let data_end = off + len;
        if data_end != end && (end - a != start || off == start) {
            let at = (end - a - start) as usize;
            self.file
                .read_exact_at(&mut bounce[at..at + a as usize], end - a)?;
        }
        let mut at = (off - start) as usize;
        for p in pieces {
            bounce[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        self.file.write_all_at(bounce, start)
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

fn io_err(op: IoOp, sector: u64, len: usize, e: io::Error) -> IoError {
    IoError::new(op, sector, (len as u64) / SECTOR, e.to_string())
}

/// Splits a batch, given as `(sector, bytes)` per request in order, into stretches of
/// consecutive requests that are contiguous on the device (each starts at the sector where the
/// previous one ends, so no two in a stretch overlap) and together at most `MAX_MERGED_BYTES`
/// (a larger request stands alone). Returns the index ranges, in order, covering the batch.
fn merge_runs(reqs: impl Iterator<Item = (u64, usize)>) -> Vec<std::ops::Range<usize>> {
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    let (mut next_sector, mut bytes) = (0u64, 0usize);
    for (i, (sector, len)) in reqs.enumerate() {
        match runs.last_mut() {
            Some(run) if sector == next_sector && bytes + len <= MAX_MERGED_BYTES => {
                run.end = i + 1;
                bytes += len;
            }
            _ => {
                runs.push(i..i + 1);
                bytes = len;
            }
        }
        next_sector = sector + (len as u64) / SECTOR;
    }
    runs
}

/// Which of the given aligned ranges `[start, end)` share bytes with another one. Those must be
/// written in their batch order, one after the other: the later write wins where they overlap,
/// and the read-modify-writes of a shared edge block must not race.
fn sharing_aligned_blocks(ranges: &[(u64, u64)]) -> Vec<bool> {
    // Sorted by start, overlapping ranges form runs (clusters), each range beginning before the
    // furthest end so far in its run; every range of a run of more than one is shared.
    let mut by_start: Vec<usize> = (0..ranges.len()).collect();
    by_start.sort_unstable_by_key(|&i| ranges[i].0);
    let mut shared = vec![false; ranges.len()];
    let mut mark_cluster = |cluster: &[usize]| {
        if cluster.len() > 1 {
            cluster.iter().for_each(|&i| shared[i] = true);
        }
    };
    let (mut cluster_from, mut furthest_end) = (0, 0);
    for (k, &i) in by_start.iter().enumerate() {
        let (start, end) = ranges[i];
        if k > cluster_from && start < furthest_end {
            furthest_end = furthest_end.max(end);
        } else {
            mark_cluster(&by_start[cluster_from..k]);
            (cluster_from, furthest_end) = (k, end);
        }
    }
    mark_cluster(&by_start[cluster_from..]);
    shared
}

impl BlockDevice for FileDevice {
    fn size_sectors(&self) -> u64 {
        self.sectors
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        check_access(IoOp::Read, self.sectors, sector, buf.len())?;
        self.timed(|d| d.read_at(sector * SECTOR, buf))
            .map_err(|e| io_err(IoOp::Read, sector, buf.len(), e))
    }

    fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
        check_access(IoOp::Write, self.sectors, sector, data.len())?;
        self.timed(|d| {
            d.write_at(sector * SECTOR, data)?;
            if fua {
                d.file.sync_data()?;
            }
            Ok(())
        })
        .map_err(|e| io_err(IoOp::Write, sector, data.len(), e))
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.timed(|d| d.file.sync_data())
            .map_err(|e| io_err(IoOp::Flush, 0, 0, e))
    }

    /// In order, contiguous stretches merged (see the module doc); one `fdatasync` at the end
    /// if any request is FUA, which makes each FUA request durable before the batch returns,
    /// as `write` would. Every request is checked before any is written. An error names the
    /// first request of the transfer that failed and the transfer's length (for the final
    /// sync: the first FUA request).
    fn write_batch(&mut self, writes: &[WriteReq<'_>]) -> Result<(), IoError> {
        for w in writes {
            check_access(IoOp::Write, self.sectors, w.sector, w.data.len())?;
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
            io_err(IoOp::Write, reqs[0].sector, len, e)
        })?;
        if let Some(w) = writes.iter().find(|w| w.fua) {
            self.timed(|d| d.file.sync_data())
                .map_err(|e| io_err(IoOp::Write, w.sector, w.data.len(), e))?;
        }
        Ok(())
    }

    /// Contiguous stretches merged into one read each, several stretches read concurrently
    /// (see the module doc). Every request is checked before any is read; an error names the
    /// first request of the first transfer in batch order that failed and that transfer's
    /// length.
    fn read_batch(&mut self, reads: &mut [ReadReq<'_>]) -> Result<(), IoError> {
        for r in reads.iter() {
            check_access(IoOp::Read, self.sectors, r.sector, r.buf.len())?;
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
            io_err(IoOp::Read, reqs[0].sector, len, e)
        })
    }
}

impl std::fmt::Debug for FileDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDevice")
            .field("path", &self.path)
            .field("sectors", &self.sectors)
            .field("direct", &self.direct)
            .field("align", &self.align)
            .finish_non_exhaustive()
    }
}

impl BusyTime for FileDevice {
    fn busy_ns(&self) -> u64 {
        self.busy_ns
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn temp_file(bytes: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(bytes).unwrap();
        f
    }

    #[test]
    fn typed_errors_for_missing_small_and_odd_sized_files() {
        let e = FileDevice::open(Path::new("/nonexistent/x"), IoMode::Buffered, 0);
        assert!(matches!(e, Err(DeviceError::NotFound { .. })), "{e:?}");
        let f = temp_file(4096 + 512);
        let e = FileDevice::open(f.path(), IoMode::Buffered, 0);
        assert!(
            matches!(e, Err(DeviceError::NotBlockMultiple { .. })),
            "{e:?}"
        );
        let f = temp_file(4096);
        let e = FileDevice::open(f.path(), IoMode::Buffered, 8192);
        assert!(matches!(e, Err(DeviceError::TooSmall { .. })), "{e:?}");
        let f = temp_file(0);
        let e = FileDevice::open(f.path(), IoMode::Buffered, 0);
        assert!(matches!(e, Err(DeviceError::TooSmall { .. })), "{e:?}");
        let d = tempfile::tempdir().unwrap();
        let e = FileDevice::open(d.path(), IoMode::Buffered, 0);
        assert!(
            matches!(e, Err(DeviceError::NotFileOrBlockDevice { .. })),
            "{e:?}"
        );
    }

    /// Sub-block writes at every offset round-trip, with the device layer forced to a
    /// 4096-byte alignment (the read-modify-write path) and in its natural mode.
    fn sub_block_writes_round_trip(force_align: Option<u64>) {
        let f = temp_file(64 * 1024);
        let mut d = FileDevice::open(f.path(), IoMode::DirectIfSupported, 0).unwrap();
        if let Some(a) = force_align {
            if !d.direct {
                eprintln!("no O_DIRECT on this file system; testing the RMW path buffered");
                d.direct = true; // the RMW path works on buffered files too
            }
            d.align = a;
        }
        let mut model = vec![0u8; 64 * 1024];
        for (i, (sector, count)) in [
            (0u64, 1usize),
            (1, 2),
            (7, 3),
            (8, 8),
            (13, 1),
            (15, 17),
            (100, 4),
        ]
        .into_iter()
        .enumerate()
        {
            let x = i as u8 + 1;
            let data: Vec<u8> = (0..count * 512).map(|i| x.wrapping_add(i as u8)).collect();
            d.write(sector, &data, x % 2 == 0).unwrap();
            model[sector as usize * 512..][..data.len()].copy_from_slice(&data);
        }
        d.flush().unwrap();
        let mut all = vec![0u8; 64 * 1024];
        d.read(0, &mut all).unwrap();
        assert!(all == model, "device content differs from the model");
        let mut one = [0u8; 512];
        d.read(14, &mut one).unwrap();
        assert_eq!(&one[..], &model[14 * 512..15 * 512]);
        assert!(d.read(128, &mut one).is_err(), "past the end");
        drop(d);
        assert!(std::fs::read(f.path()).unwrap() == model, "file content");
    }

    #[test]
    fn sub_block_writes_round_trip_with_4k_alignment() {
        sub_block_writes_round_trip(Some(4096));
    }

    #[test]
    fn sub_block_writes_round_trip_natural() {
        sub_block_writes_round_trip(None);
    }

    /// A device over a fresh zeroed file of `bytes`, forced to `force_align` as in
    /// `sub_block_writes_round_trip`.
    fn device(bytes: u64, force_align: Option<u64>) -> (tempfile::NamedTempFile, FileDevice) {
        let f = temp_file(bytes);
        let mut d = FileDevice::open(f.path(), IoMode::DirectIfSupported, 0).unwrap();
        if let Some(a) = force_align {
            d.direct = true; // the RMW path works on buffered files too
            d.align = a;
        }
        (f, d)
    }

    /// The in-memory model of a batch: requests applied in order, later ones win.
    fn apply(model: &mut [u8], writes: &[(u64, Vec<u8>, bool)]) {
        for (sector, data, _) in writes {
            model[*sector as usize * 512..][..data.len()].copy_from_slice(data);
        }
    }

    /// Bytes no earlier write could have left in place: a function of the write's number.
    fn pattern(n: usize, sectors: usize) -> Vec<u8> {
        (0..sectors * 512)
            .map(|i| (n as u8).wrapping_mul(31) ^ (i as u8) ^ (i >> 9) as u8)
            .collect()
    }

    /// Reads `ranges` (sector, sectors) in one `read_batch` and compares each with the model.
    fn check_reads(d: &mut FileDevice, model: &[u8], ranges: &[(u64, usize)]) {
        let mut bufs: Vec<Vec<u8>> = ranges.iter().map(|&(_, n)| vec![0xee; n * 512]).collect();
        let mut reqs: Vec<ReadReq<'_>> = ranges
            .iter()
            .zip(bufs.iter_mut())
            .map(|(&(sector, _), buf)| ReadReq { sector, buf })
            .collect();
        d.read_batch(&mut reqs).unwrap();
        for (&(sector, n), buf) in ranges.iter().zip(&bufs) {
            let want = &model[sector as usize * 512..][..n * 512];
            assert!(
                buf == want,
                "read_batch of {n} at {sector} differs from the model"
            );
        }
    }

    /// Writes `writes` as one batch (and the model), then checks the whole device against the
    /// model, through `read` and through a `read_batch` of the written ranges.
    fn write_and_check(d: &mut FileDevice, model: &mut [u8], writes: &[(u64, Vec<u8>, bool)]) {
        let reqs: Vec<WriteReq<'_>> = writes
            .iter()
            .map(|(sector, data, fua)| WriteReq {
                sector: *sector,
                data,
                fua: *fua,
            })
            .collect();
        d.write_batch(&reqs).unwrap();
        apply(model, writes);
        let mut all = vec![0u8; model.len()];
        d.read(0, &mut all).unwrap();
        assert!(all == model, "device content differs from the model");
        let ranges: Vec<(u64, usize)> = writes
            .iter()
            .map(|(s, data, _)| (*s, data.len() / 512))
            .collect();
        check_reads(d, model, &ranges);
    }

    fn batches_round_trip(force_align: Option<u64>) {
        const BYTES: usize = 16 << 20;
        let (f, mut d) = device(BYTES as u64, force_align);
        let mut model = vec![0u8; BYTES];
        let n = std::cell::Cell::new(0);
        let w = |sector: u64, sectors: usize, fua: bool| {
            n.set(n.get() + 1);
            (sector, pattern(n.get(), sectors), fua)
        };
        let cases: Vec<Vec<(u64, Vec<u8>, bool)>> = vec![
            // Contiguous whole blocks (one merged write), then a gap and another stretch.
            (0..8)
                .map(|i| w(64 + 8 * i, 8, false))
                .chain((0..3).map(|i| w(256 + 8 * i, 8, false)))
                .collect(),
            // Non-contiguous, not sorted.
            vec![
                w(800, 8, false),
                w(40, 8, true),
                w(1000, 8, false),
                w(8, 8, false),
            ],
            // Mixed sizes, contiguous from an unaligned sector, with FUA in the middle.
            vec![
                w(3, 1, false),
                w(4, 3, false),
                w(7, 8, true),
                w(15, 16, false),
                w(31, 2, false),
                w(33, 1, false),
                w(50, 5, false),
            ],
            // Overlapping: later requests win, also over a stretch that was merged.
            vec![
                w(2000, 8, false),
                w(2008, 8, false),
                w(2004, 8, false),
                w(2006, 1, false),
                w(2001, 2, false),
                w(2003, 1, false),
            ],
            // Sub-block dirty runs of one block and across a block boundary (the engine's
            // writeback of partly dirty blocks), each alone and contiguous with the next.
            vec![
                w(3001, 2, false),
                w(3005, 1, false),
                w(3007, 2, false),
                w(3009, 3, false),
                w(3014, 1, false),
            ],
            // More than MAX_MERGED_BYTES contiguous, from an unaligned sector: the split lands
            // mid-block, so the second write's read-modify-write reads the first one's data.
            (0..(MAX_MERGED_BYTES / 4096 + 40))
                .map(|i| w(4097 + 8 * i as u64, 8, false))
                .collect(),
            // One request larger than MAX_MERGED_BYTES between two it is contiguous with.
            vec![
                w(20_000 - 1, 1, false),
                w(20_000, MAX_MERGED_BYTES / 512 + 9, false),
                w(20_000 + MAX_MERGED_BYTES as u64 / 512 + 9, 3, true),
            ],
            vec![],
        ];
        for writes in &cases {
            write_and_check(&mut d, &mut model, writes);
        }
        // Reads: contiguous, unaligned, overlapping, repeated, across merged-write edges.
        check_reads(
            &mut d,
            &model,
            &[
                (62, 2),
                (64, 8),
                (72, 1),
                (73, 7),
                (80, 100),
                (70, 20),
                (70, 20),
                (3000, 1),
                (3001, 14),
                (4097, MAX_MERGED_BYTES / 512 + 5),
                (4097 + MAX_MERGED_BYTES as u64 / 512 + 5, 3),
            ],
        );
        // A bad request fails the batch before anything is written, naming that request.
        let data = pattern(999, 8);
        let bad = [
            WriteReq {
                sector: 100,
                data: &data,
                fua: false,
            },
            WriteReq {
                sector: (BYTES / 512) as u64 - 4,
                data: &data,
                fua: false,
            },
        ];
        let e = d.write_batch(&bad).unwrap_err();
        assert_eq!((e.op, e.sector), (IoOp::Write, (BYTES / 512) as u64 - 4));
        let mut buf = vec![0u8; 512];
        let e = d
            .read_batch(&mut [ReadReq {
                sector: (BYTES / 512) as u64,
                buf: &mut buf,
            }])
            .unwrap_err();
        assert_eq!((e.op, e.sector), (IoOp::Read, (BYTES / 512) as u64));
        d.flush().unwrap();
        drop(d);
        assert!(std::fs::read(f.path()).unwrap() == model, "file content");
    }

    #[test]
    fn batches_round_trip_with_4k_alignment() {
        batches_round_trip(Some(4096));
    }

    #[test]
    fn batches_round_trip_natural() {
        batches_round_trip(None);
    }

    /// Reads of 4 KiB at `sectors`, one `read_batch`; returns the buffers or the error.
    fn read_blocks(d: &mut FileDevice, sectors: &[u64]) -> Result<Vec<Vec<u8>>, IoError> {
        let mut bufs = vec![vec![0u8; 4096]; sectors.len()];
        let mut reqs: Vec<ReadReq<'_>> = sectors
            .iter()
            .zip(bufs.iter_mut())
            .map(|(&sector, buf)| ReadReq { sector, buf })
            .collect();
        d.read_batch(&mut reqs)?;
        Ok(bufs)
    }

    fn concurrent_reads_fail_as_in_order(force_align: Option<u64>) {
        const BYTES: u64 = 256 * 1024;
        let (f, mut d) = device(BYTES, force_align);
        let model: Vec<u8> = (0..BYTES as usize).map(|i| (i / 512 * 7) as u8).collect();
        d.write(0, &model, false).unwrap();
        // Scattered blocks, more stretches than read threads: all read concurrently.
        let sectors: Vec<u64> = (0..3 * POOL_THREADS as u64)
            .map(|i| (i * 5 % 64) * 8)
            .collect();
        let bufs = read_blocks(&mut d, &sectors).unwrap();
        assert!(
            d.pool.is_some(),
            "a batch of several stretches uses the pool"
        );
        for (&sector, buf) in sectors.iter().zip(&bufs) {
            assert!(
                buf[..] == model[sector as usize * 512..][..4096],
                "at {sector}"
            );
        }
        // The file shrinks behind the device's back: reads of its second half now fail (end of
        // file), while the device still accepts them.
        f.as_file().set_len(BYTES / 2).unwrap();
        let half = BYTES / 2 / 512;
        let batch = [0, half + 40, 16, half + 8, 100, half + 80, 48];
        let e = read_blocks(&mut d, &batch).unwrap_err();
        assert_eq!(
            (e.op, e.sector, e.sectors),
            (IoOp::Read, half + 40, 8),
            "the first failing stretch in batch order: {e}"
        );
        // Contiguous with a failing block: the merged stretch fails as a whole.
        let e = read_blocks(&mut d, &[8, half - 8, half, 200]).unwrap_err();
        assert_eq!((e.sector, e.sectors), (half - 8, 16), "{e}");
        // The pool still serves the next batch.
        let ok = [8, 64, 24, 160];
        let bufs = read_blocks(&mut d, &ok).unwrap();
        for (&sector, buf) in ok.iter().zip(&bufs) {
            assert!(
                buf[..] == model[sector as usize * 512..][..4096],
                "at {sector}"
            );
        }
    }

    #[test]
    fn concurrent_reads_fail_as_in_order_with_4k_alignment() {
        concurrent_reads_fail_as_in_order(Some(4096));
    }

    #[test]
    fn concurrent_reads_fail_as_in_order_natural() {
        concurrent_reads_fail_as_in_order(None);
    }

    /// Scattered writes, more stretches than pool threads, some of them sub-block (with a forced
    /// 4096-byte alignment: read-modify-write on the pool threads) and some sharing an aligned
    /// block with another (written in batch order on the calling thread), with FUA: the file
    /// ends as the model says, and the pool did the work.
    fn concurrent_writes_round_trip(force_align: Option<u64>) {
        const BYTES: usize = 1 << 20;
        let (f, mut d) = device(BYTES as u64, force_align);
        let mut model = vec![0u8; BYTES];
        let mut n = 0;
        let mut w = |sector: u64, sectors: usize, fua: bool| {
            n += 1;
            (sector, pattern(n, sectors), fua)
        };
        let mut writes: Vec<(u64, Vec<u8>, bool)> = (0..3 * POOL_THREADS as u64)
            .map(|i| w((i * 37 % 200) * 8 + i % 3, 8 - (i % 3) as usize, i == 5))
            .collect();
        // Sub-block runs of one block (the engine's writeback of a partly dirty block), and an
        // overlap, among the scattered ones.
        writes.insert(4, w(1601, 2, false));
        writes.insert(9, w(1605, 1, false));
        writes.insert(12, w(1607, 1, false));
        writes.insert(2, w(1700, 16, false));
        writes.push(w(1704, 4, false));
        write_and_check(&mut d, &mut model, &writes);
        assert!(
            d.pool.is_some(),
            "a batch of several stretches uses the pool"
        );
        drop(d);
        assert!(std::fs::read(f.path()).unwrap() == model, "file content");
    }

    #[test]
    fn concurrent_writes_round_trip_with_4k_alignment() {
        concurrent_writes_round_trip(Some(4096));
    }

    #[test]
    fn concurrent_writes_round_trip_natural() {
        concurrent_writes_round_trip(None);
    }

    /// Write batch errors name the first failing stretch in batch order, also when the writes
    /// ran concurrently, and the pool still serves the next batch. With a forced 4096-byte
    /// alignment a sub-block write past the end of the (shrunk) file fails in its
    /// read-modify-write, on a pool thread.
    #[test]
    fn concurrent_writes_fail_as_in_order() {
        const BYTES: u64 = 256 * 1024;
        let (f, mut d) = device(BYTES, Some(4096));
        let data = pattern(1, 1);
        let batch = |sectors: &[u64]| -> Vec<WriteReq<'_>> {
            sectors
                .iter()
                .map(|&sector| WriteReq {
                    sector,
                    data: &data,
                    fua: true,
                })
                .collect()
        };
        d.write_batch(&batch(&[1, 17, 33, 49])).unwrap();
        assert!(
            d.pool.is_some(),
            "a batch of several stretches uses the pool"
        );
        f.as_file().set_len(BYTES / 2).unwrap();
        let half = BYTES / 2 / 512;
        let e = d
            .write_batch(&batch(&[1, half + 41, 17, half + 9, 33, half + 81]))
            .unwrap_err();
        assert_eq!(
            (e.op, e.sector, e.sectors),
            (IoOp::Write, half + 41, 1),
            "the first failing stretch in batch order: {e}"
        );
        // Sharing an aligned block, so written in order on the calling thread: still judged in
        // batch order against the pooled ones.
        let e = d
            .write_batch(&batch(&[1, 3, half + 9, half + 11, 33]))
            .unwrap_err();
        assert_eq!((e.sector, e.sectors), (half + 9, 1), "{e}");
        let e = d
            .write_batch(&batch(&[half + 41, 1, 3, half + 9]))
            .unwrap_err();
        assert_eq!((e.sector, e.sectors), (half + 41, 1), "{e}");
        d.write_batch(&batch(&[9, 25, 41])).unwrap();
        let mut buf = vec![0u8; 512];
        for sector in [1, 3, 9, 17, 25, 33, 41, 49] {
            d.read(sector, &mut buf).unwrap();
            assert!(buf == data, "at {sector}");
        }
    }

    #[test]
    fn sharing_aligned_blocks_finds_every_overlapping_range() {
        let s = sharing_aligned_blocks;
        assert_eq!(s(&[]), Vec::<bool>::new());
        assert_eq!(s(&[(0, 4096)]), vec![false]);
        // Touching is not sharing.
        assert_eq!(s(&[(4096, 8192), (0, 4096)]), vec![false, false]);
        assert_eq!(
            s(&[(8192, 12288), (0, 4096), (4096, 8192), (0, 4096)]),
            vec![false, true, false, true]
        );
        // A long range joins later ones that only overlap it, not each other.
        assert_eq!(
            s(&[
                (20480, 24576),
                (0, 16384),
                (12288, 16384),
                (4096, 8192),
                (16384, 20480)
            ]),
            vec![false, true, true, true, false]
        );
    }

    #[test]
    fn failed_merged_write_names_its_first_request() {
        let f = temp_file(64 * 1024);
        let mut d = FileDevice::open_read_only(f.path(), IoMode::DirectIfSupported).unwrap();
        let data = [1u8; 4096];
        let reqs: Vec<WriteReq<'_>> = [16u64, 24, 32]
            .iter()
            .map(|&sector| WriteReq {
                sector,
                data: &data,
                fua: false,
            })
            .collect();
        let e = d.write_batch(&reqs).unwrap_err();
        assert_eq!((e.op, e.sector, e.sectors), (IoOp::Write, 16, 24), "{e}");
    }

    #[test]
    fn merge_runs_joins_only_contiguous_neighbours_up_to_the_cap() {
        let m = |reqs: &[(u64, usize)]| merge_runs(reqs.iter().copied());
        assert_eq!(m(&[]), vec![]);
        assert_eq!(m(&[(0, 4096), (8, 512), (9, 512)]), vec![0..3]);
        assert_eq!(
            m(&[(8, 4096), (0, 4096), (8, 4096), (17, 512), (18, 512)]),
            vec![0..1, 1..3, 3..5]
        );
        // The same sector again is an overlap, not contiguity.
        assert_eq!(m(&[(0, 512), (0, 512)]), vec![0..1, 1..2]);
        let cap = MAX_MERGED_BYTES;
        assert_eq!(
            m(&[
                (0, cap / 2),
                (cap as u64 / 1024, cap / 2),
                (cap as u64 / 512, 512)
            ]),
            vec![0..2, 2..3]
        );
        assert_eq!(
            m(&[(0, 512), (1, 2 * cap), (1 + 4 * cap as u64 / 512, 512)]).len(),
            3
        );
    }

    /// xorshift64*: the random test needs no dependency and replays from its seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Many random batches: contiguous chains, scattered and overlapping requests of 1 to 24
    /// sectors, FUA now and then; after each batch the written ranges and a random set of
    /// ranges read back as the model says.
    fn random_batches(force_align: Option<u64>, seed: u64) {
        const SECTORS: u64 = 2048;
        let (f, mut d) = device(SECTORS * 512, force_align);
        let mut model = vec![0u8; SECTORS as usize * 512];
        let mut rng = Rng(seed);
        let mut n = 0;
        for _ in 0..300 {
            let mut writes = Vec::new();
            let mut next = rng.below(SECTORS);
            for _ in 0..rng.below(40) {
                let sectors = 1 + rng.below(24);
                let sector = match rng.below(4) {
                    // Continue the chain (the common writeback case), or start anywhere.
                    0..=1 => next,
                    2 => rng.below(SECTORS),
                    _ => next.saturating_sub(1 + rng.below(16)), // overlap what came before
                };
                let sector = sector.min(SECTORS - sectors);
                n += 1;
                writes.push((sector, pattern(n, sectors as usize), rng.below(16) == 0));
                next = sector + sectors;
            }
            write_and_check(&mut d, &mut model, &writes);
            let reads: Vec<(u64, usize)> = (0..rng.below(24))
                .map(|_| {
                    let sectors = 1 + rng.below(40);
                    (rng.below(SECTORS - sectors), sectors as usize)
                })
                .collect();
            check_reads(&mut d, &model, &reads);
        }
        drop(d);
        assert!(std::fs::read(f.path()).unwrap() == model, "file content");
    }

    #[test]
    fn random_batches_with_4k_alignment() {
        for seed in 1..=3u64 {
            random_batches(Some(4096), seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
    }

    #[test]
    fn random_batches_natural() {
        for seed in 1..=3u64 {
            random_batches(None, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) + 1);
        }
    }
}
