//! What a client did to the exported device, and which of it is durable (contract rule 2, docs/DESIGN.md).

use crate::access::{check, sector_range, AccessError};
use crate::{ModelDisk, SECTOR_SIZE};
use std::fmt;
use thiserror::Error;

/// Identifies one client operation of a [`History`]: its index, in submission order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u64);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op#{}", self.0)
    }
}

/// A client request. Discard and write-zeroes are writes of zero bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    Write {
        sector: u64,
        data: Vec<u8>,
        fua: bool,
    },
    Flush,
}

/// Where an operation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpStatus {
    /// Submitted, not yet answered. Only the last operation can be in flight; a crash may leave it
    /// so, and then its data may or may not be on the device.
    InFlight,
    /// Acknowledged by the engine.
    Completed,
    /// The engine answered with an error: not acknowledged, so (like an in-flight write) its data
    /// may or may not be on the device.
    Failed,
}

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub id: OpId,
    pub kind: OpKind,
    pub status: OpStatus,
}

impl Op {
    /// `(sector, sectors)` of a write, `None` for a flush.
    pub fn write_range(&self) -> Option<(u64, u64)> {
        match &self.kind {
            OpKind::Write { sector, data, .. } => {
                Some((*sector, (data.len() / SECTOR_SIZE) as u64))
            }
            OpKind::Flush => None,
        }
    }
}

/// How far into a history a crash happened: the first `begun` operations had been submitted, and
/// every one of them but possibly the last had been answered. `last_ended` says whether the last
/// one had been answered too (a crash simulator derives this from its operation log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpCut {
    pub begun: usize,
    pub last_ended: bool,
}

/// A misuse of [`History`].
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum HistoryError {
    #[error("initial image of {len} bytes is not whole sectors")]
    BadInitialImage { len: usize },
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("{in_flight} is still in flight; the client submits one operation at a time")]
    Busy { in_flight: OpId },
    #[error("{op} is not in flight")]
    NotInFlight { op: OpId },
    #[error("cut after {begun} operations, but the history has only {ops}")]
    CutOutOfRange { begun: usize, ops: usize },
    #[error("recovered image is {got} bytes, the device has {expected}")]
    ImageSize { expected: usize, got: usize },
}

/// The client's operations on one exported device of `size_sectors` sectors, in submission order,
/// with the device's initial content. The engine is synchronous, so at most one operation is in
/// flight; `begin_*` refuses a second one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    size_sectors: u64,
    initial: Vec<u8>,
    ops: Vec<Op>,
}

impl History {
    /// A history of a device whose content before the first operation is `initial`.
    pub fn new(initial: Vec<u8>) -> Result<Self, HistoryError> {
        if initial.len() % SECTOR_SIZE != 0 {
            return Err(HistoryError::BadInitialImage { len: initial.len() });
        }
        Ok(History {
            size_sectors: (initial.len() / SECTOR_SIZE) as u64,
            initial,
            ops: Vec::new(),
        })
    }

    /// A history of a zero-filled device.
    pub fn zeroed(size_sectors: u64) -> Self {
        History {
            size_sectors,
            initial: vec![0; size_sectors as usize * SECTOR_SIZE],
            ops: Vec::new(),
        }
    }

    /// After a crash that the oracles accepted, the recovered image is what the device holds; the
    /// next epoch starts from it with no operations.
    pub fn restart_from(&self, recovered: Vec<u8>) -> Result<History, HistoryError> {
        if recovered.len() != self.initial.len() {
            return Err(HistoryError::ImageSize {
                expected: self.initial.len(),
                got: recovered.len(),
            });
        }
        History::new(recovered)
    }

    pub fn size_sectors(&self) -> u64 {
        self.size_sectors
    }

