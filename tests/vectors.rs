//! The vectors on disk (issue 26 point 4): `analyze --vectors-out` against PyTorch on the bundled
//! models (tests/golden/vectors, tools/make_golden_vectors.py: Hugging Face checkpoints, forward hooks
//! for the sub-layer states); one server, three replicas and one Analyze give the same bytes; float16
//! is the float32 file rounded; chosen states and conditions are slices of the whole; an Analyze too
//! large is refused before any work, a stream's chunks fit the limit; bad options are named.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use ndarray::{s, Array3, Axis};
use ndarray_npy::read_npy;
use rotations::engine::{BatchLimits, Engine};
use rotations::model::{GatherOutputs, Model, OrtTuning, RuntimeOptions};
use rotations::proto::rotation_request::Target;
use rotations::proto::rotation_service_server::RotationService;
use rotations::proto::{self, RotationRequest, VectorDtype, VectorOptions};
use rotations::service::convert::{InputLimits, RequestLimits};
use rotations::service::RotationServiceImpl;
use tokio_stream::StreamExt;
use tonic::{Code, Request};

const LIMITS: RequestLimits = RequestLimits { max_sentences: 4096, max_stream_sentences: 100_000 };

fn golden_sentences() -> Vec<String> {
    let index: serde_json::Value = golden("vectors/vectors.json");
    index["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn golden_npy(name: &str) -> Array3<f32> {
    read_npy(repo().join("tests/golden/vectors").join(name)).unwrap()
}

/// `analyze` of `sentences` with `extra` flags; panics with its output unless it succeeds.
fn analyze_cli(servers: &[&str], sentences: &[String], dir: &Path, extra: &[&str]) -> String {
    let corpus = dir.join("sentences.txt");
    std::fs::write(&corpus, sentences.join("\n") + "\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rotations"));
    cmd.arg("analyze");
    for server in servers {
        cmd.args(["--server", server]);
    }
    let out = cmd
        .args(["--target", " her", "--overwrite", "--sentences"])
        .arg(&corpus)
        .arg("--out")
        .arg(dir.join("out"))
        .args(extra)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "analyze failed: {text}");
    text
}

/// Largest angle (degrees, Kahan's stable form in f64) and relative norm difference between the rows'
/// vectors and the reference's, over every row and state.
fn worst_difference(got: &Array3<f32>, want: &Array3<f32>) -> (f64, f64) {
    assert_eq!(got.shape(), want.shape());
    let (mut angle, mut norm) = (0f64, 0f64);
    for (a, b) in got.lanes(Axis(2)).into_iter().zip(want.lanes(Axis(2))) {
        let (a, b) = (a.mapv(f64::from), b.mapv(f64::from));
        let (na, nb) = (a.dot(&a).sqrt(), b.dot(&b).sqrt());
        let (ua, ub) = (&a / na, &b / nb);
        let (d, s) = (&ua - &ub, &ua + &ub);
        angle = angle.max((2.0 * d.dot(&d).sqrt().atan2(s.dot(&s).sqrt())).to_degrees());
        norm = norm.max((na / nb - 1.0).abs());
    }
    (angle, norm)
}

#[test]
fn the_files_equal_pytorch_on_the_bundled_models_with_and_without_sub_layer_states() {
    let sentences = golden_sentences();
    for (name, dir, states) in
        [("gpt2", bundled_model_dir(), 7), ("llama_sublayers", repo().join("models/llama-tiny-random-sublayers"), 10)]
    {
        let (_server, address) = serve_model(&dir);
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("v.npy");
        let out = analyze_cli(&[&address], &sentences, tmp.path(), &["--vectors-out", file.to_str().unwrap()]);
        assert!(out.contains("v.non_target.npy"), "{out}");
        for condition in ["target", "non_target"] {
            let path = if condition == "target" { file.clone() } else { tmp.path().join("v.non_target.npy") };
            let got: Array3<f32> = read_npy(&path).unwrap();
            assert_eq!(got.shape(), [sentences.len(), states, 32], "{name}: every state the model returns");
            let (angle, norm) = worst_difference(&got, &golden_npy(&format!("{name}.{condition}.npy")));
            eprintln!("{name} {condition}: largest angle {angle:e} degrees, relative norm {norm:e}");
            assert!(angle <= 1e-4 && norm <= 1e-5, "{name} {condition}: {angle:e} degrees, {norm:e} relative");
        }
    }
}

/// Enough sentences for several chunks of every kind (server stream chunks of 2, client chunks of 3).
fn corpus() -> Vec<String> {
    let base = golden_sentences();
    (0..11).map(|i| format!("{} ({i})", base[i % base.len()].trim_end_matches('.'))).collect()
}

