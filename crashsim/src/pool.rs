//! A small per-thread pool of device-image buffers.
//!
//! Every crash state the explorer checks needs fresh copies of whole device images (the crash
//! images, the devices of a restarted world, the replayer's media). Allocating each copy anew
//! costs more than the copy: large buffers come straight from the kernel, so every page of every
//! copy faults in again. Buffers given back here are reused by the next copy of the same length,
//! which lands in memory that is already mapped.
//!
//! The pool only changes where the bytes live, never what they are: [`copy_of`] overwrites the
//! whole buffer, so nothing of a previous image can leak into the next one. It is bounded: at
//! most [`MAX_BUFFERS`] buffers, each at most [`MAX_BUFFER_BYTES`] long; when full, the oldest
//! buffer is freed.

use std::cell::RefCell;

/// The most buffers one thread keeps.
pub const MAX_BUFFERS: usize = 24;
/// Buffers shorter than this are not worth keeping (small allocations are cheap).
pub const MIN_BUFFER_BYTES: usize = 64 * 1024;
/// Buffers longer than this are freed rather than kept.
pub const MAX_BUFFER_BYTES: usize = 64 * 1024 * 1024;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A copy of `src` in a buffer from the pool when one of the same length is free.
pub fn copy_of(src: &[u8]) -> Vec<u8> {
    if src.len() < MIN_BUFFER_BYTES {
        return src.to_vec();
    }
    let reused = POOL
        .try_with(|p| {
            let mut p = p.borrow_mut();
            // Newest first: the most recently used buffer is the likeliest to be warm.
            let i = p.iter().rposition(|b| b.len() == src.len())?;
            Some(p.remove(i))
        })
        .ok()
        .flatten();
    match reused {
        Some(mut b) => {
            b.copy_from_slice(src);
            b
        }
        None => src.to_vec(),
    }
}

/// Gives a buffer back for reuse (or frees it when it is too small, too large, or the pool is
/// full, in which case the oldest buffer goes).
pub fn give(buf: Vec<u8>) {
    if buf.len() < MIN_BUFFER_BYTES || buf.len() > MAX_BUFFER_BYTES || buf.len() != buf.capacity() {
        return;
    }
    // During thread teardown the pool may be gone: then the buffer is simply freed.
    let _ = POOL.try_with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else {
            return;
        };
        if p.len() == MAX_BUFFERS {
            p.remove(0);
        }
        p.push(buf);
        assert!(p.len() <= MAX_BUFFERS, "the image pool is bounded");
    });
}

/// How many buffers this thread's pool holds now.
pub fn pooled() -> usize {
    POOL.try_with(|p| p.borrow().len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_overwrites_and_stays_bounded() {
        let a = vec![7u8; MIN_BUFFER_BYTES];
        let b = copy_of(&a);
        assert_eq!(b, a);
        let ptr = b.as_ptr();
        give(b);
        let zeros = vec![0u8; MIN_BUFFER_BYTES];
        let c = copy_of(&zeros);
        assert_eq!(c.as_ptr(), ptr, "the buffer is reused");
        assert_eq!(c, zeros, "and wholly overwritten");
        give(c);
        for _ in 0..MAX_BUFFERS * 2 {
            give(vec![1u8; MIN_BUFFER_BYTES + SECTOR]);
        }
        assert_eq!(pooled(), MAX_BUFFERS);
        give(vec![0u8; 512]);
        assert_eq!(pooled(), MAX_BUFFERS, "small buffers are not kept");
    }

    const SECTOR: usize = 512;
}
