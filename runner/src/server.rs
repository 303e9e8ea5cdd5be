//! `wbcache serve`: recover the cache, then serve it over NBD until SIGTERM/SIGINT.
//!
//! Threads: the main thread accepts NBD clients; one thread per client connection (plus its
//! reply writer); one control-socket thread; one engine thread that owns the cache. Shutdown:
//! stop accepting, stop reading from every client (in-flight requests still finish and are
//! answered), stop the control thread, close the job queue, and the engine thread shuts the
//! cache down cleanly (seal, make durable, record) before the process exits 0.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread::{self, JoinHandle};

use anyhow::{bail, Context};
use engine::{Config, DeviceRole, FormatPolicy, RecoveryReport, SyncEngine};

use crate::device::{Device, DeviceSpec};
use crate::engine_thread::{self, MonotonicClock, JOB_QUEUE_CAPACITY};
use crate::events::Events;
use crate::executor::select::{self, Backend, IoEngine};
use crate::executor::{AsyncDevice, Executor};
use crate::filedev::{FileDevice, IoMode};
use crate::nbd::conn::{self, ConnEnd, Stream};
use crate::nbd::proto::Export;
// The request path's Arc (loom's under `--cfg loom`); the rest of this file is plain std.
use crate::sync::Arc;
use crate::{control, log_line, signals};

/// Client connections served at once; more are accepted and closed with a log line.
pub const MAX_CONNECTIONS: usize = 64;
/// How often accept loops look at the stop flag.
const POLL_MS: i32 = 100;

/// Where NBD clients connect.
#[derive(Clone, Debug)]
pub enum Listen {
    Unix(PathBuf),
    /// `--listen` as given and the addresses it resolved to (the first that binds is used).
    Tcp {
        given: String,
        addrs: Vec<SocketAddr>,
    },
}

pub struct ServeOptions {
    pub backing: DeviceSpec,
    pub cache: DeviceSpec,
    /// The persistent-log device of a type-1 cache.
    pub plog: Option<DeviceSpec>,
    pub listen: Listen,
    pub control: PathBuf,
    /// Tunables given on the command line, already range-checked.
    pub tunables: Vec<(&'static str, u64)>,
    pub nr_rambuf_pool: usize,
    pub io_mode: IoMode,
    pub io_engine: IoEngine,
    /// [`engine::Config::write_back_ahead`]: off, writeback waits until a slot is needed.
    pub write_back_ahead: bool,
}

/// Binds a Unix socket at `path`; a stale socket file (nobody answering) is replaced, a live
/// one or any other file is an error.
pub fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            );
        }
        if UnixStream::connect(path).is_ok() {
            bail!("{} is in use by a running server", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))
}

/// The recovery report in words.
pub fn describe_recovery(r: &RecoveryReport, order: u8, nr_segments: u64) -> Vec<String> {
    let mut v = Vec::new();
    v.push(if r.upstream_image {
        format!(
            "cache device holds an upstream dm-writeboost image (order 10, {nr_segments} segments)"
        )
    } else {
        format!(
            "cache device holds a wbcache image (segment order {order}, {nr_segments} segments)"
        )
    });
    if r.formatted {
        v.push("the cache device was formatted".into());
    }
    v.push(format!(
        "superblock record: segments up to id {} are written back",
        r.record
    ));
    if r.segments_applied == 0 {
        v.push("no segment to replay: the log is empty past the record".into());
    } else {
        v.push(format!(
            "replayed {} segment(s), ids {}..={}",
            r.segments_applied,
            r.record + 1,
            r.last_applied
        ));
    }
    if let Some(why) = &r.stop_reason {
        v.push(format!("replay stopped there because {why}"));
    }
    if r.stale_invalidated > 0 {
        v.push(format!(
            "invalidated {} stale segment header(s) past the end of the log",
            r.stale_invalidated
        ));
    }
    if r.plog_epoch != 0 {
        // Type 1: the segments and entries only the plog held.
        v.push(format!(
            "plog: rebuilt {} segment(s) from {} plog entries, voided {} region(s) past the \
             end; plog now at epoch {}",
            r.plog_segments_rebuilt, r.plog_entries_replayed, r.plog_regions_voided, r.plog_epoch
        ));
    }
    v.push(format!(
        "{} dirty block(s) in the cache; recovery read {} bytes and wrote {} bytes",
        r.dirty_blocks, r.bytes_read, r.bytes_written
    ));
    v
}

