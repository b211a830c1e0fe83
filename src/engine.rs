//! The application core between transport and science: turns a validated request into tokens, runs the
//! model in length-sorted batches, and hands hidden states to the analysis. No gRPC types here.
use crate::analysis::{self, AngleUnit, RotationOptions, Rotations, SentenceRotations};
use crate::error::Error;
use crate::model::{Model, Tokenized};

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

/// Batch budgets for one forward pass.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Most tokens (rows × longest row) in one pass.
    pub max_tokens: usize,
    pub max_sentences: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_tokens: 4096,
            max_sentences: 64,
        }
    }
}

#[derive(Clone)]
pub struct Engine {
    pub model: Model,
    pub limits: BatchLimits,
}

impl Engine {
    pub fn new(model: Model, limits: BatchLimits) -> Self {
        Self { model, limits }
    }

    /// The target's token id: one-token text, or an id inside the vocabulary.
    pub fn resolve_target(&self, target: &Target) -> Result<u32, Error> {
        match target {
            Target::Id(id) if (*id as usize) < self.model.info.vocab_size => Ok(*id),
            Target::Id(id) => Err(Error::invalid(
                "target_token_id",
                format!(
                    "{id} is outside the vocabulary of {} tokens",
                    self.model.info.vocab_size
                ),
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
        texts
            .iter()
            .map(|t| Ok(self.model.tokenizer.encode(t)?))
            .collect()
    }

    /// Angles for every sentence: validates all sentences (tokens, target, non-target) before any
    /// forward pass, so a bad sentence costs no compute and is named by its index.
    pub async fn rotations(&self, job: &RotationJob) -> Result<Rotations, Error> {
        if job.sentences.is_empty() {
            return Err(Error::invalid("sentences", "no sentences given"));
        }
        let target = self.resolve_target(&job.target)?;
        let opts = RotationOptions {
            target,
            non_target_offset: job.non_target_offset,
            seed: job.seed,
            unit: job.unit,
        };
        let ids: Vec<Vec<u32>> = self
            .tokenize(&job.sentences)?
            .into_iter()
            .map(|t| t.ids)
            .collect();
        self.model.check_batch(&ids, 0)?;
        for (i, sentence) in ids.iter().enumerate() {
            analysis::target::locate(i, sentence, target, job.non_target_offset)?;
        }

        let mut results: Vec<SentenceRotations> = Vec::with_capacity(ids.len());
        for batch in plan_batches(&ids, self.limits) {
            let inputs: Vec<Vec<u32>> = batch.iter().map(|&i| ids[i].clone()).collect();
            let hidden = self.model.hidden_states(inputs).await?;
            for (&i, h) in batch.iter().zip(&hidden) {
                results.push(analysis::rotations::rotate_sentence(
                    i,
                    &ids[i],
                    h.view(),
                    &opts,
                )?);
            }
        }
        Ok(Rotations::assemble(job.unit, results)?)
    }
}

/// Groups sentence indices into forward passes: sorted by length so rows in a batch are of similar
/// length (little padding), each batch within the token and sentence budgets. A sentence longer than
/// the token budget still runs, alone.
pub fn plan_batches(ids: &[Vec<u32>], limits: BatchLimits) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| (ids[i].len(), i));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        let width = ids[i].len(); // sorted ascending: the newest row is the longest
        let fits = current.len() < limits.max_sentences
            && (current.len() + 1) * width <= limits.max_tokens;
        if !current.is_empty() && !fits {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_budgets_and_cover_every_sentence_once() {
        let ids: Vec<Vec<u32>> = [5, 1, 9, 3, 3, 7, 2, 8]
            .iter()
            .map(|&n| vec![1; n])
            .collect();
        let limits = BatchLimits {
            max_tokens: 16,
            max_sentences: 3,
        };
        let batches = plan_batches(&ids, limits);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..ids.len()).collect::<Vec<_>>());
        for b in &batches {
            let width = b.iter().map(|&i| ids[i].len()).max().unwrap();
            assert!(b.len() <= 3);
            assert!(
                b.len() == 1 || b.len() * width <= 16,
                "batch {b:?} over budget"
            );
        }
    }

    #[test]
    fn an_oversized_sentence_runs_alone() {
        let ids = vec![vec![1; 100], vec![1; 2]];
        let batches = plan_batches(
            &ids,
            BatchLimits {
                max_tokens: 10,
                max_sentences: 8,
            },
        );
        assert_eq!(batches, vec![vec![1], vec![0]]);
    }
}
