//! How a client reaches a server, in one place for every command: one address syntax (`host:port`
//! as grpcurl and the Python client take it, `http://` plaintext, `https://` TLS, never silently
//! plaintext), the API key on every call, and connection errors that say once what failed and what
//! to try.
use std::error::Error as StdError;
use std::time::Duration;

use anyhow::Context;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Uri};
use tonic::{Request, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::config::ConnectArgs;
pub use crate::security::root_cause;
use crate::security::{pem, Secret};

/// A channel that sends the API key (if any) with every call.
pub type AuthChannel = InterceptedService<Channel, BearerAuth>;

/// How long the first exchange with the server may take before the address is called unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// A server address as given, resolved to a URI and whether it speaks TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub uri: Uri,
    pub tls: bool,
}

impl Address {
    /// `host:port`, `http://host[:port]` or `https://host[:port]`. A bare `host:port` is plaintext
    /// unless TLS material (`--ca-cert`, `--client-cert`) is given; `http://` with TLS material is an
    /// error rather than a plaintext connection the user did not mean.
    pub fn parse(text: &str, tls_material: bool) -> anyhow::Result<Self> {
        let text = text.trim().trim_end_matches('/');
        let (rest, tls) = match text.split_once("://") {
            Some(("https", rest)) => (rest, true),
            Some(("http", rest)) if tls_material => {
                anyhow::bail!(
                    "{text} is plaintext but TLS options (--ca-cert/--client-cert) were given: use https://{rest}"
                )
            }
            Some(("http", rest)) => (rest, false),
            Some((scheme, _)) => anyhow::bail!(
                "unsupported scheme {scheme}:// in {text}: give host:port, http://host:port or https://host:port"
            ),
            None => (text, tls_material),
        };
        // A bare port ("50051") would parse as a host without one: say what is really missing.
        anyhow::ensure!(
            rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()),
            "{text:?} has no host: give host:port, e.g. localhost:{rest}"
        );
        let authority: http::uri::Authority = rest.parse().map_err(|_| {
            anyhow::anyhow!("{text:?} is not an address: give host:port, http://host:port or https://host:port")
        })?;
        anyhow::ensure!(
            !rest.contains(['/', '@']),
            "{text:?} is not an address: give host:port, http://host:port or https://host:port"
        );
        anyhow::ensure!(
            text.contains("://") || authority.port_u16().is_some(),
            "{text:?} has no port: give host:port (the server's default is 50051)"
        );
        let scheme = if tls { "https" } else { "http" };
        let uri = format!("{scheme}://{authority}").parse().context("building the server URI")?;
        Ok(Address { uri, tls })
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Uri's Display adds a trailing '/' for the empty path; show what the user would type.
        write!(f, "{}", self.uri.to_string().trim_end_matches('/'))
    }
}

/// Adds `authorization: Bearer <key>` to every request, and the current span's W3C trace context
/// (`traceparent`) where spans are exported. Its Debug output never shows the key.
#[derive(Clone, Default)]
pub struct BearerAuth(Option<MetadataValue<Ascii>>);

impl BearerAuth {
    pub fn new(key: Option<&Secret>) -> anyhow::Result<Self> {
        let Some(key) = key else { return Ok(BearerAuth(None)) };
        let mut value = MetadataValue::try_from(format!("Bearer {}", key.expose()))
            .map_err(|_| anyhow::anyhow!("the API key is not a valid header value"))?;
        // Kept out of HTTP/2 header compression tables.
        value.set_sensitive(true);
        Ok(BearerAuth(Some(value)))
    }
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "BearerAuth(<redacted>)" } else { "BearerAuth(None)" })
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        crate::telemetry::inject(request.metadata_mut());
        Ok(request)
    }
}

fn client_tls(options: &ConnectArgs) -> anyhow::Result<ClientTlsConfig> {
    let tls = match &options.ca_cert {
        Some(path) => ClientTlsConfig::new().ca_certificate(pem::certificates(path, "CA certificate")?),
        None => ClientTlsConfig::new().with_native_roots(),
    };
    let tls = match &options.tls_server_name {
        Some(name) => tls.domain_name(name.clone()),
        None => tls,
    };
    Ok(match (&options.client_cert, &options.client_key) {
        (Some(cert), Some(key)) => tls.identity(pem::identity(cert, key, "client")?),
        _ => tls,
    })
}

/// Connects to `address` with the TLS and API-key `options`, and checks that a gRPC server answers
/// there (a health check, which needs no key), so a wrong address, port or protocol fails here
/// with a message that says what to try.
pub async fn connect(address: &str, options: &ConnectArgs) -> anyhow::Result<AuthChannel> {
    let tls_material = options.ca_cert.is_some() || options.client_cert.is_some();
    let address = Address::parse(address, tls_material)?;
    let mut endpoint = Endpoint::from(address.uri.clone()).connect_timeout(PROBE_TIMEOUT);
    if address.tls {
        endpoint = endpoint.tls_config(client_tls(options)?).map_err(|e| {
            let files = [&options.ca_cert, &options.client_cert].into_iter().flatten();
            let files: Vec<String> = files.map(|f| f.display().to_string()).collect();
            if options.ca_cert.is_none() {
                // The usual cause: no system trust store (a slim container), or a private CA.
                anyhow::anyhow!(
                    "no trusted root certificates ({}) — give the server's CA with --ca-cert",
                    root_cause(&e)
                )
            } else {
                anyhow::anyhow!("TLS with {}: {}", files.join(" and "), root_cause(&e))
            }
        })?;
    }
    let channel = endpoint.connect().await.map_err(|e| explain(&address, &e))?;
    let mut health = HealthClient::new(channel.clone());
    let probe = health.check(HealthCheckRequest { service: String::new() });
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Err(_) => anyhow::bail!("{address} accepted the connection but did not answer within {PROBE_TIMEOUT:?}"),
        Ok(Err(status)) if is_transport_failure(&status) => return Err(explain(&address, &status)),
        // Any answer, even NOT_SERVING or UNIMPLEMENTED, shows a gRPC server is there.
        Ok(_) => {}
    }
    Ok(InterceptedService::new(channel, BearerAuth::new(options.api_key.as_ref())?))
}

