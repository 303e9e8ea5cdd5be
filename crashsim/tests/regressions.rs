//! The bug base (crashsim/regressions/): every violation the tester found, kept as its replay
//! case. A case without a quirk is a fixed bug and must replay clean; a case with one is a
//! hazard the tester must keep seeing and must replay with a violation.

use crashsim::explore::{parse_case, replay_case, OracleSel};

fn cases() -> Vec<(String, usize, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/regressions");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("crashsim/regressions exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cases"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        for (i, line) in std::fs::read_to_string(&f).unwrap().lines().enumerate() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                out.push((name.clone(), i + 1, line.to_string()));
            }
        }
    }
    out
}

#[test]
fn every_kept_case_replays_as_it_should() {
    let all = cases();
    assert!(
        all.len() >= 14,
        "the bug base has its cases ({})",
        all.len()
    );
    let mut wrong = Vec::new();
    for (file, line, case) in &all {
        let (w, _) = parse_case(case).unwrap_or_else(|e| panic!("{file}:{line}: {e}"));
        let (findings, _) = replay_case(case, OracleSel::Both)
            .unwrap_or_else(|e| panic!("{file}:{line}: replay failed: {e}"));
        let hazard = !w.config.quirks.is_empty();
        if hazard == findings.is_empty() {
            wrong.push(format!(
                "{file}:{line}: {} ({findings:?})\n  cargo xtask crash-test --replay '{case}'",
                if hazard {
                    "a kept hazard replays clean: the tester no longer sees it"
                } else {
                    "a fixed bug is back"
                }
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
