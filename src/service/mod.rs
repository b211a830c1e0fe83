//! gRPC handlers: validate, convert, delegate to the engine and the analysis. Nothing else.
pub mod convert;
pub mod server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::analysis::stats::test_layers;
use crate::analysis::Rotations;
use crate::engine::Engine;
use crate::error::Error;
use crate::proto;
use crate::proto::rotation_service_server::RotationService;
use convert::RequestLimits;

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
        Self {
            engine: Arc::new(OnceLock::new()),
            limits,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            max_concurrent: max_concurrent.max(1),
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

    /// Validates, admits and computes a rotation request; returns the f64 angles and their wire form.
    async fn rotations(
        &self,
        req: &proto::RotationRequest,
    ) -> Result<(Rotations, proto::RotationResult), Error> {
        let engine = self.engine()?;
        let job = convert::rotation_job(req, self.limits)?;
        let target = engine.resolve_target(&job.target)?;
        let _permit = self.admit()?;
        let rotations = engine.rotations(&job).await?;
        let wire = convert::rotation_result(&rotations, job.seed, target, &engine.model.info.name);
        Ok((rotations, wire))
    }
}

#[tonic::async_trait]
impl RotationService for RotationServiceImpl {
    #[instrument(skip_all)]
    async fn get_model_info(
        &self,
        _req: Request<proto::GetModelInfoRequest>,
    ) -> Result<Response<proto::ModelInfo>, Status> {
        let engine = self.engine()?;
        Ok(Response::new(convert::model_info(&engine.model.info)))
    }

    #[instrument(skip_all, fields(texts = req.get_ref().texts.len()))]
    async fn tokenize(
        &self,
        req: Request<proto::TokenizeRequest>,
    ) -> Result<Response<proto::TokenizeResponse>, Status> {
        let engine = self.engine()?;
        let texts = &req.get_ref().texts;
        if texts.len() > self.limits.max_sentences {
            return Err(Error::invalid(
                "texts",
                format!(
                    "{} texts exceed the limit of {} per request (max_sentences)",
                    texts.len(),
                    self.limits.max_sentences
                ),
            )
            .into());
        }
        let texts = engine
            .tokenize(texts)?
            .into_iter()
            .map(convert::tokenized)
            .collect();
        Ok(Response::new(proto::TokenizeResponse { texts }))
    }

    #[instrument(skip_all, fields(sentences = req.get_ref().sentences.len()))]
    async fn compute_rotations(
        &self,
        req: Request<proto::RotationRequest>,
    ) -> Result<Response<proto::RotationResult>, Status> {
        Ok(Response::new(self.rotations(req.get_ref()).await?.1))
    }

    #[instrument(skip_all)]
    async fn test_significance(
        &self,
        req: Request<proto::SignificanceRequest>,
    ) -> Result<Response<proto::SignificanceResult>, Status> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown.into());
        }
        let req = req.get_ref();
        let angles = convert::angles_from_proto(req.angles.as_ref())?;
        let opts = convert::significance_options(req.options.as_ref())?;
        let result = test_layers(angles.view(), &opts).map_err(Error::from)?;
        Ok(Response::new(convert::significance_result(&result, &opts)))
    }

    #[instrument(skip_all, fields(sentences = req.get_ref().sentences.len()))]
    async fn analyze(
        &self,
        req: Request<proto::RotationRequest>,
    ) -> Result<Response<proto::Analysis>, Status> {
        let req = req.get_ref();
        // Options are checked before the forward pass so a bad option costs no compute.
        let opts = convert::significance_options(req.significance.as_ref())?;
        let (rotations, wire) = self.rotations(req).await?;
        // Tested on the f64 angles, not on their f32 wire form.
        let significance = test_layers(rotations.angles.view(), &opts).map_err(Error::from)?;
        Ok(Response::new(proto::Analysis {
            rotations: Some(wire),
            significance: Some(convert::significance_result(&significance, &opts)),
        }))
    }
}
