//! Section: replay, ours (`SyncEngine::open`) against upstream's full-read replay, on the same
//! cache image in the same run.
//!
//! **Ours** (engine/src/recovery.rs, docs/DESIGN.md "Replay"): the superblock and both record
//! copies, the first sector of every slot (ids only), then only the segments above the record
//! `r` (written-back id), each read as its 4 KiB header and then its `length` data blocks,
//! checksum checked, metablocks applied to the index; then both devices are flushed.
//!
//! **Upstream** ([`upstream_replay`], a faithful copy of `replay_log_on_cache` in the 2014
//! dm-writeboost staging patch, shared/seeds/000, dm-writeboost-metadata.c): the superblock
//! header sector (`audit_cache_device`); `find_max_id` reads the 4 KiB header of every segment;
//! `apply_valid_segments` reads every segment *whole* (`read_whole_segment`, `1 << order`
//! sectors, one request), starting after the newest, skips id 0, stops at the first checksum
//! failure and applies every metablock to an in-memory hash index (newest copy wins); then
//! `infer_last_writeback_id` reads the record sector. The index is [`engine::index::Index`], the
//! structure our engine uses, so both do the same in-memory work and the difference is the I/O.
//!
//! **Devices.** Real files in a temp directory, opened through `runner::filedev::FileDevice`
//! (O_DIRECT where the file system allows it, which keeps the page cache out) for both
//! algorithms, each wrapped in [`Counted`], one counter for both: bytes and requests are what
//! the algorithm asked the device for, not what it says it read.
//!
//! **Cache states**, made by the engine itself at segment order 10 (upstream's): random 4 KiB
//! writes until every slot holds a sealed segment, then a FLUSH — (a) the ring full of dirty
//! segments, record 0; (b) then writeback steps (`Step::Writeback`, one segment a batch) up to
//! all but the last eighth of the ring and a `Step::Record`: the steady state of a cache whose
//! writeback keeps up; (c) then `drop_caches` drained to the end: everything written back. The
//! engine runs on in-memory devices (writeback through O_DIRECT would be one synchronous 4 KiB
//! write per block, tens of seconds a GiB) and every state's images are copied to the files
//! (the chunks that changed) before it is measured.
//!
//! **Checked** (a failure aborts the bench): upstream's index holds every block written (nothing
//! was lost from the ring) and, counting only segments above the record, exactly as many blocks
//! as ours recovered and as the filling engine had dirty; ours writes nothing; both find the same
//! last id and record; for a sample of blocks the copy upstream's index points to, and what our
//! recovered engine reads, are the newest write of that block, and our engine serves it from the
//! cache device exactly when upstream's copy is above the record.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use engine::device::{Observed, Observer, Op};
use engine::format::{
    self, Geometry, Superblock, BLOCK_SIZE, RECORD_SECTOR, SECTORS_PER_BLOCK, SECTOR_SIZE,
    UPSTREAM_ORDER,
};
use engine::index::{Index, Mb};
use engine::{
    BlockDevice, Config, DeviceRole, FormatPolicy, IoError, MemDevice, RecoveryReport, Step,
    SyncEngine,
};
use runner::filedev::{FileDevice, IoMode};

use super::{Mode, Section, Table};
use crashsim::rng::SplitMix64;

pub struct Replay;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Cache device sizes (the whole file, superblock region included). Full mode adds 4 GiB when
/// the temp directory and the memory have room.
const QUICK_SIZES: [u64; 2] = [64 * MIB, GIB];
const FULL_EXTRA: u64 = 4 * GIB;
/// Timed replays per algorithm and state, interleaved (ours, upstream, upstream, ours, ...);
/// the table shows the median.
const QUICK_REPS: usize = 3;
const FULL_REPS: usize = 5;
/// State (b): the record is at `nr - nr / DIRTY_TAIL`, the last eighth of the ring is dirty.
const DIRTY_TAIL: u64 = 8;
/// Blocks checked per state against the newest write of each.
const SAMPLE: usize = 512;
/// The engine's RAM buffers while filling.
const POOL: usize = 8;
const SEED: u64 = 0x5742_7265_706c_6179;
const GENERATION: u64 = 0x7e91a7;
/// Granularity of copying changed parts of an in-memory image to its file.
const CHUNK: usize = MIB as usize;
/// Ratios within this much of 1 count as a tie in the notes.
const TIE: f64 = 0.05;

/// The content of write number `write` to `block`: unique per write, so a stale copy shows.
fn fill(buf: &mut [u8], block: u64, write: u32) {
    let mut r =
        SplitMix64::new(SEED ^ block.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (write as u64) << 40);
    for c in buf.chunks_exact_mut(8) {
        c.copy_from_slice(&r.next_u64().to_le_bytes());
    }
}

// ----- devices -----

/// What one algorithm asked of a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Io {
    read_ops: u64,
    /// Bytes requested.
    read_bytes: u64,
    /// Bytes the device transfers: each request widened to the O_DIRECT alignment.
    device_read_bytes: u64,
    write_ops: u64,
    flushes: u64,
}

/// Adds up the bytes each read transfers once widened to the device's O_DIRECT alignment.
struct Widened {
    /// O_DIRECT alignment of the device (1: none).
    align: u64,
    bytes: u64,
}

