//! `Uring`: an [`AsyncDevice`] over one file through io_uring. `submit` puts the operation on
//! the submission ring and enters the kernel without waiting; one reaper thread waits for
//! completions and completes each operation's [`Done`]. Up to `QUEUE_DEPTH` operations are in
//! the kernel at once; more wait in a queue (bounded by the engine's own limits on operations
//! out) and go in as completions free room, so the engine thread never waits on the device.
//!
//! Only what one SQE expresses goes to the ring: aligned reads and writes (FUA as
//! `RWF_DSYNC`, one SQE rather than a write and a linked fsync) and flushes (`fdatasync`). An
//! unaligned transfer under O_DIRECT needs a read-modify-write, and a short transfer needs
//! the rest done; both go to a small [`Pooled`] of `FileHandle`s that already does exactly
//! that, so there is one copy of that logic. Its handles share one read-modify-write lock, and
//! every unaligned write goes there, so two read-modify-writes never race; an aligned write
//! on the ring never shares an aligned block with one in flight there (it would overlap it,
//! which the engine never does).
//!
//! The kernel owns an operation's memory from its SQE to its CQE, so the operation, with the
//! buffer its SQE points into, lives in a slab keyed by the SQE's `user_data` until then.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use engine::{Access, IoDone, IoError, IoKind, IoOp};
use io_uring::{opcode, squeue, types, IoUring};

use super::pool::Pooled;
use super::{AsyncDevice, Done};
use crate::filedev::aligned_buf::AlignedBuf;
use crate::filedev::handle::err;
use crate::filedev::FileDevice;

/// Operations in the kernel at once per device: well past the 16 of the thread pool and the
/// queue depths the benchmarks use, small enough that the completion ring (twice the
/// submission ring) can never overflow.
pub const QUEUE_DEPTH: usize = 128;
/// Submission ring slots: more than `QUEUE_DEPTH`, so the wake-up at drop always has one.
const RING_ENTRIES: u32 = 2 * QUEUE_DEPTH as u32;
/// Threads of the fallback pool: it sees only unaligned or short transfers, which are rare
/// (the engine's I/O is block-aligned but for sub-block writeback of partly dirty blocks).
const FALLBACK_THREADS: usize = 4;
/// The reaper looks at the ring at least this often even without a completion: SQEs a
/// submit left behind (the kernel said EAGAIN or EBUSY) go in then rather than never.
const REAP_TIMEOUT: Duration = Duration::from_millis(50);
/// `user_data` of the no-op that wakes the reaper at drop.
const WAKE: u64 = u64::MAX;
/// Aligned buffers kept for the next operations, and the largest kept: a steady stream of
/// O_DIRECT reads and copied writes then allocates nothing.
const KEPT_BUFFERS: usize = 32;
const KEPT_BUFFER_BYTES: usize = 1 << 20;

/// The memory an operation's SQE points into.
enum Memory {
    /// A flush, or a write whose own data is aligned enough to go out as it is.
    None,
    /// A buffered read's result (no alignment needed).
    Vec(Vec<u8>),
    /// A read's landing place or a write's data copied, aligned for O_DIRECT.
    Aligned(AlignedBuf),
}

/// An operation between `submit` and its completion.
struct Flight {
    op: IoOp,
    done: Done,
    mem: Memory,
}

/// What one SQE carries: one operation, or a run of contiguous plain writes gathered into
/// one `writev` (their iovecs live here, beside the operations whose memory they point into).
enum Entry {
    One(Flight),
    Run(Vec<Flight>, Vec<libc::iovec>),
}

// SAFETY: the iovecs only point into memory the entry's own flights own; nothing else
// shares them.
unsafe impl Send for Entry {}

struct State {
    slab: Vec<Option<Entry>>,
    free: Vec<usize>,
    in_flight: usize,
    /// Ready, waiting for room in the ring.
    waiting: VecDeque<Flight>,
    closed: bool,
    /// Why the ring no longer works; operations then go to the fallback pool.
    broken: Option<String>,
    busy_since: Option<Instant>,
    busy_ns: u64,
}

