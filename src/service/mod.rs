//! gRPC handlers: validate, convert, delegate to the engine and the analysis. Nothing else.
pub mod admission;
mod connection;
pub mod convert;
pub mod outcome;
pub mod server;
mod stream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};
use tracing::{info_span, Span};

use crate::analysis::{
    check_group_options, check_options, condition_moments, step_stats, test_layers, test_layers_from_stats,
    welch_layers, ExactMoments, Rotations, SignificanceOptions, CONDITIONS,
};
use crate::config::ServeConfig;
use crate::engine::{blocking, Engine, Prepared, RotationJob};
use crate::error::Error;
use crate::proto;
use crate::proto::rotation_service_server::RotationService;
use crate::telemetry::StageTimings;
use admission::Admission;
use convert::{InputLimits, RequestLimits};

/// Response metadata key carrying the per-stage timings (milliseconds).
pub const TIMING_HEADER: &str = "server-timing";

/// State shared by all handlers. The engine appears once the model has loaded and warmed up.
#[derive(Clone)]
pub struct RotationServiceImpl {
    engine: Arc<OnceLock<Engine>>,
    limits: RequestLimits,
    input: InputLimits,
    admission: Admission,
    shutting_down: Arc<AtomicBool>,
    /// `--stream-send-timeout-seconds`.
    stream_send_timeout: Duration,
}

/// Default of `--stream-send-timeout-seconds`.
pub const DEFAULT_STREAM_SEND_TIMEOUT: Duration = Duration::from_secs(30);

impl RotationServiceImpl {
    /// At most `max_concurrent` requests at once; the other limits at their defaults.
    pub fn new(limits: RequestLimits, max_concurrent: usize) -> Self {
        Self {
            engine: Arc::new(OnceLock::new()),
            limits,
            input: InputLimits::default(),
            admission: Admission::new(max_concurrent, admission::DEFAULT_MAX_QUEUED_TOKENS),
            shutting_down: Arc::new(AtomicBool::new(false)),
            stream_send_timeout: DEFAULT_STREAM_SEND_TIMEOUT,
        }
    }

    /// The service as `rotations serve` configures it (model not loaded yet).
    pub fn from_config(config: &ServeConfig) -> Self {
        let limits =
            RequestLimits { max_sentences: config.max_sentences, max_stream_sentences: config.max_stream_sentences };
        let input = InputLimits {
            max_text_bytes: config.max_text_bytes,
            max_tensor_values: config.max_tensor_values,
            max_message_bytes: config.max_message_bytes,
        };
        let service = Self::new(limits, config.max_concurrent_requests)
            .with_max_queued_tokens(config.max_queued_tokens)
            .with_input_limits(input);
        Self { stream_send_timeout: Duration::from_secs(config.stream_send_timeout_seconds.max(1)), ..service }
    }

    /// Admits requests while their tokens fit in `max_queued_tokens`.
    pub fn with_max_queued_tokens(self, max_queued_tokens: usize) -> Self {
        Self { admission: self.admission.with_max_tokens(max_queued_tokens), ..self }
    }

    pub fn with_input_limits(self, input: InputLimits) -> Self {
        Self { input, ..self }
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
        self.admission.in_flight()
    }

    fn engine(&self) -> Result<&Engine, Error> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        self.engine.get().ok_or(Error::NotReady)
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

    /// Checks a rotation request before any work: the job, its texts, its options against the
    /// model, and the size of its result.
    fn checked_job(&self, engine: &Engine, req: &proto::RotationRequest) -> Result<RotationJob, Error> {
        let job = convert::rotation_job(req, self.limits.max_sentences, "max_sentences")?;
        if job.validate_only {
            return Err(Error::invalid("validate_only", "is served by StreamRotations only"));
        }
        convert::check_texts("sentences", &job.sentences, self.input.max_text_bytes)?;
        engine.check_job(&job)?;
        // Every sentence gives at least one row: refused here, before tokenizing, if even that cannot fit.
        let rows = job.sentences.len();
        let bound = convert::result_bound(&engine.model.info, rows, &job);
        convert::check_result_bound(bound, rows, self.input.max_message_bytes)?;
        Ok(job)
    }

