//! Reference oracles for wbcache (the contract, docs/DESIGN.md): small, obviously correct models of what the exported
//! device may return.
//!
//! - [`History`] records what a client did (writes, FUA writes, FLUSHes and which of them the
//!   engine acknowledged) and decides which writes are durable.
//! - [`check_block`] is the per-sector oracle (§4.3): after a crash each sector holds its durable
//!   value or something written to it later.
//! - [`check_prefix`] is the stronger whole-device oracle (§4.4): the device equals the state after
//!   some prefix of the writes that contains every durable one.
//! - [`ModelDisk`] is a plain in-memory disk: what a read must return while running (§4.1).
//!
//! Nothing here knows the engine: the oracles compare bytes against the recorded history.

mod access;
mod block_oracle;
mod describe;
mod history;
mod model_disk;
mod observed;
mod prefix_oracle;
mod violation;

pub use access::AccessError;
pub use block_oracle::{check_block, BlockOracle};
pub use history::{History, HistoryError, Op, OpCut, OpId, OpKind, OpStatus};
pub use model_disk::ModelDisk;
pub use observed::Observed;
pub use prefix_oracle::{check_prefix, PrefixOracle, PrefixUnit};
pub use violation::{Oracle, Origin, Violation};

/// Bytes per sector, the unit of every address.
pub const SECTOR_SIZE: usize = 512;
/// Sectors per 4 KiB block, the unit at which the engine splits requests.
pub const BLOCK_SECTORS: u64 = 8;

/// Runs both crash oracles: the block oracle first (its reports are the easier to read), then the
/// prefix oracle with `unit`.
pub fn check_crash_state(
    history: &History,
    observed: &[u8],
    unit: PrefixUnit,
) -> Result<(), Violation> {
    check_block(history, observed)?;
    check_prefix(history, observed, unit)
}
