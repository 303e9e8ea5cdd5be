//! Section: crash-test throughput, crash states checked per second on one core (docs/DESIGN.md,
//! "Performance targets").
//!
//! For each configuration (segment order 4 or 10, cache type 0 or 1) the section generates
//! seeded workloads exactly as `cargo xtask crash-test --order O --type T` does (the same
//! `generate` parameters, the default `ExploreOpts`: every crash point, subsets of the pending
//! writes, tears, random choices, crashes inside recovery, continuations with a second crash)
//! and runs `explore_workload` on them one after another on ONE thread, each for at most a
//! fixed slice of time (one workload can hold tens of thousands of states, so without the slice
//! a budget would see one or two workloads). A *state* is what the explorer counts: one distinct
//! set of crash images recovered, its invariants checked, the whole exported device read (twice)
//! and judged by both oracles. States per second on one thread is states per core-second.
//!
//! Then where the time of a state goes, from the explorer's own phase counters
//! (`crashsim::explore::phases`, summed over the same runs). And one configuration again on
//! every core with the same workloads and slices, for the scaling ratio. Any violation aborts
//! the bench with its replay command: a violation is a bug, never a number.
//!
//! The baseline is a stated number, not a measurement: the target (docs/DESIGN.md, "Performance
//! targets") is at least 100,000 states per core-second; kernel crash testers manage about one
//! per second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crashsim::explore::phases::{Phase, PhaseTimes};
use crashsim::explore::{
    explore_workload, generate, shrink, ExploreOpts, GenParams, Violation, Workload,
};
use engine::format::SECTOR_SIZE;

use super::{Mode, Section, Table};

pub struct CrashRate;

/// (segment order, cache type) of each row: the smallest order the explorer runs by default
/// and upstream's.
const CONFIGS: [(u8, u8); 4] = [(4, 0), (4, 1), (10, 0), (10, 1)];
/// The configuration run again on every core for the scaling ratio.
const SCALING_CONFIG: (u8, u8) = (4, 0);
/// Seed of the first workload (as `cargo xtask crash-test --seed 1`).
const FIRST_SEED: u64 = 1;
/// The target (docs/DESIGN.md): crash states per core-second on small configurations.
const TARGET: f64 = 100_000.0;
/// What kernel crash testers manage, states per second.
const KERNEL_TESTERS: f64 = 1.0;
/// A rate from fewer states than this is called rough in the notes.
const FEW_STATES: u64 = 10_000;

/// How much work: workloads per configuration and the time slice of each.
struct Budget {
    workloads: u64,
    slice: Duration,
}

fn budget(mode: Mode) -> Budget {
    match mode {
        // 8 s per configuration.
        Mode::Quick => Budget {
            workloads: 8,
            slice: Duration::from_secs(1),
        },
        // 30 seeds, 60 s per configuration.
        Mode::Full => Budget {
            workloads: 30,
            slice: Duration::from_secs(2),
        },
    }
}

/// The generator's parameters for one configuration, as `cargo xtask crash-test` sets them.
fn gen_params(order: u8, cache_type: u8) -> GenParams {
    GenParams {
        order: Some(order),
        unit_sectors: None,
        faults: Default::default(),
        quirks: Vec::new(),
        cache_type,
        min_ops: 6,
        max_ops: 40,
        swarm: false,
    }
}

struct Rate {
    order: u8,
    cache_type: u8,
    threads: usize,
    secs: f64,
    states: u64,
    workloads: u64,
    /// Workloads explored to the end within their slice.
    complete: u64,
    /// Device image bytes (cache + backing + plog) per state, averaged over the states.
    image_bytes_per_state: f64,
    ops_per_workload: f64,
    /// The explorer's own phase times, summed over the workloads.
    phases: PhaseTimes,
}

impl Rate {
    fn per_sec(&self) -> f64 {
        self.states as f64 / self.secs
    }
    fn per_core_sec(&self) -> f64 {
        self.per_sec() / self.threads as f64
    }
}

fn image_bytes(w: &Workload) -> u64 {
    let c = &w.config;
    (c.cache_sectors() + c.backing_sectors() + c.plog_sectors().unwrap_or(0)) * SECTOR_SIZE as u64
}

