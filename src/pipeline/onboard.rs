//! `import`: a bundle from a user's TorchScript classifier. The module is
//! loaded and checked before anything is written: it must take
//! [B, C, H, W] pixels in [0, 1] (normalization inside the module, or given
//! here and applied before it), return [B, classes] finite logits with one
//! class per label, and give the same logits twice in eval mode. Given an
//! image folder, its test split's clean and noisy accuracy go into the
//! bundle. The bundle is assembled in a temporary folder and renamed into
//! place, so a failed import leaves nothing behind.
use super::PipelineError;
use crate::data::{self, DatasetSource, Split};
use crate::model::{BaseSpec, Bundle, Classifier, Normalization, Provenance, WeightsFormat};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Images per forward pass when measuring the accuracies.
const ACCURACY_CHUNK: usize = 128;

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub model: PathBuf,
    pub out: PathBuf,
    /// The name requests use; default: the output folder's name.
    pub name: Option<String>,
    pub labels: Vec<String>,
    pub shape: [usize; 3],
    /// The noise the classifier was trained for (and certificates use).
    pub noise: crate::smoothing::Noise,
    pub normalization: Option<Normalization>,
    /// The user's images (an image folder or manifests): recorded in the
    /// bundle for every later pipeline step; its test split measures the
    /// clean and noisy accuracy.
    pub dataset: Option<DatasetSource>,
    /// At most this many test images for the accuracies.
    pub max_images: usize,
    pub seed: u64,
    pub device: Device,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    pub bundle: PathBuf,
    pub classes: usize,
    pub input_shape: [usize; 3],
    pub images: usize,
    pub clean_accuracy: Option<f64>,
    pub noisy_accuracy: Option<f64>,
}

pub fn import_torchscript(opts: &ImportOptions) -> Result<ImportSummary, PipelineError> {
    let invalid = |m: String| PipelineError::Invalid(m);
    if opts.labels.len() < 2 {
        return Err(invalid(
            "--labels: a classifier needs at least two classes".into(),
        ));
    }
    if opts.out.join(crate::model::MANIFEST).exists() {
        return Err(invalid(format!(
            "{} is already a bundle; choose another --out",
            opts.out.display()
        )));
    }
    // --out must not exist, or be an empty folder: checked before any work.
    let out_is_empty_dir = match std::fs::read_dir(&opts.out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(invalid(format!(
                    "{} is not empty; --out must not exist or be an empty folder",
                    opts.out.display()
                )));
            }
            true
        }
        Err(_) if opts.out.exists() => {
            return Err(invalid(format!(
                "{} is not a folder; --out must not exist or be an empty folder",
                opts.out.display()
            )))
        }
        Err(_) => false,
    };
    if !opts.model.is_file() {
        return Err(invalid(format!("{}: no such file", opts.model.display())));
    }
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => opts
            .out
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| invalid("--name: the output folder has no usable name".into()))?,
    };
    check_module(&opts.model, opts.shape, opts.labels.len(), opts.device)?;

    let staging = staging_dir(&opts.out);
    std::fs::create_dir_all(&staging).map_err(super::io_err(&staging))?;
    let placed = assemble(opts, &name, &staging).and_then(|summary| {
        if out_is_empty_dir {
            std::fs::remove_dir(&opts.out).map_err(super::io_err(&opts.out))?;
        }
        std::fs::rename(&staging, &opts.out).map_err(super::io_err(&opts.out))?;
        Ok(summary)
    });
    // Whatever failed, nothing half-made stays behind.
    let _ = std::fs::remove_dir_all(&staging);
    placed.map(|mut s| {
        s.bundle = opts.out.clone();
        s
    })
}

/// A staging folder beside `out`, of this process alone.
fn staging_dir(out: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(out.file_name().unwrap_or_default());
    name.push(format!(".importing-{}", std::process::id()));
    out.with_file_name(name)
}

