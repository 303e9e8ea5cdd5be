//! Type 1 through the binary (`format`/`serve`/`writeback` with `--plog`, a kill -9 that leaves
//! the data only in the plog) and the offline tools `check` and `dump`: exit statuses, the
//! messages, and `--json` output that parses.

mod common;

#[path = "../../engine/tests/support/json.rs"]
mod json;
use json::json_is_valid;

use std::path::PathBuf;
use std::process::Output;

use common::*;

const MIB: u64 = 1 << 20;
/// Order 5: 3 blocks per segment, 16 KiB segments.
const ORDER: &str = "5";

/// Devices plus a plog file next to them.
fn type1_devices(plog_bytes: u64) -> (Devices, PathBuf) {
    let d = Devices::new(8 * MIB, 4 * MIB);
    let plog = d.dir.path().join("plog.img");
    std::fs::File::create(&plog)
        .unwrap()
        .set_len(plog_bytes)
        .unwrap();
    let o = wbcache(&[
        "format",
        "--cache",
        d.cache_str(),
        "--plog",
        plog.to_str().unwrap(),
        "--order",
        ORDER,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("type 1: plog"), "{}", stdout(&o));
    (d, plog)
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

#[test]
fn type1_data_only_in_the_plog_survives_kill_9_and_check_says_so() {
    let (d, plog) = type1_devices(MIB);
    let p = plog.to_str().unwrap();
    let srv = Server::start(&d, &["--plog", p]);
    assert!(srv.log_text().contains("plog device"), "{}", srv.log_text());
    let mut c = srv.connect();
    // Two blocks: less than a segment, so no segment is sealed; the FLUSH makes only the plog
    // durable.
    assert_eq!(c.write(0, &pattern(1, 4096), false), 0);
    assert_eq!(c.write(3 * 4096 + 1024, &pattern(2, 2048), false), 0);
    assert_eq!(c.flush(), 0);
    let o = wbcache(&["status", "--json", "--socket", srv.socket.to_str().unwrap()]);
    let st = stdout(&o);
    assert!(json_is_valid(&st), "{st}");
    assert!(st.contains("\"cache_type\": 1"), "{st}");
    assert!(st.contains("\"plog_entries\": 2"), "{st}");
    assert!(!st.contains("\"plog_flushes\": 0"), "{st}");
    // kill -9: no clean shutdown, nothing sealed; only the plog has the data.
    let mut srv = srv;
    let mut child = srv.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    let o = wbcache(&["check", d.cache_str(), "--plog", p]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("SOUND"), "{out}");
    assert!(
        out.contains("rebuilds 1 segment(s) from the plog (2 entries replayed)"),
        "{out}"
    );
    let o = wbcache(&["check", d.cache_str(), "--plog", p, "--json"]);
    assert_eq!(code(&o), 0);
    assert!(json_is_valid(&stdout(&o)), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("\"plog_segments_rebuilt\":1"),
        "{}",
        stdout(&o)
    );
    let o = wbcache(&["dump", d.cache_str(), "--plog", p]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("region  0 (sector       16): current"),
        "{}",
        stdout(&o)
    );

    // Without --plog the type-1 cache is refused, by serve and by check, with the reason.
    let sock = d.socket();
    let o = wbcache(&[
        "serve",
        "--backing",
        d.backing_str(),
        "--cache",
        d.cache_str(),
        "--socket",
        sock.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("type 1") && stderr(&o).contains("--plog P"),
        "{}",
        stderr(&o)
    );
    let o = wbcache(&["check", d.cache_str()]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--plog"), "{}", stderr(&o));

    // Restart with the plog: replay rebuilds the segment, the data reads back.
    let srv = Server::start(&d, &["--plog", p]);
    let log = srv.log_text();
    assert!(
        log.contains("plog: rebuilt 1 segment(s) from 2 plog entries"),
        "{log}"
    );
    let mut c = srv.connect();
    assert_eq!(c.read(0, 4096).unwrap(), pattern(1, 4096));
    let got = c.read(3 * 4096, 4096).unwrap();
    assert_eq!(&got[1024..3072], &pattern(2, 2048)[..]);
    assert!(got[..1024].iter().chain(&got[3072..]).all(|&b| b == 0));
    drop(c);
    let (st, log) = srv.stop();
    assert!(st.success(), "{log}");

    // Clean now: nothing for the plog to rebuild; offline writeback drains it.
    let o = wbcache(&["check", d.cache_str(), "--plog", p]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(
        stdout(&o).contains("rebuilds 0 segment(s)"),
        "{}",
        stdout(&o)
    );
    let o = wbcache(&[
        "writeback",
        "--backing",
        d.backing_str(),
        "--cache",
        d.cache_str(),
        "--plog",
        p,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("wrote back 2 dirty block(s)"),
        "{}",
        stdout(&o)
    );
    let backing = std::fs::read(&d.backing).unwrap();
    assert!(backing[..4096] == pattern(1, 4096)[..]);
}

#[test]
fn plog_flags_are_checked_against_the_cache_type() {
    let (d, plog) = type1_devices(MIB);
    let p = plog.to_str().unwrap();
    // Formatting again refuses the plog that now holds a plog superblock, unless --force.
    let o = wbcache(&[
        "format",
        "--cache",
        d.backing_str(),
        "--plog",
        p,
        "--order",
        ORDER,
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("a wbcache plog device") && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    // A plog too small for two regions is refused before anything is written.
    let tiny = d.dir.path().join("tiny.img");
    std::fs::File::create(&tiny).unwrap().set_len(8192).unwrap();
    let o = wbcache(&[
        "format",
        "--cache",
        d.cache_str(),
        "--plog",
        tiny.to_str().unwrap(),
        "--force",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("too small"),
        "{}",
        stderr(&o)
    );
    // A type-0 cache given a plog.
    let t0 = Devices::formatted(8 * MIB, 4 * MIB, 5);
    let sock = t0.socket();
    let o = wbcache(&[
        "serve",
        "--backing",
        t0.backing_str(),
        "--cache",
        t0.cache_str(),
        "--socket",
        sock.to_str().unwrap(),
        "--plog",
        p,
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("drop --plog"),
        "{}",
        stderr(&o)
    );
    let o = wbcache(&["check", t0.cache_str(), "--plog", p]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    // Another cache's plog.
    let (other, other_plog) = type1_devices(MIB);
    let o = wbcache(&["check", other.cache_str(), "--plog", p]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(
        stdout(&o).contains("PROBLEM plog-generation"),
        "{}",
        stdout(&o)
    );
    let o = wbcache(&[
        "serve",
        "--backing",
        other.backing_str(),
        "--cache",
        other.cache_str(),
        "--socket",
        sock.to_str().unwrap(),
        "--plog",
        p,
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("belongs to another cache"),
        "{}",
        stderr(&o)
    );
    drop(other_plog);
}

/// A type-0 cache with segments 1 and 2 on the cache device (order 5: 3 blocks each).
fn cache_with_segments() -> Devices {
    let d = Devices::formatted(8 * MIB, 4 * MIB, 5);
    let srv = Server::start(&d, &[]);
    let mut c = srv.connect();
    for i in 0..5u64 {
        assert_eq!(c.write(i * 4096, &pattern(i, 4096), false), 0);
    }
    drop(c);
    // A clean shutdown writes both segments (the second one sealed short); no writeback, so
    // the record stays at 0 and replay would apply both.
    assert!(srv.stop().0.success());
    d
}

/// Byte offset of data block `j` of the segment in slot `slot` (order 5).
fn block_offset(slot: u64, j: u64) -> usize {
    ((2048 + slot * 32) * 512 + 4096 * (1 + j)) as usize
}

fn patch(path: &std::path::Path, at: usize, bytes: &[u8]) {
    let mut img = std::fs::read(path).unwrap();
    img[at..at + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, img).unwrap();
}

#[test]
fn check_exit_status_sound_torn_and_corrupt() {
    let d = cache_with_segments();
    let o = wbcache(&["check", d.cache_str(), "--backing", d.backing_str()]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("applies ids 1..=2"), "{}", stdout(&o));
    let o = wbcache(&["check", d.cache_str(), "--json"]);
    assert_eq!(code(&o), 0);
    assert!(json_is_valid(&stdout(&o)), "{}", stdout(&o));
    assert!(stdout(&o).starts_with("{\"sound\":true"), "{}", stdout(&o));

    // A torn segment 2 (a data byte of it changed): replay stops there; still sound.
    let first = std::fs::read(&d.cache).unwrap()[block_offset(1, 0)];
    patch(&d.cache, block_offset(1, 0), &[first ^ 0xff]);
    let o = wbcache(&["check", d.cache_str()]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(stdout(&o).contains("note torn-at-end"), "{}", stdout(&o));
    assert!(stdout(&o).contains("applies ids 1..=1"), "{}", stdout(&o));

    // A corrupt superblock: foreign content, not sound.
    patch(&d.cache, 0, b"junk");
    let o = wbcache(&["check", d.cache_str()]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(stdout(&o).contains("PROBLEM foreign"), "{}", stdout(&o));
    let o = wbcache(&["check", d.cache_str(), "--json"]);
    assert_eq!(code(&o), 1);
    assert!(json_is_valid(&stdout(&o)), "{}", stdout(&o));

    // Usage and I/O errors: 2.
    let o = wbcache(&["check", "/nonexistent/cache.img"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("no such file"), "{}", stderr(&o));
    let o = wbcache(&["check"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = wbcache(&["check", "--help"]);
    assert!(
        stdout(&o).contains("Exit status: 0 sound"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn dump_of_an_existing_and_a_missing_segment() {
    let d = cache_with_segments();
    let o = wbcache(&["dump", d.cache_str(), "--segment", "2"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("segment 2 in slot 1: length 2"), "{out}");
    assert!(out.contains("[  1] sector           32"), "{out}");
    let o = wbcache(&["dump", d.cache_str(), "--segment", "2", "--json"]);
    assert_eq!(code(&o), 0);
    assert!(json_is_valid(&stdout(&o)), "{}", stdout(&o));
    // Slot 3 (segment 4's) is empty; segment 2 + 128 would live in slot 1, which holds 2.
    let o = wbcache(&["dump", d.cache_str(), "--segment", "4"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("segment 4 is not on the device: its slot 3 is empty"),
        "{}",
        stderr(&o)
    );
    let nr_segments = (4 * MIB / 512 - 2048) / 32;
    let other = (2 + nr_segments).to_string();
    let o = wbcache(&["dump", d.cache_str(), "--segment", &other]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("its slot 1 holds segment 2"),
        "{}",
        stderr(&o)
    );
    let o = wbcache(&["dump", d.cache_str()]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("segment 1 in slot 0"), "{}", stdout(&o));
}
