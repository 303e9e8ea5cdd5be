//! Section: flush-heavy workloads, type 1 (plog) against type 0 (RAM buffers only), on
//! simulated devices with a latency model.
//!
//! Each run: random 4 KiB writes (SplitMix64, the same sequence for both types) over the
//! backing device, a client FLUSH every 1, 4 or 16 writes, background steps run the way a
//! driver's daemons would, then a drain (`drop_caches`) so both types end with everything on the
//! backing device. The data is checked twice (through the engine, and on a copy of the devices
//! reopened as after a power cut) before the drain and once after it; a mismatch aborts the
//! bench.

use std::collections::BTreeMap;

use engine::format::{plog::region_sectors_for, BLOCK_SIZE, SECTORS_PER_BLOCK};
use engine::{Config, FormatPolicy, SyncEngine, Tunables};

use engine::device::latency::{Counters, LatencyDevice, HDD, SSD};

use super::latency::{markdown_row, MARKDOWN_HEADER};
use super::{Mode, Section, Table};
use crashsim::rng::SplitMix64;

pub struct FlushHeavy;

/// A client FLUSH after every this many writes.
const INTERVALS: [u64; 3] = [1, 4, 16];
/// Segment orders: 10 is upstream's (512 KiB segments, 127 blocks), 7 a small one (15 blocks).
const ORDERS: [u8; 2] = [10, 7];
/// Backing device: 256 MiB.
const BACKING_BLOCKS: u64 = 65_536;
/// Cache device slots (segments); the ring wraps in the flush-every-1 runs of type 0.
const SLOTS: u64 = 256;
/// Plog regions (the format takes as many as fit).
const PLOG_REGIONS: u64 = 8;
const POOL: usize = 8;
/// The background daemons wake after every this much simulated foreground time.
const BG_PERIOD_NS: u64 = 10_000_000;
const SEED: u64 = 0x5742_6265_6e63_6801;
const GENERATION: u64 = 0xbe4c;

/// The content of write number `write` to `block`: unique per write, so a stale copy shows.
fn fill(buf: &mut [u8], block: u64, write: u64) {
    let mut r = SplitMix64::new(SEED ^ block.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ write << 40);
    for c in buf.chunks_exact_mut(8) {
        c.copy_from_slice(&r.next_u64().to_le_bytes());
    }
}

type Eng = SyncEngine<LatencyDevice>;

/// Counters of (cache, plog, backing); the plog's are zero in type 0.
fn counters(e: &Eng) -> [Counters; 3] {
    [
        e.cache_device().counters(),
        e.plog_device().map(|p| p.counters()).unwrap_or_default(),
        e.backing_device().counters(),
    ]
}

fn sim_ns(e: &Eng) -> u64 {
    counters(e).iter().map(|c| c.time_ns).sum()
}

