//! Rule R12 (docs/DESIGN.md): writeback starts a batch before the ring is full, whatever
//! `allow_writeback` says, so a client write finds its slot clean; with
//! `Config::write_back_ahead` off it starts only when a slot is needed (R9), as upstream's does.

#![allow(clippy::needless_update)]

use engine::format::{BLOCK_SIZE, SECTORS_PER_BLOCK, SUPERBLOCK_SECTORS};
use engine::{Config, FormatPolicy, MemDevice, SyncEngine, Tunables};

const ORDER: u8 = 6; // 7 blocks a segment
const NR: u64 = 16;

fn engine(ahead: bool, batch: u32) -> SyncEngine<MemDevice> {
    let mut tunables = Tunables::defaults(ORDER);
    tunables.nr_max_batched_writeback = batch;
    assert!(!tunables.allow_writeback);
    let cfg = Config {
        segment_size_order: ORDER,
        nr_rambuf_pool: 2,
        tunables: Some(tunables),
        format: FormatPolicy::IfBlank,
        write_back_ahead: ahead,
        ..Config::default()
    };
    let cache = MemDevice::new(SUPERBLOCK_SECTORS + (NR << ORDER));
    let backing = MemDevice::new(1024 * SECTORS_PER_BLOCK);
    let (e, rep) = SyncEngine::open(cache, backing, cfg).unwrap();
    assert!(rep.formatted);
    assert_eq!(e.geometry().nr_segments, NR);
    e
}

/// Writes one block into each of `n` further segments (a FLUSH seals each) and returns the
/// written-back id seen after each segment.
fn fill(e: &mut SyncEngine<MemDevice>, first: u64, n: u64) -> Vec<u64> {
    (first..first + n)
        .map(|i| {
            e.write(i * SECTORS_PER_BLOCK, &vec![i as u8; BLOCK_SIZE], false)
                .unwrap();
            e.flush().unwrap();
            e.status().last_writeback_id
        })
        .collect()
}

#[test]
fn writeback_starts_a_quarter_of_the_ring_before_need() {
    // A batch of 8 is more than a quarter of 16 slots: the watermark is 4 slots.
    let mut e = engine(true, 8);
    let seen = fill(&mut e, 0, 13);
    // Segment k opens with the write after segment k-1's FLUSH; opening 13 finds slot 13+4
    // (= slot 1) dirty and writes back a batch: segments 1..=8.
    assert_eq!(seen[..12], [0; 12], "nothing before the watermark");
    assert_eq!(seen[12], 8, "a batch when segment 13 opened");
    e.check_invariants().unwrap();
    // The ring never fills: every later opening finds its slot a batch ahead clean or starts
    // the next batch, so no write ever waits on a forced writeback of its own slot.
    let seen = fill(&mut e, 13, 40);
    assert!(seen.windows(2).all(|w| w[0] <= w[1]));
    assert!(*seen.last().unwrap() >= 53 - NR + 4 - 1, "{seen:?}");
    let st = e.status();
    assert!(
        st.last_sealed_id - st.last_writeback_id <= NR - 4 + 1,
        "{st:?}"
    );
}

#[test]
fn without_it_writeback_waits_until_a_slot_is_needed() {
    let mut e = engine(false, 8);
    let seen = fill(&mut e, 0, 16);
    assert_eq!(
        seen, [0; 16],
        "a ring of 16 dirty segments, nothing written back"
    );
    assert_eq!(e.status().nr_dirty_cache_blocks, 16);
    // Segment 17 needs slot 1: a forced batch.
    let seen = fill(&mut e, 16, 1);
    assert_eq!(seen, [8]);
    e.check_invariants().unwrap();
}

#[test]
fn a_ring_of_three_waits_for_need() {
    // A quarter of three slots is none: small rings keep upstream's schedule.
    let cache = MemDevice::new(SUPERBLOCK_SECTORS + (3 << ORDER));
    let backing = MemDevice::new(64 * SECTORS_PER_BLOCK);
    let cfg = Config {
        segment_size_order: ORDER,
        nr_rambuf_pool: 2,
        ..Config::default()
    };
    let (mut e, _) = SyncEngine::open(cache, backing, cfg).unwrap();
    let seen = fill(&mut e, 0, 3);
    assert_eq!(seen, [0; 3]);
}
