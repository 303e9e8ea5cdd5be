//! Tests of `cargo xtask crash-test` as a user runs it: where a run stops, and what it says.

use super::*;
use crashsim::explore::{parse_case, replay_case};

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
    assert!(o.shown[0].finding.kind != Kind::Harness, "{o:?}");
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
    assert_eq!(o.points.sampled, 0, "{o:?}");
    assert!(o.points.all_subsets > 0, "{o:?}");
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
    let unreached = coverage::unreached_required(&o.points.probes, &o.points.sim);
    assert_eq!(unreached, ["write-zeroes"], "{o:?}");
}
