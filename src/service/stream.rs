//! StreamRotations: a corpus in chunks, in input order, with at most two chunks in flight so the
//! server's memory is bounded by the batch budget, not by the corpus. A slow reader slows the
//! producer (bounded channel); a client that goes away stops it, and its queued sentences are dropped.
use std::collections::VecDeque;

use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::convert;
use crate::analysis::{paired_stats, test_layers_from_stats, PairedStats, Rotations, SignificanceOptions};
use crate::engine::{Engine, Prepared, RotationJob};
use crate::error::Error;
use crate::proto;
use crate::telemetry::StageTimings;

pub type ChunkStream = ReceiverStream<Result<proto::RotationChunk, Status>>;

/// Chunks computed ahead of the one being sent.
const CHUNKS_IN_FLIGHT: usize = 2;

pub fn start(
    engine: Engine,
    job: RotationJob,
    prepared: Prepared,
    opts: SignificanceOptions,
    permit: OwnedSemaphorePermit,
) -> ChunkStream {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    tokio::spawn(async move {
        let _permit = permit; // the request's slot lasts as long as the stream
        if let Err(e) = produce(&engine, &job, &prepared, &opts, &tx).await {
            let _ = tx.send(Err(e.into())).await;
        }
    });
    ReceiverStream::new(rx)
}

async fn produce(
    engine: &Engine,
    job: &RotationJob,
    prepared: &Prepared,
    opts: &SignificanceOptions,
    tx: &mpsc::Sender<Result<proto::RotationChunk, Status>>,
) -> Result<(), Error> {
    let total = prepared.len();
    let chunk = engine.limits.max_sentences.max(1);
    let mut stats: Vec<PairedStats> = Vec::new();
    let mut inflight = VecDeque::new();
    let mut next = 0;
    let mut done = 0;
    let mut timings = StageTimings::default();
    while next < total || !inflight.is_empty() {
        while inflight.len() < CHUNKS_IN_FLIGHT && next < total {
            let end = (next + chunk).min(total);
            inflight.push_back(engine.submit(prepared, next..end));
            next = end;
        }
        let pending = inflight.pop_front().expect("a chunk is in flight");
        let sentences = engine.finish(prepared, pending, &mut timings).await?;
        let first = sentences[0].index;
        let part = Rotations::assemble(job.unit, sentences)?;
        let layer_stats = paired_stats(part.angles.view(), opts.condition_a, opts.condition_b)?;
        if stats.is_empty() {
            stats = layer_stats;
        } else {
            for (total, s) in stats.iter_mut().zip(&layer_stats) {
                total.merge(s);
            }
        }
        done += part.sentences.len();
        let mut message = convert::chunk(&part, first, job.seed);
        message.progress = Some(proto::Progress { done: done as u32, total: total as u32 });
        if tx.send(Ok(message)).await.is_err() {
            return Ok(()); // the client has gone; dropping `inflight` cancels its queued sentences
        }
    }

    let mut last = proto::RotationChunk {
        first_sentence: (prepared.first_index + total) as u32,
        progress: Some(proto::Progress { done: done as u32, total: total as u32 }),
        unit: convert::unit_to_proto(job.unit) as i32,
        shuffle_seed: job.seed,
        statistics: convert::layer_statistics(&stats),
        last: true,
        model_name: engine.model.info.name.clone(),
        target_token_id: prepared.target,
        ..Default::default()
    };
    match test_layers_from_stats(&stats, opts) {
        Ok(result) => last.significance = Some(convert::significance_result(&result, opts)),
        Err(e) => last.significance_error = e.to_string(),
    }
    let _ = tx.send(Ok(last)).await;
    Ok(())
}
