//! The per-connection request window: how a connection's requests go to the engine thread and
//! their replies come back. The reader side calls [`Inflight::acquire`] before it reads a
//! payload and `Inflight::submit` (or [`Inflight::refuse`]) per request; the writer side
//! calls [`Inflight::next_reply`] / [`Inflight::sent`]; [`Inflight::finish`] waits until every
//! request taken is answered. Socket-free, so the loom tests (`runner/tests/loom.rs`) drive
//! exactly this code.
//!
//! Bounds: at most `budget` units (bytes) in flight, each request counting at least
//! `min_units`, so at most `budget / min_units` replies can be queued at once — the reply
//! queue has that capacity, which is why the engine thread's reply push never blocks.

use engine::Error;

use crate::engine_thread::{EngineReq, Job, Outcome};
use crate::events::Events;
use crate::nbd::proto;
use crate::queue::{BoundedQueue, Semaphore};
use crate::sync::Arc;

/// A reply ready to send, with the units it gives back once sent.
#[derive(Debug)]
pub struct Reply {
    pub handle: u64,
    pub errno: u32,
    pub data: Option<Vec<u8>>,
    pub units: u64,
}

pub struct Inflight {
    replies: BoundedQueue<Reply>,
    budget: Semaphore,
    min_units: u64,
}

/// The NBD error for an engine error; `write`: the request writes (ENOSPC beyond the end).
pub fn errno_of(e: &Error, write: bool) -> u32 {
    match e {
        Error::OutOfRange { .. } if write => proto::ENOSPC,
        Error::OutOfRange { .. } | Error::Unaligned { .. } => proto::EINVAL,
        _ => proto::EIO,
    }
}

impl Inflight {
    pub fn new(budget: u64, min_units: u64) -> Arc<Self> {
        assert!(min_units > 0 && budget >= min_units);
        Arc::new(Inflight {
            replies: BoundedQueue::new((budget / min_units) as usize),
            budget: Semaphore::new(budget),
            min_units,
        })
    }

    /// Units a request of `len` bytes holds while in flight.
    pub fn units_of(&self, len: u64) -> u64 {
        len.max(self.min_units)
    }

    /// Reserves room for a request of `len` bytes, waiting while the window is full.
    /// Returns the units to pass to `submit` / `refuse` (or `release` if the request is
    /// abandoned before either).
    pub fn acquire(&self, len: u64) -> u64 {
        let units = self.units_of(len);
        self.budget.acquire(units);
        units
    }

    /// Gives back units of a request that will never be answered (the client vanished).
    pub fn release(&self, units: u64) {
        self.budget.release(units);
    }

    fn push(&self, r: Reply) {
        // Never blocks and never fails while the reader runs: capacity covers every unit
        // holder, and the queue is closed only by `finish`, after the reader stopped.
        let _ = self.replies.push(r);
    }

    /// Answers a request without running it (refused, or the server is shutting down).
    pub fn refuse(&self, handle: u64, errno: u32, units: u64) {
        self.push(Reply {
            handle,
            errno,
            data: None,
            units,
        });
    }

    /// Queues `req` for the engine thread; its reply comes back through this window. If the
    /// engine's queue is closed (shutdown), the request is answered ESHUTDOWN unstarted.
    pub fn submit(this: &Arc<Self>, jobs: &Events, req: EngineReq, handle: u64, units: u64) {
        let writes = matches!(
            req,
            EngineReq::Write { .. } | EngineReq::Trim { .. } | EngineReq::WriteZeroes { .. }
        );
        let me = this.clone();
        let job = Job {
            req,
            reply: Box::new(move |outcome| {
                let (errno, data) = match outcome {
                    Outcome::Done => (0, None),
                    Outcome::Data(d) => (0, Some(d)),
                    Outcome::Failed(e) => (errno_of(&e, writes), None),
                    Outcome::Status(_) => (proto::EIO, None),
                };
                me.push(Reply {
                    handle,
                    errno,
                    data,
                    units,
                });
            }),
        };
        if jobs.push_job(job).is_err() {
            this.refuse(handle, proto::ESHUTDOWN, units);
        }
    }

    /// The next reply to send; `None` once finished and drained.
    pub fn next_reply(&self) -> Option<Reply> {
        self.replies.pop()
    }

    /// The reply was sent (or dropped on a dead socket): its units are free again.
    pub fn sent(&self, r: &Reply) {
        self.budget.release(r.units);
    }

    /// Called by the reader when it stops: waits until every request taken was answered and
    /// its reply handed to the writer, then lets the writer end.
    pub fn finish(&self) {
        self.budget.wait_idle();
        self.replies.close();
    }
}
