//! The statistics of randomized smoothing (Cohen et al. 2019), torch-free: Clopper-Pearson
//! bounds, the Gaussian L2 radius, the two-sided binomial test, and the CERTIFY / PREDICT
//! decisions built from them.
//!
//! The bounds come from our own inversion of the regularized incomplete beta (private
//! `binomial` submodule), not statrs's `Beta::inverse_cdf`: that one caps its continued
//! fraction at 140 terms, is off by 2.6e-7 relative to 1 - p at Beta(9 999 000, 1001),
//! and never returns for Beta(9 999 990, 11) or Beta(1, 1e7) (measured with statrs 0.18).

mod binomial;
mod conformal;
mod noise;
pub mod sequential;

pub use conformal::{
    bin_of, blended_estimate, check_edges, conformal_quantile, conformal_quantile_by,
    conformal_rank, margin_threshold_ok, standard_normal_cdf, training_conditional_rank,
    AdaptiveN0, CalibrationShift, ConformalScore, MondrianBins, RankRule, SelectionMargin,
    MAX_BINS, MAX_MARGIN_THRESHOLD,
};
pub use noise::{Noise, Norm};

use serde::{Deserialize, Serialize};

/// Errors from invalid inputs or (never observed, but reported rather than hidden)
/// non-convergence of the numerics.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum SmoothingError {
    #[error("invalid count: k = {k} successes out of n = {n} trials (need k <= n <= 2^53)")]
    InvalidCount { k: u64, n: u64 },
    #[error("invalid alpha {0}: need 0 < alpha < 1")]
    InvalidAlpha(f64),
    #[error("invalid noise scale {0}: need a finite sigma or lambda > 0")]
    InvalidSigma(f64),
    #[error("zero samples: n must be at least 1")]
    ZeroSamples,
    #[error("top-two counts out of order: count_a = {count_a} < count_b = {count_b}")]
    InvalidTopCounts { count_a: u64, count_b: u64 },
    #[error("numerical failure: {0}")]
    NumericalFailure(String),
}

/// Counts up to 2^53 are exact in f64, which the numerics use.
const MAX_EXACT_COUNT: u64 = 1 << 53;

fn validate(k: u64, n: u64, alpha: f64) -> Result<(), SmoothingError> {
    if n == 0 {
        return Err(SmoothingError::ZeroSamples);
    }
    if k > n || n > MAX_EXACT_COUNT {
        return Err(SmoothingError::InvalidCount { k, n });
    }
    // Written so that NaN is rejected too.
    if !(alpha > 0.0 && alpha < 1.0) {
        return Err(SmoothingError::InvalidAlpha(alpha));
    }
    Ok(())
}

/// One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion:
/// the alpha quantile of Beta(k, n - k + 1); 0 when k == 0. (Equals statsmodels
/// `proportion_confint(k, n, alpha=2*alpha, method="beta")[0]`, which Cohen's code uses.)
/// For k == n it is the closed form alpha^(1/n).
pub fn clopper_pearson_lower(k: u64, n: u64, alpha: f64) -> Result<f64, SmoothingError> {
    validate(k, n, alpha)?;
    if k == 0 {
        return Ok(0.0);
    }
    if k == n {
        return Ok((alpha.ln() / n as f64).exp());
    }
    Ok(binomial::beta_quantile(k as f64, (n - k + 1) as f64, alpha)?.0)
}

/// One-sided upper bound: the (1 - alpha) quantile of Beta(k + 1, n - k); 1 when k == n.
/// Computed as 1 - (alpha quantile of Beta(n - k, k + 1)), the complement taken inside the
/// solver so that tiny alpha and tiny bounds keep their digits; for k == 0 it is the
/// closed form 1 - alpha^(1/n).
pub fn clopper_pearson_upper(k: u64, n: u64, alpha: f64) -> Result<f64, SmoothingError> {
    validate(k, n, alpha)?;
    if k == n {
        return Ok(1.0);
    }
    if k == 0 {
        return Ok(-(alpha.ln() / n as f64).exp_m1());
    }
    Ok(binomial::beta_quantile((n - k) as f64, (k + 1) as f64, alpha)?.1)
}

/// Gaussian L2 radius sigma * Phi^-1(p_lower) (standard normal inverse CDF). Zero at
/// p_lower = 1/2, negative below it (callers abstain there), +inf at 1, NaN outside [0, 1].
pub fn gaussian_l2_radius(sigma: f64, p_lower: f64) -> f64 {
    sigma * binomial::norm_ppf(p_lower)
}

