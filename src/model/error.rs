use std::path::PathBuf;

/// What can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model directory {} does not exist{}; pass --model-dir (ROTATIONS_MODEL_DIR), or export one with tools/export_model.py", .given.display(), resolved_note(.given, .resolved))]
    NoModelDir { given: PathBuf, resolved: PathBuf },

    #[error("model directory {dir}: missing file {file}")]
    MissingFile { dir: PathBuf, file: &'static str },

    #[error("{path}: {reason}")]
    Manifest { path: PathBuf, reason: String },

    #[error("model graph does not match model.json: {0}")]
    GraphMismatch(String),

    #[error("tokenizer has {tokenizer} tokens but the model's vocabulary has {model}")]
    TokenizerMismatch { tokenizer: usize, model: usize },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("cannot load the ONNX Runtime library {path}: {reason} (run scripts/fetch-ort, or pass --ort-library / ORT_DYLIB_PATH)")]
    RuntimeLibrary { path: PathBuf, reason: String },

    #[error("execution provider {provider} is unavailable: {reason}")]
    ProviderUnavailable { provider: &'static str, reason: String },

    #[error("sentence {sentence}: {reason}")]
    /// `code` classifies the reason for reports (`EMPTY_SENTENCE`, `TOO_LONG`, `OUT_OF_VOCABULARY`).
    BadInput { sentence: usize, code: &'static str, reason: String },

    #[error("ONNX Runtime: {0}")]
    Runtime(String),

    #[error("model worker has stopped")]
    WorkerGone,
}

impl<T> From<ort::Error<T>> for ModelError {
    fn from(e: ort::Error<T>) -> Self {
        ModelError::Runtime(e.to_string())
    }
}

/// " (resolved to /abs/path)" where the path given was relative.
fn resolved_note(given: &std::path::Path, resolved: &std::path::Path) -> String {
    if given == resolved {
        String::new()
    } else {
        format!(" (resolved to {})", resolved.display())
    }
}
