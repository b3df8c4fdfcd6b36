//! The service's configuration: built-in defaults < a TOML file < environment
//! variables `SMOOTHCERT__SECTION__KEY` (e.g. `SMOOTHCERT__SERVER__GRPC_ADDR`).
//! Loading fails with a message naming the offending key; nothing is checked
//! later, at request time, that could have been checked here.
use crate::engine::Method;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key {key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

fn at_least_one(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(invalid(key, "must be at least 1"));
    }
    Ok(())
}

/// Durations are added to "now"; beyond a day they only risk overflow.
fn within_a_day(key: &str, v: u64) -> Result<(), ConfigError> {
    if v > MAX_DURATION_MS {
        return Err(invalid(
            key,
            format!("{v} is more than a day ({MAX_DURATION_MS} ms)"),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub connections: ConnectionsConfig,
    pub batching: BatchingConfig,
    pub limits: LimitsConfig,
    pub logging: LoggingConfig,
    pub traces: TracesConfig,
    /// The models to serve; the first is the default unless
    /// `server.default_model` names another.
    pub models: Vec<ModelConfig>,
    /// Keys given under a name this release renamed, each with its new name
    /// (logged once logging is set up).
    #[serde(skip)]
    pub deprecations: Vec<String>,
}

/// The second shipped bundle: Fashion-MNIST under uniform noise (L1).
pub const UNIFORM_BUNDLE: &str = "models/fashion-mnist-uniform-lambda1.0";

/// Keys renamed in this release: (old, new). The old names stay accepted
/// (serde aliases) for one release, with a warning naming the new key.
pub const RENAMED_KEYS: [(&str, &str); 1] = [(
    "limits.sequential_queue_capacity",
    "limits.stage_queue_capacity",
)];

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            connections: ConnectionsConfig::default(),
            batching: BatchingConfig::default(),
            limits: LimitsConfig::default(),
            logging: LoggingConfig::default(),
            traces: TracesConfig::default(),
            // The shipped bundles: Gaussian (L2, the default) and uniform (L1).
            models: vec![
                ModelConfig::default(),
                ModelConfig {
                    bundle: PathBuf::from(UNIFORM_BUNDLE),
                    ..ModelConfig::default()
                },
            ],
            deprecations: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub grpc_addr: SocketAddr,
    /// Prometheus `/metrics` (and plain-HTTP `/healthz`, `/readyz`).
    pub metrics_addr: SocketAddr,
    /// The model an empty `model` field selects (default: the first).
    pub default_model: Option<String>,
    /// After SIGTERM/SIGINT, how long in-flight requests may take to finish.
    pub grace_period_ms: u64,
    /// Serve gRPC over TLS with this PEM certificate chain and key.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// When set, Certifier calls must carry `authorization: Bearer <token>`
    /// (health and reflection stay open for probes and grpcurl).
    pub auth_token: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            grpc_addr: ([0, 0, 0, 0], 50051).into(),
            metrics_addr: ([0, 0, 0, 0], 9090).into(),
            default_model: None,
            grace_period_ms: 30_000,
            tls_cert: None,
            tls_key: None,
            auth_token: None,
        }
    }
}

