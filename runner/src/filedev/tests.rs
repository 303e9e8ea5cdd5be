//! Tests of `FileDevice` against models of the file.

use super::*;

fn temp_file(bytes: u64) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(bytes).unwrap();
    f
}

#[test]
fn typed_errors_for_missing_small_and_odd_sized_files() {
    let e = FileDevice::open(
        Path::new("/nonexistent/x"),
        DeviceRole::Cache,
        IoMode::Buffered,
        0,
    );
    assert!(matches!(e, Err(DeviceError::NotFound { .. })), "{e:?}");
    let f = temp_file(4096 + 100);
    let e = FileDevice::open(f.path(), DeviceRole::Cache, IoMode::Buffered, 0);
    assert!(
        matches!(e, Err(DeviceError::NotSectorMultiple { .. })),
        "{e:?}"
    );
    let msg = e.err().unwrap().to_string();
    assert!(
        msg.contains("4196 bytes") && msg.contains("512-byte sectors"),
        "{msg}"
    );
    // Whole sectors but not whole blocks: a cache or plog device may be, a backing one not.
    let f = temp_file(4096 + 512);
    for role in [DeviceRole::Cache, DeviceRole::Plog] {
        let d = FileDevice::open(f.path(), role, IoMode::Buffered, 0).unwrap();
        assert_eq!(d.size_sectors(), 9);
    }
    let e = FileDevice::open(f.path(), DeviceRole::Backing, IoMode::Buffered, 0);
    assert!(
        matches!(e, Err(DeviceError::BackingNotBlockMultiple { .. })),
        "{e:?}"
    );
    let msg = e.err().unwrap().to_string();
    assert!(
        msg.contains("4608 bytes") && msg.contains("4096-byte blocks"),
        "{msg}"
    );
    let f = temp_file(4096);
    let e = FileDevice::open(f.path(), DeviceRole::Cache, IoMode::Buffered, 8192);
    assert!(matches!(e, Err(DeviceError::TooSmall { .. })), "{e:?}");
    let f = temp_file(0);
    let e = FileDevice::open(f.path(), DeviceRole::Cache, IoMode::Buffered, 0);
    assert!(matches!(e, Err(DeviceError::TooSmall { .. })), "{e:?}");
    let d = tempfile::tempdir().unwrap();
    let e = FileDevice::open(d.path(), DeviceRole::Cache, IoMode::Buffered, 0);
    assert!(
        matches!(e, Err(DeviceError::NotFileOrBlockDevice { .. })),
        "{e:?}"
    );
}

/// Sub-block writes at every offset round-trip, with the device layer forced to a
/// 4096-byte alignment (the read-modify-write path) and in its natural mode.
fn sub_block_writes_round_trip(force_align: Option<u64>) {
    let f = temp_file(64 * 1024);
    let mut d =
        FileDevice::open(f.path(), DeviceRole::Cache, IoMode::DirectIfSupported, 0).unwrap();
    if let Some(a) = force_align {
        if !d.direct {
            eprintln!("no O_DIRECT on this file system; testing the RMW path buffered");
            d.direct = true; // the RMW path works on buffered files too
        }
        d.align = a;
    }
    let mut model = vec![0u8; 64 * 1024];
    for (i, (sector, count)) in [
        (0u64, 1usize),
        (1, 2),
        (7, 3),
        (8, 8),
        (13, 1),
        (15, 17),
        (100, 4),
    ]
    .into_iter()
    .enumerate()
    {
        let x = i as u8 + 1;
        let data: Vec<u8> = (0..count * 512).map(|i| x.wrapping_add(i as u8)).collect();
        d.write(sector, &data, x % 2 == 0).unwrap();
        model[sector as usize * 512..][..data.len()].copy_from_slice(&data);
    }
    d.flush().unwrap();
    let mut all = vec![0u8; 64 * 1024];
    d.read(0, &mut all).unwrap();
    assert!(all == model, "device content differs from the model");
    let mut one = [0u8; 512];
    d.read(14, &mut one).unwrap();
    assert_eq!(&one[..], &model[14 * 512..15 * 512]);
    assert!(d.read(128, &mut one).is_err(), "past the end");
    drop(d);
    assert!(std::fs::read(f.path()).unwrap() == model, "file content");
}

