//! Ways to pick crash choices (docs/DESIGN.md, "Crash simulator and oracles"): every subset when the pending set is
//! small, all subsets up to size k, tears of one write, seeded random sampling; plus
//! deduplication of identical crash images.

use crate::choice::{Choice, Persist, Units};
use crate::crash::{CrashImages, CrashState};
use crate::rng::SplitMix64;
use crate::ChoiceError;
use std::collections::{BTreeSet, HashSet};

/// Every subset of the pending writes is at most this many (2^20 choices) — beyond that,
/// exhaustive enumeration is refused whatever bound the caller passes.
pub const MAX_EXHAUSTIVE_PENDING: usize = 20;

/// In a tear enumeration, what the other pending writes do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Others {
    /// Only the torn write persisted (in part).
    Lost,
    /// Every other pending write persisted whole.
    Persisted,
}

/// Unit masks of the interesting tears of a write of `units` atomic units: only unit i, all but
/// unit i (unless tears come `in_runs`: that is two runs), every proper prefix and every proper
/// suffix; with `garbage` (a fill other than old content), also no unit at all (the write
/// garbled everything it covered; only for writes of two or more units). Deduplicated, in a
/// fixed order.
pub fn tear_masks(units: usize, garbage: bool, in_runs: bool) -> Vec<Vec<bool>> {
    let mut masks: BTreeSet<Vec<bool>> = BTreeSet::new();
    if units >= 2 {
        for i in 0..units {
            masks.insert((0..units).map(|u| u == i).collect());
            if !in_runs {
                masks.insert((0..units).map(|u| u != i).collect());
            }
        }
        for k in 1..units {
            masks.insert((0..units).map(|u| u < k).collect());
            masks.insert((0..units).map(|u| u >= k).collect());
        }
    }
    // A write of one atomic unit is atomic: old or new, never garbage. A torn multi-unit write
    // may have garbled every unit it covered.
    if garbage && units >= 2 {
        masks.insert(vec![false; units]);
    }
    masks.into_iter().collect()
}

/// Iterator over all subsets of `n` pending writes, smallest size first, each subset in log
/// order. See [`CrashState::subsets_up_to`].
#[derive(Clone, Debug)]
pub struct Subsets {
    n: usize,
    max: usize,
    /// The next combination to yield; `None` when done.
    current: Option<Vec<usize>>,
}

impl Subsets {
    fn new(n: usize, max: usize) -> Self {
        Subsets {
            n,
            max: max.min(n),
            current: Some(Vec::new()),
        }
    }

    fn advance(&self, c: &[usize]) -> Option<Vec<usize>> {
        let mut next = c.to_vec();
        let k = next.len();
        // Rightmost index that can still move right.
        if let Some(i) = (0..k).rev().find(|&i| next[i] < self.n - k + i) {
            next[i] += 1;
            for j in i + 1..k {
                next[j] = next[j - 1] + 1;
            }
            return Some(next);
        }
        (k < self.max).then(|| (0..k + 1).collect())
    }
}

impl Iterator for Subsets {
    type Item = Choice;

    fn next(&mut self) -> Option<Choice> {
        let c = self.current.take()?;
        self.current = self.advance(&c);
        Some(Choice::whole(c))
    }
}

impl CrashState {
    /// Every subset of the pending writes (whole writes, log order): 2^n choices. Refused when
    /// there are more than `bound` (or [`MAX_EXHAUSTIVE_PENDING`]) pending writes.
    pub fn all_subsets(&self, bound: usize) -> Result<Subsets, ChoiceError> {
        let n = self.pending.len();
        let bound = bound.min(MAX_EXHAUSTIVE_PENDING);
        if n > bound {
            return Err(ChoiceError::TooManyPending { pending: n, bound });
        }
        Ok(Subsets::new(n, n))
    }

    /// Every subset of at most `k` pending writes (whole writes, log order), smallest first.
    pub fn subsets_up_to(&self, k: usize) -> Subsets {
        Subsets::new(self.pending.len(), k)
    }

    /// The tears of pending write `index` (see [`tear_masks`]); the other pending writes lost or
    /// persisted whole as `others` says. Empty for a write that cannot tear.
    pub fn tears_of(&self, index: usize, others: Others) -> Result<Vec<Choice>, ChoiceError> {
        let w = self.pending.get(index).ok_or(ChoiceError::NoSuchPending {
            index,
            pending: self.pending.len(),
        })?;
        let d = self.device(w.role);
        let garbage = d.is_some_and(|d| d.torn_fill != crate::TornFill::Old);
        let in_runs = d.is_some_and(|d| d.torn_in_runs);
        self.tears_with(index, others, tear_masks(w.unit_count(), garbage, in_runs))
    }

    /// As [`CrashState::tears_of`] with the caller's unit masks (each as long as the write has
    /// units; checked).
    pub fn tears_with(
        &self,
        index: usize,
        others: Others,
        masks: Vec<Vec<bool>>,
    ) -> Result<Vec<Choice>, ChoiceError> {
        let w = self.pending.get(index).ok_or(ChoiceError::NoSuchPending {
            index,
            pending: self.pending.len(),
        })?;
        let expected = w.unit_count();
        if let Some(m) = masks.iter().find(|m| m.len() != expected) {
            return Err(ChoiceError::UnitMask {
                index,
                expected,
                got: m.len(),
            });
        }
        let choices = masks
            .into_iter()
            .map(|mask| {
                let persisted = (0..self.pending.len())
                    .filter(|&i| i == index || others == Others::Persisted)
                    .map(|i| Persist {
                        pending: i,
                        units: if i == index {
                            Units::Mask(mask.clone())
                        } else {
                            Units::All
                        },
                    })
                    .collect();
                Choice {
                    persisted,
                    bit_flips: Vec::new(),
                }
            })
            .collect();
        Ok(choices)
    }

