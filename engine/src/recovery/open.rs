//! Opening a cache as a state machine: the same interface as the engine (operations out,
//! completions in), ending in a running [`Engine`] and its [`RecoveryReport`].
//!
//! Scan (reads only), plan (pure), apply (writes), in stages: each stage's operations go out
//! together and the next stage starts once every one of them completed.
//!
//! 1. `Layout`: sector 0, both record sectors (type 1: both plog superblocks). Decide: format,
//!    refuse, or recover.
//! 2. `Format`: the format's stages (`formatting.rs`), then on as for a recovery of an empty
//!    device.
//! 3. `Headers`, `Segments`: the scan (`scan.rs`), in bounded chunks.
//! 4. Type 1: `PlogHeads` (entry 0 of every region), `PlogRegions` (the regions the plog plan
//!    may use).
//! 5. The plan (`plan.rs`, `plog.rs`); a refusal ends here with nothing written.
//! 6. `ReplayReads` then the apply stages: replay writebacks, a raised record, voided plog
//!    regions, invalidated slots, a cache flush.
//! 7. `Rebuild` (type 1): the engine itself rebuilds segments from the plog through its write
//!    path and makes them durable; `Finish`: a backing flush, the plog's new epoch.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::cache::{quirk, Config, Engine, Parts, Plog};
use crate::device::{DeviceRole, IoError};
use crate::error::{Error, Result};
use crate::format::plog::{self as pf, EntryHeader, PlogSuperblock};
use crate::format::{self, Geometry, SECTOR_SIZE};
use crate::io::{IoData, IoDone, IoKind, IoOp, IoResult, OpId};
use crate::tunables::Tunables;

use super::formatting::{self, Planned, Stage};
use super::plan::{self, LayoutDecision, RecordChoice, RecordSource, RecoverLayout, WalkPlan};
use super::plog::{self as rplog, PlanItem, RunOwner};
use super::scan::{self, LayoutScan, SegmentScan, SlotHeader};
use super::RecoveryReport;

/// The sizes of the devices a cache is opened on, in sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSizes {
    pub cache: u64,
    pub backing: u64,
    /// `Some` for a type-1 cache (or a format that makes one).
    pub plog: Option<u64>,
}

enum Phase {
    Layout,
    /// Format stages left.
    Format(VecDeque<Stage>),
    Headers,
    Segments(VecDeque<u64>),
    PlogHeads,
    PlogRegions(Vec<u64>),
    ReplayReads,
    /// Apply stages left (writes and flushes).
    Apply(VecDeque<Stage>),
    Rebuild,
    /// Finishing stages left (backing flush, plog epoch).
    Finish(VecDeque<Stage>),
    Done,
}

/// A plog region read in full (shared with the rebuild) and its verified run of entries.
type RegionRun = (Arc<Vec<u8>>, Vec<(u64, EntryHeader)>);

/// What the scan and the plan found, as the stages go.
#[derive(Default)]
struct Found {
    layout: Option<LayoutScan>,
    recover: Option<RecoverLayout>,
    plog_copies: [Option<PlogSuperblock>; 2],
    plog_sb: Option<PlogSuperblock>,
    headers: Vec<SlotHeader>,
    segments: Vec<SegmentScan>,
    walk: Option<WalkPlan>,
    replay_writebacks: Vec<plan::ReplayWriteback>,
    plog_heads: Vec<Option<EntryHeader>>,
    runs: BTreeMap<u64, RegionRun>,
    plog_plan: Vec<PlanItem>,
}

/// A cache being opened.
pub struct Opening {
    cfg: Config,
    sizes: DeviceSizes,
    report: RecoveryReport,
    phase: Phase,
    next_op: u64,
    outbox: VecDeque<IoOp>,
    /// Operations of the current stage in flight, by id: their position in the stage and
    /// their device.
    pending: BTreeMap<OpId, (usize, DeviceRole)>,
    /// Read results of the current stage, by position.
    results: Vec<Option<Vec<u8>>>,
    found: Found,
    /// Slots of the segment chunk in flight.
    chunk_len: usize,
    engine: Option<Engine>,
    failed: Option<Error>,
}

