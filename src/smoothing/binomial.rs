//! Binomial probabilities and the regularized incomplete beta function in log space,
//! for the integer shapes that Clopper-Pearson bounds and binomial tests need.
//!
//! Why not statrs: `statrs::function::beta::beta_reg` stops its continued fraction after
//! 140 terms, far too few once both shapes are ~1e5 or more (n = 1e7 at p = 1/2 needs
//! thousands), it works in linear space (tails underflow), and `inv_beta_reg` has no
//! iteration cap (it can spin forever on a NaN). Everything here is bounded and reports
//! failure as an error instead.

use super::SmoothingError;

/// ln(2 pi).
const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// `stirlerr(n) = ln(n!) - ln(sqrt(2 pi n) (n/e)^n)` for n = 0..=15
/// (computed with mpmath at 40 digits; `stirlerr(0)` is 0 by convention).
const STIRLERR_TABLE: [f64; 16] = [
    0.0,
    0.081_061_466_795_327_26,
    0.041_340_695_955_409_3,
    0.027_677_925_684_998_34,
    0.020_790_672_103_765_093,
    0.016_644_691_189_821_193,
    0.013_876_128_823_070_748,
    0.011_896_709_945_891_77,
    0.010_411_265_261_972_096,
    0.009_255_462_182_712_733,
    0.008_330_563_433_362_87,
    0.007_573_675_487_951_841,
    0.006_942_840_107_209_53,
    0.006_408_994_188_004_207,
    0.005_951_370_112_758_847_5,
    0.005_554_733_551_962_801,
];

/// Error term of Stirling's formula for a non-negative integer `n` (Loader 2000).
fn stirlerr(n: f64) -> f64 {
    const S0: f64 = 1.0 / 12.0;
    const S1: f64 = 1.0 / 360.0;
    const S2: f64 = 1.0 / 1260.0;
    const S3: f64 = 1.0 / 1680.0;
    const S4: f64 = 1.0 / 1188.0;
    if n <= 15.0 {
        // n is a small non-negative integer here.
        return STIRLERR_TABLE[n as usize];
    }
    let nn = n * n;
    if n > 500.0 {
        (S0 - S1 / nn) / n
    } else if n > 80.0 {
        (S0 - (S1 - S2 / nn) / nn) / n
    } else if n > 35.0 {
        (S0 - (S1 - (S2 - S3 / nn) / nn) / nn) / n
    } else {
        (S0 - (S1 - (S2 - (S3 - S4 / nn) / nn) / nn) / nn) / n
    }
}

/// Deviance term `x ln(x / np) + np - x`, summed as a series when `x ~ np` so that the
/// cancellation does not eat the precision (Loader 2000).
fn bd0(x: f64, np: f64) -> f64 {
    if (x - np).abs() < 0.1 * (x + np) {
        let mut v = (x - np) / (x + np);
        let mut s = (x - np) * v;
        let mut ej = 2.0 * x * v;
        v *= v;
        let mut j = 1.0;
        // |v| < 1/21, so the terms shrink at least 400-fold each step: ~12 iterations.
        while j < 1000.0 {
            ej *= v;
            let s1 = s + ej / (2.0 * j + 1.0);
            if s1 == s {
                return s1;
            }
            s = s1;
            j += 1.0;
        }
        s
    } else {
        x * (x / np).ln() + np - x
    }
}

/// ln P(X = k) for X ~ Binomial(n, p), with `q = 1 - p` passed separately so that p near 1
/// keeps its precision. Loader's saddle-point form: relative accuracy ~1e-15 for any n,
/// where the naive ln-gamma difference loses ~8 digits at n = 1e7.
pub(crate) fn ln_dbinom(k: f64, n: f64, p: f64, q: f64) -> f64 {
    if k == 0.0 {
        return if p < 0.1 {
            -bd0(n, n * q) - n * p
        } else {
            n * q.ln()
        };
    }
    if k == n {
        return if q < 0.1 {
            -bd0(n, n * p) - n * q
        } else {
            n * p.ln()
        };
    }
    let lc = stirlerr(n) - stirlerr(k) - stirlerr(n - k) - bd0(k, n * p) - bd0(n - k, n * q);
    // ln(2 pi k (n - k) / n); n - k is exact, whereas ln1p(-k/n) loses digits for k ~ n.
    let lf = LN_2PI + k.ln() + (n - k).ln() - n.ln();
    lc - 0.5 * lf
}

