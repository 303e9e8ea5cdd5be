//! The block oracle (contract rule 3, docs/DESIGN.md): after a crash, each sector holds its durable value or a value
//! written to it after that.

use crate::describe::{bad_sector, check_size, join_limited, value_name};
use crate::violation::{Oracle, Violation};
use crate::{History, Observed};

/// The block oracle prepared for one history, to check many crash images cheaply.
#[derive(Clone, Debug)]
pub struct BlockOracle<'h> {
    history: &'h History,
    /// Per sector, the writes allowed to be seen there, in submission order: `None` is the
    /// initial content, `Some(i)` write `i`. The first is the durable value.
    allowed: Vec<Vec<Option<usize>>>,
}

impl<'h> BlockOracle<'h> {
    /// For a sector, let `d` be the last durable write covering it (or the initial content if
    /// none). Allowed: the value of `d`, or of any write to the sector submitted after `d`,
    /// acknowledged or not.
    pub fn new(history: &'h History) -> Self {
        let durable = history.durable_flags();
        let allowed = history
            .writes_by_sector()
            .into_iter()
            .map(|writes| match writes.iter().rposition(|&i| durable[i]) {
                Some(p) => writes[p..].iter().map(|&i| Some(i)).collect(),
                None => std::iter::once(None)
                    .chain(writes.iter().map(|&i| Some(i)))
                    .collect(),
            })
            .collect();
        BlockOracle { history, allowed }
    }

    /// Checks `observed` (the whole recovered device); reports the first sector (by address)
    /// holding anything not allowed.
    pub fn check(&self, observed: &[u8]) -> Result<(), Violation> {
        self.check_observed(Observed::whole(observed))
    }

    /// As [`BlockOracle::check`], for a device read in part: a sector known to hold the initial
    /// content is judged as that, and skipped where no write touched it.
    pub fn check_observed(&self, observed: Observed<'_>) -> Result<(), Violation> {
        let h = self.history;
        check_size(h, Oracle::Block, observed.bytes)?;
        for (s, candidates) in self.allowed.iter().enumerate() {
            let s = s as u64;
            if observed.known_initial(s) && candidates == &[None] {
                continue;
            }
            let here = observed.sector(h, s);
            let value = |c: &Option<usize>| match c {
                None => h.initial_sector(s),
                Some(i) => h.written_sector(*i, s).expect("write covers sector"),
            };
            if candidates.iter().any(|c| value(c) == here) {
                continue;
            }
            let durable_name = value_name(candidates[0]);
            let later = join_limited(candidates[1..].iter().map(|c| value_name(*c)));
            let allowed = if later.is_empty() {
                format!("durable value ({durable_name}) only")
            } else {
                format!("durable value ({durable_name}) or a later write here ({later})")
            };
            return Err(bad_sector(h, Oracle::Block, s, here, allowed));
        }
        Ok(())
    }
}

/// Checks `observed` (the whole recovered device) against `history`, sector by sector; see
/// [`BlockOracle::new`] for what is allowed.
pub fn check_block(history: &History, observed: &[u8]) -> Result<(), Violation> {
    BlockOracle::new(history).check(observed)
}
