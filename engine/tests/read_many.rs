//! Reads in flight together (`SyncEngine::read_many` submits them all before any completes, as
//! the runner serves a client's queue) against reads served one at a time.
//!
//! Two engines are built by the same random request sequence (the engine is deterministic), so
//! they hold the same state: blocks in the open RAM segment, in sealed segments, on the cache
//! device, partly dirty, written back, and never written. One serves a random batch of reads
//! concurrently, the other request by request. Without a fault, data, results and hit counters
//! must be the same. With a device read failing or a cached block failing its CRC, the reads in
//! flight when the cache dies fail too (a concurrent batch has no "before"): then every read
//! either returns exactly the sequential run's data or fails, both caches end dead, and a read
//! that fails sequentially never succeeds concurrently with other data. The devices check that
//! every `read_batch` keeps the trait's promise: no two requests overlap.

// `Config` gains a `quirks` field when the `quirks` feature is on (the crash simulator turns it
// on workspace-wide); `..Config::default()` keeps these literals compiling both ways.
#![allow(clippy::needless_update)]

use engine::device::{Fault, Faulty, Observed, Observer, Op};
use engine::format::SECTORS_PER_BLOCK;
use engine::{Access, Config, FormatPolicy, MemDevice, ReadReq, Step, SyncEngine, Tunables};

/// Checks every `read_batch` a device sees keeps the trait's promise (no two requests overlap)
/// and counts the ones with more than one request.
#[derive(Default)]
struct BatchCheck {
    multi_request_batches: u64,
}

impl Observer for BatchCheck {
    fn observe(&mut self, op: &Op<'_>, _failed: bool) {
        let Op::ReadBatch(reads) = op else {
            return;
        };
        let mut ranges: Vec<(u64, u64)> = reads
            .iter()
            .map(|r| (r.sector, r.sector + (r.buf.len() / 512) as u64))
            .collect();
        ranges.sort_unstable();
        for pair in ranges.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "read_batch requests overlap: {pair:?}"
            );
        }
        if reads.len() > 1 {
            self.multi_request_batches += 1;
        }
    }
}

/// A device that checks its batches and injects the faults a test arms on it (into each read of
/// a batch, one by one).
type TestDevice = Observed<Faulty<MemDevice>, BatchCheck>;

fn test_device(mem: MemDevice) -> TestDevice {
    Observed::with_observer(Faulty::new(mem), BatchCheck::default())
}

/// xorshift64*: replays from its seed, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const ORDER: u8 = 6;
const NR_SEGMENTS: u64 = 6;
const BACKING_BLOCKS: u64 = 64;
/// Blocks most requests go to, so reads find them in every state.
const HOT_BLOCKS: u64 = 12;

struct Twin {
    engine: SyncEngine<TestDevice>,
}

impl Twin {
    /// Arms `fault` on the backing or the cache device, or disarms it (`None`).
    fn set_fault(&self, backing: bool, fault: Option<Fault>) {
        let dev = if backing {
            self.engine.backing_device()
        } else {
            self.engine.cache_device()
        };
        match fault {
            Some(f) => dev.inner().arm(f),
            None => dev.inner().disarm(),
        }
    }

    fn multi_request_batches(&self, backing: bool) -> u64 {
        let dev = if backing {
            self.engine.backing_device()
        } else {
            self.engine.cache_device()
        };
        dev.observer().multi_request_batches
    }
}

fn open(type1: bool, pool: usize, allow_writeback: bool) -> Twin {
    let mut backing = MemDevice::new(BACKING_BLOCKS * SECTORS_PER_BLOCK);
    // Recognisable backing content, so a miss and a stale cached copy look different.
    for (i, b) in backing.bytes_mut().iter_mut().enumerate() {
        *b = (i / 512) as u8 ^ 0xa5;
    }
    let backing = test_device(backing);
    let cache = test_device(MemDevice::new(2048 + NR_SEGMENTS * (1 << ORDER)));
    let plog = type1.then(|| {
        let blocks = (1usize << (ORDER - 3)) - 1;
        let sectors = engine::format::plog::PLOG_FIRST_REGION_SECTOR
            + 3 * engine::format::plog::region_sectors_for(blocks) as u64;
        test_device(MemDevice::new(sectors))
    });
    let mut tunables = Tunables::defaults(ORDER);
    tunables.allow_writeback = allow_writeback;
    tunables.nr_max_batched_writeback = 2;
    let cfg = Config {
        segment_size_order: ORDER,
        nr_rambuf_pool: pool,
        tunables: Some(tunables),
        format: FormatPolicy::IfBlank,
        generation: 3,
        ..Config::default()
    };
    let (engine, _) = SyncEngine::open_with_plog(cache, backing, plog, cfg).expect("open");
    assert_eq!(engine.cache_type(), type1 as u8);
    Twin { engine }
}

