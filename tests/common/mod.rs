//! Shared by the integration tests: where the runtime library and the bundled model are.
#![allow(dead_code)]
use std::path::PathBuf;

use rotations::model::{ExecutionProvider, Model, RuntimeOptions};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// libonnxruntime.so: ORT_DYLIB_PATH (set by `make test`) or the checkout's .ort/ folder.
pub fn ort_library() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from).unwrap_or_else(|| repo().join(".ort/lib/libonnxruntime.so"))
}

pub fn bundled_model_dir() -> PathBuf {
    repo().join("models/gpt2-tiny-random")
}

pub fn runtime_options() -> RuntimeOptions {
    RuntimeOptions { library: ort_library(), provider: ExecutionProvider::Cpu, intra_threads: 1 }
}

pub fn load_bundled() -> Model {
    Model::load(&bundled_model_dir(), &runtime_options()).expect("bundled model loads")
}

pub fn golden(name: &str) -> serde_json::Value {
    let path = repo().join("tests/golden").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden JSON parses")
}
