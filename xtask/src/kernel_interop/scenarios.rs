//! The scenarios and the steps they share.
//!
//! Geometry: a 32 MiB backing device and a 9 MiB cache device (the 1 MiB superblock region
//! and 16 segments of 512 KiB, 127 blocks each), so a few thousand small writes wrap the
//! log several times. Upstream reuses a slot only after writing its segment back
//! (`wait_for_writeback` when a new segment is acquired), so a full log forces writeback.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::artefacts::Artefacts;
use super::host::{Nbd, Wbcache};
use super::vm::{self, Status};
use super::workload::{self, Model, Spec, SECTOR};

pub const BACKING_SECTORS: u64 = 65536;
pub const CACHE_BYTES: u64 = (1 << 20) + 16 * (512 << 10);

pub struct Ctx {
    pub art: Artefacts,
    pub initrd: PathBuf,
    pub wb: Wbcache,
    pub seed: u64,
}

#[derive(Default)]
pub struct Outcome {
    pub failures: Vec<String>,
    pub notes: Vec<String>,
}

type RunFn = fn(&Ctx, &Path, &mut Outcome) -> Result<(), String>;

pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub run: RunFn,
}

pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "kernel-clean",
            about: "the kernel writes (log not wrapped) and is removed cleanly; wbcache recovers what the kernel recovers",
            run: kernel_clean,
        },
        Scenario {
            name: "kernel-powercut",
            about: "the kernel writes (log not wrapped), power is cut after unflushed writes; wbcache recovers what the kernel recovers",
            run: kernel_powercut,
        },
        Scenario {
            name: "kernel-wrap-record0",
            about: "the kernel wraps its log several times with no record updates (record 0), power cut; wbcache recovers what the kernel recovers",
            run: kernel_wrap_record0,
        },
        Scenario {
            name: "kernel-wrap-records",
            about: "the kernel wraps its log with update_sb_record_interval 1, power cut; wbcache recovers what the kernel recovers",
            run: kernel_wrap_records,
        },
        Scenario {
            name: "wbcache-sigterm",
            about: "wbcache serve writes (log wrapped), SIGTERM; the kernel recovers every write",
            run: wbcache_sigterm,
        },
        Scenario {
            name: "wbcache-sigkill",
            about: "wbcache serve writes, SIGKILL after a flush and more writes; the kernel recovers every flushed write",
            run: wbcache_sigkill,
        },
        Scenario {
            name: "roundtrip",
            about: "wbcache writes, then the kernel wraps the log over it with record updates, then wbcache recovers what the kernel recovers",
            run: roundtrip,
        },
    ]
}

fn io<T>(r: std::io::Result<T>, what: &Path) -> Result<T, String> {
    r.map_err(|e| format!("{}: {e}", what.display()))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Fresh devices: the backing device holds the seed's initial data, the cache is zero
/// (upstream formats a cache whose sector 0 is zero; wbcache needs `format`).
fn fresh_devices(ctx: &Ctx, dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let backing = dir.join("backing.img");
    let cache = dir.join("cache.img");
    io(
        fs::write(&backing, workload::initial_image(ctx.seed, BACKING_SECTORS)),
        &backing,
    )?;
    let f = io(fs::File::create(&cache), &cache)?;
    io(f.set_len(CACHE_BYTES), &cache)?;
    Ok((backing, cache))
}

/// Copies both images to `<prefix>-backing.img` and `<prefix>-cache.img`.
fn copies(dir: &Path, prefix: &str) -> Result<(PathBuf, PathBuf), String> {
    let b = dir.join(format!("{prefix}-backing.img"));
    let c = dir.join(format!("{prefix}-cache.img"));
    io(fs::copy(dir.join("backing.img"), &b), &b)?;
    io(fs::copy(dir.join("cache.img"), &c), &c)?;
    Ok((b, c))
}

/// The u64 at offset 0 of sector 2047: what upstream reads as its superblock record.
fn record_on_disk(cache: &Path) -> Result<u64, String> {
    let d = io(fs::read(cache), cache)?;
    let o = 2047 * SECTOR;
    Ok(u64::from_le_bytes(d[o..o + 8].try_into().unwrap()))
}

#[derive(Clone, Copy, PartialEq)]
enum End {
    Remove,
    PowerCut,
}

/// How the kernel runs a workload: target tunables (`name:value,...`), a `dmsetup message`
/// after the N-th write (`N:name:value`), and the end.
struct Run<'a> {
    opts: &'a str,
    msg: Option<&'a str>,
    end: End,
}

