//! The write queue: client writes, zeroes, discards and FLUSHes in arrival order, and the
//! pieces recovery rebuilds. The head is placed piece by piece (a request is split at 4 KiB
//! blocks); a piece that cannot be placed yet blocks the queue until what it waits for
//! completes:
//!
//! - a free RAM buffer for a new open segment (a segment write completing frees one);
//! - the slot of the new segment (forced writeback and a durable record; no read of the slot
//!   in flight);
//! - type 1: the plog region of the new segment (its previous segment durable);
//! - the older copy of a block being partially overwritten, when it is on the cache device
//!   (a read of it);
//! - the rest of a block a piece leaves partly dirty, from the backing device (`fill`, R14).
//!
//! A write is acknowledged once all its pieces are placed (in RAM), a FUA write or a FLUSH once
//! what it covers is durable (`schedule`'s waiters).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::device::DeviceRole;
use crate::error::Error;
use crate::format::plog::EntryHeader;
use crate::format::{self, BLOCK_SIZE, SECTORS_PER_BLOCK, SECTOR_SIZE};
use crate::index::Mb;
use crate::io::{IoData, IoDone, IoKind};

use super::{pieces, quirk, sector_mask, Engine, Purpose, ReqId, Request};

static ZEROS: [u8; BLOCK_SIZE] = [0; BLOCK_SIZE];

/// What the head of the queue waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Blocked {
    /// A free RAM buffer.
    Buffer,
    /// The slot of the next segment (forced writeback and record, or a read of it in flight).
    Slot,
    /// Type 1: the plog region of the next segment.
    Region,
    /// The older copy of a block, read from the cache device.
    OldCopy,
    /// The rest of a partly written block, read from the backing device (rule R14).
    Fill,
    /// Foreground backing writes (seed quirks H12, H14).
    Foreground,
    /// A bypassed write to the same block, in flight.
    Bypass,
}

pub(crate) enum QKind {
    Write {
        data: Vec<u8>,
        fua: bool,
        /// Part of a sequential stream past `sequential_cutoff`: a bypass candidate.
        stream: bool,
    },
    Zeroes {
        fua: bool,
    },
    Flush,
    Drain,
    /// Seed quirk H14: a discard that goes to the backing device only.
    BackingDiscard,
    /// Recovery: segment `seg` rebuilt from its plog entries (offset in the region, header).
    Rebuild {
        seg: u64,
        region: Arc<Vec<u8>>,
        entries: Vec<(u64, EntryHeader)>,
    },
    /// Recovery: a valid cache segment read back and written again with rebuilt ones.
    LoadSegment {
        seg: u64,
        slot: u64,
        len: usize,
    },
}

pub(crate) struct Queued {
    /// `None` for recovery's own work.
    pub id: Option<ReqId>,
    pub kind: QKind,
    pub sector: u64,
    pub sectors: u64,
    /// Pieces (or rebuilt entries) placed so far.
    pub done: usize,
}

/// The older copy of a block being partially overwritten, read from the cache device.
struct Merge {
    idx: u32,
    crc: Option<u32>,
    sector: u64,
    /// `None` while the read is in flight.
    data: Option<Box<[u8; BLOCK_SIZE]>>,
    /// Seed quirk H12: the old dirty sectors were written back in the foreground.
    foreground_done: bool,
}

#[derive(Default)]
pub(crate) struct WriteQueue {
    queue: VecDeque<Queued>,
    pub blocked: Option<Blocked>,
    /// Type 1: the segment whose durability the next region waits for.
    pub region_need: Option<u64>,
    merge: Option<Merge>,
    pub fill: Option<super::fill::Fill>,
    foreground_pending: usize,
    /// Recovery: the segment being read back, its buffer, and whether the read completed.
    loading: Option<(u64, Vec<u8>, bool)>,
}

impl WriteQueue {
    pub fn push(&mut self, id: ReqId, req: Request, stream: bool) {
        let q = match req {
            Request::Write { sector, data, fua } => Queued {
                id: Some(id),
                sectors: (data.len() / SECTOR_SIZE) as u64,
                kind: QKind::Write { data, fua, stream },
                sector,
                done: 0,
            },
            Request::WriteZeroes {
                sector,
                sectors,
                fua,
            } => Queued {
                id: Some(id),
                kind: QKind::Zeroes { fua },
                sector,
                sectors,
                done: 0,
            },
            Request::Discard { sector, sectors } => Queued {
                id: Some(id),
                kind: QKind::Zeroes { fua: false },
                sector,
                sectors,
                done: 0,
            },
            Request::Flush => Queued {
                id: Some(id),
                kind: QKind::Flush,
                sector: 0,
                sectors: 0,
                done: 0,
            },
            Request::Drain => Queued {
                id: Some(id),
                kind: QKind::Drain,
                sector: 0,
                sectors: 0,
                done: 0,
            },
            Request::Read { .. } => unreachable!("reads do not queue behind writes"),
        };
        self.queue.push_back(q);
    }

