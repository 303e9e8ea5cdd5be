//! The engine thread: the one owner of the cache, and it never waits on a device. Connection
//! threads and the control server hand it [`Job`]s, and the executor's device threads hand it
//! completions, through one [`Events`] queue. It submits each request to the engine in arrival
//! order, hands every operation the engine emits to the executor, feeds every completion back,
//! and answers each request through its own reply callback when the engine replies. Between
//! events it gives the cache real time and starts due background steps, whose operations run
//! while clients go on.
//!
//! Ordering (docs/DESIGN.md, "Runner"): a request is submitted to the engine only after every
//! job queued before it was submitted, and a reply goes out only when the engine answered. A
//! client FLUSH therefore reaches the engine after every write already replied to (on any
//! connection), and the engine answers it only once those are durable (rule R2); a FUA write
//! is answered once it is durable (R3). Reads go to the engine as they arrive, so their device
//! reads are in flight together: the devices see a client's queue depth.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use engine::{Error, ReqId, Request, Status};

use crate::core::Machine;
use crate::events::{Event, Events};
use crate::executor::Executor;

/// Bound of the shared job lane: connection threads block (back-pressure) beyond it.
pub const JOB_QUEUE_CAPACITY: usize = 64;
/// Events taken in a row before the engine thread looks at the clock and the background
/// steps again, so sync and writeback still start under a steady stream.
pub const EVENT_BURST: u32 = 64;
/// How long the idle engine thread waits for an event before looking at the clock again.
pub const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How long requests wait with no reply before the engine thread tells the operator.
const STALL_REPORT_MS: u64 = 10_000;
/// How often the backing load is re-estimated for the writeback modulator.
const LOAD_SAMPLE_MS: u64 = 1000;

/// A request for the cache.
#[derive(Debug)]
pub enum EngineReq {
    Read {
        sector: u64,
        len: usize,
    },
    Write {
        sector: u64,
        data: Vec<u8>,
        fua: bool,
    },
    Flush,
    Trim {
        sector: u64,
        sectors: u64,
        fua: bool,
    },
    WriteZeroes {
        sector: u64,
        sectors: u64,
        fua: bool,
    },
    Status,
    /// A message as the engine takes it: `drop_caches`, `clear_stat`, `<tunable> <value>`.
    Message(String),
}

/// How a request ended.
#[derive(Debug)]
pub enum Outcome {
    Done,
    Data(Vec<u8>),
    Status(Box<Status>),
    Failed(Error),
}

/// Called on the engine thread with the outcome; must not block for long (it hands the
/// outcome to a queue whose room the requester reserved beforehand).
pub type ReplyFn = Box<dyn FnOnce(Outcome) + Send>;

pub struct Job {
    pub req: EngineReq,
    pub reply: ReplyFn,
}

/// Monotonic milliseconds.
pub trait Clock {
    fn now_ms(&self) -> u64;
}

/// The real monotonic clock, from when it was made.
pub struct MonotonicClock(Instant);

