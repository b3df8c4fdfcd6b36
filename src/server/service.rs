//! `smoothcert.v1.Certifier`: handler -> validation -> batcher -> response.
use super::error::ServiceError;
use super::models::{LoadedModel, ModelRegistry};
use super::pb;
use super::validation::{self, Input, Method, Resolved};
use crate::batcher::{Answer, Job, Outcome};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::smoothing::{AbstainReason, Decision};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use tokio_stream::Stream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// What every handler shares: the models (once loaded), metrics, and the
/// drain state that graceful shutdown waits on.
pub struct Shared {
    pub config: Config,
    pub models: RwLock<Option<Arc<ModelRegistry>>>,
    pub metrics: Arc<Metrics>,
    pub draining: AtomicBool,
    /// Turns true with `draining`; open streams stop reading on it.
    pub draining_tx: watch::Sender<bool>,
    /// Health says SERVING (models loaded, not draining).
    pub serving: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl Shared {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Shared {
        Shared {
            config,
            models: RwLock::new(None),
            metrics,
            draining: AtomicBool::new(false),
            draining_tx: watch::channel(false).0,
            serving: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    /// Refuses new work from now on; open streams stop reading.
    pub fn begin_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.serving.store(false, Ordering::SeqCst);
        self.draining_tx.send_replace(true);
    }

    pub fn registry(&self) -> Option<Arc<ModelRegistry>> {
        self.models.read().ok().and_then(|m| m.clone())
    }

    /// Counts a request as in flight; refused once draining has begun.
    fn track(self: &Arc<Self>) -> Result<Tracked, ServiceError> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let tracked = Tracked(self.clone());
        if self.draining.load(Ordering::SeqCst) {
            return Err(ServiceError::Unavailable("shutting down"));
        }
        Ok(tracked)
    }

    /// Resolves when no request is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct Tracked(Arc<Shared>);

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[derive(Clone)]
pub struct CertifierService {
    shared: Arc<Shared>,
}

/// The metric labels a request ends up with, filled in as it is resolved.
struct Labels {
    model: String,
    method: &'static str,
}

impl Labels {
    fn new(method: &'static str) -> Labels {
        Labels {
            model: "unknown".into(),
            method,
        }
    }
}

/// tonic answers a `grpc-timeout` on its own with CANCELLED, and tonic
/// clients enforce it themselves too; firing this much earlier (a tenth of the
/// timeout, within 5..100 ms) lets the handler answer DEADLINE_EXCEEDED (and
/// drop the work) first, even on a loaded machine.
fn deadline_margin(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(5), Duration::from_millis(100))
}

impl CertifierService {
    pub fn new(shared: Arc<Shared>) -> CertifierService {
        CertifierService { shared }
    }

    fn registry(&self) -> Result<Arc<ModelRegistry>, ServiceError> {
        self.shared
            .registry()
            .ok_or(ServiceError::Unavailable("still loading its models"))
    }

    /// The earlier of the client's deadline (`grpc-timeout`) and the server's own.
    fn deadline(&self, metadata: &MetadataMap) -> Instant {
        let server = Duration::from_millis(self.shared.config.limits.request_timeout_ms);
        let client = metadata
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|t| t.saturating_sub(deadline_margin(t)));
        Instant::now() + client.map_or(server, |c| c.min(server))
    }

    /// Queues the job and waits for its answer until the deadline; dropping
    /// the receiver on a timeout tells the worker to drop the job.
    async fn run(
        &self,
        model: &LoadedModel,
        r: &Resolved,
        pixels: Vec<f32>,
        class_a: Option<usize>,
        deadline: Instant,
    ) -> Result<Answer, ServiceError> {
        let (reply, answer) = oneshot::channel();
        let queued = Instant::now();
        model.workers.submit(Job {
            work: r.work,
            pixels,
            n0: r.n0,
            n: r.n,
            alpha: r.alpha,
            seed: r.seed,
            shift: r.shift,
            adaptive: r.adaptive,
            class_a,
            deadline,
            enqueued: queued,
            reply,
        })?;
        match tokio::time::timeout_at(deadline.into(), answer).await {
            Err(_) => Err(ServiceError::DeadlineExceeded(queued.elapsed().as_millis())),
            // The worker dropped the reply: its batch failed hard (logged there).
            Ok(Err(_)) if self.shared.draining.load(Ordering::SeqCst) => {
                Err(ServiceError::Unavailable("shutting down"))
            }
            Ok(Err(_)) => Err(ServiceError::Internal("the inference batch failed".into())),
            Ok(Ok(Err(crate::batcher::BatchError::DeadlineExceeded))) => {
                Err(ServiceError::DeadlineExceeded(queued.elapsed().as_millis()))
            }
            Ok(Ok(result)) => result.map_err(Into::into),
        }
    }

