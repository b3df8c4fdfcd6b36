//! The gRPC listener: accepts connections and serves each one with the
//! HTTP/2 limits of `[connections]`, and ends it at its maximum age the way
//! gRPC specifies (proposal A9): a GOAWAY at a jittered age, a grace for the
//! calls in flight, then a close.
//!
//! The accept loop is ours, not tonic's `serve`: tonic draws no jitter (every
//! connection opened together would reconnect together), and in tonic 0.14.9
//! a configured grace replaces the GOAWAY by a hard close at age + grace,
//! cutting the calls in flight.

use crate::config::ConnectionsConfig;
use crate::metrics::Metrics;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// The gRPC services as every connection serves them: tonic's routes behind
/// the layer that rewrites an oversized message's status (server/mod.rs).
pub type GrpcService = tower::util::MapResponse<
    tonic::service::Routes,
    fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body>,
>;

/// What one accepted connection is served with.
#[derive(Clone)]
pub struct ConnectionPolicy {
    http2: http2::Builder<TokioExecutor>,
    max_age: Option<Duration>,
    jitter: f64,
    grace: Duration,
    tls: Option<TlsAcceptor>,
    tls_timeout: Duration,
    /// Seeds each connection's jitter; random per process.
    jitter_seed: std::collections::hash_map::RandomState,
}

impl ConnectionPolicy {
    pub fn new(config: &ConnectionsConfig, tls: Option<TlsAcceptor>) -> ConnectionPolicy {
        let ms = Duration::from_millis;
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(config.max_concurrent_streams)
            .max_header_list_size(config.max_header_list_bytes)
            .max_pending_accept_reset_streams(Some(config.max_pending_reset_streams))
            .max_local_error_reset_streams(Some(config.max_local_error_reset_streams))
            .keep_alive_interval(
                (config.keepalive_interval_ms > 0).then(|| ms(config.keepalive_interval_ms)),
            )
            .keep_alive_timeout(ms(config.keepalive_timeout_ms));
        ConnectionPolicy {
            http2: h2,
            max_age: (config.max_age_ms > 0).then(|| ms(config.max_age_ms)),
            jitter: config.max_age_jitter,
            grace: ms(config.max_age_grace_ms),
            tls,
            tls_timeout: ms(config.tls_handshake_timeout_ms),
            jitter_seed: Default::default(),
        }
    }

    /// The age of the `seq`-th connection: max_age * (1 + u * jitter), u
    /// uniform in [-1, 1).
    fn age_of(&self, seq: u64) -> Option<Duration> {
        let age = self.max_age?;
        let u = (self.jitter_seed.hash_one(seq) >> 11) as f64 / (1u64 << 53) as f64;
        Some(age.mul_f64(1.0 + (2.0 * u - 1.0) * self.jitter))
    }
}

/// Accepts connections until `shutdown`, then closes the listener at once,
/// sends every connection a GOAWAY, and returns when all have closed (the
/// server's lifecycle answers what is still in flight by then).
pub async fn serve(
    listener: TcpListener,
    service: GrpcService,
    policy: ConnectionPolicy,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let (drain_tx, drain_rx) = watch::channel(false);
    let policy = Arc::new(policy);
    tokio::pin!(shutdown);
    let mut seq = 0u64;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors (or a connection reset before
                    // accept): retrying at once would spin.
                    tracing::warn!(error = %e, "accepting a gRPC connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Without TCP_NODELAY, Nagle holds small responses back until the
        // client's delayed ACK.
        let _ = tcp.set_nodelay(true);
        seq += 1;
        let connection = Connection {
            peer,
            age: policy.age_of(seq),
            policy: policy.clone(),
            metrics: metrics.clone(),
            drain: drain_rx.clone(),
        };
        tokio::spawn(connection.run(tcp, service.clone()));
    }
    drop(listener);
    let _ = drain_tx.send(true);
    drop(drain_rx);
    // Every connection holds a receiver until it has closed.
    drain_tx.closed().await;
}

struct Connection {
    peer: SocketAddr,
    age: Option<Duration>,
    policy: Arc<ConnectionPolicy>,
    metrics: Arc<Metrics>,
    drain: watch::Receiver<bool>,
}

/// How a connection ended, for the log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The client closed it, or it failed.
    ByPeer,
    /// Its maximum age came, and its calls finished within the grace.
    Aged,
    /// Its maximum age and the grace both passed with calls still open.
    AgedGraceOver,
    /// The server is stopping.
    Draining,
}

