//! The prefix oracle (contract rule 4, docs/DESIGN.md): the recovered device equals the state after some prefix of the
//! submitted writes, and that prefix contains every durable write.
//!
//! The state after a prefix of length `t` (the first `t` elements applied in order) is, for one
//! sector, piecewise constant in `t`: it changes only at elements covering that sector. So for each
//! sector the set of `t` whose state matches the observed bytes is a union of intervals, found by
//! walking that sector's elements; the device is consistent with a prefix iff the intersection of
//! those sets over all sectors is non-empty. The cost is the number of (element, sector) pairs,
//! never elements × device size.

use crate::describe::{bad_sector, check_size, join_limited, value_name};
use crate::violation::{Oracle, Violation};
use crate::{History, Observed, BLOCK_SECTORS};

/// What one element of the prefix is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrefixUnit {
    /// Whole client requests: a multi-sector write persists entirely or not at all.
    Requests,
    /// Pieces of requests split at 4 KiB (8-sector) boundaries, in address order within a
    /// request. The engine splits requests at block boundaries, so a torn multi-block write may
    /// legitimately persist its first blocks only.
    #[default]
    Blocks,
}

impl PrefixUnit {
    fn name(self) -> &'static str {
        match self {
            PrefixUnit::Requests => "requests",
            PrefixUnit::Blocks => "block pieces",
        }
    }
}

/// One element of the write sequence: sectors `[sector, sector + sectors)` of write `op`.
#[derive(Clone, Copy, Debug)]
struct Element {
    op: usize,
    sector: u64,
    sectors: u64,
}

fn elements(history: &History, unit: PrefixUnit) -> Vec<Element> {
    let mut out = Vec::new();
    for (op, o) in history.ops().iter().enumerate() {
        let Some((start, sectors)) = o.write_range() else {
            continue;
        };
        let end = start + sectors;
        match unit {
            PrefixUnit::Requests => out.push(Element {
                op,
                sector: start,
                sectors,
            }),
            PrefixUnit::Blocks => {
                let mut s = start;
                while s < end {
                    let piece_end = ((s / BLOCK_SECTORS + 1) * BLOCK_SECTORS).min(end);
                    out.push(Element {
                        op,
                        sector: s,
                        sectors: piece_end - s,
                    });
                    s = piece_end;
                }
            }
        }
    }
    out
}

/// Inclusive ranges of prefix lengths, sorted and disjoint.
type Ranges = Vec<(usize, usize)>;

fn push_range(ranges: &mut Ranges, lo: usize, hi: usize) {
    match ranges.last_mut() {
        Some(last) if last.1 + 1 >= lo => last.1 = last.1.max(hi),
        _ => ranges.push((lo, hi)),
    }
}

fn intersect(a: &Ranges, b: &Ranges) -> Ranges {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let lo = a[i].0.max(b[j].0);
        let hi = a[i].1.min(b[j].1);
        if lo <= hi {
            out.push((lo, hi));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// For one sector: the value each range of prefix lengths gives it. `None` = initial content.
/// `covering` are the indices of the elements covering the sector, ascending; `n` elements in all.
fn sector_timeline(
    covering: &[usize],
    elements: &[Element],
    n: usize,
) -> Vec<(usize, usize, Option<usize>)> {
    let mut out = Vec::with_capacity(covering.len() + 1);
    // Element e is applied in the states t > e.
    let first_change = covering.first().copied().unwrap_or(n);
    out.push((0, first_change, None));
    for (k, &e) in covering.iter().enumerate() {
        let until = covering.get(k + 1).copied().unwrap_or(n);
        out.push((e + 1, until, Some(elements[e].op)));
    }
    out
}

fn render_ranges(ranges: &Ranges) -> String {
    join_limited(ranges.iter().map(|&(lo, hi)| {
        if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}..={hi}")
        }
    }))
}

/// The prefix oracle prepared for one history, to check many crash images cheaply.
#[derive(Clone, Debug)]
pub struct PrefixOracle<'h> {
    history: &'h History,
    unit: PrefixUnit,
    /// Number of elements.
    n: usize,
    /// Smallest prefix length containing every durable write.
    t_min: usize,
    /// Per sector: which value each range of prefix lengths gives it `(lo, hi, op)`, inclusive;
    /// `op == None` is the initial content.
    timelines: Vec<Vec<(usize, usize, Option<usize>)>>,
}

