//! Sequential bypass (docs/DESIGN.md, "Sequential bypass"): a stream of writes past
//! `sequential_cutoff` goes straight to the backing device, unless a block of it has a copy the
//! cache could still read or write back (dirty in the index, or in a segment past the durable
//! record); a FLUSH then flushes the backing device too.

use engine::format::{BLOCK_SIZE, SECTORS_PER_BLOCK};
use engine::{Step, SyncEngine, Tunables};

const ORDER: u8 = 6; // 7 blocks a segment
const NR: u64 = 8;
const BLOCKS: u64 = 256;

#[path = "support/small.rs"]
mod small;
use small::{block_data, Dev};

fn engine(cutoff: u64) -> SyncEngine<Dev> {
    small::small_engine(ORDER, NR, BLOCKS, cutoff)
}

fn backing_bytes(e: &SyncEngine<Dev>, block: u64, blocks: u64) -> Vec<u8> {
    let start = block as usize * BLOCK_SIZE;
    e.backing_device().inner().bytes()[start..start + blocks as usize * BLOCK_SIZE].to_vec()
}

fn read(e: &mut SyncEngine<Dev>, block: u64, blocks: u64) -> Vec<u8> {
    let mut buf = vec![0u8; blocks as usize * BLOCK_SIZE];
    e.read(block * SECTORS_PER_BLOCK, &mut buf).unwrap();
    buf
}

#[test]
fn a_stream_past_the_cutoff_goes_to_the_backing_device_and_a_flush_makes_it_durable() {
    let mut e = engine(32 * 1024);
    // 16 KiB at a time: the stream reaches the 32 KiB cutoff with the second write.
    for i in 0..8u64 {
        e.write(i * 4 * SECTORS_PER_BLOCK, &block_data(i as u8, 4), false)
            .unwrap();
    }
    let st = e.status();
    assert_eq!(
        st.bypassed_writes, 7,
        "every write from the one reaching 32 KiB"
    );
    assert_eq!(
        st.nr_dirty_cache_blocks, 4,
        "only the first write is cached"
    );
    for i in 1..8u64 {
        assert_eq!(backing_bytes(&e, i * 4, 4), block_data(i as u8, 4));
    }
    let flushes = e.backing_device().counts().flushes;
    e.flush().unwrap();
    assert!(
        e.backing_device().counts().flushes > flushes,
        "a FLUSH after bypassed writes flushes the backing device"
    );
    for i in 0..8u64 {
        assert_eq!(read(&mut e, i * 4, 4), block_data(i as u8, 4));
    }
    e.check_invariants().unwrap();
}

#[test]
fn a_cutoff_of_zero_turns_bypass_off() {
    let mut e = engine(0);
    for i in 0..8u64 {
        e.write(i * 4 * SECTORS_PER_BLOCK, &block_data(1, 4), false)
            .unwrap();
    }
    assert_eq!(e.status().bypassed_writes, 0);
    assert_eq!(e.status().nr_dirty_cache_blocks, 32);
}

#[test]
fn a_stream_over_a_dirty_cached_block_goes_through_the_log() {
    let mut e = engine(8 * 1024);
    e.write(SECTORS_PER_BLOCK, &block_data(9, 1), false)
        .unwrap();
    // Blocks 0-1: block 1 is dirty in the cache, so the whole write is logged.
    e.write(0, &block_data(2, 2), false).unwrap();
    assert_eq!(e.status().bypassed_writes, 0);
    assert_eq!(read(&mut e, 0, 2), block_data(2, 2));
    assert_ne!(backing_bytes(&e, 1, 1), block_data(2, 2)[BLOCK_SIZE..]);
    // The stream goes on past the cached block: those writes are bypassed.
    e.write(2 * SECTORS_PER_BLOCK, &block_data(3, 2), false)
        .unwrap();
    assert_eq!(e.status().bypassed_writes, 1);
    assert_eq!(backing_bytes(&e, 2, 2), block_data(3, 2));
}

#[test]
fn a_block_written_back_but_not_recorded_is_not_bypassed_until_the_record_covers_it() {
    let mut e = engine(8 * 1024);
    e.write(0, &block_data(1, 1), false).unwrap();
    e.flush().unwrap();
    e.run_step(Step::Writeback).unwrap();
    let st = e.status();
    assert_eq!(st.nr_dirty_cache_blocks, 0, "written back");
    assert!(st.durable_record_id < st.last_writeback_id, "{st:?}");
    // Its segment is past the record: recovery would replay the old copy over a bypass.
    e.write(0, &block_data(2, 2), false).unwrap();
    assert_eq!(e.status().bypassed_writes, 0);
    e.flush().unwrap();
    e.run_step(Step::Writeback).unwrap();
    e.run_step(Step::Record).unwrap();
    let st = e.status();
    assert_eq!(st.durable_record_id, st.last_writeback_id, "{st:?}");
    // Recorded: now the same stream is bypassed.
    e.write(0, &block_data(3, 2), false).unwrap();
    assert_eq!(e.status().bypassed_writes, 1);
    assert_eq!(backing_bytes(&e, 0, 2), block_data(3, 2));
    assert_eq!(read(&mut e, 0, 2), block_data(3, 2));
}

#[test]
fn a_fua_bypassed_write_is_answered_after_a_backing_flush() {
    let mut e = engine(4096);
    let before = e.backing_device().counts();
    e.write(8 * SECTORS_PER_BLOCK, &block_data(5, 1), true)
        .unwrap();
    let d = e.backing_device().counts() - before;
    assert_eq!(e.status().bypassed_writes, 1);
    assert_eq!(d.write_ops, 1);
    assert!(d.flushes >= 1, "{d:?}");
}

#[test]
fn the_cutoff_is_a_tunable_with_a_range() {
    let mut e = engine(0);
    e.engine_mut().message("sequential_cutoff 8192").unwrap();
    assert_eq!(e.engine().tunables().sequential_cutoff, 8192);
    let err = e
        .engine_mut()
        .message("sequential-cutoff 2000000000")
        .unwrap_err();
    assert!(err.to_string().contains("sequential_cutoff"), "{err}");
    assert_eq!(e.engine().tunables().sequential_cutoff, 8192, "unchanged");
    assert_eq!(
        Tunables::defaults(10).sequential_cutoff,
        4 << 20,
        "bcache's default"
    );
}

#[test]
fn a_drain_and_a_shutdown_leave_bypassed_writes_durable() {
    let mut e = engine(4096);
    e.write(0, &block_data(7, 1), false).unwrap();
    assert_eq!(e.status().bypassed_writes, 1);
    let flushes = e.backing_device().counts().flushes;
    e.drain().unwrap();
    assert!(e.backing_device().counts().flushes > flushes);
    e.write(SECTORS_PER_BLOCK, &block_data(8, 1), false)
        .unwrap();
    let flushes = e.backing_device().counts().flushes;
    let (_, backing) = e.shutdown().unwrap();
    assert!(backing.counts().flushes > flushes, "shutdown flushed it");
}