struct Shared {
    ring: IoUring,
    /// The descriptor every SQE names; it lives as long as the ring.
    file: File,
    state: Mutex<State>,
    spare: Mutex<Vec<AlignedBuf>>,
    sectors: u64,
    align: u64,
    fallback: Pooled,
}

pub struct Uring {
    shared: Arc<Shared>,
    reaper: Option<JoinHandle<()>>,
}

/// A ring of `entries`, refused where waits cannot time out (`IORING_FEAT_EXT_ARG`, Linux 5.11),
/// which the reaper needs.
fn build_ring(entries: u32) -> io::Result<IoUring> {
    let ring = IoUring::new(entries)?;
    if !ring.params().is_feature_ext_arg() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kernel's io_uring has no wait timeout (IORING_FEAT_EXT_ARG, Linux 5.11)",
        ));
    }
    Ok(ring)
}

/// Whether io_uring works here: the kernel may lack it (ENOSYS), forbid it (EPERM from a
/// seccomp filter or `kernel.io_uring_disabled`) or be too old.
pub fn probe() -> io::Result<()> {
    build_ring(8).map(drop)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What an operation touches: (access, sector, bytes).
fn extent(kind: &IoKind) -> (Access, u64, usize) {
    let (sector, len) = kind.extent();
    (kind.access(), sector, len)
}

impl Uring {
    /// A ring over `dev`, with a small pool of its handles for what the ring does not take.
    pub fn start(dev: &FileDevice, name: &str) -> io::Result<Self> {
        let sectors = engine::BlockDevice::size_sectors(dev);
        let fallback = Pooled::start(
            dev.handles(FALLBACK_THREADS)?,
            sectors,
            &format!("{name}-rmw"),
        )?;
        Self::new(
            dev.try_clone_file()?,
            sectors,
            dev.alignment(),
            fallback,
            name,
        )
    }

    /// A ring over `file` (`align` its O_DIRECT alignment, 1 if buffered), handing what it
    /// does not take to `fallback`.
    fn new(file: File, sectors: u64, align: u64, fallback: Pooled, name: &str) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            ring: build_ring(RING_ENTRIES)?,
            file,
            state: Mutex::new(State {
                slab: Vec::new(),
                free: Vec::new(),
                in_flight: 0,
                waiting: VecDeque::new(),
                closed: false,
                broken: None,
                busy_since: None,
                busy_ns: 0,
            }),
            spare: Mutex::new(Vec::new()),
            sectors,
            align: align.max(1),
            fallback,
        });
        let s = shared.clone();
        let reaper = thread::Builder::new()
            .name(format!("{name}-uring"))
            .spawn(move || reap(&s))?;
        Ok(Uring {
            shared,
            reaper: Some(reaper),
        })
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Whether the ring takes `kind` as it is: O_DIRECT wants offset and length aligned.
    fn fits_ring(&self, kind: &IoKind) -> bool {
        let (_, sector, len) = extent(kind);
        matches!(kind, IoKind::Flush)
            || (len > 0
                && u32::try_from(len).is_ok()
                && (sector * 512) % self.align == 0
                && len as u64 % self.align == 0)
    }

    fn aligned_buf(&self, len: usize) -> AlignedBuf {
        let mut b = lock(&self.spare).pop().unwrap_or_else(AlignedBuf::new);
        b.get(len);
        b
    }

    fn recycle(&self, mem: Memory) {
        if let Memory::Aligned(b) = mem {
            let mut spare = lock(&self.spare);
            if b.cap <= KEPT_BUFFER_BYTES && spare.len() < KEPT_BUFFERS {
                spare.push(b);
            }
        }
    }

    /// The operation with the memory its SQE will point into (copying a write's data only
    /// where O_DIRECT needs it aligned and it is not).
    fn prepare(&self, op: IoOp, done: Done) -> Flight {
        let mem = match &op.kind {
            IoKind::Read { len, .. } if self.align == 1 => Memory::Vec(vec![0; *len]),
            IoKind::Read { len, .. } => Memory::Aligned(self.aligned_buf(*len)),
            IoKind::Write { data, .. } if data.as_slice().as_ptr() as u64 % self.align != 0 => {
                let mut b = self.aligned_buf(data.len());
                b.get(data.len()).copy_from_slice(data.as_slice());
                Memory::Aligned(b)
            }
            IoKind::Write { .. } | IoKind::Flush => Memory::None,
        };
        Flight { op, done, mem }
    }

    /// The SQE of `f`, pointing into memory `f` owns (heap memory: moving `f` into the slab
    /// does not move it).
    fn sqe(&self, f: &mut Flight, key: u64) -> squeue::Entry {
        let fd = types::Fd(self.file.as_raw_fd());
        let entry = match &f.op.kind {
            IoKind::Read { sector, len } => {
                let buf = match &mut f.mem {
                    Memory::Vec(v) => v.as_mut_ptr(),
                    Memory::Aligned(b) => b.get(*len).as_mut_ptr(),
                    Memory::None => unreachable!("a read always has a buffer"),
                };
                opcode::Read::new(fd, buf, *len as u32)
                    .offset(sector * 512)
                    .build()
            }
            IoKind::Write { sector, data, fua } => {
                let len = data.len();
                let buf = match &mut f.mem {
                    Memory::Aligned(b) => b.get(len).as_ptr(),
                    _ => data.as_slice().as_ptr(),
                };
                opcode::Write::new(fd, buf, len as u32)
                    .offset(sector * 512)
                    .rw_flags(if *fua { libc::RWF_DSYNC } else { 0 })
                    .build()
            }
            IoKind::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        };
        entry.user_data(key)
    }

    /// Moves waiting operations into the ring while there is room, and enters the kernel
    /// (without waiting) if any went in.
    fn pump(&self, st: &mut State) {
        let before = st.in_flight;
        {
            // SAFETY: only ever called with the state lock held, so no other
            // `SubmissionQueue` of this ring exists.
            let mut sq = unsafe { self.ring.submission_shared() };
            while st.in_flight < QUEUE_DEPTH && !sq.is_full() {
                let Some(mut e) = take_run(&mut st.waiting) else {
                    break;
                };
                let key = st.free.pop().unwrap_or_else(|| {
                    st.slab.push(None);
                    st.slab.len() - 1
                });
                let sqe = match &mut e {
                    Entry::One(f) => self.sqe(f, key as u64),
                    Entry::Run(run, iov) => self.writev_sqe(run, iov, key as u64),
                };
                st.slab[key] = Some(e);
                // SAFETY: the memory `sqe` points into is owned by the slab entry `key`,
                // which stays there until the reaper takes it at the entry's completion.
                if unsafe { sq.push(&sqe) }.is_err() {
                    let e = st.slab[key].take().expect("just put");
                    st.free.push(key);
                    match e {
                        Entry::One(f) => st.waiting.push_front(f),
                        Entry::Run(run, _) => {
                            for f in run.into_iter().rev() {
                                st.waiting.push_front(f);
                            }
                        }
                    }
                    break;
                }
                st.in_flight += 1;
            }
        }
        if st.in_flight > before {
            if before == 0 {
                st.busy_since = Some(Instant::now());
            }
            // An error leaves the SQEs in the ring; the reaper's next wait submits them.
            let _ = self.ring.submit();
        }
    }

    /// The `writev` SQE of a run: one iovec per write, each pointing where `sqe` would.
    fn writev_sqe(
        &self,
        run: &mut [Flight],
        iov: &mut Vec<libc::iovec>,
        key: u64,
    ) -> squeue::Entry {
        let sector = match &run[0].op.kind {
            IoKind::Write { sector, .. } => *sector,
            _ => unreachable!("a run holds writes only"),
        };
        iov.clear();
        for f in run.iter_mut() {
            let IoKind::Write { data, .. } = &f.op.kind else {
                unreachable!("a run holds writes only")
            };
            let len = data.len();
            let base = match &mut f.mem {
                Memory::Aligned(b) => b.get(len).as_ptr(),
                _ => data.as_slice().as_ptr(),
            };
            iov.push(libc::iovec {
                iov_base: base as *mut libc::c_void,
                iov_len: len,
            });
        }
        let fd = types::Fd(self.file.as_raw_fd());
        opcode::Writev::new(fd, iov.as_ptr(), iov.len() as u32)
            .offset(sector * 512)
            .build()
            .user_data(key)
    }

    /// Delivers the result of an entry whose CQE said `res`.
    fn finish_entry(&self, e: Entry, res: i32) {
        let run = match e {
            Entry::One(f) => return self.finish(f, res),
            Entry::Run(run, _) => run,
        };
        let total: usize = run.iter().map(|f| extent(&f.op.kind).2).sum();
        for f in run {
            if res >= 0 && res as usize >= total {
                let len = extent(&f.op.kind).2 as i32;
                self.finish(f, len);
            } else if res >= 0 {
                // Short: each write is done again whole by the pool, as a short single write.
                self.recycle(f.mem);
                self.fallback.submit(f.op, f.done);
            } else {
                self.finish(f, res);
            }
        }
    }

    /// Delivers the result of `f`, whose CQE said `res`.
    fn finish(&self, f: Flight, res: i32) {
        let Flight { op, done, mem } = f;
        let (access, sector, len) = extent(&op.kind);
        if res < 0 {
            self.recycle(mem);
            let e = io::Error::from_raw_os_error(-res);
            return done.complete(Err(err(access, sector, len, e)));
        }
        if access != Access::Flush && (res as usize) < len {
            // A short transfer: the pool's handles do it again whole, looping as pread and
            // pwrite need and reporting end of file the way the pool always does.
            self.recycle(mem);
            return self.fallback.submit(op, done);
        }
        let result = match (op.kind, mem) {
            (IoKind::Read { .. }, Memory::Vec(v)) => IoDone::Read(v),
            (IoKind::Read { len, .. }, Memory::Aligned(mut b)) => {
                let v = b.get(len).to_vec();
                self.recycle(Memory::Aligned(b));
                IoDone::Read(v)
            }
            (IoKind::Write { .. }, mem) => {
                self.recycle(mem);
                IoDone::Write
            }
            (IoKind::Flush, _) => IoDone::Flush,
            (IoKind::Read { .. }, Memory::None) => unreachable!("a read always has a buffer"),
        };
        done.complete(Ok(result));
    }

    /// The ring stopped working with operations in it: each completes with an error, and its
    /// memory is leaked rather than freed, since the kernel may still be using it. Waiting
    /// operations and later ones go to the fallback pool.
    fn abandon(&self, why: String) {
        let (flights, waiting) = {
            let mut st = self.state();
            st.broken = Some(why.clone());
            st.in_flight = 0;
            let flights: Vec<Flight> = st
                .slab
                .iter_mut()
                .filter_map(Option::take)
                .flat_map(|e| match e {
                    Entry::One(f) => vec![f],
                    Entry::Run(run, iov) => {
                        // The kernel may still read the iovecs as well.
                        std::mem::forget(iov);
                        run
                    }
                })
                .collect();
            (flights, std::mem::take(&mut st.waiting))
        };
        for f in flights {
            let (access, sector, len) = extent(&f.op.kind);
            std::mem::forget(f.mem);
            let e = IoError::new(access, sector, (len / 512) as u64, why.clone());
            f.done.complete(Err(e));
        }
        for f in waiting {
            self.recycle(f.mem);
            self.fallback.submit(f.op, f.done);
        }
    }
}

