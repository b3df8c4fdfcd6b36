//! Tests for the smoothing statistics. Reference values come from scipy 1.17.1 (Boost's
//! incomplete-beta inverse) and mpmath 1.4.1 at 40 digits, computed independently of this
//! crate; each table says how.

use super::*;
use statrs::function::gamma::ln_gamma;

/// The shipped bundle's noise.
const G: Noise = Noise::Gaussian { sigma: 0.25 };

/// `|ours - reference| <= rel * |reference|` (exact match required for a reference of 0).
fn assert_rel(ours: f64, reference: f64, rel: f64, what: &str) {
    assert!(
        (ours - reference).abs() <= rel * reference.abs(),
        "{what}: ours {ours:e} vs reference {reference:e} (rel diff {:e})",
        ((ours - reference) / reference).abs()
    );
}

/// Like [`assert_rel`], but relative to `min(reference, 1 - reference)`, because for a
/// bound near 1 it is `1 - p` that the radius depends on. `2.5e-16` absorbs the last-ulp
/// rounding of a value near 1.
fn assert_tight(ours: f64, reference: f64, rel: f64, what: &str) {
    let tol = rel * reference.abs().min((1.0 - reference).abs()) + 2.5e-16;
    assert!(
        (ours - reference).abs() <= tol,
        "{what}: ours {ours:e} vs reference {reference:e} (diff {:e}, tol {tol:e})",
        (ours - reference).abs()
    );
}

/// (k, n, alpha, lower, upper). Computed with scipy 1.17.1:
/// `python -c "from scipy.stats import beta; print(repr(beta.ppf(a, k, n-k+1)), repr(beta.isf(a, k+1, n-k)))"`
/// (lower := 0.0 when k == 0, upper := 1.0 when k == n). statsmodels 0.15.0
/// `proportion_confint(k, n, alpha=2*a, method="beta")` returned identical values for every
/// row; mpmath (50 digits) root-finding on `betainc` confirmed rows (1,10) and (5,10) to 1e-16.
#[rustfmt::skip]
const CP_REFERENCE: &[(u64, u64, f64, f64, f64)] = &[
    (0, 10, 1e-3, 0.0, 0.4988127663727277),
    (1, 10, 1e-3, 0.00010004502852067863, 0.6237230890888255),
    (5, 10, 1e-3, 0.08981318981185427, 0.9101868101881457),
    (9, 10, 1e-3, 0.37627691091117454, 0.9998999549714793),
    (10, 10, 1e-3, 0.5011872336272722, 1.0),
    (1, 1, 1e-3, 0.001, 1.0),
    (7, 10, 0.05, 0.39337578389458766, 0.9127355660858497),
    (50, 100, 0.75, 0.5286322841959072, 0.47136771580409276),
    (1, 100_000, 1e-3, 1.000500328578529e-08, 9.233033373455402e-05),
    (60_000, 100_000, 1e-3, 0.5952010472945846, 0.6047855338333897),
    (99_990, 100_000, 1e-3, 0.9997586773435911, 0.9999703939022321),
    (100_000, 100_000, 1e-3, 0.9999309248330094, 1.0),
    (99_990, 100_000, 1e-10, 0.9995344389112174, 0.9999952725775116),
    (60_000, 100_000, 1e-10, 0.5901137284325282, 0.6098316152712979),
    (50_000, 100_000, 1e-3, 0.49510904290369595, 0.504890957096304),
    (9_999_000, 10_000_000, 1e-3, 0.999889837865399, 0.9999094874983844),
    (9_999_000, 10_000_000, 1e-10, 0.999878441307882, 0.9999188193638557),
    (5_000_000, 10_000_000, 1e-3, 0.4995113414995721, 0.5004886585004279),
    (9_999_990, 10_000_000, 1e-3, 0.9999975866045909, 0.9999997039478733),
    (9_999_999, 10_000_000, 1e-10, 0.9999973666051752, 1.0),
    (1, 10_000_000, 1e-10, 1.00000000005e-17, 2.633394824795081e-06),
    (10_000_000, 10_000_000, 1e-10, 0.999997697417558, 1.0),
];

#[test]
fn clopper_pearson_matches_scipy() {
    for &(k, n, alpha, lower, upper) in CP_REFERENCE {
        let what = format!("k={k} n={n} alpha={alpha}");
        let lo = clopper_pearson_lower(k, n, alpha).unwrap();
        let up = clopper_pearson_upper(k, n, alpha).unwrap();
        assert_rel(lo, lower, 1e-9, &format!("lower {what}"));
        assert_rel(up, upper, 1e-9, &format!("upper {what}"));
    }
}

/// (k, n, alpha, lower, upper) at 40 digits, rounded to f64 (mpmath 1.4.1, mp.dps = 40):
/// 100-step bisection for p with P(X >= k; n, p) = alpha (lower) or P(X <= k; n, p) = alpha
/// (upper, as P(Y >= n - k; n, 1 - p)), the tail summed term by term:
/// ```text
/// def tail_ge(k, n, p):
///     t = mp.exp(mp.loggamma(n+1) - mp.loggamma(k+1) - mp.loggamma(n-k+1)
///                + k*mp.log(p) + (n-k)*mp.log(1-p)); s = 0; j = k
///     while True:
///         s += t
///         if j == n or t < s*mp.mpf(10)**-35: return s
///         t = t*(n-j)/(j+1)*p/(1-p); j += 1
/// ```
/// bracketed at scipy's value times (1 -+ 1e-4). scipy differs from these by up to 2.6e-8
/// relative to 1 - p (upper, k = 9 999 000, n = 1e7, alpha = 1e-3: scipy
/// 0.9999094874983844), which is why this tighter table exists. Upper for k = n - 1,
/// n = 1e7, alpha = 1e-10 is 1 - 1e-17, i.e. 1.0 in f64.
#[rustfmt::skip]
const CP_MPMATH: &[(u64, u64, f64, f64, f64)] = &[
    (1, 10, 1e-3, 0.00010004502852067863, 0.6237230890888255),
    (5, 10, 1e-3, 0.08981318981185427, 0.9101868101881457),
    (9, 10, 1e-3, 0.37627691091117454, 0.9998999549714793),
    (7, 10, 0.05, 0.39337578389458655, 0.9127355660858497),
    (50, 100, 0.75, 0.5286322841959072, 0.4713677158040927),
    (1, 100_000, 1e-3, 1.0005003285785289e-08, 9.233033373455402e-05),
    (60_000, 100_000, 1e-3, 0.5952010472945846, 0.6047855338333897),
    (99_990, 100_000, 1e-3, 0.9997586773435911, 0.9999703939022321),
    (99_990, 100_000, 1e-10, 0.9995344389112174, 0.9999952725775116),
    (60_000, 100_000, 1e-10, 0.5901137284325282, 0.6098316152712979),
    (50_000, 100_000, 1e-3, 0.4951090429036959, 0.5048909570963042),
    (9_999_000, 10_000_000, 1e-3, 0.999889837865399, 0.9999094874960344),
    (9_999_000, 10_000_000, 1e-10, 0.999878441307882, 0.9999188193638557),
    (5_000_000, 10_000_000, 1e-3, 0.49951134149957205, 0.5004886585004279),
    (9_999_990, 10_000_000, 1e-3, 0.999997586604591, 0.9999997039478733),
    (9_999_999, 10_000_000, 1e-10, 0.9999973666051751, 1.0),
    (1, 10_000_000, 1e-10, 1.00000000005e-17, 2.6333948248327947e-06),
];

