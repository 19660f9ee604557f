//! The operator's key material on disk: the organisation folder and the
//! counsellor identity files.
//!
//! `fluister org init` ([`init`]) writes a folder with the organisation's
//! Ed25519 signing key, its public key as one line, the relay's TLS
//! certificate and key, the counsellor CA and a relay config that points at
//! them. `fluister org add-counsellor` ([`add_counsellor`]) reads that folder
//! and writes one identity file per counsellor: an X25519 end-to-end key, the
//! organisation's certificate for it, and a separate TLS client credential for
//! signing in to the relay. Counsellor clients read it with
//! [`Identity::load`]. Secret files are created with mode 0600 and never
//! overwritten, except that `org renew` replaces an identity file in place.
//! [`lifecycle`] keeps the register of issued credentials and the revocation
//! list (`org list`, `org renew`, `org revoke`). Nothing here is per-session.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use rand_core::{CryptoRng, RngCore};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

pub mod lifecycle;

use crate::core::frame::Label;
use crate::crypto::cert::{self, CertError, CertificateBody, OrgPublicKey};
use crate::crypto::e2e::{self, CounsellorKeys};

pub const ORG_KEY_FILE: &str = "org.key";
pub const ORG_PUB_FILE: &str = "org.pub";
pub const RELAY_CERT_FILE: &str = "relay-cert.pem";
pub const RELAY_KEY_FILE: &str = "relay-key.pem";
pub const CA_CERT_FILE: &str = "counsellor-ca.pem";
pub const CA_KEY_FILE: &str = "counsellor-ca.key";
pub const RELAY_CONFIG_FILE: &str = "relay.toml";
pub const COUNSELLORS_DIR: &str = "counsellors";
/// The register of issued counsellor credentials (admin machine only).
pub const REGISTER_FILE: &str = "issued.toml";
/// The revocation list `org revoke` writes; the relay reads it.
pub const CRL_FILE: &str = "counsellors.crl.pem";
/// Default lifetime of a counsellor certificate and credential, in days.
pub const DEFAULT_COUNSELLOR_DAYS: u32 = 30;
/// Lifetime of the relay TLS certificate `org init` writes, in days.
pub const RELAY_CERT_DAYS: u32 = 90;
const ORG_KEY_KIND: &str = "fluister organisation key v1";
const IDENTITY_KIND: &str = "fluister counsellor identity v1";

/// Why key material could not be made or read. Each names the file.
#[derive(Debug, Error)]
pub enum OrgError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `org init` or `add-counsellor` would overwrite an existing file.
    #[error("{0} already exists; refusing to overwrite key material")]
    Exists(PathBuf),
    /// A file is not in the expected format.
    #[error("{path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
    /// A certificate in an identity file does not verify.
    #[error("{path}: counsellor certificate refused: {source}")]
    Certificate { path: PathBuf, source: CertError },
    /// Generating X.509 material failed.
    #[error("generating TLS material: {0}")]
    Tls(String),
    /// A bad argument (pseudonym, lifetime).
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OrgError + '_ {
    move |source| OrgError::Io {
        path: path.to_owned(),
        source,
    }
}

fn tls_err(e: rcgen::Error) -> OrgError {
    OrgError::Tls(e.to_string())
}

/// Writes a new file; refuses to overwrite. Secret files get mode 0600.
pub fn write_new(path: &Path, contents: &[u8], secret: bool) -> Result<(), OrgError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    options.mode(if secret { 0o600 } else { 0o644 });
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            OrgError::Exists(path.to_owned())
        } else {
            OrgError::Io {
                path: path.to_owned(),
                source: e,
            }
        }
    })?;
    file.write_all(contents).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Reads a key file or certificate, refusing one larger than any of its
/// kind can be.
fn read_text(path: &Path) -> Result<Zeroizing<String>, OrgError> {
    crate::files::read_text(path, crate::files::MAX_PEM_BYTES)
        .map(Zeroizing::new)
        .map_err(|e| match e {
            crate::files::FileError::Io(source) => OrgError::Io {
                path: path.to_owned(),
                source,
            },
            other => malformed(path, other.to_string()),
        })
}

