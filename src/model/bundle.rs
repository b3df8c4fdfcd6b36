//! The model bundle: a directory with `model.toml` (what the model is, how it
//! was made) beside its weight files.
use crate::data::DatasetSource;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "model.toml";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Per-channel mean/std applied inside the model, after the noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightsFormat {
    /// A built-in architecture (`arch`) with safetensors weights.
    Safetensors,
    /// Any PyTorch model exported with `torch.jit.script`/`trace`.
    Torchscript,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseSpec {
    pub format: WeightsFormat,
    /// Relative to the bundle directory.
    pub file: String,
    /// Built-in architecture name; required for safetensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

/// The surrogate of Accelerated Smoothing: a network whose softmax predicts the
/// normalized Monte Carlo class counts of the base classifier at `nominal_n`
/// samples. Its radii are estimates of the Monte Carlo certificate, not certificates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SurrogateSpec {
    #[serde(flatten)]
    pub model: BaseSpec,
    /// The sample count the surrogate's prediction stands in for.
    pub nominal_n: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<SurrogateTraining>,
    /// Written by `fit-tail-map`: a correction of the surrogate's tail fitted
    /// on counts of inputs the base classifier never trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_map: Option<TailMap>,
    /// Written by `calibrate`; part of this section so that retraining the
    /// surrogate drops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
}

impl SurrogateSpec {
    /// Refuses a tail map or calibration recorded for another surrogate
    /// file than the one at `fingerprint` (`fsutil::fingerprint`), naming both.
    pub fn check_measured(&self, fingerprint: &str) -> Result<(), String> {
        let recorded = [
            (
                "tail_map",
                "refit (fit-tail-map)",
                self.tail_map
                    .as_ref()
                    .and_then(|t| t.surrogate_fnv1a.as_deref()),
            ),
            (
                "calibration",
                "recalibrate (calibrate)",
                self.calibration
                    .as_ref()
                    .and_then(|c| c.surrogate_fnv1a.as_deref()),
            ),
        ];
        for (section, remedy, measured) in recorded {
            if let Some(measured) = measured.filter(|m| *m != fingerprint) {
                return Err(format!(
                    "surrogate.{section} measured the surrogate {measured}, but {} is {fingerprint}: \
                     {remedy} it on this surrogate",
                    self.model.file,
                ));
            }
        }
        Ok(())
    }
}

/// Histogram-binning recalibration of the surrogate's miss mass
/// m = 1 - p_hat[top]: in bin b (edges[b] <= m < edges[b + 1], the last bin
/// open) m becomes m * ratios[b], the other classes scaled with it. Fitted by
/// `fit-tail-map` as (observed misses + 1/2) / (predicted misses + 1/2) per bin
/// over held-out Monte Carlo counts: the base classifier is more robust on
/// inputs it never trained on than on its own training images, which a
/// surrogate trained on training-image counts cannot know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TailMap {
    pub edges: Vec<f64>,
    pub ratios: Vec<f64>,
    /// Inputs per bin in the fit.
    pub inputs: Vec<usize>,
    pub split: crate::data::Split,
    pub counts_n: u64,
    /// The bundle file listing the fit's inputs (dataset indices).
    pub inputs_file: String,
    /// Fingerprint of the surrogate file the map was fitted on: loading the
    /// map with another surrogate is refused. Absent in older bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surrogate_fnv1a: Option<String>,
}

impl TailMap {
    pub fn validate(&self) -> Result<(), String> {
        let ok = !self.edges.is_empty()
            && self.edges.len() == self.ratios.len()
            && self.inputs.len() == self.ratios.len()
            && self.edges[0] == 0.0
            && self.edges.windows(2).all(|w| w[0] < w[1])
            && self.ratios.iter().all(|r| r.is_finite() && *r > 0.0);
        if ok {
            Ok(())
        } else {
            Err("surrogate.tail_map: edges must start at 0 and increase, with one positive ratio and count per edge".into())
        }
    }

