//! `cargo xtask kernel-interop`: interoperability with the real dm-writeboost kernel module
//! (Debian bookworm's `dm-writeboost-dkms` on Debian's 6.1 kernel, in qemu).
//!
//! Both directions, on seeded workloads whose every sector the host can regenerate:
//! - the kernel writes (clean removal, power cut, a wrapped log with record 0, a wrapped log
//!   with record updates) and `wbcache check` must say sound, and `wbcache writeback` and
//!   `wbcache serve` must give exactly what the kernel itself recovers from the same images;
//! - wbcache writes (SIGTERM, SIGKILL after a flush) and the kernel must recover every
//!   flushed write;
//! - a round trip: wbcache writes, the kernel wraps its log over it with record updates,
//!   and wbcache recovers exactly what the kernel recovers.
//!
//! Artefacts (kernel, module, qemu, the guest's fixed files) are built once under
//! `target/kernel-interop/` (`artefacts.rs`); each VM boots an initramfs whose `/init` is
//! this very binary (`guest.rs`).

mod artefacts;
mod guest;
mod host;
mod scenarios;
mod vm;
pub mod workload;

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use guest::main as guest_main;

#[derive(clap::Args)]
pub struct KernelInteropArgs {
    /// Run only this scenario (repeatable; `--list` names them).
    #[arg(long, value_name = "NAME")]
    scenario: Vec<String>,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Keep each scenario's work directory (images, consoles, logs) under
    /// target/kernel-interop/work/ (a failing scenario's is always kept).
    #[arg(long)]
    keep: bool,
    /// Seed of every workload (the backing device's initial data and the writes).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn run(args: KernelInteropArgs) -> Result<bool, String> {
    let all = scenarios::all();
    if args.list {
        for s in &all {
            println!("{:<22} {}", s.name, s.about);
        }
        return Ok(true);
    }
    for n in &args.scenario {
        if !all.iter().any(|s| s.name == n) {
            return Err(format!(
                "no scenario {n:?}; `cargo xtask kernel-interop --list` names them"
            ));
        }
    }
    let chosen: Vec<_> = all
        .iter()
        .filter(|s| args.scenario.is_empty() || args.scenario.iter().any(|n| n == s.name))
        .collect();
    let started = Instant::now();
    let root = workspace_root();
    let kdir = root.join("target/kernel-interop");

    // The wbcache binary under test.
    crate::run(crate::cargo().current_dir(&root).args([
        "build",
        "--release",
        "-q",
        "-p",
        "wbcache-runner",
    ]))?;
    let wbcache = root.join("target/release/wbcache");
    artefacts::ensure_host_packages(&["qemu-utils"])?;
    let art = artefacts::ensure(&kdir)?;
    eprintln!(
        "kernel-interop: artefacts ready after {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        art.versions
    );
    let initrd = build_initrd(&kdir, &art)?;

    let ctx = scenarios::Ctx {
        art,
        initrd,
        wb: host::Wbcache { exe: wbcache },
        seed: args.seed,
    };
    let (mut passed, mut failed) = (0, 0);
    let mut summary = Vec::new();
    for s in chosen {
        let dir = kdir.join("work").join(s.name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let t = Instant::now();
        eprintln!("kernel-interop: scenario {} ({})", s.name, s.about);
        let mut out = scenarios::Outcome::default();
        if let Err(e) = (s.run)(&ctx, &dir, &mut out) {
            out.failures.push(format!("could not run: {e}"));
        }
        let secs = t.elapsed().as_secs_f64();
        for n in &out.notes {
            println!("  {}: {n}", s.name);
        }
        if out.failures.is_empty() {
            passed += 1;
            println!("kernel-interop: PASS {} ({secs:.0} s)", s.name);
            summary.push(format!("PASS {}", s.name));
            if !args.keep {
                let _ = std::fs::remove_dir_all(&dir);
            }
        } else {
            failed += 1;
            println!("kernel-interop: FAIL {} ({secs:.0} s)", s.name);
            for f in &out.failures {
                println!("  {}: FAILED: {f}", s.name);
            }
            println!(
                "  rerun: cargo xtask kernel-interop --scenario {} --seed {} --keep   (work directory kept: {})",
                s.name,
                args.seed,
                dir.display()
            );
            summary.push(format!("FAIL {}", s.name));
        }
    }
    println!(
        "kernel-interop: {} in {:.0} s",
        summary.join(", "),
        started.elapsed().as_secs_f64()
    );
    println!("kernel-interop: {passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// The initramfs: the fixed part (modules, dmsetup) plus this binary as `/init` with its
/// libraries. Rebuilt every run (a second or so): the binary changes with the code.
fn build_initrd(kdir: &Path, art: &artefacts::Artefacts) -> Result<PathBuf, String> {
    let extra = kdir.join("initrd-extra");
    let _ = std::fs::remove_dir_all(&extra);
    std::fs::create_dir_all(&extra).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    artefacts::copy_with_libs(&exe, "init", &extra)?;
    let out = kdir.join("initrd.cpio");
    artefacts::write_cpio(&[&art.guest_base, &extra], &out)?;
    Ok(out)
}
