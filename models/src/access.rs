//! Address checks shared by the history and the model disk.

use crate::SECTOR_SIZE;
use thiserror::Error;

/// An access that is not whole sectors inside the device.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AccessError {
    #[error("length {len} bytes is not a whole number of sectors")]
    NotWholeSectors { len: usize },
    #[error("{sectors} sector(s) at sector {sector} go beyond the device end ({size} sectors)")]
    OutOfRange {
        sector: u64,
        sectors: u64,
        size: u64,
    },
}

/// Checks that `len` bytes at `sector` are whole sectors inside a device of `size` sectors.
pub(crate) fn check(size: u64, sector: u64, len: usize) -> Result<(), AccessError> {
    if len % SECTOR_SIZE != 0 {
        return Err(AccessError::NotWholeSectors { len });
    }
    let sectors = (len / SECTOR_SIZE) as u64;
    match sector.checked_add(sectors) {
        Some(end) if end <= size => Ok(()),
        _ => Err(AccessError::OutOfRange {
            sector,
            sectors,
            size,
        }),
    }
}

/// Byte range of sector `s`.
pub(crate) fn sector_range(s: u64) -> std::ops::Range<usize> {
    let at = s as usize * SECTOR_SIZE;
    at..at + SECTOR_SIZE
}
