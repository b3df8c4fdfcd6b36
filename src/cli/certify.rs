//! `smoothcert certify`.
use super::args::{AdaptiveArgs, AutoBandArgs, DeviceArgs, SamplingArgs};
use anyhow::{Context, Result};
use smoothcert::data::Split;
use smoothcert::engine::{Method, RadiusKind};
use smoothcert::methods::Target;
use smoothcert::pipeline::certify;
use std::path::PathBuf;

/// Certify inputs of a dataset split; one TSV row per input.
#[derive(clap::Args, Debug)]
// This command's help for two of the shared sampling flags.
#[command(
    mut_arg("n", |a| a.help(
        "Samples (mc) or nominal samples (surrogate); default 100000 for mc and the \
         surrogate's nominal N for surrogate",
    )),
    mut_arg("batch", |a| a.help(
        "Forward batch size the samples are chunked into; default: the device's (32 on a CPU, 4096 on a GPU)",
    )),
)]
pub struct CertifyArgs {
    #[arg(long)]
    bundle: PathBuf,
    /// monte_carlo: Monte Carlo CERTIFY (Cohen et al.), a certificate at level
    /// 1 - alpha; surrogate: Accelerated Smoothing's estimate of it (not a
    /// guarantee); calibrated, auto; sequential: an exact certificate at
    /// --target-radius.
    #[arg(long, value_enum, default_value = "monte_carlo")]
    method: Method,
    #[arg(long, value_enum, ignore_case = true, default_value = "test")]
    split: Split,
    /// Overrides where the bundle's dataset files are.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The first input certified (with --skip K: inputs O, O + K, ...).
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Certify every K-th input.
    #[arg(long, default_value_t = 1)]
    skip: usize,
    /// Certify at most M inputs.
    #[arg(long)]
    max: Option<usize>,
    // --n0, --n, --alpha, --batch
    #[command(flatten)]
    sampling: SamplingArgs,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    adaptive: AdaptiveArgs,
    #[command(flatten)]
    auto_band: AutoBandArgs,
    /// sequential (and auto's Monte Carlo step): the L2 radius to certify
    /// exactly; --n is then the cap on its samples.
    #[arg(long)]
    target_radius: Option<f64>,
    /// sequential: the plain stage schedule (100, 400, 1,600, ...), not the
    /// surrogate's; for comparison.
    #[arg(long)]
    plain_schedule: bool,
    #[command(flatten)]
    device: DeviceArgs,
    #[arg(long)]
    out: PathBuf,
}

impl CertifyArgs {
    pub fn run(self) -> Result<()> {
        let n = match self.sampling.n {
            Some(n) => n,
            None => certify::default_n(&self.bundle, self.method)?,
        };
        let device = self.device.device()?;
        let opts = certify::CertifyOptions {
            bundle: self.bundle.clone(),
            method: self.method,
            split: self.split,
            data_dir: self.data_dir,
            offset: self.offset,
            skip: self.skip,
            max: self.max,
            params: self.sampling.params(n, device, &self.bundle),
            seed: self.seed,
            adaptive_n0: self.adaptive.rule(),
            auto_band: self.auto_band.band(),
            target: self.target_radius.map(|radius| Target {
                radius,
                guided: !self.plain_schedule,
            }),
            device,
            out: self.out,
            show_progress: true,
        };
        let s = certify::certify(&opts).context("certify failed")?;
        let what = match s.method.radius_kind() {
            Some(RadiusKind::Certificate) => "certified accuracy",
            Some(RadiusKind::Estimate) => {
                "ESTIMATED certified accuracy (an estimate of the certificate, not a guarantee)"
            }
            None => {
                "accuracy with a radius (mixed: Monte Carlo certificates and calibrated estimates, each row names its method)"
            }
        };
        if let Some(f) = s.fallback_fraction {
            println!("auto: Monte Carlo answered {:.1}% of inputs", 100.0 * f);
        }
        println!(
            "{} ({}): {} inputs, {what} at r=0 {:.1}%, abstained {:.1}%, median {:.3} s/input",
            s.out.display(),
            s.method.as_str(),
            s.inputs,
            100.0 * s.accuracy_at_radius_0,
            100.0 * s.abstention_rate,
            s.median_seconds_per_input
        );
        Ok(())
    }
}
