//! Seed hazards that can be switched back on, so the crash tester can prove it would catch each
//! of them (docs/HAZARDS.md). Compiled only with the `quirks` feature, which the crash simulator and
//! tests enable; the runner is built without it, so a release `wbcache` cannot carry one.

/// One re-introducible hazard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Quirk {
    /// H1: a torn segment where the walk stops makes replay forget the whole log.
    H1TornSlotForgetsLog,
    /// H2: replay does not demand contiguous ids: a valid segment of a previous lap in a slot
    /// whose new write was lost is applied after newer segments.
    H2NoContiguity,
    /// H3: after replay stops at a torn segment, valid segments with higher ids stay on disk
    /// and are accepted again once those ids are reused.
    H3NoStaleInvalidation,
    /// H10: format writes the superblock before the old segments are invalidated (and
    /// without marking the format in the records).
    H10MagicFirst,
    /// H5: the superblock record is written without first making durable the newer copies of
    /// blocks that the written-back segments held but did not write back.
    H5RecordAheadOfLog,
    /// H6: segments at or below the record are replayed as dirty (and never cleaned).
    H6ReplayBelowRecord,
    /// H12: a partial overwrite of a dirty block on the cache device writes the old dirty
    /// sectors back in the foreground without a flush, and the new copy carries only its own
    /// sectors.
    H12UnflushedOneShotWriteback,
    /// H13: writeback does not re-check dirtiness: superseded copies are written back too, and
    /// land after the newer copy of the same block.
    H13NoDirtinessRecheck,
    /// H14: discard goes to the backing device only; a cached dirty copy stays and is read (and
    /// later written back) over it.
    H14DiscardBackingOnly,
    /// dm-lc: replay accepts a segment without checking its checksum, so a segment whose header
    /// persisted but whose data did not is applied.
    LcNoChecksum,
    /// dm-writecache (SSD mode, before its 2020 fix): the commit flush is issued before the data
    /// writes it should cover, so a FLUSH completes with data still in the volatile cache.
    WcFlushBeforeData,
    /// dm-writecache: FUA is ignored; a FUA write completes before it is durable.
    WcIgnoresFua,
    /// dm-cache: the mapping is committed before the copied data is flushed; here, writeback
    /// advances (and the record may pass) without flushing the backing device.
    DmCacheCommitBeforeFlush,
    /// H4: plog entries are not tied to an epoch: stale entries of a reused id (left by a
    /// recovery that stopped before them) are replayed.
    H4PlogStaleEntries,
    /// H7: a plog region is reused once its previous segment is written to the cache device,
    /// before that write is durable.
    H7PlogReuseBeforeDurable,
    /// H8: plog replay takes every region with entries over the cache log, without checking that
    /// the run before it was complete: a valid cache segment is replaced by a shorter rebuild.
    H8PlogRewritesCache,
    /// H9: the number of plog regions is derived from `nr_rambuf_pool` on every start instead of
    /// being stored.
    H9PlogGeometryFromTunables,
    /// A client FLUSH is answered when a cache flush completes, even one issued before a write
    /// it covers had completed (only completion-order exploration can catch it).
    FlushAckInflight,
    /// A writeback batch's backing flush is issued with its backing writes, before they
    /// completed (completion order).
    WbFlushEarly,
    /// H5's completion-order form: the record is written once the log writes it needs were
    /// submitted, not once they are durable.
    RecordBeforeLog,
    /// Not a seed hazard: an assertion that fires in replay (when it applies a segment above
    /// id 1), so the zoo shows a panic in recovery is a finding with a replay command, not the
    /// end of the run.
    ReplayAssert,
    /// Rules R13 and R14 off: a copy is logged partly dirty, and the record passes its segment
    /// while an older slot still holds a copy of the block; dm-writeboost's replay then writes
    /// that older copy over the newer one on the backing device (only the peer-replay check
    /// can see it: our own replay starts after the record).
    PartialCopies,
    /// Sequential bypass checks only the live cache, not the segments past the durable record:
    /// a block written back but not yet recorded is bypassed, and recovery replays its older
    /// copy over the bypassed data.
    BypassStaleWriteback,
    /// Sequential bypass ignores the cache: a block with a dirty cached copy is bypassed and the
    /// copy kept, so reads return the stale copy (and writeback writes it over the new data).
    BypassStaleRead,
    /// Rule R17 off: a write does not forget the clean copy of its blocks kept after
    /// writeback, so a read after a bypassed write returns the old copy.
    CleanCopyKept,
}

