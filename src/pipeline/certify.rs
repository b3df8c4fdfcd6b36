//! Offline `certify`: one TSV row per input (Cohen et al.'s columns plus the
//! method and the counts behind the radius), appended and flushed row by row
//! so an interrupted run resumes without redoing finished inputs.
use super::report::summarize;
use super::run::{NoiseScheme, RunFiles, RunParams};
use super::tsv::{open_for_resume, CertRow};
use super::{io_err, load_inputs, progress_bar, Inputs, PipelineError};
use crate::batcher::Answer;
use crate::data::{Dataset, Split};
use crate::engine::{self, AutoBand, CertifyParams, Method, Outcome, RadiusKind};
use crate::methods::{
    CertifyRequest, Defaults, Limits, ModelTerms, Offline, Plan, RequestError, RequestOptions,
    Selection, Target,
};
use crate::model::Bundle;
use crate::smoothing::{AdaptiveN0, Decision};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;

/// The sample count a method certifies at when `--n` is not given: 100,000 for
/// Monte Carlo, the surrogate's nominal N for the surrogate.
pub fn default_n(bundle: &Path, method: Method) -> Result<u64, PipelineError> {
    Ok(match method {
        // Sequential: the cap, Monte Carlo's N.
        Method::MonteCarlo | Method::Sequential => 100_000,
        Method::Surrogate => Bundle::load(bundle)?
            .surrogate
            .map_or(100_000, |s| s.nominal_n),
        // The N the calibration scores were measured at.
        Method::Calibrated | Method::Auto => Bundle::load(bundle)?
            .surrogate
            .and_then(|s| s.calibration.map(|c| c.n).or(Some(s.nominal_n)))
            .unwrap_or(100_000),
    })
}

