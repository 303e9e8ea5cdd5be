//! The cache-device format: every byte the engine puts on or takes off the cache device is
//! encoded and decoded here and nowhere else. docs/FORMAT.md is the byte-exact description; the
//! tests at the bottom tie the two together (round trips, the spec's checksum vector, a golden
//! segment built by hand).
//!
//! Compatible with upstream dm-writeboost >= 2.0.2: superblock magic in sector 0, the
//! written-back record in sector 2047, segments of `2^order` sectors from sector 2048, a 4 KiB
//! header block (id, CRC-32C, length, 16-byte metablocks), data blocks after it. Our additions
//! live where upstream ignores bytes: a self-validating superblock extension inside sector 0 and
//! a per-block CRC in the metablock padding.

pub mod plog;

pub const SECTOR_SIZE: usize = 512;
pub const BLOCK_SIZE: usize = 4096;
pub const SECTORS_PER_BLOCK: u64 = (BLOCK_SIZE / SECTOR_SIZE) as u64;

/// Sectors [0, 2048) hold the superblock region.
pub const SUPERBLOCK_SECTORS: u64 = 2048;
/// Sector holding the superblock record (`last_writeback_segment_id`).
pub const RECORD_SECTOR: u64 = 2047;
/// The 4 KiB-aligned block that contains the record sector; the engine writes it whole so every
/// engine write to the cache device is 4 KiB aligned (4Kn devices, O_DIRECT).
pub const RECORD_BLOCK_SECTOR: u64 = RECORD_SECTOR - (SECTORS_PER_BLOCK - 1);

/// "WBst" little-endian.
pub const SUPERBLOCK_MAGIC: u32 = 0x5742_7374;
/// Our extension inside sector 0: "WBcX".
pub const EXT_MAGIC: u32 = 0x5863_4257;
pub const EXT_OFFSET: usize = 256;
pub const EXT_LEN: usize = 36; // magic 4, version 4, order 1, type 1, pad 2, flags 4, generation 8, cache_sectors 8, crc 4
pub const FORMAT_VERSION: u32 = 1;

pub const MIN_ORDER: u8 = 4;
pub const MAX_ORDER: u8 = 10;
/// The order upstream always uses; an image without our extension is read with it.
pub const UPSTREAM_ORDER: u8 = 10;

/// Segment header block layout.
pub const HEADER_ID_OFFSET: usize = 0;
pub const HEADER_CHECKSUM_OFFSET: usize = 8;
pub const HEADER_LENGTH_OFFSET: usize = 12;
pub const METABLOCK_OFFSET: usize = 512;
pub const METABLOCK_SIZE: usize = 16;
/// Metablock padding byte that says "bytes 12..16 hold the CRC-32C of this data block".
pub const MB_CRC_MARKER: u8 = 0xC3;
pub const MB_MARKER_OFFSET: usize = 9;
pub const MB_CRC_OFFSET: usize = 12;

/// Blocks per segment at the largest order: the most metablocks a header ever holds.
pub const MAX_BLOCKS_PER_SEGMENT: usize = (1 << (MAX_ORDER - 3)) - 1;

// Layout facts the code relies on, checked by the compiler.
const _: () = assert!(BLOCK_SIZE == 8 * SECTOR_SIZE);
const _: () = assert!(METABLOCK_OFFSET + MAX_BLOCKS_PER_SEGMENT * METABLOCK_SIZE <= BLOCK_SIZE);
const _: () = assert!(MAX_BLOCKS_PER_SEGMENT == 127);
const _: () = assert!(MAX_BLOCKS_PER_SEGMENT <= u8::MAX as usize, "length is a u8");
const _: () = assert!(EXT_OFFSET >= 4 && EXT_OFFSET + EXT_LEN <= SECTOR_SIZE);
const _: () = assert!(HEADER_LENGTH_OFFSET < METABLOCK_OFFSET);
const _: () = assert!(MB_CRC_OFFSET + 4 == METABLOCK_SIZE && MB_MARKER_OFFSET > 8);
const _: () = assert!(SUPERBLOCK_SECTORS % SECTORS_PER_BLOCK == 0);
const _: () = assert!(RECORD_BLOCK_SECTOR % SECTORS_PER_BLOCK == 0);

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Where segments live on a cache device of a given size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub order: u8,
    pub nr_segments: u64,
}

