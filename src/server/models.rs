//! The loaded models: bundle, device, defaults and bounds, and their workers.
use super::error::ServiceError;
use crate::batcher::{BatchingOptions, ModelWorkers, StartError};
use crate::config::{Config, ModelConfig};
use crate::engine::{AutoBand, Method};
use crate::metrics::Metrics;
use crate::model::{parse_device, Bundle, BundleError, ModelError};
use crate::smoothing::AdaptiveN0;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tch::Device;

/// Why the configured models could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("configuration key {key}: {source}")]
    Bundle { key: String, source: BundleError },
    #[error("configuration key {key}: {source}")]
    Device { key: String, source: ModelError },
    #[error("configuration key {key}: {message}")]
    Invalid { key: String, message: String },
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("models[{index}]: a second model named {name:?}; give one a `name`")]
    DuplicateName { index: usize, name: String },
    #[error("configuration key server.default_model: no model is named {0:?}")]
    UnknownDefault(String),
    #[error("cannot start the model loader thread: {0}")]
    Thread(std::io::Error),
    #[error("the model loader thread died without a result")]
    LoaderDied,
    #[error("loading was cancelled by a stop")]
    Cancelled,
}

pub use crate::methods::{Defaults, Limits};

/// A model as the server holds it: its bundle, the terms its requests are
/// built against, and its lanes.
pub struct LoadedModel {
    pub name: String,
    pub bundle: Bundle,
    pub device: Device,
    pub defaults: Defaults,
    pub limits: Limits,
    pub forward_batch: i64,
    /// Adaptive n0's stopping rule, for requests that ask for it.
    pub adaptive_n0: AdaptiveN0,
    pub auto_band: AutoBand,
    pub workers: ModelWorkers,
}

pub struct ModelRegistry {
    pub models: Vec<Arc<LoadedModel>>,
    pub default: usize,
}

impl ModelRegistry {
    /// The named model, or the default for an empty name.
    pub fn resolve(&self, name: &str) -> Result<&Arc<LoadedModel>, ServiceError> {
        if name.is_empty() {
            return self
                .models
                .get(self.default)
                .ok_or_else(|| ServiceError::Internal("no default model".into()));
        }
        self.models
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| ServiceError::UnknownModel(name.to_string()))
    }

    pub fn default_name(&self) -> &str {
        self.models
            .get(self.default)
            .map_or("", |m| m.name.as_str())
    }

    /// Loads every configured model, starts its workers and warms it up.
    /// Blocking: call from a thread of its own. `cancel` is checked between
    /// models; what was loaded by then is shut down again.
    pub fn load(
        config: &Config,
        metrics: Arc<Metrics>,
        cancel: &AtomicBool,
    ) -> Result<ModelRegistry, LoadError> {
        let mut models: Vec<Arc<LoadedModel>> = Vec::new();
        let give_up = |models: Vec<Arc<LoadedModel>>, e: LoadError| {
            ModelRegistry { models, default: 0 }.shutdown();
            Err(e)
        };
        for (i, mc) in config.models.iter().enumerate() {
            if cancel.load(Ordering::SeqCst) {
                return give_up(models, LoadError::Cancelled);
            }
            let model = match load_one(i, mc, config, metrics.clone()) {
                Ok(m) => m,
                Err(e) => return give_up(models, e),
            };
            if models.iter().any(|m| m.name == model.name) {
                let name = model.name.clone();
                model.workers.shutdown();
                return give_up(models, LoadError::DuplicateName { index: i, name });
            }
            tracing::info!(
                model = %model.name,
                device = ?model.device,
                surrogate = model.bundle.surrogate.is_some(),
                forward_batch = model.forward_batch,
                "model loaded and warmed up"
            );
            models.push(Arc::new(model));
        }
        let default = match &config.server.default_model {
            None => 0,
            Some(name) => match models.iter().position(|m| &m.name == name) {
                Some(i) => i,
                None => return give_up(models, LoadError::UnknownDefault(name.clone())),
            },
        };
        if cancel.load(Ordering::SeqCst) {
            return give_up(models, LoadError::Cancelled);
        }
        metrics.set_models_loaded(models.len());
        Ok(ModelRegistry { models, default })
    }

    /// Closes every model's queues and waits for their threads.
    pub fn shutdown(self) {
        for m in self.models {
            if let Ok(m) = Arc::try_unwrap(m) {
                m.workers.shutdown();
            }
        }
    }
}

