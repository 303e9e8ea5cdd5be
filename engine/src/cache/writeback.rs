//! Writeback and the superblock record, as background jobs that run while clients write.
//!
//! Writeback of a batch (up to `nr_max_batched_writeback` segments): wait until the batch is
//! durable on the cache device (R4: the record that will cover it must never run ahead of the
//! durable log); read its segments (concurrently) and check each right after it is read; take
//! the blocks that are still live *now* (dirtiness re-checked), sorted by backing address, and
//! write them (concurrently; no two overlap; consecutive whole blocks as one write of up to
//! 1 MiB, `backing_writes`); once every write completed, flush
//! the backing device (R5); once that flush completed, drop the blocks still live from the
//! index and advance `last_writeback`. A client write that supersedes a block meanwhile only
//! takes it out of the index earlier; its old data landing on the backing device is harmless,
//! the newer copy is dirty in the cache.
//!
//! The record (R6): wait for the whole log to be durable when a written-back segment held
//! superseded blocks (H5); write the backup copy with FUA; once it completed, the primary with
//! FUA; once that completed, `durable_record` moves.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use crate::device::DeviceRole;
use crate::error::Error;
use crate::format::{self, BLOCK_SIZE, SECTORS_PER_BLOCK, SECTOR_SIZE};
use crate::io::{IoData, IoDone, IoKind, OpId};

use super::{quirk, Engine, Purpose};

/// The runs of consecutive dirty sectors of a block: (backing sector, byte range in the
/// block). A fully dirty block is one run.
pub(crate) fn dirty_runs(block: u64, dirty: u8) -> Vec<(u64, Range<usize>)> {
    let mut out = Vec::new();
    let mut s = 0usize;
    while s < SECTORS_PER_BLOCK as usize {
        if dirty & (1 << s) == 0 {
            s += 1;
            continue;
        }
        let start = s;
        while s < SECTORS_PER_BLOCK as usize && dirty & (1 << s) != 0 {
            s += 1;
        }
        out.push((
            block * SECTORS_PER_BLOCK + start as u64,
            start * SECTOR_SIZE..s * SECTOR_SIZE,
        ));
    }
    out
}

#[derive(Debug)]
enum WbPhase {
    /// Waiting for the batch to be durable on the cache device.
    WaitDurable,
    /// Segment reads in flight.
    Reading,
    /// Backing writes in flight.
    Writing,
    /// Seed quirk H13: superseded copies written after the live ones.
    LateWriting,
    /// The backing flush in flight.
    Flushing,
}

/// What one writeback did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepOutcome {
    pub segments: u64,
    pub blocks: u64,
}

pub(crate) struct WritebackJob {
    /// Segments `first ..= target`.
    first: u64,
    target: u64,
    phase: WbPhase,
    pending: usize,
    /// Segment images read back, by id.
    images: BTreeMap<u64, Vec<u8>>,
    /// (block, metablock index) of the blocks written back.
    items: Vec<(u64, u32)>,
    /// Seed quirk H13: (block, dirty bits, data) of superseded copies.
    superseded: Vec<(u64, u8, [u8; BLOCK_SIZE])>,
    /// Quirk: the backing flush was issued with the writes, and whether it completed.
    early_flush: Option<OpId>,
    early_flush_done: bool,
}

enum RecPhase {
    /// Waiting for every segment up to this id to be durable (H5).
    WaitLog(u64),
    Backup,
    Primary,
}

/// The most bytes one writeback write carries: consecutive whole blocks go out together up to
/// this (a slow backing device pays its per-request cost once per run, not per block).
const MAX_WRITEBACK_RUN: usize = 1 << 20;

/// The backing writes of a batch: `items` (block, idx, dirty, offset in the batch's data) in
/// block order, their data laid out in that order. Whole blocks that follow each other on the
/// device go out as one write of up to `MAX_WRITEBACK_RUN`; a partly dirty block writes its
/// dirty runs alone. Returns (first sector, byte range in the data).
pub(crate) fn backing_writes(items: &[(u64, u32, u8, usize)]) -> Vec<(u64, Range<usize>)> {
    let mut out: Vec<(u64, Range<usize>)> = Vec::new();
    let mut open: Option<(u64, u64, Range<usize>)> = None; // first block, next block, range
    for &(block, _, dirty, at) in items {
        if dirty == 0xFF {
            match &mut open {
                Some((_, next, r))
                    if *next == block
                        && r.end == at
                        && r.len() + BLOCK_SIZE <= MAX_WRITEBACK_RUN =>
                {
                    (*next, r.end) = (block + 1, at + BLOCK_SIZE);
                }
                _ => {
                    if let Some((first, _, r)) = open.take() {
                        out.push((first * SECTORS_PER_BLOCK, r));
                    }
                    open = Some((block, block + 1, at..at + BLOCK_SIZE));
                }
            }
            continue;
        }
        if let Some((first, _, r)) = open.take() {
            out.push((first * SECTORS_PER_BLOCK, r));
        }
        for (sector, r) in dirty_runs(block, dirty) {
            out.push((sector, at + r.start..at + r.end));
        }
    }
    if let Some((first, _, r)) = open {
        out.push((first * SECTORS_PER_BLOCK, r));
    }
    out
}

