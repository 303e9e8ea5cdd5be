//! The guest side: this very binary is `/init` (PID 1) of the initramfs the interop VMs boot.
//! It mounts the pseudo file systems, loads the modules the host listed (virtio, dm-mod,
//! crc32c, dm-writeboost), creates the writeboost target with dmsetup and runs one job, named
//! on the kernel command line:
//!
//! - `wbki.job=write`: run the seeded workload `wbki.w` on the target (O_DIRECT writes,
//!   fdatasync for FLUSH), print the target's status, then end as `wbki.end` says: `remove`
//!   (`dmsetup remove`, upstream's clean removal) or `powercut` (sysrq `b`: an immediate
//!   reboot without syncing anything, and qemu runs with `-no-reboot`, so it exits).
//! - `wbki.job=read`: create the target (the kernel replays its log), print its status, and
//!   copy the whole mapped device into the third disk, the host's result image.
//!
//! Everything it says goes to the serial console as lines starting with `WBKI-`; the last
//! is `WBKI-DONE` or `WBKI-FAIL <reason>`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::workload::{write_data, Op, Spec, SECTOR};

/// The target's name; dmsetup (udev off) makes `/dev/mapper/wbki`.
const DM_NAME: &str = "wbki";

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs as PID 1 and never returns: powers off, or cuts power, when done.
pub fn main() -> ! {
    let started = Instant::now();
    let params = cmdline();
    let end = params
        .iter()
        .find(|(k, _)| k == "end")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "poweroff".into());
    match run(&params) {
        Ok(()) => say(&format!(
            "WBKI-DONE after {:.1} s in the guest",
            started.elapsed().as_secs_f64()
        )),
        Err(e) => say(&format!("WBKI-FAIL {e}")),
    }
    finish(&end)
}

fn cmdline() -> Vec<(String, String)> {
    let _ = std::fs::create_dir_all("/proc");
    mount("proc", "/proc", "proc");
    let line = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    line.split_whitespace()
        .filter_map(|w| w.strip_prefix("wbki."))
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn mount(src: &str, target: &str, fstype: &str) {
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    // SAFETY: plain mount(2) with NUL-terminated strings that outlive the call.
    unsafe {
        libc::mount(
            c(src).as_ptr(),
            c(target).as_ptr(),
            c(fstype).as_ptr(),
            0,
            std::ptr::null(),
        );
    }
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Result<&'a str, String> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| format!("no wbki.{key}= on the kernel command line"))
}

fn run(params: &[(String, String)]) -> Result<(), String> {
    for d in ["/sys", "/dev", "/tmp", "/run"] {
        let _ = std::fs::create_dir_all(d);
    }
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");
    mount("tmpfs", "/run", "tmpfs");
    load_modules()?;
    let disks = if param(params, "job")? == "read" {
        3
    } else {
        2
    };
    wait_for_disks(disks)?;
    let sectors = disk_sectors("vda")?;
    let mut table = format!("0 {sectors} writeboost /dev/vda /dev/vdb");
    let opts: Vec<(&str, &str)> = param(params, "opts")
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|kv| kv.split_once(':'))
        .collect();
    if !opts.is_empty() {
        table += &format!(" {}", opts.len() * 2);
        for (k, v) in &opts {
            table += &format!(" {k} {v}");
        }
    }
    say(&format!("WBKI-TABLE {table}"));
    let t = Instant::now();
    dmsetup(&["create", DM_NAME, "--table", &table])?;
    say(&format!(
        "WBKI-CREATED in {:.2} s",
        t.elapsed().as_secs_f64()
    ));
    say(&format!("WBKI-STATUS {}", dmsetup(&["status", DM_NAME])?));
    let dev = if Path::new("/dev/mapper/wbki").exists() {
        "/dev/mapper/wbki"
    } else {
        "/dev/dm-0"
    };
    match param(params, "job")? {
        "write" => {
            let spec = Spec::decode(param(params, "w")?)?;
            // `wbki.msg=N:NAME:VALUE`: `dmsetup message` after the N-th write.
            let msg = match param(params, "msg").unwrap_or("") {
                "" => None,
                m => {
                    let mut it = m.splitn(3, ':');
                    let n: u32 = it
                        .next()
                        .unwrap_or("")
                        .parse()
                        .map_err(|e| format!("wbki.msg={m}: {e}"))?;
                    let (k, v) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
                    Some((n, k.to_string(), v.to_string()))
                }
            };
            write_job(dev, &spec, msg.as_ref())?;
            say(&format!("WBKI-STATUS {}", dmsetup(&["status", DM_NAME])?));
            if param(params, "end")? == "remove" {
                let t = Instant::now();
                dmsetup(&["remove", DM_NAME])?;
                say(&format!(
                    "WBKI-REMOVED in {:.2} s",
                    t.elapsed().as_secs_f64()
                ));
            }
            Ok(())
        }
        "read" => read_job(dev, sectors),
        other => Err(format!("unknown job {other:?}")),
    }
}

