#[tokio::main]
async fn main() -> std::process::ExitCode {
    apikeyd::cli::main().await
}