pub(crate) struct RecordJob {
    value: u64,
    phase: RecPhase,
}

impl Engine {
    /// Starts writing back the next batch, unless one runs or nothing is sealed past
    /// `last_writeback`. Returns whether a job runs now.
    pub(crate) fn start_writeback(&mut self) -> bool {
        if self.writeback.is_some() {
            return true;
        }
        let batch = self.tunables.nr_max_batched_writeback as u64;
        let target = (self.last_writeback + batch).min(self.segs.last_sealed);
        if target <= self.last_writeback {
            return false;
        }
        self.writeback = Some(WritebackJob {
            first: self.last_writeback + 1,
            target,
            phase: WbPhase::WaitDurable,
            pending: 0,
            images: BTreeMap::new(),
            items: Vec::new(),
            superseded: Vec::new(),
            early_flush: None,
            early_flush_done: false,
        });
        true
    }

    /// The ring is full: segment `need` must be written back and recorded before its slot is
    /// reused, whatever `allow_writeback` says.
    pub(crate) fn force_room(&mut self, need: u64) {
        if self.last_writeback < need {
            self.start_writeback();
        } else if self.durable_record < need {
            self.start_record();
        }
    }

    /// Changes whenever a job changes phase: the pump goes on while anything moves.
    pub(crate) fn jobs_mark(&self) -> u64 {
        let wb = self.writeback.as_ref().map_or(0, |j| {
            let phase = match j.phase {
                WbPhase::WaitDurable => 1,
                WbPhase::Reading => 2,
                WbPhase::Writing => 3,
                WbPhase::LateWriting => 4,
                WbPhase::Flushing => 5,
            };
            phase << 32 | j.pending as u64
        });
        let rec = self.record.as_ref().map_or(0, |r| match r.phase {
            RecPhase::WaitLog(_) => 1,
            RecPhase::Backup => 2,
            RecPhase::Primary => 3,
        });
        wb ^ rec << 48
    }

    /// The writeback job's phase and target (diagnostics).
    pub(crate) fn writeback_state(&self) -> String {
        match &self.writeback {
            Some(j) => format!(
                "{:?} {}..={} pending {}",
                j.phase, j.first, j.target, j.pending
            ),
            None => "none".into(),
        }
    }

    pub(crate) fn writeback_durability_need(&self) -> Option<u64> {
        match &self.writeback {
            Some(WritebackJob {
                target,
                phase: WbPhase::WaitDurable,
                ..
            }) => Some(*target),
            _ => None,
        }
    }

    /// Moves the writeback job on where it waits for durability or for its writes.
    pub(crate) fn drive_writeback(&mut self) {
        let Some(job) = &self.writeback else { return };
        match job.phase {
            WbPhase::WaitDurable if self.segs.last_durable >= job.target => self.read_batch(),
            // A flush for bypassed writes in flight: the batch's own flush waits for it (one
            // flush in flight per device).
            WbPhase::Writing | WbPhase::LateWriting
                if job.pending == 0 && !self.clocks.backing.flush_in_flight() =>
            {
                self.after_writes()
            }
            _ => {}
        }
    }

    /// Reads every segment of the batch that still has live blocks.
    fn read_batch(&mut self) {
        let job = self.writeback.as_mut().expect("a job");
        let (first, target) = (job.first, job.target);
        let mut reads = Vec::new();
        for id in first..=target {
            let slot = self.geo.slot_of(id);
            let info = self.slots[slot as usize];
            assert_eq!(
                info.id, id,
                "slot {slot} holds segment {} not {id}",
                info.id
            );
            if self.index.live_in_slot(slot) == 0 && !quirk!(self, H13NoDirtinessRecheck) {
                continue;
            }
            reads.push((
                id,
                self.geo.slot_sector(slot),
                format::segment_len_bytes(info.len),
            ));
        }
        let job = self.writeback.as_mut().expect("a job");
        job.phase = WbPhase::Reading;
        job.pending = reads.len();
        for (id, sector, len) in reads {
            self.issue(
                DeviceRole::Cache,
                IoKind::Read { sector, len },
                Purpose::WritebackRead { id },
            );
        }
        if self.writeback.as_ref().is_some_and(|j| j.pending == 0) {
            self.write_batch();
        }
    }

