//! The margin tail: what the surrogate learns of pA's tail from the logit
//! margins of the counts' samples, where the counts themselves say nothing.
//!
//! Counts at N = 250 give "no miss" for an image that misses once in 300
//! samples and for one that misses once in 100,000, and r = 0.75 at sigma
//! 0.25 is decided between them (pA_lower must pass 0.9987). The same
//! samples' margins tell them apart: z = mean / sd of cA's margin (its logit
//! minus the largest other) is about 2.7 for the first and 5 or more for the
//! second. The margin is not Gaussian that far out (its tail is heavier:
//! Phi(-z) undershoots the miss 2.5-fold at z = 3.25 and 5-fold at 3.75 on
//! the worked example's counts), so the miss is read off z by a probit line,
//! Phi(-(a + b z)), fitted by maximum likelihood to the counts' own misses
//! ([`TailFit`]): pooled over thousands of inputs, N = 250 resolves a miss
//! rate of 1e-4 that no single input's counts can.
//!
//! Beside the JS term the surrogate is then taught, with weight w, the log
//! of its miss 1 - p[cA] against that target ([`miss_target`]), in log space,
//! where 1e-3 and 1e-4 are as far apart as 0.1 and 0.01 (JS sees 1e-3
//! against 1e-4 as a divergence of about 1e-4, below its noise).
use super::super::counts::Counts;
use super::super::PipelineError;
use crate::smoothing::{standard_normal_cdf, SelectionMargin};
use tch::{Device, Kind, Tensor};

/// The smallest miss target: below it pA is 1 for any radius a nominal N of
/// 100,000 can certify, and a log error there teaches nothing.
pub const MIN_MISS: f64 = 1e-6;

/// Misses below this many are where the counts stop resolving the tail and
/// the fitted tail takes over; from it on the counts' own frequency is the
/// target (at N = 250, a miss rate of 2 % and up).
pub const RESOLVED_MISSES: u64 = 5;

/// A margin tail's weight must be finite and at least 0 (0: none).
pub fn check_weight(weight: f64) -> Result<(), PipelineError> {
    if weight.is_finite() && weight >= 0.0 {
        Ok(())
    } else {
        Err(PipelineError::Invalid(format!(
            "--margin-tail {weight}: the weight must be finite and at least 0"
        )))
    }
}

/// Inputs whose z is below this are left out of the fit: their counts
/// resolve their miss themselves, and the probit line is the tail's.
pub const FIT_MIN_Z: f64 = 2.0;

/// The miss as a function of cA's margin z: Phi(-(a + b z)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TailFit {
    pub a: f64,
    pub b: f64,
    /// The inputs it was fitted on (z >= [`FIT_MIN_Z`]).
    pub inputs: usize,
}

impl TailFit {
    pub fn miss(&self, z: f64) -> f64 {
        standard_normal_cdf(-(self.a + self.b * z))
    }

    /// The maximum-likelihood (a, b) for inputs with margin z and `misses`
    /// of `n` samples each (binomial), over a grid refined three times
    /// around its best point: two parameters, no derivatives to go wrong.
    /// `None` below 10 inputs with z >= [`FIT_MIN_Z`].
    pub fn fit(inputs: &[(f64, u64)], n: u64) -> Option<TailFit> {
        let used: Vec<(f64, f64)> = inputs
            .iter()
            .filter(|(z, k)| z.is_finite() && *z >= FIT_MIN_Z && *k <= n)
            .map(|&(z, k)| (z, k as f64))
            .collect();
        if used.len() < 10 {
            return None;
        }
        let nf = n as f64;
        let log_lik = |a: f64, b: f64| -> f64 {
            used.iter()
                .map(|&(z, k)| {
                    let m = standard_normal_cdf(-(a + b * z)).max(1e-300);
                    k * m.ln() + (nf - k) * (-m).ln_1p()
                })
                .sum()
        };
        let (mut a, mut b) = (0.0, 1.0);
        let (mut span_a, mut span_b) = (3.0, 1.0);
        for _ in 0..4 {
            let mut best = (f64::NEG_INFINITY, a, b);
            for i in -20..=20 {
                for j in -20..=20 {
                    let (ta, tb) = (a + span_a * i as f64 / 20.0, b + span_b * j as f64 / 20.0);
                    if tb <= 0.0 {
                        continue;
                    }
                    let l = log_lik(ta, tb);
                    if l > best.0 {
                        best = (l, ta, tb);
                    }
                }
            }
            (a, b) = (best.1, best.2);
            (span_a, span_b) = (span_a / 10.0, span_b / 10.0);
        }
        Some(TailFit {
            a,
            b,
            inputs: used.len(),
        })
    }
}

/// z = mean / sd of `n` margins with these sums; `None` where it cannot be read.
fn margin_z(sum: f64, sum_sq: f64, n: u64) -> Option<f64> {
    let z = SelectionMargin::from_sums(sum, sum_sq, n)?.z();
    (!z.is_nan()).then_some(z)
}

