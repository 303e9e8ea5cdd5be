//! Shared by the sections that drive real servers (nbd-fio, memory): the release `wbcache`
//! binary, a scratch directory on the workspace's disk, servers that are killed when dropped,
//! waiting for a Unix socket, tools run with a time limit, and /proc/PID/status.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::workspace_root;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// The workspace's target directory (`CARGO_TARGET_DIR` if set, relative to the workspace).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => workspace_root().join(d),
        _ => workspace_root().join("target"),
    }
}

/// Builds the production binary with `cargo build --release -p wbcache-runner` (once per bench
/// run) and returns its path. Building the runner package alone keeps the crash simulator's
/// `quirks` feature of the engine out of it (a workspace-wide build would unify features); the
/// binary's `--version` must say `quirks: off`, or the bench refuses to measure it.
pub fn wbcache_bin() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        eprintln!("bench: building the wbcache binary (cargo build --release -p wbcache-runner)");
        crate::run(crate::cargo().current_dir(workspace_root()).args([
            "build",
            "--release",
            "-p",
            "wbcache-runner",
        ]))?;
        let bin = target_dir().join("release/wbcache");
        let out = Command::new(&bin)
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let version = String::from_utf8_lossy(&out.stdout);
        if !version.contains("quirks: off") {
            return Err(format!(
                "{} was not built without the `quirks` feature (its --version says {:?}); \
                 remove it and rerun",
                bin.display(),
                version.trim()
            ));
        }
        Ok(bin)
    })
    .clone()
}

/// fio, nbdkit, qemu-nbd, nbdcopy: installed with apt-get when missing (what `cargo xtask
/// test` does), or an error that names the missing tool and its package.
pub fn ensure_tools(tools: &[(&str, &str)]) -> Result<(), String> {
    crate::ensure_client_tools()?;
    let missing: Vec<String> = tools
        .iter()
        .filter(|(cmd, _)| !crate::on_path(cmd))
        .map(|(cmd, pkg)| format!("`{cmd}` (Debian package {pkg})"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the bench needs {}; install with `apt-get install -y --no-install-recommends \
             fio libnbd-bin nbdkit qemu-utils`",
            missing.join(", ")
        ))
    }
}

/// A directory under `<target>/bench-tmp/` (on the workspace's disk, not a tmpfs: O_DIRECT
/// needs a real filesystem), removed with everything in it when dropped.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Result<Self, String> {
        let dir = target_dir()
            .join("bench-tmp")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Scratch { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A sparse file of `len` bytes (created or truncated).
pub fn sparse_file(path: &Path, len: u64) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    std::fs::File::create(path)
        .and_then(|f| f.set_len(len))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Sends a signal with kill(1) (std has no signal API and xtask has no libc).
fn send_signal(pid: u32, sig: &str) -> Result<(), String> {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map_err(|e| format!("kill {sig} {pid}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("kill {sig} {pid} failed ({st})"))
    }
}

/// A server process; killed (SIGKILL) and reaped when dropped, so an error anywhere in a
/// section never leaves one behind.
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr going to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc, String> {
        let f = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let f2 = f
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .map_err(|e| format!("cannot start {name} ({cmd:?}): {e}"))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn exited(&mut self) -> Result<Option<ExitStatus>, String> {
        match self.child.as_mut() {
            Some(c) => c
                .try_wait()
                .map_err(|e| format!("waiting for {}: {e}", self.name)),
            None => Err(format!("{} was already stopped", self.name)),
        }
    }

    /// Waits until a client can connect to `socket` (the server is ready), at most `limit`.
    pub fn wait_socket(&mut self, socket: &Path, limit: Duration) -> Result<(), String> {
        let t = Instant::now();
        loop {
            if let Some(st) = self.exited()? {
                return Err(format!(
                    "{} exited before serving ({st}); its log:\n{}",
                    self.name,
                    self.log_text()
                ));
            }
            if UnixStream::connect(socket).is_ok() {
                return Ok(());
            }
            if t.elapsed() > limit {
                return Err(format!(
                    "{} did not open {} within {limit:?}; its log:\n{}",
                    self.name,
                    socket.display(),
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits (at most `limit`) for the exit; on timeout the drop kills it.
    pub fn stop(mut self, limit: Duration) -> Result<(ExitStatus, String), String> {
        if let Some(st) = self.exited()? {
            return Err(format!(
                "{} had already exited ({st}); its log:\n{}",
                self.name,
                self.log_text()
            ));
        }
        send_signal(self.pid(), "-TERM")?;
        let t = Instant::now();
        loop {
            if let Some(st) = self.exited()? {
                self.child = None;
                return Ok((st, self.log_text()));
            }
            if t.elapsed() > limit {
                return Err(format!(
                    "{} did not stop within {limit:?} of SIGTERM; its log:\n{}",
                    self.name,
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a tool printed.
pub struct ToolOutput {
    pub stdout: String,
    pub stderr: String,
}

/// Runs a tool to completion in `dir` with its output in files there; `limit` is hang
/// protection (the tool is killed and the bench fails), never a measurement. A non-zero exit
/// is an error that quotes the output.
pub fn run_tool(cmd: &mut Command, dir: &Path, limit: Duration) -> Result<ToolOutput, String> {
    let (out, err) = (dir.join("tool.stdout"), dir.join("tool.stderr"));
    let file = |p: &Path| std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()));
    let child = cmd
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(file(&out)?)
        .stderr(file(&err)?)
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let mut p = Proc {
        name: format!("{:?}", cmd.get_program()),
        child: Some(child),
        log: err.clone(),
    };
    let t = Instant::now();
    let status = loop {
        if let Some(st) = p.exited()? {
            p.child = None;
            break st;
        }
        if t.elapsed() > limit {
            drop(p);
            return Err(format!(
                "{cmd:?} hung (killed after {limit:?}); its output:\n{}{}",
                std::fs::read_to_string(&out).unwrap_or_default(),
                std::fs::read_to_string(&err).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let o = ToolOutput {
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    };
    if status.success() {
        Ok(o)
    } else {
        Err(format!(
            "{cmd:?} failed ({status}):\n{}{}",
            o.stdout, o.stderr
        ))
    }
}

/// `wbcache status` of a running server as (key, value) pairs.
pub fn wbcache_status(
    bin: &Path,
    control: &Path,
    dir: &Path,
) -> Result<Vec<(String, String)>, String> {
    let o = run_tool(
        Command::new(bin)
            .arg("status")
            .arg("--control")
            .arg(control),
        dir,
        Duration::from_secs(30),
    )?;
    Ok(o.stdout
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// A numeric field of a `wbcache status`.
pub fn status_u64(st: &[(String, String)], key: &str) -> Result<u64, String> {
    st.iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| format!("wbcache status has no numeric {key}"))
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM, RssAnon, ...), in bytes.
pub fn proc_status_bytes(pid: u32, key: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let s = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * KIB)
        .ok_or_else(|| format!("{path} has no {key}"))
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / MIB as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_proc_status() {
        let rss = proc_status_bytes(std::process::id(), "VmRSS").unwrap();
        assert!(rss > 0);
        assert!(proc_status_bytes(std::process::id(), "NoSuchKey").is_err());
    }
}
