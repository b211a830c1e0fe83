//! TLS material from PEM files, checked when it is read so that a bad file is named at start-up
//! (tonic would otherwise fail later, without saying which file).
use std::path::Path;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Identity};

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// One or more certificates (a chain, or CA roots) from a PEM file.
pub fn certificates(path: &Path, what: &str) -> anyhow::Result<Certificate> {
    let pem = read(path, what)?;
    let count = CertificateDer::pem_slice_iter(&pem)
        .try_fold(0usize, |n, c| c.map(|_| n + 1))
        .map_err(|e| anyhow::anyhow!("the {what} {} is not valid PEM: {e}", path.display()))?;
    anyhow::ensure!(count > 0, "the {what} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display());
    Ok(Certificate::from_pem(pem))
}

/// A certificate chain and its private key (PKCS#8, PKCS#1 or SEC1 PEM).
pub fn identity(cert: &Path, key: &Path, what: &str) -> anyhow::Result<Identity> {
    let cert_pem = certificates(cert, &format!("{what} certificate"))?.into_inner();
    let key_pem = read(key, &format!("{what} key"))?;
    PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| anyhow::anyhow!("the {what} key {} holds no usable PEM private key: {e}", key.display()))?;
    Ok(Identity::from_pem(cert_pem, key_pem))
}

/// The certificates of a PEM file, parsed (at least one).
pub fn certificate_ders(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = certificates(path, what)?.into_inner();
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("the {what} {} is not valid PEM: {e}", path.display()))
}

/// A private key (PKCS#8, PKCS#1 or SEC1 PEM), parsed.
pub fn private_key_der(path: &Path, what: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(&read(path, what)?)
        .map_err(|e| anyhow::anyhow!("the {what} {} holds no usable PEM private key: {e}", path.display()))
}