fn malformed(path: &Path, reason: impl Into<String>) -> OrgError {
    OrgError::Malformed {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn hex32(path: &Path, field: &str, s: &str) -> Result<Zeroizing<[u8; 32]>, OrgError> {
    let bytes = Zeroizing::new(
        hex::decode(s.trim()).map_err(|_| malformed(path, format!("`{field}` is not hex")))?,
    );
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| malformed(path, format!("`{field}` must be 32 bytes")))?;
    Ok(Zeroizing::new(arr))
}

/// Wall-clock seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

pub use crate::tls::{loopback_hosts, self_signed_relay_cert};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrgKeyFile {
    kind: String,
    secret_key: String,
    public_key: String,
}

/// What `org init` wrote.
#[derive(Debug)]
pub struct InitReport {
    pub dir: PathBuf,
    pub org_public_key: OrgPublicKey,
}

/// Creates an organisation folder. `hosts` are the relay certificate's names.
pub fn init(
    dir: &Path,
    hosts: &[String],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<InitReport, OrgError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    for name in [
        ORG_KEY_FILE,
        ORG_PUB_FILE,
        RELAY_CERT_FILE,
        RELAY_KEY_FILE,
        CA_CERT_FILE,
        CA_KEY_FILE,
    ] {
        if dir.join(name).exists() {
            return Err(OrgError::Exists(dir.join(name)));
        }
    }
    let org_key = e2e::generate_org_key(rng);
    let org_public = OrgPublicKey::from_signing_key(&org_key);
    let key_file = OrgKeyFile {
        kind: ORG_KEY_KIND.into(),
        secret_key: hex::encode(org_key.to_bytes()),
        public_key: org_public.to_hex(),
    };
    let key_text = Zeroizing::new(
        "# Fluister organisation signing key. Keep it offline, never on the relay.\n".to_string()
            + &toml::to_string(&key_file).map_err(|e| OrgError::Invalid(e.to_string()))?,
    );
    drop(Zeroizing::new(key_file.secret_key));
    write_new(&dir.join(ORG_KEY_FILE), key_text.as_bytes(), true)?;
    write_new(
        &dir.join(ORG_PUB_FILE),
        format!("{}\n", org_public.to_hex()).as_bytes(),
        false,
    )?;

    let (relay_cert, relay_key) =
        self_signed_relay_cert(hosts, RELAY_CERT_DAYS).map_err(|e| OrgError::Tls(e.to_string()))?;
    write_new(&dir.join(RELAY_CERT_FILE), relay_cert.as_bytes(), false)?;
    write_new(&dir.join(RELAY_KEY_FILE), relay_key.as_bytes(), true)?;

    let ca_key = KeyPair::generate().map_err(tls_err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "fluister counsellor CA");
    ca.distinguished_name = dn;
    validity(&mut ca, 3650);
    let ca_cert = ca.self_signed(&ca_key).map_err(tls_err)?;
    write_new(&dir.join(CA_CERT_FILE), ca_cert.pem().as_bytes(), false)?;
    write_new(
        &dir.join(CA_KEY_FILE),
        Zeroizing::new(ca_key.serialize_pem()).as_bytes(),
        true,
    )?;

    // An empty revocation list, so the relay config can name it from day one.
    lifecycle::write_revocation_list(dir, &lifecycle::Register::default())?;

    let config = format!(
        "# Relay config written by `fluister org init`; see deploy/fluister.toml for every key.\n\
         listen = \"127.0.0.1:7443\"\n\
         tls_cert = \"{RELAY_CERT_FILE}\"\n\
         tls_key = \"{RELAY_KEY_FILE}\"\n\
         counsellor_ca = \"{CA_CERT_FILE}\"\n\
         counsellor_crl = \"{CRL_FILE}\"\n\
         \n\
         [admin]\n\
         listen = \"127.0.0.1:7444\"\n"
    );
    let config_path = dir.join(RELAY_CONFIG_FILE);
    if !config_path.exists() {
        write_new(&config_path, config.as_bytes(), false)?;
    }
    Ok(InitReport {
        dir: dir.to_owned(),
        org_public_key: org_public,
    })
}

/// Reads the organisation signing key from an organisation folder and
/// checks it: its public half must be the `public_key` it was written with
/// and the key in `org.pub`, which frontends pin. A damaged key would issue
/// certificates that no young person's frontend accepts.
pub fn load_org_key(dir: &Path) -> Result<SigningKey, OrgError> {
    let path = dir.join(ORG_KEY_FILE);
    let text = read_text(&path)?;
    let file: OrgKeyFile =
        toml::from_str(&text).map_err(|e| malformed(&path, e.message().to_string()))?;
    if file.kind != ORG_KEY_KIND {
        return Err(malformed(
            &path,
            format!("not an organisation key (kind = {:?})", file.kind),
        ));
    }
    let secret_hex = Zeroizing::new(file.secret_key);
    let secret = hex32(&path, "secret_key", &secret_hex)?;
    let key = SigningKey::from_bytes(&secret);
    let public = OrgPublicKey::from_signing_key(&key);
    let damaged = |what: &str| {
        malformed(
            &path,
            format!(
                "the secret key does not match {what}: the file is damaged or from another \
                 organisation; restore it from your backup"
            ),
        )
    };
    if OrgPublicKey::from_hex(&file.public_key).ok() != Some(public) {
        return Err(damaged("its own public_key"));
    }
    let pub_path = dir.join(ORG_PUB_FILE);
    if pub_path.exists() && read_org_public(&pub_path)? != public {
        return Err(damaged(ORG_PUB_FILE));
    }
    Ok(key)
}

/// Reads a one-line organisation public key file (or the key itself).
pub fn read_org_public(path: &Path) -> Result<OrgPublicKey, OrgError> {
    let text = read_text(path)?;
    OrgPublicKey::from_hex(&text)
        .map_err(|_| malformed(path, "not an organisation public key (64 hex digits)"))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    kind: String,
    pseudonym: String,
    org_public_key: String,
    static_secret_key: String,
    certificate: String,
    relay_credential_cert: String,
    relay_credential_key: String,
}

fn file_stem(pseudonym: &str) -> String {
    pseudonym
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The counsellor CA: its certificate (as rcgen needs it to sign) and key.
fn load_ca(dir: &Path) -> Result<(rcgen::Certificate, KeyPair), OrgError> {
    let ca_cert_path = dir.join(CA_CERT_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    let ca_key = KeyPair::from_pem(&read_text(&ca_key_path)?)
        .map_err(|e| malformed(&ca_key_path, e.to_string()))?;
    let ca_pem = read_text(&ca_cert_path)?;
    // The key must be the certificate's: credentials signed by any other
    // key would be refused by every relay that trusts the certificate.
    let der = crate::tls::certs_from_pem("counsellor CA", &ca_pem)
        .map_err(|e| malformed(&ca_cert_path, e.to_string()))?;
    crate::tls::check_chain(&der, now_unix() as i64)
        .map_err(|reason| malformed(&ca_cert_path, reason))?;
    let matches = der.first().is_some_and(|cert| {
        x509_parser::parse_x509_certificate(cert.as_ref())
            .is_ok_and(|(_, cert)| cert.public_key().raw == ca_key.public_key_der().as_slice())
    });
    if !matches {
        return Err(malformed(
            &ca_key_path,
            format!(
                "does not belong to {CA_CERT_FILE}: the file is damaged or from another \
                 organisation; restore it from your backup"
            ),
        ));
    }
    let ca_params = CertificateParams::from_ca_cert_pem(&ca_pem)
        .map_err(|e| malformed(&ca_cert_path, e.to_string()))?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(tls_err)?;
    Ok((ca_cert, ca_key))
}

/// Checks the organisation's signing key and counsellor CA before any
/// `org` command acts: a damaged key is named at once, before it issues
/// anything that clients or the relay would refuse.
pub fn check_keys(dir: &Path) -> Result<(), OrgError> {
    load_org_key(dir)?;
    load_ca(dir)?;
    Ok(())
}

/// Signs a counsellor's end-to-end certificate and relay credential for
/// `days`, for keys the counsellor already has. Returns the identity file
/// and the credential's register entry.
fn issue(
    dir: &Path,
    pseudonym: &str,
    static_secret: &StaticSecret,
    client_key: &KeyPair,
    days: u32,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(IdentityFile, lifecycle::Issued), OrgError> {
    if !(1..=3650).contains(&days) {
        return Err(OrgError::Invalid(
            "--days must be between 1 and 3650".into(),
        ));
    }
    let org_key = load_org_key(dir)?;
    let org_public = OrgPublicKey::from_signing_key(&org_key);
    let now = now_unix();
    let not_after = now + u64::from(days) * 86_400;
    let body = CertificateBody {
        org_key: *org_public.as_bytes(),
        static_key: PublicKey::from(static_secret).to_bytes(),
        not_before: now.saturating_sub(3600),
        not_after,
        pseudonym: Label::new(pseudonym).map_err(|_| {
            OrgError::Invalid(format!(
                "pseudonym must be 1 to {} bytes, printable, without leading or trailing spaces",
                cert::MAX_PSEUDONYM_LEN
            ))
        })?,
    };
    let certificate = body
        .sign(&org_key)
        .map_err(|e| OrgError::Invalid(format!("cannot sign the certificate: {e}")))?;

    // The relay credential: a TLS client certificate from the counsellor CA,
    // a key pair of its own, unrelated to the end-to-end key. Its random
    // serial number is what a revocation names.
    let (ca_cert, ca_key) = load_ca(dir)?;
    let mut serial = [0u8; 16];
    rng.fill_bytes(&mut serial);
    serial[0] &= 0x7f; // a positive number in DER
    serial[0] |= 0x01; // and without leading zero bytes
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, pseudonym);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    validity(&mut params, days);
    let client_cert = params
        .signed_by(client_key, &ca_cert, &ca_key)
        .map_err(tls_err)?;

    let file = IdentityFile {
        kind: IDENTITY_KIND.into(),
        pseudonym: pseudonym.to_owned(),
        org_public_key: org_public.to_hex(),
        static_secret_key: hex::encode(static_secret.to_bytes()),
        certificate: hex::encode(&certificate),
        relay_credential_cert: client_cert.pem(),
        relay_credential_key: client_key.serialize_pem(),
    };
    let issued = lifecycle::Issued {
        pseudonym: pseudonym.to_owned(),
        serial: hex::encode(serial),
        not_after,
        identity: PathBuf::new(),
        revoked_at: None,
    };
    Ok((file, issued))
}

fn identity_text(file: IdentityFile) -> Result<Zeroizing<String>, OrgError> {
    let text = Zeroizing::new(
        "# Fluister counsellor identity. Secret: it signs in to the relay and decrypts chats.\n"
            .to_string()
            + &toml::to_string(&file).map_err(|e| OrgError::Invalid(e.to_string()))?,
    );
    drop(Zeroizing::new(file.static_secret_key));
    drop(Zeroizing::new(file.relay_credential_key));
    Ok(text)
}

/// Issues a counsellor: end-to-end key, org certificate and relay
/// credential, written to `out` or `DIR/counsellors/<pseudonym>.identity`,
/// and recorded in the organisation's register (`DIR/issued.toml`).
pub fn add_counsellor(
    dir: &Path,
    pseudonym: &str,
    days: u32,
    out: Option<&Path>,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<PathBuf, OrgError> {
    let static_secret = e2e::generate_static_secret(rng);
    let client_key = KeyPair::generate().map_err(tls_err)?;
    let (file, mut issued) = issue(dir, pseudonym, &static_secret, &client_key, days, rng)?;
    let path = match out {
        Some(p) => p.to_owned(),
        None => {
            let d = dir.join(COUNSELLORS_DIR);
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
            d.join(format!("{}.identity", file_stem(pseudonym)))
        }
    };
    write_new(&path, identity_text(file)?.as_bytes(), true)?;
    issued.identity = path.clone();
    lifecycle::record(dir, issued)?;
    Ok(path)
}

/// Renews a counsellor's certificate and relay credential for `days`, for
/// the same keys: the identity file is replaced in place and the new
/// credential recorded. The old credential stays valid until it expires
/// unless it is revoked. Returns the identity file's path and the new expiry.
pub fn renew_counsellor(
    dir: &Path,
    pseudonym: &str,
    days: u32,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(PathBuf, u64), OrgError> {
    let register = lifecycle::Register::load(dir)?;
    let path = register
        .latest(pseudonym)
        .map(|i| i.identity.clone())
        .ok_or_else(|| OrgError::Invalid(format!("no counsellor {pseudonym:?} was issued here")))?;
    let text = read_text(&path)?;
    let old: IdentityFile =
        toml::from_str(&text).map_err(|e| malformed(&path, e.message().to_string()))?;
    let static_hex = Zeroizing::new(old.static_secret_key);
    let static_secret = StaticSecret::from(*hex32(&path, "static_secret_key", &static_hex)?);
    let key_pem = Zeroizing::new(old.relay_credential_key);
    let client_key = KeyPair::from_pem(&key_pem).map_err(|e| malformed(&path, e.to_string()))?;
    let (file, mut issued) = issue(dir, pseudonym, &static_secret, &client_key, days, rng)?;
    lifecycle::replace_file(&path, identity_text(file)?.as_bytes())?;
    issued.identity = path.clone();
    let not_after = issued.not_after;
    lifecycle::record(dir, issued)?;
    Ok((path, not_after))
}

/// A counsellor identity, loaded and checked.
pub struct Identity {
    pub pseudonym: String,
    pub keys: CounsellorKeys,
    /// PEM client certificate for signing in to the relay.
    pub relay_credential_cert: String,
    /// PEM private key of the relay credential.
    pub relay_credential_key: Zeroizing<String>,
    /// Unix time the certificate expires.
    pub not_after: u64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("pseudonym", &self.pseudonym)
            .finish_non_exhaustive()
    }
}

/// A TLS certificate chain and its private key, as a client presents them.
pub type Credential = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

impl Identity {
    /// The relay sign-in credential, parsed for a TLS client config.
    pub fn relay_credential(&self) -> Result<Credential, crate::tls::TlsError> {
        Ok((
            crate::tls::certs_from_pem("relay credential", &self.relay_credential_cert)?,
            crate::tls::key_from_pem("relay credential", &self.relay_credential_key)?,
        ))
    }

    /// Reads an identity file and checks that its certificate verifies
    /// under its organisation key, is valid now, and certifies its key.
    pub fn load(path: &Path) -> Result<Identity, OrgError> {
        let text = read_text(path)?;
        let file: IdentityFile =
            toml::from_str(&text).map_err(|e| malformed(path, e.message().to_string()))?;
        let relay_credential_key = Zeroizing::new(file.relay_credential_key);
        let static_hex = Zeroizing::new(file.static_secret_key);
        if file.kind != IDENTITY_KIND {
            return Err(malformed(
                path,
                format!("not a counsellor identity (kind = {:?})", file.kind),
            ));
        }
        let org = OrgPublicKey::from_hex(&file.org_public_key)
            .map_err(|_| malformed(path, "bad `org_public_key`"))?;
        let static_secret = StaticSecret::from(*hex32(path, "static_secret_key", &static_hex)?);
        let certificate = hex::decode(file.certificate.trim())
            .map_err(|_| malformed(path, "`certificate` is not hex"))?;
        let public = PublicKey::from(&static_secret).to_bytes();
        let verified = cert::verify(&certificate, &org, now_unix(), &public).map_err(|source| {
            OrgError::Certificate {
                path: path.to_owned(),
                source,
            }
        })?;
        Ok(Identity {
            pseudonym: verified.pseudonym().to_owned(),
            not_after: verified.not_after(),
            keys: CounsellorKeys {
                static_secret,
                certificate,
                org,
            },
            relay_credential_cert: file.relay_credential_cert,
            relay_credential_key,
        })
    }
}
