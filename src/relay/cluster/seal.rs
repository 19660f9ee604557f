//! Everything relays say to each other through NATS is sealed with the
//! cluster's secret (XChaCha20-Poly1305, a random nonce per message, the
//! subject as associated data). Whoever runs or reads NATS (an operator
//! shared by several helplines, a tap on `>`) sees subjects, sizes and
//! timing, never a queue, a pseudonym or a FORWARD; and a relay of
//! another cluster, or a message moved to another subject, is refused.
//!
//! The secret is 32 random bytes, written as 64 hex digits in the file
//! `cluster.secret_file` (made with e.g. `openssl rand -hex 32`), the same
//! on every relay of the cluster.

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::config::ConfigError;

const NONCE_LEN: usize = 24;

/// The cluster's secret, ready to seal and open.
#[derive(Clone)]
pub struct Seal {
    aead: XChaCha20Poly1305,
}

impl Seal {
    /// Reads the secret from its file; errors name the key and the file.
    pub fn load(path: &Path) -> Result<Seal, ConfigError> {
        let fail = |reason: String| ConfigError::File {
            key: "cluster.secret_file",
            path: path.to_owned(),
            reason,
        };
        let text = Zeroizing::new(
            crate::files::read_text(path, crate::files::MAX_KEY_FILE_BYTES)
                .map_err(|e| fail(e.to_string()))?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), key.as_mut_slice()).map_err(|_| {
            fail("not a cluster secret: 64 hex digits (openssl rand -hex 32)".into())
        })?;
        Ok(Seal::from_key(&key))
    }

    pub fn from_key(key: &[u8; 32]) -> Seal {
        Seal {
            aead: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// `plain`, sealed for `subject`: nonce, then ciphertext and tag.
    pub fn seal(&self, subject: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plain,
            aad: subject.as_bytes(),
        };
        // Encryption fails only for messages beyond 256 GiB.
        let sealed = self
            .aead
            .encrypt(XNonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        [nonce.as_slice(), &sealed].concat()
    }

    /// What was sealed for `subject`, if it was, with this secret.
    pub fn open(&self, subject: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let payload = Payload {
            msg: body,
            aad: subject.as_bytes(),
        };
        self.aead.decrypt(XNonce::from_slice(nonce), payload).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_secret_on_the_same_subject_opens_a_message() {
        let seal = Seal::from_key(&[7; 32]);
        let sealed = seal.seal("f.side.ab", b"a batch");
        assert_eq!(
            seal.open("f.side.ab", &sealed).as_deref(),
            Some(&b"a batch"[..])
        );
        assert_eq!(
            seal.open("f.side.cd", &sealed),
            None,
            "moved to another subject"
        );
        assert_eq!(Seal::from_key(&[8; 32]).open("f.side.ab", &sealed), None);
        assert_eq!(seal.open("f.side.ab", &sealed[..10]), None);
        assert_ne!(
            seal.seal("s", b"x"),
            seal.seal("s", b"x"),
            "a fresh nonce each time"
        );
    }

    #[test]
    fn a_secret_file_must_hold_64_hex_digits() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, format!("{}\n", "ab".repeat(32))).unwrap();
        assert!(Seal::load(&good).is_ok());
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "hunter2").unwrap();
        let err = Seal::load(&bad).err().unwrap().to_string();
        assert!(
            err.contains("cluster.secret_file") && err.contains("64 hex digits"),
            "{err}"
        );
    }
}
