//! Tests for the report: figures against hand counts, joins, plot and errors.
use super::plot::PLOT_SIZE;
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
    let c = compare_sequential(("mc", &mc), ("seq", &seq), 0.5, true, (20, true));
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

/// A params.json as `certify` writes it, with the method spelled `method`.
fn run_params_json(method: &str) -> serde_json::Value {
    let params = crate::pipeline::run::RunParams {
        bundle_name: "b".into(),
        bundle_version: "1".into(),
        base_weights_fnv1a: "0123456789abcdef".into(),
        surrogate_weights_fnv1a: None,
        method: Method::MonteCarlo,
        split: crate::data::Split::Test,
        offset: 0,
        skip: 1,
        max: None,
        n0: 100,
        n: 1000,
        alpha: 0.001,
        noise: crate::smoothing::Noise::Gaussian { sigma: 0.25 }.into(),
        seed: 0,
        noise_scheme: crate::pipeline::run::NoiseScheme::SeededStreamsV2,
        device: "Cpu".into(),
        adaptive_n0: None,
        calibration: None,
        margin_threshold: None,
        auto_band: None,
        target_radius: None,
        tail_map: None,
    };
    let mut p = serde_json::to_value(params).unwrap();
    p["method"] = method.into();
    p
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
    let params = |offset: usize, method: &str, n: u64| {
        let mut p = run_params_json(method);
        p["n"] = n.into();
        p["offset"] = offset.into();
        p
    };
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
    assert_eq!(p.unwrap().joined_offsets, Some(vec![0, 7]));

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
        run_params_json("auto").to_string(),
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
    let png = draw_png(&curves, 0.9, "L2", false).unwrap();
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
