//! Exact certificates at a required radius: a staged sequential test of
//! H0: pA < p* at level alpha, where p* is the smallest pA whose radius
//! reaches the target under the bundle's noise (`Noise::p_star`: Phi(eps /
//! sigma) for the Gaussian's L2 radius, 1/2 + eps / (2 lambda) and
//! 1 - exp(-eps / lambda) / 2 for the uniform's and the Laplace's L1 radius).
//! The test itself only compares bounds on pA with p*, so it holds for any noise.
//!
//! # The guarantee
//!
//! A [`Schedule`] fixes cumulative stage sizes n_1 < ... < n_K (n_K is the
//! cap) and levels alpha_1, ..., alpha_K with alpha_1 + ... + alpha_K <= alpha.
//! At stage j, with k_j of the first n_j estimation samples in class cA, the
//! bound is L_j = the one-sided (1 - alpha_j) Clopper-Pearson lower bound of
//! k_j / n_j. For every pA, by Clopper-Pearson's guarantee at each stage and
//! the union bound over stages,
//!
//!   P(L_j > pA for some j <= K) <= alpha_1 + ... + alpha_K <= alpha.
//!
//! So whatever the stopping rule does (certify when L_j >= p*, give up when
//! the cap is out of reach, continue otherwise), the bound L_J at the stage J
//! where it stops is a (1 - alpha) lower confidence bound for pA, valid at
//! that stopping time, and the noise's radius at L_J is a certified radius with
//! Cohen et al.'s guarantee at level alpha. Under H0 (pA < p*), the
//! probability of certifying eps is at most alpha. Giving up never
//! certifies, so the futility rule spends no alpha and may look at the
//! samples drawn so far.
//!
//! What may depend on what: the schedule (sizes and levels) is fixed before
//! the first estimation sample is drawn. It may depend on anything that is
//! independent of the estimation samples: the input, cA and the n0 selection
//! samples that chose it, the target radius, and the surrogate's p_hat (a
//! deterministic function of the input). The estimation samples decide only
//! when to stop, through the rule above; they never change the schedule.
//! That is why a guided schedule keeps the guarantee whatever the surrogate
//! says: a wrong guide costs samples, never validity.
use super::{clopper_pearson_lower, clopper_pearson_upper, SmoothingError};

/// One stage: the cumulative number of estimation samples after it, and the
/// level spent on its bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage {
    pub n: u64,
    pub alpha: f64,
}

/// Stage sizes and levels, fixed before any estimation sample is drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    stages: Vec<Stage>,
}

/// The first stage of the plain schedule, and the growth of each next one.
pub const PLAIN_FIRST: u64 = 100;
pub const GROWTH: u64 = 4;

impl Schedule {
    /// Checks that sizes increase and that the levels are non-negative
    /// (0: a look that can only give up) and sum to at most `alpha` (up to
    /// rounding), with at least one look that can certify.
    pub fn new(stages: Vec<Stage>, alpha: f64) -> Result<Schedule, SmoothingError> {
        if !(alpha > 0.0 && alpha < 1.0) {
            return Err(SmoothingError::InvalidAlpha(alpha));
        }
        if stages.is_empty() || stages[0].n == 0 {
            return Err(SmoothingError::ZeroSamples);
        }
        if stages.windows(2).any(|w| w[1].n <= w[0].n) {
            return Err(SmoothingError::NumericalFailure(
                "stage sizes must increase".into(),
            ));
        }
        if let Some(s) = stages.iter().find(|s| !(s.alpha >= 0.0 && s.alpha < 1.0)) {
            return Err(SmoothingError::InvalidAlpha(s.alpha));
        }
        let spent: f64 = stages.iter().map(|s| s.alpha).sum();
        if spent > alpha || spent <= 0.0 {
            return Err(SmoothingError::NumericalFailure(format!(
                "the stages spend {spent}, not within (0, alpha = {alpha}]"
            )));
        }
        Ok(Schedule { stages })
    }

    /// Without a guide: looks at 100, 400, 1600, ... samples up to the cap.
    pub fn plain(alpha: f64, cap: u64, p_star: f64) -> Result<Schedule, SmoothingError> {
        Self::ladder(PLAIN_FIRST.min(cap.max(1)), cap, alpha, p_star, None)
    }

