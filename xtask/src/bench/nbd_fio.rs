//! Section: fio through NBD (issue 8, point 4): the real `wbcache` binary against `nbdkit file`
//! and `qemu-nbd` serving the same kind of backing file, with the same fio job file, in the same
//! run.
//!
//! Per server: a fresh backing file written in full with O_DIRECT by fio (so it is allocated,
//! holds data and is not in the page cache), then four measured jobs in order through
//! `ioengine=nbd` over a Unix socket: 4 KiB random writes at queue depth 32 with an NBD FLUSH
//! every 32 writes (fio's `fsync=32`; the nbd engine turns it into `nbd_aio_flush`, and
//! wbcache's `nr_partial_flushed` counter confirms one FLUSH per 32 writes), 4 KiB random reads
//! of what that left, 1 MiB sequential writes, and the random writes again in a working set of
//! half the cache (issue 17's same-disk row). Then a data check that no server can skip:
//! fio writes the whole device again (256 KiB random writes carrying a CRC-32C header per
//! 4 KiB) and reads it back through the server in random order (all of it, or as much as a
//! few seconds allow); the server is stopped with
//! SIGTERM (wbcache's cache is then written back offline with `wbcache writeback`), and fio
//! verifies every block in the backing file itself with O_DIRECT. Any mismatch aborts the
//! bench.
//!
//! wbcache runs as shipped (type 0, order 10, O_DIRECT, 8 RAM buffers, `allow_writeback 0`) on
//! a cache file a quarter of the backing file's size. Two diagnostic rows help explain the
//! numbers: the same binary with `--buffered` (page cache instead of O_DIRECT) and a type-1
//! cache with a plog file. The other servers run with their defaults.

pub(super) mod json;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use self::json::Json;
use super::server::{self, Proc, Scratch, GIB, MIB};
use super::{Mode, Section, Table};

pub struct NbdFio;

/// The cache file is this fraction of the backing file.
const CACHE_DIVISOR: u64 = 4;
/// The plog file of the type-1 row (the format takes as many regions as fit, at most 64).
const PLOG_BYTES: u64 = 16 * MIB;
/// fio's seed for addresses and data.
const SEED: u64 = 20_240_601;
/// The 1 MiB sequential job sends an NBD FLUSH after this many writes (256 MiB): without any,
/// `nbdkit file` and `qemu-nbd` would only copy into the page cache (the whole file fits in
/// RAM, and nothing forces it out), which no durable writer can compare with.
const SEQ_FSYNC: u64 = 256;
/// The target (docs/DESIGN.md): random 4 KiB writes with periodic flushes "several times
/// faster" than the others
/// (read here as at least this ratio) ...
const SEVERAL: f64 = 2.0;
/// ... and large sequential writes no slower than this ratio of them.
const SEQ_FLOOR: f64 = 0.8;

struct Params {
    backing: u64,
    runtime_s: u64,
    /// Reading back through the server stops after this long (wbcache reads a 4 KiB block at a
    /// time); the backing-file check after the server stopped reads everything.
    read_check_s: u64,
}

fn params(mode: Mode) -> Params {
    match mode {
        Mode::Quick => Params {
            backing: 256 * MIB,
            runtime_s: 4,
            read_check_s: 3,
        },
        Mode::Full => Params {
            backing: GIB,
            runtime_s: 30,
            read_check_s: 60,
        },
    }
}

/// One measured fio job (a section of the job file).
struct Job {
    name: &'static str,
    what: &'static str,
    /// fio's JSON member holding the job's figures: "write" or "read".
    dir: &'static str,
}

const JOBS: [Job; 4] = [
    Job {
        name: "randwrite-4k",
        what: "4 KiB random writes, QD 32, FLUSH every 32",
        dir: "write",
    },
    Job {
        name: "randread-4k",
        what: "4 KiB random reads, QD 32",
        dir: "read",
    },
    Job {
        name: "write-1m",
        what: "1 MiB sequential writes, QD 8, FLUSH every 256",
        dir: "write",
    },
    Job {
        name: "randwrite-4k-fits",
        what: "4 KiB random writes in a working set of half the cache, QD 32, FLUSH every 32",
        dir: "write",
    },
];

/// What issue 17 asks of the random writes whose working set fits the cache, against
/// `nbdkit file` on the same disk.
const FITS_TARGET: f64 = 1.5;