    /// The factor for miss mass `m`.
    pub fn ratio(&self, m: f64) -> f64 {
        let bin = self.edges.partition_point(|&e| e <= m).saturating_sub(1);
        self.ratios.get(bin).copied().unwrap_or(1.0)
    }

    /// Applies the map to one probability vector in place.
    pub fn apply(&self, p: &mut [f64]) {
        if p.is_empty() {
            return;
        }
        let top = crate::smoothing::argmax(p);
        let miss = 1.0 - p[top];
        if miss <= 0.0 {
            return;
        }
        // Capped so that the top class stays on top: with the runner-up at
        // p2 scaled alike, 1 - mapped >= p2 * mapped / miss.
        let runner_up = (0..p.len())
            .filter(|&j| j != top)
            .map(|j| p[j])
            .fold(0.0, f64::max);
        let mapped = (miss * self.ratio(miss)).min(miss / (miss + runner_up));
        let scale = mapped / miss;
        for (j, v) in p.iter_mut().enumerate() {
            *v = if j == top { 1.0 - mapped } else { *v * scale };
        }
    }
}

/// Split-conformal calibration of the surrogate's overestimation score s
/// (p_hat[cA] - p_MC[cA], or its log-miss form) on inputs held out from its
/// training, with Monte Carlo counts at `n` samples: `q` is the
/// ceil((m + 1)(1 - delta))-th smallest of the m scores. Method CALIBRATED
/// uses the calibrated p_hat[cA] (p_hat - q for p_gap), whose radius exceeds
/// the Monte Carlo certificate's with probability at most `delta` over inputs
/// exchangeable with the calibration inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub delta: f64,
    /// How the scores were computed (and so how q is applied); p_gap when
    /// a bundle does not say.
    #[serde(default)]
    pub score: crate::smoothing::ConformalScore,
    pub q: f64,
    /// Calibration inputs (scores).
    pub m: usize,
    /// The rank of q among the sorted scores, from 1.
    pub rank: usize,
    /// Monte Carlo samples behind each p_MC[cA].
    pub n: u64,
    /// Base-classifier samples that chose cA, as certification draws them.
    pub n0: u64,
    pub split: crate::data::Split,
    /// The bundle file listing the calibration inputs' dataset indices.
    pub inputs_file: String,
    pub seed: u64,
    /// Which rank of the sorted scores is q (marginal when a bundle does not say).
    #[serde(default)]
    pub rank_rule: crate::smoothing::RankRule,
    /// Mondrian calibration: one quantile per bin of the estimate of p[cA]; empty for one
    /// quantile (`q`) over all inputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bins: Vec<CalibrationBin>,
    /// Blend the n0 selection samples' logit margin into the estimate below
    /// this z (`smoothing::blended_estimate`); absent: the surrogate's p_hat alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin_threshold: Option<f64>,
    /// Fingerprint of the surrogate file the scores measured: a calibration
    /// of another surrogate is refused at load. Absent in older bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surrogate_fnv1a: Option<String>,
}

/// One Mondrian bin: the inputs whose estimate of p[cA] is below `upper` (and at or
/// above the previous bin's); the last bin has no upper edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<f64>,
    pub q: f64,
    pub m: usize,
    pub rank: usize,
}

impl Calibration {
    /// What CALIBRATED does to p_hat[cA] under this calibration, with the
    /// bundle's `noise` (whose radius units the radius-space score uses).
    pub fn shift(&self, noise: crate::smoothing::Noise) -> crate::smoothing::CalibrationShift {
        let edges: Vec<f64> = self.bins.iter().filter_map(|b| b.upper).collect();
        let qs: Vec<f64> = self.bins.iter().map(|b| b.q).collect();
        crate::smoothing::CalibrationShift {
            noise,
            score: self.score,
            q: self.q,
            // A bundle whose bins do not load (checked at load) serves one q.
            bins: (!self.bins.is_empty())
                .then(|| crate::smoothing::MondrianBins::new(&edges, &qs).ok())
                .flatten(),
            margin_threshold: self.margin_threshold,
        }
    }
}

