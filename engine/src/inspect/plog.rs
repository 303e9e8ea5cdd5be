//! The plog device in `check` and `dump`: both superblock copies, every region, and (for
//! `check`) what recovery would do, found by running it on copy-on-write overlays.

use crate::cache::{Config, Engine, FormatPolicy};
use crate::device::{check_access, BlockDevice, DeviceRole, IoError, IoOp};
use crate::error::{Error, Result};
use crate::format::plog::{
    EntryHeader, PlogSuperblock, PLOG_BACKUP_SB_SECTOR, PLOG_FIRST_REGION_SECTOR, PLOG_SB_SECTOR,
};
use crate::format::{Geometry, SuperblockExt, SECTOR_SIZE};
use crate::plog::{verified_run, RunOwner};
use crate::recovery::RecoveryReport;

use super::report::{Problem, ProblemKind};
use super::RecordCopyName;

fn problem(kind: ProblemKind, detail: impl Into<String>) -> Problem {
    Problem {
        kind,
        detail: detail.into(),
    }
}

/// Stands in for the backing device's size when the check is given none: recovery then rejects
/// no block for lying past the end of the backing device.
const UNKNOWN_BACKING_SECTORS: u64 = 1 << 60;

/// RAM buffers of the recovery that [`check_with_plog`] runs: the outcome does not depend on
/// it, only how much of the rebuilt log is held in RAM rather than in the overlay.
const CHECK_RAMBUF_POOL: usize = 2;

/// A copy-on-write view of a device: reads fall through to the underlying device (or read
/// zeros when there is none) unless the sector was written through the overlay; writes and
/// flushes stay in memory. The underlying device is never written or flushed, so the engine's
/// own recovery can run on it to find out what it would do.
///
/// Memory: one entry per written sector (all-zero sectors, such as invalidated headers and
/// voided regions, take no data buffer).
pub struct OverlayDevice<'a, D: BlockDevice> {
    base: Option<&'a mut D>,
    sectors: u64,
    /// Sectors written through the overlay; `None` = all zero.
    written: std::collections::BTreeMap<u64, Option<Box<[u8]>>>,
}

impl<'a, D: BlockDevice> OverlayDevice<'a, D> {
    /// An overlay over `base`.
    pub fn new(base: &'a mut D) -> Self {
        OverlayDevice {
            sectors: base.size_sectors(),
            base: Some(base),
            written: Default::default(),
        }
    }

    /// An overlay over nothing: a device of `sectors` zero sectors.
    pub fn zeros(sectors: u64) -> Self {
        OverlayDevice {
            base: None,
            sectors,
            written: Default::default(),
        }
    }

    /// Sectors written through the overlay.
    pub fn sectors_written(&self) -> usize {
        self.written.len()
    }
}

impl<D: BlockDevice> BlockDevice for OverlayDevice<'_, D> {
    fn size_sectors(&self) -> u64 {
        self.sectors
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> std::result::Result<(), IoError> {
        check_access(IoOp::Read, self.sectors, sector, buf.len())?;
        match self.base.as_deref_mut() {
            Some(base) => base.read(sector, buf)?,
            None => buf.fill(0),
        }
        let end = sector + (buf.len() / SECTOR_SIZE) as u64;
        for (&s, data) in self.written.range(sector..end) {
            let at = (s - sector) as usize * SECTOR_SIZE;
            let dst = &mut buf[at..at + SECTOR_SIZE];
            match data {
                Some(d) => dst.copy_from_slice(d),
                None => dst.fill(0),
            }
        }
        Ok(())
    }

    fn write(&mut self, sector: u64, data: &[u8], _fua: bool) -> std::result::Result<(), IoError> {
        check_access(IoOp::Write, self.sectors, sector, data.len())?;
        for (i, d) in data.chunks_exact(SECTOR_SIZE).enumerate() {
            let kept = d.iter().any(|&b| b != 0).then(|| d.into());
            self.written.insert(sector + i as u64, kept);
        }
        Ok(())
    }

    fn flush(&mut self) -> std::result::Result<(), IoError> {
        Ok(())
    }
}

/// One plog superblock copy (primary: sector 0, backup: sector 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlogSuperblockCopy {
    pub name: RecordCopyName,
    pub sector: u64,
    /// The copy, when its magic and CRC are right.
    pub superblock: Option<PlogSuperblock>,
    /// It decodes and carries the cache superblock's generation.
    pub generation_matches: bool,
}

