//! gRPC handlers: validate, convert, delegate to the engine and the analysis. Nothing else.
pub mod convert;
pub mod server;
mod stream;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::analysis::{check_options, test_layers, Rotations, SignificanceOptions, CONDITIONS};
use crate::engine::Engine;
use crate::error::Error;
use crate::proto;
use crate::proto::rotation_service_server::RotationService;
use crate::telemetry::{self, StageTimings};
use convert::RequestLimits;

/// Response metadata key carrying the per-stage timings (milliseconds).
pub const TIMING_HEADER: &str = "server-timing";

/// State shared by all handlers. The engine appears once the model has loaded and warmed up.
#[derive(Clone)]
pub struct RotationServiceImpl {
    engine: Arc<OnceLock<Engine>>,
    limits: RequestLimits,
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    shutting_down: Arc<AtomicBool>,
}

impl RotationServiceImpl {
    pub fn new(limits: RequestLimits, max_concurrent: usize) -> Self {
        let max_concurrent = max_concurrent.max(1);
        Self {
            engine: Arc::new(OnceLock::new()),
            limits,
            permits: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            shutting_down: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A service whose model is ready (tests and tools that load the model themselves).
    pub fn ready(engine: Engine, limits: RequestLimits, max_concurrent: usize) -> Self {
        let s = Self::new(limits, max_concurrent);
        s.set_engine(engine);
        s
    }

    pub fn set_engine(&self, engine: Engine) {
        let _ = self.engine.set(engine);
    }

    /// From now on, new requests get UNAVAILABLE; those in flight finish.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Requests currently holding a slot.
    pub fn in_flight(&self) -> usize {
        self.max_concurrent - self.permits.available_permits()
    }

    fn engine(&self) -> Result<&Engine, Error> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        self.engine.get().ok_or(Error::NotReady)
    }

    /// A slot among the concurrent requests, refused at once when all are taken.
    fn admit(&self) -> Result<OwnedSemaphorePermit, Error> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            Error::Overloaded(format!(
                "server busy: max_concurrent_requests ({}) reached; retry later",
                self.max_concurrent
            ))
        })
    }

    /// A request's significance options, checked against the model's layers before any work.
    fn significance_options(
        &self,
        engine: &Engine,
        opts: Option<&proto::SignificanceOptions>,
    ) -> Result<SignificanceOptions, Error> {
        let opts = convert::significance_options(opts)?;
        check_options(&opts, engine.model.info.num_layers, CONDITIONS.len())
            .map_err(|e| Error::invalid("significance", e.to_string()))?;
        Ok(opts)
    }

    /// Validates, admits and computes a rotation request.
    async fn rotations(
        &self,
        req: &proto::RotationRequest,
    ) -> Result<(Rotations, proto::RotationResult, StageTimings), Error> {
        let engine = self.engine()?;
        let job = convert::rotation_job(req, self.limits.max_sentences, "max_sentences")?;
        engine.check_job(&job)?;
        let _permit = self.admit()?;
        let (rotations, target, timings) = engine.rotations(&job).await?;
        let wire = convert::rotation_result(&rotations, job.seed, target, &engine.model.info.name);
        Ok((rotations, wire, timings))
    }
}

/// Counts and times one RPC, whatever its outcome.
async fn observed<T>(rpc: &'static str, f: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    let started = Instant::now();
    let result = f.await;
    let code = result.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok);
    telemetry::request(rpc, code, started.elapsed());
    if let Err(s) = &result {
        tracing::info!(rpc, code = ?s.code(), message = s.message(), "request failed");
    }
    result
}

/// A response with the per-stage timings in its metadata.
fn timed<T>(body: T, timings: &StageTimings) -> Response<T> {
    timings.record();
    let mut response = Response::new(body);
    if let Ok(value) = timings.header_value().parse() {
        response.metadata_mut().insert(TIMING_HEADER, value);
    }
    response
}