    /// Computes a prepared job, once its tokens fit in the queued-token budget; `tested`: its
    /// angles are to be t-tested (a job that skipped sentences needs two left).
    async fn compute(
        &self,
        engine: &Engine,
        job: &RotationJob,
        prepared: &Prepared,
        tested: bool,
        timings: &mut StageTimings,
    ) -> Result<(Rotations, proto::RotationResult), Error> {
        let (rows, row_matrices) = (prepared.num_rows(), job.selection.row_matrices);
        // Every sentence skipped, or (for a t-test) fewer than two left: say which and why.
        if prepared.is_empty() || (tested && !prepared.skipped.is_empty() && prepared.len() < 2) {
            let (invalid, total) = (prepared.skipped.clone(), job.sentences.len());
            return Err(Error::Sentences { invalid, total, first_index: job.first_index, skipping: true });
        }
        let bound = convert::result_bound(&engine.model.info, rows, job);
        convert::check_result_bound(bound, rows, self.input.max_message_bytes)?;
        let tokens = prepared.num_tokens();
        let _queued = info_span!("admission", tokens = tokens as i64).in_scope(|| self.admission.tokens(tokens))?;
        let rotations = engine.rotations(prepared, job.unit, timings).await?;
        let name = &engine.model.info.name;
        let mut wire = convert::rotation_result(&rotations, job.seed, &prepared.target_tokens, name, row_matrices)?;
        wire.skipped = convert::skipped(&prepared.skipped);
        let dtype = job.vectors.as_ref().map(|v| v.dtype).unwrap_or_default();
        wire.vectors = convert::vectors(&rotations, prepared.vectors.as_ref(), dtype)?;
        Ok((rotations, wire))
    }

    /// Validates, admits and computes a rotation request (`tested`: as [`Self::compute`]).
    async fn rotations(
        &self,
        req: &proto::RotationRequest,
        tested: bool,
    ) -> Result<(Rotations, proto::RotationResult, StageTimings), Error> {
        let engine = self.engine()?;
        let job = self.checked_job(engine, req)?;
        let slot = self.admission.request()?;
        let mut timings = StageTimings::default();
        let started = Instant::now();
        let (prepared, _slot) = {
            let (engine, job) = (engine.clone(), job.clone());
            blocking(move || Ok((engine.prepare(&job)?, slot))).await?
        };
        timings.tokenize = started.elapsed();
        Span::current().record("tokens", prepared.num_tokens() as i64);
        let (rotations, wire) = self.compute(engine, &job, &prepared, tested, &mut timings).await?;
        Ok((rotations, wire, timings))
    }

    /// CompareGroups: both groups checked and tokenized before any forward pass (a mistake in
    /// either costs nothing), then computed one after the other under one request slot, each as
    /// Analyze computes it, and tested from each group's exact moments of the compared condition.
    async fn compare(
        &self,
        req: &proto::GroupComparisonRequest,
    ) -> Result<(proto::GroupComparison, StageTimings), Status> {
        let engine = self.engine()?;
        let groups = convert::groups(&req.groups)?;
        let (condition, family) = convert::group_test_options(req.options.as_ref())?;
        check_group_options(condition, &family, engine.model.info.num_layers, CONDITIONS.len())
            .map_err(|e| Error::invalid("options", e.to_string()))?;
        let mut jobs = Vec::new();
        for (i, (label, request)) in groups.iter().enumerate() {
            let checked = self.significance_options(engine, request.significance.as_ref());
            let checked = checked.and_then(|opts| Ok((self.checked_job(engine, request)?, opts)));
            jobs.push(checked.map_err(|e| group_status(i, label, e))?);
        }
        // Welch's test compares the two groups' angles: they must be in one unit.
        if jobs[0].0.unit != jobs[1].0.unit {
            let (a, b) = (convert::unit_to_proto(jobs[0].0.unit), convert::unit_to_proto(jobs[1].0.unit));
            let reason = format!(
                "is {} but groups[0] is {}: the groups' angles are compared, in one unit",
                b.as_str_name(),
                a.as_str_name()
            );
            return Err(Error::invalid("groups[1].request.unit", reason).into());
        }
        let slot = self.admission.request()?;
        let mut timings = StageTimings::default();
        let started = Instant::now();
        let (prepared, _slot) = {
            let (engine, jobs) = (engine.clone(), jobs.iter().map(|(job, _)| job.clone()).collect::<Vec<_>>());
            blocking(move || Ok((jobs.iter().map(|job| engine.prepare(job)).collect::<Vec<_>>(), slot))).await?
        };
        timings.tokenize = started.elapsed();
        let labelled =
            |(i, prepared): (usize, Result<Prepared, Error>)| prepared.map_err(|e| group_status(i, groups[i].0, e));
        let prepared: Vec<Prepared> = prepared.into_iter().enumerate().map(labelled).collect::<Result<_, _>>()?;
        // The answer holds both groups: their sum must fit, before either is computed.
        let info = &engine.model.info;
        let bounds = jobs.iter().zip(&prepared).map(|((job, _), p)| convert::result_bound(info, p.num_rows(), job));
        let rows = prepared.iter().map(Prepared::num_rows).sum();
        convert::check_result_bound(bounds.sum(), rows, self.input.max_message_bytes)?;
        let mut analyses = Vec::new();
        for (i, ((job, opts), prepared)) in jobs.iter().zip(&prepared).enumerate() {
            let label = groups[i].0;
            let in_group = |e| group_status(i, label, e);
            let (rotations, wire) = self.compute(engine, job, prepared, true, &mut timings).await.map_err(in_group)?;
            let (analysis, moments) = analysis_of(&rotations, wire, opts).map_err(in_group)?;
            analyses.push((proto::GroupAnalysis { label: label.to_string(), analysis: Some(analysis) }, moments));
        }
        let started = Instant::now();
        let tests = welch_layers(&analyses[0].1[condition], &analyses[1].1[condition], &family).map_err(Error::from)?;
        timings.analysis += started.elapsed();
        let groups = analyses.into_iter().map(|(group, _)| group).collect();
        Ok((proto::GroupComparison { groups, tests: Some(convert::group_tests(&tests, condition)) }, timings))
    }
}

