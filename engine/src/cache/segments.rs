//! The segment pipeline: open (RAM) → sealed (RAM) → writing (the buffer lent to the driver,
//! still readable) → written (completed; the buffer is free again) → durable (a cache flush
//! issued after the write completed has completed). Ids only grow:
//!
//! `durable_record ≤ last_writeback ≤ last_durable ≤ last_written ≤ last_sealed` (open =
//! `last_sealed + 1`), where `last_written` and `last_durable` are the longest runs of ids whose
//! writes completed and became durable: segment writes may complete in any order.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::device::DeviceRole;
use crate::error::Error;
use crate::format::{self, BLOCK_SIZE, SECTORS_PER_BLOCK};
use crate::io::{IoData, OpId};

use super::{quirk, Engine, Purpose, SlotInfo};

/// The open segment: its on-disk image, built in place.
pub(crate) struct OpenSeg {
    pub id: u64,
    pub buf: Vec<u8>,
    /// Data blocks placed so far.
    pub len: usize,
}

pub(crate) enum SegState {
    /// Sealed, its write not issued yet (the flusher, a durability need or buffer pressure
    /// issues it).
    Sealed(Vec<u8>),
    /// Its write is in flight; the engine keeps a handle to serve reads from RAM.
    Writing(Arc<Vec<u8>>),
    /// The write completed; the data is read from the cache device from now on.
    Written { seq: u64 },
}

pub(crate) struct SealedSeg {
    pub id: u64,
    pub len: usize,
    pub state: SegState,
}

/// The open segment, the sealed ones that are not durable yet, and the RAM buffer pool.
pub(crate) struct Segments {
    pub open: Option<OpenSeg>,
    /// Ids `last_durable + 1 ..= last_sealed`, in order.
    pub sealed: VecDeque<SealedSeg>,
    free: Vec<Vec<u8>>,
    /// Buffers in use (open, sealed, writing) or free, at most `pool`.
    allocated: usize,
    pub pool: usize,
    seg_bytes: usize,
    pub last_sealed: u64,
    pub last_written: u64,
    pub last_durable: u64,
}

impl Segments {
    pub fn new(pool: usize, seg_bytes: usize) -> Self {
        Segments {
            open: None,
            sealed: VecDeque::new(),
            free: Vec::new(),
            allocated: 0,
            pool,
            seg_bytes,
            last_sealed: 0,
            last_written: 0,
            last_durable: 0,
        }
    }

    pub fn open_len(&self) -> usize {
        self.open.as_ref().map_or(0, |o| o.len)
    }

    /// The ids after recovery: everything up to `last` is on the cache device and durable.
    pub fn set_recovered(&mut self, last: u64) {
        assert!(self.open.is_none() && self.sealed.is_empty());
        self.last_sealed = last;
        self.last_written = last;
        self.last_durable = last;
    }

    /// A free RAM buffer, if the pool has one.
    pub fn take_buffer(&mut self) -> Option<Vec<u8>> {
        if let Some(b) = self.free.pop() {
            return Some(b);
        }
        if self.allocated < self.pool {
            self.allocated += 1;
            return Some(vec![0u8; self.seg_bytes]);
        }
        None
    }

    pub fn give_back(&mut self, buf: Vec<u8>) {
        self.free.push(buf);
    }

    /// A buffer whose handle the driver still holds: it is lost to the pool and a new one
    /// will be allocated in its place.
    fn forget_buffer(&mut self) {
        self.allocated -= 1;
    }

    /// Buffers held by the open and the sealed-but-unwritten segments, and free ones.
    pub fn buffers_accounted(&self) -> (usize, usize) {
        let held = self.open.is_some() as usize
            + self
                .sealed
                .iter()
                .filter(|s| !matches!(s.state, SegState::Written { .. }))
                .count();
        (held + self.free.len(), self.allocated)
    }

