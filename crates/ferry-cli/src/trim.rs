//! Gives the memory a broker freed back to the system.
//!
//! glibc's malloc returns freed memory to the system only from the top of
//! its heaps: after a `QDROP` of 2 GiB of 16 MiB payloads it kept 574 MiB
//! resident, fragments between live allocations (docs/performance.md).
//! `malloc_trim(0)` hands every whole free page of every arena back. A
//! thread looks once a second at how much the arenas hold free
//! (`mallinfo2`) and trims when that grew by [`GROWTH`] since the last
//! trim — after a drop, a purge or a burst drained, not while the free
//! pool merely churns.
//!
//! The only `unsafe` in the workspace (which denies it everywhere else):
//! two glibc calls that take no pointers. It replaced jemalloc, whose C
//! build was a quarter of a clean build's CPU, for the same result.

/// Free bytes in the arenas that are new since the last trim and worth one.
const GROWTH: usize = 32 << 20;

/// Starts the trimming thread (once; later calls do nothing). Off glibc it
/// does nothing: other allocators give memory back themselves or have no
/// such call.
pub(crate) fn start() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("ferry-trim".into())
                .spawn(|| {
                    let mut after_trim = glibc::free_bytes();
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(1));
                        let free = glibc::free_bytes();
                        if free >= after_trim.saturating_add(GROWTH) {
                            glibc::trim();
                            after_trim = glibc::free_bytes();
                        } else {
                            // Reused memory lowers the mark: the next
                            // growth is counted from here.
                            after_trim = after_trim.min(free);
                        }
                    }
                });
            if let Err(e) = spawned {
                eprintln!(
                    "ferry: cannot start the thread that returns freed memory ({e}): memory a drop frees stays with the process"
                );
            }
        });
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod glibc {
    use nix::libc;

    /// Bytes the arenas hold free (glibc's `fordblks`).
    pub(super) fn free_bytes() -> usize {
        // SAFETY: mallinfo2 takes no arguments and returns a struct by
        // value; glibc locks each arena while it counts.
        unsafe { libc::mallinfo2() }.fordblks
    }

    /// Returns every whole free page of every arena to the system.
    pub(super) fn trim() {
        // SAFETY: malloc_trim takes no pointers; glibc serialises it with
        // every other allocator call.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
