//! Device images for the image targets: a few valid templates built with the engine itself
//! (formatted, with data in flight, wrapped, upstream, type 1), and the input that picks one
//! and patches it ([`ImageInput`], derived [`Arbitrary`]), so most inputs start from a valid
//! superblock and the fuzzer gets deep.
//!
//! Input: a template index (modulo the templates the target accepts), an optional size in
//! sectors (modulo the bound + 1; otherwise the template's size), a probe sector the target
//! writes, and a list of [`Patch`]es: bytes XORed into (or written over) the image at an offset
//! modulo its size, wrapping around its end. At most [`MAX_PATCHES`] patches of at most
//! [`MAX_PATCH_LEN`] bytes each.

use std::sync::OnceLock;

use engine::format::{self, Metablock, BLOCK_SIZE, SECTORS_PER_BLOCK, SECTOR_SIZE};
use engine::{Config, FormatPolicy, MemDevice, Step, SyncEngine};

use arbitrary::Arbitrary;

/// Largest cache image: the superblock region and two upstream (order 10) segments.
pub const MAX_CACHE_SECTORS: u64 = 2048 + 2 * 1024;
/// Largest plog image: the header blocks and 64 regions of an order-4 segment.
pub const MAX_PLOG_SECTORS: u64 = 2048;
/// The backing device every image target runs with.
pub const BACKING_BLOCKS: u64 = 16;
/// Patches per input: bounds the work of patching.
pub const MAX_PATCHES: usize = 256;
/// Bytes per patch.
pub const MAX_PATCH_LEN: usize = 255;
/// Generation of every template (ties the type-1 plogs to their caches).
pub const GENERATION: u64 = 0x5EED_F022;

pub fn backing_sectors() -> u64 {
    BACKING_BLOCKS * SECTORS_PER_BLOCK
}

/// The backing device's content: distinct and non-zero per sector.
pub fn backing_image() -> Vec<u8> {
    let mut img = vec![0u8; backing_sectors() as usize * SECTOR_SIZE];
    for (s, chunk) in img.chunks_mut(SECTOR_SIZE).enumerate() {
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = (s as u8) ^ (i as u8).wrapping_mul(31) ^ 0xA5;
        }
    }
    img
}

/// A valid set of devices to start from.
pub struct Template {
    pub name: &'static str,
    pub cache: Vec<u8>,
    /// Type 1 only.
    pub plog: Option<Vec<u8>>,
}

/// The configuration the image targets open with: never format, small pool.
pub fn open_config() -> Config {
    Config {
        segment_size_order: 4,
        nr_rambuf_pool: 2,
        format: FormatPolicy::Never,
        generation: GENERATION,
        ..Config::default()
    }
}

fn fmt_config(order: u8) -> Config {
    Config {
        segment_size_order: order,
        nr_rambuf_pool: 2,
        format: FormatPolicy::IfBlank,
        generation: GENERATION,
        ..Config::default()
    }
}

/// Data of the `n`th template write of `sectors` sectors.
fn data(n: u64, sectors: u64) -> Vec<u8> {
    (0..sectors as usize * SECTOR_SIZE)
        .map(|i| (n as u8).wrapping_mul(17) ^ (i as u8) ^ ((i >> 9) as u8))
        .collect()
}

/// What a template run does to an open engine.
#[derive(Clone, Copy)]
enum Act {
    W(u64, u64),
    Fua(u64, u64),
    Discard(u64, u64),
    Flush,
    Step(Step),
}

fn build(order: u8, cache_sectors: u64, plog_sectors: Option<u64>, acts: &[Act]) -> Template {
    let cache = MemDevice::new(cache_sectors);
    let backing = MemDevice::from_bytes(backing_image());
    let plog = plog_sectors.map(MemDevice::new);
    let (mut e, _) = SyncEngine::open_with_plog(cache, backing, plog, fmt_config(order))
        .expect("template: format a blank cache");
    for (n, a) in acts.iter().enumerate() {
        match *a {
            Act::W(s, len) => e.write(s, &data(n as u64, len), false),
            Act::Fua(s, len) => e.write(s, &data(n as u64, len), true),
            Act::Discard(s, len) => e.discard(s, len),
            Act::Flush => e.flush(),
            Act::Step(step) => e.run_step(step).map(|_| ()),
        }
        .expect("template: engine op");
    }
    // A process crash: what is on the devices now, no shutdown.
    let (cache, _, plog) = e.into_all_devices();
    Template {
        name: "",
        cache: cache.into_bytes(),
        plog: plog.map(MemDevice::into_bytes),
    }
}

/// An upstream dm-writeboost image (order 10, no extension): segment 1 holds two dirty blocks,
/// the record says 0.
fn upstream() -> Vec<u8> {
    let mut img = vec![0u8; MAX_CACHE_SECTORS as usize * SECTOR_SIZE];
    img[..4].copy_from_slice(&format::SUPERBLOCK_MAGIC.to_le_bytes());
    let seg_at = format::SUPERBLOCK_SECTORS as usize * SECTOR_SIZE;
    let seg = &mut img[seg_at..seg_at + 3 * BLOCK_SIZE];
    for (i, sector) in [8u64, 40].into_iter().enumerate() {
        let mb = Metablock {
            sector,
            dirty_bits: if i == 0 { 0xff } else { 0x0f },
            block_crc: None,
        };
        format::encode_metablock(&mut seg[..BLOCK_SIZE], i, &mb);
        seg[BLOCK_SIZE * (1 + i)..BLOCK_SIZE * (2 + i)].copy_from_slice(&data(i as u64, 8));
    }
    format::seal_segment(seg, 1, 2);
    img
}

