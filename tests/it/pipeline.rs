//! End-to-end pipeline tests on the real Fashion-MNIST files (installed by
//! scripts/setup.sh), with tiny runs: training resumes to bit-identical
//! weights, certification resumes without redoing rows, and every row's
//! radius agrees with an independent computation.
use smoothcert::data::{DatasetKind, Split};
use smoothcert::engine::CertifyParams;
use smoothcert::engine::Method;
use smoothcert::model::{Arch, Bundle, Classifier};
use smoothcert::pipeline::certify::{certify, CertifyOptions};
use smoothcert::pipeline::train::{train_base, TrainBaseOptions, TrainOutcome};
use smoothcert::pipeline::tsv::read_tsv;
use smoothcert::testing::{phi, rng_lock, write_threshold_bundle};
use std::path::Path;
use tch::{Device, Tensor};

fn train_opts(out: &Path) -> TrainBaseOptions {
    TrainBaseOptions {
        dataset: DatasetKind::FashionMnist,
        data_dir: None,
        arch: Arch::SmallCnn,
        noise: smoothcert::smoothing::Noise::Gaussian { sigma: 0.25 },
        epochs: 3,
        batch_size: 64,
        learning_rate: 2e-3,
        seed: 42,
        device: Device::Cpu,
        limit: Some(1024),
        out: out.to_path_buf(),
        name: None,
        pause_after: None,
        show_progress: false,
    }
}

fn weights(dir: &Path) -> Vec<(String, Tensor)> {
    let mut w = Tensor::read_safetensors(dir.join("base.safetensors")).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

/// In a process of its own: servers that other tests run in this binary
/// draw noise from libtorch's one generator, which training draws from too.
#[test]
fn train_base_resumes_to_identical_weights() {
    if !crate::common::in_own_process("pipeline::train_base_resumes_to_identical_weights") {
        return;
    }
    let _rng = rng_lock();
    tch::set_num_threads(1); // bit-identical float reductions across the two runs
    let root = tempfile::tempdir().unwrap();
    let straight = root.path().join("straight");
    let TrainOutcome::Finished(summary) = train_base(&train_opts(&straight)).unwrap() else {
        panic!("expected a finished run");
    };
    assert_eq!(summary.history.len(), 3);
    assert!(summary.clean_test_accuracy > 0.5, "{summary:?}");
    assert!(
        !straight.join("checkpoint").exists(),
        "checkpoint left behind"
    );

    // The same run, interrupted after one epoch and then after a second.
    let interrupted = root.path().join("interrupted");
    let mut opts = train_opts(&interrupted);
    opts.pause_after = Some(1);
    for expected_done in [1, 2] {
        match train_base(&opts).unwrap() {
            TrainOutcome::Paused { epochs_done } => assert_eq!(epochs_done, expected_done),
            other => panic!("expected a pause, got {other:?}"),
        }
        assert!(interrupted.join("checkpoint/state.json").exists());
    }
    let TrainOutcome::Finished(resumed) = train_base(&opts).unwrap() else {
        panic!("expected the resumed run to finish");
    };
    assert_eq!(resumed.resumed_from_epoch, 2);
    assert_eq!(resumed.history.len(), 3);
    let (a, b) = (weights(&straight), weights(&interrupted));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs after resuming");
    }

    // The bundle is complete and loads; its provenance records the run.
    let bundle = Bundle::load(&straight).unwrap();
    assert_eq!(
        bundle.provenance.dataset,
        Some(DatasetKind::FashionMnist.into())
    );
    assert_eq!(bundle.provenance.epochs, Some(3));
    assert_eq!(bundle.labels.len(), 10);
    Classifier::load(&bundle, Device::Cpu).unwrap();

    // A checkpoint from different settings is refused, not silently mixed in.
    let mut first = train_opts(&root.path().join("mismatch"));
    first.pause_after = Some(1);
    train_base(&first).unwrap();
    let mut second = first.clone();
    second.noise = smoothcert::smoothing::Noise::Gaussian { sigma: 0.5 };
    let err = train_base(&second).unwrap_err().to_string();
    assert!(err.contains("different run"), "{err}");
}

fn certify_opts(bundle: &Path, out: &Path) -> CertifyOptions {
    CertifyOptions {
        bundle: bundle.to_path_buf(),
        method: Method::MonteCarlo,
        split: Split::Test,
        data_dir: None,
        offset: 0,
        skip: 50,
        max: Some(8),
        params: CertifyParams {
            n0: 50,
            n: 4_000,
            alpha: 0.001,
            batch: 1000,
        },
        seed: 9,
        adaptive_n0: None,
        auto_band: smoothcert::engine::AutoBand {
            low: smoothcert::config::DEFAULT_AUTO_BAND.0,
            high: smoothcert::config::DEFAULT_AUTO_BAND.1,
        },
        target: None,
        device: Device::Cpu,
        out: out.to_path_buf(),
        show_progress: false,
    }
}

