//! Bounded-exhaustive workloads: on a small geometry (segment order 4 or 5, type 0 or type 1),
//! every workload of up to L operations over a small alphabet. In type 1 a plog region takes
//! two entries per block of a segment, so at order 4 a second write of the open segment's
//! block fills its region to the last sector and a third must seal: short workloads reach
//! both region boundaries.

use engine::Step;

use super::workload::{FaultSet, WlConfig, WlOp, Workload};

#[derive(Clone, Debug)]
pub struct BoundedParams {
    /// Longest workload.
    pub max_len: usize,
    /// Distinct blocks the writes touch (2 or 3).
    pub blocks: u64,
    /// Slots in the ring (2..=4).
    pub nr_segments: u64,
    pub unit_sectors: u64,
    pub faults: FaultSet,
    pub quirks: Vec<String>,
    /// Segment size order (4 or 5).
    pub order: u8,
    /// 0, or 1 with a plog of two regions.
    pub cache_type: u8,
}

/// The alphabet: full write, partial-sector write and FUA write of each block, a discard,
/// FLUSH, seal, writeback step, record step. Overwrites come from repeating a block.
pub fn alphabet(blocks: u64) -> Vec<WlOp> {
    let mut a = Vec::new();
    for b in 0..blocks {
        a.push(WlOp::Write {
            sector: b * 8,
            sectors: 8,
            fua: false,
        });
        a.push(WlOp::Write {
            sector: b * 8 + 2,
            sectors: 1,
            fua: false,
        });
    }
    a.push(WlOp::Write {
        sector: 0,
        sectors: 8,
        fua: true,
    });
    a.push(WlOp::Discard {
        sector: (blocks - 1) * 8,
        sectors: 8,
    });
    a.push(WlOp::Flush);
    a.push(WlOp::Step(Step::Seal));
    a.push(WlOp::Step(Step::Writeback));
    a.push(WlOp::Step(Step::Record));
    a
}

/// Every workload of length 1..=max_len over the alphabet, shortest first.
pub fn bounded_workloads(p: &BoundedParams) -> impl Iterator<Item = Workload> + '_ {
    let alpha = alphabet(p.blocks);
    let config = WlConfig {
        order: p.order,
        nr_segments: p.nr_segments,
        backing_blocks: p.blocks,
        pool: 1,
        batch: 1,
        unit_sectors: p.unit_sectors,
        seed: 0,
        faults: p.faults,
        quirks: p.quirks.clone(),
        cache_type: p.cache_type,
        plog_regions: if p.cache_type == 1 { 2 } else { 0 },
        ahead: true,
        allow_writeback: false,
        intervals: 0,
        cutoff: 0,
        pool_after: 0,
        completion: Default::default(),
    };
    (1..=p.max_len).flat_map(move |len| {
        let alpha = alpha.clone();
        let config = config.clone();
        let total = (alpha.len() as u64).pow(len as u32);
        (0..total).map(move |mut code| {
            let mut ops = Vec::with_capacity(len);
            for _ in 0..len {
                ops.push(alpha[(code % alpha.len() as u64) as usize]);
                code /= alpha.len() as u64;
            }
            Workload {
                config: config.clone(),
                ops,
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_workload() {
        let p = BoundedParams {
            max_len: 2,
            blocks: 2,
            nr_segments: 2,
            unit_sectors: 1,
            faults: FaultSet::default(),
            quirks: vec![],
            order: 4,
            cache_type: 1,
        };
        let n = alphabet(2).len();
        assert_eq!(bounded_workloads(&p).count(), n + n * n);
    }
}
