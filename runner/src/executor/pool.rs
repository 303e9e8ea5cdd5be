//! `Pooled`: an [`AsyncDevice`] over handles that perform one operation at a time (a file's
//! `FileHandle`s), each on a thread of its own. Operations wait in one FIFO; the threads take
//! them as they come free, so up to one operation per thread is in flight on the device. At
//! drop the queue closes, the threads finish what was queued and are joined.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use engine::{IoKind, IoOp, IoResult};

use super::{AsyncDevice, Done};
use crate::sync::{thread, Arc, Condvar, Mutex};

/// Performs one operation at a time (one per I/O thread).
pub trait Perform: Send + 'static {
    fn perform(&mut self, kind: &IoKind) -> IoResult;
}

impl Perform for crate::filedev::handle::FileHandle {
    fn perform(&mut self, kind: &IoKind) -> IoResult {
        crate::filedev::handle::FileHandle::perform(self, kind)
    }
}

struct Queue {
    work: VecDeque<(IoOp, Done)>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    busy_ns: AtomicU64,
}

pub struct Pooled {
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<()>>,
    sectors: u64,
}

fn lock(m: &Mutex<Queue>) -> crate::sync::MutexGuard<'_, Queue> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pooled {
    /// Starts one thread per handle.
    pub fn start<P: Perform>(handles: Vec<P>, sectors: u64, name: &str) -> std::io::Result<Self> {
        assert!(!handles.is_empty(), "a pool needs a thread");
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                work: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            busy_ns: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        for (i, h) in handles.into_iter().enumerate() {
            let s = shared.clone();
            let t = spawn_named(format!("{name}-io{i}"), move || serve(h, &s))?;
            threads.push(t);
        }
        Ok(Pooled {
            shared,
            threads,
            sectors,
        })
    }
}

#[cfg(not(loom))]
fn spawn_named(
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new().name(name).spawn(f)
}

#[cfg(loom)]
fn spawn_named(
    _name: String,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<thread::JoinHandle<()>> {
    Ok(thread::spawn(f))
}

/// One I/O thread: takes operations until the queue is closed and empty.
fn serve<P: Perform>(mut handle: P, s: &Shared) {
    loop {
        let next = {
            let mut q = lock(&s.queue);
            loop {
                if let Some(w) = q.work.pop_front() {
                    break Some(w);
                }
                if q.closed {
                    break None;
                }
                q = s.ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let Some((op, done)) = next else { return };
        let t = Instant::now();
        let r = handle.perform(&op.kind);
        s.busy_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        done.complete(r);
    }
}

impl AsyncDevice for Pooled {
    fn size_sectors(&self) -> u64 {
        self.sectors
    }

    fn submit(&self, op: IoOp, done: Done) {
        let mut q = lock(&self.shared.queue);
        assert!(!q.closed, "no submission after the pool stopped");
        q.work.push_back((op, done));
        drop(q);
        self.shared.ready.notify_one();
    }

    fn busy_ns(&self) -> u64 {
        self.shared.busy_ns.load(Ordering::Relaxed)
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.ready.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
