//! Exploring the crash states of one workload: every crash point of its record, the choices of
//! what persisted at each, recovery on each distinct image, crashes inside recovery, and a
//! continuation with a second crash.

use std::fmt;
use std::str::FromStr;

use engine::{Config, DeviceRole};
use models::{BlockOracle, History, ModelDisk, PrefixOracle, PrefixUnit};

use super::check::{check_images, check_images_with, Finding, Kind, OracleSel, Recovered};
use super::coverage::{SimCounts, SimProbe};
use super::phases::{self, timed, Phase, PhaseTimes};
use super::readback::Plan;
use super::run::{drive, new_world, open_on, record, recovery_config};
use super::workload::{continuation, Completion, WlConfig, WlOp, Workload};
use crate::rng::mix64;
use crate::{Choice, CrashPoint, CrashState, Dedup, ImageDevice, Others, PointSelection, World};

/// How hard to look.
#[derive(Clone, Debug)]
pub struct ExploreOpts {
    /// Enumerate every subset when at most this many writes are pending.
    pub exhaustive_bound: usize,
    /// Otherwise every subset of at most this many.
    pub k: usize,
    /// Seeded random choices per crash point (with random tears).
    pub random: usize,
    /// Crash after every device write too.
    pub fine: bool,
    pub oracle: OracleSel,
    /// Crash inside recovery where recovery writes.
    pub recovery_crash: bool,
    /// Run a continuation workload with a second crash after every this many states (0 = never).
    pub continuation_every: u64,
    /// Stop at the first violation of this kind (shrinking); `None` explores everything.
    pub stop_at: Option<Kind>,
    /// Stop at the first violation of any kind (the quirk zoo).
    pub stop_at_first: bool,
    /// Violations kept in full per workload; the rest are only counted.
    pub keep_violations: usize,
    /// Stop exploring (even inside a workload) at this moment.
    pub deadline: Option<std::time::Instant>,
    /// Stop exploring (even inside a workload) once this is set, from another thread: a run
    /// that has what it wants ends its workloads in flight.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Read back only the blocks that can differ from the initial content (`readback`),
    /// with one whole read per workload as a cross-check; off, every state reads every block.
    pub shortcuts: bool,
}

impl Default for ExploreOpts {
    fn default() -> Self {
        ExploreOpts {
            exhaustive_bound: 6,
            k: 2,
            random: 6,
            fine: false,
            oracle: OracleSel::Both,
            recovery_crash: true,
            continuation_every: 16,
            stop_at: None,
            stop_at_first: false,
            keep_violations: 16,
            deadline: None,
            cancel: None,
            shortcuts: true,
        }
    }
}

/// One level of a crash path: which crash, at which point, with which choice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Level {
    /// Crash of the workload's run.
    Top,
    /// Crash inside the recovery of the previous level's images.
    Recovery,
    /// Crash of the continuation workload run after recovering the previous level's images.
    Continuation,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathStep {
    pub level: Level,
    pub point: u64,
    pub choice: Choice,
}

impl fmt::Display for PathStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = match self.level {
            Level::Top => 'p',
            Level::Recovery => 'r',
            Level::Continuation => 'c',
        };
        write!(f, "{l}{}={}", self.point, self.choice)
    }
}

impl FromStr for PathStep {
    type Err = String;
    fn from_str(t: &str) -> Result<Self, String> {
        let (head, choice) = t
            .split_once('=')
            .ok_or_else(|| format!("bad crash step {t:?}"))?;
        let level = match head.chars().next() {
            Some('p') => Level::Top,
            Some('r') => Level::Recovery,
            Some('c') => Level::Continuation,
            _ => return Err(format!("bad crash step {t:?}")),
        };
        let point = head[1..]
            .parse()
            .map_err(|_| format!("bad crash point in {t:?}"))?;
        let choice = choice
            .parse()
            .map_err(|e| format!("bad choice in {t:?}: {e}"))?;
        Ok(PathStep {
            level,
            point,
            choice,
        })
    }
}

/// A violation with everything needed to replay it.
#[derive(Clone, Debug)]
pub struct Violation {
    pub workload: Workload,
    pub path: Vec<PathStep>,
    pub finding: Finding,
}

/// The seed of the continuation workload run after recovering from the crash at `point` of a
/// workload whose seed is `workload_seed`.
fn continuation_seed(workload_seed: u64, point: u64) -> u64 {
    mix64(workload_seed ^ point ^ 0xC0)
}

impl Violation {
    /// The operations of the continuation workload on the crash path, if it has one: they run
    /// on the devices recovered from the crash before it (`--replay` reruns them), so a
    /// violating sector may have been written only by them.
    pub fn continuation_ops(&self) -> Option<Vec<WlOp>> {
        let at = self
            .path
            .iter()
            .position(|s| s.level == Level::Continuation)?;
        let before = &self.path[at.checked_sub(1)?];
        Some(continuation(
            continuation_seed(self.workload.config.seed, before.point),
            &self.workload.config,
        ))
    }

