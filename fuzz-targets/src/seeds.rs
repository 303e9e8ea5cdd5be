//! The seed corpora: a handful of meaningful inputs per target, written as structured values
//! (the targets' `Input` types) and turned into bytes by [`crate::encode`], so that decoding a
//! seed file gives back exactly the value written here. `cargo run -p wbcache-fuzz-targets
//! --example seeds` writes them to `fuzz/corpus/<target>/`; `tests/corpora.rs` checks that every
//! seed decodes to its value, that the committed files are these seeds, and what the corpora
//! reach (every op kind, both cache types, every template, every NBD command, ...).

use crate::encode::to_bytes;
use crate::image::{ImageInput, Patch};
use crate::nbd_stream::{
    Cmd, Handshake, Input as NbdInput, Length, Name, NbdOption, Offset, OptCode, OptData, Request,
};
use crate::ops::{Crash, Input as OpsInput, Op, Persisted, Setup, StepKind};

/// A seed's structured value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Ops(OpsInput),
    Image(ImageInput),
    Nbd(NbdInput),
}

/// One seed.
pub struct Seed {
    pub target: &'static str,
    pub name: String,
    pub value: Value,
}

impl Seed {
    /// The file's content.
    pub fn bytes(&self) -> Vec<u8> {
        match &self.value {
            Value::Ops(v) => to_bytes(v),
            Value::Image(v) => to_bytes(v),
            Value::Nbd(v) => to_bytes(v),
        }
    }

    /// What the target's decoder makes of [`Seed::bytes`], as a [`Value`].
    pub fn decoded(&self) -> Option<Value> {
        let b = self.bytes();
        match self.value {
            Value::Ops(_) => crate::decode(&b).map(Value::Ops),
            Value::Image(_) => crate::decode(&b).map(Value::Image),
            Value::Nbd(_) => crate::decode(&b).map(Value::Nbd),
        }
    }
}

/// Every seed.
pub fn seeds() -> Vec<Seed> {
    let mut v = Vec::new();
    let mut add = |target, name: &str, value| {
        v.push(Seed {
            target,
            name: name.to_string(),
            value,
        })
    };
    for (name, input) in ops() {
        add("ops", name, Value::Ops(input));
    }
    for (name, input) in images(Some(false)) {
        add("cache_image", &name, Value::Image(input));
    }
    for (name, input) in images(None) {
        add("check", &name, Value::Image(input));
    }
    for (name, input) in images(Some(true)) {
        add("plog_image", &name, Value::Image(input));
    }
    for (name, input) in nbd() {
        add("nbd_stream", name, Value::Nbd(input));
    }
    v
}

/// `(target, file name, bytes)` of every seed.
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    seeds()
        .into_iter()
        .map(|s| {
            let b = s.bytes();
            (s.target, s.name, b)
        })
        .collect()
}

// ----- ops -----

fn w(block: u8) -> Op {
    Op::Write { block }
}
fn part(block: u8, first: u8, count: u8) -> Op {
    Op::Partial {
        block,
        first,
        count: count - 1,
        fua: false,
    }
}
fn multi(sector: u8, len: u8) -> Op {
    Op::Multi {
        sector,
        len: len - 1,
        fua: false,
    }
}
fn fua(block: u8) -> Op {
    Op::Fua { block }
}
fn discard(sector: u8, len: u8) -> Op {
    Op::Discard {
        sector,
        len: len - 1,
    }
}
fn zeroes(sector: u8, len: u8, fua: bool) -> Op {
    Op::Zeroes {
        sector,
        len: len - 1,
        fua,
    }
}
fn reads(sector: u8, len: u8) -> Op {
    Op::ReadMany {
        sector,
        len: len - 1,
    }
}
const F: Op = Op::Flush;
fn step(k: StepKind) -> Op {
    Op::Step(k)
}
fn bg(k: StepKind) -> Op {
    Op::Background(k)
}

/// Type 0, order 4, 512-byte units, no faults, 2 slots, 4 backing blocks, pool 1, batch 1,
/// writeback ahead of need, in-order completion, seed 1.
fn base() -> Setup {
    Setup {
        type1: false,
        order5: false,
        unit8: false,
        garbage_torn: false,
        eio_write: false,
        eio_read: false,
        slots: 0,
        backing_blocks: 2,
        pool: 0,
        batch: 0,
        plog_regions: 0,
        behind: false,
        allow_writeback: false,
        completion: None,
        seed: 1,
        zero_torn: false,
        torn_runs: false,
        intervals: false,
    }
}

fn cut(point: u16, persisted: Vec<Persisted>) -> Crash {
    Crash { point, persisted }
}

