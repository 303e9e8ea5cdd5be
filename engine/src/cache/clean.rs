//! Clean copies: blocks written back whose copy in the log is still on the cache device, kept
//! readable until their slot is reused (rule R17), as dm-writeboost keeps serving a segment's
//! blocks after writeback. They are RAM only: a crash forgets them, and nothing on any device
//! depends on them. A write, write-zeroes or discard forgets the copies of its blocks before
//! any piece of it is placed or bypassed; reusing a slot forgets the copies in it.

use std::collections::HashMap;

/// Where a clean copy lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CleanCopy {
    pub slot: u64,
    pub pos: usize,
    /// The segment the copy is in (the slot's segment while the copy is kept).
    pub seg: u64,
    /// CRC-32C of the block as logged, checked after the read.
    pub crc: Option<u32>,
}

pub(crate) struct CleanCopies {
    map: HashMap<u64, CleanCopy, std::hash::BuildHasherDefault<crate::index::BlockHasher>>,
    /// The blocks noted in each slot (some may have been forgotten since).
    by_slot: Vec<Vec<u64>>,
    per_slot: usize,
}

impl CleanCopies {
    pub fn new(nr_slots: u64, per_slot: usize) -> Self {
        CleanCopies {
            map: HashMap::default(),
            by_slot: vec![Vec::new(); nr_slots as usize],
            per_slot,
        }
    }

    /// `block` was written back from `c`, the block's current copy.
    pub fn note(&mut self, block: u64, c: CleanCopy) {
        let in_slot = &mut self.by_slot[c.slot as usize];
        // Bound: a segment holds each block once and is written back once.
        assert!(
            in_slot.len() < self.per_slot,
            "slot {} noted more clean copies than it has blocks",
            c.slot
        );
        in_slot.push(block);
        self.map.insert(block, c);
    }

    pub fn get(&self, block: u64) -> Option<CleanCopy> {
        self.map.get(&block).copied()
    }

    /// Forgets the copies of blocks `first..=last` (a write to them is about to be applied).
    pub fn forget_blocks(&mut self, first: u64, last: u64) {
        if self.map.is_empty() {
            return;
        }
        if last - first < self.map.len() as u64 {
            for b in first..=last {
                self.map.remove(&b);
            }
        } else {
            self.map.retain(|&b, _| b < first || b > last);
        }
    }

    /// The slot is about to take a new segment: its old copies are going.
    pub fn forget_slot(&mut self, slot: u64) {
        for b in std::mem::take(&mut self.by_slot[slot as usize]) {
            if self.map.get(&b).is_some_and(|c| c.slot == slot) {
                self.map.remove(&b);
            }
        }
    }

    pub fn blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.map.keys().copied()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(slot: u64, pos: usize) -> CleanCopy {
        CleanCopy {
            slot,
            pos,
            seg: slot + 1,
            crc: None,
        }
    }

    #[test]
    fn copies_go_with_their_slot_or_a_write() {
        let mut c = CleanCopies::new(2, 4);
        c.note(10, copy(0, 0));
        c.note(11, copy(0, 1));
        c.note(12, copy(1, 0));
        c.forget_blocks(11, 11);
        assert_eq!(c.get(11), None);
        // Block 10 moves to slot 1 (logged and written back again there).
        c.note(10, copy(1, 1));
        c.forget_slot(0);
        assert_eq!(
            c.get(10),
            Some(copy(1, 1)),
            "slot 0's reuse keeps slot 1's copy"
        );
        c.forget_blocks(0, u64::MAX - 1);
        assert_eq!(c.len(), 0);
    }
}