    pub fn push_internal(&mut self, kind: QKind) {
        self.queue.push_back(Queued {
            id: None,
            kind,
            sector: 0,
            sectors: 0,
            done: 0,
        });
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn waiting_for_buffer(&self) -> bool {
        self.blocked == Some(Blocked::Buffer)
    }

    pub fn region_need(&self) -> Option<u64> {
        self.region_need
            .filter(|_| self.blocked == Some(Blocked::Region))
    }

    /// The ids of every request still queued (the cache died).
    pub fn drain_ids(&mut self) -> Vec<ReqId> {
        self.merge = None;
        self.fill = None;
        self.blocked = None;
        self.queue.drain(..).filter_map(|q| q.id).collect()
    }

    pub fn foreground_done(&mut self) {
        self.foreground_pending -= 1;
    }

    /// The H14 quirk turns a discard into a backing-only one.
    pub fn make_backing_discard(&mut self, id: ReqId) {
        if let Some(q) = self.queue.iter_mut().rev().find(|q| q.id == Some(id)) {
            q.kind = QKind::BackingDiscard;
        }
    }
}

/// How far the head of the queue got.
enum Advance {
    /// Every piece placed: answer it (or register its durability waiter).
    Done,
    /// Sent to the backing device whole: answered when that completes.
    Bypassed,
    Blocked(Blocked),
}

impl Engine {
    /// Places what it can of the queue, in order; stops at the first piece that must wait.
    pub(crate) fn pump_writes(&mut self) {
        self.writes.blocked = None;
        // Bounded by the queue: each round finishes a request or stops.
        for _ in 0..=self.writes.len() {
            let Some(mut head) = self.writes.queue.pop_front() else {
                return;
            };
            match self.advance(&mut head) {
                Advance::Done => self.finish(head),
                Advance::Bypassed => {}
                Advance::Blocked(_) if self.dead_error.is_some() => {
                    // It died placing this piece (the id space ended): the head fails like
                    // the rest of the queue did.
                    let err = self.dead_error.clone().expect("dead");
                    if let Some(id) = head.id {
                        self.reply(id, Err(err));
                    }
                    return;
                }
                Advance::Blocked(b) => {
                    match b {
                        Blocked::Slot => crate::probe!(WriteWaitsSlot),
                        Blocked::Buffer => crate::probe!(WriteWaitsBuffer),
                        _ => {}
                    }
                    self.writes.blocked = Some(b);
                    self.writes.queue.push_front(head);
                    return;
                }
            }
            if self.dead.is_some() {
                return;
            }
        }
    }

    fn advance(&mut self, head: &mut Queued) -> Advance {
        let pieces: Vec<(u64, usize, usize, usize)> = match head.kind {
            QKind::Write { .. } | QKind::Zeroes { .. } => {
                pieces(head.sector, head.sectors).skip(head.done).collect()
            }
            _ => Vec::new(),
        };
        if matches!(
            head.kind,
            QKind::Write { .. } | QKind::Zeroes { .. } | QKind::BackingDiscard
        ) && head.sectors > 0
            && !quirk!(self, CleanCopyKept)
        {
            // R17: no clean copy of a block outlives the start of a write to it (each try of
            // a blocked head forgets again: a writeback may have finished in between).
            let last = (head.sector + head.sectors - 1) / SECTORS_PER_BLOCK;
            self.clean
                .forget_blocks(head.sector / SECTORS_PER_BLOCK, last);
        }
        match &head.kind {
            QKind::Flush | QKind::Drain => return Advance::Done,
            QKind::BackingDiscard => return self.backing_discard(head),
            QKind::Rebuild { .. } => return self.rebuild(head),
            QKind::LoadSegment { seg, slot, len } => return self.load_segment(*seg, *slot, *len),
            // A stream write is bypassed (R15) only before any piece of it started: a read of
            // an older copy or of backing data for its first piece keeps it on the log path.
            QKind::Write {
                data,
                fua,
                stream: true,
            } if head.done == 0
                && self.writes.merge.is_none()
                && self.writes.fill.is_none()
                && self.may_bypass(head.sector, head.sectors) =>
            {
                let id = head.id.expect("a client write");
                self.start_bypass(id, head.sector, data, *fua);
                return Advance::Bypassed;
            }
            QKind::Write { .. } | QKind::Zeroes { .. } => {}
        }
        for (block, first, count, off) in pieces {
            let data: &[u8] = match &head.kind {
                QKind::Write { data, .. } => &data[off..off + count * SECTOR_SIZE],
                _ => &ZEROS[..count * SECTOR_SIZE],
            };
            // The piece is copied out so `place_piece` may borrow the engine mutably.
            let mut piece = [0u8; BLOCK_SIZE];
            piece[..data.len()].copy_from_slice(data);
            let piece = &piece[..count * SECTOR_SIZE];
            // Type 1: a region that cannot take this piece's entry seals the open segment
            // first, also when the piece would overwrite a block of it in place (the entry is
            // appended either way).
            self.plog_make_room(count);
            match self.place_piece(block, first, piece) {
                Ok(seg) => self.plog_append(seg, block, first, piece),
                Err(b) => return Advance::Blocked(b),
            }
            head.done += 1;
        }
        Advance::Done
    }

