//! `dump`: the metadata of a cache device, decoded, with no judgement beyond each checksum.

use crate::device::BlockDevice;
use crate::error::Result;
use crate::format::{self, Geometry, BLOCK_SIZE, SECTORS_PER_BLOCK};

use super::plog::{read_plog_info, PlogInfo};
use super::{io, RecordInfo, SuperblockInfo};

/// `dump` lists at most this many metablocks in all; segments beyond it are listed by header
/// only. Bounds memory and output on large caches (dump one segment by id to see its blocks).
pub const DUMP_MAX_LISTED_BLOCKS: usize = 1 << 20;

/// One metablock of a dumped segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockDump {
    pub index: usize,
    /// Backing sector of the block.
    pub sector: u64,
    pub dirty_bits: u8,
    /// The block CRC the metablock records (our images; upstream leaves none).
    pub crc: Option<u32>,
    /// Whether the data block matches `crc` (`None` without one).
    pub crc_ok: Option<bool>,
}

/// One segment's header and metablocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentDump {
    pub slot: u64,
    pub id: u64,
    pub length: u8,
    pub checksum: u32,
    pub length_ok: bool,
    pub checksum_ok: bool,
    /// The id belongs in this slot.
    pub in_its_slot: bool,
    /// `min(length, blocks per segment)` metablocks, unless the listing cap was reached.
    pub blocks: Vec<BlockDump>,
    /// The metablocks were left out because the dump reached [`DUMP_MAX_LISTED_BLOCKS`].
    pub blocks_omitted: bool,
}

/// A requested segment id that is not on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissingSegment {
    pub id: u64,
    /// The slot it would live in (`None` for id 0, which means "empty").
    pub slot: Option<u64>,
    /// The id that slot holds instead (0: empty).
    pub found: u64,
}

/// The result of [`dump`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dump {
    pub device_sectors: u64,
    pub superblock: SuperblockInfo,
    pub records: Option<RecordInfo>,
    pub geometry: Option<Geometry>,
    /// The segment id asked for, if any.
    pub requested: Option<u64>,
    /// Non-empty slots in slot order, or just the requested segment.
    pub segments: Vec<SegmentDump>,
    pub missing: Option<MissingSegment>,
    /// Why there are no segments (no geometry), if that is the case.
    pub unreadable: Option<String>,
    /// The plog device ([`dump_with_plog`]).
    pub plog: Option<PlogInfo>,
}

pub(super) fn dump_inner<D: BlockDevice>(
    cache: &mut D,
    plog: Option<&mut D>,
    segment: Option<u64>,
) -> Result<Dump> {
    let layout = super::check::read_layout_view(cache, plog.is_some())?;
    let plog = match plog {
        Some(p) => Some(read_plog_info(
            p,
            layout.superblock.ext,
            layout.geometry,
            None,
        )?),
        None => None,
    };
    let mut out = Dump {
        device_sectors: cache.size_sectors(),
        superblock: layout.superblock,
        records: layout.records,
        geometry: layout.geometry,
        requested: segment,
        segments: Vec::new(),
        missing: None,
        unreadable: None,
        plog,
    };
    let Some(geo) = layout.geometry else {
        out.unreadable = Some(
            layout
                .problems
                .last()
                .map_or_else(|| "no geometry".to_string(), |p| p.detail.clone()),
        );
        return Ok(out);
    };
    let mut segbuf = vec![0u8; geo.segment_bytes()];
    let mut listed = 0usize;
    match segment {
        Some(0) => {
            out.missing = Some(MissingSegment {
                id: 0,
                slot: None,
                found: 0,
            })
        }
        Some(id) => {
            let slot = geo.slot_of(id);
            match dump_slot(cache, &geo, slot, &mut segbuf, &mut listed)? {
                Some(seg) if seg.id == id => out.segments.push(seg),
                other => {
                    out.missing = Some(MissingSegment {
                        id,
                        slot: Some(slot),
                        found: other.map_or(0, |s| s.id),
                    })
                }
            }
        }
        None => {
            for slot in 0..geo.nr_segments {
                if let Some(seg) = dump_slot(cache, &geo, slot, &mut segbuf, &mut listed)? {
                    out.segments.push(seg);
                }
            }
        }
    }
    Ok(out)
}

/// The header of `slot` and, while under the listing cap, its metablocks; `None` when empty.
fn dump_slot<D: BlockDevice>(
    cache: &mut D,
    geo: &Geometry,
    slot: u64,
    segbuf: &mut [u8],
    listed: &mut usize,
) -> Result<Option<SegmentDump>> {
    let base = geo.slot_sector(slot);
    io(cache.read(base, &mut segbuf[..BLOCK_SIZE]))?;
    let h = format::decode_segment_header(segbuf);
    if h.id == 0 {
        return Ok(None);
    }
    let len = h.length as usize;
    let length_ok = len <= geo.blocks_per_segment();
    // A torn header may claim more blocks than fit: list only what the geometry allows, and
    // read data only for those.
    let shown = len.min(geo.blocks_per_segment());
    let bytes = format::segment_len_bytes(shown);
    if shown > 0 {
        io(cache.read(base + SECTORS_PER_BLOCK, &mut segbuf[BLOCK_SIZE..bytes]))?;
    }
    let checksum_ok = length_ok && format::segment_checksum_ok(&segbuf[..bytes]);
    let blocks_omitted = *listed + shown > DUMP_MAX_LISTED_BLOCKS;
    let mut blocks = Vec::new();
    if !blocks_omitted {
        *listed += shown;
        blocks.reserve(shown);
        for j in 0..shown {
            let m = format::decode_metablock(segbuf, j);
            let data = &segbuf[BLOCK_SIZE * (1 + j)..BLOCK_SIZE * (2 + j)];
            blocks.push(BlockDump {
                index: j,
                sector: m.sector,
                dirty_bits: m.dirty_bits,
                crc: m.block_crc,
                crc_ok: m.block_crc.map(|crc| crc == format::block_crc(data)),
            });
        }
    }
    Ok(Some(SegmentDump {
        slot,
        id: h.id,
        length: h.length,
        checksum: h.checksum,
        length_ok,
        checksum_ok,
        in_its_slot: geo.slot_of(h.id) == slot,
        blocks,
        blocks_omitted,
    }))
}
