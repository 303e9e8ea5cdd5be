//! `nbd_stream`: an arbitrary NBD client session (handshake options and requests, well formed
//! or not) as bytes through the server's own code: the handshake is
//! `runner::nbd::conn::handshake` itself over an in-memory stream, and the transmission phase
//! runs the connection reader's own steps (`read_incoming`, `read_engine_req`) and the engine
//! thread's `execute` against an in-memory engine behind the runner's mapping of NBD requests
//! onto engine requests; only the queue and the threads between them are left out. Never a
//! panic or an unbounded allocation; every reply is well formed; reads return what the model
//! disk says.
//!
//! Input: an [`Input`] (derived [`Arbitrary`]) the target turns into the client's bytes: an
//! optional handshake (`None` starts in transmission, so the fuzzer reaches the request parser
//! without first learning the handshake) of client flags and options ([`NbdOption`]: magic,
//! option code, length, data that may be an export name or an info request), then requests
//! ([`Request`]: magic, flags, command, handle, offset, length, a WRITE's payload, optional
//! garbage after it). Magics and lengths are right unless the input overrides them; offsets and
//! lengths come in sectors, bytes or raw 64/32-bit values, so most requests are in range and
//! some are not.

use std::io::{self, Cursor, Read, Write};

use arbitrary::Arbitrary;
use engine::format::SECTOR_SIZE;
use engine::{Config, FormatPolicy, MemDevice, SyncEngine};
use models::ModelDisk;
use runner::engine_thread::{execute, EngineReq, Outcome};
use runner::nbd::conn::{handshake, read_engine_req, read_incoming, Incoming, Stream};
use runner::nbd::proto::{self, Command, Export};

use crate::image::{backing_image, backing_sectors};

/// Requests handled per input (each takes at least 28 input bytes anyway).
pub const MAX_REQUESTS: usize = 4096;
/// Options sent per handshake (the server stops at `runner::nbd::conn::MAX_OPTIONS`).
pub const MAX_OPTIONS: usize = 300;
/// Bytes of a WRITE's payload sent at most (a longer WRITE is refused by the server anyway).
pub const MAX_PAYLOAD_SENT: u32 = 1 << 17;

/// What the client sends.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// `None`: no handshake, the stream starts in the transmission phase.
    pub handshake: Option<Handshake>,
    /// At most [`MAX_REQUESTS`].
    pub requests: Vec<Request>,
}

/// The client's side of the newstyle handshake.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// Client flags (bit 0 fixed newstyle, bit 1 no zeroes; the rest unknown).
    pub client_flags: u8,
    /// At most [`MAX_OPTIONS`].
    pub options: Vec<NbdOption>,
}

/// One option: `IHAVEOPT`, option code, length, data.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct NbdOption {
    /// A wrong magic instead of `IHAVEOPT`.
    pub bad_magic: Option<u64>,
    pub option: OptCode,
    /// A length other than the data's.
    pub length: Option<u32>,
    pub data: OptData,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptCode {
    ExportName,
    Abort,
    List,
    Info,
    Go,
    StructuredReply,
    Other(u32),
}

/// An option's data.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum OptData {
    Raw(Vec<u8>),
    /// An export name alone (`NBD_OPT_EXPORT_NAME`).
    Name(Name),
    /// An `NBD_OPT_INFO`/`NBD_OPT_GO` request: name length, name, info count, infos.
    Info {
        name: Name,
        infos: Vec<u16>,
    },
}

#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum Name {
    /// The default export (empty name).
    Default,
    /// `wbcache`.
    Ours,
    Other(Vec<u8>),
}

/// One transmission request: magic, flags, type, handle, offset, length (28 bytes), then a
/// WRITE's payload, then `garbage`.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// A wrong magic instead of `NBD_REQUEST_MAGIC`.
    pub bad_magic: Option<u32>,
    pub flags: u16,
    pub cmd: Cmd,
    pub handle: u64,
    pub offset: Offset,
    pub length: Length,
    /// Bytes sent after the request (and its payload).
    pub garbage: Option<Vec<u8>>,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    WriteZeroes,
    Other(u16),
}

/// A request's offset in bytes.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    /// `512 * n` (the export has 128 sectors).
    Sector(u8),
    Bytes(u16),
    Raw(u64),
}

