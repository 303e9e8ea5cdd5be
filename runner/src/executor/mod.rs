//! The I/O executor: the engine's device operations run concurrently on the devices, and each
//! completion goes back to the engine thread's [`Events`] exactly once. The engine thread only
//! hands operations over ([`Executor::submit`] never blocks on a device) and takes completions.
//!
//! Every device speaks [`AsyncDevice`]: `submit` starts an operation and the device calls the
//! [`Done`] it was given when the operation ends. Files and block devices have two backends
//! (`select` picks one per server): [`uring::Uring`], many operations in flight through
//! io_uring, and [`pool::Pooled`], a pool of I/O threads, each with its own handle of the file,
//! for kernels that refuse io_uring (and for what a ring does not take as it is). An NBD
//! client device completes from its reply reader. A `Done` dropped without completing (a device
//! thread that died) still delivers an error, so the engine never waits forever.

pub mod pool;
pub mod select;
#[cfg(all(target_os = "linux", not(loom)))]
pub mod uring;

#[cfg(all(test, not(loom)))]
mod tests;

use engine::{Access, DeviceRole, IoError, IoOp, IoResult, OpId};

use crate::events::Events;
use crate::sync::Arc;

/// `first`, with the plain writes at the front of `queue` that continue it on the device
/// (each starting where the one before ends), at most `max_items` of them and
/// `pool::MAX_RUN_BYTES` in all: one transfer then carries them. Both backends gather this way.
pub(crate) fn gather_write_run<T>(
    first: T,
    queue: &mut std::collections::VecDeque<T>,
    kind: impl Fn(&T) -> &engine::IoKind,
    max_items: usize,
) -> Vec<T> {
    let Some((_, mut end)) = kind(&first).plain_write_span() else {
        return vec![first];
    };
    let mut bytes = kind(&first).extent().1;
    let mut run = vec![first];
    // Bounded by the queue.
    while let Some(next) = queue.front() {
        let Some((start, next_end)) = kind(next).plain_write_span() else {
            break;
        };
        let len = kind(next).extent().1;
        if start != end || run.len() == max_items || bytes + len > pool::MAX_RUN_BYTES {
            break;
        }
        (end, bytes) = (next_end, bytes + len);
        run.push(queue.pop_front().expect("just looked"));
    }
    run
}

/// A device that performs operations concurrently and completes each exactly once.
pub trait AsyncDevice: Send + Sync {
    fn size_sectors(&self) -> u64;
    /// Starts `op`; `done` is completed exactly once, on any thread, possibly before `submit`
    /// returns.
    fn submit(&self, op: IoOp, done: Done);
    /// The engine handed out everything it had for now: a device that batches may start what
    /// `submit` queued (io_uring enters the kernel once for the lot, with back-to-back writes
    /// gathered). A device must not depend on it for progress beyond a short delay.
    fn kick(&self) {}
    /// Nanoseconds spent performing operations since the device started (the writeback
    /// modulator's load estimate).
    fn busy_ns(&self) -> u64 {
        0
    }
}

/// The one completion of one operation, delivered to the engine thread.
pub struct Done {
    events: Arc<Events>,
    op: OpId,
    role: DeviceRole,
    sent: bool,
}

impl Done {
    pub fn new(events: Arc<Events>, op: OpId, role: DeviceRole) -> Self {
        Done {
            events,
            op,
            role,
            sent: false,
        }
    }

    pub fn op(&self) -> OpId {
        self.op
    }

    /// Delivers the result.
    pub fn complete(mut self, result: IoResult) {
        self.sent = true;
        self.events.push_done(self.op, result);
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if !self.sent {
            // The device lost the operation (a thread died, the device went away): the engine
            // hears an error rather than waiting forever.
            let e = IoError::new(
                Access::Read,
                0,
                0,
                format!("the {} device abandoned operation {}", self.role, self.op),
            );
            self.events.push_done(self.op, Err(e));
        }
    }
}

/// The devices of a cache, each behind an [`AsyncDevice`].
pub struct Executor {
    events: Arc<Events>,
    cache: Box<dyn AsyncDevice>,
    backing: Box<dyn AsyncDevice>,
    plog: Option<Box<dyn AsyncDevice>>,
}

impl Executor {
    pub fn new(
        events: Arc<Events>,
        cache: Box<dyn AsyncDevice>,
        backing: Box<dyn AsyncDevice>,
        plog: Option<Box<dyn AsyncDevice>>,
    ) -> Self {
        Executor {
            events,
            cache,
            backing,
            plog,
        }
    }

    fn device(&self, role: DeviceRole) -> &dyn AsyncDevice {
        match role {
            DeviceRole::Cache => &*self.cache,
            DeviceRole::Backing => &*self.backing,
            DeviceRole::Plog => &**self
                .plog
                .as_ref()
                .expect("the engine uses a plog only when it has one"),
        }
    }

    /// Hands an operation to its device; never waits for it.
    pub fn submit(&self, op: IoOp) {
        let done = Done::new(self.events.clone(), op.id, op.role);
        self.device(op.role).submit(op, done);
    }

    /// Lets every device start what it queued (see [`AsyncDevice::kick`]).
    pub fn kick(&self) {
        self.cache.kick();
        self.backing.kick();
        if let Some(p) = &self.plog {
            p.kick();
        }
    }

    pub fn backing_busy_ns(&self) -> u64 {
        self.backing.busy_ns()
    }
}
