//! `smoothcert report`: certified accuracy against radius, average certified
//! radius (ACR), abstention and time per input for one or more certify TSVs,
//! as a Markdown table (printed), `report.json` and a PNG plot.
//!
//! Every file's method is named in the table, the JSON and the legend, and
//! radii from anything but Monte Carlo are flagged as estimates: a surrogate
//! radius is not a statistical certificate, and no report may blur the two.
mod join;
mod markdown;
mod plot;
mod stats;
#[cfg(test)]
mod tests;

use super::tsv::{CertRow, TsvError};
use crate::engine::Method;
use crate::pipeline::run::RunParams;
use join::{incomparable, joined_parts, read_joined};
use markdown::{comparison_markdown, escape_md, markdown, sequential_markdown};
use plot::{draw_png, font_registered, legend_methods, step_points, PlotCurve};
use serde::Serialize;
pub use stats::{
    compare, compare_sequential, nearest_rank, summarize, Comparison, Curve, SequentialComparison,
};
use stats::{correct_radii, fraction_at, methods, radius_kind};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The radii of the table when the caller has no preference.
pub const DEFAULT_RADII: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

/// Spacing of the finely sampled curve in report.json.
const CURVE_STEP: f64 = 0.01;
const MAX_CURVE_POINTS: usize = 10_000;

const PNG_NAME: &str = "certified_accuracy.png";
const JSON_NAME: &str = "report.json";

#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Radii for the table's certified-accuracy columns.
    pub radii: Vec<f64>,
    pub out_dir: PathBuf,
}