    pub fn get(&self, id: u64) -> Option<&SealedSeg> {
        let first = self.last_durable + 1;
        let i = id.checked_sub(first)? as usize;
        self.sealed.get(i).filter(|s| s.id == id)
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut SealedSeg> {
        let first = self.last_durable + 1;
        let i = id.checked_sub(first)? as usize;
        self.sealed.get_mut(i).filter(|s| s.id == id)
    }

    /// The RAM image of segment `id`, while it has one (open, sealed or being written).
    pub fn ram_image(&self, id: u64) -> Option<&[u8]> {
        if let Some(o) = self.open.as_ref().filter(|o| o.id == id) {
            return Some(&o.buf);
        }
        match &self.get(id)?.state {
            SegState::Sealed(b) => Some(b),
            SegState::Writing(buf) => Some(buf),
            SegState::Written { .. } => None,
        }
    }

    /// The oldest sealed segment whose write is not issued.
    pub fn oldest_unissued(&self) -> Option<u64> {
        self.sealed
            .iter()
            .find(|s| matches!(s.state, SegState::Sealed(_)))
            .map(|s| s.id)
    }

    /// Segment `id`'s write completed (or failed after death): its buffer returns to the pool.
    pub fn written(&mut self, id: u64, seq: u64) {
        let Some(s) = self.get_mut(id) else { return };
        let old = std::mem::replace(&mut s.state, SegState::Written { seq });
        if let SegState::Writing(buf) = old {
            match Arc::try_unwrap(buf) {
                Ok(v) => self.give_back(v),
                Err(_) => self.forget_buffer(),
            }
        }
        while self
            .get(self.last_written + 1)
            .is_some_and(|s| matches!(s.state, SegState::Written { .. }))
        {
            self.last_written += 1;
        }
    }

    /// A failed segment write (the cache is dead): the buffer is not reused.
    pub fn write_failed(&mut self, id: u64) {
        if let Some(s) = self.get_mut(id) {
            s.state = SegState::Written { seq: 0 };
        }
    }

    /// Marks durable every written segment whose write sequence is at or below the cache
    /// device's durable prefix, in id order.
    pub fn advance_durable(&mut self, durable_seq: impl Fn(u64) -> bool) {
        while let Some(front) = self.sealed.front() {
            match front.state {
                SegState::Written { seq } if durable_seq(seq) => {
                    self.last_durable = front.id;
                    self.sealed.pop_front();
                }
                _ => break,
            }
        }
    }
}

impl Engine {
    /// Seals the open segment: fills in metablocks, CRCs, id, length and checksum, and queues
    /// it for writing. An empty open segment is discarded, never written (H11).
    pub(crate) fn seal_open(&mut self) {
        let Some(mut seg) = self.segs.open.take() else {
            return;
        };
        if seg.len == 0 {
            self.segs.give_back(seg.buf);
            return;
        }
        let slot = self.geo.slot_of(seg.id);
        let mut partial = false;
        for j in 0..seg.len {
            let idx = self.index.idx(slot, j);
            let data = &seg.buf[(1 + j) * BLOCK_SIZE..(2 + j) * BLOCK_SIZE];
            let crc = format::block_crc(data);
            let mb = self.index.get_mut(idx);
            mb.crc = Some(crc);
            let meta = format::Metablock {
                sector: mb.block * SECTORS_PER_BLOCK,
                dirty_bits: mb.dirty,
                block_crc: Some(crc),
            };
            format::encode_metablock(&mut seg.buf, j, &meta);
            partial |= format::partly_dirty(meta.dirty_bits);
        }
        self.slots[slot as usize].partial = partial;
        format::seal_segment(&mut seg.buf, seg.id, seg.len);
        if seg.len < self.n {
            self.stats.partial_flushed += 1;
            crate::probe!(SealPartial);
        } else {
            crate::probe!(SealFull);
        }
        assert_eq!(
            seg.id,
            self.segs.last_sealed + 1,
            "segments are sealed in id order"
        );
        self.segs.last_sealed = seg.id;
        self.segs.sealed.push_back(SealedSeg {
            id: seg.id,
            len: seg.len,
            state: SegState::Sealed(seg.buf),
        });
    }

    /// Issues the write of sealed segment `id`, lending its buffer to the driver.
    pub(crate) fn issue_segment_write(&mut self, id: u64) {
        let sector = self.geo.slot_sector(self.geo.slot_of(id));
        let s = self
            .segs
            .sealed
            .iter_mut()
            .find(|s| s.id == id)
            .expect("a sealed segment");
        let SegState::Sealed(buf) = std::mem::replace(&mut s.state, SegState::Written { seq: 0 })
        else {
            panic!("segment {id} is written once");
        };
        let bytes = format::segment_len_bytes(s.len);
        // Assert the image right before it goes out.
        debug_assert!(
            format::segment_checksum_ok(&buf[..bytes]),
            "segment {id} image"
        );
        let buf = Arc::new(buf);
        let data = IoData::new(buf.clone(), 0..bytes);
        self.issue_write(
            DeviceRole::Cache,
            sector,
            data,
            false,
            Purpose::SegmentWrite { id },
        );
        let s = self
            .segs
            .sealed
            .iter_mut()
            .find(|s| s.id == id)
            .expect("sealed");
        s.state = SegState::Writing(buf);
    }

    /// Issues the writes of every sealed segment up to `upto` not issued yet.
    pub(crate) fn issue_segment_writes_upto(&mut self, upto: u64) {
        while let Some(id) = self.segs.oldest_unissued().filter(|&id| id <= upto) {
            self.issue_segment_write(id);
        }
    }

    /// A segment write completed: its buffer returns to the pool (rule R11: not before).
    pub(crate) fn segment_written(&mut self, id: u64, seq: u64) {
        self.segs.written(id, seq);
    }

    /// Segment writes due without being asked: when no RAM buffer is free and a write is
    /// waiting for one (buffer pressure), the oldest sealed segment goes out.
    pub(crate) fn issue_due_segment_writes(&mut self) {
        if self.writes.waiting_for_buffer() {
            if let Some(id) = self.segs.oldest_unissued() {
                self.issue_segment_write(id);
            }
        }
    }

