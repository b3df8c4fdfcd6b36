//! Split-conformal calibration of the surrogate and the sequential choice of
//! cA (adaptive n0): the two pieces of statistics the methods beyond the
//! paper add, torch-free like the rest of `smoothing`.
use super::{binomial_test_two_sided, Noise, SmoothingError};
use serde::{Deserialize, Serialize};

/// How a calibration input's overestimation is scored. Split conformal
/// holds for any score; the score decides how tight the bound is where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ConformalScore {
    /// s = p_hat[cA] - p_MC[cA]; CALIBRATED uses p_hat[cA] - q. One shift for
    /// every input: it must cover the surrogate's worst band (pA around
    /// 0.9), so it also takes q off the confident inputs, capping the radius.
    #[default]
    #[value(name = "p-gap", alias = "p_gap")]
    PGap,
    /// s = ln(m_MC + c) - ln(m_hat + c) with m = 1 - p[cA] the miss and
    /// c = 1/(2N): the surrogate's miss scaled by e^q, a relative correction
    /// that stays small where the miss is small but grows large in the middle.
    #[value(name = "log-miss", alias = "log_miss")]
    LogMiss,
    /// s = (m_MC + c)^(1/4) - (m_hat + c)^(1/4): between the two, a shift
    /// that is nearly additive where the miss is large and nearly relative
    /// where it is small.
    #[value(name = "root-miss", alias = "root_miss")]
    RootMiss,
    /// s = u(p_hat) - u(p_MC), each p kept within [c, 1 - c], where u is the
    /// noise's radius in units of its scale (`Noise::radius_unit`): Phi^-1
    /// for the Gaussian (hence the name), 2 (p - 1/2) for the uniform,
    /// -ln(2 (1 - p)) for the Laplace. The overestimate in radius space
    /// (scale * s is the gap between the two radii before Clopper-Pearson).
    /// CALIBRATED takes scale * q off the surrogate's radius: the same shift
    /// at every p_hat, so no radius is capped the way p_gap caps it.
    #[value(name = "probit")]
    Probit,
}

impl ConformalScore {
    pub fn as_str(self) -> &'static str {
        match self {
            ConformalScore::PGap => "p_gap",
            ConformalScore::LogMiss => "log_miss",
            ConformalScore::RootMiss => "root_miss",
            ConformalScore::Probit => "probit",
        }
    }

    /// The score of one input whose surrogate says `p_hat` and whose Monte
    /// Carlo count over `n` samples gives `p_mc`, under `noise` (only the
    /// radius-space score reads it).
    pub fn score(self, noise: Noise, p_hat: f64, p_mc: f64, n: u64) -> f64 {
        if !p_hat.is_finite() || !p_mc.is_finite() {
            // Refused by the quantile, rather than read as a sure prediction.
            return f64::NAN;
        }
        match self {
            ConformalScore::PGap => p_hat - p_mc,
            ConformalScore::LogMiss => {
                let c = half_sample(n);
                ((1.0 - p_mc).max(0.0) + c).ln() - ((1.0 - p_hat).max(0.0) + c).ln()
            }
            ConformalScore::RootMiss => {
                let c = half_sample(n);
                ((1.0 - p_mc).max(0.0) + c).powf(0.25) - ((1.0 - p_hat).max(0.0) + c).powf(0.25)
            }
            ConformalScore::Probit => unit(noise, p_hat, n) - unit(noise, p_mc, n),
        }
    }

    /// The calibrated probability: the least p_MC with score(p_hat, p_MC) <= q,
    /// so that a score within q means p_MC >= this value.
    pub fn calibrated(self, noise: Noise, p_hat: f64, q: f64, n: u64) -> f64 {
        if !p_hat.is_finite() || !q.is_finite() {
            return 0.0;
        }
        match self {
            ConformalScore::PGap => p_hat - q,
            ConformalScore::LogMiss => {
                let c = half_sample(n);
                1.0 - (((1.0 - p_hat).max(0.0) + c) * q.exp() - c)
            }
            ConformalScore::RootMiss => {
                let c = half_sample(n);
                let root = ((1.0 - p_hat).max(0.0) + c).powf(0.25) + q;
                // Below zero no miss scores within q: the bound is then 1,
                // and never reached (p_MC = 1 scores c^(1/4) - root_hat > q).
                if root <= 0.0 {
                    1.0
                } else {
                    1.0 - (root.powi(4) - c)
                }
            }
            // score <= q  <=>  u(p_MC) >= u(p_hat) - q, and u is increasing,
            // so p_MC (kept within [c, 1 - c]) >= u^-1(u(p_hat) - q).
            // At or below the clamp's floor the bound says nothing: count 0.
            ConformalScore::Probit => {
                let z = unit(noise, p_hat, n) - q;
                if z <= unit(noise, 0.0, n) {
                    0.0
                } else {
                    noise.p_of_unit(z)
                }
            }
        }
        .clamp(0.0, 1.0)
    }
}

