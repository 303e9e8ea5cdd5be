//! Crash states rebuilt from the log, without re-running the workload.
//!
//! A [`CrashPoint`] names a moment: "before #n" is the state after every logged event with a
//! smaller sequence number and none of the others. Replaying the log's device events up to that
//! point through the same media model the live devices use gives, per device, the durable image
//! and the pending writes at that moment: a [`CrashState`]. A [`crate::Choice`] then says what
//! the power cut did, and [`CrashState::image`] builds the resulting device images.
//!
//! Images are copy-on-write ([`Image`]): a crash state's durable images share their chunks with
//! the replayer's, and a choice's images share every chunk the choice does not change, so no
//! step here copies a whole device.

use crate::choice::{Choice, Units};
use crate::image::Image;
use crate::log::{Event, FlushEffect, Submitted, WriteEffect};
use crate::media::{Media, PendingWrite};
use crate::rng::{mix64, SplitMix64};
use crate::world::{AtomicUnit, World};
use crate::{ChoiceError, SimError};
use engine::format::SECTOR_SIZE;
use engine::DeviceRole;
use std::cell::OnceCell;
use std::collections::BTreeMap;
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
    pub torn_fill: crate::TornFill,
    pub torn_in_runs: bool,
    pub durable: Image,
}

/// Every device's durable image and every pending write (all devices, in log order) at a point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashState {
    pub point: CrashPoint,
    pub devices: Vec<DeviceCrash>,
    pub pending: Vec<PendingWrite>,
    /// Fingerprint of the durable images, computed on first use.
    pub(crate) base_fp: OnceCell<u128>,
    /// Per pending write, what each of its units changes in the fingerprint, computed on first
    /// use (`fingerprint_of`'s fast path).
    pub(crate) unit_deltas: DeltaCache,
}

/// A cache of what a state's choices change in its fingerprint; not part of the state (two
/// equal states are equal whether or not either computed it).
#[derive(Clone, Debug, Default)]
pub(crate) struct DeltaCache(OnceCell<Vec<UnitDeltas>>);

impl PartialEq for DeltaCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for DeltaCache {}

/// What one pending write's units change in the fingerprint: persisted, and left torn (zeros
/// or garbage; 0 where torn units keep the old content), each XORed over the unit's live
/// sectors. Valid for a choice where no other persisted write shares a sector with it.
#[derive(Clone, Debug, Default)]
pub(crate) struct UnitDeltas {
    persisted: Vec<u128>,
    torn: Vec<u128>,
    /// Every unit persisted.
    whole: u128,
}

/// What a crash does to one sector.
#[derive(Clone, Copy, Debug)]
enum Effect<'a> {
    /// A pending write's content persisted.
    Copy(&'a [u8]),
    /// A torn unit of pending write `seq` left garbage.
    Garbage(u64),
    /// A torn unit left zeros.
    Zero,
    /// Bit rot.
    Flip { byte: usize, bit: u8 },
}

impl Effect<'_> {
    fn apply(self, s: u64, sector: &mut [u8]) {
        match self {
            Effect::Copy(bytes) => sector.copy_from_slice(bytes),
            Effect::Garbage(seq) => garbage_sector(seq, s, sector),
            Effect::Zero => sector.fill(0),
            Effect::Flip { byte, bit } => sector[byte] ^= 1 << bit,
        }
    }
}

/// Hash of one sector of one device: 128 bits from four independent multiply lanes, so the
/// XOR over sectors is a usable fingerprint.
fn sector_hash(role: DeviceRole, s: u64, bytes: &[u8]) -> u128 {
    let seed = mix64((role as u64) << 56 ^ s);
    let mut acc = [
        seed,
        seed ^ 0x243f_6a88_85a3_08d3,
        seed ^ 0x1319_8a2e_0370_7344,
        seed ^ 0xa409_3822_299f_31d0,
    ];
    for chunk in bytes.chunks_exact(32) {
        for (lane, w) in acc.iter_mut().zip(chunk.chunks_exact(8)) {
            let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            *lane = (*lane ^ w)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(31);
        }
    }
    let a = mix64(acc[0] ^ acc[1].rotate_left(17));
    let b = mix64(acc[2] ^ acc[3].rotate_left(23) ^ a);
    (u128::from(a) << 64) | u128::from(mix64(b ^ s))
}

