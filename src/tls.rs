//! TLS and QUIC settings for both ends, built with the `ring` provider
//! only: a leaf module that the relay, the clients, `org` and the bench use,
//! and that uses none of them.
//!
//! The relay's rustls config ([`server_config`]) offers ALPN `fluister/1`,
//! TLS 1.3 only, no session tickets or resumption (nothing that links two
//! visits), and optional client certificates checked against the
//! counsellor CA: anonymous clients present none, counsellors present the
//! credential the operator issued. [`client_config`] trusts a pinned
//! certificate or the web PKI and resumes nothing. [`transport_config`]
//! sizes QUIC windows for chat, not bulk data. [`counsellor_credential`]
//! reads the name from a verified credential.
//!
//! PEM parsing ([`certs_from_pem`], [`key_from_pem`], [`read_pem`]),
//! certificate checks ([`check_chain`], [`revocation_list`]) and the
//! relay's self-signed loopback certificate ([`self_signed_relay_cert`])
//! live here too. [`ServerFiles`] is the relay's checked TLS material (the
//! relay reads it from the files its config names); its
//! [`ServerFiles::stateless_reset_key`] derives the QUIC stateless-reset key
//! from the relay's TLS key, so it survives a restart.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use thiserror::Error;
use x509_parser::prelude::FromDer;

use crate::core::frame::{ALPN, MAX_FRAME_LEN};

pub mod by_alpn;

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

/// Reads a PEM file to text, refusing one larger than any PEM file can be.
pub fn read_pem(path: &std::path::Path) -> Result<String, TlsError> {
    crate::files::read_text(path, crate::files::MAX_PEM_BYTES).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        source: match e {
            crate::files::FileError::Io(e) => e,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
        },
    })
}