impl Observer for Widened {
    fn observe(&mut self, op: &Op<'_>, _failed: bool) {
        if let Op::Read { sector, data } = *op {
            let (off, a) = (sector * SECTOR_SIZE as u64, self.align);
            let (start, end) = (off / a * a, (off + data.len() as u64).div_ceil(a) * a);
            self.bytes += end - start;
        }
    }
}

/// Counts every request on its way to the wrapped device.
type Counted<D> = Observed<D, Widened>;

fn counted<D>(dev: D, align: u64) -> Counted<D> {
    let align = align.max(1);
    Observed::with_observer(dev, Widened { align, bytes: 0 })
}

/// What `d` was asked since it was opened.
fn io<D>(d: &Counted<D>) -> Io {
    let c = d.counts();
    Io {
        read_ops: c.read_ops,
        read_bytes: c.bytes_read,
        device_read_bytes: d.observer().bytes,
        write_ops: c.write_ops,
        flushes: c.flushes,
    }
}

/// Which chunks of an in-memory device changed since when, so only those are copied to the
/// file of a state.
struct Changes {
    /// Per chunk: the number of the last write that touched it (0: never written).
    chunk_write: Vec<u64>,
    /// Writes so far (a failed one too: it may have changed part of its range).
    writes: u64,
}

impl Observer for Changes {
    fn observe(&mut self, op: &Op<'_>, _failed: bool) {
        if let Op::Write { sector, data, .. } = *op {
            self.writes += 1;
            let start = sector as usize * SECTOR_SIZE;
            let end = (start + data.len())
                .div_ceil(CHUNK)
                .min(self.chunk_write.len());
            for c in &mut self.chunk_write[(start / CHUNK).min(end)..end] {
                *c = self.writes;
            }
        }
    }
}

/// An in-memory device that remembers which chunks changed since when.
type TrackedMem = Observed<MemDevice, Changes>;

fn tracked_mem(sectors: u64) -> TrackedMem {
    let bytes = sectors as usize * SECTOR_SIZE;
    let changes = Changes {
        chunk_write: vec![0; bytes.div_ceil(CHUNK)],
        writes: 0,
    };
    Observed::with_observer(MemDevice::new(sectors), changes)
}

/// Copies to `file` every chunk of `mem` written after write number `since`, then flushes the
/// file. Returns the bytes copied.
fn copy_changes(mem: &TrackedMem, since: u64, file: &mut FileDevice) -> Result<u64, String> {
    let bytes = mem.inner().bytes();
    let chunk_write = &mem.observer().chunk_write;
    let mut copied = 0u64;
    let mut c = 0;
    // Runs of changed chunks, at most 16 of them a write.
    while c < chunk_write.len() {
        if chunk_write[c] <= since {
            c += 1;
            continue;
        }
        let first = c;
        while c < chunk_write.len() && chunk_write[c] > since && c - first < 16 {
            c += 1;
        }
        let (start, end) = (first * CHUNK, (c * CHUNK).min(bytes.len()));
        file.write((start / SECTOR_SIZE) as u64, &bytes[start..end], false)
            .map_err(|e| format!("writing the image to {}: {e}", file.path().display()))?;
        copied += (end - start) as u64;
    }
    file.flush()
        .map_err(|e| format!("fdatasync of {}: {e}", file.path().display()))?;
    Ok(copied)
}

