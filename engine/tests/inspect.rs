//! Offline `check` and `dump` (engine/src/inspect.rs).
//!
//! The central property: what `check` says replay would do is what `SyncEngine::open` then does,
//! on images made by the engine itself and cut at random points, with and without damage
//! (torn segments, zeroed or garbage headers, a rotted record copy). Also: the verdicts on
//! fresh, blank, foreign, interrupted, resized, upstream and otherwise odd images; dumps of one
//! segment and of a missing one; no panic on random bytes; and neither function ever writes.

// `Config` gains a `quirks` field when the `quirks` feature is on (the crash simulator turns it
// on workspace-wide); `..Config::default()` keeps these literals compiling both ways.
#![allow(clippy::needless_update)]

#[path = "support/json.rs"]
mod json;
use json::json_is_valid;

use engine::device::{Fault, Faulty, ReadOnly};
use engine::format::{
    self, encode_superblock, Geometry, Metablock, RecordExt, SuperblockExt, BLOCK_SIZE, EXT_OFFSET,
    FORMAT_VERSION, RECORD_SECTOR, SECTORS_PER_BLOCK, SECTOR_SIZE, SUPERBLOCK_MAGIC,
    SUPERBLOCK_SECTORS,
};
use engine::inspect::{NoteKind, ProblemKind, RecordSource, SlotClass, StopReason, SuperblockKind};
use engine::{
    check, check_against_backing, dump, Access, BlockDevice, CheckReport, Config, Dump, Error,
    FormatPolicy, MemDevice, RecoveryReport, Step, SyncEngine,
};
use proptest::prelude::*;

const GENERATION: u64 = 0x5eed;

/// Lends `dev` to `f` behind a [`ReadOnly`] wrapper and takes it back; fails the test if
/// anything tried to write or flush it (even if the error was swallowed): inspection is
/// read-only.
fn read_only<T>(dev: &mut MemDevice, f: impl FnOnce(&mut ReadOnly<MemDevice>) -> T) -> T {
    let mut ro = ReadOnly::new(std::mem::replace(dev, MemDevice::new(0)));
    let out = f(&mut ro);
    assert_eq!(ro.refused(), 0, "inspection wrote to or flushed the device");
    *dev = ro.into_inner();
    out
}

/// `check` through a read-only wrapper; also asserts the image is byte-identical afterwards and
/// that both renderings are well-formed.
fn checked(cache: &mut MemDevice) -> CheckReport {
    checked_with(cache, None)
}

/// [`checked`], optionally against a backing device of `backing_sectors`.
fn checked_with(cache: &mut MemDevice, backing_sectors: Option<u64>) -> CheckReport {
    let before = cache.bytes().to_vec();
    let report = read_only(cache, |dev| match backing_sectors {
        None => check(dev),
        Some(b) => check_against_backing(dev, b),
    })
    .expect("check reads a MemDevice without I/O errors");
    assert!(
        cache.bytes() == before.as_slice(),
        "check changed the image"
    );
    let json = report.to_json();
    assert!(json_is_valid(&json), "invalid JSON: {json}");
    let _ = report.to_string();
    report
}

fn dumped(cache: &mut MemDevice, segment: Option<u64>) -> Dump {
    let before = cache.bytes().to_vec();
    let d = read_only(cache, |dev| dump(dev, segment)).expect("dump reads a MemDevice");
    assert!(cache.bytes() == before.as_slice(), "dump changed the image");
    let json = d.to_json();
    assert!(json_is_valid(&json), "invalid JSON: {json}");
    let _ = d.to_string();
    d
}

fn cfg(order: u8, format: FormatPolicy) -> Config {
    Config {
        segment_size_order: order,
        nr_rambuf_pool: 2,
        tunables: None,
        format,
        generation: GENERATION,
        ..Config::default()
    }
}

fn fresh(order: u8, nr: u64, backing_blocks: u64) -> SyncEngine<MemDevice> {
    let cache = MemDevice::new(SUPERBLOCK_SECTORS + (nr << order));
    let backing = MemDevice::new(backing_blocks * SECTORS_PER_BLOCK);
    let (e, rep) = SyncEngine::open(cache, backing, cfg(order, FormatPolicy::IfBlank)).unwrap();
    assert!(rep.formatted);
    e
}

fn open(
    cache: MemDevice,
    backing: MemDevice,
) -> Result<(SyncEngine<MemDevice>, RecoveryReport), Error> {
    SyncEngine::open(cache, backing, cfg(4, FormatPolicy::Never))
}

fn blk(tag: u32) -> Vec<u8> {
    let mut v = vec![0u8; BLOCK_SIZE];
    for (i, w) in v.chunks_exact_mut(4).enumerate() {
        w.copy_from_slice(&(tag.wrapping_mul(0x0101_0101) ^ (i as u32)).to_le_bytes());
    }
    v
}

fn write_block(e: &mut SyncEngine<MemDevice>, block: u64, tag: u32) {
    e.write(block * SECTORS_PER_BLOCK, &blk(tag), false)
        .unwrap();
}

/// Byte offset of slot `slot` in the image.
fn slot_byte(geo: &Geometry, slot: u64) -> usize {
    geo.slot_sector(slot) as usize * SECTOR_SIZE
}

/// Asserts that `check`'s replay plan is what `open` did.
fn assert_agrees(report: &CheckReport, rep: &RecoveryReport, context: &str) {
    let plan = report
        .replay
        .unwrap_or_else(|| panic!("{context}: open recovered, check says it would not\n{report}"));
    assert!(report.sound, "{context}: open recovered\n{report}");
    assert_eq!(plan.record, rep.record, "{context}: record\n{report}");
    assert_eq!(
        (plan.segments_applied, plan.last_applied, plan.dirty_blocks),
        (rep.segments_applied, rep.last_applied, rep.dirty_blocks),
        "{context}: applied segments / dirty blocks\n{report}\n{rep:?}"
    );
    assert_eq!(
        plan.invalidated_slots, rep.stale_invalidated,
        "{context}: invalidated slots\n{report}\n{rep:?}"
    );
    // Recovery names a stop only where the slot holds something.
    let names_stop = matches!(
        plan.stop.reason,
        StopReason::Torn | StopReason::OtherId { .. }
    );
    assert_eq!(
        names_stop,
        rep.stop_reason.is_some(),
        "{context}: stop\n{report}\n{rep:?}"
    );
    if plan.stop.reason == StopReason::Torn {
        let why = rep.stop_reason.as_deref().unwrap_or_default();
        assert!(
            why.contains("torn") && why.contains(&format!("segment {}", plan.stop.id)),
            "{context}: {why}"
        );
    }
    assert_eq!(
        rep.upstream_image,
        report.superblock.kind == SuperblockKind::Upstream
    );
}

// ----- fresh and formatted -----

