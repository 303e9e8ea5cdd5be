//! Workloads: what a client and the background do to the engine, as data. A workload carries
//! its geometry and fault switches, prints as one token for replay commands and parses back.

use std::fmt;
use std::str::FromStr;

use engine::format::SECTORS_PER_BLOCK;
use engine::tunables::TUNABLE_RANGES;
use engine::Step;

use crate::rng::SplitMix64;

/// One operation of a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WlOp {
    /// Client write of `sectors` sectors at `sector` (FUA if `fua`). Its data is derived from the
    /// op's position in the workload and the sector, so every write of every sector is unique.
    Write {
        sector: u64,
        sectors: u32,
        fua: bool,
    },
    /// Client discard (reads as zeros afterwards).
    Discard { sector: u64, sectors: u32 },
    /// Client write-zeroes (NBD `WRITE_ZEROES`), FUA if `fua`.
    Zeroes {
        sector: u64,
        sectors: u32,
        fua: bool,
    },
    /// Client reads of the extent, in pieces of varied lengths all submitted together (as the
    /// runner serves a client's queue), each checked against the model.
    ReadMany { sector: u64, sectors: u32 },
    /// Client FLUSH.
    Flush,
    /// One explicit background step, run until everything in flight completed.
    Step(Step),
    /// A background step started and left running: later requests race it.
    Background(Step),
    /// Format the cache device again under the running device (drain, shut down, format):
    /// the format-over-an-old-cache of hazard H10. For the client it is a FLUSH.
    Reformat,
    /// The `drop_caches` message: draining starts with the steps due now, as the runner's loop
    /// starts them, and is left running: later operations, or a crash, interrupt it.
    DropCaches,
    /// The runner's timer: a second passes, then the steps now due start and are left running
    /// (a `sync_interval` or `update_record_interval` that came due, a drain in progress).
    Tick,
    /// The message `<tunable> <value>` for `engine::TUNABLE_RANGES[index]`. A value out of the
    /// tunable's range must be refused and change nothing.
    Tunable { index: u8, value: u32 },
}

/// Named fault switches a workload runs with (see `crate::Faults`). Where a fault triggers
/// (which operation, which sector) is derived from the workload's seed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FaultSet {
    /// The cache device acknowledges flushes it drops: must be caught as violations.
    pub lying_flush: bool,
    /// The cache device treats FUA as a plain write: must be caught as violations.
    pub lying_fua: bool,
    /// Torn units hold garbage instead of old content: must be survived.
    pub garbage_torn: bool,
    /// One cache-device write fails with EIO: the engine must report it and go dead; reads may
    /// fail, never lie; nothing acknowledged is lost.
    pub eio_write: bool,
    /// One cache-device read fails with EIO: as above.
    pub eio_read: bool,
    /// One cache-device write lands in another slot: silent loss the oracles must catch.
    pub misdirect: bool,
    /// A bit of a durable cached block flips: detected, but durable data is lost, so the
    /// oracles must report it.
    pub bit_rot: bool,
    /// Torn units hold zeros instead of old content: must be survived.
    pub zero_torn: bool,
    /// Torn writes persist one contiguous run of their units: must be survived.
    pub torn_runs: bool,
}

impl FaultSet {
    pub const NAMES: [&'static str; 9] = [
        "lying-flush",
        "lying-fua",
        "garbage-torn",
        "eio-write",
        "eio-read",
        "misdirect",
        "bit-rot",
        "zero-torn",
        "torn-runs",
    ];

