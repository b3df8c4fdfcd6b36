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
