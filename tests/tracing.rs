//! OpenTelemetry traces received over real OTLP/gRPC: a receiver built from the official
//! `opentelemetry-proto` definitions records what replicas and clients export. A sharded run over
//! replicas on 127.0.0.2–4 (and one on 127.0.0.5 that dies during the run) is one trace: the
//! client's span, each chunk on each replica (the dead one's failed and sent elsewhere), each
//! replica's call, tokenization, queue, forward passes and analysis. A collector that hangs or is
//! down costs requests nothing: they succeed while an export is stuck, and lost spans are counted.
mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use rotations::client::cluster::{self, Replicas};
use rotations::config::ConnectArgs;
use rotations::proto;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A received span and the resource (process) that sent it.
#[derive(Clone, Debug)]
struct Received {
    resource: Vec<KeyValue>,
    span: Span,
}

/// An OTLP/gRPC trace receiver that keeps every span, or (`hang`) takes exports and never answers.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
    exports: Arc<AtomicUsize>,
    hang: bool,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.exports.fetch_add(1, Ordering::SeqCst);
        if self.hang {
            std::future::pending::<()>().await;
        }
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.map(|r| r.attributes).unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received { resource: resource.clone(), span });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    /// Serves on a free loopback port; returns the endpoint to give exporters.
    async fn start(hang: bool) -> (Self, String) {
        let receiver = Receiver { hang, ..Default::default() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        (receiver, endpoint)
    }

    /// Waits until no span has arrived for a second (several export periods): what the processes
    /// still had queued has come in.
    async fn settle(&self) -> Vec<Received> {
        let mut seen = self.spans.lock().unwrap().len();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.spans.lock().unwrap().len();
            if now == seen {
                return self.spans();
            }
            seen = now;
        }
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (up to a minute: a loaded machine) until `done` holds for the spans received.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(tokio::time::Instant::now() < deadline, "never received {what}; got {} spans", spans.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn value(attributes: &[KeyValue], key: &str) -> Option<any_value::Value> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()).and_then(|v| v.value)
}

fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    match value(attributes, key)? {
        any_value::Value::StringValue(s) => Some(s),
        other => Some(format!("{other:?}")),
    }
}

fn int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match value(attributes, key)? {
        any_value::Value::IntValue(i) => Some(i),
        _ => None,
    }
}

impl Received {
    fn attr(&self, key: &str) -> Option<String> {
        text(&self.span.attributes, key)
    }

    fn int(&self, key: &str) -> Option<i64> {
        int(&self.span.attributes, key)
    }

    fn service(&self) -> String {
        text(&self.resource, "service.name").unwrap_or_default()
    }
}

/// Replica flags: export to `endpoint` quickly (the test waits for the spans), named by a
/// resource attribute as a deployment would.
fn exporting(endpoint: &str, replica: &str) -> Vec<(String, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ("OTEL_RESOURCE_ATTRIBUTES".into(), format!("replica={replica},deployment.environment=test")),
    ]
}

fn serve_exporting(host: &str, env: &[(String, String)], args: &[&str]) -> (ServerProcess, String) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    serve_model_with(&bundled_model_dir(), host, args, &env)
}

fn corpus(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let body: String = (0..n).map(|i| format!("Sentence {i}: she saw her friend at the market.\n")).collect();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, body).unwrap();
    path
}

fn request() -> proto::RotationRequest {
    proto::RotationRequest {
        target: Some(proto::rotation_request::Target::TargetText(" her".into())),
        unit: proto::AngleUnit::Degrees as i32,
        ..Default::default()
    }
}