/// How the surrogate was trained and how close it came on held-out inputs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SurrogateTraining {
    /// "js" (Jensen-Shannon) or "soft-ce" (cross-entropy against the normalized counts).
    pub loss: String,
    /// The weight of the margin tail's log-miss term beside the loss, where
    /// it was trained with one (`--margin-tail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin_tail: Option<f64>,
    /// Its fitted tail's (a, b): the miss target Phi(-(a + b z)) at cA's margin z.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin_tail_probit: Option<[f64; 2]>,
    /// Where the weights started: "base-copy" (the base's TorchScript module,
    /// fine-tuned), "base-weights" (a built-in base's weights) or "scratch".
    /// Absent in bundles trained before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    pub epochs: usize,
    pub best_epoch: usize,
    /// Sample count of the training counts.
    pub counts_n: u64,
    pub train_inputs: usize,
    pub validation_inputs: usize,
    pub seed: u64,
    pub training_seconds: f64,
    /// Mean Jensen-Shannon divergence (nats) between p_hat and the normalized counts.
    pub val_mean_js: f64,
    /// Fraction of validation inputs where argmax p_hat is the Monte Carlo argmax.
    pub val_top1_agreement: f64,
    /// Mean and 95th percentile of |p_hat[cA] - p_MC[cA]|, cA the Monte Carlo argmax.
    pub val_mean_abs_err_pa: f64,
    pub val_p95_abs_err_pa: f64,
}

/// How the base classifier was made: enough to reproduce and to judge it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub dataset: Option<DatasetSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_seconds: Option<f64>,
    /// Test accuracy on clean inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_test_accuracy: Option<f64>,
    /// Test accuracy of the base classifier on one noisy copy per input at sigma.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noisy_test_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

/// `model.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    pub name: String,
    pub version: String,
    /// [C, H, W] of one input, pixels in [0, 1].
    pub input_shape: [usize; 3],
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<Normalization>,
    /// The smoothing noise (`[noise] kind = "gaussian", sigma = ...`).
    pub noise: crate::smoothing::Noise,
    pub base: BaseSpec,
    #[serde(default)]
    pub provenance: Provenance,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surrogate: Option<SurrogateSpec>,
    /// The directory the manifest was read from (not stored).
    #[serde(skip)]
    pub dir: PathBuf,
}

impl Bundle {
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|source| BundleError::Read {
            path: path.clone(),
            source,
        })?;
        let mut bundle: Bundle = toml::from_str(&text).map_err(|e| BundleError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        bundle.dir = dir.to_path_buf();
        bundle
            .validate()
            .map_err(|message| BundleError::Invalid { path, message })?;
        Ok(bundle)
    }

    /// Writes `model.toml` atomically (temp file + rename), so a crash never leaves half a manifest.
    pub fn save(&self) -> Result<(), BundleError> {
        let path = self.dir.join(MANIFEST);
        self.validate().map_err(|message| BundleError::Invalid {
            path: path.clone(),
            message,
        })?;
        let text = toml::to_string(self).map_err(|e| BundleError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        std::fs::create_dir_all(&self.dir)
            .and_then(|_| crate::fsutil::write_atomic(&path, text.as_bytes()))
            .map_err(|source| BundleError::Write { path, source })
    }

    pub fn num_classes(&self) -> usize {
        self.labels.len()
    }

    pub fn noise(&self) -> crate::smoothing::Noise {
        self.noise
    }

    /// Fingerprint of the surrogate file (`fsutil::fingerprint`), `None`
    /// without a surrogate: what its tail map and calibration record.
    pub fn surrogate_fingerprint(&self) -> std::io::Result<Option<String>> {
        self.surrogate
            .as_ref()
            .map(|s| crate::fsutil::fingerprint(&self.dir.join(&s.model.file)))
            .transpose()
    }

    pub fn base_path(&self) -> PathBuf {
        self.dir.join(&self.base.file)
    }

    fn validate(&self) -> Result<(), String> {
        let [c, h, w] = self.input_shape;
        if c == 0 || h == 0 || w == 0 {
            return Err(format!(
                "input_shape {:?} has a zero dimension",
                self.input_shape
            ));
        }
        if self.labels.len() < 2 {
            return Err("labels: a classifier needs at least two classes".into());
        }
        if self.noise.validate().is_err() {
            return Err(format!(
                "noise.{} must be > 0, got {}",
                self.noise.scale_name(),
                self.noise.scale()
            ));
        }
        if let Some(norm) = &self.normalization {
            validate_normalization(norm, c)?;
        }
        let mut specs = vec![("base", &self.base)];
        if let Some(s) = &self.surrogate {
            specs.push(("surrogate", &s.model));
            validate_surrogate(s)?;
        }
        for (section, spec) in specs {
            validate_weights(section, spec)?;
        }
        Ok(())
    }
}

