//! Type 1 (plog) on in-memory devices: every completed write is on the media, so
//! `into_all_devices` is a power cut that loses exactly the RAM buffers.
//!
//! Covered: a FLUSH makes the plog durable and writes no segment; data in RAM buffers comes back
//! from the plog after a cut; a recovery run twice gives the same device; an entry torn in the
//! middle of a region ends the replay there and nothing after it is applied; a valid cache
//! segment is kept over its region (H8); wrong device combinations are typed errors; format
//! voids an older plog even under the same generation (H10); the geometry is stored (H9).

#![allow(clippy::needless_update)]

use engine::format::plog::{self as pf, PLOG_FIRST_REGION_SECTOR};
use engine::format::{SECTORS_PER_BLOCK, SECTOR_SIZE, SUPERBLOCK_SECTORS};
use engine::{BlockDevice, Config, Engine, Error, FormatPolicy, MemDevice, RecoveryReport};

const ORDER: u8 = 5; // three blocks per segment
const SEGMENTS: u64 = 6;
const BACKING_BLOCKS: u64 = 32;

fn cfg(format: FormatPolicy, pool: usize) -> Config {
    Config {
        segment_size_order: ORDER,
        nr_rambuf_pool: pool,
        tunables: None,
        format,
        generation: 11,
        ..Config::default()
    }
}

fn plog_sectors(regions: u64) -> u64 {
    PLOG_FIRST_REGION_SECTOR + regions * pf::region_sectors_for(3) as u64
}

fn fresh(regions: u64) -> Engine<MemDevice> {
    let cache = MemDevice::new(SUPERBLOCK_SECTORS + (SEGMENTS << ORDER));
    let backing = MemDevice::new(BACKING_BLOCKS * SECTORS_PER_BLOCK);
    let plog = MemDevice::new(plog_sectors(regions));
    let (e, rep) =
        Engine::open_with_plog(cache, backing, Some(plog), cfg(FormatPolicy::IfBlank, 2)).unwrap();
    assert!(rep.formatted);
    assert_eq!(e.cache_type(), 1);
    e
}

type Devs = (MemDevice, MemDevice, MemDevice);

fn cut(e: Engine<MemDevice>) -> Devs {
    let (c, b, p) = e.into_all_devices();
    (c, b, p.expect("type 1 keeps its plog"))
}

fn reopen(d: Devs) -> (Engine<MemDevice>, RecoveryReport) {
    let (e, rep) =
        Engine::open_with_plog(d.0, d.1, Some(d.2), cfg(FormatPolicy::Never, 2)).unwrap();
    e.check_invariants().unwrap();
    (e, rep)
}

fn data(tag: u32, sectors: usize) -> Vec<u8> {
    (0..sectors * SECTOR_SIZE)
        .map(|i| (tag as usize * 31 + i * 7 + i / 512) as u8)
        .collect()
}

fn read(e: &mut Engine<MemDevice>, sector: u64, sectors: usize) -> Vec<u8> {
    let mut out = vec![0u8; sectors * SECTOR_SIZE];
    e.read(sector, &mut out).unwrap();
    out
}

#[test]
fn flush_makes_the_plog_durable_and_writes_no_segment() {
    let mut e = fresh(4);
    e.write(0, &data(1, 8), false).unwrap();
    e.write(8, &data(2, 3), false).unwrap();
    let before = e.status();
    e.flush().unwrap();
    let after = e.status();
    assert_eq!(
        after.last_flushed_id, before.last_flushed_id,
        "no segment written"
    );
    assert_eq!(after.last_sealed_id, 0, "nothing sealed for the flush");
    assert_eq!(after.plog_entries, 2);
    assert_eq!(after.plog_flushes, 1);
    // A second FLUSH with nothing new costs nothing.
    e.flush().unwrap();
    assert_eq!(e.status().plog_flushes, 1);
}

#[test]
fn ram_buffers_come_back_from_the_plog() {
    let mut e = fresh(4);
    // Block 0 whole, then a partial overwrite of it, block 1 partial, block 5 across segments.
    e.write(0, &data(1, 8), false).unwrap();
    e.write(2, &data(2, 2), false).unwrap();
    e.write(9, &data(3, 4), false).unwrap();
    for b in 2..6u64 {
        e.write(b * 8, &data(10 + b as u32, 8), false).unwrap();
    }
    e.flush().unwrap();
    let want: Vec<Vec<u8>> = (0..6).map(|b| read(&mut e, b * 8, 8)).collect();
    let (mut e, rep) = reopen(cut(e));
    assert!(rep.plog_segments_rebuilt >= 1, "{rep:?}");
    assert!(rep.plog_entries_replayed >= 3, "{rep:?}");
    for (b, w) in want.iter().enumerate() {
        assert_eq!(&read(&mut e, b as u64 * 8, 8), w, "block {b}");
    }
    // Recovering again (now from the cache device) gives the same device.
    let (mut e2, rep2) = reopen(cut(e));
    assert_eq!(rep2.plog_segments_rebuilt, 0, "{rep2:?}");
    for (b, w) in want.iter().enumerate() {
        assert_eq!(
            &read(&mut e2, b as u64 * 8, 8),
            w,
            "block {b} after a second recovery"
        );
    }
}

