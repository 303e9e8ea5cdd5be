//! In-memory metadata: one metablock per cache block (slot x index in segment) and the lookup
//! from backing block to the one metablock that holds its newest cached copy.
//!
//! Invariant: a metablock is *live* iff its `dirty` bits are non-zero, and then (and only then)
//! the map points at it. Clean copies are dropped, never kept, so a live metablock always holds
//! data newer than the backing device for the sectors in `dirty`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A fixed, seedless hasher for block numbers: lookups only, the map is never iterated, so no
/// order can leak into the engine's behaviour.
#[derive(Default)]
pub struct BlockHasher(u64);

impl Hasher for BlockHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, x: u64) {
        // Fibonacci hashing; the high bits end up well mixed, which is what hashbrown uses.
        self.0 = (self.0 ^ x)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mb {
    /// Backing block number (backing sector / 8).
    pub block: u64,
    /// CRC-32C of the 4 KiB data block as written to the cache device, if known.
    pub crc: Option<u32>,
    /// Bit j: sector j of the block holds cached data. 0 = not live.
    pub dirty: u8,
}

pub struct Index {
    mbs: Vec<Mb>,
    map: HashMap<u64, u32, BuildHasherDefault<BlockHasher>>,
    /// Live metablocks per slot.
    live_per_slot: Vec<u32>,
    per_slot: usize,
}

impl Index {
    pub fn new(nr_slots: u64, per_slot: usize) -> Self {
        let total = nr_slots as usize * per_slot;
        assert!(total < u32::MAX as usize, "geometry bounds the index");
        Index {
            mbs: vec![Mb::default(); total],
            map: HashMap::default(),
            live_per_slot: vec![0; nr_slots as usize],
            per_slot,
        }
    }

    pub fn idx(&self, slot: u64, j: usize) -> u32 {
        debug_assert!(j < self.per_slot);
        (slot as usize * self.per_slot + j) as u32
    }

    pub fn slot_of(&self, idx: u32) -> u64 {
        (idx as usize / self.per_slot) as u64
    }

    pub fn pos_of(&self, idx: u32) -> usize {
        idx as usize % self.per_slot
    }

    /// Every block with a live copy, in no particular order.
    pub fn blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.map.keys().copied()
    }

    pub fn lookup(&self, block: u64) -> Option<u32> {
        self.map.get(&block).copied()
    }

    pub fn get(&self, idx: u32) -> Mb {
        self.mbs[idx as usize]
    }

    pub fn get_mut(&mut self, idx: u32) -> &mut Mb {
        let mb = &mut self.mbs[idx as usize];
        debug_assert!(mb.dirty != 0, "only live metablocks are updated in place");
        mb
    }

    /// Makes `idx` the live copy of `block`. The block must have no live copy.
    pub fn insert(&mut self, idx: u32, mb: Mb) {
        assert!(mb.dirty != 0, "a live metablock has dirty sectors");
        assert_eq!(
            self.mbs[idx as usize].dirty, 0,
            "metablock {idx} is already live"
        );
        let prev = self.map.insert(mb.block, idx);
        assert!(prev.is_none(), "block {} had two live copies", mb.block);
        self.mbs[idx as usize] = mb;
        self.live_per_slot[idx as usize / self.per_slot] += 1;
    }

    /// Drops the live copy at `idx`.
    pub fn remove(&mut self, idx: u32) {
        let mb = self.mbs[idx as usize];
        assert!(mb.dirty != 0, "metablock {idx} is not live");
        let prev = self.map.remove(&mb.block);
        assert_eq!(
            prev,
            Some(idx),
            "map and metablocks disagree on block {}",
            mb.block
        );
        self.mbs[idx as usize].dirty = 0;
        self.live_per_slot[idx as usize / self.per_slot] -= 1;
    }

    pub fn live_in_slot(&self, slot: u64) -> u32 {
        self.live_per_slot[slot as usize]
    }

    pub fn live_total(&self) -> u64 {
        self.map.len() as u64
    }

    /// Live metablocks of one slot, in position order.
    pub fn live_of_slot(&self, slot: u64) -> impl Iterator<Item = (u32, Mb)> + '_ {
        let start = slot as usize * self.per_slot;
        self.mbs[start..start + self.per_slot]
            .iter()
            .enumerate()
            .filter(|(_, mb)| mb.dirty != 0)
            .map(move |(j, mb)| ((start + j) as u32, *mb))
    }

    /// Full consistency check (O(cache blocks)); for tests and the crash simulator.
    pub fn check(&self) -> Result<(), String> {
        let mut per_slot = vec![0u32; self.live_per_slot.len()];
        let mut live = 0usize;
        for (i, mb) in self.mbs.iter().enumerate() {
            if mb.dirty == 0 {
                continue;
            }
            live += 1;
            per_slot[i / self.per_slot] += 1;
            if self.map.get(&mb.block) != Some(&(i as u32)) {
                return Err(format!(
                    "live metablock {i} (block {}) is not the mapped copy",
                    mb.block
                ));
            }
        }
        if live != self.map.len() {
            return Err(format!(
                "{live} live metablocks but {} mapped blocks",
                self.map.len()
            ));
        }
        if per_slot != self.live_per_slot {
            return Err("per-slot live counts are off".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_lookup_remove_keep_counts() {
        let mut ix = Index::new(3, 7);
        let a = ix.idx(1, 2);
        ix.insert(
            a,
            Mb {
                block: 99,
                crc: None,
                dirty: 0x0F,
            },
        );
        assert_eq!(ix.lookup(99), Some(a));
        assert_eq!(ix.live_in_slot(1), 1);
        assert_eq!(ix.live_of_slot(1).collect::<Vec<_>>().len(), 1);
        ix.check().unwrap();
        ix.remove(a);
        assert_eq!(ix.lookup(99), None);
        assert_eq!(ix.live_total(), 0);
        ix.check().unwrap();
    }

    #[test]
    #[should_panic(expected = "two live copies")]
    fn a_block_has_one_live_copy() {
        let mut ix = Index::new(2, 3);
        ix.insert(
            0,
            Mb {
                block: 5,
                crc: None,
                dirty: 1,
            },
        );
        ix.insert(
            4,
            Mb {
                block: 5,
                crc: None,
                dirty: 1,
            },
        );
    }
}
