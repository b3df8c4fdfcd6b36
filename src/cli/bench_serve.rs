//! `smoothcert bench-serve`.
use super::args::DeviceArgs;
use super::bench::print_and_save;
use anyhow::{Context, Result};
use smoothcert::bench::serve;
use std::path::PathBuf;

/// Load-test the gRPC service in-process: requests/s and p50/p99 latency at
/// several client concurrencies, dynamic batching against batch size 1, and
/// both against the offline engine's rate on the same model (the ceiling).
#[derive(clap::Args, Debug)]
pub struct BenchServeArgs {
    #[arg(long, default_value = "models/fashion-mnist-sigma0.25")]
    bundle: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    concurrency: Vec<usize>,
    /// Requests measured per concurrency level and batching mode.
    #[arg(long, default_value_t = 512)]
    requests: usize,
    #[arg(long, default_value_t = 100)]
    n0: u64,
    #[arg(long, default_value_t = 32)]
    max_batch_requests: usize,
    #[arg(long, default_value_t = 0)]
    max_queue_delay_ms: u64,
    /// HTTP/2 connections shared by the clients.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Load with SEQUENTIAL requests certifying this L2 radius (e.g. 0.5)
    /// instead of SURROGATE ones.
    #[arg(long)]
    target_radius: Option<f64>,
    /// Also write the figures as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl BenchServeArgs {
    pub fn run(self) -> Result<()> {
        // The service's configuration takes the device as spelled.
        let opts = serve::BenchServeOptions {
            bundle: self.bundle,
            device: self.device.into_spec(),
            concurrency: self.concurrency,
            requests: self.requests,
            n0: self.n0,
            max_batch_requests: self.max_batch_requests,
            max_queue_delay_ms: self.max_queue_delay_ms,
            connections: self.connections,
            data_dir: self.data_dir,
            target_radius: self.target_radius,
        };
        let r = serve::bench_serve(&opts).context("bench-serve failed")?;
        print_and_save(&r.markdown(), &r, self.out)
    }
}
