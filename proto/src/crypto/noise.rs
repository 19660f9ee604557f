//! `Noise_NX_25519_ChaChaPoly_SHA256`, built on x25519-dalek,
//! chacha20poly1305, sha2 and hkdf (Noise spec rev. 34; PROTOCOL.md §6.1).
//!
//! The flow is a typestate: the initiator calls [`NxInitiator::start`] (→ e)
//! and [`NxInitiatorWaiting::finish`] with message 2; the responder calls
//! [`NxResponder::accept`] with message 1 and [`NxResponderReady::reply`]
//! (← e, ee, s, es). Both end with a [`Transport`] whose messages carry an
//! explicit nonce, so a message can be resent and checked for replay.
//! Every DH result must be contributory: an all-zero result (a low-order
//! point from the peer) aborts the handshake. Keys are zeroized on drop and
//! never shown by `Debug`.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use thiserror::Error;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::padding::{DH_LEN, TAG_LEN};

/// The exact protocol name; 32 bytes, so it is the initial hash as is.
pub const PROTOCOL_NAME: &[u8; 32] = b"Noise_NX_25519_ChaChaPoly_SHA256";

/// Why a handshake or transport step failed.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum NoiseError {
    /// A message shorter than its fixed parts.
    #[error("handshake message too short")]
    ShortMessage,
    /// A DH result was all zeros: the peer sent a low-order point.
    #[error("peer sent a low-order public key")]
    LowOrderPoint,
    /// Authentication failed: wrong key, tampered or replayed bytes.
    #[error("decryption failed")]
    Decrypt,
    /// The nonce space is used up; the chat must end.
    #[error("nonce exhausted")]
    NonceExhausted,
}

/// A ChaCha20-Poly1305 key with the Noise nonce layout.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct CipherKey([u8; 32]);

impl std::fmt::Debug for CipherKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CipherKey(<redacted>)")
    }
}

