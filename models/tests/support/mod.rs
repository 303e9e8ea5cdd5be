//! Histories shared by the model test suites (proptest and quickcheck): the client operations,
//! the bytes each write carries, and the write sequence and its prefix states computed from the
//! definitions, independently of the crate.

#![allow(dead_code)]

use models::{History, OpStatus};

pub const S: usize = 512;
pub const SECTORS: u64 = 48;

#[derive(Clone, Debug)]
pub enum Step {
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

/// Bytes that name the write and the sector, so no two (write, sector) pairs share data.
pub fn payload(op: u64, sector: u64, sectors: u64) -> Vec<u8> {
    (sector..sector + sectors)
        .flat_map(|s| {
            let mut v = vec![(op as u8).wrapping_mul(31) ^ (s as u8); S];
            v[..8].copy_from_slice(&op.to_le_bytes());
            v[8..16].copy_from_slice(&s.to_le_bytes());
            v
        })
        .collect()
}

pub fn initial() -> Vec<u8> {
    payload(u64::MAX, 0, SECTORS)
}

/// Builds the history; the last operation stays in flight if `crash_in_flight`.
pub fn build(steps: &[Step], crash_in_flight: bool) -> History {
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
pub fn elements(h: &History, blocks: bool) -> Vec<(usize, u64, u64)> {
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
pub fn durable(h: &History, i: usize) -> bool {
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

pub fn state_after(h: &History, els: &[(usize, u64, u64)], t: usize) -> Vec<u8> {
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
