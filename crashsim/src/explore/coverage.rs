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
    // Fault switches, each counted where it changed what a device did (`fired_faults`).
    /// A flush returned Ok and made nothing durable.
    FaultLyingFlush,
    /// A FUA write landed in the volatile cache only.
    FaultLyingFua,
    /// A crash state left garbage in a torn unit.
    FaultGarbageTorn,
    /// A device write failed with an injected EIO.
    FaultEioWrite,
    /// A device read failed with an injected EIO.
    FaultEioRead,
    /// A write landed somewhere other than where it was addressed.
    FaultMisdirect,
    /// A bit of a durable image flipped.
    FaultBitRot,
    /// A crash state left zeros in a torn unit.
    FaultZeroTorn,
    /// A crash state with a write torn in one run of units, on a device that tears so.
    FaultTornRuns,
    // Crash point kinds (`point_probes`): what the cut falls next to.
    PointBeforeFlush,
    PointAfterFlush,
    PointBeforeFua,
    PointAfterFua,
    /// Right after the engine answered a client request.
    PointAfterAck,
    /// Right after a plain device write (fine selection: inside recovery, or `--fine`).
    PointAfterWrite,
    /// At a harness mark (fine selection: inside recovery, or `--fine`).
    PointAtMark,
    PointEnd,
    // How many of the pending writes a crash state persisted (`choice_probes`).
    PersistedNone,
    PersistedOne,
    PersistedSeveral,
    PersistedAll,
    // The shape of a torn write's persisted units.
    TearSingle,
    TearAllButOne,
    TearPrefix,
    TearSuffix,
    /// No unit persisted (the write garbled or zeroed what it covered).
    TearNone,
    /// Any other subset (random choices).
    TearScattered,
}

impl SimProbe {
    pub const ALL: [SimProbe; 34] = [
        SimProbe::CrashInRun,
        SimProbe::CrashInRecovery,
        SimProbe::CrashInContinuation,
        SimProbe::TornWrite,
        SimProbe::PartlyPersisted,
        SimProbe::OutOfOrder,
        SimProbe::PeerJudged,
        SimProbe::FaultLyingFlush,
        SimProbe::FaultLyingFua,
        SimProbe::FaultGarbageTorn,
        SimProbe::FaultEioWrite,
        SimProbe::FaultEioRead,
        SimProbe::FaultMisdirect,
        SimProbe::FaultBitRot,
        SimProbe::FaultZeroTorn,
        SimProbe::FaultTornRuns,
        SimProbe::PointBeforeFlush,
        SimProbe::PointAfterFlush,
        SimProbe::PointBeforeFua,
        SimProbe::PointAfterFua,
        SimProbe::PointAfterAck,
        SimProbe::PointAfterWrite,
        SimProbe::PointAtMark,
        SimProbe::PointEnd,
        SimProbe::PersistedNone,
        SimProbe::PersistedOne,
        SimProbe::PersistedSeveral,
        SimProbe::PersistedAll,
        SimProbe::TearSingle,
        SimProbe::TearAllButOne,
        SimProbe::TearPrefix,
        SimProbe::TearSuffix,
        SimProbe::TearNone,
        SimProbe::TearScattered,
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
            SimProbe::FaultLyingFlush => "fault-lying-flush",
            SimProbe::FaultLyingFua => "fault-lying-fua",
            SimProbe::FaultGarbageTorn => "fault-garbage-torn",
            SimProbe::FaultEioWrite => "fault-eio-write",
            SimProbe::FaultEioRead => "fault-eio-read",
            SimProbe::FaultMisdirect => "fault-misdirect",
            SimProbe::FaultBitRot => "fault-bit-rot",
            SimProbe::FaultZeroTorn => "fault-zero-torn",
            SimProbe::FaultTornRuns => "fault-torn-runs",
            SimProbe::PointBeforeFlush => "sim-point-before-flush",
            SimProbe::PointAfterFlush => "sim-point-after-flush",
            SimProbe::PointBeforeFua => "sim-point-before-fua",
            SimProbe::PointAfterFua => "sim-point-after-fua",
            SimProbe::PointAfterAck => "sim-point-after-ack",
            SimProbe::PointAfterWrite => "sim-point-after-write",
            SimProbe::PointAtMark => "sim-point-at-mark",
            SimProbe::PointEnd => "sim-point-end",
            SimProbe::PersistedNone => "sim-persisted-none",
            SimProbe::PersistedOne => "sim-persisted-one",
            SimProbe::PersistedSeveral => "sim-persisted-several",
            SimProbe::PersistedAll => "sim-persisted-all",
            SimProbe::TearSingle => "sim-tear-single",
            SimProbe::TearAllButOne => "sim-tear-all-but-one",
            SimProbe::TearPrefix => "sim-tear-prefix",
            SimProbe::TearSuffix => "sim-tear-suffix",
            SimProbe::TearNone => "sim-tear-none",
            SimProbe::TearScattered => "sim-tear-scattered",
        }
    }
}

