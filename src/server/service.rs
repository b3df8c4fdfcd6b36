//! `smoothcert.v1.Certifier`: handler -> validation -> batcher -> response.
use super::error::ServiceError;
use super::lifecycle::{InFlight, Lifecycle, Phase};
use super::models::{LoadedModel, ModelRegistry};
use super::pb;
use super::telemetry::{self, CallerTrace, Rpc};
use super::validation::{self, Input};
use crate::batcher::Answer;
use crate::config::Config;
use crate::engine::{Method, Outcome, RadiusKind};
use crate::methods::{CertifyRequest, PredictRequest};
use crate::metrics::Metrics;
use crate::smoothing::{AbstainReason, Decision};
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// What every handler shares: the models (once loaded), metrics, and the
/// lifecycle that health, readiness, admission and shutdown all read.
pub struct Shared {
    pub config: Config,
    pub models: RwLock<Option<Arc<ModelRegistry>>>,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
}

impl Shared {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Shared {
        Shared {
            config,
            models: RwLock::new(None),
            metrics,
            lifecycle: Arc::new(Lifecycle::new()),
        }
    }

    pub fn registry(&self) -> Option<Arc<ModelRegistry>> {
        self.models.read().ok().and_then(|m| m.clone())
    }

    /// Admits a request while serving; refused (UNAVAILABLE) otherwise.
    fn admit(&self) -> Result<InFlight, ServiceError> {
        Ok(self.lifecycle.admit()?)
    }

