//! TLS on the RESP and HTTP ports (rustls on ring): the certificate chain
//! and key from PEM files (`--tls-cert`, `--tls-key`), and with
//! `--tls-ca`, a client certificate signed by that CA required of every
//! client. The handshake runs on the connection's own task, within
//! [`HANDSHAKE_TIMEOUT`], so a client that stalls in it holds up nobody.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::config::SettingsError;

/// How long a client may take over its handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SettingsError> {
    let file = std::fs::File::open(path)
        .map_err(|e| SettingsError(format!("reading {}: {e}", path.display())))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut std::io::BufReader::new(file))
        .collect::<Result<_, _>>()
        .map_err(|e| SettingsError(format!("reading {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(SettingsError(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, SettingsError> {
    let file = std::fs::File::open(path)
        .map_err(|e| SettingsError(format!("reading {}: {e}", path.display())))?;
    rustls_pemfile::private_key(&mut std::io::BufReader::new(file))
        .map_err(|e| SettingsError(format!("reading {}: {e}", path.display())))?
        .ok_or_else(|| SettingsError(format!("{} holds no PEM private key", path.display())))
}

/// The acceptor `config` asks for, if it asks for TLS: its files read and
/// checked now, so that a bad one stops the start with its name.
pub(crate) fn acceptor(config: &Config) -> Result<Option<TlsAcceptor>, SettingsError> {
    let (Some(cert), Some(key_path)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| SettingsError(format!("TLS: {e}")))?;
    let builder = match &config.tls_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| SettingsError(format!("{}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| SettingsError(format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder
        .with_single_cert(certs(cert)?, key(key_path)?)
        .map_err(|e| {
            SettingsError(format!(
                "{} and {} do not make a certificate and its key: {e}",
                cert.display(),
                key_path.display()
            ))
        })?;
    // HTTP/1.1 on the admin port; RESP clients offer no ALPN.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// The HTTP admin port's listener under TLS: each connection's handshake
/// within [`HANDSHAKE_TIMEOUT`]; one that fails is dropped and the next
/// accepted. (Handshakes run one at a time: an admin port's load.)
pub(crate) struct HttpsListener {
    tcp: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
}

impl HttpsListener {
    pub(crate) fn new(tcp: tokio::net::TcpListener, acceptor: TlsAcceptor) -> Self {
        HttpsListener { tcp, acceptor }
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, addr) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Ok(Ok(tls)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await
            {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
