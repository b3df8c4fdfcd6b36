use super::*;
use crate::engine::requests::TaskParams;
use crate::testing::{input_with_first_pixel, phi, rng_lock, write_threshold_bundle};
use tch::Device;

const SHAPE: [usize; 3] = [1, 4, 4];
const SIGMA: f64 = 0.25;
const NOISE: crate::smoothing::Noise = crate::smoothing::Noise::Gaussian { sigma: SIGMA };

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

fn engine(dir: &std::path::Path, forward_batch: i64) -> Engine {
    let bundle = write_threshold_bundle(dir, SHAPE, 0.5, SIGMA);
    Engine::load(&bundle, Device::Cpu, forward_batch, false).unwrap()
}

fn reqs(n0: u64, n: u64, alpha: f64, seeds: &[u64]) -> Vec<TaskParams> {
    seeds
        .iter()
        .enumerate()
        .map(|(i, &seed)| TaskParams::new(i, n0, n, alpha, seed))
        .collect()
}

#[test]
fn monte_carlo_counts_follow_the_closed_form_probability() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 777);
    let n = 20_000u64;
    // Inputs on both sides of the boundary in one batch, with forward batches
    // that straddle inputs: each request must see only its own input's noise.
    let firsts = [0.8, 0.1, 0.55];
    let (out, _, passes) = e
        .run(
            Task::MonteCarlo,
            &batch(&firsts),
            &reqs(10, n, 0.001, &[1, 2, 3]),
            &mut |_| true,
        )
        .unwrap();
    assert_eq!(passes.base, 3 * (10 + n));
    for (o, &x0) in out.iter().zip(&firsts) {
        let Some(Outcome::MonteCarlo(c, _)) = o else {
            panic!("{o:?}")
        };
        let p_high = phi((x0 - 0.5) / SIGMA);
        let p_a = if c.class_a == 1 { p_high } else { 1.0 - p_high };
        let se = (p_a * (1.0 - p_a) / n as f64).sqrt();
        let observed = c.count_a as f64 / n as f64;
        assert!(
            (observed - p_a).abs() < 5.0 * se + 1e-9,
            "x0 = {x0}: observed {observed}, expected {p_a}"
        );
    }
}

