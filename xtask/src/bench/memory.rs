//! Section: resident memory per GiB of cache (issue 8, point 5).
//!
//! For each cache size: a sparse cache file formatted at order 10 and a sparse backing file of
//! the same size, `wbcache serve` with `allow_writeback 0` (the default, stated explicitly) and
//! `--no-write-back-ahead` (writeback ahead of need would keep the cache from filling),
//! VmRSS read from /proc/PID/status once it serves, then fio (`ioengine=nbd`) writes one
//! segment's worth of distinct blocks per slot, all slots but the last, so every cache block
//! but one segment's is dirty, nothing is written back, and every lazily zeroed page of the
//! index is touched; fio reads it all back and checks a CRC-32C per 4 KiB (a mismatch aborts the
//! bench) and the server's status must show exactly that many dirty blocks. Then VmRSS, VmHWM
//! and RssAnon are read again. The slope between the smallest and the largest cache is the
//! per-GiB cost, the rest the fixed cost; both are compared with what the engine's data
//! structures should take (engine/src/index.rs) and with upstream dm-writeboost's in-kernel
//! metadata (computed from the seed's structs, not measured).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use engine::index::Mb;

use super::nbd_fio::fio_json;
use super::server::{self, mib, Proc, Scratch, GIB, KIB, MIB};
use super::{Mode, Section, Table};

pub struct Memory;

const ORDER: u8 = 10;
/// Blocks per segment at order 10: 2^(10-3) 4 KiB units less one for the header.
const PER_SEG: u64 = (1 << (ORDER - 3)) - 1;
const SEGMENT_BYTES: u64 = 512 << ORDER;
/// `wbcache serve --nr_rambuf_pool` default: RAM buffers of one segment each.
const POOL: u64 = 8;
/// `SlotInfo` (engine/src/cache.rs: u64 id + usize len, crate-private so not sized here) and
/// the index's per-slot live count (u32).
const PER_SLOT_BYTES: u64 = 16 + 4;
/// fio's queue depth for the fill: the connection thread's allocator arena keeps about this
/// many freed request buffers (one segment's worth of data each), which is memory the index
/// does not explain; a low depth keeps that small and steady between cache sizes.
const FILL_QD: u32 = 2;
/// hashbrown's control bytes: one per bucket plus one group (16 with SSE2).
const GROUP_WIDTH: u64 = 16;

fn sizes(mode: Mode) -> Vec<u64> {
    match mode {
        Mode::Quick => vec![64 * MIB, 256 * MIB, GIB],
        Mode::Full => vec![64 * MIB, 256 * MIB, GIB, 4 * GIB],
    }
}

/// Buckets of a `HashMap` (hashbrown) that grew one insert at a time to `n` entries: the
/// smallest power of two, at least 4, whose load limit (7/8, or 3 of 4) holds them.
fn hash_buckets(n: u64) -> u64 {
    let mut b = 4u64;
    loop {
        let cap = if b < 8 { b - 1 } else { b / 8 * 7 };
        if cap >= n {
            return b;
        }
        b *= 2;
    }
}

/// What the engine's index should take with `live` of `blocks` cache blocks dirty in
/// `slots` segments: one `Mb` per cache block (allocated and written at start), one map entry
/// (u64 block, u32 index) per live block in a power-of-two table, and the per-slot counters.
fn expected_index_bytes(blocks: u64, live: u64, slots: u64) -> u64 {
    let mb = std::mem::size_of::<Mb>() as u64;
    let entry = std::mem::size_of::<(u64, u32)>() as u64;
    let buckets = hash_buckets(live);
    blocks * mb + buckets * (entry + 1) + GROUP_WIDTH + slots * PER_SLOT_BYTES
}

/// Upstream dm-writeboost's in-kernel metadata per GiB of cache at order 10, from the seed
/// (shared/seeds/000_ca3567e163ef2773.txt): `struct metablock` is 40 bytes on 64-bit (sector_t
/// 8, u32 idx 4 + 4 padding, hlist_node 16, u8 dirty_bits + 7 padding); `struct
/// segment_header` is 32 bytes followed by its 127 metablocks, kept in a `large_array` of
/// 64 KiB parts that holds whole elements only (12 per part); the hash table has one 8-byte
/// `hlist_head` per cache block plus one, also in 64 KiB parts.
fn upstream_bytes_per_gib() -> u64 {
    const PART: u64 = 64 * KIB;
    let segs = GIB / SEGMENT_BYTES;
    let blocks = segs * PER_SEG;
    let seg_elem = 32 + PER_SEG * 40;
    let seg_parts = segs.div_ceil(PART / seg_elem);
    let ht_parts = (blocks + 1).div_ceil(PART / 8);
    (seg_parts + ht_parts) * PART
}

