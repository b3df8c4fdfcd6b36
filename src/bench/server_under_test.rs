//! The server a bench sends its load to: `smoothcert serve` in a child
//! process (as users run it), in this process, or one already running; and
//! the plain-HTTP probes of its metrics port.
use crate::config::Config;
use crate::pipeline::PipelineError;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where the server under load runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// `smoothcert serve` in a child process (this executable), one per
    /// batching mode.
    ChildProcess,
    InProcess,
    /// A server already running there; only the dynamic-batching row is
    /// measured (its configuration is its own).
    Target(String),
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Placement::ChildProcess => write!(f, "child process"),
            Placement::InProcess => write!(f, "in-process"),
            Placement::Target(addr) => write!(f, "target {addr}"),
        }
    }
}

fn server_err(e: &dyn std::fmt::Display) -> PipelineError {
    PipelineError::Invalid(format!("the server under test: {e}"))
}

/// The server the load is sent to, and how to stop it.
pub(crate) struct ServerUnderTest {
    pub(crate) addr: String,
    /// Its metrics port, where this bench started it as a child.
    metrics: Option<u16>,
    kind: ServerKind,
}

enum ServerKind {
    InProcess(crate::server::RunningServer),
    Child {
        child: std::process::Child,
        config_file: PathBuf,
    },
    Target,
}

