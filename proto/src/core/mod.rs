//! The sans-IO core: everything the relay decides, with no sockets, no tasks
//! and no clock of its own.
//!
//! Data flows one way through it: the shell feeds network bytes and
//! connection events in with `handle_*(now, ..)`, the core decodes frames
//! ([`frame`]), keeps the connections and chats ([`relay`]), hands queue
//! changes to the routing seam ([`router`], in-process over the queue of
//! [`pairing`]) and acts on its answers, and the shell drains what to send
//! or close with `poll_*()`. Time is passed in; randomness comes from an RNG handed over at
//! construction. The core knows nothing of what the chats say: the
//! end-to-end message format is in [`crate::crypto::content`].

pub mod coding;
pub mod frame;
pub mod hours;
pub mod limit_table;
pub mod limits;
pub mod pairing;
pub mod ratelimit;
pub mod relay;
pub mod router;
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

/// Defines [`CloseCode`] from one table: each code with its number, its
/// stable snake_case name and the reason phrase that goes on the wire.
macro_rules! close_codes {
    (
        $(#[$meta:meta])*
        pub enum CloseCode {
            $( $(#[$vmeta:meta])* $variant:ident = $code:literal, $name:literal, $reason:literal; )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum CloseCode {
            $( $(#[$vmeta])* $variant, )+
        }

        impl CloseCode {
            /// Every code, for tests and metrics.
            pub const ALL: &'static [CloseCode] = &[$(CloseCode::$variant),+];

            /// The QUIC application error code.
            pub fn code(self) -> u32 {
                match self {
                    $(CloseCode::$variant => $code,)+
                }
            }

            pub fn from_code(code: u64) -> Option<CloseCode> {
                match code {
                    $($code => Some(CloseCode::$variant),)+
                    _ => None,
                }
            }

            /// A stable snake_case name, for metrics labels and `--json` output.
            pub fn name(self) -> &'static str {
                match self {
                    $(CloseCode::$variant => $name,)+
                }
            }

            /// Short reason phrase sent in the QUIC CONNECTION_CLOSE frame.
            pub fn reason(self) -> &'static str {
                match self {
                    $(CloseCode::$variant => $reason,)+
                }
            }
        }
    };
}

close_codes! {
    /// QUIC application close codes the relay sends (PROTOCOL.md §3.3). A
    /// peer gets one of these, never our internal error text. 0x09 and 0x0c
    /// are reserved: earlier drafts used them for a second stream (QUIC's
    /// stream limits stop that first) and for rate limits (the relay now
    /// slows a fast sender with flow control instead of closing it).
    pub enum CloseCode {
        /// Normal close.
        NoError = 0x00, "no_error", "bye";
        /// Unknown frame type, wrong body length or a bad field value.
        MalformedFrame = 0x01, "malformed_frame", "malformed frame";
        /// A frame header declared a body longer than any frame may be.
        FrameTooLarge = 0x02, "frame_too_large", "frame too large";
        /// A well-formed frame that is not allowed in the connection's state.
        UnexpectedFrame = 0x03, "unexpected_frame", "unexpected frame";
        /// HELLO named a protocol version this relay does not speak: "please update".
        UnsupportedVersion = 0x04, "unsupported_version",
            "unsupported protocol version, please update";
        /// The counsellor role was requested without a valid relay credential,
        /// or a counsellor credential asked for the anonymous role.
        NotAuthorized = 0x05, "not_authorized", "not authorized";
        /// The relay has no room for another connection; try again later.
        Busy = 0x06, "busy", "relay busy, try again later";
        /// The peer did not take its next step in time: control stream, HELLO,
        /// JOIN, PROOF or handshake message 1 (PROTOCOL.md §8).
        Timeout = 0x07, "timeout", "timeout";
        /// The relay is shutting down.
        ShuttingDown = 0x08, "shutting_down", "relay shutting down";
        /// The peer did not read; the relay's buffer for it overflowed.
        SlowConsumer = 0x0a, "slow_consumer", "peer too slow";
        /// Something failed inside the relay; not the peer's fault.
        InternalError = 0x0b, "internal_error", "internal error";
        /// JOIN or PROOF carried a wrong proof-of-work solution.
        ProofOfWorkFailed = 0x0d, "proof_of_work_failed", "proof of work failed";
        /// The counsellor's relay credential was revoked by the organisation.
        Revoked = 0x0e, "revoked", "your sign-in was revoked by the helpline";
        /// The relay is leaving its cluster: reconnect to another relay of
        /// the same service and resume; everything waits there.
        Draining = 0x0f, "draining", "relay draining: continue on another relay";
    }
}

/// QUIC application close codes an endpoint sends (PROTOCOL.md §3.3). They
/// tell the relay whether the endpoint left on purpose or will be back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum EndpointClose {
    /// The person left: their chats end with USER_ENDED, a waiting client
    /// leaves the queue for good.
    Left = 0x00,
    /// Left after an end-to-end check failed: chats end with SECURITY_FAILURE.
    SecurityFailure = 0x10,
    /// This connection is given up, another one will resume (§7.4).
    Reconnecting = 0x11,
}

impl EndpointClose {
    pub fn code(self) -> u32 {
        self as u32
    }

    pub fn from_code(code: u64) -> Option<EndpointClose> {
        [
            EndpointClose::Left,
            EndpointClose::SecurityFailure,
            EndpointClose::Reconnecting,
        ]
        .into_iter()
        .find(|c| u64::from(c.code()) == code)
    }
}

/// How a connection ended, as the relay tells it from the way it closed
/// (PROTOCOL.md §3.3, §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// The endpoint left on purpose (an application close, or the end of
    /// its stream): its chats end at once with this reason, a waiting
    /// client's place and ticket are gone.
    Left(frame::EndReason),
    /// The connection was lost (timeout, reset, or RECONNECTING): its chats
    /// and a waiting client's place wait `resume_window` for a RESUME.
    Lost,
}

impl Departure {
    /// The departure an endpoint's application close code means. Codes
    /// other than those of [`EndpointClose`] mean it gave up for an error
    /// of its own: it left, and its chats end as PEER_DISCONNECTED.
    pub fn from_application_close(code: u64) -> Departure {
        match EndpointClose::from_code(code) {
            Some(EndpointClose::Left) => Departure::Left(frame::EndReason::UserEnded),
            Some(EndpointClose::SecurityFailure) => {
                Departure::Left(frame::EndReason::SecurityFailure)
            }
            Some(EndpointClose::Reconnecting) => Departure::Lost,
            None => Departure::Left(frame::EndReason::PeerDisconnected),
        }
    }
}
