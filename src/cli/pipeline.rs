//! `smoothcert pipeline`.
use super::args::{arch_parser, DeviceArgs};
use anyhow::{Context, Result};
use smoothcert::data::Split;
use smoothcert::model::{parse_device, Arch};
use smoothcert::pipeline::counts::Shard;
use smoothcert::pipeline::steps::{self, CountsRole, EvalRole, StepStatus};
use smoothcert::smoothing::ConformalScore;
use std::path::PathBuf;

/// From a bundle with a base classifier (`import` or `train-base`) to a
/// served, calibrated surrogate and a held-out report, in one resumable
/// command: train counts, surrogate training, tail-map counts and fit,
/// calibration counts and calibration, then Monte Carlo, surrogate,
/// calibrated and AUTO certificates on evaluation images and their report.
/// Finished steps are skipped and an interrupted one resumes, so rerun the
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

    /// Monte Carlo samples per training image (the surrogate's targets). At
    /// a fixed number of base passes, more images at a smaller N trained a
    /// better fine-tuned copy (docs/PIPELINE.md, "Where the counts budget
    /// goes"), so the default spends them on images.
    #[arg(long, default_value_t = 250)]
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

    /// The calibration's counts are at --nominal-n, the N calibrated
    /// estimates stand in for.
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
    /// The same for the calibration's counts, at the nominal N.
    #[arg(long, default_value_t = 10)]
    calibration_chunk: usize,
    /// Forward batch of count sampling (default: --batch). With
    /// --counts-device it decides the noise each input draws: pin both to
    /// reproduce counts files exactly on another machine.
    #[arg(long)]
    counts_batch: Option<i64>,
    /// Device of count sampling (default: --device).
    #[arg(long)]
    counts_device: Option<String>,
    /// The surrogate: this built-in architecture (from the base's weights when
    /// the base is that architecture, else from scratch). Default: a copy of
    /// the base, fine-tuned (for a TorchScript base, its own module).
    #[arg(long, value_parser = arch_parser())]
    arch: Option<Arch>,
    /// The surrogate's learning rate (default: 1e-4 for a TorchScript copy, 1e-3 otherwise).
    #[arg(long)]
    lr: Option<f64>,
    /// The surrogate's loss: the paper's Jensen-Shannon divergence, or the
    /// soft-label cross-entropy against the normalized counts.
    #[arg(long, value_enum, default_value = "js")]
    loss: smoothcert::pipeline::surrogate::SurrogateLoss,
    /// The margin tail's weight: the training counts record their logit
    /// margins, and the surrogate also learns ln(1 - p[cA]) from them
    /// (docs/PIPELINE.md, "The margin tail"); 0: the loss alone, on counts
    /// without margins.
    #[arg(long, default_value_t = 0.01)]
    margin_tail: f64,
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// The conformal score. probit (radius space) takes sigma * q off every
    /// radius instead of capping them as p-gap does (the shipped bundle's,
    /// which scripts/default-model.sh keeps).
    #[arg(long, value_enum, default_value = "probit")]
    score: ConformalScore,
    /// CALIBRATED's estimate: cA's logit margin over the n0 selection samples
    /// below this z, the surrogate above (see `calibrate --margin-threshold`);
    /// "none" for the surrogate alone.
    #[arg(long, default_value = "2.5")]
    margin_threshold: super::args::MarginThreshold,
    /// AUTO's band for the evaluation (select-calibration chooses one).
    #[command(flatten)]
    auto_band: super::args::AutoBandArgs,
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
    /// Stop after this step (e.g. train-surrogate); a later run goes on.
    #[arg(long)]
    until: Option<String>,
    /// Replace a calibration the bundle holds with other parameters (its
    /// calibrated and AUTO evaluations are redone); without it, that is an error.
    #[arg(long)]
    recalibrate: bool,
    /// Sample only worker I of K's share of the counts files, then stop (a
    /// Kubernetes Indexed Job's pod); a run without it does the rest.
    #[arg(long, value_name = "I/K", value_parser = |s: &str| s.parse::<Shard>())]
    counts_worker: Option<Shard>,
    #[command(flatten)]
    device: DeviceArgs,
}