fn input(setup: Setup, ops: &[Op], cuts: &[Crash], recovery: Option<Crash>) -> OpsInput {
    OpsInput {
        setup,
        ops: ops.to_vec(),
        first: cuts[0].clone(),
        more: cuts[1..].to_vec(),
        recovery_cut: recovery,
    }
}

fn ops() -> Vec<(&'static str, OpsInput)> {
    use Persisted::{Lost, Torn, Whole};
    use StepKind::*;
    let basic = [w(0), part(1, 2, 3), F, w(1), fua(2), w(0), discard(8, 8), F];
    let wrap: Vec<Op> = (0..16)
        .flat_map(|i| {
            let mut x = vec![w(i % 4)];
            if i % 3 == 2 {
                x.push(F);
            }
            if i % 4 == 3 {
                x.push(step(Writeback));
                x.push(step(Record));
            }
            x
        })
        .collect();
    let steps = [
        w(0),
        w(1),
        step(Seal),
        step(FlushSegment),
        step(Writeback),
        step(Record),
        part(0, 3, 2),
        step(Sync),
        multi(5, 20),
        F,
        step(Writeback),
        step(Record),
        w(2),
    ];
    // Background steps left running while writes, zeroes and reads race them.
    let racing = [
        w(0),
        w(1),
        bg(Seal),
        w(2),
        reads(0, 24),
        F,
        bg(Writeback),
        zeroes(9, 12, false),
        part(0, 1, 4),
        bg(Record),
        reads(4, 9),
        zeroes(16, 8, true),
        bg(FlushSegment),
        F,
        bg(Sync),
        w(3),
        reads(0, 32),
    ];
    // Messages and the timer: intervals come due, a drain is interrupted, values out of range
    // are refused, the cache is formatted again under the device.
    let messages = [
        w(0),
        Op::Tunable { index: 5, value: 1 },
        Op::Tick,
        w(1),
        Op::DropCaches,
        w(2),
        Op::Tunable { index: 0, value: 7 },
        Op::Tunable { index: 3, value: 2 },
        Op::Tick,
        F,
        Op::Reformat,
        w(3),
        Op::Tick,
        F,
    ];
    let a = [
        cut(5, vec![Whole, Whole, Lost, Torn(vec![0x55, 0xAA]), Whole]),
        cut(40, vec![Lost, Whole, Torn(vec![0x0f]), Whole]),
        cut(2, vec![Whole]),
    ];
    let b = [
        cut(200, vec![Torn(vec![0xf0, 0x0f]), Torn(vec![0x33]), Whole]),
        cut(9, vec![Whole, Lost, Whole]),
        cut(77, vec![]),
    ];
    let rec = Some(cut(3, vec![Whole, Torn(vec![0x01])]));
    let t1 = Setup {
        type1: true,
        ..base()
    };
    vec![
        ("t0-basic", input(base(), &basic, &a[..2], None)),
        (
            "t0-wrap",
            input(Setup { batch: 1, ..base() }, &wrap, &b, rec.clone()),
        ),
        (
            "t0-steps-o5-unit8",
            input(
                Setup {
                    order5: true,
                    unit8: true,
                    slots: 1,
                    backing_blocks: 6,
                    pool: 1,
                    ..base()
                },
                &steps,
                &a[..2],
                rec.clone(),
            ),
        ),
        (
            "t0-garbage-torn",
            input(
                Setup {
                    garbage_torn: true,
                    slots: 2,
                    backing_blocks: 3,
                    pool: 2,
                    ..base()
                },
                &basic,
                &b,
                None,
            ),
        ),
        (
            "t0-racing",
            input(
                Setup {
                    behind: true,
                    allow_writeback: true,
                    completion: Some(7),
                    backing_blocks: 5,
                    pool: 1,
                    ..base()
                },
                &racing,
                &a,
                rec.clone(),
            ),
        ),
        (
            "t1-basic",
            input(
                Setup {
                    slots: 1,
                    backing_blocks: 4,
                    pool: 1,
                    ..t1.clone()
                },
                &basic,
                &a,
                rec.clone(),
            ),
        ),
        ("t1-wrap", input(t1.clone(), &wrap, &b[..2], rec.clone())),
        (
            "t1-steps",
            input(
                Setup {
                    slots: 2,
                    backing_blocks: 5,
                    pool: 2,
                    plog_regions: 2,
                    ..t1.clone()
                },
                &steps,
                &a[..2],
                None,
            ),
        ),
        (
            "t1-racing",
            input(
                Setup {
                    completion: Some(3),
                    order5: true,
                    unit8: true,
                    plog_regions: 1,
                    ..t1.clone()
                },
                &racing,
                &b,
                rec,
            ),
        ),
        (
            "t0-messages",
            input(
                Setup {
                    unit8: true,
                    zero_torn: true,
                    torn_runs: true,
                    intervals: true,
                    completion: Some(5),
                    backing_blocks: 5,
                    ..base()
                },
                &messages,
                &b,
                None,
            ),
        ),
        // Found by the fuzzer (a garbage record hung the peer model), kept as a seed so its
        // meaning follows the input types.
        ("regression-peer-garbage-record", {
            input(
                Setup {
                    garbage_torn: true,
                    slots: 2,
                    backing_blocks: 3,
                    pool: 2,
                    completion: Some(0),
                    ..base()
                },
                &[
                    w(0),
                    part(1, 2, 3),
                    F,
                    fua(0),
                    fua(85),
                    w(0),
                    Op::ReadMany {
                        sector: 170,
                        len: 170,
                    },
                ],
                &[cut(61441, vec![Torn(vec![])])],
                Some(cut(51, vec![Whole])),
            )
        }),
        ("t0-eio-write", {
            input(
                Setup {
                    eio_write: true,
                    ..base()
                },
                &wrap,
                &a[..1],
                None,
            )
        }),
        ("t0-eio-read", {
            input(
                Setup {
                    eio_read: true,
                    completion: Some(1),
                    ..base()
                },
                &racing,
                &a[..1],
                None,
            )
        }),
    ]
}

