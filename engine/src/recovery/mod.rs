//! Opening a cache: format a blank device, or recover a formatted one by replaying its log.
//!
//! Recovery is three steps, each in its own module, so that `wbcache check` explains exactly
//! the plan that `open` carries out:
//! - [`scan`] reads the superblock region, the first sector of every slot and the whole
//!   segments the walk may need, into plain values;
//! - [`plan`] decides, by pure functions over those values: format, refuse or recover; the
//!   record; what the ring proves written back; the walk; what lies past its end; what
//!   applying leaves;
//! - `apply` (here) does it: builds the index, writes back what a newer copy dropped, makes a
//!   raised written-back bound durable, voids plog regions and stale slots, flushes.
//!
//! docs/DESIGN.md ("Replay") says why each step is safe.

mod formatting;
pub mod plan;
pub mod scan;

use std::collections::VecDeque;

use crate::cache::{quirk, Config, Engine, SlotInfo};
use crate::device::{BlockDevice, WriteReq};
use crate::error::{Error, Result};
use crate::format::{self, Geometry, Metablock, BLOCK_SIZE, SECTORS_PER_BLOCK, SECTOR_SIZE};
use crate::index::{Index, Mb};
use crate::status::Stats;
use crate::tunables::Tunables;

pub(crate) use formatting::write_records;
pub use formatting::{format_device, format_device_with_plog};
use plan::{LayoutDecision, RecordChoice, RecordSource, RecoverLayout, ReplayQuirks, WalkPlan};
use scan::SegmentScan;

/// What `open` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub formatted: bool,
    pub upstream_image: bool,
    /// The record recovery started from (the largest trusted copy).
    pub record: u64,
    /// The last id provably written back: the record, or higher when the ring proves more
    /// (an upstream cache whose record lags its log). Recovery makes it the durable record.
    pub written_back: u64,
    /// Segments replayed (ids `written_back + 1 ..= last_applied`).
    pub segments_applied: u64,
    pub last_applied: u64,
    /// Why the walk stopped, if it stopped at a slot holding something.
    pub stop_reason: Option<String>,
    pub stale_invalidated: u64,
    /// Older copies' dirty sectors written to the backing device because a newer copy of the
    /// same block carried fewer (upstream images only).
    pub replay_writebacks: u64,
    pub dirty_blocks: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Type 1: segments rebuilt from plog entries, and the entries written again.
    pub plog_segments_rebuilt: u64,
    pub plog_entries_replayed: u64,
    /// Type 1: regions past the recovered end voided so a repeated recovery decides the same.
    pub plog_regions_voided: u64,
    /// Type 1: the plog epoch the cache runs in after recovery (0 in type 0).
    pub plog_epoch: u64,
}

impl<D: BlockDevice> Engine<D> {
    /// Opens a type-0 cache: formats or recovers `cache` in front of `backing`.
    pub fn open(cache: D, backing: D, cfg: Config) -> Result<(Self, RecoveryReport)> {
        Self::open_with_plog(cache, backing, None, cfg)
    }

