//! The inverse of the derived [`arbitrary::Arbitrary`] of the input types: bytes that
//! `Unstructured` (as `fuzz_target!` uses it, `arbitrary_take_rest`) decodes to a given value,
//! so the seeds (`crate::seeds`) are written as structured values.
//!
//! It follows `arbitrary` 1.x's format: integers little-endian in their width, `bool` one byte
//! (bit 0), `Option` a `bool` then the value, a `Vec` a `true` byte before each element and a
//! `false` byte after the last, an enum a `u32` whose `(x * variants) >> 32` is the variant
//! index, then its fields, a struct its fields in order. The seeds' test decodes every seed and
//! compares it with the value it was made from, so a change of that format fails a test instead
//! of silently changing what the seeds mean.

use crate::image::{ImageInput, Patch};
use crate::nbd_stream::Input as NbdInput;
use crate::nbd_stream::{
    Cmd, Handshake, Length, Name, NbdOption, Offset, OptCode, OptData, Request,
};
use crate::ops::{Crash, Input as OpsInput, Op, Persisted, Setup, StepKind};

pub trait Encode {
    fn encode(&self, out: &mut Vec<u8>);
}

/// The bytes of `v`.
pub fn to_bytes<T: Encode>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    v.encode(&mut out);
    out
}

/// Variant `i` of an enum of `n` variants.
fn variant(out: &mut Vec<u8>, i: u32, n: u32) {
    let x = (u64::from(i) << 32).div_ceil(u64::from(n));
    out.extend_from_slice(&(x as u32).to_le_bytes());
}

macro_rules! ints {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
ints!(u8, u16, u32, u64);

impl Encode for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        self.is_some().encode(out);
        if let Some(v) = self {
            v.encode(out);
        }
    }
}

impl<T: Encode> Encode for Vec<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        for v in self {
            true.encode(out);
            v.encode(out);
        }
        false.encode(out);
    }
}

/// A struct: its fields in declaration order.
macro_rules! fields {
    ($t:ty { $($f:ident),* }) => {
        impl Encode for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                $(self.$f.encode(out);)*
            }
        }
    };
}

fields!(OpsInput {
    setup,
    ops,
    first,
    more,
    recovery_cut
});
fields!(Setup {
    type1,
    order5,
    unit8,
    garbage_torn,
    eio_write,
    eio_read,
    slots,
    backing_blocks,
    pool,
    batch,
    plog_regions,
    behind,
    allow_writeback,
    completion,
    seed,
    zero_torn,
    torn_runs,
    intervals
});
fields!(Crash { point, persisted });
fields!(ImageInput {
    template,
    size,
    probe,
    patches
});
fields!(Patch {
    offset,
    overwrite,
    bytes
});
fields!(NbdInput {
    handshake,
    requests
});
fields!(Handshake {
    client_flags,
    options
});
fields!(NbdOption {
    bad_magic,
    option,
    length,
    data
});
fields!(Request {
    bad_magic,
    flags,
    cmd,
    handle,
    offset,
    length,
    garbage
});

impl Encode for StepKind {
    fn encode(&self, out: &mut Vec<u8>) {
        let i = match self {
            StepKind::Seal => 0,
            StepKind::FlushSegment => 1,
            StepKind::Writeback => 2,
            StepKind::Record => 3,
            StepKind::Sync => 4,
        };
        variant(out, i, 5);
    }
}

impl Encode for Op {
    fn encode(&self, out: &mut Vec<u8>) {
        const N: u32 = 14;
        match *self {
            Op::Write { block } => {
                variant(out, 0, N);
                block.encode(out);
            }
            Op::Partial {
                block,
                first,
                count,
                fua,
            } => {
                variant(out, 1, N);
                block.encode(out);
                first.encode(out);
                count.encode(out);
                fua.encode(out);
            }
            Op::Multi { sector, len, fua } => {
                variant(out, 2, N);
                sector.encode(out);
                len.encode(out);
                fua.encode(out);
            }
            Op::Fua { block } => {
                variant(out, 3, N);
                block.encode(out);
            }
            Op::Discard { sector, len } => {
                variant(out, 4, N);
                sector.encode(out);
                len.encode(out);
            }
            Op::Zeroes { sector, len, fua } => {
                variant(out, 5, N);
                sector.encode(out);
                len.encode(out);
                fua.encode(out);
            }
            Op::ReadMany { sector, len } => {
                variant(out, 6, N);
                sector.encode(out);
                len.encode(out);
            }
            Op::Flush => variant(out, 7, N),
            Op::Step(k) => {
                variant(out, 8, N);
                k.encode(out);
            }
            Op::Background(k) => {
                variant(out, 9, N);
                k.encode(out);
            }
            Op::DropCaches => variant(out, 10, N),
            Op::Tick => variant(out, 11, N),
            Op::Tunable { index, value } => {
                variant(out, 12, N);
                index.encode(out);
                value.encode(out);
            }
            Op::Reformat => variant(out, 13, N),
        }
    }
}

impl Encode for Persisted {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Persisted::Lost => variant(out, 0, 3),
            Persisted::Whole => variant(out, 1, 3),
            Persisted::Torn(mask) => {
                variant(out, 2, 3);
                mask.encode(out);
            }
        }
    }
}

impl Encode for OptCode {
    fn encode(&self, out: &mut Vec<u8>) {
        const N: u32 = 7;
        match *self {
            OptCode::ExportName => variant(out, 0, N),
            OptCode::Abort => variant(out, 1, N),
            OptCode::List => variant(out, 2, N),
            OptCode::Info => variant(out, 3, N),
            OptCode::Go => variant(out, 4, N),
            OptCode::StructuredReply => variant(out, 5, N),
            OptCode::Other(c) => {
                variant(out, 6, N);
                c.encode(out);
            }
        }
    }
}

impl Encode for OptData {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            OptData::Raw(d) => {
                variant(out, 0, 3);
                d.encode(out);
            }
            OptData::Name(n) => {
                variant(out, 1, 3);
                n.encode(out);
            }
            OptData::Info { name, infos } => {
                variant(out, 2, 3);
                name.encode(out);
                infos.encode(out);
            }
        }
    }
}

impl Encode for Name {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Name::Default => variant(out, 0, 3),
            Name::Ours => variant(out, 1, 3),
            Name::Other(v) => {
                variant(out, 2, 3);
                v.encode(out);
            }
        }
    }
}

impl Encode for Cmd {
    fn encode(&self, out: &mut Vec<u8>) {
        const N: u32 = 7;
        match *self {
            Cmd::Read => variant(out, 0, N),
            Cmd::Write => variant(out, 1, N),
            Cmd::Disc => variant(out, 2, N),
            Cmd::Flush => variant(out, 3, N),
            Cmd::Trim => variant(out, 4, N),
            Cmd::WriteZeroes => variant(out, 5, N),
            Cmd::Other(c) => {
                variant(out, 6, N);
                c.encode(out);
            }
        }
    }
}

impl Encode for Offset {
    fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Offset::Sector(n) => {
                variant(out, 0, 3);
                n.encode(out);
            }
            Offset::Bytes(n) => {
                variant(out, 1, 3);
                n.encode(out);
            }
            Offset::Raw(n) => {
                variant(out, 2, 3);
                n.encode(out);
            }
        }
    }
}

impl Encode for Length {
    fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Length::Sectors(n) => {
                variant(out, 0, 3);
                n.encode(out);
            }
            Length::Bytes(n) => {
                variant(out, 1, 3);
                n.encode(out);
            }
            Length::Raw(n) => {
                variant(out, 2, 3);
                n.encode(out);
            }
        }
    }
}
