//! Scan: what recovery reads off the cache device, decoded into plain values. Nothing here
//! decides anything; `plan.rs` does, from these values alone, so `wbcache check` can explain the
//! very plan `Engine::open` carries out.
//!
//! Three reads, each a batch: the superblock region (sector 0 and both record sectors), the
//! first sector of every slot (ids and lengths), and the whole segments the plan may need
//! (`read_segments`, for the slots a caller names). Every loop is bounded by the geometry, which
//! comes from the device size and a validated order, never from a length read off the device.

use crate::device::{BlockDevice, DeviceRole, IoError, ReadReq};
use crate::error::{Error, Result};
use crate::format::{
    self, Geometry, Metablock, RecordExt, Superblock, SuperblockExt, BLOCK_SIZE, SECTOR_SIZE,
};

/// Slots read per batch while scanning headers or segments: bounds memory on huge caches.
pub const SCAN_BATCH: u64 = 256;
/// Bytes of whole segments read per batch (16 segments at order 10).
pub const SEGMENT_BATCH_BYTES: usize = 8 << 20;

fn io<T>(r: std::result::Result<T, IoError>) -> Result<T> {
    r.map_err(|source| Error::Io {
        role: DeviceRole::Cache,
        source,
    })
}

/// How sector 0 reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuperblockKind {
    /// The device is too small to hold sector 0.
    Missing,
    /// All zero: never formatted.
    Blank,
    /// Neither blank nor the dm-writeboost magic: someone else's data.
    Foreign,
    /// The magic with our valid extension.
    Ours,
    /// The magic without a valid extension: an upstream dm-writeboost image (order 10).
    Upstream,
}

impl SuperblockKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SuperblockKind::Missing => "missing",
            SuperblockKind::Blank => "blank",
            SuperblockKind::Foreign => "foreign",
            SuperblockKind::Ours => "ours",
            SuperblockKind::Upstream => "upstream",
        }
    }
}

/// Sector 0, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuperblockInfo {
    pub kind: SuperblockKind,
    /// The u32 at offset 0 (the magic when it is right).
    pub magic: u32,
    /// Our extension, when it validates.
    pub ext: Option<SuperblockExt>,
}

impl SuperblockInfo {
    pub fn decode(sector0: &[u8]) -> Self {
        let magic = u32::from_le_bytes(sector0[..4].try_into().expect("4 bytes"));
        let (kind, ext) = match format::decode_superblock(sector0) {
            Superblock::Blank => (SuperblockKind::Blank, None),
            Superblock::Foreign => (SuperblockKind::Foreign, None),
            Superblock::Valid(Some(ext)) => (SuperblockKind::Ours, Some(ext)),
            Superblock::Valid(None) => (SuperblockKind::Upstream, None),
        };
        SuperblockInfo { kind, magic, ext }
    }
}

/// Which copy of the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordCopyName {
    Primary,
    Backup,
}

impl RecordCopyName {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordCopyName::Primary => "primary",
            RecordCopyName::Backup => "backup",
        }
    }
}

/// One record sector (primary: 2047, backup: 2039), decoded both ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordSector {
    pub name: RecordCopyName,
    pub sector: u64,
    /// The u64 at offset 0: `last_writeback_segment_id` as upstream reads it.
    pub raw_id: u64,
    /// Our extension, when its magic and CRC are right.
    pub ext: Option<RecordExt>,
    /// Bytes 8..512 are zero: the shape upstream's record write leaves (it zeroes the whole
    /// 4 KiB block and puts the id at offset 0 of its last sector). Garbage is not.
    pub upstream_form: bool,
}

impl RecordSector {
    pub fn decode(name: RecordCopyName, sector: u64, bytes: &[u8]) -> Self {
        RecordSector {
            name,
            sector,
            raw_id: format::decode_record(bytes),
            ext: format::decode_record_ext(bytes),
            upstream_form: bytes[8..SECTOR_SIZE].iter().all(|&b| b == 0),
        }
    }
}

/// The superblock region: what every decision about the device starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayoutScan {
    pub device_sectors: u64,
    pub superblock: SuperblockInfo,
    /// `None` when the device is too small to hold the record sectors.
    pub records: Option<[RecordSector; 2]>,
}

