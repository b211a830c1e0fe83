//! The application core between transport and science: tokenizes and validates a request, sends its
//! sentences through the cross-request batcher, and hands each sentence's hidden states to the
//! analysis. No gRPC types here.
pub mod batcher;

use std::ops::Range;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::analysis::{self, AngleUnit, RotationOptions, Rotations, SentenceRotations};
use crate::error::Error;
use crate::model::{Model, ModelError, Tokenized};
use crate::telemetry::StageTimings;
use batcher::{Batcher, Forwarded};

/// How the target token is named in a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Must tokenize to exactly one token (" her" → 607).
    Text(String),
    Id(u32),
}

/// A rotation request after validation at the edge.
#[derive(Clone, Debug)]
pub struct RotationJob {
    pub sentences: Vec<String>,
    pub target: Target,
    pub unit: AngleUnit,
    pub non_target_offset: i32,
    pub seed: u64,
}

/// Budgets for one forward pass.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Most tokens (rows × longest row, padding included) in one pass.
    pub max_tokens: usize,
    pub max_sentences: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self { max_tokens: 4096, max_sentences: 64 }
    }
}

/// A job whose every sentence is tokenized and known to be computable.
pub struct Prepared {
    pub ids: Vec<Vec<u32>>,
    pub target: u32,
    pub opts: RotationOptions,
}

impl Prepared {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Sentences of one range, queued in the batcher.
pub struct Pending {
    range: Range<usize>,
    replies: Vec<oneshot::Receiver<Result<Forwarded, ModelError>>>,
}

#[derive(Clone)]
pub struct Engine {
    pub model: Model,
    pub limits: BatchLimits,
    batcher: Batcher,
}

impl Engine {
    /// Starts the batcher; call inside a tokio runtime.
    pub fn new(model: Model, limits: BatchLimits) -> Self {
        let batcher = Batcher::spawn(model.clone(), limits);
        Self { model, limits, batcher }
    }

    /// The target's token id: one-token text, or an id inside the vocabulary.
    pub fn resolve_target(&self, target: &Target) -> Result<u32, Error> {
        match target {
            Target::Id(id) if (*id as usize) < self.model.info.vocab_size => Ok(*id),
            Target::Id(id) => Err(Error::invalid(
                "target_token_id",
                format!("{id} is outside the vocabulary of {} tokens", self.model.info.vocab_size),
            )),
            Target::Text(text) => {
                let t = self.model.tokenizer.encode(text)?;
                match t.ids.as_slice() {
                    [id] => Ok(*id),
                    _ => Err(Error::invalid(
                        "target_text",
                        format!(
                            "{text:?} must be exactly one token but tokenizes to {} {:?} (ids {:?}); \
                             GPT-2 tokens usually carry their leading space, e.g. \" her\"",
                            t.ids.len(),
                            t.tokens,
                            t.ids
                        ),
                    )),
                }
            }
        }
    }

    pub fn tokenize(&self, texts: &[String]) -> Result<Vec<Tokenized>, Error> {
        texts.iter().map(|t| Ok(self.model.tokenizer.encode(t)?)).collect()
    }

    /// Tokenizes every sentence and checks it (length, vocabulary, target, non-target) before any
    /// forward pass, so a bad sentence costs no compute and is named by its index.
    pub fn prepare(&self, job: &RotationJob) -> Result<Prepared, Error> {
        if job.sentences.is_empty() {
            return Err(Error::invalid("sentences", "no sentences given"));
        }
        let target = self.resolve_target(&job.target)?;
        let opts = RotationOptions { target, non_target_offset: job.non_target_offset, seed: job.seed, unit: job.unit };
        let ids: Vec<Vec<u32>> = self.tokenize(&job.sentences)?.into_iter().map(|t| t.ids).collect();
        self.model.check_batch(&ids, 0)?;
        for (i, sentence) in ids.iter().enumerate() {
            analysis::locate(i, sentence, target, job.non_target_offset)?;
        }
        Ok(Prepared { ids, target, opts })
    }

    /// [`Engine::prepare`] on a blocking thread: tokenizing thousands of sentences must not stall
    /// the async executor that serves other requests.
    pub async fn prepare_off_executor(&self, job: &RotationJob) -> Result<Prepared, Error> {
        let (engine, job) = (self.clone(), job.clone());
        tokio::task::spawn_blocking(move || engine.prepare(&job))
            .await
            .map_err(|e| ModelError::Tokenizer(format!("tokenizer task failed: {e}")))?
    }

    /// Queues the sentences of `range` in the batcher (they run with other requests' sentences).
    pub fn submit(&self, prepared: &Prepared, range: Range<usize>) -> Pending {
        let replies = range
            .clone()
            .map(|i| self.batcher.submit_wanted(prepared.ids[i].clone(), self.vectors_read(prepared, i)))
            .collect();
        Pending { range, replies }
    }

    /// The vectors sentence `i` reads, where the model returns only those ([`analysis::vectors_read`]).
    fn vectors_read(&self, prepared: &Prepared, i: usize) -> Option<Vec<crate::model::VectorIndex>> {
        if !self.model.info.gathers {
            return None;
        }
        // An error here (checked already in prepare) falls back to every state; the analysis names it.
        analysis::vectors_read(i, &prepared.ids[i], self.model.info.num_layers, &prepared.opts).ok()
    }

    /// Waits for a submitted range and computes its angles, in input order.
    pub async fn finish(
        &self,
        prepared: &Prepared,
        pending: Pending,
        timings: &mut StageTimings,
    ) -> Result<Vec<SentenceRotations>, Error> {
        let mut out = Vec::with_capacity(pending.replies.len());
        let mut passes = std::collections::HashSet::new();
        for (i, reply) in pending.range.zip(pending.replies) {
            let forwarded = reply.await.map_err(|_| ModelError::WorkerGone)??;
            timings.queue = timings.queue.max(forwarded.queued);
            // Sentences of one pass share its duration: count each pass once.
            if passes.insert(forwarded.batch) {
                timings.inference += forwarded.inference;
            }
            let started = Instant::now();
            out.push(analysis::rotate_sentence(i, &prepared.ids[i], &forwarded.hidden, &prepared.opts)?);
            timings.analysis += started.elapsed();
        }
        Ok(out)
    }

    /// Angles for every sentence of a job, with the time each stage took.
    pub async fn rotations(&self, job: &RotationJob) -> Result<(Rotations, u32, StageTimings), Error> {
        let mut timings = StageTimings::default();
        let started = Instant::now();
        let prepared = self.prepare_off_executor(job).await?;
        timings.tokenize = started.elapsed();
        let pending = self.submit(&prepared, 0..prepared.len());
        let sentences = self.finish(&prepared, pending, &mut timings).await?;
        let started = Instant::now();
        let rotations = Rotations::assemble(job.unit, sentences)?;
        timings.analysis += started.elapsed();
        Ok((rotations, prepared.target, timings))
    }
}
