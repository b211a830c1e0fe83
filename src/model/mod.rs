//! The model runtime: a model directory (ONNX graph + tokenizer + model.json) run by ONNX Runtime on
//! its own thread. It returns every hidden state of a batch, as Hugging Face's
//! `output_hidden_states=True` does, and knows nothing of angles or gRPC.
mod error;
pub mod fingerprint;
pub mod manifest;
pub mod onnx;
mod provider;
pub mod tokenizer;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use ndarray::{Array2, Array3, ArrayView1, Axis};

pub use error::ModelError;
pub use manifest::{Manifest, ModelFiles};
pub use onnx::{GatherOutputs, GraphOptimization, OnnxBackend, OrtTuning, PassCost};
#[cfg(test)]
pub(crate) use tokenizer::metaspace_fixture;
pub use tokenizer::{Tokenized, Tokenizer};
pub use worker::ModelWorker;

/// Every hidden state of one sentence, real tokens only: `[num_states, num_tokens, hidden_size]`.
/// State 0 is the embedding output; state k the output of block k (the last one after `ln_f`); a
/// model exported with `--sublayers` then has its sub-layer states ([`crate::analysis::StateLayout`]).
pub type SentenceHidden = Array3<f32>;

/// Which vector of a sentence: (hidden state, token position).
pub type VectorIndex = (u32, u32);

/// One sentence's hidden states as a forward pass returned them.
#[derive(Clone, Debug, PartialEq)]
pub enum Hidden {
    /// Every hidden state of every real token.
    All(SentenceHidden),
    /// Only the vectors asked for (a graph exported with `--gather-outputs`).
    Gathered(GatheredVectors),
}

/// Some vectors of one sentence: row `i` of `vectors` is the vector `index[i]` names.
#[derive(Clone, Debug, PartialEq)]
pub struct GatheredVectors {
    pub num_states: usize,
    pub num_tokens: usize,
    /// Sorted and distinct.
    pub index: Vec<VectorIndex>,
    /// `[index.len(), hidden_size]`.
    pub vectors: Array2<f32>,
}

impl Hidden {
    /// `(hidden states, real tokens, hidden size)`.
    pub fn dim(&self) -> (usize, usize, usize) {
        match self {
            Hidden::All(h) => h.dim(),
            Hidden::Gathered(g) => (g.num_states, g.num_tokens, g.vectors.ncols()),
        }
    }

    /// The vector of hidden state `state` at token `position`, if the pass returned it.
    pub fn vector(&self, state: usize, position: usize) -> Option<ArrayView1<'_, f32>> {
        match self {
            Hidden::All(h) => {
                let (states, tokens, _) = h.dim();
                (state < states && position < tokens)
                    .then(|| h.index_axis(Axis(0), state).index_axis_move(Axis(0), position))
            }
            Hidden::Gathered(g) => {
                let key = (u32::try_from(state).ok()?, u32::try_from(position).ok()?);
                g.index.binary_search(&key).ok().map(|row| g.vectors.row(row))
            }
        }
    }

    /// Every hidden state; a gathered result here is a bug of the caller.
    fn into_all(self) -> Result<SentenceHidden, ModelError> {
        match self {
            Hidden::All(h) => Ok(h),
            Hidden::Gathered(_) => {
                Err(ModelError::Runtime("asked for every hidden state, got gathered vectors".into()))
            }
        }
    }
}

/// A forward pass over a batch of token-id sequences. Implemented by ONNX Runtime; small enough for
/// tests to fake. Runs synchronously on the worker thread that owns it.
pub trait Backend: Send + 'static {
    /// Runs one batch (right-padded internally) and returns each sentence's hidden states, in order.
    fn forward(&mut self, batch: &[Vec<u32>]) -> Result<Vec<SentenceHidden>, ModelError>;

    /// Like [`Backend::forward`], for callers that read only `wanted[i]` (sorted, distinct) of sentence
    /// `i`: a backend that [`gathers`](Backend::gathers) returns just those vectors, others everything.
    fn forward_wanted(&mut self, batch: &[Vec<u32>], wanted: &[Vec<VectorIndex>]) -> Result<Vec<Hidden>, ModelError> {
        debug_assert_eq!(batch.len(), wanted.len());
        Ok(self.forward(batch)?.into_iter().map(Hidden::All).collect())
    }

    /// Whether [`Backend::forward_wanted`] returns only the wanted vectors (then callers list them).
    fn gathers(&self) -> bool {
        false
    }

    /// The execution provider it runs on: "cpu" or "cuda".
    fn provider(&self) -> &'static str {
        "cpu"
    }
}

