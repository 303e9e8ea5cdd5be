//! Background work as explicit steps, the policy that says which is due, durability waiters,
//! `drop_caches`, and shutdown.
//!
//! Nothing starts by itself: a driver gives the engine time ([`Engine::tick`]), asks
//! [`Engine::next_step`] what is due and starts it with [`Engine::start_step`]; a started step
//! runs as a job while clients go on (`start_step` only issues operations). `start_step` does
//! what it is asked regardless of the tunables; `next_step` is where `allow_writeback`, the
//! modulator and the intervals apply. Work the engine must do to make progress (a segment write
//! when no RAM buffer is free, forced writeback when the ring is full, the flush a FLUSH needs)
//! it starts itself.

use crate::device::DeviceRole;
use crate::io::{IoKind, OpId};

use super::writeback::StepOutcome;
use super::{Engine, Purpose, ReqId};

/// One unit of background work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Seal the open segment: its blocks become a segment waiting to be written.
    Seal,
    /// Write the oldest sealed segment to the cache device (the flusher).
    FlushSegment,
    /// Write back up to `nr_max_batched_writeback` segments, sorted by backing address, then
    /// flush the backing device (the writeback daemon).
    Writeback,
    /// Make the superblock record say how far writeback got (the superblock recorder).
    Record,
    /// Seal and make everything durable on the cache device (the sync daemon).
    Sync,
}

/// Who waits for durability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitFor {
    Client(ReqId),
    Sync,
    Shutdown,
}

pub(crate) enum Waiter {
    /// Every segment up to `target` durable on the cache device (type 0 FLUSH and FUA, sync,
    /// shutdown). `flushes_seen`: cache flushes completed when it started waiting.
    Cache {
        target: u64,
        who: WaitFor,
        flushes_seen: u64,
        /// Backing writes up to this sequence number durable too (bypassed writes; 0: none).
        backing: u64,
    },
    /// Type 1: every plog write up to `seq` durable.
    Plog {
        seq: u64,
        who: WaitFor,
        backing: u64,
    },
}

#[derive(Default)]
pub(crate) struct Schedule {
    pub now_ms: u64,
    pub last_record_ms: u64,
    pub last_sync_ms: u64,
    pub backing_load: u8,
    pub draining: bool,
    pub shutting_down: bool,
    pub waiters: Vec<Waiter>,
    /// What the last finished writeback did, and how many finished.
    pub last_outcome: StepOutcome,
    pub writebacks_finished: u64,
    cache_flushes: u64,
    /// `Request::Drain`s waiting for the cache to be clean.
    pub drains: Vec<ReqId>,
}

impl Schedule {
    /// The smallest segment id a waiter needs durable.
    pub fn cache_need(&self) -> Option<u64> {
        self.waiters
            .iter()
            .filter_map(|w| match *w {
                Waiter::Cache { target, .. } => Some(target),
                Waiter::Plog { .. } => None,
            })
            .min()
    }

    pub fn plog_need(&self) -> Option<u64> {
        self.waiters
            .iter()
            .filter_map(|w| match *w {
                Waiter::Plog { seq, .. } => Some(seq),
                Waiter::Cache { .. } => None,
            })
            .min()
    }

    /// The smallest backing sequence number a waiter needs durable.
    pub fn backing_need(&self) -> Option<u64> {
        self.waiters
            .iter()
            .map(|w| match *w {
                Waiter::Cache { backing, .. } | Waiter::Plog { backing, .. } => backing,
            })
            .filter(|&b| b > 0)
            .min()
    }

    pub fn cache_flush_completed(&mut self) {
        self.cache_flushes += 1;
    }

    /// The clients still waiting (the cache died).
    pub fn drain_waiter_ids(&mut self) -> Vec<ReqId> {
        self.waiters
            .drain(..)
            .filter_map(|w| match w {
                Waiter::Cache {
                    who: WaitFor::Client(id),
                    ..
                }
                | Waiter::Plog {
                    who: WaitFor::Client(id),
                    ..
                } => Some(id),
                _ => None,
            })
            .collect()
    }

    fn waiting(&self, who: WaitFor) -> bool {
        self.waiters.iter().any(|w| match *w {
            Waiter::Cache { who: w, .. } | Waiter::Plog { who: w, .. } => w == who,
        })
    }
}

