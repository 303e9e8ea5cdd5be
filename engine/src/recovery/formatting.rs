//! Formatting a cache device, as stages of device operations: each stage is issued only once
//! every operation of the one before it completed, so the order holds whatever a power cut
//! tears (H10):
//! 1. both record copies say "formatting", flushed: from here on an interrupted format is
//!    recognised and redone, even if sector 0 is left torn;
//! 2. zero sector 0 and every segment header, flush: no old segment can be replayed;
//! 3. type 1: the plog superblock (new generation, new epoch), backup then primary, FUA;
//! 4. the superblock, FUA;
//! 5. both record copies (id 0, no flag), backup then primary, FUA: the device is ready.
//!
//! `Engine` opening runs the stages as operations; [`format_device`] runs them on devices.

use std::sync::Arc;

use crate::device::{BlockDevice, DeviceRole};
use crate::error::Result;
use crate::format::plog::PlogSuperblock;
use crate::format::{self, Geometry, SuperblockExt, BLOCK_SIZE, FORMAT_VERSION};
use crate::io::{IoData, IoKind};

/// One operation of a stage.
#[derive(Clone, Debug)]
pub(crate) struct Planned {
    pub role: DeviceRole,
    pub kind: IoKind,
}

impl Planned {
    pub fn write(role: DeviceRole, sector: u64, data: IoData, fua: bool) -> Self {
        Planned {
            role,
            kind: IoKind::Write { sector, data, fua },
        }
    }

    pub fn read(role: DeviceRole, sector: u64, len: usize) -> Self {
        Planned {
            role,
            kind: IoKind::Read { sector, len },
        }
    }

    pub fn flush(role: DeviceRole) -> Self {
        Planned {
            role,
            kind: IoKind::Flush,
        }
    }
}

/// Operations issued together; the next stage waits for all of them.
pub(crate) type Stage = Vec<Planned>;

/// Both record copies, backup first, each with FUA: two stages, so a torn primary always
/// leaves the backup with the newer value.
pub(crate) fn record_stages(rec: &format::RecordExt) -> Vec<Stage> {
    let block = IoData::from_vec(format::encode_record_block(rec).to_vec());
    [
        format::BACKUP_RECORD_BLOCK_SECTOR,
        format::RECORD_BLOCK_SECTOR,
    ]
    .into_iter()
    .map(|sector| {
        vec![Planned::write(
            DeviceRole::Cache,
            sector,
            block.clone(),
            true,
        )]
    })
    .collect()
}

/// Both plog superblock copies, backup first, each with FUA.
pub(crate) fn plog_superblock_stages(sb: &PlogSuperblock) -> Vec<Stage> {
    let block = IoData::from_vec(format::plog::encode_superblock(sb).to_vec());
    [
        format::plog::PLOG_BACKUP_SB_SECTOR,
        format::plog::PLOG_SB_SECTOR,
    ]
    .into_iter()
    .map(|sector| {
        vec![Planned::write(
            DeviceRole::Plog,
            sector,
            block.clone(),
            true,
        )]
    })
    .collect()
}

/// A format: the superblock it writes and its stages. `plog_sb`: the plog superblock of a
/// type-1 format. `magic_first` is seed hazard H10 (quirk `h10`): the superblock goes out
/// before anything old is invalidated and without the formatting marker.
pub(crate) fn format_stages(
    cache_sectors: u64,
    order: u8,
    generation: u64,
    plog_sb: Option<PlogSuperblock>,
    magic_first: bool,
) -> Result<(SuperblockExt, Vec<Stage>)> {
    let geo = Geometry::new(order, cache_sectors)?;
    let ext = SuperblockExt {
        format_version: FORMAT_VERSION,
        order,
        cache_type: plog_sb.is_some() as u8,
        flags: 0,
        generation,
        cache_sectors,
    };
    let zeros = IoData::from_vec(vec![0u8; BLOCK_SIZE]);
    let zero_headers: Stage = (0..geo.nr_segments)
        .map(|s| Planned::write(DeviceRole::Cache, geo.slot_sector(s), zeros.clone(), false))
        .collect();
    let superblock = vec![Planned::write(
        DeviceRole::Cache,
        0,
        IoData::from_vec(format::encode_superblock(&ext).to_vec()),
        true,
    )];
    let ready = format::RecordExt {
        last_writeback_id: 0,
        flags: 0,
        generation,
    };
    let mut stages = Vec::new();
    if magic_first {
        stages.push(superblock);
        stages.push(zero_headers);
        stages.push(vec![Planned::flush(DeviceRole::Cache)]);
        stages.extend(record_stages(&ready));
        stages.extend(plog_sb.iter().flat_map(plog_superblock_stages));
        return Ok((ext, stages));
    }
    let marker = format::RecordExt {
        last_writeback_id: 0,
        flags: format::RECORD_FLAG_FORMATTING,
        generation,
    };
    let marker_block = IoData::from_vec(format::encode_record_block(&marker).to_vec());
    stages.push(vec![
        Planned::write(
            DeviceRole::Cache,
            format::BACKUP_RECORD_BLOCK_SECTOR,
            marker_block.clone(),
            false,
        ),
        Planned::write(
            DeviceRole::Cache,
            format::RECORD_BLOCK_SECTOR,
            marker_block,
            false,
        ),
    ]);
    stages.push(vec![Planned::flush(DeviceRole::Cache)]);
    let mut zero = zero_headers;
    zero.insert(0, Planned::write(DeviceRole::Cache, 0, zeros, false));
    stages.push(zero);
    stages.push(vec![Planned::flush(DeviceRole::Cache)]);
    stages.extend(plog_sb.iter().flat_map(plog_superblock_stages));
    stages.push(superblock);
    stages.extend(record_stages(&ready));
    Ok((ext, stages))
}

/// Runs stages on devices, in order, each operation as it comes.
fn run_stages<D: BlockDevice>(
    cache: &mut D,
    mut plog: Option<&mut D>,
    stages: Vec<Stage>,
) -> Result<()> {
    for stage in stages {
        for op in stage {
            let dev: &mut D = match op.role {
                DeviceRole::Cache => cache,
                DeviceRole::Plog => plog.as_deref_mut().expect("a plog stage has a plog"),
                DeviceRole::Backing => unreachable!("a format never touches the backing device"),
            };
            crate::sync::perform(dev, &op.kind).map_err(|source| crate::Error::Io {
                role: op.role,
                source,
            })?;
        }
    }
    Ok(())
}

/// Formats a cache device (type 0), crash-safe in the order above.
pub fn format_device<D: BlockDevice>(
    cache: &mut D,
    order: u8,
    generation: u64,
) -> Result<SuperblockExt> {
    let (ext, stages) = format_stages(cache.size_sectors(), order, generation, None, false)?;
    run_stages(cache, None, stages)?;
    Ok(ext)
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
    // Refuse a geometry that does not fit before anything is written.
    Geometry::new(order, cache.size_sectors())?;
    let old = super::plog::read_superblocks(plog)?;
    let sb = super::plog::format_superblock(&old, plog.size_sectors(), order, generation)?;
    let (ext, stages) = format_stages(cache.size_sectors(), order, generation, Some(sb), false)?;
    run_stages(cache, Some(plog), stages)?;
    Ok(ext)
}

/// A shared all-zero sector, for voiding plog regions and zeroing headers.
pub(crate) fn zero_sector() -> IoData {
    IoData::new(
        Arc::new(vec![0u8; crate::format::SECTOR_SIZE]),
        0..crate::format::SECTOR_SIZE,
    )
}
