//! `IoPool`: the threads that run a batch's stretches concurrently (see the `filedev` module
//! doc for how read and write batches use them).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::aligned_buf::AlignedBuf;
use super::POOL_THREADS;

/// What a pool thread does with a [`PoolJob`].
#[derive(Clone, Copy)]
pub(super) enum PoolOp {
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
pub(super) struct PoolJob {
    /// The job's place in its batch (the order errors are judged in).
    pub(super) job: usize,
    pub(super) op: PoolOp,
    pub(super) start: u64,
    pub(super) len: usize,
    pub(super) buf: AlignedBuf,
}

/// A finished [`PoolJob`]: its buffer comes back (with the data, for a read) or the error.
pub(super) struct PoolJobDone {
    pub(super) job: usize,
    pub(super) buf: AlignedBuf,
    pub(super) result: io::Result<()>,
}

/// The threads that run a batch's stretches concurrently. Dropping it ends them.
pub(super) struct IoPool {
    /// `None` only while dropping: closing the channel is what ends the threads.
    pub(super) work: Option<Sender<PoolJob>>,
    pub(super) done: Receiver<PoolJobDone>,
    threads: Vec<JoinHandle<()>>,
    /// Bounce buffers not lent out.
    pub(super) spare: Vec<AlignedBuf>,
}

impl IoPool {
    /// Starts `POOL_THREADS` threads doing I/O on their own handles of `file`.
    pub(super) fn start(file: &File, path: &Path) -> io::Result<Self> {
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
