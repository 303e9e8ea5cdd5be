//! Targeted recovery tests on in-memory devices (every completed write is on the media, so
//! `into_devices` is a power cut after which exactly what the engine wrote is there).
//!
//! Covered: flushed data survives a cut; replay starts at the record and reads O(headers) plus
//! the dirty segments; a torn segment ends the walk, older data is still served and the stale
//! slots are invalidated so a reused id never brings an old segment back (H3); a previous-lap
//! segment in a slot ends the walk (H2); an empty cache replays nothing; bit rot in a cached
//! block or a segment is an error and kills the cache, it never turns into data.

// `Config` gains a `quirks` field when the `quirks` feature is on (the crash simulator turns it
// on workspace-wide); `..Config::default()` keeps these literals compiling both ways.
#![allow(clippy::needless_update)]

use engine::device::SharedMem;
use engine::format::{
    self, Geometry, BLOCK_SIZE, RECORD_SECTOR, SECTORS_PER_BLOCK, SECTOR_SIZE, SUPERBLOCK_SECTORS,
};
use engine::{
    BlockDevice, Config, DeviceRole, Error, FormatPolicy, MemDevice, RecoveryReport, Step,
    SyncEngine,
};

fn cfg(order: u8, format: FormatPolicy) -> Config {
    Config {
        segment_size_order: order,
        nr_rambuf_pool: 2,
        tunables: None,
        format,
        generation: 3,
        ..Config::default()
    }
}

/// A fresh engine at `order` with `nr` segments in front of `backing_blocks` zeroed blocks.
fn fresh(order: u8, nr: u64, backing_blocks: u64) -> SyncEngine<MemDevice> {
    let cache = MemDevice::new(SUPERBLOCK_SECTORS + (nr << order));
    let backing = MemDevice::new(backing_blocks * SECTORS_PER_BLOCK);
    let (e, rep) = SyncEngine::open(cache, backing, cfg(order, FormatPolicy::IfBlank)).unwrap();
    assert!(rep.formatted);
    e
}

/// Power cut (no further I/O), then reopen.
fn cut_and_reopen(e: SyncEngine<MemDevice>) -> (SyncEngine<MemDevice>, RecoveryReport) {
    let order = e.geometry().order;
    let (c, b) = e.into_devices();
    reopen(c, b, order)
}

fn reopen(c: MemDevice, b: MemDevice, order: u8) -> (SyncEngine<MemDevice>, RecoveryReport) {
    let (e, rep) = SyncEngine::open(c, b, cfg(order, FormatPolicy::Never)).unwrap();
    e.check_invariants().unwrap();
    assert!(!rep.formatted);
    (e, rep)
}

/// A recognisable 4 KiB block for `tag`.
fn blk(tag: u32) -> Vec<u8> {
    let mut v = vec![0u8; BLOCK_SIZE];
    for (i, w) in v.chunks_exact_mut(4).enumerate() {
        w.copy_from_slice(&(tag.wrapping_mul(0x0101_0101) ^ (i as u32)).to_le_bytes());
    }
    v
}

fn read_block<D: BlockDevice>(e: &mut SyncEngine<D>, block: u64) -> Vec<u8> {
    let mut buf = vec![0u8; BLOCK_SIZE];
    e.read(block * SECTORS_PER_BLOCK, &mut buf).unwrap();
    buf
}

fn write_block<D: BlockDevice>(e: &mut SyncEngine<D>, block: u64, tag: u32) {
    e.write(block * SECTORS_PER_BLOCK, &blk(tag), false)
        .unwrap();
}

fn zeros() -> Vec<u8> {
    vec![0u8; BLOCK_SIZE]
}

/// Byte offset of data block `pos` of segment `id` in the cache image.
fn data_byte(geo: &Geometry, id: u64, pos: usize) -> usize {
    geo.block_sector(geo.slot_of(id), pos) as usize * SECTOR_SIZE
}

/// The header block of segment `id`'s slot in the cache image.
fn header<'a>(image: &'a [u8], geo: &Geometry, id: u64) -> &'a [u8] {
    let at = geo.slot_sector(geo.slot_of(id)) as usize * SECTOR_SIZE;
    &image[at..at + BLOCK_SIZE]
}

