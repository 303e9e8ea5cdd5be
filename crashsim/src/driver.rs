//! The simulator's driver of the engine: operations the engine hands out are in flight on the
//! simulated devices until a [`Scheduler`] picks them to complete, in any order. Each is logged
//! in the world when handed out (`Submit`) and when it completes; a write in flight may persist
//! or not, whole or torn, at a power cut, and a flush covers only what completed before it was
//! handed out.
//!
//! A client request returns as soon as its reply is out: background work (writeback, record,
//! segment writes) stays in flight and goes on during the next requests, so the crash states
//! cover client writes racing writeback as the runner does.
//!
//! The same seed, workload and schedule give the same log: the scheduler's choices come from
//! its seed (or a script), never from the clock.

use std::rc::Rc;

use engine::io::{IoDone, IoKind, IoOp, IoResult};
use engine::{Config, DeviceSizes, Engine, Opening, RecoveryReport, ReqId, Request, Step};

use crate::log::Submitted;
use crate::rng::{mix64, SplitMix64};
use crate::world::SharedWorld;
use engine::format::SECTOR_SIZE;
use engine::DeviceRole;

/// How the operation to complete next is chosen among those in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Order {
    /// The oldest first: what a device that completes in submission order does.
    InOrder,
    /// Seeded: uniformly among those in flight.
    Seeded(u64),
    /// Given choices (an index into the operations in flight, oldest first, at each moment
    /// two or more are), then the oldest: bounded mode's exhaustive enumeration.
    Scripted(Vec<u32>),
}

/// Picks which operation in flight completes next, and remembers the choices it made where
/// there was one to make.
#[derive(Clone, Debug)]
pub struct Scheduler {
    order: Order,
    rng: SplitMix64,
    script_pos: usize,
    /// (choice, options) at every moment two or more operations were in flight.
    pub made: Vec<(u32, u32)>,
}

impl Scheduler {
    pub fn new(order: Order) -> Self {
        let seed = match &order {
            Order::Seeded(s) => mix64(*s ^ 0x5c4e_d01e),
            _ => 0,
        };
        Scheduler {
            order,
            rng: SplitMix64::new(seed),
            script_pos: 0,
            made: Vec::new(),
        }
    }

    pub fn order(&self) -> &Order {
        &self.order
    }

    /// Index (oldest first) of the operation to complete among `n` in flight.
    pub fn pick(&mut self, n: usize) -> usize {
        assert!(n > 0, "something is in flight");
        if n == 1 {
            return 0;
        }
        let i = match &self.order {
            Order::InOrder => 0,
            Order::Seeded(_) => self.rng.below(n as u64) as usize,
            Order::Scripted(script) => {
                let c = script.get(self.script_pos).copied().unwrap_or(0) as usize;
                self.script_pos += 1;
                c.min(n - 1)
            }
        };
        self.made.push((i as u32, n as u32));
        i
    }
}

/// Operations in flight on a world, completed when the scheduler picks them.
struct Devices {
    world: SharedWorld,
    /// (operation, sequence number of its `Submit`), oldest first.
    in_flight: Vec<(IoOp, u64)>,
    sched: Scheduler,
}

impl Devices {
    /// Logs an operation the engine handed out and keeps it in flight.
    fn hand_out(&mut self, op: IoOp) {
        let what = match &op.kind {
            IoKind::Read { sector, len } => Submitted::Read {
                sector: *sector,
                sectors: (*len / SECTOR_SIZE) as u64,
            },
            IoKind::Write { sector, data, fua } => Submitted::Write {
                sector: *sector,
                data: Rc::from(data.as_slice()),
                fua: *fua,
            },
            IoKind::Flush => Submitted::Flush,
        };
        let seq = self.world.borrow_mut().submit(op.role, what);
        self.in_flight.push((op, seq));
    }

