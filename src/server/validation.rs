//! Request validation: every field checked against the model before any work
//! is queued, each failure naming its field.
use super::error::ServiceError;
use super::models::LoadedModel;
use super::pb;
use crate::batcher::Target;
use crate::engine::requests::RequestParams;
use crate::engine::Method;
use std::sync::atomic::{AtomicU64, Ordering};

/// A request's input, whichever message carried it.
pub enum Input<'a> {
    Image(&'a [u8]),
    Tensor(&'a pb::Tensor),
    Missing,
}

impl<'a> From<&'a Option<pb::certify_request::Input>> for Input<'a> {
    fn from(i: &'a Option<pb::certify_request::Input>) -> Self {
        match i {
            Some(pb::certify_request::Input::Image(b)) => Input::Image(b),
            Some(pb::certify_request::Input::Tensor(t)) => Input::Tensor(t),
            None => Input::Missing,
        }
    }
}

impl<'a> From<&'a Option<pb::predict_request::Input>> for Input<'a> {
    fn from(i: &'a Option<pb::predict_request::Input>) -> Self {
        match i {
            Some(pb::predict_request::Input::Image(b)) => Input::Image(b),
            Some(pb::predict_request::Input::Tensor(t)) => Input::Tensor(t),
            None => Input::Missing,
        }
    }
}

/// The input's pixels, [C, H, W] flattened, finite and in [0, 1].
pub fn pixels(model: &LoadedModel, input: Input<'_>) -> Result<Vec<f32>, ServiceError> {
    let shape = model.bundle.input_shape;
    match input {
        Input::Missing => Err(ServiceError::invalid(
            "input",
            "set either `image` (PNG/JPEG bytes) or `tensor`",
        )),
        Input::Image(bytes) => crate::data::decode_image(bytes, shape)
            .map_err(|e| ServiceError::invalid("image", e.without_subject())),
        Input::Tensor(t) => tensor_pixels(t, shape),
    }
}

fn tensor_pixels(t: &pb::Tensor, [c, h, w]: [usize; 3]) -> Result<Vec<f32>, ServiceError> {
    let got: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    let fits = got == [c, h, w] || got == [1, c, h, w] || (c == 1 && got == [h, w]);
    if !fits {
        return Err(ServiceError::invalid(
            "tensor.shape",
            format!("{got:?} does not match the model's input [{c}, {h}, {w}] (also accepted: [1, {c}, {h}, {w}]{})",
                if c == 1 { format!(", [{h}, {w}]") } else { String::new() }),
        ));
    }
    let numel = c * h * w;
    if t.data.len() != numel * 4 {
        return Err(ServiceError::invalid(
            "tensor.data",
            format!(
                "{} bytes, but shape {got:?} needs {} ({numel} little-endian f32 values)",
                t.data.len(),
                numel * 4
            ),
        ));
    }
    let pixels: Vec<f32> = t
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some((i, v)) = pixels.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(ServiceError::invalid(
            "tensor.data",
            format!("element {i} is {v}; pixels must be finite"),
        ));
    }
    if let Some((i, v)) = pixels
        .iter()
        .enumerate()
        .find(|(_, v)| !(0.0..=1.0).contains(*v))
    {
        return Err(ServiceError::invalid(
            "tensor.data",
            format!("element {i} is {v}; pixels must be in [0, 1]"),
        ));
    }
    Ok(pixels)
}

/// The proto's names for the engine's methods.
impl From<Method> for pb::Method {
    fn from(m: Method) -> pb::Method {
        match m {
            Method::Surrogate => pb::Method::Surrogate,
            Method::Calibrated => pb::Method::Calibrated,
            Method::Auto => pb::Method::Auto,
            Method::MonteCarlo => pb::Method::MonteCarlo,
            Method::Sequential => pb::Method::Sequential,
        }
    }
}

/// A request's resolved options: the model's defaults where unset, bounds checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolved {
    pub method: Method,
    pub n0: u64,
    pub n: u64,
    pub alpha: f64,
    pub seed: u64,
    /// CALIBRATED and AUTO: the bundle's calibration (score and q) and delta.
    pub shift: Option<crate::smoothing::CalibrationShift>,
    pub delta: f64,
    pub adaptive: Option<crate::smoothing::SequentialSelection>,
    /// SEQUENTIAL, and AUTO's Monte Carlo step: the radius to certify.
    pub target_radius: Option<f64>,
}

impl Resolved {
    /// The exact test's target, when the request has one.
    pub fn target(&self) -> Option<Target> {
        self.target_radius.map(|radius| Target {
            radius,
            guided: true,
        })
    }

    /// The engine's parameters for this request (its row is set by the batch).
    pub fn params(&self) -> RequestParams {
        RequestParams {
            shift: self.shift,
            adaptive: self.adaptive,
            ..RequestParams::new(0, self.n0, self.n, self.alpha, self.seed)
        }
    }
}

