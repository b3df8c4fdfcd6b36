//! The gRPC service end to end, by method: CALIBRATED, AUTO (the calibrated
//! answer or its Monte Carlo fallback) and adaptive n0, on copies of the
//! shipped bundle with a calibration set by hand.

use crate::common::{bundle_copy, certified, config_for, scrape, start, tensor, test_images};
use smoothcert::server::pb;
use statrs::distribution::ContinuousCDF;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calibrated_auto_and_adaptive_n0_over_grpc() {
    let root = tempfile::tempdir().unwrap();
    let (q, n) = (0.004, 2_000);
    let cal = bundle_copy(root.path(), "calibrated", Some((q, n)));
    let uncalibrated = bundle_copy(root.path(), "uncalibrated", None);
    let (server, mut client) = start(config_for(&[
        ("cal", &cal, ""),
        (
            "always-mc",
            &cal,
            "auto_band_low = 0.0\nauto_band_high = 1.0",
        ),
        ("plain", &uncalibrated, ""),
    ]))
    .await;
    let models = client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    let info = models.iter().find(|m| m.name == "cal").unwrap();
    assert!(info.calibrated && info.delta == 0.05);
    let (images, _) = test_images(1);
    let ask =
        |model: &str, method: pb::Method, n: u64, extra: pb::CertifyOptions| pb::CertifyRequest {
            model: model.into(),
            input: Some(tensor(&images[0], &[1, 28, 28])),
            options: Some(pb::CertifyOptions {
                method: method as i32,
                n: Some(n),
                seed: Some(7),
                ..extra
            }),
            request_id: String::new(),
        };

    // CALIBRATED is the surrogate's count less N q, at the same seed (cA alike).
    let plain = client
        .certify(ask("cal", pb::Method::Surrogate, n, Default::default()))
        .await
        .unwrap()
        .into_inner();
    let calibrated = client
        .certify(ask("cal", pb::Method::Calibrated, n, Default::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(calibrated.method, pb::Method::Calibrated as i32);
    assert_eq!(calibrated.requested_method, pb::Method::Calibrated as i32);
    let p = calibrated.parameters.as_ref().unwrap();
    assert_eq!(
        (p.delta, p.calibration_q, p.n0_drawn, p.adaptive_n0),
        (0.05, q, 100, false)
    );
    assert_eq!(p.calibration_score, "p_gap");
    assert_eq!(plain.parameters.as_ref().unwrap().delta, 0.0);
    let (c, s) = (certified(&calibrated), certified(&plain));
    assert!(c.estimate && c.class_index == s.class_index);
    let expected = s.count_a as f64 - q * n as f64;
    assert!(
        (c.count_a as f64 - expected).abs() <= 1.0,
        "{} vs {expected}",
        c.count_a
    );
    let cp = statrs::distribution::Beta::new(c.count_a as f64, (n - c.count_a + 1) as f64)
        .unwrap()
        .inverse_cdf(0.001);
    assert!((c.p_a_lower - cp).abs() < 1e-6);

    // Another n, n0 or selection rule would void the stated delta; a model
    // without calibration refuses.
    for (n0, adaptive, field) in [
        (Some(50), None, "options.n0"),
        (None, Some(true), "options.adaptive_n0"),
    ] {
        let extra = pb::CertifyOptions {
            n0,
            adaptive_n0: adaptive,
            ..Default::default()
        };
        let err = client
            .certify(ask("cal", pb::Method::Calibrated, n, extra))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(field), "{}", err.message());
    }
    // Options out of line with the calibration: the client's field is named.
    // A method the model cannot serve at all: FAILED_PRECONDITION naming the model.
    for (model, method, n, code, needle) in [
        (
            "cal",
            pb::Method::Calibrated,
            3_000,
            Code::InvalidArgument,
            "options.n:",
        ),
        (
            "cal",
            pb::Method::Auto,
            3_000,
            Code::InvalidArgument,
            "options.n:",
        ),
        (
            "plain",
            pb::Method::Calibrated,
            100_000,
            Code::FailedPrecondition,
            "model plain:",
        ),
        (
            "plain",
            pb::Method::Auto,
            100_000,
            Code::FailedPrecondition,
            "model plain:",
        ),
    ] {
        let err = client
            .certify(ask(model, method, n, Default::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{model} {method:?}: {err:?}");
        assert!(err.message().starts_with(needle), "{}", err.message());
    }

    // AUTO: a decisive calibrated estimate answers; with a band over all of
    // [0, 1] the Monte Carlo lane answers, with the estimate's cA.
    let auto = client
        .certify(ask("cal", pb::Method::Auto, n, Default::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(auto.method, pb::Method::Calibrated as i32);
    assert_eq!(auto.requested_method, pb::Method::Auto as i32);
    assert_eq!(certified(&auto).count_a, c.count_a);
    let fallback = client
        .certify(ask("always-mc", pb::Method::Auto, n, Default::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fallback.method, pb::Method::MonteCarlo as i32);
    assert_eq!(fallback.requested_method, pb::Method::Auto as i32);
    let f = certified(&fallback);
    assert!(!f.estimate && f.class_index == c.class_index);
    assert_eq!(fallback.parameters.as_ref().unwrap().delta, 0.0);
    let cp = statrs::distribution::Beta::new(f.count_a as f64, (n - f.count_a + 1) as f64)
        .map(|b| b.inverse_cdf(0.001))
        .unwrap_or(0.001f64.powf(1.0 / n as f64));
    assert!((f.p_a_lower - cp).abs() < 1e-6, "{} vs {cp}", f.p_a_lower);
    let text = scrape(&server).await;
    let paths: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("smoothcert_auto_path"))
        .collect();
    assert!(
        paths.iter().any(|l| l.contains("model=\"cal\"")
            && l.contains("path=\"calibrated\"")
            && l.ends_with(" 1")),
        "{paths:?}"
    );
    assert!(
        paths.iter().any(|l| l.contains("model=\"always-mc\"")
            && l.contains("path=\"monte_carlo\"")
            && l.ends_with(" 1")),
        "{paths:?}"
    );

    // Adaptive n0 on a confident image stops early, and says so.
    let adaptive = client
        .certify(ask(
            "cal",
            pb::Method::Surrogate,
            n,
            pb::CertifyOptions {
                adaptive_n0: Some(true),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let p = adaptive.parameters.as_ref().unwrap();
    assert!(
        p.adaptive_n0 && p.n0_drawn >= 10 && p.n0_drawn < 100,
        "{p:?}"
    );
    assert_eq!(certified(&adaptive).class_index, s.class_index);
    server.shutdown();
    server.wait().await.unwrap();
}
