//! Clean copies (docs/DESIGN.md, rule R17): a block written back stays readable from its
//! logged copy until its slot takes a new segment, and no write leaves it behind.

use engine::format::{BLOCK_SIZE, SECTORS_PER_BLOCK};
use engine::SyncEngine;

const ORDER: u8 = 6; // 7 blocks a segment
const NR: u64 = 4;
const BLOCKS: u64 = 256;

#[path = "support/small.rs"]
mod small;
use small::{block_data as data, Dev};

fn engine(cutoff: u64) -> SyncEngine<Dev> {
    small::small_engine(ORDER, NR, BLOCKS, cutoff)
}

fn read(e: &mut SyncEngine<Dev>, block: u64, blocks: u64) -> Vec<u8> {
    let mut buf = vec![0u8; blocks as usize * BLOCK_SIZE];
    e.read(block * SECTORS_PER_BLOCK, &mut buf).unwrap();
    buf
}

/// Backing and cache device reads a read of `blocks` from `block` takes.
fn reads_of(e: &mut SyncEngine<Dev>, block: u64, blocks: u64, want: &[u8]) -> (u64, u64) {
    let (b0, c0) = (
        e.backing_device().counts().read_ops,
        e.cache_device().counts().read_ops,
    );
    assert_eq!(read(e, block, blocks), want);
    (
        e.backing_device().counts().read_ops - b0,
        e.cache_device().counts().read_ops - c0,
    )
}

#[test]
fn a_written_back_block_is_read_from_its_logged_copy() {
    let mut e = engine(0);
    e.write(0, &data(1, 3), false).unwrap();
    e.drain().unwrap();
    assert_eq!(e.status().nr_dirty_cache_blocks, 0);
    let (backing, cache) = reads_of(&mut e, 0, 3, &data(1, 3));
    assert_eq!(
        (backing, cache),
        (0, 3),
        "three hits on the cache device, no miss"
    );
    e.check_invariants().unwrap();
}

#[test]
fn a_reused_slot_takes_its_clean_copies_with_it() {
    let mut e = engine(0);
    e.write(0, &data(1, 7), false).unwrap();
    e.drain().unwrap();
    assert_eq!(reads_of(&mut e, 0, 1, &data(1, 1)), (0, 1));
    // A lap of the ring through other blocks reuses the slot of blocks 0..7.
    for lap in 0..NR {
        let block = 16 + lap * 7;
        e.write(block * SECTORS_PER_BLOCK, &data(2, 7), false)
            .unwrap();
        e.drain().unwrap();
    }
    assert_eq!(
        reads_of(&mut e, 0, 1, &data(1, 1)),
        (1, 0),
        "the slot was reused: a miss, read from the backing device"
    );
    e.check_invariants().unwrap();
}

#[test]
fn no_write_leaves_a_clean_copy_behind() {
    // A stream past the cutoff bypasses the cache: the clean copy must not answer after it.
    let mut e = engine(8 * 1024);
    // Block 1, then block 0: no stream, both logged.
    e.write(SECTORS_PER_BLOCK, &data(1, 2)[BLOCK_SIZE..], false)
        .unwrap();
    e.write(0, &data(1, 2)[..BLOCK_SIZE], false).unwrap();
    assert_eq!(e.status().bypassed_writes, 0);
    e.drain().unwrap();
    assert_eq!(reads_of(&mut e, 0, 2, &data(1, 2)), (0, 2));
    e.write(0, &data(3, 1), false).unwrap();
    e.write(SECTORS_PER_BLOCK, &data(4, 1), false).unwrap();
    assert!(
        e.status().bypassed_writes >= 1,
        "the second write is bypassed"
    );
    let mut want = data(3, 1);
    want.extend(data(4, 1));
    assert_eq!(read(&mut e, 0, 2), want);
    // So do write-zeroes and discards.
    e.drain().unwrap();
    e.write_zeroes(0, SECTORS_PER_BLOCK, false).unwrap();
    e.discard(SECTORS_PER_BLOCK, SECTORS_PER_BLOCK).unwrap();
    assert_eq!(read(&mut e, 0, 2), vec![0u8; 2 * BLOCK_SIZE]);
    e.check_invariants().unwrap();
}
