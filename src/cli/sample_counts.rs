//! `smoothcert sample-counts`.
use super::args::DeviceArgs;
use anyhow::{Context, Result};
use smoothcert::data::Split;
use smoothcert::pipeline::counts;
use std::path::PathBuf;

/// Monte Carlo class counts over N noisy copies of each input (surrogate training data).
#[derive(clap::Args, Debug)]
pub struct SampleCountsArgs {
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long, value_enum, ignore_case = true, default_value = "train")]
    split: Split,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 100_000)]
    n: u64,
    /// Every K-th input.
    #[arg(long, default_value_t = 1)]
    skip: usize,
    /// At most M inputs (before sharding).
    #[arg(long)]
    max: Option<usize>,
    /// i/k: this process's share, the inputs at positions p with p % k == i.
    #[arg(long)]
    shard: Option<counts::Shard>,
    /// Inputs per chunk file, the unit of resumption.
    #[arg(long, default_value_t = 50)]
    chunk: usize,
    /// Forward batch; default: a resumed run's own, else the device's (32
    /// on a CPU, 4096 on a GPU). With the device it decides the noise drawn.
    #[arg(long)]
    batch: Option<i64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also record each input's logit-margin sums (what `train-surrogate
    /// --margin-tail` learns the tail from).
    #[arg(long)]
    margins: bool,
    #[command(flatten)]
    device: DeviceArgs,
    /// Sample at most K chunks now, then stop; rerun to continue.
    #[arg(long)]
    pause_after: Option<usize>,
    /// Output safetensors file (chunks collect in FILE.parts/ until done).
    #[arg(long)]
    out: PathBuf,
}

impl SampleCountsArgs {
    pub fn run(self) -> Result<()> {
        let opts = counts::SampleCountsOptions {
            bundle: self.bundle,
            split: self.split,
            data_dir: self.data_dir,
            n: self.n,
            skip: self.skip,
            max: self.max,
            shard: self.shard,
            chunk: self.chunk,
            batch: self.batch,
            seed: self.seed,
            margins: self.margins,
            device: self.device.device()?,
            out: self.out,
            pause_after: self.pause_after,
            show_progress: true,
        };
        match counts::sample_counts(&opts).context("sample-counts failed")? {
            counts::SampleOutcome::Finished(s) => println!(
                "{}: {} inputs x {} samples ({} chunks, {} resumed); {:.0} noisy passes/s",
                s.out.display(),
                s.inputs,
                s.n,
                s.chunks,
                s.chunks_resumed,
                s.passes_per_second
            ),
            counts::SampleOutcome::Paused {
                chunks_done,
                chunks,
            } => println!(
                "paused with {chunks_done}/{chunks} chunks; rerun the same command to continue"
            ),
        }
        Ok(())
    }
}
