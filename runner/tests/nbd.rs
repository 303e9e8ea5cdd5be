//! The real `wbcache` binary served on temp files, driven by a minimal NBD client.

mod common;

use std::io::Read;

use common::*;

const MIB: u64 = 1 << 20;

#[test]
fn handshake_flags_and_basic_io() {
    let d = Devices::formatted(16 * MIB, 4 * MIB, 6);
    let srv = Server::start(&d, &[]);
    let mut c = srv.connect();
    assert_eq!(c.size, 16 * MIB);
    // HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES, CAN_MULTI_CONN.
    assert_eq!(c.flags, 1 | 4 | 8 | 32 | 64 | 256);

    let a = pattern(1, 64 * 1024);
    assert_eq!(c.write(0, &a, false), 0);
    assert_eq!(c.read(0, a.len() as u32).unwrap(), a);
    // Sub-block write inside a cached block, FUA.
    let b = pattern(2, 1536);
    assert_eq!(c.write(512, &b, true), 0);
    let mut want = a.clone();
    want[512..2048].copy_from_slice(&b);
    assert_eq!(c.read(0, a.len() as u32).unwrap(), want);
    assert_eq!(c.flush(), 0);
    // Write zeroes (NO_HOLE ignored, FUA honoured) and trim both read back as zeros.
    assert_eq!(c.write_zeroes(4096, 8192, 2 | FLAG_FUA), 0);
    assert_eq!(c.trim(32768, 4096), 0);
    want[4096..12288].fill(0);
    want[32768..36864].fill(0);
    assert_eq!(c.read(0, a.len() as u32).unwrap(), want);
    // Never written: the backing device's zeros. The last sector is readable.
    assert_eq!(c.read(16 * MIB - 512, 512).unwrap(), vec![0u8; 512]);
    c.disconnect();
    let (st, log) = srv.stop();
    assert!(st.success(), "{log}");
}

#[test]
fn options_list_info_and_unsupported() {
    let d = Devices::formatted(4 * MIB, 4 * MIB, 6);
    let srv = Server::start(&d, &[]);
    let mut s = Client::connect_raw(&srv.socket);
    Client::send_option(&mut s, 3, &[]); // LIST
    let (_, rep, data) = Client::read_option_reply(&mut s);
    assert_eq!(rep, 2, "NBD_REP_SERVER");
    assert_eq!(&data[4..], b"wbcache");
    assert_eq!(Client::read_option_reply(&mut s).1, 1, "ACK");
    Client::send_option(&mut s, 8, &[]); // STRUCTURED_REPLY
    assert_eq!(
        Client::read_option_reply(&mut s).1,
        (1 << 31) + 1,
        "ERR_UNSUP"
    );
    Client::send_option(&mut s, 5, &[]); // STARTTLS
    assert_eq!(
        Client::read_option_reply(&mut s).1,
        (1 << 31) + 1,
        "ERR_UNSUP"
    );
    let mut info = 7u32.to_be_bytes().to_vec();
    info.extend_from_slice(b"nothere");
    info.extend_from_slice(&0u16.to_be_bytes());
    Client::send_option(&mut s, 6, &info); // INFO, unknown name
    assert_eq!(
        Client::read_option_reply(&mut s).1,
        (1 << 31) + 6,
        "ERR_UNKNOWN"
    );
    let mut info = 7u32.to_be_bytes().to_vec();
    info.extend_from_slice(b"wbcache");
    info.extend_from_slice(&0u16.to_be_bytes());
    Client::send_option(&mut s, 6, &info); // INFO, our name
    let (_, rep, data) = Client::read_option_reply(&mut s);
    assert_eq!((rep, be16(&data)), (3, 0), "INFO_EXPORT");
    assert_eq!(be64(&data[2..]), 4 * MIB);
    assert_eq!(Client::read_option_reply(&mut s).1, 3, "INFO_BLOCK_SIZE");
    assert_eq!(Client::read_option_reply(&mut s).1, 1, "ACK");
    // EXPORT_NAME with the default name enters transmission (no zeroes: 10 bytes).
    Client::send_option(&mut s, 1, b"");
    let mut r = [0u8; 10];
    s.read_exact(&mut r).unwrap();
    assert_eq!(be64(&r), 4 * MIB);
    drop(s);
    // ABORT is acknowledged, then the server closes.
    let mut s = Client::connect_raw(&srv.socket);
    Client::send_option(&mut s, 2, &[]);
    assert_eq!(Client::read_option_reply(&mut s).1, 1);
    assert_eq!(s.read(&mut [0u8; 1]).unwrap_or(0), 0);
    assert!(srv.stop().0.success());
}

