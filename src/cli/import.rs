//! `smoothcert import`.
use super::args::DeviceArgs;
use anyhow::{Context, Result};
use smoothcert::model::Normalization;
use smoothcert::pipeline::onboard;
use std::path::PathBuf;

/// A bundle from your TorchScript classifier: checks that the module takes
/// [B, C, H, W] pixels in [0, 1] and returns [B, classes] finite,
/// deterministic logits, writes model.toml, and with --image-folder records
/// the clean and noisy accuracy on its test split.
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
    #[arg(long)]
    labels: String,
    /// C,H,W of one input, e.g. 3,32,32.
    #[arg(long, value_delimiter = ',', num_args = 3)]
    shape: Vec<usize>,
    /// Noise level the base classifier was trained for (and certificates use).
    #[arg(long)]
    sigma: f64,
    /// Per-channel mean and std applied before the module (leave out when the
    /// module normalizes itself).
    #[arg(long, value_delimiter = ',', requires = "normalize_std")]
    normalize_mean: Option<Vec<f64>>,
    #[arg(long, value_delimiter = ',', requires = "normalize_mean")]
    normalize_std: Option<Vec<f64>>,
    /// An image folder (train/ and test/, one folder per class): its test
    /// split's clean and noisy accuracy go into the bundle.
    #[arg(long)]
    image_folder: Option<PathBuf>,
    #[arg(long, default_value_t = 2000)]
    max_images: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: DeviceArgs,
}

impl ImportArgs {
    pub fn run(self) -> Result<()> {
        let labels: Vec<String> = match self.labels.strip_prefix('@') {
            Some(file) => std::fs::read_to_string(file)
                .with_context(|| format!("--labels: reading {file}"))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
            None => self
                .labels
                .split(',')
                .map(|l| l.trim().to_string())
                .collect(),
        };
        let shape: [usize; 3] = self
            .shape
            .clone()
            .try_into()
            .map_err(|_| anyhow::anyhow!("--shape takes C,H,W"))?;
        let s = onboard::import_torchscript(&onboard::ImportOptions {
            model: self.torchscript,
            out: self.out,
            name: self.name,
            labels,
            shape,
            sigma: self.sigma,
            normalization: self
                .normalize_mean
                .zip(self.normalize_std)
                .map(|(mean, std)| Normalization { mean, std }),
            image_folder: self.image_folder,
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
