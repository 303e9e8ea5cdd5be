//! Regression tests of the crash tester itself: it finds nothing on the correct engine, and it
//! must keep finding what it exists to find (lying devices, re-introduced seed hazards), replay
//! every failure it prints, shrink without losing the failure, and deduplicate crash images by
//! fingerprints that agree with the images. Each of these fails if the tester goes blind.

use std::collections::BTreeMap;

use crashsim::explore::{
    bounded_workloads, choices_for, explore_workload, generate, parse_case, record, replay_case,
    shrink, BoundedParams, ExploreOpts, FaultSet, GenParams, Kind, Level, OracleSel, Violation,
    Workload, WorkloadResult,
};
use crashsim::{BitFlip, Choice, CrashImages, PointSelection};
use engine::DeviceRole;

fn params(order: Option<u8>, unit_sectors: Option<u64>, max_ops: usize) -> GenParams {
    GenParams {
        order,
        unit_sectors,
        faults: FaultSet::default(),
        quirks: Vec::new(),
        cache_type: 0,
        min_ops: 6,
        max_ops,
        swarm: false,
    }
}

fn with_faults(faults: FaultSet, max_ops: usize) -> GenParams {
    GenParams {
        faults,
        ..params(None, None, max_ops)
    }
}

fn with_quirk(quirk: &str, max_ops: usize) -> GenParams {
    GenParams {
        quirks: vec![quirk.to_string()],
        ..params(None, None, max_ops)
    }
}

/// A failure message naming the first violations by their replay cases.
fn describe(r: &WorkloadResult) -> String {
    let mut s = format!("{} states, {} violations", r.states, r.violation_count);
    for v in r.violations.iter().take(3) {
        s.push_str(&format!(
            "\n  {} oracle: {}\n  replay: cargo xtask crash-test --replay '{}'",
            v.finding.kind.name(),
            v.finding.detail,
            v.case()
        ));
    }
    s
}

/// Explores the seeded workloads and asserts each has crash states and no violation.
fn assert_clean(seeds: impl IntoIterator<Item = u64>, p: &GenParams, opts: &ExploreOpts) {
    for seed in seeds {
        let w = generate(seed, p);
        let r = explore_workload(&w, opts);
        assert!(r.states > 0, "seed {seed}: no crash state explored: {w}");
        assert_eq!(r.violation_count, 0, "seed {seed} ({w}): {}", describe(&r));
    }
}

/// The first seed of `seeds` whose workload has a violation, with its result.
fn first_failing(
    seeds: impl IntoIterator<Item = u64>,
    p: &GenParams,
    opts: &ExploreOpts,
) -> Option<(Workload, WorkloadResult)> {
    seeds.into_iter().find_map(|seed| {
        let w = generate(seed, p);
        let r = explore_workload(&w, opts);
        (r.violation_count > 0).then_some((w, r))
    })
}

fn is_oracle(k: Kind) -> bool {
    matches!(k, Kind::BlockOracle | Kind::PrefixOracle)
}

// ---------------------------------------------------------------------------------------------
// Fault-free: the correct engine passes.

#[test]
fn fault_free_seeded_workloads_have_no_violations() {
    assert_clean(
        [0, 3, 6, 7, 9, 11],
        &params(None, None, 24),
        &ExploreOpts::default(),
    );
}

#[test]
fn fault_free_at_order_10_has_no_violations() {
    assert_clean(
        [0, 6, 7, 9],
        &params(Some(10), None, 20),
        &ExploreOpts::default(),
    );
}

#[test]
fn fault_free_with_4k_atomic_unit_has_no_violations() {
    assert_clean(0..10, &params(None, Some(8), 40), &ExploreOpts::default());
}

// ---------------------------------------------------------------------------------------------
// Faults that break the contract: the oracles must catch the data loss.

/// Explores seeds 0..8 under `faults` (stopping each workload at its first block-oracle
/// finding) and asserts that most of them report violations, and that in at least half of them
/// an oracle reports the data loss (rather than only a failed recovery, which a device that
/// lies during the format can also cause).
/// How often the probes of `faults`' switches fired in `r`: a fault that never changed what a
/// device did proves nothing.
fn fault_fired(r: &WorkloadResult, faults: &FaultSet) -> u64 {
    faults
        .names()
        .into_iter()
        .filter_map(crashsim::explore::coverage::fault_probe)
        .map(|p| r.points.sim.get(p))
        .sum()
}

