//! CERTIFY, ACCELERATED and PREDICT for a batch of independent requests, as a
//! server forms them: each request brings its own n0, n, alpha and noise seed,
//! and its noise comes from its own seeded streams, so its answer does not
//! depend on which requests shared its batch. A request whose caller has gone
//! (`keep` says no) stops drawing samples and gets `None`.
use super::{
    mc_certificate_for, prediction, surrogate_estimate, surrogate_probs, top_two, EngineError,
    McCertificate, Prediction, SurrogateEstimate,
};
use crate::model::{splitmix64_mix, Classifier, NoiseStream, StreamTally};
use crate::smoothing::Noise;
use crate::smoothing::{AdaptiveN0, CalibrationShift, SelectionMargin};
use std::time::{Duration, Instant};
use tch::Tensor;

/// One request's parameters; `input` is its row of the batch's input tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskParams {
    pub input: usize,
    /// Selection samples (the cap, with `adaptive_n0`).
    pub n0: u64,
    pub n: u64,
    pub alpha: f64,
    pub seed: u64,
    /// CALIBRATED's adjustment of p_hat[cA]; None for the paper's method.
    pub shift: Option<CalibrationShift>,
    /// Choose cA sequentially, stopping before n0 once the leader is settled.
    pub adaptive_n0: Option<AdaptiveN0>,
    /// cA already chosen (AUTO's Monte Carlo fallback): no selection samples.
    pub class_a: Option<usize>,
    /// A stage task's samples: this slice of the n estimation samples.
    pub slice: Option<Slice>,
}

/// Estimation samples `start .. start + num` of a request's n: stages of a
/// sequential test drawn a slice at a time. Any slicing draws the same
/// samples, and the whole n are Monte Carlo's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    pub start: u64,
    pub num: u64,
}

impl TaskParams {
    /// Fixed-n0 selection, no calibration, no class given.
    pub fn new(input: usize, n0: u64, n: u64, alpha: f64, seed: u64) -> TaskParams {
        TaskParams {
            input,
            n0,
            n,
            alpha,
            seed,
            shift: None,
            adaptive_n0: None,
            class_a: None,
            slice: None,
        }
    }
}

/// A request's cA and the selection samples drawn to choose it, with cA's
/// logit margin over them (CALIBRATED's blended estimate reads it; `None`
/// when cA was given or fewer than two samples were drawn).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Selected {
    pub class_a: usize,
    pub drawn: u64,
    pub margin: Option<SelectionMargin>,
}

impl Selected {
    /// A given cA: no selection samples.
    pub fn given(class_a: usize) -> Selected {
        Selected {
            class_a,
            drawn: 0,
            margin: None,
        }
    }

    pub fn margin_z(&self) -> Option<f64> {
        self.margin.map(|m| m.z())
    }
}

/// Where a batch's time went; every request of the batch reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchTiming {
    /// Noise and base-classifier passes (selection and estimation).
    pub sampling: Duration,
    /// The surrogate's forward pass.
    pub surrogate: Duration,
}

/// cA for each request: the class it brings, or the top class of its n0
/// selection samples, or (adaptive) of samples drawn a chunk at a time until
/// the stopping rule settles the leader or the cap n0 is reached. Fixed
/// selection draws one stream of n0 samples; adaptive look t draws its chunk
/// from a stream of its own, so no look reuses another's noise. `None`: the
/// request was cancelled while drawing.
pub fn select(
    base: &Classifier,
    noise: Noise,
    inputs: &Tensor,
    reqs: &[TaskParams],
    forward_batch: i64,
    keep: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<Option<Selected>>, EngineError> {
    let k = base.num_classes();
    let mut out: Vec<Option<Selected>> = vec![None; reqs.len()];
    let mut selecting = vec![Selecting::new(k); reqs.len()];
    let mut open: Vec<usize> = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        if let Some(rule) = r.adaptive_n0 {
            rule.validate()?;
        }
        match r.class_a {
            Some(class_a) => out[i] = Some(Selected::given(class_a)),
            None => open.push(i),
        }
    }
    let mut look = 0u64;
    while !open.is_empty() {
        let streams: Vec<NoiseStream> = open
            .iter()
            .map(|&i| selection_stream(&reqs[i], selecting[i].drawn, look))
            .collect();
        let got = base.tally_streams(
            inputs,
            &streams,
            noise,
            forward_batch,
            &mut |s| open.get(s).is_some_and(|&i| keep(i)),
            true,
        )?;
        let mut still = Vec::new();
        for ((&i, stream), tally) in open.iter().zip(&streams).zip(got) {
            let Some(tally) = tally else { continue };
            let sel = &mut selecting[i];
            sel.add(&tally, stream.num);
            if sel.done(&reqs[i])? {
                out[i] = Some(sel.selected());
            } else {
                still.push(i);
            }
        }
        open = still;
        look += 1;
    }
    Ok(out)
}