/// The job file every server is measured with (`${URI}` is set per server).
fn nbd_job_file(p: &Params) -> String {
    let size = p.backing / MIB;
    let rt = p.runtime_s;
    format!(
        "# URI='nbd+unix:///?socket=SOCKET' fio --section=NAME --output-format=json nbd.fio\n\
         [global]\n\
         ioengine=nbd\n\
         uri=${{URI}}\n\
         size={size}m\n\
         randseed={SEED}\n\
         \n\
         [randwrite-4k]\n\
         rw=randwrite\n\
         bs=4k\n\
         iodepth=32\n\
         fsync=32\n\
         time_based=1\n\
         runtime={rt}\n\
         \n\
         [randread-4k]\n\
         rw=randread\n\
         bs=4k\n\
         iodepth=32\n\
         time_based=1\n\
         runtime={rt}\n\
         \n\
         [write-1m]\n\
         rw=write\n\
         bs=1m\n\
         iodepth=8\n\
         fsync={SEQ_FSYNC}\n\
         time_based=1\n\
         runtime={rt}\n\
         \n\
         # Half the cache: every block the job writes stays cached, its overwrites supersede\n\
         # older copies, and writeback skips those.\n\
         [randwrite-4k-fits]\n\
         rw=randwrite\n\
         bs=4k\n\
         size={fits}m\n\
         iodepth=32\n\
         fsync=32\n\
         time_based=1\n\
         runtime={rt}\n\
         \n\
         # The data check through the server (not timed): every block written with a\n\
         # CRC-32C header per 4 KiB, then read back in random order (all of it, or what\n\
         # {rc} s allow; the backing-file check after the server stops reads all of it).\n\
         [verify-write]\n\
         {VERIFY_JOB}\
         do_verify=0\n\
         iodepth=8\n\
         fsync=16\n\
         \n\
         [verify-read]\n\
         rw=randread\n\
         bs=256k\n\
         verify=crc32c\n\
         verify_interval=4k\n\
         verify_fatal=1\n\
         verify_state_save=0\n\
         iodepth=8\n\
         runtime={rc}\n",
        rc = p.read_check_s,
        fits = p.backing / CACHE_DIVISOR / 2 / MIB
    )
}

/// The options the check through the server and the check of the backing file share, so fio
/// replays the same blocks with the same seed.
const VERIFY_JOB: &str = "rw=randwrite\n\
                          bs=256k\n\
                          verify=crc32c\n\
                          verify_interval=4k\n\
                          verify_fatal=1\n\
                          verify_state_save=0\n";

/// The check of the backing file after the server stopped (`${FILE}` is the backing file).
fn file_check_job(p: &Params) -> String {
    format!(
        "# FILE=BACKING_FILE fio --output-format=json check.fio\n\
         [check]\n\
         ioengine=psync\n\
         direct=1\n\
         filename=${{FILE}}\n\
         size={}m\n\
         randseed={SEED}\n\
         {VERIFY_JOB}\
         verify_only=1\n",
        p.backing / MIB
    )
}

/// How a backing (or cache, or plog) file is created: written in full by fio with O_DIRECT,
/// random data (`zero` = false) or zeros.
pub(super) fn layout_command(file: &Path, bytes: u64, zero: bool) -> Command {
    let mut c = Command::new("fio");
    c.args([
        "--name=layout",
        "--ioengine=psync",
        "--direct=1",
        "--rw=write",
        "--bs=1m",
        &format!("--size={}", bytes),
        &format!("--randseed={SEED}"),
        "--output-format=terse",
    ])
    .arg(format!("--filename={}", file.display()));
    if zero {
        c.arg("--zero_buffers=1");
    }
    c
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// `threads`: `--io-engine threads` (the thread pool instead of io_uring).
    Wbcache {
        plog: bool,
        buffered: bool,
        threads: bool,
    },
    Nbdkit,
    QemuNbd,
}

struct Server {
    label: &'static str,
    kind: Kind,
    /// Measured in full mode only (keeps the quick mode short).
    full_only: bool,
}

const WBCACHE: &str = "wbcache";
const NBDKIT: &str = "nbdkit file";
const QEMU: &str = "qemu-nbd";
const BUFFERED: &str = "wbcache --buffered";
const TYPE1: &str = "wbcache type 1";

const THREADS: &str = "wbcache --io-engine threads";

const SERVERS: [Server; 6] = [
    Server {
        label: WBCACHE,
        kind: Kind::Wbcache {
            plog: false,
            buffered: false,
            threads: false,
        },
        full_only: false,
    },
    Server {
        label: NBDKIT,
        kind: Kind::Nbdkit,
        full_only: false,
    },
    Server {
        label: QEMU,
        kind: Kind::QemuNbd,
        full_only: false,
    },
    Server {
        label: BUFFERED,
        kind: Kind::Wbcache {
            plog: false,
            buffered: true,
            threads: false,
        },
        full_only: false,
    },
    Server {
        label: TYPE1,
        kind: Kind::Wbcache {
            plog: true,
            buffered: false,
            threads: false,
        },
        full_only: true,
    },
    Server {
        label: THREADS,
        kind: Kind::Wbcache {
            plog: false,
            buffered: false,
            threads: true,
        },
        full_only: false,
    },
];

/// What wbcache's status counters did during one job.
#[derive(Clone, Copy, Default)]
struct WbDelta {
    sealed: u64,
    partial: u64,
    written_back: u64,
    read_hits: u64,
    read_misses: u64,
    /// Client writes sequential bypass sent straight to the backing file.
    bypassed: u64,
}

struct JobResult {
    iops: f64,
    /// Bytes per second.
    bw: f64,
    /// 99th percentile completion latency, ms.
    p99_ms: Option<f64>,
    ios: u64,
    wb: Option<WbDelta>,
}

struct ServerRun {
    label: &'static str,
    command: String,
    jobs: Vec<JobResult>,
    nr_cache_blocks: Option<u64>,
    /// Bytes read back and checked through the server.
    read_checked: u64,
}

/// Bytes a fio run moved in one direction.
fn num_at(out: &Json, dir: &str) -> u64 {
    out.at(&["jobs", "0", dir, "io_bytes"])
        .and_then(Json::num)
        .unwrap_or(0.0) as u64
}