impl MonotonicClock {
    pub fn new() -> Self {
        MonotonicClock(Instant::now())
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// Executes one job's request on an engine driven synchronously (the `nbd_stream` fuzz target
/// and tools): the same mapping of NBD requests onto engine requests as the engine thread's.
pub fn execute<D: engine::BlockDevice>(e: &mut engine::SyncEngine<D>, req: EngineReq) -> Outcome {
    let outcome = |r: Result<Option<Vec<u8>>, Error>| match r {
        Ok(Some(data)) => Outcome::Data(data),
        Ok(None) => Outcome::Done,
        Err(e) => Outcome::Failed(e),
    };
    match engine_request(req) {
        Ok((req, then_flush)) => {
            let r = e.request(req);
            if then_flush && r.is_ok() {
                return outcome(e.request(Request::Flush));
            }
            outcome(r)
        }
        Err(EngineReq::Status) => Outcome::Status(Box::new(e.status())),
        Err(EngineReq::Message(msg)) => outcome(e.message(&msg).map(|()| None)),
        Err(_) => unreachable!("every other request goes to the engine"),
    }
}

/// A request the engine is working on: whose reply it is, and (TRIM with FUA) whether a
/// FLUSH follows before the client hears back.
struct Waiting {
    reply: ReplyFn,
    then_flush: bool,
}

/// The engine thread's state between events.
struct Thread<'a, M: Machine> {
    m: M,
    exec: &'a Executor,
    waiting: BTreeMap<ReqId, Waiting>,
    next_req: u64,
    /// (time, backing busy ns) at the last load sample.
    load_sample: Option<(u64, u64)>,
    reported_dead: bool,
    /// A reply went out since the last stall check.
    replied: bool,
    /// Since when requests wait with no reply going out (the stall report's clock).
    stalled_since: Option<u64>,
    /// When the stall was last reported.
    stall_reported: Option<u64>,
}

/// The engine request for a job, and whether a FLUSH must follow it (TRIM with FUA).
fn engine_request(req: EngineReq) -> Result<(Request, bool), EngineReq> {
    Ok(match req {
        EngineReq::Read { sector, len } => (Request::Read { sector, len }, false),
        EngineReq::Write { sector, data, fua } => (Request::Write { sector, data, fua }, false),
        EngineReq::Flush => (Request::Flush, false),
        EngineReq::Trim {
            sector,
            sectors,
            fua,
        } => (Request::Discard { sector, sectors }, fua),
        EngineReq::WriteZeroes {
            sector,
            sectors,
            fua,
        } => (
            Request::WriteZeroes {
                sector,
                sectors,
                fua,
            },
            false,
        ),
        other @ (EngineReq::Status | EngineReq::Message(_)) => return Err(other),
    })
}

impl<M: Machine> Thread<'_, M> {
    fn submit(&mut self, req: Request, w: Waiting) {
        let id = ReqId(self.next_req);
        self.next_req += 1;
        self.waiting.insert(id, w);
        self.m.submit(id, req);
    }

    fn job(&mut self, job: Job) {
        match engine_request(job.req) {
            Ok((req, then_flush)) => self.submit(
                req,
                Waiting {
                    reply: job.reply,
                    then_flush,
                },
            ),
            // Status and messages need no device: answered at once.
            Err(EngineReq::Status) => (job.reply)(Outcome::Status(Box::new(self.m.status()))),
            Err(EngineReq::Message(msg)) => (job.reply)(match self.m.message(&msg) {
                Ok(()) => Outcome::Done,
                Err(e) => Outcome::Failed(e),
            }),
            Err(_) => unreachable!("every other request goes to the engine"),
        }
    }

