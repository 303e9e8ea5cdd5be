//! The plog (persistent log, cache type 1) device format. Ours: upstream dropped the plog in
//! 2015. Every byte the engine puts on or takes off a plog device is encoded and decoded here;
//! docs/FORMAT.md ("The plog device") is the byte-exact description.
//!
//! Layout: a superblock in the 4 KiB block at sector 0 and a backup copy at sector 8 (written
//! first, each with FUA), then `nr_regions` regions of `region_sectors` sectors from sector 16.
//! Segment `id` logs its writes in region `(id - 1) % nr_regions`, as a run of entries: one
//! 512-byte header sector followed by the 1..=8 data sectors of one write piece (a client write
//! split at 4 KiB block boundaries). The geometry is stored, never derived from tunables (H9);
//! a generation ties the plog to one format of one cache device and an epoch, bumped by every
//! recovery, retires every entry written before it (H4).

use super::{le_u32, le_u64, put_u32, put_u64, BLOCK_SIZE, SECTORS_PER_BLOCK, SECTOR_SIZE};

/// "WBpl" little-endian: a plog superblock.
pub const PLOG_MAGIC: u32 = 0x6c70_4257;
/// "WBpe" little-endian: a plog entry header.
pub const ENTRY_MAGIC: u32 = 0x6570_4257;
pub const PLOG_VERSION: u32 = 1;
/// The superblock block and its backup.
pub const PLOG_SB_SECTOR: u64 = 0;
pub const PLOG_BACKUP_SB_SECTOR: u64 = SECTORS_PER_BLOCK;
/// Regions start after the two superblock blocks.
pub const PLOG_FIRST_REGION_SECTOR: u64 = 2 * SECTORS_PER_BLOCK;
/// More regions than this buy nothing (a segment is durable long before its region comes round
/// again) and would make recovery read more; a larger device keeps the rest unused.
pub const MAX_REGIONS: u32 = 64;
/// A region holds, per data block of a segment, this many full-block entries: room for the
/// segment's blocks plus as many overwrites in place before the segment is sealed early.
pub const REGION_ENTRIES_PER_BLOCK: u32 = 2;
/// The largest region (order 10: 127 blocks): bounds what recovery reads per region.
pub const MAX_REGION_SECTORS: u32 = region_sectors_for(127);

const SB_CRC_OFFSET: usize = 44;
const ENTRY_CRC_OFFSET: usize = 4;
const ENTRY_COVERED_FROM: usize = 8;
const ENTRY_RESERVED: std::ops::Range<usize> = 50..SECTOR_SIZE;

const _: () = assert!(PLOG_FIRST_REGION_SECTOR % SECTORS_PER_BLOCK == 0);
const _: () = assert!(SB_CRC_OFFSET + 4 <= SECTOR_SIZE);
const _: () = assert!(MAX_REGION_SECTORS as u64 >= 2 * (1 + SECTORS_PER_BLOCK));

/// Sectors of a region for a segment of `blocks_per_segment` data blocks.
pub const fn region_sectors_for(blocks_per_segment: usize) -> u32 {
    REGION_ENTRIES_PER_BLOCK * (1 + SECTORS_PER_BLOCK as u32) * blocks_per_segment as u32
}

/// Where regions live on a plog device; stored in its superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlogGeometry {
    pub region_sectors: u32,
    pub nr_regions: u32,
}

/// Why a plog geometry cannot be built or is implausible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlogGeometryError {
    #[error("plog device of {sectors} sectors is too small: segments of {blocks} blocks need at least {need} sectors (superblocks + 2 regions)")]
    TooSmall {
        sectors: u64,
        blocks: usize,
        need: u64,
    },
    #[error("plog superblock geometry is implausible: {region_sectors} sectors per region, {nr_regions} regions on a {sectors}-sector device")]
    Implausible {
        region_sectors: u32,
        nr_regions: u32,
        sectors: u64,
    },
}

impl PlogGeometry {
    /// The geometry a format gives a plog device of `plog_sectors` for segments of
    /// `blocks_per_segment` blocks: as many regions as fit, at most [`MAX_REGIONS`].
    pub fn for_device(
        plog_sectors: u64,
        blocks_per_segment: usize,
    ) -> Result<Self, PlogGeometryError> {
        let region_sectors = region_sectors_for(blocks_per_segment);
        let need = PLOG_FIRST_REGION_SECTOR + 2 * region_sectors as u64;
        if plog_sectors < need {
            return Err(PlogGeometryError::TooSmall {
                sectors: plog_sectors,
                blocks: blocks_per_segment,
                need,
            });
        }
        let fit = (plog_sectors - PLOG_FIRST_REGION_SECTOR) / region_sectors as u64;
        Ok(PlogGeometry {
            region_sectors,
            nr_regions: fit.min(MAX_REGIONS as u64) as u32,
        })
    }