/// The JSON fio wrote: it may print a line or two (the nbd engine's "connected") first.
pub(super) fn fio_json(text: &str) -> Result<Json, String> {
    let start = if text.starts_with('{') {
        0
    } else {
        text.find("\n{")
            .map(|i| i + 1)
            .ok_or_else(|| format!("no JSON in fio's output:\n{text}"))?
    };
    json::parse(&text[start..])
}

fn job_result(out: &Json, job: &Job) -> Result<JobResult, String> {
    let j = out.at(&["jobs", "0"]).ok_or("fio's JSON has no jobs[0]")?;
    let num = |path: &[&str]| j.at(path).and_then(Json::num);
    if num(&["error"]) != Some(0.0) {
        return Err(format!("fio job {} reported an error", job.name));
    }
    let d = job.dir;
    let ios = num(&[d, "total_ios"]).unwrap_or(0.0) as u64;
    if ios == 0 {
        return Err(format!("fio job {} did no I/O", job.name));
    }
    Ok(JobResult {
        iops: num(&[d, "iops"]).ok_or("no iops in fio's JSON")?,
        bw: num(&[d, "bw_bytes"]).ok_or("no bw_bytes in fio's JSON")?,
        p99_ms: num(&[d, "clat_ns", "percentile", "99.000000"]).map(|ns| ns / 1e6),
        ios,
        wb: None,
    })
}

/// Runs one fio invocation; `env` is (name, value) for the job file's variables.
fn fio(dir: &Path, args: &[String], env: (&str, &str), limit: Duration) -> Result<Json, String> {
    let out = dir.join("fio.json");
    let _ = std::fs::remove_file(&out);
    let mut c = Command::new("fio");
    c.env(env.0, env.1)
        .arg("--output-format=json")
        .arg(format!("--output={}", out.display()))
        .args(args);
    server::run_tool(&mut c, dir, limit)?;
    let text = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    fio_json(&text)
}

/// A wbcache status snapshot of the counters `WbDelta` needs.
fn wb_counters(bin: &Path, control: &Path, dir: &Path) -> Result<[u64; 6], String> {
    let st = server::wbcache_status(bin, control, dir)?;
    let sum = |prefix: &str| {
        st.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .filter_map(|(_, v)| v.parse::<u64>().ok())
            .sum::<u64>()
    };
    Ok([
        server::status_u64(&st, "last_sealed_id")?,
        server::status_u64(&st, "nr_partial_flushed")?,
        server::status_u64(&st, "last_writeback_id")?,
        sum("stat_read_hit_"),
        sum("stat_read_miss_"),
        server::status_u64(&st, "bypassed_writes")?,
    ])
}

