//! What an oracle reports when the device holds something it may not.

use crate::OpId;
use std::fmt;
use thiserror::Error;

/// Which oracle found the violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Oracle {
    /// contract rule 3, docs/DESIGN.md: per sector, the durable value or a later one.
    Block,
    /// contract rule 4, docs/DESIGN.md: the whole device is the state after a prefix of the writes.
    Prefix,
}

impl fmt::Display for Oracle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Oracle::Block => "block",
            Oracle::Prefix => "prefix",
        })
    }
}

/// Where the bytes observed in a sector came from, as far as the history tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The device's initial content of this sector.
    Initial,
    /// The data that write `OpId` put into this sector (the latest such write if several match).
    Write(OpId),
    /// The initial content of another sector.
    InitialOfSector(u64),
    /// The data a write put into another sector.
    WriteToSector { op: OpId, sector: u64 },
    /// Bytes that were never written anywhere.
    Unknown,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Initial => f.write_str("initial content"),
            Origin::Write(op) => write!(f, "data of {op}"),
            Origin::InitialOfSector(s) => write!(f, "initial content of sector {s}"),
            Origin::WriteToSector { op, sector } => write!(f, "data of {op} for sector {sector}"),
            Origin::Unknown => f.write_str("never written here"),
        }
    }
}

/// The observed device breaks an oracle.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Violation {
    #[error("{oracle} oracle: observed image is {observed} bytes, the device has {expected}")]
    SizeMismatch {
        oracle: Oracle,
        expected: usize,
        observed: usize,
    },
    /// `sector` is the first sector (in address order) at which the oracle failed.
    #[error("{oracle} oracle: sector {sector} holds {observed} ({origin}); allowed: {allowed}")]
    BadSector {
        oracle: Oracle,
        sector: u64,
        /// Short hex rendering of the observed bytes.
        observed: String,
        origin: Origin,
        /// What the oracle would have accepted there.
        allowed: String,
    },
}

impl Violation {
    pub fn oracle(&self) -> Oracle {
        match self {
            Violation::SizeMismatch { oracle, .. } | Violation::BadSector { oracle, .. } => *oracle,
        }
    }

    /// The first bad sector, if the violation is about a sector.
    pub fn sector(&self) -> Option<u64> {
        match self {
            Violation::SizeMismatch { .. } => None,
            Violation::BadSector { sector, .. } => Some(*sector),
        }
    }

    pub fn origin(&self) -> Option<Origin> {
        match self {
            Violation::SizeMismatch { .. } => None,
            Violation::BadSector { origin, .. } => Some(*origin),
        }
    }
}
