//! Laws of the reference models, checked by quickcheck (with its shrinking) beside the proptest
//! suites: the relations between the oracles that the crash tester's verdicts rest on.
//!
//! - A device with no volatile cache holds the full history of writes: both oracles accept
//!   that image.
//! - The prefix oracle accepts the image of every prefix (in block pieces) of the writes that
//!   contains every durable write.
//! - The block oracle accepts every image the prefix oracle accepts (it is the weaker rule).
//! - A sector holding bytes no write and not the initial content ever had is rejected by both.

use models::{check_block, check_prefix, PrefixUnit};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

mod support;

use support::{build, durable, elements, state_after, Step, S, SECTORS};

impl Arbitrary for Step {
    fn arbitrary(g: &mut Gen) -> Self {
        let pick = |g: &mut Gen, n: u64| u64::arbitrary(g) % n;
        if pick(g, 5) == 0 {
            Step::Flush {
                fail: pick(g, 10) == 0,
            }
        } else {
            let sector = pick(g, SECTORS);
            Step::Write {
                sector,
                sectors: (1 + pick(g, 17)).min(SECTORS - sector),
                fua: pick(g, 6) == 0,
                fail: pick(g, 20) == 0,
            }
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
        match self.clone() {
            Step::Write {
                sector,
                sectors,
                fua,
                fail,
            } if sectors > 1 || fua || fail => Box::new(std::iter::once(Step::Write {
                sector,
                sectors: 1,
                fua: false,
                fail: false,
            })),
            _ => Box::new(std::iter::empty()),
        }
    }
}

/// The shortest prefix of the block pieces that holds every durable write.
fn durable_prefix(h: &models::History, els: &[(usize, u64, u64)]) -> usize {
    els.iter()
        .rposition(|e| durable(h, e.0))
        .map_or(0, |p| p + 1)
}

fn qc() -> QuickCheck {
    QuickCheck::new().tests(300)
}

#[test]
fn a_device_without_a_volatile_cache_holds_the_full_history_and_both_oracles_accept_it() {
    fn law(steps: Vec<Step>) -> bool {
        let h = build(&steps, false);
        let els = elements(&h, true);
        let img = state_after(&h, &els, els.len());
        check_block(&h, &img).is_ok() && check_prefix(&h, &img, PrefixUnit::Blocks).is_ok()
    }
    qc().quickcheck(law as fn(Vec<Step>) -> bool);
}

#[test]
fn every_prefix_holding_the_durable_writes_is_accepted_by_both_oracles() {
    fn law(steps: Vec<Step>, cut: usize) -> TestResult {
        let h = build(&steps, false);
        let els = elements(&h, true);
        let need = durable_prefix(&h, &els);
        let t = need + cut % (els.len() - need + 1);
        let img = state_after(&h, &els, t);
        let prefix = check_prefix(&h, &img, PrefixUnit::Blocks);
        let block = check_block(&h, &img);
        TestResult::from_bool(prefix.is_ok() && block.is_ok())
    }
    qc().quickcheck(law as fn(Vec<Step>, usize) -> TestResult);
}

#[test]
fn the_block_oracle_accepts_every_image_the_prefix_oracle_accepts() {
    /// Any image made sector by sector from the initial content and the writes' data (most of
    /// them no prefix at all): where the prefix oracle says yes, the block oracle must too.
    fn law(steps: Vec<Step>, picks: Vec<u8>) -> TestResult {
        let h = build(&steps, false);
        let els = elements(&h, true);
        if els.is_empty() {
            return TestResult::discard();
        }
        let mut img = h.initial().to_vec();
        for (k, &p) in picks.iter().enumerate() {
            let (i, sector, sectors) = els[(p as usize + k) % els.len()];
            let one = state_after(&h, &[(i, sector, sectors)], 1);
            let at = sector as usize * S;
            let len = sectors as usize * S;
            img[at..at + len].copy_from_slice(&one[at..at + len]);
        }
        if check_prefix(&h, &img, PrefixUnit::Blocks).is_err() {
            return TestResult::discard();
        }
        TestResult::from_bool(check_block(&h, &img).is_ok())
    }
    qc().quickcheck(law as fn(Vec<Step>, Vec<u8>) -> TestResult);
}

#[test]
fn garbage_in_any_sector_is_rejected_by_both_oracles() {
    fn law(steps: Vec<Step>, sector: u64) -> bool {
        let h = build(&steps, false);
        let els = elements(&h, true);
        let mut img = state_after(&h, &els, els.len());
        let at = (sector % SECTORS) as usize * S;
        img[at..at + S].fill(0xa5);
        check_block(&h, &img).is_err() && check_prefix(&h, &img, PrefixUnit::Blocks).is_err()
    }
    qc().quickcheck(law as fn(Vec<Step>, u64) -> bool);
}
