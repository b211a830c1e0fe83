//! OpenTelemetry traces over OTLP/gRPC, off unless an endpoint is given. Spans are handed to a
//! batch processor (a bounded queue drained by its own thread), so a slow or dead collector never
//! makes a request wait: when the queue is full a span is dropped and counted
//! (`rotations_trace_spans_dropped_total`), as are the spans of an export that failed.
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;

/// Where spans go and what names the process in them.
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    /// The collector's OTLP/gRPC endpoint, e.g. `http://otel-collector:4317`.
    pub endpoint: String,
    /// `service.name` of every span (OTEL_RESOURCE_ATTRIBUTES adds the rest).
    pub service_name: String,
}

/// Spans waiting for export, at most (`OTEL_BSP_MAX_QUEUE_SIZE`, the SDK's default 2048).
fn max_queued_spans() -> usize {
    std::env::var("OTEL_BSP_MAX_QUEUE_SIZE").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(2048)
}

/// The exporting half of tracing: flush it before the process exits.
pub struct TraceExport {
    provider: SdkTracerProvider,
}

impl TraceExport {
    /// Starts the exporter (call inside the tokio runtime that will carry its gRPC calls) and
    /// returns it with the tracer for `tracing-opentelemetry`.
    pub fn start(config: &OtlpConfig) -> anyhow::Result<(Self, opentelemetry_sdk::trace::SdkTracer)> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.endpoint.clone())
            .build()
            .map_err(|e| anyhow::anyhow!("--otlp-endpoint {}: {e}", config.endpoint))?;
        let queued = Arc::new(AtomicUsize::new(0));
        let limit = max_queued_spans();
        let exporter = OnRuntime {
            exporter: Arc::new(exporter),
            runtime: tokio::runtime::Handle::current(),
            queued: queued.clone(),
        };
        let batch = BatchConfigBuilder::default().with_max_queue_size(limit).build();
        let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
        let resource = Resource::builder().with_service_name(config.service_name.clone()).build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Counted { inner: processor, queued, limit })
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("rotations");
        Ok((Self { provider }, tracer))
    }

    /// Exports what is queued and stops; a dead collector holds the exit for `timeout` at most.
    /// Blocking: call from a blocking thread while the runtime still runs.
    pub fn shutdown(self, timeout: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::debug!(error = %e, "trace export shutdown");
        }
    }
}

/// Runs the OTLP exporter's gRPC calls on the tokio runtime: the batch processor's own thread
/// has no reactor, and tonic needs one.
struct OnRuntime<E> {
    exporter: Arc<E>,
    runtime: tokio::runtime::Handle,
    /// Spans accepted by [`Counted`] and not yet through an export.
    queued: Arc<AtomicUsize>,
}

impl<E> fmt::Debug for OnRuntime<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnRuntime").finish_non_exhaustive()
    }
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let (exporter, spans, queued) = (self.exporter.clone(), batch.len(), self.queued.clone());
        let task = self.runtime.spawn(async move { exporter.export(batch).await });
        async move {
            let result = task.await.unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())));
            queued.fetch_sub(spans, Ordering::SeqCst);
            if result.is_err() {
                super::spans_dropped("export_failed", spans);
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called once, when the provider is built, before any export holds a clone.
        if let Some(exporter) = Arc::get_mut(&mut self.exporter) {
            exporter.set_resource(resource);
        }
    }
}

/// The batch processor behind a count of the spans it holds: a span that would not fit is
/// dropped here and counted (the SDK drops it silently). The count lasts until the span's export
/// has returned, so it is never below what the processor's queue holds, and the processor never
/// drops a span itself.
#[derive(Debug)]
struct Counted<P> {
    inner: P,
    queued: Arc<AtomicUsize>,
    limit: usize,
}

impl<P: SpanProcessor> SpanProcessor for Counted<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.limit {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            super::spans_dropped("queue_full", 1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
