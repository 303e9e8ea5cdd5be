//! The engine thread: the one owner of the cache. Connection threads and the control server
//! hand it [`Job`]s through one bounded queue; it runs them in arrival order, each to
//! completion, and answers through the job's own reply callback. Between requests it gives the
//! cache real time and runs due background steps.
//!
//! Reads: a run of consecutive read jobs at the head of the queue (up to [`READ_RUN_MAX`]) is
//! taken at once and served by one `read_many`, which issues their device reads together, so
//! the devices see a client's queue depth instead of one read at a time. Nothing is reordered:
//! the run stops at the first job that is not a read, and reads change no data, so serving
//! them together is serving them in order.
//!
//! Ordering (docs/DESIGN.md, "Runner"): a reply is produced only after the engine finished the
//! request, and jobs run one at a time in queue order. A client FLUSH is queued after every
//! write that was already replied to (on any connection), so the engine's `flush` covers them;
//! a FUA write is answered after the engine's FUA write returned, i.e. when it is durable.

use std::time::{Duration, Instant};

use engine::{Error, ReadReq, Status};

use crate::core::Core;
use crate::queue::{BoundedQueue, Pop};

/// Bound of the shared request queue: connection threads block (back-pressure) beyond it.
pub const JOB_QUEUE_CAPACITY: usize = 64;
/// Requests served in a row before a due background step gets its turn, so sync and
/// writeback still happen under a steady request stream.
pub const REQUEST_BURST: u32 = 32;
/// Most read jobs served by one `read_many` (the engine's own batch bound).
pub const READ_RUN_MAX: usize = 32;
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

/// Executes reads of `(sector, len)` together (the engine thread's work for a run of read
/// jobs): one outcome per read, in order, the same as [`execute`] would give for each.
pub fn execute_reads<C: Core>(core: &mut C, reads: &[(u64, usize)]) -> Vec<Outcome> {
    let mut bufs: Vec<Vec<u8>> = reads.iter().map(|&(_, len)| vec![0u8; len]).collect();
    let mut reqs: Vec<ReadReq<'_>> = reads
        .iter()
        .zip(bufs.iter_mut())
        .map(|(&(sector, _), buf)| ReadReq { sector, buf })
        .collect();
    let mut results = core.read_many(&mut reqs);
    if results.len() != reqs.len() {
        // A `Core` that broke its contract: serve each read alone rather than leave a client
        // without an answer.
        results = reqs
            .iter_mut()
            .map(|r| core.read(r.sector, r.buf))
            .collect();
    }
    drop(reqs);
    bufs.into_iter()
        .zip(results)
        .map(|(buf, r)| match r {
            Ok(()) => Outcome::Data(buf),
            Err(e) => Outcome::Failed(e),
        })
        .collect()
}

