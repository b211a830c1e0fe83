//! ONNX Runtime implementation of [`Backend`], loaded dynamically from libonnxruntime.so.
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use ndarray::{s, Array2, Array3};
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{OutputSelector, RunOptions, Session, SessionOutputs};
use ort::value::Tensor;

use super::manifest::{GATHER_INPUT, GATHER_OUTPUT, POSITION_IDS_INPUT};
use super::{
    Backend, GatheredVectors, Hidden, Manifest, ModelError, ModelFiles, RuntimeOptions, SentenceHidden, VectorIndex,
};

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
        // No usage telemetry leaves a researcher's machine.
        .with_telemetry(false)
        .build()
        .map_err(|e| lib_err(e.to_string()))?;
    Ok(ENVIRONMENT.get_or_init(|| env))
}

/// The execution providers this binary was built with (`--features cuda` adds CUDA).
pub const COMPILED_PROVIDERS: &[&str] = if cfg!(feature = "cuda") { &["cpu", "cuda"] } else { &["cpu"] };

/// The version of the ONNX Runtime library at `library`, loading it (for `rotations --version`). ort
/// reads it from the library (`OrtGetApiBase()->GetVersionString()`) and says it only in its load
/// message, so that message is listened for while the library loads.
pub fn runtime_version(library: &Path) -> Result<String, ModelError> {
    use tracing_subscriber::layer::SubscriberExt;
    let heard = std::sync::Arc::new(Mutex::new(Vec::new()));
    let listener = tracing_subscriber::registry().with(Messages(heard.clone()));
    tracing::subscriber::with_default(listener, || environment(library))?;
    let heard = heard.lock().unwrap_or_else(|p| p.into_inner());
    // "Loaded ONNX Runtime dylib from "…"; version '1.32.0'"
    let version = heard.iter().find_map(|m| m.split("; version '").nth(1)?.split('\'').next().map(str::to_string));
    Ok(version.unwrap_or_else(|| "(loaded; version not reported)".into()))
}

/// A tracing layer that keeps the message of every event.
struct Messages(std::sync::Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Messages {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(message.0);
    }
}

/// One ONNX Runtime session over a model directory's graph.
pub struct OnnxBackend {
    session: Session,
    /// The hidden-state outputs, in order.
    outputs: Vec<String>,
    /// The graph takes [`GATHER_INPUT`] (exported with `--gather-outputs`).
    gather_graph: bool,
    /// Return only the wanted vectors ([`GatherOutputs`]).
    gather: bool,
    pad_token_id: i64,
    /// The graph takes [`POSITION_IDS_INPUT`] (rotary models).
    position_ids: bool,
    provider: &'static str,
    /// See [`OrtTuning::pass_cost_tokens`]; `None`: one pass per batch.
    pass_cost_tokens: Option<usize>,
}

impl OnnxBackend {
    /// Creates the session and checks the graph's declared inputs and outputs against model.json.
    pub fn load(files: &ModelFiles, manifest: &Manifest, opts: &RuntimeOptions) -> Result<Self, ModelError> {
        let env = environment(&opts.library)?;
        let threads = match opts.intra_threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        };
        let tuning = &opts.tuning;
        let builder = Session::builder(env)?
            .with_optimization_level(tuning.graph_optimization.into())?
            .with_prepacking(tuning.prepack_weights)?
            .with_intra_threads(threads)?;
        let builder = match &tuning.save_optimized {
            // Weights go to a file beside the graph: GPT-2 XL's exceed protobuf's 2 GB limit.
            Some(path) => {
                let data = path.file_name().map(|n| format!("{}.data", n.to_string_lossy())).unwrap_or_default();
                builder
                    .with_optimized_model_path(path)?
                    .with_config_entry("session.optimized_model_external_initializers_file_name", data)?
                    .with_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")?
            }
            None => builder,
        };
        if tuning.prefetch {
            prefetch(&files.onnx.with_extension("onnx.data"));
        }
        let (session, provider) = super::provider::open_session(builder, &files.onnx, opts.provider)?;
        check_graph(&session, manifest)?;
        let gather_graph = session.inputs().iter().any(|i| i.name() == GATHER_INPUT);
        let gather = tuning.gather_outputs.enabled(provider, gather_graph)?;
        tracing::info!(
            model = %manifest.name,
            provider,
            gather_outputs = gather,
            threads,
            ?tuning,
            layers = manifest.num_layers,
            hidden = manifest.hidden_size,
            "model loaded"
        );
        Ok(Self {
            session,
            outputs: manifest.hidden_state_outputs().to_vec(),
            gather_graph,
            gather,
            pad_token_id: i64::from(manifest.pad_token_id),
            position_ids: manifest.feeds_position_ids(),
            provider,
            pass_cost_tokens: tuning.pass_cost_tokens.0,
        })
    }
}

