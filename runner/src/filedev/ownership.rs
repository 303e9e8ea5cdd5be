//! One owner per device: a process that writes a device holds it alone; readers share it.
//!
//! Two `wbcache serve` on one cache device would each replay the log, then each overwrite the
//! other's segments, and both would still report a clean shutdown. So every device of a set
//! (cache, backing, plog) is claimed when it is opened and stays claimed for the life of its
//! `FileDevice`:
//!
//! - An open-file-description lock (`F_OFD_SETLK`, the lock qemu takes on its images) over the
//!   whole file: a write lock for a read-write open, a read lock for a read-only one (`check`,
//!   `dump`), so readers share a device with each other but not with a writer. An OFD lock
//!   belongs to the open file description, not to the process as a POSIX `F_SETLK` lock does
//!   (which any `close` of the same file in the process would drop): it lives exactly as long
//!   as the device's descriptor and its duplicates (the I/O threads' handles), and two opens in
//!   one process conflict like two processes.
//! - A block device opened read-write is also opened with `O_EXCL` (see `open_file`): the
//!   kernel's own claim, which also refuses a device that is mounted, part of a device-mapper
//!   or md device, or held by another exclusive opener such as `mkfs`.
//!
//! The locks are advisory: they keep wbcache processes (and qemu) from each other, not a
//! program that ignores locks. A file system without OFD locks gets a one-line notice and no
//! lock, as one without O_DIRECT gets buffered I/O.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use engine::DeviceRole;

use super::DeviceError;

/// How long a lock that no live process holds is waited for (see `claim`).
const DEAD_HOLDER_GRACE: Duration = Duration::from_secs(1);

fn flock_of(kind: libc::c_int) -> libc::flock {
    // SAFETY: `flock` is a plain C struct of integers; all zeros is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // l_start = 0, l_len = 0: the whole file, however it grows. l_pid must be 0 for OFD locks.
    fl
}

/// Claims `file` (opened from `path`) for writing or reading, without waiting.
pub(super) fn claim(
    file: &File,
    path: &Path,
    role: DeviceRole,
    writable: bool,
) -> Result<(), DeviceError> {
    let fl = flock_of(if writable {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    });
    let started = Instant::now();
    let e = loop {
        // SAFETY: F_OFD_SETLK reads one `flock`, which `fl` is.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        // A process killed with io_uring operations in flight lets go of its files only when
        // the kernel has torn its ring down, a few milliseconds after the process is gone
        // (measured: up to 20 ms after kill -9 and wait). A lock no live process holds is
        // that, so it is tried again for a while; a live holder is reported at once.
        let lingering = matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES))
            && started.elapsed() < DEAD_HOLDER_GRACE
            && file
                .metadata()
                .is_ok_and(|m| ofd_lock_holders(m.dev(), m.ino()).is_empty());
        if !lingering {
            break e;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EACCES) => Err(DeviceError::InUse {
            path: path.to_path_buf(),
            role,
            writable,
            holder: holder_of(file, writable),
        }),
        Some(libc::EINVAL | libc::ENOLCK | libc::EOPNOTSUPP) => {
            eprintln!(
                "wbcache: {}: the file system does not support open-file-description locks; \
                 using the {role} device without one (nothing stops a second process from \
                 opening it)",
                path.display()
            );
            Ok(())
        }
        _ => Err(DeviceError::Lock {
            path: path.to_path_buf(),
            role,
            source: e,
        }),
    }
}

/// Who holds the lock that keeps us out, as far as the OS says: the kind of the conflicting
/// lock (`F_OFD_GETLK`, whose `l_pid` is always -1 for OFD locks, as in `/proc/locks`) and the
/// processes whose open files carry an OFD lock on the same file (`/proc/PID/fdinfo`, which
/// lists the locks each open file owns; readable for our own user's processes, or all as root).
fn holder_of(file: &File, writable: bool) -> String {
    let mut fl = flock_of(if writable {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    });
    // SAFETY: F_OFD_GETLK reads and writes one `flock`, which `fl` is.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    let how = match (r, fl.l_type as libc::c_int) {
        (0, libc::F_RDLCK) => "holds it for reading",
        (0, libc::F_WRLCK) => "holds it for writing",
        _ => "holds a lock on it",
    };
    let pids = file
        .metadata()
        .map(|m| ofd_lock_holders(m.dev(), m.ino()))
        .unwrap_or_default();
    let who = if pids.is_empty() {
        "another process".to_string()
    } else {
        pids.iter()
            .map(|&pid| describe_pid(pid))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("{who} {how}")
}

/// Who keeps a block device busy (its exclusive open failed with EBUSY): the processes with an
/// OFD lock on its device node (another wbcache), else what the kernel's EBUSY means.
pub(super) fn busy_block_device_holder(node: &std::fs::Metadata) -> String {
    let pids = ofd_lock_holders(node.dev(), node.ino());
    if pids.is_empty() {
        "the kernel reports it busy (mounted, part of a device-mapper or md device, or opened \
         exclusively by another process)"
            .to_string()
    } else {
        let who: Vec<String> = pids.iter().map(|&pid| describe_pid(pid)).collect();
        format!("{} holds it (exclusive open)", who.join(", "))
    }
}

/// `pid N (command line)`, or just `pid N` when the command line cannot be read.
fn describe_pid(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|w| !w.is_empty())
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|c| !c.is_empty());
    let own = pid == std::process::id();
    match (cmdline, own) {
        (Some(c), false) => format!("pid {pid} ({c})"),
        (Some(c), true) => format!("pid {pid} ({c}; this process)"),
        (None, false) => format!("pid {pid}"),
        (None, true) => format!("pid {pid} (this process)"),
    }
}

/// The processes with an open file that owns an OFD lock on the file `dev:ino`, from
/// `/proc/*/fdinfo/*`. Processes and files that vanish or cannot be read are passed over:
/// this only names the holder in an error message.
fn ofd_lock_holders(dev: u64, ino: u64) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fdinfo")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_to_string(fd.path()).is_ok_and(|t| fdinfo_owns_ofd_lock(&t, dev, ino))
        });
        if holds {
            pids.push(pid);
        }
    }
    pids
}

/// Whether an fdinfo text lists an OFD lock on `dev:ino`: a line such as
/// `lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:10028061 0 EOF` (device numbers in hex, as in
/// `/proc/locks`).
pub(super) fn fdinfo_owns_ofd_lock(fdinfo: &str, dev: u64, ino: u64) -> bool {
    let id = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    fdinfo.lines().any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.first() == Some(&"lock:") && f.get(2) == Some(&"OFDLCK") && f.get(6) == Some(&id.as_str())
    })
}

/// Whether two paths name the same file or block device (through symlinks, and for block
/// devices also through two device nodes of one device). Paths that cannot be looked at are
/// not the same: opening them reports why.
pub fn same_device(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => {
            let block = x.file_type().is_block_device() && y.file_type().is_block_device();
            (x.dev(), x.ino()) == (y.dev(), y.ino()) || (block && x.rdev() == y.rdev())
        }
        _ => false,
    }
}
