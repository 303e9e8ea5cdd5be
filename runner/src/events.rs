//! The engine thread's one input queue, in two lanes: jobs (client requests, status and
//! messages, bounded: producers block when it is full, which is the back-pressure on clients)
//! and device completions (never blocking: an I/O thread must never wait on the engine
//! thread; their number is bounded by the operations in flight). Built on `sync::{Mutex,
//! Condvar}` (std, or loom's under `--cfg loom`).
//!
//! Completions are taken before jobs: they free buffers and slots, and a FLUSH waiting for one
//! should not wait behind new requests. After `close`, jobs are refused but completions are
//! still delivered: a shutdown with operations in flight hears every one of them.

use std::collections::VecDeque;
use std::time::Duration;

use engine::{IoResult, OpId};

use crate::engine_thread::Job;
use crate::queue::Closed;
use crate::sync::{Condvar, Mutex, MutexGuard};

/// What the engine thread takes next.
pub enum Event {
    Done(OpId, IoResult),
    Job(Job),
    /// Nothing arrived in time (never under loom, whose condvars do not time out).
    Timeout,
    /// No more jobs will come (told once; completions may still arrive).
    Closed,
}

struct Lanes {
    jobs: VecDeque<Job>,
    done: VecDeque<(OpId, IoResult)>,
    closed: bool,
    /// `Closed` was handed out (once; afterwards only completions or timeouts).
    closed_told: bool,
}

pub struct Events {
    lanes: Mutex<Lanes>,
    /// Signalled when anything arrives or the queue closes.
    arrived: Condvar,
    /// Signalled when a job is taken (room for a blocked producer).
    room: Condvar,
    job_capacity: usize,
}

fn relock<G>(r: std::sync::LockResult<G>) -> G {
    // Each operation is one push or pop: a panic while holding the lock leaves the lanes
    // consistent, so a poisoned lock is still usable.
    r.unwrap_or_else(|p| p.into_inner())
}

impl Events {
    pub fn new(job_capacity: usize) -> Self {
        assert!(
            job_capacity > 0,
            "a job lane of capacity 0 could pass nothing"
        );
        Events {
            lanes: Mutex::new(Lanes {
                jobs: VecDeque::new(),
                done: VecDeque::new(),
                closed: false,
                closed_told: false,
            }),
            arrived: Condvar::new(),
            room: Condvar::new(),
            job_capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lanes> {
        relock(self.lanes.lock())
    }

    /// Queues a job, waiting while the job lane is full; refused after `close`.
    pub fn push_job(&self, job: Job) -> Result<(), Closed<Job>> {
        let mut l = self.lock();
        loop {
            if l.closed {
                return Err(Closed(job));
            }
            if l.jobs.len() < self.job_capacity {
                l.jobs.push_back(job);
                drop(l);
                self.arrived.notify_one();
                return Ok(());
            }
            l = relock(self.room.wait(l));
        }
    }

    /// Delivers a completion; never blocks, accepted after `close` too.
    pub fn push_done(&self, op: OpId, result: IoResult) {
        self.lock().done.push_back((op, result));
        self.arrived.notify_one();
    }

    /// No more jobs: producers get `Closed`; the consumer drains what is queued.
    pub fn close(&self) {
        self.lock().closed = true;
        self.arrived.notify_all();
        self.room.notify_all();
    }

    /// The next event without waiting, `None` when both lanes are empty (and not closed).
    pub fn try_pop(&self) -> Option<Event> {
        let mut l = self.lock();
        self.take(&mut l)
    }

    /// The next event, waiting up to `timeout` for one.
    pub fn pop_timeout(&self, timeout: Duration) -> Event {
        let mut l = self.lock();
        if let Some(e) = self.take(&mut l) {
            return e;
        }
        #[cfg(not(loom))]
        {
            // A wake-up may find nothing: a producer notifies after unlocking, so its event
            // may already have been taken, and condvars wake spuriously. Wait out the rest.
            let deadline = std::time::Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Event::Timeout;
                }
                l = relock(self.arrived.wait_timeout(l, left)).0;
                if let Some(e) = self.take(&mut l) {
                    return e;
                }
            }
        }
        #[cfg(loom)]
        {
            let _ = timeout;
            // loom's condvars do not time out: wait for something to arrive.
            loop {
                l = relock(self.arrived.wait(l));
                if let Some(e) = self.take(&mut l) {
                    return e;
                }
            }
        }
    }

    fn take(&self, l: &mut Lanes) -> Option<Event> {
        if let Some((op, r)) = l.done.pop_front() {
            return Some(Event::Done(op, r));
        }
        if let Some(job) = l.jobs.pop_front() {
            self.room.notify_one();
            return Some(Event::Job(job));
        }
        if l.closed && !l.closed_told {
            l.closed_told = true;
            return Some(Event::Closed);
        }
        None
    }
}
