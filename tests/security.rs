//! TLS, mutual TLS and API keys against the real binary, through the CLI: certificates are made
//! here (rcgen), the server runs on a free loopback port, and each mismatch (plaintext against TLS,
//! the reverse, no client certificate, a missing or wrong key) must say what to do.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tempfile::TempDir;

/// The only name the "service" certificate carries.
const SERVICE_NAME: &str = "rotations-headless.default.svc";

/// A CA, a server certificate for localhost and 127.0.0.1, a client certificate, and a client
/// certificate from another CA, as PEM files in a temporary folder.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Self::ca("rotations test CA");
        let stranger = Self::ca("some other CA");
        Self::leaf(dir.path(), "server", vec!["localhost".into(), "127.0.0.1".into()], &ca);
        Self::leaf(dir.path(), "client", vec!["client.test".into()], &ca);
        Self::leaf(dir.path(), "stranger", vec!["stranger.test".into()], &stranger);
        // A replica behind a headless Service: its certificate names the Service, not its IP.
        Self::leaf(dir.path(), "service", vec![SERVICE_NAME.into()], &ca);
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir }
    }

    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    fn leaf(dir: &Path, name: &str, names: Vec<String>, ca: &CertifiedIssuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names).unwrap().signed_by(&key, ca).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn server_flags(&self) -> Vec<String> {
        vec!["--tls-cert".into(), self.path("server.pem"), "--tls-key".into(), self.path("server.key")]
    }

    fn client_flags(&self, who: &str) -> Vec<String> {
        let (cert, key) = (format!("{who}.pem"), format!("{who}.key"));
        vec![
            "--ca-cert".into(),
            self.path("ca.pem"),
            "--client-cert".into(),
            self.path(&cert),
            "--client-key".into(),
            self.path(&key),
        ]
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `rotations serve` on a free loopback port, its log in a file; killed on drop.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
    _log_dir: TempDir,
}

impl Server {
    fn start(extra: &[String]) -> Self {
        let port = free_port();
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("server.log");
        let child = Command::new(env!("CARGO_BIN_EXE_rotations"))
            .args(["serve", "--port", &port.to_string(), "--threads", "1"])
            .arg("--model-dir")
            .arg(bundled_model_dir())
            .arg("--ort-library")
            .arg(ort_library())
            .args(extra)
            .env_remove("ROTATIONS_API_KEY")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Server { child, port, log, _log_dir: log_dir }
    }

