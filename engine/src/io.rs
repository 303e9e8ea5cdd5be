//! I/O as data: the device operations the engine emits, what their completions carry back, and
//! the per-device bookkeeping that turns completions into durability.
//!
//! The engine never calls a device. It hands out [`IoOp`] values (an id, the device role, read /
//! write (with FUA) / flush); a driver performs them in any order and concurrently, and gives
//! each result back with [`crate::Engine::complete`]. A write's bytes are lent as [`IoData`]:
//! shared and immutable while the write is in flight, so the engine can still serve reads of
//! them from RAM (docs/DESIGN.md, "I/O as data").
//!
//! The one ordering rule everything else builds on lives in [`WriteClock`]: **a device flush
//! covers exactly the writes that had completed when it was issued**, so a write is durable
//! once it completed and a flush issued after that completion has completed (or at completion,
//! for a FUA write). Nothing in the engine waits for a submission.

use std::collections::BTreeSet;
use std::ops::{Deref, Range};
use std::sync::Arc;

use crate::device::{DeviceRole, IoError};

/// Identifies one device operation from issue to completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

impl std::fmt::Display for OpId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "op{}", self.0)
    }
}

/// The bytes of a write: a range of a shared buffer. The engine keeps its own handle while the
/// write is in flight and reclaims the buffer once the driver has dropped its handle.
#[derive(Clone, Debug)]
pub struct IoData {
    buf: Arc<Vec<u8>>,
    range: Range<usize>,
}

impl IoData {
    pub fn new(buf: Arc<Vec<u8>>, range: Range<usize>) -> Self {
        assert!(
            range.end <= buf.len(),
            "an I/O range lies inside its buffer"
        );
        IoData { buf, range }
    }

    pub fn from_vec(v: Vec<u8>) -> Self {
        let len = v.len();
        IoData {
            buf: Arc::new(v),
            range: 0..len,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }
}

impl Deref for IoData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// What to do.
#[derive(Clone, Debug)]
pub enum IoKind {
    /// Read `len` bytes (whole sectors) at `sector`; the completion carries them.
    Read { sector: u64, len: usize },
    /// Write `data` (whole sectors) at `sector`; durable at completion when `fua`.
    Write {
        sector: u64,
        data: IoData,
        fua: bool,
    },
    /// Make every write that completed before this flush was issued durable.
    Flush,
}

impl IoKind {
    /// The first sector and the bytes it covers (a flush covers none).
    pub fn extent(&self) -> (u64, usize) {
        match self {
            IoKind::Read { sector, len } => (*sector, *len),
            IoKind::Write { sector, data, .. } => (*sector, data.len()),
            IoKind::Flush => (0, 0),
        }
    }

    /// What kind of access it is, as device errors name it.
    pub fn access(&self) -> crate::device::Access {
        use crate::device::Access;
        match self {
            IoKind::Read { .. } => Access::Read,
            IoKind::Write { .. } => Access::Write,
            IoKind::Flush => Access::Flush,
        }
    }

    /// Where a plain (not FUA) write starts and ends, in sectors; `None` for anything else.
    pub fn plain_write_span(&self) -> Option<(u64, u64)> {
        match self {
            IoKind::Write {
                sector,
                data,
                fua: false,
            } => Some((*sector, sector + (data.len() / 512) as u64)),
            _ => None,
        }
    }
}

/// One device operation.
#[derive(Clone, Debug)]
pub struct IoOp {
    pub id: OpId,
    pub role: DeviceRole,
    pub kind: IoKind,
}

/// What a successful operation gives back.
#[derive(Debug, PartialEq, Eq)]
pub enum IoDone {
    Read(Vec<u8>),
    Write,
    Flush,
}

/// How an operation ended.
pub type IoResult = Result<IoDone, IoError>;

/// One device's writes in issue order, and what completions and flushes made of them.
///
/// Each write gets a sequence number when issued. `completed_prefix` is the longest run of
/// sequence numbers from 1 that have all completed; a flush issued now covers exactly that run
/// (rule R1), and once it completes that run is durable.
#[derive(Clone, Debug, Default)]
pub struct WriteClock {
    issued: u64,
    completed_prefix: u64,
    /// Completed writes above the prefix (completions arrive in any order).
    done_above: BTreeSet<u64>,
    durable_prefix: u64,
    /// The flush in flight and the prefix it covers.
    flush: Option<(OpId, u64)>,
    flushes: u64,
}

impl WriteClock {
    /// A new write: its sequence number.
    pub fn issue(&mut self) -> u64 {
        self.issued += 1;
        self.issued
    }

    pub fn complete(&mut self, seq: u64) {
        assert!(
            seq > self.completed_prefix && seq <= self.issued,
            "write {seq} completes once"
        );
        let fresh = self.done_above.insert(seq);
        assert!(fresh, "write {seq} completes once");
        while self.done_above.remove(&(self.completed_prefix + 1)) {
            self.completed_prefix += 1;
        }
    }

