//! Section: engine ingest on in-memory devices against a plain memcpy of the same bytes (the
//! target, docs/DESIGN.md "Performance targets": near memory bandwidth).
//!
//! Each run opens a fresh cache on [`MemDevice`]s (wrapped only to count bytes) and pushes 4 KiB
//! client writes through `Engine::write` as fast as one thread can, with the background work
//! interleaved the way the runner's engine thread does it (`runner/src/engine_thread.rs`: after
//! every burst of 32 requests, `tick` and one due step), then a client FLUSH. Three address
//! streams: uniformly random over the backing device, sequential, and overwrite-heavy (90 % of
//! the writes into a hot 1 % of the blocks). The backing device is four times the cache device,
//! so the ring wraps many times and the forced writeback of a full ring is inside the timed
//! region, as it is in a driver.
//!
//! The baseline, in the same run and just before each engine run: the same number of the same
//! 4 KiB buffers (stamped the same way) copied with `copy_from_slice` into a destination buffer
//! the size of the cache device, at the same addresses (modulo its size). Every buffer is
//! touched before timing so that first-touch page faults count for neither side.
//!
//! After each run (not timed) every written block is read back through the engine and
//! compared with its newest write, and again after the devices are reopened as after a power
//! cut (replay of the full ring); a mismatch aborts the bench.

use std::hint::black_box;
use std::time::Instant;

use engine::device::{Counts, Observed};
use engine::format::{plog::region_sectors_for, BLOCK_SIZE, SECTORS_PER_BLOCK, SUPERBLOCK_SECTORS};
use engine::{Config, FormatPolicy, MemDevice, SyncEngine, Tunables};

use super::{Mode, Section, Table};
use crashsim::rng::SplitMix64;

pub struct Ingest;

/// Upstream's segment order: 512 KiB segments of 127 data blocks.
const ORDER: u8 = engine::format::UPSTREAM_ORDER;
/// RAM buffers (the engine's default).
const POOL: usize = 8;
/// The backing device is this many times the cache device's data area.
const BACKING_PER_CACHE: u64 = 4;
/// Requests served between two background steps (the runner's `REQUEST_BURST`).
const BURST: u64 = 32;
/// Overwrite-heavy: this share of the writes (percent) goes to the hot set ...
const HOT_SHARE_PCT: u64 = 90;
/// ... of this many blocks per 10,000 (1 %).
const HOT_PER_10K: u64 = 100;
/// Distinct 4 KiB payloads the writes cycle through (each stamped per write, see `stamp`).
const PAYLOADS: usize = 64;
/// Plog regions of the type-1 run.
const PLOG_REGIONS: u64 = 8;
const SEED: u64 = 0x5742_696e_6765_7374;
const GENERATION: u64 = 0x16e5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pattern {
    Random,
    Sequential,
    Overwrite,
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Pattern::Random => "random",
            Pattern::Sequential => "sequential",
            Pattern::Overwrite => "overwrite-heavy",
        }
    }

    /// The block of every write.
    fn addresses(self, writes: u64, blocks: u64) -> Vec<u64> {
        let mut r = SplitMix64::new(SEED ^ self as u64);
        let hot = (blocks * HOT_PER_10K / 10_000).max(1);
        // The hot set: `hot` blocks spread over the device (every `blocks / hot`-th one).
        let stride = blocks / hot;
        (0..writes)
            .map(|i| match self {
                Pattern::Random => r.below(blocks),
                Pattern::Sequential => i % blocks,
                Pattern::Overwrite => {
                    if r.below(100) < HOT_SHARE_PCT {
                        r.below(hot) * stride
                    } else {
                        r.below(blocks)
                    }
                }
            })
            .collect()
    }
}

/// (pattern, cache type) of each run: every pattern at type 0, the random one at type 1 too.
const RUNS: [(Pattern, u8); 4] = [
    (Pattern::Random, 0),
    (Pattern::Sequential, 0),
    (Pattern::Overwrite, 0),
    (Pattern::Random, 1),
];

/// The payloads, random bytes.
fn payloads() -> Vec<Vec<u8>> {
    let mut r = SplitMix64::new(SEED);
    (0..PAYLOADS)
        .map(|_| {
            let mut b = vec![0u8; BLOCK_SIZE];
            for c in b.chunks_exact_mut(8) {
                c.copy_from_slice(&r.next_u64().to_le_bytes());
            }
            b
        })
        .collect()
}