/// Normalization needs one positive, finite std (and one mean) per channel.
fn validate_normalization(norm: &Normalization, channels: usize) -> Result<(), String> {
    if norm.mean.len() != channels || norm.std.len() != channels {
        return Err(format!(
            "normalization: mean and std need {channels} values (one per channel)"
        ));
    }
    if norm.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err("normalization.std values must be > 0".into());
    }
    Ok(())
}

/// The surrogate's own terms: nominal n, tail map and calibration (its
/// weights are checked with the base's).
fn validate_surrogate(s: &SurrogateSpec) -> Result<(), String> {
    if s.nominal_n == 0 {
        return Err("surrogate.nominal_n must be at least 1".into());
    }
    if let Some(t) = &s.tail_map {
        t.validate()?;
    }
    if let Some(c) = &s.calibration {
        validate_calibration(c)?;
    }
    Ok(())
}

fn validate_calibration(c: &Calibration) -> Result<(), String> {
    if !(c.delta > 0.0 && c.delta < 1.0 && c.q.is_finite()) {
        return Err(format!(
            "surrogate.calibration: delta must be in (0, 1) and q finite, got {} and {}",
            c.delta, c.q
        ));
    }
    if c.m == 0 || c.rank == 0 || c.rank > c.m || c.n == 0 || c.n0 == 0 {
        return Err("surrogate.calibration: m, rank (<= m), n and n0 must be at least 1".into());
    }
    if let Some(t) = c
        .margin_threshold
        .filter(|&t| !crate::smoothing::margin_threshold_ok(t))
    {
        return Err(format!(
            "surrogate.calibration.margin_threshold: need a finite z within +-{}, got {t}",
            crate::smoothing::MAX_MARGIN_THRESHOLD
        ));
    }
    if let crate::smoothing::RankRule::TrainingConditional { gamma } = c.rank_rule {
        if !(gamma > 0.0 && gamma < 1.0) {
            return Err(format!(
                "surrogate.calibration.rank_rule: gamma must be in (0, 1), got {gamma}"
            ));
        }
    }
    if !c.bins.is_empty() {
        validate_calibration_bins(c)?;
    }
    Ok(())
}

