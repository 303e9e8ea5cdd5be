//! `nbd_stream`: arbitrary bytes as what an NBD client sends, through the server's own code:
//! the handshake is `runner::nbd::conn::handshake` itself over an in-memory stream, and the
//! transmission phase runs the reader's steps with the protocol layer's functions
//! (`parse_request`, `validate`, `payload_len`, `simple_reply`) against an in-memory engine
//! behind the runner's `EngineCore`. Never a panic or an unbounded allocation; every reply is
//! well formed; reads return what the model disk says.
//!
//! Input: `mode: u8` (odd: skip the handshake and start in transmission, so the fuzzer reaches
//! the request parser without first learning the handshake), then the client's bytes.

use std::io::{self, Cursor, Read, Write};

use engine::format::SECTOR_SIZE;
use engine::{Config, Engine, FormatPolicy, MemDevice};
use models::ModelDisk;
use runner::core::{Core, EngineCore};
use runner::inflight::errno_of;
use runner::nbd::conn::{handshake, Stream};
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

fn engine() -> EngineCore<MemDevice> {
    let cache = MemDevice::new(2048 + 8 * 16);
    let backing = MemDevice::from_bytes(backing_image());
    let cfg = Config {
        segment_size_order: 4,
        nr_rambuf_pool: 2,
        format: FormatPolicy::IfBlank,
        generation: 7,
        ..Config::default()
    };
    let (e, _) = Engine::open(cache, backing, cfg).expect("format an in-memory cache");
    EngineCore::new(e)
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

/// The connection reader's loop (runner/src/nbd/conn.rs, `read_requests`), with the engine
/// called in place and the replies checked.
fn transmission(s: &mut MemStream, export: &Export) {
    let mut core = engine();
    let mut model = ModelDisk::from_bytes(backing_image()).expect("model of the backing");
    for _ in 0..MAX_REQUESTS {
        let mut hdr = [0u8; proto::REQUEST_LEN];
        if s.input.read_exact(&mut hdr).is_err() {
            return;
        }
        let Ok(req) = proto::parse_request(&hdr) else {
            return;
        };
        let cmd = match proto::validate(&req, export) {
            Ok(Command::Disconnect) => return,
            Ok(cmd) => cmd,
            Err(refusal) => {
                assert!(refusal.errno != 0, "a refusal with errno 0");
                // Skip the payload of a refused WRITE, as the server does, in bounded chunks.
                let mut left = proto::payload_len(&req) as u64;
                let mut scratch = [0u8; 4096];
                while left > 0 {
                    let n = left.min(scratch.len() as u64) as usize;
                    if s.input.read_exact(&mut scratch[..n]).is_err() {
                        return;
                    }
                    left -= n as u64;
                }
                check_reply(&proto::simple_reply(req.handle, refusal.errno), req.handle);
                continue;
            }
        };
        let result =
            match cmd {
                Command::Read { sector, len } => {
                    // `validate` bounds `len` by the export's size.
                    assert!(
                        len as u64 <= export.size_bytes,
                        "a read larger than the export"
                    );
                    let mut buf = vec![0u8; len as usize];
                    let r = core.read(sector, &mut buf);
                    if r.is_ok() {
                        let want = model
                            .read_vec(sector, len as u64 / SECTOR_SIZE as u64)
                            .expect("a validated read is inside the model");
                        assert!(buf == want, "read {sector}+{len}B differs from the model");
                    }
                    r.map_err(|e| errno_of(&e, false))
                }
                Command::Write { sector, len, fua } => {
                    assert!(
                        len as u64 <= export.size_bytes,
                        "a write larger than the export"
                    );
                    let mut payload = vec![0u8; len as usize];
                    if s.input.read_exact(&mut payload).is_err() {
                        return;
                    }
                    let r = core.write(sector, &payload, fua);
                    if r.is_ok() {
                        model.write(sector, &payload).expect("model write");
                    }
                    r.map_err(|e| errno_of(&e, true))
                }
                Command::Flush => core.flush().map_err(|e| errno_of(&e, true)),
                Command::Trim {
                    sector,
                    sectors,
                    fua,
                } => {
                    let r = core.discard(sector, sectors).and_then(|()| {
                        if fua {
                            core.flush()
                        } else {
                            Ok(())
                        }
                    });
                    if r.is_ok() {
                        model.write_zeroes(sector, sectors).expect("model trim");
                    }
                    r.map_err(|e| errno_of(&e, true))
                }
                Command::WriteZeroes {
                    sector,
                    sectors,
                    fua,
                } => {
                    let r = core.write_zeroes(sector, sectors, fua);
                    if r.is_ok() {
                        model
                            .write_zeroes(sector, sectors)
                            .expect("model write-zeroes");
                    }
                    r.map_err(|e| errno_of(&e, true))
                }
                Command::Disconnect => unreachable!("handled above"),
            };
        // An in-memory engine never fails a validated request.
        if let Err(errno) = result {
            panic!("{cmd:?} failed with errno {errno}");
        }
        check_reply(&proto::simple_reply(req.handle, 0), req.handle);
        let _ = core.run_one_step();
    }
}

fn check_reply(reply: &[u8; 16], handle: u64) {
    assert_eq!(reply[..4], proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
    assert_eq!(reply[8..], handle.to_be_bytes());
}