/// Why a geometry cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    #[error("segment_size_order {0} is out of range (must be 4..=10)")]
    BadOrder(u8),
    #[error("cache device of {sectors} sectors is too small: segment order {order} needs at least {need} sectors (superblock + 2 segments)")]
    TooSmall { sectors: u64, order: u8, need: u64 },
    #[error("cache device of {0} sectors is larger than the format supports")]
    TooLarge(u64),
}

impl Geometry {
    pub fn new(order: u8, cache_sectors: u64) -> Result<Self, GeometryError> {
        if !(MIN_ORDER..=MAX_ORDER).contains(&order) {
            return Err(GeometryError::BadOrder(order));
        }
        let need = SUPERBLOCK_SECTORS + 2 * (1u64 << order);
        if cache_sectors < need {
            return Err(GeometryError::TooSmall {
                sectors: cache_sectors,
                order,
                need,
            });
        }
        let nr_segments = (cache_sectors - SUPERBLOCK_SECTORS) >> order;
        // Metadata arrays index blocks with u32.
        if nr_segments * (MAX_BLOCKS_PER_SEGMENT as u64) >= u32::MAX as u64 {
            return Err(GeometryError::TooLarge(cache_sectors));
        }
        Ok(Geometry { order, nr_segments })
    }

    /// Sectors in one segment.
    pub fn segment_sectors(&self) -> u64 {
        1 << self.order
    }
    pub fn segment_bytes(&self) -> usize {
        SECTOR_SIZE << self.order
    }
    /// Data blocks per segment (`n`).
    pub fn blocks_per_segment(&self) -> usize {
        (1 << (self.order - 3)) - 1
    }
    /// The slot segment `id` (>= 1) lives in.
    pub fn slot_of(&self, id: u64) -> u64 {
        debug_assert!(id >= 1, "segment id 0 means empty");
        (id - 1) % self.nr_segments
    }
    /// First sector of slot `slot`.
    pub fn slot_sector(&self, slot: u64) -> u64 {
        debug_assert!(slot < self.nr_segments);
        SUPERBLOCK_SECTORS + (slot << self.order)
    }
    /// First sector of data block `idx` of slot `slot`.
    pub fn block_sector(&self, slot: u64, idx: usize) -> u64 {
        self.slot_sector(slot) + (1 + idx as u64) * SECTORS_PER_BLOCK
    }
}

/// Our self-validating extension in sector 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuperblockExt {
    pub format_version: u32,
    pub order: u8,
    /// 0 = RAM buffer only, 1 = persistent log.
    pub cache_type: u8,
    pub flags: u32,
    /// Chosen at format time; ties a plog device to this cache device.
    pub generation: u64,
    /// Size of the cache device when formatted: a resized device is refused, not misread.
    pub cache_sectors: u64,
}

/// What sector 0 of a cache device says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Superblock {
    /// All zero: a device that may be formatted.
    Blank,
    /// Neither blank nor carrying the magic: someone else's data.
    Foreign,
    /// The magic, with our extension when it validates (None: an upstream image, order 10).
    Valid(Option<SuperblockExt>),
}

/// Encodes the 4 KiB block at sector 0: magic, zeros, the extension.
pub fn encode_superblock(ext: &SuperblockExt) -> [u8; BLOCK_SIZE] {
    let mut b = [0u8; BLOCK_SIZE];
    put_u32(&mut b, 0, SUPERBLOCK_MAGIC);
    let e = &mut b[EXT_OFFSET..EXT_OFFSET + EXT_LEN];
    put_u32(e, 0, EXT_MAGIC);
    put_u32(e, 4, ext.format_version);
    e[8] = ext.order;
    e[9] = ext.cache_type;
    put_u32(e, 12, ext.flags);
    put_u64(e, 16, ext.generation);
    put_u64(e, 24, ext.cache_sectors);
    let crc = crc32c::crc32c(&e[..32]);
    put_u32(e, 32, crc);
    b
}