/// The segment image (header + data) in segment `id`'s slot.
fn segment<'a>(image: &'a [u8], geo: &Geometry, id: u64) -> &'a [u8] {
    let at = geo.slot_sector(geo.slot_of(id)) as usize * SECTOR_SIZE;
    &image[at..at + geo.segment_bytes()]
}

#[test]
fn flushed_writes_survive_a_power_cut() {
    let mut e = fresh(5, 8, 64);
    // Segment 1: blocks 1, 2 (and a partial write of block 2).
    write_block(&mut e, 1, 10);
    write_block(&mut e, 2, 20);
    e.write(2 * 8 + 3, &[0xEE; 2 * SECTOR_SIZE], false).unwrap();
    e.flush().unwrap();
    // Segment 2: block 1 again (full), block 9; FUA.
    write_block(&mut e, 9, 90);
    e.write(8, &blk(11), true).unwrap();
    // Segment 3: 4 blocks in one request: a full segment (3 blocks) and the start of segment 4.
    let mut big = Vec::new();
    for t in 30..34 {
        big.extend_from_slice(&blk(t));
    }
    e.write(30 * 8, &big, false).unwrap();
    e.flush().unwrap();
    // Not flushed: still in the open RAM segment when the power goes.
    write_block(&mut e, 50, 500);
    let st = e.status();
    assert_eq!(st.last_durable_id, 4, "{st:?}");

    let (mut e, rep) = cut_and_reopen(e);
    assert_eq!(rep.record, 0);
    assert_eq!(rep.segments_applied, 4, "{rep:?}");
    assert_eq!(rep.last_applied, 4);
    assert_eq!(rep.stop_reason, None, "slot 5 is empty: {rep:?}");
    assert_eq!(rep.stale_invalidated, 0);
    // Blocks 1, 2, 9, 30..34.
    assert_eq!(rep.dirty_blocks, 7);

    assert_eq!(read_block(&mut e, 1), blk(11));
    let mut b2 = blk(20);
    b2[3 * SECTOR_SIZE..5 * SECTOR_SIZE].fill(0xEE);
    assert_eq!(read_block(&mut e, 2), b2);
    assert_eq!(read_block(&mut e, 9), blk(90));
    for (i, t) in (30..34).enumerate() {
        assert_eq!(read_block(&mut e, 30 + i as u64), blk(t));
    }
    // The unflushed write may or may not have survived; here nothing of it reached the media.
    let b50 = read_block(&mut e, 50);
    assert!(b50 == zeros() || b50 == blk(500));

    // The recovered engine keeps going: the next segment is 5.
    write_block(&mut e, 1, 12);
    e.flush().unwrap();
    assert_eq!(e.status().last_durable_id, 5);
    let (mut e, rep) = cut_and_reopen(e);
    assert_eq!(rep.segments_applied, 5);
    assert_eq!(read_block(&mut e, 1), blk(12));
    assert_eq!(read_block(&mut e, 9), blk(90));
}

#[test]
fn empty_cache_replays_nothing() {
    let nr = 6;
    let e = fresh(4, nr, 16);
    let (mut e, rep) = cut_and_reopen(e);
    assert_eq!(
        rep,
        RecoveryReport {
            formatted: false,
            upstream_image: false,
            record: 0,
            segments_applied: 0,
            last_applied: 0,
            stop_reason: None,
            stale_invalidated: 0,
            dirty_blocks: 0,
            bytes_read: 3 * SECTOR_SIZE as u64 + nr * SECTOR_SIZE as u64,
            bytes_written: 0,
            ..RecoveryReport::default()
        }
    );
    assert_eq!(read_block(&mut e, 3), zeros());
    let st = e.status();
    assert_eq!((st.current_id, st.nr_dirty_cache_blocks), (1, 0));
}

/// Writes `lens[i]` distinct blocks into segment i + 1 (one FLUSH per segment), block numbers
/// starting at `first_block`. Returns the blocks written with their tags.
fn write_segments<D: BlockDevice>(
    e: &mut SyncEngine<D>,
    first_block: u64,
    lens: &[u64],
    tag0: u32,
) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    let mut block = first_block;
    for &len in lens {
        for _ in 0..len {
            let tag = tag0 + out.len() as u32;
            write_block(e, block, tag);
            out.push((block, tag));
            block += 1;
        }
        e.flush().unwrap();
    }
    out
}