#[test]
fn certify_rows_match_closed_form_and_resume() {
    let _rng = rng_lock();
    let root = tempfile::tempdir().unwrap();
    // A linear rule on the first pixel (0 in every Fashion-MNIST image's corner):
    // the smoothed classifier predicts class 0 with pA = Phi(0.5 / sigma).
    let sigma = 0.25;
    let bundle = root.path().join("bundle");
    write_threshold_bundle(&bundle, [1, 28, 28], 0.5, sigma);
    let full = root.path().join("full.tsv");
    let summary = certify(&certify_opts(&bundle, &full)).unwrap();
    assert_eq!(summary.inputs, 8);
    let rows = read_tsv(&full).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.idx).collect::<Vec<_>>(),
        (0..8).map(|i| i * 50).collect::<Vec<_>>()
    );
    let p_true = phi(0.5 / sigma);
    for r in &rows {
        assert_eq!(r.method, Method::MonteCarlo);
        assert_eq!(r.n, 4_000);
        assert_eq!(r.predict, 0, "{r:?}");
        // Radius = sigma * Phi^-1(p_a_lower), and the bound sits below the true pA
        // but within the sampling error.
        let z = statrs_ppf(r.p_a_lower);
        assert!((r.radius - sigma * z).abs() < 1e-5, "{r:?}");
        assert!(r.p_a_lower < p_true, "{r:?}");
        assert!(r.p_a_lower > p_true - 0.02, "{r:?}");
        assert!(r.radius < 0.5, "never beyond the exact radius 0.5: {r:?}");
    }

    // Interrupt: keep three rows and half of the fourth, then resume.
    let partial = root.path().join("partial.tsv");
    let text = std::fs::read_to_string(&full).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut cut = lines[..4].join("\n");
    cut.push('\n');
    cut.push_str(&lines[4][..lines[4].len() / 2]);
    std::fs::write(&partial, cut).unwrap();
    std::fs::copy(
        root.path().join("full.params.json"),
        root.path().join("partial.params.json"),
    )
    .unwrap();
    let resumed = certify(&certify_opts(&bundle, &partial)).unwrap();
    assert_eq!(resumed.resumed_rows, 3);
    let again = read_tsv(&partial).unwrap();
    assert_eq!(again.len(), rows.len());
    for (a, b) in again.iter().zip(&rows) {
        // Per-input seeding: a resumed row is the row an uninterrupted run writes.
        assert_eq!((a.idx, a.predict, a.count_a), (b.idx, b.predict, b.count_a));
    }

    // Resuming with other parameters is refused.
    let mut other = certify_opts(&bundle, &partial);
    other.params.n = 5_000;
    let err = certify(&other).unwrap_err().to_string();
    assert!(err.contains("other parameters"), "{err}");
    let mut shifted = certify_opts(&bundle, &partial);
    shifted.offset = 7;
    let err = certify(&shifted).unwrap_err().to_string();
    assert!(err.contains("other parameters"), "{err}");

    // --offset 7 --skip 50: inputs 7, 57, ...; an offset past the split is refused.
    let mut offset = certify_opts(&bundle, &root.path().join("offset.tsv"));
    offset.offset = 7;
    offset.max = Some(2);
    certify(&offset).unwrap();
    let shifted_rows = read_tsv(&root.path().join("offset.tsv")).unwrap();
    assert_eq!(
        shifted_rows.iter().map(|r| r.idx).collect::<Vec<_>>(),
        [7, 57]
    );
    let mut past = certify_opts(&bundle, &root.path().join("past.tsv"));
    past.offset = 10_000;
    let err = certify(&past).unwrap_err().to_string();
    assert!(err.contains("--offset 10000"), "{err}");
}

fn statrs_ppf(p: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    Normal::standard().inverse_cdf(p)
}

