//! Dynamic batching: per model, bounded queues that feed inference threads,
//! and the one place a request of any method is carried out (AUTO's two
//! steps included) for the server, offline `certify` and the benchmarks.
//!
//! Each model has two lanes, each with its own queue and its own thread
//! owning its own [`Engine`]:
//! - the surrogate lane runs surrogate tasks (n0 noisy passes per request
//!   plus one surrogate pass per batch);
//! - the Monte Carlo lane runs Monte Carlo certificates and PREDICT (n0 + n
//!   passes), so that a long Monte Carlo request never holds up surrogate
//!   requests. It takes one request at a time: n samples of one input already
//!   fill the forward batches, and a request batched with others would wait
//!   for all of them.
//!
//! A surrogate batch closes when it holds `max_batch_requests` requests or
//! `max_queue_delay` after its first request arrived. Inference runs on these
//! threads, never on the async runtime; answers go back over oneshot channels.
//! A full queue refuses at once, and a request whose caller has gone or whose
//! deadline has passed is dropped before, or while, its samples are drawn.
use crate::engine::requests::{BatchTiming, RequestParams, Selected, Slice};
use crate::engine::{
    sequential_test, AutoBand, Engine, EngineError, Method, Outcome, SequentialCertificate, Task,
};
use crate::metrics::Metrics;
use crate::model::{Bundle, ModelError};
use crate::smoothing::sequential::SequentialDecision;
use crate::smoothing::{AbstainReason, Decision};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Tensor};
use tokio::sync::oneshot;

/// Why a request got no answer from its lane. `Clone`: one failed batch
/// answers every request in it.
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
    #[error("deadline exceeded after {} ms; the work was dropped", waited.as_millis())]
    DeadlineExceeded { waited: Duration },
    #[error("model {0} is shutting down")]
    ShuttingDown(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The request's method needs a part the model's bundle lacks.
    #[error("model {model} cannot serve {method}: it has no surrogate")]
    Unsupported { model: String, method: Method },
    /// The batch panicked inside libtorch (logged); the lane goes on, and a
    /// retry may well succeed.
    #[error("the {lane} batch of model {model} failed ({reason}); retry")]
    BatchPanicked {
        model: String,
        lane: &'static str,
        reason: String,
    },
}

/// Why a model's lanes could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the {lane} thread of model {model}: {source}")]
    Spawn {
        model: String,
        lane: &'static str,
        source: std::io::Error,
    },
    #[error("model {model} failed to load on its {lane} lane: {source}")]
    Load {
        model: String,
        lane: &'static str,
        source: EngineError,
    },
    #[error("the {lane} thread of model {model} died while loading")]
    Died { model: String, lane: &'static str },
}

/// The three queues of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Surrogate,
    MonteCarlo,
    /// Stage slices of sequential tests: many requests' slices share a
    /// batch, and no batch holds more than a slice's worth of samples, so a
    /// request that needs a few hundred samples never waits behind one that
    /// needs a hundred thousand.
    Sequential,
}

impl Lane {
    pub fn of(task: Task) -> Lane {
        match task {
            Task::Surrogate => Lane::Surrogate,
            Task::MonteCarlo | Task::Predict => Lane::MonteCarlo,
            Task::Stage => Lane::Sequential,
        }
    }

    /// Metrics label and thread name.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Surrogate => "surrogate",
            Lane::MonteCarlo => "monte_carlo",
            Lane::Sequential => "sequential",
        }
    }
}

/// One request's answer and where its time went.
#[derive(Debug, Clone)]
pub struct Answer {
    pub outcome: Outcome,
    /// The method that produced the outcome (AUTO answers as CALIBRATED or
    /// MONTE_CARLO).
    pub method: Method,
    pub queue: Duration,
    pub timing: BatchTiming,
    pub batch_size: usize,
}

/// What a request asks of a model, whatever its method; `params.input` is ignored.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// The input's pixels, [C, H, W] flattened, already validated.
    pub pixels: Vec<f32>,
    pub params: RequestParams,
    /// SEQUENTIAL, and AUTO's Monte Carlo step: the radius to certify.
    pub target: Option<Target>,
    pub deadline: Instant,
}

/// A radius to certify exactly, and whether the surrogate may size the test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    pub radius: f64,
    /// Use the surrogate's p_hat to size the stages (the default); false
    /// runs the plain schedule (for comparison).
    pub guided: bool,
}

