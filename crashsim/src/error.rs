//! Typed errors of the simulator's own API (device I/O errors are `engine::IoError`).

use engine::DeviceRole;
use thiserror::Error;

/// A misuse of [`crate::World`] or its configuration.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SimError {
    #[error("the world already has a {0} device")]
    DuplicateDevice(DeviceRole),
    #[error("the world has no {0} device")]
    NoDevice(DeviceRole),
    #[error("{role} image of {len} bytes is not a non-empty whole number of sectors")]
    BadImage { role: DeviceRole, len: usize },
    #[error("{role} fault configuration: {detail}")]
    BadFault { role: DeviceRole, detail: String },
    #[error("bit {bit} of byte {byte} is outside the {role} device")]
    BitOutOfRange {
        role: DeviceRole,
        byte: u64,
        bit: u8,
    },
    #[error("crash point before #{before} is beyond the log ({log_len} operations)")]
    PointBeyondLog { before: u64, log_len: u64 },
    #[error("crash point before #{before} is behind the replayer (already before #{at})")]
    PointBehind { before: u64, at: u64 },
}

/// A crash choice that does not fit its crash state, or an enumeration that cannot be done.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ChoiceError {
    #[error("pending write {index} does not exist ({pending} pending)")]
    NoSuchPending { index: usize, pending: usize },
    #[error("pending write {index} is chosen twice")]
    Duplicate { index: usize },
    #[error("pending write {index} has {expected} atomic unit(s), the mask has {got}")]
    UnitMask {
        index: usize,
        expected: usize,
        got: usize,
    },
    #[error("bit flip: bit {bit} of byte {byte} is outside the {role} device image")]
    BadBitFlip {
        role: DeviceRole,
        byte: u64,
        bit: u8,
    },
    #[error("{pending} pending writes are too many to enumerate every subset (bound {bound})")]
    TooManyPending { pending: usize, bound: usize },
    #[error("cannot parse crash choice {text:?}: {detail}")]
    Parse { text: String, detail: String },
}
