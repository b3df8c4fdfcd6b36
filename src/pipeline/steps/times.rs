//! Where a pipeline's time went: seconds per step over all runs, killed ones
//! included (a heartbeat writes a running step's time), and counts workers'.
use super::{PipelineOptions, StepStatus};
use crate::pipeline::{write_json, PipelineError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Seconds per step over all runs of one process role (the main run, or
/// one counts worker), kept beside the summary.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(super) struct Times {
    pub(super) seconds: BTreeMap<String, f64>,
}

pub(super) const TIMES_FILE: &str = "pipeline_times.json";
pub(super) const TIMES_WORKER_PREFIX: &str = "pipeline_times.worker-";
/// How often a running step's time is written, so a killed run keeps it.
pub(super) const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(15);

impl Times {
    /// Each worker keeps its own file: pods on one volume never write one file.
    pub(super) fn path(opts: &PipelineOptions) -> PathBuf {
        opts.reports_dir.join(match opts.counts_worker {
            Some(w) => format!("{TIMES_WORKER_PREFIX}{}-of-{}.json", w.index, w.count),
            None => TIMES_FILE.into(),
        })
    }

    pub(super) fn read(path: &Path) -> Times {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Times::default();
        };
        serde_json::from_str(&text).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), error = %e, "unreadable step times; starting them over");
            Times::default()
        })
    }

    /// A record, not a result: failing to write it never fails a step.
    pub(super) fn write(&self, path: &Path) {
        if let Err(e) = write_json(path, self) {
            tracing::warn!(file = %path.display(), error = %e, "could not record step times");
        }
    }

    /// This role's seconds plus every counts worker's.
    pub(super) fn with_workers(&self, dir: &Path) -> Times {
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
pub(super) fn timed(
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
