//! Client reads. A read is planned against the index when it arrives (it does not queue behind
//! writes): each 4 KiB piece is a miss (the backing device), or a cached block with its dirty
//! sectors (or a clean copy kept after writeback, R17, all of its sectors), from RAM when its segment still has a RAM image (open, sealed, or being written:
//! rule R10, a read never sees a write still in flight on the device) or else from the cache
//! device (the slot is pinned until the read completes, rule R7). Consecutive pieces that need
//! the backing device are one read. When every device read has completed, the cached sectors
//! are laid over the backing data, each cached block checked against its CRC right after it
//! was read, and the reply goes out.

use crate::device::DeviceRole;
use crate::error::Error;
use crate::format::{self, BLOCK_SIZE, SECTORS_PER_BLOCK, SECTOR_SIZE};
use crate::io::{IoDone, IoKind};

use super::{pieces, sector_mask, Engine, Purpose, ReqId};

/// The cached sectors of one piece, laid over the backing data at the end.
struct Overlay {
    /// Byte offset of the piece in the read buffer.
    off: usize,
    first: usize,
    count: usize,
    dirty: u8,
    /// `None` while its read from the cache device is in flight.
    data: Option<Box<[u8; BLOCK_SIZE]>>,
    crc: Option<u32>,
    block: u64,
    /// Where the block lives on the cache device (for errors).
    cache_sector: u64,
}

/// A cached copy of a block, as a read finds it.
#[derive(Clone, Copy)]
struct Copy {
    slot: u64,
    pos: usize,
    /// The sectors it holds.
    dirty: u8,
    crc: Option<u32>,
}

pub(crate) struct ReadJob {
    buf: Vec<u8>,
    pending: usize,
    /// Byte offset in `buf` of each backing read (device read `part` for `part` below).
    backing: Vec<usize>,
    overlays: Vec<Overlay>,
}

impl Engine {
    /// Where the cache holds `block`: its live metablock, else a clean copy kept after
    /// writeback (R17), whose slot still holds the segment it was noted in.
    fn cached_copy(&self, block: u64) -> Option<Copy> {
        if let Some(idx) = self.index.lookup(block) {
            let mb = self.index.get(idx);
            return Some(Copy {
                slot: self.index.slot_of(idx),
                pos: self.index.pos_of(idx),
                dirty: mb.dirty,
                crc: mb.crc,
            });
        }
        let c = self.clean.get(block)?;
        assert_eq!(
            self.slots[c.slot as usize].id, c.seg,
            "clean copy of block {block} outlived its segment in slot {}",
            c.slot
        );
        crate::probe!(ReadClean);
        Some(Copy {
            slot: c.slot,
            pos: c.pos,
            dirty: 0xFF,
            crc: c.crc,
        })
    }