/// Which ONNX Runtime execution provider runs the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ExecutionProvider {
    /// Always available.
    #[default]
    Cpu,
    /// NVIDIA GPU; needs the `cuda` cargo feature and the onnxruntime-gpu library.
    Cuda,
    /// CUDA if it registers, else CPU (the log says which).
    Auto,
}

/// How to start ONNX Runtime.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Path of libonnxruntime.so.
    pub library: PathBuf,
    pub provider: ExecutionProvider,
    /// Intra-op threads; 0 = one per core.
    pub intra_threads: usize,
    pub tuning: OrtTuning,
}

/// What the service reports about the loaded model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub max_positions: usize,
    pub pad_token_id: u32,
    /// "cpu" or "cuda": the provider that actually registered.
    pub execution_provider: &'static str,
    /// The graph returns only the vectors the analysis reads ([`Model::forward_wanted_unchecked`]).
    pub gathers: bool,
    pub dtype: String,
    pub source: String,
    /// SHA-256 of the weight files (model.json's, else computed at load; empty for fake backends).
    pub weights_sha256: String,
    /// Hugging Face's `model_type` (model.json's `family`; "gpt2" for older exports).
    pub family: String,
    /// The tokenizer's BOS token, if it has one.
    pub bos_token_id: Option<u32>,
    /// Every sentence starts with the BOS token: token positions count it.
    pub adds_bos: bool,
    /// model.json's record of which hidden states are before or after the final norm (null if absent).
    pub hidden_states: serde_json::Value,
    /// model.json's `sublayers`: the graph also returns each block's mid state and the last block's
    /// output before the final norm, after the hidden states (null: it does not).
    pub sublayers: serde_json::Value,
    /// Arithmetic of the weight products ([`Manifest::precision`]): "float32", or "int8" (opt-in).
    pub precision: String,
    /// A reduced-precision export's measured angle error and bound (model.json; null for float32).
    pub precision_check: serde_json::Value,
}

impl ModelInfo {
    pub fn num_hidden_states(&self) -> usize {
        self.num_layers + 1
    }

    /// Where a forward pass's states are (hidden states, then sub-layer states if the graph has them).
    pub fn state_layout(&self) -> crate::analysis::StateLayout {
        crate::analysis::StateLayout { num_layers: self.num_layers, sublayers: !self.sublayers.is_null() }
    }
}

/// A loaded model: tokenizer in the caller's thread, graph on its worker thread.
#[derive(Clone)]
pub struct Model {
    pub info: Arc<ModelInfo>,
    pub tokenizer: Arc<Tokenizer>,
    worker: ModelWorker,
}

impl Model {
    /// Loads a model directory with ONNX Runtime: checks model.json against the graph and the tokenizer
    /// against the vocabulary, then starts the worker thread that owns the session.
    pub fn load(dir: &std::path::Path, opts: &RuntimeOptions) -> Result<Self, ModelError> {
        let files = ModelFiles::locate(dir)?;
        let mut manifest = Manifest::read(&files.manifest)?;
        let tokenizer = Tokenizer::from_file(&files.tokenizer)?.with_special_tokens(&manifest)?;
        if tokenizer.vocab_size() != manifest.vocab_size {
            return Err(ModelError::TokenizerMismatch {
                tokenizer: tokenizer.vocab_size(),
                model: manifest.vocab_size,
            });
        }
        if manifest.weights_sha256.is_none() {
            // Not recorded at export: hash once now (seconds for GPT-2 XL's 6 GB).
            manifest.weights_sha256 = Some(fingerprint::weights_sha256(dir)?);
        }
        let (opts, m) = (opts.clone(), manifest.clone());
        let (worker, provider, gathers) = ModelWorker::spawn(move || OnnxBackend::load(&files, &m, &opts))?;
        Ok(Self::from_parts(&manifest, (provider, gathers), tokenizer, worker))
    }

    /// A model over any backend (tests use a fake one).
    pub fn with_backend<B: Backend>(manifest: &Manifest, tokenizer: Tokenizer, backend: B) -> Result<Self, ModelError> {
        let tokenizer = tokenizer.with_special_tokens(manifest)?;
        let (worker, provider, gathers) = ModelWorker::spawn(move || Ok(backend))?;
        Ok(Self::from_parts(manifest, (provider, gathers), tokenizer, worker))
    }

