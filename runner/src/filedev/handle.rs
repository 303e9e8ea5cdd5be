//! `FileHandle`: one I/O thread's handle on a `FileDevice`, performing the engine's operations
//! one at a time (the executor runs several handles of a device at once). A handle shares the
//! device's open file description (a `dup`, so the device's ownership lock covers it), its
//! O_DIRECT mode and alignment, and has a bounce buffer of its own.
//!
//! Writes that need a read-modify-write (unaligned on a device whose logical block is larger
//! than a sector) take the device's one `rmw` lock, so two of them never interleave on an
//! aligned block; aligned writes and reads run freely (the engine never has two overlapping
//! writes in flight).

use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex};

use engine::{Access, IoDone, IoError, IoKind, IoResult};

use super::aligned_buf::AlignedBuf;
use super::{transfer, FileDevice, SECTOR};

pub struct FileHandle {
    file: File,
    sectors: u64,
    direct: bool,
    align: u64,
    bounce: AlignedBuf,
    rmw: Arc<Mutex<()>>,
}

impl FileDevice {
    /// `n` handles for I/O threads, sharing one read-modify-write lock.
    pub fn handles(&self, n: usize) -> io::Result<Vec<FileHandle>> {
        let rmw = Arc::new(Mutex::new(()));
        (0..n)
            .map(|_| {
                Ok(FileHandle {
                    file: self.file.try_clone()?,
                    sectors: self.sectors,
                    direct: self.direct,
                    align: self.align,
                    bounce: AlignedBuf::new(),
                    rmw: rmw.clone(),
                })
            })
            .collect()
    }
}

/// How a failed transfer of `len` bytes at `sector` is reported (every file backend alike).
pub(crate) fn err(op: Access, sector: u64, len: usize, e: io::Error) -> IoError {
    IoError::new(op, sector, len as u64 / SECTOR, e.to_string())
}

impl FileHandle {
    /// Performs a run of plain writes, each starting where the one before ends (the pool's
    /// `take_write_run`), as one transfer; every write of the run gets the run's result.
    pub fn perform_write_run(&mut self, writes: &[&IoKind]) -> Vec<IoResult> {
        let pieces: Vec<&[u8]> = writes
            .iter()
            .map(|k| match k {
                IoKind::Write {
                    data, fua: false, ..
                } => data.as_slice(),
                _ => panic!("a run holds plain writes only"),
            })
            .collect();
        let IoKind::Write { sector, .. } = writes[0] else {
            unreachable!("checked above")
        };
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        let result = self.write_run(*sector, &pieces, len);
        writes
            .iter()
            .map(|_| result.clone().map(|()| IoDone::Write))
            .collect()
    }

    /// Writes `pieces` one after the other from `sector`: one transfer, with read-modify-write
    /// of unaligned edges under the device's `rmw` lock.
    fn write_run(&mut self, sector: u64, pieces: &[&[u8]], len: usize) -> Result<(), IoError> {
        engine::device::check_access(Access::Write, self.sectors, sector, len)?;
        let off = sector * SECTOR;
        let aligned = off % self.align == 0 && len as u64 % self.align == 0;
        let _rmw =
            (self.direct && !aligned).then(|| self.rmw.lock().unwrap_or_else(|p| p.into_inner()));
        transfer::write_gather(
            &self.file,
            self.align,
            self.direct,
            &mut self.bounce,
            off,
            pieces,
        )
        .map_err(|e| err(Access::Write, sector, len, e))
    }
}

impl FileHandle {
    /// Performs one operation of the engine.
    pub fn perform(&mut self, kind: &IoKind) -> IoResult {
        match kind {
            IoKind::Read { sector, len } => {
                engine::device::check_access(Access::Read, self.sectors, *sector, *len)?;
                let mut buf = vec![0u8; *len];
                transfer::read_scatter(
                    &self.file,
                    self.align,
                    self.direct,
                    &mut self.bounce,
                    sector * SECTOR,
                    &mut [&mut buf],
                )
                .map_err(|e| err(Access::Read, *sector, *len, e))?;
                Ok(IoDone::Read(buf))
            }
            IoKind::Write { sector, data, fua } => {
                self.write_run(*sector, &[data], data.len())?;
                if *fua {
                    self.file
                        .sync_data()
                        .map_err(|e| err(Access::Write, *sector, data.len(), e))?;
                }
                Ok(IoDone::Write)
            }
            IoKind::Flush => {
                self.file
                    .sync_data()
                    .map_err(|e| err(Access::Flush, 0, 0, e))?;
                Ok(IoDone::Flush)
            }
        }
    }
}
