//! `bench-serve`: the gRPC service under load, against the offline engine on
//! the same model, options and machine (the ceiling), and dynamic batching
//! against `max_batch_requests = 1`, all measured in one run.
//!
//! The server runs as its users run it: by default `smoothcert serve` in a
//! child process, so that requests cross a real socket between processes
//! (`--in-process` keeps it in this one; `--target ADDR` drives a server
//! already running). The clients are tonic clients in this process over a
//! few HTTP/2 connections, each of `concurrency` tasks sending one request
//! at a time (closed loop), or with `--python`, the grpc.aio load tool
//! (clients/python/load.py) in a process of its own.
pub use super::server_under_test::Placement;
use super::server_under_test::ServerUnderTest;
use crate::config::Config;
use crate::data::Split;
use crate::engine::requests::TaskParams;
use crate::engine::{Engine, Task};
use crate::model::{parse_device, Bundle};
use crate::pipeline::PipelineError;
use crate::server::pb;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::Tensor;

#[derive(Debug, Clone)]
pub struct BenchServeOptions {
    pub bundle: PathBuf,
    pub device: String,
    pub concurrency: Vec<usize>,
    /// Requests measured per concurrency level and mode.
    pub requests: usize,
    pub n0: u64,
    pub max_batch_requests: usize,
    pub max_queue_delay_ms: u64,
    /// HTTP/2 connections the client tasks share.
    pub connections: usize,
    pub data_dir: Option<PathBuf>,
    /// Load with SEQUENTIAL requests at this target radius instead of SURROGATE.
    pub target_radius: Option<f64>,
    pub placement: Placement,
    pub client: LoadClient,
}

/// What sends the requests.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadClient {
    Tonic,
    /// clients/python/load.py run by this interpreter (which needs grpcio).
    Python {
        interpreter: PathBuf,
        script: PathBuf,
    },
}

impl std::fmt::Display for LoadClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadClient::Tonic => write!(f, "tonic (Rust)"),
            LoadClient::Python { .. } => write!(f, "Python grpc.aio, one event loop"),
        }
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LoadResult {
    pub concurrency: usize,
    pub requests: usize,
    pub errors: usize,
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Mean requests per inference batch, from the responses.
    pub mean_batch: f64,
    /// CPU cores the client process used while it measured.
    pub client_cpu_cores: f64,
    /// The offline engine's rate around this level: the mean of the
    /// measurements just before and just after it (dynamic batching only), so
    /// that a machine whose speed drifts is compared with itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_per_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchServeReport {
    pub bundle: String,
    pub device: String,
    pub method: String,
    /// SEQUENTIAL's target radius, when the load was sequential.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_radius: Option<f64>,
    /// Where the server ran and what sent the requests.
    pub server: String,
    pub client: String,
    pub n0: u64,
    pub n: u64,
    pub forward_batch: i64,
    pub max_batch_requests: usize,
    pub max_queue_delay_ms: u64,
    /// Certificates per second of the engine alone, batches of
    /// `max_batch_requests` inputs: the best of the measurements taken before
    /// the first dynamic-batching level and after each.
    pub engine_per_s: f64,
    pub engine_measurements_per_s: Vec<f64>,
    pub dynamic: Vec<LoadResult>,
    pub batch_one: Vec<LoadResult>,
}