impl<'h> PrefixOracle<'h> {
    /// Elements are as `unit` says. In-flight and failed writes are elements like the others: a
    /// prefix may end with them or go past them.
    pub fn new(history: &'h History, unit: PrefixUnit) -> Self {
        let elements = elements(history, unit);
        let n = elements.len();
        let durable = history.durable_flags();
        // The pieces of one write are contiguous, so this covers every piece of every durable
        // write.
        let t_min = elements
            .iter()
            .rposition(|e| durable[e.op])
            .map_or(0, |p| p + 1);
        let mut covering: Vec<Vec<usize>> = vec![Vec::new(); history.size_sectors() as usize];
        for (e, el) in elements.iter().enumerate() {
            for s in el.sector..el.sector + el.sectors {
                covering[s as usize].push(e);
            }
        }
        let timelines = covering
            .iter()
            .map(|cover| sector_timeline(cover, &elements, n))
            .collect();
        PrefixOracle {
            history,
            unit,
            n,
            t_min,
            timelines,
        }
    }

    /// Checks that `observed` (the whole recovered device) is the state after some prefix of the
    /// writes that contains every durable write. Reports the first sector (by address) at which
    /// no prefix consistent with all earlier sectors fits.
    pub fn check(&self, observed: &[u8]) -> Result<(), Violation> {
        self.check_observed(Observed::whole(observed))
    }

    /// As [`PrefixOracle::check`], for a device read in part: a sector known to hold the
    /// initial content is judged as that, and skipped where no write touched it (every prefix
    /// leaves it initial).
    pub fn check_observed(&self, observed: Observed<'_>) -> Result<(), Violation> {
        let h = self.history;
        check_size(h, Oracle::Prefix, observed.bytes)?;
        let mut allowed: Ranges = vec![(self.t_min, self.n)];
        for (s, timeline) in self.timelines.iter().enumerate() {
            let s = s as u64;
            // Cheap test first: most sectors are read, and then the timeline is not walked here.
            if observed.known_initial(s)
                && timeline.iter().all(|&(lo, hi, v)| v.is_none() || lo > hi)
            {
                continue;
            }
            let here = observed.sector(h, s);
            let value = |v: Option<usize>| match v {
                None => h.initial_sector(s),
                Some(op) => h.written_sector(op, s).expect("element covers sector"),
            };
            let mut matching = Ranges::new();
            for &(lo, hi, v) in timeline {
                if lo <= hi && value(v) == here {
                    push_range(&mut matching, lo, hi);
                }
            }
            let next = intersect(&allowed, &matching);
            if next.is_empty() {
                return Err(self.violation(s, here, &allowed, timeline));
            }
            allowed = next;
        }
        Ok(())
    }

    /// Names the values the still-possible prefixes would have put into sector `s`.
    fn violation(
        &self,
        s: u64,
        here: &[u8],
        allowed: &Ranges,
        timeline: &[(usize, usize, Option<usize>)],
    ) -> Violation {
        let mut names: Vec<String> = Vec::new();
        for &(lo, hi, v) in timeline {
            let hit = allowed.iter().any(|&(a, b)| lo.max(a) <= hi.min(b));
            let name = value_name(v);
            if hit && !names.contains(&name) {
                names.push(name);
            }
        }
        let text = format!(
            "a prefix of length {} (of {} {}; the durable writes need at least {}), \
             which would hold here: {}",
            render_ranges(allowed),
            self.n,
            self.unit.name(),
            self.t_min,
            join_limited(names),
        );
        bad_sector(self.history, Oracle::Prefix, s, here, text)
    }
}

/// Checks that `observed` (the whole recovered device) is the state after some prefix of the
/// writes of `history` (elements as `unit` says) that contains every durable write.
pub fn check_prefix(history: &History, observed: &[u8], unit: PrefixUnit) -> Result<(), Violation> {
    PrefixOracle::new(history, unit).check(observed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_split_at_absolute_block_boundaries() {
        let mut h = History::zeroed(32);
        h.write(6, &vec![1; 12 * 512], false).unwrap();
        let pieces: Vec<(u64, u64)> = elements(&h, PrefixUnit::Blocks)
            .iter()
            .map(|e| (e.sector, e.sectors))
            .collect();
        assert_eq!(pieces, vec![(6, 2), (8, 8), (16, 2)]);
        assert_eq!(elements(&h, PrefixUnit::Requests).len(), 1);
    }

    #[test]
    fn range_set_operations() {
        let mut r = Ranges::new();
        push_range(&mut r, 0, 2);
        push_range(&mut r, 3, 4);
        push_range(&mut r, 7, 9);
        assert_eq!(r, vec![(0, 4), (7, 9)]);
        assert_eq!(intersect(&r, &vec![(2, 8)]), vec![(2, 4), (7, 8)]);
        assert_eq!(intersect(&r, &vec![(5, 6)]), vec![]);
    }
}