/// The kernel runs a workload on `dir/backing.img` + `dir/cache.img`; returns its status
/// after the workload. `model` gets the ops (all durable after a clean removal).
fn kernel_write(
    ctx: &Ctx,
    dir: &Path,
    spec: &Spec,
    run: Run,
    model: &mut Model,
    out: &mut Outcome,
) -> Result<Status, String> {
    let Run { opts, msg, end } = run;
    let (b, c) = (dir.join("backing.img"), dir.join("cache.img"));
    let boot = vm::boot(
        &ctx.art,
        &ctx.initrd,
        &[&b, &c],
        &[
            ("job", "write".into()),
            ("w", spec.encode()),
            ("opts", opts.into()),
            ("msg", msg.unwrap_or("").into()),
            (
                "end",
                if end == End::Remove {
                    "remove"
                } else {
                    "powercut"
                }
                .into(),
            ),
        ],
        &dir.join("console-write.log"),
        Duration::from_secs(900),
    )?;
    for op in spec.ops() {
        model.apply(&op);
    }
    if end == End::Remove {
        model.all_durable();
    }
    let st = *boot
        .statuses
        .last()
        .ok_or("the write VM printed no target status")?;
    out.notes.push(format!(
        "kernel wrote {} writes ({}) in a {:.0} s VM; then: {st}; record on disk {}",
        spec.writes + spec.tail,
        if end == End::Remove {
            "then dmsetup remove"
        } else {
            "then power cut"
        },
        boot.seconds,
        record_on_disk(&c)?
    ));
    Ok(st)
}

/// What the kernel recovers from copies of `dir`'s images: the whole mapped device after
/// `dmsetup create` replayed the log (returned with the status after replay).
fn kernel_view(ctx: &Ctx, dir: &Path, out: &mut Outcome) -> Result<Vec<u8>, String> {
    let (b, c) = copies(dir, "k")?;
    let result = dir.join("kernel-view.img");
    let f = io(fs::File::create(&result), &result)?;
    io(f.set_len(BACKING_SECTORS * SECTOR as u64), &result)?;
    let boot = vm::boot(
        &ctx.art,
        &ctx.initrd,
        &[&b, &c, &result],
        &[("job", "read".into())],
        &dir.join("console-read.log"),
        Duration::from_secs(600),
    )?;
    if let Some(st) = boot.statuses.first() {
        out.notes
            .push(format!("kernel replay ({:.0} s VM): {st}", boot.seconds));
    }
    io(fs::read(&result), &result)
}

/// Sector-by-sector comparison of wbcache's result with the kernel's. Where the kernel's own
/// recovery breaks the model (it lost a write the model says must be there) wbcache must not
/// copy the loss: there it must satisfy the model instead (SPEC §3: never recover less than
/// upstream). Everywhere else it must equal the kernel exactly.
fn compare(what: &str, ours: &[u8], kernel: &[u8], model: &Model, exact: bool, out: &mut Outcome) {
    let seed = model.seed;
    let (mut differ, mut first) = (0u64, None);
    let (mut better, mut first_better) = (0u64, None);
    let sectors = ours.len().max(kernel.len()) / SECTOR;
    for sec in 0..sectors {
        let r = sec * SECTOR..(sec + 1) * SECTOR;
        let (o, k) = (ours.get(r.clone()), kernel.get(r));
        if o == k {
            continue;
        }
        let s = sec as u64;
        let kernel_ok = k.is_some_and(|k| model.sector_ok(k, s, exact));
        let ours_ok = o.is_some_and(|o| model.sector_ok(o, s, exact));
        if !kernel_ok && ours_ok {
            better += 1;
            first_better.get_or_insert(s);
        } else {
            differ += 1;
            first.get_or_insert(s);
        }
    }
    let at = |img: &[u8], sec: u64| {
        img.get(sec as usize * SECTOR..(sec as usize + 1) * SECTOR)
            .map(|b| workload::describe(b, seed, sec))
            .unwrap_or_else(|| "nothing (image too short)".into())
    };
    if let Some(sec) = first_better {
        out.notes.push(format!(
            "{what}: has {better} sectors the kernel's own recovery lost (first: sector {sec}: the kernel has {}, wbcache has {})",
            at(kernel, sec),
            at(ours, sec)
        ));
    }
    match first {
        None => out.notes.push(format!(
            "{what}: equal to the kernel's recovery{}",
            if better > 0 { " everywhere else" } else { "" }
        )),
        Some(sec) => out.failures.push(format!(
            "{what} differs from the kernel's recovery in {differ} of {BACKING_SECTORS} sectors; first differing sector {sec}: the kernel has {}, wbcache has {}",
            at(kernel, sec),
            at(ours, sec)
        )),
    }
}

