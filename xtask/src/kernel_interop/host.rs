//! The host side of a scenario: the `wbcache` binary (format, serve, check, writeback), a
//! minimal NBD client that runs a workload against `serve`, and reading an export back with
//! a real NBD client (`qemu-img convert`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::workload::{write_data, Op, SECTOR};

pub struct Wbcache {
    pub exe: PathBuf,
}

pub struct Output {
    pub ok: bool,
    pub code: Option<i32>,
    pub text: String,
}

impl Wbcache {
    pub fn run(&self, args: &[&str]) -> Result<Output, String> {
        let out = Command::new(&self.exe)
            .args(args)
            .output()
            .map_err(|e| format!("cannot start {}: {e}", self.exe.display()))?;
        Ok(Output {
            ok: out.status.success(),
            code: out.status.code(),
            text: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }

    pub fn must(&self, args: &[&str]) -> Result<String, String> {
        let o = self.run(args)?;
        if o.ok {
            Ok(o.text)
        } else {
            Err(format!(
                "wbcache {} failed ({:?}):\n{}",
                args.join(" "),
                o.code,
                o.text.trim()
            ))
        }
    }

    /// Starts `serve` on a Unix socket and waits until it accepts connections.
    pub fn serve(
        &self,
        backing: &Path,
        cache: &Path,
        socket: &Path,
        log: &Path,
    ) -> Result<Server, String> {
        let _ = std::fs::remove_file(socket);
        let logf = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let child = Command::new(&self.exe)
            .arg("serve")
            .arg("--backing")
            .arg(backing)
            .arg("--cache")
            .arg(cache)
            .arg("--socket")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().map_err(|e| e.to_string())?)
            .stderr(logf)
            .spawn()
            .map_err(|e| format!("cannot start wbcache serve: {e}"))?;
        let mut server = Server {
            child,
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
        };
        let t = Instant::now();
        while UnixStream::connect(socket).is_err() {
            if let Some(st) = server.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!(
                    "wbcache serve exited ({st}): {}",
                    server.log_text()
                ));
            }
            if t.elapsed() > Duration::from_secs(60) {
                server.signal(libc::SIGKILL);
                return Err(format!(
                    "wbcache serve did not listen in 60 s: {}",
                    server.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

pub struct Server {
    child: Child,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Server {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn signal(&mut self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }
    /// Sends `sig` and waits for the process; Err unless it exits as `want_success` says
    /// (SIGTERM: exit 0 after a clean shutdown; SIGKILL: killed).
    pub fn stop(mut self, sig: i32) -> Result<(), String> {
        self.signal(sig);
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().map_err(|e| e.to_string())? {
                let fine = if sig == libc::SIGTERM {
                    st.success()
                } else {
                    true
                };
                return if fine {
                    Ok(())
                } else {
                    Err(format!(
                        "wbcache serve ended with {st} after signal {sig}: {}",
                        self.log_text()
                    ))
                };
            }
            if t.elapsed() > Duration::from_secs(120) {
                self.signal(libc::SIGKILL);
                let _ = self.child.wait();
                return Err(format!(
                    "wbcache serve did not stop in 120 s: {}",
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads the whole export with a real NBD client into `out`.
    pub fn read_export(&self, out: &Path) -> Result<(), String> {
        let _ = std::fs::remove_file(out);
        let url = format!("nbd+unix:///?socket={}", self.socket.display());
        let o = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", &url])
            .arg(out)
            .output()
            .map_err(|e| format!("cannot start qemu-img: {e}"))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "qemu-img convert {url} failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    }
}

/// A minimal NBD client (fixed newstyle, `NBD_OPT_EXPORT_NAME`, simple replies), one
/// request at a time: every write is replied to before the next op is sent.
pub struct Nbd {
    s: UnixStream,
    handle: u64,
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

impl Nbd {
    pub fn connect(path: &Path) -> Result<Nbd, String> {
        let io = |e: std::io::Error| format!("NBD handshake: {e}");
        let mut s = UnixStream::connect(path).map_err(io)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(io)?;
        let mut g = [0u8; 18];
        s.read_exact(&mut g).map_err(io)?;
        if be64(&g) != 0x4e42_444d_4147_4943 || be64(&g[8..]) != 0x4948_4156_454F_5054 {
            return Err("NBD handshake: bad greeting".into());
        }
        // Client flags: fixed newstyle, no zeroes.
        s.write_all(&3u32.to_be_bytes()).map_err(io)?;
        let mut opt = 0x4948_4156_454F_5054u64.to_be_bytes().to_vec();
        opt.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
        opt.extend_from_slice(&0u32.to_be_bytes()); // the default export
        s.write_all(&opt).map_err(io)?;
        let mut r = [0u8; 10];
        s.read_exact(&mut r).map_err(io)?;
        Ok(Nbd { s, handle: 1 })
    }

    fn request(&mut self, kind: u16, offset: u64, len: u32, data: &[u8]) -> Result<(), String> {
        let h = self.handle;
        self.handle += 1;
        let mut b = 0x2560_9513u32.to_be_bytes().to_vec();
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&h.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(data);
        let io = |e: std::io::Error| format!("NBD request {kind} at {offset}: {e}");
        self.s.write_all(&b).map_err(io)?;
        let mut r = [0u8; 16];
        self.s.read_exact(&mut r).map_err(io)?;
        let err = u32::from_be_bytes(r[4..8].try_into().unwrap());
        if u32::from_be_bytes(r[..4].try_into().unwrap()) != 0x6744_6698 || be64(&r[8..]) != h {
            return Err(format!("NBD request {kind} at {offset}: bad reply"));
        }
        if err != 0 {
            return Err(format!("NBD request {kind} at {offset}: error {err}"));
        }
        Ok(())
    }

    /// Runs the ops of a workload; returns when every one is replied to.
    pub fn run(&mut self, seed: u64, ops: &[Op]) -> Result<(), String> {
        for op in ops {
            match *op {
                Op::Write { id, sector, len } => {
                    let d = write_data(seed, id, sector, len);
                    self.request(1, sector * SECTOR as u64, d.len() as u32, &d)?;
                }
                Op::Flush => self.request(3, 0, 0, &[])?,
                Op::Sleep(ms) => std::thread::sleep(Duration::from_millis(ms.into())),
            }
        }
        Ok(())
    }

    pub fn disconnect(mut self) {
        let mut b = 0x2560_9513u32.to_be_bytes().to_vec();
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&2u16.to_be_bytes());
        b.extend_from_slice(&[0u8; 20]);
        let _ = self.s.write_all(&b);
    }
}
