//! The end-to-end session between a client and a counsellor (PROTOCOL.md §6),
//! sans-IO: blobs in, blobs out.
//!
//! Client: [`ClientHandshake::start`] gives handshake blob 1 →
//! relay → counsellor: [`counsellor_respond`] checks it and gives blob 2 with
//! the certificate → relay → client: [`ClientHandshake::finish`] verifies the
//! certificate against the pinned organisation key and the handshake key.
//! Only then does either side hold a [`Session`], so no content can be sent
//! before the counsellor is proven. Each [`Session::seal`] produces one
//! fixed-size blob `seq u64 BE | ciphertext`; [`Session::open`] refuses
//! tampered blobs and drops duplicates.

use ed25519_dalek::SigningKey;
use rand_core::{CryptoRng, RngCore};
use thiserror::Error;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use super::cert::{self, CertError, OrgPublicKey, VerifiedCertificate};
use super::noise::{NoiseError, NxInitiator, NxInitiatorWaiting, NxResponder, Transport};
use super::padding::{
    self, HS1_PAYLOAD_LEN, HS2_PAYLOAD_LEN, PaddingError, SEQ_LEN, TRANSPORT_PLAINTEXT_LEN,
};
use crate::core::frame::{BLOB_LEN, Blob, PairingId};
use crate::crypto::content::{Content, ContentError};

/// Fixed label at the start of the prologue; it names the protocol version.
pub const PROLOGUE_LABEL: &[u8] = b"fluister prologue v1";

/// Prologue = label || organisation public key || pairing id (PROTOCOL.md §6.1).
pub fn prologue(org: &OrgPublicKey, pairing_id: &PairingId) -> Vec<u8> {
    let mut p = PROLOGUE_LABEL.to_vec();
    p.extend_from_slice(org.as_bytes());
    p.extend_from_slice(&pairing_id.0);
    p
}