impl BenchServeReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "Service under load: server {}, client {}; bundle {}, device {}, method {} (n0 = {}, nominal n = {}), forward batch {}; \
             dynamic batching = up to {} requests or {} ms; offline engine ceiling {:.1} certificates/s \
             (measured before the first level and after each: {}); dynamic / engine compares each level \
             with the mean of the engine measurements just before and after it\n\n\
             | clients | dynamic (req/s) | p50 (ms) | p99 (ms) | mean batch | errors | client CPU (cores) | batch 1 (req/s) | p50 (ms) | p99 (ms) | errors | dynamic / batch 1 | dynamic / engine |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            self.server,
            self.client,
            self.bundle,
            self.device,
            self.method,
            self.n0,
            self.n,
            self.forward_batch,
            self.max_batch_requests,
            self.max_queue_delay_ms,
            self.engine_per_s,
            self.engine_measurements_per_s
                .iter()
                .map(|r| format!("{r:.1}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        if let Some(t) = self.target_radius {
            s = format!(
                "SEQUENTIAL at target radius {t} (n is the cap; the reference rate is one request at a time through the served path, not a ceiling)\n\n{s}"
            );
        }
        for (i, d) in self.dynamic.iter().enumerate() {
            // A --target server is measured as configured: no batch-1 row.
            let one = self.batch_one.get(i).map_or_else(
                || "| - | - | - | - | - ".to_string(),
                |b| {
                    format!(
                        "| {:.1} | {:.1} | {:.1} | {} | {:.2}x ",
                        b.per_s,
                        b.p50_ms,
                        b.p99_ms,
                        b.errors,
                        d.per_s / b.per_s
                    )
                },
            );
            s += &format!(
                "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.3} {one}| {:.0}% |\n",
                d.concurrency,
                d.per_s,
                d.p50_ms,
                d.p99_ms,
                d.mean_batch,
                d.errors,
                d.client_cpu_cores,
                100.0 * d.per_s / d.engine_per_s.unwrap_or(self.engine_per_s)
            );
        }
        s
    }
}

pub fn bench_serve(opts: &BenchServeOptions) -> Result<BenchServeReport, PipelineError> {
    if opts.concurrency.is_empty()
        || opts.concurrency.contains(&0)
        || opts.requests == 0
        || opts.connections == 0
        || opts.max_batch_requests == 0
    {
        return Err(PipelineError::Invalid(
            "--concurrency, --requests, --connections and --max-batch-requests must be at least 1"
                .into(),
        ));
    }
    let bundle = Bundle::load(&opts.bundle)?;
    let nominal = bundle
        .surrogate
        .as_ref()
        .map(|s| s.nominal_n)
        .ok_or_else(|| {
            PipelineError::Invalid(format!("{} has no surrogate", opts.bundle.display()))
        })?;
    let device = parse_device(&opts.device)?;
    let (_, ds) = crate::pipeline::bundle_dataset(&bundle, Split::Test, opts.data_dir.as_deref())?;
    let images: Arc<Vec<Vec<f32>>> = Arc::new(
        (0..ds.len().min(1000))
            .map(|i| ds.image(i).to_vec())
            .collect(),
    );
    let forward_batch = crate::model::forward_batch_for(device, 0, bundle.input_shape);
    let config = server_config(opts, forward_batch);

    let engine = |label: &str| -> Result<f64, PipelineError> {
        let rate = match opts.target_radius {
            None => engine_rate(&bundle, device, &images, opts, forward_batch, nominal)?,
            Some(target) => sequential_rate(&bundle, device, &images, opts, nominal, target)?,
        };
        tracing::info!(rate, "{label}: offline engine certificates/s");
        Ok(rate)
    };
    let probe = || engine("engine");
    let (dynamic, rates, batch_one) = load_both_modes(config, opts, &images, &probe)?;
    Ok(BenchServeReport {
        bundle: bundle.name.clone(),
        device: format!("{device:?}"),
        target_radius: opts.target_radius,
        server: opts.placement.to_string(),
        client: opts.client.to_string(),
        method: if opts.target_radius.is_some() {
            "sequential".into()
        } else {
            "surrogate".into()
        },
        n0: opts.n0,
        n: nominal,
        forward_batch,
        max_batch_requests: opts.max_batch_requests,
        max_queue_delay_ms: opts.max_queue_delay_ms,
        engine_per_s: rates.iter().copied().fold(0.0, f64::max),
        engine_measurements_per_s: rates,
        dynamic,
        batch_one,
    })
}