    /// The argument of `--replay`.
    pub fn case(&self) -> String {
        let mut s = self.workload.to_string();
        if !self.path.is_empty() {
            s.push('#');
            let steps: Vec<String> = self.path.iter().map(|p| p.to_string()).collect();
            s.push_str(&steps.join("/"));
        }
        s
    }
}

/// Parses a `--replay` case.
pub fn parse_case(case: &str) -> Result<(Workload, Vec<PathStep>), String> {
    let (w, path) = match case.split_once('#') {
        Some((w, p)) => (w, p),
        None => (case, ""),
    };
    let workload: Workload = w.parse()?;
    let path = if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').map(str::parse).collect::<Result<_, _>>()?
    };
    Ok((workload, path))
}

#[derive(Clone, Debug, Default)]
pub struct WorkloadResult {
    pub states: u64,
    /// Every violation found (some may not be kept in `violations`).
    pub violation_count: u64,
    /// The first violations, in full.
    pub violations: Vec<Violation>,
    /// How the top-level crash points were enumerated.
    pub points: PointTally,
    /// A hash of the fingerprints of the states checked, in the order they were checked: two
    /// runs that checked the same states the same way agree on it.
    pub fingerprints: u64,
}

/// How the top-level crash points of a run were enumerated: the honest bound of what it saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PointTally {
    /// Every subset of the pending writes was tried (at most `exhaustive_bound` pending).
    pub all_subsets: u64,
    /// Too many pending writes: only the subsets of up to `k` of them (capped), a sample.
    pub sampled: u64,
    /// The same crash state as an earlier point (its subsets were tried there): only random
    /// choices here.
    pub repeated: u64,
    /// Crash states (at any level) whose images were also judged by what dm-writeboost's
    /// replay would show (`crate::peer`: orderly type-0 rings).
    pub peer_judged: u64,
    /// Crash states judged without the prefix oracle: their workload may bypass the cache.
    pub no_prefix: u64,
    /// How often each engine probe fired (`engine::probes`), in runs and recoveries alike.
    pub probes: engine::probes::Counts,
    /// How often each simulator probe fired (`super::coverage`).
    pub sim: super::coverage::SimCounts,
    /// Where the time went (`super::phases`); not part of any verdict.
    pub phases: PhaseTimes,
}

impl PointTally {
    pub fn add(&mut self, o: PointTally) {
        self.all_subsets += o.all_subsets;
        self.sampled += o.sampled;
        self.repeated += o.repeated;
        self.peer_judged += o.peer_judged;
        self.no_prefix += o.no_prefix;
        self.probes.add(&o.probes);
        self.sim.add(&o.sim);
        self.phases.add(&o.phases);
    }
}

struct Ctx<'a> {
    workload: &'a Workload,
    config: Config,
    opts: &'a ExploreOpts,
    result: WorkloadResult,
    /// The backing image the workload starts from, for the read-back shortcut.
    base: Option<crate::Image>,
    /// The shortcut's whole-device cross-check was done for this workload.
    cross_checked: bool,
}

impl Ctx<'_> {
    fn done(&self) -> bool {
        let found = (self.opts.stop_at_first && self.result.violation_count > 0)
            || self
                .opts
                .stop_at
                .is_some_and(|k| self.result.violations.iter().any(|v| v.finding.kind == k));
        found
            || self
                .opts
                .deadline
                .is_some_and(|d| std::time::Instant::now() >= d)
            || self
                .opts
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// A crash state (or the level below it) the tester could not check: an error of kind
    /// `Harness`, counted and kept like a violation, never a skip.
    fn harness_error(&mut self, path: &[PathStep], what: String) {
        self.report(
            path,
            vec![Finding {
                kind: Kind::Harness,
                detail: format!("this crash state could not be checked: {what}"),
            }],
        );
    }

    fn report(&mut self, path: &[PathStep], findings: Vec<Finding>) {
        for finding in findings {
            self.result.violation_count += 1;
            if self.result.violations.len() < self.opts.keep_violations {
                self.result.violations.push(Violation {
                    workload: self.workload.clone(),
                    path: path.to_vec(),
                    finding,
                });
            }
        }
    }
}

const MAX_SUBSETS_PER_POINT: usize = 1200;

