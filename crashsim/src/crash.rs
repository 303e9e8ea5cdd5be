//! Crash states rebuilt from the log, without re-running the workload.
//!
//! A [`CrashPoint`] names a moment: "before #n" is the state after every logged event with a
//! smaller sequence number and none of the others. Replaying the log's device events up to that
//! point through the same media model the live devices use gives, per device, the durable image
//! and the pending writes at that moment: a [`CrashState`]. A [`crate::Choice`] then says what
//! the power cut did, and [`CrashState::image`] builds the resulting device images.

use crate::choice::{Choice, Units};
use crate::log::{Event, FlushEffect, WriteEffect};
use crate::media::{Media, PendingWrite};
use crate::rng::{mix64, SplitMix64};
use crate::world::{AtomicUnit, World};
use crate::{ChoiceError, SimError};
use engine::format::SECTOR_SIZE;
use engine::DeviceRole;
use std::fmt;
use std::rc::Rc;

/// A moment of a run: after every event with `seq < before`, before the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CrashPoint {
    pub before: u64,
}

impl CrashPoint {
    /// Just before event `seq` happened.
    pub fn before(seq: u64) -> Self {
        CrashPoint { before: seq }
    }

    /// Just after event `seq` completed.
    pub fn after(seq: u64) -> Self {
        CrashPoint { before: seq + 1 }
    }

    /// The end of the run so far.
    pub fn end(world: &World) -> Self {
        CrashPoint::before(world.next_seq())
    }
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "before #{}", self.before)
    }
}

/// The durable side of one device at a crash point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCrash {
    pub role: DeviceRole,
    pub atomic_unit: AtomicUnit,
    pub garbage_in_torn_units: bool,
    pub durable: Vec<u8>,
}

/// Every device's durable image and every pending write (all devices, in log order) at a point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashState {
    pub point: CrashPoint,
    pub devices: Vec<DeviceCrash>,
    pub pending: Vec<PendingWrite>,
}

/// The device images after a crash, by role (in role order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashImages {
    pub images: Vec<(DeviceRole, Vec<u8>)>,
}

impl CrashImages {
    pub fn get(&self, role: DeviceRole) -> Option<&[u8]> {
        self.images
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, img)| img.as_slice())
    }

    pub fn take(&mut self, role: DeviceRole) -> Option<Vec<u8>> {
        let i = self.images.iter().position(|(r, _)| *r == role)?;
        Some(self.images.remove(i).1)
    }

    /// A 128-bit fingerprint of all images (two independent multiply-rotate lanes over 64-bit
    /// words), for deduplicating identical crash images without keeping them.
    pub fn fingerprint(&self) -> u128 {
        let (mut a, mut b) = (0x243f_6a88_85a3_08d3u64, 0x1319_8a2e_0370_7344u64);
        let mut eat = |w: u64| {
            a = (a ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
            b = (b.rotate_left(17) ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd);
        };
        for (role, img) in &self.images {
            eat(*role as u64);
            eat(img.len() as u64);
            let mut words = img.chunks_exact(8);
            for w in &mut words {
                eat(u64::from_le_bytes(w.try_into().expect("8 bytes")));
            }
            let mut tail = [0u8; 8];
            tail[..words.remainder().len()].copy_from_slice(words.remainder());
            eat(u64::from_le_bytes(tail));
        }
        (u128::from(mix64(a)) << 64) | u128::from(mix64(b))
    }
}

/// Walks the log forward, producing crash states at increasing points without starting over.
#[derive(Clone, Debug)]
pub struct Replayer<'w> {
    world: &'w World,
    next: u64,
    media: Vec<(DeviceRole, Media)>,
}

impl<'w> Replayer<'w> {
    pub fn new(world: &'w World) -> Self {
        Replayer {
            world,
            next: 0,
            media: world
                .devices
                .iter()
                .map(|(&role, d)| (role, Media::new(d.config.image.clone())))
                .collect(),
        }
    }

    fn media(&mut self, role: DeviceRole) -> &mut Media {
        &mut self
            .media
            .iter_mut()
            .find(|(r, _)| *r == role)
            .expect("logged roles exist")
            .1
    }

