//! Monte Carlo CERTIFY and PREDICT (Cohen et al. 2019) over a batch of inputs,
//! on top of the model's noisy counting and the smoothing statistics.
use crate::model::{Classifier, ModelError};
use crate::smoothing::{self, CalibrationShift, Decision, SmoothingError};
use tch::Tensor;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Smoothing(#[from] SmoothingError),
    #[error("invalid parameter {field}: {message}")]
    InvalidParam {
        field: &'static str,
        message: String,
    },
}

/// CERTIFY's parameters: n0 selection samples, n estimation samples, level alpha,
/// and the forward batch size the samples are chunked into.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CertifyParams {
    pub n0: u64,
    pub n: u64,
    pub alpha: f64,
    pub batch: i64,
}

impl CertifyParams {
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.n0 == 0 {
            return Err(invalid("n0", "must be at least 1"));
        }
        validate_sampling(self.n, self.alpha, self.batch)
    }
}

fn invalid(field: &'static str, message: &str) -> EngineError {
    EngineError::InvalidParam {
        field,
        message: message.to_string(),
    }
}

/// The checks CERTIFY and PREDICT share, with the offending field named.
fn validate_sampling(n: u64, alpha: f64, batch: i64) -> Result<(), EngineError> {
    if n == 0 {
        return Err(invalid("n", "must be at least 1"));
    }
    if !(alpha > 0.0 && alpha < 1.0) {
        return Err(invalid("alpha", "must be in (0, 1)"));
    }
    if batch < 1 {
        return Err(invalid("batch", "must be at least 1"));
    }
    Ok(())
}

/// One input's Monte Carlo certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct McCertificate {
    /// The top class among the n0 selection samples (cA).
    pub class_a: usize,
    /// How often cA came up among the n estimation samples.
    pub count_a: u64,
    pub n: u64,
    pub decision: Decision,
}

/// One input's PREDICT outcome: the top class if the test rejects a tie.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub class: Option<usize>,
    /// The most frequent class, whether or not the test separated it.
    pub top_class: usize,
    pub count_a: u64,
    pub count_b: u64,
    pub n: u64,
}

/// CERTIFY for every input of `inputs` [B, C, H, W] (pixels in [0, 1]).
pub fn certify(
    model: &Classifier,
    sigma: f64,
    inputs: &Tensor,
    params: &CertifyParams,
) -> Result<Vec<McCertificate>, EngineError> {
    params.validate()?;
    let selection = count_rows(model, inputs, params.n0, sigma, params.batch)?;
    let estimation = count_rows(model, inputs, params.n, sigma, params.batch)?;
    selection
        .iter()
        .zip(&estimation)
        .map(|(sel, est)| mc_certificate(sel, est, params.n, params.alpha, sigma))
        .collect()
}

/// CERTIFY's decision from one input's selection and estimation counts.
fn mc_certificate(
    selection: &[u64],
    estimation: &[u64],
    n: u64,
    alpha: f64,
    sigma: f64,
) -> Result<McCertificate, EngineError> {
    let (class_a, _) = top_two(selection);
    mc_certificate_for(class_a, estimation, n, alpha, sigma)
}

/// CERTIFY's decision for a chosen cA from its estimation counts.
fn mc_certificate_for(
    class_a: usize,
    estimation: &[u64],
    n: u64,
    alpha: f64,
    sigma: f64,
) -> Result<McCertificate, EngineError> {
    let count_a = estimation.get(class_a).copied().unwrap_or(0);
    let decision = smoothing::certify_decision(class_a, count_a, n, alpha, sigma)?;
    Ok(McCertificate {
        class_a,
        count_a,
        n,
        decision,
    })
}

/// One input's Accelerated Smoothing estimate (arXiv 2402.07498): the class
/// from n0 base-classifier samples, the Monte Carlo count predicted by the
/// surrogate. Its radius is an estimate of the certificate, not a guarantee.
#[derive(Debug, Clone, PartialEq)]
pub struct SurrogateEstimate {
    /// cA, the top class among the n0 base-classifier samples.
    pub class_a: usize,
    /// The surrogate's probability of cA.
    pub p_hat_a: f64,
    /// What was taken off p_hat_a before counting: 0 for the paper's method,
    /// p_hat_a minus the calibrated probability for CALIBRATED.
    pub offset: f64,
    /// The surrogate's own top class.
    pub surrogate_class: usize,
    /// round(n * (p_hat[cA] - offset)): the count the surrogate stands in for.
    pub count_a: u64,
    /// The nominal sample count.
    pub n: u64,
    pub decision: Decision,
}

/// ACCELERATED for every input of `inputs`: n0 noisy base-classifier passes per
/// input, one surrogate pass over the batch, then Clopper-Pearson at the nominal
/// `params.n`. Abstains when the surrogate's top class is not cA (class
/// mismatch) or the bound is not above 1/2 (low confidence).
pub fn certify_accelerated(
    base: &Classifier,
    surrogate: &Classifier,
    sigma: f64,
    inputs: &Tensor,
    params: &CertifyParams,
) -> Result<Vec<SurrogateEstimate>, EngineError> {
    params.validate()?;
    let selection = count_rows(base, inputs, params.n0, sigma, params.batch)?;
    let probs = surrogate_probs(surrogate, inputs)?;
    selection
        .iter()
        .zip(&probs)
        .map(|(sel, p)| {
            let (class_a, _) = top_two(sel);
            surrogate_estimate(class_a, p, None, params.n, params.alpha, sigma)
        })
        .collect()
}