    /// The smallest segment id someone waits to see durable, above `last_durable`.
    fn smallest_durability_need(&self) -> Option<u64> {
        let d = self.segs.last_durable;
        [
            self.sched.cache_need(),
            self.writeback_durability_need(),
            self.record_durability_need(),
            self.writes.region_need(),
        ]
        .into_iter()
        .flatten()
        .filter(|&t| t > d)
        .min()
    }

    /// Rule R1: a cache flush is issued only once every segment the smallest need covers has
    /// completed its write, and it covers exactly the writes completed by then.
    pub(crate) fn drive_cache_durability(&mut self) {
        let Some(need) = self.smallest_durability_need() else {
            return;
        };
        self.issue_segment_writes_upto(need);
        if self.clocks.cache.flush_in_flight() {
            return;
        }
        let ready = if quirk!(self, WcFlushBeforeData) {
            // dm-writecache before its 2020 fix: the flush goes out once the writes were
            // submitted, not once they completed.
            self.segs.last_sealed >= need
        } else {
            self.segs.last_written >= need
        };
        if ready {
            let covers = if quirk!(self, WcFlushBeforeData) {
                self.clocks.cache.issued()
            } else {
                self.clocks.cache.completed_prefix()
            };
            let op = self.issue(
                DeviceRole::Cache,
                crate::io::IoKind::Flush,
                Purpose::CacheFlush,
            );
            self.clocks.cache.flush_issued(op, covers);
        }
    }

    pub(crate) fn cache_flush_done(&mut self, op: OpId) {
        self.clocks.cache.flush_done(op);
        self.sched.cache_flush_completed();
        let clock = &self.clocks.cache;
        let durable = |seq| clock.durable(seq);
        self.segs.advance_durable(durable);
    }

    /// Recovery: a segment image read back (already applied to the index) queued as if it had
    /// just been sealed, to be written again with the rebuilt ones.
    pub(crate) fn push_loaded_segment(&mut self, id: u64, buf: Vec<u8>, len: usize) {
        assert!(
            self.segs.open.is_none(),
            "no open segment while recovery loads"
        );
        assert_eq!(
            id,
            self.segs.last_sealed + 1,
            "segments are sealed in id order"
        );
        self.segs.last_sealed = id;
        self.segs.sealed.push_back(SealedSeg {
            id,
            len,
            state: SegState::Sealed(buf),
        });
    }

    /// Makes sure an open segment with a free block exists, or says what it waits for.
    pub(crate) fn open_room(&mut self) -> Result<(), super::writes::Blocked> {
        use super::writes::Blocked;
        if let Some(open) = &self.segs.open {
            if open.len < self.n {
                return Ok(());
            }
            self.seal_open();
        }
        let id = self.segs.last_sealed + 1;
        if id > crate::recovery::plan::MAX_SEGMENT_ID {
            // Recovery would take a segment past the limit for garbage: the cache stops here,
            // with everything it acknowledged readable after a reopen, instead of writing one.
            self.die(Error::Corrupt {
                role: DeviceRole::Cache,
                sector: self.geo.slot_sector(self.geo.slot_of(id)),
                what: format!(
                    "segment id {id} is past the id space (continued from a record near its end)"
                ),
            });
            return Err(Blocked::Slot);
        }
        let need = id.saturating_sub(self.geo.nr_segments);
        if need > self.durable_record {
            // Rule R9: the slot's old segment is not recorded as written back yet. The ring is
            // full: forced writeback and a record, whatever allow_writeback says.
            crate::probe!(WritebackForced);
            self.force_room(need);
            return Err(Blocked::Slot);
        }
        let slot = self.geo.slot_of(id);
        if self.slot_pinned(slot) {
            return Err(Blocked::Slot);
        }
        self.plog_take_region(id)?;
        let Some(buf) = self.segs.take_buffer() else {
            return Err(Blocked::Buffer);
        };
        assert_eq!(
            self.index.live_in_slot(slot),
            0,
            "slot {slot} reused while it holds live data"
        );
        self.clean.forget_slot(slot);
        self.slots[slot as usize] = SlotInfo {
            id,
            len: 0,
            partial: false,
        };
        self.segs.open = Some(OpenSeg { id, buf, len: 0 });
        self.start_writeback_ahead(id);
        Ok(())
    }

    /// The low watermark of the ring (rule R12): when the slot a batch ahead of `id` still holds
    /// a segment that is not written back, start that writeback now, so the write that will
    /// need the slot finds it free instead of waiting for a whole forced batch. A batch, or a
    /// quarter of the ring when that is less: a ring of two or three segments waits for need.
    fn start_writeback_ahead(&mut self, id: u64) {
        if !self.write_back_ahead {
            return;
        }
        let ahead = (self.tunables.nr_max_batched_writeback as u64).min(self.geo.nr_segments / 4);
        let need = (id + ahead).saturating_sub(self.geo.nr_segments);
        if need > self.last_writeback {
            crate::probe!(WritebackAhead);
            self.start_writeback();
        }
    }
}