/// The choices to try at one crash state.
pub fn choices_for(state: &CrashState, opts: &ExploreOpts, seed: u64) -> Vec<Choice> {
    let mut out: Vec<Choice> = match state.all_subsets(opts.exhaustive_bound) {
        Ok(all) => all.collect(),
        // Pairs of a long pending list are many (a device that never flushes): bound k so the
        // choices stay around a thousand per crash point.
        Err(_) => {
            let n = state.pending_count();
            let k = if n > 48 { 1 } else { opts.k };
            state.subsets_up_to(k).take(MAX_SUBSETS_PER_POINT).collect()
        }
    };
    // Single-unit tears of every pending cache-device write (what recovery reads), with the
    // others lost and with the others persisted.
    for (i, w) in state.pending.iter().enumerate() {
        if w.role != DeviceRole::Cache && w.role != DeviceRole::Plog {
            continue;
        }
        // A plog write gathers a run of entries: cut it between and inside its entries.
        let entry_masks = if w.role == DeviceRole::Plog {
            plog_entry_tears(w)
        } else {
            Vec::new()
        };
        for others in [Others::Lost, Others::Persisted] {
            if let Ok(tears) = state.tears_of(i, others) {
                // Every tear of a write of up to 32 units (a whole segment up to order 5);
                // an even sample of about 128 of a longer one.
                // A plog entry is void when any of its units is missing (one CRC covers the
                // header and the data), so the tears of one entry differ only in bytes
                // recovery ignores: about eight of them suffice, and the entry-wise tears
                // below cover a write of many entries.
                let step = if w.role == DeviceRole::Plog {
                    (tears.len() / 8).max(1)
                } else if w.unit_count() <= 32 {
                    1
                } else {
                    (tears.len() / 128).max(1)
                };
                out.extend(tears.into_iter().step_by(step));
            }
            if !entry_masks.is_empty() {
                if let Ok(tears) = state.tears_with(i, others, entry_masks.clone()) {
                    out.extend(tears);
                }
            }
        }
    }
    out.extend(state.random_choices(seed, opts.random));
    out
}

/// Unit masks that cut a plog write between and inside the entries it carries (the engine
/// gathers a run of entries of one region into one write). For each entry `k`, `[a, b)` in the
/// write's sectors: everything before `a` (entries before `k` whole, the rest lost); everything
/// from `a` on (the run's start lost, later entries there); everything but `[a, b)` (entry `k`
/// wholly missing in the middle: the old content shows through, perhaps a stale entry); everything
/// but `k`'s header; everything but `k`'s last sector (its CRC fails, later entries whole); and
/// everything before the middle of `k` (`k` torn, the rest lost). A unit persists when its first
/// sector does. Empty when the write does not start with an entry header (superblocks, voids);
/// without the trivial masks (nothing, everything), deduplicated, in a fixed order.
pub fn plog_entry_tears(w: &crate::PendingWrite) -> Vec<Vec<bool>> {
    use engine::format::plog::decode_entry_header;
    use engine::format::SECTOR_SIZE;
    let sectors = w.sectors() as usize;
    let mut entries: Vec<(usize, usize)> = Vec::new();
    let mut at = 0usize;
    while at < sectors {
        let Some(h) = decode_entry_header(&w.data[at * SECTOR_SIZE..(at + 1) * SECTOR_SIZE]) else {
            break;
        };
        let end = at + h.footprint() as usize;
        if end > sectors {
            break;
        }
        entries.push((at, end));
        at = end;
    }
    let units = w.units();
    let mut masks = std::collections::BTreeSet::new();
    let mut add = |keep: &dyn Fn(usize) -> bool| {
        let m: Vec<bool> = units
            .iter()
            .map(|&(first, _)| keep((first - w.sector) as usize))
            .collect();
        if m.iter().any(|&x| x) && !m.iter().all(|&x| x) {
            masks.insert(m);
        }
    };
    for &(a, b) in &entries {
        add(&|s| s < a);
        add(&|s| s >= a);
        add(&|s| !(a..b).contains(&s));
        add(&|s| s != a);
        add(&|s| s != b - 1);
        add(&|s| s < a + (b - a).div_ceil(2));
    }
    masks.into_iter().collect()
}

fn oracles_for(h: &History) -> (BlockOracle<'_>, PrefixOracle<'_>) {
    (
        BlockOracle::new(h),
        PrefixOracle::new(h, PrefixUnit::Blocks),
    )
}

/// Explores every crash state of one workload.
pub fn explore_workload(workload: &Workload, opts: &ExploreOpts) -> WorkloadResult {
    explore_scheduled(workload, opts, &mut Dedup::new()).0
}

/// How many completion orders of a workload were explored, and whether that is all of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrderCoverage {
    /// Orders explored.
    pub explored: u64,
    /// Every order was explored (false: the bound stopped the enumeration, or a violation).
    pub complete: bool,
}

/// The next completion order after one whose choices were `made` ((choice, options) at each
/// moment two or more operations were in flight), in depth-first order: the last choice that
/// has an untried option takes it, the ones before stay, the ones after start over at the
/// oldest. `None` when every order was tried. A run that follows the returned script makes
/// the same choices up to its end (the same operations are in flight until then), so the
/// enumeration visits every order exactly once.
pub fn next_order(made: &[(u32, u32)]) -> Option<Vec<u32>> {
    let i = made.iter().rposition(|&(c, n)| c + 1 < n)?;
    let mut script: Vec<u32> = made[..i].iter().map(|&(c, _)| c).collect();
    script.push(made[i].0 + 1);
    Some(script)
}

