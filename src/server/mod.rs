//! The gRPC service: tonic server with the Certifier, health (overall and per
//! model) and reflection (v1 and v1alpha), the metrics endpoint on its own
//! port, optional TLS and bearer-token check, and graceful shutdown.
//!
//! Start-up: both ports are bound at once and health says NOT_SERVING while
//! the models load and warm up; then SERVING. Shutdown: health NOT_SERVING,
//! new requests UNAVAILABLE, in-flight requests get the grace period to
//! finish, then the listeners close.
pub mod error;
mod models;
mod service;
pub mod validation;

pub use models::{LoadedModel, ModelRegistry};
pub use service::{CertifierService, Shared};

use crate::config::Config;
use crate::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The generated API (`proto/smoothcert/v1/certifier.proto`).
pub mod pb {
    tonic::include_proto!("smoothcert.v1");
    /// For reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("smoothcert_descriptor");
}

/// The health-check name of one model.
pub fn model_health_name(model: &str) -> String {
    format!("smoothcert.v1.Certifier/{model}")
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("loading models: {0}")]
    Load(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A started server: its bound addresses, a way to stop it, and its task.
pub struct RunningServer {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl RunningServer {
    /// Begins graceful shutdown (idempotent).
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// A handle that can begin shutdown from elsewhere (a signal handler).
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }

    /// Waits until the server has stopped: after shutdown, or a failed model load.
    pub async fn wait(self) -> Result<(), ServeError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ServeError::Load(format!("server task failed: {e}"))),
        }
    }

    /// Waits until every model is loaded and health says SERVING, or the
    /// server stopped (then its error).
    pub async fn ready(&self) -> Result<(), ServeError> {
        loop {
            if self.shared.serving.load(Ordering::SeqCst) {
                return Ok(());
            }
            if self.task.is_finished() {
                return Err(ServeError::Load("the server stopped while loading".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Binds both ports and starts serving; models load in the background.
pub async fn start(config: Config) -> Result<RunningServer, ServeError> {
    let metrics = Arc::new(Metrics::new());
    let shared = Arc::new(Shared::new(config.clone(), metrics.clone()));
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_not_serving::<pb::certifier_server::CertifierServer<CertifierService>>()
        .await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // The listener and the address it got (port 0 picks one).
    let bind = |what: &'static str, addr: SocketAddr| async move {
        let err = |source| ServeError::Bind { what, addr, source };
        let listener = TcpListener::bind(addr).await.map_err(err)?;
        let bound = listener.local_addr().map_err(err)?;
        Ok::<_, ServeError>((listener, bound))
    };
    let (grpc_listener, grpc_addr) =
        bind("gRPC (server.grpc_addr)", config.server.grpc_addr).await?;
    let (metrics_listener, metrics_addr) =
        bind("metrics (server.metrics_addr)", config.server.metrics_addr).await?;

    let limit = config.limits.max_message_bytes;
    let certifier =
        pb::certifier_server::CertifierServer::new(CertifierService::new(shared.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
    let auth = BearerAuth {
        token: config.server.auth_token.clone().map(Arc::from),
    };
    let mut builder = Server::builder();
    if let (Some(cert), Some(key)) = (&config.server.tls_cert, &config.server.tls_key) {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| ServeError::Tls(format!("{}: {e}", p.display())))
        };
        let identity = Identity::from_pem(read(cert)?, read(key)?);
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(identity))
            .map_err(|e| ServeError::Tls(e.to_string()))?;
    }
    let router = builder
        .layer(tower::util::MapResponseLayer::new(
            oversize_response_as_resource_exhausted as fn(_) -> _,
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            certifier, auth,
        ));

    let (stop, mut stop_rx) = watch::channel(false);
    let grace = Duration::from_millis(config.server.grace_period_ms);

    // Drain: on the stop signal, refuse new work, wait for in-flight work
    // (at most the grace period), then let the listeners close.
    let (closed_tx, closed_rx) = watch::channel(false);
    let drain = {
        let shared = shared.clone();
        let health = health.clone();
        async move {
            while !*stop_rx.borrow_and_update() {
                if stop_rx.changed().await.is_err() {
                    break;
                }
            }
            tracing::info!("shutting down: health NOT_SERVING, draining in-flight requests");
            shared.begin_draining();
            set_all(&health, &shared, ServingStatus::NotServing).await;
            if tokio::time::timeout(grace, shared.idle()).await.is_err() {
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "grace period over with requests in flight"
                );
            }
            let _ = closed_tx.send(true);
        }
    };
    let closed = |mut rx: watch::Receiver<bool>| async move {
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                break;
            }
        }
    };
    let metrics_task = tokio::spawn(serve_metrics(
        metrics_listener,
        shared.clone(),
        closed(closed_rx.clone()),
    ));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
    let grpc_task =
        tokio::spawn(router.serve_with_incoming_shutdown(incoming, closed(closed_rx.clone())));
    let drain_task = tokio::spawn(drain);

    let task = {
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let loading = {
                let (config, metrics) = (config.clone(), metrics.clone());
                tokio::task::spawn_blocking(move || ModelRegistry::load(&config, metrics))
            };
            let mut load_error = None;
            tokio::select! {
                loaded = loading => match loaded {
                    Ok(Ok(registry)) => {
                        if let Ok(mut slot) = shared.models.write() {
                            *slot = Some(Arc::new(registry));
                        }
                        if !shared.draining.load(Ordering::SeqCst) {
                            set_all(&health, &shared, ServingStatus::Serving).await;
                            // Draining may have begun while SERVING was being
                            // written: NOT_SERVING must be what stays.
                            if shared.draining.load(Ordering::SeqCst) {
                                set_all(&health, &shared, ServingStatus::NotServing).await;
                            } else {
                                shared.serving.store(true, Ordering::SeqCst);
                                tracing::info!("serving");
                            }
                        }
                    }
                    Ok(Err(e)) => load_error = Some(e),
                    Err(e) => load_error = Some(format!("model loading panicked: {e}")),
                },
                // Stopped while loading: the loader thread finishes on its own.
                _ = closed(closed_rx.clone()) => {}
            }
            if load_error.is_some() {
                let _ = stop.send(true);
            }
            let _ = drain_task.await;
            // The listeners close once drained (streams stop reading when
            // draining begins); a connection still busy 2 s later is cut.
            let served = tokio::time::timeout(Duration::from_secs(2), grpc_task).await;
            let _ = metrics_task.await;
            let registry = shared.models.write().ok().and_then(|mut m| m.take());
            if let Some(registry) = registry.and_then(|r| Arc::try_unwrap(r).ok()) {
                tokio::task::spawn_blocking(move || registry.shutdown())
                    .await
                    .ok();
            }
            if let Some(e) = load_error {
                return Err(ServeError::Load(e));
            }
            match served {
                Ok(Ok(Ok(()))) | Err(_) => Ok(()),
                Ok(Ok(Err(e))) => Err(e.into()),
                Ok(Err(e)) => Err(ServeError::Load(format!("gRPC task failed: {e}"))),
            }
        })
    };
    Ok(RunningServer {
        grpc_addr,
        metrics_addr,
        shared,
        stop,
        task,
    })
}

