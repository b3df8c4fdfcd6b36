//! `smoothcert calibrate`.
use super::args::DeviceArgs;
use anyhow::{Context, Result};
use smoothcert::pipeline::calibrate;
use smoothcert::smoothing::{ConformalScore, RankRule};
use std::path::PathBuf;

/// Split-conformal calibration of the surrogate (for methods calibrated and auto):
/// on inputs held out from its training, with Monte Carlo counts at its nominal N.
#[derive(clap::Args, Debug)]
pub struct CalibrateArgs {
    #[arg(long)]
    bundle: PathBuf,
    /// Counts at the nominal N of held-out inputs (shards of one run are joined).
    #[arg(long, required = true, num_args = 1..)]
    counts: Vec<PathBuf>,
    /// The overestimation probability to calibrate for.
    #[arg(long, default_value_t = 0.05)]
    delta: f64,
    /// p-gap: s = p_hat[cA] - p_MC[cA], CALIBRATED takes q off p_hat[cA].
    /// log-miss: s = ln(miss_MC + c) - ln(miss_hat + c), c = 1/(2N): the
    /// surrogate's miss 1 - p_hat[cA] is scaled by e^q instead.
    /// root-miss: s = (miss_MC + c)^(1/4) - (miss_hat + c)^(1/4).
    /// probit: s = Phi^-1(p_hat[cA]) - Phi^-1(p_MC[cA]), the overestimate in
    /// radius space (units of sigma): sigma q comes off the surrogate's radius.
    #[arg(long, value_enum, default_value = "p-gap")]
    score: ConformalScore,
    /// Mondrian bins: edges on p_hat[cA] (e.g. 0.99,0.999), one quantile per
    /// bin; none for one quantile over all inputs.
    #[arg(long, value_delimiter = ',')]
    bins: Vec<f64>,
    /// With probability at least 1 - GAMMA over the calibration draw, the
    /// coverage is at least 1 - delta (training-conditional rank); without
    /// it, the marginal split-conformal rank.
    #[arg(long, value_name = "GAMMA")]
    training_conditional: Option<f64>,
    /// Selection samples, as certification will draw them.
    #[arg(long, default_value_t = 100)]
    n0: u64,
    /// Certificate level for the AUTO band table.
    #[arg(long, default_value_t = 0.001)]
    alpha: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Forward batch; default: the device's (32 on a CPU, 4096 on a GPU).
    #[arg(long)]
    batch: Option<i64>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

impl CalibrateArgs {
    pub fn run(self) -> Result<()> {
        let device = self.device.device()?;
        let summary = calibrate::calibrate(&calibrate::CalibrateOptions {
            bundle: self.bundle.clone(),
            counts: self.counts,
            delta: self.delta,
            score: self.score,
            rank_rule: self
                .training_conditional
                .map_or(RankRule::Marginal, |gamma| RankRule::TrainingConditional {
                    gamma,
                }),
            bin_edges: self.bins,
            n0: self.n0,
            alpha: self.alpha,
            seed: self.seed,
            batch: super::args::forward_batch(self.batch, device),
            data_dir: self.data_dir,
            device,
        })
        .context("calibrate failed")?;
        let c = &summary.calibration;
        println!(
            "{}: calibrated on {} {} inputs at N = {}, score {}, {} rank: q = {:.6} (rank {} of {}) for delta = {}; \
             {:.1}% of them overestimate (s > 0), {} class mismatches",
            self.bundle.display(),
            c.m,
            c.split,
            c.n,
            c.score.as_str(),
            c.rank_rule.as_str(),
            c.q,
            c.rank,
            c.m,
            c.delta,
            100.0 * summary.overestimating,
            summary.class_mismatch
        );
        for b in &c.bins {
            println!(
                "  bin p_hat < {}: q = {:.6} (rank {} of {})",
                b.upper.map_or("1".to_string(), |u| u.to_string()),
                b.q,
                b.rank,
                b.m
            );
        }
        println!(
            "AUTO bands on these inputs (in-sample: the same scores set q; \
             fallback %, Monte Carlo certificates missed %):"
        );
        for b in &summary.bands {
            println!(
                "  [{:.2}, {:.2}]: {:.1}% fall back, {:.1}% missed",
                b.low,
                b.high,
                100.0 * b.fallback_fraction,
                100.0 * b.missed_certificates
            );
        }
        Ok(())
    }
}
