//! wbcache engine: a deterministic write-back block cache in the dm-writeboost design, as a
//! pure state machine. Client requests, time and device completions go in; device operations
//! and client replies come out, as values ([`Engine`], docs/DESIGN.md "I/O as data"). The
//! engine owns no thread, clock, randomness, device or hash-order iteration, so the crash
//! simulator and the production runner drive the very same code; [`SyncEngine`] is the
//! smallest driver, on [`BlockDevice`]s.
//!
//! See docs/DESIGN.md for the state machine and its invariants and docs/FORMAT.md for the bytes.

pub mod cache;
pub mod device;
pub mod error;
pub mod format;
pub mod index;
pub mod inspect;
mod invariants;
pub mod io;
pub mod probes;
#[cfg(feature = "quirks")]
pub mod quirks;
pub mod recovery;
pub mod status;
pub mod sync;
pub mod tunables;

pub use cache::{Config, Engine, FormatPolicy, Reply, ReqId, Request, Step, StepOutcome};
pub use device::{Access, BlockDevice, DeviceRole, IoError, MemDevice, ReadReq, WriteReq};
pub use error::{Error, Result};
pub use inspect::{
    check, check_against_backing, check_with_plog, dump, dump_with_plog, CheckReport, Dump,
};
pub use io::{IoData, IoDone, IoKind, IoOp, IoResult, OpId};
pub use recovery::{format_device, format_device_with_plog, DeviceSizes, Opening, RecoveryReport};
pub use status::{Stats, Status};
pub use sync::SyncEngine;
pub use tunables::Tunables;

/// Whether this build of the engine carries the seed hazards (`quirks` feature, test builds
/// only). The runner reports it in `wbcache --version`.
pub const QUIRKS_COMPILED: bool = cfg!(feature = "quirks");
