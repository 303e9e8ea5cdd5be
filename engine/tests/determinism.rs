//! Determinism (docs/DESIGN.md, Determinism): the same seed and configuration give a byte-identical device trace.
//!
//! `TraceDevice` wraps a `MemDevice` and folds every operation the engine issues on either
//! device (kind, device, sector, length, data, FUA flag, batch boundaries) into one running
//! FNV-1a hash shared by both devices, so the interleaving between devices counts too. A seeded
//! pseudo-random workload (own splitmix64, no `rand`) runs twice on fresh devices; the traces
//! and final device bytes must be identical, and a different seed must give a different trace.

// `Config` gains a `quirks` field when the `quirks` feature is on (the crash simulator turns it
// on workspace-wide); `..Config::default()` keeps these literals compiling both ways.
#![allow(clippy::needless_update)]

use std::cell::RefCell;
use std::rc::Rc;

use engine::device::{Observed, Observer, Op};
use engine::format::{SECTORS_PER_BLOCK, SECTOR_SIZE, SUPERBLOCK_SECTORS};
use engine::{Config, FormatPolicy, MemDevice, Step, SyncEngine, Tunables};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[derive(Debug)]
struct Trace {
    hash: u64,
    ops: u64,
    bytes_written: u64,
}

impl Trace {
    fn new() -> Self {
        Trace {
            hash: FNV_OFFSET,
            ops: 0,
            bytes_written: 0,
        }
    }
    fn eat(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.hash ^= b as u64;
            self.hash = self.hash.wrapping_mul(FNV_PRIME);
        }
    }
    fn op(&mut self, kind: u8, role: u8, sector: u64, len: usize, fua: bool, data: &[u8]) {
        self.ops += 1;
        self.eat(&[kind, role, fua as u8]);
        self.eat(&sector.to_le_bytes());
        self.eat(&(len as u64).to_le_bytes());
        self.eat(data);
    }
}

const READ: u8 = 1;
const WRITE: u8 = 2;
const FLUSH: u8 = 3;
const BATCH: u8 = 4;

/// Folds every operation of one device into the trace hash it shares with the other device.
struct Tracer {
    role: u8,
    trace: Rc<RefCell<Trace>>,
}

impl Observer for Tracer {
    fn observe(&mut self, op: &Op<'_>, _failed: bool) {
        let mut t = self.trace.borrow_mut();
        match *op {
            // What was read is part of the trace: a read of a different place or at a
            // different time shows up even if the engine then ignores the bytes.
            Op::Read { sector, data } => t.op(READ, self.role, sector, data.len(), false, data),
            Op::Write { sector, data, fua } => {
                t.op(WRITE, self.role, sector, data.len(), fua, data);
                t.bytes_written += data.len() as u64;
            }
            Op::Flush => t.op(FLUSH, self.role, 0, 0, false, &[]),
            Op::WriteBatch(w) => t.op(BATCH, self.role, w.len() as u64, 0, false, &[]),
            Op::ReadBatch(r) => t.op(BATCH, self.role, r.len() as u64, 1, false, &[]),
        }
    }
}

/// A device that records every operation into a shared trace hash.
type TraceDevice = Observed<MemDevice, Tracer>;

fn traced(sectors: u64, role: u8, trace: &Rc<RefCell<Trace>>) -> TraceDevice {
    let trace = trace.clone();
    Observed::with_observer(MemDevice::new(sectors), Tracer { role, trace })
}

/// splitmix64: tiny, seeded, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy)]
struct Setup {
    order: u8,
    nr_segments: u64,
    backing_blocks: u64,
    pool: usize,
    ops: usize,
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    trace_hash: u64,
    trace_ops: u64,
    bytes_written: u64,
    /// FNV of every client read's data, in order.
    reads_hash: u64,
    cache: Vec<u8>,
    backing: Vec<u8>,
}

fn config(s: &Setup, format: FormatPolicy, tunables: Tunables) -> Config {
    Config {
        segment_size_order: s.order,
        nr_rambuf_pool: s.pool,
        tunables: Some(tunables),
        format,
        generation: 42,
        ..Config::default()
    }
}

