//! The crash-state explorer behind `cargo xtask crash-test`: seeded and bounded-exhaustive
//! workloads, run once each on simulated devices, every crash state of their record checked
//! against the oracles, failures shrunk to the fewest operations and printed as one replay
//! command.

mod bounded;
mod check;
pub mod coverage;
#[allow(clippy::module_inception)]
mod explore;
mod panics;
pub mod phases;
mod readback;
mod run;
mod scenarios;
mod shrink;
mod workload;

pub use bounded::{alphabet, bounded_workloads, BoundedParams};
pub use check::{check_images, check_images_with, Finding, Kind, OracleSel, Recovered};
pub use explore::{
    choices_for, explore_orders, explore_workload, next_order, parse_case, replay_case,
    ExploreOpts, Level, OrderCoverage, PathStep, PointTally, Violation, WorkloadResult,
};
pub use panics::guarded;
pub use readback::{read_all, read_all_together, Plan};
pub use run::{
    drive, engine_config, initial_backing, new_world, open_on, record, recovery_config,
    sector_data, Recording, RunFailure,
};
pub use scenarios::{scenario_workloads, SCENARIOS};
pub use shrink::shrink;
pub use workload::{
    continuation, generate, Completion, FaultSet, GenParams, WlConfig, WlOp, Workload,
};

/// Names of the seed quirks this build can switch on (`engine::quirks`), for the zoo.
pub fn quirk_names() -> Vec<&'static str> {
    engine::quirks::Quirk::ALL
        .iter()
        .map(|q| q.name())
        .collect()
}