/// The miss target of an input whose top class cA was counted `count_a`
/// times in `n` samples, with cA's margin z: the counts' frequency
/// (n - count_a) / n where it has at least [`RESOLVED_MISSES`] misses, else
/// the fitted tail's miss at z, clamped to [MIN_MISS, 1/2]. `None` where pA
/// is below 1/2 (no certificate to estimate).
pub fn miss_target(count_a: u64, n: u64, z: f64, fit: &TailFit) -> Option<f64> {
    if n == 0 || 2 * count_a < n || z.is_nan() {
        return None;
    }
    let misses = n - count_a;
    let miss = if misses >= RESOLVED_MISSES {
        misses as f64 / n as f64
    } else {
        fit.miss(z)
    };
    Some(miss.clamp(MIN_MISS, 0.5))
}

/// Each counted input's top class, its margin z (NaN where it has none) and
/// its misses. Counts without margin sums are refused.
fn tail_inputs(counts: &Counts) -> Result<Vec<(i64, f64, u64)>, PipelineError> {
    if counts.margins.is_none() {
        return Err(PipelineError::Invalid(format!(
            "--margin-tail needs counts sampled with their margins \
             (sample-counts --margins); the counts of the {} split at N = {} have none",
            counts.meta.split, counts.meta.n
        )));
    }
    let n = counts.meta.n;
    Ok((0..counts.len())
        .map(|i| {
            let row: Vec<u64> = counts.row(i).iter().map(|&c| c.max(0) as u64).collect();
            let a = crate::smoothing::top_two(&row).0;
            let z = counts
                .margin(i, a)
                .and_then(|(sum, sum_sq)| margin_z(sum, sum_sq, n))
                .unwrap_or(f64::NAN);
            (a as i64, z, n - row[a].min(n))
        })
        .collect())
}

/// The tail fitted to all of `runs` (one N), their inputs pooled, and every
/// input's target under it, in the runs' order: one pass over the counts.
pub fn fit_and_target(
    runs: &[Counts],
    device: Device,
) -> Result<(TailFit, TailTargets), PipelineError> {
    let n = runs.first().map_or(0, |r| r.meta.n);
    let mut inputs = Vec::new();
    for counts in runs {
        inputs.extend(tail_inputs(counts)?);
    }
    let pooled: Vec<(f64, u64)> = inputs.iter().map(|&(_, z, k)| (z, k)).collect();
    let fit = TailFit::fit(&pooled, n).ok_or_else(|| {
        PipelineError::Invalid(format!(
            "--margin-tail: fewer than 10 counted inputs have a margin z of {FIT_MIN_Z} or more \
             to fit the tail on (a classifier this rarely confident under the noise has little \
             tail to learn); train with --margin-tail 0"
        ))
    })?;
    let (class_a, ln_miss): (Vec<i64>, Vec<f32>) = inputs
        .into_iter()
        .map(|(a, z, misses)| {
            let target = miss_target(n - misses, n, z, &fit);
            (a, target.map_or(f32::NAN, |m| m.ln() as f32))
        })
        .unzip();
    let targets = TailTargets {
        class_a: Tensor::from_slice(&class_a).to_device(device),
        ln_miss: Tensor::from_slice(&ln_miss).to_device(device),
    };
    Ok((fit, targets))
}

/// The predicted miss is floored here in the loss, far below [`MIN_MISS`]:
/// a copy more confident than its target is pulled back, and the floor only
/// bounds the log error of a runaway logit. A target at [`MIN_MISS`] is
/// censored ("1e-6 or less"), so there the prediction is floored at it: a
/// more confident copy is right, not wrong.
pub const PREDICTION_FLOOR: f64 = 1e-12;

/// Per input [B]: the squared error of ln(1 - p[cA]) from softmax(logits)
/// against `ln_target` [B], 0 where the target is NaN. ln(1 - p[cA]) is the
/// log-sum-exp of the other classes' log-probabilities, finite however
/// confident the logits (1 - p would round to 0 in f32 below 6e-8).
pub fn per_input(logits: &Tensor, class_a: &Tensor, ln_target: &Tensor) -> Tensor {
    let log_p = logits.log_softmax(1, Kind::Float);
    let others = log_p.scatter_value(1, &class_a.unsqueeze(1), f64::NEG_INFINITY);
    let floor = ln_target.le(MIN_MISS.ln() + 1e-4).to_kind(Kind::Float)
        * (MIN_MISS.ln() - PREDICTION_FLOOR.ln())
        + PREDICTION_FLOOR.ln();
    let ln_miss = others.logsumexp([1].as_slice(), false).maximum(&floor);
    let has = ln_target.isnan().logical_not();
    let err = (ln_miss - ln_target.nan_to_num(0.0, None, None)).square();
    err * has.to_kind(Kind::Float)
}

/// The margin tail's targets of some inputs: their top class [M] and the log
/// of their miss target [M] (NaN where none), see [`fit_and_target`].
pub struct TailTargets {
    pub class_a: Tensor,
    pub ln_miss: Tensor,
}

impl TailTargets {
    pub fn select(&self, idx: &Tensor) -> TailTargets {
        TailTargets {
            class_a: self.class_a.index_select(0, idx),
            ln_miss: self.ln_miss.index_select(0, idx),
        }
    }

    /// Rows `start .. start + len`: (top classes, log miss targets).
    pub fn narrow(&self, start: i64, len: i64) -> (Tensor, Tensor) {
        (
            self.class_a.narrow(0, start, len),
            self.ln_miss.narrow(0, start, len),
        )
    }

    /// How many of the inputs have a target.
    pub fn with_target(&self) -> i64 {
        self.ln_miss
            .isnan()
            .logical_not()
            .sum(Kind::Int64)
            .int64_value(&[])
    }
}
