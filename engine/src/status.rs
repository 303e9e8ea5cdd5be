//! Statistics, the status report and messages.

use std::fmt;

use crate::cache::Engine;
use crate::error::{Error, Result};
use crate::tunables::{find_tunable, Tunables};

/// The seed's 16 counters, indexed by (write?, hit?, on buffer?, full size?) bits, counted per
/// 4 KiB piece of a request (the seed's device-mapper split requests at block boundaries too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub counters: [u64; 16],
    /// Segments sealed before they were full (by FLUSH, FUA or sync).
    pub partial_flushed: u64,
    /// Client writes sent straight to the backing device (sequential bypass).
    pub bypassed_writes: u64,
}

pub const STAT_WRITE: usize = 3;
pub const STAT_HIT: usize = 2;
pub const STAT_ON_BUFFER: usize = 1;
pub const STAT_FULLSIZE: usize = 0;

impl Stats {
    pub fn count(&mut self, write: bool, hit: bool, on_buffer: bool, full: bool) {
        let i = (write as usize) << STAT_WRITE
            | (hit as usize) << STAT_HIT
            | (on_buffer as usize) << STAT_ON_BUFFER
            | (full as usize) << STAT_FULLSIZE;
        self.counters[i] += 1;
    }
}

/// Everything `status` reports: the seed's fields first, then ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Position of the next block to fill, as a cache-block index (slot * n + offset).
    pub cursor: u64,
    pub nr_cache_blocks: u64,
    pub nr_segments: u64,
    /// Id of the open segment (or of the next one to open).
    pub current_id: u64,
    /// Last segment written to the cache device (its write and every earlier one completed).
    pub last_flushed_id: u64,
    /// Last segment written back (backing device flushed).
    pub last_writeback_id: u64,
    pub nr_dirty_cache_blocks: u64,
    pub stat: [u64; 16],
    pub nr_partial_flushed: u64,
    pub tunables: Tunables,
    // Ours.
    pub segment_size_order: u8,
    pub nr_rambuf_pool: usize,
    pub last_sealed_id: u64,
    pub last_durable_id: u64,
    pub durable_record_id: u64,
    pub writeback_allowed: bool,
    pub draining: bool,
    pub dead: Option<String>,
    /// 0: RAM buffers only; 1: with a plog.
    pub cache_type: u8,
    /// Type 1: entries appended and plog flushes since open, and the plog epoch.
    pub plog_entries: u64,
    pub plog_flushes: u64,
    pub plog_epoch: u64,
    /// Client writes sent straight to the backing device (sequential bypass).
    pub bypassed_writes: u64,
}

impl fmt::Display for Status {
    /// The seed's status line: cursor, counts, ids, dirty count, 16 counters, partial flushes,
    /// then the tunables as `name value` pairs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {} {}",
            self.cursor,
            self.nr_cache_blocks,
            self.nr_segments,
            self.current_id,
            self.last_flushed_id,
            self.last_writeback_id,
            self.nr_dirty_cache_blocks
        )?;
        for c in self.stat {
            write!(f, " {c}")?;
        }
        write!(f, " {}", self.nr_partial_flushed)?;
        let t = self.tunables.list();
        write!(f, " {}", 2 * t.len())?;
        for (name, v) in t {
            write!(f, " {name} {v}")?;
        }
        Ok(())
    }
}

impl Engine {
    pub fn status(&self) -> Status {
        let (current_id, pos) = match &self.segs.open {
            Some(s) => (s.id, s.len),
            None => (self.segs.last_sealed + 1, 0),
        };
        let cursor = self.geo.slot_of(current_id) * self.n as u64 + pos as u64;
        Status {
            cursor,
            nr_cache_blocks: self.geo.nr_segments * self.n as u64,
            nr_segments: self.geo.nr_segments,
            current_id,
            last_flushed_id: self.segs.last_written,
            last_writeback_id: self.last_writeback,
            nr_dirty_cache_blocks: self.index.live_total(),
            stat: self.stats.counters,
            nr_partial_flushed: self.stats.partial_flushed,
            tunables: self.tunables,
            segment_size_order: self.geo.order,
            nr_rambuf_pool: self.segs.pool,
            last_sealed_id: self.segs.last_sealed,
            last_durable_id: self.segs.last_durable,
            durable_record_id: self.durable_record,
            writeback_allowed: self.writeback_allowed(),
            draining: self.sched.draining,
            dead: self.dead.clone(),
            cache_type: self.cache_type(),
            plog_entries: self.plog.as_ref().map_or(0, |p| p.entries_appended),
            plog_flushes: self.clocks.plog.flushes(),
            plog_epoch: self.plog.as_ref().map_or(0, |p| p.sb.epoch),
            bypassed_writes: self.stats.bypassed_writes,
        }
    }

    /// Backing blocks the cache holds a copy of (dirty, or in a RAM buffer), in no particular
    /// order: a read of any other block goes to the backing device.
    /// Every block the cache may serve from the cache device or RAM: dirty or logged copies,
    /// and clean copies kept after writeback (R17).
    pub fn cached_blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.index.blocks().chain(self.clean.blocks())
    }

    pub fn tunables(&self) -> Tunables {
        self.tunables
    }

    /// Sets one tunable after checking its range.
    pub fn set_tunable(&mut self, name: &str, value: u64) -> Result<()> {
        self.tunables.set(name, value)
    }

    pub fn clear_stat(&mut self) {
        self.stats = Stats::default();
    }

    /// A message as the seed takes it: `drop_caches`, `clear_stat`, or `<tunable> <value>`.
    /// Names take `_` or `-` between words. A known tunable with a missing or bad value is
    /// that error, not an unknown message.
    pub fn message(&mut self, msg: &str) -> Result<()> {
        let r = self.take_message(msg);
        let first = msg
            .split_whitespace()
            .next()
            .unwrap_or("")
            .replace('-', "_");
        match (&r, first.as_str()) {
            (Err(_), _) => crate::probe!(MessageRefused),
            (Ok(()), "drop_caches") => crate::probe!(MessageDropCaches),
            (Ok(()), "clear_stat" | "clear_stats") => {}
            (Ok(()), _) => crate::probe!(MessageTunable),
        }
        r
    }

    fn take_message(&mut self, msg: &str) -> Result<()> {
        let words: Vec<&str> = msg.split_whitespace().collect();
        let Some((first, rest)) = words.split_first() else {
            return Err(Error::UnknownMessage(msg.to_string()));
        };
        if let Some((name, min, max)) = find_tunable(first) {
            return match rest {
                [] => Err(Error::MissingTunableValue { name, min, max }),
                [value] => match value.parse::<u64>() {
                    Ok(v) => self.set_tunable(name, v),
                    Err(_) => Err(Error::UnparsableTunable {
                        name,
                        value: value.to_string(),
                        min,
                        max,
                    }),
                },
                _ => Err(Error::UnparsableTunable {
                    name,
                    value: rest.join(" "),
                    min,
                    max,
                }),
            };
        }
        match (first.replace('-', "_").as_str(), rest) {
            ("drop_caches", []) => {
                self.drop_caches();
                Ok(())
            }
            ("clear_stat" | "clear_stats", []) => {
                self.clear_stat();
                Ok(())
            }
            _ => Err(Error::UnknownMessage(msg.to_string())),
        }
    }
}
