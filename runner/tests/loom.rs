//! loom checks of the runner's concurrency, on the runner's own code: `sync.rs` swaps in
//! loom's primitives under `--cfg loom`, so `queue`, `inflight` and `engine_thread::run` below
//! are exactly what the binary runs. Behind them sits a fake cache with the engine's
//! durability contract (volatile writes; FLUSH and FUA make everything durable; shutdown
//! flushes), so the properties checked are the runner's:
//!
//! - a FLUSH reply means every write replied before the FLUSH was sent is durable, whichever
//!   connection it came from; a FUA reply means that write is durable;
//! - the request window (reader, writer, engine thread) never deadlocks and answers every
//!   request exactly once;
//! - shutdown racing with requests: each request is answered (done or ESHUTDOWN), every
//!   acknowledged write is durable after the engine thread's clean shutdown.
//!
//! Run: `cargo xtask loom` (RUSTFLAGS="--cfg loom", release, its own target dir).

#![cfg(loom)]

use std::collections::BTreeMap;

use engine::{Error, Status, Tunables};
use runner::core::Core;
use runner::engine_thread::{self, Clock, EngineReq};
use runner::inflight::{Inflight, Reply};
use runner::queue::BoundedQueue;
use runner::sync::{thread, Arc, Mutex};

#[derive(Default)]
struct Disk {
    volatile: BTreeMap<u64, u8>,
    durable: BTreeMap<u64, u8>,
}

impl Disk {
    fn make_durable(&mut self) {
        self.durable = self.volatile.clone();
    }
}

struct FakeCore {
    disk: Arc<Mutex<Disk>>,
}

impl Core for FakeCore {
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        let v = *self
            .disk
            .lock()
            .unwrap()
            .volatile
            .get(&sector)
            .unwrap_or(&0);
        buf.fill(v);
        Ok(())
    }
    fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<(), Error> {
        let mut d = self.disk.lock().unwrap();
        d.volatile.insert(sector, data[0]);
        if fua {
            d.make_durable();
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), Error> {
        self.disk.lock().unwrap().make_durable();
        Ok(())
    }
    fn discard(&mut self, sector: u64, _sectors: u64) -> Result<(), Error> {
        self.write(sector, &[0], false)
    }
    fn write_zeroes(&mut self, sector: u64, _sectors: u64, fua: bool) -> Result<(), Error> {
        self.write(sector, &[0], fua)
    }
    fn tick(&mut self, _now_ms: u64) {}
    fn run_one_step(&mut self) -> Result<bool, Error> {
        Ok(false)
    }
    fn status(&self) -> Status {
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
        }
    }
    fn message(&mut self, _msg: &str) -> Result<(), Error> {
        Ok(())
    }
    fn dead_cause(&self) -> Option<String> {
        None
    }
    fn shutdown(self) -> Result<(), Error> {
        self.disk.lock().unwrap().make_durable();
        Ok(())
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

/// Starts the engine thread on a fresh fake disk.
fn start_engine(
    jobs_cap: usize,
) -> (
    Arc<BoundedQueue<engine_thread::Job>>,
    Arc<Mutex<Disk>>,
    thread::JoinHandle<Result<(), Error>>,
) {
    let jobs = Arc::new(BoundedQueue::new(jobs_cap));
    let disk = Arc::new(Mutex::new(Disk::default()));
    let t = {
        let (jobs, disk) = (jobs.clone(), disk.clone());
        thread::spawn(move || engine_thread::run(FakeCore { disk }, &jobs, &NoClock, &|_| {}))
    };
    (jobs, disk, t)
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
fn round_trip(
    w: &Arc<Inflight>,
    jobs: &BoundedQueue<engine_thread::Job>,
    req: EngineReq,
    h: u64,
) -> Reply {
    let units = w.acquire(1);
    Inflight::submit(w, jobs, req, h, units);
    let r = w.next_reply().expect("a reply");
    w.sent(&r);
    r
}

#[test]
fn flush_covers_writes_replied_on_any_connection_and_fua_is_durable_on_reply() {
    model(|| {
        let (jobs, disk, engine) = start_engine(2);
        let other = {
            let (jobs, disk) = (jobs.clone(), disk.clone());
            thread::spawn(move || {
                let w = Inflight::new(4, 1);
                let r = round_trip(&w, &jobs, write(2, 2, true), 1);
                assert_eq!(r.errno, 0);
                assert_eq!(
                    disk.lock().unwrap().durable.get(&2),
                    Some(&2),
                    "FUA reply before durable"
                );
                // A plain write, replied: a later FLUSH on the other connection must cover it
                // if that FLUSH is sent after this reply (checked below via the flag).
                let r = round_trip(&w, &jobs, write(3, 3, false), 2);
                assert_eq!(r.errno, 0);
            })
        };
        let w = Inflight::new(4, 1);
        assert_eq!(round_trip(&w, &jobs, write(1, 1, false), 1).errno, 0);
        let r = round_trip(&w, &jobs, EngineReq::Flush, 2);
        assert_eq!(r.errno, 0);
        assert_eq!(
            disk.lock().unwrap().durable.get(&1),
            Some(&1),
            "FLUSH reply before the write it covers is durable"
        );
        other.join().unwrap();
        // Every write of the other connection was replied before this FLUSH was sent.
        let r = round_trip(&w, &jobs, EngineReq::Flush, 3);
        assert_eq!(r.errno, 0);
        {
            let d = disk.lock().unwrap();
            assert_eq!(
                d.durable.get(&3),
                Some(&3),
                "cross-connection FLUSH missed a replied write"
            );
        }
        jobs.close();
        engine.join().unwrap().unwrap();
    });
}

#[test]
fn the_request_window_answers_everything_without_deadlock() {
    model(|| {
        let (jobs, _disk, engine) = start_engine(1);
        // Room for two requests: the third waits for the writer to send a reply.
        let w = Inflight::new(2, 1);
        let writer = {
            let w = w.clone();
            thread::spawn(move || {
                let mut handles = Vec::new();
                while let Some(r) = w.next_reply() {
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
                Inflight::submit(&w, &jobs, write(h, h as u8, false), h, units);
            }
        }
        w.finish();
        assert_eq!(
            writer.join().unwrap(),
            vec![1, 2, 3],
            "each request answered once"
        );
        jobs.close();
        engine.join().unwrap().unwrap();
    });
}

#[test]
fn shutdown_racing_requests_answers_each_and_loses_no_acknowledged_write() {
    model(|| {
        let (jobs, disk, engine) = start_engine(1);
        let client = {
            let jobs = jobs.clone();
            thread::spawn(move || {
                let w = Inflight::new(4, 1);
                let mut acked = Vec::new();
                for s in 1..=2u64 {
                    let r = round_trip(&w, &jobs, write(s, 9, false), s);
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
        jobs.close();
        let acked = client.join().unwrap();
        engine.join().unwrap().unwrap();
        let d = disk.lock().unwrap();
        for s in acked {
            assert_eq!(
                d.durable.get(&s),
                Some(&9),
                "acknowledged write {s} lost at shutdown"
            );
        }
    });
}
