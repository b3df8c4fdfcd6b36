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
    /// How noise is drawn. Files from before the key are read (a report
    /// still shows them) but never resumed.
    #[serde(
        rename = "noise",
        default,
        skip_serializing_if = "NoiseScheme::is_unrecorded"
    )]
    pub noise_scheme: NoiseScheme,
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

/// How a run drew its noise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseScheme {
    /// The served path: per-input request seed `engine::input_seed(seed, idx)`.
    SeededStreamsV2,
    /// A file from before the key: its noise cannot be drawn again.
    #[default]
    #[serde(skip_serializing)]
    Unrecorded,
}

impl NoiseScheme {
    fn is_unrecorded(&self) -> bool {
        *self == NoiseScheme::Unrecorded
    }
}

impl RunParams {
    /// Two runs agree on what decides their answers: everything but how
    /// they were executed (device, the noise scheme's version, which earlier
    /// runs lack, how many inputs and from which offset). A field added to
    /// `RunParams` is decisive unless it is cleared here.
    pub fn same_run(&self, other: &RunParams) -> bool {
        self.decisive() == other.decisive()
    }

    fn decisive(&self) -> RunParams {
        RunParams {
            device: String::new(),
            noise_scheme: NoiseScheme::Unrecorded,
            max: None,
            offset: 0,
            ..self.clone()
        }
    }

    /// Runs are comparable input by input only on the same split of the same
    /// base classifier under the same noise and alpha (n may differ on
    /// purpose). Names the first of those that differs.
    pub fn incomparable_with(&self, other: &RunParams) -> Option<&'static str> {
        [
            ("splits", self.split == other.split),
            (
                "base classifiers",
                self.base_weights_fnv1a == other.base_weights_fnv1a,
            ),
            ("noises", self.noise == other.noise),
            ("alphas", self.alpha == other.alpha),
        ]
        .into_iter()
        .find(|(_, same)| !same)
        .map(|(what, _)| what)
    }
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
            && self
                .params()
                .is_none_or(|p| p.noise_scheme == NoiseScheme::Unrecorded)
    }

    /// The parameters as written, also by an earlier version that drew its
    /// noise otherwise (a report shows them). `None` when there are none, or
    /// in a form this version cannot read.
    pub fn params(&self) -> Option<RunParams> {
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
            let not_this_versions = |why: String| {
                PipelineError::Invalid(format!(
                    "{} was started with other parameters ({} is not this version's: {why}); \
                     remove it or choose another --out",
                    self.tsv.display(),
                    params_path.display()
                ))
            };
            let previous: RunParams =
                serde_json::from_str(&text).map_err(|e| not_this_versions(e.to_string()))?;
            if previous.noise_scheme == NoiseScheme::Unrecorded {
                return Err(not_this_versions(
                    "it does not say how its noise was drawn".into(),
                ));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed Monte Carlo run of the shipped bundle's first report,
    /// as an earlier version wrote it: no noise scheme, a forward batch.
    const EARLIER: &str = r#"{"bundle_name": "b", "bundle_version": "1",
        "base_weights_fnv1a": "0678115a757897ad", "method": "mc", "split": "test",
        "skip": 20, "max": null, "n0": 100, "n": 10000, "alpha": 0.001,
        "sigma": 0.25, "seed": 0, "batch": 1000, "device": "Cpu"}"#;

    fn current() -> RunParams {
        let mut p: RunParams = serde_json::from_str(EARLIER).unwrap();
        p.method = Method::MonteCarlo;
        p.noise_scheme = NoiseScheme::SeededStreamsV2;
        p
    }

    #[test]
    fn same_run_ignores_only_how_a_run_was_executed() {
        let a = current();
        let executed_otherwise = RunParams {
            device: "Cuda(0)".into(),
            noise_scheme: NoiseScheme::Unrecorded,
            max: Some(7),
            offset: 3,
            ..a.clone()
        };
        assert!(a.same_run(&executed_otherwise));
        let decided_otherwise = [
            RunParams {
                n: 20_000,
                ..a.clone()
            },
            RunParams {
                seed: 1,
                ..a.clone()
            },
            RunParams {
                method: Method::Surrogate,
                ..a.clone()
            },
            RunParams {
                tail_map: Some(vec![0.0, 1.0]),
                ..a.clone()
            },
            RunParams {
                target_radius: Some((0.5, true)),
                ..a.clone()
            },
        ];
        for b in &decided_otherwise {
            assert!(!a.same_run(b), "{b:?}");
        }
    }

    #[test]
    fn incomparable_names_what_differs() {
        let a = current();
        assert_eq!(a.incomparable_with(&RunParams { n: 5, ..a.clone() }), None);
        let other_noise = RunParams {
            noise: crate::smoothing::Noise::Gaussian { sigma: 0.5 }.into(),
            ..a.clone()
        };
        assert_eq!(a.incomparable_with(&other_noise), Some("noises"));
        let other_base = RunParams {
            base_weights_fnv1a: "ffffffffffffffff".into(),
            ..a.clone()
        };
        assert_eq!(a.incomparable_with(&other_base), Some("base classifiers"));
    }

    /// An earlier version's file is read for a report, kept as a finished
    /// record, and never resumed.
    #[test]
    fn an_earlier_versions_run_is_read_but_not_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let files = RunFiles::of(&dir.path().join("mc.tsv"));
        std::fs::write(files.tsv(), "header\nrow\n").unwrap();
        std::fs::write(files.params_path(), EARLIER).unwrap();
        let read = files.params().unwrap();
        assert_eq!(read.method, Method::MonteCarlo);
        assert_eq!(read.noise_scheme, NoiseScheme::Unrecorded);
        assert!(read.same_run(&current()));
        assert!(!files.finished_by_earlier_version(), "not finished yet");
        std::fs::write(files.summary_path(), "{}").unwrap();
        assert!(files.finished_by_earlier_version());
        let err = files.begin(&current()).unwrap_err().to_string();
        assert!(
            err.contains("does not say how its noise was drawn"),
            "{err}"
        );
        // This version's record round-trips and resumes.
        std::fs::write(
            files.params_path(),
            serde_json::to_string(&current()).unwrap(),
        )
        .unwrap();
        assert_eq!(files.params(), Some(current()));
        assert!(!files.finished_by_earlier_version());
        files.begin(&current()).unwrap();
    }
}
