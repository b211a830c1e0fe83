//! StreamRotations: a corpus in chunks, in input order. Each chunk is tokenized and checked only when
//! it is reached (a bad sentence is reported by its index then), at most two chunks are in flight,
//! and each holds room in the queued-token budget, so the server's memory is bounded by the chunk
//! size, not by the corpus. A slow reader slows the producer (bounded channel); a client that goes
//! away stops it within one chunk, and the request's slot is held until the work has stopped.
//! Each chunk is a span of the call's trace, from its tokenization until it has been sent.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::{info_span, Instrument, Span};

use super::admission::{Admission, QueuedTokens, Slot};
use super::connection::PeerConnection;
use super::convert;
use crate::analysis::{
    condition_moments, merge_conditions, merge_layers, paired_stats, step_stats, test_layers_from_stats, AnalysisError,
    AngleMatrixSum, ExactMoments, PairedStats, Rotations, SignificanceOptions,
};
use crate::engine::{blocking, Engine, Finished, InvalidSentence, Pending, Prepared, Resolved, RotationJob};
use crate::error::Error;
use crate::proto;
use crate::telemetry::StageTimings;
use ndarray::Array3;

pub type ChunkStream = ReceiverStream<Result<proto::RotationChunk, Status>>;

/// Chunks computed ahead of the one being sent.
const CHUNKS_IN_FLIGHT: usize = 2;

/// What one stream needs besides its job.
pub struct StreamContext {
    pub engine: Engine,
    pub admission: Admission,
    pub rotation: Resolved,
    pub significance: SignificanceOptions,
    /// How long a message may wait for the client to make room for it (`--stream-send-timeout-seconds`).
    pub send_timeout: Duration,
    /// The connection the stream came on: closed when the stream stalls.
    pub peer: Option<PeerConnection>,
    /// Largest message (`--max-message-bytes`): a chunk with vectors is cut to fit it.
    pub max_message_bytes: usize,
}

/// What became of a message handed to the client.
enum Sent {
    Delivered,
    /// The client has gone.
    Gone,
    /// The client did not make room for it within the send timeout: the stream is cancelled.
    Stalled,
}

/// Hands `message` to the response, waiting at most the send timeout for room. A client that
/// does not read (its HTTP/2 window stays shut) would otherwise hold the request's slot and its
/// queued tokens for ever; after the timeout its connection is closed, which ends the stream (hyper
/// cannot reset one stream from the server side while its data waits for window).
async fn send(context: &StreamContext, tx: &Sender, message: Result<proto::RotationChunk, Status>) -> Sent {
    match tokio::time::timeout(context.send_timeout, tx.send(message)).await {
        Ok(Ok(())) => Sent::Delivered,
        Ok(Err(_)) => Sent::Gone,
        Err(_) => {
            tracing::warn!(
                timeout_seconds = context.send_timeout.as_secs_f64(),
                peer = ?context.peer.as_ref().and_then(|p| p.tcp.remote_addr()),
                "StreamRotations cancelled: the client read nothing within the send timeout; closing its connection"
            );
            if let Some(peer) = &context.peer {
                peer.close();
            }
            Sent::Stalled
        }
    }
}

type Sender = mpsc::Sender<Result<proto::RotationChunk, Status>>;

pub fn start(context: StreamContext, job: RotationJob, slot: Slot) -> ChunkStream {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    tokio::spawn(
        async move {
            let _slot = slot; // the request's slot lasts until its work has stopped
            if let Err(e) = produce(&context, Arc::new(job), &tx).await {
                send(&context, &tx, Err(e.into())).await;
            }
        }
        .in_current_span(),
    );
    ReceiverStream::new(rx)
}

/// Tokenizes and checks the sentences of `range`, off the executor.
async fn prepare_chunk(
    context: &StreamContext,
    job: &Arc<RotationJob>,
    range: std::ops::Range<usize>,
) -> Result<Prepared, Error> {
    let (engine, job, resolved) = (context.engine.clone(), job.clone(), context.rotation.clone());
    blocking(move || engine.prepare_range(&job, &resolved, range)).await
}

/// The span of the chunk of `range`, the `number`-th of the stream.
fn chunk_span(number: usize, first: usize, range: &std::ops::Range<usize>) -> Span {
    info_span!(
        "chunk",
        chunk.number = number as i64,
        first_sentence = (first + range.start) as i64,
        sentences = range.len() as i64,
        tokens = tracing::field::Empty
    )
}

