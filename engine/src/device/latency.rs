//! [`LatencyDevice`]: a device wrapper that counts what it is asked and charges each operation
//! a simulated time from a [`LatencyModel`] (the flush-heavy bench, `cargo xtask bench`).
//!
//! The engine is synchronous and single-threaded, so the model is serial: an operation's time is
//! added to its device's clock and a run's simulated time is the sum over its devices. Nothing
//! overlaps, nothing is queued; the figures compare I/O patterns, not a real machine.

use super::{BlockDevice, IoError, MemDevice};
use crate::format::SECTOR_SIZE;

/// How long operations take on one kind of device.
#[derive(Clone, Copy, Debug)]
pub struct LatencyModel {
    pub name: &'static str,
    /// Fixed cost of every read or write command, in ns.
    pub op_ns: u64,
    /// Extra cost of an operation that does not start where the previous one ended (a seek and
    /// rotation on a disk; 0 on flash).
    pub seek_ns: u64,
    /// Transfer rates in bytes per second.
    pub write_bps: u64,
    pub read_bps: u64,
    /// A flush with writes completed since the previous flush.
    pub flush_ns: u64,
    /// A flush with nothing to make durable (a round trip).
    pub idle_flush_ns: u64,
    /// A FUA write costs the write plus this (write-through to the media).
    pub fua_ns: u64,
}

/// SSD-like cache and plog devices.
pub const SSD: LatencyModel = LatencyModel {
    name: "SSD (cache, plog)",
    op_ns: 20_000,
    seek_ns: 0,
    write_bps: 1_000_000_000,
    read_bps: 2_000_000_000,
    flush_ns: 200_000,
    idle_flush_ns: 5_000,
    fua_ns: 200_000,
};

/// An HDD-like backing device.
pub const HDD: LatencyModel = LatencyModel {
    name: "HDD (backing)",
    op_ns: 0,
    seek_ns: 5_000_000,
    write_bps: 150_000_000,
    read_bps: 150_000_000,
    flush_ns: 10_000_000,
    idle_flush_ns: 5_000,
    fua_ns: 10_000_000,
};

/// What a device was asked to do (operations that succeeded), and the simulated time it took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub write_ops: u64,
    pub bytes_written: u64,
    pub fua_writes: u64,
    pub read_ops: u64,
    pub bytes_read: u64,
    pub flushes: u64,
    /// Simulated time spent in this device's operations, ns.
    pub time_ns: u64,
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, o: Counters) -> Counters {
        Counters {
            write_ops: self.write_ops - o.write_ops,
            bytes_written: self.bytes_written - o.bytes_written,
            fua_writes: self.fua_writes - o.fua_writes,
            read_ops: self.read_ops - o.read_ops,
            bytes_read: self.bytes_read - o.bytes_read,
            flushes: self.flushes - o.flushes,
            time_ns: self.time_ns - o.time_ns,
        }
    }
}

/// A device (by default a [`MemDevice`]) with counters and a latency model. An operation the
/// inner device fails is neither counted nor charged.
#[derive(Clone, Debug)]
pub struct LatencyDevice<D = MemDevice> {
    inner: D,
    model: LatencyModel,
    counters: Counters,
    /// Sector after the end of the previous read or write (sequential detection).
    next_sector: Option<u64>,
    /// Writes completed since the previous flush.
    pending: bool,
}

impl LatencyDevice {
    /// A zero-filled in-memory device of `sectors` sectors.
    pub fn mem(sectors: u64, model: LatencyModel) -> Self {
        LatencyDevice::new(MemDevice::new(sectors), model)
    }
}

impl<D> LatencyDevice<D> {
    pub fn new(inner: D, model: LatencyModel) -> Self {
        LatencyDevice {
            inner,
            model,
            counters: Counters::default(),
            next_sector: None,
            pending: false,
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn model(&self) -> &LatencyModel {
        &self.model
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    pub fn into_inner(self) -> D {
        self.inner
    }

    fn transfer_ns(bytes: usize, bps: u64) -> u64 {
        (bytes as u128 * 1_000_000_000 / bps as u128) as u64
    }

    fn position_ns(&mut self, sector: u64, len: usize) -> u64 {
        let seek = if self.next_sector == Some(sector) {
            0
        } else {
            self.model.seek_ns
        };
        self.next_sector = Some(sector + (len / SECTOR_SIZE) as u64);
        self.model.op_ns + seek
    }
}

impl<D: BlockDevice> BlockDevice for LatencyDevice<D> {
    fn size_sectors(&self) -> u64 {
        self.inner.size_sectors()
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.inner.read(sector, buf)?;
        let t =
            self.position_ns(sector, buf.len()) + Self::transfer_ns(buf.len(), self.model.read_bps);
        self.counters.read_ops += 1;
        self.counters.bytes_read += buf.len() as u64;
        self.counters.time_ns += t;
        Ok(())
    }

    fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
        self.inner.write(sector, data, fua)?;
        let mut t = self.position_ns(sector, data.len())
            + Self::transfer_ns(data.len(), self.model.write_bps);
        if fua {
            t += self.model.fua_ns;
            self.counters.fua_writes += 1;
        }
        self.counters.write_ops += 1;
        self.counters.bytes_written += data.len() as u64;
        self.counters.time_ns += t;
        self.pending = true;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.inner.flush()?;
        self.counters.flushes += 1;
        self.counters.time_ns += if self.pending {
            self.model.flush_ns
        } else {
            self.model.idle_flush_ns
        };
        self.pending = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_by_the_model() {
        let mut d = LatencyDevice::mem(64, HDD);
        d.write(0, &[1u8; 4096], false).unwrap();
        d.write(8, &[2u8; 4096], false).unwrap(); // sequential: no seek
        d.flush().unwrap();
        d.flush().unwrap(); // nothing pending
        let c = d.counters();
        let xfer = 4096 * 1_000_000_000 / 150_000_000;
        assert_eq!(c.write_ops, 2);
        assert_eq!(c.bytes_written, 8192);
        assert_eq!(c.flushes, 2);
        assert_eq!(c.time_ns, 5_000_000 + 2 * xfer + 10_000_000 + 5_000);
        let mut buf = [0u8; 4096];
        d.read(8, &mut buf).unwrap();
        assert_eq!(buf, [2u8; 4096]);
        assert_eq!(d.counters().bytes_read, 4096);
    }

    #[test]
    fn fua_and_per_op_costs_and_failures() {
        let mut d = LatencyDevice::mem(64, SSD);
        d.write(0, &[1u8; 512], true).unwrap();
        let one = d.counters();
        assert_eq!(one.fua_writes, 1);
        assert_eq!(
            one.time_ns,
            20_000 + 512 + 200_000,
            "op + transfer at 1 GB/s + FUA"
        );
        d.read(32, &mut [0u8; 1024]).unwrap();
        assert_eq!(
            (d.counters() - one).time_ns,
            20_000 + 512,
            "2 GB/s, no seek on flash"
        );
        let before = d.counters();
        assert!(d.write(64, &[0u8; 512], false).is_err(), "past the end");
        assert_eq!(d.counters(), before, "a failed operation costs nothing");
    }
}
