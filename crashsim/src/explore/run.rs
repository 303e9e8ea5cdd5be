//! Running a workload once on simulated devices, recording every device operation and every
//! client operation; the crash states are generated from that record afterwards.

use engine::format::SECTOR_SIZE;
use engine::{Config, DeviceRole, FormatPolicy, Request, Tunables};
use models::{History, ModelDisk, OpId};

use super::workload::{WlConfig, WlOp};
use crate::driver::{Order, SimEngine};
use crate::rng::{mix64, SplitMix64};
use crate::{AtomicUnit, ClientOp, DeviceConfig, Faults, Image, SharedWorld, World};

/// The engine configuration a workload runs with.
pub fn engine_config(c: &WlConfig) -> Result<Config, String> {
    let mut tunables = Tunables::defaults(c.order);
    tunables.nr_max_batched_writeback = c.batch;
    tunables.allow_writeback = c.allow_writeback;
    tunables.sync_interval = c.intervals;
    tunables.update_record_interval = c.intervals;
    tunables.sequential_cutoff = c.cutoff;
    #[allow(unused_mut)]
    let mut quirks = engine::quirks::Quirks::none();
    for name in &c.quirks {
        let q = engine::quirks::Quirk::from_name(name)
            .ok_or_else(|| format!("unknown quirk {name:?}"))?;
        quirks = quirks.with(q);
    }
    Ok(Config {
        segment_size_order: c.order,
        nr_rambuf_pool: c.pool,
        tunables: Some(tunables),
        format: FormatPolicy::IfBlank,
        generation: c.seed,
        write_back_ahead: c.ahead,
        quirks,
    })
}

/// The data a workload writes: unique per (epoch, op, sector), so an oracle can tell whose
/// bytes it is looking at.
pub fn sector_data(epoch: u32, op_index: usize, sector: u64, out: &mut [u8]) {
    let mut rng = SplitMix64::new(mix64(
        ((epoch as u64) << 48) ^ ((op_index as u64) << 32) ^ sector,
    ));
    rng.fill(out);
    out[..8].copy_from_slice(&sector.to_le_bytes());
    out[8..12].copy_from_slice(&(op_index as u32).to_le_bytes());
}

/// The backing device's content before the first write: distinct, non-zero per sector.
pub fn initial_backing(c: &WlConfig) -> Vec<u8> {
    let mut img = vec![0u8; c.backing_sectors() as usize * SECTOR_SIZE];
    for (s, chunk) in img.chunks_mut(SECTOR_SIZE).enumerate() {
        sector_data(u32::MAX, usize::MAX >> 1, s as u64, chunk);
    }
    img
}

pub fn unit_of(c: &WlConfig) -> AtomicUnit {
    if c.unit_sectors == 8 {
        AtomicUnit::Block
    } else {
        AtomicUnit::Sector
    }
}

/// The cache device's fault switches. Trigger points come from the seed and sit just past the
/// format (which writes the records twice, zeroes sector 0 and every header, writes the
/// superblock and the records again), so they hit the workload's own I/O.
pub fn cache_faults(c: &WlConfig) -> Faults {
    let f = &c.faults;
    let r = mix64(c.seed ^ 0xFA17);
    let format_writes = c.nr_segments + 6;
    let first_data_sector = engine::format::SUPERBLOCK_SECTORS + engine::format::SECTORS_PER_BLOCK;
    let mut faults = Faults {
        lie_about_flush: f.lying_flush,
        lie_about_fua: f.lying_fua,
        torn_fill: f.torn_fill(),
        torn_in_runs: f.torn_runs,
        ..Faults::default()
    };
    if f.eio_write {
        faults.write_eio_at.insert(format_writes + r % 6);
    }
    if f.eio_read {
        // Open reads the superblock, both records and every slot's first sector.
        faults.read_eio_at.insert(c.nr_segments + 3 + r % 4);
    }
    if f.misdirect {
        let to = engine::format::SUPERBLOCK_SECTORS + (((r >> 8) % c.nr_segments) << c.order);
        faults.misdirect = Some(crate::Misdirect {
            nth_write: format_writes + r % 6,
            to_sector: to,
        });
    }
    if f.bit_rot {
        faults.bit_rot.push(crate::BitRot {
            before_op: 2 * c.nr_segments + 12 + r % 24,
            byte: first_data_sector * SECTOR_SIZE as u64 + (r >> 16) % 4096,
            bit: (r >> 40) as u8 % 8,
        });
    }
    faults
}

