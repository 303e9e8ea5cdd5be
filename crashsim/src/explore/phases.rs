//! Where the explorer's time goes, measured inside it: each phase of checking a crash state is
//! timed where it runs and summed per thread, so the bench's phase table (`cargo xtask bench
//! --section crash-rate`) reports the code that runs, not a re-enactment of it.

use std::cell::Cell;
use std::time::Instant;

/// One phase of the explorer's work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Running the workload once on simulated devices, recording every operation.
    Record,
    /// Replaying the log to a crash point, and cutting the history there.
    Replay,
    /// Choosing what persisted, and fingerprinting each choice for deduplication.
    Choices,
    /// Building the crash images of a choice.
    Images,
    /// Recovery: opening the crash images.
    Recovery,
    /// The engine's invariant checks after recovery.
    Invariants,
    /// Reading the recovered device back (both reads, and the shortcut's cross-check).
    ReadBack,
    /// The oracles, the peer's view included.
    Oracles,
    /// Nested levels: restarting a simulated world from images, recovering or running a
    /// continuation on it.
    Nested,
}

/// How many phases there are.
pub const COUNT: usize = 9;

impl Phase {
    pub const ALL: [Phase; COUNT] = [
        Phase::Record,
        Phase::Replay,
        Phase::Choices,
        Phase::Images,
        Phase::Recovery,
        Phase::Invariants,
        Phase::ReadBack,
        Phase::Oracles,
        Phase::Nested,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Record => "recording the workload",
            Phase::Replay => "replaying the log to the crash point",
            Phase::Choices => "choices and fingerprints",
            Phase::Images => "building the crash images",
            Phase::Recovery => "recovery (opening the images)",
            Phase::Invariants => "invariant checks",
            Phase::ReadBack => "reading the export back",
            Phase::Oracles => "the oracles",
            Phase::Nested => "restarting worlds for nested levels",
        }
    }
}

/// Nanoseconds spent in each phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseTimes(pub [u64; COUNT]);

impl PhaseTimes {
    pub fn add(&mut self, o: &PhaseTimes) {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a += b;
        }
    }

    pub fn get(&self, p: Phase) -> u64 {
        self.0[p as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

thread_local! {
    static TIMES: Cell<PhaseTimes> = Cell::new(PhaseTimes::default());
}

/// Runs `f`, counting its time to `phase` (on this thread).
pub fn timed<T>(phase: Phase, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    add_since(phase, start);
    out
}

/// Counts the time since `start` to `phase` (on this thread).
pub fn add_since(phase: Phase, start: Instant) {
    let ns = start.elapsed().as_nanos() as u64;
    TIMES.with(|t| {
        let mut v = t.get();
        v.0[phase as usize] += ns;
        t.set(v);
    });
}

/// This thread's times so far, starting over.
pub fn take() -> PhaseTimes {
    TIMES.with(|t| t.replace(PhaseTimes::default()))
}
