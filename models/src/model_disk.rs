//! The simplest possible disk: what a read must return right now (contract rule 1, docs/DESIGN.md).

use crate::access::{check, AccessError};
use crate::SECTOR_SIZE;

/// A disk held in a `Vec<u8>`: every write lands immediately, every read returns the latest write.
/// Differential tests drive it next to the engine and compare every read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelDisk {
    data: Vec<u8>,
}

impl ModelDisk {
    /// A zero-filled disk of `sectors` sectors.
    pub fn new(sectors: u64) -> Self {
        ModelDisk {
            data: vec![0; sectors as usize * SECTOR_SIZE],
        }
    }

    /// A disk holding `data`, which must be whole sectors.
    pub fn from_bytes(data: Vec<u8>) -> Result<Self, AccessError> {
        if data.len() % SECTOR_SIZE != 0 {
            return Err(AccessError::NotWholeSectors { len: data.len() });
        }
        Ok(ModelDisk { data })
    }

    pub fn size_sectors(&self) -> u64 {
        (self.data.len() / SECTOR_SIZE) as u64
    }

    /// Fills `buf` (whole sectors) from `sector` on.
    pub fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), AccessError> {
        check(self.size_sectors(), sector, buf.len())?;
        let at = sector as usize * SECTOR_SIZE;
        buf.copy_from_slice(&self.data[at..at + buf.len()]);
        Ok(())
    }

    /// The `sectors` sectors from `sector` on, as a new buffer.
    pub fn read_vec(&self, sector: u64, sectors: u64) -> Result<Vec<u8>, AccessError> {
        let mut buf = vec![0; sectors as usize * SECTOR_SIZE];
        self.read(sector, &mut buf)?;
        Ok(buf)
    }

    /// Writes `data` (whole sectors) at `sector`.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), AccessError> {
        check(self.size_sectors(), sector, data.len())?;
        let at = sector as usize * SECTOR_SIZE;
        self.data[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    /// Discard and write-zeroes: the sectors read as zeros afterwards (docs/DESIGN.md, Discard).
    pub fn write_zeroes(&mut self, sector: u64, sectors: u64) -> Result<(), AccessError> {
        let len = usize::try_from(sectors)
            .ok()
            .and_then(|s| s.checked_mul(SECTOR_SIZE))
            .ok_or(AccessError::OutOfRange {
                sector,
                sectors,
                size: self.size_sectors(),
            })?;
        check(self.size_sectors(), sector, len)?;
        let at = sector as usize * SECTOR_SIZE;
        self.data[at..at + len].fill(0);
        Ok(())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_return_the_latest_write() {
        let mut d = ModelDisk::new(4);
        d.write(1, &[5; 1024]).unwrap();
        d.write(2, &[6; 512]).unwrap();
        assert_eq!(d.read_vec(1, 2).unwrap(), [[5u8; 512], [6u8; 512]].concat());
        d.write_zeroes(1, 1).unwrap();
        assert_eq!(d.read_vec(1, 1).unwrap(), vec![0; 512]);
    }

    #[test]
    fn bad_accesses_are_typed_errors() {
        let mut d = ModelDisk::new(2);
        assert_eq!(
            d.write(0, &[0; 100]),
            Err(AccessError::NotWholeSectors { len: 100 })
        );
        assert!(matches!(
            d.read_vec(1, 2),
            Err(AccessError::OutOfRange { .. })
        ));
        assert!(d.write_zeroes(u64::MAX, u64::MAX).is_err());
        assert!(ModelDisk::from_bytes(vec![0; 3]).is_err());
    }
}
