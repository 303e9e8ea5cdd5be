//! `cargo xtask fuzz [TARGET] [--time SECS]`: runs the cargo-fuzz targets of `fuzz/` (libFuzzer,
//! nightly) one at a time for SECS each, and prints how many inputs each ran.
//!
//! Installs cargo-fuzz if it is missing; needs the nightly toolchain (cargo-fuzz builds with
//! `-Zsanitizer` options) and says how to get it if absent. The committed seeds in
//! `fuzz/corpus/<target>/` are read, never written: what the fuzzer adds goes to
//! `fuzz/corpus-local/<target>/` (ignored by git); crashes land in `fuzz/artifacts/<target>/`.
//! The target bodies live in `fuzz-targets/`, whose test replays the committed corpora on
//! stable in `cargo test`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::Args;

/// The targets, in the order a run without TARGET takes them (as `fuzz/Cargo.toml` lists).
pub const TARGETS: [&str; 5] = ["ops", "cache_image", "plog_image", "nbd_stream", "check"];

#[derive(Args)]
pub struct FuzzArgs {
    /// One target (ops, cache_image, plog_image, nbd_stream, check); all in turn without it.
    target: Option<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Build with AddressSanitizer (the default is none: the fuzzed code is safe Rust, where
    /// ASan finds nothing the bounds checks miss, at a third of the speed).
    #[arg(long)]
    asan: bool,
    /// Per-input timeout in seconds (libFuzzer -timeout): a slower input is a hang.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

struct Outcome {
    target: String,
    seconds: u64,
    execs: Option<u64>,
    ok: bool,
    artifact: Option<String>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn have_nightly() -> bool {
    Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn have_cargo_fuzz() -> bool {
    Command::new("rustup")
        .args(["run", "nightly", "cargo", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn run(args: FuzzArgs) -> Result<bool, String> {
    let targets: Vec<String> = match &args.target {
        Some(t) if TARGETS.contains(&t.as_str()) => vec![t.clone()],
        Some(t) => {
            return Err(format!(
                "unknown fuzz target {t:?} (known: {})",
                TARGETS.join(", ")
            ))
        }
        None => TARGETS.iter().map(|t| t.to_string()).collect(),
    };
    if !have_nightly() {
        return Err(
            "cargo fuzz needs the nightly toolchain, which is not installed; \
                    install it with `rustup toolchain install nightly` and run this again \
                    (the corpora are also replayed on stable by `cargo test`)"
                .into(),
        );
    }
    if !have_cargo_fuzz() {
        eprintln!("xtask: cargo-fuzz is missing; installing it");
        crate::run(crate::cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let mut outcomes = Vec::new();
    for t in &targets {
        outcomes.push(fuzz_one(t, &args)?);
    }
    println!();
    println!(
        "{:<12} {:>8} {:>14} {:>10}  result",
        "target", "seconds", "execs", "execs/s"
    );
    for o in &outcomes {
        let execs = o.execs.map_or("?".to_string(), |e| e.to_string());
        let rate = o
            .execs
            .map_or("?".to_string(), |e| (e / o.seconds.max(1)).to_string());
        let result = if o.ok {
            "no finding".to_string()
        } else {
            format!(
                "FINDING{}",
                o.artifact
                    .as_ref()
                    .map(|a| format!(": {a}"))
                    .unwrap_or_default()
            )
        };
        println!(
            "{:<12} {:>8} {:>14} {:>10}  {result}",
            o.target, o.seconds, execs, rate
        );
    }
    Ok(outcomes.iter().all(|o| o.ok))
}

fn fuzz_one(target: &str, args: &FuzzArgs) -> Result<Outcome, String> {
    let root = root();
    let seeds = root.join("fuzz/corpus").join(target);
    let local = root.join("fuzz/corpus-local").join(target);
    std::fs::create_dir_all(&local).map_err(|e| format!("create {}: {e}", local.display()))?;
    let mut cmd = Command::new("rustup");
    cmd.current_dir(&root)
        .args(["run", "nightly", "cargo", "fuzz", "run", target])
        .args(["--sanitizer", if args.asan { "address" } else { "none" }])
        .arg(&local)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={}", args.time))
        .arg(format!("-timeout={}", args.timeout))
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        // The outer cargo's toolchain must not leak into the nightly build.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .stderr(Stdio::piped());
    if std::env::var_os("CARGO_BUILD_JOBS").is_none() {
        // A small shared machine: one build job unless told otherwise.
        cmd.env("CARGO_BUILD_JOBS", "1");
    }
    eprintln!("xtask: fuzzing {target} for {} s: {cmd:?}", args.time);
    let start = std::time::Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let stderr = child.stderr.take().expect("piped stderr");
    let mut execs = None;
    let mut artifact = None;
    let mut fuzz_started = None;
    for line in BufReader::new(stderr).lines() {
        let line = line.map_err(|e| e.to_string())?;
        eprintln!("{line}");
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            execs = n.trim().parse().ok();
        }
        if let Some(rest) = line.split("Test unit written to ").nth(1) {
            artifact = Some(rest.trim().to_string());
        }
        if fuzz_started.is_none() && line.contains("INITED") {
            fuzz_started = Some(std::time::Instant::now());
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let seconds = fuzz_started.unwrap_or(start).elapsed().as_secs();
    Ok(Outcome {
        target: target.to_string(),
        seconds,
        execs,
        ok: status.success(),
        artifact,
    })
}
