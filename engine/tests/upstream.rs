//! Recovery of caches that upstream dm-writeboost wrote, built by hand with the format module:
//! recovery follows upstream's rule (the record is a hint; the ring bounds what can be dirty),
//! keeps wbcache's stronger checks only where they lose nothing upstream would recover, and
//! never destroys log data that is not written back. Each case also checks that `check`
//! explains exactly what `open` does.
//!
//! The kernel itself is the judge in `cargo xtask kernel-interop`; these cases need no VM.

use engine::format::{self, Geometry, Metablock, BLOCK_SIZE, SECTOR_SIZE, SUPERBLOCK_SECTORS};
use engine::inspect::{NoteKind, ProblemKind, SlotClass};
use engine::{check, check_against_backing, Config, Error, FormatPolicy, MemDevice, SyncEngine};

const ORDER: u8 = 10;
const BACKING_BLOCKS: u64 = 256;

/// A cache device image with `nr` order-10 slots.
struct Image {
    geo: Geometry,
    bytes: Vec<u8>,
}

impl Image {
    /// As upstream formats it: the magic in sector 0, zeros elsewhere (record 0).
    fn upstream(nr: u64) -> Image {
        let sectors = SUPERBLOCK_SECTORS + nr * (1 << ORDER);
        let mut bytes = vec![0u8; sectors as usize * SECTOR_SIZE];
        bytes[..BLOCK_SIZE].copy_from_slice(&format::encode_upstream_superblock());
        Image {
            geo: Geometry::new(ORDER, sectors).unwrap(),
            bytes,
        }
    }

    /// As wbcache formats it (order 10, so the kernel can use it), generation 7.
    fn ours(nr: u64) -> Image {
        let sectors = SUPERBLOCK_SECTORS + nr * (1 << ORDER);
        let mut dev = MemDevice::new(sectors);
        engine::format_device(&mut dev, ORDER, 7).unwrap();
        Image {
            geo: Geometry::new(ORDER, sectors).unwrap(),
            bytes: dev.into_bytes(),
        }
    }

    fn put(&mut self, sector: u64, data: &[u8]) {
        let at = sector as usize * SECTOR_SIZE;
        self.bytes[at..at + data.len()].copy_from_slice(data);
    }

    /// Segment `id` in its slot, holding `blocks` (backing block, dirty bits, fill byte);
    /// `crc`: with wbcache's block CRCs (else as upstream writes it).
    fn segment(&mut self, id: u64, blocks: &[(u64, u8, u8)], crc: bool) -> &mut Self {
        let blocks: Vec<(Metablock, [u8; BLOCK_SIZE])> = blocks
            .iter()
            .map(|&(block, dirty, fill)| {
                let data = [fill; BLOCK_SIZE];
                let m = Metablock {
                    sector: block * 8,
                    dirty_bits: dirty,
                    block_crc: crc.then(|| format::block_crc(&data)),
                };
                (m, data)
            })
            .collect();
        let seg = format::build_segment(id, &blocks);
        self.put(self.geo.slot_sector(self.geo.slot_of(id)), &seg);
        self
    }

    /// A segment write torn after its header sector: the id is there, the checksum fails.
    fn torn(&mut self, id: u64) -> &mut Self {
        let at = self.geo.slot_sector(self.geo.slot_of(id));
        let mut s = [0u8; SECTOR_SIZE];
        s[..8].copy_from_slice(&id.to_le_bytes());
        s[12] = 3;
        self.put(at, &s);
        self
    }

    /// The record as upstream's recorder writes it.
    fn upstream_record(&mut self, id: u64) -> &mut Self {
        self.put(
            format::RECORD_BLOCK_SECTOR,
            &format::encode_upstream_record_block(id),
        );
        self
    }
}

fn cfg() -> Config {
    Config {
        segment_size_order: ORDER,
        nr_rambuf_pool: 2,
        format: FormatPolicy::Never,
        ..Config::default()
    }
}

fn open(img: &Image) -> Result<(SyncEngine<MemDevice>, engine::RecoveryReport), Error> {
    SyncEngine::open(
        MemDevice::from_bytes(img.bytes.clone()),
        MemDevice::new(BACKING_BLOCKS * 8),
        cfg(),
    )
}

