//! One transfer between memory and a file at a byte offset, through an aligned bounce buffer
//! under O_DIRECT: what `FileDevice` and the executor's per-thread `FileHandle`s both do.
//!
//! Under O_DIRECT offsets, lengths and memory must be aligned to the logical block size; an
//! unaligned write becomes a read-modify-write of the partly covered first and last aligned
//! blocks. Two such read-modify-writes of the same aligned block must not run at once (the
//! caller serialises them); without O_DIRECT the page cache does it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::aligned_buf::AlignedBuf;

/// The aligned range covering `[off, off + len)`.
pub(super) fn aligned_range(align: u64, off: u64, len: u64) -> (u64, u64) {
    (off / align * align, (off + len).div_ceil(align) * align)
}

/// Reads the bytes at `off` into `bufs`, one after the other (contiguous on the device), in
/// one read of the covering aligned range.
pub(super) fn read_scatter(
    file: &File,
    align: u64,
    direct: bool,
    bounce: &mut AlignedBuf,
    off: u64,
    bufs: &mut [&mut [u8]],
) -> io::Result<()> {
    if let [buf] = bufs {
        if !direct {
            return file.read_exact_at(buf, off);
        }
    }
    let len: u64 = bufs.iter().map(|b| b.len() as u64).sum();
    let (start, end) = aligned_range(align, off, len);
    let bounce = bounce.get((end - start) as usize);
    file.read_exact_at(bounce, start)?;
    let mut at = (off - start) as usize;
    for buf in bufs.iter_mut() {
        buf.copy_from_slice(&bounce[at..at + buf.len()]);
        at += buf.len();
    }
    Ok(())
}

/// Writes `pieces`, one after the other, at `off` in one write of the covering aligned range.
pub(super) fn write_gather(
    file: &File,
    align: u64,
    direct: bool,
    bounce: &mut AlignedBuf,
    off: u64,
    pieces: &[&[u8]],
) -> io::Result<()> {
    if let [data] = pieces {
        if !direct {
            return file.write_all_at(data, off);
        }
    }
    let len: u64 = pieces.iter().map(|p| p.len() as u64).sum();
    let a = align;
    let (start, end) = aligned_range(align, off, len);
    let bounce = bounce.get((end - start) as usize);
    // Read-modify-write of the partly covered first and last aligned blocks.
    if off != start {
        file.read_exact_at(&mut bounce[..a as usize], start)?;
    }
    let data_end = off + len;
    if data_end != end && (end - a != start || off == start) {
        let at = (end - a - start) as usize;
        file.read_exact_at(&mut bounce[at..at + a as usize], end - a)?;
    }
    let mut at = (off - start) as usize;
    for p in pieces {
        bounce[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    file.write_all_at(bounce, start)
}
