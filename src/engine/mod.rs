//! The application core between transport and science: tokenizes and validates a request, sends its
//! sentences through the cross-request batcher, and hands each sentence's hidden states to the
//! analysis. No gRPC types here.
pub mod batcher;
mod sentence_error;

pub use sentence_error::{quote, InvalidSentence};

use std::ops::Range;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::analysis::{
    self, AnalysisError, AngleUnit, NonTargetSelector, Occurrence, RotationOptions, Rotations, RowSelection,
    SentenceRotations, SubToken, TargetSelector, TokenizedSentence, VectorSelection,
};
use crate::error::Error;
use crate::model::{Model, ModelError, Tokenized};
use crate::telemetry::StageTimings;
use batcher::{Batcher, Forwarded};

/// How the target token is named in a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A word: one token (" her" → GPT-2's 607 `Ġher`, Llama's `▁her`; "her" → GPT-2's
    /// sentence-initial `her`, SentencePiece's `▁her` again) or several (" Nakamura"), found by its
    /// token ids as the word occurs inside a sentence; or a token's own string (`"▁her"`):
    /// [`crate::model::Tokenizer::word_id`].
    Text(String),
    Id(u32),
    /// A character span `(start, end)` per sentence of the job.
    Spans(Vec<(usize, usize)>),
}

/// Which tokens each sentence's rows compare besides the target itself (issue 16).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Which occurrence(s) of a target word; every occurrence is a row of its own.
    pub occurrence: Occurrence,
    /// The non-target as a character span per sentence of the job; empty: `non_target_offset`.
    pub non_target_spans: Vec<(usize, usize)>,
    /// Which sub-token stands for a word of several tokens.
    pub sub_token: SubToken,
    /// Also the target's pairwise angles across all hidden states.
    pub all_layers: bool,
    /// With `all_layers`: also each row's matrix on the wire.
    pub row_matrices: bool,
}

/// A rotation request after validation at the edge.
#[derive(Clone, Debug)]
pub struct RotationJob {
    pub sentences: Vec<String>,
    pub target: Target,
    pub unit: AngleUnit,
    pub non_target_offset: i32,
    pub seed: u64,
    /// Corpus index of `sentences[0]`: sentences are numbered (shuffle streams, reports, errors)
    /// from here, so a corpus sent in pieces gives exactly the results of one request.
    pub first_index: usize,
    /// Which occurrence, spans, sub-token, all layers.
    pub selection: Selection,
    /// The non-target may be the BOS token a tokenizer puts before the text ([`RotationOptions`]).
    pub allow_bos_non_target: bool,
    /// Also the angles across each layer's attention and MLP steps (a model with sub-layer states).
    pub steps: bool,
    /// Also the norms of the target's and non-target's vectors at every state, and their growth.
    pub norms: bool,
    /// Invalid sentences are left out and reported ([`Prepared::skipped`]) instead of failing the job.
    pub skip_invalid: bool,
    /// Also the vectors themselves (as asked: checked against the model by [`Engine::check_job`]).
    pub vectors: Option<VectorRequest>,
    /// Only check the sentences and list the invalid ones, no forward pass (StreamRotations).
    pub validate_only: bool,
}

/// The vectors a request asks for, as it asks: state indices (empty: every state) and conditions
/// (empty: target and non-target), not yet checked against the model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VectorRequest {
    pub states: Vec<usize>,
    pub conditions: Vec<usize>,
    /// Their precision on the wire.
    pub dtype: VectorDtype,
}

/// How the vectors travel: the float32 values themselves, or each rounded to float16.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VectorDtype {
    #[default]
    F32,
    F16,
}

