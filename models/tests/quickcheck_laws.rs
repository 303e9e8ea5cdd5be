//! Laws of the reference models, checked by quickcheck (with its shrinking) beside the proptest
//! suites: the relations between the oracles that the crash tester's verdicts rest on.
//!
//! - A device with no volatile cache holds the full history of writes: both oracles accept
//!   that image.
//! - The prefix oracle accepts the image of every prefix (in block pieces) of the writes that
//!   contains every durable write.
//! - The block oracle accepts every image the prefix oracle accepts (it is the weaker rule).
//! - A sector holding bytes no write and not the initial content ever had is rejected by both.

use models::{check_block, check_prefix, History, OpKind, PrefixUnit};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

const S: usize = 512;
const SECTORS: u64 = 40;

/// One client operation of a history: a write (`sector`, `sectors`, FUA) or a FLUSH; `fail`
/// makes it fail.
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

/// Bytes that name the write and the sector.
fn payload(op: u64, sector: u64, sectors: u64) -> Vec<u8> {
    (sector..sector + sectors)
        .flat_map(|s| {
            let mut v = vec![(op as u8).wrapping_mul(29) ^ (s as u8); S];
            v[..8].copy_from_slice(&op.to_le_bytes());
            v[8..16].copy_from_slice(&s.to_le_bytes());
            v
        })
        .collect()
}

fn build(steps: &[Step]) -> History {
    let mut h = History::new(payload(u64::MAX, 0, SECTORS)).unwrap();
    for st in steps {
        let (id, fail) = match st {
            Step::Write {
                sector,
                sectors,
                fua,
                fail,
            } => {
                let op = h.ops().len() as u64;
                let data = payload(op, *sector, *sectors);
                (h.begin_write(*sector, &data, *fua).unwrap(), *fail)
            }
            Step::Flush { fail } => (h.begin_flush().unwrap(), *fail),
        };
        if fail {
            h.fail(id).unwrap();
        } else {
            h.complete(id).unwrap();
        }
    }
    h
}

/// The writes (a failed one too: it may have landed) cut into 4 KiB block pieces, in order:
/// (op index, sector, sectors).
fn pieces(h: &History) -> Vec<(usize, u64, u64)> {
    let mut out = Vec::new();
    for (i, op) in h.ops().iter().enumerate() {
        if let Some((sector, sectors)) = op.write_range() {
            let mut s = sector;
            while s < sector + sectors {
                let end = ((s / 8 + 1) * 8).min(sector + sectors);
                out.push((i, s, end - s));
                s = end;
            }
        }
    }
    out
}

fn image_after(h: &History, els: &[(usize, u64, u64)]) -> Vec<u8> {
    let mut img = h.initial().to_vec();
    for &(i, sector, sectors) in els {
        let OpKind::Write {
            sector: start,
            data,
            ..
        } = &h.ops()[i].kind
        else {
            unreachable!("pieces are of writes")
        };
        let from = (sector - start) as usize * S;
        let (at, len) = (sector as usize * S, sectors as usize * S);
        img[at..at + len].copy_from_slice(&data[from..from + len]);
    }
    img
}

/// The shortest prefix of pieces that holds every durable write.
fn durable_prefix(h: &History, els: &[(usize, u64, u64)]) -> usize {
    let durable = h.durable_flags();
    els.iter()
        .rposition(|&(i, _, _)| durable[i])
        .map_or(0, |p| p + 1)
}

fn qc() -> QuickCheck {
    QuickCheck::new().tests(300)
}

#[test]
fn a_device_without_a_volatile_cache_holds_the_full_history_and_both_oracles_accept_it() {
    fn law(steps: Vec<Step>) -> bool {
        let h = build(&steps);
        let els = pieces(&h);
        let img = image_after(&h, &els);
        check_block(&h, &img).is_ok() && check_prefix(&h, &img, PrefixUnit::Blocks).is_ok()
    }
    qc().quickcheck(law as fn(Vec<Step>) -> bool);
}

#[test]
fn every_prefix_holding_the_durable_writes_is_accepted_by_both_oracles() {
    fn law(steps: Vec<Step>, cut: usize) -> TestResult {
        let h = build(&steps);
        let els = pieces(&h);
        let need = durable_prefix(&h, &els);
        let t = need + cut % (els.len() - need + 1);
        let img = image_after(&h, &els[..t]);
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
        let h = build(&steps);
        let els = pieces(&h);
        if els.is_empty() {
            return TestResult::discard();
        }
        let mut img = h.initial().to_vec();
        for (k, &p) in picks.iter().enumerate() {
            let (i, sector, sectors) = els[(p as usize + k) % els.len()];
            let one = image_after(&h, &[(i, sector, sectors)]);
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
        let h = build(&steps);
        let mut img = image_after(&h, &pieces(&h));
        let at = (sector % SECTORS) as usize * S;
        img[at..at + S].fill(0xa5);
        check_block(&h, &img).is_err() && check_prefix(&h, &img, PrefixUnit::Blocks).is_err()
    }
    qc().quickcheck(law as fn(Vec<Step>, u64) -> bool);
}
