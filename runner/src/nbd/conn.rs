//! One NBD client connection: handshake, then a reader (this thread) that parses requests and
//! queues them for the engine thread, and a writer thread that sends replies as the engine
//! finishes them. Replies may go out of request order (NBD allows it); per connection at most
//! `IN_FLIGHT_BYTES` of requests are in flight (`inflight::Inflight`: units the reader takes
//! before it reads a payload and the writer gives back after the reply is sent), which also
//! bounds the reply queue so the engine thread never blocks on a slow client.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;

use super::proto::{self, Command, Export, Next, ProtoError, Request};
use crate::engine_thread::EngineReq;
use crate::events::Events;
use crate::inflight::Inflight;
use crate::sync::{thread, Arc};

/// Bytes of requests (payloads and read buffers) one connection may have in flight.
pub const IN_FLIGHT_BYTES: u64 = 64 << 20;
/// What a request without payload, or a small one, counts against `IN_FLIGHT_BYTES`: bounds
/// the number of requests in flight to `IN_FLIGHT_BYTES / MIN_REQUEST_UNITS`.
pub const MIN_REQUEST_UNITS: u64 = 256 << 10;
/// Options a client may send before it must pick the export (a bound, not a courtesy limit).
pub const MAX_OPTIONS: usize = 256;

/// A byte stream a connection runs over (Unix or TCP socket).
pub trait Stream: Read + Write + Send + 'static {
    fn try_clone_stream(&self) -> io::Result<Box<dyn Stream>>;
    /// Stops further reads (and writes, with `both`); wakes a thread blocked reading it.
    fn shutdown_stream(&self, both: bool);
}

impl Stream for UnixStream {
    fn try_clone_stream(&self) -> io::Result<Box<dyn Stream>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_stream(&self, both: bool) {
        let _ = self.shutdown(if both { Shutdown::Both } else { Shutdown::Read });
    }
}

impl Stream for TcpStream {
    fn try_clone_stream(&self) -> io::Result<Box<dyn Stream>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_stream(&self, both: bool) {
        let _ = self.shutdown(if both { Shutdown::Both } else { Shutdown::Read });
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnEnd {
    #[error("client disconnected")]
    Disconnected,
    #[error("client aborted the handshake")]
    Aborted,
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtoError),
    #[error("client asked for an unknown export")]
    UnknownExport,
    #[error("client sent more than {MAX_OPTIONS} options")]
    TooManyOptions,
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

/// EOF before a full message is a disconnect, not an error worth a stack of words.
fn read_full(s: &mut dyn Stream, buf: &mut [u8]) -> Result<(), ConnEnd> {
    s.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe => ConnEnd::Disconnected,
        _ => ConnEnd::Io(e),
    })
}

/// Runs the fixed-newstyle handshake. `Ok` means the client entered transmission.
pub fn handshake(s: &mut dyn Stream, export: &Export) -> Result<(), ConnEnd> {
    s.write_all(&proto::server_greeting())?;
    let mut flags = [0u8; 4];
    read_full(s, &mut flags)?;
    let flags = proto::parse_client_flags(&flags)?;
    let no_zeroes = flags & proto::FLAG_C_NO_ZEROES != 0;
    for _ in 0..MAX_OPTIONS {
        let mut hdr = [0u8; proto::OPTION_HEADER_LEN];
        read_full(s, &mut hdr)?;
        let (option, len) = proto::parse_option_header(&hdr)?;
        let mut data = vec![0u8; len as usize];
        read_full(s, &mut data)?;
        let out = proto::handle_option(option, &data, export, no_zeroes);
        s.write_all(&out.send)?;
        match out.next {
            Next::Continue => {}
            Next::Transmission => return Ok(()),
            Next::Close if option == proto::OPT_ABORT => return Err(ConnEnd::Aborted),
            Next::Close => return Err(ConnEnd::UnknownExport),
        }
    }
    Err(ConnEnd::TooManyOptions)
}

/// Skips `len` payload bytes of a refused WRITE (in bounded chunks) to stay in sync.
fn skip_payload(s: &mut dyn Stream, mut len: u64) -> Result<(), ConnEnd> {
    let mut scratch = [0u8; 64 * 1024];
    while len > 0 {
        let n = len.min(scratch.len() as u64) as usize;
        read_full(s, &mut scratch[..n])?;
        len -= n as u64;
    }
    Ok(())
}