/// What the stream has merged so far (exact sums: chunk order does not matter).
#[derive(Default)]
struct Merged {
    stats: Vec<PairedStats>,
    steps: Vec<PairedStats>,
    step_conditions: Vec<Vec<ExactMoments>>,
    norms: Vec<Vec<ExactMoments>>,
    growth: Vec<Vec<ExactMoments>>,
    per_condition: Vec<Vec<ExactMoments>>,
    matrices: AngleMatrixSum,
}

impl Merged {
    /// A computed chunk's rows assembled (in its analysis span) and merged; its message.
    fn add(
        &mut self,
        context: &StreamContext,
        job: &RotationJob,
        first: usize,
        finished: Finished,
    ) -> Result<proto::RotationChunk, Error> {
        finished.span.in_scope(|| {
            let part = Rotations::assemble(job.unit, finished.rows)?;
            let (a, b) = (context.significance.condition_a, context.significance.condition_b);
            merge_layers(&mut self.stats, &paired_stats(part.angles.view(), a, b)?);
            merge_conditions(&mut self.per_condition, &condition_moments(part.angles.view())?);
            if let Some((norms, growth)) = &part.norms {
                merge_conditions(&mut self.norms, &condition_moments(norms.view())?);
                merge_conditions(&mut self.growth, &condition_moments(growth.view())?);
            }
            if let Some(steps) = &part.steps {
                merge_layers(&mut self.steps, &step_stats(steps.view())?);
                merge_conditions(&mut self.step_conditions, &condition_moments(steps.view())?);
            }
            if let Some(sums) = &part.layer_matrices {
                self.matrices.merge(sums)?;
            }
            let mut message = convert::chunk(&part, first, job.seed, job.selection.row_matrices);
            let dtype = job.vectors.as_ref().map(|v| v.dtype).unwrap_or_default();
            message.vectors = convert::vectors(&part, context.rotation.vectors.as_ref(), dtype)?;
            Ok(message)
        })
    }

    /// Statistics of no rows in the model's shape, to which every chunk adds: a piece of a corpus
    /// whose every sentence was skipped then says "n = 0 at every layer" (which a sharding client
    /// merges) rather than naming no layers at all.
    fn new(context: &StreamContext, job: &RotationJob) -> Result<Self, AnalysisError> {
        let mut m = Merged::default();
        let info = &context.engine.model.info;
        let (layers, states) = (info.num_layers, info.state_layout().num_states());
        let none = |n: usize, conditions: usize| Array3::<f64>::zeros((n, 0, conditions));
        let (a, b) = (context.significance.condition_a, context.significance.condition_b);
        merge_layers(&mut m.stats, &paired_stats(none(layers, 3).view(), a, b)?);
        merge_conditions(&mut m.per_condition, &condition_moments(none(layers, 3).view())?);
        if job.norms {
            merge_conditions(&mut m.norms, &condition_moments(none(states, 2).view())?);
            merge_conditions(&mut m.growth, &condition_moments(none(layers, 2).view())?);
        }
        if job.steps {
            merge_layers(&mut m.steps, &step_stats(none(2 * layers, 2).view())?);
            merge_conditions(&mut m.step_conditions, &condition_moments(none(2 * layers, 2).view())?);
        }
        Ok(m)
    }

    /// The final chunk: the merged statistics, their tests, and what the job asked for besides.
    fn last(&self, context: &StreamContext, job: &RotationJob, done: usize, skipped: usize) -> proto::RotationChunk {
        let mut last = last_chunk(context, job, &self.stats, done, skipped);
        last.condition_statistics = convert::condition_statistics(&self.per_condition);
        last.all_layers = convert::all_layers(&self.matrices, None);
        if job.norms {
            last.norms = Some(convert::norm_summary(&self.norms, &self.growth));
        }
        if job.steps {
            last.sublayers = Some(convert::step_summary(&self.step_conditions));
            last.step_statistics = convert::layer_statistics(&self.steps);
            (last.step_significance, last.step_significance_error) =
                convert::step_significance(&self.steps, &context.significance);
        }
        last
    }
}