    /// Runs `work` unless the grace period ends first: then the request is
    /// answered UNAVAILABLE and its work dropped with the future.
    async fn unless_stopped<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ServiceError> {
        tokio::select! {
            r = work => r,
            _ = self.lifecycle.reached(Phase::Stopped) => Err(ServiceError::Unavailable(
                "the server stopped: its grace period ended before this request finished; retry on another replica".into(),
            )),
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
    resolved: bool,
}

impl Labels {
    fn new(method: &'static str) -> Labels {
        Labels {
            model: "unknown".into(),
            method,
            resolved: false,
        }
    }

    /// The model the request named, once found: on its metrics and its span.
    fn resolved(&mut self, name: &str) {
        self.model = name.to_string();
        self.resolved = true;
        tracing::Span::current().record("model", name);
    }

    /// A request that failed before its model was found: its span says the
    /// name it gave.
    fn unresolved_on(&self, span: &tracing::Span, given: &str) {
        if !self.resolved {
            span.record("model", given);
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
            .ok_or_else(|| super::error::not_serving(Phase::Loading))
    }

    /// The client's own deadline (`grpc-timeout`), if it set one.
    fn client_deadline(metadata: &MetadataMap) -> Option<Instant> {
        let timeout = metadata
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)?;
        Instant::now().checked_add(timeout.saturating_sub(deadline_margin(timeout)))
    }

    /// A request's deadline, counted from now: the server's own timeout,
    /// or the client's deadline when that comes first.
    fn deadline(&self, client: Option<Instant>) -> Instant {
        let server = Duration::from_millis(self.shared.config.limits.request_timeout_ms);
        // The config caps the timeout at a day, so this cannot overflow.
        let own = Instant::now() + server;
        client.map_or(own, |c| c.min(own))
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
        labels.resolved(&model.name);
        let r = validation::certify_request(model, req.options.as_ref())?;
        labels.method = r.method().as_str();
        tracing::Span::current().record("method", r.method().as_str());
        let pixels = validation::pixels(model, Input::from(&req.input))?;
        let answer = crate::methods::certify(&model.workers, &r, pixels, deadline).await?;
        if r.method() == Method::Auto {
            self.shared.metrics.auto_path(&model.name, answer.method);
        }
        let (n0_drawn, n_drawn) = drawn(&answer.outcome);
        let abstained = match answer.outcome.decision() {
            Some(Decision::Abstain { reason, .. }) => Some(reason.as_str()),
            _ => None,
        };
        self.shared
            .metrics
            .answered(&model.name, answer.method, n0_drawn + n_drawn, abstained);
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
        labels.resolved(&model.name);
        let r = validation::predict_request(model, req.options.as_ref())?;
        let pixels = validation::pixels(model, Input::from(&req.input))?;
        let answer = crate::methods::predict(&model.workers, &r, pixels, deadline).await?;
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
        telemetry::record_status(&tracing::Span::current(), code);
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
        caller: &CallerTrace,
    ) -> Result<pb::CertifyResponse, ServiceError> {
        let started = Instant::now();
        let _in_flight = self.shared.metrics.in_flight();
        let span = caller.request_span(Rpc::Certify, &request_id(&req.request_id));
        let given = req.model.clone();
        let mut labels = Labels::new("unresolved");
        let result = async {
            let _admitted = self.shared.admit()?;
            self.shared
                .unless_stopped(self.certify_one(req, deadline, &mut labels))
                .await
        }
        .instrument(span.clone())
        .await;
        let outcome = match &result {
            Ok(r) if matches!(r.outcome, Some(pb::certify_response::Outcome::Certified(_))) => {
                "certified"
            }
            _ => "abstain",
        };
        labels.unresolved_on(&span, &given);
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

/// The parameters every answer of `model` shares: its noise and version.
fn model_parameters(model: &LoadedModel) -> pb::Parameters {
    pb::Parameters {
        sigma: gaussian_sigma(model),
        noise: model.bundle.noise().kind().into(),
        noise_scale: model.bundle.noise().scale(),
        model_version: model.bundle.version.clone(),
        ..Default::default()
    }
}

/// The proto's `sigma`: the Gaussian's, 0 for the other noises.
fn gaussian_sigma(model: &LoadedModel) -> f64 {
    match model.bundle.noise() {
        crate::smoothing::Noise::Gaussian { sigma } => sigma,
        _ => 0.0,
    }
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
        AbstainReason::TargetNotReached => pb::AbstainReason::TargetNotReached,
    }
}

/// The response's parameters; `calibrated` when a calibrated estimate
/// produced the outcome (delta and q apply), `n0_drawn` the selection samples.
fn parameters(
    model: &LoadedModel,
    r: &CertifyRequest,
    calibrated: bool,
    (n0_drawn, n_drawn): (u64, u64),
) -> pb::Parameters {
    let s = r.sampling();
    let cal = r.calibrated().filter(|_| calibrated);
    pb::Parameters {
        n0: s.n0,
        n: s.n,
        alpha: s.alpha,
        seed: s.seed,
        delta: cal.map_or(0.0, |c| c.delta),
        calibration_q: cal.map_or(0.0, |c| c.shift.q),
        calibration_score: cal
            .map(|c| c.shift.score.as_str().to_string())
            .unwrap_or_default(),
        n0_drawn,
        adaptive_n0: matches!(r.selection(), crate::methods::Selection::Adaptive(_)),
        n_drawn,
        target_radius: r.target().map_or(0.0, |t| t.radius),
        ..model_parameters(model)
    }
}

/// Selection and estimation samples an answer drew.
fn drawn(outcome: &Outcome) -> (u64, u64) {
    let n0 = outcome.n0_drawn();
    match outcome {
        Outcome::MonteCarlo(c, _) => (n0, c.n),
        Outcome::Sequential(c, _) => (n0, c.n),
        Outcome::Predict(p) => (0, p.n),
        Outcome::Surrogate(..) | Outcome::Stage(..) => (n0, 0),
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
    r: &CertifyRequest,
    answer: Answer,
    total: Duration,
    request_id: String,
) -> Result<pb::CertifyResponse, ServiceError> {
    let method = pb::Method::from(answer.method);
    let (decision, class_a, count_a) = match &answer.outcome {
        Outcome::Surrogate(e, _) => (&e.decision, e.class_a, e.count_a),
        Outcome::MonteCarlo(c, _) => (&c.decision, c.class_a, c.count_a),
        Outcome::Sequential(c, _) => (&c.decision, c.class_a, c.count_a),
        Outcome::Predict(_) | Outcome::Stage(..) => {
            return Err(ServiceError::Internal(
                "a certify request got no certificate".into(),
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
            norm: model.bundle.noise().norm().as_str().into(),
            linf_radius: model
                .bundle
                .noise()
                .linf_radius(p_a_lower, model.bundle.input_shape.iter().product())
                .unwrap_or(0.0),
            p_a_lower,
            count_a,
            estimate: answer.outcome.radius_kind() == Some(RadiusKind::Estimate),
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
            drawn(&answer.outcome),
        )),
        timing: Some(timing(&answer, total)),
        request_id,
        requested_method: pb::Method::from(r.method()) as i32,
    })
}

fn predict_response(
    model: &LoadedModel,
    r: &PredictRequest,
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
        parameters: Some(pb::Parameters {
            n0: 0,
            n: r.n,
            alpha: r.alpha,
            seed: r.seed,
            n_drawn: r.n,
            ..model_parameters(model)
        }),
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
        sigma: gaussian_sigma(model),
        noise: model.bundle.noise().kind().into(),
        noise_scale: model.bundle.noise().scale(),
        norm: model.bundle.noise().norm().as_str().into(),
        nominal_n: model.bundle.surrogate.as_ref().map_or(0, |s| s.nominal_n),
        device: format!("{:?}", model.device).to_lowercase(),
        defaults: Some(pb::OptionValues {
            method: pb::Method::from(model.defaults.method) as i32,
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
            .as_ref()
            .map(|d| d.public_name())
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
        let deadline = self.deadline(Self::client_deadline(request.metadata()));
        let caller = CallerTrace::of(request.metadata());
        self.certify_tracked(request.into_inner(), deadline, &caller)
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
        // The client's deadline, if any, bounds the whole stream; each request
        // gets the server's own timeout from the moment it is read.
        let client_deadline = Self::client_deadline(request.metadata());
        let caller = CallerTrace::of(request.metadata());
        let phase = self.shared.lifecycle.subscribe();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(limit);
        let session = StreamSession {
            svc: self.clone(),
            tx,
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            client_deadline,
            caller,
            phase,
            index: 0,
        };
        tokio::spawn(session.run(inbound));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn predict(
        &self,
        request: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        let deadline = self.deadline(Self::client_deadline(request.metadata()));
        let caller = CallerTrace::of(request.metadata());
        let req = request.into_inner();
        let started = Instant::now();
        let _in_flight = self.shared.metrics.in_flight();
        let span = caller.request_span(Rpc::Predict, &request_id(&req.request_id));
        let given = req.model.clone();
        let mut labels = Labels::new("predict");
        let result = async {
            let _admitted = self.shared.admit()?;
            self.shared
                .unless_stopped(self.predict_one(req, deadline, &mut labels))
                .await
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
        labels.unresolved_on(&span, &given);
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

/// One `CertifyStream` call: reads the client's requests in turn and answers
/// each in its own task, at most `limit` at a time.
struct StreamSession {
    svc: CertifierService,
    tx: mpsc::Sender<Result<pb::CertifyStreamResponse, Status>>,
    /// One per request being answered, `limit` in all.
    permits: Arc<Semaphore>,
    limit: usize,
    client_deadline: Option<Instant>,
    /// The stream's caller's trace, which each of its requests joins.
    caller: CallerTrace,
    phase: watch::Receiver<Phase>,
    /// Requests read so far (the next one's index).
    index: u64,
}

impl StreamSession {
    async fn run(mut self, mut inbound: Streaming<pb::CertifyRequest>) {
        // Each step breaks with whether a drain cut the stream short.
        let cut_short = loop {
            let req = match self.next_request(&mut inbound).await {
                ControlFlow::Continue(req) => req,
                ControlFlow::Break(cut_short) => break cut_short,
            };
            let permit = match self.permit_for(&req).await {
                ControlFlow::Continue(permit) => permit,
                ControlFlow::Break(cut_short) => break cut_short,
            };
            self.spawn_answer(req, permit);
        };
        if cut_short {
            self.say_stopped_reading().await;
        }
    }

    /// The next request read, or a break at the stream's end, at a read
    /// error (sent to the client) or on a drain.
    async fn next_request(
        &mut self,
        inbound: &mut Streaming<pb::CertifyRequest>,
    ) -> ControlFlow<bool, pb::CertifyRequest> {
        // On shutdown the stream stops reading; it ends once the
        // requests already read are answered.
        let next = tokio::select! {
            _ = self.phase.wait_for(|p| *p >= Phase::Draining) => {
                return ControlFlow::Break(true);
            }
            next = inbound.message() => next,
        };
        match next {
            Ok(Some(req)) => ControlFlow::Continue(req),
            Ok(None) => ControlFlow::Break(false),
            Err(status) => {
                let _ = self
                    .tx
                    .send(Err(super::resource_exhausted_if_oversize(status)))
                    .await;
                ControlFlow::Break(false)
            }
        }
    }

    /// Room for `req` among the requests in flight.
    async fn permit_for(
        &mut self,
        req: &pb::CertifyRequest,
    ) -> ControlFlow<bool, OwnedSemaphorePermit> {
        // At the in-flight limit, wait for room, but not past a drain:
        // the request already read is then answered UNAVAILABLE.
        let phase = &mut self.phase;
        tokio::select! {
            p = self.permits.clone().acquire_owned() => match p {
                Ok(p) => ControlFlow::Continue(p),
                Err(_) => ControlFlow::Break(false),
            },
            _ = async { phase.wait_for(|p| *p >= Phase::Draining).await.map(|_| ()) } => {
                let e = super::error::not_serving(Phase::Draining);
                let _ = self
                    .tx
                    .send(Ok(pb::CertifyStreamResponse {
                        index: self.index,
                        request_id: req.request_id.clone(),
                        result: Some(stream_error(&e)),
                    }))
                    .await;
                self.index += 1;
                ControlFlow::Break(true)
            }
        }
    }

    /// Answers `req` in its own task, which holds `permit` until it is done.
    fn spawn_answer(&mut self, req: pb::CertifyRequest, permit: OwnedSemaphorePermit) {
        let (tx, svc, i) = (self.tx.clone(), self.svc.clone(), self.index);
        let caller = self.caller.clone();
        self.index += 1;
        let deadline = svc.deadline(self.client_deadline);
        tokio::spawn(async move {
            let request_id = req.request_id.clone();
            // A client that hangs up drops its pending work with it.
            let result = tokio::select! {
                r = svc.certify_tracked(req, deadline, &caller) => r,
                _ = tx.closed() => return,
            };
            let result = Some(match result {
                Ok(r) => pb::certify_stream_response::Result::Response(r),
                Err(e) => stream_error(&e),
            });
            // A client that stopped reading cannot hold the shutdown up.
            tokio::select! {
                _ = tx.send(Ok(pb::CertifyStreamResponse {
                    index: i,
                    request_id,
                    result,
                })) => {}
                _ = svc.shared.lifecycle.reached(Phase::Stopped) => {}
            }
            drop(permit);
        });
    }

    /// Once every request read has its answer (or its error) sent, tells the
    /// client that what it sent after these was never read.
    async fn say_stopped_reading(&self) {
        tokio::select! {
            _ = self.permits.acquire_many(self.limit as u32) => {}
            _ = self.svc.shared.lifecycle.reached(Phase::Stopped) => {}
        }
        let index = self.index;
        let _ = self
            .tx
            .send(Err(Status::unavailable(format!(
                "the server is shutting down: this stream stopped reading after {index} requests, \
                 all of them answered; send the rest to another replica"
            ))))
            .await;
    }
}

/// A stream's answer to one request that failed.
fn stream_error(e: &ServiceError) -> pb::certify_stream_response::Result {
    pb::certify_stream_response::Result::Error(pb::StreamError {
        code: e.code() as i32,
        message: e.to_string(),
    })
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