/// Write number `write` to `block` sends payload `write % PAYLOADS` with its first 16 bytes
/// replaced by (block, write): unique per write, so a stale or misplaced block shows.
fn stamp(buf: &mut [u8], block: u64, write: u64) {
    buf[..8].copy_from_slice(&block.to_le_bytes());
    buf[8..16].copy_from_slice(&write.to_le_bytes());
}

/// A [`MemDevice`] that counts what goes through it (a few additions per call).
type Counted = Observed<MemDevice>;

/// A zeroed counted device whose every page is touched now, not inside the timed region.
fn counted(sectors: u64) -> Counted {
    let mut dev = MemDevice::new(sectors);
    touch(dev.bytes_mut());
    Observed::new(dev)
}

/// Writes every page of `buf` (zeros: the content stays what it was).
fn touch(buf: &mut [u8]) {
    for p in buf.chunks_mut(4096) {
        p[0] = 0;
    }
    black_box(buf);
}

fn config(format: FormatPolicy) -> Config {
    Config {
        segment_size_order: ORDER,
        nr_rambuf_pool: POOL,
        // The runner's: upstream's defaults, `allow_writeback 0`, so writeback happens when the
        // ring is full (and `sync_interval`/`update_record_interval` are off); sequential
        // bypass off, since the log's ingest is what is measured.
        tunables: Some(Tunables {
            sequential_cutoff: 0,
            ..Tunables::defaults(ORDER)
        }),
        format,
        generation: GENERATION,
        ..Config::default()
    }
}

/// Copies the same buffers to the same addresses (modulo the destination) as the engine run.
/// Returns the seconds taken.
fn memcpy_run(addrs: &[u64], payloads: &mut [Vec<u8>], dst: &mut [u8]) -> Result<f64, String> {
    let dst_blocks = (dst.len() / BLOCK_SIZE) as u64;
    let t = Instant::now();
    for (i, &block) in addrs.iter().enumerate() {
        let buf = &mut payloads[i % PAYLOADS];
        stamp(buf, block, i as u64);
        let at = (block % dst_blocks) as usize * BLOCK_SIZE;
        black_box(&mut dst[at..at + BLOCK_SIZE]).copy_from_slice(buf);
    }
    black_box(&mut *dst);
    let secs = t.elapsed().as_secs_f64();
    // The copies happened: the last write of the stream is where it should be.
    let last = addrs.len() - 1;
    let at = (addrs[last] % dst_blocks) as usize * BLOCK_SIZE;
    if dst[at..at + BLOCK_SIZE] != payloads[last % PAYLOADS][..] {
        return Err("the memcpy baseline's destination does not hold its last copy".into());
    }
    Ok(secs)
}

/// CRC32C of `writes` 4 KiB blocks (the payloads in turn), as the engine computes it. Returns the
/// seconds taken.
fn crc_run(writes: u64, payloads: &[Vec<u8>]) -> f64 {
    let t = Instant::now();
    let mut acc = 0u32;
    for i in 0..writes as usize {
        acc ^= engine::format::block_crc(black_box(&payloads[i % PAYLOADS]));
    }
    black_box(acc);
    t.elapsed().as_secs_f64()
}

struct Run {
    pattern: Pattern,
    cache_type: u8,
    writes: u64,
    secs: f64,
    memcpy_secs: f64,
    /// Device traffic during the timed region: cache, backing, plog.
    dev: [Counts; 3],
    /// Segments written back during the timed region (all of it forced: the ring was full).
    written_back: u64,
    /// Blocks read back and compared (each twice: live and after the reopen).
    verified: u64,
    /// Writes that wrote back a full ring before they could go in, and their seconds.
    forced_writes: u64,
    forced_secs: f64,
    /// Seconds in background steps (and `tick`).
    bg_secs: f64,
    /// Seconds CRC32C (`engine::format::block_crc`) takes over the same number of blocks.
    crc_secs: f64,
}

