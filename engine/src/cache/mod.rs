//! The engine: a pure state machine in the manner of raft-rs's `RawNode` and quinn-proto's
//! `Connection`. It owns no device, thread or clock.
//!
//! Inputs: client requests ([`Engine::submit`], each with an id), time ([`Engine::tick`]),
//! background work the driver starts ([`Engine::start_step`]) and device completions
//! ([`Engine::complete`], in any order). Outputs, polled: device operations
//! ([`Engine::poll_io`]) and client replies ([`Engine::poll_reply`]).
//!
//! A driver loops: submit what arrived, hand out every operation `poll_io` yields, feed back
//! every completion, send every reply `poll_reply` yields. [`crate::SyncEngine`] is the
//! smallest driver: it completes each operation as it comes out, on `BlockDevice`s.
//!
//! Inside, every input ends in [`Engine::pump`], which moves each piece of work as far as the
//! completions so far allow: the client write queue (FIFO), durability waiters, the segment
//! pipeline, the writeback and record jobs, reads in flight. Each waits for completions, never
//! for submissions (docs/DESIGN.md, "Ordering rules").
//!
//! Modules: `segments` (open, sealed, written, durable; RAM buffers), `writes` (the write
//! queue and how a piece is placed), `reads`, `writeback` (the writeback and record jobs),
//! `schedule` (background steps, sync, drop_caches, shutdown), `plog` (type 1).

mod bypass;
mod clean;
mod fill;
mod plog;
mod reads;
mod schedule;
mod segments;
mod writeback;
mod writes;

use std::collections::{BTreeMap, VecDeque};

use crate::device::{DeviceRole, IoError};
use crate::error::{Error, Result};
use crate::format::{Geometry, SECTORS_PER_BLOCK, SECTOR_SIZE};
use crate::index::Index;
use crate::io::{Clocks, IoData, IoDone, IoKind, IoOp, IoResult, OpId};
use crate::status::Stats;
use crate::tunables::Tunables;

pub(crate) use plog::{Plog, PLOG_STAGE_BYTES};
pub use schedule::Step;
pub(crate) use segments::Segments;
pub(crate) use writeback::dirty_runs;
pub use writeback::StepOutcome;
pub(crate) use writes::QKind;

/// What to do with the cache device's content on open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatPolicy {
    /// Format a blank device (sector 0 all zero); recover a formatted one; refuse anything else.
    IfBlank,
    /// Recover a formatted device; refuse blank or unknown ones.
    Never,
    /// Format whatever is there (the user asked for it).
    Always,
}

/// Options for opening a cache.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Segment size order, used when formatting; a formatted device keeps its own.
    pub segment_size_order: u8,
    /// Number of RAM buffers (open + sealed segments whose writes have not completed).
    pub nr_rambuf_pool: usize,
    /// Tunables; `None` takes the seed's defaults for the device's order.
    pub tunables: Option<Tunables>,
    pub format: FormatPolicy,
    /// Written into the superblock when formatting; ties a future plog to this device. The
    /// engine has no randomness, so the driver picks it.
    pub generation: u64,
    /// Start writeback a batch before the ring is full (rule R12), so a client write rarely
    /// waits for a forced batch. On by default; off, writeback waits until a slot is needed,
    /// as upstream's does.
    pub write_back_ahead: bool,
    /// Seed hazards switched back on (test builds only).
    #[cfg(feature = "quirks")]
    pub quirks: crate::quirks::Quirks,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            segment_size_order: crate::format::UPSTREAM_ORDER,
            nr_rambuf_pool: 8,
            tunables: None,
            format: FormatPolicy::IfBlank,
            generation: 0,
            write_back_ahead: true,
            #[cfg(feature = "quirks")]
            quirks: crate::quirks::Quirks::none(),
        }
    }
}

