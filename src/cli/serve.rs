//! `smoothcert serve`.
use anyhow::{Context, Result};
use smoothcert::config::Config;
use smoothcert::model::cuda_status;
use smoothcert::server::telemetry;
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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let telemetry = {
            let _context = runtime.enter();
            telemetry::install(&config)?
        };
        for warning in &config.deprecations {
            tracing::warn!("{warning}");
        }
        if telemetry.exporting() {
            tracing::info!(endpoint = %config.traces.otlp_endpoint, "exporting traces over OTLP");
        }
        let served = runtime.block_on(async {
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
        });
        // Off the runtime's threads, while it still drives the exporter.
        telemetry.shutdown();
        served
    }
}
