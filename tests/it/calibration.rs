//! `fit-tail-map`, `calibrate` and the methods CALIBRATED and AUTO on a
//! bundle whose base and surrogate are closed-form rules on the first pixel:
//! every score, quantile and count is recomputed here independently.
use smoothcert::data::{self, DatasetKind, Split};
use smoothcert::engine::Method;
use smoothcert::engine::{AutoBand, CertifyParams};
use smoothcert::model::{BaseSpec, Bundle, SurrogateSpec, WeightsFormat};
use smoothcert::pipeline::calibrate::{calibrate, CalibrateOptions};
use smoothcert::pipeline::certify::{certify, CertifyOptions};
use smoothcert::pipeline::counts::{
    sample_counts, Counts, SampleCountsOptions, SampleOutcome, Shard,
};
use smoothcert::pipeline::tail_map::{fit_tail_map, FitTailMapOptions};
use smoothcert::pipeline::tsv::read_tsv;
use smoothcert::smoothing::{clopper_pearson_lower, ConformalScore};
use smoothcert::testing::{rng_lock, write_threshold_bundle};
use std::path::{Path, PathBuf};
use tch::Device;

const N: u64 = 4_000;
const SIGMA: f64 = 0.25;

/// Base: class 1 iff x[0] > 0.5. Surrogate: logits (-(x[0] - 1), x[0] - 1),
/// so p_hat[0] = sigmoid(2 (1 - x[0])), about 0.881 where the base's
/// P(class 0) is Phi(2) = 0.977: a surrogate that underestimates.
fn bundle(root: &Path) -> PathBuf {
    let dir = root.join("b");
    let mut b = write_threshold_bundle(&dir, [1, 28, 28], 0.5, SIGMA);
    let src = root.join("surrogate-src");
    write_threshold_bundle(&src, [1, 28, 28], 1.0, SIGMA);
    std::fs::copy(src.join("base.pt"), dir.join("surrogate.pt")).unwrap();
    b.surrogate = Some(SurrogateSpec {
        model: BaseSpec {
            format: WeightsFormat::Torchscript,
            file: "surrogate.pt".into(),
            arch: None,
        },
        nominal_n: N,
        training: None,
        tail_map: None,
        calibration: None,
    });
    b.save().unwrap();
    dir
}

/// The Fashion-MNIST split the counts and certify runs read.
fn fashion(split: Split) -> data::Dataset {
    data::load(
        DatasetKind::FashionMnist,
        &DatasetKind::FashionMnist.default_dir(),
        split,
    )
    .unwrap()
}

fn p_hat_0(x0: f64) -> f64 {
    1.0 / (1.0 + (-2.0 * (1.0 - x0)).exp())
}

fn counts(bundle: &Path, out: &Path, split: Split, skip: usize, n: u64) -> Counts {
    counts_shard(bundle, out, split, skip, n, None)
}

fn counts_shard(
    bundle: &Path,
    out: &Path,
    split: Split,
    skip: usize,
    n: u64,
    shard: Option<Shard>,
) -> Counts {
    let opts = SampleCountsOptions {
        bundle: bundle.to_path_buf(),
        split,
        data_dir: None,
        n,
        skip,
        max: None,
        shard,
        chunk: 50,
        batch: Some(1000),
        seed: 5,
        margins: false,
        device: Device::Cpu,
        out: out.to_path_buf(),
        pause_after: None,
        show_progress: false,
    };
    assert!(matches!(
        sample_counts(&opts).unwrap(),
        SampleOutcome::Finished(_)
    ));
    Counts::read(out).unwrap()
}

/// calibrate on one counts file, cA from 50 samples as certify_opts draws it.
fn cal_opts(bundle: &Path, counts: &Path, delta: f64, score: ConformalScore) -> CalibrateOptions {
    CalibrateOptions {
        bundle: bundle.to_path_buf(),
        counts: vec![counts.to_path_buf()],
        delta,
        score,
        rank_rule: smoothcert::smoothing::RankRule::Marginal,
        bin_edges: vec![],
        margin_threshold: None,
        n0: 50,
        alpha: 0.001,
        seed: 2,
        batch: 1000,
        data_dir: None,
        device: Device::Cpu,
    }
}

