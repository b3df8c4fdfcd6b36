//! Dynamic batching: per model, bounded queues that feed inference threads.
//!
//! Each model has two lanes, each with its own queue and its own thread:
//! - the fast lane runs SURROGATE certificates (n0 noisy passes per request
//!   plus one surrogate pass per batch);
//! - the slow lane runs MONTE_CARLO certificates and PREDICT (n0 + n passes),
//!   so that a long Monte Carlo request never holds up surrogate requests.
//!   It takes one request at a time: n samples of one input already fill the
//!   forward batches, and a request batched with others would wait for all
//!   of them.
//!
//! A surrogate batch closes when it holds `max_batch_requests` requests or
//! `max_queue_delay` after its first request arrived. Inference runs on these
//! threads, never on the async runtime; answers go back over oneshot channels.
//! A full queue refuses at once, and a request whose caller has gone or whose
//! deadline has passed is dropped before, or while, its samples are drawn.
use crate::engine::requests::{self, BatchTiming, PassCounts, RequestParams, Selected};
use crate::engine::{EngineError, McCertificate, Prediction, SurrogateEstimate};
use crate::metrics::Metrics;
use crate::model::{Bundle, Classifier, ModelError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};
use tokio::sync::oneshot;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error(
        "the {lane} queue of model {model} is full ({capacity} requests waiting); retry later"
    )]
    QueueFull {
        model: String,
        lane: &'static str,
        capacity: usize,
    },
    #[error("the deadline passed before the request could run")]
    DeadlineExceeded,
    #[error("model {0} is shutting down")]
    Unavailable(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("model {model} failed to load: {source}")]
    Load { model: String, source: ModelError },
}

/// What a request asks the engine for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    Surrogate,
    MonteCarlo,
    Predict,
}