/// A temp directory removed with everything in it when dropped (on success, error or panic).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "wbcache-bench-replay-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("bench: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// Bytes available to an unprivileged user on the file system of `dir` (`df -Pk`).
fn free_bytes(dir: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .arg("-Pk")
        .arg(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kib: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// `MemAvailable` from /proc/meminfo.
fn available_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = s
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Opens a scratch image as the server would. It claims the file for this process while it
/// lives (`FileDevice::open`), so the bench keeps at most one handle of each image open.
fn open_file(path: &Path, role: DeviceRole) -> Result<FileDevice, String> {
    FileDevice::open(path, role, IoMode::DirectIfSupported, 0).map_err(|e| e.to_string())
}

fn counted_file(path: &Path, role: DeviceRole) -> Result<Counted<FileDevice>, String> {
    let f = open_file(path, role)?;
    let align = if f.is_direct() { f.alignment() } else { 1 };
    Ok(counted(f, align))
}

// ----- upstream's replay -----

/// What [`upstream_replay`] rebuilt.
struct Upstream {
    geo: Geometry,
    index: Index,
    /// Id of the segment applied from each slot (0: none).
    slot_ids: Vec<u64>,
    /// The last id applied (`last_flushed_segment_id` after replay).
    last_applied: u64,
    /// The record read from sector 2047.
    record: u64,
    /// `last_writeback_segment_id` as `infer_last_writeback_id` sets it.
    last_writeback: u64,
}

impl Upstream {
    /// Blocks whose newest copy lies in a segment above the record: the ones upstream's
    /// writeback daemon would still write back.
    fn dirty_above_record(&self) -> u64 {
        (0..self.geo.nr_segments)
            .filter(|&s| self.slot_ids[s as usize] > self.last_writeback)
            .map(|s| self.index.live_in_slot(s) as u64)
            .sum()
    }
}

/// Upstream's `replay_log_on_cache` (shared/seeds/000, dm-writeboost-metadata.c, Dec 2014),
/// with the same reads of the same sizes in the same order:
/// - `audit_cache_device`: sector 0, one sector, checks the magic;
/// - `find_max_id`: `read_segment_header` (8 sectors) of every segment, the largest id;
/// - `apply_valid_segments`: from the slot after the newest id, for every slot,
///   `read_whole_segment` (`1 << order` sectors); id 0 is skipped, a checksum mismatch ends the
///   walk; every metablock is applied (`apply_metablock_device`: the older copy of the block is
///   dropped from the hash table, the new one registered, dirty);
/// - `infer_last_writeback_id`: `read_superblock_record`, sector 2047, one sector; the writeback
///   position is the larger of it and `last_applied - nr_segments`.
///
/// Only full-block dirty metablocks are modelled: upstream writes an older, partially dirty copy
/// back in the middle of replay (`invalidate_previous_cache`), and `apply_metablock_device`
/// BUGs on a clean one; the bench writes whole blocks only, and anything else is an error here.
fn upstream_replay<D: BlockDevice>(dev: &mut D) -> Result<Upstream, String> {
    let io = |what: &str, e: IoError| format!("upstream replay: {what}: {e}");
    let mut sector = vec![0u8; SECTOR_SIZE];
    dev.read(0, &mut sector)
        .map_err(|e| io("superblock header", e))?;
    if !matches!(format::decode_superblock(&sector), Superblock::Valid(_)) {
        return Err("upstream replay: no superblock magic in sector 0".into());
    }
    let geo = Geometry::new(UPSTREAM_ORDER, dev.size_sectors()).map_err(|e| e.to_string())?;
    let nr = geo.nr_segments;
    let n = geo.blocks_per_segment();

    // find_max_id
    let mut header = vec![0u8; BLOCK_SIZE];
    let mut max_id = 0u64;
    for k in 0..nr {
        dev.read(geo.slot_sector(k), &mut header)
            .map_err(|e| io("segment header", e))?;
        max_id = max_id.max(format::decode_segment_header(&header).id);
    }

    // apply_valid_segments
    let mut index = Index::new(nr, n);
    let mut slot_ids = vec![0u64; nr as usize];
    let mut seg = vec![0u8; geo.segment_bytes()];
    let start = geo.slot_of(max_id + 1);
    let mut last_applied = 0;
    for i in start..start + nr {
        let k = i % nr;
        dev.read(geo.slot_sector(k), &mut seg)
            .map_err(|e| io("whole segment", e))?;
        let h = format::decode_segment_header(&seg);
        if h.id == 0 {
            continue;
        }
        if !format::segment_checksum_ok(&seg) {
            break;
        }
        for j in 0..h.length as usize {
            let m = format::decode_metablock(&seg, j);
            if m.dirty_bits != 0xFF {
                return Err(format!(
                    "upstream replay: segment {} block {j} has dirty bits {:#04x}; only whole \
                     dirty blocks are modelled",
                    h.id, m.dirty_bits
                ));
            }
            let block = m.sector / SECTORS_PER_BLOCK;
            if let Some(old) = index.lookup(block) {
                index.remove(old);
            }
            index.insert(
                index.idx(k, j),
                Mb {
                    block,
                    crc: m.block_crc,
                    dirty: m.dirty_bits,
                },
            );
        }
        slot_ids[k as usize] = h.id;
        last_applied = h.id;
    }

    // infer_last_writeback_id
    dev.read(RECORD_SECTOR, &mut sector)
        .map_err(|e| io("superblock record", e))?;
    let record = format::decode_record(&sector);
    let last_writeback = last_applied.saturating_sub(nr).max(record);
    Ok(Upstream {
        geo,
        index,
        slot_ids,
        last_applied,
        record,
        last_writeback,
    })
}

// ----- states and measurements -----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AllDirty,
    MostWrittenBack,
    AllWrittenBack,
}

impl State {
    const ALL: [State; 3] = [
        State::AllDirty,
        State::MostWrittenBack,
        State::AllWrittenBack,
    ];
    fn label(self) -> &'static str {
        match self {
            State::AllDirty => "a: all dirty",
            State::MostWrittenBack => "b: last 1/8 dirty",
            State::AllWrittenBack => "c: all written back",
        }
    }
}

/// One (size, state) measured.
struct Row {
    cache_bytes: u64,
    state: State,
    nr_segments: u64,
    record: u64,
    dirty_blocks: u64,
    ours_ms: f64,
    up_ms: f64,
    ours: Io,
    up: Io,
    /// `RecoveryReport::bytes_read` (self-reported), for the cross-check.
    ours_reported: u64,
}

/// How a size was prepared.
struct Prep {
    cache_bytes: u64,
    writes: u64,
    distinct: u64,
    fill_s: f64,
    copied: u64,
    copy_s: f64,
    direct: bool,
    align: u64,
}

