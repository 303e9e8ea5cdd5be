//! The real `wbcache` binary served on temp files, driven by real NBD clients: qemu-io,
//! nbdinfo, nbdcopy (with nbdkit as a source), fio's nbd engine, and a kill -9 crash test.
//!
//! These tests never skip: a missing tool fails the test with the install command.
//! `cargo xtask test` installs the tools when they are missing (fio, libnbd-bin, nbdkit,
//! qemu-utils). Run just these: `cargo test -p wbcache-runner --test clients`.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

// ---------------------------------------------------------------------------------------------
// Tools and processes
// ---------------------------------------------------------------------------------------------
/// Kills and reaps a child process when dropped (also on panic).
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs a command to completion with stdout and stderr captured; `limit` is hang protection
/// only (the child is killed and the test fails), never a timing assertion.
fn run_limited(cmd: &mut Command, limit: Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut g = ChildGuard(Some(child));
    let t = Instant::now();
    let status = loop {
        if let Some(st) = g.0.as_mut().unwrap().try_wait().unwrap() {
            g.0 = None;
            break st;
        }
        if t.elapsed() > limit {
            drop(g);
            panic!(
                "{cmd:?} hung (killed after {limit:?}); output so far:\n{}{}",
                std::fs::read_to_string(&out).unwrap_or_default(),
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: std::fs::read(&out).unwrap(),
        stderr: std::fs::read(&err).unwrap(),
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

/// `nbd+unix:///?socket=PATH` for a server.
fn uri(srv: &Server) -> String {
    format!("nbd+unix:///?socket={}", srv.socket.display())
}

/// Runs qemu-io commands on one connection; every command must succeed and every `read -P`
/// must verify.
fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut c = Command::new(tool("qemu-io"));
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(uri);
    let o = run_limited(&mut c, Duration::from_secs(120));
    let out = text(&o);
    assert!(
        o.status.success()
            && !out.contains("fail")
            && !out.contains("error")
            && !out.contains("Pattern verification"),
        "qemu-io {cmds:?} ({}):\n{out}",
        o.status
    );
    out
}

/// `wbcache status` as key/value pairs.
fn status(srv: &Server) -> HashMap<String, String> {
    let o = wbcache(&["status", "--control", srv.control.to_str().unwrap()]);
    assert!(o.status.success(), "status: {}", stderr(&o));
    stdout(&o)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn status_u64(st: &HashMap<String, String>, key: &str) -> u64 {
    st.get(key)
        .unwrap_or_else(|| panic!("status has no {key}: {st:?}"))
        .parse()
        .unwrap()
}

/// SIGKILL (kill -9), then reap.
fn kill9(mut srv: Server) {
    let mut c = srv.child.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
}

/// A seeded file of `len` pseudo-random bytes (xorshift64*, fast enough for 64 MiB).
fn random_file(path: &Path, seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    std::fs::write(path, &v).unwrap();
    v
}

fn cmp_files(a: &Path, b: &Path) {
    let o = run_limited(Command::new("cmp").arg(a).arg(b), Duration::from_secs(60));
    assert!(o.status.success(), "cmp {a:?} {b:?}: {}", text(&o));
}

// ---------------------------------------------------------------------------------------------
// qemu-io
// ---------------------------------------------------------------------------------------------

/// Pattern writes and verified reads, FUA writes, write-zeroes (also with FUA), flush, discard,
/// a sub-sector write (qemu's read-modify-write, as the advertised minimum block size asks),
/// async writes, a write larger than the cache (writeback and slot reuse), and all of it read
/// back after a clean restart and again after a kill -9 that followed a flush.
#[test]
fn qemu_io_writes_fua_zeroes_flush_discard_and_restarts() {
    let d = Devices::formatted(16 * MIB, 4 * MIB, 7);
    // No sequential bypass: the 8 MiB write must go through the ring and wrap it.
    let srv = Server::start(&d, &["--allow_writeback", "1", "--sequential_cutoff", "0"]);
    let u = uri(&srv);
    // Each write is followed by a verified read on the same connection (contract rule 1, docs/DESIGN.md).
    qemu_io(
        &u,
        &[
            "write -P 0xab 0 64k",
            "read -P 0xab 0 64k",
            "write -f -P 0xcd 64k 64k", // FUA
            "read -P 0xcd 64k 64k",
            "read -P 0xab 0 64k",
            "write -P 0xee 128k 64k",
            "write -z 128k 64k",
            "read -P 0 128k 64k",
            "write -P 0xee 192k 8k",
            "write -z -f 192k 4k", // write-zeroes with FUA
            "read -P 0 192k 4k",
            "read -P 0xee 196k 4k",
            "flush",
            "write -P 0x77 256k 64k",
            "discard 256k 32k", // TRIM: the engine's discard writes zeros
            "read -P 0 256k 32k",
            "read -P 0x77 288k 32k",
            "write -P 0x11 1048676 1000", // 1M + 100: sub-sector, qemu does read-modify-write
            "read -P 0x11 1048676 1000",
            "read -P 0 1M 100",
            "read -P 0 1049676 948",
            "aio_write -P 0x5a 2M 256k",
            "aio_write -P 0xa5 3M 256k",
            "aio_flush",
            "read -P 0x5a 2M 256k",
            "read -P 0xa5 3M 256k",
            "write -P 0x33 4M 8M", // twice the cache device: forces writeback and slot reuse
            "flush",
            "read -P 0x33 4M 8M",
        ],
    );
    // A new connection sees it all (and a never-written range reads as the backing's zeros).
    let verify_all: &[&str] = &[
        "read -P 0xab 0 64k",
        "read -P 0xcd 64k 64k",
        "read -P 0 128k 68k",
        "read -P 0xee 196k 4k",
        "read -P 0 256k 32k",
        "read -P 0x77 288k 32k",
        "read -P 0 320k 704k",
        "read -P 0 1M 100",
        "read -P 0x11 1048676 1000",
        "read -P 0 1049676 948",
        "read -P 0x5a 2M 256k",
        "read -P 0xa5 3M 256k",
        "read -P 0x33 4M 8M",
        "read -P 0 12M 4M",
    ];
    qemu_io(&u, verify_all);
    let st = status(&srv);
    assert!(
        status_u64(&st, "current_id") > status_u64(&st, "nr_segments"),
        "the 8 MiB write should have reused ring slots: {st:?}"
    );
    // Clean restart (SIGTERM), read everything back.
    let (es, log) = srv.stop();
    assert!(es.success(), "{log}");
    let srv = Server::start(&d, &[]);
    qemu_io(&uri(&srv), verify_all);
    // Overwrite, flush, kill -9: the flushed data survives the real process being killed.
    qemu_io(
        &uri(&srv),
        &["write -P 0x42 64k 64k", "write -f -P 0x43 2M 4k", "flush"],
    );
    kill9(srv);
    let srv = Server::start(&d, &[]);
    let mut after_kill: Vec<&str> = verify_all
        .iter()
        .copied()
        .filter(|c| !c.contains(" 64k 64k") && !c.contains(" 2M "))
        .collect();
    after_kill.extend([
        "read -P 0x42 64k 64k",
        "read -P 0x43 2M 4k",
        "read -P 0x5a 2101248 253952", // 2M + 4k .. 2M + 256k
    ]);
    qemu_io(&uri(&srv), &after_kill);
    let (es, log) = srv.stop();
    assert!(es.success(), "{log}");
}

// ---------------------------------------------------------------------------------------------
// nbdinfo
// ---------------------------------------------------------------------------------------------

/// A minimal JSON value and parser (enough for nbdinfo --json; no dependency needed).
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn parse(s: &str) -> Result<Json, String> {
        let b = s.as_bytes();
        let mut i = 0;
        let v = Self::value(b, &mut i)?;
        Self::ws(b, &mut i);
        if i != b.len() {
            return Err(format!("trailing data at byte {i}"));
        }
        Ok(v)
    }
    fn ws(b: &[u8], i: &mut usize) {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    }
    fn value(b: &[u8], i: &mut usize) -> Result<Json, String> {
        Self::ws(b, i);
        let lit = |i: &mut usize, w: &str, v: Json| {
            if b[*i..].starts_with(w.as_bytes()) {
                *i += w.len();
                Ok(v)
            } else {
                Err(format!("bad literal at byte {i}"))
            }
        };
        match b.get(*i).copied() {
            None => Err("unexpected end".into()),
            Some(b'n') => lit(i, "null", Json::Null),
            Some(b't') => lit(i, "true", Json::Bool(true)),
            Some(b'f') => lit(i, "false", Json::Bool(false)),
            Some(b'"') => Self::string(b, i).map(Json::Str),
            Some(b'[') => {
                *i += 1;
                let mut v = Vec::new();
                loop {
                    Self::ws(b, i);
                    if b.get(*i) == Some(&b']') {
                        *i += 1;
                        return Ok(Json::Arr(v));
                    }
                    if !v.is_empty() {
                        Self::expect(b, i, b',')?;
                    }
                    v.push(Self::value(b, i)?);
                }
            }
            Some(b'{') => {
                *i += 1;
                let mut v = Vec::new();
                loop {
                    Self::ws(b, i);
                    if b.get(*i) == Some(&b'}') {
                        *i += 1;
                        return Ok(Json::Obj(v));
                    }
                    if !v.is_empty() {
                        Self::expect(b, i, b',')?;
                        Self::ws(b, i);
                    }
                    let k = Self::string(b, i)?;
                    Self::ws(b, i);
                    Self::expect(b, i, b':')?;
                    v.push((k, Self::value(b, i)?));
                }
            }
            Some(_) => {
                let start = *i;
                while *i < b.len()
                    && matches!(b[*i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    *i += 1;
                }
                std::str::from_utf8(&b[start..*i])
                    .unwrap()
                    .parse()
                    .map(Json::Num)
                    .map_err(|e| format!("bad number at byte {start}: {e}"))
            }
        }
    }
    fn expect(b: &[u8], i: &mut usize, c: u8) -> Result<(), String> {
        if b.get(*i) == Some(&c) {
            *i += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at byte {i}", c as char))
        }
    }
    fn string(b: &[u8], i: &mut usize) -> Result<String, String> {
        Self::expect(b, i, b'"')?;
        let mut s = Vec::new();
        while let Some(&c) = b.get(*i) {
            *i += 1;
            match c {
                b'"' => return String::from_utf8(s).map_err(|e| e.to_string()),
                b'\\' => {
                    let e = *b.get(*i).ok_or("unexpected end")?;
                    *i += 1;
                    match e {
                        b'n' => s.push(b'\n'),
                        b't' => s.push(b'\t'),
                        b'r' => s.push(b'\r'),
                        b'b' => s.push(8),
                        b'f' => s.push(12),
                        b'u' => {
                            let h = std::str::from_utf8(b.get(*i..*i + 4).ok_or("short \\u")?)
                                .map_err(|e| e.to_string())?;
                            let c = u32::from_str_radix(h, 16).map_err(|e| e.to_string())?;
                            *i += 4;
                            let ch = char::from_u32(c).unwrap_or('\u{fffd}');
                            s.extend_from_slice(ch.to_string().as_bytes());
                        }
                        other => s.push(other),
                    }
                }
                c => s.push(c),
            }
        }
        Err("unterminated string".into())
    }
    fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(v) => v
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("no {key:?} in {self:?}")),
            _ => panic!("not an object: {self:?}"),
        }
    }
    fn num(&self) -> u64 {
        match self {
            Json::Num(n) => *n as u64,
            _ => panic!("not a number: {self:?}"),
        }
    }
}

#[test]
fn json_parser_reads_what_it_must() {
    let v =
        Json::parse(r#" {"a": [1, 2.5, -3e2], "b": {"c": "x\"\u0041"}, "d": true, "e": null} "#)
            .unwrap();
    assert_eq!(
        v.get("a"),
        &Json::Arr(vec![Json::Num(1.0), Json::Num(2.5), Json::Num(-300.0)])
    );
    assert_eq!(v.get("b").get("c"), &Json::Str("x\"A".into()));
    assert_eq!(v.get("d"), &Json::Bool(true));
    assert_eq!(v.get("e"), &Json::Null);
    assert!(Json::parse("{\"a\": 1").is_err());
    assert!(Json::parse("[1 2]").is_err());
}

/// Runs nbdinfo; returns (exit code, output).
fn nbdinfo(args: &[&str]) -> (i32, String) {
    let o = run_limited(
        Command::new(tool("nbdinfo")).args(args),
        Duration::from_secs(60),
    );
    (o.status.code().unwrap_or(-1), text(&o))
}

/// What an nbdinfo probe must say about our export at `u`: every advertised capability, the
/// ones we do not offer, the size and the block-size constraints.
fn check_nbdinfo(u: &str, size: u64) {
    // `--can X` / `--is X` exit 0 for true, 2 for false.
    for (probe, want) in [
        ("flush", 0),
        ("fua", 0),
        ("zero", 0),
        ("trim", 0),
        ("multi-conn", 0),
        // Not offered: no structured replies (so no block status / df), no fast zero, no cache.
        ("df", 2),
        ("fast-zero", 2),
        ("cache", 2),
    ] {
        let (code, out) = nbdinfo(&["--can", probe, u]);
        assert_eq!(code, want, "nbdinfo --can {probe} {u}: {out}");
    }
    let (code, out) = nbdinfo(&["--is", "read-only", u]);
    assert_eq!(code, 2, "nbdinfo --is read-only: {out}");
    let (code, out) = nbdinfo(&["--size", u]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.trim().parse::<u64>().ok(),
        Some(size),
        "nbdinfo --size: {out}"
    );

    let o = run_limited(
        Command::new(tool("nbdinfo")).args(["--json", u]),
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "nbdinfo --json: {}", text(&o));
    let j = Json::parse(&stdout(&o)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)));
    assert_eq!(j.get("protocol"), &Json::Str("newstyle-fixed".into()));
    let Json::Arr(exports) = j.get("exports") else {
        panic!("exports is not an array: {j:?}")
    };
    assert_eq!(exports.len(), 1, "{j:?}");
    let e = &exports[0];
    assert_eq!(e.get("export-size").num(), size);
    assert_eq!(e.get("block_size_minimum").num(), 512);
    assert_eq!(e.get("block_size_preferred").num(), 4096);
    assert_eq!(e.get("block_size_maximum").num(), 32 * MIB);
    for (k, v) in [
        ("is_read_only", false),
        ("can_flush", true),
        ("can_fua", true),
        ("can_zero", true),
        ("can_trim", true),
        ("can_multi_conn", true),
        ("can_df", false),
        ("can_fast_zero", false),
        ("can_cache", false),
    ] {
        assert_eq!(e.get(k), &Json::Bool(v), "{k} in {e:?}");
    }
}

