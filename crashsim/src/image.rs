//! Copy-on-write device images.
//!
//! Every crash state the explorer checks needs its own device images: the durable images at the
//! crash point, those with the choice's writes applied, the devices recovery then writes to, the
//! devices of a restarted world. Most of each image is the same from one state to the next (a
//! choice changes a few sectors, recovery writes a few blocks, and most of the cache device is
//! its zero-filled superblock area), so copying whole images for every state spent most of a
//! state's time in memcpy.
//!
//! An [`Image`] is a list of reference-counted chunks of [`CHUNK_BYTES`]. Cloning one copies the
//! list, not the data; writing to a chunk that another image shares copies that chunk first. So a crash image costs the chunks its choice touches, and recovery's
//! writes cost the chunks they touch. The bytes an image holds are exactly those a plain
//! `Vec<u8>` with the same writes would hold: sharing is invisible to every reader.
//!
//! Memory stays bounded by the plain copies': an image never holds more unique chunks than its
//! length needs, and shared chunks are counted once. The chunks are `Rc`, not `Arc`: images stay
//! on the thread whose world made them, like the rest of a crash state.
//!
//! Chunks an image held alone are kept on a small per-thread free list (at most
//! [`MAX_FREE_CHUNKS`]) when the image is dropped, and the next chunk copy takes one from there:
//! freeing and allocating thousands of 4 KiB buffers per crash state otherwise makes the
//! allocator hand memory back to the kernel and fault it in again. A recycled chunk is wholly
//! overwritten before use, so nothing of an old image can show through.

use engine::format::SECTOR_SIZE;
use std::cell::RefCell;
use std::fmt;
use std::ops::Index;
use std::rc::Rc;

/// Bytes per chunk: the engine's block size, a whole number of sectors, so a sector never spans
/// two chunks.
pub const CHUNK_BYTES: usize = 4096;

const _: () = assert!(CHUNK_BYTES % SECTOR_SIZE == 0);

type Chunk = [u8; CHUNK_BYTES];

/// The most unshared chunks one thread keeps for reuse (4 MiB).
pub const MAX_FREE_CHUNKS: usize = 1024;

thread_local! {
    static FREE_CHUNKS: RefCell<Vec<Rc<Chunk>>> = const { RefCell::new(Vec::new()) };
}

/// A chunk holding a copy of `src` (`CHUNK_BYTES` of it), in a recycled buffer when one is free.
fn chunk_copy_of(src: &Chunk) -> Rc<Chunk> {
    let recycled = FREE_CHUNKS
        .try_with(|f| f.try_borrow_mut().ok()?.pop())
        .ok()
        .flatten();
    match recycled {
        Some(mut c) => {
            match Rc::get_mut(&mut c) {
                Some(bytes) => bytes.copy_from_slice(src),
                // Only unshared chunks are put on the list; this cannot happen.
                None => return Rc::new(*src),
            }
            c
        }
        None => Rc::new(*src),
    }
}

/// Keeps `c` for reuse when no other image holds it and the free list has room.
fn recycle(c: Rc<Chunk>) {
    if Rc::strong_count(&c) != 1 || Rc::weak_count(&c) != 0 {
        return;
    }
    // During thread teardown the list may be gone: then the chunk is simply freed.
    let _ = FREE_CHUNKS.try_with(|f| {
        if let Ok(mut f) = f.try_borrow_mut() {
            if f.len() < MAX_FREE_CHUNKS {
                f.push(c);
            }
        }
    });
}

/// How many chunks this thread keeps for reuse now.
#[cfg(test)]
fn free_chunks() -> usize {
    FREE_CHUNKS.try_with(|f| f.borrow().len()).unwrap_or(0)
}

/// A device image whose unchanged chunks are shared with the images it was cloned from.
///
/// Offsets past [`Image::len`] are out of range: the accessors panic on them, as slice indexing
/// does (every caller checks the access against the device size first). The last chunk may be
/// partly past the end; those bytes are always zero and never visible.
#[derive(Clone)]
pub struct Image {
    len: usize,
    chunks: Vec<Rc<Chunk>>,
}