impl Run {
    fn client_bytes(&self) -> f64 {
        (self.writes * BLOCK_SIZE as u64) as f64
    }
    fn ops_per_sec(&self) -> f64 {
        self.writes as f64 / self.secs
    }
    fn bytes_per_sec(&self) -> f64 {
        self.client_bytes() / self.secs
    }
    fn memcpy_bytes_per_sec(&self) -> f64 {
        self.client_bytes() / self.memcpy_secs
    }
    /// Seconds of the timed region outside forced writeback and background steps.
    fn other_secs(&self) -> f64 {
        (self.secs - self.forced_secs - self.bg_secs).max(0.0)
    }
    /// Bytes CRC32C runs over per client byte, from the counters: when a segment is sealed,
    /// every data block (its metablock CRC) and then the whole segment (its checksum), about
    /// what the cache device gets; every segment read back for writeback is checked again; in
    /// type 1 every plog entry carries one.
    fn crc_bytes_per_client_byte(&self) -> f64 {
        (2 * self.dev[0].bytes_written + self.dev[0].bytes_read + self.dev[2].bytes_written) as f64
            / self.client_bytes()
    }
    /// Share of the timed region CRC32C would take at the speed measured alone (hot buffers,
    /// so a lower bound).
    fn crc_share(&self) -> f64 {
        self.crc_bytes_per_client_byte() * self.crc_secs / self.secs
    }
    /// Bytes the engine copied to or from its devices per byte the client wrote.
    fn device_bytes_per_client_byte(&self) -> f64 {
        self.dev
            .iter()
            .map(|c| (c.bytes_written + c.bytes_read) as f64)
            .sum::<f64>()
            / self.client_bytes()
    }
}

fn verify(
    e: &mut SyncEngine<Counted>,
    last: &[u32],
    payloads: &[Vec<u8>],
    when: &str,
) -> Result<u64, String> {
    let mut got = vec![0u8; BLOCK_SIZE];
    let mut want = vec![0u8; BLOCK_SIZE];
    let mut n = 0;
    for (block, &write) in last.iter().enumerate() {
        if write == u32::MAX {
            continue;
        }
        let block = block as u64;
        want.copy_from_slice(&payloads[write as usize % PAYLOADS]);
        stamp(&mut want, block, write as u64);
        e.read(block * SECTORS_PER_BLOCK, &mut got)
            .map_err(|err| format!("{when}: read of block {block} failed: {err}"))?;
        if got != want {
            return Err(format!(
                "{when}: block {block} does not hold write #{write} (the data read back \
                 differs): the engine is broken, refusing to benchmark it"
            ));
        }
        n += 1;
    }
    Ok(n)
}

fn run_one(
    pattern: Pattern,
    cache_type: u8,
    slots: u64,
    writes: u64,
    dst: &mut [u8],
) -> Result<Run, String> {
    let n = (1u64 << (ORDER - 3)) - 1;
    let backing_blocks = BACKING_PER_CACHE * (slots << ORDER) / SECTORS_PER_BLOCK;
    let addrs = pattern.addresses(writes, backing_blocks);
    let mut payloads = payloads();

    let memcpy_secs = memcpy_run(&addrs, &mut payloads, dst)?;
    let crc_secs = crc_run(writes, &payloads);

    let cache = counted(SUPERBLOCK_SECTORS + (slots << ORDER));
    let backing = counted(backing_blocks * SECTORS_PER_BLOCK);
    let plog = (cache_type == 1).then(|| {
        counted(2 * SECTORS_PER_BLOCK + PLOG_REGIONS * region_sectors_for(n as usize) as u64)
    });
    let engine_err = |what: &str, err: engine::Error| format!("{what}: {err}");
    let (mut e, _) =
        SyncEngine::open_with_plog(cache, backing, plog, config(FormatPolicy::IfBlank))
            .map_err(|err| engine_err(&format!("cannot open a type-{cache_type} cache"), err))?;
    if e.cache_type() != cache_type {
        return Err(format!("opened type {} not {cache_type}", e.cache_type()));
    }
    let counts = |e: &SyncEngine<Counted>| {
        [
            e.cache_device().counts(),
            e.backing_device().counts(),
            e.plog_device().map(|p| p.counts()).unwrap_or_default(),
        ]
    };
    let c0 = counts(&e);
    let wb0 = e.status().last_writeback_id;

    // The timed region: writes, a background step after every burst, a final FLUSH. One clock
    // read per call splits the time between plain writes, writes that had to write back a full
    // ring first (the backing device saw writes during them), and background steps.
    let mut forced_writes = 0u64;
    let (mut forced_secs, mut bg_secs) = (0.0f64, 0.0f64);
    let t = Instant::now();
    let mut prev = t;
    for (i, &block) in addrs.iter().enumerate() {
        let buf = &mut payloads[i % PAYLOADS];
        stamp(buf, block, i as u64);
        let backing_before = e.backing_device().counts().bytes_written;
        e.write(block * SECTORS_PER_BLOCK, buf, false)
            .map_err(|err| engine_err(&format!("write #{i} to block {block}"), err))?;
        let now = Instant::now();
        if e.backing_device().counts().bytes_written != backing_before {
            forced_writes += 1;
            forced_secs += (now - prev).as_secs_f64();
        }
        prev = now;
        if (i as u64 + 1) % BURST == 0 {
            e.tick((now - t).as_millis() as u64);
            if let Some(step) = e.next_step() {
                e.run_step(step)
                    .map_err(|err| engine_err(&format!("background step {step:?}"), err))?;
            }
            let now = Instant::now();
            bg_secs += (now - prev).as_secs_f64();
            prev = now;
        }
    }
    e.flush().map_err(|err| engine_err("final FLUSH", err))?;
    let secs = t.elapsed().as_secs_f64();

    let c1 = counts(&e);
    let dev = [c1[0] - c0[0], c1[1] - c0[1], c1[2] - c0[2]];
    let written_back = e.status().last_writeback_id - wb0;

    // Check (not timed): every written block, live and after a power cut and replay.
    let mut last = vec![u32::MAX; backing_blocks as usize];
    for (i, &block) in addrs.iter().enumerate() {
        last[block as usize] = i as u32;
    }
    let verified = verify(&mut e, &last, &payloads, "read back after the run")?;
    let (cache, backing, plog) = e.into_all_devices();
    let (mut e, _) = SyncEngine::open_with_plog(cache, backing, plog, config(FormatPolicy::Never))
        .map_err(|err| engine_err("reopening as after a power cut", err))?;
    verify(
        &mut e,
        &last,
        &payloads,
        "read back after a simulated power cut and replay",
    )?;

    Ok(Run {
        pattern,
        cache_type,
        writes,
        secs,
        memcpy_secs,
        dev,
        written_back,
        verified,
        forced_writes,
        forced_secs,
        bg_secs,
        crc_secs,
    })
}

