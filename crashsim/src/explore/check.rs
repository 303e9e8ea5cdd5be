//! Checking one crash state: recover on the crashed images, read every sector, ask the oracles,
//! check the engine's invariants, read again and compare.

use engine::format::SECTOR_SIZE;
use engine::{BlockDevice, Config, DeviceRole, RecoveryReport, SyncEngine};
use models::{BlockOracle, PrefixOracle};

use crate::{CrashImages, ImageDevice};

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
    pub observed: Vec<u8>,
    /// The peer-replay check judged these images (`crate::peer`).
    pub peer_judged: bool,
}

/// Reads the whole exported device.
pub fn read_all<D: BlockDevice>(engine: &mut SyncEngine<D>) -> Result<Vec<u8>, String> {
    let size = engine.size_sectors();
    let mut out = vec![0u8; size as usize * SECTOR_SIZE];
    const CHUNK: u64 = 128;
    let mut s = 0;
    while s < size {
        let n = CHUNK.min(size - s);
        let at = s as usize * SECTOR_SIZE;
        engine
            .read(s, &mut out[at..at + n as usize * SECTOR_SIZE])
            .map_err(|e| format!("read of sectors {s}+{n} failed: {e}"))?;
        s += n;
    }
    Ok(out)
}

/// Reads the whole exported device the way the runner serves a client's queue: up to 32 reads
/// in flight together (`SyncEngine::read_many`), of lengths that cycle through `PIECES`, so
/// most pieces start or end inside a 4 KiB block and the planner merges dirty sectors, RAM
/// copies and backing data for several reads at once. The second read-back of every state
/// goes through it, so a bug of concurrent reads is a `Stability` finding.
pub fn read_all_together<D: BlockDevice>(engine: &mut SyncEngine<D>) -> Result<Vec<u8>, String> {
    const IN_FLIGHT: usize = 32;
    // Sector counts: single sectors, pieces inside a block, across one boundary, several blocks.
    const PIECES: [u64; 8] = [1, 7, 3, 9, 15, 31, 100, 128];
    let size = engine.size_sectors();
    let mut out = vec![0u8; size as usize * SECTOR_SIZE];
    let mut pieces = Vec::new();
    let (mut s, mut k) = (0u64, 0u64);
    while s < size {
        let n = PIECES[(k % PIECES.len() as u64) as usize].min(size - s);
        pieces.push((s, n));
        s += n;
        k += 1;
    }
    for batch in pieces.chunks(IN_FLIGHT) {
        let (first, last) = (batch[0].0, batch[batch.len() - 1]);
        let end = (last.0 + last.1) as usize * SECTOR_SIZE;
        let mut rest = &mut out[first as usize * SECTOR_SIZE..end];
        let mut reqs = Vec::with_capacity(batch.len());
        for &(sector, n) in batch {
            let (buf, tail) = rest.split_at_mut(n as usize * SECTOR_SIZE);
            reqs.push(engine::ReadReq { sector, buf });
            rest = tail;
        }
        for (r, &(sector, n)) in engine.read_many(&mut reqs).into_iter().zip(batch) {
            r.map_err(|e| format!("read of sectors {sector}+{n} (with others) failed: {e}"))?;
        }
    }
    Ok(out)
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
    super::panics::guarded(|| check_images_unguarded(images, config, oracles, sel)).unwrap_or_else(
        |why| {
            let finding = Finding {
                kind: Kind::Panic,
                detail: format!("panicked while recovering or checking: {why}"),
            };
            (vec![finding], None)
        },
    )
}

fn check_images_unguarded(
    mut images: CrashImages,
    config: Config,
    oracles: (&BlockOracle<'_>, &PrefixOracle<'_>),
    sel: OracleSel,
) -> (Vec<Finding>, Option<Recovered>) {
    // Judged first (recovery takes the images), reported after recovery's own findings.
    let (peer, peer_judged) = peer_findings(&images, &config, oracles, sel);
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
    let (mut engine, report) = match SyncEngine::open_with_plog(cache, backing, plog, config) {
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
    if let Err(e) = engine.check_invariants() {
        findings.push(Finding {
            kind: Kind::Invariant,
            detail: format!("after recovery: {e}"),
        });
    }
    let observed = match read_all(&mut engine) {
        Ok(o) => o,
        Err(e) => {
            findings.push(Finding {
                kind: Kind::Read,
                detail: e,
            });
            findings.extend(peer);
            return (findings, None);
        }
    };
    if sel.block() {
        if let Err(v) = oracles.0.check(&observed) {
            findings.push(Finding {
                kind: Kind::BlockOracle,
                detail: v.to_string(),
            });
        }
    }
    if sel.prefix() {
        if let Err(v) = oracles.1.check(&observed) {
            findings.push(Finding {
                kind: Kind::PrefixOracle,
                detail: v.to_string(),
            });
        }
    }
    match read_all_together(&mut engine) {
        Ok(again) if again == observed => {}
        Ok(again) => findings.push(Finding {
            kind: Kind::Stability,
            detail: format!(
                "a second read, with up to 32 reads in flight together, differs first at sector {}",
                again
                    .iter()
                    .zip(&observed)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0)
                    / SECTOR_SIZE
            ),
        }),
        Err(e) => findings.push(Finding {
            kind: Kind::Stability,
            detail: format!("second read: {e}"),
        }),
    }
    findings.extend(peer);
    (
        findings,
        Some(Recovered {
            engine,
            report,
            observed,
            peer_judged,
        }),
    )
}
