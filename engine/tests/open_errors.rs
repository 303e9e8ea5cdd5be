//! Opening bad devices gives clear typed errors, never a panic and never a silent format; bad
//! requests and messages on an open engine give typed errors and leave the engine working.
//!
//! Every failed open is checked to have written nothing at all to the cache device.

// `Config` gains a `quirks` field when the `quirks` feature is on (the crash simulator turns it
// on workspace-wide); `..Config::default()` keeps these literals compiling both ways.
#![allow(clippy::needless_update)]

use engine::device::{Observed, SharedDevice};
use engine::format::{
    self, encode_superblock, Geometry, GeometryError, Metablock, SuperblockExt, BLOCK_SIZE,
    EXT_OFFSET, FORMAT_VERSION, RECORD_SECTOR, SECTORS_PER_BLOCK, SECTOR_SIZE, SUPERBLOCK_MAGIC,
    SUPERBLOCK_SECTORS,
};
use engine::{Config, Error, FormatPolicy, MemDevice, RecoveryReport, SyncEngine};
use proptest::prelude::*;

/// A device whose storage the test keeps a handle on, counting writes, so the bytes can be
/// inspected after `SyncEngine::open` consumed (and dropped) the device.
type Shared = SharedDevice<Observed<MemDevice>>;

fn shared(bytes: Vec<u8>) -> Shared {
    SharedDevice::new(Observed::new(MemDevice::from_bytes(bytes)))
}

fn cfg(order: u8, format: FormatPolicy) -> Config {
    Config {
        segment_size_order: order,
        nr_rambuf_pool: 2,
        tunables: None,
        format,
        generation: 0x1234,
        ..Config::default()
    }
}

/// Opens `cache` (an image) in front of a zeroed backing device of `backing_sectors`; on error,
/// asserts the cache device was not written to at all.
fn open_image(
    cache: Vec<u8>,
    backing_sectors: u64,
    cfg: Config,
) -> Result<(SyncEngine<Shared>, RecoveryReport), Error> {
    let before = cache.clone();
    let dev = shared(cache);
    let backing = shared(vec![0u8; backing_sectors as usize * SECTOR_SIZE]);
    let r = SyncEngine::open(dev.clone(), backing, cfg);
    if let Err(e) = &r {
        assert_eq!(
            dev.borrow().counts().write_ops,
            0,
            "a failed open ({e}) issued writes to the cache device"
        );
        assert!(
            dev.borrow().inner().bytes() == before,
            "a failed open ({e}) changed the cache device"
        );
    }
    r
}

fn expect_err(r: Result<(SyncEngine<Shared>, RecoveryReport), Error>) -> Error {
    match r {
        Ok((e, rep)) => panic!(
            "open succeeded (order {}, {:?}) where it must fail",
            e.geometry().order,
            rep
        ),
        Err(e) => e,
    }
}

fn sectors(n: u64) -> Vec<u8> {
    vec![0u8; n as usize * SECTOR_SIZE]
}

/// A freshly formatted image of `cache_sectors` at `order`.
fn formatted(order: u8, cache_sectors: u64) -> Vec<u8> {
    let mut dev = MemDevice::new(cache_sectors);
    engine::format_device(&mut dev, order, 99).unwrap();
    dev.into_bytes()
}

/// Writes both copies of the superblock record, as the engine does.
fn put_records(image: &mut [u8], last_writeback_id: u64, generation: u64) {
    let block = format::encode_record_block(&format::RecordExt {
        last_writeback_id,
        flags: 0,
        generation,
    });
    for at in [
        format::RECORD_BLOCK_SECTOR,
        format::BACKUP_RECORD_BLOCK_SECTOR,
    ] {
        image[at as usize * SECTOR_SIZE..][..BLOCK_SIZE].copy_from_slice(&block);
    }
}

fn put_sector0(image: &mut [u8], sector0: &[u8]) {
    image[..sector0.len()].copy_from_slice(sector0);
}