impl Image {
    /// `len` zero bytes, all in one shared zero chunk.
    pub fn zeroed(len: usize) -> Self {
        let zero = Rc::new([0u8; CHUNK_BYTES]);
        Image {
            len,
            chunks: vec![zero; len.div_ceil(CHUNK_BYTES)],
        }
    }

    /// An image holding `bytes`; its all-zero chunks share one buffer.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let zero = Rc::new([0u8; CHUNK_BYTES]);
        let chunks = bytes
            .chunks(CHUNK_BYTES)
            .map(|src| {
                if src.iter().all(|&b| b == 0) {
                    return Rc::clone(&zero);
                }
                let mut c = [0u8; CHUNK_BYTES];
                c[..src.len()].copy_from_slice(src);
                chunk_copy_of(&c)
            })
            .collect();
        Image {
            len: bytes.len(),
            chunks,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Panics unless `[at, at + n)` is inside the image.
    fn check_range(&self, at: usize, n: usize) {
        let inside = at.checked_add(n).is_some_and(|end| end <= self.len);
        assert!(
            inside,
            "bytes {at}+{n} are outside an image of {} bytes",
            self.len
        );
    }

    /// Copies `buf.len()` bytes from offset `at` into `buf`.
    pub fn read(&self, at: usize, buf: &mut [u8]) {
        self.check_range(at, buf.len());
        let mut done = 0;
        while done < buf.len() {
            let (c, off) = ((at + done) / CHUNK_BYTES, (at + done) % CHUNK_BYTES);
            let n = (CHUNK_BYTES - off).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&self.chunks[c][off..off + n]);
            done += n;
        }
    }

