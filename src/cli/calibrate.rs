//! `smoothcert calibrate`.
use anyhow::{Context, Result};
use smoothcert::pipeline::calibrate;
use smoothcert::smoothing::{ConformalScore, RankRule};

/// Split-conformal calibration of the surrogate (for methods calibrated and auto):
/// on inputs held out from its training, with Monte Carlo counts at its nominal N.
#[derive(clap::Args, Debug)]
pub struct CalibrateArgs {
    #[command(flatten)]
    inputs: super::args::HeldOutScoringArgs,
    /// p-gap: s = p_hat[cA] - p_MC[cA], CALIBRATED takes q off p_hat[cA].
    /// log-miss: s = ln(miss_MC + c) - ln(miss_hat + c), c = 1/(2N): the
    /// surrogate's miss 1 - p_hat[cA] is scaled by e^q instead.
    /// root-miss: s = (miss_MC + c)^(1/4) - (miss_hat + c)^(1/4).
    /// probit: s = Phi^-1(p_hat[cA]) - Phi^-1(p_MC[cA]), the overestimate in
    /// radius space (units of sigma): sigma q comes off the surrogate's radius.
    #[arg(long, value_enum, default_value = "p-gap")]
    score: ConformalScore,
    /// Mondrian bins: edges on the estimate of p[cA] (e.g. 0.99,0.999), one
    /// quantile per bin; none for one quantile over all inputs.
    #[arg(long, value_delimiter = ',')]
    bins: Vec<f64>,
    /// With probability at least 1 - GAMMA over the calibration draw, the
    /// coverage is at least 1 - delta (training-conditional rank); without
    /// it, the marginal split-conformal rank.
    #[arg(long, value_name = "GAMMA")]
    training_conditional: Option<f64>,
    /// Blend cA's logit margin over the n0 selection samples into the
    /// estimate: Phi(mean / sd of the margin) where that z is below Z, the
    /// surrogate's p_hat (at least Phi(Z)) above it. Without it, p_hat alone.
    #[arg(long, value_name = "Z")]
    margin_threshold: Option<f64>,
}

impl CalibrateArgs {
    pub fn run(self) -> Result<()> {
        let bundle = self.inputs.bundle.clone();
        let rank_rule = self
            .training_conditional
            .map_or(RankRule::Marginal, |gamma| RankRule::TrainingConditional {
                gamma,
            });
        let mut opts = self.inputs.options(self.score, rank_rule, self.bins)?;
        opts.margin_threshold = self.margin_threshold;
        let summary = calibrate::calibrate(&opts).context("calibrate failed")?;
        let c = &summary.calibration;
        println!(
            "{}: calibrated on {} {} inputs at N = {}, score {}, {} rank: q = {:.6} (rank {} of {}) for delta = {}; \
             {:.1}% of them overestimate (s > 0), {} class mismatches",
            bundle.display(),
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
        if let Some(t) = c.margin_threshold {
            println!(
                "  estimate: the selection margin's Phi(z) below z = {t}, the surrogate above"
            );
        }
        for b in &c.bins {
            println!(
                "  bin estimate < {}: q = {:.6} (rank {} of {})",
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
