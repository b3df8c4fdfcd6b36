//! The service's errors, and the one place any error becomes a gRPC status.
use super::lifecycle::{NotAdmitted, Phase};
use crate::batcher::BatchError;
use crate::engine::EngineError;
use crate::methods::RequestError;
use crate::model::ModelError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A request field is missing, malformed or out of bounds; `field` is
    /// its name as the proto spells it.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// A valid request the model cannot serve (no surrogate, no calibration).
    #[error("model {model}: {message}")]
    FailedPrecondition { model: String, message: String },
    #[error("unknown model {0:?}; ListModels names the loaded ones")]
    UnknownModel(String),
    /// Message too large, a queue full, or the device short of memory: retry later.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("deadline exceeded after {0} ms; the work was dropped")]
    DeadlineExceeded(u128),
    /// Not serving now (loading, draining, stopped) or a failed batch that a
    /// retry may get past.
    #[error("{0}")]
    Unavailable(String),
    #[error("missing or wrong bearer token (metadata `authorization: Bearer <token>`)")]
    Unauthenticated,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ServiceError {
        ServiceError::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn precondition(model: &str, message: impl Into<String>) -> ServiceError {
        ServiceError::FailedPrecondition {
            model: model.to_string(),
            message: message.into(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            ServiceError::InvalidArgument { .. } => Code::InvalidArgument,
            ServiceError::FailedPrecondition { .. } => Code::FailedPrecondition,
            ServiceError::UnknownModel(_) => Code::NotFound,
            ServiceError::ResourceExhausted(_) => Code::ResourceExhausted,
            ServiceError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ServiceError::Unavailable(_) => Code::Unavailable,
            ServiceError::Unauthenticated => Code::Unauthenticated,
            ServiceError::Internal(_) => Code::Internal,
        }
    }
}

/// What a client that was not admitted is told, by phase.
pub fn not_serving(phase: Phase) -> ServiceError {
    ServiceError::Unavailable(match phase {
        Phase::Loading => "the server is still loading its models; retry shortly".into(),
        Phase::Serving => "the server is serving".into(),
        Phase::Draining | Phase::Stopped => {
            "the server is shutting down; retry on another replica".into()
        }
    })
}

impl From<NotAdmitted> for ServiceError {
    fn from(e: NotAdmitted) -> Self {
        not_serving(e.0)
    }
}

/// A request the constructor refused, for model `model`: a bad option names
/// its proto field; a method the bundle cannot serve names the model.
pub fn refused(model: &str, e: RequestError) -> ServiceError {
    match e {
        RequestError::Invalid { field, message } => ServiceError::invalid(field.proto(), message),
        RequestError::Unsupported { message, .. } => ServiceError::precondition(model, message),
    }
}

impl From<BatchError> for ServiceError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::QueueFull { .. } => ServiceError::ResourceExhausted(e.to_string()),
            BatchError::DeadlineExceeded { waited } => {
                ServiceError::DeadlineExceeded(waited.as_millis())
            }
            BatchError::ShuttingDown(_) => not_serving(Phase::Draining),
            BatchError::BatchPanicked { .. } => ServiceError::Unavailable(e.to_string()),
            BatchError::Engine(engine) => engine.into(),
        }
    }
}

impl From<EngineError> for ServiceError {
    fn from(e: EngineError) -> Self {
        match e {
            // Validation checks every field first; the engine's names are the
            // option names.
            EngineError::InvalidParam { field, message } => {
                ServiceError::invalid(format!("options.{field}"), message)
            }
            EngineError::Model(m) if m.is_transient() => {
                ServiceError::ResourceExhausted(format!("{m}; retry later, or with a smaller n"))
            }
            EngineError::Model(ModelError::BadOutput { .. }) | EngineError::Model(_) => {
                ServiceError::Internal(e.to_string())
            }
            EngineError::Smoothing(_) | EngineError::NoSurrogate | EngineError::Internal(_) => {
                ServiceError::Internal(e.to_string())
            }
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retryable_failures_are_retryable_codes() {
        let oom = BatchError::Engine(EngineError::Model(ModelError::OutOfMemory(
            "CUDA out of memory".into(),
        )));
        assert_eq!(ServiceError::from(oom).code(), Code::ResourceExhausted);
        let panicked = BatchError::BatchPanicked {
            model: "m".into(),
            lane: "surrogate",
            reason: "boom".into(),
        };
        assert_eq!(ServiceError::from(panicked).code(), Code::Unavailable);
        let gone = BatchError::ShuttingDown("m".into());
        assert_eq!(ServiceError::from(gone).code(), Code::Unavailable);
        let late = BatchError::DeadlineExceeded {
            waited: Duration::from_millis(7),
        };
        let late = ServiceError::from(late);
        assert_eq!(late.code(), Code::DeadlineExceeded);
        assert!(late.to_string().contains("7 ms"), "{late}");
    }

    #[test]
    fn a_method_the_model_lacks_is_a_precondition_naming_the_model() {
        let e = refused(
            "plain",
            RequestError::Unsupported {
                method: crate::engine::Method::Surrogate,
                message: "cannot serve SURROGATE".into(),
            },
        );
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.to_string().starts_with("model plain:"), "{e}");
        let internal = ServiceError::from(EngineError::Model(ModelError::Torch("bad".into())));
        assert_eq!(internal.code(), Code::Internal);
    }
}
