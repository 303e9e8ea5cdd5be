//! `cargo xtask crash-test merge RESULTS...`: sums shard results into the summary one run
//! would print, once they are proven to cover the space exactly once.

use std::path::{Path, PathBuf};

use super::result::{self, RunResult};
use super::shard::{id_set_hash, workload_id, Shard};
use super::summary::{self, Report};
use super::tally::Tally;
use super::{explore, parse_args, space, Outcome};

pub fn run(paths: &[PathBuf], json: bool) -> Result<Outcome, String> {
    let shards: Vec<(PathBuf, RunResult)> = paths
        .iter()
        .map(|p| RunResult::load(p).map(|r| (p.clone(), r)))
        .collect::<Result<_, _>>()?;
    let (first_path, first) = shards.first().ok_or("merge: no result files given")?;
    let words: Vec<&str> = first.config.words.iter().map(String::as_str).collect();
    let mut args = parse_args(&words).map_err(|e| {
        format!(
            "{}: its options no longer parse in this build: {e}",
            first_path.display()
        )
    })?;
    args.json = json;
    same_configuration(&shards)?;
    let count = first.shard.count;
    let by_index = one_of_each(&shards, count)?;
    // Rebuild the space from the options and check every shard holds exactly its share of it.
    let space = space::build(&args)?;
    let ids: Vec<u64> = space.workloads.iter().map(workload_id).collect();
    let space_hash = format!("{:016x}", id_set_hash(ids.iter().copied()));
    let mut incomplete = Vec::new();
    let mut tally = Tally::default();
    let (mut seconds, mut threads, mut violations) = (0.0, 0u64, Vec::new());
    for (path, r) in &by_index {
        covers_its_share(path, r, &ids, &space_hash)?;
        let done = result::positions(&r.done, r.shard_workloads)?;
        if done.len() as u64 != r.shard_workloads {
            incomplete.push(format!(
                "shard {} ({}) is incomplete: {} of {} workloads explored{}",
                r.shard,
                path.display(),
                done.len(),
                r.shard_workloads,
                r.stopped_early
                    .as_deref()
                    .map_or(String::new(), |why| format!(" ({why})"))
            ));
        }
        tally.add(&Tally::from_record(&r.tally)?);
        seconds += r.seconds;
        threads += r.threads;
        violations.extend(r.violations.iter().cloned());
    }
    println!(
        "merge: {count} shard(s) of `cargo xtask crash-test {}` at {}: disjoint, and together \
         every one of the {} workloads of the space{}",
        first.config.words.join(" "),
        first.config.source,
        space.workloads.len(),
        if incomplete.is_empty() {
            ", each explored to its end"
        } else {
            ", but not every shard is complete"
        }
    );
    let stopped = (!incomplete.is_empty()).then(|| incomplete.join("; "));
    let report = Report {
        args: &args,
        tally: &tally,
        total: space.workloads.len() as u64,
        bounded_space: space.bounded.as_deref(),
        stopped_early: stopped.as_deref(),
        violations: &violations,
        seconds,
        threads: threads as usize,
        whole_space: true,
        faults: space::faults_and_unit(&args)?.0,
        exhaustive_bound: explore::subset_bounds(&args).0,
        k: explore::subset_bounds(&args).1,
    };
    let verdict = summary::print(&report);
    Ok(Outcome {
        states: tally.states,
        workloads: tally.workloads,
        total: space.workloads.len() as u64,
        violations: tally.violations,
        passed: tally.violations == 0 && !verdict.blind && stopped.is_none(),
        interrupted: false,
        stopped_early: stopped,
        shown: violations,
        tally,
        bounded_exhaustive: verdict.bounded_exhaustive,
    })
}

/// Every result is of the same options and source.
fn same_configuration(shards: &[(PathBuf, RunResult)]) -> Result<(), String> {
    let (p0, r0) = &shards[0];
    for (p, r) in &shards[1..] {
        if r.config.hash != r0.config.hash {
            return Err(format!(
                "merge: {} and {} are of different runs: `{}` at {} against `{}` at {}",
                p0.display(),
                p.display(),
                r0.config.words.join(" "),
                r0.config.source,
                r.config.words.join(" "),
                r.config.source
            ));
        }
    }
    Ok(())
}

/// The results in shard order, each of 1..=count exactly once.
fn one_of_each(
    shards: &[(PathBuf, RunResult)],
    count: u64,
) -> Result<Vec<(PathBuf, RunResult)>, String> {
    let mut slots: Vec<Option<(PathBuf, RunResult)>> = vec![None; count as usize];
    for (p, r) in shards {
        if r.shard.count != count {
            return Err(format!(
                "merge: {} is shard {} but {} is of {count} shards",
                p.display(),
                r.shard,
                shards[0].0.display()
            ));
        }
        let slot = &mut slots[(r.shard.index - 1) as usize];
        if let Some((q, _)) = slot {
            return Err(format!(
                "merge: shard {} given twice ({} and {}): each shard must be counted once",
                r.shard,
                q.display(),
                p.display()
            ));
        }
        *slot = Some((p.clone(), r.clone()));
    }
    let missing: Vec<String> = (1..=count)
        .filter(|&i| slots[(i - 1) as usize].is_none())
        .map(|i| Shard { index: i, count }.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "merge: shard(s) {} missing: the space is not covered",
            missing.join(", ")
        ));
    }
    Ok(slots.into_iter().flatten().collect())
}

/// The shard's recorded share is exactly the share of the rebuilt space its index owns.
fn covers_its_share(
    path: &Path,
    r: &RunResult,
    ids: &[u64],
    space_hash: &str,
) -> Result<(), String> {
    if r.space_workloads != ids.len() as u64 || r.space_ids != space_hash {
        return Err(format!(
            "merge: {} was run on another space ({} workloads, ids {}) than its options build \
             here ({} workloads, ids {space_hash}): another build's workloads?",
            path.display(),
            r.space_workloads,
            r.space_ids,
            ids.len()
        ));
    }
    let share: Vec<u64> = ids.iter().copied().filter(|&id| r.shard.owns(id)).collect();
    let hash = format!("{:016x}", id_set_hash(share.iter().copied()));
    if r.shard_workloads != share.len() as u64 || r.shard_ids != hash {
        return Err(format!(
            "merge: {} (shard {}) holds {} workloads with ids {}, but shard {} of this space is \
             {} workloads with ids {hash}",
            path.display(),
            r.shard,
            r.shard_workloads,
            r.shard_ids,
            r.shard,
            share.len()
        ));
    }
    Ok(())
}