#[test]
fn sub_block_writes_round_trip_with_4k_alignment() {
    sub_block_writes_round_trip(Some(4096));
}

#[test]
fn sub_block_writes_round_trip_natural() {
    sub_block_writes_round_trip(None);
}

/// A device over a fresh zeroed file of `bytes`, forced to `force_align` as in
/// `sub_block_writes_round_trip`.
fn device(bytes: u64, force_align: Option<u64>) -> (tempfile::NamedTempFile, FileDevice) {
    let f = temp_file(bytes);
    let mut d =
        FileDevice::open(f.path(), DeviceRole::Cache, IoMode::DirectIfSupported, 0).unwrap();
    if let Some(a) = force_align {
        d.direct = true; // the RMW path works on buffered files too
        d.align = a;
    }
    (f, d)
}

/// The in-memory model of a batch: requests applied in order, later ones win.
fn apply(model: &mut [u8], writes: &[(u64, Vec<u8>, bool)]) {
    for (sector, data, _) in writes {
        model[*sector as usize * 512..][..data.len()].copy_from_slice(data);
    }
}

/// Bytes no earlier write could have left in place: a function of the write's number.
fn pattern(n: usize, sectors: usize) -> Vec<u8> {
    (0..sectors * 512)
        .map(|i| (n as u8).wrapping_mul(31) ^ (i as u8) ^ (i >> 9) as u8)
        .collect()
}

/// Reads `ranges` (sector, sectors) in one `read_batch` and compares each with the model.
fn check_reads(d: &mut FileDevice, model: &[u8], ranges: &[(u64, usize)]) {
    let mut bufs: Vec<Vec<u8>> = ranges.iter().map(|&(_, n)| vec![0xee; n * 512]).collect();
    let mut reqs: Vec<ReadReq<'_>> = ranges
        .iter()
        .zip(bufs.iter_mut())
        .map(|(&(sector, _), buf)| ReadReq { sector, buf })
        .collect();
    d.read_batch(&mut reqs).unwrap();
    for (&(sector, n), buf) in ranges.iter().zip(&bufs) {
        let want = &model[sector as usize * 512..][..n * 512];
        assert!(
            buf == want,
            "read_batch of {n} at {sector} differs from the model"
        );
    }
}

/// Writes `writes` as one batch (and the model), then checks the whole device against the
/// model, through `read` and through a `read_batch` of the written ranges.
fn write_and_check(d: &mut FileDevice, model: &mut [u8], writes: &[(u64, Vec<u8>, bool)]) {
    let reqs: Vec<WriteReq<'_>> = writes
        .iter()
        .map(|(sector, data, fua)| WriteReq {
            sector: *sector,
            data,
            fua: *fua,
        })
        .collect();
    d.write_batch(&reqs).unwrap();
    apply(model, writes);
    let mut all = vec![0u8; model.len()];
    d.read(0, &mut all).unwrap();
    assert!(all == model, "device content differs from the model");
    let ranges: Vec<(u64, usize)> = writes
        .iter()
        .map(|(s, data, _)| (*s, data.len() / 512))
        .collect();
    check_reads(d, model, &ranges);
}

