//! `cargo xtask crash-test`: runs seeded (or bounded-exhaustive) workloads on simulated devices,
//! checks every crash state of each, and prints one replay command per violation.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use crashsim::explore::{replay_case, Kind, Level, OracleSel, Violation, WlOp, SCENARIOS};

use result::ViolationRecord;
use tally::Tally;

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
    /// Run shard M of N (1-based, as nextest's `--partition hash:M/N`): the workloads whose
    /// identity hash is M-1 modulo N, so adding workloads moves no other. `--shard N` takes M
    /// from JOB_COMPLETION_INDEX + 1 (a Kubernetes Indexed Job's pod index). With `--result`,
    /// `cargo xtask crash-test merge` sums the shards and proves they covered the space once.
    #[arg(long, value_name = "M/N")]
    shard: Option<String>,
    /// Write what the run explored and found to FILE (JSON; rewritten every 10 s while it
    /// runs, and on SIGINT or SIGTERM, which stop the run).
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    result: Option<PathBuf>,
    /// Like --result, but if FILE holds a result of the same options (and source), continue
    /// it: explore only the workloads it has not finished. The same command line serves the
    /// first run and every restart after an interruption.
    #[arg(long, value_name = "FILE")]
    resume: Option<PathBuf>,
    /// Act as if interrupted (SIGTERM) after N workloads finish: for the tests of --resume.
    #[arg(long, hide = true, value_name = "N")]
    interrupt_after: Option<u64>,
    #[command(subcommand)]
    action: Option<Action>,
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

/// What `crash-test` does other than exploring.
#[derive(clap::Subcommand, Debug, Clone)]
enum Action {
    /// Sum shard results (`--shard M/N --result FILE`) into the summary one run would print,
    /// after proving they cover the space exactly once: the same options and source, every
    /// shard 1..=N once, each complete, and together every workload of the space.
    Merge {
        /// The result files, one per shard.
        #[arg(required = true, value_name = "RESULT")]
        results: Vec<PathBuf>,
    },
}

impl CrashTestArgs {
    /// The default seeded type-0 run (`cargo xtask crash-test`, perhaps with `--without`): the
    /// one that must reach every required probe (whole: a shard of it need not).
    fn is_default_run(&self) -> bool {
        self.quirks.is_empty()
            && self.faults.is_empty()
            && self.cache_type == 0
            && self.bounded.is_none()
            && self.scenario.is_none()
            && self.replay.is_none()
            && self.order.is_none()
            && self.unit.is_none()
            && self.time.is_none()
            && self.seeds >= 30
    }
}

/// What a crash-test run found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub states: u64,
    /// Workloads explored to their end.
    pub workloads: u64,
    /// Workloads there were to explore.
    pub total: u64,
    pub violations: u64,
    /// Why the run ended before exploring everything, if it did.
    pub stopped_early: Option<String>,
    /// The violations printed (shrunk, unless the run was interrupted).
    pub shown: Vec<ViolationRecord>,
    /// No violation, nothing left unexplored by an interruption, and (zoo) every quirk caught.
    pub passed: bool,
    /// SIGINT, SIGTERM or --interrupt-after stopped the run; its result file has what it did.
    pub interrupted: bool,
    /// Everything summed, as a result file holds it (`tally.points`: how the top-level crash
    /// points were enumerated, printed as the `coverage:` line).
    pub tally: Tally,
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

impl OracleArg {
    fn sel(self) -> OracleSel {
        match self {
            OracleArg::Block => OracleSel::Block,
            OracleArg::Prefix => OracleSel::Prefix,
            OracleArg::Both => OracleSel::Both,
        }
    }
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

/// The exit status of a run stopped by SIGINT or SIGTERM after saving its result
/// (EX_TEMPFAIL): try again with the same command. A Kubernetes pod failure policy tells it
/// from 1 (a finding) and 2 (bad options).
pub const EXIT_INTERRUPTED: i32 = 75;

pub fn run(args: CrashTestArgs) -> Result<bool, String> {
    let o = run_outcome(args)?;
    if o.interrupted {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::process::exit(EXIT_INTERRUPTED);
    }
    Ok(o.passed)
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
    stage_line(run_outcome(parse_args(words)?)?)
}

/// The stage line of a finished run.
fn stage_line(o: Outcome) -> crate::stages::StageResult {
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
            v.headline,
            v.detail,
            v.replay
        ),
        None => format!("{} violation(s) (or a missed quirk)", o.violations),
    })
}