/// Reads the external weights file once, start to end, on a background thread while ONNX Runtime
/// builds the session. From a cold page cache ONNX Runtime's memory-mapped reads fault the file in
/// small scattered pieces; a sequential read pulls it in at the disk's full speed ahead of them
/// (BENCHMARKS.md: start of GPT-2 XL from a cold cache). Reading through the page cache adds
/// nothing to the process's resident memory; a missing file (models under 2 GB) is skipped.
fn prefetch(path: &Path) {
    let Ok(mut file) = std::fs::File::open(path) else { return };
    let spawned = std::thread::Builder::new().name("prefetch-weights".into()).spawn(move || {
        let mut buf = vec![0u8; 8 << 20];
        while matches!(std::io::Read::read(&mut file, &mut buf), Ok(n) if n > 0) {}
    });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "no prefetch thread");
    }
}

/// ONNX Runtime settings that BENCHMARKS.md measured; the defaults are the measured best, the other
/// values are kept so the measurement can be repeated. Set from the command line (`ServeConfig`).
#[derive(Clone, Debug)]
pub struct OrtTuning {
    pub graph_optimization: GraphOptimization,
    /// MLAS packs the weight matrices once at load. Off: the weights stay memory-mapped from
    /// model.onnx.data (near-instant start) but every product re-packs its weights, measured slower.
    pub prepack_weights: bool,
    /// Also write ONNX Runtime's optimized graph here.
    pub save_optimized: Option<std::path::PathBuf>,
    /// Read model.onnx.data ahead of ONNX Runtime ([`prefetch`]).
    pub prefetch: bool,
    /// A batch runs as passes of similar length where the padding saved outweighs this many tokens
    /// per extra pass ([`plan_passes`]); off = one pass per batch.
    pub pass_cost_tokens: PassCost,
    /// Whether a graph exported with `--gather-outputs` returns only the vectors the analysis reads.
    pub gather_outputs: GatherOutputs,
}

impl OrtTuning {
    /// The measured best (BENCHMARKS.md); also the command line's defaults.
    pub const DEFAULT: Self = Self {
        graph_optimization: GraphOptimization::All,
        prepack_weights: true,
        save_optimized: None,
        prefetch: true,
        pass_cost_tokens: PassCost(Some(16)),
        gather_outputs: GatherOutputs::Auto,
    };
}

impl Default for OrtTuning {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// ONNX Runtime's graph optimization level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphOptimization {
    Disable,
    Basic,
    Extended,
    All,
}

impl From<GraphOptimization> for GraphOptimizationLevel {
    fn from(level: GraphOptimization) -> Self {
        match level {
            GraphOptimization::Disable => Self::Disable,
            GraphOptimization::Basic => Self::Level1,
            GraphOptimization::Extended => Self::Level2,
            GraphOptimization::All => Self::All,
        }
    }
}

/// Whether the runtime asks a gathering graph (`--gather-outputs` export) for only the vectors the
/// analysis reads (at most 4 per layer and sentence) instead of every hidden state of every token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GatherOutputs {
    /// On the CUDA provider, where copying every state to the host dominates a pass; off on CPU,
    /// where the states are in host memory already (BENCHMARKS.md measures both ways).
    Auto,
    /// Whenever the graph can (an error if it cannot).
    On,
    /// Always every hidden state.
    Off,
}

impl GatherOutputs {
    /// Whether to gather on `provider` with a graph that can (`graph_gathers`) or cannot.
    fn enabled(self, provider: &str, graph_gathers: bool) -> Result<bool, ModelError> {
        match self {
            GatherOutputs::Auto => Ok(graph_gathers && provider == "cuda"),
            GatherOutputs::On if graph_gathers => Ok(true),
            GatherOutputs::On => Err(ModelError::GraphMismatch(format!(
                "gather outputs `on` needs a graph with the {GATHER_INPUT} input: export it with \
                 tools/export_model.py --gather-outputs"
            ))),
            GatherOutputs::Off => Ok(false),
        }
    }
}

