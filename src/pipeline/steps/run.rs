//! Each step carried out: the separate commands' library calls.
use super::check::{calibrated_on, calibration_matches};
use super::{forward_batch, tsv_path, CountsRole, PipelineOptions, Step, StepStatus, EVAL_METHODS};
use crate::data::Split;
use crate::engine::{CertifyParams, Method};
use crate::model::Bundle;
use crate::pipeline::calibrate::{self, CalibrateOptions};
use crate::pipeline::certify::{self, CertifyOptions};
use crate::pipeline::counts::{self, SampleCountsOptions, SampleOutcome, Shard};
use crate::pipeline::report::{self, ReportOptions};
use crate::pipeline::run::RunFiles;
use crate::pipeline::surrogate::{self, SurrogateInit, TrainSurrogateOptions};
use crate::pipeline::tail_map::{self, FitTailMapOptions};
use crate::pipeline::{io_err, PipelineError};
use crate::smoothing::RankRule;
use std::path::PathBuf;

pub(super) fn run_step(
    opts: &PipelineOptions,
    step: &Step,
    report_text: &mut Option<String>,
) -> Result<StepStatus, PipelineError> {
    match step {
        Step::Counts { role, chunk, .. } => {
            run_counts(opts, role, *chunk, &role.files(&opts.counts_dir))
        }
        Step::TrainSurrogate => train_surrogate(opts),
        Step::FitTailMap => fit_tail_map(opts),
        Step::Calibrate => calibrate(opts),
        Step::Certify(method) => certify(opts, *method),
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

/// A role's counts files.
fn files(opts: &PipelineOptions, role: &CountsRole) -> Vec<PathBuf> {
    role.files(&opts.counts_dir)
        .into_iter()
        .map(|(_, f)| f)
        .collect()
}

fn train_surrogate(opts: &PipelineOptions) -> Result<StepStatus, PipelineError> {
    let bundle = Bundle::load(&opts.bundle)?;
    if bundle.surrogate.is_some() {
        return Ok(StepStatus::DoneBefore);
    }
    // A named built-in architecture starts from the base's weights when the
    // base is that architecture (the paper's recipe), else from scratch; no
    // name: a copy of the base, whatever it is.
    let from_base =
        opts.arch.is_some() && bundle.base.arch.as_deref() == opts.arch.map(|a| a.name());
    let init = SurrogateInit::choose(&bundle, opts.arch, from_base)?;
    surrogate::train_surrogate(&TrainSurrogateOptions {
        bundle: opts.bundle.clone(),
        counts: files(opts, &opts.train),
        init,
        loss: opts.loss,
        margin_tail: opts.margin_tail,
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

fn fit_tail_map(opts: &PipelineOptions) -> Result<StepStatus, PipelineError> {
    let bundle = Bundle::load(&opts.bundle)?;
    let input = bundle.input_shape;
    if bundle.surrogate.is_some_and(|s| s.tail_map.is_some()) {
        return Ok(StepStatus::DoneBefore);
    }
    tail_map::fit_tail_map(&FitTailMapOptions {
        bundle: opts.bundle.clone(),
        counts: opts
            .tail
            .as_ref()
            .map(|t| files(opts, t))
            .unwrap_or_default(),
        min_inputs: tail_map::DEFAULT_MIN_INPUTS,
        batch: forward_batch(opts, input),
        data_dir: opts.data_dir.clone(),
        device: opts.device,
    })?;
    Ok(StepStatus::Ran)
}

fn calibrate(opts: &PipelineOptions) -> Result<StepStatus, PipelineError> {
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
            crate::pipeline::bundle_dataset(&bundle, Split::Test, opts.data_dir.as_deref())?;
        if calibrated_on(&bundle, &opts.calibration.indices(test.len()))? {
            return Ok(StepStatus::DoneBefore);
        }
    }
    calibrate::calibrate(&CalibrateOptions {
        bundle: opts.bundle.clone(),
        counts: files(opts, &opts.calibration),
        delta: opts.delta,
        score: opts.score,
        rank_rule: RankRule::Marginal,
        bin_edges: Vec::new(),
        margin_threshold: opts.margin_threshold,
        n0: opts.n0,
        alpha: opts.alpha,
        seed: opts.seed,
        batch: forward_batch(opts, bundle.input_shape),
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

fn certify(opts: &PipelineOptions, method: Method) -> Result<StepStatus, PipelineError> {
    let out = tsv_path(opts, method);
    let run = RunFiles::of(&out);
    let finished_before = run.is_finished();
    // Finished under a version whose parameters cannot be checked: kept.
    if run.finished_by_earlier_version() {
        return Ok(StepStatus::DoneBefore);
    }
    let input = Bundle::load(&opts.bundle)?.input_shape;
    // Otherwise certify itself checks a finished or started run against
    // these parameters and resumes it.
    let s = certify::certify(&CertifyOptions {
        bundle: opts.bundle.clone(),
        method,
        split: Split::Test,
        data_dir: opts.data_dir.clone(),
        offset: opts.eval.offset,
        skip: opts.eval.skip,
        max: opts.eval.max,
        params: CertifyParams {
            n0: opts.n0,
            // The surrogate methods, and AUTO's fallback, at the N their
            // estimates and calibration stand in for.
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

/// Samples (or resumes, or checks) each of `files`: sample-counts refuses a
/// file of another run (seed, images, base) and returns at once for one of
/// this plan that is finished.
pub(super) fn run_counts(
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
            margins: role.margins,
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
