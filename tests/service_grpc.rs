//! The real server on 127.0.0.1:0 through the generated client: health, reflection, Analyze, errors.
mod common;

use std::time::Duration;

use clap::Parser;
use common::*;
use rotations::config::{Cli, Command, ServeConfig};
use rotations::proto::rotation_request::Target;
use rotations::proto::rotation_service_client::RotationServiceClient;
use rotations::proto::{self, RotationRequest};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

fn serve_config(extra: &[&str]) -> ServeConfig {
    let model_dir = bundled_model_dir();
    let lib = ort_library();
    let mut args = vec![
        "rotations",
        "serve",
        "--model-dir",
        model_dir.to_str().unwrap(),
        "--ort-library",
        lib.to_str().unwrap(),
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    match Cli::parse_from(args).command {
        Command::Serve(c) => c,
        _ => unreachable!(),
    }
}

struct TestServer {
    addr: std::net::SocketAddr,
    channel: Channel,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    async fn start(extra: &[&str]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(rotations::service::server::serve(serve_config(extra), listener, async {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        Self { addr, channel, stop: Some(stop), handle }
    }

    fn client(&self) -> RotationServiceClient<Channel> {
        RotationServiceClient::new(self.channel.clone())
    }

    async fn health(&self) -> ServingStatus {
        let res = HealthClient::new(self.channel.clone())
            .check(HealthCheckRequest { service: String::new() })
            .await
            .unwrap()
            .into_inner();
        ServingStatus::try_from(res.status).unwrap()
    }

    async fn wait_serving(&self) {
        for _ in 0..200 {
            match self.health().await {
                ServingStatus::Serving => return,
                ServingStatus::NotServing => tokio::time::sleep(Duration::from_millis(50)).await,
                other => panic!("unexpected health {other:?}"),
            }
        }
        panic!("server never reported SERVING");
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.handle).await.unwrap().unwrap().unwrap();
    }
}

#[tokio::test]
async fn health_flips_to_serving_and_analyze_works_over_the_wire() {
    let server = TestServer::start(&[]).await;
    // Before the model is loaded the server answers NOT_SERVING, never an error.
    let first = server.health().await;
    assert!(matches!(first, ServingStatus::NotServing | ServingStatus::Serving));
    server.wait_serving().await;

    let mut client = server.client();
    let info = client.get_model_info(proto::GetModelInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.model_name, "gpt2-tiny-random");

    let sentences = rotations::client::read_sentences(&repo().join("examples/her_sentences.txt")).unwrap();
    let req = RotationRequest {
        sentences: sentences.clone(),
        target: Some(Target::TargetText(" her".into())),
        ..Default::default()
    };
    let analysis = client.analyze(req).await.unwrap().into_inner();
    let rot = analysis.rotations.unwrap();
    let sig = analysis.significance.unwrap();

    // Against the notebook's algorithm run in PyTorch (tools/notebook_reference.py).
    let g: serde_json::Value = golden("notebook_angles.json");
    let (layers, n) = (info.num_layers as usize, sentences.len());
    let angles = rot.angles.unwrap().values;
    for l in 0..layers {
        for s in 0..n {
            for c in 0..2 {
                let want = g["angles_f64_deg"][l][s][c].as_f64().unwrap();
                assert!((f64::from(angles[(l * n + s) * 3 + c]) - want).abs() <= 1e-3);
            }
        }
    }
    for (l, t) in sig.layers.iter().enumerate() {
        let want = g["ttest_f64"]["t"][l].as_f64().unwrap();
        assert!((t.t - want).abs() <= 1e-4 * want.abs(), "layer {}: {} vs {want}", l + 1, t.t);
    }

    // An error names the sentence, over the wire too.
    let bad = RotationRequest {
        sentences: vec!["I saw her.".into(), "Nothing here.".into()],
        target: Some(Target::TargetText(" her".into())),
        ..Default::default()
    };
    let status = client.analyze(bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("sentence 1"), "{}", status.message());

    server.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_service() {
    let server = TestServer::start(&[]).await;
    let mut reflection = ServerReflectionClient::new(server.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"rotations.v1.RotationService".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
    server.stop().await;
}

/// A raw TCP connection that speaks HTTP/2's opening (preface and an empty SETTINGS frame) or
/// nothing at all, and then never answers anything: a stalled or half-open client.
async fn raw_connection(addr: std::net::SocketAddr, speak: bool) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    if speak {
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    }
    tcp
}

/// Reads (never answering) until the server closes the connection; how long that took.
async fn until_closed(mut tcp: tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async { while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {} })
        .await
        .ok()
        .map(|_| started.elapsed())
}

/// A connection that never starts HTTP/2 is closed after the handshake timeout; one that stops
/// answering (half-open) is closed by the keepalive pings.
#[tokio::test]
async fn stalled_and_half_open_connections_are_closed() {
    let flags =
        ["--handshake-timeout-seconds", "1", "--keepalive-interval-seconds", "1", "--keepalive-timeout-seconds", "1"];
    let server = TestServer::start(&flags).await;
    let silent = raw_connection(server.addr, false).await;
    let half_open = raw_connection(server.addr, true).await;
    let (silent, half_open) =
        tokio::join!(until_closed(silent, Duration::from_secs(10)), until_closed(half_open, Duration::from_secs(10)));
    assert!(silent.is_some(), "a connection that never sent the HTTP/2 preface is still open after 10 s");
    assert!(half_open.is_some(), "a connection that answers no keepalive ping is still open after 10 s");
    // A client that answers keeps its connection (once the model is loaded: slow on a busy machine).
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.wait_serving().await;
    server.client().get_model_info(proto::GetModelInfoRequest {}).await.unwrap();
    server.stop().await;
}

/// Shutdown with connections that have nothing in flight (an idle client, one that answers
/// nothing) returns at once instead of waiting for the grace period.
#[tokio::test]
async fn shutdown_does_not_wait_for_idle_connections() {
    let server = TestServer::start(&["--shutdown-grace-seconds", "30"]).await;
    server.wait_serving().await;
    server.client().get_model_info(proto::GetModelInfoRequest {}).await.unwrap();
    let _silent = raw_connection(server.addr, true).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    server.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
}
