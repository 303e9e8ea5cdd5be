//! `cargo xtask crash-test`: runs seeded (or bounded-exhaustive) workloads on simulated devices,
//! checks every crash state of each, and prints one replay command per violation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::Args;
use crashsim::explore::{
    bounded_workloads, coverage, explore_orders, explore_workload, generate, replay_case,
    scenario_workloads, shrink, BoundedParams, ExploreOpts, FaultSet, GenParams, Kind, Level,
    OracleSel, OrderCoverage, PointTally, Violation, WlOp, Workload, SCENARIOS,
};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args, Debug, Clone)]
pub struct CrashTestArgs {
    /// First workload seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of seeded workloads (seeds seed, seed+1, ...). Sixty: swarm runs draw EIO faults
    /// and 4 KiB units, whose workloads have fewer crash states, so the default run checks as
    /// many states (about 970,000) as 30 workloads without them did.
    #[arg(long, default_value_t = 60)]
    seeds: u64,
    /// Stop starting new workloads after this many seconds.
    #[arg(long)]
    time: Option<u64>,
    /// Look harder: every subset up to 10 pending writes, and crash after every device write.
    #[arg(long)]
    exhaustive: bool,
    /// Crash after every device write (fine mode) without the larger subsets of --exhaustive.
    #[arg(long)]
    fine: bool,
    /// Which oracles judge the recovered device.
    #[arg(long, value_enum, default_value_t = OracleArg::Both)]
    oracle: OracleArg,
    /// Fault switch of the simulated cache device (repeatable): lying-flush, lying-fua,
    /// misdirect, bit-rot (must produce violations: the engine cannot survive them),
    /// garbage-torn, eio-write, eio-read (must not: errors are reported, never lies).
    #[arg(long = "fault")]
    faults: Vec<String>,
    #[arg(long = "quirk", help = quirk_help())]
    quirks: Vec<String>,
    /// Segment size order of the workloads (default: 4, some 5).
    #[arg(long, value_parser = clap::value_parser!(u8).range(4..=10))]
    order: Option<u8>,
    /// Atomic write unit of the simulated devices in bytes: 512 or 4096 (default: mixed).
    #[arg(long)]
    unit: Option<u64>,
    /// Cache type of the seeded workloads: 0 (RAM buffers) or 1 (persistent log: every hazard
    /// scenario runs as type 1 too).
    #[arg(long = "type", default_value_t = 0)]
    cache_type: u8,
    /// Run only the workloads with index % N == I, given as I/N.
    #[arg(long)]
    shard: Option<String>,
    /// Re-run exactly one crash case (as printed with a violation) and explain it.
    #[arg(long)]
    replay: Option<String>,
    /// Bounded-exhaustive mode: every workload of up to L operations over a small alphabet on the
    /// smallest geometry, every crash state of each.
    #[arg(long)]
    bounded: Option<usize>,
    /// Distinct blocks in bounded mode (2 or 3).
    #[arg(long, default_value_t = 2)]
    bounded_blocks: u64,
    /// Ring slots in bounded mode (2..=4).
    #[arg(long, default_value_t = 2)]
    bounded_slots: u64,
    /// Bounded mode: the most completion orders explored per workload (every order when a
    /// workload has no more; the summary says how many workloads had more).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    orders: u64,
    /// Print the summary (and violations) as JSON before the last line.
    #[arg(long)]
    json: bool,
    /// Worker threads (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, help = scenario_help())]
    scenario: Option<String>,
    /// Switch on every seed quirk in turn and hunt it (up to --zoo-budget seconds each); print a
    /// table. Fails if any quirk is not caught.
    #[arg(long)]
    zoo: bool,
    /// Seconds to hunt each quirk in --zoo.
    #[arg(long, default_value_t = 60)]
    zoo_budget: u64,
    /// Violations to shrink and print in full (the rest are counted).
    #[arg(long, default_value_t = 3)]
    show: usize,
    /// Stop once N violations are found, each in another workload [default: 1: the first
    /// violation, shrunk, with its replay command].
    #[arg(long, value_name = "N", conflicts_with = "keep_going",
          value_parser = clap::value_parser!(u64).range(1..))]
    max_violations: Option<u64>,
    /// Explore every crash state of every workload, however many violations turn up, and
    /// count them all.
    #[arg(long)]
    keep_going: bool,
    /// Leave one kind of operation out of every workload (repeatable): zeroes (discards and
    /// write-zeroes), fua, partial (writes of part of a block), background (steps left
    /// running), reads (reads in flight together), messages (drop_caches, tunable changes,
    /// timer ticks). Shows what the coverage check does when a workload feature goes missing.
    #[arg(
        long = "without",
        value_parser = ["zeroes", "fua", "partial", "background", "reads", "messages"]
    )]
    without: Vec<String>,
    /// Every seeded workload runs with the fixed settings (writeback ahead of need, no
    /// `allow_writeback`, no survivable fault) instead of drawing them from its seed.
    #[arg(long)]
    no_swarm: bool,
    /// Read every block of every recovered device back through the engine, instead of only
    /// the blocks that can differ from the initial content (docs/DESIGN.md, "Crash simulator
    /// and oracles"): the switch that shows the read-back shortcut changes no verdict.
    #[arg(long)]
    no_shortcuts: bool,
}