/// XOR of the sector hashes of a whole image.
fn image_fingerprint(role: DeviceRole, img: &Image) -> u128 {
    img.sectors()
        .enumerate()
        .fold(0, |fp, (s, bytes)| fp ^ sector_hash(role, s as u64, bytes))
}

/// The device images after a crash, by role (in role order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashImages {
    pub images: Vec<(DeviceRole, Image)>,
}

impl CrashImages {
    pub fn get(&self, role: DeviceRole) -> Option<&Image> {
        self.images
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, img)| img)
    }

    pub fn take(&mut self, role: DeviceRole) -> Option<Image> {
        let i = self.images.iter().position(|(r, _)| *r == role)?;
        Some(self.images.remove(i).1)
    }

    /// A 128-bit fingerprint of all images: the XOR of a hash of every (device, sector,
    /// content), so a crash state can update it from the sectors a choice changes.
    pub fn fingerprint(&self) -> u128 {
        self.images
            .iter()
            .fold(0, |fp, (role, img)| fp ^ image_fingerprint(*role, img))
    }
}

/// Walks the log forward, producing crash states at increasing points without starting over.
///
/// It keeps the fingerprint of the durable images up to date as the log changes them (out with
/// each changed sector's old hash, in with its new one), so a crash state gets its
/// [`CrashState::base_fingerprint`] without hashing whole devices at every point.
#[derive(Clone, Debug)]
pub struct Replayer<'w> {
    world: &'w World,
    next: u64,
    media: Vec<(DeviceRole, Media)>,
    /// Writes submitted and not completed (the asynchronous driver), by submission sequence:
    /// at a power cut they may persist like completed unflushed ones.
    in_flight: BTreeMap<u64, PendingWrite>,
    /// [`image_fingerprint`] of every device's `media.durable`, XORed.
    durable_fp: u128,
}

impl<'w> Replayer<'w> {
    pub fn new(world: &'w World) -> Self {
        let media: Vec<(DeviceRole, Media)> = world
            .devices
            .iter()
            .map(|(&role, d)| (role, Media::new(d.config.image.clone())))
            .collect();
        let durable_fp = media
            .iter()
            .fold(0, |fp, (role, m)| fp ^ image_fingerprint(*role, &m.durable));
        Replayer {
            world,
            next: 0,
            media,
            in_flight: BTreeMap::new(),
            durable_fp,
        }
    }

