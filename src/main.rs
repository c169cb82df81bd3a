/// mimalloc instead of the C library's malloc: a warm `Validate` allocates a
/// few dozen small objects, which mimalloc serves in fewer instructions, and
/// memory freed (an argon2 run's, a burst's) goes back to the system instead
/// of staying in per-thread arenas (README, "Validate's hot path").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (v2 `mimalloc.h`);
/// libmimalloc-sys names the options around it but not this one.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // Freed pages go back to the system at once rather than 10 ms later in
    // batches: after a burst of argon2 runs or cold loads, resident memory
    // comes back down (the verification tests hold it within 50 MB of its
    // start), and 100,000 warm keys hold less (README, "Benchmarks").
    // SAFETY: sets a documented option by its number before any other
    // thread exists; mimalloc reads it at each purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
        .block_on(apikeyd::commands::main())
}