    fn flag_mut(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "lying-flush" => &mut self.lying_flush,
            "lying-fua" => &mut self.lying_fua,
            "garbage-torn" => &mut self.garbage_torn,
            "eio-write" => &mut self.eio_write,
            "eio-read" => &mut self.eio_read,
            "misdirect" => &mut self.misdirect,
            "bit-rot" => &mut self.bit_rot,
            "zero-torn" => &mut self.zero_torn,
            "torn-runs" => &mut self.torn_runs,
            _ => return None,
        })
    }

    pub fn set(&mut self, name: &str) -> Result<(), String> {
        let flag = self
            .flag_mut(name)
            .ok_or_else(|| format!("unknown fault {name:?} (known: {})", Self::NAMES.join(", ")))?;
        *flag = true;
        Ok(())
    }

    /// What torn units hold in crash images (garbage wins over zeros when both are set).
    pub fn torn_fill(&self) -> crate::TornFill {
        if self.garbage_torn {
            crate::TornFill::Garbage
        } else if self.zero_torn {
            crate::TornFill::Zero
        } else {
            crate::TornFill::Old
        }
    }

    /// Faults under which the engine cannot keep the contract: violations are expected.
    pub fn breaks_contract(&self) -> bool {
        self.lying_flush || self.lying_fua || self.misdirect || self.bit_rot
    }

    /// Faults that make device operations fail: client requests may fail (the engine goes
    /// dead), but what succeeds must still be right.
    pub fn errors_expected(&self) -> bool {
        self.eio_write || self.eio_read || self.bit_rot
    }

    pub fn names(&self) -> Vec<&'static str> {
        let mut copy = *self;
        Self::NAMES
            .into_iter()
            .filter(|n| copy.flag_mut(n).is_some_and(|f| *f))
            .collect()
    }
}

/// Geometry and settings of one run.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WlConfig {
    pub order: u8,
    pub nr_segments: u64,
    pub backing_blocks: u64,
    pub pool: usize,
    pub batch: u32,
    /// Atomic write unit of the simulated devices, in sectors (1 or 8).
    pub unit_sectors: u64,
    /// Seed of the continuation workload and random crash choices.
    pub seed: u64,
    pub faults: FaultSet,
    /// Seed quirks switched on (names), for the zoo.
    pub quirks: Vec<String>,
    /// 0: RAM buffers only; 1: with a plog device of `plog_regions` regions.
    pub cache_type: u8,
    pub plog_regions: u64,
    /// Writeback ahead of need (rule R12, the runner's default); `a=0` turns it off.
    pub ahead: bool,
    /// The `allow_writeback` tunable (`w=1`): the schedule writes back whenever it may.
    pub allow_writeback: bool,
    /// `sync_interval` and `update_record_interval` from the open, in seconds (`i=1`; 0: off),
    /// so the timer's ticks (`T`) bring sync and record steps due.
    pub intervals: u32,
    /// The `sequential_cutoff` tunable from the open, in bytes (`x=8192`; 0: off), so stream
    /// writes go straight to the backing device.
    pub cutoff: u64,
    /// RAM buffers after a crash (0: as before): recovery under another tunable (H9).
    pub pool_after: usize,
    /// In which order the simulated devices complete the operations in flight.
    pub completion: Completion,
}

/// How a run's simulated devices complete the operations in flight.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Completion {
    /// Oldest first (text: no `c=`).
    #[default]
    InOrder,
    /// Seeded choices among those in flight (text: `c=SEED`).
    Seeded(u64),
    /// Given choices where two or more are in flight, then oldest first (text: `c=x2:0:1`);
    /// bounded mode enumerates these.
    Script(Vec<u32>),
}

impl Completion {
    pub fn order(&self) -> crate::driver::Order {
        match self {
            Completion::InOrder => crate::driver::Order::InOrder,
            Completion::Seeded(s) => crate::driver::Order::Seeded(*s),
            Completion::Script(v) => crate::driver::Order::Scripted(v.clone()),
        }
    }
}

