//! `model.json`: what `tools/export_model.py` promises about the graph beside it.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ModelError;

/// The graph input of exports made with `--gather-outputs`: `[n, 3]` int64 rows of (batch row,
/// hidden state, token position).
pub const GATHER_INPUT: &str = "gather_index";
/// Its output, after the hidden states: `[n, hidden_size]` float32, the vectors `gather_index` names.
pub const GATHER_OUTPUT: &str = "gathered_hidden_states";

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
        let gathers = self.gathers();
        if self.inputs[..self.inputs.len() - usize::from(gathers)] != ["input_ids", "attention_mask"] {
            return Err(format!(
                "inputs must be [\"input_ids\", \"attention_mask\"] (then optionally \"{GATHER_INPUT}\"), found {:?}",
                self.inputs
            ));
        }
        let mut expected: Vec<String> = (0..=self.num_layers).map(|k| format!("hidden_state_{k}")).collect();
        expected.extend(gathers.then(|| GATHER_OUTPUT.to_string()));
        if self.outputs != expected {
            return Err(format!(
                "outputs must be hidden_state_0 ..= hidden_state_{}{} ({} names), found {} names",
                self.num_layers,
                if gathers { format!(", {GATHER_OUTPUT}") } else { String::new() },
                expected.len(),
                self.outputs.len()
            ));
        }
        if !matches!(self.dtype.as_str(), "float32" | "float16" | "bfloat16") {
            return Err(format!("dtype must be float32, float16 or bfloat16, found {}", self.dtype));
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

    /// The graph can also return just the vectors named by [`GATHER_INPUT`] (`--gather-outputs`).
    pub fn gathers(&self) -> bool {
        self.inputs.last().is_some_and(|i| i == GATHER_INPUT)
    }

    /// The names of the hidden-state outputs, without [`GATHER_OUTPUT`].
    pub fn hidden_state_outputs(&self) -> &[String] {
        &self.outputs[..self.outputs.len().min(self.num_hidden_states())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// model.json as the export tool wrote it before verification by angles and before
    /// `--gather-outputs` (the bundled model's until then).
    const OLD: &str = r#"{"format_version": 1, "name": "m", "num_layers": 2, "hidden_size": 4, "num_heads": 2,
        "vocab_size": 10, "max_positions": 8, "pad_token_id": 9, "eos_token_id": 9,
        "inputs": ["input_ids", "attention_mask"], "outputs": ["hidden_state_0", "hidden_state_1", "hidden_state_2"],
        "dtype": "float32", "source": "random-init:tiny:seed=0", "exporter": {"torch": "2.15.0"},
        "verification": {"max_abs_error": 7e-07, "tolerance": 0.0001, "relative_tolerance": 0.0001,
                         "batch_sentences": 5, "padding": "right"},
        "optimized": false}"#;

    fn parse(text: &str) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_str(text).map_err(|e| e.to_string())?;
        m.validate().map(|()| m)
    }

    fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut v: serde_json::Value = serde_json::from_str(OLD).unwrap();
        edit(&mut v);
        v.to_string()
    }

    #[test]
    fn old_and_new_model_json_are_accepted() {
        let old = parse(OLD).unwrap();
        assert!(!old.gathers());
        assert_eq!(old.hidden_state_outputs(), ["hidden_state_0", "hidden_state_1", "hidden_state_2"]);
        let new = parse(&edited(|v| {
            v["inputs"].as_array_mut().unwrap().push(GATHER_INPUT.into());
            v["outputs"].as_array_mut().unwrap().push(GATHER_OUTPUT.into());
            v["dtype"] = "bfloat16".into();
            v["verification"] = serde_json::json!({"criterion": "angle", "max_angle_deg": 9.5e-5,
                "angle_bound_deg": 1e-3, "max_rel_norm_error": 6e-7, "rel_norm_bound": 1e-4});
        }))
        .unwrap();
        assert!(new.gathers());
        assert_eq!(new.hidden_state_outputs(), old.hidden_state_outputs());
    }

    #[test]
    fn a_gathering_graph_must_name_both_its_input_and_its_output() {
        let no_output = edited(|v| v["inputs"].as_array_mut().unwrap().push(GATHER_INPUT.into()));
        assert!(parse(&no_output).unwrap_err().contains(GATHER_OUTPUT));
        let no_input = edited(|v| v["outputs"].as_array_mut().unwrap().push(GATHER_OUTPUT.into()));
        assert!(parse(&no_input).unwrap_err().contains("4 names"));
        let wrong_place = edited(|v| v["inputs"] = serde_json::json!([GATHER_INPUT, "input_ids", "attention_mask"]));
        assert!(parse(&wrong_place).unwrap_err().contains("inputs must be"));
    }
}
