//! Shrinking a failing workload to the fewest operations that still fail the same way.

use super::check::Kind;
use super::explore::{explore_workload, ExploreOpts, Violation};
use super::workload::Workload;

/// Removes chunks of operations (halves, quarters, … single ops) while the workload still has
/// a violation of the same kind. Bounded by `max_tries` explorations.
pub fn shrink(v: &Violation, opts: &ExploreOpts, max_tries: usize) -> Violation {
    let mut opts = opts.clone();
    let kind: Kind = v.finding.kind;
    opts.stop_at = Some(kind);
    let fails = |w: &Workload| -> Option<Violation> {
        explore_workload(w, &opts)
            .violations
            .into_iter()
            .find(|x| x.finding.kind == kind)
    };
    let mut best = v.clone();
    let mut tries = 0;
    let mut chunk = best.workload.ops.len().div_ceil(2).max(1);
    loop {
        let mut progressed = false;
        let mut start = 0;
        while start < best.workload.ops.len() && tries < max_tries {
            let mut cand = best.workload.clone();
            let end = (start + chunk).min(cand.ops.len());
            cand.ops.drain(start..end);
            tries += 1;
            match fails(&cand) {
                Some(found) => {
                    best = found;
                    progressed = true;
                }
                None => start += chunk,
            }
        }
        if tries >= max_tries {
            break;
        }
        if !progressed {
            if chunk == 1 {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
    }
    best
}