// ----- sector 0: foreign content, blank, magic -----

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random bytes in sector 0: refused as unknown content with `IfBlank` and `Never`, and the
    /// device is left exactly as it was, unless the bytes are all zero (blank) or carry the
    /// magic (an upstream image).
    #[test]
    fn random_sector0_is_refused_and_left_untouched(
        sector0 in prop::collection::vec(any::<u8>(), SECTOR_SIZE),
        policy in prop_oneof![Just(FormatPolicy::IfBlank), Just(FormatPolicy::Never)],
    ) {
        let mut image = sectors(SUPERBLOCK_SECTORS + 2 * 1024);
        put_sector0(&mut image, &sector0);
        let blank = sector0.iter().all(|&b| b == 0);
        let magic = sector0[..4] == SUPERBLOCK_MAGIC.to_le_bytes();
        prop_assume!(!blank && !magic);
        let err = expect_err(open_image(image, 64, cfg(6, policy)));
        prop_assert_eq!(err, Error::UnknownContent);
    }

    /// The magic followed by garbage is an upstream image (the extension's CRC does not match):
    /// opened at order 10 on a device big enough for it, a geometry error on one that is not.
    #[test]
    fn magic_with_garbage_is_an_upstream_image(
        mut sector0 in prop::collection::vec(any::<u8>(), SECTOR_SIZE),
        nr_segments in 0u64..4,
    ) {
        sector0[..4].copy_from_slice(&SUPERBLOCK_MAGIC.to_le_bytes());
        let cache_sectors = SUPERBLOCK_SECTORS + nr_segments * 1024 + 64;
        let mut image = sectors(cache_sectors);
        put_sector0(&mut image, &sector0);
        match open_image(image, 64, cfg(4, FormatPolicy::IfBlank)) {
            Ok((e, rep)) => {
                prop_assert!(nr_segments >= 2);
                prop_assert!(rep.upstream_image && !rep.formatted);
                prop_assert_eq!(e.geometry().order, 10);
                prop_assert_eq!(e.geometry().nr_segments, nr_segments);
            }
            Err(err) => {
                prop_assert!(nr_segments < 2, "{}", err);
                prop_assert!(
                    matches!(err, Error::Geometry(GeometryError::TooSmall { order: 10, .. })),
                    "{}", err
                );
            }
        }
    }

    /// A superblock extension with a valid CRC but arbitrary fields: each unacceptable field
    /// gives its own error, an acceptable one opens with the recorded order.
    #[test]
    fn extension_fields_are_validated(
        version in prop_oneof![Just(FORMAT_VERSION), any::<u32>()],
        order in prop_oneof![4u8..=10, any::<u8>()],
        cache_type in prop_oneof![Just(0u8), any::<u8>()],
        resize in prop_oneof![Just(0i64), -3i64..3],
    ) {
        let cache_sectors = SUPERBLOCK_SECTORS + 2 * 1024;
        let mut image = sectors(cache_sectors);
        let ext = SuperblockExt {
            format_version: version,
            order,
            cache_type,
            flags: 0,
            generation: 5,
            cache_sectors: (cache_sectors as i64 + resize) as u64,
        };
        put_sector0(&mut image, &encode_superblock(&ext));
        put_records(&mut image, 0, 5);
        let mut allowed = Vec::new();
        if version != FORMAT_VERSION {
            allowed.push(Error::UnsupportedVersion(version));
        }
        if resize != 0 {
            allowed.push(Error::CacheResized { formatted: ext.cache_sectors, actual: cache_sectors });
        }
        match cache_type {
            0 => {}
            1 => allowed.push(Error::PlogMissing),
            t => allowed.push(Error::UnsupportedType(t)),
        }
        if !(4..=10).contains(&order) {
            allowed.push(Error::Geometry(GeometryError::BadOrder(order)));
        }
        match open_image(image, 64, cfg(4, FormatPolicy::Never)) {
            Ok((e, rep)) => {
                prop_assert!(allowed.is_empty(), "opened despite {:?}", allowed);
                prop_assert!(!rep.formatted && !rep.upstream_image);
                prop_assert_eq!(e.geometry().order, order);
                prop_assert_eq!(e.generation(), 5);
            }
            Err(err) => prop_assert!(allowed.contains(&err), "{} not in {:?}", err, allowed),
        }
    }

    /// Garbage in the record and in the slot headers never panics. Whatever opens keeps
    /// working: written data reads back, also after a clean reopen.
    #[test]
    fn garbage_record_and_headers_do_not_panic(
        record in prop_oneof![0u64..100, any::<u64>()],
        headers in prop::collection::vec((any::<u64>(), any::<u32>(), any::<u8>(), any::<bool>()), 4),
    ) {
        let order = 5u8;
        let cache_sectors = SUPERBLOCK_SECTORS + 4 * 32;
        let mut image = formatted(order, cache_sectors);
        let geo = Geometry::new(order, cache_sectors).unwrap();
        put_records(&mut image, record, 99);
        for (slot, &(id, crc, len, near)) in headers.iter().enumerate() {
            let at = geo.slot_sector(slot as u64) as usize * SECTOR_SIZE;
            // Ids near the record make the walk look at them.
            let id = if near { record.wrapping_add(1 + slot as u64) } else { id };
            image[at..at + 8].copy_from_slice(&id.to_le_bytes());
            image[at + 8..at + 12].copy_from_slice(&crc.to_le_bytes());
            image[at + 12] = len;
        }
        match open_image(image, 64, cfg(order, FormatPolicy::Never)) {
            Err(err) => {
                prop_assert!(
                    matches!(err, Error::Corrupt { .. }),
                    "garbage gives a corruption error, got {}", err
                );
                prop_assert!(err.to_string().contains(&record.to_string()), "{}", err);
            }
            Ok((mut e, rep)) => {
                prop_assert_eq!(rep.segments_applied, 0, "{:?}", rep);
                prop_assert_eq!(rep.dirty_blocks, 0);
                let data = vec![0x5Au8; BLOCK_SIZE * 5];
                e.write(16, &data, false).unwrap();
                e.flush().unwrap();
                e.check_invariants().unwrap();
                let (c, b) = e.shutdown().unwrap();
                let (mut e, _) = SyncEngine::open(c, b, cfg(order, FormatPolicy::Never)).unwrap();
                let mut got = vec![0u8; data.len()];
                e.read(16, &mut got).unwrap();
                prop_assert!(got == data);
            }
        }
    }
}

