//! The one interface through which the engine does all of its I/O.
//!
//! The engine never touches a file, a clock or a thread. Every read, write and flush it needs goes
//! through [`BlockDevice`], and the crash simulator and the production runner implement that same
//! trait. Completion semantics follow the media model (docs/DESIGN.md, "Media assumptions"):
//!
//! * `write` completes into the device's volatile cache unless `fua` is set, in which case the
//!   written range is durable when the call returns;
//! * `flush` makes every write that completed before it durable;
//! * a read returns the newest completed write of each sector, durable or not.
//!
//! Overlap: [`BlockDevice::write_batch`] and [`BlockDevice::read_batch`] hand the device a set of
//! independent requests (no two overlap) that it may run in any order or concurrently; the call
//! returns once all completed. The default implementations run them one by one, which is what the
//! in-memory and simulated devices want; a runner with io_uring or a thread pool overrides them.
//!
//! The submodules are devices for tests, benches and tools, built on [`MemDevice`] or wrapping
//! any device; they hold no cache logic and the engine itself never uses them:
//!
//! * [`shared`]: [`SharedDevice`], a cloneable handle on one device, to reach its storage while
//!   an engine owns another handle;
//! * [`volatile`]: [`VolatileMem`], a volatile write cache that [`VolatileMem::crash`] empties;
//! * [`observed`]: [`Observed`], counts every request and shows it to an [`Observer`] (traces,
//!   checks, change tracking);
//! * [`faulty`]: [`Faulty`], injects a [`Fault`] (an error or flipped data) into chosen
//!   operations;
//! * [`read_only`]: [`ReadOnly`], refuses writes and flushes;
//! * [`latency`]: [`LatencyDevice`], charges each operation a simulated time.

use crate::format::SECTOR_SIZE;
use thiserror::Error;

pub mod faulty;
pub mod latency;
pub mod observed;
pub mod read_only;
pub mod shared;
pub mod volatile;

pub use faulty::{Fault, Faulty};
pub use latency::{LatencyDevice, LatencyModel};
pub use observed::{Counts, Observed, Observer, Op};
pub use read_only::ReadOnly;
pub use shared::{SharedDevice, SharedMem};
pub use volatile::VolatileMem;

/// Which of the engine's devices an operation went to; used in errors, traces and status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceRole {
    Backing,
    Cache,
    Plog,
}

impl std::fmt::Display for DeviceRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceRole::Backing => "backing",
            DeviceRole::Cache => "cache",
            DeviceRole::Plog => "plog",
        })
    }
}

/// What kind of device operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Flush,
}

/// A device operation failed. The device says what happened in `detail`.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{op:?} of {sectors} sector(s) at sector {sector} failed: {detail}")]
pub struct IoError {
    pub op: Access,
    pub sector: u64,
    pub sectors: u64,
    pub detail: String,
}

impl IoError {
    pub fn new(op: Access, sector: u64, sectors: u64, detail: impl Into<String>) -> Self {
        IoError {
            op,
            sector,
            sectors,
            detail: detail.into(),
        }
    }
}

/// One write of a batch.
#[derive(Clone, Copy, Debug)]
pub struct WriteReq<'a> {
    pub sector: u64,
    pub data: &'a [u8],
    pub fua: bool,
}

/// One read of a batch.
#[derive(Debug)]
pub struct ReadReq<'a> {
    pub sector: u64,
    pub buf: &'a mut [u8],
}

/// A sector-addressed block device. All buffers are whole sectors (multiples of 512 bytes).
pub trait BlockDevice {
    /// Size of the device in 512-byte sectors.
    fn size_sectors(&self) -> u64;

    /// Read `buf.len() / 512` sectors starting at `sector`.
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError>;

    /// Write `data.len() / 512` sectors starting at `sector`; durable on return if `fua`.
    fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<(), IoError>;

    /// Make every completed write durable.
    fn flush(&mut self) -> Result<(), IoError>;