    /// Replays up to `point` (which must not be behind the previous one) and returns the state.
    pub fn advance_to(&mut self, point: CrashPoint) -> Result<CrashState, SimError> {
        let log_len = self.world.next_seq();
        if point.before > log_len {
            return Err(SimError::PointBeyondLog {
                before: point.before,
                log_len,
            });
        }
        if point.before < self.next {
            return Err(SimError::PointBehind {
                before: point.before,
                at: self.next,
            });
        }
        let world = self.world;
        for entry in &world.log[self.next as usize..point.before as usize] {
            match &entry.event {
                Event::Write {
                    role,
                    data,
                    effect: WriteEffect::Landed { at, durable },
                    ..
                } => {
                    let unit_sectors = world.devices[role].config.atomic_unit.sectors();
                    let w = PendingWrite {
                        seq: entry.seq,
                        role: *role,
                        sector: *at,
                        data: Rc::clone(data),
                        live: vec![true; data.len() / SECTOR_SIZE],
                        unit_sectors,
                    };
                    self.media(*role).write(w, *durable);
                }
                Event::Flush {
                    role,
                    effect: FlushEffect::Done,
                } => self.media(*role).flush(),
                Event::BitRot { role, byte, bit } => self.media(*role).flip_bit(*byte, *bit),
                _ => {}
            }
        }
        self.next = point.before;
        let mut pending: Vec<PendingWrite> = self
            .media
            .iter()
            .flat_map(|(_, m)| m.pending.iter().cloned())
            .collect();
        pending.sort_by_key(|p| p.seq);
        let devices = self
            .media
            .iter()
            .map(|(role, m)| {
                let config = &world.devices[role].config;
                DeviceCrash {
                    role: *role,
                    atomic_unit: config.atomic_unit,
                    garbage_in_torn_units: config.faults.garbage_in_torn_units,
                    durable: m.durable.clone(),
                }
            })
            .collect();
        Ok(CrashState {
            point,
            devices,
            pending,
        })
    }
}

impl World {
    /// A replayer for producing many crash states in increasing order cheaply.
    pub fn replayer(&self) -> Replayer<'_> {
        Replayer::new(self)
    }

    /// The crash state at `point`.
    pub fn crash_state(&self, point: CrashPoint) -> Result<CrashState, SimError> {
        self.replayer().advance_to(point)
    }
}

/// Garbage for sector `s` of a torn write `seq`: deterministic, so a choice replays exactly.
fn garbage_sector(seq: u64, s: u64, out: &mut [u8]) {
    SplitMix64::new(mix64(seq) ^ s.wrapping_mul(0x9e37_79b9_7f4a_7c15)).fill(out);
}

impl CrashState {
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub fn device(&self, role: DeviceRole) -> Option<&DeviceCrash> {
        self.devices.iter().find(|d| d.role == role)
    }

    /// Indices of the pending writes on `role` touching `[sector, sector + sectors)`: for tearing
    /// exactly what recovery reads.
    pub fn pending_overlapping(&self, role: DeviceRole, sector: u64, sectors: u64) -> Vec<usize> {
        (0..self.pending.len())
            .filter(|&i| self.pending[i].role == role && self.pending[i].overlaps(sector, sectors))
            .collect()
    }

    /// Checks `choice` against this state.
    pub fn validate(&self, choice: &Choice) -> Result<(), ChoiceError> {
        let mut seen = vec![false; self.pending.len()];
        for p in &choice.persisted {
            let w = self
                .pending
                .get(p.pending)
                .ok_or(ChoiceError::NoSuchPending {
                    index: p.pending,
                    pending: self.pending.len(),
                })?;
            if std::mem::replace(&mut seen[p.pending], true) {
                return Err(ChoiceError::Duplicate { index: p.pending });
            }
            if let Units::Mask(m) = &p.units {
                let expected = w.unit_count();
                if m.len() != expected {
                    return Err(ChoiceError::UnitMask {
                        index: p.pending,
                        expected,
                        got: m.len(),
                    });
                }
            }
        }
        for b in &choice.bit_flips {
            let len = self.device(b.role).map_or(0, |d| d.durable.len() as u64);
            if b.byte >= len || b.bit > 7 {
                return Err(ChoiceError::BadBitFlip {
                    role: b.role,
                    byte: b.byte,
                    bit: b.bit,
                });
            }
        }
        Ok(())
    }

    /// The device images after a power cut that did `choice`.
    pub fn image(&self, choice: &Choice) -> Result<CrashImages, ChoiceError> {
        self.validate(choice)?;
        let mut images: Vec<(DeviceRole, Vec<u8>)> = self
            .devices
            .iter()
            .map(|d| (d.role, d.durable.clone()))
            .collect();
        for p in &choice.persisted {
            let w = &self.pending[p.pending];
            let dev = self
                .device(w.role)
                .expect("pending writes belong to devices");
            let img = &mut images
                .iter_mut()
                .find(|(r, _)| *r == w.role)
                .expect("same roles")
                .1;
            for (u, (first, count)) in w.units().into_iter().enumerate() {
                let persisted = match &p.units {
                    Units::All => true,
                    Units::Mask(m) => m[u],
                };
                if persisted {
                    w.apply_range(img, first, count);
                } else if dev.garbage_in_torn_units {
                    for s in first..first + count {
                        // A sector a later durable write covered is not this write's to garble.
                        if w.live_sector(s).is_some() {
                            let at = s as usize * SECTOR_SIZE;
                            garbage_sector(w.seq, s, &mut img[at..at + SECTOR_SIZE]);
                        }
                    }
                }
            }
        }
        for b in &choice.bit_flips {
            let img = &mut images
                .iter_mut()
                .find(|(r, _)| *r == b.role)
                .expect("validated")
                .1;
            img[b.byte as usize] ^= 1 << b.bit;
        }
        Ok(CrashImages { images })
    }
}
