//! One tower layer around the whole gRPC server, where every call's final status is known: it is
//! counted in `rotations_requests_total` (a stream by the status that ends it, a call the client
//! abandoned as CANCELLED), timed over the whole call (a stream's included), and logged when it
//! failed, whether the handler or tonic's transport produced it. Two of tonic's transport statuses
//! get the codes the gRPC spec assigns: a request that does not decode (tonic: INTERNAL) is
//! INVALID_ARGUMENT, and a message over the size limit either way (tonic: OUT_OF_RANGE) is
//! RESOURCE_EXHAUSTED. It also opens each call's span (joined to the caller's W3C trace context),
//! which the handler's work runs in and which ends with the call's status.
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use tonic::codegen::http::{self, HeaderMap};
use tonic::codegen::Service;
use tonic::transport::server::TcpConnectInfo;
use tonic::{Code, Status};
use tracing::field::Empty;
use tracing::Instrument;

use crate::proto::rotation_service_server::SERVICE_NAME;
use crate::telemetry;

/// The methods counted, by name (the metric's `rpc` label); other services' calls pass through.
const METHODS: [&str; 7] =
    ["GetModelInfo", "Tokenize", "ComputeRotations", "TestSignificance", "Analyze", "StreamRotations", "CompareGroups"];

/// Also counts the calls of this service still open (until their status has been sent), so that
/// shutdown can wait for responses, streams included, rather than for a fixed time.
#[derive(Clone, Debug, Default)]
pub struct OutcomeLayer {
    open: Arc<AtomicUsize>,
}

impl OutcomeLayer {
    /// Calls of this service whose final status has not been sent yet.
    pub fn open_calls(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl<S> tower_layer::Layer<S> for OutcomeLayer {
    type Service = Outcome<S>;

    fn layer(&self, inner: S) -> Outcome<S> {
        Outcome { inner, open: self.open.clone() }
    }
}

#[derive(Clone, Debug)]
pub struct Outcome<S> {
    inner: S,
    open: Arc<AtomicUsize>,
}

impl<S, B, ResBody> Service<http::Request<B>> for Outcome<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let rpc = method_of(request.uri().path());
        let span = rpc.map_or_else(tracing::Span::none, |rpc| call_span(rpc, &request));
        let mut call = CallRecord::start(rpc, &self.open, span.clone());
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let (mut parts, body) = response.await?.into_parts();
                // A call that fails before any message carries its status in the headers.
                if let Some(status) = amend_status(&mut parts.headers) {
                    call.finish(&status);
                }
                Ok(http::Response::from_parts(parts, ObservedBody { inner: body, call }))
            }
            .instrument(span),
        )
    }
}

/// The span of one call of this service: method, the replica's address and the caller's, status
/// and sizes recorded as they become known (the handler records into `Span::current()`).
fn call_span<B>(rpc: &'static str, request: &http::Request<B>) -> tracing::Span {
    // A call's trace is the caller's or its own, never that of whatever task accepted it.
    let span = tracing::info_span!(
        parent: None,
        "rpc",
        otel.name = format!("{SERVICE_NAME}/{rpc}"),
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_message = Empty,
        rpc.system = "grpc",
        rpc.service = SERVICE_NAME,
        rpc.method = rpc,
        rpc.grpc.status_code = Empty,
        server.address = Empty,
        server.port = Empty,
        client.address = Empty,
        trace_id = Empty,
        sentences = Empty,
        texts = Empty,
        groups = Empty,
        tokens = Empty,
        chunks = Empty,
        tokenize_ms = Empty,
        queue_ms = Empty,
        inference_ms = Empty,
        analysis_ms = Empty,
    );
    let extensions = request.extensions();
    // Our accept loop (connection.rs) hands each request its PeerConnection; tonic's own, plain TCP info.
    let connection = extensions
        .get::<crate::service::connection::PeerConnection>()
        .map(|peer| &peer.tcp)
        .or_else(|| extensions.get::<TcpConnectInfo>());
    if let Some(local) = connection.and_then(TcpConnectInfo::local_addr) {
        span.record("server.address", tracing::field::display(local.ip()));
        span.record("server.port", i64::from(local.port()));
    }
    if let Some(remote) = connection.and_then(TcpConnectInfo::remote_addr) {
        span.record("client.address", tracing::field::display(remote.ip()));
    }
    telemetry::join(&span, telemetry::extract(request.headers()));
    span
}

/// The response body, watched for the trailers that carry the call's final status.
pub struct ObservedBody<B> {
    inner: B,
    call: CallRecord,
}