fn is_read(job: &Job) -> bool {
    matches!(job.req, EngineReq::Read { .. })
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
            Pop::Item(job) if is_read(&job) => {
                let mut run = vec![job];
                run.extend(jobs.pop_front_while(READ_RUN_MAX - 1, is_read));
                let reads: Vec<(u64, usize)> = run
                    .iter()
                    .filter_map(|j| match j.req {
                        EngineReq::Read { sector, len } => Some((sector, len)),
                        _ => None,
                    })
                    .collect();
                let outcomes = execute_reads(&mut core, &reads);
                check_dead(&core);
                served_in_a_row += run.len() as u32;
                for (job, outcome) in run.into_iter().zip(outcomes) {
                    (job.reply)(outcome);
                }
            }
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
    use engine::{Access, BlockDevice, Config, IoError, MemDevice, SyncEngine};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
                return Err(IoError::new(Access::Write, sector, 1, "injected EIO"));
            }
            self.mem.write(sector, data, fua)
        }
        fn flush(&mut self) -> Result<(), IoError> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(IoError::new(Access::Flush, 0, 0, "injected EIO"));
            }
            self.mem.flush()
        }
    }

    impl BusyTime for Breakable {
        fn busy_ns(&self) -> u64 {
            0
        }
    }

    /// A memory device that counts the `read_batch` calls carrying more than one request.
    struct CountingBatches {
        mem: MemDevice,
        multi_request_batches: Arc<AtomicU64>,
    }

    impl BlockDevice for CountingBatches {
        fn size_sectors(&self) -> u64 {
            self.mem.size_sectors()
        }
        fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
            self.mem.read(sector, buf)
        }
        fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
            self.mem.write(sector, data, fua)
        }
        fn flush(&mut self) -> Result<(), IoError> {
            self.mem.flush()
        }
        fn read_batch(&mut self, reads: &mut [ReadReq<'_>]) -> Result<(), IoError> {
            if reads.len() > 1 {
                self.multi_request_batches.fetch_add(1, Ordering::SeqCst);
            }
            for r in reads.iter_mut() {
                self.mem.read(r.sector, r.buf)?;
            }
            Ok(())
        }
    }

    impl BusyTime for CountingBatches {
        fn busy_ns(&self) -> u64 {
            0
        }
    }

    #[test]
    fn queued_reads_are_served_together_but_never_across_a_write() {
        let batches = Arc::new(AtomicU64::new(0));
        let dev = |mem| CountingBatches {
            mem,
            multi_request_batches: batches.clone(),
        };
        let cfg = Config {
            segment_size_order: 5,
            ..Config::default()
        };
        // Backing block b holds bytes b + 1.
        let backing: Vec<u8> = (0..32 * 4096).map(|i| (i / 4096 + 1) as u8).collect();
        let (engine, _) = SyncEngine::open(
            dev(MemDevice::new(2048 + 4 * 32)),
            dev(MemDevice::from_bytes(backing)),
            cfg,
        )
        .unwrap();
        let read = |block: u64, blocks: usize| EngineReq::Read {
            sector: block * 8,
            len: blocks * 4096,
        };
        let reqs = vec![
            read(0, 1),
            read(1, 1),
            read(2, 2),
            EngineReq::Write {
                sector: 8,
                data: vec![0xee; 4096],
                fua: false,
            },
            read(1, 1),
            read(5, 1),
            EngineReq::Flush,
            read(0, 2),
        ];
        let jobs = Arc::new(BoundedQueue::new(reqs.len()));
        let replies = Arc::new(Mutex::new(Vec::<(usize, Outcome)>::new()));
        for (i, req) in reqs.into_iter().enumerate() {
            let replies = replies.clone();
            let reply: ReplyFn = Box::new(move |o| replies.lock().unwrap().push((i, o)));
            assert!(jobs.push(Job { req, reply }).is_ok());
        }
        // Everything is queued before the engine thread starts, so it finds the runs of reads.
        jobs.close();
        run(
            EngineCore::new(engine),
            &jobs,
            &MonotonicClock::new(),
            &|_| {},
        )
        .unwrap();
        let replies = replies.lock().unwrap();
        let order: Vec<usize> = replies.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, (0..8).collect::<Vec<_>>(), "replies in queue order");
        let data = |i: usize| match &replies[i].1 {
            Outcome::Data(d) => d.clone(),
            o => panic!("request {i}: {o:?}"),
        };
        let blocks = |bytes: &[u8]| bytes.to_vec();
        assert_eq!(data(0), blocks(&[1; 4096]));
        assert_eq!(data(1), blocks(&[2; 4096]), "the read before the write");
        assert_eq!(data(2), [[3u8; 4096], [4; 4096]].concat());
        assert!(matches!(replies[3].1, Outcome::Done));
        assert_eq!(data(4), blocks(&[0xee; 4096]), "the read after the write");
        assert_eq!(data(5), blocks(&[6; 4096]));
        assert!(matches!(replies[6].1, Outcome::Done));
        assert_eq!(data(7), [[1u8; 4096], [0xee; 4096]].concat());
        assert!(
            batches.load(Ordering::SeqCst) > 0,
            "no read_batch ever carried several requests"
        );
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
        let (engine, _) = SyncEngine::open(dev(2048 + 4 * 32), dev(256), cfg).unwrap();
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
