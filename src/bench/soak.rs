//! `bench-soak`: the service under steady load for a long time, as a
//! deployment runs it. `smoothcert serve` runs in a child process with
//! deploy/base's connection age; tonic clients in this process keep
//! `concurrency` requests in flight, cycling through a mix of methods. Every
//! interval it prints a row: the server's RSS, p50 and p99 latency, errors
//! and the served rate. The verdict: no errors, and RSS after the warm-up
//! grows by at most `max_rss_growth`.
use super::serve::{certify_request, image_tensor};
use super::server_under_test::{scrape_metric, ServerUnderTest};
use crate::config::Config;
use crate::data::Split;
use crate::pipeline::PipelineError;
use crate::server::pb;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub bundle: PathBuf,
    pub device: String,
    pub duration: Duration,
    /// One row per interval.
    pub interval: Duration,
    /// Rows before this are warm-up: RSS growth is measured from its end.
    pub warm_up: Duration,
    pub concurrency: usize,
    pub connections: usize,
    pub mix: Vec<Load>,
    /// The server's `connections.max_age_ms` and `max_age_grace_ms`
    /// (deploy/base: 5 minutes each).
    pub max_age_ms: u64,
    pub max_age_grace_ms: u64,
    pub max_rss_growth: f64,
    pub data_dir: Option<PathBuf>,
    /// Clients follow the documented retry policy (see `send_with_retries`).
    pub retry: bool,
}

/// One kind of request in the mix.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Load {
    Surrogate,
    Calibrated,
    Auto,
    /// SEQUENTIAL at this target radius.
    Sequential(f64),
    /// MONTE_CARLO at this n.
    MonteCarlo(u64),
    /// PREDICT at this n.
    Predict(u64),
}

impl std::str::FromStr for Load {
    type Err = String;

    /// `surrogate`, `calibrated`, `auto`, `sequential:R`, `monte_carlo:N`, `predict:N`.
    fn from_str(s: &str) -> Result<Load, String> {
        let (name, arg) = s.split_once(':').map_or((s, None), |(a, b)| (a, Some(b)));
        let number = |what: &str| -> Result<&str, String> {
            arg.ok_or_else(|| {
                format!(
                    "{name} needs {what}, e.g. {name}:{}",
                    if name == "sequential" { "0.25" } else { "1000" }
                )
            })
        };
        let bad = |e: &dyn std::fmt::Display| format!("{s}: {e}");
        match name {
            "surrogate" => Ok(Load::Surrogate),
            "calibrated" => Ok(Load::Calibrated),
            "auto" => Ok(Load::Auto),
            "sequential" => Ok(Load::Sequential(number("a target radius")?.parse().map_err(|e| bad(&e))?)),
            "monte_carlo" => Ok(Load::MonteCarlo(number("n")?.parse().map_err(|e| bad(&e))?)),
            "predict" => Ok(Load::Predict(number("n")?.parse().map_err(|e| bad(&e))?)),
            _ => Err(format!(
                "unknown load {s:?}: surrogate, calibrated, auto, sequential:R, monte_carlo:N or predict:N"
            )),
        }
    }
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Load::Surrogate => write!(f, "surrogate"),
            Load::Calibrated => write!(f, "calibrated"),
            Load::Auto => write!(f, "auto"),
            Load::Sequential(r) => write!(f, "sequential:{r}"),
            Load::MonteCarlo(n) => write!(f, "monte_carlo:{n}"),
            Load::Predict(n) => write!(f, "predict:{n}"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakRow {
    /// Minutes since the load started, at the row's end.
    pub minute: f64,
    pub requests: usize,
    /// Requests that failed (after the retry policy, where it is on).
    pub errors: usize,
    /// Attempts retried under the policy (each request at most 4).
    pub retries: usize,
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub rss_mb: f64,
    /// Connections the server had open (its own gauge).
    pub connections_open: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub bundle: String,
    pub device: String,
    pub concurrency: usize,
    pub connections: usize,
    pub mix: Vec<String>,
    pub max_age_ms: u64,
    pub max_age_grace_ms: u64,
    pub retry: bool,
    pub rows: Vec<SoakRow>,
    /// Error counts by gRPC code, and the first message of each code.
    pub errors_by_code: std::collections::BTreeMap<String, usize>,
    pub first_errors: std::collections::BTreeMap<String, String>,
    /// The server's connections closed during the soak, by who closed them
    /// (`smoothcert_grpc_connections_closed_total`).
    pub connections_closed_by: std::collections::BTreeMap<String, f64>,
    /// RSS at the end of the warm-up, and its growth to the last row.
    pub rss_after_warm_up_mb: f64,
    pub rss_growth: f64,
    pub max_rss_growth: f64,
    pub passed: bool,
}

impl SoakReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "bench-soak: {} on {}, {} in flight over {} connection(s), mix {}, connection age {} ms (grace {} ms), client retries {}\n\n\
             | minute | requests | errors | retried | per s | p50 ms | p99 ms | RSS MB | connections |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            self.bundle,
            self.device,
            self.concurrency,
            self.connections,
            self.mix.join(","),
            self.max_age_ms,
            self.max_age_grace_ms,
            if self.retry { "on" } else { "off" }
        );
        for r in &self.rows {
            s += &format!(
                "| {:.1} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |\n",
                r.minute,
                r.requests,
                r.errors,
                r.retries,
                r.per_s,
                r.p50_ms,
                r.p99_ms,
                r.rss_mb,
                r.connections_open
            );
        }
        s += &format!(
            "\nRSS after warm-up {:.1} MB, growth to the end {:+.2} % (bound {:.0} %); errors {} {:?}: {}\n",
            self.rss_after_warm_up_mb,
            100.0 * self.rss_growth,
            100.0 * self.max_rss_growth,
            self.errors_by_code.values().sum::<usize>(),
            self.errors_by_code,
            if self.passed { "PASSED" } else { "FAILED" }
        );
        s += &format!(
            "Connections closed, by whom: {:?}\n",
            self.connections_closed_by
        );
        for (code, message) in &self.first_errors {
            s += &format!("First {code}: {message}\n");
        }
        s
    }
}