#[test]
fn clopper_pearson_matches_high_precision_reference() {
    for &(k, n, alpha, lower, upper) in CP_MPMATH {
        let what = format!("k={k} n={n} alpha={alpha}");
        let lo = clopper_pearson_lower(k, n, alpha).unwrap();
        let up = clopper_pearson_upper(k, n, alpha).unwrap();
        assert_tight(lo, lower, 1e-12, &format!("lower {what}"));
        assert_tight(up, upper, 1e-12, &format!("upper {what}"));
    }
}

#[test]
fn closed_forms_at_the_edges() {
    for n in [1u64, 2, 10, 1000, 100_000, 10_000_000] {
        for alpha in [0.05, 1e-3, 1e-10] {
            assert_eq!(clopper_pearson_lower(0, n, alpha).unwrap(), 0.0);
            assert_eq!(clopper_pearson_upper(n, n, alpha).unwrap(), 1.0);
            let lo = clopper_pearson_lower(n, n, alpha).unwrap();
            assert!((lo - alpha.powf(1.0 / n as f64)).abs() <= 2e-16, "n={n}");
            let up = clopper_pearson_upper(0, n, alpha).unwrap();
            // 1 - alpha^(1/n) cancels; it is only accurate to ~1 ulp of 1.
            assert!(
                (up - (1.0 - alpha.powf(1.0 / n as f64))).abs() <= 4e-16,
                "n={n}"
            );
        }
    }
}

#[test]
fn invalid_inputs_are_errors_not_panics() {
    use SmoothingError::*;
    assert_eq!(clopper_pearson_lower(1, 0, 0.001), Err(ZeroSamples));
    assert_eq!(clopper_pearson_upper(0, 0, 0.001), Err(ZeroSamples));
    assert_eq!(
        clopper_pearson_lower(11, 10, 0.001),
        Err(InvalidCount { k: 11, n: 10 })
    );
    assert!(matches!(
        clopper_pearson_upper(5, u64::MAX, 0.001),
        Err(InvalidCount { .. })
    ));
    for alpha in [0.0, 1.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            clopper_pearson_lower(5, 10, alpha),
            Err(InvalidAlpha(_))
        ));
        assert!(matches!(
            clopper_pearson_upper(5, 10, alpha),
            Err(InvalidAlpha(_))
        ));
        assert!(matches!(
            certify_decision(0, 5, 10, alpha, Noise::gaussian(0.25)),
            Err(InvalidAlpha(_))
        ));
        assert!(matches!(
            predict_decision(0, 5, 3, alpha),
            Err(InvalidAlpha(_))
        ));
    }
    assert_eq!(binomial_test_two_sided(0, 0), Err(ZeroSamples));
    assert_eq!(
        binomial_test_two_sided(3, 2),
        Err(InvalidCount { k: 3, n: 2 })
    );
    for sigma in [0.0, -0.25, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            certify_decision(0, 5, 10, 0.001, Noise::gaussian(sigma)),
            Err(InvalidSigma(_))
        ));
    }
    assert_eq!(
        predict_decision(0, 3, 5, 0.001),
        Err(InvalidTopCounts {
            count_a: 3,
            count_b: 5
        })
    );
    assert_eq!(predict_decision(0, 0, 0, 0.001), Err(ZeroSamples));
}

/// ln P(X = k) for X ~ Binomial(n, p) by ln-gamma (statrs), not the crate's Loader form.
fn ln_pmf_lgamma(k: u64, n: u64, p: f64) -> f64 {
    let (k, n) = (k as f64, n as f64);
    ln_gamma(n + 1.0) - ln_gamma(k + 1.0) - ln_gamma(n - k + 1.0)
        + k * p.ln()
        + (n - k) * (-p).ln_1p()
}

/// P(X >= k) by summing pmf terms upward from k (valid when k is at or above the mode,
/// where the terms only shrink); a code path independent of the bound's inversion.
fn upper_tail_by_sum(k: u64, n: u64, p: f64) -> f64 {
    let ratio = p / (1.0 - p);
    let mut term = ln_pmf_lgamma(k, n, p).exp();
    let mut sum = 0.0;
    let mut j = k;
    loop {
        sum += term;
        if j == n || term < 1e-18 * sum {
            return sum;
        }
        term *= (n - j) as f64 / (j + 1) as f64 * ratio;
        j += 1;
    }
}

/// P(X <= k) by summing pmf terms downward from k (valid when k is at or below the mode).
fn lower_tail_by_sum(k: u64, n: u64, p: f64) -> f64 {
    let ratio = (1.0 - p) / p;
    let mut term = ln_pmf_lgamma(k, n, p).exp();
    let mut sum = 0.0;
    let mut j = k;
    loop {
        sum += term;
        if j == 0 || term < 1e-18 * sum {
            return sum;
        }
        term *= j as f64 / (n - j + 1) as f64 * ratio;
        j -= 1;
    }
}

