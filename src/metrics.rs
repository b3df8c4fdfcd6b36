//! Prometheus metrics (text exposition format), recorded by the server and
//! the batcher, served on their own HTTP port at `/metrics`.
use crate::engine::{Method, Task};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

fn task_labels(model: &str, task: Task) -> TaskLabels {
    TaskLabels {
        model: model.into(),
        task: task.as_str().into(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub model: String,
    pub method: String,
    /// certified, abstain, predicted or error.
    pub outcome: String,
    /// The gRPC status code's name (OK, INVALID_ARGUMENT, ...).
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub model: String,
    pub method: String,
}

/// Engine tasks (surrogate, monte_carlo, predict): what a batch computes,
/// which is not the request's method (AUTO runs a surrogate task, then
/// perhaps a monte_carlo one).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub model: String,
    pub task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub model: String,
    pub method: String,
    /// low_confidence, class_mismatch, not_significant or target_not_reached.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AutoLabels {
    pub model: String,
    /// calibrated or monte_carlo: which method produced an AUTO request's answer.
    pub path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabels {
    pub model: String,
    /// base or surrogate.
    pub network: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabels {
    pub model: String,
    pub lane: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    /// peer, max_age, max_age_grace or shutdown: what ended a gRPC connection.
    pub closed_by: String,
}

/// The values of `closed_by` (server::connections::Closed spells each).
pub const CLOSED_BY: [&str; 4] = ["peer", "max_age", "max_age_grace", "shutdown"];

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~4.6 min: surrogate answers in milliseconds, Monte Carlo in seconds.
    Histogram::new(exponential_buckets(0.0005, 2.0, 20))
}

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 10))
}