/// Phi(z), accurate in both tails (statrs's erfc).
pub fn standard_normal_cdf(z: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    Normal::standard().cdf(z)
}

/// The noise's radius in units of its scale at p kept within [c, 1 - c],
/// c = 1/(2n): finite at p = 0 and 1 (Phi^-1 for the Gaussian).
fn unit(noise: Noise, p: f64, n: u64) -> f64 {
    let c = half_sample(n);
    noise.radius_unit(p.clamp(c, 1.0 - c))
}

fn half_sample(n: u64) -> f64 {
    0.5 / n.max(1) as f64
}

/// The most bins a Mondrian calibration may have.
pub const MAX_BINS: usize = 8;

/// Mondrian calibration: a quantile per bin of p_hat[cA]. Bin j holds
/// p_hat < upper[j] (and >= upper[j - 1]); the last bin has no upper edge.
/// Conformal validity holds within each bin, the bins being a function of
/// the input that the calibration scores did not choose.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MondrianBins {
    len: usize,
    upper: [f64; MAX_BINS],
    q: [f64; MAX_BINS],
}

impl MondrianBins {
    /// `edges` (increasing, inside (0, 1)) split [0, 1] into edges.len() + 1
    /// bins; `qs` is one quantile per bin.
    pub fn new(edges: &[f64], qs: &[f64]) -> Result<MondrianBins, SmoothingError> {
        check_edges(edges)?;
        if qs.len() != edges.len() + 1 {
            return Err(SmoothingError::NumericalFailure(format!(
                "{} bins need {} quantiles, got {}",
                edges.len() + 1,
                edges.len() + 1,
                qs.len()
            )));
        }
        let mut bins = MondrianBins {
            len: qs.len(),
            ..Default::default()
        };
        for (j, &q) in qs.iter().enumerate() {
            bins.upper[j] = edges.get(j).copied().unwrap_or(f64::INFINITY);
            bins.q[j] = q;
        }
        Ok(bins)
    }

    /// The quantile of the bin `p_hat` falls in.
    pub fn q_for(&self, p_hat: f64) -> f64 {
        let j = (0..self.len)
            .find(|&j| p_hat < self.upper[j])
            .unwrap_or(self.len.saturating_sub(1));
        self.q[j]
    }
}

/// The bin of `p_hat` under `edges` (see [`MondrianBins`]).
pub fn bin_of(edges: &[f64], p_hat: f64) -> usize {
    edges.iter().take_while(|&&e| p_hat >= e).count()
}

/// Edges must be finite, inside (0, 1), strictly increasing, at most MAX_BINS - 1.
pub fn check_edges(edges: &[f64]) -> Result<(), SmoothingError> {
    let ok = edges.len() < MAX_BINS
        && edges.iter().all(|e| *e > 0.0 && *e < 1.0)
        && edges.windows(2).all(|w| w[0] < w[1]);
    if ok {
        Ok(())
    } else {
        Err(SmoothingError::NumericalFailure(format!(
            "bin edges {edges:?}: need at most {} increasing values inside (0, 1)",
            MAX_BINS - 1
        )))
    }
}

/// The logit margin of cA (its logit minus the largest other) over the n0
/// selection samples: mean and sample standard deviation. If the margin
/// under noise were Gaussian, pA = P(margin > 0) = Phi(mean / sd) exactly;
/// the estimate z = mean / sd then has a standard error of about
/// sqrt((1 + z^2 / 2) / n0), 0.1-0.2 for n0 = 100 where pA is 0.5-0.98,
/// several times tighter there than the surrogate. Far out in the tail the
/// margin is not Gaussian and z overshoots, which is where the surrogate
/// (trained on counts) takes over (see [`blended_estimate`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelectionMargin {
    pub mean: f64,
    pub sd: f64,
}

