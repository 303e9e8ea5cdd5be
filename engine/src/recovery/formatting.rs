//! Formatting a cache device, crash-safe in an order that leaves no old segment or plog entry
//! replayable (H10), and writing the superblock record.

use crate::cache::Engine;
use crate::device::BlockDevice;
use crate::device::WriteReq;
use crate::error::Result;
use crate::format::{self, Geometry, SuperblockExt, BLOCK_SIZE, FORMAT_VERSION};

use super::scan::SCAN_BATCH;

/// Zeroes the header block of every slot (not flushed).
fn zero_headers<D: BlockDevice>(cache: &mut D, geo: &Geometry) -> Result<()> {
    let zeros = [0u8; BLOCK_SIZE];
    let mut first = 0;
    while first < geo.nr_segments {
        let count = SCAN_BATCH.min(geo.nr_segments - first);
        let reqs: Vec<WriteReq<'_>> = (first..first + count)
            .map(|s| WriteReq {
                sector: geo.slot_sector(s),
                data: &zeros,
                fua: false,
            })
            .collect();
        Engine::<D>::cache_io(cache.write_batch(&reqs))?;
        first += count;
    }
    Ok(())
}

/// Writes both record copies, backup first, each with FUA.
pub(crate) fn write_records<D: BlockDevice>(cache: &mut D, rec: &format::RecordExt) -> Result<()> {
    let block = format::encode_record_block(rec);
    Engine::<D>::cache_io(cache.write(format::BACKUP_RECORD_BLOCK_SECTOR, &block, true))?;
    Engine::<D>::cache_io(cache.write(format::RECORD_BLOCK_SECTOR, &block, true))
}

/// Formats a cache device, crash-safe in this order (H10), whatever a power cut tears:
/// 1. both record copies say "formatting" (flushed): from here on an interrupted format is
///    recognised and redone, even if sector 0 is left torn;
/// 2. zero sector 0 and every segment header, flush: no old segment can be replayed;
/// 3. write the superblock with FUA;
/// 4. write both record copies (id 0, no flag) with FUA: the device is ready.
pub fn format_device<D: BlockDevice>(
    cache: &mut D,
    order: u8,
    generation: u64,
) -> Result<SuperblockExt> {
    format_device_in_order(cache, None, order, generation, false)
}

/// Formats a type-1 cache: as [`format_device`], and the plog device gets its superblock for
/// this generation (in a new epoch) after the old segments are invalidated and before the cache
/// superblock makes the device usable (H10): no entry of an older cache can be replayed.
pub fn format_device_with_plog<D: BlockDevice>(
    cache: &mut D,
    plog: &mut D,
    order: u8,
    generation: u64,
) -> Result<SuperblockExt> {
    format_device_in_order(cache, Some(plog), order, generation, false)
}

/// `magic_first` is seed hazard H10 (quirk `h10`): the superblock goes out before anything old
/// is invalidated and without the formatting marker.
pub(super) fn format_device_in_order<D: BlockDevice>(
    cache: &mut D,
    mut plog: Option<&mut D>,
    order: u8,
    generation: u64,
    magic_first: bool,
) -> Result<SuperblockExt> {
    let io = |r| Engine::<D>::cache_io(r);
    let cache_sectors = cache.size_sectors();
    let geo = Geometry::new(order, cache_sectors)?;
    if let Some(p) = plog.as_deref_mut() {
        // Refuse a plog too small before anything is written.
        format::plog::PlogGeometry::for_device(p.size_sectors(), geo.blocks_per_segment())?;
    }
    let ext = SuperblockExt {
        format_version: FORMAT_VERSION,
        order,
        cache_type: plog.is_some() as u8,
        flags: 0,
        generation,
        cache_sectors,
    };
    // The records of a ready, empty cache.
    let ready = format::RecordExt {
        last_writeback_id: 0,
        flags: 0,
        generation,
    };
    if magic_first {
        io(cache.write(0, &format::encode_superblock(&ext), true))?;
        zero_headers(cache, &geo)?;
        io(cache.flush())?;
        write_records(cache, &ready)?;
        if let Some(p) = plog {
            // The seed's order: the old plog is still there while the cache is usable.
            crate::plog::format_plog(p, order, generation)?;
        }
        return Ok(ext);
    }
    let marker = format::RecordExt {
        last_writeback_id: 0,
        flags: format::RECORD_FLAG_FORMATTING,
        generation,
    };
    let block = format::encode_record_block(&marker);
    io(cache.write(format::BACKUP_RECORD_BLOCK_SECTOR, &block, false))?;
    io(cache.write(format::RECORD_BLOCK_SECTOR, &block, false))?;
    io(cache.flush())?;
    io(cache.write(0, &[0u8; BLOCK_SIZE], false))?;
    zero_headers(cache, &geo)?;
    io(cache.flush())?;
    if let Some(p) = plog {
        crate::plog::format_plog(p, order, generation)?;
    }
    io(cache.write(0, &format::encode_superblock(&ext), true))?;
    write_records(cache, &ready)?;
    Ok(ext)
}
