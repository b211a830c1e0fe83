//! The model runtime against PyTorch: hidden states of the bundled model equal Hugging Face's
//! `output_hidden_states=True` (golden values from tools/make_golden_hidden_states.py).
mod common;

use common::*;
use rotations::model::{
    ExecutionProvider, GraphOptimization, Model, ModelError, OrtTuning, PassCost, RuntimeOptions, SentenceHidden,
};

fn golden_batch() -> (Vec<String>, Vec<Vec<u32>>, serde_json::Value) {
    golden_hidden("hidden_states.json")
}

#[test]
fn tokenizer_matches_hugging_face_ids() {
    let model = load_bundled();
    let (sentences, ids, _) = golden_batch();
    for (s, want) in sentences.iter().zip(&ids) {
        assert_eq!(&model.tokenizer.encode(s).unwrap().ids, want, "{s:?}");
    }
    assert_eq!(model.tokenizer.encode(" her").unwrap().ids, vec![607]);
}

#[test]
fn hidden_states_equal_pytorch_on_a_padded_batch() {
    let model = load_bundled();
    let (_, ids, g) = golden_batch();
    let hidden = model.hidden_states_blocking(ids).unwrap();
    let max_err = max_error_vs_golden(&hidden, &g["hidden_states"], model.info.hidden_size);
    assert!(max_err <= 1e-4, "max abs error vs PyTorch {max_err:e}");
}

/// Largest |a - b| over every hidden state of one sentence.
fn max_diff(a: &SentenceHidden, b: &SentenceHidden) -> f32 {
    (a - b).mapv(f32::abs).fold(0f32, |m, &v| m.max(v))
}

/// Largest |a - b| over every sentence of a batch.
fn max_batch_diff(a: &[SentenceHidden], b: &[SentenceHidden]) -> f32 {
    a.iter().zip(b).map(|(x, y)| max_diff(x, y)).fold(0f32, f32::max)
}

#[test]
fn every_ort_tuning_gives_the_same_hidden_states() {
    let (_, ids, _) = golden_batch();
    let reference = load_bundled().hidden_states_blocking(ids.clone()).unwrap();
    let saved = tempfile::tempdir().unwrap();
    let with = |tuning: OrtTuning| RuntimeOptions { tuning, ..runtime_options() };
    let variants = [
        ("one pass per batch", OrtTuning { pass_cost_tokens: PassCost(None), ..Default::default() }),
        ("one pass per length", OrtTuning { pass_cost_tokens: PassCost(Some(0)), ..Default::default() }),
        ("no graph optimization", OrtTuning { graph_optimization: GraphOptimization::Disable, ..Default::default() }),
        ("no prepacking, no prefetch", OrtTuning { prepack_weights: false, prefetch: false, ..Default::default() }),
        (
            "saving the optimized graph",
            OrtTuning { save_optimized: Some(saved.path().join("model.onnx")), ..Default::default() },
        ),
    ];
    for (what, tuning) in variants {
        let model = Model::load(&bundled_model_dir(), &with(tuning)).unwrap();
        let diff = max_batch_diff(&model.hidden_states_blocking(ids.clone()).unwrap(), &reference);
        assert!(diff <= 1e-5, "{what}: differs by {diff:e}");
    }
    // ONNX Runtime's saved graph, weights beside it, loads as a model directory of its own.
    assert!(saved.path().join("model.onnx.data").is_file(), "weights are written beside the graph");
    for f in ["model.json", "tokenizer.json"] {
        std::fs::copy(bundled_model_dir().join(f), saved.path().join(f)).unwrap();
    }
    let tuning = OrtTuning { graph_optimization: GraphOptimization::Disable, ..Default::default() };
    let model = Model::load(saved.path(), &with(tuning)).unwrap();
    let diff = max_batch_diff(&model.hidden_states_blocking(ids).unwrap(), &reference);
    assert!(diff <= 1e-5, "the saved optimized graph differs by {diff:e}");
}

#[test]
fn idle_threads_sleeping_instead_of_spinning_changes_no_bit() {
    // Spinning is scheduling only: the same kernels on the same split of work, so bit for bit.
    let (_, ids, _) = golden_batch();
    let reference = load_bundled().hidden_states_blocking(ids.clone()).unwrap();
    let tuning = OrtTuning { spinning: false, ..Default::default() };
    let model = Model::load(&bundled_model_dir(), &RuntimeOptions { tuning, ..runtime_options() }).unwrap();
    assert_eq!(max_batch_diff(&model.hidden_states_blocking(ids).unwrap(), &reference), 0.0);
}

#[test]
fn a_sentence_alone_equals_itself_in_a_padded_batch() {
    let model = load_bundled();
    let (_, ids, _) = golden_batch();
    let batched = model.hidden_states_blocking(ids.clone()).unwrap();
    for (s, sentence) in ids.iter().enumerate() {
        let alone = model.hidden_states_blocking(vec![sentence.clone()]).unwrap().remove(0);
        let diff = max_diff(&alone, &batched[s]);
        assert!(diff <= 1e-5, "sentence {s}: alone vs batched differ by {diff:e}");
    }
}