/// The server's configuration: the bench's batching and this one model, on
/// free loopback ports.
fn server_config(opts: &BenchServeOptions, forward_batch: i64) -> Config {
    let mut config = Config::default();
    config.server.grpc_addr = ([127, 0, 0, 1], 0).into();
    config.server.metrics_addr = ([127, 0, 0, 1], 0).into();
    config.server.grace_period_ms = 5_000;
    config.batching.max_batch_requests = opts.max_batch_requests;
    config.batching.max_queue_delay_ms = opts.max_queue_delay_ms;
    config.limits.queue_capacity = opts.concurrency.iter().max().copied().unwrap_or(1) * 2;
    // One model: the one measured.
    config.models.truncate(1);
    config.models[0].bundle = opts.bundle.clone();
    config.models[0].device = opts.device.clone();
    config.models[0].n0 = opts.n0;
    config.batching.forward_batch = forward_batch;
    config
}

/// The load runs with dynamic batching, the engine's rates around them, and
/// the runs with one request per batch (empty for a --target).
type BothModes = (Vec<LoadResult>, Vec<f64>, Vec<LoadResult>);

/// The load levels with dynamic batching (and the engine's rates around
/// them), then, unless the server is a --target, with
/// `max_batch_requests = 1`.
fn load_both_modes(
    config: Config,
    opts: &BenchServeOptions,
    images: &Arc<Vec<Vec<f32>>>,
    probe: EngineProbe<'_>,
) -> Result<BothModes, PipelineError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| PipelineError::Invalid(format!("async runtime: {e}")))?;
    let (dynamic, rates) =
        runtime.block_on(load_runs(config.clone(), opts, images.clone(), Some(probe)))?;
    let batch_one = if matches!(opts.placement, Placement::Target(_)) {
        Vec::new()
    } else {
        let mut one = config;
        one.batching.max_batch_requests = 1;
        runtime
            .block_on(load_runs(one, opts, images.clone(), None))?
            .0
    };
    drop(runtime);
    Ok((dynamic, rates, batch_one))
}