    /// Hands every operation to the executor and every reply to its requester.
    fn flow(&mut self) {
        // Bounded: each pass hands out what the engine emitted; replies may chain one FLUSH.
        for _ in 0..4 {
            let mut moved = false;
            while let Some(op) = self.m.poll_io() {
                self.exec.submit(op);
                moved = true;
            }
            if moved {
                self.exec.kick();
            }
            while let Some(r) = self.m.poll_reply() {
                moved = true;
                self.replied = true;
                let w = self
                    .waiting
                    .remove(&r.id)
                    .expect("a reply answers a request");
                match r.result {
                    Ok(_) if w.then_flush => self.submit(
                        Request::Flush,
                        Waiting {
                            reply: w.reply,
                            then_flush: false,
                        },
                    ),
                    Ok(Some(data)) => (w.reply)(Outcome::Data(data)),
                    Ok(None) => (w.reply)(Outcome::Done),
                    Err(e) => (w.reply)(Outcome::Failed(e)),
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// The clock, the modulator's load sample and due background steps.
    fn background(&mut self, now_ms: u64, shutting_down: bool) {
        self.m.tick(now_ms);
        let busy = self.exec.backing_busy_ns();
        match self.load_sample {
            None => self.load_sample = Some((now_ms, busy)),
            Some((t0, b0)) if now_ms >= t0 + LOAD_SAMPLE_MS => {
                let wall_ns = (now_ms - t0) * 1_000_000;
                let pct = (busy.saturating_sub(b0).saturating_mul(100) / wall_ns).min(100);
                self.m.set_backing_load(pct as u8);
                self.load_sample = Some((now_ms, busy));
            }
            Some(_) => {}
        }
        if !shutting_down {
            self.m.start_due_steps();
        }
    }

    /// Called when no event came for a while: requests that wait with no reply going out for
    /// STALL_REPORT_MS (a device that stopped completing, say) are reported, with what the
    /// cache waits for, once per STALL_REPORT_MS.
    fn report_stall(&mut self, now_ms: u64, log: &dyn Fn(&str)) {
        if self.waiting.is_empty() || std::mem::take(&mut self.replied) {
            self.stalled_since = None;
            self.stall_reported = None;
            return;
        }
        let since = *self.stalled_since.get_or_insert(now_ms);
        let due = self
            .stall_reported
            .map_or(now_ms >= since + STALL_REPORT_MS, |at| {
                now_ms >= at + STALL_REPORT_MS
            });
        if due {
            log(&format!(
                "{} request(s) waiting for {} s with no reply: {}",
                self.waiting.len(),
                (now_ms - since) / 1000,
                self.m.waiting_for()
            ));
            self.stall_reported = Some(now_ms);
        }
    }

    fn check_dead(&mut self, log: &dyn Fn(&str)) {
        if self.reported_dead {
            return;
        }
        if let Some(cause) = self.m.dead_cause() {
            log(&format!(
                "the cache is dead: {cause}; every request now fails with EIO (restart to replay)"
            ));
            self.reported_dead = true;
        }
    }
}

/// Runs the engine thread until the job lane is closed and the cache is shut down: every
/// acknowledged write durable and recorded, nothing in flight. `log` gets one line per event
/// worth telling the operator.
pub fn run<M: Machine>(
    m: M,
    exec: &Executor,
    events: &Events,
    clock: &dyn Clock,
    log: &dyn Fn(&str),
) -> Result<(), Error> {
    let mut t = Thread {
        m,
        exec,
        waiting: BTreeMap::new(),
        next_req: 1,
        load_sample: None,
        reported_dead: false,
        replied: false,
        stalled_since: None,
        stall_reported: None,
    };
    let mut shutting_down = false;
    // Ends when the shutdown is complete (or the dead cache has nothing left in flight).
    loop {
        let mut next = Some(events.pop_timeout(IDLE_WAIT));
        let mut taken = 0;
        // Bounded by EVENT_BURST: an event is taken only when it will be handled.
        while let Some(ev) = next.take() {
            taken += 1;
            match ev {
                Event::Done(op, r) => t.m.complete(op, r),
                Event::Job(job) => t.job(job),
                Event::Closed => {
                    shutting_down = true;
                    t.m.begin_shutdown();
                }
                Event::Timeout => {
                    t.report_stall(clock.now_ms(), log);
                    break;
                }
            }
            t.flow();
            if taken < EVENT_BURST {
                next = events.try_pop();
            }
        }
        t.background(clock.now_ms(), shutting_down);
        t.flow();
        t.check_dead(log);
        if shutting_down {
            if t.m.shutdown_complete() {
                return Ok(());
            }
            if let Some(cause) = t.m.dead_cause() {
                if t.m.in_flight() == 0 {
                    return Err(Error::Dead { cause });
                }
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::executor::pool::{Perform, Pooled};
    use crate::inflight::Inflight;
    use crate::nbd::proto;
    use crate::sync::{thread, Arc};
    use engine::{
        Access, BlockDevice, Config, Engine, IoDone, IoError, IoKind, IoResult, MemDevice,
        SyncEngine,
    };
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};

    /// Switches a test flips while the engine thread runs.
    #[derive(Default)]
    struct Gates {
        /// Writes and flushes fail.
        broken: AtomicBool,
        /// Operations wait here until it is false again.
        stalled: Mutex<bool>,
        released: Condvar,
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
    }

    /// One I/O thread's handle on a shared memory device.
    struct MemHandle {
        mem: Arc<Mutex<MemDevice>>,
        gates: Arc<Gates>,
    }

    impl Perform for MemHandle {
        fn perform(&mut self, kind: &IoKind) -> IoResult {
            let g = &self.gates;
            let now = g.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            g.most_in_flight.fetch_max(now, Ordering::SeqCst);
            let mut stalled = g.stalled.lock().unwrap();
            while *stalled {
                stalled = g.released.wait(stalled).unwrap();
            }
            drop(stalled);
            g.in_flight.fetch_sub(1, Ordering::SeqCst);
            let broken = g.broken.load(Ordering::SeqCst);
            let mut m = self.mem.lock().unwrap();
            match kind {
                IoKind::Read { sector, len } => {
                    let mut buf = vec![0u8; *len];
                    m.read(*sector, &mut buf)?;
                    Ok(IoDone::Read(buf))
                }
                IoKind::Write { .. } if broken => {
                    Err(IoError::new(Access::Write, 0, 1, "injected EIO"))
                }
                IoKind::Write { sector, data, fua } => {
                    m.write(*sector, data, *fua)?;
                    Ok(IoDone::Write)
                }
                IoKind::Flush if broken => Err(IoError::new(Access::Flush, 0, 0, "injected EIO")),
                IoKind::Flush => Ok(IoDone::Flush),
            }
        }
    }

    struct Rig {
        events: Arc<Events>,
        backing_gates: Arc<Gates>,
        cache_gates: Arc<Gates>,
        logged: Arc<Mutex<Vec<String>>>,
        thread: thread::JoinHandle<Result<(), Error>>,
    }

    fn pooled(mem: MemDevice, gates: &Arc<Gates>, threads: usize) -> Box<Pooled> {
        let sectors = mem.size_sectors();
        let mem = Arc::new(Mutex::new(mem));
        let handles = (0..threads)
            .map(|_| MemHandle {
                mem: mem.clone(),
                gates: gates.clone(),
            })
            .collect();
        Box::new(Pooled::start(handles, sectors, "test").unwrap())
    }

    /// A cache on memory devices behind a pooled executor, its engine thread running.
    fn rig(threads: usize) -> Rig {
        rig_with(threads, Vec::new())
    }

    /// `rig`, with jobs queued before the engine thread starts.
    fn rig_with(threads: usize, queued: Vec<Job>) -> Rig {
        let cfg = Config {
            segment_size_order: 5,
            ..Config::default()
        };
        let (e, _) =
            SyncEngine::open(MemDevice::new(2048 + 4 * 32), MemDevice::new(256), cfg).unwrap();
        let (engine, cache, backing, _): (Engine, _, _, _) = e.into_parts();
        let (cache_gates, backing_gates) = (Arc::new(Gates::default()), Arc::new(Gates::default()));
        let events = Arc::new(Events::new(8 + queued.len()));
        for job in queued {
            assert!(events.push_job(job).is_ok());
        }
        let exec = Executor::new(
            events.clone(),
            pooled(cache, &cache_gates, threads),
            pooled(backing, &backing_gates, threads),
            None,
        );
        let logged = Arc::new(Mutex::new(Vec::<String>::new()));
        let thread = {
            let (events, logged) = (events.clone(), logged.clone());
            thread::spawn(move || {
                let log = |m: &str| logged.lock().unwrap().push(m.to_string());
                run(engine, &exec, &events, &MonotonicClock::new(), &log)
            })
        };
        Rig {
            events,
            backing_gates,
            cache_gates,
            logged,
            thread,
        }
    }

    /// Waits until `cond` holds; a minute without it is a failure (a deadline, not a timing
    /// assertion: it only stops a hung test).
    fn wait_for(cond: impl Fn() -> bool) {
        let t = std::time::Instant::now();
        while !cond() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "condition never held"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn stall(g: &Gates, on: bool) {
        *g.stalled.lock().unwrap() = on;
        g.released.notify_all();
    }

    fn ask(w: &Arc<Inflight>, events: &Events, req: EngineReq, h: u64) -> u32 {
        let units = w.acquire(1);
        Inflight::submit(w, events, req, h, units);
        let r = w.next_reply().unwrap();
        w.sent(&r);
        assert_eq!(r.handle, h, "the reply answers the request asked");
        r.errno
    }

    #[test]
    fn a_dead_cache_answers_eio_and_is_logged_once() {
        let r = rig(2);
        let w = Inflight::new(4, 1);
        let write = |fua| EngineReq::Write {
            sector: 0,
            data: vec![1; 4096],
            fua,
        };
        assert_eq!(ask(&w, &r.events, write(false), 1), 0);
        r.cache_gates.broken.store(true, Ordering::SeqCst);
        assert_eq!(
            ask(&w, &r.events, write(true), 2),
            proto::EIO,
            "FUA write hits the broken device"
        );
        r.cache_gates.broken.store(false, Ordering::SeqCst);
        let read = EngineReq::Read {
            sector: 0,
            len: 4096,
        };
        assert_eq!(
            ask(&w, &r.events, read, 3),
            proto::EIO,
            "dead: reads fail too"
        );
        assert_eq!(ask(&w, &r.events, EngineReq::Flush, 4), proto::EIO);
        r.events.close();
        assert!(
            r.thread.join().unwrap().is_err(),
            "a dead cache cannot shut down cleanly"
        );
        let logged = r.logged.lock().unwrap();
        let dead: Vec<_> = logged
            .iter()
            .filter(|l| l.contains("the cache is dead"))
            .collect();
        assert_eq!(dead.len(), 1, "{logged:?}");
        assert!(
            dead[0].contains("injected EIO"),
            "the log says why: {logged:?}"
        );
    }

    /// The engine thread never waits on a device: with every backing operation stuck, reads
    /// of uncached blocks wait, and status, messages and writes that need no device are still
    /// answered.
    #[test]
    fn the_engine_thread_serves_while_a_device_never_completes() {
        let r = rig(4);
        stall(&r.backing_gates, true);
        let w = Inflight::new(64, 1);
        for h in 0..4u64 {
            let units = w.acquire(1);
            let read = EngineReq::Read {
                sector: 8 * (10 + h),
                len: 4096,
            };
            Inflight::submit(&w, &r.events, read, h, units);
        }
        let write = EngineReq::Write {
            sector: 0,
            data: vec![3; 4096],
            fua: false,
        };
        assert_eq!(
            ask(&w, &r.events, write, 10),
            0,
            "a write into RAM is answered"
        );
        // Status goes to the control socket's kind of requester, not an NBD window.
        let (tx, rx) = std::sync::mpsc::channel();
        let job = Job {
            req: EngineReq::Status,
            reply: Box::new(move |o| tx.send(o).unwrap()),
        };
        assert!(r.events.push_job(job).is_ok());
        assert!(matches!(rx.recv().unwrap(), Outcome::Status(_)));
        let msg = EngineReq::Message("allow_writeback 0".into());
        assert_eq!(ask(&w, &r.events, msg, 12), 0);
        // The four stuck reads reach the device (they were handed out, never waited for).
        wait_for(|| r.backing_gates.in_flight.load(Ordering::SeqCst) == 4);
        stall(&r.backing_gates, false);
        for _ in 0..4 {
            let reply = w.next_reply().unwrap();
            assert_eq!(reply.errno, 0);
            w.sent(&reply);
        }
        r.events.close();
        r.thread.join().unwrap().unwrap();
    }

    /// More events queued than the engine thread takes in one burst: every one is handled.
    #[test]
    fn no_event_is_lost_between_bursts() {
        let n = 3 * EVENT_BURST as usize + 5;
        let (tx, rx) = std::sync::mpsc::channel();
        let jobs = (0..n)
            .map(|_| {
                let tx = tx.clone();
                Job {
                    req: EngineReq::Status,
                    reply: Box::new(move |o| tx.send(o).unwrap()),
                }
            })
            .collect();
        let r = rig_with(2, jobs);
        for i in 0..n {
            let o = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("job {i} of {n} was never answered"));
            assert!(matches!(o, Outcome::Status(_)));
        }
        r.events.close();
        r.thread.join().unwrap().unwrap();
    }

    /// Reads go to the engine as they arrive: their device reads are in flight together.
    #[test]
    fn reads_reach_the_devices_together() {
        let r = rig(8);
        stall(&r.backing_gates, true);
        let w = Inflight::new(64, 1);
        for h in 0..8u64 {
            let units = w.acquire(1);
            let read = EngineReq::Read {
                sector: 8 * h,
                len: 4096,
            };
            Inflight::submit(&w, &r.events, read, h, units);
        }
        wait_for(|| r.backing_gates.in_flight.load(Ordering::SeqCst) == 8);
        stall(&r.backing_gates, false);
        for _ in 0..8 {
            let reply = w.next_reply().unwrap();
            assert_eq!(reply.errno, 0);
            w.sent(&reply);
        }
        assert_eq!(r.backing_gates.most_in_flight.load(Ordering::SeqCst), 8);
        r.events.close();
        r.thread.join().unwrap().unwrap();
    }
}