    /// Checks a stored geometry against the device and the cache's segment size.
    pub fn validate(
        &self,
        plog_sectors: u64,
        blocks_per_segment: usize,
    ) -> Result<(), PlogGeometryError> {
        let end = PLOG_FIRST_REGION_SECTOR + self.region_sectors as u64 * self.nr_regions as u64;
        let ok = self.region_sectors == region_sectors_for(blocks_per_segment)
            && (2..=MAX_REGIONS).contains(&self.nr_regions)
            && end <= plog_sectors;
        if ok {
            Ok(())
        } else {
            Err(PlogGeometryError::Implausible {
                region_sectors: self.region_sectors,
                nr_regions: self.nr_regions,
                sectors: plog_sectors,
            })
        }
    }

    /// The region segment `id` (>= 1) logs into.
    pub fn region_of(&self, id: u64) -> u32 {
        debug_assert!(id >= 1, "segment id 0 means none");
        ((id - 1) % self.nr_regions as u64) as u32
    }

    /// First sector of region `region`.
    pub fn region_sector(&self, region: u32) -> u64 {
        debug_assert!(region < self.nr_regions);
        PLOG_FIRST_REGION_SECTOR + region as u64 * self.region_sectors as u64
    }
}

/// The plog superblock (both copies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlogSuperblock {
    pub version: u32,
    /// Equal to the cache superblock's generation: ties the plog to one format of one cache.
    pub generation: u64,
    /// Entries of other epochs are void; every recovery moves to a new epoch.
    pub epoch: u64,
    /// Device size when formatted: a resized plog is refused, not misread.
    pub plog_sectors: u64,
    pub geometry: PlogGeometry,
    /// The cache's segment order when formatted.
    pub segment_order: u8,
}

/// Encodes a 4 KiB superblock block (primary at sector 0, backup at sector 8).
pub fn encode_superblock(sb: &PlogSuperblock) -> [u8; BLOCK_SIZE] {
    let mut b = [0u8; BLOCK_SIZE];
    put_u32(&mut b, 0, PLOG_MAGIC);
    put_u32(&mut b, 4, sb.version);
    put_u64(&mut b, 8, sb.generation);
    put_u64(&mut b, 16, sb.epoch);
    put_u64(&mut b, 24, sb.plog_sectors);
    put_u32(&mut b, 32, sb.geometry.region_sectors);
    put_u32(&mut b, 36, sb.geometry.nr_regions);
    b[40] = sb.segment_order;
    let crc = crc32c::crc32c(&b[..SB_CRC_OFFSET]);
    put_u32(&mut b, SB_CRC_OFFSET, crc);
    b
}

/// Decodes a superblock copy (at least its first sector); `None` unless magic and CRC check.
pub fn decode_superblock(sector: &[u8]) -> Option<PlogSuperblock> {
    let s = &sector[..SECTOR_SIZE];
    if le_u32(s, 0) != PLOG_MAGIC || le_u32(s, SB_CRC_OFFSET) != crc32c::crc32c(&s[..SB_CRC_OFFSET])
    {
        return None;
    }
    Some(PlogSuperblock {
        version: le_u32(s, 4),
        generation: le_u64(s, 8),
        epoch: le_u64(s, 16),
        plog_sectors: le_u64(s, 24),
        geometry: PlogGeometry {
            region_sectors: le_u32(s, 32),
            nr_regions: le_u32(s, 36),
        },
        segment_order: s[40],
    })
}

/// The header of one plog entry: what one write piece did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    pub generation: u64,
    pub epoch: u64,
    /// The segment the piece went into.
    pub segment_id: u64,
    /// Position in the region's run of entries, from 0.
    pub seq: u32,
    /// In entry 0 of a region: how many entries the previous segment's region holds, when the
    /// previous segment was opened in this epoch (recovery checks that run is complete before
    /// it goes on); 0 otherwise.
    pub prev_entries: u32,
    /// First backing sector written.
    pub sector: u64,
    /// Sectors written, 1..=8, all in one 4 KiB block.
    pub len: u8,
}