#[test]
fn freshly_formatted_device_is_sound_and_empty() {
    for (order, nr) in [(4u8, 2u64), (5, 7), (10, 3)] {
        let (mut cache, _) = fresh(order, nr, 16).into_devices();
        let r = checked(&mut cache);
        assert!(r.sound, "{r}");
        assert!(r.problems.is_empty() && r.notes.is_empty(), "{r}");
        assert_eq!(r.superblock.kind, SuperblockKind::Ours);
        let ext = r.superblock.ext.unwrap();
        assert_eq!((ext.order, ext.generation), (order, GENERATION));
        let rec = r.records.unwrap();
        assert!(rec.primary.valid && rec.backup.valid && !rec.interrupted_format);
        assert_eq!(
            (rec.record, rec.source),
            (Some(0), Some(RecordSource::Both))
        );
        let geo = r.geometry.unwrap();
        assert_eq!((geo.order, geo.nr_segments), (order, nr));
        assert_eq!(r.slot_counts.empty, nr);
        assert!(r.slots.is_empty());
        let plan = r.replay.unwrap();
        assert_eq!(
            (
                plan.record,
                plan.segments_applied,
                plan.last_applied,
                plan.dirty_blocks
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(
            (plan.stop.id, plan.stop.slot, plan.stop.reason),
            (1, 0, StopReason::EmptySlot)
        );
        assert_eq!(plan.invalidated_slots, 0);
        assert!(r.to_string().contains("SOUND"));
        assert!(r.to_json().starts_with("{\"sound\":true,"));
    }
}

// ----- agreement with SyncEngine::open on random crash images -----

/// splitmix64: a tiny deterministic generator for the workloads.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Random writes (full and partial blocks, some FUA), FLUSHes and background steps.
fn run_workload(e: &mut SyncEngine<MemDevice>, rng: &mut Rng, ops: u64, backing_blocks: u64) {
    for _ in 0..ops {
        match rng.below(100) {
            0..=54 => {
                // A few hot blocks, so blocks are overwritten across segments.
                let block = if rng.chance(50) {
                    rng.below(4)
                } else {
                    rng.below(backing_blocks)
                };
                let first = rng.below(8);
                let count = 1 + rng.below(8 - first);
                let data = vec![rng.next() as u8; count as usize * SECTOR_SIZE];
                e.write(block * SECTORS_PER_BLOCK + first, &data, rng.chance(10))
                    .unwrap();
            }
            55..=67 => e.flush().unwrap(),
            68..=75 => {
                e.run_step(Step::Seal).unwrap();
            }
            76..=83 => {
                e.run_step(Step::FlushSegment).unwrap();
            }
            84..=91 => {
                e.run_step(Step::Writeback).unwrap();
            }
            92..=96 => {
                e.run_step(Step::Record).unwrap();
            }
            _ => {
                e.run_step(Step::Sync).unwrap();
            }
        }
    }
}

/// Damage of the kinds a power cut or the media leave behind. Returns what it did.
fn damage(cache: &mut MemDevice, geo: &Geometry, rng: &mut Rng) -> &'static str {
    let nr = geo.nr_segments;
    let slot = rng.below(nr);
    let at = slot_byte(geo, slot);
    let bytes = cache.bytes_mut();
    let len = bytes[at + format::HEADER_LENGTH_OFFSET] as usize;
    let written = format::segment_len_bytes(len.min(geo.blocks_per_segment()));
    match rng.below(12) {
        0..=3 => "none",
        4..=6 => {
            // A torn write: one byte of the checksummed part differs.
            let off = 512 + rng.below((written - 512) as u64) as usize;
            bytes[at + off] ^= 1 << rng.below(8);
            "flipped a checksummed byte"
        }
        7 => {
            bytes[at..at + BLOCK_SIZE].fill(0);
            "zeroed a header"
        }
        8 => {
            // Garbage in the first sector: a random id and length.
            for b in &mut bytes[at..at + SECTOR_SIZE] {
                *b = rng.next() as u8;
            }
            "garbage first sector"
        }
        9 => {
            // The id of a later lap (the write of a reused slot lost its data).
            let id = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
            let newer = id.max(1) + nr;
            bytes[at..at + 8].copy_from_slice(&newer.to_le_bytes());
            "header of a later lap"
        }
        10 => {
            let s = RECORD_SECTOR as usize * SECTOR_SIZE;
            bytes[s + rng.below(28) as usize] ^= 0x10;
            "rotted primary record"
        }
        _ => {
            for sector in [format::RECORD_SECTOR, format::BACKUP_RECORD_SECTOR] {
                let s = sector as usize * SECTOR_SIZE;
                bytes[s + 8] ^= 0xFF;
            }
            "both record copies invalid"
        }
    }
}

#[test]
fn check_agrees_with_recovery_on_random_crash_images() {
    let mut stops = [0u32; 4];
    let mut damaged = 0;
    for seed in 0..200u64 {
        let mut rng = Rng(seed);
        let order = 4 + rng.below(3) as u8;
        let nr = 2 + rng.below(7);
        let backing_blocks = 8 + rng.below(56);
        let mut e = fresh(order, nr, backing_blocks);
        let geo = e.geometry();
        for round in 0..4 {
            let ops = 10 + rng.below(60);
            run_workload(&mut e, &mut rng, ops, backing_blocks);
            // A power cut: everything the engine wrote is on the media, RAM is lost.
            let (mut cache, backing) = e.into_devices();
            let what = damage(&mut cache, &geo, &mut rng);
            damaged += (what != "none") as u32;
            let context = format!("seed {seed} round {round} ({what})");
            let report = checked(&mut cache);
            match open(cache, backing) {
                Ok((reopened, rep)) => {
                    assert_agrees(&report, &rep, &context);
                    let plan = report.replay.unwrap();
                    stops[match plan.stop.reason {
                        StopReason::EmptySlot => 0,
                        StopReason::OtherId { .. } => 1,
                        StopReason::Torn => 2,
                        StopReason::WholeRing => 3,
                    }] += 1;
                    reopened.check_invariants().unwrap();
                    // After recovery the log has no tail to cut: check sees the same replay
                    // and nothing unreachable, and recovering again changes nothing.
                    let (mut cache, backing) = reopened.into_devices();
                    let again = checked(&mut cache);
                    assert_eq!(again.slot_counts.unreachable, 0, "{context}\n{again}");
                    let p2 = again.replay.unwrap();
                    assert_eq!(
                        (p2.segments_applied, p2.last_applied, p2.dirty_blocks),
                        (plan.segments_applied, plan.last_applied, plan.dirty_blocks),
                        "{context}\n{again}"
                    );
                    assert_eq!(p2.invalidated_slots, 0, "{context}\n{again}");
                    let (e2, rep2) = open(cache, backing).unwrap();
                    assert_agrees(&again, &rep2, &context);
                    e = e2;
                }
                Err(err) => {
                    assert!(!report.sound, "{context}: open failed with {err}\n{report}");
                    assert!(
                        matches!(err, Error::Corrupt { .. })
                            && report
                                .problems
                                .iter()
                                .any(|p| p.kind == ProblemKind::NoValidRecord),
                        "{context}: {err}\n{report}"
                    );
                    break;
                }
            }
        }
    }
    // The seeds reach every way a walk can end, and damage was applied.
    assert!(stops.iter().all(|&n| n > 0), "stops {stops:?}");
    assert!(damaged > 200, "{damaged}");
}

// ----- torn, unreachable, stale -----

/// Segments 1, 2, 3 flushed; `tear` gets one data byte flipped.
fn three_segments(tear: u64) -> (MemDevice, MemDevice, Geometry) {
    let mut e = fresh(4, 8, 16);
    let geo = e.geometry();
    for (block, tag) in [(1, 1), (2, 2), (1, 3)] {
        write_block(&mut e, block, tag);
        e.flush().unwrap();
    }
    let (mut c, b) = e.into_devices();
    let at = geo.block_sector(geo.slot_of(tear), 0) as usize * SECTOR_SIZE + 1234;
    c.bytes_mut()[at] ^= 0x40;
    (c, b, geo)
}

#[test]
fn torn_newest_segment_is_reported_and_replay_stops_there() {
    let (mut c, b, geo) = three_segments(3);
    let r = checked(&mut c);
    assert!(r.sound, "a torn tail is normal after a crash\n{r}");
    let torn = r.slots.iter().find(|s| s.id == 3).unwrap();
    assert_eq!(torn.class, SlotClass::Torn);
    assert_eq!(torn.slot, geo.slot_of(3));
    assert!(torn.length_ok && !torn.checksum_ok);
    assert_eq!(
        r.slots
            .iter()
            .filter(|s| s.class == SlotClass::Valid)
            .count(),
        2
    );
    let plan = r.replay.unwrap();
    assert_eq!((plan.segments_applied, plan.last_applied), (2, 2));
    assert_eq!(
        (plan.stop.id, plan.stop.slot, plan.stop.reason),
        (3, 2, StopReason::Torn)
    );
    assert_eq!(plan.dirty_blocks, 2);
    assert!(r.notes.iter().any(|n| n.kind == NoteKind::TornAtEnd));
    let (_, rep) = open(c, b).unwrap();
    assert_agrees(&r, &rep, "torn newest");
}

#[test]
fn intact_segment_after_a_torn_one_is_unreachable() {
    let (mut c, b, _) = three_segments(2);
    let r = checked(&mut c);
    assert!(r.sound, "{r}");
    let class = |id| r.slots.iter().find(|s| s.id == id).unwrap().class;
    assert_eq!(
        (class(1), class(2), class(3)),
        (SlotClass::Valid, SlotClass::Torn, SlotClass::Unreachable)
    );
    assert!(r
        .notes
        .iter()
        .any(|n| n.kind == NoteKind::UnreachableSegments && n.detail.contains("ids 3")));
    let plan = r.replay.unwrap();
    assert_eq!((plan.last_applied, plan.invalidated_slots), (1, 2));
    let (_, rep) = open(c, b).unwrap();
    assert_agrees(&r, &rep, "torn middle");
}

#[test]
fn written_back_segments_are_stale_and_replay_starts_after_the_record() {
    let mut e = fresh(4, 4, 16);
    for (block, tag) in [(1, 1), (2, 2)] {
        write_block(&mut e, block, tag);
        e.flush().unwrap();
    }
    e.run_step(Step::Writeback).unwrap();
    e.run_step(Step::Writeback).unwrap();
    e.run_step(Step::Record).unwrap();
    write_block(&mut e, 3, 3);
    e.flush().unwrap();
    let (mut c, b) = e.into_devices();
    let r = checked(&mut c);
    assert!(r.sound, "{r}");
    assert_eq!(r.records.unwrap().record, Some(2));
    assert_eq!(
        (
            r.slot_counts.stale,
            r.slot_counts.valid,
            r.slot_counts.empty
        ),
        (2, 1, 1),
        "{r}"
    );
    let plan = r.replay.unwrap();
    assert_eq!(
        (
            plan.record,
            plan.segments_applied,
            plan.last_applied,
            plan.dirty_blocks
        ),
        (2, 1, 3, 1)
    );
    let (_, rep) = open(c, b).unwrap();
    assert_agrees(&r, &rep, "after writeback");
}

#[test]
fn torn_primary_record_falls_back_to_the_backup() {
    let mut e = fresh(4, 4, 16);
    write_block(&mut e, 1, 1);
    e.flush().unwrap();
    e.run_step(Step::Writeback).unwrap();
    e.run_step(Step::Record).unwrap();
    let (mut c, b) = e.into_devices();
    c.bytes_mut()[RECORD_SECTOR as usize * SECTOR_SIZE + 20] ^= 1;
    let r = checked(&mut c);
    assert!(r.sound, "{r}");
    let rec = r.records.unwrap();
    assert!(!rec.primary.valid && rec.backup.valid);
    assert_eq!(
        (rec.record, rec.source),
        (Some(1), Some(RecordSource::Backup))
    );
    assert!(r
        .notes
        .iter()
        .any(|n| n.kind == NoteKind::RecordCopyInvalid));
    let (_, rep) = open(c, b).unwrap();
    assert_agrees(&r, &rep, "torn primary record");
}

#[test]
fn block_crc_mismatch_in_a_replayed_segment_is_unsound() {
    // A writer that recorded a wrong block CRC and checksummed it: replay accepts the segment,
    // reading the block would kill the cache.
    let (mut c, b) = fresh(4, 4, 16).into_devices();
    let geo = Geometry::new(4, c.size_sectors()).unwrap();
    let mut seg = vec![0u8; format::segment_len_bytes(1)];
    let data = blk(9);
    seg[BLOCK_SIZE..].copy_from_slice(&data);
    let mb = Metablock {
        sector: 8,
        dirty_bits: 0xFF,
        block_crc: Some(format::block_crc(&data) ^ 1),
    };
    format::encode_metablock(&mut seg, 0, &mb);
    format::seal_segment(&mut seg, 1, 1);
    let at = slot_byte(&geo, 0);
    c.bytes_mut()[at..at + seg.len()].copy_from_slice(&seg);
    let r = checked(&mut c);
    assert!(!r.sound);
    assert_eq!(r.slots[0].class, SlotClass::Valid);
    assert_eq!(r.slots[0].bad_block_crcs, 1);
    assert!(r
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::BlockCrcMismatch));
    let (mut e, rep) = open(c, b).unwrap();
    assert_eq!(rep.segments_applied, 1);
    assert!(e.read(8, &mut [0u8; BLOCK_SIZE]).is_err());
}

