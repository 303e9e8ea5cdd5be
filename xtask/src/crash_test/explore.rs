//! Exploring a run's workloads (one shard of its space, perhaps continuing a saved result) on
//! worker threads, with a result file kept up to date while it runs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crashsim::explore::{
    explore_orders, explore_workload, shrink, ExploreOpts, OrderCoverage, Violation, WorkloadResult,
};
use indicatif::{ProgressBar, ProgressStyle};

use super::result::{self, Config, RunResult, ViolationRecord};
use super::shard::{id_set_hash, workload_id, Shard, INDEX_VAR};
use super::summary::{self, Report};
use super::tally::Tally;
use super::{space, threads, violation_record, CrashTestArgs, Outcome};

/// How often a running shard rewrites its result file.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);

/// Set by SIGINT or SIGTERM while a run with a result file explores.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    // A second signal kills as usual. (signal() is async-signal-safe.)
    unsafe { libc::signal(sig, libc::SIG_DFL) };
}

fn catch_interruptions() {
    INTERRUPTED.store(false, Ordering::SeqCst);
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic and resets the disposition.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// The shard's part of the space, and where its result goes.
struct Plan {
    shard: Shard,
    space: space::Space,
    /// Each workload's identity (`workload_id`), by position in the space.
    ids: Vec<u64>,
    /// Positions in `space.workloads` of this shard's workloads, in space order.
    mine: Vec<usize>,
    /// Order-free hashes of the space's and the shard's workload identities (hex).
    space_ids: String,
    shard_ids: String,
    config: Config,
    file: Option<PathBuf>,
    /// The saved result this run continues.
    prior: Option<RunResult>,
}

pub fn run(args: &CrashTestArgs) -> Result<Outcome, String> {
    let plan = plan(args)?;
    let prior_done = match &plan.prior {
        Some(p) => result::positions(&p.done, plan.mine.len() as u64)?,
        None => BTreeSet::new(),
    };
    let prior_tally = match &plan.prior {
        Some(p) => Tally::from_record(&p.tally)?,
        None => Tally::default(),
    };
    if let Some(p) = &plan.prior {
        eprintln!(
            "crash-test: continuing {} (shard {}): {} of {} workloads done in {} run(s)",
            plan.file
                .as_ref()
                .expect("a prior result has a file")
                .display(),
            plan.shard,
            prior_done.len(),
            plan.mine.len(),
            p.runs
        );
    }
    if plan.file.is_some() {
        catch_interruptions();
    }
    let todo: Vec<u64> = (0..plan.mine.len() as u64)
        .filter(|i| !prior_done.contains(i))
        .collect();
    let mut x = Exploration::new(args, &plan, prior_tally, prior_done);
    x.explore(&todo);
    let elapsed = x.started.elapsed().as_secs_f64();
    let shown = x.shown_records();
    let record = x.result(elapsed, &shown);
    if let Some(f) = &plan.file {
        record.save(f)?;
    }
    let total = plan.mine.len() as u64;
    let all = Tally::from_record(&record.tally)?;
    let report = Report {
        args,
        tally: &all,
        total,
        bounded_space: plan.space.bounded.as_deref(),
        stopped_early: record.stopped_early.as_deref(),
        violations: &record.violations,
        seconds: record.seconds,
        threads: threads(args),
        whole_space: plan.shard.count == 1,
        faults: space::faults_and_unit(args)?.0,
        exhaustive_bound: x.opts.exhaustive_bound,
        k: x.opts.k,
    };
    let verdict = summary::print(&report);
    Ok(Outcome {
        states: all.states,
        workloads: all.workloads,
        total,
        violations: all.violations,
        passed: all.violations == 0 && !verdict.blind && !x.interrupted,
        interrupted: x.interrupted,
        stopped_early: record.stopped_early.clone(),
        shown: record.violations.clone(),
        tally: all,
        bounded_exhaustive: verdict.bounded_exhaustive,
    })
}

/// The space, this shard's share of it, and the saved result to continue, checked.
fn plan(args: &CrashTestArgs) -> Result<Plan, String> {
    let shard = match &args.shard {
        Some(s) => Shard::parse(s, std::env::var(INDEX_VAR).ok().as_deref())?,
        None => Shard::WHOLE,
    };
    let space = space::build(args)?;
    if args.bounded.is_some() {
        eprintln!(
            "crash-test: bounded mode, {} workloads of up to {} operations",
            space.workloads.len(),
            args.bounded.unwrap_or(0)
        );
    }
    let ids: Vec<u64> = space.workloads.iter().map(workload_id).collect();
    let mine: Vec<usize> = (0..ids.len()).filter(|&i| shard.owns(ids[i])).collect();
    let space_ids = format!("{:016x}", id_set_hash(ids.iter().copied()));
    let shard_ids = format!("{:016x}", id_set_hash(mine.iter().map(|&i| ids[i])));
    let config = Config::new(space::config_words(args), result::source_version());
    let file = args.resume.clone().or_else(|| args.result.clone());
    let prior = match &args.resume {
        Some(f) if f.exists() => Some(check_prior(RunResult::load(f)?, f, &config, shard)?),
        _ => None,
    };
    Ok(Plan {
        shard,
        space,
        ids,
        mine,
        space_ids,
        shard_ids,
        config,
        file,
        prior,
    })
}

/// A saved result may be continued only by the run that wrote it: the same options, source
/// and shard.
fn check_prior(p: RunResult, f: &Path, config: &Config, shard: Shard) -> Result<RunResult, String> {
    if p.config.hash != config.hash {
        return Err(format!(
            "--resume {}: the result is of other options or another source, so it cannot be \
             continued (it has `{}` at {}; this run has `{}` at {}): give another FILE, or the \
             options it was started with",
            f.display(),
            p.config.words.join(" "),
            p.config.source,
            config.words.join(" "),
            config.source
        ));
    }
    if p.shard != shard {
        return Err(format!(
            "--resume {}: the result is of shard {}, this run is shard {shard}",
            f.display(),
            p.shard
        ));
    }
    Ok(p)
}

/// How many pending writes a crash point may have for every subset to be tried, and the
/// largest subset tried beyond that: the explorer's defaults, or more with --exhaustive.
pub fn subset_bounds(args: &CrashTestArgs) -> (usize, usize) {
    let d = ExploreOpts::default();
    if args.exhaustive {
        (10, 3)
    } else {
        (d.exhaustive_bound, d.k)
    }
}

/// One finished (or cut short) workload, from a worker.
struct Done {
    /// Position among the shard's workloads.
    pos: u64,
    result: WorkloadResult,
    cov: OrderCoverage,
    /// The deadline or a stop cut it short: its states are not counted, its violations are.
    partial: bool,
}

/// The state of one run's exploration.
struct Exploration<'a> {
    args: &'a CrashTestArgs,
    plan: &'a Plan,
    opts: ExploreOpts,
    stop: Arc<AtomicBool>,
    deadline: Option<Instant>,
    max_violations: Option<u64>,
    /// The saved result's tally plus this run's.
    tally: Tally,
    done: BTreeSet<u64>,
    /// Violations of workloads cut short (counted, never part of `tally`'s workloads).
    partial_violations: u64,
    /// The first violation of each kind this run found, to shrink and print.
    found: Vec<Violation>,
    interrupted: bool,
    stopped_at_limit: bool,
    finished_here: u64,
    /// When this run started (the result adds its seconds to the saved ones).
    started: Instant,
}

