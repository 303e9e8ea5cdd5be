//! Tests of `cargo xtask crash-test` as a user runs it: where a run stops, and what it says.

use super::*;
use crashsim::explore::{coverage, parse_case, replay_case};

fn run_with(args: &[&str]) -> Outcome {
    run_outcome(parse_args(args).unwrap()).unwrap()
}

/// A lying flush breaks nearly every crash state; the run ends at the first violation,
/// shrunk, instead of counting millions, and says that it stopped early.
#[test]
fn a_run_that_finds_violations_stops_at_the_first_and_says_so() {
    let o = run_with(&["--fault", "lying-flush", "--threads", "2"]);
    assert!(!o.passed);
    assert_eq!(o.shown.len(), 1, "{o:?}");
    assert!(o.shown[0].oracle != "harness", "{o:?}");
    // Both threads may end a workload with a violation or two before they see the stop.
    assert!((1..=8).contains(&o.violations), "{o:?}");
    assert!(o.workloads < o.total, "{o:?}");
    let why = o.stopped_early.expect("the run says it stopped early");
    assert!(
        why.contains("--keep-going") && why.contains("--max-violations"),
        "{why}"
    );
}

#[test]
fn max_violations_sets_how_many_before_the_run_stops() {
    let o = run_with(&[
        "--fault",
        "lying-flush",
        "--threads",
        "1",
        "--max-violations",
        "3",
        "--show",
        "1",
    ]);
    assert!((3..=8).contains(&o.violations), "{o:?}");
    assert!(o.stopped_early.is_some() && o.workloads < o.total, "{o:?}");
    // --keep-going and a limit contradict each other.
    let e = parse_args(&["--keep-going", "--max-violations", "2"]);
    assert!(e.is_err());
}

/// A run that finds nothing explores everything and does not claim to have stopped.
#[test]
fn a_clean_run_is_not_stopped_early() {
    let o = run_with(&["--scenario", "h1", "--threads", "1"]);
    assert!(o.passed && o.violations == 0, "{o:?}");
    assert_eq!((o.workloads, o.total), (1, 1));
    assert!(o.stopped_early.is_none(), "{o:?}");
}

/// A shrunk `--quirk h5` case whose violating sector (16) is rewritten by the continuation:
/// the report prints the continuation's operations, and they are what the replay runs.
#[test]
fn a_violation_through_a_continuation_prints_the_continuations_operations() {
    let case = "o=4,n=2,b=4,p=1,k=1,u=1,s=101,q=h5;W16+8.W24+8.F#p45=0:0000000000000100/c41=0";
    let (workload, path) = parse_case(case).unwrap();
    let (findings, _) = replay_case(case, OracleSel::Both).unwrap();
    assert!(!findings.is_empty(), "the case still fails");
    let v = Violation {
        workload,
        path,
        finding: findings[0].clone(),
    };
    let text = continuation_text(&v).expect("the path has a continuation");
    assert_eq!(
        text,
        "continuation: 7 operations run on the devices recovered from crash p45, then crash \
         c41: W24+8.W16+8.F.W16+8.B.W1+3.F"
    );
    // Without a continuation on the path there is nothing more to print.
    let (workload, path) = parse_case("o=4,n=2,b=4,p=1,k=1,u=1,s=101;W24+8.F#p22=-").unwrap();
    let plain = Violation {
        workload,
        path,
        finding: findings[0].clone(),
    };
    assert!(continuation_text(&plain).is_none());
}

/// A bounded run says what it covered: exhaustive for its space when every completion order
/// and every subset of the pending writes at every crash point were tried.
#[test]
fn a_bounded_run_states_its_bound() {
    let o = run_with(&["--bounded", "2", "--threads", "2"]);
    assert!(o.passed, "{o:?}");
    assert_eq!(o.bounded_exhaustive, Some(true), "{o:?}");
    assert_eq!(o.tally.points.sampled, 0, "{o:?}");
    assert!(o.tally.points.all_subsets > 0, "{o:?}");
    // Capping the completion orders makes it not exhaustive, and it says so.
    let o = run_with(&["--bounded", "2", "--orders", "1", "--threads", "2"]);
    assert_eq!(o.bounded_exhaustive, Some(false), "{o:?}");
}

/// The default run reaches every required probe; leaving discards and write-zeroes out of
/// every workload makes it fail, naming the probe of the path it no longer reaches.
#[test]
fn a_default_run_that_stops_reaching_a_path_fails_naming_its_probe() {
    let o = run_with(&["--without", "zeroes"]);
    assert_eq!(o.violations, 0, "{o:?}");
    assert!(!o.passed, "a blind run must fail");
    let unreached = coverage::unreached_required(&o.tally.points.probes, &o.tally.points.sim);
    assert_eq!(unreached, ["write-zeroes"], "{o:?}");
}

/// A file for one test's result, fresh.
fn result_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wbcache-crash-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join(name);
    let _ = std::fs::remove_file(&f);
    f
}

