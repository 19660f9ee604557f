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
    /// A counsellor ended the chat and blocked it: the client's connection
    /// is closed and can never send again.
    Blocked,
    /// Relay to endpoint: the peer's connection went away.
    PeerDisconnected,
    /// Relay to endpoint: the relay is shutting down.
    RelayShutdown,
    /// Relay to endpoint: the chat moves to another counsellor or back to
    /// the queue; the client will get QUEUED or PAIRED next.
    Transferred,
    /// Relay to client: the counsellor's access was withdrawn by the
    /// helpline (their credential was revoked).
    CounsellorRevoked,
}

impl EndReason {
    pub fn to_byte(self) -> u8 {
        match self {
            EndReason::UserEnded => 0x01,
            EndReason::SecurityFailure => 0x02,
            EndReason::Blocked => 0x03,
            EndReason::PeerDisconnected => 0x10,
            EndReason::RelayShutdown => 0x11,
            EndReason::Transferred => 0x12,
            EndReason::CounsellorRevoked => 0x13,
        }
    }
    pub fn from_byte(b: u8) -> Result<Self, FrameError> {
        match b {
            0x01 => Ok(EndReason::UserEnded),
            0x02 => Ok(EndReason::SecurityFailure),
            0x03 => Ok(EndReason::Blocked),
            0x10 => Ok(EndReason::PeerDisconnected),
            0x11 => Ok(EndReason::RelayShutdown),
            0x12 => Ok(EndReason::Transferred),
            0x13 => Ok(EndReason::CounsellorRevoked),
            _ => Err(FrameError::BadField("reason")),
        }
    }
    /// A stable snake_case name, used in `--json` output.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::UserEnded => "peer_ended",
            EndReason::SecurityFailure => "security_failure",
            EndReason::Blocked => "blocked",
            EndReason::PeerDisconnected => "peer_disconnected",
            EndReason::RelayShutdown => "relay_shutdown",
            EndReason::Transferred => "transferred",
            EndReason::CounsellorRevoked => "counsellor_revoked",
        }
    }
}

/// Why the relay will not queue a client (UNAVAILABLE, PROTOCOL.md §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unavailable {
    /// Outside opening hours.
    Closed,
    /// The queue is full.
    Busy,
    /// The client waited the maximum time.
    WaitExceeded,
}

impl Unavailable {
    fn to_byte(self) -> u8 {
        match self {
            Unavailable::Closed => 0x01,
            Unavailable::Busy => 0x02,
            Unavailable::WaitExceeded => 0x03,
        }
    }
    fn from_byte(b: u8) -> Result<Self, FrameError> {
        match b {
            0x01 => Ok(Unavailable::Closed),
            0x02 => Ok(Unavailable::Busy),
            0x03 => Ok(Unavailable::WaitExceeded),
            _ => Err(FrameError::BadField("reason")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Unavailable::Closed => "closed",
            Unavailable::Busy => "busy",
            Unavailable::WaitExceeded => "wait_exceeded",
        }
    }
}

/// Why a transfer was refused (TRANSFER_REFUSED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No counsellor with that pseudonym is signed in.
    UnknownColleague,
    /// The colleague is away.
    ColleagueAway,
    /// The colleague has no room (at capacity).
    ColleagueFull,
    /// The young person's connection is away; try again when they are back.
    ClientAway,
}

impl Refusal {
    fn to_byte(self) -> u8 {
        match self {
            Refusal::UnknownColleague => 0x01,
            Refusal::ColleagueAway => 0x02,
            Refusal::ColleagueFull => 0x03,
            Refusal::ClientAway => 0x04,
        }
    }
    fn from_byte(b: u8) -> Result<Self, FrameError> {
        match b {
            0x01 => Ok(Refusal::UnknownColleague),
            0x02 => Ok(Refusal::ColleagueAway),
            0x03 => Ok(Refusal::ColleagueFull),
            0x04 => Ok(Refusal::ClientAway),
            _ => Err(FrameError::BadField("reason")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownColleague => "no counsellor with that name is signed in",
            Refusal::ColleagueAway => "that counsellor is away",
            Refusal::ColleagueFull => "that counsellor has no room for another chat",
            Refusal::ClientAway => {
                "the young person's connection is away; try again when they are back"
            }
        }
    }
}

/// A connection-local chat number, assigned by the relay in PAIRED.
/// It is never zero and never shared between the two sides of a chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChatNumber(u32);

impl ChatNumber {
    /// The first chat number on a connection.
    pub const FIRST: ChatNumber = ChatNumber(1);