impl<'a> Exploration<'a> {
    fn new(args: &'a CrashTestArgs, plan: &'a Plan, tally: Tally, done: BTreeSet<u64>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = args.time.map(|t| Instant::now() + Duration::from_secs(t));
        // By default the run ends at its first violation: a user wants that one, shrunk, with
        // its replay command, not millions more of the same (a lying flush breaks nearly every
        // state).
        let max_violations = match (args.keep_going, args.max_violations) {
            (true, _) => None,
            (false, n) => Some(n.unwrap_or(1)),
        };
        let mut opts = ExploreOpts {
            oracle: args.oracle.sel(),
            fine: args.fine || args.exhaustive,
            deadline,
            // With a limit, a workload ends at its first violation and the others at the limit.
            stop_at_first: max_violations.is_some(),
            cancel: Some(stop.clone()),
            shortcuts: !args.no_shortcuts,
            ..ExploreOpts::default()
        };
        (opts.exhaustive_bound, opts.k) = subset_bounds(args);
        if args.exhaustive {
            opts.random = 16;
        }
        if args.bounded.is_some() {
            opts.continuation_every = 0;
        }
        Exploration {
            args,
            plan,
            opts,
            stop,
            deadline,
            max_violations,
            tally,
            done,
            partial_violations: 0,
            found: Vec::new(),
            interrupted: false,
            stopped_at_limit: false,
            finished_here: 0,
            started: Instant::now(),
        }
    }