fn plog_sectors_for(order: u8, regions: u64) -> u64 {
    let blocks = (1usize << (order - 3)) - 1;
    format::plog::PLOG_FIRST_REGION_SECTOR
        + regions * format::plog::region_sectors_for(blocks) as u64
}

/// The templates, built once per process.
pub fn templates() -> &'static [Template] {
    static T: OnceLock<Vec<Template>> = OnceLock::new();
    T.get_or_init(|| {
        use engine::Step::{FlushSegment, Record, Seal, Writeback};
        use Act::*;
        let o4 = 2048 + 16 * 16; // 16 slots of order 4
        let o5 = 2048 + 8 * 32; // 8 slots of order 5
        let busy: Vec<Act> = vec![
            W(0, 8),
            W(9, 3),
            Fua(16, 8),
            W(60, 12),
            Flush,
            Step(Writeback),
            Step(Record),
            W(8, 8),
            W(1, 1),
            Discard(24, 8),
            Flush,
            W(100, 16),
            Step(Seal),
            Step(FlushSegment),
            W(120, 8),
        ];
        // Enough flushed writes to wrap a ring of 16 slots (7 blocks each) with writebacks.
        let mut wrap = Vec::new();
        for i in 0..40u64 {
            wrap.push(W((i * 8 + (i % 3)) % 120, 5));
            if i % 3 == 2 {
                wrap.push(Flush);
            }
            if i % 5 == 4 {
                wrap.push(Step(Writeback));
                wrap.push(Step(Record));
            }
        }
        wrap.push(W(3, 2));
        // Type 1: FUA writes and flushes land in the plog only; the segment of id 1 is never
        // sealed, so recovery rebuilds it (and, past a region, the next) from the plog.
        let plog_acts: Vec<Act> = vec![
            W(0, 8),
            Fua(8, 8),
            W(17, 2),
            Flush,
            W(64, 24),
            Flush,
            W(40, 8),
            Fua(41, 1),
        ];
        let mut plog_many = plog_acts.clone();
        for i in 0..20u64 {
            plog_many.push(W((i * 13) % 120, 3));
            plog_many.push(Flush);
        }
        let named = |name, mut t: Template| {
            t.name = name;
            t
        };
        vec![
            named(
                "blank",
                Template {
                    name: "",
                    cache: vec![0u8; o4 as usize * SECTOR_SIZE],
                    plog: None,
                },
            ),
            named("fresh-o4", build(4, o4, None, &[])),
            named("busy-o4", build(4, o4, None, &busy)),
            named("busy-o5", build(5, o5, None, &busy)),
            named("wrapped-o4", build(4, o4, None, &wrap)),
            named(
                "upstream",
                Template {
                    name: "",
                    cache: upstream(),
                    plog: None,
                },
            ),
            named("fresh-t1", build(4, o4, Some(plog_sectors_for(4, 4)), &[])),
            named(
                "plog-t1",
                build(4, o4, Some(plog_sectors_for(4, 4)), &plog_acts),
            ),
            named(
                "plog-many-t1",
                build(4, o4, Some(plog_sectors_for(4, 2)), &plog_many),
            ),
        ]
    })
}

/// The input of the image targets.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct ImageInput {
    /// Index (modulo their number) into the templates the target accepts.
    pub template: u8,
    /// The image's size in sectors (modulo the bound + 1): cut or padded with zeros; `None`
    /// keeps the template's size (cut to the bound).
    pub size: Option<u16>,
    /// A sector the target writes and reads back (any value; the target bounds it).
    pub probe: u16,
    /// Applied in order; at most [`MAX_PATCHES`].
    pub patches: Vec<Patch>,
}

/// Bytes put into the image at `offset` (modulo its size, wrapping around its end).
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub offset: u32,
    /// Written over the image's bytes instead of XORed into them.
    pub overwrite: bool,
    /// At most [`MAX_PATCH_LEN`] are used.
    pub bytes: Vec<u8>,
}

/// What an image input makes.
pub struct Decoded {
    pub template: &'static Template,
    pub image: Vec<u8>,
    /// A sector the target writes and reads back (any value; the target bounds it).
    pub probe: u64,
}

impl ImageInput {
    /// The image over the templates `pick` accepts, patching the device `which` selects (the
    /// cache or the plog image), bounded to `max_sectors`.
    pub fn build(
        &self,
        pick: impl Fn(&Template) -> bool,
        which: impl Fn(&Template) -> &[u8],
        max_sectors: u64,
    ) -> Decoded {
        let choices: Vec<&'static Template> = templates().iter().filter(|t| pick(t)).collect();
        let template = choices[usize::from(self.template) % choices.len()];
        let mut image = which(template).to_vec();
        if let Some(size) = self.size {
            let sectors = u64::from(size) % (max_sectors + 1);
            image.resize(sectors as usize * SECTOR_SIZE, 0);
        }
        image.truncate(max_sectors as usize * SECTOR_SIZE);
        for p in self.patches.iter().take(MAX_PATCHES) {
            p.apply(&mut image);
        }
        Decoded {
            template,
            image,
            probe: u64::from(self.probe),
        }
    }
}

impl Patch {
    pub fn apply(&self, image: &mut [u8]) {
        if image.is_empty() {
            return;
        }
        let at = self.offset as usize % image.len();
        for (i, b) in self.bytes.iter().take(MAX_PATCH_LEN).enumerate() {
            let p = (at + i) % image.len();
            if self.overwrite {
                image[p] = *b;
            } else {
                image[p] ^= b;
            }
        }
    }
}