/// A free loopback port (bound and released; the caller retries if it is taken meanwhile).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nbdinfo's probes over the Unix socket and over loopback TCP (`serve --listen`).
#[test]
fn nbdinfo_reports_what_the_server_advertises_over_unix_and_tcp() {
    // A size that is no power of two: the export is exactly the backing device.
    let size = 20 * MIB + 12 * KIB;
    let d = Devices::formatted(size, 4 * MIB, 6);
    let srv = Server::start(&d, &[]);
    check_nbdinfo(&uri(&srv), size);
    let (es, log) = srv.stop();
    assert!(es.success(), "{log}");

    // The same over TCP, with its own control socket (the default is shared per user).
    let control = d.dir.path().join("tcp.ctl");
    let log = d.dir.path().join("tcp.log");
    let mut attempt = 0;
    let (guard, port) = loop {
        attempt += 1;
        let port = free_port();
        let child = Command::new(BIN)
            .args([
                "serve",
                "--backing",
                d.backing_str(),
                "--cache",
                d.cache_str(),
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--control", control.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut g = ChildGuard(Some(child));
        let t = Instant::now();
        let ready = loop {
            let l = std::fs::read_to_string(&log).unwrap_or_default();
            if l.contains("serving ") {
                break true;
            }
            if g.0.as_mut().unwrap().try_wait().unwrap().is_some() {
                assert!(
                    attempt < 5 && l.contains("binding"),
                    "serve --listen failed: {l}"
                );
                break false;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "not ready: {l}");
            std::thread::sleep(Duration::from_millis(20));
        };
        if ready {
            break (g, port);
        }
    };
    let u = format!("nbd://127.0.0.1:{port}");
    check_nbdinfo(&u, size);
    // Data goes through TCP too.
    qemu_io(
        &u,
        &["write -P 0x6b 1M 128k", "flush", "read -P 0x6b 1M 128k"],
    );
    let mut guard = guard;
    let pid = guard.0.as_ref().unwrap().id() as i32;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let st = guard.0.take().unwrap().wait().unwrap();
    assert!(st.success(), "{}", std::fs::read_to_string(&log).unwrap());
}

// ---------------------------------------------------------------------------------------------
// nbdcopy (and nbdkit as a source)
// ---------------------------------------------------------------------------------------------

fn nbdcopy(args: &[&str]) {
    let o = run_limited(
        Command::new(tool("nbdcopy")).args(args),
        Duration::from_secs(300),
    );
    assert!(o.status.success(), "nbdcopy {args:?}: {}", text(&o));
}

/// A 64 MiB seeded random image through a 16 MiB cache (so writeback and slot reuse happen,
/// with nbdcopy's parallel connections: multi-conn) and back out, byte for byte; then an
/// nbdkit `random` source over the first 8 MiB; then offline writeback leaves exactly that
/// image on the backing device.
#[test]
fn nbdcopy_round_trips_a_64_mib_image_through_a_16_mib_cache() {
    tool("nbdkit");
    let d = Devices::formatted(64 * MIB, 16 * MIB, 10);
    // No sequential bypass: the image must go through the ring and wrap it twice.
    let srv = Server::start(&d, &["--allow_writeback", "1", "--sequential_cutoff", "0"]);
    let u = uri(&srv);
    let src = d.dir.path().join("src.img");
    let out = d.dir.path().join("out.img");
    let mut image = random_file(&src, 0x006e_6264_636f_7079, 64 * MIB as usize);
    // A few all-zero ranges, which nbdcopy sends as zero requests.
    for z in [(5 * MIB, 4 * KIB), (17 * MIB, MIB), (63 * MIB, MIB)] {
        image[z.0 as usize..(z.0 + z.1) as usize].fill(0);
    }
    std::fs::write(&src, &image).unwrap();

    nbdcopy(&["--flush", src.to_str().unwrap(), &u]);
    nbdcopy(&[&u, out.to_str().unwrap()]);
    cmp_files(&src, &out);
    let st = status(&srv);
    assert!(
        status_u64(&st, "current_id") > 2 * status_u64(&st, "nr_segments"),
        "64 MiB through 30 segments must wrap the ring twice: {st:?}"
    );
    assert!(status_u64(&st, "last_writeback_id") > 0, "{st:?}");

    // nbdkit's seeded random data over the first 8 MiB (nbdkit started by nbdcopy via socket
    // activation), compared with the same source copied to a file.
    let kit = ["[", "nbdkit", "random", "size=8M", "seed=4242", "]"];
    let mut args = vec!["--flush", "--"];
    args.extend(kit);
    args.push(&u);
    nbdcopy(&args);
    let kit_file = d.dir.path().join("kit.img");
    let mut args = vec!["--"];
    args.extend(kit);
    args.push(kit_file.to_str().unwrap());
    nbdcopy(&args);
    let kit_data = std::fs::read(&kit_file).unwrap();
    assert_eq!(kit_data.len() as u64, 8 * MIB);
    assert!(kit_data.iter().any(|&b| b != 0));
    image[..kit_data.len()].copy_from_slice(&kit_data);
    std::fs::write(&src, &image).unwrap();
    nbdcopy(&[&u, out.to_str().unwrap()]);
    cmp_files(&src, &out);

    // Clean stop, offline writeback: the backing device itself now holds the image.
    let (es, log) = srv.stop();
    assert!(es.success(), "{log}");
    let o = d.writeback();
    assert!(o.status.success(), "writeback: {}", stderr(&o));
    cmp_files(&src, &d.backing);
}

/// Sequential bypass end to end (docs/DESIGN.md, "Sequential bypass"): nbdcopy's streams of a
/// 64 MiB image pass the default 4 MiB cutoff, so most of it goes straight to the backing
/// device; after its FLUSH a kill -9 loses nothing, and a restart reads the image back.
#[test]
fn a_sequential_stream_bypasses_the_cache_and_survives_a_kill() {
    let d = Devices::formatted(64 * MIB, 16 * MIB, 10);
    let srv = Server::start(&d, &[]);
    let u = uri(&srv);
    let src = d.dir.path().join("src.img");
    let out = d.dir.path().join("out.img");
    random_file(&src, 0x6279_7061_7373, 64 * MIB as usize);
    nbdcopy(&["--flush", src.to_str().unwrap(), &u]);
    let st = status(&srv);
    let bypassed = status_u64(&st, "bypassed_writes");
    assert!(bypassed > 0, "{st:?}");
    assert!(
        status_u64(&st, "nr_dirty_cache_blocks") * 4 * KIB < 16 * MIB,
        "most of the image bypassed the 16 MiB cache: {st:?}"
    );
    kill9(srv);
    let srv = Server::start(&d, &[]);
    nbdcopy(&[&uri(&srv), out.to_str().unwrap()]);
    cmp_files(&src, &out);
    let (es, log) = srv.stop();
    assert!(es.success(), "{log}");
}

// ---------------------------------------------------------------------------------------------
// fio
// ---------------------------------------------------------------------------------------------

/// fio in `dir` (a temp dir: fio may write state files into its working directory).
fn fio(dir: &Path, uri: &str, extra: &[&str]) -> Output {
    let uri_arg = format!("--uri={uri}");
    let mut c = Command::new(tool("fio"));
    c.current_dir(dir).args([
        "--name=wbcache",
        "--ioengine=nbd",
        &uri_arg,
        "--rw=randwrite",
        "--bs=4k",
        "--size=32m",
        "--iodepth=16",
        "--fsync=64", // an NBD FLUSH every 64 writes
        "--verify=crc32c",
        "--verify_fatal=1",
        "--randseed=20240601",
        "--verify_state_save=0",
    ]);
    c.args(extra);
    run_limited(&mut c, Duration::from_secs(300))
}

/// fio's nbd engine: 32 MiB of random 4 KiB writes at queue depth 16 through a 16 MiB cache,
/// then fio's crc32c verify phase; the same verification after a clean restart; and a
/// corrupted block must make fio's verification fail (the check is not vacuous).
#[test]
fn fio_nbd_engine_random_writes_verify_crc32c() {
    let f = tool("fio");
    let eng = run_limited(
        Command::new(&f).arg("--enghelp=nbd"),
        Duration::from_secs(30),
    );
    assert!(
        eng.status.success() && stdout(&eng).contains("uri"),
        "this fio has no nbd engine (fio --enghelp=nbd): {}",
        text(&eng)
    );
    let d = Devices::formatted(64 * MIB, 16 * MIB, 10);
    let srv = Server::start(&d, &["--allow_writeback", "1"]);
    let o = fio(d.dir.path(), &uri(&srv), &["--do_verify=1"]);
    let out = text(&o);
    assert!(o.status.success() && out.contains("err= 0"), "fio: {out}");
    assert!(!out.contains("verify: bad"), "{out}");
    assert!(out.contains("READ: bw="), "no verify phase ran: {out}");
    let st = status(&srv);
    assert!(
        status_u64(&st, "current_id") > status_u64(&st, "nr_segments"),
        "32 MiB through a 16 MiB cache should reuse slots: {st:?}"
    );

    // Clean restart; fio verifies what it wrote (same seed and job, no writes).
    let (es, log) = srv.stop();
    assert!(es.success(), "{log}");
    let srv = Server::start(&d, &[]);
    let o = fio(d.dir.path(), &uri(&srv), &["--verify_only=1"]);
    let out = text(&o);
    assert!(
        o.status.success() && out.contains("err= 0"),
        "fio verify_only: {out}"
    );
    assert!(out.contains("READ: bw="), "{out}");

    // Corrupt one block (every 4 KiB block of the 32 MiB was written): fio must notice.
    let mut c = srv.connect();
    assert_eq!(c.write(12 * MIB, &pattern(77, 4096), false), 0);
    c.disconnect();
    let o = fio(d.dir.path(), &uri(&srv), &["--verify_only=1"]);
    let out = text(&o);
    assert!(
        !o.status.success() && out.contains("verify"),
        "fio did not catch a corrupted block: {out}"
    );
    let (es, log) = srv.stop();
    assert!(es.success(), "{log}");
}

// ---------------------------------------------------------------------------------------------
// kill -9 crash test on the real process
// ---------------------------------------------------------------------------------------------

/// splitmix64: the test's seeded randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const SECTOR: usize = 512;
const BLOCK: usize = 4096;
const SPB: usize = BLOCK / SECTOR;
const KILL_MAGIC: &[u8; 8] = b"WBKILL9\0";

/// One value a sector may hold: the content of write `id` (unique over the whole test), or
/// zeros (the backing device's initial content, write-zeroes, trim).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Val {
    id: u64,
    zero: bool,
}

const INITIAL: Val = Val { id: 0, zero: true };

/// The bytes write `id` puts in sector `s` (0..8) of `block`: magic, block, id, sector index,
/// then seeded filler; a sector from another block, another write or another position, and
/// garbage, are all told apart.
fn sector_content(seed: u64, block: u64, id: u64, s: usize) -> [u8; SECTOR] {
    let mut b = [0u8; SECTOR];
    b[..8].copy_from_slice(KILL_MAGIC);
    b[8..16].copy_from_slice(&block.to_le_bytes());
    b[16..24].copy_from_slice(&id.to_le_bytes());
    b[24..32].copy_from_slice(&(s as u64).to_le_bytes());
    let mut r = Rng(seed ^ id.wrapping_mul(0xA24B_AED4_963E_E407) ^ ((s as u64) << 56));
    for chunk in b[32..].chunks_mut(8) {
        chunk.copy_from_slice(&r.next().to_le_bytes());
    }
    b
}

fn describe_sector(data: &[u8]) -> String {
    if data.iter().all(|&x| x == 0) {
        "zeros".into()
    } else if &data[..8] == KILL_MAGIC {
        let f = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().unwrap());
        format!("write #{} of block {} sector {}", f(16), f(8), f(24))
    } else {
        format!("garbage {:02x?}…", &data[..16])
    }
}

