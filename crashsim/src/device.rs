//! The engine's view of a simulated device.

use crate::world::SharedWorld;
use crate::SimError;
use engine::{BlockDevice, DeviceRole, IoError};

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
