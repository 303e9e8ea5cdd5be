//! The world: every simulated device of one run and the one global operation log.

use crate::faults::Faults;
use crate::image::Image;
use crate::log::{format_entries, ClientOp, Event, FlushEffect, LogEntry, WriteEffect};
use crate::media::{Media, PendingWrite};
use crate::SimError;
use engine::device::check_access;
use engine::format::SECTOR_SIZE;
use engine::{Access, DeviceRole, IoError};
use models::OpId;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// The world as the engine's devices and the harness share it.
pub type SharedWorld = Rc<RefCell<World>>;

/// The largest write a device performs atomically.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AtomicUnit {
    /// 512 B: every sector is old or new on its own.
    #[default]
    Sector,
    /// 4 KiB, aligned: 8 sectors persist together or not at all.
    Block,
}

impl AtomicUnit {
    pub fn sectors(self) -> u64 {
        match self {
            AtomicUnit::Sector => 1,
            AtomicUnit::Block => 8,
        }
    }
}

/// How to build one simulated device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Initial (durable) content; whole sectors, at least one.
    pub image: Image,
    pub atomic_unit: AtomicUnit,
    pub faults: Faults,
}

impl DeviceConfig {
    /// A zero-filled device of `sectors` sectors, 512-byte atomic unit, no faults.
    pub fn zeroed(sectors: u64) -> Self {
        DeviceConfig::from_image(Image::zeroed(sectors as usize * SECTOR_SIZE))
    }

    /// A device holding `image` (a `Vec<u8>` or an [`Image`], whose chunks it then shares).
    pub fn from_image(image: impl Into<Image>) -> Self {
        DeviceConfig {
            image: image.into(),
            atomic_unit: AtomicUnit::default(),
            faults: Faults::default(),
        }
    }

    pub fn with_atomic_unit(mut self, unit: AtomicUnit) -> Self {
        self.atomic_unit = unit;
        self
    }

    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }
}

/// Operation counters of one device, which the fault switches are keyed on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
}

impl OpCounts {
    fn total(&self) -> u64 {
        self.reads + self.writes + self.flushes
    }
}

/// One live device.
#[derive(Clone, Debug)]
pub(crate) struct Device {
    pub config: DeviceConfig,
    pub media: Media,
    /// What reads return: the durable image overlaid with the pending writes.
    pub current: Image,
    pub counts: OpCounts,
    /// Latent sector errors still in force (cleared by a write covering the sector).
    pub latent: BTreeSet<u64>,
}

impl Device {
    fn size_sectors(&self) -> u64 {
        (self.current.len() / SECTOR_SIZE) as u64
    }
}

/// Every device of a run and the log of everything that happened to them.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub(crate) devices: BTreeMap<DeviceRole, Device>,
    pub(crate) log: Vec<LogEntry>,
}

impl World {
    pub fn new() -> Self {
        World::default()
    }

    /// Wraps the world for sharing between the devices and the harness.
    pub fn shared(self) -> SharedWorld {
        Rc::new(RefCell::new(self))
    }

    pub fn add_device(&mut self, role: DeviceRole, config: DeviceConfig) -> Result<(), SimError> {
        if self.devices.contains_key(&role) {
            return Err(SimError::DuplicateDevice(role));
        }
        let len = config.image.len();
        if len == 0 || len % SECTOR_SIZE != 0 {
            return Err(SimError::BadImage { role, len });
        }
        config.faults.validate(role, (len / SECTOR_SIZE) as u64)?;
        let device = Device {
            media: Media::new(config.image.clone()),
            current: config.image.clone(),
            counts: OpCounts::default(),
            latent: config.faults.latent_sectors.clone(),
            config,
        };
        self.devices.insert(role, device);
        Ok(())
    }

    /// A fresh world after a power cut: the same devices (roles, atomic units) holding `images`,
    /// with no faults and an empty log. Recovery runs in it; set faults again with `set_faults`.
    pub fn restarted(&self, images: &crate::CrashImages) -> Result<World, SimError> {
        let mut w = World::new();
        for (&role, d) in &self.devices {
            let image = images.get(role).ok_or(SimError::NoDevice(role))?;
            if image.len() != d.current.len() {
                return Err(SimError::BadImage {
                    role,
                    len: image.len(),
                });
            }
            let config =
                DeviceConfig::from_image(image.clone()).with_atomic_unit(d.config.atomic_unit);
            w.add_device(role, config)?;
        }
        Ok(w)
    }

    pub(crate) fn device(&self, role: DeviceRole) -> Result<&Device, SimError> {
        self.devices.get(&role).ok_or(SimError::NoDevice(role))
    }

    fn device_mut(&mut self, role: DeviceRole) -> Result<&mut Device, SimError> {
        self.devices.get_mut(&role).ok_or(SimError::NoDevice(role))
    }