impl VectorDtype {
    pub fn bytes(self) -> usize {
        match self {
            VectorDtype::F32 => 4,
            VectorDtype::F16 => 2,
        }
    }
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

/// A job's rotation options and its target's token ids, resolved once (a stream prepares its
/// corpus a chunk at a time with the same ones).
#[derive(Clone, Debug)]
pub struct Resolved {
    pub opts: RotationOptions,
    /// The vectors returned themselves, checked against the model (every state when none was named).
    pub vectors: Option<VectorSelection>,
    /// The target word's token ids (empty for spans).
    pub target_tokens: Vec<u32>,
}

/// Consecutive sentences of a job, tokenized and known to be computable (with `skip_invalid`, the
/// invalid ones left out and listed).
pub struct Prepared {
    pub ids: Vec<Vec<u32>>,
    /// Corpus index of each sentence of `ids` (consecutive unless some were skipped).
    pub indices: Vec<usize>,
    /// The range's invalid sentences, left out (only with `skip_invalid`).
    pub skipped: Vec<InvalidSentence>,
    /// Each sentence's rows: one, or one per occurrence of the target.
    pub rows: Vec<Vec<RowSelection>>,
    /// The target word's token ids (empty for spans).
    pub target_tokens: Vec<u32>,
    pub opts: RotationOptions,
    /// As [`Resolved::vectors`].
    pub vectors: Option<VectorSelection>,
    /// Corpus indices `first..end` of this range: the job's `first_index` plus where the range lies
    /// in the job (a stream prepares its corpus a chunk at a time).
    pub first: usize,
    pub end: usize,
}

impl Prepared {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Tokens the model will compute for these sentences.
    pub fn num_tokens(&self) -> usize {
        self.ids.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Rows of the result (sentences, or occurrences).
    pub fn num_rows(&self) -> usize {
        self.rows.iter().map(Vec::len).sum()
    }
}

/// A range's rows' angles, and the span their analysis is traced in.
pub struct Finished {
    pub rows: Vec<SentenceRotations>,
    pub span: tracing::Span,
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

    /// The target word's token ids: a text's (one or several), or an id inside the vocabulary;
    /// none for spans.
    pub fn resolve_target(&self, target: &Target) -> Result<Vec<u32>, Error> {
        match target {
            Target::Id(id) if (*id as usize) < self.model.info.vocab_size => Ok(vec![*id]),
            Target::Id(id) => Err(Error::invalid(
                "target_token_id",
                format!("{id} is outside the vocabulary of {} tokens", self.model.info.vocab_size),
            )),
            // As the word occurs inside a sentence (SentencePiece's `▁`, byte-level BPE's `Ġ`), or a
            // token named by its own string.
            Target::Text(text) => {
                let ids = match self.model.tokenizer.word_id(text)? {
                    Ok(id) => vec![id],
                    Err(t) => t.ids,
                };
                if ids.is_empty() {
                    return Err(Error::invalid("target_text", format!("{text:?} tokenizes to no tokens")));
                }
                Ok(ids)
            }
            Target::Spans(_) => Ok(Vec::new()),
        }
    }

    /// Checks a job's options against the model before any work: an offset of 0, or one no
    /// sentence of at most `max_positions` tokens can hold, fails every sentence alike.
    pub fn check_job(&self, job: &RotationJob) -> Result<(), Error> {
        if job.steps && self.model.info.sublayers.is_null() {
            return Err(Error::FailedPrecondition(format!(
                "steps = SUBLAYERS needs a model exported with sub-layer states; {} was exported without them \
                 (re-export it with tools/export_model.py --sublayers)",
                self.model.info.name
            )));
        }
        self.vector_selection(job)?;
        let offset = job.non_target_offset;
        if !job.selection.non_target_spans.is_empty() {
            return Ok(()); // the offset is not used
        }
        if offset == 0 {
            return Err(Error::invalid("non_target_offset", "0 would make the non-target the target itself"));
        }
        let max_positions = self.model.info.max_positions;
        if offset.unsigned_abs() as usize >= max_positions {
            return Err(Error::invalid(
                "non_target_offset",
                format!(
                    "{offset} does not fit in a sentence of at most {max_positions} tokens (the model's positions)"
                ),
            ));
        }
        Ok(())
    }