// ----- devices open refuses -----

/// `open` with `FormatPolicy::Never` fails, and check names `kind`.
fn assert_refused(mut cache: MemDevice, kind: ProblemKind) -> CheckReport {
    let r = checked(&mut cache);
    assert!(!r.sound, "{r}");
    assert!(r.replay.is_none(), "{r}");
    assert!(
        r.problems.iter().any(|p| p.kind == kind),
        "expected {kind:?}\n{r}"
    );
    assert!(r.to_string().contains(kind.as_str()));
    let err = open(cache, MemDevice::new(16 * SECTORS_PER_BLOCK))
        .map(|_| ())
        .expect_err("open must refuse it too");
    let _ = err;
    r
}

fn formatted_image(order: u8, nr: u64) -> MemDevice {
    fresh(order, nr, 16).into_devices().0
}

fn put_sector0(cache: &mut MemDevice, sector0: &[u8]) {
    cache.bytes_mut()[..SECTOR_SIZE].copy_from_slice(&sector0[..SECTOR_SIZE]);
}

#[test]
fn corrupt_superblocks_and_records_are_named() {
    // Blank.
    let r = assert_refused(MemDevice::new(SUPERBLOCK_SECTORS + 64), ProblemKind::Blank);
    assert_eq!(r.superblock.kind, SuperblockKind::Blank);

    // Wrong magic: foreign.
    let mut c = formatted_image(4, 4);
    c.bytes_mut()[0] ^= 0xFF;
    let r = assert_refused(c, ProblemKind::Foreign);
    assert!(r.geometry.is_none());

    // Future format version (a valid extension).
    let ext = SuperblockExt {
        format_version: FORMAT_VERSION + 1,
        order: 4,
        cache_type: 0,
        flags: 0,
        generation: GENERATION,
        cache_sectors: SUPERBLOCK_SECTORS + 64,
    };
    let mut c = formatted_image(4, 4);
    put_sector0(&mut c, &encode_superblock(&ext));
    assert_refused(c, ProblemKind::UnsupportedVersion);

    // Formatted at another size.
    let mut c = formatted_image(4, 4);
    put_sector0(
        &mut c,
        &encode_superblock(&SuperblockExt {
            format_version: FORMAT_VERSION,
            cache_sectors: SUPERBLOCK_SECTORS + 48,
            ..ext
        }),
    );
    let r = assert_refused(c, ProblemKind::CacheResized);
    assert_eq!(r.geometry.map(|g| g.nr_segments), Some(3));

    // A persistent-log type checked without its plog, and a type this build does not know.
    let mut c = formatted_image(4, 4);
    put_sector0(
        &mut c,
        &encode_superblock(&SuperblockExt {
            format_version: FORMAT_VERSION,
            cache_type: 1,
            ..ext
        }),
    );
    assert_refused(c, ProblemKind::PlogMissing);
    let mut c = formatted_image(4, 4);
    put_sector0(
        &mut c,
        &encode_superblock(&SuperblockExt {
            format_version: FORMAT_VERSION,
            cache_type: 2,
            ..ext
        }),
    );
    assert_refused(c, ProblemKind::UnsupportedType);

    // Bad order in a valid extension.
    let mut c = formatted_image(4, 4);
    put_sector0(
        &mut c,
        &encode_superblock(&SuperblockExt {
            format_version: FORMAT_VERSION,
            order: 11,
            ..ext
        }),
    );
    assert_refused(c, ProblemKind::Geometry);

    // Both record copies rotted.
    let mut c = formatted_image(4, 4);
    for s in [RECORD_SECTOR, format::BACKUP_RECORD_SECTOR] {
        c.bytes_mut()[s as usize * SECTOR_SIZE + 9] ^= 1;
    }
    let r = assert_refused(c, ProblemKind::NoValidRecord);
    assert_eq!(r.records.unwrap().record, None);

    // A record of another generation.
    let mut c = formatted_image(4, 4);
    let other = format::encode_record_block(&RecordExt {
        last_writeback_id: 0,
        flags: 0,
        generation: GENERATION + 1,
    });
    for s in [
        format::RECORD_BLOCK_SECTOR,
        format::BACKUP_RECORD_BLOCK_SECTOR,
    ] {
        let at = s as usize * SECTOR_SIZE;
        c.bytes_mut()[at..at + BLOCK_SIZE].copy_from_slice(&other);
    }
    assert_refused(c, ProblemKind::NoValidRecord);

    // A record no segment id can reach.
    let mut c = formatted_image(4, 4);
    let huge = format::encode_record_block(&RecordExt {
        last_writeback_id: u64::MAX / 2,
        flags: 0,
        generation: GENERATION,
    });
    let at = format::RECORD_BLOCK_SECTOR as usize * SECTOR_SIZE;
    c.bytes_mut()[at..at + BLOCK_SIZE].copy_from_slice(&huge);
    assert_refused(c, ProblemKind::ImplausibleRecord);

    // An interrupted format (the records say "formatting"), whatever sector 0 holds.
    for garbage_sector0 in [false, true] {
        let mut c = formatted_image(4, 4);
        let marker = format::encode_record_block(&RecordExt {
            last_writeback_id: 0,
            flags: format::RECORD_FLAG_FORMATTING,
            generation: GENERATION,
        });
        let at = format::BACKUP_RECORD_BLOCK_SECTOR as usize * SECTOR_SIZE;
        c.bytes_mut()[at..at + BLOCK_SIZE].copy_from_slice(&marker);
        if garbage_sector0 {
            c.bytes_mut()[..SECTOR_SIZE].fill(0x5A);
        }
        let r = assert_refused(c, ProblemKind::InterruptedFormat);
        assert!(r.records.unwrap().interrupted_format);
    }

    // Too small for any geometry, down to nothing.
    for sectors in [0, 1, 7, 8, 2047, 2048, SUPERBLOCK_SECTORS + 31] {
        let mut c = MemDevice::new(sectors);
        let r = checked(&mut c);
        assert!(!r.sound);
        assert!(
            r.problems.iter().any(|p| p.kind == ProblemKind::TooSmall),
            "{r}"
        );
        assert!(r.geometry.is_none() && r.replay.is_none());
        let d = dumped(&mut c, None);
        assert!(d.segments.is_empty() && d.unreadable.is_some());
    }
}