/// The error that aborts the bench: the violations with the command that replays them, the
/// first one shrunk (20 s at most) so its command is short.
fn violation_error(order: u8, cache_type: u8, vs: &[Violation], count: u64) -> String {
    let mut msg = format!(
        "{count} crash-consistency violation(s) at order {order}, type {cache_type}: the engine \
         is broken, refusing to report a rate"
    );
    if let Some(v) = vs.first() {
        let opts = ExploreOpts {
            deadline: Some(Instant::now() + Duration::from_secs(20)),
            ..ExploreOpts::default()
        };
        let small = shrink(v, &opts, 200);
        msg.push_str(&format!(
            "\n  {} oracle: {}\n  replay: cargo xtask crash-test --replay '{}'",
            small.finding.kind.name(),
            small.finding.detail,
            small.case()
        ));
    }
    for v in vs.iter().skip(1).take(4) {
        msg.push_str(&format!(
            "\n  also ({}): cargo xtask crash-test --replay '{}'",
            v.finding.kind.name(),
            v.case()
        ));
    }
    msg
}

/// Explores `b.workloads` seeded workloads, each for at most `b.slice`, on `threads` threads.
fn measure(order: u8, cache_type: u8, b: &Budget, threads: usize) -> Result<Rate, String> {
    let gp = gen_params(order, cache_type);
    let next = AtomicU64::new(0);
    let failed: Mutex<Option<String>> = Mutex::new(None);
    // (states, complete, image bytes, operations, phase times) per workload.
    type Done = (u64, bool, u64, usize, PhaseTimes);
    let done: Mutex<Vec<Done>> = Mutex::new(Vec::new());
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= b.workloads || failed.lock().unwrap().is_some() {
                    break;
                }
                let w = generate(FIRST_SEED + i, &gp);
                let deadline = Instant::now() + b.slice;
                let opts = ExploreOpts {
                    deadline: Some(deadline),
                    ..ExploreOpts::default()
                };
                let r = explore_workload(&w, &opts);
                if r.violation_count > 0 {
                    let e = violation_error(order, cache_type, &r.violations, r.violation_count);
                    failed.lock().unwrap().get_or_insert(e);
                    break;
                }
                let complete = Instant::now() < deadline;
                done.lock().unwrap().push((
                    r.states,
                    complete,
                    image_bytes(&w),
                    w.ops.len(),
                    r.points.phases,
                ));
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    if let Some(e) = failed.into_inner().unwrap() {
        return Err(e);
    }
    let done = done.into_inner().unwrap();
    let states: u64 = done.iter().map(|d| d.0).sum();
    if states == 0 {
        return Err(format!(
            "order {order}, type {cache_type}: no crash state checked in {secs:.1} s"
        ));
    }
    let weighted: f64 = done.iter().map(|d| d.0 as f64 * d.2 as f64).sum();
    let ops: usize = done.iter().map(|d| d.3).sum();
    let mut phases = PhaseTimes::default();
    for d in &done {
        phases.add(&d.4);
    }
    Ok(Rate {
        order,
        cache_type,
        threads,
        secs,
        states,
        workloads: done.len() as u64,
        complete: done.iter().filter(|d| d.1).count() as u64,
        image_bytes_per_state: weighted / states as f64,
        ops_per_workload: ops as f64 / done.len() as f64,
        phases,
    })
}

fn x_of(v: f64, of: f64) -> String {
    let x = v / of;
    if x >= 10.0 {
        format!("{x:.0}×")
    } else if x >= 0.1 {
        format!("{x:.2}×")
    } else {
        format!("{x:.3}×")
    }
}

fn kib(bytes: f64) -> String {
    format!("{:.0}", bytes / 1024.0)
}