/// The sector of entry `k` of the region of segment `id`, walking the region's entries.
fn entry_sector(plog: &MemDevice, regions: u64, id: u64, k: usize) -> u64 {
    let region = pf::region_sectors_for(3) as u64;
    let start = PLOG_FIRST_REGION_SECTOR + ((id - 1) % regions) * region;
    let mut at = start;
    for _ in 0..k {
        let s = at as usize * SECTOR_SIZE;
        let h = pf::decode_entry_header(&plog.bytes()[s..s + SECTOR_SIZE]).expect("entry");
        at += h.footprint();
    }
    at
}

#[test]
fn a_torn_entry_ends_the_replay_and_nothing_after_it_is_applied() {
    let mut e = fresh(4);
    let backing_before: Vec<Vec<u8>> = (0..4).map(|b| read(&mut e, b * 8, 8)).collect();
    for b in 0..4u64 {
        e.write(b * 8, &data(b as u32 + 1, 8), false).unwrap();
    }
    // Blocks 0..3 went into segment 1 (sealed when full, still in RAM); block 3 into segment 2.
    e.flush().unwrap();
    let mut d = cut(e);
    // Tear the data of the second entry of segment 1 (block 1).
    let s = entry_sector(&d.2, 4, 1, 1) + 1;
    d.2.bytes_mut()[s as usize * SECTOR_SIZE] ^= 0xFF;
    let (mut e, rep) = reopen(d);
    assert_eq!(read(&mut e, 0, 8), data(1, 8), "entry 0 applies");
    for b in 1..4u64 {
        assert_eq!(
            read(&mut e, b * 8, 8),
            backing_before[b as usize],
            "block {b} is after the torn entry and must not apply (prefix): {rep:?}"
        );
    }
}

#[test]
fn a_valid_cache_segment_is_kept_over_its_region() {
    let mut e = fresh(4);
    for b in 0..3u64 {
        e.write(b * 8, &data(b as u32 + 1, 8), false).unwrap();
    }
    // Segment 1 is full and sealed; the sync step writes it and makes it durable.
    e.run_step(engine::Step::Sync).unwrap();
    e.write(3 * 8, &data(9, 8), false).unwrap();
    e.flush().unwrap();
    let mut d = cut(e);
    // Wreck the region of segment 1 entirely: the cache copy must be used.
    let start = entry_sector(&d.2, 4, 1, 0) as usize * SECTOR_SIZE;
    d.2.bytes_mut()[start..start + SECTOR_SIZE].fill(0);
    let (mut e, rep) = reopen(d);
    for b in 0..3u64 {
        assert_eq!(
            read(&mut e, b * 8, 8),
            data(b as u32 + 1, 8),
            "block {b}: {rep:?}"
        );
    }
    assert_eq!(
        read(&mut e, 24, 8),
        data(9, 8),
        "segment 2 rebuilt from the plog"
    );
    assert_eq!(rep.plog_segments_rebuilt, 1);
}

#[test]
fn regions_are_reused_only_after_their_segment_is_durable() {
    // Two regions: segment 3 reuses the region of segment 1.
    let mut e = fresh(2);
    for b in 0..9u64 {
        e.write(b * 8, &data(b as u32 + 1, 8), false).unwrap();
        // The invariant checker holds the rule: the newest opened segment's region was last
        // used by a segment that is durable.
        e.check_invariants().unwrap();
    }
    assert!(
        e.status().last_durable_id >= 1,
        "region reuse forced durability"
    );
    e.flush().unwrap();
    let (mut e, _) = reopen(cut(e));
    for b in 0..9u64 {
        assert_eq!(read(&mut e, b * 8, 8), data(b as u32 + 1, 8), "block {b}");
    }
}