fn words<'a>(base: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(more).copied().collect()
}

/// One run of the space, and four shards of it merged, agree on every count, every probe and
/// the fingerprint of every crash state; merge refuses shards that do not add up.
#[test]
fn four_shards_merge_to_exactly_what_one_run_finds() {
    const SPACE: [&str; 4] = ["--bounded", "2", "--threads", "2"];
    let whole_file = result_file("whole.json");
    let whole_path = whole_file.to_str().unwrap();
    let whole = run_with(&words(&SPACE, &["--result", whole_path]));
    assert!(whole.passed && whole.workloads > 100, "{whole:?}");
    let files: Vec<std::path::PathBuf> = (1..=4)
        .map(|m| result_file(&format!("shard-{m}.json")))
        .collect();
    let mut shard_workloads = Vec::new();
    for (m, f) in (1..=4).zip(&files) {
        let shard = format!("{m}/4");
        let o = run_with(&words(
            &SPACE,
            &["--shard", &shard, "--result", f.to_str().unwrap()],
        ));
        assert!(o.passed, "{o:?}");
        shard_workloads.push(o.workloads);
    }
    // A stable hash spreads the workloads: no shard is empty or holds them all.
    assert!(
        shard_workloads
            .iter()
            .all(|&n| n > 0 && n < whole.workloads),
        "{shard_workloads:?}"
    );
    let paths: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();
    let merged = run_with(&words(&["merge"], &paths));
    assert!(merged.passed, "{merged:?}");
    assert_eq!(merged.tally, whole.tally);
    assert_eq!(merged.bounded_exhaustive, Some(true));
    // The whole run's own result merges to itself.
    assert_eq!(run_with(&["merge", whole_path]).tally, whole.tally);

    let merge = |paths: &[&str]| run_outcome(parse_args(&words(&["merge"], paths)).unwrap());
    let e = merge(&paths[..3]).unwrap_err();
    assert!(e.contains("shard(s) 4/4 missing"), "{e}");
    let e = merge(&[paths[0], paths[1], paths[2], paths[2]]).unwrap_err();
    assert!(e.contains("given twice"), "{e}");
    let e = merge(&[paths[0], whole_path]).unwrap_err();
    assert!(e.contains("is of 4 shards") || e.contains("but"), "{e}");
    // A shard of other options is another space.
    let other = result_file("other.json");
    run_with(&[
        "--bounded",
        "2",
        "--orders",
        "64",
        "--shard",
        "4/4",
        "--result",
        other.to_str().unwrap(),
    ]);
    let e = merge(&[paths[0], paths[1], paths[2], other.to_str().unwrap()]).unwrap_err();
    assert!(e.contains("different runs"), "{e}");
    // A shard whose file lost part of its share is caught against the rebuilt space.
    let mut r = result::RunResult::load(&files[3]).unwrap();
    r.shard_workloads -= 1;
    r.save(&files[3]).unwrap();
    let e = merge(&paths).unwrap_err();
    assert!(e.contains("shard 4/4 of this space is"), "{e}");
}

/// A run interrupted part-way saves what it finished; the same command continues it, and the
/// sum is what one uninterrupted run finds.
#[test]
fn an_interrupted_run_resumes_where_it_stopped() {
    // Bounded, to keep the test short; the CI stage "crash-test default" resumes a shard of
    // the seeded default run the same way.
    const SPACE: [&str; 4] = ["--bounded", "2", "--threads", "2"];
    let whole = run_with(&SPACE);
    let f = result_file("resume.json");
    let path = f.to_str().unwrap();
    let first = run_with(&words(
        &SPACE,
        &["--resume", path, "--interrupt-after", "40"],
    ));
    assert!(
        !first.passed,
        "an interrupted run has not passed: {first:?}"
    );
    let why = first.stopped_early.clone().unwrap();
    assert!(
        why.contains("interrupted") && why.contains("--resume"),
        "{why}"
    );
    assert!(
        (40..whole.workloads).contains(&first.workloads),
        "{first:?}"
    );
    let saved = result::RunResult::load(&f).unwrap();
    assert!(!saved.complete && saved.runs == 1, "{saved:?}");
    let second = run_with(&words(&SPACE, &["--resume", path]));
    assert!(second.passed, "{second:?}");
    assert_eq!(second.tally, whole.tally);
    let saved = result::RunResult::load(&f).unwrap();
    assert!(saved.complete && saved.runs == 2, "{saved:?}");
    // Resuming a finished result explores nothing and says the same.
    assert_eq!(
        run_with(&words(&SPACE, &["--resume", path])).tally,
        whole.tally
    );
    let saved = result::RunResult::load(&f).unwrap();
    // A result of other options is refused, and left as it was.
    let e =
        run_outcome(parse_args(&["--bounded", "2", "--orders", "64", "--resume", path]).unwrap())
            .unwrap_err();
    assert!(e.contains("other options"), "{e}");
    assert_eq!(result::RunResult::load(&f).unwrap(), saved);
}