#[test]
fn replay_starts_at_the_record_and_reads_only_headers_and_dirty_segments() {
    let order = 6; // 7 blocks per segment
    let nr = 16u64;
    let header_bytes = 3 * SECTOR_SIZE as u64 + nr * SECTOR_SIZE as u64;
    let seg_bytes = |len: u64| format::segment_len_bytes(len as usize) as u64;
    let old_lens = [3u64; 10];
    let new_lens = [2u64, 5];

    // Without a record, replay reads every segment since the format.
    let mut e = fresh(order, nr, 256);
    let mut written = write_segments(&mut e, 0, &old_lens, 100);
    e.run_step(Step::Writeback).unwrap();
    assert_eq!(e.status().last_writeback_id, 10);
    written.extend(write_segments(&mut e, 100, &new_lens, 500));
    let (mut e, rep) = cut_and_reopen(e);
    assert_eq!(rep.record, 0);
    assert_eq!(rep.segments_applied, 12);
    let all: u64 = old_lens
        .iter()
        .chain(&new_lens)
        .map(|&l| seg_bytes(l))
        .sum();
    assert_eq!(rep.bytes_read, header_bytes + all, "{rep:?}");
    for &(b, t) in &written {
        assert_eq!(read_block(&mut e, b), blk(t), "block {b}");
    }

    // With the record at 10, only segments 11 and 12 are read and applied.
    let mut e = fresh(order, nr, 256);
    let mut written = write_segments(&mut e, 0, &old_lens, 100);
    e.run_step(Step::Writeback).unwrap();
    e.run_step(Step::Record).unwrap();
    assert_eq!(e.status().durable_record_id, 10);
    written.extend(write_segments(&mut e, 100, &new_lens, 500));
    let (mut e, rep) = cut_and_reopen(e);
    assert_eq!(rep.record, 10, "{rep:?}");
    assert_eq!(rep.segments_applied, 2);
    assert_eq!(rep.last_applied, 12);
    assert_eq!(rep.dirty_blocks, 7, "only the blocks of segments 11 and 12");
    let dirty: u64 = new_lens.iter().map(|&l| seg_bytes(l)).sum();
    assert_eq!(rep.bytes_read, header_bytes + dirty, "{rep:?}");
    let cache_bytes = (e.cache_device().size_sectors() as usize * SECTOR_SIZE) as u64;
    assert!(
        rep.bytes_read * 8 < cache_bytes,
        "replay read {} of {} bytes",
        rep.bytes_read,
        cache_bytes
    );
    assert_eq!(rep.stale_invalidated, 0);
    // Written-back blocks come from the backing device, the rest from the cache.
    for &(b, t) in &written {
        assert_eq!(read_block(&mut e, b), blk(t), "block {b}");
    }
    assert_eq!(e.status().last_writeback_id, 10);
    assert_eq!(e.status().nr_dirty_cache_blocks, 7);
}

#[test]
fn torn_last_segment_ends_replay_and_older_data_is_served() {
    let mut e = fresh(4, 8, 16);
    let geo = e.geometry();
    write_block(&mut e, 1, 1); // segment 1
    e.flush().unwrap();
    write_block(&mut e, 2, 2); // segment 2
    e.flush().unwrap();
    write_block(&mut e, 1, 3); // segment 3: A v2
    e.flush().unwrap();
    let (mut c, b) = e.into_devices();
    // Tear segment 3: one data byte did not make it.
    c.bytes_mut()[data_byte(&geo, 3, 0) + 1234] ^= 0x40;

    let (mut e, rep) = reopen(c, b, 4);
    assert_eq!(rep.segments_applied, 2, "{rep:?}");
    assert_eq!(rep.last_applied, 2);
    let why = rep.stop_reason.clone().unwrap_or_default();
    assert!(why.contains("checksum") && why.contains('3'), "{why}");
    assert_eq!(
        rep.stale_invalidated, 1,
        "the torn slot is invalidated: {rep:?}"
    );
    assert!(
        header(e.cache_device().bytes(), &geo, 3)
            .iter()
            .all(|&x| x == 0),
        "the torn segment's header is zeroed"
    );
    assert_eq!(read_block(&mut e, 1), blk(1), "the older copy is served");
    assert_eq!(read_block(&mut e, 2), blk(2));

    // Id 3 is reused by the next segment; everything keeps working across another cut.
    write_block(&mut e, 3, 30);
    e.flush().unwrap();
    assert_eq!(e.status().last_durable_id, 3);
    let (mut e, rep) = cut_and_reopen(e);
    assert_eq!(rep.segments_applied, 3, "{rep:?}");
    assert_eq!(rep.stop_reason, None);
    assert_eq!(read_block(&mut e, 1), blk(1));
    assert_eq!(read_block(&mut e, 2), blk(2));
    assert_eq!(read_block(&mut e, 3), blk(30));
}