impl WlConfig {
    pub fn cache_sectors(&self) -> u64 {
        engine::format::SUPERBLOCK_SECTORS + (self.nr_segments << self.order)
    }
    /// Size of the plog device (type 1), or `None` in type 0.
    pub fn plog_sectors(&self) -> Option<u64> {
        let blocks = (1usize << (self.order - 3)) - 1;
        (self.cache_type == 1).then(|| {
            engine::format::plog::PLOG_FIRST_REGION_SECTOR
                + self.plog_regions * engine::format::plog::region_sectors_for(blocks) as u64
        })
    }
    pub fn backing_sectors(&self) -> u64 {
        self.backing_blocks * SECTORS_PER_BLOCK
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Workload {
    pub config: WlConfig,
    pub ops: Vec<WlOp>,
}

fn background_letter(s: Step) -> char {
    step_letter(s).to_ascii_lowercase()
}

fn step_letter(s: Step) -> char {
    match s {
        Step::Seal => 'S',
        Step::FlushSegment => 'G',
        Step::Writeback => 'B',
        Step::Record => 'R',
        Step::Sync => 'Y',
    }
}

impl fmt::Display for WlOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WlOp::Write {
                sector,
                sectors,
                fua,
            } => {
                write!(f, "{}{sector}+{sectors}", if *fua { 'U' } else { 'W' })
            }
            WlOp::Discard { sector, sectors } => write!(f, "Z{sector}+{sectors}"),
            WlOp::Zeroes {
                sector,
                sectors,
                fua,
            } => write!(f, "{}{sector}+{sectors}", if *fua { 'O' } else { 'N' }),
            WlOp::ReadMany { sector, sectors } => write!(f, "M{sector}+{sectors}"),
            WlOp::Flush => f.write_str("F"),
            WlOp::Step(s) => write!(f, "{}", step_letter(*s)),
            WlOp::Background(s) => write!(f, "{}", background_letter(*s)),
            WlOp::Reformat => f.write_str("X"),
            WlOp::DropCaches => f.write_str("D"),
            WlOp::Tick => f.write_str("T"),
            WlOp::Tunable { index, value } => {
                write!(f, "K{}={value}", TUNABLE_RANGES[*index as usize].0)
            }
        }
    }
}

impl FromStr for WlOp {
    type Err = String;
    fn from_str(t: &str) -> Result<Self, String> {
        let bad = || format!("bad workload op {t:?}");
        let extent = |rest: &str| -> Result<(u64, u32), String> {
            let (a, b) = rest.split_once('+').ok_or_else(bad)?;
            Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
        };
        let mut chars = t.chars();
        let first = chars.next().ok_or_else(bad)?;
        let rest = chars.as_str();
        Ok(match first {
            'W' | 'U' => {
                let (sector, sectors) = extent(rest)?;
                WlOp::Write {
                    sector,
                    sectors,
                    fua: first == 'U',
                }
            }
            'Z' => {
                let (sector, sectors) = extent(rest)?;
                WlOp::Discard { sector, sectors }
            }
            'N' | 'O' => {
                let (sector, sectors) = extent(rest)?;
                WlOp::Zeroes {
                    sector,
                    sectors,
                    fua: first == 'O',
                }
            }
            'M' => {
                let (sector, sectors) = extent(rest)?;
                WlOp::ReadMany { sector, sectors }
            }
            'F' if rest.is_empty() => WlOp::Flush,
            'S' if rest.is_empty() => WlOp::Step(Step::Seal),
            'G' if rest.is_empty() => WlOp::Step(Step::FlushSegment),
            'B' if rest.is_empty() => WlOp::Step(Step::Writeback),
            'R' if rest.is_empty() => WlOp::Step(Step::Record),
            'Y' if rest.is_empty() => WlOp::Step(Step::Sync),
            's' if rest.is_empty() => WlOp::Background(Step::Seal),
            'g' if rest.is_empty() => WlOp::Background(Step::FlushSegment),
            'b' if rest.is_empty() => WlOp::Background(Step::Writeback),
            'r' if rest.is_empty() => WlOp::Background(Step::Record),
            'y' if rest.is_empty() => WlOp::Background(Step::Sync),
            'X' if rest.is_empty() => WlOp::Reformat,
            'D' if rest.is_empty() => WlOp::DropCaches,
            'T' if rest.is_empty() => WlOp::Tick,
            'K' => {
                let (name, value) = rest.split_once('=').ok_or_else(bad)?;
                let index = TUNABLE_RANGES
                    .iter()
                    .position(|t| t.0 == name)
                    .ok_or_else(bad)?;
                WlOp::Tunable {
                    index: index as u8,
                    value: value.parse().map_err(|_| bad())?,
                }
            }
            _ => return Err(bad()),
        })
    }
}

