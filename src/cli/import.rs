//! `smoothcert import`.
use super::args::{DeviceArgs, NoiseArgs};
use anyhow::{Context, Result};
use smoothcert::data::{self, DatasetSource, Split};
use smoothcert::model::Normalization;
use smoothcert::pipeline::onboard;
use std::path::PathBuf;

/// A bundle from your TorchScript classifier: checks that the module takes
/// [B, C, H, W] pixels in [0, 1] and returns [B, classes] finite,
/// deterministic logits, and writes model.toml. Given your images
/// (--image-folder, or --train-manifest and --test-manifest), the bundle
/// records them for every later step (`smoothcert pipeline`, certify) and
/// their test split's clean and noisy accuracy.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The TorchScript file (torch.jit.script or torch.jit.trace, then .save).
    #[arg(long)]
    torchscript: PathBuf,
    /// The bundle folder to create (must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
    /// The name requests use; default: the folder's name.
    #[arg(long)]
    name: Option<String>,
    /// Class names in logit order: a comma list, or @FILE with one per line.
    /// Default with --image-folder: its sorted class folder names, the order
    /// torchvision's ImageFolder gives the labels.
    #[arg(long, required_unless_present = "image_folder")]
    labels: Option<String>,
    /// C,H,W of one input, e.g. 3,32,32.
    #[arg(long, value_delimiter = ',', required = true)]
    shape: Vec<usize>,
    /// The noise the base classifier was trained for (and certificates use).
    #[command(flatten)]
    noise: NoiseArgs,
    /// Per-channel mean and std applied before the module (leave out when the
    /// module normalizes itself).
    #[arg(long, value_delimiter = ',', requires = "normalize_std")]
    normalize_mean: Option<Vec<f64>>,
    #[arg(long, value_delimiter = ',', requires = "normalize_mean")]
    normalize_std: Option<Vec<f64>>,
    /// An image folder: train/ and test/, one folder per class, PNG or JPEG
    /// files at exactly the input shape.
    #[arg(long, conflicts_with_all = ["train_manifest", "test_manifest"])]
    image_folder: Option<PathBuf>,
    /// A manifest of the training images: one `path label` per line, paths
    /// relative to the manifest, labels as class names or indices.
    #[arg(long, requires = "test_manifest")]
    train_manifest: Option<PathBuf>,
    /// The test images' manifest (held-out counts, calibration, evaluation).
    #[arg(long, requires = "train_manifest")]
    test_manifest: Option<PathBuf>,
    #[arg(long, default_value_t = 2000)]
    max_images: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: DeviceArgs,
}

impl ImportArgs {
    pub fn run(self) -> Result<()> {
        let shape: [usize; 3] = self
            .shape
            .clone()
            .try_into()
            .map_err(|_| anyhow::anyhow!("--shape takes C,H,W"))?;
        let dataset = match (self.image_folder, self.train_manifest, self.test_manifest) {
            (Some(image_folder), _, _) => Some(DatasetSource::ImageFolder { image_folder }),
            (None, Some(train_manifest), Some(test_manifest)) => {
                Some(DatasetSource::manifests(train_manifest, test_manifest)?)
            }
            _ => None,
        };
        let labels: Vec<String> = match (self.labels.as_deref(), &dataset) {
            (Some(list), _) => match list.strip_prefix('@') {
                Some(file) => std::fs::read_to_string(file)
                    .with_context(|| format!("--labels: reading {file}"))?
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect(),
                None => list.split(',').map(|l| l.trim().to_string()).collect(),
            },
            (None, Some(DatasetSource::ImageFolder { image_folder })) => {
                data::image_folder_classes(image_folder, Split::Test)
                    .context("--labels from the image folder")?
            }
            _ => anyhow::bail!("--labels is needed without --image-folder"),
        };
        let s = onboard::import_torchscript(&onboard::ImportOptions {
            model: self.torchscript,
            out: self.out,
            name: self.name,
            labels,
            shape,
            noise: self.noise.noise(None)?,
            normalization: self
                .normalize_mean
                .zip(self.normalize_std)
                .map(|(mean, std)| Normalization { mean, std }),
            dataset,
            max_images: self.max_images,
            seed: self.seed,
            device: self.device.device()?,
        })
        .context("import failed")?;
        println!(
            "{}: {} classes, input {:?}{}",
            s.bundle.display(),
            s.classes,
            s.input_shape,
            match (s.clean_accuracy, s.noisy_accuracy) {
                (Some(c), Some(n)) => format!(
                    "; on {} test images: clean accuracy {:.1}%, noisy {:.1}%",
                    s.images,
                    100.0 * c,
                    100.0 * n
                ),
                _ => String::new(),
            }
        );
        Ok(())
    }
}
