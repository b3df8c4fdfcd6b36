use super::*;
use crate::testing::{input_with_first_pixel, phi, rng_lock, write_threshold_bundle};
use tch::Device;

const SHAPE: [usize; 3] = [1, 4, 4];
const SIGMA: f64 = 0.25;

fn model(dir: &std::path::Path) -> Classifier {
    let bundle = write_threshold_bundle(dir, SHAPE, 0.5, SIGMA);
    Classifier::load(&bundle, Device::Cpu).unwrap()
}

fn batch(firsts: &[f64]) -> Tensor {
    let data: Vec<f32> = firsts
        .iter()
        .flat_map(|&f| input_with_first_pixel(SHAPE, f, 0.3))
        .collect();
    Tensor::from_slice(&data).view([firsts.len() as i64, 1, 4, 4])
}

#[test]
fn counts_follow_the_closed_form_probability() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    tch::manual_seed(7);
    let n = 20_000u64;
    // Inputs on both sides of the boundary in one batch, with forward batches
    // that straddle inputs: each row must see only its own input's noise.
    let firsts = [0.8, 0.1, 0.55];
    let rows = count_rows(&m, &batch(&firsts), n, SIGMA, 777).unwrap();
    for (row, &x0) in rows.iter().zip(&firsts) {
        assert_eq!(row.iter().sum::<u64>(), n);
        let p_high = phi((x0 - 0.5) / SIGMA);
        let se = (p_high * (1.0 - p_high) / n as f64).sqrt();
        let observed = row[1] as f64 / n as f64;
        assert!(
            (observed - p_high).abs() < 5.0 * se + 1e-9,
            "x0 = {x0}: observed {observed}, expected {p_high}"
        );
    }
}

#[test]
fn certified_radius_approaches_distance_to_boundary() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    tch::manual_seed(11);
    let params = CertifyParams {
        n0: 100,
        n: 50_000,
        alpha: 0.001,
        batch: 4096,
    };
    let firsts = [0.8, 0.2, 0.5];
    let certs = certify(&m, SIGMA, &batch(&firsts), &params).unwrap();
    for (cert, &x0) in certs.iter().zip(&firsts[..2]) {
        let distance = (x0 - 0.5f64).abs();
        let expected_class = usize::from(x0 > 0.5);
        match cert.decision {
            Decision::Certified {
                class,
                radius,
                p_a_lower,
            } => {
                assert_eq!(class, expected_class);
                assert_eq!(cert.class_a, expected_class);
                // A valid certificate never exceeds the true radius (at this seed), and
                // with N = 50 000 it comes within a few percent of it.
                assert!(radius < distance, "radius {radius} >= {distance}");
                assert!(radius > 0.9 * distance, "radius {radius} too small");
                let recomputed = SIGMA * statrs_ppf(p_a_lower);
                assert!((recomputed - radius).abs() < 1e-9);
            }
            ref other => panic!("x0 = {x0}: expected a certificate, got {other:?}"),
        }
    }
    // On the boundary pA = 1/2: CERTIFY must abstain.
    assert!(matches!(certs[2].decision, Decision::Abstain { .. }));
}

#[test]
fn predict_abstains_on_the_boundary_and_answers_off_it() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    tch::manual_seed(3);
    let out = predict(&m, SIGMA, &batch(&[0.5, 0.9, 0.3]), 2_000, 0.001, 1000).unwrap();
    assert_eq!(out[0].class, None);
    assert_eq!(out[1].class, Some(1));
    assert_eq!(out[2].class, Some(0));
    assert_eq!(out[1].count_a + out[1].count_b, 2_000);
}

