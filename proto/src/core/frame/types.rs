//! What frames are made of: the wire enums, the newtypes that hold only
//! valid values, and [`Frame`] (PROTOCOL.md §4.1, §4.2).

use thiserror::Error;

use super::*;
use crate::core::coding::{BatchId, Coding, CodingField, FormId};

/// Defines a one-byte wire enum from one table: each variant with its byte
/// and its stable snake_case name. The encoder's byte, the decoder's check,
/// the name in `--json` output and metrics (also its serde name), and the
/// list of every variant for property tests all come from that table.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident (field $field:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $byte:literal, $text:literal; )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every variant, in the order of the table.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The byte on the wire.
            pub fn to_byte(self) -> u8 {
                match self {
                    $($name::$variant => $byte,)+
                }
            }

            /// Reads the byte; one the table does not have is a bad field.
            pub fn from_byte(b: u8) -> Result<Self, FrameError> {
                match b {
                    $($byte => Ok($name::$variant),)+
                    _ => Err(FrameError::BadField($field)),
                }
            }

            /// A stable snake_case name, for `--json` output and metrics.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }
    };
}

wire_enum! {
    /// Which side of a chat an endpoint is.
    pub enum Role (field "role") {
        /// The anonymous young person; no credentials.
        Client = 0x01, "client";
        /// A counsellor, signed in with an operator-issued credential.
        Counsellor = 0x02, "counsellor";
    }
}

wire_enum! {
    /// Why a chat ended, as carried in END frames (PROTOCOL.md §4.3).
    pub enum EndReason (field "reason") {
        /// The person on the sending side ended the chat.
        UserEnded = 0x01, "user_ended";
        /// The sending endpoint aborted because an end-to-end check failed
        /// (certificate, handshake or decryption).
        SecurityFailure = 0x02, "security_failure";
        /// A counsellor ended the chat and blocked it: the client's connection
        /// is closed and can never send again.
        Blocked = 0x03, "blocked";
        /// Relay to endpoint: the peer's connection went away.
        PeerDisconnected = 0x10, "peer_disconnected";
        /// Relay to endpoint: the relay is shutting down.
        RelayShutdown = 0x11, "relay_shutdown";
        /// Relay to endpoint: the chat moves to another counsellor or back to
        /// the queue; the client will get QUEUED or PAIRED next.
        Transferred = 0x12, "transferred";
        /// Relay to client: the counsellor's access was withdrawn by the
        /// helpline (their credential was revoked).
        CounsellorRevoked = 0x13, "counsellor_revoked";
    }
}

wire_enum! {
    /// Why the relay will not queue a client (UNAVAILABLE, PROTOCOL.md §4.2).
    pub enum Unavailable (field "reason") {
        /// Outside opening hours.
        Closed = 0x01, "closed";
        /// The queue is full.
        Busy = 0x02, "busy";
        /// The client waited the maximum time.
        WaitExceeded = 0x03, "wait_exceeded";
    }
}

wire_enum! {
    /// Why a transfer was refused (TRANSFER_REFUSED).
    pub enum Refusal (field "reason") {
        /// No counsellor with that pseudonym is signed in.
        UnknownColleague = 0x01, "unknown_colleague";
        /// The colleague is away.
        ColleagueAway = 0x02, "colleague_away";
        /// The colleague has no room (at capacity).
        ColleagueFull = 0x03, "colleague_full";
        /// The young person's connection is away; try again when they are back.
        ClientAway = 0x04, "client_away";
    }
}

impl Refusal {
    /// What a counsellor is told, in words.
    pub fn text(self) -> &'static str {
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

wire_enum! {
    /// Whether a colleague can take a transfer (COLLEAGUE, PROTOCOL.md §4.2).
    pub enum Presence (field "presence") {
        /// The colleague's last connection is gone.
        SignedOut = 0x00, "signed_out";
        /// Signed in, takes no new chats.
        Away = 0x01, "away";
        /// Available, but at capacity.
        Full = 0x02, "full";
        /// Available with room for another chat.
        Available = 0x03, "available";
    }
}

wire_enum! {
    /// How the relay answered a batch of codings (CODINGS_RESULT,
    /// PROTOCOL.md §4.2).
    pub enum CodingsOutcome (field "result") {
        /// Counted (or counted before: a repeated batch id).
        Stored = 0x00, "stored";
        /// The form changed since the client asked for it: ask again and
        /// code the batch with the new form.
        StaleForm = 0x01, "stale_form";
        /// A coding is for a month the relay no longer (or not yet) accepts;
        /// nothing of the batch was counted.
        MonthRefused = 0x02, "month_refused";
        /// This relay collects no case statistics.
        NotCollecting = 0x03, "not_collecting";
        /// Not counted now (the store is unavailable or busy); keep the
        /// batch and send it again later.
        Later = 0x04, "later";
    }
}

/// A connection-local chat number, assigned by the relay in PAIRED.
/// It is never zero and never shared between the two sides of a chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChatNumber(pub(super) u32);

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
pub struct TopicId(pub(super) u16);

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
pub struct Language(pub(super) [u8; 2]);

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
    /// Counsellor → relay: send me the coding form.
    FormAsk,
    /// Relay → counsellor: one field of the coding form, `index` of
    /// `fields`; `field` is `None` only in the one FORM_FIELD of a relay
    /// that collects no codings (`fields` 0).
    FormField {
        form: FormId,
        fields: u8,
        index: u8,
        field: Option<CodingField>,
    },
    /// Counsellor → relay: a batch of codings, counted as a whole or not at all.
    Codings {
        batch: BatchId,
        form: FormId,
        codings: Vec<Coding>,
    },
    /// Relay → counsellor: what became of a batch.
    CodingsResult {
        batch: BatchId,
        outcome: CodingsOutcome,
    },
}