impl Engine {
    /// Advances the engine's clock (milliseconds, any origin, never backwards).
    pub fn tick(&mut self, now_ms: u64) {
        self.sched.now_ms = self.sched.now_ms.max(now_ms);
    }

    /// The modulator's input: how busy the backing device is, in percent.
    pub fn set_backing_load(&mut self, percent: u8) {
        self.sched.backing_load = percent.min(100);
    }

    /// Whether background writeback may run now: `allow_writeback`, or the modulator's verdict
    /// when it is enabled, or a `drop_caches` in progress.
    pub fn writeback_allowed(&self) -> bool {
        if self.sched.draining {
            return true;
        }
        if self.tunables.enable_writeback_modulator {
            self.sched.backing_load < self.tunables.writeback_threshold
        } else {
            self.tunables.allow_writeback
        }
    }

    fn interval_due(&self, interval_s: u32, since_ms: u64) -> bool {
        interval_s > 0 && self.sched.now_ms.saturating_sub(since_ms) >= interval_s as u64 * 1000
    }

    /// The next step the schedule calls for, if any. A step whose job is running is not due
    /// again, so a driver that loops `while let Some(s) = next_step() { start_step(s) }`
    /// terminates.
    pub fn next_step(&self) -> Option<Step> {
        if self.dead.is_some() {
            return None;
        }
        if self.segs.oldest_unissued().is_some() {
            return Some(Step::FlushSegment);
        }
        let open_has_data = self.segs.open_len() > 0;
        if self.interval_due(self.tunables.sync_interval, self.sched.last_sync_ms)
            && (open_has_data || self.segs.last_durable < self.segs.last_sealed)
            && !self.sched.waiting(super::schedule::WaitFor::Sync)
        {
            crate::probe!(TimerSync);
            return Some(Step::Sync);
        }
        if self.sched.draining && open_has_data {
            return Some(Step::Seal);
        }
        if self.writeback_allowed()
            && self.last_writeback < self.segs.last_sealed
            && self.writeback.is_none()
        {
            return Some(Step::Writeback);
        }
        if !self.record_settled() && self.record.is_none() {
            if self.sched.draining {
                return Some(Step::Record);
            }
            let interval = self.tunables.update_record_interval;
            if self.interval_due(interval, self.sched.last_record_ms) {
                crate::probe!(TimerRecord);
                return Some(Step::Record);
            }
        }
        None
    }

    /// Starts one step now (whatever the tunables say); its work runs as completions arrive.
    pub fn start_step(&mut self, step: Step) {
        if self.dead.is_some() {
            return;
        }
        self.begin_step(step);
        self.pump();
    }

    /// Starts one step's work without pumping (the pump itself calls this while draining).
    fn begin_step(&mut self, step: Step) {
        match step {
            Step::Seal => self.seal_open(),
            Step::FlushSegment => {
                if let Some(id) = self.segs.oldest_unissued() {
                    self.issue_segment_write(id);
                }
            }
            Step::Writeback => {
                self.start_writeback();
            }
            Step::Record => {
                self.start_record();
            }
            Step::Sync => {
                self.sched.last_sync_ms = self.sched.now_ms;
                self.seal_open();
                let target = self.segs.last_sealed;
                if target > self.segs.last_durable {
                    self.wait_cache(target, WaitFor::Sync);
                }
            }
        }
    }

    /// A `Request::Drain` reached the head of the write queue: everything acknowledged
    /// before it is placed, so draining until clean covers it.
    pub(crate) fn start_drain(&mut self, id: ReqId) {
        self.sched.draining = true;
        self.sched.drains.push(id);
        self.finish_drain_if_done();
    }

    /// While a `Request::Drain` waits, the engine starts the steps draining needs itself
    /// (each call starts what is due now; the pump calls it again as completions arrive).
    pub(crate) fn drive_drain(&mut self) {
        if self.sched.drains.is_empty() || self.dead.is_some() {
            return;
        }
        // Bounded as `start_due_steps`: every started step makes `next_step` move on.
        for _ in 0..4 * (self.geo.nr_segments as usize + self.segs.pool) + 8 {
            match self.next_step() {
                Some(s) => self.begin_step(s),
                None => return,
            }
        }
    }

