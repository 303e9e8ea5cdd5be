//! `cargo xtask crash-test --zoo`: every seed quirk switched on in turn; each must be caught.

use std::time::{Duration, Instant};

use crashsim::explore::{
    explore_workload, generate, quirk_names, scenario_workloads, shrink, ExploreOpts, GenParams,
    Kind, Violation, Workload,
};

/// How one quirk fared.
pub struct ZooRow {
    pub quirk: &'static str,
    pub caught: Option<Caught>,
    /// A crash state the tester could not check: the hunt stopped there, nothing was caught.
    pub harness_error: Option<Violation>,
    pub states: u64,
    pub workloads: u64,
    /// Passes of the quirk's own code sites with it on (its coverage probe): a quirk caught
    /// while its sites never ran was caught by something else, which the zoo reports.
    pub site_passes: u64,
}

pub struct Caught {
    pub after: Duration,
    pub shrunk: Violation,
}

/// The workloads tried for a quirk, in order: its own scenario, the other scenarios, then
/// seeded workloads.
fn workloads_for(quirk: &str) -> impl Iterator<Item = Workload> + '_ {
    let mut scenarios = scenario_workloads();
    scenarios.sort_by_key(|(name, _)| *name != quirk);
    let plog_quirk = ["h4", "h7", "h8", "h9"].contains(&quirk);
    let gp = GenParams {
        order: None,
        unit_sectors: None,
        faults: Default::default(),
        quirks: vec![quirk.to_string()],
        cache_type: plog_quirk as u8,
        min_ops: 6,
        max_ops: 40,
        swarm: false,
    };
    scenarios
        .into_iter()
        .map(move |(_, mut w)| {
            w.config.quirks = vec![quirk.to_string()];
            w
        })
        .chain((1..).map(move |seed| generate(seed, &gp)))
}

/// Hunts one quirk for at most `budget`, single-threaded so the state count is reproducible.
pub fn hunt(quirk: &'static str, budget: Duration) -> ZooRow {
    let start = Instant::now();
    let opts = ExploreOpts {
        stop_at_first: true,
        deadline: Some(start + budget),
        ..ExploreOpts::default()
    };
    let mut row = ZooRow {
        quirk,
        caught: None,
        harness_error: None,
        states: 0,
        workloads: 0,
        site_passes: 0,
    };
    let index = engine::quirks::Quirk::from_name(quirk).expect("a known quirk") as usize;
    for w in workloads_for(quirk) {
        if start.elapsed() >= budget {
            break;
        }
        let r = explore_workload(&w, &opts);
        row.states += r.states;
        row.workloads += 1;
        row.site_passes += r.points.probes.quirk_site(index);
        if let Some(v) = r.violations.into_iter().next() {
            if v.finding.kind == Kind::Harness {
                row.harness_error = Some(v);
                break;
            }
            let after = start.elapsed();
            let shrink_opts = ExploreOpts {
                deadline: Some(Instant::now() + Duration::from_secs(20)),
                ..ExploreOpts::default()
            };
            let shrunk = shrink(&v, &shrink_opts, 200);
            row.caught = Some(Caught { after, shrunk });
            break;
        }
    }
    row
}

pub fn run(budget: Duration, threads: usize) -> bool {
    let names = quirk_names();
    let mut rows: Vec<Option<ZooRow>> = (0..names.len()).map(|_| None).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (names, next) = (&names, &next);
            s.spawn(move || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&q) = names.get(i) else { break };
                let row = hunt(q, budget);
                eprintln!(
                    "zoo: {q}: {}",
                    if row.caught.is_some() {
                        "caught"
                    } else {
                        "NOT caught"
                    }
                );
                if tx.send((i, row)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for (i, row) in rx {
            rows[i] = Some(row);
        }
    });
    println!("| quirk | caught | time to first violation | states until then | site passes | shrunk workload (ops) | oracle |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut all = true;
    let mut details = Vec::new();
    for row in rows.into_iter().flatten() {
        match &row.caught {
            Some(c) if row.site_passes == 0 => {
                all = false;
                println!(
                    "| {} | NO: caught, but its code never ran | - | {} | 0 | - | - |",
                    row.quirk, row.states
                );
                details.push(format!(
                    "{}: the violation found is not the quirk's: {}\n  replay: cargo xtask crash-test --replay '{}'",
                    row.quirk,
                    c.shrunk.finding.detail,
                    c.shrunk.case()
                ));
            }
            Some(c) => {
                println!(
                    "| {} | yes | {:.2}s | {} | {} | {} | {} |",
                    row.quirk,
                    c.after.as_secs_f64(),
                    row.states,
                    row.site_passes,
                    c.shrunk.workload.ops.len(),
                    c.shrunk.finding.kind.name()
                );
                details.push(format!(
                    "{}: {}\n  replay: cargo xtask crash-test --replay '{}'",
                    row.quirk,
                    c.shrunk.finding.detail,
                    c.shrunk.case()
                ));
            }
            None => {
                all = false;
                println!(
                    "| {} | NO | - | {} | {} | - | - |",
                    row.quirk, row.states, row.site_passes
                );
                if let Some(h) = &row.harness_error {
                    details.push(format!(
                        "{}: harness error: {}\n  replay: cargo xtask crash-test --replay '{}'",
                        row.quirk,
                        h.finding.detail,
                        h.case()
                    ));
                }
            }
        }
    }
    println!();
    for d in details {
        println!("{d}");
    }
    all
}
