//! The life of counsellor credentials on the admin machine: the register
//! of what was issued, renewal, and revocation.
//!
//! Every credential `org add-counsellor` or `org renew` issues is recorded
//! in `DIR/issued.toml` (pseudonym, serial number, expiry, identity file).
//! `org list` reads it. `org revoke` marks credentials revoked there and
//! writes `DIR/counsellors.crl.pem`, an X.509 revocation list signed by the
//! counsellor CA. The relay needs only that list (and the CA certificate):
//! it refuses revoked credentials at sign-in and cuts off a revoked
//! counsellor who is signed in. The register holds no secrets; it lives
//! with the organisation key, never on the relay.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{CRL_FILE, OrgError, REGISTER_FILE, io_err, load_ca, malformed, now_unix, tls_err};

/// One issued relay credential.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Issued {
    pub pseudonym: String,
    /// The credential's serial number, hex.
    pub serial: String,
    /// Unix seconds at which it expires.
    pub not_after: u64,
    /// The identity file it was written to.
    pub identity: PathBuf,
    /// Unix seconds at which it was revoked, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
}

/// What a credential's state is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Valid,
    Expired,
    Revoked,
}

impl Issued {
    pub fn status(&self, now: u64) -> Status {
        if self.revoked_at.is_some() {
            Status::Revoked
        } else if self.not_after <= now {
            Status::Expired
        } else {
            Status::Valid
        }
    }
}

/// The register file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    #[serde(default, rename = "credential")]
    pub credentials: Vec<Issued>,
}

impl Register {
    /// Reads `DIR/issued.toml`; a folder without one has issued nothing.
    pub fn load(dir: &Path) -> Result<Register, OrgError> {
        let path = dir.join(REGISTER_FILE);
        match crate::files::read_text(&path, crate::files::MAX_LIST_BYTES) {
            Ok(text) => {
                toml::from_str(&text).map_err(|e| malformed(&path, e.message().to_string()))
            }
            Err(crate::files::FileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Register::default())
            }
            Err(crate::files::FileError::Io(e)) => Err(io_err(&path)(e)),
            Err(other) => Err(malformed(&path, other.to_string())),
        }
    }

    fn save(&self, dir: &Path) -> Result<(), OrgError> {
        let text = "# Fluister: counsellor credentials issued by this organisation.\n\
                    # Written by `fluister org`; keep it with the organisation key.\n"
            .to_string()
            + &toml::to_string(self).map_err(|e| OrgError::Invalid(e.to_string()))?;
        replace_file(&dir.join(REGISTER_FILE), text.as_bytes())
    }

    /// The newest credential issued to `pseudonym`.
    pub fn latest(&self, pseudonym: &str) -> Option<&Issued> {
        self.credentials
            .iter()
            .filter(|i| i.pseudonym == pseudonym)
            .max_by_key(|i| i.not_after)
    }
}

/// Writes `contents` to `path` through a temporary file and a rename, so a
/// reader sees the old file or the new one, never half of one. Mode 0600.
pub fn replace_file(path: &Path, contents: &[u8]) -> Result<(), OrgError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    super::write_new(&tmp, contents, true)?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Adds a newly issued credential to the register.
pub(super) fn record(dir: &Path, issued: Issued) -> Result<(), OrgError> {
    let mut register = Register::load(dir)?;
    register.credentials.push(issued);
    register.save(dir)
}

/// Revokes every unrevoked credential of `who` (a pseudonym or a serial
/// number) and writes the revocation list anew. Returns what was revoked
/// and the list's path.
pub fn revoke(dir: &Path, who: &str) -> Result<(Vec<Issued>, PathBuf), OrgError> {
    let mut register = Register::load(dir)?;
    let now = now_unix();
    let mut revoked = Vec::new();
    for issued in &mut register.credentials {
        if (issued.pseudonym == who || issued.serial.eq_ignore_ascii_case(who))
            && issued.revoked_at.is_none()
        {
            issued.revoked_at = Some(now);
            revoked.push(issued.clone());
        }
    }
    if revoked.is_empty() {
        return Err(OrgError::Invalid(format!(
            "nothing to revoke: no unrevoked credential of {who:?} in {}",
            dir.join(REGISTER_FILE).display()
        )));
    }
    let path = write_revocation_list(dir, &register)?;
    register.save(dir)?;
    Ok((revoked, path))
}

/// Writes `DIR/counsellors.crl.pem`, listing every revoked credential that
/// has not expired yet, signed by the counsellor CA.
pub(super) fn write_revocation_list(dir: &Path, register: &Register) -> Result<PathBuf, OrgError> {
    let (ca_cert, ca_key) = load_ca(dir)?;
    let now = time::OffsetDateTime::now_utc();
    let unix = now_unix();
    let mut revoked_certs = Vec::new();
    for issued in &register.credentials {
        let Some(at) = issued.revoked_at else {
            continue;
        };
        if issued.not_after <= unix {
            continue; // expired anyway
        }
        let serial = hex::decode(&issued.serial)
            .map_err(|_| malformed(&dir.join(REGISTER_FILE), "a serial is not hex"))?;
        revoked_certs.push(rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&serial),
            revocation_time: time::OffsetDateTime::from_unix_timestamp(at as i64).unwrap_or(now),
            reason_code: None,
            invalidity_date: None,
        });
    }
    let params = rcgen::CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(365),
        crl_number: rcgen::SerialNumber::from_slice(&unix.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&ca_cert, &ca_key).map_err(tls_err)?;
    let pem = crl.pem().map_err(tls_err)?;
    let path = dir.join(CRL_FILE);
    replace_file(&path, pem.as_bytes())?;
    // The relay must be able to read it; it holds nothing secret.
    set_public(&path)?;
    Ok(path)
}

fn set_public(path: &Path) -> Result<(), OrgError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(io_err(path))
}