fn run_server(
    srv: &Server,
    p: &Params,
    bin: &Path,
    scratch: &Scratch,
    jobfile: &Path,
    checkfile: &Path,
) -> Result<ServerRun, String> {
    let dir = scratch.path(&srv.label.replace([' ', '-'], "_"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let backing = dir.join("backing.img");
    let cache = dir.join("cache.img");
    let plog = dir.join("plog.img");
    let socket = dir.join("nbd.sock");
    let control = dir.join("nbd.sock.ctl");
    let long = Duration::from_secs(600);
    let t0 = Instant::now();
    let progress = |what: &str| {
        eprintln!(
            "bench: nbd-fio {} (+{:.1} s): {what}",
            srv.label,
            t0.elapsed().as_secs_f64()
        )
    };
    progress("writing the backing file");
    server::run_tool(&mut layout_command(&backing, p.backing, false), &dir, long)?;

    let mut cmd;
    match srv.kind {
        Kind::Wbcache {
            plog: with_plog,
            buffered,
            threads,
        } => {
            server::run_tool(
                &mut layout_command(&cache, p.backing / CACHE_DIVISOR, true),
                &dir,
                long,
            )?;
            let mut f = Command::new(bin);
            f.arg("format").arg("--cache").arg(&cache);
            if with_plog {
                server::run_tool(&mut layout_command(&plog, PLOG_BYTES, true), &dir, long)?;
                f.arg("--plog").arg(&plog);
            }
            server::run_tool(&mut f, &dir, Duration::from_secs(120))?;
            cmd = Command::new(bin);
            cmd.arg("serve")
                .arg("--backing")
                .arg(&backing)
                .arg("--cache")
                .arg(&cache);
            if with_plog {
                cmd.arg("--plog").arg(&plog);
            }
            cmd.arg("--socket").arg(&socket);
            if buffered {
                cmd.arg("--buffered");
            }
            if threads {
                cmd.args(["--io-engine", "threads"]);
            }
        }
        Kind::Nbdkit => {
            cmd = Command::new("nbdkit");
            cmd.args(["--foreground", "--exit-with-parent", "-U"])
                .arg(&socket)
                .arg("file")
                .arg(&backing);
        }
        Kind::QemuNbd => {
            // --persistent: each fio job (and the readiness probe) is a new connection.
            cmd = Command::new("qemu-nbd");
            cmd.args(["--persistent", "--format=raw", "--socket"])
                .arg(&socket)
                .arg(&backing);
        }
    }
    let command = {
        let a: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|s| {
                let s = s.to_string_lossy();
                s.strip_prefix(&*dir.to_string_lossy())
                    .map(|rest| rest.trim_start_matches('/').to_string())
                    .unwrap_or_else(|| s.into_owned())
            })
            .map(|s| {
                if s.ends_with("/wbcache") {
                    "wbcache".to_string()
                } else {
                    s
                }
            })
            .collect();
        a.join(" ")
    };
    let _ = std::fs::remove_file(&socket);
    let mut proc = Proc::spawn(srv.label, &mut cmd, &dir.join("server.log"))?;
    proc.wait_socket(&socket, Duration::from_secs(60))?;
    let is_wb = matches!(srv.kind, Kind::Wbcache { .. });
    let mut read_checked = 0;
    let nr_cache_blocks = if is_wb {
        let st = server::wbcache_status(bin, &control, &dir)?;
        Some(server::status_u64(&st, "nr_cache_blocks")?)
    } else {
        None
    };

    let uri = format!("nbd+unix:///?socket={}", socket.display());
    let job_limit = Duration::from_secs(p.runtime_s + 300);
    let mut jobs = Vec::new();
    for job in &JOBS {
        progress(job.name);
        let before = if is_wb {
            Some(wb_counters(bin, &control, &dir)?)
        } else {
            None
        };
        let args = vec![
            format!("--section={}", job.name),
            jobfile.display().to_string(),
        ];
        let out = fio(&dir, &args, ("URI", &uri), job_limit)
            .map_err(|e| format!("{} {}: {e}", srv.label, job.name))?;
        let mut r = job_result(&out, job).map_err(|e| format!("{}: {e}", srv.label))?;
        if let Some(b) = before {
            let a = wb_counters(bin, &control, &dir)?;
            r.wb = Some(WbDelta {
                sealed: a[0] - b[0],
                partial: a[1] - b[1],
                written_back: a[2] - b[2],
                read_hits: a[3] - b[3],
                read_misses: a[4] - b[4],
                bypassed: a[5] - b[5],
            });
        }
        jobs.push(r);
    }

    progress("data check through the server");
    for section in ["verify-write", "verify-read"] {
        let args = vec![
            format!("--section={section}"),
            jobfile.display().to_string(),
        ];
        let out = fio(&dir, &args, ("URI", &uri), long).map_err(|e| {
            format!(
                "{}: the data check through the server failed (fio read back something other \
                 than it wrote): {e}",
                srv.label
            )
        })?;
        if num_at(&out, "write") + num_at(&out, "read") == 0 {
            return Err(format!("{}: fio's {section} did no I/O", srv.label));
        }
        read_checked += num_at(&out, "read");
    }

    progress("stopping the server");
    let (status, log) = proc.stop(Duration::from_secs(300))?;
    if is_wb {
        if !status.success() || !log.contains("clean shutdown") {
            return Err(format!(
                "{}: no clean shutdown after SIGTERM ({status}); its log:\n{log}",
                srv.label
            ));
        }
        let mut w = Command::new(bin);
        w.arg("writeback")
            .arg("--backing")
            .arg(&backing)
            .arg("--cache")
            .arg(&cache);
        if matches!(srv.kind, Kind::Wbcache { plog: true, .. }) {
            w.arg("--plog").arg(&plog);
        }
        server::run_tool(&mut w, &dir, long)?;
    }
    progress("stopped; checking the backing file");
    let out = fio(
        &dir,
        &[checkfile.display().to_string()],
        ("FILE", &backing.display().to_string()),
        long,
    )
    .map_err(|e| {
        format!(
            "{}: the backing file does not hold what was written through the server: {e}",
            srv.label
        )
    })?;
    let checked = num_at(&out, "read");
    if checked != p.backing {
        return Err(format!(
            "{}: the backing-file check read {checked} bytes, not {}",
            srv.label, p.backing
        ));
    }
    progress("done");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ServerRun {
        label: srv.label,
        command,
        jobs,
        nr_cache_blocks,
        read_checked,
    })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

fn fmt_ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}×")
    } else {
        "—".into()
    }
}

fn results_table(runs: &[ServerRun]) -> Table {
    let mut t = Table::new(&[
        "job",
        "server",
        "IOPS",
        "MB/s",
        "p99 latency ms",
        "wbcache: segments sealed / partial / written back",
    ]);
    for (i, job) in JOBS.iter().enumerate() {
        for r in runs {
            let j = &r.jobs[i];
            t.row(vec![
                job.name.to_string(),
                r.label.to_string(),
                format!("{:.0}", j.iops),
                format!("{:.1}", j.bw / 1e6),
                j.p99_ms.map_or("—".into(), |v| format!("{v:.2}")),
                j.wb.map_or("—".into(), |w| {
                    format!("{} / {} / {}", w.sealed, w.partial, w.written_back)
                }),
            ]);
        }
    }
    t
}

fn find<'a>(runs: &'a [ServerRun], label: &str) -> &'a ServerRun {
    runs.iter()
        .find(|r| r.label == label)
        .expect("every server ran")
}