impl PipelineArgs {
    pub fn run(self) -> Result<()> {
        let opts = self.options()?;
        let s = steps::run_pipeline(&opts).context("pipeline failed")?;
        print_summary(&s);
        Ok(())
    }

    /// The pipeline's options from the command line, with its defaults filled in.
    fn options(self) -> Result<steps::PipelineOptions> {
        let bundle_name = std::path::absolute(&self.bundle)
            .context("--bundle")?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("--bundle names no folder")?;
        let device = self.device.device()?;
        let counts_device = match &self.counts_device {
            Some(d) => parse_device(d)?,
            None => device,
        };
        let (train, tail, calibration, eval) = self.roles();
        Ok(steps::PipelineOptions {
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
            device,
            batch: self.batch,
            counts_batch: self.counts_batch,
            counts_device,
            seed: self.seed,
            nominal_n: self.nominal_n,
            train,
            tail,
            calibration,
            eval,
            chunk: self.chunk,
            calibration_chunk: self.calibration_chunk,
            arch: self.arch,
            learning_rate: self.lr,
            loss: self.loss,
            margin_tail: self.margin_tail,
            epochs: self.epochs,
            score: self.score,
            margin_threshold: self.margin_threshold.0,
            auto_band: self.auto_band.band(),
            delta: self.delta,
            n0: self.n0,
            alpha: self.alpha,
            radii: self.radii,
            until: self.until,
            recalibrate: self.recalibrate,
            counts_worker: self.counts_worker,
            show_progress: true,
        })
    }

    /// The counts of the train, tail-map (none with --no-tail-map) and
    /// calibration roles, and the evaluation's images.
    fn roles(&self) -> (CountsRole, Option<CountsRole>, CountsRole, EvalRole) {
        let train_use = if self.train_use.is_empty() {
            (0..self.train_shards).collect()
        } else {
            self.train_use.clone()
        };
        let train = CountsRole {
            split: Split::Train,
            n: self.train_n,
            skip: self.train_skip,
            shards: self.train_shards,
            used: train_use,
            margins: self.margin_tail > 0.0,
        };
        let tail = (!self.no_tail_map).then(|| CountsRole {
            split: Split::Test,
            n: self.tail_n,
            skip: self.tail_skip,
            shards: self.tail_shards,
            used: self.tail_use.clone(),
            margins: false,
        });
        let calibration = CountsRole {
            split: Split::Test,
            n: self.nominal_n,
            skip: self.calibration_skip,
            shards: self.calibration_shards,
            used: self.calibration_use.clone(),
            margins: false,
        };
        let eval = EvalRole {
            offset: self.eval_offset,
            skip: self.eval_skip,
            max: self.eval_max,
            n: self.eval_n.unwrap_or(self.nominal_n),
        };
        (train, tail, calibration, eval)
    }
}

/// The table of steps (what ran, how long), the seconds in all, and the
/// report when the pipeline got that far.
fn print_summary(s: &steps::PipelineSummary) {
    println!("| step | this run | seconds this run | seconds in all |");
    println!("|---|---|---:|---:|");
    for st in &s.steps {
        let status = match st.status {
            StepStatus::Ran => "ran",
            StepStatus::DoneBefore => "done before",
            StepStatus::NotRun => "not run",
        };
        println!(
            "| {} | {status} | {:.1} | {:.1} |",
            st.step, st.seconds_this_run, st.seconds_total
        );
    }
    println!(
        "\n{:.1} s this run; the steps' seconds over all runs add up to {:.1}{}",
        s.wall_seconds_this_run,
        s.step_seconds_total,
        if s.finished {
            format!(
                "; summary in {}",
                s.reports_dir.join(steps::SUMMARY_FILE).display()
            )
        } else {
            String::new()
        }
    );
    if let Some(report) = &s.report {
        println!("\n{report}");
    }
}
