//! Relay frames: the byte format of everything on the one QUIC stream
//! (PROTOCOL.md §4).
//!
//! Bytes from the network enter through [`FrameDecoder::push`], which buffers
//! at most one frame and yields typed [`Frame`]s; outgoing frames become bytes
//! through [`Frame::encode`]. Every frame is `type u8 | length u16 BE | body`,
//! and every type has exactly one allowed body length, so a decoder knows at
//! the header whether a frame is acceptable. Decoding rejects unknown types,
//! wrong lengths and bad field values; it never panics and never allocates
//! more than one maximum frame.
//!
//! Frames are typed by direction: [`ToRelay`] is what an endpoint sends,
//! [`FromRelay`] what the relay sends (FORWARD and END are in both), and
//! [`Frame`] is either, as the codec reads and writes it. The relay's core
//! acts only on `ToRelay` and sends only `FromRelay`; the client's state
//! machines the other way round. A frame that comes the wrong way does not
//! convert, and closes its connection with UNEXPECTED_FRAME (§3.3).
//!
//! The module is split by job: `types.rs` holds what a frame is made of
//! (the one-byte wire enums, each generated from one table, the newtypes
//! nothing invalid can be put in, [`Frame`] and its two directions),
//! `codec.rs` turns a frame into its body and back (a body parser must
//! consume the whole body), and `decoder.rs` cuts a byte stream into
//! frames.
//!
//! ```
//! use fluister_proto::core::frame::{Frame, FrameDecoder, Role};
//!
//! let hello = Frame::Hello { version: 1, role: Role::Client };
//! assert_eq!(hello.encode(), [0x01, 0x00, 0x02, 0x01, 0x01]);
//!
//! // Bytes may arrive in any pieces; frames come out whole.
//! let mut decoder = FrameDecoder::default();
//! let mut frames = Vec::new();
//! decoder.push(&[0x01, 0x00], &mut frames).unwrap();
//! decoder.push(&[0x02, 0x01, 0x01], &mut frames).unwrap();
//! assert_eq!(frames, [hello]);
//! ```

mod codec;
mod decoder;
mod types;

pub use decoder::{FrameDecoder, whole_frame_at};
pub use types::*;

/// Size of the opaque end-to-end blob carried in every FORWARD frame
/// (PROTOCOL.md §5): a Noise handshake message or a transport message, padded.
pub const BLOB_LEN: usize = 1032;
/// Frame header: type (1) and body length (2).
pub const HEADER_LEN: usize = 3;
/// Largest body of any frame type (FORWARD: chat number + blob).
pub const MAX_BODY_LEN: usize = 4 + BLOB_LEN;
/// Largest encoded frame; a FORWARD frame is exactly this long.
pub const MAX_FRAME_LEN: usize = HEADER_LEN + MAX_BODY_LEN;
/// The only protocol version this implementation speaks (PROTOCOL.md §9).
pub const PROTOCOL_VERSION: u8 = 1;
/// The QUIC ALPN identifier of this protocol version.
pub const ALPN: &[u8] = b"fluister/1";

/// Frame type codes (PROTOCOL.md §4.2).
pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const QUEUED: u8 = 0x03;
    pub const PAIRED: u8 = 0x04;
    pub const FORWARD: u8 = 0x05;
    pub const END: u8 = 0x06;
    pub const TOPIC: u8 = 0x07;
    pub const JOIN: u8 = 0x08;
    pub const UNAVAILABLE: u8 = 0x09;
    pub const STATUS: u8 = 0x0a;
    pub const QUEUE_STATS: u8 = 0x0b;
    pub const TRANSFER: u8 = 0x0c;
    pub const TRANSFER_REFUSED: u8 = 0x0d;
    pub const RESUME: u8 = 0x0e;
    pub const RESUMED: u8 = 0x0f;
    pub const RESUME_FAILED: u8 = 0x10;
    pub const PEER_AWAY: u8 = 0x11;
    pub const PEER_BACK: u8 = 0x12;
    pub const JOINED: u8 = 0x13;
    pub const COLLEAGUE: u8 = 0x14;
    pub const CHALLENGE: u8 = 0x15;
    pub const PROOF: u8 = 0x16;
    pub const FORM_ASK: u8 = 0x17;
    pub const FORM_FIELD: u8 = 0x18;
    pub const CODINGS: u8 = 0x19;
    pub const CODINGS_RESULT: u8 = 0x1a;
}

/// Most topics a relay offers and a counsellor serves.
pub const MAX_TOPICS: usize = 16;
/// Most languages a relay offers and a counsellor serves.
pub const MAX_LANGUAGES: usize = 8;
/// Highest proof-of-work difficulty a WELCOME or CHALLENGE may ask (bits):
/// about 2^20 hashes, which a slow phone's browser solves in seconds, not
/// minutes (PROTOCOL.md §8.1).
pub const MAX_POW_DIFFICULTY: u8 = 20;
/// Longest topic label or pseudonym in a frame, in UTF-8 bytes.
pub const MAX_LABEL_LEN: usize = 64;

#[cfg(test)]
mod tests;
