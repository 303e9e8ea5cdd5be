//! `ops`: an arbitrary workload (client writes, FUA writes, discards, write-zeroes, reads and
//! FLUSHes of small extents, background steps run to completion or left racing, messages,
//! ticks of the runner's timer, reformats) on simulated
//! devices with volatile caches, type 0 or type 1, on a small geometry; then power cuts at
//! fuzzer-chosen crash points with fuzzer-chosen persisted subsets and tears, and optionally a
//! second cut inside the recovery of one of them.
//!
//! It is crashsim's explorer with the fuzzer making its choices: the workload is a
//! [`Workload`] run once by [`record`] (which reads every write back and checks the engine's
//! invariants after every operation), the crash images come from
//! [`crashsim::CrashState::image`], and every image is judged by [`check_images`]: recovery,
//! invariants, both oracles (block device and prefix of the acknowledged writes), two reads.
//! A finding panics with the `cargo xtask crash-test --replay` case that reproduces it.
//!
//! Input: an [`Input`] built by the `arbitrary` crate (derived [`Arbitrary`]): a [`Setup`]
//! (cache type, order, atomic unit, faults and torn-unit fills, geometry, writeback schedule,
//! timer intervals, completion order, seed), the operations (also messages, timer ticks and
//! reformats) ([`Op`], at most [`MAX_OPS`]), the power cuts ([`Crash`]: a crash
//! point index and, per pending write, [`Persisted`] lost, whole or torn with a unit mask; one
//! to [`MAX_CRASHES`]) and optionally a cut inside the first recovery that writes. Every field
//! is a small integer or a flag mapped into range against the geometry (modulo), so every input
//! is a valid workload; longer lists are truncated.

use arbitrary::Arbitrary;
use crashsim::explore::{
    check_images, open_on, record, recovery_config, Completion, FaultSet, Finding, Level,
    OracleSel, PathStep, Violation, WlConfig, WlOp, Workload,
};
use crashsim::{Choice, CrashPoint, CrashState, Persist, PointSelection, Units};
use engine::Step;
use models::{BlockOracle, History, PrefixOracle, PrefixUnit};

/// Operations per workload.
pub const MAX_OPS: usize = 40;
/// Power cuts per input.
pub const MAX_CRASHES: usize = 4;

/// What the fuzzer runs: a workload, then power cuts.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub setup: Setup,
    /// At most [`MAX_OPS`] are run.
    pub ops: Vec<Op>,
    /// The first power cut; there is always one.
    pub first: Crash,
    /// Further cuts, each of the same recorded run (at most [`MAX_CRASHES`] in all).
    pub more: Vec<Crash>,
    /// A cut inside the first recovery (of the cuts above) that writes to a device.
    pub recovery_cut: Option<Crash>,
}

/// The workload's configuration; numbers are taken modulo their ranges.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    /// Type 1 (with a plog device) instead of type 0.
    pub type1: bool,
    /// Segments of order 5 instead of 4.
    pub order5: bool,
    /// Atomic write unit of 4 KiB instead of 512 bytes.
    pub unit8: bool,
    /// Torn units hold garbage.
    pub garbage_torn: bool,
    /// One EIO on a cache-device write.
    pub eio_write: bool,
    /// One EIO on a cache-device read.
    pub eio_read: bool,
    /// Segment slots: 2..=4.
    pub slots: u8,
    /// Backing blocks: 2..=9.
    pub backing_blocks: u8,
    /// RAM buffers: 1..=3.
    pub pool: u8,
    /// Writeback batch: 1..=2.
    pub batch: u8,
    /// Plog regions (type 1): 2..=4.
    pub plog_regions: u8,
    /// No writeback ahead of need (`a=0`).
    pub behind: bool,
    /// The `allow_writeback` tunable (`w=1`).
    pub allow_writeback: bool,
    /// Completion order of the simulated devices: in order, or seeded by this.
    pub completion: Option<u8>,
    /// Seed of the faults' positions.
    pub seed: u8,
    /// Torn units hold zeros (ignored where `garbage_torn` is on).
    pub zero_torn: bool,
    /// Torn writes persist one run of their units.
    pub torn_runs: bool,
    /// One-second sync and record intervals from the open (`i=1`), so ticks bring them due.
    pub intervals: bool,
}

