//! The workloads a crash-test run explores, built from its options alone: the same options
//! give the same space on every machine, which is what lets shards add up.

use clap::ValueEnum;
use crashsim::explore::{
    bounded_workloads, generate, scenario_workloads, BoundedParams, FaultSet, GenParams, WlOp,
    Workload, SCENARIOS,
};

use super::CrashTestArgs;

/// A run's space of workloads.
pub struct Space {
    pub workloads: Vec<Workload>,
    /// Bounded mode: the space in words, for the summary.
    pub bounded: Option<String>,
}

/// The fault switches and atomic unit of the options, checked.
pub fn faults_and_unit(args: &CrashTestArgs) -> Result<(FaultSet, Option<u64>), String> {
    let mut faults = FaultSet::default();
    for f in &args.faults {
        faults.set(f)?;
    }
    let unit_sectors = match args.unit {
        None => None,
        Some(512) => Some(1),
        Some(4096) => Some(8),
        Some(u) => return Err(format!("--unit {u}: the atomic unit is 512 or 4096 bytes")),
    };
    Ok((faults, unit_sectors))
}

/// Every workload of the run's space, in space order (before any sharding), with the
/// operations `--without` names left out.
pub fn build(args: &CrashTestArgs) -> Result<Space, String> {
    let (faults, unit_sectors) = faults_and_unit(args)?;
    let (mut workloads, bounded) = match args.bounded {
        Some(len) => bounded_space(args, len, faults, unit_sectors)?,
        None => (seeded_space(args, faults, unit_sectors)?, None),
    };
    for w in &mut workloads {
        w.ops.retain(|op| !left_out(&args.without, op));
    }
    Ok(Space { workloads, bounded })
}

fn bounded_space(
    args: &CrashTestArgs,
    len: usize,
    faults: FaultSet,
    unit_sectors: Option<u64>,
) -> Result<(Vec<Workload>, Option<String>), String> {
    if !(2..=3).contains(&args.bounded_blocks) || !(2..=4).contains(&args.bounded_slots) {
        return Err("--bounded-blocks is 2..=3 and --bounded-slots 2..=4".into());
    }
    let order = args.order.unwrap_or(engine::format::MIN_ORDER);
    if !(4..=5).contains(&order) {
        return Err(format!("--bounded runs at --order 4 or 5, not {order}"));
    }
    let p = BoundedParams {
        max_len: len,
        blocks: args.bounded_blocks,
        nr_segments: args.bounded_slots,
        unit_sectors: unit_sectors.unwrap_or(1),
        faults,
        quirks: args.quirks.clone(),
        order,
        cache_type: args.cache_type,
    };
    let all: Vec<Workload> = bounded_workloads(&p).collect();
    let ops: Vec<String> = crashsim::explore::alphabet(p.blocks)
        .iter()
        .map(|op| op.to_string())
        .collect();
    let geometry = all.first().map(|w| w.to_string()).unwrap_or_default();
    let geometry = geometry.split(';').next().unwrap_or_default().to_string();
    let space = format!(
        "every workload of up to {len} operations over the alphabet {{{}}} on the geometry \
         {geometry}",
        ops.join(" ")
    );
    Ok((all, Some(space)))
}

/// The hand-written hazard scenarios first (with the run's faults, quirks and unit), then the
/// seeded workloads.
fn seeded_space(
    args: &CrashTestArgs,
    faults: FaultSet,
    unit_sectors: Option<u64>,
) -> Result<Vec<Workload>, String> {
    let gp = GenParams {
        order: args.order,
        unit_sectors,
        faults,
        quirks: args.quirks.clone(),
        cache_type: args.cache_type,
        min_ops: 6,
        max_ops: 40,
        swarm: args.quirks.is_empty() && args.faults.is_empty() && !args.no_swarm,
    };
    let mut all = Vec::new();
    for (name, mut w) in scenario_workloads() {
        if args.scenario.as_ref().is_some_and(|s| s != name) {
            continue;
        }
        w.config.faults = faults;
        w.config.quirks = args.quirks.clone();
        if args.cache_type == 1 && w.config.cache_type == 0 {
            // Every hazard scenario also runs against the plog.
            w.config.cache_type = 1;
            w.config.plog_regions = 2;
        }
        if let Some(u) = unit_sectors {
            w.config.unit_sectors = u;
        }
        all.push(w);
    }
    if let Some(name) = &args.scenario {
        if all.is_empty() {
            let names: Vec<&str> = SCENARIOS.iter().map(|s| s.0).collect();
            return Err(format!(
                "no scenario {name:?} (known: {})",
                names.join(", ")
            ));
        }
        return Ok(all);
    }
    let first = args.seed;
    all.extend((0..args.seeds).map(|i| generate(first.wrapping_add(i), &gp)));
    Ok(all)
}

/// Whether `--without` leaves `op` out.
fn left_out(without: &[String], op: &WlOp) -> bool {
    without.iter().any(|w| match (w.as_str(), op) {
        ("zeroes", WlOp::Discard { .. } | WlOp::Zeroes { .. }) => true,
        ("reads", WlOp::ReadMany { .. }) => true,
        ("fua", WlOp::Write { fua: true, .. }) => true,
        (
            "partial",
            WlOp::Write {
                sector, sectors, ..
            },
        ) => sector % 8 != 0 || sectors % 8 != 0,
        ("background", WlOp::Background(_)) => true,
        ("messages", WlOp::DropCaches | WlOp::Tick | WlOp::Tunable { .. }) => true,
        _ => false,
    })
}

/// The options that define the space and how it is judged, spelt out in full: what a result
/// file records as its configuration, and what `merge` rebuilds the space from.
pub fn config_words(args: &CrashTestArgs) -> Vec<String> {
    let mut w: Vec<String> = Vec::new();
    let mut push = |k: &str, v: String| {
        w.push(k.to_string());
        w.push(v);
    };
    push("--seed", args.seed.to_string());
    push("--seeds", args.seeds.to_string());
    let oracle = args
        .oracle
        .to_possible_value()
        .expect("every oracle has a name");
    push("--oracle", oracle.get_name().to_string());
    push("--type", args.cache_type.to_string());
    push("--bounded-blocks", args.bounded_blocks.to_string());
    push("--bounded-slots", args.bounded_slots.to_string());
    push("--orders", args.orders.to_string());
    for f in &args.faults {
        push("--fault", f.clone());
    }
    for q in &args.quirks {
        push("--quirk", q.clone());
    }
    for x in &args.without {
        push("--without", x.clone());
    }
    if let Some(o) = args.order {
        push("--order", o.to_string());
    }
    if let Some(u) = args.unit {
        push("--unit", u.to_string());
    }
    if let Some(l) = args.bounded {
        push("--bounded", l.to_string());
    }
    if let Some(s) = &args.scenario {
        push("--scenario", s.clone());
    }
    let flags = [
        ("--exhaustive", args.exhaustive),
        ("--fine", args.fine),
        ("--no-swarm", args.no_swarm),
        ("--no-shortcuts", args.no_shortcuts),
    ];
    w.extend(flags.iter().filter(|f| f.1).map(|f| f.0.to_string()));
    w
}
