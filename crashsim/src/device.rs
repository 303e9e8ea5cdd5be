//! The engine's view of a simulated device, and the plain device recovered engines run on.

use crate::image::Image;
use crate::world::SharedWorld;
use crate::SimError;
use engine::device::check_access;
use engine::format::SECTOR_SIZE;
use engine::{Access, BlockDevice, DeviceRole, IoError};

/// A handle on one device of a [`crate::World`]; implements [`BlockDevice`]. Every operation is
/// applied to the device's media model and logged in the world's global log. The batch calls use
/// the trait's defaults, so a batch is logged as its individual operations in slice order.
///
/// The world is borrowed mutably for the duration of each operation: holding a borrow of the
/// world while the engine runs is a harness bug and panics.
#[derive(Clone, Debug)]
pub struct SimDevice {
    world: SharedWorld,
    role: DeviceRole,
}

impl SimDevice {
    pub fn new(world: &SharedWorld, role: DeviceRole) -> Result<Self, SimError> {
        world.borrow().device(role)?;
        Ok(SimDevice {
            world: world.clone(),
            role,
        })
    }

    pub fn role(&self) -> DeviceRole {
        self.role
    }

    pub fn world(&self) -> &SharedWorld {
        &self.world
    }
}

impl BlockDevice for SimDevice {
    fn size_sectors(&self) -> u64 {
        self.world
            .borrow()
            .size_sectors(self.role)
            .expect("SimDevice::new checked the role")
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.world.borrow_mut().read(self.role, sector, buf)
    }

    fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
        self.world.borrow_mut().write(self.role, sector, data, fua)
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.world.borrow_mut().flush(self.role)
    }
}

/// A device over a copy-on-write [`Image`], with no volatile cache: every completed write is
/// durable, as on `engine::MemDevice`. The explorer recovers crash images on these, so a
/// recovered engine's devices share every chunk recovery does not write with the crash state
/// they came from instead of copying whole images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageDevice {
    image: Image,
}

impl ImageDevice {
    /// A device holding `image` (whole sectors: a trailing partial sector is not addressable).
    pub fn new(image: Image) -> Self {
        ImageDevice { image }
    }

    pub fn image(&self) -> &Image {
        &self.image
    }

    pub fn into_image(self) -> Image {
        self.image
    }
}

impl BlockDevice for ImageDevice {
    fn size_sectors(&self) -> u64 {
        (self.image.len() / SECTOR_SIZE) as u64
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        check_access(Access::Read, self.size_sectors(), sector, buf.len())?;
        self.image.read(sector as usize * SECTOR_SIZE, buf);
        Ok(())
    }

    fn write(&mut self, sector: u64, data: &[u8], _fua: bool) -> Result<(), IoError> {
        check_access(Access::Write, self.size_sectors(), sector, data.len())?;
        self.image.write(sector as usize * SECTOR_SIZE, data);
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
    fn image_device_round_trip_and_bounds() {
        let mut d = ImageDevice::new(Image::zeroed(4 * SECTOR_SIZE));
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
        assert!(d.flush().is_ok());
    }
}
