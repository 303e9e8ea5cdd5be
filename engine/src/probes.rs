//! Coverage probes: named points on the paths that matter for durability, counted each time
//! one is passed, so the crash simulator can say what its crash states touched and, above all,
//! what they never reached (FoundationDB's `CODE_PROBE`, TigerBeetle's marks).
//!
//! Counting is compiled only with the `probes` feature (the crash simulator and the tests turn it
//! on); without it [`probe!`] expands to nothing, so the runner's release build carries no
//! counter. Counts are per thread (the simulator runs one workload per thread at a time):
//! [`take`] returns this thread's and starts it over.

/// One probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Probe {
    // Recovery: the decisions of the plan and what applying it did.
    RecoveryFormat,
    RecoveryUpstreamImage,
    RecoveryRecordFromBackup,
    RecoveryRecordRaised,
    RecoveryWalkStopped,
    RecoveryStaleInvalidated,
    RecoveryReplayWriteback,
    RecoverySegmentsApplied,
    RecoveryPlogRebuild,
    RecoveryPlogVoided,
    // Client writes.
    WriteInPlace,
    WriteMergeRam,
    WriteMergeCache,
    WriteFillBacking,
    WriteZeroes,
    WriteFua,
    Flush,
    WriteWaitsSlot,
    WriteWaitsBuffer,
    // The segment pipeline and background jobs.
    SealPartial,
    SealFull,
    WritebackForced,
    WritebackAhead,
    WritebackSkipsSuperseded,
    RecordWrite,
    RecordWaitsLog,
    RecordHeldPartial,
    // Client reads.
    ReadRam,
    ReadCache,
    ReadClean,
    ReadBacking,
    ReadMany,
    // The dead state.
    DeadIo,
    DeadCorrupt,
    // Messages and the timer.
    MessageDropCaches,
    MessageTunable,
    MessageRefused,
    TimerSync,
    TimerRecord,
    // Type 1: plog regions at their boundary.
    PlogRegionExact,
    PlogRegionSealed,
    // Sequential bypass.
    WriteBypassed,
    BypassRefusedCached,
    BypassRefusedUnrecorded,
    BypassFlush,
}

/// How many probes there are.
pub const COUNT: usize = Probe::ALL.len();

impl Probe {
    pub const ALL: [Probe; 45] = [
        Probe::RecoveryFormat,
        Probe::RecoveryUpstreamImage,
        Probe::RecoveryRecordFromBackup,
        Probe::RecoveryRecordRaised,
        Probe::RecoveryWalkStopped,
        Probe::RecoveryStaleInvalidated,
        Probe::RecoveryReplayWriteback,
        Probe::RecoverySegmentsApplied,
        Probe::RecoveryPlogRebuild,
        Probe::RecoveryPlogVoided,
        Probe::WriteInPlace,
        Probe::WriteMergeRam,
        Probe::WriteMergeCache,
        Probe::WriteFillBacking,
        Probe::WriteZeroes,
        Probe::WriteFua,
        Probe::Flush,
        Probe::WriteWaitsSlot,
        Probe::WriteWaitsBuffer,
        Probe::SealPartial,
        Probe::SealFull,
        Probe::WritebackForced,
        Probe::WritebackAhead,
        Probe::WritebackSkipsSuperseded,
        Probe::RecordWrite,
        Probe::RecordWaitsLog,
        Probe::RecordHeldPartial,
        Probe::ReadRam,
        Probe::ReadCache,
        Probe::ReadClean,
        Probe::ReadBacking,
        Probe::ReadMany,
        Probe::DeadIo,
        Probe::DeadCorrupt,
        Probe::MessageDropCaches,
        Probe::MessageTunable,
        Probe::MessageRefused,
        Probe::TimerSync,
        Probe::TimerRecord,
        Probe::PlogRegionExact,
        Probe::PlogRegionSealed,
        Probe::WriteBypassed,
        Probe::BypassRefusedCached,
        Probe::BypassRefusedUnrecorded,
        Probe::BypassFlush,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Probe::RecoveryFormat => "recovery-format",
            Probe::RecoveryUpstreamImage => "recovery-upstream-image",
            Probe::RecoveryRecordFromBackup => "recovery-record-from-backup",
            Probe::RecoveryRecordRaised => "recovery-record-raised",
            Probe::RecoveryWalkStopped => "recovery-walk-stopped",
            Probe::RecoveryStaleInvalidated => "recovery-stale-invalidated",
            Probe::RecoveryReplayWriteback => "recovery-replay-writeback",
            Probe::RecoverySegmentsApplied => "recovery-segments-applied",
            Probe::RecoveryPlogRebuild => "recovery-plog-rebuild",
            Probe::RecoveryPlogVoided => "recovery-plog-voided",
            Probe::WriteInPlace => "write-in-place",
            Probe::WriteMergeRam => "write-merge-ram",
            Probe::WriteMergeCache => "write-merge-cache",
            Probe::WriteFillBacking => "write-fill-backing",
            Probe::WriteZeroes => "write-zeroes",
            Probe::WriteFua => "write-fua",
            Probe::Flush => "flush",
            Probe::WriteWaitsSlot => "write-waits-slot",
            Probe::WriteWaitsBuffer => "write-waits-buffer",
            Probe::SealPartial => "seal-partial",
            Probe::SealFull => "seal-full",
            Probe::WritebackForced => "writeback-forced",
            Probe::WritebackAhead => "writeback-ahead",
            Probe::WritebackSkipsSuperseded => "writeback-skips-superseded",
            Probe::RecordWrite => "record-write",
            Probe::RecordWaitsLog => "record-waits-log",
            Probe::RecordHeldPartial => "record-held-partial",
            Probe::ReadRam => "read-ram",
            Probe::ReadCache => "read-cache",
            Probe::ReadClean => "read-clean",
            Probe::ReadBacking => "read-backing",
            Probe::ReadMany => "read-many",
            Probe::DeadIo => "dead-io",
            Probe::DeadCorrupt => "dead-corrupt",
            Probe::MessageDropCaches => "message-drop-caches",
            Probe::MessageTunable => "message-tunable",
            Probe::MessageRefused => "message-refused",
            Probe::TimerSync => "timer-sync",
            Probe::TimerRecord => "timer-record",
            Probe::PlogRegionExact => "plog-region-exact",
            Probe::PlogRegionSealed => "plog-region-sealed",
            Probe::WriteBypassed => "write-bypassed",
            Probe::BypassRefusedCached => "bypass-refused-cached",
            Probe::BypassRefusedUnrecorded => "bypass-refused-unrecorded",
            Probe::BypassFlush => "bypass-flush",
        }
    }

    pub fn from_name(name: &str) -> Option<Probe> {
        Probe::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Room for quirk sites, by `Quirk as usize` (a quirk set is a `u32` bit mask, so there are
/// never more).
pub const QUIRK_SLOTS: usize = 32;

/// How often each probe fired, and how often a site of each seed quirk was passed with the
/// quirk on (the `quirk!` macro; only with the `quirks` feature).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    probes: [u64; COUNT],
    quirk_sites: [u64; QUIRK_SLOTS],
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            probes: [0; COUNT],
            quirk_sites: [0; QUIRK_SLOTS],
        }
    }
}