/// A request's length in bytes.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// `512 * n`.
    Sectors(u8),
    Bytes(u16),
    Raw(u32),
}

impl OptCode {
    pub fn code(self) -> u32 {
        match self {
            OptCode::ExportName => proto::OPT_EXPORT_NAME,
            OptCode::Abort => proto::OPT_ABORT,
            OptCode::List => proto::OPT_LIST,
            OptCode::Info => proto::OPT_INFO,
            OptCode::Go => proto::OPT_GO,
            OptCode::StructuredReply => proto::OPT_STRUCTURED_REPLY,
            OptCode::Other(c) => c,
        }
    }
}

impl Name {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Name::Default => b"",
            Name::Ours => proto::EXPORT_NAME.as_bytes(),
            Name::Other(v) => v,
        }
    }
}

impl Cmd {
    pub fn code(self) -> u16 {
        match self {
            Cmd::Read => proto::CMD_READ,
            Cmd::Write => proto::CMD_WRITE,
            Cmd::Disc => proto::CMD_DISC,
            Cmd::Flush => proto::CMD_FLUSH,
            Cmd::Trim => proto::CMD_TRIM,
            Cmd::WriteZeroes => proto::CMD_WRITE_ZEROES,
            Cmd::Other(c) => c,
        }
    }
}

impl Offset {
    pub fn bytes(self) -> u64 {
        match self {
            Offset::Sector(n) => u64::from(n) * SECTOR_SIZE as u64,
            Offset::Bytes(n) => u64::from(n),
            Offset::Raw(n) => n,
        }
    }
}

impl Length {
    pub fn bytes(self) -> u32 {
        match self {
            Length::Sectors(n) => u32::from(n) * SECTOR_SIZE as u32,
            Length::Bytes(n) => u32::from(n),
            Length::Raw(n) => n,
        }
    }
}

impl NbdOption {
    fn write_to(&self, v: &mut Vec<u8>) {
        let data = match &self.data {
            OptData::Raw(d) => d.clone(),
            OptData::Name(n) => n.bytes().to_vec(),
            OptData::Info { name, infos } => {
                let name = name.bytes();
                let mut d = (name.len() as u32).to_be_bytes().to_vec();
                d.extend_from_slice(name);
                d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
                for i in infos {
                    d.extend_from_slice(&i.to_be_bytes());
                }
                d
            }
        };
        v.extend_from_slice(&self.bad_magic.unwrap_or(proto::IHAVEOPT).to_be_bytes());
        v.extend_from_slice(&self.option.code().to_be_bytes());
        v.extend_from_slice(&self.length.unwrap_or(data.len() as u32).to_be_bytes());
        v.extend_from_slice(&data);
    }
}

impl Request {
    fn write_to(&self, v: &mut Vec<u8>) {
        let length = self.length.bytes();
        v.extend_from_slice(&self.bad_magic.unwrap_or(proto::REQUEST_MAGIC).to_be_bytes());
        v.extend_from_slice(&self.flags.to_be_bytes());
        v.extend_from_slice(&self.cmd.code().to_be_bytes());
        v.extend_from_slice(&self.handle.to_be_bytes());
        v.extend_from_slice(&self.offset.bytes().to_be_bytes());
        v.extend_from_slice(&length.to_be_bytes());
        if self.cmd == Cmd::Write {
            v.extend((0..length.min(MAX_PAYLOAD_SENT)).map(|i| (i as u8) ^ (self.handle as u8)));
        }
        if let Some(g) = &self.garbage {
            v.extend_from_slice(g);
        }
    }
}

impl Input {
    /// The client's bytes.
    pub fn client_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        if let Some(h) = &self.handshake {
            v.extend_from_slice(&u32::from(h.client_flags).to_be_bytes());
            for o in h.options.iter().take(MAX_OPTIONS) {
                o.write_to(&mut v);
            }
        }
        for r in self.requests.iter().take(MAX_REQUESTS) {
            r.write_to(&mut v);
        }
        v
    }
}