#[test]
fn check_against_a_backing_device_finds_blocks_past_its_end() {
    let mut e = fresh(5, 4, 128);
    e.write(100 * SECTORS_PER_BLOCK, &blk(1), true).unwrap();
    let (mut c, _) = e.into_devices();
    let before = c.bytes().to_vec();
    let fits = read_only(&mut c, |d| {
        check_against_backing(d, 128 * SECTORS_PER_BLOCK)
    })
    .unwrap();
    assert!(fits.sound, "{fits}");
    assert_eq!(
        fits.replay.unwrap().backing_sectors_needed,
        101 * SECTORS_PER_BLOCK
    );
    let small = read_only(&mut c, |d| check_against_backing(d, 16 * SECTORS_PER_BLOCK)).unwrap();
    assert!(!small.sound);
    assert!(small
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::BackingTooSmall));
    // A backing device need not be whole 4 KiB blocks (upstream takes any size): its last
    // block is partial. An empty one is refused.
    let odd = read_only(&mut c, |d| check_against_backing(d, 1001)).unwrap();
    assert!(odd.sound, "{odd}");
    let empty = read_only(&mut c, |d| check_against_backing(d, 0)).unwrap();
    assert!(empty
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::BackingSize));
    assert!(c.bytes() == before.as_slice());
    let err = open(c, MemDevice::new(16 * SECTORS_PER_BLOCK))
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, Error::SegmentOutOfRange { .. }), "{err}");
}