    async fn certify_one(
        &self,
        req: pb::CertifyRequest,
        deadline: Instant,
        labels: &mut Labels,
    ) -> Result<pb::CertifyResponse, ServiceError> {
        let received = Instant::now();
        let registry = self.registry()?;
        let model = registry.resolve(&req.model)?;
        labels.model = model.name.clone();
        let r = validation::certify_options(model, req.options.as_ref())?;
        labels.method = r.method.as_str();
        tracing::Span::current().record("method", r.method.as_str());
        let pixels = validation::pixels(model, Input::from(&req.input))?;
        if r.method != Method::Auto {
            let answer = self.run(model, &r, pixels, None, deadline).await?;
            return certify_response(model, &r, answer, received.elapsed(), req.request_id);
        }
        // AUTO: the calibrated estimate, then Monte Carlo with the same cA
        // where the estimate is not decisive.
        let fallback_pixels = pixels.clone();
        let first = self.run(model, &r, pixels, None, deadline).await?;
        let class_a = match &first.outcome {
            Outcome::Surrogate(e, _) if model.auto_band.falls_back(e) => e.class_a,
            _ => {
                self.shared.metrics.auto_path(&model.name, "calibrated");
                return certify_response(model, &r, first, received.elapsed(), req.request_id);
            }
        };
        let mc = Resolved {
            work: crate::batcher::Work::MonteCarlo,
            ..r
        };
        let mut answer = self
            .run(model, &mc, fallback_pixels, Some(class_a), deadline)
            .await?;
        self.shared.metrics.auto_path(&model.name, "monte_carlo");
        // The response accounts for both steps.
        if let (Outcome::MonteCarlo(_, sel), Outcome::Surrogate(_, first_sel)) =
            (&mut answer.outcome, &first.outcome)
        {
            sel.drawn = first_sel.drawn;
        }
        answer.queue += first.queue;
        answer.timing.sampling += first.timing.sampling;
        answer.timing.surrogate += first.timing.surrogate;
        certify_response(model, &r, answer, received.elapsed(), req.request_id)
    }

    async fn predict_one(
        &self,
        req: pb::PredictRequest,
        deadline: Instant,
        labels: &mut Labels,
    ) -> Result<pb::PredictResponse, ServiceError> {
        let received = Instant::now();
        let registry = self.registry()?;
        let model = registry.resolve(&req.model)?;
        labels.model = model.name.clone();
        let r = validation::predict_options(model, req.options.as_ref())?;
        let pixels = validation::pixels(model, Input::from(&req.input))?;
        let answer = self.run(model, &r, pixels, None, deadline).await?;
        predict_response(model, &r, answer, received.elapsed(), req.request_id)
    }

    /// Records the request's metrics and logs its failure.
    fn record<T>(
        &self,
        labels: &Labels,
        result: &Result<T, ServiceError>,
        outcome: &str,
        started: Instant,
    ) {
        let (outcome, code) = match result {
            Ok(_) => (outcome, tonic::Code::Ok),
            Err(e) => {
                tracing::info!(code = crate::metrics::code_name(e.code()), error = %e, "request failed");
                ("error", e.code())
            }
        };
        self.shared.metrics.request(
            &labels.model,
            labels.method,
            outcome,
            code,
            started.elapsed(),
        );
    }

    async fn certify_tracked(
        &self,
        req: pb::CertifyRequest,
        deadline: Instant,
    ) -> Result<pb::CertifyResponse, ServiceError> {
        let started = Instant::now();
        let _in_flight = self.shared.metrics.in_flight();
        let span = tracing::info_span!(
            "certify",
            request_id = %request_id(&req.request_id),
            model = %req.model,
            method = tracing::field::Empty
        );
        let mut labels = Labels::new("unresolved");
        let result = async {
            let _tracked = self.shared.track()?;
            self.certify_one(req, deadline, &mut labels).await
        }
        .instrument(span.clone())
        .await;
        let outcome = match &result {
            Ok(r) if matches!(r.outcome, Some(pb::certify_response::Outcome::Certified(_))) => {
                "certified"
            }
            _ => "abstain",
        };
        span.in_scope(|| self.record(&labels, &result, outcome, started));
        result
    }
}

