//! The read-back shortcut (issue 19, crashsim/src/explore/readback.rs): a recovered device is
//! read only where it can differ from the initial content. It must change no verdict and no
//! state, and a wrong byte planted where nothing was written must still be caught.

use crashsim::explore::{
    check_images_with, explore_workload, generate, record, recovery_config, ExploreOpts, FaultSet,
    GenParams, Kind, OracleSel, Plan, Workload, WorkloadResult,
};
use crashsim::{Choice, CrashPoint};
use engine::DeviceRole;
use models::{BlockOracle, PrefixOracle, PrefixUnit};

fn params(order: Option<u8>, quirks: &[&str]) -> GenParams {
    GenParams {
        order,
        unit_sectors: None,
        faults: FaultSet::default(),
        quirks: quirks.iter().map(|q| q.to_string()).collect(),
        cache_type: 0,
        min_ops: 6,
        max_ops: 20,
        swarm: true,
    }
}

/// What must not depend on how the device is read back.
fn verdict(r: &WorkloadResult) -> (u64, u64, u64, Vec<(Kind, String)>) {
    let v = r
        .violations
        .iter()
        .map(|v| (v.finding.kind, v.finding.detail.clone()))
        .collect();
    (r.states, r.violation_count, r.fingerprints, v)
}

#[test]
fn the_shortcut_changes_no_verdict_and_no_state() {
    let on = ExploreOpts::default();
    let off = ExploreOpts {
        shortcuts: false,
        ..ExploreOpts::default()
    };
    let mut workloads: Vec<Workload> = (0..4).map(|s| generate(s, &params(None, &[]))).collect();
    workloads.push(generate(1, &params(Some(10), &[])));
    // Violations too: the same ones, in the same order, either way (the hazard scenarios with
    // their quirks on).
    for (name, _, text) in crashsim::explore::SCENARIOS {
        if ["h5", "h13", "bypass-stale-writeback"].contains(&name) {
            let (config, ops) = text.split_once(';').unwrap();
            workloads.push(format!("{config},q={name};{ops}").parse().unwrap());
        }
    }
    let mut violations = 0;
    for w in &workloads {
        let (a, b) = (explore_workload(w, &on), explore_workload(w, &off));
        assert!(a.states > 0, "{w}");
        assert_eq!(verdict(&a), verdict(&b), "{w}");
        violations += a.violation_count;
    }
    assert!(
        violations > 0,
        "the quirk workloads found something to compare"
    );
}

#[test]
fn a_wrong_byte_where_nothing_was_written_is_caught_and_only_what_can_differ_is_read() {
    let w: Workload = "o=4,n=3,b=8,p=1,k=1,u=1,s=7;W0+8.F".parse().unwrap();
    let rec = record(&w.config, &w.ops).unwrap();
    let world = rec.world.borrow();
    let state = world
        .crash_state(CrashPoint::before(world.log().len() as u64))
        .unwrap();
    let base = world.config(DeviceRole::Backing).unwrap().image.clone();
    let config = recovery_config(&w.config).unwrap();
    let oracles = (
        BlockOracle::new(&rec.history),
        PrefixOracle::new(&rec.history, PrefixUnit::Blocks),
    );
    let plan = Plan {
        base: Some(&base),
        cross_check: true,
    };
    let check = |images| {
        check_images_with(
            images,
            config,
            (&oracles.0, &oracles.1),
            OracleSel::Both,
            plan,
        )
    };
    let (findings, recovered) = check(state.image(&Choice::none()).unwrap());
    assert!(findings.is_empty(), "{findings:?}");
    let read = recovered.unwrap().read.expect("the shortcut was used");
    assert!(read[0], "block 0 is cached (its write is in the log)");
    assert_eq!(read.iter().filter(|&&r| r).count(), 1, "{read:?}");

    // A misdirected write: one byte of block 5 on the backing device, where nothing was
    // written. Its chunk is no longer the initial one, so the shortcut reads it.
    let mut images = state.image(&Choice::none()).unwrap();
    let mut backing = images.take(DeviceRole::Backing).unwrap();
    let mut byte = [0u8];
    backing.read(5 * 4096 + 100, &mut byte);
    backing.write(5 * 4096 + 100, &[byte[0] ^ 0x5a]);
    images.images.push((DeviceRole::Backing, backing));
    let (findings, recovered) = check(images);
    assert!(
        findings
            .iter()
            .any(|f| f.kind == Kind::BlockOracle && f.detail.contains("sector 40 ")),
        "{findings:?}"
    );
    let read = recovered.unwrap().read.unwrap();
    assert!(read[0] && read[5] && !read[3], "{read:?}");
}
