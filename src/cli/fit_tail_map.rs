//! `smoothcert fit-tail-map`.
use super::args::DeviceArgs;
use anyhow::{Context, Result};
use smoothcert::pipeline::tail_map;
use std::path::PathBuf;

/// Recalibrates the surrogate's tail (its miss mass, binned) on Monte Carlo counts
/// of inputs it never trained on; drops a calibration, which measured it without.
#[derive(clap::Args, Debug)]
pub struct FitTailMapArgs {
    #[arg(long)]
    bundle: PathBuf,
    /// Counts of held-out inputs (shards of one run are joined).
    #[arg(long, required = true, num_args = 1..)]
    counts: Vec<PathBuf>,
    /// Sparser bins are merged into their neighbour.
    #[arg(long, default_value_t = tail_map::DEFAULT_MIN_INPUTS)]
    min_inputs: usize,
    /// Forward batch; default: the device's (32 on a CPU, 4096 on a GPU).
    #[arg(long)]
    batch: Option<i64>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

impl FitTailMapArgs {
    pub fn run(self) -> Result<()> {
        let device = self.device.device()?;
        let summary = tail_map::fit_tail_map(&tail_map::FitTailMapOptions {
            bundle: self.bundle.clone(),
            counts: self.counts,
            min_inputs: self.min_inputs,
            batch: super::args::forward_batch(self.batch, device, &self.bundle),
            data_dir: self.data_dir,
            device,
        })
        .context("fit-tail-map failed")?;
        println!(
            "{}: tail map fitted on {} {} inputs at N = {}; mean |log error| of the miss {:.3} -> {:.3} \
             ({:.3} cross-fitted){}",
            self.bundle.display(),
            summary.inputs,
            summary.split,
            summary.counts_n,
            summary.log_error_before,
            summary.log_error_after,
            summary.log_error_cross_fitted,
            if summary.dropped_calibration {
                "; the calibration was dropped: run calibrate again"
            } else {
                ""
            }
        );
        for b in &summary.bins {
            println!(
                "  miss from {:.2e}: {:>5} inputs, predicted {:.2e}, observed {:.2e}, ratio {:.3}",
                b.low, b.inputs, b.mean_predicted_miss, b.mean_observed_miss, b.ratio
            );
        }
        Ok(())
    }
}
