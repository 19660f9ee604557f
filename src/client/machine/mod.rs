//! The chat roles as deterministic state machines, without I/O: no tokio,
//! no sockets, no clock of their own (after quinn-proto, and like the
//! relay's core).
//!
//! A machine takes what happens as calls: [`Machine::handle_link`] (a new
//! connection, a frame from the relay, the connection lost),
//! [`Machine::handle_input`] (a line typed, a command, the end of input,
//! a quick exit), [`Machine::handle_proof`] (a proof of work solved) and
//! [`Machine::handle_timeout`], each with the time `now`. What it wants
//! done comes out of [`Machine::poll_transmit`] (frames to send, a new
//! connection, leave), what the user should see out of
//! [`Machine::poll_event`], and when it next needs the time out of
//! [`Machine::poll_timeout`]. The one tokio driver (`client::driver`) does
//! the I/O for both roles; tests drive the machines on a virtual clock.
//!
//! Both roles share [`link::Link`] (queues, greeting, reconnect with
//! backoff) and [`conversation::Conversation`] (one end-to-end chat:
//! sealing, pacing, acks, resends); what differs is their state: one chat
//! and a place in the queue ([`anonymous`]), or several chats and a status
//! ([`counsellor`]).

pub mod anonymous;
pub mod coding;
pub mod conversation;
pub mod counsellor;
pub mod link;

use std::time::Instant;

use crate::client::ClientError;
use crate::client::chat::ChatEvent;
use crate::core::frame::{FromRelay, PowChallenge, ToRelay};
use link::Link;

/// What happened to the connection to the relay.
#[derive(Debug)]
pub enum LinkEvent {
    /// A new connection is open (after [`Transmit::Connect`]).
    Up,
    /// A frame from the relay.
    Frame(FromRelay),
    /// The connection is gone, or an attempt to open one failed.
    Down(ClientError),
}

/// What the person at the keyboard did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A line: a message, or (counsellors) a command.
    Line(String),
    /// A command from a richer frontend (the counsellor's console), already
    /// parsed; a message in it may span several lines.
    Command(counsellor::Command),
    /// Input ended: leave once what was sent is confirmed.
    EndOfInput,
    /// Leave at once.
    QuickExit,
}

impl From<String> for Input {
    fn from(line: String) -> Input {
        Input::Line(line)
    }
}

/// What a machine asks its driver to do, in order.
#[derive(Debug)]
pub enum Transmit {
    /// Write a frame on the current connection.
    Frame(ToRelay),
    /// Solve a proof of work off the async threads and hand the solution
    /// to [`Machine::handle_proof`] with this generation.
    SolveProof {
        generation: u64,
        challenge: PowChallenge,
    },
    /// Give up the current connection (it closes with RECONNECTING) and
    /// open a new one; report [`LinkEvent::Up`] or [`LinkEvent::Down`].
    /// The attempt must not outlast `by`, when the machine gives up.
    Connect { by: Instant },
    /// Finish the stream, wait a moment for the relay to close, and close
    /// with NO_ERROR (PROTOCOL.md §7.1).
    Leave,
    /// Close with NO_ERROR at once.
    QuickExit,
    /// Finish the stream and close with SECURITY_FAILURE (§6.1).
    AbortSecurity,
}

/// A chat role as a state machine; see the module doc.
pub trait Machine {
    fn handle_link(&mut self, now: Instant, event: LinkEvent);
    fn handle_input(&mut self, now: Instant, input: Input);
    fn handle_proof(&mut self, now: Instant, generation: u64, solution: [u8; 8]);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_timeout(&mut self, now: Instant) -> Option<Instant>;

    /// The shared half, whose queues the `poll_*` methods drain.
    fn link(&mut self) -> &mut Link;

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.link().poll_transmit()
    }

    fn poll_event(&mut self) -> Option<ChatEvent> {
        self.link().poll_event()
    }

    /// `Some` once, when the run is over.
    fn take_outcome(&mut self) -> Option<Result<(), ClientError>> {
        self.link().take_outcome()
    }
}
