//! Counsellor certificates (PROTOCOL.md §6.2): the organisation's Ed25519
//! signature over a counsellor's X25519 end-to-end key and pseudonym.
//!
//! An admin machine builds a [`CertificateBody`] and signs it with the
//! organisation key ([`CertificateBody::sign`]); the encoded certificate
//! travels in the payload of Noise message 2. The client runs
//! [`verify`] on it with the organisation key its frontend pins, the current
//! time, and the static key the handshake authenticated. Only `verify` can
//! make a [`VerifiedCertificate`].

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use thiserror::Error;

use crate::core::frame::{Label, MAX_LABEL_LEN};

/// Domain separation: what the organisation key signs is always this string
/// followed by the certificate body, and nothing else starts with it.
pub const SIGNING_CONTEXT: &[u8] = b"fluister counsellor certificate v1";
/// The certificate format version this implementation reads and writes.
pub const CERT_VERSION: u8 = 1;
/// Longest pseudonym, in UTF-8 bytes.
pub const MAX_PSEUDONYM_LEN: usize = MAX_LABEL_LEN;
/// Clock difference tolerated on both validity bounds, in seconds.
pub const CLOCK_SKEW_SECS: u64 = 300;
/// Encoded size without the pseudonym.
pub const FIXED_LEN: usize = 1 + 32 + 32 + 8 + 8 + 1 + 64;
/// Largest encoded certificate.
pub const MAX_CERT_LEN: usize = FIXED_LEN + MAX_PSEUDONYM_LEN;

/// The organisation's public key, as a frontend pins it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OrgPublicKey(VerifyingKey);

impl std::fmt::Debug for OrgPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OrgPublicKey({})", self.to_hex())
    }
}

impl OrgPublicKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, CertError> {
        VerifyingKey::from_bytes(bytes)
            .map(OrgPublicKey)
            .map_err(|_| CertError::BadOrgKey)
    }
    /// Parses the one-line form: 64 lowercase or uppercase hex digits.
    pub fn from_hex(s: &str) -> Result<Self, CertError> {
        let bytes: [u8; 32] = hex::decode(s.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(CertError::BadOrgKey)?;
        Self::from_bytes(&bytes)
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }
    pub fn from_signing_key(key: &SigningKey) -> Self {
        OrgPublicKey(key.verifying_key())
    }
}

/// Why a certificate was refused. Each failure has its own variant so a
/// client can tell the user (and a test can tell) exactly what was wrong.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum CertError {
    /// Not a certificate: wrong length, bad pseudonym, trailing bytes.
    #[error("malformed counsellor certificate")]
    Malformed,
    /// A certificate format this version does not know.
    #[error("unsupported counsellor certificate version {0}")]
    UnsupportedVersion(u8),
    /// Not a valid Ed25519 public key.
    #[error("invalid organisation public key")]
    BadOrgKey,
    /// Issued by a different organisation than the one pinned.
    #[error("certificate was issued by a different organisation")]
    WrongOrganisation,
    /// The signature's scalar is not reduced (S ≥ ℓ): a malleated signature.
    #[error("certificate signature is not canonical")]
    NonCanonicalSignature,
    /// The signature does not verify under the organisation key.
    #[error("certificate signature is invalid")]
    BadSignature,
    /// `not_before` is in the future.
    #[error("certificate is not yet valid")]
    NotYetValid,
    /// `not_after` has passed.
    #[error("certificate has expired")]
    Expired,
    /// The certificate names a different key than the handshake used: the
    /// relay (or someone) substituted its own responder.
    #[error("certificate does not match the counsellor's handshake key")]
    KeyMismatch,
}

/// The signed fields of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateBody {
    pub org_key: [u8; 32],
    pub static_key: [u8; 32],
    pub not_before: u64,
    pub not_after: u64,
    /// A pseudonym follows the rules of every label (PROTOCOL.md §4.1):
    /// the one check, [`Label::new`], is the only way to make one.
    pub pseudonym: Label,
}

impl CertificateBody {
    /// The canonical encoding of the signed fields (everything but the signature).
    pub fn encode(&self) -> Result<Vec<u8>, CertError> {
        let mut out = Vec::with_capacity(MAX_CERT_LEN);
        out.push(CERT_VERSION);
        out.extend_from_slice(&self.org_key);
        out.extend_from_slice(&self.static_key);
        out.extend_from_slice(&self.not_before.to_be_bytes());
        out.extend_from_slice(&self.not_after.to_be_bytes());
        let pseudonym = self.pseudonym.as_str().as_bytes();
        out.push(pseudonym.len() as u8);
        out.extend_from_slice(pseudonym);
        Ok(out)
    }