    /// The job's vectors checked against the model: every state the model returns when none is named,
    /// both conditions when none is. A sub-layer state of a model without them is a failed
    /// precondition (the request is right for another export of the model), any other unknown index
    /// or a repeated one an invalid argument.
    pub fn vector_selection(&self, job: &RotationJob) -> Result<Option<VectorSelection>, Error> {
        let Some(asked) = &job.vectors else { return Ok(None) };
        let layout = self.model.info.state_layout();
        let with_sublayers = crate::analysis::StateLayout { sublayers: true, ..layout }.num_states();
        for (i, &state) in asked.states.iter().enumerate() {
            let field = format!("vectors.states[{i}]");
            if state >= with_sublayers {
                let last = layout.num_states() - 1;
                return Err(Error::invalid(field, format!("state {state} is past the model's last state, {last}")));
            }
            if state >= layout.num_states() {
                return Err(Error::FailedPrecondition(format!(
                    "{field}: state {state} is a sub-layer state (hidden states are 0..={}); {} was exported without \
                     sub-layer states (re-export it with tools/export_model.py --sublayers)",
                    layout.num_layers, self.model.info.name
                )));
            }
            if asked.states[..i].contains(&state) {
                return Err(Error::invalid(field, format!("state {state} is asked for twice")));
            }
        }
        for (i, &condition) in asked.conditions.iter().enumerate() {
            let field = format!("vectors.conditions[{i}]");
            if condition > 1 {
                let reason = format!("{condition} is not a condition with vectors (0 target, 1 non_target)");
                return Err(Error::invalid(field, reason));
            }
            if asked.conditions[..i].contains(&condition) {
                return Err(Error::invalid(field, format!("condition {condition} is asked for twice")));
            }
        }
        let states = if asked.states.is_empty() { (0..layout.num_states()).collect() } else { asked.states.clone() };
        let conditions = if asked.conditions.is_empty() { vec![0, 1] } else { asked.conditions.clone() };
        Ok(Some(VectorSelection { states, conditions }))
    }

    pub fn tokenize(&self, texts: &[String]) -> Result<Vec<Tokenized>, Error> {
        texts.iter().map(|t| Ok(self.model.tokenizer.encode(t)?)).collect()
    }

    /// Tokenizes every sentence and checks it (length, vocabulary, target, non-target) before any
    /// forward pass, so a bad sentence costs no compute and is named by its index.
    pub fn prepare(&self, job: &RotationJob) -> Result<Prepared, Error> {
        let resolved = self.resolve(job)?;
        self.prepare_range(job, &resolved, 0..job.sentences.len())
    }

    /// The job's options with its target resolved to token ids, once for the whole job.
    pub fn resolve(&self, job: &RotationJob) -> Result<Resolved, Error> {
        if job.sentences.is_empty() {
            return Err(Error::invalid("sentences", "no sentences given"));
        }
        let target_tokens = self.resolve_target(&job.target)?;
        let target = match target_tokens[..] {
            [id] => id,
            _ => 0,
        };
        let opts = RotationOptions {
            target,
            non_target_offset: job.non_target_offset,
            seed: job.seed,
            unit: job.unit,
            sub_token: job.selection.sub_token,
            all_layers: job.selection.all_layers,
            special_prefix: usize::from(self.model.tokenizer.bos().is_some()),
            allow_bos_non_target: job.allow_bos_non_target,
            states: Some(self.model.info.state_layout()).filter(|layout| layout.sublayers),
            steps: job.steps,
            norms: job.norms,
        };
        Ok(Resolved { opts, target_tokens, vectors: self.vector_selection(job)? })
    }