/// The defining identity: at p = lower(k, n, alpha), P(X >= k; n, p) = alpha, and at
/// p = upper(k, n, alpha), P(X <= k; n, p) = alpha. The tolerance reflects the ln-gamma
/// reference (absolute error ~1e-16 * ln Gamma(n), i.e. ~1e-8 at n = 1e7), not our code.
#[test]
fn bounds_satisfy_the_binomial_tail_identity() {
    let cases: &[(u64, u64)] = &[
        (1, 10),
        (3, 10),
        (9, 10),
        (1, 1000),
        (517, 1000),
        (999, 1000),
        (60_000, 100_000),
        (99_990, 100_000),
        (99_999, 100_000),
        (9_999_000, 10_000_000),
        (5_000_000, 10_000_000),
    ];
    // The tail's own sensitivity to rounding p to f64 (a few ulps), relative to alpha: it
    // matters where 1 - p is tiny (e.g. the upper bound for k = 9 of 10 at alpha = 1e-10).
    let rounding = |tail: &dyn Fn(f64) -> f64, p: f64, alpha: f64| {
        let d = 4.0 * f64::EPSILON * p;
        (tail((p + d).min(1.0)) - tail((p - d).max(0.0))).abs() / alpha
    };
    for &(k, n) in cases {
        let tol = if n <= 100_000 { 1e-9 } else { 1e-6 };
        for alpha in [0.05, 1e-3, 1e-10] {
            let lo = clopper_pearson_lower(k, n, alpha).unwrap();
            let f = |p| upper_tail_by_sum(k, n, p);
            let tail = f(lo);
            assert!(
                (tail / alpha - 1.0).abs() < tol + rounding(&f, lo, alpha),
                "lower k={k} n={n} alpha={alpha}: P(X>=k; p={lo:e}) = {tail:e}"
            );
            let up = clopper_pearson_upper(k, n, alpha).unwrap();
            let f = |p| lower_tail_by_sum(k, n, p);
            let tail = f(up);
            assert!(
                (tail / alpha - 1.0).abs() < tol + rounding(&f, up, alpha),
                "upper k={k} n={n} alpha={alpha}: P(X<=k; p={up:e}) = {tail:e}"
            );
        }
    }
}

#[test]
fn lower_bound_is_monotone_in_k() {
    for n in [1u64, 7, 50, 333] {
        for alpha in [0.05, 1e-3, 1e-10] {
            let mut prev_lo = -1.0;
            let mut prev_up = -1.0;
            for k in 0..=n {
                let lo = clopper_pearson_lower(k, n, alpha).unwrap();
                let up = clopper_pearson_upper(k, n, alpha).unwrap();
                assert!(lo > prev_lo, "lower n={n} k={k} alpha={alpha}");
                assert!(up > prev_up, "upper n={n} k={k} alpha={alpha}");
                prev_lo = lo;
                prev_up = up;
            }
        }
    }
    // Large n: neighbouring counts near the top still order strictly.
    let n = 10_000_000;
    let mut prev = 0.0;
    for k in (n - 50)..=n {
        let lo = clopper_pearson_lower(k, n, 1e-3).unwrap();
        assert!(lo > prev, "k={k}");
        prev = lo;
    }
}

#[test]
fn bounds_tighten_as_n_grows_at_fixed_ratio() {
    for ratio in [0.5, 0.9, 0.999] {
        let mut prev_lo = 0.0;
        let mut prev_up = 2.0;
        for n in [1_000u64, 10_000, 100_000, 1_000_000, 10_000_000] {
            let k = (ratio * n as f64).round() as u64;
            let lo = clopper_pearson_lower(k, n, 1e-3).unwrap();
            let up = clopper_pearson_upper(k, n, 1e-3).unwrap();
            assert!(lo > prev_lo, "lower ratio={ratio} n={n}");
            assert!(up < prev_up, "upper ratio={ratio} n={n}");
            prev_lo = lo;
            prev_up = up;
        }
    }
}

#[test]
fn smaller_alpha_gives_wider_bounds() {
    for (k, n) in [
        (1u64, 10u64),
        (7, 10),
        (60_000, 100_000),
        (9_999_000, 10_000_000),
    ] {
        let mut prev_lo = 2.0;
        let mut prev_up = -1.0;
        for alpha in [0.2, 0.05, 1e-3, 1e-6, 1e-10, 1e-15] {
            let lo = clopper_pearson_lower(k, n, alpha).unwrap();
            let up = clopper_pearson_upper(k, n, alpha).unwrap();
            assert!(lo < prev_lo, "lower k={k} n={n} alpha={alpha}");
            assert!(up > prev_up, "upper k={k} n={n} alpha={alpha}");
            prev_lo = lo;
            prev_up = up;
        }
    }
}

#[test]
fn bounds_bracket_the_empirical_proportion() {
    for n in [1u64, 2, 10, 99, 1000, 123_457, 10_000_000] {
        let ks = [0, 1, n / 3, n / 2, n - n / 10, n.saturating_sub(1), n];
        for k in ks {
            for alpha in [0.4, 0.05, 1e-3, 1e-10] {
                let lo = clopper_pearson_lower(k, n, alpha).unwrap();
                let up = clopper_pearson_upper(k, n, alpha).unwrap();
                let p = k as f64 / n as f64;
                assert!(
                    0.0 <= lo && lo <= p && p <= up && up <= 1.0,
                    "k={k} n={n} alpha={alpha}: {lo} {p} {up}"
                );
                if k > 0 {
                    assert!(lo < p);
                }
                if k < n {
                    assert!(p < up);
                }
            }
        }
    }
}

/// Phi^-1 references: `python -c "from scipy.stats import norm; print(repr(norm.ppf(p)))"`
/// (scipy 1.17.1).
#[test]
fn gaussian_radius_matches_scipy_and_statrs() {
    use statrs::distribution::{ContinuousCDF, Normal};
    let refs = [
        (0.99865, 2.9999769927034015),
        (0.999, 3.090232306167813),
        (0.9999976, 4.573344476937553),
        (0.6, 0.2533471031357997),
        (1e-3, -3.090232306167813),
        (0.9995344389112174, 3.310551796487691),
    ];
    let normal = Normal::standard();
    for (p, z) in refs {
        let r = gaussian_l2_radius(1.0, p);
        assert!((r - z).abs() <= 1e-12 * z.abs(), "p={p}: {r} vs {z}");
        assert!((r - normal.inverse_cdf(p)).abs() <= 1e-12 * z.abs());
    }
    let r = gaussian_l2_radius(0.25, 0.99865);
    assert!((r - 0.25 * 3.0).abs() < 1e-5, "{r}");
    assert!((r - 0.25 * 2.9999769927034015).abs() < 1e-12, "{r}");
    assert_eq!(gaussian_l2_radius(0.25, 0.5), 0.0);
    assert!(gaussian_l2_radius(0.25, 0.4) < 0.0);
    assert_eq!(gaussian_l2_radius(0.25, 1.0), f64::INFINITY);
    assert!(gaussian_l2_radius(0.25, 1.5).is_nan());
    assert!(gaussian_l2_radius(0.25, f64::NAN).is_nan());
}

