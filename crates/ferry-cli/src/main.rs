//! The `ferry` binary: the command line (lib.rs) on jemalloc.

/// jemalloc: memory a large drop or purge frees goes back to the system
/// within its decay time (glibc's malloc kept 574 MiB of 2 GiB after a
/// QDROP of 125 × 16 MiB: fragments of its arenas; docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let host = ferry_cli::Host {
        this_program: Vec::new(),
        before_serve: || {
            // Freed memory goes back to the system within jemalloc's decay
            // (10 s), on its own threads, even while the broker is idle.
            if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
                eprintln!(
                    "ferry: jemalloc cannot purge in the background ({e}): freed memory returns to the system more slowly"
                );
            }
        },
    };
    std::process::exit(ferry_cli::run(std::env::args_os(), host));
}
