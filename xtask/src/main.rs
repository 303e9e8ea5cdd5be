//! `cargo xtask <task>`: the project's tasks, one command each.

mod bench;
mod crash_test;
mod fuzz;
mod heap;
mod kernel_interop;
#[cfg(test)]
mod rust_version;
mod stages;
mod zoo;

use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "wbcache project tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Every test, in named stages that all run: the NBD client tools (installed with apt-get
    /// when missing: fio, libnbd-bin, nbdkit, qemu-utils), `cargo test --workspace`, loom, four
    /// crash-tests of a fixed amount of work and the quirk zoo; ends with one verdict line
    /// naming each stage. CI (.ci/run) runs it, then the quick benchmark apart.
    Test,
    /// Check crash states of simulated runs against the oracles (the main job).
    CrashTest(Box<crash_test::CrashTestArgs>),
    /// Check the runner's request handoff, reply ordering and shutdown with loom.
    Loom,
    /// Benchmarks against the targets of docs/DESIGN.md ("Performance targets"): writes a
    /// markdown report (docs/BENCH.md) and prints it.
    Bench(bench::BenchArgs),
    /// Fuzz one target (or every target in turn) with cargo-fuzz on nightly; prints exec counts.
    Fuzz(fuzz::FuzzArgs),
    /// Interop with the real dm-writeboost kernel module (Debian bookworm's 6.1 kernel and
    /// dm-writeboost-dkms, in qemu): both directions on seeded workloads.
    KernelInterop(kernel_interop::KernelInteropArgs),
}

fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The loom models of the runner (runner/tests/loom.rs), in their own target directory so
/// the `--cfg loom` build does not invalidate the normal one.
fn task_loom() -> Result<(), String> {
    run(cargo().env("RUSTFLAGS", "--cfg loom").args([
        "test",
        "-p",
        "wbcache-runner",
        "--release",
        "--target-dir",
        "target/loom",
        "--test",
        "loom",
    ]))
}

/// The real NBD clients `runner/tests/clients.rs` drives: (command, Debian package).
const CLIENT_TOOLS: &[(&str, &str)] = &[
    ("fio", "fio"),
    ("nbdinfo", "libnbd-bin"),
    ("nbdcopy", "libnbd-bin"),
    ("nbdkit", "nbdkit"),
    ("qemu-io", "qemu-utils"),
];

/// Whether `cmd` is an executable file on `PATH` (what `which` does).
fn on_path(cmd: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(cmd))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// The Debian packages of the client tools that are not installed.
fn missing_client_packages() -> Vec<&'static str> {
    let mut pkgs: Vec<&str> = CLIENT_TOOLS
        .iter()
        .filter(|(cmd, _)| !on_path(cmd))
        .map(|&(_, pkg)| pkg)
        .collect();
    pkgs.sort_unstable();
    pkgs.dedup();
    pkgs
}

/// Installs the real-client test tools with apt-get when any is missing (through sudo unless
/// root; `apt-get update` and a second try if the first install fails), so the tests never
/// meet a missing tool; fails with the command to run by hand if they cannot be had.
fn ensure_client_tools() -> Result<(), String> {
    let missing = missing_client_packages();
    if missing.is_empty() {
        return Ok(());
    }
    let by_hand = format!(
        "apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    eprintln!(
        "xtask: the real-client tests (runner/tests/clients.rs) need {}; installing with apt-get",
        missing.join(", ")
    );
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let apt = |args: &[&str]| {
        let mut c = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        c.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        c
    };
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(&missing);
    if run(&mut apt(&install)).is_err() {
        // A fresh machine often has no package lists yet.
        let _ = run(&mut apt(&["update"]));
        let _ = run(&mut apt(&install));
    }
    let still = missing_client_packages();
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "cannot install {} (needed by runner/tests/clients.rs: fio, nbdinfo, nbdcopy, nbdkit, \
             qemu-io); install them with `{}`{} and rerun",
            still.join(", "),
            by_hand,
            if root { "" } else { " as root" }
        ))
    }
}