impl fmt::Display for Workload {
    /// `o=4,n=3,b=8,p=2,k=1,u=1,s=17[,f=lying-flush+...][,q=h1+...];W0+8.F.B`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        write!(
            f,
            "o={},n={},b={},p={},k={},u={},s={}",
            c.order, c.nr_segments, c.backing_blocks, c.pool, c.batch, c.unit_sectors, c.seed
        )?;
        let faults = c.faults.names();
        if !faults.is_empty() {
            write!(f, ",f={}", faults.join("+"))?;
        }
        if !c.quirks.is_empty() {
            write!(f, ",q={}", c.quirks.join("+"))?;
        }
        if c.cache_type != 0 {
            write!(f, ",t={},g={}", c.cache_type, c.plog_regions)?;
        }
        if !c.ahead {
            f.write_str(",a=0")?;
        }
        if c.allow_writeback {
            f.write_str(",w=1")?;
        }
        if c.intervals != 0 {
            write!(f, ",i={}", c.intervals)?;
        }
        if c.cutoff != 0 {
            write!(f, ",x={}", c.cutoff)?;
        }
        if c.pool_after != 0 {
            write!(f, ",P={}", c.pool_after)?;
        }
        match &c.completion {
            Completion::InOrder => {}
            Completion::Seeded(seed) => write!(f, ",c={seed}")?,
            Completion::Script(v) => {
                let v: Vec<String> = v.iter().map(u32::to_string).collect();
                write!(f, ",c=x{}", v.join(":"))?
            }
        }
        f.write_str(";")?;
        for (i, op) in self.ops.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{op}")?;
        }
        Ok(())
    }
}

impl FromStr for Workload {
    type Err = String;
    fn from_str(t: &str) -> Result<Self, String> {
        let (head, ops) = t.split_once(';').ok_or("a workload is CONFIG;OPS")?;
        let mut c = WlConfig {
            order: 4,
            nr_segments: 3,
            backing_blocks: 8,
            pool: 2,
            batch: 1,
            unit_sectors: 1,
            seed: 0,
            faults: FaultSet::default(),
            quirks: Vec::new(),
            cache_type: 0,
            plog_regions: 0,
            ahead: true,
            allow_writeback: false,
            intervals: 0,
            cutoff: 0,
            pool_after: 0,
            completion: Completion::InOrder,
        };
        for kv in head.split(',') {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("bad config item {kv:?}"))?;
            let num = || {
                v.parse::<u64>()
                    .map_err(|_| format!("bad number in {kv:?}"))
            };
            match k {
                "o" => c.order = num()? as u8,
                "n" => c.nr_segments = num()?,
                "b" => c.backing_blocks = num()?,
                "p" => c.pool = num()? as usize,
                "k" => c.batch = num()? as u32,
                "u" => c.unit_sectors = num()?,
                "s" => c.seed = num()?,
                "f" => {
                    for name in v.split('+') {
                        c.faults.set(name)?;
                    }
                }
                "q" => c.quirks = v.split('+').map(str::to_string).collect(),
                "t" => c.cache_type = num()? as u8,
                "g" => c.plog_regions = num()?,
                "P" => c.pool_after = num()? as usize,
                "a" => c.ahead = num()? != 0,
                "w" => c.allow_writeback = num()? != 0,
                "i" => c.intervals = num()? as u32,
                "x" => c.cutoff = num()?,
                "c" => {
                    c.completion = match v.strip_prefix('x') {
                        Some("") => Completion::Script(Vec::new()),
                        Some(script) => Completion::Script(
                            script
                                .split(':')
                                .map(|x| x.parse().map_err(|_| format!("bad choice in {kv:?}")))
                                .collect::<Result<_, _>>()?,
                        ),
                        None => Completion::Seeded(num()?),
                    }
                }
                _ => return Err(format!("unknown config key {k:?}")),
            }
        }
        if !(engine::format::MIN_ORDER..=engine::format::MAX_ORDER).contains(&c.order)
            || c.nr_segments < 2
            || c.backing_blocks == 0
            || c.pool == 0
            || c.batch == 0
            || !(c.unit_sectors == 1 || c.unit_sectors == 8)
            || c.cache_type > 1
            || (c.cache_type == 1 && !(2..=64).contains(&c.plog_regions))
        {
            return Err(format!("config out of range: {head:?}"));
        }
        let ops = if ops.is_empty() {
            Vec::new()
        } else {
            ops.split('.').map(str::parse).collect::<Result<_, _>>()?
        };
        let w = Workload { config: c, ops };
        w.validate()?;
        Ok(w)
    }
}

