//! `calibrate`: split-conformal calibration of the surrogate. On inputs held
//! out from its training, with Monte Carlo counts at the bundle's nominal N,
//! the overestimation score s (p_hat[cA] - p_MC[cA] for p_gap; see
//! `ConformalScore`) is computed for each input (cA chosen by n0
//! base-classifier samples, exactly as certification chooses it), and q is the
//! ceil((m + 1)(1 - delta))-th smallest score. For a fresh input exchangeable
//! with these, P(s > q) <= delta; since method CALIBRATED counts
//! round(N p_cal) <= N p_MC[cA] whenever s <= q (p_cal = p_hat[cA] - q for
//! p_gap), its radius exceeds the Monte Carlo certificate's with probability
//! at most delta. Also measures, for candidate AUTO bands, how often AUTO would fall
//! back and how many Monte Carlo certificates it would still miss.
use super::counts::Counts;
use super::surrogate::SurrogateInputs;
use super::{write_json, InputList, PipelineError};
use crate::data;
use crate::engine::requests::{self, TaskParams};
use crate::engine::{self, AutoBand, EngineError};
use crate::model::{Bundle, Calibration, CalibrationBin, Classifier};
use crate::smoothing::{self, CalibrationShift, ConformalScore, Decision, RankRule};
use serde::Serialize;
use std::path::PathBuf;
use tch::Device;

pub const INPUTS_FILE: &str = "calibration_inputs.json";
pub const SUMMARY_FILE: &str = "calibration_summary.json";
/// The inputs `select-calibration` chose the score, the bins and AUTO's band
/// on: calibration refuses them, selection refuses the calibration inputs.
pub const SELECTION_INPUTS_FILE: &str = "selection_inputs.json";

#[derive(Debug, Clone)]
pub struct CalibrateOptions {
    pub bundle: PathBuf,
    pub counts: Vec<PathBuf>,
    pub delta: f64,
    pub score: ConformalScore,
    pub rank_rule: RankRule,
    /// Mondrian bin edges on p_hat[cA] (increasing, inside (0, 1)); empty for
    /// one quantile over all inputs.
    pub bin_edges: Vec<f64>,
    /// Blend the selection samples' margin into the estimate below this z
    /// (`smoothing::blended_estimate`); `None`: the surrogate's p_hat alone.
    pub margin_threshold: Option<f64>,
    pub n0: u64,
    /// The certificate level used to tell which inputs Monte Carlo certifies (band table).
    pub alpha: f64,
    pub seed: u64,
    pub batch: i64,
    pub data_dir: Option<PathBuf>,
    pub device: Device,
}

/// One calibration input's score.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub idx: i64,
    pub class_a: usize,
    pub surrogate_class: usize,
    /// The surrogate's p_hat[cA].
    pub p_hat_a: f64,
    /// z of cA's logit margin over the n0 selection samples.
    pub margin_z: Option<f64>,
    /// The p[cA] scored (and binned): p_hat_a, or the blend with the margin.
    pub estimate: f64,
    pub p_mc_a: f64,
    pub s: f64,
}

