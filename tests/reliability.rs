//! Issue 23 against the real server on 127.0.0.1: no request pins a thread, holds every slot or
//! fills the memory. Each test reproduces a finding (it failed before the fix) with short timeouts.
mod common;

use std::future::Future;
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
        Self::start_limited(extra, None)
    }

    /// [`Server::start`] with at most `nofile` file descriptors (the shell's `ulimit -n`).
    pub fn start_limited(extra: &[&str], nofile: Option<usize>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut command = match nofile {
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), env!("CARGO_BIN_EXE_rotations")]);
                sh
            }
            None => Command::new(env!("CARGO_BIN_EXE_rotations")),
        };
        let child = command
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
        serving_channel(&self.url(), || format!(":\n{}", self.log())).await
    }

    /// Waits until the log shows `needle` (e.g. SERVING, when no plaintext client can ask).
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.log().contains(needle) {
            assert!(Instant::now() < deadline, "no {needle:?} in the log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
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

/// A raw HTTP/2 connection whose streams' receive window is `window` (0: the server can send no
/// data on them), and the task that drives it (answering pings, as a hostile client would).
async fn raw_h2(
    port: u16,
    window: u32,
) -> (h2::client::SendRequest<bytes::Bytes>, h2::client::Connection<tokio::net::TcpStream>) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    h2::client::Builder::new().initial_window_size(window).handshake(tcp).await.unwrap()
}

/// Starts a gRPC call of `method` with one request message on a raw HTTP/2 connection.
fn raw_call(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    method: &str,
    message: &impl prost::Message,
) -> h2::client::ResponseFuture {
    let request = http::Request::post(format!("http://127.0.0.1/rotations.v1.RotationService/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    let payload = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    body.send_data(frame.into(), true).unwrap();
    response
}

fn stream_request(sentences: usize) -> proto::RotationRequest {
    proto::RotationRequest {
        sentences: (0..sentences).map(|i| format!("On day {i} they thanked her.")).collect(),
        target: Some(proto::rotation_request::Target::TargetText(" her".into())),
        ..Default::default()
    }
}

/// Finding 2: StreamRotations on a connection that never reads (receive window 0, pings answered)
/// held their request slots for ever, so every other call got RESOURCE_EXHAUSTED. Now a stream
/// that cannot send for --stream-send-timeout-seconds is cancelled: its slot is freed and its
/// connection closed.
#[tokio::test]
async fn streams_that_never_read_are_cancelled_and_free_their_slots() {
    let server = Server::start(&[
        "--stream-send-timeout-seconds",
        "3",
        "--max-concurrent-requests",
        "3",
        "--max-batch-sentences",
        "16",
    ]);
    let mut client = RotationServiceClient::new(server.serving().await);
    let (mut raw, connection) = raw_h2(server.port, 0).await;
    let connection = tokio::spawn(connection);
    let _responses: Vec<_> = (0..3).map(|_| raw_call(&mut raw, "StreamRotations", &stream_request(200))).collect();
    let tokenize = || proto::TokenizeRequest { texts: vec!["I saw her.".into()] };
    // Let the three streams be admitted first (a probe arriving before the third would take its slot).
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The three streams take every slot while they compute and wait ...
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refused = 0;
    loop {
        match client.tokenize(tokenize()).await {
            Ok(_) if refused > 0 => break,
            Ok(_) => {}
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                refused += 1;
            }
        }
        // ... until their send timeout frees them (before the fix: never).
        assert!(Instant::now() < deadline, "the slots were never freed (refused {refused} times):\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(closed.is_ok(), "the stalled connection is still open");
    assert!(server.log().contains("StreamRotations cancelled"), "{}", server.log());
}

/// Finding 2: one connection could open as many calls as there are slots. The server now
/// advertises --max-streams-per-connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS): clients queue
/// the rest, and h2 refuses streams beyond it.
#[tokio::test]
async fn one_connection_gets_at_most_its_share_of_concurrent_calls() {
    let server = Server::start(&["--max-streams-per-connection", "2"]);
    let _ = server.serving().await;
    let (_raw, mut connection) = raw_h2(server.port, 0).await;
    let settled = tokio::time::timeout(
        Duration::from_secs(10),
        std::future::poll_fn(|cx| {
            let _ = std::pin::Pin::new(&mut connection).poll(cx);
            match connection.max_concurrent_send_streams() {
                2 => std::task::Poll::Ready(()),
                _ => std::task::Poll::Pending,
            }
        }),
    )
    .await;
    assert!(settled.is_ok(), "the server advertised {} streams", connection.max_concurrent_send_streams());
}

/// A self-signed certificate for localhost in `dir` (server.pem, server.key); returns its DER.
fn self_signed(dir: &std::path::Path) -> rustls::pki_types::CertificateDer<'static> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("server.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), certified.signing_key.serialize_pem()).unwrap();
    certified.cert.der().clone()
}

/// Whether the server closes `socket` within `within` (EOF or reset), rather than holding it.
async fn closed_by_server(socket: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    let closed = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // the server's own handshake messages
            }
        }
    };
    tokio::time::timeout(within, closed).await.is_ok()
}

