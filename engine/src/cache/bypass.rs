//! Sequential bypass: writes recognised as part of a long sequential stream go straight to the
//! backing device instead of the log (bcache's `sequential_cutoff`).
//!
//! The crash-safe protocol (docs/DESIGN.md, "Sequential bypass"):
//!
//! - A stream is a run of client writes each starting where an earlier one ended. A write is a
//!   bypass candidate once its stream, itself included, reaches `sequential_cutoff` bytes.
//! - A candidate is bypassed only when no block it touches has a copy that could ever be read
//!   or written back again: none in the index (a dirty copy, or one in the open segment), and
//!   none in a segment the durable superblock record does not cover yet. Recovery applies
//!   exactly the segments past the record, so a copy in one of those, even one written back
//!   already, would be replayed over the bypassed data after a crash. Otherwise the write goes
//!   through the log like any other: nothing is dropped, no tombstone is needed.
//! - While a bypassed write is in flight, no piece of a later write may be placed in its blocks
//!   (a partial write would fill the rest of its block from the backing device and could read
//!   the old data); backing writes that overlap it wait for it anyway (rule R0).
//! - A bypassed write is answered when its backing write completes; a FUA one, and every FLUSH
//!   after it, once a backing flush issued after that completion has completed.

use std::collections::{BTreeMap, VecDeque};

use crate::device::DeviceRole;
use crate::format::{SECTORS_PER_BLOCK, SECTOR_SIZE};
use crate::io::IoData;

use super::{quirk, Engine, Purpose, ReqId};

/// Streams remembered at once (bcache keeps 16 per cache set).
const STREAMS: usize = 16;

/// A bypassed request in flight.
struct Pending {
    /// Backing writes not completed yet.
    writes: usize,
    fua: bool,
    first_block: u64,
    last_block: u64,
}

#[derive(Default)]
pub(crate) struct Bypass {
    /// Recent streams, oldest first: (sector after its end, bytes so far).
    streams: VecDeque<(u64, u64)>,
    /// For blocks with a copy in a segment the durable record may not cover: the newest such
    /// segment id. Entries the record has passed are stale and pruned when it moves.
    unrecorded: BTreeMap<u64, u64>,
    /// Blocks with a bypassed write in flight, and how many.
    in_flight: BTreeMap<u64, u32>,
    pending: BTreeMap<ReqId, Pending>,
    /// Backing-device sequence number of the last bypassed write issued (0: none yet).
    pub last_seq: u64,
}

impl Bypass {
    /// A client write arrived (arrival order is stream order): whether its stream, itself
    /// included, now reaches `cutoff` bytes. `cutoff` 0 turns bypass off.
    pub fn observe(&mut self, sector: u64, bytes: u64, cutoff: u64) -> bool {
        let end = sector + bytes / SECTOR_SIZE as u64;
        let run = match self.streams.iter().position(|&(next, _)| next == sector) {
            Some(i) => {
                let (_, so_far) = self.streams.remove(i).expect("found");
                so_far + bytes
            }
            None => bytes,
        };
        if self.streams.len() == STREAMS {
            self.streams.pop_front();
        }
        self.streams.push_back((end, run));
        debug_assert!(self.streams.len() <= STREAMS);
        cutoff > 0 && run >= cutoff
    }

    /// A copy of `block` went into segment `id`.
    pub fn note_copy(&mut self, block: u64, id: u64) {
        let newest = self.unrecorded.entry(block).or_insert(id);
        *newest = (*newest).max(id);
    }

    /// Whether a segment past the durable record may hold a copy of `block`.
    pub fn unrecorded(&self, block: u64, durable_record: u64) -> bool {
        self.unrecorded
            .get(&block)
            .is_some_and(|&id| id > durable_record)
    }

    /// The record moved to `durable_record`: forget the copies it covers.
    pub fn prune(&mut self, durable_record: u64) {
        self.unrecorded.retain(|_, id| *id > durable_record);
    }

    pub fn in_flight(&self, block: u64) -> bool {
        self.in_flight.contains_key(&block)
    }

    /// Requests waiting for their bypassed writes (the cache died).
    pub fn drain_ids(&mut self) -> Vec<ReqId> {
        self.in_flight.clear();
        std::mem::take(&mut self.pending).into_keys().collect()
    }
}

/// Backing writes of one bypassed request are issued in pieces of at most this many sectors.
const MAX_WRITE_SECTORS: u64 = 2048;

