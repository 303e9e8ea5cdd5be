//! Background work as explicit steps, and the policy that says which step is due.
//!
//! Nothing here runs by itself: a driver (the crash simulator, the runner's engine thread, a
//! test) calls [`Engine::tick`] with the time, asks [`Engine::next_step`] what is due and runs
//! it with [`Engine::run_step`]. `run_step` does the work it is asked for regardless of the
//! tunables; `next_step` is where `allow_writeback`, the modulator and the intervals apply.

use crate::cache::{quirk, Engine};
use crate::device::{BlockDevice, DeviceRole, WriteReq};
use crate::error::{Error, Result};
use crate::format::{self, BLOCK_SIZE, SECTORS_PER_BLOCK, SECTOR_SIZE};

/// One unit of background work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Seal the open segment (no I/O): its blocks become a segment waiting to be written.
    Seal,
    /// Write the oldest sealed segment to the cache device (the flusher daemon).
    FlushSegment,
    /// Write back up to `nr_max_batched_writeback` segments, sorted by backing address, then
    /// flush the backing device (the writeback daemon).
    Writeback,
    /// Make the superblock record say how far writeback got (the superblock recorder).
    Record,
    /// Seal and make everything durable on the cache device (the sync daemon).
    Sync,
}

/// What a step did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepOutcome {
    pub segments: u64,
    pub blocks: u64,
}

/// The writes that put the dirty sectors of one cached block on the backing device: one per run
/// of consecutive dirty sectors (a fully dirty block is one 4 KiB write).
pub(crate) fn dirty_runs(block: u64, dirty: u8, data: &[u8]) -> Vec<WriteReq<'_>> {
    let mut out = Vec::new();
    let mut s = 0usize;
    while s < SECTORS_PER_BLOCK as usize {
        if dirty & (1 << s) == 0 {
            s += 1;
            continue;
        }
        let start = s;
        while s < SECTORS_PER_BLOCK as usize && dirty & (1 << s) != 0 {
            s += 1;
        }
        out.push(WriteReq {
            sector: block * SECTORS_PER_BLOCK + start as u64,
            data: &data[start * SECTOR_SIZE..s * SECTOR_SIZE],
            fua: false,
        });
    }
    out
}

impl<D: BlockDevice> Engine<D> {
    /// Advances the engine's clock (milliseconds, any origin, never backwards).
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// The modulator's input: how busy the backing device is, in percent.
    pub fn set_backing_load(&mut self, percent: u8) {
        self.backing_load = percent.min(100);
    }

    /// Whether background writeback may run now: `allow_writeback`, or the modulator's verdict
    /// when it is enabled, or a `drop_caches` in progress.
    pub fn writeback_allowed(&self) -> bool {
        if self.draining {
            return true;
        }
        if self.tunables.enable_writeback_modulator {
            self.backing_load < self.tunables.writeback_threshold
        } else {
            self.tunables.allow_writeback
        }
    }

    fn interval_due(&self, interval_s: u32, since_ms: u64) -> bool {
        interval_s > 0 && self.now_ms.saturating_sub(since_ms) >= interval_s as u64 * 1000
    }

    /// The next step the schedule calls for, if any. Bounded: each step moves some id forward,
    /// so a driver that loops `while let Some(s) = next_step()` terminates.
    pub fn next_step(&self) -> Option<Step> {
        if self.dead.is_some() {
            return None;
        }
        if !self.sealed.is_empty() {
            return Some(Step::FlushSegment);
        }
        let open_has_data = self.open_seg.as_ref().is_some_and(|s| s.len > 0);
        if self.interval_due(self.tunables.sync_interval, self.last_sync_ms)
            && (open_has_data || self.last_durable < self.last_sealed)
        {
            return Some(Step::Sync);
        }
        if self.draining && open_has_data {
            return Some(Step::Seal);
        }
        if self.writeback_allowed() && self.last_writeback < self.last_sealed {
            return Some(Step::Writeback);
        }
        if self.durable_record < self.last_writeback
            && (self.draining
                || self.interval_due(self.tunables.update_record_interval, self.last_record_ms))
        {
            return Some(Step::Record);
        }
        None
    }

