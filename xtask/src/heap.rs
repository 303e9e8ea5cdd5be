//! Allocator tuning for the crash explorer.
//!
//! Every crash state opens an engine on its crash images, and recovery allocates and zeroes its
//! buffers afresh (RAM buffers, plog regions). With glibc's default thresholds, freeing them
//! hands the top of the heap back to the kernel and the next state faults every page in again:
//! on type-1 workloads about a third of the explorer's time went to page faults. Keeping freed
//! memory for reuse, up to the thresholds below per arena, removes that. It changes only where
//! memory comes from, never what is computed; elsewhere the defaults stay.

/// Freed memory at the top of the heap up to this much stays mapped.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 64 << 20;
/// Allocations up to this size come from the heap (reusable) rather than fresh mappings.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 32 << 20;

/// Keeps freed heap memory for reuse instead of returning it to the kernel (glibc only; a no-op
/// elsewhere). Call before starting worker threads.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it takes the arena locks itself.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