struct Run {
    cache: u64,
    blocks: u64,
    slots: u64,
    dirty: u64,
    rss_idle: u64,
    rss_full: u64,
    hwm: u64,
    anon_full: u64,
    file_full: u64,
    checked: u64,
    expected: u64,
}

/// The bytes fio's JSON output (in `path`) says were read.
fn read_bytes(path: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    fio_json(&text)?
        .at(&["jobs", "0", "read", "io_bytes"])
        .and_then(|v| v.num())
        .map(|n| n as u64)
        .ok_or_else(|| format!("no read io_bytes in fio's output {}", path.display()))
}

impl Run {
    /// Anonymous memory that is neither the index (as expected) nor the RAM buffers.
    fn other_anon_mib(&self) -> f64 {
        (self.anon_full as f64 - self.expected as f64 - (POOL * SEGMENT_BYTES) as f64) / MIB as f64
    }
}

fn run_one(bin: &Path, scratch: &Scratch, size: u64, read_check_s: u64) -> Result<Run, String> {
    let dir = scratch.path(&format!("cache-{}m", size / MIB));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (cache, backing) = (dir.join("cache.img"), dir.join("backing.img"));
    let t0 = std::time::Instant::now();
    let socket = dir.join("nbd.sock");
    let control = dir.join("nbd.sock.ctl");
    server::sparse_file(&cache, size)?;
    server::sparse_file(&backing, size)?;
    server::run_tool(
        Command::new(bin)
            .arg("format")
            .arg("--cache")
            .arg(&cache)
            .args(["--order", &ORDER.to_string()]),
        &dir,
        Duration::from_secs(120),
    )?;
    let mut proc = Proc::spawn(
        "wbcache serve",
        Command::new(bin)
            .arg("serve")
            .arg("--backing")
            .arg(&backing)
            .arg("--cache")
            .arg(&cache)
            .arg("--socket")
            .arg(&socket)
            // A full cache is what is measured: no writeback, not even ahead of need, and no
            // sequential bypass (the fill is one long stream).
            .args(["--allow_writeback", "0", "--no-write-back-ahead"])
            .args(["--sequential_cutoff", "0"]),
        &dir.join("server.log"),
    )?;
    proc.wait_socket(&socket, Duration::from_secs(60))?;
    let st = server::wbcache_status(bin, &control, &dir)?;
    let blocks = server::status_u64(&st, "nr_cache_blocks")?;
    let slots = server::status_u64(&st, "nr_segments")?;
    if blocks != slots * PER_SEG {
        return Err(format!(
            "{blocks} cache blocks in {slots} segments is not {PER_SEG} per segment"
        ));
    }
    let rss_idle = server::proc_status_bytes(proc.pid(), "VmRSS")?;

    // All slots but the last: the ring never wraps, so no forced writeback.
    let fill = (slots - 1) * PER_SEG;
    eprintln!(
        "bench: memory: {} MiB cache (+{:.1} s): writing {} MiB through NBD and reading it back",
        size / MIB,
        t0.elapsed().as_secs_f64(),
        fill * 4 / KIB
    );
    let uri = format!("--uri=nbd+unix:///?socket={}", socket.display());
    let fio = |args: &[&str]| -> Result<(), String> {
        let common = [
            "--ioengine=nbd",
            &uri,
            &format!("--bs={}k", PER_SEG * 4),
            &format!("--size={}", fill * 4 * KIB),
            &format!("--iodepth={FILL_QD}"),
            "--verify=crc32c",
            "--verify_interval=4k",
            "--verify_fatal=1",
            "--verify_state_save=0",
        ];
        server::run_tool(
            Command::new("fio").args(common).args(args),
            &dir,
            Duration::from_secs(900),
        )
        .map(|_| ())
    };
    fio(&[
        "--name=fill",
        "--rw=write",
        "--end_fsync=1",
        "--do_verify=0",
    ])
    .map_err(|e| format!("filling the {} MiB cache failed: {e}", size / MIB))?;
    let st = server::wbcache_status(bin, &control, &dir)?;
    let dirty = server::status_u64(&st, "nr_dirty_cache_blocks")?;
    let written_back = server::status_u64(&st, "last_writeback_id")?;
    if dirty != fill || written_back != 0 {
        return Err(format!(
            "after writing {fill} distinct blocks the cache holds {dirty} dirty ones and wrote \
             back up to segment {written_back}: it is not full as the section needs"
        ));
    }
    eprintln!(
        "bench: memory: {} MiB cache (+{:.1} s): filled",
        size / MIB,
        t0.elapsed().as_secs_f64()
    );
    let pid = proc.pid();
    let rss_full = server::proc_status_bytes(pid, "VmRSS")?;
    let hwm = server::proc_status_bytes(pid, "VmHWM")?;
    let anon_full = server::proc_status_bytes(pid, "RssAnon")?;
    let file_full = server::proc_status_bytes(pid, "RssFile")?;
    // Read back (after the measurement) in random order, all of it or what the time allows;
    // fio checks every 4 KiB block's CRC-32C and offset.
    let out = dir.join("check.json");
    fio(&[
        "--name=check",
        "--rw=randread",
        &format!("--runtime={read_check_s}"),
        "--output-format=json",
        &format!("--output={}", out.display()),
    ])
    .map_err(|e| {
        format!(
            "reading back the {} MiB cache: fio found data other than it wrote: {e}",
            size / MIB
        )
    })?;
    let checked = read_bytes(&out)?;
    let (status, log) = proc.stop(Duration::from_secs(300))?;
    if !status.success() || !log.contains("clean shutdown") {
        return Err(format!(
            "wbcache serve: no clean shutdown after SIGTERM ({status}); its log:\n{log}"
        ));
    }
    eprintln!(
        "bench: memory: {} MiB cache (+{:.1} s): stopped",
        size / MIB,
        t0.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Run {
        cache: size,
        blocks,
        slots,
        dirty,
        rss_idle,
        rss_full,
        hwm,
        anon_full,
        file_full,
        checked,
        expected: expected_index_bytes(blocks, dirty, slots),
    })
}

