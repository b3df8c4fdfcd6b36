//! The smoothing distributions and what each certifies: its radius from a
//! lower bound on pA, the inverse (the p* a target radius needs), and the
//! norm. Torch-free; the model draws the noise (`model::noise`).
//!
//! - Gaussian N(0, sigma^2 I): L2 radius sigma * Phi^-1(pA) (Cohen et al. 2019).
//! - Uniform on [-lambda, lambda]^d: L1 radius 2 lambda (pA - 1/2), and an
//!   L-infinity radius 2 lambda (1 - (3/2 - pA)^(1/d)) (Yang et al. 2020,
//!   "Randomized Smoothing of All Shapes and Sizes").
//! - Laplace with scale lambda per coordinate: L1 radius -lambda ln(2 (1 - pA))
//!   (the same paper; Teng et al. 2020).
//!
//! Each radius is 0 at pA = 1/2 and grows with pA; below 1/2 the callers abstain.
use super::{binomial, SmoothingError};
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};

/// The norm a radius is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Norm {
    L1,
    L2,
    #[serde(rename = "Linf")]
    LInf,
}

impl Norm {
    /// As responses, files and reports spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Norm::L1 => "L1",
            Norm::L2 => "L2",
            Norm::LInf => "Linf",
        }
    }
}

/// The smoothing noise, drawn in pixel space before normalization. In a
/// bundle: `[noise] kind = "gaussian", sigma = 0.25` or `kind = "uniform"`
/// (or `"laplace"`), `lambda = 0.5`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Noise {
    Gaussian { sigma: f64 },
    Uniform { lambda: f64 },
    Laplace { lambda: f64 },
}

/// The chance mass below which no sample count certifies anything: radii are
/// capped where 1 - pA would be 1e-16.
const LEAST_MISS: f64 = 1e-16;

impl Noise {
    pub fn gaussian(sigma: f64) -> Noise {
        Noise::Gaussian { sigma }
    }

    /// "gaussian", "uniform" or "laplace".
    pub fn kind(&self) -> &'static str {
        match self {
            Noise::Gaussian { .. } => "gaussian",
            Noise::Uniform { .. } => "uniform",
            Noise::Laplace { .. } => "laplace",
        }
    }

    /// sigma or lambda.
    pub fn scale(&self) -> f64 {
        match *self {
            Noise::Gaussian { sigma } => sigma,
            Noise::Uniform { lambda } | Noise::Laplace { lambda } => lambda,
        }
    }

    /// The scale's name: "sigma" or "lambda".
    pub fn scale_name(&self) -> &'static str {
        match self {
            Noise::Gaussian { .. } => "sigma",
            Noise::Uniform { .. } | Noise::Laplace { .. } => "lambda",
        }
    }

    /// The scale is finite and positive.
    pub fn validate(&self) -> Result<(), SmoothingError> {
        let s = self.scale();
        if s.is_finite() && s > 0.0 {
            Ok(())
        } else {
            Err(SmoothingError::InvalidSigma(s))
        }
    }

    /// The norm its radius certifies.
    pub fn norm(&self) -> Norm {
        match self {
            Noise::Gaussian { .. } => Norm::L2,
            Noise::Uniform { .. } | Noise::Laplace { .. } => Norm::L1,
        }
    }

    /// The radius in [`Noise::norm`] certified by a lower bound `p` on pA:
    /// 0 at 1/2, negative below (callers abstain there), NaN outside [0, 1].
    pub fn radius(&self, p: f64) -> f64 {
        self.scale() * self.radius_unit(p)
    }

    /// The radius in units of the scale: Phi^-1(p) for the Gaussian,
    /// 2 (p - 1/2) for the uniform, -ln(2 (1 - p)) for the Laplace (for
    /// p >= 1/2; ln(2 p) below, its mirror). CALIBRATED's radius-space score
    /// measures an overestimate in these units (for the Gaussian, probit).
    pub fn radius_unit(&self, p: f64) -> f64 {
        if !(0.0..=1.0).contains(&p) {
            return f64::NAN;
        }
        match self {
            Noise::Gaussian { .. } => binomial::norm_ppf(p),
            Noise::Uniform { .. } => 2.0 * (p - 0.5),
            Noise::Laplace { .. } if p >= 0.5 => -(2.0 * (1.0 - p)).ln(),
            Noise::Laplace { .. } => (2.0 * p).ln(),
        }
    }

    /// The inverse of [`Noise::radius_unit`] over all of [0, 1]: Phi(u),
    /// 1/2 + u / 2 (within [0, 1]), or 1 - exp(-u) / 2 (exp(u) / 2 below 0).
    pub fn p_of_unit(&self, u: f64) -> f64 {
        if u.is_nan() {
            return f64::NAN;
        }
        match self {
            Noise::Gaussian { .. } => Normal::standard().cdf(u),
            Noise::Uniform { .. } => (0.5 + u / 2.0).clamp(0.0, 1.0),
            Noise::Laplace { .. } if u >= 0.0 => 1.0 - 0.5 * (-u).exp(),
            Noise::Laplace { .. } => 0.5 * u.exp(),
        }
    }

    /// p* = the smallest pA whose radius reaches `radius` (the inverse of
    /// [`Noise::radius`]): Phi(r / sigma), 1/2 + r / (2 lambda), or
    /// 1 - exp(-r / lambda) / 2. Refused for a radius that is not finite and
    /// >= 0, or beyond [`Noise::max_radius`].
    pub fn p_star(&self, radius: f64) -> Result<f64, SmoothingError> {
        self.validate()?;
        if !(radius.is_finite() && radius >= 0.0) || radius > self.max_radius() {
            return Err(SmoothingError::NumericalFailure(format!(
                "target radius {radius} must be finite, >= 0 and at most {} under {} noise",
                self.max_radius(),
                self.kind()
            )));
        }
        Ok(self.p_of_unit(radius / self.scale()))
    }

    /// The largest radius a request may ask for: where 1 - pA would be
    /// 1e-16 (8.2 sigma for the Gaussian; lambda for the uniform, whose
    /// radius is bounded; about 36 lambda for the Laplace).
    pub fn max_radius(&self) -> f64 {
        match self {
            Noise::Gaussian { sigma } => 8.2 * sigma,
            _ => self.radius(1.0 - LEAST_MISS),
        }
    }

    /// The uniform noise's L-infinity radius in dimension `d`:
    /// 2 lambda (1 - (3/2 - p)^(1/d)); `None` for the other noises (or at p <= 1/2).
    pub fn linf_radius(&self, p: f64, d: usize) -> Option<f64> {
        match *self {
            Noise::Uniform { lambda } if p > 0.5 && p <= 1.0 && d > 0 => {
                Some(2.0 * lambda * (1.0 - (1.5 - p).powf(1.0 / d as f64)))
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for Noise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} = {}",
            self.kind(),
            self.scale_name(),
            self.scale()
        )
    }
}
