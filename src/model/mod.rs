//! The model runtime: a model directory (ONNX graph + tokenizer + model.json) run by ONNX Runtime on
//! its own thread. It returns every hidden state of a batch, as Hugging Face's
//! `output_hidden_states=True` does, and knows nothing of angles or gRPC.
mod error;
pub mod manifest;
pub mod onnx;
mod provider;
pub mod tokenizer;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use ndarray::Array3;

pub use error::ModelError;
pub use manifest::{Manifest, ModelFiles};
pub use onnx::{GraphOptimization, OnnxBackend, OrtTuning, PassCost};
pub use tokenizer::{Tokenized, Tokenizer};
pub use worker::ModelWorker;

/// Every hidden state of one sentence, real tokens only: `[num_hidden_states, num_tokens, hidden_size]`.
/// State 0 is the embedding output; state k the output of block k (the last one after `ln_f`).
pub type SentenceHidden = Array3<f32>;

/// A forward pass over a batch of token-id sequences. Implemented by ONNX Runtime; small enough for
/// tests to fake. Runs synchronously on the worker thread that owns it.
pub trait Backend: Send + 'static {
    /// Runs one batch (right-padded internally) and returns each sentence's hidden states, in order.
    fn forward(&mut self, batch: &[Vec<u32>]) -> Result<Vec<SentenceHidden>, ModelError>;

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
    pub dtype: String,
    pub source: String,
}

impl ModelInfo {
    pub fn num_hidden_states(&self) -> usize {
        self.num_layers + 1
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
        let manifest = Manifest::read(&files.manifest)?;
        let tokenizer = Tokenizer::from_file(&files.tokenizer)?;
        if tokenizer.vocab_size() != manifest.vocab_size {
            return Err(ModelError::TokenizerMismatch {
                tokenizer: tokenizer.vocab_size(),
                model: manifest.vocab_size,
            });
        }
        let (opts, m) = (opts.clone(), manifest.clone());
        let (worker, provider) = ModelWorker::spawn(move || OnnxBackend::load(&files, &m, &opts))?;
        Ok(Self::from_parts(&manifest, provider, tokenizer, worker))
    }

    /// A model over any backend (tests use a fake one).
    pub fn with_backend<B: Backend>(manifest: &Manifest, tokenizer: Tokenizer, backend: B) -> Result<Self, ModelError> {
        let (worker, provider) = ModelWorker::spawn(move || Ok(backend))?;
        Ok(Self::from_parts(manifest, provider, tokenizer, worker))
    }

    fn from_parts(m: &Manifest, provider: &'static str, tokenizer: Tokenizer, worker: ModelWorker) -> Self {
        let info = ModelInfo {
            name: m.name.clone(),
            num_layers: m.num_layers,
            hidden_size: m.hidden_size,
            vocab_size: m.vocab_size,
            max_positions: m.max_positions,
            pad_token_id: m.pad_token_id,
            execution_provider: provider,
            dtype: m.dtype.clone(),
            source: m.source.clone(),
        };
        Self { info: Arc::new(info), tokenizer: Arc::new(tokenizer), worker }
    }

    /// Checks a batch against the model: no empty sentence, none longer than the positions, ids in the vocabulary.
    /// `first_index` numbers the sentences in error messages.
    pub fn check_batch(&self, batch: &[Vec<u32>], first_index: usize) -> Result<(), ModelError> {
        for (i, ids) in batch.iter().enumerate() {
            let sentence = first_index + i;
            if ids.is_empty() {
                return Err(ModelError::BadInput { sentence, reason: "sentence has no tokens".into() });
            }
            if ids.len() > self.info.max_positions {
                return Err(ModelError::BadInput {
                    sentence,
                    reason: format!("{} tokens exceed the model's {} positions", ids.len(), self.info.max_positions),
                });
            }
            if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.info.vocab_size) {
                return Err(ModelError::BadInput {
                    sentence,
                    reason: format!("token id {bad} is outside the vocabulary of {}", self.info.vocab_size),
                });
            }
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

    /// Blocking variant for callers outside an async runtime.
    pub fn hidden_states_blocking(&self, batch: Vec<Vec<u32>>) -> Result<Vec<SentenceHidden>, ModelError> {
        self.check_batch(&batch, 0)?;
        self.worker.forward_blocking(batch)
    }
}
