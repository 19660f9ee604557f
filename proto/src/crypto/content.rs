//! End-to-end content: what sits inside the padding of a transport message
//! (PROTOCOL.md §6.4). Only the two endpoints see it; the relay never does.
//!
//! Sending: [`split_text`] cuts a message into TEXT chunks that each fit one
//! fixed-size transport message. Receiving: [`Content::decode`] parses one
//! chunk and [`Reassembler`] joins chunks until the one marked final.
//! Unknown content kinds decode as [`Content::Unknown`] and are ignored, so
//! later versions can add kinds without breaking old clients. Content that
//! breaks the rules (an ACK that is not 9 bytes, reserved TEXT flags, a
//! chunk that is not UTF-8 on its own, a message over the limit) is a
//! [`ContentError`]: it came from the authenticated peer, so the receiver
//! ends the chat as a security failure (PROTOCOL.md §6.4).

use thiserror::Error;

use crate::crypto::padding::TRANSPORT_CONTENT_MAX;

/// Content kind: a piece of chat text.
pub const KIND_TEXT: u8 = 0x01;
/// Content kind: an end-to-end delivery acknowledgement.
pub const KIND_ACK: u8 = 0x02;
/// TEXT flag: this chunk is the last of its message.
pub const FLAG_FINAL: u8 = 0x01;
/// Most text bytes one TEXT chunk carries (kind and flags take two bytes).
pub const TEXT_CHUNK_MAX: usize = TRANSPORT_CONTENT_MAX - 2;
/// Longest chat message, in UTF-8 bytes (PROTOCOL.md §8).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// One decoded piece of end-to-end content.
#[derive(Clone, PartialEq, Eq)]
pub enum Content {
    /// A chunk of a text message; `last` marks the final chunk.
    Text { last: bool, text: String },
    /// Delivery acknowledgement: every message with a sequence number below
    /// `up_to` has arrived (cumulative).
    Ack { up_to: u64 },
    /// A kind this version does not know; receivers ignore it.
    Unknown(u8),
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Content::Text { last, .. } => write!(f, "Text {{ last: {last}, .. }}"),
            Content::Ack { up_to } => write!(f, "Ack {{ up_to: {up_to} }}"),
            Content::Unknown(k) => write!(f, "Unknown({k})"),
        }
    }
}

/// Content that breaks the rules of §6.4.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ContentError {
    /// Empty content, or a TEXT chunk shorter than its header.
    #[error("content is empty or truncated")]
    Truncated,
    /// A TEXT chunk with flag bits this version does not define.
    #[error("unknown text flags")]
    BadFlags,
    /// Text that is not UTF-8.
    #[error("text is not valid UTF-8")]
    NotUtf8,
    /// A message longer than [`MAX_MESSAGE_BYTES`].
    #[error("message longer than {MAX_MESSAGE_BYTES} bytes")]
    TooLong,
    /// An ACK of sequence numbers the receiver never sent.
    #[error("acknowledgement of messages that were never sent")]
    AckBeyondSent,
}

impl Content {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Content::Text { last, text } => {
                let mut out = Vec::with_capacity(2 + text.len());
                out.push(KIND_TEXT);
                out.push(if *last { FLAG_FINAL } else { 0 });
                out.extend_from_slice(text.as_bytes());
                out
            }
            Content::Ack { up_to } => {
                let mut out = vec![KIND_ACK];
                out.extend_from_slice(&up_to.to_be_bytes());
                out
            }
            Content::Unknown(kind) => vec![*kind],
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Content, ContentError> {
        match bytes {
            [] => Err(ContentError::Truncated),
            [KIND_TEXT, flags, text @ ..] => {
                if flags & !FLAG_FINAL != 0 {
                    return Err(ContentError::BadFlags);
                }
                let text = std::str::from_utf8(text).map_err(|_| ContentError::NotUtf8)?;
                Ok(Content::Text {
                    last: flags & FLAG_FINAL != 0,
                    text: text.to_owned(),
                })
            }
            [KIND_TEXT] => Err(ContentError::Truncated),
            [KIND_ACK, rest @ ..] => {
                let up_to: [u8; 8] = rest.try_into().map_err(|_| ContentError::Truncated)?;
                Ok(Content::Ack {
                    up_to: u64::from_be_bytes(up_to),
                })
            }
            [kind, ..] => Ok(Content::Unknown(*kind)),
        }
    }
}

/// Cuts `text` into TEXT chunks at character boundaries. An empty message is
/// one empty final chunk.
pub fn split_text(text: &str) -> Result<Vec<Content>, ContentError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(ContentError::TooLong);
    }
    let mut chunks = Vec::new();
    let mut rest = text;
    loop {
        let mut cut = rest.len().min(TEXT_CHUNK_MAX);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        chunks.push(Content::Text {
            last: tail.is_empty(),
            text: head.to_owned(),
        });
        if tail.is_empty() {
            return Ok(chunks);
        }
        rest = tail;
    }
}

/// Joins TEXT chunks back into messages.
#[derive(Default)]
pub struct Reassembler {
    partial: String,
}

impl Reassembler {
    /// Feeds one chunk; returns the whole message when `last` is set.
    pub fn push(&mut self, chunk: Content) -> Result<Option<String>, ContentError> {
        let Content::Text { last, text } = chunk else {
            return Ok(None);
        };
        if self.partial.len() + text.len() > MAX_MESSAGE_BYTES {
            self.partial.clear();
            return Err(ContentError::TooLong);
        }
        self.partial.push_str(&text);
        Ok(last.then(|| std::mem::take(&mut self.partial)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_message_splits_and_joins_back(text in "\\PC{0,6000}") {
            prop_assume!(text.len() <= MAX_MESSAGE_BYTES);
            let chunks = split_text(&text).unwrap();
            let mut r = Reassembler::default();
            let mut got = None;
            for (i, c) in chunks.iter().enumerate() {
                let bytes = c.encode();
                prop_assert!(bytes.len() <= TRANSPORT_CONTENT_MAX);
                let out = r.push(Content::decode(&bytes).unwrap()).unwrap();
                prop_assert_eq!(out.is_some(), i == chunks.len() - 1);
                got = out.or(got);
            }
            prop_assert_eq!(got.unwrap(), text);
        }

        #[test]
        fn arbitrary_content_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
            let _ = Content::decode(&bytes);
        }
    }

    #[test]
    fn a_long_message_is_split_and_a_too_long_one_refused() {
        let text = "é".repeat(1500); // 3000 bytes, two-byte characters
        let chunks = split_text(&text).unwrap();
        assert_eq!(chunks.len(), 3);
        assert!(split_text(&"x".repeat(MAX_MESSAGE_BYTES + 1)).is_err());
    }

    #[test]
    fn unknown_kinds_are_ignored_and_bad_text_refused() {
        assert_eq!(Content::decode(&[0x42, 1, 2]), Ok(Content::Unknown(0x42)));
        let ack = Content::Ack { up_to: 7 };
        assert_eq!(Content::decode(&ack.encode()), Ok(ack));
        assert_eq!(
            Content::decode(&[KIND_ACK, 0, 1]),
            Err(ContentError::Truncated)
        );
        assert_eq!(
            Content::decode(&[KIND_TEXT, 0x02]),
            Err(ContentError::BadFlags)
        );
        assert_eq!(
            Content::decode(&[KIND_TEXT, 1, 0xff]),
            Err(ContentError::NotUtf8)
        );
        assert_eq!(Content::decode(&[]), Err(ContentError::Truncated));
    }
}