#[test]
fn blank_device_with_format_never_is_unformatted() {
    let err = expect_err(open_image(
        sectors(SUPERBLOCK_SECTORS + 64),
        64,
        cfg(4, FormatPolicy::Never),
    ));
    assert_eq!(err, Error::Unformatted);
    assert!(err.to_string().contains("blank"), "{err}");
}

#[test]
fn foreign_content_is_refused_even_with_a_formatted_looking_rest() {
    // A real-looking wbcache image whose sector 0 was overwritten by something else.
    let mut image = formatted(4, SUPERBLOCK_SECTORS + 64);
    image[..4].copy_from_slice(b"XFSB");
    for policy in [FormatPolicy::IfBlank, FormatPolicy::Never] {
        let err = expect_err(open_image(image.clone(), 64, cfg(4, policy)));
        assert_eq!(err, Error::UnknownContent);
        let msg = err.to_string();
        assert!(
            msg.contains("0x57427374") && msg.contains("format"),
            "the message names the magic and the way out: {msg}"
        );
    }
    // Only an explicit request formats it.
    let (_, rep) = open_image(image, 64, cfg(4, FormatPolicy::Always)).unwrap();
    assert!(rep.formatted);
}

// ----- sizes -----

#[test]
fn truncated_cache_devices_are_geometry_errors() {
    for size in [0, 1, 7, 2047, 2048, 2048 + 31] {
        for order in [4u8, 7, 10] {
            for policy in [
                FormatPolicy::IfBlank,
                FormatPolicy::Never,
                FormatPolicy::Always,
            ] {
                let err = expect_err(open_image(sectors(size), 64, cfg(order, policy)));
                let Error::Geometry(GeometryError::TooSmall { sectors, need, .. }) = err else {
                    panic!("size {size} order {order} {policy:?}: {err}");
                };
                assert_eq!(sectors, size);
                let msg = err.to_string();
                assert!(
                    msg.contains(&size.to_string()) && msg.contains(&need.to_string()),
                    "{msg}"
                );
            }
        }
    }
    // Big enough for the smallest geometry but not for two segments at the asked order:
    // formatting refuses before writing anything.
    for order in 5u8..=10 {
        let size = SUPERBLOCK_SECTORS + 2 * (1 << order) - 1;
        let err = expect_err(open_image(
            sectors(size),
            64,
            cfg(order, FormatPolicy::IfBlank),
        ));
        assert_eq!(
            err,
            Error::Geometry(GeometryError::TooSmall {
                sectors: size,
                order,
                need: size + 1
            })
        );
        let (e, rep) = open_image(sectors(size + 1), 64, cfg(order, FormatPolicy::IfBlank))
            .unwrap_or_else(|e| panic!("order {order}: exactly two segments: {e}"));
        assert!(rep.formatted);
        assert_eq!(e.geometry().nr_segments, 2);
    }
    // An upstream image (order 10) on a device that only fits smaller segments.
    let mut image = sectors(SUPERBLOCK_SECTORS + 1024);
    image[..4].copy_from_slice(&SUPERBLOCK_MAGIC.to_le_bytes());
    let err = expect_err(open_image(image, 64, cfg(4, FormatPolicy::IfBlank)));
    assert!(
        matches!(
            err,
            Error::Geometry(GeometryError::TooSmall { order: 10, .. })
        ),
        "{err}"
    );
}