impl Opening {
    /// Starts opening a cache on devices of `sizes`. Bad configuration or sizes are refused
    /// before any operation.
    pub fn new(cfg: Config, sizes: DeviceSizes) -> Result<Opening> {
        if cfg.nr_rambuf_pool == 0 || cfg.nr_rambuf_pool > 1024 {
            return Err(Error::InvalidPool(cfg.nr_rambuf_pool));
        }
        if sizes.backing == 0 {
            return Err(Error::BackingSize {
                sectors: sizes.backing,
            });
        }
        // Too small for the superblock region: nothing to read. A device that holds it is
        // judged by what its superblock says (a cache too small for its own order is named
        // by that order, not the smallest one).
        if sizes.cache <= format::RECORD_SECTOR {
            Geometry::new(format::MIN_ORDER, sizes.cache)?;
        }
        if let Some(p) = sizes.plog {
            rplog::check_plog_size(p)?;
        }
        let mut o = Opening {
            cfg,
            sizes,
            report: RecoveryReport::default(),
            phase: Phase::Layout,
            next_op: 1,
            outbox: VecDeque::new(),
            pending: BTreeMap::new(),
            results: Vec::new(),
            found: Found::default(),
            chunk_len: 0,
            engine: None,
            failed: None,
        };
        let mut stage: Stage = scan::layout_reads(sizes.cache)
            .into_iter()
            .map(|(s, len)| Planned::read(DeviceRole::Cache, s, len))
            .collect();
        if sizes.plog.is_some() {
            for s in [pf::PLOG_SB_SECTOR, pf::PLOG_BACKUP_SB_SECTOR] {
                stage.push(Planned::read(DeviceRole::Plog, s, SECTOR_SIZE));
            }
        }
        o.issue_stage(stage);
        Ok(o)
    }

    pub fn poll_io(&mut self) -> Option<IoOp> {
        if let Some(op) = self.outbox.pop_front() {
            return Some(op);
        }
        self.engine.as_mut()?.poll_io()
    }