async fn set_all(health: &HealthReporter, shared: &Shared, status: ServingStatus) {
    health.set_service_status("", status).await;
    health
        .set_service_status(
            <pb::certifier_server::CertifierServer<CertifierService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    if let Some(registry) = shared.registry() {
        for m in &registry.models {
            health
                .set_service_status(model_health_name(&m.name), status)
                .await;
        }
    }
}

/// `/metrics` (Prometheus text), `/healthz` (alive) and `/readyz` (200 once
/// the models serve, 503 while loading or draining), for probes that speak HTTP.
async fn serve_metrics(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let metrics = {
        let shared = shared.clone();
        move || {
            let shared = shared.clone();
            async move {
                if let Some(registry) = shared.registry() {
                    for m in &registry.models {
                        let (fast, slow) = m.workers.queue_depths();
                        shared.metrics.set_queue_depth(&m.name, "surrogate", fast);
                        shared.metrics.set_queue_depth(&m.name, "monte_carlo", slow);
                    }
                }
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    shared.metrics.encode(),
                )
            }
        }
    };
    let ready = move || {
        let shared = shared.clone();
        async move {
            if shared.serving.load(Ordering::SeqCst) {
                (StatusCode::OK, "ready\n")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready));
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "metrics endpoint failed");
    }
}

/// When `server.auth_token` is set, Certifier calls need `authorization: Bearer <token>`.
#[derive(Clone)]
struct BearerAuth {
    token: Option<Arc<str>>,
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(token) = &self.token else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), token.as_bytes()) {
            Ok(req)
        } else {
            Err(error::ServiceError::Unauthenticated.into())
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const OVERSIZE: &str = "Error, decoded message length too large";

/// tonic refuses a request message over the size limit with OUT_OF_RANGE;
/// gRPC's convention (and our API) is RESOURCE_EXHAUSTED.
pub fn resource_exhausted_if_oversize(status: tonic::Status) -> tonic::Status {
    if status.code() == tonic::Code::OutOfRange && status.message().starts_with(OVERSIZE) {
        tonic::Status::resource_exhausted(status.message().to_string())
    } else {
        status
    }
}

/// The same for unary calls, whose decode error tonic answers before our
/// handler runs: rewrite the status in the response headers.
fn oversize_response_as_resource_exhausted<B>(mut res: http::Response<B>) -> http::Response<B> {
    let headers = res.headers();
    let is_oversize = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| m.replace("%20", " ").starts_with(OVERSIZE));
    if is_oversize {
        res.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    res
}