impl CrashTestArgs {
    /// The default seeded type-0 run (`cargo xtask crash-test`, perhaps with `--without`): the
    /// one that must reach every required probe.
    fn is_default_run(&self) -> bool {
        self.quirks.is_empty()
            && self.faults.is_empty()
            && self.cache_type == 0
            && self.bounded.is_none()
            && self.scenario.is_none()
            && self.shard.is_none()
            && self.replay.is_none()
            && self.order.is_none()
            && self.unit.is_none()
            && self.time.is_none()
            && self.seeds >= 30
    }
}

/// Whether `--without` leaves `op` out.
fn left_out(without: &[String], op: &WlOp) -> bool {
    without.iter().any(|w| match (w.as_str(), op) {
        ("zeroes", WlOp::Discard { .. } | WlOp::Zeroes { .. }) => true,
        ("reads", WlOp::ReadMany { .. }) => true,
        ("fua", WlOp::Write { fua: true, .. }) => true,
        (
            "partial",
            WlOp::Write {
                sector, sectors, ..
            },
        ) => sector % 8 != 0 || sectors % 8 != 0,
        ("background", WlOp::Background(_)) => true,
        ("messages", WlOp::DropCaches | WlOp::Tick | WlOp::Tunable { .. }) => true,
        _ => false,
    })
}

/// What a crash-test run found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub states: u64,
    /// Workloads explored (those cut short by an early stop included).
    pub workloads: u64,
    /// Workloads there were to explore.
    pub total: u64,
    pub violations: u64,
    /// Why the run ended before exploring everything, if it did.
    pub stopped_early: Option<String>,
    /// The violations printed, shrunk.
    pub shown: Vec<Violation>,
    /// No violation, and (zoo) every quirk caught.
    pub passed: bool,
    /// How the top-level crash points were enumerated, summed over the workloads (printed as
    /// the `coverage:` line; the tests read it from here).
    #[cfg_attr(not(test), allow(dead_code))]
    pub points: PointTally,
    /// Bounded mode: whether the run was exhaustive for its space (see the summary line).
    #[cfg_attr(not(test), allow(dead_code))]
    pub bounded_exhaustive: Option<bool>,
}

/// The first words of a finding's report: what kind of failure it is.
fn headline(v: &Violation) -> String {
    match v.finding.kind {
        Kind::Harness => {
            "harness error (the tester could not check a crash state: a bug of the tester, not \
             of the engine)"
                .to_string()
        }
        Kind::Panic => "violation (a panic: an engine, recovery or oracle assertion fired)".into(),
        kind => format!("violation ({} oracle)", kind.name()),
    }
}

/// `--quirk`'s help, listing every quirk this build knows.
fn quirk_help() -> String {
    format!(
        "Seed quirk to switch back on (repeatable): {} (docs/HAZARDS.md). Must produce \
         violations",
        crashsim::explore::quirk_names().join(", ")
    )
}