    /// Completes the operation the scheduler picks: its effect happens now.
    fn complete_one(&mut self) -> Option<(IoOp, IoResult)> {
        if self.in_flight.is_empty() {
            return None;
        }
        let i = self.sched.pick(self.in_flight.len());
        let (op, submitted) = self.in_flight.remove(i);
        let mut w = self.world.borrow_mut();
        let r = match &op.kind {
            IoKind::Read { sector, len } => {
                let mut buf = vec![0u8; *len];
                w.read(op.role, *sector, &mut buf)
                    .map(|()| IoDone::Read(buf))
            }
            IoKind::Write { sector, data, fua } => w
                .complete_write(
                    op.role,
                    *sector,
                    Rc::from(data.as_slice()),
                    *fua,
                    Some(submitted),
                )
                .map(|()| IoDone::Write),
            IoKind::Flush => w.complete_flush(op.role, submitted).map(|()| IoDone::Flush),
        };
        Some((op, r))
    }
}

/// An engine on a simulated world, driven with a completion scheduler.
pub struct SimEngine {
    engine: Engine,
    devs: Devices,
    next_req: u64,
    /// The engine's clock (milliseconds since open), moved on by [`SimEngine::tick`].
    now_ms: u64,
}

impl std::ops::Deref for SimEngine {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl std::ops::DerefMut for SimEngine {
    fn deref_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }
}

impl SimEngine {
    /// Opens (formats or recovers) a cache on the world's devices, recovery's operations
    /// completing in the scheduler's order too.
    pub fn open(
        world: &SharedWorld,
        cfg: Config,
        order: Order,
    ) -> Result<engine::Result<(SimEngine, RecoveryReport)>, String> {
        Self::open_scheduled(world, cfg, Scheduler::new(order))
    }

    /// [`SimEngine::open`] going on with a scheduler that already made choices (a reopen
    /// within one run: the schedule is one sequence of choices across it).
    pub fn open_scheduled(
        world: &SharedWorld,
        cfg: Config,
        sched: Scheduler,
    ) -> Result<engine::Result<(SimEngine, RecoveryReport)>, String> {
        let sizes = {
            let w = world.borrow();
            let size = |r| w.size_sectors(r).map_err(|e| e.to_string());
            DeviceSizes {
                cache: size(DeviceRole::Cache)?,
                backing: size(DeviceRole::Backing)?,
                plog: w
                    .roles()
                    .contains(&DeviceRole::Plog)
                    .then(|| size(DeviceRole::Plog))
                    .transpose()?,
            }
        };
        let mut devs = Devices {
            world: world.clone(),
            in_flight: Vec::new(),
            sched,
        };
        let mut opening = match Opening::new(cfg, sizes) {
            Ok(o) => o,
            Err(e) => return Ok(Err(e)),
        };
        // Bounded: opening issues a bounded number of operations and stops when done.
        while !opening.is_done() {
            while let Some(op) = opening.poll_io() {
                devs.hand_out(op);
            }
            let Some((op, r)) = devs.complete_one() else {
                return Err("opening stalled with nothing in flight".into());
            };
            opening.complete(op.id, r);
        }
        // What opening left in flight (none: it finishes on completions) stays with the engine.
        Ok(opening.finish().map(|(engine, report)| {
            (
                SimEngine {
                    engine,
                    devs,
                    next_req: 1,
                    now_ms: 0,
                },
                report,
            )
        }))
    }

    pub fn world(&self) -> &SharedWorld {
        &self.devs.world
    }

    /// The scheduler's choices so far.
    pub fn schedule_made(&self) -> &[(u32, u32)] {
        &self.devs.sched.made
    }

    fn hand_out_all(&mut self) {
        while let Some(op) = self.engine.poll_io() {
            self.devs.hand_out(op);
        }
    }

    /// Completes one operation (the scheduler's pick); false when nothing is in flight.
    fn step(&mut self) -> bool {
        self.hand_out_all();
        match self.devs.complete_one() {
            Some((op, r)) => {
                self.engine.complete(op.id, r);
                self.hand_out_all();
                true
            }
            None => false,
        }
    }

    /// Completes operations until nothing is in flight.
    pub fn run_until_idle(&mut self) {
        while self.step() {}
    }