#[test]
fn bad_order_at_format_is_a_geometry_error() {
    for order in [0u8, 3, 11, 255] {
        let err = expect_err(open_image(
            sectors(SUPERBLOCK_SECTORS + 4096),
            64,
            cfg(order, FormatPolicy::IfBlank),
        ));
        assert_eq!(err, Error::Geometry(GeometryError::BadOrder(order)));
        assert!(err.to_string().contains(&order.to_string()), "{err}");
    }
}

#[test]
fn an_empty_backing_device_is_refused() {
    for image in [
        sectors(SUPERBLOCK_SECTORS + 64),
        formatted(4, SUPERBLOCK_SECTORS + 64),
    ] {
        let err = expect_err(open_image(image, 0, cfg(4, FormatPolicy::IfBlank)));
        assert_eq!(err, Error::BackingSize { sectors: 0 });
        assert!(err.to_string().contains("0 sectors"), "{err}");
    }
}

/// Upstream takes devices of any size: a backing device whose last 4 KiB block is partial
/// caches that block's sectors like any other, and a cache device that is not whole blocks
/// uses the whole segments that fit.
#[test]
fn devices_that_are_not_whole_blocks_work_to_their_last_sector() {
    for backing in [1u64, 7, 9, 15, 8 * 100 + 3] {
        let cache = MemDevice::new(SUPERBLOCK_SECTORS + 4 * 16 + 5);
        let (mut e, _) = SyncEngine::open(
            cache,
            MemDevice::new(backing),
            cfg(4, FormatPolicy::IfBlank),
        )
        .unwrap();
        assert_eq!(e.geometry().nr_segments, 4);
        assert_eq!(e.size_sectors(), backing);
        let last = backing - 1;
        // The last sector, alone and together with the one before it.
        e.write(last, &[0xA1; SECTOR_SIZE], false).unwrap();
        if backing > 1 {
            e.write(last - 1, &[0xB2; 2 * SECTOR_SIZE], true).unwrap();
        }
        let err = e.write(last, &[0u8; 2 * SECTOR_SIZE], false).unwrap_err();
        assert!(matches!(err, Error::OutOfRange { .. }), "{err}");
        let mut got = [0u8; SECTOR_SIZE];
        e.read(last, &mut got).unwrap();
        let want = if backing > 1 { 0xB2 } else { 0xA1 };
        assert!(got.iter().all(|&b| b == want), "backing {backing}");
        e.flush().unwrap();
        // Replayed, then written back to the partial block of the backing device.
        let (c, b) = e.into_devices();
        let (mut e, rep) = SyncEngine::open(c, b, cfg(4, FormatPolicy::Never)).unwrap();
        assert!(rep.segments_applied >= 1, "{rep:?}");
        e.check_invariants().unwrap();
        e.drain().unwrap();
        assert_eq!(e.status().nr_dirty_cache_blocks, 0);
        let (_, b) = e.shutdown().unwrap();
        let bytes = b.bytes();
        assert_eq!(bytes.len(), backing as usize * SECTOR_SIZE);
        assert!(bytes[last as usize * SECTOR_SIZE..]
            .iter()
            .all(|&x| x == want));
    }
}