    /// Opens a cache with or without a plog device. Formatting with a plog makes a type-1
    /// cache; a type-1 cache must be opened with its plog and a type-0 cache without one.
    pub fn open_with_plog(
        mut cache: D,
        backing: D,
        mut plog: Option<D>,
        cfg: Config,
    ) -> Result<(Self, RecoveryReport)> {
        if cfg.nr_rambuf_pool == 0 || cfg.nr_rambuf_pool > 1024 {
            return Err(Error::InvalidPool(cfg.nr_rambuf_pool));
        }
        let backing_sectors = backing.size_sectors();
        if backing_sectors == 0 {
            return Err(Error::BackingSize {
                sectors: backing_sectors,
            });
        }
        let cache_sectors = cache.size_sectors();
        // Smaller than the smallest geometry: nothing to read, nothing to format.
        Geometry::new(format::MIN_ORDER, cache_sectors)?;
        let layout = scan::read_layout(&mut cache)?;
        let mut report = RecoveryReport {
            bytes_read: 3 * SECTOR_SIZE as u64,
            ..RecoveryReport::default()
        };
        let recover =
            match plan::decide_layout(&layout, cfg.format, plog.is_some()).map_err(Error::from)? {
                LayoutDecision::Recover(r) => r,
                LayoutDecision::Format => {
                    #[cfg(feature = "quirks")]
                    let magic_first = cfg.quirks.has(crate::quirks::Quirk::H10MagicFirst);
                    #[cfg(not(feature = "quirks"))]
                    let magic_first = false;
                    let ext = formatting::format_device_in_order(
                        &mut cache,
                        plog.as_mut(),
                        cfg.segment_size_order,
                        cfg.generation,
                        magic_first,
                    )?;
                    report.formatted = true;
                    RecoverLayout {
                        geometry: Geometry::new(ext.order, cache_sectors)?,
                        ext: Some(ext),
                        record: RecordChoice {
                            value: 0,
                            source: RecordSource::Both,
                        },
                    }
                }
            };
        report.upstream_image = recover.ext.is_none();
        let plog = match plog {
            Some(dev) => Some(Self::open_plog(dev, &recover, &cfg, &mut report)?),
            None => None,
        };
        let geo = recover.geometry;
        let order = geo.order;
        let n = geo.blocks_per_segment();
        let mut engine = Engine {
            cache,
            backing,
            geo,
            n,
            backing_sectors,
            generation: recover.generation(),
            tunables: cfg.tunables.unwrap_or_else(|| Tunables::defaults(order)),
            index: Index::new(geo.nr_segments, n),
            slots: vec![SlotInfo::default(); geo.nr_segments as usize],
            open_seg: None,
            sealed: VecDeque::new(),
            free_bufs: Engine::<D>::new_pool(&geo, cfg.nr_rambuf_pool),
            pool_size: cfg.nr_rambuf_pool,
            last_sealed: 0,
            last_flushed: 0,
            last_durable: 0,
            last_writeback: 0,
            durable_record: 0,
            record_needs_durable_log: false,
            now_ms: 0,
            last_record_ms: 0,
            last_sync_ms: 0,
            backing_load: 0,
            draining: false,
            dead: None,
            stats: Stats::default(),
            plog,
            #[cfg(feature = "quirks")]
            quirks: cfg.quirks,
        };
        engine.replay(recover.record.value, &mut report)?;
        Self::backing_io(engine.backing.flush())?;
        if engine.is_type1() {
            if !report.formatted {
                engine.plog_new_epoch()?;
            }
            report.plog_epoch = engine.plog.as_ref().map_or(0, |p| p.sb.epoch);
        }
        // Rebuilding segments went through the write path; the counters are for clients.
        engine.stats = Stats::default();
        report.dirty_blocks = engine.index.live_total();
        Ok((engine, report))
    }

    /// The plog superblock a type-1 cache runs with (the seed quirks H4, H9, H10 change how).
    fn open_plog(
        mut dev: D,
        recover: &RecoverLayout,
        cfg: &Config,
        report: &mut RecoveryReport,
    ) -> Result<crate::plog::Plog<D>> {
        #[cfg(feature = "quirks")]
        let (ignore_generation, regions_from_pool) = (
            cfg.quirks.has(crate::quirks::Quirk::H10MagicFirst)
                || cfg.quirks.has(crate::quirks::Quirk::H4PlogStaleEntries),
            cfg.quirks
                .has(crate::quirks::Quirk::H9PlogGeometryFromTunables),
        );
        #[cfg(not(feature = "quirks"))]
        let (ignore_generation, regions_from_pool) = (false, false);
        let order = recover.geometry.order;
        #[allow(unused_mut)]
        let mut sb =
            crate::plog::open_superblock(&mut dev, recover.generation(), order, ignore_generation)?;
        if regions_from_pool {
            // The seed sized the plog from nr_rambuf_pool on every start.
            let fit = (dev.size_sectors() - format::plog::PLOG_FIRST_REGION_SECTOR)
                / sb.geometry.region_sectors as u64;
            sb.geometry.nr_regions = (cfg.nr_rambuf_pool as u64 + 1).clamp(2, fit.max(2)) as u32;
        }
        let _ = cfg;
        report.plog_epoch = sb.epoch;
        Ok(crate::plog::Plog::new(dev, sb))
    }

