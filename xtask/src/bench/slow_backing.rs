//! Section `slow-backing` (issue 17): what a write-back cache is for. The backing device is a
//! slow NBD export, `nbdkit --filter=noparallel --filter=delay file backing.img` (one request
//! at a time, 4 ms per read and per write: a disk-like device), and fio runs the same jobs
//! against it directly, through nbdkit's own write-back cache filter (a second nbdkit with the
//! `nbd` plugin in front of the slow export: the nearest userspace peer), and through
//! `wbcache serve --backing nbd+unix:///?socket=…` with its cache on the local disk, as type 0
//! (RAM buffers) and as type 1 (a persistent log on the local disk too).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::nbd_fio::json::Json;
use super::nbd_fio::{fio_json, layout_command};
use super::server::{self, Proc, Scratch};
use super::{Mode, Section, Table};

use super::server::MIB;
/// The slow export's delay per read and per write (`delay-read`, `delay-write`), one request at
/// a time (`noparallel`, `serialize=all-requests`).
const DELAY_MS: u64 = 4;

struct Params {
    backing: u64,
    cache: u64,
    /// The random jobs' working set: fits the cache.
    working_set: u64,
    runtime_s: u64,
}

fn params(mode: Mode) -> Params {
    match mode {
        Mode::Quick => Params {
            backing: 256 * MIB,
            cache: 128 * MIB,
            working_set: 16 * MIB,
            runtime_s: 3,
        },
        Mode::Full => Params {
            backing: 1024 * MIB,
            cache: 256 * MIB,
            working_set: 64 * MIB,
            runtime_s: 20,
        },
    }
}

/// (job name, what it does, fio's JSON direction, the job file section).
const JOBS: [(&str, &str, &str, &str); 3] = [
    (
        "randwrite-ws",
        "4 KiB random writes in a working set that fits the cache, QD 32, FLUSH every 32",
        "write",
        "rw=randwrite\nbs=4k\niodepth=32\nfsync=32\nsize=${WS}\n",
    ),
    (
        "randread-ws",
        "4 KiB random reads of the data just written, QD 32",
        "read",
        "rw=randread\nbs=4k\niodepth=32\nsize=${WS}\n",
    ),
    (
        "write-1m",
        "1 MiB sequential writes, QD 8, FLUSH every 256",
        "write",
        "rw=write\nbs=1m\niodepth=8\nfsync=256\n",
    ),
];

fn job_file(p: &Params) -> String {
    let mut s = format!(
        "[global]\nioengine=nbd\nuri=${{URI}}\nsize={}m\nrandseed=20240601\ntime_based=1\n\
         runtime={}\n",
        p.backing / MIB,
        p.runtime_s
    );
    for (name, _, _, body) in JOBS {
        s.push_str(&format!(
            "\n[{name}]\n{}",
            body.replace("${WS}", &format!("{}m", p.working_set / MIB))
        ));
    }
    s
}

#[derive(Clone, Copy, PartialEq)]
enum Who {
    Direct,
    NbdkitCache,
    Wbcache,
    WbcacheType1,
}

/// Every front, in the report's order.
const WHOS: [Who; 4] = [
    Who::Direct,
    Who::NbdkitCache,
    Who::Wbcache,
    Who::WbcacheType1,
];

/// The persistent log of the type-1 front: 28 regions of a 512 KiB segment.
const PLOG_BYTES: u64 = 64 * MIB;

impl Who {
    fn label(self) -> &'static str {
        match self {
            Who::Direct => "slow export directly",
            Who::NbdkitCache => "nbdkit cache filter",
            Who::Wbcache => "wbcache",
            Who::WbcacheType1 => "wbcache type 1",
        }
    }
}

/// (IOPS, MB/s, p99 ms) of each job.
type Figures = Vec<(f64, f64, Option<f64>)>;

/// wbcache's counters over one job.
#[derive(Clone, Copy, Default)]
struct Counted {
    /// Writes sent straight to the export by sequential bypass.
    bypassed: u64,
    sealed: u64,
    /// Segments sealed by a FLUSH before they were full.
    partial: u64,
    written_back: u64,
    read_hits: u64,
    read_misses: u64,
}