#[test]
fn malformed_requests_get_error_replies_and_the_session_goes_on() {
    let d = Devices::formatted(4 * MIB, 4 * MIB, 6);
    let srv = Server::start(&d, &[]);
    let mut c = srv.connect();
    let data = pattern(3, 4096);
    assert_eq!(c.write(0, &data, false), 0);
    const EINVAL: u32 = 22;
    const ENOSPC: u32 = 28;
    const EOVERFLOW: u32 = 75;
    assert_eq!(c.read(100, 512), Err(EINVAL), "misaligned offset");
    assert_eq!(c.read(0, 100), Err(EINVAL), "misaligned length");
    assert_eq!(c.read(4 * MIB, 512), Err(EINVAL), "read past the end");
    assert_eq!(c.read(u64::MAX - 511, 1024), Err(EINVAL), "offset overflow");
    assert_eq!(c.read(0, 0), Err(EINVAL), "zero length");
    assert_eq!(
        c.read(0, (32 << 20) + 512),
        Err(EOVERFLOW),
        "oversized read"
    );
    // A refused write's payload is skipped: the next request still parses.
    assert_eq!(c.write(4 * MIB - 512, &[7u8; 1024], false), ENOSPC);
    assert_eq!(c.write(512, &[7u8; 100], false), EINVAL, "misaligned write");
    assert_eq!(c.trim(4 * MIB, 4096), ENOSPC);
    assert_eq!(
        c.write_zeroes(0, 4096, 1 << 4),
        EINVAL,
        "FAST_ZERO not advertised"
    );
    assert_eq!(c.raw(CMD_READ, 1 << 2, 0, 512, &[]), EINVAL, "DF flag");
    assert_eq!(c.raw(9, 0, 0, 512, &[]), EINVAL, "unknown command");
    assert_eq!(
        c.raw(CMD_FLUSH, 0, 0, 512, &[]),
        EINVAL,
        "flush with a length"
    );
    assert_eq!(
        c.read(0, 4096).unwrap(),
        data,
        "nothing was written by refused requests"
    );
    // A request with a bad magic ends the session (hard disconnect), not the server.
    c.s.write_all_bad_magic();
    assert_eq!(
        c.s.read(&mut [0u8; 16]).unwrap_or(0),
        0,
        "server closed the connection"
    );
    let mut c2 = srv.connect();
    assert_eq!(c2.read(0, 4096).unwrap(), data);
    // A client that vanishes mid-request does not hurt the server either.
    c2.send(CMD_WRITE, 0, 0, 4096, &[1u8; 100]);
    drop(c2);
    let mut c3 = srv.connect();
    assert_eq!(
        c3.read(0, 4096).unwrap(),
        data,
        "the torn request was never executed"
    );
    let (st, log) = srv.stop();
    assert!(st.success(), "{log}");
    assert!(log.contains("refused request"), "{log}");
}

trait BadMagic {
    fn write_all_bad_magic(&mut self);
}

impl BadMagic for std::os::unix::net::UnixStream {
    fn write_all_bad_magic(&mut self) {
        use std::io::Write;
        self.write_all(&[0xde, 0xad, 0xbe, 0xef]).unwrap();
        self.write_all(&[0u8; 24]).unwrap();
    }
}