/// The gRPC listener's connections: how long each may live, and the HTTP/2
/// limits that keep one client from holding or flooding the server. See
/// docs/DEPLOYMENT.md for why each default is what it is.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// After about this long a connection gets a GOAWAY, so that clients
    /// reconnect and a load balancer spreads them over new replicas (gRPC's
    /// MAX_CONNECTION_AGE). 0: connections live as long as their client wants.
    pub max_age_ms: u64,
    /// Each connection's age is drawn from max_age_ms * (1 +- this), so that
    /// connections opened together do not all reconnect together.
    pub max_age_jitter: f64,
    /// After the GOAWAY, how long the calls in flight on the connection may
    /// take before it is closed under them.
    pub max_age_grace_ms: u64,
    /// Calls open at once on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// An HTTP/2 PING after this long without a frame from the peer; a peer
    /// that does not answer within keepalive_timeout_ms is dropped. 0: no pings.
    pub keepalive_interval_ms: u64,
    pub keepalive_timeout_ms: u64,
    /// The largest header block (metadata) a request may send.
    pub max_header_list_bytes: u32,
    /// Streams a client may open and reset before the server has seen them
    /// through, before the connection is ended: the rapid-reset attack
    /// (CVE-2023-44487) opens and resets streams without limit.
    pub max_pending_reset_streams: usize,
    /// Streams the server itself may reset for a client's protocol errors
    /// before it ends the connection (the "MadeYouReset" variant, CVE-2025-8671).
    pub max_local_error_reset_streams: usize,
    /// A TLS client must finish its handshake within this long.
    pub tls_handshake_timeout_ms: u64,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            max_age_ms: 0,
            max_age_jitter: 0.1,
            max_age_grace_ms: 30_000,
            max_concurrent_streams: 256,
            keepalive_interval_ms: 60_000,
            keepalive_timeout_ms: 20_000,
            max_header_list_bytes: 64 << 10,
            max_pending_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            tls_handshake_timeout_ms: 10_000,
        }
    }
}

impl ConnectionsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let key = |k: &str| format!("connections.{k}");
        if !(0.0..=0.5).contains(&self.max_age_jitter) {
            return Err(invalid(key("max_age_jitter"), "must be in [0, 0.5]"));
        }
        for (k, v) in [
            (
                "max_concurrent_streams",
                u64::from(self.max_concurrent_streams),
            ),
            (
                "max_header_list_bytes",
                u64::from(self.max_header_list_bytes),
            ),
            (
                "max_pending_reset_streams",
                self.max_pending_reset_streams as u64,
            ),
            (
                "max_local_error_reset_streams",
                self.max_local_error_reset_streams as u64,
            ),
            ("keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("tls_handshake_timeout_ms", self.tls_handshake_timeout_ms),
        ] {
            at_least_one(&key(k), v)?;
        }
        for (k, v) in [
            ("max_age_ms", self.max_age_ms),
            ("max_age_grace_ms", self.max_age_grace_ms),
            ("keepalive_interval_ms", self.keepalive_interval_ms),
            ("keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("tls_handshake_timeout_ms", self.tls_handshake_timeout_ms),
        ] {
            within_a_day(&key(k), v)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchingConfig {
    /// A batch closes when it holds this many requests...
    pub max_batch_requests: usize,
    /// ...or this long after its first request arrived. 0: take what is
    /// queued and go; under load requests queue while a batch runs, so
    /// batches fill by themselves without adding latency at low load.
    pub max_queue_delay_ms: u64,
    /// Noisy copies per base-classifier forward pass; 0 picks by device
    /// (32 on a CPU, where small batches are fastest; 4096 on a GPU).
    pub forward_batch: i64,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            max_batch_requests: 32,
            max_queue_delay_ms: 0,
            forward_batch: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request message accepted (bytes).
    pub max_message_bytes: usize,
    /// Requests waiting per model for the fast (surrogate) lane; beyond it,
    /// RESOURCE_EXHAUSTED at once.
    pub queue_capacity: usize,
    /// The same for the Monte Carlo lane (MONTE_CARLO and Predict).
    pub mc_queue_capacity: usize,
    /// Stage slices waiting in the stage lane (SEQUENTIAL's stages).
    /// Was `sequential_queue_capacity`: still read, with a warning.
    #[serde(alias = "sequential_queue_capacity")]
    pub stage_queue_capacity: usize,
    /// The server's own deadline for a request; a client deadline that is
    /// shorter wins.
    pub request_timeout_ms: u64,
    /// Requests of one CertifyStream in flight at once.
    pub stream_in_flight: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 4 << 20,
            queue_capacity: 1024,
            mc_queue_capacity: 64,
            stage_queue_capacity: 1024,
            request_timeout_ms: 300_000,
            stream_in_flight: 64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    pub format: LogFormat,
    /// A tracing-subscriber filter, e.g. `info` or `smoothcert=debug,info`.
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

/// Request and batch spans over OTLP/gRPC (src/server/telemetry.rs).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracesConfig {
    /// An OTLP/gRPC collector, e.g. `http://otel-collector:4317`; empty: no traces.
    pub otlp_endpoint: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Share of traces kept where the caller sent no sampling decision
    /// (a caller's `traceparent` decides for its own trace).
    pub sample_ratio: f64,
    /// Spans wait at most this long to go out, in batches.
    pub export_delay_ms: u64,
    /// One export call's timeout.
    pub export_timeout_ms: u64,
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            otlp_endpoint: String::new(),
            service_name: "smoothcert".into(),
            sample_ratio: 1.0,
            export_delay_ms: 5000,
            export_timeout_ms: 10000,
        }
    }
}

impl TracesConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let e = &self.otlp_endpoint;
        if !e.is_empty() {
            let ok = e.parse::<http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                return Err(invalid(
                    "traces.otlp_endpoint",
                    format!(
                        "{e:?} is not an http:// or https:// address (e.g. http://localhost:4317)"
                    ),
                ));
            }
        }
        if self.service_name.is_empty() {
            return Err(invalid("traces.service_name", "must not be empty"));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(invalid(
                "traces.sample_ratio",
                format!("{} is not in 0..=1", self.sample_ratio),
            ));
        }
        for (key, v) in [
            ("traces.export_delay_ms", self.export_delay_ms),
            ("traces.export_timeout_ms", self.export_timeout_ms),
        ] {
            at_least_one(key, v)?;
            within_a_day(key, v)?;
        }
        Ok(())
    }
}

