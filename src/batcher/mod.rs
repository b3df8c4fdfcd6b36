//! Dynamic batching, and nothing else: per model, bounded queues that feed
//! inference threads, each thread owning its own [`Engine`]. What a method
//! does with the tasks (AUTO's fallback, SEQUENTIAL's stages) is
//! `crate::methods`' business; the lanes only queue, batch and run tasks.
//!
//! Each model has three lanes, each with its own queue and thread:
//! - the surrogate lane runs surrogate tasks (n0 noisy passes per request
//!   plus one surrogate pass per batch);
//! - the Monte Carlo lane runs Monte Carlo certificates and PREDICT (n0 + n
//!   passes), so that a long Monte Carlo request never holds up surrogate
//!   requests. It takes one request at a time: n samples of one input already
//!   fill the forward batches, and a request batched with others would wait
//!   for all of them;
//! - the stage lane runs slices of sequential tests' stages, many requests'
//!   slices to a batch, never more than a slice's worth of samples in one.
//!
//! A surrogate batch closes when it holds `max_batch_requests` requests or
//! `max_queue_delay` after its first request arrived. Inference runs on these
//! threads, never on the async runtime; answers go back over oneshot channels.
//! A full queue refuses at once, and a task whose caller has gone or whose
//! deadline has passed is dropped before, or while, its samples are drawn.
use crate::engine::requests::{BatchTiming, TaskParams};
use crate::engine::{Engine, EngineError, Method, Outcome, Task};
use crate::metrics::Metrics;
use crate::model::{forward_batch_for, Bundle, ModelError};
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
    Stage,
}

impl Lane {
    pub fn of(task: Task) -> Lane {
        match task {
            Task::Surrogate => Lane::Surrogate,
            Task::MonteCarlo | Task::Predict => Lane::MonteCarlo,
            Task::Stage => Lane::Stage,
        }
    }

    /// Metrics label and thread name.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Surrogate => "surrogate",
            Lane::MonteCarlo => "monte_carlo",
            Lane::Stage => "stage",
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

/// One task waiting for its batch.
struct Job {
    task: Task,
    pixels: Vec<f32>,
    params: TaskParams,
    deadline: Instant,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Answer, BatchError>>,
    /// The caller's span (the request's), which the batch span links to.
    span: tracing::Span,
}

impl Job {
    /// The caller gave up (its future was dropped) or the deadline passed.
    fn abandoned(&self) -> bool {
        self.reply.is_closed() || Instant::now() >= self.deadline
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
    pub stage_queue_capacity: usize,
}

/// The most estimation samples one stage slice draws: several forward
/// batches, and about a second of a CPU core.
pub fn stage_slice(forward_batch: i64) -> u64 {
    (4 * forward_batch.max(1) as u64).max(4096)
}

impl BatchingOptions {
    /// One request at a time, as offline runs and benchmarks send them.
    pub fn one_at_a_time(device: Device, forward_batch: i64, input: [usize; 3]) -> BatchingOptions {
        BatchingOptions {
            max_batch_requests: 1,
            max_queue_delay: Duration::ZERO,
            forward_batch: forward_batch_for(device, forward_batch, input),
            queue_capacity: 64,
            mc_queue_capacity: 64,
            stage_queue_capacity: 64,
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
    noise: crate::smoothing::Noise,
    stage_slice: u64,
    surrogate: LaneTx,
    monte_carlo: LaneTx,
    stage: LaneTx,
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
        let stage = start_lane(Lane::Stage, opts.stage_queue_capacity)?;
        drop(ready_tx);
        let workers = ModelWorkers {
            model: name.to_string(),
            has_surrogate: bundle.surrogate.is_some(),
            noise: bundle.noise(),
            stage_slice: stage_slice(opts.forward_batch),
            surrogate,
            monte_carlo,
            stage,
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

    /// Whether the model's bundle has a surrogate (its surrogate lane loaded one).
    pub fn has_surrogate(&self) -> bool {
        self.has_surrogate
    }

    pub fn noise(&self) -> crate::smoothing::Noise {
        self.noise
    }

    /// The most estimation samples one stage task may draw.
    pub fn stage_slice(&self) -> u64 {
        self.stage_slice
    }

    /// Queues one task and waits for its answer until the deadline; giving up
    /// drops the receiver, which tells the worker to drop the job.
    pub async fn call(
        &self,
        task: Task,
        pixels: Vec<f32>,
        params: TaskParams,
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
            span: tracing::Span::current(),
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
            Lane::Stage => &self.stage,
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
        [&self.surrogate, &self.monte_carlo, &self.stage]
            .map(|l| (l.lane, l.depth.load(Ordering::SeqCst), l.capacity))
    }

    /// Closes the queues and waits for the threads to finish the queued work.
    pub fn shutdown(self) {
        let ModelWorkers {
            surrogate,
            monte_carlo,
            stage,
            threads,
            ..
        } = self;
        drop((surrogate, monte_carlo, stage));
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
            Lane::Surrogate | Lane::Stage => self.opts.max_batch_requests.max(1),
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
        // The stage lane's batches hold at most one slice's worth of samples.
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
                    if self.lane == Lane::Stage
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
        // One batch serves many requests' traces: linked to each, child of none.
        let span = tracing::info_span!(
            parent: None,
            "batch",
            model = %self.model,
            lane = self.lane.as_str(),
            task = task.as_str(),
            batch_size = size as i64
        );
        for job in &jobs {
            span.follows_from(&job.span);
        }
        let _entered = span.enter();
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
        let reqs: Vec<TaskParams> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| TaskParams {
                input: i,
                ..j.params
            })
            .collect();
        let mut keep = |s: usize| jobs.get(s).is_some_and(|j| !j.abandoned());
        Ok(engine.run(task, &inputs, &reqs, &mut keep)?)
    }
}
