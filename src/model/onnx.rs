//! ONNX Runtime implementation of [`Backend`], loaded dynamically from libonnxruntime.so.
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use ndarray::{s, Array2, Array3};
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;

use super::{Backend, ExecutionProvider, Manifest, ModelError, ModelFiles, RuntimeOptions, SentenceHidden};

/// ONNX Runtime allows one library and one environment per process; every model shares them.
static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
static ENVIRONMENT_INIT: Mutex<()> = Mutex::new(());

/// Loads libonnxruntime (once per process) and returns the shared environment. A missing or
/// unloadable library is an error here, never a panic at first use.
pub fn environment(library: &Path) -> Result<&'static Environment, ModelError> {
    let lib_err = |reason: String| ModelError::RuntimeLibrary { path: library.to_path_buf(), reason };
    // Checked every time, so a wrong path is reported even when another model already loaded the runtime.
    if !library.is_file() {
        return Err(lib_err("no such file".into()));
    }
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let _guard = ENVIRONMENT_INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let env = ort::init_from(library)
        .map_err(|e| lib_err(e.to_string()))?
        .with_name("rotations")
        .build()
        .map_err(|e| lib_err(e.to_string()))?;
    Ok(ENVIRONMENT.get_or_init(|| env))
}

/// One ONNX Runtime session over a model directory's graph.
pub struct OnnxBackend {
    session: Session,
    outputs: Vec<String>,
    pad_token_id: i64,
    provider: &'static str,
}

impl OnnxBackend {
    /// Creates the session and checks the graph's declared inputs and outputs against model.json.
    pub fn load(files: &ModelFiles, manifest: &Manifest, opts: &RuntimeOptions) -> Result<Self, ModelError> {
        let env = environment(&opts.library)?;
        let threads = match opts.intra_threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        };
        let builder =
            Session::builder(env)?.with_optimization_level(GraphOptimizationLevel::All)?.with_intra_threads(threads)?;
        let (mut builder, provider) = register_provider(builder, opts.provider)?;
        let session = builder.commit_from_file(&files.onnx)?;
        check_graph(&session, manifest)?;
        tracing::info!(
            model = %manifest.name,
            provider,
            threads,
            layers = manifest.num_layers,
            hidden = manifest.hidden_size,
            "model loaded"
        );
        Ok(Self {
            session,
            outputs: manifest.outputs.clone(),
            pad_token_id: i64::from(manifest.pad_token_id),
            provider,
        })
    }
}

type Builder = ort::session::builder::SessionBuilder;

#[cfg(feature = "cuda")]
fn register_provider(builder: Builder, provider: ExecutionProvider) -> Result<(Builder, &'static str), ModelError> {
    use ort::ep::ExecutionProvider as _;
    match provider {
        ExecutionProvider::Cpu => Ok((builder, "cpu")),
        ExecutionProvider::Cuda => {
            let mut builder = builder;
            ort::ep::CUDA::default()
                .register(&mut builder)
                .map_err(|e| ModelError::ProviderUnavailable { provider: "cuda", reason: e.to_string() })?;
            Ok((builder, "cuda"))
        }
        ExecutionProvider::Auto => {
            let mut builder = builder;
            match ort::ep::CUDA::default().register(&mut builder) {
                Ok(()) => {
                    tracing::info!("execution provider: cuda");
                    Ok((builder, "cuda"))
                }
                Err(e) => {
                    tracing::warn!(reason = %e, "CUDA did not register; execution provider: cpu");
                    Ok((builder, "cpu"))
                }
            }
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn register_provider(builder: Builder, provider: ExecutionProvider) -> Result<(Builder, &'static str), ModelError> {
    match provider {
        ExecutionProvider::Cpu => Ok((builder, "cpu")),
        ExecutionProvider::Cuda => Err(ModelError::ProviderUnavailable {
            provider: "cuda",
            reason: "this binary was built without the `cuda` cargo feature".into(),
        }),
        ExecutionProvider::Auto => {
            tracing::info!("execution provider: cpu (built without the `cuda` feature)");
            Ok((builder, "cpu"))
        }
    }
}

/// The graph must take exactly what we feed and return the hidden states model.json names, in order.
fn check_graph(session: &Session, manifest: &Manifest) -> Result<(), ModelError> {
    let inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
    let mut want_inputs: Vec<&str> = manifest.inputs.iter().map(String::as_str).collect();
    let mut have_inputs = inputs.clone();
    want_inputs.sort_unstable();
    have_inputs.sort_unstable();
    if have_inputs != want_inputs {
        return Err(ModelError::GraphMismatch(format!(
            "graph inputs are {inputs:?}, model.json says {:?}",
            manifest.inputs
        )));
    }
    let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    if outputs != manifest.outputs {
        return Err(ModelError::GraphMismatch(format!(
            "graph has {} outputs ({}…), model.json names {} hidden states",
            outputs.len(),
            outputs.iter().take(3).copied().collect::<Vec<_>>().join(", "),
            manifest.outputs.len()
        )));
    }
    Ok(())
}

impl Backend for OnnxBackend {
    fn forward(&mut self, batch: &[Vec<u32>]) -> Result<Vec<SentenceHidden>, ModelError> {
        let rows = batch.len();
        let width = batch.iter().map(Vec::len).max().unwrap_or(0);
        if rows == 0 || width == 0 {
            return Ok(Vec::new());
        }
        // Right padding: real tokens keep positions 0..len, as GPT-2's learned positions expect.
        let mut ids = Array2::<i64>::from_elem((rows, width), self.pad_token_id);
        let mut mask = Array2::<i64>::zeros((rows, width));
        for (r, sentence) in batch.iter().enumerate() {
            for (c, &id) in sentence.iter().enumerate() {
                ids[[r, c]] = i64::from(id);
                mask[[r, c]] = 1;
            }
        }
        let outputs = self.session.run(ort::inputs![
            "input_ids" => Tensor::from_array(ids)?,
            "attention_mask" => Tensor::from_array(mask)?,
        ])?;

        let mut per_sentence: Vec<Option<Array3<f32>>> = vec![None; rows];
        let num_states = self.outputs.len();
        for (k, name) in self.outputs.iter().enumerate() {
            let state = outputs[name.as_str()].try_extract_array::<f32>()?;
            let shape = state.shape();
            if shape.len() != 3 || shape[0] != rows || shape[1] != width {
                return Err(ModelError::GraphMismatch(format!(
                    "{name} has shape {shape:?}, expected [{rows}, {width}, hidden]"
                )));
            }
            let hidden = shape[2];
            for (r, sentence) in batch.iter().enumerate() {
                let out = per_sentence[r].get_or_insert_with(|| Array3::zeros((num_states, sentence.len(), hidden)));
                out.slice_mut(s![k, .., ..]).assign(&state.slice(s![r, ..sentence.len(), ..]));
            }
        }
        Ok(per_sentence.into_iter().map(|h| h.expect("every row filled")).collect())
    }

    fn provider(&self) -> &'static str {
        self.provider
    }
}