    /// Independent, non-overlapping writes that may run concurrently. The order of the slice is
    /// the engine's deterministic submission order; a device that logs operations logs that.
    fn write_batch(&mut self, writes: &[WriteReq<'_>]) -> Result<(), IoError> {
        for w in writes {
            self.write(w.sector, w.data, w.fua)?;
        }
        Ok(())
    }

    /// Independent reads that may run concurrently.
    fn read_batch(&mut self, reads: &mut [ReadReq<'_>]) -> Result<(), IoError> {
        for r in reads.iter_mut() {
            self.read(r.sector, r.buf)?;
        }
        Ok(())
    }
}

impl<T: BlockDevice + ?Sized> BlockDevice for Box<T> {
    fn size_sectors(&self) -> u64 {
        (**self).size_sectors()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        (**self).read(sector, buf)
    }
    fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
        (**self).write(sector, data, fua)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        (**self).flush()
    }
    fn write_batch(&mut self, writes: &[WriteReq<'_>]) -> Result<(), IoError> {
        (**self).write_batch(writes)
    }
    fn read_batch(&mut self, reads: &mut [ReadReq<'_>]) -> Result<(), IoError> {
        (**self).read_batch(reads)
    }
}

/// Checks that an access of `len` bytes at `sector` is whole sectors and inside a device of
/// `size` sectors. Shared by every device implementation so they reject the same things.
pub fn check_access(op: Access, size: u64, sector: u64, len: usize) -> Result<(), IoError> {
    let sectors = (len / SECTOR_SIZE) as u64;
    if len % SECTOR_SIZE != 0 {
        return Err(IoError::new(
            op,
            sector,
            sectors,
            format!("length {len} is not whole sectors"),
        ));
    }
    match sector.checked_add(sectors) {
        Some(end) if end <= size => Ok(()),
        _ => Err(IoError::new(
            op,
            sector,
            sectors,
            format!("beyond device end ({size} sectors)"),
        )),
    }
}

/// A device held entirely in memory, with no volatile cache: every completed write is durable.
/// For unit tests and benchmarks; the crash simulator has the device with a media model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemDevice {
    data: Vec<u8>,
}

impl MemDevice {
    /// A zero-filled device of `sectors` sectors.
    pub fn new(sectors: u64) -> Self {
        MemDevice {
            data: vec![0; sectors as usize * SECTOR_SIZE],
        }
    }

    /// A device holding exactly `data` (whole sectors).
    pub fn from_bytes(data: Vec<u8>) -> Self {
        assert_eq!(
            data.len() % SECTOR_SIZE,
            0,
            "a device image is whole sectors"
        );
        MemDevice { data }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }
}

impl BlockDevice for MemDevice {
    fn size_sectors(&self) -> u64 {
        (self.data.len() / SECTOR_SIZE) as u64
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        check_access(Access::Read, self.size_sectors(), sector, buf.len())?;
        let at = sector as usize * SECTOR_SIZE;
        buf.copy_from_slice(&self.data[at..at + buf.len()]);
        Ok(())
    }

    fn write(&mut self, sector: u64, data: &[u8], _fua: bool) -> Result<(), IoError> {
        check_access(Access::Write, self.size_sectors(), sector, data.len())?;
        let at = sector as usize * SECTOR_SIZE;
        self.data[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), IoError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_device_round_trip_and_bounds() {
        let mut d = MemDevice::new(4);
        d.write(1, &[7u8; 1024], false).unwrap();
        let mut buf = [0u8; 512];
        d.read(2, &mut buf).unwrap();
        assert_eq!(buf, [7u8; 512]);
        d.read(0, &mut buf).unwrap();
        assert_eq!(buf, [0u8; 512]);
        assert!(
            d.write(3, &[0u8; 1024], false).is_err(),
            "write past the end"
        );
        assert!(d.read(0, &mut [0u8; 100]).is_err(), "partial sector");
        assert!(d.read(u64::MAX, &mut buf).is_err(), "overflowing address");
    }
}