/// Mondrian bins: increasing edges, the last bin open, finite q, ranks
/// within each bin's m, and the bins' m adding up to the calibration's.
fn validate_calibration_bins(c: &Calibration) -> Result<(), String> {
    let edges: Vec<f64> = c.bins.iter().filter_map(|b| b.upper).collect();
    let qs: Vec<f64> = c.bins.iter().map(|b| b.q).collect();
    let last_open = c.bins.last().is_some_and(|b| b.upper.is_none());
    let counted: usize = c.bins.iter().map(|b| b.m).sum();
    let ranks_ok = c.bins.iter().all(|b| b.rank >= 1 && b.rank <= b.m);
    if !last_open
        || edges.len() + 1 != c.bins.len()
        || counted != c.m
        || !ranks_ok
        || qs.iter().any(|q| !q.is_finite())
        || crate::smoothing::MondrianBins::new(&edges, &qs).is_err()
    {
        return Err(
            "surrogate.calibration.bins: need increasing upper edges inside (0, 1) \
             on every bin but the last, finite q, 1 <= rank <= m per bin, and the bins' m \
             summing to m"
                .into(),
        );
    }
    Ok(())
}

/// A network's weights section (`base` or `surrogate`): a file, and an
/// architecture for safetensors.
fn validate_weights(section: &str, spec: &BaseSpec) -> Result<(), String> {
    if spec.format == WeightsFormat::Safetensors && spec.arch.is_none() {
        return Err(format!(
            "{section}.arch is required when {section}.format = \"safetensors\""
        ));
    }
    if spec.file.is_empty() {
        return Err(format!("{section}.file is empty"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_map_scales_the_miss_mass_by_its_bin_and_keeps_a_distribution() {
        let map = TailMap {
            edges: vec![0.0, 0.01, 0.1],
            ratios: vec![0.5, 2.0, 1.5],
            inputs: vec![1, 1, 1],
            split: crate::data::Split::Test,
            counts_n: 10_000,
            inputs_file: "tail_map_inputs.json".into(),
            surrogate_fnv1a: None,
        };
        assert!(map.validate().is_ok());
        // Miss 0.004 is in the first bin: halved, the others in proportion.
        let mut p = vec![0.001, 0.996, 0.003];
        map.apply(&mut p);
        assert!((p[1] - 0.998).abs() < 1e-12 && (p[0] - 0.0005).abs() < 1e-12);
        assert!((p[2] - 0.0015).abs() < 1e-12);
        // Miss 0.05 is in the second: doubled.
        let mut p = vec![0.95, 0.03, 0.02];
        map.apply(&mut p);
        assert!((p[0] - 0.9).abs() < 1e-12 && (p[1] - 0.06).abs() < 1e-12);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // A ratio that would hand the lead to the runner-up stops at a tie.
        let mut p = vec![0.52, 0.46, 0.02];
        map.apply(&mut p);
        assert!((p[0] - p[1]).abs() < 1e-12 && p[0] > p[2], "{p:?}");
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // An edge belongs to the bin above it.
        assert_eq!(map.ratio(0.01), 2.0);
        assert_eq!(map.ratio(0.5), 1.5);
        let broken = TailMap {
            edges: vec![0.0, 0.2, 0.1],
            ..map.clone()
        };
        assert!(broken.validate().is_err());
    }

    fn sample(dir: &Path) -> Bundle {
        Bundle {
            name: "t".into(),
            version: "1".into(),
            input_shape: [1, 28, 28],
            labels: (0..10).map(|i| format!("c{i}")).collect(),
            normalization: Some(Normalization {
                mean: vec![0.5],
                std: vec![0.25],
            }),
            noise: crate::smoothing::Noise::Gaussian { sigma: 0.25 },
            base: BaseSpec {
                format: WeightsFormat::Safetensors,
                file: "base.safetensors".into(),
                arch: Some("small-cnn".into()),
            },
            provenance: Provenance {
                dataset: Some(crate::data::DatasetKind::FashionMnist.into()),
                epochs: Some(3),
                ..Default::default()
            },
            surrogate: Some(SurrogateSpec {
                model: BaseSpec {
                    format: WeightsFormat::Safetensors,
                    file: "surrogate.safetensors".into(),
                    arch: Some("small-cnn".into()),
                },
                nominal_n: 100_000,
                training: Some(SurrogateTraining {
                    loss: "js".into(),
                    val_mean_js: 0.01,
                    ..Default::default()
                }),
                tail_map: Some(TailMap {
                    edges: vec![0.0, 1e-4, 1e-3],
                    ratios: vec![0.5, 0.8, 1.1],
                    inputs: vec![10, 20, 30],
                    split: crate::data::Split::Test,
                    counts_n: 10_000,
                    inputs_file: "tail_map_inputs.json".into(),
                    surrogate_fnv1a: Some("0123456789abcdef".into()),
                }),
                calibration: Some(Calibration {
                    delta: 0.05,
                    score: crate::smoothing::ConformalScore::LogMiss,
                    q: 0.0123,
                    m: 200,
                    rank: 191,
                    n: 100_000,
                    n0: 100,
                    split: crate::data::Split::Test,
                    inputs_file: "calibration_inputs.json".into(),
                    seed: 0,
                    rank_rule: crate::smoothing::RankRule::TrainingConditional { gamma: 0.05 },
                    bins: vec![
                        CalibrationBin {
                            upper: Some(0.99),
                            q: 0.2,
                            m: 120,
                            rank: 115,
                        },
                        CalibrationBin {
                            upper: None,
                            q: 0.1,
                            m: 80,
                            rank: 77,
                        },
                    ],
                    margin_threshold: Some(2.5),
                    surrogate_fnv1a: Some("0123456789abcdef".into()),
                }),
            }),
            dir: dir.to_path_buf(),
        }
    }

    #[test]
    fn a_tail_map_or_calibration_of_another_surrogate_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let spec = sample(dir.path()).surrogate.unwrap();
        // Both record 0123456789abcdef (the sample's).
        assert!(spec.check_measured("0123456789abcdef").is_ok());
        let err = spec.check_measured("fedcba9876543210").unwrap_err();
        assert!(
            err.contains("surrogate.tail_map") && err.contains("fit-tail-map"),
            "{err}"
        );
        assert!(
            err.contains("0123456789abcdef") && err.contains("fedcba9876543210"),
            "{err}"
        );
        let mut spec = spec;
        spec.tail_map.as_mut().unwrap().surrogate_fnv1a = None;
        let err = spec.check_measured("fedcba9876543210").unwrap_err();
        assert!(
            err.contains("surrogate.calibration") && err.contains("recalibrate"),
            "{err}"
        );
        // Older bundles record no surrogate: nothing to compare.
        spec.calibration.as_mut().unwrap().surrogate_fnv1a = None;
        assert!(spec.check_measured("fedcba9876543210").is_ok());
    }

    #[test]
    fn round_trips_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        let b = sample(dir.path());
        b.save().unwrap();
        let text = std::fs::read_to_string(dir.path().join(MANIFEST)).unwrap();
        assert!(text.contains("dataset = \"fashion-mnist\""), "{text}");
        assert_eq!(Bundle::load(dir.path()).unwrap(), b);

        let mut bad = sample(dir.path());
        bad.normalization = Some(Normalization {
            mean: vec![0.5, 0.5],
            std: vec![0.25],
        });
        assert!(matches!(bad.save(), Err(BundleError::Invalid { .. })));
        let mut bad = sample(dir.path());
        bad.noise = crate::smoothing::Noise::Gaussian { sigma: -1.0 };
        assert!(bad.save().unwrap_err().to_string().contains("sigma"));
        let mut bad = sample(dir.path());
        if let Some(c) = bad.surrogate.as_mut().and_then(|s| s.calibration.as_mut()) {
            c.margin_threshold = Some(f64::INFINITY);
        }
        assert!(bad
            .save()
            .unwrap_err()
            .to_string()
            .contains("margin_threshold"));

        std::fs::write(dir.path().join(MANIFEST), "name = 3").unwrap();
        let err = Bundle::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("model.toml"), "{err}");
    }
}
