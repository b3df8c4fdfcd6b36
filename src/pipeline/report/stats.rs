//! The figures: certified accuracy at each radius, ACR, abstention and time
//! per file, and the comparisons of estimates and sequential runs with the
//! Monte Carlo reference on the inputs both hold.
use crate::engine::{Method, RadiusKind};
use crate::pipeline::tsv::CertRow;
use serde::Serialize;
use std::collections::BTreeMap;

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

/// Certified radii of the correct rows, ascending: certified accuracy at r
/// is the count of these that are >= r, over all rows.
pub(super) fn correct_radii(rows: &[CertRow]) -> Vec<f64> {
    let mut radii: Vec<f64> = rows
        .iter()
        .filter(|r| r.correct)
        .map(|r| r.radius)
        .collect();
    radii.sort_by(f64::total_cmp);
    radii
}

pub(super) fn fraction_at(sorted: &[f64], total: usize, r: f64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let below = sorted.partition_point(|&x| x < r);
    (sorted.len() - below) as f64 / total as f64
}

pub(super) fn methods(rows: &[CertRow]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for r in rows {
        if !seen.iter().any(|m| m == r.method.as_str()) {
            seen.push(r.method.to_string());
        }
    }
    seen
}

/// Whether `method`'s radii are certificates (level 1 - alpha); any other
/// method's are reported as estimates.
pub(super) fn is_certificate(method: &str) -> bool {
    method.parse::<Method>().ok().and_then(Method::radius_kind) == Some(RadiusKind::Certificate)
}

/// "certificate", "estimate" or "mixed" for a file's methods.
pub(super) fn radius_kind(methods: &[String]) -> &'static str {
    let certs = methods.iter().filter(|m| is_certificate(m)).count();
    match (certs, methods.len()) {
        (_, 0) => "none",
        (c, n) if c == n => "certificate",
        (0, _) => "estimate",
        _ => "mixed",
    }
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
        median_seconds: crate::smoothing::median(&rows.iter().map(|r| r.time).collect::<Vec<_>>()),
        mean_seconds: if n == 0 {
            0.0
        } else {
            rows.iter().map(|r| r.time).sum::<f64>() / n as f64
        },
    }
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
    pub guided: bool,
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
pub(super) fn certified_at(r: &CertRow, eps: f64) -> bool {
    r.correct && r.radius >= eps
}

/// Compares a sequential file with the Monte Carlo reference on the inputs
/// both hold. `mc_n0` stands in for rows that predate the n0_drawn column.
pub fn compare_sequential(
    (reference, mc): (&str, &[CertRow]),
    (file, seq): (&str, &[CertRow]),
    target_radius: f64,
    guided: bool,
    (mc_n0, surrogate_pass): (u64, bool),
) -> SequentialComparison {
    let pairs = common_inputs(mc, seq);
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
    let pairs = common_inputs(reference.1, estimate.1);
    let refs: Vec<CertRow> = pairs.iter().map(|(r, _)| (*r).clone()).collect();
    let ests: Vec<CertRow> = pairs.iter().map(|(_, e)| (*e).clone()).collect();
    let (cr, ce) = (
        summarize(reference.0, &refs, radii),
        summarize(estimate.0, &ests, radii),
    );
    let n = pairs.len().max(1) as f64;
    let over = Overestimation::of(&pairs);
    let estimate_methods = method_counts(&pairs);
    let fallback_fraction = (estimate_methods.len() > 1).then(|| {
        estimate_methods
            .iter()
            .filter(|(m, _)| is_certificate(m))
            .map(|(_, c)| *c)
            .sum::<usize>() as f64
            / n
    });
    Comparison {
        overestimation_count: over.count,
        overestimation_ci95: over.ci95,
        estimate_methods,
        fallback_fraction,
        class_a_agreement: class_a_agreement(&pairs),
        mean_n0_drawn_reference: mean_n0_drawn(&refs),
        mean_n0_drawn_estimate: mean_n0_drawn(&ests),
        mean_seconds_reference: cr.mean_seconds,
        mean_seconds_estimate: ce.mean_seconds,
        speedup_mean: speedup(cr.mean_seconds, ce.mean_seconds),
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
        overestimation_rate: over.count as f64 / n,
        overestimation_p95: over.p95,
        median_seconds_reference: cr.median_seconds,
        median_seconds_estimate: ce.median_seconds,
        speedup: speedup(cr.median_seconds, ce.median_seconds),
    }
}

/// The (reference, other) rows of the inputs both files hold, in the other
/// file's order.
fn common_inputs<'a>(
    reference: &'a [CertRow],
    other: &'a [CertRow],
) -> Vec<(&'a CertRow, &'a CertRow)> {
    let by_idx: BTreeMap<usize, &CertRow> = reference.iter().map(|r| (r.idx, r)).collect();
    other
        .iter()
        .filter_map(|e| by_idx.get(&e.idx).map(|r| (*r, e)))
        .collect()
}

/// The inputs whose estimated radius exceeds the certified one.
struct Overestimation {
    count: usize,
    /// 95th percentile of the excess; 0 if none.
    p95: f64,
    /// Two-sided 95% Clopper-Pearson interval of the rate.
    ci95: (f64, f64),
}

impl Overestimation {
    fn of(pairs: &[(&CertRow, &CertRow)]) -> Overestimation {
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
        let ci95 = if pairs.is_empty() {
            (0.0, 1.0)
        } else {
            let total = pairs.len() as u64;
            (
                crate::smoothing::clopper_pearson_lower(over, total, 0.025).unwrap_or(0.0),
                crate::smoothing::clopper_pearson_upper(over, total, 0.025).unwrap_or(1.0),
            )
        };
        Overestimation {
            count: excess.len(),
            p95,
            ci95,
        }
    }
}

/// The estimate's methods, with row counts.
fn method_counts(pairs: &[(&CertRow, &CertRow)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, e) in pairs {
        *counts.entry(e.method.to_string()).or_insert(0) += 1;
    }
    counts
}

/// Fraction of inputs where both runs chose the same cA, of those where both say.
fn class_a_agreement(pairs: &[(&CertRow, &CertRow)]) -> Option<f64> {
    let both_a: Vec<(usize, usize)> = pairs
        .iter()
        .filter_map(|(r, e)| Some((r.class_a?, e.class_a?)))
        .collect();
    (!both_a.is_empty())
        .then(|| both_a.iter().filter(|(a, b)| a == b).count() as f64 / both_a.len() as f64)
}

/// Mean selection samples drawn per input, over the rows that say.
fn mean_n0_drawn(rows: &[CertRow]) -> Option<f64> {
    let d: Vec<u64> = rows.iter().filter_map(|r| r.n0_drawn).collect();
    (!d.is_empty()).then(|| d.iter().sum::<u64>() as f64 / d.len() as f64)
}

/// Reference seconds over the estimate's (infinite when the estimate took none).
fn speedup(reference: f64, estimate: f64) -> f64 {
    if estimate > 0.0 {
        reference / estimate
    } else {
        f64::INFINITY
    }
}
