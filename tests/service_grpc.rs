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
        Self { channel, stop: Some(stop), handle }
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
    let g = golden("notebook_angles.json");
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
