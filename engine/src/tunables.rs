//! Run-time tunables (changeable by message) with the ranges the seed accepts.

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunables {
    /// Write back in the background (the scheduler honours it; forced writeback does not).
    pub allow_writeback: bool,
    /// Let the modulator decide instead of `allow_writeback`.
    pub enable_writeback_modulator: bool,
    /// Percent of backing-device load below which the modulator allows writeback.
    pub writeback_threshold: u8,
    /// Segments written back per batch.
    pub nr_max_batched_writeback: u32,
    /// Seconds between superblock-record updates; 0 = off.
    pub update_record_interval: u32,
    /// Seconds between forced syncs of the RAM buffer and cache device; 0 = off.
    pub sync_interval: u32,
    /// Bytes a sequential stream of writes must reach before its writes go straight to the
    /// backing device (cache/bypass.rs); 0 = off.
    pub sequential_cutoff: u64,
}

/// `sequential_cutoff`'s default, bcache's.
pub const DEFAULT_SEQUENTIAL_CUTOFF: u64 = 4 << 20;

/// (name, min, max) for every tunable, in status order.
pub const TUNABLE_RANGES: [(&str, u64, u64); 7] = [
    ("allow_writeback", 0, 1),
    ("enable_writeback_modulator", 0, 1),
    ("writeback_threshold", 0, 100),
    ("nr_max_batched_writeback", 1, 1000),
    ("update_record_interval", 0, 3600),
    ("sync_interval", 0, 3600),
    ("sequential_cutoff", 0, 1 << 30),
];

/// Every tunable's name, for messages: `allow_writeback, enable_writeback_modulator, ...`.
pub fn tunable_names() -> String {
    let names: Vec<&str> = TUNABLE_RANGES.iter().map(|t| t.0).collect();
    names.join(", ")
}

/// The tunable called `name` in either spelling (`sync_interval` or `sync-interval`) with its
/// range: (name as status shows it, min, max).
pub fn find_tunable(name: &str) -> Option<(&'static str, u64, u64)> {
    let name = name.replace('-', "_");
    TUNABLE_RANGES.iter().copied().find(|(n, _, _)| *n == name)
}

impl Tunables {
    /// The seed's defaults for a segment order.
    pub fn defaults(order: u8) -> Self {
        Tunables {
            allow_writeback: false,
            enable_writeback_modulator: false,
            writeback_threshold: 70,
            nr_max_batched_writeback: 1 << (15 - order as u32),
            update_record_interval: 0,
            sync_interval: 0,
            sequential_cutoff: DEFAULT_SEQUENTIAL_CUTOFF,
        }
    }

    /// Sets one tunable by name (either spelling, see [`find_tunable`]) after checking its
    /// range.
    pub fn set(&mut self, name: &str, value: u64) -> Result<()> {
        let (static_name, min, max) =
            find_tunable(name).ok_or_else(|| Error::UnknownMessage(name.to_string()))?;
        if value < min || value > max {
            return Err(Error::InvalidTunable {
                name: static_name,
                value,
                min,
                max,
            });
        }
        match static_name {
            "allow_writeback" => self.allow_writeback = value == 1,
            "enable_writeback_modulator" => self.enable_writeback_modulator = value == 1,
            "writeback_threshold" => self.writeback_threshold = value as u8,
            "nr_max_batched_writeback" => self.nr_max_batched_writeback = value as u32,
            "update_record_interval" => self.update_record_interval = value as u32,
            "sync_interval" => self.sync_interval = value as u32,
            "sequential_cutoff" => self.sequential_cutoff = value,
            _ => unreachable!("TUNABLE_RANGES and this match list the same names"),
        }
        Ok(())
    }

    /// Every tunable as (name, value), in status order.
    pub fn list(&self) -> [(&'static str, u64); 7] {
        [
            ("allow_writeback", self.allow_writeback as u64),
            (
                "enable_writeback_modulator",
                self.enable_writeback_modulator as u64,
            ),
            ("writeback_threshold", self.writeback_threshold as u64),
            (
                "nr_max_batched_writeback",
                self.nr_max_batched_writeback as u64,
            ),
            ("update_record_interval", self.update_record_interval as u64),
            ("sync_interval", self.sync_interval as u64),
            ("sequential_cutoff", self.sequential_cutoff),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_enforced_and_values_round_trip() {
        let mut t = Tunables::defaults(10);
        assert_eq!(t.nr_max_batched_writeback, 32);
        for (name, min, max) in TUNABLE_RANGES {
            t.set(name, min).unwrap();
            t.set(name, max).unwrap();
            assert_eq!(t.list().iter().find(|(n, _)| *n == name).unwrap().1, max);
            let err = t.set(name, max + 1).unwrap_err();
            assert!(matches!(err, Error::InvalidTunable { .. }), "{name}");
            if min > 0 {
                assert!(t.set(name, min - 1).is_err());
            }
        }
        assert!(matches!(t.set("bogus", 1), Err(Error::UnknownMessage(_))));
        // Both spellings name the same tunable.
        t.set("sync-interval", 7).unwrap();
        assert_eq!(t.sync_interval, 7);
        assert_eq!(
            find_tunable("nr-max-batched-writeback").unwrap().0,
            "nr_max_batched_writeback"
        );
    }
}