    /// Writes `data` at offset `at`, copying first each chunk it touches that is shared.
    pub fn write(&mut self, at: usize, data: &[u8]) {
        self.check_range(at, data.len());
        let mut done = 0;
        while done < data.len() {
            let (c, off) = ((at + done) / CHUNK_BYTES, (at + done) % CHUNK_BYTES);
            let n = (CHUNK_BYTES - off).min(data.len() - done);
            self.chunk_mut(c)[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    /// Sector `s` (which must be inside the image).
    pub fn sector(&self, s: u64) -> &[u8] {
        let at = s as usize * SECTOR_SIZE;
        self.check_range(at, SECTOR_SIZE);
        let off = at % CHUNK_BYTES;
        &self.chunks[at / CHUNK_BYTES][off..off + SECTOR_SIZE]
    }

    /// Sector `s` to change in place (its chunk is copied first if shared).
    pub fn sector_mut(&mut self, s: u64) -> &mut [u8] {
        let at = s as usize * SECTOR_SIZE;
        self.check_range(at, SECTOR_SIZE);
        let off = at % CHUNK_BYTES;
        &mut self.chunk_mut(at / CHUNK_BYTES)[off..off + SECTOR_SIZE]
    }

    /// The sectors of the image in order (a trailing partial sector is left out).
    pub fn sectors(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..(self.len / SECTOR_SIZE) as u64).map(|s| self.sector(s))
    }

    /// Flips bit `bit` (0..8) of byte `byte`.
    pub fn flip_bit(&mut self, byte: u64, bit: u8) {
        let at = byte as usize;
        self.check_range(at, 1);
        self.chunk_mut(at / CHUNK_BYTES)[at % CHUNK_BYTES] ^= 1 << bit;
    }

    /// The whole image as one flat buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.len];
        self.read(0, &mut out);
        out
    }

    /// How many chunks this image shares with `other` (same buffer at the same index): how much
    /// copying the sharing saved.
    pub fn shared_chunks(&self, other: &Image) -> usize {
        self.chunks
            .iter()
            .zip(&other.chunks)
            .filter(|(a, b)| Rc::ptr_eq(a, b))
            .count()
    }

    /// Chunk `c` to write to: copied first when another image shares it.
    fn chunk_mut(&mut self, c: usize) -> &mut Chunk {
        if Rc::get_mut(&mut self.chunks[c]).is_none() {
            let copy = chunk_copy_of(&self.chunks[c]);
            // The old chunk is shared, so dropping this reference frees nothing.
            self.chunks[c] = copy;
        }
        Rc::get_mut(&mut self.chunks[c]).expect("an unshared chunk")
    }

    /// Indices of the chunks this image does not share with `other` (any chunk of a longer
    /// image past the end of the shorter one counts as not shared).
    pub fn unshared_chunks<'a>(&'a self, other: &'a Image) -> impl Iterator<Item = usize> + 'a {
        (0..self.chunks.len()).filter(move |&c| {
            other
                .chunks
                .get(c)
                .is_none_or(|o| !Rc::ptr_eq(&self.chunks[c], o))
        })
    }

    /// The visible bytes of chunk `c`.
    fn chunk_bytes(&self, c: usize) -> &[u8] {
        let n = (self.len - c * CHUNK_BYTES).min(CHUNK_BYTES);
        &self.chunks[c][..n]
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        for c in self.chunks.drain(..) {
            recycle(c);
        }
    }
}

impl From<Vec<u8>> for Image {
    fn from(bytes: Vec<u8>) -> Self {
        Image::from_bytes(&bytes)
    }
}

impl From<&[u8]> for Image {
    fn from(bytes: &[u8]) -> Self {
        Image::from_bytes(bytes)
    }
}

impl Index<usize> for Image {
    type Output = u8;
    fn index(&self, at: usize) -> &u8 {
        self.check_range(at, 1);
        &self.chunks[at / CHUNK_BYTES][at % CHUNK_BYTES]
    }
}

impl PartialEq for Image {
    fn eq(&self, other: &Image) -> bool {
        self.len == other.len
            && (0..self.chunks.len()).all(|c| {
                Rc::ptr_eq(&self.chunks[c], &other.chunks[c])
                    || self.chunk_bytes(c) == other.chunk_bytes(c)
            })
    }
}

impl Eq for Image {}

impl PartialEq<[u8]> for Image {
    fn eq(&self, other: &[u8]) -> bool {
        self.len == other.len()
            && other
                .chunks(CHUNK_BYTES)
                .enumerate()
                .all(|(c, bytes)| self.chunk_bytes(c) == bytes)
    }
}

impl PartialEq<Vec<u8>> for Image {
    fn eq(&self, other: &Vec<u8>) -> bool {
        *self == other[..]
    }
}

impl PartialEq<&[u8]> for Image {
    fn eq(&self, other: &&[u8]) -> bool {
        *self == **other
    }
}

impl fmt::Debug for Image {
    /// The size and how many distinct chunks there are: the bytes of a device image are too many
    /// to print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut distinct: Vec<*const Chunk> = self.chunks.iter().map(Rc::as_ptr).collect();
        distinct.sort_unstable();
        distinct.dedup();
        write!(
            f,
            "Image {{ len: {}, chunks: {} ({} distinct) }}",
            self.len,
            self.chunks.len(),
            distinct.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_chunks_are_shared_and_writes_copy_only_their_chunk() {
        let mut bytes = vec![0u8; 5 * CHUNK_BYTES + SECTOR_SIZE];
        bytes[CHUNK_BYTES + 7] = 9;
        let a = Image::from_bytes(&bytes);
        assert_eq!(a, bytes);
        assert_eq!(a[CHUNK_BYTES + 7], 9);
        let mut b = a.clone();
        assert_eq!(b.shared_chunks(&a), 6);
        b.write(3 * CHUNK_BYTES + 10, &[1, 2, 3]);
        assert_eq!(b.shared_chunks(&a), 5, "only the written chunk was copied");
        assert_eq!(b.unshared_chunks(&a).collect::<Vec<_>>(), vec![3]);
        assert_eq!(a, bytes, "the original is unchanged");
        assert_ne!(a, b);
        b.sector_mut(2)[0] = 4;
        b.flip_bit(5 * CHUNK_BYTES as u64, 0);
        assert_eq!(b.shared_chunks(&a), 3);
        assert_eq!(b.sector(10).len(), SECTOR_SIZE);
        assert_eq!(b.sectors().count(), bytes.len() / SECTOR_SIZE);
    }

    #[test]
    fn dropped_unshared_chunks_are_reused_wholly_overwritten_and_bounded() {
        let mut a = Image::zeroed(2 * CHUNK_BYTES);
        a.write(0, &[0xaa; CHUNK_BYTES]);
        let before = free_chunks();
        drop(a);
        // The written chunk and the zero chunk (no longer shared once chunk 0 was copied).
        assert_eq!(free_chunks(), before + 2, "unshared chunks are kept");
        let mut b = Image::zeroed(2 * CHUNK_BYTES);
        b.write(CHUNK_BYTES, &[1]);
        assert_eq!(free_chunks(), before + 1, "and reused");
        let mut expect = vec![0u8; 2 * CHUNK_BYTES];
        expect[CHUNK_BYTES] = 1;
        assert_eq!(b, expect, "with nothing of the old image left");
        let shared = b.clone();
        drop(b);
        assert_eq!(free_chunks(), before + 1, "shared chunks are not kept");
        drop(shared);
        let big: Vec<Image> = (0..MAX_FREE_CHUNKS + 10)
            .map(|i| Image::from_bytes(&[i as u8 | 1; CHUNK_BYTES]))
            .collect();
        drop(big);
        assert_eq!(free_chunks(), MAX_FREE_CHUNKS, "the free list is bounded");
    }

    #[test]
    #[should_panic(expected = "outside an image")]
    fn access_past_the_end_panics_like_a_slice() {
        let img = Image::zeroed(2 * SECTOR_SIZE);
        img.sector(2);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Write { at: usize, data: Vec<u8> },
        Flip { byte: usize, bit: u8 },
        Snapshot,
    }

    fn op(len: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                0..len,
                proptest::collection::vec(any::<u8>(), 1..3 * CHUNK_BYTES)
            )
                .prop_map(move |(at, mut data)| {
                    data.truncate(len - at);
                    Op::Write { at, data }
                }),
            (0..len, 0u8..8).prop_map(|(byte, bit)| Op::Flip { byte, bit }),
            Just(Op::Snapshot),
        ]
    }