/// (MiB per GiB, fixed MiB) of the line through the smallest and the largest run.
fn fit(runs: &[Run], y: impl Fn(&Run) -> u64) -> (f64, f64) {
    let (a, b) = (&runs[0], &runs[runs.len() - 1]);
    let gib = |r: &Run| r.cache as f64 / GIB as f64;
    let to_mib = |r: &Run| y(r) as f64 / MIB as f64;
    let slope = (to_mib(b) - to_mib(a)) / (gib(b) - gib(a));
    (slope, to_mib(a) - slope * gib(a))
}

impl Section for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn title(&self) -> &'static str {
        "Resident memory per GiB of cache"
    }

    fn run(&self, mode: Mode) -> Result<String, String> {
        server::ensure_tools(&[("fio", "fio")])?;
        let bin = server::wbcache_bin()?;
        let scratch = Scratch::new("memory")?;
        let read_check_s = match mode {
            Mode::Quick => 3,
            Mode::Full => 20,
        };
        let mut runs = Vec::new();
        for size in sizes(mode) {
            runs.push(run_one(&bin, &scratch, size, read_check_s)?);
        }
        Ok(report(&runs, read_check_s))
    }
}

fn report(runs: &[Run], read_check_s: u64) -> String {
    let mut md = String::new();
    md.push_str(&format!(
        "Per size: `wbcache format --cache cache.img` (order {ORDER}) on a sparse file, \
         `wbcache serve --backing backing.img --cache cache.img --socket nbd.sock \
         --allow_writeback 0 --no-write-back-ahead --sequential_cutoff 0` (backing: a sparse \
         file of the same size; \
         O_DIRECT; {POOL} RAM \
         buffers of {} KiB), then `fio --ioengine=nbd --rw=write --bs={}k --iodepth={FILL_QD} \
         --end_fsync=1 --verify=crc32c --verify_interval=4k --do_verify=0` over all segments \
         but one, so every cache block but one segment's is dirty and none is written back \
         (the server's status must say exactly that). *idle*: VmRSS once serving; *full*, \
         VmHWM, RssAnon: after the fill. Then fio reads the data back through the server in \
         random order and checks every 4 KiB block (all of it, or what {read_check_s} s \
         allow; *checked*). \
         *expected index*: {} bytes per cache block (`engine::index::Mb`, allocated and \
         written at start), a hash-map entry of {} bytes plus a control byte per bucket for \
         each dirty block (hashbrown: a power-of-two table at most 7/8 full), \
         {PER_SLOT_BYTES} bytes per segment.\n\n",
        SEGMENT_BYTES / KIB,
        PER_SEG * 4,
        std::mem::size_of::<Mb>(),
        std::mem::size_of::<(u64, u32)>(),
    ));
    let mut t = Table::new(&[
        "cache",
        "segments",
        "cache blocks",
        "dirty blocks",
        "checked MiB",
        "VmRSS idle MiB",
        "VmRSS full MiB",
        "VmHWM MiB",
        "RssAnon full MiB",
        "expected index MiB",
        "RssAnon − index − RAM buffers MiB",
    ]);
    for r in runs {
        t.row(vec![
            format!("{} MiB", r.cache / MIB),
            r.slots.to_string(),
            r.blocks.to_string(),
            r.dirty.to_string(),
            (r.checked / MIB).to_string(),
            mib(r.rss_idle),
            mib(r.rss_full),
            mib(r.hwm),
            mib(r.anon_full),
            mib(r.expected),
            format!("{:.1}", r.other_anon_mib()),
        ]);
    }
    md.push_str(&t.to_markdown());

    let (slope, fixed) = fit(runs, |r| r.rss_full);
    let (hwm_slope, _) = fit(runs, |r| r.hwm);
    let (exp_slope, exp_fixed) = fit(runs, |r| r.expected);
    let up = upstream_bytes_per_gib() as f64 / MIB as f64;
    let (a, b) = (&runs[0], &runs[runs.len() - 1]);
    let per_block =
        |mib_per_gib: f64| mib_per_gib * MIB as f64 / (GIB / SEGMENT_BYTES * PER_SEG) as f64;
    let mut f = Table::new(&["", "MiB per GiB of cache", "bytes per cache block"]);
    for (name, v) in [
        ("measured VmRSS (full), slope", slope),
        ("measured VmHWM, slope", hwm_slope),
        ("expected index, slope", exp_slope),
        ("upstream dm-writeboost metadata (computed)", up),
    ] {
        f.row(vec![
            name.to_string(),
            format!("{v:.2}"),
            format!("{:.1}", per_block(v)),
        ]);
    }
    md.push_str(&format!(
        "\nLinear fit of VmRSS (full) between {} MiB and {} MiB: **{slope:.2} MiB per GiB of \
         cache** plus a fixed **{fixed:.1} MiB**.\n\n",
        a.cache / MIB,
        b.cache / MIB
    ));
    md.push_str(&f.to_markdown());
    md.push('\n');

    // Notes from the numbers.
    let ratio = slope / exp_slope;
    md.push_str(&format!(
        "- Per GiB: measured {slope:.2} MiB against {exp_slope:.2} MiB expected from the index \
         ({ratio:.2}×, {:.1} bytes against {:.1} per cache block){}\n",
        per_block(slope),
        per_block(exp_slope),
        if (0.9..=1.1).contains(&ratio) {
            ": the index is the per-GiB cost, as designed.".to_string()
        } else {
            format!(
                "; {:.2} MiB per GiB is not explained by the index's structures{}.",
                slope - exp_slope,
                if hwm_slope > slope * 1.05 {
                    " (the peak grows faster still: a hash-map resize holds the old and the \
                     doubled table at once)"
                } else {
                    ""
                }
            )
        }
    ));
    let pool = (POOL * SEGMENT_BYTES) as f64 / MIB as f64;
    let file = a.file_full as f64 / MIB as f64;
    let other_anon = a.other_anon_mib();
    let exp_fixed = if exp_fixed.abs() < 0.05 {
        0.0
    } else {
        exp_fixed
    };
    let residue = if other_anon >= 0.0 {
        format!(
            "which leaves {other_anon:.1} MiB: thread stacks, and allocator arenas that keep \
             the freed request buffers of the fill ({} KiB writes, {FILL_QD} in flight)",
            PER_SEG * 4
        )
    } else {
        format!(
            "which is {:.1} MiB more than there is, so not all RAM buffers were resident",
            -other_anon
        )
    };
    md.push_str(&format!(
        "- Fixed part: {fixed:.1} MiB (the index's own is {exp_fixed:.1} MiB). With the {} MiB \
         cache, {file:.1} MiB of the resident memory are file-backed (the binary and its \
         libraries, RssFile) and {:.1} MiB anonymous; of that, the index should be {:.1} MiB \
         and the {POOL} RAM buffers at most {pool:.1} MiB (allocated zeroed, so resident only \
         once used, and a run need not touch all of them), {residue}. What is neither index \
         nor RAM buffers varies by a few MiB from run to run (last column), which is the error \
         of the fit. The idle server had {} MiB resident.\n",
        a.cache / MIB,
        a.anon_full as f64 / MIB as f64,
        a.expected as f64 / MIB as f64,
        mib(a.rss_idle)
    ));
    // The peak: while the map doubles, the old table (half the buckets) and the new one are
    // both allocated.
    let entry = std::mem::size_of::<(u64, u32)>() as u64 + 1;
    let old_table = hash_buckets(b.dirty) / 2 * entry;
    let peak = (b.hwm as f64 - b.rss_full as f64) / MIB as f64;
    let old = old_table as f64 / MIB as f64;
    md.push_str(&format!(
        "- Peak: VmHWM exceeds VmRSS by {peak:.1} MiB with the {} MiB cache (VmHWM slope \
         {hwm_slope:.2} MiB per GiB); {}\n",
        b.cache / MIB,
        if (peak - old).abs() <= old / 2.0 {
            format!(
                "that is the hash map's last resize, which held its old table ({old:.1} MiB) \
                 next to the doubled one."
            )
        } else {
            format!(
                "the hash map's last resize, which held its old table next to the doubled \
                 one, explains {old:.1} MiB of it."
            )
        }
    ));
    let vs = slope / up;
    md.push_str(&format!(
        "- Upstream dm-writeboost keeps {up:.2} MiB of metadata per GiB of cache in the kernel \
         ({:.1} bytes per cache block, computed from the seed's structs: a 40-byte metablock \
         per block in 64 KiB parts, plus an 8-byte hash head per block; not measured) and the \
         same {POOL} × {} KiB RAM buffers. wbcache's measured slope is {vs:.2}× that{}\n",
        per_block(up),
        SEGMENT_BYTES / KIB,
        if vs > 1.05 {
            ": more, because a hash-map entry (16 bytes in a power-of-two table, up to half \
             empty) costs more than upstream's intrusive list pointers, even with a 24-byte \
             metablock against upstream's 40."
        } else if vs < 0.95 {
            ": less, because a 24-byte metablock plus the hash entry is smaller than \
             upstream's 40-byte metablock with list pointers and hash heads."
        } else {
            ": about the same."
        }
    ));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_buckets_follow_hashbrown_growth() {
        assert_eq!(hash_buckets(0), 4);
        assert_eq!(hash_buckets(3), 4);
        assert_eq!(hash_buckets(4), 8);
        assert_eq!(hash_buckets(7), 8);
        assert_eq!(hash_buckets(8), 16);
        assert_eq!(hash_buckets(14), 16);
        assert_eq!(hash_buckets(15), 32);
        assert_eq!(hash_buckets(259_842), 524_288);
    }

    #[test]
    fn a_std_hash_map_has_the_capacity_we_assume() {
        // Grown one insert at a time, as the index grows.
        let mut m = std::collections::HashMap::new();
        for i in 0..1000u64 {
            m.insert(i, i as u32);
        }
        assert_eq!(m.capacity() as u64, hash_buckets(1000) / 8 * 7);
    }

    #[test]
    fn the_report_fits_a_line_through_the_ends() {
        let run = |cache: u64, rss: u64| {
            let slots = cache / SEGMENT_BYTES - 1;
            let blocks = slots * PER_SEG;
            Run {
                cache,
                blocks,
                slots,
                dirty: blocks - PER_SEG,
                rss_idle: 4 * MIB,
                rss_full: rss,
                hwm: rss,
                anon_full: rss - 3 * MIB,
                file_full: 3 * MIB,
                checked: 0,
                expected: expected_index_bytes(blocks, blocks - PER_SEG, slots),
            }
        };
        // 10 MiB fixed + 16 MiB per GiB.
        let runs = [run(64 * MIB, 11 * MIB), run(GIB, 26 * MIB)];
        let (slope, fixed) = fit(&runs, |r| r.rss_full);
        assert!((slope - 16.0).abs() < 1e-9 && (fixed - 10.0).abs() < 1e-9);
        let md = report(&runs, 3);
        assert!(
            md.contains("**16.00 MiB per GiB of cache** plus a fixed **10.0 MiB**"),
            "{md}"
        );
        assert!(
            md.contains("upstream dm-writeboost metadata (computed) | 12.69"),
            "{md}"
        );
    }

    #[test]
    fn upstream_metadata_is_about_12_7_mib_per_gib() {
        // 2048 segments in 171 parts, 260,097 hash heads in 32 parts, 64 KiB each.
        assert_eq!(upstream_bytes_per_gib(), (171 + 32) * 64 * KIB);
    }
}