#[test]
fn certify_decision_thresholds_at_one_half() {
    // n = 100 000, alpha = 0.001 (the paper's setting).
    let (n, alpha, sigma) = (100_000u64, 1e-3, 0.25);
    let p = clopper_pearson_lower(99_990, n, alpha).unwrap();
    match certify_decision(3, 99_990, n, alpha, Noise::gaussian(sigma)).unwrap() {
        Decision::Certified {
            class,
            p_a_lower,
            radius,
        } => {
            assert_eq!(class, 3);
            assert_eq!(p_a_lower, p);
            assert_eq!(radius, gaussian_l2_radius(sigma, p));
            // p from the scipy table above; Phi^-1 of it from scipy: 3.4916... * 0.25.
            assert!(radius > 0.85 && radius < 0.9, "{radius}");
        }
        d => panic!("expected certified, got {d:?}"),
    }
    // Find the smallest certified count by scanning: everything below abstains, with
    // p_a_lower <= 1/2, and the first certified one has p_a_lower > 1/2 and radius > 0.
    let n = 1000;
    let first = (0..=n)
        .find(|&k| clopper_pearson_lower(k, n, alpha).unwrap() > 0.5)
        .unwrap();
    for k in [0, 1, 500, first - 1] {
        match certify_decision(0, k, n, alpha, Noise::gaussian(sigma)).unwrap() {
            Decision::Abstain { reason, p_a_lower } => {
                assert_eq!(reason, AbstainReason::LowConfidence);
                assert!(p_a_lower <= 0.5);
            }
            d => panic!("k={k}: expected abstain, got {d:?}"),
        }
    }
    match certify_decision(0, first, n, alpha, Noise::gaussian(sigma)).unwrap() {
        Decision::Certified {
            p_a_lower, radius, ..
        } => assert!(p_a_lower > 0.5 && radius > 0.0 && radius < 0.01),
        d => panic!("expected certified, got {d:?}"),
    }
    // All n of n samples at n = 100 000: the paper's largest possible radius (~0.95).
    match certify_decision(0, 100_000, 100_000, alpha, Noise::gaussian(sigma)).unwrap() {
        Decision::Certified { radius, .. } => assert!((radius - 0.953).abs() < 0.001),
        d => panic!("{d:?}"),
    }
}

/// (k, n, p-value). `python -c "from scipy.stats import binomtest;
/// print(repr(binomtest(k, n, 0.5).pvalue))"` (scipy 1.17.1).
#[rustfmt::skip]
const BINOMTEST_REFERENCE: &[(u64, u64, f64)] = &[
    (0, 1, 1.0),
    (1, 1, 1.0),
    (0, 10, 0.001953125),
    (10, 10, 0.001953125),
    (5, 10, 1.0),
    (3, 10, 0.34375),
    (8, 10, 0.109375),
    (50, 100, 1.0),
    (60, 100, 0.05688793364098089),
    (61, 100, 0.035200200217704855),
    (40, 100, 0.05688793364098089),
    (67, 100, 0.0008737198369123724),
    (66, 100, 0.0017899303914868528),
    (51, 101, 1.0),
    (600, 1000, 2.728464156065947e-10),
    (553, 1000, 0.0008899859647693012),
    (552, 1000, 0.0011150491792689071),
    (1000, 1000, 1.8665272370064378e-301),
    (0, 1000, 1.8665272370064378e-301),
    (999, 1000, 1.8683937642434442e-298),
    (50_500, 100_000, 0.0015823598788515154),
    (49_000, 100_000, 2.5887160383468943e-10),
    (5_005_000, 10_000_000, 0.0015671019056948982),
    (5000, 5000, 0.0),
];

#[test]
fn binomial_test_matches_scipy() {
    for &(k, n, reference) in BINOMTEST_REFERENCE {
        let ours = binomial_test_two_sided(k, n).unwrap();
        assert!(
            (ours - reference).abs() <= 1e-9 * reference,
            "k={k} n={n}: {ours:e} vs {reference:e}"
        );
    }
}

/// Borderlines from scipy (same one-liner, scanning k): at alpha = 0.001, n = 100 the
/// smallest significant count is 67 (p = 8.74e-4; 66 gives 1.79e-3); at n = 1000 it is
/// 553 (8.90e-4; 552 gives 1.115e-3); at alpha = 0.05, n = 100 it is 61 (0.0352; 60 gives
/// 0.0569); at alpha = 0.05, n = 17 it is 13 (0.04904; 12 gives 0.1435).
#[test]
fn predict_decision_borderlines_match_scipy() {
    let borders: &[(u64, f64, u64)] = &[
        (100, 1e-3, 67),
        (1000, 1e-3, 553),
        (100, 0.05, 61),
        (17, 0.05, 13),
    ];
    for &(n, alpha, k) in borders {
        assert_eq!(
            predict_decision(7, k, n - k, alpha).unwrap(),
            Some(7),
            "n={n} k={k}"
        );
        assert_eq!(
            predict_decision(7, k - 1, n - k + 1, alpha).unwrap(),
            None,
            "n={n} k={k}"
        );
    }
    // Exactly at the p-value: p <= alpha predicts (scipy: 0.001953125 for 10 vs 0).
    assert_eq!(predict_decision(1, 10, 0, 0.001953125).unwrap(), Some(1));
    assert_eq!(predict_decision(1, 10, 0, 0.0019531).unwrap(), None);
    assert_eq!(predict_decision(2, 5, 5, 0.5).unwrap(), None);
    assert_eq!(predict_decision(2, 1, 0, 0.5).unwrap(), None);
}

#[test]
fn abstain_reason_names_round_trip() {
    for r in [
        AbstainReason::LowConfidence,
        AbstainReason::NotSignificant,
        AbstainReason::ClassMismatch,
    ] {
        assert_eq!(AbstainReason::parse(r.as_str()), Some(r));
        assert_eq!(r.to_string(), r.as_str());
    }
    assert_eq!(AbstainReason::LowConfidence.as_str(), "low_confidence");
    assert_eq!(AbstainReason::NotSignificant.as_str(), "not_significant");
    assert_eq!(AbstainReason::ClassMismatch.as_str(), "class_mismatch");
    assert_eq!(AbstainReason::parse("LowConfidence"), None);
    assert_eq!(AbstainReason::parse(""), None);
}