#[test]
fn pipelined_requests_are_all_answered_and_flush_covers_replied_writes() {
    let d = Devices::formatted(8 * MIB, 4 * MIB, 6);
    let srv = Server::start(&d, &[]);
    let mut c = srv.connect();
    // 64 writes in flight before any reply is read, then a FUA write and a flush.
    let mut handles = std::collections::BTreeSet::new();
    for i in 0..64u64 {
        handles.insert(c.send(CMD_WRITE, 0, i * 8192, 8192, &pattern(i, 8192)));
    }
    for _ in 0..64 {
        let (h, err) = c.reply();
        assert_eq!(err, 0);
        assert!(handles.remove(&h), "each handle answered once");
    }
    assert_eq!(c.write(MIB * 7, &pattern(99, 4096), true), 0);
    assert_eq!(c.flush(), 0);
    for i in 0..64u64 {
        assert_eq!(c.read(i * 8192, 8192).unwrap(), pattern(i, 8192));
    }
    assert!(srv.stop().0.success());
}

#[test]
fn two_concurrent_clients_see_each_others_writes() {
    let d = Devices::formatted(16 * MIB, 4 * MIB, 6);
    let srv = Server::start(&d, &[]);
    let threads: Vec<_> = (0..2u64)
        .map(|who| {
            let sock = srv.socket.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&sock);
                for i in 0..200u64 {
                    let off = (i * 2 + who) * 4096;
                    assert_eq!(c.write(off, &pattern(who * 1000 + i, 4096), i % 50 == 0), 0);
                    if i % 20 == 0 {
                        assert_eq!(c.flush(), 0);
                    }
                }
                c.disconnect();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut c = srv.connect();
    for who in 0..2u64 {
        for i in 0..200u64 {
            let off = (i * 2 + who) * 4096;
            assert_eq!(c.read(off, 4096).unwrap(), pattern(who * 1000 + i, 4096));
        }
    }
    assert!(srv.stop().0.success());
}

#[test]
fn sigterm_shuts_down_cleanly_and_a_restart_recovers_the_data() {
    let d = Devices::formatted(8 * MIB, 4 * MIB, 5);
    let srv = Server::start(&d, &[]);
    let mut c = srv.connect();
    // Acknowledged but never flushed: the clean shutdown must make it durable.
    for i in 0..40u64 {
        assert_eq!(c.write(i * 4096 + 512, &pattern(i, 2048), false), 0);
    }
    drop(c);
    let (st, log) = srv.stop();
    assert!(st.success(), "{log}");
    assert!(log.contains("clean shutdown"), "{log}");
    assert!(!d.socket().exists(), "socket removed on exit");

    let srv = Server::start(&d, &[]);
    let log = srv.log_text();
    assert!(log.contains("replayed"), "restart replays the log: {log}");
    let mut c = srv.connect();
    for i in 0..40u64 {
        let got = c.read(i * 4096, 4096).unwrap();
        assert_eq!(&got[512..2560], &pattern(i, 2048)[..], "block {i}");
        assert!(got[..512].iter().chain(&got[2560..]).all(|&b| b == 0));
    }
    drop(c);
    assert!(srv.stop().0.success());
}

#[test]
fn a_busy_client_gets_its_in_flight_requests_answered_at_sigterm() {
    let d = Devices::formatted(8 * MIB, 4 * MIB, 6);
    let srv = Server::start(&d, &[]);
    let mut c = srv.connect();
    for i in 0..16u64 {
        c.send(CMD_WRITE, 0, i * 4096, 4096, &pattern(i + 7, 4096));
    }
    let mut answered = 0;
    srv.signal(15);
    // Every request sent before the shutdown is answered (success or ESHUTDOWN), then EOF.
    let mut acked = Vec::new();
    for _ in 0..16 {
        let mut h = [0u8; 16];
        if c.s.read_exact(&mut h).is_err() {
            break;
        }
        answered += 1;
        let err = be32(&h[4..]);
        assert!(err == 0 || err == 108, "errno {err}");
        if err == 0 {
            acked.push(be64(&h[8..]));
        }
    }
    assert_eq!(answered, 16, "every in-flight request answered");
    let (st, log) = srv.wait_exit();
    assert!(st.success(), "{log}");
    // Acknowledged writes survive the restart.
    let srv = Server::start(&d, &[]);
    let mut c = srv.connect();
    for h in acked {
        let i = h - 1;
        assert_eq!(c.read(i * 4096, 4096).unwrap(), pattern(i + 7, 4096));
    }
    drop(c);
    assert!(srv.stop().0.success());
}