    /// Guided by the surrogate's estimate `p_hat` of pA (its tail-mapped
    /// probability of cA, when its top class is cA).
    ///
    /// - p_hat >= p*: the first certifying look is where pA = p_hat would
    ///   certify (at the expected count), at least the fewest samples that
    ///   could certify at all and at most 8 times that (a guide just above p*
    ///   must not buy a huge first stage), and it carries half of alpha;
    ///   then looks growing by 4 up to the cap. Looks at 32, 128, ... before
    ///   it spend no alpha: they can only give up, early, where the guide
    ///   was too hopeful.
    /// - p_hat < p*: the surrogate expects the target out of reach: looks
    ///   from 32 samples up, so the futility rule ends it early.
    ///
    /// A wrong guide costs samples, never the certificate.
    pub fn guided(
        alpha: f64,
        cap: u64,
        p_star: f64,
        p_hat: f64,
    ) -> Result<Schedule, SmoothingError> {
        Self::guided_with(alpha, cap, p_star, p_hat, GUIDE)
    }

    /// [`Self::guided`] with its knobs given (for tuning on held-out inputs).
    pub fn guided_with(
        alpha: f64,
        cap: u64,
        p_star: f64,
        p_hat: f64,
        guide: Guide,
    ) -> Result<Schedule, SmoothingError> {
        if !(0.0..=1.0).contains(&p_hat) {
            return Self::plain(alpha, cap, p_star);
        }
        if p_hat < p_star {
            return Self::ladder(MIN_STAGE.min(cap.max(1)), cap, alpha, p_star, None);
        }
        let first_alpha = alpha * guide.first_share;
        let fewest = fewest_certifying(p_star, first_alpha).min(cap);
        let most = fewest.saturating_mul(guide.max_factor).min(cap);
        let first = settling_size(p_hat, p_star, first_alpha, most, guide.z)?.max(fewest);
        // Looks before the first certifying one spend no alpha and draw no
        // extra sample (every look is a prefix of the same stream): they let
        // the test give up early where the guide was too hopeful.
        let mut stages: Vec<Stage> =
            std::iter::successors(Some(MIN_STAGE), |n| n.checked_mul(GROWTH))
                .take_while(|&n| n < first.min(cap))
                .map(|n| Stage { n, alpha: 0.0 })
                .collect();
        if first >= cap {
            // One certifying look: it gets all of alpha.
            stages.push(Stage { n: cap, alpha });
            return Schedule::new(stages, alpha);
        }
        let ladder = Self::ladder(first, cap, alpha, p_star, Some(first_alpha))?;
        stages.extend(ladder.stages);
        Schedule::new(stages, alpha)
    }

    /// Looks at first, first * 4, ... and the cap. Looks too small to
    /// certify at their level spend no alpha (they can still give up); the
    /// others share alpha evenly, after `first_alpha` for the first look.
    fn ladder(
        first: u64,
        cap: u64,
        alpha: f64,
        p_star: f64,
        first_alpha: Option<f64>,
    ) -> Result<Schedule, SmoothingError> {
        let mut sizes = Vec::new();
        let mut n = first.max(1);
        while n < cap {
            sizes.push(n);
            n = n.saturating_mul(GROWTH);
        }
        sizes.push(cap.max(1));
        // The looks that can certify, and the level each gets: drop those
        // too small for their share until the shares settle.
        let mut certifying: Vec<bool> = vec![true; sizes.len()];
        let share = |certifying: &[bool]| -> Vec<f64> {
            let rest = alpha - first_alpha.unwrap_or(0.0);
            let others = certifying
                .iter()
                .enumerate()
                .filter(|&(i, &c)| c && !(i == 0 && first_alpha.is_some()))
                .count()
                .max(1);
            certifying
                .iter()
                .enumerate()
                .map(|(i, &c)| match (c, i == 0, first_alpha) {
                    (false, _, _) => 0.0,
                    (true, true, Some(a)) => a,
                    (true, _, _) => rest / others as f64,
                })
                .collect()
        };
        loop {
            let levels = share(&certifying);
            // The smallest look below the fewest samples that could certify
            // at its level gives its share up (which raises the others');
            // the cap always may certify.
            let useless = (0..sizes.len() - 1).find(|&i| {
                certifying[i] && levels[i] > 0.0 && sizes[i] < fewest_certifying(p_star, levels[i])
            });
            if let Some(i) = useless {
                certifying[i] = false;
            } else {
                let mut levels = levels;
                // The cap takes what the others leave, so rounding never
                // makes the levels sum past alpha.
                let last = levels.len() - 1;
                let others: f64 = levels[..last].iter().sum();
                levels[last] = (alpha - others).max(0.0);
                while levels.iter().sum::<f64>() > alpha && levels[last] > 0.0 {
                    levels[last] = f64::from_bits(levels[last].to_bits() - 1);
                }
                let stages = sizes
                    .iter()
                    .zip(levels)
                    .map(|(&n, alpha)| Stage { n, alpha })
                    .collect();
                return Schedule::new(stages, alpha);
            }
        }
    }

    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    pub fn cap(&self) -> u64 {
        self.stages.last().map_or(0, |s| s.n)
    }

