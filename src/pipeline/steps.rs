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
use super::calibrate::{self, CalibrateOptions};
use super::certify::{self, CertifyOptions};
use super::counts::{self, SampleCountsOptions, SampleOutcome, Shard};
use super::report::{self, ReportOptions};
use super::run::RunFiles;
use super::surrogate::{self, SurrogateInit, SurrogateLoss, TrainSurrogateOptions};
use super::tail_map::{self, FitTailMapOptions};
use super::{io_err, write_json, InputList, PipelineError};
use crate::data::Split;
use crate::engine::{AutoBand, CertifyParams, Method};
use crate::model::{Arch, Bundle};
use crate::smoothing::{ConformalScore, RankRule};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;

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
}

impl CountsRole {
    /// `DIR/{split}-n{n}-skip{skip}/shard-{i}-of-{k}.safetensors` for each used
    /// shard: the layout the shipped counts use.
    pub fn files(&self, dir: &Path) -> Vec<(Shard, PathBuf)> {
        let folder = dir.join(format!("{}-n{}-skip{}", self.split, self.n, self.skip));
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

/// Seconds per step over all runs of one process role (the main run, or
/// one counts worker), kept beside the summary.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Times {
    seconds: BTreeMap<String, f64>,
}

const TIMES_FILE: &str = "pipeline_times.json";
const TIMES_WORKER_PREFIX: &str = "pipeline_times.worker-";
/// How often a running step's time is written, so a killed run keeps it.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(15);

impl Times {
    /// Each worker keeps its own file: pods on one volume never write one file.
    fn path(opts: &PipelineOptions) -> PathBuf {
        opts.reports_dir.join(match opts.counts_worker {
            Some(w) => format!("{TIMES_WORKER_PREFIX}{}-of-{}.json", w.index, w.count),
            None => TIMES_FILE.into(),
        })
    }

    fn read(path: &Path) -> Times {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Times::default();
        };
        serde_json::from_str(&text).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), error = %e, "unreadable step times; starting them over");
            Times::default()
        })
    }

    /// A record, not a result: failing to write it never fails a step.
    fn write(&self, path: &Path) {
        if let Err(e) = write_json(path, self) {
            tracing::warn!(file = %path.display(), error = %e, "could not record step times");
        }
    }

    /// This role's seconds plus every counts worker's.
    fn with_workers(&self, dir: &Path) -> Times {
        let mut all = self.clone();
        let workers = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(TIMES_WORKER_PREFIX) && n.ends_with(".json"))
            });
        for file in workers {
            for (step, s) in Times::read(&file).seconds {
                *all.seconds.entry(step).or_default() += s;
            }
        }
        all
    }
}

/// Runs `work` as step `name`, writing its time so far every [`HEARTBEAT`]
/// and, at the end, its whole time if it ran (a check that found the work
/// done adds nothing). Returns the status and the seconds it took.
fn timed(
    times: &mut Times,
    path: &Path,
    name: &str,
    work: impl FnOnce() -> Result<StepStatus, PipelineError>,
) -> Result<(StepStatus, f64), PipelineError> {
    let base = times.seconds.get(name).copied().unwrap_or(0.0);
    let t0 = Instant::now();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let result = std::thread::scope(|s| {
        let beat = times.clone();
        s.spawn(move || {
            let mut beat = beat;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(HEARTBEAT)
            {
                beat.seconds
                    .insert(name.to_string(), base + t0.elapsed().as_secs_f64());
                beat.write(path);
            }
        });
        let result = work();
        drop(stop);
        result
    });
    let seconds = t0.elapsed().as_secs_f64();
    let ran = matches!(result, Ok(StepStatus::Ran) | Err(_));
    times
        .seconds
        .insert(name.to_string(), base + if ran { seconds } else { 0.0 });
    times.write(path);
    let status = result.map_err(|e| PipelineError::Invalid(format!("step {name}: {e}")))?;
    Ok((status, if ran { seconds } else { 0.0 }))
}

