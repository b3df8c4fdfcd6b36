//! The Markdown tables: one row per file, then the comparisons.
use super::stats::{is_certificate, methods, radius_kind, Comparison, SequentialComparison};
use super::FileReport;
use crate::pipeline::run::RunParams;
use crate::pipeline::tsv::CertRow;

/// The method column: each method, with estimates marked as such.
pub(super) fn method_label(methods: &[String]) -> String {
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

pub(super) fn sequential_markdown(rows: &[SequentialComparison]) -> String {
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
            if c.guided { "guided" } else { "plain" },
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

pub(super) fn escape_md(s: &str) -> String {
    s.replace('|', "\\|")
}

pub(super) fn comparison_markdown(comparisons: &[Comparison]) -> String {
    let mut out = String::new();
    for c in comparisons {
        out.push_str(&comparison_section(c));
    }
    out.push_str(&calibration_cost(comparisons));
    out
}

/// One estimate against the Monte Carlo certificate: the certified-accuracy
/// gaps, the overestimation and the speedup, then the fallbacks and the
/// choice of cA where known.
fn comparison_section(c: &Comparison) -> String {
    let methods = c
        .estimate_methods
        .iter()
        .map(|(m, k)| format!("{m} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = format!(
        "\n{} ({methods}) against {} (Monte Carlo certificate), {} common inputs:\n\n",
        escape_md(&c.estimate),
        escape_md(&c.reference),
        c.common_inputs
    );
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
    out
}

/// The price of the coverage statement: each calibrated file's gaps minus
/// the plain surrogate's (nothing without a plain surrogate).
fn calibration_cost(comparisons: &[Comparison]) -> String {
    let mut out = String::new();
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

pub(super) fn markdown(files: &[FileReport], radii: &[f64], all_rows: &[Vec<CertRow>]) -> String {
    let (mut out, any_estimate) = files_table(files, radii, all_rows);
    out.push_str(
        &format!(
            "\nColumns r = ...: certified accuracy (%) at that {} radius; ACR: average certified radius.\n",
            super::join::report_norm(files)
        ),
    );
    for f in files {
        if let Some(r) = &f.run_params {
            out.push_str(&run_params_line(f, &r.params));
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

/// The table of one row per file, and whether any file's radii are estimates.
fn files_table(files: &[FileReport], radii: &[f64], all_rows: &[Vec<CertRow>]) -> (String, bool) {
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
    (out, any_estimate)
}

/// A file's run parameters, from its params.json `p`, as one line.
fn run_params_line(f: &FileReport, p: &RunParams) -> String {
    let n_kind = if f.radius_kind == "certificate" {
        "n"
    } else {
        "nominal n"
    };
    let mut out = format!(
        "{}: n0 = {}, {n_kind} = {}, alpha = {}, noise {}",
        escape_md(&f.summary.name),
        p.n0,
        p.n,
        json_number(p.alpha),
        p.noise.noise().map_or("?".to_string(), |n| n.to_string())
    );
    // CALIBRATED and AUTO: (q, delta, score), and AUTO's band.
    if let Some((q, delta, score)) = p.calibration {
        out.push_str(&format!(
            ", calibration delta = {}, score {}, q = {}",
            json_number(delta),
            score.as_str(),
            json_number(q)
        ));
        if let Some(t) = p.margin_threshold {
            out.push_str(&format!(
                " on the selection margin's estimate below z = {t} (the surrogate above)"
            ));
        }
    }
    if let Some((low, high)) = p.auto_band {
        out.push_str(&format!(
            ", AUTO band [{}, {}]",
            json_number(low),
            json_number(high)
        ));
    }
    out.push('\n');
    out
}

/// A number as params.json writes it (1.0, not 1), so that a report reads
/// the same as the file it came from.
fn json_number(x: f64) -> String {
    serde_json::Value::from(x).to_string()
}