    pub fn initial(&self) -> &[u8] {
        &self.initial
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn op(&self, id: OpId) -> Option<&Op> {
        self.ops.get(usize::try_from(id.0).ok()?)
    }

    /// The operation submitted and not yet answered, if any.
    pub fn in_flight(&self) -> Option<OpId> {
        self.ops
            .last()
            .filter(|op| op.status == OpStatus::InFlight)
            .map(|op| op.id)
    }

    fn begin(&mut self, kind: OpKind) -> Result<OpId, HistoryError> {
        if let Some(in_flight) = self.in_flight() {
            return Err(HistoryError::Busy { in_flight });
        }
        let id = OpId(self.ops.len() as u64);
        self.ops.push(Op {
            id,
            kind,
            status: OpStatus::InFlight,
        });
        Ok(id)
    }

    /// Records the submission of a write of `data` (whole sectors) at `sector`.
    pub fn begin_write(
        &mut self,
        sector: u64,
        data: &[u8],
        fua: bool,
    ) -> Result<OpId, HistoryError> {
        check(self.size_sectors, sector, data.len())?;
        self.begin(OpKind::Write {
            sector,
            data: data.to_vec(),
            fua,
        })
    }

    /// Records a discard or write-zeroes of `sectors` sectors: a write of zeros.
    pub fn begin_write_zeroes(
        &mut self,
        sector: u64,
        sectors: u64,
        fua: bool,
    ) -> Result<OpId, HistoryError> {
        let range_error = AccessError::OutOfRange {
            sector,
            sectors,
            size: self.size_sectors,
        };
        if sectors > self.size_sectors {
            return Err(range_error.into());
        }
        let zeros = vec![0; sectors as usize * SECTOR_SIZE];
        self.begin_write(sector, &zeros, fua)
    }

    /// Records the submission of a FLUSH.
    pub fn begin_flush(&mut self) -> Result<OpId, HistoryError> {
        self.begin(OpKind::Flush)
    }

    fn end(&mut self, id: OpId, status: OpStatus) -> Result<(), HistoryError> {
        match self.in_flight() {
            Some(current) if current == id => {
                self.ops.last_mut().expect("an op is in flight").status = status;
                Ok(())
            }
            _ => Err(HistoryError::NotInFlight { op: id }),
        }
    }

    /// The engine acknowledged `id`.
    pub fn complete(&mut self, id: OpId) -> Result<(), HistoryError> {
        self.end(id, OpStatus::Completed)
    }

    /// The engine answered `id` with an error.
    pub fn fail(&mut self, id: OpId) -> Result<(), HistoryError> {
        self.end(id, OpStatus::Failed)
    }

    /// A write submitted and acknowledged.
    pub fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<OpId, HistoryError> {
        let id = self.begin_write(sector, data, fua)?;
        self.complete(id)?;
        Ok(id)
    }

    /// A FLUSH submitted and acknowledged.
    pub fn flush(&mut self) -> Result<OpId, HistoryError> {
        let id = self.begin_flush()?;
        self.complete(id)?;
        Ok(id)
    }

    /// The history as it stood at `cut`: later operations dropped, and the last kept one in flight
    /// unless the cut says it had ended.
    pub fn as_of(&self, cut: OpCut) -> Result<History, HistoryError> {
        if cut.begun > self.ops.len() {
            return Err(HistoryError::CutOutOfRange {
                begun: cut.begun,
                ops: self.ops.len(),
            });
        }
        let mut h = History {
            size_sectors: self.size_sectors,
            initial: self.initial.clone(),
            ops: self.ops[..cut.begun].to_vec(),
        };
        if !cut.last_ended {
            if let Some(last) = h.ops.last_mut() {
                last.status = OpStatus::InFlight;
            }
        }
        Ok(h)
    }

    /// Per operation: is it durable? A write is durable if it is a completed FUA write, or if it
    /// was acknowledged before a FLUSH began and that FLUSH completed. With one operation in flight
    /// at a time, "acknowledged before the FLUSH began" is "completed and submitted before it".
    pub fn durable_flags(&self) -> Vec<bool> {
        let last_flush_done = self
            .ops
            .iter()
            .rposition(|op| op.kind == OpKind::Flush && op.status == OpStatus::Completed);
        self.ops
            .iter()
            .enumerate()
            .map(|(i, op)| match &op.kind {
                OpKind::Write { fua, .. } => {
                    op.status == OpStatus::Completed
                        && (*fua || last_flush_done.is_some_and(|f| i < f))
                }
                OpKind::Flush => false,
            })
            .collect()
    }

    pub fn is_durable(&self, id: OpId) -> bool {
        usize::try_from(id.0)
            .ok()
            .is_some_and(|i| self.durable_flags().get(i).copied().unwrap_or(false))
    }

    /// What a read must return now (contract rule 1, docs/DESIGN.md): the initial content overlaid with every
    /// acknowledged write in order. In-flight and failed writes are left out.
    pub fn acknowledged_disk(&self) -> ModelDisk {
        let mut disk = ModelDisk::from_bytes(self.initial.clone()).expect("whole sectors");
        for op in &self.ops {
            if let (OpKind::Write { sector, data, .. }, OpStatus::Completed) = (&op.kind, op.status)
            {
                disk.write(*sector, data).expect("checked at submission");
            }
        }
        disk
    }

    /// The initial content of sector `s`.
    pub(crate) fn initial_sector(&self, s: u64) -> &[u8] {
        &self.initial[sector_range(s)]
    }

    /// The bytes write `op_index` put into sector `s`, if it covers `s`.
    pub(crate) fn written_sector(&self, op_index: usize, s: u64) -> Option<&[u8]> {
        match &self.ops[op_index].kind {
            OpKind::Write { sector, data, .. } => {
                let sectors = (data.len() / SECTOR_SIZE) as u64;
                (s >= *sector && s < sector + sectors).then(|| &data[sector_range(s - sector)])
            }
            OpKind::Flush => None,
        }
    }

    /// For every sector, the indices of the writes covering it, in submission order.
    pub(crate) fn writes_by_sector(&self) -> Vec<Vec<usize>> {
        let mut by_sector = vec![Vec::new(); self.size_sectors as usize];
        for (i, op) in self.ops.iter().enumerate() {
            if let Some((sector, sectors)) = op.write_range() {
                for s in sector..sector + sectors {
                    by_sector[s as usize].push(i);
                }
            }
        }
        by_sector
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_operation_in_flight_at_a_time() {
        let mut h = History::zeroed(8);
        let w = h.begin_write(0, &[1; 512], false).unwrap();
        assert_eq!(h.begin_flush(), Err(HistoryError::Busy { in_flight: w }));
        assert_eq!(
            h.complete(OpId(7)),
            Err(HistoryError::NotInFlight { op: OpId(7) })
        );
        h.complete(w).unwrap();
        assert_eq!(h.complete(w), Err(HistoryError::NotInFlight { op: w }));
        assert!(matches!(
            h.begin_write(7, &[0; 1024], false),
            Err(HistoryError::Access(AccessError::OutOfRange { .. }))
        ));
    }

    #[test]
    fn durability_follows_completed_flushes_and_fua() {
        let mut h = History::zeroed(8);
        let a = h.write(0, &[1; 512], false).unwrap();
        let b = h.write(1, &[2; 512], true).unwrap();
        let f = h.begin_flush().unwrap();
        // The FLUSH has not completed: only the FUA write is durable.
        assert!(!h.is_durable(a));
        assert!(h.is_durable(b));
        h.complete(f).unwrap();
        let c = h.write(2, &[3; 512], false).unwrap();
        assert!(h.is_durable(a));
        assert!(!h.is_durable(c));
        // A failed FUA write is not acknowledged, hence not durable.
        let d = h.begin_write(3, &[4; 512], true).unwrap();
        h.fail(d).unwrap();
        h.flush().unwrap();
        assert!(h.is_durable(c));
        assert!(!h.is_durable(d));
    }

    #[test]
    fn as_of_reopens_the_last_operation() {
        let mut h = History::zeroed(8);
        h.write(0, &[1; 512], false).unwrap();
        h.flush().unwrap();
        let cut = h
            .as_of(OpCut {
                begun: 2,
                last_ended: false,
            })
            .unwrap();
        assert_eq!(cut.in_flight(), Some(OpId(1)));
        assert!(!cut.is_durable(OpId(0)));
        assert!(h
            .as_of(OpCut {
                begun: 3,
                last_ended: true
            })
            .is_err());
    }

    #[test]
    fn acknowledged_disk_leaves_out_unanswered_writes() {
        let mut h = History::zeroed(2);
        h.write(0, &[1; 512], false).unwrap();
        h.begin_write(0, &[2; 1024], false).unwrap();
        assert_eq!(
            h.acknowledged_disk().bytes(),
            [[1u8; 512], [0u8; 512]].concat()
        );
    }
}