/// Timing, not a correctness check: `cargo test --release --lib smoothing -- --ignored
/// --nocapture timing`.
#[test]
#[ignore]
fn timing_large_n() {
    let cases: &[(u64, u64, f64)] = &[
        (9_999_000, 10_000_000, 1e-3),
        (9_999_000, 10_000_000, 1e-10),
        (5_000_000, 10_000_000, 1e-3),
        (9_999_990, 10_000_000, 1e-3),
        (99_990, 100_000, 1e-3),
        (60_000, 100_000, 1e-3),
    ];
    for &(k, n, alpha) in cases {
        let reps = 200;
        let start = std::time::Instant::now();
        let mut acc = 0.0;
        for i in 0..reps {
            acc += clopper_pearson_lower(k - (i % 2), n, alpha).unwrap();
        }
        let per = start.elapsed().as_secs_f64() / reps as f64;
        println!(
            "lower k={k} n={n} alpha={alpha}: {:.1} us/call ({acc:.3})",
            per * 1e6
        );
    }
    let start = std::time::Instant::now();
    for i in 0..200 {
        std::hint::black_box(binomial_test_two_sided(5_005_000 + i, 10_000_000).unwrap());
    }
    println!(
        "binomial_test k~5.005e6 n=1e7: {:.1} us/call",
        start.elapsed().as_secs_f64() / 200.0 * 1e6
    );
}

/// ceil((m + 1)(1 - k / 1000)) in integers: ((m + 1)(1000 - k) + 999) / 1000.
fn rank_by_integers(m: usize, k: usize) -> usize {
    ((m + 1) * (1000 - k)).div_ceil(1000)
}

#[test]
fn conformal_rank_is_the_finite_sample_rank() {
    for k in [1, 5, 10, 20, 50, 100, 250, 500, 900, 999] {
        let delta = k as f64 / 1000.0;
        for m in 1..=600 {
            let want = rank_by_integers(m, k);
            let got = conformal_rank(m, delta);
            if want <= m {
                assert_eq!(got, Some(want), "m = {m}, delta = {delta}");
            } else {
                assert_eq!(got, None, "m = {m}, delta = {delta}: rank {want} > m");
            }
        }
    }
    // The issue's case: m = 200, delta = 0.05 -> ceil(201 * 0.95) = ceil(190.95) = 191;
    // m = 199 -> 200 * 0.95 = 190 exactly, which must not round up.
    assert_eq!(conformal_rank(200, 0.05), Some(191));
    assert_eq!(conformal_rank(199, 0.05), Some(190));
    assert_eq!(conformal_rank(18, 0.05), None);
    assert_eq!(conformal_rank(10, 0.0), None);
}

#[test]
fn conformal_quantile_picks_that_rank_and_covers() {
    let scores: Vec<f64> = (0..200).rev().map(|i| i as f64 / 1000.0).collect();
    let (q, rank) = conformal_quantile(&scores, 0.05).unwrap();
    assert_eq!(rank, 191);
    assert!((q - 0.190).abs() < 1e-12, "{q}");
    assert!(conformal_quantile(&scores[..10], 0.05).is_err());
    assert!(conformal_quantile(&[0.1, f64::NAN], 0.5).is_err());

    // Coverage over exchangeable draws: a fresh score exceeds q with
    // probability in [delta - 1/(m + 1), delta] (continuous scores).
    let mut uniform = uniforms(0x1234_5678_9abc_def0);
    let (m, delta, trials) = (39, 0.1, 20_000);
    let mut exceed = 0;
    for _ in 0..trials {
        let cal: Vec<f64> = (0..m).map(|_| uniform()).collect();
        let (q, _) = conformal_quantile(&cal, delta).unwrap();
        if uniform() > q {
            exceed += 1;
        }
    }
    let rate = exceed as f64 / trials as f64;
    // Exactly 1 - rank/(m + 1) = 1 - 36/40 = 0.1 in expectation; 4 sd of slack.
    let sd = (0.1f64 * 0.9 / trials as f64).sqrt();
    assert!((rate - 0.1).abs() < 4.0 * sd, "exceedance {rate}");
}

/// Two-sided binomial p-value at 1/2 by exact summation of binomial terms.
fn binom_two_sided_by_sum(k: u64, n: u64) -> f64 {
    let m = k.max(n - k);
    if 2 * m == n {
        return 1.0;
    }
    let tail: f64 = (m..=n)
        .map(|j| {
            (ln_gamma(n as f64 + 1.0) - ln_gamma(j as f64 + 1.0) - ln_gamma((n - j) as f64 + 1.0))
                .exp()
        })
        .sum::<f64>()
        / 2f64.powi(n as i32);
    (2.0 * tail).min(1.0)
}

#[test]
fn sequential_selection_stops_when_the_bonferroni_test_rejects() {
    let rule = AdaptiveN0 {
        chunk: 10,
        alpha: 0.01,
    };
    assert_eq!(rule.looks(100), 10);
    assert_eq!(rule.looks(95), 10);
    assert_eq!(rule.looks(5), 1);
    for (counts, drawn) in [
        (vec![10u64, 0, 0], 10u64),
        (vec![20, 0, 0], 20),
        (vec![15, 5, 0], 20),
        (vec![27, 2, 1], 30),
        (vec![40, 0, 0], 40),
        (vec![0, 33, 30, 7], 70),
        (vec![60, 40, 0], 100),
    ] {
        assert_eq!(counts.iter().sum::<u64>(), drawn);
        let mut top = counts.clone();
        top.sort_unstable_by(|a, b| b.cmp(a));
        let p = binom_two_sided_by_sum(top[0], top[0] + top[1]);
        let want = p <= 0.01 / 10.0;
        assert_eq!(
            rule.settled(&counts, 100).unwrap(),
            want,
            "{counts:?}: p = {p}"
        );
    }
    // 10 of 10 (p = 2^-9 = 0.00195) is not enough at 0.001; 20 of 20 is.
    assert!(!rule.settled(&[10, 0], 100).unwrap());
    assert!(rule.settled(&[20, 0], 100).unwrap());
    assert!(!rule.settled(&[0, 0], 100).unwrap());
    assert!(AdaptiveN0 {
        chunk: 0,
        alpha: 0.01
    }
    .validate()
    .is_err());
    assert!(AdaptiveN0 {
        chunk: 10,
        alpha: 1.0
    }
    .validate()
    .is_err());
}