/// The span ids of `root`'s descendants among `spans` (those of one trace).
fn descendants<'a>(spans: &'a [&'a Received], root: &[u8]) -> Vec<&'a Received> {
    let mut found: Vec<&Received> = Vec::new();
    let mut frontier = vec![root.to_vec()];
    while let Some(parent) = frontier.pop() {
        for s in spans.iter().filter(|s| s.span.parent_span_id == parent) {
            frontier.push(s.span.span_id.clone());
            found.push(s);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_run_is_one_trace_through_every_replica_to_each_pass() {
    let (receiver, endpoint) = Receiver::start(false).await;
    let replicas: Vec<_> = [("127.0.0.2", "r2"), ("127.0.0.3", "r3"), ("127.0.0.4", "r4"), ("127.0.0.5", "r5")]
        .into_iter()
        .map(|(host, name)| serve_exporting(host, &exporting(&endpoint, name), &[]))
        .collect();
    let addresses: Vec<String> = replicas.iter().map(|(_, a)| a.clone()).collect();
    let (replicas, dying) = {
        let mut replicas = replicas;
        let dying = replicas.pop().unwrap().0;
        (replicas, Arc::new(Mutex::new(Some(dying))))
    };

    // This process is the client: its spans go to the same receiver.
    let config = rotations::telemetry::OtlpConfig { endpoint: endpoint.clone(), service_name: "test-client".into() };
    let export = rotations::telemetry::install(None, Some(&config)).unwrap().expect("exporting");

    // The 4th replica dies at the second lookup, with the run under way: its chunks fail over.
    let lookups = Arc::new(AtomicUsize::new(0));
    let (counter, listed, kill) = (lookups.clone(), addresses.clone(), dying.clone());
    let resolve: cluster::Resolve = Arc::new(move || {
        if counter.fetch_add(1, Ordering::SeqCst) == 1 {
            drop(kill.lock().unwrap().take());
        }
        Ok(listed.clone())
    });
    let dir = tempfile::tempdir().unwrap();
    let path = corpus(dir.path(), 120);
    let root = tracing::info_span!("sharded analysis");
    let trace_id = root.context().span().span_context().trace_id().to_bytes().to_vec();
    let how = ConnectArgs::default();
    let run = cluster::analyze(
        Replicas { resolve, interval: Duration::from_millis(1) },
        &how,
        request(),
        cluster::CorpusFile { path: &path, marked: false },
        3,
        None,
    );
    let outcome = run.instrument(root).await.unwrap();
    assert!(lookups.load(Ordering::SeqCst) >= 2 && dying.lock().unwrap().is_none(), "the replica was killed");
    let served: usize = outcome.replicas.iter().map(|(_, n, _)| n).sum();
    assert_eq!(served, 40, "each chunk computed once: {:?}", outcome.replicas);
    tokio::task::spawn_blocking(move || export.shutdown(Duration::from_secs(10))).await.unwrap();

    let live = &addresses[..3];
    let host = |address: &String| address.split(':').next().unwrap().to_string();
    receiver
        .wait_for("every live replica's passes in the client's trace", |spans| {
            live.iter().all(|a| {
                spans.iter().any(|s| {
                    s.span.trace_id == trace_id
                        && s.span.name == "forward_pass"
                        && text(&s.resource, "replica").is_some_and(|r| r == format!("r{}", &host(a)[8..]))
                })
            })
        })
        .await;
    let spans = receiver.settle().await;
    drop(replicas);
    let traced: Vec<&Received> = spans.iter().filter(|s| s.span.trace_id == trace_id).collect();

    // The client's side: the root, and chunk spans naming each replica.
    let client_root = traced.iter().find(|s| s.span.name == "sharded analysis").expect("the client's span");
    assert_eq!(client_root.service(), "test-client");
    let chunks: Vec<&&Received> =
        traced.iter().filter(|s| s.service() == "test-client" && s.span.name.starts_with("chunk ")).collect();
    for address in live {
        assert!(
            chunks.iter().any(|c| c.attr("server.address").as_deref() == Some(address)),
            "chunks sent to {address}"
        );
    }
    // The dead replica's chunks: failed, marked for failover, and computed by another replica.
    let failed: Vec<&&&Received> = chunks
        .iter()
        .filter(|c| c.attr("server.address").as_deref() == Some(&addresses[3]))
        .filter(|c| c.attr("failover").as_deref() == Some("BoolValue(true)"))
        .collect();
    assert!(!failed.is_empty(), "a chunk failed over from the dead replica");
    for f in &failed {
        let number = f.int("chunk.number");
        let again = chunks.iter().filter(|c| c.int("chunk.number") == number && c.int("chunk.failures").unwrap() >= 1);
        assert!(
            again.clone().any(|c| live.contains(&c.attr("server.address").unwrap()) && c.attr("failover").is_none()),
            "chunk {number:?} computed again on a live replica"
        );
    }

    // Each live replica's side: its calls are children of the client's chunk spans, named by its
    // address and its resource, with tokenization, queue, passes and analysis below them.
    let chunk_ids: HashSet<Vec<u8>> = chunks.iter().map(|c| c.span.span_id.clone()).collect();
    for address in live {
        let (ip, replica) = (host(address), format!("r{}", &host(address)[8..]));
        let calls: Vec<&&Received> = traced
            .iter()
            .filter(|s| s.span.name == "rotations.v1.RotationService/StreamRotations")
            .filter(|s| s.attr("server.address").as_deref() == Some(ip.as_str()))
            .collect();
        assert!(!calls.is_empty(), "{address} has StreamRotations spans in the trace");
        for call in &calls {
            assert_eq!((call.service(), text(&call.resource, "replica")), ("rotations".into(), Some(replica.clone())));
            assert!(chunk_ids.contains(&call.span.parent_span_id), "a call's parent is a client chunk span");
            assert_eq!(call.int("rpc.grpc.status_code"), Some(0), "{:?}", call.span.attributes);
        }
        let below: Vec<&Received> = calls.iter().flat_map(|c| descendants(&traced, &c.span.span_id)).collect();
        let names: HashSet<&str> = below.iter().map(|s| s.span.name.as_str()).collect();
        for name in ["chunk", "tokenize", "admission", "queue", "forward_pass", "analysis"] {
            assert!(names.contains(name), "{address}: no {name} span under its calls: {names:?}");
        }
        check_passes(&spans, &below, &replica);
    }
}

/// Each request's pass span carries the pass's id and sizes, and links to the pass's own span
/// (received from the same replica, with the same id, the model's runs below it).
fn check_passes(all: &[Received], below: &[&Received], replica: &str) {
    let by_id: HashMap<&[u8], &Received> = all.iter().map(|s| (s.span.span_id.as_slice(), s)).collect();
    for pass in below.iter().filter(|s| s.span.name == "forward_pass") {
        let (rows, tokens, padded) =
            (pass.int("pass.rows").unwrap(), pass.int("pass.tokens").unwrap(), pass.int("pass.padded_tokens").unwrap());
        assert!(pass.int("pass.id").unwrap() >= 1 && rows >= 1 && tokens <= padded, "{pass:?}");
        assert!(pass.int("rows").unwrap() <= rows && pass.int("tokens").unwrap() <= tokens);
        let link = pass.span.links.first().expect("a request's pass links to the pass");
        let shared = by_id.get(link.span_id.as_slice()).expect("the linked pass span was received");
        assert_eq!(shared.span.name, "forward_pass");
        assert!(shared.span.parent_span_id.is_empty(), "a pass is a root: shared by its requests");
        assert_eq!(
            (shared.int("pass.id"), text(&shared.resource, "replica").as_deref()),
            (pass.int("pass.id"), Some(replica))
        );
        assert!(
            shared.span.links.iter().any(|l| l.span_id == pass.span.parent_span_id),
            "the pass links back to its requester"
        );
        let runs = all.iter().filter(|s| s.span.parent_span_id == shared.span.span_id && s.span.name == "onnx_run");
        assert!(runs.count() >= 1, "the pass's ONNX Runtime runs are its children");
    }
}

/// One Analyze of a few sentences on `address`.
async fn analyze_once(address: &str) -> Result<proto::Analysis, tonic::Status> {
    let mut client = rotations::client::connect_to(address, &ConnectArgs::default()).await.unwrap();
    let sentences = (0..4).map(|i| format!("Sentence {i}: she saw her friend.")).collect();
    client.analyze(proto::RotationRequest { sentences, ..request() }).await.map(tonic::Response::into_inner)
}

/// `rotations_trace_spans_dropped_total{reason}` on the metrics page (0 before the first drop).
fn dropped(metrics_port: u16, reason: &str) -> f64 {
    let page = http_get(metrics_port, "/metrics");
    let series = format!("rotations_trace_spans_dropped_total{{reason=\"{reason}\"}} ");
    page.lines().find_map(|l| l.strip_prefix(series.as_str())).map_or(0.0, |v| v.trim().parse().unwrap())
}

async fn until_dropped(metrics_port: u16, reason: &str) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = dropped(metrics_port, reason);
        if n > 0.0 {
            return n;
        }
        assert!(tokio::time::Instant::now() < deadline, "no span counted as dropped ({reason})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_or_dead_collector_costs_requests_nothing_and_lost_spans_are_counted() {
    // A collector that takes the first export and never answers: the exporter is stuck in it
    // (a long export timeout), and a small queue fills.
    let (hung, endpoint) = Receiver::start(true).await;
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut env = exporting(&endpoint, "stuck");
    env.extend([
        ("OTEL_EXPORTER_OTLP_TIMEOUT".into(), "600000".into()),
        ("OTEL_BSP_MAX_QUEUE_SIZE".into(), "8".into()),
    ]);
    let (_server, address) = serve_exporting("127.0.0.1", &env, &["--metrics-port", &metrics_port.to_string()]);
    analyze_once(&address).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while hung.exports.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the exporter never called the collector");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The one export is held by the collector: requests made now cannot be waiting on it.
    for _ in 0..5 {
        let analysis = analyze_once(&address).await.unwrap();
        assert_eq!(analysis.rotations.unwrap().sentences.len(), 4);
    }
    assert_eq!(hung.exports.load(Ordering::SeqCst), 1, "still the one export, unanswered");
    assert!(until_dropped(metrics_port, "queue_full").await > 0.0);

    // No collector at all (nothing listens): requests succeed, failed exports' spans are counted.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let env = exporting(&format!("http://{closed}"), "alone");
    let (_server, address) = serve_exporting("127.0.0.1", &env, &["--metrics-port", &metrics_port.to_string()]);
    for _ in 0..3 {
        assert_eq!(analyze_once(&address).await.unwrap().rotations.unwrap().sentences.len(), 4);
    }
    assert!(until_dropped(metrics_port, "export_failed").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_its_trace_context_and_exports_its_span() {
    let (receiver, endpoint) = Receiver::start(false).await;
    let (_server, address) = serve_exporting("127.0.0.1", &exporting(&endpoint, "one"), &[]);
    let (bin, server, collector) = (env!("CARGO_BIN_EXE_rotations"), address.clone(), endpoint.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin).args(["info", "--server", &server, "--otlp-endpoint", &collector]).output()
    });
    let out = out.await.unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let spans = receiver
        .wait_for("the CLI's span and the server's GetModelInfo", |spans| {
            let cli = spans.iter().find(|s| s.span.name == "rotations info");
            cli.is_some_and(|cli| {
                spans.iter().any(|s| {
                    s.span.name == "rotations.v1.RotationService/GetModelInfo" && s.span.trace_id == cli.span.trace_id
                })
            })
        })
        .await;
    let cli = spans.iter().find(|s| s.span.name == "rotations info").unwrap();
    assert_eq!(cli.service(), "rotations-cli");
    let call = spans.iter().find(|s| s.span.name == "rotations.v1.RotationService/GetModelInfo").unwrap();
    assert_eq!(call.span.parent_span_id, cli.span.span_id, "the server's span is the CLI span's child");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_callers_trace_id() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let (log, port_file) = (dir.path().join("server.log"), dir.path().join("port"));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_rotations"))
        .args(["serve", "--port", "0", "--threads", "1", "--log-format", "json"])
        .arg("--model-dir")
        .arg(bundled_model_dir())
        .arg("--ort-library")
        .arg(ort_library())
        .arg("--port-file")
        .arg(&port_file)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _server = ServerProcess(child);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let address = loop {
        if let Ok(port) = std::fs::read_to_string(&port_file) {
            break format!("127.0.0.1:{}", port.trim());
        }
        assert!(tokio::time::Instant::now() < deadline, "the server never wrote its port");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A refused request (no sentences) is logged; it carries the caller's W3C trace context.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(request());
    request.metadata_mut().insert("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01").parse().unwrap());
    let status = loop {
        let mut client = rotations::client::connect_to(&address, &ConnectArgs::default()).await.unwrap();
        let mut again = tonic::Request::new(request.get_ref().clone());
        *again.metadata_mut() = request.metadata().clone();
        match client.analyze(again).await {
            Err(s) if s.code() == tonic::Code::Unavailable => {
                assert!(tokio::time::Instant::now() < deadline, "the server never became ready");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => break other.unwrap_err(),
        }
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if let Some(line) = text.lines().find(|l| l.contains("request failed") && l.contains("Analyze")) {
            break line.to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "no log line for the refused request:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    let spans = json["spans"].as_array().expect("the line lists its spans");
    assert!(spans.iter().any(|s| s["trace_id"] == trace_id), "{line}");
}