impl Workload {
    /// Whether sequential bypass may send writes straight to the backing device: a cutoff from
    /// the open, or a message that sets one. Bypassed writes are ordered like a disk's (rules
    /// 1-3 of the contract), not as a prefix (rule 4): docs/DESIGN.md, "Sequential bypass".
    pub fn may_bypass(&self) -> bool {
        self.config.cutoff > 0
            || self.ops.iter().any(|op| {
                matches!(*op, WlOp::Tunable { index, value }
                    if TUNABLE_RANGES[index as usize].0 == "sequential_cutoff" && value > 0)
            })
    }

    /// Every extent inside the backing device and non-empty.
    pub fn validate(&self) -> Result<(), String> {
        let size = self.config.backing_sectors();
        for op in &self.ops {
            if let WlOp::Write {
                sector, sectors, ..
            }
            | WlOp::Discard { sector, sectors }
            | WlOp::Zeroes {
                sector, sectors, ..
            }
            | WlOp::ReadMany { sector, sectors } = *op
            {
                if sectors == 0 || sector + sectors as u64 > size {
                    return Err(format!("op {op} outside the {size}-sector device"));
                }
            }
        }
        Ok(())
    }
}

/// Swarm testing: the seed's own draw of the settings no fixed run varies, from a stream of its
/// own so the operations stay those of the seed (the geometry, RAM buffers and batch size are
/// drawn with the operations). The atomic unit is 512 bytes or 4 KiB, one in two each (unless
/// the run fixes it). One workload in four runs without writeback ahead of need (the
/// runner's `--no-write-back-ahead`), one in four with `allow_writeback`, one in three with
/// one-second sync and record intervals (the timer's steps come due at ticks), one in four with
/// sequential bypass from a 4 or 8 KiB stream on; where no fault is
/// fixed, the survivable fault switches: what torn units hold (old content, or, where the
/// atomic unit is 4 KiB, two in five garbage and two in five zeros: with 512-byte units every
/// torn choice makes a new image and the states multiply beyond the default run's budget, so
/// `--fault garbage-torn` runs cover those), tears in runs one in four, and one in eight
/// each an EIO on a cache write or read.
fn swarm(c: &mut WlConfig, seed: u64, unit_fixed: bool) {
    let mut sw = SplitMix64::new(crate::rng::mix64(seed ^ 0x5A4D_5741));
    if !unit_fixed {
        c.unit_sectors = if sw.chance(1, 2) { 8 } else { 1 };
    }
    c.ahead = !sw.chance(1, 4);
    c.allow_writeback = sw.chance(1, 4);
    c.intervals = sw.chance(1, 3) as u32;
    // Sequential bypass in one workload in four, from one or two blocks of stream on.
    c.cutoff = if sw.chance(1, 4) {
        4096 << sw.below(2)
    } else {
        0
    };
    if c.faults != FaultSet::default() {
        return;
    }
    if c.unit_sectors == 8 {
        match sw.below(5) {
            0 | 1 => c.faults.garbage_torn = true,
            2 | 3 => c.faults.zero_torn = true,
            _ => {}
        }
    }
    c.faults.torn_runs = sw.chance(1, 4);
    c.faults.eio_write = sw.chance(1, 8);
    c.faults.eio_read = sw.chance(1, 8);
}

