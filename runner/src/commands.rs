//! The offline subcommands (`format`, `writeback`, `check`, `dump`) and the control clients
//! (`status`, `message`). Each is a few calls into the engine or the control socket; `check`
//! and `dump` print what `engine::inspect` reports and decide nothing themselves.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use engine::format::{self, Geometry, Superblock, SECTOR_SIZE};
use engine::{BlockDevice, DeviceRole};
use indicatif::{ProgressBar, ProgressStyle};

use crate::control;
use crate::device::{Device, DeviceSpec};
use crate::filedev::IoMode;
use crate::server::{describe_recovery, open_engine};

/// `wbcache check` exit status: the devices are sound.
pub const CHECK_SOUND: u8 = 0;
/// `wbcache check` exit status: not sound (recovery would refuse the devices, or fail).
pub const CHECK_UNSOUND: u8 = 1;
/// `wbcache check` / `dump` exit status: a usage or I/O error (no verdict).
pub const CHECK_ERROR: u8 = 2;

/// How much of a device `format` inspects for existing content.
pub const INSPECT_BYTES: usize = 1 << 20;

/// A fresh format generation. The engine has no randomness (SPEC §7); the driver picks it:
/// 8 bytes of /dev/urandom, or time and pid if that is unavailable.
pub fn new_generation() -> u64 {
    let mut b = [0u8; 8];
    let from_urandom = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    let g = if from_urandom {
        u64::from_le_bytes(b)
    } else {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ ((std::process::id() as u64) << 32)
    };
    // 0 is what an upstream image reads as; keep ours distinguishable.
    g.max(1)
}

/// What a device already holds, if anything: `None` when the first MiB is all zero.
pub fn existing_content(dev: &mut impl BlockDevice) -> anyhow::Result<Option<String>> {
    let len = INSPECT_BYTES.min(dev.size_sectors() as usize * SECTOR_SIZE);
    let mut buf = vec![0u8; len];
    dev.read(0, &mut buf)?;
    if let Some(sb) = format::plog::decode_superblock(&buf) {
        return Ok(Some(format!(
            "a wbcache plog device (generation {:#x}, epoch {})",
            sb.generation, sb.epoch
        )));
    }
    if let Superblock::Valid(ext) = format::decode_superblock(&buf) {
        return Ok(Some(match ext {
            Some(ext) => format!(
                "a wbcache cache device (segment order {}, generation {:#x})",
                ext.order, ext.generation
            ),
            None => "an upstream dm-writeboost cache device".to_string(),
        }));
    }
    Ok(buf
        .iter()
        .position(|&b| b != 0)
        .map(|at| format!("data (first non-zero byte at offset {at})")))
}

/// Refuses a device that holds anything, unless `force`.
fn refuse_content(dev: &mut Device, spec: &DeviceSpec, force: bool) -> anyhow::Result<()> {
    if let Some(what) = existing_content(dev)? {
        if !force {
            bail!("{spec} holds {what}; refusing to format it (use --force to overwrite)");
        }
        eprintln!("wbcache: {spec}: overwriting {what} (--force)");
    }
    Ok(())
}

