//! `NbdDevice`: a block device on an NBD server (issue 17), so the backing, cache and plog
//! devices can be NBD exports (`nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`).
//!
//! - Handshake (`handshake`): fixed newstyle, `NBD_OPT_GO` with a request for the block size
//!   constraints (which the client then honours), `NBD_OPT_EXPORT_NAME` as the fallback. Simple
//!   replies only. One connection per device.
//! - Requests (`submit`): many in flight, replies in any order, matched by handle. A request
//!   larger than the server's maximum payload (at most 32 MiB here) is split into pieces sent
//!   together; `done` is called once, with the whole request's outcome. A FUA write carries
//!   `NBD_CMD_FLAG_FUA` where the server offers it, else it is written and then flushed
//!   (a FLUSH covers the writes the server replied to before it). TRIM is a hint: sent where
//!   the server offers it, otherwise a success that does nothing.
//! - Bounds: at most `window` pieces (64) and `WINDOW_BYTES` of payload in flight; at most
//!   `window` more queued before `submit` blocks (back-pressure); `submit_nowait`, the
//!   executor's path (`asyncdev`), never blocks and leaves the bound to its caller; read
//!   replies are exactly the length asked for; option replies and their number are bounded
//!   (`wire`, `handshake`).
//! - Two faces: `asyncdev`, the executor's `AsyncDevice` (what `serve` runs on), and
//!   `blockdev`, the synchronous `engine::BlockDevice` (recovery and the offline tools).
//! - Failure: an error reply fails its request (the device lives on); a transport error, a
//!   protocol violation (a reply for a handle not in flight, a bad magic, …) or no reply for
//!   `reply_timeout` with requests outstanding makes the device dead: every pending and later
//!   request fails with an `IoError` naming the device and the cause, none hangs.
//! - Requirements checked at connect: the export is a non-zero multiple of 4 KiB; its
//!   minimum block size is at most 512 (the engine writes single sectors); for read-write use
//!   it is not read-only and it supports FLUSH (see `NbdClientError::NoFlush` for why every
//!   role needs it).
//! - Drop ends the session cleanly: waits for what is outstanding, then `NBD_CMD_DISC`.

use std::io;
use std::ops::Deref;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use engine::device::check_access;
use engine::{Access, DeviceRole, IoError};
use thiserror::Error;

use crate::nbd::proto::{
    CMD_FLAG_FUA, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE, FLAG_SEND_FLUSH, FLAG_SEND_FUA,
    FLAG_SEND_TRIM, MAX_PAYLOAD,
};

mod asyncdev;
mod blockdev;
mod handshake;
mod sock;
mod transport;
pub mod uri;
pub mod wire;

pub use handshake::HandshakeError;
use sock::Sock;
pub use transport::{Done, Outcome};
use transport::{Joint, Piece, Shared};
pub use uri::{looks_like_nbd_uri, NbdAddr, NbdUri, UriError};
use wire::BlockSizes;

const SECTOR: u64 = 512;
/// A backing device is a whole number of these (the engine's block; as for files, a cache or
/// plog device need only be a whole number of sectors), and no device is smaller.
pub const DEVICE_GRAIN: u64 = 4096;
/// Payload bytes in flight at most (as a server connection allows a client, `conn.rs`).
pub const WINDOW_BYTES: u64 = 64 << 20;
/// How long connecting and the handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes a write can send from without a copy: `Vec<u8>`, `Arc<[u8]>`, the engine's shared
/// write buffers — anything that derefs to bytes.
pub trait Payload: Send + Sync + 'static {
    fn bytes(&self) -> &[u8];
}

impl<T: Deref<Target = [u8]> + Send + Sync + 'static> Payload for T {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// One request, in 512-byte sectors.
pub enum NbdReq {
    Read {
        sector: u64,
        len: usize,
    },
    Write {
        sector: u64,
        data: Arc<dyn Payload>,
        fua: bool,
    },
    Flush,
    Trim {
        sector: u64,
        sectors: u64,
    },
}

impl NbdReq {
    pub fn write(sector: u64, data: impl Payload, fua: bool) -> NbdReq {
        NbdReq::Write {
            sector,
            data: Arc::new(data),
            fua,
        }
    }
}

/// How to use a connection.
#[derive(Clone, Debug)]
pub struct NbdOptions {
    /// Refuse writes, flushes and trims (the offline inspections); a read-only export or one
    /// without FLUSH is then acceptable.
    pub read_only: bool,
    /// Pieces in flight at most; as many more may wait before `submit` blocks.
    pub window: usize,
    /// With requests outstanding, this long without a byte from the server kills the device.
    pub reply_timeout: Duration,
}