fn batches_round_trip(force_align: Option<u64>) {
    const BYTES: usize = 16 << 20;
    let (f, mut d) = device(BYTES as u64, force_align);
    let mut model = vec![0u8; BYTES];
    let n = std::cell::Cell::new(0);
    let w = |sector: u64, sectors: usize, fua: bool| {
        n.set(n.get() + 1);
        (sector, pattern(n.get(), sectors), fua)
    };
    let cases: Vec<Vec<(u64, Vec<u8>, bool)>> = vec![
        // Contiguous whole blocks (one merged write), then a gap and another stretch.
        (0..8)
            .map(|i| w(64 + 8 * i, 8, false))
            .chain((0..3).map(|i| w(256 + 8 * i, 8, false)))
            .collect(),
        // Non-contiguous, not sorted.
        vec![
            w(800, 8, false),
            w(40, 8, true),
            w(1000, 8, false),
            w(8, 8, false),
        ],
        // Mixed sizes, contiguous from an unaligned sector, with FUA in the middle.
        vec![
            w(3, 1, false),
            w(4, 3, false),
            w(7, 8, true),
            w(15, 16, false),
            w(31, 2, false),
            w(33, 1, false),
            w(50, 5, false),
        ],
        // Overlapping: later requests win, also over a stretch that was merged.
        vec![
            w(2000, 8, false),
            w(2008, 8, false),
            w(2004, 8, false),
            w(2006, 1, false),
            w(2001, 2, false),
            w(2003, 1, false),
        ],
        // Sub-block dirty runs of one block and across a block boundary (the engine's
        // writeback of partly dirty blocks), each alone and contiguous with the next.
        vec![
            w(3001, 2, false),
            w(3005, 1, false),
            w(3007, 2, false),
            w(3009, 3, false),
            w(3014, 1, false),
        ],
        // More than MAX_MERGED_BYTES contiguous, from an unaligned sector: the split lands
        // mid-block, so the second write's read-modify-write reads the first one's data.
        (0..(MAX_MERGED_BYTES / 4096 + 40))
            .map(|i| w(4097 + 8 * i as u64, 8, false))
            .collect(),
        // One request larger than MAX_MERGED_BYTES between two it is contiguous with.
        vec![
            w(20_000 - 1, 1, false),
            w(20_000, MAX_MERGED_BYTES / 512 + 9, false),
            w(20_000 + MAX_MERGED_BYTES as u64 / 512 + 9, 3, true),
        ],
        vec![],
    ];
    for writes in &cases {
        write_and_check(&mut d, &mut model, writes);
    }
    // Reads: contiguous, unaligned, overlapping, repeated, across merged-write edges.
    check_reads(
        &mut d,
        &model,
        &[
            (62, 2),
            (64, 8),
            (72, 1),
            (73, 7),
            (80, 100),
            (70, 20),
            (70, 20),
            (3000, 1),
            (3001, 14),
            (4097, MAX_MERGED_BYTES / 512 + 5),
            (4097 + MAX_MERGED_BYTES as u64 / 512 + 5, 3),
        ],
    );
    // A bad request fails the batch before anything is written, naming that request.
    let data = pattern(999, 8);
    let bad = [
        WriteReq {
            sector: 100,
            data: &data,
            fua: false,
        },
        WriteReq {
            sector: (BYTES / 512) as u64 - 4,
            data: &data,
            fua: false,
        },
    ];
    let e = d.write_batch(&bad).unwrap_err();
    assert_eq!((e.op, e.sector), (Access::Write, (BYTES / 512) as u64 - 4));
    let mut buf = vec![0u8; 512];
    let e = d
        .read_batch(&mut [ReadReq {
            sector: (BYTES / 512) as u64,
            buf: &mut buf,
        }])
        .unwrap_err();
    assert_eq!((e.op, e.sector), (Access::Read, (BYTES / 512) as u64));
    d.flush().unwrap();
    drop(d);
    assert!(std::fs::read(f.path()).unwrap() == model, "file content");
}

#[test]
fn batches_round_trip_with_4k_alignment() {
    batches_round_trip(Some(4096));
}

#[test]
fn batches_round_trip_natural() {
    batches_round_trip(None);
}

/// Reads of 4 KiB at `sectors`, one `read_batch`; returns the buffers or the error.
fn read_blocks(d: &mut FileDevice, sectors: &[u64]) -> Result<Vec<Vec<u8>>, IoError> {
    let mut bufs = vec![vec![0u8; 4096]; sectors.len()];
    let mut reqs: Vec<ReadReq<'_>> = sectors
        .iter()
        .zip(bufs.iter_mut())
        .map(|(&sector, buf)| ReadReq { sector, buf })
        .collect();
    d.read_batch(&mut reqs)?;
    Ok(bufs)
}

