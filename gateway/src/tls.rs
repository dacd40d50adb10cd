//! wss://: a rustls server configuration restricted to TLS 1.3, whose certificate can be
//! replaced while the gateway runs (SIGHUP, `systemctl reload`): certificates are renewed
//! every few weeks, and a renewal should not cost every client a reconnect.

use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A fatal `internal_error` alert as a plaintext TLS record (RFC 8446, sections 5.1 and 6:
/// content type 21, legacy version 3.3, length 2, level 2 for fatal, description 80): what a
/// wss:// client refused before its handshake (over the per-IP rate, or at the descriptor
/// limit) is sent. Its TLS library reports the alert; the plain-text HTTP refusal a ws://
/// client gets would read to it as a malformed record.
pub const REFUSAL_ALERT: [u8; 7] = [21, 3, 3, 0, 2, 2, 80];

/// The certificate chain and key every new handshake presents. Sessions already open keep
/// the certificate they were made with.
#[derive(Debug)]
pub struct Certificates {
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Reads the chain and key from these PEM files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Certificates> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = certified_key(&provider, cert_path, key_path)?;
        Ok(Certificates {
            provider,
            current: RwLock::new(Arc::new(current)),
        })
    }

    /// Reads the files again; on any error the current certificate stays.
    pub fn reload(&self, cert_path: &Path, key_path: &Path) -> Result<()> {
        let next = certified_key(&self.provider, cert_path, key_path)?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(next);
        Ok(())
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Some(current.clone())
    }
}

/// A TLS 1.3 acceptor presenting `certificates`.
pub fn acceptor(certificates: Arc<Certificates>) -> Result<tokio_rustls::TlsAcceptor> {
    let config = rustls::ServerConfig::builder_with_provider(certificates.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn certified_key(
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey> {
    let certs: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut read(cert_path)?.as_slice())
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing certificates in {}", cert_path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no certificate",
        cert_path.display()
    );
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut read(key_path)?.as_slice())
        .with_context(|| format!("parsing the key in {}", key_path.display()))?
        .with_context(|| format!("{} holds no private key", key_path.display()))?;
    CertifiedKey::from_der(certs, key, provider).context("the certificate and key do not match")
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}