impl Default for NbdOptions {
    fn default() -> Self {
        NbdOptions {
            read_only: false,
            window: 64,
            // A healthy server answers in milliseconds; a minute covers a slow flush of a big
            // volatile cache, and a dead server (power, network) is noticed without a kill.
            reply_timeout: Duration::from_secs(60),
        }
    }
}

/// What the server said about the export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    pub size_bytes: u64,
    /// Transmission flags (`proto::FLAG_*`, `wire::FLAG_READ_ONLY`).
    pub flags: u16,
    pub sizes: BlockSizes,
    /// Negotiated with `NBD_OPT_GO` (else the `NBD_OPT_EXPORT_NAME` fallback).
    pub go: bool,
}

impl ExportInfo {
    pub fn can_flush(&self) -> bool {
        self.flags & FLAG_SEND_FLUSH != 0
    }
    pub fn can_fua(&self) -> bool {
        self.flags & FLAG_SEND_FUA != 0
    }
    pub fn can_trim(&self) -> bool {
        self.flags & FLAG_SEND_TRIM != 0
    }
    pub fn read_only(&self) -> bool {
        self.flags & wire::FLAG_READ_ONLY != 0
    }
}

#[derive(Debug, Error)]
pub enum NbdClientError {
    #[error(transparent)]
    Uri(#[from] UriError),
    // The causes are fields, not `source`s: the message already says them, once.
    #[error("{uri}: cannot connect: {error}")]
    Connect { uri: String, error: io::Error },
    #[error("{uri}: NBD handshake failed: {error}")]
    Handshake { uri: String, error: HandshakeError },
    #[error(
        "{uri}: export size {size} bytes is not a whole number of {SECTOR}-byte sectors of at \
         least {DEVICE_GRAIN} bytes"
    )]
    Size { uri: String, size: u64 },
    #[error(
        "{uri}: export size {size} bytes is not a whole number of {DEVICE_GRAIN}-byte blocks: a \
         backing device must be, since the cache keeps and writes back whole 4 KiB blocks"
    )]
    BackingSize { uri: String, size: u64 },
    #[error(
        "{uri}: the server's minimum block size is {min} bytes; the engine writes single \
         512-byte sectors, so at most 512 is supported"
    )]
    BlockSize { uri: String, min: u32 },
    #[error("{uri}: the export is read-only, but a {role} device must be writable")]
    ReadOnly { uri: String, role: DeviceRole },
    #[error(
        "{uri}: the server does not support FLUSH (no NBD_FLAG_SEND_FLUSH), so nothing written \
         to it can be made durable; a {role} device needs that (the cache and plog for every \
         acknowledged write, the backing device before writeback is recorded as done). Use a \
         server or plugin that supports flush"
    )]
    NoFlush { uri: String, role: DeviceRole },
}

/// A block device on an NBD export. `Send + Sync`: `submit` may be called from any thread.
pub struct NbdDevice {
    shared: Arc<Shared>,
    info: ExportInfo,
    role: DeviceRole,
    uri: String,
    read_only: bool,
    /// Largest piece: the server's maximum payload, at most 32 MiB, whole sectors.
    max_piece: u64,
    writer: Option<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
}

impl NbdDevice {
    /// Connects for reading and writing (see the module doc for what is refused).
    pub fn connect(uri: &NbdUri, role: DeviceRole) -> Result<NbdDevice, NbdClientError> {
        Self::connect_with(uri, role, &NbdOptions::default())
    }

    pub fn connect_with(
        uri: &NbdUri,
        role: DeviceRole,
        opts: &NbdOptions,
    ) -> Result<NbdDevice, NbdClientError> {
        let sock = Sock::connect(&uri.addr, HANDSHAKE_TIMEOUT).map_err(|source| {
            NbdClientError::Connect {
                uri: uri.to_string(),
                error: source,
            }
        })?;
        Self::start(sock, &uri.to_string(), &uri.export, role, opts)
    }

    /// The same over an already connected Unix socket (a socket pair in tests); `uri` only
    /// names the device in messages.
    pub fn over_unix_stream(
        stream: UnixStream,
        uri: &str,
        export: &str,
        role: DeviceRole,
        opts: &NbdOptions,
    ) -> Result<NbdDevice, NbdClientError> {
        Self::start(Sock::Unix(stream), uri, export, role, opts)
    }

