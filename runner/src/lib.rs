//! The production runner: the `wbcache` binary's pieces. A thin shell around `engine`: devices
//! (`device`: a file or block device, `filedev`, or an NBD export, `nbd::client`), the NBD
//! protocol and connections (`nbd`), the engine thread that owns the
//! cache and the request handoff to it (`engine_thread`, `queue`, `core`), the control socket
//! (`control`), and the subcommands (`commands`). No cache logic lives here.
//! docs/DESIGN.md, "Runner", explains threads, ordering and shutdown.

pub mod commands;
pub mod control;
pub mod core;
pub mod device;
pub mod engine_thread;
pub mod events;
pub mod executor;
pub mod filedev;
pub mod inflight;
pub mod nbd;
pub mod queue;
pub mod server;
pub mod signals;
pub mod sync;

/// One line for the operator, on stderr.
pub fn log_line(msg: &str) {
    eprintln!("wbcache: {msg}");
}