    pub fn new(n: u32) -> Option<Self> {
        (n != 0).then_some(ChatNumber(n))
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A topic's stable id, chosen by the operator; never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicId(u16);

impl TopicId {
    pub fn new(n: u16) -> Option<Self> {
        (n != 0).then_some(TopicId(n))
    }
    pub fn get(self) -> u16 {
        self.0
    }
}

/// A two-letter lowercase language code (ISO 639-1), e.g. `nl`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Language([u8; 2]);

impl Language {
    pub fn new(bytes: [u8; 2]) -> Option<Self> {
        bytes
            .iter()
            .all(u8::is_ascii_lowercase)
            .then_some(Language(bytes))
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::new(s.as_bytes().try_into().ok()?)
    }
    pub fn as_str(&self) -> &str {
        // Only ASCII lowercase letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl std::fmt::Debug for Language {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Language({})", self.as_str())
    }
}

/// Whether `s` may be a topic label or pseudonym (PROTOCOL.md §4.1): 1 to
/// 64 bytes of UTF-8, no character of General_Category Cc (controls), Cf
/// (format: zero-width characters, direction overrides), Zl or Zp (line and
/// paragraph separators), and no White_Space character at either end.
pub fn valid_label(s: &str) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    let forbidden = |c: char| {
        matches!(
            c.general_category(),
            GeneralCategory::Control
                | GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        )
    };
    !s.is_empty()
        && s.len() <= MAX_LABEL_LEN
        && !s.starts_with(char::is_whitespace)
        && !s.ends_with(char::is_whitespace)
        && !s.chars().any(forbidden)
}

/// A topic label or a pseudonym, checked by [`valid_label`]: nothing else
/// can be put in a label slot, so every label the encoder writes is one the
/// decoder accepts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label(String);

/// A string that is not a valid label.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error(
    "must be 1 to 64 bytes of UTF-8 without control, format or line-separator characters, \
     and without spaces at either end"
)]
pub struct InvalidLabel;

impl Label {
    pub fn new(s: impl Into<String>) -> Result<Label, InvalidLabel> {
        let s = s.into();
        if valid_label(&s) {
            Ok(Label(s))
        } else {
            Err(InvalidLabel)
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Label {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// Whether a colleague can take a transfer (COLLEAGUE, PROTOCOL.md §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Presence {
    /// The colleague's last connection is gone.
    SignedOut,
    /// Signed in, takes no new chats.
    Away,
    /// Available, but at capacity.
    Full,
    /// Available with room for another chat.
    Available,
}

impl Presence {
    fn to_byte(self) -> u8 {
        match self {
            Presence::SignedOut => 0x00,
            Presence::Away => 0x01,
            Presence::Full => 0x02,
            Presence::Available => 0x03,
        }
    }
    fn from_byte(b: u8) -> Result<Self, FrameError> {
        match b {
            0x00 => Ok(Presence::SignedOut),
            0x01 => Ok(Presence::Away),
            0x02 => Ok(Presence::Full),
            0x03 => Ok(Presence::Available),
            _ => Err(FrameError::BadField("presence")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::SignedOut => "signed_out",
            Presence::Away => "away",
            Presence::Full => "full",
            Presence::Available => "available",
        }
    }
}

/// The relay-assigned pairing id bound into the Noise prologue (PROTOCOL.md §6.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
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

/// A proof-of-work challenge (PROTOCOL.md §8.1): find 8 bytes `s` such that
/// SHA-256("fluister pow v1" || nonce || s) starts with `difficulty` zero bits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PowChallenge {
    pub difficulty: u8,
    pub nonce: [u8; 16],
}

impl PowChallenge {
    /// No work asked (counsellors, and relays with proof of work off).
    pub const NONE: PowChallenge = PowChallenge {
        difficulty: 0,
        nonce: [0; 16],
    };
}

impl std::fmt::Debug for PowChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PowChallenge {{ difficulty: {}, .. }}", self.difficulty)
    }
}

/// Where a counsellor hands a chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferTarget {
    /// A named colleague, by pseudonym.
    Colleague(Label),
    /// Back to the queue, ahead of newcomers.
    Queue,
}

/// One relay frame (PROTOCOL.md §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Endpoint → relay, first frame on the stream.
    Hello { version: u8, role: Role },
    /// Relay → endpoint: HELLO accepted. `topics` TOPIC frames follow. A
    /// client must solve the proof-of-work challenge to JOIN.
    Welcome {
        version: u8,
        role: Role,
        topics: u8,
        languages: Vec<Language>,
        pow: PowChallenge,
    },
    /// Relay → client: place in the queue (1 = next) and the estimated wait.
    Queued {
        position: u32,
        estimated_wait_secs: Option<u32>,
    },
    /// Relay → both: a chat begins. `resume` is this side's capability to
    /// take the chat up again on a new connection (PROTOCOL.md §7.4). The
    /// counsellor learns the topic and language the young person chose;
    /// the young person's PAIRED carries neither.
    Paired {
        chat: ChatNumber,
        pairing_id: PairingId,
        resume: ResumeCapability,
        topic: Option<TopicId>,
        language: Option<Language>,
    },
    /// Both directions: an end-to-end blob for the peer of `chat`.
    Forward { chat: ChatNumber, blob: Blob },
    /// Both directions: the chat is over.
    End { chat: ChatNumber, reason: EndReason },
    /// Relay → endpoint, after WELCOME: one topic of the service.
    Topic {
        id: TopicId,
        label_nl: Label,
        label_en: Label,
    },
    /// Client → relay, after WELCOME: join the queue, with the solution to
    /// the WELCOME's proof-of-work challenge.
    Join {
        topic: Option<TopicId>,
        language: Option<Language>,
        pow_solution: [u8; 8],
    },
    /// Relay → client: not queued; the relay closes the connection next.
    Unavailable {
        reason: Unavailable,
        next_open: Option<u64>,
    },
    /// Counsellor → relay: what the counsellor takes.
    Status {
        available: bool,
        capacity: u8,
        topics: Vec<TopicId>,
        languages: Vec<Language>,
    },
    /// Relay → counsellor: clients waiting per topic (`None` = no topic chosen).
    QueueStats {
        waiting: Vec<(Option<TopicId>, u16)>,
    },
    /// Counsellor → relay: hand `chat` to a colleague or back to the queue.
    Transfer {
        chat: ChatNumber,
        target: TransferTarget,
    },
    /// Relay → counsellor: the transfer did not happen; the chat stays.
    TransferRefused { chat: ChatNumber, reason: Refusal },
    /// Endpoint → relay, on a new connection: take a chat up again.
    Resume { capability: ResumeCapability },
    /// Relay → endpoint: resumed; the chat's number on this connection.
    Resumed { chat: ChatNumber },
    /// Relay → endpoint: no chat to resume (unknown, wrong and expired look alike).
    ResumeFailed,
    /// Relay → endpoint: the other side's connection dropped; the relay
    /// holds this side's frames for it while it may come back.
    PeerAway { chat: ChatNumber },
    /// Relay → endpoint: the other side is back; resend what it has not acknowledged.
    PeerBack { chat: ChatNumber },
    /// Relay → client: the JOIN is accepted. `resume` keeps the client's
    /// place in the queue if its connection drops (PROTOCOL.md §7.4).
    Joined { resume: ResumeCapability },
    /// Relay → counsellor: a colleague signed in, changed status or left.
    Colleague { name: Label, presence: Presence },
    /// Relay → waiting client: prove work again to keep the place in a
    /// crowded queue (PROTOCOL.md §8.1).
    Challenge { pow: PowChallenge },
    /// Client → relay: the solution to the last CHALLENGE.
    Proof { solution: [u8; 8] },
}

