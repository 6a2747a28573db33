//! `ferrys://`: TLS to the broker (rustls on ring). The broker's
//! certificate is checked against the URL's `ca` (else the public CAs of
//! webpki-roots) and must name the URL's host; with `cert` and `key` the
//! client shows its own, for a broker that requires one (`--tls-ca`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::{Error, TlsTarget};

fn bad(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::Url(format!("{}: {why}", path.display()))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let file = std::fs::File::open(path).map_err(|e| bad(path, e))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut std::io::BufReader::new(file))
        .collect::<Result<_, _>>()
        .map_err(|e| bad(path, e))?;
    if certs.is_empty() {
        return Err(bad(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let file = std::fs::File::open(path).map_err(|e| bad(path, e))?;
    rustls_pemfile::private_key(&mut std::io::BufReader::new(file))
        .map_err(|e| bad(path, e))?
        .ok_or_else(|| bad(path, "holds no PEM private key"))
}

fn config(t: &TlsTarget) -> Result<rustls::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    match &t.ca {
        Some(ca) => {
            for c in certs(ca)? {
                roots.add(c).map_err(|e| bad(ca, e))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Url(format!("TLS: {e}")))?
    .with_root_certificates(roots);
    match (&t.cert, &t.key) {
        (Some(cert), Some(k)) => builder
            .with_client_auth_cert(certs(cert)?, key(k)?)
            .map_err(|e| bad(cert, e)),
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Connects and completes the handshake.
pub(crate) async fn connect(t: &TlsTarget) -> Result<TlsStream<TcpStream>, Error> {
    let connector = TlsConnector::from(Arc::new(config(t)?));
    let name = ServerName::try_from(t.host.clone()).map_err(|e| {
        Error::Url(format!(
            "{:?} cannot be checked against a certificate: {e}",
            t.host
        ))
    })?;
    let tcp = TcpStream::connect((t.host.as_str(), t.port)).await?;
    tcp.set_nodelay(true)?;
    Ok(connector.connect(name, tcp).await?)
}
