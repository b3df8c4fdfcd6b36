//! `pipeline`: from a bundle with a base classifier to a served, calibrated
//! surrogate and a held-out report, in one resumable command. The steps are
//! the separate commands' library calls, in order:
//!
//! train-counts → train-surrogate → tail-counts → fit-tail-map →
//! calibration-counts → calibrate → certify-{monte_carlo, surrogate,
//! calibrated, auto} → report
//!
//! A step whose result exists is skipped, and one made with other settings
//! is an error, never silently kept: sample-counts checks each counts file
//! against the plan (the same call resumes an interrupted one), certify its
//! run's params.json, and the surrogate's nominal N and the calibration's
//! parameters are checked against the flags before anything runs. An
//! interrupted step resumes through its own mechanism (count chunks, the
//! surrogate checkpoint, TSV rows). The test split's roles (tail map,
//! calibration, evaluation) are checked to be disjoint first. Where the time
//! went is kept per step over all runs, killed ones included (a heartbeat
//! writes a running step's time), in `pipeline_summary.json` beside the
//! report.
mod check;
mod run;
#[cfg(test)]
mod tests;
mod times;

use super::counts::Shard;
use super::surrogate::SurrogateLoss;
use super::{io_err, write_json, PipelineError};
use crate::data::Split;
use crate::engine::{AutoBand, Method};
use crate::model::Arch;
use crate::smoothing::ConformalScore;
use check::check_plan;
use run::{run_counts, run_step};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;
use times::{timed, Times};

pub const SUMMARY_FILE: &str = "pipeline_summary.json";

/// Which inputs of a split one set of counts covers: every `skip`-th index,
/// cut into `shards` shards by position, of which `used` are sampled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CountsRole {
    pub split: Split,
    pub n: u64,
    pub skip: usize,
    pub shards: usize,
    pub used: Vec<usize>,
    /// Whether the counts record their logit-margin sums (`-margins` in the
    /// folder's name: one run with them and one without are two runs).
    pub margins: bool,
}

impl CountsRole {
    /// `DIR/{split}-n{n}-skip{skip}[-margins]/shard-{i}-of-{k}.safetensors` for
    /// each used shard: the layout the shipped counts use.
    pub fn files(&self, dir: &Path) -> Vec<(Shard, PathBuf)> {
        let margins = if self.margins { "-margins" } else { "" };
        let folder = dir.join(format!(
            "{}-n{}-skip{}{margins}",
            self.split, self.n, self.skip
        ));
        self.used
            .iter()
            .map(|&i| {
                let shard = Shard {
                    index: i,
                    count: self.shards,
                };
                let file = folder.join(format!("shard-{i}-of-{}.safetensors", self.shards));
                (shard, file)
            })
            .collect()
    }

    /// The dataset indices this role covers in a split of `len` inputs.
    pub fn indices(&self, len: usize) -> BTreeSet<usize> {
        (0..len)
            .step_by(self.skip.max(1))
            .enumerate()
            .filter(|(pos, _)| self.used.contains(&(pos % self.shards.max(1))))
            .map(|(_, i)| i)
            .collect()
    }

    fn validate(&self, what: &str) -> Result<(), PipelineError> {
        let bad = |m: String| Err(PipelineError::Invalid(format!("{what}: {m}")));
        if self.n == 0 || self.skip == 0 || self.shards == 0 {
            return bad("n, skip and shards must be at least 1".into());
        }
        if self.used.is_empty() {
            return bad("no shards to use".into());
        }
        if let Some(i) = self.used.iter().find(|&&i| i >= self.shards) {
            return bad(format!("shard {i} is not below {}", self.shards));
        }
        let distinct: BTreeSet<usize> = self.used.iter().copied().collect();
        if distinct.len() != self.used.len() {
            return bad(format!("shards {:?} name one twice", self.used));
        }
        Ok(())
    }
}

/// The held-out evaluation: every `skip`-th test index from `offset`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalRole {
    pub offset: usize,
    pub skip: usize,
    pub max: Option<usize>,
    /// Monte Carlo's sample count (the surrogate stands in for `nominal_n`).
    pub n: u64,
}