/// Explores a workload under every order its operations can complete in, up to `max_orders`
/// orders: the in-order run first, then each other order (`c=x…` scripts). Crash states
/// already checked under an earlier order of the same workload (the same images at the same
/// client cut) are not checked again, so the count is of distinct states. A workload with a
/// seeded order is explored under that order only.
pub fn explore_orders(
    workload: &Workload,
    opts: &ExploreOpts,
    max_orders: u64,
) -> (WorkloadResult, OrderCoverage) {
    assert!(max_orders > 0, "at least the in-order run");
    let mut dedup = Dedup::new();
    let (mut total, mut made) = explore_scheduled(workload, opts, &mut dedup);
    let mut cov = OrderCoverage {
        explored: 1,
        complete: false,
    };
    if matches!(workload.config.completion, Completion::Seeded(_)) {
        return (total, cov);
    }
    // Bounded by max_orders.
    while cov.explored < max_orders {
        if opts.stop_at_first && total.violation_count > 0 {
            return (total, cov);
        }
        let Some(script) = next_order(&made) else {
            cov.complete = true;
            return (total, cov);
        };
        let mut w = workload.clone();
        w.config.completion = Completion::Script(script);
        let (r, m) = explore_scheduled(&w, opts, &mut dedup);
        made = m;
        cov.explored += 1;
        total.states += r.states;
        total.violation_count += r.violation_count;
        total.points.add(r.points);
        total.fingerprints = fold_fingerprint(total.fingerprints, r.fingerprints as u128);
        let room = opts.keep_violations.saturating_sub(total.violations.len());
        total.violations.extend(r.violations.into_iter().take(room));
    }
    cov.complete = next_order(&made).is_none();
    (total, cov)
}

/// Explores one workload under its own completion order, skipping top-level states `dedup`
/// has seen; returns the result and the order's choices.
fn explore_scheduled(
    workload: &Workload,
    opts: &ExploreOpts,
    dedup: &mut Dedup,
) -> (WorkloadResult, Vec<(u32, u32)>) {
    // Counts of whatever ran on this thread before belong to no workload.
    let _ = engine::probes::take();
    // Every open after a crash (recovery, continuation) uses this configuration.
    let config = match recovery_config(&workload.config) {
        Ok(c) => c,
        Err(e) => {
            return (
                WorkloadResult {
                    states: 0,
                    violation_count: 1,
                    violations: vec![Violation {
                        workload: workload.clone(),
                        path: vec![],
                        finding: Finding {
                            kind: Kind::Run,
                            detail: e,
                        },
                    }],
                    points: PointTally::default(),
                    fingerprints: 0,
                },
                Vec::new(),
            )
        }
    };
    let mut ctx = Ctx {
        workload,
        config,
        opts,
        result: WorkloadResult::default(),
        base: None,
        cross_checked: false,
    };
    let _ = phases::take();
    let rec = match timed(Phase::Record, || record(&workload.config, &workload.ops)) {
        Ok(r) => r,
        Err(e) => {
            ctx.report(
                &[],
                vec![Finding {
                    kind: Kind::Run,
                    detail: e,
                }],
            );
            return (ctx.result, Vec::new());
        }
    };
    // What the run passed counts even if its failure ends the workload here.
    ctx.result.points.probes.add(&engine::probes::take());
    if let Some(f) = &rec.failure {
        let at = f.op_index.map(|i| format!("op {i}: ")).unwrap_or_default();
        ctx.report(
            &[],
            vec![Finding {
                kind: if f.panicked { Kind::Panic } else { Kind::Run },
                detail: format!("{at}{}", f.detail),
            }],
        );
        if ctx.done() {
            return (ctx.result, rec.schedule);
        }
    }
    let world = rec.world.borrow();
    if opts.shortcuts {
        ctx.base = world
            .devices
            .get(&DeviceRole::Backing)
            .map(|d| d.config.image.clone());
        // The shortcut takes a block it proves unchanged as the history's initial content.
        assert!(
            ctx.base
                .as_ref()
                .is_none_or(|b| b.to_vec() == rec.history.initial()),
            "the backing image the run starts from is the history's initial content"
        );
    }
    super::coverage::fired_faults(&mut ctx.result.points.sim, &world.log);
    explore_world(
        &mut ctx,
        &world,
        &rec.history,
        &[],
        Level::Top,
        workload.config.seed,
        dedup,
    );
    drop(world);
    if rec.schedule.iter().any(|&(choice, _)| choice != 0) {
        ctx.result.points.sim.hit(SimProbe::OutOfOrder);
    }
    ctx.result.points.probes.add(&engine::probes::take());
    ctx.result.points.phases.add(&phases::take());
    (ctx.result, rec.schedule)
}

/// `acc` with one more state's fingerprint folded in, in order.
fn fold_fingerprint(acc: u64, fp: u128) -> u64 {
    let x = acc.rotate_left(1) ^ fp as u64 ^ (fp >> 64) as u64;
    crate::rng::mix64(x)
}