// ----- images -----

fn image(template: u8, size: Option<u16>, probe: u16, patches: &[(u32, &[u8])]) -> ImageInput {
    ImageInput {
        template,
        size,
        probe,
        patches: patches
            .iter()
            .map(|&(offset, bytes)| Patch {
                offset,
                overwrite: false,
                bytes: bytes.to_vec(),
            })
            .collect(),
    }
}

/// Seeds over the templates with a plog (`Some(true)`), without (`Some(false)`) or all
/// (`None`): each template as it is, then patched ones.
fn images(plog: Option<bool>) -> Vec<(String, ImageInput)> {
    let names: Vec<&str> = crate::image::templates()
        .iter()
        .filter(|t| plog.is_none_or(|p| t.plog.is_some() == p))
        .map(|t| t.name)
        .collect();
    let index = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("no template {name}")) as u8
    };
    let mut v = Vec::new();
    for (i, name) in names.iter().enumerate() {
        v.push((name.to_string(), image(i as u8, None, 3, &[])));
    }
    let slot0 = 2048 * 512u32;
    if plog == Some(true) {
        // Plog images: a flipped entry byte, a torn entry, a zeroed superblock, truncated.
        let t1 = index("plog-t1");
        v.push((
            "plog-t1-entry-flip".into(),
            image(t1, None, 9, &[(16 * 512 + 40, &[0x80])]),
        ));
        v.push((
            "plog-t1-second-entry".into(),
            image(t1, None, 9, &[(17 * 512 + 4, &[1, 2, 3])]),
        ));
        let mut sb = image(t1, None, 0, &[]);
        sb.patches.push(Patch {
            offset: 8,
            overwrite: true,
            bytes: vec![0; 8],
        });
        v.push(("plog-t1-sb-zeroed".into(), sb));
        v.push((
            "plog-many-t1-truncated".into(),
            image(index("plog-many-t1"), Some(300), 17, &[]),
        ));
    } else {
        // Cache images: records, a header id, a length, a block, sizes.
        let busy = index("busy-o4");
        v.push((
            "busy-o4-record".into(),
            image(busy, None, 5, &[(2047 * 512, &[1])]),
        ));
        v.push((
            "busy-o4-backup-record".into(),
            image(busy, None, 5, &[(2039 * 512, &[2])]),
        ));
        v.push((
            "busy-o4-slot-id".into(),
            image(busy, None, 5, &[(slot0 + 16 * 512, &[1])]),
        ));
        let mut len = image(busy, None, 5, &[]);
        len.patches.push(Patch {
            offset: slot0 + 12,
            overwrite: true,
            bytes: vec![0x7f],
        });
        v.push(("busy-o4-length".into(), len));
        v.push((
            "busy-o4-data".into(),
            image(busy, None, 5, &[(slot0 + 4096 + 100, &[0xff])]),
        ));
        v.push((
            "wrapped-o4-ext-order".into(),
            image(index("wrapped-o4"), None, 77, &[(256 + 8, &[1])]),
        ));
        v.push((
            "fresh-o4-small".into(),
            image(index("fresh-o4"), Some(2100), 1, &[]),
        ));
        v.push((
            "upstream-metablock".into(),
            image(index("upstream"), None, 2, &[(slot0 + 512, &[0x13])]),
        ));
        if plog.is_none() {
            v.push((
                "plog-t1-cache-record".into(),
                image(index("plog-t1"), None, 5, &[(2047 * 512, &[4])]),
            ));
        }
    }
    v
}