/// An engine error on open, in the operator's words: what is wrong and which flag fixes it.
pub fn explain_open_error(
    e: engine::Error,
    cache: &DeviceSpec,
    plog: Option<&DeviceSpec>,
) -> anyhow::Error {
    let c = cache;
    match (&e, plog) {
        (engine::Error::Unformatted, _) => {
            anyhow::anyhow!("{c}: {e}; run `wbcache format --cache {c}` first")
        }
        (engine::Error::UnknownContent | engine::Error::InterruptedFormat, _) => anyhow::anyhow!(
            "{c}: {e}; to format it anyway (destroying what it holds): `wbcache format --force \
             --cache {c}`"
        ),
        (engine::Error::PlogMissing, _) => anyhow::anyhow!(
            "{c}: {e}: it was formatted with a persistent log (type 1); give its plog device \
             with --plog P"
        ),
        (engine::Error::PlogUnexpected, Some(p)) => anyhow::anyhow!(
            "{c}: {e}; drop --plog {p} (or format the cache with --plog to make it type 1)"
        ),
        (
            engine::Error::PlogMismatch { .. }
            | engine::Error::PlogResized { .. }
            | engine::Error::PlogGeometry(_)
            | engine::Error::Corrupt {
                role: engine::DeviceRole::Plog,
                ..
            }
            | engine::Error::Io {
                role: engine::DeviceRole::Plog,
                ..
            },
            Some(p),
        ) => anyhow::anyhow!("{p}: {e}"),
        _ => anyhow::anyhow!("{c}: {e}"),
    }
}

/// The devices of a set, opened (files claimed for this process, `filedev::ownership`; NBD
/// exports connected), not yet recovered.
pub struct DeviceSet {
    pub cache: Device,
    pub backing: Device,
    pub plog: Option<Device>,
    /// As named on the command line, for messages.
    pub cache_spec: DeviceSpec,
    pub plog_spec: Option<DeviceSpec>,
}

/// Refuses two flags that name one device: each device of a set is claimed once, and a
/// cache that is also its own backing device (or plog) would overwrite itself.
pub fn refuse_shared_devices(devices: &[(&str, Option<&DeviceSpec>)]) -> anyhow::Result<()> {
    let given: Vec<(&str, &DeviceSpec)> = devices
        .iter()
        .filter_map(|&(flag, p)| p.map(|p| (flag, p)))
        .collect();
    for (i, &(flag_a, a)) in given.iter().enumerate() {
        for &(flag_b, b) in &given[i + 1..] {
            if a.same_device(b) {
                bail!(
                    "{flag_a} {a} and {flag_b} {b} are the same device; each role needs a \
                     device of its own"
                );
            }
        }
    }
    Ok(())
}

/// Opens the devices of a set for reading and writing: files are claimed, so another process
/// that holds any of them is an error naming it, and nothing is read or written then; NBD
/// exports are connected (NBD cannot claim an export).
pub fn open_devices(
    backing: &DeviceSpec,
    cache: &DeviceSpec,
    plog: Option<&DeviceSpec>,
    io_mode: IoMode,
) -> anyhow::Result<DeviceSet> {
    refuse_shared_devices(&[
        ("--cache", Some(cache)),
        ("--backing", Some(backing)),
        ("--plog", plog),
    ])?;
    let cache_dev = Device::open(cache, DeviceRole::Cache, io_mode, 0)?;
    let backing_dev = Device::open(backing, DeviceRole::Backing, io_mode, 0)?;
    let plog_dev = match plog {
        Some(p) => Some(Device::open(p, DeviceRole::Plog, io_mode, 0)?),
        None => None,
    };
    Ok(DeviceSet {
        cache: cache_dev,
        backing: backing_dev,
        plog: plog_dev,
        cache_spec: cache.clone(),
        plog_spec: plog.cloned(),
    })
}

/// Recovers the cache of an opened set (never formats).
pub fn recover(
    devices: DeviceSet,
    nr_rambuf_pool: usize,
    write_back_ahead: bool,
) -> anyhow::Result<(SyncEngine<Device>, RecoveryReport)> {
    let cfg = Config {
        nr_rambuf_pool,
        format: FormatPolicy::Never,
        write_back_ahead,
        ..Config::default()
    };
    let (cache, plog) = (devices.cache_spec, devices.plog_spec);
    SyncEngine::open_with_plog(devices.cache, devices.backing, devices.plog, cfg)
        .map_err(|e| explain_open_error(e, &cache, plog.as_ref()))
}