#[test]
fn bad_batches_are_refused_with_the_sentence_index() {
    let model = load_bundled();
    let too_long = vec![1u32; model.info.max_positions + 1];
    let cases = [
        (vec![vec![1, 2], vec![]], 1, "no tokens"),
        (vec![vec![1], too_long], 1, "positions"),
        (vec![vec![60000]], 0, "vocabulary"),
    ];
    for (batch, index, words) in cases {
        match model.hidden_states_blocking(batch) {
            Err(ModelError::BadInput { sentence, reason, .. }) => {
                assert_eq!(sentence, index);
                assert!(reason.contains(words), "{reason}");
            }
            other => panic!("expected BadInput, got {other:?}"),
        }
    }
}

fn copy_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.onnx", "model.json", "tokenizer.json"] {
        std::fs::copy(bundled_model_dir().join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn edit_manifest(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("model.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
}

fn load_err(dir: &std::path::Path) -> ModelError {
    match Model::load(dir, &runtime_options()) {
        Ok(_) => panic!("{} should not load", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn a_broken_model_directory_gives_the_intended_errors() {
    // Missing file.
    let dir = copy_model();
    std::fs::remove_file(dir.path().join("model.onnx")).unwrap();
    assert!(matches!(load_err(dir.path()), ModelError::MissingFile { file: "model.onnx", .. }));

    // model.json promises fewer hidden states than the graph returns.
    let dir = copy_model();
    edit_manifest(dir.path(), |m| {
        let n = m["num_layers"].as_u64().unwrap() - 1;
        m["num_layers"] = n.into();
        m["outputs"] = (0..=n).map(|k| format!("hidden_state_{k}")).collect::<Vec<_>>().into();
    });
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::GraphMismatch(_)), "{e}");

    // Outputs named inconsistently with num_layers.
    let dir = copy_model();
    edit_manifest(dir.path(), |m| m["outputs"] = vec!["logits"].into());
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::Manifest { .. }), "{e}");

    // A tokenizer that does not match the vocabulary.
    let dir = copy_model();
    edit_manifest(dir.path(), |m| m["vocab_size"] = 50300.into());
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::TokenizerMismatch { tokenizer: 50257, model: 50300 }), "{e}");

    // Not JSON.
    let dir = copy_model();
    std::fs::write(dir.path().join("model.json"), "{").unwrap();
    assert!(matches!(load_err(dir.path()), ModelError::Manifest { .. }));

    // A graph that is not ONNX.
    let dir = copy_model();
    std::fs::write(dir.path().join("model.onnx"), b"not a model").unwrap();
    assert!(matches!(load_err(dir.path()), ModelError::Runtime(_)));
}

#[test]
fn the_precision_model_json_records_is_what_the_service_reports() {
    let bundled = load_bundled();
    assert_eq!(bundled.info.precision, "float32");
    let reply = rotations::service::convert::model_info(&bundled.info);
    assert_eq!((reply.precision.as_str(), reply.precision_check.as_str()), ("float32", ""));
    // An int8 export's model.json (tools/export_model.py --precision int8) is reported, never hidden.
    let dir = copy_model();
    let check = serde_json::json!({"angle_error_mean_deg": 0.03, "angle_error_max_deg": 0.2});
    edit_manifest(dir.path(), |m| {
        m["precision"] = "int8".into();
        m["precision_check"] = check.clone();
    });
    let model = Model::load(dir.path(), &runtime_options()).unwrap();
    let reply = rotations::service::convert::model_info(&model.info);
    assert_eq!(reply.precision, "int8");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&reply.precision_check).unwrap(), check);
}

#[test]
fn a_missing_runtime_library_is_an_error_not_a_panic() {
    let opts = RuntimeOptions { library: "/nonexistent/libonnxruntime.so".into(), ..runtime_options() };
    let e = Model::load(&bundled_model_dir(), &opts).err().expect("must fail");
    assert!(matches!(e, ModelError::RuntimeLibrary { .. }), "{e}");
    assert!(e.to_string().contains("scripts/fetch-ort"), "{e}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_is_a_clear_error() {
    let opts = RuntimeOptions { provider: ExecutionProvider::Cuda, ..runtime_options() };
    let e = Model::load(&bundled_model_dir(), &opts).err().expect("must fail");
    assert!(e.to_string().contains("cuda"), "{e}");
}

#[test]
fn auto_falls_back_to_cpu_here() {
    let opts = RuntimeOptions { provider: ExecutionProvider::Auto, ..runtime_options() };
    let model = Model::load(&bundled_model_dir(), &opts).unwrap();
    assert_eq!(model.info.execution_provider, "cpu");
}