type Counters = Vec<Counted>;

fn slow_export(dir: &Path, socket: &Path) -> Result<Proc, String> {
    let mut c = Command::new("nbdkit");
    c.current_dir(dir)
        .args(["--foreground", "--exit-with-parent", "-U"]);
    c.arg(socket).args([
        "--filter=noparallel",
        "--filter=delay",
        "file",
        "backing.img",
        &format!("delay-read={DELAY_MS}ms"),
        &format!("delay-write={DELAY_MS}ms"),
        "serialize=all-requests",
    ]);
    let mut p = Proc::spawn("slow nbdkit", &mut c, &dir.join("slow.log"))?;
    p.wait_socket(socket, Duration::from_secs(20))?;
    Ok(p)
}

fn front(who: Who, dir: &Path, slow: &Path, p: &Params) -> Result<(Option<Proc>, String), String> {
    let slow_uri = format!("nbd+unix:///?socket={}", slow.display());
    let socket = dir.join("front.sock");
    let mut c = match who {
        Who::Direct => return Ok((None, slow_uri)),
        Who::NbdkitCache => {
            let mut c = Command::new("nbdkit");
            c.args(["--foreground", "--exit-with-parent", "-U"])
                .arg(&socket)
                .args(["--filter=cache", "nbd"])
                .arg(format!("socket={}", slow.display()))
                .arg("cache=writeback");
            c
        }
        Who::Wbcache | Who::WbcacheType1 => {
            let bin = server::wbcache_bin()?;
            let cache = dir.join("cache.img");
            server::sparse_file(&cache, p.cache)?;
            let mut f = Command::new(&bin);
            f.arg("format").arg("--cache").arg(&cache);
            let plog = dir.join("plog.img");
            if who == Who::WbcacheType1 {
                server::sparse_file(&plog, PLOG_BYTES)?;
                f.arg("--plog").arg(&plog);
            }
            server::run_tool(&mut f, dir, Duration::from_secs(120))?;
            let mut c = Command::new(bin);
            c.arg("serve");
            if who == Who::WbcacheType1 {
                c.arg("--plog").arg(&plog);
            }
            c.arg("--backing")
                .arg(&slow_uri)
                .arg("--cache")
                .arg(&cache)
                .arg("--socket")
                .arg(&socket)
                .arg("--control")
                .arg(dir.join("control.sock"));
            c
        }
    };
    let mut proc = Proc::spawn(who.label(), &mut c, &dir.join("front.log"))?;
    proc.wait_socket(&socket, Duration::from_secs(30))?;
    Ok((
        Some(proc),
        format!("nbd+unix:///?socket={}", socket.display()),
    ))
}

/// wbcache's counters now (totals since it started).
fn counters(dir: &Path) -> Result<Counted, String> {
    let st = server::wbcache_status(&server::wbcache_bin()?, &dir.join("control.sock"), dir)?;
    let sum = |prefix: &str| {
        st.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .filter_map(|(_, v)| v.parse::<u64>().ok())
            .sum::<u64>()
    };
    Ok(Counted {
        bypassed: server::status_u64(&st, "bypassed_writes")?,
        sealed: server::status_u64(&st, "last_sealed_id")?,
        partial: server::status_u64(&st, "nr_partial_flushed")?,
        written_back: server::status_u64(&st, "last_writeback_id")?,
        read_hits: sum("stat_read_hit_"),
        read_misses: sum("stat_read_miss_"),
    })
}