    /// Starts every step that is due.
    pub fn start_due_steps(&mut self) -> usize {
        // Bounded: every started step makes `next_step` move on (a job runs, a segment is
        // issued, the open segment is sealed).
        let bound = 4 * (self.geo.nr_segments as usize + self.segs.pool) + 8;
        for n in 0..bound {
            match self.next_step() {
                Some(s) => self.start_step(s),
                None => return n,
            }
        }
        bound
    }

    /// What the last finished writeback did.
    pub fn last_writeback_outcome(&self) -> StepOutcome {
        self.sched.last_outcome
    }

    /// Writeback batches finished since open.
    pub fn writebacks_finished(&self) -> u64 {
        self.sched.writebacks_finished
    }

    /// Starts draining every dirty block to the backing device (the `drop_caches` message).
    /// The driver runs steps until [`Engine::draining`] is false; stopping early is harmless.
    pub fn drop_caches(&mut self) {
        self.sched.draining = true;
        self.finish_drain_if_done();
    }

    pub fn draining(&self) -> bool {
        self.sched.draining
    }

    pub(crate) fn finish_drain_if_done(&mut self) {
        if self.sched.draining
            && self.segs.open_len() == 0
            && self.last_writeback == self.segs.last_sealed
            && self.record_settled()
            && self.bypass_settled()
        {
            self.sched.draining = false;
            for id in std::mem::take(&mut self.sched.drains) {
                self.reply(id, Ok(None));
            }
        }
    }

    /// A FLUSH or a FUA write: answered once what it covers is durable — the plog in type 1
    /// (the stage written, then a plog flush issued after that write completed), every segment
    /// sealed so far in type 0 (rules R2, R3).
    /// Bypassed writes acknowledged before are covered too: a backing flush issued after they
    /// completed.
    pub(crate) fn wait_acknowledged_durable(&mut self, id: ReqId) {
        let backing = if self.bypass_settled() {
            0
        } else {
            self.bypass.last_seq
        };
        if self.plog.is_some() {
            self.plog_write_stage();
            let seq = self.clocks.plog.issued();
            if (seq == 0 || self.clocks.plog.durable(seq)) && backing == 0 {
                self.reply(id, Ok(None));
            } else {
                self.sched.waiters.push(Waiter::Plog {
                    seq,
                    who: WaitFor::Client(id),
                    backing,
                });
            }
            return;
        }
        self.seal_open();
        let target = self.segs.last_sealed;
        if target <= self.segs.last_durable && backing == 0 {
            self.reply(id, Ok(None));
        } else {
            self.sched.waiters.push(Waiter::Cache {
                target,
                who: WaitFor::Client(id),
                flushes_seen: self.clocks.cache.flushes(),
                backing,
            });
        }
    }

    /// Seals and waits for every sealed segment to be durable; true once it is (recovery's
    /// rebuild ends with it).
    pub(crate) fn wait_all_durable(&mut self) -> bool {
        self.seal_open();
        if self.segs.last_durable >= self.segs.last_sealed {
            return true;
        }
        if !self.sched.waiting(WaitFor::Sync) {
            self.wait_cache(self.segs.last_sealed, WaitFor::Sync);
            self.pump();
        }
        false
    }

    fn wait_cache(&mut self, target: u64, who: WaitFor) {
        self.sched.waiters.push(Waiter::Cache {
            target,
            who,
            flushes_seen: self.clocks.cache.flushes(),
            backing: 0,
        });
    }

    /// Answers every waiter whose writes are durable.
    pub(crate) fn answer_waiters(&mut self) {
        let ack_inflight = super::quirk!(self, FlushAckInflight);
        let flushes = self.clocks.cache.flushes();
        let last_durable = self.segs.last_durable;
        let plog = &self.clocks.plog;
        let backing_clock = &self.clocks.backing;
        let mut done = Vec::new();
        self.sched.waiters.retain(|w| {
            let ok = match *w {
                Waiter::Cache {
                    target,
                    flushes_seen,
                    backing,
                    ..
                } => {
                    (last_durable >= target || (ack_inflight && flushes > flushes_seen))
                        && backing_clock.durable(backing)
                }
                Waiter::Plog { seq, backing, .. } => {
                    plog.durable(seq) && backing_clock.durable(backing)
                }
            };
            if ok {
                done.push(match *w {
                    Waiter::Cache { who, .. } | Waiter::Plog { who, .. } => who,
                });
            }
            !ok
        });
        for who in done {
            if let WaitFor::Client(id) = who {
                self.reply(id, Ok(None));
            }
        }
    }