/// The engine alone: ACCELERATED over batches of `max_batch_requests` inputs.
fn engine_rate(
    bundle: &Bundle,
    device: tch::Device,
    images: &[Vec<f32>],
    opts: &BenchServeOptions,
    forward_batch: i64,
    n: u64,
) -> Result<f64, PipelineError> {
    let engine = Engine::load(bundle, device, forward_batch, true)?;
    let [c, h, w] = bundle.input_shape.map(|d| d as i64);
    let b = opts.max_batch_requests;
    let run = |start: usize| -> Result<(), PipelineError> {
        let idx: Vec<usize> = (0..b).map(|i| (start + i) % images.len()).collect();
        let pixels: Vec<f32> = idx
            .iter()
            .flat_map(|&i| images[i].iter().copied())
            .collect();
        let x = Tensor::from_slice(&pixels).view([b as i64, c, h, w]);
        let reqs: Vec<TaskParams> = (0..b)
            .map(|i| TaskParams::new(i, opts.n0, n, 0.001, (start + i) as u64))
            .collect();
        engine.run(Task::Surrogate, &x, &reqs, &mut |_| true)?;
        Ok(())
    };
    run(0)?; // warm-up
    let started = Instant::now();
    let mut done = 0;
    while done < opts.requests {
        run(done)?;
        done += b;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// SEQUENTIAL one request at a time through the served path (the same
/// lanes, no gRPC): the reference the served rate is read against.
fn sequential_rate(
    bundle: &Bundle,
    device: tch::Device,
    images: &[Vec<f32>],
    opts: &BenchServeOptions,
    n: u64,
    target: f64,
) -> Result<f64, PipelineError> {
    let offline = crate::methods::Offline::start(bundle, device, 0)?;
    let request = crate::pipeline::certify::build_offline(
        bundle,
        crate::engine::Method::Sequential,
        &crate::engine::CertifyParams {
            n0: opts.n0,
            n,
            alpha: 0.001,
            batch: 0,
        },
        None,
        crate::engine::AutoBand {
            low: crate::config::DEFAULT_AUTO_BAND.0,
            high: crate::config::DEFAULT_AUTO_BAND.1,
        },
        Some(crate::methods::Target {
            radius: target,
            guided: true,
        }),
    )?;
    let count = opts.requests.min(images.len()).min(256);
    let run = |i: usize| {
        offline.certify(
            &request.with_seed(i as u64),
            images[i % images.len()].clone(),
        )
    };
    run(0)?; // warm-up
    let started = Instant::now();
    for i in 0..count {
        run(i)?;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    offline.shutdown();
    Ok(rate)
}

/// Measures the offline engine's rate (blocking).
type EngineProbe<'a> = &'a (dyn Fn() -> Result<f64, PipelineError> + Sync);

/// The load levels against one server; with an engine probe, also the
/// engine's rate before the first level and after each.
async fn load_runs(
    config: Config,
    opts: &BenchServeOptions,
    images: Arc<Vec<Vec<f32>>>,
    engine: Option<EngineProbe<'_>>,
) -> Result<(Vec<LoadResult>, Vec<f64>), PipelineError> {
    let server = ServerUnderTest::start(config, &opts.placement).await?;
    let result = drive(&server.addr, opts, images, engine).await;
    // Stopped whether or not the load succeeded: a child must not outlive
    // the bench. The load's own error, if any, is the one reported.
    let stopped = server.stop().await;
    let result = result?;
    stopped?;
    Ok(result)
}

async fn drive(
    addr: &str,
    opts: &BenchServeOptions,
    images: Arc<Vec<Vec<f32>>>,
    engine: Option<EngineProbe<'_>>,
) -> Result<(Vec<LoadResult>, Vec<f64>), PipelineError> {
    let mut rates = EngineRates {
        probe: engine,
        rates: Vec::new(),
    };
    let results = match &opts.client {
        LoadClient::Tonic => drive_tonic(addr, opts, &images, &mut rates).await?,
        LoadClient::Python {
            interpreter,
            script,
        } => {
            if opts.target_radius.is_some() {
                return Err(PipelineError::Invalid(
                    "--python drives SURROGATE load only (no --target-radius)".into(),
                ));
            }
            rates.measure()?;
            let mut results = Vec::new();
            for (level, &concurrency) in opts.concurrency.iter().enumerate() {
                let mut r = python_level(addr, opts, interpreter, script, concurrency).await?;
                rates.measure()?;
                r.engine_per_s = rates.around(level);
                tracing::info!(?r, "load level done");
                results.push(r);
            }
            results
        }
    };
    Ok((results, rates.rates))
}

/// The offline engine's rates, measured before the first load level and
/// after each (none without a probe).
struct EngineRates<'a> {
    probe: Option<EngineProbe<'a>>,
    rates: Vec<f64>,
}

impl EngineRates<'_> {
    fn measure(&mut self) -> Result<(), PipelineError> {
        // The server idles while the engine is measured in this process.
        if let Some(probe) = self.probe {
            self.rates.push(tokio::task::block_in_place(probe)?);
        }
        Ok(())
    }

    /// The mean of the measurements just before and just after `level`.
    fn around(&self, level: usize) -> Option<f64> {
        Some((self.rates.get(level)? + self.rates.get(level + 1)?) / 2.0)
    }
}

/// The load levels from tonic clients in this process, over
/// `opts.connections` connections.
async fn drive_tonic(
    addr: &str,
    opts: &BenchServeOptions,
    images: &Arc<Vec<Vec<f32>>>,
    rates: &mut EngineRates<'_>,
) -> Result<Vec<LoadResult>, PipelineError> {
    let top = opts.concurrency.iter().max().copied().unwrap_or(1);
    let target = opts.target_radius;
    let mut channels = Vec::new();
    for _ in 0..opts.connections {
        let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| bench_err(&e))?
            .connect()
            .await
            .map_err(|e| bench_err(&e))?;
        channels.push(ch);
    }
    // Warm-up at the largest concurrency, unmeasured.
    closed_loop(&channels, images, top, top * 2, target).await;
    rates.measure()?;
    let mut results = Vec::new();
    for (level, &concurrency) in opts.concurrency.iter().enumerate() {
        let mut r = closed_loop(&channels, images, concurrency, opts.requests, target).await;
        rates.measure()?;
        r.engine_per_s = rates.around(level);
        tracing::info!(?r, "load level done");
        results.push(r);
    }
    Ok(results)
}

