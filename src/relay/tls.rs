//! TLS and QUIC settings for both ends, built with the `ring` provider only.
//!
//! The relay's rustls config offers ALPN `fluister/1`, TLS 1.3 only, no
//! session tickets or resumption (nothing that links two visits), and
//! optional client certificates checked against the counsellor CA: anonymous
//! clients present none, counsellors present the credential the operator
//! issued. [`transport_config`] sizes QUIC windows for chat, not bulk data.
//! [`counsellor_pseudonym`] reads the name from a verified credential.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use thiserror::Error;

use crate::core::frame::{ALPN, MAX_FRAME_LEN};

/// Why TLS material could not be used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// A PEM file held no certificate or no private key.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the certificate, key or CA.
    #[error("TLS setup: {0}")]
    Rustls(String),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses every certificate in a PEM text.
pub fn certs_from_pem(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem(format!("{what}: not a PEM certificate ({e})")))?;
    if certs.is_empty() {
        return Err(TlsError::Pem(format!("{what}: no certificate found")));
    }
    Ok(certs)
}

/// Parses the private key in a PEM text.
pub fn key_from_pem(what: &str, pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| TlsError::Pem(format!("{what}: no private key found ({e})")))
}

/// Reads a PEM file to text.
pub fn read_pem(path: &std::path::Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn rustls_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Rustls(e.to_string())
}

/// QUIC transport sizes: windows in bytes, timeouts.
#[derive(Debug, Clone, Copy)]
pub struct TransportSizes {
    pub stream_receive_window: u32,
    pub receive_window: u32,
    pub idle_timeout: Duration,
    pub keep_alive: Duration,
}

impl Default for TransportSizes {
    /// Room for a few dozen fixed-size frames in flight, not megabytes.
    fn default() -> Self {
        let window = (64 * MAX_FRAME_LEN) as u32;
        TransportSizes {
            stream_receive_window: window,
            receive_window: 2 * window,
            idle_timeout: Duration::from_secs(60),
            keep_alive: Duration::from_secs(15),
        }
    }
}

/// QUIC transport settings for chat-sized traffic.
pub fn transport_config(sizes: TransportSizes) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // One bidirectional control stream per connection; no unidirectional ones.
    t.max_concurrent_bidi_streams(1u8.into());
    t.max_concurrent_uni_streams(0u8.into());
    t.stream_receive_window(sizes.stream_receive_window.into());
    t.receive_window(sizes.receive_window.into());
    t.send_window(u64::from(2 * sizes.receive_window));
    t.datagram_receive_buffer_size(None);
    if let Ok(idle) = quinn::IdleTimeout::try_from(sizes.idle_timeout) {
        t.max_idle_timeout(Some(idle));
    }
    t.keep_alive_interval(Some(sizes.keep_alive));
    t
}

/// The relay's QUIC server config.
pub fn server_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    counsellor_ca: Option<Vec<CertificateDer<'static>>>,
    transport: quinn::TransportConfig,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err)?;
    let builder = match counsellor_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in ca {
                roots.add(c).map_err(rustls_err)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(rustls_err)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder
        .with_single_cert(cert_chain, key)
        .map_err(rustls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // Nothing that lets a later visit be linked to this one.
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(tls).map_err(rustls_err)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(transport));
    let mut tokens = quinn::ValidationTokenConfig::default();
    tokens.sent(0);
    server.validation_token_config(tokens);
    server.migration(true);
    Ok(server)
}

/// A client's QUIC config: trust `roots` (or the public web PKI when
/// `None`), present `credential` if given, resume nothing.
pub fn client_config(
    roots: Option<Vec<CertificateDer<'static>>>,
    credential: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    transport: quinn::TransportConfig,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut store = RootCertStore::empty();
    match roots {
        Some(certs) => {
            for c in certs {
                store.add(c).map_err(rustls_err)?;
            }
        }
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err)?
        .with_root_certificates(store);
    let mut tls = match credential {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(rustls_err)?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    let quic = QuicClientConfig::try_from(tls).map_err(rustls_err)?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(transport));
    client.token_store(Arc::new(quinn::NoneTokenStore));
    Ok(client)
}

/// The common name of a verified client certificate: the counsellor's
/// pseudonym as the operator issued it.
pub fn counsellor_pseudonym(connection: &quinn::Connection) -> Option<String> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = certs.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(cn)
}