/// Serves one connection to its end. `log` gets one line per notable event.
pub fn serve(
    mut stream: Box<dyn Stream>,
    jobs: Arc<Events>,
    export: Export,
    log: &(dyn Fn(&str) + Sync),
) -> ConnEnd {
    if let Err(end) = handshake(stream.as_mut(), &export) {
        return end;
    }
    let mut out = match stream.try_clone_stream() {
        Ok(s) => s,
        Err(e) => return ConnEnd::Io(e),
    };
    let window = Inflight::new(IN_FLIGHT_BYTES, MIN_REQUEST_UNITS);
    let writer = {
        let window = window.clone();
        thread::spawn(move || write_replies(out.as_mut(), &window))
    };
    let end = read_requests(stream.as_mut(), &jobs, &window, &export, log);
    // Every request read is answered before the connection closes: wait for the engine to
    // finish them and the writer to send them.
    window.finish();
    let write_err = writer.join().expect("reply writer panicked");
    stream.shutdown_stream(true);
    match (end, write_err) {
        (ConnEnd::Disconnected, Some(e)) => ConnEnd::Io(e),
        (end, _) => end,
    }
}

/// Sends replies until the window is finished; after a socket error it keeps draining (and
/// releasing units) so nothing waits on a dead connection.
fn write_replies(out: &mut dyn Stream, window: &Inflight) -> Option<io::Error> {
    let mut failed: Option<io::Error> = None;
    while let Some(r) = window.next_reply() {
        if failed.is_none() {
            let mut res = out.write_all(&proto::simple_reply(r.handle, r.errno));
            if let (Ok(()), Some(data)) = (&res, &r.data) {
                res = out.write_all(data);
            }
            if let Err(e) = res {
                // The reader must stop too: it would only queue more work for nobody.
                out.shutdown_stream(false);
                failed = Some(e);
            }
        }
        window.sent(&r);
    }
    failed
}

/// One request as read off the wire, before its payload.
#[derive(Debug)]
pub enum Incoming {
    /// A request the server executes; `cmd` is validated against the export. A WRITE's payload
    /// is still on the wire: `read_engine_req` reads it.
    Execute {
        handle: u64,
        length: u32,
        cmd: Command,
    },
    /// A request refused with `errno` (its payload, if any, already skipped).
    Refused {
        handle: u64,
        errno: u32,
        why: String,
    },
}

/// Reads and validates one request header; a refused WRITE's payload is skipped here to stay
/// in sync. `Err(Disconnected)` also stands for NBD_CMD_DISC.
pub fn read_incoming(s: &mut dyn Stream, export: &Export) -> Result<Incoming, ConnEnd> {
    let mut hdr = [0u8; proto::REQUEST_LEN];
    read_full(s, &mut hdr)?;
    let req: Request = proto::parse_request(&hdr).map_err(ConnEnd::Protocol)?;
    match proto::validate(&req, export) {
        Ok(Command::Disconnect) => Err(ConnEnd::Disconnected),
        Ok(cmd) => Ok(Incoming::Execute {
            handle: req.handle,
            length: req.length,
            cmd,
        }),
        Err(refusal) => {
            skip_payload(s, proto::payload_len(&req) as u64)?;
            Ok(Incoming::Refused {
                handle: req.handle,
                errno: refusal.errno,
                why: refusal.why,
            })
        }
    }
}

/// Turns a validated command into the engine thread's request, reading a WRITE's payload.
pub fn read_engine_req(s: &mut dyn Stream, cmd: Command) -> Result<EngineReq, ConnEnd> {
    Ok(match cmd {
        Command::Read { sector, len } => EngineReq::Read {
            sector,
            len: len as usize,
        },
        Command::Write { sector, len, fua } => {
            let mut data = vec![0u8; len as usize];
            read_full(s, &mut data)?;
            EngineReq::Write { sector, data, fua }
        }
        Command::Flush => EngineReq::Flush,
        Command::Trim {
            sector,
            sectors,
            fua,
        } => EngineReq::Trim {
            sector,
            sectors,
            fua,
        },
        Command::WriteZeroes {
            sector,
            sectors,
            fua,
        } => EngineReq::WriteZeroes {
            sector,
            sectors,
            fua,
        },
        Command::Disconnect => unreachable!("read_incoming ends the connection at DISC"),
    })
}

fn read_requests(
    s: &mut dyn Stream,
    jobs: &Events,
    window: &Arc<Inflight>,
    export: &Export,
    log: &(dyn Fn(&str) + Sync),
) -> ConnEnd {
    // Bounded by the client: ends at DISC, EOF, a protocol violation or a socket error.
    loop {
        let (handle, length, cmd) = match read_incoming(s, export) {
            Ok(Incoming::Execute {
                handle,
                length,
                cmd,
            }) => (handle, length, cmd),
            Ok(Incoming::Refused { handle, errno, why }) => {
                log(&format!("refused request (handle {handle:#x}): {why}"));
                let units = window.acquire(0);
                window.refuse(handle, errno, units);
                continue;
            }
            Err(end) => return end,
        };
        // Units are taken before a WRITE's payload is read: that bounds the memory a client
        // can make the server hold.
        let units = window.acquire(length as u64);
        match read_engine_req(s, cmd) {
            Ok(engine_req) => Inflight::submit(window, jobs, engine_req, handle, units),
            Err(end) => {
                window.release(units);
                return end;
            }
        }
    }
}