async fn produce(context: &StreamContext, job: Arc<RotationJob>, tx: &Sender) -> Result<(), Error> {
    if job.validate_only {
        return validate_only(context, &job, tx).await;
    }
    let engine = &context.engine;
    let total = job.sentences.len();
    let chunk = chunk_sentences(context, &job);
    let mut merged = Merged::new(context, &job)?;
    let mut inflight: VecDeque<(Prepared, Pending, QueuedTokens, Span)> = VecDeque::new();
    let mut ready: Option<(Prepared, Span)> = None; // prepared, waiting for room in the token budget
    let (mut next, mut done, mut chunks, mut all_tokens, mut skipped) = (0, 0, 0, 0, 0);
    let mut timings = StageTimings::default();
    loop {
        while inflight.len() < CHUNKS_IN_FLIGHT && (ready.is_some() || next < total) {
            let (prepared, span) = match ready.take() {
                Some(ready) => ready,
                None => {
                    let end = (next + chunk).min(total);
                    let span = chunk_span(chunks, job.first_index, &(next..end));
                    let p = match prepare_chunk(context, &job, next..end).instrument(span.clone()).await {
                        Err(Error::Sentences { invalid, .. }) => {
                            return Err(every_invalid(context, &job, invalid, end).await)
                        }
                        other => other?,
                    };
                    let p = fit_chunk(context, &job, p).instrument(span.clone()).await?;
                    (next, chunks) = (p.end - job.first_index, chunks + 1);
                    (p, span)
                }
            };
            let tokens = prepared.num_tokens();
            span.record("tokens", tokens as i64);
            let admission = info_span!(parent: &span, "admission", tokens = tokens as i64);
            // The first chunk in flight waits for room; a second one never waits on the first.
            let queued = if inflight.is_empty() {
                tokio::select! {
                    queued = context.admission.tokens_waiting(tokens).instrument(admission) => queued,
                    _ = tx.closed() => return Ok(()),
                }
            } else if let Ok(queued) = admission.in_scope(|| context.admission.tokens(tokens)) {
                queued
            } else {
                ready = Some((prepared, span));
                break;
            };
            all_tokens += tokens;
            let pending = span.in_scope(|| engine.submit(&prepared, 0..prepared.len()));
            inflight.push_back((prepared, pending, queued, span));
        }
        let Some((prepared, pending, _queued, span)) = inflight.pop_front() else { break };
        let finished = tokio::select! {
            finished = engine.finish(&prepared, pending, &mut timings).instrument(span.clone()) => finished?,
            // The client has gone: dropping `inflight` cancels its queued sentences.
            _ = tx.closed() => return Ok(()),
        };
        let mut message = if finished.rows.is_empty() {
            skipped_chunk(context, &job, &prepared) // every sentence of the chunk was skipped
        } else {
            merged.add(context, &job, prepared.first, finished)?
        };
        done += prepared.end - prepared.first;
        skipped += prepared.skipped.len();
        (message.skipped, message.end_sentence) = (convert::skipped(&prepared.skipped), prepared.end as u32);
        message.progress = Some(proto::Progress { done: done as u32, total: total as u32 });
        if !matches!(send(context, tx, Ok(message)).instrument(span).await, Sent::Delivered) {
            return Ok(()); // the client has gone, or was too slow: stop the work
        }
    }
    Span::current().record("tokens", all_tokens as i64);
    Span::current().record("chunks", chunks as i64);
    send(context, tx, Ok(merged.last(context, &job, done, skipped))).await;
    Ok(())
}

/// Sentences per chunk: the batch's sentence budget, fewer when the rows carry their vectors, so that
/// a chunk of one row per sentence fits the message limit ([`fit_chunk`] cuts one with more rows).
fn chunk_sentences(context: &StreamContext, job: &RotationJob) -> usize {
    if job.vectors.is_none() {
        // Without vectors a row is a few hundred bytes: the batch's budget is the chunk (and the
        // bound's 4 KiB allowance for an Analysis' names would refuse any stream under a tiny limit).
        return context.engine.limits.max_sentences;
    }
    let info = &context.engine.model.info;
    let fixed = convert::result_bound(info, 0, job);
    let per_row = convert::result_bound(info, 1, job) - fixed;
    let room = (context.max_message_bytes as u128).saturating_sub(fixed) / per_row.max(1);
    context.engine.limits.max_sentences.min(usize::try_from(room).unwrap_or(usize::MAX)).max(1)
}

/// A prepared chunk whose message fits the limit: halved (its first sentences prepared again) while
/// it does not and holds more than one sentence (several rows per sentence with OCCURRENCE_ALL); one
/// sentence whose rows alone do not fit fails the stream with RESOURCE_EXHAUSTED.
async fn fit_chunk(context: &StreamContext, job: &Arc<RotationJob>, mut p: Prepared) -> Result<Prepared, Error> {
    let info = &context.engine.model.info;
    if job.vectors.is_none() {
        return Ok(p); // as in chunk_sentences: only vectors make a chunk's rows large
    }
    loop {
        let (rows, sentences) = (p.num_rows(), p.end - p.first);
        let bound = convert::result_bound(info, rows, job);
        if bound <= context.max_message_bytes as u128 {
            return Ok(p);
        }
        if sentences <= 1 {
            return Err(Error::ResultTooLarge(format!(
                "sentence {} has {rows} rows whose message may take up to {bound} bytes, over the message limit \
                 of {} bytes (max_message_bytes); ask for fewer vectors (states, conditions, float16)",
                p.first, context.max_message_bytes
            )));
        }
        let start = p.first - job.first_index;
        p = prepare_chunk(context, job, start..start + sentences / 2).await?;
    }
}