impl EntryHeader {
    /// Sectors the entry takes in its region (header + data).
    pub fn footprint(&self) -> u64 {
        1 + self.len as u64
    }

    /// The shape rules every entry obeys, whatever its checksum says.
    fn well_formed(&self) -> bool {
        let first = self.sector % SECTORS_PER_BLOCK;
        (1..=SECTORS_PER_BLOCK as u8).contains(&self.len)
            && first + self.len as u64 <= SECTORS_PER_BLOCK
            && self.segment_id >= 1
    }
}

/// Encodes an entry header sector; its CRC-32C covers header bytes `[8, 512)` and then `data`.
pub fn encode_entry(h: &EntryHeader, data: &[u8]) -> [u8; SECTOR_SIZE] {
    assert!(h.well_formed(), "plog entry {h:?} is malformed");
    assert_eq!(
        data.len(),
        h.len as usize * SECTOR_SIZE,
        "entry data length"
    );
    let mut s = [0u8; SECTOR_SIZE];
    put_u32(&mut s, 0, ENTRY_MAGIC);
    put_u64(&mut s, 8, h.generation);
    put_u64(&mut s, 16, h.epoch);
    put_u64(&mut s, 24, h.segment_id);
    put_u32(&mut s, 32, h.seq);
    put_u32(&mut s, 36, h.prev_entries);
    put_u64(&mut s, 40, h.sector);
    s[48] = h.len;
    let crc = entry_crc(&s, data);
    put_u32(&mut s, ENTRY_CRC_OFFSET, crc);
    s
}

fn entry_crc(header: &[u8], data: &[u8]) -> u32 {
    let c = crc32c::crc32c(&header[ENTRY_COVERED_FROM..SECTOR_SIZE]);
    crc32c::crc32c_append(c, data)
}

/// Decodes an entry header sector without its data: `None` unless the magic is there, the
/// reserved bytes are zero and the shape is possible. The CRC needs the data:
/// [`entry_crc_ok`].
pub fn decode_entry_header(sector: &[u8]) -> Option<EntryHeader> {
    let s = &sector[..SECTOR_SIZE];
    if le_u32(s, 0) != ENTRY_MAGIC || s[49] != 0 || s[ENTRY_RESERVED].iter().any(|&b| b != 0) {
        return None;
    }
    let h = EntryHeader {
        generation: le_u64(s, 8),
        epoch: le_u64(s, 16),
        segment_id: le_u64(s, 24),
        seq: le_u32(s, 32),
        prev_entries: le_u32(s, 36),
        sector: le_u64(s, 40),
        len: s[48],
    };
    h.well_formed().then_some(h)
}

