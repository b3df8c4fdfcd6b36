//! `fit-tail-map`: histogram-binning recalibration of the surrogate's miss
//! mass (1 - p_hat[top]) on Monte Carlo counts of inputs it never trained on.
//!
//! Why: a surrogate trained on counts of the base classifier's own training
//! images learns how often the base classifier misses there, and it misses
//! less often on fresh images, whose counts the surrogate never saw. Binned by
//! the predicted miss, the ratio observed / predicted per bin is the
//! correction; a half-sample pseudo-count keeps bins of near-zero misses finite.
use super::counts::Counts;
use super::surrogate::SurrogateInputs;
use super::{write_json, InputList, PipelineError};
use crate::data;
use crate::engine;
use crate::model::{Bundle, Classifier, TailMap};
use serde::Serialize;
use std::path::PathBuf;
use tch::Device;

pub const INPUTS_FILE: &str = "tail_map_inputs.json";
pub const SUMMARY_FILE: &str = "tail_map_summary.json";

/// Bin edges of the predicted miss before merging sparse bins: roughly
/// doubling, so that every decade of the tail gets its own factor.
const BASE_EDGES: [f64; 14] = [
    0.0, 3e-5, 1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3, 3.2e-3, 6.4e-3, 1.28e-2, 2.56e-2, 5.12e-2, 0.1024,
    0.3,
];

/// Bins with fewer inputs are merged into their neighbour.
pub const DEFAULT_MIN_INPUTS: usize = 40;

#[derive(Debug, Clone)]
pub struct FitTailMapOptions {
    pub bundle: PathBuf,
    pub counts: Vec<PathBuf>,
    /// Bins with fewer inputs are merged into their neighbour.
    pub min_inputs: usize,
    pub batch: i64,
    pub data_dir: Option<PathBuf>,
    pub device: Device,
}