fn ratio_table(runs: &[ServerRun]) -> Table {
    let diag: Vec<&ServerRun> = runs
        .iter()
        .filter(|r| ![WBCACHE, NBDKIT, QEMU].contains(&r.label))
        .collect();
    let mut header = vec![
        "job".to_string(),
        "wbcache ÷ nbdkit".into(),
        "wbcache ÷ qemu-nbd".into(),
        "target (DESIGN.md)".into(),
    ];
    header.extend(diag.iter().map(|r| format!("{} ÷ nbdkit", r.label)));
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new(&header);
    let (w, k, q) = (find(runs, WBCACHE), find(runs, NBDKIT), find(runs, QEMU));
    for (i, job) in JOBS.iter().enumerate() {
        let asks = match i {
            0 => format!("≥ {SEVERAL:.0}× (\"several times faster\")"),
            2 => format!("≥ {SEQ_FLOOR}×"),
            3 => format!("≥ {FITS_TARGET}× nbdkit (issue 17)"),
            _ => "—".into(),
        };
        let mut row = vec![
            format!("{} ({})", job.name, job.what),
            fmt_ratio(ratio(w.jobs[i].iops, k.jobs[i].iops)),
            fmt_ratio(ratio(w.jobs[i].iops, q.jobs[i].iops)),
            asks,
        ];
        row.extend(
            diag.iter()
                .map(|r| fmt_ratio(ratio(r.jobs[i].iops, k.jobs[i].iops))),
        );
        t.row(row);
    }
    t
}

/// The random writes whose working set fits the cache, against `nbdkit file`.
fn fits_note(w: &ServerRun, k: &ServerRun, p: &Params) -> String {
    let r = ratio(w.jobs[3].iops, k.jobs[3].iops);
    let verdict = if r >= FITS_TARGET {
        format!("meets issue 17's target (≥ {FITS_TARGET}×)")
    } else {
        format!("**misses issue 17's target** (≥ {FITS_TARGET}×)")
    };
    let counters = w.jobs[3].wb.map_or(String::new(), |d| {
        format!(
            " During it {} segments were sealed ({} partial: one per FLUSH, each a segment \
             write and a cache-device flush, where nbdkit pays one fdatasync) and {} written \
             back to the backing file on the same disk (writeback ahead of need writes each \
             segment back as the ring turns), so each block still crosses the disk twice: a \
             working set that fits the cache saves only the superseded copies writeback \
             skips.",
            d.sealed, d.partial, d.written_back
        )
    });
    format!(
        "- 4 KiB random writes with a FLUSH every 32 in a {} MiB working set (half the cache): \
         wbcache is {r:.2}× nbdkit, which {verdict}.{counters}\n",
        p.backing / CACHE_DIVISOR / 2 / MIB
    )
}