fn assert_faults_caught(faults: FaultSet) {
    assert!(faults.breaks_contract());
    let opts = ExploreOpts {
        stop_at: Some(Kind::BlockOracle),
        ..ExploreOpts::default()
    };
    let p = with_faults(faults, 20);
    let mut caught = Vec::new();
    let mut by_oracle = Vec::new();
    let mut fired = 0;
    for seed in 0..8 {
        let w = generate(seed, &p);
        let r = explore_workload(&w, &opts);
        fired += fault_fired(&r, &faults);
        if r.violation_count > 0 {
            caught.push(seed);
        }
        if r.violations.iter().any(|v| is_oracle(v.finding.kind)) {
            by_oracle.push(seed);
        }
    }
    assert!(fired > 0, "{faults:?}: its probe never fired");
    assert!(
        caught.len() >= 5 && by_oracle.len() >= 4,
        "{faults:?}: of seeds 0..8, only {caught:?} report violations, {by_oracle:?} by an oracle"
    );
}

#[test]
fn lying_flush_is_caught() {
    assert_faults_caught(FaultSet {
        lying_flush: true,
        ..FaultSet::default()
    });
}

#[test]
fn lying_fua_is_caught() {
    assert_faults_caught(FaultSet {
        lying_fua: true,
        ..FaultSet::default()
    });
}

/// Misdirected writes and bit rot lose durable data the engine cannot get back: the tester
/// must say so (as an oracle violation or a refused read), not stay silent.
#[test]
fn misdirect_and_bit_rot_are_reported() {
    for faults in [
        FaultSet {
            misdirect: true,
            ..FaultSet::default()
        },
        FaultSet {
            bit_rot: true,
            ..FaultSet::default()
        },
    ] {
        assert!(faults.breaks_contract());
        let p = with_faults(faults, 20);
        let opts = ExploreOpts {
            stop_at_first: true,
            ..ExploreOpts::default()
        };
        let mut fired = 0;
        let caught: Vec<u64> = (0..16)
            .filter(|&seed| {
                let r = explore_workload(&generate(seed, &p), &opts);
                fired += fault_fired(&r, &faults);
                r.violation_count > 0
            })
            .collect();
        assert!(fired > 0, "{faults:?}: its probe never fired");
        assert!(
            caught.len() >= 2,
            "{faults:?}: only seeds {caught:?} of 0..16 report violations"
        );
    }
}