    /// Plans a read and issues its device reads; answers at once when nothing needs a device.
    pub(crate) fn start_read(&mut self, id: ReqId, sector: u64, len: usize) {
        if !self.reads.is_empty() {
            // Several reads planned and in flight together, as the runner serves a queue.
            crate::probe!(ReadMany);
        }
        let mut job = ReadJob {
            buf: vec![0u8; len],
            pending: 0,
            backing: Vec::new(),
            overlays: Vec::new(),
        };
        let mut run: Option<(u64, usize, usize)> = None; // (sector, byte offset, bytes)
        let mut runs = Vec::new();
        let mut cache_reads = Vec::new(); // (overlay index, sector, slot)
        for (block, first, count, off) in pieces(sector, (len / SECTOR_SIZE) as u64) {
            let want = sector_mask(first, count);
            let full = count == SECTORS_PER_BLOCK as usize;
            let piece_sector = block * SECTORS_PER_BLOCK + first as u64;
            let cached = self.cached_copy(block);
            let needs_backing = cached.is_none_or(|c| c.dirty & want != want);
            if needs_backing {
                match &mut run {
                    Some((_, _, bytes)) => *bytes += count * SECTOR_SIZE,
                    None => run = Some((piece_sector, off, count * SECTOR_SIZE)),
                }
            } else if let Some(r) = run.take() {
                runs.push(r);
            }
            let Some(Copy {
                slot,
                pos,
                dirty,
                crc,
            }) = cached
            else {
                self.stats.count(false, false, false, full);
                continue;
            };
            let mut overlay = Overlay {
                off,
                first,
                count,
                dirty,
                data: None,
                crc,
                block,
                cache_sector: self.geo.block_sector(slot, pos),
            };
            let on_buffer = match self.segs.ram_image(self.slots[slot as usize].id) {
                Some(img) => {
                    let mut b = Box::new([0u8; BLOCK_SIZE]);
                    b.copy_from_slice(&img[(1 + pos) * BLOCK_SIZE..(2 + pos) * BLOCK_SIZE]);
                    overlay.data = Some(b);
                    crate::probe!(ReadRam);
                    true
                }
                None => {
                    crate::probe!(ReadCache);
                    cache_reads.push((job.overlays.len(), self.geo.block_sector(slot, pos), slot));
                    false
                }
            };
            job.overlays.push(overlay);
            self.stats.count(false, true, on_buffer, full);
        }
        runs.extend(run);
        let backing_parts = runs.len();
        if backing_parts > 0 {
            crate::probe!(ReadBacking);
        }
        for (part, &(s, off, bytes)) in runs.iter().enumerate() {
            job.backing.push(off);
            self.issue(
                DeviceRole::Backing,
                IoKind::Read {
                    sector: s,
                    len: bytes,
                },
                Purpose::Read { req: id, part },
            );
        }
        for &(k, s, slot) in &cache_reads {
            self.issue_pinned(
                DeviceRole::Cache,
                IoKind::Read {
                    sector: s,
                    len: BLOCK_SIZE,
                },
                Purpose::Read {
                    req: id,
                    part: backing_parts + k,
                },
                Some(slot),
            );
        }
        job.pending = backing_parts + cache_reads.len();
        if job.pending == 0 {
            self.finish_read(id, job);
        } else {
            self.reads.insert(id, job);
        }
    }

    /// One device read of a client read completed.
    pub(crate) fn read_part_done(&mut self, id: ReqId, part: usize, data: IoDone) {
        let IoDone::Read(bytes) = data else {
            panic!("a read returns data")
        };
        let Some(job) = self.reads.get_mut(&id) else {
            return;
        };
        if part < job.backing.len() {
            let off = job.backing[part];
            job.buf[off..off + bytes.len()].copy_from_slice(&bytes);
        } else {
            let o = &mut job.overlays[part - job.backing.len()];
            // Assert the data right after it is read: a block that fails its CRC is never
            // served.
            if o.crc.is_some_and(|crc| crc != format::block_crc(&bytes)) {
                let (block, sector) = (o.block, o.cache_sector);
                self.die(Error::Corrupt {
                    role: DeviceRole::Cache,
                    sector,
                    what: format!("data block of backing block {block} fails its CRC"),
                });
                return;
            }
            let mut b = Box::new([0u8; BLOCK_SIZE]);
            b.copy_from_slice(&bytes);
            o.data = Some(b);
        }
        job.pending -= 1;
        if job.pending == 0 {
            let job = self.reads.remove(&id).expect("the job");
            self.finish_read(id, job);
        }
    }

    /// Lays the cached sectors over the backing data and answers.
    fn finish_read(&mut self, id: ReqId, mut job: ReadJob) {
        for o in &job.overlays {
            let data = o.data.as_ref().expect("every cached block was read");
            for s in o.first..o.first + o.count {
                if o.dirty & (1 << s) != 0 {
                    let at = o.off + (s - o.first) * SECTOR_SIZE;
                    job.buf[at..at + SECTOR_SIZE]
                        .copy_from_slice(&data[s * SECTOR_SIZE..(s + 1) * SECTOR_SIZE]);
                }
            }
        }
        self.reply(id, Ok(Some(job.buf)));
    }
}
