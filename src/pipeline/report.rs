//! `smoothcert report`: certified accuracy against radius, average certified
//! radius (ACR), abstention and time per input for one or more certify TSVs,
//! as a Markdown table (printed), `report.json` and a PNG plot.
//!
//! Every file's method is named in the table, the JSON and the legend, and
//! radii from anything but Monte Carlo are flagged as estimates: a surrogate
//! radius is not a statistical certificate (DESIGN.md's honesty rule).
use super::tsv::{read_tsv, CertRow, TsvError};
use crate::engine::Method;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The radii of the table when the caller has no preference.
pub const DEFAULT_RADII: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

/// The methods whose radii are certificates (level 1 - alpha); any other
/// method's radius is reported as an estimate.
const CERTIFICATE_METHODS: [&str; 2] = ["monte_carlo", "sequential"];

/// Spacing of the finely sampled curve in report.json.
const CURVE_STEP: f64 = 0.01;
const MAX_CURVE_POINTS: usize = 10_000;

const PLOT_SIZE: (u32, u32) = (900, 600);
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

/// The figures of one TSV.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Curve {
    /// From the file stem.
    pub name: String,
    /// The methods in the file's rows, in order of first appearance, joined by "+".
    pub method: String,
    pub rows: usize,
    /// (radius, fraction of rows with `correct && radius >= r`) for each requested radius.
    pub certified_accuracy: Vec<(f64, f64)>,
    /// Mean over rows of (radius if correct else 0).
    pub acr: f64,
    /// Fraction of rows with predict == -1.
    pub abstention_rate: f64,
    pub median_seconds: f64,
    /// What a run costs per input on average (AUTO's fallbacks show here, not in the median).
    pub mean_seconds: f64,
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

/// Certified radii of the correct rows, ascending: certified accuracy at r
/// is the count of these that are >= r, over all rows.
fn correct_radii(rows: &[CertRow]) -> Vec<f64> {
    let mut radii: Vec<f64> = rows
        .iter()
        .filter(|r| r.correct)
        .map(|r| r.radius)
        .collect();
    radii.sort_by(f64::total_cmp);
    radii
}

fn fraction_at(sorted: &[f64], total: usize, r: f64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let below = sorted.partition_point(|&x| x < r);
    (sorted.len() - below) as f64 / total as f64
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn methods(rows: &[CertRow]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for r in rows {
        if !seen.iter().any(|m| m == r.method.as_str()) {
            seen.push(r.method.to_string());
        }
    }
    seen
}

fn is_certificate(method: &str) -> bool {
    CERTIFICATE_METHODS.contains(&method)
}

/// "certificate", "estimate" or "mixed" for a file's methods.
fn radius_kind(methods: &[String]) -> &'static str {
    let certs = methods.iter().filter(|m| is_certificate(m)).count();
    match (certs, methods.len()) {
        (_, 0) => "none",
        (c, n) if c == n => "certificate",
        (0, _) => "estimate",
        _ => "mixed",
    }
}

