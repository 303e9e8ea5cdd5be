//! The smallest driver: [`SyncEngine`] owns `BlockDevice`s and completes every operation the
//! engine hands out as soon as it comes out, in the order it came out, until the engine is
//! idle. Unit tests, the offline tools, benches and the crash simulator's recording runs use
//! it, so each of them stays one call per request: `read`, `write`, `flush`, `run_step`.
//!
//! Consecutive operations of one kind on one device go to the device as one batch
//! (`read_batch` / `write_batch`, which a device may run concurrently and the simulated devices
//! log in order), and complete in order.

use crate::cache::{Config, Engine, ReqId, Request, Step, StepOutcome};
use crate::device::{BlockDevice, DeviceRole, IoError, ReadReq, WriteReq};
use crate::error::{Error, Result};
use crate::io::{IoDone, IoKind, IoOp, IoResult};
use crate::recovery::{DeviceSizes, Opening, RecoveryReport};

/// Performs one operation on a device: the one place synchronous I/O happens.
pub(crate) fn perform<D: BlockDevice + ?Sized>(dev: &mut D, kind: &IoKind) -> IoResult {
    match kind {
        IoKind::Read { sector, len } => {
            let mut buf = vec![0u8; *len];
            dev.read(*sector, &mut buf)?;
            Ok(IoDone::Read(buf))
        }
        IoKind::Write { sector, data, fua } => {
            dev.write(*sector, data, *fua)?;
            Ok(IoDone::Write)
        }
        IoKind::Flush => {
            dev.flush()?;
            Ok(IoDone::Flush)
        }
    }
}

/// The devices of a cache.
struct Devices<D> {
    cache: D,
    backing: D,
    plog: Option<D>,
}

impl<D: BlockDevice> Devices<D> {
    fn sizes(&self) -> DeviceSizes {
        DeviceSizes {
            cache: self.cache.size_sectors(),
            backing: self.backing.size_sectors(),
            plog: self.plog.as_ref().map(|p| p.size_sectors()),
        }
    }

    fn get(&mut self, role: DeviceRole) -> &mut D {
        match role {
            DeviceRole::Cache => &mut self.cache,
            DeviceRole::Backing => &mut self.backing,
            DeviceRole::Plog => self
                .plog
                .as_mut()
                .expect("the engine uses a plog it was given"),
        }
    }

    /// Performs a run of operations of one kind on one device as one batch; the results in
    /// order. A failed batch fails each of its operations (a batch promises no order, so any
    /// of them may or may not have happened).
    fn perform_run(&mut self, run: &[IoOp]) -> Vec<IoResult> {
        let dev = self.get(run[0].role);
        if run.len() == 1 {
            return vec![perform(dev, &run[0].kind)];
        }
        match &run[0].kind {
            IoKind::Read { .. } => {
                let mut bufs: Vec<Vec<u8>> = run
                    .iter()
                    .map(|op| match op.kind {
                        IoKind::Read { len, .. } => vec![0u8; len],
                        _ => unreachable!("a run is of one kind"),
                    })
                    .collect();
                let mut reqs: Vec<ReadReq<'_>> = run
                    .iter()
                    .zip(bufs.iter_mut())
                    .map(|(op, buf)| match op.kind {
                        IoKind::Read { sector, .. } => ReadReq { sector, buf },
                        _ => unreachable!(),
                    })
                    .collect();
                match dev.read_batch(&mut reqs) {
                    Ok(()) => bufs.into_iter().map(|b| Ok(IoDone::Read(b))).collect(),
                    Err(e) => run.iter().map(|_| Err(e.clone())).collect(),
                }
            }
            IoKind::Write { .. } => {
                let reqs: Vec<WriteReq<'_>> = run
                    .iter()
                    .map(|op| match &op.kind {
                        IoKind::Write { sector, data, fua } => WriteReq {
                            sector: *sector,
                            data,
                            fua: *fua,
                        },
                        _ => unreachable!(),
                    })
                    .collect();
                let r: std::result::Result<(), IoError> = dev.write_batch(&reqs);
                run.iter()
                    .map(|_| r.clone().map(|()| IoDone::Write))
                    .collect()
            }
            IoKind::Flush => unreachable!("flushes run alone"),
        }
    }
}

/// The sectors an operation touches.
fn extent(op: &IoOp) -> Option<(u64, u64)> {
    if matches!(op.kind, IoKind::Flush) {
        return None;
    }
    let (sector, bytes) = op.kind.extent();
    Some((sector, sector + (bytes / 512) as u64))
}

/// Whether `b` may join a batch holding `run`: same device, same kind, no flush, and no
/// overlap with any of them (a batch's requests are independent).
fn joins(run: &[IoOp], b: &IoOp) -> bool {
    let kind = |op: &IoOp| std::mem::discriminant(&op.kind);
    let Some((s, e)) = extent(b) else {
        return false;
    };
    run.iter().all(|a| {
        a.role == b.role
            && kind(a) == kind(b)
            && extent(a).is_some_and(|(s2, e2)| e <= s2 || e2 <= s)
    })
}