fn request_id(given: &str) -> String {
    if given.is_empty() {
        format!("{:016x}", validation::fresh_seed())
    } else {
        given.chars().take(128).collect()
    }
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn label(model: &LoadedModel, class: usize) -> String {
    model.bundle.labels.get(class).cloned().unwrap_or_default()
}

fn reason(r: AbstainReason) -> pb::AbstainReason {
    match r {
        AbstainReason::LowConfidence => pb::AbstainReason::LowConfidence,
        AbstainReason::ClassMismatch => pb::AbstainReason::ClassMismatch,
        AbstainReason::NotSignificant => pb::AbstainReason::NotSignificant,
    }
}

/// The response's parameters; `calibrated` when a calibrated estimate
/// produced the outcome (delta and q apply), `n0_drawn` the selection samples.
fn parameters(
    model: &LoadedModel,
    r: &Resolved,
    calibrated: bool,
    n0_drawn: u64,
) -> pb::Parameters {
    pb::Parameters {
        n0: r.n0,
        n: r.n,
        alpha: r.alpha,
        sigma: model.bundle.sigma(),
        noise: "gaussian".into(),
        seed: r.seed,
        model_version: model.bundle.version.clone(),
        delta: if calibrated { r.delta } else { 0.0 },
        calibration_q: r.shift.filter(|_| calibrated).map_or(0.0, |s| s.q),
        calibration_score: r
            .shift
            .filter(|_| calibrated)
            .map(|s| s.score.as_str().to_string())
            .unwrap_or_default(),
        n0_drawn,
        adaptive_n0: r.adaptive.is_some(),
    }
}

fn timing(answer: &Answer, total: Duration) -> pb::Timing {
    pb::Timing {
        queue_ms: ms(answer.queue),
        sampling_ms: ms(answer.timing.sampling),
        surrogate_ms: ms(answer.timing.surrogate),
        total_ms: ms(total),
        batch_size: answer.batch_size as u32,
    }
}

fn certify_response(
    model: &LoadedModel,
    r: &Resolved,
    answer: Answer,
    total: Duration,
    request_id: String,
) -> Result<pb::CertifyResponse, ServiceError> {
    let calibrated = matches!(r.method, Method::Calibrated | Method::Auto);
    let (method, decision, class_a, count_a, drawn) = match &answer.outcome {
        Outcome::Surrogate(e, sel) => (
            if calibrated {
                pb::Method::Calibrated
            } else {
                pb::Method::Surrogate
            },
            &e.decision,
            e.class_a,
            e.count_a,
            sel.drawn,
        ),
        Outcome::MonteCarlo(c, sel) => (
            pb::Method::MonteCarlo,
            &c.decision,
            c.class_a,
            c.count_a,
            sel.drawn,
        ),
        Outcome::Predict(_) => {
            return Err(ServiceError::Internal(
                "a certify request got a prediction".into(),
            ))
        }
    };
    let outcome = match *decision {
        Decision::Certified {
            class,
            p_a_lower,
            radius,
        } => pb::certify_response::Outcome::Certified(pb::Certified {
            class_index: class as u32,
            label: label(model, class),
            radius,
            norm: "L2".into(),
            p_a_lower,
            count_a,
            estimate: method != pb::Method::MonteCarlo,
        }),
        Decision::Abstain {
            reason: why,
            p_a_lower,
        } => pb::certify_response::Outcome::Abstain(pb::Abstain {
            reason: reason(why) as i32,
            class_index: class_a as u32,
            label: label(model, class_a),
            p_a_lower,
        }),
    };
    Ok(pb::CertifyResponse {
        outcome: Some(outcome),
        method: method as i32,
        model: model.name.clone(),
        parameters: Some(parameters(
            model,
            r,
            method == pb::Method::Calibrated,
            drawn,
        )),
        timing: Some(timing(&answer, total)),
        request_id,
        requested_method: r.method.to_pb() as i32,
    })
}

fn predict_response(
    model: &LoadedModel,
    r: &Resolved,
    answer: Answer,
    total: Duration,
    request_id: String,
) -> Result<pb::PredictResponse, ServiceError> {
    let Outcome::Predict(p) = &answer.outcome else {
        return Err(ServiceError::Internal(
            "a predict request got a certificate".into(),
        ));
    };
    let outcome = match p.class {
        Some(class) => pb::predict_response::Outcome::Prediction(pb::Prediction {
            class_index: class as u32,
            label: label(model, class),
        }),
        None => pb::predict_response::Outcome::Abstain(pb::Abstain {
            reason: pb::AbstainReason::NotSignificant as i32,
            class_index: p.top_class as u32,
            label: label(model, p.top_class),
            // PREDICT tests counts rather than bounding pA.
            p_a_lower: 0.0,
        }),
    };
    Ok(pb::PredictResponse {
        outcome: Some(outcome),
        count_a: p.count_a,
        count_b: p.count_b,
        model: model.name.clone(),
        parameters: Some(parameters(model, r, false, 0)),
        timing: Some(timing(&answer, total)),
        request_id,
    })
}

fn model_info(model: &LoadedModel, is_default: bool) -> pb::ModelInfo {
    let calibration = model
        .bundle
        .surrogate
        .as_ref()
        .and_then(|s| s.calibration.as_ref());
    pb::ModelInfo {
        name: model.name.clone(),
        version: model.bundle.version.clone(),
        input_shape: model.bundle.input_shape.iter().map(|&d| d as u32).collect(),
        classes: model.bundle.labels.clone(),
        sigma: model.bundle.sigma(),
        noise: "gaussian".into(),
        nominal_n: model.bundle.surrogate.as_ref().map_or(0, |s| s.nominal_n),
        device: format!("{:?}", model.device).to_lowercase(),
        defaults: Some(pb::OptionValues {
            method: model.defaults.method.to_pb() as i32,
            n0: model.defaults.n0,
            n: model.defaults.n,
            alpha: model.defaults.alpha,
        }),
        limits: Some(pb::OptionValues {
            method: pb::Method::Unspecified as i32,
            n0: model.limits.max_n0,
            n: model.limits.max_n,
            alpha: model.limits.min_alpha,
        }),
        has_surrogate: model.bundle.surrogate.is_some(),
        dataset: model
            .bundle
            .provenance
            .dataset
            .map(|d| format!("{d:?}"))
            .unwrap_or_default(),
        is_default,
        calibrated: calibration.is_some(),
        delta: calibration.map_or(0.0, |c| c.delta),
    }
}

type CertifyStream = Pin<Box<dyn Stream<Item = Result<pb::CertifyStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::certifier_server::Certifier for CertifierService {
    async fn certify(
        &self,
        request: Request<pb::CertifyRequest>,
    ) -> Result<Response<pb::CertifyResponse>, Status> {
        let deadline = self.deadline(request.metadata());
        self.certify_tracked(request.into_inner(), deadline)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    type CertifyStreamStream = CertifyStream;

    async fn certify_stream(
        &self,
        request: Request<Streaming<pb::CertifyRequest>>,
    ) -> Result<Response<Self::CertifyStreamStream>, Status> {
        let limit = self.shared.config.limits.stream_in_flight;
        // The client's deadline, if any, bounds every request of the stream.
        let stream_deadline = self.deadline(request.metadata());
        let mut draining = self.shared.draining_tx.subscribe();
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(limit);
        let svc = self.clone();
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(limit));
            let mut index = 0u64;
            loop {
                // On shutdown the stream stops reading; it ends once the
                // requests already read are answered.
                let next = tokio::select! {
                    _ = draining.wait_for(|d| *d) => break,
                    next = inbound.message() => next,
                };
                let req = match next {
                    Ok(Some(req)) => req,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = tx
                            .send(Err(super::resource_exhausted_if_oversize(status)))
                            .await;
                        break;
                    }
                };
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let (tx, svc, i) = (tx.clone(), svc.clone(), index);
                index += 1;
                tokio::spawn(async move {
                    let request_id = req.request_id.clone();
                    let own = Instant::now()
                        + Duration::from_millis(svc.shared.config.limits.request_timeout_ms);
                    let deadline = own.min(stream_deadline);
                    // A client that hangs up drops its pending work with it.
                    let result = tokio::select! {
                        r = svc.certify_tracked(req, deadline) => r,
                        _ = tx.closed() => return,
                    };
                    let result = Some(match result {
                        Ok(r) => pb::certify_stream_response::Result::Response(r),
                        Err(e) => pb::certify_stream_response::Result::Error(pb::StreamError {
                            code: e.code() as i32,
                            message: e.to_string(),
                        }),
                    });
                    let _ = tx
                        .send(Ok(pb::CertifyStreamResponse {
                            index: i,
                            request_id,
                            result,
                        }))
                        .await;
                    drop(permit);
                });
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn predict(
        &self,
        request: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        let deadline = self.deadline(request.metadata());
        let req = request.into_inner();
        let started = Instant::now();
        let _in_flight = self.shared.metrics.in_flight();
        let span = tracing::info_span!(
            "predict",
            request_id = %request_id(&req.request_id),
            model = %req.model,
            method = "predict"
        );
        let mut labels = Labels::new("predict");
        let result = async {
            let _tracked = self.shared.track()?;
            self.predict_one(req, deadline, &mut labels).await
        }
        .instrument(span.clone())
        .await;
        let outcome = match &result {
            Ok(r)
                if matches!(
                    r.outcome,
                    Some(pb::predict_response::Outcome::Prediction(_))
                ) =>
            {
                "predicted"
            }
            _ => "abstain",
        };
        span.in_scope(|| self.record(&labels, &result, outcome, started));
        result.map(Response::new).map_err(Status::from)
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let registry = self.registry().map_err(Status::from)?;
        let models = registry
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| model_info(m, i == registry.default))
            .collect();
        Ok(Response::new(pb::ListModelsResponse { models }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_is_parsed_per_the_spec() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "123456789m", "12x", "-1m", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