    pub fn completed(&self, seq: u64) -> bool {
        seq <= self.completed_prefix || self.done_above.contains(&seq)
    }

    pub fn durable(&self, seq: u64) -> bool {
        seq <= self.durable_prefix
    }

    pub fn issued(&self) -> u64 {
        self.issued
    }

    pub fn completed_prefix(&self) -> u64 {
        self.completed_prefix
    }

    pub fn durable_prefix(&self) -> u64 {
        self.durable_prefix
    }

    pub fn flush_in_flight(&self) -> bool {
        self.flush.is_some()
    }

    /// Whether a flush issued now would make something durable that is not.
    pub fn flush_would_help(&self) -> bool {
        self.completed_prefix > self.durable_prefix
    }

    /// A flush is issued covering `covers` (the completed prefix, unless a seed quirk lies).
    pub fn flush_issued(&mut self, op: OpId, covers: u64) {
        assert!(self.flush.is_none(), "one flush in flight per device");
        self.flush = Some((op, covers));
    }

    /// The flush in flight completed: what it covered is durable.
    pub fn flush_done(&mut self, op: OpId) {
        let (id, covers) = self.flush.take().expect("a flush was in flight");
        assert_eq!(id, op, "the flush that completes is the one in flight");
        self.durable_prefix = self.durable_prefix.max(covers);
        self.flushes += 1;
    }

    /// The flush in flight failed: nothing more is durable.
    pub fn flush_failed(&mut self, op: OpId) {
        let (id, _) = self.flush.take().expect("a flush was in flight");
        assert_eq!(id, op);
    }

    pub fn flushes(&self) -> u64 {
        self.flushes
    }
}

/// The sector ranges of the writes in flight on one device, which never overlap (rule R0: a
/// write that would overlap one in flight waits until that one completes, so the device's
/// final content never depends on the order two writes complete in).
#[derive(Clone, Debug, Default)]
pub struct Extents {
    /// start sector -> (end sector, op)
    by_start: std::collections::BTreeMap<u64, (u64, OpId)>,
}

impl Extents {
    /// Whether `[start, end)` overlaps a write in flight.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.by_start
            .range(..end)
            .next_back()
            .is_some_and(|(_, &(e, _))| e > start)
    }

    pub fn insert(&mut self, start: u64, end: u64, op: OpId) {
        debug_assert!(!self.overlaps(start, end), "writes in flight never overlap");
        self.by_start.insert(start, (end, op));
    }

    pub fn remove(&mut self, start: u64) {
        self.by_start.remove(&start);
    }

    pub fn len(&self) -> usize {
        self.by_start.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }
}

/// The three devices' clocks.
#[derive(Clone, Debug, Default)]
pub struct Clocks {
    pub cache: WriteClock,
    pub backing: WriteClock,
    pub plog: WriteClock,
}

impl Clocks {
    pub fn of(&mut self, role: DeviceRole) -> &mut WriteClock {
        match role {
            DeviceRole::Cache => &mut self.cache,
            DeviceRole::Backing => &mut self.backing,
            DeviceRole::Plog => &mut self.plog,
        }
    }

    pub fn get(&self, role: DeviceRole) -> &WriteClock {
        match role {
            DeviceRole::Cache => &self.cache,
            DeviceRole::Backing => &self.backing,
            DeviceRole::Plog => &self.plog,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_find_overlaps() {
        let mut x = Extents::default();
        x.insert(10, 20, OpId(1));
        x.insert(30, 31, OpId(2));
        assert!(x.overlaps(19, 25) && x.overlaps(0, 11) && x.overlaps(30, 31));
        assert!(!x.overlaps(20, 30) && !x.overlaps(0, 10) && !x.overlaps(31, 40));
        x.remove(10);
        assert!(!x.overlaps(12, 13));
    }

    #[test]
    fn a_flush_covers_only_what_had_completed_when_it_was_issued() {
        let mut c = WriteClock::default();
        let (a, b, d) = (c.issue(), c.issue(), c.issue());
        c.complete(b);
        assert_eq!(c.completed_prefix(), 0, "a is still in flight");
        c.flush_issued(OpId(1), c.completed_prefix());
        c.complete(a);
        c.flush_done(OpId(1));
        assert!(
            !c.durable(a) && !c.durable(b),
            "a completed after the flush was issued"
        );
        assert!(c.flush_would_help());
        c.flush_issued(OpId(2), c.completed_prefix());
        c.flush_done(OpId(2));
        assert!(c.durable(a) && c.durable(b) && !c.durable(d));
        c.complete(d);
        assert!(c.completed(d) && !c.durable(d));
        assert_eq!(c.flushes(), 2);
    }
}