/// Index of the largest value; ties go to the lower index, and NaN never
/// wins (0 when every value is NaN, or none is given).
pub fn argmax(p: &[f64]) -> usize {
    p.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// Indices of the largest and second-largest counts; ties go to the lower
/// index.
pub fn top_two(counts: &[u64]) -> (usize, Option<usize>) {
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
    (order.first().copied().unwrap_or(0), order.get(1).copied())
}

/// The median (the mean of the middle two for an even count; 0 for none).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    match v.len() {
        0 => 0.0,
        len if len % 2 == 1 => v[mid],
        _ => (v[mid - 1] + v[mid]) / 2.0,
    }
}

/// Two-sided exact binomial test p-value of k successes in n trials at p = 0.5
/// (`scipy.stats.binomtest(k, n, 0.5).pvalue`; for p = 0.5 that is
/// min(1, 2 * P(X >= max(k, n - k)))). Tiny p-values underflow to 0 only below ~1e-308.
pub fn binomial_test_two_sided(k: u64, n: u64) -> Result<f64, SmoothingError> {
    if n == 0 {
        return Err(SmoothingError::ZeroSamples);
    }
    if k > n || n > MAX_EXACT_COUNT {
        return Err(SmoothingError::InvalidCount { k, n });
    }
    let m = k.max(n - k);
    if 2 * m == n {
        return Ok(1.0);
    }
    // P(X >= m; n, 1/2) = I_{1/2}(m, n - m + 1), with m >= 1 here.
    let tail = binomial::beta_tail(m as f64, (n - m + 1) as f64, 0.5, 0.5)?;
    Ok((std::f64::consts::LN_2 + tail.ln_cdf).exp().min(1.0))
}

/// Why a smoothed classifier abstained. Serialized in snake_case, like [`Self::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbstainReason {
    /// CERTIFY: the lower confidence bound on p_A is not above 1/2.
    LowConfidence,
    /// PREDICT: the binomial test on the top two counts is not significant at alpha.
    NotSignificant,
    /// ACCELERATED: the surrogate's argmax differs from the Monte Carlo guess c_A.
    ClassMismatch,
    /// SEQUENTIAL: the target radius was not certified (out of reach, or not
    /// reached at the cap).
    TargetNotReached,
}

impl AbstainReason {
    /// Stable name used in files and reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            AbstainReason::LowConfidence => "low_confidence",
            AbstainReason::NotSignificant => "not_significant",
            AbstainReason::ClassMismatch => "class_mismatch",
            AbstainReason::TargetNotReached => "target_not_reached",
        }
    }

    /// Inverse of [`Self::as_str`]; `None` for any other string.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "low_confidence" => Some(AbstainReason::LowConfidence),
            "not_significant" => Some(AbstainReason::NotSignificant),
            "class_mismatch" => Some(AbstainReason::ClassMismatch),
            "target_not_reached" => Some(AbstainReason::TargetNotReached),
            _ => None,
        }
    }
}

impl std::fmt::Display for AbstainReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Outcome of CERTIFY for one input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Certified {
        class: usize,
        p_a_lower: f64,
        radius: f64,
    },
    Abstain {
        reason: AbstainReason,
        p_a_lower: f64,
    },
}

/// CERTIFY's decision (steps 4-5): p_a_lower = clopper_pearson_lower(count_a, n, alpha);
/// certified with the noise's radius at p_a_lower (sigma * Phi^-1(p_a_lower)
/// for the Gaussian) iff p_a_lower > 1/2, else Abstain(LowConfidence).
/// Errors on invalid counts, alpha, or the noise's scale (finite, > 0).
pub fn certify_decision(
    class: usize,
    count_a: u64,
    n: u64,
    alpha: f64,
    noise: Noise,
) -> Result<Decision, SmoothingError> {
    noise.validate()?;
    let p_a_lower = clopper_pearson_lower(count_a, n, alpha)?;
    if p_a_lower > 0.5 {
        Ok(Decision::Certified {
            class,
            p_a_lower,
            radius: noise.radius(p_a_lower),
        })
    } else {
        Ok(Decision::Abstain {
            reason: AbstainReason::LowConfidence,
            p_a_lower,
        })
    }
}

/// PREDICT's decision: top two counts (count_a >= count_b, class of count_a): abstain
/// (NotSignificant) unless binomial_test_two_sided(count_a, count_a + count_b) <= alpha.
/// Returns Some(class) or None.
pub fn predict_decision(
    class: usize,
    count_a: u64,
    count_b: u64,
    alpha: f64,
) -> Result<Option<usize>, SmoothingError> {
    if count_a < count_b {
        return Err(SmoothingError::InvalidTopCounts { count_a, count_b });
    }
    if !(alpha > 0.0 && alpha < 1.0) {
        return Err(SmoothingError::InvalidAlpha(alpha));
    }
    let n = count_a
        .checked_add(count_b)
        .ok_or(SmoothingError::InvalidCount {
            k: count_a,
            n: u64::MAX,
        })?;
    let p_value = binomial_test_two_sided(count_a, n)?;
    Ok((p_value <= alpha).then_some(class))
}

#[cfg(test)]
mod tests;