/// The most writes one gathered run carries: well under `IOV_MAX` (its bytes are bounded as
/// the pool's, `MAX_RUN_BYTES`).
const MAX_RUN_WRITES: usize = 256;

/// The next SQE's worth of waiting operations: the first, with the plain writes that follow
/// it back to back, so a stream of queued writes goes out as one transfer, as the pool merges
/// them. The engine never has two overlapping writes out (rule R0), so gathering changes no
/// outcome.
fn take_run(waiting: &mut VecDeque<Flight>) -> Option<Entry> {
    let first = waiting.pop_front()?;
    let mut run = super::gather_write_run(first, waiting, |f| &f.op.kind, MAX_RUN_WRITES);
    Some(if run.len() == 1 {
        Entry::One(run.pop().expect("one"))
    } else {
        Entry::Run(run, Vec::new())
    })
}

/// The reaper: waits for completions, completes them, refills the ring; ends once the
/// device is closed and nothing is in flight or waiting.
fn reap(s: &Shared) {
    let ts = types::Timespec::from(REAP_TIMEOUT);
    let args = types::SubmitArgs::new().timespec(&ts);
    let mut finished = Vec::new();
    loop {
        match s.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) => {}
            Err(e) => return s.abandon(format!("io_uring wait failed: {e}")),
        }
        let stop = {
            let mut st = s.state();
            // SAFETY: only this thread reads the completion ring.
            for cqe in unsafe { s.ring.completion_shared() } {
                let key = cqe.user_data();
                if key == WAKE {
                    continue;
                }
                if let Some(f) = st.slab.get_mut(key as usize).and_then(Option::take) {
                    st.free.push(key as usize);
                    st.in_flight -= 1;
                    finished.push((f, cqe.result()));
                }
            }
            if st.in_flight == 0 {
                if let Some(t) = st.busy_since.take() {
                    st.busy_ns += t.elapsed().as_nanos() as u64;
                }
            }
            s.pump(&mut st);
            st.closed && st.in_flight == 0 && st.waiting.is_empty()
        };
        for (e, res) in finished.drain(..) {
            s.finish_entry(e, res);
        }
        if stop {
            return;
        }
    }
}

