//! Starting and stopping the server: listen at once (health NOT_SERVING), load and warm the model,
//! then SERVING; on shutdown NOT_SERVING, refuse new work, let requests in flight finish.
use std::future::Future;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use super::convert::RequestLimits;
use super::RotationServiceImpl;
use crate::config::ServeConfig;
use crate::engine::{BatchLimits, Engine};
use crate::model::{Model, RuntimeOptions};
use crate::proto::rotation_service_server::{RotationServiceServer, SERVICE_NAME};
use crate::proto::FILE_DESCRIPTOR_SET;

/// Loads the model directory named by the config (blocking: call from a blocking context).
pub fn load_engine(config: &ServeConfig) -> anyhow::Result<Engine> {
    let started = Instant::now();
    let opts = RuntimeOptions {
        library: config.ort_library(),
        provider: config.execution_provider,
        intra_threads: config.threads,
    };
    let model = Model::load(&config.model_dir, &opts)?;
    // Warm-up: the first run allocates and picks kernels; do it before reporting SERVING.
    let warm = model.tokenizer.encode("Warm up the model.")?.ids;
    model.hidden_states_blocking(vec![warm])?;
    tracing::info!(
        model = %model.info.name,
        dir = %config.model_dir.display(),
        provider = model.info.execution_provider,
        seconds = started.elapsed().as_secs_f64(),
        "model ready"
    );
    let limits = BatchLimits {
        max_tokens: config.max_batch_tokens,
        max_sentences: config.max_batch_sentences,
    };
    Ok(Engine::new(model, limits))
}

/// Serves on `listener` until `shutdown` resolves. Returns an error if the model cannot be loaded.
pub async fn serve(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let service = RotationServiceImpl::new(
        RequestLimits {
            max_sentences: config.max_sentences,
        },
        config.max_concurrent_requests,
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_not_serving::<RotationServiceServer<RotationServiceImpl>>()
        .await;

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let grpc = RotationServiceServer::new(service.clone())
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);

    let addr = listener.local_addr()?;
    tracing::info!(%addr, service = SERVICE_NAME, "listening (NOT_SERVING until the model is ready)");

    // On shutdown: report NOT_SERVING and refuse new requests before the transport stops accepting.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let on_shutdown = {
        let (health, service) = (health.clone(), service.clone());
        async move {
            shutdown.await;
            tracing::info!("shutting down: NOT_SERVING, finishing requests in flight");
            service.begin_shutdown();
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            health
                .set_not_serving::<RotationServiceServer<RotationServiceImpl>>()
                .await;
            let _ = stop_tx.send(());
        }
    };
    tokio::spawn(on_shutdown);

    let server = Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(grpc)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            let _ = stop_rx.await;
        });
    let server = tokio::spawn(server);

    let load_config = config.clone();
    let engine = tokio::task::spawn_blocking(move || load_engine(&load_config)).await??;
    service.set_engine(engine);
    health.set_service_status("", ServingStatus::Serving).await;
    health
        .set_serving::<RotationServiceServer<RotationServiceImpl>>()
        .await;
    tracing::info!(%addr, "SERVING");

    server.await??;
    Ok(())
}
