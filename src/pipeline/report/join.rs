//! Report inputs: one certify TSV, or runs on disjoint inputs joined with
//! "+" into one, each with the parameters its run recorded.
use super::{FileReport, ReportError};
use crate::pipeline::run::RunFiles;
use crate::pipeline::tsv::{read_tsv, CertRow};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Two runs are comparable input by input only on the same split of the same
/// base classifier under the same noise and alpha (n may differ on purpose).
/// Returns the first run parameter that differs, when both files have them.
pub(super) fn incomparable(a: &FileReport, b: &FileReport) -> Option<&'static str> {
    let (Some(pa), Some(pb)) = (&a.run_params, &b.run_params) else {
        return None;
    };
    [
        "split",
        "base_weights_fnv1a",
        "noise_kind",
        "sigma",
        "lambda",
        "alpha",
    ]
    .into_iter()
    .find(|k| pa.get(*k) != pb.get(*k))
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
/// Joined runs must share every parameter but their offset, and no input;
/// the joined parameters list the offsets.
pub(super) fn read_joined(
    path: &Path,
) -> Result<(Vec<CertRow>, Option<serde_json::Value>), ReportError> {
    let parts = joined_parts(path);
    if parts.len() == 1 {
        return Ok((read_tsv(path)?, read_run_params(path)));
    }
    let join_err = |detail: String| ReportError::Join {
        path: path.to_path_buf(),
        detail,
    };
    let mut rows: Vec<CertRow> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut params: Option<serde_json::Value> = None;
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
        // An interrupted part would shrink the joined run without a word.
        if !RunFiles::of(part).is_finished() {
            return Err(join_err(format!(
                "{}: the run has no summary.json (unfinished?); only finished runs can be joined",
                part.display()
            )));
        }
        let mut p = read_run_params(part).ok_or_else(|| {
            join_err(format!(
                "{}: no parameters sidecar; only certify runs with their params.json can be joined",
                part.display()
            ))
        })?;
        offsets.push(
            p.as_object_mut()
                .and_then(|o| o.remove("offset"))
                .unwrap_or(serde_json::Value::from(0)),
        );
        match &params {
            None => params = Some(p),
            Some(first) if same_run(first, &p) => {}
            Some(_) => {
                return Err(join_err(format!(
                    "{} was run with other parameters than {} (only the offset may differ)",
                    part.display(),
                    parts[0].display()
                )))
            }
        }
    }
    if let Some(o) = params.as_mut().and_then(|p| p.as_object_mut()) {
        o.insert("offset".into(), serde_json::Value::from(offsets));
    }
    Ok((rows, params))
}

/// Two runs' parameters agree on what decides their answers: everything
/// but how they were executed (forward batch, device, the noise scheme's
/// version, which an earlier version's runs lack) and the method's spelling.
pub(super) fn same_run(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    const EXECUTION: [&str; 4] = ["batch", "device", "noise", "max"];
    let decisive = |v: &serde_json::Value| -> BTreeMap<String, serde_json::Value> {
        v.as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !EXECUTION.contains(&k.as_str()))
            .map(|(k, v)| {
                let v = match (k.as_str(), v.as_str()) {
                    ("method", Some(m)) => m
                        .parse::<crate::engine::Method>()
                        .map_or(v.clone(), |m| serde_json::Value::from(m.as_str())),
                    _ => v.clone(),
                };
                (k.clone(), v)
            })
            .collect()
    };
    decisive(a) == decisive(b)
}

/// `certify`'s parameters for the run at `path`, if any.
pub(super) fn read_run_params(path: &Path) -> Option<serde_json::Value> {
    RunFiles::of(path).params_json()
}

/// The noise a run recorded (runs of earlier versions: the Gaussian's sigma).
pub(super) fn run_noise(params: Option<&serde_json::Value>) -> Option<crate::smoothing::Noise> {
    serde_json::from_value::<crate::pipeline::NoiseRecord>(params?.clone())
        .ok()?
        .noise()
}

/// The norm the files' radii are in: their noises' one norm ("L2" when no
/// file says; "mixed" when they differ, which no comparison spans).
pub(super) fn report_norm(files: &[FileReport]) -> &'static str {
    let mut norms = files
        .iter()
        .filter_map(|f| run_noise(f.run_params.as_ref()))
        .map(|n| n.norm().as_str());
    match norms.next() {
        None => "L2",
        Some(first) if norms.all(|n| n == first) => first,
        Some(_) => "mixed",
    }
}