/// The selection samples of look `look` of `r`, `drawn` already drawn: all
/// n0 at once (fixed), or the next chunk from a stream of the look's own.
fn selection_stream(r: &TaskParams, drawn: u64, look: u64) -> NoiseStream {
    let base_seed = stream_seed(r.seed, SELECTION);
    match r.adaptive_n0 {
        None => NoiseStream::whole(r.input, r.n0, base_seed),
        Some(rule) => NoiseStream::whole(
            r.input,
            rule.chunk.min(r.n0 - drawn),
            base_seed ^ splitmix64_mix(look.wrapping_add(1)),
        ),
    }
}

/// One request's selection under way: its class counts and per-class margin
/// sums over the selection samples drawn so far.
#[derive(Clone)]
struct Selecting {
    counts: Vec<u64>,
    margin_sum: Vec<f64>,
    margin_sum_sq: Vec<f64>,
    drawn: u64,
}

impl Selecting {
    fn new(classes: usize) -> Selecting {
        Selecting {
            counts: vec![0; classes],
            margin_sum: vec![0.0; classes],
            margin_sum_sq: vec![0.0; classes],
            drawn: 0,
        }
    }

    /// Adds a look's tally of `num` samples.
    fn add(&mut self, tally: &StreamTally, num: u64) {
        for (c, v) in self.counts.iter_mut().zip(&tally.counts) {
            *c += v;
        }
        for (acc, v) in self.margin_sum.iter_mut().zip(&tally.margin_sum) {
            *acc += v;
        }
        for (acc, v) in self.margin_sum_sq.iter_mut().zip(&tally.margin_sum_sq) {
            *acc += v;
        }
        self.drawn += num;
    }

    /// Fixed selection is done after its one look; adaptive once the cap n0
    /// is reached or the stopping rule settles the leader.
    fn done(&self, r: &TaskParams) -> Result<bool, EngineError> {
        Ok(match r.adaptive_n0 {
            None => true,
            Some(rule) => self.drawn >= r.n0 || rule.settled(&self.counts, r.n0)?,
        })
    }

    /// cA, the top class so far, with its margin over the samples drawn.
    fn selected(&self) -> Selected {
        let class_a = top_two(&self.counts).0;
        Selected {
            class_a,
            drawn: self.drawn,
            margin: SelectionMargin::from_sums(
                self.margin_sum.get(class_a).copied().unwrap_or(f64::NAN),
                self.margin_sum_sq.get(class_a).copied().unwrap_or(f64::NAN),
                self.drawn,
            ),
        }
    }
}

/// Noisy base-classifier passes a batch made, per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassCounts {
    pub base: u64,
    pub surrogate: u64,
}

/// The selection (n0) and estimation (n) samples of a request draw from
/// unrelated streams of its seed.
pub(crate) fn stream_seed(seed: u64, purpose: u64) -> u64 {
    seed ^ purpose.wrapping_mul(0xD6E8_FEB8_6659_FD93)
}
pub(crate) const SELECTION: u64 = 1;
pub(crate) const ESTIMATION: u64 = 2;

fn streams(
    reqs: &[TaskParams],
    purpose: u64,
    num: impl Fn(&TaskParams) -> u64,
) -> Vec<NoiseStream> {
    reqs.iter()
        .map(|r| NoiseStream::whole(r.input, num(r), stream_seed(r.seed, purpose)))
        .collect()
}

/// One batch's answers (None where a request was cancelled), with its
/// timing and forward-pass counts.
pub type Batch<T> = (Vec<Option<(T, Selected)>>, BatchTiming, PassCounts);

/// ACCELERATED (or CALIBRATED, with the request's shift) for each request:
/// selection samples pick cA, one surrogate pass over the batch.
pub fn certify_surrogate(
    base: &Classifier,
    surrogate: &Classifier,
    noise: Noise,
    inputs: &Tensor,
    reqs: &[TaskParams],
    forward_batch: i64,
    keep: &mut dyn FnMut(usize) -> bool,
) -> Result<Batch<SurrogateEstimate>, EngineError> {
    let started = Instant::now();
    let selection = select(base, noise, inputs, reqs, forward_batch, keep)?;
    let sampling = started.elapsed();
    let started = Instant::now();
    let probs = surrogate_probs(surrogate, inputs)?;
    let timing = BatchTiming {
        sampling,
        surrogate: started.elapsed(),
    };
    let passes = PassCounts {
        base: selection.iter().flatten().map(|s| s.drawn).sum(),
        surrogate: reqs.len() as u64,
    };
    let out = reqs
        .iter()
        .zip(selection)
        .map(|(r, sel)| {
            let p = probs.get(r.input).map(Vec::as_slice).unwrap_or(&[]);
            sel.map(|sel| {
                surrogate_estimate(sel.class_a, p, r.shift, sel.margin_z(), r.n, r.alpha, noise)
                    .map(|e| (e, sel))
            })
            .transpose()
        })
        .collect::<Result<_, _>>()?;
    Ok((out, timing, passes))
}

