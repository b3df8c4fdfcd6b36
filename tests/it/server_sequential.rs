//! SEQUENTIAL over gRPC: an exact certificate at a required radius, the
//! passes it drew, its refusals, a stream mixing targets, and its metrics.

use crate::common::{
    bundle_copy, config, config_for, metric_sum, request, scrape, sigma_phi_inv, start, tensor,
    test_images,
};
use smoothcert::server::pb;
use tonic::Code;

fn sequential(pixels: &[f32], target: Option<f64>, seed: u64) -> pb::CertifyRequest {
    request(
        tensor(pixels, &[1, 28, 28]),
        pb::CertifyOptions {
            method: pb::Method::Sequential as i32,
            target_radius: target,
            seed: Some(seed),
            ..Default::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_certifies_a_target_radius_for_a_fraction_of_the_passes() {
    let (server, mut client) = start(config("")).await;
    let (images, labels) = test_images(1);
    // Test image 0, an ankle boot the smoothed classifier is sure of.
    let r = client
        .certify(sequential(&images[0], Some(0.5), 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.method, pb::Method::Sequential as i32);
    assert_eq!(r.requested_method, pb::Method::Sequential as i32);
    let p = r.parameters.as_ref().unwrap();
    let c = match r.outcome.as_ref().unwrap() {
        pb::certify_response::Outcome::Certified(c) => c,
        other => panic!("{other:?}"),
    };
    assert_eq!(i64::from(c.class_index), labels[0]);
    assert!(!c.estimate, "a sequential radius is a certificate");
    assert!(c.radius >= 0.5, "{c:?}");
    assert!((c.radius - sigma_phi_inv(0.25, c.p_a_lower)).abs() < 1e-9);
    assert_eq!(p.target_radius, 0.5);
    // pA near 1 at eps = 2 sigma: hundreds or a few thousand samples, not 100,000.
    assert!(p.n_drawn > 0 && p.n_drawn <= 10_000, "{p:?}");
    assert!(c.count_a <= p.n_drawn);
    assert_eq!(p.n, 100_000, "n is the cap");

    // Same seed, same answer.
    let again = client
        .certify(sequential(&images[0], Some(0.5), 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.outcome, r.outcome);

    // A radius beyond what the cap can certify is given up on, exactly.
    let far = client
        .certify(sequential(&images[0], Some(1.2), 3))
        .await
        .unwrap()
        .into_inner();
    match far.outcome.unwrap() {
        pb::certify_response::Outcome::Abstain(a) => {
            assert_eq!(a.reason, pb::AbstainReason::TargetNotReached as i32);
            assert!(sigma_phi_inv(0.25, a.p_a_lower) < 1.2);
            // Out of reach of the cap: given up well before it.
            let drawn = far.parameters.as_ref().unwrap().n_drawn;
            assert!(drawn < 100_000, "drew {drawn}");
        }
        other => panic!("{other:?}"),
    }

    // Refusals name the field.
    for (req, needle) in [
        (sequential(&images[0], None, 1), "options.target_radius"),
        (
            sequential(&images[0], Some(-0.1), 1),
            "options.target_radius",
        ),
        (
            sequential(&images[0], Some(f64::NAN), 1),
            "options.target_radius",
        ),
        (
            request(
                tensor(&images[0], &[1, 28, 28]),
                pb::CertifyOptions {
                    method: pb::Method::MonteCarlo as i32,
                    target_radius: Some(0.5),
                    ..Default::default()
                },
            ),
            "options.target_radius",
        ),
    ] {
        let err = client.certify(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(needle), "{}", err.message());
    }

    // A stream mixing targets, and a bad one answered inline.
    let (images, _) = test_images(3);
    let reqs: Vec<pb::CertifyRequest> = vec![
        sequential(&images[0], Some(0.25), 5),
        sequential(&images[1], Some(0.5), 5),
        sequential(&images[2], Some(0.75), 5),
        sequential(&images[0], None, 5),
    ];
    let sent = reqs.len();
    let mut answers = client
        .certify_stream(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut seen = vec![None; sent];
    while let Some(a) = answers.message().await.unwrap() {
        seen[a.index as usize] = a.result;
    }
    let mut certified = 0;
    for (i, target) in [0.25, 0.5, 0.75].into_iter().enumerate() {
        match seen[i].as_ref().unwrap() {
            pb::certify_stream_response::Result::Response(r) => {
                assert_eq!(r.parameters.as_ref().unwrap().target_radius, target);
                if let Some(pb::certify_response::Outcome::Certified(c)) = &r.outcome {
                    assert!(c.radius >= target);
                    certified += 1;
                }
            }
            other => panic!("{i}: {other:?}"),
        }
    }
    assert!(certified >= 1, "{seen:?}");
    assert!(matches!(
        seen[3],
        Some(pb::certify_stream_response::Result::Error(ref e)) if e.code == Code::InvalidArgument as i32
    ));

    let text = scrape(&server).await;
    assert!(metric_sum(&text, "smoothcert_request_passes_count") >= 5.0);
    assert!(text.contains("method=\"sequential\""), "{text}");
    assert!(text.contains("reason=\"target_not_reached\""), "{text}");
    server.shutdown();
    server.wait().await.unwrap();
}

/// AUTO with a target radius: where the calibrated estimate is not decisive
/// (here: never, with a band over all of [0, 1]), the sequential test answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_with_a_target_falls_back_to_the_sequential_test() {
    let root = tempfile::tempdir().unwrap();
    let cal = bundle_copy(root.path(), "calibrated", Some((0.004, 100_000)));
    let (server, mut client) = start(config_for(&[(
        "always",
        &cal,
        "auto_band_low = 0.0\nauto_band_high = 1.0",
    )]))
    .await;
    let (images, _) = test_images(1);
    let r = client
        .certify(pb::CertifyRequest {
            model: "always".into(),
            input: Some(tensor(&images[0], &[1, 28, 28])),
            options: Some(pb::CertifyOptions {
                method: pb::Method::Auto as i32,
                target_radius: Some(0.5),
                seed: Some(11),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.requested_method, pb::Method::Auto as i32);
    assert_eq!(r.method, pb::Method::Sequential as i32, "{r:?}");
    let p = r.parameters.as_ref().unwrap();
    assert_eq!(p.target_radius, 0.5);
    assert!(p.n_drawn > 0 && p.n_drawn < 100_000, "{p:?}");
    // A certificate, not an estimate: no calibration figures.
    assert_eq!(p.delta, 0.0);
    match &r.outcome {
        Some(pb::certify_response::Outcome::Certified(c)) => {
            assert!(!c.estimate && c.radius >= 0.5)
        }
        other => panic!("test image 0 certifies at 0.5: {other:?}"),
    }
    let text = scrape(&server).await;
    assert!(text.contains("path=\"sequential\""), "{text}");
    server.shutdown();
    server.wait().await.unwrap();
}