/// The kernel's recovery of `dir`'s images against the model, and wbcache's `check`,
/// `writeback` and `serve` against the kernel's recovery.
fn wbcache_matches_kernel(
    ctx: &Ctx,
    dir: &Path,
    model: &Model,
    exact: bool,
    out: &mut Outcome,
) -> Result<(), String> {
    let kernel = kernel_view(ctx, dir, out)?;
    let v = model.judge(&kernel, exact);
    if v.bad > BACKING_SECTORS / 100 {
        // More than a few lost sectors: the harness (or the kernel) is broken; comparing
        // wbcache with it would prove nothing.
        out.failures.push(format!(
            "the kernel's own recovery breaks the workload's model in {} sectors: {}",
            v.bad,
            v.first.unwrap_or_default()
        ));
    } else if v.bad > 0 {
        out.notes.push(format!(
            "UPSTREAM BUG: the kernel's own recovery lost {} sectors of {} writes (first: {}); wbcache must have them",
            v.bad,
            if exact { "completed" } else { "flushed" },
            v.first.unwrap_or_default()
        ));
    }
    // check (reads only).
    let (b, c) = (dir.join("backing.img"), dir.join("cache.img"));
    let o = ctx.wb.run(&["check", s(&c), "--backing", s(&b)])?;
    if o.code == Some(0) {
        out.notes.push("wbcache check: sound (exit 0)".into());
    } else {
        let lines: Vec<&str> = o.text.lines().collect();
        out.failures.push(format!(
            "wbcache check exits {:?} (0 = sound); it ends:\n{}",
            o.code,
            lines[lines.len().saturating_sub(12)..].join("\n")
        ));
    }
    // writeback (offline), then the backing device alone.
    let (wb_b, wb_c) = copies(dir, "w")?;
    match ctx
        .wb
        .must(&["writeback", "--backing", s(&wb_b), "--cache", s(&wb_c)])
    {
        Ok(_) => compare(
            "wbcache writeback (the backing device after it)",
            &io(fs::read(&wb_b), &wb_b)?,
            &kernel,
            model,
            exact,
            out,
        ),
        Err(e) => out.failures.push(e),
    }
    // serve, read through NBD.
    let (sb, sc) = copies(dir, "s")?;
    let server = ctx
        .wb
        .serve(&sb, &sc, &dir.join("s.sock"), &dir.join("serve-read.log"));
    match server {
        Ok(server) => {
            let img = dir.join("serve-view.img");
            let r = server.read_export(&img);
            let stopped = server.stop(libc::SIGTERM);
            match r {
                Ok(()) => compare(
                    "wbcache serve (the export read with qemu-img)",
                    &io(fs::read(&img), &img)?,
                    &kernel,
                    model,
                    exact,
                    out,
                ),
                Err(e) => out.failures.push(e),
            }
            if let Err(e) = stopped {
                out.failures.push(e);
            }
        }
        Err(e) => out.failures.push(e),
    }
    Ok(())
}

