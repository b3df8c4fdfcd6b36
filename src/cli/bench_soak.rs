//! `smoothcert bench-soak`.
use super::args::DeviceArgs;
use super::bench::print_and_save;
use anyhow::{bail, Context, Result};
use smoothcert::bench::soak::{self, Load};
use std::path::PathBuf;
use std::time::Duration;

/// Soak the gRPC service: `smoothcert serve` in a child process under
/// steady closed-loop load from this one, with a mix of methods, for a long
/// time (default 20 minutes at 64 in flight). Prints a row per minute (RSS,
/// p50/p99, errors, rate) and fails when a request failed or RSS after the
/// warm-up grew by more than --max-rss-growth.
#[derive(clap::Args, Debug)]
pub struct BenchSoakArgs {
    #[arg(long, default_value = "models/fashion-mnist-sigma0.25")]
    bundle: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    #[arg(long, default_value_t = 20.0)]
    minutes: f64,
    /// Minutes of warm-up; RSS growth is measured from its end.
    #[arg(long, default_value_t = 2.0)]
    warm_up_minutes: f64,
    /// Seconds per row.
    #[arg(long, default_value_t = 60)]
    interval_s: u64,
    /// Requests in flight (closed loop: each client sends its next when answered).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the clients share.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// The requests, taken in turn: surrogate, calibrated, auto, sequential:R,
    /// monte_carlo:N, predict:N. The default is mostly the accelerated
    /// methods, as served; AUTO is left out because its fallback is Monte
    /// Carlo at the calibration's n (100,000 for the shipped bundle), which is
    /// GPU-sized.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "surrogate,calibrated,surrogate,calibrated,sequential:0.25,surrogate,calibrated,monte_carlo:500,surrogate,calibrated,surrogate,predict:500"
    )]
    mix: Vec<Load>,
    /// The server's connections.max_age_ms (deploy/base's 5 minutes; 0: off).
    #[arg(long, default_value_t = 300_000)]
    max_age_ms: u64,
    /// The server's connections.max_age_grace_ms (deploy/base's 5 minutes).
    #[arg(long, default_value_t = 300_000)]
    max_age_grace_ms: u64,
    #[arg(long, default_value_t = 0.05)]
    max_rss_growth: f64,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Clients without the documented retry policy: every failed attempt is an error.
    #[arg(long)]
    no_retry: bool,
    /// Also write the figures as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl BenchSoakArgs {
    pub fn run(self) -> Result<()> {
        let minutes = |m: f64| Duration::from_secs_f64(m.max(0.0) * 60.0);
        let opts = soak::SoakOptions {
            bundle: self.bundle,
            device: self.device.into_spec(),
            duration: minutes(self.minutes),
            interval: Duration::from_secs(self.interval_s.max(1)),
            warm_up: minutes(self.warm_up_minutes),
            concurrency: self.concurrency,
            connections: self.connections,
            mix: self.mix,
            max_age_ms: self.max_age_ms,
            max_age_grace_ms: self.max_age_grace_ms,
            max_rss_growth: self.max_rss_growth,
            data_dir: self.data_dir,
            retry: !self.no_retry,
        };
        let r = soak::bench_soak(&opts).context("bench-soak failed")?;
        print_and_save(&r.markdown(), &r, self.out)?;
        if !r.passed {
            bail!("the soak failed its bounds (above)");
        }
        Ok(())
    }
}