    /// One random choice: each pending write persists with probability 1/2; a persisted
    /// multi-unit write is torn (random units, or one random run of them on a device that tears
    /// in runs) with probability 1/4; where torn units do not keep their old content, any
    /// persisted write is torn with probability 1/8; one choice in 8 applies the persisted
    /// writes in a shuffled order (older versions winning).
    pub fn random_choice(&self, rng: &mut SplitMix64) -> Choice {
        let mut persisted = Vec::new();
        for (i, w) in self.pending.iter().enumerate() {
            if !rng.chance(1, 2) {
                continue;
            }
            let units = w.unit_count();
            let d = self.device(w.role);
            let garbage = d.is_some_and(|d| d.torn_fill != crate::TornFill::Old);
            let tear = units >= 2 && (rng.chance(1, 4) || (garbage && rng.chance(1, 8)));
            let units = match (tear, d.is_some_and(|d| d.torn_in_runs)) {
                (false, _) => Units::All,
                (true, false) => Units::Mask((0..units).map(|_| rng.chance(1, 2)).collect()),
                (true, true) => {
                    let first = rng.below(units as u64) as usize;
                    let end = first + 1 + rng.below((units - first) as u64) as usize;
                    Units::Mask((0..units).map(|u| (first..end).contains(&u)).collect())
                }
            };
            persisted.push(Persist { pending: i, units });
        }
        if rng.chance(1, 8) {
            rng.shuffle(&mut persisted);
        }
        Choice {
            persisted,
            bit_flips: Vec::new(),
        }
    }

    /// `count` random choices from `seed`; the same seed gives the same choices.
    pub fn random_choices(&self, seed: u64, count: usize) -> impl Iterator<Item = Choice> + '_ {
        let mut rng = SplitMix64::new(seed);
        (0..count).map(move |_| self.random_choice(&mut rng))
    }
}

/// Remembers the fingerprints of crash images already checked.
#[derive(Clone, Debug, Default)]
pub struct Dedup {
    seen: HashSet<u128>,
}

impl Dedup {
    pub fn new() -> Self {
        Dedup::default()
    }

    /// True if `images` were not seen before (and remembers them).
    pub fn insert(&mut self, images: &CrashImages) -> bool {
        self.seen.insert(images.fingerprint())
    }

    /// True if a fingerprint (from [`CrashState::fingerprint_of`]) was not seen before.
    pub fn insert_fingerprint(&mut self, fingerprint: u128) -> bool {
        self.seen.insert(fingerprint)
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(n: usize, k: usize) -> Vec<Vec<usize>> {
        Subsets::new(n, k)
            .map(|c| c.persisted.iter().map(|p| p.pending).collect())
            .collect()
    }

    #[test]
    fn subsets_in_size_then_lexicographic_order() {
        assert_eq!(
            all(3, 3),
            vec![
                vec![],
                vec![0],
                vec![1],
                vec![2],
                vec![0, 1],
                vec![0, 2],
                vec![1, 2],
                vec![0, 1, 2]
            ]
        );
        assert_eq!(all(4, 2).len(), 1 + 4 + 6);
        assert_eq!(all(0, 5), vec![Vec::<usize>::new()]);
    }

    #[test]
    fn tear_masks_cover_single_units_prefixes_and_suffixes() {
        assert!(tear_masks(1, false, false).is_empty());
        assert!(
            tear_masks(1, true, false).is_empty(),
            "one atomic unit cannot tear"
        );
        assert!(tear_masks(2, true, false).contains(&vec![false, false]));
        let m = tear_masks(2, false, false);
        assert_eq!(m, vec![vec![false, true], vec![true, false]]);
        let m = tear_masks(4, false, false);
        for i in 0..4 {
            assert!(m.contains(&(0..4).map(|u| u == i).collect()));
            assert!(m.contains(&(0..4).map(|u| u != i).collect()));
        }
        assert!(m.contains(&vec![true, true, false, false]));
        assert!(!m.contains(&vec![true; 4]));
        assert!(!m.contains(&vec![false; 4]));
    }

    /// Tears in runs keep one contiguous run of units: never "all but an inner unit".
    #[test]
    fn tears_in_runs_are_contiguous() {
        let one_run = |m: &Vec<bool>| {
            (0..m.len())
                .filter(|&i| m[i] && (i == 0 || !m[i - 1]))
                .count()
                == 1
        };
        let m = tear_masks(5, false, true);
        assert!(m.iter().all(one_run));
        assert!(m.contains(&vec![true, false, false, false, false]));
        assert!(m.contains(&vec![false, false, true, true, true]));
        assert!(!m.contains(&vec![true, true, false, true, true]));
        assert!(tear_masks(5, false, false).contains(&vec![true, true, false, true, true]));
    }
}