/// The final chunk: merged statistics and their t-tests (or why there are none).
fn last_chunk(
    context: &StreamContext,
    job: &RotationJob,
    stats: &[PairedStats],
    done: usize,
    skipped: usize,
) -> proto::RotationChunk {
    let total = job.sentences.len();
    let (target_token_id, target_token_ids) = convert::target_ids(&context.rotation.target_tokens);
    let opts = &context.significance;
    let mut last = proto::RotationChunk {
        first_sentence: (job.first_index + total) as u32,
        end_sentence: (job.first_index + total) as u32,
        progress: Some(proto::Progress { done: done as u32, total: total as u32 }),
        unit: convert::unit_to_proto(job.unit) as i32,
        shuffle_seed: job.seed,
        statistics: convert::layer_statistics(stats),
        last: true,
        model_name: context.engine.model.info.name.clone(),
        weights_sha256: context.engine.model.info.weights_sha256.clone(),
        target_token_id,
        target_token_ids,
        ..Default::default()
    };
    match test_layers_from_stats(stats, opts) {
        Ok(result) => last.significance = Some(convert::significance_result(&result, opts)),
        Err(e) if skipped > 0 => {
            last.significance_error =
                format!("{e} ({} of {total} sentences left after skipping {skipped} invalid ones)", total - skipped)
        }
        Err(e) => last.significance_error = e.to_string(),
    }
    last
}

/// A chunk whose every sentence was skipped: no rows, the angle tensor `[layers, 0, 3]`.
fn skipped_chunk(context: &StreamContext, job: &RotationJob, prepared: &Prepared) -> proto::RotationChunk {
    let layers = context.engine.model.info.num_layers as u32;
    proto::RotationChunk {
        first_sentence: prepared.first as u32,
        angles: Some(proto::Tensor { shape: vec![layers, 0, 3], values: Vec::new() }),
        unit: convert::unit_to_proto(job.unit) as i32,
        shuffle_seed: job.seed,
        ..Default::default()
    }
}

/// A chunk with invalid sentences (`invalid`, the corpus checked up to `checked`) fails the stream:
/// the rest of the corpus is checked too (tokenized, no forward pass) so that the error names every
/// invalid sentence, as Analyze's does.
async fn every_invalid(
    context: &StreamContext,
    job: &Arc<RotationJob>,
    mut invalid: Vec<InvalidSentence>,
    checked: usize,
) -> Error {
    match check_from(context, job, checked).await {
        Ok(rest) => invalid.extend(rest),
        Err(e) => return e,
    }
    let total = job.sentences.len();
    Error::Sentences { invalid, total, first_index: job.first_index, skipping: false }
}

/// The invalid sentences of the job from `checked` on: tokenized and located a chunk at a time,
/// no forward pass.
async fn check_from(
    context: &StreamContext,
    job: &Arc<RotationJob>,
    checked: usize,
) -> Result<Vec<InvalidSentence>, Error> {
    let (total, chunk) = (job.sentences.len(), context.engine.limits.max_sentences.max(1));
    let skipping = Arc::new(RotationJob { skip_invalid: true, ..(**job).clone() });
    let (mut next, mut invalid) = (checked, Vec::new());
    while next < total {
        let end = (next + chunk).min(total);
        invalid.extend(prepare_chunk(context, &skipping, next..end).await?.skipped);
        next = end;
    }
    Ok(invalid)
}

/// `validate_only`: one final chunk listing every invalid sentence of the job, no forward pass.
async fn validate_only(context: &StreamContext, job: &Arc<RotationJob>, tx: &Sender) -> Result<(), Error> {
    let invalid = check_from(context, job, 0).await?;
    let total = job.sentences.len();
    let message = proto::RotationChunk {
        first_sentence: job.first_index as u32,
        end_sentence: (job.first_index + total) as u32,
        skipped: convert::skipped(&invalid),
        progress: Some(proto::Progress { done: total as u32, total: total as u32 }),
        unit: convert::unit_to_proto(job.unit) as i32,
        shuffle_seed: job.seed,
        model_name: context.engine.model.info.name.clone(),
        last: true,
        ..Default::default()
    };
    send(context, tx, Ok(message)).await;
    Ok(())
}