fn concurrent_reads_fail_as_in_order(force_align: Option<u64>) {
    const BYTES: u64 = 256 * 1024;
    let (f, mut d) = device(BYTES, force_align);
    let model: Vec<u8> = (0..BYTES as usize).map(|i| (i / 512 * 7) as u8).collect();
    d.write(0, &model, false).unwrap();
    // Scattered blocks, more stretches than read threads: all read concurrently.
    let sectors: Vec<u64> = (0..3 * POOL_THREADS as u64)
        .map(|i| (i * 5 % 64) * 8)
        .collect();
    let bufs = read_blocks(&mut d, &sectors).unwrap();
    assert!(
        d.pool.is_some(),
        "a batch of several stretches uses the pool"
    );
    for (&sector, buf) in sectors.iter().zip(&bufs) {
        assert!(
            buf[..] == model[sector as usize * 512..][..4096],
            "at {sector}"
        );
    }
    // The file shrinks behind the device's back: reads of its second half now fail (end of
    // file), while the device still accepts them.
    f.as_file().set_len(BYTES / 2).unwrap();
    let half = BYTES / 2 / 512;
    let batch = [0, half + 40, 16, half + 8, 100, half + 80, 48];
    let e = read_blocks(&mut d, &batch).unwrap_err();
    assert_eq!(
        (e.op, e.sector, e.sectors),
        (Access::Read, half + 40, 8),
        "the first failing stretch in batch order: {e}"
    );
    // Contiguous with a failing block: the merged stretch fails as a whole.
    let e = read_blocks(&mut d, &[8, half - 8, half, 200]).unwrap_err();
    assert_eq!((e.sector, e.sectors), (half - 8, 16), "{e}");
    // The pool still serves the next batch.
    let ok = [8, 64, 24, 160];
    let bufs = read_blocks(&mut d, &ok).unwrap();
    for (&sector, buf) in ok.iter().zip(&bufs) {
        assert!(
            buf[..] == model[sector as usize * 512..][..4096],
            "at {sector}"
        );
    }
}

#[test]
fn concurrent_reads_fail_as_in_order_with_4k_alignment() {
    concurrent_reads_fail_as_in_order(Some(4096));
}

#[test]
fn concurrent_reads_fail_as_in_order_natural() {
    concurrent_reads_fail_as_in_order(None);
}

/// Scattered writes, more stretches than pool threads, some of them sub-block (with a forced
/// 4096-byte alignment: read-modify-write on the pool threads) and some sharing an aligned
/// block with another (written in batch order on the calling thread), with FUA: the file
/// ends as the model says, and the pool did the work.
fn concurrent_writes_round_trip(force_align: Option<u64>) {
    const BYTES: usize = 1 << 20;
    let (f, mut d) = device(BYTES as u64, force_align);
    let mut model = vec![0u8; BYTES];
    let mut n = 0;
    let mut w = |sector: u64, sectors: usize, fua: bool| {
        n += 1;
        (sector, pattern(n, sectors), fua)
    };
    let mut writes: Vec<(u64, Vec<u8>, bool)> = (0..3 * POOL_THREADS as u64)
        .map(|i| w((i * 37 % 200) * 8 + i % 3, 8 - (i % 3) as usize, i == 5))
        .collect();
    // Sub-block runs of one block (the engine's writeback of a partly dirty block), and an
    // overlap, among the scattered ones.
    writes.insert(4, w(1601, 2, false));
    writes.insert(9, w(1605, 1, false));
    writes.insert(12, w(1607, 1, false));
    writes.insert(2, w(1700, 16, false));
    writes.push(w(1704, 4, false));
    write_and_check(&mut d, &mut model, &writes);
    assert!(
        d.pool.is_some(),
        "a batch of several stretches uses the pool"
    );
    drop(d);
    assert!(std::fs::read(f.path()).unwrap() == model, "file content");
}

#[test]
fn concurrent_writes_round_trip_with_4k_alignment() {
    concurrent_writes_round_trip(Some(4096));
}

#[test]
fn concurrent_writes_round_trip_natural() {
    concurrent_writes_round_trip(None);
}

