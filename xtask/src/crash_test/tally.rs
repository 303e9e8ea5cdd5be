//! What a run (or a shard, or a merge of shards) has checked so far, as a plain value that
//! saves to and loads from a shard result file.

use std::collections::BTreeMap;

use crashsim::explore::coverage::{SimCounts, SimProbe};
use crashsim::explore::{OrderCoverage, PointTally, WorkloadResult};
use engine::probes::{Counts, Probe};
use serde::{Deserialize, Serialize};

use super::orders::OrderTally;
use super::shard::fingerprint_term;

/// The sums over every workload explored to the end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub states: u64,
    pub workloads: u64,
    pub violations: u64,
    /// Workloads with at least one sampled crash point.
    pub sampled_workloads: u64,
    /// The sum of each workload's `fingerprint_term`: equal for equal work, however the
    /// workloads were ordered, threaded or sharded.
    pub fingerprints: u64,
    pub orders: OrderTally,
    pub points: PointTally,
}

/// A `Tally` as a result file holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TallyRecord {
    pub states: u64,
    pub workloads: u64,
    pub violations: u64,
    pub sampled_workloads: u64,
    /// Hex, so that no JSON reader rounds it.
    pub fingerprints: String,
    pub orders: OrderTally,
    pub points: Points,
}

impl Tally {
    /// Adds one workload explored to its end.
    pub fn add_workload(&mut self, id: u64, r: &WorkloadResult, cov: OrderCoverage) {
        self.states += r.states;
        self.workloads += 1;
        self.violations += r.violation_count;
        self.sampled_workloads += u64::from(r.points.sampled > 0);
        self.fingerprints = self
            .fingerprints
            .wrapping_add(fingerprint_term(id, r.fingerprints));
        self.orders.add(cov);
        self.points.add(r.points);
    }

    /// Adds another run's (or shard's) tally.
    pub fn add(&mut self, o: &Tally) {
        self.states += o.states;
        self.workloads += o.workloads;
        self.violations += o.violations;
        self.sampled_workloads += o.sampled_workloads;
        self.fingerprints = self.fingerprints.wrapping_add(o.fingerprints);
        self.orders.merge(&o.orders);
        self.points.add(o.points);
    }

    pub fn record(&self) -> TallyRecord {
        TallyRecord {
            states: self.states,
            workloads: self.workloads,
            violations: self.violations,
            sampled_workloads: self.sampled_workloads,
            fingerprints: format!("{:016x}", self.fingerprints),
            orders: self.orders,
            points: Points::from_tally(&self.points),
        }
    }

    pub fn from_record(r: &TallyRecord) -> Result<Tally, String> {
        Ok(Tally {
            states: r.states,
            workloads: r.workloads,
            violations: r.violations,
            sampled_workloads: r.sampled_workloads,
            fingerprints: u64::from_str_radix(&r.fingerprints, 16)
                .map_err(|_| format!("fingerprints {:?} is not a hex number", r.fingerprints))?,
            orders: r.orders,
            points: r.points.to_tally()?,
        })
    }
}

/// A `PointTally` by name (its phase times, which judge nothing, are left out).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Points {
    pub all_subsets: u64,
    pub sampled: u64,
    pub repeated: u64,
    pub peer_judged: u64,
    pub no_prefix: u64,
    /// Engine probes by name (every one, zeros included, so a file says what never fired).
    pub probes: BTreeMap<String, u64>,
    /// Simulator probes by name.
    pub sim: BTreeMap<String, u64>,
    /// Passes of each seed quirk's sites with the quirk on, by quirk number.
    pub quirk_sites: Vec<u64>,
}

impl Points {
    pub fn from_tally(t: &PointTally) -> Points {
        Points {
            all_subsets: t.all_subsets,
            sampled: t.sampled,
            repeated: t.repeated,
            peer_judged: t.peer_judged,
            no_prefix: t.no_prefix,
            probes: Probe::ALL
                .into_iter()
                .map(|p| (p.name().to_string(), t.probes.get(p)))
                .collect(),
            sim: SimProbe::ALL
                .into_iter()
                .map(|p| (p.name().to_string(), t.sim.get(p)))
                .collect(),
            quirk_sites: t.probes.quirk_sites().to_vec(),
        }
    }

    /// The `PointTally` again; an error names a probe this build does not know (a result of
    /// another build).
    pub fn to_tally(&self) -> Result<PointTally, String> {
        let mut probes = Counts::default();
        for (name, &n) in &self.probes {
            let p = Probe::ALL
                .into_iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| format!("unknown engine probe {name:?}"))?;
            probes.set(p, n);
        }
        for (i, &n) in self.quirk_sites.iter().enumerate() {
            probes
                .set_quirk_site(i, n)
                .ok_or_else(|| format!("quirk site slot {i} does not exist in this build"))?;
        }
        let mut sim = SimCounts::default();
        for (name, &n) in &self.sim {
            let p = SimProbe::ALL
                .into_iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| format!("unknown simulator probe {name:?}"))?;
            sim.0[p as usize] = n;
        }
        Ok(PointTally {
            all_subsets: self.all_subsets,
            sampled: self.sampled,
            repeated: self.repeated,
            peer_judged: self.peer_judged,
            no_prefix: self.no_prefix,
            probes,
            sim,
            phases: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_survive_a_round_trip_through_json() {
        let mut t = PointTally {
            all_subsets: 3,
            sampled: 1,
            no_prefix: 2,
            ..PointTally::default()
        };
        t.probes.set(Probe::Flush, 7);
        t.probes.set_quirk_site(2, 5).unwrap();
        t.sim.hit(SimProbe::ALL[0]);
        let p = Points::from_tally(&t);
        let text = serde_json::to_string(&p).unwrap();
        let back: Points = serde_json::from_str(&text).unwrap();
        assert_eq!(back.to_tally().unwrap(), t);
        let mut bad = back.clone();
        bad.probes.insert("no-such-probe".into(), 1);
        assert!(bad.to_tally().unwrap_err().contains("no-such-probe"));
    }
}