    pub(crate) fn writeback_read_done(&mut self, id: u64, data: IoDone) {
        let IoDone::Read(image) = data else {
            panic!("a read returns data")
        };
        // Assert the data right after it is read: never write garbage to the backing device.
        let h = format::decode_segment_header(&image);
        if h.id != id || !format::segment_checksum_ok(&image) {
            let sector = self.geo.slot_sector(self.geo.slot_of(id));
            self.die(Error::Corrupt {
                role: DeviceRole::Cache,
                sector,
                what: format!("segment {id} read back for writeback fails its checksum"),
            });
            return;
        }
        let job = self.writeback.as_mut().expect("a job");
        job.images.insert(id, image);
        job.pending -= 1;
        if job.pending == 0 {
            self.write_batch();
        }
    }

    /// Every segment is read: write the blocks still live, sorted by backing address.
    fn write_batch(&mut self) {
        let job = self.writeback.as_mut().expect("a job");
        let images = std::mem::take(&mut job.images);
        // (block, idx, dirty, segment id, position), then laid out in block order.
        let mut live: Vec<(u64, u32, u8, u64, usize)> = Vec::new();
        let mut superseded = Vec::new();
        for (&id, image) in &images {
            let slot = self.geo.slot_of(id);
            for (idx, mb) in self.index.live_of_slot(slot) {
                live.push((mb.block, idx, mb.dirty, id, self.index.pos_of(idx)));
            }
            if quirk!(self, H13NoDirtinessRecheck) {
                // The seed wrote back what the segment's metablocks said, superseded or not.
                for pos in 0..self.slots[slot as usize].len {
                    let m = format::decode_metablock(image, pos);
                    if self.index.get(self.index.idx(slot, pos)).dirty == 0 && m.dirty_bits != 0 {
                        let mut b = [0u8; BLOCK_SIZE];
                        b.copy_from_slice(&image[(1 + pos) * BLOCK_SIZE..(2 + pos) * BLOCK_SIZE]);
                        superseded.push((m.sector / SECTORS_PER_BLOCK, m.dirty_bits, b));
                    }
                }
            }
        }
        live.sort_unstable_by_key(|&(block, ..)| block);
        let mut data = Vec::with_capacity(live.len() * BLOCK_SIZE);
        let mut items: Vec<(u64, u32, u8, usize)> = Vec::with_capacity(live.len());
        for &(block, idx, dirty, id, pos) in &live {
            items.push((block, idx, dirty, data.len()));
            data.extend_from_slice(&images[&id][(1 + pos) * BLOCK_SIZE..(2 + pos) * BLOCK_SIZE]);
        }
        let data = Arc::new(data);
        let mut writes = 0;
        for (sector, range) in backing_writes(&items) {
            self.issue_write(
                DeviceRole::Backing,
                sector,
                IoData::new(data.clone(), range),
                false,
                Purpose::WritebackWrite,
            );
            writes += 1;
        }
        let early =
            (writes > 0 && quirk!(self, WbFlushEarly) && !self.clocks.backing.flush_in_flight())
                .then(|| self.issue_backing_flush());
        let job = self.writeback.as_mut().expect("a job");
        job.items = items.iter().map(|&(b, idx, ..)| (b, idx)).collect();
        job.superseded = superseded;
        job.phase = WbPhase::Writing;
        job.pending = writes;
        job.early_flush = early;
    }

    pub(crate) fn writeback_write_done(&mut self) {
        if let Some(job) = self.writeback.as_mut() {
            job.pending -= 1;
        }
    }

