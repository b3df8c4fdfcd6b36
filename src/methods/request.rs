//! A certificate request, typed by method: each method carries exactly what
//! it needs (SEQUENTIAL its target, CALIBRATED its calibration at the
//! calibration's own n and n0), and [`CertifyRequest::build`] is the one
//! place that checks a caller's options against a model. The server's
//! validation, offline `certify` and the benchmarks all call it, so a bad
//! request gets the same message on every surface; each surface only names
//! the field its own way ([`Field::proto`], [`Field::flag`]).
use crate::engine::requests::TaskParams;
use crate::engine::{AutoBand, Method};
use crate::model::Bundle;
use crate::smoothing::{AdaptiveN0, CalibrationShift, Noise};

/// A request option, however a surface spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    N0,
    N,
    Alpha,
    AdaptiveN0,
    TargetRadius,
}

impl Field {
    /// The proto's name (in a gRPC status).
    pub fn proto(self) -> &'static str {
        match self {
            Field::N0 => "options.n0",
            Field::N => "options.n",
            Field::Alpha => "options.alpha",
            Field::AdaptiveN0 => "options.adaptive_n0",
            Field::TargetRadius => "options.target_radius",
        }
    }

    /// The command line's flag (offline `certify`, the benchmarks).
    pub fn flag(self) -> &'static str {
        match self {
            Field::N0 => "--n0",
            Field::N => "--n",
            Field::Alpha => "--alpha",
            Field::AdaptiveN0 => "--adaptive-n0",
            Field::TargetRadius => "--target-radius",
        }
    }
}

/// Why a request cannot be built. The message is the surface's own only in
/// the field's name, which each surface puts in front of it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// An option out of bounds or out of line with the method.
    #[error("{}: {message}", field.proto())]
    Invalid { field: Field, message: String },
    /// A valid request that this model cannot serve: its bundle lacks a part.
    #[error("{message}")]
    Unsupported { method: Method, message: String },
}

fn invalid(field: Field, message: impl Into<String>) -> RequestError {
    RequestError::Invalid {
        field,
        message: message.into(),
    }
}

/// What a caller asks; `None` takes the model's default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RequestOptions {
    pub method: Option<Method>,
    pub n0: Option<u64>,
    pub n: Option<u64>,
    pub alpha: Option<f64>,
    pub seed: u64,
    pub adaptive_n0: Option<bool>,
    pub target_radius: Option<f64>,
    /// SEQUENTIAL's plain schedule instead of the surrogate's guide (for comparison).
    pub unguided: bool,
}

/// A model's defaults for options a request leaves unset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Defaults {
    pub method: Method,
    pub n0: u64,
    pub n: u64,
    pub alpha: f64,
    pub adaptive_n0: bool,
}

/// The bounds a request's options must keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_n0: u64,
    pub max_n: u64,
    /// The smallest alpha accepted; 0 for any alpha in (0, 1).
    pub min_alpha: f64,
}

impl Limits {
    /// Offline runs: any sample count, any level in (0, 1).
    pub const NONE: Limits = Limits {
        max_n0: u64::MAX,
        max_n: u64::MAX,
        min_alpha: 0.0,
    };
}

/// What a model offers a request: its bundle's parts, its defaults, its bounds.
#[derive(Debug, Clone, Copy)]
pub struct ModelTerms<'a> {
    pub bundle: &'a Bundle,
    pub defaults: Defaults,
    pub limits: Limits,
    /// Adaptive n0's stopping rule, for requests that ask for it (none: such
    /// requests are refused).
    pub adaptive_n0: Option<AdaptiveN0>,
    /// AUTO's fallback band on the calibrated pA_lower.
    pub auto_band: AutoBand,
}

/// The caller's sampling: n0 selection samples (the cap, when adaptive), n
/// estimation samples (SEQUENTIAL's cap), the level, and the noise seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub n0: u64,
    pub n: u64,
    pub alpha: f64,
    pub seed: u64,
}

/// How cA is chosen from the selection samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selection {
    /// The top class of n0 samples (what calibrations assume).
    Fixed,
    /// Samples drawn a chunk at a time until the leader is settled, at most n0.
    Adaptive(AdaptiveN0),
}

/// A radius to certify exactly, and whether the surrogate may size the test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    pub radius: f64,
    /// Use the surrogate's p_hat to size the stages (the default); false
    /// runs the plain schedule (for comparison).
    pub guided: bool,
}

/// CALIBRATED's part of a request: the bundle's calibration and its delta.
/// The request's n and n0 are the calibration's own, and selection fixed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibrated {
    pub shift: CalibrationShift,
    pub delta: f64,
}

