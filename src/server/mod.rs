//! The gRPC service: tonic server with the Certifier, health (overall and per
//! model) and reflection (v1 and v1alpha), the metrics endpoint on its own
//! port, optional TLS and bearer-token check, and graceful shutdown.
//!
//! One lifecycle ([`lifecycle::Phase`]) drives everything:
//! - **Loading**: both ports are bound at once; health says NOT_SERVING,
//!   `/readyz` 503, requests UNAVAILABLE, while the models load and warm up
//!   on a thread of their own.
//! - **Serving**: every model is loaded; health SERVING, `/readyz` 200.
//! - **Draining** (on a stop, even during loading): health NOT_SERVING,
//!   `/readyz` 503, new requests UNAVAILABLE, open CertifyStreams stop
//!   reading; requests in flight get `server.grace_period_ms` to finish.
//!   A stop during loading does not wait for the loader.
//! - **Stopped** (all finished, or the grace period is over): requests still
//!   in flight are answered UNAVAILABLE and their work is dropped; every
//!   CertifyStream cut short ends with UNAVAILABLE; every connection gets an
//!   HTTP/2 GOAWAY and is closed once its answers are written, at most
//!   [`CLOSE_TIMEOUT`] later; then `wait` returns (the process exits).
pub mod connections;
pub mod error;
pub mod health;
pub mod lifecycle;
mod models;
mod service;
pub mod telemetry;
pub mod validation;

pub use health::model_health_name;
pub use lifecycle::Phase;
pub use models::{LoadError, LoadedModel, ModelRegistry};
pub use service::{CertifierService, Shared};

use crate::config::Config;
use crate::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The generated API (`proto/smoothcert/v1/certifier.proto`).
pub mod pb {
    tonic::include_proto!("smoothcert.v1");
    /// For reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("smoothcert_descriptor");
}

/// How long connections may take to close after the GOAWAY that follows
/// the grace period; whatever is still open then is closed with the process.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

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
    Load(#[from] LoadError),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("a server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the server stopped before it was ready")]
    StoppedBeforeReady,
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

    pub fn phase(&self) -> Phase {
        self.shared.lifecycle.phase()
    }

    /// Waits until the server has stopped: after shutdown, or a failed model load.
    pub async fn wait(self) -> Result<(), ServeError> {
        self.task.await?
    }

    /// Waits until every model is loaded and the server serves; an error
    /// when it stopped (or began stopping) first.
    pub async fn ready(&self) -> Result<(), ServeError> {
        let mut phases = self.shared.lifecycle.subscribe();
        let phase = phases.wait_for(|p| *p != Phase::Loading).await.map(|p| *p);
        match phase {
            Ok(Phase::Serving) => Ok(()),
            _ => Err(ServeError::StoppedBeforeReady),
        }
    }
}

/// Resolves once `rx` holds true (or its sender is gone).
async fn until_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Loads the models on a thread of its own, so that a stop need not wait
/// for it; the thread gives up between models once `cancel` is set.
fn spawn_loader(
    config: Config,
    metrics: Arc<Metrics>,
    cancel: Arc<AtomicBool>,
) -> oneshot::Receiver<Result<ModelRegistry, LoadError>> {
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("model-loader".into())
        .spawn(move || {
            let loaded = ModelRegistry::load(&config, metrics, &cancel);
            if let Err(Ok(registry)) = tx.send(loaded) {
                // Nobody waits any more (stopped while loading).
                registry.shutdown();
            }
        });
    if let Err(e) = spawned {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Err(LoadError::Thread(e)));
        return rx;
    }
    rx
}

/// Binds both ports and starts serving; models load in the background.
pub async fn start(config: Config) -> Result<RunningServer, ServeError> {
    let metrics = Arc::new(Metrics::new());
    metrics.set_models_configured(config.models.len());
    let shared = Arc::new(Shared::new(config.clone(), metrics.clone()));
    let lifecycle = shared.lifecycle.clone();
    if let Some(open_files) = connections::raise_open_files_limit() {
        tracing::debug!(open_files, "open-files limit");
    }

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

    let (stop, stop_rx) = watch::channel(false);
    let grace = Duration::from_millis(config.server.grace_period_ms);
    // Listeners close once the lifecycle reaches Stopped.
    let closed = {
        let lifecycle = lifecycle.clone();
        move || {
            let lifecycle = lifecycle.clone();
            async move { lifecycle.reached(Phase::Stopped).await }
        }
    };
    let metrics_task = tokio::spawn(serve_metrics(metrics_listener, shared.clone(), closed()));
    let grpc_task = spawn_grpc(&config, &shared, grpc_listener, closed())?;

    let task = {
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(run_lifecycle(Lifetime {
            config,
            metrics,
            shared,
            stop,
            stop_rx,
            grace,
            grpc_task,
            metrics_task,
        }))
    };
    Ok(RunningServer {
        grpc_addr,
        metrics_addr,
        shared,
        stop,
        task,
    })
}