/// The 4 KiB blocks a reader sees, by backing block.
fn read_blocks(e: &mut SyncEngine<MemDevice>, blocks: &[u64]) -> Vec<[u8; BLOCK_SIZE]> {
    blocks
        .iter()
        .map(|&b| {
            let mut buf = [0u8; BLOCK_SIZE];
            e.read(b * 8, &mut buf).unwrap();
            buf
        })
        .collect()
}

fn filled(fill: u8) -> [u8; BLOCK_SIZE] {
    [fill; BLOCK_SIZE]
}

/// A ring of `nr` slots holding ids `first..first + nr` (segment `id` writes backing block
/// `id % 8` with fill `id`), as upstream leaves it after the log wrapped.
fn wrapped(img: &mut Image, first: u64, nr: u64, crc: bool) {
    for id in first..first + nr {
        img.segment(id, &[(id % 8, 0xFF, id as u8)], crc);
    }
}

/// What serving it gives for blocks 0..8 when every segment from `from` on is applied.
fn expected(from: u64, to: u64) -> Vec<[u8; BLOCK_SIZE]> {
    let mut want = vec![[0u8; BLOCK_SIZE]; 8];
    for id in from..=to {
        want[(id % 8) as usize] = filled(id as u8);
    }
    want
}

#[test]
fn wrapped_log_with_record_zero_recovers_every_segment() {
    let nr = 6;
    let mut img = Image::upstream(nr);
    wrapped(&mut img, 56, nr, false); // ids 56..=61, record still 0
    let report = check(&mut MemDevice::from_bytes(img.bytes.clone())).unwrap();
    assert!(report.sound, "{report}");
    let plan = report.replay.unwrap();
    assert_eq!((plan.record, plan.written_back), (0, 55));
    assert_eq!((plan.segments_applied, plan.last_applied), (6, 61));
    assert_eq!(plan.invalidated_slots, 0);
    assert!(report.notes.iter().any(|n| n.kind == NoteKind::RecordLags));
    assert!(report.slots.iter().all(|s| s.class == SlotClass::Valid));

    let (mut e, rep) = open(&img).unwrap();
    assert_eq!((rep.written_back, rep.segments_applied), (55, 6), "{rep:?}");
    assert_eq!(rep.stale_invalidated, 0, "nothing is destroyed");
    assert_eq!(
        read_blocks(&mut e, &(0..8).collect::<Vec<_>>()),
        expected(56, 61)
    );
    // The ring's bound is now the durable record, readable by upstream at offset 0.
    let (c, b) = e.into_devices();
    let s2047 = &c.bytes()[2047 * SECTOR_SIZE..2048 * SECTOR_SIZE];
    assert_eq!(format::decode_record(s2047), 55);
    // Opened again (no more evidence needed), and drained: the backing device holds it all.
    let (mut e, rep) = SyncEngine::open(c, b, cfg()).unwrap();
    assert_eq!((rep.record, rep.segments_applied), (55, 6));
    e.drain().unwrap();
    let (_, b) = e.shutdown().unwrap();
    for (i, want) in expected(56, 61).iter().enumerate() {
        assert!(
            b.bytes()[i * BLOCK_SIZE..][..BLOCK_SIZE] == want[..],
            "block {i}"
        );
    }
}

#[test]
fn an_upstream_record_is_a_hint_and_the_larger_bound_wins() {
    let nr = 6;
    // The record (58) is ahead of the ring's bound (55): segments 56..58 are written back.
    let mut img = Image::upstream(nr);
    wrapped(&mut img, 56, nr, false);
    img.upstream_record(58);
    let (mut e, rep) = open(&img).unwrap();
    assert_eq!(
        (rep.record, rep.written_back, rep.segments_applied),
        (58, 58, 3)
    );
    let got = read_blocks(&mut e, &[0, 1, 2, 3, 4, 5, 6, 7]);
    // Blocks of 59..61 come from the cache; the rest from the (here empty) backing device,
    // where upstream wrote them back.
    let mut want = vec![[0u8; BLOCK_SIZE]; 8];
    for id in 59..=61u64 {
        want[(id % 8) as usize] = filled(id as u8);
    }
    assert_eq!(got, want);
    // A stale record (10, far behind the ring) is raised by the ring.
    let mut img = Image::upstream(nr);
    wrapped(&mut img, 56, nr, false);
    img.upstream_record(10);
    let (_, rep) = open(&img).unwrap();
    assert_eq!((rep.record, rep.written_back), (10, 55));
}