// ----- upstream images -----

/// An order-10 segment as upstream writes it: no CRC marker, a clean read-cache entry.
fn upstream_segment(id: u64, blocks: &[(u64, u8, u8)]) -> Vec<u8> {
    let mut seg = vec![0u8; format::segment_len_bytes(blocks.len())];
    for (i, &(sector, dirty, fill)) in blocks.iter().enumerate() {
        format::encode_metablock(
            &mut seg,
            i,
            &Metablock {
                sector,
                dirty_bits: dirty,
                block_crc: None,
            },
        );
        seg[BLOCK_SIZE * (1 + i)..BLOCK_SIZE * (2 + i)].fill(fill);
    }
    format::seal_segment(&mut seg, id, blocks.len());
    seg
}

fn upstream_image(record: u64) -> MemDevice {
    let size = SUPERBLOCK_SECTORS + 3 * 1024;
    let mut image = vec![0u8; size as usize * SECTOR_SIZE];
    image[..4].copy_from_slice(&SUPERBLOCK_MAGIC.to_le_bytes());
    image[EXT_OFFSET..EXT_OFFSET + 36].fill(0xA5);
    let r = RECORD_SECTOR as usize * SECTOR_SIZE;
    image[r..r + 8].copy_from_slice(&record.to_le_bytes());
    let geo = Geometry::new(10, size).unwrap();
    let seg1 = upstream_segment(1, &[(0, 0xFF, 0x11), (8, 0x00, 0x22), (16, 0x0F, 0x33)]);
    let seg2 = upstream_segment(2, &[(0, 0xF0, 0x44)]);
    for (slot, seg) in [(0u64, &seg1), (1, &seg2)] {
        let at = slot_byte(&geo, slot);
        image[at..at + seg.len()].copy_from_slice(seg);
    }
    MemDevice::from_bytes(image)
}

#[test]
fn upstream_image_is_reported_as_upstream() {
    for record in [0, 1] {
        let mut c = upstream_image(record);
        let r = checked(&mut c);
        assert!(r.sound, "{r}");
        assert_eq!(r.superblock.kind, SuperblockKind::Upstream);
        assert!(r.superblock.ext.is_none());
        assert_eq!(r.geometry.map(|g| (g.order, g.nr_segments)), Some((10, 3)));
        let rec = r.records.unwrap();
        assert_eq!(
            (rec.record, rec.source),
            (Some(record), Some(RecordSource::UpstreamPrimary))
        );
        let plan = r.replay.unwrap();
        // Block 0 in both segments, block 2 in segment 1; block 1 is clean.
        let (applied, dirty) = if record == 0 { (2, 2) } else { (1, 1) };
        assert_eq!((plan.segments_applied, plan.dirty_blocks), (applied, dirty));
        assert!(r.to_string().contains("superblock: upstream"));
        assert!(r.to_json().contains("\"kind\":\"upstream\""));
        let (_, rep) = open(c, MemDevice::new(64 * SECTORS_PER_BLOCK)).unwrap();
        assert_agrees(&r, &rep, "upstream");
    }
    // Upstream blocks have no CRC to check; dump says so.
    let d = dumped(&mut upstream_image(0), Some(1));
    assert_eq!(d.segments[0].blocks[1].dirty_bits, 0);
    assert!(d.segments[0]
        .blocks
        .iter()
        .all(|b| b.crc.is_none() && b.crc_ok.is_none()));
}

// ----- dump -----