/// Whether an entry's CRC matches its header sector and data.
pub fn entry_crc_ok(header: &[u8], data: &[u8]) -> bool {
    le_u32(header, ENTRY_CRC_OFFSET) == entry_crc(&header[..SECTOR_SIZE], data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> PlogSuperblock {
        PlogSuperblock {
            version: PLOG_VERSION,
            generation: 0x0102_0304_0506_0708,
            epoch: 3,
            plog_sectors: 16 + 4 * 2286,
            geometry: PlogGeometry {
                region_sectors: 2286,
                nr_regions: 4,
            },
            segment_order: 10,
        }
    }

    #[test]
    fn geometry_rules() {
        assert_eq!(region_sectors_for(127), 2286);
        assert_eq!(region_sectors_for(1), 18);
        let g = PlogGeometry::for_device(16 + 3 * 18 + 5, 1).unwrap();
        assert_eq!(g.nr_regions, 3);
        assert_eq!(g.region_of(1), 0);
        assert_eq!(g.region_of(4), 0);
        assert_eq!(g.region_sector(2), 16 + 36);
        assert!(matches!(
            PlogGeometry::for_device(16 + 35, 1),
            Err(PlogGeometryError::TooSmall { need: 52, .. })
        ));
        // Huge devices keep MAX_REGIONS.
        assert_eq!(
            PlogGeometry::for_device(1 << 30, 127).unwrap().nr_regions,
            MAX_REGIONS
        );
        assert!(g.validate(16 + 3 * 18, 1).is_ok());
        assert!(g.validate(16 + 3 * 18 - 1, 1).is_err(), "past the end");
        assert!(g.validate(1 << 20, 3).is_err(), "other segment size");
        let one = PlogGeometry {
            region_sectors: 18,
            nr_regions: 1,
        };
        assert!(
            one.validate(1 << 20, 1).is_err(),
            "one region cannot rotate"
        );
    }

    #[test]
    fn superblock_round_trip_and_vector() {
        let b = encode_superblock(&sb());
        assert_eq!(decode_superblock(&b), Some(sb()));
        // Byte-exact test vector (docs/FORMAT.md).
        assert_eq!(&b[..4], b"WBpl");
        assert_eq!(&b[4..8], &1u32.to_le_bytes());
        assert_eq!(b[40], 10);
        assert_eq!(
            u32::from_le_bytes(b[44..48].try_into().unwrap()),
            crc32c::crc32c(&b[..44])
        );
        assert!(b[48..].iter().all(|&x| x == 0));
        for byte in [0, 9, 17, 33, 40, 45] {
            let mut bad = b;
            bad[byte] ^= 0x10;
            assert_eq!(decode_superblock(&bad), None, "flipped byte {byte}");
        }
        assert_eq!(decode_superblock(&[0u8; SECTOR_SIZE]), None);
    }

    fn entry() -> (EntryHeader, Vec<u8>) {
        let h = EntryHeader {
            generation: 7,
            epoch: 2,
            segment_id: 9,
            seq: 0,
            prev_entries: 5,
            sector: 8 * 3 + 2,
            len: 3,
        };
        let data: Vec<u8> = (0..3 * SECTOR_SIZE).map(|i| (i * 7) as u8).collect();
        (h, data)
    }

    #[test]
    fn entry_round_trip_and_crc_covers_header_and_data() {
        let (h, data) = entry();
        let s = encode_entry(&h, &data);
        assert_eq!(&s[..4], b"WBpe");
        assert_eq!(decode_entry_header(&s), Some(h));
        assert!(entry_crc_ok(&s, &data));
        let mut d2 = data.clone();
        d2[1000] ^= 1;
        assert!(!entry_crc_ok(&s, &d2), "data flip");
        for byte in [8, 16, 24, 32, 36, 40, 48] {
            let mut bad = s;
            bad[byte] ^= 1;
            let decoded = decode_entry_header(&bad);
            assert!(
                decoded.is_none() || !entry_crc_ok(&bad, &data),
                "flipped header byte {byte} still verifies"
            );
        }
        let mut bad = s;
        bad[300] = 1;
        assert_eq!(
            decode_entry_header(&bad),
            None,
            "reserved bytes must be zero"
        );
    }

    #[test]
    fn entry_crc_vector() {
        // Fixed vector (docs/FORMAT.md): a one-sector entry of zeros.
        let h = EntryHeader {
            generation: 1,
            epoch: 1,
            segment_id: 1,
            seq: 0,
            prev_entries: 0,
            sector: 0,
            len: 1,
        };
        let s = encode_entry(&h, &[0u8; SECTOR_SIZE]);
        let mut expect = [0u8; SECTOR_SIZE];
        expect[8] = 1;
        expect[16] = 1;
        expect[24] = 1;
        expect[48] = 1;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&expect[8..]), &[0u8; SECTOR_SIZE]);
        assert_eq!(u32::from_le_bytes(s[4..8].try_into().unwrap()), crc);
        assert_eq!(crc, ENTRY_CRC_VECTOR);
    }

    /// The CRC of the vector entry above, as docs/FORMAT.md gives it.
    const ENTRY_CRC_VECTOR: u32 = 2_594_188_330;

    #[test]
    fn malformed_entries_are_rejected() {
        let (mut h, _) = entry();
        let mk = |h: &EntryHeader| {
            let mut s = [0u8; SECTOR_SIZE];
            put_u32(&mut s, 0, ENTRY_MAGIC);
            put_u64(&mut s, 24, h.segment_id);
            put_u64(&mut s, 40, h.sector);
            s[48] = h.len;
            s
        };
        h.len = 0;
        assert_eq!(decode_entry_header(&mk(&h)), None, "empty");
        h.len = 9;
        assert_eq!(decode_entry_header(&mk(&h)), None, "longer than a block");
        h.len = 7;
        h.sector = 8 * 3 + 2;
        assert_eq!(decode_entry_header(&mk(&h)), None, "crosses a block");
        h.len = 1;
        h.segment_id = 0;
        assert_eq!(decode_entry_header(&mk(&h)), None, "segment id 0");
    }
}
