//! What a bounded run covered of the orders its operations can complete in.

use crashsim::explore::OrderCoverage;

/// The completion orders of a run's workloads, summed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderTally {
    /// Orders explored, over all workloads.
    pub explored: u64,
    /// Workloads whose every order was explored.
    pub complete: u64,
    /// Workloads the bound stopped (or a violation ended) before every order was explored.
    pub capped: u64,
    /// The most orders one complete workload had.
    pub most: u64,
}

impl OrderTally {
    pub fn add(&mut self, c: OrderCoverage) {
        if c.explored == 0 {
            return;
        }
        self.explored += c.explored;
        if c.complete {
            self.complete += 1;
            self.most = self.most.max(c.explored);
        } else {
            self.capped += 1;
        }
    }

    /// Adds another run's tally (another shard's, say).
    pub fn merge(&mut self, o: &OrderTally) {
        self.explored += o.explored;
        self.complete += o.complete;
        self.capped += o.capped;
        self.most = self.most.max(o.most);
    }

    /// One line for the summary: what was exhaustive and what was not.
    pub fn describe(&self, bound: u64) -> String {
        let all = format!(
            "every completion order of {} workload(s) ({} orders; the most for one workload: {})",
            self.complete, self.explored, self.most
        );
        if self.capped == 0 {
            all
        } else {
            format!(
                "{all}; {} workload(s) NOT exhaustive in completion order: stopped at {bound} \
                 orders or at a violation (--orders N raises the bound)",
                self.capped
            )
        }
    }

    pub fn json(&self) -> String {
        format!(
            "{{\"explored\":{},\"complete_workloads\":{},\"capped_workloads\":{},\"most\":{}}}",
            self.explored, self.complete, self.capped, self.most
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_which_workloads_were_not_exhaustive() {
        let mut t = OrderTally::default();
        let cov = |explored, complete| OrderCoverage { explored, complete };
        t.add(cov(3, true));
        t.add(cov(1, true));
        assert_eq!((t.explored, t.complete, t.capped, t.most), (4, 2, 0, 3));
        assert!(!t.describe(8).contains("NOT"), "{}", t.describe(8));
        t.add(cov(8, false));
        let line = t.describe(8);
        assert!(
            line.contains("1 workload(s) NOT exhaustive") && line.contains("8 orders"),
            "{line}"
        );
    }
}