/// The simulator probes of one checked crash state.
fn probe_state(sim: &mut SimCounts, level: &Level, choice: &Choice, pending: usize, peer: bool) {
    sim.hit(match level {
        Level::Top => SimProbe::CrashInRun,
        Level::Recovery => SimProbe::CrashInRecovery,
        Level::Continuation => SimProbe::CrashInContinuation,
    });
    if choice
        .persisted
        .iter()
        .any(|p| matches!(p.units, crate::Units::Mask(_)))
    {
        sim.hit(SimProbe::TornWrite);
    }
    super::coverage::choice_probes(sim, choice, pending);
    if !choice.persisted.is_empty() && choice.persisted.len() < pending {
        sim.hit(SimProbe::PartlyPersisted);
    }
    if peer {
        sim.hit(SimProbe::PeerJudged);
    }
}

/// Keeps crash-point keys apart from crash-state fingerprints in one [`Dedup`].
const POINT_DOMAIN: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834;

fn selection(opts: &ExploreOpts) -> PointSelection {
    if opts.fine {
        PointSelection::fine()
    } else {
        PointSelection::standard()
    }
}

/// Explores the crash points of a recorded world against its history. `level` says what the
/// world recorded (the workload, a recovery, a continuation).
///
/// `dedup` holds the fingerprints of the crash states already checked (images and client cut)
/// and, apart from them, the keys of the crash points already explored.
fn explore_world(
    ctx: &mut Ctx<'_>,
    world: &World,
    history: &History,
    prefix: &[PathStep],
    level: Level,
    seed: u64,
    dedup: &mut Dedup,
) {
    let points = match level {
        Level::Recovery => world.crash_points(PointSelection::fine()),
        _ => world.crash_points(selection(ctx.opts)),
    };
    let mut replayer = world.replayer();
    // Consecutive points with the same client cut share the history cut there and its
    // oracles (a recovery answers to one history throughout).
    let cuts: Vec<Option<models::OpCut>> = timed(Phase::Replay, || {
        points
            .iter()
            .map(|&p| (level != Level::Recovery).then(|| world.client_cut(p)))
            .collect()
    });
    let mut group_start = 0;
    while group_start < points.len() {
        let cut = cuts[group_start];
        let group_end = (group_start..points.len())
            .find(|&i| cuts[i] != cut)
            .unwrap_or(points.len());
        let group = &points[group_start..group_end];
        group_start = group_end;
        // A recovery has no client operations of its own: it answers to the history as cut at
        // the crash it recovers from.
        let hist = match timed(Phase::Replay, || match cut {
            None => Ok(history.clone()),
            Some(c) => history.as_of(c),
        }) {
            Ok(h) => h,
            Err(e) => {
                ctx.report(
                    prefix,
                    vec![Finding {
                        kind: Kind::Run,
                        detail: e.to_string(),
                    }],
                );
                return;
            }
        };
        let oracles = timed(Phase::Oracles, || oracles_for(&hist));
        let cut_key = match cut {
            None => 0,
            Some(c) => (mix64(c.begun as u64 ^ ((c.last_ended as u64) << 63)) as u128) << 64,
        };
        explore_points(
            ctx,
            world,
            &mut replayer,
            group,
            (&hist, &oracles, cut_key),
            prefix,
            &level,
            seed,
            dedup,
        );
        if ctx.done() {
            return;
        }
    }
}