/// Declares a direction's frames, each [`Frame`]'s variant of that name
/// with the same fields, and the conversions between them and [`Frame`]:
/// into it always, out of it only for a frame of that direction (`Err`
/// gives the frame back). The compiler checks each variant against
/// [`Frame`]'s.
macro_rules! direction {
    (
        $(#[$meta:meta])*
        pub enum $dir:ident {
            $( $variant:ident $({ $($field:ident : $ty:ty),* $(,)? })? ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum $dir {
            $( $variant $({ $($field: $ty),* })? ),+
        }

        impl From<$dir> for Frame {
            fn from(frame: $dir) -> Frame {
                match frame {
                    $( $dir::$variant $({ $($field),* })? => Frame::$variant $({ $($field),* })?, )+
                }
            }
        }

        impl TryFrom<Frame> for $dir {
            type Error = Frame;
            fn try_from(frame: Frame) -> Result<$dir, Frame> {
                match frame {
                    $( Frame::$variant $({ $($field),* })? => Ok($dir::$variant $({ $($field),* })?), )+
                    other => Err(other),
                }
            }
        }
    };
}

direction! {
    /// A frame an endpoint sends to the relay (PROTOCOL.md §4.2, "→ relay").
    /// The relay's core takes only these: it cannot be written to act on a
    /// frame that only the relay sends.
    pub enum ToRelay {
        Hello { version: u8, role: Role },
        Join { topic: Option<TopicId>, language: Option<Language>, pow_solution: [u8; 8] },
        Forward { chat: ChatNumber, blob: Blob },
        End { chat: ChatNumber, reason: EndReason },
        Status { available: bool, capacity: u8, topics: Vec<TopicId>, languages: Vec<Language> },
        Transfer { chat: ChatNumber, target: TransferTarget },
        Resume { capability: ResumeCapability },
        Proof { solution: [u8; 8] },
        FormAsk,
        Codings { batch: BatchId, form: FormId, codings: Vec<Coding> },
    }
}

direction! {
    /// A frame the relay sends to an endpoint (PROTOCOL.md §4.2, "relay →").
    /// The client's state machines take only these.
    pub enum FromRelay {
        Welcome { version: u8, role: Role, topics: u8, languages: Vec<Language>, pow: PowChallenge },
        Queued { position: u32, estimated_wait_secs: Option<u32> },
        Paired {
            chat: ChatNumber,
            pairing_id: PairingId,
            resume: ResumeCapability,
            topic: Option<TopicId>,
            language: Option<Language>,
        },
        Forward { chat: ChatNumber, blob: Blob },
        End { chat: ChatNumber, reason: EndReason },
        Topic { id: TopicId, label_nl: Label, label_en: Label },
        Unavailable { reason: Unavailable, next_open: Option<u64> },
        QueueStats { waiting: Vec<(Option<TopicId>, u16)> },
        TransferRefused { chat: ChatNumber, reason: Refusal },
        Resumed { chat: ChatNumber },
        ResumeFailed,
        PeerAway { chat: ChatNumber },
        PeerBack { chat: ChatNumber },
        Joined { resume: ResumeCapability },
        Colleague { name: Label, presence: Presence },
        Challenge { pow: PowChallenge },
        FormField { form: FormId, fields: u8, index: u8, field: Option<CodingField> },
        CodingsResult { batch: BatchId, outcome: CodingsOutcome },
    }
}

impl ToRelay {
    /// Decoded frames as an endpoint's: one that only the relay sends ends
    /// the list, and sets `invalid` to UNEXPECTED_FRAME, so that the
    /// connection is closed after the frames before it (PROTOCOL.md §3.3).
    pub fn from_decoded(
        frames: Vec<Frame>,
        invalid: &mut Option<crate::core::CloseCode>,
    ) -> Vec<ToRelay> {
        let mut out = Vec::with_capacity(frames.len());
        for frame in frames {
            match ToRelay::try_from(frame) {
                Ok(frame) => out.push(frame),
                Err(_) => {
                    *invalid = Some(crate::core::CloseCode::UnexpectedFrame);
                    break;
                }
            }
        }
        out
    }
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
    pub fn close_code(self) -> crate::core::CloseCode {
        match self {
            FrameError::TooLarge(_) => crate::core::CloseCode::FrameTooLarge,
            _ => crate::core::CloseCode::MalformedFrame,
        }
    }
}
