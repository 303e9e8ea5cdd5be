//! `ops`: an arbitrary workload (client writes, FUA writes, discards and FLUSHes of small
//! extents, background steps) on simulated devices with volatile caches, type 0 or type 1, on a
//! small geometry; then power cuts at fuzzer-chosen crash points with fuzzer-chosen persisted
//! subsets and tears, and optionally a second cut inside the recovery of one of them.
//!
//! It is crashsim's explorer with the fuzzer making its choices: the workload is a
//! [`Workload`] run once by [`record`] (which reads every write back and checks the engine's
//! invariants after every operation), the crash images come from
//! [`crashsim::CrashState::image`], and every image is judged by [`check_images`]: recovery,
//! invariants, both oracles (block device and prefix of the acknowledged writes), two reads.
//! A finding panics with the `cargo xtask crash-test --replay` case that reproduces it.
//!
//! Input (bytes; an exhausted input reads as zeros):
//! - `flags: u8`: bit 0 type 1, bit 1 order 5, bit 2 4 KiB atomic units, bit 3 garbage in torn
//!   units, bit 4 one EIO on a cache write, bit 5 one EIO on a cache read;
//! - `geometry: [u8; 4]`: slots 2..=4, backing blocks 2..=9, pool 1..=3 | batch 1..=2 (high
//!   nibble), plog regions 2..=4;
//! - `seed: u8`, `crashes: u8` (1..=4 cuts; bit 7: also cut inside the first recovery that
//!   writes), `count: u8` (operations, at most [`MAX_OPS`]), then the operations (see
//!   [`decode_op`]), then per cut: `point: u16` (an index into the crash points, fine
//!   selection), and per pending write `persist: u8` (bit 0 persists; bit 1 torn, with a unit
//!   mask of `ceil(units / 8)` bytes following).

use crashsim::explore::{
    check_images, open_on, record, recovery_config, Completion, FaultSet, Finding, Level,
    OracleSel, PathStep, Violation, WlConfig, WlOp, Workload,
};
use crashsim::{Choice, CrashPoint, CrashState, Persist, PointSelection, Units};
use engine::Step;
use models::{BlockOracle, History, PrefixOracle, PrefixUnit};

use crate::bytes::Reader;

/// Operations per workload.
pub const MAX_OPS: usize = 40;
/// Power cuts per input.
pub const MAX_CRASHES: usize = 4;

/// One operation: `op: u8` selects (mod 10) full-block write, partial write, multi-block
/// write, FUA write, discard, FLUSH or a step; its operands follow.
pub fn decode_op(r: &mut Reader<'_>, c: &WlConfig) -> WlOp {
    let blocks = c.backing_blocks;
    let size = c.backing_sectors();
    let n = (1u64 << (c.order - 3)) - 1;
    let op = r.u8();
    match op % 10 {
        0 | 1 => WlOp::Write {
            sector: (r.u8() as u64 % blocks) * 8,
            sectors: 8,
            fua: false,
        },
        2 => {
            let block = r.u8() as u64 % blocks;
            let first = r.u8() as u64 % 8;
            let count = 1 + r.u8() as u64 % (8 - first);
            WlOp::Write {
                sector: block * 8 + first,
                sectors: count as u32,
                fua: op >= 128,
            }
        }
        3 => {
            let sector = r.u8() as u64 % size;
            let max = (size - sector).min(8 * (n + 2));
            WlOp::Write {
                sector,
                sectors: 1 + (r.u8() as u64 % max) as u32,
                fua: op >= 128,
            }
        }
        4 => WlOp::Write {
            sector: (r.u8() as u64 % blocks) * 8,
            sectors: 8,
            fua: true,
        },
        5 => {
            let sector = r.u8() as u64 % size;
            let max = (size - sector).min(16);
            WlOp::Discard {
                sector,
                sectors: 1 + (r.u8() as u64 % max) as u32,
            }
        }
        6 => WlOp::Flush,
        _ => WlOp::Step(
            [
                Step::Seal,
                Step::FlushSegment,
                Step::Writeback,
                Step::Record,
                Step::Sync,
            ][r.u8() as usize % 5],
        ),
    }
}