/// The surrogate's probabilities [B, classes] as one row per input, with its
/// bundle's tail map applied when it has one.
pub fn surrogate_probs(
    surrogate: &Classifier,
    inputs: &Tensor,
) -> Result<Vec<Vec<f64>>, EngineError> {
    let probs = surrogate
        .logits(&inputs.to_device(surrogate.device()))?
        .softmax(1, tch::Kind::Double)
        .to_device(tch::Device::Cpu);
    let k = surrogate.num_classes().max(1);
    let flat: Vec<f64> = Vec::try_from(probs.flatten(0, -1)).map_err(ModelError::from)?;
    let mut rows: Vec<Vec<f64>> = flat.chunks(k).map(<[f64]>::to_vec).collect();
    if let Some(map) = surrogate.tail_map() {
        rows.iter_mut().for_each(|p| map.apply(p));
    }
    Ok(rows)
}

/// ACCELERATED's decision for class cA from the surrogate's probabilities,
/// p_hat[cA] calibrated first when a shift is given (CALIBRATED).
pub fn surrogate_estimate(
    class_a: usize,
    p: &[f64],
    shift: Option<CalibrationShift>,
    n: u64,
    alpha: f64,
    sigma: f64,
) -> Result<SurrogateEstimate, EngineError> {
    let surrogate_class = argmax(p);
    let p_hat_a = p.get(class_a).copied().unwrap_or(0.0);
    let p_used = shift.map_or(p_hat_a, |s| s.apply(p_hat_a, n));
    let offset = p_hat_a - p_used;
    let count_a = ((n as f64) * p_used).round().clamp(0.0, n as f64) as u64;
    let decision = if surrogate_class == class_a {
        smoothing::certify_decision(class_a, count_a, n, alpha, sigma)?
    } else {
        Decision::Abstain {
            reason: smoothing::AbstainReason::ClassMismatch,
            p_a_lower: smoothing::clopper_pearson_lower(count_a, n, alpha)?,
        }
    };
    Ok(SurrogateEstimate {
        class_a,
        p_hat_a,
        offset,
        surrogate_class,
        count_a,
        n,
        decision,
    })
}

/// AUTO's rule: where the calibrated estimate is not decisive, Monte Carlo
/// decides. It falls back on a class mismatch, and when the calibrated
/// pA_lower lies in [low, high]: close enough to 1/2 that the Monte Carlo
/// certificate could certify where the estimate abstains (or certify a much
/// larger radius than a barely positive estimate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoBand {
    pub low: f64,
    pub high: f64,
}

impl AutoBand {
    pub fn validate(&self) -> Result<(), EngineError> {
        if !(0.0..=1.0).contains(&self.low)
            || !(0.0..=1.0).contains(&self.high)
            || self.low > self.high
        {
            return Err(invalid("auto_band", "needs 0 <= low <= high <= 1"));
        }
        Ok(())
    }

    pub fn falls_back(&self, estimate: &SurrogateEstimate) -> bool {
        let p = match estimate.decision {
            Decision::Certified { p_a_lower, .. } | Decision::Abstain { p_a_lower, .. } => {
                p_a_lower
            }
        };
        estimate.surrogate_class != estimate.class_a || (p >= self.low && p <= self.high)
    }
}

/// Index of the largest value; ties go to the lower index.
fn argmax(p: &[f64]) -> usize {
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

/// PREDICT for every input: n samples, two-sided binomial test of the top two counts at alpha.
pub fn predict(
    model: &Classifier,
    sigma: f64,
    inputs: &Tensor,
    n: u64,
    alpha: f64,
    batch: i64,
) -> Result<Vec<Prediction>, EngineError> {
    validate_sampling(n, alpha, batch)?;
    count_rows(model, inputs, n, sigma, batch)?
        .iter()
        .map(|row| prediction(row, n, alpha))
        .collect()
}

/// PREDICT's decision from one input's counts.
fn prediction(row: &[u64], n: u64, alpha: f64) -> Result<Prediction, EngineError> {
    let (a, b) = top_two(row);
    let count_a = row.get(a).copied().unwrap_or(0);
    let count_b = b.and_then(|b| row.get(b).copied()).unwrap_or(0);
    let class = smoothing::predict_decision(a, count_a, count_b, alpha)?;
    Ok(Prediction {
        class,
        top_class: a,
        count_a,
        count_b,
        n,
    })
}

/// Class counts as one `Vec<u64>` per input.
pub fn count_rows(
    model: &Classifier,
    inputs: &Tensor,
    num: u64,
    sigma: f64,
    batch: i64,
) -> Result<Vec<Vec<u64>>, EngineError> {
    let num = i64::try_from(num).map_err(|_| invalid("n", "too large"))?;
    let counts = model.sample_counts(inputs, num, sigma, batch)?;
    let k = model.num_classes();
    let flat: Vec<i64> = Vec::try_from(counts.flatten(0, -1)).map_err(ModelError::from)?;
    Ok(flat
        .chunks(k.max(1))
        .map(|row| row.iter().map(|&c| c as u64).collect())
        .collect())
}

/// The seed an input's noise is drawn under, from the run's seed and the
/// input's index: an input gets the same noise whichever inputs ran before
/// it, so resumed, sharded and uninterrupted runs agree row for row.
pub fn input_seed(seed: u64, idx: usize) -> i64 {
    (seed ^ (idx as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) as i64
}

/// Indices of the largest and second-largest counts; ties go to the lower class index.
pub fn top_two(counts: &[u64]) -> (usize, Option<usize>) {
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
    (order.first().copied().unwrap_or(0), order.get(1).copied())
}

pub mod requests;

#[cfg(test)]
mod tests;
