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
    /// Train this built-in architecture from scratch (with --init-from-base:
    /// from a built-in base's weights). Default: a copy of the base itself,
    /// fine-tuned (a TorchScript base's module, saved as TorchScript; a
    /// built-in base's architecture and weights).
    #[arg(long, value_parser = arch_parser())]
    arch: Option<Arch>,
    #[arg(long, value_enum, default_value = "js")]
    loss: surrogate::SurrogateLoss,
    /// Also teach ln(1 - p[cA]) against the counts' margin estimate of the
    /// miss, with this weight (the counts need `sample-counts --margins`);
    /// 0: the loss alone. See docs/PIPELINE.md, "The margin tail".
    #[arg(long, default_value_t = 0.0)]
    margin_tail: f64,
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Default: 128 for inputs up to 3 x 32 x 32, fewer for larger ones (at least 8).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Default: 1e-4 for a fine-tuned TorchScript copy, 1e-3 for a built-in network.
    #[arg(long)]
    lr: Option<f64>,
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
    /// With --arch: start from the base classifier's weights (same architecture).
    #[arg(long, requires = "arch")]
    init_from_base: bool,
}

impl TrainSurrogateArgs {
    pub fn run(self) -> Result<()> {
        let epochs = self.epochs;
        let bundle = smoothcert::model::Bundle::load(&self.bundle)?;
        let init = surrogate::SurrogateInit::choose(&bundle, self.arch, self.init_from_base)?;
        let opts = surrogate::TrainSurrogateOptions {
            bundle: self.bundle,
            counts: self.counts,
            init,
            loss: self.loss,
            margin_tail: self.margin_tail,
            epochs,
            batch_size: self
                .batch_size
                .unwrap_or(surrogate::default_batch_size(bundle.input_shape)),
            learning_rate: self.lr.unwrap_or(init.default_learning_rate()),
            val_fraction: self.val_fraction,
            nominal_n: self.nominal_n,
            data_dir: self.data_dir,
            seed: self.seed,
            device: self.device.device()?,
            pause_after: self.pause_after,
            show_progress: true,
        };
        match surrogate::train_surrogate(&opts).context("train-surrogate failed")? {
            surrogate::SurrogateOutcome::Finished(spec) => {
                let t = spec.training.unwrap_or_default();
                println!(
                    "surrogate ({}, {} loss, best epoch {}/{}, nominal N {}): validation mean JS {:.5}, \
                     top-1 agreement {:.2}%, |p_hat[cA] - p_MC[cA]| mean {:.4} p95 {:.4}",
                    t.init.as_deref().unwrap_or("?"),
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
