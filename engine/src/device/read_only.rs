//! [`ReadOnly`]: a device wrapper that refuses every write and flush, for code that promises
//! not to change a device (offline inspection) and for tools that must not.

use super::{Access, BlockDevice, IoError, ReadReq, WriteReq};
use crate::format::SECTOR_SIZE;

/// Passes reads to `D` and refuses writes and flushes with an [`IoError`] ("read-only
/// device"), counting them: a test asserts [`Self::refused`] is 0 to catch even an attempt
/// whose error the caller swallowed.
#[derive(Clone, Debug)]
pub struct ReadOnly<D> {
    inner: D,
    refused: u64,
}

impl<D> ReadOnly<D> {
    pub fn new(inner: D) -> Self {
        ReadOnly { inner, refused: 0 }
    }

    /// Writes (each request of a batch) and flushes refused so far.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    pub fn into_inner(self) -> D {
        self.inner
    }

    fn refuse(&mut self, op: Access, sector: u64, len: usize) -> IoError {
        self.refused += 1;
        IoError::new(op, sector, (len / SECTOR_SIZE) as u64, "read-only device")
    }
}

impl<D: BlockDevice> BlockDevice for ReadOnly<D> {
    fn size_sectors(&self) -> u64 {
        self.inner.size_sectors()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.inner.read(sector, buf)
    }
    fn write(&mut self, sector: u64, data: &[u8], _fua: bool) -> Result<(), IoError> {
        Err(self.refuse(Access::Write, sector, data.len()))
    }
    fn flush(&mut self) -> Result<(), IoError> {
        Err(self.refuse(Access::Flush, 0, 0))
    }
    fn write_batch(&mut self, writes: &[WriteReq<'_>]) -> Result<(), IoError> {
        let mut err = None;
        for w in writes {
            let e = self.refuse(Access::Write, w.sector, w.data.len());
            err.get_or_insert(e);
        }
        err.map_or(Ok(()), Err)
    }
    fn read_batch(&mut self, reads: &mut [ReadReq<'_>]) -> Result<(), IoError> {
        self.inner.read_batch(reads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;

    #[test]
    fn refuses_writes_and_flushes_and_changes_nothing() {
        let image = MemDevice::from_bytes((0..4 * SECTOR_SIZE).map(|i| i as u8).collect());
        let mut d = ReadOnly::new(image.clone());
        let err = d.write(1, &[0u8; 1024], true).unwrap_err();
        assert_eq!(err, IoError::new(Access::Write, 1, 2, "read-only device"));
        assert_eq!(d.flush().unwrap_err().op, Access::Flush);
        let w = WriteReq {
            sector: 0,
            data: &[0u8; 512],
            fua: false,
        };
        assert!(d.write_batch(&[w, w]).is_err());
        assert!(d.write_batch(&[]).is_ok(), "an empty batch writes nothing");
        assert_eq!(d.refused(), 4);
        assert_eq!(d.inner(), &image);
        // Reads pass.
        let mut buf = [0u8; 512];
        d.read(1, &mut buf).unwrap();
        assert_eq!(buf[..], image.bytes()[512..1024]);
        let mut two = [0u8; 512];
        d.read_batch(&mut [ReadReq {
            sector: 3,
            buf: &mut two,
        }])
        .unwrap();
        assert_eq!(two[..], image.bytes()[1536..]);
        assert!(d.read(4, &mut buf).is_err(), "the inner device's bounds");
        assert_eq!(d.refused(), 4, "reads are never refused");
        assert_eq!(d.into_inner(), image);
    }
}
