//! Padding to fixed sizes (PROTOCOL.md §6.3), so that the length of what a
//! young person types never shows on the wire.
//!
//! Content goes in through [`pad`], which writes `length u16 BE | content |
//! zeros` into exactly the size asked for; [`unpad`] checks that shape
//! strictly (length in range, every padding byte zero) and returns the content.

use thiserror::Error;
use zeroize::Zeroizing;

use crate::core::frame::BLOB_LEN;

/// X25519 public key length.
pub const DH_LEN: usize = 32;
/// ChaCha20-Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Explicit sequence number in front of each transport message.
pub const SEQ_LEN: usize = 8;
/// Handshake message 1 payload (sent in clear): blob minus `e`.
pub const HS1_PAYLOAD_LEN: usize = BLOB_LEN - DH_LEN;
/// Handshake message 2 payload plaintext: blob minus `e`, encrypted `s`, tag.
pub const HS2_PAYLOAD_LEN: usize = BLOB_LEN - DH_LEN - (DH_LEN + TAG_LEN) - TAG_LEN;
/// Transport message plaintext: blob minus sequence number and tag.
pub const TRANSPORT_PLAINTEXT_LEN: usize = BLOB_LEN - SEQ_LEN - TAG_LEN;
/// Most content bytes one transport message carries.
pub const TRANSPORT_CONTENT_MAX: usize = TRANSPORT_PLAINTEXT_LEN - 2;

/// Padded data that breaks the rules.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum PaddingError {
    /// The content does not fit in the padded size.
    #[error("content of {len} bytes does not fit in {size} padded bytes")]
    TooLong { len: usize, size: usize },
    /// The length prefix points past the end, or padding bytes are not zero.
    #[error("malformed padding")]
    Malformed,
}

/// Pads `content` to exactly `size` bytes.
pub fn pad(content: &[u8], size: usize) -> Result<Zeroizing<Vec<u8>>, PaddingError> {
    if size < 2 || content.len() > size - 2 {
        return Err(PaddingError::TooLong {
            len: content.len(),
            size,
        });
    }
    let mut out = Zeroizing::new(vec![0u8; size]);
    out[..2].copy_from_slice(&(content.len() as u16).to_be_bytes());
    out[2..2 + content.len()].copy_from_slice(content);
    Ok(out)
}

/// Returns the content of a padded buffer.
pub fn unpad(padded: &[u8]) -> Result<&[u8], PaddingError> {
    let [hi, lo, rest @ ..] = padded else {
        return Err(PaddingError::Malformed);
    };
    let len = u16::from_be_bytes([*hi, *lo]) as usize;
    if len > rest.len() || rest[len..].iter().any(|b| *b != 0) {
        return Err(PaddingError::Malformed);
    }
    Ok(&rest[..len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_add_up_to_one_blob() {
        assert_eq!(HS1_PAYLOAD_LEN, 1000);
        assert_eq!(HS2_PAYLOAD_LEN, 936);
        assert_eq!(TRANSPORT_PLAINTEXT_LEN, 1008);
    }

    proptest! {
        #[test]
        fn pad_round_trips(content in proptest::collection::vec(any::<u8>(), 0..=1006)) {
            let padded = pad(&content, TRANSPORT_PLAINTEXT_LEN).unwrap();
            prop_assert_eq!(padded.len(), TRANSPORT_PLAINTEXT_LEN);
            prop_assert_eq!(unpad(&padded).unwrap(), &content[..]);
        }
    }

    #[test]
    fn bad_padding_is_refused() {
        assert!(pad(&[0; 1007], TRANSPORT_PLAINTEXT_LEN).is_err());
        assert_eq!(unpad(&[0, 3, 1, 2]), Err(PaddingError::Malformed));
        assert_eq!(unpad(&[0, 1, 1, 2]), Err(PaddingError::Malformed));
        assert_eq!(unpad(&[0]), Err(PaddingError::Malformed));
        assert_eq!(unpad(&[0, 1, 7, 0]), Ok(&[7u8][..]));
    }
}
