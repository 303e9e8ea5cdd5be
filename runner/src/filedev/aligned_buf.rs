//! `AlignedBuf`: the bounce buffers O_DIRECT transfers go through.

use std::alloc::{self, Layout};

/// Memory alignment of the bounce buffers: enough for any logical block size we accept.
pub(crate) const BUF_ALIGN: usize = 4096;

/// A heap buffer aligned to `BUF_ALIGN`, grown on demand.
pub(crate) struct AlignedBuf {
    ptr: *mut u8,
    pub(crate) cap: usize,
}

// The buffer is plain owned memory; it moves between threads with its device.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    pub(crate) fn new() -> Self {
        AlignedBuf {
            ptr: std::ptr::null_mut(),
            cap: 0,
        }
    }

    pub(crate) fn get(&mut self, len: usize) -> &mut [u8] {
        if len > self.cap {
            let cap = len.next_power_of_two().max(BUF_ALIGN);
            let layout = Layout::from_size_align(cap, BUF_ALIGN).expect("bounce buffer layout");
            // SAFETY: the layout has a non-zero size.
            let ptr = unsafe { alloc::alloc_zeroed(layout) };
            if ptr.is_null() {
                alloc::handle_alloc_error(layout);
            }
            self.free();
            self.ptr = ptr;
            self.cap = cap;
        }
        // SAFETY: `ptr` points to `cap >= len` initialised (zeroed, then written) bytes owned
        // by `self`, and the returned borrow keeps `self` mutably borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }

    fn free(&mut self) {
        if !self.ptr.is_null() {
            let layout = Layout::from_size_align(self.cap, BUF_ALIGN).expect("layout");
            // SAFETY: allocated in `get` with this very layout.
            unsafe { alloc::dealloc(self.ptr, layout) };
            self.ptr = std::ptr::null_mut();
            self.cap = 0;
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        self.free();
    }
}
