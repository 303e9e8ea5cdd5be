//! Which backend serves a file or block device: io_uring where the kernel allows it, else the
//! thread pool. The probe runs once per server, before any device is started, so every device
//! of a set gets the same backend and the log says why.

use std::fmt;
use std::io;

use super::pool::Pooled;
use super::AsyncDevice;
use crate::filedev::FileDevice;

/// I/O threads per device under the thread pool: enough to keep an SSD's queue busy with a
/// client's queue depth of 32 split over the cache and the backing device plus writeback in
/// flight; each is a thread with a handle of its own.
pub const IO_THREADS: usize = 16;

/// `serve --io-engine`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IoEngine {
    /// io_uring if this kernel allows it, else the thread pool
    #[default]
    Auto,
    /// io_uring, or refuse to start, saying why it is unavailable
    Uring,
    /// a pool of 16 I/O threads per device, each doing one operation at a time
    Threads,
}

/// The backend every device of the server uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Uring,
    Threads,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Uring => "io_uring",
            Backend::Threads => "thread pool",
        })
    }
}

/// io_uring cannot be used here, and why.
#[derive(Debug, thiserror::Error)]
#[error("io_uring is unavailable: {source}{}", hint(source))]
pub struct UringUnavailable {
    pub source: io::Error,
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) => {
            " (forbidden by the sysctl kernel.io_uring_disabled or a seccomp filter, as in \
             some containers)"
        }
        Some(libc::ENOSYS) => " (the kernel was built without io_uring)",
        _ => "",
    }
}

/// The backend for `engine`, probing io_uring once. With `Auto` the reason io_uring was
/// passed over comes back for the log.
pub fn choose(engine: IoEngine) -> Result<(Backend, Option<UringUnavailable>), UringUnavailable> {
    choose_given(engine, probe_uring)
}

fn choose_given(
    engine: IoEngine,
    probe: impl FnOnce() -> io::Result<()>,
) -> Result<(Backend, Option<UringUnavailable>), UringUnavailable> {
    if engine == IoEngine::Threads {
        return Ok((Backend::Threads, None));
    }
    match (engine, probe()) {
        (IoEngine::Threads, _) => Ok((Backend::Threads, None)),
        (_, Ok(())) => Ok((Backend::Uring, None)),
        (IoEngine::Auto, Err(source)) => Ok((Backend::Threads, Some(UringUnavailable { source }))),
        (IoEngine::Uring, Err(source)) => Err(UringUnavailable { source }),
    }
}

#[cfg(all(target_os = "linux", not(loom)))]
fn probe_uring() -> io::Result<()> {
    super::uring::probe()
}

#[cfg(not(all(target_os = "linux", not(loom))))]
fn probe_uring() -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "io_uring is Linux only",
    ))
}

/// `dev`'s operations on `backend`; `name` names its threads.
pub fn start(dev: &FileDevice, name: &str, backend: Backend) -> io::Result<Box<dyn AsyncDevice>> {
    match backend {
        #[cfg(all(target_os = "linux", not(loom)))]
        Backend::Uring => Ok(Box::new(super::uring::Uring::start(dev, name)?)),
        #[cfg(not(all(target_os = "linux", not(loom))))]
        Backend::Uring => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring is Linux only",
        )),
        Backend::Threads => Ok(Box::new(Pooled::start(
            dev.handles(IO_THREADS)?,
            engine::BlockDevice::size_sectors(dev),
            name,
        )?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_and_uring_refuses_with_the_reason() {
        let eperm = || Err(io::Error::from_raw_os_error(libc::EPERM));
        let (b, why) = choose_given(IoEngine::Auto, eperm).unwrap();
        assert_eq!(b, Backend::Threads);
        assert!(why.unwrap().to_string().contains("io_uring_disabled"));
        let e = choose_given(IoEngine::Uring, eperm)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("io_uring is unavailable: ") && e.contains("seccomp"),
            "{e}"
        );
        let enosys = || Err(io::Error::from_raw_os_error(libc::ENOSYS));
        let e = choose_given(IoEngine::Uring, enosys)
            .unwrap_err()
            .to_string();
        assert!(e.contains("without io_uring"), "{e}");
        let works = || Ok(());
        assert_eq!(
            choose_given(IoEngine::Auto, works).unwrap().0,
            Backend::Uring
        );
        assert_eq!(
            choose_given(IoEngine::Uring, works).unwrap().0,
            Backend::Uring
        );
        let never = || -> io::Result<()> { panic!("threads needs no probe") };
        assert_eq!(
            choose_given(IoEngine::Threads, never).unwrap().0,
            Backend::Threads
        );
    }
}