/// The module's contract, checked on the raw module (before normalization
/// is known to be right): loads as TorchScript, takes [2, C, H, W], returns
/// [2, classes] finite logits, and does so deterministically.
fn check_module(
    path: &Path,
    shape: [usize; 3],
    classes: usize,
    device: Device,
) -> Result<(), PipelineError> {
    let invalid = |m: String| PipelineError::Invalid(format!("{}: {m}", path.display()));
    let mut module = tch::CModule::load_on_device(path, device)
        .map_err(|e| invalid(format!("not a TorchScript module ({e})")))?;
    module.set_eval();
    let [c, h, w] = shape.map(|d| d as i64);
    let x = {
        let _rng = crate::model::rng_lock();
        tch::manual_seed(0);
        Tensor::rand([2, c, h, w], (Kind::Float, device))
    };
    let run = |x: &Tensor| {
        let _guard = tch::no_grad_guard();
        module.forward_ts(&[x.shallow_clone()])
    };
    let y = run(&x).map_err(|e| {
        invalid(format!(
            "does not take inputs of shape [B, C, H, W] = [2, {c}, {h}, {w}]: {}",
            first_line(&e.to_string())
        ))
    })?;
    if y.size() != [2, classes as i64] {
        return Err(invalid(format!(
            "returns {:?} for a batch of 2, but {classes} labels need [2, {classes}] logits",
            y.size()
        )));
    }
    let finite = y.isfinite().all().int64_value(&[]) == 1;
    if !finite {
        return Err(invalid("returns logits that are not finite".into()));
    }
    let again = run(&x).map_err(|e| invalid(first_line(&e.to_string()).to_string()))?;
    // A tolerance, not equality: GPU kernels need not be bitwise repeatable.
    if !y.allclose(&again, 1e-5, 1e-5, false) {
        return Err(invalid(
            "gives different logits for the same input in eval mode (dropout or other \
             randomness left on?); export it after model.eval()"
                .into(),
        ));
    }
    Ok(())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

fn assemble(opts: &ImportOptions, name: &str, dir: &Path) -> Result<ImportSummary, PipelineError> {
    let base_file = "base.pt";
    std::fs::copy(&opts.model, dir.join(base_file)).map_err(super::io_err(&opts.model))?;
    let mut bundle = Bundle {
        name: name.to_string(),
        version: "1".into(),
        input_shape: opts.shape,
        labels: opts.labels.clone(),
        normalization: opts.normalization.clone(),
        noise: opts.noise,
        base: BaseSpec {
            format: WeightsFormat::Torchscript,
            file: base_file.into(),
            arch: None,
        },
        provenance: Provenance {
            created_by: Some(format!(
                "smoothcert import of {}",
                opts.model.file_name().unwrap_or_default().to_string_lossy()
            )),
            ..Default::default()
        },
        surrogate: None,
        dir: dir.to_path_buf(),
    };
    // Validates shape, labels, sigma and normalization.
    bundle.save()?;
    let model = Classifier::load(&bundle, opts.device)?;
    let (mut clean, mut noisy, mut images) = (None, None, 0);
    if let Some(source) = &opts.dataset {
        let source = source.clone().absolute()?;
        // An image folder's sorted class names must be the labels (a label
        // is a logit index); the load checks that.
        let ds = source.load(Split::Test, opts.shape, &opts.labels, None)?;
        bundle.provenance.dataset = Some(source);
        let (c, n, m) = accuracies(&model, &ds, opts.max_images, opts.noise, opts.seed)?;
        clean = Some(c);
        noisy = Some(n);
        images = m;
        bundle.provenance.clean_test_accuracy = clean;
        bundle.provenance.noisy_test_accuracy = noisy;
        bundle.save()?;
    }
    Ok(ImportSummary {
        bundle: dir.to_path_buf(),
        classes: opts.labels.len(),
        input_shape: opts.shape,
        images,
        clean_accuracy: clean,
        noisy_accuracy: noisy,
    })
}

/// Clean and noisy (one draw of the noise per image, seeded) top-1 accuracy on
/// at most `max` images spread evenly over the split.
fn accuracies(
    model: &Classifier,
    ds: &data::Dataset,
    max: usize,
    noise: crate::smoothing::Noise,
    seed: u64,
) -> Result<(f64, f64, usize), PipelineError> {
    let step = ds.len().div_ceil(max.max(1)).max(1);
    let idx: Vec<usize> = (0..ds.len()).step_by(step).collect();
    // In chunks, so that large images never need one huge forward pass.
    let (mut clean, mut noisy) = (0i64, 0i64);
    for (chunk_no, chunk) in idx.chunks(ACCURACY_CHUNK).enumerate() {
        let x = super::images_tensor(ds, chunk, model.device());
        let noise = {
            let _rng = crate::model::rng_lock();
            tch::manual_seed(seed.wrapping_add(chunk_no as u64) as i64);
            crate::model::noise::draw(noise, &x.size(), model.device())?
        };
        let labels = Tensor::from_slice(&chunk.iter().map(|&i| ds.labels[i]).collect::<Vec<_>>())
            .to_device(model.device());
        let right = |logits: Tensor| -> i64 {
            logits
                .argmax(1, false)
                .eq_tensor(&labels)
                .sum(Kind::Int64)
                .int64_value(&[])
        };
        clean += right(model.logits(&x)?);
        noisy += right(model.logits(&(&x + noise))?);
    }
    let m = idx.len().max(1) as f64;
    Ok((clean as f64 / m, noisy as f64 / m, idx.len()))
}
