//! What the engine thread needs of the cache: the engine's client and background API behind a
//! trait, so the loom tests can put a small fake with the same durability contract behind the
//! runner's real handoff code. [`EngineCore`] is the production implementation: a thin
//! forwarding layer over `engine::SyncEngine`, plus the backing-load sampling for the modulator.

use engine::{BlockDevice, Error, MemDevice, ReadReq, Status, SyncEngine};

/// The cache as the engine thread drives it. Every method runs on the engine thread only.
pub trait Core {
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Error>;
    /// Several reads with the outcome of `read` for each in order (one result per request);
    /// a cache may issue their device reads together.
    fn read_many(&mut self, reads: &mut [ReadReq<'_>]) -> Vec<Result<(), Error>> {
        reads
            .iter_mut()
            .map(|r| self.read(r.sector, r.buf))
            .collect()
    }
    /// With `fua`, returns only once the data (and everything before it) is durable.
    fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<(), Error>;
    /// Returns once every write completed before it is durable.
    fn flush(&mut self) -> Result<(), Error>;
    fn discard(&mut self, sector: u64, sectors: u64) -> Result<(), Error>;
    fn write_zeroes(&mut self, sector: u64, sectors: u64, fua: bool) -> Result<(), Error>;
    /// Gives the cache the time (monotonic milliseconds).
    fn tick(&mut self, now_ms: u64);
    /// Runs one due background step; `false` when none is due.
    fn run_one_step(&mut self) -> Result<bool, Error>;
    fn status(&self) -> Status;
    fn message(&mut self, msg: &str) -> Result<(), Error>;
    /// Why the cache is dead, if it is.
    fn dead_cause(&self) -> Option<String>;
    /// Clean shutdown: everything acknowledged made durable and recorded.
    fn shutdown(self) -> Result<(), Error>;
}

/// A device that can say how long it has spent in I/O, for the writeback modulator's input.
pub trait BusyTime {
    /// Nanoseconds spent inside device calls since the device was opened.
    fn busy_ns(&self) -> u64;
}

impl BusyTime for MemDevice {
    fn busy_ns(&self) -> u64 {
        0
    }
}

/// How often the backing load is re-estimated.
const LOAD_SAMPLE_MS: u64 = 1000;

/// The engine behind [`Core`].
pub struct EngineCore<D: BlockDevice> {
    pub engine: SyncEngine<D>,
    /// (time, backing busy ns) at the last load sample.
    load_sample: Option<(u64, u64)>,
}

impl<D: BlockDevice> EngineCore<D> {
    pub fn new(engine: SyncEngine<D>) -> Self {
        EngineCore {
            engine,
            load_sample: None,
        }
    }
}

impl<D: BlockDevice + BusyTime> Core for EngineCore<D> {
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.engine.read(sector, buf)
    }
    fn read_many(&mut self, reads: &mut [ReadReq<'_>]) -> Vec<Result<(), Error>> {
        self.engine.read_many(reads)
    }
    fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<(), Error> {
        self.engine.write(sector, data, fua)
    }
    fn flush(&mut self) -> Result<(), Error> {
        self.engine.flush()
    }
    fn discard(&mut self, sector: u64, sectors: u64) -> Result<(), Error> {
        self.engine.discard(sector, sectors)
    }
    fn write_zeroes(&mut self, sector: u64, sectors: u64, fua: bool) -> Result<(), Error> {
        self.engine.write_zeroes(sector, sectors, fua)
    }

    /// Also estimates the backing device's load: the share of the last second the engine spent
    /// in backing-device calls. The runner is the only user of the device it opened, so its
    /// own busy time is the load it can see (other users of a shared disk are invisible).
    fn tick(&mut self, now_ms: u64) {
        self.engine.tick(now_ms);
        let busy = self.engine.backing_device().busy_ns();
        match self.load_sample {
            None => self.load_sample = Some((now_ms, busy)),
            Some((t0, b0)) if now_ms >= t0 + LOAD_SAMPLE_MS => {
                let wall_ns = (now_ms - t0) * 1_000_000;
                let pct = (busy.saturating_sub(b0).saturating_mul(100) / wall_ns).min(100);
                self.engine.set_backing_load(pct as u8);
                self.load_sample = Some((now_ms, busy));
            }
            Some(_) => {}
        }
    }

    fn run_one_step(&mut self) -> Result<bool, Error> {
        match self.engine.next_step() {
            Some(step) => self.engine.run_step(step).map(|_| true),
            None => Ok(false),
        }
    }
    fn status(&self) -> Status {
        self.engine.status()
    }
    fn message(&mut self, msg: &str) -> Result<(), Error> {
        self.engine.message(msg)
    }
    fn dead_cause(&self) -> Option<String> {
        // `is_dead` first: building a full status after every request would be wasted work.
        if self.engine.is_dead() {
            self.engine.status().dead
        } else {
            None
        }
    }
    fn shutdown(self) -> Result<(), Error> {
        // Every device back, the plog too: after `shutdown_all` the cache device holds
        // everything, and the plog is flushed as well so nothing the engine wrote to it is
        // left in a volatile cache when the process exits.
        let (_, _, plog) = self.engine.shutdown_all()?;
        if let Some(mut p) = plog {
            p.flush().map_err(|source| Error::Io {
                role: engine::DeviceRole::Plog,
                source,
            })?;
        }
        Ok(())
    }
}