/// A client's bytes in, the server's bytes out.
struct MemStream {
    input: Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl Read for MemStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for MemStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The server's output is bounded by what it answers; keep only a little of it.
        if self.output.len() < 1 << 16 {
            self.output.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for MemStream {
    fn try_clone_stream(&self) -> io::Result<Box<dyn Stream>> {
        Err(io::Error::other("an in-memory stream is not cloned"))
    }
    fn shutdown_stream(&self, _both: bool) {}
}

fn engine() -> SyncEngine<MemDevice> {
    let cache = MemDevice::new(2048 + 8 * 16);
    let backing = MemDevice::from_bytes(backing_image());
    let cfg = Config {
        segment_size_order: 4,
        nr_rambuf_pool: 2,
        format: FormatPolicy::IfBlank,
        generation: 7,
        ..Config::default()
    };
    let (e, _) = SyncEngine::open(cache, backing, cfg).expect("format an in-memory cache");
    e
}

/// Runs the raw bytes of a corpus file as `fuzz_target!` does.
pub fn run(data: &[u8]) {
    if let Some(input) = crate::decode(data) {
        run_input(input);
    }
}

pub fn run_input(input: Input) {
    let export = Export {
        size_bytes: backing_sectors() * SECTOR_SIZE as u64,
    };
    let mut s = MemStream {
        input: Cursor::new(input.client_bytes()),
        output: Vec::new(),
    };
    if input.handshake.is_some() {
        if handshake(&mut s, &export).is_err() {
            return;
        }
        assert!(
            s.output.starts_with(&proto::server_greeting()),
            "the server did not greet first"
        );
    }
    transmission(&mut s, &export);
}

/// The connection reader's steps (`read_incoming`, `read_engine_req`) and the engine thread's
/// `execute`, called in place of the queue and threads, with the replies checked against a model.
fn transmission(s: &mut MemStream, export: &Export) {
    let mut core = engine();
    let mut model = ModelDisk::from_bytes(backing_image()).expect("model of the backing");
    for _ in 0..MAX_REQUESTS {
        let (handle, length, cmd) = match read_incoming(s, export) {
            Ok(Incoming::Execute {
                handle,
                length,
                cmd,
            }) => (handle, length, cmd),
            Ok(Incoming::Refused { handle, errno, .. }) => {
                assert!(errno != 0, "a refusal with errno 0");
                check_reply(&proto::simple_reply(handle, errno), handle);
                continue;
            }
            Err(_) => return,
        };
        // `validate` bounds every length by the export's size.
        assert!(
            u64::from(length) <= export.size_bytes,
            "a request larger than the export"
        );
        let Ok(req) = read_engine_req(s, cmd) else {
            return;
        };
        let write_payload = match &req {
            EngineReq::Write { data, .. } => Some(data.clone()),
            _ => None,
        };
        let outcome = execute(&mut core, req);
        // An in-memory engine never fails a validated request.
        let data = match outcome {
            Outcome::Done => None,
            Outcome::Data(d) => Some(d),
            Outcome::Failed(e) => panic!("{cmd:?} failed: {e}"),
            Outcome::Status(_) => panic!("{cmd:?} answered with a status"),
        };
        match cmd {
            Command::Read { sector, len } => {
                let want = model
                    .read_vec(sector, len as u64 / SECTOR_SIZE as u64)
                    .expect("a validated read is inside the model");
                assert!(
                    data.as_deref() == Some(&want[..]),
                    "read {sector}+{len}B differs from the model"
                );
            }
            Command::Write { sector, .. } => {
                let payload = write_payload.expect("a WRITE carries its payload");
                model.write(sector, &payload).expect("model write");
            }
            Command::Trim {
                sector, sectors, ..
            } => model.write_zeroes(sector, sectors).expect("model trim"),
            Command::WriteZeroes {
                sector, sectors, ..
            } => model
                .write_zeroes(sector, sectors)
                .expect("model write-zeroes"),
            Command::Flush | Command::Disconnect => {}
        }
        if !matches!(cmd, Command::Read { .. }) {
            assert!(data.is_none(), "{cmd:?} returned data");
        }
        check_reply(&proto::simple_reply(handle, 0), handle);
        if let Some(step) = core.next_step() {
            let _ = core.run_step(step);
        }
    }
}

fn check_reply(reply: &[u8; 16], handle: u64) {
    assert_eq!(reply[..4], proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
    assert_eq!(reply[8..], handle.to_be_bytes());
}
