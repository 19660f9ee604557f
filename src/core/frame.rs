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
//! ```
//! use fluister::core::frame::{Frame, FrameDecoder, Role};
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

use thiserror::Error;

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
}

/// Which side of a chat an endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The anonymous young person; no credentials.
    Client,
    /// A counsellor, signed in with an operator-issued credential.
    Counsellor,
}

impl Role {
    fn to_byte(self) -> u8 {
        match self {
            Role::Client => 0x01,
            Role::Counsellor => 0x02,
        }
    }
    fn from_byte(b: u8) -> Result<Self, FrameError> {
        match b {
            0x01 => Ok(Role::Client),
            0x02 => Ok(Role::Counsellor),
            _ => Err(FrameError::BadField("role")),
        }
    }
}

/// Why a chat ended, as carried in END frames (PROTOCOL.md §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// The person on the sending side ended the chat.
    UserEnded,
    /// The sending endpoint aborted because an end-to-end check failed
    /// (certificate, handshake or decryption).
    SecurityFailure,
    /// Relay to endpoint: the peer's connection went away.
    PeerDisconnected,
    /// Relay to endpoint: the relay is shutting down.
    RelayShutdown,
}

impl EndReason {
    pub fn to_byte(self) -> u8 {
        match self {
            EndReason::UserEnded => 0x01,
            EndReason::SecurityFailure => 0x02,
            EndReason::PeerDisconnected => 0x10,
            EndReason::RelayShutdown => 0x11,
        }
    }
    pub fn from_byte(b: u8) -> Result<Self, FrameError> {
        match b {
            0x01 => Ok(EndReason::UserEnded),
            0x02 => Ok(EndReason::SecurityFailure),
            0x10 => Ok(EndReason::PeerDisconnected),
            0x11 => Ok(EndReason::RelayShutdown),
            _ => Err(FrameError::BadField("reason")),
        }
    }
    /// A stable snake_case name, used in `--json` output.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::UserEnded => "peer_ended",
            EndReason::SecurityFailure => "security_failure",
            EndReason::PeerDisconnected => "peer_disconnected",
            EndReason::RelayShutdown => "relay_shutdown",
        }
    }
}

/// A connection-local chat number, assigned by the relay in PAIRED.
/// It is never zero and never shared between the two sides of a chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChatNumber(u32);

impl ChatNumber {
    pub fn new(n: u32) -> Option<Self> {
        (n != 0).then_some(ChatNumber(n))
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

/// The relay-assigned pairing id bound into the Noise prologue (PROTOCOL.md §6.1).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PairingId(pub [u8; 16]);

impl std::fmt::Debug for PairingId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairingId(<redacted>)")
    }
}

/// An opaque end-to-end blob of exactly [`BLOB_LEN`] bytes. The relay moves
/// it and never looks inside.
#[derive(Clone, PartialEq, Eq)]
pub struct Blob(Box<[u8; BLOB_LEN]>);

impl Blob {
    pub fn new(bytes: [u8; BLOB_LEN]) -> Self {
        Blob(Box::new(bytes))
    }
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; BLOB_LEN] = bytes.try_into().ok()?;
        Some(Blob::new(arr))
    }
    pub fn as_bytes(&self) -> &[u8; BLOB_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blob({} bytes)", BLOB_LEN)
    }
}

/// One relay frame (PROTOCOL.md §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Endpoint → relay, first frame on the stream.
    Hello { version: u8, role: Role },
    /// Relay → endpoint: the HELLO was accepted.
    Welcome { version: u8, role: Role },
    /// Relay → client: place in the queue, 1 = next.
    Queued { position: u32 },
    /// Relay → both: a chat begins.
    Paired {
        chat: ChatNumber,
        pairing_id: PairingId,
    },
    /// Both directions: an end-to-end blob for the peer of `chat`.
    Forward { chat: ChatNumber, blob: Blob },
    /// Both directions: the chat is over.
    End { chat: ChatNumber, reason: EndReason },
}

/// Why bytes could not be decoded as a frame. Each maps to a close code.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The type byte names no frame of this version.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// The declared length is larger than any frame may be.
    #[error("frame body of {0} bytes exceeds the maximum")]
    TooLarge(usize),
    /// The declared length is not the one length this type allows.
    #[error("frame type 0x{kind:02x} must have a {expected}-byte body, not {got}")]
    WrongLength {
        kind: u8,
        expected: usize,
        got: usize,
    },
    /// A field holds a value the spec does not allow.
    #[error("invalid value in field `{0}`")]
    BadField(&'static str),
}

impl FrameError {
    /// The QUIC close code a relay or endpoint uses for this error.
    pub fn close_code(self) -> super::CloseCode {
        match self {
            FrameError::TooLarge(_) => super::CloseCode::FrameTooLarge,
            _ => super::CloseCode::MalformedFrame,
        }
    }
}

fn body_len(kind: u8) -> Option<usize> {
    Some(match kind {
        kind::HELLO | kind::WELCOME => 2,
        kind::QUEUED => 4,
        kind::PAIRED => 4 + 16,
        kind::FORWARD => 4 + BLOB_LEN,
        kind::END => 4 + 1,
        _ => return None,
    })
}