#[test]
fn dump_lists_the_blocks_of_a_segment_and_says_when_one_is_missing() {
    let mut e = fresh(5, 4, 64);
    // Segment 1: block 3 whole, sectors 2..4 of block 7 (logged whole: rule R14 completes it
    // from the backing device).
    write_block(&mut e, 3, 1);
    e.write(7 * SECTORS_PER_BLOCK + 2, &[9u8; 2 * SECTOR_SIZE], false)
        .unwrap();
    e.flush().unwrap();
    // Segment 2: block 5.
    write_block(&mut e, 5, 2);
    e.flush().unwrap();
    let (mut c, _) = e.into_devices();

    let d = dumped(&mut c, Some(1));
    assert_eq!(d.requested, Some(1));
    assert!(d.missing.is_none());
    assert_eq!(d.segments.len(), 1);
    let s = &d.segments[0];
    assert_eq!((s.id, s.slot, s.length), (1, 0, 2));
    assert!(s.checksum_ok && s.length_ok && s.in_its_slot && !s.blocks_omitted);
    let listed: Vec<(u64, u8, Option<bool>)> = s
        .blocks
        .iter()
        .map(|b| (b.sector, b.dirty_bits, b.crc_ok))
        .collect();
    assert_eq!(listed, [(24, 0xFF, Some(true)), (56, 0xFF, Some(true))]);
    let text = d.to_string();
    assert!(text.contains("segment 1 in slot 0"), "{text}");
    assert!(
        text.contains("sector           56  dirty 11111111"),
        "{text}"
    );

    // Everything: both segments.
    let all = dumped(&mut c, None);
    assert_eq!(
        all.segments.iter().map(|s| s.id).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(all.segments[1].blocks[0].sector, 40);

    // Missing: an empty slot, another lap's id, id 0.
    let d = dumped(&mut c, Some(3));
    assert!(d.segments.is_empty());
    let m = d.missing.unwrap();
    assert_eq!((m.id, m.slot, m.found), (3, Some(2), 0));
    assert!(d
        .to_string()
        .contains("segment 3 is not on the device: slot 2 is empty"));
    let d = dumped(&mut c, Some(5));
    let m = d.missing.unwrap();
    assert_eq!((m.slot, m.found), (Some(0), 1));
    assert!(d.to_string().contains("slot 0 holds id 1"));
    assert!(d
        .to_json()
        .contains("\"missing\":{\"id\":5,\"slot\":0,\"found\":1}"));
    let d = dumped(&mut c, Some(0));
    assert_eq!(d.missing.unwrap().slot, None);

    // A torn segment is still dumped, with its checksum marked bad.
    let geo = Geometry::new(5, c.size_sectors()).unwrap();
    let at = geo.block_sector(0, 1) as usize * SECTOR_SIZE;
    c.bytes_mut()[at] ^= 1;
    let d = dumped(&mut c, Some(1));
    assert!(!d.segments[0].checksum_ok);
    assert_eq!(d.segments[0].blocks[1].crc_ok, Some(false));
}

#[test]
fn dump_of_a_header_claiming_too_many_blocks_lists_only_what_fits() {
    let (mut c, _) = fresh(4, 2, 16).into_devices();
    let geo = Geometry::new(4, c.size_sectors()).unwrap();
    let at = slot_byte(&geo, 1);
    c.bytes_mut()[at..at + 8].copy_from_slice(&2u64.to_le_bytes());
    c.bytes_mut()[at + format::HEADER_LENGTH_OFFSET] = 200;
    let d = dumped(&mut c, Some(2));
    let s = &d.segments[0];
    assert!(!s.length_ok && !s.checksum_ok);
    assert_eq!(s.blocks.len(), geo.blocks_per_segment());
    let r = checked(&mut c);
    assert_eq!(r.slots[0].class, SlotClass::Torn);
    assert!(!r.slots[0].length_ok);
}

// ----- random bytes -----

/// An image of `sectors` sectors: random bytes, optionally with the superblock magic, or with a
/// valid extension of a random order (so the slots, full of garbage, are scanned), or a valid
/// extension and valid records, with random or sparse garbage in the slots.
fn random_image(seed: u64, sectors: u64, shape: u8) -> MemDevice {
    let mut rng = Rng(seed);
    let mut image = vec![0u8; sectors as usize * SECTOR_SIZE];
    let sparse = shape >= 3;
    for chunk in image.chunks_mut(8) {
        let v = if sparse && !rng.chance(2) {
            0
        } else {
            rng.next()
        };
        let n = chunk.len();
        chunk.copy_from_slice(&v.to_le_bytes()[..n]);
    }
    if shape >= 1 && sectors > 0 {
        image[..4].copy_from_slice(&SUPERBLOCK_MAGIC.to_le_bytes());
    }
    if shape >= 2 && sectors > 0 {
        let ext = SuperblockExt {
            format_version: FORMAT_VERSION,
            order: 4 + rng.below(3) as u8,
            cache_type: 0,
            flags: 0,
            generation: GENERATION,
            cache_sectors: sectors,
        };
        image[..SECTOR_SIZE].copy_from_slice(&encode_superblock(&ext)[..SECTOR_SIZE]);
        if sectors > RECORD_SECTOR {
            let rec = format::encode_record_block(&RecordExt {
                last_writeback_id: rng.below(6),
                flags: 0,
                generation: GENERATION,
            });
            for s in [
                format::RECORD_BLOCK_SECTOR,
                format::BACKUP_RECORD_BLOCK_SECTOR,
            ] {
                let at = s as usize * SECTOR_SIZE;
                image[at..at + BLOCK_SIZE].copy_from_slice(&rec);
            }
        }
    }
    MemDevice::from_bytes(image)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Any bytes: check and dump return (a report, never a panic), write nothing, and agree
    /// with `open` on whether the device recovers.
    #[test]
    fn random_images_never_panic(
        seed in any::<u64>(),
        sectors in prop_oneof![
            0u64..=16,
            (SUPERBLOCK_SECTORS - 2)..=(SUPERBLOCK_SECTORS + 40),
            (SUPERBLOCK_SECTORS + 32)..=(SUPERBLOCK_SECTORS + 8 * 64),
        ],
        shape in 0u8..=4,
        segment in prop::option::of(0u64..20),
    ) {
        const BACKING: u64 = 1 << 16;
        let mut c = random_image(seed, sectors, shape);
        // Against the backing device open gets, so a garbage metablock past its end counts.
        let r = checked_with(&mut c, Some(BACKING));
        prop_assert_eq!(r.sound, r.problems.is_empty());
        if let Some(g) = r.geometry {
            let counted = r.slot_counts.empty + r.slots.len() as u64;
            prop_assert_eq!(counted, g.nr_segments);
        }
        dumped(&mut c, segment);
        dumped(&mut c, None);
        {
            match open(c, MemDevice::new(BACKING)) {
                Ok((_, rep)) => {
                    // Garbage may hold a block CRC mismatch open does not look at; anything
                    // else check flags makes open fail.
                    let benign = r.problems.iter().all(|p| p.kind == ProblemKind::BlockCrcMismatch);
                    prop_assert!(benign, "open recovered\n{}", r);
                    let plan = r.replay.unwrap();
                    prop_assert_eq!(
                        (plan.record, plan.segments_applied, plan.dirty_blocks, plan.invalidated_slots),
                        (rep.record, rep.segments_applied, rep.dirty_blocks, rep.stale_invalidated)
                    );
                }
                Err(Error::Io { .. }) => prop_assert!(false, "I/O error on a MemDevice"),
                Err(_) => prop_assert!(!r.sound, "open failed, check said sound\n{}", r),
            }
        }
    }
}

#[test]
fn a_read_error_is_an_io_error_not_a_verdict() {
    let mut e = fresh(4, 4, 16);
    write_block(&mut e, 1, 1);
    e.flush().unwrap();
    let (dev, _) = e.into_devices();
    let geo = Geometry::new(4, dev.size_sectors()).unwrap();
    for bad_sector in [0, RECORD_SECTOR, geo.slot_sector(0), geo.block_sector(0, 0)] {
        // Reads of one sector fail.
        let fault = Fault::fail(Access::Read).at_sector(bad_sector);
        let mut d = ReadOnly::new(Faulty::with_fault(dev.clone(), fault));
        let err = check(&mut d).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Io {
                    role: engine::DeviceRole::Cache,
                    ..
                }
            ),
            "{err}"
        );
        assert!(matches!(dump(&mut d, None), Err(Error::Io { .. })));
        assert_eq!(d.refused(), 0, "inspection wrote or flushed");
        assert!(d.inner().injected() >= 2, "both hit the bad sector");
    }
}

// ----- type 1: check and dump with the plog -----

use engine::format::plog::{PLOG_FIRST_REGION_SECTOR, PLOG_SB_SECTOR};
use engine::inspect::{OverlayDevice, RegionState};
use engine::{check_with_plog, dump_with_plog};

/// Order 5 (3 blocks per segment): a region is 2 * 9 * 3 = 54 sectors.
const T1_ORDER: u8 = 5;
const T1_REGION: u64 = 54;

/// A fresh type-1 cache: `nr` slots, a plog of `regions` regions, `backing_blocks` blocks.
fn fresh_type1(
    nr: u64,
    regions: u64,
    backing_blocks: u64,
    generation: u64,
) -> SyncEngine<MemDevice> {
    let cache = MemDevice::new(SUPERBLOCK_SECTORS + (nr << T1_ORDER));
    let backing = MemDevice::new(backing_blocks * SECTORS_PER_BLOCK);
    let plog = MemDevice::new(PLOG_FIRST_REGION_SECTOR + regions * T1_REGION);
    let cfg = Config {
        generation,
        ..cfg(T1_ORDER, FormatPolicy::IfBlank)
    };
    let (e, rep) = SyncEngine::open_with_plog(cache, backing, Some(plog), cfg).unwrap();
    assert!(rep.formatted && e.cache_type() == 1);
    e
}

fn open_type1(
    cache: MemDevice,
    backing: MemDevice,
    plog: MemDevice,
) -> Result<(SyncEngine<MemDevice>, RecoveryReport), Error> {
    SyncEngine::open_with_plog(
        cache,
        backing,
        Some(plog),
        cfg(T1_ORDER, FormatPolicy::Never),
    )
}