/// The most requests one stream may have in flight.
pub const MAX_STREAM_IN_FLIGHT: usize = 65_536;

/// The longest duration any `_ms` key may hold: one day.
pub const MAX_DURATION_MS: u64 = 86_400_000;

/// AUTO's default band, chosen on the default bundle's calibration inputs (see the README).
pub const DEFAULT_AUTO_BAND: (f64, f64) = (0.2, 0.5);

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// The name requests use (default: the bundle's own name).
    pub name: Option<String>,
    pub bundle: PathBuf,
    /// cpu, cuda, cuda:N or auto (the GPU when there is one).
    pub device: String,
    /// What a request gets when it sets no option. `n` defaults to the
    /// surrogate's nominal N (else 100,000); surrogate falls back to
    /// monte_carlo for a bundle without a surrogate.
    pub method: Method,
    pub n0: u64,
    pub n: Option<u64>,
    pub alpha: f64,
    /// The most a request may ask for.
    pub max_n0: u64,
    pub max_n: u64,
    pub min_alpha: f64,
    /// Choose cA sequentially (n0 is then the cap) unless a request says otherwise.
    pub adaptive_n0: bool,
    /// Adaptive n0: samples per look, and the error level of the stopping rule.
    pub adaptive_n0_chunk: u64,
    pub adaptive_n0_alpha: f64,
    /// AUTO falls back to Monte Carlo when the calibrated pA_lower is in
    /// [auto_band_low, auto_band_high], or on a class mismatch.
    pub auto_band_low: f64,
    pub auto_band_high: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            name: None,
            bundle: PathBuf::from("models/fashion-mnist-sigma0.25"),
            device: "auto".into(),
            method: Method::Surrogate,
            n0: 100,
            n: None,
            alpha: 0.001,
            max_n0: 10_000,
            max_n: 1_000_000,
            min_alpha: 1e-9,
            adaptive_n0: false,
            adaptive_n0_chunk: 10,
            adaptive_n0_alpha: 0.001,
            auto_band_low: DEFAULT_AUTO_BAND.0,
            auto_band_high: DEFAULT_AUTO_BAND.1,
        }
    }
}

