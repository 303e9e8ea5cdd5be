//! Messages that say what is wrong and what fixes it, through the binary: sizes in one unit,
//! the `--force` a foreign cache needs, tunable values, host names for `--listen`, a control
//! socket in use, and `dump` of something that is not a cache.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;

fn sized(path: &Path, bytes: u64) {
    std::fs::File::create(path).unwrap().set_len(bytes).unwrap();
}

#[test]
fn format_asks_for_one_size_in_bytes_for_the_order_it_was_given() {
    let d = Devices::new(MIB, 0);
    let c = d.cache_str();
    for (bytes, order, need) in [
        (0, "10", "at least 2097152 bytes"),
        (4096, "10", "at least 2097152 bytes"),
        (MIB, "4", "at least 1064960 bytes"),
    ] {
        sized(&d.cache, bytes);
        let o = wbcache(&["format", "--cache", c, "--order", order]);
        let e = stderr(&o);
        assert!(!o.status.success(), "{e}");
        assert!(
            e.contains(&format!("size {bytes} bytes is too small: {need}"))
                && e.contains(&format!("segment order {order}"))
                && !e.contains("sectors"),
            "{e}"
        );
    }
    // The plog too, for the cache's order.
    sized(&d.cache, 4 * MIB);
    let plog = d.dir.path().join("plog.img");
    sized(&plog, 4096);
    let o = wbcache(&[
        "format",
        "--cache",
        c,
        "--plog",
        plog.to_str().unwrap(),
        "--order",
        "5",
    ]);
    let e = stderr(&o);
    assert!(
        !o.status.success()
            && e.contains("plog.img: size 4096 bytes is too small: at least")
            && e.contains("for segment order 5"),
        "{e}"
    );
    // Nothing was written to the cache device.
    assert!(std::fs::read(&d.cache).unwrap().iter().all(|&b| b == 0));
    let o = wbcache(&["format", "--cache", c, "--order", "11"]);
    assert!(
        !o.status.success() && stderr(&o).contains("4..=10"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_foreign_cache_device_is_refused_with_the_command_that_formats_it() {
    let d = Devices::new(8 * MIB, 4 * MIB);
    let junk = pattern(3, 4 * MIB as usize);
    std::fs::write(&d.cache, &junk).unwrap();
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
    let e = stderr(&o);
    let fix = format!("wbcache format --force --cache {}", d.cache_str());
    assert!(
        !o.status.success() && e.contains("unknown content") && e.contains(&fix),
        "{e}"
    );
    // That command is the one that works: plain `format` refuses, as it says.
    let o = wbcache(&["format", "--cache", d.cache_str()]);
    assert!(
        !o.status.success() && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    let o = wbcache(&["format", "--force", "--cache", d.cache_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // dump of the foreign bytes (another file now) decodes what it can and exits 1.
    let other = d.dir.path().join("junk.img");
    std::fs::write(&other, &junk).unwrap();
    let o = wbcache(&["dump", other.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("superblock: foreign")
            && stderr(&o).contains("junk.img: no segments to decode"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
}

#[test]
fn tunable_messages_name_the_tunable_and_its_range() {
    let d = Devices::formatted(8 * MIB, 4 * MIB, 6);
    let srv = Server::start(&d, &[]);
    let sock = srv.socket.to_str().unwrap().to_string();
    for (words, want) in [
        (
            &["allow_writeback", "yes"][..],
            "invalid value \"yes\" for allow_writeback: must be a whole number in 0..=1",
        ),
        (
            &["allow_writeback"][..],
            "allow_writeback needs a value: `allow_writeback N` with N in 0..=1",
        ),
        (&["frobnicate"][..], "unknown message \"frobnicate\""),
    ] {
        let mut args = vec!["message", "--socket", &sock];
        args.extend_from_slice(words);
        let o = wbcache(&args);
        assert!(
            !o.status.success() && stderr(&o).contains(want),
            "{words:?}: {}",
            stderr(&o)
        );
    }
    let o = wbcache(&["message", "--socket", &sock, "allow_writeback", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(srv.stop().0.success());
}

/// Starts `wbcache serve --listen LISTEN --control CONTROL` on `d` and waits for its first
/// log line that says it serves; returns the child and that line.
fn serve_tcp(d: &Devices, listen: &str, control: &Path) -> (std::process::Child, String) {
    let log = d.dir.path().join("tcp.log");
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--backing",
            d.backing_str(),
            "--cache",
            d.cache_str(),
            "--listen",
            listen,
            "--control",
            control.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("serving ")) {
            return (child, line.to_string());
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("serve --listen {listen} exited ({st}): {text}");
        }
        assert!(t.elapsed() < Duration::from_secs(30), "not ready: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn listen_resolves_host_names_and_a_control_socket_in_use_points_to_control() {
    let d = Devices::formatted(8 * MIB, 4 * MIB, 6);
    let control = d.dir.path().join("wb.ctl");
    // Port 0: the system picks one, and the log says which address it bound.
    let (mut child, line) = serve_tcp(&d, "localhost:0", &control);
    assert!(
        line.contains("over NBD on 127.0.0.1:") || line.contains("over NBD on [::1]:"),
        "{line}"
    );
    // A second server (on other devices) with the same control socket.
    let d2 = Devices::formatted(8 * MIB, 4 * MIB, 6);
    let o = wbcache(&[
        "serve",
        "--backing",
        d2.backing_str(),
        "--cache",
        d2.cache_str(),
        "--listen",
        "localhost:0",
        "--control",
        control.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(
        !o.status.success()
            && e.contains("is in use by a running server")
            && e.contains("--control PATH"),
        "{e}"
    );
    // SAFETY: sending SIGTERM to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, 15) }, 0);
    assert!(child.wait().unwrap().success());
    // (A name that does not resolve is left out: it would depend on the machine's DNS.)
    for bad in ["localhost", "localhost:port", "127.0.0.1"] {
        let o = wbcache(&[
            "serve",
            "--backing",
            d.backing_str(),
            "--cache",
            d.cache_str(),
            "--listen",
            bad,
        ]);
        assert!(
            !o.status.success() && stderr(&o).contains(&format!("--listen {bad}: ")),
            "{}",
            stderr(&o)
        );
    }
}