/// The reads of the superblock region: sector 0 and both record sectors (sector, bytes).
/// A device too small for the record sectors reads sector 0 only (and none when empty).
pub fn layout_reads(device_sectors: u64) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    if device_sectors > 0 {
        out.push((0, SECTOR_SIZE));
    }
    if device_sectors > format::RECORD_SECTOR {
        out.push((format::RECORD_SECTOR, SECTOR_SIZE));
        out.push((format::BACKUP_RECORD_SECTOR, SECTOR_SIZE));
    }
    out
}

impl LayoutScan {
    /// Decodes what [`layout_reads`] read, in that order.
    pub fn decode(device_sectors: u64, bufs: &[&[u8]]) -> Self {
        let superblock = match bufs.first() {
            Some(s0) => SuperblockInfo::decode(s0),
            None => SuperblockInfo {
                kind: SuperblockKind::Missing,
                magic: 0,
                ext: None,
            },
        };
        let records = (bufs.len() == 3).then(|| {
            [
                RecordSector::decode(RecordCopyName::Primary, format::RECORD_SECTOR, bufs[1]),
                RecordSector::decode(
                    RecordCopyName::Backup,
                    format::BACKUP_RECORD_SECTOR,
                    bufs[2],
                ),
            ]
        });
        LayoutScan {
            device_sectors,
            superblock,
            records,
        }
    }
}

/// Reads sector 0 and both record sectors (whatever the device holds; a device too small for
/// them reads as `Missing` / `None`).
pub fn read_layout<D: BlockDevice + ?Sized>(cache: &mut D) -> Result<LayoutScan> {
    let device_sectors = cache.size_sectors();
    let reads = layout_reads(device_sectors);
    let mut bufs = vec![[0u8; SECTOR_SIZE]; reads.len()];
    let mut reqs: Vec<ReadReq<'_>> = bufs
        .iter_mut()
        .zip(&reads)
        .map(|(buf, &(sector, _))| ReadReq { sector, buf })
        .collect();
    io(cache.read_batch(&mut reqs))?;
    let views: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
    Ok(LayoutScan::decode(device_sectors, &views))
}

/// The first sector of a slot: the id and length its header claims.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotHeader {
    pub id: u64,
    pub length: u8,
}

impl SlotHeader {
    pub fn decode(sector: &[u8]) -> Self {
        let h = format::decode_segment_header(sector);
        SlotHeader {
            id: h.id,
            length: h.length,
        }
    }
}

/// The bytes of slot `slot` a full read takes: the header block and as many data blocks as
/// its header sector claims, capped by the geometry.
pub fn segment_read_len(geo: &Geometry, header: SlotHeader) -> usize {
    format::segment_len_bytes((header.length as usize).min(geo.blocks_per_segment()))
}

/// Reads the first sector of every slot, in batches.
pub fn read_headers<D: BlockDevice + ?Sized>(
    cache: &mut D,
    geo: &Geometry,
) -> Result<Vec<SlotHeader>> {
    let nr = geo.nr_segments;
    let mut out = Vec::with_capacity(nr as usize);
    let mut bufs = vec![0u8; SCAN_BATCH as usize * SECTOR_SIZE];
    let mut first = 0;
    while first < nr {
        let count = SCAN_BATCH.min(nr - first);
        let mut reqs: Vec<ReadReq<'_>> = bufs
            .chunks_mut(SECTOR_SIZE)
            .take(count as usize)
            .enumerate()
            .map(|(i, buf)| ReadReq {
                sector: geo.slot_sector(first + i as u64),
                buf,
            })
            .collect();
        io(cache.read_batch(&mut reqs))?;
        out.extend(
            bufs.chunks(SECTOR_SIZE)
                .take(count as usize)
                .map(SlotHeader::decode),
        );
        first += count;
    }
    Ok(out)
}

/// Who wrote a segment, as far as its bytes tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writer {
    /// Every metablock carries our per-block CRC: wbcache wrote it. wbcache never writes an
    /// empty segment.
    Wbcache,
    /// No (or not every) metablock carries our CRC: upstream dm-writeboost, or unknown.
    Other,
}

