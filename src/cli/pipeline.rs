//! `smoothcert pipeline`.
use super::args::{arch_parser, DeviceArgs};
use anyhow::{Context, Result};
use smoothcert::data::Split;
use smoothcert::model::Arch;
use smoothcert::pipeline::counts::Shard;
use smoothcert::pipeline::stages::{self, CountsRole, EvalRole, StageStatus};
use smoothcert::smoothing::ConformalScore;
use std::path::PathBuf;

/// From a bundle with a base classifier (`import` or `train-base`) to a
/// served, calibrated surrogate and a held-out report, in one resumable
/// command: train counts, surrogate training, tail-map counts and fit,
/// calibration counts and calibration, then Monte Carlo, surrogate,
/// calibrated and AUTO certificates on evaluation images and their report.
/// Finished stages are skipped and an interrupted one resumes, so rerun the
/// same command after a stop. The test split is shared by index: by default
/// images with i % 4 == 1 fit the tail map, i % 4 == 2 calibrate, i % 4 == 0
/// are the evaluation (i % 4 == 3 stay free for select-calibration).
#[derive(clap::Args, Debug)]
pub struct PipelineArgs {
    #[arg(long)]
    bundle: PathBuf,
    /// Where the counts go (default: counts/<bundle folder name>).
    #[arg(long)]
    counts_dir: Option<PathBuf>,
    /// Where the evaluation, report and pipeline_summary.json go (default:
    /// <bundle>/reports/n<nominal-n>).
    #[arg(long)]
    reports_dir: Option<PathBuf>,
    /// Relocates the bundle's dataset (a built-in dataset's folder, an image
    /// folder's root, or the manifests' folder).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The sample count the surrogate's estimates stand in for.
    #[arg(long, default_value_t = 100_000)]
    nominal_n: u64,

    /// Monte Carlo samples per training image (the surrogate's targets).
    #[arg(long, default_value_t = 10_000)]
    train_n: u64,
    #[arg(long, default_value_t = 1)]
    train_skip: usize,
    #[arg(long, default_value_t = 8)]
    train_shards: usize,
    /// Which train shards to sample and train on (default: all).
    #[arg(long, value_delimiter = ',')]
    train_use: Vec<usize>,

    /// Fit no tail map (the surrogate's raw miss mass is calibrated as it is).
    #[arg(long)]
    no_tail_map: bool,
    #[arg(long, default_value_t = 10_000)]
    tail_n: u64,
    #[arg(long, default_value_t = 1)]
    tail_skip: usize,
    #[arg(long, default_value_t = 4)]
    tail_shards: usize,
    #[arg(long, value_delimiter = ',', default_value = "1")]
    tail_use: Vec<usize>,

    /// Default: --nominal-n, the N calibrated estimates stand in for.
    #[arg(long)]
    calibration_n: Option<u64>,
    #[arg(long, default_value_t = 1)]
    calibration_skip: usize,
    #[arg(long, default_value_t = 4)]
    calibration_shards: usize,
    #[arg(long, value_delimiter = ',', default_value = "2")]
    calibration_use: Vec<usize>,

    /// The evaluation: every --eval-skip-th test image from --eval-offset.
    #[arg(long, default_value_t = 4)]
    eval_skip: usize,
    #[arg(long, default_value_t = 0)]
    eval_offset: usize,
    #[arg(long)]
    eval_max: Option<usize>,
    /// Monte Carlo's N in the evaluation (default: --nominal-n).
    #[arg(long)]
    eval_n: Option<u64>,

    /// Inputs per count chunk: the most an interruption loses.
    #[arg(long, default_value_t = 50)]
    chunk: usize,
    #[arg(long, default_value = "small-cnn", value_parser = arch_parser())]
    arch: Arch,
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    #[arg(long, value_enum, default_value = "p-gap")]
    score: ConformalScore,
    #[arg(long, default_value_t = 0.05)]
    delta: f64,
    #[arg(long, default_value_t = 100)]
    n0: u64,
    #[arg(long, default_value_t = 0.001)]
    alpha: f64,
    #[arg(long, value_delimiter = ',', default_value = "0,0.25,0.5,0.75")]
    radii: Vec<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Forward batch; default: the device's (32 on a CPU, 4096 on a GPU).
    #[arg(long)]
    batch: Option<i64>,
    /// Stop after this stage (e.g. train-surrogate); a later run goes on.
    #[arg(long)]
    until: Option<String>,
    /// Sample only worker I of K's share of the counts files, then stop (a
    /// Kubernetes Indexed Job's pod); a run without it does the rest.
    #[arg(long, value_name = "I/K", value_parser = |s: &str| s.parse::<Shard>())]
    counts_worker: Option<Shard>,
    #[command(flatten)]
    device: DeviceArgs,
}

impl PipelineArgs {
    pub fn run(self) -> Result<()> {
        let bundle_name = self
            .bundle
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("--bundle names no folder")?;
        let train_use = if self.train_use.is_empty() {
            (0..self.train_shards).collect()
        } else {
            self.train_use
        };
        let opts = stages::PipelineOptions {
            counts_dir: self
                .counts_dir
                .unwrap_or_else(|| PathBuf::from("counts").join(&bundle_name)),
            reports_dir: self.reports_dir.unwrap_or_else(|| {
                self.bundle
                    .join("reports")
                    .join(format!("n{}", self.nominal_n))
            }),
            bundle: self.bundle,
            data_dir: self.data_dir,
            device: self.device.device()?,
            batch: self.batch,
            seed: self.seed,
            nominal_n: self.nominal_n,
            train: CountsRole {
                split: Split::Train,
                n: self.train_n,
                skip: self.train_skip,
                shards: self.train_shards,
                used: train_use,
            },
            tail: (!self.no_tail_map).then_some(CountsRole {
                split: Split::Test,
                n: self.tail_n,
                skip: self.tail_skip,
                shards: self.tail_shards,
                used: self.tail_use,
            }),
            calibration: CountsRole {
                split: Split::Test,
                n: self.calibration_n.unwrap_or(self.nominal_n),
                skip: self.calibration_skip,
                shards: self.calibration_shards,
                used: self.calibration_use,
            },
            eval: EvalRole {
                offset: self.eval_offset,
                skip: self.eval_skip,
                max: self.eval_max,
                n: self.eval_n.unwrap_or(self.nominal_n),
            },
            chunk: self.chunk,
            arch: self.arch,
            epochs: self.epochs,
            score: self.score,
            delta: self.delta,
            n0: self.n0,
            alpha: self.alpha,
            radii: self.radii,
            until: self.until,
            counts_worker: self.counts_worker,
            show_progress: true,
        };
        let s = stages::run_pipeline(&opts).context("pipeline failed")?;
        println!("| stage | this run | seconds this run | seconds in all |");
        println!("|---|---|---:|---:|");
        for st in &s.stages {
            let status = match st.status {
                StageStatus::Ran => "ran",
                StageStatus::DoneBefore => "done before",
                StageStatus::NotRun => "not run",
            };
            println!(
                "| {} | {status} | {:.1} | {:.1} |",
                st.stage, st.seconds_this_run, st.seconds_total
            );
        }
        println!(
            "\n{:.1} s this run, {:.1} s over all runs{}",
            s.wall_seconds_this_run,
            s.wall_seconds_total,
            if s.finished {
                format!(
                    "; summary in {}",
                    s.reports_dir.join(stages::SUMMARY_FILE).display()
                )
            } else {
                String::new()
            }
        );
        if let Some(report) = &s.report {
            println!("\n{report}");
        }
        Ok(())
    }
}