impl<B: Body + Unpin> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(mut frame)) => {
                if let Some(status) = frame.trailers_mut().and_then(amend_status) {
                    this.call.finish(&status);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.call.finish(&Status::internal("the response body failed"));
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.call.finish(&Status::unknown("the response ended without a status"));
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One call of a counted method; recorded once, when its status is known or when it is abandoned.
struct CallRecord {
    rpc: Option<&'static str>,
    started: Instant,
    done: bool,
    open: Arc<AtomicUsize>,
    /// The call's span, let go of once its status is recorded (it ends when its work has too).
    span: tracing::Span,
}

impl CallRecord {
    fn start(rpc: Option<&'static str>, open: &Arc<AtomicUsize>, span: tracing::Span) -> Self {
        if rpc.is_some() {
            open.fetch_add(1, Ordering::SeqCst);
        }
        Self { rpc, started: Instant::now(), done: false, open: open.clone(), span }
    }

    fn finish(&mut self, status: &Status) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let Some(rpc) = self.rpc else { return };
        self.open.fetch_sub(1, Ordering::SeqCst);
        telemetry::request(rpc, status.code(), self.started.elapsed());
        let span = std::mem::replace(&mut self.span, tracing::Span::none());
        span.record("rpc.grpc.status_code", status.code() as i32);
        let message = crate::error::cap(status.message(), crate::error::MAX_MESSAGE_CHARS);
        if server_error(status.code()) {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_message", &*message);
        }
        // A refused key is logged once, by the auth layer that refused it.
        if !matches!(status.code(), Code::Ok | Code::Unauthenticated) {
            span.in_scope(|| tracing::info!(rpc, code = ?status.code(), message = %message, "request failed"));
        }
    }
}

/// The codes OpenTelemetry's conventions mark a server span failed by: the server's fault, not
/// the caller's (a bad argument or a full queue leaves the span's status unset).
fn server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        // The response was dropped before its status was sent: the client went away.
        self.finish(&Status::cancelled("the client cancelled the call"));
    }
}

fn method_of(path: &str) -> Option<&'static str> {
    let method = path.strip_prefix('/')?.strip_prefix(SERVICE_NAME)?.strip_prefix('/')?;
    METHODS.iter().find(|&&m| m == method).copied()
}

/// The status in `headers` (trailers, or the headers of a trailers-only response), with the codes
/// of tonic's transport errors corrected in place.
fn amend_status(headers: &mut HeaderMap) -> Option<Status> {
    let status = Status::from_header_map(headers)?;
    let code = match status.code() {
        Code::Internal if status.message().starts_with("failed to decode Protobuf message") => Code::InvalidArgument,
        Code::OutOfRange if status.message().contains("message length too large") => Code::ResourceExhausted,
        _ => return Some(status),
    };
    let amended = Status::new(code, status.message());
    // Re-encoding a message that was already a header cannot fail; keep the original if it does.
    if amended.add_header(headers).is_err() {
        return Some(status);
    }
    Some(amended)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(status: Status) -> HeaderMap {
        let mut h = HeaderMap::new();
        status.add_header(&mut h).unwrap();
        h
    }

    #[test]
    fn transport_codes_are_amended_others_kept() {
        for (given, want) in [
            (Status::internal("failed to decode Protobuf message: invalid wire type"), Code::InvalidArgument),
            (
                Status::out_of_range("Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes"),
                Code::ResourceExhausted,
            ),
            (
                Status::out_of_range("Error, encoded message length too large: found 9 bytes, the limit is: 4 bytes"),
                Code::ResourceExhausted,
            ),
            (Status::internal("sentence 0: hidden state 1 at position 0 is not finite"), Code::Internal),
            (Status::out_of_range("something else"), Code::OutOfRange),
        ] {
            let mut h = headers(given.clone());
            let amended = amend_status(&mut h).unwrap();
            assert_eq!(amended.code(), want, "{given:?}");
            assert_eq!(Status::from_header_map(&h).unwrap().code(), want);
            assert_eq!(amended.message(), given.message());
        }
        assert!(amend_status(&mut HeaderMap::new()).is_none());
    }

    #[test]
    fn only_this_services_methods_are_counted() {
        assert_eq!(method_of("/rotations.v1.RotationService/Analyze"), Some("Analyze"));
        assert_eq!(method_of("/rotations.v1.RotationService/Nope"), None);
        assert_eq!(method_of("/grpc.health.v1.Health/Check"), None);
    }
}
