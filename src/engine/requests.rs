//! CERTIFY, ACCELERATED and PREDICT for a batch of independent requests, as a
//! server forms them: each request brings its own n0, n, alpha and noise seed,
//! and its noise comes from its own seeded streams, so its answer does not
//! depend on which requests shared its batch. A request whose caller has gone
//! (`keep` says no) stops drawing samples and gets `None`.
use super::{
    mc_certificate, prediction, surrogate_estimate, surrogate_probs, EngineError, McCertificate,
    Prediction, SurrogateEstimate,
};
use crate::model::{Classifier, NoiseStream};
use std::time::{Duration, Instant};
use tch::Tensor;

/// One request's parameters; `input` is its row of the batch's input tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestParams {
    pub input: usize,
    pub n0: u64,
    pub n: u64,
    pub alpha: f64,
    pub seed: u64,
}

/// Where a batch's time went; every request of the batch reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchTiming {
    /// Noise and base-classifier passes (selection and estimation).
    pub sampling: Duration,
    /// The surrogate's forward pass.
    pub surrogate: Duration,
}

/// Noisy base-classifier passes a batch made, per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassCounts {
    pub base: u64,
    pub surrogate: u64,
}

/// The selection (n0) and estimation (n) samples of a request draw from
/// unrelated streams of its seed.
fn stream_seed(seed: u64, purpose: u64) -> u64 {
    seed ^ purpose.wrapping_mul(0xD6E8_FEB8_6659_FD93)
}
const SELECTION: u64 = 1;
const ESTIMATION: u64 = 2;

fn streams(
    reqs: &[RequestParams],
    purpose: u64,
    num: impl Fn(&RequestParams) -> u64,
) -> Vec<NoiseStream> {
    reqs.iter()
        .map(|r| NoiseStream {
            input: r.input,
            num: num(r),
            seed: stream_seed(r.seed, purpose),
        })
        .collect()
}

/// ACCELERATED for each request: n0 samples pick cA, one surrogate pass over the batch.
pub fn certify_surrogate(
    base: &Classifier,
    surrogate: &Classifier,
    sigma: f64,
    inputs: &Tensor,
    reqs: &[RequestParams],
    forward_batch: i64,
    keep: &mut dyn FnMut(usize) -> bool,
) -> Result<(Vec<Option<SurrogateEstimate>>, BatchTiming, PassCounts), EngineError> {
    let started = Instant::now();
    let selection = base.count_streams(
        inputs,
        &streams(reqs, SELECTION, |r| r.n0),
        sigma,
        forward_batch,
        keep,
    )?;
    let sampling = started.elapsed();
    let started = Instant::now();
    let probs = surrogate_probs(surrogate, inputs)?;
    let timing = BatchTiming {
        sampling,
        surrogate: started.elapsed(),
    };
    let passes = PassCounts {
        base: reqs.iter().map(|r| r.n0).sum(),
        surrogate: reqs.len() as u64,
    };
    let out = reqs
        .iter()
        .zip(selection)
        .map(|(r, sel)| {
            let p = probs.get(r.input).map(Vec::as_slice).unwrap_or(&[]);
            sel.map(|sel| surrogate_estimate(&sel, p, r.n, r.alpha, sigma))
                .transpose()
        })
        .collect::<Result<_, _>>()?;
    Ok((out, timing, passes))
}

/// CERTIFY for each request: n0 selection samples, then n estimation samples.
pub fn certify_mc(
    base: &Classifier,
    sigma: f64,
    inputs: &Tensor,
    reqs: &[RequestParams],
    forward_batch: i64,
    keep: &mut dyn FnMut(usize) -> bool,
) -> Result<(Vec<Option<McCertificate>>, BatchTiming, PassCounts), EngineError> {
    let started = Instant::now();
    let selection = base.count_streams(
        inputs,
        &streams(reqs, SELECTION, |r| r.n0),
        sigma,
        forward_batch,
        keep,
    )?;
    // A request cancelled during selection draws no estimation samples.
    let alive: Vec<bool> = selection.iter().map(Option::is_some).collect();
    let estimation = base.count_streams(
        inputs,
        &streams(reqs, ESTIMATION, |r| r.n),
        sigma,
        forward_batch,
        &mut |s| alive[s] && keep(s),
    )?;
    let timing = BatchTiming {
        sampling: started.elapsed(),
        surrogate: Duration::ZERO,
    };
    let passes = PassCounts {
        base: reqs.iter().map(|r| r.n0 + r.n).sum(),
        surrogate: 0,
    };
    let out = reqs
        .iter()
        .zip(selection.into_iter().zip(estimation))
        .map(|(r, pair)| match pair {
            (Some(sel), Some(est)) => mc_certificate(&sel, &est, r.n, r.alpha, sigma).map(Some),
            _ => Ok(None),
        })
        .collect::<Result<_, _>>()?;
    Ok((out, timing, passes))
}

/// PREDICT for each request: n samples and the binomial test (n0 unused).
pub fn predict(
    base: &Classifier,
    sigma: f64,
    inputs: &Tensor,
    reqs: &[RequestParams],
    forward_batch: i64,
    keep: &mut dyn FnMut(usize) -> bool,
) -> Result<(Vec<Option<Prediction>>, BatchTiming, PassCounts), EngineError> {
    let started = Instant::now();
    let counts = base.count_streams(
        inputs,
        &streams(reqs, ESTIMATION, |r| r.n),
        sigma,
        forward_batch,
        keep,
    )?;
    let timing = BatchTiming {
        sampling: started.elapsed(),
        surrogate: Duration::ZERO,
    };
    let passes = PassCounts {
        base: reqs.iter().map(|r| r.n).sum(),
        surrogate: 0,
    };
    let out = reqs
        .iter()
        .zip(counts)
        .map(|(r, row)| row.map(|row| prediction(&row, r.n, r.alpha)).transpose())
        .collect::<Result<_, _>>()?;
    Ok((out, timing, passes))
}
