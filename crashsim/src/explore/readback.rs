//! Reading a recovered device back for the oracles: whole, or only the blocks that can differ
//! from the initial content (issue 19, "judge only what can differ").
//!
//! A block needs no read when two things hold: its backing-device chunk is still the very chunk
//! of the initial backing image (the images are copy-on-write, so an unchanged chunk is shared,
//! `Image::unshared_chunks`), and the engine holds no copy of it (`Engine::cached_blocks`), so a
//! read of it goes to that chunk. Its content is then the initial content, and the oracles judge
//! it as that (`models::Observed`). The proof rests on the engine reading an uncached block from
//! its own place on the backing device: the explorer reads every block once per workload as well
//! and compares (`Plan::cross_check`), and `--no-shortcuts` turns the shortcut off.

use engine::format::{SECTORS_PER_BLOCK, SECTOR_SIZE};
use engine::{BlockDevice, SyncEngine};

use crate::{Image, ImageDevice};

/// How a state's recovered device is read back.
#[derive(Clone, Copy, Default)]
pub struct Plan<'a> {
    /// The backing image the state's history starts from (chunks shared with it are proven
    /// initial); `None`: read every block.
    pub base: Option<&'a Image>,
    /// Read every block as well and compare with what the shortcut concluded.
    pub cross_check: bool,
}

/// Per block, whether it must be read: its backing chunk changed, or the engine caches it.
pub fn blocks_to_read(engine: &SyncEngine<ImageDevice>, base: &Image) -> Vec<bool> {
    let blocks = engine.size_sectors().div_ceil(SECTORS_PER_BLOCK) as usize;
    assert_eq!(
        engine::format::BLOCK_SIZE,
        crate::image::CHUNK_BYTES,
        "a chunk is a block"
    );
    let mut read = vec![false; blocks];
    for c in engine.backing_device().image().unshared_chunks(base) {
        if let Some(r) = read.get_mut(c) {
            *r = true;
        }
    }
    for b in engine.engine().cached_blocks() {
        read[b as usize] = true;
    }
    read
}

/// The sector ranges `(start, sectors)` of the runs of blocks to read, or the whole device.
pub fn ranges(read: Option<&[bool]>, size: u64) -> Vec<(u64, u64)> {
    let Some(read) = read else {
        return vec![(0, size)];
    };
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (b, _) in read.iter().enumerate().filter(|(_, &r)| r) {
        let start = b as u64 * SECTORS_PER_BLOCK;
        let n = SECTORS_PER_BLOCK.min(size - start);
        match out.last_mut() {
            Some((s, len)) if *s + *len == start => *len += n,
            _ => out.push((start, n)),
        }
    }
    out
}

/// Reads `ranges` of the exported device into `out` (the whole device's size), 64 KiB at a
/// time.
pub fn read_ranges<D: BlockDevice>(
    engine: &mut SyncEngine<D>,
    ranges: &[(u64, u64)],
    out: &mut [u8],
) -> Result<(), String> {
    const CHUNK: u64 = 128;
    for &(start, len) in ranges {
        let mut s = start;
        while s < start + len {
            let n = CHUNK.min(start + len - s);
            let at = s as usize * SECTOR_SIZE;
            engine
                .read(s, &mut out[at..at + n as usize * SECTOR_SIZE])
                .map_err(|e| format!("read of sectors {s}+{n} failed: {e}"))?;
            s += n;
        }
    }
    Ok(())
}

/// Reads the whole exported device.
pub fn read_all<D: BlockDevice>(engine: &mut SyncEngine<D>) -> Result<Vec<u8>, String> {
    whole(engine, read_ranges)
}

/// A reader of sector ranges into a whole-device buffer (`read_ranges`, `read_ranges_together`).
type RangeReader<D> = fn(&mut SyncEngine<D>, &[(u64, u64)], &mut [u8]) -> Result<(), String>;

/// The whole exported device, read by `read`.
fn whole<D: BlockDevice>(
    engine: &mut SyncEngine<D>,
    read: RangeReader<D>,
) -> Result<Vec<u8>, String> {
    let size = engine.size_sectors();
    let mut out = vec![0u8; size as usize * SECTOR_SIZE];
    read(engine, &[(0, size)], &mut out)?;
    Ok(out)
}

/// Reads `ranges` the way the runner serves a client's queue: up to 32 reads in flight
/// together (`SyncEngine::read_many`), of lengths that cycle through `PIECES`, so most pieces
/// start or end inside a 4 KiB block and the planner merges dirty sectors, RAM copies and
/// backing data for several reads at once. The second read-back of every state goes through
/// it, so a bug of concurrent reads is a `Stability` finding.
pub fn read_ranges_together<D: BlockDevice>(
    engine: &mut SyncEngine<D>,
    ranges: &[(u64, u64)],
    out: &mut [u8],
) -> Result<(), String> {
    const IN_FLIGHT: usize = 32;
    // Sector counts: single sectors, pieces inside a block, across one boundary, several blocks.
    const PIECES: [u64; 8] = [1, 7, 3, 9, 15, 31, 100, 128];
    let mut pieces = Vec::new();
    let mut k = 0u64;
    for &(start, len) in ranges {
        let mut s = start;
        while s < start + len {
            let n = PIECES[(k % PIECES.len() as u64) as usize].min(start + len - s);
            pieces.push((s, n));
            s += n;
            k += 1;
        }
    }
    for batch in pieces.chunks(IN_FLIGHT) {
        let mut reqs = Vec::with_capacity(batch.len());
        let mut rest: &mut [u8] = out;
        let mut at = 0u64;
        for &(sector, n) in batch {
            // Pieces are in address order and never overlap: split the buffer as we go.
            let skip = (sector - at) as usize * SECTOR_SIZE;
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(skip);
            let (buf, tail) = tail.split_at_mut(n as usize * SECTOR_SIZE);
            reqs.push(engine::ReadReq { sector, buf });
            rest = tail;
            at = sector + n;
        }
        for (r, &(sector, n)) in engine.read_many(&mut reqs).into_iter().zip(batch) {
            r.map_err(|e| format!("read of sectors {sector}+{n} (with others) failed: {e}"))?;
        }
    }
    Ok(())
}

/// Reads the whole exported device with reads in flight together (see `read_ranges_together`).
pub fn read_all_together<D: BlockDevice>(engine: &mut SyncEngine<D>) -> Result<Vec<u8>, String> {
    whole(engine, read_ranges_together)
}

/// The first sector in `ranges` where `a` and `b` differ.
pub fn first_difference(ranges: &[(u64, u64)], a: &[u8], b: &[u8]) -> Option<u64> {
    ranges.iter().find_map(|&(start, len)| {
        (start..start + len).find(|&s| {
            let r = s as usize * SECTOR_SIZE..(s as usize + 1) * SECTOR_SIZE;
            a[r.clone()] != b[r]
        })
    })
}

/// Fills the blocks `read` says were not read with `base`'s content (what they were proven to
/// hold), so `observed` is the whole device.
pub fn fill_unread(observed: &mut [u8], read: &[bool], base: &Image) {
    let block = SECTORS_PER_BLOCK as usize * SECTOR_SIZE;
    for (b, _) in read.iter().enumerate().filter(|(_, &r)| !r) {
        let at = b * block;
        let end = (at + block).min(observed.len());
        base.read(at, &mut observed[at..end]);
    }
}