#[derive(Debug, Clone)]
pub struct CertifyOptions {
    pub bundle: PathBuf,
    pub method: Method,
    pub split: Split,
    pub data_dir: Option<PathBuf>,
    /// The first input certified; then every `skip`-th after it.
    pub offset: usize,
    /// Certify every `skip`-th input (Cohen et al.'s --skip).
    pub skip: usize,
    /// Certify at most this many inputs.
    pub max: Option<usize>,
    pub params: CertifyParams,
    pub seed: u64,
    /// Choose cA sequentially (n0 is the cap).
    pub adaptive_n0: Option<AdaptiveN0>,
    /// AUTO's fallback band on the calibrated pA_lower.
    pub auto_band: AutoBand,
    /// SEQUENTIAL (and AUTO's Monte Carlo step): the radius to certify, and
    /// whether the surrogate sizes the stages.
    pub target: Option<Target>,
    pub device: Device,
    pub out: PathBuf,
    pub show_progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertifySummary {
    pub out: PathBuf,
    pub method: Method,
    pub inputs: usize,
    pub resumed_rows: usize,
    pub n0: u64,
    pub n: u64,
    pub alpha: f64,
    /// The noise the radii certify under, and their norm.
    pub noise: crate::smoothing::Noise,
    pub norm: &'static str,
    /// What the radii are: "certificate" (mc), "estimate" (surrogate,
    /// calibrated) or "mixed" (auto: each row's method says which).
    pub radius_kind: &'static str,
    /// AUTO: the fraction of inputs Monte Carlo answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_fraction: Option<f64>,
    /// Fraction predicted correctly with a radius (certified, or estimated for surrogate).
    pub accuracy_at_radius_0: f64,
    pub abstention_rate: f64,
    pub median_seconds_per_input: f64,
    pub wall_seconds: f64,
}

/// The typed request an offline run sends for each input (under the
/// input's own seed): the same constructor, and so the same refusals, as
/// the server's.
pub fn offline_request(
    opts: &CertifyOptions,
    bundle: &Bundle,
) -> Result<CertifyRequest, PipelineError> {
    build_offline(
        bundle,
        opts.method,
        &opts.params,
        opts.adaptive_n0,
        opts.auto_band,
        opts.target,
    )
}

/// A request with every option given on the command line (offline runs
/// and the benchmarks); its seed is set per input.
pub fn build_offline(
    bundle: &Bundle,
    method: Method,
    p: &CertifyParams,
    adaptive_n0: Option<AdaptiveN0>,
    auto_band: AutoBand,
    target: Option<Target>,
) -> Result<CertifyRequest, PipelineError> {
    let terms = ModelTerms {
        bundle,
        defaults: Defaults {
            method,
            n0: p.n0,
            n: p.n,
            alpha: p.alpha,
            adaptive_n0: false,
        },
        limits: Limits::NONE,
        adaptive_n0,
        auto_band,
    };
    let options = RequestOptions {
        method: Some(method),
        n0: Some(p.n0),
        n: Some(p.n),
        alpha: Some(p.alpha),
        seed: 0,
        adaptive_n0: adaptive_n0.map(|_| true),
        target_radius: target.map(|t| t.radius),
        unguided: target.is_some_and(|t| !t.guided),
    };
    CertifyRequest::build(&options, &terms).map_err(|e| refused(bundle, e))
}

/// The constructor's refusal in offline terms: the flag, or the bundle.
pub fn refused(bundle: &Bundle, e: RequestError) -> PipelineError {
    PipelineError::Invalid(match e {
        RequestError::Invalid { field, message } => format!("{}: {message}", field.flag()),
        RequestError::Unsupported { message, .. } => {
            format!("{}: {message}", bundle.dir.display())
        }
    })
}

pub fn certify(opts: &CertifyOptions) -> Result<CertifySummary, PipelineError> {
    opts.params.validate()?;
    let Inputs {
        bundle,
        dataset: ds,
        indices,
        ..
    } = load_inputs(
        &opts.bundle,
        opts.split,
        opts.data_dir.as_deref(),
        opts.offset,
        opts.skip,
        opts.max,
    )?;
    if let Some(rule) = opts.adaptive_n0 {
        rule.validate().map_err(engine::EngineError::from)?;
    }
    opts.auto_band.validate()?;
    let request = offline_request(opts, &bundle)?;
    if request.calibrated().is_some() {
        check_fresh_for_calibration(&bundle, opts.split, &indices)?;
    }
    if opts.method != Method::MonteCarlo {
        check_not_fitted_on(
            &bundle,
            opts.split,
            &indices,
            request.calibrated().is_some(),
        )?;
    }
    let files = RunFiles::of(&opts.out);
    files.begin(&run_params(opts, &bundle, &request)?)?;

    let (mut file, done) = open_for_resume(&opts.out)?;
    let finished: std::collections::HashSet<usize> = done.iter().map(|r| r.idx).collect();
    let todo: Vec<usize> = indices
        .iter()
        .copied()
        .filter(|i| !finished.contains(i))
        .collect();
    if !done.is_empty() {
        tracing::info!(
            done = done.len(),
            remaining = todo.len(),
            "resuming certify"
        );
    }
    let started = Instant::now();
    let mut rows = done;
    let engine = Offline::start(&bundle, opts.device, opts.params.batch)?;
    let bar = progress_bar(
        todo.len() as u64,
        &format!("certify {}", opts.method),
        opts.show_progress,
    );
    for idx in todo {
        let t0 = Instant::now();
        let req = request.with_seed(engine::input_seed(opts.seed, idx));
        let answer = engine.certify(&req, ds.image(idx).to_vec())?;
        let row = One::from_answer(&answer)?.row(&ds, idx, t0.elapsed().as_secs_f64(), &req);
        writeln!(file, "{}", row.to_line())
            .and_then(|_| file.flush())
            .map_err(io_err(&opts.out))?;
        rows.push(row);
        bar.inc(1);
        let certified = rows.iter().filter(|r| r.correct).count();
        bar.set_message(format!(
            "certified-correct {:.1}%",
            100.0 * certified as f64 / rows.len() as f64
        ));
    }
    bar.finish_and_clear();
    engine.shutdown();
    file.sync_all().map_err(io_err(&opts.out))?;
    let summary = summary(opts, &bundle, &rows, finished.len(), started);
    files.finish(&summary)?;
    Ok(summary)
}

/// What the run's summary says of its rows.
fn summary(
    opts: &CertifyOptions,
    bundle: &Bundle,
    rows: &[CertRow],
    resumed_rows: usize,
    started: Instant,
) -> CertifySummary {
    let curve = summarize(opts.method.as_str(), rows, &[0.0]);
    CertifySummary {
        out: opts.out.clone(),
        method: opts.method,
        inputs: rows.len(),
        resumed_rows,
        n0: opts.params.n0,
        n: opts.params.n,
        alpha: opts.params.alpha,
        noise: bundle.noise(),
        norm: bundle.noise().norm().as_str(),
        radius_kind: RadiusKind::of_run([opts.method.radius_kind()]),
        fallback_fraction: (opts.method == Method::Auto).then(|| {
            rows.iter()
                .filter(|r| r.method != Method::Calibrated)
                .count() as f64
                / rows.len().max(1) as f64
        }),
        accuracy_at_radius_0: curve.certified_accuracy.first().map_or(0.0, |p| p.1),
        abstention_rate: curve.abstention_rate,
        median_seconds_per_input: curve.median_seconds,
        wall_seconds: started.elapsed().as_secs_f64(),
    }
}

/// What the run's rows depend on, for `params.json`.
fn run_params(
    opts: &CertifyOptions,
    bundle: &Bundle,
    request: &CertifyRequest,
) -> Result<RunParams, PipelineError> {
    let calibrated = request.calibrated();
    let estimates = opts.method != Method::MonteCarlo;
    Ok(RunParams {
        bundle_name: bundle.name.clone(),
        bundle_version: bundle.version.clone(),
        base_weights_fnv1a: super::base_fingerprint(bundle)?,
        surrogate_weights_fnv1a: match estimates {
            true => super::surrogate_fingerprint(bundle)?,
            false => None,
        },
        method: opts.method,
        split: opts.split,
        offset: opts.offset,
        skip: opts.skip,
        max: opts.max,
        n0: request.sampling().n0,
        n: request.sampling().n,
        alpha: request.sampling().alpha,
        noise: bundle.noise().into(),
        seed: opts.seed,
        noise_scheme: NoiseScheme::SeededStreamsV2,
        device: format!("{:?}", opts.device),
        adaptive_n0: match request.selection() {
            Selection::Adaptive(a) => Some((a.chunk, a.alpha)),
            Selection::Fixed => None,
        },
        calibration: calibrated.map(|c| (c.shift.q, c.delta, c.shift.score)),
        margin_threshold: calibrated.and_then(|c| c.shift.margin_threshold),
        auto_band: match request.plan() {
            Plan::Auto { band, .. } => Some((band.low, band.high)),
            _ => None,
        },
        target_radius: request.target().map(|t| (t.radius, t.guided)),
        tail_map: bundle
            .surrogate
            .as_ref()
            .and_then(|s| s.tail_map.as_ref())
            .filter(|_| estimates)
            .map(|m| m.edges.iter().chain(&m.ratios).copied().collect()),
    })
}

/// One input's outcome, and the method that produced it.
pub(crate) struct One {
    decision: Decision,
    count_a: u64,
    n: u64,
    class_a: usize,
    drawn: u64,
    pub(crate) method: Method,
}

impl One {
    pub(crate) fn from_answer(answer: &Answer) -> Result<One, PipelineError> {
        let (decision, count_a, n, class_a) = match &answer.outcome {
            Outcome::Surrogate(e, _) => (e.decision, e.count_a, e.n, e.class_a),
            Outcome::MonteCarlo(c, _) => (c.decision, c.count_a, c.n, c.class_a),
            // n: the estimation samples drawn up to the stopping stage.
            Outcome::Sequential(c, _) => (c.decision, c.count_a, c.n, c.class_a),
            Outcome::Predict(_) | Outcome::Stage(..) => {
                return Err(PipelineError::Invalid(
                    "a certificate request got no certificate".into(),
                ))
            }
        };
        Ok(One {
            decision,
            count_a,
            n,
            class_a,
            drawn: answer.outcome.n0_drawn(),
            method: answer.method,
        })
    }

