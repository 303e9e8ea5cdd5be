//! Shared by the integration tests: temp devices, the real `wbcache` binary as a server, and a
//! minimal NBD client (fixed newstyle, NBD_OPT_GO, simple replies).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_wbcache");

/// How to install every real client and server the tests drive.
pub const INSTALL: &str =
    "apt-get install -y --no-install-recommends fio libnbd-bin nbdkit qemu-utils";

/// The path of a real client or server tool; panics (never skips) when it is not installed.
pub fn tool(name: &str) -> PathBuf {
    let package = match name {
        "qemu-io" | "qemu-nbd" => "qemu-utils",
        "nbdinfo" | "nbdcopy" => "libnbd-bin",
        other => other,
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` (Debian package {package}) is not installed; the tests with real clients and \
         servers need it. Install with `{INSTALL}`, or run `cargo xtask test`, which installs \
         what is missing."
    );
}

pub fn wbcache(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run wbcache")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Two device files in a temp dir.
pub struct Devices {
    pub dir: tempfile::TempDir,
    pub backing: PathBuf,
    pub cache: PathBuf,
}

impl Devices {
    pub fn new(backing_bytes: u64, cache_bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing.img");
        let cache = dir.path().join("cache.img");
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(backing_bytes)
            .unwrap();
        std::fs::File::create(&cache)
            .unwrap()
            .set_len(cache_bytes)
            .unwrap();
        Devices {
            dir,
            backing,
            cache,
        }
    }

    /// Devices formatted at `order`.
    pub fn formatted(backing_bytes: u64, cache_bytes: u64, order: u8) -> Self {
        let d = Self::new(backing_bytes, cache_bytes);
        let o = wbcache(&[
            "format",
            "--cache",
            d.cache_str(),
            "--order",
            &order.to_string(),
        ]);
        assert!(o.status.success(), "format failed: {}", stderr(&o));
        d
    }

    pub fn cache_str(&self) -> &str {
        self.cache.to_str().unwrap()
    }
    pub fn backing_str(&self) -> &str {
        self.backing.to_str().unwrap()
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("nbd.sock")
    }
    /// The arguments of `wbcache writeback` for these devices.
    pub fn writeback_args(&self) -> [&str; 5] {
        [
            "writeback",
            "--backing",
            self.backing_str(),
            "--cache",
            self.cache_str(),
        ]
    }
    /// Runs `wbcache writeback` on these devices (whatever its outcome).
    pub fn writeback(&self) -> Output {
        wbcache(&self.writeback_args())
    }
}

/// A running `wbcache serve`.
pub struct Server {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub control: PathBuf,
    pub log: PathBuf,
}

impl Server {
    pub fn start(d: &Devices, extra: &[&str]) -> Self {
        Self::start_with(d.dir.path(), d.backing_str(), d.cache_str(), extra)
    }

    /// `wbcache serve` on `backing` and `cache` (paths or NBD URIs), socket and log in `dir`.
    pub fn start_with(dir: &Path, backing: &str, cache: &str, extra: &[&str]) -> Self {
        let socket = dir.join("nbd.sock");
        let control = PathBuf::from(format!("{}.ctl", socket.display()));
        let log = dir.join(format!("serve-{}.log", std::process::id()));
        let logf = std::fs::File::create(&log).unwrap();
        let mut args = vec![
            "serve",
            "--backing",
            backing,
            "--cache",
            cache,
            "--socket",
            socket.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let child = Command::new(BIN)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn wbcache serve");
        let mut s = Server {
            child: Some(child),
            socket,
            control,
            log,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("server exited early ({st}): {}", self.log_text());
            }
            if self.log_text().contains("serving ") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server not ready: {}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn connect(&self) -> Client {
        Client::connect(&self.socket)
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// SIGTERM, then the exit status (within 30 s).
    pub fn stop(self) -> (ExitStatus, String) {
        self.signal(15);
        self.wait_exit()
    }

    /// Waits (up to 30 s) for the server to exit by itself.
    pub fn wait_exit(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let t = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return (st, self.log_text());
            }
            if t.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("server did not stop after SIGTERM: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const FLAG_FUA: u16 = 1;

/// A minimal NBD client.
pub struct Client {
    pub s: UnixStream,
    pub size: u64,
    pub flags: u16,
    next_handle: u64,
}

pub fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}
pub fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}
pub fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes(b[..2].try_into().unwrap())
}

pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;

impl Client {
    /// Connects and stops after the greeting and client flags (for option tests).
    pub fn connect_raw(path: &Path) -> UnixStream {
        let mut s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut g = [0u8; 18];
        s.read_exact(&mut g).unwrap();
        assert_eq!(be64(&g), 0x4e42_444d_4147_4943, "NBDMAGIC");
        assert_eq!(be64(&g[8..]), IHAVEOPT);
        assert_eq!(be16(&g[16..]) & 3, 3, "fixed newstyle + no zeroes");
        s.write_all(&3u32.to_be_bytes()).unwrap();
        s
    }

    pub fn send_option(s: &mut UnixStream, opt: u32, data: &[u8]) {
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        s.write_all(&b).unwrap();
    }

    /// One option reply: (option, type, data).
    pub fn read_option_reply(s: &mut UnixStream) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        assert_eq!(be64(&h), 0x0003_e889_0455_65a9, "option reply magic");
        let len = be32(&h[16..]) as usize;
        let mut d = vec![0u8; len];
        s.read_exact(&mut d).unwrap();
        (be32(&h[8..]), be32(&h[12..]), d)
    }

    pub fn connect(path: &Path) -> Client {
        let mut s = Self::connect_raw(path);
        // NBD_OPT_GO, default export, asking for NBD_INFO_BLOCK_SIZE.
        let mut data = 0u32.to_be_bytes().to_vec();
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&3u16.to_be_bytes());
        Self::send_option(&mut s, 7, &data);
        let (mut size, mut flags) = (0, 0);
        loop {
            let (opt, rep, d) = Self::read_option_reply(&mut s);
            assert_eq!(opt, 7);
            match rep {
                3 if be16(&d) == 0 => {
                    size = be64(&d[2..]);
                    flags = be16(&d[10..]);
                }
                3 if be16(&d) == 3 => {
                    assert_eq!((be32(&d[2..]), be32(&d[6..])), (512, 4096));
                }
                1 => break,
                r => panic!("unexpected GO reply {r:#x}"),
            }
        }
        Client {
            s,
            size,
            flags,
            next_handle: 1,
        }
    }

    /// Sends a request; returns its handle.
    pub fn send(&mut self, kind: u16, flags: u16, offset: u64, len: u32, data: &[u8]) -> u64 {
        let h = self.next_handle;
        self.next_handle += 1;
        let mut b = 0x2560_9513u32.to_be_bytes().to_vec();
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&h.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b).unwrap();
        h
    }

    /// Reads one simple reply header: (handle, errno).
    pub fn reply(&mut self) -> (u64, u32) {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(be32(&h), 0x6744_6698, "simple reply magic");
        (be64(&h[8..]), be32(&h[4..]))
    }

    fn one(&mut self, kind: u16, flags: u16, offset: u64, len: u32, data: &[u8]) -> u32 {
        let h = self.send(kind, flags, offset, len, data);
        let (rh, err) = self.reply();
        assert_eq!(rh, h, "reply handle");
        err
    }

    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        let h = self.send(CMD_READ, 0, offset, len, &[]);
        let (rh, err) = self.reply();
        assert_eq!(rh, h);
        if err != 0 {
            return Err(err);
        }
        let mut d = vec![0u8; len as usize];
        self.s.read_exact(&mut d).unwrap();
        Ok(d)
    }

    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> u32 {
        self.one(
            CMD_WRITE,
            if fua { FLAG_FUA } else { 0 },
            offset,
            data.len() as u32,
            data,
        )
    }
    pub fn flush(&mut self) -> u32 {
        self.one(CMD_FLUSH, 0, 0, 0, &[])
    }
    pub fn trim(&mut self, offset: u64, len: u32) -> u32 {
        self.one(CMD_TRIM, 0, offset, len, &[])
    }
    pub fn write_zeroes(&mut self, offset: u64, len: u32, flags: u16) -> u32 {
        self.one(CMD_WRITE_ZEROES, flags, offset, len, &[])
    }
    pub fn raw(&mut self, kind: u16, flags: u16, offset: u64, len: u32, data: &[u8]) -> u32 {
        self.one(kind, flags, offset, len, data)
    }
    pub fn disconnect(mut self) {
        self.send(CMD_DISC, 0, 0, 0, &[]);
        // The server closes the connection: EOF.
        let mut b = [0u8; 1];
        assert_eq!(self.s.read(&mut b).unwrap_or(0), 0);
    }
}

/// Deterministic test data.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