#[test]
fn round_trip_the_kernel_record_overrides_our_stale_backup() {
    let nr = 6;
    // wbcache formatted it (generation 7, backup and primary records 0); the kernel then ran
    // it with update_sb_record_interval, wrapping the log: its record write zeroed our
    // extension in sector 2047. Our backup in sector 2039 still says 0.
    let mut img = Image::ours(nr);
    wrapped(&mut img, 56, nr, false);
    img.upstream_record(59);
    let report = check(&mut MemDevice::from_bytes(img.bytes.clone())).unwrap();
    assert!(report.sound, "{report}");
    let rec = report.records.unwrap();
    assert_eq!(rec.record, Some(59));
    assert_eq!(rec.source.unwrap().as_str(), "upstream-primary");
    let (mut e, rep) = open(&img).unwrap();
    assert_eq!(
        (rep.record, rep.written_back, rep.last_applied),
        (59, 59, 61)
    );
    let got = read_blocks(&mut e, &[60 % 8, 61 % 8]);
    assert_eq!(got, vec![filled(60), filled(61)]);
    // Without the kernel's record (interval 0), the ring alone bounds it.
    let mut img = Image::ours(nr);
    wrapped(&mut img, 56, nr, false);
    let (_, rep) = open(&img).unwrap();
    assert_eq!(
        (rep.record, rep.written_back, rep.segments_applied),
        (0, 55, 6)
    );
}

#[test]
fn a_torn_newest_segment_ends_the_log_where_upstream_does() {
    let nr = 6;
    // Power cut while the kernel wrote segment 62 over slot of 56.
    let mut img = Image::upstream(nr);
    wrapped(&mut img, 56, nr, false);
    img.torn(62);
    let report = check(&mut MemDevice::from_bytes(img.bytes.clone())).unwrap();
    assert!(report.sound, "{report}");
    assert!(report.notes.iter().any(|n| n.kind == NoteKind::TornAtEnd));
    let (mut e, rep) = open(&img).unwrap();
    // 62 in 56's slot proves 56 written back; 57..61 are applied; 62 is invalidated.
    assert_eq!((rep.written_back, rep.last_applied), (56, 61), "{rep:?}");
    assert_eq!(rep.stale_invalidated, 1);
    assert_eq!(read_blocks(&mut e, &[61 % 8]), vec![filled(61)]);
}

#[test]
fn an_upstream_segment_past_a_hole_is_refused_not_destroyed() {
    let nr = 6;
    // First lap: 1, 2, hole (3 lost), 4 persisted: dm-writeboost would apply 4.
    let mut img = Image::upstream(nr);
    img.segment(1, &[(1, 0xFF, 1)], false)
        .segment(2, &[(2, 0xFF, 2)], false)
        .segment(4, &[(4, 0xFF, 4)], false);
    let report = check(&mut MemDevice::from_bytes(img.bytes.clone())).unwrap();
    assert!(!report.sound, "{report}");
    assert!(report
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::WouldDiscard));
    let cache = MemDevice::from_bytes(img.bytes.clone());
    let err = SyncEngine::open(cache, MemDevice::new(BACKING_BLOCKS * 8), cfg())
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(&err, Error::WouldDiscard { ids, stop: 3, .. } if ids == &[4]),
        "{err}"
    );
    assert!(err.to_string().contains("dm-writeboost"), "{err}");
}

#[test]
fn our_segment_past_a_hole_was_never_flushed_and_is_dropped() {
    let nr = 6;
    let mut img = Image::ours(nr);
    img.segment(1, &[(1, 0xFF, 1)], true)
        .segment(2, &[(2, 0xFF, 2)], true)
        .segment(4, &[(4, 0xFF, 4)], true);
    let report = check(&mut MemDevice::from_bytes(img.bytes.clone())).unwrap();
    assert!(report.sound, "{report}");
    assert!(report
        .notes
        .iter()
        .any(|n| n.kind == NoteKind::UnreachableSegments));
    let (mut e, rep) = open(&img).unwrap();
    assert_eq!((rep.last_applied, rep.stale_invalidated), (2, 1));
    assert_eq!(read_blocks(&mut e, &[4]), vec![[0u8; BLOCK_SIZE]]);
}

