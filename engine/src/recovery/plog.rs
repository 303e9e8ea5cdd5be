//! Type 1 in recovery and format: the plog superblock, the runs of entries a region holds, and
//! how far recovery goes into the plog — pure functions over what `open` read, so `check`
//! judges the plog with the very same code.
//!
//! The rules (docs/DESIGN.md, "Type 1"): recovery walks the cache log first and continues into
//! the plog where it ends, taking a valid cache segment over its region whenever there is one
//! (H8), accepting a run of entries only when every entry before it is there (torn anywhere),
//! and moving to a new epoch only after the recovered segments are durable, which voids every
//! older entry (H4).

use std::collections::BTreeMap;

use crate::device::{BlockDevice, DeviceRole};
use crate::error::{Error, Result};
use crate::format::plog::{
    self as pf, EntryHeader, PlogGeometry, PlogSuperblock, PLOG_BACKUP_SB_SECTOR, PLOG_SB_SECTOR,
    PLOG_VERSION,
};
use crate::format::SECTOR_SIZE;

pub(crate) fn plog_corrupt(sector: u64, what: String) -> Error {
    Error::Corrupt {
        role: DeviceRole::Plog,
        sector,
        what,
    }
}

/// A plog device too small to hold its superblocks is refused before anything is read.
pub(crate) fn check_plog_size(sectors: u64) -> Result<()> {
    if sectors < pf::PLOG_FIRST_REGION_SECTOR {
        return Err(Error::PlogGeometry(pf::PlogGeometryError::TooSmall {
            sectors,
            blocks: 1,
            need: pf::PLOG_FIRST_REGION_SECTOR,
        }));
    }
    Ok(())
}

/// Reads and decodes both superblock copies of a plog device (for `check` and `dump`).
pub(crate) fn read_superblocks<D: BlockDevice>(dev: &mut D) -> Result<[Option<PlogSuperblock>; 2]> {
    check_plog_size(dev.size_sectors())?;
    let mut out = [None; 2];
    for (i, sector) in [PLOG_SB_SECTOR, PLOG_BACKUP_SB_SECTOR]
        .into_iter()
        .enumerate()
    {
        let mut buf = [0u8; SECTOR_SIZE];
        dev.read(sector, &mut buf).map_err(|source| Error::Io {
            role: DeviceRole::Plog,
            source,
        })?;
        out[i] = pf::decode_superblock(&buf);
    }
    Ok(out)
}

/// The superblock an existing plog is opened with: the newest valid copy of this generation,
/// checked against the device and the cache's order.
pub(crate) fn choose_superblock(
    copies: &[Option<PlogSuperblock>; 2],
    generation: u64,
    order: u8,
    sectors: u64,
    ignore_generation: bool,
) -> Result<PlogSuperblock> {
    let valid: Vec<PlogSuperblock> = copies.iter().flatten().copied().collect();
    if valid.is_empty() {
        return Err(plog_corrupt(
            PLOG_SB_SECTOR,
            "neither plog superblock copy (sectors 0 and 8) is valid: not a wbcache plog, or \
             never formatted"
                .into(),
        ));
    }
    let sb = valid
        .iter()
        .filter(|s| ignore_generation || s.generation == generation)
        .max_by_key(|s| s.epoch)
        .copied()
        .ok_or(Error::PlogMismatch {
            cache: generation,
            plog: valid[0].generation,
        })?;
    if sb.version != PLOG_VERSION {
        return Err(Error::UnsupportedVersion(sb.version));
    }
    if sb.plog_sectors != sectors {
        return Err(Error::PlogResized {
            formatted: sb.plog_sectors,
            actual: sectors,
        });
    }
    if sb.segment_order != order {
        return Err(plog_corrupt(
            PLOG_SB_SECTOR,
            format!(
                "plog was formatted for segment order {} but the cache has order {order}",
                sb.segment_order
            ),
        ));
    }
    sb.geometry.validate(sectors, (1usize << (order - 3)) - 1)?;
    Ok(sb)
}

/// [`choose_superblock`] of a device, read synchronously (for `check`).
pub(crate) fn open_superblock<D: BlockDevice>(
    dev: &mut D,
    generation: u64,
    order: u8,
    ignore_generation: bool,
) -> Result<PlogSuperblock> {
    let copies = read_superblocks(dev)?;
    choose_superblock(
        &copies,
        generation,
        order,
        dev.size_sectors(),
        ignore_generation,
    )
}

/// The superblock a format writes: a geometry for the device, and an epoch past every epoch an
/// old superblock names, so no entry written before can ever verify again.
pub(crate) fn format_superblock(
    old: &[Option<PlogSuperblock>; 2],
    sectors: u64,
    order: u8,
    generation: u64,
) -> Result<PlogSuperblock> {
    let blocks = (1usize << (order - 3)) - 1;
    let geometry = PlogGeometry::for_device(sectors, blocks)?;
    let old_epoch = old.iter().flatten().map(|s| s.epoch).max().unwrap_or(0);
    Ok(PlogSuperblock {
        version: PLOG_VERSION,
        generation,
        epoch: old_epoch.saturating_add(1),
        plog_sectors: sectors,
        geometry,
        segment_order: order,
    })
}

