//! `grpc.health.v1.Health`, answered from the server's lifecycle: SERVING
//! exactly while the phase is Serving, for the whole server (`""`), for
//! `smoothcert.v1.Certifier` and for each loaded model
//! (`smoothcert.v1.Certifier/<model>`); NOT_FOUND for any other name.
use super::lifecycle::Phase;
use super::service::Shared;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The Certifier service's health name.
pub const CERTIFIER: &str = "smoothcert.v1.Certifier";

/// The health-check name of one model.
pub fn model_health_name(model: &str) -> String {
    format!("{CERTIFIER}/{model}")
}

pub struct HealthService {
    shared: Arc<Shared>,
}

pub fn server(shared: Arc<Shared>) -> HealthServer<HealthService> {
    HealthServer::new(HealthService { shared })
}

impl HealthService {
    /// The status of `service` in `phase`; None for a name nobody serves.
    fn status(shared: &Shared, service: &str, phase: Phase) -> Option<ServingStatus> {
        let known = service.is_empty()
            || service == CERTIFIER
            || shared.registry().is_some_and(|r| {
                r.models
                    .iter()
                    .any(|m| model_health_name(&m.name) == service)
            });
        known.then_some(if phase == Phase::Serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        })
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = &request.get_ref().service;
        let phase = self.shared.lifecycle.phase();
        match Self::status(&self.shared, service, phase) {
            Some(status) => Ok(Response::new(HealthCheckResponse {
                status: status as i32,
            })),
            None => Err(Status::not_found(format!(
                "unknown service {service:?}; known: \"\", {CERTIFIER} and {CERTIFIER}/<model>"
            ))),
        }
    }

    type WatchStream = WatchStream;

    /// The current status at once, then one message per change; an unknown
    /// name is SERVICE_UNKNOWN until it becomes known (a model loading).
    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let shared = self.shared.clone();
        // The stream ends once the server has stopped, so that a watching
        // load balancer does not hold its connection open past shutdown.
        let phases = tokio_stream::wrappers::WatchStream::new(shared.lifecycle.subscribe())
            .take_while(|phase| *phase != Phase::Stopped);
        let mut last = None;
        let stream = phases.filter_map(move |phase| {
            let status =
                Self::status(&shared, &service, phase).unwrap_or(ServingStatus::ServiceUnknown);
            if last == Some(status) {
                return None;
            }
            last = Some(status);
            Some(Ok(HealthCheckResponse {
                status: status as i32,
            }))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