/// A background step.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Seal,
    FlushSegment,
    Writeback,
    Record,
    Sync,
}

/// One operation; blocks and sectors are taken modulo the backing device, lengths modulo what
/// fits (so every extent is inside the device and non-empty).
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A full-block write of block `block`.
    Write { block: u8 },
    /// `1 + count % (8 - first)` sectors from sector `first % 8` of block `block`.
    Partial {
        block: u8,
        first: u8,
        count: u8,
        fua: bool,
    },
    /// `1 + len % max` sectors from sector `sector`, up to a segment's blocks + 2, unaligned.
    Multi { sector: u8, len: u8, fua: bool },
    /// A full-block FUA write of block `block`.
    Fua { block: u8 },
    /// A discard of up to 16 sectors.
    Discard { sector: u8, len: u8 },
    /// A write-zeroes of up to 16 sectors.
    Zeroes { sector: u8, len: u8, fua: bool },
    /// Reads of up to 4 blocks, in pieces all in flight together.
    ReadMany { sector: u8, len: u8 },
    /// A client FLUSH.
    Flush,
    /// A background step run to completion.
    Step(StepKind),
    /// A background step started and left running (later operations race it).
    Background(StepKind),
    /// The `drop_caches` message, left running.
    DropCaches,
    /// A second of the runner's timer.
    Tick,
    /// The message `<tunable> <value>`: `index` modulo the tunables, `value` as it is (so out
    /// of range too: it must be refused).
    Tunable { index: u8, value: u16 },
    /// Drain, shut down and format the cache again under the running device.
    Reformat,
}

/// One power cut.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct Crash {
    /// Index (modulo their number) into the crash points (fine selection).
    pub point: u16,
    /// What persisted of each pending write, in log order; missing entries are lost.
    pub persisted: Vec<Persisted>,
}

/// What persisted of one pending write at a cut.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum Persisted {
    Lost,
    Whole,
    /// Torn: bit `u % 8` of byte `u / 8` says whether unit `u` persisted (missing bits: not).
    Torn(Vec<u8>),
}

impl From<StepKind> for Step {
    fn from(k: StepKind) -> Step {
        match k {
            StepKind::Seal => Step::Seal,
            StepKind::FlushSegment => Step::FlushSegment,
            StepKind::Writeback => Step::Writeback,
            StepKind::Record => Step::Record,
            StepKind::Sync => Step::Sync,
        }
    }
}

impl Setup {
    /// The crashsim configuration.
    pub fn config(&self) -> WlConfig {
        let cache_type = u8::from(self.type1);
        WlConfig {
            order: if self.order5 { 5 } else { 4 },
            nr_segments: 2 + u64::from(self.slots) % 3,
            backing_blocks: 2 + u64::from(self.backing_blocks) % 8,
            pool: 1 + usize::from(self.pool) % 3,
            batch: 1 + u32::from(self.batch) % 2,
            unit_sectors: if self.unit8 { 8 } else { 1 },
            seed: u64::from(self.seed),
            faults: FaultSet {
                garbage_torn: self.garbage_torn,
                zero_torn: self.zero_torn,
                torn_runs: self.torn_runs,
                eio_write: self.eio_write,
                eio_read: self.eio_read,
                ..FaultSet::default()
            },
            quirks: Vec::new(),
            cache_type,
            plog_regions: if cache_type == 1 {
                2 + u64::from(self.plog_regions) % 3
            } else {
                0
            },
            ahead: !self.behind,
            allow_writeback: self.allow_writeback,
            intervals: u32::from(self.intervals),
            cutoff: 0,
            pool_after: 0,
            completion: match self.completion {
                Some(seed) => Completion::Seeded(u64::from(seed)),
                None => Completion::InOrder,
            },
        }
    }
}

