//! Random histories: every true prefix state containing the durable writes is accepted by both
//! oracles, and garbage in any sector is rejected.

use models::{check_block, check_prefix, History, OpStatus, PrefixUnit};
use proptest::prelude::*;

const S: usize = 512;
const SECTORS: u64 = 48;

#[derive(Clone, Debug)]
enum Step {
    Write {
        sector: u64,
        sectors: u64,
        fua: bool,
        fail: bool,
    },
    Flush {
        fail: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..SECTORS, 1..20u64, prop::bool::weighted(0.15), prop::bool::weighted(0.05))
            .prop_map(|(sector, sectors, fua, fail)| Step::Write {
                sector,
                sectors: sectors.min(SECTORS - sector),
                fua,
                fail,
            }),
        1 => prop::bool::weighted(0.1).prop_map(|fail| Step::Flush { fail }),
    ]
}

/// Bytes that name the write and the sector, so no two (write, sector) pairs share data.
fn payload(op: u64, sector: u64, sectors: u64) -> Vec<u8> {
    (sector..sector + sectors)
        .flat_map(|s| {
            let mut v = vec![(op as u8).wrapping_mul(31) ^ (s as u8); S];
            v[..8].copy_from_slice(&op.to_le_bytes());
            v[8..16].copy_from_slice(&s.to_le_bytes());
            v
        })
        .collect()
}

fn initial() -> Vec<u8> {
    payload(u64::MAX, 0, SECTORS)
}

/// Builds the history; the last operation stays in flight if `crash_in_flight`.
fn build(steps: &[Step], crash_in_flight: bool) -> History {
    let mut h = History::new(initial()).unwrap();
    for (i, st) in steps.iter().enumerate() {
        let last = i + 1 == steps.len();
        let (id, fail) = match st {
            Step::Write {
                sector,
                sectors,
                fua,
                fail,
            } => {
                let op = h.ops().len() as u64;
                (
                    h.begin_write(*sector, &payload(op, *sector, *sectors), *fua)
                        .unwrap(),
                    *fail,
                )
            }
            Step::Flush { fail } => (h.begin_flush().unwrap(), *fail),
        };
        if last && crash_in_flight {
            break;
        }
        if fail {
            h.fail(id).unwrap();
        } else {
            h.complete(id).unwrap();
        }
    }
    h
}

/// Elements (op, sector, sectors) of the write sequence, computed independently of the crate.
fn elements(h: &History, blocks: bool) -> Vec<(usize, u64, u64)> {
    let mut out = Vec::new();
    for (i, op) in h.ops().iter().enumerate() {
        if let Some((sector, sectors)) = op.write_range() {
            if blocks {
                for s in sector..sector + sectors {
                    if s == sector || s % 8 == 0 {
                        let end = ((s / 8 + 1) * 8).min(sector + sectors);
                        out.push((i, s, end - s));
                    }
                }
            } else {
                out.push((i, sector, sectors));
            }
        }
    }
    out
}

/// Durability computed from the definition, not from the crate.
fn durable(h: &History, i: usize) -> bool {
    let op = &h.ops()[i];
    let models::OpKind::Write { fua, .. } = op.kind else {
        return false;
    };
    op.status == OpStatus::Completed
        && (fua
            || h.ops()[i + 1..]
                .iter()
                .any(|f| f.kind == models::OpKind::Flush && f.status == OpStatus::Completed))
}

fn state_after(h: &History, els: &[(usize, u64, u64)], t: usize) -> Vec<u8> {
    let mut img = h.initial().to_vec();
    for &(i, sector, sectors) in &els[..t] {
        let models::OpKind::Write {
            sector: start,
            data,
            ..
        } = &h.ops()[i].kind
        else {
            unreachable!()
        };
        let from = (sector - start) as usize * S;
        let at = sector as usize * S;
        let len = sectors as usize * S;
        img[at..at + len].copy_from_slice(&data[from..from + len]);
    }
    img
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn true_prefix_states_are_accepted(
        steps in prop::collection::vec(step(), 1..40),
        crash_in_flight in any::<bool>(),
        blocks in any::<bool>(),
        pick in any::<u64>(),
    ) {
        let h = build(&steps, crash_in_flight);
        let els = elements(&h, blocks);
        let t_min = els.iter().rposition(|e| durable(&h, e.0)).map_or(0, |p| p + 1);
        let t = t_min + (pick as usize) % (els.len() - t_min + 1);
        let img = state_after(&h, &els, t);
        prop_assert_eq!(check_block(&h, &img), Ok(()));
        prop_assert_eq!(check_prefix(&h, &img, PrefixUnit::Blocks), Ok(()));
        if !blocks {
            prop_assert_eq!(check_prefix(&h, &img, PrefixUnit::Requests), Ok(()));
        }
    }

    #[test]
    fn garbage_in_any_sector_is_rejected(
        steps in prop::collection::vec(step(), 1..30),
        pick in any::<u64>(),
        victim in 0..SECTORS,
    ) {
        let h = build(&steps, false);
        let els = elements(&h, true);
        let t_min = els.iter().rposition(|e| durable(&h, e.0)).map_or(0, |p| p + 1);
        let t = t_min + (pick as usize) % (els.len() - t_min + 1);
        let mut img = state_after(&h, &els, t);
        let at = victim as usize * S;
        img[at..at + S].fill(0xa5);
        let v = check_block(&h, &img).unwrap_err();
        prop_assert_eq!(v.sector(), Some(victim));
        prop_assert_eq!(check_prefix(&h, &img, PrefixUnit::Blocks).unwrap_err().sector(), Some(victim));
    }

    #[test]
    fn losing_every_non_initial_value_of_a_durable_sector_is_rejected(
        steps in prop::collection::vec(step(), 1..30),
    ) {
        // The initial image is a legal crash state only if no durable write changed anything.
        let h = build(&steps, false);
        let any_durable = (0..h.ops().len()).any(|i| durable(&h, i));
        let res = check_block(&h, h.initial());
        prop_assert_eq!(res.is_ok(), !any_durable);
    }
}
