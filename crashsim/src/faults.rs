//! Fault switches of one simulated device (docs/DESIGN.md, Media assumptions). All are deterministic: they trigger at
//! configured operation numbers or addresses, never at random, and what they did is in the log.

use crate::SimError;
use engine::DeviceRole;
use std::collections::BTreeSet;

/// The `nth_write` (0-based, counting this device's writes) lands at `to_sector` instead of where
/// it was addressed; if it does not fit there it lands at the last place it fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Misdirect {
    pub nth_write: u64,
    pub to_sector: u64,
}

/// Flip bit `bit` of byte `byte` of the durable image just before the device's `before_op`-th
/// operation (0-based, counting reads, writes and flushes of this device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BitRot {
    pub before_op: u64,
    pub byte: u64,
    pub bit: u8,
}

/// What the atomic units of a torn write that did not persist hold in a crash image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TornFill {
    /// Their old content (a unit is written whole or not at all).
    #[default]
    Old,
    /// Zeros (a device that unmaps what it could not finish).
    Zero,
    /// Random bytes (a unit garbled mid-program).
    Garbage,
}

/// Every fault switch of one device; the default is a perfect device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// In a crash image, what the atomic units of a torn write that did not persist hold.
    pub torn_fill: TornFill,
    /// A torn write persisted one contiguous run of its units (a device that writes a request
    /// front to back), not any subset: random tears draw runs, and the enumerated tears keep
    /// only prefixes, suffixes and single units.
    pub torn_in_runs: bool,
    pub misdirect: Option<Misdirect>,
    /// Flush returns Ok and makes nothing durable.
    pub lie_about_flush: bool,
    /// FUA writes are plain writes: completed into the volatile cache only.
    pub lie_about_fua: bool,
    /// Reads that fail with EIO, by number (0-based, counting this device's reads).
    pub read_eio_at: BTreeSet<u64>,
    /// Writes that fail with EIO (and do nothing), by number among this device's writes.
    pub write_eio_at: BTreeSet<u64>,
    /// Flushes that fail with EIO (and make nothing durable), by number among its flushes.
    pub flush_eio_at: BTreeSet<u64>,
    /// Sectors whose reads fail until a write covers them (as a drive remaps a pending sector).
    pub latent_sectors: BTreeSet<u64>,
    pub bit_rot: Vec<BitRot>,
}

impl Faults {
    /// Checks addresses against a device of `size_sectors`.
    pub(crate) fn validate(&self, role: DeviceRole, size_sectors: u64) -> Result<(), SimError> {
        let bad = |detail: String| Err(SimError::BadFault { role, detail });
        if let Some(m) = self.misdirect {
            if m.to_sector >= size_sectors {
                return bad(format!(
                    "misdirect target {} beyond the device",
                    m.to_sector
                ));
            }
        }
        if let Some(s) = self.latent_sectors.iter().find(|&&s| s >= size_sectors) {
            return bad(format!("latent sector {s} beyond the device"));
        }
        let bytes = size_sectors * engine::format::SECTOR_SIZE as u64;
        if let Some(r) = self.bit_rot.iter().find(|r| r.byte >= bytes || r.bit > 7) {
            return bad(format!(
                "bit rot at byte {} bit {} outside the device",
                r.byte, r.bit
            ));
        }
        Ok(())
    }
}