/// The configuration recovery opens with: as the run's, with `pool_after` RAM buffers if set.
pub fn recovery_config(c: &WlConfig) -> Result<Config, String> {
    let mut cfg = engine_config(c)?;
    if c.pool_after != 0 {
        cfg.nr_rambuf_pool = c.pool_after;
    }
    Ok(cfg)
}

/// Opens (formats or recovers) an engine on a world's devices, its operations completing in
/// the workload's order.
pub fn open_on(
    world: &SharedWorld,
    config: Config,
    order: Order,
) -> Result<engine::Result<(SimEngine, engine::RecoveryReport)>, String> {
    SimEngine::open(world, config, order)
}

/// A world holding a cache and a backing device (and a plog) with the given images.
pub fn new_world(
    c: &WlConfig,
    cache: Image,
    backing: Image,
    plog: Option<Image>,
) -> Result<SharedWorld, String> {
    let mut w = World::new();
    let unit = unit_of(c);
    w.add_device(
        DeviceRole::Cache,
        DeviceConfig::from_image(cache)
            .with_atomic_unit(unit)
            .with_faults(cache_faults(c)),
    )
    .map_err(|e| e.to_string())?;
    w.add_device(
        DeviceRole::Backing,
        DeviceConfig::from_image(backing).with_atomic_unit(unit),
    )
    .map_err(|e| e.to_string())?;
    if let Some(plog) = plog {
        let garbage = Faults {
            torn_fill: c.faults.torn_fill(),
            torn_in_runs: c.faults.torn_runs,
            ..Faults::default()
        };
        w.add_device(
            DeviceRole::Plog,
            DeviceConfig::from_image(plog)
                .with_atomic_unit(unit)
                .with_faults(garbage),
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(w.shared())
}

/// Something went wrong while the workload ran (not after a crash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunFailure {
    pub op_index: Option<usize>,
    pub detail: String,
    /// The engine panicked (a broken invariant) rather than failing an operation.
    pub panicked: bool,
}

/// Why one operation of a drive did not go through.
enum OpError {
    /// The engine reported a device error (or is dead): allowed under error faults.
    Device(String),
    /// Wrong data, a broken invariant or a harness failure: never allowed.
    Wrong(String),
}

/// Drives `ops` on an open engine, recording client operations in the world's log and in
/// `history`, and checking every write by reading it back against `model` (SPEC §4.1).
///
/// `engine` is an `Option` because a reformat replaces the engine: it is `Some` between
/// operations; `config` is what a reformat opens the new engine with. With `errors_allowed`
/// (device error faults), the first request the engine fails ends the drive: the failed write
/// is recorded as failed (it may or may not persist) and the engine, now dead, is left as is.
#[allow(clippy::too_many_arguments)]
pub fn drive(
    engine: &mut Option<SimEngine>,
    config: Config,
    world: &SharedWorld,
    history: &mut History,
    model: &mut ModelDisk,
    ops: &[WlOp],
    epoch: u32,
    errors_allowed: bool,
) -> Result<(), RunFailure> {
    for (i, op) in ops.iter().enumerate() {
        match drive_one(engine, config, world, history, model, i, *op, epoch) {
            Ok(()) => {}
            Err(OpError::Device(_)) if errors_allowed => return Ok(()),
            Err(OpError::Device(detail) | OpError::Wrong(detail)) => {
                return Err(RunFailure {
                    op_index: Some(i),
                    detail,
                    panicked: false,
                })
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn drive_one(
    slot: &mut Option<SimEngine>,
    config: Config,
    world: &SharedWorld,
    history: &mut History,
    model: &mut ModelDisk,
    i: usize,
    op: WlOp,
    epoch: u32,
) -> Result<(), OpError> {
    let wrong = |e: String| OpError::Wrong(e);
    if op == WlOp::Reformat {
        return reformat(slot, config, world, history)
            .map_err(|e| OpError::Device(format!("reformat failed: {e}")));
    }
    let engine = slot
        .as_mut()
        .ok_or_else(|| wrong("no engine after a failed reformat".into()))?;
    match op {
        WlOp::Write {
            sector,
            sectors,
            fua,
        } => {
            let mut data = vec![0u8; sectors as usize * SECTOR_SIZE];
            for (k, chunk) in data.chunks_mut(SECTOR_SIZE).enumerate() {
                sector_data(epoch, i, sector + k as u64, chunk);
            }
            let id = history
                .begin_write(sector, &data, fua)
                .map_err(|e| wrong(e.to_string()))?;
            let what = ClientOp::Write {
                sector,
                sectors: sectors as u64,
                fua,
            };
            if let Err(e) = client(world, id, what, || engine.write(sector, &data, fua)) {
                history.fail(id).map_err(|e| wrong(e.to_string()))?;
                return Err(OpError::Device(format!("write {op} failed: {e}")));
            }
            history.complete(id).map_err(|e| wrong(e.to_string()))?;
            model
                .write(sector, &data)
                .map_err(|e| wrong(e.to_string()))?;
            read_back(engine, model, sector, sectors as u64)?;
        }
        WlOp::Discard { sector, sectors } => {
            let sectors = sectors as u64;
            let req = Request::Discard { sector, sectors };
            zero_extent(engine, world, history, model, req, false)?;
        }
        WlOp::Zeroes {
            sector,
            sectors,
            fua,
        } => {
            let sectors = sectors as u64;
            let req = Request::WriteZeroes {
                sector,
                sectors,
                fua,
            };
            zero_extent(engine, world, history, model, req, fua)?;
        }
        WlOp::ReadMany { sector, sectors } => read_many(engine, model, sector, sectors as u64)?,
        WlOp::Flush => {
            let id = history.begin_flush().map_err(|e| wrong(e.to_string()))?;
            if let Err(e) = client(world, id, ClientOp::Flush, || engine.flush()) {
                history.fail(id).map_err(|e| wrong(e.to_string()))?;
                return Err(OpError::Device(format!("flush failed: {e}")));
            }
            history.complete(id).map_err(|e| wrong(e.to_string()))?;
        }
        WlOp::Step(step) => {
            world.borrow_mut().mark(format!("step {step:?}"));
            engine
                .start_step(step)
                .map_err(|e| OpError::Device(format!("step {step:?} failed: {e}")))?;
            engine.run_until_idle();
            if let Some(cause) = engine.status().dead {
                return Err(OpError::Device(format!("step {step:?} failed: {cause}")));
            }
        }
        WlOp::Background(step) => {
            world.borrow_mut().mark(format!("background {step:?}"));
            engine
                .start_step(step)
                .map_err(|e| OpError::Device(format!("step {step:?} failed: {e}")))?;
        }
        WlOp::DropCaches => {
            world.borrow_mut().mark("message drop_caches");
            engine
                .message("drop_caches")
                .map_err(|e| wrong(format!("drop_caches refused: {e}")))?;
            engine.start_due();
        }
        WlOp::Tick => {
            world.borrow_mut().mark("tick");
            engine.advance_clock(1000);
        }
        WlOp::Tunable { index, value } => set_tunable(engine, world, index, value)?,
        WlOp::Reformat => unreachable!("handled before the engine is borrowed"),
    }
    engine
        .check_invariants()
        .map_err(|e| wrong(format!("invariant broken after {op}: {e}")))
}

/// A discard or write-zeroes (`req`): the extent reads as zeros afterwards, in the model and
/// read back from the engine.
fn zero_extent(
    engine: &mut SimEngine,
    world: &SharedWorld,
    history: &mut History,
    model: &mut ModelDisk,
    req: Request,
    fua: bool,
) -> Result<(), OpError> {
    let wrong = |e: String| OpError::Wrong(e);
    let (Request::Discard { sector, sectors }
    | Request::WriteZeroes {
        sector, sectors, ..
    }) = req
    else {
        unreachable!("only discards and write-zeroes zero an extent")
    };
    let id = history
        .begin_write_zeroes(sector, sectors, fua)
        .map_err(|e| wrong(e.to_string()))?;
    let what = ClientOp::Write {
        sector,
        sectors,
        fua,
    };
    let label = format!("{req:?}");
    if let Err(e) = client(world, id, what, || engine.request(req).map(drop)) {
        history.fail(id).map_err(|e| wrong(e.to_string()))?;
        return Err(OpError::Device(format!("{label} failed: {e}")));
    }
    history.complete(id).map_err(|e| wrong(e.to_string()))?;
    model
        .write_zeroes(sector, sectors)
        .map_err(|e| wrong(e.to_string()))?;
    read_back(engine, model, sector, sectors)
}

/// A tunable message: a value in range is taken, one out of range is refused and changes
/// nothing.
fn set_tunable(
    engine: &mut SimEngine,
    world: &SharedWorld,
    index: u8,
    value: u32,
) -> Result<(), OpError> {
    let (name, min, max) = engine::tunables::TUNABLE_RANGES[index as usize];
    world.borrow_mut().mark(format!("message {name} {value}"));
    let before = engine.tunables();
    let in_range = (min..=max).contains(&(value as u64));
    match (engine.message(&format!("{name} {value}")), in_range) {
        (Ok(()), true) => Ok(()),
        (Err(_), false) if engine.tunables() == before => Ok(()),
        (Err(_), false) => Err(OpError::Wrong(format!(
            "refused message {name} {value} changed the tunables"
        ))),
        (Ok(()), false) => Err(OpError::Wrong(format!(
            "message {name} {value} accepted outside {min}..={max}"
        ))),
        (Err(e), true) => Err(OpError::Wrong(format!(
            "message {name} {value} refused: {e}"
        ))),
    }
}

/// `wbcache format --force` over a cache in use, done the careful way: drain every dirty block
/// to the backing device, shut down cleanly, format. The exported device keeps its content, so
/// for the client it is a FLUSH (everything before it is durable once it completes).
fn reformat(
    slot: &mut Option<SimEngine>,
    config: Config,
    world: &SharedWorld,
    history: &mut History,
) -> Result<(), String> {
    let id = history.begin_flush().map_err(|e| e.to_string())?;
    world.borrow_mut().client_begin(id, ClientOp::Flush);
    let mut e = slot.take().ok_or("no engine to reformat")?;
    e.drain().map_err(|x| x.to_string())?;
    let sched = e.shutdown().map_err(|x| x.to_string())?;
    world.borrow_mut().mark("reformat");
    let cfg = Config {
        format: FormatPolicy::Always,
        ..config
    };
    let (e, _) = SimEngine::open_scheduled(world, cfg, sched)?.map_err(|x| x.to_string())?;
    *slot = Some(e);
    world.borrow_mut().client_end(id, true);
    history.complete(id).map_err(|e| e.to_string())
}

fn client<T>(
    world: &SharedWorld,
    id: OpId,
    what: ClientOp,
    f: impl FnOnce() -> engine::Result<T>,
) -> engine::Result<T> {
    world.borrow_mut().client_begin(id, what);
    let r = f();
    world.borrow_mut().client_end(id, r.is_ok());
    r
}

/// Reads a range back and compares it with the model: a failed read is a device error (allowed
/// under error faults), different data is a lie (never allowed).
/// Reads `sector..+sectors` in pieces of varied lengths (within a sector, across block
/// boundaries), all submitted together, and checks each against the model.
fn read_many(
    engine: &mut SimEngine,
    model: &ModelDisk,
    sector: u64,
    sectors: u64,
) -> Result<(), OpError> {
    const PIECES: [u64; 5] = [1, 7, 3, 9, 12];
    let mut pieces = Vec::new();
    let (mut s, mut k) = (sector, 0);
    // Bounded by the extent: every piece is at least one sector.
    while s < sector + sectors {
        let n = PIECES[k % PIECES.len()].min(sector + sectors - s);
        pieces.push((s, n));
        (s, k) = (s + n, k + 1);
    }
    let reqs = pieces
        .iter()
        .map(|&(s, n)| Request::Read {
            sector: s,
            len: n as usize * SECTOR_SIZE,
        })
        .collect();
    for ((s, n), r) in pieces.iter().zip(engine.requests(reqs)) {
        let got = r
            .map_err(|e| OpError::Device(format!("read of {s}+{n} (with others) failed: {e}")))?
            .unwrap_or_default();
        let want = model
            .read_vec(*s, *n)
            .map_err(|e| OpError::Wrong(e.to_string()))?;
        if got != want {
            return Err(OpError::Wrong(format!(
                "a read of {s}+{n}, in flight with {} others, differs from the last write",
                pieces.len() - 1
            )));
        }
    }
    Ok(())
}

fn read_back(
    engine: &mut SimEngine,
    model: &ModelDisk,
    sector: u64,
    sectors: u64,
) -> Result<(), OpError> {
    let mut got = vec![0u8; sectors as usize * SECTOR_SIZE];
    engine
        .read(sector, &mut got)
        .map_err(|e| OpError::Device(format!("read-back failed: {e}")))?;
    let want = model
        .read_vec(sector, sectors)
        .map_err(|e| OpError::Wrong(e.to_string()))?;
    if got != want {
        let first = got
            .chunks(SECTOR_SIZE)
            .zip(want.chunks(SECTOR_SIZE))
            .position(|(a, b)| a != b);
        return Err(OpError::Wrong(format!(
            "read-back of {sector}+{sectors} differs from the last write at sector {}",
            sector + first.unwrap_or(0) as u64
        )));
    }
    Ok(())
}

/// One recorded run: the world with its full log, and the client history.
pub struct Recording {
    pub world: SharedWorld,
    pub history: History,
    pub failure: Option<RunFailure>,
    /// The completion-order choices the run made: (choice, options) at every moment two or
    /// more operations were in flight, opening included.
    pub schedule: Vec<(u32, u32)>,
}

/// Formats a blank cache and runs the workload, recording everything.
pub fn record(config: &WlConfig, ops: &[WlOp]) -> Result<Recording, String> {
    let backing = initial_backing(config);
    let world = new_world(
        config,
        Image::zeroed(config.cache_sectors() as usize * SECTOR_SIZE),
        Image::from_bytes(&backing),
        config
            .plog_sectors()
            .map(|s| Image::zeroed(s as usize * SECTOR_SIZE)),
    )?;
    let mut history = History::new(backing.clone()).map_err(|e| e.to_string())?;
    let mut model = ModelDisk::from_bytes(backing).map_err(|e| e.to_string())?;
    world.borrow_mut().mark("open");
    let mut schedule = Vec::new();
    let failure = match open_on(&world, engine_config(config)?, config.completion.order())? {
        // An injected device error may hit the format itself: an error, not a lie.
        Err(engine::Error::Io { .. }) if config.faults.errors_expected() => None,
        Err(e) => Some(RunFailure {
            op_index: None,
            detail: format!("open of a blank cache failed: {e}"),
            panicked: false,
        }),
        Ok((engine, _)) => {
            let mut engine = Some(engine);
            let cfg = engine_config(config)?;
            let errors_expected = config.faults.errors_expected();
            let run = super::panics::guarded(|| {
                drive(
                    &mut engine,
                    cfg,
                    &world,
                    &mut history,
                    &mut model,
                    ops,
                    0,
                    errors_expected,
                )
                .err()
            });
            // A panic mid-run is the run's failure; the crash states recorded up to it are
            // still explored.
            let r = run.unwrap_or_else(|why| {
                Some(RunFailure {
                    op_index: None,
                    detail: format!("the engine panicked: {why}"),
                    panicked: true,
                })
            });
            if let Some(e) = &engine {
                schedule = e.schedule_made().to_vec();
            }
            drop(engine);
            r
        }
    };
    Ok(Recording {
        world,
        history,
        failure,
        schedule,
    })
}