    /// The total level the stages spend.
    pub fn alpha(&self) -> f64 {
        self.stages.iter().map(|s| s.alpha).sum()
    }
}

/// The guided schedule's knobs: the first look's share of alpha, how many
/// standard deviations of misses below expectation it is sized for, and its
/// largest size as a multiple of the fewest samples that could certify.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guide {
    pub first_share: f64,
    pub z: f64,
    pub max_factor: u64,
}

/// The shipped knobs (chosen on the calibration images; see the README).
pub const GUIDE: Guide = Guide {
    first_share: 0.5,
    z: 0.0,
    max_factor: 8,
};

/// No stage is smaller than this: below it, Clopper-Pearson decides nothing
/// at the levels certificates use.
const MIN_STAGE: u64 = 32;

/// Where a staged test ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SequentialDecision {
    /// Draw the next stage.
    Continue,
    /// L_j >= p*: certified at the target radius (and at sigma Phi^-1(L_j)).
    Certified { p_a_lower: f64 },
    /// The target is out of reach: given up early, or not certified at the cap.
    NotReached { p_a_lower: f64 },
}

/// The test of one input: its schedule, its threshold p*, and the futility
/// level at which it gives up (no alpha is spent on giving up).
#[derive(Debug, Clone, PartialEq)]
pub struct SequentialTest {
    pub schedule: Schedule,
    pub p_star: f64,
    /// Give up once the (1 - futility) upper bound on pA falls below what the
    /// cap could certify. Larger gives up sooner, and on a few inputs that the
    /// cap would have certified; it never affects validity.
    pub futility: f64,
    /// The smallest proportion the cap stage certifies: k / n_K for the
    /// smallest k with L_K >= p*.
    needed_at_cap: f64,
}

/// The default futility level.
pub const FUTILITY: f64 = 1e-3;

impl SequentialTest {
    pub fn new(
        schedule: Schedule,
        p_star: f64,
        futility: f64,
    ) -> Result<SequentialTest, SmoothingError> {
        if !(futility > 0.0 && futility < 1.0) {
            return Err(SmoothingError::InvalidAlpha(futility));
        }
        let last = *schedule.stages.last().ok_or(SmoothingError::ZeroSamples)?;
        let needed_at_cap = smallest_certifying_count(last.n, last.alpha, p_star)?
            .map_or(f64::INFINITY, |k| k as f64 / last.n as f64);
        Ok(SequentialTest {
            schedule,
            p_star,
            futility,
            needed_at_cap,
        })
    }

    /// The decision after stage `j` (0-based), with `k` of its cumulative
    /// `schedule.stages()[j].n` samples in cA.
    pub fn decide(&self, j: usize, k: u64) -> Result<SequentialDecision, SmoothingError> {
        let stage = self
            .schedule
            .stages
            .get(j)
            .ok_or_else(|| SmoothingError::NumericalFailure(format!("no stage {j}")))?;
        // A look that spends no alpha may only give up; its bound is 0.
        let lower = if stage.alpha > 0.0 {
            clopper_pearson_lower(k, stage.n, stage.alpha)?
        } else {
            0.0
        };
        if stage.alpha > 0.0 && lower >= self.p_star && lower > 0.5 {
            return Ok(SequentialDecision::Certified { p_a_lower: lower });
        }
        let last = j + 1 == self.schedule.stages.len();
        if last || clopper_pearson_upper(k, stage.n, self.futility)? < self.needed_at_cap {
            return Ok(SequentialDecision::NotReached { p_a_lower: lower });
        }
        Ok(SequentialDecision::Continue)
    }
}