/// The crash points of one client cut: `cut` is the history there, its oracles and its key.
#[allow(clippy::too_many_arguments)]
fn explore_points(
    ctx: &mut Ctx<'_>,
    world: &World,
    replayer: &mut crate::Replayer<'_>,
    points: &[CrashPoint],
    cut: (&History, &(BlockOracle<'_>, PrefixOracle<'_>), u128),
    prefix: &[PathStep],
    level: &Level,
    seed: u64,
    dedup: &mut Dedup,
) {
    let (hist, oracles, cut_key) = cut;
    let level = level.clone();
    for &point in points {
        if ctx.done() {
            return;
        }
        let state = match timed(Phase::Replay, || replayer.advance_to(point)) {
            Ok(s) => s,
            Err(e) => {
                ctx.report(
                    prefix,
                    vec![Finding {
                        kind: Kind::Run,
                        detail: format!("crash state at {point}: {e}"),
                    }],
                );
                return;
            }
        };
        super::coverage::point_probes(&mut ctx.result.points.sim, &world.log, point);
        let mut opts = ctx.opts.clone();
        if level != Level::Top {
            // Nested levels: a lighter enumeration keeps the product of levels bounded.
            opts.exhaustive_bound = opts.exhaustive_bound.min(4);
            opts.k = 1;
            opts.random = 2;
        }
        // A point whose crash state (durable images, pending writes, client cut) an earlier
        // point already had would give the same systematic choices (between two completions
        // of writes nothing of it changes), so only its random ones, seeded by the point, are
        // tried: no fingerprint is computed twice for nothing.
        let random_seed = mix64(seed ^ point.before);
        let fresh = dedup.insert_fingerprint(state.state_key() ^ cut_key ^ POINT_DOMAIN);
        if level == Level::Top {
            let tally = &mut ctx.result.points;
            match (fresh, state.all_subsets(opts.exhaustive_bound).is_ok()) {
                (false, _) => tally.repeated += 1,
                (true, true) => tally.all_subsets += 1,
                (true, false) => tally.sampled += 1,
            }
        }
        let choices: Vec<Choice> = timed(Phase::Choices, || match fresh {
            true => choices_for(&state, &opts, random_seed),
            false => state.random_choices(random_seed, opts.random).collect(),
        });
        for choice in choices {
            if ctx.done() {
                return;
            }
            let path_to = |choice: &Choice| {
                let mut path = prefix.to_vec();
                path.push(PathStep {
                    level: level.clone(),
                    point: point.before,
                    choice: choice.clone(),
                });
                path
            };
            let fp = match timed(Phase::Choices, || state.fingerprint_of(&choice)) {
                Ok(fp) => fp,
                Err(e) => {
                    ctx.harness_error(&path_to(&choice), format!("fingerprint: {e}"));
                    continue;
                }
            };
            // The same images under another client cut are another check (more writes may be
            // durable by now), so the cut is part of what is deduplicated.
            if !timed(Phase::Choices, || dedup.insert_fingerprint(fp ^ cut_key)) {
                continue;
            }
            let images = match timed(Phase::Images, || state.image(&choice)) {
                Ok(images) => images,
                Err(e) => {
                    ctx.harness_error(&path_to(&choice), format!("images: {e}"));
                    continue;
                }
            };
            debug_assert_eq!(
                images.fingerprint(),
                fp,
                "fingerprint_of agrees with the images"
            );
            ctx.result.states += 1;
            let path = path_to(&choice);
            ctx.result.fingerprints = fold_fingerprint(ctx.result.fingerprints, fp ^ cut_key);
            let sel = ctx.opts.oracle.for_workload(ctx.workload);
            ctx.result.points.no_prefix += (sel.prefix() != ctx.opts.oracle.prefix()) as u64;
            // A continuation's history starts from the recovered device, not from `base`.
            let plan = match (&ctx.base, &level) {
                (Some(base), Level::Top | Level::Recovery) => Plan {
                    base: Some(base),
                    cross_check: !ctx.cross_checked,
                },
                _ => Plan::default(),
            };
            ctx.cross_checked |= plan.base.is_some();
            let (findings, recovered) =
                check_images_with(images, ctx.config, (&oracles.0, &oracles.1), sel, plan);
            let bad = !findings.is_empty();
            let peer = recovered.as_ref().is_some_and(|r| r.peer_judged);
            ctx.result.points.peer_judged += peer as u64;
            probe_state(
                &mut ctx.result.points.sim,
                &level,
                &choice,
                state.pending_count(),
                peer,
            );
            let faults = &ctx.workload.config.faults;
            super::coverage::torn_probes(&mut ctx.result.points.sim, faults, &choice);
            ctx.report(&path, findings);
            let Some(recovered) = recovered else { continue };
            if bad || level != Level::Top {
                continue;
            }
            // Power is cut inside every recovery that writes: a format, stale-slot
            // invalidation, and in type 1 always (voided regions, rebuilt segments, the new
            // epoch).
            let r = &recovered.report;
            let wrote = r.formatted || r.stale_invalidated > 0 || r.plog_epoch > 0;
            if ctx.opts.recovery_crash && wrote {
                match state.image(&choice) {
                    Ok(images) => explore_recovery(ctx, world, images, hist, &path),
                    Err(e) => ctx.harness_error(&path, format!("images for recovery: {e}")),
                }
            }
            let every = ctx.opts.continuation_every;
            if every > 0 && ctx.result.states % every == 0 {
                let seed = continuation_seed(seed, point.before);
                explore_continuation(ctx, recovered, &path, seed);
            }
        }
    }
}

/// Records a recovery of `images` and explores crashes inside it.
fn explore_recovery(
    ctx: &mut Ctx<'_>,
    world: &World,
    images: crate::CrashImages,
    hist: &History,
    path: &[PathStep],
) {
    let w2 = match timed(Phase::Nested, || world.restarted(&images)) {
        Ok(w2) => w2.shared(),
        Err(e) => return ctx.harness_error(path, format!("restart for recovery crashes: {e}")),
    };
    // The recovery itself was already checked on the same images (so the engine's answer is
    // not judged again); here only its device log matters.
    let order = ctx.workload.config.completion.order();
    if let Err(e) = timed(Phase::Nested, || open_on(&w2, ctx.config, order)) {
        return ctx.harness_error(path, format!("recovery for recovery crashes: {e}"));
    }
    let w2 = w2.borrow();
    explore_world(ctx, &w2, hist, path, Level::Recovery, 0, &mut Dedup::new());
}