/// The cost of one more forward pass, in tokens, for [`plan_passes`]; `off` runs a batch in one pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassCost(pub Option<usize>);

impl std::str::FromStr for PassCost {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self(None)),
            n => n.parse().map(|n| Self(Some(n))).map_err(|_| format!("{s:?} is neither a token count nor `off`")),
        }
    }
}

impl std::fmt::Display for PassCost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("off"),
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

impl OnnxBackend {
    /// One forward pass over `batch` (right-padded to its longest sentence). With `wanted` (and a
    /// gathering graph) only those vectors of each sentence, else every hidden state.
    fn run_padded(&mut self, batch: &[&[u32]], wanted: Option<&[&[VectorIndex]]>) -> Result<Vec<Hidden>, ModelError> {
        let rows = batch.len();
        let width = batch.iter().map(|s| s.len()).max().unwrap_or(0);
        // Inside the batcher's `forward_pass` span: how the pass was split, and each part's padding.
        let _span = tracing::info_span!(
            "onnx_run",
            rows = rows as i64,
            width = width as i64,
            padded_tokens = (rows * width) as i64
        )
        .entered();
        // Right padding: real tokens keep positions 0..len, as learned and rotary positions expect.
        let mut ids = Array2::<i64>::from_elem((rows, width), self.pad_token_id);
        let mut mask = Array2::<i64>::zeros((rows, width));
        for (r, sentence) in batch.iter().enumerate() {
            for (c, &id) in sentence.iter().enumerate() {
                ids[[r, c]] = i64::from(id);
                mask[[r, c]] = 1;
            }
        }
        let mut inputs = ort::inputs![
            "input_ids" => Tensor::from_array(ids)?,
            "attention_mask" => Tensor::from_array(mask)?,
        ];
        if self.position_ids {
            // Right padding: each row's real tokens at 0..len, as the unpadded sentence; padding after.
            let positions = Array2::<i64>::from_shape_fn((rows, width), |(_, c)| c as i64);
            inputs.push((POSITION_IDS_INPUT.into(), Tensor::from_array(positions)?.into()));
        }
        let wanted = wanted.filter(|_| self.gather);
        let selected = if self.gather_graph {
            // A gathering graph needs its index even when every state is asked for (then empty).
            inputs.push((GATHER_INPUT.into(), Tensor::from_array(gather_index(wanted.unwrap_or(&[])))?.into()));
            match wanted {
                Some(_) => OutputSelector::no_default().with(GATHER_OUTPUT),
                None => self.outputs.iter().fold(OutputSelector::no_default(), |o, name| o.with(name.as_str())),
            }
        } else {
            OutputSelector::default()
        };
        let started = std::time::Instant::now();
        let options = RunOptions::new()?.with_outputs(selected);
        let outputs = self.session.run_with_options(inputs, &options)?;
        let ran = started.elapsed();
        let hidden = match wanted {
            Some(wanted) => split_gathered(&outputs, batch, wanted, self.outputs.len())?,
            None => split_states(&outputs, &self.outputs, batch, width)?,
        };
        // How much of a pass is the runtime and how much our copy of the states
        // (BENCHMARKS.md: the copy bounds what skipping unread hidden states could save).
        tracing::debug!(
            rows,
            width,
            gathered = wanted.is_some(),
            run_ms = ran.as_secs_f64() * 1e3,
            copy_ms = (started.elapsed() - ran).as_secs_f64() * 1e3,
            "forward pass"
        );
        Ok(hidden)
    }
}