/// Whether a seed hazard is switched on; always false without the `quirks` feature. A site
/// passed with its quirk on counts as that quirk's probe (`probes::Counts::quirk_site`), so
/// the zoo can show every quirk's own code ran.
macro_rules! quirk {
    ($engine:expr, $q:ident) => {{
        #[cfg(feature = "quirks")]
        let on = $engine.quirks.has(crate::quirks::Quirk::$q);
        #[cfg(all(feature = "quirks", feature = "probes"))]
        if on {
            crate::probes::hit_quirk_site(crate::quirks::Quirk::$q as usize);
        }
        #[cfg(not(feature = "quirks"))]
        let on = false;
        on
    }};
}
pub(crate) use quirk;

/// Identifies one client request from submission to reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReqId(pub u64);

/// A client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Read {
        sector: u64,
        len: usize,
    },
    /// With `fua`, answered only once the data (and everything acknowledged before) is durable.
    Write {
        sector: u64,
        data: Vec<u8>,
        fua: bool,
    },
    /// Answered once every write acknowledged before it arrived is durable.
    Flush,
    /// The sectors read as zeros afterwards, before and after a crash (it goes through the log
    /// like a write of zeros, so no stale cached copy can reappear).
    Discard {
        sector: u64,
        sectors: u64,
    },
    WriteZeroes {
        sector: u64,
        sectors: u64,
        fua: bool,
    },
    /// Write back every dirty block and record it (`drop_caches` run to the end): answered
    /// once the cache is clean, with every write acknowledged before it on the backing device
    /// and the backing device flushed. The engine starts the steps this needs itself: it is
    /// the one drain every driver, tool and test uses.
    Drain,
}

/// The answer to a request: `Some(data)` for a read.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub id: ReqId,
    pub result: Result<Option<Vec<u8>>>,
}

/// What a slot of the cache device holds, as far as the engine knows.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SlotInfo {
    pub id: u64,
    pub len: usize,
    /// Some block of the segment is partly dirty (bits neither 0 nor 255): rule R13 holds the
    /// record back behind it.
    pub partial: bool,
}

/// Why an operation is in flight: where its completion goes.
#[derive(Clone, Debug)]
pub(crate) enum Purpose {
    /// A sealed segment's write.
    SegmentWrite {
        id: u64,
    },
    /// A cache-device flush covering the segments written so far.
    CacheFlush,
    /// The plog stage, written as one write.
    PlogWrite,
    PlogFlush,
    /// A device read of client read `req`: a backing range (`part` < its backing parts) or a
    /// cached block.
    Read {
        req: ReqId,
        part: usize,
    },
    /// The older copy of the head write's block, for a partial overwrite.
    MergeRead,
    /// The backing data of the head write's block, to make its copy whole (R14).
    FillRead,
    /// Quirk H12: the older copy's dirty sectors written to the backing device in the
    /// foreground; quirk H14: a discard that goes to the backing device only.
    ForegroundBacking,
    WritebackRead {
        id: u64,
    },
    WritebackWrite,
    BackingFlush,
    /// A client write of a sequential stream sent straight to the backing device.
    BypassWrite {
        req: ReqId,
    },
    RecordWrite,
    /// Recovery: a valid cache segment read back to be written again with rebuilt ones.
    LoadSegment {
        id: u64,
    },
}

struct Inflight {
    role: DeviceRole,
    /// A write's first sector, while it is in flight (rule R0).
    write_start: Option<u64>,
    purpose: Purpose,
    /// The write's sequence number on its device (writes only).
    seq: Option<u64>,
    /// A read of this slot is in flight: it may not be reused yet.
    pinned_slot: Option<u64>,
}

