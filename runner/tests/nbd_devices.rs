//! `wbcache` with NBD exports as its devices (issue 17, point 1): format, serve, check and
//! offline writeback through `nbd+unix://` URIs on nbdkit and qemu-nbd, driven by qemu-io;
//! and a backing server killed mid-run: the cache goes dead (EIO to the client), and a
//! restart on a new server over the same backing file recovers every acknowledged write.

mod common;
mod nbd_servers;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use nbd_servers::{tool, NbdServer};

const MIB: u64 = 1 << 20;

fn sparse_file(dir: &Path, name: &str, len: u64) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(len).unwrap();
    p
}

/// qemu-io on `uri` with `cmds`; the output (stdout and stderr) and whether it succeeded.
fn qemu_io_raw(uri: &str, cmds: &[String]) -> (bool, String) {
    let mut c = Command::new(tool("qemu-io"));
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let o: Output = c
        .arg(uri)
        .stdin(Stdio::null())
        .output()
        .expect("run qemu-io");
    let out = format!("{}{}", stdout(&o), stderr(&o));
    let ok = o.status.success()
        && !out.contains("failed")
        && !out.contains("error")
        && !out.contains("Pattern verification");
    (ok, out)
}

/// qemu-io that must succeed, every `read -P` verified.
fn qemu_io(uri: &str, cmds: &[String]) -> String {
    let (ok, out) = qemu_io_raw(uri, cmds);
    assert!(ok, "qemu-io {cmds:?}:\n{out}");
    out
}

fn status(srv: &Server) -> String {
    let o = wbcache(&["status", "--control", srv.control.to_str().unwrap()]);
    assert!(o.status.success(), "status: {}", stderr(&o));
    stdout(&o)
}

fn client_uri(srv: &Server) -> String {
    format!("nbd+unix:///?socket={}", srv.socket.display())
}

#[test]
fn format_serve_check_and_writeback_on_nbd_devices() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let backing = sparse_file(d, "backing.img", 64 * MIB);
    let cache = sparse_file(d, "cache.img", 16 * MIB);
    let plog = sparse_file(d, "plog.img", 4 * MIB);
    let qemu = NbdServer::qemu_nbd(d, "backing", &backing, &["--cache=none", "--shared=4"]);
    let kit = NbdServer::nbdkit(d, "cache", &["file", cache.to_str().unwrap()]);
    let pkit = NbdServer::nbdkit(d, "plog", &["file", plog.to_str().unwrap()]);
    let (b, c, p) = (qemu.uri(""), kit.uri(""), pkit.uri(""));

    // Type 1: cache and plog both on NBD.
    let o = wbcache(&["format", "--cache", &c, "--plog", &p, "--order", "6"]);
    assert!(o.status.success(), "format: {}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(&format!("formatted {c}")), "{out}");
    assert!(out.contains(&format!("type 1: plog {p}")), "{out}");
    // A second format of the same export is refused: it reads what the export holds.
    let o = wbcache(&["format", "--cache", &c]);
    assert!(!o.status.success() && stderr(&o).contains("refusing to format"));

    let srv = Server::start_with(d, &b, &c, &["--plog", &p, "--allow_writeback", "0"]);
    let log = srv.log_text();
    let size = 64 * MIB;
    assert!(
        log.contains(&format!("backing device {b}: NBD, {size} bytes")),
        "{log}"
    );
    assert!(log.contains(&format!("cache device {c}: NBD")), "{log}");
    assert!(log.contains(&format!("plog device {p}: NBD")), "{log}");
    let u = client_uri(&srv);
    qemu_io(
        &u,
        &[
            "write -P 0xab 0 1M".into(),
            "write -f -P 0xcd 4M 64k".into(),
            "write -P 0x11 63M 512".into(),
            "flush".into(),
            "read -P 0xab 0 1M".into(),
            "read -P 0xcd 4M 64k".into(),
        ],
    );
    let (st, log) = srv.stop();
    assert!(st.success(), "{log}");

    // The devices are sound, as seen through NBD (read-only).
    let o = wbcache(&["check", &c, "--plog", &p, "--backing", &b]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "check: {}{}",
        stdout(&o),
        stderr(&o)
    );

    let srv = Server::start_with(d, &b, &c, &["--plog", &p]);
    qemu_io(
        &client_uri(&srv),
        &[
            "read -P 0xab 0 1M".into(),
            "read -P 0xcd 4M 64k".into(),
            "read -P 0x11 63M 512".into(),
            "read -P 0 1M 3M".into(),
        ],
    );
    let (st, log) = srv.stop();
    assert!(st.success(), "{log}");

    // Offline writeback through the URIs; then the backing file itself holds the data.
    let o = wbcache(&["writeback", "--backing", &b, "--cache", &c, "--plog", &p]);
    assert!(o.status.success(), "writeback: {}", stderr(&o));
    drop((qemu, kit, pkit));
    let img = std::fs::read(&backing).unwrap();
    let at = |off: u64, len: usize| &img[off as usize..off as usize + len];
    assert!(at(0, MIB as usize).iter().all(|&x| x == 0xab));
    assert!(at(4 * MIB, 65536).iter().all(|&x| x == 0xcd));
    assert!(at(63 * MIB, 512).iter().all(|&x| x == 0x11));
}