/// AUTO with fallback band [low, high] on these inputs. In-sample: the
/// same scores set q, so on fresh inputs expect somewhat worse figures.
#[derive(Debug, Clone, Serialize)]
pub struct BandFigures {
    pub low: f64,
    pub high: f64,
    /// Fraction of inputs that would fall back to Monte Carlo.
    pub fallback_fraction: f64,
    /// Fraction Monte Carlo certifies (pA_lower > 1/2 at alpha) that AUTO
    /// would leave to an abstaining calibrated estimate.
    pub missed_certificates: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CalibrationSummary {
    pub calibration: Calibration,
    pub counts_split: data::Split,
    /// Fraction of inputs whose surrogate overestimates (s > 0).
    pub overestimating: f64,
    pub mean_score: f64,
    /// Inputs whose surrogate class is not cA (CALIBRATED abstains there).
    pub class_mismatch: usize,
    pub bands: Vec<BandFigures>,
    pub scores: Vec<Score>,
}

pub fn calibrate(opts: &CalibrateOptions) -> Result<CalibrationSummary, PipelineError> {
    let mut bundle = Bundle::load(&opts.bundle)?;
    let spec = bundle.surrogate.clone().ok_or_else(|| {
        PipelineError::Invalid(format!(
            "{} has no surrogate to calibrate (train-surrogate first)",
            opts.bundle.display()
        ))
    })?;
    // Everything checked before any work, so that nothing is written for a
    // calibration the bundle would then refuse to hold.
    check_levels(opts)?;
    let counts = super::counts::merge_counts_in_memory(&opts.counts)?;
    check_calibration_counts(&bundle, &spec, &counts)?;
    smoothing::check_edges(&opts.bin_edges).map_err(EngineError::from)?;
    check_margin_threshold(opts.margin_threshold)?;
    let m = counts.len();
    let rank = opts.rank_rule.rank(m, opts.delta).ok_or_else(|| {
        PipelineError::Invalid(format!(
            "{m} calibration inputs are too few for delta = {} under the {} rank",
            opts.delta,
            opts.rank_rule.as_str()
        ))
    })?;

    let inputs = score_inputs(&bundle, &counts, opts)?;
    let scores = scores(&inputs, opts, counts.meta.n, bundle.noise());
    let noise = bundle.noise();
    let s: Vec<f64> = scores.iter().map(|x| x.s).collect();
    let (q, got_rank) = smoothing::conformal_quantile_by(&s, opts.delta, opts.rank_rule)
        .map_err(EngineError::from)?;
    debug_assert_eq!(got_rank, rank);
    let bins = mondrian_bins(&scores, &opts.bin_edges, opts.delta, opts.rank_rule)?;
    let calibration = Calibration {
        delta: opts.delta,
        score: opts.score,
        q,
        m,
        rank,
        n: counts.meta.n,
        n0: opts.n0,
        split: counts.meta.split,
        inputs_file: INPUTS_FILE.into(),
        seed: opts.seed,
        rank_rule: opts.rank_rule,
        bins,
        margin_threshold: opts.margin_threshold,
        surrogate_fnv1a: super::surrogate_fingerprint(&bundle)?,
    };
    let bands = band_table(&scores, &counts, &calibration, opts.alpha, noise)?;
    let summary = CalibrationSummary {
        calibration,
        counts_split: counts.meta.split,
        overestimating: s.iter().filter(|&&v| v > 0.0).count() as f64 / m as f64,
        mean_score: s.iter().sum::<f64>() / m as f64,
        class_mismatch: scores
            .iter()
            .filter(|x| x.surrogate_class != x.class_a)
            .count(),
        bands,
        scores,
    };
    save_calibration(&mut bundle, &counts, &summary)?;
    Ok(summary)
}

/// --delta and --alpha in (0, 1), --n0 and --batch at least 1.
fn check_levels(opts: &CalibrateOptions) -> Result<(), PipelineError> {
    if !(opts.delta > 0.0 && opts.delta < 1.0) {
        return Err(PipelineError::Invalid("--delta must be in (0, 1)".into()));
    }
    if !(opts.alpha > 0.0 && opts.alpha < 1.0) || opts.n0 == 0 || opts.batch < 1 {
        return Err(PipelineError::Invalid(
            "--alpha must be in (0, 1), --n0 and --batch at least 1".into(),
        ));
    }
    Ok(())
}

/// AUTO's figures for the candidate bands [low, 0.5].
fn band_table(
    scores: &[Score],
    counts: &Counts,
    calibration: &Calibration,
    alpha: f64,
    noise: crate::smoothing::Noise,
) -> Result<Vec<BandFigures>, PipelineError> {
    [0.0, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5]
        .iter()
        .map(|&low| {
            band_figures(
                scores,
                counts,
                calibration.shift(noise),
                low,
                0.5,
                alpha,
                noise,
            )
        })
        .collect()
}

/// Writes the calibration's inputs and summary beside the bundle, then the
/// calibration into its model.toml.
fn save_calibration(
    bundle: &mut Bundle,
    counts: &Counts,
    summary: &CalibrationSummary,
) -> Result<(), PipelineError> {
    write_json(
        &bundle.dir.join(INPUTS_FILE),
        &InputList {
            split: counts.meta.split,
            indices: counts.indices.clone(),
        },
    )?;
    write_json(&bundle.dir.join(SUMMARY_FILE), summary)?;
    if let Some(s) = bundle.surrogate.as_mut() {
        s.calibration = Some(summary.calibration.clone());
    }
    bundle.save()?;
    Ok(())
}

/// Counts fit to calibrate with: at the surrogate's nominal N, on inputs
/// that neither trained the surrogate, nor fitted its tail map, nor chose
/// the calibration's score, bins or AUTO's band.
fn check_calibration_counts(
    bundle: &Bundle,
    spec: &crate::model::SurrogateSpec,
    counts: &super::counts::Counts,
) -> Result<(), PipelineError> {
    counts.check_base(bundle, &super::base_fingerprint(bundle)?)?;
    if counts.meta.n != spec.nominal_n {
        return Err(PipelineError::Invalid(format!(
            "the counts are at N = {}, the surrogate stands in for N = {}: calibrate with counts \
             at the nominal N, so that the scores measure the certificate it is compared with",
            counts.meta.n, spec.nominal_n
        )));
    }
    if let Some(idx) = SurrogateInputs::fitted(bundle)?.first_of(counts) {
        return Err(PipelineError::Invalid(format!(
            "input {idx} of the {} split trained the surrogate or fitted its tail map; calibration inputs must be held out",
            counts.meta.split
        )));
    }
    if let Some(idx) = InputList::read_if_any(&bundle.dir.join(SELECTION_INPUTS_FILE))?
        .and_then(|sel| sel.first_shared_with(counts.meta.split, &counts.indices))
    {
        return Err(PipelineError::Invalid(format!(
            "input {idx} of the {} split chose the score, the bins or AUTO's band \
             ({SELECTION_INPUTS_FILE}); calibration inputs must be disjoint from the selection inputs",
            counts.meta.split
        )));
    }
    Ok(())
}

/// Each input's conformal score, on the estimate the calibrated method uses.
fn scores(
    inputs: &[ScoredInput],
    opts: &CalibrateOptions,
    n: u64,
    noise: crate::smoothing::Noise,
) -> Vec<Score> {
    inputs
        .iter()
        .map(|x| {
            let estimate =
                smoothing::blended_estimate(x.p_hat_a, x.margin_z, opts.margin_threshold);
            Score {
                idx: x.idx,
                class_a: x.class_a,
                surrogate_class: x.surrogate_class,
                p_hat_a: x.p_hat_a,
                margin_z: x.margin_z,
                estimate,
                p_mc_a: x.p_mc_a,
                s: opts.score.score(noise, estimate, x.p_mc_a, n),
            }
        })
        .collect()
}

/// What calibration and selection know of one input: cA as certification
/// draws it, the surrogate's class and p_hat[cA], and Monte Carlo's p[cA].
#[derive(Debug, Clone)]
pub(crate) struct ScoredInput {
    pub idx: i64,
    pub label: i64,
    pub class_a: usize,
    pub surrogate_class: usize,
    pub p_hat_a: f64,
    pub margin_z: Option<f64>,
    pub p_mc_a: f64,
    pub count_a: u64,
}

/// Scores the inputs of `counts` for calibration or selection (the same
/// seeded selection samples certification draws, and the surrogate).
pub(crate) fn score_inputs(
    bundle: &Bundle,
    counts: &Counts,
    opts: &CalibrateOptions,
) -> Result<Vec<ScoredInput>, PipelineError> {
    let dataset = counts.dataset(bundle, opts.data_dir.as_deref())?;
    let x = counts.images(&dataset)?.to_device(opts.device);
    let model = Classifier::load(bundle, opts.device)?;
    let surrogate = Classifier::load_surrogate(bundle, opts.device)?;
    let noise = bundle.noise();
    // cA as certification draws it: the same seeded streams per input.
    let reqs: Vec<TaskParams> = counts
        .indices
        .iter()
        .enumerate()
        .map(|(i, &idx)| {
            TaskParams::new(
                i,
                opts.n0,
                1,
                opts.alpha,
                engine::input_seed(opts.seed, idx as usize),
            )
        })
        .collect();
    let selected = requests::select(&model, noise, &x, &reqs, opts.batch, &mut |_| true)?;
    let probs: Vec<f64> = engine::surrogate_probs(&surrogate, &x)?.concat();
    let k = bundle.num_classes();
    let n = counts.meta.n as f64;
    let mut out = Vec::with_capacity(counts.len());
    for (i, sel) in selected.iter().enumerate() {
        let sel = sel.ok_or_else(|| PipelineError::Invalid("selection was cancelled".into()))?;
        let p = &probs[i * k..(i + 1) * k];
        let count_a = counts.row(i)[sel.class_a].max(0) as u64;
        out.push(ScoredInput {
            idx: counts.indices[i],
            label: dataset.labels[counts.indices[i] as usize],
            class_a: sel.class_a,
            surrogate_class: crate::smoothing::argmax(p),
            p_hat_a: p[sel.class_a],
            margin_z: sel.margin_z(),
            p_mc_a: count_a as f64 / n,
            count_a,
        });
    }
    Ok(out)
}

/// One quantile per bin of the estimate of p[cA] (Mondrian); none without edges.
fn mondrian_bins(
    scores: &[Score],
    edges: &[f64],
    delta: f64,
    rule: RankRule,
) -> Result<Vec<CalibrationBin>, PipelineError> {
    if edges.is_empty() {
        return Ok(Vec::new());
    }
    let mut by_bin: Vec<Vec<f64>> = vec![Vec::new(); edges.len() + 1];
    for sc in scores {
        by_bin[smoothing::bin_of(edges, sc.estimate)].push(sc.s);
    }
    by_bin
        .iter()
        .enumerate()
        .map(|(j, s)| {
            let (q, rank) = smoothing::conformal_quantile_by(s, delta, rule).map_err(|e| {
                PipelineError::Invalid(format!(
                    "bin {j} (p_hat from {} to {}): {e}; choose fewer bins or calibrate on more inputs",
                    if j == 0 { 0.0 } else { edges[j - 1] },
                    edges.get(j).copied().unwrap_or(1.0)
                ))
            })?;
            Ok(CalibrationBin {
                upper: edges.get(j).copied(),
                q,
                m: s.len(),
                rank,
            })
        })
        .collect()
}

/// AUTO's fallback fraction and missed Monte Carlo certificates for a band.
fn band_figures(
    scores: &[Score],
    counts: &Counts,
    shift: CalibrationShift,
    low: f64,
    high: f64,
    alpha: f64,
    noise: crate::smoothing::Noise,
) -> Result<BandFigures, PipelineError> {
    let band = AutoBand { low, high };
    let n = counts.meta.n;
    let (mut fallback, mut missed) = (0usize, 0usize);
    for (i, sc) in scores.iter().enumerate() {
        let estimate = calibrated_estimate(
            (sc.class_a, sc.surrogate_class, sc.p_hat_a, sc.margin_z),
            counts.meta.num_classes,
            shift,
            n,
            alpha,
            noise,
        )?;
        let p_cal = match estimate.decision {
            Decision::Certified { p_a_lower, .. } | Decision::Abstain { p_a_lower, .. } => {
                p_a_lower
            }
        };
        let mc_count = counts.row(i)[sc.class_a].max(0) as u64;
        let mc_certifies = smoothing::certify_decision(sc.class_a, mc_count, n, alpha, noise)
            .map_err(EngineError::from)?;
        if band.falls_back(&estimate) {
            fallback += 1;
        } else if p_cal <= 0.5 && matches!(mc_certifies, Decision::Certified { .. }) {
            missed += 1;
        }
    }
    Ok(BandFigures {
        low,
        high,
        fallback_fraction: fallback as f64 / scores.len().max(1) as f64,
        missed_certificates: missed as f64 / scores.len().max(1) as f64,
    })
}

/// A margin threshold is a z: finite (a Phi(z) of 1 or 0 would say nothing).
pub(crate) fn check_margin_threshold(t: Option<f64>) -> Result<(), PipelineError> {
    match t {
        Some(t) if !smoothing::margin_threshold_ok(t) => Err(PipelineError::Invalid(format!(
            "--margin-threshold {t}: need a finite z within +-{}",
            smoothing::MAX_MARGIN_THRESHOLD
        ))),
        _ => Ok(()),
    }
}

/// CALIBRATED's estimate for an input known by cA, the surrogate's class,
/// p_hat[cA] and the selection margin's z, as the engine makes it (only
/// those four matter to it).
pub(crate) fn calibrated_estimate(
    (class_a, surrogate_class, p_hat_a, margin_z): (usize, usize, f64, Option<f64>),
    classes: usize,
    shift: CalibrationShift,
    n: u64,
    alpha: f64,
    noise: crate::smoothing::Noise,
) -> Result<engine::SurrogateEstimate, EngineError> {
    let mut p = vec![0.0; classes];
    p[class_a] = p_hat_a;
    if surrogate_class != class_a {
        p[surrogate_class] = 2.0;
    }
    engine::surrogate_estimate(class_a, &p, Some(shift), margin_z, n, alpha, noise)
}
