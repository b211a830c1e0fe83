//! The CLI's sharding client against real replicas on 127.0.0.2–4: replicas that appear in the
//! lookup during a run join it (and one that vanishes stops taking chunks) with the result of one
//! server's Analyze, bit for bit; `--angles-out` writes the same angles to a .npy file and the same
//! table, statistics and figures as the in-memory run.
mod common;
mod tamper;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rotations::client::cluster::{self, Replicas};
use rotations::config::ConnectArgs;
use rotations::proto;

/// `n` distinct sentences (the examples', numbered and cycled) in a file, one a line, with blank
/// lines between some (they are skipped but counted as lines).
fn corpus_file(dir: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("examples/her_sentences.txt")).unwrap();
    let examples: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut body = String::new();
    for i in 0..n {
        body.push_str(&format!("{i}. {}\n", examples[i % examples.len()]));
        if i % 17 == 0 {
            body.push('\n');
        }
    }
    let path = dir.join("corpus.txt");
    std::fs::write(&path, body).unwrap();
    path
}

fn request(sentences: Vec<String>) -> proto::RotationRequest {
    proto::RotationRequest {
        sentences,
        target: Some(proto::rotation_request::Target::TargetText(" her".into())),
        unit: proto::AngleUnit::Degrees as i32,
        significance: Some(proto::SignificanceOptions {
            correction: proto::Correction::Holm as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One server's Analyze of the whole file in one request.
async fn one_server(address: &str, corpus: &Path) -> proto::Analysis {
    let sentences = rotations::client::read_sentences(corpus).unwrap();
    let mut client = rotations::client::connect_to(address, &ConnectArgs::default()).await.unwrap();
    client.analyze(request(sentences)).await.unwrap().into_inner()
}

fn bits(t: &Option<proto::Tensor>) -> Vec<u32> {
    t.as_ref().unwrap().values.iter().map(|v| v.to_bits()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_appear_in_the_lookup_join_a_run_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_file(dir.path(), 300);
    let servers: Vec<_> = ["127.0.0.2", "127.0.0.3", "127.0.0.4"].into_iter().map(serve_bundled_on).collect();
    let addresses: Vec<String> = servers.iter().map(|(_, a)| a.clone()).collect();
    let reference = one_server(&addresses[0], &corpus).await;

    // First lookup: one replica; then all three (pods scaled up); from the 8th on the first is gone.
    let lookups = Arc::new(AtomicUsize::new(0));
    let (counter, listed) = (lookups.clone(), addresses.clone());
    let resolve: cluster::Resolve = Arc::new(move || {
        Ok(match counter.fetch_add(1, Ordering::SeqCst) {
            0 => listed[..1].to_vec(),
            1..7 => listed.clone(),
            _ => listed[1..].to_vec(),
        })
    });
    let replicas = Replicas { resolve, interval: Duration::from_millis(20) };
    let file = cluster::CorpusFile { path: &corpus, marked: false };
    let outcome =
        cluster::analyze(replicas, &ConnectArgs::default(), request(Vec::new()), file, cluster::Chunking::of(3), None)
            .await
            .unwrap();

    assert!(lookups.load(Ordering::SeqCst) > 2, "looked up again during the run");
    let served: Vec<(String, usize)> = outcome.replicas.iter().map(|(a, n, _)| (a.clone(), *n)).collect();
    assert_eq!(served.iter().map(|(a, _)| a).collect::<Vec<_>>(), addresses.iter().collect::<Vec<_>>());
    assert!(served[1..].iter().all(|(_, n)| *n > 0), "the late replicas served chunks: {served:?}");
    assert_eq!(served.iter().map(|(_, n)| n).sum::<usize>(), 100, "each chunk once: {served:?}");

    let (got, want) = (outcome.analysis.rotations.unwrap(), reference.rotations.unwrap());
    assert_eq!(bits(&got.angles), bits(&want.angles), "angles bit for bit");
    assert_eq!(got.angles.unwrap().shape, want.angles.unwrap().shape);
    assert_eq!(got.shuffle_draws, want.shuffle_draws);
    assert_eq!(got.sentences, want.sentences);
    assert_eq!(
        (got.model_name, got.target_token_id, got.shuffle_seed),
        (want.model_name, want.target_token_id, want.shuffle_seed)
    );
    assert_eq!(outcome.analysis.significance, reference.significance, "t, p and every other field");
    assert_eq!(outcome.sentences, rotations::client::read_sentences(&corpus).unwrap());
}

/// `rotations analyze` with `args`; returns its stdout.
fn analyze_cli(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rotations")).arg("analyze").args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn angles_out_writes_the_npy_of_the_python_client_and_the_same_results() {
    use ndarray::Array3;
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_file(dir.path(), 120);
    let servers: Vec<_> = ["127.0.0.2", "127.0.0.3"].into_iter().map(serve_bundled_on).collect();
    let [a, b] = [0, 1].map(|i| format!("http://{}", servers[i].1));
    let (memory, disk) = (dir.path().join("memory"), dir.path().join("disk"));
    let npy = dir.path().join("angles.npy");
    let common = ["--sentences", corpus.to_str().unwrap(), "--target", " her", "--chunk-size", "7"];
    let table_memory =
        analyze_cli(&[&common[..], &["--server", &a, "--server", &b, "--out", memory.to_str().unwrap()]].concat());
    let table_disk = analyze_cli(
        &[&common[..], &["--server", &a, "--out", disk.to_str().unwrap(), "--angles-out", npy.to_str().unwrap()]]
            .concat(),
    );

    // The table (layer means, t, p) and the files that do not hold per-sentence angles: the same bytes.
    let table = |stdout: &str| stdout.split("\nwrote ").next().unwrap().to_string();
    assert_eq!(table(&table_disk), table(&table_memory));
    for name in ["significance.csv", "angles.svg", "significance.svg"] {
        assert!(std::fs::read(disk.join(name)).unwrap() == std::fs::read(memory.join(name)).unwrap(), "{name}");
    }
    assert!(!disk.join("angles.csv").exists(), "no CSV of every angle beside the .npy");
    let json = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("analysis.json")).unwrap()).unwrap()
    };
    let (mut on_disk, mut in_memory) = (json(&disk), json(&memory));
    assert_eq!(on_disk["angles_file"], npy.to_str().unwrap());
    let angles = in_memory["angles"].take();
    let draws = in_memory["shuffle_draws"].take();
    for key in ["angles", "sentences", "shuffle_draws"] {
        in_memory.as_object_mut().unwrap().remove(key);
    }
    for key in ["angles_file", "angles_file_layout", "draws_file", "draws_file_layout"] {
        on_disk.as_object_mut().unwrap().remove(key);
    }
    assert_eq!(on_disk, in_memory, "analysis.json: the same but for the per-sentence arrays");

    // The .npy files: [sentences, layers, 3] float32 and [sentences, layers, 4] int32, the same values.
    let file: Array3<f32> = ndarray_npy::read_npy(&npy).unwrap();
    let draws_file: Array3<i32> = ndarray_npy::read_npy(dir.path().join("angles.draws.npy")).unwrap();
    let layers = angles.as_array().unwrap().len();
    assert_eq!(file.shape(), [120, layers, 3]);
    assert_eq!(draws_file.shape(), [120, layers, 4]);
    for (l, per_layer) in angles.as_array().unwrap().iter().enumerate() {
        for (s, values) in per_layer.as_array().unwrap().iter().enumerate() {
            for c in 0..3 {
                // JSON holds the shortest decimal that reads back as the same f32.
                assert_eq!(file[[s, l, c]], values[c].as_f64().unwrap() as f32, "angle [{l}, {s}, {c}]");
            }
            let draw = &draws[s + l * 120];
            for f in 0..4 {
                assert_eq!(i64::from(draws_file[[s, l, f]]), draw[f].as_i64().unwrap());
            }
        }
    }
}

#[test]
fn a_bad_sentence_deep_in_a_lazily_read_file_is_named_by_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_file(dir.path(), 60);
    // Line 50 of the file (blank lines included) loses its target.
    let mut lines: Vec<String> = std::fs::read_to_string(&corpus).unwrap().lines().map(String::from).collect();
    assert!(lines[49].contains(" her"), "{}", lines[49]);
    lines[49] = "No target in this one.".into();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let (_server, address) = serve_bundled_on("127.0.0.2");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rotations"))
        .args(["analyze", "--server", &format!("dns:///{address}"), "--target", " her", "--chunk-size", "4"])
        .arg("--sentences")
        .arg(&corpus)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let expected = format!("{}:50: target token 607 \" her\" not found", corpus.display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!dir.path().join("out").exists(), "the empty output folder is taken away again");
}

/// The sharded analysis of `corpus` over `addresses` (looked up once a minute), in chunks of `chunk`.
async fn sharded(addresses: &[String], corpus: &Path, chunk: usize) -> anyhow::Result<cluster::Outcome> {
    let replicas = Replicas::from_servers(addresses, Duration::from_secs(60));
    let file = cluster::CorpusFile { path: corpus, marked: false };
    cluster::analyze(replicas, &ConnectArgs::default(), request(Vec::new()), file, cluster::Chunking::of(chunk), None)
        .await
}

/// The sharded run gave one server's Analyze, bit for bit.
fn assert_same(outcome: &cluster::Outcome, reference: &proto::Analysis) {
    let (got, want) = (outcome.analysis.rotations.as_ref().unwrap(), reference.rotations.as_ref().unwrap());
    assert_eq!(bits(&got.angles), bits(&want.angles), "angles bit for bit");
    assert_eq!(got.shuffle_draws, want.shuffle_draws);
    assert_eq!(got.sentences, want.sentences);
    assert_eq!(outcome.analysis.significance, reference.significance, "t, p and every other field");
    assert_eq!(outcome.analysis.condition_statistics, reference.condition_statistics);
}

/// (chunks served, failures) of the replica at `address`.
fn served_by(outcome: &cluster::Outcome, address: &str) -> (usize, usize) {
    outcome.replicas.iter().find(|(a, _, _)| a == address).map(|(_, n, f)| (*n, *f)).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_answers_are_wrong_is_left_out_and_never_merged() {
    use tamper::Tamper::*;
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_file(dir.path(), 30);
    let (_honest, honest) = serve_bundled_on("127.0.0.2");
    let (_behind, behind) = serve_bundled_on("127.0.0.3");
    let reference = one_server(&honest, &corpus).await;
    let cases = [
        (TruncateLayers, "statistics: 3 layers, the model has 6"),
        (DoubleN, "statistics[0]: n = 6, but 3 rows came"),
        (DropLastRows, "rows stop before sentence"),
        (OtherModel, "model \"another-model\", not \"gpt2-tiny-random\""),
    ];
    for (how, why) in cases {
        let liar = tamper::start("127.0.0.6", &behind, how).await;
        // With an honest replica beside it: the run completes, its result exact.
        let outcome = sharded(&[liar.clone(), honest.clone()], &corpus, 3).await.unwrap();
        assert_same(&outcome, &reference);
        let (served, failures) = served_by(&outcome, &liar);
        assert!(served == 0 && failures >= 1, "{how:?}: the liar served {served} chunks, failed {failures}");
        // Alone: a clear error that says what was wrong.
        let err = format!("{:#}", sharded(&[liar], &corpus, 3).await.err().expect("a liar alone fails the run"));
        assert!(err.contains("every replica failed or left; 0 of") && err.contains(why), "{how:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_chunk_failing_internal_or_unknown_goes_to_another_replica() {
    use tamper::Tamper::FailEnd;
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_file(dir.path(), 30);
    let (_a, a) = serve_bundled_on("127.0.0.2");
    let (_b, b) = serve_bundled_on("127.0.0.3");
    let reference = one_server(&a, &corpus).await;
    // Whichever replica takes the last chunk first fails it: one always (INTERNAL), one once (UNKNOWN).
    let always =
        tamper::start("127.0.0.6", &a, FailEnd { end: 30, code: tonic::Code::Internal, times: usize::MAX }).await;
    let once = tamper::start("127.0.0.7", &b, FailEnd { end: 30, code: tonic::Code::Unknown, times: 1 }).await;
    let outcome = sharded(&[always.clone(), once.clone()], &corpus, 3).await.unwrap();
    assert_same(&outcome, &reference);
    let failures: usize = outcome.replicas.iter().map(|(_, _, f)| f).sum();
    assert!(failures >= 1, "the last chunk failed at least once: {:?}", outcome.replicas);
    assert_eq!(served_by(&outcome, &always).0 + served_by(&outcome, &once).0, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_other_weights_is_left_out_not_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_file(dir.path(), 30);
    // The bundled model with another weights fingerprint recorded (as a retrained export would have).
    let other = dir.path().join("other-weights");
    std::fs::create_dir(&other).unwrap();
    for file in ["model.onnx", "tokenizer.json"] {
        std::os::unix::fs::symlink(bundled_model_dir().join(file), other.join(file)).unwrap();
    }
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundled_model_dir().join("model.json")).unwrap()).unwrap();
    manifest["weights_sha256"] = "0".repeat(64).into();
    std::fs::write(other.join("model.json"), manifest.to_string()).unwrap();
    let (_odd, odd) = serve_model_on(&other, "127.0.0.4");
    let (_a, a) = serve_bundled_on("127.0.0.2");
    let (_b, b) = serve_bundled_on("127.0.0.3");
    let reference = one_server(&a, &corpus).await;
    // Listed first, yet the model the others serve is the run's.
    let outcome = sharded(&[odd.clone(), a, b], &corpus, 3).await.unwrap();
    assert_same(&outcome, &reference);
    assert!(outcome.replicas.iter().all(|(address, _, _)| *address != odd), "{:?}", outcome.replicas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_does_not_hang_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_file(dir.path(), 300);
    let (_a, a) = serve_bundled_on("127.0.0.2");
    let (frozen, b) = serve_bundled_on("127.0.0.3");
    let reference = one_server(&a, &corpus).await;
    // The second lookup, mid-run, stops replica b (SIGSTOP: its connections stay open, silent).
    let (lookups, pid, listed) = (Arc::new(AtomicUsize::new(0)), frozen.pid(), vec![a.clone(), b.clone()]);
    let counter = lookups.clone();
    let resolve: cluster::Resolve = Arc::new(move || {
        if counter.fetch_add(1, Ordering::SeqCst) == 1 {
            std::process::Command::new("kill").args(["-STOP", &pid.to_string()]).status().unwrap();
        }
        Ok(listed.clone())
    });
    let replicas = Replicas { resolve, interval: Duration::from_millis(100) };
    let file = cluster::CorpusFile { path: &corpus, marked: false };
    // The defaults (no deadline given): the keepalive finds the frozen replica in about 20 s.
    let how = ConnectArgs::default();
    let run = cluster::analyze(replicas, &how, request(Vec::new()), file, cluster::Chunking::of(3), None);
    let outcome = tokio::time::timeout(Duration::from_secs(180), run).await.expect("the run ends").unwrap();
    assert!(lookups.load(Ordering::SeqCst) > 1, "b was stopped during the run");
    assert_same(&outcome, &reference);
    assert!(served_by(&outcome, &b).1 >= 1, "b's chunks in flight failed over: {:?}", outcome.replicas);
}

#[test]
fn chunk_timeout_bounds_each_chunk_and_the_error_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_file(dir.path(), 12);
    let (_server, address) = serve_bundled_on("127.0.0.2");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rotations"))
        .args(["analyze", "--server", &format!("dns:///{address}"), "--target", " her", "--chunk-size", "4"])
        .args(["--chunk-timeout", "0.001", "--sentences"])
        .arg(&corpus)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("every replica failed or left; 0 of"), "{stderr}");
    assert!(stderr.contains("no answer within the chunk's 1ms"), "{stderr}");
}

/// `--steps sublayers --norms` on models/llama-tiny-random-sublayers, as one Analyze request.
fn inside_request(sentences: Vec<String>) -> proto::RotationRequest {
    proto::RotationRequest { steps: proto::Steps::Sublayers as i32, norms: true, ..request(sentences) }
}

/// The sharded run's steps and norms (and their tests) are one Analyze's, bit for bit.
fn assert_same_inside(outcome: &cluster::Outcome, reference: &proto::Analysis) {
    assert_same(outcome, reference);
    let (got, want) = (outcome.analysis.rotations.as_ref().unwrap(), reference.rotations.as_ref().unwrap());
    let (sub, want_sub) = (got.sublayers.as_ref().unwrap(), want.sublayers.as_ref().unwrap());
    assert_eq!(bits(&sub.angles), bits(&want_sub.angles), "step angles bit for bit");
    assert_eq!(bits(&sub.layer_means), bits(&want_sub.layer_means), "step means bit for bit");
    assert_eq!(sub, want_sub);
    let (norms, want_norms) = (got.norms.as_ref().unwrap(), want.norms.as_ref().unwrap());
    for (a, b) in [(&norms.norms, &want_norms.norms), (&norms.growth, &want_norms.growth)] {
        assert_eq!(bits(a), bits(b), "norms and growth bit for bit");
    }
    assert_eq!(bits(&norms.mean_norms), bits(&want_norms.mean_norms), "mean norms bit for bit");
    assert_eq!(bits(&norms.mean_growth), bits(&want_norms.mean_growth), "mean growth bit for bit");
    assert_eq!(norms, want_norms);
    assert_eq!(outcome.analysis.step_statistics, reference.step_statistics);
    assert_eq!(outcome.analysis.step_significance, reference.step_significance, "step tests, every field");
    assert!(reference.step_significance.as_ref().is_some_and(|t| t.layers.len() == 8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_steps_and_norms_equal_one_analyze_with_a_replica_killed_midway() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_file(dir.path(), 60);
    let model = repo().join("models/llama-tiny-random-sublayers");
    let servers: Vec<_> = ["127.0.0.2", "127.0.0.3", "127.0.0.4"].map(|h| serve_model_on(&model, h)).into();
    let addresses: Vec<String> = servers.iter().map(|(_, a)| a.clone()).collect();
    let sentences = rotations::client::read_sentences(&corpus).unwrap();
    let mut client = rotations::client::connect_to(&addresses[0], &ConnectArgs::default()).await.unwrap();
    let reference = client.analyze(inside_request(sentences)).await.unwrap().into_inner();

    // The first lookup after the start kills the third replica (SIGKILL: its calls fail at once).
    let (pid, listed, lookups) = (servers[2].0.pid(), addresses.clone(), Arc::new(AtomicUsize::new(0)));
    let counter = lookups.clone();
    let resolve: cluster::Resolve = Arc::new(move || {
        if counter.fetch_add(1, Ordering::SeqCst) == 1 {
            std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
        }
        Ok(listed.clone())
    });
    let replicas = Replicas { resolve, interval: Duration::from_millis(50) };
    let file = cluster::CorpusFile { path: &corpus, marked: false };
    let request = inside_request(Vec::new());
    let outcome = cluster::analyze(replicas, &ConnectArgs::default(), request, file, cluster::Chunking::of(2), None)
        .await
        .unwrap();
    eprintln!("replicas (address, chunks, failures): {:?}", outcome.replicas);
    assert_same_inside(&outcome, &reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_step_angles_do_not_fit_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_file(dir.path(), 12);
    let model = repo().join("models/llama-tiny-random-sublayers");
    let (_honest, honest) = serve_model_on(&model, "127.0.0.2");
    let sentences = rotations::client::read_sentences(&corpus).unwrap();
    let mut client = rotations::client::connect_to(&honest, &ConnectArgs::default()).await.unwrap();
    let reference = client.analyze(inside_request(sentences)).await.unwrap().into_inner();
    let liar = tamper::start("127.0.0.6", &honest, tamper::Tamper::TruncateSteps).await;
    let corpus = corpus.as_path();
    let run = |servers: Vec<String>| async move {
        let replicas = Replicas::from_servers(&servers, Duration::from_secs(60));
        let file = cluster::CorpusFile { path: corpus, marked: false };
        let request = inside_request(Vec::new());
        cluster::analyze(replicas, &ConnectArgs::default(), request, file, cluster::Chunking::of(3), None).await
    };
    let outcome = run(vec![liar.clone(), honest.clone()]).await.unwrap();
    assert_same_inside(&outcome, &reference);
    let (served, failures) = served_by(&outcome, &liar);
    assert!(served == 0 && failures >= 1, "the liar served {served} chunks, failed {failures}");
    let err = format!("{:#}", run(vec![liar]).await.err().expect("a liar alone fails the run"));
    assert!(err.contains("step angle of shape [3, 2, 3, 2], not [4, 2, 3, 2]"), "{err}");
}

/// `rotations analyze --steps sublayers --norms` over three replicas (and with --angles-out, and
/// streamed from one server) writes one server's steps.csv, norms.csv and steps.svg, byte for byte.
#[test]
fn the_cli_writes_one_servers_steps_and_norms_files_when_sharded() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_file(dir.path(), 20);
    let model = repo().join("models/llama-tiny-random-sublayers");
    let servers: Vec<_> = ["127.0.0.2", "127.0.0.3", "127.0.0.4"].map(|h| serve_model_on(&model, h)).into();
    let urls: Vec<String> = servers.iter().map(|(_, a)| format!("http://{a}")).collect();
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let corpus = corpus.to_str().unwrap();
    let common = ["--sentences", corpus, "--target", " her", "--steps", "sublayers", "--norms"];
    let mut sharded: Vec<&str> = common.to_vec();
    for url in &urls {
        sharded.extend(["--server", url.as_str()]);
    }
    analyze_cli(&[&common[..], &["--server", &urls[0], "--out", &out("one")]].concat());
    analyze_cli(&[&sharded[..], &["--chunk-size", "3", "--out", &out("three")]].concat());
    let npy = out("angles.npy");
    analyze_cli(&[&sharded[..], &["--chunk-size", "4", "--angles-out", &npy, "--out", &out("disk")]].concat());
    analyze_cli(&[&common[..], &["--server", &urls[0], "--stream-above", "5", "--out", &out("streamed")]].concat());
    for name in ["steps.csv", "norms.csv", "steps.svg", "significance.csv"] {
        let want = std::fs::read(dir.path().join("one").join(name)).unwrap();
        for run in ["three", "disk", "streamed"] {
            assert!(std::fs::read(dir.path().join(run).join(name)).unwrap() == want, "{run}/{name} differs");
        }
    }
}
