//! Seed hazards that can be switched back on, so the crash tester can prove it would catch each
//! of them (SPEC §6). Compiled only with the `quirks` feature, which the crash simulator and
//! tests enable; the runner is built without it, so a release `wbcache` cannot carry one.

/// One re-introducible hazard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Quirk {
    /// dm-lc: replay accepts a segment without checking its checksum, so a segment whose header
    /// persisted but whose data did not is applied.
    LcNoChecksum,
    /// H5: the superblock record is written without first making durable the newer copies of
    /// blocks that the written-back segments held but did not write back.
    H5RecordAheadOfLog,
}

impl Quirk {
    pub const ALL: [Quirk; 2] = [Quirk::LcNoChecksum, Quirk::H5RecordAheadOfLog];

    pub fn name(self) -> &'static str {
        match self {
            Quirk::LcNoChecksum => "lc-nochecksum",
            Quirk::H5RecordAheadOfLog => "h5",
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
