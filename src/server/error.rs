//! The service's errors, mapped to gRPC status codes in one place.
use crate::batcher::BatchError;
use crate::engine::EngineError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A request field is missing, malformed or out of bounds.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("unknown model {0:?}; ListModels names the loaded ones")]
    UnknownModel(String),
    /// Message too large, or a queue full.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("deadline exceeded after {0} ms; the work was dropped")]
    DeadlineExceeded(u128),
    #[error("the server is {0}; retry on another replica")]
    Unavailable(&'static str),
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

    pub fn code(&self) -> Code {
        match self {
            ServiceError::InvalidArgument { .. } => Code::InvalidArgument,
            ServiceError::UnknownModel(_) => Code::NotFound,
            ServiceError::ResourceExhausted(_) => Code::ResourceExhausted,
            ServiceError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ServiceError::Unavailable(_) => Code::Unavailable,
            ServiceError::Unauthenticated => Code::Unauthenticated,
            ServiceError::Internal(_) => Code::Internal,
        }
    }
}

impl From<BatchError> for ServiceError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::QueueFull { .. } => ServiceError::ResourceExhausted(e.to_string()),
            BatchError::DeadlineExceeded => ServiceError::DeadlineExceeded(0),
            BatchError::Unavailable(_) => ServiceError::Unavailable("shutting down"),
            BatchError::Engine(EngineError::InvalidParam { field, message }) => {
                ServiceError::invalid(field, message)
            }
            BatchError::Engine(other) => ServiceError::Internal(other.to_string()),
            BatchError::Load { .. } => ServiceError::Internal(e.to_string()),
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}