/// Parses every certificate of a chain in full and checks each one's
/// validity at `now_unix` and each signature whose issuer is in the chain
/// (a self-signed certificate by its own key). A flipped bit anywhere in a
/// certificate fails here rather than in a client's handshake.
pub fn check_chain(chain: &[CertificateDer<'static>], now_unix: i64) -> Result<(), String> {
    let parsed = chain
        .iter()
        .enumerate()
        .map(|(i, der)| {
            x509_parser::parse_x509_certificate(der.as_ref())
                .map(|(_, cert)| cert)
                .map_err(|e| format!("certificate {} does not parse ({e})", i + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (i, cert) in parsed.iter().enumerate() {
        let validity = cert.validity();
        if validity.not_before.timestamp() > now_unix {
            return Err(format!("certificate {} is not valid yet", i + 1));
        }
        if validity.not_after.timestamp() <= now_unix {
            return Err(format!("certificate {} has expired", i + 1));
        }
        let issuer = parsed
            .get(i + 1)
            .filter(|next| next.subject() == cert.issuer())
            .or_else(|| (cert.subject() == cert.issuer()).then_some(cert));
        if let Some(issuer) = issuer {
            cert.verify_signature(Some(issuer.public_key()))
                .map_err(|_| format!("certificate {} has a bad signature", i + 1))?;
        }
    }
    Ok(())
}

fn rustls_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Rustls(e.to_string())
}

/// The relay's TLS material, read from the files a config names and
/// checked to belong together.
pub struct ServerFiles {
    /// The relay's certificate chain, as PEM (clients may pin it) and DER.
    pub chain_pem: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub counsellor_ca: Option<Vec<CertificateDer<'static>>>,
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// Serial numbers of revoked counsellor credentials.
    pub revoked: Vec<Vec<u8>>,
}

impl ServerFiles {
    /// The QUIC stateless-reset key: an HMAC-SHA256 key derived from the
    /// TLS private key, so that it is the same after a restart and secret
    /// like that key.
    pub fn stateless_reset_key(&self) -> ring::hmac::Key {
        let key = self.derive_key::<32>(b"fluister stateless reset v1");
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_ref())
    }

    /// The key of the endpoint's connection-id generator, derived from the
    /// TLS key: a restarted relay must recognise the connection ids it gave
    /// out before, or it drops their packets instead of resetting them.
    pub fn connection_id_key(&self) -> u64 {
        u64::from_le_bytes(*self.derive_key::<8>(b"fluister connection ids v1"))
    }

    /// `N` bytes derived from the TLS private key with HKDF-SHA256 under
    /// `label`.
    fn derive_key<const N: usize>(&self, label: &[u8]) -> zeroize::Zeroizing<[u8; N]> {
        let mut key = zeroize::Zeroizing::new([0u8; N]);
        // A few dozen bytes are far below HKDF-SHA256's limit: this cannot fail.
        let _ = hkdf::Hkdf::<sha2::Sha256>::new(Some(label), self.key.secret_der())
            .expand(&[], key.as_mut());
        key
    }
}

/// Parses a PEM revocation list and checks that the counsellor CA signed
/// it; returns it with the revoked serial numbers.
pub fn revocation_list(
    pem: &str,
    ca: &[CertificateDer<'static>],
) -> Result<(CertificateRevocationListDer<'static>, Vec<Vec<u8>>), String> {
    let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("not a PEM revocation list ({e})"))?;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der.as_ref())
        .map_err(|e| format!("not a revocation list ({e})"))?;
    let signed_by_ca = ca.iter().any(|c| {
        x509_parser::parse_x509_certificate(c.as_ref())
            .map(|(_, cert)| crl.verify_signature(cert.public_key()).is_ok())
            .unwrap_or(false)
    });
    if !signed_by_ca {
        return Err("not signed by the counsellor CA in counsellor_ca".into());
    }
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect();
    Ok((der, revoked))
}

/// The spec's liveness values (PROTOCOL.md §3.1): a connection silent this
/// many seconds is gone, and keep-alives every [`DEFAULT_KEEP_ALIVE_SECS`]
/// keep a live but quiet one open.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 20;
pub const DEFAULT_KEEP_ALIVE_SECS: u64 = 5;

/// QUIC transport sizes: windows in bytes, timeouts.
#[derive(Debug, Clone, Copy)]
pub struct TransportSizes {
    pub stream_receive_window: u32,
    pub receive_window: u32,
    pub idle_timeout: Duration,
    pub keep_alive: Duration,
}

impl Default for TransportSizes {
    /// Room for a few dozen fixed-size frames in flight, not megabytes;
    /// the spec's liveness values (PROTOCOL.md §3.1), so that clients notice
    /// a dead relay within 20 s.
    fn default() -> Self {
        let window = (64 * MAX_FRAME_LEN) as u32;
        TransportSizes {
            stream_receive_window: window,
            receive_window: 2 * window,
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
            keep_alive: Duration::from_secs(DEFAULT_KEEP_ALIVE_SECS),
        }
    }
}

/// Unidirectional streams a peer may open: none are used by the protocol,
/// but HTTP/3 (WebTransport) needs three at once (its control stream and
/// QPACK's two), and browsers refuse a server that grants fewer from the
/// start. A native connection's are never read; what a peer writes to
/// them counts against the connection's receive window (PROTOCOL.md §3.2).
pub const WEB_UNI_STREAMS: u8 = 3;

/// QUIC transport settings for chat-sized traffic.
pub fn transport_config(sizes: TransportSizes) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // One bidirectional control stream per connection (WebTransport's
    // connections get more once their ALPN is known).
    t.max_concurrent_bidi_streams(1u8.into());
    t.max_concurrent_uni_streams(WEB_UNI_STREAMS.into());
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

/// The relay's TLS configs: QUIC (native and WebTransport, one endpoint)
/// and TCP (WebSocket and the page).
pub struct RelayTls {
    pub quic: quinn::ServerConfig,
    pub tcp: Arc<rustls::ServerConfig>,
}

/// The relay's QUIC server config, which picks its TLS config by ALPN
/// ([`by_alpn`]): native clients get `fluister/1` with an optional client
/// certificate, browsers `h3` without one. Also the TCP config for the
/// web paths, which never asks for a client certificate either.
pub fn server_config(
    files: &ServerFiles,
    transport: quinn::TransportConfig,
) -> Result<RelayTls, TlsError> {
    let native = relay_rustls(files, true, vec![ALPN.to_vec()])?;
    let web = relay_rustls(files, false, vec![by_alpn::WEB_ALPN.to_vec()])?;
    let tcp = relay_rustls(files, false, vec![b"http/1.1".to_vec()])?;
    let quic = by_alpn::ByAlpn {
        native: Arc::new(QuicServerConfig::try_from(native).map_err(rustls_err)?),
        web: Arc::new(QuicServerConfig::try_from(web).map_err(rustls_err)?),
    };
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(transport));
    let mut tokens = quinn::ValidationTokenConfig::default();
    tokens.sent(0);
    server.validation_token_config(tokens);
    server.migration(true);
    Ok(RelayTls {
        quic: server,
        tcp: Arc::new(tcp),
    })
}

/// One rustls config of the relay: TLS 1.3, `alpn`, nothing that links
/// visits, and client certificates checked against the counsellor CA
/// when `counsellors` is set and a CA is configured.
fn relay_rustls(
    files: &ServerFiles,
    counsellors: bool,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err)?;
    let builder = match (&files.counsellor_ca, counsellors) {
        (Some(ca), true) => {
            let mut roots = RootCertStore::empty();
            for c in ca {
                roots.add(c.clone()).map_err(rustls_err)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .with_crls(files.crls.iter().cloned())
                .build()
                .map_err(rustls_err)?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut tls = builder
        .with_single_cert(files.chain.clone(), files.key.clone_key())
        .map_err(rustls_err)?;
    tls.alpn_protocols = alpn;
    // Nothing that lets a later visit be linked to this one.
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    tls.max_early_data_size = 0;
    Ok(tls)
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

/// A verified counsellor credential: the pseudonym (its common name, as the
/// operator issued it) and its serial number, to match revocations.
pub struct CounsellorCredential {
    pub pseudonym: String,
    pub serial: Vec<u8>,
}

/// The counsellor credential a connection presented, if any.
pub fn counsellor_credential(connection: &quinn::Connection) -> Option<CounsellorCredential> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = certs.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let pseudonym = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(CounsellorCredential {
        pseudonym,
        serial: parsed.raw_serial().to_vec(),
    })
}

/// A self-signed ECDSA P-256 TLS certificate for the relay, valid for
/// `days`, for the given host names and IP addresses. Returns (cert, key) PEM.
pub fn self_signed_relay_cert(
    hosts: &[String],
    days: u32,
) -> Result<(String, zeroize::Zeroizing<String>), TlsError> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
    let key = KeyPair::generate().map_err(rustls_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rustls_err)?;
    for host in hosts {
        params
            .subject_alt_names
            .push(match host.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.clone().try_into().map_err(rustls_err)?),
            });
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "fluister relay");
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    // The whole validity is `days` long: browsers pin a certificate by its
    // hash only if that is at most 14 days.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = params.not_before + time::Duration::days(i64::from(days));
    let cert = params.self_signed(&key).map_err(rustls_err)?;
    Ok((cert.pem(), zeroize::Zeroizing::new(key.serialize_pem())))
}

/// The default host names of a relay certificate: loopback only.
pub fn loopback_hosts() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
}