/// A stage that also proves shards add up on a real run: the run `words` ask for, whole, and
/// again as two shards, the first interrupted part-way and resumed, merged. The merge must
/// find exactly what the whole run found: every count, every probe, the fingerprint.
pub fn stage_with_shards(words: &[&str]) -> crate::stages::StageResult {
    let whole = run_outcome(parse_args(words)?)?;
    let (states, fingerprint) = (whole.states, whole.tally.fingerprints);
    let tally = whole.tally.clone();
    let line = stage_line(whole)?;
    let dir = std::env::temp_dir().join(format!("wbcache-shards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let files: Vec<String> = (1..=2)
        .map(|m| dir.join(format!("shard-{m}.json")).display().to_string())
        .collect();
    for (m, f) in (1..=2).zip(&files) {
        let _ = std::fs::remove_file(f);
        let shard = format!("{m}/2");
        let mut w: Vec<&str> = words.to_vec();
        w.extend(["--shard", &shard, "--resume", f]);
        if m == 1 {
            let mut cut = w.clone();
            cut.extend(["--interrupt-after", "10"]);
            let o = run_outcome(parse_args(&cut)?)?;
            if o.stopped_early.is_none() || o.workloads < 10 {
                return Err(format!(
                    "shard 1/2 was not interrupted after 10 workloads: {o:?}"
                ));
            }
        }
        stage_line(run_outcome(parse_args(&w)?)?)?;
    }
    let merged = run_outcome(parse_args(&["merge", &files[0], &files[1]])?)?;
    let _ = std::fs::remove_dir_all(&dir);
    if merged.tally != tally {
        return Err(format!(
            "the two shards merged to other counts than the whole run: {:?} against {tally:?}",
            merged.tally
        ));
    }
    Ok(format!(
        "{line}; as 2 shards (the first interrupted after 10 workloads and resumed), merged: \
         the same {states} states, probes and fingerprint {fingerprint:016x}"
    ))
}

/// Runs the crash-test `args` ask for, prints its report, and returns what it found.
pub fn run_outcome(args: CrashTestArgs) -> Result<Outcome, String> {
    crate::heap::keep_freed_memory();
    if args.cache_type > 1 {
        return Err(format!(
            "--type {}: the cache types are 0 (RAM buffers) and 1 (persistent log)",
            args.cache_type
        ));
    }
    if let Some(Action::Merge { results }) = &args.action {
        return merge::run(results, args.json);
    }
    if let Some(case) = &args.replay {
        return replay(case, args.oracle.sel()).map(|passed| Outcome {
            passed,
            ..Outcome::default()
        });
    }
    if args.zoo {
        let ok = crate::zoo::run(Duration::from_secs(args.zoo_budget), threads(&args));
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
    explore::run(&args)
}

/// Worker threads: `--threads`, or one per core.
fn threads(args: &CrashTestArgs) -> usize {
    args.threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1)
}

/// A violation as the summary prints it and a result file keeps it.
fn violation_record(
    v: &Violation,
    before: usize,
    shrunk: bool,
    oracle: OracleArg,
) -> ViolationRecord {
    ViolationRecord {
        oracle: v.finding.kind.name().to_string(),
        headline: headline(v),
        detail: v.finding.detail.clone(),
        ops: v.workload.ops.len() as u64,
        ops_before_shrinking: before as u64,
        workload: v.workload.to_string(),
        continuation: continuation_text(v),
        case: v.case(),
        replay: replay_command(v, oracle),
        shrunk,
    }
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

mod explore;
mod merge;
mod orders;
mod result;
mod shard;
mod space;
mod summary;
mod tally;
#[cfg(test)]
mod tests;
