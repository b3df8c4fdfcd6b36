//! `smoothcert bench-serve`.
use super::args::DeviceArgs;
use super::bench::print_and_save;
use anyhow::{Context, Result};
use smoothcert::bench::serve;
use std::path::PathBuf;

/// Load-test the gRPC service: requests/s and p50/p99 latency at several
/// client concurrencies, dynamic batching against batch size 1, and both
/// against the offline engine's rate on the same model (the ceiling). The
/// server runs as `smoothcert serve` in a child process unless --in-process
/// or --target says otherwise.
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
    /// Run the server inside this process (no socket between processes).
    #[arg(long, conflicts_with = "target")]
    in_process: bool,
    /// Drive a server already running at HOST:PORT (serving the same bundle);
    /// only the dynamic-batching row is measured.
    #[arg(long, value_name = "HOST:PORT")]
    target: Option<String>,
    /// Send the load with the Python grpc.aio tool (clients/python/load.py)
    /// run by this interpreter (one with grpcio, e.g.
    /// ~/.cache/smoothcert/pyclient/bin/python) instead of tonic clients.
    #[arg(long, value_name = "PYTHON")]
    python: Option<PathBuf>,
    /// The Python load tool.
    #[arg(long, default_value = "clients/python/load.py")]
    python_script: PathBuf,
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
            placement: match (self.target, self.in_process) {
                (Some(addr), _) => serve::Placement::Target(addr),
                (None, true) => serve::Placement::InProcess,
                (None, false) => serve::Placement::ChildProcess,
            },
            client: match self.python {
                Some(interpreter) => serve::LoadClient::Python {
                    interpreter,
                    script: self.python_script,
                },
                None => serve::LoadClient::Tonic,
            },
        };
        let r = serve::bench_serve(&opts).context("bench-serve failed")?;
        print_and_save(&r.markdown(), &r, self.out)
    }
}