impl Op {
    /// The crashsim operation, clamped to the geometry of `c`.
    pub fn to_wl(self, c: &WlConfig) -> WlOp {
        let blocks = c.backing_blocks;
        let size = c.backing_sectors();
        let n = (1u64 << (c.order - 3)) - 1;
        let at = |sector: u8| u64::from(sector) % size;
        let len =
            |sector: u64, len: u8, max: u64| 1 + (u64::from(len) % (size - sector).min(max)) as u32;
        match self {
            Op::Write { block } => WlOp::Write {
                sector: (u64::from(block) % blocks) * 8,
                sectors: 8,
                fua: false,
            },
            Op::Partial {
                block,
                first,
                count,
                fua,
            } => {
                let first = u64::from(first) % 8;
                WlOp::Write {
                    sector: (u64::from(block) % blocks) * 8 + first,
                    sectors: 1 + (u64::from(count) % (8 - first)) as u32,
                    fua,
                }
            }
            Op::Multi {
                sector,
                len: l,
                fua,
            } => {
                let sector = at(sector);
                WlOp::Write {
                    sector,
                    sectors: len(sector, l, 8 * (n + 2)),
                    fua,
                }
            }
            Op::Fua { block } => WlOp::Write {
                sector: (u64::from(block) % blocks) * 8,
                sectors: 8,
                fua: true,
            },
            Op::Discard { sector, len: l } => {
                let sector = at(sector);
                WlOp::Discard {
                    sector,
                    sectors: len(sector, l, 16),
                }
            }
            Op::Zeroes {
                sector,
                len: l,
                fua,
            } => {
                let sector = at(sector);
                WlOp::Zeroes {
                    sector,
                    sectors: len(sector, l, 16),
                    fua,
                }
            }
            Op::ReadMany { sector, len: l } => {
                let sector = at(sector);
                WlOp::ReadMany {
                    sector,
                    sectors: len(sector, l, 32),
                }
            }
            Op::Flush => WlOp::Flush,
            Op::Step(k) => WlOp::Step(k.into()),
            Op::Background(k) => WlOp::Background(k.into()),
            Op::DropCaches => WlOp::DropCaches,
            Op::Tick => WlOp::Tick,
            Op::Tunable { index, value } => WlOp::Tunable {
                index: index % engine::tunables::TUNABLE_RANGES.len() as u8,
                value: value.into(),
            },
            Op::Reformat => WlOp::Reformat,
        }
    }
}

impl Input {
    /// The workload (operations past [`MAX_OPS`] dropped).
    pub fn workload(&self) -> Workload {
        let config = self.setup.config();
        let ops = self
            .ops
            .iter()
            .take(MAX_OPS)
            .map(|op| op.to_wl(&config))
            .collect();
        Workload { config, ops }
    }

    /// The power cuts (at most [`MAX_CRASHES`]).
    pub fn crashes(&self) -> impl Iterator<Item = &Crash> {
        std::iter::once(&self.first).chain(self.more.iter().take(MAX_CRASHES - 1))
    }
}

impl Crash {
    /// The crash point this cut picks among `points`.
    pub fn pick(&self, points: &[CrashPoint]) -> CrashPoint {
        points[usize::from(self.point) % points.len()]
    }

    /// What persisted of each pending write of `state`, in log order.
    pub fn choice(&self, state: &CrashState) -> Choice {
        let mut persisted = Vec::new();
        for (i, w) in state.pending.iter().enumerate() {
            let units = match self.persisted.get(i) {
                None | Some(Persisted::Lost) => continue,
                Some(Persisted::Whole) => Units::All,
                Some(Persisted::Torn(mask)) => Units::Mask(
                    (0..w.unit_count())
                        .map(|u| mask.get(u / 8).is_some_and(|m| m >> (u % 8) & 1 == 1))
                        .collect(),
                ),
            };
            persisted.push(Persist { pending: i, units });
        }
        Choice {
            persisted,
            bit_flips: Vec::new(),
        }
    }
}

