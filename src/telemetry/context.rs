//! W3C trace context (`traceparent`, `tracestate`) in and out of gRPC metadata, and the subscriber
//! that logs and (with an OTLP endpoint) exports spans.
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use super::otel::{OtlpConfig, TraceExport};
use crate::config::LogFormat;

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes());
        if let (Ok(key), Ok(value)) = (key, value.parse()) {
            self.0.insert(key, value);
        }
    }
}

/// The caller's trace context from a request's headers (empty when it sent none, or a malformed one).
pub fn extract(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// Adds the current span's trace context to an outgoing request, so the server's spans join the
/// caller's trace. Nothing is added where no span is exported.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut Metadata(metadata));
    }
}

/// Joins `span` to the caller's trace (`parent` from [`extract`]) and records its trace id in the
/// span's `trace_id` field, so that log lines lead to the trace: the exported trace's id, or the
/// caller's where nothing is exported.
pub fn join(span: &tracing::Span, parent: opentelemetry::Context) {
    let callers = parent.span().span_context().trace_id();
    let _ = span.set_parent(parent);
    let exported = span.context().span().span_context().trace_id();
    let id = if exported != opentelemetry::TraceId::INVALID { exported } else { callers };
    if id != opentelemetry::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(id));
    }
}

/// Installs the process's subscriber: log lines on stderr (`log`; none for the CLI's commands) and,
/// with an OTLP endpoint, the spans exported. Returns the exporter, to flush before exiting.
pub fn install(log: Option<LogFormat>, otlp: Option<&OtlpConfig>) -> anyhow::Result<Option<TraceExport>> {
    if log.is_none() && otlp.is_none() {
        return Ok(None);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    // Colours only on a terminal: logs collected from a container or a file stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = log.map(|format| {
        let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
        match format {
            LogFormat::Text => layer.boxed(),
            LogFormat::Json => layer.json().boxed(),
        }
    });
    let (export, otel) = match otlp {
        Some(config) => {
            let (export, tracer) = TraceExport::start(config)?;
            // busy_ns/idle_ns: how much of a span's time was work (the analysis is entered only then).
            let layer = tracing_opentelemetry::layer().with_tracer(tracer).with_tracked_inactivity(true);
            (Some(export), Some(layer))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init()?;
    Ok(export)
}