/// The certify runs of the evaluation, in the report's order.
const EVAL_METHODS: [Method; 4] = [
    Method::MonteCarlo,
    Method::Surrogate,
    Method::Calibrated,
    Method::Auto,
];

/// One step: its name and what it does.
#[derive(Debug, Clone)]
enum Step {
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
    fn name(&self) -> String {
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
fn tsv_path(opts: &PipelineOptions, method: Method) -> PathBuf {
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
        let (status, seconds) = match (stopped, opts.counts_worker, step) {
            (true, _, _) => (StepStatus::NotRun, 0.0),
            (false, Some(worker), Step::Counts { role, chunk, .. }) => {
                let mine: Vec<_> = role
                    .files(&opts.counts_dir)
                    .into_iter()
                    .enumerate()
                    .filter(|(j, _)| (file_no + j) % worker.count == worker.index)
                    .map(|(_, f)| f)
                    .collect();
                file_no += role.used.len();
                if mine.is_empty() {
                    (StepStatus::NotRun, 0.0)
                } else {
                    announce();
                    timed(&mut times, &times_path, &name, || {
                        run_counts(opts, role, *chunk, &mine)
                    })?
                }
            }
            (false, Some(_), _) => (StepStatus::NotRun, 0.0),
            (false, None, _) => {
                announce();
                timed(&mut times, &times_path, &name, || {
                    run_step(opts, step, &mut report_text)
                })?
            }
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

/// Everything that can be known wrong before hours of sampling: the roles'
/// images must not overlap (a tail map, a calibration or an evaluation on
/// images another role used would promise what it cannot), and a surrogate
/// or calibration already in the bundle must be this plan's.
fn check_plan(opts: &PipelineOptions, reaches_calibrate: bool) -> Result<(), PipelineError> {
    opts.train.validate("train counts")?;
    opts.calibration.validate("calibration counts")?;
    if let Some(t) = &opts.tail {
        t.validate("tail-map counts")?;
    }
    if opts.eval.skip == 0
        || opts.eval.n == 0
        || opts.chunk == 0
        || opts.calibration_chunk == 0
        || opts.epochs == 0
    {
        return Err(PipelineError::Invalid(
            "--eval-skip, --eval-n, --chunk, --calibration-chunk and --epochs must be at least 1"
                .into(),
        ));
    }
    if opts.calibration.n != opts.nominal_n {
        return Err(PipelineError::Invalid(format!(
            "the calibration counts must be at the nominal N ({}), not {}",
            opts.nominal_n, opts.calibration.n
        )));
    }
    if opts.train.split != Split::Train
        || opts.calibration.split != Split::Test
        || opts.tail.as_ref().is_some_and(|t| t.split != Split::Test)
    {
        return Err(PipelineError::Invalid(
            "the surrogate trains on the train split; the tail map, calibration and evaluation use the test split".into(),
        ));
    }
    let bundle = Bundle::load(&opts.bundle)?;
    if let Some(s) = &bundle.surrogate {
        if s.nominal_n != opts.nominal_n {
            return Err(PipelineError::Invalid(format!(
                "{} holds a surrogate for a nominal N of {}, not --nominal-n {}",
                opts.bundle.display(),
                s.nominal_n,
                opts.nominal_n
            )));
        }
        if opts.tail.is_none() && s.tail_map.is_some() {
            return Err(PipelineError::Invalid(format!(
                "{} holds a tail map, which --no-tail-map cannot take back (the calibration \
                 measured the surrogate with it); leave the flag out, or start from a bundle \
                 without [surrogate.tail_map]",
                opts.bundle.display()
            )));
        }
        if let Some(c) = &s.calibration {
            if reaches_calibrate && !calibration_matches(opts, c) && !opts.recalibrate {
                return Err(PipelineError::Invalid(format!(
                    "{} holds a calibration with other parameters (score {}, margin threshold {}, \
                     delta {}, N {}, n0 {}, {} rank, {} bins) than this plan's (score {}, margin \
                     threshold {}, delta {}, N {}, n0 {}, marginal, no bins); pass --recalibrate \
                     to replace it, or choose flags that match it",
                    opts.bundle.display(),
                    c.score.as_str(),
                    threshold_str(c.margin_threshold),
                    c.delta,
                    c.n,
                    c.n0,
                    c.rank_rule.as_str(),
                    c.bins.len(),
                    opts.score.as_str(),
                    threshold_str(opts.margin_threshold),
                    opts.delta,
                    opts.nominal_n,
                    opts.n0
                )));
            }
        }
    }
    let (_, test) = super::bundle_dataset(&bundle, Split::Test, opts.data_dir.as_deref())?;
    let len = test.len();
    if reaches_calibrate && !opts.recalibrate {
        let calibration = bundle
            .surrogate
            .as_ref()
            .and_then(|s| s.calibration.as_ref());
        if let Some(c) = calibration.filter(|c| calibration_matches(opts, c)) {
            let planned = opts.calibration.indices(len);
            if !calibrated_on(&bundle, &planned)? {
                return Err(PipelineError::Invalid(format!(
                    "{} holds a calibration on other inputs than this plan's calibration role \
                     ({} inputs there, {} in the plan); pass --recalibrate to replace it",
                    opts.bundle.display(),
                    c.m,
                    planned.len()
                )));
            }
        }
    }
    let mut roles = vec![
        ("calibration", opts.calibration.indices(len)),
        ("evaluation", opts.eval.indices(len)),
    ];
    if let Some(t) = &opts.tail {
        roles.push(("tail map", t.indices(len)));
    }
    for (name, set) in &roles {
        if set.is_empty() {
            return Err(PipelineError::Invalid(format!(
                "the {name} role has no images in the test split's {len}"
            )));
        }
    }
    for (i, (a, sa)) in roles.iter().enumerate() {
        for (b, sb) in &roles[i + 1..] {
            if let Some(idx) = sa.intersection(sb).next() {
                return Err(PipelineError::Invalid(format!(
                    "test image {idx} is in both the {a} and the {b} role; choose shards and \
                     offsets that keep them apart"
                )));
            }
        }
    }
    Ok(())
}

fn threshold_str(t: Option<f64>) -> String {
    t.map_or_else(|| "none".into(), |z| z.to_string())
}

/// Whether the bundle's calibration inputs are exactly `planned` (test split).
fn calibrated_on(bundle: &Bundle, planned: &BTreeSet<usize>) -> Result<bool, PipelineError> {
    let Some(used) = InputList::read_if_any(&bundle.dir.join(calibrate::INPUTS_FILE))? else {
        return Ok(false);
    };
    Ok(used.split == Split::Test
        && used.indices.len() == planned.len()
        && used
            .indices
            .iter()
            .all(|&i| usize::try_from(i).is_ok_and(|i| planned.contains(&i))))
}

fn calibration_matches(opts: &PipelineOptions, c: &crate::model::Calibration) -> bool {
    c.score == opts.score
        && c.margin_threshold == opts.margin_threshold
        && c.delta == opts.delta
        && c.n == opts.nominal_n
        && c.n0 == opts.n0
        && c.seed == opts.seed
        && c.bins.is_empty()
        && c.rank_rule == RankRule::Marginal
}

fn run_step(
    opts: &PipelineOptions,
    step: &Step,
    report_text: &mut Option<String>,
) -> Result<StepStatus, PipelineError> {
    let input = Bundle::load(&opts.bundle)?.input_shape;
    let files = |role: &CountsRole| -> Vec<PathBuf> {
        role.files(&opts.counts_dir)
            .into_iter()
            .map(|(_, f)| f)
            .collect()
    };
    match step {
        Step::Counts { role, chunk, .. } => {
            run_counts(opts, role, *chunk, &role.files(&opts.counts_dir))
        }
        Step::TrainSurrogate => {
            let bundle = Bundle::load(&opts.bundle)?;
            if bundle.surrogate.is_some() {
                return Ok(StepStatus::DoneBefore);
            }
            // A named built-in architecture starts from the base's weights
            // when the base is that architecture (the paper's recipe), else
            // from scratch; no name: a copy of the base, whatever it is.
            let from_base =
                opts.arch.is_some() && bundle.base.arch.as_deref() == opts.arch.map(|a| a.name());
            let init = SurrogateInit::choose(&bundle, opts.arch, from_base)?;
            surrogate::train_surrogate(&TrainSurrogateOptions {
                bundle: opts.bundle.clone(),
                counts: files(&opts.train),
                init,
                loss: opts.loss,
                epochs: opts.epochs,
                batch_size: surrogate::default_batch_size(bundle.input_shape),
                learning_rate: opts.learning_rate.unwrap_or(init.default_learning_rate()),
                val_fraction: 0.1,
                nominal_n: Some(opts.nominal_n),
                data_dir: opts.data_dir.clone(),
                seed: opts.seed,
                device: opts.device,
                pause_after: None,
                show_progress: opts.show_progress,
            })?;
            Ok(StepStatus::Ran)
        }
        Step::FitTailMap => {
            let bundle = Bundle::load(&opts.bundle)?;
            if bundle.surrogate.is_some_and(|s| s.tail_map.is_some()) {
                return Ok(StepStatus::DoneBefore);
            }
            tail_map::fit_tail_map(&FitTailMapOptions {
                bundle: opts.bundle.clone(),
                counts: opts.tail.as_ref().map(files).unwrap_or_default(),
                min_inputs: tail_map::DEFAULT_MIN_INPUTS,
                batch: forward_batch(opts, input),
                data_dir: opts.data_dir.clone(),
                device: opts.device,
            })?;
            Ok(StepStatus::Ran)
        }
        Step::Calibrate => {
            let bundle = Bundle::load(&opts.bundle)?;
            let existing = bundle
                .surrogate
                .as_ref()
                .and_then(|s| s.calibration.clone());
            if existing
                .as_ref()
                .is_some_and(|c| calibration_matches(opts, c))
            {
                let (_, test) =
                    super::bundle_dataset(&bundle, Split::Test, opts.data_dir.as_deref())?;
                if calibrated_on(&bundle, &opts.calibration.indices(test.len()))? {
                    return Ok(StepStatus::DoneBefore);
                }
            }
            calibrate::calibrate(&CalibrateOptions {
                bundle: opts.bundle.clone(),
                counts: files(&opts.calibration),
                delta: opts.delta,
                score: opts.score,
                rank_rule: RankRule::Marginal,
                bin_edges: Vec::new(),
                margin_threshold: opts.margin_threshold,
                n0: opts.n0,
                alpha: opts.alpha,
                seed: opts.seed,
                batch: forward_batch(opts, input),
                data_dir: opts.data_dir.clone(),
                device: opts.device,
            })?;
            // The evaluations of the calibration it replaced are not its own.
            if existing.is_some() {
                for method in [Method::Calibrated, Method::Auto] {
                    RunFiles::of(&tsv_path(opts, method)).remove()?;
                }
            }
            Ok(StepStatus::Ran)
        }
        Step::Certify(method) => {
            let out = tsv_path(opts, *method);
            let run = RunFiles::of(&out);
            let finished_before = run.is_finished();
            // Finished under a version whose parameters cannot be checked: kept.
            if run.finished_by_earlier_version() {
                return Ok(StepStatus::DoneBefore);
            }
            // Otherwise certify itself checks a finished or started run
            // against these parameters and resumes it.
            let s = certify::certify(&CertifyOptions {
                bundle: opts.bundle.clone(),
                method: *method,
                split: Split::Test,
                data_dir: opts.data_dir.clone(),
                offset: opts.eval.offset,
                skip: opts.eval.skip,
                max: opts.eval.max,
                params: CertifyParams {
                    n0: opts.n0,
                    // The surrogate methods, and AUTO's fallback, at the
                    // N their estimates and calibration stand in for.
                    n: match method {
                        Method::MonteCarlo => opts.eval.n,
                        _ => opts.nominal_n,
                    },
                    alpha: opts.alpha,
                    batch: forward_batch(opts, input),
                },
                seed: opts.seed,
                adaptive_n0: None,
                auto_band: opts.auto_band,
                target: None,
                device: opts.device,
                out,
                show_progress: opts.show_progress,
            })?;
            Ok(if finished_before && s.resumed_rows == s.inputs {
                StepStatus::DoneBefore
            } else {
                StepStatus::Ran
            })
        }
        Step::Report => {
            let tsvs: Vec<PathBuf> = EVAL_METHODS.iter().map(|&m| tsv_path(opts, m)).collect();
            let text = report::run_report(
                &tsvs,
                &ReportOptions {
                    radii: opts.radii.clone(),
                    out_dir: opts.reports_dir.clone(),
                },
            )?;
            let path = opts.reports_dir.join("report.md");
            std::fs::write(&path, &text).map_err(io_err(&path))?;
            *report_text = Some(text);
            Ok(StepStatus::Ran)
        }
    }
}

/// `--batch`, else the device's for the bundle's input shape.
fn forward_batch(opts: &PipelineOptions, input: [usize; 3]) -> i64 {
    opts.batch
        .unwrap_or_else(|| crate::model::forward_batch_for(opts.device, 0, input))
}

/// Samples (or resumes, or checks) each of `files`: sample-counts refuses a
/// file of another run (seed, images, base) and returns at once for one of
/// this plan that is finished.
fn run_counts(
    opts: &PipelineOptions,
    role: &CountsRole,
    chunk: usize,
    files: &[(Shard, PathBuf)],
) -> Result<StepStatus, PipelineError> {
    let mut status = StepStatus::DoneBefore;
    for (shard, out) in files {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let outcome = counts::sample_counts(&SampleCountsOptions {
            bundle: opts.bundle.clone(),
            split: role.split,
            data_dir: opts.data_dir.clone(),
            n: role.n,
            skip: role.skip,
            max: None,
            shard: Some(*shard),
            chunk,
            batch: opts.counts_batch.or(opts.batch),
            seed: opts.seed,
            device: opts.counts_device,
            out: out.clone(),
            pause_after: None,
            show_progress: opts.show_progress,
        })?;
        match outcome {
            SampleOutcome::Finished(s) if s.noisy_passes_this_run == 0 && s.chunks == 0 => {}
            SampleOutcome::Finished(_) => status = StepStatus::Ran,
            SampleOutcome::Paused { .. } => {
                return Err(PipelineError::Invalid(format!(
                    "{}: sampling stopped before the end",
                    out.display()
                )))
            }
        }
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(skip: usize, shards: usize, used: &[usize]) -> CountsRole {
        CountsRole {
            split: Split::Test,
            n: 100,
            skip,
            shards,
            used: used.to_vec(),
        }
    }

    #[test]
    fn roles_cover_the_indices_sample_counts_samples() {
        // Shard i of k by position among every skip-th index, as sample-counts cuts it.
        assert_eq!(
            role(1, 4, &[1]).indices(10),
            [1, 5, 9].into_iter().collect()
        );
        assert_eq!(
            role(5, 2, &[0, 1]).indices(20),
            [0, 5, 10, 15].into_iter().collect()
        );
        assert_eq!(role(5, 2, &[1]).indices(20), [5, 15].into_iter().collect());
        let eval = EvalRole {
            offset: 2,
            skip: 4,
            max: Some(2),
            n: 10,
        };
        assert_eq!(eval.indices(20), [2, 6].into_iter().collect());
        let files = role(3, 8, &[0, 2]).files(Path::new("c"));
        assert_eq!(
            files[1].1,
            Path::new("c/test-n100-skip3/shard-2-of-8.safetensors")
        );
        assert_eq!(files[1].0.to_string(), "2/8");
        assert!(role(1, 4, &[4]).validate("x").is_err());
        assert!(role(1, 4, &[]).validate("x").is_err());
        assert!(role(1, 4, &[1, 1]).validate("x").is_err());
    }
}