/// A status made on this side from a broken connection, not one the server sent.
pub fn is_transport_failure(status: &Status) -> bool {
    status.source().is_some()
        || (status.code() == tonic::Code::Unknown && status.message().starts_with("h2 protocol error"))
}

fn io_kind(error: &(dyn StdError + 'static)) -> Option<std::io::ErrorKind> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        current = e.source();
    }
    None
}

/// What failed on the way to `address`, and what to try.
pub fn explain(address: &Address, error: &(dyn StdError + 'static)) -> anyhow::Error {
    use std::io::ErrorKind::*;
    let cause = root_cause(error);
    let lower = cause.to_lowercase();
    let hung_up = matches!(io_kind(error), Some(ConnectionReset | BrokenPipe | UnexpectedEof))
        || ["connection closed", "broken pipe", "connection reset", "frame with invalid size"]
            .iter()
            .any(|m| lower.contains(m));
    let host_port = address.uri.authority().map_or_else(String::new, |a| a.to_string());
    let message = if io_kind(error) == Some(ConnectionRefused) {
        format!("no server at {address} — is `rotations serve` running, on that host and port?")
    } else if address.tls && (lower.contains("corrupt message") || lower.contains("invalidcontenttype")) {
        format!("{address}: the server does not speak TLS ({cause}) — try http://{host_port}")
    } else if address.tls && lower.contains("certificate") && lower.contains("required") {
        format!("{address} requires a client certificate (mutual TLS) — give --client-cert and --client-key")
    } else if address.tls && (lower.contains("notvalidforname") || lower.contains("not valid for name")) {
        format!("{address}: the server's certificate does not name this host ({cause}) — connect by a name it carries, or give that name with --tls-server-name")
    } else if address.tls && (lower.contains("invalid peer certificate") || lower.contains("unknownissuer")) {
        format!("{address}: the server's certificate is not trusted ({cause}) — give its CA with --ca-cert")
    } else if address.tls && hung_up {
        // TLS 1.3 finishes the client's side of the handshake before the server checks the client's
        // certificate, so a refused or missing one often shows only as a closed connection.
        format!("{address} closed the TLS connection ({cause}) — if it requires mutual TLS, give --client-cert and --client-key signed by its client CA")
    } else if !address.tls && hung_up {
        format!("{address} hung up without a gRPC answer — if the server uses TLS, try https://{host_port} (with --ca-cert)")
    } else {
        format!("cannot reach {address}: {cause}")
    };
    anyhow::anyhow!(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str, tls_material: bool) -> (String, bool) {
        let a = Address::parse(text, tls_material).unwrap();
        (a.to_string(), a.tls)
    }

    #[test]
    fn one_address_syntax_for_every_client() {
        assert_eq!(parsed("localhost:50051", false), ("http://localhost:50051".into(), false));
        assert_eq!(parsed("127.0.0.1:50051", true), ("https://127.0.0.1:50051".into(), true));
        assert_eq!(parsed("http://127.0.0.1:50051/", false), ("http://127.0.0.1:50051".into(), false));
        assert_eq!(parsed("https://rotations.example.org", false), ("https://rotations.example.org".into(), true));
        assert_eq!(parsed("[::1]:50051", false), ("http://[::1]:50051".into(), false));
        for (text, expected) in [
            ("localhost", "has no port"),
            ("50051", "has no host: give host:port, e.g. localhost:50051"),
            ("http://50051", "has no host"),
            ("grpc://localhost:50051", "unsupported scheme grpc://"),
            ("localhost:50051/v1", "is not an address"),
            ("user@localhost:50051", "is not an address"),
            ("", "is not an address"),
        ] {
            let err = Address::parse(text, false).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
        let err = Address::parse("http://localhost:50051", true).unwrap_err().to_string();
        assert!(err.contains("use https://localhost:50051"), "{err}");
    }

    #[test]
    fn the_key_is_sent_but_never_shown() {
        let key: Secret = "k-123".parse().unwrap();
        let mut auth = BearerAuth::new(Some(&key)).unwrap();
        let request = auth.call(Request::new(())).unwrap();
        assert_eq!(request.metadata().get("authorization").unwrap(), "Bearer k-123");
        assert_eq!(format!("{auth:?}"), "BearerAuth(<redacted>)");
        let request = BearerAuth::new(None).unwrap().call(Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
    }

    #[tokio::test]
    async fn a_closed_port_says_no_server_and_what_to_try() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = connect(&format!("127.0.0.1:{port}"), &ConnectArgs::default()).await.unwrap_err();
        let text = format!("{err:#}");
        assert_eq!(
            text,
            format!("no server at http://127.0.0.1:{port} — is `rotations serve` running, on that host and port?")
        );
    }
}