/// The stages of `cargo xtask test`, in order (README, "The two commands", lists them with
/// their times). The crash-tests do a fixed amount of work, never a time box, so every machine
/// checks the same states; they run in this process, the cargo ones as child processes.
fn test_stages() -> Vec<stages::Stage> {
    use stages::Stage;
    vec![
        Stage::new("client tools", || {
            ensure_client_tools().map(|()| "fio, nbdinfo, nbdcopy, nbdkit, qemu-io present".into())
        }),
        // --no-fail-fast: one failing test binary does not hide the others' results.
        Stage::new("unit+integration", || {
            run(cargo().args(["test", "--workspace", "--no-fail-fast"]))
                .map(|()| "cargo test --workspace".into())
        }),
        Stage::new("loom", || {
            task_loom().map(|()| "runner/tests/loom.rs under --cfg loom".into())
        }),
        // The tester's own regression tests (lying flush and FUA, quirks, replay, shrinking)
        // are in crashsim/tests, run by the stage above; these must find nothing.
        // The default run, then again as two shards (one interrupted and resumed), merged.
        Stage::new("crash-test default", || crash_test::stage_with_shards(&[])),
        Stage::new("crash-test garbage-torn 4 KiB", || {
            crash_test::stage(&["--seeds", "20", "--fault", "garbage-torn", "--unit", "4096"])
        }),
        Stage::new("crash-test bounded L=4", || {
            crash_test::stage(&["--bounded", "4"])
        }),
        // Type 1, bounded: every workload of up to 2 operations on a type-1 cache, every
        // completion order (L = 3 takes about 10 minutes here).
        Stage::new("crash-test bounded type 1 L=2", || {
            crash_test::stage(&["--bounded", "2", "--type", "1"])
        }),
        // Type 1 (plog): every scenario and the 60 seeded workloads of the default set, all of
        // them.
        Stage::new("crash-test type 1", || crash_test::stage(&["--type", "1"])),
        // Every seed quirk must be caught. Each hunt is single-threaded and stops at its first
        // violation, so it checks the same states everywhere; the 120 s per quirk only bound a
        // machine far slower than ours (wc-ignore-fua, the slowest, needs about 216,000
        // states: 25 s on an idle 2-core machine).
        Stage::new("quirk zoo", || {
            crash_test::stage(&["--zoo", "--zoo-budget", "120"])
        }),
        // Against the real dm-writeboost kernel module in qemu (artefacts cached in target/),
        // in a child process: its VMs boot this binary as their /init.
        Stage::new("kernel interop", || {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            run(Command::new(exe).arg("kernel-interop"))
                .map(|()| "every scenario against dm-writeboost in qemu".into())
        }),
    ]
}

fn task_test() -> bool {
    stages::run_all(test_stages())
}

fn main() -> ExitCode {
    // In the interop VMs this binary is the initramfs's /init (PID 1, started as /init).
    if std::process::id() == 1 && std::env::args().next().as_deref() == Some("/init") {
        kernel_interop::guest_main();
    }
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Test => Ok(task_test()),
        Task::Loom => task_loom().map(|()| true),
        Task::CrashTest(args) => crash_test::run(*args),
        Task::Bench(args) => bench::run(args),
        Task::Fuzz(args) => fuzz::run(args),
        Task::KernelInterop(args) => kernel_interop::run(args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_test_help_names_the_command_every_quirk_and_every_scenario() {
        // What `cargo xtask crash-test --help` prints (argv[0] is the xtask binary's path).
        let help = match Cli::try_parse_from(["target/release/xtask", "crash-test", "--help"]) {
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => e.to_string(),
            _ => panic!("--help did not print help"),
        };
        assert!(
            help.contains("Usage: cargo xtask crash-test [OPTIONS]"),
            "{help}"
        );
        for q in crashsim::explore::quirk_names() {
            assert!(
                help.contains(&format!(" {q},")) || help.contains(&format!(" {q} ")),
                "{q}: {help}"
            );
        }
        for (s, ..) in crashsim::explore::SCENARIOS {
            assert!(help.contains(s), "{s}: {help}");
        }
    }

    #[test]
    fn the_cargo_xtask_alias_lets_cargo_show_that_it_builds() {
        let config = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../.cargo/config.toml"
        ))
        .unwrap();
        let alias = config
            .lines()
            .find(|l| l.starts_with("xtask = "))
            .expect("the xtask alias");
        assert!(alias.contains("--release --package xtask"), "{alias}");
        assert!(
            !alias.contains("--quiet") && !alias.contains(" -q"),
            "{alias}"
        );
    }
}
