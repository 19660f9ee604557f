//! The sans-IO core: everything the relay decides, with no sockets, no tasks
//! and no clock of its own.
//!
//! Data flows one way through it: the shell feeds network bytes and
//! connection events in with `handle_*(now, ..)`, the core decodes frames
//! ([`frame`]), updates the pairing queue ([`pairing`]) and the sessions
//! ([`relay`]), and the shell drains what to send or close with
//! `poll_*()`. Time is passed in; randomness comes from an RNG handed over at
//! construction. [`content`] is the end-to-end message format that only the
//! two endpoints ever see in plaintext.

pub mod content;
pub mod frame;
pub mod hours;
pub mod limits;
pub mod pairing;
pub mod ratelimit;
pub mod relay;
pub mod stats;

use std::time::{Duration, Instant};

/// The time as the shell hands it to the core: a monotonic instant for
/// deadlines and wall-clock seconds for opening hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub unix: i64,
}

impl Now {
    /// Moves both clocks forward (virtual clocks in tests).
    pub fn advance(&mut self, by: Duration) {
        self.mono += by;
        self.unix += by.as_secs() as i64;
    }
}

/// QUIC application close codes (PROTOCOL.md §3.3). A peer gets one of these,
/// never our internal error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum CloseCode {
    /// Normal close.
    NoError = 0x00,
    /// Unknown frame type, wrong body length or a bad field value.
    MalformedFrame = 0x01,
    /// A frame header declared a body longer than any frame may be.
    FrameTooLarge = 0x02,
    /// A well-formed frame that is not allowed in the connection's state.
    UnexpectedFrame = 0x03,
    /// HELLO named a protocol version this relay does not speak: "please update".
    UnsupportedVersion = 0x04,
    /// The counsellor role was requested without a valid relay credential.
    NotAuthorized = 0x05,
    /// The relay is full (queue or connections); try again later.
    Busy = 0x06,
    /// No HELLO arrived within the hello timeout.
    HelloTimeout = 0x07,
    /// The relay is shutting down.
    ShuttingDown = 0x08,
    /// The peer opened a stream other than the one control stream.
    UnexpectedStream = 0x09,
    /// The peer did not read; the relay's buffer for it overflowed.
    SlowConsumer = 0x0a,
    /// Something failed inside the relay; not the peer's fault.
    InternalError = 0x0b,
    /// The peer sent more frames or bytes per second than allowed.
    RateLimited = 0x0c,
    /// JOIN carried a wrong proof-of-work solution.
    ProofOfWorkFailed = 0x0d,
    /// The counsellor's relay credential was revoked by the organisation.
    Revoked = 0x0e,
}

impl CloseCode {
    pub fn code(self) -> u32 {
        self as u32
    }

    pub fn from_code(code: u64) -> Option<CloseCode> {
        use CloseCode::*;
        Some(match code {
            0x00 => NoError,
            0x01 => MalformedFrame,
            0x02 => FrameTooLarge,
            0x03 => UnexpectedFrame,
            0x04 => UnsupportedVersion,
            0x05 => NotAuthorized,
            0x06 => Busy,
            0x07 => HelloTimeout,
            0x08 => ShuttingDown,
            0x09 => UnexpectedStream,
            0x0a => SlowConsumer,
            0x0b => InternalError,
            0x0c => RateLimited,
            0x0d => ProofOfWorkFailed,
            0x0e => Revoked,
            _ => return None,
        })
    }

    /// A stable snake_case name, for metrics labels.
    pub fn name(self) -> &'static str {
        use CloseCode::*;
        match self {
            NoError => "no_error",
            MalformedFrame => "malformed_frame",
            FrameTooLarge => "frame_too_large",
            UnexpectedFrame => "unexpected_frame",
            UnsupportedVersion => "unsupported_version",
            NotAuthorized => "not_authorized",
            Busy => "busy",
            HelloTimeout => "hello_timeout",
            ShuttingDown => "shutting_down",
            UnexpectedStream => "unexpected_stream",
            SlowConsumer => "slow_consumer",
            InternalError => "internal_error",
            RateLimited => "rate_limited",
            ProofOfWorkFailed => "proof_of_work_failed",
            Revoked => "revoked",
        }
    }

    /// Short reason phrase sent in the QUIC CONNECTION_CLOSE frame.
    pub fn reason(self) -> &'static str {
        use CloseCode::*;
        match self {
            NoError => "bye",
            MalformedFrame => "malformed frame",
            FrameTooLarge => "frame too large",
            UnexpectedFrame => "unexpected frame",
            UnsupportedVersion => "unsupported protocol version, please update",
            NotAuthorized => "not authorized",
            Busy => "relay busy, try again later",
            HelloTimeout => "hello timeout",
            ShuttingDown => "relay shutting down",
            UnexpectedStream => "unexpected stream",
            SlowConsumer => "peer too slow",
            InternalError => "internal error",
            RateLimited => "too many frames, slow down",
            ProofOfWorkFailed => "proof of work failed",
            Revoked => "your sign-in was revoked by the helpline",
        }
    }
}