    /// [`Engine::prepare`] for the sentences of `range` only. Every sentence is checked; invalid
    /// ones fail the job together ([`Error::Sentences`], by corpus index, quoted), or with
    /// `skip_invalid` are left out and listed in [`Prepared::skipped`].
    pub fn prepare_range(
        &self,
        job: &RotationJob,
        resolved: &Resolved,
        range: Range<usize>,
    ) -> Result<Prepared, Error> {
        let first = job.first_index + range.start;
        let texts = &job.sentences[range.clone()];
        let span =
            tracing::info_span!("tokenize", sentences = texts.len() as i64, tokens = tracing::field::Empty).entered();
        let tokenized = self.tokenize(texts)?;
        span.record("tokens", tokenized.iter().map(|t| t.ids.len()).sum::<usize>() as i64);
        let mut prepared = Prepared {
            ids: Vec::with_capacity(texts.len()),
            indices: Vec::with_capacity(texts.len()),
            skipped: Vec::new(),
            rows: Vec::with_capacity(texts.len()),
            target_tokens: resolved.target_tokens.clone(),
            opts: resolved.opts,
            vectors: resolved.vectors.clone(),
            first,
            end: first + texts.len(),
        };
        for (i, t) in tokenized.into_iter().enumerate() {
            let index = first + i;
            match self.select_sentence(job, resolved, range.start + i, &texts[i], &t) {
                Ok(rows) => {
                    prepared.ids.push(t.ids);
                    prepared.indices.push(index);
                    prepared.rows.push(rows);
                }
                Err(e) => prepared.skipped.push(sentence_error::explain(
                    e,
                    index,
                    &texts[i],
                    &t.ids,
                    &resolved.target_tokens,
                    &self.model.tokenizer,
                )?),
            }
        }
        if !job.skip_invalid && !prepared.skipped.is_empty() {
            let (invalid, total) = (prepared.skipped, texts.len());
            return Err(Error::Sentences { invalid, total, first_index: job.first_index, skipping: false });
        }
        Ok(prepared)
    }

    /// The rows of sentence `in_job` of the job (tokenized as `t`), or why it cannot be analysed.
    fn select_sentence(
        &self,
        job: &RotationJob,
        resolved: &Resolved,
        in_job: usize,
        text: &str,
        t: &Tokenized,
    ) -> Result<Vec<RowSelection>, Error> {
        let index = job.first_index + in_job;
        self.model.check_sentence(&t.ids, index)?;
        let sentence = TokenizedSentence { index, text, ids: &t.ids, offsets: &t.offsets };
        let target = match &job.target {
            Target::Spans(spans) => TargetSelector::Span(spans[in_job].0, spans[in_job].1),
            _ => TargetSelector::Word { tokens: &resolved.target_tokens, occurrence: job.selection.occurrence },
        };
        let non_target = match job.selection.non_target_spans.get(in_job) {
            Some(&(start, end)) => NonTargetSelector::Span(start, end),
            None => NonTargetSelector::Offset(job.non_target_offset),
        };
        let rows = analysis::select_rows(sentence, target, non_target)?;
        Ok(analysis::check_rows_bos(index, rows, &resolved.opts)?)
    }

    /// Queues the sentences of `range` in the batcher (they run with other requests' sentences).
    /// Their wait is the current span's `queue` child, which ends when the last of them enters a
    /// forward pass; each pass they ride in becomes a child of the current span too.
    pub fn submit(&self, prepared: &Prepared, range: Range<usize>) -> Pending {
        let trace = batcher::Trace::new(range.len());
        let replies = range
            .clone()
            .map(|i| self.batcher.submit_traced(prepared.ids[i].clone(), self.vectors_read(prepared, i), trace.clone()))
            .collect();
        Pending { range, replies }
    }

    /// The vectors sentence `i` reads, where the model returns only those ([`analysis::vectors_read`]).
    fn vectors_read(&self, prepared: &Prepared, i: usize) -> Option<Vec<crate::model::VectorIndex>> {
        if !self.model.info.gathers {
            return None;
        }
        let (index, layers) = (prepared.indices[i], self.model.info.num_layers);
        let mut read =
            analysis::rows_vectors_read(index, prepared.ids[i].len(), &prepared.rows[i], layers, &prepared.opts);
        if let Some(chosen) = &prepared.vectors {
            let rows = &prepared.rows[i];
            let more = analysis::vectors::vectors_read(chosen, rows, prepared.opts.sub_token);
            read.extend(more.into_iter().map(|(s, p)| (s as u32, p as u32)));
            read.sort_unstable();
            read.dedup();
        }
        Some(read)
    }