/// Analyze's answer for computed rotations: the paired t-tests on the f64 angles (with fewer than
/// two sentences none, and why), and each condition's exact per-layer moments (also returned).
fn analysis_of(
    rotations: &Rotations,
    wire: proto::RotationResult,
    opts: &SignificanceOptions,
) -> Result<(proto::Analysis, Vec<Vec<ExactMoments>>), Error> {
    let moments = condition_moments(rotations.angles.view())?;
    let mut body = proto::Analysis {
        rotations: Some(wire),
        condition_statistics: convert::condition_statistics(&moments),
        ..Default::default()
    };
    match test_layers(rotations.angles.view(), opts) {
        Ok(significance) => body.significance = Some(convert::significance_result(&significance, opts)),
        Err(e) => body.significance_error = e.to_string(),
    }
    if let Some(steps) = &rotations.steps {
        let stats = step_stats(steps.view())?;
        body.step_statistics = convert::layer_statistics(&stats);
        (body.step_significance, body.step_significance_error) = convert::step_significance(&stats, opts);
    }
    Ok((body, moments))
}

/// An error of one group of a CompareGroups request: its code, its message prefixed with the group.
fn group_status(index: usize, label: &str, e: Error) -> Status {
    Error::InGroup { index, label: label.to_string(), error: Box::new(e) }.into()
}