impl ReportOptions {
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        ReportOptions {
            radii: DEFAULT_RADII.to_vec(),
            out_dir: out_dir.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no certify TSV files given")]
    NoFiles,
    #[error("radius {0} is not a finite non-negative number")]
    InvalidRadius(f64),
    #[error(transparent)]
    Tsv(#[from] TsvError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {detail}", path.display())]
    Plot { path: PathBuf, detail: String },
    #[error("{}: {detail}", path.display())]
    Join { path: PathBuf, detail: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One file's entry in report.json.
#[derive(Debug, Serialize)]
struct FileReport {
    path: PathBuf,
    #[serde(flatten)]
    summary: Curve,
    /// Each method with its row count.
    methods: BTreeMap<String, usize>,
    /// "certificate" (Monte Carlo only), "estimate" or "mixed".
    radius_kind: &'static str,
    abstain_reasons: BTreeMap<String, usize>,
    /// The largest radius among correct rows.
    max_radius: f64,
    /// (radius, certified accuracy) every `curve_step` from 0 to the largest
    /// radius over all files, for plotting.
    curve: Vec<(f64, f64)>,
    /// The run's parameters (n0, n, alpha, sigma, ...) from the `<stem>.params.json`
    /// that `certify` writes beside its TSV, when it is there: the level a
    /// certificate holds at is part of what it says.
    run_params: Option<join::Recorded>,
}

#[derive(Debug, Serialize)]
struct ReportJson<'a> {
    radii: &'a [f64],
    curve_step: f64,
    note: &'static str,
    files: Vec<FileReport>,
    comparisons: Vec<Comparison>,
    sequential: Vec<SequentialComparison>,
}

const NOTE: &str =
    "Certified accuracy at r: fraction of inputs predicted correctly with radius >= r. \
     Radii from method monte_carlo are Monte Carlo certificates at level 1 - alpha; radii from any other \
     method (surrogate) are estimates of them, not statistical guarantees.";

/// Names from file stems; where stems collide, the whole path tells them apart.
fn names(files: &[PathBuf]) -> Vec<String> {
    let stems: Vec<String> = files
        .iter()
        .map(|p| {
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string())
        })
        .collect();
    stems
        .iter()
        .zip(files)
        .map(|(s, p)| {
            if stems.iter().filter(|t| *t == s).count() > 1 {
                p.display().to_string()
            } else {
                s.clone()
            }
        })
        .collect()
}

/// Reads the TSVs, writes `report.json` and `certified_accuracy.png` into
/// `out_dir` (created if needed) and returns the Markdown table.
pub fn run_report(files: &[PathBuf], opts: &ReportOptions) -> Result<String, ReportError> {
    if files.is_empty() {
        return Err(ReportError::NoFiles);
    }
    if let Some(&bad) = opts.radii.iter().find(|r| !r.is_finite() || **r < 0.0) {
        return Err(ReportError::InvalidRadius(bad));
    }
    let firsts: Vec<PathBuf> = files.iter().map(|p| joined_parts(p)[0].clone()).collect();
    let names = names(&firsts);
    let mut all_rows = Vec::with_capacity(files.len());
    let mut all_params = Vec::with_capacity(files.len());
    for path in files {
        let (rows, params) = read_joined(path)?;
        if rows.is_empty() {
            tracing::warn!(path = %path.display(), "no rows in this TSV");
        }
        all_rows.push(rows);
        all_params.push(params);
    }
    let max_radius = all_rows
        .iter()
        .flatten()
        .filter(|r| r.correct && r.radius.is_finite())
        .map(|r| r.radius)
        .fold(0.0, f64::max);
    let grid = curve_grid(max_radius);
    let reports: Vec<FileReport> = files
        .iter()
        .zip(&names)
        .zip(&all_rows)
        .zip(all_params)
        .map(|(((path, name), rows), params)| file_report(path, name, rows, params, &grid, opts))
        .collect();
    let runs = Runs {
        names: &names,
        rows: &all_rows,
        reports: &reports,
    };
    let mut not_compared = Vec::new();
    let (comparisons, sequential) = match runs.reference() {
        Some(m) => (
            runs.comparisons(m, &opts.radii, &mut not_compared),
            runs.sequential_comparisons(m),
        ),
        None => (Vec::new(), Vec::new()),
    };
    std::fs::create_dir_all(&opts.out_dir).map_err(io_err(&opts.out_dir))?;
    let report = ReportJson {
        radii: &opts.radii,
        curve_step: grid.get(1).copied().unwrap_or(CURVE_STEP),
        note: NOTE,
        files: reports,
        comparisons,
        sequential,
    };
    write_report_json(&report, &opts.out_dir)?;
    let norm = join::report_norm(&report.files);
    write_plot(&all_rows, &names, (max_radius, norm), &opts.out_dir)?;
    let mut md = markdown(&report.files, &opts.radii, &all_rows);
    md.push_str(&comparison_markdown(&report.comparisons));
    md.push_str(&sequential_markdown(&report.sequential));
    for line in not_compared {
        md.push_str(&format!("\n{}\n", escape_md(&line)));
    }
    Ok(md)
}

/// One file's entry: its figures, methods, abstentions and fine curve.
fn file_report(
    path: &Path,
    name: &str,
    rows: &[CertRow],
    params: Option<join::Recorded>,
    grid: &[f64],
    opts: &ReportOptions,
) -> FileReport {
    let curve = summarize(name, rows, &opts.radii);
    let sorted = correct_radii(rows);
    let mut method_counts = BTreeMap::new();
    let mut reasons = BTreeMap::new();
    for r in rows {
        *method_counts.entry(r.method.to_string()).or_insert(0) += 1;
        if let Some(reason) = &r.abstain_reason {
            *reasons.entry(reason.clone()).or_insert(0) += 1;
        }
    }
    FileReport {
        path: path.to_path_buf(),
        radius_kind: radius_kind(&methods(rows)),
        methods: method_counts,
        abstain_reasons: reasons,
        max_radius: sorted.last().copied().unwrap_or(0.0),
        run_params: params,
        curve: grid
            .iter()
            .map(|&r| (r, fraction_at(&sorted, rows.len(), r)))
            .collect(),
        summary: curve,
    }
}

/// The report's files side by side, for choosing the reference and comparing.
struct Runs<'a> {
    names: &'a [String],
    rows: &'a [Vec<CertRow>],
    reports: &'a [FileReport],
}

impl Runs<'_> {
    /// The method its run recorded, when it recorded one.
    fn run_method(&self, i: usize) -> Option<Method> {
        Some(self.params(i)?.method)
    }

    fn params(&self, i: usize) -> Option<&RunParams> {
        Some(&self.reports[i].run_params.as_ref()?.params)
    }

    fn is_sequential(&self, i: usize) -> bool {
        self.run_method(i) == Some(Method::Sequential)
            || (!self.rows[i].is_empty()
                && self.rows[i].iter().all(|r| r.method == Method::Sequential))
    }

