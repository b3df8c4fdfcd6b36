use super::*;

/// JS in f64 straight from the definition, with 0 log 0 = 0.
fn js_reference(logits: &[f64], q: &[f64]) -> f64 {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
    let p: Vec<f64> = logits.iter().map(|l| (l - max).exp() / z).collect();
    let kl = |a: &[f64], b: &[f64]| -> f64 {
        a.iter()
            .zip(b)
            .filter(|(x, _)| **x > 0.0)
            .map(|(x, y)| x * (x / y).ln())
            .sum()
    };
    let m: Vec<f64> = p.iter().zip(q).map(|(a, b)| 0.5 * (a + b)).collect();
    0.5 * kl(&p, &m) + 0.5 * kl(q, &m)
}

fn tensor(rows: &[Vec<f64>]) -> Tensor {
    let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64])
}

#[test]
fn the_training_batch_shrinks_with_the_input() {
    assert_eq!(default_batch_size([1, 28, 28]), 128);
    assert_eq!(default_batch_size([3, 32, 32]), 128);
    assert_eq!(default_batch_size([3, 64, 64]), 32);
    assert_eq!(default_batch_size([3, 224, 224]), 8);
}

#[test]
fn js_matches_the_definition() {
    let logits = vec![
        vec![2.0, -1.0, 0.5, 0.0],
        vec![0.0, 0.0, 0.0, 0.0],
        vec![12.0, -3.0, 4.0, 1.0],
        vec![-2.0, 5.0, 5.0, -7.0],
    ];
    let q = vec![
        vec![0.7, 0.1, 0.2, 0.0],
        vec![0.25, 0.25, 0.25, 0.25],
        vec![0.9999, 0.0, 0.0001, 0.0],
        vec![0.0, 0.0, 0.0, 1.0],
    ];
    let got =
        Vec::<f64>::try_from(js_divergence(&tensor(&logits), &tensor(&q)).to_kind(Kind::Double))
            .unwrap();
    for ((l, q), g) in logits.iter().zip(&q).zip(&got) {
        let want = js_reference(l, q);
        assert!((g - want).abs() < 1e-5, "{g} vs {want}");
        assert!(*g >= -1e-7 && *g <= std::f64::consts::LN_2 + 1e-6);
    }
    // Identical distributions: zero (row 2, uniform logits vs uniform q).
    assert!(got[1].abs() < 1e-7);
}

#[test]
fn soft_ce_matches_the_definition_and_gradients_stay_finite() {
    // Row 3: p and q both 0 in class 1 (softmax underflows), the case log m guards.
    let logits = tensor(&[
        vec![80.0, -80.0, 0.0],
        vec![1.0, 2.0, 3.0],
        vec![80.0, -80.0, 0.0],
    ])
    .set_requires_grad(true);
    let q = tensor(&[
        vec![0.0, 1.0, 0.0],
        vec![0.2, 0.3, 0.5],
        vec![1.0, 0.0, 0.0],
    ]);
    let ce = SurrogateLoss::SoftCe.per_input(&logits, &q);
    let row1 = Vec::<f64>::try_from(ce.to_kind(Kind::Double)).unwrap()[1];
    let lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
    let want = -(0.2 * (1.0 - lse) + 0.3 * (2.0 - lse) + 0.5 * (3.0 - lse));
    assert!((row1 - want).abs() < 1e-5, "{row1} vs {want}");
    for loss in [SurrogateLoss::Js, SurrogateLoss::SoftCe] {
        let l = loss.per_input(&logits, &q).sum(Kind::Float);
        l.backward();
        let g = logits.grad();
        assert!(
            bool::try_from(g.isfinite().all()).unwrap(),
            "{} gradient not finite",
            loss.as_str()
        );
        let _ = logits.grad().zero_();
    }
}

#[test]
fn the_margin_tail_target_is_the_fitted_tail_below_five_misses() {
    use margin_tail::{miss_target, TailFit, MIN_MISS};
    // a = 0, b = 1 at z = 3: Phi(-3) = 0.0013498980316301 (scipy.stats.norm.sf(3)).
    let gaussian = TailFit {
        a: 0.0,
        b: 1.0,
        inputs: 0,
    };
    for count_a in [250, 248, 246] {
        let m = miss_target(count_a, 250, 3.0, &gaussian).unwrap();
        assert!((m - 0.0013498980316301).abs() < 1e-12, "{count_a}: {m}");
    }
    // a = 0.5, b = 0.8 at z = 3: Phi(-2.9) = 0.0018658133003840378.
    let heavier = TailFit {
        a: 0.5,
        b: 0.8,
        inputs: 0,
    };
    let m = miss_target(250, 250, 3.0, &heavier).unwrap();
    assert!((m - 0.0018658133003840378).abs() < 1e-12, "{m}");
    // Five misses and more: the counts' own frequency, whatever the margin.
    assert_eq!(miss_target(245, 250, 3.0, &gaussian), Some(0.02));
    assert_eq!(miss_target(200, 250, 3.0, &gaussian), Some(0.2));
    // Clamped: z = 10 is below MIN_MISS; no target below pA = 1/2 or without z.
    assert_eq!(miss_target(250, 250, 10.0, &gaussian), Some(MIN_MISS));
    assert_eq!(miss_target(124, 250, 3.0, &gaussian), None);
    assert_eq!(miss_target(250, 250, f64::NAN, &gaussian), None);
}