    /// Applies `change` to the media of `role`, which changes at most the durable `sectors`
    /// (each listed once), and updates the fingerprint from those sectors.
    fn change_durable(
        &mut self,
        role: DeviceRole,
        sectors: &[u64],
        change: impl FnOnce(&mut Media),
    ) {
        let m = &mut self
            .media
            .iter_mut()
            .find(|(r, _)| *r == role)
            .expect("logged roles exist")
            .1;
        let hashes = |m: &Media| {
            sectors
                .iter()
                .fold(0, |fp, &s| fp ^ sector_hash(role, s, m.durable.sector(s)))
        };
        let before = hashes(m);
        change(m);
        self.durable_fp ^= before ^ hashes(m);
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
                Event::Submit {
                    role,
                    what: Submitted::Write { sector, data, .. },
                } => {
                    let unit_sectors = world.devices[role].config.atomic_unit.sectors();
                    let w = PendingWrite {
                        seq: entry.seq,
                        role: *role,
                        sector: *sector,
                        data: Rc::clone(data),
                        live: vec![true; data.len() / SECTOR_SIZE],
                        unit_sectors,
                    };
                    self.in_flight.insert(entry.seq, w);
                }
                Event::Write {
                    role,
                    data,
                    effect,
                    submitted,
                    ..
                } => {
                    if let Some(s) = submitted {
                        self.in_flight.remove(s);
                    }
                    let WriteEffect::Landed { at, durable } = effect else {
                        continue;
                    };
                    let unit_sectors = world.devices[role].config.atomic_unit.sectors();
                    let w = PendingWrite {
                        seq: entry.seq,
                        role: *role,
                        sector: *at,
                        data: Rc::clone(data),
                        live: vec![true; data.len() / SECTOR_SIZE],
                        unit_sectors,
                    };
                    // Only a durable write changes the durable image now.
                    let sectors: Vec<u64> = if *durable {
                        (w.sector..w.sector + w.sectors()).collect()
                    } else {
                        Vec::new()
                    };
                    self.change_durable(*role, &sectors, |m| m.write(w, *durable));
                }
                Event::Flush {
                    role,
                    effect: FlushEffect::Done,
                    covers_before,
                } => {
                    let sectors = self.media_of(*role).pending_sectors_before(*covers_before);
                    let c = *covers_before;
                    self.change_durable(*role, &sectors, |m| m.flush_before(c));
                }
                Event::BitRot { role, byte, bit } => {
                    let sector = byte / SECTOR_SIZE as u64;
                    self.change_durable(*role, &[sector], |m| m.flip_bit(*byte, *bit));
                }
                _ => {}
            }
        }
        self.next = point.before;
        #[cfg(debug_assertions)]
        debug_assert_eq!(
            self.durable_fp,
            self.media
                .iter()
                .fold(0, |fp, (role, m)| fp ^ image_fingerprint(*role, &m.durable)),
            "the replayer's running fingerprint is that of its durable images"
        );
        let mut pending: Vec<PendingWrite> = self
            .media
            .iter()
            .flat_map(|(_, m)| m.pending.iter().cloned())
            .chain(self.in_flight.values().cloned())
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
                    torn_fill: config.faults.torn_fill,
                    torn_in_runs: config.faults.torn_in_runs,
                    durable: m.durable.clone(),
                }
            })
            .collect();
        Ok(CrashState {
            point,
            devices,
            pending,
            base_fp: OnceCell::from(self.durable_fp),
            unit_deltas: DeltaCache::default(),
        })
    }

    fn media_of(&self, role: DeviceRole) -> &Media {
        &self
            .media
            .iter()
            .find(|(r, _)| *r == role)
            .expect("logged roles exist")
            .1
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

    /// Calls `f` for every sector a power cut that did `choice` changes, in the order the
    /// changes apply (later calls win). Shared by [`CrashState::image`] and
    /// [`CrashState::fingerprint_of`], so both see exactly the same crash.
    fn for_each_effect(&self, choice: &Choice, mut f: impl FnMut(DeviceRole, u64, Effect<'_>)) {
        for p in &choice.persisted {
            let w = &self.pending[p.pending];
            let fill = self
                .device(w.role)
                .map_or(crate::TornFill::Old, |d| d.torn_fill);
            for (u, (first, count)) in w.units().into_iter().enumerate() {
                let persisted = match &p.units {
                    Units::All => true,
                    Units::Mask(m) => m[u],
                };
                for s in first..first + count {
                    // A sector a later durable write covered is not this write's to change.
                    let Some(bytes) = w.live_sector(s) else {
                        continue;
                    };
                    match (persisted, fill) {
                        (true, _) => f(w.role, s, Effect::Copy(bytes)),
                        (false, crate::TornFill::Old) => {}
                        (false, crate::TornFill::Zero) => f(w.role, s, Effect::Zero),
                        (false, crate::TornFill::Garbage) => f(w.role, s, Effect::Garbage(w.seq)),
                    }
                }
            }
        }
        for b in &choice.bit_flips {
            f(
                b.role,
                b.byte / SECTOR_SIZE as u64,
                Effect::Flip {
                    byte: (b.byte % SECTOR_SIZE as u64) as usize,
                    bit: b.bit,
                },
            );
        }
    }

    /// The device images after a power cut that did `choice`. They share every chunk the
    /// choice leaves alone with this state's durable images.
    pub fn image(&self, choice: &Choice) -> Result<CrashImages, ChoiceError> {
        self.validate(choice)?;
        let mut images: Vec<(DeviceRole, Image)> = self
            .devices
            .iter()
            .map(|d| (d.role, d.durable.clone()))
            .collect();
        self.for_each_effect(choice, |role, s, effect| {
            let img = &mut images
                .iter_mut()
                .find(|(r, _)| *r == role)
                .expect("same roles")
                .1;
            effect.apply(s, img.sector_mut(s));
        });
        let images = CrashImages { images };
        #[cfg(debug_assertions)]
        debug_assert!(
            self.holds_plain_bytes(choice, &images),
            "the shared images hold what plain copies of the durable images would"
        );
        Ok(images)
    }

    /// Whether `images` (built for `choice`) hold what plain copies would, checked where they can
    /// differ from the durable images: every sector the choice changes (against the sectors
    /// [`CrashState::effect_overlay`] builds apart from the images) and every sector of a chunk
    /// they no longer share with the durable image. A chunk still shared holds the durable bytes
    /// by construction. So the check costs the chunks a choice touched, not whole devices.
    #[cfg(any(test, debug_assertions))]
    fn holds_plain_bytes(&self, choice: &Choice, images: &CrashImages) -> bool {
        use crate::image::CHUNK_BYTES;
        const SECTORS_PER_CHUNK: u64 = (CHUNK_BYTES / SECTOR_SIZE) as u64;
        let overlay = self.effect_overlay(choice);
        images.images.len() == self.devices.len()
            && self.devices.iter().all(|d| {
                let Some(img) = images.get(d.role) else {
                    return false;
                };
                let size = (d.durable.len() / SECTOR_SIZE) as u64;
                let mut sectors: Vec<u64> = overlay
                    .keys()
                    .filter(|(role, _)| *role == d.role)
                    .map(|&(_, s)| s)
                    .collect();
                for c in img.unshared_chunks(&d.durable) {
                    let first = c as u64 * SECTORS_PER_CHUNK;
                    sectors.extend(first..(first + SECTORS_PER_CHUNK).min(size));
                }
                img.len() == d.durable.len()
                    && sectors.into_iter().all(|s| {
                        let plain = overlay
                            .get(&(d.role, s))
                            .map_or(d.durable.sector(s), |bytes| &bytes[..]);
                        img.sector(s) == plain
                    })
            })
    }

    /// The images of `choice` built the plain way: whole copies of the durable images with the
    /// choice's effects written in. What [`CrashState::image`] must equal, byte for byte.
    #[cfg(test)]
    pub(crate) fn plain_images(&self, choice: &Choice) -> Vec<(DeviceRole, Vec<u8>)> {
        let mut images: Vec<(DeviceRole, Vec<u8>)> = self
            .devices
            .iter()
            .map(|d| (d.role, d.durable.to_vec()))
            .collect();
        self.for_each_effect(choice, |role, s, effect| {
            let img = &mut images
                .iter_mut()
                .find(|(r, _)| *r == role)
                .expect("same roles")
                .1;
            let at = s as usize * SECTOR_SIZE;
            effect.apply(s, &mut img[at..at + SECTOR_SIZE]);
        });
        images
    }

    /// The fingerprint [`CrashImages::fingerprint`] would give the images of `choice`, computed
    /// from the sectors the choice changes only: deduplication without building the images.
    pub fn fingerprint_of(&self, choice: &Choice) -> Result<u128, ChoiceError> {
        self.validate(choice)?;
        if let Some(fp) = self.fingerprint_fast(choice) {
            return Ok(fp);
        }
        let overlay = self.effect_overlay(choice);
        let mut fp = self.base_fingerprint();
        for ((role, s), new) in &overlay {
            let d = self.device(*role).expect("same roles");
            fp ^= sector_hash(*role, *s, d.durable.sector(*s)) ^ sector_hash(*role, *s, new);
        }
        Ok(fp)
    }

    /// `fingerprint_of` from per-unit deltas computed once per state, where each changed sector
    /// has exactly one effect: no bit flips, and no two persisted writes on one sector. `None`
    /// otherwise (the overlay decides which write wins).
    fn fingerprint_fast(&self, choice: &Choice) -> Option<u128> {
        if !choice.bit_flips.is_empty() {
            return None;
        }
        let ps = &choice.persisted;
        for (i, a) in ps.iter().enumerate() {
            let wa = &self.pending[a.pending];
            let clash = ps[i + 1..].iter().any(|b| {
                let wb = &self.pending[b.pending];
                wb.role == wa.role && wb.overlaps(wa.sector, wa.sectors())
            });
            if clash {
                return None;
            }
        }
        let deltas = self
            .unit_deltas
            .0
            .get_or_init(|| self.compute_unit_deltas());
        let mut fp = self.base_fingerprint();
        for p in ps {
            let d = &deltas[p.pending];
            match &p.units {
                Units::All => fp ^= d.whole,
                Units::Mask(m) => {
                    for (u, &kept) in m.iter().enumerate() {
                        fp ^= if kept { d.persisted[u] } else { d.torn[u] };
                    }
                }
            }
        }
        Some(fp)
    }

    fn compute_unit_deltas(&self) -> Vec<UnitDeltas> {
        self.pending
            .iter()
            .map(|w| {
                let d = self.device(w.role).expect("same roles");
                let mut out = UnitDeltas::default();
                let mut new = [0u8; SECTOR_SIZE];
                for (first, count) in w.units() {
                    let (mut kept, mut torn) = (0u128, 0u128);
                    for s in first..first + count {
                        let Some(bytes) = w.live_sector(s) else {
                            continue;
                        };
                        let old = sector_hash(w.role, s, d.durable.sector(s));
                        kept ^= old ^ sector_hash(w.role, s, bytes);
                        let left = match d.torn_fill {
                            crate::TornFill::Old => None,
                            crate::TornFill::Zero => Some(Effect::Zero),
                            crate::TornFill::Garbage => Some(Effect::Garbage(w.seq)),
                        };
                        if let Some(e) = left {
                            new.copy_from_slice(d.durable.sector(s));
                            e.apply(s, &mut new);
                            torn ^= old ^ sector_hash(w.role, s, &new);
                        }
                    }
                    out.persisted.push(kept);
                    out.torn.push(torn);
                    out.whole ^= kept;
                }
                out
            })
            .collect()
    }

    /// The new content of every sector a (valid) `choice` changes, built from copies of single
    /// durable sectors.
    fn effect_overlay(&self, choice: &Choice) -> BTreeMap<(DeviceRole, u64), [u8; SECTOR_SIZE]> {
        let mut overlay: BTreeMap<(DeviceRole, u64), [u8; SECTOR_SIZE]> = BTreeMap::new();
        self.for_each_effect(choice, |role, s, effect| {
            let sector = overlay.entry((role, s)).or_insert_with(|| {
                let d = self.device(role).expect("same roles");
                d.durable.sector(s).try_into().expect("a sector")
            });
            effect.apply(s, sector);
        });
        overlay
    }

    /// A key of everything a crash at this point can leave: the durable images and the pending
    /// writes (their log order and sequence numbers, which sectors are still live, their write unit). Two
    /// points with the same key have the same crash states, choice for choice: between two
    /// completions of writes nothing of it changes, so the explorer checks such a point once.
    pub fn state_key(&self) -> u128 {
        let mut h = self.base_fingerprint() ^ 0x005e_ed0f_c4a5_u128 << 64;
        for w in &self.pending {
            // The log's sequence number names the write, and with it its data.
            let mut x = mix64(w.seq ^ (w.role as u64) << 56) ^ mix64(w.sector) ^ w.unit_sectors;
            for (s, live) in w.live.iter().enumerate() {
                x = mix64(x ^ (s as u64) << 1 ^ *live as u64);
            }
            h = h.rotate_left(7) ^ x as u128 ^ (mix64(x) as u128) << 64;
        }
        h
    }

    /// Fingerprint of the durable images (nothing pending persisted), computed once.
    pub fn base_fingerprint(&self) -> u128 {
        *self.base_fp.get_or_init(|| {
            self.devices
                .iter()
                .fold(0, |fp, d| fp ^ image_fingerprint(d.role, &d.durable))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceConfig, PointSelection, SimDevice};
    use engine::BlockDevice;
    use proptest::prelude::*;

    const SECTORS: u64 = 80;

    /// The debug check of CrashState::image notices a wrong byte in a sector the choice changed
    /// and in a chunk the choice did not touch.
    #[test]
    fn the_image_check_notices_wrong_bytes() {
        let mut w = World::new();
        w.add_device(DeviceRole::Cache, DeviceConfig::zeroed(SECTORS))
            .unwrap();
        let w = w.shared();
        let mut dev = SimDevice::new(&w, DeviceRole::Cache).unwrap();
        dev.write(3, &[7u8; SECTOR_SIZE], false).unwrap();
        let w = w.borrow();
        let state = w.crash_state(CrashPoint::end(&w)).unwrap();
        let choice = Choice::whole([0]);
        let good = state.image(&choice).unwrap();
        assert!(state.holds_plain_bytes(&choice, &good));
        for (sector, what) in [(3, "the changed sector"), (40, "an untouched chunk")] {
            let mut bad = good.clone();
            bad.images[0].1.sector_mut(sector)[9] ^= 1;
            assert!(!state.holds_plain_bytes(&choice, &bad), "{what}");
        }
        assert!(
            !state.holds_plain_bytes(&Choice::none(), &good),
            "another choice"
        );
    }

    proptest! {
        /// At every crash point of a random run, the images of random choices (tears, bit
        /// flips) equal plain copies of the durable images with the choice written in, and
        /// building them leaves the state's durable images as they were.
        #[test]
        fn shared_images_equal_plain_copies(
            seed in any::<u64>(),
            block_unit in any::<bool>(),
            ops in proptest::collection::vec(
                (0..SECTORS, 1u64..20, any::<bool>(), any::<bool>()), 1..24),
        ) {
            let unit = if block_unit { AtomicUnit::Block } else { AtomicUnit::Sector };
            let mut w = World::new();
            let cache = DeviceConfig::zeroed(SECTORS).with_atomic_unit(unit);
            w.add_device(DeviceRole::Cache, cache).unwrap();
            w.add_device(DeviceRole::Backing, DeviceConfig::zeroed(SECTORS)).unwrap();
            let w = w.shared();
            let mut dev = SimDevice::new(&w, DeviceRole::Cache).unwrap();
            for (i, &(sector, sectors, fua, flush)) in ops.iter().enumerate() {
                let sectors = sectors.min(SECTORS - sector);
                dev.write(sector, &vec![i as u8 + 1; sectors as usize * SECTOR_SIZE], fua)
                    .unwrap();
                if flush {
                    dev.flush().unwrap();
                }
            }
            let w = w.borrow();
            let mut replayer = w.replayer();
            for point in w.crash_points(PointSelection::fine()) {
                let state = replayer.advance_to(point).unwrap();
                let durable = state.plain_images(&Choice::none());
                for choice in state.random_choices(seed ^ point.before, 6) {
                    let images = state.image(&choice).unwrap();
                    let plain = state.plain_images(&choice);
                    prop_assert_eq!(images.images.len(), plain.len());
                    for ((role, img), (plain_role, bytes)) in images.images.iter().zip(&plain) {
                        prop_assert_eq!(role, plain_role);
                        prop_assert!(*img == *bytes, "{} differs with {}", role, choice);
                    }
                    prop_assert!(state.holds_plain_bytes(&choice, &images));
                    prop_assert_eq!(images.fingerprint(), state.fingerprint_of(&choice).unwrap());
                    prop_assert_eq!(state.plain_images(&Choice::none()), durable.clone());
                }
            }
        }
    }
}