pub struct Engine {
    pub(crate) geo: Geometry,
    /// Data blocks per segment.
    pub(crate) n: usize,
    pub(crate) backing_sectors: u64,
    pub(crate) generation: u64,
    pub(crate) tunables: Tunables,
    pub(crate) index: Index,
    pub(crate) slots: Vec<SlotInfo>,
    /// Reads of each slot in flight: a slot is not reused while one is.
    slot_pins: Vec<u32>,
    pub(crate) segs: Segments,
    pub(crate) last_writeback: u64,
    pub(crate) durable_record: u64,
    /// The last writeback that skipped superseded blocks (0: none pending): the record may
    /// pass it only once the whole log is durable (H5).
    pub(crate) record_needs_log_for: u64,
    pub(crate) next_op: u64,
    outbox: VecDeque<IoOp>,
    /// Writes in flight, per device (rule R0), and writes that wait for an overlapping one.
    extents: [crate::io::Extents; 3],
    deferred: VecDeque<IoOp>,
    inflight: BTreeMap<OpId, Inflight>,
    pub(crate) clocks: Clocks,
    pub(crate) writes: writes::WriteQueue,
    pub(crate) bypass: bypass::Bypass,
    /// Blocks written back whose logged copy is still readable (R17).
    pub(crate) clean: clean::CleanCopies,
    reads: BTreeMap<ReqId, reads::ReadJob>,
    replies: VecDeque<Reply>,
    pub(crate) writeback: Option<writeback::WritebackJob>,
    pub(crate) record: Option<writeback::RecordJob>,
    pub(crate) sched: schedule::Schedule,
    pub(crate) dead: Option<String>,
    /// The error the cache died of.
    pub(crate) dead_error: Option<Error>,
    pub(crate) stats: Stats,
    pub(crate) plog: Option<Plog>,
    /// [`Config::write_back_ahead`].
    pub(crate) write_back_ahead: bool,
    #[cfg(feature = "quirks")]
    pub(crate) quirks: crate::quirks::Quirks,
}

fn role_index(role: DeviceRole) -> usize {
    match role {
        DeviceRole::Cache => 0,
        DeviceRole::Backing => 1,
        DeviceRole::Plog => 2,
    }
}

/// Bit mask of sectors `[first, first + count)` of a block.
pub(crate) fn sector_mask(first: usize, count: usize) -> u8 {
    debug_assert!(first + count <= SECTORS_PER_BLOCK as usize && count > 0);
    (((1u16 << count) - 1) << first) as u8
}

/// The block pieces of an extent, in address order: (block, first sector in block, sectors,
/// byte offset in the extent).
pub(crate) fn pieces(
    sector: u64,
    sectors: u64,
) -> impl Iterator<Item = (u64, usize, usize, usize)> {
    let end = sector + sectors;
    let mut s = sector;
    let mut off = 0usize;
    std::iter::from_fn(move || {
        if s >= end {
            return None;
        }
        let block = s / SECTORS_PER_BLOCK;
        let first = (s % SECTORS_PER_BLOCK) as usize;
        let count = ((SECTORS_PER_BLOCK - first as u64).min(end - s)) as usize;
        let piece = (block, first, count, off);
        s += count as u64;
        off += count * SECTOR_SIZE;
        Some(piece)
    })
}

/// What the engine is built from once recovery has decided: used by `recovery::open`.
pub(crate) struct Parts {
    pub geo: Geometry,
    pub backing_sectors: u64,
    pub generation: u64,
    pub tunables: Tunables,
    pub pool: usize,
    pub plog: Option<Plog>,
    pub write_back_ahead: bool,
    #[cfg(feature = "quirks")]
    pub quirks: crate::quirks::Quirks,
}

impl Engine {
    pub(crate) fn new(p: Parts) -> Engine {
        let n = p.geo.blocks_per_segment();
        Engine {
            geo: p.geo,
            n,
            backing_sectors: p.backing_sectors,
            generation: p.generation,
            tunables: p.tunables,
            index: Index::new(p.geo.nr_segments, n),
            slots: vec![SlotInfo::default(); p.geo.nr_segments as usize],
            slot_pins: vec![0; p.geo.nr_segments as usize],
            segs: Segments::new(p.pool, p.geo.segment_bytes()),
            last_writeback: 0,
            durable_record: 0,
            record_needs_log_for: 0,
            next_op: 1,
            outbox: VecDeque::new(),
            extents: Default::default(),
            deferred: VecDeque::new(),
            inflight: BTreeMap::new(),
            clocks: Clocks::default(),
            writes: writes::WriteQueue::default(),
            bypass: bypass::Bypass::default(),
            clean: clean::CleanCopies::new(p.geo.nr_segments, n),
            reads: BTreeMap::new(),
            replies: VecDeque::new(),
            writeback: None,
            record: None,
            sched: schedule::Schedule::default(),
            dead: None,
            dead_error: None,
            stats: Stats::default(),
            plog: p.plog,
            write_back_ahead: p.write_back_ahead,
            #[cfg(feature = "quirks")]
            quirks: p.quirks,
        }
    }

