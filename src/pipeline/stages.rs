//! `pipeline`: from a bundle with a base classifier to a served, calibrated
//! surrogate and a held-out report, in one resumable command. The stages are
//! the separate commands' library calls, in order:
//!
//! train-counts → train-surrogate → tail-counts → fit-tail-map →
//! calibration-counts → calibrate → certify-{monte_carlo, surrogate,
//! calibrated, auto} → report
//!
//! A stage whose result exists is skipped (counts files, the surrogate, tail
//! map and calibration in model.toml, a certify run's summary); an
//! interrupted one resumes through its own mechanism (count chunks, the
//! surrogate checkpoint, TSV rows). The test split's roles (tail map,
//! calibration, evaluation) are checked to be disjoint before anything runs.
//! Where the time went is accumulated over resumed runs in
//! `pipeline_summary.json` beside the report.
use super::calibrate::{self, CalibrateOptions};
use super::certify::{self, CertifyOptions};
use super::counts::{self, SampleCountsOptions, SampleOutcome, Shard};
use super::report::{self, ReportOptions};
use super::surrogate::{self, SurrogateLoss, TrainSurrogateOptions};
use super::tail_map::{self, FitTailMapOptions};
use super::{io_err, write_json, PipelineError};
use crate::config::DEFAULT_AUTO_BAND;
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
    /// Where counts files go (default `counts/<bundle folder name>`).
    pub counts_dir: PathBuf,
    /// Where the evaluation's TSVs, report and summary go.
    pub reports_dir: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub device: Device,
    /// Forward batch for sampling and certify (default: the device's).
    pub batch: Option<i64>,
    pub seed: u64,
    /// The sample count the surrogate and calibration stand in for.
    pub nominal_n: u64,
    pub train: CountsRole,
    /// `None`: no tail map.
    pub tail: Option<CountsRole>,
    pub calibration: CountsRole,
    pub eval: EvalRole,
    /// Inputs per count chunk (what an interruption can lose).
    pub chunk: usize,
    pub arch: Arch,
    pub epochs: usize,
    pub score: ConformalScore,
    pub delta: f64,
    pub n0: u64,
    pub alpha: f64,
    pub radii: Vec<f64>,
    /// Sample only this worker's share of the counts (shard files whose
    /// position in the plan is `index` mod `count`), then stop: the
    /// Kubernetes Indexed Job's pods; a last run without it does the rest.
    pub counts_worker: Option<Shard>,
    /// Stop after the stage of this name; a later run goes on.
    pub until: Option<String>,
    pub show_progress: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// Its result was there already.
    DoneBefore,
    Ran,
    /// Not this run's share (`counts_worker`), or after the counts.
    NotRun,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageFigures {
    pub stage: String,
    pub status: StageStatus,
    pub seconds_this_run: f64,
    /// Over every run that worked on it, the interrupted ones included.
    pub seconds_total: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PipelineSummary {
    pub bundle: PathBuf,
    pub reports_dir: PathBuf,
    pub finished: bool,
    pub stages: Vec<StageFigures>,
    pub wall_seconds_this_run: f64,
    pub wall_seconds_total: f64,
    /// The report table (markdown), when the run got that far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
}

/// Seconds per stage over all runs, kept beside the summary.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Times {
    seconds: BTreeMap<String, f64>,
}

const TIMES_FILE: &str = "pipeline_times.json";