/// Performs everything `poll` hands out, completing through `complete`, until it hands out
/// nothing more. Bounded by the work the engine has: it stops issuing once idle.
fn drive<D: BlockDevice>(
    devs: &mut Devices<D>,
    mut poll: impl FnMut() -> Option<IoOp>,
    mut complete: impl FnMut(IoOp, IoResult),
    mut round_done: impl FnMut(),
) {
    loop {
        round_done();
        let mut ops = Vec::new();
        while let Some(op) = poll() {
            ops.push(op);
        }
        if ops.is_empty() {
            return;
        }
        let mut i = 0;
        while i < ops.len() {
            let mut j = i + 1;
            while j < ops.len() && joins(&ops[i..j], &ops[j]) {
                j += 1;
            }
            let results = devs.perform_run(&ops[i..j]);
            for (op, r) in ops[i..j].iter().zip(results) {
                complete(op.clone(), r);
            }
            i = j;
        }
    }
}

/// An engine and its devices, driven synchronously.
pub struct SyncEngine<D: BlockDevice> {
    engine: Engine,
    devs: Devices<D>,
    next_req: u64,
}

impl<D: BlockDevice> std::ops::Deref for SyncEngine<D> {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl<D: BlockDevice> std::ops::DerefMut for SyncEngine<D> {
    fn deref_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }
}

impl<D: BlockDevice> SyncEngine<D> {
    /// Opens a type-0 cache: formats or recovers `cache` in front of `backing`.
    pub fn open(cache: D, backing: D, cfg: Config) -> Result<(Self, RecoveryReport)> {
        Self::open_with_plog(cache, backing, None, cfg)
    }

