//! Logs and traces: the process's one tracing subscriber.
//!
//! Logs go to stderr as configured in `[logging]`. When `[traces]
//! otlp_endpoint` is set, the request spans (`certify`, `predict`: model,
//! method, request id) and the batch spans of the inference lanes also go out
//! over OTLP/gRPC. A batch span is linked to the span of every request it
//! served (`follows_from`), since one batch serves many requests and belongs
//! to none of their traces. A caller's W3C `traceparent` metadata makes its
//! trace the request span's parent. With no endpoint nothing is exported and
//! nothing else changes.
use crate::config::{Config, LogFormat, TracesConfig};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("traces: cannot build the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("logging: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// What [`install`] set up; [`Telemetry::shutdown`] sends the spans still
/// waiting before the process exits.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is buffered, waiting up to the export timeout. Call it
    /// off the async runtime's threads, with the runtime still alive: the
    /// exporter's connection is driven there.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "traces: the last spans may not have gone out");
            }
        }
    }
}

/// Installs the global subscriber. Needs a Tokio runtime context when traces
/// are on (the exporter's channel lives on it).
pub fn install(config: &Config) -> Result<Telemetry, TelemetryError> {
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match config.logging.format {
        LogFormat::Json => logs.json().boxed(),
        LogFormat::Human => logs.boxed(),
    }
    .with_filter(EnvFilter::new(&config.logging.level));
    let provider = tracer_provider(&config.traces)?;
    // Spans for export are this crate's own at info, whatever the log level.
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("smoothcert"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("smoothcert", tracing::Level::INFO),
            )
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()?;
    Ok(Telemetry { provider })
}

fn tracer_provider(c: &TracesConfig) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    if c.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    let timeout = Duration::from_millis(c.export_timeout_ms);
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(c.otlp_endpoint.clone())
        .with_timeout(timeout)
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: c.otlp_endpoint.clone(),
            source,
        })?;
    let batches = BatchConfigBuilder::default()
        .with_scheduled_delay(Duration::from_millis(c.export_delay_ms))
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(c.service_name.clone())
        .build();
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(c.sample_ratio)));
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batches)
                    .build(),
            )
            .with_resource(resource)
            .with_sampler(sampler)
            .build(),
    ))
}

/// The caller's trace, from W3C `traceparent` / `tracestate` metadata, which
/// the spans of its requests join as children.
#[derive(Clone, Default)]
pub struct CallerTrace(Option<opentelemetry::Context>);

impl CallerTrace {
    pub fn of(metadata: &tonic::metadata::MetadataMap) -> CallerTrace {
        if metadata.get("traceparent").is_none() {
            return CallerTrace(None);
        }
        CallerTrace(Some(
            TraceContextPropagator::new().extract(&Metadata(metadata)),
        ))
    }

    /// The server span of one request (`certify` or `predict`), in the
    /// caller's trace. Its `model` is recorded once, when the name resolves.
    /// Attributes only an exported trace needs are set outside `tracing`, so
    /// that log lines keep their fields.
    pub fn request_span(&self, rpc: Rpc, request_id: &str) -> tracing::Span {
        use tracing::field::Empty;
        // A span's name must be a literal: one macro per RPC, the same fields.
        macro_rules! server_span {
            ($name:literal, $method:expr) => {
                tracing::info_span!(
                    $name,
                    otel.kind = "server",
                    otel.status_code = Empty,
                    request_id = %request_id,
                    model = Empty,
                    method = $method
                )
            };
        }
        // Predict has one method; a certify span records the resolved one.
        let span = match rpc {
            Rpc::Certify => server_span!("certify", Empty),
            Rpc::Predict => server_span!("predict", "predict"),
        };
        // The parent first: it can be set only before the span starts.
        if let Some(parent) = &self.0 {
            // Fails only where no trace layer is installed: nothing to join then.
            let _ = span.set_parent(parent.clone());
        }
        span.set_attribute("rpc.system", "grpc");
        span.set_attribute("rpc.service", "smoothcert.v1.Certifier");
        span.set_attribute("rpc.method", rpc.method());
        span
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Rpc {
    /// Certify, and each request of CertifyStream.
    Certify,
    Predict,
}

impl Rpc {
    fn method(self) -> &'static str {
        match self {
            Rpc::Certify => "Certify",
            Rpc::Predict => "Predict",
        }
    }
}

/// Records a request's gRPC status on its span; an error marks the span failed.
pub fn record_status(span: &tracing::Span, code: tonic::Code) {
    span.set_attribute("rpc.grpc.status_code", code as i64);
    if code != tonic::Code::Ok {
        span.record("otel.status_code", "ERROR");
    }
}

/// Request metadata as a propagator reads it.
struct Metadata<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}
