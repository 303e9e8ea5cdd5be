//! Checking one crash state: recover on the crashed images, read every sector, ask the oracles,
//! check the engine's invariants, read again and compare.

use engine::format::SECTOR_SIZE;
use engine::{Config, DeviceRole, RecoveryReport, SyncEngine};
use models::{BlockOracle, Observed, PrefixOracle};

use super::phases::{timed, Phase};
use super::readback::{self, Plan};
use crate::{CrashImages, Image, ImageDevice};

/// Which oracles to ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OracleSel {
    Block,
    Prefix,
    Both,
}

impl OracleSel {
    pub fn block(self) -> bool {
        self != OracleSel::Prefix
    }
    pub fn prefix(self) -> bool {
        self != OracleSel::Block
    }

    /// The oracles for a workload: one that may bypass the cache is not held to the prefix
    /// oracle (rule 4) unless it was asked for alone.
    pub fn for_workload(self, w: &super::workload::Workload) -> OracleSel {
        if self == OracleSel::Both && w.may_bypass() {
            OracleSel::Block
        } else {
            self
        }
    }
}

/// What kind of check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The workload itself failed before any crash (wrong read-back, engine error, invariant).
    Run,
    /// Recovery refused the crashed images.
    Recovery,
    /// A read of the recovered device failed.
    Read,
    BlockOracle,
    PrefixOracle,
    Invariant,
    /// Two reads of the recovered device disagree.
    Stability,
    /// The tester itself could not build or check a crash state (a bug of the tester, not
    /// of the engine). Counted and reported like a violation, so no state is skipped silently.
    Harness,
    /// The engine, recovery or an oracle panicked (a broken invariant) while the workload ran
    /// or the state was checked.
    Panic,
    /// What the peer (dm-writeboost's replay, `crate::peer`) would show on the crashed images
    /// breaks an oracle.
    Peer,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Run => "run",
            Kind::Recovery => "recovery",
            Kind::Read => "read",
            Kind::BlockOracle => "block",
            Kind::PrefixOracle => "prefix",
            Kind::Invariant => "invariant",
            Kind::Stability => "stability",
            Kind::Harness => "harness",
            Kind::Panic => "panic",
            Kind::Peer => "peer",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    pub detail: String,
}

/// A recovered engine and what it showed. Its devices share the chunks recovery did not write
/// with the crash images it recovered.
pub struct Recovered {
    pub engine: SyncEngine<ImageDevice>,
    pub report: RecoveryReport,
    /// What the device read back; with the read-back shortcut, only the blocks `read` says.
    pub observed: Vec<u8>,
    /// Per block, whether it was read (`None`: all were).
    pub read: Option<Vec<bool>>,
    /// The peer-replay check judged these images (`crate::peer`).
    pub peer_judged: bool,
}

impl Recovered {
    /// The whole device: blocks the shortcut did not read hold `base`'s content.
    pub fn whole_observed(&mut self, base: &Image) -> &[u8] {
        if let Some(read) = self.read.take() {
            readback::fill_unread(&mut self.observed, &read, base);
        }
        &self.observed
    }
}

/// Judges what the peer would show on the crashed images, where the model judges them (an
/// orderly type-0 ring, `crate::peer`): the same oracles must accept it. Says whether it
/// judged them.
fn peer_findings(
    images: &CrashImages,
    config: &Config,
    oracles: (&BlockOracle<'_>, &PrefixOracle<'_>),
    sel: OracleSel,
) -> (Vec<Finding>, bool) {
    let (Some(cache), Some(backing)) = (
        images.get(DeviceRole::Cache),
        images.get(DeviceRole::Backing),
    ) else {
        return (Vec::new(), false);
    };
    if images.get(DeviceRole::Plog).is_some() {
        return (Vec::new(), false);
    }
    let Some(view) = crate::peer::peer_view(cache, backing, config.segment_size_order) else {
        return (Vec::new(), false);
    };
    let verdicts = [
        (
            sel.block(),
            oracles.0.check(&view).err().map(|v| v.to_string()),
        ),
        (
            sel.prefix(),
            oracles.1.check(&view).err().map(|v| v.to_string()),
        ),
    ];
    let findings = verdicts
        .into_iter()
        .filter_map(|(asked, v)| v.filter(|_| asked))
        .map(|v| Finding {
            kind: Kind::Peer,
            detail: format!("dm-writeboost's replay of these images would show: {v}"),
        })
        .collect();
    (findings, true)
}

/// Recovers from `images` and checks the result. Returns the findings (empty = the state is
/// good) and, when recovery worked, the recovered engine for further work. A panic in
/// recovery, the engine or the oracles is a finding of kind `Panic`.
pub fn check_images(
    images: CrashImages,
    config: Config,
    oracles: (&BlockOracle<'_>, &PrefixOracle<'_>),
    sel: OracleSel,
) -> (Vec<Finding>, Option<Recovered>) {
    check_images_with(images, config, oracles, sel, Plan::default())
}

/// As [`check_images`], reading the device back as `plan` says.
pub fn check_images_with(
    images: CrashImages,
    config: Config,
    oracles: (&BlockOracle<'_>, &PrefixOracle<'_>),
    sel: OracleSel,
    plan: Plan<'_>,
) -> (Vec<Finding>, Option<Recovered>) {
    super::panics::guarded(|| check_images_unguarded(images, config, oracles, sel, plan))
        .unwrap_or_else(|why| {
            let finding = Finding {
                kind: Kind::Panic,
                detail: format!("panicked while recovering or checking: {why}"),
            };
            (vec![finding], None)
        })
}