    /// A request whose pieces are all placed: acknowledge it, or wait for durability.
    fn finish(&mut self, head: Queued) {
        let Some(id) = head.id else { return };
        let wants_durable = match head.kind {
            QKind::Drain => {
                self.start_drain(id);
                return;
            }
            QKind::Flush => {
                crate::probe!(Flush);
                true
            }
            QKind::Write { fua, .. } => {
                if fua {
                    crate::probe!(WriteFua);
                }
                fua && !quirk!(self, WcIgnoresFua)
            }
            QKind::Zeroes { fua } => {
                crate::probe!(WriteZeroes);
                fua
            }
            QKind::BackingDiscard => false,
            QKind::Rebuild { .. } | QKind::LoadSegment { .. } => false,
        };
        if wants_durable {
            self.wait_acknowledged_durable(id);
        } else {
            self.reply(id, Ok(None));
        }
    }

    /// Puts a write piece into the open segment (opening one if needed); returns the id of the
    /// segment it went into. Recovery rebuilds segments from the plog through this very path.
    pub(crate) fn place_piece(
        &mut self,
        block: u64,
        first: usize,
        data: &[u8],
    ) -> Result<u64, Blocked> {
        if self.bypass.in_flight(block) {
            return Err(Blocked::Bypass);
        }
        let count = data.len() / SECTOR_SIZE;
        let bits = sector_mask(first, count);
        let full = count == SECTORS_PER_BLOCK as usize;
        let byte_off = first * SECTOR_SIZE;

        // Overwrite in the open segment: in place.
        if let Some(idx) = self.index.lookup(block) {
            if let Some(open) = self.segs.open.as_mut() {
                if self.slots[self.index.slot_of(idx) as usize].id == open.id {
                    let at = (1 + self.index.pos_of(idx)) * BLOCK_SIZE + byte_off;
                    open.buf[at..at + data.len()].copy_from_slice(data);
                    let id = open.id;
                    self.bypass.note_copy(block, id);
                    self.index.get_mut(idx).dirty |= bits;
                    self.stats.count(true, true, true, full);
                    self.writes.merge = None;
                    self.writes.fill = None;
                    crate::probe!(WriteInPlace);
                    return Ok(id);
                }
            }
        }

        // Room first: making room may write back (and so drop) the block's older copy.
        self.open_room()?;
        let mut block_buf = [0u8; BLOCK_SIZE];
        let mut dirty = bits;
        let mut on_buffer = false;
        let mut one_shot = false;
        let old = self.index.lookup(block);
        if let Some(old) = old.filter(|_| !full) {
            let (old_data, in_ram) = self.older_copy(old)?;
            if quirk!(self, H12UnflushedOneShotWriteback) && !in_ram {
                // The seed wrote the old dirty sectors back in the foreground, unflushed,
                // and the new copy carried only its own sectors.
                self.one_shot_writeback(block, old, &old_data)?;
                one_shot = true;
            } else {
                // Keep the old copy's dirty sectors: the new copy must be a superset, so
                // replay of the newest copy alone is right and no foreground writeback is
                // needed.
                block_buf = *old_data;
                dirty |= self.index.get(old).dirty;
                on_buffer = in_ram;
                if in_ram {
                    crate::probe!(WriteMergeRam);
                } else {
                    crate::probe!(WriteMergeCache);
                }
            }
        }
        let whole = self.whole_block_mask(block);
        if dirty != whole && !one_shot && !quirk!(self, PartialCopies) {
            // Rule R14: the rest of the block from the backing device; the copy is whole.
            let mut filled = self.backing_fill(block, old)?;
            crate::probe!(WriteFillBacking);
            super::fill::overlay_sectors(&mut filled, &block_buf, dirty);
            block_buf = *filled;
            dirty = whole;
        }
        let hit = old.is_some();
        if let Some(old) = old {
            self.index.remove(old);
        }
        self.writes.merge = None;
        self.writes.fill = None;
        block_buf[byte_off..byte_off + data.len()].copy_from_slice(data);
        let open = self.segs.open.as_mut().expect("open_room opened a segment");
        let (open_id, pos) = (open.id, open.len);
        open.buf[(1 + pos) * BLOCK_SIZE..(2 + pos) * BLOCK_SIZE].copy_from_slice(&block_buf);
        open.len += 1;
        let len = open.len;
        let slot = self.geo.slot_of(open_id);
        let idx = self.index.idx(slot, pos);
        self.bypass.note_copy(block, open_id);
        self.index.insert(
            idx,
            Mb {
                block,
                crc: None,
                dirty,
            },
        );
        self.slots[slot as usize].len = len;
        self.stats.count(true, hit, on_buffer, full);
        if len == self.n {
            self.seal_open();
        }
        Ok(open_id)
    }