/// Why the end-to-end layer refused something. All of them end the chat.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum E2eError {
    /// The Noise handshake or a transport message failed.
    #[error("{0}")]
    Noise(#[from] NoiseError),
    /// The counsellor certificate was refused.
    #[error("{0}")]
    Certificate(#[from] CertError),
    /// Padding was malformed, or content too long for one message.
    #[error("{0}")]
    Padding(#[from] PaddingError),
    /// Decrypted content broke the content rules.
    #[error("{0}")]
    Content(#[from] ContentError),
    /// Handshake message 2 did not authenticate: the counsellor's side used
    /// another organisation key or pairing (prologue), or the bytes were
    /// tampered with.
    #[error("the counsellor's handshake did not verify (wrong organisation key, or tampering)")]
    HandshakeFailed,
    /// Handshake message 1 carried content; version 1 allows none (§6.1).
    #[error("the young person's handshake carried content, which version 1 does not allow")]
    HelloNotEmpty,
}

fn random_secret(rng: &mut (impl RngCore + CryptoRng)) -> StaticSecret {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(bytes.as_mut());
    StaticSecret::from(*bytes)
}

/// The client's half-done handshake.
pub struct ClientHandshake {
    waiting: NxInitiatorWaiting,
    org: OrgPublicKey,
}

impl ClientHandshake {
    /// Begins the handshake for one pairing; returns handshake blob 1.
    pub fn start(
        org: &OrgPublicKey,
        pairing_id: &PairingId,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> (Self, Blob) {
        Self::start_with_ephemeral(org, pairing_id, random_secret(rng))
    }

    /// As [`ClientHandshake::start`] with a given ephemeral key (test vectors).
    pub fn start_with_ephemeral(
        org: &OrgPublicKey,
        pairing_id: &PairingId,
        e: StaticSecret,
    ) -> (Self, Blob) {
        // An empty payload always fits, so padding cannot fail here.
        let payload = padding::pad(&[], HS1_PAYLOAD_LEN).unwrap_or_default();
        let (waiting, msg) = NxInitiator::start(&prologue(org, pairing_id), e, &payload);
        let blob = Blob::from_slice(&msg).unwrap_or_else(|| Blob::new([0; BLOB_LEN]));
        (ClientHandshake { waiting, org: *org }, blob)
    }

    /// Reads handshake blob 2 and verifies the counsellor. Fails on anything
    /// wrong; the caller must then send nothing but END.
    pub fn finish(
        self,
        blob: &Blob,
        now_unix: u64,
    ) -> Result<(Session, VerifiedCertificate), E2eError> {
        let done = self.waiting.finish(blob.as_bytes()).map_err(|e| match e {
            NoiseError::Decrypt => E2eError::HandshakeFailed,
            other => E2eError::Noise(other),
        })?;
        let cert_bytes = padding::unpad(&done.payload)?;
        let verified = cert::verify(cert_bytes, &self.org, now_unix, &done.remote_static)?;
        Ok((Session::new(done.transport), verified))
    }
}

/// What a counsellor needs to answer handshakes.
pub struct CounsellorKeys {
    pub static_secret: StaticSecret,
    pub certificate: Vec<u8>,
    pub org: OrgPublicKey,
}

impl std::fmt::Debug for CounsellorKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CounsellorKeys(<redacted>)")
    }
}

/// Answers handshake blob 1; returns the session and handshake blob 2.
pub fn counsellor_respond(
    keys: &CounsellorKeys,
    pairing_id: &PairingId,
    blob: &Blob,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(Session, Blob), E2eError> {
    counsellor_respond_with_ephemeral(keys, pairing_id, blob, random_secret(rng))
}

/// As [`counsellor_respond`] with a given ephemeral key (test vectors).
pub fn counsellor_respond_with_ephemeral(
    keys: &CounsellorKeys,
    pairing_id: &PairingId,
    blob: &Blob,
    e: StaticSecret,
) -> Result<(Session, Blob), E2eError> {
    let (ready, payload) = NxResponder::accept(&prologue(&keys.org, pairing_id), blob.as_bytes())?;
    // Message 1's payload is reserved: well-formed padding around nothing.
    if !padding::unpad(&payload)?.is_empty() {
        return Err(E2eError::HelloNotEmpty);
    }
    let padded_cert = padding::pad(&keys.certificate, HS2_PAYLOAD_LEN)?;
    let (msg, transport) = ready.reply(&keys.static_secret, e, &padded_cert)?;
    let blob = Blob::from_slice(&msg).ok_or(PaddingError::Malformed)?;
    Ok((Session::new(transport), blob))
}

/// Result of opening a blob.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// New content, in order.
    Content(Content),
    /// A message already received (a resend or a replay); ignore it.
    Duplicate,
    /// A message ahead of one still missing (lost in a dropped connection);
    /// dropped unread: it stays unacknowledged, so the sender sends it
    /// again, in order, after the missing one.
    Early,
}

/// An established end-to-end session.
#[derive(Debug)]
pub struct Session {
    transport: Transport,
    next_send: u64,
    next_recv: u64,
}

impl Session {
    fn new(transport: Transport) -> Self {
        Session {
            transport,
            next_send: 0,
            next_recv: 0,
        }
    }

    /// Pads, encrypts and numbers one piece of content.
    pub fn seal(&mut self, content: &Content) -> Result<Blob, E2eError> {
        self.seal_raw(&Zeroizing::new(content.encode()))
    }

    /// Encoded content as it is, unchecked: what tests give a receiver
    /// that must refuse it (feature `test-support`).
    #[cfg(any(test, feature = "test-support"))]
    pub fn seal_unchecked(&mut self, content: &[u8]) -> Result<Blob, E2eError> {
        self.seal_raw(content)
    }

    /// Pads, encrypts and numbers encoded content as it is; [`Session::seal`]
    /// gives it checked content.
    fn seal_raw(&mut self, content: &[u8]) -> Result<Blob, E2eError> {
        let padded = padding::pad(content, TRANSPORT_PLAINTEXT_LEN)?;
        let seq = self.next_send;
        let ciphertext = self.transport.seal(seq, &padded)?;
        self.next_send += 1;
        let mut blob = [0u8; BLOB_LEN];
        blob[..SEQ_LEN].copy_from_slice(&seq.to_be_bytes());
        blob[SEQ_LEN..].copy_from_slice(&ciphertext);
        Ok(Blob::new(blob))
    }

    /// Checks, decrypts and unpads one blob. Messages are taken strictly in
    /// sequence: an earlier number is a duplicate, a later one is early;
    /// both are dropped without being read.
    pub fn open(&mut self, blob: &Blob) -> Result<Received, E2eError> {
        let bytes = blob.as_bytes();
        let mut seq_bytes = [0u8; SEQ_LEN];
        seq_bytes.copy_from_slice(&bytes[..SEQ_LEN]);
        let seq = u64::from_be_bytes(seq_bytes);
        if seq < self.next_recv {
            return Ok(Received::Duplicate);
        }
        if seq > self.next_recv {
            return Ok(Received::Early);
        }
        let padded = self.transport.open(seq, &bytes[SEQ_LEN..])?;
        self.next_recv += 1;
        let content = Content::decode(padding::unpad(&padded)?)?;
        Ok(Received::Content(content))
    }

    pub fn handshake_hash(&self) -> &[u8; 32] {
        self.transport.handshake_hash()
    }

    /// How many messages have arrived in order: every sequence number below
    /// this one (what an acknowledgement reports).
    pub fn received(&self) -> u64 {
        self.next_recv
    }

    /// The sequence number the next sealed message will carry.
    pub fn next_seq(&self) -> u64 {
        self.next_send
    }
}

/// A fresh organisation signing key (used by `fluister org init`).
pub fn generate_org_key(rng: &mut (impl RngCore + CryptoRng)) -> SigningKey {
    SigningKey::generate(rng)
}

/// A fresh X25519 static key for a counsellor.
pub fn generate_static_secret(rng: &mut (impl RngCore + CryptoRng)) -> StaticSecret {
    random_secret(rng)
}

/// A counsellor's keys under a fixed organisation key, for unit tests here
/// and in the client (feature `test-support`).
#[cfg(any(test, feature = "test-support"))]
pub fn test_counsellor_keys(static_secret: StaticSecret) -> CounsellorKeys {
    use crate::crypto::cert::CertificateBody;
    let org_key = SigningKey::from_bytes(&[1; 32]);
    let org = OrgPublicKey::from_signing_key(&org_key);
    let certificate = CertificateBody {
        org_key: *org.as_bytes(),
        static_key: x25519_dalek::PublicKey::from(&static_secret).to_bytes(),
        not_before: 0,
        not_after: u64::MAX / 2,
        pseudonym: crate::core::frame::Label::new("Sam").unwrap(),
    }
    .sign(&org_key)
    .unwrap();
    CounsellorKeys {
        static_secret,
        certificate,
        org,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_handshake_message_with_content_is_refused() {
        let keys = test_counsellor_keys(StaticSecret::from([2; 32]));
        let org = keys.org;
        let pairing = PairingId([9; 16]);
        // Message 1 as the spec has it (padding around nothing) is answered;
        // one byte of content is refused, whatever it is.
        let (_, empty) = ClientHandshake::start(&org, &pairing, &mut rand_core::OsRng);
        assert!(counsellor_respond(&keys, &pairing, &empty, &mut rand_core::OsRng).is_ok());
        let payload = padding::pad(&[0x42], HS1_PAYLOAD_LEN).unwrap();
        let (_, msg) = NxInitiator::start(
            &prologue(&org, &pairing),
            StaticSecret::from([4; 32]),
            &payload,
        );
        let blob = Blob::from_slice(&msg).unwrap();
        assert_eq!(
            counsellor_respond(&keys, &pairing, &blob, &mut rand_core::OsRng).err(),
            Some(E2eError::HelloNotEmpty)
        );
    }

    #[test]
    fn debug_output_never_shows_keys_or_content() {
        let keys = test_counsellor_keys(StaticSecret::from([0x5a; 32]));
        let org = keys.org;
        let pairing = PairingId([9; 16]);
        let (hs, blob1) =
            ClientHandshake::start_with_ephemeral(&org, &pairing, StaticSecret::from([0x6b; 32]));
        let (counsellor, blob2) = counsellor_respond_with_ephemeral(
            &keys,
            &pairing,
            &blob1,
            StaticSecret::from([0x7c; 32]),
        )
        .unwrap();
        let (mut client, _) = hs.finish(&blob2, 1_000).unwrap();
        let text = Content::Text {
            last: true,
            text: "geheim bericht".into(),
        };
        let blob = client.seal(&text).unwrap();
        let shown = format!("{keys:?} {client:?} {counsellor:?} {text:?} {blob:?} {pairing:?}");
        for secret in ["5a5a", "6b6b", "7c7c", "geheim", "0909"] {
            assert!(!shown.contains(secret), "{secret} leaked into {shown}");
        }
        assert!(!shown.contains(&hex::encode(&blob.as_bytes()[8..16])));
    }
}