#[test]
fn calibrated_probability_is_the_boundary_of_the_score() {
    // For both scores: a Monte Carlo p at or above the calibrated value scores
    // at most q, and one below it scores more than q (monotone in p_MC). Grid
    // over the whole range, tails included.

    let n = 100_000;
    let ps = [0.0, 0.3, 0.5, 0.9, 0.97, 0.999, 0.99995, 1.0];
    for score in [
        ConformalScore::PGap,
        ConformalScore::LogMiss,
        ConformalScore::RootMiss,
    ] {
        for &p_hat in &ps {
            for q in [-0.5, -0.01, 0.0, 0.004, 0.07, 0.9, 2.0] {
                let cal = score.calibrated(G, p_hat, q, n);
                assert!((0.0..=1.0).contains(&cal));
                for k in (0..=n).step_by(997).chain([n]) {
                    let p_mc = k as f64 / n as f64;
                    let s = score.score(G, p_hat, p_mc, n);
                    if p_mc >= cal + 1e-12 {
                        assert!(s <= q + 1e-9, "{score:?} p_hat {p_hat} q {q} p_mc {p_mc}");
                    } else if p_mc < cal - 1e-12 {
                        assert!(s > q - 1e-9, "{score:?} p_hat {p_hat} q {q} p_mc {p_mc}");
                    }
                }
            }
        }
    }
    // log_miss by hand: miss 1e-3, q = ln 2 doubles it (plus c = 5e-6).
    let got = ConformalScore::LogMiss.calibrated(G, 0.999, 2f64.ln(), n);
    assert!((got - (1.0 - (2.0 * (1e-3 + 5e-6) - 5e-6))).abs() < 1e-12);
    assert_eq!(
        ConformalScore::PGap.calibrated(G, 0.95, 0.07, n),
        0.95 - 0.07
    );
}

/// The training-conditional rank against an independent computation: the
/// k-th smallest of m uniform scores is Beta(k, m + 1 - k), so k must reach
/// coverage 1 - delta with probability >= 1 - gamma, and k - 1 must not.
#[test]
fn training_conditional_rank_matches_the_beta_order_statistic() {
    use statrs::distribution::{Beta, ContinuousCDF};
    for (m, delta, gamma) in [
        (1000, 0.05, 0.05),
        (200, 0.05, 0.1),
        (5000, 0.05, 0.01),
        (400, 0.1, 0.2),
    ] {
        let k = training_conditional_rank(m, delta, gamma).unwrap();
        let below = |k: usize| {
            Beta::new(k as f64, (m + 1 - k) as f64)
                .unwrap()
                .cdf(1.0 - delta)
        };
        assert!(
            below(k) <= gamma + 1e-9,
            "m {m}: rank {k} covers with P {}",
            1.0 - below(k)
        );
        assert!(below(k - 1) > gamma, "m {m}: rank {} would do", k - 1);
        assert!(k >= conformal_rank(m, delta).unwrap());
    }
    // Too few scores: even the largest falls short.
    assert_eq!(training_conditional_rank(20, 0.05, 0.05), None);
}

/// Over many calibration draws of uniform scores, the training-conditional
/// rank's coverage falls below 1 - delta in at most gamma of them; the
/// marginal rank's does so far more often (it only holds on average).
#[test]
fn training_conditional_rank_holds_over_calibration_draws() {
    let (m, delta, gamma, draws) = (200, 0.1, 0.1, 4000);
    let mut uniform = uniforms(0x9E37_79B9_7F4A_7C15);
    let tc = training_conditional_rank(m, delta, gamma).unwrap();
    let marginal = conformal_rank(m, delta).unwrap();
    let (mut tc_short, mut marginal_short) = (0, 0);
    for _ in 0..draws {
        let mut s: Vec<f64> = (0..m).map(|_| uniform()).collect();
        s.sort_by(f64::total_cmp);
        // A uniform score's coverage at q is q itself.
        tc_short += usize::from(s[tc - 1] < 1.0 - delta);
        marginal_short += usize::from(s[marginal - 1] < 1.0 - delta);
    }
    let rate = |c: usize| c as f64 / draws as f64;
    // gamma plus three binomial standard errors.
    assert!(
        rate(tc_short) <= gamma + 3.0 * (gamma * (1.0 - gamma) / draws as f64).sqrt(),
        "{}",
        rate(tc_short)
    );
    assert!(rate(marginal_short) > 0.3, "{}", rate(marginal_short));
}

/// The probit score: CALIBRATED's probability is exactly where the score
/// reaches q, and p_MC at or above it scores at most q.
#[test]
fn probit_score_inverts_to_the_calibrated_probability() {
    use statrs::distribution::{ContinuousCDF, Normal};
    let n = 100_000;
    let normal = Normal::standard();
    for &p_hat in &[0.6, 0.9, 0.99, 0.9999, 1.0] {
        for &q in &[0.05, 0.3, 1.0] {
            let p_cal = ConformalScore::Probit.calibrated(G, p_hat, q, n);
            let c = 0.5 / n as f64;
            let expected = normal.cdf(normal.inverse_cdf(p_hat.clamp(c, 1.0 - c)) - q);
            assert!(
                (p_cal - expected).abs() < 1e-9,
                "{p_hat} {q}: {p_cal} vs {expected}"
            );
            let at = ConformalScore::Probit.score(G, p_hat, p_cal, n);
            assert!((at - q).abs() < 1e-6, "score at the bound {at} vs {q}");
            assert!(ConformalScore::Probit.score(G, p_hat, (p_cal + 1e-3).min(1.0), n) <= q + 1e-9);
            assert!(ConformalScore::Probit.score(G, p_hat, p_cal - 1e-3, n) > q);
        }
    }
    // The radius shift does not cap: a confident surrogate keeps a large radius.
    let p_cal = ConformalScore::Probit.calibrated(G, 0.99999, 0.3, n);
    assert!(normal.inverse_cdf(p_cal) > 3.5, "{p_cal}");
    assert!(ConformalScore::PGap.calibrated(G, 0.99999, 0.067, n) < 0.94);
}

/// Mondrian bins: each p_hat takes its own bin's quantile.
#[test]
fn mondrian_bins_pick_their_quantile() {
    let bins = MondrianBins::new(&[0.9, 0.99], &[0.3, 0.2, 0.1]).unwrap();
    for (p, q, bin) in [
        (0.5, 0.3, 0),
        (0.9, 0.2, 1),
        (0.95, 0.2, 1),
        (0.99, 0.1, 2),
        (1.0, 0.1, 2),
    ] {
        assert_eq!(bins.q_for(p), q, "{p}");
        assert_eq!(bin_of(&[0.9, 0.99], p), bin, "{p}");
    }
    assert!(MondrianBins::new(&[0.99, 0.9], &[0.1, 0.2, 0.3]).is_err());
    assert!(MondrianBins::new(&[0.9], &[0.1]).is_err());
    assert!(check_edges(&[0.0]).is_err() && check_edges(&[0.5, 1.0]).is_err());
    let shift = CalibrationShift {
        noise: G,
        score: ConformalScore::PGap,
        q: 9.0,
        bins: Some(bins),
        margin_threshold: None,
    };
    assert!((shift.apply(0.95, None, 1000) - 0.75).abs() < 1e-12);
    // The margin is ignored without a threshold.
    assert!((shift.apply(0.95, Some(0.0), 1000) - 0.75).abs() < 1e-12);
}