/// What the clients measured in the current interval.
#[derive(Default)]
struct Window {
    latencies_ms: Vec<f64>,
    errors: usize,
    retries: usize,
}

#[derive(Default)]
struct Tally {
    window: Window,
    errors_by_code: std::collections::BTreeMap<String, usize>,
    first_errors: std::collections::BTreeMap<String, String>,
}

pub fn bench_soak(opts: &SoakOptions) -> Result<SoakReport, PipelineError> {
    if opts.mix.is_empty() || opts.concurrency == 0 || opts.connections == 0 {
        return Err(soak_err(&"it needs a mix, concurrency and connections"));
    }
    let ds = crate::data::load(
        crate::data::DatasetKind::FashionMnist,
        &opts
            .data_dir
            .clone()
            .unwrap_or_else(|| crate::data::DatasetKind::FashionMnist.default_dir()),
        Split::Test,
    )?;
    let images: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..256.min(ds.len()))
            .map(|i| ds.image(i).iter().flat_map(|p| p.to_le_bytes()).collect())
            .collect(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| soak_err(&e))?;
    runtime.block_on(soak(opts, images))
}

fn server_config(opts: &SoakOptions) -> Config {
    let mut config = Config::default();
    config.models.truncate(1);
    config.models[0].bundle = opts.bundle.clone();
    config.models[0].device = opts.device.clone();
    config.limits.queue_capacity = opts.concurrency * 2;
    config.limits.mc_queue_capacity = opts.concurrency * 2;
    config.limits.stage_queue_capacity = opts.concurrency * 2;
    config.connections.max_age_ms = opts.max_age_ms;
    config.connections.max_age_grace_ms = opts.max_age_grace_ms;
    config
}