fn pick_sector(rng: &mut Rng) -> u64 {
    let block = if rng.below(4) > 0 {
        rng.below(HOT_BLOCKS)
    } else {
        rng.below(BACKING_BLOCKS)
    };
    block * SECTORS_PER_BLOCK + rng.below(SECTORS_PER_BLOCK)
}

/// One random request or background step, applied to both engines alike.
fn mutate(rng: &mut Rng, twins: &mut [&mut Twin; 3], write_no: &mut u64) {
    let size = BACKING_BLOCKS * SECTORS_PER_BLOCK;
    match rng.below(10) {
        0..=5 => {
            let sector = pick_sector(rng);
            let sectors = (1 + rng.below(12)).min(size - sector);
            let fua = rng.below(10) == 0;
            *write_no += 1;
            let data: Vec<u8> = (0..sectors as usize * 512)
                .map(|i| (*write_no as u8).wrapping_mul(17) ^ (i / 512) as u8 ^ (i as u8))
                .collect();
            for t in twins.iter_mut() {
                let _ = t.engine.write(sector, &data, fua);
            }
        }
        6 => {
            let sector = pick_sector(rng);
            let sectors = (1 + rng.below(10)).min(size - sector);
            for t in twins.iter_mut() {
                let _ = t.engine.discard(sector, sectors);
            }
        }
        7 => {
            for t in twins.iter_mut() {
                let _ = t.engine.flush();
            }
        }
        _ => {
            let step = [
                Step::Seal,
                Step::FlushSegment,
                Step::FlushSegment,
                Step::Writeback,
                Step::Record,
                Step::Sync,
            ][rng.below(6) as usize];
            for t in twins.iter_mut() {
                let _ = t.engine.run_step(step);
            }
        }
    }
}

/// A batch of reads: mostly valid, some repeated exactly or overlapping, a few out of range or
/// not whole sectors.
fn read_batch_shape(rng: &mut Rng) -> Vec<(u64, usize)> {
    let size = BACKING_BLOCKS * SECTORS_PER_BLOCK;
    let n = 1 + rng.below(40) as usize;
    let mut reads: Vec<(u64, usize)> = Vec::with_capacity(n);
    for _ in 0..n {
        let r = match rng.below(20) {
            0 => (size - 2, 4 * 512),     // past the end
            1 => (pick_sector(rng), 700), // not whole sectors
            2..=4 if !reads.is_empty() => reads[rng.below(reads.len() as u64) as usize],
            _ => {
                let sector = pick_sector(rng);
                let sectors = (1 + rng.below(24)).min(size - sector);
                (sector, sectors as usize * 512)
            }
        };
        reads.push(r);
    }
    reads
}

/// What a batch of reads left: data, results (as text), hit counters, dead or not.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    bufs: Vec<Vec<u8>>,
    results: Vec<String>,
    stat: [u64; 16],
    dead: Option<String>,
}

fn serve(t: &mut Twin, shape: &[(u64, usize)], batched: bool) -> Outcome {
    let mut bufs: Vec<Vec<u8>> = shape.iter().map(|&(_, len)| vec![0x11; len]).collect();
    let results: Vec<String> = if batched {
        let mut reqs: Vec<ReadReq<'_>> = shape
            .iter()
            .zip(bufs.iter_mut())
            .map(|(&(sector, _), buf)| ReadReq { sector, buf })
            .collect();
        t.engine
            .read_many(&mut reqs)
            .iter()
            .map(|r| format!("{r:?}"))
            .collect()
    } else {
        shape
            .iter()
            .zip(bufs.iter_mut())
            .map(|(&(sector, _), buf)| format!("{:?}", t.engine.read(sector, buf)))
            .collect()
    };
    // A failed read's buffer content is unspecified; only successful ones are compared.
    for (buf, r) in bufs.iter_mut().zip(&results) {
        if r != "Ok(())" {
            buf.clear();
        }
    }
    let status = t.engine.status();
    Outcome {
        bufs,
        results,
        stat: status.stat,
        dead: status.dead,
    }
}

