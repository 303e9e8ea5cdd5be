//! A small engine on observed in-memory devices, for tests that count device operations
//! (included by path).

use engine::device::Observed;
use engine::format::{BLOCK_SIZE, SECTORS_PER_BLOCK, SUPERBLOCK_SECTORS};
use engine::{Config, FormatPolicy, MemDevice, SyncEngine, Tunables};

pub type Dev = Observed<MemDevice>;

/// An engine of `nr` segments of order `order` in front of `blocks` backing blocks, with
/// sequential bypass at `cutoff` bytes (0: off).
pub fn small_engine(order: u8, nr: u64, blocks: u64, cutoff: u64) -> SyncEngine<Dev> {
    let mut tunables = Tunables::defaults(order);
    tunables.sequential_cutoff = cutoff;
    let cfg = Config {
        segment_size_order: order,
        nr_rambuf_pool: 2,
        tunables: Some(tunables),
        format: FormatPolicy::IfBlank,
        ..Config::default()
    };
    let cache = Observed::new(MemDevice::new(SUPERBLOCK_SECTORS + (nr << order)));
    let backing = Observed::new(MemDevice::new(blocks * SECTORS_PER_BLOCK));
    SyncEngine::open(cache, backing, cfg).unwrap().0
}

/// `blocks` blocks of data that differ per `tag` and per sector.
pub fn block_data(tag: u8, blocks: u64) -> Vec<u8> {
    (0..blocks as usize * BLOCK_SIZE)
        .map(|i| tag ^ (i / 512) as u8)
        .collect()
}