/// Each method with exactly what it needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plan {
    MonteCarlo {
        selection: Selection,
    },
    Surrogate {
        selection: Selection,
    },
    Calibrated(Calibrated),
    /// Calibrated where decisive, else Monte Carlo with the same cA (the
    /// sequential test, when given a target).
    Auto {
        calibrated: Calibrated,
        band: AutoBand,
        target: Option<Target>,
    },
    Sequential {
        selection: Selection,
        target: Target,
    },
}

/// A checked certificate request; only [`CertifyRequest::build`] makes one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CertifyRequest {
    plan: Plan,
    sampling: Sampling,
}

impl CertifyRequest {
    /// The caller's options resolved against the model (its defaults where
    /// unset) and checked: bounds, the parts the method needs, the target
    /// radius, and the calibration's n and n0.
    pub fn build(o: &RequestOptions, terms: &ModelTerms) -> Result<CertifyRequest, RequestError> {
        let d = terms.defaults;
        let method = o.method.unwrap_or(d.method);
        let bundle = terms.bundle;
        if method.needs_surrogate() && bundle.surrogate.is_none() {
            return Err(RequestError::Unsupported {
                method,
                message: format!(
                    "cannot serve {}: its bundle has no [surrogate] (smoothcert train-surrogate); ask for MONTE_CARLO",
                    method.label()
                ),
            });
        }
        let target = target(method, o.target_radius, bundle.noise())?.map(|radius| Target {
            radius,
            guided: !o.unguided,
        });
        let n = bounded(Field::N, o.n, d.n, terms.limits.max_n)?;
        let n0 = bounded(Field::N0, o.n0, d.n0, terms.limits.max_n0)?;
        let alpha = alpha(o.alpha, d.alpha, terms.limits.min_alpha)?;
        let selection = match o.adaptive_n0.unwrap_or(d.adaptive_n0) {
            true => Selection::Adaptive(terms.adaptive_n0.ok_or_else(|| {
                invalid(
                    Field::AdaptiveN0,
                    "no adaptive-selection rule is configured",
                )
            })?),
            false => Selection::Fixed,
        };
        let mut sampling = Sampling {
            n0,
            n,
            alpha,
            seed: o.seed,
        };
        let plan = match method {
            Method::MonteCarlo => Plan::MonteCarlo { selection },
            Method::Surrogate => Plan::Surrogate { selection },
            Method::Sequential => Plan::Sequential {
                selection,
                // `target` refused SEQUENTIAL without one.
                target: target.ok_or_else(|| invalid(Field::TargetRadius, "missing"))?,
            },
            Method::Calibrated | Method::Auto => {
                let calibrated = calibrated(o, terms, method, &mut sampling)?;
                match method {
                    Method::Auto => Plan::Auto {
                        calibrated,
                        band: terms.auto_band,
                        target,
                    },
                    _ => Plan::Calibrated(calibrated),
                }
            }
        };
        Ok(CertifyRequest { plan, sampling })
    }