/// The longest a child server may take to load its models.
const CHILD_START_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest a child server may take to stop after SIGTERM before it is killed.
const CHILD_STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A child server still running when its handle goes (a panic, an early
/// return) is killed, and its configuration file removed.
impl Drop for ServerUnderTest {
    fn drop(&mut self) {
        if let ServerKind::Child { child, config_file } = &mut self.kind {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(config_file);
        }
    }
}

impl ServerUnderTest {
    pub(crate) async fn start(
        config: Config,
        placement: &Placement,
    ) -> Result<Self, PipelineError> {
        match placement {
            Placement::Target(addr) => Ok(ServerUnderTest {
                addr: addr.clone(),
                metrics: None,
                kind: ServerKind::Target,
            }),
            Placement::InProcess => {
                let server = crate::server::start(config)
                    .await
                    .map_err(|e| server_err(&e))?;
                server.ready().await.map_err(|e| server_err(&e))?;
                Ok(ServerUnderTest {
                    addr: server.grpc_addr.to_string(),
                    metrics: Some(server.metrics_addr.port()),
                    kind: ServerKind::InProcess(server),
                })
            }
            Placement::ChildProcess => Self::start_child(&config).await,
        }
    }

    /// `smoothcert serve` with the bench's configuration on two free loopback ports.
    pub(crate) async fn start_child(config: &Config) -> Result<Self, PipelineError> {
        let free_port = || -> Result<u16, PipelineError> {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| server_err(&e))?;
            Ok(l.local_addr().map_err(|e| server_err(&e))?.port())
        };
        let (grpc, metrics) = (free_port()?, free_port()?);
        let m = &config.models[0];
        let bundle = std::fs::canonicalize(&m.bundle)
            .map_err(|e| server_err(&format!("{}: {e}", m.bundle.display())))?;
        let toml = format!(
            "[server]\ngrpc_addr = \"127.0.0.1:{grpc}\"\nmetrics_addr = \"127.0.0.1:{metrics}\"\n\
             grace_period_ms = {}\n\
             [batching]\nmax_batch_requests = {}\nmax_queue_delay_ms = {}\nforward_batch = {}\n\
             [limits]\nqueue_capacity = {}\nmc_queue_capacity = {}\nstage_queue_capacity = {}\n\
             [connections]\nmax_age_ms = {}\nmax_age_grace_ms = {}\n\
             [logging]\nlevel = \"warn\"\n\
             [[models]]\nbundle = {}\ndevice = {}\nn0 = {}\n",
            config.server.grace_period_ms,
            config.batching.max_batch_requests,
            config.batching.max_queue_delay_ms,
            config.batching.forward_batch,
            config.limits.queue_capacity,
            config.limits.mc_queue_capacity,
            config.limits.stage_queue_capacity,
            config.connections.max_age_ms,
            config.connections.max_age_grace_ms,
            toml::Value::String(bundle.display().to_string()),
            toml::Value::String(m.device.clone()),
            m.n0,
        );
        let config_file = std::env::temp_dir().join(format!(
            "smoothcert-bench-serve-{}-{grpc}.toml",
            std::process::id()
        ));
        std::fs::write(&config_file, toml).map_err(|e| server_err(&e))?;
        let exe = std::env::current_exe().map_err(|e| server_err(&e))?;
        let child = std::process::Command::new(exe)
            .args(["serve", "--config"])
            .arg(&config_file)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| server_err(&format!("starting the server: {e}")))?;
        let mut server = ServerUnderTest {
            addr: format!("127.0.0.1:{grpc}"),
            metrics: Some(metrics),
            kind: ServerKind::Child { child, config_file },
        };
        let started = Instant::now();
        loop {
            if let ServerKind::Child { child, .. } = &mut server.kind {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(server_err(&format!(
                        "the server exited during start-up ({status}); its log is above"
                    )));
                }
            }
            if readyz(metrics).await {
                return Ok(server);
            }
            if started.elapsed() > CHILD_START_TIMEOUT {
                server.stop().await?;
                return Err(server_err(&"the server was not ready within 300 s"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The child server's process id.
    pub(crate) fn pid(&self) -> Option<u32> {
        match &self.kind {
            ServerKind::Child { child, .. } => Some(child.id()),
            _ => None,
        }
    }

    pub(crate) fn metrics_port(&self) -> Option<u16> {
        self.metrics
    }

    pub(crate) async fn stop(mut self) -> Result<(), PipelineError> {
        match std::mem::replace(&mut self.kind, ServerKind::Target) {
            ServerKind::Target => Ok(()),
            ServerKind::InProcess(server) => {
                server.shutdown();
                server.wait().await.map_err(|e| server_err(&e))
            }
            ServerKind::Child {
                mut child,
                config_file,
            } => {
                let _ = std::fs::remove_file(&config_file);
                // SIGTERM: the server's own graceful shutdown; SIGKILL after
                // CHILD_STOP_TIMEOUT.
                // SAFETY: kill only sends a signal to the child's pid.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                let deadline = Instant::now() + CHILD_STOP_TIMEOUT;
                let status = loop {
                    match child.try_wait().map_err(|e| server_err(&e))? {
                        Some(status) => break status,
                        None if Instant::now() >= deadline => {
                            let _ = child.kill();
                            let _ = child.wait();
                            return Err(server_err(&"the server did not stop within 60 s; killed"));
                        }
                        None => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                };
                if status.success() {
                    Ok(())
                } else {
                    Err(server_err(&format!("the server exited with {status}")))
                }
            }
        }
    }
}

/// The sum of a metric's series on the server's /metrics (NaN where unread).
pub(crate) async fn scrape_metric(port: u16, name: &str) -> f64 {
    let Some(body) = http_get(port, "/metrics", Duration::from_secs(5)).await else {
        return f64::NAN;
    };
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether the server's `/readyz` answers 200.
async fn readyz(port: u16) -> bool {
    http_get(port, "/readyz", Duration::from_secs(2))
        .await
        .is_some_and(|r| r.split(' ').nth(1) == Some("200"))
}

/// The whole HTTP/1.0 response (status line, headers, body) to a GET of
/// `path` on the server's metrics port, if one came within `timeout`.
async fn http_get(port: u16, path: &str, timeout: Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        s.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        s.read_to_string(&mut response).await.ok()?;
        Some(response)
    };
    tokio::time::timeout(timeout, fetch).await.ok().flatten()
}
