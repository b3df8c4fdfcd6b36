//! `select-calibration`: chooses CALIBRATED's conformal score, its Mondrian
//! bins and AUTO's band on a selection split, so that nothing the guarantee
//! rests on is chosen on the calibration inputs. The selection inputs must be
//! disjoint from the calibration inputs (refused here if the bundle is
//! already calibrated on any of them) and are recorded in the bundle
//! (`selection_inputs.json`), which `calibrate` then refuses.
//!
//! Each candidate (score, bin edges) is cross-fitted on the selection
//! inputs: calibrated on the even positions and measured on the odd ones,
//! then the other way round. The chosen candidate is the one whose certified
//! accuracy trails Monte Carlo's least (summed over the radii), among those
//! that overestimate the Monte Carlo radius on at most delta of the held-out
//! halves; AUTO's band is the narrowest whose accuracy at radius 0 is within
//! `band_tolerance` of Monte Carlo's, under the chosen calibration.
use super::calibrate::{self, score_inputs, CalibrateOptions, ScoredInput};
use super::{write_json, InputList, PipelineError};
use crate::engine::{self, AutoBand, EngineError};
use crate::model::Bundle;
use crate::smoothing::{self, CalibrationShift, ConformalScore, Decision, MondrianBins, RankRule};
use serde::Serialize;

pub const SUMMARY_FILE: &str = "selection_summary.json";