#[test]
fn a_previous_lap_is_not_resurrected() {
    let nr = 4;
    // The write of 7 (slot 2) was lost, leaving 3 there; upstream would apply 3 after 6.
    let mut img = Image::ours(nr);
    img.segment(5, &[(0, 0xFF, 5)], true)
        .segment(6, &[(1, 0xFF, 6)], true)
        .segment(3, &[(0, 0xFF, 3)], true)
        .segment(4, &[(2, 0xFF, 4)], true);
    img.put(
        format::BACKUP_RECORD_BLOCK_SECTOR,
        &format::encode_record_block(&format::RecordExt {
            last_writeback_id: 4,
            flags: 0,
            generation: 7,
        }),
    );
    let (mut e, rep) = open(&img).unwrap();
    assert_eq!((rep.written_back, rep.last_applied), (4, 6));
    assert_eq!(
        read_blocks(&mut e, &[0]),
        vec![filled(5)],
        "3 is older than 5"
    );
}

#[test]
fn a_clean_read_cache_entry_replaces_an_older_dirty_copy() {
    let mut img = Image::upstream(4);
    img.segment(1, &[(3, 0xFF, 0x31)], false)
        .segment(2, &[(3, 0x00, 0x32)], false);
    let (mut e, rep) = open(&img).unwrap();
    assert_eq!(rep.dirty_blocks, 0, "{rep:?}");
    // Upstream staged the block from the backing device after writing the dirty copy back.
    assert_eq!(read_blocks(&mut e, &[3]), vec![[0u8; BLOCK_SIZE]]);
}

#[test]
fn replay_writebacks_are_explained_and_backing_size_is_checked() {
    let mut img = Image::upstream(4);
    img.segment(1, &[(5, 0xFF, 0x11)], false)
        .segment(2, &[(5, 0xF0, 0x22)], false);
    let report = check_against_backing(&mut MemDevice::from_bytes(img.bytes.clone()), 48).unwrap();
    assert!(report.sound, "{report}");
    let plan = report.replay.unwrap();
    assert_eq!(
        (plan.replay_writebacks, plan.backing_sectors_needed),
        (1, 48)
    );
    assert!(report
        .notes
        .iter()
        .any(|n| n.kind == NoteKind::ReplayWritebacks));
    // A backing device that ends inside block 5's dirty sectors is refused, with nothing
    // written anywhere.
    let small = check_against_backing(&mut MemDevice::from_bytes(img.bytes.clone()), 45).unwrap();
    assert!(!small.sound);
    let err = SyncEngine::open(
        MemDevice::from_bytes(img.bytes.clone()),
        MemDevice::new(45),
        cfg(),
    )
    .map(|_| ())
    .unwrap_err();
    assert!(matches!(err, Error::SegmentOutOfRange { .. }), "{err}");
}

// ----- what dm-writeboost's replay needs of a ring we leave (docs/DESIGN.md, "The peer's
// replay"): it applies every valid slot, and a partly dirty copy over an older dirty one
// writes the older copy's sectors back first -----

/// `sectors` 512-byte sectors, sector `s` filled with `s as u8 ^ 0xA5`.
fn patterned(sectors: u64) -> MemDevice {
    let bytes = (0..sectors * SECTOR_SIZE as u64)
        .map(|i| (i / SECTOR_SIZE as u64) as u8 ^ 0xA5)
        .collect();
    MemDevice::from_bytes(bytes)
}

fn sector_fill(block: &[u8], s: usize) -> u8 {
    let sector = &block[s * SECTOR_SIZE..(s + 1) * SECTOR_SIZE];
    assert!(
        sector.iter().all(|&b| b == sector[0]),
        "sector {s} is uniform"
    );
    sector[0]
}

#[test]
fn a_partial_write_is_logged_whole_with_the_backing_data_around_it() {
    let img = Image::ours(4);
    let (mut e, _) = SyncEngine::open(
        MemDevice::from_bytes(img.bytes.clone()),
        patterned(BACKING_BLOCKS * 8),
        cfg(),
    )
    .unwrap();
    // Sectors 2..4 of block 7 (backing sectors 58, 59).
    e.write(7 * 8 + 2, &[0x77; 2 * SECTOR_SIZE], false).unwrap();
    e.flush().unwrap();
    let (cache, _) = e.into_devices();
    let seg = &cache.bytes()[img.geo.slot_sector(0) as usize * SECTOR_SIZE..];
    assert_eq!(format::decode_segment_header(seg).id, 1);
    let mb = format::decode_metablock(seg, 0);
    assert_eq!(
        (mb.sector, mb.dirty_bits),
        (56, 0xFF),
        "rule R14: a whole copy"
    );
    let data = &seg[BLOCK_SIZE..2 * BLOCK_SIZE];
    let fills: Vec<u8> = (0..8).map(|s| sector_fill(data, s)).collect();
    let backing = |s: u64| s as u8 ^ 0xA5;
    assert_eq!(
        fills,
        [
            backing(56),
            backing(57),
            0x77,
            0x77,
            backing(60),
            backing(61),
            backing(62),
            backing(63)
        ]
    );
}