/// Notes computed from the measured numbers: where the targets (docs/DESIGN.md) are met or
/// missed, and
/// what the counters say about why.
fn notes(runs: &[ServerRun], p: &Params) -> String {
    let (w, k, q) = (find(runs, WBCACHE), find(runs, NBDKIT), find(runs, QEMU));
    let b = find(runs, BUFFERED);
    let best_other = |i: usize| k.jobs[i].iops.max(q.jobs[i].iops);
    let mut out = String::new();
    let blocks = w.nr_cache_blocks.unwrap_or(0);
    let per_seg = (1u64 << (engine::format::UPSTREAM_ORDER - 3)) - 1;

    // Random writes with flushes.
    let (rk, rq) = (
        ratio(w.jobs[0].iops, k.jobs[0].iops),
        ratio(w.jobs[0].iops, q.jobs[0].iops),
    );
    let min = rk.min(rq);
    if min >= SEVERAL {
        out.push_str(&format!(
            "- 4 KiB random writes with a FLUSH every 32: wbcache is {rk:.2}× nbdkit and \
             {rq:.2}× qemu-nbd, which meets the target (several times faster).\n"
        ));
    } else {
        out.push_str(&format!(
            "- 4 KiB random writes with a FLUSH every 32: **the target is not met**: wbcache is \
             {rk:.2}× nbdkit and {rq:.2}× qemu-nbd ({}: {:.0} IOPS against {:.0} for the \
             faster of them).",
            if min >= 1.0 {
                "faster, but not several times"
            } else {
                "we lose"
            },
            w.jobs[0].iops,
            best_other(0)
        ));
        if let Some(d) = w.jobs[0].wb {
            let fill = if d.sealed > 0 {
                w.jobs[0].ios as f64 / d.sealed as f64
            } else {
                0.0
            };
            out.push_str(&format!(
                " Every FLUSH seals the open segment (type 0): {} segments were sealed during \
                 the job, {} of them partial, with {fill:.0} blocks each on average out of \
                 {per_seg}, so each slot of the {} MiB cache holds about {:.0} % of what it \
                 could and the log wraps after about {:.0} MiB of writes.",
                d.sealed,
                d.partial,
                p.backing / CACHE_DIVISOR / MIB,
                fill * 100.0 / per_seg as f64,
                blocks as f64 * fill / per_seg as f64 * 4096.0 / MIB as f64,
            ));
            if d.written_back > 0 {
                out.push_str(&format!(
                    " From then on writeback runs ahead of need ({} segments written back during \
                     the job; `allow_writeback` is 0; rule R12): when a segment opens and the \
                     slot a batch ahead still holds a segment not written back, that batch \
                     starts (its segments read, their live blocks written to the backing file \
                     together through the device's executor, runs of contiguous blocks merged \
                     into transfers of up to 1 MiB, the backing file flushed, the record \
                     written); a client write waits only if its slot is not free yet. The \
                     engine thread goes on serving reads and writes meanwhile.",
                    d.written_back
                ));
            }
        }
        if let (Some(wp), Some(kp), Some(qp)) =
            (w.jobs[0].p99_ms, k.jobs[0].p99_ms, q.jobs[0].p99_ms)
        {
            if wp > 2.0 * kp.max(qp) && w.jobs[0].wb.is_some_and(|d| d.written_back > 0) {
                out.push_str(&format!(
                    " The p99 latency ({wp:.1} ms against {kp:.1} and {qp:.1}) is that of a \
                     write that waits for a forced writeback batch: up to \
                     `nr_max_batched_writeback` (32 at order 10) segments, each live block \
                     written back (scattered blocks, one O_DIRECT write each unless \
                     contiguous, all in flight together), a backing flush, then the record."
                ));
            }
        }
        let rb = ratio(b.jobs[0].iops, w.jobs[0].iops);
        if rb > 1.2 {
            out.push_str(&format!(
                " With `--buffered` the same binary does {:.0} IOPS ({rb:.2}× O_DIRECT): part \
                 of the gap is waiting for O_DIRECT writes that the page-cache servers put off \
                 until FLUSH; the rest (`--buffered` is still {:.2}× nbdkit) is the forced \
                 writeback (a write that needs a slot waits for a whole batch), which the \
                 page-cache servers do not have.",
                b.jobs[0].iops,
                ratio(b.jobs[0].iops, k.jobs[0].iops)
            ));
        } else {
            out.push_str(&format!(
                " `--buffered` changes little ({rb:.2}× O_DIRECT), so the page cache is not \
                 the difference."
            ));
        }
        out.push('\n');
    }

    // Random reads.
    let (rk, rq) = (
        ratio(w.jobs[1].iops, k.jobs[1].iops),
        ratio(w.jobs[1].iops, q.jobs[1].iops),
    );
    if rk.min(rq) < 1.0 {
        out.push_str(&format!(
            "- 4 KiB random reads: we lose ({rk:.2}× nbdkit, {rq:.2}× qemu-nbd). nbdkit and \
             qemu-nbd read the {} MiB file through the page cache, where the writes before \
             left much of it; wbcache reads with O_DIRECT from its cache file or the backing \
             file (each read is planned on arrival and its device read goes to that \
             device's executor: io_uring with up to 128 operations in flight where the kernel \
             allows it, else 16 I/O threads){}.",
            p.backing / MIB,
            w.jobs[1].wb.map_or(String::new(), |d| format!(
                " ({} reads hit the cache, {} went to the backing file)",
                d.read_hits, d.read_misses
            ))
        ));
        let rb = ratio(b.jobs[1].iops, w.jobs[1].iops);
        if rb > 1.2 {
            out.push_str(&format!(
                " With `--buffered`: {:.0} IOPS ({rb:.2}× O_DIRECT).",
                b.jobs[1].iops
            ));
        }
        out.push('\n');
    } else {
        out.push_str(&format!(
            "- 4 KiB random reads: wbcache is {rk:.2}× nbdkit and {rq:.2}× qemu-nbd (there is no \
             target for them).\n"
        ));
    }

    // Sequential writes.
    let (rk, rq) = (
        ratio(w.jobs[2].iops, k.jobs[2].iops),
        ratio(w.jobs[2].iops, q.jobs[2].iops),
    );
    if rk.min(rq) >= SEQ_FLOOR {
        out.push_str(&format!(
            "- 1 MiB sequential writes: wbcache is {rk:.2}× nbdkit and {rq:.2}× qemu-nbd, \
             within the target's floor of {SEQ_FLOOR}×."
        ));
        if let Some(d) = w.jobs[2].wb {
            out.push_str(&format!(
                " Sequential bypass sent {} of its {} writes straight to the backing file (the \
                 stream passes the 4 MiB cutoff after its first four); the rest went through \
                 the log, because they started a lap of the file or touched a block the \
                 cache still held from the random-write jobs ({} segments sealed, {} written \
                 back during the job).",
                d.bypassed, w.jobs[2].ios, d.sealed, d.written_back
            ));
        }
        out.push('\n');
    } else {
        out.push_str(&format!(
            "- 1 MiB sequential writes: **the target is not met** ({rk:.2}× nbdkit, {rq:.2}× \
             qemu-nbd; the floor is {SEQ_FLOOR}×)."
        ));
        if let Some(d) = w.jobs[2].wb {
            let written = w.jobs[2].bw * p.runtime_s as f64;
            let wb_bytes = d.written_back as f64 * per_seg as f64 * 4096.0;
            out.push_str(&format!(
                " The job wrote {:.0} MiB into a {} MiB cache, so it runs at the speed of \
                 writeback: {} segments (up to {:.0} MiB) were written back during it \
                 (contiguous blocks merged into O_DIRECT writes of up to 1 MiB), and once the \
                 ring is full a write waits for a slot that writeback has freed, while the \
                 others stream 1 MiB writes into the page cache.",
                written / MIB as f64,
                p.backing / CACHE_DIVISOR / MIB,
                d.written_back,
                wb_bytes / MIB as f64
            ));
        }
        let rb = ratio(b.jobs[2].iops, w.jobs[2].iops);
        if rb > 1.2 {
            out.push_str(&format!(
                " With `--buffered`: {:.1} MB/s ({rb:.2}× O_DIRECT).",
                b.jobs[2].bw / 1e6
            ));
        }
        out.push('\n');
    }
    if let Some(t1) = runs.iter().find(|r| r.label == TYPE1) {
        let r = ratio(t1.jobs[0].iops, w.jobs[0].iops);
        out.push_str(&format!(
            "- Type 1 (plog): {:.0} IOPS on the random writes with FLUSHes, {r:.2}× type 0{}\n",
            t1.jobs[0].iops,
            if r < 1.0 {
                ": slower here: type 1 writes every block twice on fast media (the plog entry, \
                 gathered until the FLUSH, and the full segment later) and both go through \
                 the one engine thread, while a FLUSH every 32 writes costs type 0 one partial \
                 segment write and one cache flush."
            } else {
                "."
            }
        ));
    }
    out.push_str(&fits_note(w, k, p));
    if let Some(t) = runs.iter().find(|r| r.label == THREADS) {
        let r: Vec<String> = (0..JOBS.len())
            .map(|j| format!("{:.2}×", ratio(t.jobs[j].iops, w.jobs[j].iops)))
            .collect();
        out.push_str(&format!(
            "- The thread pool (`--io-engine threads`) against the default executor (io_uring \
             where the kernel allows it): {} on the four jobs. Where the pool is ahead, \
             io_uring brings nothing on this machine yet (docs/DESIGN.md, \"Not yet here\").\n",
            r.join(", ")
        ));
    }
    out
}