    pub fn roles(&self) -> Vec<DeviceRole> {
        self.devices.keys().copied().collect()
    }

    /// The configuration the device was built with (its initial image and faults).
    pub fn config(&self, role: DeviceRole) -> Result<&DeviceConfig, SimError> {
        Ok(&self.device(role)?.config)
    }

    /// Replaces the fault switches of a device from now on. Operation numbers keep counting from
    /// the device's start; latent sectors are set to exactly `faults.latent_sectors`.
    pub fn set_faults(&mut self, role: DeviceRole, faults: Faults) -> Result<(), SimError> {
        let d = self.device_mut(role)?;
        faults.validate(role, d.size_sectors())?;
        d.latent = faults.latent_sectors.clone();
        d.config.faults = faults;
        Ok(())
    }

    pub fn size_sectors(&self, role: DeviceRole) -> Result<u64, SimError> {
        Ok(self.device(role)?.size_sectors())
    }

    /// What reads of the device return now.
    pub fn current_image(&self, role: DeviceRole) -> Result<&Image, SimError> {
        Ok(&self.device(role)?.current)
    }

    /// What would survive a power cut now if no pending write persisted.
    pub fn durable_image(&self, role: DeviceRole) -> Result<&Image, SimError> {
        Ok(&self.device(role)?.media.durable)
    }

    pub fn pending_writes(&self, role: DeviceRole) -> Result<&[PendingWrite], SimError> {
        Ok(&self.device(role)?.media.pending)
    }

    pub fn op_counts(&self, role: DeviceRole) -> Result<OpCounts, SimError> {
        Ok(self.device(role)?.counts)
    }

    pub fn log(&self) -> &[LogEntry] {
        &self.log
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.log.len() as u64
    }

    /// The whole log, one line per event.
    pub fn format_log(&self) -> String {
        format_entries(&self.log)
    }

    fn push(&mut self, event: Event) -> u64 {
        let seq = self.next_seq();
        self.log.push(LogEntry { seq, event });
        seq
    }

    /// Appends a label from the harness; returns its sequence number.
    pub fn mark(&mut self, label: impl Into<String>) -> u64 {
        self.push(Event::Mark(label.into()))
    }

    /// Records that the client submitted `op` of its history (call before handing it to the
    /// engine), so crash points map back to what the client had been told.
    pub fn client_begin(&mut self, op: OpId, what: ClientOp) -> u64 {
        self.push(Event::ClientBegin { op, what })
    }

    /// Records the engine's answer to `op` (call right after it returned).
    pub fn client_end(&mut self, op: OpId, ok: bool) -> u64 {
        self.push(Event::ClientEnd { op, ok })
    }

    /// Flips a bit of the durable image now (bit rot at a moment the harness chooses).
    pub fn rot_bit(&mut self, role: DeviceRole, byte: u64, bit: u8) -> Result<u64, SimError> {
        let d = self.device_mut(role)?;
        if byte >= d.current.len() as u64 || bit > 7 {
            return Err(SimError::BitOutOfRange { role, byte, bit });
        }
        Ok(self.apply_bit_rot(role, byte, bit))
    }

    fn apply_bit_rot(&mut self, role: DeviceRole, byte: u64, bit: u8) -> u64 {
        let d = self.devices.get_mut(&role).expect("role checked");
        d.media.flip_bit(byte, bit);
        // Reads see the rot unless a pending write shadows the sector.
        if !d.media.pending_covers(byte / SECTOR_SIZE as u64) {
            d.current.flip_bit(byte, bit);
        }
        self.push(Event::BitRot { role, byte, bit })
    }

    /// Applies the bit-rot rules due before the device's next operation.
    fn rot_due(&mut self, role: DeviceRole) {
        let d = &self.devices[&role];
        let op = d.counts.total();
        let due: Vec<_> = d
            .config
            .faults
            .bit_rot
            .iter()
            .filter(|r| r.before_op == op)
            .copied()
            .collect();
        for r in due {
            self.apply_bit_rot(role, r.byte, r.bit);
        }
    }

    /// A device read (what `SimDevice::read` does).
    pub(crate) fn read(
        &mut self,
        role: DeviceRole,
        sector: u64,
        buf: &mut [u8],
    ) -> Result<(), IoError> {
        self.rot_due(role);
        let d = self
            .devices
            .get_mut(&role)
            .expect("SimDevice checks its role");
        let n = d.counts.reads;
        d.counts.reads += 1;
        let sectors = (buf.len() / SECTOR_SIZE) as u64;
        let result =
            check_access(Access::Read, d.size_sectors(), sector, buf.len()).and_then(|()| {
                if d.config.faults.read_eio_at.contains(&n) {
                    return Err(IoError::new(
                        Access::Read,
                        sector,
                        sectors,
                        format!("injected EIO on read {n}"),
                    ));
                }
                if let Some(&bad) = d.latent.range(sector..sector + sectors).next() {
                    return Err(IoError::new(
                        Access::Read,
                        sector,
                        sectors,
                        format!("latent sector error at {bad}"),
                    ));
                }
                d.current.read(sector as usize * SECTOR_SIZE, buf);
                Ok(())
            });
        self.push(Event::Read {
            role,
            sector,
            sectors,
            error: result.clone().err(),
        });
        result
    }

