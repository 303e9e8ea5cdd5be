//! Operations in flight: the media model when completions come in any order, and the
//! simulator's scheduled driver of the engine.

use std::rc::Rc;

use crashsim::explore::{explore_workload, record, scenario_workloads, ExploreOpts, Workload};
use crashsim::{Choice, CrashPoint, DeviceConfig, Submitted, World};
use engine::DeviceRole;

const S: usize = 512;

fn one_device() -> World {
    let mut w = World::new();
    w.add_device(DeviceRole::Cache, DeviceConfig::zeroed(16))
        .unwrap();
    w
}

#[test]
fn a_flush_covers_only_the_writes_completed_before_it_was_submitted() {
    let mut w = one_device();
    let data: Rc<[u8]> = Rc::from(vec![7u8; S]);
    let write = w.submit(
        DeviceRole::Cache,
        Submitted::Write {
            sector: 3,
            data: data.clone(),
            fua: false,
        },
    );
    let flush = w.submit(DeviceRole::Cache, Submitted::Flush);
    // The write completes after the flush was submitted: the flush does not cover it.
    w.complete_write(DeviceRole::Cache, 3, data.clone(), false, Some(write))
        .unwrap();
    w.complete_flush(DeviceRole::Cache, flush).unwrap();
    assert_eq!(
        w.durable_image(DeviceRole::Cache).unwrap().sector(3),
        &[0u8; S]
    );
    assert_eq!(w.pending_writes(DeviceRole::Cache).unwrap().len(), 1);
    let state = w.crash_state(CrashPoint::end(&w)).unwrap();
    assert_eq!(state.pending_count(), 1, "the write may still be lost");
    // A flush submitted after the completion covers it.
    let again = w.submit(DeviceRole::Cache, Submitted::Flush);
    w.complete_flush(DeviceRole::Cache, again).unwrap();
    assert_eq!(
        w.durable_image(DeviceRole::Cache).unwrap().sector(3),
        &data[..]
    );
}

#[test]
fn a_write_in_flight_may_persist_or_not_at_a_crash() {
    let mut w = one_device();
    let data: Rc<[u8]> = Rc::from(vec![9u8; 2 * S]);
    w.submit(
        DeviceRole::Cache,
        Submitted::Write {
            sector: 4,
            data: data.clone(),
            fua: true,
        },
    );
    // Power cut before it completes: even a FUA write in flight promises nothing.
    let state = w.crash_state(CrashPoint::end(&w)).unwrap();
    assert_eq!(state.pending_count(), 1);
    let lost = state.image(&Choice::none()).unwrap();
    assert_eq!(lost.get(DeviceRole::Cache).unwrap().sector(4), &[0u8; S]);
    let kept = state.image(&Choice::whole([0])).unwrap();
    assert_eq!(kept.get(DeviceRole::Cache).unwrap().sector(5), &[9u8; S]);
    // Reads see nothing of it before it completes.
    assert_eq!(
        w.current_image(DeviceRole::Cache).unwrap().sector(4),
        &[0u8; S]
    );
}

fn seeded(text: &str) -> Workload {
    text.parse().unwrap()
}

#[test]
fn a_seeded_completion_order_replays_exactly() {
    let text = "o=4,n=3,b=6,p=2,k=2,u=1,s=9,c=77;W0+8.W8+8.b.W16+8.W0+3.F.B.R.W8+8.U16+8";
    let a = record(&seeded(text).config, &seeded(text).ops).unwrap();
    let b = record(&seeded(text).config, &seeded(text).ops).unwrap();
    let (la, lb) = (a.world.borrow().format_log(), b.world.borrow().format_log());
    assert_eq!(la, lb, "the same seed gives the same log and schedule");
    let other = text.replace("c=77", "c=78");
    let c = record(&seeded(&other).config, &seeded(&other).ops).unwrap();
    let lc = c.world.borrow().format_log();
    assert!(lc.contains("submit"), "operations are in flight");
    assert_ne!(la, lc, "another seed completes in another order");
}

/// The quirks only completion order can reveal: each is caught by its scenario, which is clean
/// without it.
#[test]
fn completion_order_quirks_are_caught_by_their_scenarios() {
    let scenarios = scenario_workloads();
    for quirk in [
        "wc-flush-order",
        "flush-ack-inflight",
        "wb-flush-early",
        "record-before-log",
    ] {
        let (_, w) = scenarios.iter().find(|(n, _)| *n == quirk).unwrap();
        let opts = ExploreOpts::default();
        let clean = explore_workload(w, &opts);
        assert!(
            clean.violations.is_empty(),
            "{quirk} scenario without the quirk"
        );
        let mut bad = w.clone();
        bad.config.quirks = vec![quirk.to_string()];
        let r = explore_workload(&bad, &opts);
        assert!(!r.violations.is_empty(), "{quirk} is caught");
    }
}

#[test]
fn next_order_walks_the_choices_depth_first() {
    use crashsim::explore::next_order;
    // The last choice with an untried option moves on; the ones after it start over.
    assert_eq!(next_order(&[(0, 2), (0, 3)]), Some(vec![0, 1]));
    assert_eq!(next_order(&[(0, 2), (2, 3)]), Some(vec![1]));
    assert_eq!(next_order(&[(1, 2), (2, 3)]), None);
    assert_eq!(next_order(&[]), None, "nothing ever raced: one order");
}

/// Every completion order of a small workload, each exactly once: the enumeration ends, no
/// order repeats, and the distinct crash states are at least the in-order run's.
#[test]
fn bounded_orders_are_each_explored_once() {
    use crashsim::explore::{explore_orders, next_order, Completion};
    let w = seeded("o=4,n=2,b=2,p=1,k=2,u=1,s=1;W0+8.F.W8+8");
    let mut seen = std::collections::HashSet::new();
    let mut script = Some(Vec::new());
    while let Some(s) = script {
        let mut one = w.clone();
        one.config.completion = Completion::Script(s);
        let rec = record(&one.config, &one.ops).unwrap();
        assert!(rec.failure.is_none(), "{:?}", rec.failure);
        assert!(seen.insert(rec.schedule.clone()), "an order came twice");
        assert!(seen.len() < 10_000, "the enumeration ends");
        script = next_order(&rec.schedule);
    }
    assert!(seen.len() > 1, "this workload races");
    let opts = ExploreOpts::default();
    let in_order = explore_workload(&w, &opts);
    let (all, cov) = explore_orders(&w, &opts, u64::MAX);
    assert!(cov.complete);
    assert_eq!(cov.explored, seen.len() as u64);
    assert!(all.violations.is_empty());
    assert!(
        all.states >= in_order.states,
        "{} < {}",
        all.states,
        in_order.states
    );
    let (capped, cov) = explore_orders(&w, &opts, 2);
    assert_eq!((cov.explored, cov.complete), (2, false));
    assert!(capped.states <= all.states);
}