/// The smallest k with CP_lower(k, n, alpha) >= p* (None: not even k = n).
fn smallest_certifying_count(
    n: u64,
    alpha: f64,
    p_star: f64,
) -> Result<Option<u64>, SmoothingError> {
    let ok = |k: u64| clopper_pearson_lower(k, n, alpha).map(|l| l >= p_star && l > 0.5);
    if !ok(n)? {
        return Ok(None);
    }
    let (mut lo, mut hi) = (0u64, n); // ok(hi), and lo is below the answer
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if ok(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Some(hi))
}

/// The fewest samples that certify p* at level `alpha` (all of them in cA):
/// alpha^(1/n) >= p*.
fn fewest_certifying(p_star: f64, alpha: f64) -> u64 {
    if p_star <= 0.5 {
        return 1;
    }
    let n = (alpha.ln() / p_star.ln()).ceil();
    if n.is_finite() && n >= 1.0 {
        n as u64
    } else {
        u64::MAX
    }
}

/// The stage size at which an input with pA = p_hat >= p* certifies at
/// level `alpha` with a count `z` standard deviations below the expected
/// one (normal approximation; z = 1: about five times in six).
fn settling_size(
    p_hat: f64,
    p_star: f64,
    alpha: f64,
    cap: u64,
    z: f64,
) -> Result<u64, SmoothingError> {
    let q = (1.0 - p_hat).max(0.0);
    let mut n = MIN_STAGE.min(cap).max(1);
    loop {
        let nf = n as f64;
        let misses = (nf * q + z * (nf * q * (1.0 - q)).sqrt())
            .round()
            .clamp(0.0, nf) as u64;
        if clopper_pearson_lower(n - misses, n, alpha)? >= p_star || n >= cap {
            return Ok(n.min(cap));
        }
        // Steps of about 5 %: a stage a little too large costs little.
        n = (n + n / 20 + 1).min(cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smoothing::Noise;
    use statrs::distribution::ContinuousCDF;

    /// The Gaussian's p* for radius eps at sigma.
    fn p_star(eps: f64, sigma: f64) -> f64 {
        Noise::Gaussian { sigma }.p_star(eps).unwrap()
    }

    #[test]
    fn schedules_spend_at_most_alpha_and_end_at_the_cap() {
        let ps = p_star(0.75, 0.25);
        let plain = Schedule::plain(0.001, 100_000, ps).unwrap();
        let sizes: Vec<u64> = plain.stages().iter().map(|s| s.n).collect();
        assert_eq!(sizes, [100, 400, 1600, 6400, 25_600, 100_000]);
        assert!((plain.alpha() - 0.001).abs() < 1e-15);
        // At eps = 3 sigma, fewer than ~5,100 samples cannot certify: those
        // looks may only give up and spend no alpha; 6,400 can (at alpha / 3).
        let levels: Vec<f64> = plain.stages().iter().map(|s| s.alpha).collect();
        assert_eq!(&levels[..3], &[0.0, 0.0, 0.0]);
        for (s, a) in plain.stages()[3..].iter().zip(&levels[3..]) {
            assert!((a - 0.001 / 3.0).abs() < 1e-15);
            assert!(fewest_certifying(ps, *a) <= s.n);
        }
        for eps in [0.25, 0.5, 0.75] {
            let ps = p_star(eps, 0.25);
            for p_hat in [0.5, 0.9, 0.97, 0.99, 0.999, 0.9999, 1.0] {
                let g = Schedule::guided(0.001, 100_000, ps, p_hat).unwrap();
                assert_eq!(g.cap(), 100_000);
                assert!(g.alpha() <= 0.001 * (1.0 + 1e-12), "{g:?}");
                assert!(g.alpha() > 0.0);
            }
        }
        assert!(Schedule::new(
            vec![Stage { n: 10, alpha: 0.6 }, Stage { n: 20, alpha: 0.6 }],
            0.9
        )
        .is_err());
        assert!(Schedule::new(
            vec![Stage { n: 20, alpha: 0.1 }, Stage { n: 20, alpha: 0.1 }],
            0.9
        )
        .is_err());
    }

    #[test]
    fn a_confident_guide_sizes_the_first_stage_near_the_closed_form() {
        // With pA = 1, certifying eps at level alpha / 2 takes the smallest n
        // with (alpha / 2)^(1 / n) >= p*: n >= ln(2 / alpha) / -ln p*.
        for eps in [0.25, 0.5, 0.75] {
            let ps = p_star(eps, 0.25);
            let closed = (2.0f64 / 0.001).ln() / -ps.ln();
            let g = Schedule::guided(0.001, 100_000, ps, 1.0).unwrap();
            // Looks before the first certifying one spend nothing.
            let j = g.stages().iter().position(|s| s.alpha > 0.0).unwrap();
            assert!(g.stages()[..j].iter().all(|s| s.alpha == 0.0));
            assert!((g.stages()[j].alpha - 0.0005).abs() < 1e-15);
            let first = g.stages()[j].n as f64;
            assert!(
                first >= closed && first < 1.1 * closed + 2.0,
                "{eps}: {first} vs {closed}"
            );
            let test = SequentialTest::new(g.clone(), ps, FUTILITY).unwrap();
            assert!(matches!(
                test.decide(j, g.stages()[j].n).unwrap(),
                SequentialDecision::Certified { .. }
            ));
            // A stream all in cA never gives up at an early look.
            for early in 0..j {
                assert_eq!(
                    test.decide(early, g.stages()[early].n).unwrap(),
                    SequentialDecision::Continue
                );
            }
        }
    }

    /// splitmix64: a generator that shares no code with the implementation.
    struct Rng(u64);
    impl Rng {
        fn uniform(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// The exact probability that the test certifies when pA = p, by a
    /// binomial recursion over the stages, with the decision thresholds from
    /// statrs's Beta quantiles rather than this crate's bounds.
    fn exact_certification_rate(test: &SequentialTest, p: f64) -> f64 {
        use statrs::distribution::{Beta, Binomial, Discrete};
        let lower = |k: u64, n: u64, a: f64| -> f64 {
            match k {
                0 => 0.0,
                k if k == n => a.powf(1.0 / n as f64),
                k => Beta::new(k as f64, (n - k + 1) as f64)
                    .unwrap()
                    .inverse_cdf(a),
            }
        };
        let upper = |k: u64, n: u64, a: f64| -> f64 {
            if k == n {
                1.0
            } else {
                Beta::new((k + 1) as f64, (n - k) as f64)
                    .unwrap()
                    .inverse_cdf(1.0 - a)
            }
        };
        let stages = test.schedule.stages();
        let last = stages[stages.len() - 1];
        // needed_at_cap, independently: the smallest certifying proportion at the cap.
        let needed = (0..=last.n)
            .find(|&k| {
                lower(k, last.n, last.alpha) >= test.p_star && lower(k, last.n, last.alpha) > 0.5
            })
            .map_or(f64::INFINITY, |k| k as f64 / last.n as f64);
        // alive[k]: P(k successes so far and still running).
        let mut alive = vec![1.0f64];
        let (mut certified, mut drawn) = (0.0, 0u64);
        for (j, stage) in stages.iter().enumerate() {
            let step = stage.n - drawn;
            let b = Binomial::new(p, step).unwrap();
            let inc: Vec<f64> = (0..=step).map(|i| b.pmf(i)).collect();
            let mut next = vec![0.0; alive.len() + step as usize];
            for (k, &pk) in alive.iter().enumerate() {
                if pk == 0.0 {
                    continue;
                }
                for (i, &pi) in inc.iter().enumerate() {
                    next[k + i] += pk * pi;
                }
            }
            drawn = stage.n;
            let is_last = j + 1 == stages.len();
            for (k, pk) in next.iter_mut().enumerate() {
                let l = if stage.alpha > 0.0 {
                    lower(k as u64, stage.n, stage.alpha)
                } else {
                    0.0
                };
                if l >= test.p_star && l > 0.5 {
                    certified += *pk;
                    *pk = 0.0;
                } else if is_last || upper(k as u64, stage.n, test.futility) < needed {
                    *pk = 0.0;
                }
            }
            alive = next;
        }
        certified
    }

    /// The guarantee, tested where it is tightest: pA exactly p* and just
    /// below it, for the Gaussian's L2 thresholds and the uniform's and the
    /// Laplace's L1 ones. alpha = 0.05 so that false certificates are
    /// frequent enough to count. 20,000 simulated streams per case go through
    /// `decide`; the exact rate comes from the independent recursion above,
    /// and each p* from the closed form written here (rs4a's radii inverted),
    /// not from `Noise::p_star`.
    #[test]
    fn false_certificates_stay_below_alpha_at_the_worst_cases() {
        use statrs::distribution::Normal;
        let alpha = 0.05;
        let cases = [
            (
                Noise::Gaussian { sigma: 0.25 },
                0.25,
                1_000u64,
                Normal::standard().cdf(1.0),
            ),
            (
                Noise::Gaussian { sigma: 0.25 },
                0.5,
                2_000,
                Normal::standard().cdf(2.0),
            ),
            // Uniform, lambda = 0.5: R = 2 lambda (p - 1/2), so p* = 0.7 at R = 0.2.
            (Noise::Uniform { lambda: 0.5 }, 0.2, 1_000, 0.7),
            // Laplace, lambda = 0.25: R = -lambda ln(2 (1 - p)), so p* = 1 - e^-1 / 2 at R = 0.25.
            (
                Noise::Laplace { lambda: 0.25 },
                0.25,
                1_000,
                1.0 - (-1.0f64).exp() / 2.0,
            ),
        ];
        for (noise, eps, cap, independent) in cases {
            let ps = noise.p_star(eps).unwrap();
            assert!(
                (ps - independent).abs() < 1e-12,
                "{noise}: p* {ps} vs {independent}"
            );
            let schedules = [
                Schedule::plain(alpha, cap, ps).unwrap(),
                // A guide that says "certain": half of alpha on a small first stage.
                Schedule::guided(alpha, cap, ps, 1.0).unwrap(),
                // A guide just above the threshold.
                Schedule::guided(alpha, cap, ps, (ps + 1.0) / 2.0).unwrap(),
                // A guide that says "out of reach": looks from 32 samples.
                Schedule::guided(alpha, cap, ps, ps / 2.0).unwrap(),
            ];
            for schedule in schedules {
                let test = SequentialTest::new(schedule.clone(), ps, 0.05).unwrap();
                for p in [ps, ps - 0.002] {
                    let exact = exact_certification_rate(&test, p);
                    assert!(
                        exact <= alpha,
                        "{noise}: exact rate {exact} > {alpha} at p = {p}, {schedule:?}"
                    );
                    let mut rng = Rng(eps.to_bits() ^ p.to_bits() ^ schedule.stages()[0].n);
                    let streams = 20_000;
                    let mut false_certs = 0u32;
                    for _ in 0..streams {
                        let (mut k, mut drawn) = (0u64, 0u64);
                        for (j, stage) in schedule.stages().iter().enumerate() {
                            while drawn < stage.n {
                                k += u64::from(rng.uniform() < p);
                                drawn += 1;
                            }
                            match test.decide(j, k).unwrap() {
                                SequentialDecision::Continue => continue,
                                SequentialDecision::Certified { .. } => false_certs += 1,
                                SequentialDecision::NotReached { .. } => {}
                            }
                            break;
                        }
                    }
                    let rate = f64::from(false_certs) / f64::from(streams);
                    let se = (exact * (1.0 - exact) / f64::from(streams)).sqrt();
                    assert!(
                        (rate - exact).abs() <= 4.5 * se + 1e-4,
                        "{noise} eps {eps} p {p}: simulated {rate} vs exact {exact} (se {se}), {schedule:?}"
                    );
                    assert!(
                        rate <= alpha + 4.5 * se,
                        "{noise}: simulated {rate} > {alpha}"
                    );
                }
            }
        }
    }

    #[test]
    fn p_star_is_phi_of_eps_over_sigma() {
        assert!((p_star(0.5, 0.25) - 0.977_249_868_051_820_8).abs() < 1e-9);
        assert!((p_star(0.75, 0.25) - 0.998_650_101_968_369_9).abs() < 1e-9);
        assert_eq!(p_star(0.0, 0.25), 0.5);
        assert!(Noise::Gaussian { sigma: 0.25 }.p_star(-1.0).is_err());
    }
}