    /// Waits until `rotations health` with these client flags says SERVING.
    fn wait_serving(&mut self, address: &str, client_flags: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if cli(&["health", "--server", address], client_flags).status.success() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the server exited with {status}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "not SERVING after 90 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self, scheme: &str, host: &str) -> String {
        format!("{scheme}://{host}:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CLI, with no API key from the environment unless `flags` gives one.
fn cli(args: &[&str], flags: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rotations"))
        .args(args)
        .args(flags)
        .env_remove("ROTATIONS_API_KEY")
        .env_remove("ROTATIONS_SERVER")
        .output()
        .unwrap()
}

/// Runs the CLI, expects failure, returns its stderr.
fn cli_error(args: &[&str], flags: &[String]) -> String {
    let out = cli(args, flags);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    // Said once: no layer of the error repeats another.
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

fn cli_ok(args: &[&str], flags: &[String]) -> String {
    let out = cli(args, flags);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn tls_serves_rpcs_health_and_reflection_and_plaintext_clients_hear_what_to_do() {
    let pki = Pki::new();
    let mut server = Server::start(&pki.server_flags());
    let ca = strings(&["--ca-cert", &pki.path("ca.pem")]);
    let https = server.url("https", "localhost");
    server.wait_serving(&https, &ca);

    // A real handshake: the CLI verifies the certificate against the CA made above, by name and by IP.
    assert!(cli_ok(&["info", "--server", &https], &ca).contains("gpt2-tiny-random"));
    let bare = format!("127.0.0.1:{}", server.port);
    assert!(cli_ok(&["info", "--server", &bare], &ca).contains("gpt2-tiny-random"), "host:port + --ca-cert is TLS");

    // Reflection over TLS, as grpcurl would use it.
    let reflection = reflection_services(&server.url("https", "127.0.0.1"), &pki.path("ca.pem")).await;
    assert!(reflection.contains(&"rotations.v1.RotationService".to_string()), "{reflection:?}");

    let err = cli_error(&["health", "--server", &bare], &[]);
    assert!(err.contains(&format!("if the server uses TLS, try https://{bare}")), "{err}");
    let err = cli_error(&["health", "--server", &https], &[]);
    assert!(err.contains("--ca-cert"), "no trusted CA: {err}");
    // A machine without a system trust store (rustls-native-certs reads only SSL_CERT_FILE/SSL_CERT_DIR when set).
    let empty = pki.dir.path().join("empty-trust-store.pem");
    std::fs::write(&empty, "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rotations"))
        .args(["health", "--server", &https])
        .env("SSL_CERT_FILE", &empty)
        .env_remove("SSL_CERT_DIR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no trusted root certificates") && err.contains("--ca-cert"),
        "{err}"
    );
    let err = cli_error(&["health", "--server", &server.url("http", "localhost")], &ca);
    assert!(err.contains("use https://"), "http:// with a CA is refused, not sent in plaintext: {err}");
}

async fn reflection_services(url: &str, ca: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(ca).unwrap()));
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match responses.message().await.unwrap().and_then(|r| r.message_response) {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[test]
fn a_tls_client_against_a_plaintext_port_hears_to_use_http() {
    let mut server = Server::start(&[]);
    let http = server.url("http", "127.0.0.1");
    server.wait_serving(&http, &[]);
    let pki = Pki::new();
    let err = cli_error(&["health", "--server", &server.url("https", "127.0.0.1")], &pki.client_flags("client"));
    assert!(err.contains("does not speak TLS") && err.contains(&format!("try {http}")), "{err}");
}

#[test]
fn mutual_tls_refuses_clients_without_a_certificate_from_its_ca() {
    let pki = Pki::new();
    let mut flags = pki.server_flags();
    flags.extend(strings(&["--tls-client-ca", &pki.path("ca.pem")]));
    let mut server = Server::start(&flags);
    let https = server.url("https", "localhost");
    server.wait_serving(&https, &pki.client_flags("client"));

    assert!(cli_ok(&["info", "--server", &https], &pki.client_flags("client")).contains("gpt2-tiny-random"));
    let err = cli_error(&["health", "--server", &https], &strings(&["--ca-cert", &pki.path("ca.pem")]));
    assert!(err.contains("mutual TLS") && err.contains("--client-cert"), "{err}");
    let err = cli_error(&["health", "--server", &https], &pki.client_flags("stranger"));
    assert!(err.contains(&https), "a certificate from another CA is refused: {err}");
}

#[test]
fn api_keys_right_wrong_missing_and_rotated_through_the_keys_file() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# team keys\nkey-alpha-1\nkey-beta-1\n").unwrap();
    let metrics_port = free_port();
    let mut server = Server::start(&strings(&[
        "--api-keys-file",
        &keys.display().to_string(),
        "--api-key",
        "key-from-flag",
        "--metrics-port",
        &metrics_port.to_string(),
    ]));
    let url = format!("127.0.0.1:{}", server.port);
    // Health needs no key: probes cannot send one.
    server.wait_serving(&url, &[]);
    let with_key = |key: &str| strings(&["--api-key", key]);

    assert!(cli_ok(&["info", "--server", &url], &with_key("key-alpha-1")).contains("gpt2-tiny-random"));
    assert!(cli_ok(&["info", "--server", &url], &with_key("key-from-flag")).contains("gpt2-tiny-random"));
    let err = cli_error(&["info", "--server", &url], &[]);
    assert!(err.contains("Unauthenticated: missing API key") && err.contains("--api-key"), "{err}");
    let err = cli_error(&["info", "--server", &url], &with_key("key-alpha-2"));
    assert!(err.contains("Unauthenticated: wrong API key"), "{err}");

    // Rotation without downtime: a new file, SIGHUP, the old key refused and the new one accepted.
    std::fs::write(&keys, "key-alpha-2\n").unwrap();
    assert!(Command::new("kill").args(["-HUP", &server.child.id().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cli(&["info", "--server", &url], &with_key("key-alpha-2")).status.success() {
        assert!(Instant::now() < deadline, "the new key was not accepted after SIGHUP:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let err = cli_error(&["info", "--server", &url], &with_key("key-alpha-1"));
    assert!(err.contains("wrong API key"), "{err}");
    assert!(cli_ok(&["info", "--server", &url], &with_key("key-from-flag")).contains("gpt2-tiny-random"));
    assert!(cli_ok(&["health", "--server", &url], &[]).contains("SERVING"));

    let metrics = http_get(metrics_port, "/metrics");
    assert!(metrics.contains("rotations_auth_failures_total{reason=\"missing\"} 1"), "{metrics}");
    assert!(metrics.contains("rotations_auth_failures_total{reason=\"wrong\"} 2"), "{metrics}");
    let log = server.log();
    assert!(log.contains("API keys reloaded"), "{log}");
    for key in ["key-alpha", "key-beta", "key-from-flag"] {
        assert!(!log.contains(key), "the log shows a key:\n{log}");
    }
}

#[test]
fn tls_material_that_does_not_load_stops_the_start_and_names_the_file() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let garbage = garbage.display().to_string();
    let missing = dir.path().join("missing.pem").display().to_string();
    for (flags, expected) in [
        (
            strings(&["--tls-cert", &missing, "--tls-key", &pki.path("server.key")]),
            format!("TLS certificate {missing}"),
        ),
        (
            strings(&["--tls-cert", &garbage, "--tls-key", &pki.path("server.key")]),
            format!("{garbage} holds no PEM certificate"),
        ),
        (strings(&["--tls-cert", &pki.path("server.pem"), "--tls-key", &garbage]), format!("TLS key {garbage}")),
        (
            strings(&["--tls-cert", &pki.path("server.pem"), "--tls-key", &pki.path("client.key")]),
            pki.path("server.pem"),
        ),
        (
            {
                let mut f = pki.server_flags();
                f.extend(strings(&["--tls-client-ca", &garbage]));
                f
            },
            format!("client CA certificate {garbage}"),
        ),
        (strings(&["--api-keys-file", &missing]), format!("API keys file {missing}")),
    ] {
        let mut server = Server::start(&flags);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{flags:?}: the server started:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = server.log();
        assert!(!status.success() && log.contains(&expected), "{flags:?}: expected {expected:?} in:\n{log}");
    }
}

#[test]
fn a_replica_reached_by_ip_is_checked_against_the_name_given_with_tls_server_name() {
    let pki = Pki::new();
    let mut server =
        Server::start(&strings(&["--tls-cert", &pki.path("service.pem"), "--tls-key", &pki.path("service.key")]));
    let https = server.url("https", "127.0.0.1");
    let named = strings(&["--ca-cert", &pki.path("ca.pem"), "--tls-server-name", SERVICE_NAME]);
    server.wait_serving(&https, &named);
    assert!(cli_ok(&["info", "--server", &https], &named).contains("gpt2-tiny-random"));
    let err = cli_error(&["info", "--server", &https], &strings(&["--ca-cert", &pki.path("ca.pem")]));
    assert!(err.contains("does not name this host") && err.contains("--tls-server-name"), "{err}");
    let wrong = strings(&["--ca-cert", &pki.path("ca.pem"), "--tls-server-name", "other.test"]);
    assert!(cli_error(&["info", "--server", &https], &wrong).contains("--tls-server-name"));
}