impl Work {
    pub fn as_str(self) -> &'static str {
        match self {
            Work::Surrogate => "surrogate",
            Work::MonteCarlo => "monte_carlo",
            Work::Predict => "predict",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Surrogate(SurrogateEstimate, Selected),
    MonteCarlo(McCertificate, Selected),
    Predict(Prediction),
}

/// One request's answer and where its time went.
#[derive(Debug, Clone)]
pub struct Answer {
    pub outcome: Outcome,
    pub queue: Duration,
    pub timing: BatchTiming,
    pub batch_size: usize,
}

/// One request waiting for its batch.
pub struct Job {
    pub work: Work,
    /// The input's pixels, [C, H, W] flattened, already validated.
    pub pixels: Vec<f32>,
    pub n0: u64,
    pub n: u64,
    pub alpha: f64,
    pub seed: u64,
    /// CALIBRATED's adjustment of p_hat[cA].
    pub shift: Option<crate::smoothing::CalibrationShift>,
    pub adaptive: Option<crate::smoothing::SequentialSelection>,
    /// cA chosen already (AUTO's fallback): no selection samples.
    pub class_a: Option<usize>,
    pub deadline: Instant,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Result<Answer, BatchError>>,
}

impl Job {
    /// The caller gave up (its future was dropped) or the deadline passed.
    fn abandoned(&self) -> bool {
        self.reply.is_closed() || Instant::now() >= self.deadline
    }
}

/// The forward batch for a device: `configured`, or when 0 the size that suits
/// it (32 on a CPU, where small batches are fastest; 4096 on a GPU).
pub fn forward_batch_for(device: Device, configured: i64) -> i64 {
    match configured {
        0 if device.is_cuda() => 4096,
        0 => 32,
        fb => fb,
    }
}

#[derive(Debug, Clone)]
pub struct BatchingOptions {
    pub max_batch_requests: usize,
    pub max_queue_delay: Duration,
    pub forward_batch: i64,
    pub queue_capacity: usize,
    pub mc_queue_capacity: usize,
}

/// The sending side of one lane.
struct Lane {
    name: &'static str,
    tx: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
}

/// A loaded model's lanes; dropping it lets the threads finish what is queued and exit.
pub struct ModelWorkers {
    model: String,
    fast: Lane,
    slow: Lane,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ModelWorkers {
    /// Starts both lanes' threads; each loads its own copy of the models on
    /// its thread and warms them up. Returns once both are ready, or with the
    /// first load error.
    pub fn start(
        name: &str,
        bundle: &Bundle,
        device: Device,
        opts: &BatchingOptions,
        metrics: Arc<Metrics>,
    ) -> Result<ModelWorkers, BatchError> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut threads = Vec::new();
        let lane = |lane_name: &'static str, capacity: usize, with_surrogate: bool| {
            let (tx, rx) = mpsc::sync_channel::<Job>(capacity);
            let depth = Arc::new(AtomicUsize::new(0));
            let worker = Worker {
                model: name.to_string(),
                lane: lane_name,
                bundle: bundle.clone(),
                device,
                opts: opts.clone(),
                depth: depth.clone(),
                metrics: metrics.clone(),
            };
            let ready = ready_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("{lane_name}-{name}"))
                .spawn(move || worker.run(rx, with_surrogate, ready));
            (
                Lane {
                    name: lane_name,
                    tx,
                    depth,
                    capacity,
                },
                handle,
            )
        };
        let (fast, h1) = lane("surrogate", opts.queue_capacity, true);
        let (slow, h2) = lane("monte_carlo", opts.mc_queue_capacity, false);
        for h in [h1, h2] {
            threads.push(h.map_err(|e| BatchError::Load {
                model: name.to_string(),
                source: ModelError::Torch(format!("cannot start a thread: {e}")),
            })?);
        }
        drop(ready_tx);
        for _ in 0..2 {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(source)) => {
                    return Err(BatchError::Load {
                        model: name.to_string(),
                        source,
                    })
                }
                Err(_) => {
                    return Err(BatchError::Load {
                        model: name.to_string(),
                        source: ModelError::Torch("an inference thread died while loading".into()),
                    })
                }
            }
        }
        Ok(ModelWorkers {
            model: name.to_string(),
            fast,
            slow,
            threads,
        })
    }

    /// Queues a job on its lane, or refuses at once when the lane is full.
    pub fn submit(&self, job: Job) -> Result<(), BatchError> {
        let lane = match job.work {
            Work::Surrogate => &self.fast,
            Work::MonteCarlo | Work::Predict => &self.slow,
        };
        lane.depth.fetch_add(1, Ordering::SeqCst);
        match lane.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                lane.depth.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => BatchError::QueueFull {
                        model: self.model.clone(),
                        lane: lane.name,
                        capacity: lane.capacity,
                    },
                    TrySendError::Disconnected(_) => BatchError::Unavailable(self.model.clone()),
                })
            }
        }
    }

    /// Requests waiting in each lane (fast, slow).
    pub fn queue_depths(&self) -> (usize, usize) {
        (
            self.fast.depth.load(Ordering::SeqCst),
            self.slow.depth.load(Ordering::SeqCst),
        )
    }

    /// Closes the queues and waits for the threads to finish the queued work.
    pub fn shutdown(self) {
        let ModelWorkers {
            fast,
            slow,
            threads,
            ..
        } = self;
        drop((fast, slow));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// The receiving side of one lane, on its own thread.
struct Worker {
    model: String,
    lane: &'static str,
    bundle: Bundle,
    device: Device,
    opts: BatchingOptions,
    depth: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

struct Models {
    base: Classifier,
    surrogate: Option<Classifier>,
}

impl Worker {
    fn run(
        self,
        rx: mpsc::Receiver<Job>,
        with_surrogate: bool,
        ready: mpsc::Sender<Result<(), ModelError>>,
    ) {
        let models = match self.load(with_surrogate) {
            Ok(m) => m,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        drop(ready);
        let max_batch = if with_surrogate {
            self.opts.max_batch_requests
        } else {
            1
        };
        while let Some(jobs) = self.next_batch(&rx, max_batch) {
            // libtorch ops that panic (a CUDA out-of-memory inside a module's
            // forward) must not take the lane down: the batch fails, the lane
            // goes on. The replies are dropped with the jobs, which callers
            // see as an internal error.
            let run = std::panic::AssertUnwindSafe(|| self.run_batch(&models, jobs));
            if let Err(panic) = std::panic::catch_unwind(run) {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown");
                tracing::error!(model = %self.model, lane = self.lane, panic = what, "inference panicked; batch failed");
            }
        }
    }

    /// Loads the models on this thread and runs one small batch through them,
    /// so the first request does not pay for allocation and kernel selection.
    fn load(&self, with_surrogate: bool) -> Result<Models, ModelError> {
        let base = Classifier::load(&self.bundle, self.device)?;
        let surrogate = match (&self.bundle.surrogate, with_surrogate) {
            (Some(_), true) => Some(Classifier::load_surrogate(&self.bundle, self.device)?),
            _ => None,
        };
        let [c, h, w] = self.bundle.input_shape.map(|d| d as i64);
        let x = Tensor::f_full([1, c, h, w], 0.5, (Kind::Float, self.device))?;
        let warm = [RequestParams::new(
            0,
            self.opts.forward_batch as u64,
            1,
            0.5,
            0,
        )];
        let sigma = self.bundle.sigma();
        let fb = self.opts.forward_batch;
        let engine_err = |e: EngineError| ModelError::Torch(e.to_string());
        match &surrogate {
            Some(s) => {
                requests::certify_surrogate(&base, s, sigma, &x, &warm, fb, &mut |_| true)
                    .map_err(engine_err)?;
            }
            None => {
                requests::certify_mc(&base, sigma, &x, &warm, fb, &mut |_| true)
                    .map_err(engine_err)?;
            }
        }
        Ok(Models { base, surrogate })
    }

    /// Blocks for the first job, then gathers more until the batch is full or
    /// `max_queue_delay` after the first job's arrival. `None`: queue closed.
    fn next_batch(&self, rx: &mpsc::Receiver<Job>, max_batch: usize) -> Option<Vec<Job>> {
        let first = rx.recv().ok()?;
        let close_at = first.enqueued + self.opts.max_queue_delay;
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            let now = Instant::now();
            let next = if now >= close_at {
                rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
            } else {
                rx.recv_timeout(close_at - now)
            };
            match next {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        self.depth.fetch_sub(jobs.len(), Ordering::SeqCst);
        Some(jobs)
    }

    fn run_batch(&self, models: &Models, jobs: Vec<Job>) {
        let started = Instant::now();
        // Abandoned jobs are answered (if anyone listens) and not run.
        let (jobs, abandoned): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|j| !j.abandoned());
        for job in abandoned {
            self.metrics.dropped(&self.model, job.work.as_str());
            let _ = job.reply.send(Err(BatchError::DeadlineExceeded));
        }
        // A lane's batch may mix MONTE_CARLO and PREDICT: run each kind together.
        let mut by_work: Vec<(Work, Vec<Job>)> = Vec::new();
        for job in jobs {
            match by_work.iter_mut().find(|(w, _)| *w == job.work) {
                Some((_, v)) => v.push(job),
                None => by_work.push((job.work, vec![job])),
            }
        }
        for (work, jobs) in by_work {
            self.run_group(models, work, jobs, started);
        }
    }

    fn run_group(&self, models: &Models, work: Work, jobs: Vec<Job>, started: Instant) {
        let size = jobs.len();
        self.metrics.batch(&self.model, work.as_str(), size);
        let result = self.infer(models, work, &jobs);
        match result {
            Ok((outcomes, timing, passes)) => {
                self.metrics
                    .passes(&self.model, passes.base, passes.surrogate);
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    let queue = started.saturating_duration_since(job.enqueued);
                    self.metrics.queue_time(&self.model, work.as_str(), queue);
                    let answer = match outcome {
                        Some(outcome) => Ok(Answer {
                            outcome,
                            queue,
                            timing,
                            batch_size: size,
                        }),
                        None => {
                            self.metrics.dropped(&self.model, work.as_str());
                            Err(BatchError::DeadlineExceeded)
                        }
                    };
                    let _ = job.reply.send(answer);
                }
            }
            Err(e) => {
                tracing::error!(model = %self.model, lane = self.lane, error = %e, "batch failed");
                for job in jobs {
                    let _ = job.reply.send(Err(BatchError::Engine(e.clone())));
                }
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn infer(
        &self,
        models: &Models,
        work: Work,
        jobs: &[Job],
    ) -> Result<(Vec<Option<Outcome>>, BatchTiming, PassCounts), EngineError> {
        let [c, h, w] = self.bundle.input_shape.map(|d| d as i64);
        let pixels: Vec<f32> = jobs.iter().flat_map(|j| j.pixels.iter().copied()).collect();
        let inputs = Tensor::f_from_slice(&pixels)
            .and_then(|t| t.f_view([jobs.len() as i64, c, h, w]))
            .map_err(ModelError::from)?;
        let reqs: Vec<RequestParams> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| RequestParams {
                shift: j.shift,
                adaptive: j.adaptive,
                class_a: j.class_a,
                ..RequestParams::new(i, j.n0, j.n, j.alpha, j.seed)
            })
            .collect();
        let sigma = self.bundle.sigma();
        let fb = self.opts.forward_batch;
        let mut keep = |s: usize| jobs.get(s).is_some_and(|j| !j.abandoned());
        Ok(match work {
            Work::Surrogate => {
                let surrogate =
                    models
                        .surrogate
                        .as_ref()
                        .ok_or_else(|| EngineError::InvalidParam {
                            field: "method",
                            message: format!("model {} has no surrogate", self.model),
                        })?;
                let (out, t, p) = requests::certify_surrogate(
                    &models.base,
                    surrogate,
                    sigma,
                    &inputs,
                    &reqs,
                    fb,
                    &mut keep,
                )?;
                (
                    out.into_iter()
                        .map(|o| o.map(|(e, s)| Outcome::Surrogate(e, s)))
                        .collect(),
                    t,
                    p,
                )
            }
            Work::MonteCarlo => {
                let (out, t, p) =
                    requests::certify_mc(&models.base, sigma, &inputs, &reqs, fb, &mut keep)?;
                (
                    out.into_iter()
                        .map(|o| o.map(|(c, s)| Outcome::MonteCarlo(c, s)))
                        .collect(),
                    t,
                    p,
                )
            }
            Work::Predict => {
                let (out, t, p) =
                    requests::predict(&models.base, sigma, &inputs, &reqs, fb, &mut keep)?;
                (
                    out.into_iter().map(|o| o.map(Outcome::Predict)).collect(),
                    t,
                    p,
                )
            }
        })
    }
}