/// After a recovery: more writes and flushes on the recovered devices, then crash again.
fn explore_continuation(ctx: &mut Ctx<'_>, mut recovered: Recovered, path: &[PathStep], seed: u64) {
    let start = std::time::Instant::now();
    if recovered.read.is_some() {
        let base = ctx
            .base
            .as_ref()
            .expect("the shortcut read against this base");
        recovered.whole_observed(base);
    }
    let (cache, backing, plog) = recovered.engine.into_all_devices();
    let wc = &ctx.workload.config;
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("continuation {what}: {e}");
    let world = match new_world(
        wc,
        cache.into_image(),
        backing.into_image(),
        plog.map(ImageDevice::into_image),
    ) {
        Ok(w) => w,
        Err(e) => return ctx.harness_error(path, fail("world", &e)),
    };
    let mut history = match History::new(recovered.observed.clone()) {
        Ok(h) => h,
        Err(e) => return ctx.harness_error(path, fail("history", &e)),
    };
    let mut model = match ModelDisk::from_bytes(recovered.observed) {
        Ok(m) => m,
        Err(e) => return ctx.harness_error(path, fail("model", &e)),
    };
    let ops = continuation(seed, wc);
    let opened = match open_on(&world, ctx.config, wc.completion.order()) {
        Ok(o) => o,
        Err(e) => return ctx.harness_error(path, fail("reopen", &e)),
    };
    match opened {
        // An injected device error may hit the reopen itself: an error, not a lie.
        Err(engine::Error::Io { .. }) if ctx.workload.config.faults.errors_expected() => {}
        Err(e) => {
            ctx.report(
                path,
                vec![Finding {
                    kind: Kind::Recovery,
                    detail: format!("reopen for continuation: {e}"),
                }],
            );
            return;
        }
        Ok((engine, _)) => {
            let mut engine = Some(engine);
            if let Err(f) = drive(
                &mut engine,
                ctx.config,
                &world,
                &mut history,
                &mut model,
                &ops,
                1,
                ctx.workload.config.faults.errors_expected(),
            ) {
                ctx.report(
                    path,
                    vec![Finding {
                        kind: Kind::Run,
                        detail: format!("continuation: {}", f.detail),
                    }],
                );
                return;
            }
        }
    }
    let w = world.borrow();
    phases::add_since(Phase::Nested, start);
    let seen = &mut Dedup::new();
    explore_world(ctx, &w, &history, path, Level::Continuation, seed, seen);
}