impl EvalRole {
    pub fn indices(&self, len: usize) -> BTreeSet<usize> {
        (self.offset..len)
            .step_by(self.skip.max(1))
            .take(self.max.unwrap_or(usize::MAX))
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub bundle: PathBuf,
    /// Where counts files go.
    pub counts_dir: PathBuf,
    /// Where the evaluation's TSVs, report and summary go.
    pub reports_dir: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub device: Device,
    /// Forward batch for certify, the tail map and calibration (default: the device's).
    pub batch: Option<i64>,
    /// Forward batch and device of count sampling, which decide the noise
    /// each input draws: pinned, a counts file is reproduced exactly on any
    /// machine (default: `batch`, `device`).
    pub counts_batch: Option<i64>,
    pub counts_device: Device,
    pub seed: u64,
    /// The sample count the surrogate and its calibration stand in for; the
    /// calibration counts are sampled at this N.
    pub nominal_n: u64,
    pub train: CountsRole,
    /// `None`: no tail map.
    pub tail: Option<CountsRole>,
    /// The calibration's counts (their `n` is `nominal_n`).
    pub calibration: CountsRole,
    pub eval: EvalRole,
    /// Inputs per count chunk (what an interruption can lose) for the train
    /// and tail-map counts, and for the calibration's (at the nominal N).
    pub chunk: usize,
    pub calibration_chunk: usize,
    /// The surrogate's architecture; `None`: a copy of the base ([`SurrogateInit::choose`]).
    pub arch: Option<Arch>,
    /// `None`: [`SurrogateInit::default_learning_rate`].
    pub learning_rate: Option<f64>,
    pub loss: SurrogateLoss,
    /// [`crate::pipeline::surrogate::TrainSurrogateOptions::margin_tail`];
    /// above 0, `train` must record margins.
    pub margin_tail: f64,
    pub epochs: usize,
    pub score: ConformalScore,
    /// CALIBRATED's estimate (`smoothing::blended_estimate`).
    pub margin_threshold: Option<f64>,
    /// AUTO's fallback band in the evaluation.
    pub auto_band: AutoBand,
    pub delta: f64,
    pub n0: u64,
    pub alpha: f64,
    pub radii: Vec<f64>,
    /// Sample only this worker's share of the counts (shard files whose
    /// position in the plan is `index` mod `count`), then stop: the
    /// Kubernetes Indexed Job's pods; a last run without it does the rest.
    pub counts_worker: Option<Shard>,
    /// Stop after the step of this name; a later run goes on.
    pub until: Option<String>,
    /// Replace a calibration the bundle holds with other parameters (the
    /// calibrated and AUTO evaluations are redone with it). Without it such
    /// a calibration is an error, so one chosen by hand is never lost.
    pub recalibrate: bool,
    pub show_progress: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Its result was there already.
    DoneBefore,
    Ran,
    /// Not this run's share (`counts_worker`), or after `until`.
    NotRun,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepFigures {
    pub step: String,
    pub status: StepStatus,
    pub seconds_this_run: f64,
    /// Over every run that worked on it, killed ones included (to the last
    /// heartbeat) and counts workers' added.
    pub seconds_total: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PipelineSummary {
    pub bundle: PathBuf,
    pub reports_dir: PathBuf,
    pub finished: bool,
    pub steps: Vec<StepFigures>,
    pub wall_seconds_this_run: f64,
    /// The steps' seconds over all runs, added up (parallel workers' too).
    pub step_seconds_total: f64,
    /// The report table (markdown), when the run got that far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
}

/// The certify runs of the evaluation, in the report's order.
pub(super) const EVAL_METHODS: [Method; 4] = [
    Method::MonteCarlo,
    Method::Surrogate,
    Method::Calibrated,
    Method::Auto,
];

/// One step: its name and what it does.
#[derive(Debug, Clone)]
pub(super) enum Step {
    Counts {
        name: &'static str,
        role: CountsRole,
        chunk: usize,
    },
    TrainSurrogate,
    FitTailMap,
    Calibrate,
    Certify(Method),
    Report,
}

impl Step {
    pub(super) fn name(&self) -> String {
        match self {
            Step::Counts { name, .. } => name.to_string(),
            Step::TrainSurrogate => "train-surrogate".into(),
            Step::FitTailMap => "fit-tail-map".into(),
            Step::Calibrate => "calibrate".into(),
            Step::Certify(m) => format!("certify-{}", m.as_str()),
            Step::Report => "report".into(),
        }
    }
}

/// `mc.tsv`, `surrogate.tsv`, `calibrated.tsv`, `auto.tsv`: the names the
/// shipped reports use (a report's curves are named by file stem).
pub(super) fn tsv_path(opts: &PipelineOptions, method: Method) -> PathBuf {
    let stem = match method {
        Method::MonteCarlo => "mc",
        m => m.as_str(),
    };
    opts.reports_dir.join(format!("{stem}.tsv"))
}

fn plan(opts: &PipelineOptions) -> Vec<Step> {
    let mut steps = vec![
        Step::Counts {
            name: "train-counts",
            role: opts.train.clone(),
            chunk: opts.chunk,
        },
        Step::TrainSurrogate,
    ];
    if let Some(tail) = &opts.tail {
        steps.push(Step::Counts {
            name: "tail-counts",
            role: tail.clone(),
            chunk: opts.chunk,
        });
        steps.push(Step::FitTailMap);
    }
    steps.push(Step::Counts {
        name: "calibration-counts",
        role: opts.calibration.clone(),
        chunk: opts.calibration_chunk,
    });
    steps.push(Step::Calibrate);
    steps.extend(EVAL_METHODS.map(Step::Certify));
    steps.push(Step::Report);
    steps
}

pub fn run_pipeline(opts: &PipelineOptions) -> Result<PipelineSummary, PipelineError> {
    let started = Instant::now();
    let steps = plan(opts);
    if let Some(until) = &opts.until {
        if !steps.iter().any(|s| &s.name() == until) {
            let names: Vec<String> = steps.iter().map(Step::name).collect();
            return Err(PipelineError::Invalid(format!(
                "--until {until:?}: not a step of this plan ({})",
                names.join(", ")
            )));
        }
    }
    // A run stopped before calibrate leaves any calibration alone.
    let position = |name: &str| steps.iter().position(|s| s.name() == name);
    let reaches_calibrate = opts
        .until
        .as_deref()
        .is_none_or(|u| position(u) >= position("calibrate"));
    check_plan(opts, reaches_calibrate)?;
    std::fs::create_dir_all(&opts.reports_dir).map_err(io_err(&opts.reports_dir))?;

    let times_path = Times::path(opts);
    let mut times = Times::read(&times_path);
    // The worker's share: shard files numbered across the whole plan.
    let mut file_no = 0usize;
    let mut figures = Vec::new();
    let mut report_text = None;
    let total = steps.len();
    let mut stopped = false;
    for (k, step) in steps.iter().enumerate() {
        let name = step.name();
        let announce = || {
            if opts.show_progress {
                eprintln!("[{}/{total}] {name}", k + 1);
            }
        };
        let (status, seconds) = match stopped {
            true => (StepStatus::NotRun, 0.0),
            false => run_share(
                opts,
                step,
                &mut file_no,
                (&mut times, &times_path),
                announce,
                &mut report_text,
            )?,
        };
        stopped |= opts.until.as_deref() == Some(name.as_str());
        figures.push(StepFigures {
            step: name,
            status,
            seconds_this_run: seconds,
            seconds_total: 0.0,
        });
    }
    let all = times.with_workers(&opts.reports_dir);
    for f in &mut figures {
        f.seconds_total = all.seconds.get(&f.step).copied().unwrap_or(0.0);
    }
    let stopped_early =
        opts.counts_worker.is_some() || opts.until.as_deref().is_some_and(|u| u != "report");
    let summary = PipelineSummary {
        bundle: opts.bundle.clone(),
        reports_dir: opts.reports_dir.clone(),
        finished: !stopped_early,
        wall_seconds_this_run: started.elapsed().as_secs_f64(),
        step_seconds_total: all.seconds.values().sum(),
        steps: figures,
        report: report_text,
    };
    if !stopped_early {
        write_json(&opts.reports_dir.join(SUMMARY_FILE), &summary)?;
    }
    Ok(summary)
}

/// Runs `step`, or a counts worker's share of it (the counts files
/// numbered `file_no..` across the whole plan, one in `count` its own);
/// timed, with its seconds recorded in `times`.
fn run_share(
    opts: &PipelineOptions,
    step: &Step,
    file_no: &mut usize,
    (times, times_path): (&mut Times, &Path),
    announce: impl Fn(),
    report_text: &mut Option<String>,
) -> Result<(StepStatus, f64), PipelineError> {
    let name = step.name();
    match (opts.counts_worker, step) {
        (Some(worker), Step::Counts { role, chunk, .. }) => {
            let mine: Vec<_> = role
                .files(&opts.counts_dir)
                .into_iter()
                .enumerate()
                .filter(|(j, _)| (*file_no + j) % worker.count == worker.index)
                .map(|(_, f)| f)
                .collect();
            *file_no += role.used.len();
            if mine.is_empty() {
                return Ok((StepStatus::NotRun, 0.0));
            }
            announce();
            timed(times, times_path, &name, || {
                run_counts(opts, role, *chunk, &mine)
            })
        }
        (Some(_), _) => Ok((StepStatus::NotRun, 0.0)),
        (None, _) => {
            announce();
            timed(times, times_path, &name, || {
                run_step(opts, step, report_text)
            })
        }
    }
}

/// `--batch`, else the device's for the bundle's input shape.
pub(super) fn forward_batch(opts: &PipelineOptions, input: [usize; 3]) -> i64 {
    opts.batch
        .unwrap_or_else(|| crate::model::forward_batch_for(opts.device, 0, input))
}