#[test]
fn invalid_rambuf_pool_is_refused() {
    for pool in [0usize, 1025, usize::MAX] {
        let mut c = cfg(4, FormatPolicy::IfBlank);
        c.nr_rambuf_pool = pool;
        let err = expect_err(open_image(sectors(SUPERBLOCK_SECTORS + 64), 64, c));
        assert_eq!(err, Error::InvalidPool(pool));
        assert!(err.to_string().contains(&pool.to_string()), "{err}");
    }
    for pool in [1usize, 1024] {
        let mut c = cfg(4, FormatPolicy::IfBlank);
        c.nr_rambuf_pool = pool;
        open_image(sectors(SUPERBLOCK_SECTORS + 64), 64, c).unwrap();
    }
}

#[test]
fn resized_cache_device_is_refused() {
    let size = SUPERBLOCK_SECTORS + 4 * 64;
    let image = formatted(6, size);
    for grow in [1u64, 7, 8, 64, 1000] {
        let mut bigger = image.clone();
        bigger.resize((size + grow) as usize * SECTOR_SIZE, 0);
        let err = expect_err(open_image(bigger, 64, cfg(6, FormatPolicy::IfBlank)));
        assert_eq!(
            err,
            Error::CacheResized {
                formatted: size,
                actual: size + grow
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&size.to_string()) && msg.contains(&(size + grow).to_string()),
            "{msg}"
        );
    }
    // Shrunk, but still big enough for two segments.
    let mut smaller = image.clone();
    smaller.truncate((size - 64) as usize * SECTOR_SIZE);
    let err = expect_err(open_image(smaller, 64, cfg(6, FormatPolicy::Never)));
    assert_eq!(
        err,
        Error::CacheResized {
            formatted: size,
            actual: size - 64
        }
    );
    // The original size opens.
    open_image(image, 64, cfg(6, FormatPolicy::Never)).unwrap();
}

#[test]
fn future_format_version_is_refused() {
    let size = SUPERBLOCK_SECTORS + 2 * 1024;
    let mut image = sectors(size);
    let ext = SuperblockExt {
        format_version: 2,
        order: 10,
        cache_type: 0,
        flags: 0,
        generation: 1,
        cache_sectors: size,
    };
    put_sector0(&mut image, &encode_superblock(&ext));
    let err = expect_err(open_image(image, 64, cfg(10, FormatPolicy::IfBlank)));
    assert_eq!(err, Error::UnsupportedVersion(2));
    let msg = err.to_string();
    assert!(msg.contains('2') && msg.contains('1'), "{msg}");
}

#[test]
fn type_1_without_its_plog_and_unknown_types_are_refused() {
    let size = SUPERBLOCK_SECTORS + 64;
    let mut image = sectors(size);
    let ext = SuperblockExt {
        format_version: FORMAT_VERSION,
        order: 4,
        cache_type: 1,
        flags: 0,
        generation: 1,
        cache_sectors: size,
    };
    put_sector0(&mut image, &encode_superblock(&ext));
    let err = expect_err(open_image(image.clone(), 64, cfg(4, FormatPolicy::Never)));
    assert_eq!(err, Error::PlogMissing);
    let ext2 = SuperblockExt {
        cache_type: 2,
        ..ext
    };
    put_sector0(&mut image, &encode_superblock(&ext2));
    let err = expect_err(open_image(image, 64, cfg(4, FormatPolicy::Never)));
    assert_eq!(err, Error::UnsupportedType(2));
}

// ----- upstream images -----

/// An order-10 segment as upstream writes it: no CRC marker in the metablocks, a clean
/// (dirty_bits 0) read-cache entry among dirty ones.
fn upstream_segment(id: u64, blocks: &[(u64, u8, u8)]) -> Vec<u8> {
    let mut seg = vec![0u8; format::segment_len_bytes(blocks.len())];
    for (i, &(sector, dirty, fill)) in blocks.iter().enumerate() {
        format::encode_metablock(
            &mut seg,
            i,
            &Metablock {
                sector,
                dirty_bits: dirty,
                block_crc: None,
            },
        );
        seg[BLOCK_SIZE * (1 + i)..BLOCK_SIZE * (2 + i)].fill(fill);
    }
    format::seal_segment(&mut seg, id, blocks.len());
    seg
}

