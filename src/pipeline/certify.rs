//! Offline `certify`: one TSV row per input (Cohen et al.'s columns plus the
//! method and the counts behind the radius), appended and flushed row by row
//! so an interrupted run resumes without redoing finished inputs.
use super::report::summarize;
use super::tsv::{open_for_resume, CertRow};
use super::{io_err, load_inputs, progress_bar, write_json, Inputs, PipelineError};
use crate::batcher::{Answer, Offline, Target};
use crate::data::Split;
use crate::engine::requests::RequestParams;
use crate::engine::{self, AutoBand, CertifyParams, Method, Outcome};
use crate::model::Bundle;
use crate::smoothing::{CalibrationShift, Decision, SequentialSelection};
use serde::{Deserialize, Serialize};
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
    pub adaptive: Option<SequentialSelection>,
    /// AUTO's fallback band on the calibrated pA_lower.
    pub auto_band: AutoBand,
    /// SEQUENTIAL (and AUTO's Monte Carlo step): the radius to certify, and
    /// whether the surrogate sizes the stages.
    pub target: Option<Target>,
    pub device: Device,
    pub out: PathBuf,
    pub show_progress: bool,
}

/// The parameters a TSV was produced with; a resumed run must match them.
/// The device is in it because it changes which noise an input draws under a
/// given seed (the forward batch does not: noise comes in seeded blocks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunParams {
    bundle_name: String,
    bundle_version: String,
    /// Fingerprint of the base weights: a retrained model under the same name is another run.
    base_weights_fnv1a: String,
    /// The surrogate's fingerprint too, for method surrogate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    surrogate_weights_fnv1a: Option<String>,
    method: Method,
    split: Split,
    /// 0 in runs from before the option (so they still resume).
    #[serde(default, skip_serializing_if = "is_zero")]
    offset: usize,
    skip: usize,
    max: Option<usize>,
    n0: u64,
    n: u64,
    alpha: f64,
    sigma: f64,
    seed: u64,
    /// How noise is drawn: "seeded_streams_v2" (the served path, per-input
    /// request seed `engine::input_seed(seed, idx)`). Files from before it
    /// lack the key and are not resumed.
    noise: String,
    device: String,
    /// Adaptive n0 (chunk, alpha); absent for fixed n0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adaptive: Option<(u64, f64)>,
    /// CALIBRATED and AUTO: the calibration's (q, delta, score).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    calibration: Option<(f64, f64, crate::smoothing::ConformalScore)>,
    /// CALIBRATED and AUTO: the estimate's margin threshold, when it blends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    margin_threshold: Option<f64>,
    /// AUTO: the fallback band (low, high).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auto_band: Option<(f64, f64)>,
    /// SEQUENTIAL and AUTO: the target radius and whether the schedule was guided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_radius: Option<(f64, bool)>,
    /// The surrogate's tail map (its ratios): refitting it changes every estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tail_map: Option<Vec<f64>>,
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
    pub sigma: f64,
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

