//! How the process uses glibc's allocator: what it keeps, and what it gives back.
//!
//! Two opposite pulls. The data path frees and allocates buffers of tens of kilobytes per batch;
//! by default glibc hands the top of a heap back to the OS on every such free (and serves blocks
//! above 128 KiB with `mmap`), so the next batch faults the same pages in again: ~10 000 page
//! faults per second on each side at a few Gbit/s. [`tune_allocator`] stops that. A daemon, on
//! the other hand, should not stay at the peak of a busy hour: after a thousand sessions come and
//! go, the freed memory sits in glibc's arenas (`ROUNDS=4 N=1000 scripts/load.sh` left 104, 116,
//! 117, 117 MiB from a base of 9.5 MiB). [`release_free_memory`] hands those pages back, at
//! moments the caller chooses (the server: after connections came or went, or traffic stopped).

/// Automatic trimming on `free` is off below this much free memory at the top of a heap.
const TRIM_THRESHOLD: i32 = 64 << 20;
/// Blocks up to this size come from the heap (reused) rather than from a fresh `mmap`.
const MMAP_THRESHOLD: i32 = 4 << 20;

/// Keeps freed memory for reuse instead of returning it to the OS on every `free`; call once at
/// the start of `main`. A no-op where the allocator is not glibc's.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets two of glibc's tunables; it takes no pointers and locks the
    // allocator's state itself.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Returns the allocator's free memory to the OS; a no-op where the allocator is not glibc's.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only walks and madvises glibc's own free lists; it takes no pointers
    // and is thread-safe (it locks each arena).
    unsafe {
        libc::malloc_trim(0);
    }
}