    /// A device write (what `SimDevice::write` does: submitted and completed at once).
    pub(crate) fn write(
        &mut self,
        role: DeviceRole,
        sector: u64,
        data: &[u8],
        fua: bool,
    ) -> Result<(), IoError> {
        self.complete_write(role, sector, Rc::from(data), fua, None)
    }

    /// A write completes (`submitted`: the sequence number of its `Submit`, when it was in
    /// flight): it lands in the volatile cache (durable if an honoured FUA), reads see it.
    pub fn complete_write(
        &mut self,
        role: DeviceRole,
        sector: u64,
        data: Rc<[u8]>,
        fua: bool,
        submitted: Option<u64>,
    ) -> Result<(), IoError> {
        self.rot_due(role);
        let seq = self.next_seq();
        let d = self
            .devices
            .get_mut(&role)
            .expect("SimDevice checks its role");
        let n = d.counts.writes;
        d.counts.writes += 1;
        let sectors = (data.len() / SECTOR_SIZE) as u64;
        let faults = &d.config.faults;
        let effect = match check_access(Access::Write, d.size_sectors(), sector, data.len()) {
            Err(e) => WriteEffect::Failed(e),
            Ok(()) if faults.write_eio_at.contains(&n) => WriteEffect::Failed(IoError::new(
                Access::Write,
                sector,
                sectors,
                format!("injected EIO on write {n}"),
            )),
            Ok(()) => {
                let at = match faults.misdirect {
                    Some(m) if m.nth_write == n => m.to_sector.min(d.size_sectors() - sectors),
                    _ => sector,
                };
                WriteEffect::Landed {
                    at,
                    durable: fua && !faults.lie_about_fua,
                }
            }
        };
        if let WriteEffect::Landed { at, durable } = effect {
            d.current.write(at as usize * SECTOR_SIZE, &data);
            let stale: Vec<u64> = d.latent.range(at..at + sectors).copied().collect();
            for s in stale {
                d.latent.remove(&s);
            }
            let pending = PendingWrite {
                seq,
                role,
                sector: at,
                data: data.clone(),
                live: vec![true; sectors as usize],
                unit_sectors: d.config.atomic_unit.sectors(),
            };
            d.media.write(pending, durable);
        }
        let result = match &effect {
            WriteEffect::Failed(e) => Err(e.clone()),
            WriteEffect::Landed { .. } => Ok(()),
        };
        self.push(Event::Write {
            role,
            sector,
            data,
            fua,
            effect,
            submitted,
        });
        result
    }

    /// A device flush (what `SimDevice::flush` does: submitted and completed at once, so it
    /// covers every write completed so far).
    pub(crate) fn flush(&mut self, role: DeviceRole) -> Result<(), IoError> {
        let now = self.next_seq();
        self.complete_flush(role, now)
    }

    /// A flush submitted at sequence `covers_before` completes: the writes that had completed
    /// by then become durable (a flush in flight guarantees nothing about later ones).
    pub fn complete_flush(&mut self, role: DeviceRole, covers_before: u64) -> Result<(), IoError> {
        self.rot_due(role);
        let d = self
            .devices
            .get_mut(&role)
            .expect("SimDevice checks its role");
        let n = d.counts.flushes;
        d.counts.flushes += 1;
        let effect = if d.config.faults.flush_eio_at.contains(&n) {
            FlushEffect::Failed(IoError::new(
                Access::Flush,
                0,
                0,
                format!("injected EIO on flush {n}"),
            ))
        } else if d.config.faults.lie_about_flush {
            FlushEffect::Lied
        } else {
            d.media.flush_before(covers_before);
            FlushEffect::Done
        };
        let result = match &effect {
            FlushEffect::Failed(e) => Err(e.clone()),
            _ => Ok(()),
        };
        self.push(Event::Flush {
            role,
            effect,
            covers_before,
        });
        result
    }

    /// An operation is handed to a device (the asynchronous driver): logged, nothing changes
    /// until it completes. Returns its sequence number.
    pub fn submit(&mut self, role: DeviceRole, what: crate::log::Submitted) -> u64 {
        self.push(Event::Submit { role, what })
    }
}