/// Loads `/modules/*.ko` in the order `/modules.order` gives (dependencies first).
fn load_modules() -> Result<(), String> {
    let order =
        std::fs::read_to_string("/modules.order").map_err(|e| format!("/modules.order: {e}"))?;
    for name in order.lines().filter(|l| !l.is_empty()) {
        let path = format!("/modules/{name}");
        let f = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        // SAFETY: finit_module(2) on an open file descriptor, empty parameter string.
        let r = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                f.as_raw_fd(),
                c"".as_ptr(),
                0 as libc::c_int,
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("loading {name}: {e}"));
            }
        }
    }
    Ok(())
}

fn wait_for_disks(n: usize) -> Result<(), String> {
    let names = ["vda", "vdb", "vdc"];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if names[..n]
            .iter()
            .all(|d| Path::new(&format!("/dev/{d}")).exists())
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the {n} virtio disks did not appear in 30 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn disk_sectors(name: &str) -> Result<u64, String> {
    let p = format!("/sys/block/{name}/size");
    std::fs::read_to_string(&p)
        .map_err(|e| format!("{p}: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("{p}: {e}"))
}

fn dmsetup(args: &[&str]) -> Result<String, String> {
    let out = Command::new("/sbin/dmsetup")
        .arg("--noudevsync")
        .args(args)
        .env("DM_DISABLE_UDEV", "1")
        .output()
        .map_err(|e| format!("dmsetup: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "dmsetup {} failed ({}): {} {}",
            args.join(" "),
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn open_direct(path: &str, write: bool) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))
}

/// A 4 KiB-aligned buffer for O_DIRECT.
struct Aligned {
    v: Vec<u8>,
    off: usize,
    len: usize,
}
impl Aligned {
    fn new(len: usize) -> Aligned {
        let v = vec![0u8; len + 4096];
        let off = (4096 - (v.as_ptr() as usize % 4096)) % 4096;
        Aligned { v, off, len }
    }
    fn buf(&mut self) -> &mut [u8] {
        &mut self.v[self.off..self.off + self.len]
    }
}

fn write_job(dev: &str, spec: &Spec, msg: Option<&(u32, String, String)>) -> Result<(), String> {
    let f = open_direct(dev, true)?;
    let t = Instant::now();
    let (mut writes, mut flushes) = (0u32, 0u32);
    let mut buf = Aligned::new(64 * SECTOR);
    for op in spec.ops() {
        match op {
            Op::Write { id, sector, len } => {
                let data = write_data(spec.seed, id, sector, len);
                let b = &mut buf.buf()[..data.len()];
                b.copy_from_slice(&data);
                f.write_all_at(b, sector * SECTOR as u64)
                    .map_err(|e| format!("write op {id} at sector {sector}: {e}"))?;
                writes += 1;
                if let Some((n, k, v)) = msg.filter(|m| m.0 == writes) {
                    dmsetup(&["message", DM_NAME, "0", k, v])?;
                    say(&format!("WBKI-MESSAGE after {n} writes: {k} {v}"));
                }
            }
            Op::Flush => {
                f.sync_data()
                    .map_err(|e| format!("flush after {writes} writes: {e}"))?;
                flushes += 1;
            }
            Op::Sleep(ms) => std::thread::sleep(Duration::from_millis(ms.into())),
        }
    }
    say(&format!(
        "WBKI-WROTE {writes} writes, {flushes} flushes in {:.2} s",
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn read_job(dev: &str, sectors: u64) -> Result<(), String> {
    let src = open_direct(dev, false)?;
    let dst = open_direct("/dev/vdc", true)?;
    let t = Instant::now();
    let chunk = 1 << 20;
    let mut buf = Aligned::new(chunk);
    let total = sectors * SECTOR as u64;
    let mut off = 0u64;
    while off < total {
        let n = chunk.min((total - off) as usize);
        let b = &mut buf.buf()[..n];
        src.read_exact_at(b, off)
            .map_err(|e| format!("reading the target at byte {off}: {e}"))?;
        dst.write_all_at(b, off)
            .map_err(|e| format!("writing the result disk at byte {off}: {e}"))?;
        off += n as u64;
    }
    dst.sync_data().map_err(|e| format!("result disk: {e}"))?;
    say(&format!(
        "WBKI-READ {total} bytes in {:.2} s",
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn finish(end: &str) -> ! {
    // Let the serial line drain before the machine goes away.
    // SAFETY: tcdrain(3) on stdout.
    unsafe {
        libc::tcdrain(1);
    }
    std::thread::sleep(Duration::from_millis(200));
    if end == "powercut" {
        // An immediate reboot, no sync, no device shutdown: the kernel's RAM (its RAM buffer,
        // anything not yet submitted) is lost; what the virtio disks completed stays.
        if let Ok(mut f) = OpenOptions::new().write(true).open("/proc/sysrq-trigger") {
            let _ = f.write_all(b"b");
        }
    }
    // SAFETY: sync(2) and reboot(2) take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}
