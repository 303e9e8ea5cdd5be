//! Type 1 (plog) on in-memory devices: every completed write is on the media, so
//! `into_all_devices` is a power cut that loses exactly the RAM buffers.
//!
//! Covered: a FLUSH makes the plog durable and writes no segment; data in RAM buffers comes back
//! from the plog after a cut; a recovery run twice gives the same device; an entry torn in the
//! middle of a region ends the replay there and nothing after it is applied; a valid cache
//! segment is kept over its region (H8); wrong device combinations are typed errors; format
//! voids an older plog even under the same generation (H10); the geometry is stored (H9).
//! Write-gathering: the entries between two FLUSHes go out as one plog write (counted on a
//! device with a volatile cache), the stage is written when full and when the region changes,
//! and a power cut before a FLUSH loses only the stage, never flushed data.

#![allow(clippy::needless_update)]

use engine::device::{Counts, Observed, VolatileMem};
use engine::format::plog::{self as pf, PLOG_FIRST_REGION_SECTOR};
use engine::format::{SECTORS_PER_BLOCK, SECTOR_SIZE, SUPERBLOCK_SECTORS};
use engine::{BlockDevice, Config, Error, FormatPolicy, MemDevice, RecoveryReport, SyncEngine};

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

fn fresh(regions: u64) -> SyncEngine<MemDevice> {
    let cache = MemDevice::new(SUPERBLOCK_SECTORS + (SEGMENTS << ORDER));
    let backing = MemDevice::new(BACKING_BLOCKS * SECTORS_PER_BLOCK);
    let plog = MemDevice::new(plog_sectors(regions));
    let (e, rep) =
        SyncEngine::open_with_plog(cache, backing, Some(plog), cfg(FormatPolicy::IfBlank, 2))
            .unwrap();
    assert!(rep.formatted);
    assert_eq!(e.cache_type(), 1);
    e
}

type Devs = (MemDevice, MemDevice, MemDevice);

fn cut(e: SyncEngine<MemDevice>) -> Devs {
    let (c, b, p) = e.into_all_devices();
    (c, b, p.expect("type 1 keeps its plog"))
}

fn reopen(d: Devs) -> (SyncEngine<MemDevice>, RecoveryReport) {
    let (e, rep) =
        SyncEngine::open_with_plog(d.0, d.1, Some(d.2), cfg(FormatPolicy::Never, 2)).unwrap();
    e.check_invariants().unwrap();
    (e, rep)
}

fn data(tag: u32, sectors: usize) -> Vec<u8> {
    (0..sectors * SECTOR_SIZE)
        .map(|i| (tag as usize * 31 + i * 7 + i / 512) as u8)
        .collect()
}