/// Decodes sector 0 (at least its first 512 bytes).
pub fn decode_superblock(sector0: &[u8]) -> Superblock {
    let s = &sector0[..SECTOR_SIZE];
    if s.iter().all(|&b| b == 0) {
        return Superblock::Blank;
    }
    if le_u32(s, 0) != SUPERBLOCK_MAGIC {
        return Superblock::Foreign;
    }
    let e = &s[EXT_OFFSET..EXT_OFFSET + EXT_LEN];
    if le_u32(e, 0) != EXT_MAGIC || le_u32(e, 32) != crc32c::crc32c(&e[..32]) {
        return Superblock::Valid(None);
    }
    Superblock::Valid(Some(SuperblockExt {
        format_version: le_u32(e, 4),
        order: e[8],
        cache_type: e[9],
        flags: le_u32(e, 12),
        generation: le_u64(e, 16),
        cache_sectors: le_u64(e, 24),
    }))
}

/// Sector holding the backup copy of the record, written (FUA) before the primary, so a torn
/// record write always leaves one valid copy.
pub const BACKUP_RECORD_SECTOR: u64 = RECORD_BLOCK_SECTOR - 1;
pub const BACKUP_RECORD_BLOCK_SECTOR: u64 = BACKUP_RECORD_SECTOR - (SECTORS_PER_BLOCK - 1);
/// Our extension in a record sector: "WBrX".
pub const RECORD_EXT_MAGIC: u32 = 0x5872_4257;
/// Record flag: a format is in progress; the device holds no data yet.
pub const RECORD_FLAG_FORMATTING: u32 = 1;
const RECORD_EXT_CRC_OFFSET: usize = 24;

const _: () = assert!(BACKUP_RECORD_BLOCK_SECTOR % SECTORS_PER_BLOCK == 0);
const _: () = assert!(
    BACKUP_RECORD_BLOCK_SECTOR > 0,
    "the backup stays clear of sector 0"
);

/// Our self-validating extension of a record sector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordExt {
    pub last_writeback_id: u64,
    pub flags: u32,
    /// The superblock generation the record belongs to.
    pub generation: u64,
}

/// Encodes a 4 KiB record block (primary: sectors 2040..2048, backup: 2032..2040): zeros, then
/// in its last sector the record (upstream reads offset 0 only) and our extension.
pub fn encode_record_block(rec: &RecordExt) -> [u8; BLOCK_SIZE] {
    let mut b = [0u8; BLOCK_SIZE];
    let s = &mut b[BLOCK_SIZE - SECTOR_SIZE..];
    put_u64(s, 0, rec.last_writeback_id);
    put_u32(s, 8, RECORD_EXT_MAGIC);
    put_u32(s, 12, rec.flags);
    put_u64(s, 16, rec.generation);
    let crc = crc32c::crc32c(&s[..RECORD_EXT_CRC_OFFSET]);
    put_u32(s, RECORD_EXT_CRC_OFFSET, crc);
    b
}

/// The 4 KiB record block as upstream dm-writeboost writes it (`update_sb_record_interval`):
/// zeros, and the id at offset 0 of its last sector (2047). Its write replaces our extension.
pub fn encode_upstream_record_block(last_writeback_id: u64) -> [u8; BLOCK_SIZE] {
    let mut b = [0u8; BLOCK_SIZE];
    put_u64(&mut b, BLOCK_SIZE - SECTOR_SIZE, last_writeback_id);
    b
}

/// The superblock block as upstream writes it at format: the magic, then zeros.
pub fn encode_upstream_superblock() -> [u8; BLOCK_SIZE] {
    let mut b = [0u8; BLOCK_SIZE];
    put_u32(&mut b, 0, SUPERBLOCK_MAGIC);
    b
}

/// Decodes the record id as upstream reads it: the u64 at offset 0 of sector 2047.
pub fn decode_record(sector: &[u8]) -> u64 {
    le_u64(sector, 0)
}

/// Decodes our record extension; `None` when it is absent or fails its CRC.
pub fn decode_record_ext(sector: &[u8]) -> Option<RecordExt> {
    let ok = le_u32(sector, 8) == RECORD_EXT_MAGIC
        && le_u32(sector, RECORD_EXT_CRC_OFFSET)
            == crc32c::crc32c(&sector[..RECORD_EXT_CRC_OFFSET]);
    ok.then(|| RecordExt {
        last_writeback_id: le_u64(sector, 0),
        flags: le_u32(sector, 12),
        generation: le_u64(sector, 16),
    })
}

/// One metablock: which backing block a cached block belongs to and which of its sectors hold
/// cached data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metablock {
    /// Backing sector of the block (4 KiB aligned).
    pub sector: u64,
    pub dirty_bits: u8,
    /// CRC-32C of the 4 KiB data block, when the writer recorded one (we always do; upstream
    /// leaves the padding zero).
    pub block_crc: Option<u32>,
}

