//! Issue 23 against the real server on 127.0.0.1: no request pins a thread, holds every slot or
//! fills the memory. Each test reproduces a finding (it failed before the fix) with short timeouts.
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ethnum::I256;
use rotations::proto::rotation_service_client::RotationServiceClient;
use rotations::proto::{self, LayerStatistics, SignificanceRequest};
use tonic::transport::Channel;

/// A `rotations serve` process with extra flags, its log in a file; killed when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
    log: tempfile::NamedTempFile,
}

impl Server {
    pub fn start(extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rotations"))
            .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string(), "--threads", "1"])
            .arg("--model-dir")
            .arg(bundled_model_dir())
            .arg("--ort-library")
            .arg(ort_library())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        Self { child, port, log }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap()
    }

    /// A channel once the server reports SERVING.
    pub async fn serving(&self) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(channel) = Channel::from_shared(self.url()).unwrap().connect().await {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
                let req = tonic_health::pb::HealthCheckRequest { service: String::new() };
                if let Ok(r) = health.check(req).await {
                    if r.into_inner().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
                        return channel;
                    }
                }
            }
            assert!(Instant::now() < deadline, "server did not become SERVING:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM and waits at most `within` for the exit.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        assert!(Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap().success());
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit within {within:?} of SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One layer's statistics on the wire: `n` values, half of them `a` and half `b` (exact integers
/// at the service's 2^-64 fixed point, as a client that merged shards sends them).
fn two_valued(n: u64, a: i128, b: i128) -> LayerStatistics {
    let (half, rest) = (n / 2, n - n / 2);
    let sum = a * half as i128 + b * rest as i128;
    let sum_sq = I256::from(a) * I256::from(a) * I256::from(half) + I256::from(b) * I256::from(b) * I256::from(rest);
    LayerStatistics {
        layer: 1,
        n,
        sum_exact: sum.to_be_bytes().to_vec(),
        sum_sq_exact: sum_sq.to_be_bytes().to_vec(),
        ..Default::default()
    }
}

const UNIT: i128 = 1 << 64;

/// scipy's `t.ppf(q, df)` from the golden file.
fn scipy_ppf(q: f64, df: f64) -> f64 {
    let g: serde_json::Value = golden("ttest_scipy.json");
    let t = &g["student_t"];
    let i = t["df"].as_array().unwrap().iter().position(|d| d.as_f64() == Some(df)).expect("df in the golden file");
    let j = t["q"].as_array().unwrap().iter().position(|x| x.as_f64() == Some(q)).expect("q in the golden file");
    t["ppf"][i][j].as_f64().unwrap()
}

/// Finding 1: a 61-byte TestSignificance of merged statistics with n = 2e7 (a 20M-sentence corpus)
/// pinned a blocking thread forever (statrs' t quantile). Now it answers at once, with scipy's
/// quantile in the confidence interval; so do two groups of 1e7 each (Welch's df ~ 2e7).
#[tokio::test]
async fn significance_of_a_twenty_million_sentence_corpus_is_answered() {
    let server = Server::start(&[]);
    let mut client = RotationServiceClient::new(server.serving().await);
    let n = 20_000_000u64;
    let stats = two_valued(n, UNIT, 2 * UNIT); // d = 1 or 2: mean 1.5, variance n/(n-1)/4
    let req = SignificanceRequest { statistics: vec![stats], ..Default::default() };
    assert!(prost::Message::encoded_len(&req) <= 64, "{} bytes", prost::Message::encoded_len(&req));
    let mut request = tonic::Request::new(req);
    request.set_timeout(Duration::from_secs(20));
    let answer = client.test_significance(request).await.expect("answered within the deadline").into_inner();
    let l = &answer.layers[0];
    let nf = n as f64;
    let se = (nf / (nf - 1.0) / 4.0).sqrt() / nf.sqrt();
    assert_eq!(l.df, nf - 1.0);
    let half = l.ci_high - l.mean_difference;
    let want = scipy_ppf(0.975, nf - 1.0) * se;
    assert!((half / want - 1.0).abs() < 1e-9, "CI half width {half:e}, scipy's {want:e}");

    let group = |offset: i128| vec![two_valued(n / 2, UNIT + offset, 2 * UNIT + offset)];
    let req = SignificanceRequest { group_a: group(0), group_b: group(UNIT / 1000), ..Default::default() };
    let mut request = tonic::Request::new(req);
    request.set_timeout(Duration::from_secs(20));
    let answer = client.test_significance(request).await.expect("answered within the deadline").into_inner();
    let g = &answer.group_tests.unwrap().layers[0];
    assert!(g.df > 1.9e7 && g.ci_low < g.mean_difference && g.p < 1e-4, "{g:?}");
}

/// Finding 1: a layer whose differences vary by 2^-30 around 1 (|t| ~ 3.7e9) was flagged "zero
/// variance" (any |t| above ~1.7e7 was); only an exactly zero variance is flagged now.
#[tokio::test]
async fn only_an_exactly_constant_layer_is_flagged_zero_variance() {
    let server = Server::start(&[]);
    let mut client = RotationServiceClient::new(server.serving().await);
    let wobble = two_valued(4, UNIT, UNIT + (1 << 34)); // 1 and 1 + 2^-30, twice each
    let mut constant = two_valued(4, UNIT, UNIT);
    constant.layer = 2;
    let req = SignificanceRequest { statistics: vec![wobble, constant], ..Default::default() };
    let answer = client.test_significance(req).await.unwrap().into_inner();
    let (tiny, flat) = (&answer.layers[0], &answer.layers[1]);
    assert_eq!(tiny.flag, proto::LayerFlag::None as i32, "{tiny:?}");
    let e = 2f64.powi(-30);
    let t = (1.0 + e / 2.0) * 2.0 * 3f64.sqrt() / e; // mean 1 + e/2, sd e/√3, n = 4
    assert!((tiny.t / t - 1.0).abs() < 1e-12 && tiny.significant, "{tiny:?}");
    assert_eq!(flat.flag, proto::LayerFlag::ZeroVariance as i32);
    assert_eq!(flat.t, f64::INFINITY);
}

/// Finding 1: SIGTERM never ended a server whose blocking task never returned (the runtime waited
/// for it). Now the process exits once its grace period is over, non-zero, and says why: here a
/// Tokenize of some 12 MB, which takes far longer than the 1 s grace.
#[tokio::test]
async fn shutdown_ends_within_its_grace_even_with_a_blocking_task_running() {
    let mut server = Server::start(&[
        "--shutdown-grace-seconds",
        "1",
        "--max-text-bytes",
        "4000000",
        "--max-queued-tokens",
        "100000000",
        "--max-message-bytes",
        "400000000",
    ]);
    let mut client = RotationServiceClient::new(server.serving().await);
    let text = "She gave her brother the book she had promised him. ".repeat(60_000);
    let texts = vec![text; 4];
    let in_flight = tokio::spawn(async move { client.tokenize(proto::TokenizeRequest { texts }).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!in_flight.is_finished(), "the Tokenize should still be running");
    let started = Instant::now();
    let status = server.terminate(Duration::from_secs(15));
    assert!(!status.success(), "exit status {status:?}");
    let log = server.log();
    assert!(log.contains("blocking task(s) still running"), "{log}");
    eprintln!("exited {:?} after SIGTERM", started.elapsed());
}
