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
