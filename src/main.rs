//! The `smoothcert` command line: the offline pipeline (train-base, certify,
//! report, bench), the service (serve) and diagnostics. The commands are in
//! [`cli`], one module each.
mod cli;

use anyhow::Result;
use clap::Parser;

fn main() -> Result<()> {
    // Before any thread allocates a tensor.
    let allocator = smoothcert::allocator::keep_freed_memory();
    let cli = cli::Cli::parse();
    // `serve` sets up its logging from its configuration.
    if !cli.command.configures_logging() {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    tracing::debug!(?allocator, "malloc thresholds");
    cli::run(cli)
}