    /// Opens a cache with or without a plog device. Formatting with a plog makes a type-1
    /// cache; a type-1 cache must be opened with its plog and a type-0 cache without one.
    pub fn open_with_plog(
        cache: D,
        backing: D,
        plog: Option<D>,
        cfg: Config,
    ) -> Result<(Self, RecoveryReport)> {
        let mut devs = Devices {
            cache,
            backing,
            plog,
        };
        let opening = std::cell::RefCell::new(Opening::new(cfg, devs.sizes())?);
        drive(
            &mut devs,
            || opening.borrow_mut().poll_io(),
            |op, r| opening.borrow_mut().complete(op.id, r),
            || {},
        );
        let opening = opening.into_inner();
        assert!(opening.is_done(), "opening stops only when done");
        let (engine, report) = opening.finish()?;
        Ok((
            SyncEngine {
                engine,
                devs,
                next_req: 1,
            },
            report,
        ))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    pub fn cache_device(&self) -> &D {
        &self.devs.cache
    }

    pub fn backing_device(&self) -> &D {
        &self.devs.backing
    }

    pub fn plog_device(&self) -> Option<&D> {
        self.devs.plog.as_ref()
    }

    /// Completes everything the engine hands out until it is idle.
    pub fn run(&mut self) {
        self.run_watched(|_| {});
    }

    /// [`SyncEngine::run`], calling `watch` between rounds of operations (progress reports).
    fn run_watched(&mut self, mut watch: impl FnMut(&Engine)) {
        let engine = std::cell::RefCell::new(&mut self.engine);
        drive(
            &mut self.devs,
            || engine.borrow_mut().poll_io(),
            |op, r| engine.borrow_mut().complete(op.id, r),
            || watch(&engine.borrow()),
        );
    }

    /// Submits one request, runs until idle, and returns its reply.
    pub fn request(&mut self, req: Request) -> Result<Option<Vec<u8>>> {
        self.request_watched(req, |_| {})
    }

    /// [`SyncEngine::request`], calling `watch` between rounds of operations.
    pub fn request_watched(
        &mut self,
        req: Request,
        watch: impl FnMut(&Engine),
    ) -> Result<Option<Vec<u8>>> {
        let id = ReqId(self.next_req);
        self.next_req += 1;
        self.engine.submit(id, req);
        self.run_watched(watch);
        let mut answer = None;
        while let Some(r) = self.engine.poll_reply() {
            if r.id == id {
                answer = Some(r.result);
            }
        }
        answer.unwrap_or_else(|| {
            panic!(
                "a synchronous driver gets every reply before the engine is idle: {}",
                self.engine.shutdown_state()
            )
        })
    }

    /// Several reads submitted together, so their device reads are in flight at once (as the
    /// runner serves a client's queue); one result per read, in order.
    pub fn read_many(&mut self, reads: &mut [ReadReq<'_>]) -> Vec<Result<()>> {
        let first = self.next_req;
        for r in reads.iter() {
            let id = ReqId(self.next_req);
            self.next_req += 1;
            self.engine.submit(
                id,
                Request::Read {
                    sector: r.sector,
                    len: r.buf.len(),
                },
            );
        }
        self.run();
        let mut results: Vec<Option<Result<()>>> = (0..reads.len()).map(|_| None).collect();
        while let Some(reply) = self.engine.poll_reply() {
            let Some(i) = reply
                .id
                .0
                .checked_sub(first)
                .filter(|&i| i < reads.len() as u64)
            else {
                continue;
            };
            let i = i as usize;
            results[i] = Some(reply.result.map(|d| {
                reads[i]
                    .buf
                    .copy_from_slice(&d.expect("a read returns data"));
            }));
        }
        results
            .into_iter()
            .map(|r| r.expect("every read is answered"))
            .collect()
    }

    /// Reads `buf.len()` bytes at `sector`: the newest acknowledged data of each sector.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<()> {
        let data = self.request(Request::Read {
            sector,
            len: buf.len(),
        })?;
        buf.copy_from_slice(&data.expect("a read returns data"));
        Ok(())
    }

    /// Writes `data` at `sector`. With `fua`, returns only once the data (and everything
    /// acknowledged before it) is durable.
    pub fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<()> {
        self.request(Request::Write {
            sector,
            data: data.to_vec(),
            fua,
        })
        .map(drop)
    }

    /// Client FLUSH: every write acknowledged before it is durable when it returns.
    pub fn flush(&mut self) -> Result<()> {
        self.request(Request::Flush).map(drop)
    }

    /// Discard: the sectors read as zeros afterwards, before and after a crash.
    pub fn discard(&mut self, sector: u64, sectors: u64) -> Result<()> {
        self.request(Request::Discard { sector, sectors }).map(drop)
    }

    pub fn write_zeroes(&mut self, sector: u64, sectors: u64, fua: bool) -> Result<()> {
        self.request(Request::WriteZeroes {
            sector,
            sectors,
            fua,
        })
        .map(drop)
    }

    /// The error the cache died of, as the engine saw it.
    fn dead_error(&self) -> Option<Error> {
        self.engine.dead_error.clone()
    }

    /// Runs one step to completion. A step that kills the cache returns the error.
    pub fn run_step(&mut self, step: Step) -> Result<StepOutcome> {
        if let Some(cause) = &self.engine.dead {
            return Err(Error::Dead {
                cause: cause.clone(),
            });
        }
        let before = self.engine.writebacks_finished();
        self.engine.start_step(step);
        self.run();
        if let Some(e) = self.dead_error() {
            return Err(e);
        }
        let after = self.engine.writebacks_finished();
        Ok(if step == Step::Writeback && after != before {
            self.engine.last_writeback_outcome()
        } else {
            StepOutcome::default()
        })
    }

    /// Runs every due step until none is due (bounded by the work there is).
    pub fn run_due_steps(&mut self) -> Result<u64> {
        let bound = 4 * (self.engine.geo.nr_segments + self.engine.segs.pool as u64) + 8;
        for n in 0..bound {
            match self.engine.next_step() {
                Some(s) => {
                    self.run_step(s)?;
                }
                None => return Ok(n),
            }
        }
        Ok(bound)
    }

    /// Writes every dirty block back and records it: the engine's `Request::Drain`.
    pub fn drain(&mut self) -> Result<()> {
        self.request(Request::Drain).map(drop)
    }

    /// [`SyncEngine::drain`], calling `watch` between rounds of operations (a progress bar).
    pub fn drain_watched(&mut self, watch: impl FnMut(&Engine)) -> Result<()> {
        self.request_watched(Request::Drain, watch).map(drop)
    }

    /// Clean shutdown: seal, make everything durable, record how far writeback got. Returns the
    /// devices (cache, backing).
    pub fn shutdown(self) -> Result<(D, D)> {
        let (c, b, _) = self.shutdown_all()?;
        Ok((c, b))
    }

    /// Clean shutdown as [`SyncEngine::shutdown`], returning every device (cache, backing,
    /// plog). Type 1: the plog stage is written and the plog flushed too.
    pub fn shutdown_all(mut self) -> Result<(D, D, Option<D>)> {
        if let Some(cause) = &self.engine.dead {
            return Err(Error::Dead {
                cause: cause.clone(),
            });
        }
        self.engine.begin_shutdown();
        self.run();
        if let Some(e) = self.dead_error() {
            return Err(e);
        }
        assert!(
            self.engine.shutdown_complete(),
            "a synchronous shutdown completes: {}",
            self.engine.shutdown_state()
        );
        Ok(self.into_all_devices())
    }

    /// The engine and its devices, apart: a driver of its own (the runner's executor) takes
    /// over from here.
    pub fn into_parts(self) -> (Engine, D, D, Option<D>) {
        (
            self.engine,
            self.devs.cache,
            self.devs.backing,
            self.devs.plog,
        )
    }

    /// Gives the devices back (cache, backing) without any further I/O: what a power cut does.
    pub fn into_devices(self) -> (D, D) {
        (self.devs.cache, self.devs.backing)
    }

    /// Gives every device back (cache, backing, plog) without any further I/O: a power cut. In
    /// type 1 the plog's RAM stage is lost with the RAM buffers.
    pub fn into_all_devices(self) -> (D, D, Option<D>) {
        (self.devs.cache, self.devs.backing, self.devs.plog)
    }
}