// ----- nbd -----

fn opt(option: OptCode, data: OptData) -> NbdOption {
    NbdOption {
        bad_magic: None,
        option,
        length: None,
        data,
    }
}

fn info(name: Name) -> OptData {
    // NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE.
    OptData::Info {
        name,
        infos: vec![0, 3],
    }
}

fn req(cmd: Cmd, flags: u16, handle: u64, offset: Offset, length: Length) -> Request {
    Request {
        bad_magic: None,
        flags,
        cmd,
        handle,
        offset,
        length,
        garbage: None,
    }
}

fn nbd() -> Vec<(&'static str, NbdInput)> {
    use Cmd::*;
    use Length::{Bytes as LB, Raw as LR, Sectors as LS};
    use Offset::{Bytes as OB, Raw as OR, Sector as OS};
    let go = Handshake {
        client_flags: 3,
        options: vec![opt(OptCode::Go, info(Name::Default))],
    };
    let session = vec![
        req(Write, 0, 1, OS(0), LS(8)),
        req(Read, 0, 2, OS(0), LS(16)),
        req(Write, 1, 3, OS(1), LS(2)),
        req(Flush, 0, 4, OS(0), LS(0)),
        req(Trim, 0, 5, OS(8), LS(8)),
        req(WriteZeroes, 3, 6, OS(16), LS(2)),
        req(Read, 0, 7, OS(0), LS(32)),
        req(Disc, 0, 8, OS(0), LS(0)),
    ];
    let haggle = Handshake {
        client_flags: 1,
        options: vec![
            opt(OptCode::List, OptData::Raw(vec![])),
            opt(OptCode::Info, info(Name::Ours)),
            opt(OptCode::StructuredReply, OptData::Raw(vec![])),
            opt(OptCode::Info, info(Name::Other(b"other".to_vec()))),
            opt(OptCode::ExportName, OptData::Name(Name::Ours)),
        ],
    };
    let refused = vec![
        req(Read, 0, 1, OB(100), LS(1)),
        req(Write, 0, 2, OR(1 << 20), LS(1)),
        req(Write, 4, 3, OS(0), LS(1)),
        req(Other(9), 0, 4, OS(0), LS(0)),
        req(Flush, 0, 5, OS(1), LS(0)),
        req(Read, 0, 6, OS(0), LS(0)),
        req(Write, 0, 7, OS(1), LS(1)),
        req(Read, 0, 8, OS(0), LB(1000)),
        req(Read, 0, 9, OS(200), LR(1 << 30)),
        req(Read, 0, 10, OS(0), LS(2)),
    ];
    let mut garbage = vec![
        req(Write, 0, 1, OS(0), LS(1)),
        req(Read, 0, 2, OS(0), LS(1)),
    ];
    garbage[0].garbage = Some(vec![0x25, 0x60, 0x95, 0x13, 0, 0]);
    garbage[1].bad_magic = Some(0x1234_5678);
    let bad_option = Handshake {
        client_flags: 1,
        options: vec![
            NbdOption {
                length: Some(5000),
                ..opt(OptCode::Other(42), OptData::Raw(vec![1, 2, 3]))
            },
            opt(OptCode::Go, info(Name::Ours)),
        ],
    };
    let abort = Handshake {
        client_flags: 1,
        options: vec![opt(OptCode::Abort, OptData::Raw(vec![]))],
    };
    let bad_magic = Handshake {
        client_flags: 1,
        options: vec![NbdOption {
            bad_magic: Some(0x4948_4156_454F_5055),
            ..opt(OptCode::Go, info(Name::Default))
        }],
    };
    vec![
        (
            "go-session",
            NbdInput {
                handshake: Some(go),
                requests: session.clone(),
            },
        ),
        (
            "haggle-export-name",
            NbdInput {
                handshake: Some(haggle),
                requests: vec![req(Read, 0, 1, OS(1), LS(1))],
            },
        ),
        (
            "refused-requests",
            NbdInput {
                handshake: None,
                requests: refused,
            },
        ),
        (
            "session-no-handshake",
            NbdInput {
                handshake: None,
                requests: session,
            },
        ),
        (
            "garbage",
            NbdInput {
                handshake: None,
                requests: garbage,
            },
        ),
        (
            "option-too-long",
            NbdInput {
                handshake: Some(bad_option),
                requests: vec![],
            },
        ),
        (
            "abort",
            NbdInput {
                handshake: Some(abort),
                requests: vec![],
            },
        ),
        (
            "option-bad-magic",
            NbdInput {
                handshake: Some(bad_magic),
                requests: vec![],
            },
        ),
    ]
}