type FillEng = SyncEngine<TrackedMem>;
/// Our engine recovered from the files.
type FileEng = SyncEngine<Counted<FileDevice>>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn eng_err(what: &str) -> impl Fn(engine::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Random whole-block writes until every slot holds a sealed segment, then a FLUSH. Returns the
/// writes made; `shadow[block]` is the number of the newest write of each block (0: none).
fn fill_ring(e: &mut FillEng, shadow: &mut [u32]) -> Result<u64, String> {
    let nr = e.geometry().nr_segments;
    let n = e.geometry().blocks_per_segment() as u64;
    let mut rng = SplitMix64::new(SEED ^ nr);
    let mut buf = vec![0u8; BLOCK_SIZE];
    let bound = 4 * nr * n;
    let mut writes = 0u64;
    while e.status().last_sealed_id < nr {
        if writes == bound {
            return Err(format!("{bound} writes did not fill {nr} segments"));
        }
        writes += 1;
        let block = rng.next_u64() % shadow.len() as u64;
        let w = u32::try_from(writes).map_err(|_| "too many writes".to_string())?;
        fill(&mut buf, block, w);
        e.write(block * SECTORS_PER_BLOCK, &buf, false)
            .map_err(eng_err("write"))?;
        shadow[block as usize] = w;
    }
    e.flush().map_err(eng_err("flush"))?;
    Ok(writes)
}

/// Moves the filling engine from the previous state to `state` with background steps and
/// messages, and checks it got there.
fn make_state(e: &mut FillEng, state: State) -> Result<(), String> {
    let nr = e.geometry().nr_segments;
    match state {
        State::AllDirty => {}
        State::MostWrittenBack => {
            let target = nr - nr / DIRTY_TAIL;
            e.message("nr_max_batched_writeback 1")
                .map_err(eng_err("message"))?;
            for _ in 0..nr {
                if e.status().last_writeback_id >= target {
                    break;
                }
                e.run_step(Step::Writeback).map_err(eng_err("writeback"))?;
            }
            e.run_step(Step::Record).map_err(eng_err("record"))?;
        }
        State::AllWrittenBack => {
            e.drain().map_err(eng_err("drain"))?;
        }
    }
    let st = e.status();
    let want = match state {
        State::AllDirty => 0,
        State::MostWrittenBack => nr - nr / DIRTY_TAIL,
        State::AllWrittenBack => nr,
    };
    if st.last_durable_id != nr || st.durable_record_id != want || st.last_writeback_id != want {
        return Err(format!(
            "state {}: expected {nr} durable segments and record {want}, the engine has {} and \
             {} (written back {})",
            state.label(),
            st.last_durable_id,
            st.durable_record_id,
            st.last_writeback_id
        ));
    }
    Ok(())
}

/// One timed replay of ours: the recovered engine, its report, time, and the counters of both
/// devices (the backing device is only flushed).
fn time_ours(cache: &Path, backing: &Path) -> Result<(FileEng, RecoveryReport, f64, Io), String> {
    let (c, b) = (
        counted_file(cache, DeviceRole::Cache)?,
        counted_file(backing, DeviceRole::Backing)?,
    );
    let cfg = Config {
        format: FormatPolicy::Never,
        nr_rambuf_pool: POOL,
        ..Config::default()
    };
    let t = Instant::now();
    let (e, rep) = SyncEngine::open(c, b, cfg).map_err(eng_err("our replay (SyncEngine::open)"))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let (mut io, bio) = (io(e.cache_device()), io(e.backing_device()));
    if bio.read_ops != 0 || bio.write_ops != 0 || io.write_ops != 0 {
        return Err(format!(
            "our replay wrote to the cache device ({} writes) or touched the backing device \
             ({} reads, {} writes): the image would change between runs",
            io.write_ops, bio.read_ops, bio.write_ops
        ));
    }
    io.flushes += bio.flushes;
    Ok((e, rep, ms, io))
}

fn time_upstream(cache: &Path) -> Result<(Upstream, f64, Io), String> {
    let mut c = counted_file(cache, DeviceRole::Cache)?;
    let t = Instant::now();
    let up = upstream_replay(&mut c)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    Ok((up, ms, io(&c)))
}

/// Checks both replays against each other and against the newest write of a sample of blocks.
#[allow(clippy::too_many_arguments)]
fn verify(
    state: State,
    ours: &mut FileEng,
    rep: &RecoveryReport,
    up: &Upstream,
    shadow: &[u32],
    distinct: u64,
    filling_dirty: u64,
    cache_path: &Path,
) -> Result<(), String> {
    let what = state.label();
    let fail = |msg: String| Err(format!("state {what}: {msg}: refusing to report it"));
    if up.index.live_total() != distinct {
        return fail(format!(
            "upstream's index holds {} blocks, {distinct} distinct blocks were written (all of \
             them still in the ring)",
            up.index.live_total()
        ));
    }
    let up_dirty = up.dirty_above_record();
    if up_dirty != rep.dirty_blocks || rep.dirty_blocks != filling_dirty {
        return fail(format!(
            "dirty blocks differ: upstream {up_dirty} above the record, ours {}, the engine that \
             made the image {filling_dirty}",
            rep.dirty_blocks
        ));
    }
    let nr = up.geo.nr_segments;
    if up.record != rep.record || up.last_applied != nr || rep.last_applied != nr {
        return fail(format!(
            "upstream saw record {} and last id {}, ours record {} and last id {} ({nr} \
             segments were written)",
            up.record, up.last_applied, rep.record, rep.last_applied
        ));
    }
    if up.last_writeback != rep.record {
        return fail(format!(
            "upstream resumes writeback after id {}, the record is {}",
            up.last_writeback, rep.record
        ));
    }
    let written: Vec<u64> = (0..shadow.len() as u64)
        .filter(|&b| shadow[b as usize] != 0)
        .collect();
    let step = (written.len() / SAMPLE).max(1);
    // A plain read-only handle: `ours` holds the image's claim, and this only checks content.
    let file = File::open(cache_path).map_err(|e| format!("{}: {e}", cache_path.display()))?;
    let (mut want, mut got) = (vec![0u8; BLOCK_SIZE], vec![0u8; BLOCK_SIZE]);
    for &block in written.iter().step_by(step) {
        fill(&mut want, block, shadow[block as usize]);
        let idx = up
            .index
            .lookup(block)
            .ok_or_else(|| format!("state {what}: upstream lost block {block}"))?;
        let slot = up.index.slot_of(idx);
        let at = up.geo.block_sector(slot, up.index.pos_of(idx)) * SECTOR_SIZE as u64;
        file.read_exact_at(&mut got, at)
            .map_err(|e| format!("{}: {e}", cache_path.display()))?;
        if got != want {
            return fail(format!(
                "the copy of block {block} upstream's index points to is not its newest write"
            ));
        }
        let before = ours.cache_device().counts().read_ops;
        ours.read(block * SECTORS_PER_BLOCK, &mut got)
            .map_err(eng_err("reading through our recovered engine"))?;
        if got != want {
            return fail(format!(
                "our recovered engine reads block {block} wrong (not its newest write)"
            ));
        }
        let ours_cached = ours.cache_device().counts().read_ops > before;
        let up_dirty = up.slot_ids[slot as usize] > up.last_writeback;
        if ours_cached != up_dirty {
            return fail(format!(
                "block {block}: ours serves it from the {}, upstream has it {} the record",
                if ours_cached {
                    "cache device"
                } else {
                    "backing device"
                },
                if up_dirty { "above" } else { "at or below" }
            ));
        }
    }
    Ok(())
}

/// Fills one cache size, and for each state copies the images to the files and measures both
/// replays `reps` times.
fn run_size(cache_bytes: u64, reps: usize, dir: &Path) -> Result<(Prep, Vec<Row>), String> {
    let sectors = cache_bytes / SECTOR_SIZE as u64;
    let tag = cache_bytes / MIB;
    let cache_path = dir.join(format!("cache-{tag}m.img"));
    let backing_path = dir.join(format!("backing-{tag}m.img"));
    for p in [&cache_path, &backing_path] {
        File::create(p)
            .and_then(|f| f.set_len(cache_bytes))
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let (direct, align) = {
        let (c, b) = (
            open_file(&cache_path, DeviceRole::Cache)?,
            open_file(&backing_path, DeviceRole::Backing)?,
        );
        (c.is_direct() && b.is_direct(), c.alignment())
    };

    // The backing device is as large as the cache device: random writes over it overwrite
    // blocks often, so replay's newest-copy-wins matters. Writing back ahead of need is off:
    // with every device completing at once it would keep a batch of slots clean, and the first
    // state is a ring where every slot is dirty (what a slow backing device leaves).
    let cfg = Config {
        segment_size_order: UPSTREAM_ORDER,
        nr_rambuf_pool: POOL,
        format: FormatPolicy::IfBlank,
        generation: GENERATION,
        write_back_ahead: false,
        ..Config::default()
    };
    let (mut e, rep) = SyncEngine::open(tracked_mem(sectors), tracked_mem(sectors), cfg)
        .map_err(eng_err("formatting the in-memory cache"))?;
    if !rep.formatted {
        return Err("the in-memory cache was not formatted".into());
    }
    let t = Instant::now();
    let mut shadow = vec![0u32; (sectors / SECTORS_PER_BLOCK) as usize];
    let writes = fill_ring(&mut e, &mut shadow)?;
    let fill_s = t.elapsed().as_secs_f64();
    let distinct = shadow.iter().filter(|&&w| w != 0).count() as u64;
    if e.status().nr_dirty_cache_blocks != distinct {
        return Err(format!(
            "after filling, the engine has {} dirty blocks for {distinct} distinct blocks written",
            e.status().nr_dirty_cache_blocks
        ));
    }

    let mut rows = Vec::new();
    let (mut since_cache, mut since_backing) = (0u64, 0u64);
    let (mut copied, mut copy_s) = (0u64, 0f64);
    for state in State::ALL {
        make_state(&mut e, state)?;
        let t = Instant::now();
        {
            // Closed again before the replays open the images.
            let mut cache_file = open_file(&cache_path, DeviceRole::Cache)?;
            let mut backing_file = open_file(&backing_path, DeviceRole::Backing)?;
            copied += copy_changes(e.cache_device(), since_cache, &mut cache_file)?;
            copied += copy_changes(e.backing_device(), since_backing, &mut backing_file)?;
        }
        copy_s += t.elapsed().as_secs_f64();
        since_cache = e.cache_device().observer().writes;
        since_backing = e.backing_device().observer().writes;
        let filling_dirty = e.status().nr_dirty_cache_blocks;
        eprintln!("bench: replay {tag} MiB, state {}", state.label());

        let (mut ours_ms, mut up_ms) = (Vec::new(), Vec::new());
        // Only what a run reported: each engine is dropped at once, so that the other
        // replay can open the image.
        let mut ours_last: Option<(RecoveryReport, Io)> = None;
        let mut up_last: Option<(Upstream, Io)> = None;
        for i in 0..reps {
            // Alternate who goes first.
            for ours_turn in [i % 2 == 0, i % 2 != 0] {
                if ours_turn {
                    let prev = ours_last.take();
                    let (eng, rep, ms, io) = time_ours(&cache_path, &backing_path)?;
                    drop(eng);
                    ours_ms.push(ms);
                    if prev.is_some_and(|p| p != (rep.clone(), io)) {
                        return Err("our replay read differently from one run to the next".into());
                    }
                    ours_last = Some((rep, io));
                } else {
                    let prev = up_last.take().map(|(_, io)| io);
                    let (up, ms, io) = time_upstream(&cache_path)?;
                    up_ms.push(ms);
                    if prev.is_some_and(|p| p != io) {
                        return Err(
                            "upstream's replay read differently from one run to the next".into(),
                        );
                    }
                    up_last = Some((up, io));
                }
            }
        }
        let (rep, ours_io) = ours_last.ok_or("no replay ran")?;
        let (up, up_io) = up_last.ok_or("no replay ran")?;
        // Once more, untimed, for an engine to read through.
        let (mut eng, again, _, again_io) = time_ours(&cache_path, &backing_path)?;
        if (again, again_io) != (rep.clone(), ours_io) {
            return Err("our replay read differently from one run to the next".into());
        }
        verify(
            state,
            &mut eng,
            &rep,
            &up,
            &shadow,
            distinct,
            filling_dirty,
            &cache_path,
        )?;
        rows.push(Row {
            cache_bytes,
            state,
            nr_segments: up.geo.nr_segments,
            record: rep.record,
            dirty_blocks: rep.dirty_blocks,
            ours_ms: median(ours_ms),
            up_ms: median(up_ms),
            ours: ours_io,
            up: up_io,
            ours_reported: rep.bytes_read,
        });
    }
    Ok((
        Prep {
            cache_bytes,
            writes,
            distinct,
            fill_s,
            copied,
            copy_s,
            direct,
            align,
        },
        rows,
    ))
}

// ----- the report -----

fn size_label(bytes: u64) -> String {
    if bytes >= GIB && bytes % GIB == 0 {
        format!("{} GiB", bytes / GIB)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

fn mib(bytes: u64) -> String {
    let m = bytes as f64 / MIB as f64;
    if m < 10.0 {
        format!("{m:.2}")
    } else {
        format!("{m:.1}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b <= 0.0 {
        "—".into()
    } else if a / b >= 100.0 {
        format!("{:.0}×", a / b)
    } else {
        format!("{:.2}×", a / b)
    }
}

fn table(rows: &[Row]) -> Table {
    let mut t = Table::new(&[
        "cache",
        "state",
        "segments",
        "record",
        "dirty blocks",
        "ours ms",
        "upstream ms",
        "ours MiB read",
        "upstream MiB read",
        "ours reads",
        "upstream reads",
        "time: upstream ÷ ours",
        "bytes: upstream ÷ ours",
    ]);
    for r in rows {
        t.row(vec![
            size_label(r.cache_bytes),
            r.state.label().into(),
            r.nr_segments.to_string(),
            r.record.to_string(),
            r.dirty_blocks.to_string(),
            format!("{:.1}", r.ours_ms),
            format!("{:.1}", r.up_ms),
            mib(r.ours.device_read_bytes),
            mib(r.up.device_read_bytes),
            r.ours.read_ops.to_string(),
            r.up.read_ops.to_string(),
            ratio(r.up_ms, r.ours_ms),
            ratio(
                r.up.device_read_bytes as f64,
                r.ours.device_read_bytes as f64,
            ),
        ]);
    }
    t
}

fn prep_table(preps: &[Prep]) -> Table {
    let mut t = Table::new(&[
        "cache",
        "writes to fill the ring",
        "distinct blocks",
        "fill s (in memory)",
        "MiB copied to files (3 states)",
        "copy s",
    ]);
    for p in preps {
        t.row(vec![
            size_label(p.cache_bytes),
            p.writes.to_string(),
            p.distinct.to_string(),
            format!("{:.1}", p.fill_s),
            format!("{:.0}", p.copied as f64 / MIB as f64),
            format!("{:.1}", p.copy_s),
        ]);
    }
    t
}

/// Sentences derived from the measured numbers: where there is no gain, where we lose, and why.
fn notes(rows: &[Row]) -> String {
    let mut out = String::new();
    for r in rows {
        let size = size_label(r.cache_bytes);
        let rt = r.up_ms / r.ours_ms;
        let rb = r.up.device_read_bytes as f64 / r.ours.device_read_bytes as f64;
        let per_op_us = r.ours_ms * 1e3 / r.ours.read_ops as f64;
        match r.state {
            State::AllDirty => {
                out.push_str(&format!(
                    "- {size}, all dirty: {} in bytes ({rb:.2}×): every segment is above the \
                     record, so ours must read and checksum each of them just as upstream does; \
                     only the header scan is smaller (512 B a slot against 4 KiB). Reading \
                     O(headers) is a property of written-back segments, not of dirty ones.",
                    if rb < 1.0 + TIE {
                        "no real saving"
                    } else {
                        "a small saving"
                    }
                ));
                if rt < 1.0 - TIE {
                    out.push_str(&format!(
                        " We lose on time here ({rt:.2}×): ours makes {} read requests against \
                         upstream's {} (the slot scan's 512-byte reads, then each \
                         segment in one read of its used length) and flushes both devices ({} \
                         fdatasyncs) before it returns.",
                        r.ours.read_ops, r.up.read_ops, r.ours.flushes
                    ));
                } else if rt <= 1.0 + TIE {
                    out.push_str(&format!(" Time is a tie ({rt:.2}×)."));
                } else {
                    out.push_str(&format!(" Ours is {rt:.2}× faster."));
                }
                out.push('\n');
            }
            State::MostWrittenBack | State::AllWrittenBack => {
                let what = if r.state == State::AllWrittenBack {
                    "all written back"
                } else {
                    "last eighth dirty"
                };
                if rt < 1.0 - TIE {
                    out.push_str(&format!(
                        "- {size}, {what}: we lose on time ({rt:.2}×) although ours reads \
                         {rb:.1}× fewer bytes.\n"
                    ));
                } else {
                    out.push_str(&format!(
                        "- {size}, {what}: ours reads {} fewer bytes and takes {rt:.1}× less \
                         time.",
                        if rb >= 100.0 {
                            format!("{rb:.0}×")
                        } else {
                            format!("{rb:.1}×")
                        }
                    ));
                    if rt < rb / 2.0 {
                        out.push_str(&format!(
                            " Time gains less than bytes: ours still makes {} read requests (one \
                             per slot for the ids{}), about {per_op_us:.0} µs each here on \
                             average (`FileDevice` runs a `read_batch` up to 16 requests at a \
                             time), so request latency, not bytes, bounds ours.",
                            r.ours.read_ops,
                            if r.dirty_blocks > 0 {
                                ", then one per dirty segment"
                            } else {
                                ""
                            }
                        ));
                    }
                    out.push('\n');
                }
            }
        }
    }
    let mismatched: Vec<String> = rows
        .iter()
        .filter(|r| r.ours_reported != r.ours.read_bytes)
        .map(|r| {
            format!(
                "{} {}: report {} B, counted {} B",
                size_label(r.cache_bytes),
                r.state.label(),
                r.ours_reported,
                r.ours.read_bytes
            )
        })
        .collect();
    if mismatched.is_empty() {
        out.push_str(
            "- Cross-check: our `RecoveryReport::bytes_read` equals the bytes the counter saw \
             requested in every row.\n",
        );
    } else {
        out.push_str(&format!(
            "- Cross-check: our `RecoveryReport::bytes_read` differs from the counted bytes: {}.\n",
            mismatched.join("; ")
        ));
    }
    out
}

impl Section for Replay {
    fn name(&self) -> &'static str {
        "replay"
    }

    fn title(&self) -> &'static str {
        "Replay: ours against upstream's full-read replay"
    }

    fn run(&self, mode: Mode) -> Result<String, String> {
        let reps = match mode {
            Mode::Quick => QUICK_REPS,
            Mode::Full => FULL_REPS,
        };
        let dir = TempDir::new()?;
        let mut sizes = QUICK_SIZES.to_vec();
        let mut skipped = None;
        if mode == Mode::Full {
            // Two files of the cache's size, and both images in memory while filling.
            let (disk_need, mem_need) = (2 * FULL_EXTRA + GIB, 2 * FULL_EXTRA + 2 * GIB);
            match (free_bytes(&dir.0), available_memory()) {
                (Some(d), Some(m)) if d >= disk_need && m >= mem_need => sizes.push(FULL_EXTRA),
                (d, m) => {
                    let show = |x: Option<u64>| {
                        x.map_or("unknown".to_string(), |b| {
                            format!("{:.1} GiB", b as f64 / GIB as f64)
                        })
                    };
                    skipped = Some(format!(
                        "{} skipped: it needs {} GiB free in {} (there are {}) and {} GiB of \
                         available memory (there are {}).",
                        size_label(FULL_EXTRA),
                        disk_need / GIB,
                        std::env::temp_dir().display(),
                        show(d),
                        mem_need / GIB,
                        show(m)
                    ));
                }
            }
        }
        let (mut preps, mut rows) = (Vec::new(), Vec::new());
        for &size in &sizes {
            let (p, r) = run_size(size, reps, &dir.0)?;
            preps.push(p);
            rows.extend(r);
        }
        let direct = preps.iter().all(|p| p.direct);
        let align = preps.iter().map(|p| p.align).max().unwrap_or(1);

        let mut md = String::new();
        md.push_str(&format!(
            "Time and bytes read to recover a type-0 cache at segment order {UPSTREAM_ORDER} \
             (upstream's: 512 KiB segments of 127 blocks), `SyncEngine::open` against upstream's \
             `replay_log_on_cache` (shared/seeds/000, reimplemented in \
             `xtask/src/bench/replay.rs` with the same reads of the same sizes: every segment's \
             4 KiB header, then every segment whole, checksum checked, metablocks applied to an \
             in-memory index, the one our engine uses). Both read the same image files in {}, \
             through `runner::filedev::FileDevice`, counted by the same wrapper device; {reps} \
             runs of each, interleaved, median time. The backing device is a file of the cache's \
             size.\n\n",
            std::env::temp_dir().display()
        ));
        md.push_str(&format!(
            "**O_DIRECT: {}.** {}\n\n",
            if direct { "yes" } else { "no" },
            if direct {
                format!(
                    "The page cache could not serve either algorithm (reads are aligned to {align} \
                     B). A cache below the guest (the host's, for a virtual disk) may still \
                     hold recently written images; both algorithms read the same bytes in the \
                     same run, interleaved."
                )
            } else {
                "The file system refused O_DIRECT: the images were just written through the page \
                 cache, so both algorithms may have read from memory; the times then compare \
                 CPU and request counts, not the disk."
                    .to_string()
            }
        ));
        md.push_str(
            "**States**, made by the engine: random 4 KiB writes over the backing device until \
             every slot holds a sealed segment, then a FLUSH (**a**: all dirty, record 0); then \
             `Step::Writeback` one segment at a time up to all but the last eighth of the ring \
             and `Step::Record` (**b**: the steady state of a cache whose writeback keeps up); \
             then `drop_caches` run to the end (**c**: everything written back). The engine ran \
             on in-memory devices and the changed parts of the images were copied to the files \
             before each state was measured (writeback through O_DIRECT would be one \
             synchronous 4 KiB write per block).\n\n",
        );
        md.push_str(
            "*MiB read*: bytes read from the cache device, each request widened to the O_DIRECT \
             alignment; *reads*: read requests (ours' header scan is a `read_batch` of 512-byte \
             reads, which `FileDevice` runs up to 16 at a time on its I/O threads). Ours also flushes both devices (2 \
             fdatasyncs, in the time). Checked in every row (a failure aborts the bench): \
             upstream's index holds every block written; the blocks it has above the record are \
             as many as ours recovered and as the engine that made the image had dirty; both \
             read the same record and last id; for a sample of blocks the copy upstream points \
             to and what our recovered engine reads are the newest write, and ours serves it \
             from the cache device exactly when upstream's copy is above the record.\n\n",
        );
        md.push_str(&table(&rows).to_markdown());
        md.push('\n');
        md.push_str(&notes(&rows));
        if let Some(s) = skipped {
            md.push_str(&format!("- {s}\n"));
        } else if mode == Mode::Quick {
            md.push_str(
                "- Quick mode: 64 MiB and 1 GiB; the full mode adds 4 GiB when there is room.\n",
            );
        }
        md.push_str("\n### Preparation (not timed against anything)\n\n");
        md.push_str(&prep_table(&preps).to_markdown());
        Ok(md)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_widens_reads_to_the_alignment() {
        let mut d = counted(MemDevice::new(64), 4096);
        let mut buf = vec![0u8; 512];
        d.read(1, &mut buf).unwrap();
        d.read(8, &mut vec![0u8; 4096]).unwrap();
        d.read(7, &mut vec![0u8; 1024]).unwrap();
        assert_eq!(io(&d).read_ops, 3);
        assert_eq!(io(&d).read_bytes, 512 + 4096 + 1024);
        assert_eq!(io(&d).device_read_bytes, 4096 + 4096 + 8192);
    }

    /// A ring that wrapped (forced writeback): upstream's walk starts after the newest id and
    /// finds the same dirty blocks as ours.
    #[test]
    fn upstream_replay_agrees_with_ours_after_the_ring_wrapped() {
        let sectors = 2048 + 6 * 1024;
        let cfg = Config {
            generation: GENERATION,
            ..Config::default()
        };
        let (mut e, _) =
            SyncEngine::open(MemDevice::new(sectors), MemDevice::new(2048), cfg).unwrap();
        let mut rng = SplitMix64::new(1);
        let mut buf = vec![0u8; BLOCK_SIZE];
        for w in 1..=(20 * 127) {
            let block = rng.next_u64() % 256;
            fill(&mut buf, block, w);
            e.write(block * SECTORS_PER_BLOCK, &buf, false).unwrap();
        }
        e.flush().unwrap();
        let (mut cache, backing) = e.into_devices();
        let up = upstream_replay(&mut cache.clone()).unwrap();
        let cfg = Config {
            format: FormatPolicy::Never,
            ..cfg
        };
        let (_, rep) = SyncEngine::open(cache.clone(), backing, cfg).unwrap();
        assert!(up.last_applied > 6, "the ring wrapped");
        assert_eq!(up.last_applied, rep.last_applied);
        assert_eq!(up.last_writeback, rep.record);
        assert_eq!(up.dirty_above_record(), rep.dirty_blocks);
        // A torn newest segment: upstream's walk stops before it.
        let slot = up.geo.slot_of(up.last_applied);
        let at = up.geo.block_sector(slot, 3) as usize * SECTOR_SIZE;
        cache.bytes_mut()[at] ^= 1;
        let torn = upstream_replay(&mut cache).unwrap();
        assert_eq!(torn.last_applied, up.last_applied - 1);
    }

    #[test]
    fn small_cache_runs_every_state_and_checks_itself() {
        let dir = TempDir::new().unwrap();
        let (prep, rows) = run_size(8 * MIB, 1, &dir.0).unwrap();
        assert_eq!(rows.len(), 3);
        let nr = (8 * MIB / 512 - 2048) / 1024;
        assert_eq!(prep.distinct, rows[0].dirty_blocks);
        assert_eq!(rows[1].record, nr - nr / DIRTY_TAIL);
        assert_eq!(rows[2].dirty_blocks, 0);
        // All written back: ours reads sector 0, both records and one sector a slot.
        assert_eq!(rows[2].ours.read_bytes, 512 + 1024 + nr * 512);
        // Upstream: one sector twice, then a header and a whole segment per slot.
        assert_eq!(rows[2].up.read_bytes, 1024 + nr * (4096 + 512 * 1024));
        for r in &rows {
            assert_eq!(r.ours_reported, r.ours.read_bytes);
        }
        let path = dir.0.clone();
        drop(dir);
        assert!(!path.exists(), "the temp directory is removed");
    }
}
