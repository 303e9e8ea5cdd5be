//! One qemu boot of Debian's kernel with the interop initramfs (`guest.rs` is its /init).
//!
//! TCG, not KVM: on these machines /dev/kvm is kvm_pvm, under which stock kernels hang at
//! boot. The disks use `cache=unsafe`: the host never crashes here, so whatever the guest's
//! virtio disks completed is in the host's files when qemu exits, and a guest power cut
//! (sysrq `b`) models a machine whose RAM is lost while its disks keep every completed write
//! (no volatile disk cache is modelled: crashsim does that).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::artefacts::Artefacts;

pub struct Boot {
    /// Every `WBKI-STATUS` line's fields after `0 <len> writeboost`.
    pub statuses: Vec<Status>,
    pub seconds: f64,
}

/// The first fields of upstream's status line.
#[derive(Clone, Copy, Debug)]
pub struct Status {
    pub nr_segments: u64,
    pub current_id: u64,
    pub last_flushed_id: u64,
    pub last_writeback_id: u64,
    pub nr_dirty: u64,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "nr_segments {} current_id {} last_flushed_id {} last_writeback_id {} dirty blocks {}",
            self.nr_segments,
            self.current_id,
            self.last_flushed_id,
            self.last_writeback_id,
            self.nr_dirty
        )
    }
}

fn parse_status(line: &str) -> Option<Status> {
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(3)
        .take(7)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    (f.len() == 7).then(|| Status {
        nr_segments: f[2],
        current_id: f[3],
        last_flushed_id: f[4],
        last_writeback_id: f[5],
        nr_dirty: f[6],
    })
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Boots one VM with `disks` (vda, vdb, vdc in order) and the `wbki.*` parameters, waits
/// for it to power off (at most `timeout`), and checks the guest said `WBKI-DONE`.
pub fn boot(
    art: &Artefacts,
    initrd: &Path,
    disks: &[&Path],
    params: &[(&str, String)],
    console: &Path,
    timeout: Duration,
) -> Result<Boot, String> {
    let mut append = String::from("console=ttyS0 panic=-1 loglevel=5 rdinit=/init");
    for (k, v) in params {
        append += &format!(" wbki.{k}={v}");
    }
    let mut cmd = Command::new(&art.qemu);
    cmd.env("LD_LIBRARY_PATH", &art.qemu_lib_path);
    for d in &art.qemu_data_dirs {
        cmd.arg("-L").arg(d);
    }
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "1G",
        "-smp",
        "1",
        "-display",
        "none",
        "-no-reboot",
        "-nic",
        "none",
        "-monitor",
        "none",
    ])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .arg("-kernel")
    .arg(&art.vmlinuz)
    .arg("-initrd")
    .arg(initrd)
    .arg("-append")
    .arg(&append);
    for d in disks {
        cmd.arg("-drive").arg(format!(
            "file={},if=virtio,format=raw,cache=unsafe",
            d.display()
        ));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", art.qemu.display()))?;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let log = fs::read_to_string(console).unwrap_or_default();
            return Err(format!(
                "the VM did not power off within {} s; console ({}) ends:\n{}",
                timeout.as_secs(),
                console.display(),
                tail(&log, 30)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let log = fs::read_to_string(console).unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "qemu exited with {status}: {}\nconsole ({}) ends:\n{}",
            stderr.trim(),
            console.display(),
            tail(&log, 30)
        ));
    }
    if let Some(l) = log.lines().find(|l| l.contains("WBKI-FAIL")) {
        return Err(format!(
            "the guest failed: {}\nconsole ({}) ends:\n{}",
            l.trim(),
            console.display(),
            tail(&log, 30)
        ));
    }
    if !log.contains("WBKI-DONE") {
        return Err(format!(
            "the guest never said WBKI-DONE; console ({}) ends:\n{}",
            console.display(),
            tail(&log, 30)
        ));
    }
    let statuses = log
        .lines()
        .filter_map(|l| l.split_once("WBKI-STATUS ").map(|(_, s)| s))
        .filter_map(parse_status)
        .collect();
    Ok(Boot {
        statuses,
        seconds: started.elapsed().as_secs_f64(),
    })
}