/// ln(1 - e^l) for l <= 0, accurate on both ends (Maechler's log1mexp).
pub(crate) fn ln_1m_exp(l: f64) -> f64 {
    if l > -std::f64::consts::LN_2 {
        (-l.exp_m1()).ln()
    } else {
        (-l.exp()).ln_1p()
    }
}

/// The regularized incomplete beta `I_x(a, b)` at one point, in logs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BetaTail {
    /// ln I_x(a, b) (the Beta CDF; equals ln P(Binomial(a + b - 1, x) >= a)).
    pub ln_cdf: f64,
    /// ln (x * density(x)): the derivative of the CDF with respect to ln x.
    pub ln_x_density: f64,
}

/// Continued fraction for the incomplete beta (Numerical Recipes `betacf`, modified
/// Lentz). Converges quickly for `x < (a + 1) / (a + b + 2)`, in the worst case after
/// O(sqrt(max(a, b))) terms, so the cap scales with that instead of a fixed 140.
/// `y = 1 - x` is passed so that the first term, `1 - (a + b) x / (a + 1)`, does not
/// cancel catastrophically when x is near 1 (e.g. Beta(1e7, 2) near its mean).
fn beta_cf(a: f64, b: f64, x: f64, y: f64) -> Result<f64, SmoothingError> {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-15;
    let max_iter = 1000.0 + 50.0 * a.max(b).sqrt();
    let qab = a + b;
    let qap = a + 1.0;
    let qam = a - 1.0;
    let clamp = |v: f64| if v.abs() < TINY { TINY } else { v };
    let mut c = 1.0;
    let first = if x <= 0.5 {
        1.0 - qab * x / qap
    } else {
        (1.0 - b + qab * y) / qap
    };
    let mut d = 1.0 / clamp(first);
    let mut h = d;
    let mut m = 1.0;
    while m <= max_iter {
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / clamp(1.0 + aa * d);
        c = clamp(1.0 + aa / c);
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / clamp(1.0 + aa * d);
        c = clamp(1.0 + aa / c);
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() <= EPS {
            return if h.is_finite() && h > 0.0 {
                Ok(h)
            } else {
                Err(SmoothingError::NumericalFailure(format!(
                    "incomplete beta continued fraction gave {h} (a={a}, b={b}, x={x})"
                )))
            };
        }
        m += 1.0;
    }
    Err(SmoothingError::NumericalFailure(format!(
        "incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})"
    )))
}

/// `I_x(a, b)` for integer shapes `a, b >= 1` with `y = 1 - x` passed separately (so x
/// near 1 keeps its precision). The side below the mean is computed directly, the other
/// as its complement, so whichever of CDF / SF is small is accurate to ~1e-14 relative.
pub(crate) fn beta_tail(a: f64, b: f64, x: f64, y: f64) -> Result<BetaTail, SmoothingError> {
    if x <= 0.0 {
        return Ok(BetaTail {
            ln_cdf: f64::NEG_INFINITY,
            ln_x_density: f64::NEG_INFINITY,
        });
    }
    if y <= 0.0 {
        return Ok(BetaTail {
            ln_cdf: 0.0,
            ln_x_density: f64::NEG_INFINITY,
        });
    }
    if x < (a + 1.0) / (a + b + 2.0) {
        let (ln_cdf, ln_pmf) = ln_lower_side(a, b, x, y)?;
        Ok(BetaTail {
            ln_cdf,
            ln_x_density: a.ln() + ln_pmf,
        })
    } else {
        // 1 - I_x(a, b) = I_y(b, a).
        let (ln_sf, ln_pmf) = ln_lower_side(b, a, y, x)?;
        Ok(BetaTail {
            ln_cdf: ln_1m_exp(ln_sf),
            ln_x_density: b.ln() + ln_pmf + x.ln() - y.ln(),
        })
    }
}

/// Shapes b up to this use the exact finite binomial sum (b positive terms, no cancellation)
/// instead of the continued fraction, which loses digits to cancellation when x is near 1
/// (a >> b): ~1e-12 relative at Beta(1e7, 2).
const FINITE_SUM_MAX_B: f64 = 64.0;

