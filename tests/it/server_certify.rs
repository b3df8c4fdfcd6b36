//! The gRPC service end to end, answering: certificates by both methods on
//! real Fashion-MNIST test images (tensor and PNG inputs), PREDICT, the model
//! list, concurrent requests in shared batches, and CertifyStream.

use crate::common::{
    config, metric_sum, png, request, scrape, sigma_phi_inv, start, tensor, test_images,
};
use smoothcert::server::pb;
use statrs::distribution::ContinuousCDF;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certifies_real_test_images_with_both_methods() {
    let (server, mut client) = start(config("")).await;
    let models = client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(models.len(), 1);
    let info = &models[0];
    assert!(info.is_default && info.has_surrogate);
    assert_eq!(info.input_shape, vec![1, 28, 28]);
    assert_eq!(info.classes.len(), 10);
    assert_eq!(info.nominal_n, 100_000);
    let sigma = info.sigma;

    let (images, labels) = test_images(12);
    let mut correct = 0;
    for (i, (pixels, &label)) in images.iter().zip(&labels).enumerate() {
        // Alternate the two input forms; both must decode to the same pixels.
        let input = if i % 2 == 0 {
            tensor(pixels, &[1, 28, 28])
        } else {
            pb::certify_request::Input::Image(png(pixels))
        };
        let r = client
            .certify(request(input, pb::CertifyOptions::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.method, pb::Method::Surrogate as i32, "the default method");
        let params = r.parameters.unwrap();
        assert_eq!((params.n0, params.n, params.alpha), (100, 100_000, 0.001));
        assert_eq!(params.sigma, sigma);
        match r.outcome.unwrap() {
            pb::certify_response::Outcome::Certified(c) => {
                assert!(c.estimate, "a surrogate radius is flagged as an estimate");
                assert_eq!(c.norm, "L2");
                assert_eq!(c.label, info.classes[c.class_index as usize]);
                assert!((c.radius - sigma_phi_inv(sigma, c.p_a_lower)).abs() < 1e-9);
                correct += usize::from(i64::from(c.class_index) == label);
            }
            pb::certify_response::Outcome::Abstain(a) => {
                assert_ne!(a.reason, pb::AbstainReason::Unspecified as i32);
            }
        }
    }
    assert!(correct >= 9, "{correct}/12 certified and correct");

    // Monte Carlo at a small n: a certificate whose bound is Clopper-Pearson's.
    let seeded = pb::CertifyOptions {
        method: pb::Method::MonteCarlo as i32,
        n: Some(2000),
        seed: Some(42),
        ..Default::default()
    };
    let mc = client
        .certify(request(tensor(&images[0], &[28, 28]), seeded))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mc.method, pb::Method::MonteCarlo as i32);
    let Some(pb::certify_response::Outcome::Certified(c)) = mc.outcome.clone() else {
        panic!("image 0 should be certified: {mc:?}");
    };
    assert!(!c.estimate);
    // Exact one-sided Clopper-Pearson lower bound: the Beta(k, n - k + 1) quantile at alpha.
    let beta = statrs::distribution::Beta::new(c.count_a as f64, (2000 - c.count_a + 1) as f64);
    if c.count_a < 2000 {
        let expected = beta.unwrap().inverse_cdf(0.001);
        assert!(
            (c.p_a_lower - expected).abs() < 1e-6,
            "{} vs {expected}",
            c.p_a_lower
        );
    } else {
        assert!((c.p_a_lower - 0.001f64.powf(1.0 / 2000.0)).abs() < 1e-12);
    }
    // The same seed gives the same answer.
    let again = client
        .certify(request(tensor(&images[0], &[1, 1, 28, 28]), seeded))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.outcome, mc.outcome);

    // PREDICT on the same image.
    let p = client
        .predict(pb::PredictRequest {
            model: String::new(),
            input: Some(pb::predict_request::Input::Tensor(pb::Tensor {
                shape: vec![1, 28, 28],
                data: images[0].iter().flat_map(|p| p.to_le_bytes()).collect(),
            })),
            options: Some(pb::PredictOptions {
                n: Some(1000),
                alpha: Some(0.001),
                seed: Some(1),
            }),
            request_id: "p1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.request_id, "p1");
    assert!(p.count_a >= p.count_b && p.count_a + p.count_b <= 1000);
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_are_batched_and_answered_correctly() {
    let (server, client) = start(config(
        "[batching]\nmax_batch_requests = 16\nmax_queue_delay_ms = 20\n",
    ))
    .await;
    let (images, _) = test_images(48);
    // Each image alone first (sequential: batches of one), seeded...
    let mut alone = Vec::new();
    for img in &images {
        let opts = pb::CertifyOptions {
            seed: Some(7),
            ..Default::default()
        };
        let r = client
            .clone()
            .certify(request(tensor(img, &[1, 28, 28]), opts))
            .await
            .unwrap();
        alone.push(r.into_inner());
    }
    // ...then all at once: the same answers, in shared batches.
    let handles: Vec<_> = images
        .iter()
        .map(|img| {
            let mut c = client.clone();
            let req = request(
                tensor(img, &[1, 28, 28]),
                pb::CertifyOptions {
                    seed: Some(7),
                    ..Default::default()
                },
            );
            tokio::spawn(async move { c.certify(req).await.map(|r| r.into_inner()) })
        })
        .collect();
    let mut max_batch = 0;
    for (h, a) in handles.into_iter().zip(&alone) {
        let r = h.await.unwrap().unwrap();
        // The same noise, so the same class and (up to a float difference in
        // the surrogate's batched logits) the same count.
        use pb::certify_response::Outcome::*;
        match (r.outcome.unwrap(), a.outcome.clone().unwrap()) {
            (Certified(x), Certified(y)) => {
                assert_eq!(x.class_index, y.class_index);
                assert!(x.count_a.abs_diff(y.count_a) <= 2, "{x:?} vs {y:?}");
            }
            (Abstain(x), Abstain(y)) => {
                assert_eq!((x.reason, x.class_index), (y.reason, y.class_index))
            }
            (x, y) => panic!("batching changed a seeded answer: {x:?} vs {y:?}"),
        }
        max_batch = max_batch.max(r.timing.unwrap().batch_size);
    }
    assert!(max_batch > 1, "no request shared a batch");
    let text = scrape(&server).await;
    let count = metric_sum(&text, "smoothcert_batch_size_count");
    let sum = metric_sum(&text, "smoothcert_batch_size_sum");
    assert!(sum / count > 1.0, "mean batch size {}", sum / count);
    assert!(metric_sum(&text, "smoothcert_forward_passes_total") >= 96.0 * 100.0);
    assert_eq!(metric_sum(&text, "smoothcert_models_loaded"), 1.0);
    assert!(text.contains("code=\"OK\""));
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_answers_every_request_and_reports_bad_ones_inline() {
    let (server, mut client) = start(config("")).await;
    let (images, _) = test_images(6);
    let mut reqs: Vec<pb::CertifyRequest> = images
        .iter()
        .enumerate()
        .map(|(i, img)| pb::CertifyRequest {
            request_id: format!("r{i}"),
            ..request(tensor(img, &[1, 28, 28]), pb::CertifyOptions::default())
        })
        .collect();
    reqs[3].input = Some(tensor(&images[3], &[5]));
    let mut stream = client
        .certify_stream(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        assert_eq!(item.request_id, format!("r{}", item.index));
        match item.result.unwrap() {
            pb::certify_stream_response::Result::Response(r) => {
                assert_ne!(item.index, 3);
                assert_eq!(r.request_id, item.request_id);
            }
            pb::certify_stream_response::Result::Error(e) => {
                assert_eq!(item.index, 3);
                assert_eq!(e.code, Code::InvalidArgument as i32);
            }
        }
        seen.push(item.index);
    }
    seen.sort();
    assert_eq!(seen, (0..6).collect::<Vec<_>>());
    server.shutdown();
    server.wait().await.unwrap();
}

/// A uniform-noise bundle served beside the Gaussian one: its certificates
/// are in L1 with the uniform's radius and L-infinity radius by their closed
/// forms, its SEQUENTIAL target uses the uniform's p*, and ListModels says
/// each model's noise, scale and norm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uniform_noise_bundle_answers_in_l1() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("uniform");
    let lambda = 0.5;
    smoothcert::testing::write_threshold_bundle_with(
        &dir,
        [1, 28, 28],
        0.5,
        smoothcert::smoothing::Noise::Uniform { lambda },
    );
    let (server, mut client) = start(crate::common::config_for(&[
        ("gauss", &crate::common::bundle_dir(), ""),
        ("uniform", &dir, "method = \"monte_carlo\""),
    ]))
    .await;
    let models = client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    let info = |name: &str| models.iter().find(|m| m.name == name).unwrap().clone();
    let (g, u) = (info("gauss"), info("uniform"));
    assert_eq!(
        (g.noise.as_str(), g.norm.as_str(), g.noise_scale),
        ("gaussian", "L2", 0.25)
    );
    assert_eq!(
        (u.noise.as_str(), u.norm.as_str(), u.noise_scale),
        ("uniform", "L1", lambda)
    );
    assert_eq!(u.sigma, 0.0, "sigma is the Gaussian's alone");

    // First pixel 0.8: the L1 distance to the rule's boundary is 0.3.
    let mut pixels = vec![0.3f32; 784];
    pixels[0] = 0.8;
    let ask = |options: pb::CertifyOptions| pb::CertifyRequest {
        model: "uniform".into(),
        input: Some(tensor(&pixels, &[1, 28, 28])),
        options: Some(options),
        request_id: String::new(),
    };
    let r = client
        .certify(ask(pb::CertifyOptions {
            n: Some(20_000),
            seed: Some(3),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let params = r.parameters.clone().unwrap();
    assert_eq!(
        (params.noise.as_str(), params.noise_scale),
        ("uniform", lambda)
    );
    let c = crate::common::certified(&r);
    assert!(!c.estimate);
    assert_eq!(c.norm, "L1");
    assert!((c.radius - 2.0 * lambda * (c.p_a_lower - 0.5)).abs() < 1e-12);
    let linf = 2.0 * lambda * (1.0 - (1.5 - c.p_a_lower).powf(1.0 / 784.0));
    assert!((c.linf_radius - linf).abs() < 1e-12);
    assert!(c.radius < 0.3 && c.radius > 0.27, "{}", c.radius);

    // SEQUENTIAL at L1 radius 0.25 (p* = 0.75, below pA = 0.8): certified.
    let r = client
        .certify(ask(pb::CertifyOptions {
            method: pb::Method::Sequential as i32,
            n: Some(20_000),
            target_radius: Some(0.25),
            seed: Some(4),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let c = crate::common::certified(&r);
    assert_eq!(c.norm, "L1");
    assert!(c.radius >= 0.25);
    // Beyond lambda no uniform radius exists: refused, naming the bound.
    let err = client
        .certify(ask(pb::CertifyOptions {
            method: pb::Method::Sequential as i32,
            target_radius: Some(0.6),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("L1"), "{}", err.message());
    server.shutdown();
}