/// Write batch errors name the first failing stretch in batch order, also when the writes
/// ran concurrently, and the pool still serves the next batch. With a forced 4096-byte
/// alignment a sub-block write past the end of the (shrunk) file fails in its
/// read-modify-write, on a pool thread.
#[test]
fn concurrent_writes_fail_as_in_order() {
    const BYTES: u64 = 256 * 1024;
    let (f, mut d) = device(BYTES, Some(4096));
    let data = pattern(1, 1);
    let batch = |sectors: &[u64]| -> Vec<WriteReq<'_>> {
        sectors
            .iter()
            .map(|&sector| WriteReq {
                sector,
                data: &data,
                fua: true,
            })
            .collect()
    };
    d.write_batch(&batch(&[1, 17, 33, 49])).unwrap();
    assert!(
        d.pool.is_some(),
        "a batch of several stretches uses the pool"
    );
    f.as_file().set_len(BYTES / 2).unwrap();
    let half = BYTES / 2 / 512;
    let e = d
        .write_batch(&batch(&[1, half + 41, 17, half + 9, 33, half + 81]))
        .unwrap_err();
    assert_eq!(
        (e.op, e.sector, e.sectors),
        (Access::Write, half + 41, 1),
        "the first failing stretch in batch order: {e}"
    );
    // Sharing an aligned block, so written in order on the calling thread: still judged in
    // batch order against the pooled ones.
    let e = d
        .write_batch(&batch(&[1, 3, half + 9, half + 11, 33]))
        .unwrap_err();
    assert_eq!((e.sector, e.sectors), (half + 9, 1), "{e}");
    let e = d
        .write_batch(&batch(&[half + 41, 1, 3, half + 9]))
        .unwrap_err();
    assert_eq!((e.sector, e.sectors), (half + 41, 1), "{e}");
    d.write_batch(&batch(&[9, 25, 41])).unwrap();
    let mut buf = vec![0u8; 512];
    for sector in [1, 3, 9, 17, 25, 33, 41, 49] {
        d.read(sector, &mut buf).unwrap();
        assert!(buf == data, "at {sector}");
    }
}

#[test]
fn sharing_aligned_blocks_finds_every_overlapping_range() {
    let s = sharing_aligned_blocks;
    assert_eq!(s(&[]), Vec::<bool>::new());
    assert_eq!(s(&[(0, 4096)]), vec![false]);
    // Touching is not sharing.
    assert_eq!(s(&[(4096, 8192), (0, 4096)]), vec![false, false]);
    assert_eq!(
        s(&[(8192, 12288), (0, 4096), (4096, 8192), (0, 4096)]),
        vec![false, true, false, true]
    );
    // A long range joins later ones that only overlap it, not each other.
    assert_eq!(
        s(&[
            (20480, 24576),
            (0, 16384),
            (12288, 16384),
            (4096, 8192),
            (16384, 20480)
        ]),
        vec![false, true, true, true, false]
    );
}

#[test]
fn failed_merged_write_names_its_first_request() {
    let f = temp_file(64 * 1024);
    let mut d =
        FileDevice::open_read_only(f.path(), DeviceRole::Cache, IoMode::DirectIfSupported).unwrap();
    let data = [1u8; 4096];
    let reqs: Vec<WriteReq<'_>> = [16u64, 24, 32]
        .iter()
        .map(|&sector| WriteReq {
            sector,
            data: &data,
            fua: false,
        })
        .collect();
    let e = d.write_batch(&reqs).unwrap_err();
    assert_eq!((e.op, e.sector, e.sectors), (Access::Write, 16, 24), "{e}");
}