/// The fixed fields of a segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub id: u64,
    pub checksum: u32,
    pub length: u8,
}

pub fn decode_segment_header(header: &[u8]) -> SegmentHeader {
    SegmentHeader {
        id: le_u64(header, HEADER_ID_OFFSET),
        checksum: le_u32(header, HEADER_CHECKSUM_OFFSET),
        length: header[HEADER_LENGTH_OFFSET],
    }
}

/// Decodes metablock `idx` of a header block.
pub fn decode_metablock(header: &[u8], idx: usize) -> Metablock {
    let m = &header[METABLOCK_OFFSET + idx * METABLOCK_SIZE..][..METABLOCK_SIZE];
    Metablock {
        sector: le_u64(m, 0),
        dirty_bits: m[8],
        block_crc: (m[MB_MARKER_OFFSET] == MB_CRC_MARKER).then(|| le_u32(m, MB_CRC_OFFSET)),
    }
}

/// Encodes metablock `idx` into a header block.
pub fn encode_metablock(header: &mut [u8], idx: usize, mb: &Metablock) {
    let m = &mut header[METABLOCK_OFFSET + idx * METABLOCK_SIZE..][..METABLOCK_SIZE];
    m.fill(0);
    put_u64(m, 0, mb.sector);
    m[8] = mb.dirty_bits;
    if let Some(crc) = mb.block_crc {
        m[MB_MARKER_OFFSET] = MB_CRC_MARKER;
        put_u32(m, MB_CRC_OFFSET, crc);
    }
}

/// Bytes of a segment of `length` blocks as written: header block plus data blocks.
pub fn segment_len_bytes(length: usize) -> usize {
    BLOCK_SIZE * (1 + length)
}

/// The segment checksum: CRC-32C over bytes [512, 4096 * (1 + length)).
pub fn segment_checksum(segment: &[u8], length: usize) -> u32 {
    crc32c::crc32c(&segment[METABLOCK_OFFSET..segment_len_bytes(length)])
}

/// Fills in id, length and checksum of a segment image whose metablocks and data blocks are
/// already in place, and zeroes the unused part of the header so the image is canonical.
pub fn seal_segment(segment: &mut [u8], id: u64, length: usize) {
    assert!(id != 0, "segment id 0 means empty");
    assert!(length <= MAX_BLOCKS_PER_SEGMENT);
    segment[..METABLOCK_OFFSET].fill(0);
    segment[METABLOCK_OFFSET + length * METABLOCK_SIZE..BLOCK_SIZE].fill(0);
    put_u64(segment, HEADER_ID_OFFSET, id);
    segment[HEADER_LENGTH_OFFSET] = length as u8;
    let crc = segment_checksum(segment, length);
    put_u32(segment, HEADER_CHECKSUM_OFFSET, crc);
}

/// A whole segment image of `blocks` (metablock, data), sealed with `id`: how tests and tools
/// build images as either writer would (upstream leaves `block_crc` out).
pub fn build_segment(id: u64, blocks: &[(Metablock, [u8; BLOCK_SIZE])]) -> Vec<u8> {
    let mut seg = vec![0u8; segment_len_bytes(blocks.len())];
    for (i, (m, data)) in blocks.iter().enumerate() {
        encode_metablock(&mut seg, i, m);
        seg[BLOCK_SIZE * (1 + i)..BLOCK_SIZE * (2 + i)].copy_from_slice(data);
    }
    seal_segment(&mut seg, id, blocks.len());
    seg
}

/// A metablock's dirty bits say the block is dirty in some sectors only. dm-writeboost's replay
/// treats such a copy specially: applying it over an older dirty copy of the same block writes
/// the older copy's dirty sectors to the backing device first.
pub fn partly_dirty(dirty_bits: u8) -> bool {
    dirty_bits != 0 && dirty_bits != 0xFF
}

/// Whether a segment image (header + `length` data blocks) carries a checksum that matches.
pub fn segment_checksum_ok(segment: &[u8]) -> bool {
    let h = decode_segment_header(segment);
    let len = h.length as usize;
    len <= MAX_BLOCKS_PER_SEGMENT
        && segment.len() >= segment_len_bytes(len)
        && segment_checksum(segment, len) == h.checksum
}

