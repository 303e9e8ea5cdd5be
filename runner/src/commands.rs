//! The offline subcommands (`format`, `writeback`) and the control clients (`status`,
//! `message`). Each is a few calls into the engine or the control socket.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use engine::format::{self, Geometry, Superblock, SECTOR_SIZE};
use engine::BlockDevice;
use indicatif::{ProgressBar, ProgressStyle};

use crate::control;
use crate::filedev::{FileDevice, IoMode};
use crate::server::{describe_recovery, open_engine};

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
pub fn existing_content(dev: &mut FileDevice) -> anyhow::Result<Option<String>> {
    let len = INSPECT_BYTES.min(dev.size_sectors() as usize * SECTOR_SIZE);
    let mut buf = vec![0u8; len];
    dev.read(0, &mut buf)?;
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

pub fn format_cache(cache: &Path, order: u8, force: bool) -> anyhow::Result<()> {
    let mut dev = FileDevice::open(cache, IoMode::DirectIfSupported, 0)?;
    // The geometry check first: a device too small is refused before anything is written.
    let geo = Geometry::new(order, dev.size_sectors())
        .map_err(|e| anyhow::anyhow!("{}: {e}", cache.display()))?;
    if let Some(what) = existing_content(&mut dev)? {
        if !force {
            bail!(
                "{} holds {what}; refusing to format it (use --force to overwrite)",
                cache.display()
            );
        }
        eprintln!("wbcache: {}: overwriting {what} (--force)", cache.display());
    }
    let generation = new_generation();
    engine::format_device(&mut dev, order, generation)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cache.display()))?;
    dev.flush()?;
    println!(
        "formatted {}: segment order {order} ({} KiB segments), {} segments of {} blocks, generation {generation:#x}",
        cache.display(),
        geo.segment_bytes() / 1024,
        geo.nr_segments,
        geo.blocks_per_segment()
    );
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
pub fn writeback(backing: &Path, cache: &Path) -> anyhow::Result<()> {
    let (mut engine, report) = open_engine(backing, cache, IoMode::DirectIfSupported, 8)?;
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
    engine
        .shutdown()
        .map_err(|e| anyhow::anyhow!("clean shutdown failed: {e}"))?;
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
