//! The synchronization primitives of the runner, swapped for loom's under `cfg(loom)` so the
//! loom tests (`runner/tests/loom.rs`) check the very code the binary runs, not a copy.

#[cfg(loom)]
pub use loom::sync::{atomic, Arc, Condvar, Mutex, MutexGuard};
#[cfg(loom)]
pub use loom::thread;

#[cfg(not(loom))]
pub use std::sync::{atomic, Arc, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub use std::thread;
