//! What guards the service: TLS material read from PEM files with errors that name the file, API
//! keys that never reach a log, and the layer that asks every RPC but health for one.
pub mod auth;
pub mod pem;

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tonic::transport::Server;
use tower::layer::util::{Identity, Stack};

use crate::config::ServeConfig;
use auth::{ApiKeys, AuthLayer};

/// The server's TLS and API-key settings, read and checked at start-up.
pub struct ServerSecurity {
    /// The TLS handshake of every connection (done by the accept loop, under its deadline).
    pub tls: Option<TlsAcceptor>,
    auth: AuthLayer,
}

impl ServerSecurity {
    /// Reads the TLS material and the API keys the config names; a file that does not load is an
    /// error naming it. With a keys file, SIGHUP reloads it from now on.
    pub fn from_config(config: &ServeConfig) -> anyhow::Result<Self> {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls_acceptor(cert, key, config.tls_client_ca.as_deref())?),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        let keys = ApiKeys::new(config.api_key.clone(), config.api_keys_file.clone())?;
        #[cfg(unix)]
        auth::reload_on_sighup(keys.clone().filter(|k| k.file().is_some()))?;
        if let Some(file) = &config.api_keys_file {
            warn_if_readable_by_others(file);
        }
        if let Some(cert) = &config.tls_cert {
            warn_if_expiring(cert, std::time::SystemTime::now());
        }
        tracing::info!(
            tls = tls.is_some(),
            mutual_tls = config.tls_client_ca.is_some(),
            api_keys = keys.is_some(),
            "security"
        );
        Ok(ServerSecurity { tls, auth: AuthLayer(keys) })
    }

    /// A server builder with the API-key check on every request, inside `outer` (a layer that sees
    /// every call, refused ones included). TLS is not the builder's: see [`ServerSecurity::tls`].
    pub fn server_builder<L>(&self, outer: L) -> Server<Stack<AuthLayer, Stack<L, Identity>>> {
        Server::builder().layer(outer).layer(self.auth.clone())
    }
}

/// A keys file that every user of the machine can read gives its keys away: said at start-up.
fn warn_if_readable_by_others(file: &Path) {
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(file) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(file = %file.display(), "the API keys file is readable by every user: chmod o-r it");
        }
    }
}

/// Days before a certificate's end from which start-up warns about it.
const CERTIFICATE_WARNING_DAYS: i64 = 30;

/// Warns at start-up about a TLS certificate (the first of the chain) that has expired or expires
/// within [`CERTIFICATE_WARNING_DAYS`]: clients refuse it from then on.
fn warn_if_expiring(cert: &Path, now: std::time::SystemTime) {
    let Ok(chain) = pem::certificate_ders(cert, "TLS certificate") else { return };
    let Some(Ok((_, parsed))) = chain.first().map(|der| x509_parser::parse_x509_certificate(der)) else { return };
    let not_after = parsed.validity().not_after.timestamp();
    let now = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let days = (not_after - now).div_euclid(86_400);
    if not_after <= now {
        tracing::warn!(file = %cert.display(), "the TLS certificate has EXPIRED: clients will refuse it");
    } else if days < CERTIFICATE_WARNING_DAYS {
        tracing::warn!(file = %cert.display(), days_left = days, "the TLS certificate expires soon");
    }
}

/// The server's TLS: its certificate chain and key, and with a client CA, mutual TLS; HTTP/2 by ALPN.
fn tls_acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for root in pem::certificate_ders(ca, "client CA certificate")? {
                roots.add(root).map_err(|e| anyhow::anyhow!("the client CA certificate {}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| anyhow::anyhow!("the client CA certificate {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let chain = pem::certificate_ders(cert, "TLS certificate")?;
    let files = format!("the TLS certificate {} and key {}", cert.display(), key.display());
    let mut config = builder
        .with_single_cert(chain, pem::private_key_der(key, "TLS key")?)
        .map_err(|e| anyhow::anyhow!("{files} do not go together: {}", root_cause(&e)))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The innermost error's message: the layers above it often only repeat it ("tcp connect error: …").
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// A value kept out of every `Debug` output and log line (an API key). `expose` is the one way in.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl FromStr for Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = s.trim();
        if key.is_empty() {
            return Err("an API key cannot be empty".into());
        }
        // A header value carries visible ASCII only; refusing here beats a confusing failure per call.
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("an API key is visible ASCII without spaces".into());
        }
        Ok(Secret(key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let key: Secret = "s3cr3t-key".parse().unwrap();
        assert_eq!(key.expose(), "s3cr3t-key");
        let shown = format!("{:?}", Some(key));
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!("".parse::<Secret>().is_err() && "two words".parse::<Secret>().is_err());
    }
}