    /// Signs with the organisation key and returns the encoded certificate.
    pub fn sign(&self, org: &SigningKey) -> Result<Vec<u8>, CertError> {
        let mut body = self.encode()?;
        let mut message = SIGNING_CONTEXT.to_vec();
        message.extend_from_slice(&body);
        let signature = org.sign(&message);
        body.extend_from_slice(&signature.to_bytes());
        Ok(body)
    }
}

/// Splits an encoded certificate into its body and signature, strictly.
pub fn parse(bytes: &[u8]) -> Result<(CertificateBody, [u8; 64]), CertError> {
    if bytes.len() < FIXED_LEN || bytes.len() > MAX_CERT_LEN {
        return Err(CertError::Malformed);
    }
    if bytes[0] != CERT_VERSION {
        return Err(CertError::UnsupportedVersion(bytes[0]));
    }
    let take32 = |at: usize| -> [u8; 32] {
        let mut a = [0u8; 32];
        a.copy_from_slice(&bytes[at..at + 32]);
        a
    };
    let take8 = |at: usize| -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&bytes[at..at + 8]);
        u64::from_be_bytes(a)
    };
    let name_len = bytes[81] as usize;
    if bytes.len() != FIXED_LEN + name_len {
        return Err(CertError::Malformed);
    }
    let pseudonym = std::str::from_utf8(&bytes[82..82 + name_len])
        .ok()
        .and_then(|name| Label::new(name).ok())
        .ok_or(CertError::Malformed)?;
    let mut signature = [0u8; 64];
    signature.copy_from_slice(&bytes[82 + name_len..]);
    let body = CertificateBody {
        org_key: take32(1),
        static_key: take32(33),
        not_before: take8(65),
        not_after: take8(73),
        pseudonym,
    };
    Ok((body, signature))
}

/// A certificate that passed every check. Only [`verify`] constructs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCertificate {
    body: CertificateBody,
}

impl VerifiedCertificate {
    pub fn pseudonym(&self) -> &str {
        self.body.pseudonym.as_str()
    }
    pub fn static_key(&self) -> &[u8; 32] {
        &self.body.static_key
    }
    pub fn not_after(&self) -> u64 {
        self.body.not_after
    }
}

/// Whether 32 bytes are the canonical encoding of a curve point that is
/// not of small order.
fn strict_point(bytes: &[u8; 32]) -> bool {
    let compressed = curve25519_dalek::edwards::CompressedEdwardsY(*bytes);
    compressed
        .decompress()
        .is_some_and(|p| p.compress() == compressed && !p.is_small_order())
}

