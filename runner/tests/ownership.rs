//! One owner per device, through the binary: while `wbcache serve` holds a set of devices, a
//! second server, `writeback`, `format --force`, `check` and `dump` on any device of the set are
//! refused with a message that names the device and the holder, and nothing changes: the first
//! server's acknowledged data is all there afterwards.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;

/// Runs `wbcache ARGS` and fails the test if it does not exit within 30 s (a refused command
/// exits at once; one that was not refused would serve or work on).
fn wbcache_exits(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wbcache");
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "wbcache {args:?} was not refused; it ran for 30 s: {}",
                stderr(&o)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Asserts `o` failed with exit status `code` because `path`, the `role` device, is in use by
/// the server `srv` (named by its pid).
fn assert_in_use(o: &Output, code: i32, path: &Path, role: &str, srv: &Server) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{e}");
    let pid = srv.child.as_ref().unwrap().id();
    assert!(
        e.contains(&format!(
            "{}: the {role} device is in use: pid {pid} (",
            path.display()
        )) && e.contains("wbcache serve")
            && e.contains("holds it for writing"),
        "{e}"
    );
}

/// Writes `blocks` distinct blocks and flushes them: acknowledged and durable.
fn write_flushed(srv: &Server, seed: u64, blocks: u64) {
    let mut c = srv.connect();
    for i in 0..blocks {
        assert_eq!(c.write(i * 4096, &pattern(seed + i, 4096), false), 0);
    }
    assert_eq!(c.flush(), 0);
    c.disconnect();
}

/// Starts a server on `d` and reads the blocks back.
fn assert_blocks(d: &Devices, seed: u64, blocks: u64) {
    let srv = Server::start(d, &[]);
    let mut c = srv.connect();
    for i in 0..blocks {
        assert_eq!(
            c.read(i * 4096, 4096).unwrap(),
            pattern(seed + i, 4096),
            "block {i}"
        );
    }
    c.disconnect();
    assert!(srv.stop().0.success());
}

#[test]
fn a_second_server_on_the_same_cache_is_refused_and_the_first_keeps_its_data() {
    let d = Devices::formatted(8 * MIB, 4 * MIB, 6);
    let srv = Server::start(&d, &[]);
    write_flushed(&srv, 1, 20);
    let other = d.dir.path().join("other.sock");
    let o = wbcache_exits(&[
        "serve",
        "--backing",
        d.backing_str(),
        "--cache",
        d.cache_str(),
        "--socket",
        other.to_str().unwrap(),
    ]);
    assert_in_use(&o, 1, &d.cache, "cache", &srv);
    // Refused before it bound anything.
    assert!(!other.exists() && !Path::new(&format!("{}.ctl", other.display())).exists());
    // Another cache in front of the same backing device: the backing device is the one in use.
    let cache2 = d.dir.path().join("cache2.img");
    std::fs::File::create(&cache2)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    let cache2 = cache2.to_str().unwrap();
    assert!(wbcache(&["format", "--cache", cache2, "--order", "6"])
        .status
        .success());
    let o = wbcache_exits(&[
        "serve",
        "--backing",
        d.backing_str(),
        "--cache",
        cache2,
        "--socket",
        other.to_str().unwrap(),
    ]);
    assert_in_use(&o, 1, &d.backing, "backing", &srv);
    // The first server goes on serving, and its data survives its shutdown.
    let mut c = srv.connect();
    assert_eq!(c.read(0, 4096).unwrap(), pattern(1, 4096));
    c.disconnect();
    assert!(srv.stop().0.success());
    let o = wbcache(&["check", d.cache_str()]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert_blocks(&d, 1, 20);
}

#[test]
fn writeback_and_format_force_are_refused_while_a_server_holds_the_cache() {
    let d = Devices::formatted(8 * MIB, 4 * MIB, 6);
    let srv = Server::start(&d, &[]);
    write_flushed(&srv, 100, 12);
    let o = wbcache_exits(&d.writeback_args());
    assert_in_use(&o, 1, &d.cache, "cache", &srv);
    let o = wbcache_exits(&["format", "--cache", d.cache_str(), "--force"]);
    assert_in_use(&o, 1, &d.cache, "cache", &srv);
    // Nothing was written back or formatted: the backing device is still blank and the
    // server still has every block dirty.
    assert!(std::fs::read(&d.backing).unwrap().iter().all(|&b| b == 0));
    let o = wbcache(&["status", "--socket", srv.socket.to_str().unwrap()]);
    assert!(
        stdout(&o).contains("nr_dirty_cache_blocks: 12"),
        "{}",
        stdout(&o)
    );
    assert!(srv.stop().0.success());
    assert_blocks(&d, 100, 12);
    // Once the server is gone the same commands work.
    let o = d.writeback();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn check_and_dump_refuse_a_device_a_server_is_writing() {
    let d = Devices::formatted(8 * MIB, 4 * MIB, 6);
    let srv = Server::start(&d, &[]);
    write_flushed(&srv, 7, 3);
    let o = wbcache_exits(&["check", d.cache_str()]);
    assert_in_use(&o, 2, &d.cache, "cache", &srv);
    assert!(stdout(&o).is_empty(), "no verdict: {}", stdout(&o));
    let o = wbcache_exits(&["check", d.cache_str(), "--backing", d.backing_str()]);
    assert_in_use(&o, 2, &d.cache, "cache", &srv);
    let o = wbcache_exits(&["dump", d.cache_str()]);
    assert_in_use(&o, 1, &d.cache, "cache", &srv);
    assert!(
        stderr(&o).contains("stop the writer first"),
        "{}",
        stderr(&o)
    );
    assert!(srv.stop().0.success());
    // Once the writer is gone, check reads it and says sound.
    let o = wbcache(&["check", d.cache_str(), "--backing", d.backing_str()]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn the_plog_is_claimed_too_and_one_device_cannot_play_two_roles() {
    let d = Devices::new(8 * MIB, 4 * MIB);
    let plog = d.dir.path().join("plog.img");
    std::fs::File::create(&plog).unwrap().set_len(MIB).unwrap();
    let p = plog.to_str().unwrap();
    let o = wbcache(&[
        "format",
        "--cache",
        d.cache_str(),
        "--plog",
        p,
        "--order",
        "5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let srv = Server::start(&d, &["--plog", p]);
    write_flushed(&srv, 40, 2);
    // Formatting another cache onto the plog the server uses.
    let cache2 = d.dir.path().join("cache2.img");
    std::fs::File::create(&cache2)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    let o = wbcache_exits(&[
        "format",
        "--cache",
        cache2.to_str().unwrap(),
        "--plog",
        p,
        "--order",
        "5",
        "--force",
    ]);
    assert_in_use(&o, 1, &plog, "plog", &srv);
    let o = wbcache_exits(&["check", d.cache_str(), "--plog", p]);
    assert_in_use(&o, 2, &d.cache, "cache", &srv);
    assert!(srv.stop().0.success());
    let o = wbcache(&["check", d.cache_str(), "--plog", p]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    // One file named for two roles is refused before anything is opened.
    let o = wbcache_exits(&[
        "serve",
        "--backing",
        d.cache_str(),
        "--cache",
        d.cache_str(),
        "--socket",
        d.socket().to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("are the same device"),
        "{}",
        stderr(&o)
    );
    let o = wbcache_exits(&["format", "--cache", p, "--plog", p, "--force"]);
    assert!(
        !o.status.success() && stderr(&o).contains("are the same device"),
        "{}",
        stderr(&o)
    );
}