impl Counts {
    pub fn get(&self, p: Probe) -> u64 {
        self.probes[p as usize]
    }

    /// Passes of a site of the quirk numbered `quirk` (`engine::quirks::Quirk as usize`) with
    /// that quirk on.
    pub fn quirk_site(&self, quirk: usize) -> u64 {
        self.quirk_sites[quirk]
    }

    /// Sets the count of `p` (a tally read back from a saved crash-test result).
    pub fn set(&mut self, p: Probe, n: u64) {
        self.probes[p as usize] = n;
    }

    /// The passes of each quirk's sites, by quirk number.
    pub fn quirk_sites(&self) -> &[u64] {
        &self.quirk_sites
    }

    /// Sets the passes of quirk number `quirk`'s sites; `None` if there is no such slot.
    pub fn set_quirk_site(&mut self, quirk: usize, n: u64) -> Option<()> {
        *self.quirk_sites.get_mut(quirk)? = n;
        Some(())
    }

    pub fn add(&mut self, o: &Counts) {
        for (a, b) in self.probes.iter_mut().zip(o.probes) {
            *a += b;
        }
        for (a, b) in self.quirk_sites.iter_mut().zip(o.quirk_sites) {
            *a += b;
        }
    }

    /// The probes that never fired, in declaration order.
    pub fn unreached(&self) -> Vec<Probe> {
        Probe::ALL
            .into_iter()
            .filter(|&p| self.get(p) == 0)
            .collect()
    }
}

#[cfg(feature = "probes")]
thread_local! {
    static COUNTS: std::cell::Cell<Counts> = std::cell::Cell::new(Counts::default());
}

/// Counts one pass of `p` (only with the `probes` feature; see [`probe!`]).
#[cfg(feature = "probes")]
pub fn hit(p: Probe) {
    COUNTS.with(|c| {
        let mut v = c.get();
        v.probes[p as usize] += 1;
        c.set(v);
    });
}

/// Counts one pass of a site of quirk number `quirk` with the quirk on (see `quirk!`).
#[cfg(feature = "probes")]
pub fn hit_quirk_site(quirk: usize) {
    COUNTS.with(|c| {
        let mut v = c.get();
        v.quirk_sites[quirk] += 1;
        c.set(v);
    });
}

/// This thread's counts since the last call, and a fresh start (all zero without the
/// `probes` feature).
pub fn take() -> Counts {
    #[cfg(feature = "probes")]
    return COUNTS.with(|c| c.take());
    #[cfg(not(feature = "probes"))]
    Counts::default()
}

/// Whether counting is compiled in.
pub const ENABLED: bool = cfg!(feature = "probes");

/// Counts a pass of the named [`Probe`] where the `probes` feature is on; nothing otherwise.
#[macro_export]
macro_rules! probe {
    ($p:ident) => {{
        #[cfg(feature = "probes")]
        $crate::probes::hit($crate::probes::Probe::$p);
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut names: Vec<_> = Probe::ALL.iter().map(|p| p.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), COUNT);
        for p in Probe::ALL {
            assert_eq!(Probe::from_name(p.name()), Some(p));
            assert_eq!(Probe::ALL[p as usize], p, "ALL is in declaration order");
        }
    }

    #[cfg(feature = "probes")]
    #[test]
    fn a_probe_counts_on_its_thread_and_take_starts_over() {
        let _ = take();
        crate::probe!(ReadMany);
        crate::probe!(ReadMany);
        let c = take();
        assert_eq!(c.get(Probe::ReadMany), 2);
        assert_eq!(c.unreached().len(), COUNT - 1);
        assert_eq!(take().get(Probe::ReadMany), 0);
    }
}