impl Engine {
    /// Whether a stream write of `sectors` at `sector` may go straight to the backing device.
    pub(crate) fn may_bypass(&mut self, sector: u64, sectors: u64) -> bool {
        let first = sector / SECTORS_PER_BLOCK;
        let last = (sector + sectors - 1) / SECTORS_PER_BLOCK;
        for block in first..=last {
            if quirk!(self, BypassStaleRead) {
                // The quirk bypasses whatever the cache holds and keeps the cached copy.
                continue;
            }
            if self.index.lookup(block).is_some() {
                crate::probe!(BypassRefusedCached);
                return false;
            }
            if self.bypass.unrecorded(block, self.durable_record)
                && !quirk!(self, BypassStaleWriteback)
            {
                crate::probe!(BypassRefusedUnrecorded);
                return false;
            }
        }
        true
    }

    /// Sends a client write to the backing device; the reply waits for its completion.
    pub(crate) fn start_bypass(&mut self, id: ReqId, sector: u64, data: &[u8], fua: bool) {
        crate::probe!(WriteBypassed);
        let sectors = (data.len() / SECTOR_SIZE) as u64;
        let first_block = sector / SECTORS_PER_BLOCK;
        let last_block = (sector + sectors - 1) / SECTORS_PER_BLOCK;
        for block in first_block..=last_block {
            *self.bypass.in_flight.entry(block).or_insert(0) += 1;
        }
        let buf = std::sync::Arc::new(data.to_vec());
        let mut writes = 0;
        let mut s = 0;
        while s < sectors {
            let n = (sectors - s).min(MAX_WRITE_SECTORS);
            let range = (s as usize * SECTOR_SIZE)..((s + n) as usize * SECTOR_SIZE);
            let (_, seq) = self.issue_write(
                DeviceRole::Backing,
                sector + s,
                IoData::new(buf.clone(), range),
                false,
                Purpose::BypassWrite { req: id },
            );
            self.bypass.last_seq = seq;
            writes += 1;
            s += n;
        }
        self.stats.bypassed_writes += 1;
        self.bypass.pending.insert(
            id,
            Pending {
                writes,
                fua,
                first_block,
                last_block,
            },
        );
    }

    /// One backing write of bypassed request `id` completed.
    pub(crate) fn bypass_write_done(&mut self, id: ReqId) {
        let Some(p) = self.bypass.pending.get_mut(&id) else {
            return;
        };
        p.writes -= 1;
        if p.writes > 0 {
            return;
        }
        let p = self.bypass.pending.remove(&id).expect("pending");
        for block in p.first_block..=p.last_block {
            let n = self.bypass.in_flight.get_mut(&block).expect("counted");
            *n -= 1;
            if *n == 0 {
                self.bypass.in_flight.remove(&block);
            }
        }
        if p.fua && !quirk!(self, WcIgnoresFua) {
            self.wait_acknowledged_durable(id);
        } else {
            self.reply(id, Ok(None));
        }
    }

    /// Whether every bypassed write issued so far is durable on the backing device.
    pub(crate) fn bypass_settled(&self) -> bool {
        self.clocks.backing.durable(self.bypass.last_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_reaches_the_cutoff_across_writes_and_single_writes_count_alone() {
        let mut b = Bypass::default();
        assert!(!b.observe(0, 4096, 8192), "first write of a stream");
        assert!(b.observe(8, 4096, 8192), "continues it: 8 KiB");
        assert!(!b.observe(100, 4096, 8192), "another stream");
        assert!(
            b.observe(200, 8192, 8192),
            "one write as long as the cutoff"
        );
        assert!(!b.observe(16, 4096, 0), "0 turns bypass off");
        assert!(
            b.observe(24, 4096, 8192),
            "the first stream went on counting"
        );
    }

    #[test]
    fn the_stream_table_is_bounded_and_forgets_the_oldest() {
        let mut b = Bypass::default();
        b.observe(0, 4096, 8192);
        for i in 0..STREAMS as u64 {
            b.observe(1000 + i * 100, 512, 8192);
        }
        assert_eq!(b.streams.len(), STREAMS);
        assert!(!b.observe(8, 4096, 8192), "the first stream was forgotten");
    }

    #[test]
    fn copies_past_the_record_count_until_the_record_covers_them() {
        let mut b = Bypass::default();
        b.note_copy(3, 5);
        b.note_copy(3, 4);
        assert!(b.unrecorded(3, 4), "the newest copy is in segment 5");
        assert!(!b.unrecorded(3, 5));
        b.prune(5);
        assert!(b.unrecorded.is_empty());
    }
}