/// CERTIFY for each request: selection samples (none when the request brings
/// cA), then n estimation samples.
pub fn certify_mc(
    base: &Classifier,
    noise: Noise,
    inputs: &Tensor,
    reqs: &[TaskParams],
    forward_batch: i64,
    keep: &mut dyn FnMut(usize) -> bool,
) -> Result<Batch<McCertificate>, EngineError> {
    let started = Instant::now();
    let selection = select(base, noise, inputs, reqs, forward_batch, keep)?;
    // A request cancelled during selection draws no estimation samples.
    let alive: Vec<bool> = selection.iter().map(Option::is_some).collect();
    let estimation = base.count_streams(
        inputs,
        &streams(reqs, ESTIMATION, |r| r.n),
        noise,
        forward_batch,
        &mut |s| alive[s] && keep(s),
    )?;
    let timing = BatchTiming {
        sampling: started.elapsed(),
        surrogate: Duration::ZERO,
    };
    let passes = PassCounts {
        base: selection.iter().flatten().map(|s| s.drawn).sum::<u64>()
            + reqs
                .iter()
                .zip(&alive)
                .filter(|(_, a)| **a)
                .map(|(r, _)| r.n)
                .sum::<u64>(),
        surrogate: 0,
    };
    let out = reqs
        .iter()
        .zip(selection.into_iter().zip(estimation))
        .map(|(r, pair)| match pair {
            (Some(sel), Some(est)) => {
                mc_certificate_for(sel.class_a, &est, r.n, r.alpha, noise).map(|c| Some((c, sel)))
            }
            _ => Ok(None),
        })
        .collect::<Result<_, _>>()?;
    Ok((out, timing, passes))
}

/// PREDICT for each request: n samples and the binomial test (n0 unused).
pub fn predict(
    base: &Classifier,
    noise: Noise,
    inputs: &Tensor,
    reqs: &[TaskParams],
    forward_batch: i64,
    keep: &mut dyn FnMut(usize) -> bool,
) -> Result<(Vec<Option<Prediction>>, BatchTiming, PassCounts), EngineError> {
    let started = Instant::now();
    let counts = base.count_streams(
        inputs,
        &streams(reqs, ESTIMATION, |r| r.n),
        noise,
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

/// A stage task for each request: cA (selection samples first when the
/// request brings none), then the count of cA in its slice of the
/// estimation samples (`slice`, required).
pub fn count_stage(
    base: &Classifier,
    noise: Noise,
    inputs: &Tensor,
    reqs: &[TaskParams],
    forward_batch: i64,
    keep: &mut dyn FnMut(usize) -> bool,
) -> Result<Batch<u64>, EngineError> {
    let started = Instant::now();
    let slices: Vec<Slice> = reqs
        .iter()
        .map(|r| {
            r.slice
                .ok_or(EngineError::Internal("a stage task needs its slice"))
        })
        .collect::<Result<_, _>>()?;
    let selection = select(base, noise, inputs, reqs, forward_batch, keep)?;
    let alive: Vec<bool> = selection.iter().map(Option::is_some).collect();
    let streams: Vec<NoiseStream> = reqs
        .iter()
        .zip(&slices)
        .map(|(r, sl)| NoiseStream {
            input: r.input,
            num: sl.num,
            seed: stream_seed(r.seed, ESTIMATION),
            start: sl.start,
            len: r.n,
        })
        .collect();
    let counts = base.count_streams(inputs, &streams, noise, forward_batch, &mut |s| {
        alive[s] && keep(s)
    })?;
    let timing = BatchTiming {
        sampling: started.elapsed(),
        surrogate: Duration::ZERO,
    };
    let passes = PassCounts {
        base: selection.iter().flatten().map(|s| s.drawn).sum::<u64>()
            + slices
                .iter()
                .zip(&alive)
                .filter(|(_, a)| **a)
                .map(|(s, _)| s.num)
                .sum::<u64>(),
        surrogate: 0,
    };
    let out = selection
        .into_iter()
        .zip(counts)
        .map(|pair| match pair {
            (Some(sel), Some(row)) => Some((row.get(sel.class_a).copied().unwrap_or(0), sel)),
            _ => None,
        })
        .collect();
    Ok((out, timing, passes))
}