impl SelectionMargin {
    /// From the sum and sum of squares of `n` margins; `None` below two
    /// samples or for non-finite sums.
    pub fn from_sums(sum: f64, sum_sq: f64, n: u64) -> Option<SelectionMargin> {
        if n < 2 || !sum.is_finite() || !sum_sq.is_finite() {
            return None;
        }
        let nf = n as f64;
        let mean = sum / nf;
        let var = ((sum_sq - nf * mean * mean) / (nf - 1.0)).max(0.0);
        Some(SelectionMargin {
            mean,
            sd: var.sqrt(),
        })
    }

    /// mean / sd: +-infinity for a margin that never varied.
    pub fn z(&self) -> f64 {
        if self.sd > 0.0 {
            self.mean / self.sd
        } else if self.mean > 0.0 {
            f64::INFINITY
        } else {
            f64::NEG_INFINITY
        }
    }
}

/// The largest |z| a margin threshold may be: beyond it Phi(z) is 0 or 1 to
/// double precision and the threshold would say nothing.
pub const MAX_MARGIN_THRESHOLD: f64 = 8.0;

/// Whether `t` can be a margin threshold (finite, |t| <= MAX_MARGIN_THRESHOLD).
pub fn margin_threshold_ok(t: f64) -> bool {
    t.is_finite() && t.abs() <= MAX_MARGIN_THRESHOLD
}

/// The p[cA] that CALIBRATED shifts when it blends (threshold `t`): the
/// margin's Phi(z) where z < t, where the Gaussian margin is accurate, and
/// max(p_hat, Phi(t)) beyond it, the surrogate's tail no lower than the
/// margin vouches for. Without a threshold or a margin, p_hat alone. The
/// conformal guarantee holds for any such function of the input and its
/// selection samples, provided calibration draws them as certification does.
pub fn blended_estimate(p_hat: f64, margin_z: Option<f64>, threshold: Option<f64>) -> f64 {
    match (margin_z, threshold) {
        (Some(z), Some(t)) if !z.is_nan() && t.is_finite() => {
            if z < t {
                standard_normal_cdf(z)
            } else {
                p_hat.max(standard_normal_cdf(t))
            }
        }
        _ => p_hat,
    }
}

/// CALIBRATED's adjustment of p_hat[cA]: a score and its quantile, one for
/// every input, or one per bin of the estimate (Mondrian); with a margin
/// threshold, the estimate blends the selection samples' margin in first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalibrationShift {
    /// The bundle's noise, whose radius units the radius-space score uses.
    pub noise: Noise,
    pub score: ConformalScore,
    pub q: f64,
    pub bins: Option<MondrianBins>,
    pub margin_threshold: Option<f64>,
}

impl CalibrationShift {
    /// The estimate the scores were computed on (see [`blended_estimate`]).
    pub fn estimate(&self, p_hat: f64, margin_z: Option<f64>) -> f64 {
        blended_estimate(p_hat, margin_z, self.margin_threshold)
    }

    /// The calibrated p[cA] for surrogate p_hat[cA] and the selection margin's z.
    pub fn apply(&self, p_hat: f64, margin_z: Option<f64>, n: u64) -> f64 {
        let p = self.estimate(p_hat, margin_z);
        let q = self.bins.map_or(self.q, |b| b.q_for(p));
        self.score.calibrated(self.noise, p, q, n)
    }
}

/// Which rank of the sorted calibration scores becomes q.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum RankRule {
    /// ceil((m + 1)(1 - delta)): P(s > q) <= delta on average over the
    /// calibration draw (split conformal).
    #[default]
    Marginal,
    /// The least k with P(Binomial(m, 1 - delta) <= k - 1) >= 1 - gamma: with
    /// probability at least 1 - gamma over the calibration draw, this
    /// calibration's own coverage is at least 1 - delta (training-conditional
    /// validity; Vovk 2012, Bian and Barber 2023).
    TrainingConditional { gamma: f64 },
}

impl RankRule {
    pub fn rank(self, m: usize, delta: f64) -> Option<usize> {
        match self {
            RankRule::Marginal => conformal_rank(m, delta),
            RankRule::TrainingConditional { gamma } => training_conditional_rank(m, delta, gamma),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RankRule::Marginal => "marginal",
            RankRule::TrainingConditional { .. } => "training_conditional",
        }
    }
}

