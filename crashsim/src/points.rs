//! Where to cut power (docs/DESIGN.md, "Crash simulator and oracles"), and what the client had been told by then.

use crate::crash::CrashPoint;
use crate::log::{ClientOp, Event};
use crate::world::World;
use models::{OpCut, OpId};
use std::collections::BTreeSet;

/// Which crash points [`World::crash_points`] lists. The end of the log is always included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PointSelection {
    /// Before and after every device flush.
    pub around_flushes: bool,
    /// Before and after every write the engine asked to be FUA.
    pub around_fua_writes: bool,
    /// Right after the engine acknowledged a client FLUSH or FUA write (its `ClientEnd`).
    pub after_client_flushes: bool,
    /// After every device write (fine mode).
    pub after_every_write: bool,
    /// At every harness mark.
    pub at_marks: bool,
}

impl PointSelection {
    /// Flushes, FUA writes and client FLUSH completions.
    pub fn standard() -> Self {
        PointSelection {
            around_flushes: true,
            around_fua_writes: true,
            after_client_flushes: true,
            ..PointSelection::default()
        }
    }

    /// Everything.
    pub fn fine() -> Self {
        PointSelection {
            after_every_write: true,
            at_marks: true,
            ..PointSelection::standard()
        }
    }
}

impl World {
    /// The selected crash points of the log so far, ascending and without duplicates.
    pub fn crash_points(&self, sel: PointSelection) -> Vec<CrashPoint> {
        let mut points = BTreeSet::new();
        let mut flush_ops: BTreeSet<OpId> = BTreeSet::new();
        for e in &self.log {
            let seq = e.seq;
            let around = (sel.around_flushes && e.event.is_device_flush())
                || (sel.around_fua_writes && e.event.is_fua_write());
            if around {
                points.insert(CrashPoint::before(seq));
                points.insert(CrashPoint::after(seq));
            }
            if sel.after_every_write && e.event.is_device_write() {
                points.insert(CrashPoint::after(seq));
            }
            match &e.event {
                Event::Mark(_) if sel.at_marks => {
                    points.insert(CrashPoint::before(seq));
                }
                // A FUA write's completion promises durability just like a FLUSH's.
                Event::ClientBegin {
                    op,
                    what: ClientOp::Flush | ClientOp::Write { fua: true, .. },
                } => {
                    flush_ops.insert(*op);
                }
                Event::ClientEnd { op, ok: true }
                    if sel.after_client_flushes && flush_ops.contains(op) =>
                {
                    points.insert(CrashPoint::after(seq));
                }
                _ => {}
            }
        }
        points.insert(CrashPoint::end(self));
        points.into_iter().collect()
    }

    /// What the client had been told at `point`, as a cut of its `models::History`: the client
    /// operations begun before the point (ids run 0, 1, 2, … as the history numbers them) and
    /// whether the last of them had been answered. Use with `History::as_of`.
    pub fn client_cut(&self, point: CrashPoint) -> OpCut {
        let mut last: Option<(OpId, bool)> = None;
        for e in self.log.iter().take(point.before as usize) {
            match &e.event {
                Event::ClientBegin { op, .. } => last = Some((*op, false)),
                Event::ClientEnd { op, .. } => {
                    if let Some((begun, ended)) = &mut last {
                        if begun == op {
                            *ended = true;
                        }
                    }
                }
                _ => {}
            }
        }
        match last {
            None => OpCut {
                begun: 0,
                last_ended: true,
            },
            Some((op, ended)) => OpCut {
                begun: op.0 as usize + 1,
                last_ended: ended,
            },
        }
    }
}
