//! End to end with the oracles: a trivial "engine" that passes client requests straight to one
//! simulated disk. Every crash image of an honest disk passes the block oracle; a disk lying
//! about FLUSH is caught; and the plain disk's reordering is what the prefix oracle exists for.

use crashsim::{
    ClientOp, CrashPoint, DeviceConfig, Faults, Others, PointSelection, SharedWorld, SimDevice,
    World,
};
use engine::{BlockDevice, DeviceRole};
use models::{check_block, BlockOracle, History, PrefixOracle, PrefixUnit};

const S: usize = 512;
const SECTORS: u64 = 16;

/// A client request: write (sector, sectors, fua, fill byte) or FLUSH.
enum Req {
    Write(u64, u64, bool, u8),
    Flush,
}

/// Runs a fixed workload through the pass-through disk, recording it in `h` and the log.
fn run(faults: Faults) -> (SharedWorld, History) {
    let mut w = World::new();
    w.add_device(
        DeviceRole::Backing,
        DeviceConfig::zeroed(SECTORS).with_faults(faults),
    )
    .unwrap();
    let w = w.shared();
    let mut dev = SimDevice::new(&w, DeviceRole::Backing).unwrap();
    let mut h = History::zeroed(SECTORS);
    use Req::{Flush, Write};
    let workload = [
        Write(0, 3, false, 1),
        Write(2, 2, false, 2),
        Flush,
        Write(1, 1, false, 3),
        Write(8, 4, true, 4),
        Write(2, 1, false, 5),
        Flush,
        Write(0, 1, false, 6),
    ];
    for req in workload {
        match req {
            Write(sector, sectors, fua, tag) => {
                let data = vec![tag; sectors as usize * S];
                let op = h.begin_write(sector, &data, fua).unwrap();
                w.borrow_mut().client_begin(
                    op,
                    ClientOp::Write {
                        sector,
                        sectors,
                        fua,
                    },
                );
                dev.write(sector, &data, fua).unwrap();
                w.borrow_mut().client_end(op, true);
                h.complete(op).unwrap();
            }
            Flush => {
                let op = h.begin_flush().unwrap();
                w.borrow_mut().client_begin(op, ClientOp::Flush);
                dev.flush().unwrap();
                w.borrow_mut().client_end(op, true);
                h.complete(op).unwrap();
            }
        }
    }
    (w, h)
}

/// Checks every crash image at every fine crash point: (images checked, block violations,
/// prefix violations).
fn explore(w: &World, h: &History) -> (usize, usize, usize) {
    let (mut checked, mut block_bad, mut prefix_bad) = (0, 0, 0);
    let mut replayer = w.replayer();
    for point in w.crash_points(PointSelection::fine()) {
        let state = replayer.advance_to(point).unwrap();
        let cut = h.as_of(w.client_cut(point)).unwrap();
        let block = BlockOracle::new(&cut);
        let prefix = PrefixOracle::new(&cut, PrefixUnit::Blocks);
        let mut choices: Vec<_> = state.all_subsets(12).unwrap().collect();
        for i in 0..state.pending_count() {
            choices.extend(state.tears_of(i, Others::Lost).unwrap());
            choices.extend(state.tears_of(i, Others::Persisted).unwrap());
        }
        for c in choices {
            let images = state.image(&c).unwrap();
            let disk = images.get(DeviceRole::Backing).unwrap().to_vec();
            checked += 1;
            block_bad += usize::from(block.check(&disk).is_err());
            prefix_bad += usize::from(prefix.check(&disk).is_err());
        }
    }
    (checked, block_bad, prefix_bad)
}

#[test]
fn honest_disk_always_passes_the_block_oracle() {
    let (w, h) = run(Faults::default());
    let (checked, block_bad, prefix_bad) = explore(&w.borrow(), &h);
    assert!(checked > 50, "{checked}");
    assert_eq!(block_bad, 0);
    // A disk's volatile cache reorders writes: that is exactly what §4.4 forbids the engine.
    assert!(prefix_bad > 0);
}

#[test]
fn lying_flush_is_caught_by_the_block_oracle() {
    let (w, h) = run(Faults {
        lie_about_flush: true,
        ..Faults::default()
    });
    let w = w.borrow();
    let (_, block_bad, _) = explore(&w, &h);
    assert!(block_bad > 0);
    // Right after the first client FLUSH, losing everything is a violation.
    let point = CrashPoint::after(
        w.log()
            .iter()
            .find(|e| e.to_string().contains("op#2 done"))
            .unwrap()
            .seq,
    );
    let cut = h.as_of(w.client_cut(point)).unwrap();
    let lost = w
        .crash_state(point)
        .unwrap()
        .image(&crashsim::Choice::none())
        .unwrap();
    let v = check_block(&cut, &lost.get(DeviceRole::Backing).unwrap().to_vec()).unwrap_err();
    assert_eq!(v.sector(), Some(0));
}

#[test]
fn lying_fua_is_caught_by_the_block_oracle() {
    let (w, h) = run(Faults {
        lie_about_fua: true,
        ..Faults::default()
    });
    let (_, block_bad, _) = explore(&w.borrow(), &h);
    assert!(block_bad > 0);
}
