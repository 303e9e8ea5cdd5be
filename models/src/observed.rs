//! What the oracles judge: the recovered device, read whole or in part.

use crate::access::sector_range;
use crate::{History, BLOCK_SECTORS};

/// A recovered device as the crash tester read it. Blocks it did not read are known to hold
/// the initial content: the tester proved it without reading them (their backing-device data
/// is the initial data, shared copy-on-write, and the engine caches no copy of them), so an
/// oracle judges those sectors as the initial content, and skips the ones no write touched.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    /// The whole device; only the sectors of read blocks are meaningful.
    pub bytes: &'a [u8],
    /// Per 4 KiB block, whether it was read; `None`: every block was.
    pub read: Option<&'a [bool]>,
}

impl<'a> Observed<'a> {
    /// A device read whole.
    pub fn whole(bytes: &'a [u8]) -> Self {
        Observed { bytes, read: None }
    }

    /// Whether sector `s` is known to hold the initial content without being read.
    pub fn known_initial(&self, s: u64) -> bool {
        self.read
            .is_some_and(|r| !r.get((s / BLOCK_SECTORS) as usize).copied().unwrap_or(true))
    }

    /// The content of sector `s`.
    pub fn sector<'s>(&'s self, h: &'s History, s: u64) -> &'s [u8] {
        if self.known_initial(s) {
            h.initial_sector(s)
        } else {
            &self.bytes[sector_range(s)]
        }
    }
}