    /// Submits a request and completes operations until its reply is out; other work may stay
    /// in flight.
    pub fn request(&mut self, req: Request) -> engine::Result<Option<Vec<u8>>> {
        let id = ReqId(self.next_req);
        self.next_req += 1;
        self.engine.submit(id, req);
        let mut replies = Vec::new();
        loop {
            while let Some(r) = self.engine.poll_reply() {
                replies.push(r);
            }
            if let Some(i) = replies.iter().position(|r| r.id == id) {
                return replies.swap_remove(i).result;
            }
            if !self.step() {
                panic!(
                    "request {id:?} got no reply and nothing is in flight: {}",
                    self.engine.shutdown_state()
                );
            }
        }
    }

    /// Submits several requests together and completes operations until every one has its
    /// reply (the runner serves a client's queue this way); one result per request, in order.
    pub fn requests(&mut self, reqs: Vec<Request>) -> Vec<engine::Result<Option<Vec<u8>>>> {
        let first = self.next_req;
        let n = reqs.len();
        for req in reqs {
            self.engine.submit(ReqId(self.next_req), req);
            self.next_req += 1;
        }
        let mut out: Vec<Option<engine::Result<Option<Vec<u8>>>>> = (0..n).map(|_| None).collect();
        // Bounded: every step completes an operation, and the engine replies once all of a
        // request's operations completed.
        loop {
            while let Some(r) = self.engine.poll_reply() {
                if let Some(i) = r.id.0.checked_sub(first).filter(|&i| i < n as u64) {
                    out[i as usize] = Some(r.result);
                }
            }
            if out.iter().all(Option::is_some) {
                return out.into_iter().map(|r| r.expect("all replied")).collect();
            }
            if !self.step() {
                panic!(
                    "requests got no reply and nothing is in flight: {}",
                    self.engine.shutdown_state()
                );
            }
        }
    }

    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> engine::Result<()> {
        let data = self.request(Request::Read {
            sector,
            len: buf.len(),
        })?;
        buf.copy_from_slice(&data.expect("a read returns data"));
        Ok(())
    }

    pub fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> engine::Result<()> {
        self.request(Request::Write {
            sector,
            data: data.to_vec(),
            fua,
        })
        .map(drop)
    }

    pub fn flush(&mut self) -> engine::Result<()> {
        self.request(Request::Flush).map(drop)
    }

    pub fn discard(&mut self, sector: u64, sectors: u64) -> engine::Result<()> {
        self.request(Request::Discard { sector, sectors }).map(drop)
    }

    fn dead_error(&self) -> Option<engine::Error> {
        self.engine
            .status()
            .dead
            .map(|cause| engine::Error::Dead { cause })
    }

    /// Starts a background step; its work goes on while later requests run.
    pub fn start_step(&mut self, step: Step) -> engine::Result<()> {
        if let Some(e) = self.dead_error() {
            return Err(e);
        }
        self.engine.start_step(step);
        self.hand_out_all();
        Ok(())
    }

    /// Starts every step the schedule calls for now, as the runner does after each event; their
    /// work goes on while later requests run.
    pub fn start_due(&mut self) {
        self.engine.start_due_steps();
        self.hand_out_all();
    }

    /// The runner's timer: the clock moves on by `ms`, then the steps now due start.
    pub fn advance_clock(&mut self, ms: u64) {
        self.now_ms += ms;
        self.engine.tick(self.now_ms);
        self.start_due();
    }

    /// Every dirty block written back and recorded (a careful reformat): `Request::Drain`.
    pub fn drain(&mut self) -> engine::Result<()> {
        self.request(Request::Drain).map(drop)
    }

    /// Clean shutdown: everything in flight completes, everything acknowledged is made durable
    /// and recorded. The world keeps the devices; the scheduler comes back for a reopen.
    pub fn shutdown(mut self) -> engine::Result<Scheduler> {
        if let Some(e) = self.dead_error() {
            return Err(e);
        }
        self.engine.begin_shutdown();
        self.run_until_idle();
        if let Some(e) = self.dead_error() {
            return Err(e);
        }
        assert!(
            self.engine.shutdown_complete(),
            "a shutdown completes: {}",
            self.engine.shutdown_state()
        );
        Ok(self.devs.sched)
    }
}