/// Opens the devices (files or NBD exports; with the plog of a type-1 cache) and recovers the
/// cache (never formats).
pub fn open_engine(
    backing: &DeviceSpec,
    cache: &DeviceSpec,
    plog: Option<&DeviceSpec>,
    io_mode: IoMode,
    nr_rambuf_pool: usize,
) -> anyhow::Result<(SyncEngine<Device>, RecoveryReport)> {
    recover(
        open_devices(backing, cache, plog, io_mode)?,
        nr_rambuf_pool,
        true,
    )
}

/// A device's operations as an [`AsyncDevice`]: a file on the backend chosen for the server
/// (the log says which), an NBD export through its own connection (`nbd::client::asyncdev`).
/// A file comes back too: it must stay open while its I/O threads or ring use it (its
/// handles share its open file, so the ownership lock holds as long as it lives).
fn start_device(
    dev: Device,
    name: &str,
    backend: Backend,
) -> anyhow::Result<(Box<dyn AsyncDevice>, Option<FileDevice>)> {
    let dev = match dev {
        Device::File(f) => f,
        Device::Nbd(n) => {
            log_line(&format!(
                "{name} device {}: I/O through its NBD connection",
                n.uri()
            ));
            return Ok((Box::new(n), None));
        }
    };
    let started = select::start(&dev, name, backend).with_context(|| {
        format!(
            "{name} device {}: starting its {backend} executor",
            dev.path().display()
        )
    })?;
    log_line(&format!(
        "{name} device {}: I/O through {}",
        dev.path().display(),
        match backend {
            Backend::Uring => "io_uring",
            Backend::Threads => "a pool of I/O threads",
        }
    ));
    Ok((started, Some(dev)))
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn fd(&self) -> i32 {
        match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }
    fn accept(&self) -> std::io::Result<(Box<dyn Stream>, String)> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| (Box::new(s) as _, "unix".into())),
            Listener::Tcp(l) => l.accept().map(|(s, a)| {
                let _ = s.set_nodelay(true);
                (Box::new(s) as _, a.to_string())
            }),
        }
    }
}

fn control_loop(listener: UnixListener, jobs: Arc<Events>, stop: Arc<AtomicBool>) {
    // Ends when the server stops.
    while !stop.load(Ordering::SeqCst) {
        if !signals::wait_readable(listener.as_raw_fd(), POLL_MS) {
            continue;
        }
        match listener.accept() {
            Ok((s, _)) => {
                if let Err(e) = control::serve_connection(s, &jobs) {
                    log_line(&format!("control connection: {e}"));
                }
            }
            Err(e) => log_line(&format!("control accept: {e}")),
        }
    }
}

