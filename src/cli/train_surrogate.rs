//! `smoothcert train-surrogate`.
use super::args::{arch_parser, DeviceArgs};
use anyhow::{Context, Result};
use smoothcert::model::Arch;
use smoothcert::pipeline::surrogate;
use std::path::PathBuf;

/// Train the Accelerated Smoothing surrogate on Monte Carlo counts; writes it into the bundle.
#[derive(clap::Args, Debug)]
pub struct TrainSurrogateArgs {
    #[arg(long)]
    bundle: PathBuf,
    /// Counts file(s) from sample-counts (shards of one run are joined).
    #[arg(long, required = true, num_args = 1..)]
    counts: Vec<PathBuf>,
    #[arg(long, default_value = "small-cnn", value_parser = arch_parser())]
    arch: Arch,
    #[arg(long, value_enum, default_value = "js")]
    loss: surrogate::SurrogateLoss,
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// The sample count the surrogate stands in for (default 100000).
    #[arg(long)]
    nominal_n: Option<u64>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: DeviceArgs,
    #[arg(long)]
    pause_after: Option<usize>,
    /// Start from the base classifier's weights (same architecture).
    #[arg(long)]
    init_from_base: bool,
}

impl TrainSurrogateArgs {
    pub fn run(self) -> Result<()> {
        let epochs = self.epochs;
        let opts = surrogate::TrainSurrogateOptions {
            bundle: self.bundle,
            counts: self.counts,
            arch: self.arch,
            loss: self.loss,
            epochs,
            batch_size: self.batch_size,
            learning_rate: self.lr,
            val_fraction: self.val_fraction,
            nominal_n: self.nominal_n,
            data_dir: self.data_dir,
            seed: self.seed,
            device: self.device.device()?,
            pause_after: self.pause_after,
            init_from_base: self.init_from_base,
            show_progress: true,
        };
        match surrogate::train_surrogate(&opts).context("train-surrogate failed")? {
            surrogate::SurrogateOutcome::Finished(spec) => {
                let t = spec.training.unwrap_or_default();
                println!(
                    "surrogate ({} loss, best epoch {}/{}, nominal N {}): validation mean JS {:.5}, \
                     top-1 agreement {:.2}%, |p_hat[cA] - p_MC[cA]| mean {:.4} p95 {:.4}",
                    t.loss,
                    t.best_epoch,
                    t.epochs,
                    spec.nominal_n,
                    t.val_mean_js,
                    100.0 * t.val_top1_agreement,
                    t.val_mean_abs_err_pa,
                    t.val_p95_abs_err_pa
                );
            }
            surrogate::SurrogateOutcome::Paused { epochs_done } => println!(
                "paused after {epochs_done}/{epochs} epochs; rerun the same command to continue"
            ),
        }
        Ok(())
    }
}