/// The fault probes a run's log shows fired: every fault switch but the torn-unit ones
/// (properties of crash states, counted where they are built: `torn_probes`).
pub fn fired_faults(sim: &mut SimCounts, log: &[crate::LogEntry]) {
    use crate::{Event, FlushEffect, WriteEffect};
    for e in log {
        let probe = match &e.event {
            Event::Flush {
                effect: FlushEffect::Lied,
                ..
            } => SimProbe::FaultLyingFlush,
            Event::Write {
                fua: true,
                effect: WriteEffect::Landed { durable: false, .. },
                ..
            } => SimProbe::FaultLyingFua,
            Event::Write {
                sector,
                effect: WriteEffect::Landed { at, .. },
                ..
            } if at != sector => SimProbe::FaultMisdirect,
            Event::Write {
                effect: WriteEffect::Failed(err),
                ..
            } if err.detail.starts_with("injected EIO") => SimProbe::FaultEioWrite,
            Event::Read {
                error: Some(err), ..
            } if err.detail.starts_with("injected EIO") => SimProbe::FaultEioRead,
            Event::BitRot { .. } => SimProbe::FaultBitRot,
            _ => continue,
        };
        sim.hit(probe);
    }
}

/// The kinds of crash point `point` of a run whose log is `log`: the events it falls between.
pub fn point_probes(sim: &mut SimCounts, log: &[crate::LogEntry], point: crate::CrashPoint) {
    use crate::Event;
    let at = point.before as usize;
    if at >= log.len() {
        sim.hit(SimProbe::PointEnd);
    }
    match at.checked_sub(1).and_then(|i| log.get(i)).map(|e| &e.event) {
        Some(Event::Flush { .. }) => sim.hit(SimProbe::PointAfterFlush),
        Some(Event::Write { fua: true, .. }) => sim.hit(SimProbe::PointAfterFua),
        Some(Event::Write { .. }) => sim.hit(SimProbe::PointAfterWrite),
        Some(Event::ClientEnd { .. }) => sim.hit(SimProbe::PointAfterAck),
        _ => {}
    }
    match log.get(at).map(|e| &e.event) {
        Some(Event::Flush { .. }) => sim.hit(SimProbe::PointBeforeFlush),
        Some(Event::Write { fua: true, .. }) => sim.hit(SimProbe::PointBeforeFua),
        Some(Event::Mark(_)) => sim.hit(SimProbe::PointAtMark),
        _ => {}
    }
}

/// How many of the `pending` writes `choice` persisted, and the shape of each torn one.
pub fn choice_probes(sim: &mut SimCounts, choice: &crate::Choice, pending: usize) {
    let n = choice.persisted.len();
    if pending > 0 {
        sim.hit(match n {
            0 => SimProbe::PersistedNone,
            _ if n == pending => SimProbe::PersistedAll,
            1 => SimProbe::PersistedOne,
            _ => SimProbe::PersistedSeveral,
        });
    }
    for p in &choice.persisted {
        if let crate::Units::Mask(m) = &p.units {
            if let Some(shape) = tear_shape(m) {
                sim.hit(shape);
            }
        }
    }
}

/// The shape of a torn write's unit mask; `None` when every unit persisted.
fn tear_shape(m: &[bool]) -> Option<SimProbe> {
    let (u, k) = (m.len(), m.iter().filter(|&&b| b).count());
    Some(if k == u {
        return None;
    } else if k == 0 {
        SimProbe::TearNone
    } else if m[..k].iter().all(|&b| b) {
        SimProbe::TearPrefix
    } else if m[u - k..].iter().all(|&b| b) {
        SimProbe::TearSuffix
    } else if k == 1 {
        SimProbe::TearSingle
    } else if k == u - 1 {
        SimProbe::TearAllButOne
    } else {
        SimProbe::TearScattered
    })
}

/// The torn-unit fault probes of one checked crash state of a run with `faults`.
pub fn torn_probes(sim: &mut SimCounts, faults: &super::FaultSet, choice: &crate::Choice) {
    let mut torn = choice.persisted.iter().filter_map(|p| match &p.units {
        crate::Units::Mask(m) => Some(m),
        crate::Units::All => None,
    });
    let Some(first) = torn.next() else { return };
    let unit_left = std::iter::once(first)
        .chain(torn)
        .any(|m| m.contains(&false));
    match faults.torn_fill() {
        crate::TornFill::Garbage if unit_left => sim.hit(SimProbe::FaultGarbageTorn),
        crate::TornFill::Zero if unit_left => sim.hit(SimProbe::FaultZeroTorn),
        _ => {}
    }
    if faults.torn_runs {
        sim.hit(SimProbe::FaultTornRuns);
    }
}

/// How often each simulator probe fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimCounts(pub [u64; SimProbe::ALL.len()]);