impl AsyncDevice for Uring {
    fn size_sectors(&self) -> u64 {
        self.shared.sectors
    }

    fn submit(&self, op: IoOp, done: Done) {
        let s = &*self.shared;
        let (access, sector, len) = extent(&op.kind);
        if access != Access::Flush {
            if let Err(e) = engine::device::check_access(access, s.sectors, sector, len) {
                return done.complete(Err(e));
            }
        }
        if !s.fits_ring(&op.kind) {
            return s.fallback.submit(op, done);
        }
        let f = s.prepare(op, done);
        let mut st = s.state();
        if st.broken.is_some() {
            drop(st);
            s.recycle(f.mem);
            return s.fallback.submit(f.op, f.done);
        }
        // Queued only: `kick` (once the engine handed out all it had) enters the kernel for
        // the lot, and the reaper's next look (within REAP_TIMEOUT) if nobody kicks.
        st.waiting.push_back(f);
    }

    fn kick(&self) {
        let s = &*self.shared;
        let mut st = s.state();
        s.pump(&mut st);
    }

    fn busy_ns(&self) -> u64 {
        let st = self.shared.state();
        let now = st.busy_since.map_or(0, |t| t.elapsed().as_nanos() as u64);
        st.busy_ns + now + self.shared.fallback.busy_ns()
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        let s = &*self.shared;
        {
            let mut st = s.state();
            st.closed = true;
            // SAFETY: under the state lock, as in `pump`.
            let mut sq = unsafe { s.ring.submission_shared() };
            let wake = opcode::Nop::new().build().user_data(WAKE);
            // SAFETY: a no-op points into no memory. If the ring is full the reaper still
            // looks again within REAP_TIMEOUT.
            let _ = unsafe { sq.push(&wake) };
        }
        let _ = s.ring.submit();
        if let Some(t) = self.reaper.take() {
            if t.join().is_err() {
                // The reaper died: what it left in flight still completes, once.
                s.abandon("the io_uring reaper thread died".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, Events};
    use crate::filedev::IoMode;
    use engine::{DeviceRole, IoData, OpId};

    fn flight(events: &Arc<Events>, id: u64, kind: IoKind) -> Flight {
        let op = IoOp {
            id: OpId(id),
            role: DeviceRole::Backing,
            kind,
        };
        let done = Done::new(events.clone(), OpId(id), DeviceRole::Backing);
        Flight {
            op,
            done,
            mem: Memory::None,
        }
    }

    fn write(sector: u64, blocks: usize, fua: bool) -> IoKind {
        IoKind::Write {
            sector,
            data: IoData::from_vec(vec![0; blocks * 4096]),
            fua,
        }
    }

    /// How `take_run` splits a queue: plain writes back to back gather, up to 1 MiB; a gap, a
    /// FUA write, a read or a flush ends a run and goes alone.
    #[test]
    fn back_to_back_plain_writes_gather_into_runs_of_at_most_1_mib() {
        let events = Arc::new(Events::new(8));
        let kinds = [
            write(0, 1, false),
            write(8, 1, false),
            write(16, 2, false),
            write(40, 1, false), // a gap
            write(48, 1, true),  // FUA
            write(56, 1, false),
            IoKind::Flush,
            write(64, 200, false),
            write(1664, 100, false), // would pass 1 MiB
            IoKind::Read {
                sector: 0,
                len: 4096,
            },
        ];
        let mut q: VecDeque<Flight> = kinds
            .into_iter()
            .enumerate()
            .map(|(i, k)| flight(&events, i as u64, k))
            .collect();
        let mut sizes = Vec::new();
        while let Some(e) = take_run(&mut q) {
            sizes.push(match &e {
                Entry::One(_) => 1,
                Entry::Run(run, _) => run.len(),
            });
            let flights = match e {
                Entry::One(f) => vec![f],
                Entry::Run(run, _) => run,
            };
            for f in flights {
                f.done.complete(Ok(IoDone::Write));
            }
        }
        assert_eq!(sizes, [3, 1, 1, 1, 1, 1, 1, 1]);
    }

    /// A kernel-side failure (a write on a descriptor open for reading: EBADF in the CQE)
    /// completes the operation with the error the pool would report, and the ring, not the
    /// fallback, carried it.
    #[test]
    fn an_error_in_a_completion_is_reported_like_the_pool_does() {
        if let Err(e) = probe() {
            assert!(
                std::env::var_os("WBCACHE_TEST_WITHOUT_URING").is_some(),
                "io_uring refused here ({e}); set WBCACHE_TEST_WITHOUT_URING=1 to skip on purpose"
            );
            eprintln!("io_uring refused ({e}): skipped, as WBCACHE_TEST_WITHOUT_URING asks");
            return;
        }
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let dev = FileDevice::open(f.path(), DeviceRole::Cache, IoMode::Buffered, 0).unwrap();
        let fallback = Pooled::start(dev.handles(1).unwrap(), 2048, "test-rmw").unwrap();
        let read_only = File::open(f.path()).unwrap();
        let ring = Uring::new(read_only, 2048, 1, fallback, "test").unwrap();
        let events = Arc::new(Events::new(8));
        let op = IoOp {
            id: OpId(7),
            role: DeviceRole::Cache,
            kind: IoKind::Write {
                sector: 16,
                data: IoData::from_vec(vec![1; 4096]),
                fua: false,
            },
        };
        ring.submit(op, Done::new(events.clone(), OpId(7), DeviceRole::Cache));
        ring.kick();
        let Event::Done(OpId(7), Err(e)) = events.pop_timeout(Duration::from_secs(10)) else {
            panic!("the write did not fail");
        };
        let want = err(
            Access::Write,
            16,
            4096,
            io::Error::from_raw_os_error(libc::EBADF),
        );
        assert_eq!(e, want);
        assert_eq!(ring.shared.fallback.busy_ns(), 0, "the ring carried it");
        drop(ring);
        assert!(matches!(
            events.pop_timeout(Duration::from_millis(50)),
            Event::Timeout
        ));
    }
}