fn certify_opts(bundle: &Path, out: &Path, method: Method) -> CertifyOptions {
    CertifyOptions {
        bundle: bundle.to_path_buf(),
        method,
        split: Split::Train,
        data_dir: None,
        offset: 0,
        skip: 6_000,
        max: None,
        params: CertifyParams {
            n0: 50,
            n: N,
            alpha: 0.001,
            batch: 1000,
        },
        seed: 2,
        adaptive_n0: None,
        auto_band: AutoBand {
            low: 0.2,
            high: 0.5,
        },
        target: None,
        device: Device::Cpu,
        out: out.to_path_buf(),
        show_progress: false,
    }
}

#[test]
fn calibration_quantile_and_the_calibrated_and_auto_methods() {
    let _rng = rng_lock();
    let root = tempfile::tempdir().unwrap();
    let b = bundle(root.path());
    let test = fashion(Split::Test);

    // 40 calibration inputs of the test split at the nominal N.
    let cal = counts(
        &b,
        &root.path().join("cal.safetensors"),
        Split::Test,
        250,
        N,
    );
    assert_eq!(cal.len(), 40);
    let delta = 0.1;
    let summary = calibrate(&cal_opts(
        &b,
        &root.path().join("cal.safetensors"),
        delta,
        ConformalScore::PGap,
    ))
    .unwrap();

    // Independently: cA is class 0 for these dark-cornered images (P = 0.977
    // per sample), s = p_hat[0] - count[0] / N, and q the
    // ceil(41 * 0.9) = 37th smallest.
    let mut s: Vec<f64> = (0..cal.len())
        .map(|i| {
            let x0 = f64::from(test.image(cal.indices[i] as usize)[0]);
            assert!(x0 < 0.2, "a bright corner would change cA");
            p_hat_0(x0) - f64::from(cal.row(i)[0]) / N as f64
        })
        .collect();
    s.sort_by(f64::total_cmp);
    let c = &summary.calibration;
    assert_eq!((c.m, c.rank, c.n, c.delta), (40, 37, N, delta));
    assert!((c.q - s[36]).abs() < 1e-6, "q {} vs {}", c.q, s[36]);
    assert!(summary
        .scores
        .iter()
        .all(|x| x.class_a == 0 && x.surrogate_class == 0));
    let saved = Bundle::load(&b)
        .unwrap()
        .surrogate
        .unwrap()
        .calibration
        .unwrap();
    assert_eq!(&saved, c);

    // CALIBRATED refuses the calibration inputs, and another N.
    let on_cal = CertifyOptions {
        split: Split::Test,
        skip: 250,
        ..certify_opts(&b, &root.path().join("x.tsv"), Method::Calibrated)
    };
    let err = certify(&on_cal).unwrap_err().to_string();
    assert!(err.contains("calibration inputs"), "{err}");
    let mut other_n = certify_opts(&b, &root.path().join("y.tsv"), Method::Calibrated);
    other_n.params.n = 2 * N;
    let err = certify(&other_n).unwrap_err().to_string();
    assert!(err.contains("calibration holds at n"), "{err}");

    // cA must be chosen as the calibration chose it: n0 = 50, fixed.
    let mut other_n0 = certify_opts(&b, &root.path().join("z.tsv"), Method::Auto);
    other_n0.params.n0 = 40;
    let err = certify(&other_n0).unwrap_err().to_string();
    assert!(err.contains("n0 = 50"), "{err}");
    let mut adaptive = certify_opts(&b, &root.path().join("z.tsv"), Method::Calibrated);
    adaptive.adaptive_n0 = Some(smoothcert::smoothing::AdaptiveN0 {
        chunk: 10,
        alpha: 0.001,
    });
    let err = certify(&adaptive).unwrap_err().to_string();
    assert!(err.contains("--adaptive-n0"), "{err}");

    // On fresh (training-split) inputs: count = round(N (p_hat[cA] - q)).
    let train = fashion(Split::Train);
    let out = root.path().join("calibrated.tsv");
    certify(&certify_opts(&b, &out, Method::Calibrated)).unwrap();
    let rows = read_tsv(&out).unwrap();
    assert_eq!(rows.len(), 10);
    for r in &rows {
        let x0 = f64::from(train.image(r.idx)[0]);
        let expected = (N as f64 * (p_hat_0(x0) - c.q)).round() as u64;
        assert_eq!(r.method, Method::Calibrated);
        assert_eq!(r.delta, Some(delta));
        assert!(r.count_a.abs_diff(expected) <= 1, "{r:?} vs {expected}");
        let bound = clopper_pearson_lower(r.count_a, N, 0.001).unwrap();
        assert!((r.p_a_lower - bound).abs() < 1e-12);
    }

    // AUTO with a band that holds every calibrated bound falls back to Monte
    // Carlo everywhere; with the default band, nowhere (the bounds are near 0.97).
    let mut everywhere = certify_opts(&b, &root.path().join("auto-all.tsv"), Method::Auto);
    everywhere.auto_band = AutoBand {
        low: 0.0,
        high: 1.0,
    };
    let all = certify(&everywhere).unwrap();
    assert_eq!(all.fallback_fraction, Some(1.0));
    for r in read_tsv(&root.path().join("auto-all.tsv")).unwrap() {
        assert_eq!(
            (r.method, r.delta, r.n),
            (Method::MonteCarlo, None, N),
            "{r:?}"
        );
        let bound = clopper_pearson_lower(r.count_a, N, 0.001).unwrap();
        assert!((r.p_a_lower - bound).abs() < 1e-12);
    }
    let none = certify(&certify_opts(
        &b,
        &root.path().join("auto.tsv"),
        Method::Auto,
    ))
    .unwrap();
    assert_eq!(none.fallback_fraction, Some(0.0));
    let auto_rows = read_tsv(&root.path().join("auto.tsv")).unwrap();
    for (a, r) in auto_rows.iter().zip(&rows) {
        assert_eq!((a.method.as_str(), a.count_a), ("calibrated", r.count_a));
    }

    // bench-certify times the calibrated methods beside the other two, on
    // the same inputs; with the all-covering band AUTO always falls back.
    use smoothcert::bench::{bench_methods, MethodsBenchOptions};
    let bench = |low, high| {
        bench_methods(&MethodsBenchOptions {
            bundle: b.clone(),
            device: Device::Cpu,
            inputs: 3,
            params: CertifyParams {
                n0: 50,
                n: N,
                alpha: 0.001,
                batch: 1000,
            },
            seed: 0,
            auto_band: AutoBand { low, high },
            target_radii: vec![],
        })
        .unwrap()
        .calibrated
        .unwrap()
    };
    let decisive = bench(0.2, 0.5);
    assert_eq!((decisive.auto_fallbacks, decisive.delta), (0, delta));
    assert!(decisive.calibrated_speedup > 0.0 && decisive.auto_speedup_mean > 0.0);
    assert_eq!(bench(0.0, 1.0).auto_fallbacks, 3);

    // Too few inputs for the asked delta is a clear error.
    let err = calibrate(&cal_opts(
        &b,
        &root.path().join("cal.safetensors"),
        0.01,
        ConformalScore::PGap,
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("too few"), "{err}");
}

/// With a margin threshold the scored estimate is the selection samples'
/// margin: for the threshold base it is exactly Gaussian, z = (0.5 - x0) /
/// sigma, so the blend lands near the Monte Carlo p where the surrogate
/// (p_hat near 0.88 for pA = 0.977) does not; certification applies the same
/// blend, then q, to fresh inputs.
#[test]
fn a_margin_threshold_scores_the_selection_margin() {
    let _rng = rng_lock();
    let root = tempfile::tempdir().unwrap();
    let b = bundle(root.path());
    let test = fashion(Split::Test);
    let cal_path = root.path().join("cal.safetensors");
    let cal = counts(&b, &cal_path, Split::Test, 250, N);
    let n0 = 200u64;
    let z_se = (3.0 / n0 as f64).sqrt();
    let summary = calibrate(&CalibrateOptions {
        margin_threshold: Some(2.5),
        n0,
        ..cal_opts(&b, &cal_path, 0.1, ConformalScore::Probit)
    })
    .unwrap();
    let normal = statrs::distribution::Normal::standard();
    use statrs::distribution::ContinuousCDF;
    let c = 0.5 / N as f64;
    let z = |p: f64| normal.inverse_cdf(p.clamp(c, 1.0 - c));
    let (mut err_blend, mut err_surrogate) = (0.0, 0.0);
    let mut s = Vec::new();
    for (i, x) in summary.scores.iter().enumerate() {
        assert_eq!(x.idx, cal.indices[i]);
        let x0 = f64::from(test.image(x.idx as usize)[0]);
        let z_true = (0.5 - x0) / SIGMA;
        let margin_z = x.margin_z.unwrap();
        assert!(
            (margin_z - z_true).abs() < 5.0 * z_se,
            "{x:?} vs z {z_true}"
        );
        let expected = if margin_z < 2.5 {
            normal.cdf(margin_z)
        } else {
            x.p_hat_a.max(normal.cdf(2.5))
        };
        assert!((x.estimate - expected).abs() < 1e-12, "{x:?}");
        let p_mc = f64::from(cal.row(i)[0]) / N as f64;
        s.push(z(expected) - z(p_mc));
        err_blend += (z(expected) - z(p_mc)).abs();
        err_surrogate += (z(x.p_hat_a) - z(p_mc)).abs();
    }
    let m = s.len() as f64;
    assert!(
        err_blend / m < 0.3 && err_blend < err_surrogate / 2.0,
        "mean |probit error|: blend {} surrogate {}",
        err_blend / m,
        err_surrogate / m
    );
    s.sort_by(f64::total_cmp);
    let cal_rec = &summary.calibration;
    assert_eq!((cal_rec.rank, cal_rec.margin_threshold), (37, Some(2.5)));
    assert!(
        (cal_rec.q - s[36]).abs() < 1e-9,
        "{} vs {}",
        cal_rec.q,
        s[36]
    );
    let saved = Bundle::load(&b)
        .unwrap()
        .surrogate
        .unwrap()
        .calibration
        .unwrap();
    assert_eq!(saved.margin_threshold, Some(2.5));

    // Fresh inputs: the calibrated count is Phi(z_margin - q), with z_margin
    // within 4 standard errors of the closed form; the surrogate's p_hat
    // (about 0.82 below in probit) would not be.
    let train = fashion(Split::Train);
    let out = root.path().join("calibrated.tsv");
    let mut opts = certify_opts(&b, &out, Method::Calibrated);
    opts.params.n0 = n0;
    certify(&opts).unwrap();
    for r in read_tsv(&out).unwrap() {
        let x0 = f64::from(train.image(r.idx)[0]);
        let z_true = (0.5 - x0) / SIGMA;
        let z_used = z(r.count_a as f64 / N as f64) + cal_rec.q;
        assert!(
            (z_used - z_true).abs() < 4.0 * z_se,
            "{r:?}: {z_used} vs {z_true}"
        );
    }
}

#[test]
fn tail_map_rescales_the_miss_and_fences_off_its_inputs() {
    let _rng = rng_lock();
    let root = tempfile::tempdir().unwrap();
    let b = bundle(root.path());
    let fit_counts = counts(
        &b,
        &root.path().join("fit.safetensors"),
        Split::Test,
        200,
        N,
    );
    let before = root.path().join("before.tsv");
    certify(&certify_opts(&b, &before, Method::Surrogate)).unwrap();
    let summary = fit_tail_map(&FitTailMapOptions {
        bundle: b.clone(),
        counts: vec![root.path().join("fit.safetensors")],
        min_inputs: 10,
        batch: 16,
        data_dir: None,
        device: Device::Cpu,
    })
    .unwrap();
    // Every input predicts the same miss, 1 - sigmoid(2): one bin, and its
    // ratio is (sum observed + 1/2N) / (sum predicted + 1/2N).
    let predicted = 1.0 - p_hat_0(0.0);
    let observed: f64 = (0..fit_counts.len())
        .map(|i| 1.0 - f64::from(fit_counts.row(i)[0]) / N as f64)
        .sum();
    let c = 0.5 / N as f64;
    let ratio = (observed + c) / (predicted * fit_counts.len() as f64 + c);
    let map = Bundle::load(&b)
        .unwrap()
        .surrogate
        .unwrap()
        .tail_map
        .unwrap();
    let bin = map.edges.partition_point(|&e| e <= predicted) - 1;
    assert_eq!(map.inputs.iter().sum::<usize>(), fit_counts.len());
    assert!((map.ratios[bin] - ratio).abs() < 1e-4, "{map:?} vs {ratio}");
    assert!(ratio < 0.5, "the surrogate overpredicts misses by about 5x");
    assert!(summary.log_error_after < summary.log_error_before);

    // Rows of the unmapped surrogate are not resumed by the mapped one.
    let err = certify(&certify_opts(&b, &before, Method::Surrogate))
        .unwrap_err()
        .to_string();
    assert!(err.contains("other parameters"), "{err}");

    // The surrogate now answers with the mapped miss.
    let out = root.path().join("mapped.tsv");
    certify(&certify_opts(&b, &out, Method::Surrogate)).unwrap();
    for r in read_tsv(&out).unwrap() {
        let expected = (N as f64 * (1.0 - predicted * map.ratios[bin])).round() as u64;
        assert!(r.count_a.abs_diff(expected) <= 2, "{r:?} vs {expected}");
    }
    // Its inputs are fenced off from calibration.
    let err = calibrate(&cal_opts(
        &b,
        &root.path().join("fit.safetensors"),
        0.1,
        ConformalScore::PGap,
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("tail map"), "{err}");
    // Calibrating a mapped surrogate scores the mapped probabilities. (Shard
    // 1 of 2 leaves index 0 out, so that the run below can start there.)
    let cal_counts = counts_shard(
        &b,
        &root.path().join("cal.safetensors"),
        Split::Train,
        2500,
        N,
        Some(Shard { index: 1, count: 2 }),
    );
    // With the log-miss score, here: s = ln(m_MC + c) - ln(m_hat + c).
    let summary = calibrate(&cal_opts(
        &b,
        &root.path().join("cal.safetensors"),
        0.1,
        ConformalScore::LogMiss,
    ))
    .unwrap();
    let mapped_miss = predicted * map.ratios[bin];
    let c = 0.5 / N as f64;
    let mut s: Vec<f64> = (0..cal_counts.len())
        .map(|i| {
            let mc_miss = 1.0 - f64::from(cal_counts.row(i)[0]) / N as f64;
            ((mc_miss + c) / (mapped_miss + c)).ln()
        })
        .collect();
    s.sort_by(f64::total_cmp);
    let cal = &summary.calibration;
    assert_eq!(
        (cal_counts.len(), cal.rank, cal.score),
        (12, 12, ConformalScore::LogMiss)
    );
    assert!(
        (cal.q - s[cal.rank - 1]).abs() < 1e-4,
        "{} vs {}",
        cal.q,
        s[11]
    );
    // CALIBRATED scales the miss by e^q; a run of this bundle resumes (its
    // q and map read back exactly).
    let out = CertifyOptions {
        offset: 0,
        skip: 7_000,
        ..certify_opts(&b, &root.path().join("cal-run.tsv"), Method::Calibrated)
    };
    certify(&out).unwrap();
    let expected = (N as f64 * (1.0 - ((mapped_miss + c) * cal.q.exp() - c))).round() as u64;
    for r in read_tsv(&root.path().join("cal-run.tsv")).unwrap() {
        assert!(r.count_a.abs_diff(expected) <= 2, "{r:?} vs {expected}");
        assert_eq!(r.delta, Some(0.1));
    }
    let again = certify(&out).unwrap();
    assert_eq!(again.resumed_rows, again.inputs);

    // Counts at another N than the nominal one cannot calibrate.
    counts(
        &b,
        &root.path().join("small.safetensors"),
        Split::Train,
        3000,
        N / 2,
    );
    let err = calibrate(&cal_opts(
        &b,
        &root.path().join("small.safetensors"),
        0.1,
        ConformalScore::PGap,
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("nominal N"), "{err}");
}

/// The score, the bins and AUTO's band are chosen on selection inputs that
/// never include a calibration input, and calibration never reads a
/// selection input: each refuses the other's, in either order.
#[test]
fn selection_and_calibration_never_share_an_input() {
    use smoothcert::pipeline::select::{select_calibration, SelectOptions};
    let _rng = rng_lock();
    let root = tempfile::tempdir().unwrap();
    let b = bundle(root.path());
    // Two disjoint halves of 40 test inputs (positions 0, 2, ... and 1, 3, ...).
    let half = |i: usize| {
        let out = root.path().join(format!("half-{i}.safetensors"));
        counts_shard(
            &b,
            &out,
            Split::Test,
            250,
            N,
            Some(Shard { index: i, count: 2 }),
        );
        out
    };
    let (selection, calibration) = (half(0), half(1));
    let select = |counts: &Path| {
        select_calibration(&SelectOptions {
            base: cal_opts(&b, counts, 0.2, ConformalScore::PGap),
            scores: vec![ConformalScore::PGap, ConformalScore::Probit],
            bin_candidates: vec![vec![]],
            margin_thresholds: vec![None, Some(2.5)],
            radii: vec![0.0, 0.25, 0.5],
            band_lows: vec![0.0, 0.2, 0.4],
            band_tolerance: 0.01,
        })
    };
    let summary = select(&selection).unwrap();
    assert_eq!(summary.inputs, 20);
    assert_eq!(summary.candidates.len(), 4);
    assert!(summary.candidates.iter().any(|c| c.score == summary.score));

    // Calibrating on the selection inputs is refused; on the other half it works.
    let err = calibrate(&cal_opts(&b, &selection, 0.2, ConformalScore::Probit))
        .unwrap_err()
        .to_string();
    assert!(err.contains("selection inputs"), "{err}");
    let cal = calibrate(&cal_opts(&b, &calibration, 0.2, ConformalScore::Probit)).unwrap();
    // Independently: the probit scores and their ceil(21 * 0.8) = 17th smallest.
    let test = fashion(Split::Test);
    let counts = Counts::read(&calibration).unwrap();
    let normal = statrs::distribution::Normal::standard();
    use statrs::distribution::ContinuousCDF;
    let c = 0.5 / N as f64;
    let mut s: Vec<f64> = (0..counts.len())
        .map(|i| {
            let x0 = f64::from(test.image(counts.indices[i] as usize)[0]);
            let z = |p: f64| normal.inverse_cdf(p.clamp(c, 1.0 - c));
            z(p_hat_0(x0)) - z(f64::from(counts.row(i)[0]) / N as f64)
        })
        .collect();
    s.sort_by(f64::total_cmp);
    assert_eq!((cal.calibration.m, cal.calibration.rank), (20, 17));
    assert!(
        (cal.calibration.q - s[16]).abs() < 1e-6,
        "{} vs {}",
        cal.calibration.q,
        s[16]
    );

    // Selection now refuses the calibration inputs, alone or mixed in.
    let err = select(&calibration).unwrap_err().to_string();
    assert!(err.contains("calibrated this bundle"), "{err}");
    let whole = root.path().join("whole.safetensors");
    counts_shard(&b, &whole, Split::Test, 250, N, None);
    let err = select(&whole).unwrap_err().to_string();
    assert!(err.contains("calibrated this bundle"), "{err}");

    // A second selection adds its inputs to the first's fence.
    let third = root.path().join("third.safetensors");
    counts_shard(&b, &third, Split::Test, 333, N, None);
    select(&third).unwrap();
    let fenced = smoothcert::pipeline::InputList::read(&b.join("selection_inputs.json")).unwrap();
    for idx in [500, 9500, 333, 9990] {
        assert!(fenced.indices.contains(&idx), "{idx} left the fence");
    }
}
