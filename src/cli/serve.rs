//! `smoothcert serve`.
use anyhow::{Context, Result};
use smoothcert::config::{Config, LogFormat};
use smoothcert::model::cuda_status;
use std::path::PathBuf;

/// Serve certificates over gRPC (with no arguments: the shipped default
/// bundle, on the GPU when there is one). Configuration: defaults < --config
/// FILE < SMOOTHCERT__SECTION__KEY environment variables.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// A TOML configuration file (see config/smoothcert.toml).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl ServeArgs {
    /// Runs the server until SIGTERM or SIGINT, then shuts it down gracefully.
    /// Sets up its logging from the configuration.
    pub fn run(self) -> Result<()> {
        let config = Config::load(self.config.as_deref())?;
        let filter = tracing_subscriber::EnvFilter::new(&config.logging.level);
        let logs = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match config.logging.format {
            LogFormat::Json => logs.json().init(),
            LogFormat::Human => logs.init(),
        }
        for warning in &config.deprecations {
            tracing::warn!("{warning}");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        runtime.block_on(async {
            // Listening before start-up, so that a signal during it is not the
            // default (abrupt) one.
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
            let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
            let server = smoothcert::server::start(config).await?;
            tracing::info!(
                grpc = %server.grpc_addr,
                metrics = %server.metrics_addr,
                cuda = %cuda_status().detail,
                "listening; loading models"
            );
            let stop = server.stopper();
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM"),
                    _ = int.recv() => tracing::info!("SIGINT"),
                }
                let _ = stop.send(true);
            });
            server.wait().await?;
            tracing::info!("stopped");
            Ok(())
        })
    }
}