    /// The seed hazards of replay that are switched on (none in production).
    fn replay_quirks(&self) -> ReplayQuirks {
        ReplayQuirks {
            torn_forgets_log: quirk!(self, H1TornSlotForgetsLog),
            no_contiguity: quirk!(self, H2NoContiguity),
            no_stale_invalidation: quirk!(self, H3NoStaleInvalidation),
            below_record: quirk!(self, H6ReplayBelowRecord),
            no_checksum: quirk!(self, LcNoChecksum),
        }
    }

    /// Scan, plan, apply, from the chosen record.
    fn replay(&mut self, record: u64, report: &mut RecoveryReport) -> Result<()> {
        let geo = self.geo;
        let quirks = self.replay_quirks();
        report.record = record;
        let headers = scan::read_headers(&mut self.cache, &geo)?;
        report.bytes_read += geo.nr_segments * SECTOR_SIZE as u64;
        let segments = scan::read_segments(
            &mut self.cache,
            &geo,
            &headers,
            plan::wanted_for_walk(&geo, record, quirks),
        )?;
        report.bytes_read +=
            segments
                .iter()
                .map(|s| {
                    format::segment_len_bytes(
                        headers[s.slot as usize].length.min(self.n as u8) as usize
                    ) as u64
                })
                .sum::<u64>();
        let walk = plan::plan_walk(&geo, &headers, &segments, record, quirks);
        let index_plan = plan::plan_index(&walk, &segments, Some(self.backing_sectors));
        if let Some((id, slot, sector)) = index_plan.out_of_range {
            return Err(Error::SegmentOutOfRange {
                id,
                slot,
                sector,
                backing_sectors: self.backing_sectors,
            });
        }
        report.written_back = walk.written_back;
        report.stop_reason = stop_reason(&walk);
        // Type 1: go on into the plog where the cache log ends (reads only).
        let plog_plan = if self.is_type1() && !report.formatted {
            self.plog_plan(walk.first_missing, &segments, report)?
        } else {
            Vec::new()
        };
        let kept = |id: u64| {
            plog_plan
                .iter()
                .any(|p| matches!(p, crate::plog::PlanItem::Cache { id: c, .. } if *c == id))
        };
        if let Some(refusal) = plan::discard_refusal(&walk, kept) {
            return Err(refusal);
        }

        // Apply. Nothing above wrote to a device.
        for &(id, slot) in &walk.applied {
            let seg = segments
                .iter()
                .find(|s| s.slot == slot)
                .expect("an applied segment was scanned");
            self.apply_segment(id, slot, &seg.metablocks);
        }
        debug_assert_eq!(self.index.live_total(), index_plan.dirty_blocks);
        self.replay_writebacks(&index_plan.replay_writebacks, report)?;
        if walk.written_back > record {
            // The ring proved more written back than the record says (upstream writes its
            // record only when asked). Make that durable before anything past the end is
            // invalidated: the invalidation may remove the very segments that prove it.
            let rec = format::RecordExt {
                last_writeback_id: walk.written_back,
                flags: 0,
                generation: self.generation,
            };
            write_records(&mut self.cache, &rec)?;
            report.bytes_written += 2 * BLOCK_SIZE as u64;
        }
        let end = plog_plan.last().map_or(walk.last_applied(), |p| p.id());
        if self.is_type1() && !report.formatted {
            // Void what lies past the end of the plan before anything else is written, so a
            // recovery cut short and run again makes the same plan.
            self.plog_void_after(end, report)?;
        }
        self.invalidate_past_end(&walk, kept, report)?;
        report.last_applied = end.max(walk.written_back);
        report.segments_applied = report.last_applied - walk.written_back;

        let last = walk.last_applied().max(walk.written_back);
        self.last_sealed = last;
        self.last_flushed = last;
        self.last_durable = last;
        self.last_writeback = walk.written_back;
        self.durable_record = walk.written_back;
        if !plog_plan.is_empty() {
            // Rebuild, then make it all durable on the cache device: only then may the plog
            // move to a new epoch and so drop the entries.
            self.plog_execute(&plog_plan, report)?;
            let before = self.last_durable;
            self.make_all_durable()?;
            report.bytes_written += (self.last_durable - before) * self.geo.segment_bytes() as u64;
        }
        Ok(())
    }