/// Knobs of the random generator.
#[derive(Clone, Debug)]
pub struct GenParams {
    pub order: Option<u8>,
    pub unit_sectors: Option<u64>,
    pub faults: FaultSet,
    pub quirks: Vec<String>,
    /// Cache type of every generated workload (0 or 1).
    pub cache_type: u8,
    pub min_ops: usize,
    pub max_ops: usize,
    /// Swarm testing: each seed also draws its configuration (writeback ahead of need or not,
    /// `allow_writeback`, garbage in torn units), printed in its text and so in every replay
    /// string. Off where a run fixes faults or quirks.
    pub swarm: bool,
}

/// A seeded random workload biased toward the hard cases: a ring that wraps within a few dozen
/// writes, a handful of hot blocks (overwrites in the open segment, in flight and on the cache
/// device), partial-sector writes, dense and sparse FLUSH/FUA, background steps interleaved,
/// discards.
pub fn generate(seed: u64, p: &GenParams) -> Workload {
    let mut rng = SplitMix64::new(seed);
    let order = p.order.unwrap_or(if rng.chance(1, 4) { 5 } else { 4 });
    let n_blocks_per_seg = (1u64 << (order - 3)) - 1;
    let nr_segments = 2 + rng.below(3);
    // Enough backing blocks to wrap the ring with a few dozen block writes.
    let backing_blocks = if order <= 5 {
        4 + rng.below(8)
    } else {
        2 * n_blocks_per_seg + rng.below(16)
    };
    let config = WlConfig {
        order,
        nr_segments,
        backing_blocks,
        pool: 1 + rng.below(3) as usize,
        batch: 1 + rng.below(2) as u32,
        unit_sectors: p
            .unit_sectors
            .unwrap_or(if rng.chance(1, 4) { 8 } else { 1 }),
        seed,
        faults: p.faults,
        quirks: p.quirks.clone(),
        cache_type: p.cache_type,
        // Two regions make a segment wait for the one before the last; more, less often.
        plog_regions: if p.cache_type == 1 {
            2 + rng.below(3)
        } else {
            0
        },
        ahead: true,
        allow_writeback: false,
        intervals: 0,
        cutoff: 0,
        pool_after: 0,
        // Three workloads in four complete their operations in a seeded order (from their
        // own stream, so the ops do not depend on it); the rest in order.
        completion: if crate::rng::mix64(seed ^ 0xC0DE) % 4 == 0 {
            Completion::InOrder
        } else {
            Completion::Seeded(crate::rng::mix64(seed ^ 0x0DE5))
        },
    };
    let mut config = config;
    if p.swarm {
        swarm(&mut config, seed, p.unit_sectors.is_some());
    }
    let racing = config.completion != Completion::InOrder;
    let hot: Vec<u64> = (0..2 + rng.below(3))
        .map(|_| rng.below(backing_blocks))
        .collect();
    let flush_every = [2u64, 4, 8, 16][rng.below(4) as usize];
    let len = p.min_ops + rng.below((p.max_ops - p.min_ops + 1) as u64) as usize;
    let size = config.backing_sectors();
    let mut ops = Vec::with_capacity(len);
    while ops.len() < len {
        let block = if rng.chance(3, 4) {
            hot[rng.below(hot.len() as u64) as usize]
        } else {
            rng.below(backing_blocks)
        };
        let r = rng.below(100);
        let op = if rng.chance(1, 10) {
            // Reads of a few blocks around a hot one, all in flight together, racing the
            // background work left running.
            let sector = (block * 8).saturating_sub(rng.below(9)).min(size - 1);
            let max = (size - sector).min(8 * 4);
            WlOp::ReadMany {
                sector,
                sectors: 1 + rng.below(max) as u32,
            }
        } else if rng.chance(1, 30) {
            WlOp::Zeroes {
                sector: block * 8 + rng.below(4),
                sectors: 1 + rng.below(12).min(size - block * 8 - 4) as u32,
                fua: rng.chance(1, 3),
            }
        } else if rng.chance(1, 6) {
            message(&mut rng)
        } else if rng.chance(1, flush_every) {
            WlOp::Flush
        } else if r < 45 {
            WlOp::Write {
                sector: block * 8,
                sectors: 8,
                fua: false,
            }
        } else if r < 60 {
            let first = rng.below(8);
            let count = 1 + rng.below(8 - first);
            WlOp::Write {
                sector: block * 8 + first,
                sectors: count as u32,
                fua: false,
            }
        } else if r < 67 {
            // Multi-block, possibly unaligned.
            let sector = rng.below(size);
            let max = (size - sector).min(8 * (n_blocks_per_seg + 2));
            WlOp::Write {
                sector,
                sectors: 1 + rng.below(max) as u32,
                fua: false,
            }
        } else if r < 74 {
            WlOp::Write {
                sector: block * 8,
                sectors: 8,
                fua: true,
            }
        } else if r < 78 {
            WlOp::Discard {
                sector: block * 8,
                sectors: 8,
            }
        } else if r < 90 {
            let step = [Step::Writeback, Step::Writeback, Step::Record][rng.below(3) as usize];
            // Where completions race, half the background steps are left running.
            if racing && rng.chance(1, 2) {
                WlOp::Background(step)
            } else {
                WlOp::Step(step)
            }
        } else if r < 99 {
            let step = [Step::Seal, Step::FlushSegment, Step::Sync][rng.below(3) as usize];
            if racing && rng.chance(1, 2) {
                WlOp::Background(step)
            } else {
                WlOp::Step(step)
            }
        } else {
            WlOp::Reformat
        };
        ops.push(op);
    }
    Workload { config, ops }
}

