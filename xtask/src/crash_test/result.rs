//! The result file of a run or shard (`--result FILE`, `--resume FILE`): what it explored,
//! under which configuration, and what it found. Written whole to a temporary file and
//! renamed over the old one, so a run killed at any moment leaves the last complete result.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::shard::{stable_hash, Shard};
use super::tally::TallyRecord;

/// The format's name and version, first in every file.
pub const FORMAT: &str = "wbcache-crash-test-result/1";

/// What defines the space a run explores and how it judges it: the same configuration means
/// the same workloads, explored the same way, by the same source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The crash-test options that define the space, spelt out in full (defaults included):
    /// `cargo xtask crash-test WORDS` runs it again.
    pub words: Vec<String>,
    /// `git describe --always --dirty` of the tree the run was started in ("unknown" outside a
    /// git checkout).
    pub source: String,
    /// A hash of both, hex.
    pub hash: String,
}

impl Config {
    pub fn new(words: Vec<String>, source: String) -> Config {
        let mut bytes = source.as_bytes().to_vec();
        for w in &words {
            bytes.push(0);
            bytes.extend_from_slice(w.as_bytes());
        }
        let hash = format!("{:016x}", stable_hash(&bytes));
        Config {
            words,
            source,
            hash,
        }
    }
}

/// The source tree this process was started in, as `git describe` names it.
pub fn source_version() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=40"])
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// A violation as printed: shrunk (unless the run was interrupted first), with its replay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViolationRecord {
    /// The oracle (or other check) that failed: "block", "prefix", "panic", ...
    pub oracle: String,
    /// What kind of failure it is ("violation (block oracle)", ...).
    pub headline: String,
    pub detail: String,
    /// The operations of the (shrunk) workload, and how many the workload had before.
    pub ops: u64,
    pub ops_before_shrinking: u64,
    pub workload: String,
    /// The continuation's operations, when the crash path has one.
    pub continuation: Option<String>,
    /// The crash case, for `--replay`.
    pub case: String,
    pub replay: String,
    pub shrunk: bool,
}

/// One run's or shard's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub format: String,
    pub config: Config,
    pub shard: Shard,
    /// Workloads in the whole space, and an order-free hash of their identities (hex).
    pub space_workloads: u64,
    pub space_ids: String,
    /// This shard's workloads and the hash of their identities.
    pub shard_workloads: u64,
    pub shard_ids: String,
    /// The shard's workloads (by position among them, in space order) explored to the end, as
    /// half-open ranges.
    pub done: Vec<(u64, u64)>,
    /// Every workload of the shard was explored to the end.
    pub complete: bool,
    /// Why the last run ended before that, if it did.
    pub stopped_early: Option<String>,
    /// Wall seconds of every run that added to this result, summed, and how many runs.
    pub seconds: f64,
    pub runs: u64,
    /// The most worker threads one of those runs had.
    pub threads: u64,
    pub tally: TallyRecord,
    pub violations: Vec<ViolationRecord>,
}

impl RunResult {
    /// Writes the result to `path`: whole, or not at all.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).expect("a result serialises");
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| format!("cannot write the result {}: {e}", path.display()))
    }

    pub fn load(path: &Path) -> Result<RunResult, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the result {}: {e}", path.display()))?;
        let r: RunResult = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{} is not a crash-test result ({FORMAT}): {e}",
                path.display()
            )
        })?;
        if r.format != FORMAT {
            return Err(format!(
                "{} is a {:?} file; this build reads {FORMAT}",
                path.display(),
                r.format
            ));
        }
        Ok(r)
    }
}

/// Half-open ranges of the sorted positions `done`.
pub fn ranges(done: &std::collections::BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &i in done {
        match out.last_mut() {
            Some(r) if r.1 == i => r.1 = i + 1,
            _ => out.push((i, i + 1)),
        }
    }
    out
}

/// The positions in `ranges`, refusing ranges past `len` (a result of another space).
pub fn positions(
    ranges: &[(u64, u64)],
    len: u64,
) -> Result<std::collections::BTreeSet<u64>, String> {
    let mut out = std::collections::BTreeSet::new();
    for &(a, b) in ranges {
        if a >= b || b > len {
            return Err(format!(
                "done range {a}..{b} does not fit a shard of {len} workloads"
            ));
        }
        out.extend(a..b);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_positions_round_trip_as_ranges() {
        let set: std::collections::BTreeSet<u64> = [0, 1, 2, 5, 7, 8].into_iter().collect();
        let r = ranges(&set);
        assert_eq!(r, [(0, 3), (5, 6), (7, 9)]);
        assert_eq!(positions(&r, 9).unwrap(), set);
        assert!(positions(&r, 8).is_err());
        assert!(positions(&[(3, 3)], 9).is_err());
    }
}
