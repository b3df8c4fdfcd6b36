//! Report inputs: one certify TSV, or runs on disjoint inputs joined with
//! "+" into one, each with the parameters its run recorded.
use super::{FileReport, ReportError};
use crate::pipeline::run::{RunFiles, RunParams};
use crate::pipeline::tsv::{read_tsv, CertRow};
use std::path::{Path, PathBuf};

/// The run parameter that keeps two files from being compared input by
/// input, when both files recorded theirs (see [`RunParams::incomparable_with`]).
pub(super) fn incomparable(a: &FileReport, b: &FileReport) -> Option<&'static str> {
    let (Some(pa), Some(pb)) = (&a.run_params, &b.run_params) else {
        return None;
    };
    pa.params.incomparable_with(&pb.params)
}

/// A report input's recorded parameters: one run's, or those joined runs
/// share, with the offset of each part.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct Recorded {
    #[serde(flatten)]
    pub params: RunParams,
    /// Joined runs: each part's offset, in the order given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joined_offsets: Option<Vec<usize>>,
}

/// A report input is one certify TSV, or several joined by '+' (runs of one
/// method on disjoint inputs, such as two `--offset`s of one `--skip`),
/// reported as one run. A path that exists is never split.
pub(super) fn joined_parts(path: &Path) -> Vec<PathBuf> {
    let text = path.to_string_lossy();
    if path.exists() || !text.contains('+') {
        vec![path.to_path_buf()]
    } else {
        text.split('+').map(PathBuf::from).collect()
    }
}

/// The rows and run parameters of a report input (see [`joined_parts`]).
/// Joined runs must be the same run but for their offset, on no common
/// input.
pub(super) fn read_joined(path: &Path) -> Result<(Vec<CertRow>, Option<Recorded>), ReportError> {
    let parts = joined_parts(path);
    if parts.len() == 1 {
        let params = RunFiles::of(path).params().map(|params| Recorded {
            params,
            joined_offsets: None,
        });
        return Ok((read_tsv(path)?, params));
    }
    let join_err = |detail: String| ReportError::Join {
        path: path.to_path_buf(),
        detail,
    };
    let mut rows: Vec<CertRow> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut first: Option<RunParams> = None;
    let mut offsets = Vec::new();
    for part in &parts {
        for r in read_tsv(part)? {
            if !seen.insert(r.idx) {
                return Err(join_err(format!(
                    "input {} is in more than one joined run",
                    r.idx
                )));
            }
            rows.push(r);
        }
        let files = RunFiles::of(part);
        // An interrupted part would shrink the joined run without a word.
        if !files.is_finished() {
            return Err(join_err(format!(
                "{}: the run has no summary.json (unfinished?); only finished runs can be joined",
                part.display()
            )));
        }
        let p = files.params().ok_or_else(|| {
            join_err(format!(
                "{}: no parameters sidecar this version reads; only certify runs with \
                 their params.json can be joined",
                part.display()
            ))
        })?;
        offsets.push(p.offset);
        match &first {
            None => first = Some(p),
            Some(f) if f.same_run(&p) => {}
            Some(_) => {
                return Err(join_err(format!(
                    "{} was run with other parameters than {} (only the offset may differ)",
                    part.display(),
                    parts[0].display()
                )))
            }
        }
    }
    let params = first.map(|params| Recorded {
        params,
        joined_offsets: Some(offsets),
    });
    Ok((rows, params))
}

/// The norm the files' radii are in: their noises' one norm ("L2" when no
/// file says; "mixed" when they differ, which no comparison spans).
pub(super) fn report_norm(files: &[FileReport]) -> &'static str {
    let mut norms = files
        .iter()
        .filter_map(|f| f.run_params.as_ref()?.params.noise.noise())
        .map(|n| n.norm().as_str());
    match norms.next() {
        None => "L2",
        Some(first) if norms.all(|n| n == first) => first,
        Some(_) => "mixed",
    }
}
