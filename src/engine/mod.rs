//! Monte Carlo CERTIFY and PREDICT (Cohen et al. 2019) over a batch of inputs,
//! on top of the model's noisy counting and the smoothing statistics.
use crate::model::{Classifier, ModelError};
use crate::smoothing::{self, Decision, SmoothingError};
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
        .map(|(sel, est)| {
            let (class_a, _) = top_two(sel);
            let count_a = est[class_a];
            let decision =
                smoothing::certify_decision(class_a, count_a, params.n, params.alpha, sigma)?;
            Ok(McCertificate {
                class_a,
                count_a,
                n: params.n,
                decision,
            })
        })
        .collect()
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
        .map(|row| {
            let (a, b) = top_two(row);
            let count_b = b.map_or(0, |b| row[b]);
            let class = smoothing::predict_decision(a, row[a], count_b, alpha)?;
            Ok(Prediction {
                class,
                count_a: row[a],
                count_b,
                n,
            })
        })
        .collect()
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

#[cfg(test)]
mod tests;