/// The fit recovers a known line from misses drawn from it: 4,000 inputs
/// with z spread over [2, 5], each with binomial misses of N = 250 samples
/// at Phi(-(0.4 + 0.8 z)) (drawn by inversion from a fixed splitmix64
/// stream). The maximum-likelihood (a, b) lands within a few standard
/// errors of (0.4, 0.8), and the fitted miss at z = 3.9, where r = 0.75 is
/// decided, within 20 % of the true one.
#[test]
fn the_tail_fit_recovers_a_known_probit_line() {
    use margin_tail::TailFit;
    let truth = TailFit {
        a: 0.4,
        b: 0.8,
        inputs: 0,
    };
    let n = 250u64;
    let mut state = 7u64;
    let mut uniform = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = state;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((x ^ (x >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let inputs: Vec<(f64, u64)> = (0..4000)
        .map(|i| {
            let z = 2.0 + 3.0 * (i as f64 + 0.5) / 4000.0;
            let m = truth.miss(z);
            let k = (0..n).filter(|_| uniform() < m).count() as u64;
            (z, k)
        })
        .collect();
    let fit = TailFit::fit(&inputs, n).unwrap();
    assert_eq!(fit.inputs, 4000);
    assert!(
        (fit.a - 0.4).abs() < 0.3 && (fit.b - 0.8).abs() < 0.1,
        "{fit:?}"
    );
    let (got, want) = (fit.miss(3.9), truth.miss(3.9));
    assert!((got / want - 1.0).abs() < 0.2, "{got} vs {want}");
    // Too few inputs in the tail: no fit.
    assert!(TailFit::fit(&inputs[..5], n).is_none());
    assert!(TailFit::fit(&[(1.0, 3); 50], n).is_none());
}

#[test]
fn the_margin_tail_error_is_the_squared_log_miss_error() {
    let logits = tensor(&[
        vec![0.99f64.ln(), 0.006f64.ln(), 0.004f64.ln()],
        vec![0.006f64.ln(), 0.99f64.ln(), 0.004f64.ln()],
        vec![30.0, 0.0, 0.0],
        vec![0.0, 1.0, 2.0],
        vec![30.0, 0.0, 0.0],
        vec![0.99f64.ln(), 0.006f64.ln(), 0.004f64.ln()],
    ]);
    let class_a = Tensor::from_slice(&[0i64, 1, 0, 2, 0, 0]);
    let ln_target = Tensor::from_slice(&[
        0.001f32.ln(),
        0.01f32.ln(),
        0.001f32.ln(),
        f32::NAN,
        (margin_tail::MIN_MISS as f32).ln(),
        (margin_tail::MIN_MISS as f32).ln(),
    ]);
    let err: Vec<f64> =
        Vec::try_from(margin_tail::per_input(&logits, &class_a, &ln_target).to_kind(Kind::Double))
            .unwrap();
    let ten = 10f64.ln().powi(2);
    assert!((err[0] - ten).abs() < 1e-4, "{err:?}");
    assert!(err[1].abs() < 1e-8, "{err:?}");
    // ln(2 e^-30) = -29.3 is below ln(PREDICTION_FLOOR): the prediction
    // counts as the floor, still far below the target, so it is pulled back.
    let floored = (margin_tail::PREDICTION_FLOOR.ln() - 0.001f64.ln()).powi(2);
    assert!((err[2] - floored).abs() < 1e-3, "{err:?}");
    assert!(err[2] > ten, "{err:?}");
    assert_eq!(err[3], 0.0, "no target, no error");
    // A target at MIN_MISS means "that or less": more confident is no error,
    // less confident is (a miss of 0.01 against 1e-6).
    assert!(err[4].abs() < 1e-6, "{err:?}");
    let above = (0.01f64.ln() - margin_tail::MIN_MISS.ln()).powi(2);
    assert!((err[5] - above).abs() < 1e-3, "{err:?}");
}

/// What the margin tail is for: free logits trained toward counts that saw
/// no miss (q = one-hot) and a margin target of 1e-4, from a miss of 0.035.
/// After the same 500 steps JS alone is still more than 10 times the target
/// away (its gradient fades with the miss), and with the tail term the miss
/// is at the target within a factor of 1.5.
#[test]
fn the_margin_tail_moves_a_miss_that_js_does_not() {
    let train = |weight: f64| -> f64 {
        let mut logits = Tensor::from_slice(&[4.0f32, 0.0, 0.0])
            .view([1, 3])
            .set_requires_grad(true);
        let q = Tensor::from_slice(&[1.0f32, 0.0, 0.0]).view([1, 3]);
        let a = Tensor::from_slice(&[0i64]);
        let ln_t = Tensor::from_slice(&[1e-4f32.ln()]);
        for _ in 0..500 {
            let loss = js_divergence(&logits, &q).sum(Kind::Float)
                + margin_tail::per_input(&logits, &a, &ln_t).sum(Kind::Float) * weight;
            logits.zero_grad();
            loss.backward();
            tch::no_grad(|| {
                let step = logits.grad() * 0.5;
                let _ = logits.f_sub_(&step).unwrap();
            });
        }
        let p: Vec<f64> = Vec::try_from(logits.softmax(1, Kind::Double).view([-1])).unwrap();
        1.0 - p[0]
    };
    let js_only = train(0.0);
    let with_tail = train(0.05);
    assert!(
        js_only > 10.0 * 1e-4,
        "JS alone moved the miss from 0.035 to {js_only}"
    );
    assert!((with_tail / 1e-4).ln().abs() < 1.5f64.ln(), "{with_tail}");
}