fn rate(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2} G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else {
        format!("{:.0} k", x / 1e3)
    }
}

fn gbps(bytes_per_sec: f64) -> String {
    format!("{:.2}", bytes_per_sec / 1e9)
}

fn per_client(bytes: u64, r: &Run) -> String {
    format!("{:.2}", bytes as f64 / r.client_bytes())
}

impl Section for Ingest {
    fn name(&self) -> &'static str {
        "ingest"
    }

    fn title(&self) -> &'static str {
        "Engine ingest on in-memory devices against memcpy"
    }

    fn run(&self, mode: Mode) -> Result<String, String> {
        // (cache slots, writes per run): the writes are many times the cache, so the ring
        // wraps and writeback is part of the steady state.
        let (slots, writes) = match mode {
            Mode::Quick => (128u64, 400_000u64),
            Mode::Full => (512, 4_000_000),
        };
        let cache_bytes = (slots << ORDER) * 512;
        let mut dst = vec![0u8; cache_bytes as usize];
        touch(&mut dst);
        let mut runs = Vec::new();
        for &(pattern, ty) in &RUNS {
            eprintln!(
                "bench: ingest {} type {ty}, {writes} writes",
                pattern.name()
            );
            runs.push(run_one(pattern, ty, slots, writes, &mut dst)?);
        }

        let mib = |b: u64| b / (1024 * 1024);
        let mut md = String::new();
        md.push_str(&format!(
            "{writes} client writes of 4 KiB per run ({} MiB) on `MemDevice`s, one thread: a \
             {} MiB cache device (segment order {ORDER}, upstream's: {} data blocks per \
             segment, {POOL} RAM buffers, upstream's default tunables as the runner uses them, \
             so `allow_writeback 0` and writeback happens when the ring is full; sequential \
             bypass off, `sequential_cutoff 0`, so every write goes through the log) in front \
             of a \
             {} MiB backing device. *random*: uniform over the backing device; *sequential*: \
             block 0, 1, 2, … (wrapping); *overwrite-heavy*: {HOT_SHARE_PCT} % of the writes \
             to a hot set of 1 % of the blocks (spread evenly), the rest uniform. Type 1 adds \
             a {PLOG_REGIONS}-region plog on a `MemDevice`.\n\n",
            mib(writes * BLOCK_SIZE as u64),
            mib(cache_bytes),
            (1u64 << (ORDER - 3)) - 1,
            mib(BACKING_PER_CACHE * cache_bytes),
        ));
        md.push_str(&format!(
            "**Timed**: the writes, with the background work a driver does interleaved as in \
             the runner's engine thread (after every {BURST} requests `tick` and one due step \
             from `next_step`/`run_step`: writing sealed segments to the cache device), the \
             forced writeback inside `write` when the ring is full (read segment, verify, \
             write the live blocks to the backing device sorted, flush, record), and a final \
             client FLUSH. Not timed: opening, address generation, and the check (every \
             written block read back through the engine, and again after reopening the \
             devices as after a power cut; any difference aborts the bench). **Baseline** \
             (same run, just before each engine run): the same stamped 4 KiB buffers \
             `copy_from_slice`d into a {} MiB buffer at the same block addresses modulo its \
             size (`std::hint::black_box` keeps the copies). All buffers are touched before \
             timing.\n\n",
            mib(cache_bytes),
        ));
        let mut t = Table::new(&[
            "workload",
            "type",
            "writes/s",
            "GB/s",
            "memcpy GB/s",
            "÷ memcpy",
            "blocks verified",
        ]);
        for r in &runs {
            t.row(vec![
                r.pattern.name().into(),
                r.cache_type.to_string(),
                rate(r.ops_per_sec()),
                gbps(r.bytes_per_sec()),
                gbps(r.memcpy_bytes_per_sec()),
                format!("{:.3}×", r.bytes_per_sec() / r.memcpy_bytes_per_sec()),
                r.verified.to_string(),
            ]);
        }
        md.push_str(&t.to_markdown());
        md.push_str(
            "\n*÷ memcpy*: engine bytes/s over memcpy bytes/s of the same writes (GB = 10⁹ \
             bytes); *blocks verified*: distinct blocks read back and compared, twice each.\n\n",
        );

        md.push_str("### Where the time goes\n\n");
        md.push_str(
            "Bytes the engine moved to and from its devices per byte the client wrote (on a \
             `MemDevice` each is a memcpy), and the timed region split by one clock read per \
             call: writes that first had to write back a full ring (the backing device saw \
             writes during them), background steps, and the rest (plain writes: a copy into \
             the open segment's RAM buffer, and when it fills, sealing it: a CRC32C of every \
             block and of the segment). *CRC B / client B* estimates the bytes CRC32C runs \
             over from the counters (2 × cache w + cache r + plog w); *CRC share* is that at \
             the CRC32C speed measured alone in the same run (`engine::format::block_crc` over \
             the same number of hot 4 KiB buffers), a lower bound.\n\n",
        );
        let mut t = Table::new(&[
            "workload",
            "type",
            "device B / client B",
            "cache w",
            "cache r",
            "backing w",
            "plog w",
            "segments written back",
            "writes that wrote back",
            "% in those",
            "% in background steps",
            "% in other writes",
            "CRC B / client B",
            "CRC32C GB/s",
            "CRC share",
        ]);
        for r in &runs {
            let pct = |x: f64| format!("{:.0} %", 100.0 * x / r.secs);
            t.row(vec![
                r.pattern.name().into(),
                r.cache_type.to_string(),
                format!("{:.2}", r.device_bytes_per_client_byte()),
                per_client(r.dev[0].bytes_written, r),
                per_client(r.dev[0].bytes_read, r),
                per_client(r.dev[1].bytes_written, r),
                if r.cache_type == 1 {
                    per_client(r.dev[2].bytes_written, r)
                } else {
                    "—".into()
                },
                r.written_back.to_string(),
                r.forced_writes.to_string(),
                pct(r.forced_secs),
                pct(r.bg_secs),
                pct(r.other_secs()),
                format!("{:.2}", r.crc_bytes_per_client_byte()),
                gbps(r.client_bytes() / r.crc_secs),
                format!("{:.0} %", 100.0 * r.crc_share()),
            ]);
        }
        md.push_str(&t.to_markdown());
        md.push('\n');
        md.push_str(&notes(&runs));
        Ok(md)
    }
}

