//! `nbd_stream`: arbitrary bytes as what an NBD client sends, through the server's own code:
//! the handshake is `runner::nbd::conn::handshake` itself over an in-memory stream, and the
//! transmission phase runs the connection reader's own steps (`read_incoming`,
//! `read_engine_req`) and the engine thread's `execute` against an in-memory engine behind the
//! runner's mapping of NBD requests onto engine requests; only the queue and the threads between them are left out. Never a panic or an unbounded allocation; every reply is
//! well formed; reads return what the model disk says.
//!
//! Input: `mode: u8` (odd: skip the handshake and start in transmission, so the fuzzer reaches
//! the request parser without first learning the handshake), then the client's bytes.

use std::io::{self, Cursor, Read, Write};

use engine::format::SECTOR_SIZE;
use engine::{Config, FormatPolicy, MemDevice, SyncEngine};
use models::ModelDisk;
use runner::engine_thread::{execute, EngineReq, Outcome};
use runner::nbd::conn::{handshake, read_engine_req, read_incoming, Incoming, Stream};
use runner::nbd::proto::{self, Command, Export};

use crate::image::{backing_image, backing_sectors};

/// Requests handled per input (each takes at least 28 input bytes anyway).
const MAX_REQUESTS: usize = 4096;

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

pub fn run(data: &[u8]) {
    let Some((&mode, client)) = data.split_first() else {
        return;
    };
    let export = Export {
        size_bytes: backing_sectors() * SECTOR_SIZE as u64,
    };
    let mut s = MemStream {
        input: Cursor::new(client.to_vec()),
        output: Vec::new(),
    };
    if mode & 1 == 0 {
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