impl Default for SimCounts {
    fn default() -> Self {
        SimCounts([0; SimProbe::ALL.len()])
    }
}

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
/// - `dead-corrupt`: no fault the default run draws corrupts a durable block (`--fault
///   bit-rot` reaches it);
/// - `fault-lying-flush`, `fault-lying-fua`, `fault-misdirect`, `fault-bit-rot`: faults that
///   break the contract are not drawn by swarm runs; a run that asks for one (`--fault
///   misdirect`) requires its probe, and the tester's tests require it to be caught.
pub const REQUIRED: [&str; 68] = [
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
    "read-clean",
    "read-backing",
    "read-many",
    "dead-io",
    "message-drop-caches",
    "message-tunable",
    "message-refused",
    "timer-sync",
    "timer-record",
    "plog-region-exact",
    "plog-region-sealed",
    "write-bypassed",
    "bypass-refused-cached",
    "bypass-refused-unrecorded",
    "bypass-flush",
    "sim-crash-in-run",
    "sim-crash-in-recovery",
    "sim-crash-in-continuation",
    "sim-torn-write",
    "sim-partly-persisted",
    "sim-out-of-order",
    "sim-peer-judged",
    "sim-point-before-flush",
    "sim-point-after-flush",
    "sim-point-before-fua",
    "sim-point-after-fua",
    "sim-point-after-ack",
    "sim-point-after-write",
    "sim-point-at-mark",
    "sim-point-end",
    "sim-persisted-none",
    "sim-persisted-one",
    "sim-persisted-several",
    "sim-persisted-all",
    "sim-tear-single",
    "sim-tear-all-but-one",
    "sim-tear-prefix",
    "sim-tear-suffix",
    "sim-tear-none",
    "sim-tear-scattered",
    "fault-garbage-torn",
    "fault-zero-torn",
    "fault-torn-runs",
    "fault-eio-write",
    "fault-eio-read",
];

/// Every probe, engine's then simulator's, with its count.
pub fn rows(engine: &Counts, sim: &SimCounts) -> Vec<(&'static str, u64)> {
    let e = Probe::ALL.into_iter().map(|p| (p.name(), engine.get(p)));
    let s = SimProbe::ALL.into_iter().map(|p| (p.name(), sim.get(p)));
    e.chain(s).collect()
}

/// The probe of each fault switch (`FaultSet::NAMES` order).
pub fn fault_probe(name: &str) -> Option<SimProbe> {
    Some(match name {
        "lying-flush" => SimProbe::FaultLyingFlush,
        "lying-fua" => SimProbe::FaultLyingFua,
        "garbage-torn" => SimProbe::FaultGarbageTorn,
        "eio-write" => SimProbe::FaultEioWrite,
        "eio-read" => SimProbe::FaultEioRead,
        "misdirect" => SimProbe::FaultMisdirect,
        "bit-rot" => SimProbe::FaultBitRot,
        "zero-torn" => SimProbe::FaultZeroTorn,
        "torn-runs" => SimProbe::FaultTornRuns,
        _ => return None,
    })
}

/// The probes of the fault switches a run asked for that never fired: a fault that never
/// changed what a device did tested nothing.
pub fn unreached_faults(sim: &SimCounts, faults: &super::FaultSet) -> Vec<&'static str> {
    faults
        .names()
        .into_iter()
        .filter_map(fault_probe)
        .filter(|&p| sim.get(p) == 0)
        .map(SimProbe::name)
        .collect()
}

/// A row per quirk switched on: `quirk-NAME` and how often its code sites ran with it on.
pub fn quirk_rows(engine: &Counts, quirks: &[String]) -> Vec<(String, u64)> {
    quirks
        .iter()
        .filter_map(|q| engine::quirks::Quirk::from_name(q))
        .map(|q| (format!("quirk-{}", q.name()), engine.quirk_site(q as usize)))
        .collect()
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
    fn tear_shapes_are_named() {
        let t = |m: &str| tear_shape(&m.chars().map(|c| c == '1').collect::<Vec<_>>());
        assert_eq!(t("0000"), Some(SimProbe::TearNone));
        assert_eq!(t("1100"), Some(SimProbe::TearPrefix));
        assert_eq!(t("0011"), Some(SimProbe::TearSuffix));
        assert_eq!(t("0100"), Some(SimProbe::TearSingle));
        assert_eq!(t("1011"), Some(SimProbe::TearAllButOne));
        assert_eq!(t("101001"), Some(SimProbe::TearScattered));
        assert_eq!(t("1111"), None);
    }

    #[test]
    fn persisted_counts_are_named() {
        let c = |s: &str| {
            let choice: crate::Choice = s.parse().unwrap();
            let mut sim = SimCounts::default();
            choice_probes(&mut sim, &choice, 3);
            SimProbe::ALL.into_iter().find(|&p| sim.get(p) > 0)
        };
        assert_eq!(c("-"), Some(SimProbe::PersistedNone));
        assert_eq!(c("1"), Some(SimProbe::PersistedOne));
        assert_eq!(c("0,2"), Some(SimProbe::PersistedSeveral));
        assert_eq!(c("0,1,2"), Some(SimProbe::PersistedAll));
    }

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