/// Every hidden state (outputs `names`) of each sentence's real tokens, out of the padded batch outputs.
fn split_states(
    outputs: &SessionOutputs<'_>,
    names: &[String],
    batch: &[&[u32]],
    width: usize,
) -> Result<Vec<Hidden>, ModelError> {
    let rows = batch.len();
    let mut per_sentence: Vec<Option<Array3<f32>>> = vec![None; rows];
    let num_states = names.len();
    for (k, name) in names.iter().enumerate() {
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
    Ok(per_sentence.into_iter().map(|h| Hidden::All(h.expect("every row filled"))).collect())
}

/// [`GATHER_INPUT`] for the wanted vectors of each batch row: `[n, 3]` (row, hidden state, position).
fn gather_index(wanted: &[&[VectorIndex]]) -> Array2<i64> {
    let triples: Vec<i64> = wanted
        .iter()
        .enumerate()
        .flat_map(|(row, vectors)| vectors.iter().flat_map(move |&(s, p)| [row as i64, i64::from(s), i64::from(p)]))
        .collect();
    Array2::from_shape_vec((triples.len() / 3, 3), triples).expect("three values per vector")
}

/// Splits [`GATHER_OUTPUT`] into each sentence's vectors, in the order [`gather_index`] listed them.
fn split_gathered(
    outputs: &SessionOutputs<'_>,
    batch: &[&[u32]],
    wanted: &[&[VectorIndex]],
    num_states: usize,
) -> Result<Vec<Hidden>, ModelError> {
    let gathered = outputs[GATHER_OUTPUT].try_extract_array::<f32>()?;
    let total: usize = wanted.iter().map(|w| w.len()).sum();
    let shape = gathered.shape();
    if shape.len() != 2 || shape[0] != total {
        return Err(ModelError::GraphMismatch(format!(
            "{GATHER_OUTPUT} has shape {shape:?}, expected [{total}, hidden]"
        )));
    }
    let mut start = 0;
    let mut out = Vec::with_capacity(batch.len());
    for (sentence, vectors) in batch.iter().zip(wanted) {
        let end = start + vectors.len();
        out.push(Hidden::Gathered(GatheredVectors {
            num_states,
            num_tokens: sentence.len(),
            index: vectors.to_vec(),
            vectors: gathered
                .slice(s![start..end, ..])
                .to_owned()
                .into_dimensionality()
                .map_err(|e| ModelError::GraphMismatch(format!("{GATHER_OUTPUT}: {e}")))?,
        }));
        start = end;
    }
    Ok(out)
}

/// Splits a batch into passes of similar length: `lengths` sorted ascending; returns the end
/// (exclusive) of each group. A group costs rows × its longest row, plus `pass_cost` for the pass
/// itself (streaming every weight once: GPT-2 XL's 6 GB make that worth about a dozen tokens on
/// this kind of machine). Exact over contiguous groups of the sorted lengths (dynamic programming
/// over the distinct lengths); equal lengths never need to be split.
pub fn plan_passes(lengths: &[usize], pass_cost: usize) -> Vec<usize> {
    debug_assert!(lengths.windows(2).all(|w| w[0] <= w[1]));
    // Ends of runs of equal length: the only places a cut can help.
    let ends: Vec<usize> =
        (1..=lengths.len()).filter(|&i| i == lengths.len() || lengths[i] != lengths[i - 1]).collect();
    // best[j]: cheapest cost of the first ends[j - 1] sentences; from[j]: where its last group starts.
    let mut best = vec![0usize; ends.len() + 1];
    let mut from = vec![0usize; ends.len() + 1];
    for j in 1..=ends.len() {
        let (end, width) = (ends[j - 1], lengths[ends[j - 1] - 1]);
        (best[j], from[j]) = (0..j)
            .map(|i| {
                let start = if i == 0 { 0 } else { ends[i - 1] };
                (best[i] + (end - start) * width + pass_cost, i)
            })
            .min()
            .expect("j >= 1");
    }
    let mut cuts = Vec::new();
    let mut j = ends.len();
    while j > 0 {
        cuts.push(ends[j - 1]);
        j = from[j];
    }
    cuts.reverse();
    cuts
}

impl OnnxBackend {
    /// Runs `batch` in passes of similar length ([`plan_passes`]); results in input order.
    fn forward_planned(
        &mut self,
        batch: &[Vec<u32>],
        wanted: Option<&[Vec<VectorIndex>]>,
    ) -> Result<Vec<Hidden>, ModelError> {
        if batch.is_empty() || batch.iter().all(Vec::is_empty) {
            return Ok(Vec::new());
        }
        let pick = |order: &[usize]| -> (Vec<&[u32]>, Option<Vec<&[VectorIndex]>>) {
            let rows = order.iter().map(|&i| batch[i].as_slice()).collect();
            (rows, wanted.map(|w| order.iter().map(|&i| w[i].as_slice()).collect()))
        };
        let Some(pass_cost) = self.pass_cost_tokens else {
            let (rows, wanted) = pick(&(0..batch.len()).collect::<Vec<_>>());
            return self.run_padded(&rows, wanted.as_deref());
        };
        // Passes of similar length, to spend less on padding (BENCHMARKS.md measures the split).
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&i| batch[i].len());
        let lengths: Vec<usize> = order.iter().map(|&i| batch[i].len()).collect();
        let mut out: Vec<Option<Hidden>> = vec![None; batch.len()];
        let mut start = 0;
        for end in plan_passes(&lengths, pass_cost) {
            let (rows, wanted) = pick(&order[start..end]);
            for (&i, hidden) in order[start..end].iter().zip(self.run_padded(&rows, wanted.as_deref())?) {
                out[i] = Some(hidden);
            }
            start = end;
        }
        Ok(out.into_iter().map(|h| h.expect("every sentence planned")).collect())
    }
}