/// A random 32-byte capability to resume one side of a chat. The relay
/// keeps only its SHA-256.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ResumeCapability(pub [u8; 32]);

impl std::fmt::Debug for ResumeCapability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeCapability(<redacted>)")
    }
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

/// Bytes of a label slot: length u8 and [`MAX_LABEL_LEN`] bytes.
const LABEL_SLOT: usize = 1 + MAX_LABEL_LEN;

fn body_len(kind: u8) -> Option<usize> {
    Some(match kind {
        kind::HELLO => 2,
        kind::WELCOME => 4 + 2 * MAX_LANGUAGES + 1 + 16,
        kind::QUEUED => 8,
        kind::PAIRED => 4 + 16 + 32 + 2 + 2,
        kind::FORWARD => 4 + BLOB_LEN,
        kind::END => 4 + 1,
        kind::TOPIC => 2 + 2 * LABEL_SLOT,
        kind::JOIN => 4 + 8,
        kind::UNAVAILABLE => 1 + 8,
        kind::STATUS => 3 + 2 * MAX_TOPICS + 1 + 2 * MAX_LANGUAGES,
        kind::QUEUE_STATS => 1 + 4 * (MAX_TOPICS + 1),
        kind::TRANSFER => 4 + 1 + LABEL_SLOT,
        kind::TRANSFER_REFUSED => 4 + 1,
        kind::RESUME | kind::JOINED => 32,
        kind::RESUMED | kind::PEER_AWAY | kind::PEER_BACK => 4,
        kind::RESUME_FAILED => 1,
        kind::COLLEAGUE => 1 + LABEL_SLOT,
        kind::CHALLENGE => 1 + 16,
        kind::PROOF => 8,
        _ => return None,
    })
}

/// Appends fixed-size fields; lists and labels are zero-padded slots.
struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn zeros(&mut self, n: usize) {
        self.0.resize(self.0.len() + n, 0);
    }
    /// Length u8 and the label, zero-padded to [`MAX_LABEL_LEN`]; a
    /// [`Label`] always fits.
    fn label(&mut self, label: &Label) {
        let b = label.as_str().as_bytes();
        self.u8(b.len() as u8);
        self.bytes(b);
        self.zeros(MAX_LABEL_LEN - b.len());
    }
    fn language(&mut self, language: Option<Language>) {
        self.bytes(&language.map_or([0, 0], |l| l.0));
    }
    fn languages(&mut self, langs: &[Language]) {
        let n = langs.len().min(MAX_LANGUAGES);
        for l in &langs[..n] {
            self.bytes(&l.0);
        }
        self.zeros(2 * (MAX_LANGUAGES - n));
    }
}