fn passes_histogram() -> Histogram {
    // 16 .. ~4 M base-classifier passes, in powers of 4: n0 alone, a
    // sequential test's first stages, Monte Carlo's n0 + 100,000.
    Histogram::new(exponential_buckets(16.0, 4.0, 10))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
    queue: Family<TaskLabels, Histogram>,
    batch_size: Family<TaskLabels, Histogram>,
    passes: Family<PassLabels, Counter>,
    dropped: Family<TaskLabels, Counter>,
    auto_paths: Family<AutoLabels, Counter>,
    request_passes: Family<MethodLabels, Histogram>,
    abstentions: Family<ReasonLabels, Counter>,
    queue_depth: Family<LaneLabels, Gauge>,
    queue_capacity: Family<LaneLabels, Gauge>,
    models_loaded: Gauge,
    models_configured: Gauge,
    in_flight: Gauge,
    connections_open: Gauge,
    connections_closed: Family<ClosedLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("smoothcert"),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            queue: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            batch_size: Family::new_with_constructor(batch_histogram as fn() -> Histogram),
            passes: Family::default(),
            dropped: Family::default(),
            auto_paths: Family::default(),
            request_passes: Family::new_with_constructor(passes_histogram as fn() -> Histogram),
            abstentions: Family::default(),
            queue_depth: Family::default(),
            queue_capacity: Family::default(),
            models_loaded: Gauge::default(),
            models_configured: Gauge::default(),
            in_flight: Gauge::default(),
            connections_open: Gauge::default(),
            connections_closed: Family::default(),
        };
        // Registration order is the order of the exposition output.
        metrics.register_traffic();
        metrics.register_gauges();
        metrics.register_connections();
        metrics
    }

    /// Registers the counters and histograms of requests, batches and passes.
    fn register_traffic(&mut self) {
        let registry = &mut self.registry;
        registry.register(
            "requests",
            "Requests answered, by model, method, outcome and gRPC code",
            self.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from receiving a request to answering it",
            self.latency.clone(),
        );
        registry.register(
            "queue_duration_seconds",
            "Time a request waited for its batch to start",
            self.queue.clone(),
        );
        registry.register(
            "batch_size",
            "Requests per inference batch",
            self.batch_size.clone(),
        );
        registry.register(
            "forward_passes",
            "Inputs passed through a network (noisy copies for base, clean inputs for surrogate)",
            self.passes.clone(),
        );
        registry.register(
            "dropped",
            "Requests dropped unrun or part-run because the caller left or the deadline passed",
            self.dropped.clone(),
        );
        registry.register(
            "auto_path",
            "AUTO requests by the method that answered: calibrated, or the monte_carlo fallback",
            self.auto_paths.clone(),
        );
        registry.register(
            "request_passes",
            "Base-classifier passes per answered request (selection and estimation samples), by the method that answered",
            self.request_passes.clone(),
        );
        registry.register(
            "abstentions",
            "Abstentions by the method that answered and the reason",
            self.abstentions.clone(),
        );
    }

    /// Registers the gauges: queue depths and capacities, models, requests in flight.
    fn register_gauges(&mut self) {
        let registry = &mut self.registry;
        registry.register(
            "queue_depth",
            "Requests waiting, by model and lane",
            self.queue_depth.clone(),
        );
        registry.register(
            "queue_capacity",
            "The most requests a lane's queue holds; more are refused with RESOURCE_EXHAUSTED",
            self.queue_capacity.clone(),
        );
        registry.register(
            "models_loaded",
            "Models loaded and warmed up",
            self.models_loaded.clone(),
        );
        registry.register(
            "models_configured",
            "Models the configuration names (all loaded once serving)",
            self.models_configured.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests being handled",
            self.in_flight.clone(),
        );
    }

    /// Registers the gRPC connections open, and those closed by cause.
    fn register_connections(&mut self) {
        self.registry.register(
            "grpc_connections_open",
            "gRPC connections open",
            self.connections_open.clone(),
        );
        self.registry.register(
            "grpc_connections_closed",
            "gRPC connections closed, by what closed them (max_age: the connection's age, \
             max_age_grace: its age and grace, with calls still open)",
            self.connections_closed.clone(),
        );
        // Every cause from the start, at 0, so that rate() sees the first close.
        for closed_by in CLOSED_BY {
            let _ = self.connections_closed.get_or_create(&ClosedLabels {
                closed_by: closed_by.to_string(),
            });
        }
    }

    pub fn request(
        &self,
        model: &str,
        method: &str,
        outcome: &str,
        code: tonic::Code,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                model: model.into(),
                method: method.into(),
                outcome: outcome.into(),
                code: code_name(code).into(),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels {
                model: model.into(),
                method: method.into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn queue_time(&self, model: &str, task: Task, waited: Duration) {
        self.queue
            .get_or_create(&task_labels(model, task))
            .observe(waited.as_secs_f64());
    }

    pub fn batch(&self, model: &str, task: Task, size: usize) {
        self.batch_size
            .get_or_create(&task_labels(model, task))
            .observe(size as f64);
    }

    pub fn passes(&self, model: &str, base: u64, surrogate: u64) {
        for (network, count) in [("base", base), ("surrogate", surrogate)] {
            if count > 0 {
                self.passes
                    .get_or_create(&PassLabels {
                        model: model.into(),
                        network: network.into(),
                    })
                    .inc_by(count);
            }
        }
    }

    /// An AUTO request answered by `path` (calibrated or monte_carlo).
    pub fn auto_path(&self, model: &str, path: Method) {
        self.auto_paths
            .get_or_create(&AutoLabels {
                model: model.to_string(),
                path: path.as_str().to_string(),
            })
            .inc();
    }

    /// An answered request: the base-classifier passes it drew and, when it
    /// abstained, why.
    pub fn answered(&self, model: &str, method: Method, passes: u64, abstained: Option<&str>) {
        let labels = MethodLabels {
            model: model.into(),
            method: method.as_str().into(),
        };
        self.request_passes
            .get_or_create(&labels)
            .observe(passes as f64);
        if let Some(reason) = abstained {
            self.abstentions
                .get_or_create(&ReasonLabels {
                    model: labels.model,
                    method: labels.method,
                    reason: reason.into(),
                })
                .inc();
        }
    }

    pub fn dropped(&self, model: &str, task: Task) {
        self.dropped.get_or_create(&task_labels(model, task)).inc();
    }

    pub fn set_queue_depth(&self, model: &str, lane: &str, depth: usize, capacity: usize) {
        let labels = LaneLabels {
            model: model.into(),
            lane: lane.into(),
        };
        self.queue_capacity
            .get_or_create(&labels)
            .set(capacity as i64);
        self.queue_depth.get_or_create(&labels).set(depth as i64);
    }

    pub fn set_models_configured(&self, n: usize) {
        self.models_configured.set(n as i64);
    }

    pub fn set_models_loaded(&self, n: usize) {
        self.models_loaded.set(n as i64);
    }

    /// Counts a request in flight until the guard drops.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// Counts a gRPC connection open until the guard drops.
    pub fn connection_opened(&self) -> InFlight<'_> {
        self.connections_open.inc();
        InFlight(&self.connections_open)
    }

    pub fn connection_closed(&self, closed_by: &str) {
        self.connections_closed
            .get_or_create(&ClosedLabels {
                closed_by: closed_by.to_string(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The canonical name of a gRPC code, as grpcurl and the gRPC docs spell it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