    fn start(
        mut sock: Sock,
        uri: &str,
        export: &str,
        role: DeviceRole,
        opts: &NbdOptions,
    ) -> Result<NbdDevice, NbdClientError> {
        let io_err = |e| NbdClientError::Handshake {
            uri: uri.to_string(),
            error: HandshakeError::Io(e),
        };
        sock.set_timeouts(Some(HANDSHAKE_TIMEOUT)).map_err(io_err)?;
        let n = handshake::run(&mut sock, export).map_err(|e| NbdClientError::Handshake {
            uri: uri.to_string(),
            error: match e {
                HandshakeError::Io(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    HandshakeError::Timeout(HANDSHAKE_TIMEOUT)
                }
                other => other,
            },
        })?;
        let info = ExportInfo {
            size_bytes: n.size_bytes,
            flags: n.flags,
            sizes: n.sizes,
            go: n.go,
        };
        let u = || uri.to_string();
        let refusal = if info.size_bytes < DEVICE_GRAIN || info.size_bytes % SECTOR != 0 {
            Some(NbdClientError::Size {
                uri: u(),
                size: info.size_bytes,
            })
        } else if role == DeviceRole::Backing && info.size_bytes % DEVICE_GRAIN != 0 {
            Some(NbdClientError::BackingSize {
                uri: u(),
                size: info.size_bytes,
            })
        } else if info.sizes.min > SECTOR as u32 {
            Some(NbdClientError::BlockSize {
                uri: u(),
                min: info.sizes.min,
            })
        } else if !opts.read_only && info.read_only() {
            Some(NbdClientError::ReadOnly { uri: u(), role })
        } else if !opts.read_only && !info.can_flush() {
            Some(NbdClientError::NoFlush { uri: u(), role })
        } else {
            None
        };
        let max_piece = (info.sizes.max.min(MAX_PAYLOAD) as u64) / SECTOR * SECTOR;
        // Every later socket call wakes at this tick to look for death and stalls.
        sock.set_timeouts(Some(transport::TICK)).map_err(io_err)?;
        let shared = Arc::new(Shared::new(
            format!("{role} device {uri}"),
            sock.try_clone().map_err(io_err)?,
            opts.window,
            WINDOW_BYTES,
            opts.reply_timeout,
        ));
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            thread::Builder::new().name(name).spawn(f).map_err(io_err)
        };
        let (s, tx) = (shared.clone(), sock.try_clone().map_err(io_err)?);
        let writer = spawn(
            format!("nbd-{role}-tx"),
            Box::new(move || s.writer_loop(tx)),
        )?;
        let s = shared.clone();
        let reader = spawn(
            format!("nbd-{role}-rx"),
            Box::new(move || s.reader_loop(sock)),
        )?;
        // Before any request exists, so no `done` can run on the reader unrecognised.
        let _ = shared.reader.set(reader.thread().id());
        let dev = NbdDevice {
            shared,
            info,
            role,
            uri: u(),
            read_only: opts.read_only,
            max_piece: max_piece.max(SECTOR),
            writer: Some(writer),
            reader: Some(reader),
        };
        match refusal {
            // Dropping the device ends the session with NBD_CMD_DISC.
            Some(e) => Err(e),
            None => Ok(dev),
        }
    }

    pub fn size_sectors(&self) -> u64 {
        self.info.size_bytes / SECTOR
    }

    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn role(&self) -> DeviceRole {
        self.role
    }

    /// Why the device is dead, if it is.
    pub fn dead(&self) -> Option<String> {
        self.shared.dead()
    }

    /// The largest request sent as one piece.
    pub fn max_request_bytes(&self) -> u64 {
        self.max_piece
    }

    /// Sends `req` (once the window has room) and calls `done` exactly once with its outcome:
    /// from the reply-reader thread, or before `submit` returns when the request is invalid,
    /// needs no round trip (a TRIM the server does not offer) or the device is dead. Blocks
    /// while a window's worth of requests waits to be sent, except on the reader thread (in a
    /// `done`), where waiting could never end.
    pub fn submit(&self, req: NbdReq, done: Done) {
        self.submit_inner(req, done, true)
    }

    /// As [`NbdDevice::submit`], but never waits for queue room: the request joins the send
    /// queue at once whatever its length (the writer still sends no more than the window).
    /// For a caller that bounds what it has outstanding itself: the engine thread, through
    /// the executor (`asyncdev`).
    pub fn submit_nowait(&self, req: NbdReq, done: Done) {
        self.submit_inner(req, done, false)
    }

    fn submit_inner(&self, req: NbdReq, done: Done, may_block: bool) {
        let label = &self.shared.label;
        let writes = matches!(
            req,
            NbdReq::Write { .. } | NbdReq::Flush | NbdReq::Trim { .. }
        );
        if writes && (self.read_only || self.info.read_only()) {
            let (op, s, n) = match &req {
                NbdReq::Write { sector, data, .. } => {
                    (Access::Write, *sector, data.bytes().len() as u64 / SECTOR)
                }
                NbdReq::Trim { sector, sectors } => (Access::Write, *sector, *sectors),
                _ => (Access::Flush, 0, 0),
            };
            let why = format!("{label}: opened read-only");
            return done(Err(IoError::new(op, s, n, why)));
        }
        let (op, sector, bytes) = match &req {
            NbdReq::Read { sector, len } => (Access::Read, *sector, *len as u64),
            NbdReq::Write { sector, data, .. } => {
                (Access::Write, *sector, data.bytes().len() as u64)
            }
            NbdReq::Trim { sector, sectors } => {
                (Access::Write, *sector, sectors.saturating_mul(SECTOR))
            }
            NbdReq::Flush => (Access::Flush, 0, 0),
        };
        if op != Access::Flush {
            let len = usize::try_from(bytes).unwrap_or(usize::MAX);
            if let Err(mut e) = check_access(op, self.size_sectors(), sector, len) {
                e.detail = format!("{label}: {}", e.detail);
                return done(Err(e));
            }
        }
        let sectors = bytes / SECTOR;
        // The pieces: (offset, length) in bytes, each at most `max_piece`.
        let spans: Vec<(u64, u64)> = (0..bytes.div_ceil(self.max_piece))
            .map(|i| {
                let at = i * self.max_piece;
                (at, self.max_piece.min(bytes - at))
            })
            .collect();
        let (kind, flags, flush_after) = match &req {
            NbdReq::Read { .. } => (CMD_READ, 0, false),
            NbdReq::Write { fua, .. } => {
                let native = *fua && self.info.can_fua();
                (
                    CMD_WRITE,
                    if native { CMD_FLAG_FUA } else { 0 },
                    *fua && !native,
                )
            }
            NbdReq::Trim { .. } => (CMD_TRIM, 0, false),
            NbdReq::Flush => (CMD_FLUSH, 0, false),
        };
        if kind == CMD_TRIM && !self.info.can_trim() {
            // A hint the server does not take: nothing to do.
            return done(Ok(None));
        }
        if kind != CMD_FLUSH && spans.is_empty() {
            // Zero length: nothing goes on the wire (NBD forbids it).
            return done(Ok((kind == CMD_READ).then(Vec::new)));
        }
        let spans = if kind == CMD_FLUSH {
            vec![(0, 0)]
        } else {
            spans
        };
        let split_read = (kind == CMD_READ && spans.len() > 1).then_some(bytes as usize);
        let joint = Joint::new(
            op,
            sector,
            sectors,
            spans.len(),
            split_read,
            flush_after,
            done,
        );
        let payload = match &req {
            NbdReq::Write { data, .. } => Some(data.clone()),
            _ => None,
        };
        let base = sector * SECTOR;
        let pieces = spans
            .iter()
            .map(|&(at, len)| Piece {
                kind,
                flags,
                offset: if kind == CMD_FLUSH { 0 } else { base + at },
                len: len as u32,
                payload: payload.clone().map(|d| (d, at as usize)),
                joint: joint.clone(),
                at: at as usize,
            })
            .collect();
        let on_reader = self.shared.reader.get() == Some(&thread::current().id());
        if let Err(why) = self.shared.enqueue(pieces, may_block && !on_reader) {
            joint.fail_now(why);
        }
    }
}

impl NbdDevice {
    /// Nanoseconds with at least one request in flight on the connection since it started
    /// (the writeback modulator's load estimate, as a file's time spent in operations).
    pub fn busy_ns(&self) -> u64 {
        self.shared.busy_ns()
    }
}

impl Drop for NbdDevice {
    /// Waits for everything outstanding (bounded by the reply timeout), then `NBD_CMD_DISC`.
    fn drop(&mut self) {
        self.shared.close();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        self.shared.shut_socket();
        if let Some(r) = self.reader.take() {
            // Dropped by a `done` on the reader thread itself: it ends on its own.
            if r.thread().id() != thread::current().id() {
                let _ = r.join();
            }
        }
    }
}

impl std::fmt::Debug for NbdDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdDevice")
            .field("uri", &self.uri)
            .field("role", &self.role)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod asyncdev_tests;
#[cfg(all(test, not(loom)))]
mod tests;