/// Re-runs exactly one crash path of a case and returns what it found, with a log for humans.
pub fn replay_case(case: &str, oracle: OracleSel) -> Result<(Vec<Finding>, String), String> {
    let (workload, path) = parse_case(case)?;
    let config = recovery_config(&workload.config)?;
    let rec = record(&workload.config, &workload.ops)?;
    let mut log = String::new();
    if let Some(f) = &rec.failure {
        return Ok((
            vec![Finding {
                kind: if f.panicked { Kind::Panic } else { Kind::Run },
                detail: f.detail.clone(),
            }],
            rec.world.borrow().format_log(),
        ));
    }
    let mut world = rec.world;
    let mut history = rec.history;
    let mut findings = Vec::new();
    for (depth, step) in path.iter().enumerate() {
        if depth == 0 && step.level != Level::Top {
            return Err("a crash path starts with the top-level crash (p...)".into());
        }
        let w = world.borrow();
        let state = w
            .crash_state(CrashPoint::before(step.point))
            .map_err(|e| e.to_string())?;
        let hist = if step.level == Level::Recovery {
            history.clone()
        } else {
            history
                .as_of(w.client_cut(CrashPoint::before(step.point)))
                .map_err(|e| e.to_string())?
        };
        log = format!(
            "crash {} at {} with choice {}; device log up to the crash:\n{}",
            depth,
            CrashPoint::before(step.point),
            step.choice,
            crate::format_entries(&w.log()[..(step.point as usize).min(w.log().len())])
        );
        let images = state.image(&step.choice).map_err(|e| e.to_string())?;
        let oracles = oracles_for(&hist);
        let sel = oracle.for_workload(&workload);
        let (f, recovered) = check_images(images.clone(), config, (&oracles.0, &oracles.1), sel);
        findings = f;
        let next = path.get(depth + 1);
        drop(w);
        match next.map(|s| &s.level) {
            None => break,
            Some(Level::Top) => return Err("a crash path has one top-level crash, first".into()),
            Some(Level::Recovery) => {
                let w2 = world
                    .borrow()
                    .restarted(&images)
                    .map_err(|e| e.to_string())?
                    .shared();
                drop(open_on(&w2, config, workload.config.completion.order())?);
                world = w2;
                history = hist;
            }
            Some(Level::Continuation) => {
                let recovered =
                    recovered.ok_or("the crash before a continuation did not recover")?;
                let seed = continuation_seed(workload.config.seed, step.point);
                let (c, b, p) = recovered.engine.into_all_devices();
                let wc: &WlConfig = &workload.config;
                let w3 = new_world(
                    wc,
                    c.into_image(),
                    b.into_image(),
                    p.map(ImageDevice::into_image),
                )?;
                let mut h3 = History::new(recovered.observed.clone()).map_err(|e| e.to_string())?;
                let mut model =
                    ModelDisk::from_bytes(recovered.observed).map_err(|e| e.to_string())?;
                let (engine, _) =
                    open_on(&w3, config, wc.completion.order())?.map_err(|e| e.to_string())?;
                let mut engine = Some(engine);
                drive(
                    &mut engine,
                    config,
                    &w3,
                    &mut h3,
                    &mut model,
                    &continuation(seed, wc),
                    1,
                    wc.faults.errors_expected(),
                )
                .map_err(|f| format!("continuation failed: {}", f.detail))?;
                drop(engine);
                world = w3;
                history = h3;
            }
        }
    }
    Ok((findings, log))
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::format::plog::{encode_entry, EntryHeader};
    use engine::format::SECTOR_SIZE;

    /// A gathered plog write of three entries (1, 8 and 2 data sectors) at sector 100.
    fn gathered(unit_sectors: u64) -> crate::PendingWrite {
        let mut data = Vec::new();
        for (seq, len) in [1u8, 8, 2].into_iter().enumerate() {
            let h = EntryHeader {
                generation: 1,
                epoch: 1,
                segment_id: 1,
                seq: seq as u32,
                prev_entries: 0,
                sector: 8 * seq as u64,
                len,
            };
            let d = vec![seq as u8 + 1; len as usize * SECTOR_SIZE];
            data.extend_from_slice(&encode_entry(&h, &d));
            data.extend_from_slice(&d);
        }
        let sectors = data.len() / SECTOR_SIZE;
        crate::PendingWrite {
            seq: 0,
            role: DeviceRole::Plog,
            sector: 100,
            data: data.into(),
            live: vec![true; sectors],
            unit_sectors,
        }
    }

    /// A continuation the tester cannot set up (here: a recovered image it cannot model) used to
    /// end that branch silently; it is a `Harness` violation, counted, with its path.
    #[test]
    fn a_state_the_tester_cannot_check_is_a_counted_harness_violation() {
        let w: Workload = "o=4,n=2,b=4,p=1,k=1,u=1,s=7;W0+8.F.W8+8.F".parse().unwrap();
        let rec = record(&w.config, &w.ops).unwrap();
        let end = rec.world.borrow().log().len() as u64;
        let state = rec
            .world
            .borrow()
            .crash_state(CrashPoint::before(end))
            .unwrap();
        let config = recovery_config(&w.config).unwrap();
        let oracles = oracles_for(&rec.history);
        let images = state.image(&Choice::default()).unwrap();
        let (findings, recovered) =
            check_images(images, config, (&oracles.0, &oracles.1), OracleSel::Both);
        assert!(findings.is_empty(), "{findings:?}");
        let mut recovered = recovered.unwrap();
        recovered.observed.truncate(100); // not a whole sector: no model can be built from it
        let opts = ExploreOpts::default();
        let mut ctx = Ctx {
            workload: &w,
            config,
            opts: &opts,
            result: WorkloadResult::default(),
            base: None,
            cross_checked: false,
        };
        let path = vec![PathStep {
            level: Level::Top,
            point: end,
            choice: Choice::default(),
        }];
        explore_continuation(&mut ctx, recovered, &path, 1);
        assert_eq!(ctx.result.violation_count, 1);
        let v = &ctx.result.violations[0];
        assert_eq!(v.finding.kind, Kind::Harness);
        assert!(
            v.finding
                .detail
                .starts_with("this crash state could not be checked: continuation"),
            "{}",
            v.finding.detail
        );
        assert_eq!(v.path, path);
        // The zoo and the shrinker stop at it like at any violation.
        let stop = ExploreOpts {
            stop_at_first: true,
            ..ExploreOpts::default()
        };
        ctx.opts = &stop;
        assert!(ctx.done());
    }

    #[test]
    fn plog_tears_cut_between_and_inside_every_entry() {
        let w = gathered(1);
        let m = plog_entry_tears(&w);
        // Entries at sectors [0, 2), [2, 11), [11, 14).
        let keep = |f: &dyn Fn(usize) -> bool| (0..14).map(f).collect::<Vec<bool>>();
        for cut in [2, 11] {
            assert!(m.contains(&keep(&|s| s < cut)), "prefix cut at {cut}");
            assert!(m.contains(&keep(&|s| s >= cut)), "suffix from {cut}");
        }
        assert!(
            m.contains(&keep(&|s| !(2..11).contains(&s))),
            "entry 1 missing"
        );
        assert!(
            m.contains(&keep(&|s| s != 10)),
            "entry 1's last sector torn"
        );
        assert!(m.contains(&keep(&|s| s != 11)), "entry 2's header torn");
        assert!(m.contains(&keep(&|s| s < 7)), "entry 1 torn in its middle");
        assert!(m
            .iter()
            .all(|x| x.len() == 14 && x.contains(&true) && x.contains(&false)));
        // 4 KiB atomic units: the masks are per unit, and still cut between the entries.
        let w8 = gathered(8);
        let m8 = plog_entry_tears(&w8);
        assert!(!m8.is_empty() && m8.iter().all(|x| x.len() == w8.unit_count()));
        // A write that is not a run of entries (a voided region start) gets none.
        let mut void = gathered(1);
        void.data = vec![0u8; SECTOR_SIZE].into();
        void.live = vec![true];
        assert!(plog_entry_tears(&void).is_empty());
    }
}