    /// Opening is over: [`Opening::finish`] gives the engine or the error.
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done) || self.failed.is_some()
    }

    pub fn complete(&mut self, op: OpId, result: IoResult) {
        let Some((pos, role)) = self.pending.remove(&op) else {
            let e = self.engine.as_mut().expect("an operation of the engine");
            e.complete(op, result);
            self.after_engine_progress();
            return;
        };
        match result {
            Ok(IoDone::Read(data)) => self.results[pos] = Some(data),
            Ok(_) => {}
            Err(e) => return self.fail_io(role, e),
        }
        if self.pending.is_empty() && self.failed.is_none() {
            if let Err(e) = self.advance() {
                self.failed = Some(e);
            }
        }
    }

    /// The engine and what recovery did, or why it could not.
    pub fn finish(mut self) -> Result<(Engine, RecoveryReport)> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        assert!(matches!(self.phase, Phase::Done), "finish after is_done");
        let mut engine = self.engine.take().expect("a recovered engine");
        engine.next_op = self.next_op;
        // Rebuilding segments went through the write path; the counters are for clients.
        engine.stats = crate::status::Stats::default();
        self.report.dirty_blocks = engine.index.live_total();
        self.report.plog_epoch = engine.plog.as_ref().map_or(0, |p| p.sb.epoch);
        probe_report(&self.report);
        Ok((engine, self.report))
    }

    fn fail_io(&mut self, role: DeviceRole, e: IoError) {
        if self.failed.is_none() {
            self.failed = Some(Error::Io { role, source: e });
        }
    }

    fn issue_stage(&mut self, stage: Stage) {
        assert!(self.pending.is_empty(), "one stage at a time");
        self.results = vec![None; stage.len()];
        let empty = stage.is_empty();
        for (pos, p) in stage.into_iter().enumerate() {
            let id = OpId(self.next_op);
            self.next_op += 1;
            match &p.kind {
                IoKind::Read { len, .. } => self.report.bytes_read += *len as u64,
                IoKind::Write { data, .. } => self.report.bytes_written += data.len() as u64,
                IoKind::Flush => {}
            }
            self.pending.insert(id, (pos, p.role));
            self.outbox.push_back(IoOp {
                id,
                role: p.role,
                kind: p.kind,
            });
        }
        if empty {
            if let Err(e) = self.advance() {
                self.failed = Some(e);
            }
        }
    }

    fn read_result(&mut self, pos: usize) -> Vec<u8> {
        self.results[pos].take().expect("a read of this stage")
    }

    fn geo(&self) -> Geometry {
        self.found.recover.expect("the layout is decided").geometry
    }

    fn replay_quirks(&self) -> plan::ReplayQuirks {
        let _ = &self.cfg;
        plan::ReplayQuirks {
            torn_forgets_log: quirk!(self.cfg, H1TornSlotForgetsLog),
            no_contiguity: quirk!(self.cfg, H2NoContiguity),
            no_stale_invalidation: quirk!(self.cfg, H3NoStaleInvalidation),
            below_record: quirk!(self.cfg, H6ReplayBelowRecord),
            no_checksum: quirk!(self.cfg, LcNoChecksum),
        }
    }

    /// The current stage completed: decide, and issue the next one.
    fn advance(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Layout => self.after_layout(),
            Phase::Format(rest) => self.next_stage(rest, Phase::Format, Self::start_headers),
            Phase::Headers => self.after_headers(),
            Phase::Segments(rest) => self.after_segments(rest),
            Phase::PlogHeads => self.after_plog_heads(),
            Phase::PlogRegions(ids) => self.after_plog_regions(ids),
            Phase::ReplayReads => self.after_replay_reads(),
            Phase::Apply(rest) => self.next_stage(rest, Phase::Apply, Self::after_apply),
            Phase::Rebuild => unreachable!("the rebuild is the engine's"),
            Phase::Finish(rest) => self.next_stage(rest, Phase::Finish, |_| Ok(())),
            Phase::Done => Ok(()),
        }
    }

    /// Issues the next of `rest` in phase `wrap`, or moves on with `then` when none is left.
    fn next_stage(
        &mut self,
        mut rest: VecDeque<Stage>,
        wrap: fn(VecDeque<Stage>) -> Phase,
        then: fn(&mut Self) -> Result<()>,
    ) -> Result<()> {
        match rest.pop_front() {
            Some(stage) => {
                self.phase = wrap(rest);
                self.issue_stage(stage);
                Ok(())
            }
            None => then(self),
        }
    }

    fn after_layout(&mut self) -> Result<()> {
        let n = scan::layout_reads(self.sizes.cache).len();
        let bufs: Vec<Vec<u8>> = (0..n).map(|i| self.read_result(i)).collect();
        let views: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
        let layout = LayoutScan::decode(self.sizes.cache, &views);
        if self.sizes.plog.is_some() {
            let (a, b) = (self.read_result(n), self.read_result(n + 1));
            self.found.plog_copies = [pf::decode_superblock(&a), pf::decode_superblock(&b)];
        }
        let decision = plan::decide_layout(&layout, self.cfg.format, self.sizes.plog.is_some())
            .map_err(Error::from)?;
        self.found.layout = Some(layout);
        match decision {
            LayoutDecision::Format => self.start_format(),
            LayoutDecision::Recover(r) => {
                self.report.upstream_image = r.ext.is_none();
                self.found.recover = Some(r);
                if let Some(sectors) = self.sizes.plog {
                    self.found.plog_sb = Some(self.open_plog_superblock(&r, sectors)?);
                }
                self.start_headers()
            }
        }
    }

    /// The plog superblock a type-1 cache runs with (the seed quirks H4, H9, H10 change how).
    fn open_plog_superblock(&self, r: &RecoverLayout, sectors: u64) -> Result<PlogSuperblock> {
        // Either quirk (two statements: without the quirks feature both are `false`, and
        // `false || false` is a lint of its own).
        let mut ignore_generation = quirk!(self.cfg, H10MagicFirst);
        ignore_generation |= quirk!(self.cfg, H4PlogStaleEntries);
        let order = r.geometry.order;
        let mut sb = rplog::choose_superblock(
            &self.found.plog_copies,
            r.generation(),
            order,
            sectors,
            ignore_generation,
        )?;
        self.h9_regions_from_tunables(&mut sb, sectors);
        Ok(sb)
    }

    /// Seed hazard H9 (quirk `h9`): the seed sized the plog from nr_rambuf_pool on every
    /// start, the first (a format) included.
    #[allow(unused_variables)]
    fn h9_regions_from_tunables(&self, sb: &mut PlogSuperblock, sectors: u64) {
        if quirk!(self.cfg, H9PlogGeometryFromTunables) {
            let fit = (sectors - pf::PLOG_FIRST_REGION_SECTOR) / sb.geometry.region_sectors as u64;
            sb.geometry.nr_regions =
                (self.cfg.nr_rambuf_pool as u64 + 1).clamp(2, fit.max(2)) as u32;
        }
    }

    fn start_format(&mut self) -> Result<()> {
        let (order, generation) = (self.cfg.segment_size_order, self.cfg.generation);
        let plog_sb = match self.sizes.plog {
            Some(sectors) => {
                let mut sb =
                    rplog::format_superblock(&self.found.plog_copies, sectors, order, generation)?;
                self.h9_regions_from_tunables(&mut sb, sectors);
                Some(sb)
            }
            None => None,
        };
        let magic_first = quirk!(self.cfg, H10MagicFirst);
        let (ext, stages) =
            formatting::format_stages(self.sizes.cache, order, generation, plog_sb, magic_first)?;
        self.found.recover = Some(RecoverLayout {
            geometry: Geometry::new(order, self.sizes.cache)?,
            ext: Some(ext),
            record: RecordChoice {
                value: 0,
                source: RecordSource::Both,
            },
        });
        self.found.plog_sb = plog_sb;
        self.report.formatted = true;
        self.next_stage(stages.into(), Phase::Format, Self::start_headers)
    }

    fn start_headers(&mut self) -> Result<()> {
        self.report.record = self.found.recover.expect("decided").record.value;
        self.issue_header_chunk();
        Ok(())
    }

    fn issue_header_chunk(&mut self) {
        let geo = self.geo();
        let first = self.found.headers.len() as u64;
        let count = scan::SCAN_BATCH.min(geo.nr_segments - first);
        let stage = (first..first + count)
            .map(|s| Planned::read(DeviceRole::Cache, geo.slot_sector(s), SECTOR_SIZE))
            .collect();
        self.phase = Phase::Headers;
        self.issue_stage(stage);
    }

    fn after_headers(&mut self) -> Result<()> {
        for i in 0..self.results.len() {
            let b = self.read_result(i);
            self.found.headers.push(SlotHeader::decode(&b));
        }
        let geo = self.geo();
        if (self.found.headers.len() as u64) < geo.nr_segments {
            self.issue_header_chunk();
            return Ok(());
        }
        let record = self.report.record;
        let wanted = plan::wanted_for_walk(&geo, record, self.replay_quirks());
        let slots: VecDeque<u64> = (0..geo.nr_segments)
            .filter(|&s| wanted(s, self.found.headers[s as usize]))
            .collect();
        self.issue_segment_chunk(slots);
        Ok(())
    }

    /// Reads the next slots of `slots` in full, at most `SEGMENT_BATCH_BYTES` of them.
    fn issue_segment_chunk(&mut self, mut slots: VecDeque<u64>) {
        let geo = self.geo();
        let per = (scan::SEGMENT_BATCH_BYTES / geo.segment_bytes()).max(1);
        let chunk: Vec<u64> = slots.drain(..per.min(slots.len())).collect();
        let stage: Stage = chunk
            .iter()
            .map(|&s| {
                let len = scan::segment_read_len(&geo, self.found.headers[s as usize]);
                Planned::read(DeviceRole::Cache, geo.slot_sector(s), len)
            })
            .collect();
        // Remember the chunk's slots in front of the rest, to decode the results in order.
        for &s in chunk.iter().rev() {
            slots.push_front(s);
        }
        self.chunk_len = chunk.len();
        self.phase = Phase::Segments(slots);
        self.issue_stage(stage);
    }

    fn after_segments(&mut self, mut slots: VecDeque<u64>) -> Result<()> {
        let geo = self.geo();
        for i in 0..self.chunk_len {
            let slot = slots.pop_front().expect("the chunk's slot");
            let image = self.read_result(i);
            let seen = self.found.headers[slot as usize];
            self.found
                .segments
                .push(SegmentScan::decode(slot, &geo, &image, seen));
        }
        if !slots.is_empty() {
            self.issue_segment_chunk(slots);
            return Ok(());
        }
        self.plan_cache()
    }

    /// The cache-device plan; type 1 goes on into the plog.
    fn plan_cache(&mut self) -> Result<()> {
        let geo = self.geo();
        let record = self.report.record;
        let walk = plan::plan_walk(
            &geo,
            &self.found.headers,
            &self.found.segments,
            record,
            self.replay_quirks(),
        );
        let ix = plan::plan_index(&walk, &self.found.segments, Some(self.sizes.backing));
        if let Some((id, slot, sector)) = ix.out_of_range {
            return Err(Error::SegmentOutOfRange {
                id,
                slot,
                sector,
                backing_sectors: self.sizes.backing,
            });
        }
        self.report.written_back = walk.written_back;
        self.report.stop_reason = super::stop_reason(&walk);
        self.found.replay_writebacks = ix.replay_writebacks;
        self.found.walk = Some(walk);
        if self.sizes.plog.is_some() && !self.report.formatted {
            let sb = self.found.plog_sb.expect("type 1 has a plog superblock");
            let pg = sb.geometry;
            let stage = (0..pg.nr_regions)
                .map(|r| Planned::read(DeviceRole::Plog, pg.region_sector(r), SECTOR_SIZE))
                .collect();
            self.phase = Phase::PlogHeads;
            self.issue_stage(stage);
            return Ok(());
        }
        self.after_plan()
    }

    fn after_plog_heads(&mut self) -> Result<()> {
        let sb = self.found.plog_sb.expect("type 1");
        let pg = sb.geometry;
        for i in 0..pg.nr_regions as usize {
            let b = self.read_result(i);
            self.found.plog_heads.push(pf::decode_entry_header(&b));
        }
        let first = self.found.walk.as_ref().expect("planned").first_missing;
        let ids: Vec<u64> = (first..first + pg.nr_regions as u64)
            .filter(|&id| {
                self.found.plog_heads[pg.region_of(id) as usize].is_some_and(|h| h.segment_id == id)
            })
            .collect();
        let stage = ids
            .iter()
            .map(|&id| {
                let len = pg.region_sectors as usize * SECTOR_SIZE;
                Planned::read(DeviceRole::Plog, pg.region_sector(pg.region_of(id)), len)
            })
            .collect();
        self.phase = Phase::PlogRegions(ids);
        self.issue_stage(stage);
        Ok(())
    }

    fn after_plog_regions(&mut self, ids: Vec<u64>) -> Result<()> {
        let sb = self.found.plog_sb.expect("type 1");
        let ignore_epoch = quirk!(self.cfg, H4PlogStaleEntries);
        let ignore_generation = ignore_epoch || quirk!(self.cfg, H10MagicFirst);
        for (i, &id) in ids.iter().enumerate() {
            let buf = self.read_result(i);
            let owner = RunOwner {
                segment_id: id,
                generation: (!ignore_generation).then_some(sb.generation),
                epoch: (!ignore_epoch).then_some(sb.epoch),
            };
            let run = rplog::verified_run(&buf, owner, self.sizes.backing);
            self.found.runs.insert(id, (Arc::new(buf), run));
        }
        let geo = self.geo();
        let walk = self.found.walk.as_ref().expect("planned");
        let lc = quirk!(self.cfg, LcNoChecksum);
        let segments = &self.found.segments;
        let runs: BTreeMap<u64, Vec<(u64, EntryHeader)>> = self
            .found
            .runs
            .iter()
            .map(|(&id, (_, r))| (id, r.clone()))
            .collect();
        let (items, stop) = rplog::plan(
            walk.first_missing,
            sb.geometry.nr_regions as u64,
            &runs,
            |id| {
                super::intact_on_cache(segments, &geo, id, lc).map(|s| (s.slot, s.length as usize))
            },
            quirk!(self.cfg, H8PlogRewritesCache),
        );
        if stop.is_some() {
            self.report.stop_reason = stop;
        }
        self.found.plog_plan = items;
        self.after_plan()
    }

    fn kept_on_cache(&self, id: u64) -> bool {
        self.found
            .plog_plan
            .iter()
            .any(|p| matches!(p, PlanItem::Cache { id: c, .. } if *c == id))
    }

    /// The plan is complete: refuse (nothing written), or read what replay writes back.
    fn after_plan(&mut self) -> Result<()> {
        let walk = self.found.walk.as_ref().expect("planned");
        if let Some(e) = plan::discard_refusal(walk, |id| self.kept_on_cache(id)) {
            return Err(e);
        }
        if self.found.replay_writebacks.is_empty() {
            return self.start_apply(Vec::new());
        }
        let geo = self.geo();
        let stage = self
            .found
            .replay_writebacks
            .iter()
            .map(|w| {
                Planned::read(
                    DeviceRole::Cache,
                    geo.block_sector(w.slot, w.pos),
                    format::BLOCK_SIZE,
                )
            })
            .collect();
        self.phase = Phase::ReplayReads;
        self.issue_stage(stage);
        Ok(())
    }

    /// Older copies' sectors that newer copies dropped, each checked against its CRC right
    /// after it was read, become backing writes.
    fn after_replay_reads(&mut self) -> Result<()> {
        let geo = self.geo();
        let list = std::mem::take(&mut self.found.replay_writebacks);
        let mut writes = Vec::new();
        for (i, w) in list.iter().enumerate() {
            let data = self.read_result(i);
            if w.crc.is_some_and(|crc| crc != format::block_crc(&data)) {
                return Err(Error::Corrupt {
                    role: DeviceRole::Cache,
                    sector: geo.block_sector(w.slot, w.pos),
                    what: format!("data block of backing block {} fails its CRC", w.block),
                });
            }
            let buf = Arc::new(data);
            for (sector, range) in crate::cache::dirty_runs(w.block, w.bits) {
                let d = IoData::new(buf.clone(), range);
                writes.push(Planned::write(DeviceRole::Backing, sector, d, false));
            }
        }
        self.report.replay_writebacks = list.len() as u64;
        self.start_apply(vec![writes])
    }

    /// The writes of recovery, in stages: replay writebacks, a raised record (before anything
    /// past the end is invalidated: those segments may be what proves it), voided plog regions
    /// (before the slots, so a recovery cut short plans the same), invalidated slots, a flush.
    fn start_apply(&mut self, mut stages: Vec<Stage>) -> Result<()> {
        let walk = self.found.walk.clone().expect("planned");
        let recover = self.found.recover.expect("decided");
        let generation = recover.generation();
        // Also when only the backup copy holds the record (a record update cut short): the
        // primary is the copy dm-writeboost reads, and slots the record frees get reused from
        // now on; its replay marks a torn reused slot's predecessors clean only if the primary
        // covers them.
        let primary_lags = recover.record.source == plan::RecordSource::Backup;
        if primary_lags {
            crate::probe!(RecoveryRecordFromBackup);
        }
        if walk.written_back > walk.record {
            crate::probe!(RecoveryRecordRaised);
        }
        if walk.written_back > walk.record || primary_lags {
            stages.extend(formatting::record_stages(&format::RecordExt {
                last_writeback_id: walk.written_back,
                flags: 0,
                generation,
            }));
        }
        let end = self
            .found
            .plog_plan
            .last()
            .map_or(walk.last_applied(), |p| p.id());
        if self.sizes.plog.is_some() && !self.report.formatted {
            let sb = self.found.plog_sb.expect("type 1");
            let voids = rplog::regions_to_void(&self.found.plog_heads, &sb, end);
            if !voids.is_empty() {
                let zero = formatting::zero_sector();
                stages.push(
                    voids
                        .iter()
                        .map(|&r| {
                            Planned::write(
                                DeviceRole::Plog,
                                sb.geometry.region_sector(r),
                                zero.clone(),
                                false,
                            )
                        })
                        .collect(),
                );
                stages.push(vec![Planned::flush(DeviceRole::Plog)]);
                self.report.plog_regions_voided = voids.len() as u64;
            }
        }
        let geo = self.geo();
        let stale = plan::invalidations(&walk, |id| self.kept_on_cache(id));
        if !stale.is_empty() && !quirk!(self.cfg, H3NoStaleInvalidation) {
            let zeros = IoData::from_vec(vec![0u8; format::BLOCK_SIZE]);
            stages.push(
                stale
                    .iter()
                    .map(|&s| {
                        Planned::write(DeviceRole::Cache, geo.slot_sector(s), zeros.clone(), false)
                    })
                    .collect(),
            );
            self.report.stale_invalidated = stale.len() as u64;
        }
        // Even with nothing to invalidate: what replay read may not be durable yet.
        stages.push(vec![Planned::flush(DeviceRole::Cache)]);
        self.report.last_applied = end.max(walk.written_back);
        self.report.segments_applied = self.report.last_applied - walk.written_back;
        self.next_stage(stages.into(), Phase::Apply, Self::after_apply)
    }

    /// Everything written: the engine is built from the plan; type 1 rebuilds through it.
    fn after_apply(&mut self) -> Result<()> {
        let r = self.found.recover.expect("decided");
        let walk = self.found.walk.clone().expect("planned");
        let order = r.geometry.order;
        let mut engine = Engine::new(Parts {
            geo: r.geometry,
            backing_sectors: self.sizes.backing,
            generation: r.generation(),
            tunables: self
                .cfg
                .tunables
                .unwrap_or_else(|| Tunables::defaults(order)),
            pool: self.cfg.nr_rambuf_pool,
            plog: self.found.plog_sb.map(Plog::new),
            write_back_ahead: self.cfg.write_back_ahead,
            #[cfg(feature = "quirks")]
            quirks: self.cfg.quirks,
        });
        engine.next_op = self.next_op;
        for &(id, slot) in &walk.applied {
            let seg = self
                .found
                .segments
                .iter()
                .find(|s| s.slot == slot)
                .expect("an applied segment was scanned");
            engine.apply_segment(id, slot, &seg.metablocks);
        }
        engine
            .segs
            .set_recovered(walk.last_applied().max(walk.written_back));
        engine.last_writeback = walk.written_back;
        engine.durable_record = walk.written_back;
        let plan = std::mem::take(&mut self.found.plog_plan);
        for item in &plan {
            match *item {
                PlanItem::Cache { id, slot, len } => engine
                    .writes
                    .push_internal(crate::cache::QKind::LoadSegment { seg: id, slot, len }),
                PlanItem::Plog { id, count } => {
                    let (region, run) = &self.found.runs[&id];
                    engine.writes.push_internal(crate::cache::QKind::Rebuild {
                        seg: id,
                        region: region.clone(),
                        entries: run[..count].to_vec(),
                    });
                    self.report.plog_segments_rebuilt += 1;
                    self.report.plog_entries_replayed += count as u64;
                }
            }
        }
        self.engine = Some(engine);
        if plan.is_empty() {
            return self.start_finish();
        }
        self.phase = Phase::Rebuild;
        self.engine.as_mut().expect("built").pump();
        self.after_engine_progress();
        Ok(())
    }

    /// During the rebuild: once the engine placed everything, everything is made durable;
    /// once it is, recovery finishes.
    fn after_engine_progress(&mut self) {
        if !matches!(self.phase, Phase::Rebuild) || self.failed.is_some() {
            return;
        }
        let e = self.engine.as_mut().expect("rebuilding");
        if let Some(err) = e.dead_error.clone() {
            self.failed = Some(err);
            return;
        }
        if !e.writes.is_empty() {
            return;
        }
        if !e.wait_all_durable() || !e.is_idle() {
            return;
        }
        self.report.bytes_written += e.segs.last_durable.saturating_sub(self.report.last_applied)
            * e.geo.segment_bytes() as u64;
        self.next_op = e.next_op;
        if let Err(err) = self.start_finish() {
            self.failed = Some(err);
        }
    }

    /// A backing flush (what replay read or wrote may sit in a volatile cache); type 1: the
    /// plog moves to a new epoch, which voids every older entry — only now that everything
    /// recovered is durable on the cache device.
    fn start_finish(&mut self) -> Result<()> {
        let mut stages: Vec<Stage> = vec![vec![Planned::flush(DeviceRole::Backing)]];
        if self.sizes.plog.is_some() && !self.report.formatted {
            let e = self.engine.as_mut().expect("built");
            let p = e.plog.as_mut().expect("type 1");
            p.sb.epoch = p.sb.epoch.checked_add(1).ok_or_else(|| {
                rplog::plog_corrupt(pf::PLOG_SB_SECTOR, "plog epoch is exhausted".into())
            })?;
            assert!(p.stage.is_empty(), "recovery appends nothing to the plog");
            let sb = p.sb;
            *p = Plog::new(sb);
            stages.extend(formatting::plog_superblock_stages(&sb));
        }
        self.next_stage(stages.into(), Phase::Finish, |_| Ok(()))
    }
}

/// The coverage probes of a finished recovery, from what it reports.
fn probe_report(r: &RecoveryReport) {
    let fired = [
        (r.formatted, crate::probes::Probe::RecoveryFormat),
        (
            r.upstream_image,
            crate::probes::Probe::RecoveryUpstreamImage,
        ),
        (
            r.stop_reason.is_some(),
            crate::probes::Probe::RecoveryWalkStopped,
        ),
        (
            r.stale_invalidated > 0,
            crate::probes::Probe::RecoveryStaleInvalidated,
        ),
        (
            r.replay_writebacks > 0,
            crate::probes::Probe::RecoveryReplayWriteback,
        ),
        (
            r.segments_applied > 0,
            crate::probes::Probe::RecoverySegmentsApplied,
        ),
        (
            r.plog_segments_rebuilt > 0,
            crate::probes::Probe::RecoveryPlogRebuild,
        ),
        (
            r.plog_regions_voided > 0,
            crate::probes::Probe::RecoveryPlogVoided,
        ),
    ];
    for (on, _p) in fired {
        if on {
            #[cfg(feature = "probes")]
            crate::probes::hit(_p);
        }
    }
}
