//! What the relay counts about itself, for operators: totals and gauges
//! that say nothing about anyone.
//!
//! The core adds to a [`Stats`] as it works; the shell takes it with
//! [`Relay::take_stats`](super::relay::Relay::take_stats) (which starts a new
//! one) and adds it to its Prometheus metrics. Labels are fixed names from
//! this module, the protocol's close codes and end reasons, and the topic
//! ids of the operator's config; nothing a peer sends becomes a label.
//! [`Gauges`] is a snapshot of the current state, taken on demand.

use std::collections::BTreeMap;
use std::time::Duration;

use super::CloseCode;
use super::frame::{EndReason, TopicId};

/// Counts since the last [`Relay::take_stats`](super::relay::Relay::take_stats).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stats {
    /// Chats started (a transfer to a colleague starts one too).
    pub pairings: u64,
    /// Transfers carried out, to a colleague or back to the queue.
    pub transfers: u64,
    /// Chat sides ended, by the reason the relay sent or received.
    pub chats_ended: BTreeMap<&'static str, u64>,
    /// FORWARD frames and their bytes copied to a peer (or held for it).
    pub frames_forwarded: u64,
    pub bytes_forwarded: u64,
    /// Connections the relay closed, by close code.
    pub closes: BTreeMap<&'static str, u64>,
    /// How long each client that was paired had waited in the queue.
    pub waits: Vec<Duration>,
    /// CHALLENGE frames sent to waiting clients in a crowded queue.
    pub rent_challenges: u64,
    /// Pairs the router chose that came too late to start: the young
    /// person had gone or the counsellor had no room by then. A waiting
    /// young person kept its place.
    pub late_pairings: u64,
}

impl Stats {
    pub(crate) fn ended(&mut self, reason: EndReason) {
        *self.chats_ended.entry(reason.as_str()).or_default() += 1;
    }

    pub(crate) fn closed(&mut self, code: CloseCode) {
        *self.closes.entry(code.name()).or_default() += 1;
    }
}

/// The relay's state right now.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Gauges {
    /// Open connections that said HELLO as a client / as a counsellor, and
    /// those that have not said HELLO yet.
    pub clients: usize,
    pub counsellors: usize,
    pub unidentified: usize,
    /// Clients that said HELLO and have not joined the queue (yet).
    pub clients_not_joined: usize,
    /// Connections in their QUIC handshake or before their control stream
    /// (the shell counts these; the core never sees them).
    pub handshaking: usize,
    /// Counsellors available with room for another chat.
    pub counsellors_with_room: usize,
    /// Waiting clients per chosen topic (`None` = no topic chosen).
    pub waiting: BTreeMap<Option<TopicId>, usize>,
    /// Waiting clients whose connection dropped, keeping their place.
    pub waiting_away: usize,
    /// Live chats, and chat sides waiting for their connection to resume.
    pub chats: usize,
    pub sides_away: usize,
    /// The proof-of-work difficulty asked of new clients.
    pub pow_difficulty: u8,
    /// Whether the opening hours say the helpline is open.
    pub open: bool,
}