/// Notes derived from the measured numbers.
fn notes(runs: &[Run]) -> String {
    let mut out = String::new();
    let worst = runs
        .iter()
        .map(|r| r.bytes_per_sec() / r.memcpy_bytes_per_sec())
        .fold(f64::INFINITY, f64::min);
    let best = runs
        .iter()
        .map(|r| r.bytes_per_sec() / r.memcpy_bytes_per_sec())
        .fold(0.0, f64::max);
    if best < 1.0 {
        out.push_str(&format!(
            "- **We lose to memcpy** in every workload ({worst:.2}× to {best:.2}×): the target \
             (docs/DESIGN.md, Performance targets) is ingest near memory bandwidth, and one \
             thread reaches {} to {} 4 KiB writes per second.\n",
            rate(
                runs.iter()
                    .map(Run::ops_per_sec)
                    .fold(f64::INFINITY, f64::min)
            ),
            rate(runs.iter().map(Run::ops_per_sec).fold(0.0, f64::max)),
        ));
    }
    for r in runs {
        let ratio = r.bytes_per_sec() / r.memcpy_bytes_per_sec();
        if ratio >= 1.0 {
            out.push_str(&format!(
                "- {} (type {}): {ratio:.2}× of memcpy, the engine keeps up with the baseline.\n",
                r.pattern.name(),
                r.cache_type,
            ));
            continue;
        }
        // The biggest of the measured parts.
        let parts = [
            (
                r.forced_secs,
                format!(
                    "the {} writes that had to write back a full ring first ({} segments in \
                     all: with `allow_writeback 0` the writer empties the ring)",
                    r.forced_writes, r.written_back
                ),
            ),
            (
                r.bg_secs,
                "background steps (writing sealed segments to the cache device)".to_string(),
            ),
            (
                r.other_secs(),
                "the other writes (copy into the RAM buffer, sealing full segments)".to_string(),
            ),
        ];
        let (secs, what) = parts
            .iter()
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .expect("three parts");
        out.push_str(&format!(
            "- {} (type {}): {ratio:.2}× of memcpy. Each client byte is copied into a RAM \
             buffer and then moved {:.2} more times to or from the devices, while memcpy \
             copies it once; {:.0} % of the time goes to {what}; CRC32C over {:.2} bytes per \
             client byte accounts for at least {:.0} %.\n",
            r.pattern.name(),
            r.cache_type,
            r.device_bytes_per_client_byte(),
            100.0 * secs / r.secs,
            r.crc_bytes_per_client_byte(),
            100.0 * r.crc_share(),
        ));
    }
    let of = |p: Pattern, ty: u8| runs.iter().find(|r| r.pattern == p && r.cache_type == ty);
    if let (Some(a), Some(b)) = (of(Pattern::Random, 1), of(Pattern::Random, 0)) {
        let x = a.ops_per_sec() / b.ops_per_sec();
        out.push_str(&format!(
            "- Type 1 ingests random writes at {x:.2}× the rate of type 0{}.\n",
            if x < 1.0 {
                format!(
                    ": every write is also a plog entry ({} plog bytes per client byte, with \
                     its own CRC32C)",
                    per_client(a.dev[2].bytes_written, a)
                )
            } else {
                String::new()
            }
        ));
    }
    if let (Some(o), Some(r)) = (of(Pattern::Overwrite, 0), of(Pattern::Random, 0)) {
        let (ob, rb) = (
            o.dev[1].bytes_written as f64 / o.client_bytes(),
            r.dev[1].bytes_written as f64 / r.client_bytes(),
        );
        if ob < rb {
            out.push_str(&format!(
                "- Overwrite-heavy writes back {ob:.2} backing bytes per client byte against \
                 {rb:.2} for random: a block overwritten before its segment is written back \
                 is no longer live there, so writeback skips it; it runs at {:.2}× the \
                 random rate.\n",
                o.ops_per_sec() / r.ops_per_sec()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overwrite_heavy_hits_the_hot_set() {
        let blocks = 10_000;
        let a = Pattern::Overwrite.addresses(10_000, blocks);
        let hot = a.iter().filter(|&&b| b % 100 == 0).count();
        assert!(hot > 8_500, "{hot} of 10000 writes in the hot set");
        assert!(a.iter().all(|&b| b < blocks));
    }

    #[test]
    fn a_small_run_checks_its_data() {
        let mut dst = vec![0u8; 8 << 20];
        for (p, ty) in RUNS {
            let r = run_one(p, ty, 4, 20_000, &mut dst).unwrap();
            assert_eq!(r.writes, 20_000);
            assert!(r.written_back > 0, "{p:?} type {ty}: the ring wrapped");
            assert!(r.verified > 0);
        }
    }
}
