//! Throughput of 32 clients sending 1–3 sentences each: one request at a time, concurrent without
//! cross-request batching (batch of 1), and concurrent with dynamic batching.
//!
//!     make bench-batching            # bundled model
//!     BENCH_MODEL_DIR=bench/cache/gpt2 make bench-batching
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rotations::engine::{BatchLimits, Engine};
use rotations::model::{ExecutionProvider, Model, RuntimeOptions};
use rotations::proto::rotation_request::Target;
use rotations::proto::rotation_service_server::RotationService;
use rotations::proto::RotationRequest;
use rotations::service::convert::RequestLimits;
use rotations::service::RotationServiceImpl;
use tonic::Request;

const CLIENTS: usize = 32;
const ROUNDS: usize = 5;

fn requests(sentences: &[String]) -> Vec<RotationRequest> {
    (0..CLIENTS)
        .map(|c| RotationRequest {
            sentences: (0..1 + c % 3).map(|j| sentences[(c * 3 + j) % sentences.len()].clone()).collect(),
            target: Some(Target::TargetText(" her".into())),
            ..Default::default()
        })
        .collect()
}

async fn sequential(svc: &RotationServiceImpl, reqs: &[RotationRequest]) -> Duration {
    let started = Instant::now();
    for r in reqs {
        svc.compute_rotations(Request::new(r.clone())).await.unwrap();
    }
    started.elapsed()
}

async fn concurrent(svc: &RotationServiceImpl, reqs: &[RotationRequest]) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = reqs
        .iter()
        .cloned()
        .map(|r| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.compute_rotations(Request::new(r)).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // `cargo test --all-targets` (make test) runs this binary too, without --bench: build-check only.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var_os("BENCH_MODEL_DIR").map_or_else(|| repo.join("models/gpt2-tiny-random"), PathBuf::from);
    let library =
        std::env::var_os("ORT_DYLIB_PATH").map_or_else(|| repo.join(".ort/lib/libonnxruntime.so"), PathBuf::from);
    let opts =
        RuntimeOptions { library, provider: ExecutionProvider::Cpu, intra_threads: 0, tuning: Default::default() };
    let model = Model::load(&dir, &opts).expect("model loads");
    let text = std::fs::read_to_string(repo.join("examples/her_sentences.txt")).unwrap();
    let sentences: Vec<String> = text.lines().map(String::from).collect();
    let reqs = requests(&sentences);
    let n: usize = reqs.iter().map(|r| r.sentences.len()).sum();
    let limits = RequestLimits { max_sentences: 4096, max_stream_sentences: 4096 };

    let batched = RotationServiceImpl::ready(Engine::new(model.clone(), BatchLimits::default()), limits, 64);
    let unbatched =
        RotationServiceImpl::ready(Engine::new(model, BatchLimits { max_tokens: 4096, max_sentences: 1 }), limits, 64);
    // Warm-up.
    concurrent(&batched, &reqs).await;

    let (mut seq, mut conc1, mut conc) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        seq.push(sequential(&batched, &reqs).await);
        conc1.push(concurrent(&unbatched, &reqs).await);
        conc.push(concurrent(&batched, &reqs).await);
    }
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!("model {} — {CLIENTS} clients, {n} sentences, median of {ROUNDS} rounds", dir.display());
    println!("{:<44} {:>10} {:>14}", "mode", "wall ms", "sentences/s");
    for (name, d) in [
        ("one request at a time", median(seq)),
        ("concurrent, no cross-request batching", median(conc1)),
        ("concurrent, dynamic batching", median(conc.clone())),
    ] {
        println!("{name:<44} {:>10.1} {:>14.1}", d.as_secs_f64() * 1e3, rate(d));
    }
}