/// What a plog region holds, judged against the superblock recovery uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionState {
    /// Entry 0 does not decode: never written, voided by recovery, or garbage.
    Empty,
    /// Entry 0 is of the current generation and epoch and the run of valid entries starts
    /// there (`valid_entries` ≥ 1).
    Current,
    /// Entry 0 names the current generation and epoch but fails verification (CRC, shape,
    /// position): a torn first entry; the region holds nothing recovery would use.
    Invalid,
    /// Entry 0 is of an older epoch or another generation: void, recovery ignores it.
    Stale,
    /// Entry 0 is current but names a segment that does not log into this region.
    Misplaced,
}

impl RegionState {
    pub fn as_str(self) -> &'static str {
        match self {
            RegionState::Empty => "empty",
            RegionState::Current => "current",
            RegionState::Invalid => "invalid",
            RegionState::Stale => "stale",
            RegionState::Misplaced => "misplaced",
        }
    }
}

/// One plog region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionReport {
    pub region: u32,
    /// First sector of the region on the plog device.
    pub sector: u64,
    /// Entry 0's header, when it decodes (whatever its epoch).
    pub first: Option<EntryHeader>,
    pub state: RegionState,
    /// Entries of the current epoch that verify, from entry 0 on (what recovery could replay
    /// of this region).
    pub valid_entries: u32,
    /// Sectors those entries take (headers and data).
    pub sectors_used: u64,
    /// The smallest backing device (sectors) those entries fit in.
    pub backing_sectors_needed: u64,
}

/// The plog device, decoded: superblocks and regions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlogInfo {
    pub device_sectors: u64,
    /// Primary, backup; `None` copies when the device is too small to hold them.
    pub copies: [PlogSuperblockCopy; 2],
    /// The superblock recovery would use (`None` when it would refuse the plog, or when the
    /// cache device gives no generation and order to judge it by).
    pub superblock: Option<PlogSuperblock>,
    /// Why recovery would refuse the plog.
    pub problem: Option<Problem>,
    /// Every region, when `superblock` is known.
    pub regions: Vec<RegionReport>,
}

/// The type-1 part of a [`CheckReport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlogReport {
    pub info: PlogInfo,
    /// What `Engine::open_with_plog` reports when run on copy-on-write overlays of the devices:
    /// the whole recovery (cache segments applied, plog segments rebuilt, entries replayed,
    /// regions voided, where and why it stops, the epoch it moves to). `None` when recovery
    /// fails or `open` would not get that far (the problems say why).
    pub recovery: Option<RecoveryReport>,
}

fn plog_io<T>(r: std::result::Result<T, IoError>) -> Result<T> {
    r.map_err(|source| Error::Io {
        role: DeviceRole::Plog,
        source,
    })
}

/// Names why recovery refuses a plog superblock (`open_superblock`'s error).
pub(super) fn plog_problem(e: Error, any_copy_valid: bool) -> Problem {
    let kind = match &e {
        Error::PlogMismatch { .. } => ProblemKind::PlogGeneration,
        Error::UnsupportedVersion(_) => ProblemKind::PlogVersion,
        Error::PlogResized { .. } => ProblemKind::PlogResized,
        Error::PlogGeometry(_) => ProblemKind::PlogGeometry,
        // Its own "corrupt" covers both: no valid copy, and a segment order of another cache.
        Error::Corrupt { .. } if any_copy_valid => ProblemKind::PlogGeometry,
        _ => ProblemKind::PlogSuperblock,
    };
    problem(kind, format!("plog: {e}"))
}

