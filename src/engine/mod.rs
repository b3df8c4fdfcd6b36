//! The one engine every caller shares: CERTIFY (Monte Carlo), ACCELERATED
//! (the surrogate, plain or calibrated) and PREDICT over a batch of requests,
//! each drawing its noise from its own seeded streams, on top of the model's
//! counting and the smoothing statistics. The server's lanes, offline
//! `certify` and the benchmarks all run [`Engine::run`], so one seed gives
//! one answer everywhere, batched or not. AUTO's decision is [`AutoBand::fallback`].
use crate::model::{surrogate_rows_for, Bundle, Classifier, ModelError};
use crate::smoothing::sequential::{self, SequentialTest};
use crate::smoothing::{self, CalibrationShift, Decision, Noise, SmoothingError};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

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
    /// A surrogate task for an engine loaded without one: callers check
    /// `has_surrogate` first, so this is a bug or a bundle changed under us.
    #[error("this engine has no surrogate")]
    NoSurrogate,
    /// A broken invariant between the engine's own parts (not the request's fault).
    #[error("internal: {0}")]
    Internal(&'static str),
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

/// CERTIFY's decision for a chosen cA from its estimation counts.
fn mc_certificate_for(
    class_a: usize,
    estimation: &[u64],
    n: u64,
    alpha: f64,
    noise: Noise,
) -> Result<McCertificate, EngineError> {
    let count_a = estimation.get(class_a).copied().unwrap_or(0);
    let decision = smoothing::certify_decision(class_a, count_a, n, alpha, noise)?;
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

/// The surrogate's probabilities [B, classes] as one row per input, with its
/// bundle's tail map applied when it has one. Every forward pass has the
/// device's fixed [`surrogate_rows_for`] rows, so an input's probabilities do
/// not depend on the inputs it was batched with.
pub fn surrogate_probs(
    surrogate: &Classifier,
    inputs: &Tensor,
) -> Result<Vec<Vec<f64>>, EngineError> {
    let probs = surrogate
        .forward_rows(
            &inputs
                .f_to_device(surrogate.device())
                .map_err(ModelError::from)?,
            surrogate_rows_for(surrogate.device()),
        )?
        .f_softmax(1, tch::Kind::Double)
        .map_err(ModelError::from)?
        .f_to_device(tch::Device::Cpu)
        .map_err(ModelError::from)?;
    let k = surrogate.num_classes().max(1);
    let flat: Vec<f64> = Vec::try_from(probs.flatten(0, -1)).map_err(ModelError::from)?;
    let mut out: Vec<Vec<f64>> = flat.chunks(k).map(<[f64]>::to_vec).collect();
    if let Some(map) = surrogate.tail_map() {
        out.iter_mut().for_each(|p| map.apply(p));
    }
    Ok(out)
}

/// ACCELERATED's decision for class cA from the surrogate's probabilities,
/// p_hat[cA] calibrated first when a shift is given (CALIBRATED).
pub fn surrogate_estimate(
    class_a: usize,
    p: &[f64],
    shift: Option<CalibrationShift>,
    margin_z: Option<f64>,
    n: u64,
    alpha: f64,
    noise: Noise,
) -> Result<SurrogateEstimate, EngineError> {
    let surrogate_class = smoothing::argmax(p);
    let p_hat_a = p.get(class_a).copied().unwrap_or(0.0);
    let p_used = shift.map_or(p_hat_a, |s| s.apply(p_hat_a, margin_z, n));
    let offset = p_hat_a - p_used;
    let count_a = ((n as f64) * p_used).round().clamp(0.0, n as f64) as u64;
    let decision = if surrogate_class == class_a {
        smoothing::certify_decision(class_a, count_a, n, alpha, noise)?
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

    /// AUTO's decision after its first step: `Some(cA)` when Monte Carlo,
    /// with that cA, must answer instead of the calibrated estimate.
    pub fn fallback(&self, first: &Outcome) -> Option<usize> {
        match first {
            Outcome::Surrogate(e, _) if self.falls_back(e) => Some(e.class_a),
            _ => None,
        }
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

/// The request seed of input `idx` of an offline run with seed `seed`: an
/// input gets the same noise whichever inputs ran before it, so resumed,
/// sharded and uninterrupted runs agree row for row, and a served request
/// with this seed gets the same counts as the row.
///
/// The index goes through splitmix64's mix, not a multiply: noise block b of
/// a stream is seeded from `stream seed ^ (b + 1) * GAMMA`, so an index
/// entering as `idx * GAMMA` would let input i's block b and input b + 1's
/// block i - 1 share their noise.
pub fn input_seed(seed: u64, idx: usize) -> u64 {
    seed ^ crate::model::splitmix64_mix((idx as u64).wrapping_add(1))
}

pub use crate::smoothing::top_two;

/// One input's exact certificate at a target radius (SEQUENTIAL).
#[derive(Debug, Clone, PartialEq)]
pub struct SequentialCertificate {
    pub class_a: usize,
    /// cA's count among the estimation samples drawn.
    pub count_a: u64,
    /// Estimation samples drawn up to the stopping stage.
    pub n: u64,
    /// The cap (the last stage's size).
    pub cap: u64,
    pub target_radius: f64,
    /// Stages run (1-based: the stopping stage).
    pub stages: usize,
    /// Whether the surrogate sized the schedule.
    pub guided: bool,
    /// Certified with the noise's radius at p_a_lower >= target_radius, or
    /// Abstain(TargetNotReached); p_a_lower is the stopping stage's bound.
    pub decision: Decision,
}

/// One request's result from the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Surrogate(SurrogateEstimate, requests::Selected),
    MonteCarlo(McCertificate, requests::Selected),
    Predict(Prediction),
    /// A stage slice: cA's count in it (a step of SEQUENTIAL, not an answer).
    Stage(u64, requests::Selected),
    Sequential(SequentialCertificate, requests::Selected),
}

impl Outcome {
    /// The selection samples drawn to choose cA (0 for PREDICT).
    pub fn n0_drawn(&self) -> u64 {
        match self {
            Outcome::Surrogate(_, s)
            | Outcome::MonteCarlo(_, s)
            | Outcome::Stage(_, s)
            | Outcome::Sequential(_, s) => s.drawn,
            Outcome::Predict(_) => 0,
        }
    }

    /// Whether its radius is a certificate or an estimate (PREDICT and a
    /// stage count have no radius: `None`).
    pub fn radius_kind(&self) -> Option<method::RadiusKind> {
        match self {
            Outcome::Surrogate(..) => Some(method::RadiusKind::Estimate),
            Outcome::MonteCarlo(..) | Outcome::Sequential(..) => {
                Some(method::RadiusKind::Certificate)
            }
            Outcome::Predict(_) | Outcome::Stage(..) => None,
        }
    }

    /// The certificate's (or estimate's) decision; None for PREDICT.
    pub fn decision(&self) -> Option<&Decision> {
        match self {
            Outcome::Surrogate(e, _) => Some(&e.decision),
            Outcome::MonteCarlo(c, _) => Some(&c.decision),
            Outcome::Sequential(c, _) => Some(&c.decision),
            Outcome::Predict(_) | Outcome::Stage(..) => None,
        }
    }
}

impl Method {
    /// The method that produced `outcome` for a request of this method:
    /// AUTO answers as CALIBRATED or MONTE_CARLO.
    pub fn answered_by(self, outcome: &Outcome) -> Method {
        match (self, outcome) {
            (_, Outcome::MonteCarlo(..)) | (_, Outcome::Predict(_)) => Method::MonteCarlo,
            (_, Outcome::Sequential(..)) | (_, Outcome::Stage(..)) => Method::Sequential,
            (Method::Surrogate | Method::MonteCarlo | Method::Sequential, _) => Method::Surrogate,
            (Method::Calibrated | Method::Auto, _) => Method::Calibrated,
        }
    }
}

/// A batch's results (None where a request was cancelled), its timing and
/// its forward-pass counts.
pub type BatchResult = (
    Vec<Option<Outcome>>,
    requests::BatchTiming,
    requests::PassCounts,
);

/// The models of one bundle on one device, and the code every method runs.
pub struct Engine {
    base: Classifier,
    surrogate: Option<Classifier>,
    noise: Noise,
    forward_batch: i64,
}

impl Engine {
    /// Loads the base classifier (and the surrogate, when asked for and the
    /// bundle has one) on `device`.
    pub fn load(
        bundle: &Bundle,
        device: Device,
        forward_batch: i64,
        with_surrogate: bool,
    ) -> Result<Engine, EngineError> {
        if forward_batch < 1 {
            return Err(invalid("forward_batch", "must be at least 1"));
        }
        let base = Classifier::load(bundle, device)?;
        let surrogate = match (&bundle.surrogate, with_surrogate) {
            (Some(_), true) => Some(Classifier::load_surrogate(bundle, device)?),
            _ => None,
        };
        Ok(Engine {
            base,
            surrogate,
            noise: bundle.noise(),
            forward_batch,
        })
    }

    pub fn has_surrogate(&self) -> bool {
        self.surrogate.is_some()
    }

    pub fn base(&self) -> &Classifier {
        &self.base
    }

    pub fn noise(&self) -> Noise {
        self.noise
    }

    pub fn forward_batch(&self) -> i64 {
        self.forward_batch
    }

    /// `task` for every request of `reqs`; request i reads row `reqs[i].input`
    /// of `inputs` [B, C, H, W] (pixels in [0, 1]). `keep(i)` is asked before
    /// each noise block of request i; `false` drops it (its result is None).
    pub fn run(
        &self,
        task: Task,
        inputs: &Tensor,
        reqs: &[requests::TaskParams],
        keep: &mut dyn FnMut(usize) -> bool,
    ) -> Result<BatchResult, EngineError> {
        for r in reqs {
            validate_request(task, r)?;
        }
        let (base, noise, fb) = (&self.base, self.noise, self.forward_batch);
        Ok(match task {
            Task::Surrogate => {
                let surrogate = self.surrogate.as_ref().ok_or(EngineError::NoSurrogate)?;
                let (out, t, p) =
                    requests::certify_surrogate(base, surrogate, noise, inputs, reqs, fb, keep)?;
                let out = out
                    .into_iter()
                    .map(|o| o.map(|(e, s)| Outcome::Surrogate(e, s)))
                    .collect();
                (out, t, p)
            }
            Task::MonteCarlo => {
                let (out, t, p) = requests::certify_mc(base, noise, inputs, reqs, fb, keep)?;
                let out = out
                    .into_iter()
                    .map(|o| o.map(|(c, s)| Outcome::MonteCarlo(c, s)))
                    .collect();
                (out, t, p)
            }
            Task::Predict => {
                let (out, t, p) = requests::predict(base, noise, inputs, reqs, fb, keep)?;
                (
                    out.into_iter().map(|o| o.map(Outcome::Predict)).collect(),
                    t,
                    p,
                )
            }
            Task::Stage => {
                let (out, t, p) = requests::count_stage(base, noise, inputs, reqs, fb, keep)?;
                let out = out
                    .into_iter()
                    .map(|o| o.map(|(k, s)| Outcome::Stage(k, s)))
                    .collect();
                (out, t, p)
            }
        })
    }

    /// One request on one input [C, H, W] or [1, C, H, W], never cancelled.
    pub fn run_one(
        &self,
        task: Task,
        input: &Tensor,
        req: requests::TaskParams,
    ) -> Result<(Outcome, requests::BatchTiming), EngineError> {
        let x = if input.dim() == 3 {
            input.unsqueeze(0)
        } else {
            input.shallow_clone()
        };
        let req = requests::TaskParams { input: 0, ..req };
        let (mut out, timing, _) = self.run(task, &x, &[req], &mut |_| true)?;
        let outcome = out.pop().flatten().ok_or_else(|| {
            EngineError::Model(ModelError::Torch("the engine returned no result".into()))
        })?;
        Ok((outcome, timing))
    }

    /// Runs one small request of every task this engine serves, so the first
    /// real request does not pay for allocation and kernel selection.
    pub fn warm_up(&self) -> Result<Duration, EngineError> {
        let started = Instant::now();
        let [c, h, w] = self.base.input_shape().map(|d| d as i64);
        let x = Tensor::f_full([1, c, h, w], 0.5, (Kind::Float, self.base.device()))
            .map_err(ModelError::from)?;
        let req = requests::TaskParams::new(0, self.forward_batch as u64, 1, 0.5, 0);
        self.run_one(Task::MonteCarlo, &x, req)?;
        if self.has_surrogate() {
            self.run_one(Task::Surrogate, &x, req)?;
        }
        Ok(started.elapsed())
    }
}

/// SEQUENTIAL's test for one input, its schedule chosen here and only here:
/// guided by the surrogate's tail-mapped p_hat[cA] (`guide`, when its top
/// class is cA), else the plain one. Nothing drawn for estimation may reach
/// this function: the guide comes from the surrogate and cA from the
/// selection samples, both independent of the estimation samples.
pub fn sequential_test(
    noise: Noise,
    target_radius: f64,
    alpha: f64,
    cap: u64,
    guide: Option<f64>,
) -> Result<SequentialTest, EngineError> {
    let p_star = noise
        .p_star(target_radius)
        .map_err(|_| EngineError::InvalidParam {
            field: "target_radius",
            message: format!(
                "must be a finite radius >= 0 and at most {} (in the input's {} units)",
                noise.max_radius(),
                noise.norm().as_str()
            ),
        })?;
    if cap == 0 {
        return Err(invalid("n", "must be at least 1"));
    }
    let schedule = match guide {
        Some(p_hat) => sequential::Schedule::guided(alpha, cap, p_star, p_hat)?,
        None => sequential::Schedule::plain(alpha, cap, p_star)?,
    };
    Ok(SequentialTest::new(schedule, p_star, sequential::FUTILITY)?)
}

/// A request's parameters, each failure naming its field.
fn validate_request(task: Task, r: &requests::TaskParams) -> Result<(), EngineError> {
    if task != Task::Predict && r.n0 == 0 && r.class_a.is_none() {
        return Err(invalid("n0", "must be at least 1"));
    }
    if let Some(rule) = r.adaptive_n0 {
        rule.validate()?;
    }
    validate_sampling(r.n, r.alpha, 1)
}

mod method;
pub mod requests;

pub use method::{Method, RadiusKind, Task};

#[cfg(test)]
mod tests;