impl Frame {
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello { .. } => kind::HELLO,
            Frame::Welcome { .. } => kind::WELCOME,
            Frame::Queued { .. } => kind::QUEUED,
            Frame::Paired { .. } => kind::PAIRED,
            Frame::Forward { .. } => kind::FORWARD,
            Frame::End { .. } => kind::END,
        }
    }

    /// The encoded length of this frame, header included.
    pub fn encoded_len(&self) -> usize {
        // Every known kind has a body length; `kind()` only returns known kinds.
        HEADER_LEN + body_len(self.kind()).unwrap_or(0)
    }

    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let kind = self.kind();
        out.push(kind);
        out.extend_from_slice(&(body_len(kind).unwrap_or(0) as u16).to_be_bytes());
        match self {
            Frame::Hello { version, role } | Frame::Welcome { version, role } => {
                out.push(*version);
                out.push(role.to_byte());
            }
            Frame::Queued { position } => out.extend_from_slice(&position.to_be_bytes()),
            Frame::Paired { chat, pairing_id } => {
                out.extend_from_slice(&chat.0.to_be_bytes());
                out.extend_from_slice(&pairing_id.0);
            }
            Frame::Forward { chat, blob } => {
                out.extend_from_slice(&chat.0.to_be_bytes());
                out.extend_from_slice(blob.as_bytes());
            }
            Frame::End { chat, reason } => {
                out.extend_from_slice(&chat.0.to_be_bytes());
                out.push(reason.to_byte());
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Decodes exactly one frame from `bytes`; trailing bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        let mut decoder = FrameDecoder::default();
        let mut frames = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let used = decoder.push(rest, &mut frames)?;
            rest = &rest[used..];
        }
        match (frames.len(), decoder.is_idle()) {
            (1, true) => Ok(frames.remove(0)),
            _ => Err(FrameError::BadField("frame boundary")),
        }
    }

    fn decode_body(kind: u8, body: &[u8]) -> Result<Frame, FrameError> {
        let chat = |b: &[u8]| -> Result<ChatNumber, FrameError> {
            let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            ChatNumber::new(n).ok_or(FrameError::BadField("chat"))
        };
        Ok(match kind {
            kind::HELLO => Frame::Hello {
                version: body[0],
                role: Role::from_byte(body[1])?,
            },
            kind::WELCOME => Frame::Welcome {
                version: body[0],
                role: Role::from_byte(body[1])?,
            },
            kind::QUEUED => {
                let position = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                if position == 0 {
                    return Err(FrameError::BadField("position"));
                }
                Frame::Queued { position }
            }
            kind::PAIRED => {
                let mut id = [0u8; 16];
                id.copy_from_slice(&body[4..20]);
                Frame::Paired {
                    chat: chat(body)?,
                    pairing_id: PairingId(id),
                }
            }
            kind::FORWARD => Frame::Forward {
                chat: chat(body)?,
                blob: Blob::from_slice(&body[4..]).ok_or(FrameError::BadField("blob"))?,
            },
            kind::END => Frame::End {
                chat: chat(body)?,
                reason: EndReason::from_byte(body[4])?,
            },
            other => return Err(FrameError::UnknownType(other)),
        })
    }
}