#[tonic::async_trait]
impl RotationService for RotationServiceImpl {
    #[instrument(skip_all)]
    async fn get_model_info(
        &self,
        _req: Request<proto::GetModelInfoRequest>,
    ) -> Result<Response<proto::ModelInfo>, Status> {
        observed("GetModelInfo", async {
            let engine = self.engine()?;
            Ok(Response::new(convert::model_info(&engine.model.info)))
        })
        .await
    }

    #[instrument(skip_all, fields(texts = req.get_ref().texts.len()))]
    async fn tokenize(
        &self,
        req: Request<proto::TokenizeRequest>,
    ) -> Result<Response<proto::TokenizeResponse>, Status> {
        observed("Tokenize", async {
            let engine = self.engine()?;
            let texts = &req.get_ref().texts;
            convert::check_count("texts", texts.len(), self.limits.max_sentences, "max_sentences")?;
            let texts = engine.tokenize(texts)?.into_iter().map(convert::tokenized).collect();
            Ok(Response::new(proto::TokenizeResponse { texts }))
        })
        .await
    }

    #[instrument(skip_all, fields(sentences = req.get_ref().sentences.len(), tokenize_ms, queue_ms, inference_ms, analysis_ms))]
    async fn compute_rotations(
        &self,
        req: Request<proto::RotationRequest>,
    ) -> Result<Response<proto::RotationResult>, Status> {
        observed("ComputeRotations", async {
            let (_, wire, timings) = self.rotations(req.get_ref()).await?;
            Ok(timed(wire, &timings))
        })
        .await
    }

    #[instrument(skip_all)]
    async fn test_significance(
        &self,
        req: Request<proto::SignificanceRequest>,
    ) -> Result<Response<proto::SignificanceResult>, Status> {
        observed("TestSignificance", async {
            if self.shutting_down.load(Ordering::SeqCst) {
                return Err(Error::ShuttingDown.into());
            }
            let req = req.get_ref();
            let angles = convert::angles_from_proto(req.angles.as_ref())?;
            let opts = convert::significance_options(req.options.as_ref())?;
            let result = test_layers(angles.view(), &opts).map_err(Error::from)?;
            Ok(Response::new(convert::significance_result(&result, &opts)))
        })
        .await
    }

    #[instrument(skip_all, fields(sentences = req.get_ref().sentences.len(), tokenize_ms, queue_ms, inference_ms, analysis_ms))]
    async fn analyze(&self, req: Request<proto::RotationRequest>) -> Result<Response<proto::Analysis>, Status> {
        observed("Analyze", async {
            let req = req.get_ref();
            // Options are checked before the forward pass so a bad option costs no compute.
            let opts = self.significance_options(self.engine()?, req.significance.as_ref())?;
            let (rotations, wire, mut timings) = self.rotations(req).await?;
            let started = Instant::now();
            // Tested on the f64 angles, not on their f32 wire form. With fewer than two sentences
            // there is no test, but the rotations are still returned.
            let mut body = proto::Analysis { rotations: Some(wire), ..Default::default() };
            match test_layers(rotations.angles.view(), &opts) {
                Ok(significance) => body.significance = Some(convert::significance_result(&significance, &opts)),
                Err(e) => body.significance_error = e.to_string(),
            }
            timings.analysis += started.elapsed();
            Ok(timed(body, &timings))
        })
        .await
    }

    type StreamRotationsStream = stream::ChunkStream;

    #[instrument(skip_all, fields(sentences = req.get_ref().sentences.len()))]
    async fn stream_rotations(
        &self,
        req: Request<proto::RotationRequest>,
    ) -> Result<Response<Self::StreamRotationsStream>, Status> {
        observed("StreamRotations", async {
            let req = req.into_inner();
            let engine = self.engine()?.clone();
            let job = convert::rotation_job(&req, self.limits.max_stream_sentences, "max_stream_sentences")?;
            let opts = self.significance_options(&engine, req.significance.as_ref())?;
            engine.check_job(&job)?;
            let permit = self.admit()?;
            let prepared = engine.prepare_off_executor(&job).await?;
            Ok(Response::new(stream::start(engine, job, prepared, opts, permit)))
        })
        .await
    }
}