pub fn certify_options(
    model: &LoadedModel,
    opts: Option<&pb::CertifyOptions>,
) -> Result<Resolved, ServiceError> {
    let default = pb::CertifyOptions::default();
    let o = opts.unwrap_or(&default);
    let method = pb::Method::try_from(o.method).map_err(|_| {
        ServiceError::invalid("options.method", format!("unknown value {}", o.method))
    })?;
    let method = match method {
        pb::Method::Unspecified => model.defaults.method,
        pb::Method::Surrogate => Method::Surrogate,
        pb::Method::MonteCarlo => Method::MonteCarlo,
        pb::Method::Calibrated => Method::Calibrated,
        pb::Method::Auto => Method::Auto,
        pb::Method::Sequential => Method::Sequential,
    };
    let surrogate = model.bundle.surrogate.as_ref();
    let name = pb::Method::from(method).as_str_name();
    if method.needs_surrogate() && surrogate.is_none() {
        return Err(ServiceError::precondition(
            &model.name,
            format!("cannot serve {name}: its bundle has no surrogate; ask for MONTE_CARLO"),
        ));
    }
    let target_radius = target_radius(method, o.target_radius, model)?;
    let n = bounded("options.n", o.n, model.defaults.n, model.limits.max_n)?;
    let mut n0 = bounded("options.n0", o.n0, model.defaults.n0, model.limits.max_n0)?;
    let mut adaptive = o
        .adaptive_n0
        .unwrap_or(model.defaults.adaptive_n0)
        .then_some(model.selection_rule);
    let (shift, delta) = match method {
        Method::Calibrated | Method::Auto => {
            let cal = surrogate.and_then(|s| s.calibration.as_ref()).ok_or_else(|| {
                ServiceError::precondition(
                    &model.name,
                    format!(
                        "cannot serve {name}: its bundle has no calibration (smoothcert calibrate); ask for SURROGATE or MONTE_CARLO"
                    ),
                )
            })?;
            // The coverage statement holds for scores made the way the
            // calibration made them: at its N, with cA from n0 fixed samples.
            if n != cal.n {
                return Err(ServiceError::invalid(
                    "options.n",
                    format!(
                        "{name} is calibrated at n = {}; {n} would void its delta = {}",
                        cal.n, cal.delta
                    ),
                ));
            }
            match o.n0 {
                Some(asked) if asked != cal.n0 => {
                    return Err(ServiceError::invalid(
                        "options.n0",
                        format!(
                            "{name} is calibrated with cA from n0 = {} samples; {asked} would void its delta",
                            cal.n0
                        ),
                    ))
                }
                _ => n0 = cal.n0,
            }
            if o.adaptive_n0 == Some(true) {
                return Err(ServiceError::invalid(
                    "options.adaptive_n0",
                    format!("{name} is calibrated with fixed n0; adaptive selection would void its delta"),
                ));
            }
            adaptive = None;
            (Some(cal.shift()), cal.delta)
        }
        _ => (None, 0.0),
    };
    Ok(Resolved {
        method,
        n0,
        n,
        alpha: alpha(o.alpha, model)?,
        seed: o.seed.unwrap_or_else(fresh_seed),
        shift,
        delta,
        adaptive,
        target_radius,
    })
}

pub fn predict_options(
    model: &LoadedModel,
    opts: Option<&pb::PredictOptions>,
) -> Result<Resolved, ServiceError> {
    let default = pb::PredictOptions::default();
    let o = opts.unwrap_or(&default);
    Ok(Resolved {
        method: Method::MonteCarlo,
        n0: 0,
        n: bounded("options.n", o.n, model.defaults.n, model.limits.max_n)?,
        alpha: alpha(o.alpha, model)?,
        seed: o.seed.unwrap_or_else(fresh_seed),
        shift: None,
        delta: 0.0,
        adaptive: None,
        target_radius: None,
    })
}

/// `options.target_radius`: required by SEQUENTIAL, optional for AUTO (its
/// Monte Carlo step then tests it), meaningless for the rest.
fn target_radius(
    method: Method,
    value: Option<f64>,
    model: &LoadedModel,
) -> Result<Option<f64>, ServiceError> {
    let field = "options.target_radius";
    match (method, value) {
        (Method::Sequential, None) => Err(ServiceError::invalid(
            field,
            "SEQUENTIAL certifies a required radius: set target_radius (e.g. 0.5)",
        )),
        (Method::Sequential | Method::Auto, Some(r)) if !(r.is_finite() && r >= 0.0) => {
            Err(ServiceError::invalid(
                field,
                format!("{r} is not a radius: must be finite and >= 0"),
            ))
        }
        // Beyond sigma * Phi^-1(1 - 1e-16) nothing can certify it.
        (Method::Sequential | Method::Auto, Some(r)) if r > 8.2 * model.bundle.sigma() => {
            Err(ServiceError::invalid(
                field,
                format!(
                    "{r} cannot be certified at sigma = {} (at most about {:.3})",
                    model.bundle.sigma(),
                    8.2 * model.bundle.sigma()
                ),
            ))
        }
        (Method::Sequential | Method::Auto, r) => Ok(r),
        (_, None) => Ok(None),
        (other, Some(_)) => Err(ServiceError::invalid(
            field,
            format!(
                "only SEQUENTIAL and AUTO test a target radius, not {}",
                pb::Method::from(other).as_str_name()
            ),
        )),
    }
}

fn bounded(field: &str, value: Option<u64>, default: u64, max: u64) -> Result<u64, ServiceError> {
    match value {
        None => Ok(default),
        Some(v) if (1..=max).contains(&v) => Ok(v),
        Some(v) => Err(ServiceError::invalid(
            field,
            format!("{v} is out of bounds: must be in 1..={max}"),
        )),
    }
}

fn alpha(value: Option<f64>, model: &LoadedModel) -> Result<f64, ServiceError> {
    match value {
        None => Ok(model.defaults.alpha),
        Some(a) if a >= model.limits.min_alpha && a < 1.0 => Ok(a),
        Some(a) => Err(ServiceError::invalid(
            "options.alpha",
            format!(
                "{a} is out of bounds: must be in [{:e}, 1)",
                model.limits.min_alpha
            ),
        )),
    }
}

/// A seed for a request that set none: distinct per request and per process
/// start; reported in the response so the answer can be reproduced.
pub fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32)
    });
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    crate::model::splitmix64_mix(start.wrapping_add(count.wrapping_mul(crate::model::GOLDEN_GAMMA)))
}