/// Per sector: the durable value (covered by a completed FLUSH or its own FUA) and every value
/// written after it, acknowledged or not, in order. Writes to one block are never in flight
/// together, so this order is the device's order.
struct SectorModel {
    durable: Val,
    later: Vec<Val>,
}

struct KillTest {
    seed: u64,
    plog: bool,
    blocks: u64,
    sectors: Vec<SectorModel>,
    /// Acknowledged, not yet known durable: block → newest acknowledged value.
    acked: HashMap<u64, Val>,
    next_id: u64,
    rerun: String,
    /// Sectors found at recovery with their durable value although later writes were sent
    /// (those writes were lost: allowed), and with a later value (kept).
    lost: u64,
    kept: u64,
}

enum Op {
    Write { block: u64, val: Val, fua: bool },
    Flush { covers: Vec<(u64, Val)> },
}

impl KillTest {
    fn fail(&self, round: usize, msg: String) -> ! {
        panic!(
            "kill -9 test (type {}), seed {:#x}, round {round}: {msg}\n  rerun: {}",
            u8::from(self.plog),
            self.seed,
            self.rerun
        )
    }

    /// The value `val` was made durable for `block`'s sectors (FLUSH or FUA completed).
    fn make_durable(&mut self, block: u64, val: Val) {
        for s in 0..SPB {
            let m = &mut self.sectors[block as usize * SPB + s];
            if let Some(p) = m.later.iter().position(|v| *v == val) {
                m.durable = val;
                m.later.drain(..=p);
            }
        }
    }

