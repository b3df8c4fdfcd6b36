//! `smoothcert bench`, `bench-certify` and `bench-adaptive`: the offline
//! engine's benchmarks.
use super::args::{AutoBandArgs, DeviceArgs, SamplingArgs};
use anyhow::{Context, Result};
use smoothcert::bench;
use smoothcert::smoothing::AdaptiveN0;
use std::path::PathBuf;

/// Monte Carlo throughput at several forward batch sizes against plain forward passes.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000,4000")]
    batches: Vec<i64>,
    #[arg(long, default_value_t = 10_000)]
    samples: u64,
    /// Measurements per batch size (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    #[command(flatten)]
    device: DeviceArgs,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the figures as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl BenchArgs {
    pub fn run(self) -> Result<()> {
        let opts = bench::BenchOptions {
            bundle: self.bundle,
            device: self.device.device()?,
            batches: self.batches,
            samples: self.samples,
            repeats: self.repeats,
            seed: self.seed,
        };
        let r = bench::bench(&opts).context("bench failed")?;
        print_and_save(&r.markdown(), &r, self.out)
    }
}

/// Time Monte Carlo and surrogate certification on the same inputs in one run.
#[derive(clap::Args, Debug)]
// This command's default for the shared --n and its help for --auto-band-low.
#[command(
    mut_arg("n", |a| a.default_value(BENCH_CERTIFY_N)),
    mut_arg("auto_band_low", |a| a.help(
        "AUTO's band (the calibrated methods are timed too when the bundle is calibrated at this N)",
    )),
)]
pub struct BenchCertifyArgs {
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long, default_value_t = 10)]
    inputs: usize,
    // --n0, --n, --alpha, --batch
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    device: DeviceArgs,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    auto_band: AutoBandArgs,
    /// Also time SEQUENTIAL (exact, guided, cap --n) at these target radii,
    /// e.g. 0.25,0.5,0.75.
    #[arg(long, value_delimiter = ',')]
    target_radii: Vec<f64>,
    /// Also write the figures as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// bench-certify's `--n`.
const BENCH_CERTIFY_N: &str = "100000";

impl BenchCertifyArgs {
    pub fn run(self) -> Result<()> {
        let n = self
            .sampling
            .n
            .context("--n has a default in bench-certify")?;
        let device = self.device.device()?;
        let opts = bench::MethodsBenchOptions {
            auto_band: self.auto_band.band(),
            bundle: self.bundle.clone(),
            device,
            inputs: self.inputs,
            params: self.sampling.params(n, device, &self.bundle),
            seed: self.seed,
            target_radii: self.target_radii,
        };
        let r = bench::bench_methods(&opts).context("bench-certify failed")?;
        print_and_save(&r.markdown(), &r, self.out)
    }
}

/// Adaptive n0 against fixed n0 on the same inputs: how often cA differs, and
/// the throughput gained (one request at a time and batched).
#[derive(clap::Args, Debug)]
pub struct BenchAdaptiveArgs {
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long, default_value_t = 500)]
    inputs: usize,
    #[arg(long, default_value_t = 100)]
    n0: u64,
    #[arg(long, default_value_t = 10)]
    chunk: u64,
    #[arg(long, default_value_t = 0.001)]
    alpha: f64,
    #[arg(long, default_value_t = 32)]
    batch_requests: usize,
    /// Forward batch; default: the device's (32 on a CPU, 4096 on a GPU).
    #[arg(long)]
    batch: Option<i64>,
    #[command(flatten)]
    device: DeviceArgs,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    out: Option<PathBuf>,
}

impl BenchAdaptiveArgs {
    pub fn run(self) -> Result<()> {
        let device = self.device.device()?;
        let r = bench::bench_adaptive(&bench::AdaptiveBenchOptions {
            bundle: self.bundle.clone(),
            device,
            inputs: self.inputs,
            n0: self.n0,
            adaptive_n0: AdaptiveN0 {
                chunk: self.chunk,
                alpha: self.alpha,
            },
            batch_requests: self.batch_requests,
            forward_batch: super::args::forward_batch(self.batch, device, &self.bundle),
            seed: self.seed,
        })
        .context("bench-adaptive failed")?;
        print_and_save(&r.markdown(), &r, self.out)
    }
}

/// Prints a benchmark's Markdown and, when asked, writes its figures as JSON.
pub(super) fn print_and_save(
    markdown: &str,
    figures: &impl serde::Serialize,
    out: Option<PathBuf>,
) -> Result<()> {
    println!("{markdown}");
    if let Some(out) = out {
        std::fs::write(&out, serde_json::to_vec_pretty(figures)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
