//! Real NBD servers for the NBD-client tests: nbdkit and qemu-nbd on Unix sockets in a temp
//! directory, killed and reaped when dropped. A missing server fails the test with the install
//! command; it is never skipped.

#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use super::common::tool;

/// A running NBD server process on a Unix socket.
pub struct NbdServer {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl NbdServer {
    /// `nbdkit ARGS` on `dir/NAME.sock` (foreground, exits with the test process).
    pub fn nbdkit(dir: &Path, name: &str, args: &[&str]) -> NbdServer {
        let socket = dir.join(format!("{name}.sock"));
        let mut c = Command::new(tool("nbdkit"));
        c.args(["--foreground", "--exit-with-parent", "-U"])
            .arg(&socket)
            .args(args);
        Self::spawn(c, dir, name, socket)
    }

    /// `qemu-nbd -f raw --persistent EXTRA FILE` on `dir/NAME.sock`.
    pub fn qemu_nbd(dir: &Path, name: &str, file: &Path, extra: &[&str]) -> NbdServer {
        let socket = dir.join(format!("{name}.sock"));
        let mut c = Command::new(tool("qemu-nbd"));
        c.args(["-f", "raw", "--persistent", "-k"])
            .arg(&socket)
            .args(extra)
            .arg(file);
        Self::spawn(c, dir, name, socket)
    }

    fn spawn(mut c: Command, dir: &Path, name: &str, socket: PathBuf) -> NbdServer {
        let _ = std::fs::remove_file(&socket);
        let log = dir.join(format!("{name}.log"));
        let child = c
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {c:?}: {e}"));
        let mut s = NbdServer {
            child: Some(child),
            socket,
            log,
        };
        let t = Instant::now();
        loop {
            if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{c:?} exited at start ({st}): {}", s.log_text());
            }
            if UnixStream::connect(&s.socket).is_ok() {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{c:?} did not listen: {}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `nbd+unix:///EXPORT?socket=…`.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// kill -9 and reap: the server dies mid-whatever.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
