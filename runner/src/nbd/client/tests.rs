//! The client against fake servers on socket pairs: the server side of the handshake is the
//! runner's own (`conn::handshake`), what follows is whatever a test wants, including garbage.

use std::io::{Cursor, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use super::*;
use crate::nbd::conn;
use crate::nbd::proto::{self, Export, REQUEST_LEN};

const SIZE: u64 = 1 << 20;

/// A device on one end of a socket pair; the other end goes to `server`.
pub(super) fn pair(
    opts: NbdOptions,
    server: impl FnOnce(UnixStream) + Send + 'static,
) -> (Result<NbdDevice, NbdClientError>, thread::JoinHandle<()>) {
    let (c, s) = UnixStream::pair().unwrap();
    let t = thread::spawn(move || server(s));
    let d = NbdDevice::over_unix_stream(c, "fake://", "", DeviceRole::Cache, &opts);
    (d, t)
}

/// The runner's server handshake for an export of `SIZE` bytes.
pub(super) fn handshake(s: &mut UnixStream) {
    let export = Export { size_bytes: SIZE };
    conn::handshake(s, &export).expect("client completes the handshake");
}

/// Serves READ/WRITE/FLUSH/TRIM from memory until DISC or end-of-file, then sends the command
/// kinds it saw through `seen`.
pub(super) fn memory_server(mut s: UnixStream, seen: mpsc::Sender<Vec<u16>>) {
    handshake(&mut s);
    let mut mem = vec![0u8; SIZE as usize];
    let mut kinds = Vec::new();
    let export = Export { size_bytes: SIZE };
    loop {
        let mut h = [0u8; REQUEST_LEN];
        if s.read_exact(&mut h).is_err() {
            break;
        }
        let req = proto::parse_request(&h).unwrap();
        kinds.push(req.kind);
        let mut payload = vec![0u8; proto::payload_len(&req) as usize];
        s.read_exact(&mut payload).unwrap();
        let (off, len) = (req.offset as usize, req.length as usize);
        let mut reply = proto::simple_reply(req.handle, 0).to_vec();
        match proto::validate(&req, &export).unwrap() {
            proto::Command::Read { .. } => reply.extend_from_slice(&mem[off..off + len]),
            proto::Command::Write { .. } => mem[off..off + len].copy_from_slice(&payload),
            proto::Command::Trim { .. } => mem[off..off + len].fill(0),
            proto::Command::Disconnect => break,
            _ => {}
        }
        s.write_all(&reply).unwrap();
    }
    let _ = seen.send(kinds);
}

fn run(d: &NbdDevice, req: NbdReq) -> Outcome {
    let (tx, rx) = mpsc::channel();
    d.submit(req, Box::new(move |r| tx.send(r).unwrap()));
    rx.recv_timeout(Duration::from_secs(30)).expect("completed")
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn the_device_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<NbdDevice>();
}

#[test]
fn memory_server_round_trip_and_a_clean_disconnect() {
    let (tx, rx) = mpsc::channel();
    let (d, t) = pair(NbdOptions::default(), move |s| memory_server(s, tx));
    let d = d.unwrap();
    assert!(d.info().go);
    run(&d, NbdReq::write(1, vec![7u8; 1024], true)).unwrap();
    run(&d, NbdReq::Flush).unwrap();
    assert_eq!(
        run(
            &d,
            NbdReq::Read {
                sector: 1,
                len: 1024
            }
        )
        .unwrap(),
        Some(vec![7u8; 1024])
    );
    drop(d);
    t.join().unwrap();
    // FUA is native (our server offers it); the session ends with NBD_CMD_DISC.
    use proto::{CMD_DISC, CMD_FLUSH, CMD_READ, CMD_WRITE};
    assert_eq!(
        rx.recv().unwrap(),
        vec![CMD_WRITE, CMD_FLUSH, CMD_READ, CMD_DISC]
    );
}

#[test]
fn done_may_submit_again_from_the_reader_thread() {
    // A window of 1 and a chain of submits made inside `done`: the reader thread must queue
    // them without waiting for room it alone could make.
    let (tx, _rx) = mpsc::channel();
    let opts = NbdOptions {
        window: 1,
        ..NbdOptions::default()
    };
    let (d, _t) = pair(opts, move |s| memory_server(s, tx));
    let d = Arc::new(d.unwrap());
    let (fin, all_done) = mpsc::channel();
    fn chain(d: Arc<NbdDevice>, left: u32, fin: mpsc::Sender<u32>) {
        let d2 = d.clone();
        d.submit(
            NbdReq::write(left as u64, vec![left as u8; 512], false),
            Box::new(move |r| {
                r.unwrap();
                if left == 0 {
                    fin.send(0).unwrap();
                    return;
                }
                // Several at once from the reader thread: more than the window and queue.
                for _ in 0..3 {
                    let fin = fin.clone();
                    d2.submit(
                        NbdReq::Read {
                            sector: 0,
                            len: 512,
                        },
                        Box::new(move |r| fin.send(r.map(|_| 1).unwrap()).unwrap()),
                    );
                }
                chain(d2, left - 1, fin);
            }),
        );
    }
    chain(d.clone(), 100, fin);
    let mut reads = 0;
    loop {
        match all_done
            .recv_timeout(Duration::from_secs(30))
            .expect("no deadlock")
        {
            0 => break,
            n => reads += n,
        }
    }
    while reads < 300 {
        reads += all_done.recv_timeout(Duration::from_secs(30)).unwrap();
    }
}

#[test]
fn export_name_fallback_and_plain_newstyle() {
    // A server that does not know NBD_OPT_GO: the client falls back to EXPORT_NAME.
    let (d, t) = pair(NbdOptions::default(), |mut s| {
        s.write_all(&proto::server_greeting()).unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        let (opt, len) = proto::parse_option_header(&h).unwrap();
        assert_eq!(opt, proto::OPT_GO);
        s.read_exact(&mut vec![0u8; len as usize]).unwrap();
        s.write_all(&proto::option_reply(opt, proto::REP_ERR_UNSUP, b""))
            .unwrap();
        s.read_exact(&mut h).unwrap();
        let (opt, len) = proto::parse_option_header(&h).unwrap();
        assert_eq!((opt, len), (proto::OPT_EXPORT_NAME, 0));
        let out = proto::handle_option(opt, &[], &Export { size_bytes: SIZE }, true);
        s.write_all(&out.send).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let d = d.unwrap();
    assert!(!d.info().go);
    assert_eq!(d.info().sizes, BlockSizes::DEFAULT);
    assert_eq!(d.size_sectors(), SIZE / 512);
    drop(d);
    t.join().unwrap();

    // Plain (not fixed) newstyle, no NO_ZEROES: EXPORT_NAME straight away, 124 zeroes.
    let (d, t) = pair(NbdOptions::default(), |mut s| {
        let mut g = proto::server_greeting();
        g[16..].copy_from_slice(&0u16.to_be_bytes());
        s.write_all(&g).unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        assert_eq!(b, [0; 4], "no client flags for a plain newstyle server");
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        let (opt, _) = proto::parse_option_header(&h).unwrap();
        let out = proto::handle_option(opt, &[], &Export { size_bytes: SIZE }, false);
        assert_eq!(out.send.len(), 8 + 2 + 124);
        s.write_all(&out.send).unwrap();
        let _ = s.read_to_end(&mut Vec::new());
    });
    assert_eq!(d.unwrap().size_sectors(), SIZE / 512);
    t.join().unwrap();
}

/// A server that handshakes, reads `n` requests, then does `then` with their handles.
fn scripted(
    n: usize,
    then: impl FnOnce(&mut UnixStream, Vec<u64>) + Send + 'static,
) -> impl FnOnce(UnixStream) + Send + 'static {
    move |mut s| {
        handshake(&mut s);
        let mut handles = Vec::new();
        for _ in 0..n {
            let mut h = [0u8; REQUEST_LEN];
            s.read_exact(&mut h).unwrap();
            let r = proto::parse_request(&h).unwrap();
            s.read_exact(&mut vec![0u8; proto::payload_len(&r) as usize])
                .unwrap();
            handles.push(r.handle);
        }
        then(&mut s, handles);
        let _ = s.read_to_end(&mut Vec::new());
    }
}

/// Submits `n` reads; returns their outcomes (each must come exactly once).
fn reads(d: &NbdDevice, n: u64) -> Vec<Outcome> {
    let count = Arc::new(AtomicU32::new(0));
    let (tx, rx) = mpsc::channel();
    for i in 0..n {
        let (tx, count) = (tx.clone(), count.clone());
        d.submit(
            NbdReq::Read {
                sector: i,
                len: 512,
            },
            Box::new(move |r| {
                count.fetch_add(1, Ordering::SeqCst);
                tx.send(r).unwrap();
            }),
        );
    }
    let out: Vec<Outcome> = (0..n)
        .map(|_| rx.recv_timeout(Duration::from_secs(30)).expect("completed"))
        .collect();
    thread::sleep(Duration::from_millis(20));
    assert_eq!(
        count.load(Ordering::SeqCst),
        n as u32,
        "each done exactly once"
    );
    out
}

#[test]
fn a_reply_for_an_unknown_handle_kills_the_device() {
    let (d, _t) = pair(
        NbdOptions::default(),
        scripted(2, |s, h| {
            s.write_all(&proto::simple_reply(h[0] + 1000, 0)).unwrap();
        }),
    );
    let d = d.unwrap();
    for r in reads(&d, 2) {
        assert!(r.unwrap_err().detail.contains("not in flight"));
    }
    assert!(d.dead().unwrap().contains("protocol violation"));
}

#[test]
fn structured_replies_eshutdown_and_silence_end_the_device() {
    let (d, _t) = pair(
        NbdOptions::default(),
        scripted(1, |s, h| {
            let mut r = proto::simple_reply(h[0], 0);
            r[..4].copy_from_slice(&wire::STRUCTURED_REPLY_MAGIC.to_be_bytes());
            s.write_all(&r).unwrap();
        }),
    );
    let d = d.unwrap();
    assert!(reads(&d, 1)[0]
        .as_ref()
        .unwrap_err()
        .detail
        .contains("structured"));

    let (d, _t) = pair(
        NbdOptions::default(),
        scripted(2, |s, h| {
            s.write_all(&proto::simple_reply(h[0], proto::ESHUTDOWN))
                .unwrap();
        }),
    );
    let d = d.unwrap();
    let out = reads(&d, 2);
    assert!(out[0].as_ref().unwrap_err().detail.contains("ESHUTDOWN"));
    assert!(out[1]
        .as_ref()
        .unwrap_err()
        .detail
        .contains("shutting down"));

    // A server that takes requests and never answers: a stall after the reply timeout.
    let opts = NbdOptions {
        reply_timeout: Duration::from_millis(600),
        ..NbdOptions::default()
    };
    let (d, _t) = pair(
        opts,
        scripted(3, |_, _| thread::sleep(Duration::from_secs(5))),
    );
    let d = d.unwrap();
    for r in reads(&d, 3) {
        assert!(r.unwrap_err().detail.contains("no reply from the server"));
    }
}

#[test]
fn garbage_after_the_handshake_never_panics_and_never_hangs() {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for round in 0..60 {
        let seed = xorshift(&mut x);
        let (d, t) = pair(
            NbdOptions::default(),
            scripted(4, move |s, h| {
                let mut y = seed | 1;
                let mut junk = Vec::new();
                // Sometimes a valid reply first, sometimes a right magic with junk after.
                if y % 3 == 0 {
                    junk.extend_from_slice(&proto::simple_reply(h[0], 0));
                }
                if y % 5 == 0 {
                    junk.extend_from_slice(&proto::SIMPLE_REPLY_MAGIC.to_be_bytes());
                }
                for _ in 0..(xorshift(&mut y) % 200) {
                    junk.push(xorshift(&mut y) as u8);
                }
                let _ = s.write_all(&junk);
                let _ = s.shutdown(std::net::Shutdown::Both);
            }),
        );
        let d = d.unwrap();
        let out = reads(&d, 4);
        assert!(out.iter().any(|r| r.is_err()), "round {round}");
        assert!(d.dead().is_some(), "round {round}");
        drop(d);
        t.join().unwrap();
    }
}

/// Reads and writes through a buffer: garbage in, whatever the client says out.
struct Canned(Cursor<Vec<u8>>, Vec<u8>);
impl Read for Canned {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(b)
    }
}
impl Write for Canned {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.1.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn handshake_and_parsers_survive_garbage() {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..20_000 {
        let len = (xorshift(&mut x) % 64) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| xorshift(&mut x) as u8).collect();
        let _ = wire::parse_greeting(&bytes);
        let _ = wire::parse_option_reply(&bytes, proto::OPT_GO);
        let _ = wire::parse_info(&bytes);
        let _ = wire::parse_reply(&bytes);
        let w = |i| u32::from_be_bytes([bytes.get(i).copied().unwrap_or(0), 0, 1, 0]);
        let _ = BlockSizes::new(w(0), w(1), w(2));
        // A plausible start (greeting, then an option reply) so the handshake gets further.
        let mut stream = proto::server_greeting().to_vec();
        if x % 2 == 0 {
            stream.extend_from_slice(&proto::option_reply(
                proto::OPT_GO,
                proto::REP_INFO,
                &bytes[..len.min(14)],
            ));
        }
        stream.append(&mut bytes);
        let mut c = Canned(Cursor::new(stream), Vec::new());
        assert!(handshake::run(&mut c, "x").is_err());
    }
}