    /// The newest copy of a block (metablock `idx`): from RAM when its segment still has a RAM
    /// image, else read from the cache device (the piece waits for the read).
    fn older_copy(&mut self, idx: u32) -> Result<(Box<[u8; BLOCK_SIZE]>, bool), Blocked> {
        let slot = self.index.slot_of(idx);
        let pos = self.index.pos_of(idx);
        let range = (1 + pos) * BLOCK_SIZE..(2 + pos) * BLOCK_SIZE;
        if let Some(img) = self.segs.ram_image(self.slots[slot as usize].id) {
            let mut b = Box::new([0u8; BLOCK_SIZE]);
            b.copy_from_slice(&img[range]);
            return Ok((b, true));
        }
        match &mut self.writes.merge {
            // Kept until the piece is placed: the piece may still wait for something else.
            Some(m) if m.idx == idx => match &m.data {
                Some(d) => Ok((d.clone(), false)),
                None => Err(Blocked::OldCopy),
            },
            _ => {
                let sector = self.geo.block_sector(slot, pos);
                self.writes.merge = Some(Merge {
                    idx,
                    crc: self.index.get(idx).crc,
                    sector,
                    data: None,
                    foreground_done: false,
                });
                self.issue_pinned(
                    DeviceRole::Cache,
                    IoKind::Read {
                        sector,
                        len: BLOCK_SIZE,
                    },
                    Purpose::MergeRead,
                    Some(slot),
                );
                Err(Blocked::OldCopy)
            }
        }
    }

    /// The read of an older copy completed: checked against its CRC right after it is read.
    pub(crate) fn merge_read_done(&mut self, data: IoDone) {
        let IoDone::Read(bytes) = data else {
            panic!("a merge read returns data")
        };
        let Some(m) = self.writes.merge.as_mut() else {
            return;
        };
        if m.crc.is_some_and(|crc| crc != format::block_crc(&bytes)) {
            let sector = m.sector;
            self.die(Error::Corrupt {
                role: DeviceRole::Cache,
                sector,
                what: "a cached data block fails its CRC".into(),
            });
            return;
        }
        let mut b = Box::new([0u8; BLOCK_SIZE]);
        b.copy_from_slice(&bytes);
        m.data = Some(b);
    }

    /// Seed quirk H12: write the old copy's dirty sectors to the backing device (not flushed)
    /// and wait for those writes; the new copy then carries only its own sectors.
    fn one_shot_writeback(
        &mut self,
        block: u64,
        old: u32,
        old_data: &[u8; BLOCK_SIZE],
    ) -> Result<(), Blocked> {
        let done = self
            .writes
            .merge
            .as_ref()
            .is_some_and(|m| m.foreground_done);
        if done && self.writes.foreground_pending == 0 {
            return Ok(());
        }
        if !done {
            let dirty = self.index.get(old).dirty;
            let buf = Arc::new(old_data.to_vec());
            for (sector, range) in crate::cache::writeback::dirty_runs(block, dirty) {
                self.writes.foreground_pending += 1;
                let data = IoData::new(buf.clone(), range);
                self.issue_write(
                    DeviceRole::Backing,
                    sector,
                    data,
                    false,
                    Purpose::ForegroundBacking,
                );
            }
            let m = self.writes.merge.as_mut().expect("the merge read happened");
            m.foreground_done = true;
        }
        Err(Blocked::Foreground)
    }