impl Section for CrashRate {
    fn name(&self) -> &'static str {
        "crash-rate"
    }

    fn title(&self) -> &'static str {
        "Crash-test throughput: crash states checked per core-second"
    }

    fn run(&self, mode: Mode) -> Result<String, String> {
        // As crash-test does: recovery's buffers are reused, not faulted in again per state.
        crate::heap::keep_freed_memory();
        let b = budget(mode);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut rates = Vec::new();
        for &(order, ty) in &CONFIGS {
            eprintln!(
                "bench: crash-rate order {order}, type {ty}: {} workloads, one thread",
                b.workloads
            );
            rates.push(measure(order, ty, &b, 1)?);
        }
        let scaling = if cores > 1 {
            let (order, ty) = SCALING_CONFIG;
            eprintln!("bench: crash-rate order {order}, type {ty}: {cores} threads");
            Some(measure(order, ty, &b, cores)?)
        } else {
            None
        };

        let mut md = String::new();
        md.push_str(&format!(
            "Seeded workloads {FIRST_SEED}..={} ({}–{} operations each, as `cargo xtask \
             crash-test --order O --type T` generates them), explored with the default options \
             on **one thread**, each for at most {} s (the states checked until then count; \
             *complete* workloads ran out of states first). A *state* is one distinct set of \
             crash images: recovered, invariants checked, the whole exported device read back \
             twice and judged by the block and prefix oracles. No violation was found (one \
             would have aborted the bench with its replay command).\n\n",
            FIRST_SEED + b.workloads - 1,
            gen_params(4, 0).min_ops,
            gen_params(4, 0).max_ops,
            b.slice.as_secs_f64()
        ));
        md.push_str(
            "**Baseline: stated, not measured.** The target (docs/DESIGN.md, Performance \
             targets) is ≥ 100,000 crash states per core-second on small configurations; kernel \
             crash testers manage about one per second. The ratios are against those two \
             numbers.\n\n",
        );
        let mut t = Table::new(&[
            "order",
            "type",
            "states",
            "workloads (complete)",
            "ops / workload",
            "seconds",
            "states / core-s",
            "÷ target (100k)",
            "÷ kernel testers (1/s)",
            "µs / state",
            "image KiB / state",
        ]);
        for r in &rates {
            t.row(vec![
                r.order.to_string(),
                r.cache_type.to_string(),
                r.states.to_string(),
                format!("{} ({})", r.workloads, r.complete),
                format!("{:.1}", r.ops_per_workload),
                format!("{:.1}", r.secs),
                format!("{:.0}", r.per_core_sec()),
                x_of(r.per_core_sec(), TARGET),
                x_of(r.per_core_sec(), KERNEL_TESTERS),
                format!("{:.1}", 1e6 / r.per_core_sec()),
                kib(r.image_bytes_per_state),
            ]);
        }
        md.push_str(&t.to_markdown());
        md.push_str(
            "\n*image KiB / state*: the size of the crash images of one state (cache device with \
             its 1 MiB superblock area, backing device, plog), averaged over the states; the \
             images are copy-on-write, so a state copies only the 4 KiB chunks its choice and \
             its recovery write.\n\n",
        );

        md.push_str("### Where the time of a state goes\n\n");
        md.push_str(
            "The explorer's own phase counters (`crashsim::explore::phases`) over the runs \
             above, all levels included (crashes inside recovery and continuations); \
             percentages of the run's time. *Other*: what no phase counts (freeing images and \
             engines, the loop's bookkeeping).\n\n",
        );
        let mut header = vec!["order", "type", "µs / state"];
        header.extend(Phase::ALL.map(Phase::name));
        header.push("other");
        let mut t = Table::new(&header);
        for r in &rates {
            let mut row = vec![
                r.order.to_string(),
                r.cache_type.to_string(),
                format!("{:.1}", 1e6 / r.per_core_sec()),
            ];
            row.extend(
                phase_shares(r)
                    .iter()
                    .map(|(_, f)| format!("{:.0} %", 100.0 * f)),
            );
            t.row(row);
        }
        md.push_str(&t.to_markdown());
        md.push('\n');

        if let Some(sc) = &scaling {
            let one = rates
                .iter()
                .find(|r| (r.order, r.cache_type) == SCALING_CONFIG)
                .expect("the scaling configuration ran on one thread");
            md.push_str(&format!(
                "**All cores** (order {}, type {}, the same {} workloads and slices on {} \
                 threads, {:.1} s): {} states, {:.0} states/s in total, {:.0} per core-second: \
                 {:.2}× the one-thread rate ({:.2}× per core).\n\n",
                sc.order,
                sc.cache_type,
                sc.workloads,
                sc.threads,
                sc.secs,
                sc.states,
                sc.per_sec(),
                sc.per_core_sec(),
                sc.per_sec() / one.per_sec(),
                sc.per_core_sec() / one.per_sec()
            ));
        }

        md.push_str(&notes(&rates, scaling.as_ref()));
        Ok(md)
    }
}

