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

    /// Performs a run of plain writes, each starting where the one before ends, with one
    /// result per write. The default performs them one by one; a file does one transfer.
    fn perform_write_run(&mut self, writes: &[&IoKind]) -> Vec<IoResult> {
        writes.iter().map(|k| self.perform(k)).collect()
    }
}

impl Perform for crate::filedev::handle::FileHandle {
    fn perform(&mut self, kind: &IoKind) -> IoResult {
        crate::filedev::handle::FileHandle::perform(self, kind)
    }

    fn perform_write_run(&mut self, writes: &[&IoKind]) -> Vec<IoResult> {
        crate::filedev::handle::FileHandle::perform_write_run(self, writes)
    }
}

/// The most bytes one merged run of writes carries: a sequential O_DIRECT write gets little
/// faster per byte past this, and each I/O thread's bounce buffer grows to it at most.
pub const MAX_RUN_BYTES: usize = 1 << 20;

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
        let Some(first) = next else { return };
        let run = take_write_run(first, s);
        let t = Instant::now();
        if let [(op, _)] = &run[..] {
            let r = handle.perform(&op.kind);
            add_busy(s, t);
            let (_, done) = run.into_iter().next().expect("one");
            done.complete(r);
            continue;
        }
        let kinds: Vec<&IoKind> = run.iter().map(|(op, _)| &op.kind).collect();
        let results = handle.perform_write_run(&kinds);
        add_busy(s, t);
        assert_eq!(results.len(), run.len(), "one result per write of a run");
        for ((_, done), r) in run.into_iter().zip(results) {
            done.complete(r);
        }
    }
}

fn add_busy(s: &Shared, since: Instant) {
    s.busy_ns
        .fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

/// `first`, and if it is a plain write, the plain writes queued right behind it that continue
/// it on the device (a writeback batch is handed out sorted by address): one transfer then
/// carries them all. Taken from the front of the queue only, so the FIFO order stays.
fn take_write_run(first: (IoOp, Done), s: &Shared) -> Vec<(IoOp, Done)> {
    if first.0.kind.plain_write_span().is_none() {
        return vec![first];
    }
    let mut q = lock(&s.queue);
    super::gather_write_run(first, &mut q.work, |(op, _)| &op.kind, usize::MAX)
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::events::{Event, Events};
    use engine::{DeviceRole, IoData, IoDone, OpId};
    use std::sync::Mutex as StdMutex;
    use std::time::Duration;

    /// Per call: (sector, bytes) of each write it carried.
    type Calls = Arc<StdMutex<Vec<Vec<(u64, usize)>>>>;

    /// Records every call: which writes went out as one run, and their data in order.
    struct Recorder {
        calls: Calls,
        gate: Arc<StdMutex<()>>,
    }

    impl Perform for Recorder {
        fn perform(&mut self, kind: &IoKind) -> IoResult {
            let _held = self.gate.lock().unwrap();
            let call = match kind {
                IoKind::Write { sector, data, .. } => vec![(*sector, data.len())],
                _ => vec![],
            };
            self.calls.lock().unwrap().push(call);
            Ok(match kind {
                IoKind::Read { len, .. } => IoDone::Read(vec![0; *len]),
                IoKind::Write { .. } => IoDone::Write,
                IoKind::Flush => IoDone::Flush,
            })
        }

        fn perform_write_run(&mut self, writes: &[&IoKind]) -> Vec<IoResult> {
            let call = writes
                .iter()
                .map(|k| match k {
                    IoKind::Write { sector, data, .. } => (*sector, data.len()),
                    _ => panic!("a run holds writes only"),
                })
                .collect();
            self.calls.lock().unwrap().push(call);
            writes.iter().map(|_| Ok(IoDone::Write)).collect()
        }
    }

    fn write(id: u64, sector: u64, sectors: usize, fua: bool) -> IoOp {
        IoOp {
            id: OpId(id),
            role: DeviceRole::Backing,
            kind: IoKind::Write {
                sector,
                data: IoData::from_vec(vec![id as u8; sectors * 512]),
                fua,
            },
        }
    }

    /// Plain writes queued one after the other on the device go out as one run; a gap, a FUA
    /// write, a flush or the size cap ends a run; every write still completes exactly once.
    #[test]
    fn contiguous_plain_writes_queued_together_go_out_as_one_run() {
        let events = Arc::new(Events::new(8));
        let calls = Arc::new(StdMutex::new(Vec::new()));
        let gate = Arc::new(StdMutex::new(()));
        let held = gate.lock().unwrap();
        let rec = Recorder {
            calls: calls.clone(),
            gate: gate.clone(),
        };
        let pool = Pooled::start(vec![rec], 1 << 20, "test").unwrap();
        let submit = |op: IoOp| {
            let done = Done::new(events.clone(), op.id, op.role);
            pool.submit(op, done);
        };
        // A flush holds the only thread at the gate while the rest queue up behind it.
        submit(IoOp {
            id: OpId(0),
            role: DeviceRole::Backing,
            kind: IoKind::Flush,
        });
        while !pool.shared.queue.lock().unwrap().work.is_empty() {
            std::thread::yield_now();
        }
        submit(write(1, 0, 8, false));
        submit(write(2, 8, 8, false));
        submit(write(3, 16, 1, false));
        submit(write(4, 24, 8, false)); // a gap: a new run
        submit(write(5, 32, 8, true)); // FUA: alone
        submit(write(6, 40, 8, false));
        let cap = MAX_RUN_BYTES / 512;
        submit(write(7, 48, cap, false)); // over the cap with 6: a new run
        drop(held);
        let mut done = Vec::new();
        while done.len() < 8 {
            match events.pop_timeout(Duration::from_secs(10)) {
                Event::Done(op, r) => {
                    assert!(r.is_ok());
                    done.push(op.0);
                }
                _ => panic!("an event other than a completion"),
            }
        }
        done.sort_unstable();
        assert_eq!(
            done,
            (0..8).collect::<Vec<_>>(),
            "each completes exactly once"
        );
        let calls = calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            vec![
                vec![],
                vec![(0, 4096), (8, 4096), (16, 512)],
                vec![(24, 4096)],
                vec![(32, 4096)],
                vec![(40, 4096)],
                vec![(48, MAX_RUN_BYTES)],
            ]
        );
    }
}