impl Backend for OnnxBackend {
    fn forward(&mut self, batch: &[Vec<u32>]) -> Result<Vec<SentenceHidden>, ModelError> {
        self.forward_planned(batch, None)?.into_iter().map(Hidden::into_all).collect()
    }

    fn forward_wanted(&mut self, batch: &[Vec<u32>], wanted: &[Vec<VectorIndex>]) -> Result<Vec<Hidden>, ModelError> {
        if wanted.len() != batch.len() {
            return Err(ModelError::Runtime(format!("{} wanted lists for {} sentences", wanted.len(), batch.len())));
        }
        self.forward_planned(batch, Some(wanted))
    }

    fn gathers(&self) -> bool {
        self.gather
    }

    fn provider(&self) -> &'static str {
        self.provider
    }
}

#[cfg(test)]
mod tests {
    use super::plan_passes;

    #[test]
    fn a_free_pass_gives_one_pass_per_length_and_a_costly_one_a_single_pass() {
        let lengths = [5, 5, 5, 6, 6, 7, 7, 7, 7, 8];
        assert_eq!(plan_passes(&lengths, 0), vec![3, 5, 9, 10]);
        assert_eq!(plan_passes(&lengths, 1000), vec![10]);
    }

    #[test]
    fn groups_merge_where_the_padding_costs_less_than_a_pass() {
        // 3 × 5 tokens padded to 6 costs 3 tokens of padding, less than a pass of 10.
        let lengths = [5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 20];
        assert_eq!(plan_passes(&lengths, 10), vec![15, 16]);
        assert_eq!(plan_passes(&[], 10), Vec::<usize>::new());
        assert_eq!(plan_passes(&[4], 10), vec![1]);
    }

    /// Rows × longest row per pass, plus the pass cost.
    fn cost(groups: &[Vec<usize>], pass_cost: usize) -> usize {
        groups.iter().map(|g| g.len() * g.iter().max().unwrap() + pass_cost).sum()
    }

    /// The cheapest split over every partition of the sentences into passes (not only contiguous
    /// groups of the sorted lengths): exhaustive, for small batches.
    fn brute_force(lengths: &[usize], pass_cost: usize) -> usize {
        fn go(rest: &[usize], groups: &mut Vec<Vec<usize>>, pass_cost: usize, best: &mut usize) {
            let Some((&first, rest)) = rest.split_first() else {
                *best = (*best).min(cost(groups, pass_cost));
                return;
            };
            for g in 0..groups.len() {
                groups[g].push(first);
                go(rest, groups, pass_cost, best);
                groups[g].pop();
            }
            groups.push(vec![first]);
            go(rest, groups, pass_cost, best);
            groups.pop();
        }
        let mut best = usize::MAX;
        go(lengths, &mut Vec::new(), pass_cost, &mut best);
        best
    }

    #[test]
    fn plan_passes_is_optimal_against_brute_force() {
        // Deterministic pseudo-random small batches (an LCG), lengths 1..=40, pass costs 0..=60.
        let mut state = 12345u64;
        let mut next = |n: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        for _ in 0..300 {
            let n = 1 + next(7) as usize;
            let mut lengths: Vec<usize> = (0..n).map(|_| 1 + next(40) as usize).collect();
            lengths.sort_unstable();
            let pass_cost = next(61) as usize;
            let cuts = plan_passes(&lengths, pass_cost);
            assert_eq!(cuts.last(), Some(&n), "{lengths:?}: the plan covers every sentence");
            let mut start = 0;
            let groups: Vec<Vec<usize>> = cuts
                .iter()
                .map(|&end| {
                    let g = lengths[start..end].to_vec();
                    start = end;
                    g
                })
                .collect();
            assert_eq!(cost(&groups, pass_cost), brute_force(&lengths, pass_cost), "{lengths:?} cost {pass_cost}");
        }
    }
}
