//! loom checks of the runner's concurrency, on the runner's own code: `sync.rs` swaps in
//! loom's primitives under `--cfg loom`, so `inflight`, `events`, the executor's thread pool
//! and `engine_thread::run` below are exactly what the binary runs. Behind them sits a small
//! fake cache with the engine's interface (requests in, device operations out, replies when
//! their operations complete) and a fake device with a volatile write cache, so the
//! properties checked are the runner's:
//!
//! - a FLUSH reply means every write replied before the FLUSH was sent is durable, whichever
//!   connection it came from; a FUA reply means that write is durable;
//! - the request window (reader, writer, engine thread, I/O thread) never deadlocks and
//!   answers every request exactly once;
//! - shutdown racing requests with operations in flight: each request is answered (done or
//!   ESHUTDOWN), the engine thread ends only after every operation completed, and every
//!   acknowledged write is durable;
//! - an operation a device abandons (its `Done` dropped) still reaches the engine, as an
//!   error: the client hears EIO and the engine thread ends.
//!
//! Run: `cargo xtask loom` (RUSTFLAGS="--cfg loom", release, its own target dir).

#![cfg(loom)]

use std::collections::{BTreeMap, VecDeque};

use engine::{
    Access, DeviceRole, Error, IoData, IoDone, IoError, IoKind, IoOp, IoResult, OpId, Reply, ReqId,
    Request, Status, Tunables,
};
use runner::core::Machine;
use runner::engine_thread::{self, Clock, EngineReq};
use runner::events::Events;
use runner::executor::pool::{Perform, Pooled};
use runner::executor::{AsyncDevice, Done, Executor};
use runner::inflight::{Inflight, Reply as WireReply};
use runner::sync::{thread, Arc, Mutex};

/// A device with a volatile write cache: writes land in `volatile`, FUA writes and flushes
/// make them durable.
#[derive(Default)]
struct Disk {
    volatile: BTreeMap<u64, u8>,
    durable: BTreeMap<u64, u8>,
}

struct DiskHandle(Arc<Mutex<Disk>>);

impl Perform for DiskHandle {
    fn perform(&mut self, kind: &IoKind) -> IoResult {
        let mut d = self.0.lock().unwrap();
        Ok(match kind {
            IoKind::Read { sector, len } => {
                IoDone::Read(vec![*d.volatile.get(sector).unwrap_or(&0); *len])
            }
            IoKind::Write { sector, data, fua } => {
                d.volatile.insert(*sector, data[0]);
                if *fua {
                    d.durable.insert(*sector, data[0]);
                }
                IoDone::Write
            }
            IoKind::Flush => {
                d.durable = d.volatile.clone();
                IoDone::Flush
            }
        })
    }
}

/// What a completion answers.
enum Pending {
    Request(ReqId),
    ShutdownFlush,
}

/// The engine's interface with the simplest contract that is still the engine's: each
/// request becomes one operation on the cache device and is answered when it completes (a
/// FLUSH is a device flush, covering every write completed before it, rule R1); shutdown is
/// one more flush. A failed operation kills the cache.
#[derive(Default)]
struct FakeMachine {
    next_op: u64,
    ops: VecDeque<IoOp>,
    replies: VecDeque<Reply>,
    pending: BTreeMap<OpId, Pending>,
    shutdown_flushed: bool,
    shutting_down: bool,
    dead: Option<String>,
}

impl FakeMachine {
    fn issue(&mut self, kind: IoKind, p: Pending) {
        self.next_op += 1;
        let id = OpId(self.next_op);
        self.pending.insert(id, p);
        self.ops.push_back(IoOp {
            id,
            role: DeviceRole::Cache,
            kind,
        });
    }
}

fn write_op(sector: u64, v: u8, fua: bool) -> IoKind {
    IoKind::Write {
        sector,
        data: IoData::from_vec(vec![v]),
        fua,
    }
}