fn run_one(who: Who, p: &Params, scratch: &Scratch) -> Result<(Figures, Counters), String> {
    let dir = scratch.path(&who.label().replace(' ', "_"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let long = Duration::from_secs(600);
    server::run_tool(
        &mut layout_command(&dir.join("backing.img"), p.backing, false),
        &dir,
        long,
    )?;
    let slow_sock = dir.join("slow.sock");
    let slow = slow_export(&dir, &slow_sock)?;
    let (front, uri) = front(who, &dir, &slow_sock, p)?;
    let jobfile = dir.join("slow.fio");
    std::fs::write(&jobfile, job_file(p)).map_err(|e| format!("{}: {e}", jobfile.display()))?;
    let mut out = Vec::new();
    let mut counted = Vec::new();
    for (name, _, d, _) in JOBS {
        eprintln!("bench: slow-backing {}: {name}", who.label());
        let wbcache = matches!(who, Who::Wbcache | Who::WbcacheType1);
        let before = wbcache.then(|| counters(&dir)).transpose()?;
        let json_path = dir.join("fio.json");
        let mut c = Command::new("fio");
        c.env("URI", &uri)
            .arg("--output-format=json")
            .arg(format!("--output={}", json_path.display()))
            .arg(format!("--section={name}"))
            .arg(&jobfile);
        server::run_tool(&mut c, &dir, long)?;
        let text = std::fs::read_to_string(&json_path)
            .map_err(|e| format!("{}: {e}", json_path.display()))?;
        let j = fio_json(&text)?;
        let num = |path: &[&str]| j.at(path).and_then(Json::num);
        if num(&["jobs", "0", "error"]) != Some(0.0) {
            return Err(format!(
                "fio job {name} against {} reported an error",
                who.label()
            ));
        }
        out.push((
            num(&["jobs", "0", d, "iops"]).ok_or("no iops in fio's JSON")?,
            num(&["jobs", "0", d, "bw_bytes"]).unwrap_or(0.0) / 1e6,
            num(&["jobs", "0", d, "clat_ns", "percentile", "99.000000"]).map(|ns| ns / 1e6),
        ));
        if let Some(b) = before {
            let a = counters(&dir)?;
            counted.push(Counted {
                bypassed: a.bypassed - b.bypassed,
                sealed: a.sealed - b.sealed,
                partial: a.partial - b.partial,
                written_back: a.written_back - b.written_back,
                read_hits: a.read_hits - b.read_hits,
                read_misses: a.read_misses - b.read_misses,
            });
        }
    }
    if let Some(f) = front {
        f.stop(Duration::from_secs(120))?;
    }
    slow.stop(Duration::from_secs(30))?;
    Ok((out, counted))
}

pub struct SlowBacking;

impl Section for SlowBacking {
    fn name(&self) -> &'static str {
        "slow-backing"
    }

    fn title(&self) -> &'static str {
        "A slow backing device: wbcache against the device alone and nbdkit's cache filter"
    }

    fn run(&self, mode: Mode) -> Result<String, String> {
        server::ensure_tools(&[("fio", "fio"), ("nbdkit", "nbdkit")])?;
        let p = params(mode);
        let scratch = Scratch::new("slow-backing")?;
        let mut figs = Vec::new();
        let mut counted = Vec::new();
        for who in WHOS {
            let (f, c) = run_one(who, &p, &scratch)?;
            figs.push(f);
            counted.push(c);
        }
        Ok(report(&p, &figs, &counted))
    }
}