fn sub3(a: [Counters; 3], b: [Counters; 3]) -> [Counters; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn add3(a: [Counters; 3], b: [Counters; 3]) -> [Counters; 3] {
    let add = |x: Counters, y: Counters| Counters {
        write_ops: x.write_ops + y.write_ops,
        bytes_written: x.bytes_written + y.bytes_written,
        fua_writes: x.fua_writes + y.fua_writes,
        read_ops: x.read_ops + y.read_ops,
        bytes_read: x.bytes_read + y.bytes_read,
        flushes: x.flushes + y.flushes,
        time_ns: x.time_ns + y.time_ns,
    };
    [add(a[0], b[0]), add(a[1], b[1]), add(a[2], b[2])]
}

/// Reads back every block written and compares it with the newest write of it.
fn verify(e: &mut Eng, shadow: &BTreeMap<u64, u64>, when: &str) -> Result<(), String> {
    let mut want = vec![0u8; BLOCK_SIZE];
    let mut got = vec![0u8; BLOCK_SIZE];
    for (&block, &write) in shadow {
        fill(&mut want, block, write);
        e.read(block * SECTORS_PER_BLOCK, &mut got)
            .map_err(|err| format!("{when}: read of block {block} failed: {err}"))?;
        if got != want {
            return Err(format!(
                "{when}: block {block} does not hold write #{write} (the data read back differs): \
                 the engine is broken, refusing to benchmark it"
            ));
        }
    }
    Ok(())
}

struct Run {
    order: u8,
    cache_type: u8,
    interval: u64,
    writes: u64,
    client_flushes: u64,
    acked: u64,
    /// (cache, plog, backing) from open to the end of the drain, verification reads excluded.
    dev: [Counters; 3],
    /// The part of `dev` spent inside client writes and FLUSHes.
    fg: [Counters; 3],
    fg_ns: u64,
    bg_ns: u64,
    /// Segments (slots) opened during the write phase.
    slots: u64,
    partial_flushed: u64,
}

impl Run {
    fn per_ack(&self, bytes: u64) -> f64 {
        bytes as f64 / self.acked as f64
    }
    fn per_flush(&self, n: u64) -> f64 {
        n as f64 / self.client_flushes as f64
    }
    fn slots_per_1000(&self) -> f64 {
        self.slots as f64 * 1000.0 / self.writes as f64
    }
    /// Acknowledged MB/s over the time the client waited.
    fn client_mbps(&self) -> f64 {
        self.acked as f64 * 1e3 / self.fg_ns as f64
    }
    /// Acknowledged MB/s over all device time, writeback and drain included (serial).
    fn total_mbps(&self) -> f64 {
        self.acked as f64 * 1e3 / (self.fg_ns + self.bg_ns) as f64
    }
}

fn config(order: u8, format: FormatPolicy) -> Config {
    let mut tunables = Tunables::defaults(order);
    tunables.allow_writeback = true;
    Config {
        segment_size_order: order,
        nr_rambuf_pool: POOL,
        tunables: Some(tunables),
        format,
        generation: GENERATION,
        ..Config::default()
    }
}

fn run_one(order: u8, cache_type: u8, interval: u64, writes: u64) -> Result<Run, String> {
    let n = (1u64 << (order - 3)) - 1;
    let cache = LatencyDevice::mem(engine::format::SUPERBLOCK_SECTORS + (SLOTS << order), SSD);
    let backing = LatencyDevice::mem(BACKING_BLOCKS * SECTORS_PER_BLOCK, HDD);
    let plog = (cache_type == 1).then(|| {
        let sectors = 2 * SECTORS_PER_BLOCK + PLOG_REGIONS * region_sectors_for(n as usize) as u64;
        LatencyDevice::mem(sectors, SSD)
    });
    let cfg = config(order, FormatPolicy::IfBlank);
    let (mut e, _) = SyncEngine::open_with_plog(cache, backing, plog, cfg)
        .map_err(|err| format!("cannot open a type-{cache_type} cache: {err}"))?;
    if e.cache_type() != cache_type {
        return Err(format!("opened type {} not {cache_type}", e.cache_type()));
    }
    let base = counters(&e);
    let st0 = e.status();
    let engine_err = |what: &str, err: engine::Error| format!("{what}: {err}");

    let mut rng = SplitMix64::new(SEED ^ order as u64);
    let mut buf = vec![0u8; BLOCK_SIZE];
    let mut shadow = BTreeMap::new();
    let mut fg = [Counters::default(); 3];
    let (mut fg_ns, mut bg_ns, mut last_bg, mut client_flushes) = (0u64, 0u64, 0u64, 0u64);
    let background = |e: &mut Eng, fg_ns: u64, bg_ns: &mut u64| -> Result<(), String> {
        let t = sim_ns(e);
        e.tick((fg_ns + *bg_ns) / 1_000_000);
        e.run_due_steps()
            .map_err(|err| engine_err("background step", err))?;
        *bg_ns += sim_ns(e) - t;
        Ok(())
    };
    for i in 0..writes {
        let block = rng.next_u64() % BACKING_BLOCKS;
        fill(&mut buf, block, i);
        let c = counters(&e);
        let t = sim_ns(&e);
        e.write(block * SECTORS_PER_BLOCK, &buf, false)
            .map_err(|err| engine_err("write", err))?;
        shadow.insert(block, i);
        if (i + 1) % interval == 0 || i + 1 == writes {
            e.flush().map_err(|err| engine_err("flush", err))?;
            client_flushes += 1;
        }
        fg_ns += sim_ns(&e) - t;
        fg = add3(fg, sub3(counters(&e), c));
        if fg_ns - last_bg >= BG_PERIOD_NS {
            last_bg = fg_ns;
            background(&mut e, fg_ns, &mut bg_ns)?;
        }
    }
    let st = e.status();
    let open_has_data = st.cursor % n != 0;
    let slots = st.last_sealed_id - st0.last_sealed_id + open_has_data as u64;

    // Check (not measured): through the engine, and on a copy reopened as after a power cut
    // right after the last client FLUSH, where every write must survive.
    let before = counters(&e);
    verify(&mut e, &shadow, "read back before the drain")?;
    let mut excluded = sub3(counters(&e), before);
    {
        let (cache, backing) = (e.cache_device().clone(), e.backing_device().clone());
        let plog = e.plog_device().cloned();
        let (mut copy, _) =
            SyncEngine::open_with_plog(cache, backing, plog, config(order, FormatPolicy::Never))
                .map_err(|err| engine_err("reopening a copy as after a power cut", err))?;
        verify(
            &mut copy,
            &shadow,
            "read back after a simulated power cut and replay",
        )?;
    }

    // Drain: everything written back (the engine's one drain), counted as background time.
    let t = sim_ns(&e);
    e.drain().map_err(|err| engine_err("drain", err))?;
    bg_ns += sim_ns(&e) - t;
    if e.status().nr_dirty_cache_blocks != 0 {
        return Err("the drain left dirty blocks".into());
    }
    let before = counters(&e);
    verify(&mut e, &shadow, "read back after the drain")?;
    excluded = add3(excluded, sub3(counters(&e), before));
    let dev = sub3(sub3(counters(&e), base), excluded);

    Ok(Run {
        order,
        cache_type,
        interval,
        writes,
        client_flushes,
        acked: writes * BLOCK_SIZE as u64,
        dev,
        fg,
        fg_ns,
        bg_ns,
        slots,
        partial_flushed: e.status().nr_partial_flushed - st0.nr_partial_flushed,
    })
}

fn f2(x: f64) -> String {
    format!("{x:.2}")
}

fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "—".into()
    } else {
        format!("{:.2}×", a / b)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

fn main_table(runs: &[&Run]) -> Table {
    let mut t = Table::new(&[
        "flush every",
        "type",
        "cache B / ack B",
        "plog B / ack B",
        "cache flushes / client flush",
        "plog flushes / client flush",
        "slots / 1000 writes",
        "client MB/s",
        "MB/s incl. writeback",
    ]);
    for &interval in &INTERVALS {
        let of = |ty: u8| {
            runs.iter()
                .find(|r| r.interval == interval && r.cache_type == ty)
                .expect("both types ran")
        };
        for ty in [0u8, 1] {
            let r = of(ty);
            t.row(vec![
                interval.to_string(),
                ty.to_string(),
                f2(r.per_ack(r.dev[0].bytes_written)),
                if ty == 1 {
                    f2(r.per_ack(r.dev[1].bytes_written))
                } else {
                    "—".into()
                },
                f2(r.per_flush(r.dev[0].flushes)),
                if ty == 1 {
                    f2(r.per_flush(r.dev[1].flushes))
                } else {
                    "—".into()
                },
                format!("{:.1}", r.slots_per_1000()),
                f2(r.client_mbps()),
                f2(r.total_mbps()),
            ]);
        }
        let (a, b) = (of(1), of(0));
        t.row(vec![
            interval.to_string(),
            "**1 ÷ 0**".into(),
            ratio(
                a.per_ack(a.dev[0].bytes_written),
                b.per_ack(b.dev[0].bytes_written),
            ),
            "".into(),
            "".into(),
            "".into(),
            ratio(a.slots_per_1000(), b.slots_per_1000()),
            ratio(a.client_mbps(), b.client_mbps()),
            ratio(a.total_mbps(), b.total_mbps()),
        ]);
    }
    t
}

fn raw_table(runs: &[Run]) -> Table {
    let mut t = Table::new(&[
        "order",
        "flush every",
        "type",
        "cache writes",
        "cache MiB w",
        "cache flushes",
        "… in client path",
        "cache FUA",
        "cache MiB r",
        "plog writes",
        "plog MiB w",
        "plog flushes",
        "backing writes",
        "backing MiB w",
        "backing flushes",
        "partial segments",
        "client ms",
        "background ms",
    ]);
    for r in runs {
        let [c, p, b] = r.dev;
        t.row(vec![
            r.order.to_string(),
            r.interval.to_string(),
            r.cache_type.to_string(),
            c.write_ops.to_string(),
            mib(c.bytes_written),
            c.flushes.to_string(),
            r.fg[0].flushes.to_string(),
            c.fua_writes.to_string(),
            mib(c.bytes_read),
            p.write_ops.to_string(),
            mib(p.bytes_written),
            p.flushes.to_string(),
            b.write_ops.to_string(),
            mib(b.bytes_written),
            b.flushes.to_string(),
            r.partial_flushed.to_string(),
            format!("{:.1}", r.fg_ns as f64 / 1e6),
            format!("{:.1}", r.bg_ns as f64 / 1e6),
        ]);
    }
    t
}

/// Ratios within this much of 1 count as a tie in the notes.
const TIE: f64 = 0.02;

/// One sentence per place where type 1 does worse than type 0 (or not as expected), saying why.
fn notes(runs: &[&Run]) -> String {
    let mut out = String::new();
    let mut ties = Vec::new();
    for &interval in &INTERVALS {
        let of = |ty: u8| {
            runs.iter()
                .find(|r| r.interval == interval && r.cache_type == ty)
                .expect("both types ran")
        };
        let (t1, t0) = (of(1), of(0));
        if t1.slots_per_1000() >= t0.slots_per_1000() {
            out.push_str(&format!(
                "- Flush every {interval}: type 1 does **not** open fewer segments than type 0 \
                 ({:.1} against {:.1} per 1000 writes), which it should: its FLUSH does not seal \
                 the open segment.\n",
                t1.slots_per_1000(),
                t0.slots_per_1000()
            ));
        }
        if t1.client_mbps() < t0.client_mbps() * (1.0 - TIE) {
            let w1 = t1.fg_ns as f64 / t1.writes as f64 / 1e3;
            let w0 = t0.fg_ns as f64 / t0.writes as f64 / 1e3;
            let flushes = (t1.writes / interval).max(1) as f64;
            let plog_writes = t1.dev[1].write_ops as f64 / flushes;
            let cache_flushes = t1.fg[0].flushes as f64 / flushes;
            out.push_str(&format!(
                "- Flush every {interval}: type 1 acknowledges slower ({w1:.0} against {w0:.0} µs \
                 of device time per write): per client FLUSH it issues {plog_writes:.2} plog \
                 writes (the entries since the last FLUSH are gathered, but a segment boundary \
                 starts a new region and so a new write, and every entry carries a 512-byte \
                 header) and {cache_flushes:.2} cache flushes in the client path (region \
                 takeover, H7), against one segment write and one flush for type 0.\n"
            ));
        }
        let ssd_bytes = |r: &Run| r.dev[0].bytes_written + r.dev[1].bytes_written;
        if ssd_bytes(t1) as f64 > ssd_bytes(t0) as f64 * (1.0 + TIE) {
            out.push_str(&format!(
                "- Flush every {interval}: type 1 writes more to its SSDs ({:.2} against {:.2} \
                 bytes per acknowledged byte) because every block goes to the plog (with a header \
                 sector) and again, in a full segment, to the cache device.\n",
                t1.per_ack(ssd_bytes(t1)),
                t0.per_ack(ssd_bytes(t0)),
            ));
        }
        if t1.fg[0].flushes * 4 > t1.slots {
            out.push_str(&format!(
                "- Flush every {interval}: type 1 flushed the cache device {} times inside client \
                 requests for {} segments: with {} plog regions a segment may open only once the \
                 one {} before it is durable (H7); `plog_take_region` then makes every sealed \
                 segment durable with one flush, which lands in the client path when the \
                 background daemons lag.\n",
                t1.fg[0].flushes, t1.slots, PLOG_REGIONS, PLOG_REGIONS
            ));
        }
        let total = t1.total_mbps() / t0.total_mbps();
        if total < 1.0 - TIE {
            out.push_str(&format!(
                "- Flush every {interval}: type 1 is slower once writeback is counted ({:.2} \
                 against {:.2} MB/s).\n",
                t1.total_mbps(),
                t0.total_mbps()
            ));
        } else if total <= 1.0 + TIE {
            ties.push(interval.to_string());
        }
    }
    if !ties.is_empty() {
        out.push_str(&format!(
            "- *MB/s incl. writeback* is a tie (within {:.0} %) at flush every {}: every run \
             writes back about the same blocks, one random backing write (5 ms) each, and that \
             dominates the serial time.\n",
            TIE * 100.0,
            ties.join(", ")
        ));
    }
    out
}

impl Section for FlushHeavy {
    fn name(&self) -> &'static str {
        "flush-heavy"
    }

    fn title(&self) -> &'static str {
        "Flush-heavy workloads: type 1 (plog) against type 0"
    }

    fn run(&self, mode: Mode) -> Result<String, String> {
        let writes = match mode {
            Mode::Quick => 4_000,
            Mode::Full => 50_000,
        };
        let mut runs = Vec::new();
        for &order in &ORDERS {
            for &interval in &INTERVALS {
                for ty in [0u8, 1] {
                    eprintln!(
                        "bench: flush-heavy order {order}, flush every {interval}, type {ty}"
                    );
                    runs.push(run_one(order, ty, interval, writes)?);
                }
            }
        }

        let mut md = String::new();
        md.push_str(&format!(
            "{writes} random 4 KiB writes per run (SplitMix64, the same addresses and data for \
             both types) over a {} MiB backing device, with a client FLUSH after every 1, 4 or \
             16 writes. Cache device: {SLOTS} slots; plog (type 1): {PLOG_REGIONS} regions \
             (`16 + {PLOG_REGIONS} * region_sectors_for(blocks per segment)` sectors); \
             {POOL} RAM buffers; seed tunables with `allow_writeback 1`. The background \
             daemons (`tick` with the simulated time, then `run_due_steps`) run after every \
             {} ms of simulated client time, identically for both types; after the writes a \
             `drop_caches` drains everything to the backing device, so both types end in the \
             same state.\n\n",
            BACKING_BLOCKS * BLOCK_SIZE as u64 / (1024 * 1024),
            BG_PERIOD_NS / 1_000_000,
        ));
        md.push_str(
            "**Latency model** (`engine/src/device/latency.rs`). The engine is synchronous, so the \
             model is serial: every operation's time is added up, nothing overlaps, and a \
             run's simulated time is the sum over its devices. *Client MB/s* is acknowledged \
             bytes over the device time spent inside client writes and FLUSHes (what a client \
             waits for when the daemons use idle device time); *MB/s incl. writeback* divides \
             by all device time, background steps and the final drain included. A backing op \
             is sequential when it starts where the previous one ended; the model gives no \
             credit to sorting otherwise.\n\n",
        );
        md.push_str(MARKDOWN_HEADER);
        md.push('\n');
        for m in [SSD, HDD] {
            md.push_str(&markdown_row(&m));
            md.push('\n');
        }
        md.push_str(
            "\n*cache B / ack B*, *plog B / ack B*: bytes written to that device per byte the \
             client wrote (background writes included); *flushes / client flush*: device \
             flushes per client FLUSH; *slots / 1000 writes*: segments opened per 1000 writes \
             (each takes a cache slot and, once the ring wraps, a writeback); *1 ÷ 0*: type 1 \
             over type 0. Every run reads every written block back through the engine, and \
             from a copy of its devices reopened as after a power cut, before the drain, and \
             again after it; any difference aborts the bench.\n\n",
        );
        for &order in &ORDERS {
            let of_order: Vec<&Run> = runs.iter().filter(|r| r.order == order).collect();
            md.push_str(&format!(
                "### Segment order {order} ({} KiB segments, {} blocks each){}\n\n",
                (512u64 << order) / 1024,
                (1u64 << (order - 3)) - 1,
                if order == engine::format::UPSTREAM_ORDER {
                    ", upstream's"
                } else {
                    ""
                }
            ));
            md.push_str(&main_table(&of_order).to_markdown());
            md.push('\n');
            md.push_str(&notes(&of_order));
            md.push('\n');
        }
        md.push_str(
            "### Raw counters (background and drain included, verification reads excluded)\n\n",
        );
        md.push_str(&raw_table(&runs).to_markdown());
        Ok(md)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_has_its_own_data() {
        let (mut a, mut b) = (vec![0u8; BLOCK_SIZE], vec![0u8; BLOCK_SIZE]);
        fill(&mut a, 5, 1);
        fill(&mut b, 5, 2);
        assert_ne!(a, b);
        fill(&mut b, 6, 1);
        assert_ne!(a, b);
    }

    #[test]
    fn small_runs_check_their_data_and_type_1_opens_fewer_segments() {
        let t0 = run_one(7, 0, 1, 64).unwrap();
        let t1 = run_one(7, 1, 1, 64).unwrap();
        assert_eq!((t0.client_flushes, t1.client_flushes), (64, 64));
        assert_eq!(t0.slots, 64, "type 0 seals a segment per FLUSH");
        assert_eq!(t1.slots, 5, "type 1 fills 15-block segments");
        assert_eq!(t1.dev[1].flushes, 64, "one plog flush per FLUSH");
    }
}