/// H3: segments k and k+1 on disk, k torn. Replay stops at k; k+1 must be invalidated, or it
/// comes back once a new segment k is written and the walk reaches k+1 again.
#[test]
fn stale_segment_after_a_torn_one_is_never_resurrected() {
    let mut e = fresh(4, 8, 16);
    let geo = e.geometry();
    let (a, b, d) = (1u64, 2u64, 4u64);
    write_block(&mut e, a, 1); // segment 1: A v1
    e.flush().unwrap();
    write_block(&mut e, b, 2); // segment 2 (k): B v1
    e.flush().unwrap();
    write_block(&mut e, a, 3); // segment 3 (k+1): A v2
    e.flush().unwrap();
    let (mut c, bk) = e.into_devices();
    c.bytes_mut()[data_byte(&geo, 2, 0) + 7] ^= 0x01;
    // Segment 3 is intact: without the invalidation it would pass every check on its own.
    assert!(format::segment_checksum_ok(segment(c.bytes(), &geo, 3)));

    let (mut e, rep) = reopen(c, bk, 4);
    assert_eq!(rep.segments_applied, 1, "{rep:?}");
    assert!(rep
        .stop_reason
        .as_deref()
        .is_some_and(|r| r.contains("checksum")));
    assert_eq!(rep.stale_invalidated, 2, "slots of 2 and 3: {rep:?}");
    for id in [2, 3] {
        assert!(
            header(e.cache_device().bytes(), &geo, id)
                .iter()
                .all(|&x| x == 0),
            "slot of segment {id} invalidated"
        );
    }
    assert_eq!(read_block(&mut e, a), blk(1));
    assert_eq!(read_block(&mut e, b), zeros());

    // New data reuses id 2; nothing else is touched.
    write_block(&mut e, d, 4);
    e.flush().unwrap();
    assert_eq!(e.status().last_durable_id, 2);
    let (mut e, rep) = cut_and_reopen(e);
    assert_eq!(
        rep.segments_applied, 2,
        "old segment 3 must not be applied: {rep:?}"
    );
    assert_eq!(rep.last_applied, 2);
    assert_eq!(
        read_block(&mut e, a),
        blk(1),
        "A v2 (old segment 3) resurrected"
    );
    assert_eq!(read_block(&mut e, b), zeros());
    assert_eq!(read_block(&mut e, d), blk(4));
}

/// H2: a slot whose newest write was lost still holds a valid segment of the previous lap. It
/// must end the walk, not be applied after newer segments.
#[test]
fn previous_lap_segment_ends_the_walk() {
    let nr = 4;
    let mut e = fresh(4, nr, 16);
    let geo = e.geometry();
    let (x, y, z) = (1u64, 2u64, 3u64);
    // Lap 1: segments 1..=4, segment 2 writes X v1. All written back and recorded.
    write_block(&mut e, 5, 50);
    e.flush().unwrap();
    write_block(&mut e, x, 1);
    e.flush().unwrap();
    write_block(&mut e, 6, 60);
    e.flush().unwrap();
    write_block(&mut e, 7, 70);
    e.flush().unwrap();
    e.run_step(Step::Writeback).unwrap();
    e.run_step(Step::Record).unwrap();
    assert_eq!(e.status().durable_record_id, 4);
    let lap1 = e.cache_device().bytes().to_vec();
    // Lap 2: segment 5 (slot 0) X v3, segment 6 (slot 1) Y, segment 7 (slot 2) Z.
    write_block(&mut e, x, 3);
    e.flush().unwrap();
    write_block(&mut e, y, 8);
    e.flush().unwrap();
    write_block(&mut e, z, 9);
    e.flush().unwrap();
    let (mut c, b) = e.into_devices();
    // Segment 6's write was lost: slot 1 still holds segment 2 (valid, previous lap).
    let slot1 = geo.slot_sector(geo.slot_of(6)) as usize * SECTOR_SIZE;
    let len = geo.segment_bytes();
    c.bytes_mut()[slot1..slot1 + len].copy_from_slice(&lap1[slot1..slot1 + len]);
    assert!(format::segment_checksum_ok(segment(c.bytes(), &geo, 2)));

    let (mut e, rep) = reopen(c, b, 4);
    assert_eq!(rep.record, 4);
    assert_eq!(rep.segments_applied, 1, "{rep:?}");
    assert_eq!(rep.last_applied, 5);
    let why = rep.stop_reason.clone().unwrap_or_default();
    assert!(why.contains("id 2") && why.contains('6'), "{why}");
    assert_eq!(
        rep.stale_invalidated, 1,
        "segment 7 is past the end: {rep:?}"
    );
    assert_eq!(
        read_block(&mut e, x),
        blk(3),
        "segment 2 applied after segment 5"
    );
    assert_eq!(read_block(&mut e, y), zeros());
    assert_eq!(read_block(&mut e, z), zeros());
    assert_eq!(read_block(&mut e, 5), blk(50));
}