#[test]
fn wrong_device_combinations_are_typed_errors() {
    let e = fresh(4);
    let (c, b, p) = cut(e);
    // Type 1 without its plog.
    let err = Engine::open(c.clone(), b.clone(), cfg(FormatPolicy::Never, 2)).err();
    assert_eq!(err, Some(Error::PlogMissing));
    // A plog of another format (another generation).
    let other = MemDevice::new(plog_sectors(4));
    let cache2 = MemDevice::new(SUPERBLOCK_SECTORS + (SEGMENTS << ORDER));
    let (e2, _) = Engine::open_with_plog(
        cache2,
        MemDevice::new(BACKING_BLOCKS * SECTORS_PER_BLOCK),
        Some(other),
        Config {
            generation: 99,
            ..cfg(FormatPolicy::IfBlank, 2)
        },
    )
    .unwrap();
    let (_, _, p2) = e2.into_all_devices();
    let err = Engine::open_with_plog(c.clone(), b.clone(), p2, cfg(FormatPolicy::Never, 2)).err();
    assert!(
        matches!(
            err,
            Some(Error::PlogMismatch {
                cache: 11,
                plog: 99
            })
        ),
        "{err:?}"
    );
    // A blank plog.
    let err = Engine::open_with_plog(
        c.clone(),
        b.clone(),
        Some(MemDevice::new(plog_sectors(4))),
        cfg(FormatPolicy::Never, 2),
    )
    .err();
    assert!(matches!(err, Some(Error::Corrupt { .. })), "{err:?}");
    // A resized plog.
    let mut bigger = p.bytes().to_vec();
    bigger.extend_from_slice(&[0u8; 8 * SECTOR_SIZE]);
    let err = Engine::open_with_plog(
        c.clone(),
        b.clone(),
        Some(MemDevice::from_bytes(bigger)),
        cfg(FormatPolicy::Never, 2),
    )
    .err();
    assert!(matches!(err, Some(Error::PlogResized { .. })), "{err:?}");
    // A plog too small to format.
    let cache3 = MemDevice::new(SUPERBLOCK_SECTORS + (SEGMENTS << ORDER));
    let err = Engine::open_with_plog(
        cache3,
        b.clone(),
        Some(MemDevice::new(plog_sectors(2) - 1)),
        cfg(FormatPolicy::IfBlank, 2),
    )
    .err();
    assert!(matches!(err, Some(Error::PlogGeometry(_))), "{err:?}");
    // A type-0 cache with a plog.
    let cache4 = MemDevice::new(SUPERBLOCK_SECTORS + (SEGMENTS << ORDER));
    let (e0, _) = Engine::open(cache4, b.clone(), cfg(FormatPolicy::IfBlank, 2)).unwrap();
    let (c0, b0) = e0.into_devices();
    let err = Engine::open_with_plog(c0, b0, Some(p), cfg(FormatPolicy::Never, 2)).err();
    assert_eq!(err, Some(Error::PlogUnexpected));
}

#[test]
fn format_voids_an_older_plog_even_under_the_same_generation() {
    let mut e = fresh(4);
    e.write(0, &data(1, 8), false).unwrap();
    e.flush().unwrap();
    let epoch_before = e.status().plog_epoch;
    let (c, b, p) = cut(e);
    // Format again over the same devices with the same generation: nothing old may come back.
    let (mut e, rep) = Engine::open_with_plog(c, b, Some(p), cfg(FormatPolicy::Always, 2)).unwrap();
    assert!(rep.formatted);
    assert!(e.status().plog_epoch > epoch_before);
    assert_eq!(read(&mut e, 0, 8), vec![0u8; 8 * SECTOR_SIZE]);
    let (mut e, rep) = reopen(cut(e));
    assert_eq!(rep.plog_segments_rebuilt, 0, "{rep:?}");
    assert_eq!(read(&mut e, 0, 8), vec![0u8; 8 * SECTOR_SIZE]);
}

#[test]
fn the_geometry_is_stored_not_derived_from_tunables() {
    let mut e = fresh(4);
    for b in 0..7u64 {
        e.write(b * 8, &data(b as u32 + 1, 8), false).unwrap();
    }
    e.flush().unwrap();
    let d = cut(e);
    // Reopen with another RAM buffer pool: the plog keeps its four regions.
    let (mut e, _) =
        Engine::open_with_plog(d.0, d.1, Some(d.2), cfg(FormatPolicy::Never, 5)).unwrap();
    for b in 0..7u64 {
        assert_eq!(read(&mut e, b * 8, 8), data(b as u32 + 1, 8), "block {b}");
    }
    let (_, _, p) = e.into_all_devices();
    let sb = pf::decode_superblock(&p.unwrap().bytes()[..SECTOR_SIZE]).unwrap();
    assert_eq!(sb.geometry.nr_regions, 4);
}

#[test]
fn shutdown_leaves_nothing_for_the_plog() {
    let mut e = fresh(4);
    e.write(0, &data(1, 8), true).unwrap();
    let (c, b, p) = e.shutdown_all().unwrap();
    let (mut e, rep) = reopen((c, b, p.unwrap()));
    assert_eq!(rep.plog_segments_rebuilt, 0);
    assert_eq!(read(&mut e, 0, 8), data(1, 8));
    let _ = e.cache_device().size_sectors();
}
