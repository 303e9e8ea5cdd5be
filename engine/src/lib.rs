//! wbcache engine: a deterministic, single-threaded write-back block cache in the dm-writeboost
//! design. Requests and time go in; device operations come out through [`BlockDevice`]. The
//! engine owns no thread, clock, randomness or hash-order iteration, so the crash simulator and
//! the production runner drive the very same code.
//!
//! See docs/DESIGN.md for the state machine and its invariants and docs/FORMAT.md for the bytes.

pub mod background;
pub mod cache;
pub mod device;
pub mod error;
pub mod format;
pub mod index;
pub mod inspect;
mod invariants;
mod plog;
#[cfg(feature = "quirks")]
pub mod quirks;
pub mod read_many;
pub mod recovery;
pub mod status;
pub mod tunables;

pub use background::{Step, StepOutcome};
pub use cache::{Config, Engine, FormatPolicy};
pub use device::{BlockDevice, DeviceRole, IoError, IoOp, MemDevice, ReadReq, WriteReq};
pub use error::{Error, Result};
pub use inspect::{
    check, check_against_backing, check_with_plog, dump, dump_with_plog, CheckReport, Dump,
};
pub use recovery::{format_device, format_device_with_plog, RecoveryReport};
pub use status::{Stats, Status};
pub use tunables::Tunables;

/// Whether this build of the engine carries the seed hazards (`quirks` feature, test builds
/// only). The runner reports it in `wbcache --version`.
pub const QUIRKS_COMPILED: bool = cfg!(feature = "quirks");