fn check_images_unguarded(
    mut images: CrashImages,
    config: Config,
    oracles: (&BlockOracle<'_>, &PrefixOracle<'_>),
    sel: OracleSel,
    plan: Plan<'_>,
) -> (Vec<Finding>, Option<Recovered>) {
    // Judged first (recovery takes the images), reported after recovery's own findings.
    let (peer, peer_judged) = timed(Phase::Oracles, || {
        peer_findings(&images, &config, oracles, sel)
    });
    let mut findings = Vec::new();
    let take = |images: &mut CrashImages, role| images.take(role).map(ImageDevice::new);
    let (Some(cache), Some(backing)) = (
        take(&mut images, DeviceRole::Cache),
        take(&mut images, DeviceRole::Backing),
    ) else {
        findings.push(Finding {
            kind: Kind::Recovery,
            detail: "crash images lack a device".into(),
        });
        findings.extend(peer);
        return (findings, None);
    };
    let plog = take(&mut images, DeviceRole::Plog);
    let opened = timed(Phase::Recovery, || {
        SyncEngine::open_with_plog(cache, backing, plog, config)
    });
    let (mut engine, report) = match opened {
        Ok(x) => x,
        Err(e) => {
            findings.push(Finding {
                kind: Kind::Recovery,
                detail: format!("recovery failed: {e}"),
            });
            findings.extend(peer);
            return (findings, None);
        }
    };
    if let Err(e) = timed(Phase::Invariants, || engine.check_invariants()) {
        findings.push(Finding {
            kind: Kind::Invariant,
            detail: format!("after recovery: {e}"),
        });
    }
    let read = timed(Phase::ReadBack, || {
        plan.base
            .map(|base| readback::blocks_to_read(&engine, base))
    });
    let size = engine.size_sectors();
    let ranges = readback::ranges(read.as_deref(), size);
    let mut observed = vec![0u8; size as usize * SECTOR_SIZE];
    if let Err(e) = timed(Phase::ReadBack, || {
        readback::read_ranges(&mut engine, &ranges, &mut observed)
    }) {
        findings.push(Finding {
            kind: Kind::Read,
            detail: e,
        });
        findings.extend(peer);
        return (findings, None);
    }
    let seen = Observed {
        bytes: &observed,
        read: read.as_deref(),
    };
    let (block, prefix) = timed(Phase::Oracles, || {
        (
            sel.block().then(|| oracles.0.check_observed(seen)),
            sel.prefix().then(|| oracles.1.check_observed(seen)),
        )
    });
    if let Some(Err(v)) = block {
        findings.push(Finding {
            kind: Kind::BlockOracle,
            detail: v.to_string(),
        });
    }
    if let Some(Err(v)) = prefix {
        findings.push(Finding {
            kind: Kind::PrefixOracle,
            detail: v.to_string(),
        });
    }
    let mut again = vec![0u8; observed.len()];
    let second = timed(Phase::ReadBack, || {
        readback::read_ranges_together(&mut engine, &ranges, &mut again)
    });
    match second {
        Ok(()) => {
            if let Some(s) = readback::first_difference(&ranges, &again, &observed) {
                findings.push(Finding {
                    kind: Kind::Stability,
                    detail: format!(
                        "a second read, with up to 32 reads in flight together, differs first at sector {s}"
                    ),
                });
            }
        }
        Err(e) => findings.push(Finding {
            kind: Kind::Stability,
            detail: format!("second read: {e}"),
        }),
    }
    if let (Some(read), Some(base), true) = (&read, plan.base, plan.cross_check) {
        let crossed = timed(Phase::ReadBack, || {
            cross_check(&mut engine, read, base, &observed)
        });
        findings.extend(crossed);
    }
    findings.extend(peer);
    (
        findings,
        Some(Recovered {
            engine,
            report,
            observed,
            read,
            peer_judged,
        }),
    )
}

/// The read-back shortcut's proof, checked: the whole device read through the engine must
/// hold what was read where it was read, and `base`'s content everywhere else.
fn cross_check(
    engine: &mut SyncEngine<ImageDevice>,
    read: &[bool],
    base: &Image,
    observed: &[u8],
) -> Option<Finding> {
    let full = match readback::read_all(engine) {
        Ok(f) => f,
        Err(e) => {
            return Some(Finding {
                kind: Kind::Read,
                detail: format!("full read-back (the shortcut's cross-check): {e}"),
            })
        }
    };
    let mut expected = observed.to_vec();
    readback::fill_unread(&mut expected, read, base);
    let size = (full.len() / SECTOR_SIZE) as u64;
    let s = readback::first_difference(&[(0, size)], &full, &expected)?;
    Some(Finding {
        kind: Kind::Stability,
        detail: format!(
            "the read-back shortcut's proof fails at sector {s}: the whole device read \
             through the engine differs there from what the shortcut concluded ({})",
            if read[(s / engine::format::SECTORS_PER_BLOCK) as usize] {
                "a block it read"
            } else {
                "a block it took as the initial content"
            }
        ),
    })
}
