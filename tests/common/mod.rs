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
pub struct ServerProcess(std::process::Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The bundled model on a free loopback port, once SERVING; returns the server and its host:port.
pub fn serve_bundled() -> (ServerProcess, String) {
    serve_bundled_on("127.0.0.1")
}

/// [`serve_bundled`] on a loopback address of its own (127.0.0.x), as a pod would have.
pub fn serve_bundled_on(host: &str) -> (ServerProcess, String) {
    let port = std::net::TcpListener::bind((host, 0)).unwrap().local_addr().unwrap().port();
    let bin = env!("CARGO_BIN_EXE_rotations");
    let child = std::process::Command::new(bin)
        .args(["serve", "--host", host, "--port", &port.to_string(), "--threads", "1"])
        .arg("--model-dir")
        .arg(bundled_model_dir())
        .arg("--ort-library")
        .arg(ort_library())
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