/// Formats a cache device: type 0, or type 1 with the plog device `plog`.
pub fn format_cache(
    cache: &DeviceSpec,
    plog: Option<&DeviceSpec>,
    order: u8,
    force: bool,
) -> anyhow::Result<()> {
    let mut dev = Device::open(cache, DeviceRole::Cache, IoMode::DirectIfSupported, 0)?;
    // The geometry checks first: a device too small is refused before anything is written.
    let geo =
        Geometry::new(order, dev.size_sectors()).map_err(|e| anyhow::anyhow!("{cache}: {e}"))?;
    let mut plog_dev = match plog {
        Some(p) => {
            let mut pd = Device::open(p, DeviceRole::Plog, IoMode::DirectIfSupported, 0)?;
            let pgeo =
                format::plog::PlogGeometry::for_device(pd.size_sectors(), geo.blocks_per_segment())
                    .map_err(|e| anyhow::anyhow!("{p}: {e}"))?;
            if p.same_device(cache) {
                bail!("{p}: the plog device must be another device than the cache");
            }
            refuse_content(&mut pd, p, force)?;
            Some((pd, pgeo))
        }
        None => None,
    };
    refuse_content(&mut dev, cache, force)?;
    let generation = new_generation();
    match plog_dev.as_mut() {
        Some((pd, _)) => engine::format_device_with_plog(&mut dev, pd, order, generation),
        None => engine::format_device(&mut dev, order, generation),
    }
    .map_err(|e| match (&e, plog) {
        (
            engine::Error::Io {
                role: engine::DeviceRole::Plog,
                ..
            },
            Some(p),
        ) => anyhow::anyhow!("{p}: {e}"),
        _ => anyhow::anyhow!("{cache}: {e}"),
    })?;
    dev.flush()?;
    if let Some((pd, _)) = plog_dev.as_mut() {
        pd.flush()?;
    }
    println!(
        "formatted {cache}: segment order {order} ({} KiB segments), {} segments of {} blocks, generation {generation:#x}",
        geo.segment_bytes() / 1024,
        geo.nr_segments,
        geo.blocks_per_segment()
    );
    if let (Some(p), Some((_, pgeo))) = (plog, &plog_dev) {
        println!(
            "type 1: plog {p}: {} regions of {} sectors",
            pgeo.nr_regions, pgeo.region_sectors
        );
    }
    Ok(())
}

fn dirty_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} writing back [{bar:40}] {pos}/{len} blocks ({elapsed})",
        )
        .expect("progress template")
        .progress_chars("=> "),
    );
    bar
}

/// Offline writeback: recover, drain every dirty block to the backing device, shut down.
pub fn writeback(
    backing: &DeviceSpec,
    cache: &DeviceSpec,
    plog: Option<&DeviceSpec>,
) -> anyhow::Result<()> {
    let (mut engine, report) = open_engine(backing, cache, plog, IoMode::DirectIfSupported, 8)?;
    let geo = engine.geometry();
    for line in describe_recovery(&report, geo.order, geo.nr_segments) {
        eprintln!("wbcache: {line}");
    }
    let total = engine.status().nr_dirty_cache_blocks;
    let bar = dirty_bar(total);
    engine.drop_caches();
    // Each step moves an id forward (seal, write, write back, record), so the drain takes at
    // most a few steps per segment of the ring and per RAM buffer.
    let bound = 8 * (geo.nr_segments + 8) + 16;
    for _ in 0..bound {
        if !engine.draining() {
            break;
        }
        let Some(step) = engine.next_step() else {
            bail!(
                "drain stalled with no step due (engine: {:?})",
                engine.status().dead
            );
        };
        engine
            .run_step(step)
            .with_context(|| format!("writeback step {step:?}"))?;
        bar.set_position(total.saturating_sub(engine.status().nr_dirty_cache_blocks));
    }
    if engine.draining() {
        bail!("drain did not finish within {bound} steps");
    }
    bar.finish();
    let st = engine.status();
    let (_, _, plog_dev) = engine
        .shutdown_all()
        .map_err(|e| anyhow::anyhow!("clean shutdown failed: {e}"))?;
    if let Some(mut p) = plog_dev {
        p.flush()?;
    }
    println!(
        "wrote back {total} dirty block(s); cache is clean (last written-back segment {}, recorded)",
        st.last_writeback_id
    );
    Ok(())
}

fn pairs_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

pub fn status(control_path: &Path, json: bool) -> anyhow::Result<()> {
    let pairs = control::request(control_path, "status")?;
    if json {
        println!("{}", control::to_json(&pairs));
    } else {
        for (k, v) in &pairs {
            println!("{k}: {v}");
        }
    }
    Ok(())
}

/// How often `message drop_caches` polls the server for progress.
const POLL: Duration = Duration::from_millis(200);