    /// The TSV row of input `idx`, answered in `time` seconds.
    fn row(&self, ds: &Dataset, idx: usize, time: f64, req: &CertifyRequest) -> CertRow {
        let label = ds.labels[idx];
        let (predict, radius, p_a_lower, abstain_reason) = match self.decision {
            Decision::Certified {
                class,
                p_a_lower,
                radius,
            } => (class as i64, radius, p_a_lower, None),
            Decision::Abstain { reason, p_a_lower } => {
                (-1, 0.0, p_a_lower, Some(reason.as_str().to_string()))
            }
        };
        CertRow {
            idx,
            label,
            predict,
            radius,
            correct: predict == label,
            time,
            method: self.method,
            count_a: self.count_a,
            n: self.n,
            p_a_lower,
            abstain_reason,
            delta: req
                .calibrated()
                .filter(|_| self.method == Method::Calibrated)
                .map(|c| c.delta),
            class_a: Some(self.class_a),
            n0_drawn: Some(self.drawn),
        }
    }
}

/// Refuses inputs the bundle's calibration cannot stand behind: those it
/// was computed on, and those that chose its score, bins or AUTO's band.
/// (Its n and n0 are the request constructor's to check.)
fn check_fresh_for_calibration(
    bundle: &Bundle,
    split: Split,
    indices: &[usize],
) -> Result<(), PipelineError> {
    let Some(cal) = bundle
        .surrogate
        .as_ref()
        .and_then(|s| s.calibration.as_ref())
    else {
        return Ok(());
    };
    let used = super::InputList::read(&bundle.dir.join(&cal.inputs_file))?;
    if used.split == split {
        let used: std::collections::HashSet<i64> = used.indices.into_iter().collect();
        let overlap = indices
            .iter()
            .filter(|&&i| used.contains(&(i as i64)))
            .count();
        if overlap > 0 {
            return Err(PipelineError::Invalid(format!(
                "{overlap} of these inputs are calibration inputs; the coverage statement needs \
                 fresh ones (choose other --skip/--max or another split)"
            )));
        }
    }
    // Inputs that chose the score, the bins or AUTO's band: an evaluation
    // there would be judged by what was tuned on it.
    let selection = bundle.dir.join(super::calibrate::SELECTION_INPUTS_FILE);
    let as_i64: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    if let Some(idx) = super::InputList::read_if_any(&selection)?
        .and_then(|sel| sel.first_shared_with(split, &as_i64))
    {
        return Err(PipelineError::Invalid(format!(
            "input {idx} is a selection input (it chose the calibration's score, bins or AUTO's band); \
             evaluate on fresh ones (choose other --skip/--max or another split)"
        )));
    }
    Ok(())
}

/// Inputs the surrogate was trained on, or its tail map fitted on: its
/// estimates there say little about fresh inputs (logged), and a calibrated
/// statement does not hold there at all (refused).
fn check_not_fitted_on(
    bundle: &Bundle,
    split: Split,
    indices: &[usize],
    calibrated: bool,
) -> Result<(), PipelineError> {
    let fitted = super::surrogate::SurrogateInputs::fitted(bundle)?;
    let overlap = indices
        .iter()
        .filter(|&&i| fitted.contains(split, i as i64))
        .count();
    if overlap > 0 && calibrated {
        return Err(PipelineError::Invalid(format!(
            "{overlap} of these inputs trained the surrogate or fitted its tail map; \
             a calibrated delta needs fresh inputs (choose other --skip/--max or another split)"
        )));
    }
    if overlap > 0 {
        tracing::warn!(
            overlap,
            split = %split,
            "the surrogate was trained or its tail map fitted on some of these inputs"
        );
    }
    Ok(())
}