/// Serves the gRPC services (health, both reflection versions, the
/// certifier behind its bearer-token check), over TLS when configured, on
/// the accept loop of [`connections`], until `shutdown`.
fn spawn_grpc(
    config: &Config,
    shared: &Arc<Shared>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<JoinHandle<()>, ServeError> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let limit = config.limits.max_message_bytes;
    let certifier =
        pb::certifier_server::CertifierServer::new(CertifierService::new(shared.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
    let auth = BearerAuth {
        token: config.server.auth_token.clone().map(Arc::from),
    };
    let routes = tonic::service::Routes::new(health::server(shared.clone()))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            certifier, auth,
        ))
        .prepare();
    let service = tower::ServiceBuilder::new()
        .layer(tower::util::MapResponseLayer::new(
            oversize_response_as_resource_exhausted as fn(_) -> _,
        ))
        .service(routes);
    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| ServeError::Tls(format!("{}: {e}", p.display())))
            };
            Some(connections::tls_acceptor(&read(cert)?, &read(key)?).map_err(ServeError::Tls)?)
        }
        _ => None,
    };
    let policy = connections::ConnectionPolicy::new(&config.connections, tls);
    Ok(tokio::spawn(connections::serve(
        listener,
        service,
        policy,
        shared.metrics.clone(),
        shutdown,
    )))
}

/// What the server's lifetime task owns.
struct Lifetime {
    config: Config,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    grace: Duration,
    grpc_task: JoinHandle<()>,
    metrics_task: JoinHandle<()>,
}

/// Loads the models (or stops while loading), serves until told to stop,
/// drains for the grace period, then closes the listeners and the lanes.
async fn run_lifecycle(l: Lifetime) -> Result<(), ServeError> {
    let Lifetime {
        config,
        metrics,
        shared,
        stop,
        stop_rx,
        grace,
        grpc_task,
        metrics_task,
    } = l;
    let lifecycle = shared.lifecycle.clone();
    let cancel = Arc::new(AtomicBool::new(false));
    let loading = spawn_loader(config.clone(), metrics.clone(), cancel.clone());
    let mut load_error = None;
    tokio::select! {
        loaded = loading => match loaded {
            Ok(Ok(registry)) => {
                if let Ok(mut slot) = shared.models.write() {
                    *slot = Some(Arc::new(registry));
                }
                if lifecycle.serve() {
                    tracing::info!("serving");
                }
            }
            Ok(Err(e)) => load_error = Some(e),
            Err(_) => load_error = Some(LoadError::LoaderDied),
        },
        // Stopped while loading: the loader gives up on its own.
        _ = until_true(stop_rx.clone()) => {
            cancel.store(true, Ordering::SeqCst);
            tracing::info!("stopped while loading models");
        }
    }
    if let Some(e) = &load_error {
        tracing::error!(error = %e, "model loading failed");
        let _ = stop.send(true);
    }
    until_true(stop_rx).await;
    if lifecycle.drain() {
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            in_flight = lifecycle.in_flight(),
            "shutting down: health NOT_SERVING, draining in-flight requests"
        );
    }
    if tokio::time::timeout(grace, lifecycle.idle()).await.is_err() {
        tracing::warn!(
            in_flight = lifecycle.in_flight(),
            "grace period over: answering the requests still in flight UNAVAILABLE"
        );
    }
    lifecycle.stop();
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, lifecycle.idle()).await;
    let served = tokio::time::timeout(CLOSE_TIMEOUT, grpc_task).await;
    if served.is_err() {
        tracing::warn!(
            "connections still open {} ms after GOAWAY close with the process",
            CLOSE_TIMEOUT.as_millis()
        );
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, metrics_task).await;
    let registry = shared.models.write().ok().and_then(|mut m| m.take());
    if let Some(registry) = registry.and_then(|r| Arc::try_unwrap(r).ok()) {
        // The lanes drop their abandoned work at the next noise block.
        let _ = tokio::task::spawn_blocking(move || registry.shutdown()).await;
    }
    if let Some(e) = load_error {
        return Err(ServeError::Load(e));
    }
    match served {
        Ok(Ok(())) | Err(_) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
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
                        for (lane, depth, capacity) in m.workers.queue_depths() {
                            shared
                                .metrics
                                .set_queue_depth(&m.name, lane.as_str(), depth, capacity);
                        }
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
            match shared.lifecycle.phase() {
                Phase::Serving => (StatusCode::OK, "ready\n".to_string()),
                other => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}\n", other.as_str()),
                ),
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