/// The training-conditional rank (see [`RankRule::TrainingConditional`]).
/// The k-th smallest of m exchangeable continuous scores covers a fresh one
/// with probability F(s_(k)) ~ Beta(k, m + 1 - k), and the chance that this
/// reaches 1 - delta is P(Binomial(m, 1 - delta) <= k - 1). `None` when even
/// k = m falls short (too few scores for this delta and gamma).
pub fn training_conditional_rank(m: usize, delta: f64, gamma: f64) -> Option<usize> {
    if !(delta > 0.0 && delta < 1.0 && gamma > 0.0 && gamma < 1.0) || m == 0 {
        return None;
    }
    // The binomial CDF summed upward in log space from its pmf.
    let (mf, p, q) = (m as f64, 1.0 - delta, delta);
    let mut cdf = 0.0;
    for k in 1..=m {
        let j = (k - 1) as f64;
        cdf += super::binomial::ln_dbinom(j, mf, p, q).exp();
        if cdf >= 1.0 - gamma {
            return Some(k);
        }
    }
    None
}

/// The finite-sample conformal rank ceil((m + 1)(1 - delta)), from 1: the
/// rank among m sorted calibration scores whose value bounds a fresh,
/// exchangeable score with probability at least 1 - delta. `None` when it
/// exceeds m (too few scores for this delta: the bound would be +inf).
pub fn conformal_rank(m: usize, delta: f64) -> Option<usize> {
    if !(delta > 0.0 && delta < 1.0) || m == 0 {
        return None;
    }
    // The product is an integer whenever (m + 1) * delta is one; the absolute
    // tolerance (far above f64's error for any m that fits in memory, far
    // below a fractional part for delta of up to six decimals) keeps
    // 0.95 * 201 = 190.95 at 191 and 0.95 * 200 = 189.99999999999997 at 190.
    let exact = (m as f64 + 1.0) * (1.0 - delta);
    let rank = (exact - 1e-7).ceil().max(1.0) as usize;
    (rank <= m).then_some(rank)
}

/// The conformal (1 - delta) quantile of `scores` and its rank.
pub fn conformal_quantile(scores: &[f64], delta: f64) -> Result<(f64, usize), SmoothingError> {
    conformal_quantile_by(scores, delta, RankRule::Marginal)
}

/// The (1 - delta) quantile of `scores` under `rule`, and its rank.
pub fn conformal_quantile_by(
    scores: &[f64],
    delta: f64,
    rule: RankRule,
) -> Result<(f64, usize), SmoothingError> {
    if scores.iter().any(|s| !s.is_finite()) {
        return Err(SmoothingError::NumericalFailure(
            "a calibration score is not finite".into(),
        ));
    }
    let rank = rule.rank(scores.len(), delta).ok_or_else(|| {
        SmoothingError::NumericalFailure(format!(
            "{} scores are too few for delta = {delta} under the {} rank",
            scores.len(),
            rule.as_str()
        ))
    })?;
    let mut sorted = scores.to_vec();
    sorted.sort_by(f64::total_cmp);
    Ok((sorted[rank - 1], rank))
}

/// The adaptive-n0 stopping rule. Base-classifier samples are drawn in
/// chunks of `chunk` up to the cap n0; after each chunk the leading class is
/// settled when the two-sided binomial test of the top two counts rejects
/// p_A = p_B at level alpha / L, L = ceil(n0 / chunk) the most looks there
/// can be. By Bonferroni over the looks, the chance of stopping early on a
/// class that is not the smoothed classifier's top class is at most alpha.
/// At the cap, the leader is taken as fixed-n0 selection takes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveN0 {
    pub chunk: u64,
    pub alpha: f64,
}

impl AdaptiveN0 {
    pub fn validate(&self) -> Result<(), SmoothingError> {
        if self.chunk == 0 {
            return Err(SmoothingError::ZeroSamples);
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(SmoothingError::InvalidAlpha(self.alpha));
        }
        Ok(())
    }

    /// The most looks under cap `n0`.
    pub fn looks(&self, n0: u64) -> u64 {
        n0.div_ceil(self.chunk.max(1)).max(1)
    }

    /// Whether the top class of `counts` is settled after a look, under cap `n0`.
    pub fn settled(&self, counts: &[u64], n0: u64) -> Result<bool, SmoothingError> {
        let (top, second) = super::top_two(counts);
        let a = counts.get(top).copied().unwrap_or(0);
        let b = second.and_then(|i| counts.get(i).copied()).unwrap_or(0);
        if a == 0 {
            return Ok(false);
        }
        let p = binomial_test_two_sided(a, a + b)?;
        Ok(p <= self.alpha / self.looks(n0) as f64)
    }
}