#[test]
fn upstream_image_opens_at_order_10_and_replays() {
    let size = SUPERBLOCK_SECTORS + 3 * 1024;
    let mut image = sectors(size);
    // Upstream: magic, then whatever (here: junk where our extension would be).
    image[..4].copy_from_slice(&SUPERBLOCK_MAGIC.to_le_bytes());
    image[EXT_OFFSET..EXT_OFFSET + 36].fill(0xA5);
    let geo = Geometry::new(10, size).unwrap();
    let seg1 = upstream_segment(1, &[(0, 0xFF, 0x11), (8, 0x00, 0x22), (16, 0x0F, 0x33)]);
    let seg2 = upstream_segment(2, &[(0, 0xF0, 0x44)]);
    for (slot, seg) in [(0u64, &seg1), (1, &seg2)] {
        let at = geo.slot_sector(slot) as usize * SECTOR_SIZE;
        image[at..at + seg.len()].copy_from_slice(seg);
    }
    let (mut e, rep) = open_image(image, 64, cfg(4, FormatPolicy::IfBlank)).unwrap();
    assert!(rep.upstream_image && !rep.formatted, "{rep:?}");
    assert_eq!(e.geometry().order, 10);
    assert_eq!(e.geometry().nr_segments, 3);
    assert_eq!(rep.segments_applied, 2, "{rep:?}");
    // Block 0: the newest copy (segment 2) holds sectors 4..8 only; replay writes the older
    // copy's sectors back first, as upstream's replay does, so 0..4 read segment 1's data.
    // Block 1: clean entry, backing. Block 2: sectors 0..4 from segment 1.
    assert_eq!(rep.replay_writebacks, 1, "{rep:?}");
    let mut got = vec![0u8; 3 * BLOCK_SIZE];
    e.read(0, &mut got).unwrap();
    let mut want = vec![0u8; 3 * BLOCK_SIZE];
    want[..4 * SECTOR_SIZE].fill(0x11);
    want[4 * SECTOR_SIZE..BLOCK_SIZE].fill(0x44);
    want[2 * BLOCK_SIZE..2 * BLOCK_SIZE + 4 * SECTOR_SIZE].fill(0x33);
    assert!(
        got == want,
        "upstream segments replay with upstream's semantics"
    );
    assert_eq!(rep.dirty_blocks, 2);
    e.check_invariants().unwrap();
}