    // ----- the interface -----

    /// Size of the exported device in sectors (the backing device's size).
    pub fn size_sectors(&self) -> u64 {
        self.backing_sectors
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn is_dead(&self) -> bool {
        self.dead.is_some()
    }

    /// 0: RAM buffers only; 1: with a persistent log.
    pub fn cache_type(&self) -> u8 {
        self.plog.is_some() as u8
    }

    /// A client request. Requests outside the device or not whole sectors are answered at once
    /// with an error; everything else is answered through [`Engine::poll_reply`].
    pub fn submit(&mut self, id: ReqId, req: Request) {
        if let Err(e) = self.check_request(&req) {
            self.reply(id, Err(e));
            return;
        }
        if let Some(cause) = &self.dead {
            let e = Error::Dead {
                cause: cause.clone(),
            };
            self.reply(id, Err(e));
            return;
        }
        let backing_only =
            matches!(req, Request::Discard { .. }) && quirk!(self, H14DiscardBackingOnly);
        let stream = match &req {
            Request::Write { sector, data, .. } => {
                let cutoff = self.tunables.sequential_cutoff;
                self.bypass.observe(*sector, data.len() as u64, cutoff)
            }
            _ => false,
        };
        match req {
            Request::Read { sector, len } => self.start_read(id, sector, len),
            other => self.writes.push(id, other, stream),
        }
        if backing_only {
            // The seed passed discards to the backing device only.
            self.writes.make_backing_discard(id);
        }
        self.pump();
    }

    /// The next device operation to perform, if any.
    pub fn poll_io(&mut self) -> Option<IoOp> {
        self.outbox.pop_front()
    }

    /// The next reply to send, if any.
    pub fn poll_reply(&mut self) -> Option<Reply> {
        self.replies.pop_front()
    }

    /// Operations handed out and not completed yet.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Nothing to hand out, nothing in flight, nothing waiting: a driver that completes every
    /// operation it is given has nothing more to do until the next input.
    pub fn is_idle(&self) -> bool {
        self.outbox.is_empty() && self.inflight.is_empty() && self.replies.is_empty()
    }

    /// A device operation finished. Completions may come in any order; each operation
    /// completes exactly once.
    pub fn complete(&mut self, op: OpId, result: IoResult) {
        let f = self
            .inflight
            .remove(&op)
            .unwrap_or_else(|| panic!("{op} completes once and was issued by this engine"));
        if let Some(slot) = f.pinned_slot {
            self.slot_pins[slot as usize] -= 1;
        }
        if let Some(start) = f.write_start {
            self.extents[role_index(f.role)].remove(start);
            self.release_deferred();
        }
        let data = match result {
            Ok(d) => d,
            Err(e) => {
                self.failed(op, f, e);
                self.pump();
                return;
            }
        };
        if let Some(seq) = f.seq {
            self.clocks.of(f.role).complete(seq);
        }
        if self.dead.is_some() {
            // Completions after death change nothing.
            return;
        }
        self.completed(op, f, data);
        self.pump();
    }

    // ----- plumbing -----

    fn check_request(&self, req: &Request) -> Result<()> {
        let (sector, bytes) = match *req {
            Request::Read { sector, len } => (sector, len as u64),
            Request::Write {
                sector, ref data, ..
            } => (sector, data.len() as u64),
            Request::Flush | Request::Drain => return Ok(()),
            Request::Discard { sector, sectors }
            | Request::WriteZeroes {
                sector, sectors, ..
            } => {
                let bytes = sectors
                    .checked_mul(SECTOR_SIZE as u64)
                    .ok_or(Error::OutOfRange {
                        sector,
                        sectors,
                        size: self.backing_sectors,
                    })?;
                (sector, bytes)
            }
        };
        if bytes % SECTOR_SIZE as u64 != 0 {
            return Err(Error::Unaligned {
                len: bytes as usize,
            });
        }
        let sectors = bytes / SECTOR_SIZE as u64;
        match sector.checked_add(sectors) {
            Some(end) if end <= self.backing_sectors => Ok(()),
            _ => Err(Error::OutOfRange {
                sector,
                sectors,
                size: self.backing_sectors,
            }),
        }
    }

    pub(crate) fn reply(&mut self, id: ReqId, result: Result<Option<Vec<u8>>>) {
        self.replies.push_back(Reply { id, result });
    }

    /// Hands out a device operation.
    pub(crate) fn issue(&mut self, role: DeviceRole, kind: IoKind, purpose: Purpose) -> OpId {
        self.issue_pinned(role, kind, purpose, None)
    }

    /// Hands out a read of `slot` that keeps the slot from being reused until it completes.
    pub(crate) fn issue_pinned(
        &mut self,
        role: DeviceRole,
        kind: IoKind,
        purpose: Purpose,
        pinned_slot: Option<u64>,
    ) -> OpId {
        let id = OpId(self.next_op);
        self.next_op += 1;
        let (seq, extent) = match &kind {
            IoKind::Write { sector, data, .. } => {
                debug_assert_eq!(data.len() % SECTOR_SIZE, 0, "whole sectors");
                let end = sector + (data.len() / SECTOR_SIZE) as u64;
                (Some(self.clocks.of(role).issue()), Some((*sector, end)))
            }
            IoKind::Read { .. } | IoKind::Flush => (None, None),
        };
        if let Some(slot) = pinned_slot {
            self.slot_pins[slot as usize] += 1;
        }
        self.inflight.insert(
            id,
            Inflight {
                role,
                write_start: None,
                purpose,
                seq,
                pinned_slot,
            },
        );
        let op = IoOp { id, role, kind };
        match extent {
            Some((start, end)) if self.extents[role_index(role)].overlaps(start, end) => {
                // Rule R0: it waits for the overlapping write to complete.
                self.deferred.push_back(op);
            }
            Some((start, end)) => self.hand_out_write(op, start, end),
            None => self.outbox.push_back(op),
        }
        id
    }

    fn hand_out_write(&mut self, op: IoOp, start: u64, end: u64) {
        self.extents[role_index(op.role)].insert(start, end, op.id);
        self.inflight
            .get_mut(&op.id)
            .expect("registered")
            .write_start = Some(start);
        self.outbox.push_back(op);
    }

    /// Hands out the deferred writes that no longer overlap a write in flight, in order.
    fn release_deferred(&mut self) {
        let mut still = VecDeque::new();
        while let Some(op) = self.deferred.pop_front() {
            let IoKind::Write {
                sector, ref data, ..
            } = op.kind
            else {
                unreachable!("only writes are deferred")
            };
            let end = sector + (data.len() / SECTOR_SIZE) as u64;
            let blocked = self.extents[role_index(op.role)].overlaps(sector, end)
                || still.iter().any(|o: &IoOp| {
                    o.role == op.role
                        && matches!(&o.kind, IoKind::Write { sector: s, data: d, .. }
                            if *s < end && sector < s + (d.len() / SECTOR_SIZE) as u64)
                });
            if blocked {
                still.push_back(op);
            } else {
                self.hand_out_write(op, sector, end);
            }
        }
        self.deferred = still;
    }

    pub(crate) fn issue_write(
        &mut self,
        role: DeviceRole,
        sector: u64,
        data: IoData,
        fua: bool,
        purpose: Purpose,
    ) -> (OpId, u64) {
        let op = self.issue(role, IoKind::Write { sector, data, fua }, purpose);
        let seq = self.inflight[&op]
            .seq
            .expect("a write has a sequence number");
        (op, seq)
    }

    pub(crate) fn slot_pinned(&self, slot: u64) -> bool {
        self.slot_pins[slot as usize] > 0
    }

    /// Routes a successful completion to the work it belongs to.
    fn completed(&mut self, op: OpId, f: Inflight, data: IoDone) {
        let role = f.role;
        match f.purpose {
            Purpose::SegmentWrite { id } => {
                self.segment_written(id, f.seq.expect("a write has a sequence number"))
            }
            Purpose::CacheFlush => self.cache_flush_done(op),
            Purpose::PlogWrite => {}
            Purpose::PlogFlush => self.plog_flush_done(op),
            Purpose::Read { req, part } => self.read_part_done(req, part, data),
            Purpose::MergeRead => self.merge_read_done(data),
            Purpose::FillRead => self.fill_read_done(op, data),
            Purpose::ForegroundBacking => self.writes.foreground_done(),
            Purpose::WritebackRead { id } => self.writeback_read_done(id, data),
            Purpose::WritebackWrite => self.writeback_write_done(),
            Purpose::BackingFlush => self.backing_flush_done(op, role),
            Purpose::BypassWrite { req } => self.bypass_write_done(req),
            Purpose::RecordWrite => self.record_write_done(),
            Purpose::LoadSegment { id } => self.load_segment_done(id, data),
        }
    }

    /// A device operation failed: the cache is dead. Every request waiting for something
    /// fails with the error; nothing more is issued.
    fn failed(&mut self, op: OpId, f: Inflight, e: IoError) {
        if f.purpose_is_flush() {
            self.clocks.of(f.role).flush_failed(op);
        }
        let err = Error::Io {
            role: f.role,
            source: e,
        };
        if let Purpose::SegmentWrite { id } = f.purpose {
            // The buffer comes back; the write never completed.
            self.segs.write_failed(id);
        }
        self.die(err);
    }

    /// Marks the cache dead (the first cause wins) and fails everything waiting.
    pub(crate) fn die(&mut self, err: Error) {
        match err {
            Error::Io { .. } => crate::probe!(DeadIo),
            Error::Corrupt { .. } => crate::probe!(DeadCorrupt),
            _ => {}
        }
        if self.dead.is_none() {
            self.dead = Some(err.to_string());
            self.dead_error = Some(err.clone());
        }
        for id in self.writes.drain_ids() {
            self.reply(id, Err(err.clone()));
        }
        for id in std::mem::take(&mut self.reads).into_keys() {
            self.reply(id, Err(err.clone()));
        }
        for id in self.sched.drain_waiter_ids() {
            self.reply(id, Err(err.clone()));
        }
        for id in std::mem::take(&mut self.sched.drains) {
            self.reply(id, Err(err.clone()));
        }
        for id in self.bypass.drain_ids() {
            self.reply(id, Err(err.clone()));
        }
        self.writeback = None;
        self.record = None;
    }

    /// Moves every piece of work as far as the completions so far allow. Bounded: each pass
    /// either makes progress (placing a piece, issuing an operation, answering a waiter,
    /// finishing a phase) or stops.
    pub(crate) fn pump(&mut self) {
        if self.dead.is_some() {
            return;
        }
        // Each round does a bounded amount of work; more rounds are needed only when a round
        // unblocked something (a slot freed, a buffer freed). A generous bound keeps a
        // logic error from spinning forever.
        for _ in 0..64 {
            let before = self.progress_mark();
            self.pump_writes();
            self.drive_shutdown();
            self.issue_due_segment_writes();
            self.drive_writeback();
            self.drive_record();
            self.drive_cache_durability();
            self.drive_plog_durability();
            self.drive_backing_durability();
            self.answer_waiters();
            self.finish_drain_if_done();
            self.drive_drain();
            if self.dead.is_some() || self.progress_mark() == before {
                return;
            }
        }
    }

    /// Changes whenever a pump round did something.
    fn progress_mark(&self) -> [u64; 8] {
        [
            self.next_op,
            self.replies.len() as u64,
            self.writes.len() as u64,
            self.segs.last_sealed.wrapping_mul(1024) ^ self.segs.open_len() as u64,
            self.last_writeback ^ self.durable_record.rotate_left(32),
            self.sched.waiters.len() as u64,
            self.jobs_mark(),
            self.segs.last_durable,
        ]
    }
}

impl Inflight {
    fn purpose_is_flush(&self) -> bool {
        matches!(
            self.purpose,
            Purpose::CacheFlush | Purpose::PlogFlush | Purpose::BackingFlush
        )
    }
}