/// One bin of the fit, with what it corrects.
#[derive(Debug, Clone, Serialize)]
pub struct BinFigures {
    pub low: f64,
    /// The next bin's low edge; None for the last, open bin.
    pub high: Option<f64>,
    pub inputs: usize,
    pub mean_predicted_miss: f64,
    pub mean_observed_miss: f64,
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TailMapSummary {
    pub split: data::Split,
    pub inputs: usize,
    pub counts_n: u64,
    pub bins: Vec<BinFigures>,
    /// Mean |log((observed + c) / (predicted + c))| of the miss, c = 1/(2N):
    /// the relative error of the tail before the map, after it (fitted and
    /// scored on the same inputs), and cross-fitted (two folds, each scored
    /// with the map fitted on the other): the honest figure.
    pub log_error_before: f64,
    pub log_error_after: f64,
    pub log_error_cross_fitted: f64,
    /// A calibration measured the surrogate without this map; it was dropped.
    pub dropped_calibration: bool,
}

pub fn fit_tail_map(opts: &FitTailMapOptions) -> Result<TailMapSummary, PipelineError> {
    if opts.min_inputs == 0 || opts.batch < 1 {
        return Err(PipelineError::Invalid(
            "--min-inputs and --batch must be at least 1".into(),
        ));
    }
    let mut bundle = Bundle::load(&opts.bundle)?;
    if bundle.surrogate.is_none() {
        return Err(PipelineError::Invalid(format!(
            "{} has no surrogate (train-surrogate first)",
            opts.bundle.display()
        )));
    }
    let counts = super::counts::merge_counts_in_memory(&opts.counts)?;
    counts.check_base(&bundle, &super::base_fingerprint(&bundle)?)?;
    if let Some(idx) = SurrogateInputs::read(&bundle.dir)?.first_of(&counts) {
        return Err(PipelineError::Invalid(format!(
            "input {idx} of the {} split trained the surrogate; a tail map needs held-out inputs",
            counts.meta.split
        )));
    }

    // The surrogate as trained: a map already in the bundle is replaced, not stacked.
    let mut raw = bundle.clone();
    if let Some(s) = raw.surrogate.as_mut() {
        s.tail_map = None;
    }
    let surrogate = Classifier::load_surrogate(&raw, opts.device)?;
    let x = counts.images(&counts.dataset(&bundle, opts.data_dir.as_deref())?)?;
    let mut probs = Vec::with_capacity(counts.len());
    for start in (0..counts.len() as i64).step_by(opts.batch as usize) {
        let len = opts.batch.min(counts.len() as i64 - start);
        probs.extend(engine::surrogate_probs(
            &surrogate,
            &x.narrow(0, start, len),
        )?);
    }
    let (predicted, observed) = misses(&probs, &counts);
    let n = counts.meta.n;
    let fit = fit_bins(&predicted, &observed, n, opts.min_inputs);
    let map = TailMap {
        surrogate_fnv1a: super::surrogate_fingerprint(&bundle)?,
        ..map_of(&fit, counts.meta.split, n)
    };
    map.validate().map_err(PipelineError::Invalid)?;

    let mapped: Vec<f64> = predicted.iter().map(|&m| m * map.ratio(m)).collect();
    let summary = TailMapSummary {
        split: counts.meta.split,
        inputs: counts.len(),
        counts_n: n,
        bins: fit,
        log_error_before: log_error(&predicted, &observed, n),
        log_error_after: log_error(&mapped, &observed, n),
        log_error_cross_fitted: cross_fitted_log_error(&predicted, &observed, n, opts.min_inputs),
        dropped_calibration: bundle
            .surrogate
            .as_ref()
            .is_some_and(|s| s.calibration.is_some()),
    };
    write_json(
        &bundle.dir.join(INPUTS_FILE),
        &InputList {
            split: counts.meta.split,
            indices: counts.indices.clone(),
        },
    )?;
    write_json(&bundle.dir.join(SUMMARY_FILE), &summary)?;
    if let Some(s) = bundle.surrogate.as_mut() {
        s.tail_map = Some(map);
        // The calibration's scores were of the surrogate without this map.
        s.calibration = None;
    }
    bundle.save()?;
    Ok(summary)
}

/// Per input: the surrogate's miss 1 - p_hat[top] and the Monte Carlo miss
/// of the same class.
fn misses(probs: &[Vec<f64>], counts: &Counts) -> (Vec<f64>, Vec<f64>) {
    let n = counts.meta.n as f64;
    probs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let top = crate::smoothing::argmax(p);
            let hits = f64::from(counts.row(i).get(top).copied().unwrap_or(0));
            ((1.0 - p[top]).max(0.0), 1.0 - hits / n)
        })
        .unzip()
}

/// Bins over [`BASE_EDGES`], each sparse bin merged with the next (the last
/// with the one before), and the ratio (sum observed + c) / (sum predicted + c)
/// with c = 1/(2N): half a sample of pseudo-count.
pub fn fit_bins(predicted: &[f64], observed: &[f64], n: u64, min_inputs: usize) -> Vec<BinFigures> {
    let bin_of = |m: f64| BASE_EDGES.partition_point(|&e| e <= m).saturating_sub(1);
    let mut per = vec![(0usize, 0.0f64, 0.0f64); BASE_EDGES.len()];
    for (&p, &o) in predicted.iter().zip(observed) {
        let b = &mut per[bin_of(p)];
        b.0 += 1;
        b.1 += p;
        b.2 += o;
    }
    // Groups of base bins: [start, end) with at least min_inputs each.
    let mut groups: Vec<(usize, usize, usize, f64, f64)> = Vec::new();
    let mut open = (0usize, 0usize, 0.0f64, 0.0f64);
    for (i, &(k, p, o)) in per.iter().enumerate() {
        open = (open.0, open.1 + k, open.2 + p, open.3 + o);
        if open.1 >= min_inputs {
            groups.push((open.0, i + 1, open.1, open.2, open.3));
            open = (i + 1, 0, 0.0, 0.0);
        }
    }
    match groups.last_mut() {
        Some(last) => {
            last.1 = BASE_EDGES.len();
            last.2 += open.1;
            last.3 += open.2;
            last.4 += open.3;
        }
        None => groups.push((0, BASE_EDGES.len(), open.1, open.2, open.3)),
    }
    let c = 0.5 / n.max(1) as f64;
    groups
        .iter()
        .enumerate()
        .map(|(g, &(start, _, k, p, o))| BinFigures {
            low: BASE_EDGES[start],
            high: groups.get(g + 1).map(|next| BASE_EDGES[next.0]),
            inputs: k,
            mean_predicted_miss: p / k.max(1) as f64,
            mean_observed_miss: o / k.max(1) as f64,
            ratio: (o + c) / (p + c),
        })
        .collect()
}