/// Reads fixed-size fields from a body whose length was already checked.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::BadField("length"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn chat(&mut self) -> Result<ChatNumber, FrameError> {
        ChatNumber::new(self.u32()?).ok_or(FrameError::BadField("chat"))
    }
    fn zeros(&mut self, n: usize, field: &'static str) -> Result<(), FrameError> {
        match self.take(n)?.iter().all(|b| *b == 0) {
            true => Ok(()),
            false => Err(FrameError::BadField(field)),
        }
    }
    fn label(&mut self, field: &'static str) -> Result<Label, FrameError> {
        let len = self.u8()? as usize;
        if len > MAX_LABEL_LEN {
            return Err(FrameError::BadField(field));
        }
        let text = std::str::from_utf8(self.take(len)?).map_err(|_| FrameError::BadField(field))?;
        let label = Label::new(text).map_err(|_| FrameError::BadField(field))?;
        self.zeros(MAX_LABEL_LEN - len, field)?;
        Ok(label)
    }
    fn language(&mut self) -> Result<Language, FrameError> {
        let b = self.take(2)?;
        Language::new([b[0], b[1]]).ok_or(FrameError::BadField("language"))
    }
    /// A language slot that may be `00 00` (none).
    fn optional_language(&mut self) -> Result<Option<Language>, FrameError> {
        let b = self.take(2)?;
        match [b[0], b[1]] {
            [0, 0] => Ok(None),
            pair => Ok(Some(
                Language::new(pair).ok_or(FrameError::BadField("language"))?,
            )),
        }
    }
    fn pow(&mut self) -> Result<PowChallenge, FrameError> {
        let difficulty = self.u8()?;
        if difficulty > MAX_POW_DIFFICULTY {
            return Err(FrameError::BadField("difficulty"));
        }
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(self.take(16)?);
        Ok(PowChallenge { difficulty, nonce })
    }
    /// `count` languages, then zeroed slots up to [`MAX_LANGUAGES`].
    fn languages(&mut self, count: usize) -> Result<Vec<Language>, FrameError> {
        if count > MAX_LANGUAGES {
            return Err(FrameError::BadField("language count"));
        }
        let langs = (0..count)
            .map(|_| self.language())
            .collect::<Result<_, _>>()?;
        self.zeros(2 * (MAX_LANGUAGES - count), "languages")?;
        Ok(langs)
    }
    fn topic(&mut self) -> Result<Option<TopicId>, FrameError> {
        Ok(TopicId::new(self.u16()?))
    }
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
            Frame::Topic { .. } => kind::TOPIC,
            Frame::Join { .. } => kind::JOIN,
            Frame::Unavailable { .. } => kind::UNAVAILABLE,
            Frame::Status { .. } => kind::STATUS,
            Frame::QueueStats { .. } => kind::QUEUE_STATS,
            Frame::Transfer { .. } => kind::TRANSFER,
            Frame::TransferRefused { .. } => kind::TRANSFER_REFUSED,
            Frame::Resume { .. } => kind::RESUME,
            Frame::Resumed { .. } => kind::RESUMED,
            Frame::ResumeFailed => kind::RESUME_FAILED,
            Frame::PeerAway { .. } => kind::PEER_AWAY,
            Frame::PeerBack { .. } => kind::PEER_BACK,
            Frame::Joined { .. } => kind::JOINED,
            Frame::Colleague { .. } => kind::COLLEAGUE,
            Frame::Challenge { .. } => kind::CHALLENGE,
            Frame::Proof { .. } => kind::PROOF,
        }
    }

    /// The encoded length of this frame, header included.
    pub fn encoded_len(&self) -> usize {
        // Every known kind has a body length; `kind()` only returns known kinds.
        HEADER_LEN + body_len(self.kind()).unwrap_or(0)
    }

    /// Appends the encoded frame to `out`. Lists longer than their slots
    /// are cut; constructors of such frames check their input first.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let kind = self.kind();
        let start = out.len();
        let mut w = Writer(out);
        w.u8(kind);
        w.u16(body_len(kind).unwrap_or(0) as u16);
        match self {
            Frame::Hello { version, role } => {
                w.u8(*version);
                w.u8(role.to_byte());
            }
            Frame::Welcome {
                version,
                role,
                topics,
                languages,
                pow,
            } => {
                w.u8(*version);
                w.u8(role.to_byte());
                w.u8(*topics);
                w.u8(languages.len().min(MAX_LANGUAGES) as u8);
                w.languages(languages);
                w.u8(pow.difficulty);
                w.bytes(&pow.nonce);
            }
            Frame::Queued {
                position,
                estimated_wait_secs,
            } => {
                w.u32(*position);
                w.u32(estimated_wait_secs.unwrap_or(u32::MAX));
            }
            Frame::Paired {
                chat,
                pairing_id,
                resume,
                topic,
                language,
            } => {
                w.u32(chat.0);
                w.bytes(&pairing_id.0);
                w.bytes(&resume.0);
                w.u16(topic.map_or(0, |t| t.0));
                w.language(*language);
            }
            Frame::Forward { chat, blob } => {
                w.u32(chat.0);
                w.bytes(blob.as_bytes());
            }
            Frame::End { chat, reason } => {
                w.u32(chat.0);
                w.u8(reason.to_byte());
            }
            Frame::Topic {
                id,
                label_nl,
                label_en,
            } => {
                w.u16(id.0);
                w.label(label_nl);
                w.label(label_en);
            }
            Frame::Join {
                topic,
                language,
                pow_solution,
            } => {
                w.u16(topic.map_or(0, |t| t.0));
                w.language(*language);
                w.bytes(pow_solution);
            }
            Frame::Unavailable { reason, next_open } => {
                w.u8(reason.to_byte());
                w.u64(next_open.unwrap_or(0));
            }
            Frame::Status {
                available,
                capacity,
                topics,
                languages,
            } => {
                w.u8(u8::from(*available));
                w.u8(*capacity);
                let n = topics.len().min(MAX_TOPICS);
                w.u8(n as u8);
                for t in &topics[..n] {
                    w.u16(t.0);
                }
                w.zeros(2 * (MAX_TOPICS - n));
                w.u8(languages.len().min(MAX_LANGUAGES) as u8);
                w.languages(languages);
            }
            Frame::QueueStats { waiting } => {
                let n = waiting.len().min(MAX_TOPICS + 1);
                w.u8(n as u8);
                for (topic, count) in &waiting[..n] {
                    w.u16(topic.map_or(0, |t| t.0));
                    w.u16(*count);
                }
                w.zeros(4 * (MAX_TOPICS + 1 - n));
            }
            Frame::Transfer { chat, target } => {
                w.u32(chat.0);
                match target {
                    TransferTarget::Colleague(name) => {
                        w.u8(0x01);
                        w.label(name);
                    }
                    TransferTarget::Queue => {
                        w.u8(0x02);
                        w.zeros(LABEL_SLOT);
                    }
                }
            }
            Frame::TransferRefused { chat, reason } => {
                w.u32(chat.0);
                w.u8(reason.to_byte());
            }
            Frame::Resume { capability } | Frame::Joined { resume: capability } => {
                w.bytes(&capability.0)
            }
            Frame::Resumed { chat } | Frame::PeerAway { chat } | Frame::PeerBack { chat } => {
                w.u32(chat.0)
            }
            // One reason for every failure, so a probe learns nothing.
            Frame::ResumeFailed => w.u8(0),
            Frame::Colleague { name, presence } => {
                w.u8(presence.to_byte());
                w.label(name);
            }
            Frame::Challenge { pow } => {
                w.u8(pow.difficulty);
                w.bytes(&pow.nonce);
            }
            Frame::Proof { solution } => w.bytes(solution),
        }
        debug_assert_eq!(out.len() - start, self.encoded_len());
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
        let used = decoder.push(bytes, &mut frames)?;
        match (frames.len(), decoder.is_idle(), used == bytes.len()) {
            (1, true, true) => Ok(frames.remove(0)),
            _ => Err(FrameError::BadField("frame boundary")),
        }
    }

    fn decode_body(kind: u8, body: &[u8]) -> Result<Frame, FrameError> {
        let mut r = Reader(body);
        let frame = match kind {
            kind::HELLO => Frame::Hello {
                version: r.u8()?,
                role: Role::from_byte(r.u8()?)?,
            },
            kind::WELCOME => {
                let version = r.u8()?;
                let role = Role::from_byte(r.u8()?)?;
                let topics = r.u8()?;
                if topics as usize > MAX_TOPICS {
                    return Err(FrameError::BadField("topic count"));
                }
                let count = r.u8()? as usize;
                let languages = r.languages(count)?;
                Frame::Welcome {
                    version,
                    role,
                    topics,
                    languages,
                    pow: r.pow()?,
                }
            }
            kind::QUEUED => {
                let position = r.u32()?;
                if position == 0 {
                    return Err(FrameError::BadField("position"));
                }
                let wait = r.u32()?;
                Frame::Queued {
                    position,
                    estimated_wait_secs: (wait != u32::MAX).then_some(wait),
                }
            }
            kind::PAIRED => {
                let chat = r.chat()?;
                let mut id = [0u8; 16];
                id.copy_from_slice(r.take(16)?);
                let mut resume = [0u8; 32];
                resume.copy_from_slice(r.take(32)?);
                Frame::Paired {
                    chat,
                    pairing_id: PairingId(id),
                    resume: ResumeCapability(resume),
                    topic: r.topic()?,
                    language: r.optional_language()?,
                }
            }
            kind::FORWARD => Frame::Forward {
                chat: r.chat()?,
                blob: Blob::from_slice(r.take(BLOB_LEN)?).ok_or(FrameError::BadField("blob"))?,
            },
            kind::END => Frame::End {
                chat: r.chat()?,
                reason: EndReason::from_byte(r.u8()?)?,
            },
            kind::TOPIC => Frame::Topic {
                id: r.topic()?.ok_or(FrameError::BadField("topic"))?,
                label_nl: r.label("label_nl")?,
                label_en: r.label("label_en")?,
            },
            kind::JOIN => {
                let topic = r.topic()?;
                let language = r.optional_language()?;
                let mut pow_solution = [0u8; 8];
                pow_solution.copy_from_slice(r.take(8)?);
                Frame::Join {
                    topic,
                    language,
                    pow_solution,
                }
            }
            kind::UNAVAILABLE => {
                let reason = Unavailable::from_byte(r.u8()?)?;
                let next = r.u64()?;
                Frame::Unavailable {
                    reason,
                    next_open: (next != 0).then_some(next),
                }
            }
            kind::STATUS => {
                let available = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(FrameError::BadField("available")),
                };
                let capacity = r.u8()?;
                let n = r.u8()? as usize;
                if n > MAX_TOPICS {
                    return Err(FrameError::BadField("topic count"));
                }
                let topics = (0..n)
                    .map(|_| r.topic()?.ok_or(FrameError::BadField("topic")))
                    .collect::<Result<_, _>>()?;
                r.zeros(2 * (MAX_TOPICS - n), "topics")?;
                let count = r.u8()? as usize;
                Frame::Status {
                    available,
                    capacity,
                    topics,
                    languages: r.languages(count)?,
                }
            }
            kind::QUEUE_STATS => {
                let n = r.u8()? as usize;
                if n > MAX_TOPICS + 1 {
                    return Err(FrameError::BadField("entry count"));
                }
                let waiting = (0..n)
                    .map(|_| Ok((r.topic()?, r.u16()?)))
                    .collect::<Result<_, FrameError>>()?;
                r.zeros(4 * (MAX_TOPICS + 1 - n), "entries")?;
                Frame::QueueStats { waiting }
            }
            kind::TRANSFER => {
                let chat = r.chat()?;
                let target = match r.u8()? {
                    0x01 => TransferTarget::Colleague(r.label("colleague")?),
                    0x02 => {
                        r.zeros(LABEL_SLOT, "colleague")?;
                        TransferTarget::Queue
                    }
                    _ => return Err(FrameError::BadField("target")),
                };
                Frame::Transfer { chat, target }
            }
            kind::TRANSFER_REFUSED => Frame::TransferRefused {
                chat: r.chat()?,
                reason: Refusal::from_byte(r.u8()?)?,
            },
            kind::RESUME => {
                let mut capability = [0u8; 32];
                capability.copy_from_slice(r.take(32)?);
                Frame::Resume {
                    capability: ResumeCapability(capability),
                }
            }
            kind::JOINED => {
                let mut resume = [0u8; 32];
                resume.copy_from_slice(r.take(32)?);
                Frame::Joined {
                    resume: ResumeCapability(resume),
                }
            }
            kind::RESUMED => Frame::Resumed { chat: r.chat()? },
            kind::PEER_AWAY => Frame::PeerAway { chat: r.chat()? },
            kind::PEER_BACK => Frame::PeerBack { chat: r.chat()? },
            kind::RESUME_FAILED => match r.u8()? {
                0 => Frame::ResumeFailed,
                _ => return Err(FrameError::BadField("reason")),
            },
            kind::COLLEAGUE => Frame::Colleague {
                presence: Presence::from_byte(r.u8()?)?,
                name: r.label("name")?,
            },
            kind::CHALLENGE => Frame::Challenge { pow: r.pow()? },
            kind::PROOF => {
                let mut solution = [0u8; 8];
                solution.copy_from_slice(r.take(8)?);
                Frame::Proof { solution }
            }
            other => return Err(FrameError::UnknownType(other)),
        };
        Ok(frame)
    }
}