/// One slot read in full: its header block and the data blocks its length claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    pub slot: u64,
    /// Id and length as the full read found them.
    pub id: u64,
    pub length: u8,
    /// `length` fits the geometry.
    pub length_ok: bool,
    /// The segment checksum matches (false when the length is impossible).
    pub checksum_ok: bool,
    /// The full read's header disagrees with the header sector read before it (the device
    /// changed under the scan): never trusted.
    pub changed: bool,
    pub writer: Writer,
    /// The metablocks, when the length fits the geometry.
    pub metablocks: Vec<Metablock>,
    /// Metablocks whose recorded block CRC does not match their data block.
    pub bad_block_crcs: u32,
}

impl SegmentScan {
    /// Intact as replay needs it: a plausible id, sane length and a matching checksum (or,
    /// with the dm-lc quirk, any checksum), read consistently.
    pub fn intact(&self, ignore_checksum: bool) -> bool {
        self.id <= super::plan::MAX_SEGMENT_ID
            && self.length_ok
            && (self.checksum_ok || ignore_checksum)
            && !self.changed
    }

    /// Decodes a segment image read from `slot` (header block + the blocks `length` claims).
    pub fn decode(slot: u64, geo: &Geometry, image: &[u8], seen: SlotHeader) -> Self {
        let h = format::decode_segment_header(image);
        let len = h.length as usize;
        let length_ok =
            len <= geo.blocks_per_segment() && image.len() >= format::segment_len_bytes(len);
        let mut scan = SegmentScan {
            slot,
            id: h.id,
            length: h.length,
            length_ok,
            checksum_ok: false,
            changed: h.id != seen.id || h.length != seen.length,
            writer: Writer::Other,
            metablocks: Vec::new(),
            bad_block_crcs: 0,
        };
        if !length_ok {
            return scan;
        }
        scan.checksum_ok = format::segment_checksum_ok(&image[..format::segment_len_bytes(len)]);
        scan.metablocks = (0..len)
            .map(|j| format::decode_metablock(image, j))
            .collect();
        for (j, m) in scan.metablocks.iter().enumerate() {
            let data = &image[BLOCK_SIZE * (1 + j)..BLOCK_SIZE * (2 + j)];
            if m.block_crc
                .is_some_and(|crc| crc != format::block_crc(data))
            {
                scan.bad_block_crcs += 1;
            }
        }
        if len > 0 && scan.metablocks.iter().all(|m| m.block_crc.is_some()) {
            scan.writer = Writer::Wbcache;
        }
        scan
    }
}

/// Reads in full every slot for which `wanted(slot, header)` holds, in batches of whole
/// segments: the header block and as many data blocks as the header sector claims (capped by
/// the geometry). Returns them in slot order.
pub fn read_segments<D: BlockDevice + ?Sized>(
    cache: &mut D,
    geo: &Geometry,
    headers: &[SlotHeader],
    mut wanted: impl FnMut(u64, SlotHeader) -> bool,
) -> Result<Vec<SegmentScan>> {
    let slots: Vec<u64> = (0..geo.nr_segments)
        .filter(|&s| wanted(s, headers[s as usize]))
        .collect();
    let per_batch = (SEGMENT_BATCH_BYTES / geo.segment_bytes())
        .min(slots.len())
        .max(1);
    let mut bufs = vec![0u8; per_batch * geo.segment_bytes()];
    let mut out = Vec::with_capacity(slots.len());
    for chunk in slots.chunks(per_batch) {
        let lens: Vec<usize> = chunk
            .iter()
            .map(|&s| segment_read_len(geo, headers[s as usize]))
            .collect();
        let mut reqs: Vec<ReadReq<'_>> = bufs
            .chunks_mut(geo.segment_bytes())
            .zip(chunk.iter().zip(&lens))
            .map(|(buf, (&s, &len))| ReadReq {
                sector: geo.slot_sector(s),
                buf: &mut buf[..len],
            })
            .collect();
        io(cache.read_batch(&mut reqs))?;
        for (i, &s) in chunk.iter().enumerate() {
            let image = &bufs[i * geo.segment_bytes()..][..lens[i]];
            out.push(SegmentScan::decode(s, geo, image, headers[s as usize]));
        }
    }
    Ok(out)
}