#[test]
fn a_partial_write_over_an_upstream_partial_copy_is_completed_from_both() {
    let mut img = Image::upstream(4);
    img.segment(1, &[(5, 0xF0, 0x11)], false);
    let (mut e, _) = SyncEngine::open(
        MemDevice::from_bytes(img.bytes.clone()),
        patterned(BACKING_BLOCKS * 8),
        cfg(),
    )
    .unwrap();
    e.write(5 * 8, &[0x22; SECTOR_SIZE], false).unwrap();
    let mut got = [0u8; BLOCK_SIZE];
    e.read(5 * 8, &mut got).unwrap();
    let backing = |s: u64| (40 + s) as u8 ^ 0xA5;
    let want = [
        0x22,
        backing(1),
        backing(2),
        backing(3),
        0x11,
        0x11,
        0x11,
        0x11,
    ];
    assert_eq!(
        (0..8).map(|s| sector_fill(&got, s)).collect::<Vec<_>>(),
        want
    );
    e.flush().unwrap();
    let (cache, _) = e.into_devices();
    let seg = &cache.bytes()[img.geo.slot_sector(1) as usize * SECTOR_SIZE..];
    assert_eq!(format::decode_segment_header(seg).id, 2);
    assert_eq!(format::decode_metablock(seg, 0).dirty_bits, 0xFF);
    assert_eq!(&seg[BLOCK_SIZE..2 * BLOCK_SIZE], &got[..]);
}

#[test]
fn the_record_passes_an_upstream_partial_copy_only_once_older_slots_are_reused() {
    let mut img = Image::upstream(4);
    img.segment(1, &[(5, 0x0F, 0x11)], false)
        .segment(2, &[(5, 0x3F, 0x22)], false);
    let (mut e, rep) = open(&img).unwrap();
    assert_eq!(rep.last_applied, 2);
    e.drain().unwrap();
    let st = e.status();
    assert_eq!(st.last_writeback_id, 2, "{st:?}");
    // Rule R13: segment 1 needs segment 4 durable, segment 2 needs segment 5.
    assert_eq!(st.durable_record_id, 0, "{st:?}");
    assert_eq!(st.nr_dirty_cache_blocks, 0);
    // Three more segments: every slot older than segments 1 and 2 is reused.
    for b in 10..13u64 {
        e.write(b * 8, &filled(b as u8), false).unwrap();
        e.flush().unwrap();
    }
    e.drain().unwrap();
    let st = e.status();
    assert_eq!(
        (st.last_writeback_id, st.durable_record_id),
        (5, 5),
        "{st:?}"
    );
    let want = [0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0, 0];
    let got = read_blocks(&mut e, &[5])[0];
    assert_eq!(
        (0..8).map(|s| sector_fill(&got, s)).collect::<Vec<_>>(),
        want
    );
}

#[test]
fn a_record_only_the_backup_holds_is_written_to_the_primary_too() {
    let mut img = Image::ours(4);
    img.segment(1, &[(1, 0xFF, 0x11)], true)
        .segment(2, &[(2, 0xFF, 0x22)], true);
    let rec = format::RecordExt {
        last_writeback_id: 2,
        flags: 0,
        generation: 7,
    };
    img.put(
        format::BACKUP_RECORD_BLOCK_SECTOR,
        &format::encode_record_block(&rec),
    );
    let (e, rep) = open(&img).unwrap();
    assert_eq!((rep.record, rep.segments_applied), (2, 0), "{rep:?}");
    let (cache, _) = e.into_devices();
    let primary = &cache.bytes()[format::RECORD_SECTOR as usize * SECTOR_SIZE..];
    assert_eq!(
        format::decode_record(primary),
        2,
        "the primary the peer reads"
    );
}