#[test]
fn record_is_written_to_sector_2047() {
    let mut e = fresh(4, 4, 16);
    write_block(&mut e, 1, 1);
    e.flush().unwrap();
    e.run_step(Step::Writeback).unwrap();
    e.run_step(Step::Record).unwrap();
    let (c, _) = e.into_devices();
    let at = RECORD_SECTOR as usize * SECTOR_SIZE;
    assert_eq!(format::decode_record(&c.bytes()[at..at + SECTOR_SIZE]), 1);
}

// ----- bit rot -----

/// An engine on devices whose storage the test can reach while the engine runs.
fn shared_engine(
    order: u8,
    nr: u64,
    backing_blocks: u64,
) -> (SyncEngine<SharedMem>, SharedMem, SharedMem) {
    let cache = SharedMem::mem(SUPERBLOCK_SECTORS + (nr << order));
    let backing = SharedMem::mem(backing_blocks * SECTORS_PER_BLOCK);
    let (e, _) = SyncEngine::open(
        cache.clone(),
        backing.clone(),
        cfg(order, FormatPolicy::IfBlank),
    )
    .unwrap();
    (e, cache, backing)
}

#[test]
fn bit_rot_in_a_cached_block_is_an_error_and_kills_the_cache() {
    let (mut e, cache, _) = shared_engine(5, 4, 16);
    let geo = e.geometry();
    write_block(&mut e, 0, 1); // segment 1, position 0
    write_block(&mut e, 5, 2); // segment 1, position 1
    e.flush().unwrap();
    let rot = geo.block_sector(geo.slot_of(1), 1);
    cache.borrow_mut().bytes_mut()[rot as usize * SECTOR_SIZE + 100] ^= 0x08;

    // The intact block still reads.
    assert_eq!(read_block(&mut e, 0), blk(1));
    // The rotted one is an error, never data.
    let mut buf = vec![0u8; BLOCK_SIZE];
    match e.read(5 * SECTORS_PER_BLOCK, &mut buf) {
        Err(Error::Corrupt {
            role: DeviceRole::Cache,
            sector,
            what,
        }) => {
            assert_eq!(sector, rot);
            assert!(what.contains("CRC"), "{what}");
        }
        other => panic!("read of a rotted block: {other:?}"),
    }
    let dead = e.status().dead.expect("the cache is dead");
    assert!(dead.contains(&rot.to_string()), "{dead}");
    assert!(e.is_dead());
    assert_eq!(e.next_step(), None, "a dead cache schedules nothing");

    // Everything afterwards fails rather than returning data.
    for block in [5u64, 0, 9] {
        let mut buf = vec![0u8; BLOCK_SIZE];
        assert!(
            matches!(
                e.read(block * SECTORS_PER_BLOCK, &mut buf),
                Err(Error::Dead { .. })
            ),
            "block {block}"
        );
        assert!(buf.iter().all(|&x| x == 0), "no bytes handed out");
    }
    assert!(matches!(
        e.write(0, &blk(3), false),
        Err(Error::Dead { .. })
    ));
    assert!(matches!(e.flush(), Err(Error::Dead { .. })));
    assert!(matches!(
        e.run_step(Step::Writeback),
        Err(Error::Dead { .. })
    ));
    let err = e.discard(0, 8).unwrap_err();
    assert!(matches!(err, Error::Dead { .. }));
    assert!(err.to_string().contains("CRC"), "the cause is kept: {err}");
    assert!(e.shutdown().is_err());
}