#[test]
fn same_seed_same_counts() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let run = |seed| {
        tch::manual_seed(seed);
        count_rows(&m, &batch(&[0.55]), 5_000, SIGMA, 512).unwrap()
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

#[test]
fn rejects_bad_params() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let good = CertifyParams {
        n0: 10,
        n: 100,
        alpha: 0.001,
        batch: 10,
    };
    for (bad, field) in [
        (CertifyParams { n0: 0, ..good }, "n0"),
        (CertifyParams { n: 0, ..good }, "n"),
        (CertifyParams { alpha: 1.0, ..good }, "alpha"),
        (CertifyParams { batch: 0, ..good }, "batch"),
    ] {
        match certify(&m, SIGMA, &batch(&[0.7]), &bad) {
            Err(EngineError::InvalidParam { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn top_two_breaks_ties_by_index() {
    assert_eq!(top_two(&[3, 5, 5, 1]), (1, Some(2)));
    assert_eq!(top_two(&[7]), (0, None));
}

fn statrs_ppf(p: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    Normal::standard().inverse_cdf(p)
}

mod requests_batch {
    use super::*;
    use crate::engine::requests::{self, RequestParams};
    use crate::model::NoiseStream;

    fn stream(input: usize, num: u64, seed: u64) -> NoiseStream {
        NoiseStream { input, num, seed }
    }

    #[test]
    fn a_seeded_stream_counts_the_same_whatever_shares_its_batches() {
        let _rng = rng_lock();
        let dir = tempfile::tempdir().unwrap();
        let m = model(dir.path());
        let x = batch(&[0.52, 0.1, 0.48]);
        let a = stream(0, 3000, 5);
        let alone = m
            .count_streams(&x, &[a], SIGMA, 4096, &mut |_| true)
            .unwrap();
        // Other streams before it, a forward batch that straddles blocks and streams.
        let mixed = m
            .count_streams(
                &x,
                &[stream(1, 700, 9), stream(2, 1500, 3), a],
                SIGMA,
                7,
                &mut |_| true,
            )
            .unwrap();
        assert_eq!(alone[0], mixed[2]);
        // Closed form: P(class 1) = Phi((x0 - t) / sigma), within 5 standard errors.
        let counts = alone[0].as_ref().unwrap();
        assert_eq!(counts.iter().sum::<u64>(), 3000);
        let p = phi((0.52 - 0.5) / SIGMA);
        let se = (p * (1.0 - p) / 3000.0).sqrt();
        assert!((counts[1] as f64 / 3000.0 - p).abs() < 5.0 * se);
        // Another seed, other noise.
        let other = m
            .count_streams(&x, &[stream(0, 3000, 6)], SIGMA, 4096, &mut |_| true)
            .unwrap();
        assert_ne!(other[0], alone[0]);
    }

    #[test]
    fn an_abandoned_stream_stops_drawing_and_yields_none() {
        let _rng = rng_lock();
        let dir = tempfile::tempdir().unwrap();
        let m = model(dir.path());
        let x = batch(&[0.8, 0.2]);
        let mut asked = [0usize; 2];
        let out = m
            .count_streams(
                &x,
                &[stream(0, 10_000, 1), stream(1, 10_000, 2)],
                SIGMA,
                512,
                &mut |s| {
                    asked[s] += 1;
                    s == 1 || asked[0] < 3
                },
            )
            .unwrap();
        assert!(out[0].is_none());
        assert_eq!(asked[0], 3, "stream 0 stopped at its third block");
        assert_eq!(out[1].as_ref().unwrap().iter().sum::<u64>(), 10_000);
    }

    #[test]
    fn batched_certificates_match_the_single_request_ones() {
        let _rng = rng_lock();
        let dir = tempfile::tempdir().unwrap();
        let m = model(dir.path());
        let x = batch(&[0.8, 0.3, 0.5]);
        let reqs: Vec<RequestParams> = (0..3)
            .map(|i| {
                RequestParams::new(
                    i,
                    100 + i as u64,
                    5000 * (i as u64 + 1),
                    [0.001, 0.01, 0.05][i],
                    40 + i as u64,
                )
            })
            .collect();
        let (together, _, passes) =
            requests::certify_mc(&m, SIGMA, &x, &reqs, 999, &mut |_| true).unwrap();
        assert_eq!(passes.base, reqs.iter().map(|r| r.n0 + r.n).sum::<u64>());
        for (i, r) in reqs.iter().enumerate() {
            let one = x.narrow(0, i as i64, 1);
            let single = RequestParams { input: 0, ..*r };
            let (alone, _, _) =
                requests::certify_mc(&m, SIGMA, &one, &[single], 4096, &mut |_| true).unwrap();
            assert_eq!(together[i], alone[0], "request {i}");
            let (cert, selected) = together[i].as_ref().unwrap();
            assert_eq!(selected.class_a, cert.class_a);
            assert_eq!(selected.drawn, r.n0, "fixed n0 draws exactly n0");
            // The decision is CERTIFY's on these counts and this request's own alpha.
            let expected =
                crate::smoothing::certify_decision(cert.class_a, cert.count_a, r.n, r.alpha, SIGMA)
                    .unwrap();
            assert_eq!(cert.decision, expected);
        }
        // The far-from-boundary inputs certify their side; the boundary one abstains.
        assert!(matches!(
            together[0].as_ref().unwrap().0.decision,
            Decision::Certified { class: 1, .. }
        ));
        assert!(matches!(
            together[1].as_ref().unwrap().0.decision,
            Decision::Certified { class: 0, .. }
        ));
        assert!(matches!(
            together[2].as_ref().unwrap().0.decision,
            Decision::Abstain { .. }
        ));
    }
}