impl Closed {
    pub fn as_str(self) -> &'static str {
        match self {
            Closed::ByPeer => "peer",
            Closed::Aged => "max_age",
            Closed::AgedGraceOver => "max_age_grace",
            Closed::Draining => "shutdown",
        }
    }
}

impl Connection {
    async fn run(self, tcp: TcpStream, service: GrpcService) {
        let _open = self.metrics.connection_opened();
        let closed = match self.policy.tls.clone() {
            None => self.serve(tcp, service).await,
            Some(acceptor) => {
                let handshake = tokio::time::timeout(self.policy.tls_timeout, acceptor.accept(tcp));
                match handshake.await {
                    Ok(Ok(tls)) => self.serve(tls, service).await,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                        Closed::ByPeer
                    }
                    Err(_) => {
                        tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                        Closed::ByPeer
                    }
                }
            }
        };
        self.metrics.connection_closed(closed.as_str());
        tracing::debug!(peer = %self.peer, closed = closed.as_str(), "connection closed");
    }

    /// Serves HTTP/2 on `io` until the peer closes, the age (and then the
    /// grace) passes, or the server drains.
    async fn serve<IO>(&self, io: IO, service: GrpcService) -> Closed
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = self
            .policy
            .http2
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        tokio::pin!(conn);
        let aged = sleep_or_never(self.age);
        tokio::pin!(aged);
        let grace_over = sleep_or_never(None);
        tokio::pin!(grace_over);
        let mut drain = self.drain.clone();
        let mut ending: Option<Closed> = None;
        loop {
            tokio::select! {
                served = conn.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    return ending.unwrap_or(Closed::ByPeer);
                }
                _ = &mut aged, if ending.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    ending = Some(Closed::Aged);
                    grace_over.set(sleep_or_never(Some(self.policy.grace)));
                }
                _ = &mut grace_over, if ending == Some(Closed::Aged) => {
                    // Dropping the connection closes it under its calls.
                    return Closed::AgedGraceOver;
                }
                _ = drain.wait_for(|d| *d), if ending.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    ending = Some(Closed::Draining);
                }
            }
        }
    }
}

async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Raises this process's soft limit on open files to its hard limit, as Go
/// servers do at start: each connection holds a descriptor, and a soft limit
/// of 1,024 (common outside containers) would refuse clients long before
/// memory runs short. Returns the limit now in force.
pub fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return Some(raised.rlim_cur);
            }
        }
    }
    Some(limit.rlim_cur)
}

/// The TLS acceptor for `server.tls_cert` / `server.tls_key`: HTTP/2 only
/// (ALPN h2), as gRPC needs.
pub fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("server.tls_cert: {e}"))?;
    if certs.is_empty() {
        return Err("server.tls_cert: no PEM certificate found".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("server.tls_key: {e}"))?;
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("server.tls_cert / server.tls_key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_of_a_close_is_a_label_the_metrics_start_with() {
        let causes = [
            Closed::ByPeer,
            Closed::Aged,
            Closed::AgedGraceOver,
            Closed::Draining,
        ];
        let names: Vec<&str> = causes.iter().map(|c| c.as_str()).collect();
        assert_eq!(names, crate::metrics::CLOSED_BY);
    }

    #[test]
    fn ages_spread_over_the_jitter_band_and_stay_in_it() {
        let config = ConnectionsConfig {
            max_age_ms: 10_000,
            max_age_jitter: 0.1,
            ..ConnectionsConfig::default()
        };
        let policy = ConnectionPolicy::new(&config, None);
        let ages: Vec<f64> = (0..2000)
            .map(|i| {
                policy
                    .age_of(i)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(f64::NAN)
            })
            .collect();
        assert!(ages.iter().all(|a| (9.0..=11.0).contains(a)), "{ages:?}");
        // Uniform on [9, 11]: each fifth of the band holds about 400 of 2000.
        for k in 0..5 {
            let lo = 9.0 + 0.4 * k as f64;
            let count = ages.iter().filter(|a| (lo..lo + 0.4).contains(*a)).count();
            assert!((300..=500).contains(&count), "bin {k}: {count}");
        }
        let off = ConnectionPolicy::new(&ConnectionsConfig::default(), None);
        assert_eq!(off.age_of(1), None);
    }
}
