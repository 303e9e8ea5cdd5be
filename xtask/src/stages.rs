//! `cargo xtask test` as named stages. Every stage runs, even after another failed (a failing
//! loom model says nothing about the crash-test), each is timed, and the run ends with a table
//! and one verdict line that names every stage: `xtask test: 8 passed, 0 failed (...)`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

/// What a stage reports: a short line on success (what it checked), the reason on failure.
pub type StageResult = Result<String, String>;

/// One named part of the test run.
pub struct Stage {
    pub name: &'static str,
    run: Box<dyn FnOnce() -> StageResult>,
}

impl Stage {
    pub fn new(name: &'static str, run: impl FnOnce() -> StageResult + 'static) -> Self {
        Stage {
            name,
            run: Box::new(run),
        }
    }
}

/// How one stage went.
pub struct Ran {
    pub name: &'static str,
    pub result: StageResult,
    pub seconds: f64,
}

/// Runs every stage in order, prints a table of how each went, and last the verdict line.
/// Returns whether every stage passed.
pub fn run_all(stages: Vec<Stage>) -> bool {
    let total = stages.len();
    let mut ran = Vec::with_capacity(total);
    for (i, stage) in stages.into_iter().enumerate() {
        eprintln!("xtask test: stage {}/{total}: {}", i + 1, stage.name);
        let t = Instant::now();
        // A stage that panics is a failed stage; the others still run.
        let result = catch_unwind(AssertUnwindSafe(stage.run)).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            Err(format!("panicked: {msg}"))
        });
        let seconds = t.elapsed().as_secs_f64();
        match &result {
            Ok(what) => eprintln!(
                "xtask test: {} passed in {seconds:.0} s: {what}",
                stage.name
            ),
            Err(why) => eprintln!("xtask test: {} FAILED in {seconds:.0} s: {why}", stage.name),
        }
        ran.push(Ran {
            name: stage.name,
            result,
            seconds,
        });
    }
    println!();
    print!("{}", table(&ran));
    println!("{}", verdict(&ran));
    ran.iter().all(|r| r.result.is_ok())
}

/// One line per stage: result, time, what it checked or why it failed.
pub fn table(ran: &[Ran]) -> String {
    let width = ran.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for r in ran {
        let (word, what) = match &r.result {
            Ok(what) => ("passed", what),
            Err(why) => ("FAILED", why),
        };
        out.push_str(&format!(
            "{:<width$}  {word}  {:>5.0} s  {what}\n",
            r.name, r.seconds
        ));
    }
    out
}

/// The last line of `cargo xtask test`.
pub fn verdict(ran: &[Ran]) -> String {
    let names = |ok: bool| -> Vec<&str> {
        ran.iter()
            .filter(|r| r.result.is_ok() == ok)
            .map(|r| r.name)
            .collect()
    };
    let (passed, failed) = (names(true), names(false));
    let minutes = ran.iter().map(|r| r.seconds).sum::<f64>() / 60.0;
    if failed.is_empty() {
        format!(
            "xtask test: {} passed, 0 failed ({}) in {minutes:.0} min",
            passed.len(),
            passed.join(", ")
        )
    } else {
        format!(
            "xtask test: {} passed, {} failed (FAILED: {}; passed: {}) in {minutes:.0} min",
            passed.len(),
            failed.len(),
            failed.join(", "),
            if passed.is_empty() {
                "none".to_string()
            } else {
                passed.join(", ")
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_names_every_stage_and_every_failure() {
        let ran = |results: Vec<(&'static str, StageResult)>| -> Vec<Ran> {
            results
                .into_iter()
                .map(|(name, result)| Ran {
                    name,
                    result,
                    seconds: 90.0,
                })
                .collect()
        };
        let ok = ran(vec![("a", Ok("x".into())), ("b c", Ok("y".into()))]);
        assert_eq!(
            verdict(&ok),
            "xtask test: 2 passed, 0 failed (a, b c) in 3 min"
        );
        let bad = ran(vec![
            ("a", Ok("x".into())),
            ("b", Err("boom".into())),
            ("c", Err("bang".into())),
        ]);
        assert_eq!(
            verdict(&bad),
            "xtask test: 1 passed, 2 failed (FAILED: b, c; passed: a) in 4 min"
        );
        let t = table(&bad);
        assert!(t.contains("b  FAILED     90 s  boom"), "{t}");
    }

    #[test]
    fn every_stage_runs_after_a_failure_or_a_panic() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let count = Arc::new(AtomicUsize::new(0));
        let c = |n: &Arc<AtomicUsize>| {
            let n = n.clone();
            move || {
                n.fetch_add(1, Ordering::SeqCst);
                Ok("ran".to_string())
            }
        };
        let passed = run_all(vec![
            Stage::new("first", c(&count)),
            Stage::new("fails", || Err("no".into())),
            Stage::new("panics", || panic!("a stage panicked")),
            Stage::new("last", c(&count)),
        ]);
        assert!(!passed);
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }
}
