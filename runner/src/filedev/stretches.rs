//! How a batch's requests group into stretches: contiguous runs merged into one transfer, and
//! which stretches must keep their batch order.

use super::{MAX_MERGED_BYTES, SECTOR};

/// Splits a batch, given as `(sector, bytes)` per request in order, into stretches of
/// consecutive requests that are contiguous on the device (each starts at the sector where the
/// previous one ends, so no two in a stretch overlap) and together at most `MAX_MERGED_BYTES`
/// (a larger request stands alone). Returns the index ranges, in order, covering the batch.
pub(super) fn merge_runs(reqs: impl Iterator<Item = (u64, usize)>) -> Vec<std::ops::Range<usize>> {
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    let (mut next_sector, mut bytes) = (0u64, 0usize);
    for (i, (sector, len)) in reqs.enumerate() {
        match runs.last_mut() {
            Some(run) if sector == next_sector && bytes + len <= MAX_MERGED_BYTES => {
                run.end = i + 1;
                bytes += len;
            }
            _ => {
                runs.push(i..i + 1);
                bytes = len;
            }
        }
        next_sector = sector + (len as u64) / SECTOR;
    }
    runs
}

/// Which of the given aligned ranges `[start, end)` share bytes with another one. Those must be
/// written in their batch order, one after the other: the later write wins where they overlap,
/// and the read-modify-writes of a shared edge block must not race.
pub(super) fn sharing_aligned_blocks(ranges: &[(u64, u64)]) -> Vec<bool> {
    // Sorted by start, overlapping ranges form runs (clusters), each range beginning before the
    // furthest end so far in its run; every range of a run of more than one is shared.
    let mut by_start: Vec<usize> = (0..ranges.len()).collect();
    by_start.sort_unstable_by_key(|&i| ranges[i].0);
    let mut shared = vec![false; ranges.len()];
    let mut mark_cluster = |cluster: &[usize]| {
        if cluster.len() > 1 {
            cluster.iter().for_each(|&i| shared[i] = true);
        }
    };
    let (mut cluster_from, mut furthest_end) = (0, 0);
    for (k, &i) in by_start.iter().enumerate() {
        let (start, end) = ranges[i];
        if k > cluster_from && start < furthest_end {
            furthest_end = furthest_end.max(end);
        } else {
            mark_cluster(&by_start[cluster_from..k]);
            (cluster_from, furthest_end) = (k, end);
        }
    }
    mark_cluster(&by_start[cluster_from..]);
    shared
}