impl Config {
    /// Defaults, then `file` (when given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, None)
    }

    /// As [`Config::load`], with the environment given explicitly (tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            if !file.is_file() {
                return Err(invalid(
                    "--config",
                    format!("{} is not a readable file", file.display()),
                ));
            }
            builder = builder.add_source(config::File::from(file).format(config::FileFormat::Toml));
        }
        let environment = config::Environment::with_prefix("SMOOTHCERT")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(env);
        let built = builder.add_source(environment).build()?;
        let deprecations = RENAMED_KEYS
            .iter()
            .filter(|(old, _)| built.get::<config::Value>(old).is_ok())
            .map(|(old, new)| format!("configuration key {old} is now {new}; the old name will stop working in the next release"))
            .collect();
        let mut cfg: Config = built.try_deserialize()?;
        cfg.deprecations = deprecations;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let b = &self.batching;
        if b.max_batch_requests == 0 {
            return Err(invalid("batching.max_batch_requests", "must be at least 1"));
        }
        if !(0..=1 << 20).contains(&b.forward_batch) {
            return Err(invalid(
                "batching.forward_batch",
                "must be 0 (auto) or in 1..=1048576",
            ));
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_message_bytes", l.max_message_bytes),
            ("limits.queue_capacity", l.queue_capacity),
            ("limits.mc_queue_capacity", l.mc_queue_capacity),
            ("limits.stage_queue_capacity", l.stage_queue_capacity),
            ("limits.stream_in_flight", l.stream_in_flight),
        ] {
            at_least_one(key, v as u64)?;
        }
        if l.request_timeout_ms == 0 {
            return Err(invalid("limits.request_timeout_ms", "must be at least 1"));
        }
        if l.stream_in_flight > MAX_STREAM_IN_FLIGHT {
            return Err(invalid(
                "limits.stream_in_flight",
                format!("{} is more than {MAX_STREAM_IN_FLIGHT}", l.stream_in_flight),
            ));
        }
        for (key, v) in [
            ("limits.request_timeout_ms", l.request_timeout_ms),
            ("server.grace_period_ms", self.server.grace_period_ms),
            ("batching.max_queue_delay_ms", b.max_queue_delay_ms),
        ] {
            within_a_day(key, v)?;
        }
        if tracing_subscriber::EnvFilter::try_new(&self.logging.level).is_err() {
            return Err(invalid(
                "logging.level",
                format!(
                    "{:?} is not a log filter (try info or debug)",
                    self.logging.level
                ),
            ));
        }
        let s = &self.server;
        if s.tls_cert.is_some() != s.tls_key.is_some() {
            return Err(invalid(
                "server.tls_cert",
                "server.tls_cert and server.tls_key go together",
            ));
        }
        if s.auth_token.as_deref() == Some("") {
            return Err(invalid("server.auth_token", "must not be empty when set"));
        }
        self.connections.validate()?;
        self.traces.validate()?;
        if self.models.is_empty() {
            return Err(invalid("models", "at least one model is needed"));
        }
        for (i, m) in self.models.iter().enumerate() {
            m.validate(i)?;
        }
        Ok(())
    }
}