/// `--scenario`'s help, listing every hand-written scenario.
fn scenario_help() -> String {
    let names: Vec<&str> = SCENARIOS.iter().map(|s| s.0).collect();
    format!(
        "Run only the hand-written scenario for this hazard ({}); by default they all run \
         before the seeded workloads",
        names.join(", ")
    )
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum OracleArg {
    Block,
    Prefix,
    Both,
}

fn parse_shard(s: &str) -> Result<(u64, u64), String> {
    let (i, n) = s.split_once('/').ok_or("--shard takes I/N")?;
    let i: u64 = i.parse().map_err(|_| "--shard: I is not a number")?;
    let n: u64 = n.parse().map_err(|_| "--shard: N is not a number")?;
    if n == 0 || i >= n {
        return Err(format!("--shard {s}: need 0 <= I < N"));
    }
    Ok((i, n))
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn replay_command(v: &Violation, oracle: OracleArg) -> String {
    let oracle = match oracle {
        OracleArg::Both => String::new(),
        OracleArg::Block => " --oracle block".into(),
        OracleArg::Prefix => " --oracle prefix".into(),
    };
    format!("cargo xtask crash-test{oracle} --replay '{}'", v.case())
}

pub fn run(args: CrashTestArgs) -> Result<bool, String> {
    Ok(run_outcome(args)?.passed)
}

/// `crash-test WORDS` as `cargo xtask crash-test` would parse them.
pub fn parse_args(words: &[&str]) -> Result<CrashTestArgs, String> {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: CrashTestArgs,
    }
    let argv = std::iter::once("crash-test").chain(words.iter().copied());
    <Cli as clap::Parser>::try_parse_from(argv)
        .map(|c| c.args)
        .map_err(|e| e.to_string())
}

/// `cargo xtask test`'s stage: the crash-test `words` ask for, which must find nothing. Its
/// line says what was checked, or names the first violation and its replay command.
pub fn stage(words: &[&str]) -> crate::stages::StageResult {
    let o = run_outcome(parse_args(words)?)?;
    if o.passed {
        return Ok(if o.total == 0 {
            // The zoo, which reports its own table.
            "every seed quirk caught".to_string()
        } else {
            format!(
                "{} crash states of {} of {} workloads, 0 violations",
                o.states, o.workloads, o.total
            )
        });
    }
    Err(match o.shown.first() {
        Some(v) => format!(
            "{} violation(s){}; the first: {}: {}; replay: {}",
            o.violations,
            if o.stopped_early.is_some() {
                " (it stopped there)"
            } else {
                ""
            },
            headline(v),
            v.finding.detail,
            replay_command(v, OracleArg::Both)
        ),
        None => format!("{} violation(s) (or a missed quirk)", o.violations),
    })
}

/// Runs the crash-test `args` ask for, prints its report, and returns what it found.
pub fn run_outcome(args: CrashTestArgs) -> Result<Outcome, String> {
    crate::heap::keep_freed_memory();
    let oracle = match args.oracle {
        OracleArg::Block => OracleSel::Block,
        OracleArg::Prefix => OracleSel::Prefix,
        OracleArg::Both => OracleSel::Both,
    };
    if args.cache_type > 1 {
        return Err(format!(
            "--type {}: the cache types are 0 (RAM buffers) and 1 (persistent log)",
            args.cache_type
        ));
    }
    if let Some(case) = &args.replay {
        return replay(case, oracle).map(|passed| Outcome {
            passed,
            ..Outcome::default()
        });
    }
    if args.zoo {
        let threads = args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let ok = crate::zoo::run(Duration::from_secs(args.zoo_budget), threads.max(1));
        println!(
            "crash-test: zoo {}",
            if ok {
                "caught every quirk"
            } else {
                "missed a quirk"
            }
        );
        return Ok(Outcome {
            passed: ok,
            ..Outcome::default()
        });
    }
    let known = crashsim::explore::quirk_names();
    if let Some(q) = args.quirks.iter().find(|q| !known.contains(&q.as_str())) {
        return Err(format!("unknown quirk {q:?} (known: {})", known.join(", ")));
    }
    let mut faults = FaultSet::default();
    for f in &args.faults {
        faults.set(f)?;
    }
    let unit_sectors = match args.unit {
        None => None,
        Some(512) => Some(1),
        Some(4096) => Some(8),
        Some(u) => return Err(format!("--unit {u}: the atomic unit is 512 or 4096 bytes")),
    };
    let shard = args.shard.as_deref().map(parse_shard).transpose()?;
    let start = Instant::now();
    let deadline = args.time.map(|t| start + Duration::from_secs(t));
    // By default the run ends at its first violation: a user wants that one, shrunk, with its
    // replay command, not millions more of the same (a lying flush breaks nearly every state).
    let max_violations = match (args.keep_going, args.max_violations) {
        (true, _) => None,
        (false, n) => Some(n.unwrap_or(1)),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut opts = ExploreOpts {
        oracle,
        fine: args.fine || args.exhaustive,
        deadline,
        // With a limit, a workload ends at its first violation and the others at the limit.
        stop_at_first: max_violations.is_some(),
        cancel: max_violations.map(|_| stop.clone()),
        shortcuts: !args.no_shortcuts,
        ..ExploreOpts::default()
    };
    if args.exhaustive {
        opts.exhaustive_bound = 10;
        opts.k = 3;
        opts.random = 16;
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);

    // The workload source: bounded-exhaustive or seeded.
    let mut bounded_space = None;
    let workloads: Box<dyn Iterator<Item = Workload> + Send> = match args.bounded {
        Some(len) => {
            if !(2..=3).contains(&args.bounded_blocks) || !(2..=4).contains(&args.bounded_slots) {
                return Err("--bounded-blocks is 2..=3 and --bounded-slots 2..=4".into());
            }
            let order = args.order.unwrap_or(engine::format::MIN_ORDER);
            if !(4..=5).contains(&order) {
                return Err(format!("--bounded runs at --order 4 or 5, not {order}"));
            }
            let p = BoundedParams {
                max_len: len,
                blocks: args.bounded_blocks,
                nr_segments: args.bounded_slots,
                unit_sectors: unit_sectors.unwrap_or(1),
                faults,
                quirks: args.quirks.clone(),
                order,
                cache_type: args.cache_type,
            };
            let all: Vec<Workload> = bounded_workloads(&p).collect();
            let ops: Vec<String> = crashsim::explore::alphabet(p.blocks)
                .iter()
                .map(|op| op.to_string())
                .collect();
            let geometry = all.first().map(|w| w.to_string()).unwrap_or_default();
            let geometry = geometry.split(';').next().unwrap_or_default().to_string();
            bounded_space = Some(format!(
                "every workload of up to {len} operations over the alphabet {{{}}} on the \
                 geometry {geometry}",
                ops.join(" ")
            ));
            eprintln!(
                "crash-test: bounded mode, {} workloads of up to {len} operations",
                all.len()
            );
            opts.continuation_every = 0;
            Box::new(all.into_iter())
        }
        None => {
            let gp = GenParams {
                order: args.order,
                unit_sectors,
                faults,
                quirks: args.quirks.clone(),
                cache_type: args.cache_type,
                min_ops: 6,
                max_ops: 40,
                swarm: args.quirks.is_empty() && args.faults.is_empty() && !args.no_swarm,
            };
            // The hand-written hazard scenarios first (with the same faults, quirks and unit),
            // then the seeded workloads.
            let mut scenarios = Vec::new();
            for (name, mut w) in scenario_workloads() {
                if args.scenario.as_ref().is_some_and(|s| s != name) {
                    continue;
                }
                w.config.faults = faults;
                w.config.quirks = args.quirks.clone();
                if args.cache_type == 1 && w.config.cache_type == 0 {
                    // Every hazard scenario also runs against the plog.
                    w.config.cache_type = 1;
                    w.config.plog_regions = 2;
                }
                if let Some(u) = unit_sectors {
                    w.config.unit_sectors = u;
                }
                scenarios.push(w);
            }
            if let Some(name) = &args.scenario {
                if scenarios.is_empty() {
                    let names: Vec<&str> = SCENARIOS.iter().map(|s| s.0).collect();
                    return Err(format!(
                        "no scenario {name:?} (known: {})",
                        names.join(", ")
                    ));
                }
            }
            let first = args.seed;
            let seeds = if args.scenario.is_some() {
                0
            } else {
                args.seeds
            };
            Box::new(
                scenarios
                    .into_iter()
                    .chain((0..seeds).map(move |i| generate(first.wrapping_add(i), &gp))),
            )
        }
    };
    let without = args.without.clone();
    let workloads: Vec<Workload> = workloads
        .enumerate()
        .filter(|(i, _)| shard.is_none_or(|(si, n)| *i as u64 % n == si))
        .map(|(_, mut w)| {
            w.ops.retain(|op| !left_out(&without, op));
            w
        })
        .collect();

    let total = workloads.len() as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} workloads {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let next = AtomicU64::new(0);
    // A run that stops at its first violation shows that one (a state can fail two oracles).
    let shown_at_most = max_violations.map_or(args.show, |m| args.show.min(m as usize));
    let (tx, rx) = mpsc::channel();
    let mut states = 0u64;
    let mut done = 0u64;
    let mut violations: Vec<Violation> = Vec::new();
    let mut nviolations = 0u64;
    let mut last_line = Instant::now();
    let mut orders = orders::OrderTally::default();
    let mut points = PointTally::default();
    let mut sampled_workloads = 0u64;
    let mut bounded_exhaustive = None;
    let (bounded, max_orders) = (args.bounded.is_some(), args.orders);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (workloads, next, stop, opts) = (&workloads, &next, &stop, &opts);
            s.spawn(move || loop {
                if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(w) = workloads.get(i as usize) else {
                    break;
                };
                let r = match bounded {
                    true => explore_orders(w, opts, max_orders),
                    false => (explore_workload(w, opts), OrderCoverage::default()),
                };
                if tx.send(r).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for (r, cov) in rx {
            done += 1;
            orders.add(cov);
            points.add(r.points);
            sampled_workloads += (r.points.sampled > 0) as u64;
            states += r.states;
            nviolations += r.violation_count;
            if max_violations.is_some_and(|m| nviolations >= m) {
                stop.store(true, Ordering::Relaxed);
            }
            for v in r.violations {
                // Keep the first violation of each kind for shrinking and printing.
                if violations.len() < shown_at_most
                    && !violations.iter().any(|k| k.finding.kind == v.finding.kind)
                {
                    violations.push(v);
                }
            }
            bar.set_position(done);
            bar.set_message(format!("{states} states, {nviolations} violations"));
            if bar.is_hidden() && last_line.elapsed() >= Duration::from_secs(10) {
                eprintln!(
                    "crash-test: {done}/{total} workloads, {states} states, {nviolations} violations, {:.0}s",
                    start.elapsed().as_secs_f64()
                );
                last_line = Instant::now();
            }
        }
    });
    bar.finish_and_clear();
    let elapsed = start.elapsed().as_secs_f64();

    let mut shown = Vec::new();
    let stopped_early = if stop.load(Ordering::Relaxed) {
        Some(format!(
            "stopped early after {nviolations} violation(s), with {done} of {total} workloads \
             explored (the limit is {}: --max-violations N raises it, --keep-going explores \
             everything)",
            max_violations.unwrap_or(0)
        ))
    } else {
        None
    };
    for v in &violations {
        // Shrinking gets its own time budget, whatever --time said about the search, and is
        // not cut short by the early stop.
        let shrink_opts = ExploreOpts {
            deadline: Some(Instant::now() + Duration::from_secs(20)),
            cancel: None,
            ..opts.clone()
        };
        let small = shrink(v, &shrink_opts, 200);
        println!("{}: {}", headline(&small), small.finding.detail);
        println!(
            "  shrunk workload: {} operations (from {}): {}",
            small.workload.ops.len(),
            v.workload.ops.len(),
            small.workload
        );
        if let Some(ops) = continuation_text(&small) {
            println!("  {ops}");
        }
        println!("  replay: {}", replay_command(&small, args.oracle));
        println!(
            "  keep it (once fixed, `cargo test` replays it): echo '{}' >> crashsim/regressions/found.cases",
            small.case()
        );
        shown.push(small);
    }
    if nviolations as usize > shown.len() {
        println!(
            "({} more violations not shown; --show N prints more)",
            nviolations as usize - shown.len()
        );
    }
    if let Some(len) = args.bounded {
        if done == total {
            println!(
                "bounded: L = {len} reached, {done} workloads, {states} states in {elapsed:.1}s"
            );
        } else {
            println!("bounded: L = {len} NOT reached ({done} of {total} workloads), {states} states in {elapsed:.1}s");
        }
        println!("bounded: {}", orders.describe(max_orders));
        let space = bounded_space.as_deref().unwrap_or("the bounded workloads");
        let exhaustive = done == total && orders.capped == 0 && points.sampled == 0;
        bounded_exhaustive = Some(exhaustive);
        if exhaustive {
            println!(
                "bounded: exhaustive for {space}: every completion order, and every subset of \
                 the pending writes at every crash point (tears: the single-unit tears of cache \
                 and plog writes, all of them for writes of up to 32 units; combinations of \
                 tears are sampled)"
            );
        } else {
            println!(
                "bounded: NOT exhaustive for {space}: {} workload(s) not explored, {} cut short \
                 in completion order, {sampled_workloads} with sampled crash points",
                total - done,
                orders.capped
            );
        }
    }
    println!(
        "coverage: {} top-level crash points had every subset of their pending writes tried, \
         {} were sampled (more than {} pending: subsets of up to {}, at most 1200), {} repeated \
         an earlier state (random choices only); {} of {done} workloads had no sampled point",
        points.all_subsets,
        points.sampled,
        opts.exhaustive_bound,
        opts.k,
        points.repeated,
        done - sampled_workloads
    );
    println!(
        "peer: {} crash states were also judged by what dm-writeboost 2.2.17's replay would show \
         (orderly type-0 rings; in the rest a torn or stale slot lies where its replay goes wrong by design, \
         seed hazards H1 and H2: wbcache must open those first)",
        points.peer_judged
    );
    if points.no_prefix > 0 {
        println!(
            "bypass: {} crash states of workloads with sequential bypass on were judged by the block \
             oracle only (rule 3): bypassed writes are ordered like a disk's, not as a prefix \
             (docs/DESIGN.md, \"Sequential bypass\")",
            points.no_prefix
        );
    }
    println!(
        "checked {states} crash states of {done} workloads in {elapsed:.1}s ({:.0} states/s on {threads} threads)",
        states as f64 / elapsed.max(1e-9)
    );
    let quirk_rows = coverage::quirk_rows(&points.probes, &args.quirks);
    print_probes(&points, &quirk_rows);
    let mut unreached: Vec<String> = Vec::new();
    if args.is_default_run() {
        let required = coverage::unreached_required(&points.probes, &points.sim);
        unreached.extend(required.into_iter().map(String::from));
    }
    // A fault switch or quirk asked for whose code never ran tested nothing.
    let faults_asked = coverage::unreached_faults(&points.sim, &faults);
    unreached.extend(faults_asked.into_iter().map(String::from));
    unreached.extend(quirk_rows.iter().filter(|r| r.1 == 0).map(|r| r.0.clone()));
    let blind = stopped_early.is_none() && !unreached.is_empty();
    if blind {
        println!(
            "coverage: FAILED: required probe(s) never fired: {} (crashsim/src/explore/coverage.rs \
             says why each is required; the run no longer reaches those paths)",
            unreached.join(", ")
        );
    }
    if args.json {
        let vs: Vec<String> = shown
            .iter()
            .map(|v| {
                format!(
                    "{{\"oracle\":{},\"detail\":{},\"ops\":{},\"continuation\":{},\"replay\":{}}}",
                    json_str(v.finding.kind.name()),
                    json_str(&v.finding.detail),
                    v.workload.ops.len(),
                    v.continuation_ops()
                        .map_or_else(|| "null".to_string(), |ops| json_str(&ops_text(&ops))),
                    json_str(&replay_command(v, args.oracle))
                )
            })
            .collect();
        println!(
            "{{\"states\":{states},\"workloads\":{done},\"violations\":{nviolations},\"seconds\":{elapsed:.3},\"stopped_early\":{},\"orders\":{},\"points\":{{\"all_subsets\":{},\"sampled\":{},\"repeated\":{},\"workloads_without_sampled_points\":{}}},\"probes\":{{{}}},\"shown\":[{}]}}",
            stopped_early.as_deref().map_or_else(|| "null".to_string(), json_str),
            if bounded { orders.json() } else { "null".to_string() },
            points.all_subsets,
            points.sampled,
            points.repeated,
            done - sampled_workloads,
            coverage::rows(&points.probes, &points.sim)
                .into_iter()
                .map(|(n, c)| (n.to_string(), c))
                .chain(quirk_rows.iter().cloned())
                .map(|(n, c)| format!("{}:{c}", json_str(&n)))
                .collect::<Vec<_>>()
                .join(","),
            vs.join(",")
        );
    }
    if let Some(why) = &stopped_early {
        println!("{why}");
    }
    println!(
        "crash-test: {states} states, {done} workloads, {nviolations} violations{}{}",
        if stopped_early.is_some() {
            " (stopped early)"
        } else {
            ""
        },
        if blind {
            format!(", coverage FAILED ({} never fired)", unreached.join(", "))
        } else {
            String::new()
        }
    );
    Ok(Outcome {
        states,
        workloads: done,
        total,
        violations: nviolations,
        stopped_early,
        shown,
        passed: nviolations == 0 && !blind,
        points,
        bounded_exhaustive,
    })
}

/// The coverage table: every probe with its count, then those that never fired.
fn print_probes(points: &PointTally, quirk_rows: &[(String, u64)]) {
    let rows: Vec<(String, u64)> = coverage::rows(&points.probes, &points.sim)
        .into_iter()
        .map(|(n, c)| (n.to_string(), c))
        .chain(quirk_rows.iter().cloned())
        .collect();
    let line: Vec<String> = rows
        .iter()
        .filter(|(_, c)| *c > 0)
        .map(|(n, c)| format!("{n} {c}"))
        .collect();
    println!("probes: {}", line.join(", "));
    let never: Vec<&str> = rows
        .iter()
        .filter(|(_, c)| *c == 0)
        .map(|(n, _)| n.as_str())
        .collect();
    println!(
        "probes never fired: {}",
        if never.is_empty() {
            "none".to_string()
        } else {
            never.join(", ")
        }
    );
}

fn ops_text(ops: &[WlOp]) -> String {
    let ops: Vec<String> = ops.iter().map(WlOp::to_string).collect();
    ops.join(".")
}

/// The continuation's operations of a violation whose crash path has one: the violating
/// sector may be written only by them.
fn continuation_text(v: &Violation) -> Option<String> {
    let ops = v.continuation_ops()?;
    let at = v.path.iter().position(|s| s.level == Level::Continuation)?;
    Some(format!(
        "continuation: {} operations run on the devices recovered from crash p{}, then crash c{}: {}",
        ops.len(),
        v.path[at - 1].point,
        v.path[at].point,
        ops_text(&ops)
    ))
}

fn replay(case: &str, oracle: OracleSel) -> Result<bool, String> {
    let (findings, log) = replay_case(case, oracle)?;
    println!("{log}");
    for f in &findings {
        println!("violation ({} oracle): {}", f.kind.name(), f.detail);
    }
    println!(
        "crash-test: 1 states, 1 workloads, {} violations",
        findings.len()
    );
    Ok(findings.is_empty())
}

mod orders;
#[cfg(test)]
mod tests;