    /// Reads the whole export and checks every sector against the model (contract rule 3, docs/DESIGN.md: the durable
    /// value or a later one; never older, never garbage); then, after a completed FLUSH, what
    /// was read is the new durable state.
    fn verify(&mut self, c: &mut Client, round: usize) {
        const CHUNK: u64 = 64;
        let mut found = Vec::with_capacity(self.sectors.len());
        for first in (0..self.blocks).step_by(CHUNK as usize) {
            let n = CHUNK.min(self.blocks - first);
            let data = c
                .read(first * BLOCK as u64, (n as usize * BLOCK) as u32)
                .unwrap_or_else(|e| self.fail(round, format!("read error {e} after recovery")));
            for (i, sd) in data.chunks(SECTOR).enumerate() {
                let sector = first as usize * SPB + i;
                let (block, s) = ((sector / SPB) as u64, sector % SPB);
                let m = &self.sectors[sector];
                let ok = std::iter::once(&m.durable)
                    .chain(m.later.iter())
                    .find(|v| {
                        if v.zero {
                            sd.iter().all(|&x| x == 0)
                        } else {
                            sd == sector_content(self.seed, block, v.id, s)
                        }
                    })
                    .copied();
                match ok {
                    Some(v) => {
                        if !m.later.is_empty() {
                            if v == m.durable {
                                self.lost += 1;
                            } else {
                                self.kept += 1;
                            }
                        }
                        found.push(v)
                    }
                    None => self.fail(
                        round,
                        format!(
                            "block {block} sector {s} holds {}; allowed: durable {:?}, later {:?}",
                            describe_sector(sd),
                            m.durable,
                            m.later
                        ),
                    ),
                }
            }
        }
        assert_eq!(c.flush(), 0, "FLUSH after recovery");
        for (m, v) in self.sectors.iter_mut().zip(found) {
            m.durable = v;
            m.later.clear();
        }
        self.acked.clear();
    }