/// A message or a tick of the runner's timer: `drop_caches` (left running), a second passing,
/// or a tunable change, one in three of them out of range (it must be refused). Values in range
/// are small, so a batch limit bites, and a quarter of the messages set an interval to one
/// second, so later ticks bring the timer's sync and record steps due.
fn message(rng: &mut SplitMix64) -> WlOp {
    const INTERVALS: [&str; 2] = ["sync_interval", "update_record_interval"];
    match rng.below(20) {
        0..=1 => WlOp::DropCaches,
        2..=10 => WlOp::Tick,
        11..=15 => {
            let name = INTERVALS[rng.below(2) as usize];
            let index = TUNABLE_RANGES.iter().position(|t| t.0 == name);
            WlOp::Tunable {
                index: index.expect("a tunable") as u8,
                value: 1,
            }
        }
        _ => {
            let index = rng.below(TUNABLE_RANGES.len() as u64) as usize;
            let (_, min, max) = TUNABLE_RANGES[index];
            let value = if rng.chance(1, 3) {
                max + 1
            } else if TUNABLE_RANGES[index].0 == "sequential_cutoff" {
                // Off, or a stream of one or two blocks.
                [0, 4096, 8192][rng.below(3) as usize]
            } else {
                min + rng.below((max - min).min(3) + 1)
            };
            WlOp::Tunable {
                index: index as u8,
                value: value as u32,
            }
        }
    }
}