    fn violations(&self) -> u64 {
        self.tally.violations + self.partial_violations
    }

    /// Explores the shard's workloads at positions `todo` on the worker threads.
    fn explore(&mut self, todo: &[u64]) {
        if self.max_violations.is_some_and(|m| self.violations() >= m) {
            self.stopped_at_limit = true;
            return;
        }
        let bar = progress_bar(self.plan.mine.len() as u64, self.done.len() as u64);
        let next = AtomicU64::new(0);
        let (tx, rx) = mpsc::channel::<Done>();
        let bounded = self.args.bounded.is_some();
        let (opts, stop) = (self.opts.clone(), self.stop.clone());
        let (plan, opts, stop, deadline) = (self.plan, &opts, &stop, self.deadline);
        let max_orders = self.args.orders;
        let mut last_line = Instant::now();
        let mut last_save = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads(self.args) {
                let tx = tx.clone();
                let next = &next;
                s.spawn(move || loop {
                    let over = || {
                        stop.load(Ordering::Relaxed)
                            || deadline.is_some_and(|d| Instant::now() >= d)
                    };
                    if over() {
                        break;
                    }
                    let Some(&pos) = todo.get(next.fetch_add(1, Ordering::Relaxed) as usize) else {
                        break;
                    };
                    let w = &plan.space.workloads[plan.mine[pos as usize]];
                    let (result, cov) = match bounded {
                        true => explore_orders(w, opts, max_orders),
                        false => (explore_workload(w, opts), OrderCoverage::default()),
                    };
                    let partial = over();
                    if tx
                        .send(Done {
                            pos,
                            result,
                            cov,
                            partial,
                        })
                        .is_err()
                    {
                        break;
                    }
                });
            }
            drop(tx);
            loop {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(d) => self.take(d),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
                if INTERRUPTED.load(Ordering::SeqCst)
                    || self
                        .args
                        .interrupt_after
                        .is_some_and(|n| self.finished_here >= n)
                {
                    self.interrupted = true;
                    self.stop.store(true, Ordering::Relaxed);
                }
                bar.set_position(self.done.len() as u64);
                bar.set_message(format!(
                    "{} states, {} violations",
                    self.tally.states,
                    self.violations()
                ));
                if bar.is_hidden() && last_line.elapsed() >= Duration::from_secs(10) {
                    eprintln!(
                        "crash-test: {}/{} workloads, {} states, {} violations",
                        self.done.len(),
                        self.plan.mine.len(),
                        self.tally.states,
                        self.violations()
                    );
                    last_line = Instant::now();
                }
                if last_save.elapsed() >= CHECKPOINT_EVERY {
                    self.checkpoint();
                    last_save = Instant::now();
                }
            }
        });
        bar.finish_and_clear();
    }

    /// Takes one worker's report.
    fn take(&mut self, d: Done) {
        let kinds_kept = self
            .args
            .show
            .min(self.max_violations.map_or(usize::MAX, |m| m as usize));
        for v in &d.result.violations {
            // Keep the first violation of each kind for shrinking and printing.
            if self.found.len() < kinds_kept
                && !self.found.iter().any(|k| k.finding.kind == v.finding.kind)
            {
                self.found.push(v.clone());
            }
        }
        if d.partial {
            self.partial_violations += d.result.violation_count;
        } else {
            let id = self.plan.ids[self.plan.mine[d.pos as usize]];
            self.tally.add_workload(id, &d.result, d.cov);
            self.done.insert(d.pos);
            self.finished_here += 1;
        }
        if self.max_violations.is_some_and(|m| self.violations() >= m) {
            self.stopped_at_limit = true;
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    /// Saves what is done so far (violations not yet shrunk).
    fn checkpoint(&self) {
        let Some(f) = &self.plan.file else { return };
        let shown: Vec<ViolationRecord> = self
            .found
            .iter()
            .map(|v| violation_record(v, v.workload.ops.len(), false, self.args.oracle))
            .collect();
        let elapsed = self.started.elapsed().as_secs_f64();
        if let Err(e) = self.result(elapsed, &shown).save(f) {
            eprintln!("crash-test: {e}");
        }
    }

    /// The violations found by this run, shrunk unless it was interrupted (a preempted
    /// machine has no time to shrink; the records say they are not shrunk).
    fn shown_records(&self) -> Vec<ViolationRecord> {
        self.found
            .iter()
            .map(|v| {
                if self.interrupted {
                    return violation_record(v, v.workload.ops.len(), false, self.args.oracle);
                }
                // Shrinking gets its own time budget, whatever --time said about the search,
                // and is not cut short by the early stop.
                let shrink_opts = ExploreOpts {
                    deadline: Some(Instant::now() + Duration::from_secs(20)),
                    cancel: None,
                    ..self.opts.clone()
                };
                let small = shrink(v, &shrink_opts, 200);
                violation_record(&small, v.workload.ops.len(), true, self.args.oracle)
            })
            .collect()
    }

    /// The result so far: the saved one's and this run's (`elapsed` seconds).
    fn result(&self, elapsed: f64, shown: &[ViolationRecord]) -> RunResult {
        let plan = self.plan;
        let mut tally = self.tally.clone();
        tally.violations += self.partial_violations;
        let (prior_seconds, prior_runs, prior_threads, mut violations) = match &plan.prior {
            Some(p) => (p.seconds, p.runs, p.threads, p.violations.clone()),
            None => (0.0, 0, 0, Vec::new()),
        };
        violations.extend(shown.iter().cloned());
        let complete = self.done.len() == plan.mine.len();
        RunResult {
            format: result::FORMAT.to_string(),
            config: plan.config.clone(),
            shard: plan.shard,
            space_workloads: plan.space.workloads.len() as u64,
            space_ids: plan.space_ids.clone(),
            shard_workloads: plan.mine.len() as u64,
            shard_ids: plan.shard_ids.clone(),
            done: result::ranges(&self.done),
            complete,
            stopped_early: self.stopped_early(plan, complete),
            seconds: prior_seconds + elapsed,
            runs: prior_runs + 1,
            threads: prior_threads.max(threads(self.args) as u64),
            tally: tally.record(),
            violations,
        }
    }

    /// Why the run ended before its shard was explored, if it did.
    fn stopped_early(&self, plan: &Plan, complete: bool) -> Option<String> {
        if complete {
            return None;
        }
        let (done, total) = (self.done.len(), plan.mine.len());
        let resume = match &plan.file {
            Some(f) => format!(
                "; `cargo xtask crash-test {}{} --resume {}` continues it",
                plan.config.words.join(" "),
                if plan.shard.count > 1 {
                    format!(" --shard {}", plan.shard)
                } else {
                    String::new()
                },
                f.display()
            ),
            None => String::new(),
        };
        if self.stopped_at_limit {
            return Some(format!(
                "stopped early after {} violation(s), with {done} of {total} workloads explored \
                 (the limit is {}: --max-violations N raises it, --keep-going explores \
                 everything)",
                self.violations(),
                self.max_violations.unwrap_or(0)
            ));
        }
        if self.interrupted {
            return Some(format!(
                "interrupted with {done} of {total} workloads explored{resume}"
            ));
        }
        if self.deadline.is_some() {
            return Some(format!(
                "stopped at the --time limit with {done} of {total} workloads explored{resume}"
            ));
        }
        None
    }
}

fn progress_bar(total: u64, done: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} workloads {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(done);
    bar
}