/// TestSignificance of two groups' merged statistics: Welch's t-tests, as CompareGroups computes them.
fn group_significance(req: &proto::SignificanceRequest) -> Result<proto::SignificanceResult, Error> {
    let a = convert::moments_from_proto("group_a", &req.group_a)?;
    let b = convert::moments_from_proto("group_b", &req.group_b)?;
    for (field, group) in [("group_a", &a), ("group_b", &b)] {
        if group.is_empty() {
            return Err(Error::invalid(field, "missing: give both groups' per-layer statistics (group_a and group_b)"));
        }
    }
    let (condition, family) = convert::group_test_options(req.group_options.as_ref())?;
    check_group_options(condition, &family, a.len(), CONDITIONS.len())
        .map_err(|e| Error::invalid("group_options", e.to_string()))?;
    let tests = welch_layers(&a, &b, &family)?;
    Ok(proto::SignificanceResult {
        alpha: tests.alpha,
        threshold: tests.threshold,
        num_tests: tests.num_tests as u32,
        group_tests: Some(convert::group_tests(&tests, condition)),
        ..Default::default()
    })
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
    async fn get_model_info(
        &self,
        _req: Request<proto::GetModelInfoRequest>,
    ) -> Result<Response<proto::ModelInfo>, Status> {
        async {
            let engine = self.engine()?;
            Ok(Response::new(convert::model_info(&engine.model.info)))
        }
        .await
    }

    async fn tokenize(
        &self,
        req: Request<proto::TokenizeRequest>,
    ) -> Result<Response<proto::TokenizeResponse>, Status> {
        Span::current().record("texts", req.get_ref().texts.len() as i64);
        async {
            let engine = self.engine()?.clone();
            let texts = req.into_inner().texts;
            convert::check_count("texts", texts.len(), self.limits.max_sentences, "max_sentences")?;
            convert::check_texts("texts", &texts, self.input.max_text_bytes)?;
            // Counted in the queued-token budget before any work, at a bound: a token covers at least
            // one byte of its text, besides a BOS and a SentencePiece prefix.
            let bound = texts.iter().map(|t| t.len() + 2).sum();
            let queued = self.admission.tokens_of("texts", bound)?;
            let slot = self.admission.request()?;
            let texts = blocking(move || {
                let _held = (slot, queued);
                Ok(engine.tokenize(&texts)?.into_iter().map(convert::tokenized).collect::<Vec<_>>())
            })
            .await?;
            let size = texts.iter().map(|t| prost::Message::encoded_len(t) + 6).sum::<usize>();
            if size > self.input.max_message_bytes {
                return Err(Error::ResultTooLarge(format!(
                    "the tokens take {size} bytes, over the message limit of {} bytes (max_message_bytes); \
                     send fewer texts",
                    self.input.max_message_bytes
                ))
                .into());
            }
            Ok(Response::new(proto::TokenizeResponse { texts }))
        }
        .await
    }

    async fn compute_rotations(
        &self,
        req: Request<proto::RotationRequest>,
    ) -> Result<Response<proto::RotationResult>, Status> {
        Span::current().record("sentences", req.get_ref().sentences.len() as i64);
        async {
            let (_, wire, timings) = self.rotations(req.get_ref(), false).await?;
            Ok(timed(wire, &timings))
        }
        .await
    }

    async fn test_significance(
        &self,
        req: Request<proto::SignificanceRequest>,
    ) -> Result<Response<proto::SignificanceResult>, Status> {
        async {
            if self.shutting_down.load(Ordering::SeqCst) {
                return Err(Error::ShuttingDown.into());
            }
            let req = req.into_inner();
            let opts = convert::significance_options(req.options.as_ref())?;
            if !req.statistics.is_empty() && req.angles.is_some() {
                return Err(Error::invalid("statistics", "give angles or statistics, not both").into());
            }
            let two_groups = !req.group_a.is_empty() || !req.group_b.is_empty();
            if two_groups && (req.angles.is_some() || !req.statistics.is_empty()) {
                let reason = "give two groups' statistics, or angles, or paired statistics: one of them";
                return Err(Error::invalid("group_a", reason).into());
            }
            let slot = self.admission.request()?;
            let max_values = self.input.max_tensor_values;
            let result = blocking(move || {
                let _slot = slot;
                if two_groups {
                    return group_significance(&req);
                }
                // Merged exact statistics (a sharded corpus) or an angle tensor.
                let result = if req.statistics.is_empty() {
                    let angles = convert::angles_from_proto(req.angles.as_ref(), max_values)?;
                    test_layers(angles.view(), &opts)?
                } else {
                    test_layers_from_stats(&convert::paired_stats_from_proto(&req.statistics)?, &opts)?
                };
                Ok(convert::significance_result(&result, &opts))
            })
            .await?;
            Ok(Response::new(result))
        }
        .await
    }

    async fn analyze(&self, req: Request<proto::RotationRequest>) -> Result<Response<proto::Analysis>, Status> {
        Span::current().record("sentences", req.get_ref().sentences.len() as i64);
        async {
            let req = req.get_ref();
            // Options are checked before the forward pass so a bad option costs no compute.
            let opts = self.significance_options(self.engine()?, req.significance.as_ref())?;
            let (rotations, wire, mut timings) = self.rotations(req, true).await?;
            let started = Instant::now();
            // Tested on the f64 angles, not on their f32 wire form. With fewer than two sentences
            // there is no test, but the rotations are still returned.
            let (body, _) = info_span!("significance").in_scope(|| analysis_of(&rotations, wire, &opts))?;
            timings.analysis += started.elapsed();
            Ok(timed(body, &timings))
        }
        .await
    }

    async fn compare_groups(
        &self,
        req: Request<proto::GroupComparisonRequest>,
    ) -> Result<Response<proto::GroupComparison>, Status> {
        Span::current().record("groups", req.get_ref().groups.len() as i64);
        let (body, timings) = self.compare(req.get_ref()).await?;
        Ok(timed(body, &timings))
    }

    type StreamRotationsStream = stream::ChunkStream;

    async fn stream_rotations(
        &self,
        req: Request<proto::RotationRequest>,
    ) -> Result<Response<Self::StreamRotationsStream>, Status> {
        Span::current().record("sentences", req.get_ref().sentences.len() as i64);
        async {
            let peer = req.extensions().get::<connection::PeerConnection>().cloned();
            let req = req.into_inner();
            let engine = self.engine()?.clone();
            let job = convert::rotation_job(&req, self.limits.max_stream_sentences, "max_stream_sentences")?;
            convert::check_texts("sentences", &job.sentences, self.input.max_text_bytes)?;
            let significance = self.significance_options(&engine, req.significance.as_ref())?;
            engine.check_job(&job)?;
            let rotation = engine.resolve(&job)?;
            let slot = self.admission.request()?;
            let context = stream::StreamContext {
                engine,
                admission: self.admission.clone(),
                rotation,
                significance,
                send_timeout: self.stream_send_timeout,
                peer,
                max_message_bytes: self.input.max_message_bytes,
            };
            Ok(Response::new(stream::start(context, job, slot)))
        }
        .await
    }
}