/// The margin's mean and sample standard deviation from its sums, against
/// the two-pass textbook computation on the same values.
#[test]
fn selection_margin_from_sums_is_mean_and_sample_sd() {
    let mut u = uniforms(11);
    let xs: Vec<f64> = (0..37).map(|_| 3.0 * u() - 0.4).collect();
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let m = SelectionMargin::from_sums(
        xs.iter().sum(),
        xs.iter().map(|x| x * x).sum(),
        xs.len() as u64,
    )
    .unwrap();
    assert!((m.mean - mean).abs() < 1e-12 && (m.sd - sd).abs() < 1e-12);
    assert!((m.z() - mean / sd).abs() < 1e-9);
    // Too few samples or broken sums say nothing; a constant margin is decisive.
    assert!(SelectionMargin::from_sums(1.0, 1.0, 1).is_none());
    assert!(SelectionMargin::from_sums(f64::NAN, 1.0, 5).is_none());
    let constant = SelectionMargin::from_sums(10.0, 20.0, 5).unwrap();
    assert_eq!(constant.z(), f64::INFINITY);
    assert_eq!(
        SelectionMargin::from_sums(-10.0, 20.0, 5).unwrap().z(),
        f64::NEG_INFINITY
    );
}

/// The blend: Phi(z) below the threshold, the surrogate (at least Phi(t))
/// from it on, the surrogate alone without a threshold or a margin; and the
/// calibrated probit shift applied to the blend.
#[test]
fn blended_estimate_takes_the_margin_below_its_threshold() {
    let phi = |z: f64| {
        use statrs::distribution::{ContinuousCDF, Normal};
        Normal::standard().cdf(z)
    };
    let t = Some(2.5);
    assert!((blended_estimate(0.999, Some(1.2), t) - phi(1.2)).abs() < 1e-15);
    assert!((blended_estimate(0.3, Some(-0.4), t) - phi(-0.4)).abs() < 1e-15);
    // At and beyond the threshold: the surrogate, floored at Phi(t).
    assert_eq!(blended_estimate(0.99999, Some(2.5), t), 0.99999);
    assert!((blended_estimate(0.9, Some(7.0), t) - phi(2.5)).abs() < 1e-15);
    assert_eq!(blended_estimate(0.9, Some(f64::INFINITY), t), phi(2.5));
    assert_eq!(blended_estimate(0.9, Some(f64::NEG_INFINITY), t), 0.0);
    // No threshold, no margin or a NaN margin: the surrogate alone.
    assert_eq!(blended_estimate(0.9, Some(1.0), None), 0.9);
    assert_eq!(blended_estimate(0.9, None, t), 0.9);
    assert_eq!(blended_estimate(0.9, Some(f64::NAN), t), 0.9);
    let shift = CalibrationShift {
        noise: G,
        score: ConformalScore::Probit,
        q: 0.3,
        bins: None,
        margin_threshold: t,
    };
    let got = shift.apply(0.999, Some(1.2), 100_000);
    assert!((got - phi(1.2 - 0.3)).abs() < 1e-9, "{got}");
}

/// Uniform draws in [0, 1) from a splitmix64 sequence started at `seed`.
fn uniforms(seed: u64) -> impl FnMut() -> f64 {
    let mut state = seed;
    move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The one argmax, top-two and median every caller shares, against
/// brute-force definitions on random and tied inputs.
#[test]
fn argmax_top_two_and_median_match_their_definitions() {
    use super::{argmax, median, top_two};
    assert_eq!(
        argmax(&[0.1, 0.7, 0.7, 0.2]),
        1,
        "ties go to the lower index"
    );
    assert_eq!(argmax(&[f64::NAN, 0.2, 0.1]), 1, "NaN never wins");
    assert_eq!(argmax(&[f64::NAN, f64::NAN]), 0);
    assert_eq!(argmax(&[]), 0);
    assert_eq!(top_two(&[3, 5, 5, 1]), (1, Some(2)));
    assert_eq!(top_two(&[7]), (0, None));
    assert_eq!(median(&[]), 0.0);
    assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    let mut state = 12345u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % 6
    };
    for _ in 0..200 {
        let counts: Vec<u64> = (0..5).map(|_| next()).collect();
        let best = *counts.iter().max().unwrap();
        let first = counts.iter().position(|&c| c == best).unwrap();
        let second_best = (0..5)
            .filter(|&i| i != first)
            .max_by(|&a, &b| counts[a].cmp(&counts[b]).then(b.cmp(&a)))
            .unwrap();
        assert_eq!(top_two(&counts), (first, Some(second_best)), "{counts:?}");
        let p: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
        assert_eq!(argmax(&p), first, "{p:?}");
        // The median splits the values: as many at or below as at or above.
        let m = median(&p);
        let below = p.iter().filter(|&&v| v <= m).count();
        let above = p.iter().filter(|&&v| v >= m).count();
        assert!(below >= 3 && above >= 3, "{p:?} {m}");
    }
}