fn read(e: &mut SyncEngine<MemDevice>, sector: u64, sectors: usize) -> Vec<u8> {
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
    let err = SyncEngine::open(c.clone(), b.clone(), cfg(FormatPolicy::Never, 2)).err();
    assert_eq!(err, Some(Error::PlogMissing));
    // A plog of another format (another generation).
    let other = MemDevice::new(plog_sectors(4));
    let cache2 = MemDevice::new(SUPERBLOCK_SECTORS + (SEGMENTS << ORDER));
    let (e2, _) = SyncEngine::open_with_plog(
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
    let err =
        SyncEngine::open_with_plog(c.clone(), b.clone(), p2, cfg(FormatPolicy::Never, 2)).err();
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
    let err = SyncEngine::open_with_plog(
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
    let err = SyncEngine::open_with_plog(
        c.clone(),
        b.clone(),
        Some(MemDevice::from_bytes(bigger)),
        cfg(FormatPolicy::Never, 2),
    )
    .err();
    assert!(matches!(err, Some(Error::PlogResized { .. })), "{err:?}");
    // A plog too small to format.
    let cache3 = MemDevice::new(SUPERBLOCK_SECTORS + (SEGMENTS << ORDER));
    let err = SyncEngine::open_with_plog(
        cache3,
        b.clone(),
        Some(MemDevice::new(plog_sectors(2) - 1)),
        cfg(FormatPolicy::IfBlank, 2),
    )
    .err();
    assert!(matches!(err, Some(Error::PlogGeometry(_))), "{err:?}");
    // A type-0 cache with a plog.
    let cache4 = MemDevice::new(SUPERBLOCK_SECTORS + (SEGMENTS << ORDER));
    let (e0, _) = SyncEngine::open(cache4, b.clone(), cfg(FormatPolicy::IfBlank, 2)).unwrap();
    let (c0, b0) = e0.into_devices();
    let err = SyncEngine::open_with_plog(c0, b0, Some(p), cfg(FormatPolicy::Never, 2)).err();
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
    let (mut e, rep) =
        SyncEngine::open_with_plog(c, b, Some(p), cfg(FormatPolicy::Always, 2)).unwrap();
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
        SyncEngine::open_with_plog(d.0, d.1, Some(d.2), cfg(FormatPolicy::Never, 5)).unwrap();
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

// ----- write-gathering: the plog stage -----

/// A device with a volatile write cache that counts its writes and flushes: reads see every
/// completed write, a crash (`into_inner().crash()`) keeps only what a flush (or FUA) made
/// durable.
type Volatile = Observed<VolatileMem>;

fn volatile(sectors: u64) -> Volatile {
    Observed::new(VolatileMem::new(sectors))
}

/// Order 9: 63 blocks per segment, a region of 2 · 9 · 63 = 1134 sectors.
const G_ORDER: u8 = 9;
/// The stage bound (`PLOG_STAGE_BYTES` in engine/src/plog.rs): 128 KiB, 28 full-block entries
/// of 9 sectors (4.5 KiB) each.
const STAGE_FULL_BLOCK_ENTRIES: u64 = (128 * 1024) / (9 * 512);

fn g_cfg(format: FormatPolicy) -> Config {
    Config {
        segment_size_order: G_ORDER,
        nr_rambuf_pool: 2,
        tunables: None,
        format,
        generation: 12,
        ..Config::default()
    }
}

/// A fresh type-1 engine on volatile devices, and the plog's counts once formatted.
fn g_fresh() -> (SyncEngine<Volatile>, Counts) {
    let cache = volatile(SUPERBLOCK_SECTORS + (6 << G_ORDER));
    let backing = volatile(256 * SECTORS_PER_BLOCK);
    let plog = volatile(PLOG_FIRST_REGION_SECTOR + 4 * pf::region_sectors_for(63) as u64);
    let (e, rep) =
        SyncEngine::open_with_plog(cache, backing, Some(plog), g_cfg(FormatPolicy::IfBlank))
            .unwrap();
    assert!(rep.formatted);
    // Formatting wrote and flushed; count from here.
    let base = e.plog_device().unwrap().counts();
    (e, base)
}

/// The plog's (writes, flushes) since `base`.
fn plog_io(e: &SyncEngine<Volatile>, base: Counts) -> (u64, u64) {
    let c = e.plog_device().unwrap().counts() - base;
    (c.write_ops, c.flushes)
}

/// A power cut on volatile devices (only flushed writes survive), then recovery.
fn g_crash_and_reopen(e: SyncEngine<Volatile>) -> (SyncEngine<MemDevice>, RecoveryReport) {
    let (c, b, p) = e.into_all_devices();
    let (e, rep) = SyncEngine::open_with_plog(
        c.into_inner().crash(),
        b.into_inner().crash(),
        Some(p.unwrap().into_inner().crash()),
        g_cfg(FormatPolicy::Never),
    )
    .unwrap();
    e.check_invariants().unwrap();
    (e, rep)
}

fn g_read(e: &mut SyncEngine<impl BlockDevice>, block: u64) -> Vec<u8> {
    let mut out = vec![0u8; 8 * SECTOR_SIZE];
    e.read(block * 8, &mut out).unwrap();
    out
}

#[test]
fn writes_between_flushes_go_to_the_plog_as_one_write() {
    let (mut e, base) = g_fresh();
    for b in 0..16u64 {
        e.write(b * 8, &data(b as u32 + 1, 8), false).unwrap();
        e.check_invariants().unwrap();
    }
    assert_eq!(plog_io(&e, base), (0, 0), "16 entries wait in the stage");
    e.flush().unwrap();
    assert_eq!(
        plog_io(&e, base),
        (1, 1),
        "one gathered plog write, then one flush"
    );
    let st = e.status();
    assert_eq!(st.plog_entries, 16, "plog_entries still counts entries");
    assert_eq!(st.plog_flushes, 1);
    assert_eq!(st.last_sealed_id, 0, "no segment sealed for the FLUSH");
    // Nothing new: a FLUSH costs nothing.
    e.flush().unwrap();
    assert_eq!(plog_io(&e, base), (1, 1));
    // A FUA write after two plain ones: the three entries go out as one write, then a flush.
    e.write(16 * 8, &data(17, 8), false).unwrap();
    e.write(17 * 8, &data(18, 8), false).unwrap();
    e.write(18 * 8, &data(19, 8), true).unwrap();
    assert_eq!(plog_io(&e, base), (2, 2));

    // Unflushed writes, some over flushed blocks, then a power cut that loses everything the
    // devices did not flush: the flushed data is all there.
    for b in [0u64, 1, 2, 40, 41] {
        e.write(b * 8, &data(100 + b as u32, 8), false).unwrap();
    }
    assert_eq!(
        plog_io(&e, base),
        (2, 2),
        "the unflushed entries are only staged"
    );
    let (mut e, rep) = g_crash_and_reopen(e);
    assert_eq!(rep.plog_entries_replayed, 19, "{rep:?}");
    for b in 0..19u64 {
        let got = g_read(&mut e, b);
        let newer = [0, 1, 2].contains(&b) && got == data(100 + b as u32, 8);
        assert!(
            got == data(b as u32 + 1, 8) || newer,
            "block {b}: flushed data lost"
        );
    }
    for b in [40u64, 41] {
        let got = g_read(&mut e, b);
        assert!(
            got == vec![0u8; 8 * SECTOR_SIZE] || got == data(100 + b as u32, 8),
            "block {b}: never written data or garbage"
        );
    }
}

#[test]
fn the_stage_is_written_when_full_and_when_the_region_changes() {
    let (mut e, base) = g_fresh();
    let full = STAGE_FULL_BLOCK_ENTRIES;
    for b in 0..full {
        e.write(b * 8, &data(b as u32 + 1, 8), false).unwrap();
    }
    assert_eq!(
        plog_io(&e, base),
        (0, 0),
        "{full} full-block entries fit the stage"
    );
    e.write(full * 8, &data(full as u32 + 1, 8), false).unwrap();
    assert_eq!(
        plog_io(&e, base),
        (1, 0),
        "the next one does not: the stage went out first"
    );
    // Segment 1 holds 63 blocks: the 64th write opens segment 2 in the next region, and the
    // rest of region 1 goes out before any entry of region 2 (one more stage-full write on the
    // way: entries 28..56, then 56..63 at the region change).
    for b in full + 1..70 {
        e.write(b * 8, &data(b as u32 + 1, 8), false).unwrap();
        e.check_invariants().unwrap();
    }
    assert_eq!(e.status().last_sealed_id, 1);
    assert_eq!(plog_io(&e, base), (3, 0));
    e.flush().unwrap();
    assert_eq!(plog_io(&e, base), (4, 1));
    let (mut e, rep) = g_crash_and_reopen(e);
    assert_eq!(rep.plog_segments_rebuilt, 2, "{rep:?}");
    for b in 0..70u64 {
        assert_eq!(g_read(&mut e, b), data(b as u32 + 1, 8), "block {b}");
    }
}

#[test]
fn a_cut_loses_only_the_stage_of_the_newest_region() {
    // Segment 1 is full and its region written (the region change); segment 2's entries are
    // staged. No FLUSH at all: a power cut on media that kept every completed write keeps
    // segment 1 whole and the stage of segment 2 is gone, a prefix of the writes.
    let mut e = fresh(4);
    for b in 0..4u64 {
        e.write(b * 8, &data(b as u32 + 1, 8), false).unwrap();
    }
    let before: Vec<Vec<u8>> = (0..4).map(|b| read(&mut e, b * 8, 8)).collect();
    let (mut e, rep) = reopen(cut(e));
    assert_eq!(rep.last_applied, 1, "{rep:?}");
    for b in 0..3u64 {
        assert_eq!(read(&mut e, b * 8, 8), before[b as usize], "block {b}");
    }
    assert_eq!(
        read(&mut e, 24, 8),
        vec![0u8; 8 * SECTOR_SIZE],
        "block 3 was staged only"
    );
}