pub fn run(opts: ServeOptions) -> anyhow::Result<()> {
    signals::install();
    // The backend is settled before anything is claimed: `--io-engine uring` where io_uring is
    // unavailable stops here.
    let backend = match select::choose(opts.io_engine) {
        Ok((backend, passed_over)) => {
            if let Some(why) = passed_over {
                log_line(&format!("{why}; using a pool of I/O threads per device"));
            }
            backend
        }
        Err(e) => bail!("--io-engine uring: {e}; use --io-engine threads (or auto)"),
    };
    // The devices are claimed first: a second server on a device in use stops here, before it
    // touches a socket or reads a byte.
    let devices = open_devices(&opts.backing, &opts.cache, opts.plog.as_ref(), opts.io_mode)?;
    let listener = match &opts.listen {
        Listen::Unix(p) => Listener::Unix(bind_unix(p)?),
        Listen::Tcp { given, addrs } => Listener::Tcp(
            TcpListener::bind(&addrs[..]).with_context(|| format!("binding {given}"))?,
        ),
    };
    let remove_nbd_socket = || {
        if let Listen::Unix(p) = &opts.listen {
            let _ = std::fs::remove_file(p);
        }
    };
    let control_listener = match control::bind(&opts.control) {
        Ok(l) => l,
        Err(e) => {
            remove_nbd_socket();
            return Err(anyhow::anyhow!(
                "control socket: {e:#}; each server needs a control socket of its own: give \
                 this one another with --control PATH (and the same --control to `wbcache \
                 status` and `message`)"
            ));
        }
    };
    let cleanup = || {
        remove_nbd_socket();
        let _ = std::fs::remove_file(&opts.control);
    };
    let opened = recover(devices, opts.nr_rambuf_pool, opts.write_back_ahead);
    let (mut engine, report) = match opened {
        Ok(x) => x,
        Err(e) => {
            cleanup();
            return Err(e);
        }
    };
    let geo = engine.geometry();
    for line in describe_recovery(&report, geo.order, geo.nr_segments) {
        log_line(&line);
    }
    for &(name, value) in &opts.tunables {
        engine
            .set_tunable(name, value)
            .expect("tunables were range-checked before opening");
    }
    let devices = [
        Some((engine.cache_device(), "cache")),
        Some((engine.backing_device(), "backing")),
        engine.plog_device().map(|d| (d, "plog")),
    ];
    for (dev, name) in devices.into_iter().flatten() {
        log_line(&format!("{name} device {}", dev.describe()));
    }
    let export = Export {
        size_bytes: engine.size_sectors() * 512,
    };

    // From here the engine thread drives the engine; the devices' I/O threads perform its
    // operations (the file handles share the devices' open files, so the ownership locks hold
    // as long as the devices live).
    let (engine, cache_dev, backing_dev, plog_dev) = engine.into_parts();
    let jobs = Arc::new(Events::new(JOB_QUEUE_CAPACITY));
    let (cache_io, cache_dev) = start_device(cache_dev, "cache", backend)?;
    let (backing_io, backing_dev) = start_device(backing_dev, "backing", backend)?;
    let (plog_io, plog_dev) = match plog_dev {
        Some(d) => {
            let (io, file) = start_device(d, "plog", backend)?;
            (Some(io), file)
        }
        None => (None, None),
    };
    let exec = Executor::new(jobs.clone(), cache_io, backing_io, plog_io);
    let engine_thread = {
        let jobs = jobs.clone();
        thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                let r = engine_thread::run(engine, &exec, &jobs, &MonotonicClock::new(), &log_line);
                // The I/O threads finish and stop (an NBD device finishes what is outstanding
                // and disconnects) before the device files close.
                drop(exec);
                drop((cache_dev, backing_dev, plog_dev));
                r
            })?
    };
    let stop = Arc::new(AtomicBool::new(false));
    let control_thread = {
        let (jobs, stop) = (jobs.clone(), stop.clone());
        thread::Builder::new()
            .name("control".into())
            .spawn(move || control_loop(control_listener, jobs, stop))?
    };
    match &opts.listen {
        Listen::Unix(p) => log_line(&format!(
            "serving {} bytes over NBD on unix socket {} (control: {})",
            export.size_bytes,
            p.display(),
            opts.control.display()
        )),
        Listen::Tcp { given, .. } => {
            // The address actually bound: with port 0 the system picks one, and a client needs it.
            let bound = match &listener {
                Listener::Tcp(l) => l
                    .local_addr()
                    .map_or_else(|_| given.clone(), |x| x.to_string()),
                Listener::Unix(_) => given.clone(),
            };
            log_line(&format!(
                "serving {} bytes over NBD on {bound} (control: {})",
                export.size_bytes,
                opts.control.display()
            ))
        }
    }

    let conns: Arc<Mutex<BTreeMap<u64, Box<dyn Stream>>>> = Arc::default();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id = 0u64;
    // Ends at SIGTERM/SIGINT.
    while !signals::stop_requested() {
        threads.retain(|t| !t.is_finished());
        if !signals::wait_readable(listener.fd(), POLL_MS) {
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) => {
                log_line(&format!("accept: {e}"));
                continue;
            }
        };
        if threads.len() >= MAX_CONNECTIONS {
            log_line(&format!(
                "refusing client {peer}: {MAX_CONNECTIONS} connections already"
            ));
            continue;
        }
        let id = next_id;
        next_id += 1;
        match stream.try_clone_stream() {
            Ok(c) => {
                conns.lock().unwrap().insert(id, c);
            }
            Err(e) => {
                log_line(&format!("client {peer}: {e}"));
                continue;
            }
        }
        let (jobs, conns) = (jobs.clone(), conns.clone());
        threads.push(
            thread::Builder::new()
                .name(format!("nbd-{id}"))
                .spawn(move || {
                    let end = conn::serve(stream, jobs, export, &log_line);
                    conns.lock().unwrap().remove(&id);
                    match end {
                        ConnEnd::Disconnected => {}
                        end => log_line(&format!("client {peer} (connection {id}): {end}")),
                    }
                })?,
        );
    }

    log_line("stopping: no new clients; finishing requests in flight");
    for s in conns.lock().unwrap().values() {
        s.shutdown_stream(false);
    }
    for t in threads {
        let _ = t.join();
    }
    stop.store(true, Ordering::SeqCst);
    let _ = control_thread.join();
    jobs.close();
    let result = engine_thread.join().expect("engine thread panicked");
    cleanup();
    match result {
        Ok(()) => {
            log_line("clean shutdown: everything acknowledged is durable and recorded");
            Ok(())
        }
        Err(e) => bail!("shutdown failed: {e}; the next start replays the log"),
    }
}
