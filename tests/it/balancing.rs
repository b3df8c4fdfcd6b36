//! Behind a real L4 load balancer: two `smoothcert serve` processes behind
//! HAProxy in TCP mode (Debian's `haproxy`, installed by scripts/setup.sh),
//! and one grpcio channel (clients/python/balance.py) with 64 requests in
//! flight through it, as a client of a Kubernetes Service has.
//!
//! - With `connections.max_age_ms`, a replica added under load gets a large
//!   share of the requests within two ages; without it, about none.
//! - A replica killed with SIGKILL, or each stopped with SIGTERM and
//!   restarted in turn, loses no request for a client with the documented
//!   retry policy, and every answer equals the survivor's for the same seed.

use crate::replica::{addr, free_port, python, which, Replica};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// HAProxy in TCP mode in front of the replicas, each checked on `/readyz`.
/// leastconn: a reconnecting client goes to the replica with the fewest
/// connections, as one balances long-lived HTTP/2 connections.
struct Proxy {
    port: u16,
    child: Child,
}

impl Proxy {
    async fn start(dir: &Path, replicas: &[&Replica]) -> Proxy {
        let haproxy = which("haproxy").expect(
            "haproxy is not installed: scripts/setup.sh installs it (Debian package haproxy)",
        );
        let port = free_port();
        let servers: String = replicas
            .iter()
            .map(|r| {
                format!(
                    "    server {} 127.0.0.1:{} check port {}\n",
                    r.name, r.grpc, r.metrics
                )
            })
            .collect();
        let config = dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n    maxconn 4096\n\
                 defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 60s\n\
                 \x20   timeout server 60s\n    retries 3\n    option redispatch\n\
                 frontend grpc\n    bind 127.0.0.1:{port}\n    default_backend replicas\n\
                 backend replicas\n    balance leastconn\n    option httpchk GET /readyz\n\
                 \x20   default-server inter 200ms fall 1 rise 1\n{servers}"
            ),
        )
        .unwrap();
        let child = Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while tokio::net::TcpStream::connect(addr(port)).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "haproxy did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Its first health checks.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Proxy { port, child }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn balance_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/python/balance.py")
}

/// clients/python/balance.py in the background, until its stop file exists.
struct Load {
    stop_file: PathBuf,
    child: Option<Child>,
}

impl Load {
    fn start(dir: &Path, proxy: &Proxy, retry: bool) -> Load {
        let stop_file = dir.join("stop");
        // Read back by load_check.
        let answers = dir.join("answers.json");
        let mut cmd = Command::new(python());
        cmd.arg(balance_script())
            .args(["--addr", &format!("127.0.0.1:{}", proxy.port)])
            .args(["--concurrency", "64", "--seconds", "120"])
            .arg("--stop-file")
            .arg(&stop_file)
            .arg("--answers")
            .arg(&answers)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if retry {
            cmd.arg("--retry");
        }
        Load {
            stop_file,
            child: Some(cmd.spawn().unwrap()),
        }
    }

    /// Stops the load and returns its summary.
    async fn finish(mut self) -> serde_json::Value {
        std::fs::write(&self.stop_file, b"").unwrap();
        let child = self.child.take().unwrap();
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.status.success(),
            "balance.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `replica` has answered at least `count` requests.
async fn until_answered(replica: &Replica, count: f64) {
    let started = Instant::now();
    while replica.answered().await < count {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} answered nothing",
            replica.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The share of requests the replica started second answers in the two
/// ages (4 s) after it is ready, with the given `[connections]` settings.
async fn share_of_added_replica(connections: &str) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let sections = format!("[connections]\n{connections}");
    let mut first = Replica::new(dir.path(), "first", &sections);
    let mut second = Replica::new(dir.path(), "second", &sections);
    first.start();
    first.ready().await;
    let proxy = Proxy::start(dir.path(), &[&first, &second]).await;
    let load = Load::start(dir.path(), &proxy, true);
    until_answered(&first, 100.0).await;
    second.start();
    second.ready().await;
    // HAProxy's next health check (every 200 ms) sees it up.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (a0, b0) = (first.answered().await, second.answered().await);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (a1, b1) = (first.answered().await, second.answered().await);
    let summary = load.finish().await;
    assert_eq!(summary["failed"], 0, "{summary}");
    let share = (b1 - b0) / ((a1 - a0) + (b1 - b0));
    eprintln!(
        "[connections] {:?}: the added replica answered {} of {} requests ({:.1} %) in 4 s; {summary}",
        connections.replace('\n', " "),
        b1 - b0,
        (a1 - a0) + (b1 - b0),
        100.0 * share
    );
    share
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_age_moves_a_connected_client_onto_an_added_replica() {
    let with_age =
        share_of_added_replica("max_age_ms = 2000\nmax_age_jitter = 0.1\nmax_age_grace_ms = 5000")
            .await;
    let without = share_of_added_replica("max_age_ms = 0").await;
    assert!(with_age >= 0.30, "with max_age_ms = 2000: {with_age}");
    assert!(without < 0.05, "without an age: {without}");
}

/// Replicas a and b, both ready, behind the proxy, with the retrying load
/// running through it.
async fn two_replicas_under_load(dir: &tempfile::TempDir) -> (Replica, Replica, Proxy, Load) {
    let mut a = Replica::new(dir.path(), "a", "");
    let mut b = Replica::new(dir.path(), "b", "");
    a.start();
    b.start();
    a.ready().await;
    b.ready().await;
    let proxy = Proxy::start(dir.path(), &[&a, &b]).await;
    let load = Load::start(dir.path(), &proxy, true);
    // The load is under way: one of the two has answered.
    let started = Instant::now();
    while a.answered().await + b.answered().await < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the load got no answer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (a, b, proxy, load)
}

/// Every request sent was answered, each the same way every time, and as
/// the replica checked against answers it.
fn assert_nothing_lost(summary: &serde_json::Value, check: &serde_json::Value) {
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["sent"], summary["answered"], "{summary}");
    assert_eq!(summary["inconsistent"], 0, "{summary}");
    assert_eq!(check["mismatches"], 0, "{check}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_loses_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, _proxy, load) = two_replicas_under_load(&dir).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The one channel's connection is on one replica: kill that one.
    let (victim, survivor) = if a.answered().await >= b.answered().await {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let before = survivor.answered().await;
    victim.kill();
    until_answered(survivor, before + 200.0).await;
    let summary = load.finish().await;
    let check = load_check(&dir, survivor).await;
    eprintln!("SIGKILL of {} under load: {summary}; {check}", victim.name);
    assert_nothing_lost(&summary, &check);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, _proxy, load) = two_replicas_under_load(&dir).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for replica in [&mut a, &mut b] {
        replica.terminate().await;
        replica.start();
        replica.ready().await;
        // Back in HAProxy's rotation before the next one stops.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let summary = load.finish().await;
    let check = load_check(&dir, &a).await;
    eprintln!("rolling restart (SIGTERM, restart, each in turn): {summary}; {check}");
    assert_nothing_lost(&summary, &check);
}

/// Asks every request the load answered (its --answers file) again,
/// directly at `replica`.
async fn load_check(dir: &tempfile::TempDir, replica: &Replica) -> serde_json::Value {
    let out = Command::new(python())
        .arg(balance_script())
        .args(["--addr", &format!("127.0.0.1:{}", replica.grpc)])
        .arg("--check")
        .arg(dir.path().join("answers.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