/// A run at `out` that finished (its summary written) under an earlier
/// version, whose parameters (params.json missing, or in an older form)
/// this one cannot check: a finished record to keep as it is, not resume.
pub fn finished_by_earlier_version(out: &Path) -> bool {
    let params = crate::fsutil::sidecar(out, "params.json");
    crate::fsutil::sidecar(out, "summary.json").exists()
        && std::fs::read_to_string(&params)
            .ok()
            .and_then(|t| serde_json::from_str::<RunParams>(&t).ok())
            .is_none()
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

    if opts.method.needs_surrogate() && bundle.surrogate.is_none() {
        return Err(PipelineError::Invalid(format!(
            "{}: model.toml has no [surrogate] (train one with train-surrogate), \
             so --method {} cannot run; --method monte_carlo can",
            bundle.dir.display(),
            opts.method
        )));
    }
    match (opts.method, opts.target) {
        (Method::Sequential, None) => {
            return Err(PipelineError::Invalid(
                "--method sequential certifies a required radius: give --target-radius".into(),
            ))
        }
        (Method::Sequential | Method::Auto, _) | (_, None) => {}
        (other, Some(_)) => {
            return Err(PipelineError::Invalid(format!(
                "--target-radius is for --method sequential or auto, not {other}"
            )))
        }
    }
    if let Some(rule) = opts.adaptive {
        rule.validate().map_err(engine::EngineError::from)?;
    }
    opts.auto_band.validate()?;
    let calibration = match opts.method {
        Method::Calibrated | Method::Auto => {
            let cal = checked_calibration(&bundle, opts.split, &indices, opts.params.n)?;
            if opts.params.n0 != cal.n0 || opts.adaptive.is_some() {
                return Err(PipelineError::Invalid(format!(
                    "the calibration chose cA from n0 = {} fixed samples; --n0 {}{} would void its delta = {}",
                    cal.n0,
                    opts.params.n0,
                    if opts.adaptive.is_some() { " --adaptive-n0" } else { "" },
                    cal.delta
                )));
            }
            Some(cal)
        }
        _ => None,
    };
    if opts.method != Method::MonteCarlo {
        check_not_fitted_on(&bundle, opts.split, &indices, calibration.is_some())?;
    }
    let run = RunParams {
        bundle_name: bundle.name.clone(),
        bundle_version: bundle.version.clone(),
        base_weights_fnv1a: super::base_fingerprint(&bundle)?,
        surrogate_weights_fnv1a: match opts.method {
            Method::MonteCarlo => None,
            _ => super::surrogate_fingerprint(&bundle)?,
        },
        method: opts.method,
        split: opts.split,
        offset: opts.offset,
        skip: opts.skip,
        max: opts.max,
        n0: opts.params.n0,
        n: opts.params.n,
        alpha: opts.params.alpha,
        sigma: bundle.sigma(),
        seed: opts.seed,
        noise: NOISE_SCHEME.into(),
        device: format!("{:?}", opts.device),
        adaptive: opts.adaptive.map(|a| (a.chunk, a.alpha)),
        calibration: calibration.as_ref().map(|c| (c.q, c.delta, c.score)),
        margin_threshold: calibration.as_ref().and_then(|c| c.margin_threshold),
        auto_band: (opts.method == Method::Auto)
            .then_some((opts.auto_band.low, opts.auto_band.high)),
        target_radius: opts.target.map(|t| (t.radius, t.guided)),
        tail_map: match opts.method {
            Method::MonteCarlo => None,
            _ => bundle
                .surrogate
                .as_ref()
                .and_then(|s| s.tail_map.as_ref())
                .map(|m| m.edges.iter().chain(&m.ratios).copied().collect()),
        },
    };
    if let Some(parent) = opts.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let params_path = crate::fsutil::sidecar(&opts.out, "params.json");
    let has_rows = std::fs::read_to_string(&opts.out).is_ok_and(|t| t.lines().count() > 1);
    if has_rows && !params_path.exists() {
        return Err(PipelineError::Invalid(format!(
            "{} holds rows but {} is missing, so they cannot be checked against this run; \
             remove the TSV or choose another --out",
            opts.out.display(),
            params_path.display()
        )));
    }
    if has_rows {
        let text = std::fs::read_to_string(&params_path).map_err(io_err(&params_path))?;
        let previous: RunParams = serde_json::from_str(&text).map_err(|e| {
            PipelineError::Invalid(format!(
                "{} was started with other parameters ({} is not this version's: {e}); \
                 remove it or choose another --out",
                opts.out.display(),
                params_path.display()
            ))
        })?;
        if previous != run {
            return Err(PipelineError::Invalid(format!(
                "{} was started with other parameters ({previous:?}); \
                 remove it or choose another --out to certify with {run:?}",
                opts.out.display()
            )));
        }
    }
    write_json(&params_path, &run)?;

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

    let engine = Offline::start(&bundle, opts.device, opts.params.batch, opts.auto_band)?;
    let shift = calibration.as_ref().map(crate::model::Calibration::shift);
    let sigma = bundle.sigma();
    let bar = progress_bar(
        todo.len() as u64,
        &format!("certify {}", opts.method),
        opts.show_progress,
    );
    let started = Instant::now();
    let mut rows = done;
    for idx in todo {
        let t0 = Instant::now();
        let params = request_params(opts, engine::input_seed(opts.seed, idx), shift);
        let answer = engine.certify(opts.method, ds.image(idx).to_vec(), params, opts.target)?;
        let one = One::from_answer(&answer)?;
        let (decision, count_a, n) = (one.decision, one.count_a, one.n);
        let time = t0.elapsed().as_secs_f64();
        let label = ds.labels[idx];
        let (predict, radius, p_a_lower, abstain_reason) = match decision {
            Decision::Certified {
                class,
                p_a_lower,
                radius,
            } => (class as i64, radius, p_a_lower, None),
            Decision::Abstain { reason, p_a_lower } => {
                (-1, 0.0, p_a_lower, Some(reason.as_str().to_string()))
            }
        };
        let row = CertRow {
            idx,
            label,
            predict,
            radius,
            correct: predict == label,
            time,
            method: one.method,
            count_a,
            n,
            p_a_lower,
            abstain_reason,
            delta: (one.method == Method::Calibrated)
                .then(|| calibration.as_ref().map(|c| c.delta))
                .flatten(),
            class_a: Some(one.class_a),
            n0_drawn: Some(one.drawn),
        };
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

    let curve = summarize(opts.method.as_str(), &rows, &[0.0]);
    let summary = CertifySummary {
        out: opts.out.clone(),
        method: opts.method,
        inputs: rows.len(),
        resumed_rows: finished.len(),
        n0: opts.params.n0,
        n: opts.params.n,
        alpha: opts.params.alpha,
        sigma,
        radius_kind: opts.method.radius_kind(),
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
    };
    write_json(&crate::fsutil::sidecar(&opts.out, "summary.json"), &summary)?;
    Ok(summary)
}

/// How offline runs draw noise (recorded in `params.json`).
const NOISE_SCHEME: &str = "seeded_streams_v2";

/// The engine's parameters for one input of an offline run: the request a
/// served client would send with seed `seed` and the run's options.
pub fn request_params(
    opts: &CertifyOptions,
    seed: u64,
    shift: Option<CalibrationShift>,
) -> RequestParams {
    let p = &opts.params;
    RequestParams {
        shift: shift.filter(|_| opts.method.needs_calibration()),
        adaptive: opts.adaptive,
        ..RequestParams::new(0, p.n0, p.n, p.alpha, seed)
    }
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
}

/// The bundle's calibration, refused when it cannot stand behind these
/// inputs: none, another N, or inputs it was computed on.
fn checked_calibration(
    bundle: &Bundle,
    split: Split,
    indices: &[usize],
    n: u64,
) -> Result<crate::model::Calibration, PipelineError> {
    let cal = bundle
        .surrogate
        .as_ref()
        .and_then(|s| s.calibration.clone())
        .ok_or_else(|| {
            PipelineError::Invalid(format!(
                "{} has no calibration: run smoothcert calibrate first",
                bundle.dir.display()
            ))
        })?;
    if n != cal.n {
        return Err(PipelineError::Invalid(format!(
            "the calibration holds at n = {}; --n {n} would void its delta = {}",
            cal.n, cal.delta
        )));
    }
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
    Ok(cal)
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

fn is_zero(v: &usize) -> bool {
    *v == 0
}