fn fail(workload: &Workload, path: Vec<PathStep>, findings: Vec<Finding>) -> ! {
    let mut text = String::new();
    for finding in findings {
        let v = Violation {
            workload: workload.clone(),
            path: path.clone(),
            finding,
        };
        text.push_str(&format!(
            "violation ({}): {}\n  replay: cargo xtask crash-test --replay '{}'\n",
            v.finding.kind.name(),
            v.finding.detail,
            v.case()
        ));
    }
    panic!("{text}");
}

/// Runs the raw bytes of a corpus file as `fuzz_target!` does: [`crate::decode`], then
/// [`run_input`].
pub fn run(data: &[u8]) {
    if let Some(input) = crate::decode(data) {
        run_input(input);
    }
}

/// Runs one input; panics on a finding.
pub fn run_input(input: Input) {
    let workload = input.workload();
    if let Err(e) = workload.validate() {
        panic!("the input mapped to an invalid workload {workload}: {e}");
    }
    let config = recovery_config(&workload.config).expect("a config without quirks");
    let rec = record(&workload.config, &workload.ops)
        .unwrap_or_else(|e| panic!("recording {workload}: {e}"));
    if let Some(f) = &rec.failure {
        fail(
            &workload,
            vec![],
            vec![Finding {
                kind: crashsim::explore::Kind::Run,
                detail: format!("op {:?}: {}", f.op_index, f.detail),
            }],
        );
    }
    let world = rec.world.borrow();
    let points = world.crash_points(PointSelection::fine());
    let mut recovery_cut = input.recovery_cut.as_ref();
    for crash in input.crashes() {
        let point = crash.pick(&points);
        let state = world
            .crash_state(point)
            .unwrap_or_else(|e| panic!("crash state at {point}: {e}"));
        let choice = crash.choice(&state);
        let images = state
            .image(&choice)
            .unwrap_or_else(|e| panic!("image of {choice}: {e}"));
        let hist = rec
            .history
            .as_of(world.client_cut(point))
            .unwrap_or_else(|e| panic!("history cut at {point}: {e}"));
        let path = vec![PathStep {
            level: Level::Top,
            point: point.before,
            choice: choice.clone(),
        }];
        let oracles = (
            BlockOracle::new(&hist),
            PrefixOracle::new(&hist, PrefixUnit::Blocks),
        );
        let (findings, recovered) = check_images(
            images.clone(),
            config,
            (&oracles.0, &oracles.1),
            OracleSel::Both,
        );
        if !findings.is_empty() {
            fail(&workload, path, findings);
        }
        let wrote = recovered.is_some_and(|x| {
            x.report.formatted || x.report.stale_invalidated > 0 || x.report.plog_epoch > 0
        });
        if let (Some(cut), true) = (recovery_cut, wrote) {
            recovery_cut = None;
            cut_recovery(cut, &workload, &world, &images, &hist, path, config);
        }
    }
}

/// Records a recovery of `images` and cuts power inside it, at the point and with the choice
/// of `cut`; recovery of that must still satisfy the history cut of the first crash.
fn cut_recovery(
    cut: &Crash,
    workload: &Workload,
    world: &crashsim::World,
    images: &crashsim::CrashImages,
    hist: &History,
    mut path: Vec<PathStep>,
    config: engine::Config,
) {
    let w2 = world
        .restarted(images)
        .unwrap_or_else(|e| panic!("restart: {e}"))
        .shared();
    drop(open_on(&w2, config, Completion::InOrder.order()));
    let w2 = w2.borrow();
    let points = w2.crash_points(PointSelection::fine());
    let point = cut.pick(&points);
    let state = w2
        .crash_state(point)
        .unwrap_or_else(|e| panic!("crash state in recovery at {point}: {e}"));
    let choice = cut.choice(&state);
    let images = state
        .image(&choice)
        .unwrap_or_else(|e| panic!("image of {choice}: {e}"));
    path.push(PathStep {
        level: Level::Recovery,
        point: point.before,
        choice,
    });
    let oracles = (
        BlockOracle::new(hist),
        PrefixOracle::new(hist, PrefixUnit::Blocks),
    );
    let (findings, _) = check_images(images, config, (&oracles.0, &oracles.1), OracleSel::Both);
    if !findings.is_empty() {
        fail(workload, path, findings);
    }
}