    /// Seed quirk H14: the discard goes to the backing device only, as zeros.
    fn backing_discard(&mut self, head: &mut Queued) -> Advance {
        if head.done == 0 {
            head.done = 1;
            let mut s = head.sector;
            let end = head.sector + head.sectors;
            while s < end {
                let n = (end - s).min(2048);
                self.writes.foreground_pending += 1;
                let data = IoData::from_vec(vec![0u8; n as usize * SECTOR_SIZE]);
                self.issue_write(
                    DeviceRole::Backing,
                    s,
                    data,
                    false,
                    Purpose::ForegroundBacking,
                );
                s += n;
            }
        }
        if self.writes.foreground_pending > 0 {
            return Advance::Blocked(Blocked::Foreground);
        }
        Advance::Done
    }

    /// Recovery: the entries of one plog region placed again through the write path, each into
    /// the segment of its own id; the segment is sealed at the end.
    fn rebuild(&mut self, head: &mut Queued) -> Advance {
        let QKind::Rebuild {
            seg,
            region,
            entries,
        } = &head.kind
        else {
            unreachable!()
        };
        let (seg, region, entries) = (*seg, region.clone(), entries.clone());
        for &(at, h) in &entries[head.done..] {
            let s = at as usize * SECTOR_SIZE;
            let data = &region[s + SECTOR_SIZE..s + SECTOR_SIZE * h.footprint() as usize];
            let block = h.sector / SECTORS_PER_BLOCK;
            let first = (h.sector % SECTORS_PER_BLOCK) as usize;
            match self.place_piece(block, first, data) {
                Ok(went_to) => assert_eq!(went_to, seg, "a rebuilt segment holds what it held"),
                Err(b) => return Advance::Blocked(b),
            }
            head.done += 1;
        }
        self.seal_open();
        Advance::Done
    }

    /// Recovery: reads a valid cache segment back into a RAM buffer and queues it as sealed, so
    /// it is written again after the rebuilt ones and the ids stay a prefix.
    fn load_segment(&mut self, seg: u64, slot: u64, len: usize) -> Advance {
        match self.writes.loading.take() {
            Some((id, buf, true)) => {
                assert_eq!(id, seg, "segments load in plan order");
                assert!(
                    self.segs.open.is_none(),
                    "no open segment while recovery loads"
                );
                let metablocks: Vec<_> = (0..len)
                    .map(|j| format::decode_metablock(&buf, j))
                    .collect();
                self.apply_segment(seg, slot, &metablocks);
                self.push_loaded_segment(seg, buf, len);
                Advance::Done
            }
            Some(in_flight) => {
                self.writes.loading = Some(in_flight);
                Advance::Blocked(Blocked::OldCopy)
            }
            None => {
                let Some(buf) = self.segs.take_buffer() else {
                    return Advance::Blocked(Blocked::Buffer);
                };
                self.writes.loading = Some((seg, buf, false));
                let sector = self.geo.slot_sector(slot);
                self.issue(
                    DeviceRole::Cache,
                    IoKind::Read {
                        sector,
                        len: format::segment_len_bytes(len),
                    },
                    Purpose::LoadSegment { id: seg },
                );
                Advance::Blocked(Blocked::OldCopy)
            }
        }
    }

    /// Recovery: the segment read back completed; its checksum is checked right after it is
    /// read.
    pub(crate) fn load_segment_done(&mut self, id: u64, data: IoDone) {
        let IoDone::Read(bytes) = data else {
            panic!("a load returns data")
        };
        if !format::segment_checksum_ok(&bytes) {
            let sector = self.geo.slot_sector(self.geo.slot_of(id));
            self.die(Error::Corrupt {
                role: DeviceRole::Cache,
                sector,
                what: format!("segment {id} changed while recovery read it"),
            });
            return;
        }
        let (seg, buf, done) = self.writes.loading.as_mut().expect("a load in flight");
        assert_eq!(*seg, id);
        buf[..bytes.len()].copy_from_slice(&bytes);
        *done = true;
    }
}