/// Whose entries a region's run must be: recovery's expectation, also used by `inspect`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RunOwner {
    pub segment_id: u64,
    /// `None`: any generation (seed quirks only).
    pub generation: Option<u64>,
    /// `None`: any epoch (seed quirk H4 only).
    pub epoch: Option<u64>,
}

/// The run of entries of one region (`region` holds the whole region) that verify, from entry
/// 0 on: each must carry the owner's segment id, generation and epoch and its own position, be
/// well formed, fit the region and a backing device of `backing_sectors`, and pass its CRC.
/// Returns (offset in sectors, header) of each. Bounded by the region size (H4): every entry
/// takes at least two sectors. Recovery and `inspect` both read runs through this function.
pub(crate) fn verified_run(
    region: &[u8],
    owner: RunOwner,
    backing_sectors: u64,
) -> Vec<(u64, EntryHeader)> {
    let region_sectors = (region.len() / SECTOR_SIZE) as u64;
    let mut entries = Vec::new();
    let mut at = 0u64;
    while at < region_sectors {
        let hs = at as usize * SECTOR_SIZE;
        let Some(h) = pf::decode_entry_header(&region[hs..hs + SECTOR_SIZE]) else {
            break;
        };
        let end = at + h.footprint();
        // Checked: the sector comes off the device and may be anything.
        let fits = end <= region_sectors
            && h.sector
                .checked_add(h.len as u64)
                .is_some_and(|e| e <= backing_sectors);
        let ours = h.segment_id == owner.segment_id
            && h.seq == entries.len() as u32
            && owner.generation.is_none_or(|g| h.generation == g)
            && owner.epoch.is_none_or(|e| h.epoch == e);
        if !fits || !ours {
            break;
        }
        let data = &region[hs + SECTOR_SIZE..end as usize * SECTOR_SIZE];
        if !pf::entry_crc_ok(&region[hs..hs + SECTOR_SIZE], data) {
            break;
        }
        entries.push((at, h));
        at = end;
    }
    entries
}

/// One segment of the type-1 part of recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PlanItem {
    /// A valid cache segment after a segment rebuilt from the plog: loaded into RAM and
    /// written again with the rebuilt ones, so the ids stay a prefix.
    Cache { id: u64, slot: u64, len: usize },
    /// A segment rebuilt from the first `count` entries of its region.
    Plog { id: u64, count: usize },
}

impl PlanItem {
    pub fn id(&self) -> u64 {
        match self {
            PlanItem::Cache { id, .. } | PlanItem::Plog { id, .. } => *id,
        }
    }
}

/// How far recovery goes past the end of the cache log. `first_missing` is the first id the
/// cache walk did not apply; `runs` holds the verified run of each region read, by segment id;
/// `on_cache(id)` the (slot, length) of an intact cache segment of that id. Pure; bounded: a
/// segment opens only once the one `nr_regions` before it is durable, so no id at or past
/// `first_missing + nr_regions` was ever opened.
pub(crate) fn plan(
    first_missing: u64,
    nr_regions: u64,
    runs: &BTreeMap<u64, Vec<(u64, EntryHeader)>>,
    on_cache: impl Fn(u64) -> Option<(u64, usize)>,
    seed_replay: bool,
) -> (Vec<PlanItem>, Option<String>) {
    let mut items = Vec::new();
    let mut stop = None;
    // Entries of the previous segment when it came from the plog: the next one may follow
    // only if it confirms that run was complete.
    let mut prev_from_plog: Option<usize> = None;
    let mut id = first_missing;
    for _ in 0..nr_regions {
        let run = runs.get(&id).map_or(&[][..], |r| &r[..]);
        let count = run.len();
        if seed_replay {
            // The seed rebuilt every region with entries and wrote it over the cache slot,
            // whatever the slot held and whether the run before it was complete (H8).
            if count == 0 {
                break;
            }
            items.push(PlanItem::Plog { id, count });
            id += 1;
            continue;
        }
        if let Some(prev) = prev_from_plog {
            let confirmed = run
                .first()
                .is_some_and(|(_, h)| h.prev_entries as usize == prev);
            if !confirmed {
                stop = Some(format!(
                    "plog region of segment {} may be incomplete ({prev} entries, not confirmed by segment {id})",
                    id - 1
                ));
                break;
            }
        }
        if let Some((slot, len)) = on_cache(id) {
            items.push(PlanItem::Cache { id, slot, len });
            prev_from_plog = None;
        } else if count > 0 {
            items.push(PlanItem::Plog { id, count });
            prev_from_plog = Some(count);
        } else {
            if prev_from_plog.is_none() {
                stop = Some(format!(
                    "segment {id} is neither on the cache device nor in the plog"
                ));
            }
            break;
        }
        id += 1;
    }
    (items, stop)
}

/// The regions whose entry 0 is of this epoch and names a segment past `last`: recovery voids
/// them so a recovery cut short and run again decides exactly as this one did.
pub(crate) fn regions_to_void(
    heads: &[Option<EntryHeader>],
    sb: &PlogSuperblock,
    last: u64,
) -> Vec<u32> {
    heads
        .iter()
        .enumerate()
        .filter(|(_, h)| {
            h.is_some_and(|h| {
                h.epoch == sb.epoch && h.generation == sb.generation && h.segment_id > last
            })
        })
        .map(|(r, _)| r as u32)
        .collect()
}
