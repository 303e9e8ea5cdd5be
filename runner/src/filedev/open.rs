//! Opening a `FileDevice`: the checks that name what is wrong with a path, O_DIRECT or its
//! fallback, the alignment, and the claim on the device (`ownership`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use engine::DeviceRole;
use thiserror::Error;

use super::aligned_buf::AlignedBuf;
use super::{ownership, FileDevice, IoMode, DEVICE_GRAIN, SECTOR};

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("{path}: no such file or device")]
    NotFound { path: PathBuf },
    #[error("{path}: cannot open: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path}: is neither a regular file nor a block device")]
    NotFileOrBlockDevice { path: PathBuf },
    #[error("{path}: cannot determine its size: {source}")]
    Size { path: PathBuf, source: io::Error },
    #[error(
        "{path}: size {size} bytes is not a whole number of {SECTOR}-byte sectors, the unit \
         every device is addressed in"
    )]
    NotSectorMultiple { path: PathBuf, size: u64 },
    #[error(
        "{path}: size {size} bytes is not a whole number of {DEVICE_GRAIN}-byte blocks: a \
         backing device must be, since the cache keeps and writes back whole 4 KiB blocks \
         (a cache or plog device may be any whole number of {SECTOR}-byte sectors; the part \
         past its last whole segment or region is left unused)"
    )]
    BackingNotBlockMultiple { path: PathBuf, size: u64 },
    #[error("{path}: size {size} bytes is too small: at least {min} bytes are needed")]
    TooSmall { path: PathBuf, size: u64, min: u64 },
    #[error("{path}: logical block size {size} is not supported (512 or 4096 only)")]
    BlockSize { path: PathBuf, size: u64 },
    #[error("{path}: the {role} device is in use: {holder}; {}", in_use_advice(*writable))]
    InUse {
        path: PathBuf,
        role: DeviceRole,
        /// Whether we wanted to write it (else only to read it).
        writable: bool,
        /// Who holds it, as far as the OS says.
        holder: String,
    },
    #[error("{path}: cannot lock the {role} device: {source}")]
    Lock {
        path: PathBuf,
        role: DeviceRole,
        source: io::Error,
    },
}

fn in_use_advice(writable: bool) -> &'static str {
    if writable {
        "one process at a time may write a device: stop that one first (a running server \
         answers `wbcache status` and `wbcache message` meanwhile)"
    } else {
        "its content changes while it is written, so it is not read from here: stop the writer \
         first (a running server answers `wbcache status`)"
    }
}

// ioctl numbers from <linux/fs.h>: BLKSSZGET = _IO(0x12, 104), BLKGETSIZE64 = _IOR(0x12, 114,
// size_t). libc does not export them.
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// Opens `path`; `exclusive` adds O_EXCL, which for a block device is the kernel's exclusive
/// claim (EBUSY if mounted or claimed by another exclusive opener; see `ownership`).
fn open_file(path: &Path, direct: bool, writable: bool, exclusive: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(writable);
    let mut flags = 0;
    if direct {
        flags |= libc::O_DIRECT;
    }
    if exclusive {
        flags |= libc::O_EXCL;
    }
    o.custom_flags(flags);
    o.open(path)
}

/// Turns O_DIRECT off on an open file (`F_SETFL` may change it on Linux).
fn clear_o_direct(file: &File) -> io::Result<()> {
    // SAFETY: F_GETFL and F_SETFL take and return plain integers.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_DIRECT) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ioctl_u64(file: &File, req: libc::c_ulong) -> io::Result<u64> {
    let mut v: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer, which points to `v`.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), req as _, &mut v as *mut u64) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

fn ioctl_int(file: &File, req: libc::c_ulong) -> io::Result<u64> {
    let mut v: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int to the pointer, which points to `v`.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), req as _, &mut v as *mut libc::c_int) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v as u64)
}

impl FileDevice {
    /// Opens `path`, the `role` device of a set, for reading and writing, and claims it for
    /// this process alone while the device lives (`ownership`): another process that holds it
    /// is a [`DeviceError::InUse`] naming the device. `min_bytes`: the smallest size the caller
    /// accepts.
    pub fn open(
        path: &Path,
        role: DeviceRole,
        mode: IoMode,
        min_bytes: u64,
    ) -> Result<Self, DeviceError> {
        Self::open_with(path, role, mode, min_bytes, true)
    }