/// `check_with_plog` through read-only wrappers on both devices; asserts both images are
/// byte-identical afterwards and both renderings are well-formed.
fn checked_plog(cache: &mut MemDevice, plog: &mut MemDevice, backing: Option<u64>) -> CheckReport {
    let (cache_before, plog_before) = (cache.bytes().to_vec(), plog.bytes().to_vec());
    let report = read_only(cache, |c| {
        read_only(plog, |p| check_with_plog(c, p, backing))
    })
    .expect("check reads MemDevices without I/O errors");
    assert!(
        cache.bytes() == cache_before.as_slice(),
        "check changed the cache"
    );
    assert!(
        plog.bytes() == plog_before.as_slice(),
        "check changed the plog"
    );
    let json = report.to_json();
    assert!(json_is_valid(&json), "invalid JSON: {json}");
    let _ = report.to_string();
    report
}

fn has_problem(r: &CheckReport, kind: ProblemKind) -> bool {
    r.problems.iter().any(|p| p.kind == kind)
}

/// Asserts that check's recovery is exactly what `open_with_plog` then reports.
fn assert_type1_agrees(report: &CheckReport, opened: &RecoveryReport, context: &str) {
    let plan = report
        .plog
        .as_ref()
        .and_then(|p| p.recovery.as_ref())
        .unwrap_or_else(|| panic!("{context}: open recovered, check has no recovery\n{report}"));
    assert!(report.sound, "{context}: open recovered\n{report}");
    assert_eq!(plan, opened, "{context}\n{report}");
}

#[test]
fn type1_cut_after_flush_check_says_what_plog_replay_rebuilds() {
    let mut e = fresh_type1(8, 4, 64, GENERATION);
    // Segment 1 fills (3 blocks) and is sealed; 2 blocks go into segment 2; a FLUSH makes only
    // the plog durable: neither segment reaches the cache device.
    for b in 0..5 {
        write_block(&mut e, b, b as u32 + 1);
    }
    e.flush().unwrap();
    assert!(e.status().plog_flushes >= 1);
    let (mut cache, backing, plog) = e.into_all_devices();
    let mut plog = plog.unwrap();
    let r = checked_plog(&mut cache, &mut plog, Some(backing.size_sectors()));
    assert!(r.sound, "{r}");
    assert!(
        r.notes.iter().any(|n| n.kind == NoteKind::PlogReplay),
        "{r}"
    );
    // The cache device holds no segment: its walk applies nothing.
    assert_eq!(r.replay.unwrap().segments_applied, 0, "{r}");
    let p = r.plog.as_ref().unwrap();
    let sb = p.info.superblock.unwrap();
    assert_eq!((sb.generation, sb.geometry.nr_regions), (GENERATION, 4));
    assert!(p.info.copies.iter().all(|c| c.generation_matches));
    let states: Vec<(RegionState, u32, Option<u64>)> = p
        .info
        .regions
        .iter()
        .map(|r| (r.state, r.valid_entries, r.first.map(|h| h.segment_id)))
        .collect();
    assert_eq!(
        states,
        vec![
            (RegionState::Current, 3, Some(1)),
            (RegionState::Current, 2, Some(2)),
            (RegionState::Empty, 0, None),
            (RegionState::Empty, 0, None),
        ]
    );
    let rec = p.recovery.as_ref().unwrap();
    assert_eq!(
        (
            rec.plog_segments_rebuilt,
            rec.plog_entries_replayed,
            rec.last_applied,
            rec.dirty_blocks
        ),
        (2, 5, 2, 5),
        "{r}"
    );
    assert!(r.to_string().contains("rebuilds 2 segment(s)"), "{r}");
    let (mut e, opened) = open_type1(cache, backing, plog).unwrap();
    assert_type1_agrees(&r, &opened, "cut after FLUSH");
    for b in 0..5 {
        let mut got = vec![0u8; BLOCK_SIZE];
        e.read(b * SECTORS_PER_BLOCK, &mut got).unwrap();
        assert!(got == blk(b as u32 + 1), "block {b}");
    }
    // After recovery the segments are on the cache device and the plog is in a new epoch: a
    // second check rebuilds nothing and finds the old regions stale.
    let (mut cache, _, plog) = e.into_all_devices();
    let mut plog = plog.unwrap();
    let r = checked_plog(&mut cache, &mut plog, None);
    let p = r.plog.as_ref().unwrap();
    assert!(r.sound, "{r}");
    assert_eq!(p.recovery.as_ref().unwrap().plog_segments_rebuilt, 0);
    assert_eq!(r.replay.unwrap().segments_applied, 2, "{r}");
    assert_eq!(p.info.regions[0].state, RegionState::Stale, "{r}");
}

#[test]
fn type1_corrupt_entry_in_the_middle_cuts_the_replayed_run_there() {
    let mut e = fresh_type1(8, 4, 64, GENERATION);
    // Five one-sector pieces into block 0 (overwrites in the open segment): five entries in
    // region 0, each a header sector and a data sector.
    for s in 0..5u64 {
        e.write(s, &[0x40 + s as u8; SECTOR_SIZE], false).unwrap();
    }
    e.flush().unwrap();
    let (mut cache, backing, plog) = e.into_all_devices();
    let mut plog = plog.unwrap();
    // Entry 2's data sector: a bit flip fails its CRC.
    let data_sector = PLOG_FIRST_REGION_SECTOR + 2 * 2 + 1;
    plog.bytes_mut()[data_sector as usize * SECTOR_SIZE + 100] ^= 0x01;
    let r = checked_plog(&mut cache, &mut plog, None);
    // A torn tail is what a power cut leaves: recovery replays the prefix, still sound.
    assert!(r.sound, "{r}");
    let p = r.plog.as_ref().unwrap();
    assert_eq!(
        (p.info.regions[0].state, p.info.regions[0].valid_entries),
        (RegionState::Current, 2),
        "{r}"
    );
    let rec = p.recovery.as_ref().unwrap();
    assert_eq!(
        (rec.plog_segments_rebuilt, rec.plog_entries_replayed),
        (1, 2)
    );
    let (mut e, opened) = open_type1(cache, backing, plog).unwrap();
    assert_type1_agrees(&r, &opened, "corrupt entry 2");
    let mut got = vec![0u8; BLOCK_SIZE];
    e.read(0, &mut got).unwrap();
    for s in 0..5usize {
        let want = if s < 2 { 0x40 + s as u8 } else { 0 };
        assert!(
            got[s * SECTOR_SIZE..(s + 1) * SECTOR_SIZE]
                .iter()
                .all(|&b| b == want),
            "sector {s}"
        );
    }
}

