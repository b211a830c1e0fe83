//! Shared by the integration tests: where the runtime library and the bundled model are.
#![allow(dead_code)]
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rotations::model::{
    Backend, ExecutionProvider, Manifest, Model, ModelError, RuntimeOptions, SentenceHidden, Tokenizer,
};

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

/// The bundled Llama-like model: rotary positions, RMSNorm, a tokenizer that prepends BOS.
pub fn llama_model_dir() -> PathBuf {
    repo().join("models/llama-tiny-random")
}

pub fn runtime_options() -> RuntimeOptions {
    RuntimeOptions {
        library: ort_library(),
        provider: ExecutionProvider::Cpu,
        intra_threads: 1,
        tuning: Default::default(),
    }
}

pub fn load_bundled() -> Model {
    Model::load(&bundled_model_dir(), &runtime_options()).expect("bundled model loads")
}

/// A model directory on the CPU with one thread.
pub fn load_model(dir: &std::path::Path) -> Model {
    Model::load(dir, &runtime_options()).unwrap_or_else(|e| panic!("{} loads: {e}", dir.display()))
}

/// A golden file of PyTorch hidden states (tools/make_golden_*hidden_states.py): its sentences,
/// their token ids as Hugging Face's tokenizer gives them, and the whole file.
pub fn golden_hidden(name: &str) -> (Vec<String>, Vec<Vec<u32>>, serde_json::Value) {
    let g: serde_json::Value = golden(name);
    let sentences: Vec<String> =
        g["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    let ids: Vec<Vec<u32>> = g["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect())
        .collect();
    (sentences, ids, g)
}

/// Largest |ours − PyTorch's| over every component of every hidden state of every sentence, after
/// checking each sentence's shape; `want` is a golden file's `hidden_states` [sentence][state][position][dim].
pub fn max_error_vs_golden(hidden: &[SentenceHidden], want: &serde_json::Value, hidden_size: usize) -> f64 {
    let want = want.as_array().unwrap();
    assert_eq!(hidden.len(), want.len());
    let mut max_err = 0f64;
    for (h, sentence) in hidden.iter().zip(want) {
        let states = sentence.as_array().unwrap();
        assert_eq!(h.shape(), &[states.len(), states[0].as_array().unwrap().len(), hidden_size]);
        for (k, state) in states.iter().enumerate() {
            for (p, vector) in state.as_array().unwrap().iter().enumerate() {
                for (d, v) in vector.as_array().unwrap().iter().enumerate() {
                    max_err = max_err.max((f64::from(h[[k, p, d]]) - v.as_f64().unwrap()).abs());
                }
            }
        }
    }
    max_err
}

/// A golden reference file of tests/golden (made by the scripts in tools/), parsed.
pub fn golden<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = repo().join("tests/golden").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden JSON parses")
}

/// A fake backend that takes its time and counts the sentences it computed: for tests of
/// admission, cancellation and batching that must not depend on the real model's speed.
pub struct SlowBackend {
    pub layers: usize,
    pub delay: Duration,
    pub sentences_computed: Arc<AtomicUsize>,
}

impl Backend for SlowBackend {
    fn forward(&mut self, batch: &[Vec<u32>]) -> Result<Vec<SentenceHidden>, ModelError> {
        std::thread::sleep(self.delay);
        self.sentences_computed.fetch_add(batch.len(), Ordering::SeqCst);
        Ok(batch
            .iter()
            .map(|ids| {
                SentenceHidden::from_shape_fn((self.layers + 1, ids.len(), 4), |(k, p, d)| {
                    (1 + k * k + p * 3 + d + ids[p] as usize % 7) as f32
                })
            })
            .collect())
    }
}

/// The bundled model's tokenizer and shape over a [`SlowBackend`]; returns its sentence counter.
pub fn slow_model(delay: Duration) -> (Model, Arc<AtomicUsize>) {
    let dir = bundled_model_dir();
    let manifest = Manifest::read(&dir.join("model.json")).unwrap();
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let counter = Arc::new(AtomicUsize::new(0));
    let backend = SlowBackend { layers: manifest.num_layers, delay, sentences_computed: counter.clone() };
    (Model::with_backend(&manifest, tokenizer, backend).unwrap(), counter)
}