/// The method column: each method, with estimates marked as such.
fn method_label(methods: &[String]) -> String {
    if methods.is_empty() {
        return "-".into();
    }
    methods
        .iter()
        .map(|m| {
            if is_certificate(m) {
                m.clone()
            } else {
                format!("{m} (estimate)")
            }
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// The legend's method note: "mc: certificate", "surrogate: estimate".
fn legend_methods(methods: &[String]) -> String {
    methods
        .iter()
        .map(|m| {
            let kind = if is_certificate(m) {
                "certificate"
            } else {
                "estimate"
            };
            format!("{m}: {kind}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The figures of one file's rows. Empty input gives zeros rather than NaN
/// so that the JSON stays valid.
pub fn summarize(name: &str, rows: &[CertRow], radii: &[f64]) -> Curve {
    let n = rows.len();
    let frac = |count: usize| if n == 0 { 0.0 } else { count as f64 / n as f64 };
    let sorted = correct_radii(rows);
    let acr_sum: f64 = rows.iter().filter(|r| r.correct).map(|r| r.radius).sum();
    Curve {
        name: name.to_string(),
        method: methods(rows).join("+"),
        rows: n,
        certified_accuracy: radii
            .iter()
            .map(|&r| (r, fraction_at(&sorted, n, r)))
            .collect(),
        acr: if n == 0 { 0.0 } else { acr_sum / n as f64 },
        abstention_rate: frac(rows.iter().filter(|r| r.predict == -1).count()),
        median_seconds: median(rows.iter().map(|r| r.time).collect()),
        mean_seconds: if n == 0 {
            0.0
        } else {
            rows.iter().map(|r| r.time).sum::<f64>() / n as f64
        },
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
    run_params: Option<serde_json::Value>,
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

/// A sequential run at a target radius against the Monte Carlo certificate
/// on the same inputs: both are certificates; the question is what each
/// certifies at the target and what it costs.
#[derive(Debug, Clone, Serialize)]
pub struct SequentialComparison {
    pub file: String,
    pub reference: String,
    pub target_radius: f64,
    /// Whether the surrogate sized the stages (false: the plain schedule).
    pub guided: Option<bool>,
    pub inputs: usize,
    /// Certified and correct at the target radius.
    pub certified_accuracy: f64,
    pub mc_certified_accuracy: f64,
    /// Inputs on which both say the same (certified-correct at the target or not).
    pub agreement: f64,
    /// Base-classifier passes per input (selection and estimation samples,
    /// plus the surrogate's pass where the run had one).
    pub mean_passes: f64,
    pub mc_mean_passes: f64,
    pub speedup_passes: f64,
    pub mean_seconds: f64,
    pub mc_mean_seconds: f64,
    pub speedup_seconds: f64,
}

/// Certified-correct at radius `eps`.
fn certified_at(r: &CertRow, eps: f64) -> bool {
    r.correct && r.radius >= eps
}

/// Compares a sequential file with the Monte Carlo reference on the inputs
/// both hold. `mc_n0` stands in for rows that predate the n0_drawn column.
pub fn compare_sequential(
    (reference, mc): (&str, &[CertRow]),
    (file, seq): (&str, &[CertRow]),
    target_radius: f64,
    guided: Option<bool>,
    (mc_n0, surrogate_pass): (u64, bool),
) -> SequentialComparison {
    let by_idx: BTreeMap<usize, &CertRow> = mc.iter().map(|r| (r.idx, r)).collect();
    let pairs: Vec<(&CertRow, &CertRow)> = seq
        .iter()
        .filter_map(|s| by_idx.get(&s.idx).map(|m| (*m, s)))
        .collect();
    let n = pairs.len().max(1) as f64;
    let frac = |f: &dyn Fn(&(&CertRow, &CertRow)) -> bool| {
        pairs.iter().filter(|p| f(p)).count() as f64 / n
    };
    let mean = |f: &dyn Fn(&(&CertRow, &CertRow)) -> f64| pairs.iter().map(f).sum::<f64>() / n;
    let extra = u64::from(surrogate_pass);
    let mean_passes = mean(&|(_, s)| (s.n0_drawn.unwrap_or(mc_n0) + s.n + extra) as f64);
    let mc_mean_passes = mean(&|(m, _)| (m.n0_drawn.unwrap_or(mc_n0) + m.n) as f64);
    let mean_seconds = mean(&|(_, s)| s.time);
    let mc_mean_seconds = mean(&|(m, _)| m.time);
    SequentialComparison {
        file: file.to_string(),
        reference: reference.to_string(),
        target_radius,
        guided,
        inputs: pairs.len(),
        certified_accuracy: frac(&|(_, s)| certified_at(s, target_radius)),
        mc_certified_accuracy: frac(&|(m, _)| certified_at(m, target_radius)),
        agreement: frac(&|(m, s)| certified_at(m, target_radius) == certified_at(s, target_radius)),
        mean_passes,
        mc_mean_passes,
        speedup_passes: mc_mean_passes / mean_passes.max(f64::MIN_POSITIVE),
        mean_seconds,
        mc_mean_seconds,
        speedup_seconds: mc_mean_seconds / mean_seconds.max(f64::MIN_POSITIVE),
    }
}

fn sequential_markdown(rows: &[SequentialComparison]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\nSequential certificates at a target radius (exact, level alpha) against Monte Carlo on the same inputs:\n\n\
         | file | target | schedule | inputs | certified at target | Monte Carlo | gap (pp) | agreement | mean passes | Monte Carlo passes | speedup (passes) | speedup (time) |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:+.1} | {:.1} | {:.0} | {:.0} | {:.1}x | {:.1}x |\n",
            escape_md(&c.file),
            c.target_radius,
            match c.guided {
                Some(true) => "guided",
                Some(false) => "plain",
                None => "?",
            },
            c.inputs,
            100.0 * c.certified_accuracy,
            100.0 * c.mc_certified_accuracy,
            100.0 * (c.certified_accuracy - c.mc_certified_accuracy),
            100.0 * c.agreement,
            c.mean_passes,
            c.mc_mean_passes,
            c.speedup_passes,
            c.speedup_seconds,
        ));
    }
    md
}

/// An estimate (surrogate) against the Monte Carlo certificate on the inputs both certified.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub reference: String,
    pub estimate: String,
    pub common_inputs: usize,
    /// (radius, estimate's certified accuracy minus the reference's, in percentage points).
    pub certified_accuracy_gap_pp: Vec<(f64, f64)>,
    /// Estimate's ACR minus the reference's.
    pub acr_gap: f64,
    /// Fraction of inputs with the same prediction (abstentions included).
    pub prediction_agreement: f64,
    /// Fraction of inputs whose estimated radius exceeds the certified one.
    pub overestimation_rate: f64,
    /// 95th percentile of the excess (estimate - certificate) over those inputs; 0 if none.
    pub overestimation_p95: f64,
    pub overestimation_count: usize,
    /// Two-sided 95% Clopper-Pearson interval of the overestimation rate.
    pub overestimation_ci95: (f64, f64),
    /// The estimate file's methods, with row counts (AUTO: calibrated and mc).
    pub estimate_methods: BTreeMap<String, usize>,
    /// Fraction of the estimate's rows that Monte Carlo answered, for a file
    /// that mixes methods (AUTO's fallbacks); None otherwise.
    pub fallback_fraction: Option<f64>,
    /// Fraction of inputs where both runs chose the same cA (when both TSVs say).
    pub class_a_agreement: Option<f64>,
    /// Mean selection samples drawn per input (when the TSV says).
    pub mean_n0_drawn_reference: Option<f64>,
    pub mean_n0_drawn_estimate: Option<f64>,
    pub mean_seconds_reference: f64,
    pub mean_seconds_estimate: f64,
    /// Reference mean seconds per input over the estimate's: the cost ratio
    /// when the estimate's time varies (AUTO).
    pub speedup_mean: f64,
    pub median_seconds_reference: f64,
    pub median_seconds_estimate: f64,
    /// Reference median seconds per input over the estimate's.
    pub speedup: f64,
}

/// The q-quantile of ascending, non-empty `sorted` by the nearest-rank rule
/// (the ceil(q * len)-th smallest).
pub fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Compares `estimate` rows with `reference` (Monte Carlo) rows on their common inputs.
pub fn compare(
    reference: (&str, &[CertRow]),
    estimate: (&str, &[CertRow]),
    radii: &[f64],
) -> Comparison {
    let by_idx: BTreeMap<usize, &CertRow> = reference.1.iter().map(|r| (r.idx, r)).collect();
    let pairs: Vec<(&CertRow, &CertRow)> = estimate
        .1
        .iter()
        .filter_map(|e| by_idx.get(&e.idx).map(|r| (*r, e)))
        .collect();
    let refs: Vec<CertRow> = pairs.iter().map(|(r, _)| (*r).clone()).collect();
    let ests: Vec<CertRow> = pairs.iter().map(|(_, e)| (*e).clone()).collect();
    let (cr, ce) = (
        summarize(reference.0, &refs, radii),
        summarize(estimate.0, &ests, radii),
    );
    let n = pairs.len().max(1) as f64;
    let mut excess: Vec<f64> = pairs
        .iter()
        .map(|(r, e)| e.radius - r.radius)
        .filter(|d| *d > 0.0)
        .collect();
    excess.sort_by(f64::total_cmp);
    let p95 = if excess.is_empty() {
        0.0
    } else {
        nearest_rank(&excess, 0.95)
    };
    let over = excess.len() as u64;
    let ci = if pairs.is_empty() {
        (0.0, 1.0)
    } else {
        let total = pairs.len() as u64;
        (
            crate::smoothing::clopper_pearson_lower(over, total, 0.025).unwrap_or(0.0),
            crate::smoothing::clopper_pearson_upper(over, total, 0.025).unwrap_or(1.0),
        )
    };
    let mut estimate_methods = BTreeMap::new();
    for (_, e) in &pairs {
        *estimate_methods.entry(e.method.to_string()).or_insert(0) += 1;
    }
    let fallback_fraction = (estimate_methods.len() > 1).then(|| {
        estimate_methods
            .iter()
            .filter(|(m, _)| is_certificate(m))
            .map(|(_, c)| *c)
            .sum::<usize>() as f64
            / n
    });
    let both_a: Vec<(usize, usize)> = pairs
        .iter()
        .filter_map(|(r, e)| Some((r.class_a?, e.class_a?)))
        .collect();
    let mean_drawn = |rows: &[CertRow]| -> Option<f64> {
        let d: Vec<u64> = rows.iter().filter_map(|r| r.n0_drawn).collect();
        (!d.is_empty()).then(|| d.iter().sum::<u64>() as f64 / d.len() as f64)
    };
    Comparison {
        overestimation_count: excess.len(),
        overestimation_ci95: ci,
        estimate_methods,
        fallback_fraction,
        class_a_agreement: (!both_a.is_empty())
            .then(|| both_a.iter().filter(|(a, b)| a == b).count() as f64 / both_a.len() as f64),
        mean_n0_drawn_reference: mean_drawn(&refs),
        mean_n0_drawn_estimate: mean_drawn(&ests),
        mean_seconds_reference: cr.mean_seconds,
        mean_seconds_estimate: ce.mean_seconds,
        speedup_mean: if ce.mean_seconds > 0.0 {
            cr.mean_seconds / ce.mean_seconds
        } else {
            f64::INFINITY
        },
        reference: reference.0.to_string(),
        estimate: estimate.0.to_string(),
        common_inputs: pairs.len(),
        certified_accuracy_gap_pp: cr
            .certified_accuracy
            .iter()
            .zip(&ce.certified_accuracy)
            .map(|((r, a), (_, b))| (*r, 100.0 * (b - a)))
            .collect(),
        acr_gap: ce.acr - cr.acr,
        prediction_agreement: pairs.iter().filter(|(r, e)| r.predict == e.predict).count() as f64
            / n,
        overestimation_rate: excess.len() as f64 / n,
        overestimation_p95: p95,
        median_seconds_reference: cr.median_seconds,
        median_seconds_estimate: ce.median_seconds,
        speedup: if ce.median_seconds > 0.0 {
            cr.median_seconds / ce.median_seconds
        } else {
            f64::INFINITY
        },
    }
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

    let mut reports = Vec::with_capacity(files.len());
    for (((path, name), rows), params) in files.iter().zip(&names).zip(&all_rows).zip(all_params) {
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
        reports.push(FileReport {
            path: path.clone(),
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
        });
    }

    // With one Monte Carlo file, every other file is compared against it. An
    // AUTO run is never the reference, even where every row fell back; a
    // sequential run is compared at its target radius.
    let run_method = |i: usize| -> Option<String> {
        reports[i]
            .run_params
            .as_ref()
            .and_then(|p| p.get("method"))
            .and_then(|m| m.as_str())
            .map(str::to_string)
    };
    let is_sequential = |i: usize| {
        run_method(i).as_deref() == Some("sequential")
            || (!all_rows[i].is_empty()
                && all_rows[i].iter().all(|r| r.method == Method::Sequential))
    };
    let mc: Vec<usize> = (0..files.len())
        .filter(|&i| radius_kind(&methods(&all_rows[i])) == "certificate")
        .filter(|&i| !is_sequential(i))
        .filter(|&i| {
            reports[i]
                .run_params
                .as_ref()
                .and_then(|p| p.get("method"))
                .and_then(|m| m.as_str())
                != Some("auto")
        })
        .collect();
    let mut not_compared = Vec::new();
    let comparisons: Vec<Comparison> = match mc.as_slice() {
        [m] => (0..files.len())
            .filter(|i| i != m)
            .filter(|&i| !is_sequential(i))
            .filter(|&i| match incomparable(&reports[*m], &reports[i]) {
                Some(key) => {
                    not_compared.push(format!(
                        "{} is not compared with {}: their {key} differ",
                        names[i], names[*m]
                    ));
                    false
                }
                None => true,
            })
            .map(|i| {
                compare(
                    (&names[*m], &all_rows[*m]),
                    (&names[i], &all_rows[i]),
                    &opts.radii,
                )
            })
            .collect(),
        _ => vec![],
    };

    let sequential: Vec<SequentialComparison> = match mc.as_slice() {
        [m] => (0..files.len())
            .filter(|&i| is_sequential(i))
            .filter_map(|i| {
                let params = reports[i].run_params.as_ref();
                let target = params.and_then(|p| p.get("target_radius"));
                let radius = target.and_then(|t| t.get(0)).and_then(|v| v.as_f64())?;
                let guided = target.and_then(|t| t.get(1)).and_then(|v| v.as_bool());
                let mc_n0 = reports[*m]
                    .run_params
                    .as_ref()
                    .and_then(|p| p.get("n0"))
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0);
                let surrogate_pass =
                    params.is_some_and(|p| p.get("surrogate_weights_fnv1a").is_some());
                Some(compare_sequential(
                    (&names[*m], &all_rows[*m]),
                    (&names[i], &all_rows[i]),
                    radius,
                    guided,
                    (mc_n0, surrogate_pass),
                ))
            })
            .collect(),
        _ => vec![],
    };

    std::fs::create_dir_all(&opts.out_dir).map_err(io_err(&opts.out_dir))?;
    let json_path = opts.out_dir.join(JSON_NAME);
    let report = ReportJson {
        radii: &opts.radii,
        curve_step: grid.get(1).copied().unwrap_or(CURVE_STEP),
        note: NOTE,
        files: reports,
        comparisons,
        sequential,
    };
    let json = serde_json::to_vec_pretty(&report).map_err(|e| ReportError::Io {
        path: json_path.clone(),
        source: e.into(),
    })?;
    crate::fsutil::write_atomic(&json_path, &json).map_err(io_err(&json_path))?;

    let plot: Vec<PlotCurve> = all_rows
        .iter()
        .zip(&names)
        .map(|(rows, name)| {
            let m = methods(rows);
            PlotCurve {
                label: format!("{name} [{}]", legend_methods(&m)),
                estimate: radius_kind(&m) != "certificate",
                steps: step_points(rows),
            }
        })
        .collect();
    let png_path = opts.out_dir.join(PNG_NAME);
    let text = font_registered();
    if !text {
        tracing::warn!(
            "no TrueType font found (install fonts-dejavu-core or set SMOOTHCERT_FONT); \
             {} is drawn without axis labels or legend",
            png_path.display()
        );
    }
    let png = draw_png(&plot, max_radius, text).map_err(|detail| ReportError::Plot {
        path: png_path.clone(),
        detail,
    })?;
    crate::fsutil::write_atomic(&png_path, &png).map_err(io_err(&png_path))?;

    let mut md = markdown(&report.files, &opts.radii, &all_rows);
    md.push_str(&comparison_markdown(&report.comparisons));
    md.push_str(&sequential_markdown(&report.sequential));
    for line in not_compared {
        md.push_str(&format!("\n{}\n", escape_md(&line)));
    }
    Ok(md)
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

fn escape_md(s: &str) -> String {
    s.replace('|', "\\|")
}

/// Two runs are comparable input by input only on the same split of the same
/// base classifier at the same sigma and alpha (n may differ on purpose).
/// Returns the first run parameter that differs, when both files have them.
fn incomparable(a: &FileReport, b: &FileReport) -> Option<&'static str> {
    let (Some(pa), Some(pb)) = (&a.run_params, &b.run_params) else {
        return None;
    };
    ["split", "base_weights_fnv1a", "sigma", "alpha"]
        .into_iter()
        .find(|k| pa.get(*k) != pb.get(*k))
}

fn comparison_markdown(comparisons: &[Comparison]) -> String {
    let mut out = String::new();
    for c in comparisons {
        let methods = c
            .estimate_methods
            .iter()
            .map(|(m, k)| format!("{m} {k}"))
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "\n{} ({methods}) against {} (Monte Carlo certificate), {} common inputs:\n\n",
            escape_md(&c.estimate),
            escape_md(&c.reference),
            c.common_inputs
        ));
        out.push_str("| r | certified accuracy gap (pp) |\n| ---: | ---: |\n");
        for (r, gap) in &c.certified_accuracy_gap_pp {
            out.push_str(&format!("| {r} | {gap:+.1} |\n"));
        }
        out.push_str(&format!(
            "\nACR gap {:+.3}; prediction agreement {:.1}%; overestimation: {:.1}% of inputs \
             ({} of {}, 95% CI {:.1}-{:.1}%) get a larger radius than their certificate \
             (95th percentile of the excess {:.3}); speedup {:.1}x by median seconds per input \
             ({:.4} s vs {:.4} s), {:.1}x by mean ({:.4} s vs {:.4} s), as the two certify runs \
             measured them.\n",
            c.acr_gap,
            100.0 * c.prediction_agreement,
            100.0 * c.overestimation_rate,
            c.overestimation_count,
            c.common_inputs,
            100.0 * c.overestimation_ci95.0,
            100.0 * c.overestimation_ci95.1,
            c.overestimation_p95,
            c.speedup,
            c.median_seconds_reference,
            c.median_seconds_estimate,
            c.speedup_mean,
            c.mean_seconds_reference,
            c.mean_seconds_estimate
        ));
        if let Some(f) = c.fallback_fraction {
            out.push_str(&format!(
                "Monte Carlo answered {:.1}% of these inputs (fallbacks).\n",
                100.0 * f
            ));
        }
        if let Some(a) = c.class_a_agreement {
            out.push_str(&format!(
                "Same cA in both runs: {:.1}% of inputs.",
                100.0 * a
            ));
            if let (Some(r), Some(e)) = (c.mean_n0_drawn_reference, c.mean_n0_drawn_estimate) {
                out.push_str(&format!(
                    " Selection samples per input: {r:.1} (reference) vs {e:.1}."
                ));
            }
            out.push('\n');
        }
    }
    // The price of the coverage statement: calibrated against the plain surrogate.
    let only = |m: &'static str| {
        comparisons
            .iter()
            .filter(move |c| c.estimate_methods.len() == 1 && c.estimate_methods.contains_key(m))
    };
    let Some(sur) = only("surrogate").next() else {
        return out;
    };
    for cal in only("calibrated") {
        out.push_str(&format!(
            "\nCertified-accuracy cost of calibration ({} minus {}, pp):\n\n| r | cost |\n| ---: | ---: |\n",
            escape_md(&cal.estimate),
            escape_md(&sur.estimate)
        ));
        for ((r, a), (_, b)) in cal
            .certified_accuracy_gap_pp
            .iter()
            .zip(&sur.certified_accuracy_gap_pp)
        {
            out.push_str(&format!("| {r} | {:+.1} |\n", a - b));
        }
    }
    out
}