#[test]
fn merge_runs_joins_only_contiguous_neighbours_up_to_the_cap() {
    let m = |reqs: &[(u64, usize)]| merge_runs(reqs.iter().copied());
    assert_eq!(m(&[]), vec![]);
    assert_eq!(m(&[(0, 4096), (8, 512), (9, 512)]), vec![0..3]);
    assert_eq!(
        m(&[(8, 4096), (0, 4096), (8, 4096), (17, 512), (18, 512)]),
        vec![0..1, 1..3, 3..5]
    );
    // The same sector again is an overlap, not contiguity.
    assert_eq!(m(&[(0, 512), (0, 512)]), vec![0..1, 1..2]);
    let cap = MAX_MERGED_BYTES;
    assert_eq!(
        m(&[
            (0, cap / 2),
            (cap as u64 / 1024, cap / 2),
            (cap as u64 / 512, 512)
        ]),
        vec![0..2, 2..3]
    );
    assert_eq!(
        m(&[(0, 512), (1, 2 * cap), (1 + 4 * cap as u64 / 512, 512)]).len(),
        3
    );
}

/// xorshift64*: the random test needs no dependency and replays from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Many random batches: contiguous chains, scattered and overlapping requests of 1 to 24
/// sectors, FUA now and then; after each batch the written ranges and a random set of
/// ranges read back as the model says.
fn random_batches(force_align: Option<u64>, seed: u64) {
    const SECTORS: u64 = 2048;
    let (f, mut d) = device(SECTORS * 512, force_align);
    let mut model = vec![0u8; SECTORS as usize * 512];
    let mut rng = Rng(seed);
    let mut n = 0;
    for _ in 0..300 {
        let mut writes = Vec::new();
        let mut next = rng.below(SECTORS);
        for _ in 0..rng.below(40) {
            let sectors = 1 + rng.below(24);
            let sector = match rng.below(4) {
                // Continue the chain (the common writeback case), or start anywhere.
                0..=1 => next,
                2 => rng.below(SECTORS),
                _ => next.saturating_sub(1 + rng.below(16)), // overlap what came before
            };
            let sector = sector.min(SECTORS - sectors);
            n += 1;
            writes.push((sector, pattern(n, sectors as usize), rng.below(16) == 0));
            next = sector + sectors;
        }
        write_and_check(&mut d, &mut model, &writes);
        let reads: Vec<(u64, usize)> = (0..rng.below(24))
            .map(|_| {
                let sectors = 1 + rng.below(40);
                (rng.below(SECTORS - sectors), sectors as usize)
            })
            .collect();
        check_reads(&mut d, &model, &reads);
    }
    drop(d);
    assert!(std::fs::read(f.path()).unwrap() == model, "file content");
}