    /// Runs one step now.
    pub fn run_step(&mut self, step: Step) -> Result<StepOutcome> {
        self.guarded(|e| {
            let out = match step {
                Step::Seal => {
                    e.seal_open();
                    StepOutcome::default()
                }
                Step::FlushSegment => {
                    let had = !e.sealed.is_empty();
                    e.write_oldest_sealed()?;
                    StepOutcome {
                        segments: had as u64,
                        blocks: 0,
                    }
                }
                Step::Writeback => e.writeback_batch()?,
                Step::Record => {
                    e.last_record_ms = e.now_ms;
                    e.write_record()?;
                    StepOutcome::default()
                }
                Step::Sync => {
                    e.last_sync_ms = e.now_ms;
                    e.make_all_durable()?;
                    StepOutcome::default()
                }
            };
            e.finish_drain_if_done();
            Ok(out)
        })
    }

    /// Runs every due step until none is due (bounded by the work there is).
    pub fn run_due_steps(&mut self) -> Result<u64> {
        let bound = 4 * (self.geo.nr_segments + self.pool_size as u64) + 8;
        for n in 0..bound {
            match self.next_step() {
                Some(s) => {
                    self.run_step(s)?;
                }
                None => return Ok(n),
            }
        }
        Ok(bound)
    }

    /// Starts draining every dirty block to the backing device (the `drop_caches` message).
    /// The driver runs steps until [`Engine::draining`] is false; stopping early is harmless.
    pub fn drop_caches(&mut self) {
        self.draining = true;
        self.finish_drain_if_done();
    }

    pub fn draining(&self) -> bool {
        self.draining
    }

    fn finish_drain_if_done(&mut self) {
        if self.draining
            && self.open_seg.as_ref().is_none_or(|s| s.len == 0)
            && self.last_writeback == self.last_sealed
            && self.durable_record == self.last_writeback
        {
            self.draining = false;
        }
    }