/// Checks a certificate, in this order: format, version, organisation,
/// signature (canonical, then strict Ed25519), validity at `now_unix` (with
/// [`CLOCK_SKEW_SECS`]), and that it certifies `handshake_static`.
pub fn verify(
    bytes: &[u8],
    org: &OrgPublicKey,
    now_unix: u64,
    handshake_static: &[u8; 32],
) -> Result<VerifiedCertificate, CertError> {
    let (body, sig_bytes) = parse(bytes)?;
    if &body.org_key != org.as_bytes() {
        return Err(CertError::WrongOrganisation);
    }
    let mut s = [0u8; 32];
    s.copy_from_slice(&sig_bytes[32..]);
    if bool::from(curve25519_dalek::Scalar::from_canonical_bytes(s).is_none()) {
        return Err(CertError::NonCanonicalSignature);
    }
    let mut r = [0u8; 32];
    r.copy_from_slice(&sig_bytes[..32]);
    // R and A must decode canonically and must not be of small order
    // (PROTOCOL.md §6.2 step 4); the equation is then compared on
    // encodings, without the cofactor.
    if !strict_point(&r) || !strict_point(org.as_bytes()) {
        return Err(CertError::BadSignature);
    }
    let signature = Signature::from_bytes(&sig_bytes);
    let mut message = SIGNING_CONTEXT.to_vec();
    message.extend_from_slice(&bytes[..bytes.len() - 64]);
    org.0
        .verify_strict(&message, &signature)
        .map_err(|_| CertError::BadSignature)?;
    if now_unix.saturating_add(CLOCK_SKEW_SECS) < body.not_before {
        return Err(CertError::NotYetValid);
    }
    if now_unix >= body.not_after.saturating_add(CLOCK_SKEW_SECS) {
        return Err(CertError::Expired);
    }
    if &body.static_key != handshake_static {
        return Err(CertError::KeyMismatch);
    }
    Ok(VerifiedCertificate { body })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;

    fn org(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn body(org_key: &SigningKey) -> CertificateBody {
        CertificateBody {
            org_key: org_key.verifying_key().to_bytes(),
            static_key: [5u8; 32],
            not_before: NOW - DAY,
            not_after: NOW + DAY,
            pseudonym: Label::new("Sam").unwrap(),
        }
    }

    fn check(cert: &[u8], org_key: &SigningKey) -> Result<VerifiedCertificate, CertError> {
        verify(
            cert,
            &OrgPublicKey::from_signing_key(org_key),
            NOW,
            &[5u8; 32],
        )
    }

    #[test]
    fn a_valid_certificate_verifies() {
        let o = org(1);
        let v = check(&body(&o).sign(&o).unwrap(), &o).unwrap();
        assert_eq!(v.pseudonym(), "Sam");
    }

    #[test]
    fn expired_and_not_yet_valid_are_refused() {
        let o = org(1);
        let mut b = body(&o);
        b.not_after = NOW - 2 * CLOCK_SKEW_SECS;
        assert_eq!(check(&b.sign(&o).unwrap(), &o), Err(CertError::Expired));
        let mut b = body(&o);
        b.not_before = NOW + 2 * CLOCK_SKEW_SECS;
        assert_eq!(check(&b.sign(&o).unwrap(), &o), Err(CertError::NotYetValid));
    }

    #[test]
    fn another_organisations_certificate_is_refused() {
        let (mine, theirs) = (org(1), org(2));
        let cert = body(&theirs).sign(&theirs).unwrap();
        assert_eq!(check(&cert, &mine), Err(CertError::WrongOrganisation));
        // Claiming our organisation but signed by theirs: the signature fails.
        let cert = body(&mine).sign(&theirs).unwrap();
        assert_eq!(check(&cert, &mine), Err(CertError::BadSignature));
    }

    #[test]
    fn a_flipped_bit_anywhere_in_the_signature_is_refused() {
        let o = org(1);
        let cert = body(&o).sign(&o).unwrap();
        for bit in 0..512 {
            let mut bad = cert.clone();
            bad[cert.len() - 64 + bit / 8] ^= 1 << (bit % 8);
            let err = check(&bad, &o).unwrap_err();
            assert!(
                matches!(
                    err,
                    CertError::BadSignature | CertError::NonCanonicalSignature
                ),
                "bit {bit}: {err:?}"
            );
        }
        // A flipped bit in the signed body fails too.
        let mut bad = cert.clone();
        bad[40] ^= 1;
        assert_eq!(check(&bad, &o), Err(CertError::BadSignature));
    }

    #[test]
    fn a_non_canonical_signature_is_refused() {
        // Adding the group order ℓ to S gives a signature that lax verifiers
        // accept; it must be refused as non-canonical.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let o = org(1);
        let cert = body(&o).sign(&o).unwrap();
        let at = cert.len() - 32;
        let mut bad = cert.clone();
        let mut carry = 0u16;
        for i in 0..32 {
            let sum = cert[at + i] as u16 + L[i] as u16 + carry;
            bad[at + i] = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(check(&bad, &o), Err(CertError::NonCanonicalSignature));
    }

    #[test]
    fn a_certificate_for_another_key_is_refused() {
        let o = org(1);
        let cert = body(&o).sign(&o).unwrap();
        let r = verify(&cert, &OrgPublicKey::from_signing_key(&o), NOW, &[6u8; 32]);
        assert_eq!(r, Err(CertError::KeyMismatch));
    }

    #[test]
    fn malformed_certificates_are_refused() {
        let o = org(1);
        let cert = body(&o).sign(&o).unwrap();
        let mut long = cert.clone();
        long.push(0);
        assert_eq!(check(&long, &o), Err(CertError::Malformed));
        assert_eq!(
            check(&cert[..cert.len() - 1], &o),
            Err(CertError::Malformed)
        );
        let mut v2 = cert.clone();
        v2[0] = 2;
        assert_eq!(check(&v2, &o), Err(CertError::UnsupportedVersion(2)));
        // A pseudonym that breaks the label rules cannot be put in a
        // certificate at all, and one signed by other software is refused.
        let good = body(&o).sign(&o).unwrap();
        let mut spaced = good.clone();
        spaced[82] = b' ';
        assert_eq!(parse(&spaced), Err(CertError::Malformed));
    }
}