/// One request waiting for its batch.
struct Job {
    task: Task,
    pixels: Vec<f32>,
    params: RequestParams,
    deadline: Instant,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Answer, BatchError>>,
}

impl Job {
    /// The caller gave up (its future was dropped) or the deadline passed.
    fn abandoned(&self) -> bool {
        self.reply.is_closed() || Instant::now() >= self.deadline
    }
}

/// The forward batch for a device: `configured`, or when 0 the size that suits
/// it and the model's `input` [C, H, W]: 32 on a CPU (where small batches are
/// fastest, and which any model fits); on a GPU 4096 inputs of up to
/// 3 x 32 x 32 pixels, fewer in proportion for larger ones (at least 64:
/// 83 for 3 x 224 x 224), so that a ResNet's activations stay within a few GB.
pub fn forward_batch_for(device: Device, configured: i64, input: [usize; 3]) -> i64 {
    const GPU_BATCH: i64 = 4096;
    const GPU_PIXELS: i64 = GPU_BATCH * 3 * 32 * 32;
    let pixels = input.iter().product::<usize>().max(1) as i64;
    match configured {
        0 if device.is_cuda() => (GPU_PIXELS / pixels).clamp(64, GPU_BATCH),
        0 => 32,
        fb => fb,
    }
}

/// A deadline for work nobody waits on with a clock (offline runs).
pub fn no_deadline() -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_secs(10 * 365 * 86_400))
        .unwrap_or(now)
}

#[derive(Debug, Clone)]
pub struct BatchingOptions {
    pub max_batch_requests: usize,
    pub max_queue_delay: Duration,
    pub forward_batch: i64,
    pub queue_capacity: usize,
    pub mc_queue_capacity: usize,
    pub sequential_queue_capacity: usize,
}

/// The most estimation samples one stage slice draws: several forward
/// batches, and about a second of a CPU core.
pub fn stage_slice(forward_batch: i64) -> u64 {
    (4 * forward_batch.max(1) as u64).max(4096)
}

impl BatchingOptions {
    /// One request at a time, as offline runs and benchmarks send them.
    pub fn sequential(device: Device, forward_batch: i64, input: [usize; 3]) -> BatchingOptions {
        BatchingOptions {
            max_batch_requests: 1,
            max_queue_delay: Duration::ZERO,
            forward_batch: forward_batch_for(device, forward_batch, input),
            queue_capacity: 64,
            mc_queue_capacity: 64,
            sequential_queue_capacity: 64,
        }
    }
}

/// The sending side of one lane.
struct LaneTx {
    lane: Lane,
    tx: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
}

