//! `bench-serve`: the gRPC service under load, against the offline engine on
//! the same model, options and machine (the ceiling), and dynamic batching
//! against `max_batch_requests = 1`, all measured in one run.
//!
//! Clients are tonic clients in this process over a few HTTP/2 connections,
//! each of `concurrency` tasks sending one request at a time (closed loop),
//! with real test images as tensors.
use crate::config::Config;
use crate::data::{self, Split};
use crate::engine::requests::RequestParams;
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
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub concurrency: usize,
    pub requests: usize,
    pub errors: usize,
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Mean requests per inference batch, from the responses.
    pub mean_batch: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchServeReport {
    pub bundle: String,
    pub device: String,
    pub method: String,
    /// SEQUENTIAL's target radius, when the load was sequential.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_radius: Option<f64>,
    pub n0: u64,
    pub n: u64,
    pub forward_batch: i64,
    pub max_batch_requests: usize,
    pub max_queue_delay_ms: u64,
    /// Certificates per second of the engine alone, batches of
    /// `max_batch_requests` inputs: best of a measurement before and after the load runs.
    pub engine_per_s: f64,
    pub engine_before_after_per_s: [f64; 2],
    pub dynamic: Vec<LoadResult>,
    pub batch_one: Vec<LoadResult>,
}

impl BenchServeReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "Service under load: bundle {}, device {}, method {} (n0 = {}, nominal n = {}), forward batch {}; \
             dynamic batching = up to {} requests or {} ms; offline engine ceiling {:.1} certificates/s \
             (before {:.1}, after {:.1})\n\n\
             | clients | dynamic (req/s) | p50 (ms) | p99 (ms) | mean batch | errors | batch 1 (req/s) | p50 (ms) | p99 (ms) | errors | dynamic / batch 1 | dynamic / engine |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            self.bundle,
            self.device,
            self.method,
            self.n0,
            self.n,
            self.forward_batch,
            self.max_batch_requests,
            self.max_queue_delay_ms,
            self.engine_per_s,
            self.engine_before_after_per_s[0],
            self.engine_before_after_per_s[1],
        );
        if let Some(t) = self.target_radius {
            s = format!(
                "SEQUENTIAL at target radius {t} (n is the cap; the reference rate is one request at a time through the served path, not a ceiling)\n\n{s}"
            );
        }
        for (d, b) in self.dynamic.iter().zip(&self.batch_one) {
            s += &format!(
                "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {} | {:.2}x | {:.0}% |\n",
                d.concurrency,
                d.per_s,
                d.p50_ms,
                d.p99_ms,
                d.mean_batch,
                d.errors,
                b.per_s,
                b.p50_ms,
                b.p99_ms,
                b.errors,
                d.per_s / b.per_s,
                100.0 * d.per_s / self.engine_per_s
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
    let kind = bundle.provenance.dataset.ok_or_else(|| {
        PipelineError::Invalid("the bundle names no dataset to draw test images from".into())
    })?;
    let dir = opts.data_dir.clone().unwrap_or_else(|| kind.default_dir());
    let ds = data::load(kind, &dir, Split::Test)?;
    let images: Arc<Vec<Vec<f32>>> = Arc::new(
        (0..ds.len().min(1000))
            .map(|i| ds.image(i).to_vec())
            .collect(),
    );

    let mut config = Config::default();
    config.server.grpc_addr = ([127, 0, 0, 1], 0).into();
    config.server.metrics_addr = ([127, 0, 0, 1], 0).into();
    config.server.grace_period_ms = 5_000;
    config.batching.max_batch_requests = opts.max_batch_requests;
    config.batching.max_queue_delay_ms = opts.max_queue_delay_ms;
    config.limits.queue_capacity = opts.concurrency.iter().max().copied().unwrap_or(1) * 2;
    config.models[0].bundle = opts.bundle.clone();
    config.models[0].device = opts.device.clone();
    config.models[0].n0 = opts.n0;
    let forward_batch = crate::batcher::forward_batch_for(device, 0);
    config.batching.forward_batch = forward_batch;

    let engine = |label: &str| -> Result<f64, PipelineError> {
        let rate = match opts.target_radius {
            None => engine_rate(&bundle, device, &images, opts, forward_batch, nominal)?,
            Some(target) => sequential_rate(&bundle, device, &images, opts, nominal, target)?,
        };
        tracing::info!(rate, "{label}: offline engine certificates/s");
        Ok(rate)
    };
    let before = engine("before")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| PipelineError::Invalid(format!("async runtime: {e}")))?;
    let dynamic = runtime.block_on(load_runs(config.clone(), opts, images.clone()))?;
    let mut one = config;
    one.batching.max_batch_requests = 1;
    let batch_one = runtime.block_on(load_runs(one, opts, images.clone()))?;
    drop(runtime);
    let after = engine("after")?;
    Ok(BenchServeReport {
        bundle: bundle.name.clone(),
        device: format!("{device:?}"),
        target_radius: opts.target_radius,
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
        engine_per_s: before.max(after),
        engine_before_after_per_s: [before, after],
        dynamic,
        batch_one,
    })
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
        let reqs: Vec<RequestParams> = (0..b)
            .map(|i| RequestParams::new(i, opts.n0, n, 0.001, (start + i) as u64))
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
    let offline = crate::batcher::Offline::start(
        bundle,
        device,
        0,
        crate::engine::AutoBand {
            low: crate::config::DEFAULT_AUTO_BAND.0,
            high: crate::config::DEFAULT_AUTO_BAND.1,
        },
    )?;
    let count = opts.requests.min(images.len()).min(256);
    let run = |i: usize| {
        offline.certify(
            crate::engine::Method::Sequential,
            images[i % images.len()].clone(),
            RequestParams::new(0, opts.n0, n, 0.001, i as u64),
            Some(crate::batcher::Target {
                radius: target,
                guided: true,
            }),
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

async fn load_runs(
    config: Config,
    opts: &BenchServeOptions,
    images: Arc<Vec<Vec<f32>>>,
) -> Result<Vec<LoadResult>, PipelineError> {
    let err = |e: &dyn std::fmt::Display| PipelineError::Invalid(format!("bench-serve: {e}"));
    let server = crate::server::start(config).await.map_err(|e| err(&e))?;
    server.ready().await.map_err(|e| err(&e))?;
    let mut channels = Vec::new();
    for _ in 0..opts.connections {
        let ch = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
            .map_err(|e| err(&e))?
            .connect()
            .await
            .map_err(|e| err(&e))?;
        channels.push(ch);
    }
    let mut results = Vec::new();
    // Warm-up at the largest concurrency, unmeasured.
    let top = opts.concurrency.iter().max().copied().unwrap_or(1);
    let target = opts.target_radius;
    closed_loop(&channels, &images, top, top * 2, target).await;
    for &concurrency in &opts.concurrency {
        results.push(closed_loop(&channels, &images, concurrency, opts.requests, target).await);
        tracing::info!(?results, "load level done");
    }
    server.shutdown();
    server.wait().await.map_err(|e| err(&e))?;
    Ok(results)
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
                let req = pb::CertifyRequest {
                    model: String::new(),
                    input: Some(pb::certify_request::Input::Tensor(pb::Tensor {
                        shape: vec![1, 28, 28],
                        data: img.iter().flat_map(|p| p.to_le_bytes()).collect(),
                    })),
                    options: target_radius.map(|t| pb::CertifyOptions {
                        method: pb::Method::Sequential as i32,
                        target_radius: Some(t),
                        ..Default::default()
                    }),
                    request_id: String::new(),
                };
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
    }
}