    /// Zeroes, durably, every slot past the end of the walk that the plan does not keep (H3),
    /// before any new segment can reuse those ids. The flush also makes durable what replay
    /// read, which may still sit in a volatile cache after a process crash.
    fn invalidate_past_end(
        &mut self,
        walk: &WalkPlan,
        kept: impl Fn(u64) -> bool,
        report: &mut RecoveryReport,
    ) -> Result<()> {
        let stale = plan::invalidations(walk, kept);
        if !stale.is_empty() && !quirk!(self, H3NoStaleInvalidation) {
            let zeros = [0u8; BLOCK_SIZE];
            let reqs: Vec<WriteReq<'_>> = stale
                .iter()
                .map(|&s| WriteReq {
                    sector: self.geo.slot_sector(s),
                    data: &zeros,
                    fua: false,
                })
                .collect();
            Self::cache_io(self.cache.write_batch(&reqs))?;
            report.stale_invalidated = stale.len() as u64;
            report.bytes_written += (stale.len() * BLOCK_SIZE) as u64;
        }
        Self::cache_io(self.cache.flush())
    }

    /// Writes to the backing device the dirty sectors that an older copy held and a newer copy
    /// of the same block dropped (rule 6 of `plan`). Each block is read from the cache device
    /// and checked against its CRC, when it has one, right before it is written.
    fn replay_writebacks(
        &mut self,
        list: &[plan::ReplayWriteback],
        report: &mut RecoveryReport,
    ) -> Result<()> {
        for w in list {
            let sector = self.geo.block_sector(w.slot, w.pos);
            let mut data = [0u8; BLOCK_SIZE];
            Self::cache_io(self.cache.read(sector, &mut data))?;
            if w.crc.is_some_and(|crc| crc != format::block_crc(&data)) {
                return Err(Error::Corrupt {
                    role: crate::DeviceRole::Cache,
                    sector,
                    what: format!("data block of backing block {} fails its CRC", w.block),
                });
            }
            let reqs = crate::background::dirty_runs(w.block, w.bits, &data);
            Self::backing_io(self.backing.write_batch(&reqs))?;
            report.bytes_read += BLOCK_SIZE as u64;
            report.bytes_written += reqs.iter().map(|r| r.data.len() as u64).sum::<u64>();
        }
        report.replay_writebacks = list.len() as u64;
        Ok(())
    }

    /// Applies one intact segment's metablocks to the index: newest copy wins; a clean entry
    /// (upstream's read cache) drops an older copy, the backing device has the block.
    pub(crate) fn apply_segment(&mut self, id: u64, slot: u64, metablocks: &[Metablock]) {
        self.slots[slot as usize] = SlotInfo {
            id,
            len: metablocks.len(),
        };
        for (j, m) in metablocks.iter().enumerate() {
            let block = m.sector / SECTORS_PER_BLOCK;
            if let Some(old) = self.index.lookup(block) {
                self.index.remove(old);
            }
            let idx = self.index.idx(slot, j);
            if self.index.get(idx).dirty != 0 {
                // The same slot applied twice (seed quirks) or the same block twice in one
                // segment: the later metablock wins.
                self.index.remove(idx);
            }
            if m.dirty_bits == 0 {
                continue;
            }
            self.index.insert(
                idx,
                Mb {
                    block,
                    crc: m.block_crc,
                    dirty: m.dirty_bits,
                },
            );
        }
    }
}

/// The walk's stop, in words, when it stopped at a slot holding something.
fn stop_reason(walk: &WalkPlan) -> Option<String> {
    let s = walk.stop;
    match s.reason {
        plan::StopReason::OtherId { found } => Some(format!(
            "slot {} holds id {found}, not the next id {}",
            s.slot, s.id
        )),
        plan::StopReason::Torn => Some(format!(
            "segment {} in slot {} fails its checksum or length (torn)",
            s.id, s.slot
        )),
        plan::StopReason::EmptySlot | plan::StopReason::WholeRing => None,
    }
}

/// The segments of a scan, by slot (for the type-1 plan's look at the cache device).
pub(crate) fn intact_on_cache<'a>(
    segments: &'a [SegmentScan],
    geo: &Geometry,
    id: u64,
    ignore_checksum: bool,
) -> Option<&'a SegmentScan> {
    let slot = geo.slot_of(id);
    segments
        .iter()
        .find(|s| s.slot == slot && s.id == id && s.intact(ignore_checksum))
}