    proptest! {
        /// Any mix of writes, bit flips and snapshots (clones) gives, in every image, exactly
        /// the bytes a plain buffer with the same writes holds; snapshots never change.
        #[test]
        fn images_hold_what_plain_buffers_hold(
            sectors in 1usize..40,
            ops in proptest::collection::vec(op(40 * SECTOR_SIZE), 0..40),
        ) {
            let len = sectors * SECTOR_SIZE;
            let mut plain = vec![0u8; len];
            let mut img = Image::zeroed(len);
            let mut snapshots: Vec<(Image, Vec<u8>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Write { at, mut data } => {
                        if at >= len {
                            continue;
                        }
                        data.truncate(len - at);
                        plain[at..at + data.len()].copy_from_slice(&data);
                        img.write(at, &data);
                    }
                    Op::Flip { byte, bit } => {
                        if byte >= len {
                            continue;
                        }
                        plain[byte] ^= 1 << bit;
                        img.flip_bit(byte as u64, bit);
                    }
                    Op::Snapshot => snapshots.push((img.clone(), plain.clone())),
                }
                prop_assert!(img == plain);
            }
            prop_assert_eq!(img.to_vec(), plain.clone());
            prop_assert_eq!(Image::from_bytes(&plain), img.clone());
            for (snap, bytes) in &snapshots {
                prop_assert!(*snap == *bytes);
                let mut buf = vec![0u8; len];
                snap.read(0, &mut buf);
                prop_assert_eq!(&buf, bytes);
            }
        }
    }
}