    /// Writes back the next batch of segments. Every live block of them is read from the cache
    /// device (verified), written to the backing device sorted by address, the backing device is
    /// flushed, and only then are the blocks dropped and `last_writeback` advanced.
    pub(crate) fn writeback_batch(&mut self) -> Result<StepOutcome> {
        let batch = self.tunables.nr_max_batched_writeback as u64;
        let target = (self.last_writeback + batch).min(self.last_sealed);
        if target <= self.last_writeback {
            return Ok(StepOutcome::default());
        }
        // Written-back data must come from durable segments: the record that will later cover
        // them must never be ahead of the durable log.
        self.make_durable_upto(target)?;
        // A block overwritten since it went into one of these segments has no live copy here:
        // its newest copy is in a later segment, perhaps still in RAM or not yet durable, and
        // this batch does not write it back. Once the record passes these segments replay can
        // only find that newer copy, so `write_record` must make the log durable first.
        if (self.last_writeback + 1..=target).any(|id| {
            let slot = self.geo.slot_of(id);
            (self.index.live_in_slot(slot) as usize) < self.slots[slot as usize].len
        }) {
            self.record_needs_durable_log = true;
        }

        // (block, idx, dirty, data) of every live block in the batch.
        let mut items: Vec<(u64, u32, u8, usize)> = Vec::new();
        let mut superseded: Vec<(u64, u32, u8, usize)> = Vec::new();
        let mut data: Vec<u8> = Vec::new();
        let mut segbuf = vec![0u8; self.geo.segment_bytes()];
        for id in self.last_writeback + 1..=target {
            let slot = self.geo.slot_of(id);
            let info = self.slots[slot as usize];
            assert_eq!(
                info.id, id,
                "slot {slot} holds segment {} not {id}",
                info.id
            );
            if self.index.live_in_slot(slot) == 0 && !quirk!(self, H13NoDirtinessRecheck) {
                continue;
            }
            let bytes = format::segment_len_bytes(info.len);
            let sector = self.geo.slot_sector(slot);
            Self::cache_io(self.cache.read(sector, &mut segbuf[..bytes]))?;
            // Assert the data right after it is read: never write garbage to the backing device.
            let h = format::decode_segment_header(&segbuf);
            if h.id != id || !format::segment_checksum_ok(&segbuf[..bytes]) {
                return Err(Error::Corrupt {
                    role: DeviceRole::Cache,
                    sector,
                    what: format!("segment {id} read back for writeback fails its checksum"),
                });
            }
            for (idx, mb) in self.index.live_of_slot(slot) {
                let pos = self.index.pos_of(idx);
                items.push((mb.block, idx, mb.dirty, data.len()));
                data.extend_from_slice(&segbuf[(1 + pos) * BLOCK_SIZE..(2 + pos) * BLOCK_SIZE]);
            }
            if quirk!(self, H13NoDirtinessRecheck) {
                // The seed wrote back what the segment's metablocks said, superseded or not.
                for pos in 0..info.len {
                    let idx = self.index.idx(slot, pos);
                    let m = format::decode_metablock(&segbuf, pos);
                    if self.index.get(idx).dirty == 0 && m.dirty_bits != 0 {
                        let block = m.sector / SECTORS_PER_BLOCK;
                        superseded.push((block, idx, m.dirty_bits, data.len()));
                        data.extend_from_slice(
                            &segbuf[(1 + pos) * BLOCK_SIZE..(2 + pos) * BLOCK_SIZE],
                        );
                    }
                }
            }
        }
        items.sort_unstable_by_key(|&(block, ..)| block);

        if !items.is_empty() || !superseded.is_empty() {
            let reqs: Vec<WriteReq<'_>> = items
                .iter()
                .flat_map(|&(block, _, dirty, at)| {
                    dirty_runs(block, dirty, &data[at..at + BLOCK_SIZE])
                })
                .collect();
            Self::backing_io(self.backing.write_batch(&reqs))?;
            // (Quirk H13 only: old data landing after the newer copy of the same block.)
            let stale: Vec<WriteReq<'_>> = superseded
                .iter()
                .flat_map(|&(block, _, dirty, at)| {
                    dirty_runs(block, dirty, &data[at..at + BLOCK_SIZE])
                })
                .collect();
            Self::backing_io(self.backing.write_batch(&stale))?;
            if !quirk!(self, DmCacheCommitBeforeFlush) {
                Self::backing_io(self.backing.flush())?;
            }
            for &(_, idx, ..) in &items {
                self.index.remove(idx);
            }
        }
        let out = StepOutcome {
            segments: target - self.last_writeback,
            blocks: items.len() as u64,
        };
        self.last_writeback = target;
        Ok(out)
    }

    /// Makes the superblock record durable at `last_writeback`. Safe because `last_writeback`
    /// only moves after the backing device was flushed.
    pub(crate) fn write_record(&mut self) -> Result<()> {
        if self.durable_record == self.last_writeback {
            return Ok(());
        }
        assert!(self.durable_record < self.last_writeback);
        // Never let the durable record run ahead of the durable log (H5): newer copies of blocks
        // that the written-back segments held but did not write back must be durable first.
        if self.record_needs_durable_log && !quirk!(self, H5RecordAheadOfLog) {
            self.make_all_durable()?;
        }
        let rec = format::RecordExt {
            last_writeback_id: self.last_writeback,
            flags: 0,
            generation: self.generation,
        };
        crate::recovery::write_records(&mut self.cache, &rec)?;
        self.durable_record = self.last_writeback;
        self.record_needs_durable_log = false;
        Ok(())
    }

    /// Clean shutdown: seal, make everything durable, record how far writeback got. Returns the
    /// devices.
    pub fn shutdown(mut self) -> Result<(D, D)> {
        self.guarded(|e| e.shutdown_io())?;
        Ok(self.into_devices())
    }

    /// Clean shutdown as [`Engine::shutdown`], returning every device (cache, backing, plog).
    /// The plog needs no flush: everything it held is durable on the cache device now.
    pub fn shutdown_all(mut self) -> Result<(D, D, Option<D>)> {
        self.guarded(|e| e.shutdown_io())?;
        Ok(self.into_all_devices())
    }
}

