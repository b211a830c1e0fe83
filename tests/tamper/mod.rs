//! A replica that lies or fails on purpose: a gRPC proxy on its own loopback address in front of a
//! real server, passing every call through and changing what `StreamRotations` answers as a
//! broken or hostile replica would.
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};

use rotations::proto;
use rotations::proto::rotation_service_client::RotationServiceClient;
use rotations::proto::rotation_service_server::{RotationService, RotationServiceServer};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// What the proxy does to each `StreamRotations` answer.
#[derive(Clone, Copy, Debug)]
pub enum Tamper {
    /// The final message's statistics keep only the first half of the layers.
    TruncateLayers,
    /// Every layer's `n` doubled (the sums left as they are).
    DoubleN,
    /// The stream's last message with rows left out.
    DropLastRows,
    /// The final message names another model.
    OtherModel,
    /// The first part's step angles lose their last layer (shape and values alike).
    TruncateSteps,
    /// The chunk that ends the corpus (`end` sentences) fails with `code`, the first `times` times
    /// (`usize::MAX`: always); other chunks pass through.
    FailEnd { end: u64, code: tonic::Code, times: usize },
}

pub struct Proxy {
    upstream: RotationServiceClient<Channel>,
    tamper: Tamper,
    failed: AtomicUsize,
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl RotationService for Proxy {
    async fn get_model_info(&self, r: Request<proto::GetModelInfoRequest>) -> Answer<proto::ModelInfo> {
        self.upstream.clone().get_model_info(r.into_inner()).await
    }

    async fn tokenize(&self, r: Request<proto::TokenizeRequest>) -> Answer<proto::TokenizeResponse> {
        self.upstream.clone().tokenize(r.into_inner()).await
    }

    async fn compute_rotations(&self, r: Request<proto::RotationRequest>) -> Answer<proto::RotationResult> {
        self.upstream.clone().compute_rotations(r.into_inner()).await
    }

    async fn test_significance(&self, r: Request<proto::SignificanceRequest>) -> Answer<proto::SignificanceResult> {
        self.upstream.clone().test_significance(r.into_inner()).await
    }

    async fn analyze(&self, r: Request<proto::RotationRequest>) -> Answer<proto::Analysis> {
        self.upstream.clone().analyze(r.into_inner()).await
    }

    async fn compare_groups(&self, r: Request<proto::GroupComparisonRequest>) -> Answer<proto::GroupComparison> {
        self.upstream.clone().compare_groups(r.into_inner()).await
    }

    type StreamRotationsStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::RotationChunk, Status>> + Send + 'static>>;

    async fn stream_rotations(&self, r: Request<proto::RotationRequest>) -> Answer<Self::StreamRotationsStream> {
        let request = r.into_inner();
        if let Tamper::FailEnd { end, code, times } = self.tamper {
            let ends_corpus = request.first_sentence_index + request.sentences.len() as u64 == end;
            if ends_corpus && self.failed.fetch_add(1, Ordering::SeqCst) < times {
                return Err(Status::new(code, "the tampering proxy fails the corpus's last chunk"));
            }
        }
        let mut upstream = self.upstream.clone().stream_rotations(request).await?.into_inner();
        let mut messages = Vec::new();
        while let Some(message) = upstream.message().await? {
            messages.push(message);
        }
        tamper(self.tamper, &mut messages);
        Ok(Response::new(Box::pin(tokio_stream::iter(messages.into_iter().map(Ok)))))
    }
}

fn tamper(how: Tamper, messages: &mut Vec<proto::RotationChunk>) {
    let last = messages.last_mut().expect("a final message");
    match how {
        Tamper::TruncateLayers => {
            let half = last.statistics.len() / 2;
            last.statistics.truncate(half);
        }
        Tamper::DoubleN => last.statistics.iter_mut().for_each(|s| s.n *= 2),
        Tamper::DropLastRows => {
            let rows = messages.iter().rposition(|m| !m.last).expect("a message with rows");
            messages.remove(rows);
        }
        Tamper::OtherModel => last.model_name = "another-model".into(),
        Tamper::TruncateSteps => {
            let angles = messages[0].sublayers.as_mut().and_then(|s| s.angles.as_mut()).expect("step angles");
            angles.shape[0] -= 1;
            let keep = angles.shape.iter().product::<u32>() as usize;
            angles.values.truncate(keep);
        }
        Tamper::FailEnd { .. } => {}
    }
}

/// A proxy on `host` (a free port) in front of the server at `upstream` (host:port); returns its
/// host:port. It runs until the test's runtime ends.
pub async fn start(host: &str, upstream: &str, tamper: Tamper) -> String {
    let listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let channel = Channel::from_shared(format!("http://{upstream}")).unwrap().connect().await.unwrap();
    let proxy = Proxy { upstream: RotationServiceClient::new(channel), tamper, failed: AtomicUsize::new(0) };
    let service = RotationServiceServer::new(proxy);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
    address
}