/// A loaded model's lanes; `shutdown` lets the threads finish what is queued and exit.
pub struct ModelWorkers {
    model: String,
    has_surrogate: bool,
    sigma: f64,
    stage_slice: u64,
    auto_band: AutoBand,
    metrics: Arc<Metrics>,
    surrogate: LaneTx,
    monte_carlo: LaneTx,
    sequential: LaneTx,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ModelWorkers {
    /// Starts both lanes' threads; each loads its own engine on its thread
    /// and warms it up. Returns once both are ready, or with the first error.
    pub fn start(
        name: &str,
        bundle: &Bundle,
        device: Device,
        opts: &BatchingOptions,
        auto_band: AutoBand,
        metrics: Arc<Metrics>,
    ) -> Result<ModelWorkers, StartError> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut threads = Vec::new();
        let mut start_lane = |lane: Lane, capacity: usize| -> Result<LaneTx, StartError> {
            let (tx, rx) = mpsc::sync_channel::<Job>(capacity);
            let depth = Arc::new(AtomicUsize::new(0));
            let worker = Worker {
                model: name.to_string(),
                lane,
                bundle: bundle.clone(),
                device,
                opts: opts.clone(),
                depth: depth.clone(),
                metrics: metrics.clone(),
            };
            let ready = ready_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("{}-{name}", lane.as_str()))
                .spawn(move || worker.run(rx, ready))
                .map_err(|source| StartError::Spawn {
                    model: name.to_string(),
                    lane: lane.as_str(),
                    source,
                })?;
            threads.push(handle);
            Ok(LaneTx {
                lane,
                tx,
                depth,
                capacity,
            })
        };
        let surrogate = start_lane(Lane::Surrogate, opts.queue_capacity)?;
        let monte_carlo = start_lane(Lane::MonteCarlo, opts.mc_queue_capacity)?;
        let sequential = start_lane(Lane::Sequential, opts.sequential_queue_capacity)?;
        drop(ready_tx);
        let workers = ModelWorkers {
            model: name.to_string(),
            has_surrogate: bundle.surrogate.is_some(),
            sigma: bundle.sigma(),
            stage_slice: stage_slice(opts.forward_batch),
            auto_band,
            metrics,
            surrogate,
            monte_carlo,
            sequential,
            threads,
        };
        for _ in 0..3 {
            let failed = match ready_rx.recv() {
                Ok(Ok(())) => continue,
                Ok(Err((lane, source))) => StartError::Load {
                    model: name.to_string(),
                    lane: lane.as_str(),
                    source,
                },
                Err(_) => StartError::Died {
                    model: name.to_string(),
                    lane: "inference",
                },
            };
            workers.shutdown();
            return Err(failed);
        }
        Ok(workers)
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// Carries out one certificate request of any method: its first task, and
    /// for AUTO, where [`AutoBand::fallback`] says so, Monte Carlo with the
    /// same cA. The answer accounts for both steps.
    pub async fn certify(&self, req: Request) -> Result<Answer, BatchError> {
        let Request {
            method,
            pixels,
            params,
            target,
            deadline,
        } = req;
        if method.needs_surrogate() && !self.has_surrogate {
            return Err(BatchError::Unsupported {
                model: self.model.clone(),
                method,
            });
        }
        if method == Method::Sequential {
            let target = target.ok_or(EngineError::InvalidParam {
                field: "target_radius",
                message: "SEQUENTIAL needs a target radius".into(),
            })?;
            return self
                .certify_sequential(pixels, params, target, deadline, None)
                .await;
        }
        if method != Method::Auto {
            let mut answer = self
                .call(method.first_task(), pixels, params, deadline)
                .await?;
            answer.method = method.answered_by(&answer.outcome);
            return Ok(answer);
        }
        // AUTO keeps the pixels for a possible second step.
        let first = self
            .call(Task::Surrogate, pixels.clone(), params, deadline)
            .await?;
        let Some(class_a) = self.auto_band.fallback(&first.outcome) else {
            self.metrics.auto_path(&self.model, Method::Calibrated);
            return Ok(Answer {
                method: Method::Calibrated,
                ..first
            });
        };
        if let Some(target) = target {
            self.metrics.auto_path(&self.model, Method::Sequential);
            let fallback = RequestParams {
                shift: None,
                ..params
            };
            return self
                .certify_sequential(pixels, fallback, target, deadline, Some(first))
                .await;
        }
        self.metrics.auto_path(&self.model, Method::MonteCarlo);
        let fallback = RequestParams {
            class_a: Some(class_a),
            ..params
        };
        let mut answer = self
            .call(Task::MonteCarlo, pixels, fallback, deadline)
            .await?;
        if let Outcome::MonteCarlo(_, sel) = &mut answer.outcome {
            sel.drawn = first.outcome.n0_drawn();
        }
        answer.method = Method::MonteCarlo;
        answer.queue += first.queue;
        answer.timing.sampling += first.timing.sampling;
        answer.timing.surrogate += first.timing.surrogate;
        Ok(answer)
    }