impl<D: BlockDevice> Engine<D> {
    /// The I/O of a clean shutdown. Type 1: the plog stage is written out (not flushed), so the
    /// plog handed back holds every entry appended (`plog_entries`), as `inspect` and `dump`
    /// expect of a plog; recovery does not need it, every segment is durable on the cache
    /// device once `make_all_durable` returns.
    fn shutdown_io(&mut self) -> Result<()> {
        if let Some(p) = self.plog.as_mut() {
            p.write_stage()?;
        }
        self.make_all_durable()?;
        self.write_record()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, MemDevice};

    fn engine() -> Engine<MemDevice> {
        // Order 5: three blocks per segment, so one write leaves the segment open.
        let cfg = Config {
            segment_size_order: 5,
            nr_rambuf_pool: 2,
            ..Config::default()
        };
        Engine::open(MemDevice::new(2048 + 4 * 32), MemDevice::new(64), cfg)
            .unwrap()
            .0
    }

    fn write_and_seal(e: &mut Engine<MemDevice>) {
        e.write(0, &[7u8; 4096], false).unwrap();
        e.run_step(Step::Seal).unwrap();
        e.run_step(Step::FlushSegment).unwrap();
    }

    #[test]
    fn schedule_honours_allow_writeback() {
        let mut e = engine();
        write_and_seal(&mut e);
        assert_eq!(e.next_step(), None, "allow_writeback is off by default");
        e.set_tunable("allow_writeback", 1).unwrap();
        assert_eq!(e.next_step(), Some(Step::Writeback));
        e.run_due_steps().unwrap();
        assert_eq!(e.status().nr_dirty_cache_blocks, 0);
        assert_eq!(e.next_step(), None, "record interval 0: no record step");
    }

    #[test]
    fn modulator_follows_backing_load_against_the_threshold() {
        let mut e = engine();
        write_and_seal(&mut e);
        e.set_tunable("enable_writeback_modulator", 1).unwrap();
        e.set_tunable("writeback_threshold", 50).unwrap();
        e.set_backing_load(80);
        assert_eq!(e.next_step(), None, "busy backing device: no writeback");
        e.set_backing_load(49);
        assert_eq!(e.next_step(), Some(Step::Writeback));
        // The modulator decides even when allow_writeback says yes.
        e.set_tunable("allow_writeback", 1).unwrap();
        e.set_backing_load(50);
        assert_eq!(e.next_step(), None);
    }

    #[test]
    fn record_and_sync_intervals_come_due_with_time() {
        let mut e = engine();
        e.set_tunable("update_record_interval", 2).unwrap();
        e.set_tunable("sync_interval", 1).unwrap();
        e.write(0, &[1u8; 4096], false).unwrap();
        assert_eq!(e.next_step(), None, "no time has passed");
        e.tick(999);
        assert_eq!(e.next_step(), None);
        e.tick(1000);
        assert_eq!(e.next_step(), Some(Step::Sync));
        e.run_step(Step::Sync).unwrap();
        assert_eq!(e.status().last_durable_id, 1);
        e.run_step(Step::Writeback).unwrap();
        assert_eq!(e.next_step(), None, "record due only at 2 s");
        e.tick(2000);
        assert_eq!(e.next_step(), Some(Step::Record));
        e.run_step(Step::Record).unwrap();
        assert_eq!(e.status().durable_record_id, 1);
        e.tick(1500);
        assert_eq!(e.now_ms, 2000, "time never goes backwards");
    }

    #[test]
    fn drop_caches_drains_everything_and_ends() {
        let mut e = engine();
        for b in 0..6u64 {
            e.write(b * 8, &[b as u8 + 1; 4096], false).unwrap();
        }
        e.drop_caches();
        assert!(e.draining());
        let steps = e.run_due_steps().unwrap();
        assert!(steps > 0);
        let st = e.status();
        assert!(!st.draining);
        assert_eq!(st.nr_dirty_cache_blocks, 0);
        assert_eq!(st.durable_record_id, st.last_writeback_id);
        for b in 0..6u64 {
            assert!(e.backing_device().bytes()[b as usize * 4096..][..4096]
                .iter()
                .all(|&x| x == b as u8 + 1));
        }
    }
}
