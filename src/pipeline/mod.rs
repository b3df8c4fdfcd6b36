//! The offline pipeline: `train-base`, `sample-counts`, `train-surrogate`,
//! `fit-tail-map`, `calibrate`, `certify`, `report`, `bench`.
pub mod calibrate;
pub mod certify;
pub mod counts;
pub mod onboard;
mod optim;
pub mod report;
pub mod run;
pub mod select;
pub mod steps;
pub mod surrogate;
pub mod tail_map;
pub mod train;
pub mod tsv;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Bundle(#[from] crate::model::BundleError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Batch(#[from] crate::batcher::BatchError),
    #[error(transparent)]
    Start(#[from] crate::batcher::StartError),
    #[error(transparent)]
    Tsv(#[from] tsv::TsvError),
    #[error(transparent)]
    Report(#[from] report::ReportError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl From<tch::TchError> for PipelineError {
    fn from(e: tch::TchError) -> Self {
        PipelineError::Model(e.into())
    }
}

/// A noise as the pipeline's files record it (flattened into counts and run
/// parameters): `sigma` alone for the Gaussian, as every file written before
/// other noises existed has it; `noise_kind` and `lambda` for the others.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NoiseRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda: Option<f64>,
}

impl From<crate::smoothing::Noise> for NoiseRecord {
    fn from(n: crate::smoothing::Noise) -> NoiseRecord {
        use crate::smoothing::Noise;
        match n {
            Noise::Gaussian { sigma } => NoiseRecord {
                noise_kind: None,
                sigma: Some(sigma),
                lambda: None,
            },
            Noise::Uniform { lambda } | Noise::Laplace { lambda } => NoiseRecord {
                noise_kind: Some(n.kind().into()),
                sigma: None,
                lambda: Some(lambda),
            },
        }
    }
}

impl NoiseRecord {
    /// The noise recorded, if the record is whole.
    pub fn noise(&self) -> Option<crate::smoothing::Noise> {
        use crate::smoothing::Noise;
        match (self.noise_kind.as_deref(), self.sigma, self.lambda) {
            (None | Some("gaussian"), Some(sigma), None) => Some(Noise::Gaussian { sigma }),
            (Some("uniform"), None, Some(lambda)) => Some(Noise::Uniform { lambda }),
            (Some("laplace"), None, Some(lambda)) => Some(Noise::Laplace { lambda }),
            _ => None,
        }
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PipelineError + '_ {
    move |source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A bundle, the dataset split it names (or the one in `data_dir`), and the
/// inputs to process: every `skip`-th index from `offset`, at most `max` of them. What
/// certify and sample-counts both start from.
pub(crate) struct Inputs {
    pub bundle: crate::model::Bundle,
    pub source: crate::data::DatasetSource,
    pub dataset: crate::data::Dataset,
    pub indices: Vec<usize>,
}

/// `split` of the dataset a bundle records (`provenance.dataset`), at the
/// bundle's input shape, from `data_dir` or where the bundle says it is.
pub(crate) fn bundle_dataset(
    bundle: &crate::model::Bundle,
    split: crate::data::Split,
    data_dir: Option<&Path>,
) -> Result<(crate::data::DatasetSource, crate::data::Dataset), PipelineError> {
    let source = bundle.provenance.dataset.clone().ok_or_else(|| {
        PipelineError::Invalid(format!(
            "{}: model.toml names no provenance.dataset: add one under [provenance], e.g. \
             dataset = {{ image_folder = \"/abs/path\" }} (an image folder with train/ and test/) \
             or dataset = \"fashion-mnist\"",
            bundle.dir.display()
        ))
    })?;
    let dataset = source.load(split, bundle.input_shape, &bundle.labels, data_dir)?;
    if dataset.shape != bundle.input_shape {
        return Err(PipelineError::Invalid(format!(
            "dataset images are {:?} but the model expects {:?}",
            dataset.shape, bundle.input_shape
        )));
    }
    Ok((source, dataset))
}

pub(crate) fn load_inputs(
    bundle: &Path,
    split: crate::data::Split,
    data_dir: Option<&Path>,
    offset: usize,
    skip: usize,
    max: Option<usize>,
) -> Result<Inputs, PipelineError> {
    if skip == 0 {
        return Err(PipelineError::Invalid("--skip must be at least 1".into()));
    }
    let b = crate::model::Bundle::load(bundle)?;
    let (source, dataset) = bundle_dataset(&b, split, data_dir)?;
    if offset >= dataset.len() {
        return Err(PipelineError::Invalid(format!(
            "--offset {offset} is past the split's {} inputs",
            dataset.len()
        )));
    }
    let indices = (offset..dataset.len())
        .step_by(skip)
        .take(max.unwrap_or(usize::MAX))
        .collect();
    Ok(Inputs {
        bundle: b,
        source,
        dataset,
        indices,
    })
}

/// The dataset's images at `indices` (each below `ds.len()`) as one
/// [B, C, H, W] tensor on `device`.
pub(crate) fn images_tensor(
    ds: &crate::data::Dataset,
    indices: &[usize],
    device: tch::Device,
) -> tch::Tensor {
    let pixels: Vec<f32> = indices
        .iter()
        .flat_map(|&i| ds.image(i).iter().copied())
        .collect();
    let [c, h, w] = ds.shape.map(|d| d as i64);
    tch::Tensor::from_slice(&pixels)
        .view([indices.len() as i64, c, h, w])
        .to_device(device)
}

/// The fingerprint of a bundle's base weights: what counts and certify runs
/// record, so that a retrained base is never mixed with an earlier one.
pub(crate) fn base_fingerprint(bundle: &crate::model::Bundle) -> Result<String, PipelineError> {
    let base = bundle.base_path();
    crate::fsutil::fingerprint(&base).map_err(io_err(&base))
}

/// Fingerprint of the bundle's surrogate file (what a tail map and a
/// calibration record as the surrogate they measured).
pub(crate) fn surrogate_fingerprint(
    bundle: &crate::model::Bundle,
) -> Result<Option<String>, PipelineError> {
    bundle.surrogate_fingerprint().map_err(io_err(&bundle.dir))
}

/// Dataset indices of one split that a bundle file records as used: the
/// inputs a tail map was fitted on or a calibration computed on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InputList {
    pub split: crate::data::Split,
    pub indices: Vec<i64>,
}

impl InputList {
    pub fn read(path: &Path) -> Result<InputList, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        serde_json::from_str(&text)
            .map_err(|e| PipelineError::Invalid(format!("{}: {e}", path.display())))
    }

    /// The list at `path`, or `None` when there is no such file.
    pub fn read_if_any(path: &Path) -> Result<Option<InputList>, PipelineError> {
        if path.exists() {
            Self::read(path).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The first of `indices` (of `split`) this list also holds.
    pub fn first_shared_with(&self, split: crate::data::Split, indices: &[i64]) -> Option<i64> {
        if self.split != split {
            return None;
        }
        let mine: std::collections::HashSet<i64> = self.indices.iter().copied().collect();
        indices.iter().copied().find(|i| mine.contains(i))
    }
}

/// Writes a machine-readable JSON summary atomically.
pub(crate) fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), PipelineError> {
    let text = serde_json::to_vec_pretty(value)
        .map_err(|e| PipelineError::Invalid(format!("serializing {}: {e}", path.display())))?;
    crate::fsutil::write_atomic(path, &text).map_err(io_err(path))
}

/// A progress bar on stderr with rate and ETA, or a hidden one when the
/// caller asked for no progress (tests, quiet runs).
pub(crate) fn progress_bar(len: u64, what: &str, visible: bool) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, ETA {eta}) {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(what.to_string());
    if !visible {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}