/// The map the fitted bins make, recorded as fitted on `split` at `counts_n`.
fn map_of(bins: &[BinFigures], split: data::Split, counts_n: u64) -> TailMap {
    TailMap {
        edges: bins.iter().map(|b| b.low).collect(),
        ratios: bins.iter().map(|b| b.ratio).collect(),
        inputs: bins.iter().map(|b| b.inputs).collect(),
        split,
        counts_n,
        inputs_file: INPUTS_FILE.into(),
        surrogate_fnv1a: None,
    }
}

fn log_error(predicted: &[f64], observed: &[f64], n: u64) -> f64 {
    let c = 0.5 / n.max(1) as f64;
    let sum: f64 = predicted
        .iter()
        .zip(observed)
        .map(|(&p, &o)| ((o + c) / (p + c)).ln().abs())
        .sum();
    sum / predicted.len().max(1) as f64
}

/// Two folds by position: each half scored with the map fitted on the other.
fn cross_fitted_log_error(predicted: &[f64], observed: &[f64], n: u64, min_inputs: usize) -> f64 {
    let fold = |parity: usize| -> (Vec<f64>, Vec<f64>) {
        predicted
            .iter()
            .zip(observed)
            .enumerate()
            .filter(|(i, _)| i % 2 == parity)
            .map(|(_, (&p, &o))| (p, o))
            .unzip()
    };
    let (mut mapped, mut truth) = (Vec::new(), Vec::new());
    for parity in 0..2 {
        let (fit_p, fit_o) = fold(1 - parity);
        let (eval_p, eval_o) = fold(parity);
        let map = map_of(
            &fit_bins(&fit_p, &fit_o, n, min_inputs),
            data::Split::Test,
            n,
        );
        mapped.extend(eval_p.iter().map(|&m| m * map.ratio(m)));
        truth.extend(eval_o);
    }
    log_error(&mapped, &truth, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uniform_overprediction_is_corrected_in_every_bin() {
        // Predicted misses spread over the tail, observed exactly half of them:
        // every bin's ratio must come out near 1/2 (the pseudo-count only
        // nudges it), whatever the merging did.
        let predicted: Vec<f64> = (0..400).map(|i| 1e-4 * (1.0 + i as f64 / 4.0)).collect();
        let observed: Vec<f64> = predicted.iter().map(|p| p / 2.0).collect();
        let bins = fit_bins(&predicted, &observed, 100_000, 40);
        assert!(bins.iter().all(|b| b.inputs >= 40), "{bins:?}");
        assert_eq!(bins.iter().map(|b| b.inputs).sum::<usize>(), 400);
        assert_eq!(bins[0].low, 0.0);
        for b in &bins {
            let expected = (b.mean_observed_miss * b.inputs as f64 + 5e-6)
                / (b.mean_predicted_miss * b.inputs as f64 + 5e-6);
            assert!((b.ratio - expected).abs() < 1e-12);
            assert!((b.ratio - 0.5).abs() < 0.01, "{b:?}");
        }
        let map = map_of(&bins, data::Split::Test, 100_000);
        let mapped: Vec<f64> = predicted.iter().map(|&m| m * map.ratio(m)).collect();
        assert!(log_error(&mapped, &observed, 100_000) < 0.02);
        assert!(log_error(&predicted, &observed, 100_000) > 0.6);
    }

    #[test]
    fn sparse_inputs_still_give_one_bin_from_zero() {
        let bins = fit_bins(&[0.01, 0.2], &[0.02, 0.1], 10_000, 40);
        assert_eq!(bins.len(), 1);
        assert_eq!(bins[0].low, 0.0);
        assert!(bins[0].high.is_none());
        assert_eq!(bins[0].inputs, 2);
        let c = 0.5 / 10_000.0;
        assert!((bins[0].ratio - (0.12 + c) / (0.21 + c)).abs() < 1e-12);
    }
}