#[test]
fn segment_beyond_the_backing_device_is_refused() {
    // Written through the engine in front of a 128-block backing device, reopened in front of
    // a 16-block one (the wrong backing device).
    let cache = MemDevice::new(SUPERBLOCK_SECTORS + 8 * 64);
    let (mut e, _) = SyncEngine::open(
        cache,
        MemDevice::new(128 * SECTORS_PER_BLOCK),
        cfg(6, FormatPolicy::IfBlank),
    )
    .unwrap();
    e.write(100 * SECTORS_PER_BLOCK, &[7u8; BLOCK_SIZE], true)
        .unwrap();
    let (cache, _) = e.shutdown().unwrap();
    let err = expect_err(open_image(
        cache.into_bytes(),
        16 * SECTORS_PER_BLOCK,
        cfg(6, FormatPolicy::Never),
    ));
    assert_eq!(
        err,
        Error::SegmentOutOfRange {
            id: 1,
            slot: 0,
            sector: 800,
            backing_sectors: 128
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("800") && msg.contains("128") && msg.contains("backing"),
        "{msg}"
    );

    // A metablock whose sector is not 4 KiB aligned is refused the same way.
    let size = SUPERBLOCK_SECTORS + 2 * 64;
    let mut image = formatted(6, size);
    let geo = Geometry::new(6, size).unwrap();
    let mut seg = vec![0u8; format::segment_len_bytes(1)];
    let data = [1u8; BLOCK_SIZE];
    format::encode_metablock(
        &mut seg,
        0,
        &Metablock {
            sector: 9,
            dirty_bits: 0xFF,
            block_crc: Some(format::block_crc(&data)),
        },
    );
    seg[BLOCK_SIZE..].copy_from_slice(&data);
    format::seal_segment(&mut seg, 1, 1);
    let at = geo.slot_sector(0) as usize * SECTOR_SIZE;
    image[at..at + seg.len()].copy_from_slice(&seg);
    let err = expect_err(open_image(image, 64, cfg(6, FormatPolicy::Never)));
    assert!(
        matches!(err, Error::SegmentOutOfRange { sector: 9, .. }),
        "{err}"
    );
}

#[test]
fn implausible_record_is_corruption() {
    let size = SUPERBLOCK_SECTORS + 64;
    let mut image = formatted(4, size);
    put_records(&mut image, u64::MAX, 99);
    let err = expect_err(open_image(image, 64, cfg(4, FormatPolicy::Never)));
    assert!(
        matches!(err, Error::Corrupt { sector, .. } if sector == RECORD_SECTOR),
        "{err}"
    );
    assert!(err.to_string().contains(&u64::MAX.to_string()), "{err}");
}

// ----- requests and messages on an open engine -----

fn small_engine() -> SyncEngine<MemDevice> {
    SyncEngine::open(
        MemDevice::new(SUPERBLOCK_SECTORS + 4 * 16),
        MemDevice::new(64),
        cfg(4, FormatPolicy::IfBlank),
    )
    .unwrap()
    .0
}

#[test]
fn out_of_range_and_unaligned_requests_are_typed_errors() {
    let mut e = small_engine();
    let size = e.size_sectors();
    assert_eq!(size, 64);
    let mut buf = vec![0u8; 8 * SECTOR_SIZE];
    let err = e.read(size - 7, &mut buf).unwrap_err();
    assert_eq!(
        err,
        Error::OutOfRange {
            sector: 57,
            sectors: 8,
            size: 64
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("57") && msg.contains('8') && msg.contains("64"),
        "{msg}"
    );
    assert!(matches!(
        e.write(size, &[1u8; SECTOR_SIZE], false),
        Err(Error::OutOfRange { sector: 64, .. })
    ));
    assert!(matches!(
        e.write(u64::MAX, &[1u8; SECTOR_SIZE], true),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        e.read(u64::MAX - 1, &mut buf),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        e.discard(60, 5),
        Err(Error::OutOfRange {
            sector: 60,
            sectors: 5,
            ..
        })
    ));
    assert!(matches!(
        e.write_zeroes(0, u64::MAX, false),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        e.write_zeroes(1, u64::MAX / 512, false),
        Err(Error::OutOfRange { .. })
    ));
    let err = e.read(0, &mut [0u8; 100]).unwrap_err();
    assert_eq!(err, Error::Unaligned { len: 100 });
    assert!(err.to_string().contains("100"), "{err}");
    assert_eq!(
        e.write(0, &[0u8; 513], false).unwrap_err(),
        Error::Unaligned { len: 513 }
    );

    // None of that changed anything or killed the engine.
    assert!(e.status().dead.is_none());
    assert_eq!(e.status().nr_dirty_cache_blocks, 0);
    e.check_invariants().unwrap();
    // The edges themselves are fine, including empty requests.
    e.write(size - 1, &[9u8; SECTOR_SIZE], false).unwrap();
    e.read(size, &mut []).unwrap();
    e.write(size, &[], false).unwrap();
    e.write_zeroes(size, 0, false).unwrap();
    let mut last = [0u8; SECTOR_SIZE];
    e.read(size - 1, &mut last).unwrap();
    assert_eq!(last, [9u8; SECTOR_SIZE]);
}

#[test]
fn bad_messages_and_tunables_are_typed_errors() {
    let mut e = small_engine();
    let before = e.tunables();
    let err = e.message("writeback_threshold 101").unwrap_err();
    assert_eq!(
        err,
        Error::InvalidTunable {
            name: "writeback_threshold",
            value: 101,
            min: 0,
            max: 100
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("writeback_threshold") && msg.contains("101") && msg.contains("100"),
        "{msg}"
    );
    for (m, name, value) in [
        ("nr_max_batched_writeback 0", "nr_max_batched_writeback", 0),
        ("allow_writeback 2", "allow_writeback", 2),
        ("sync_interval 3601", "sync_interval", 3601),
    ] {
        match e.message(m) {
            Err(Error::InvalidTunable {
                name: n, value: v, ..
            }) => {
                assert_eq!((n, v), (name, value), "{m}")
            }
            other => panic!("{m}: {other:?}"),
        }
    }
    for m in ["frobnicate", "", "no_such_tunable 1", "drop_caches now"] {
        let err = e.message(m).unwrap_err();
        assert!(matches!(err, Error::UnknownMessage(_)), "{m:?}: {err}");
    }
    let unknown = e.message("frobnicate 7").unwrap_err().to_string();
    assert!(
        unknown.starts_with("unknown message \"frobnicate 7\": the messages are drop_caches")
            && unknown.contains("allow_writeback, enable_writeback_modulator"),
        "{unknown}"
    );
    // A known tunable with a bad or missing value says so, with the range.
    for (m, value) in [
        ("writeback_threshold abc", "abc"),
        ("writeback_threshold -1", "-1"),
        ("allow_writeback yes", "yes"),
        ("allow_writeback 1 2", "1 2"),
    ] {
        let err = e.message(m).unwrap_err();
        match &err {
            Error::UnparsableTunable { value: v, .. } => assert_eq!(v, value, "{m}"),
            other => panic!("{m}: {other:?}"),
        }
        assert!(
            err.to_string().contains("must be a whole number in"),
            "{err}"
        );
    }
    assert_eq!(
        e.message("allow_writeback").unwrap_err().to_string(),
        "allow_writeback needs a value: `allow_writeback N` with N in 0..=1"
    );
    assert_eq!(
        e.message("allow_writeback yes").unwrap_err().to_string(),
        "invalid value \"yes\" for allow_writeback: must be a whole number in 0..=1"
    );
    assert_eq!(e.tunables(), before, "failed messages change nothing");

    // Valid ones work, in either spelling.
    e.message("writeback_threshold 100").unwrap();
    assert_eq!(e.tunables().writeback_threshold, 100);
    e.message("writeback-threshold 90").unwrap();
    assert_eq!(e.tunables().writeback_threshold, 90);
    e.message("clear-stat").unwrap();
    e.message("clear_stat").unwrap();
    e.message("drop_caches").unwrap();
    assert!(e.status().dead.is_none());
}

/// A formatted image cut short is named by its own order, not by the smallest geometry.
#[test]
fn a_truncated_image_is_judged_by_its_own_order() {
    let full = formatted(10, SUPERBLOCK_SECTORS + 4 * 1024);
    let cut = full[..(SUPERBLOCK_SECTORS as usize + 1024) * SECTOR_SIZE].to_vec();
    let err = expect_err(open_image(cut.clone(), 64, cfg(4, FormatPolicy::Never)));
    assert!(matches!(err, Error::CacheResized { .. }), "{err}");
    let msg = err.to_string();
    assert!(!msg.contains("order 4"), "{msg}");
    let r = engine::check(&mut MemDevice::from_bytes(cut)).unwrap();
    assert!(!r.sound);
    assert!(!r.to_string().contains("order 4"), "{r}");
}

/// A record at the very end of the id space (a corrupt or hostile image) opens, and the cache
/// stops with a corruption error before it would write a segment id recovery takes for
/// garbage: what it acknowledged reads back after a clean reopen.
#[test]
fn a_record_at_the_end_of_the_id_space_stops_the_cache_before_it_loses_data() {
    let order = 5u8;
    let cache_sectors = SUPERBLOCK_SECTORS + 4 * 32;
    let mut image = formatted(order, cache_sectors);
    let last = engine::recovery::plan::MAX_SEGMENT_ID;
    put_records(&mut image, last - 1, 99);
    let (mut e, _) = open_image(image, 64, cfg(order, FormatPolicy::Never)).unwrap();
    let data = vec![0x5Au8; BLOCK_SIZE];
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for block in 0..12u64 {
        match e.write(block * 8, &data, true) {
            Ok(()) => acknowledged.push(block),
            Err(err) => {
                refused = Some(err);
                break;
            }
        }
    }
    let err = refused.expect("the cache stops at the end of the id space");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("id space"), "{err}");
    assert!(!acknowledged.is_empty());
    let (c, b) = e.into_devices();
    let (mut e, _) = SyncEngine::open(c, b, cfg(order, FormatPolicy::Never)).unwrap();
    for block in acknowledged {
        let mut got = vec![0u8; BLOCK_SIZE];
        e.read(block * 8, &mut got).unwrap();
        assert_eq!(got, data, "block {block}");
    }
}