/// wbcache formats `dir/cache.img` and serves a workload from a real NBD client, then gets
/// SIGTERM (clean: every write durable) or SIGKILL (right after the tail's writes).
fn wbcache_write(
    ctx: &Ctx,
    dir: &Path,
    spec: &Spec,
    sig: i32,
    model: &mut Model,
    out: &mut Outcome,
) -> Result<(), String> {
    let (b, c) = (dir.join("backing.img"), dir.join("cache.img"));
    ctx.wb.must(&["format", "--cache", s(&c)])?;
    let server = ctx
        .wb
        .serve(&b, &c, &dir.join("w.sock"), &dir.join("serve-write.log"))?;
    let ops = spec.ops();
    let mut nbd = Nbd::connect(&server.socket)?;
    nbd.run(spec.seed, &ops)?;
    for op in &ops {
        model.apply(op);
    }
    if sig == libc::SIGTERM {
        nbd.disconnect();
        server.stop(libc::SIGTERM)?;
        model.all_durable();
    } else {
        server.stop(libc::SIGKILL)?;
    }
    let dump = ctx
        .wb
        .must(&["check", s(&c), "--backing", s(&b)])
        .unwrap_or_else(|e| e);
    let summary: Vec<&str> = dump
        .lines()
        .filter(|l| l.contains("record") || l.contains("replay"))
        .take(3)
        .collect();
    out.notes.push(format!(
        "wbcache wrote {} writes over NBD, then {}; its check says: {}",
        spec.writes + spec.tail,
        if sig == libc::SIGTERM {
            "SIGTERM"
        } else {
            "SIGKILL"
        },
        summary.join(" | ")
    ));
    Ok(())
}

fn spec(ctx: &Ctx, first_id: u32, writes: u32, tail: u32) -> Spec {
    Spec {
        seed: ctx.seed,
        first_id,
        writes,
        region: BACKING_SECTORS,
        max_len: 16,
        flush_every: 100,
        sleep_every: 0,
        sleep_ms: 0,
        sleep_until: 0,
        tail,
    }
}

fn expect_laps(st: &Status, min_laps: u64, max_laps: Option<u64>, out: &mut Outcome) {
    let laps = st.current_id.saturating_sub(1) / st.nr_segments.max(1);
    let ok = laps >= min_laps && max_laps.is_none_or(|m| laps <= m);
    if !ok {
        out.failures.push(format!(
            "the workload did not do what the scenario needs: the log wrapped {laps} times (current_id {}, {} segments); wanted {min_laps}{}",
            st.current_id,
            st.nr_segments,
            max_laps.map(|m| format!("..={m}")).unwrap_or_else(|| " or more".into())
        ));
    }
}

fn kernel_clean(ctx: &Ctx, dir: &Path, out: &mut Outcome) -> Result<(), String> {
    fresh_devices(ctx, dir)?;
    let mut model = Model::new(ctx.seed, BACKING_SECTORS);
    let st = kernel_write(
        ctx,
        dir,
        &spec(ctx, 1, 300, 0),
        Run {
            opts: "",
            msg: None,
            end: End::Remove,
        },
        &mut model,
        out,
    )?;
    expect_laps(&st, 0, Some(0), out);
    wbcache_matches_kernel(ctx, dir, &model, true, out)
}

fn kernel_powercut(ctx: &Ctx, dir: &Path, out: &mut Outcome) -> Result<(), String> {
    fresh_devices(ctx, dir)?;
    let mut model = Model::new(ctx.seed, BACKING_SECTORS);
    let st = kernel_write(
        ctx,
        dir,
        &spec(ctx, 1, 300, 40),
        Run {
            opts: "",
            msg: None,
            end: End::PowerCut,
        },
        &mut model,
        out,
    )?;
    expect_laps(&st, 0, Some(0), out);
    wbcache_matches_kernel(ctx, dir, &model, false, out)
}

fn kernel_wrap_record0(ctx: &Ctx, dir: &Path, out: &mut Outcome) -> Result<(), String> {
    fresh_devices(ctx, dir)?;
    let mut model = Model::new(ctx.seed, BACKING_SECTORS);
    let st = kernel_write(
        ctx,
        dir,
        &spec(ctx, 1, 3000, 40),
        Run {
            opts: "",
            msg: None,
            end: End::PowerCut,
        },
        &mut model,
        out,
    )?;
    expect_laps(&st, 2, None, out);
    let rec = record_on_disk(&dir.join("cache.img"))?;
    if rec != 0 {
        out.failures.push(format!(
            "the record on disk is {rec}, the scenario wants upstream's default 0"
        ));
    }
    wbcache_matches_kernel(ctx, dir, &model, false, out)
}

