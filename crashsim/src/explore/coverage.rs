//! What a run covered: the engine's probes (`engine::probes`) and the simulator's own, how often
//! each fired, and which never did. A run in the default configuration fails when a probe of
//! [`REQUIRED`] never fired, so a change that makes the tester blind to a path fails loudly,
//! naming it.

use engine::probes::{Counts, Probe};

/// The simulator's probes: what kinds of crash state it built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimProbe {
    /// A crash of the workload's own run.
    CrashInRun,
    /// A crash inside the recovery of crashed images.
    CrashInRecovery,
    /// A crash of a continuation run on recovered devices.
    CrashInContinuation,
    /// A crash state in which a pending write persisted torn (some of its units only).
    TornWrite,
    /// A crash state in which some pending writes persisted and others did not.
    PartlyPersisted,
    /// A run whose operations completed out of submission order.
    OutOfOrder,
    /// A crash state the peer-replay model judged (`crate::peer`).
    PeerJudged,
}

impl SimProbe {
    pub const ALL: [SimProbe; 7] = [
        SimProbe::CrashInRun,
        SimProbe::CrashInRecovery,
        SimProbe::CrashInContinuation,
        SimProbe::TornWrite,
        SimProbe::PartlyPersisted,
        SimProbe::OutOfOrder,
        SimProbe::PeerJudged,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SimProbe::CrashInRun => "sim-crash-in-run",
            SimProbe::CrashInRecovery => "sim-crash-in-recovery",
            SimProbe::CrashInContinuation => "sim-crash-in-continuation",
            SimProbe::TornWrite => "sim-torn-write",
            SimProbe::PartlyPersisted => "sim-partly-persisted",
            SimProbe::OutOfOrder => "sim-out-of-order",
            SimProbe::PeerJudged => "sim-peer-judged",
        }
    }
}

/// How often each simulator probe fired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimCounts(pub [u64; SimProbe::ALL.len()]);

impl SimCounts {
    pub fn hit(&mut self, p: SimProbe) {
        self.0[p as usize] += 1;
    }
    pub fn get(&self, p: SimProbe) -> u64 {
        self.0[p as usize]
    }
    pub fn add(&mut self, o: &SimCounts) {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a += b;
        }
    }
}

/// The probes the default type-0 run must reach (`cargo xtask crash-test` without options).
/// Left out, each for its reason:
/// - `recovery-upstream-image`, `record-held-partial`, `recovery-replay-writeback`: only
///   upstream's rings hold partly dirty copies (R14), and no workload writes one
///   (engine/tests/upstream.rs covers them);
/// - `recovery-record-raised`: the ring proves more than the record only when the record lags
///   a whole lap, which writeback ahead of need (R12) never lets happen in these workloads
///   (engine/tests/upstream.rs's wrapped-log cases reach it);
/// - `recovery-plog-*`: type 1 (the default run reaches them through the type-1 scenarios,
///   but `--type 1` is their run);
/// - `dead-io`, `dead-corrupt`: no fault switch is on by default (`--fault eio-write` etc.).
pub const REQUIRED: [&str; 32] = [
    "recovery-format",
    "recovery-record-from-backup",
    "recovery-walk-stopped",
    "recovery-stale-invalidated",
    "recovery-segments-applied",
    "write-in-place",
    "write-merge-ram",
    "write-merge-cache",
    "write-fill-backing",
    "write-zeroes",
    "write-fua",
    "flush",
    "write-waits-slot",
    "write-waits-buffer",
    "seal-partial",
    "seal-full",
    "writeback-forced",
    "writeback-ahead",
    "writeback-skips-superseded",
    "record-write",
    "record-waits-log",
    "read-ram",
    "read-cache",
    "read-backing",
    "read-many",
    "sim-crash-in-run",
    "sim-crash-in-recovery",
    "sim-crash-in-continuation",
    "sim-torn-write",
    "sim-partly-persisted",
    "sim-out-of-order",
    "sim-peer-judged",
];

/// Every probe, engine's then simulator's, with its count.
pub fn rows(engine: &Counts, sim: &SimCounts) -> Vec<(&'static str, u64)> {
    let e = Probe::ALL.into_iter().map(|p| (p.name(), engine.get(p)));
    let s = SimProbe::ALL.into_iter().map(|p| (p.name(), sim.get(p)));
    e.chain(s).collect()
}

/// The required probes that never fired.
pub fn unreached_required(engine: &Counts, sim: &SimCounts) -> Vec<&'static str> {
    let all = rows(engine, sim);
    REQUIRED
        .into_iter()
        .filter(|name| all.iter().any(|(n, c)| n == name && *c == 0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_required_probe_exists() {
        let names: Vec<_> = rows(&Counts::default(), &SimCounts::default())
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        for r in REQUIRED {
            assert!(names.contains(&r), "{r} is no probe");
        }
        assert_eq!(
            unreached_required(&Counts::default(), &SimCounts::default()).len(),
            REQUIRED.len()
        );
    }
}