pub fn message(control_path: &Path, words: &[String]) -> anyhow::Result<()> {
    let msg = words.join(" ");
    control::request(control_path, &format!("message {msg}"))?;
    if msg != "drop_caches" {
        println!("ok");
        return Ok(());
    }
    let dirty = |p: &[(String, String)]| -> u64 {
        pairs_get(p, "nr_dirty_cache_blocks")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let first = control::request(control_path, "status")?;
    let total = dirty(&first);
    let bar = dirty_bar(total);
    let started = Instant::now();
    // Ends when the server says the drain is over, the cache dies, or the server goes away.
    loop {
        let st = control::request(control_path, "status")
            .context("the server went away while draining")?;
        bar.set_position(total.saturating_sub(dirty(&st)));
        if let Some(cause) = pairs_get(&st, "dead").filter(|d| *d != "-") {
            bail!("the cache died while draining: {cause}");
        }
        if pairs_get(&st, "draining") == Some("0") {
            bar.finish();
            println!(
                "drop_caches: cache is clean ({} dirty block(s) written back in {:.1} s)",
                total,
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

fn open_for_inspection(spec: &DeviceSpec, role: DeviceRole) -> anyhow::Result<Device> {
    Ok(Device::open_read_only(
        spec,
        role,
        IoMode::DirectIfSupported,
    )?)
}

/// `wbcache check`: prints `engine::inspect`'s report and returns the exit status
/// ([`CHECK_SOUND`], [`CHECK_UNSOUND`]); `Err` is a usage or I/O error ([`CHECK_ERROR`]).
pub fn check(
    cache: &DeviceSpec,
    plog: Option<&DeviceSpec>,
    backing: Option<&DeviceSpec>,
    json: bool,
) -> anyhow::Result<u8> {
    let mut dev = open_for_inspection(cache, DeviceRole::Cache)?;
    let backing_sectors = match backing {
        Some(b) => Some(open_for_inspection(b, DeviceRole::Backing)?.size_sectors()),
        None => None,
    };
    let report = match plog {
        Some(p) => {
            let mut pd = open_for_inspection(p, DeviceRole::Plog)?;
            engine::check_with_plog(&mut dev, &mut pd, backing_sectors)
        }
        None => match backing_sectors {
            Some(b) => engine::check_against_backing(&mut dev, b),
            None => engine::check(&mut dev),
        },
    }
    .map_err(|e| anyhow::anyhow!("{cache}: {e}"))?;
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    // A plog given for the wrong type, or none for a type-1 cache, is a usage error: the
    // device is not judged without the right set of devices.
    for p in &report.problems {
        match p.kind {
            engine::inspect::ProblemKind::PlogMissing => {
                bail!("{cache} is a type-1 cache: check it with its plog device (--plog P)")
            }
            engine::inspect::ProblemKind::PlogUnexpected => {
                bail!("{cache} is a type-0 cache (no persistent log): check it without --plog")
            }
            _ => {}
        }
    }
    Ok(if report.sound {
        CHECK_SOUND
    } else {
        CHECK_UNSOUND
    })
}

/// `wbcache dump`: prints `engine::inspect::dump` (with the plog's superblocks and regions
/// when given). `Err` when the requested segment is not on the device.
pub fn dump(
    cache: &DeviceSpec,
    plog: Option<&DeviceSpec>,
    segment: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let mut dev = open_for_inspection(cache, DeviceRole::Cache)?;
    let d = match plog {
        Some(p) => {
            let mut pd = open_for_inspection(p, DeviceRole::Plog)?;
            engine::dump_with_plog(&mut dev, &mut pd, segment)
        }
        None => engine::dump(&mut dev, segment),
    }
    .map_err(|e| anyhow::anyhow!("{cache}: {e}"))?;
    if json {
        println!("{}", d.to_json());
    } else {
        print!("{d}");
    }
    if let Some(m) = d.missing {
        match m.slot {
            None => bail!("segment 0 does not exist (id 0 marks an empty slot)"),
            Some(slot) if m.found == 0 => {
                bail!(
                    "segment {} is not on the device: its slot {slot} is empty",
                    m.id
                )
            }
            Some(slot) => bail!(
                "segment {} is not on the device: its slot {slot} holds segment {}",
                m.id,
                m.found
            ),
        }
    }
    Ok(())
}