fn kernel_wrap_records(ctx: &Ctx, dir: &Path, out: &mut Outcome) -> Result<(), String> {
    fresh_devices(ctx, dir)?;
    let mut model = Model::new(ctx.seed, BACKING_SECTORS);
    let mut sp = spec(ctx, 1, 3000, 40);
    // Pauses let the record updater (every second) write records in the first third; then
    // the updates stop (message update_sb_record_interval 0) and 2000 more writes wrap the
    // log more than once past the record, so the record on disk is a stale hint.
    sp.sleep_every = 250;
    sp.sleep_ms = 1500;
    sp.sleep_until = 1000;
    let st = kernel_write(
        ctx,
        dir,
        &sp,
        Run {
            opts: "update_sb_record_interval:1",
            msg: Some("1000:update_sb_record_interval:0"),
            end: End::PowerCut,
        },
        &mut model,
        out,
    )?;
    expect_laps(&st, 2, None, out);
    if record_on_disk(&dir.join("cache.img"))? == 0 {
        out.failures.push(
            "the kernel wrote no superblock record although update_sb_record_interval is 1".into(),
        );
    }
    wbcache_matches_kernel(ctx, dir, &model, false, out)
}

fn kernel_recovers_wbcache(
    ctx: &Ctx,
    dir: &Path,
    model: &Model,
    exact: bool,
    out: &mut Outcome,
) -> Result<(), String> {
    let kernel = kernel_view(ctx, dir, out)?;
    let v = model.judge(&kernel, exact);
    if v.bad > 0 {
        out.failures.push(format!(
            "the kernel's recovery of wbcache's images misses {} sectors of {} writes: {}",
            v.bad,
            if exact { "completed" } else { "flushed" },
            v.first.unwrap_or_default()
        ));
    } else {
        out.notes.push(format!(
            "the kernel recovered every {} write",
            if exact { "completed" } else { "flushed" }
        ));
    }
    Ok(())
}

fn wbcache_sigterm(ctx: &Ctx, dir: &Path, out: &mut Outcome) -> Result<(), String> {
    fresh_devices(ctx, dir)?;
    let mut model = Model::new(ctx.seed, BACKING_SECTORS);
    wbcache_write(
        ctx,
        dir,
        &spec(ctx, 1, 3000, 0),
        libc::SIGTERM,
        &mut model,
        out,
    )?;
    kernel_recovers_wbcache(ctx, dir, &model, true, out)
}

fn wbcache_sigkill(ctx: &Ctx, dir: &Path, out: &mut Outcome) -> Result<(), String> {
    fresh_devices(ctx, dir)?;
    let mut model = Model::new(ctx.seed, BACKING_SECTORS);
    wbcache_write(
        ctx,
        dir,
        &spec(ctx, 1, 3000, 40),
        libc::SIGKILL,
        &mut model,
        out,
    )?;
    kernel_recovers_wbcache(ctx, dir, &model, false, out)
}

fn roundtrip(ctx: &Ctx, dir: &Path, out: &mut Outcome) -> Result<(), String> {
    fresh_devices(ctx, dir)?;
    let mut model = Model::new(ctx.seed, BACKING_SECTORS);
    let first = spec(ctx, 1, 1500, 0);
    wbcache_write(ctx, dir, &first, libc::SIGTERM, &mut model, out)?;
    let mut then = spec(ctx, 1 + first.writes + first.tail, 3000, 0);
    then.seed = ctx.seed;
    then.sleep_every = 500;
    then.sleep_ms = 1500;
    let st = kernel_write(
        ctx,
        dir,
        &then,
        Run {
            opts: "update_sb_record_interval:1",
            msg: None,
            end: End::Remove,
        },
        &mut model,
        out,
    )?;
    expect_laps(&st, 2, None, out);
    wbcache_matches_kernel(ctx, dir, &model, true, out)
}
