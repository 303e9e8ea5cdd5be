//! [`VolatileMem`]: an in-memory device with a volatile write cache that a power cut empties.

use super::{check_access, Access, BlockDevice, IoError, MemDevice};
use crate::format::SECTOR_SIZE;

/// A device with a volatile write cache, the worst case the media model allows
/// (docs/DESIGN.md, "Media assumptions"): a read returns the newest completed write, a write is
/// durable only once a flush followed it or if it was FUA, and [`Self::crash`] (a power cut)
/// keeps exactly what was durable. No write is ever torn or half kept; the crash simulator
/// (`crashsim`) is the device that models those.
#[derive(Clone, Debug)]
pub struct VolatileMem {
    /// What reads see: every completed write.
    current: MemDevice,
    /// What survives a power cut.
    durable: MemDevice,
    /// Ranges (sector, sectors) written since the last flush, not FUA: copied to `durable` by
    /// the next flush.
    unflushed: Vec<(u64, u64)>,
}

impl VolatileMem {
    /// A zero-filled device of `sectors` sectors, all of it durable.
    pub fn new(sectors: u64) -> Self {
        VolatileMem::from_durable(MemDevice::new(sectors))
    }

    /// A device whose durable (and current) content is `dev`'s.
    pub fn from_durable(dev: MemDevice) -> Self {
        VolatileMem {
            current: dev.clone(),
            durable: dev,
            unflushed: Vec::new(),
        }
    }

    /// A power cut: what was durable, every write not flushed (or FUA) lost.
    pub fn crash(self) -> MemDevice {
        self.durable
    }

    /// What a power cut now would keep.
    pub fn durable(&self) -> &MemDevice {
        &self.durable
    }

    /// What reads see now.
    pub fn current(&self) -> &MemDevice {
        &self.current
    }

    /// Writes completed since the last flush and not FUA (each counted once, even if a later
    /// FUA write covered it).
    pub fn unflushed_writes(&self) -> usize {
        self.unflushed.len()
    }
}

impl BlockDevice for VolatileMem {
    fn size_sectors(&self) -> u64 {
        self.current.size_sectors()
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.current.read(sector, buf)
    }

    fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
        check_access(Access::Write, self.size_sectors(), sector, data.len())?;
        self.current.write(sector, data, false)?;
        if fua {
            self.durable.write(sector, data, false)?;
        } else {
            self.unflushed
                .push((sector, (data.len() / SECTOR_SIZE) as u64));
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), IoError> {
        // The current content of every range written since: the newest write of each sector.
        for (sector, sectors) in self.unflushed.drain(..) {
            let (at, len) = (
                sector as usize * SECTOR_SIZE,
                sectors as usize * SECTOR_SIZE,
            );
            self.durable.bytes_mut()[at..at + len]
                .copy_from_slice(&self.current.bytes()[at..at + len]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sector(dev: &mut impl BlockDevice, s: u64) -> u8 {
        let mut buf = [0u8; SECTOR_SIZE];
        dev.read(s, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == buf[0]));
        buf[0]
    }

    #[test]
    fn a_crash_loses_unflushed_writes_and_keeps_flushed_and_fua_ones() {
        let mut d = VolatileMem::new(8);
        d.write(0, &[1u8; 1024], false).unwrap(); // sectors 0, 1
        d.flush().unwrap();
        d.write(1, &[2u8; 512], false).unwrap(); // over a flushed sector: lost
        d.write(3, &[3u8; 512], true).unwrap(); // FUA: kept
        d.write(5, &[5u8; 512], false).unwrap(); // lost
                                                 // Reads see every completed write.
        assert_eq!(
            (0..6).map(|s| sector(&mut d, s)).collect::<Vec<_>>(),
            [1, 2, 0, 3, 0, 5]
        );
        assert_eq!(d.unflushed_writes(), 2);
        let mut after = d.crash();
        assert_eq!(
            (0..6).map(|s| sector(&mut after, s)).collect::<Vec<_>>(),
            [1, 1, 0, 3, 0, 0]
        );
    }

    #[test]
    fn a_flush_makes_the_newest_write_of_each_sector_durable() {
        let mut d = VolatileMem::new(4);
        d.write(0, &[1u8; 2048], false).unwrap();
        d.write(1, &[2u8; 512], false).unwrap();
        // A FUA write over unflushed ones: its range is durable, the rest of theirs is not.
        d.write(2, &[3u8; 512], true).unwrap();
        let durable: Vec<u8> = d
            .durable()
            .bytes()
            .chunks(SECTOR_SIZE)
            .map(|s| s[0])
            .collect();
        assert_eq!(durable, [0, 0, 3, 0]);
        d.flush().unwrap();
        assert_eq!(d.unflushed_writes(), 0);
        assert_eq!(d.durable(), d.current());
        // A write after the flush is lost again.
        d.write(0, &[9u8; 512], false).unwrap();
        let mut after = d.crash();
        assert_eq!(
            (0..4).map(|s| sector(&mut after, s)).collect::<Vec<_>>(),
            [1, 2, 3, 1]
        );
    }

    #[test]
    fn a_bad_access_changes_nothing() {
        let mut d = VolatileMem::from_durable(MemDevice::from_bytes(vec![4u8; 1024]));
        assert!(d.write(1, &[0u8; 1024], true).is_err(), "past the end");
        assert!(d.write(0, &[0u8; 100], false).is_err(), "not whole sectors");
        assert_eq!(d.unflushed_writes(), 0);
        d.flush().unwrap();
        assert_eq!(d.crash().bytes(), &[4u8; 1024][..]);
    }
}