    /// Opens `path` for reading only (the offline `check` and `dump`): every write or flush
    /// through it fails, so an inspection cannot change the device even by mistake, and a
    /// read-only image can be inspected. The claim is shared: other readers may hold it too,
    /// a writer may not ([`DeviceError::InUse`]).
    pub fn open_read_only(
        path: &Path,
        role: DeviceRole,
        mode: IoMode,
    ) -> Result<Self, DeviceError> {
        Self::open_with(path, role, mode, 0, false)
    }

    fn open_with(
        path: &Path,
        role: DeviceRole,
        mode: IoMode,
        min_bytes: u64,
        writable: bool,
    ) -> Result<Self, DeviceError> {
        let p = || path.to_path_buf();
        let meta = std::fs::metadata(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => DeviceError::NotFound { path: p() },
            _ => DeviceError::Open { path: p(), source },
        })?;
        let ft = meta.file_type();
        let is_block = ft.is_block_device();
        if !ft.is_file() && !is_block {
            return Err(DeviceError::NotFileOrBlockDevice { path: p() });
        }
        let mut direct = mode == IoMode::DirectIfSupported;
        let exclusive = is_block && writable;
        let open_error = |source: io::Error| match source.raw_os_error() {
            Some(libc::EBUSY) if exclusive => DeviceError::InUse {
                path: p(),
                role,
                writable,
                holder: ownership::busy_block_device_holder(&meta),
            },
            _ => DeviceError::Open { path: p(), source },
        };
        let file = match open_file(path, direct, writable, exclusive) {
            Ok(f) => f,
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                eprintln!(
                    "wbcache: {}: O_DIRECT is not supported here; using buffered I/O",
                    path.display()
                );
                direct = false;
                open_file(path, false, writable, exclusive).map_err(open_error)?
            }
            Err(source) => return Err(open_error(source)),
        };
        // Claimed before the first read, so nothing is read from a device another process
        // is writing.
        ownership::claim(&file, path, role, writable)?;
        let size = if is_block {
            ioctl_u64(&file, BLKGETSIZE64)
                .map_err(|source| DeviceError::Size { path: p(), source })?
        } else {
            meta.len()
        };
        if size < min_bytes.max(DEVICE_GRAIN) {
            return Err(DeviceError::TooSmall {
                path: p(),
                size,
                min: min_bytes.max(DEVICE_GRAIN),
            });
        }
        // The format places whole segments (cache) and regions (plog) and leaves the rest
        // unused, as upstream does; only the backing device maps 1:1 onto 4 KiB cache blocks.
        if size % SECTOR != 0 {
            return Err(DeviceError::NotSectorMultiple { path: p(), size });
        }
        if role == DeviceRole::Backing && size % DEVICE_GRAIN != 0 {
            return Err(DeviceError::BackingNotBlockMultiple { path: p(), size });
        }
        let mut dev = FileDevice {
            file,
            path: p(),
            role,
            sectors: size / SECTOR,
            direct,
            align: 1,
            bounce: AlignedBuf::new(),
            busy_ns: 0,
            pool: None,
        };
        if direct {
            dev.align = if is_block {
                let lbs = ioctl_int(&dev.file, BLKSSZGET)
                    .map_err(|source| DeviceError::Size { path: p(), source })?;
                if lbs != 512 && lbs != 4096 {
                    return Err(DeviceError::BlockSize {
                        path: p(),
                        size: lbs,
                    });
                }
                lbs
            } else {
                dev.probe_file_alignment()
            };
            if dev.align == 0 {
                eprintln!(
                    "wbcache: {}: O_DIRECT reads fail at 512 and 4096 bytes; using buffered I/O",
                    path.display()
                );
                // O_DIRECT off on the same descriptor rather than a new open, which would
                // need a lock of its own and conflict with this one.
                clear_o_direct(&dev.file)
                    .map_err(|source| DeviceError::Open { path: p(), source })?;
                dev.direct = false;
                dev.align = 1;
            }
        }
        Ok(dev)
    }

    /// The smallest O_DIRECT unit the file's file system accepts (512 or 4096), or 0 if
    /// neither works.
    fn probe_file_alignment(&mut self) -> u64 {
        for unit in [512u64, 4096] {
            let buf = self.bounce.get(unit as usize);
            match self.file.read_exact_at(buf, 0) {
                Ok(()) => return unit,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
                // Some other error: the first real read will report it.
                Err(_) => return unit,
            }
        }
        0
    }
}
