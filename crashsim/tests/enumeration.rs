//! Crash-choice enumeration, dedup, choice syntax, crash points and client cuts.

use crashsim::{
    Choice, ClientOp, CrashPoint, Dedup, DeviceConfig, PointSelection, SimDevice, World,
};
use engine::{BlockDevice, DeviceRole};
use models::{OpCut, OpId};

const S: usize = 512;

fn three_pending() -> World {
    let mut w = World::new();
    w.add_device(DeviceRole::Cache, DeviceConfig::zeroed(8))
        .unwrap();
    let w = w.shared();
    let mut dev = SimDevice::new(&w, DeviceRole::Cache).unwrap();
    dev.write(0, &[1; S], false).unwrap();
    dev.write(1, &[0; S], false).unwrap(); // same as the durable content
    dev.write(2, &[3; S], false).unwrap();
    drop(dev);
    std::rc::Rc::try_unwrap(w).unwrap().into_inner()
}

#[test]
fn exhaustive_and_bounded_subsets() {
    let w = three_pending();
    let state = w.crash_state(CrashPoint::end(&w)).unwrap();
    assert_eq!(state.all_subsets(10).unwrap().count(), 8);
    assert!(state.all_subsets(2).is_err());
    assert_eq!(state.subsets_up_to(1).count(), 4);
    assert_eq!(state.subsets_up_to(9).count(), 8);
}

#[test]
fn identical_images_are_deduplicated() {
    let w = three_pending();
    let state = w.crash_state(CrashPoint::end(&w)).unwrap();
    let mut dedup = Dedup::new();
    let fresh = state
        .all_subsets(10)
        .unwrap()
        .filter(|c| dedup.insert(&state.image(c).unwrap()))
        .count();
    // Write 1 rewrites what is there: only writes 0 and 2 make a difference.
    assert_eq!(fresh, 4);
    assert_eq!(dedup.len(), 4);
}

#[test]
fn random_choices_are_seeded() {
    let w = three_pending();
    let state = w.crash_state(CrashPoint::end(&w)).unwrap();
    let a: Vec<Choice> = state.random_choices(42, 50).collect();
    let b: Vec<Choice> = state.random_choices(42, 50).collect();
    let c: Vec<Choice> = state.random_choices(43, 50).collect();
    assert_eq!(a, b);
    assert_ne!(a, c);
    for choice in &a {
        state.image(choice).unwrap();
    }
}

#[test]
fn choice_syntax_round_trips() {
    for text in [
        "-",
        "3",
        "0,2:0110,1",
        "!cache@1234.5",
        "1:1,!plog@0.0,!backing@7.7",
    ] {
        let c: Choice = text.parse().unwrap();
        assert_eq!(c.to_string(), text);
    }
    for bad in ["x", "1:012", "!disk@1.1", "!cache@1", ""] {
        assert!(bad.parse::<Choice>().is_err(), "{bad}");
    }
}

#[test]
fn crash_points_and_client_cuts() {
    let mut w = World::new();
    w.add_device(DeviceRole::Backing, DeviceConfig::zeroed(8))
        .unwrap();
    let w = w.shared();
    let mut dev = SimDevice::new(&w, DeviceRole::Backing).unwrap();
    let begin = |w: &crashsim::SharedWorld, op, what| w.borrow_mut().client_begin(OpId(op), what);
    begin(
        &w,
        0,
        ClientOp::Write {
            sector: 0,
            sectors: 1,
            fua: false,
        },
    ); // #0
    dev.write(0, &[1; S], false).unwrap(); // #1
    w.borrow_mut().client_end(OpId(0), true); // #2
    begin(&w, 1, ClientOp::Flush); // #3
    dev.flush().unwrap(); // #4
    w.borrow_mut().client_end(OpId(1), true); // #5
    w.borrow_mut().mark("phase 2"); // #6
    dev.write(1, &[2; S], true).unwrap(); // #7
    let w = w.borrow();
    let points: Vec<u64> = w
        .crash_points(PointSelection::standard())
        .iter()
        .map(|p| p.before)
        .collect();
    assert_eq!(points, vec![4, 5, 6, 7, 8]);
    let fine: Vec<u64> = w
        .crash_points(PointSelection::fine())
        .iter()
        .map(|p| p.before)
        .collect();
    assert_eq!(fine, vec![2, 4, 5, 6, 7, 8]);
    assert_eq!(
        w.client_cut(CrashPoint::before(0)),
        OpCut {
            begun: 0,
            last_ended: true
        }
    );
    assert_eq!(
        w.client_cut(CrashPoint::before(2)),
        OpCut {
            begun: 1,
            last_ended: false
        }
    );
    assert_eq!(
        w.client_cut(CrashPoint::after(5)),
        OpCut {
            begun: 2,
            last_ended: true
        }
    );
    let log = w.format_log();
    assert!(log.contains("#0 client op#0 write 0+1\n"), "{log}");
    assert!(log.contains("#3 client op#1 flush\n"), "{log}");
    assert!(log.contains("#5 client op#1 done\n"), "{log}");
    assert!(log.contains("#6 mark \"phase 2\"\n"), "{log}");
}