/// Reads both plog superblock copies and, when the cache device gives a generation and a
/// geometry, decides as recovery does (`open_superblock`, the same function) and summarises
/// every region. Reads only; `Err` only for an I/O error.
pub(super) fn read_plog_info<D: BlockDevice>(
    plog: &mut D,
    cache_ext: Option<SuperblockExt>,
    geometry: Option<Geometry>,
    backing_sectors: Option<u64>,
) -> Result<PlogInfo> {
    let device_sectors = plog.size_sectors();
    let generation = cache_ext.map(|e| e.generation);
    let decoded = if device_sectors >= PLOG_FIRST_REGION_SECTOR {
        crate::plog::read_superblocks(plog)?
    } else {
        [None; 2]
    };
    let copy = |i: usize, name, sector| PlogSuperblockCopy {
        name,
        sector,
        superblock: decoded[i],
        generation_matches: decoded[i].is_some_and(|s| Some(s.generation) == generation),
    };
    let mut info = PlogInfo {
        device_sectors,
        copies: [
            copy(0, RecordCopyName::Primary, PLOG_SB_SECTOR),
            copy(1, RecordCopyName::Backup, PLOG_BACKUP_SB_SECTOR),
        ],
        superblock: None,
        problem: None,
        regions: Vec::new(),
    };
    // Without our superblock and a geometry there is nothing to judge the plog by; the cache
    // device's own problems say why.
    let (Some(ext), Some(geo)) = (cache_ext, geometry) else {
        return Ok(info);
    };
    let any_valid = decoded.iter().any(|c| c.is_some());
    if device_sectors < PLOG_FIRST_REGION_SECTOR {
        info.problem = Some(problem(
            ProblemKind::PlogSuperblock,
            format!(
                "plog: the device has {device_sectors} sectors, too few for its superblocks \
                 ({PLOG_FIRST_REGION_SECTOR})"
            ),
        ));
        return Ok(info);
    }
    let sb = match crate::plog::open_superblock(plog, ext.generation, geo.order, false) {
        Ok(sb) => sb,
        Err(e @ Error::Io { .. }) => return Err(e),
        Err(e) => {
            info.problem = Some(plog_problem(e, any_valid));
            return Ok(info);
        }
    };
    info.superblock = Some(sb);
    let pgeo = sb.geometry;
    // `open_superblock` validated the geometry: regions lie inside the device, each at most
    // `MAX_REGION_SECTORS` long, at most `MAX_REGIONS` of them.
    let mut buf = vec![0u8; pgeo.region_sectors as usize * SECTOR_SIZE];
    let backing = backing_sectors.unwrap_or(UNKNOWN_BACKING_SECTORS);
    for region in 0..pgeo.nr_regions {
        let sector = pgeo.region_sector(region);
        plog_io(plog.read(sector, &mut buf))?;
        let first = crate::format::plog::decode_entry_header(&buf[..SECTOR_SIZE]);
        let mut r = RegionReport {
            region,
            sector,
            first,
            state: RegionState::Empty,
            valid_entries: 0,
            sectors_used: 0,
            backing_sectors_needed: 0,
        };
        if let Some(h) = first {
            r.state = if h.generation != sb.generation || h.epoch != sb.epoch {
                RegionState::Stale
            } else if pgeo.region_of(h.segment_id) != region {
                RegionState::Misplaced
            } else {
                let owner = RunOwner {
                    segment_id: h.segment_id,
                    generation: Some(sb.generation),
                    epoch: Some(sb.epoch),
                };
                let run = verified_run(&buf, owner, backing);
                r.valid_entries = run.len() as u32;
                for (_, e) in &run {
                    r.sectors_used += e.footprint();
                    r.backing_sectors_needed = r
                        .backing_sectors_needed
                        .max(e.sector.saturating_add(e.len as u64));
                }
                if run.is_empty() {
                    RegionState::Invalid
                } else {
                    RegionState::Current
                }
            };
        }
        info.regions.push(r);
    }
    Ok(info)
}

/// Runs the engine's own recovery (`FormatPolicy::Never`) on overlays of the devices and
/// returns its report, or the error it fails with. Nothing reaches the devices: the overlays
/// keep what recovery writes (stale headers zeroed, regions voided, the rebuilt segments, the
/// new plog epoch) in memory and drop it. The outer `Err` is an I/O error of a device.
pub(super) fn recover_on_overlays<D: BlockDevice>(
    cache: &mut D,
    plog: &mut D,
    backing_sectors: Option<u64>,
) -> Result<std::result::Result<RecoveryReport, Error>> {
    let cfg = Config {
        nr_rambuf_pool: CHECK_RAMBUF_POOL,
        format: FormatPolicy::Never,
        ..Config::default()
    };
    let backing = OverlayDevice::zeros(backing_sectors.unwrap_or(UNKNOWN_BACKING_SECTORS));
    match Engine::open_with_plog(
        OverlayDevice::new(cache),
        backing,
        Some(OverlayDevice::new(plog)),
        cfg,
    ) {
        Ok((_engine, report)) => Ok(Ok(report)),
        Err(e @ Error::Io { .. }) => Err(e),
        Err(e) => Ok(Err(e)),
    }
}
