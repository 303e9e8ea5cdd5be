//! Random histories: every true prefix state containing the durable writes is accepted by both
//! oracles, and garbage in any sector is rejected.

use models::{check_block, check_prefix, PrefixUnit};
use proptest::prelude::*;

mod support;

use support::{build, durable, elements, state_after, Step, S, SECTORS};

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