fn load_one(
    i: usize,
    mc: &ModelConfig,
    config: &Config,
    metrics: Arc<Metrics>,
) -> Result<LoadedModel, LoadError> {
    let bundle = Bundle::load(&mc.bundle).map_err(|source| LoadError::Bundle {
        key: model_key(i, "bundle"),
        source,
    })?;
    let device = parse_device(&mc.device).map_err(|source| LoadError::Device {
        key: model_key(i, "device"),
        source,
    })?;
    let name = mc.name.clone().unwrap_or_else(|| bundle.name.clone());
    let n = default_n(i, mc, &bundle)?;
    let method = default_method(mc.method, &bundle, &name);
    check_calibrated_n(i, method, n, &bundle)?;
    let auto_band = AutoBand {
        low: mc.auto_band_low,
        high: mc.auto_band_high,
    };
    let forward_batch =
        crate::model::forward_batch_for(device, config.batching.forward_batch, bundle.input_shape);
    let opts = batching_options(config, forward_batch);
    let workers = ModelWorkers::start(&name, &bundle, device, &opts, metrics)?;
    Ok(LoadedModel {
        name,
        bundle,
        device,
        defaults: Defaults {
            method,
            n0: mc.n0,
            n,
            alpha: mc.alpha,
            adaptive_n0: mc.adaptive_n0,
        },
        limits: Limits {
            max_n0: mc.max_n0,
            max_n: mc.max_n,
            min_alpha: mc.min_alpha,
        },
        forward_batch,
        adaptive_n0: AdaptiveN0 {
            chunk: mc.adaptive_n0_chunk,
            alpha: mc.adaptive_n0_alpha,
        },
        auto_band,
        workers,
    })
}

/// The configuration key `k` of the `i`th model, as errors name it.
fn model_key(i: usize, k: &str) -> String {
    format!("models[{i}].{k}")
}

/// The default n: the configured one, else the surrogate's nominal n, else
/// 100,000; refused above `max_n`.
fn default_n(i: usize, mc: &ModelConfig, bundle: &Bundle) -> Result<u64, LoadError> {
    let nominal = bundle.surrogate.as_ref().map(|s| s.nominal_n);
    let n = mc.n.or(nominal).unwrap_or(100_000);
    if n > mc.max_n {
        return Err(LoadError::Invalid {
            key: model_key(i, "n"),
            message: format!("the default n {n} exceeds max_n {}", mc.max_n),
        });
    }
    Ok(n)
}

/// The configured default method, or (with a warning) the nearest one the
/// bundle supports when it lacks the calibration or surrogate it needs.
fn default_method(wanted: Method, bundle: &Bundle, name: &str) -> Method {
    let has_surrogate = bundle.surrogate.is_some();
    let calibrated = bundle
        .surrogate
        .as_ref()
        .is_some_and(|s| s.calibration.is_some());
    match wanted {
        Method::Calibrated | Method::Auto if !calibrated => {
            let instead = if has_surrogate {
                Method::Surrogate
            } else {
                Method::MonteCarlo
            };
            tracing::warn!(model = %name, wanted = wanted.as_str(), instead = instead.as_str(),
                "bundle has no calibration: changing the default method");
            instead
        }
        Method::Surrogate if !has_surrogate => {
            tracing::warn!(model = %name, "bundle has no surrogate: the default method is monte_carlo");
            Method::MonteCarlo
        }
        m => m,
    }
}

/// A calibrated default method needs the default n to be the calibrated n.
fn check_calibrated_n(i: usize, method: Method, n: u64, bundle: &Bundle) -> Result<(), LoadError> {
    if let (Method::Calibrated | Method::Auto, Some(cal)) = (
        method,
        bundle
            .surrogate
            .as_ref()
            .and_then(|s| s.calibration.as_ref()),
    ) {
        // Otherwise every request left to the defaults would be refused.
        if n != cal.n {
            return Err(LoadError::Invalid {
                key: model_key(i, "n"),
                message: format!(
                    "the default method {method} holds at the calibrated n = {}, not {n}",
                    cal.n
                ),
            });
        }
    }
    Ok(())
}

fn batching_options(config: &Config, forward_batch: i64) -> BatchingOptions {
    BatchingOptions {
        max_batch_requests: config.batching.max_batch_requests,
        max_queue_delay: Duration::from_millis(config.batching.max_queue_delay_ms),
        forward_batch,
        queue_capacity: config.limits.queue_capacity,
        mc_queue_capacity: config.limits.mc_queue_capacity,
        stage_queue_capacity: config.limits.stage_queue_capacity,
    }
}