/// `(ln I_x(a, b), ln P(Binomial(n, x) = a))` with n = a + b - 1, for x below the mean
/// (where I is the smaller side and both methods are well-conditioned).
fn ln_lower_side(a: f64, b: f64, x: f64, y: f64) -> Result<(f64, f64), SmoothingError> {
    let n = a + b - 1.0;
    let ln_pmf = ln_dbinom(a, n, x, y);
    if b <= FINITE_SUM_MAX_B {
        Ok((ln_pmf + binomial_sum_from(a, n, x / y).ln(), ln_pmf))
    } else {
        // x^a y^b / (a B(a, b)) = P(Binomial(n, x) = a) * y.
        Ok((ln_pmf + y.ln() + beta_cf(a, b, x, y)?.ln(), ln_pmf))
    }
}

/// `sum_{j=a}^{n} P(X = j) / P(X = a)` for X ~ Binomial(n, x), with `odds = x / (1 - x)`.
fn binomial_sum_from(a: f64, n: f64, odds: f64) -> f64 {
    let mut term = 1.0;
    let mut sum = 1.0;
    let mut j = a;
    while j < n {
        term *= (n - j) / (j + 1.0) * odds;
        sum += term;
        j += 1.0;
    }
    sum
}

/// Standard normal quantile via statrs's (Boost-derived) `erfc_inv`, exact in the tails.
pub(crate) fn norm_ppf(p: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    -std::f64::consts::SQRT_2 * statrs::function::erf::erfc_inv(2.0 * p)
}

/// The `alpha` quantile x of Beta(a, b) for integer shapes `a, b >= 1` and `0 < alpha < 1`,
/// returned as `(x, 1 - x)` with both accurate to ~1e-15 relative (the upper
/// Clopper-Pearson bound is the second of these, and `1.0 - x` would lose its digits).
///
/// Newton's method on `ln I` as a function of `u = ln x`. For a, b >= 1 the law of ln X is
/// log-concave, so `ln I(e^u)` is concave and increasing in u: from any start Newton lands
/// left of the root at most once and then climbs to it monotonically. A bisection bracket
/// guards against rounding; convergence is quadratic, typically 3-6 evaluations.
pub(crate) fn beta_quantile(a: f64, b: f64, alpha: f64) -> Result<(f64, f64), SmoothingError> {
    const MAX_ITER: usize = 300;
    let ln_alpha = alpha.ln();
    let mut u = initial_guess(a, b, alpha);
    // Bracket in u: g(lo) < 0 < g(hi); g(0) = -ln(alpha) > 0.
    let mut lo = f64::NEG_INFINITY;
    let mut hi = 0.0_f64;
    for _ in 0..MAX_ITER {
        let x = u.exp();
        let y = -u.exp_m1();
        let t = beta_tail(a, b, x, y)?;
        let g = t.ln_cdf - ln_alpha;
        if g.is_nan() {
            return Err(SmoothingError::NumericalFailure(format!(
                "NaN in Beta({a}, {b}) CDF at x={x}"
            )));
        }
        if g == 0.0 {
            return Ok((x, y));
        }
        if g < 0.0 {
            lo = lo.max(u);
        } else {
            hi = hi.min(u);
        }
        let slope = (t.ln_x_density - t.ln_cdf).exp();
        let mut next = u - g / slope;
        if !(next.is_finite() && next > lo && next < hi) {
            next = if lo.is_finite() {
                0.5 * (lo + hi)
            } else {
                // No left end yet: step far left (g is concave, so this ends quickly).
                2.0 * hi.min(u) - 1.0
            };
        }
        let tol = 4.0 * f64::EPSILON * next.abs();
        if (next - u).abs() <= tol || (lo.is_finite() && hi - lo <= tol) {
            return Ok((next.exp(), -next.exp_m1()));
        }
        u = next;
    }
    Err(SmoothingError::NumericalFailure(format!(
        "Beta({a}, {b}) quantile at {alpha} did not converge"
    )))
}

