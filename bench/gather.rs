//! The reduced-output graph against every hidden state, same model and requests: wall time of the
//! engine's whole path (batcher, forward passes, copy, angles) with `--gather-outputs on` and `off`,
//! alternated, and the hidden-state bytes each way copies out of ONNX Runtime.
//!
//!     make bench-gather                                      # tiny + GPT-2 shape (exports it once)
//!     BENCH_MODEL_DIR=bench/cache/gpt2-gather cargo bench --bench gather
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rotations::analysis::{self, AngleUnit};
use rotations::engine::{BatchLimits, Engine, RotationJob, Target};
use rotations::model::{ExecutionProvider, GatherOutputs, Model, OrtTuning, RuntimeOptions};

const SENTENCES: usize = 64;

/// (median, fastest): on a shared machine the fastest run is the least disturbed one.
fn median_and_min(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[0])
}

fn load(dir: &std::path::Path, library: &std::path::Path, gather_outputs: GatherOutputs) -> Model {
    let tuning = OrtTuning { gather_outputs, ..Default::default() };
    let opts = RuntimeOptions { library: library.into(), provider: ExecutionProvider::Cpu, intra_threads: 0, tuning };
    Model::load(dir, &opts).expect("model loads (exported with --gather-outputs?)")
}

/// Hidden-state bytes leaving the runtime per job: every state of every real token, or the vectors read.
fn bytes_copied(model: &Model, job: &RotationJob) -> (usize, usize) {
    let info = &model.info;
    let opts = analysis::RotationOptions { seed: job.seed, ..analysis::RotationOptions::new(607) };
    let (mut all, mut read) = (0, 0);
    for (i, s) in job.sentences.iter().enumerate() {
        let ids = model.tokenizer.encode(s).unwrap().ids;
        all += info.num_hidden_states() * ids.len() * info.hidden_size * 4;
        read += analysis::vectors_read(i, &ids, info.num_layers, &opts).unwrap().len() * info.hidden_size * 4;
    }
    (all, read)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir =
        std::env::var_os("BENCH_MODEL_DIR").map_or_else(|| repo.join("models/gpt2-tiny-random-gather"), PathBuf::from);
    let library =
        std::env::var_os("ORT_DYLIB_PATH").map_or_else(|| repo.join(".ort/lib/libonnxruntime.so"), PathBuf::from);
    let rounds: usize = std::env::var("BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(7);
    let text = std::fs::read_to_string(repo.join("examples/her_sentences.txt")).unwrap();
    let lines: Vec<String> = text.lines().map(String::from).collect();
    let job = RotationJob {
        sentences: (0..SENTENCES).map(|i| lines[i % lines.len()].clone()).collect(),
        target: Target::Text(" her".into()),
        unit: AngleUnit::Degrees,
        non_target_offset: -1,
        seed: 1,
        first_index: 0,
        selection: Default::default(),
        allow_bos_non_target: false,
        steps: false,
        norms: false,
        skip_invalid: false,
        vectors: None,
        validate_only: false,
    };
    let gathered = Engine::new(load(&dir, &library, GatherOutputs::On), BatchLimits::default());
    let full = Engine::new(load(&dir, &library, GatherOutputs::Off), BatchLimits::default());
    // Warm-up, and the two ways must agree before their times mean anything.
    let (a, b) = (analyse(&gathered, &job).await, analyse(&full, &job).await);
    assert_eq!(a, b, "gathered and full analyses differ");

    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (engine, times) in [(&gathered, &mut on), (&full, &mut off)] {
            let started = Instant::now();
            analyse(engine, &job).await;
            times.push(started.elapsed());
        }
    }
    let (all, read) = bytes_copied(&full.model, &job);
    let info = &full.model.info;
    println!(
        "model {} ({} layers, hidden {}), CPU provider — {SENTENCES} sentences per job, {rounds} alternated rounds",
        dir.display(),
        info.num_layers,
        info.hidden_size
    );
    println!("{:<28} {:>10} {:>8} {:>14} {:>16}", "outputs", "median ms", "min ms", "sentences/s", "state bytes/job");
    for (name, times, bytes) in [("every hidden state", off, all), ("gathered (--gather-outputs)", on, read)] {
        let (median, fastest) = median_and_min(times);
        let rate = SENTENCES as f64 / median.as_secs_f64();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!("{name:<28} {:>10.1} {:>8.1} {rate:>14.1} {bytes:>16}", ms(median), ms(fastest));
    }
}

/// One job through the engine: tokenized and checked, then computed.
async fn analyse(engine: &Engine, job: &RotationJob) -> rotations::analysis::Rotations {
    let prepared = engine.prepare(job).unwrap();
    engine.rotations(&prepared, job.unit, &mut Default::default()).await.unwrap()
}
