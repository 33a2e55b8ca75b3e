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

/// Keeps freed memory for reuse instead of returning it to the OS on every `free`, and gives the
/// process one arena per CPU (glibc's default is up to eight per CPU: every thread that ever
/// allocates, the blocking pool's included, may get an arena of its own, whose free pages then
/// sit apart from the others'). Call once at the start of `main`. A no-op where the allocator is
/// not glibc's.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let arenas = std::thread::available_parallelism().map_or(1, usize::from);
        let arenas = i32::try_from(arenas).unwrap_or(i32::MAX);
        #[allow(unsafe_code)]
        // SAFETY: mallopt only sets glibc's tunables; it takes no pointers and locks the
        // allocator's state itself.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// What the allocator holds: the bytes handed out and not yet freed, and the freed bytes it
/// keeps for reuse (as address space: `release_free_memory` hands their whole pages back to the
/// OS, but they still count here). A leak grows the first; fragmentation and retention do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapUsage {
    pub in_use: u64,
    pub free: u64,
}

/// The allocator's own account of its memory (glibc's `mallinfo2`), or `None` where the
/// allocator is not glibc's. Walks every arena: for monitoring, not for the data path.
pub fn heap_usage() -> Option<HeapUsage> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        #[allow(unsafe_code)]
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value; it locks
        // each arena while it reads it.
        let info = unsafe { libc::mallinfo2() };
        Some(HeapUsage {
            in_use: (info.uordblks + info.hblkhd) as u64,
            free: info.fordblks as u64,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn heap_usage_counts_a_live_allocation_and_not_a_freed_one() {
        const BIG: usize = 256 << 20;
        let before = heap_usage().expect("glibc");
        let block = std::hint::black_box(Vec::<u8>::with_capacity(BIG));
        let holding = heap_usage().expect("glibc");
        // Other tests allocate and free meanwhile, but not a quarter of a gibibyte.
        assert!(
            holding.in_use >= before.in_use + (BIG as u64) * 3 / 4,
            "{before:?} -> {holding:?}"
        );
        drop(block);
        let after = heap_usage().expect("glibc");
        assert!(
            after.in_use + (BIG as u64) * 3 / 4 <= holding.in_use,
            "{holding:?} -> {after:?}"
        );
    }
}