/// The noises' radii against their closed forms, and their inverses.
#[test]
fn noise_radii_and_their_inverses() {
    let g = Noise::Gaussian { sigma: 0.25 };
    let u = Noise::Uniform { lambda: 0.5 };
    let l = Noise::Laplace { lambda: 0.25 };
    assert_eq!(
        (g.norm(), u.norm(), l.norm()),
        (Norm::L2, Norm::L1, Norm::L1)
    );
    // Gaussian: sigma Phi^-1(p), scipy.stats.norm.ppf(0.99) = 2.3263478740408408.
    assert_rel(
        g.radius(0.99),
        0.25 * 2.326_347_874_040_840_8,
        1e-12,
        "gaussian",
    );
    assert_eq!(g.radius(0.99), gaussian_l2_radius(0.25, 0.99));
    for p in [0.5, 0.6, 0.75, 0.9, 0.99, 0.999_9] {
        // rs4a's certify_l1: 2 lambda (p - 1/2) and -lambda ln(2 (1 - p)).
        assert_rel(u.radius(p), 2.0 * 0.5 * (p - 0.5), 1e-15, "uniform");
        assert_rel(
            l.radius(p),
            -0.25 * (2.0 * (1.0 - p)).ln(),
            1e-15,
            "laplace",
        );
        for noise in [g, u, l] {
            let r = noise.radius(p);
            let back = noise.p_star(r).unwrap();
            assert!(
                (back - p).abs() < 1e-10,
                "{noise}: p {p} -> r {r} -> {back}"
            );
        }
    }
    for noise in [g, u, l] {
        assert_eq!(noise.radius(0.5), 0.0, "{noise}");
        assert!(noise.radius(0.4) < 0.0, "{noise}");
        assert!(noise.radius(1.5).is_nan(), "{noise}");
        assert!(noise.p_star(-0.1).is_err());
        assert!(noise.p_star(noise.max_radius() * 1.01).is_err());
        assert!(noise.p_star(noise.max_radius()).unwrap() < 1.0);
    }
    assert!(
        (u.max_radius() - 0.5).abs() < 1e-12,
        "uniform radii stop at lambda"
    );
    assert!((l.max_radius() - 0.25 * 36.04).abs() < 0.01);
    assert_eq!(g.max_radius(), 8.2 * 0.25);
    // rs4a's certify_linf for uniform: 2 lambda (1 - (1.5 - p)^(1/d)).
    let d = 784;
    let linf = u.linf_radius(0.9, d).unwrap();
    assert_rel(
        linf,
        2.0 * 0.5 * (1.0 - 0.6f64.powf(1.0 / 784.0)),
        1e-14,
        "linf",
    );
    assert!(g.linf_radius(0.9, d).is_none() && u.linf_radius(0.4, d).is_none());
    assert!(Noise::Uniform { lambda: 0.0 }.validate().is_err());
    assert!(Noise::Laplace { lambda: f64::NAN }.p_star(0.1).is_err());
}

/// An independent check of the L1 radii: the one-dimensional Neyman-Pearson
/// worst case computed numerically. Under a shift of delta along one
/// coordinate, the adversary's classifier puts pA of the clean noise where
/// the shifted density is smallest relative to the clean one; the radius is
/// the largest delta that keeps that mass above 1/2. Densities, grid and
/// bisection are written here and share nothing with the closed forms.
#[test]
fn l1_radii_match_the_numerical_neyman_pearson_worst_case() {
    let uniform = |lambda: f64| move |x: f64| if x.abs() <= lambda { 0.5 / lambda } else { 0.0 };
    let laplace = |lambda: f64| move |x: f64| (-x.abs() / lambda).exp() / (2.0 * lambda);
    // The worst-case shifted mass of a set of clean mass p under a shift delta.
    fn worst_mass(pdf: &dyn Fn(f64) -> f64, extent: f64, delta: f64, p: f64) -> f64 {
        let cells = 100_000;
        let (lo, hi) = (-extent, extent + delta);
        let h = (hi - lo) / cells as f64;
        let mut c: Vec<(f64, f64, f64)> = (0..cells)
            .map(|i| {
                let x = lo + (i as f64 + 0.5) * h;
                let (p0, p1) = (pdf(x) * h, pdf(x - delta) * h);
                let ratio = if p0 > 0.0 { p1 / p0 } else { f64::INFINITY };
                (ratio, p0, p1)
            })
            .collect();
        c.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut clean, mut shifted) = (0.0, 0.0);
        for (_, p0, p1) in c {
            if clean + p0 >= p {
                // The last cell, in part.
                shifted += p1 * ((p - clean) / p0);
                break;
            }
            clean += p0;
            shifted += p1;
        }
        shifted
    }
    fn np_radius(pdf: &dyn Fn(f64) -> f64, extent: f64, p: f64) -> f64 {
        let (mut lo, mut hi) = (0.0, extent);
        for _ in 0..32 {
            let mid = (lo + hi) / 2.0;
            if worst_mass(pdf, extent, mid, p) > 0.5 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }
    for p in [0.6, 0.75, 0.9] {
        let lambda = 0.5;
        let ours = Noise::Uniform { lambda }.radius(p);
        let np = np_radius(&uniform(lambda), lambda, p);
        assert!(
            (ours - np).abs() < 4e-3 * lambda,
            "uniform p {p}: {ours} vs {np}"
        );
        let lambda = 0.25;
        let ours = Noise::Laplace { lambda }.radius(p);
        let np = np_radius(&laplace(lambda), 40.0 * lambda, p);
        assert!(
            (ours - np).abs() < 4e-3 * lambda,
            "laplace p {p}: {ours} vs {np}"
        );
    }
}

/// The radius-space score under the L1 noises: its calibrated probability is
/// the score's boundary, and for the uniform, whose radius is linear in p,
/// it is p_hat - q / 2 (a radius cut of lambda q), by closed form.
#[test]
fn the_radius_space_score_follows_each_noise() {
    let n = 10_000;
    let c = 1.0 / (2.0 * n as f64);
    for noise in [
        Noise::Uniform { lambda: 0.5 },
        Noise::Laplace { lambda: 0.25 },
    ] {
        for p_hat in [0.3f64, 0.6, 0.9, 0.99, 0.9999, 1.0] {
            for q in [-0.2, 0.0, 0.01, 0.1, 0.5] {
                let cal = ConformalScore::Probit.calibrated(noise, p_hat, q, n);
                assert!((0.0..=1.0).contains(&cal), "{noise} {p_hat} {q}: {cal}");
                if let Noise::Uniform { .. } = noise {
                    let want = (p_hat.clamp(c, 1.0 - c) - q / 2.0).clamp(0.0, 1.0);
                    assert!(
                        (cal - want).abs() < 1e-12 || cal == 0.0,
                        "{p_hat} {q}: {cal} vs {want}"
                    );
                }
                for k in (0..=n).step_by(37).chain([n]) {
                    let p_mc = k as f64 / n as f64;
                    let s = ConformalScore::Probit.score(noise, p_hat, p_mc, n);
                    // Above 1 - c no count reaches the bound (counts are clamped there).
                    if p_mc >= cal + 1e-12 && cal <= 1.0 - c {
                        assert!(s <= q + 1e-9, "{noise} p_hat {p_hat} q {q} p_mc {p_mc}");
                    } else if p_mc < cal - 1e-12 && cal > 0.0 {
                        assert!(s > q - 1e-9, "{noise} p_hat {p_hat} q {q} p_mc {p_mc}");
                    }
                }
            }
        }
    }
}
