//! The engine thread: the one owner of the cache. Connection threads and the control server
//! hand it [`Job`]s through one bounded queue; it runs them in arrival order, each to
//! completion, and answers through the job's own reply callback. Between requests it gives the
//! cache real time and runs due background steps.
//!
//! Ordering (docs/DESIGN.md, "Runner"): a reply is produced only after the engine finished the
//! request, and jobs run one at a time in queue order. A client FLUSH is queued after every
//! write that was already replied to (on any connection), so the engine's `flush` covers them;
//! a FUA write is answered after the engine's FUA write returned, i.e. when it is durable.

use std::time::{Duration, Instant};

use engine::{Error, Status};

use crate::core::Core;
use crate::queue::{BoundedQueue, Pop};

/// Bound of the shared request queue: connection threads block (back-pressure) beyond it.
pub const JOB_QUEUE_CAPACITY: usize = 64;
/// Requests served in a row before a due background step gets its turn, so sync and
/// writeback still happen under a steady request stream.
pub const REQUEST_BURST: u32 = 32;
/// How long the idle engine thread waits for a request before looking at the clock again.
pub const IDLE_WAIT: Duration = Duration::from_millis(100);

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

/// Executes one request on the engine (the engine thread's work for each job; also called
/// directly by the `nbd_stream` fuzz target).
pub fn execute<C: Core>(core: &mut C, req: EngineReq) -> Outcome {
    let done = |r: Result<(), Error>| match r {
        Ok(()) => Outcome::Done,
        Err(e) => Outcome::Failed(e),
    };
    match req {
        EngineReq::Read { sector, len } => {
            let mut buf = vec![0u8; len];
            match core.read(sector, &mut buf) {
                Ok(()) => Outcome::Data(buf),
                Err(e) => Outcome::Failed(e),
            }
        }
        EngineReq::Write { sector, data, fua } => done(core.write(sector, &data, fua)),
        EngineReq::Flush => done(core.flush()),
        EngineReq::Trim {
            sector,
            sectors,
            fua,
        } => done(core.discard(sector, sectors).and_then(
            |()| {
                if fua {
                    core.flush()
                } else {
                    Ok(())
                }
            },
        )),
        EngineReq::WriteZeroes {
            sector,
            sectors,
            fua,
        } => done(core.write_zeroes(sector, sectors, fua)),
        EngineReq::Status => Outcome::Status(Box::new(core.status())),
        EngineReq::Message(msg) => done(core.message(&msg)),
    }
}

/// Runs the engine thread until `jobs` is closed and drained, then shuts the cache down
/// cleanly. `log` gets one line per event worth telling the operator.
pub fn run<C: Core>(
    mut core: C,
    jobs: &BoundedQueue<Job>,
    clock: &dyn Clock,
    log: &dyn Fn(&str),
) -> Result<(), Error> {
    let mut reported_dead = false;
    let mut served_in_a_row = 0u32;
    let mut check_dead = |core: &C| {
        if !reported_dead {
            if let Some(cause) = core.dead_cause() {
                log(&format!(
                    "the cache is dead: {cause}; every request now fails with EIO (restart to replay)"
                ));
                reported_dead = true;
            }
        }
    };
    // Ends when the queue is closed and drained (server shutdown).
    loop {
        let pop = if served_in_a_row >= REQUEST_BURST || jobs.is_empty() {
            served_in_a_row = 0;
            core.tick(clock.now_ms());
            let ran = core.run_one_step().unwrap_or_else(|e| {
                log(&format!("background step failed: {e}"));
                false
            });
            check_dead(&core);
            if ran {
                // Look at the queue before the next step: requests come first.
                continue;
            }
            jobs.pop_timeout(IDLE_WAIT)
        } else {
            jobs.try_pop()
        };
        match pop {
            Pop::Item(job) => {
                let outcome = execute(&mut core, job.req);
                check_dead(&core);
                (job.reply)(outcome);
                served_in_a_row += 1;
            }
            Pop::Timeout => {}
            Pop::Closed => break,
        }
    }
    core.shutdown()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::core::{BusyTime, EngineCore};
    use crate::inflight::Inflight;
    use crate::nbd::proto;
    use crate::sync::{thread, Arc};
    use engine::{BlockDevice, Config, Engine, IoError, IoOp, MemDevice};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    /// A memory device whose writes and flushes fail once `broken` is set.
    struct Breakable {
        mem: MemDevice,
        broken: Arc<AtomicBool>,
    }

    impl BlockDevice for Breakable {
        fn size_sectors(&self) -> u64 {
            self.mem.size_sectors()
        }
        fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
            self.mem.read(sector, buf)
        }
        fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(IoError::new(IoOp::Write, sector, 1, "injected EIO"));
            }
            self.mem.write(sector, data, fua)
        }
        fn flush(&mut self) -> Result<(), IoError> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(IoError::new(IoOp::Flush, 0, 0, "injected EIO"));
            }
            self.mem.flush()
        }
    }

    impl BusyTime for Breakable {
        fn busy_ns(&self) -> u64 {
            0
        }
    }

    #[test]
    fn a_dead_cache_answers_eio_and_is_logged_once() {
        let broken = Arc::new(AtomicBool::new(false));
        let dev = |sectors| Breakable {
            mem: MemDevice::new(sectors),
            broken: broken.clone(),
        };
        let cfg = Config {
            segment_size_order: 5,
            ..Config::default()
        };
        let (engine, _) = Engine::open(dev(2048 + 4 * 32), dev(256), cfg).unwrap();
        let jobs = Arc::new(BoundedQueue::new(4));
        let logged = Arc::new(Mutex::new(Vec::<String>::new()));
        let t = {
            let (jobs, logged) = (jobs.clone(), logged.clone());
            thread::spawn(move || {
                let log = |m: &str| logged.lock().unwrap().push(m.to_string());
                run(EngineCore::new(engine), &jobs, &MonotonicClock::new(), &log)
            })
        };
        let w = Inflight::new(4, 1);
        let ask = |req, h| {
            let units = w.acquire(1);
            Inflight::submit(&w, &jobs, req, h, units);
            let r = w.next_reply().unwrap();
            w.sent(&r);
            r.errno
        };
        let write = |fua| EngineReq::Write {
            sector: 0,
            data: vec![1; 4096],
            fua,
        };
        assert_eq!(ask(write(false), 1), 0);
        broken.store(true, Ordering::SeqCst);
        assert_eq!(
            ask(write(true), 2),
            proto::EIO,
            "FUA write hits the broken device"
        );
        broken.store(false, Ordering::SeqCst);
        assert_eq!(
            ask(
                EngineReq::Read {
                    sector: 0,
                    len: 4096
                },
                3
            ),
            proto::EIO,
            "dead: reads fail too"
        );
        assert_eq!(ask(EngineReq::Flush, 4), proto::EIO);
        jobs.close();
        assert!(
            t.join().unwrap().is_err(),
            "a dead cache cannot shut down cleanly"
        );
        let logged = logged.lock().unwrap();
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
}
