//! Metrics (Prometheus, served on --metrics-port) and per-stage timings. The `metrics` facade is a
//! no-op until an exporter is installed, so library code and tests record freely. Traces: the
//! subscriber, W3C trace context ([`context`]) and the OTLP export ([`otel`]).
pub mod context;
pub mod otel;

pub use context::{extract, inject, install, join};
pub use otel::{OtlpConfig, TraceExport};
use std::net::SocketAddr;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Starts the Prometheus exporter: GET http://ADDR/metrics.
pub fn install_prometheus(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Suffix("seconds".into()),
            &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
        )?
        .set_buckets_for_metric(
            Matcher::Full("rotations_batch_sentences".into()),
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
        )?
        .set_buckets_for_metric(
            Matcher::Full("rotations_batch_padding_ratio".into()),
            &[0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75],
        )?
        .install()?;
    tracing::info!(%addr, "Prometheus metrics on /metrics");
    Ok(())
}

/// One finished RPC: count by method and status code, and its latency.
pub fn request(rpc: &'static str, code: tonic::Code, elapsed: Duration) {
    counter!("rotations_requests_total", "rpc" => rpc, "code" => format!("{code:?}")).increment(1);
    histogram!("rotations_request_duration_seconds", "rpc" => rpc).record(elapsed.as_secs_f64());
}

/// Sentences waiting for a forward pass (+ on submit, − when batched or dropped).
pub fn queue_depth(delta: f64) {
    gauge!("rotations_queue_depth").increment(delta);
}

pub fn cancelled_sentences(n: u64) {
    counter!("rotations_cancelled_sentences_total").increment(n);
}

/// One forward pass: its size, how much of it was padding, and its duration.
pub fn batch(sentences: usize, tokens: usize, padded_tokens: usize, elapsed: Duration) {
    histogram!("rotations_batch_sentences").record(sentences as f64);
    let padding = if padded_tokens == 0 { 0.0 } else { 1.0 - tokens as f64 / padded_tokens as f64 };
    histogram!("rotations_batch_padding_ratio").record(padding);
    histogram!("rotations_inference_seconds").record(elapsed.as_secs_f64());
    // Per-second rates come from these counters: rate(rotations_sentences_total[1m]).
    counter!("rotations_sentences_total").increment(sentences as u64);
    counter!("rotations_tokens_total").increment(tokens as u64);
}

/// Spans lost on the way to the collector: `queue_full` (the export queue was full: the collector
/// is slow or away) or `export_failed` (the collector refused them or could not be reached).
pub fn spans_dropped(reason: &'static str, spans: usize) {
    counter!("rotations_trace_spans_dropped_total", "reason" => reason).increment(spans as u64);
}

/// A request refused for its API key (`missing` or `wrong`); the key itself is never recorded.
pub fn auth_failure(reason: &'static str) {
    counter!("rotations_auth_failures_total", "reason" => reason).increment(1);
}

pub fn model_loaded(elapsed: Duration) {
    gauge!("rotations_model_load_seconds").set(elapsed.as_secs_f64());
    // Publish the queue depth at 0 from the start: an autoscaler needs the series of idle pods too.
    queue_depth(0.0);
}

/// Per-stage timings of one request, reported in its span, its metrics and its response metadata.
#[derive(Clone, Copy, Debug, Default)]
pub struct StageTimings {
    pub tokenize: Duration,
    /// Longest wait of one of the request's sentences in the batch queue.
    pub queue: Duration,
    /// Sum of the forward passes the request's sentences rode in (each counted once).
    pub inference: Duration,
    pub analysis: Duration,
}

impl StageTimings {
    /// `server-timing`-style header value: `tokenize;dur=0.31, queue;dur=…` (milliseconds).
    pub fn header_value(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        format!(
            "tokenize;dur={:.3}, queue;dur={:.3}, inference;dur={:.3}, analysis;dur={:.3}",
            ms(self.tokenize),
            ms(self.queue),
            ms(self.inference),
            ms(self.analysis)
        )
    }

    pub fn record(&self) {
        for (stage, d) in [
            ("tokenize", self.tokenize),
            ("queue", self.queue),
            ("inference", self.inference),
            ("analysis", self.analysis),
        ] {
            histogram!("rotations_stage_seconds", "stage" => stage).record(d.as_secs_f64());
        }
        let span = tracing::Span::current();
        span.record("tokenize_ms", self.tokenize.as_secs_f64() * 1e3);
        span.record("queue_ms", self.queue.as_secs_f64() * 1e3);
        span.record("inference_ms", self.inference.as_secs_f64() * 1e3);
        span.record("analysis_ms", self.analysis.as_secs_f64() * 1e3);
    }
}