/// Incremental decoder for a byte stream of frames. It holds at most one
/// partial frame ([`MAX_FRAME_LEN`] bytes), whatever the peer sends.
#[derive(Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// Consumes bytes from `input`, appending each complete frame to `out`.
    /// Returns how many bytes were consumed (all of them unless an error
    /// occurred). After an error the stream is unusable: close the connection.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<Frame>) -> Result<usize, FrameError> {
        let mut used = 0;
        while used < input.len() {
            // Fill the header first, then the exact body length it declares.
            let want = if self.buf.len() < HEADER_LEN {
                HEADER_LEN
            } else {
                // The header was checked when it completed, so len is in range.
                HEADER_LEN + u16::from_be_bytes([self.buf[1], self.buf[2]]) as usize
            };
            let take = (want - self.buf.len()).min(input.len() - used);
            self.buf.extend_from_slice(&input[used..used + take]);
            used += take;
            if self.buf.len() == HEADER_LEN {
                let kind = self.buf[0];
                let len = u16::from_be_bytes([self.buf[1], self.buf[2]]) as usize;
                let expected = body_len(kind).ok_or(FrameError::UnknownType(kind))?;
                if len > MAX_BODY_LEN {
                    return Err(FrameError::TooLarge(len));
                }
                if len != expected {
                    return Err(FrameError::WrongLength {
                        kind,
                        expected,
                        got: len,
                    });
                }
            }
            if self.buf.len() > HEADER_LEN && self.buf.len() == want {
                let frame = Frame::decode_body(self.buf[0], &self.buf[HEADER_LEN..]);
                self.buf.clear();
                out.push(frame?);
            }
        }
        Ok(used)
    }

    /// True when no partial frame is buffered.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_role() -> impl Strategy<Value = Role> {
        prop_oneof![Just(Role::Client), Just(Role::Counsellor)]
    }
    fn arb_reason() -> impl Strategy<Value = EndReason> {
        prop_oneof![
            Just(EndReason::UserEnded),
            Just(EndReason::SecurityFailure),
            Just(EndReason::PeerDisconnected),
            Just(EndReason::RelayShutdown),
        ]
    }
    fn arb_chat() -> impl Strategy<Value = ChatNumber> {
        (1u32..).prop_map(|n| ChatNumber::new(n).unwrap())
    }
    pub(crate) fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (any::<u8>(), arb_role()).prop_map(|(version, role)| Frame::Hello { version, role }),
            (any::<u8>(), arb_role()).prop_map(|(version, role)| Frame::Welcome { version, role }),
            (1u32..).prop_map(|position| Frame::Queued { position }),
            (arb_chat(), any::<[u8; 16]>()).prop_map(|(chat, id)| Frame::Paired {
                chat,
                pairing_id: PairingId(id)
            }),
            (arb_chat(), proptest::collection::vec(any::<u8>(), BLOB_LEN)).prop_map(|(chat, b)| {
                Frame::Forward {
                    chat,
                    blob: Blob::from_slice(&b).unwrap(),
                }
            }),
            (arb_chat(), arb_reason()).prop_map(|(chat, reason)| Frame::End { chat, reason }),
        ]
    }

    proptest! {
        #[test]
        fn every_frame_round_trips(frame in arb_frame()) {
            let bytes = frame.encode();
            prop_assert_eq!(bytes.len(), frame.encoded_len());
            prop_assert_eq!(Frame::decode(&bytes).unwrap(), frame);
        }

        #[test]
        fn a_stream_split_anywhere_decodes_the_same(
            frames in proptest::collection::vec(arb_frame(), 1..6),
            cuts in proptest::collection::vec(1usize..200, 1..40),
        ) {
            let bytes: Vec<u8> = frames.iter().flat_map(|f| f.encode()).collect();
            let mut decoder = FrameDecoder::default();
            let mut got = Vec::new();
            let mut rest = &bytes[..];
            for cut in cuts.iter().cycle() {
                if rest.is_empty() { break; }
                let n = (*cut).min(rest.len());
                prop_assert_eq!(decoder.push(&rest[..n], &mut got).unwrap(), n);
                rest = &rest[n..];
            }
            prop_assert_eq!(got, frames);
            prop_assert!(decoder.is_idle());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let mut decoder = FrameDecoder::default();
            let mut out = Vec::new();
            let _ = decoder.push(&bytes, &mut out);
            prop_assert!(decoder.buf.len() <= MAX_FRAME_LEN);
        }
    }

    #[test]
    fn encoded_lengths_match_the_spec() {
        let chat = ChatNumber::new(1).unwrap();
        let cases = [
            (
                Frame::Hello {
                    version: 1,
                    role: Role::Client,
                },
                5,
            ),
            (
                Frame::Welcome {
                    version: 1,
                    role: Role::Counsellor,
                },
                5,
            ),
            (Frame::Queued { position: 3 }, 7),
            (
                Frame::Paired {
                    chat,
                    pairing_id: PairingId([0; 16]),
                },
                23,
            ),
            (
                Frame::Forward {
                    chat,
                    blob: Blob::new([0; BLOB_LEN]),
                },
                1039,
            ),
            (
                Frame::End {
                    chat,
                    reason: EndReason::UserEnded,
                },
                8,
            ),
        ];
        for (frame, len) in cases {
            assert_eq!(frame.encode().len(), len, "{frame:?}");
        }
        assert_eq!(MAX_FRAME_LEN, 1039);
    }

    #[test]
    fn bad_headers_are_refused_at_the_header() {
        let mut d = FrameDecoder::default();
        let mut out = Vec::new();
        assert_eq!(
            d.push(&[0x7f, 0, 1], &mut out),
            Err(FrameError::UnknownType(0x7f))
        );
        let mut d = FrameDecoder::default();
        assert_eq!(
            d.push(&[kind::FORWARD, 0xff, 0xff], &mut out),
            Err(FrameError::TooLarge(0xffff))
        );
        let mut d = FrameDecoder::default();
        assert!(matches!(
            d.push(&[kind::HELLO, 0, 3], &mut out),
            Err(FrameError::WrongLength { .. })
        ));
        assert_eq!(
            Frame::decode(&[kind::QUEUED, 0, 4, 0, 0, 0, 0]),
            Err(FrameError::BadField("position"))
        );
        assert_eq!(
            Frame::decode(&[kind::END, 0, 5, 0, 0, 0, 0, 1]),
            Err(FrameError::BadField("chat"))
        );
        assert_eq!(
            Frame::decode(&[kind::HELLO, 0, 2, 1, 9]),
            Err(FrameError::BadField("role"))
        );
        assert_eq!(
            Frame::decode(&[kind::END, 0, 5, 0, 0, 0, 1, 0x55]),
            Err(FrameError::BadField("reason"))
        );
    }
}
