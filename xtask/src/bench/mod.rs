//! `cargo xtask bench`: benchmarks that report ratios side by side (the targets are in
//! docs/DESIGN.md, "Performance targets"), written to a
//! markdown report (default docs/BENCH.md) and printed to stdout.
//!
//! The report is a header (machine, date, commit, command) followed by one section per
//! [`Section`]. A section runs its measurements and returns markdown; to add one, implement the
//! trait and list it in [`sections`].

mod crash_rate;
mod flush_heavy;
mod ingest;
mod latency;
mod memory;
mod nbd_fio;
mod replay;
mod server;
mod slow_backing;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Small runs: every section together in under 5 minutes (CI runs it).
    #[arg(long)]
    quick: bool,
    /// Where to write the markdown report (default: docs/BENCH.md of the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run only these sections (repeatable; default: all). Names: ingest, crash-rate, replay,
    /// nbd-fio, memory, flush-heavy, slow-backing.
    #[arg(long = "section")]
    sections: Vec<String>,
}

/// How much work a section does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Quick,
    Full,
}

/// One part of the report.
pub trait Section {
    /// Short name for `--section`.
    fn name(&self) -> &'static str;
    /// Heading of the section in the report.
    fn title(&self) -> &'static str;
    /// Runs the measurements and returns the section's markdown body (tables and notes). An
    /// error (for example data read back that differs from what was written) aborts the bench.
    fn run(&self, mode: Mode) -> Result<String, String>;
}

/// Every section, in report order: the five of issue 8 in its order, type 1 against type 0,
/// then a slow backing device (issue 17).
fn sections() -> Vec<Box<dyn Section>> {
    vec![
        Box::new(ingest::Ingest),
        Box::new(crash_rate::CrashRate),
        Box::new(replay::Replay),
        Box::new(nbd_fio::NbdFio),
        Box::new(memory::Memory),
        Box::new(flush_heavy::FlushHeavy),
        Box::new(slow_backing::SlowBacking),
    ]
}

/// A markdown table whose columns are padded so it also reads well on a terminal.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.header.len(), "one cell per column");
        self.rows.push(cells);
    }

    pub fn to_markdown(&self) -> String {
        let width = |i: usize| {
            self.rows
                .iter()
                .map(|r| r[i].chars().count())
                .chain([self.header[i].chars().count(), 3])
                .max()
                .unwrap_or(3)
        };
        let widths: Vec<usize> = (0..self.header.len()).map(width).collect();
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (c, w) in cells.iter().zip(&widths) {
                s.push_str(&format!(" {c}{} |", " ".repeat(w - c.chars().count())));
            }
            s.push('\n');
            s
        };
        let mut out = line(&self.header);
        out.push('|');
        for w in &widths {
            out.push_str(&format!(" {} |", "-".repeat(*w)));
        }
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn memory_gib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 = s
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / (1024.0 * 1024.0))
}

fn git_commit() -> String {
    let out = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match out(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => {
            let dirty = out(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c} (with uncommitted changes)")
            } else {
                c
            }
        }
        None => "unknown (not a git checkout)".into(),
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` from the system clock (civil-from-days, proleptic Gregorian).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

pub fn run(args: BenchArgs) -> Result<bool, String> {
    let mode = if args.quick { Mode::Quick } else { Mode::Full };
    let all = sections();
    for s in &args.sections {
        if !all.iter().any(|x| x.name() == s) {
            let names: Vec<&str> = all.iter().map(|x| x.name()).collect();
            return Err(format!(
                "--section {s}: no such section (there are: {})",
                names.join(", ")
            ));
        }
    }
    let command = {
        let a: Vec<String> = std::env::args().skip(1).collect();
        format!("cargo xtask {}", a.join(" "))
    };
    let out_path = args
        .out
        .clone()
        .unwrap_or_else(|| workspace_root().join("docs/BENCH.md"));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = memory_gib().map_or(String::new(), |g| format!(", {g:.0} GiB RAM"));

    let mut report = String::new();
    report.push_str("# Benchmarks\n\n");
    report.push_str(&format!(
        "Produced by `{command}` ({} mode). Regenerate with `cargo xtask bench` (full) or \
         `cargo xtask bench --quick`; numbers from another machine or commit are not comparable \
         line by line, the ratios are what to compare (docs/DESIGN.md, Performance targets).\n\n",
        match mode {
            Mode::Quick => "quick",
            Mode::Full => "full",
        }
    ));
    report.push_str(&format!("- machine: {}, {cores} cores{mem}\n", cpu_model()));
    report.push_str(&format!("- date: {}\n", utc_now()));
    report.push_str(&format!("- commit: {}\n", git_commit()));
    report.push_str(&format!("- command: `{command}`\n\n"));
    print!("{report}");

    let started = Instant::now();
    let mut n = 0;
    for s in all
        .iter()
        .filter(|s| args.sections.is_empty() || args.sections.iter().any(|x| x == s.name()))
    {
        n += 1;
        eprintln!("bench: running section {n}, {}", s.name());
        let t = Instant::now();
        let body = s
            .run(mode)
            .map_err(|e| format!("section {}: {e}", s.name()))?;
        let part = format!(
            "## {n}. {}\n\n{}\n_(section took {:.1} s of wall time)_\n\n",
            s.title(),
            body.trim_end(),
            t.elapsed().as_secs_f64()
        );
        print!("{part}");
        report.push_str(&part);
    }
    if let Some(dir) = out_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&out_path, &report).map_err(|e| format!("{}: {e}", out_path.display()))?;
    eprintln!(
        "bench: report written to {} ({:.1} s)",
        out_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_markdown_with_padded_columns() {
        let mut t = Table::new(&["a", "long header"]);
        t.row(vec!["1".into(), "2".into()]);
        assert_eq!(
            t.to_markdown(),
            "| a   | long header |\n| --- | ----------- |\n| 1   | 2           |\n"
        );
    }
}