/// Finding 3: the handshake deadline counted raw TCP bytes, so a ClientHello switched it off and a
/// socket that stopped there stayed open for ever (fds 15 → 315 for 300 of them). Now the deadline
/// covers the TLS handshake, and the HTTP/2 preface after a completed one.
#[tokio::test]
async fn stalled_tls_handshakes_and_missing_prefaces_are_disconnected() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let der = self_signed(dir.path());
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let server = Server::start(&[
        "--handshake-timeout-seconds",
        "1",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    server.wait_log("SERVING");
    // The start of a ClientHello (a record of 512 bytes announced, 64 sent), then silence.
    let mut hello = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    let mut partial = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
    partial.resize(64, 0x2a);
    hello.write_all(&partial).await.unwrap();
    // A complete TLS handshake (HTTP/2 by ALPN), then no preface.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut silent = connector.connect(name, tcp).await.expect("the TLS handshake completes");
    assert_eq!(silent.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    assert!(closed_by_server(&mut hello, Duration::from_secs(10)).await, "the stalled ClientHello is still open");
    let closed = async {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 4096];
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    assert!(tokio::time::timeout(Duration::from_secs(10), closed).await.is_ok(), "no preface, still open");
}

/// CPU time (user + system, in clock ticks) the process `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Finding 3: at the file-descriptor limit the accept loop spun at 100% CPU and real clients timed
/// out. Now it backs off on EMFILE, and serves again once descriptors are free.
#[tokio::test]
async fn the_accept_loop_backs_off_at_the_descriptor_limit() {
    // How many descriptors a serving server holds, then a server with only a few more.
    let open = {
        let server = Server::start(&[]);
        let _channel = server.serving().await;
        std::fs::read_dir(format!("/proc/{}/fd", server.child.id())).unwrap().count()
    };
    let server = Server::start_limited(&[], Some(open + 4));
    let channel = server.serving().await;
    let pid = server.child.id();
    let mut flood = Vec::new();
    for _ in 0..20 {
        flood.push(tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - before;
    // Spinning is ~200 ticks (a whole core for 2 s); backing off is a few.
    assert!(used < 60, "the server used {used} ticks of CPU in 2 s at its descriptor limit");
    assert!(server.log().contains("backing off"), "{}", server.log());
    drop(flood);
    drop(channel);
    let mut client = RotationServiceClient::new(server.serving().await);
    client.get_model_info(proto::GetModelInfoRequest {}).await.expect("served again");
}

fn her(sentences: usize) -> proto::RotationRequest {
    stream_request(sentences)
}

/// The status says "do not retry" (gRPC retry pushback, gRFC A6).
fn forbids_retry(status: &tonic::Status) -> bool {
    status.metadata().get("grpc-retry-pushback-ms").is_some_and(|v| v.to_str().unwrap().parse::<i64>().unwrap() < 0)
}

/// Finding 4: CompareGroups checked each group's answer against the message limit, not their sum,
/// and the check was a lower bound: an answer too large to send was computed, then failed with a
/// code clients retry. Now the bound is conservative and summed, checked before any forward pass,
/// and "result too large" carries a retry pushback that tells clients not to retry.
#[tokio::test]
async fn an_answer_too_large_is_refused_before_the_work_and_not_retried() {
    let groups = |n| proto::GroupComparisonRequest {
        groups: vec![
            proto::Group { label: "a".into(), request: Some(her(n)) },
            proto::Group { label: "b".into(), request: Some(her(n)) },
        ],
        options: None,
    };
    // The exact size of the answer, from a server with room for it.
    let size = {
        let server = Server::start(&[]);
        let mut client = RotationServiceClient::new(server.serving().await);
        prost::Message::encoded_len(&client.compare_groups(groups(300)).await.unwrap().into_inner())
    };
    let limit = (size - 1).to_string();
    let server = Server::start(&["--max-message-bytes", &limit]);
    let mut client = RotationServiceClient::new(server.serving().await);
    let status = client.compare_groups(groups(300)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().starts_with("result too large"), "{status:?}");
    assert!(forbids_retry(&status), "{status:?}");
    // Refused before any forward pass: no batch ran.
    assert!(!server.log().contains("batch"), "{}", server.log());
}

/// Finding 4: Tokenize was not counted against the token budget (one 65 MB request: 26 s of CPU,
/// +1.3 GB). Now its texts take room in --max-queued-tokens (a token covers at least a byte), and
/// what can never fit is refused up front.
#[tokio::test]
async fn tokenize_is_counted_against_the_token_budget() {
    let server = Server::start(&["--max-queued-tokens", "1000"]);
    let mut client = RotationServiceClient::new(server.serving().await);
    let small = proto::TokenizeRequest { texts: vec!["I saw her.".into()] };
    assert_eq!(client.tokenize(small).await.unwrap().into_inner().texts.len(), 1);
    let large = proto::TokenizeRequest { texts: vec!["She saw her. ".repeat(400)] };
    let status = client.tokenize(large).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("texts") && status.message().contains("max_queued_tokens"), "{status:?}");
}

/// Finding 4: target_text had no size limit and was echoed into logs and the grpc-message header
/// (an 8 MB target: a 29 MB log line, RESOURCE_EXHAUSTED). Now it is limited, and what quotes user
/// input is capped.
#[tokio::test]
async fn a_huge_target_is_refused_and_never_echoed_whole() {
    let server = Server::start(&[]);
    let mut client = RotationServiceClient::new(server.serving().await);
    let mut req = her(2);
    req.target = Some(proto::rotation_request::Target::TargetText(" her".repeat(2_000_000)));
    let status = client.analyze(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("target_text:") && status.message().len() < 4096,
        "{}",
        status.message().len()
    );
    // A sentence quoted in an error is capped too (here: the target is not in it).
    let mut req = her(1);
    req.sentences = vec!["word ".repeat(10_000)];
    let status = client.analyze(req).await.unwrap_err();
    assert!(status.message().len() < 4096, "{} bytes", status.message().len());
    assert!(server.log().len() < 64 * 1024, "the log holds {} bytes", server.log().len());
}

/// Finding 4: the default --max-tensor-values (2^24) could not be reached: its tensor alone
/// filled the default message. The default now fits, with the rest of the request.
#[test]
fn the_default_tensor_limit_can_be_reached() {
    use rotations::service::convert::{DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_TENSOR_VALUES};
    let values = DEFAULT_MAX_TENSOR_VALUES;
    let tensor = proto::Tensor { shape: vec![1, values as u32, 1], values: vec![1.0; values] };
    let req = SignificanceRequest { angles: Some(tensor), options: Some(Default::default()), ..Default::default() };
    assert!(prost::Message::encoded_len(&req) <= DEFAULT_MAX_MESSAGE_BYTES);
}

/// Finding 7: CompareGroups took group A in degrees and B in radians and reported a "significant"
/// difference; labels "a" and "a " passed as different. Both are refused now.
#[tokio::test]
async fn compare_groups_refuses_mixed_units_and_labels_that_differ_by_spaces() {
    let server = Server::start(&[]);
    let mut client = RotationServiceClient::new(server.serving().await);
    let group = |label: &str, unit: proto::AngleUnit| {
        let mut request = her(3);
        request.unit = unit as i32;
        proto::Group { label: label.into(), request: Some(request) }
    };
    let compare = |a, b| proto::GroupComparisonRequest { groups: vec![a, b], options: None };
    let mixed = compare(group("a", proto::AngleUnit::Degrees), group("b", proto::AngleUnit::Radians));
    let status = client.compare_groups(mixed).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("groups[1].request.unit"), "{}", status.message());
    let spaced = compare(group("a", proto::AngleUnit::Degrees), group("a ", proto::AngleUnit::Degrees));
    let status = client.compare_groups(spaced).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("groups[1].label"), "{}", status.message());
}

fn sighup(server: &Server) {
    assert!(Command::new("kill").args(["-HUP", &server.child.id().to_string()]).status().unwrap().success());
}

fn with_key(key: &str, req: proto::TokenizeRequest) -> tonic::Request<proto::TokenizeRequest> {
    let mut request = tonic::Request::new(req);
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

/// Finding 7: SIGHUP ended a server without a keys file (no drain); with --api-key and
/// --api-keys-file, SIGHUP applied an empty file and locked out every file key (the file alone kept
/// its keys). Now SIGHUP without a file is ignored and logged, and an empty file is refused either
/// way. Start-up warns about a keys file readable by everyone; a refused call logs one line.
#[tokio::test]
async fn sighup_and_api_keys_follow_one_rule() {
    let plain = Server::start(&[]);
    let _ = plain.serving().await;
    sighup(&plain);
    plain.wait_log("SIGHUP ignored");
    let mut client = RotationServiceClient::new(plain.serving().await);
    client.get_model_info(proto::GetModelInfoRequest {}).await.expect("still serving after SIGHUP");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, "file-key\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let keyed = Server::start(&["--api-key", "flag-key", "--api-keys-file", file.to_str().unwrap()]);
    let mut client = RotationServiceClient::new(keyed.serving().await);
    assert!(keyed.log().contains("readable by every user"), "{}", keyed.log());
    let texts = || proto::TokenizeRequest { texts: vec!["I saw her.".into()] };
    client.tokenize(with_key("file-key", texts())).await.expect("the file's key works");
    std::fs::write(&file, "# emptied by mistake\n").unwrap();
    sighup(&keyed);
    keyed.wait_log("NOT reloaded");
    client.tokenize(with_key("file-key", texts())).await.expect("the file's key still works");
    client.tokenize(with_key("flag-key", texts())).await.expect("the flag's key works");

    let refused = client.tokenize(with_key("wrong", texts())).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = keyed.log();
    let lines = log.lines().filter(|l| l.contains("wrong API key")).count();
    assert_eq!(lines, 1, "a refused call logs one line:\n{log}");
}

/// Finding 7: nothing warned about an expired TLS certificate until clients failed.
#[tokio::test]
async fn start_up_warns_about_an_expired_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("old.pem"), dir.path().join("old.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let server = Server::start(&["--tls-cert", cert_path.to_str().unwrap(), "--tls-key", key_path.to_str().unwrap()]);
    server.wait_log("SERVING");
    assert!(server.log().contains("the TLS certificate has EXPIRED"), "{}", server.log());
}