/// `figs` by front (`WHOS`); `counted` by front too (empty for the fronts without counters).
fn report(p: &Params, figs: &[Figures], counted: &[Counters]) -> String {
    let mut out = format!(
        "The backing device is a {} MiB file served by `nbdkit --filter=noparallel \
         --filter=delay file backing.img delay-read={DELAY_MS}ms delay-write={DELAY_MS}ms \
         serialize=all-requests` over a Unix socket: one request at a time, {DELAY_MS} ms each, \
         like a disk. Each front gets a fresh one. **nbdkit cache filter**: a second nbdkit, \
         `--filter=cache nbd socket=… cache=writeback`, in front of it. **wbcache**: `wbcache \
         serve --backing nbd+unix:///?socket=…` with a {} MiB cache file on the local disk \
         (defaults otherwise: type 0, O_DIRECT, writeback ahead of need). **wbcache type 1**: \
         the same with a {} MiB persistent log beside it (`wbcache format --plog`, `serve \
         --plog`), so a FLUSH needs only the log durable and no segment is sealed for it. fio \
         (`ioengine=nbd`) runs each job for {} s; the random jobs stay in a {} MiB working \
         set.\n\n",
        p.backing / MIB,
        p.cache / MIB,
        PLOG_BYTES / MIB,
        p.runtime_s,
        p.working_set / MIB
    );
    let mut t = Table::new(&[
        "job",
        "front",
        "IOPS",
        "MB/s",
        "p99 ms",
        "÷ direct",
        "÷ nbdkit cache",
    ]);
    for (j, (name, _, _, _)) in JOBS.iter().enumerate() {
        for (w, who) in WHOS.iter().enumerate() {
            let (iops, mbs, p99) = figs[w][j];
            let r = |k: usize| format!("{:.2}×", iops / figs[k][j].0.max(1e-9));
            t.row(vec![
                name.to_string(),
                who.label().to_string(),
                format!("{iops:.0}"),
                format!("{mbs:.1}"),
                p99.map_or("—".into(), |v| format!("{v:.2}")),
                r(0),
                r(1),
            ]);
        }
    }
    out.push_str(&t.to_markdown());
    out.push('\n');
    for (name, what, _, _) in JOBS {
        out.push_str(&format!("- {name}: {what}.\n"));
    }
    for w in [2, 3] {
        out.push_str(&targets(figs, w, &counted[w]));
    }
    out.push('\n');
    out
}

/// The targets line of the wbcache front `w`, and why each missed one was missed, from its
/// counters.
fn targets(figs: &[Figures], w: usize, wb: &[Counted]) -> String {
    let (wr, wn) = (ratio(figs, 0, w, 0), ratio(figs, 0, w, 1));
    let rr = ratio(figs, 1, w, 0);
    let sr = ratio(figs, 2, w, 0);
    let mut out = format!(
        "\n\nTargets (issue 17) for **{}**, each a ratio in this run: random writes with \
         FLUSHes ≥ 10× the direct export ({wr:.1}×: {}) and ≥ 2× nbdkit's cache filter \
         ({wn:.2}×: {}); random reads of recently written data ≥ 5× the direct export \
         ({rr:.1}×: {}); 1 MiB sequential writes ≥ 0.9× the direct export ({sr:.2}×: {}).",
        WHOS[w].label(),
        met(wr >= 10.0),
        met(wn >= 2.0),
        met(rr >= 5.0),
        met(sr >= 0.9)
    );
    if let (Some(c), false) = (wb.first(), wr >= 10.0) {
        out.push_str(&format!(
            " Random writes: {} segments were sealed during the job, {} of them partial (a \
             FLUSH every 32 writes seals the open segment, so a slot holds a fraction of what \
             it could and the ring turns fast), and {} were written back to the export, one \
             4 ms request at a time for blocks that are not contiguous: once the ring is full \
             a write waits for writeback to free a slot, so the export's pace bounds the job.",
            c.sealed, c.partial, c.written_back
        ));
    }
    if let (Some(c), false) = (wb.get(1), rr >= 5.0) {
        out.push_str(&format!(
            " Random reads: {} hit the cache and {} missed (4 ms each at the export). A miss \
             is a block the random-write job never wrote (its writes do not cover the working \
             set) or one whose slot was reused since it was written back (a written-back block \
             stays readable from its logged copy until then, R17, but the partial segments of \
             the write job turn the ring fast; there is no read caching of misses).",
            c.read_hits, c.read_misses
        ));
    }
    if let Some(c) = wb.get(2) {
        out.push_str(&format!(
            " During the sequential job it sent {} writes straight to the export (sequential \
             bypass: a stream past the 4 MiB cutoff) and sealed {} segments for the rest (the \
             first 4 MiB of each stream, and writes over blocks the random jobs left in the \
             cache).",
            c.bypassed, c.sealed
        ));
        if sr < 0.9 {
            out.push_str(
                " The logged part is written twice, to the cache and, by writeback, to the \
                 export, which serves one request at a time: that is where the time goes.",
            );
        }
    }
    out
}

fn ratio(figs: &[Figures], job: usize, a: usize, b: usize) -> f64 {
    figs[a][job].0 / figs[b][job].0.max(1e-9)
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**not met**"
    }
}
