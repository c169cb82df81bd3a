#[tokio::main]
async fn main() -> std::process::ExitCode {
    apikeyd::commands::main().await
}