    /// One round of seeded client work; returns with requests still in flight (or not), for the
    /// caller to kill the server at that moment.
    fn work(&mut self, rng: &mut Rng, c: &mut Client, round: usize, ops: u64) {
        let depth = 1 + rng.below(16) as usize;
        let mut inflight: HashMap<u64, Op> = HashMap::new();
        let mut busy: HashMap<u64, ()> = HashMap::new();
        let mut writes_since_flush = 0;
        let mut sent = 0;
        let reply = |me: &mut Self,
                     c: &mut Client,
                     inflight: &mut HashMap<u64, Op>,
                     busy: &mut HashMap<u64, ()>| {
            let (h, err) = c.reply();
            let op = inflight
                .remove(&h)
                .unwrap_or_else(|| me.fail(round, format!("reply for unknown handle {h}")));
            if err != 0 {
                me.fail(round, format!("request failed with errno {err}"));
            }
            match op {
                Op::Write { block, val, fua } => {
                    busy.remove(&block);
                    if fua {
                        me.acked.remove(&block);
                        me.make_durable(block, val);
                    } else {
                        me.acked.insert(block, val);
                    }
                }
                Op::Flush { covers } => {
                    for (block, val) in covers {
                        me.make_durable(block, val);
                    }
                }
            }
        };
        while sent < ops {
            if inflight.len() >= depth {
                reply(self, c, &mut inflight, &mut busy);
                continue;
            }
            if writes_since_flush >= 8 {
                // FLUSH covers every write acknowledged before it is sent.
                writes_since_flush = 0;
                let covers: Vec<(u64, Val)> = self.acked.drain().collect();
                let h = c.send(CMD_FLUSH, 0, 0, 0, &[]);
                inflight.insert(h, Op::Flush { covers });
                sent += 1;
                continue;
            }
            // Half the writes go to 64 hot blocks (overwrites), the rest anywhere.
            let block = loop {
                let b = if rng.below(2) == 0 {
                    rng.below(64.min(self.blocks))
                } else {
                    rng.below(self.blocks)
                };
                if !busy.contains_key(&b) {
                    break b;
                }
            };
            self.next_id += 1;
            let id = self.next_id;
            let kind = rng.below(32);
            let (val, h, fua) = match kind {
                0 => {
                    let val = Val { id, zero: true };
                    let h = c.send(CMD_WRITE_ZEROES, 0, block * BLOCK as u64, BLOCK as u32, &[]);
                    (val, h, false)
                }
                1 => {
                    let val = Val { id, zero: true };
                    let h = c.send(CMD_TRIM, 0, block * BLOCK as u64, BLOCK as u32, &[]);
                    (val, h, false)
                }
                _ => {
                    let fua = kind < 4;
                    let mut data = Vec::with_capacity(BLOCK);
                    for s in 0..SPB {
                        data.extend_from_slice(&sector_content(self.seed, block, id, s));
                    }
                    let flags = if fua { FLAG_FUA } else { 0 };
                    let h = c.send(CMD_WRITE, flags, block * BLOCK as u64, BLOCK as u32, &data);
                    (Val { id, zero: false }, h, fua)
                }
            };
            for s in 0..SPB {
                self.sectors[block as usize * SPB + s].later.push(val);
            }
            busy.insert(block, ());
            inflight.insert(h, Op::Write { block, val, fua });
            writes_since_flush += 1;
            sent += 1;
        }
        // Sometimes let everything complete before the kill.
        if rng.below(4) == 0 {
            while !inflight.is_empty() {
                reply(self, c, &mut inflight, &mut busy);
            }
        }
    }
}