/// One load level from the Python load client, in a process of its own.
async fn python_level(
    addr: &str,
    opts: &BenchServeOptions,
    interpreter: &std::path::Path,
    script: &std::path::Path,
    concurrency: usize,
) -> Result<LoadResult, PipelineError> {
    let top = opts.concurrency.iter().max().copied().unwrap_or(1);
    let mut cmd = std::process::Command::new(interpreter);
    cmd.arg(script)
        .args(["--addr", addr])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--requests", &opts.requests.to_string()])
        .args(["--warmup", &(top * 2).to_string()]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| bench_err(&e))?
        .map_err(|e| bench_err(&format!("{}: {e}", interpreter.display())))?;
    if !out.status.success() {
        return Err(bench_err(&format!(
            "the Python load client failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| bench_err(&format!("the Python load client printed no result ({e})")))
}

fn bench_err(e: &dyn std::fmt::Display) -> PipelineError {
    PipelineError::Invalid(format!("bench-serve: {e}"))
}

/// A Fashion-MNIST image (1 x 28 x 28, little-endian f32 bytes) as the proto carries it.
pub(crate) fn image_tensor(data: Vec<u8>) -> pb::Tensor {
    pb::Tensor {
        shape: vec![1, 28, 28],
        data,
    }
}

/// A Certify call to the default model with these options.
pub(crate) fn certify_request(
    tensor: pb::Tensor,
    options: Option<pb::CertifyOptions>,
) -> pb::CertifyRequest {
    pb::CertifyRequest {
        model: String::new(),
        input: Some(pb::certify_request::Input::Tensor(tensor)),
        options,
        request_id: String::new(),
    }
}

/// `concurrency` clients, each sending its next request when the last is answered.
async fn closed_loop(
    channels: &[tonic::transport::Channel],
    images: &Arc<Vec<Vec<f32>>>,
    concurrency: usize,
    total: usize,
    target_radius: Option<f64>,
) -> LoadResult {
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let mut client =
            pb::certifier_client::CertifierClient::new(channels[t % channels.len()].clone())
                .max_decoding_message_size(1 << 20);
        let (next, images) = (next.clone(), images.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut batches = Vec::new();
            let mut errors = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let img = &images[i % images.len()];
                let req = certify_request(
                    image_tensor(img.iter().flat_map(|p| p.to_le_bytes()).collect()),
                    target_radius.map(|t| pb::CertifyOptions {
                        method: pb::Method::Sequential as i32,
                        target_radius: Some(t),
                        ..Default::default()
                    }),
                );
                let t0 = Instant::now();
                match client.certify(req).await {
                    Ok(r) => {
                        lat.push(t0.elapsed());
                        batches.push(r.into_inner().timing.map_or(1, |t| t.batch_size));
                    }
                    Err(_) => errors += 1,
                }
            }
            (lat, batches, errors)
        }));
    }
    let (mut lat, mut batches, mut errors) = (Vec::<Duration>::new(), Vec::new(), 0);
    for t in tasks {
        if let Ok((l, b, e)) = t.await {
            lat.extend(l);
            batches.extend(b);
            errors += e;
        } else {
            errors += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let client_cpu_cores = (process_cpu_seconds() - cpu_before) / seconds;
    lat.sort();
    let pct = |q: f64| {
        let ms: Vec<f64> = lat.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        crate::pipeline::report::nearest_rank(&ms, q)
    };
    LoadResult {
        concurrency,
        requests: lat.len(),
        errors,
        per_s: lat.len() as f64 / seconds,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        mean_batch: batches.iter().map(|&b| b as f64).sum::<f64>() / batches.len().max(1) as f64,
        client_cpu_cores,
        engine_per_s: None,
    }
}

/// User and system CPU seconds of this process so far (with an in-process
/// server, the server's too).
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage only fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
