//! `model.json`: what `tools/export_model.py` promises about the graph beside it.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ModelError;

/// The graph input of exports made with `--gather-outputs`: `[n, 3]` int64 rows of (batch row,
/// hidden state, token position).
pub const GATHER_INPUT: &str = "gather_index";
/// Its output, after the hidden states: `[n, hidden_size]` float32, the vectors `gather_index` names.
pub const GATHER_OUTPUT: &str = "gathered_hidden_states";

/// The graph input of rotary-position (and some learned-position) exports: `[batch, seq]` int64,
/// `0..len` along each right-padded row.
pub const POSITION_IDS_INPUT: &str = "position_ids";

/// The family of exports that predate `family` in model.json: GPT-2.
pub const DEFAULT_FAMILY: &str = "gpt2";

/// The model directory's description, written by the export tool. Fields added for other families
/// (`family`, `bos_token_id`, `adds_bos`, `pad_token_source`, `hidden_states`) default to GPT-2's
/// behaviour, so model directories exported before them keep working.
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
    /// Hugging Face's `model_type`: gpt2, gpt_neo, gpt_neox, opt, llama, mistral, qwen2, qwen3, gemma.
    #[serde(default = "default_family")]
    pub family: String,
    /// The tokenizer's beginning-of-sequence token, if it has one.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// The tokenizer's post-processor puts `bos_token_id` before every text (Llama, Mistral, Gemma, OPT).
    #[serde(default)]
    pub adds_bos: bool,
    /// Where `pad_token_id` came from when the model has no pad token of its own (e.g. "eos_token").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_source: Option<String>,
    /// Which hidden states are before or after the final norm, as the export tool records it.
    #[serde(default = "gpt2_hidden_states", skip_serializing_if = "serde_json::Value::is_null")]
    pub hidden_states: serde_json::Value,
}

fn default_family() -> String {
    DEFAULT_FAMILY.to_string()
}

/// What GPT-2's hidden states are (tools/families.py), for the GPT-2 exports that predate the field,
/// so `GetModelInfo.hidden_states` says it for them too.
fn gpt2_hidden_states() -> serde_json::Value {
    serde_json::json!({
        "first": "the input of the first block: token + learned position embeddings",
        "last": "after the final norm"
    })
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
        let fed = &self.inputs[..self.inputs.len() - usize::from(gathers)];
        if fed != ["input_ids", "attention_mask"] && fed != ["input_ids", "attention_mask", POSITION_IDS_INPUT] {
            return Err(format!(
                "inputs must be [\"input_ids\", \"attention_mask\"] (then optionally \"{POSITION_IDS_INPUT}\", then \
                 optionally \"{GATHER_INPUT}\"), found {:?}",
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
        match self.bos_token_id {
            Some(bos) if bos as usize >= self.vocab_size => {
                Err(format!("bos_token_id {bos} is outside the vocabulary"))
            }
            None if self.adds_bos => Err("adds_bos is true but bos_token_id is not set".into()),
            _ => Ok(()),
        }
    }

    /// Number of hidden states the graph returns (embeddings + one per block).
    pub fn num_hidden_states(&self) -> usize {
        self.num_layers + 1
    }

    /// The graph can also return just the vectors named by [`GATHER_INPUT`] (`--gather-outputs`).
    pub fn gathers(&self) -> bool {
        self.inputs.last().is_some_and(|i| i == GATHER_INPUT)
    }

    /// The graph takes [`POSITION_IDS_INPUT`] (rotary models: positions are not derived from the mask).
    pub fn feeds_position_ids(&self) -> bool {
        self.inputs.iter().any(|i| i == POSITION_IDS_INPUT)
    }

    /// The BOS token the tokenizer puts before every text, if model.json says it does.
    pub fn added_bos(&self) -> Option<u32> {
        self.bos_token_id.filter(|_| self.adds_bos)
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
    fn family_fields_default_to_gpt2_behaviour() {
        let old = parse(OLD).unwrap();
        assert_eq!(old.family, DEFAULT_FAMILY);
        assert_eq!(old.hidden_states["last"], "after the final norm", "GPT-2's semantics, not an empty field");
        assert_eq!((old.added_bos(), old.feeds_position_ids()), (None, false));
        let llama = parse(&edited(|v| {
            v["family"] = "llama".into();
            v["bos_token_id"] = 1.into();
            v["adds_bos"] = true.into();
            v["pad_token_source"] = "eos_token".into();
            v["hidden_states"] = serde_json::json!({"last": "after the final norm"});
            v["inputs"] = serde_json::json!(["input_ids", "attention_mask", POSITION_IDS_INPUT, GATHER_INPUT]);
            v["outputs"].as_array_mut().unwrap().push(GATHER_OUTPUT.into());
        }))
        .unwrap();
        assert_eq!((llama.family.as_str(), llama.added_bos()), ("llama", Some(1)));
        assert!(llama.feeds_position_ids() && llama.gathers());
        // A BOS token the tokenizer does not add is recorded but not added.
        let qwen = parse(&edited(|v| v["bos_token_id"] = 3.into())).unwrap();
        assert_eq!(qwen.added_bos(), None);
    }

    #[test]
    fn bos_and_position_inputs_are_checked() {
        let no_bos = edited(|v| v["adds_bos"] = true.into());
        assert!(parse(&no_bos).unwrap_err().contains("bos_token_id is not set"));
        let outside = edited(|v| v["bos_token_id"] = 10.into());
        assert!(parse(&outside).unwrap_err().contains("bos_token_id 10"));
        let wrong_place =
            edited(|v| v["inputs"] = serde_json::json!([POSITION_IDS_INPUT, "input_ids", "attention_mask"]));
        assert!(parse(&wrong_place).unwrap_err().contains(POSITION_IDS_INPUT));
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
