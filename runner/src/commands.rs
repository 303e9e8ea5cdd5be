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
use crate::device::{Device, DeviceSpec, OpenError};
use crate::filedev::{DeviceError, IoMode};
use crate::server::{describe_recovery, open_engine, refuse_shared_devices};

/// `wbcache check` exit status: the devices are sound.
pub const CHECK_SOUND: u8 = 0;
/// `wbcache check` exit status: not sound (recovery would refuse the devices, or fail).
pub const CHECK_UNSOUND: u8 = 1;
/// `wbcache check` / `dump` exit status: a usage or I/O error (no verdict).
pub const CHECK_ERROR: u8 = 2;

/// How much of a device `format` inspects for existing content.
pub const INSPECT_BYTES: usize = 1 << 20;

/// A fresh format generation. The engine has no randomness (docs/DESIGN.md, Determinism); the driver picks it:
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
            "a wbcache plog device (generation {}, epoch {})",
            sb.generation, sb.epoch
        )));
    }
    if let Superblock::Valid(ext) = format::decode_superblock(&buf) {
        return Ok(Some(match ext {
            Some(ext) => format!(
                "a wbcache cache device (segment order {}, generation {})",
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
    refuse_shared_devices(&[("--cache", Some(cache)), ("--plog", plog)])?;
    // The sizes are checked first, in bytes, against what this order needs, so a device too
    // small is refused before anything is written, with one number to aim for.
    let segment_sectors = 1u64 << order;
    let blocks = (segment_sectors / format::SECTORS_PER_BLOCK - 1) as usize;
    let cache_min = (format::SUPERBLOCK_SECTORS + 2 * segment_sectors) * SECTOR_SIZE as u64;
    let mut dev = Device::open(
        cache,
        DeviceRole::Cache,
        IoMode::DirectIfSupported,
        cache_min,
    )
    .map_err(|e| match e {
        OpenError::File(DeviceError::TooSmall { .. }) | OpenError::TooSmall { .. } => {
            anyhow::anyhow!(
                "{e} for segment order {order} (the 1 MiB superblock region and 2 segments of \
                 {} KiB)",
                segment_sectors / 2
            )
        }
        e => e.into(),
    })?;
    let geo =
        Geometry::new(order, dev.size_sectors()).map_err(|e| anyhow::anyhow!("{cache}: {e}"))?;
    let mut plog_dev = match plog {
        Some(p) => {
            let plog_min = (format::plog::PLOG_FIRST_REGION_SECTOR
                + 2 * format::plog::region_sectors_for(blocks) as u64)
                * SECTOR_SIZE as u64;
            let mut pd = Device::open(p, DeviceRole::Plog, IoMode::DirectIfSupported, plog_min)
                .map_err(|e| match e {
                    OpenError::File(DeviceError::TooSmall { .. }) | OpenError::TooSmall { .. } => {
                        anyhow::anyhow!(
                            "{e} for segment order {order} (2 superblock blocks and 2 regions)"
                        )
                    }
                    e => e.into(),
                })?;
            let pgeo =
                format::plog::PlogGeometry::for_device(pd.size_sectors(), geo.blocks_per_segment())
                    .map_err(|e| anyhow::anyhow!("{p}: {e}"))?;
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
        "formatted {cache}: segment order {order} ({} KiB segments), {} segments of {} blocks, generation {generation}",
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
    engine
        .drain_watched(|e| {
            bar.set_position(total.saturating_sub(e.status().nr_dirty_cache_blocks));
        })
        .context("writeback")?;
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
    if !matches!(msg.as_str(), "drop_caches" | "drop-caches") {
        control::request(control_path, &format!("message {msg}"))?;
        println!("ok");
        return Ok(());
    }
    let d = drop_caches(control_path, POLL, true)?;
    println!(
        "drop_caches: cache is clean ({} dirty block(s) written back in {:.1} s)",
        d.dirty_before,
        d.elapsed.as_secs_f64()
    );
    Ok(())
}

/// What `message drop_caches` saw.
#[derive(Debug)]
pub struct Drained {
    /// Dirty blocks just before the message was sent: what the drain wrote back (plus
    /// whatever clients wrote meanwhile).
    pub dirty_before: u64,
    pub elapsed: Duration,
}

fn dirty_of(pairs: &[(String, String)]) -> anyhow::Result<u64> {
    pairs_get(pairs, "nr_dirty_cache_blocks")
        .and_then(|v| v.parse().ok())
        .context("the server's status has no nr_dirty_cache_blocks")
}

/// Sends `drop_caches` and polls the status every `poll` until the drain is over, with a
/// progress bar of the blocks written back if `progress`.
pub fn drop_caches(control_path: &Path, poll: Duration, progress: bool) -> anyhow::Result<Drained> {
    // The dirty count is read before the message: the engine starts writing back as soon as it
    // has the message, so a count read after it misses what the first steps wrote.
    let dirty_before = dirty_of(&control::request(control_path, "status")?)?;
    let bar = if progress {
        dirty_bar(dirty_before)
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    control::request(control_path, "message drop_caches")?;
    // Ends when the server says the drain is over, the cache dies, or the server goes away.
    loop {
        let st = control::request(control_path, "status")
            .context("the server went away while draining")?;
        bar.set_position(dirty_before.saturating_sub(dirty_of(&st)?));
        if let Some(cause) = pairs_get(&st, "dead").filter(|d| *d != "-") {
            bail!("the cache died while draining: {cause}");
        }
        if pairs_get(&st, "draining") == Some("0") {
            bar.finish();
            return Ok(Drained {
                dirty_before,
                elapsed: started.elapsed(),
            });
        }
        std::thread::sleep(poll);
    }
}

/// Opens a device read-only (a file with a shared claim: refused while another process
/// writes it; an NBD export on a read-only connection).
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
    if let Some(why) = &d.unreadable {
        bail!(
            "{cache}: no segments to decode: {why} (not a wbcache or dm-writeboost cache device, \
             or not one this build can read)"
        );
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// A control server that drains as an engine does: the message starts the drain, and the
    /// engine writes some blocks back before it answers the next status, which is what made the
    /// old client (status after the message) under-report.
    fn fake_server(listener: UnixListener, mut dirty: u64) -> Vec<String> {
        let mut seen = Vec::new();
        let mut draining = false;
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut line = String::new();
            BufReader::new(stream.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            let line = line.trim().to_string();
            seen.push(line.clone());
            let reply = match line.as_str() {
                "status" => {
                    if draining {
                        // One writeback step of 4064 blocks per poll.
                        dirty = dirty.saturating_sub(4064);
                    }
                    let out = format!(
                        "nr_dirty_cache_blocks {dirty}\ndraining {}\ndead -\nok\n",
                        (draining && dirty > 0) as u8
                    );
                    if draining && dirty == 0 {
                        stream.write_all(out.as_bytes()).unwrap();
                        return seen;
                    }
                    out
                }
                "message drop_caches" => {
                    draining = true;
                    "ok\n".to_string()
                }
                other => format!("err unexpected {other}\n"),
            };
            stream.write_all(reply.as_bytes()).unwrap();
        }
        seen
    }

    #[test]
    fn drop_caches_counts_the_dirty_blocks_from_before_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || fake_server(listener, 51200));
        let d = drop_caches(&path, Duration::from_millis(1), false).unwrap();
        assert_eq!(d.dirty_before, 51200);
        let seen = server.join().unwrap();
        assert_eq!(seen[..2], ["status", "message drop_caches"]);
        assert!(seen[2..].iter().all(|l| l == "status"), "{seen:?}");
    }
}