/// Incremental decoder for a byte stream of frames. It holds at most one
/// partial frame ([`MAX_FRAME_LEN`] bytes), whatever the peer sends.
#[derive(Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

/// Checks a frame header: a known type, within the size limit, with the
/// body length its type has.
fn check_header(kind: u8, len: u16) -> Result<(), FrameError> {
    let len = usize::from(len);
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
    Ok(())
}

/// The length of the whole frame at the start of `bytes`, if it is all
/// there (`None`: only part of it is); an error if its header is bad.
/// Transports that carry one frame per message (WebSocket) cut and check
/// with it too.
pub fn whole_frame_at(bytes: &[u8]) -> Result<Option<usize>, FrameError> {
    let [kind, hi, lo, ..] = *bytes else {
        return Ok(None);
    };
    let len = u16::from_be_bytes([hi, lo]);
    check_header(kind, len)?;
    let whole = HEADER_LEN + usize::from(len);
    Ok((bytes.len() >= whole).then_some(whole))
}

impl FrameDecoder {
    /// Consumes bytes from `input`, appending each complete frame to `out`.
    /// Returns how many bytes were consumed (all of them unless an error
    /// occurred). After an error the stream is unusable: close the connection.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<Frame>) -> Result<usize, FrameError> {
        let mut used = 0;
        while used < input.len() {
            if self.buf.is_empty()
                && let Some(len) = whole_frame_at(&input[used..])?
            {
                // A whole frame in the input: decoded where it lies.
                let frame = &input[used..used + len];
                out.push(Frame::decode_body(frame[0], &frame[HEADER_LEN..])?);
                used += len;
                continue;
            }
            // Part of a frame: fill the header first, then the exact body
            // length it declares.
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
                check_header(self.buf[0], u16::from_be_bytes([self.buf[1], self.buf[2]]))?;
            }
            if self.buf.len() > HEADER_LEN && self.buf.len() == want {
                let frame = Frame::decode_body(self.buf[0], &self.buf[HEADER_LEN..]);
                // An idle connection keeps no buffer (PROTOCOL.md §8: memory
                // per connection is what limits how many can wait).
                self.buf = Vec::new();
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
            Just(EndReason::Blocked),
            Just(EndReason::PeerDisconnected),
            Just(EndReason::RelayShutdown),
            Just(EndReason::Transferred),
            Just(EndReason::CounsellorRevoked),
        ]
    }
    fn arb_chat() -> impl Strategy<Value = ChatNumber> {
        (1u32..).prop_map(|n| ChatNumber::new(n).unwrap())
    }
    fn arb_topic() -> impl Strategy<Value = TopicId> {
        (1u16..).prop_map(|n| TopicId::new(n).unwrap())
    }
    fn arb_language() -> impl Strategy<Value = Language> {
        (b'a'..=b'z', b'a'..=b'z').prop_map(|(a, b)| Language::new([a, b]).unwrap())
    }
    fn arb_label() -> impl Strategy<Value = Label> {
        "[A-Za-z0-9][A-Za-z0-9 ()éë.-]{0,40}[A-Za-z0-9)]"
            .prop_filter_map("valid", |s| Label::new(s).ok())
    }
    fn arb_languages() -> impl Strategy<Value = Vec<Language>> {
        proptest::collection::vec(arb_language(), 0..=MAX_LANGUAGES)
    }

    pub(crate) fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (any::<u8>(), arb_role()).prop_map(|(version, role)| Frame::Hello { version, role }),
            (
                any::<u8>(),
                arb_role(),
                0..=MAX_TOPICS as u8,
                arb_languages(),
                (0..=MAX_POW_DIFFICULTY, any::<[u8; 16]>())
            )
                .prop_map(|(version, role, topics, languages, (difficulty, nonce))| {
                    Frame::Welcome {
                        pow: PowChallenge { difficulty, nonce },
                        version,
                        role,
                        topics,
                        languages,
                    }
                }),
            (1u32.., proptest::option::of(0..u32::MAX)).prop_map(
                |(position, estimated_wait_secs)| {
                    Frame::Queued {
                        position,
                        estimated_wait_secs,
                    }
                }
            ),
            (
                arb_chat(),
                any::<[u8; 16]>(),
                any::<[u8; 32]>(),
                proptest::option::of(arb_topic()),
                proptest::option::of(arb_language())
            )
                .prop_map(|(chat, id, cap, topic, language)| Frame::Paired {
                    chat,
                    pairing_id: PairingId(id),
                    resume: ResumeCapability(cap),
                    topic,
                    language,
                }),
            (
                arb_label(),
                prop_oneof![
                    Just(Presence::SignedOut),
                    Just(Presence::Away),
                    Just(Presence::Full),
                    Just(Presence::Available)
                ]
            )
                .prop_map(|(name, presence)| Frame::Colleague { name, presence }),
            (0..=MAX_POW_DIFFICULTY, any::<[u8; 16]>()).prop_map(|(difficulty, nonce)| {
                Frame::Challenge {
                    pow: PowChallenge { difficulty, nonce },
                }
            }),
            any::<[u8; 8]>().prop_map(|solution| Frame::Proof { solution }),
            any::<[u8; 32]>().prop_map(|c| Frame::Resume {
                capability: ResumeCapability(c)
            }),
            any::<[u8; 32]>().prop_map(|c| Frame::Joined {
                resume: ResumeCapability(c)
            }),
            arb_chat().prop_map(|chat| Frame::Resumed { chat }),
            Just(Frame::ResumeFailed),
            arb_chat().prop_map(|chat| Frame::PeerAway { chat }),
            arb_chat().prop_map(|chat| Frame::PeerBack { chat }),
            (arb_chat(), proptest::collection::vec(any::<u8>(), BLOB_LEN)).prop_map(|(chat, b)| {
                Frame::Forward {
                    chat,
                    blob: Blob::from_slice(&b).unwrap(),
                }
            }),
            (arb_chat(), arb_reason()).prop_map(|(chat, reason)| Frame::End { chat, reason }),
            (arb_topic(), arb_label(), arb_label()).prop_map(|(id, label_nl, label_en)| {
                Frame::Topic {
                    id,
                    label_nl,
                    label_en,
                }
            }),
            (
                proptest::option::of(arb_topic()),
                proptest::option::of(arb_language()),
                any::<[u8; 8]>()
            )
                .prop_map(|(topic, language, pow_solution)| Frame::Join {
                    topic,
                    language,
                    pow_solution
                }),
            (
                prop_oneof![
                    Just(Unavailable::Closed),
                    Just(Unavailable::Busy),
                    Just(Unavailable::WaitExceeded)
                ],
                proptest::option::of(1u64..)
            )
                .prop_map(|(reason, next_open)| Frame::Unavailable { reason, next_open }),
            (
                any::<bool>(),
                any::<u8>(),
                proptest::collection::vec(arb_topic(), 0..=MAX_TOPICS),
                arb_languages()
            )
                .prop_map(|(available, capacity, topics, languages)| Frame::Status {
                    available,
                    capacity,
                    topics,
                    languages
                }),
            proptest::collection::vec(
                (proptest::option::of(arb_topic()), any::<u16>()),
                0..=MAX_TOPICS + 1
            )
            .prop_map(|waiting| Frame::QueueStats { waiting }),
            (
                arb_chat(),
                prop_oneof![
                    Just(TransferTarget::Queue),
                    arb_label().prop_map(TransferTarget::Colleague)
                ]
            )
                .prop_map(|(chat, target)| Frame::Transfer { chat, target }),
            (
                arb_chat(),
                prop_oneof![
                    Just(Refusal::UnknownColleague),
                    Just(Refusal::ColleagueAway),
                    Just(Refusal::ColleagueFull),
                    Just(Refusal::ClientAway)
                ]
            )
                .prop_map(|(chat, reason)| Frame::TransferRefused { chat, reason }),
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
    fn a_decoder_between_frames_holds_no_memory() {
        let chat = ChatNumber::new(1).unwrap();
        let bytes = Frame::Forward {
            chat,
            blob: Blob::new([7; BLOB_LEN]),
        }
        .encode();
        let mut decoder = FrameDecoder::default();
        let mut out = Vec::new();
        decoder.push(&bytes, &mut out).unwrap();
        assert_eq!(decoder.buf.capacity(), 0, "a whole frame is not copied");
        decoder.push(&bytes[..500], &mut out).unwrap();
        decoder.push(&bytes[500..], &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(decoder.buf.capacity(), 0, "a split one is let go");
    }

    #[test]
    fn encoded_lengths_match_the_spec() {
        let chat = ChatNumber::new(1).unwrap();
        let topic = TopicId::new(1).unwrap();
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
                    pow: PowChallenge::NONE,
                    version: 1,
                    role: Role::Counsellor,
                    topics: 6,
                    languages: vec![],
                },
                40,
            ),
            (
                Frame::Queued {
                    position: 3,
                    estimated_wait_secs: None,
                },
                11,
            ),
            (
                Frame::Paired {
                    chat,
                    pairing_id: PairingId([0; 16]),
                    resume: ResumeCapability([0; 32]),
                    topic: None,
                    language: None,
                },
                59,
            ),
            (
                Frame::Colleague {
                    name: Label::new("Noor").unwrap(),
                    presence: Presence::Available,
                },
                69,
            ),
            (
                Frame::Challenge {
                    pow: PowChallenge::NONE,
                },
                20,
            ),
            (Frame::Proof { solution: [0; 8] }, 11),
            (
                Frame::Resume {
                    capability: ResumeCapability([0; 32]),
                },
                35,
            ),
            (
                Frame::Joined {
                    resume: ResumeCapability([0; 32]),
                },
                35,
            ),
            (Frame::Resumed { chat }, 7),
            (Frame::ResumeFailed, 4),
            (Frame::PeerAway { chat }, 7),
            (Frame::PeerBack { chat }, 7),
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
            (
                Frame::Topic {
                    id: topic,
                    label_nl: Label::new("a").unwrap(),
                    label_en: Label::new("b").unwrap(),
                },
                135,
            ),
            (
                Frame::Join {
                    topic: None,
                    language: None,
                    pow_solution: [0; 8],
                },
                15,
            ),
            (
                Frame::Unavailable {
                    reason: Unavailable::Busy,
                    next_open: None,
                },
                12,
            ),
            (
                Frame::Status {
                    available: true,
                    capacity: 1,
                    topics: vec![],
                    languages: vec![],
                },
                55,
            ),
            (Frame::QueueStats { waiting: vec![] }, 72),
            (
                Frame::Transfer {
                    chat,
                    target: TransferTarget::Queue,
                },
                73,
            ),
            (
                Frame::TransferRefused {
                    chat,
                    reason: Refusal::ColleagueFull,
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
            Frame::decode(&[kind::QUEUED, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(FrameError::BadField("position"))
        );
        // Unused slots must be zero, labels printable, flags in range.
        let mut join = Frame::Join {
            topic: None,
            language: None,
            pow_solution: [0; 8],
        }
        .encode();
        join[5] = b'n';
        assert_eq!(Frame::decode(&join), Err(FrameError::BadField("language")));
        let status = || {
            Frame::Status {
                available: true,
                capacity: 1,
                topics: vec![],
                languages: vec![],
            }
            .encode()
        };
        let mut bad = status();
        bad[3] = 2;
        assert_eq!(Frame::decode(&bad), Err(FrameError::BadField("available")));
        let mut bad = status();
        bad[10] = 1;
        assert_eq!(Frame::decode(&bad), Err(FrameError::BadField("topics")));
        let mut topic = Frame::Topic {
            id: TopicId::new(1).unwrap(),
            label_nl: Label::new("a").unwrap(),
            label_en: Label::new("b").unwrap(),
        }
        .encode();
        topic[6] = b'\n';
        assert_eq!(Frame::decode(&topic), Err(FrameError::BadField("label_nl")));
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
        let mut welcome = Frame::Welcome {
            version: 1,
            role: Role::Client,
            topics: 0,
            languages: vec![],
            pow: PowChallenge::NONE,
        }
        .encode();
        welcome[3 + 4 + 16] = MAX_POW_DIFFICULTY + 1;
        assert_eq!(
            Frame::decode(&welcome),
            Err(FrameError::BadField("difficulty"))
        );
    }

    #[test]
    fn labels_follow_the_unicode_rules() {
        for good in ["Sam", "Noor el Amrani", "é", "秘密", "a b", &"x".repeat(64)] {
            assert!(Label::new(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            " Sam",
            "Sam ",
            "Sam\u{a0}",   // no-break space: White_Space at the end
            "\u{3000}Sam", // ideographic space at the start
            "Sa\tm",       // Cc
            "Sa\u{7f}m",   // Cc (DEL)
            "\u{200b}",    // zero-width space: Cf
            "Sa\u{202e}m", // right-to-left override: Cf
            "Sa\u{2066}m", // isolate: Cf
            "Sa\u{feff}m", // byte order mark: Cf
            "Sa\u{2028}m", // line separator: Zl
            "Sa\u{2029}m", // paragraph separator: Zp
            &"x".repeat(65),
        ] {
            assert!(Label::new(bad).is_err(), "{bad:?}");
        }
    }
}
