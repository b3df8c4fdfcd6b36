//! Request validation: every field checked against the model before any work
//! is queued, each failure naming its field.
use super::error::ServiceError;
use super::models::LoadedModel;
use super::pb;
use crate::engine::Method;
use crate::methods::{CertifyRequest, ModelTerms, PredictRequest, RequestOptions};
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

/// The model's terms for the request constructor: bundle, defaults, bounds.
pub fn terms(model: &LoadedModel) -> ModelTerms<'_> {
    ModelTerms {
        bundle: &model.bundle,
        defaults: model.defaults,
        limits: model.limits,
        adaptive_n0: Some(model.adaptive_n0),
        auto_band: model.auto_band,
    }
}

/// A CertifyRequest's options, typed and checked against the model.
pub fn certify_request(
    model: &LoadedModel,
    opts: Option<&pb::CertifyOptions>,
) -> Result<CertifyRequest, ServiceError> {
    let default = pb::CertifyOptions::default();
    let o = opts.unwrap_or(&default);
    let method = pb::Method::try_from(o.method).map_err(|_| {
        ServiceError::invalid("options.method", format!("unknown value {}", o.method))
    })?;
    let method = match method {
        pb::Method::Unspecified => None,
        pb::Method::Surrogate => Some(Method::Surrogate),
        pb::Method::MonteCarlo => Some(Method::MonteCarlo),
        pb::Method::Calibrated => Some(Method::Calibrated),
        pb::Method::Auto => Some(Method::Auto),
        pb::Method::Sequential => Some(Method::Sequential),
    };
    let options = RequestOptions {
        method,
        n0: o.n0,
        n: o.n,
        alpha: o.alpha,
        seed: o.seed.unwrap_or_else(fresh_seed),
        adaptive_n0: o.adaptive_n0,
        target_radius: o.target_radius,
        unguided: false,
    };
    CertifyRequest::build(&options, &terms(model))
        .map_err(|e| super::error::refused(&model.name, e))
}

/// A PredictRequest's options, checked against the model.
pub fn predict_request(
    model: &LoadedModel,
    opts: Option<&pb::PredictOptions>,
) -> Result<PredictRequest, ServiceError> {
    let default = pb::PredictOptions::default();
    let o = opts.unwrap_or(&default);
    let options = RequestOptions {
        n: o.n,
        alpha: o.alpha,
        seed: o.seed.unwrap_or_else(fresh_seed),
        ..RequestOptions::default()
    };
    PredictRequest::build(&options, &terms(model))
        .map_err(|e| super::error::refused(&model.name, e))
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