impl Times {
    fn read(dir: &Path) -> Times {
        std::fs::read_to_string(dir.join(TIMES_FILE))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    fn add(&mut self, dir: &Path, stage: &str, seconds: f64) -> Result<(), PipelineError> {
        *self.seconds.entry(stage.to_string()).or_default() += seconds;
        write_json(&dir.join(TIMES_FILE), self)
    }
}

/// The certify runs of the evaluation, in the report's order.
const EVAL_METHODS: [Method; 4] = [
    Method::MonteCarlo,
    Method::Surrogate,
    Method::Calibrated,
    Method::Auto,
];

/// One stage: its name and what it does.
#[derive(Debug, Clone)]
enum Stage {
    Counts {
        name: &'static str,
        role: CountsRole,
    },
    TrainSurrogate,
    FitTailMap,
    Calibrate,
    Certify(Method),
    Report,
}

impl Stage {
    fn name(&self) -> String {
        match self {
            Stage::Counts { name, .. } => name.to_string(),
            Stage::TrainSurrogate => "train-surrogate".into(),
            Stage::FitTailMap => "fit-tail-map".into(),
            Stage::Calibrate => "calibrate".into(),
            Stage::Certify(m) => format!("certify-{}", m.as_str()),
            Stage::Report => "report".into(),
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

fn summary_of(tsv: &Path) -> PathBuf {
    tsv.with_extension("summary.json")
}

pub fn run_pipeline(opts: &PipelineOptions) -> Result<PipelineSummary, PipelineError> {
    let started = Instant::now();
    check_plan(opts)?;
    std::fs::create_dir_all(&opts.reports_dir).map_err(io_err(&opts.reports_dir))?;
    let mut stages = vec![Stage::Counts {
        name: "train-counts",
        role: opts.train.clone(),
    }];
    stages.push(Stage::TrainSurrogate);
    if let Some(tail) = &opts.tail {
        stages.push(Stage::Counts {
            name: "tail-counts",
            role: tail.clone(),
        });
        stages.push(Stage::FitTailMap);
    }
    stages.push(Stage::Counts {
        name: "calibration-counts",
        role: opts.calibration.clone(),
    });
    stages.push(Stage::Calibrate);
    stages.extend(EVAL_METHODS.map(Stage::Certify));
    stages.push(Stage::Report);

    if let Some(until) = &opts.until {
        if !stages.iter().any(|s| &s.name() == until) {
            let names: Vec<String> = stages.iter().map(Stage::name).collect();
            return Err(PipelineError::Invalid(format!(
                "--until {until:?}: not a stage of this plan ({})",
                names.join(", ")
            )));
        }
    }
    // The worker's share: shard files numbered across the whole plan.
    let mut file_no = 0usize;
    let mut times = Times::read(&opts.reports_dir);
    let mut figures = Vec::new();
    let mut report_text = None;
    let total = stages.len();
    let mut stopped = false;
    for (k, stage) in stages.iter().enumerate() {
        let name = stage.name();
        let t0 = Instant::now();
        let mut seconds = 0.0;
        let status = if stopped {
            StageStatus::NotRun
        } else if let Some(worker) = opts.counts_worker {
            match stage {
                Stage::Counts { role, .. } => {
                    let files = role.files(&opts.counts_dir);
                    let mine: Vec<_> = files
                        .into_iter()
                        .enumerate()
                        .filter(|(j, _)| (file_no + j) % worker.count == worker.index)
                        .map(|(_, f)| f)
                        .collect();
                    file_no += role.used.len();
                    if mine.is_empty() {
                        StageStatus::NotRun
                    } else {
                        announce(opts, k, total, &name);
                        let ran = run_counts(opts, role, &mine);
                        finish(&mut times, opts, &name, t0, ran, &mut seconds)?
                    }
                }
                _ => StageStatus::NotRun,
            }
        } else if stage_done(opts, stage)? {
            StageStatus::DoneBefore
        } else {
            announce(opts, k, total, &name);
            let ran = run_stage(opts, stage, &mut report_text);
            finish(&mut times, opts, &name, t0, ran, &mut seconds)?
        };
        stopped |= opts.until.as_deref() == Some(name.as_str());
        figures.push(StageFigures {
            seconds_this_run: seconds,
            seconds_total: times.seconds.get(&name).copied().unwrap_or(0.0),
            stage: name,
            status,
        });
    }
    let stopped_early =
        opts.counts_worker.is_some() || opts.until.as_deref().is_some_and(|u| u != "report");
    let summary = PipelineSummary {
        bundle: opts.bundle.clone(),
        reports_dir: opts.reports_dir.clone(),
        finished: !stopped_early,
        wall_seconds_this_run: started.elapsed().as_secs_f64(),
        wall_seconds_total: times.seconds.values().sum(),
        stages: figures,
        report: report_text,
    };
    if !stopped_early {
        write_json(&opts.reports_dir.join(SUMMARY_FILE), &summary)?;
    }
    Ok(summary)
}

fn announce(opts: &PipelineOptions, k: usize, total: usize, name: &str) {
    if opts.show_progress {
        eprintln!("[{}/{total}] {name}", k + 1);
    }
}

/// Adds the stage's time (also when it failed: the work it finished stays
/// done) and passes its error on.
fn finish(
    times: &mut Times,
    opts: &PipelineOptions,
    name: &str,
    t0: Instant,
    ran: Result<(), PipelineError>,
    seconds: &mut f64,
) -> Result<StageStatus, PipelineError> {
    *seconds = t0.elapsed().as_secs_f64();
    times.add(&opts.reports_dir, name, *seconds)?;
    ran.map_err(|e| PipelineError::Invalid(format!("stage {name}: {e}")))?;
    Ok(StageStatus::Ran)
}

/// The roles' images must not overlap: a tail map, a calibration or an
/// evaluation on images another role used would promise what it cannot.
fn check_plan(opts: &PipelineOptions) -> Result<(), PipelineError> {
    opts.train.validate("train counts")?;
    opts.calibration.validate("calibration counts")?;
    if let Some(t) = &opts.tail {
        t.validate("tail-map counts")?;
    }
    if opts.eval.skip == 0 || opts.eval.n == 0 || opts.chunk == 0 || opts.epochs == 0 {
        return Err(PipelineError::Invalid(
            "--eval-skip, --eval-n, --chunk and --epochs must be at least 1".into(),
        ));
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
    let source = bundle.provenance.dataset.clone().ok_or_else(|| {
        PipelineError::Invalid(format!(
            "{}: model.toml names no provenance.dataset; import the model with --image-folder \
             or --train-manifest/--test-manifest",
            opts.bundle.display()
        ))
    })?;
    let test = source.load(
        Split::Test,
        bundle.input_shape,
        &bundle.labels,
        opts.data_dir.as_deref(),
    )?;
    let len = test.len();
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

fn stage_done(opts: &PipelineOptions, stage: &Stage) -> Result<bool, PipelineError> {
    let surrogate = || -> Result<_, PipelineError> { Ok(Bundle::load(&opts.bundle)?.surrogate) };
    Ok(match stage {
        Stage::Counts { role, .. } => role.files(&opts.counts_dir).iter().all(|(_, f)| f.exists()),
        Stage::TrainSurrogate => surrogate()?.is_some(),
        Stage::FitTailMap => surrogate()?.is_some_and(|s| s.tail_map.is_some()),
        // A calibration with other parameters (another score, delta or N)
        // is not this plan's: it is redone (minutes: n0 samples per input).
        Stage::Calibrate => surrogate()?.and_then(|s| s.calibration).is_some_and(|c| {
            c.score == opts.score
                && c.delta == opts.delta
                && c.n == opts.calibration.n
                && c.n0 == opts.n0
                && c.bins.is_empty()
                && c.rank_rule == RankRule::Marginal
        }),
        Stage::Certify(m) => summary_of(&tsv_path(opts, *m)).exists(),
        Stage::Report => false,
    })
}

fn run_stage(
    opts: &PipelineOptions,
    stage: &Stage,
    report_text: &mut Option<String>,
) -> Result<(), PipelineError> {
    let files = |role: &CountsRole| -> Vec<PathBuf> {
        role.files(&opts.counts_dir)
            .into_iter()
            .map(|(_, f)| f)
            .collect()
    };
    match stage {
        Stage::Counts { role, .. } => run_counts(opts, role, &role.files(&opts.counts_dir)),
        Stage::TrainSurrogate => {
            let bundle = Bundle::load(&opts.bundle)?;
            // Built-in bases of the same architecture start the surrogate
            // from their weights (the paper's recipe); others train from scratch.
            let init_from_base = bundle.base.arch.as_deref() == Some(opts.arch.name());
            surrogate::train_surrogate(&TrainSurrogateOptions {
                bundle: opts.bundle.clone(),
                counts: files(&opts.train),
                arch: opts.arch,
                loss: SurrogateLoss::Js,
                epochs: opts.epochs,
                batch_size: 128,
                learning_rate: 1e-3,
                val_fraction: 0.1,
                nominal_n: Some(opts.nominal_n),
                data_dir: opts.data_dir.clone(),
                seed: opts.seed,
                device: opts.device,
                pause_after: None,
                init_from_base,
                show_progress: opts.show_progress,
            })?;
            Ok(())
        }
        Stage::FitTailMap => {
            let tail = opts.tail.as_ref().map(files).unwrap_or_default();
            tail_map::fit_tail_map(&FitTailMapOptions {
                bundle: opts.bundle.clone(),
                counts: tail,
                min_inputs: tail_map::DEFAULT_MIN_INPUTS,
                batch: forward_batch(opts),
                data_dir: opts.data_dir.clone(),
                device: opts.device,
            })?;
            Ok(())
        }
        Stage::Calibrate => {
            calibrate::calibrate(&CalibrateOptions {
                bundle: opts.bundle.clone(),
                counts: files(&opts.calibration),
                delta: opts.delta,
                score: opts.score,
                rank_rule: RankRule::Marginal,
                bin_edges: Vec::new(),
                n0: opts.n0,
                alpha: opts.alpha,
                seed: opts.seed,
                batch: forward_batch(opts),
                data_dir: opts.data_dir.clone(),
                device: opts.device,
            })?;
            Ok(())
        }
        Stage::Certify(method) => {
            let batch = forward_batch(opts);
            certify::certify(&CertifyOptions {
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
                    batch,
                },
                seed: opts.seed,
                adaptive: None,
                auto_band: AutoBand {
                    low: DEFAULT_AUTO_BAND.0,
                    high: DEFAULT_AUTO_BAND.1,
                },
                target: None,
                device: opts.device,
                out: tsv_path(opts, *method),
                show_progress: opts.show_progress,
            })?;
            Ok(())
        }
        Stage::Report => {
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
            Ok(())
        }
    }
}

fn forward_batch(opts: &PipelineOptions) -> i64 {
    opts.batch
        .unwrap_or_else(|| crate::batcher::forward_batch_for(opts.device, 0))
}

fn run_counts(
    opts: &PipelineOptions,
    role: &CountsRole,
    files: &[(Shard, PathBuf)],
) -> Result<(), PipelineError> {
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
            chunk: opts.chunk,
            batch: opts.batch,
            seed: opts.seed,
            device: opts.device,
            out: out.clone(),
            pause_after: None,
            show_progress: opts.show_progress,
        })?;
        if !matches!(outcome, SampleOutcome::Finished(_)) {
            return Err(PipelineError::Invalid(format!(
                "{}: sampling stopped before the end",
                out.display()
            )));
        }
    }
    Ok(())
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
    }
}
