//! `model.json`: what `tools/export_model.py` promises about the graph beside it.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ModelError;

/// The model directory's description, written by the export tool.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    pub num_layers: usize,
    pub hidden_size: usize,
    #[serde(default)]
    pub num_heads: Option<usize>,
    pub vocab_size: usize,
    pub max_positions: usize,
    pub pad_token_id: u32,
    pub eos_token_id: u32,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub dtype: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub exporter: serde_json::Value,
    #[serde(default)]
    pub verification: serde_json::Value,
    #[serde(default)]
    pub optimized: bool,
    /// The weights fingerprint ([`super::fingerprint::weights_sha256`]), recorded at export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_sha256: Option<String>,
}

/// The files of a model directory.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub onnx: PathBuf,
    pub tokenizer: PathBuf,
    pub manifest: PathBuf,
}

impl ModelFiles {
    pub const ONNX: &'static str = "model.onnx";
    pub const TOKENIZER: &'static str = "tokenizer.json";
    pub const MANIFEST: &'static str = "model.json";

    /// Checks that the directory holds the three files a model needs.
    pub fn locate(dir: &Path) -> Result<Self, ModelError> {
        if !dir.is_dir() {
            let resolved = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
            return Err(ModelError::NoModelDir { given: dir.to_path_buf(), resolved });
        }
        let need = |file: &'static str| {
            let p = dir.join(file);
            if p.is_file() {
                Ok(p)
            } else {
                Err(ModelError::MissingFile { dir: dir.to_path_buf(), file })
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest: need(Self::MANIFEST)?,
            onnx: need(Self::ONNX)?,
            tokenizer: need(Self::TOKENIZER)?,
        })
    }
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let bad = |reason: String| ModelError::Manifest { path: path.to_path_buf(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        m.validate().map_err(bad)?;
        Ok(m)
    }

    /// Internal consistency: one output per hidden state, the inputs we feed.
    fn validate(&self) -> Result<(), String> {
        if self.format_version != 1 {
            return Err(format!("format_version {} is not supported (expected 1)", self.format_version));
        }
        if self.num_layers == 0 || self.hidden_size == 0 || self.vocab_size == 0 || self.max_positions == 0 {
            return Err("num_layers, hidden_size, vocab_size and max_positions must be positive".into());
        }
        if self.inputs != ["input_ids", "attention_mask"] {
            return Err(format!("inputs must be [\"input_ids\", \"attention_mask\"], found {:?}", self.inputs));
        }
        let expected: Vec<String> = (0..=self.num_layers).map(|k| format!("hidden_state_{k}")).collect();
        if self.outputs != expected {
            return Err(format!(
                "outputs must be hidden_state_0 ..= hidden_state_{} ({} names), found {} names",
                self.num_layers,
                self.num_layers + 1,
                self.outputs.len()
            ));
        }
        if !matches!(self.dtype.as_str(), "float32" | "float16") {
            return Err(format!("dtype must be float32 or float16, found {}", self.dtype));
        }
        if self.pad_token_id as usize >= self.vocab_size {
            return Err(format!("pad_token_id {} is outside the vocabulary", self.pad_token_id));
        }
        Ok(())
    }

    /// Number of hidden states the graph returns (embeddings + one per block).
    pub fn num_hidden_states(&self) -> usize {
        self.num_layers + 1
    }
}
