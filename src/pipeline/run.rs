//! A certify run's files: its TSV, the parameters it was produced with
//! (`<stem>.params.json`) and its summary (`<stem>.summary.json`, written
//! last: a run is finished when it exists). This module is the only code that
//! names, reads or writes those sidecars.
use super::{io_err, write_json, PipelineError};
use crate::data::Split;
use crate::engine::Method;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The parameters a TSV was produced with; a resumed run must match them.
/// The device is in it because it changes which noise an input draws under a
/// given seed (the forward batch does not: noise comes in seeded blocks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunParams {
    pub bundle_name: String,
    pub bundle_version: String,
    /// Fingerprint of the base weights: a retrained model under the same name is another run.
    pub base_weights_fnv1a: String,
    /// The surrogate's fingerprint too, for method surrogate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surrogate_weights_fnv1a: Option<String>,
    pub method: Method,
    pub split: Split,
    /// 0 in runs from before the option (so they still resume).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: usize,
    pub skip: usize,
    pub max: Option<usize>,
    pub n0: u64,
    pub n: u64,
    pub alpha: f64,
    #[serde(flatten)]
    pub noise: super::NoiseRecord,
    pub seed: u64,
    /// How noise is drawn: "seeded_streams_v2" (the served path, per-input
    /// request seed `engine::input_seed(seed, idx)`). Files from before it
    /// lack the key and are not resumed.
    #[serde(rename = "noise")]
    pub noise_scheme: String,
    pub device: String,
    /// Adaptive n0 (chunk, alpha); absent for fixed n0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // The key params.json files have always used.
    #[serde(rename = "adaptive")]
    pub adaptive_n0: Option<(u64, f64)>,
    /// CALIBRATED and AUTO: the calibration's (q, delta, score).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<(f64, f64, crate::smoothing::ConformalScore)>,
    /// CALIBRATED and AUTO: the estimate's margin threshold, when it blends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin_threshold: Option<f64>,
    /// AUTO: the fallback band (low, high).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_band: Option<(f64, f64)>,
    /// SEQUENTIAL and AUTO: the target radius and whether the schedule was guided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_radius: Option<(f64, bool)>,
    /// The surrogate's tail map (its ratios): refitting it changes every estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_map: Option<Vec<f64>>,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// The files of the certify run whose rows are at `tsv`.
#[derive(Debug, Clone)]
pub struct RunFiles {
    tsv: PathBuf,
}

impl RunFiles {
    pub fn of(tsv: &Path) -> RunFiles {
        RunFiles {
            tsv: tsv.to_path_buf(),
        }
    }

    pub fn tsv(&self) -> &Path {
        &self.tsv
    }

    pub fn params_path(&self) -> PathBuf {
        crate::fsutil::sidecar(&self.tsv, "params.json")
    }

    pub fn summary_path(&self) -> PathBuf {
        crate::fsutil::sidecar(&self.tsv, "summary.json")
    }

    /// The run finished: its summary is written (after every row).
    pub fn is_finished(&self) -> bool {
        self.summary_path().exists()
    }

    /// Finished (its summary written) under an earlier version, whose
    /// parameters (params.json missing, or in an older form) this one cannot
    /// check: a finished record to keep as it is, not resume.
    pub fn finished_by_earlier_version(&self) -> bool {
        self.is_finished()
            && std::fs::read_to_string(self.params_path())
                .ok()
                .and_then(|t| serde_json::from_str::<RunParams>(&t).ok())
                .is_none()
    }

    /// The parameters as written, untyped (a report copies them as they are;
    /// runs of earlier versions lack keys). `None` when there are none.
    pub fn params_json(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.params_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Starts or resumes the run with `run`: rows already in the TSV must
    /// have been produced with exactly these parameters.
    pub fn begin(&self, run: &RunParams) -> Result<(), PipelineError> {
        if let Some(parent) = self.tsv.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let params_path = self.params_path();
        let has_rows = std::fs::read_to_string(&self.tsv).is_ok_and(|t| t.lines().count() > 1);
        if has_rows && !params_path.exists() {
            return Err(PipelineError::Invalid(format!(
                "{} holds rows but {} is missing, so they cannot be checked against this run; \
                 remove the TSV or choose another --out",
                self.tsv.display(),
                params_path.display()
            )));
        }
        if has_rows {
            let text = std::fs::read_to_string(&params_path).map_err(io_err(&params_path))?;
            let previous: RunParams = serde_json::from_str(&text).map_err(|e| {
                PipelineError::Invalid(format!(
                    "{} was started with other parameters ({} is not this version's: {e}); \
                     remove it or choose another --out",
                    self.tsv.display(),
                    params_path.display()
                ))
            })?;
            if &previous != run {
                return Err(PipelineError::Invalid(format!(
                    "{} was started with other parameters ({previous:?}); \
                     remove it or choose another --out to certify with {run:?}",
                    self.tsv.display()
                )));
            }
        }
        write_json(&params_path, run)
    }

    /// Marks the run finished.
    pub fn finish(&self, summary: &impl Serialize) -> Result<(), PipelineError> {
        write_json(&self.summary_path(), summary)
    }

    /// Removes the run: its rows and both sidecars.
    pub fn remove(&self) -> Result<(), PipelineError> {
        for f in [self.tsv.clone(), self.params_path(), self.summary_path()] {
            if f.exists() {
                std::fs::remove_file(&f).map_err(io_err(&f))?;
            }
        }
        Ok(())
    }
}