impl Section for NbdFio {
    fn name(&self) -> &'static str {
        "nbd-fio"
    }

    fn title(&self) -> &'static str {
        "fio through NBD: wbcache against nbdkit file and qemu-nbd"
    }

    fn run(&self, mode: Mode) -> Result<String, String> {
        server::ensure_tools(&[
            ("fio", "fio"),
            ("nbdkit", "nbdkit"),
            ("qemu-nbd", "qemu-utils"),
        ])?;
        let bin = server::wbcache_bin()?;
        let p = params(mode);
        let scratch = Scratch::new("nbd-fio")?;
        let jobfile = scratch.path("nbd.fio");
        let checkfile = scratch.path("check.fio");
        let job_text = nbd_job_file(&p);
        let check_text = file_check_job(&p);
        for (path, text) in [(&jobfile, &job_text), (&checkfile, &check_text)] {
            std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let fs = Command::new("df")
            .args(["--output=fstype"])
            .arg(&scratch.dir)
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .nth(1)
                    .map(|l| l.trim().to_string())
            })
            .unwrap_or_else(|| "unknown filesystem".into());
        let started = Instant::now();
        let mut runs = Vec::new();
        for srv in SERVERS
            .iter()
            .filter(|s| mode == Mode::Full || !s.full_only)
        {
            runs.push(run_server(srv, &p, &bin, &scratch, &jobfile, &checkfile)?);
        }
        let fio_version = Command::new("fio")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let version = |tool: &str| {
            Command::new(tool)
                .arg("--version")
                .output()
                .ok()
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .next()
                        .map(str::to_string)
                })
                .unwrap_or_default()
        };

        let mut md = String::new();
        md.push_str(&format!(
            "Each server serves its own fresh {} MiB backing file on the same filesystem \
             ({fs}, under `target/bench-tmp/`), created the same way for all: written in full \
             by `fio --ioengine=psync --direct=1 --rw=write --bs=1m`, so it is allocated and \
             not in the page cache. fio ({fio_version}) connects with `ioengine=nbd` over a \
             Unix socket and runs the three jobs below in order, {} s each; then the data \
             check: fio writes every block again with a CRC-32C header per 4 KiB and reads it \
             back through the server in random order for at most {} s; after SIGTERM (and \
             for wbcache an offline `wbcache writeback`) fio verifies every block of the \
             backing file itself with O_DIRECT. A mismatch anywhere aborts the bench. IOPS \
             and MB/s (10⁶ bytes) are fio's; latency is fio's completion latency (clat) \
             p99.\n\n",
            p.backing / MIB,
            p.runtime_s,
            p.read_check_s
        ));
        md.push_str(&format!(
            "Servers (defaults unless shown): **wbcache** (type 0, order 10, O_DIRECT, 8 RAM \
             buffers, `allow_writeback 0`; cache file {} MiB = ¼ of the backing file, formatted \
             with `wbcache format --cache cache.img`); **nbdkit file** ({}; page cache, \
             FLUSH = fdatasync); **qemu-nbd** ({}; `cache=writeback`, `aio=threads`). \
             Diagnostic rows: **wbcache --buffered** (page cache instead of O_DIRECT), \
             **wbcache --io-engine threads** (each device's I/O on a pool of 16 threads instead \
             of io_uring, the default where the kernel allows it){}.\n\n",
            p.backing / CACHE_DIVISOR / MIB,
            version("nbdkit"),
            version("qemu-nbd"),
            if mode == Mode::Full {
                format!(
                    " and **wbcache type 1** (a {} MiB plog file, `wbcache format --cache \
                     cache.img --plog plog.img`)",
                    PLOG_BYTES / MIB
                )
            } else {
                "; full mode adds a type-1 cache with a plog file".to_string()
            },
        ));
        md.push_str(
            "Commands as run (paths relative to each server's scratch directory), and how much \
             the data check read back through the server (the backing-file check read all of \
             it for every server):\n\n",
        );
        for r in &runs {
            md.push_str(&format!(
                "- {}: `{}` (read back {} of {} MiB)\n",
                r.label,
                r.command,
                r.read_checked / MIB,
                p.backing / MIB
            ));
        }
        md.push_str("\nThe job file (`nbd.fio`):\n\n```ini\n");
        md.push_str(&job_text);
        md.push_str("```\n\nThe backing-file check (`check.fio`):\n\n```ini\n");
        md.push_str(&check_text);
        md.push_str("```\n\n");
        md.push_str(&results_table(&runs).to_markdown());
        md.push_str(
            "\n*segments sealed / partial / written back*: how far wbcache's `last_sealed_id`, \
             `nr_partial_flushed` (segments sealed by a FLUSH before they were full) and \
             `last_writeback_id` moved during the job.\n\n",
        );
        md.push_str(&ratio_table(&runs).to_markdown());
        md.push('\n');
        md.push_str(&notes(&runs, &p));
        md.push_str(&format!(
            "\n_(servers and checks took {:.0} s)_\n",
            started.elapsed().as_secs_f64()
        ));
        Ok(md)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fio_json_skips_what_the_nbd_engine_prints_first() {
        let v = fio_json("fio: connected to NBD server\n{\"jobs\":[{\"error\":0}]}").unwrap();
        assert_eq!(v.at(&["jobs", "0", "error"]).unwrap().num(), Some(0.0));
        assert!(fio_json("no json here").is_err());
    }

    #[test]
    fn job_results_come_from_the_jobs_direction() {
        let v = json::parse(
            r#"{"jobs":[{"error":0,"read":{"iops":1.0,"bw_bytes":4096,"total_ios":0},
                "write":{"iops":250.5,"bw_bytes":1026048,"total_ios":1000,
                "clat_ns":{"percentile":{"99.000000":2500000}}},
                "sync":{"total_ios":31}}]}"#,
        )
        .unwrap();
        let r = job_result(&v, &JOBS[0]).unwrap();
        assert_eq!((r.iops, r.ios), (250.5, 1000));
        assert_eq!(r.p99_ms, Some(2.5));
        assert!(job_result(&v, &JOBS[1]).is_err(), "no reads done");
    }

    fn run(label: &'static str, iops: [f64; 4], wb: bool) -> ServerRun {
        ServerRun {
            label,
            command: String::new(),
            jobs: iops
                .iter()
                .map(|&iops| JobResult {
                    iops,
                    bw: iops * 4096.0,
                    p99_ms: Some(1.0),
                    ios: (iops * 4.0) as u64,
                    wb: wb.then_some(WbDelta {
                        sealed: 100,
                        partial: 100,
                        written_back: 90,
                        read_hits: 1,
                        read_misses: 2,
                        bypassed: 0,
                    }),
                })
                .collect(),
            nr_cache_blocks: wb.then_some(16002),
            read_checked: 0,
        }
    }

    #[test]
    fn notes_follow_the_measured_ratios() {
        let p = params(Mode::Quick);
        let lose = [
            run(WBCACHE, [100.0, 100.0, 10.0, 100.0], true),
            run(NBDKIT, [1000.0, 1000.0, 100.0, 1000.0], false),
            run(QEMU, [500.0, 500.0, 50.0, 500.0], false),
            run(BUFFERED, [300.0, 900.0, 80.0, 300.0], true),
        ];
        let n = notes(&lose, &p);
        assert_eq!(n.matches("the target is not met").count(), 2, "{n}");
        assert!(n.contains("misses issue 17's target"), "{n}");
        assert!(n.contains("0.10× nbdkit and 0.20× qemu-nbd"), "{n}");
        assert!(n.contains("random reads: we lose"), "{n}");
        let win = [
            run(WBCACHE, [3000.0, 1000.0, 90.0, 2000.0], true),
            run(NBDKIT, [1000.0, 1000.0, 100.0, 1000.0], false),
            run(QEMU, [500.0, 500.0, 50.0, 500.0], false),
            run(BUFFERED, [3000.0, 900.0, 80.0, 2000.0], true),
        ];
        let n = notes(&win, &p);
        assert!(!n.contains("not met") && !n.contains("we lose"), "{n}");
        assert!(
            n.contains("2.00× nbdkit, which meets issue 17's target"),
            "{n}"
        );
        assert!(n.contains("meets the target"), "{n}");
        let t = ratio_table(&win).to_markdown();
        assert!(
            t.contains("3.00×") && t.contains("wbcache --buffered ÷ nbdkit"),
            "{t}"
        );
    }

    #[test]
    fn job_files_name_every_section() {
        let p = params(Mode::Quick);
        let t = nbd_job_file(&p);
        for s in [
            "[randwrite-4k]",
            "[randread-4k]",
            "[write-1m]",
            "[randwrite-4k-fits]",
            "size=32m",
            "[verify-read]",
            "fsync=32",
        ] {
            assert!(t.contains(s), "{s} missing from\n{t}");
        }
        assert!(t.contains("size=256m") && t.contains("uri=${URI}"));
        let c = file_check_job(&p);
        assert!(c.contains("verify_only=1") && c.contains("filename=${FILE}"));
    }
}