/// A bundle whose base is the rule "class 1 iff x[0] > 0.5" and whose surrogate
/// is a TorchScript rule with logits (-(x[0] - t), x[0] - t): its softmax is
/// known in closed form, so every step of ACCELERATED can be checked.
fn bundle_with_linear_surrogate(root: &Path, t: f64) -> std::path::PathBuf {
    use smoothcert::model::{BaseSpec, SurrogateSpec, WeightsFormat};
    let dir = root.join(format!("accel-{t}"));
    let mut bundle = write_threshold_bundle(&dir, [1, 28, 28], 0.5, 0.25);
    let other = root.join(format!("surrogate-src-{t}"));
    write_threshold_bundle(&other, [1, 28, 28], t, 0.25);
    std::fs::copy(other.join("base.pt"), dir.join("surrogate.pt")).unwrap();
    bundle.surrogate = Some(SurrogateSpec {
        model: BaseSpec {
            format: WeightsFormat::Torchscript,
            file: "surrogate.pt".into(),
            arch: None,
        },
        nominal_n: 100_000,
        training: None,
        tail_map: None,
        calibration: None,
    });
    bundle.save().unwrap();
    dir
}

#[test]
fn surrogate_method_follows_the_accelerated_steps() {
    let _rng = rng_lock();
    let root = tempfile::tempdir().unwrap();
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    // Corner pixel 0: the base's cA is class 0. A surrogate with t = 1 gives
    // class 0 probability sigmoid(2) (agreeing); with t = -1 it prefers class 1.
    let agree = bundle_with_linear_surrogate(root.path(), 1.0);
    let mut opts = certify_opts(&agree, &root.path().join("agree.tsv"));
    opts.method = Method::Surrogate;
    opts.params.n = 100_000;
    certify(&opts).unwrap();
    let expected_k = (100_000.0 * sigmoid(2.0)).round() as u64;
    for r in read_tsv(&root.path().join("agree.tsv")).unwrap() {
        assert_eq!(r.method, Method::Surrogate);
        assert_eq!((r.predict, r.n), (0, 100_000), "{r:?}");
        // float32 softmax: within one count of the closed form.
        assert!(r.count_a.abs_diff(expected_k) <= 1, "{r:?} vs {expected_k}");
        assert!((r.radius - 0.25 * statrs_ppf(r.p_a_lower)).abs() < 1e-5);
        assert!(r.p_a_lower < sigmoid(2.0) && r.p_a_lower > sigmoid(2.0) - 0.01);
    }

    let disagree = bundle_with_linear_surrogate(root.path(), -1.0);
    let mut opts = certify_opts(&disagree, &root.path().join("disagree.tsv"));
    opts.method = Method::Surrogate;
    certify(&opts).unwrap();
    for r in read_tsv(&root.path().join("disagree.tsv")).unwrap() {
        assert_eq!(r.predict, -1);
        assert_eq!(r.abstain_reason.as_deref(), Some("class_mismatch"));
    }

    // Without a surrogate in the bundle the method is refused with a clear message.
    let plain = root.path().join("plain");
    write_threshold_bundle(&plain, [1, 28, 28], 0.5, 0.25);
    let mut opts = certify_opts(&plain, &root.path().join("none.tsv"));
    opts.method = Method::Surrogate;
    let err = certify(&opts).unwrap_err().to_string();
    assert!(err.contains("[surrogate]"), "{err}");
}

#[test]
fn bench_certify_times_both_methods_on_the_same_inputs() {
    use smoothcert::bench::{bench_methods, MethodsBenchOptions};
    let _rng = rng_lock();
    let root = tempfile::tempdir().unwrap();
    let bundle = bundle_with_linear_surrogate(root.path(), 1.0);
    let r = bench_methods(&MethodsBenchOptions {
        bundle,
        device: Device::Cpu,
        inputs: 3,
        params: CertifyParams {
            n0: 10,
            n: 20_000,
            alpha: 0.001,
            batch: 1000,
        },
        seed: 0,
        auto_band: smoothcert::engine::AutoBand {
            low: 0.2,
            high: 0.5,
        },
        target_radii: vec![0.1],
    })
    .unwrap();
    assert!(
        r.calibrated.is_none(),
        "an uncalibrated bundle times two methods"
    );
    assert_eq!(r.inputs, 3);
    assert!((r.ideal_speedup - 20_010.0 / 11.0).abs() < 1e-9);
    assert!(r.mc_median_seconds > 0.0 && r.surrogate_median_seconds > 0.0);
    assert!((r.speedup - r.mc_median_seconds / r.surrogate_median_seconds).abs() < 1e-9);
    assert!(r.markdown().contains("surrogate (estimate)"));
    // SEQUENTIAL at 0.1 on the same inputs: passes counted, and fewer than
    // Monte Carlo's n0 + n; what it certifies, Monte Carlo certifies too
    // (both exact; the sequential test stops early, never certifies more
    // than its samples support).
    let s = &r.sequential[0];
    assert!(s.mean_passes > 10.0 && s.mean_passes < 20_010.0, "{s:?}");
    assert!((s.speedup_passes - 20_010.0 / s.mean_passes).abs() < 1e-9);
    assert!(r.markdown().contains("sequential"));
}