    pub fn method(&self) -> Method {
        match self.plan {
            Plan::MonteCarlo { .. } => Method::MonteCarlo,
            Plan::Surrogate { .. } => Method::Surrogate,
            Plan::Calibrated(_) => Method::Calibrated,
            Plan::Auto { .. } => Method::Auto,
            Plan::Sequential { .. } => Method::Sequential,
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn sampling(&self) -> Sampling {
        self.sampling
    }

    /// The same request under another noise seed (offline runs: one per input).
    pub fn with_seed(self, seed: u64) -> CertifyRequest {
        CertifyRequest {
            sampling: Sampling {
                seed,
                ..self.sampling
            },
            ..self
        }
    }

    /// The exact test's target, when the request has one.
    pub fn target(&self) -> Option<Target> {
        match self.plan {
            Plan::Sequential { target, .. } => Some(target),
            Plan::Auto { target, .. } => target,
            _ => None,
        }
    }

    /// CALIBRATED's and AUTO's calibration.
    pub fn calibrated(&self) -> Option<Calibrated> {
        match self.plan {
            Plan::Calibrated(c) | Plan::Auto { calibrated: c, .. } => Some(c),
            _ => None,
        }
    }

    /// The selection rule (fixed wherever a calibration applies).
    pub fn selection(&self) -> Selection {
        match self.plan {
            Plan::MonteCarlo { selection }
            | Plan::Surrogate { selection }
            | Plan::Sequential { selection, .. } => selection,
            Plan::Calibrated(_) | Plan::Auto { .. } => Selection::Fixed,
        }
    }

    /// The engine's parameters for this request's tasks, before any
    /// scheduling state (cA given, a stage's slice) is added.
    pub(crate) fn task_params(&self) -> TaskParams {
        let s = self.sampling;
        TaskParams {
            shift: self.calibrated().map(|c| c.shift),
            adaptive_n0: match self.selection() {
                Selection::Adaptive(rule) => Some(rule),
                Selection::Fixed => None,
            },
            ..TaskParams::new(0, s.n0, s.n, s.alpha, s.seed)
        }
    }
}

/// CALIBRATED's and AUTO's part: the bundle's calibration, refused at any n
/// but its own, with another n0, or with adaptive selection (the coverage
/// statement holds for scores made the way the calibration made them); the
/// request's n0 becomes the calibration's.
fn calibrated(
    o: &RequestOptions,
    terms: &ModelTerms,
    method: Method,
    sampling: &mut Sampling,
) -> Result<Calibrated, RequestError> {
    let cal = terms
        .bundle
        .surrogate
        .as_ref()
        .and_then(|s| s.calibration.as_ref())
        .ok_or_else(|| RequestError::Unsupported {
            method,
            message: format!(
                "cannot serve {}: its bundle has no calibration (smoothcert calibrate); ask for SURROGATE or MONTE_CARLO",
                method.label()
            ),
        })?;
    if sampling.n != cal.n {
        return Err(invalid(
            Field::N,
            format!(
                "the calibration holds at n = {}; {} would void its delta = {}",
                cal.n, sampling.n, cal.delta
            ),
        ));
    }
    if let Some(asked) = o.n0.filter(|&a| a != cal.n0) {
        return Err(invalid(
            Field::N0,
            format!(
                "the calibration chose cA from n0 = {} fixed samples; {asked} would void its delta = {}",
                cal.n0, cal.delta
            ),
        ));
    }
    if o.adaptive_n0 == Some(true) {
        return Err(invalid(
            Field::AdaptiveN0,
            format!(
                "the calibration chose cA from n0 = {} fixed samples; adaptive selection would void its delta = {}",
                cal.n0, cal.delta
            ),
        ));
    }
    sampling.n0 = cal.n0;
    Ok(Calibrated {
        shift: cal.shift(terms.bundle.noise()),
        delta: cal.delta,
    })
}

/// A checked PREDICT request: n samples, the level, the seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PredictRequest {
    pub n: u64,
    pub alpha: f64,
    pub seed: u64,
}

impl PredictRequest {
    pub fn build(o: &RequestOptions, terms: &ModelTerms) -> Result<PredictRequest, RequestError> {
        let d = terms.defaults;
        Ok(PredictRequest {
            n: bounded(Field::N, o.n, d.n, terms.limits.max_n)?,
            alpha: alpha(o.alpha, d.alpha, terms.limits.min_alpha)?,
            seed: o.seed,
        })
    }

    pub(crate) fn task_params(&self) -> TaskParams {
        TaskParams::new(0, 0, self.n, self.alpha, self.seed)
    }
}

/// The target radius: required by SEQUENTIAL, optional for AUTO (its Monte
/// Carlo step then tests it), meaningless for the rest; and within reach.
fn target(method: Method, value: Option<f64>, noise: Noise) -> Result<Option<f64>, RequestError> {
    let field = Field::TargetRadius;
    match (method, value) {
        (Method::Sequential, None) => Err(invalid(
            field,
            "SEQUENTIAL certifies a required radius: give one (e.g. 0.5)",
        )),
        (Method::Sequential | Method::Auto, Some(r)) if !(r.is_finite() && r >= 0.0) => {
            Err(invalid(
                field,
                format!("{r} is not a radius: must be finite and >= 0"),
            ))
        }
        (Method::Sequential | Method::Auto, Some(r)) if r > noise.max_radius() => Err(invalid(
            field,
            format!(
                "{r} cannot be certified under {noise} noise (at most about {:.3} in {})",
                noise.max_radius(),
                noise.norm().as_str()
            ),
        )),
        (Method::Sequential | Method::Auto, r) => Ok(r),
        (_, None) => Ok(None),
        (other, Some(_)) => Err(invalid(
            field,
            format!(
                "only SEQUENTIAL and AUTO test a target radius, not {}",
                other.label()
            ),
        )),
    }
}

fn bounded(field: Field, value: Option<u64>, default: u64, max: u64) -> Result<u64, RequestError> {
    match value.unwrap_or(default) {
        v if (1..=max).contains(&v) => Ok(v),
        v if max == u64::MAX => Err(invalid(
            field,
            format!("{v} is out of bounds: must be at least 1"),
        )),
        v => Err(invalid(
            field,
            format!("{v} is out of bounds: must be in 1..={max}"),
        )),
    }
}

fn alpha(value: Option<f64>, default: f64, min: f64) -> Result<f64, RequestError> {
    match value.unwrap_or(default) {
        a if a > 0.0 && a >= min && a < 1.0 => Ok(a),
        a if min > 0.0 => Err(invalid(
            Field::Alpha,
            format!("{a} is out of bounds: must be in [{min:e}, 1)"),
        )),
        a => Err(invalid(
            Field::Alpha,
            format!("{a} is out of bounds: must be in (0, 1)"),
        )),
    }
}
