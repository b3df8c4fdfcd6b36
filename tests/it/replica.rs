//! A `smoothcert serve` process on ports of its own, as tests that need a
//! real process (a proxy in front, signals, an exporter) start it.
use crate::common::{bundle_dir, metric_sum, try_http_get};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One `smoothcert serve` process on its own ports; killed when dropped.
pub struct Replica {
    pub name: &'static str,
    pub grpc: u16,
    pub metrics: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    /// `sections`: TOML sections after `[server]` (e.g. `[connections]` keys).
    pub fn new(dir: &Path, name: &'static str, sections: &str) -> Replica {
        let (grpc, metrics) = (free_port(), free_port());
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[server]\ngrpc_addr = \"127.0.0.1:{grpc}\"\nmetrics_addr = \"127.0.0.1:{metrics}\"\n\
                 grace_period_ms = 10000\n{sections}\n\
                 [[models]]\nbundle = {:?}\ndevice = \"cpu\"\n",
                bundle_dir().display().to_string()
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        Replica {
            name,
            grpc,
            metrics,
            config,
            log,
            child: None,
        }
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_smoothcert"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("OMP_NUM_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits until `/readyz` says ready.
    pub async fn ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok((200, _)) = try_http_get(addr(self.metrics), "/readyz").await {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("{} exited with {status}:\n{}", self.name, self.log_tail());
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{} not ready:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Requests this replica has answered (its own metrics).
    pub async fn answered(&self) -> f64 {
        let (_, text) = try_http_get(addr(self.metrics), "/metrics")
            .await
            .unwrap_or_else(|e| panic!("{} metrics: {e}", self.name));
        metric_sum(&text, "smoothcert_requests_total")
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the process to drain and exit.
    pub async fn terminate(&mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on a child this test started and has not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(
            status.success(),
            "{}: {status}\n{}",
            self.name,
            self.log_tail()
        );
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

pub fn python() -> String {
    std::env::var("SMOOTHCERT_PYTHON")
        .expect("SMOOTHCERT_PYTHON is unset: run scripts/setup.sh (it installs grpcio)")
}