    /// Waits for a submitted range and computes its rows' angles, in input order. The `analysis`
    /// span begins with the first result and is entered only while computing (its busy time is the
    /// work); the caller assembles the rows in it.
    pub async fn finish(
        &self,
        prepared: &Prepared,
        pending: Pending,
        timings: &mut StageTimings,
    ) -> Result<Finished, Error> {
        let mut rows = Vec::with_capacity(pending.replies.len());
        let mut passes = std::collections::HashSet::new();
        let mut span = None;
        for (i, reply) in pending.range.zip(pending.replies) {
            let forwarded = reply.await.map_err(|_| ModelError::WorkerGone)??;
            timings.queue = timings.queue.max(forwarded.queued);
            // Sentences of one pass share its duration: count each pass once.
            if passes.insert(forwarded.batch) {
                timings.inference += forwarded.inference;
            }
            let started = Instant::now();
            let span = span.get_or_insert_with(|| tracing::info_span!("analysis", rows = tracing::field::Empty));
            span.in_scope(|| -> Result<(), Error> {
                let sentence = prepared.indices[i];
                let (num_ids, hidden_tokens) = (prepared.ids[i].len(), forwarded.hidden.dim().1);
                if hidden_tokens != num_ids {
                    return Err(AnalysisError::TokenCountMismatch { sentence, num_ids, hidden_tokens }.into());
                }
                for &row in &prepared.rows[i] {
                    let mut rotations = analysis::rotate_row(sentence, &forwarded.hidden, row, &prepared.opts)?;
                    if let Some(chosen) = &prepared.vectors {
                        let sub_token = prepared.opts.sub_token;
                        let vectors = analysis::row_vectors(sentence, &forwarded.hidden, row, sub_token, chosen)?;
                        rotations.vectors = Some(vectors);
                    }
                    rows.push(rotations);
                }
                Ok(())
            })?;
            timings.analysis += started.elapsed();
        }
        let span = span.unwrap_or_else(|| tracing::info_span!("analysis", rows = tracing::field::Empty));
        span.record("rows", rows.len() as i64);
        Ok(Finished { rows, span })
    }

    /// Angles for every sentence of a prepared job, adding the time each stage took to `timings`.
    pub async fn rotations(
        &self,
        prepared: &Prepared,
        unit: AngleUnit,
        timings: &mut StageTimings,
    ) -> Result<Rotations, Error> {
        let pending = self.submit(prepared, 0..prepared.len());
        let finished = self.finish(prepared, pending, timings).await?;
        let started = Instant::now();
        let rotations = finished.span.in_scope(|| Rotations::assemble(unit, finished.rows))?;
        timings.analysis += started.elapsed();
        Ok(rotations)
    }
}

/// Blocking tasks started by [`blocking`] that have not finished (shutdown reports those it
/// leaves behind).
static BLOCKING_RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many tasks started by [`blocking`] are still running.
pub fn blocking_tasks_running() -> usize {
    BLOCKING_RUNNING.load(std::sync::atomic::Ordering::SeqCst)
}

/// Counts a blocking task from its start until it returns or panics.
struct BlockingTask;

impl BlockingTask {
    fn start() -> Self {
        BLOCKING_RUNNING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        BlockingTask
    }
}

impl Drop for BlockingTask {
    fn drop(&mut self) {
        BLOCKING_RUNNING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Runs CPU-bound work (tokenizing, converting large messages) on a blocking thread, so the async
/// workers stay free to serve other requests. Whatever `work` owns (a request's slot) is held
/// until it has finished, even if the caller has gone.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    let task = BlockingTask::start();
    // The caller's span goes along, so the work's own spans join the request's trace.
    let span = tracing::Span::current();
    let run = move || {
        let _task = task;
        span.in_scope(work)
    };
    tokio::task::spawn_blocking(run).await.map_err(|e| ModelError::Runtime(format!("a blocking task failed: {e}")))?
}