    fn from_parts(
        m: &Manifest,
        (provider, gathers): (&'static str, bool),
        tokenizer: Tokenizer,
        worker: ModelWorker,
    ) -> Self {
        let info = ModelInfo {
            name: m.name.clone(),
            num_layers: m.num_layers,
            hidden_size: m.hidden_size,
            vocab_size: m.vocab_size,
            max_positions: m.max_positions,
            pad_token_id: m.pad_token_id,
            execution_provider: provider,
            gathers,
            dtype: m.dtype.clone(),
            source: m.source.clone(),
            weights_sha256: m.weights_sha256.clone().unwrap_or_default(),
            family: m.family.clone(),
            bos_token_id: m.bos_token_id,
            adds_bos: tokenizer.bos().is_some(),
            hidden_states: m.hidden_states.clone(),
            sublayers: m.sublayers.clone(),
            precision: m.precision().to_string(),
            precision_check: m.precision_check.clone(),
        };
        Self { info: Arc::new(info), tokenizer: Arc::new(tokenizer), worker }
    }

    /// Checks a batch against the model: no empty sentence, none longer than the positions, ids in the vocabulary.
    /// `first_index` numbers the sentences in error messages.
    pub fn check_batch(&self, batch: &[Vec<u32>], first_index: usize) -> Result<(), ModelError> {
        batch.iter().enumerate().try_for_each(|(i, ids)| self.check_sentence(ids, first_index + i))
    }

    /// One sentence's tokens (corpus index `sentence`): some, within the positions and the vocabulary.
    pub fn check_sentence(&self, ids: &[u32], sentence: usize) -> Result<(), ModelError> {
        let bad = |code, reason| Err(ModelError::BadInput { sentence, code, reason });
        if ids.is_empty() {
            return bad("EMPTY_SENTENCE", "sentence has no tokens".into());
        }
        if ids.len() > self.info.max_positions {
            let reason = format!("{} tokens exceed the model's {} positions", ids.len(), self.info.max_positions);
            return bad("TOO_LONG", reason);
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.info.vocab_size) {
            return bad(
                "OUT_OF_VOCABULARY",
                format!("token id {id} is outside the vocabulary of {}", self.info.vocab_size),
            );
        }
        Ok(())
    }

    /// Every hidden state of each sentence in the batch (checked first), computed on the worker thread.
    pub async fn hidden_states(&self, batch: Vec<Vec<u32>>) -> Result<Vec<SentenceHidden>, ModelError> {
        self.check_batch(&batch, 0)?;
        self.worker.forward(batch).await
    }

    /// For callers that already checked the batch with [`Model::check_batch`] (the batcher).
    pub async fn forward_unchecked(&self, batch: Vec<Vec<u32>>) -> Result<Vec<SentenceHidden>, ModelError> {
        self.worker.forward(batch).await
    }

    /// For callers that read only `wanted[i]` of sentence `i` (see [`Backend::forward_wanted`]); the
    /// batch is already checked. `None`: every hidden state.
    pub async fn forward_wanted_unchecked(
        &self,
        batch: Vec<Vec<u32>>,
        wanted: Option<Vec<Vec<VectorIndex>>>,
    ) -> Result<Vec<Hidden>, ModelError> {
        self.worker.forward_wanted(batch, wanted).await
    }

    /// Blocking variant of [`Model::forward_wanted_unchecked`] (checks the batch), for tests and tools.
    pub fn hidden_wanted_blocking(
        &self,
        batch: Vec<Vec<u32>>,
        wanted: Vec<Vec<VectorIndex>>,
    ) -> Result<Vec<Hidden>, ModelError> {
        self.check_batch(&batch, 0)?;
        self.worker.forward_wanted_blocking(batch, Some(wanted))
    }

    /// Blocking variant for callers outside an async runtime.
    pub fn hidden_states_blocking(&self, batch: Vec<Vec<u32>>) -> Result<Vec<SentenceHidden>, ModelError> {
        self.check_batch(&batch, 0)?;
        self.worker.forward_blocking(batch)
    }
}

/// What the analysis reads from a forward pass: all states or the gathered vectors alike.
impl crate::analysis::HiddenVectors for Hidden {
    fn dim(&self) -> (usize, usize, usize) {
        Hidden::dim(self)
    }

    fn vector(&self, state: usize, position: usize) -> Option<ArrayView1<'_, f32>> {
        Hidden::vector(self, state, position)
    }
}