#[derive(Debug, Clone)]
pub struct SelectOptions {
    /// Bundle, counts (of the selection inputs), delta, n0, alpha, seed,
    /// batch, device; its score, rank rule and bins are ignored.
    pub base: CalibrateOptions,
    pub scores: Vec<ConformalScore>,
    /// Candidate bin edges; an empty list is one quantile over all inputs.
    pub bin_candidates: Vec<Vec<f64>>,
    /// Candidate margin thresholds (`smoothing::blended_estimate`); `None`
    /// is the surrogate's p_hat alone.
    pub margin_thresholds: Vec<Option<f64>>,
    /// Radii at which certified accuracy is compared.
    pub radii: Vec<f64>,
    /// Candidate lower ends of AUTO's band (the upper end is 0.5).
    pub band_lows: Vec<f64>,
    /// AUTO's most accepted accuracy loss against Monte Carlo at radius 0.
    pub band_tolerance: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub score: ConformalScore,
    pub bin_edges: Vec<f64>,
    pub margin_threshold: Option<f64>,
    /// False when a half had too few inputs in some bin for delta.
    pub feasible: bool,
    /// Held-out inputs whose calibrated radius exceeds Monte Carlo's.
    pub overestimation: f64,
    /// Certified accuracy, Monte Carlo minus CALIBRATED, at each radius.
    pub accuracy_gap: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BandCandidate {
    pub low: f64,
    pub high: f64,
    pub fallback_fraction: f64,
    /// Certified accuracy at radius 0, Monte Carlo minus AUTO.
    pub accuracy_gap_at_0: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SelectionSummary {
    pub inputs: usize,
    pub delta: f64,
    pub radii: Vec<f64>,
    pub candidates: Vec<Candidate>,
    pub score: ConformalScore,
    pub bin_edges: Vec<f64>,
    pub margin_threshold: Option<f64>,
    pub bands: Vec<BandCandidate>,
    pub band: (f64, f64),
}

pub fn select_calibration(opts: &SelectOptions) -> Result<SelectionSummary, PipelineError> {
    let base = &opts.base;
    let bundle = Bundle::load(&base.bundle)?;
    let spec = bundle.surrogate.clone().ok_or_else(|| {
        PipelineError::Invalid(format!(
            "{} has no surrogate (train-surrogate first)",
            base.bundle.display()
        ))
    })?;
    if opts.scores.is_empty()
        || opts.bin_candidates.is_empty()
        || opts.margin_thresholds.is_empty()
        || opts.band_lows.is_empty()
    {
        return Err(PipelineError::Invalid(
            "select-calibration needs at least one score, one bin choice, one margin threshold \
             choice and one band"
                .into(),
        ));
    }
    for edges in &opts.bin_candidates {
        smoothing::check_edges(edges).map_err(EngineError::from)?;
    }
    for &t in &opts.margin_thresholds {
        calibrate::check_margin_threshold(t)?;
    }
    let counts = super::counts::merge_counts_in_memory(&base.counts)?;
    check_selection_counts(&bundle, &spec, &counts)?;
    let inputs = score_inputs(&bundle, &counts, base)?;
    let n = counts.meta.n;
    let noise = bundle.noise();
    let k = bundle.num_classes();
    let folds: [Vec<&ScoredInput>; 2] = [
        inputs.iter().step_by(2).collect(),
        inputs.iter().skip(1).step_by(2).collect(),
    ];

    let mut candidates = Vec::new();
    for &margin in &opts.margin_thresholds {
        for &score in &opts.scores {
            for edges in &opts.bin_candidates {
                let way = Way {
                    score,
                    edges,
                    margin,
                };
                candidates.push(cross_fit(way, &folds, opts, base, n, k, noise)?);
            }
        }
    }
    let chosen = best_candidate(&candidates, base.delta)?;

    // AUTO's band under the chosen calibration, cross-fitted the same way.
    let bands = band_candidates(&chosen, &folds, opts, n, k, noise)?;
    let band = bands
        .iter()
        .filter(|b| b.accuracy_gap_at_0 <= opts.band_tolerance)
        .min_by(|a, b| a.fallback_fraction.total_cmp(&b.fallback_fraction))
        .or_else(|| bands.iter().min_by(|a, b| a.low.total_cmp(&b.low)))
        .map(|b| (b.low, b.high))
        .unwrap_or((0.0, 0.5));

    let summary = SelectionSummary {
        inputs: inputs.len(),
        delta: base.delta,
        radii: opts.radii.clone(),
        candidates,
        score: chosen.score,
        bin_edges: chosen.bin_edges.clone(),
        margin_threshold: chosen.margin_threshold,
        bands,
        band,
    };
    fence_selection_inputs(&bundle, &counts)?;
    write_json(&bundle.dir.join(SUMMARY_FILE), &summary)?;
    Ok(summary)
}

/// Counts fit to select on: at the surrogate's nominal N, and on inputs that
/// neither trained the surrogate, nor fitted its tail map, nor calibrated it.
fn check_selection_counts(
    bundle: &Bundle,
    spec: &crate::model::SurrogateSpec,
    counts: &super::counts::Counts,
) -> Result<(), PipelineError> {
    counts.check_base(bundle, &super::base_fingerprint(bundle)?)?;
    if counts.meta.n != spec.nominal_n {
        return Err(PipelineError::Invalid(format!(
            "the counts are at N = {}, the surrogate stands in for N = {}",
            counts.meta.n, spec.nominal_n
        )));
    }
    if let Some(idx) = super::surrogate::SurrogateInputs::fitted(bundle)?.first_of(counts) {
        return Err(PipelineError::Invalid(format!(
            "input {idx} of the {} split trained the surrogate or fitted its tail map",
            counts.meta.split
        )));
    }
    // The guarantee's inputs are never read here.
    if let Some(idx) = InputList::read_if_any(&bundle.dir.join(calibrate::INPUTS_FILE))?
        .and_then(|cal| cal.first_shared_with(counts.meta.split, &counts.indices))
    {
        return Err(PipelineError::Invalid(format!(
            "input {idx} of the {} split calibrated this bundle ({}); selection inputs must be \
             disjoint from the calibration inputs",
            counts.meta.split,
            calibrate::INPUTS_FILE
        )));
    }
    Ok(())
}

/// The feasible candidate within delta that trails Monte Carlo least (fewer
/// bins, then no margin, on a tie).
fn best_candidate(candidates: &[Candidate], delta: f64) -> Result<Candidate, PipelineError> {
    candidates
        .iter()
        .filter(|c| c.feasible && c.overestimation <= delta)
        .min_by(|a, b| {
            let (ga, gb) = (
                a.accuracy_gap.iter().sum::<f64>(),
                b.accuracy_gap.iter().sum::<f64>(),
            );
            ga.total_cmp(&gb)
                .then(a.bin_edges.len().cmp(&b.bin_edges.len()))
                .then(
                    a.margin_threshold
                        .is_some()
                        .cmp(&b.margin_threshold.is_some()),
                )
        })
        .cloned()
        .ok_or_else(|| {
            PipelineError::Invalid(format!(
                "no candidate overestimates on at most delta = {delta} of the held-out halves"
            ))
        })
}

/// AUTO's band candidates under the chosen calibration, cross-fitted the
/// same way: how often each falls back, and what it loses at r = 0.
fn band_candidates(
    chosen: &Candidate,
    folds: &[Vec<&ScoredInput>; 2],
    opts: &SelectOptions,
    n: u64,
    k: usize,
    noise: crate::smoothing::Noise,
) -> Result<Vec<BandCandidate>, PipelineError> {
    let base = &opts.base;
    let mut bands = Vec::new();
    for &low in &opts.band_lows {
        let band = AutoBand { low, high: 0.5 };
        let (mut fallback, mut gap, mut total) = (0usize, 0i64, 0usize);
        for f in 0..2 {
            let way = Way {
                score: chosen.score,
                edges: &chosen.bin_edges,
                margin: chosen.margin_threshold,
            };
            let shift = calibrate_on(&folds[f], way, base.delta, n, noise)?
                .ok_or_else(|| PipelineError::Invalid("the chosen bins lost feasibility".into()))?;
            for x in &folds[1 - f] {
                let estimate = estimate(x, shift, n, k, base.alpha, noise)?;
                let mc = mc_radius(x, n, base.alpha, noise)?;
                let auto_correct = if band.falls_back(&estimate) {
                    fallback += 1;
                    mc.is_some() && x.class_a as i64 == x.label
                } else {
                    certified(&estimate.decision).is_some() && x.class_a as i64 == x.label
                };
                let mc_correct = mc.is_some() && x.class_a as i64 == x.label;
                gap += i64::from(mc_correct) - i64::from(auto_correct);
                total += 1;
            }
        }
        bands.push(BandCandidate {
            low,
            high: 0.5,
            fallback_fraction: fallback as f64 / total.max(1) as f64,
            accuracy_gap_at_0: gap as f64 / total.max(1) as f64,
        });
    }
    Ok(bands)
}

/// Adds the selection inputs to any earlier selection's: what tuned anything
/// stays fenced off from calibration and evaluation.
fn fence_selection_inputs(
    bundle: &Bundle,
    counts: &super::counts::Counts,
) -> Result<(), PipelineError> {
    let path = bundle.dir.join(calibrate::SELECTION_INPUTS_FILE);
    let mut indices = match InputList::read_if_any(&path)? {
        Some(earlier) if earlier.split != counts.meta.split => {
            return Err(PipelineError::Invalid(format!(
                "{} records selection inputs of the {} split; select on that split too",
                path.display(),
                earlier.split
            )))
        }
        Some(earlier) => earlier.indices,
        None => Vec::new(),
    };
    indices.extend(counts.indices.iter().copied());
    indices.sort_unstable();
    indices.dedup();
    write_json(
        &path,
        &InputList {
            split: counts.meta.split,
            indices,
        },
    )?;
    Ok(())
}

/// One candidate way to calibrate: a score, its bins and the estimate's
/// margin threshold.
#[derive(Clone, Copy)]
struct Way<'a> {
    score: ConformalScore,
    edges: &'a [f64],
    margin: Option<f64>,
}

/// Calibrates on one half and measures on the other, both ways.
fn cross_fit(
    way: Way<'_>,
    folds: &[Vec<&ScoredInput>; 2],
    opts: &SelectOptions,
    base: &CalibrateOptions,
    n: u64,
    k: usize,
    noise: crate::smoothing::Noise,
) -> Result<Candidate, PipelineError> {
    let mut over = 0usize;
    let mut total = 0usize;
    let mut gap = vec![0i64; opts.radii.len()];
    for f in 0..2 {
        let Some(shift) = calibrate_on(&folds[f], way, base.delta, n, noise)? else {
            return Ok(Candidate {
                score: way.score,
                bin_edges: way.edges.to_vec(),
                margin_threshold: way.margin,
                feasible: false,
                overestimation: f64::NAN,
                accuracy_gap: vec![f64::NAN; opts.radii.len()],
            });
        };
        for x in &folds[1 - f] {
            let est = estimate(x, shift, n, k, base.alpha, noise)?;
            let cal = certified(&est.decision);
            let mc = mc_radius(x, n, base.alpha, noise)?;
            if cal.unwrap_or(0.0) > mc.unwrap_or(0.0) {
                over += 1;
            }
            let correct = x.class_a as i64 == x.label;
            for (j, &r) in opts.radii.iter().enumerate() {
                let by = |radius: Option<f64>| correct && radius.is_some_and(|v| v >= r);
                gap[j] += i64::from(by(mc)) - i64::from(by(cal));
            }
            total += 1;
        }
    }
    Ok(Candidate {
        score: way.score,
        bin_edges: way.edges.to_vec(),
        margin_threshold: way.margin,
        feasible: true,
        overestimation: over as f64 / total.max(1) as f64,
        accuracy_gap: gap
            .iter()
            .map(|&g| g as f64 / total.max(1) as f64)
            .collect(),
    })
}

/// The calibration a half gives (marginal rank); `None` if a bin is too small.
fn calibrate_on(
    half: &[&ScoredInput],
    way: Way<'_>,
    delta: f64,
    n: u64,
    noise: crate::smoothing::Noise,
) -> Result<Option<CalibrationShift>, PipelineError> {
    let Way {
        score,
        edges,
        margin,
    } = way;
    let mut by_bin: Vec<Vec<f64>> = vec![Vec::new(); edges.len() + 1];
    for x in half {
        let p = smoothing::blended_estimate(x.p_hat_a, x.margin_z, margin);
        let s = score.score(noise, p, x.p_mc_a, n);
        if !s.is_finite() {
            return Err(PipelineError::Invalid(format!(
                "input {}: its {} score is not finite (estimate {}, p_MC {})",
                x.idx,
                score.as_str(),
                p,
                x.p_mc_a
            )));
        }
        by_bin[smoothing::bin_of(edges, p)].push(s);
    }
    let mut qs = Vec::new();
    for s in &by_bin {
        // Finite scores: the only failure left is too few of them for delta.
        if RankRule::Marginal.rank(s.len(), delta).is_none() {
            return Ok(None);
        }
        let (q, _) = smoothing::conformal_quantile_by(s, delta, RankRule::Marginal)
            .map_err(EngineError::from)?;
        qs.push(q);
    }
    let pooled: Vec<f64> = by_bin.concat();
    let (q, _) = smoothing::conformal_quantile(&pooled, delta).map_err(EngineError::from)?;
    Ok(Some(CalibrationShift {
        noise,
        score,
        q,
        bins: if edges.is_empty() {
            None
        } else {
            Some(MondrianBins::new(edges, &qs).map_err(EngineError::from)?)
        },
        margin_threshold: margin,
    }))
}

/// CALIBRATED's estimate for one input, as the engine makes it.
fn estimate(
    x: &ScoredInput,
    shift: CalibrationShift,
    n: u64,
    k: usize,
    alpha: f64,
    noise: crate::smoothing::Noise,
) -> Result<engine::SurrogateEstimate, PipelineError> {
    let input = (x.class_a, x.surrogate_class, x.p_hat_a, x.margin_z);
    Ok(calibrate::calibrated_estimate(
        input, k, shift, n, alpha, noise,
    )?)
}

/// Monte Carlo's radius for one input, `None` when it abstains.
fn mc_radius(
    x: &ScoredInput,
    n: u64,
    alpha: f64,
    noise: crate::smoothing::Noise,
) -> Result<Option<f64>, PipelineError> {
    let d = smoothing::certify_decision(x.class_a, x.count_a, n, alpha, noise)
        .map_err(EngineError::from)?;
    Ok(certified(&d))
}

fn certified(d: &Decision) -> Option<f64> {
    match d {
        Decision::Certified { radius, .. } => Some(*radius),
        Decision::Abstain { .. } => None,
    }
}