/// A `rotations serve` process, killed when dropped.
pub struct ServerProcess(pub std::process::Child);

impl ServerProcess {
    /// The process id (e.g. to stop the server with SIGSTOP).
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The bundled model on a free loopback port, once SERVING; returns the server and its host:port.
pub fn serve_bundled() -> (ServerProcess, String) {
    serve_model(&bundled_model_dir())
}

/// [`serve_bundled`] on a loopback address of its own (127.0.0.x), as a pod would have.
pub fn serve_bundled_on(host: &str) -> (ServerProcess, String) {
    serve_model_on(&bundled_model_dir(), host)
}

/// A model directory on a free loopback port, once SERVING; returns the server and its host:port.
pub fn serve_model(dir: &std::path::Path) -> (ServerProcess, String) {
    serve_model_on(dir, "127.0.0.1")
}

/// [`serve_model`] on loopback address `host`.
pub fn serve_model_on(dir: &std::path::Path, host: &str) -> (ServerProcess, String) {
    serve_model_with(dir, host, &[], &[])
}

/// [`serve_model_on`] with more `serve` flags and environment variables.
pub fn serve_model_with(
    dir: &std::path::Path,
    host: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (ServerProcess, String) {
    let port = std::net::TcpListener::bind((host, 0)).unwrap().local_addr().unwrap().port();
    let bin = env!("CARGO_BIN_EXE_rotations");
    let child = std::process::Command::new(bin)
        .args(["serve", "--host", host, "--port", &port.to_string(), "--threads", "1"])
        .arg("--model-dir")
        .arg(dir)
        .arg("--ort-library")
        .arg(ort_library())
        .args(args)
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let server = ServerProcess(child);
    let address = format!("{host}:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::process::Command::new(bin)
        .args(["health", "--server", &format!("http://{address}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(std::time::Instant::now() < deadline, "server did not become SERVING");
        std::thread::sleep(Duration::from_millis(200));
    }
    (server, address)
}

/// A channel to `url` once its server reports SERVING (60 s at most; `log` says why it did not).
pub async fn serving_channel(url: &str, log: impl Fn() -> String) -> tonic::transport::Channel {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channel) = tonic::transport::Channel::from_shared(url.to_string()).unwrap().connect().await {
            let request = HealthCheckRequest { service: String::new() };
            if let Ok(r) = HealthClient::new(channel.clone()).check(request).await {
                if r.into_inner().status == ServingStatus::Serving as i32 {
                    return channel;
                }
            }
        }
        assert!(std::time::Instant::now() < deadline, "server did not become SERVING{}", log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A plain HTTP/1.0 GET on loopback (the metrics page): the whole response, headers included.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// A number that may be non-finite (written as "inf", "-inf" or "nan" in JSON).
#[derive(serde::Deserialize, Clone, Copy)]
#[serde(untagged)]
pub enum Num {
    Finite(f64),
    #[serde(deserialize_with = "non_finite")]
    NonFinite(f64),
}

fn non_finite<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    match <String as serde::Deserialize>::deserialize(d)?.as_str() {
        "inf" => Ok(f64::INFINITY),
        "-inf" => Ok(f64::NEG_INFINITY),
        "nan" => Ok(f64::NAN),
        other => Err(serde::de::Error::custom(format!("not a number: {other}"))),
    }
}

impl Num {
    pub fn value(self) -> f64 {
        match self {
            Num::Finite(x) | Num::NonFinite(x) => x,
        }
    }
}

/// The correction statsmodels' `multipletests` calls `method`.
pub fn correction_named(method: &str) -> rotations::analysis::Correction {
    use rotations::analysis::Correction;
    match method {
        "bonferroni" => Correction::Bonferroni,
        "holm" => Correction::Holm,
        "fdr_bh" => Correction::BenjaminiHochberg,
        other => panic!("unknown method {other}"),
    }
}