const _: () = assert!(Quirk::ALL.len() <= crate::probes::QUIRK_SLOTS);

impl Quirk {
    pub const ALL: [Quirk; 25] = [
        Quirk::H1TornSlotForgetsLog,
        Quirk::H2NoContiguity,
        Quirk::H3NoStaleInvalidation,
        Quirk::H5RecordAheadOfLog,
        Quirk::H6ReplayBelowRecord,
        Quirk::H10MagicFirst,
        Quirk::H12UnflushedOneShotWriteback,
        Quirk::H13NoDirtinessRecheck,
        Quirk::H14DiscardBackingOnly,
        Quirk::LcNoChecksum,
        Quirk::WcFlushBeforeData,
        Quirk::WcIgnoresFua,
        Quirk::DmCacheCommitBeforeFlush,
        Quirk::H4PlogStaleEntries,
        Quirk::H7PlogReuseBeforeDurable,
        Quirk::H8PlogRewritesCache,
        Quirk::H9PlogGeometryFromTunables,
        Quirk::FlushAckInflight,
        Quirk::WbFlushEarly,
        Quirk::RecordBeforeLog,
        Quirk::ReplayAssert,
        Quirk::PartialCopies,
        Quirk::BypassStaleWriteback,
        Quirk::BypassStaleRead,
        Quirk::CleanCopyKept,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Quirk::H1TornSlotForgetsLog => "h1",
            Quirk::H2NoContiguity => "h2",
            Quirk::H3NoStaleInvalidation => "h3",
            Quirk::H5RecordAheadOfLog => "h5",
            Quirk::H6ReplayBelowRecord => "h6",
            Quirk::H10MagicFirst => "h10",
            Quirk::H12UnflushedOneShotWriteback => "h12",
            Quirk::H13NoDirtinessRecheck => "h13",
            Quirk::H14DiscardBackingOnly => "h14",
            Quirk::LcNoChecksum => "lc-nochecksum",
            Quirk::WcFlushBeforeData => "wc-flush-order",
            Quirk::WcIgnoresFua => "wc-ignore-fua",
            Quirk::DmCacheCommitBeforeFlush => "dmcache-early-commit",
            Quirk::H4PlogStaleEntries => "h4",
            Quirk::H7PlogReuseBeforeDurable => "h7",
            Quirk::H8PlogRewritesCache => "h8",
            Quirk::H9PlogGeometryFromTunables => "h9",
            Quirk::FlushAckInflight => "flush-ack-inflight",
            Quirk::WbFlushEarly => "wb-flush-early",
            Quirk::RecordBeforeLog => "record-before-log",
            Quirk::ReplayAssert => "replay-assert",
            Quirk::PartialCopies => "partial-copies",
            Quirk::BypassStaleWriteback => "bypass-stale-writeback",
            Quirk::BypassStaleRead => "bypass-stale-read",
            Quirk::CleanCopyKept => "clean-copy-kept",
        }
    }

    pub fn from_name(name: &str) -> Option<Quirk> {
        Quirk::ALL.into_iter().find(|q| q.name() == name)
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A set of quirks (empty = the correct engine).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Quirks(u32);

impl Quirks {
    pub fn none() -> Self {
        Quirks(0)
    }
    pub fn with(self, q: Quirk) -> Self {
        Quirks(self.0 | q.bit())
    }
    pub fn has(self, q: Quirk) -> bool {
        self.0 & q.bit() != 0
    }
}