fn run_case(seed: u64, type1: bool, totals: &mut [u64; 16]) -> (u64, u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let pool = 1 + rng.below(4) as usize;
    let allow_writeback = rng.below(2) == 0;
    let mut a = open(type1, pool, allow_writeback);
    let mut b = open(type1, pool, allow_writeback);
    // A third twin that never sees a fault: what a read returns when it succeeds.
    let mut c = open(type1, pool, allow_writeback);
    let mut write_no = 0;
    for round in 0..12 {
        for _ in 0..rng.below(30) {
            mutate(&mut rng, &mut [&mut a, &mut b, &mut c], &mut write_no);
        }
        // Now and then a fault, on one device, for this batch.
        // Every read covering a sector fails, every read fails, every read returns its data
        // with the first byte flipped.
        let fault = match rng.below(16) {
            0 => Some((
                true,
                Fault::fail(Access::Read).at_sector(pick_sector(&mut rng)),
            )),
            1 => Some((false, Fault::fail(Access::Read))),
            2 => Some((false, Fault::flip(Access::Read))),
            3 => Some((true, Fault::flip(Access::Read))),
            _ => None,
        };
        if let Some((backing, f)) = fault {
            for t in [&a, &b] {
                t.set_fault(backing, Some(f));
            }
        }
        let shape = read_batch_shape(&mut rng);
        let stat_before = a.engine.status().stat;
        let got = serve(&mut a, &shape, true);
        let want = serve(&mut b, &shape, false);
        let what = format!(
            "seed {seed}, type {}, round {round}, reads {shape:?}, fault {fault:?}",
            type1 as u8
        );
        if want.dead.is_none() {
            assert_eq!(got, want, "{what}");
        } else {
            assert!(got.dead.is_some(), "the concurrent batch dies too: {what}");
            let truth = serve(&mut c, &shape, false);
            for (i, g) in got.results.iter().enumerate() {
                if g == "Ok(())" {
                    assert_eq!(truth.results[i], "Ok(())", "read {i}: {what}");
                    assert_eq!(got.bufs[i], truth.bufs[i], "read {i} never lies: {what}");
                }
            }
            // Both are dead: nothing more to compare in this case.
            break;
        }
        for (t, (now, before)) in totals.iter_mut().zip(got.stat.iter().zip(stat_before)) {
            *t += now - before;
        }
        for t in [&a, &b] {
            t.set_fault(true, None);
            t.set_fault(false, None);
        }
        if got.dead.is_some() {
            break;
        }
    }
    (
        a.multi_request_batches(true),
        a.multi_request_batches(false),
    )
}

fn equals_sequential_reads(type1: bool) {
    let mut totals = [0u64; 16];
    let (mut backing_batches, mut cache_batches) = (0, 0);
    for seed in 1..=300u64 {
        let (b, c) = run_case(seed + 1000 * type1 as u64, type1, &mut totals);
        backing_batches += b;
        cache_batches += c;
    }
    // Every source of a read piece came up (counter index: hit << 2 | on_buffer << 1 | full).
    let read_hits = |hit: usize, on_buffer: usize| {
        totals[hit << 2 | on_buffer << 1] + totals[hit << 2 | on_buffer << 1 | 1]
    };
    assert!(read_hits(0, 0) > 0, "no misses");
    assert!(read_hits(1, 1) > 0, "no hits in RAM buffers");
    assert!(read_hits(1, 0) > 0, "no hits on the cache device");
    assert!(
        backing_batches > 0 && cache_batches > 0,
        "the reads were never batched: backing {backing_batches}, cache {cache_batches}"
    );
}

#[test]
fn read_many_equals_sequential_reads_type0() {
    equals_sequential_reads(false);
}

#[test]
fn read_many_equals_sequential_reads_type1() {
    equals_sequential_reads(true);
}

#[test]
fn read_many_of_nothing_is_nothing() {
    let mut t = open(false, 2, false);
    assert!(t.engine.read_many(&mut []).is_empty());
}