    /// Type 1: a plog flush once every plog write a waiter needs has completed (R1 on the plog).
    pub(crate) fn drive_plog_durability(&mut self) {
        let clock = &self.clocks.plog;
        let shutdown_need =
            (self.sched.shutting_down && clock.issued() > 0).then(|| clock.issued());
        let needs: Vec<u64> = self
            .sched
            .plog_need()
            .into_iter()
            .chain(shutdown_need)
            .collect();
        self.flush_for(DeviceRole::Plog, &needs, Purpose::PlogFlush);
    }

    /// A backing flush once every bypassed write a FLUSH, a FUA write, a drain or shutdown
    /// needs has completed (R1 on the backing device). The writeback job's own flush waits
    /// while this one is in flight, and this one while the job's is.
    pub(crate) fn drive_backing_durability(&mut self) {
        let settling = self.sched.draining || self.sched.shutting_down;
        let own_need = (settling && !self.bypass_settled()).then_some(self.bypass.last_seq);
        let needs: Vec<u64> = self
            .sched
            .backing_need()
            .into_iter()
            .chain(own_need)
            .collect();
        if self.flush_for(DeviceRole::Backing, &needs, Purpose::BackingFlush) {
            crate::probe!(BypassFlush);
        }
    }

    /// A flush of `role` for the smallest of `needs` (write sequence numbers) not durable yet,
    /// issued once every write up to it completed and no flush is in flight (R1); it covers
    /// the completed prefix. Says whether it issued one.
    fn flush_for(&mut self, role: DeviceRole, needs: &[u64], purpose: Purpose) -> bool {
        let clock = self.clocks.get(role);
        let Some(need) = needs.iter().copied().filter(|&s| !clock.durable(s)).min() else {
            return false;
        };
        if clock.flush_in_flight() || clock.completed_prefix() < need {
            return false;
        }
        let covers = clock.completed_prefix();
        let op = self.issue(role, IoKind::Flush, purpose);
        self.clocks.of(role).flush_issued(op, covers);
        true
    }

    pub(crate) fn plog_flush_done(&mut self, op: OpId) {
        self.clocks.plog.flush_done(op);
    }

    /// Clean shutdown: seal, make everything durable, record how far writeback got (type 1:
    /// the plog stage written and flushed too). The driver runs until
    /// [`Engine::shutdown_complete`].
    pub fn begin_shutdown(&mut self) {
        self.sched.shutting_down = true;
        self.pump();
    }

    pub(crate) fn drive_shutdown(&mut self) {
        if !self.sched.shutting_down || !self.writes.is_empty() {
            return;
        }
        self.plog_write_stage();
        self.seal_open();
        if self.segs.last_durable < self.segs.last_sealed {
            if !self.sched.waiting(WaitFor::Shutdown) {
                self.wait_cache(self.segs.last_sealed, WaitFor::Shutdown);
            }
        } else if !self.record_settled() && self.writeback.is_none() {
            self.start_record();
        }
    }

    /// What the engine waits for (diagnostics).
    pub fn shutdown_state(&self) -> String {
        format!(
            "idle {} writes {} (blocked {:?}) waiters {} writeback {} record {} open {} written {} durable {}/{} record {}/{} plog {}/{}",
            self.is_idle(),
            self.writes.len(),
            self.writes.blocked,
            self.sched.waiters.len(),
            self.writeback_state(),
            self.record.is_some(),
            self.segs.open_len(),
            self.segs.last_written,
            self.segs.last_durable,
            self.segs.last_sealed,
            self.durable_record,
            self.last_writeback,
            self.clocks.plog.durable_prefix(),
            self.clocks.plog.issued()
        )
    }

    /// The shutdown begun by [`Engine::begin_shutdown`] is done: everything acknowledged is
    /// durable and recorded, nothing is in flight.
    pub fn shutdown_complete(&self) -> bool {
        self.sched.shutting_down
            && self.is_idle()
            && self.writes.is_empty()
            && self.sched.waiters.is_empty()
            && self.writeback.is_none()
            && self.record.is_none()
            && self.segs.open_len() == 0
            && self.segs.last_durable == self.segs.last_sealed
            && self.record_settled()
            && self.clocks.plog.durable_prefix() == self.clocks.plog.issued()
            && self.bypass_settled()
    }
}