/// The workload an input describes.
pub fn decode_workload(r: &mut Reader<'_>) -> (Workload, usize, bool) {
    let flags = r.u8();
    let g = [r.u8(), r.u8(), r.u8(), r.u8()];
    let cache_type = flags & 1;
    let config = WlConfig {
        order: if flags & 2 != 0 { 5 } else { 4 },
        nr_segments: 2 + g[0] as u64 % 3,
        backing_blocks: 2 + g[1] as u64 % 8,
        pool: 1 + (g[2] & 15) as usize % 3,
        batch: 1 + (g[2] >> 4) as u32 % 2,
        unit_sectors: if flags & 4 != 0 { 8 } else { 1 },
        seed: r.u8() as u64,
        faults: FaultSet {
            garbage_torn: flags & 8 != 0,
            eio_write: flags & 16 != 0,
            eio_read: flags & 32 != 0,
            ..FaultSet::default()
        },
        quirks: Vec::new(),
        cache_type,
        plog_regions: if cache_type == 1 {
            2 + g[3] as u64 % 3
        } else {
            0
        },
        // Both writeback schedules and both `allow_writeback` settings, as swarm runs draw them.
        ahead: g[0] & 0x40 == 0,
        allow_writeback: g[0] & 0x80 != 0,
        intervals: 0,
        pool_after: 0,
        completion: if flags & 64 != 0 {
            Completion::Seeded(g[3] as u64)
        } else {
            Completion::InOrder
        },
    };
    let crashes = r.u8();
    let count = r.u8() as usize % (MAX_OPS + 1);
    let ops = (0..count).map(|_| decode_op(r, &config)).collect();
    (
        Workload { config, ops },
        1 + (crashes as usize & 127) % MAX_CRASHES,
        crashes & 128 != 0,
    )
}

/// What persisted of each pending write at a cut, in log order.
pub fn decode_choice(r: &mut Reader<'_>, state: &CrashState) -> Choice {
    let mut persisted = Vec::new();
    for (i, w) in state.pending.iter().enumerate() {
        let b = r.u8();
        if b & 1 == 0 {
            continue;
        }
        let units = if b & 2 != 0 {
            let n = w.unit_count();
            let mask = r.take(n.div_ceil(8));
            Units::Mask(
                (0..n)
                    .map(|u| mask.get(u / 8).is_some_and(|m| m >> (u % 8) & 1 == 1))
                    .collect(),
            )
        } else {
            Units::All
        };
        persisted.push(Persist { pending: i, units });
    }
    Choice {
        persisted,
        bit_flips: Vec::new(),
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

pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let (workload, crashes, recovery_cut) = decode_workload(&mut r);
    if workload.validate().is_err() {
        return;
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
    let mut recovery_cut = recovery_cut;
    for _ in 0..crashes {
        let point = points[r.u16() as usize % points.len()];
        let state = world
            .crash_state(point)
            .unwrap_or_else(|e| panic!("crash state at {point}: {e}"));
        let choice = decode_choice(&mut r, &state);
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
        if recovery_cut && wrote {
            recovery_cut = false;
            cut_recovery(&mut r, &workload, &world, &images, &hist, path, config);
        }
    }
}

/// Records a recovery of `images` and cuts power inside it, at a point and with a choice the
/// input picks; recovery of that must still satisfy the history cut of the first crash.
fn cut_recovery(
    r: &mut Reader<'_>,
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
    let point: CrashPoint = points[r.u16() as usize % points.len()];
    let state = w2
        .crash_state(point)
        .unwrap_or_else(|e| panic!("crash state in recovery at {point}: {e}"));
    let choice = decode_choice(r, &state);
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
