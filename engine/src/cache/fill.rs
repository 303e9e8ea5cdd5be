//! Rule R14: a cached copy is always whole. A piece that leaves its block partly dirty (the
//! piece, merged with the older copy's dirty sectors, does not cover all eight sectors) is
//! completed with the block's current data from the backing device before it is logged, and
//! the copy is logged fully dirty.
//!
//! Why: dm-writeboost's replay, applying a partly dirty copy over an older dirty copy of the
//! same block, first writes the older copy's dirty sectors to the backing device; if the newer
//! copy's segment is then marked clean (it is at or below the record), those older sectors
//! stay for good (docs/DESIGN.md, "The peer's replay"). A ring that holds only whole copies
//! never takes that path.
//!
//! Safety of the read: the sectors taken from the backing device are dirty in no copy (the
//! older copy's dirty sectors are laid over them), so no writeback writes them while the read is
//! in flight; the queue is blocked at this piece, so no client write does either. A fill read
//! issued while an older copy existed is used only while that same copy is still the newest
//! (`with_old`): a writeback that finished meanwhile may have written the older copy's sectors
//! after the read saw them.

use crate::device::DeviceRole;
use crate::format::{BLOCK_SIZE, SECTORS_PER_BLOCK, SECTOR_SIZE};
use crate::io::{IoDone, IoKind, OpId};

use super::writes::Blocked;
use super::{Engine, Purpose};

/// The backing data of the block a partial piece completes itself with.
pub(crate) struct Fill {
    block: u64,
    /// The older copy (metablock index) that was the newest when the read was issued.
    with_old: Option<u32>,
    op: OpId,
    /// `None` while the read is in flight.
    data: Option<Box<[u8; BLOCK_SIZE]>>,
}

impl Engine {
    /// The backing data of `block` as it is while `old` is its newest cached copy; issues the
    /// read (and the piece waits) when there is none yet.
    pub(crate) fn backing_fill(
        &mut self,
        block: u64,
        old: Option<u32>,
    ) -> Result<Box<[u8; BLOCK_SIZE]>, Blocked> {
        if let Some(f) = &self.writes.fill {
            if f.block == block && f.with_old == old {
                return f.data.clone().ok_or(Blocked::Fill);
            }
        }
        let first = block * SECTORS_PER_BLOCK;
        assert!(first < self.backing_sectors, "a piece inside the device");
        let sectors = SECTORS_PER_BLOCK.min(self.backing_sectors - first);
        let op = self.issue(
            DeviceRole::Backing,
            IoKind::Read {
                sector: first,
                len: sectors as usize * SECTOR_SIZE,
            },
            Purpose::FillRead,
        );
        self.writes.fill = Some(Fill {
            block,
            with_old: old,
            op,
            data: None,
        });
        Err(Blocked::Fill)
    }

    /// The sectors of `block` inside the device: all eight but in a partial last block.
    pub(crate) fn whole_block_mask(&self, block: u64) -> u8 {
        let first = block * SECTORS_PER_BLOCK;
        assert!(first < self.backing_sectors, "a piece inside the device");
        let sectors = SECTORS_PER_BLOCK.min(self.backing_sectors - first);
        super::sector_mask(0, sectors as usize)
    }

    /// A fill read completed; one issued for a fill given up since is dropped.
    pub(crate) fn fill_read_done(&mut self, op: OpId, data: IoDone) {
        let IoDone::Read(bytes) = data else {
            panic!("a fill read returns data")
        };
        let Some(f) = self.writes.fill.as_mut().filter(|f| f.op == op) else {
            return;
        };
        let mut b = Box::new([0u8; BLOCK_SIZE]);
        b[..bytes.len()].copy_from_slice(&bytes);
        f.data = Some(b);
    }
}

/// Lays the sectors of `src` that `bits` names over `dst`.
pub(crate) fn overlay_sectors(dst: &mut [u8; BLOCK_SIZE], src: &[u8; BLOCK_SIZE], bits: u8) {
    for i in 0..SECTORS_PER_BLOCK as usize {
        if bits & (1 << i) != 0 {
            let r = i * SECTOR_SIZE..(i + 1) * SECTOR_SIZE;
            dst[r.clone()].copy_from_slice(&src[r]);
        }
    }
}
