/// mimalloc instead of the C library's malloc: a warm `Validate` allocates a
/// few dozen small objects, which mimalloc serves in fewer instructions, and
/// memory freed (an argon2 run's, a burst's) goes back to the system instead
/// of staying in per-thread arenas (README, "Validate's hot path").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    apikeyd::commands::main().await
}