/// A report input is one certify TSV, or several joined by '+' (runs of one
/// method on disjoint inputs, such as two `--offset`s of one `--skip`),
/// reported as one run. A path that exists is never split.
fn joined_parts(path: &Path) -> Vec<PathBuf> {
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
fn read_joined(path: &Path) -> Result<(Vec<CertRow>, Option<serde_json::Value>), ReportError> {
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
        if !crate::fsutil::sidecar(part, "summary.json").exists() {
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
fn same_run(a: &serde_json::Value, b: &serde_json::Value) -> bool {
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

/// `certify`'s parameter sidecar for `path` (`x.tsv` -> `x.params.json`), if any.
fn read_run_params(path: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(crate::fsutil::sidecar(path, "params.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn markdown(files: &[FileReport], radii: &[f64], all_rows: &[Vec<CertRow>]) -> String {
    let mut head = vec!["file".to_string(), "method".into(), "inputs".into()];
    head.extend(radii.iter().map(|r| format!("r = {r}")));
    head.extend(["ACR".into(), "abstain %".into(), "median s/input".into()]);
    let mut out = format!("| {} |\n", head.join(" | "));
    let align: Vec<&str> = head
        .iter()
        .enumerate()
        .map(|(i, _)| if i < 2 { "---" } else { "---:" })
        .collect();
    out.push_str(&format!("| {} |\n", align.join(" | ")));
    let mut any_estimate = false;
    for (f, rows) in files.iter().zip(all_rows) {
        let m = methods(rows);
        any_estimate |= radius_kind(&m) != "certificate" && !m.is_empty();
        let c = &f.summary;
        let mut cells = vec![
            escape_md(&c.name),
            escape_md(&method_label(&m)),
            c.rows.to_string(),
        ];
        cells.extend(
            c.certified_accuracy
                .iter()
                .map(|(_, frac)| format!("{:.1}", 100.0 * frac)),
        );
        cells.push(format!("{:.3}", c.acr));
        cells.push(format!("{:.1}", 100.0 * c.abstention_rate));
        cells.push(format!("{:.4}", c.median_seconds));
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out.push_str(
        "\nColumns r = ...: certified accuracy (%) at that L2 radius; ACR: average certified radius.\n",
    );
    for f in files {
        if let Some(p) = &f.run_params {
            let field = |k: &str| p.get(k).map_or("?".to_string(), |v| v.to_string());
            let n_kind = if f.radius_kind == "certificate" {
                "n"
            } else {
                "nominal n"
            };
            out.push_str(&format!(
                "{}: n0 = {}, {n_kind} = {}, alpha = {}, sigma = {}",
                escape_md(&f.summary.name),
                field("n0"),
                field("n"),
                field("alpha"),
                field("sigma")
            ));
            // CALIBRATED and AUTO: (q, delta, score), and AUTO's band.
            if let Some(c) = p.get("calibration").and_then(|c| c.as_array()) {
                let at = |i: usize| c.get(i).map_or("?".to_string(), |v| v.to_string());
                out.push_str(&format!(
                    ", calibration delta = {}, score {}, q = {}",
                    at(1),
                    at(2).trim_matches('"'),
                    at(0)
                ));
                if let Some(t) = p.get("margin_threshold").and_then(|t| t.as_f64()) {
                    out.push_str(&format!(
                        " on the selection margin's estimate below z = {t} (the surrogate above)"
                    ));
                }
            }
            if let Some(b) = p.get("auto_band").and_then(|b| b.as_array()) {
                let at = |i: usize| b.get(i).map_or("?".to_string(), |v| v.to_string());
                out.push_str(&format!(", AUTO band [{}, {}]", at(0), at(1)));
            }
            out.push('\n');
        }
    }
    if any_estimate {
        out.push_str(
            "Radii marked (estimate) come from the surrogate: estimates of the Monte Carlo \
             certificate, not statistical guarantees.\n",
        );
    }
    out
}

/// One file's curve for the plot.
struct PlotCurve {
    label: String,
    /// Drawn dashed: not a certificate.
    estimate: bool,
    steps: Vec<(f64, f64)>,
}

/// The exact step function r -> certified accuracy: flat up to each distinct
/// radius (inclusive), then down to the fraction certified beyond it.
fn step_points(rows: &[CertRow]) -> Vec<(f64, f64)> {
    let n = rows.len();
    let sorted = correct_radii(rows);
    let mut points = vec![(0.0, fraction_at(&sorted, n, 0.0))];
    let mut i = 0;
    while i < sorted.len() {
        let r = sorted[i];
        while i < sorted.len() && sorted[i] == r {
            i += 1;
        }
        let level = if n == 0 {
            0.0
        } else {
            (sorted.len() - i) as f64 / n as f64
        };
        if r > 0.0 {
            points.push((r, points.last().map_or(0.0, |p| p.1)));
        }
        points.push((r.max(0.0), level));
    }
    points
}

/// Paths tried for a sans-serif TrueType font, after `$SMOOTHCERT_FONT`.
const FONT_CANDIDATES: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers a font as "sans-serif" with plotters once per process (the
/// ab_glyph backend has no built-in font and needs `'static` bytes, hence
/// the leak of one font file). Returns whether text can be drawn.
fn font_registered() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let env = std::env::var_os("SMOOTHCERT_FONT").map(PathBuf::from);
        let candidates = env
            .into_iter()
            .chain(FONT_CANDIDATES.iter().map(PathBuf::from));
        for path in candidates {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font(
                "sans-serif",
                plotters::style::FontStyle::Normal,
                bytes,
            )
            .is_ok()
            {
                tracing::debug!(font = %path.display(), "registered plot font");
                return true;
            }
            tracing::warn!(font = %path.display(), "not a usable TrueType font");
        }
        false
    })
}

const COLORS: [plotters::style::RGBColor; 8] = [
    plotters::style::RGBColor(31, 119, 180),
    plotters::style::RGBColor(214, 39, 40),
    plotters::style::RGBColor(44, 160, 44),
    plotters::style::RGBColor(255, 127, 14),
    plotters::style::RGBColor(148, 103, 189),
    plotters::style::RGBColor(140, 86, 75),
    plotters::style::RGBColor(227, 119, 194),
    plotters::style::RGBColor(23, 190, 207),
];

/// Draws the curves into a PNG in memory. Without `text`, no caption, axis
/// labels or legend are drawn (plotters fails on text with no font), but the
/// curves and grid still are.
fn draw_png(curves: &[PlotCurve], max_radius: f64, text: bool) -> Result<Vec<u8>, String> {
    use plotters::prelude::*;
    let (w, h) = PLOT_SIZE;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    let x_max = if max_radius > 0.0 {
        max_radius * 1.05
    } else {
        1.0
    };
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(20);
        if text {
            // With an estimate on the plot the title says so: its curve is not certified.
            let caption = if curves.iter().any(|c| c.estimate) {
                "Certified accuracy vs L2 radius (dashed: surrogate estimates)"
            } else {
                "Certified accuracy vs L2 radius"
            };
            builder
                .caption(caption, ("sans-serif", 26))
                .x_label_area_size(55)
                .y_label_area_size(75);
        }
        let mut chart = builder
            .build_cartesian_2d(0f64..x_max, 0f64..1.02f64)
            .map_err(|e| e.to_string())?;
        let percent = |v: &f64| format!("{:.0}%", v * 100.0);
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("radius (L2)")
                .y_desc("certified accuracy")
                .label_style(("sans-serif", 16))
                .axis_desc_style(("sans-serif", 18))
                .y_label_formatter(&percent);
        }
        mesh.draw().map_err(|e| e.to_string())?;
        for (i, c) in curves.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mut points = c.steps.clone();
            // Carry the last level to the right edge so curves end together.
            if let Some(&(_, y)) = points.last() {
                points.push((x_max, y));
            }
            let style = color.stroke_width(2);
            let series = if c.estimate {
                chart.draw_series(DashedLineSeries::new(points, 10, 6, style))
            } else {
                chart.draw_series(LineSeries::new(points, style))
            }
            .map_err(|e| e.to_string())?;
            if text {
                let estimate = c.estimate;
                series.label(c.label.as_str()).legend(move |(x, y)| {
                    let ends = vec![(x, y), (x + 28, y)];
                    if estimate {
                        plotters::element::DashedPathElement::new(ends, 8, 5, style).into_dyn()
                    } else {
                        PathElement::new(ends, style).into_dyn()
                    }
                });
            }
        }
        if text {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font(("sans-serif", 16))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or("plot buffer has the wrong size")?;
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(png.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::too_many_arguments)]
    fn row(idx: usize, label: i64, predict: i64, radius: f64, time: f64, method: &str) -> CertRow {
        let abstain = predict == -1;
        CertRow {
            idx,
            label,
            predict,
            radius,
            correct: predict == label,
            time,
            method: method.parse().expect("a method name"),
            count_a: 0,
            n: 1000,
            p_a_lower: 0.9,
            abstain_reason: abstain.then(|| "low_confidence".into()),
            delta: None,
            class_a: None,
            n0_drawn: None,
        }
    }

    #[test]
    fn sequential_against_monte_carlo_by_hand() {
        // Monte Carlo: n = 1000 each (n0 20 from its parameters), times 1 s.
        let mc = vec![
            row(0, 1, 1, 0.6, 1.0, "monte_carlo"), // certified at 0.5
            row(1, 1, 1, 0.4, 1.0, "monte_carlo"), // not at 0.5
            row(2, 1, -1, 0.0, 1.0, "monte_carlo"),
            row(3, 2, 1, 0.9, 1.0, "monte_carlo"), // wrong class
        ];
        let seq_row = |idx, label, predict, radius, n, time| CertRow {
            n,
            n0_drawn: Some(20),
            ..row(idx, label, predict, radius, time, "sequential")
        };
        let seq = vec![
            seq_row(0, 1, 1, 0.55, 100, 0.1), // agrees
            seq_row(1, 1, 1, 0.52, 400, 0.2), // certifies where MC did not
            seq_row(2, 1, -1, 0.0, 50, 0.1),  // agrees (abstains)
            seq_row(9, 1, 1, 0.7, 100, 0.1),  // no Monte Carlo row: left out
        ];
        let c = compare_sequential(("mc", &mc), ("seq", &seq), 0.5, Some(true), (20, true));
        assert_eq!(c.inputs, 3);
        assert!((c.certified_accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.mc_certified_accuracy - 1.0 / 3.0).abs() < 1e-12);
        assert!((c.agreement - 2.0 / 3.0).abs() < 1e-12);
        // Passes: (20 + 100 + 1) + (20 + 400 + 1) + (20 + 50 + 1) over 3; Monte Carlo 1020.
        assert!((c.mean_passes - 613.0 / 3.0).abs() < 1e-9);
        assert!((c.mc_mean_passes - 1020.0).abs() < 1e-9);
        assert!((c.speedup_passes - 1020.0 * 3.0 / 613.0).abs() < 1e-9);
        assert!((c.speedup_seconds - 1.0 / (0.4 / 3.0)).abs() < 1e-9);
        let md = sequential_markdown(&[c]);
        assert!(
            md.contains("| seq | 0.5 | guided | 3 | 66.7 | 33.3 | +33.3 | 66.7 |"),
            "{md}"
        );
    }

    /// Eight rows, figures worked out by hand:
    /// correct radii 0.1, 0.25, 0.5, 0.9; one wrong prediction (radius 0.7);
    /// three abstentions.
    fn rows() -> Vec<CertRow> {
        vec![
            row(0, 3, 3, 0.1, 0.4, "mc"),
            row(1, 3, 3, 0.25, 0.1, "mc"),
            row(2, 1, 1, 0.5, 0.2, "mc"),
            row(3, 0, 0, 0.9, 0.8, "mc"),
            row(4, 2, 5, 0.7, 0.3, "mc"),
            row(5, 2, -1, 0.0, 0.6, "mc"),
            row(6, 4, -1, 0.0, 0.5, "mc"),
            row(7, 7, -1, 0.0, 0.7, "mc"),
        ]
    }

    #[test]
    fn comparison_matches_hand_computed_figures() {
        let mc = rows();
        // The estimate: row 0 larger (+0.2), row 1 smaller, row 2 equal, row 3 larger
        // (+0.05), row 4 the same wrong class, row 5 certified correctly (+0.3 over
        // an abstention), rows 6 and 7 absent (not common), one extra input 9.
        let est = vec![
            row(0, 3, 3, 0.3, 0.01, "surrogate"),
            row(1, 3, 3, 0.2, 0.02, "surrogate"),
            row(2, 1, 1, 0.5, 0.03, "surrogate"),
            row(3, 0, 0, 0.95, 0.04, "surrogate"),
            row(4, 2, 5, 0.7, 0.05, "surrogate"),
            row(5, 2, 2, 0.3, 0.06, "surrogate"),
            row(9, 1, 1, 0.4, 0.07, "surrogate"),
        ];
        let c = compare(("mc", &mc), ("sur", &est), &[0.0, 0.25]);
        assert_eq!(c.common_inputs, 6);
        // On inputs 0..=5: MC correct-certified {0.1, 0.25, 0.5, 0.9}; estimate
        // {0.3, 0.2, 0.5, 0.95, 0.3}. r=0: 4/6 vs 5/6; r=0.25: 3/6 vs 4/6.
        let want = [(0.0, 100.0 / 6.0), (0.25, 100.0 / 6.0)];
        for ((r, g), (wr, wg)) in c.certified_accuracy_gap_pp.iter().zip(want) {
            assert_eq!(*r, wr);
            assert!((g - wg).abs() < 1e-9, "{g} vs {wg}");
        }
        let acr_mc = (0.1 + 0.25 + 0.5 + 0.9) / 6.0;
        let acr_est = (0.3 + 0.2 + 0.5 + 0.95 + 0.3) / 6.0;
        assert!((c.acr_gap - (acr_est - acr_mc)).abs() < 1e-12);
        // Same prediction on 0, 1, 2, 3, 4 (5: abstain vs class 2).
        assert!((c.prediction_agreement - 5.0 / 6.0).abs() < 1e-12);
        // Larger radius on 0 (+0.2), 3 (+0.05), 5 (+0.3): 3 of 6; p95 of three = the largest.
        assert!((c.overestimation_rate - 0.5).abs() < 1e-12);
        assert!((c.overestimation_p95 - 0.3).abs() < 1e-9);
        // Medians over the common inputs: MC (0.3 + 0.4) / 2, estimate (0.03 + 0.04) / 2.
        assert!((c.median_seconds_reference - 0.35).abs() < 1e-12);
        assert!((c.median_seconds_estimate - 0.035).abs() < 1e-12);
        assert!((c.speedup - 10.0).abs() < 1e-9);
    }

    #[test]
    fn summarize_matches_hand_computed_figures() {
        let c = summarize("demo", &rows(), &[0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(c.name, "demo");
        assert_eq!(c.method, "monte_carlo");
        assert_eq!(c.rows, 8);
        // r=0: 4 correct of 8; r=0.25: 0.25, 0.5, 0.9 (>= is inclusive); r=0.5: 0.5, 0.9;
        // r=0.75: 0.9; r=1: none. The wrong row's 0.7 never counts.
        let expected = [0.5, 0.375, 0.25, 0.125, 0.0];
        for ((r, got), want) in c.certified_accuracy.iter().zip(expected) {
            assert!((got - want).abs() < 1e-12, "r = {r}: {got} vs {want}");
        }
        // ACR = (0.1 + 0.25 + 0.5 + 0.9) / 8 = 1.75 / 8.
        assert!((c.acr - 0.21875).abs() < 1e-12, "{}", c.acr);
        assert!((c.abstention_rate - 0.375).abs() < 1e-12);
        // Times sorted: 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 -> median (0.4 + 0.5) / 2.
        assert!((c.median_seconds - 0.45).abs() < 1e-12);

        // Odd count, mixed methods.
        let mut odd = rows();
        odd.pop();
        odd[1].method = Method::Surrogate;
        let c = summarize("odd", &odd, &[0.0]);
        assert_eq!(c.method, "monte_carlo+surrogate");
        assert!((c.median_seconds - 0.4).abs() < 1e-12);
        assert!((c.certified_accuracy[0].1 - 4.0 / 7.0).abs() < 1e-12);

        let empty = summarize("empty", &[], &[0.0]);
        assert_eq!(
            (empty.rows, empty.acr, empty.certified_accuracy[0].1),
            (0, 0.0, 0.0)
        );
    }

    #[test]
    fn steps_follow_the_definition() {
        let steps = step_points(&rows());
        let want = [
            (0.0, 0.5),
            (0.1, 0.5),
            (0.1, 0.375),
            (0.25, 0.375),
            (0.25, 0.25),
            (0.5, 0.25),
            (0.5, 0.125),
            (0.9, 0.125),
            (0.9, 0.0),
        ];
        assert_eq!(steps, want);
        assert_eq!(curve_grid(0.9).len(), 91);
        assert_eq!(curve_grid(0.0), vec![0.0]);
        assert_eq!(curve_grid(0.07)[7], 0.07);
    }

    fn write(path: &Path, rows: &[CertRow]) {
        let mut text = format!("{}\n", super::super::tsv::HEADER);
        for r in rows {
            text.push_str(&r.to_line());
            text.push('\n');
        }
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn run_report_writes_json_png_and_markdown() {
        let dir = tempfile::tempdir().unwrap();
        let mc = dir.path().join("fmnist_mc.tsv");
        let sur = dir.path().join("fmnist_surrogate.tsv");
        write(&mc, &rows());
        let surrogate: Vec<CertRow> = rows()
            .into_iter()
            .map(|mut r| {
                r.method = Method::Surrogate;
                r.radius *= 1.1;
                r.time /= 100.0;
                r
            })
            .collect();
        write(&sur, &surrogate);
        let out = dir.path().join("report");
        let md = run_report(&[mc.clone(), sur.clone()], &ReportOptions::new(&out)).unwrap();
        println!("{md}");

        let lines: Vec<&str> = md.lines().collect();
        assert!(
            lines[0].starts_with("| file | method | inputs | r = 0 | r = 0.25"),
            "{md}"
        );
        assert!(
            lines[2].starts_with(
                "| fmnist_mc | monte_carlo | 8 | 50.0 | 37.5 | 25.0 | 12.5 | 0.0 | 0.219 | 37.5 | 0.4500 |"
            ),
            "{md}"
        );
        assert!(
            lines[3].starts_with("| fmnist_surrogate | surrogate (estimate) | 8 |"),
            "{md}"
        );
        assert!(md.contains("not statistical guarantees"), "{md}");

        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
        let files = json["files"].as_array().unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0]["method"], "monte_carlo");
        assert_eq!(files[0]["radius_kind"], "certificate");
        assert_eq!(files[1]["radius_kind"], "estimate");
        assert_eq!(files[0]["abstain_reasons"]["low_confidence"], 3);
        assert_eq!(files[0]["rows"], 8);
        let curve = files[0]["curve"].as_array().unwrap();
        // Common grid to the largest radius over both files: 0.99 -> 100 points.
        assert_eq!(curve.len(), 100);
        assert_eq!(curve[25][0].as_f64().unwrap(), 0.25);
        assert_eq!(curve[25][1].as_f64().unwrap(), 0.375);
        assert_eq!(curve[26][1].as_f64().unwrap(), 0.25);
        assert_eq!(
            files[0]["certified_accuracy"][1][1].as_f64().unwrap(),
            0.375
        );

        let png = image::open(out.join("certified_accuracy.png")).unwrap();
        assert_eq!((png.width(), png.height()), PLOT_SIZE);
        // The curves are there: the mc curve's blue appears.
        let rgb = png.to_rgb8();
        let blue = rgb.pixels().filter(|p| p.0 == [31, 119, 180]).count();
        assert!(blue > 500, "{blue} blue pixels");
        // No temporary files left behind.
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["certified_accuracy.png", "report.json"]);
    }

    /// Runs on disjoint inputs join into one: the same figures as the one
    /// TSV holding all rows; a shared input or other parameters are refused.
    #[test]
    fn joined_runs_report_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let params = |offset: usize, method: &str, n: u64| serde_json::json!({"method": method, "n": n, "offset": offset, "batch": 32});
        let put = |name: &str, rows: &[CertRow], p: serde_json::Value| {
            let path = dir.path().join(name);
            write(&path, rows);
            std::fs::write(
                crate::fsutil::sidecar(&path, "params.json"),
                serde_json::to_string(&p).unwrap(),
            )
            .unwrap();
            std::fs::write(crate::fsutil::sidecar(&path, "summary.json"), "{}").unwrap();
            path
        };
        let all = rows();
        let whole = put("whole.tsv", &all, params(0, "monte_carlo", 1000));
        let a = put("a.tsv", &all[..3], params(0, "mc", 1000));
        let b = put("b.tsv", &all[3..], params(7, "monte_carlo", 1000));
        let joined = PathBuf::from(format!("{}+{}", a.display(), b.display()));
        let table = |f: &Path| {
            let md = run_report(
                &[f.to_path_buf()],
                &ReportOptions::new(dir.path().join("r")),
            )
            .unwrap();
            md.lines()
                .nth(2)
                .unwrap()
                .split('|')
                .skip(2)
                .collect::<Vec<_>>()
                .join("|")
        };
        assert_eq!(table(&joined), table(&whole));
        let (rows_joined, p) = read_joined(&joined).unwrap();
        assert_eq!(rows_joined.len(), 8);
        assert_eq!(p.unwrap()["offset"], serde_json::json!([0, 7]));

        let overlap = PathBuf::from(format!("{}+{}", a.display(), whole.display()));
        let err = read_joined(&overlap).unwrap_err().to_string();
        assert!(err.contains("input 0 is in more than one"), "{err}");
        let other = put("c.tsv", &all[3..], params(7, "monte_carlo", 2000));
        let mismatch = PathBuf::from(format!("{}+{}", a.display(), other.display()));
        let err = read_joined(&mismatch).unwrap_err().to_string();
        assert!(err.contains("other parameters"), "{err}");
        std::fs::remove_file(crate::fsutil::sidecar(&b, "summary.json")).unwrap();
        let err = read_joined(&joined).unwrap_err().to_string();
        assert!(err.contains("no summary.json"), "{err}");
    }

    #[test]
    fn an_auto_run_that_always_fell_back_is_compared_not_the_reference() {
        let dir = tempfile::tempdir().unwrap();
        let mc = dir.path().join("mc.tsv");
        let auto = dir.path().join("auto.tsv");
        write(&mc, &rows());
        write(&auto, &rows());
        std::fs::write(
            crate::fsutil::sidecar(&auto, "params.json"),
            r#"{"method": "auto"}"#,
        )
        .unwrap();
        let out = dir.path().join("report");
        let md = run_report(&[mc, auto], &ReportOptions::new(&out)).unwrap();
        assert!(
            md.contains("auto (monte_carlo 8) against mc (Monte Carlo certificate)"),
            "{md}"
        );
    }

    #[test]
    fn plot_without_a_font_still_draws_curves() {
        let curves = vec![PlotCurve {
            label: "x".into(),
            estimate: false,
            steps: step_points(&rows()),
        }];
        let png = draw_png(&curves, 0.9, false).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert!(img.pixels().filter(|p| p.0 == [31, 119, 180]).count() > 500);
    }

    #[test]
    fn report_errors() {
        let dir = tempfile::tempdir().unwrap();
        let opts = ReportOptions::new(dir.path().join("out"));
        assert!(matches!(run_report(&[], &opts), Err(ReportError::NoFiles)));
        let missing = dir.path().join("missing.tsv");
        let err = run_report(std::slice::from_ref(&missing), &opts).unwrap_err();
        assert!(err.to_string().contains("missing.tsv"), "{err}");
        let bad = dir.path().join("bad.tsv");
        std::fs::write(&bad, "idx\tlabel\n").unwrap();
        let err = run_report(std::slice::from_ref(&bad), &opts).unwrap_err();
        assert!(
            matches!(err, ReportError::Tsv(TsvError::Header { .. })),
            "{err}"
        );
        let good = dir.path().join("good.tsv");
        write(&good, &rows());
        let mut neg = opts.clone();
        neg.radii = vec![0.0, -0.5];
        assert!(matches!(
            run_report(&[good], &neg),
            Err(ReportError::InvalidRadius(_))
        ));
    }

    #[test]
    fn duplicate_stems_use_paths() {
        let n = names(&[
            PathBuf::from("a/x.tsv"),
            PathBuf::from("b/x.tsv"),
            PathBuf::from("c/y.tsv"),
        ]);
        assert_eq!(n, ["a/x.tsv", "b/x.tsv", "y"]);
    }
}