    /// Every backing write completed: the superseded copies (quirk H13), then the flush.
    fn after_writes(&mut self) {
        let job = self.writeback.as_mut().expect("a job");
        if matches!(job.phase, WbPhase::Writing) && !job.superseded.is_empty() {
            let late = std::mem::take(&mut job.superseded);
            job.phase = WbPhase::LateWriting;
            for (block, dirty, b) in late {
                let buf = Arc::new(b.to_vec());
                for (sector, range) in dirty_runs(block, dirty) {
                    self.writeback.as_mut().expect("a job").pending += 1;
                    self.issue_write(
                        DeviceRole::Backing,
                        sector,
                        IoData::new(buf.clone(), range),
                        false,
                        Purpose::WritebackWrite,
                    );
                }
            }
            return;
        }
        let nothing_written = job.items.is_empty();
        if job.early_flush.is_some() {
            // The quirk's flush went out with the writes; it finishes the job when it completes.
            job.phase = WbPhase::Flushing;
            if job.early_flush_done {
                self.finish_writeback();
            }
            return;
        }
        if nothing_written || quirk!(self, DmCacheCommitBeforeFlush) {
            self.finish_writeback();
            return;
        }
        job.phase = WbPhase::Flushing;
        self.issue_backing_flush();
    }

    fn issue_backing_flush(&mut self) -> OpId {
        let covers = if quirk!(self, WbFlushEarly) {
            self.clocks.backing.issued()
        } else {
            self.clocks.backing.completed_prefix()
        };
        let op = self.issue(DeviceRole::Backing, IoKind::Flush, Purpose::BackingFlush);
        self.clocks.backing.flush_issued(op, covers);
        op
    }

    pub(crate) fn backing_flush_done(&mut self, op: OpId, _role: DeviceRole) {
        self.clocks.backing.flush_done(op);
        let Some(job) = self.writeback.as_mut() else {
            return;
        };
        if job.early_flush == Some(op) {
            job.early_flush_done = true;
        }
        let waiting = matches!(job.phase, WbPhase::Flushing)
            && (job.early_flush.is_none() || job.early_flush_done);
        if waiting {
            self.finish_writeback();
        }
    }

    /// The backing device holds the batch: drop its blocks that are still live, advance
    /// `last_writeback`. A written-back segment that also held superseded blocks means the
    /// record may pass it only once the log holding the newer copies is durable (H5).
    fn finish_writeback(&mut self) {
        let job = self.writeback.take().expect("a job");
        let superseded = (job.first..=job.target).any(|id| {
            let slot = self.geo.slot_of(id);
            (self.index.live_in_slot(slot) as usize) < self.slots[slot as usize].len
        });
        if superseded {
            crate::probe!(WritebackSkipsSuperseded);
            self.record_needs_log_for = job.target;
        }
        for &(block, idx) in &job.items {
            let mb = self.index.get(idx);
            if mb.dirty != 0 && self.index.lookup(block) == Some(idx) {
                self.index.remove(idx);
                // A whole block stays readable from the log until its slot is reused (R17).
                if mb.dirty == 0xFF {
                    let slot = self.index.slot_of(idx);
                    let copy = super::clean::CleanCopy {
                        slot,
                        pos: self.index.pos_of(idx),
                        seg: self.slots[slot as usize].id,
                        crc: mb.crc,
                    };
                    self.clean.note(block, copy);
                }
            }
        }
        self.sched.writebacks_finished += 1;
        self.sched.last_outcome = StepOutcome {
            segments: job.target - self.last_writeback,
            blocks: job.items.len() as u64,
        };
        self.last_writeback = job.target;
    }

    /// Starts making the record say `last_writeback`, unless it does or a record job runs.
    pub(crate) fn start_record(&mut self) -> bool {
        if self.record.is_some() {
            return true;
        }
        let (value, log_need) = self.record_limit();
        if value <= self.durable_record {
            return false;
        }
        self.sched.last_record_ms = self.sched.now_ms;
        let phase = if self.record_needs_log_for > self.durable_record
            && !quirk!(self, H5RecordAheadOfLog)
        {
            // Newer copies of blocks the written-back segments skipped must be durable first.
            crate::probe!(RecordWaitsLog);
            self.seal_open();
            RecPhase::WaitLog(self.segs.last_sealed.max(log_need))
        } else if log_need > self.segs.last_durable {
            RecPhase::WaitLog(log_need)
        } else {
            RecPhase::Backup
        };
        self.record = Some(RecordJob { value, phase });
        if matches!(self.record.as_ref().expect("set").phase, RecPhase::Backup) {
            self.write_record_copy(format::BACKUP_RECORD_BLOCK_SECTOR);
        }
        true
    }

