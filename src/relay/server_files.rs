//! Reading the relay's TLS material from the files its config names.
//!
//! [`load`] reads the certificate, key, counsellor CA and revocation list,
//! each with a size limit, parses every certificate in full, checks its
//! signature and validity, and checks that the files belong together; the
//! relay calls it at start, on SIGHUP and when the files change, and
//! `--check-config` calls it to validate, so a corrupted certificate is
//! refused before any client meets it. Revoked counsellor credentials are
//! refused during the TLS handshake; [`ServerFiles::revoked`] lists their
//! serial numbers so the relay can also end live sign-ins.

use crate::config::{ConfigError, RelayConfig};
use crate::tls::{
    ServerFiles, certs_from_pem, check_chain, key_from_pem, loopback_hosts, provider,
    revocation_list, self_signed_relay_cert,
};

/// Days a generated certificate is valid: under the 14 days for which
/// browsers pin a certificate by its hash (WebTransport's
/// `serverCertificateHashes`).
pub const GENERATED_CERT_DAYS: u32 = 13;

/// Reads and checks the config's files. Without `tls_cert` and `tls_key`
/// a certificate for loopback is generated. Errors name the key and file.
pub fn load(config: &RelayConfig) -> Result<ServerFiles, ConfigError> {
    let file_err = |key: &'static str, path: &std::path::Path, reason: String| ConfigError::File {
        key,
        path: path.to_owned(),
        reason,
    };
    let read = |key: &'static str, path: &std::path::Path| {
        let limit = match key {
            "counsellor_crl" => crate::files::MAX_LIST_BYTES,
            _ => crate::files::MAX_PEM_BYTES,
        };
        crate::files::read_text(path, limit).map_err(|e| file_err(key, path, e.to_string()))
    };
    let now_unix = crate::org::now_unix() as i64;
    let (chain_pem, key_pem) = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => (
            read("tls_cert", cert)?,
            zeroize::Zeroizing::new(read("tls_key", key)?),
        ),
        _ => self_signed_relay_cert(&loopback_hosts(), GENERATED_CERT_DAYS).map_err(|e| {
            ConfigError::Invalid {
                key: "tls_cert",
                reason: e.to_string(),
            }
        })?,
    };
    let cert_path = config.tls_cert.clone().unwrap_or_default();
    let key_path = config.tls_key.clone().unwrap_or_default();
    let chain = certs_from_pem("certificate", &chain_pem)
        .map_err(|e| file_err("tls_cert", &cert_path, e.to_string()))?;
    check_chain(&chain, now_unix).map_err(|reason| file_err("tls_cert", &cert_path, reason))?;
    let key =
        key_from_pem("key", &key_pem).map_err(|e| file_err("tls_key", &key_path, e.to_string()))?;
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()).map_err(
        |e| {
            file_err(
                "tls_key",
                &key_path,
                format!("does not belong to the certificate in tls_cert ({e})"),
            )
        },
    )?;
    let counsellor_ca = match &config.counsellor_ca {
        Some(path) => {
            let ca = certs_from_pem("counsellor CA", &read("counsellor_ca", path)?)
                .map_err(|e| file_err("counsellor_ca", path, e.to_string()))?;
            check_chain(&ca, now_unix).map_err(|reason| file_err("counsellor_ca", path, reason))?;
            Some(ca)
        }
        None => None,
    };
    let (crls, revoked) = match (&config.counsellor_crl, &counsellor_ca) {
        (Some(path), Some(ca)) => {
            let pem = read("counsellor_crl", path)?;
            let (crl, revoked) = revocation_list(&pem, ca)
                .map_err(|reason| file_err("counsellor_crl", path, reason))?;
            (vec![crl], revoked)
        }
        _ => (Vec::new(), Vec::new()),
    };
    Ok(ServerFiles {
        chain_pem,
        chain,
        key,
        counsellor_ca,
        crls,
        revoked,
    })
}