#[test]
fn type1_plog_of_another_cache_missing_or_resized_is_unsound_and_named() {
    let mut e = fresh_type1(8, 4, 64, GENERATION);
    write_block(&mut e, 3, 3);
    e.flush().unwrap();
    let (mut cache, backing, plog) = e.into_all_devices();
    let mut plog = plog.unwrap();
    // Another cache's plog (same geometry, another generation).
    let (_, _, other) = fresh_type1(8, 4, 64, 0xbad).into_all_devices();
    let mut other = other.unwrap();
    let r = checked_plog(&mut cache, &mut other, None);
    assert!(
        !r.sound && has_problem(&r, ProblemKind::PlogGeneration),
        "{r}"
    );
    let p = r.plog.as_ref().unwrap();
    assert!(p.recovery.is_none() && p.info.superblock.is_none());
    assert!(p
        .info
        .copies
        .iter()
        .all(|c| !c.generation_matches && c.superblock.is_some()));
    assert!(matches!(
        open_type1(cache.clone(), backing.clone(), other),
        Err(Error::PlogMismatch { .. })
    ));
    // A blank plog: no superblock.
    let mut blank = MemDevice::new(plog.size_sectors());
    let r = checked_plog(&mut cache, &mut blank, None);
    assert!(
        !r.sound && has_problem(&r, ProblemKind::PlogSuperblock),
        "{r}"
    );
    // A resized plog.
    let mut bigger = plog.bytes().to_vec();
    bigger.resize(bigger.len() + 8 * SECTOR_SIZE, 0);
    let mut bigger = MemDevice::from_bytes(bigger);
    let r = checked_plog(&mut cache, &mut bigger, None);
    assert!(!r.sound && has_problem(&r, ProblemKind::PlogResized), "{r}");
    // One torn superblock copy is only a note: the backup is used.
    let mut torn = plog.clone();
    torn.bytes_mut()[PLOG_SB_SECTOR as usize * SECTOR_SIZE + 20] ^= 0xff;
    let r = checked_plog(&mut cache, &mut torn, None);
    assert!(r.sound, "{r}");
    assert!(
        r.notes
            .iter()
            .any(|n| n.kind == NoteKind::PlogSuperblockCopy),
        "{r}"
    );
    // The type-1 cache without its plog, and a type-0 cache with one.
    let r = checked(&mut cache);
    assert!(!r.sound && has_problem(&r, ProblemKind::PlogMissing), "{r}");
    assert!(r.replay.is_none(), "open refuses it: {r}");
    let (mut type0, _) = fresh(T1_ORDER, 8, 64).into_devices();
    let r = checked_plog(&mut type0, &mut plog, None);
    assert!(
        !r.sound && has_problem(&r, ProblemKind::PlogUnexpected),
        "{r}"
    );
    // The intact pair is sound.
    let r = checked_plog(&mut cache, &mut plog, None);
    assert!(r.sound, "{r}");
}

#[test]
fn type1_check_agrees_with_recovery_on_random_crash_images() {
    for seed in 0..60u64 {
        let mut rng = Rng(seed);
        let backing_blocks = 24;
        let mut e = fresh_type1(6, 3, backing_blocks, GENERATION);
        let ops = 5 + rng.below(60);
        run_workload(&mut e, &mut rng, ops, backing_blocks);
        let (mut cache, backing, plog) = e.into_all_devices();
        let mut plog = plog.unwrap();
        let what = match rng.below(4) {
            0 => "intact",
            1 => {
                // A bit flip somewhere in the regions: a torn entry.
                let regions = plog.size_sectors() - PLOG_FIRST_REGION_SECTOR;
                let at = (PLOG_FIRST_REGION_SECTOR + rng.below(regions)) as usize * SECTOR_SIZE
                    + rng.below(SECTOR_SIZE as u64) as usize;
                plog.bytes_mut()[at] ^= 1 << rng.below(8);
                "plog bit flip"
            }
            2 => {
                let geo = Geometry::new(T1_ORDER, cache.size_sectors()).unwrap();
                damage(&mut cache, &geo, &mut rng)
            }
            _ => {
                // A voided region start, as a cut recovery leaves.
                let r = rng.below(3);
                let at = (PLOG_FIRST_REGION_SECTOR + r * T1_REGION) as usize * SECTOR_SIZE;
                plog.bytes_mut()[at..at + SECTOR_SIZE].fill(0);
                "voided region"
            }
        };
        let context = format!("seed {seed} ({what}, {ops} ops)");
        let r = checked_plog(&mut cache, &mut plog, Some(backing.size_sectors()));
        match open_type1(cache, backing, plog) {
            Ok((_, opened)) => assert_type1_agrees(&r, &opened, &context),
            Err(e) => assert!(
                !r.sound,
                "{context}: open failed ({e}) but check says sound\n{r}"
            ),
        }
    }
}

#[test]
fn type1_dump_shows_the_plog_superblocks_and_regions() {
    let mut e = fresh_type1(8, 4, 64, GENERATION);
    write_block(&mut e, 1, 1);
    e.flush().unwrap();
    let (mut cache, _, plog) = e.into_all_devices();
    let mut plog = plog.unwrap();
    let before = (cache.bytes().to_vec(), plog.bytes().to_vec());
    let d = read_only(&mut cache, |c| {
        read_only(&mut plog, |p| dump_with_plog(c, p, None))
    })
    .unwrap();
    assert!(cache.bytes() == before.0.as_slice() && plog.bytes() == before.1.as_slice());
    assert!(json_is_valid(&d.to_json()), "{}", d.to_json());
    let p = d.plog.as_ref().unwrap();
    assert_eq!(p.regions.len(), 4);
    assert_eq!(
        (p.regions[0].state, p.regions[0].valid_entries),
        (RegionState::Current, 1)
    );
    let text = d.to_string();
    assert!(
        text.contains("plog device")
            && text.contains("region  0")
            && text.contains("3 of them empty"),
        "{text}"
    );
    // Without the plog, a type-1 dump still lists the cache device.
    let d = dumped(&mut cache, None);
    assert!(d.plog.is_none() && d.geometry.is_some());
}

#[test]
fn overlay_reads_through_and_keeps_writes_in_memory() {
    let mut base = MemDevice::from_bytes((0..4 * SECTOR_SIZE).map(|i| i as u8).collect());
    let orig = base.bytes().to_vec();
    let mut o = OverlayDevice::new(&mut base);
    o.write(1, &[7u8; SECTOR_SIZE], false).unwrap();
    o.write(2, &[0u8; SECTOR_SIZE], true).unwrap();
    o.flush().unwrap();
    let mut got = vec![0u8; 4 * SECTOR_SIZE];
    o.read(0, &mut got).unwrap();
    assert_eq!(&got[..SECTOR_SIZE], &orig[..SECTOR_SIZE]);
    assert!(got[SECTOR_SIZE..2 * SECTOR_SIZE].iter().all(|&b| b == 7));
    assert!(got[2 * SECTOR_SIZE..3 * SECTOR_SIZE]
        .iter()
        .all(|&b| b == 0));
    assert_eq!(&got[3 * SECTOR_SIZE..], &orig[3 * SECTOR_SIZE..]);
    assert_eq!(o.sectors_written(), 2);
    assert!(
        o.write(4, &[0u8; SECTOR_SIZE], false).is_err(),
        "past the end"
    );
    drop(o);
    assert_eq!(base.bytes(), orig.as_slice(), "the base is never written");
    let mut z = OverlayDevice::<MemDevice>::zeros(8);
    let mut s = [1u8; SECTOR_SIZE];
    z.read(7, &mut s).unwrap();
    assert!(s.iter().all(|&b| b == 0));
}