    /// Rule R13: how far the record may go now, and how far the log must be durable before it
    /// does. dm-writeboost's replay applies every valid slot, those behind the record too, in
    /// ring order; applying a partly dirty copy over an older dirty copy of the same block
    /// writes the older copy's dirty sectors to the backing device; only then does it mark the
    /// segments up to the record clean. A recorded segment with a partly dirty block whose
    /// older copy still sits in a valid slot would so have its newer sectors overwritten for
    /// good. So the record passes such a segment only once every older slot was reused,
    /// durably: once segment `id + n - 1` is durable.
    pub(crate) fn record_limit(&self) -> (u64, u64) {
        let n = self.geo.nr_segments;
        assert!(
            self.last_writeback - self.durable_record <= n,
            "ring overrun"
        );
        let mut log_need = 0;
        for id in self.durable_record + 1..=self.last_writeback {
            let info = self.slots[self.geo.slot_of(id) as usize];
            assert_eq!(info.id, id, "a segment not recorded keeps its slot");
            if !info.partial || quirk!(self, PartialCopies) {
                continue;
            }
            let reused = id + n - 1;
            if reused > self.segs.last_sealed {
                crate::probe!(RecordHeldPartial);
                return (id - 1, log_need);
            }
            log_need = log_need.max(reused);
        }
        (self.last_writeback, log_need)
    }

    /// The record says all it may say now (R13 may keep it behind `last_writeback`).
    pub(crate) fn record_settled(&self) -> bool {
        self.record_limit().0 <= self.durable_record
    }

    pub(crate) fn record_durability_need(&self) -> Option<u64> {
        match self.record.as_ref()?.phase {
            RecPhase::WaitLog(t) => Some(t),
            _ => None,
        }
    }

    pub(crate) fn drive_record(&mut self) {
        let Some(RecordJob {
            phase: RecPhase::WaitLog(target),
            ..
        }) = self.record
        else {
            return;
        };
        let ready = if quirk!(self, RecordBeforeLog) {
            // The record goes out once the log's writes were submitted, not once durable.
            self.segs.oldest_unissued().is_none_or(|id| id > target)
        } else {
            self.segs.last_durable >= target
        };
        if ready {
            self.record.as_mut().expect("a job").phase = RecPhase::Backup;
            self.write_record_copy(format::BACKUP_RECORD_BLOCK_SECTOR);
        }
    }

    fn write_record_copy(&mut self, sector: u64) {
        crate::probe!(RecordWrite);
        let value = self.record.as_ref().expect("a job").value;
        let block = format::encode_record_block(&format::RecordExt {
            last_writeback_id: value,
            flags: 0,
            generation: self.generation,
        });
        self.issue_write(
            DeviceRole::Cache,
            sector,
            IoData::from_vec(block.to_vec()),
            true,
            Purpose::RecordWrite,
        );
    }

    /// A record copy's FUA write completed: the primary follows the backup; then the record is
    /// durable.
    pub(crate) fn record_write_done(&mut self) {
        let Some(job) = self.record.as_mut() else {
            return;
        };
        match job.phase {
            RecPhase::Backup => {
                job.phase = RecPhase::Primary;
                self.write_record_copy(format::RECORD_BLOCK_SECTOR);
            }
            RecPhase::Primary => {
                let value = job.value;
                self.record = None;
                assert!(value > self.durable_record, "the record only grows");
                self.durable_record = value;
                self.bypass.prune(value);
                if self.record_needs_log_for <= value {
                    self.record_needs_log_for = 0;
                }
            }
            RecPhase::WaitLog(_) => unreachable!("no write is in flight while waiting for the log"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_whole_blocks_go_out_as_one_write_and_partial_ones_alone() {
        let b = BLOCK_SIZE;
        // Blocks 4, 5, 6 whole; 7 partly dirty (sectors 1 and 2); 8 whole; 10 whole.
        let items = [
            (4, 0, 0xFF, 0),
            (5, 0, 0xFF, b),
            (6, 0, 0xFF, 2 * b),
            (7, 0, 0b0000_0110, 3 * b),
            (8, 0, 0xFF, 4 * b),
            (10, 0, 0xFF, 5 * b),
        ];
        assert_eq!(
            backing_writes(&items),
            [
                (32, 0..3 * b),
                (57, 3 * b + 512..3 * b + 1536),
                (64, 4 * b..5 * b),
                (80, 5 * b..6 * b),
            ]
        );
    }

    #[test]
    fn a_run_stops_at_its_byte_bound() {
        let n = MAX_WRITEBACK_RUN / BLOCK_SIZE + 3;
        let items: Vec<_> = (0..n as u64)
            .map(|k| (k, 0, 0xFF, k as usize * BLOCK_SIZE))
            .collect();
        let w = backing_writes(&items);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0], (0, 0..MAX_WRITEBACK_RUN));
        assert_eq!(w[1].1.len(), 3 * BLOCK_SIZE);
    }
}