/// Offsets (64 KiB apart, from 8 MiB) of the writes qemu-io reports as done ("wrote …").
fn acknowledged(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("wrote 65536/65536 bytes at offset "))
        .map(|o| o.trim().parse().unwrap())
        .collect()
}

fn pattern_of(offset: u64) -> u8 {
    (offset / 65536 % 251) as u8 + 1
}

#[test]
fn a_backing_server_killed_mid_run_kills_the_cache_and_a_restart_recovers() {
    let d = Devices::formatted(64 * MIB, 16 * MIB, 6);
    let dir = d.dir.path();
    let mut kit = NbdServer::nbdkit(dir, "backing", &["file", d.backing_str()]);
    let b = kit.uri("");
    let srv = Server::start_with(
        dir,
        &b,
        d.cache_str(),
        &["--allow_writeback", "1", "--sync_interval", "1"],
    );
    let u = client_uri(&srv);
    // Acknowledged before anything goes wrong: plain writes and a flush.
    let before: Vec<String> = (0..16)
        .map(|i| format!("write -P {} {} 64k", 0x40 + i, i * 65536))
        .chain(["flush".to_string()])
        .collect();
    qemu_io(&u, &before);
    // FUA writes, each durable when acknowledged, while the backing server is killed.
    let cmds: Vec<String> = (0..400u64)
        .map(|i| {
            let off = 8 * MIB + i * 65536;
            format!("write -f -P {} {off} 64k", pattern_of(off))
        })
        .collect();
    let bg = {
        let (u, cmds) = (u.clone(), cmds.clone());
        std::thread::spawn(move || qemu_io_raw(&u, &cmds))
    };
    std::thread::sleep(Duration::from_millis(300));
    kit.kill();
    let (_, out) = bg.join().unwrap();
    let acked = acknowledged(&out);
    // A read of a block the cache never saw must go to the backing device: EIO, dead cache.
    let (ok, out) = qemu_io_raw(&u, &["read 60M 4k".into()]);
    assert!(!ok && out.contains("Input/output error"), "{out}");
    let st = status(&srv);
    let dead = st.lines().find(|l| l.starts_with("dead: ")).unwrap();
    assert!(dead.contains(&format!("backing device {b}")), "{st}");
    let (ok, out) = qemu_io_raw(&u, &["write -P 1 0 4k".into()]);
    assert!(
        !ok && out.contains("Input/output error"),
        "a dead cache takes no write: {out}"
    );
    let (st, log) = srv.stop();
    assert!(
        !st.success() && log.contains("shutdown failed"),
        "{st}: {log}"
    );

    // A new server on the same backing file, the same URI: recovery replays the log.
    let _kit = NbdServer::nbdkit(dir, "backing", &["file", d.backing_str()]);
    let srv = Server::start_with(dir, &b, d.cache_str(), &[]);
    let mut verify: Vec<String> = (0..16)
        .map(|i| format!("read -P {} {} 64k", 0x40 + i, i * 65536))
        .collect();
    verify.extend(
        acked
            .iter()
            .map(|&off| format!("read -P {} {off} 64k", pattern_of(off))),
    );
    qemu_io(&client_uri(&srv), &verify);
    // Every dirty block written back through NBD: then the backing file holds them all.
    let o = wbcache(&[
        "message",
        "--socket",
        srv.socket.to_str().unwrap(),
        "drop_caches",
    ]);
    assert!(o.status.success(), "drop_caches: {}", stderr(&o));
    let (st, log) = srv.stop();
    assert!(st.success(), "{log}");
    let img = std::fs::read(&d.backing).unwrap();
    for i in 0..16u64 {
        let at = (i * 65536) as usize;
        assert!(
            img[at..at + 65536].iter().all(|&x| x == 0x40 + i as u8),
            "block {i}"
        );
    }
    for &off in &acked {
        let at = off as usize;
        assert!(
            img[at..at + 65536].iter().all(|&x| x == pattern_of(off)),
            "acknowledged FUA write at {off} lost"
        );
    }
    eprintln!(
        "{} of 400 FUA writes were acknowledged before the cache died",
        acked.len()
    );
}