/// Runs the workload of `seed` on fresh traced devices.
fn run(s: Setup, seed: u64) -> Outcome {
    let trace = Rc::new(RefCell::new(Trace::new()));
    let cache = traced(SUPERBLOCK_SECTORS + (s.nr_segments << s.order), 0, &trace);
    let backing = traced(s.backing_blocks * SECTORS_PER_BLOCK, 1, &trace);
    let mut tunables = Tunables::defaults(s.order);
    tunables.sync_interval = 1;
    tunables.update_record_interval = 2;
    let (mut e, _) =
        SyncEngine::open(cache, backing, config(&s, FormatPolicy::IfBlank, tunables)).unwrap();
    let mut rng = Rng(seed);
    let mut reads = Trace::new();
    let mut now = 0u64;
    let total = s.backing_blocks * SECTORS_PER_BLOCK;
    for i in 0..s.ops {
        let hot = [0, 3, s.backing_blocks / 2, s.backing_blocks - 1];
        let block = if rng.below(2) == 0 {
            hot[rng.below(4) as usize]
        } else {
            rng.below(s.backing_blocks)
        };
        let sector = block * SECTORS_PER_BLOCK + rng.below(8);
        let len = (1 + rng.below(40)).min(total - sector);
        match rng.below(100) {
            0..=44 => {
                let mut data = vec![0u8; len as usize * SECTOR_SIZE];
                for w in data.chunks_exact_mut(8) {
                    w.copy_from_slice(&rng.next().to_le_bytes());
                }
                e.write(sector, &data, rng.below(16) == 0).unwrap();
            }
            45..=59 => {
                let mut buf = vec![0u8; len as usize * SECTOR_SIZE];
                e.read(sector, &mut buf).unwrap();
                reads.eat(&buf);
            }
            60..=64 => e.flush().unwrap(),
            65..=67 => e.discard(sector, len).unwrap(),
            68..=69 => e.write_zeroes(sector, len, true).unwrap(),
            70..=79 => {
                now += rng.below(1500);
                e.tick(now);
                e.set_backing_load(rng.below(101) as u8);
                e.run_due_steps().unwrap();
            }
            80..=87 => {
                let step = [
                    Step::Seal,
                    Step::FlushSegment,
                    Step::Writeback,
                    Step::Record,
                    Step::Sync,
                ][rng.below(5) as usize];
                e.run_step(step).unwrap();
            }
            88..=91 => {
                let (name, v) = match rng.below(3) {
                    0 => ("allow_writeback", rng.below(2)),
                    1 => ("nr_max_batched_writeback", 1 + rng.below(3)),
                    _ => ("enable_writeback_modulator", rng.below(2)),
                };
                e.set_tunable(name, v).unwrap();
            }
            92..=93 => {
                e.drop_caches();
                for _ in 0..rng.below(6) {
                    if let Some(step) = e.next_step() {
                        e.run_step(step).unwrap();
                    }
                }
            }
            94..=96 => {
                let t = e.tunables();
                let (c, b) = e.shutdown().unwrap();
                e = SyncEngine::open(c, b, config(&s, FormatPolicy::Never, t))
                    .unwrap()
                    .0;
            }
            _ => {
                // A power cut after a FLUSH: replay, stale-slot invalidation and all.
                e.flush().unwrap();
                let t = e.tunables();
                let (c, b) = e.into_devices();
                e = SyncEngine::open(c, b, config(&s, FormatPolicy::Never, t))
                    .unwrap()
                    .0;
            }
        }
        e.check_invariants()
            .unwrap_or_else(|err| panic!("seed {seed} op {i}: {err}"));
    }
    e.drain().unwrap();
    let (c, b) = e.shutdown().unwrap();
    let t = trace.borrow();
    Outcome {
        trace_hash: t.hash,
        trace_ops: t.ops,
        bytes_written: t.bytes_written,
        reads_hash: reads.hash,
        cache: c.into_inner().into_bytes(),
        backing: b.into_inner().into_bytes(),
    }
}

const SETUPS: [Setup; 3] = [
    Setup {
        order: 4,
        nr_segments: 5,
        backing_blocks: 24,
        pool: 3,
        ops: 400,
    },
    Setup {
        order: 6,
        nr_segments: 6,
        backing_blocks: 64,
        pool: 2,
        ops: 400,
    },
    Setup {
        order: 10,
        nr_segments: 3,
        backing_blocks: 160,
        pool: 2,
        ops: 300,
    },
];

#[test]
fn same_seed_gives_identical_trace_and_devices() {
    for s in SETUPS {
        for seed in [1u64, 0xDEAD_BEEF, 0x0123_4567_89AB_CDEF] {
            let a = run(s, seed);
            let b = run(s, seed);
            assert!(
                a.trace_ops > 100,
                "order {}: the workload does I/O ({} ops)",
                s.order,
                a.trace_ops
            );
            assert_eq!(
                (a.trace_hash, a.trace_ops, a.bytes_written, a.reads_hash),
                (b.trace_hash, b.trace_ops, b.bytes_written, b.reads_hash),
                "order {} seed {seed:#x}: traces differ",
                s.order
            );
            assert!(
                a.cache == b.cache,
                "order {} seed {seed:#x}: cache device",
                s.order
            );
            assert!(
                a.backing == b.backing,
                "order {} seed {seed:#x}: backing device",
                s.order
            );
        }
    }
}

#[test]
fn different_seed_gives_different_trace() {
    for s in SETUPS {
        let a = run(s, 7);
        let b = run(s, 8);
        assert_ne!(
            a.trace_hash, b.trace_hash,
            "order {}: the trace hash must see the workload",
            s.order
        );
        assert!(a.backing != b.backing, "order {}", s.order);
    }
}

/// The trace hash is sensitive to each field it claims to cover.
#[test]
fn trace_hash_covers_every_field() {
    let base = |f: &dyn Fn(&mut Trace)| {
        let mut t = Trace::new();
        f(&mut t);
        t.hash
    };
    let reference = base(&|t| t.op(WRITE, 0, 8, 512, false, &[1; 512]));
    for other in [
        base(&|t| t.op(READ, 0, 8, 512, false, &[1; 512])),
        base(&|t| t.op(WRITE, 1, 8, 512, false, &[1; 512])),
        base(&|t| t.op(WRITE, 0, 16, 512, false, &[1; 512])),
        base(&|t| t.op(WRITE, 0, 8, 512, true, &[1; 512])),
        base(&|t| t.op(WRITE, 0, 8, 512, false, &[2; 512])),
    ] {
        assert_ne!(reference, other);
    }
}