#[test]
fn random_batches_with_4k_alignment() {
    for seed in 1..=3u64 {
        random_batches(Some(4096), seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
}

#[test]
fn random_batches_natural() {
    for seed in 1..=3u64 {
        random_batches(None, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) + 1);
    }
}

#[test]
fn a_device_has_one_writer_or_many_readers_while_it_is_open() {
    let f = temp_file(64 * 1024);
    // `held`: how the holder holds it, as F_OFD_GETLK reports.
    let in_use = |e: Result<FileDevice, DeviceError>, want_writable: bool, held: &str| match e {
        Err(DeviceError::InUse {
            path,
            role,
            writable,
            holder,
        }) => {
            assert_eq!(
                (path.as_path(), role, writable),
                (f.path(), DeviceRole::Backing, want_writable)
            );
            // Two opens in this process conflict like two processes; /proc names us.
            assert!(holder.contains("this process"), "{holder}");
            assert!(holder.ends_with(held), "{holder}");
        }
        other => panic!("expected InUse, got {other:?}"),
    };
    let writer =
        FileDevice::open(f.path(), DeviceRole::Cache, IoMode::DirectIfSupported, 0).unwrap();
    let open_rw = || FileDevice::open(f.path(), DeviceRole::Backing, IoMode::Buffered, 0);
    let open_ro = || FileDevice::open_read_only(f.path(), DeviceRole::Backing, IoMode::Buffered);
    in_use(open_rw(), true, "holds it for writing");
    in_use(open_ro(), false, "holds it for writing");
    // The claim goes with the device.
    drop(writer);
    let r1 = open_ro().unwrap();
    let r2 = open_ro().unwrap();
    in_use(open_rw(), true, "holds it for reading");
    drop((r1, r2));
    let e = FileDevice::open(f.path(), DeviceRole::Backing, IoMode::Buffered, 0).unwrap();
    assert_eq!(e.role(), DeviceRole::Backing);
}

#[test]
fn a_writer_keeps_its_claim_while_its_io_threads_run_and_after() {
    let f = temp_file(1 << 20);
    let mut d =
        FileDevice::open(f.path(), DeviceRole::Cache, IoMode::DirectIfSupported, 0).unwrap();
    // A batch of several stretches starts the pool (duplicated descriptors of the same open
    // file); the claim must survive it.
    let data = vec![7u8; 4096];
    let reqs: Vec<WriteReq<'_>> = [0u64, 64, 128]
        .iter()
        .map(|&sector| WriteReq {
            sector,
            data: &data,
            fua: true,
        })
        .collect();
    d.write_batch(&reqs).unwrap();
    assert!(matches!(
        FileDevice::open_read_only(f.path(), DeviceRole::Cache, IoMode::Buffered),
        Err(DeviceError::InUse { .. })
    ));
}

#[test]
fn fdinfo_lock_lines_are_matched_by_device_and_inode() {
    let dev = libc::makedev(0xfe, 0x01);
    let text = "pos:\t0\nflags:\t02140002\nmnt_id:\t27\nino:\t10028061\n\
                lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:01:10028061 0 EOF\n";
    assert!(ownership::fdinfo_owns_ofd_lock(text, dev, 10028061));
    assert!(!ownership::fdinfo_owns_ofd_lock(text, dev, 1002806));
    assert!(!ownership::fdinfo_owns_ofd_lock(
        text,
        libc::makedev(0xfe, 0),
        10028061
    ));
    let posix = text.replace("OFDLCK", "POSIX ");
    assert!(!ownership::fdinfo_owns_ofd_lock(&posix, dev, 10028061));
}

#[test]
fn same_device_sees_through_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.img");
    std::fs::write(&a, [0u8; 4096]).unwrap();
    let link = dir.path().join("link.img");
    std::os::unix::fs::symlink(&a, &link).unwrap();
    let b = dir.path().join("b.img");
    std::fs::write(&b, [0u8; 4096]).unwrap();
    assert!(same_device(&a, &link));
    assert!(!same_device(&a, &b));
    assert!(!same_device(&a, &dir.path().join("missing")));
}

/// A run of writes (the pool's merged writeback writes) lands as the writes one by one would,
/// in both alignments, unaligned edges included; a run past the end fails as a whole.
#[test]
fn a_write_run_lands_like_its_writes() {
    use engine::{IoData, IoKind};
    for force in [None, Some(4096)] {
        let (f, d) = device(64 * 1024, force);
        let mut h = d.handles(1).unwrap().pop().unwrap();
        let mut model = vec![0u8; 64 * 1024];
        let runs: [&[(u64, usize)]; 3] =
            [&[(3, 5), (8, 8), (16, 1)], &[(17, 2)], &[(40, 8), (48, 3)]];
        for (r, run) in runs.iter().enumerate() {
            let kinds: Vec<IoKind> = run
                .iter()
                .enumerate()
                .map(|(i, &(sector, sectors))| {
                    let data = pattern(r * 10 + i + 1, sectors);
                    model[sector as usize * 512..][..data.len()].copy_from_slice(&data);
                    IoKind::Write {
                        sector,
                        data: IoData::from_vec(data),
                        fua: false,
                    }
                })
                .collect();
            let refs: Vec<&IoKind> = kinds.iter().collect();
            let results = h.perform_write_run(&refs);
            assert_eq!(results.len(), run.len());
            assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        }
        let past = IoKind::Write {
            sector: 120,
            data: IoData::from_vec(vec![1; 8 * 512]),
            fua: false,
        };
        let results = h.perform_write_run(&[&past, &past]);
        assert!(results.iter().all(|r| r.is_err()), "past the end");
        drop((h, d));
        assert!(
            std::fs::read(f.path()).unwrap() == model,
            "file content ({force:?})"
        );
    }
}
