//! API keys: every RPC except `grpc.health.v1.Health` needs `authorization: Bearer <key>`.
//!
//! Health stays open so that load balancers and Kubernetes probes (which cannot send a key) see
//! SERVING. Reflection is not exempt: it only describes the public API, but an exemption would be
//! one more open door to reason about, and grpcurl sends its `-H` headers with reflection calls
//! too. Keys are compared in constant time, never logged; failures are counted in
//! `rotations_auth_failures_total{reason}`.
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use anyhow::Context as _;
use subtle::ConstantTimeEq;
use tonic::body::Body;
use tonic::Status;

use super::Secret;
use crate::telemetry;

/// Requests on these paths need no key (health probes).
const OPEN_PATH_PREFIX: &str = "/grpc.health.v1.Health/";

/// The keys the server accepts: `--api-key` plus the lines of `--api-keys-file`, which
/// [`ApiKeys::reload`] re-reads (on SIGHUP) so that keys rotate without a restart.
#[derive(Clone, Debug)]
pub struct ApiKeys {
    flag: Option<Secret>,
    file: Option<PathBuf>,
    accepted: Arc<RwLock<Vec<Secret>>>,
}

/// Reads a keys file: one key per line; blank lines and lines starting with `#` are skipped.
pub fn read_keys_file(path: &Path) -> anyhow::Result<Vec<Secret>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the API keys file {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| (i, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(i, line)| {
            // The key itself is not quoted: the message may reach a log.
            line.parse::<Secret>().map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), i + 1))
        })
        .collect()
}

impl ApiKeys {
    /// `None` when neither a key nor a keys file is configured (no authentication).
    pub fn new(flag: Option<Secret>, file: Option<PathBuf>) -> anyhow::Result<Option<Self>> {
        if flag.is_none() && file.is_none() {
            return Ok(None);
        }
        let keys = ApiKeys { flag, file, accepted: Arc::default() };
        keys.reload()?;
        Ok(Some(keys))
    }

    /// Re-reads the keys file; on error the keys in use stay. Returns how many keys are accepted.
    ///
    /// One rule with or without `--api-key`: a keys file that holds no key is refused (at start,
    /// and on SIGHUP, where the keys in use stay), since applying it would lock out every key it held.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let mut keys: Vec<Secret> = self.flag.iter().cloned().collect();
        if let Some(path) = &self.file {
            let from_file = read_keys_file(path)?;
            anyhow::ensure!(!from_file.is_empty(), "{} holds no API key", path.display());
            keys.extend(from_file);
        }
        let count = keys.len();
        *self.accepted.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(count)
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Checks an `authorization` header value. Every key is compared, in constant time each.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), Status> {
        let Some(given) = authorization.and_then(bearer_token) else {
            telemetry::auth_failure("missing");
            return Err(Status::unauthenticated("missing API key: send the metadata `authorization: Bearer <key>`"));
        };
        let accepted = self.accepted.read().unwrap_or_else(|e| e.into_inner());
        let matched = accepted.iter().fold(subtle::Choice::from(0), |m, k| m | k.expose().as_bytes().ct_eq(given));
        if bool::from(matched) {
            Ok(())
        } else {
            telemetry::auth_failure("wrong");
            Err(Status::unauthenticated("wrong API key"))
        }
    }
}

/// `Bearer <token>` (scheme case-insensitive, as HTTP has it) → the token.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ") && !token.is_empty()).then_some(token)
}

/// Re-reads the keys file on every SIGHUP, for the life of the process. Without a keys file a
/// SIGHUP is logged and ignored (its default action would end the server without a drain).
#[cfg(unix)]
pub fn reload_on_sighup(keys: Option<ApiKeys>) -> anyhow::Result<()> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler that reloads the API keys")?;
    let Some(keys) = keys else {
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::warn!("SIGHUP ignored: there is no --api-keys-file to reload");
            }
        });
        return Ok(());
    };
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let file = keys.file().map(|f| f.display().to_string()).unwrap_or_default();
            match keys.reload() {
                Ok(count) => tracing::info!(file, keys = count, "API keys reloaded"),
                Err(e) => {
                    tracing::error!(file, error = %format!("{e:#}"), "API keys NOT reloaded; the previous keys stay")
                }
            }
        }
    });
    Ok(())
}

/// The tower layer that applies [`ApiKeys`] to every request of the server (none when `None`).
#[derive(Clone)]
pub struct AuthLayer(pub Option<ApiKeys>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated { inner, keys: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    keys: Option<ApiKeys>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Authenticated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(keys) = &self.keys {
            if !request.uri().path().starts_with(OPEN_PATH_PREFIX) {
                let header = request.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
                if let Err(status) = keys.check(header) {
                    let path = crate::error::cap(request.uri().path(), 256);
                    tracing::info!(path = %path, message = status.message(), "request refused");
                    return Box::pin(std::future::ready(Ok(status.into_http())));
                }
            }
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> ApiKeys {
        let accepted = list.iter().map(|k| k.parse().unwrap()).collect();
        ApiKeys { flag: None, file: None, accepted: Arc::new(RwLock::new(accepted)) }
    }

    #[test]
    fn bearer_keys_are_checked() {
        let k = keys(&["alpha", "beta-2"]);
        assert!(k.check(Some(b"Bearer alpha")).is_ok());
        assert!(k.check(Some(b"bearer beta-2")).is_ok());
        for (header, expected) in [
            (None, "missing API key"),
            (Some(&b"alpha"[..]), "missing API key"),
            (Some(&b"Bearer "[..]), "missing API key"),
            (Some(&b"Bearer alph"[..]), "wrong API key"),
            (Some(&b"Bearer alphaa"[..]), "wrong API key"),
            (Some(&b"Basic alpha"[..]), "missing API key"),
        ] {
            let status = k.check(header).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(status.message().starts_with(expected), "{header:?}: {}", status.message());
        }
    }

    #[test]
    fn the_keys_file_skips_blanks_and_comments_and_refuses_to_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# rotated 2026-11\n\nfirst-key\n  second-key  \n").unwrap();
        let k = ApiKeys::new(None, Some(path.clone())).unwrap().unwrap();
        assert!(k.check(Some(b"Bearer second-key")).is_ok());
        std::fs::write(&path, "# nobody\n").unwrap();
        let err = k.reload().unwrap_err().to_string();
        assert!(err.contains("holds no API key"), "{err}");
        assert!(k.check(Some(b"Bearer first-key")).is_ok(), "a failed reload keeps the keys in use");
        std::fs::write(&path, "good\nwith space\n").unwrap();
        let err = k.reload().unwrap_err().to_string();
        assert!(err.contains("line 2") && !err.contains("with space"), "{err}");
        assert!(ApiKeys::new(None, None).unwrap().is_none());
    }
}