/// Under EIO the engine fails requests and goes dead, but never
/// returns wrong data and never loses what it acknowledged: no violation. The fault must really
/// fire, or this test proves nothing: some runs must end with a failed client request.
#[test]
fn device_errors_are_reported_never_lies() {
    for faults in [
        FaultSet {
            eio_write: true,
            ..FaultSet::default()
        },
        FaultSet {
            eio_read: true,
            ..FaultSet::default()
        },
    ] {
        assert!(faults.errors_expected() && !faults.breaks_contract());
        let p = with_faults(faults, 20);
        let mut fired = 0;
        // Enough seeds that the fault's trigger (an early cache-device operation) meets a
        // client request in some of them, whatever mix of operations the generator draws.
        const SEEDS: u64 = 16;
        // Recovery crashes and continuations are covered elsewhere; keep this test quick.
        let opts = ExploreOpts {
            recovery_crash: false,
            continuation_every: 0,
            ..ExploreOpts::default()
        };
        for seed in 0..SEEDS {
            let w = generate(seed, &p);
            let rec = record(&w.config, &w.ops).unwrap();
            assert!(
                rec.failure.is_none(),
                "{faults:?} seed {seed}: {:?}",
                rec.failure
            );
            let failed = rec
                .history
                .ops()
                .iter()
                .any(|op| op.status == models::OpStatus::Failed);
            fired += failed as u32;
            let r = explore_workload(&w, &opts);
            assert!(
                !failed || fault_fired(&r, &faults) > 0,
                "{faults:?} seed {seed}: a request failed, but the fault's probe never fired"
            );
            assert_eq!(
                r.violation_count,
                0,
                "{faults:?} seed {seed}: {}",
                describe(&r)
            );
        }
        assert!(
            fired >= 2,
            "{faults:?}: the fault failed a client request in only {fired} of {SEEDS} runs"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Seed quirks: each re-introduced hazard is found within a few seeds.

/// The first failing workload of `quirk` within seeds 0..max_seeds; every finding comes from a
/// crash state (the quirks only change what survives a power cut, never the running engine).
fn quirk_found(quirk: &str, max_seeds: u64, max_ops: usize) -> (Workload, WorkloadResult) {
    let opts = ExploreOpts {
        keep_violations: 1000,
        ..ExploreOpts::default()
    };
    let (w, r) = first_failing(0..max_seeds, &with_quirk(quirk, max_ops), &opts)
        .unwrap_or_else(|| panic!("quirk {quirk} not found within {max_seeds} seeds"));
    assert!(
        r.violations.iter().all(|v| v.finding.kind != Kind::Run),
        "quirk {quirk}: the run itself failed: {}",
        describe(&r)
    );
    assert!(r.violations.iter().all(|v| !v.path.is_empty()));
    (w, r)
}

#[test]
fn quirk_lc_nochecksum_is_caught() {
    // A segment whose header persisted but whose data did not is accepted: the recovered
    // device errs on a readable sector or returns bytes never written there.
    let (_, r) = quirk_found("lc-nochecksum", 8, 24);
    assert!(r
        .violations
        .iter()
        .any(|v| matches!(v.finding.kind, Kind::Read) || is_oracle(v.finding.kind)));
}

#[test]
fn quirk_h5_is_caught() {
    // A record ahead of the durable log resurrects old data: an oracle must say so.
    let (_, r) = quirk_found("h5", 12, 24);
    assert!(
        r.violations.iter().any(|v| is_oracle(v.finding.kind)),
        "{}",
        describe(&r)
    );
}

// ---------------------------------------------------------------------------------------------
// The replay contract: every printed case parses back and reproduces its finding.

fn assert_replays(v: &Violation) {
    let case = v.case();
    let (w, path) = parse_case(&case).unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_eq!(w, v.workload, "{case}");
    assert_eq!(path, v.path, "{case}");
    let (findings, log) = replay_case(&case, OracleSel::Both).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        findings.iter().any(|f| f.kind == v.finding.kind),
        "replay of {case} found {findings:?}, not a {} finding",
        v.finding.kind.name()
    );
    assert!(!log.is_empty());
}

#[test]
fn replay_reproduces_quirk_violations() {
    let mut nested = 0;
    for quirk in ["lc-nochecksum", "h5"] {
        let (_, r) = quirk_found(quirk, 12, 24);
        for v in &r.violations {
            assert_replays(v);
            if v.path.len() >= 2 {
                assert!(matches!(
                    v.path[1].level,
                    Level::Recovery | Level::Continuation
                ));
                nested += 1;
            }
        }
    }
    // Paths through a recovery crash or a continuation replay too.
    assert!(nested > 0, "no violation below the top level was replayed");
}

#[test]
fn replay_of_a_passing_state_finds_nothing() {
    // The same case with the crash choice made harmless (nothing pending persisted, right at
    // the start of the log) passes: replay does not report what it was told to expect.
    let (w, _) = quirk_found("lc-nochecksum", 8, 24);
    let case = format!("{w}#p0=-");
    let (findings, _) = replay_case(&case, OracleSel::Both).unwrap();
    assert!(findings.is_empty(), "{case}: {findings:?}");
    assert!(parse_case("o=4;W0+8#x1=-").is_err());
    assert!(parse_case("o=4;W0+8#r1=-").is_ok());
    assert!(replay_case("o=4;W0+8#r1=-", OracleSel::Both).is_err());
}

// ---------------------------------------------------------------------------------------------
// Shrinking.

#[test]
fn shrink_keeps_the_failure_and_never_grows() {
    let opts = ExploreOpts::default();
    for quirk in ["lc-nochecksum", "h5"] {
        let (w, r) = quirk_found(quirk, 12, 10);
        let v = &r.violations[0];
        let small = shrink(v, &opts, 100);
        assert!(
            small.workload.ops.len() <= w.ops.len(),
            "{quirk}: shrink grew {} to {}",
            w.ops.len(),
            small.workload.ops.len()
        );
        assert_eq!(small.workload.config, w.config);
        assert_eq!(small.finding.kind, v.finding.kind);
        let again = explore_workload(&small.workload, &opts);
        assert!(
            again
                .violations
                .iter()
                .any(|x| x.finding.kind == v.finding.kind),
            "{quirk}: the shrunk workload {} no longer fails",
            small.workload
        );
        assert_replays(&small);
    }
}

// ---------------------------------------------------------------------------------------------
// Bounded-exhaustive workloads.

#[test]
fn bounded_len_2_on_2_blocks_2_slots_is_clean() {
    bounded_len_2_is_clean(0);
}

/// Type 1, bounded: at order 4 a segment holds one block, so its region never takes more
/// than one entry (the region-boundary scenarios below run at order 5).
#[test]
fn bounded_type_1_is_clean() {
    bounded_len_2_is_clean(1);
}

/// The region-boundary scenarios fill a plog region to its last sector, and seal a segment
/// whose region has no room for the next entry (a full one, or one after smaller entries left
/// a gap); every crash state of each is clean.
#[test]
fn region_boundary_scenarios_reach_both_boundaries_and_are_clean() {
    use engine::probes::Probe;
    let opts = ExploreOpts {
        continuation_every: 0,
        ..ExploreOpts::default()
    };
    for name in ["plog-region-exact", "plog-region-gap"] {
        let (_, w) = crashsim::explore::scenario_workloads()
            .into_iter()
            .find(|(n, _)| *n == name)
            .expect("the scenario exists");
        let r = explore_workload(&w, &opts);
        assert_eq!(r.violation_count, 0, "{w}: {}", describe(&r));
        let (exact, sealed) = (
            r.points.probes.get(Probe::PlogRegionExact),
            r.points.probes.get(Probe::PlogRegionSealed),
        );
        assert!(sealed > 0, "{name}: never sealed for room");
        assert_eq!(
            exact > 0,
            name == "plog-region-exact",
            "{name}: exact fills {exact}"
        );
    }
}

fn bounded_len_2_is_clean(cache_type: u8) {
    let p = BoundedParams {
        max_len: 2,
        blocks: 2,
        nr_segments: 2,
        unit_sectors: 1,
        faults: FaultSet::default(),
        quirks: Vec::new(),
        order: 4,
        cache_type,
    };
    let opts = ExploreOpts {
        continuation_every: 0,
        ..ExploreOpts::default()
    };
    // Full, partial-sector write per block; FUA write, discard, FLUSH, seal, writeback, record.
    let alphabet = 2 * 2 + 6;
    let mut by_len = BTreeMap::new();
    let mut states = 0;
    for w in bounded_workloads(&p) {
        *by_len.entry(w.ops.len()).or_insert(0u64) += 1;
        let r = explore_workload(&w, &opts);
        assert!(r.states > 0, "{w}: no crash state");
        assert_eq!(r.violation_count, 0, "{w}: {}", describe(&r));
        states += r.states;
    }
    assert_eq!(
        by_len,
        BTreeMap::from([(1, alphabet), (2, alphabet * alphabet)])
    );
    assert!(states > 1000, "only {states} states");
}

// ---------------------------------------------------------------------------------------------
// Fingerprints.

/// At every fine crash point of a few recorded runs, the fingerprint computed from a choice's
/// changes equals the fingerprint of its images, and equal fingerprints mean equal images.
#[test]
fn fingerprint_of_agrees_with_the_images() {
    let opts = ExploreOpts::default();
    let variants = [
        (FaultSet::default(), Some(1)),
        (FaultSet::default(), Some(8)),
        // Tearing into garbage is a tester path of its own (no claim about the engine here).
        (
            FaultSet {
                garbage_torn: true,
                ..FaultSet::default()
            },
            Some(1),
        ),
    ];
    let mut checked = 0u64;
    let mut distinct_total = 0u64;
    for (faults, unit) in variants {
        for seed in 0..3 {
            let p = GenParams {
                faults,
                ..params(None, unit, 10)
            };
            let w = generate(seed, &p);
            let rec = record(&w.config, &w.ops).expect("recorded");
            assert!(rec.failure.is_none(), "{w}: {:?}", rec.failure);
            let world = rec.world.borrow();
            let mut replayer = world.replayer();
            for point in world.crash_points(PointSelection::fine()) {
                let state = replayer.advance_to(point).expect("a crash state");
                let mut choices = choices_for(&state, &opts, seed ^ point.before);
                // Keep the check affordable: an even sample of the choices.
                let step = (choices.len() / 12).max(1);
                choices = choices.into_iter().step_by(step).collect();
                // And bit rot on top of everything persisting.
                let mut rot = Choice::whole(0..state.pending_count());
                rot.bit_flips.push(BitFlip {
                    role: DeviceRole::Cache,
                    byte: 2048 * 512 + 700 + point.before,
                    bit: (point.before % 8) as u8,
                });
                choices.push(rot);
                let mut seen: BTreeMap<u128, CrashImages> = BTreeMap::new();
                for choice in choices {
                    let fp = state.fingerprint_of(&choice).expect("a valid choice");
                    let images = state.image(&choice).expect("a valid choice");
                    assert_eq!(fp, images.fingerprint(), "{w} at {point}, choice {choice}");
                    checked += 1;
                    match seen.get(&fp) {
                        Some(prev) => assert!(
                            *prev == images,
                            "{w} at {point}: fingerprint collision at choice {choice}"
                        ),
                        None => {
                            seen.insert(fp, images);
                        }
                    }
                }
                distinct_total += seen.len() as u64;
            }
        }
    }
    assert!(checked > 500, "only {checked} choices checked");
    assert!(
        distinct_total > checked / 4,
        "{distinct_total} distinct images of {checked} choices: the fingerprint is blind"
    );
}

/// A panic in recovery (the `replay-assert` quirk: an assertion fires when replay applies a
/// segment above id 1) is a finding of kind `Panic` of that crash state: counted, kept with a
/// replay case that reproduces it, and the exploration goes on to the other states.
#[test]
fn a_panic_in_recovery_is_a_finding_and_the_run_goes_on() {
    let case = "o=4,n=3,b=4,p=1,k=1,u=1,s=125,q=replay-assert;W0+8.F.W8+8.F.W16+8.F";
    let (w, _) = parse_case(case).unwrap();
    let r = explore_workload(&w, &ExploreOpts::default());
    let panics: Vec<&Violation> = r
        .violations
        .iter()
        .filter(|v| v.finding.kind == Kind::Panic)
        .collect();
    assert!(!panics.is_empty(), "{}", describe(&r));
    assert!(
        panics[0].finding.detail.contains("replay-assert quirk"),
        "{}",
        panics[0].finding.detail
    );
    assert!(
        r.states > r.violation_count,
        "states without the panic were checked too: {}",
        describe(&r)
    );
    let (findings, _) = replay_case(&panics[0].case(), OracleSel::Both).unwrap();
    assert!(
        findings.iter().any(|f| f.kind == Kind::Panic),
        "the replay reproduces the panic: {findings:?}"
    );
    // Without the quirk the same workload is clean.
    let mut clean = w.clone();
    clean.config.quirks.clear();
    assert_eq!(
        explore_workload(&clean, &ExploreOpts::default()).violation_count,
        0
    );
}

/// Messages and the runner's timer are operations like any other: a tunable changed mid-run
/// brings the timer's sync and record steps due on later ticks, `drop_caches` starts draining
/// and is interrupted by the next operations, a value out of range is refused and changes
/// nothing; every crash state of the run is judged and none is a violation.
#[test]
fn messages_and_timer_ticks_run_under_the_crash_tester() {
    use engine::probes::Probe;
    let w: Workload = "o=4,n=3,b=8,p=2,k=1,u=1,s=1;W0+8.Ksync_interval=1.Kupdate_record_interval=1.T.W8+8.B.T.Kallow_writeback=2.D.W16+8.T.F"
        .parse()
        .unwrap();
    let r = explore_workload(&w, &ExploreOpts::default());
    assert_eq!(r.violation_count, 0, "{}", describe(&r));
    assert!(r.states > 100, "{} states", r.states);
    for p in [
        Probe::TimerSync,
        Probe::TimerRecord,
        Probe::MessageTunable,
        Probe::MessageRefused,
        Probe::MessageDropCaches,
    ] {
        assert!(r.points.probes.get(p) > 0, "{} never fired", p.name());
    }
}