impl Machine for FakeMachine {
    fn submit(&mut self, id: ReqId, req: Request) {
        if let Some(cause) = &self.dead {
            let cause = cause.clone();
            self.replies.push_back(Reply {
                id,
                result: Err(Error::Dead { cause }),
            });
            return;
        }
        let kind = match req {
            Request::Read { sector, len } => IoKind::Read { sector, len },
            Request::Write { sector, data, fua } => write_op(sector, data[0], fua),
            Request::Flush => IoKind::Flush,
            Request::Discard { sector, .. } => write_op(sector, 0, false),
            Request::WriteZeroes { sector, fua, .. } => write_op(sector, 0, fua),
            Request::Drain => unreachable!("NBD has no drain; the runner never sends one"),
        };
        self.issue(kind, Pending::Request(id));
    }
    fn poll_io(&mut self) -> Option<IoOp> {
        self.ops.pop_front()
    }
    fn complete(&mut self, op: OpId, result: IoResult) {
        let p = self
            .pending
            .remove(&op)
            .expect("a completion of an issued op");
        if let Err(e) = &result {
            self.dead.get_or_insert_with(|| e.to_string());
        }
        match p {
            Pending::Request(id) => {
                let result = match result {
                    Ok(IoDone::Read(d)) => Ok(Some(d)),
                    Ok(_) => Ok(None),
                    Err(source) => Err(Error::Io {
                        role: DeviceRole::Cache,
                        source,
                    }),
                };
                self.replies.push_back(Reply { id, result });
            }
            Pending::ShutdownFlush => self.shutdown_flushed = result.is_ok(),
        }
    }
    fn poll_reply(&mut self) -> Option<Reply> {
        self.replies.pop_front()
    }
    fn tick(&mut self, _now_ms: u64) {}
    fn set_backing_load(&mut self, _percent: u8) {}
    fn start_due_steps(&mut self) {}
    fn status(&self) -> Status {
        fake_status()
    }
    fn message(&mut self, _msg: &str) -> Result<(), Error> {
        Ok(())
    }
    fn dead_cause(&self) -> Option<String> {
        self.dead.clone()
    }
    fn begin_shutdown(&mut self) {
        assert!(!self.shutting_down, "Closed is told once");
        self.shutting_down = true;
        if self.dead.is_none() {
            self.issue(IoKind::Flush, Pending::ShutdownFlush);
        }
    }
    fn shutdown_complete(&self) -> bool {
        self.shutdown_flushed && self.pending.is_empty()
    }
    fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

fn fake_status() -> Status {
    Status {
        cursor: 0,
        nr_cache_blocks: 0,
        nr_segments: 0,
        current_id: 0,
        last_flushed_id: 0,
        last_writeback_id: 0,
        nr_dirty_cache_blocks: 0,
        stat: [0; 16],
        nr_partial_flushed: 0,
        tunables: Tunables::defaults(10),
        segment_size_order: 10,
        nr_rambuf_pool: 1,
        last_sealed_id: 0,
        last_durable_id: 0,
        durable_record_id: 0,
        writeback_allowed: false,
        draining: false,
        dead: None,
        cache_type: 0,
        plog_entries: 0,
        plog_flushes: 0,
        plog_epoch: 0,
        bypassed_writes: 0,
    }
}

/// A device that performs each operation as it is submitted, on the engine thread: the
/// smallest model of a device, for properties of the handoff rather than of the pool.
struct Inline(Mutex<DiskHandle>);

impl AsyncDevice for Inline {
    fn size_sectors(&self) -> u64 {
        1 << 20
    }
    fn submit(&self, op: IoOp, done: Done) {
        let r = self.0.lock().unwrap().perform(&op.kind);
        done.complete(r);
    }
}

/// A device that loses every operation: it drops the `Done` without completing it.
struct Abandoning;

impl AsyncDevice for Abandoning {
    fn size_sectors(&self) -> u64 {
        1 << 20
    }
    fn submit(&self, _op: IoOp, done: Done) {
        drop(done);
    }
}

/// The backing device of these models is never used: it refuses loudly.
struct Unused;

impl AsyncDevice for Unused {
    fn size_sectors(&self) -> u64 {
        1 << 20
    }
    fn submit(&self, op: IoOp, done: Done) {
        let e = IoError::new(Access::Read, 0, 0, "the fake machine uses only its cache");
        let _ = op;
        done.complete(Err(e));
    }
}

struct NoClock;
impl Clock for NoClock {
    fn now_ms(&self) -> u64 {
        0
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    // Bounded preemptions keep the exploration to minutes while covering the interleavings
    // these small scenarios have (loom's own recommendation for non-trivial models).
    b.preemption_bound = Some(3);
    b.check(f);
}

struct Rig {
    events: Arc<Events>,
    disk: Arc<Mutex<Disk>>,
    engine: thread::JoinHandle<Result<(), Error>>,
}

/// The cache device behind the fake cache.
enum Dev {
    /// Completes on the engine thread as it is submitted.
    Inline,
    /// The runner's thread pool, with one I/O thread (loom allows few threads: main, engine,
    /// I/O, and one more).
    Pooled,
    Abandoning,
}

/// Starts the engine thread over a fake cache.
fn start_engine(job_capacity: usize, dev: Dev) -> Rig {
    let events = Arc::new(Events::new(job_capacity));
    let disk = Arc::new(Mutex::new(Disk::default()));
    let engine = {
        let (events, disk) = (events.clone(), disk.clone());
        thread::spawn(move || {
            let cache: Box<dyn AsyncDevice> = match dev {
                Dev::Inline => Box::new(Inline(Mutex::new(DiskHandle(disk)))),
                Dev::Pooled => {
                    Box::new(Pooled::start(vec![DiskHandle(disk)], 1 << 20, "cache").unwrap())
                }
                Dev::Abandoning => Box::new(Abandoning),
            };
            let exec = Executor::new(events.clone(), cache, Box::new(Unused), None);
            let r = engine_thread::run(FakeMachine::default(), &exec, &events, &NoClock, &|_| {});
            // The pool is joined here: its thread ends once its queue is empty.
            drop(exec);
            r
        })
    };
    Rig {
        events,
        disk,
        engine,
    }
}

fn write(sector: u64, v: u8, fua: bool) -> EngineReq {
    EngineReq::Write {
        sector,
        data: vec![v],
        fua,
    }
}

/// Submits and waits for the reply on the same window (a connection whose writer is the
/// reader itself).
fn round_trip(w: &Arc<Inflight>, events: &Events, req: EngineReq, h: u64) -> WireReply {
    let units = w.acquire(1);
    Inflight::submit(w, events, req, h, units);
    let r = w.next_reply().expect("a reply");
    w.sent(&r);
    r
}

#[test]
fn flush_covers_writes_replied_on_any_connection_and_fua_is_durable_on_reply() {
    model(|| {
        let rig = start_engine(2, Dev::Inline);
        let other = {
            let (events, disk) = (rig.events.clone(), rig.disk.clone());
            thread::spawn(move || {
                let w = Inflight::new(4, 1);
                let r = round_trip(&w, &events, write(2, 2, true), 1);
                assert_eq!(r.errno, 0);
                assert_eq!(
                    disk.lock().unwrap().durable.get(&2),
                    Some(&2),
                    "FUA reply before durable"
                );
                // A plain write, replied: the FLUSH the other connection sends after this
                // thread ended must cover it.
                assert_eq!(round_trip(&w, &events, write(3, 3, false), 2).errno, 0);
            })
        };
        let w = Inflight::new(4, 1);
        assert_eq!(round_trip(&w, &rig.events, write(1, 1, false), 1).errno, 0);
        assert_eq!(round_trip(&w, &rig.events, EngineReq::Flush, 2).errno, 0);
        assert_eq!(
            rig.disk.lock().unwrap().durable.get(&1),
            Some(&1),
            "FLUSH reply before the write it covers is durable"
        );
        other.join().unwrap();
        // Every write of the other connection was replied before this FLUSH was sent.
        assert_eq!(round_trip(&w, &rig.events, EngineReq::Flush, 3).errno, 0);
        assert_eq!(
            rig.disk.lock().unwrap().durable.get(&3),
            Some(&3),
            "cross-connection FLUSH missed a replied write"
        );
        rig.events.close();
        rig.engine.join().unwrap().unwrap();
    });
}

#[test]
fn the_request_window_answers_everything_without_deadlock() {
    model(|| {
        let rig = start_engine(1, Dev::Inline);
        // Room for two requests: the third waits for the writer to send a reply.
        let w = Inflight::new(2, 1);
        let writer = {
            let w = w.clone();
            thread::spawn(move || {
                let mut handles = Vec::new();
                while let Some(r) = w.next_reply() {
                    assert_eq!(r.errno, if r.handle == 2 { 22 } else { 0 });
                    handles.push(r.handle);
                    w.sent(&r);
                }
                handles.sort();
                handles
            })
        };
        for h in 1..=3u64 {
            let units = w.acquire(1);
            if h == 2 {
                w.refuse(h, 22, units);
            } else {
                Inflight::submit(&w, &rig.events, write(h, h as u8, false), h, units);
            }
        }
        w.finish();
        assert_eq!(
            writer.join().unwrap(),
            vec![1, 2, 3],
            "each request answered once"
        );
        rig.events.close();
        rig.engine.join().unwrap().unwrap();
    });
}

#[test]
fn shutdown_racing_requests_answers_each_and_loses_no_acknowledged_write() {
    model(|| {
        let rig = start_engine(1, Dev::Pooled);
        let client = {
            let events = rig.events.clone();
            thread::spawn(move || {
                let w = Inflight::new(4, 1);
                let mut acked = Vec::new();
                for s in 1..=2u64 {
                    let r = round_trip(&w, &events, write(s, 9, false), s);
                    match r.errno {
                        0 => acked.push(s),
                        108 => {}
                        e => panic!("unexpected errno {e}"),
                    }
                }
                w.finish();
                acked
            })
        };
        rig.events.close();
        let acked = client.join().unwrap();
        // `run` returns only once the shutdown flush completed and nothing is in flight.
        rig.engine.join().unwrap().unwrap();
        let d = rig.disk.lock().unwrap();
        for s in acked {
            assert_eq!(
                d.durable.get(&s),
                Some(&9),
                "acknowledged write {s} lost at shutdown"
            );
        }
    });
}

#[test]
fn an_abandoned_operation_reaches_the_engine_as_an_error() {
    model(|| {
        let rig = start_engine(1, Dev::Abandoning);
        let w = Inflight::new(4, 1);
        let r = round_trip(&w, &rig.events, write(1, 1, false), 1);
        assert_eq!(r.errno, 5, "the client hears EIO, not silence");
        let r = round_trip(&w, &rig.events, EngineReq::Flush, 2);
        assert_eq!(r.errno, 5, "the dead cache refuses what follows");
        rig.events.close();
        let end = rig.engine.join().unwrap();
        assert!(
            matches!(&end, Err(Error::Dead { cause }) if cause.contains("abandoned")),
            "{end:?}"
        );
    });
}

#[test]
fn the_pool_completes_each_operation_exactly_once_even_when_stopped_with_work_queued() {
    model(|| {
        let events = Arc::new(Events::new(1));
        let disk = Arc::new(Mutex::new(Disk::default()));
        let pool = Pooled::start(vec![DiskHandle(disk.clone())], 1 << 20, "cache").unwrap();
        for (id, kind) in [(1, write_op(1, 7, false)), (2, IoKind::Flush)] {
            let op = IoOp {
                id: OpId(id),
                role: DeviceRole::Cache,
                kind,
            };
            pool.submit(op, Done::new(events.clone(), OpId(id), DeviceRole::Cache));
        }
        // Stopping the pool with work queued finishes that work first.
        drop(pool);
        let mut seen = Vec::new();
        while let Some(ev) = events.try_pop() {
            match ev {
                runner::events::Event::Done(op, r) => {
                    assert!(r.is_ok(), "{r:?}");
                    seen.push(op.0);
                }
                _ => panic!("only completions were queued"),
            }
        }
        seen.sort();
        assert_eq!(seen, vec![1, 2], "each operation completes exactly once");
        assert_eq!(disk.lock().unwrap().durable.get(&1), Some(&7));
    });
}