/// A short continuation workload run after a recovery (SPEC §4.6): writes to a few blocks, a
/// flush in the middle, background steps.
pub fn continuation(seed: u64, config: &WlConfig) -> Vec<WlOp> {
    let mut rng = SplitMix64::new(seed ^ 0xC0_17_1A_7E);
    let blocks = config.backing_blocks;
    let mut ops = Vec::new();
    for i in 0..6 {
        let block = rng.below(blocks);
        ops.push(match i {
            2 => WlOp::Flush,
            4 => WlOp::Step(Step::Writeback),
            _ if rng.chance(1, 3) => WlOp::Write {
                sector: block * 8 + 1,
                sectors: 3,
                fua: false,
            },
            _ => WlOp::Write {
                sector: block * 8,
                sectors: 8,
                fua: false,
            },
        });
    }
    ops.push(WlOp::Flush);
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_text_round_trips() {
        let p = GenParams {
            order: None,
            unit_sectors: None,
            faults: FaultSet {
                lying_flush: true,
                ..FaultSet::default()
            },
            quirks: vec!["lc-nochecksum".into()],
            cache_type: 1,
            min_ops: 5,
            max_ops: 40,
            swarm: false,
        };
        for seed in 0..200 {
            let w = generate(seed, &p);
            w.validate().unwrap();
            let text = w.to_string();
            let back: Workload = text.parse().unwrap();
            assert_eq!(back, w, "{text}");
        }
        assert!("o=4;W0+0".parse::<Workload>().is_err(), "empty extent");
        assert!(
            "o=4,b=1;W0+9".parse::<Workload>().is_err(),
            "beyond the device"
        );
        assert!("o=11;F".parse::<Workload>().is_err(), "bad order");
        assert!("o=4;Q".parse::<Workload>().is_err(), "bad op");
        assert_eq!(
            "o=4;X".parse::<Workload>().unwrap().ops,
            vec![WlOp::Reformat]
        );
    }

    /// Swarm runs draw each seed's settings, keep its operations, and say the settings in the
    /// text a replay parses.
    #[test]
    fn swarm_seeds_draw_their_settings_and_carry_them_in_their_text() {
        let p = |swarm| GenParams {
            order: None,
            unit_sectors: None,
            faults: FaultSet::default(),
            quirks: Vec::new(),
            cache_type: 0,
            min_ops: 5,
            max_ops: 40,
            swarm,
        };
        let (mut off, mut allow, mut garbage, mut zero, mut runs, mut eio) = (0, 0, 0, 0, 0, 0);
        for seed in 0..200 {
            let (w, plain) = (generate(seed, &p(true)), generate(seed, &p(false)));
            assert_eq!(w.ops, plain.ops, "the same operations");
            let f = w.config.faults;
            off += !w.config.ahead as u32;
            allow += w.config.allow_writeback as u32;
            garbage += f.garbage_torn as u32;
            zero += f.zero_torn as u32;
            runs += f.torn_runs as u32;
            eio += (f.eio_write || f.eio_read) as u32;
            assert!(!(f.garbage_torn || f.zero_torn) || w.config.unit_sectors == 8);
            assert!(!f.breaks_contract(), "only survivable faults");
            let back: Workload = w.to_string().parse().unwrap();
            assert_eq!(back, w);
        }
        assert!(
            off > 20 && allow > 20 && garbage > 4 && zero > 2 && runs > 20 && eio > 10,
            "{off} {allow} {garbage} {zero} {runs} {eio}"
        );
        assert!(plain_text_has_no_swarm_keys(
            &generate(1, &p(false)).to_string()
        ));
    }

    fn plain_text_has_no_swarm_keys(text: &str) -> bool {
        !text.contains(",a=") && !text.contains(",w=")
    }
}
