//! Dynamic batching across requests. Every sentence of every request joins one queue; while the model
//! runs a batch, new sentences wait, and the next batch is cut from all of them: similar lengths
//! together (little padding), within a token and a sentence budget, the oldest sentence always
//! included (no starvation). Results go back to each sentence's own requester; sentences whose
//! requester has gone (cancelled, deadline passed) are dropped before they cost a forward pass.
//!
//! Tracing: a pass is shared by the requests whose sentences ride in it, so it is a span of its own
//! (`forward_pass`, no parent, linked to each requester), the model worker runs inside it, and each
//! requester gets a child span for the pass, linked to it.
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::field::Empty;
use tracing::{info_span, Instrument, Span};

use super::BatchLimits;
use crate::model::{Hidden, Model, ModelError, VectorIndex};
use crate::telemetry;

/// A sentence's hidden states and how long it waited in the queue and in the forward pass.
pub struct Forwarded {
    pub hidden: Hidden,
    pub queued: Duration,
    pub inference: Duration,
    /// Which forward pass it rode in (sentences of one pass share its duration).
    pub batch: u64,
}

type Reply = oneshot::Sender<Result<Forwarded, ModelError>>;

struct Item {
    ids: Vec<u32>,
    /// The vectors the requester reads, for a model that gathers; `None`: every hidden state.
    wanted: Option<Vec<VectorIndex>>,
    reply: Reply,
    enqueued: Instant,
    /// Arrival order, for fairness.
    seq: u64,
    trace: Trace,
}

/// Where a submitted range's sentences are traced: the requester's span (the passes they ride in
/// become its children) and their `queue` span, which ends when the last of them enters a pass
/// (each sentence holds a handle on it until then).
#[derive(Clone)]
pub struct Trace {
    requester: Span,
    queue: Span,
}

impl Trace {
    /// For `sentences` sentences submitted now, by the current span.
    pub fn new(sentences: usize) -> Self {
        Self { requester: Span::current(), queue: info_span!("queue", sentences = sentences as i64) }
    }
}

/// Handle to the batching task; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Item>,
}

impl Batcher {
    /// Starts the batching task on the current tokio runtime.
    pub fn spawn(model: Model, limits: BatchLimits) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(model, limits, rx));
        Self { tx }
    }

    /// Queues one sentence (already checked against the model). Dropping the receiver cancels it.
    pub fn submit(&self, ids: Vec<u32>) -> oneshot::Receiver<Result<Forwarded, ModelError>> {
        self.submit_wanted(ids, None)
    }

    /// [`Batcher::submit`] for a requester that reads only `wanted` (see `Model::forward_wanted_unchecked`).
    pub fn submit_wanted(
        &self,
        ids: Vec<u32>,
        wanted: Option<Vec<VectorIndex>>,
    ) -> oneshot::Receiver<Result<Forwarded, ModelError>> {
        self.submit_traced(ids, wanted, Trace::new(1))
    }

    /// [`Batcher::submit_wanted`], traced in `trace` (shared by the sentences of one range).
    pub fn submit_traced(
        &self,
        ids: Vec<u32>,
        wanted: Option<Vec<VectorIndex>>,
        trace: Trace,
    ) -> oneshot::Receiver<Result<Forwarded, ModelError>> {
        let (reply, rx) = oneshot::channel();
        telemetry::queue_depth(1.0);
        // seq is assigned by the task; the send only fails if the task is gone, and then the dropped
        // reply makes the receiver fail with WorkerGone.
        let _ = self.tx.send(Item { ids, wanted, reply, enqueued: Instant::now(), seq: 0, trace });
        rx
    }
}

async fn run(model: Model, limits: BatchLimits, mut rx: mpsc::UnboundedReceiver<Item>) {
    let mut pending: Vec<Item> = Vec::new();
    let mut next_seq = 0u64;
    let mut batch_number = 0u64;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(item) => pending.push(item),
                None => return, // every handle dropped
            }
        }
        // Everything that arrived while the previous batch ran joins this round.
        while let Ok(item) = rx.try_recv() {
            pending.push(item);
        }
        for item in pending.iter_mut().filter(|i| i.seq == 0) {
            next_seq += 1;
            item.seq = next_seq;
        }
        let before = pending.len();
        pending.retain(|i| !i.reply.is_closed());
        let dropped = before - pending.len();
        if dropped > 0 {
            telemetry::queue_depth(-(dropped as f64));
            telemetry::cancelled_sentences(dropped as u64);
        }
        if pending.is_empty() {
            continue;
        }

        let mut batch = take_batch(&mut pending, limits);
        telemetry::queue_depth(-(batch.len() as f64));
        let ids: Vec<Vec<u32>> = batch.iter().map(|i| i.ids.clone()).collect();
        // Gathered only when every sentence of the pass lists its vectors.
        let wanted: Option<Vec<Vec<VectorIndex>>> = batch.iter().map(|i| i.wanted.clone()).collect();
        let tokens: usize = batch.iter().map(|i| i.ids.len()).sum();
        let width = batch.iter().map(|i| i.ids.len()).max().unwrap_or(0);
        let started = Instant::now();
        batch_number += 1;
        let padded = batch.len() * width;
        let (pass, per_requester) = trace_pass(&mut batch, batch_number, tokens, padded);
        let result = model.forward_wanted_unchecked(ids, wanted).instrument(pass).await;
        drop(per_requester);
        let inference = started.elapsed();
        telemetry::batch(batch.len(), tokens, padded, inference);
        let result = result.and_then(|hidden| {
            if hidden.len() == batch.len() {
                Ok(hidden)
            } else {
                Err(ModelError::Runtime(format!(
                    "the model returned {} results for {} sentences",
                    hidden.len(),
                    batch.len()
                )))
            }
        });
        match result {
            Ok(hidden) => {
                for (item, hidden) in batch.into_iter().zip(hidden) {
                    let queued = started.saturating_duration_since(item.enqueued);
                    let _ = item.reply.send(Ok(Forwarded { hidden, queued, inference, batch: batch_number }));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for item in batch {
                    let _ = item.reply.send(Err(ModelError::Runtime(message.clone())));
                }
            }
        }
    }
}

