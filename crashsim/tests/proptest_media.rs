//! Random device workloads: the crash state rebuilt from the log agrees with the live devices,
//! and every crash image holds, per sector, the durable content or one pending version.

use crashsim::{AtomicUnit, Choice, CrashPoint, DeviceConfig, SimDevice, World};
use engine::{BlockDevice, DeviceRole};
use proptest::prelude::*;

const S: usize = 512;
const SECTORS: u64 = 24;

#[derive(Clone, Debug)]
enum Op {
    Write {
        sector: u64,
        sectors: u64,
        fua: bool,
    },
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..SECTORS, 1..12u64, prop::bool::weighted(0.2)).prop_map(|(sector, sectors, fua)| {
            Op::Write { sector, sectors: sectors.min(SECTORS - sector), fua }
        }),
        1 => Just(Op::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn replayed_state_matches_the_live_devices(
        ops in prop::collection::vec(op(), 0..30),
        block_unit in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let unit = if block_unit { AtomicUnit::Block } else { AtomicUnit::Sector };
        let mut w = World::new();
        w.add_device(DeviceRole::Cache, DeviceConfig::zeroed(SECTORS).with_atomic_unit(unit)).unwrap();
        let w = w.shared();
        let mut dev = SimDevice::new(&w, DeviceRole::Cache).unwrap();
        // What reads and the durable image showed after each operation.
        let mut seen = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Write { sector, sectors, fua } => {
                    let data = vec![i as u8 + 1; *sectors as usize * S];
                    dev.write(*sector, &data, *fua).unwrap();
                }
                Op::Flush => dev.flush().unwrap(),
            }
            let w = w.borrow();
            seen.push((
                w.current_image(DeviceRole::Cache).unwrap().to_vec(),
                w.durable_image(DeviceRole::Cache).unwrap().to_vec(),
            ));
        }
        let w = w.borrow();
        let mut replayer = w.replayer();
        for (seq, (current, durable)) in seen.iter().enumerate() {
            let state = replayer.advance_to(CrashPoint::after(seq as u64)).unwrap();
            let nothing = state.image(&Choice::none()).unwrap();
            prop_assert_eq!(nothing.get(DeviceRole::Cache).unwrap(), &durable[..]);
            let everything = state.image(&Choice::whole(0..state.pending_count())).unwrap();
            prop_assert_eq!(everything.get(DeviceRole::Cache).unwrap(), &current[..]);
            for choice in state.random_choices(seed ^ seq as u64, 8) {
                let img = state.image(&choice).unwrap();
                let img = img.get(DeviceRole::Cache).unwrap().to_vec();
                for s in 0..SECTORS {
                    let r = s as usize * S..(s as usize + 1) * S;
                    let ok = img[r.clone()] == durable[r.clone()]
                        || state.pending.iter().any(|p| {
                            p.overlaps(s, 1)
                                && p.live[(s - p.sector) as usize]
                                && p.data[(s - p.sector) as usize * S..][..S] == img[r.clone()]
                        });
                    prop_assert!(ok, "sector {} of {} is neither durable nor pending", s, choice);
                }
                // 4 KiB units never tear inside a block.
                if block_unit {
                    for p in state.pending.iter().filter(|p| {
                        choice.persisted.iter().any(|c| state.pending[c.pending].seq == p.seq)
                    }) {
                        for (first, count) in p.units() {
                            let new: Vec<bool> = (first..first + count)
                                .filter(|&s| p.live[(s - p.sector) as usize])
                                .map(|s| {
                                    let r = s as usize * S..(s as usize + 1) * S;
                                    img[r.clone()] == p.data[(s - p.sector) as usize * S..][..S]
                                })
                                .collect();
                            // With several versions in play a unit may show a later write, so
                            // only a write that is the last one applied is checked strictly.
                            let last_applied = choice.persisted.last().map(|c| state.pending[c.pending].seq);
                            if last_applied == Some(p.seq) {
                                prop_assert!(new.iter().all(|&b| b == new[0]) || new.is_empty());
                            }
                        }
                    }
                }
            }
        }
    }
}