/// CRC-32C of one data block, stored in its metablock.
pub fn block_crc(block: &[u8]) -> u32 {
    debug_assert_eq!(block.len(), BLOCK_SIZE);
    crc32c::crc32c(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_test_vector_from_upstream_tools() {
        assert_eq!(crc32c::crc32c(&[0u8; 3584]), 143_703_573);
        // An empty segment's checksum covers exactly those 3584 zero bytes.
        let mut seg = vec![0u8; BLOCK_SIZE];
        seal_segment(&mut seg, 1, 0);
        assert_eq!(decode_segment_header(&seg).checksum, 143_703_573);
        assert!(segment_checksum_ok(&seg));
    }

    #[test]
    fn geometry_matches_spec() {
        let g = Geometry::new(10, 2048 + 3 * 1024 + 5).unwrap();
        assert_eq!(g.nr_segments, 3);
        assert_eq!(g.blocks_per_segment(), 127);
        assert_eq!(g.slot_of(1), 0);
        assert_eq!(g.slot_of(4), 0);
        assert_eq!(g.slot_sector(2), 2048 + 2048);
        assert_eq!(g.block_sector(0, 0), 2048 + 8);
        assert_eq!(Geometry::new(4, 2048 + 32).unwrap().blocks_per_segment(), 1);
        assert!(matches!(
            Geometry::new(4, 2048 + 31),
            Err(GeometryError::TooSmall { .. })
        ));
        assert!(matches!(
            Geometry::new(3, 1 << 20),
            Err(GeometryError::BadOrder(3))
        ));
        assert!(matches!(
            Geometry::new(11, 1 << 20),
            Err(GeometryError::BadOrder(11))
        ));
    }

    #[test]
    fn superblock_round_trip_and_rejections() {
        let ext = SuperblockExt {
            format_version: FORMAT_VERSION,
            order: 7,
            cache_type: 0,
            flags: 0,
            generation: 0xDEAD_BEEF_0102_0304,
            cache_sectors: 123_456,
        };
        let b = encode_superblock(&ext);
        assert_eq!(
            &b[..4],
            &[0x74, 0x73, 0x42, 0x57],
            "magic is little-endian 0x57427374"
        );
        assert_eq!(decode_superblock(&b), Superblock::Valid(Some(ext)));
        assert_eq!(decode_superblock(&[0u8; 512]), Superblock::Blank);
        let mut foreign = [0u8; 512];
        foreign[100] = 1;
        assert_eq!(decode_superblock(&foreign), Superblock::Foreign);
        // A flipped bit in the extension makes it an upstream image, not a misread geometry.
        let mut rotted = b;
        rotted[EXT_OFFSET + 8] ^= 1;
        assert_eq!(decode_superblock(&rotted), Superblock::Valid(None));
        // Upstream: magic and garbage after it.
        let mut upstream = [0xA5u8; 512];
        upstream[..4].copy_from_slice(&SUPERBLOCK_MAGIC.to_le_bytes());
        assert_eq!(decode_superblock(&upstream), Superblock::Valid(None));
    }

    #[test]
    fn record_round_trip() {
        let rec = RecordExt {
            last_writeback_id: 0x0102_0304_0506_0708,
            flags: RECORD_FLAG_FORMATTING,
            generation: 77,
        };
        let b = encode_record_block(&rec);
        assert!(b[..BLOCK_SIZE - SECTOR_SIZE].iter().all(|&x| x == 0));
        let sector = &b[BLOCK_SIZE - SECTOR_SIZE..];
        assert_eq!(
            decode_record(sector),
            0x0102_0304_0506_0708,
            "upstream's view: offset 0"
        );
        assert_eq!(decode_record_ext(sector), Some(rec));
        let mut torn = b;
        torn[BLOCK_SIZE - SECTOR_SIZE + 3] ^= 0x40;
        assert_eq!(
            decode_record_ext(&torn[BLOCK_SIZE - SECTOR_SIZE..]),
            None,
            "a changed id fails the CRC"
        );
        assert_eq!(decode_record_ext(&[0u8; SECTOR_SIZE]), None);
        assert_eq!(
            (BACKUP_RECORD_SECTOR, BACKUP_RECORD_BLOCK_SECTOR),
            (2039, 2032)
        );
    }

    #[test]
    fn upstream_record_block_is_zeros_and_the_id() {
        let b = encode_upstream_record_block(61);
        let last = &b[BLOCK_SIZE - SECTOR_SIZE..];
        assert_eq!(decode_record(last), 61);
        assert_eq!(decode_record_ext(last), None, "no extension survives it");
        assert!(b
            .iter()
            .enumerate()
            .all(|(i, &x)| x == 0 || i >= BLOCK_SIZE - SECTOR_SIZE));
        assert!(last[8..].iter().all(|&x| x == 0));
        let sb = encode_upstream_superblock();
        assert_eq!(decode_superblock(&sb), Superblock::Valid(None));
    }

    #[test]
    fn metablock_round_trip() {
        let mut h = vec![0u8; BLOCK_SIZE];
        let a = Metablock {
            sector: 8 * 12345,
            dirty_bits: 0x81,
            block_crc: Some(0xABCD_0123),
        };
        let b = Metablock {
            sector: 0,
            dirty_bits: 0,
            block_crc: None,
        };
        encode_metablock(&mut h, 0, &a);
        encode_metablock(&mut h, 126, &b);
        assert_eq!(decode_metablock(&h, 0), a);
        assert_eq!(decode_metablock(&h, 126), b);
    }

    /// An order-10 segment built byte by byte from SPEC §3 / docs/FORMAT.md, compared with what
    /// the encoder writes.
    #[test]
    fn golden_order10_segment() {
        let g = Geometry::new(10, 2048 + 2 * 1024).unwrap();
        let len = 2usize;
        let data0 = [0x11u8; BLOCK_SIZE];
        let mut data1 = [0u8; BLOCK_SIZE];
        for (i, b) in data1.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        // By hand.
        let mut hand = vec![0u8; g.segment_bytes()];
        hand[0..8].copy_from_slice(&42u64.to_le_bytes());
        hand[12] = len as u8;
        // metablock 0: sector 8*7, all dirty, crc marker + crc
        hand[512..520].copy_from_slice(&56u64.to_le_bytes());
        hand[520] = 0xFF;
        hand[521] = 0xC3;
        hand[524..528].copy_from_slice(&crc32c::crc32c(&data0).to_le_bytes());
        // metablock 1: sector 8*1000, sectors 0 and 7 dirty
        hand[528..536].copy_from_slice(&8000u64.to_le_bytes());
        hand[536] = 0x81;
        hand[537] = 0xC3;
        hand[540..544].copy_from_slice(&crc32c::crc32c(&data1).to_le_bytes());
        hand[4096..8192].copy_from_slice(&data0);
        hand[8192..12288].copy_from_slice(&data1);
        let crc = crc32c::crc32c(&hand[512..12288]);
        hand[8..12].copy_from_slice(&crc.to_le_bytes());

        // By the encoder, starting from a dirty buffer to show sealing makes it canonical.
        let mut enc = vec![0xEEu8; g.segment_bytes()];
        enc[4096..8192].copy_from_slice(&data0);
        enc[8192..12288].copy_from_slice(&data1);
        let mbs = [
            Metablock {
                sector: 56,
                dirty_bits: 0xFF,
                block_crc: Some(block_crc(&data0)),
            },
            Metablock {
                sector: 8000,
                dirty_bits: 0x81,
                block_crc: Some(block_crc(&data1)),
            },
        ];
        for (i, m) in mbs.iter().enumerate() {
            encode_metablock(&mut enc, i, m);
        }
        seal_segment(&mut enc, 42, len);
        assert_eq!(
            &enc[..segment_len_bytes(len)],
            &hand[..segment_len_bytes(len)]
        );
        assert!(segment_checksum_ok(&enc));
        let h = decode_segment_header(&enc);
        assert_eq!((h.id, h.length, h.checksum), (42, 2, crc));
        assert_eq!(decode_metablock(&enc, 1), mbs[1]);
        // Any flipped bit in the checksummed range is caught.
        enc[9000] ^= 0x10;
        assert!(!segment_checksum_ok(&enc));
    }

    #[test]
    fn absurd_length_is_not_a_valid_segment() {
        let mut seg = vec![0u8; BLOCK_SIZE];
        seg[HEADER_LENGTH_OFFSET] = 200;
        assert!(!segment_checksum_ok(&seg));
    }
}