fn data_bytes(path: &Path, payload: usize) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    bytes[bytes.len() - payload..].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_three_replicas_and_one_analyze_give_the_same_bytes() {
    let sentences = corpus();
    // Stream chunks of 2 sentences on every server: the files are put together from many messages.
    let servers: Vec<_> = (0..3)
        .map(|_| serve_model_with(&bundled_model_dir(), "127.0.0.1", &["--max-batch-sentences", "2"], &[]))
        .collect();
    let addresses: Vec<&str> = servers.iter().map(|(_, a)| a.as_str()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join("one.npy");
    analyze_cli(&addresses[..1], &sentences, tmp.path(), &["--vectors-out", one.to_str().unwrap()]);
    let three = tmp.path().join("three.npy");
    let sharded = ["--vectors-out", three.to_str().unwrap(), "--chunk-size", "3"];
    let out = analyze_cli(&addresses, &sentences, tmp.path(), &sharded);
    assert!(out.matches("replica 127.0.0.1").count() == 3, "{out}");
    for (a, b) in
        [(one.clone(), three.clone()), (tmp.path().join("one.non_target.npy"), tmp.path().join("three.non_target.npy"))]
    {
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "{} and {}", a.display(), b.display());
    }

    // One Analyze: its wire bytes are the files' data, bit for bit.
    let channel = serving_channel(&format!("http://{}", addresses[0]), String::new).await;
    let mut client = proto::rotation_service_client::RotationServiceClient::new(channel);
    let request = RotationRequest { vectors: Some(VectorOptions::default()), ..request(&sentences) };
    let analysis = client.analyze(request).await.unwrap().into_inner();
    let v = analysis.rotations.unwrap().vectors.unwrap();
    assert_eq!(
        (v.shape.clone(), v.states.clone(), v.conditions.clone()),
        (vec![11, 7, 32], (0..7).collect(), vec![0, 1])
    );
    assert_eq!(v.data[0], data_bytes(&one, v.data[0].len()));
    assert_eq!(v.data[1], data_bytes(&tmp.path().join("one.non_target.npy"), v.data[1].len()));

    // float16: each value of the float32 file rounded to the nearest float16.
    let half = tmp.path().join("half.npy");
    let flags = ["--vectors-out", half.to_str().unwrap(), "--vectors-dtype", "f16", "--vectors-conditions", "target"];
    analyze_cli(&addresses[..1], &sentences, tmp.path(), &flags);
    assert!(!tmp.path().join("half.non_target.npy").exists());
    let full: Array3<f32> = read_npy(&one).unwrap();
    let rounded: Vec<u8> = full.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
    assert_eq!(data_bytes(&half, rounded.len()), rounded);
    assert!(String::from_utf8_lossy(&std::fs::read(&half).unwrap()[..128]).contains("'<f2'"));

    // Chosen states, in the order asked, and the non-target alone: slices of the whole.
    let some = tmp.path().join("some.npy");
    let flags =
        ["--vectors-out", some.to_str().unwrap(), "--vectors-states", "6,0,3", "--vectors-conditions", "non-target"];
    analyze_cli(&addresses[..1], &sentences, tmp.path(), &flags);
    assert!(!some.exists(), "the target's file is not written when only the non-target is asked for");
    let chosen: Array3<f32> = read_npy(tmp.path().join("some.non_target.npy")).unwrap();
    let whole: Array3<f32> = read_npy(tmp.path().join("one.non_target.npy")).unwrap();
    assert_eq!(chosen, whole.select(Axis(1), &[6, 0, 3]));
    assert_eq!(chosen.slice(s![.., 1, ..]), whole.slice(s![.., 0, ..]));
}

fn request(sentences: &[String]) -> RotationRequest {
    RotationRequest {
        sentences: sentences.to_vec(),
        target: Some(Target::TargetText(" her".into())),
        ..Default::default()
    }
}

fn service(model: Model, max_message_bytes: usize) -> RotationServiceImpl {
    let engine = Engine::new(model, BatchLimits { max_tokens: 512, max_sentences: 64 });
    let input = InputLimits { max_message_bytes, ..InputLimits::default() };
    RotationServiceImpl::ready(engine, LIMITS, 8).with_input_limits(input)
}

fn with_vectors(sentences: &[String], vectors: VectorOptions) -> RotationRequest {
    RotationRequest { vectors: Some(vectors), ..request(sentences) }
}

