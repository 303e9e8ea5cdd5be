//! Which workloads a shard runs: a stable partition by a hash of each workload's identity, so
//! adding workloads to the space never moves the others to another shard.

use crashsim::explore::Workload;

/// One shard of `count`, numbered from 1 as nextest's `--partition hash:M/N` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

/// The environment variable a Kubernetes Indexed Job sets to the pod's index (from 0).
pub const INDEX_VAR: &str = "JOB_COMPLETION_INDEX";

impl Shard {
    /// The whole space as one shard.
    pub const WHOLE: Shard = Shard { index: 1, count: 1 };

    /// `--shard M/N`, or `--shard N` with the index taken from `JOB_COMPLETION_INDEX` (`env`,
    /// 0-based, so shard index + 1). An index given both ways must agree.
    pub fn parse(s: &str, env: Option<&str>) -> Result<Shard, String> {
        let from_env = env
            .map(|v| {
                v.trim().parse::<u64>().map(|i| i + 1).map_err(|_| {
                    format!("{INDEX_VAR}={v:?} is not a shard index (a number from 0)")
                })
            })
            .transpose()?;
        let (index, count) = match s.split_once('/') {
            Some((m, n)) => {
                let m: u64 = m
                    .parse()
                    .map_err(|_| format!("--shard {s}: M in M/N is not a number"))?;
                (Some(m), n)
            }
            None => (None, s),
        };
        let count: u64 = count
            .parse()
            .map_err(|_| format!("--shard {s}: N is not a number"))?;
        let index = match (index, from_env) {
            (Some(m), Some(e)) if m != e => {
                return Err(format!(
                    "--shard {s} says shard {m}, but {INDEX_VAR} says shard {e} (index {})",
                    e - 1
                ))
            }
            (Some(m), _) => m,
            (None, Some(e)) => e,
            (None, None) => {
                return Err(format!(
                    "--shard {s}: give M/N, or set {INDEX_VAR} (as a Kubernetes Indexed Job does)"
                ))
            }
        };
        if count == 0 || index == 0 || index > count {
            return Err(format!(
                "--shard {index}/{count}: shards are numbered 1..=N (N at least 1)"
            ));
        }
        Ok(Shard { index, count })
    }

    /// Whether the workload with identity hash `id` is this shard's.
    pub fn owns(&self, id: u64) -> bool {
        id % self.count == self.index - 1
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// FNV-1a over `bytes`, then a finaliser (splitmix64's) so that `id % N` spreads evenly. Its
/// values are part of every saved shard result: never change it.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A workload's identity: the hash of its replayable text (geometry, settings and operations),
/// which does not depend on where in the space it sits.
pub fn workload_id(w: &Workload) -> u64 {
    stable_hash(w.to_string().as_bytes())
}

/// A hash of a list of workload ids that does not depend on their order.
pub fn id_set_hash(ids: impl IntoIterator<Item = u64>) -> u64 {
    ids.into_iter().fold(0u64, |acc, id| {
        acc.wrapping_add(stable_hash(&id.to_le_bytes()))
    })
}

/// What one finished workload adds to the run's fingerprint: its id and the ordered hash of
/// its crash states' fingerprints, combined so that the order in which threads and shards
/// finish workloads does not matter (a sum), while each workload's states stay in order.
pub fn fingerprint_term(id: u64, fingerprints: u64) -> u64 {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&id.to_le_bytes());
    b[8..].copy_from_slice(&fingerprints.to_le_bytes());
    stable_hash(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_pinned() {
        // Saved results depend on these values: a change here orphans every result on disk.
        assert_eq!(stable_hash(b""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(stable_hash(b"o=4;W0+8"), stable_hash(b"o=4;W0+8"));
        assert_ne!(stable_hash(b"o=4;W0+8"), stable_hash(b"o=4;W8+8"));
    }

    #[test]
    fn shards_parse_one_based_and_from_the_job_index() {
        assert_eq!(Shard::parse("2/4", None), Ok(Shard { index: 2, count: 4 }));
        assert_eq!(
            Shard::parse("4", Some("3")),
            Ok(Shard { index: 4, count: 4 })
        );
        assert_eq!(
            Shard::parse("1/4", Some("0")),
            Ok(Shard { index: 1, count: 4 })
        );
        for bad in ["0/4", "5/4", "1/0", "x/4", "4"] {
            assert!(Shard::parse(bad, None).is_err(), "{bad}");
        }
        let e = Shard::parse("2/4", Some("0")).unwrap_err();
        assert!(e.contains(INDEX_VAR), "{e}");
        assert!(
            Shard::parse("4", Some("4")).is_err(),
            "index 4 is shard 5 of 4"
        );
        assert!(Shard::parse("4", Some("-1")).is_err());
    }

    #[test]
    fn every_id_has_exactly_one_owner() {
        for id in (0..1000u64).map(|i| stable_hash(&i.to_le_bytes())) {
            let owners = (1..=4)
                .filter(|&m| Shard { index: m, count: 4 }.owns(id))
                .count();
            assert_eq!(owners, 1);
        }
    }
}