    /// The one Monte Carlo file every other file is compared with, if there
    /// is exactly one. An AUTO run is never the reference, even where every
    /// row fell back; a sequential run is compared at its target radius.
    fn reference(&self) -> Option<usize> {
        let mc: Vec<usize> = (0..self.rows.len())
            .filter(|&i| radius_kind(&methods(&self.rows[i])) == "certificate")
            .filter(|&i| !self.is_sequential(i))
            .filter(|&i| self.run_method(i) != Some(Method::Auto))
            .collect();
        match mc.as_slice() {
            [m] => Some(*m),
            _ => None,
        }
    }

    /// Every other non-sequential file against the reference `m`; files run
    /// on other terms are named in `not_compared` instead.
    fn comparisons(
        &self,
        m: usize,
        radii: &[f64],
        not_compared: &mut Vec<String>,
    ) -> Vec<Comparison> {
        (0..self.rows.len())
            .filter(|&i| i != m && !self.is_sequential(i))
            .filter(
                |&i| match incomparable(&self.reports[m], &self.reports[i]) {
                    Some(key) => {
                        not_compared.push(format!(
                            "{} is not compared with {}: their {key} differ",
                            self.names[i], self.names[m]
                        ));
                        false
                    }
                    None => true,
                },
            )
            .map(|i| {
                compare(
                    (&self.names[m], &self.rows[m]),
                    (&self.names[i], &self.rows[i]),
                    radii,
                )
            })
            .collect()
    }

    /// Every sequential file against the reference `m`, at its target radius.
    fn sequential_comparisons(&self, m: usize) -> Vec<SequentialComparison> {
        (0..self.rows.len())
            .filter(|&i| self.is_sequential(i))
            .filter_map(|i| {
                let params = self.params(i)?;
                let (radius, guided) = params.target_radius?;
                let mc_n0 = self.params(m).map_or(0, |p| p.n0);
                let surrogate_pass = params.surrogate_weights_fnv1a.is_some();
                Some(compare_sequential(
                    (&self.names[m], &self.rows[m]),
                    (&self.names[i], &self.rows[i]),
                    radius,
                    guided,
                    (mc_n0, surrogate_pass),
                ))
            })
            .collect()
    }
}

fn write_report_json(report: &ReportJson, out_dir: &Path) -> Result<(), ReportError> {
    let json_path = out_dir.join(JSON_NAME);
    let json = serde_json::to_vec_pretty(report).map_err(|e| ReportError::Io {
        path: json_path.clone(),
        source: e.into(),
    })?;
    crate::fsutil::write_atomic(&json_path, &json).map_err(io_err(&json_path))
}

/// The PNG: each file's step curve, estimates dashed, labelled with its methods.
fn write_plot(
    all_rows: &[Vec<CertRow>],
    names: &[String],
    (max_radius, norm): (f64, &str),
    out_dir: &Path,
) -> Result<(), ReportError> {
    let plot: Vec<PlotCurve> = all_rows
        .iter()
        .zip(names)
        .map(|(rows, name)| {
            let m = methods(rows);
            PlotCurve {
                label: format!("{name} [{}]", legend_methods(&m)),
                estimate: radius_kind(&m) != "certificate",
                steps: step_points(rows),
            }
        })
        .collect();
    let png_path = out_dir.join(PNG_NAME);
    let text = font_registered();
    if !text {
        tracing::warn!(
            "no TrueType font found (install fonts-dejavu-core or set SMOOTHCERT_FONT); \
             {} is drawn without axis labels or legend",
            png_path.display()
        );
    }
    let png = draw_png(&plot, max_radius, norm, text).map_err(|detail| ReportError::Plot {
        path: png_path.clone(),
        detail,
    })?;
    crate::fsutil::write_atomic(&png_path, &png).map_err(io_err(&png_path))
}

/// 0, 0.01, ... up to the first multiple of the step at or above `max`
/// (coarser if that would be more than `MAX_CURVE_POINTS` points). Each point
/// is i / 100 rather than a running sum, so 0.07 is the same double as a
/// radius printed "0.070000".
fn curve_grid(max: f64) -> Vec<f64> {
    let steps = (max / CURVE_STEP - 1e-9).ceil().max(0.0) as usize;
    if steps <= MAX_CURVE_POINTS {
        (0..=steps).map(|i| i as f64 / 100.0).collect()
    } else {
        let step = max / MAX_CURVE_POINTS as f64;
        (0..=MAX_CURVE_POINTS).map(|i| i as f64 * step).collect()
    }
}
