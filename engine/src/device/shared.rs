//! [`SharedDevice`]: a cloneable handle on one device, so a test can reach the storage while an
//! engine owns (or after it dropped) another handle.

use std::cell::{Ref, RefCell, RefMut};
use std::rc::Rc;

use super::{BlockDevice, IoError, MemDevice, ReadReq, WriteReq};

/// A handle on a device shared by every clone of it: what one clone writes, all read. Every
/// operation borrows the device for its duration, so a test must not hold [`Self::borrow`] or
/// [`Self::borrow_mut`] across an engine call that does I/O (that would panic, as `RefCell`
/// does). Single-threaded, like the drivers it is for.
#[derive(Debug)]
pub struct SharedDevice<D = MemDevice>(Rc<RefCell<D>>);

/// The common case: a shared in-memory device.
pub type SharedMem = SharedDevice<MemDevice>;

impl<D> SharedDevice<D> {
    pub fn new(dev: D) -> Self {
        SharedDevice(Rc::new(RefCell::new(dev)))
    }

    /// The device, for inspection.
    pub fn borrow(&self) -> Ref<'_, D> {
        self.0.borrow()
    }

    /// The device, to change behind the engine's back (bit rot, say).
    pub fn borrow_mut(&self) -> RefMut<'_, D> {
        self.0.borrow_mut()
    }

    /// The device, if this is the last handle; otherwise the handle back.
    pub fn try_into_inner(self) -> Result<D, Self> {
        Rc::try_unwrap(self.0)
            .map(RefCell::into_inner)
            .map_err(SharedDevice)
    }
}

impl SharedMem {
    /// A shared zero-filled in-memory device of `sectors` sectors.
    pub fn mem(sectors: u64) -> Self {
        SharedDevice::new(MemDevice::new(sectors))
    }

    /// A copy of the device's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.borrow().bytes().to_vec()
    }
}

impl<D> Clone for SharedDevice<D> {
    fn clone(&self) -> Self {
        SharedDevice(self.0.clone())
    }
}

impl<D: BlockDevice> BlockDevice for SharedDevice<D> {
    fn size_sectors(&self) -> u64 {
        self.0.borrow().size_sectors()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.0.borrow_mut().read(sector, buf)
    }
    fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
        self.0.borrow_mut().write(sector, data, fua)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        self.0.borrow_mut().flush()
    }
    fn write_batch(&mut self, writes: &[WriteReq<'_>]) -> Result<(), IoError> {
        self.0.borrow_mut().write_batch(writes)
    }
    fn read_batch(&mut self, reads: &mut [ReadReq<'_>]) -> Result<(), IoError> {
        self.0.borrow_mut().read_batch(reads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_clone_sees_one_device() {
        let a = SharedMem::mem(4);
        let mut b = a.clone();
        b.write(1, &[7u8; 512], false).unwrap();
        assert_eq!(a.bytes()[512..1024], [7u8; 512]);
        assert_eq!(a.bytes()[..512], [0u8; 512]);
        // A change through the handle is what the device reads.
        a.borrow_mut().bytes_mut()[0] = 9;
        let mut buf = [0u8; 512];
        b.read(0, &mut buf).unwrap();
        assert_eq!(buf[0], 9);
        assert_eq!(b.size_sectors(), 4);
        // The device's own checks still apply.
        assert!(b.write(4, &[0u8; 512], false).is_err());
        let mut reqs = [ReadReq {
            sector: 1,
            buf: &mut buf,
        }];
        b.read_batch(&mut reqs).unwrap();
        assert_eq!(buf, [7u8; 512]);
    }

    #[test]
    fn the_last_handle_gives_the_device_back() {
        let a = SharedMem::mem(2);
        let b = a.clone();
        let a = a.try_into_inner().expect_err("b still holds it");
        drop(b);
        let dev = a.try_into_inner().expect("the last handle");
        assert_eq!(dev, MemDevice::new(2));
    }
}