#[test]
fn certified_radius_approaches_distance_to_boundary() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 4096);
    let firsts = [0.8, 0.2, 0.5];
    let (out, _, _) = e
        .run(
            Task::MonteCarlo,
            &batch(&firsts),
            &reqs(100, 50_000, 0.001, &[11, 12, 13]),
            &mut |_| true,
        )
        .unwrap();
    let certs: Vec<&McCertificate> = out
        .iter()
        .map(|o| match o {
            Some(Outcome::MonteCarlo(c, _)) => c,
            other => panic!("{other:?}"),
        })
        .collect();
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
                // A valid certificate never exceeds the true radius (at these
                // seeds), and with N = 50 000 it comes within a few percent of it.
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
    let e = engine(dir.path(), 1000);
    let (out, _, _) = e
        .run(
            Task::Predict,
            &batch(&[0.5, 0.9, 0.3]),
            &reqs(1, 2_000, 0.001, &[3, 4, 5]),
            &mut |_| true,
        )
        .unwrap();
    let p: Vec<&Prediction> = out
        .iter()
        .map(|o| match o {
            Some(Outcome::Predict(p)) => p,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(p[0].class, None);
    assert_eq!(p[1].class, Some(1));
    assert_eq!(p[2].class, Some(0));
    assert_eq!(p[1].count_a + p[1].count_b, 2_000);
}

#[test]
fn same_seed_same_answer_other_seed_other_noise() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 512);
    let run = |seed| {
        e.run(
            Task::MonteCarlo,
            &batch(&[0.55]),
            &reqs(10, 5_000, 0.001, &[seed]),
            &mut |_| true,
        )
        .unwrap()
        .0
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

#[test]
fn rejects_bad_params_naming_the_field() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 10);
    let good = TaskParams::new(0, 10, 100, 0.001, 1);
    for (bad, field) in [
        (TaskParams { n0: 0, ..good }, "n0"),
        (TaskParams { n: 0, ..good }, "n"),
        (TaskParams { alpha: 1.0, ..good }, "alpha"),
        (TaskParams { alpha: 0.0, ..good }, "alpha"),
    ] {
        match e.run(Task::MonteCarlo, &batch(&[0.7]), &[bad], &mut |_| true) {
            Err(EngineError::InvalidParam { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    // A surrogate task on an engine without one.
    assert!(matches!(
        e.run(Task::Surrogate, &batch(&[0.7]), &[good], &mut |_| true),
        Err(EngineError::NoSurrogate)
    ));
}

fn statrs_ppf(p: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    Normal::standard().inverse_cdf(p)
}

mod requests_batch {
    use super::*;
    use crate::engine::requests;
    use crate::model::NoiseStream;

    fn stream(input: usize, num: u64, seed: u64) -> NoiseStream {
        NoiseStream::whole(input, num, seed)
    }

    #[test]
    fn a_seeded_stream_counts_the_same_whatever_shares_its_batches() {
        let _rng = rng_lock();
        let dir = tempfile::tempdir().unwrap();
        let m = model(dir.path());
        let x = batch(&[0.52, 0.1, 0.48]);
        let a = stream(0, 3000, 5);
        let alone = m
            .count_streams(&x, &[a], NOISE, 4096, &mut |_| true)
            .unwrap();
        // Other streams before it, a forward batch that straddles blocks and streams.
        let mixed = m
            .count_streams(
                &x,
                &[stream(1, 700, 9), stream(2, 1500, 3), a],
                NOISE,
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
            .count_streams(&x, &[stream(0, 3000, 6)], NOISE, 4096, &mut |_| true)
            .unwrap();
        assert_ne!(other[0], alone[0]);
    }

    /// The threshold model's logits are (-m, m) with m = x[0] - t + noise:
    /// cA's margin is 2|m|-signed, Gaussian with mean 2(x0 - t) (or its
    /// negative for class 0) and sd 2 sigma, so z = mean / sd must be
    /// |x0 - t| / sigma, the probit of the closed-form pA. The tally's counts
    /// are count_streams' for the same streams.
    #[test]
    fn selection_margin_recovers_the_closed_form_probit() {
        let _rng = rng_lock();
        let dir = tempfile::tempdir().unwrap();
        let m = model(dir.path());
        let firsts = [0.8, 0.1, 0.55];
        let x = batch(&firsts);
        let n0 = 20_000u64;
        let streams: Vec<NoiseStream> = (0..3).map(|i| stream(i, n0, 40 + i as u64)).collect();
        let tallies = m
            .tally_streams(&x, &streams, NOISE, 999, &mut |_| true, true)
            .unwrap();
        let counts = m
            .count_streams(&x, &streams, NOISE, 999, &mut |_| true)
            .unwrap();
        let reqs: Vec<TaskParams> = (0..3)
            .map(|i| TaskParams::new(i, n0, 1, 0.001, 7 + i as u64))
            .collect();
        let selected = requests::select(&m, NOISE, &x, &reqs, 999, &mut |_| true).unwrap();
        for (i, &x0) in firsts.iter().enumerate() {
            let t = tallies[i].as_ref().unwrap();
            assert_eq!(Some(&t.counts), counts[i].as_ref());
            let class_a = usize::from(x0 > 0.5);
            let margin = crate::smoothing::SelectionMargin::from_sums(
                t.margin_sum[class_a],
                t.margin_sum_sq[class_a],
                n0,
            )
            .unwrap();
            let d = (x0 - 0.5).abs();
            let se = 2.0 * SIGMA / (n0 as f64).sqrt();
            assert!((margin.mean - 2.0 * d).abs() < 5.0 * se, "{x0}: {margin:?}");
            assert!((margin.sd - 2.0 * SIGMA).abs() < 0.02, "{x0}: {margin:?}");
            // The other class's margin is the exact negative of cA's.
            assert!((t.margin_sum[1 - class_a] + t.margin_sum[class_a]).abs() < 1e-6);
            let z = d / SIGMA;
            let z_se = ((1.0 + z * z / 2.0) / n0 as f64).sqrt();
            let sel = selected[i].unwrap();
            assert_eq!((sel.class_a, sel.drawn), (class_a, n0));
            let got = sel.margin_z().unwrap();
            assert!((got - z).abs() < 5.0 * z_se, "{x0}: z {got} vs {z}");
        }
        // count_streams asks for no margins.
        let plain = m
            .tally_streams(&x, &streams[..1], NOISE, 999, &mut |_| true, false)
            .unwrap();
        assert!(plain[0].as_ref().unwrap().margin_sum.is_empty());
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
                NOISE,
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
        let reqs: Vec<TaskParams> = (0..3)
            .map(|i| {
                TaskParams::new(
                    i,
                    100 + i as u64,
                    5000 * (i as u64 + 1),
                    [0.001, 0.01, 0.05][i],
                    40 + i as u64,
                )
            })
            .collect();
        let (together, _, passes) =
            requests::certify_mc(&m, NOISE, &x, &reqs, 999, &mut |_| true).unwrap();
        assert_eq!(passes.base, reqs.iter().map(|r| r.n0 + r.n).sum::<u64>());
        for (i, r) in reqs.iter().enumerate() {
            let one = x.narrow(0, i as i64, 1);
            let single = TaskParams { input: 0, ..*r };
            let (alone, _, _) =
                requests::certify_mc(&m, NOISE, &one, &[single], 4096, &mut |_| true).unwrap();
            assert_eq!(together[i], alone[0], "request {i}");
            let (cert, selected) = together[i].as_ref().unwrap();
            assert_eq!(selected.class_a, cert.class_a);
            assert_eq!(selected.drawn, r.n0, "fixed n0 draws exactly n0");
            // The decision is CERTIFY's on these counts and this request's own alpha.
            let expected =
                crate::smoothing::certify_decision(cert.class_a, cert.count_a, r.n, r.alpha, NOISE)
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

mod sequential_stages {
    use super::*;
    use crate::engine::requests::{count_stage, Slice};
    use crate::model::NoiseStream;

    #[test]
    fn a_stream_drawn_in_slices_counts_what_it_counts_whole() {
        let _rng = rng_lock();
        let dir = tempfile::tempdir().unwrap();
        let m = model(dir.path());
        let x = batch(&[0.52]);
        let len = 5_000u64;
        let whole = m
            .count_streams(
                &x,
                &[NoiseStream::whole(0, len, 77)],
                NOISE,
                64,
                &mut |_| true,
            )
            .unwrap();
        // Slices at offsets that straddle noise blocks, in one call.
        let cuts = [0u64, 300, 1024, 1500, 4096, 4999, 5000];
        let slices: Vec<NoiseStream> = cuts
            .windows(2)
            .map(|w| NoiseStream {
                input: 0,
                num: w[1] - w[0],
                seed: 77,
                start: w[0],
                len,
            })
            .collect();
        let parts = m
            .count_streams(&x, &slices, NOISE, 100, &mut |_| true)
            .unwrap();
        let mut summed = vec![0u64; 2];
        for p in parts.iter().flatten() {
            for (s, v) in summed.iter_mut().zip(p) {
                *s += v;
            }
        }
        assert_eq!(Some(summed), whole[0]);
        // A slice past the stream's end is refused, not wrapped.
        let bad = NoiseStream {
            input: 0,
            num: 10,
            seed: 77,
            start: len - 5,
            len,
        };
        assert!(m
            .count_streams(&x, &[bad], NOISE, 64, &mut |_| true)
            .is_err());
    }

    #[test]
    fn stage_slices_add_up_to_the_monte_carlo_count() {
        let _rng = rng_lock();
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path(), 256);
        let x = batch(&[0.55]);
        let req = TaskParams::new(0, 50, 3_000, 0.001, 9);
        let (mc, _) = e.run_one(Task::MonteCarlo, &x, req).unwrap();
        let Outcome::MonteCarlo(cert, sel) = mc else {
            panic!("{mc:?}")
        };
        // Slices of the same request's estimation samples: the first selects
        // cA as Monte Carlo did, the rest reuse it.
        let mut k = 0;
        for (start, num) in [(0u64, 700u64), (700, 1_300), (2_000, 1_000)] {
            let stage = TaskParams {
                class_a: (start > 0).then_some(sel.class_a),
                slice: Some(Slice { start, num }),
                ..req
            };
            let (out, _, passes) = count_stage(
                e.base(),
                NOISE,
                &x,
                &[stage],
                e.forward_batch(),
                &mut |_| true,
            )
            .unwrap();
            let (count, got) = out[0].unwrap();
            assert_eq!(got.class_a, sel.class_a);
            assert_eq!(passes.base, num + if start == 0 { 50 } else { 0 });
            k += count;
        }
        assert_eq!(k, cert.count_a);
    }
}

#[test]
fn offline_inputs_never_share_a_noise_block() {
    // The block seeds of every (input, block) of a run: all distinct, for
    // the selection and the estimation streams alike.
    use std::collections::HashSet;
    let mut seen = HashSet::new();
    use crate::engine::requests::{stream_seed, ESTIMATION, SELECTION};
    for idx in 0..200usize {
        let seed = input_seed(0, idx);
        for purpose in [SELECTION, ESTIMATION] {
            let stream = stream_seed(seed, purpose);
            for block in 0..100u64 {
                let block_seed = crate::model::block_seed(stream, block);
                assert!(
                    seen.insert(block_seed),
                    "input {idx} block {block} collides"
                );
            }
        }
    }
}

/// Under the L1 noises the threshold rule's pA has a closed form, and the
/// certified L1 radius comes within a few percent of the distance to the
/// boundary, never above it: Monte Carlo counts and radii, uniform and Laplace.
#[test]
fn l1_noises_count_and_certify_by_their_closed_forms() {
    use crate::smoothing::Noise;
    let _rng = rng_lock();
    for noise in [
        Noise::Uniform { lambda: 0.5 },
        Noise::Laplace { lambda: 0.25 },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let bundle = crate::testing::write_threshold_bundle_with(dir.path(), SHAPE, 0.5, noise);
        let e = Engine::load(&bundle, Device::Cpu, 4096, false).unwrap();
        let n = 50_000u64;
        let firsts = [0.8, 0.35, 0.5];
        let (out, _, _) = e
            .run(
                Task::MonteCarlo,
                &batch(&firsts),
                &reqs(100, n, 0.001, &[21, 22, 23]),
                &mut |_| true,
            )
            .unwrap();
        for (o, &x0) in out.iter().zip(&firsts) {
            let Some(Outcome::MonteCarlo(c, _)) = o else {
                panic!("{o:?}")
            };
            let d = (x0 - 0.5f64).abs();
            let p_a = match noise {
                Noise::Uniform { lambda } => (d + lambda) / (2.0 * lambda),
                Noise::Laplace { lambda } => 1.0 - (-d / lambda).exp() / 2.0,
                Noise::Gaussian { .. } => unreachable!(),
            };
            let se = (p_a * (1.0 - p_a) / n as f64).sqrt();
            let observed = c.count_a as f64 / n as f64;
            assert!(
                (observed - p_a).abs() < 5.0 * se + 1e-9,
                "{noise} x0 = {x0}: observed {observed}, expected {p_a}"
            );
            match c.decision {
                Decision::Certified {
                    class,
                    radius,
                    p_a_lower,
                } => {
                    assert_eq!(class, usize::from(x0 > 0.5));
                    assert!(radius < d, "{noise}: radius {radius} >= {d}");
                    assert!(
                        radius > 0.9 * d,
                        "{noise}: radius {radius} too small for {d}"
                    );
                    // By the closed forms, independently of Noise::radius.
                    let closed = match noise {
                        Noise::Uniform { lambda } => 2.0 * lambda * (p_a_lower - 0.5),
                        Noise::Laplace { lambda } => -lambda * (2.0 * (1.0 - p_a_lower)).ln(),
                        Noise::Gaussian { .. } => unreachable!(),
                    };
                    assert!((closed - radius).abs() < 1e-12);
                }
                ref other if d == 0.0 => assert!(matches!(other, Decision::Abstain { .. })),
                ref other => panic!("{noise} x0 = {x0}: {other:?}"),
            }
        }
    }
}

/// A request's surrogate probabilities must not depend on how many requests
/// share its batch: CPU kernels pick their algorithm by row count.
#[test]
fn surrogate_probs_do_not_depend_on_the_batch() {
    let _rng = rng_lock();
    let s = Classifier::new_builtin(
        crate::model::Arch::SmallCnn,
        [1, 28, 28],
        10,
        None,
        Device::Cpu,
    )
    .unwrap();
    let x = Tensor::rand([20, 1, 28, 28], (Kind::Float, Device::Cpu));
    let bits = |p: &[f64]| p.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    let all = surrogate_probs(&s, &x).unwrap();
    assert_eq!(all.len(), 20);
    for (at, len) in [(3, 1), (0, 5), (7, 13)] {
        let part = surrogate_probs(&s, &x.narrow(0, at, len)).unwrap();
        for (i, p) in part.iter().enumerate() {
            assert_eq!(
                bits(p),
                bits(&all[at as usize + i]),
                "row {}",
                at as usize + i
            );
        }
    }
}