async fn soak(opts: &SoakOptions, images: Arc<Vec<Vec<u8>>>) -> Result<SoakReport, PipelineError> {
    let server = ServerUnderTest::start_child(&server_config(opts)).await?;
    let pid = server
        .pid()
        .ok_or_else(|| soak_err(&"the soak needs a child server"))?;
    let mut channels = Vec::new();
    for _ in 0..opts.connections {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
            .map_err(|e| soak_err(&e))?
            .connect()
            .await
            .map_err(|e| soak_err(&e))?;
        channels.push(channel);
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let end = started + opts.duration;
    let clients: Vec<_> = (0..opts.concurrency)
        .map(|t| {
            let client =
                pb::certifier_client::CertifierClient::new(channels[t % channels.len()].clone());
            tokio::spawn(client_loop(
                client,
                t,
                opts.mix.clone(),
                images.clone(),
                tally.clone(),
                end,
                opts.retry,
            ))
        })
        .collect();
    let mut rows = Vec::new();
    let mut tick = tokio::time::interval_at((started + opts.interval).into(), opts.interval);
    while Instant::now() + Duration::from_millis(10) < end {
        tick.tick().await;
        let window = {
            let mut t = tally.lock().map_err(|_| soak_err(&"a client panicked"))?;
            std::mem::take(&mut t.window)
        };
        let row = row(started, opts.interval, window, pid, server.metrics_port()).await;
        println!(
            "minute {:>5.1}: {:>6} requests, {:>3} errors, {:>3} retried, {:>6.1}/s, p50 {:>7.1} ms, p99 {:>7.1} ms, RSS {:>7.1} MB, {} connections",
            row.minute, row.requests, row.errors, row.retries, row.per_s, row.p50_ms, row.p99_ms, row.rss_mb, row.connections_open
        );
        rows.push(row);
    }
    for c in clients {
        let _ = c.await;
    }
    let mut closed_by = std::collections::BTreeMap::new();
    if let Some(port) = server.metrics_port() {
        for who in ["peer", "max_age", "max_age_grace", "shutdown"] {
            let series = format!("smoothcert_grpc_connections_closed_total{{closed_by=\"{who}\"}}");
            closed_by.insert(who.to_string(), scrape_metric(port, &series).await);
        }
    }
    server.stop().await?;
    let t = tally.lock().map_err(|_| soak_err(&"a client panicked"))?;
    let mut report = verdict(opts, rows, t.errors_by_code.clone());
    report.first_errors = t.first_errors.clone();
    report.connections_closed_by = closed_by;
    Ok(report)
}

fn verdict(
    opts: &SoakOptions,
    rows: Vec<SoakRow>,
    errors_by_code: std::collections::BTreeMap<String, usize>,
) -> SoakReport {
    let warm_rows = (opts.warm_up.as_secs_f64() / opts.interval.as_secs_f64()).round() as usize;
    let baseline = rows
        .get(warm_rows.saturating_sub(1))
        .or(rows.first())
        .map_or(0.0, |r| r.rss_mb);
    let last = rows.last().map_or(0.0, |r| r.rss_mb);
    let growth = if baseline > 0.0 {
        last / baseline - 1.0
    } else {
        0.0
    };
    let errors: usize = errors_by_code.values().sum();
    SoakReport {
        bundle: opts.bundle.display().to_string(),
        device: opts.device.clone(),
        concurrency: opts.concurrency,
        connections: opts.connections,
        mix: opts.mix.iter().map(Load::to_string).collect(),
        max_age_ms: opts.max_age_ms,
        max_age_grace_ms: opts.max_age_grace_ms,
        retry: opts.retry,
        passed: errors == 0 && growth <= opts.max_rss_growth && rows.len() > warm_rows,
        rows,
        errors_by_code,
        first_errors: Default::default(),
        connections_closed_by: Default::default(),
        rss_after_warm_up_mb: baseline,
        rss_growth: growth,
        max_rss_growth: opts.max_rss_growth,
    }
}

async fn row(
    started: Instant,
    interval: Duration,
    mut w: Window,
    pid: u32,
    metrics: Option<u16>,
) -> SoakRow {
    w.latencies_ms.sort_by(f64::total_cmp);
    let pct = |q| crate::pipeline::report::nearest_rank(&w.latencies_ms, q);
    let connections_open = match metrics {
        Some(port) => scrape_metric(port, "smoothcert_grpc_connections_open").await,
        None => f64::NAN,
    };
    SoakRow {
        minute: started.elapsed().as_secs_f64() / 60.0,
        requests: w.latencies_ms.len(),
        errors: w.errors,
        retries: w.retries,
        per_s: w.latencies_ms.len() as f64 / interval.as_secs_f64(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        rss_mb: rss_mb(pid),
        connections_open,
    }
}

/// Resident set size of `pid` from /proc (0 where it cannot be read).
fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One client: its next request as soon as the last is answered, the mix
/// taken in turn (offset by the client's index), until `end`.
async fn client_loop(
    mut client: pb::certifier_client::CertifierClient<tonic::transport::Channel>,
    index: usize,
    mix: Vec<Load>,
    images: Arc<Vec<Vec<u8>>>,
    tally: Arc<Mutex<Tally>>,
    end: Instant,
    retry: bool,
) {
    let mut i = index;
    while Instant::now() < end {
        let load = mix[i % mix.len()];
        let tensor = image_tensor(images[i % images.len()].clone());
        i += 1;
        let t0 = Instant::now();
        let (result, retries) = send_with_retries(&mut client, load, tensor, i as u64, retry).await;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let Ok(mut t) = tally.lock() else { return };
        t.window.retries += retries;
        match result {
            Ok(()) => t.window.latencies_ms.push(ms),
            Err(status) => {
                t.window.errors += 1;
                let code = format!("{:?}", status.code());
                *t.errors_by_code.entry(code.clone()).or_default() += 1;
                t.first_errors
                    .entry(code)
                    .or_insert_with(|| format!("{load}: {}", status.message()));
            }
        }
    }
}

/// The documented client retry policy (docs/DEPLOYMENT.md): up to 5
/// attempts, backoff 0.1 s doubling to 1 s, on UNAVAILABLE; and on a
/// CANCELLED that the client's transport raised, not the server (tonic's
/// connection dropped a request queued when a GOAWAY came: it never reached
/// the server). Retrying is safe: every request carries its seed.
async fn send_with_retries(
    client: &mut pb::certifier_client::CertifierClient<tonic::transport::Channel>,
    load: Load,
    tensor: pb::Tensor,
    seed: u64,
    retry: bool,
) -> (Result<(), tonic::Status>, usize) {
    let mut backoff = Duration::from_millis(100);
    let mut retries = 0;
    loop {
        let result = send(client, load, tensor.clone(), seed).await;
        let retryable = |s: &tonic::Status| {
            s.code() == tonic::Code::Unavailable
                || (s.code() == tonic::Code::Cancelled && std::error::Error::source(s).is_some())
        };
        match result {
            Err(s) if retry && retries < 4 && retryable(&s) => {
                retries += 1;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            other => return (other, retries),
        }
    }
}

async fn send(
    client: &mut pb::certifier_client::CertifierClient<tonic::transport::Channel>,
    load: Load,
    tensor: pb::Tensor,
    seed: u64,
) -> Result<(), tonic::Status> {
    let certify = |method: pb::Method, n: Option<u64>, target_radius: Option<f64>| {
        certify_request(
            tensor.clone(),
            Some(pb::CertifyOptions {
                method: method as i32,
                n,
                seed: Some(seed),
                target_radius,
                ..Default::default()
            }),
        )
    };
    let answered = match load {
        Load::Surrogate => client
            .certify(certify(pb::Method::Surrogate, None, None))
            .await
            .map(drop),
        Load::Calibrated => client
            .certify(certify(pb::Method::Calibrated, None, None))
            .await
            .map(drop),
        Load::Auto => client
            .certify(certify(pb::Method::Auto, None, None))
            .await
            .map(drop),
        Load::Sequential(r) => client
            .certify(certify(pb::Method::Sequential, None, Some(r)))
            .await
            .map(drop),
        Load::MonteCarlo(n) => client
            .certify(certify(pb::Method::MonteCarlo, Some(n), None))
            .await
            .map(drop),
        Load::Predict(n) => client
            .predict(pb::PredictRequest {
                model: String::new(),
                input: Some(pb::predict_request::Input::Tensor(tensor.clone())),
                options: Some(pb::PredictOptions {
                    n: Some(n),
                    seed: Some(seed),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .map(drop),
    };
    answered
}

fn soak_err(e: &dyn std::fmt::Display) -> PipelineError {
    PipelineError::Invalid(format!("bench-soak: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_parse_and_print_back() {
        for s in [
            "surrogate",
            "calibrated",
            "auto",
            "sequential:0.25",
            "monte_carlo:1000",
            "predict:500",
        ] {
            assert_eq!(s.parse::<Load>().unwrap().to_string(), s);
        }
        assert!("sequential"
            .parse::<Load>()
            .unwrap_err()
            .contains("sequential:0.25"));
        assert!("monte_carlo:x".parse::<Load>().is_err());
        assert!("gaussian"
            .parse::<Load>()
            .unwrap_err()
            .contains("unknown load"));
    }

    fn row(minute: f64, rss_mb: f64) -> SoakRow {
        SoakRow {
            minute,
            requests: 10,
            errors: 0,
            retries: 0,
            per_s: 1.0,
            p50_ms: 1.0,
            p99_ms: 2.0,
            rss_mb,
            connections_open: 1.0,
        }
    }

    fn opts() -> SoakOptions {
        SoakOptions {
            bundle: "b".into(),
            device: "cpu".into(),
            duration: Duration::from_secs(300),
            interval: Duration::from_secs(60),
            warm_up: Duration::from_secs(120),
            concurrency: 64,
            connections: 2,
            mix: vec![Load::Surrogate],
            max_age_ms: 0,
            max_age_grace_ms: 0,
            max_rss_growth: 0.05,
            data_dir: None,
            retry: true,
        }
    }

    /// Growth is measured from the warm-up's last row, not the first row.
    #[test]
    fn the_verdict_measures_growth_after_the_warm_up() {
        let rows = |last| {
            vec![
                row(1.0, 100.0),
                row(2.0, 200.0),
                row(3.0, 205.0),
                row(4.0, last),
            ]
        };
        let ok = verdict(&opts(), rows(209.0), Default::default());
        assert!(ok.passed, "{}", ok.markdown());
        assert!((ok.rss_growth - 0.045).abs() < 1e-9);
        assert!(!verdict(&opts(), rows(211.0), Default::default()).passed);
        let errors = [("Unavailable".to_string(), 1)].into_iter().collect();
        assert!(!verdict(&opts(), rows(200.0), errors).passed);
        // Nothing after the warm-up: no verdict to give.
        assert!(!verdict(&opts(), rows(200.0)[..2].to_vec(), Default::default()).passed);
    }
}