/// SIGKILL of the real server process at seeded moments, restarted on the same files each
/// time; every sector must hold its last durable value or a later one (contract rule 3, docs/DESIGN.md).
/// `WBCACHE_KILL_SEED` and `WBCACHE_KILLS` (default 40) select the run.
fn kill9_crash_test(plog: bool) {
    let seed = std::env::var("WBCACHE_KILL_SEED")
        .ok()
        .map(|s| {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => s.parse(),
            }
            .expect("WBCACHE_KILL_SEED: a number")
        })
        .unwrap_or(0x6b69_6c6c);
    let kills: usize = std::env::var("WBCACHE_KILLS")
        .ok()
        .map(|s| s.parse().expect("WBCACHE_KILLS: a number"))
        .unwrap_or(40);
    let name = if plog {
        "kill9_type1_plog_real_process"
    } else {
        "kill9_type0_real_process"
    };
    let rerun = format!(
        "WBCACHE_KILL_SEED={seed:#x} WBCACHE_KILLS={kills} cargo test -p wbcache-runner --test clients {name} -- --exact --nocapture"
    );
    eprintln!("{name}: seed {seed:#x}, {kills} kills; rerun: {rerun}");

    // 8 MiB export (2048 blocks), a 2 MiB cache of 16 segments of 64 KiB: the ring wraps every
    // few hundred writes, so kills land during writeback and slot reuse too.
    let d = Devices::new(8 * MIB, 2 * MIB);
    let plog_path = d.dir.path().join("plog.img");
    let mut fmt = vec!["format", "--cache", d.cache_str(), "--order", "7"];
    let mut serve_args: Vec<String> = ["--allow_writeback", "1", "--sync_interval", "1"]
        .map(String::from)
        .to_vec();
    if plog {
        std::fs::File::create(&plog_path)
            .unwrap()
            .set_len(4 * MIB)
            .unwrap();
        fmt.extend(["--plog", plog_path.to_str().unwrap()]);
        serve_args.extend(["--plog".into(), plog_path.to_str().unwrap().into()]);
    }
    let o = wbcache(&fmt);
    assert!(o.status.success(), "format: {}", stderr(&o));
    let serve_args: Vec<&str> = serve_args.iter().map(String::as_str).collect();

    let blocks = 8 * MIB / BLOCK as u64;
    let mut t = KillTest {
        seed,
        plog,
        blocks,
        sectors: (0..blocks as usize * SPB)
            .map(|_| SectorModel {
                durable: INITIAL,
                later: Vec::new(),
            })
            .collect(),
        acked: HashMap::new(),
        next_id: 0,
        rerun,
        lost: 0,
        kept: 0,
    };
    let mut rng = Rng(seed);
    let started = Instant::now();
    for round in 0..kills {
        let srv = Server::start(&d, &serve_args);
        let mut c = srv.connect();
        t.verify(&mut c, round);
        let ops = 16 + rng.below(600);
        t.work(&mut rng, &mut c, round, ops);
        // Kill now (requests in flight), or after a seeded pause of up to 20 ms.
        if rng.below(3) == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(21)));
        }
        kill9(srv);
        drop(c);
    }
    // Final recovery and check; then a clean stop and offline writeback must leave exactly the
    // verified content on the backing device.
    let srv = Server::start(&d, &serve_args);
    let mut c = srv.connect();
    t.verify(&mut c, kills);
    c.disconnect();
    let (es, log) = srv.stop();
    assert!(es.success(), "{log}");
    let mut wb = d.writeback_args().to_vec();
    if plog {
        wb.extend(["--plog", plog_path.to_str().unwrap()]);
    }
    let o = wbcache(&wb);
    assert!(o.status.success(), "writeback: {}", stderr(&o));
    let mut backing = Vec::new();
    std::fs::File::open(&d.backing)
        .unwrap()
        .read_to_end(&mut backing)
        .unwrap();
    for (i, sd) in backing.chunks(SECTOR).enumerate() {
        let (block, s) = ((i / SPB) as u64, i % SPB);
        let v = t.sectors[i].durable;
        let want = if v.zero {
            [0u8; SECTOR]
        } else {
            sector_content(seed, block, v.id, s)
        };
        if sd != want {
            t.fail(
                kills,
                format!(
                    "after offline writeback, backing block {block} sector {s} holds {}, the server showed {v:?}",
                    describe_sector(sd)
                ),
            );
        }
    }
    eprintln!(
        "{name}: {kills} kills, {} writes, all sectors verified; at recovery {} sectors had lost \
         their unflushed writes, {} kept one ({:.1} s)",
        t.next_id,
        t.lost,
        t.kept,
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn kill9_type0_real_process() {
    kill9_crash_test(false);
}

/// The same with a type-1 cache (`--plog`): the writes a FLUSH covered may live only in the
/// plog when the server dies.
#[test]
fn kill9_type1_plog_real_process() {
    kill9_crash_test(true);
}