    /// SEQUENTIAL: cA and the surrogate's guide from a surrogate task (or
    /// from `first`, AUTO's calibrated step; or from selection samples when
    /// there is no surrogate), the schedule fixed from them, then the
    /// stages, each drawn in slices on the sequential lane, until the test
    /// stops. `params.n` is the cap.
    async fn certify_sequential(
        &self,
        pixels: Vec<f32>,
        params: RequestParams,
        target: Target,
        deadline: Instant,
        first: Option<Answer>,
    ) -> Result<Answer, BatchError> {
        let first = match first {
            Some(a) => Some(a),
            None if self.has_surrogate => {
                let plain = RequestParams {
                    shift: None,
                    ..params
                };
                Some(
                    self.call(Task::Surrogate, pixels.clone(), plain, deadline)
                        .await?,
                )
            }
            None => None,
        };
        // What the schedule may depend on: cA and p_hat, both fixed before
        // any estimation sample is drawn.
        let (mut selected, guide) = match first.as_ref().map(|a| &a.outcome) {
            Some(Outcome::Surrogate(e, sel)) => (
                Some(*sel),
                (e.surrogate_class == e.class_a).then_some(e.p_hat_a),
            ),
            _ => (None, None),
        };
        let guide = guide.filter(|_| target.guided);
        let test = sequential_test(self.sigma, target.radius, params.alpha, params.n, guide)?;
        let (mut queue, mut timing, mut batch_size) = first
            .as_ref()
            .map_or((Duration::ZERO, BatchTiming::default(), 0), |a| {
                (a.queue, a.timing, a.batch_size)
            });
        let (mut k, mut drawn) = (0u64, 0u64);
        for (j, stage) in test.schedule.stages().iter().enumerate() {
            while drawn < stage.n {
                let num = (stage.n - drawn).min(self.stage_slice);
                let slice = RequestParams {
                    class_a: selected.map(|s| s.class_a),
                    slice: Some(Slice { start: drawn, num }),
                    shift: None,
                    ..params
                };
                let got = loop {
                    match self
                        .call(Task::Stage, pixels.clone(), slice, deadline)
                        .await
                    {
                        // A request under way waits for room rather than
                        // losing the stages it has drawn.
                        Err(BatchError::QueueFull { .. }) if drawn > 0 => {
                            if Instant::now() >= deadline {
                                return Err(BatchError::DeadlineExceeded {
                                    waited: Duration::ZERO,
                                });
                            }
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        other => break other?,
                    }
                };
                let Outcome::Stage(count, sel) = got.outcome else {
                    return Err(
                        EngineError::Internal("a stage task returned another outcome").into(),
                    );
                };
                selected.get_or_insert(sel);
                k += count;
                drawn += num;
                queue += got.queue;
                timing.sampling += got.timing.sampling;
                batch_size = got.batch_size;
            }
            let sel = selected.unwrap_or(Selected::given(0));
            let decision = match test.decide(j, k).map_err(EngineError::from)? {
                SequentialDecision::Continue => continue,
                SequentialDecision::Certified { p_a_lower } => Decision::Certified {
                    class: sel.class_a,
                    p_a_lower,
                    radius: crate::smoothing::gaussian_l2_radius(self.sigma, p_a_lower),
                },
                SequentialDecision::NotReached { p_a_lower } => Decision::Abstain {
                    reason: AbstainReason::TargetNotReached,
                    p_a_lower,
                },
            };
            let certificate = SequentialCertificate {
                class_a: sel.class_a,
                count_a: k,
                n: drawn,
                cap: test.schedule.cap(),
                target_radius: target.radius,
                stages: j + 1,
                guided: guide.is_some(),
                decision,
            };
            return Ok(Answer {
                outcome: Outcome::Sequential(certificate, sel),
                method: Method::Sequential,
                queue,
                timing,
                batch_size,
            });
        }
        Err(EngineError::Internal("the sequential test ran past its cap").into())
    }

    /// PREDICT: n samples and the binomial test.
    pub async fn predict(
        &self,
        pixels: Vec<f32>,
        params: RequestParams,
        deadline: Instant,
    ) -> Result<Answer, BatchError> {
        self.call(Task::Predict, pixels, params, deadline).await
    }

    /// Queues one task and waits for its answer until the deadline; giving up
    /// drops the receiver, which tells the worker to drop the job.
    async fn call(
        &self,
        task: Task,
        pixels: Vec<f32>,
        params: RequestParams,
        deadline: Instant,
    ) -> Result<Answer, BatchError> {
        let (reply, answer) = oneshot::channel();
        let enqueued = Instant::now();
        self.submit(Job {
            task,
            pixels,
            params,
            deadline,
            enqueued,
            reply,
        })?;
        let waited = || BatchError::DeadlineExceeded {
            waited: enqueued.elapsed(),
        };
        match tokio::time::timeout_at(deadline.into(), answer).await {
            Err(_) => Err(waited()),
            Ok(Ok(Err(BatchError::DeadlineExceeded { .. }))) => Err(waited()),
            Ok(Ok(result)) => result,
            // The lane closed without answering: it is shutting down.
            Ok(Err(_)) => Err(BatchError::ShuttingDown(self.model.clone())),
        }
    }

    /// Queues a job on its lane, or refuses at once when the lane is full.
    fn submit(&self, job: Job) -> Result<(), BatchError> {
        let lane = match Lane::of(job.task) {
            Lane::Surrogate => &self.surrogate,
            Lane::MonteCarlo => &self.monte_carlo,
            Lane::Sequential => &self.sequential,
        };
        lane.depth.fetch_add(1, Ordering::SeqCst);
        match lane.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                lane.depth.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => BatchError::QueueFull {
                        model: self.model.clone(),
                        lane: lane.lane.as_str(),
                        capacity: lane.capacity,
                    },
                    TrySendError::Disconnected(_) => BatchError::ShuttingDown(self.model.clone()),
                })
            }
        }
    }

    /// Requests waiting in each lane, and the most that lane's queue holds.
    pub fn queue_depths(&self) -> [(Lane, usize, usize); 3] {
        [&self.surrogate, &self.monte_carlo, &self.sequential]
            .map(|l| (l.lane, l.depth.load(Ordering::SeqCst), l.capacity))
    }

    /// Closes the queues and waits for the threads to finish the queued work.
    pub fn shutdown(self) {
        let ModelWorkers {
            surrogate,
            monte_carlo,
            sequential,
            threads,
            ..
        } = self;
        drop((surrogate, monte_carlo, sequential));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// The receiving side of one lane, on its own thread.
struct Worker {
    model: String,
    lane: Lane,
    bundle: Bundle,
    device: Device,
    opts: BatchingOptions,
    depth: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

type Ready = mpsc::Sender<Result<(), (Lane, EngineError)>>;

impl Worker {
    fn run(self, rx: mpsc::Receiver<Job>, ready: Ready) {
        let loaded = Engine::load(
            &self.bundle,
            self.device,
            self.opts.forward_batch,
            self.lane == Lane::Surrogate,
        )
        .and_then(|engine| engine.warm_up().map(|_| engine));
        let engine = match loaded {
            Ok(e) => e,
            Err(e) => {
                let _ = ready.send(Err((self.lane, e)));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        drop(ready);
        let max_batch = match self.lane {
            Lane::Surrogate | Lane::Sequential => self.opts.max_batch_requests.max(1),
            Lane::MonteCarlo => 1,
        };
        let mut carried = None;
        while let Some(jobs) = self.next_batch(&rx, max_batch, &mut carried) {
            self.run_batch(&engine, jobs);
        }
    }

    /// Blocks for the first job, then gathers more until the batch is full or
    /// `max_queue_delay` after the first job's arrival. `None`: queue closed.
    fn next_batch(
        &self,
        rx: &mpsc::Receiver<Job>,
        max_batch: usize,
        carried: &mut Option<Job>,
    ) -> Option<Vec<Job>> {
        let first = match carried.take() {
            Some(job) => job,
            None => rx.recv().ok()?,
        };
        let close_at = first.enqueued + self.opts.max_queue_delay;
        // The sequential lane's batches hold at most one slice's worth of samples.
        let sample_cap = stage_slice(self.opts.forward_batch);
        let samples = |jobs: &[Job]| -> u64 {
            jobs.iter()
                .map(|j| j.params.slice.map_or(0, |s| s.num))
                .sum()
        };
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            let now = Instant::now();
            let next = if now >= close_at {
                rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
            } else {
                rx.recv_timeout(close_at - now)
            };
            match next {
                // A slice that would take the batch past the cap starts the next one.
                Ok(job)
                    if self.lane == Lane::Sequential
                        && samples(&jobs) + job.params.slice.map_or(0, |s| s.num) > sample_cap =>
                {
                    *carried = Some(job);
                    break;
                }
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        self.depth.fetch_sub(jobs.len(), Ordering::SeqCst);
        Some(jobs)
    }

    fn run_batch(&self, engine: &Engine, jobs: Vec<Job>) {
        let started = Instant::now();
        // Abandoned jobs are answered (if anyone listens) and not run.
        let (jobs, abandoned): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|j| !j.abandoned());
        for job in abandoned {
            self.metrics.dropped(&self.model, job.task);
            let waited = job.enqueued.elapsed();
            let _ = job.reply.send(Err(BatchError::DeadlineExceeded { waited }));
        }
        // The Monte Carlo lane's batch may mix certificates and PREDICT: run each task together.
        let mut by_task: Vec<(Task, Vec<Job>)> = Vec::new();
        for job in jobs {
            match by_task.iter_mut().find(|(t, _)| *t == job.task) {
                Some((_, v)) => v.push(job),
                None => by_task.push((job.task, vec![job])),
            }
        }
        for (task, jobs) in by_task {
            self.run_group(engine, task, jobs, started);
        }
    }

    fn run_group(&self, engine: &Engine, task: Task, jobs: Vec<Job>, started: Instant) {
        let size = jobs.len();
        self.metrics.batch(&self.model, task, size);
        // libtorch ops that panic (a CUDA error inside a module's forward)
        // must not take the lane down: the batch fails, the lane goes on, and
        // its requests are told that a retry may succeed.
        let run = std::panic::AssertUnwindSafe(|| self.infer(engine, task, &jobs));
        let result = std::panic::catch_unwind(run).unwrap_or_else(|panic| {
            let reason = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic")
                .to_string();
            tracing::error!(model = %self.model, lane = self.lane.as_str(), panic = %reason, "inference panicked; batch failed");
            Err(BatchError::BatchPanicked {
                model: self.model.clone(),
                lane: self.lane.as_str(),
                reason,
            })
        });
        match result {
            Ok((outcomes, timing, passes)) => {
                self.metrics
                    .passes(&self.model, passes.base, passes.surrogate);
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    let queue = started.saturating_duration_since(job.enqueued);
                    self.metrics.queue_time(&self.model, task, queue);
                    let answer = match outcome {
                        Some(outcome) => Ok(Answer {
                            // The caller names the method; this is the task's own.
                            method: Method::MonteCarlo.answered_by(&outcome),
                            outcome,
                            queue,
                            timing,
                            batch_size: size,
                        }),
                        None => {
                            self.metrics.dropped(&self.model, task);
                            Err(BatchError::DeadlineExceeded {
                                waited: job.enqueued.elapsed(),
                            })
                        }
                    };
                    let _ = job.reply.send(answer);
                }
            }
            Err(e) => {
                if !matches!(e, BatchError::BatchPanicked { .. }) {
                    tracing::error!(model = %self.model, lane = self.lane.as_str(), error = %e, "batch failed");
                }
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }

    fn infer(
        &self,
        engine: &Engine,
        task: Task,
        jobs: &[Job],
    ) -> Result<crate::engine::BatchResult, BatchError> {
        let [c, h, w] = self.bundle.input_shape.map(|d| d as i64);
        let pixels: Vec<f32> = jobs.iter().flat_map(|j| j.pixels.iter().copied()).collect();
        let inputs = Tensor::f_from_slice(&pixels)
            .and_then(|t| t.f_view([jobs.len() as i64, c, h, w]))
            .map_err(|e| EngineError::Model(ModelError::from(e)))?;
        let reqs: Vec<RequestParams> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| RequestParams {
                input: i,
                ..j.params
            })
            .collect();
        let mut keep = |s: usize| jobs.get(s).is_some_and(|j| !j.abandoned());
        Ok(engine.run(task, &inputs, &reqs, &mut keep)?)
    }
}

/// The served path for offline callers (`certify`, the benchmarks): a
/// model's lanes, exactly as the server runs them, driven one request at a
/// time from a blocking thread. One seed gives the same answer here as over
/// gRPC, because it is the same code.
pub struct Offline {
    workers: ModelWorkers,
    runtime: tokio::runtime::Runtime,
}

impl Offline {
    pub fn start(
        bundle: &Bundle,
        device: Device,
        forward_batch: i64,
        auto_band: AutoBand,
    ) -> Result<Offline, StartError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|source| StartError::Spawn {
                model: bundle.name.clone(),
                lane: "offline runtime",
                source,
            })?;
        let workers = ModelWorkers::start(
            &bundle.name,
            bundle,
            device,
            &BatchingOptions::sequential(device, forward_batch, bundle.input_shape),
            auto_band,
            Arc::new(Metrics::new()),
        )?;
        Ok(Offline { workers, runtime })
    }

    /// One certificate request of any method, without a deadline.
    pub fn certify(
        &self,
        method: Method,
        pixels: Vec<f32>,
        params: RequestParams,
        target: Option<Target>,
    ) -> Result<Answer, BatchError> {
        self.runtime.block_on(self.workers.certify(Request {
            method,
            pixels,
            params,
            target,
            deadline: no_deadline(),
        }))
    }

    /// PREDICT, without a deadline.
    pub fn predict(&self, pixels: Vec<f32>, params: RequestParams) -> Result<Answer, BatchError> {
        self.runtime
            .block_on(self.workers.predict(pixels, params, no_deadline()))
    }

    pub fn shutdown(self) {
        self.workers.shutdown();
    }
}