#[test]
fn partial_overwrite_of_a_rotted_block_fails_instead_of_carrying_garbage() {
    let (mut e, cache, _) = shared_engine(5, 4, 16);
    let geo = e.geometry();
    write_block(&mut e, 2, 1);
    e.flush().unwrap();
    let rot = geo.block_sector(geo.slot_of(1), 0);
    cache.borrow_mut().bytes_mut()[rot as usize * SECTOR_SIZE + 3000] ^= 0x80;
    // A one-sector write must merge the old dirty sectors, which fail their CRC.
    let err = e.write(2 * SECTORS_PER_BLOCK, &[7u8; SECTOR_SIZE], false);
    assert!(
        matches!(err, Err(Error::Corrupt { sector, .. }) if sector == rot),
        "{err:?}"
    );
    assert!(e.is_dead());
}

#[test]
fn bit_rot_before_writeback_never_reaches_the_backing_device() {
    let (mut e, cache, backing) = shared_engine(5, 4, 16);
    let geo = e.geometry();
    write_block(&mut e, 3, 1);
    write_block(&mut e, 4, 2);
    e.flush().unwrap();
    let rot = geo.block_sector(geo.slot_of(1), 1);
    cache.borrow_mut().bytes_mut()[rot as usize * SECTOR_SIZE] ^= 0x01;
    let err = e.run_step(Step::Writeback).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Corrupt {
                role: DeviceRole::Cache,
                ..
            }
        ),
        "{err}"
    );
    assert!(e.is_dead());
    assert!(
        backing.borrow().bytes().iter().all(|&x| x == 0),
        "nothing of the rotted segment was written back"
    );
    assert_eq!(e.status().last_writeback_id, 0);
}

// ----- writeback must not let the record pass the only durable copy of a block -----

/// Block X is flushed in segment 1, then overwritten (not flushed): its newest copy is in RAM.
/// Writing back segment 1 finds no live block there. If the record then passes segment 1 while
/// the newer copy is not durable, a power cut loses X's flushed data: replay starts after the
/// record, and the backing device never got X.
#[test]
fn writeback_of_a_superseded_block_keeps_its_flushed_data_across_a_cut() {
    for order in [4u8, 10] {
        let mut e = fresh(order, 4, 16);
        write_block(&mut e, 0, 1);
        e.flush().unwrap();
        write_block(&mut e, 0, 2); // not flushed; a whole-block overwrite
        e.run_step(Step::Writeback).unwrap();
        e.run_step(Step::Record).unwrap();
        let (mut e, rep) = cut_and_reopen(e);
        let got = read_block(&mut e, 0);
        assert!(
            got == blk(1) || got == blk(2),
            "order {order}: block 0 lost its flushed data ({})",
            if got == zeros() {
                "reads the backing device's old zeros"
            } else {
                "garbage"
            },
        );
        assert!(rep.stop_reason.is_none(), "{rep:?}");
    }
}

/// The same through forced writeback alone: only client writes, FLUSHes and a power cut.
#[test]
fn forced_writeback_keeps_flushed_data_of_an_overwritten_block() {
    // Order 4: one block per segment, 2 slots, 4 RAM buffers.
    let cache = MemDevice::new(SUPERBLOCK_SECTORS + 2 * 16);
    let backing = MemDevice::new(16 * SECTORS_PER_BLOCK);
    let mut c = cfg(4, FormatPolicy::IfBlank);
    c.nr_rambuf_pool = 4;
    let (mut e, _) = SyncEngine::open(cache, backing, c).unwrap();
    // One segment per writeback batch (with a bigger batch the forced writeback would take
    // segment 2 along and make it durable).
    e.message("nr_max_batched_writeback 1").unwrap();
    write_block(&mut e, 0, 1); // segment 1, X v1
    e.flush().unwrap(); //       durable
    write_block(&mut e, 0, 2); // segment 2 (sealed, in RAM), X v2
    write_block(&mut e, 5, 3); // segment 3 needs slot 0: forced writeback of 1, record 1
    let (mut e, rep) = cut_and_reopen(e);
    let got = read_block(&mut e, 0);
    assert!(
        got == blk(1) || got == blk(2),
        "X lost its flushed value after a cut (record {}, applied {})",
        rep.record,
        rep.segments_applied
    );
}