impl ModelConfig {
    /// The checks of `models[i]`, each naming its key.
    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let m = self;
        let key = |k: &str| format!("models[{i}].{k}");
        if m.method == Method::Sequential {
            return Err(invalid(
                key("method"),
                "sequential needs each request's target_radius, so it cannot be the default; \
                 clients ask for SEQUENTIAL per request",
            ));
        }
        if m.n0 == 0 || m.n0 > m.max_n0 {
            return Err(invalid(
                key("n0"),
                format!("must be in 1..={} (max_n0)", m.max_n0),
            ));
        }
        if let Some(n) = m.n {
            if n == 0 || n > m.max_n {
                return Err(invalid(
                    key("n"),
                    format!("must be in 1..={} (max_n)", m.max_n),
                ));
            }
        }
        if m.adaptive_n0_chunk == 0 {
            return Err(invalid(key("adaptive_n0_chunk"), "must be at least 1"));
        }
        if !(m.adaptive_n0_alpha > 0.0 && m.adaptive_n0_alpha < 1.0) {
            return Err(invalid(key("adaptive_n0_alpha"), "must be in (0, 1)"));
        }
        if !(0.0..=1.0).contains(&m.auto_band_low) {
            return Err(invalid(key("auto_band_low"), "must be in [0, 1]"));
        }
        if !(m.auto_band_low..=1.0).contains(&m.auto_band_high) {
            return Err(invalid(
                key("auto_band_high"),
                "must be in [auto_band_low, 1]",
            ));
        }
        if !(m.min_alpha > 0.0 && m.min_alpha < 1.0) {
            return Err(invalid(key("min_alpha"), "must be in (0, 1)"));
        }
        if !(m.alpha >= m.min_alpha && m.alpha < 1.0) {
            return Err(invalid(key("alpha"), "must be in [min_alpha, 1)"));
        }
        if let Err(e) = crate::model::parse_device(&m.device) {
            return Err(invalid(key("device"), e.to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_then_file_then_environment() {
        let cfg = Config::load_with_env(None, env(&[])).unwrap();
        assert_eq!(cfg.server.grpc_addr.port(), 50051);
        assert_eq!(cfg.server.metrics_addr.port(), 9090);
        // Both shipped bundles, the Gaussian one first (the default model).
        assert_eq!(cfg.models.len(), 2);
        assert_eq!(
            cfg.models[0].bundle,
            Path::new("models/fashion-mnist-sigma0.25")
        );
        assert_eq!(cfg.models[1].bundle, Path::new(UNIFORM_BUNDLE));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[server]\ngrpc_addr = \"127.0.0.1:6000\"\n[batching]\nmax_batch_requests = 8\n\
             [[models]]\nbundle = \"a\"\nn0 = 50\n[[models]]\nname = \"b\"\nbundle = \"b\"\n",
        )
        .unwrap();
        let cfg = Config::load_with_env(
            Some(&file),
            env(&[("SMOOTHCERT__SERVER__GRPC_ADDR", "127.0.0.1:7000")]),
        )
        .unwrap();
        assert_eq!(cfg.server.grpc_addr.port(), 7000, "the environment wins");
        assert_eq!(
            cfg.batching.max_batch_requests, 8,
            "the file wins over defaults"
        );
        assert_eq!(cfg.models.len(), 2);
        assert_eq!(cfg.models[0].n0, 50);
        assert_eq!(cfg.models[1].n0, 100);
    }

    #[test]
    fn the_example_file_documents_the_defaults() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/smoothcert.toml");
        let cfg = Config::load_with_env(Some(&file), env(&[])).unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn errors_name_the_key() {
        let err = |pairs: &[(&str, &str)]| {
            Config::load_with_env(None, env(pairs))
                .unwrap_err()
                .to_string()
        };
        let e = err(&[("SMOOTHCERT__SERVER__GRPC_ADDR", "not-an-address")]);
        assert!(e.contains("grpc_addr"), "{e}");
        let e = err(&[("SMOOTHCERT__BATCHING__MAX_BATCH_REQUESTS", "0")]);
        assert!(e.contains("batching.max_batch_requests"), "{e}");
        let e = err(&[("SMOOTHCERT__LIMITS__QUEUE_CAPACITY", "many")]);
        assert!(e.contains("queue_capacity"), "{e}");
        let e = err(&[("SMOOTHCERT__SERVER__NO_SUCH_KEY", "1")]);
        assert!(e.contains("no_such_key"), "{e}");
        let e = err(&[("SMOOTHCERT__SERVER__TLS_CERT", "/x.pem")]);
        assert!(e.contains("server.tls_cert"), "{e}");
        let e = err(&[("SMOOTHCERT__LOGGING__FORMAT", "xml")]);
        assert!(e.contains("format"), "{e}");
        // Values that would overflow a deadline are refused at start, by key.
        for (var, key) in [
            (
                "SMOOTHCERT__LIMITS__REQUEST_TIMEOUT_MS",
                "limits.request_timeout_ms",
            ),
            (
                "SMOOTHCERT__SERVER__GRACE_PERIOD_MS",
                "server.grace_period_ms",
            ),
            (
                "SMOOTHCERT__BATCHING__MAX_QUEUE_DELAY_MS",
                "batching.max_queue_delay_ms",
            ),
        ] {
            let e = err(&[(var, "18446744073709551615")]);
            assert!(e.contains(key), "{e}");
        }
        let e = err(&[("SMOOTHCERT__LIMITS__STREAM_IN_FLIGHT", "10000000000")]);
        assert!(e.contains("limits.stream_in_flight"), "{e}");
        for (var, value, key) in [
            (
                "SMOOTHCERT__TRACES__OTLP_ENDPOINT",
                "collector:4317",
                "traces.otlp_endpoint",
            ),
            (
                "SMOOTHCERT__TRACES__OTLP_ENDPOINT",
                "grpc://collector:4317",
                "traces.otlp_endpoint",
            ),
            (
                "SMOOTHCERT__TRACES__SAMPLE_RATIO",
                "1.5",
                "traces.sample_ratio",
            ),
            (
                "SMOOTHCERT__TRACES__EXPORT_DELAY_MS",
                "0",
                "traces.export_delay_ms",
            ),
            (
                "SMOOTHCERT__TRACES__SERVICE_NAME",
                "",
                "traces.service_name",
            ),
        ] {
            let e = err(&[(var, value)]);
            assert!(e.contains(key), "{var}={value}: {e}");
        }
        let ok = Config::load_with_env(
            None,
            env(&[(
                "SMOOTHCERT__TRACES__OTLP_ENDPOINT",
                "http://otel-collector:4317",
            )]),
        )
        .unwrap();
        assert_eq!(ok.traces.otlp_endpoint, "http://otel-collector:4317");
        assert!(
            Config::default().traces.otlp_endpoint.is_empty(),
            "traces are off by default"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[[models]]\nbundle = \"a\"\nn0 = 0\n").unwrap();
        let e = Config::load_with_env(Some(&file), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("models[0].n0"), "{e}");
        std::fs::write(&file, "[[models]]\nbundle = \"a\"\nmethod = \"nonsense\"\n").unwrap();
        let e = Config::load_with_env(Some(&file), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("monte_carlo") && e.contains("auto"), "{e}");
        std::fs::write(
            &file,
            "[[models]]\nbundle = \"a\"\nmethod = \"sequential\"\n",
        )
        .unwrap();
        let e = Config::load_with_env(Some(&file), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("models[0].method"), "{e}");
        let e = Config::load_with_env(Some(&dir.path().join("missing.toml")), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.toml"), "{e}");
    }

    /// A renamed key is still read under its old name, with a warning that
    /// names the new one; giving both is refused.
    #[test]
    fn renamed_keys_stay_accepted_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[limits]\nsequential_queue_capacity = 7\n").unwrap();
        let cfg = Config::load_with_env(Some(&file), env(&[])).unwrap();
        assert_eq!(cfg.limits.stage_queue_capacity, 7);
        assert_eq!(cfg.deprecations.len(), 1);
        assert!(
            cfg.deprecations[0].contains("limits.sequential_queue_capacity")
                && cfg.deprecations[0].contains("limits.stage_queue_capacity"),
            "{:?}",
            cfg.deprecations
        );
        let cfg = Config::load_with_env(
            None,
            env(&[("SMOOTHCERT__LIMITS__SEQUENTIAL_QUEUE_CAPACITY", "9")]),
        )
        .unwrap();
        assert_eq!(cfg.limits.stage_queue_capacity, 9);
        assert_eq!(cfg.deprecations.len(), 1);
        let fresh = Config::load_with_env(
            None,
            env(&[("SMOOTHCERT__LIMITS__STAGE_QUEUE_CAPACITY", "9")]),
        )
        .unwrap();
        assert!(fresh.deprecations.is_empty());
        std::fs::write(
            &file,
            "[limits]\nsequential_queue_capacity = 7\nstage_queue_capacity = 8\n",
        )
        .unwrap();
        assert!(Config::load_with_env(Some(&file), env(&[])).is_err());
    }
}