/// Start value in u = ln x: the normal approximation where it lands inside (0, 1), else
/// the left-tail power law `I_x ~ C(n, a) x^a` (exact to first order for small x).
fn initial_guess(a: f64, b: f64, alpha: f64) -> f64 {
    let s = a + b;
    let mean = a / s;
    let sd = (a * b / (s * s * (s + 1.0))).sqrt();
    let x0 = mean + norm_ppf(alpha) * sd;
    if x0 > 0.0 && x0 < 1.0 {
        return x0.ln();
    }
    use statrs::function::gamma::ln_gamma;
    let n = s - 1.0;
    let ln_choose = ln_gamma(n + 1.0) - ln_gamma(a + 1.0) - ln_gamma(b);
    let u = (alpha.ln() - ln_choose) / a;
    if u.is_finite() && u < 0.0 {
        u
    } else {
        -1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use statrs::function::gamma::ln_gamma;

    /// ln_dbinom agrees with the ln-gamma formula where that one is exact enough (small n).
    #[test]
    fn ln_dbinom_matches_lgamma_for_small_n() {
        for n in [1u32, 2, 5, 17, 40, 100, 600] {
            for k in 0..=n {
                for p in [1e-6, 0.01, 0.3, 0.5, 0.77, 0.999] {
                    let (nf, kf) = (f64::from(n), f64::from(k));
                    let direct = ln_gamma(nf + 1.0) - ln_gamma(kf + 1.0) - ln_gamma(nf - kf + 1.0)
                        + kf * f64::ln(p)
                        + (nf - kf) * (-p).ln_1p();
                    let ours = ln_dbinom(kf, nf, p, 1.0 - p);
                    assert!(
                        (ours - direct).abs() <= 1e-12 * direct.abs().max(1.0),
                        "n={n} k={k} p={p}: {ours} vs {direct}"
                    );
                }
            }
        }
    }

    /// The finite sum and the continued fraction agree where both are well-conditioned.
    #[test]
    fn finite_sum_matches_continued_fraction() {
        for (a, b) in [(1.0, 2.0), (40.0, 10.0), (1000.0, 64.0), (5.0, 60.0)] {
            let switch: f64 = (a + 1.0) / (a + b + 2.0);
            for frac in [0.05, 0.5, 0.9, 0.999] {
                let x = frac * switch;
                let y = 1.0 - x;
                let n = a + b - 1.0;
                let ln_pmf = ln_dbinom(a, n, x, y);
                let by_sum = ln_pmf + binomial_sum_from(a, n, x / y).ln();
                let by_cf = ln_pmf + y.ln() + beta_cf(a, b, x, y).unwrap().ln();
                assert!(
                    (by_sum - by_cf).abs() < 1e-13 * by_sum.abs().max(1.0),
                    "a={a} b={b} x={x}: {by_sum} vs {by_cf}"
                );
            }
        }
    }

    /// The two branches (direct CF below the switch point, complement above) meet
    /// continuously, and both match an exact finite binomial sum for small n.
    #[test]
    fn beta_tail_branches_agree_with_exact_sum() {
        for (a, b) in [
            (1.0, 1.0),
            (3.0, 4.0),
            (1.0, 30.0),
            (30.0, 1.0),
            (60.0, 41.0),
        ] {
            let n = a + b - 1.0;
            let switch: f64 = (a + 1.0) / (a + b + 2.0);
            let xs = [
                1e-3,
                0.2,
                switch * (1.0 - 1e-12),
                switch * (1.0 + 1e-12),
                0.8,
                0.999,
            ];
            for x in xs {
                // P(Binomial(n, x) >= a) summed term by term with the ln-gamma pmf.
                let mut exact = 0.0;
                let mut j = a;
                while j <= n {
                    exact += (ln_gamma(n + 1.0) - ln_gamma(j + 1.0) - ln_gamma(n - j + 1.0)
                        + j * x.ln()
                        + (n - j) * (1.0 - x).ln())
                    .exp();
                    j += 1.0;
                }
                let t = beta_tail(a, b, x, 1.0 - x).unwrap();
                let ours = t.ln_cdf.exp();
                assert!(
                    (ours - exact).abs() <= 1e-12 * exact,
                    "a={a} b={b} x={x}: {ours} vs {exact}"
                );
            }
        }
    }
}