/// Opens the spans of pass `number`: its own, linked to every requester of the batch, and one
/// child per requester (its rows and tokens in the pass), linked to it. Ends the batch's sentences'
/// wait in the queue.
fn trace_pass(batch: &mut [Item], number: u64, tokens: usize, padded: usize) -> (Span, Vec<Span>) {
    let rows = batch.len();
    // Counts as i64: OpenTelemetry has no unsigned integers (tracing-opentelemetry would make text of them).
    let (rows, tokens, padded, number) = (rows as i64, tokens as i64, padded as i64, number as i64);
    let pass = info_span!(parent: None, "forward_pass", pass.id = number, pass.rows = rows, pass.tokens = tokens,
        pass.padded_tokens = padded, pass.requests = Empty);
    // (requester, its rows, its tokens): a handful per pass, so a list.
    let mut requesters: Vec<(Span, usize, usize)> = Vec::new();
    for item in batch.iter_mut() {
        item.trace.queue = Span::none();
        let Some(id) = item.trace.requester.id() else { continue };
        match requesters.iter_mut().find(|(span, _, _)| span.id().as_ref() == Some(&id)) {
            Some((_, rows, tokens)) => (*rows, *tokens) = (*rows + 1, *tokens + item.ids.len()),
            None => requesters.push((item.trace.requester.clone(), 1, item.ids.len())),
        }
    }
    pass.record("pass.requests", requesters.len() as i64);
    let children = requesters
        .into_iter()
        .map(|(requester, own_rows, own_tokens)| {
            pass.follows_from(&requester);
            let child = info_span!(parent: &requester, "forward_pass", pass.id = number, pass.rows = rows,
                pass.tokens = tokens, pass.padded_tokens = padded, rows = own_rows as i64, tokens = own_tokens as i64);
            child.follows_from(&pass);
            child
        })
        .collect();
    (pass, children)
}

/// Cuts the next batch out of `pending`: sorted by length, a window around the oldest sentence,
/// widened towards its neighbours in length while rows × longest row stays within the token budget.
fn take_batch(pending: &mut Vec<Item>, limits: BatchLimits) -> Vec<Item> {
    pending.sort_by_key(|i| (i.ids.len(), i.seq));
    let oldest = (0..pending.len()).min_by_key(|&k| pending[k].seq).expect("pending is not empty");
    let fits = |lo: usize, hi: usize| {
        let rows = hi - lo + 1;
        rows <= limits.max_sentences.max(1) && rows * pending[hi].ids.len() <= limits.max_tokens
    };
    let (mut lo, mut hi) = (oldest, oldest);
    loop {
        // Prefer the shorter neighbour (it adds no padding), then the longer one.
        if lo > 0 && fits(lo - 1, hi) {
            lo -= 1;
        } else if hi + 1 < pending.len() && fits(lo, hi + 1) {
            hi += 1;
        } else {
            break;
        }
    }
    pending.drain(lo..=hi).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(len: usize, seq: u64) -> Item {
        let (reply, _rx) = oneshot::channel();
        Item { ids: vec![1; len], wanted: None, reply, enqueued: Instant::now(), seq, trace: Trace::new(1) }
    }

    #[test]
    fn the_oldest_sentence_is_always_in_the_batch_and_budgets_hold() {
        let lens = [30, 3, 4, 5, 28, 6, 2, 31];
        let limits = BatchLimits { max_tokens: 20, max_sentences: 3 };
        let mut pending: Vec<Item> = lens.iter().enumerate().map(|(k, &l)| item(l, k as u64 + 1)).collect();
        let mut seen = Vec::new();
        while !pending.is_empty() {
            let oldest = pending.iter().map(|i| i.seq).min().unwrap();
            let batch = take_batch(&mut pending, limits);
            assert!(batch.iter().any(|i| i.seq == oldest));
            let width = batch.iter().map(|i| i.ids.len()).max().unwrap();
            assert!(batch.len() <= 3);
            assert!(batch.len() == 1 || batch.len() * width <= 20);
            seen.extend(batch.iter().map(|i| i.seq));
        }
        seen.sort_unstable();
        assert_eq!(seen, (1..=lens.len() as u64).collect::<Vec<_>>());
    }

    #[test]
    fn similar_lengths_are_grouped() {
        let limits = BatchLimits { max_tokens: 1000, max_sentences: 2 };
        let mut pending = vec![item(10, 1), item(50, 2), item(11, 3), item(49, 4)];
        let first: Vec<u64> = take_batch(&mut pending, limits).iter().map(|i| i.seq).collect();
        assert_eq!(first, vec![1, 3]);
    }
}