/// Notes derived from the measured numbers.
/// Each phase's share of a run's time, and what no phase counted, in `Phase::ALL` order then
/// "other".
fn phase_shares(r: &Rate) -> Vec<(&'static str, f64)> {
    let run_ns = (r.secs * 1e9 * r.threads as f64).max(1.0);
    let mut v: Vec<(&'static str, f64)> = Phase::ALL
        .iter()
        .map(|&p| (p.name(), r.phases.get(p) as f64 / run_ns))
        .collect();
    let counted = r.phases.total() as f64 / run_ns;
    v.push(("other", (1.0 - counted).max(0.0)));
    v
}

fn notes(rates: &[Rate], scaling: Option<&Rate>) -> String {
    let mut out = String::new();
    let below: Vec<String> = rates
        .iter()
        .filter(|r| r.per_core_sec() < TARGET)
        .map(|r| {
            format!(
                "order {} type {}: {}",
                r.order,
                r.cache_type,
                x_of(r.per_core_sec(), TARGET)
            )
        })
        .collect();
    let lo = rates
        .iter()
        .map(Rate::per_core_sec)
        .fold(f64::INFINITY, f64::min);
    let hi = rates.iter().map(Rate::per_core_sec).fold(0.0, f64::max);
    if below.is_empty() {
        out.push_str("- Every configuration meets the target of 100,000 states per core-second.\n");
    } else {
        out.push_str(&format!(
            "- **We miss the target** of 100,000 states per core-second ({} of the \
             target).\n",
            below.join(", "),
        ));
    }
    out.push_str(&format!(
        "- Against the stated one state per second of kernel crash testers every configuration \
         is {} to {} faster (a stated number, not measured here).\n",
        x_of(lo, KERNEL_TESTERS),
        x_of(hi, KERNEL_TESTERS),
    ));
    for r in rates {
        let mut parts = phase_shares(r);
        parts.sort_by(|a, b| b.1.total_cmp(&a.1));
        out.push_str(&format!(
            "- Order {} type {}: a state costs {:.0} µs; {} ({:.0} %) and {} ({:.0} %) \
             dominate, with crash images of {} KiB per state.\n",
            r.order,
            r.cache_type,
            1e6 / r.per_core_sec(),
            parts[0].0,
            100.0 * parts[0].1,
            parts[1].0,
            100.0 * parts[1].1,
            kib(r.image_bytes_per_state),
        ));
    }
    let few: Vec<String> = rates
        .iter()
        .filter(|r| r.states < FEW_STATES)
        .map(|r| format!("order {} type {} ({})", r.order, r.cache_type, r.states))
        .collect();
    if !few.is_empty() {
        out.push_str(&format!(
            "- Rough: {} rest on fewer than {FEW_STATES} states, all from the first crash \
             points of each workload; the full mode's longer slices give steadier numbers.\n",
            few.join(", ")
        ));
    }
    for ty in [0u8, 1] {
        let of = |o: u8| rates.iter().find(|r| r.order == o && r.cache_type == ty);
        if let (Some(a), Some(b)) = (of(10), of(4)) {
            out.push_str(&format!(
                "- Type {ty}: order 10 checks {:.2}× the states per second of order 4, with \
                 {:.1}× the image bytes per state.\n",
                a.per_core_sec() / b.per_core_sec(),
                a.image_bytes_per_state / b.image_bytes_per_state,
            ));
        }
    }
    if let Some(sc) = scaling {
        let per_core = sc.per_core_sec()
            / rates
                .iter()
                .find(|r| (r.order, r.cache_type) == (sc.order, sc.cache_type))
                .map_or(1.0, Rate::per_sec);
        if per_core < 0.9 {
            out.push_str(&format!(
                "- On {} threads each core checks {per_core:.2}× what one thread alone does: \
                 the threads share memory bandwidth and caches, \
                 and whatever else runs on the machine competes for the cores.\n",
                sc.threads
            ));
        } else {
            out.push_str(&format!(
                "- The explorer scales with cores ({per_core:.2}× per core on {} threads): \
                 workloads share nothing.\n",
                sc.threads
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_measurement_counts_states_and_finds_no_violation() {
        let b = Budget {
            workloads: 2,
            slice: Duration::from_millis(200),
        };
        let r = measure(4, 0, &b, 1).unwrap();
        assert_eq!(r.workloads, 2);
        assert!(r.states > 0);
        assert!(
            r.image_bytes_per_state > 1024.0 * 1024.0,
            "the superblock area alone"
        );
        let shares = phase_shares(&r);
        let sum: f64 = shares.iter().map(|s| s.1).sum();
        assert!((0.99..=1.01).contains(&sum), "{shares:?}");
        for p in [
            Phase::Recovery,
            Phase::ReadBack,
            Phase::Oracles,
            Phase::Choices,
        ] {
            assert!(r.phases.get(p) > 0, "the explorer timed {}", p.name());
        }
    }
}
