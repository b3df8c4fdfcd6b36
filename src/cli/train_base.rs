//! `smoothcert train-base`.
use super::args::{arch_parser, DeviceArgs, NoiseArgs};
use anyhow::{Context, Result};
use smoothcert::data::DatasetKind;
use smoothcert::model::Arch;
use smoothcert::pipeline::train;
use std::path::PathBuf;

/// Train a base classifier with Gaussian noise augmentation and write a bundle.
#[derive(clap::Args, Debug)]
pub struct TrainBaseArgs {
    #[arg(long, value_enum, ignore_case = true, default_value = "fashion-mnist")]
    dataset: DatasetKind,
    /// Where the dataset files are (default: the dataset's usual place).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value = "small-cnn", value_parser = arch_parser())]
    arch: Arch,
    #[command(flatten)]
    noise: NoiseArgs,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use only the first N training images.
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    device: DeviceArgs,
    /// Bundle name in model.toml.
    #[arg(long)]
    name: Option<String>,
    /// Train at most N epochs now and leave the checkpoint; rerun to continue.
    #[arg(long)]
    pause_after: Option<usize>,
    /// The bundle directory to write (holds the checkpoint while training).
    #[arg(long)]
    out: PathBuf,
}

impl TrainBaseArgs {
    pub fn run(self) -> Result<()> {
        let opts = train::TrainBaseOptions {
            dataset: self.dataset,
            data_dir: self.data_dir,
            arch: self.arch,
            noise: self.noise.noise(Some(0.25))?,
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.lr,
            seed: self.seed,
            device: self.device.device()?,
            limit: self.limit,
            out: self.out,
            name: self.name,
            pause_after: self.pause_after,
            show_progress: true,
        };
        let s = match train::train_base(&opts).context("train-base failed")? {
            train::TrainOutcome::Finished(s) => s,
            train::TrainOutcome::Paused { epochs_done } => {
                println!(
                    "paused after {epochs_done}/{} epochs; rerun the same command to continue",
                    opts.epochs
                );
                return Ok(());
            }
        };
        println!(
            "bundle {}: {} epochs in {:.1} s; test accuracy clean {:.2}%, noisy ({}) {:.2}%",
            s.bundle.display(),
            s.epochs,
            s.training_seconds,
            100.0 * s.clean_test_accuracy,
            s.noise,
            100.0 * s.noisy_test_accuracy
        );
        Ok(())
    }
}