#[tokio::test]
async fn too_large_for_analyze_is_refused_before_any_work_and_the_stream_cuts_chunks_to_fit() {
    let sentences = corpus();
    // 11 rows × 2 conditions × 7 states × 32 values × 4 bytes = 19.7 kB of vectors alone.
    let small = service(load_bundled(), 16 * 1024);
    // A sentence without the target: had the request been tokenized, it would be INVALID_ARGUMENT.
    let mut with_invalid = sentences.clone();
    with_invalid.push("No target here.".into());
    let err = small.analyze(Request::new(with_vectors(&with_invalid, VectorOptions::default()))).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("StreamRotations") && err.message().contains("max_message_bytes"), "{err:?}");

    // The stream: several chunks, each within the limit; their vectors, in order, are Analyze's.
    let mut stream = small
        .stream_rotations(Request::new(with_vectors(&sentences, VectorOptions::default())))
        .await
        .unwrap()
        .into_inner();
    let (mut chunks, mut target) = (0, Vec::new());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(
            prost::Message::encoded_len(&chunk) <= 16 * 1024,
            "a chunk of {} bytes",
            prost::Message::encoded_len(&chunk)
        );
        if let Some(v) = &chunk.vectors {
            assert_eq!(v.shape[0] as usize, chunk.sentences.len());
            target.extend_from_slice(&v.data[0]);
            chunks += 1;
        }
    }
    assert!(chunks >= 2, "{chunks} chunks");
    let large = service(load_bundled(), 64 * 1024 * 1024);
    let whole =
        large.analyze(Request::new(with_vectors(&sentences, VectorOptions::default()))).await.unwrap().into_inner();
    assert_eq!(whole.rotations.unwrap().vectors.unwrap().data[0], target);
}

#[tokio::test]
async fn bad_vector_options_are_named() {
    let svc = service(load_bundled(), 64 * 1024 * 1024);
    let sentences = golden_sentences();
    let cases = [
        (VectorOptions { states: vec![0, 14], ..Default::default() }, Code::InvalidArgument, "vectors.states[1]"),
        (VectorOptions { states: vec![7], ..Default::default() }, Code::FailedPrecondition, "sub-layer"),
        (VectorOptions { states: vec![3, 3], ..Default::default() }, Code::InvalidArgument, "twice"),
        (VectorOptions { conditions: vec![2], ..Default::default() }, Code::InvalidArgument, "vectors.conditions[0]"),
        (VectorOptions { dtype: 9, ..Default::default() }, Code::InvalidArgument, "vectors.dtype"),
    ];
    for (options, code, text) in cases {
        let err = svc.analyze(Request::new(with_vectors(&sentences, options.clone()))).await.unwrap_err();
        assert_eq!(err.code(), code, "{options:?}: {err:?}");
        assert!(err.message().contains(text), "{options:?}: {}", err.message());
        let streamed = svc.stream_rotations(Request::new(with_vectors(&sentences, options.clone()))).await;
        assert_eq!(streamed.err().map(|e| e.code()), Some(code), "{options:?} streamed");
    }
    // A sub-layer state of a model that has them is served.
    let sub = service(load_model(&repo().join("models/llama-tiny-random-sublayers")), 64 * 1024 * 1024);
    let ok = VectorOptions { states: vec![9, 5], dtype: VectorDtype::Float16 as i32, ..Default::default() };
    let v =
        sub.analyze(Request::new(with_vectors(&sentences, ok))).await.unwrap().into_inner().rotations.unwrap().vectors;
    assert_eq!(v.unwrap().shape, [6, 2, 32]);
}

/// A graph that returns only the vectors the analysis reads returns the chosen vectors too: the same
/// bytes as the full graph's.
#[tokio::test]
async fn the_reduced_output_graph_gives_the_same_vectors() {
    let tuning = OrtTuning { gather_outputs: GatherOutputs::On, ..Default::default() };
    let dir: PathBuf = repo().join("models/gpt2-tiny-random-gather");
    let gathering = Model::load(&dir, &RuntimeOptions { tuning, ..runtime_options() }).unwrap();
    let sentences = corpus();
    let options = VectorOptions { states: vec![5, 1], ..Default::default() };
    let mut answers = Vec::new();
    for model in [gathering, load_bundled()] {
        let svc = service(model, 64 * 1024 * 1024);
        let analysis = svc.analyze(Request::new(with_vectors(&sentences, options.clone()))).await.unwrap();
        answers.push(analysis.into_inner().rotations.unwrap().vectors.unwrap());
    }
    assert_eq!(answers[0], answers[1]);
}