impl CipherKey {
    fn nonce(n: u64) -> Nonce {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&n.to_le_bytes());
        Nonce::from(nonce)
    }

    /// Encrypts with nonce `n`. `u64::MAX` is reserved by Noise.
    pub fn encrypt(&self, n: u64, ad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        if n == u64::MAX {
            return Err(NoiseError::NonceExhausted);
        }
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
            .encrypt(
                &Self::nonce(n),
                Payload {
                    msg: plaintext,
                    aad: ad,
                },
            )
            .map_err(|_| NoiseError::Decrypt)
    }

    /// Decrypts with nonce `n`.
    pub fn decrypt(
        &self,
        n: u64,
        ad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, NoiseError> {
        if n == u64::MAX {
            return Err(NoiseError::NonceExhausted);
        }
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
            .decrypt(
                &Self::nonce(n),
                Payload {
                    msg: ciphertext,
                    aad: ad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| NoiseError::Decrypt)
    }
}

/// Noise SymmetricState: chaining key, handshake hash, and the current key.
#[derive(Zeroize, ZeroizeOnDrop)]
struct SymmetricState {
    ck: [u8; 32],
    h: [u8; 32],
    #[zeroize(skip)]
    k: Option<CipherKey>,
    n: u64,
}

impl SymmetricState {
    fn new(prologue: &[u8]) -> Self {
        let mut s = SymmetricState {
            ck: *PROTOCOL_NAME,
            h: *PROTOCOL_NAME,
            k: None,
            n: 0,
        };
        s.mix_hash(prologue);
        s
    }

    fn mix_hash(&mut self, data: &[u8]) {
        let mut hasher = Sha256::new();
        hasher.update(self.h);
        hasher.update(data);
        self.h = hasher.finalize().into();
    }

    /// Noise HKDF with two outputs is RFC 5869 HKDF-SHA256 with salt = ck,
    /// empty info and 64 bytes of output.
    fn hkdf2(ck: &[u8; 32], ikm: &[u8]) -> Zeroizing<[u8; 64]> {
        let mut okm = Zeroizing::new([0u8; 64]);
        // 64 bytes is far below HKDF-SHA256's 8160-byte limit, so this cannot fail.
        let _ = Hkdf::<Sha256>::new(Some(ck), ikm).expand(&[], okm.as_mut());
        okm
    }

    fn mix_key(&mut self, ikm: &[u8]) {
        let okm = Self::hkdf2(&self.ck, ikm);
        self.ck.copy_from_slice(&okm[..32]);
        let mut k = [0u8; 32];
        k.copy_from_slice(&okm[32..]);
        self.k = Some(CipherKey(k));
        k.zeroize();
        self.n = 0;
    }

    fn mix_dh(&mut self, secret: &StaticSecret, public: &PublicKey) -> Result<(), NoiseError> {
        let shared = secret.diffie_hellman(public);
        if !shared.was_contributory() {
            return Err(NoiseError::LowOrderPoint);
        }
        self.mix_key(shared.as_bytes());
        Ok(())
    }

    fn encrypt_and_hash(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let ciphertext = match &self.k {
            Some(k) => {
                let c = k.encrypt(self.n, &self.h, plaintext)?;
                self.n += 1;
                c
            }
            None => plaintext.to_vec(),
        };
        self.mix_hash(&ciphertext);
        Ok(ciphertext)
    }

    fn decrypt_and_hash(&mut self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, NoiseError> {
        let plaintext = match &self.k {
            Some(k) => {
                let p = k.decrypt(self.n, &self.h, ciphertext)?;
                self.n += 1;
                p
            }
            None => Zeroizing::new(ciphertext.to_vec()),
        };
        self.mix_hash(ciphertext);
        Ok(plaintext)
    }

    /// Returns (initiator→responder key, responder→initiator key).
    fn split(&self) -> (CipherKey, CipherKey) {
        let okm = Self::hkdf2(&self.ck, &[]);
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        a.copy_from_slice(&okm[..32]);
        b.copy_from_slice(&okm[32..]);
        let keys = (CipherKey(a), CipherKey(b));
        a.zeroize();
        b.zeroize();
        keys
    }
}

fn read_public(bytes: &[u8]) -> Result<PublicKey, NoiseError> {
    let arr: [u8; DH_LEN] = bytes.try_into().map_err(|_| NoiseError::ShortMessage)?;
    Ok(PublicKey::from(arr))
}

/// The transport phase: one key per direction, explicit nonces.
pub struct Transport {
    send: CipherKey,
    recv: CipherKey,
    handshake_hash: [u8; 32],
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transport(<redacted>)")
    }
}

impl Transport {
    /// Encrypts a transport message with nonce `n` (empty associated data).
    pub fn seal(&self, n: u64, plaintext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        self.send.encrypt(n, &[], plaintext)
    }

    /// Decrypts a transport message sent with nonce `n`.
    pub fn open(&self, n: u64, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, NoiseError> {
        self.recv.decrypt(n, &[], ciphertext)
    }

    /// The final handshake hash (channel binding).
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.handshake_hash
    }
}

/// NX initiator before message 1.
pub struct NxInitiator;

/// NX initiator after sending message 1, waiting for message 2.
pub struct NxInitiatorWaiting {
    sym: SymmetricState,
    e: StaticSecret,
}

impl NxInitiator {
    /// Writes message 1 (`-> e`, payload in clear) with the given ephemeral key.
    pub fn start(
        prologue: &[u8],
        e: StaticSecret,
        payload: &[u8],
    ) -> (NxInitiatorWaiting, Vec<u8>) {
        let mut sym = SymmetricState::new(prologue);
        let e_pub = PublicKey::from(&e);
        let mut msg = e_pub.as_bytes().to_vec();
        sym.mix_hash(e_pub.as_bytes());
        // No key yet, so this copies the payload and cannot fail.
        let body = sym.encrypt_and_hash(payload).unwrap_or_default();
        msg.extend_from_slice(&body);
        (NxInitiatorWaiting { sym, e }, msg)
    }
}

/// What the initiator learns from message 2.
pub struct InitiatorDone {
    pub transport: Transport,
    /// The responder's static public key, authenticated by the handshake.
    pub remote_static: [u8; 32],
    pub payload: Zeroizing<Vec<u8>>,
}

impl NxInitiatorWaiting {
    /// Reads message 2 (`<- e, ee, s, es`, encrypted payload).
    pub fn finish(mut self, msg: &[u8]) -> Result<InitiatorDone, NoiseError> {
        if msg.len() < DH_LEN + DH_LEN + TAG_LEN + TAG_LEN {
            return Err(NoiseError::ShortMessage);
        }
        let re = read_public(&msg[..DH_LEN])?;
        self.sym.mix_hash(re.as_bytes());
        self.sym.mix_dh(&self.e, &re)?;
        let rs_bytes = self
            .sym
            .decrypt_and_hash(&msg[DH_LEN..2 * DH_LEN + TAG_LEN])?;
        let rs = read_public(&rs_bytes)?;
        self.sym.mix_dh(&self.e, &rs)?;
        let payload = self.sym.decrypt_and_hash(&msg[2 * DH_LEN + TAG_LEN..])?;
        let (i2r, r2i) = self.sym.split();
        Ok(InitiatorDone {
            transport: Transport {
                send: i2r,
                recv: r2i,
                handshake_hash: self.sym.h,
            },
            remote_static: rs.to_bytes(),
            payload,
        })
    }
}

/// NX responder holding its static key.
pub struct NxResponder;

/// NX responder after reading message 1.
pub struct NxResponderReady {
    sym: SymmetricState,
    re: PublicKey,
}

impl NxResponder {
    /// Reads message 1; returns its (clear) payload.
    pub fn accept(prologue: &[u8], msg: &[u8]) -> Result<(NxResponderReady, Vec<u8>), NoiseError> {
        if msg.len() < DH_LEN {
            return Err(NoiseError::ShortMessage);
        }
        let mut sym = SymmetricState::new(prologue);
        let re = read_public(&msg[..DH_LEN])?;
        sym.mix_hash(re.as_bytes());
        let payload = sym.decrypt_and_hash(&msg[DH_LEN..])?;
        Ok((NxResponderReady { sym, re }, payload.to_vec()))
    }
}

impl NxResponderReady {
    /// Writes message 2 with ephemeral `e` and static `s`.
    pub fn reply(
        mut self,
        s: &StaticSecret,
        e: StaticSecret,
        payload: &[u8],
    ) -> Result<(Vec<u8>, Transport), NoiseError> {
        let e_pub = PublicKey::from(&e);
        let mut msg = e_pub.as_bytes().to_vec();
        self.sym.mix_hash(e_pub.as_bytes());
        self.sym.mix_dh(&e, &self.re)?;
        let s_pub = PublicKey::from(s);
        msg.extend_from_slice(&self.sym.encrypt_and_hash(s_pub.as_bytes())?);
        self.sym.mix_dh(s, &self.re)?;
        msg.extend_from_slice(&self.sym.encrypt_and_hash(payload)?);
        let (i2r, r2i) = self.sym.split();
        Ok((
            msg,
            Transport {
                send: r2i,
                recv: i2r,
                handshake_hash: self.sym.h,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(hex_str: &str) -> StaticSecret {
        let b: [u8; 32] = hex::decode(hex_str).unwrap().try_into().unwrap();
        StaticSecret::from(b)
    }

    #[test]
    fn low_order_points_abort_the_handshake() {
        let (_, msg1) = NxInitiator::start(b"p", StaticSecret::from([7u8; 32]), b"");
        let (ready, _) = NxResponder::accept(b"p", &msg1).unwrap();
        let s = StaticSecret::from([9u8; 32]);
        assert!(ready.reply(&s, StaticSecret::from([3u8; 32]), b"x").is_ok());

        // The all-zero point and the order-8 points give an all-zero DH output.
        let zero = [0u8; 32];
        let (ready, _) = NxResponder::accept(b"p", &zero).unwrap();
        assert_eq!(
            ready.reply(&s, StaticSecret::from([3u8; 32]), b"x").err(),
            Some(NoiseError::LowOrderPoint)
        );
        let (waiting, _) = NxInitiator::start(b"p", key(&"11".repeat(32)), b"");
        let mut msg2 = vec![0u8; 32];
        msg2.extend_from_slice(&[0u8; 64]);
        assert_eq!(waiting.finish(&msg2).err(), Some(NoiseError::LowOrderPoint));
    }

    #[test]
    fn debug_output_shows_no_key() {
        let k = CipherKey([0xab; 32]);
        assert!(!format!("{k:?}").contains("ab"));
        assert!(!format!("{k:?}").contains("171"));
    }
}
