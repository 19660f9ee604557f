//! What both chat roles share: the events a user sees ([`ChatEvent`], the
//! versioned list in `proto/EVENTS.md`), the welcome exchange, and one
//! end-to-end conversation (`Conversation`): sealing, pacing, resending
//! and delivery bookkeeping.
//!
//! The roles themselves are [`super::anonymous::run_client`] and
//! [`super::counsellor::run_counsellor`]; each reads lines from an input
//! channel (closed = end of input) and frames from the relay, and reports
//! [`ChatEvent`]s on an output channel. Every line a person types as a
//! message gets an id and ends, always, as `delivered` or `not_delivered`.

use std::collections::VecDeque;

use serde::Serialize;

use tokio::sync::mpsc;

use super::{ClientError, RelayStream};
use crate::core::frame::{
    Blob, ChatNumber, EndReason, Frame, Label, Language, PROTOCOL_VERSION, PowChallenge, Presence,
    Role, TopicId,
};
use crate::core::limits::{
    MAX_ACK_LOG, MAX_UNACKED_FRAMES, PACE_FORWARD_BURST, PACE_FORWARD_PER_SEC,
};
use crate::core::ratelimit::TokenBucket;
use crate::crypto::content::{Content, ContentError, Reassembler, split_text};
use crate::crypto::e2e::{self, Received, Session};

pub use super::anonymous::{ClientRequest, run_client};
pub use super::counsellor::{CounsellorSettings, run_counsellor};

/// The version of the event list (`proto/EVENTS.md`); every JSON event
/// carries it as `"v"`.
pub const EVENTS_VERSION: u32 = 1;

/// One topic as the relay offers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicInfo {
    pub id: u16,
    pub nl: String,
    pub en: String,
}

/// Clients waiting for one topic (`None`: no topic chosen).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waiting {
    pub topic: Option<u16>,
    pub count: u16,
}

/// Why a chat (or a wait in the queue) ended, as a user is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndedReason {
    /// You ended the chat.
    YouEnded,
    /// You left the queue before a counsellor was free.
    LeftQueue,
    /// The other side ended the chat.
    PeerEnded,
    /// The other side's connection went away for good.
    PeerDisconnected,
    /// An end-to-end check failed, here or on the other side.
    SecurityFailure,
    /// The relay is restarting.
    RelayShutdown,
    /// The helpline is too busy to take you now.
    Busy,
    /// You waited the longest time the helpline allows.
    WaitExceeded,
    /// Your connection was away too long: the chat ended meanwhile.
    EndedWhileAway,
    /// The counsellor ended the chat and blocked it.
    Blocked,
    /// The counsellor's access was withdrawn by the helpline.
    CounsellorRevoked,
    /// Counsellor: you ended the chat and blocked it.
    YouBlocked,
    /// Counsellor: the chat went to a colleague or back to the queue.
    Transferred,
    /// Counsellor: your sign-in was revoked; the helpline ended your chats.
    Revoked,
    /// Counsellor: your session ended (the relay refused you, or an error);
    /// its chats ended with it.
    SignedOut,
}

impl EndedReason {
    /// How an END the peer (or the relay) sent is told to this side.
    pub fn from_wire(reason: EndReason) -> EndedReason {
        match reason {
            EndReason::UserEnded => EndedReason::PeerEnded,
            EndReason::SecurityFailure => EndedReason::SecurityFailure,
            EndReason::Blocked => EndedReason::Blocked,
            EndReason::PeerDisconnected => EndedReason::PeerDisconnected,
            EndReason::RelayShutdown => EndedReason::RelayShutdown,
            EndReason::Transferred => EndedReason::Transferred,
            EndReason::CounsellorRevoked => EndedReason::CounsellorRevoked,
        }
    }

    fn text(self) -> &'static str {
        match self {
            EndedReason::YouEnded => "you ended the chat",
            EndedReason::LeftQueue => "you left the queue",
            EndedReason::PeerEnded => "the other side ended the chat",
            EndedReason::PeerDisconnected => "the other side's connection is gone",
            EndedReason::SecurityFailure => {
                "a security check failed; nothing more was sent. Please start a new chat"
            }
            EndedReason::RelayShutdown => "the service is restarting; please try again in a moment",
            EndedReason::Busy => "the helpline is very busy; please try again later",
            EndedReason::WaitExceeded => {
                "you waited the longest time we allow; please try again later"
            }
            EndedReason::EndedWhileAway => "your connection was away too long",
            EndedReason::Blocked => "the counsellor ended the chat",
            EndedReason::CounsellorRevoked => {
                "this counsellor can no longer chat for the helpline. \
                 You can start a new chat with another counsellor"
            }
            EndedReason::YouBlocked => "you ended and blocked the chat",
            EndedReason::Transferred => "the chat was handed on",
            EndedReason::Revoked => "your sign-in was revoked by the helpline",
            EndedReason::SignedOut => "your session ended",
        }
    }
}

/// Why the client is reconnecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconnectReason {
    /// The connection was lost.
    Lost,
    /// The relay is restarting (counsellors sign in again when it is back).
    RelayRestarting,
}

/// Something the user should see. Serialised one per line with `--json`
/// (`proto/EVENTS.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ChatEvent {
    /// The relay accepted us; what it offers.
    Connected {
        topics: Vec<TopicInfo>,
        languages: Vec<String>,
    },
    /// Our place in the queue (1 = next) and the estimated wait, if known.
    Queued {
        position: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        estimated_wait_secs: Option<u32>,
    },
    /// The service is closed; when it opens next (unix seconds), if known.
    Closed {
        #[serde(skip_serializing_if = "Option::is_none")]
        next_open: Option<u64>,
    },
    /// A chat began. The client sees the counsellor's verified pseudonym.
    /// The counsellor sees the chat number and what the young person chose,
    /// at once, while the young person's handshake is still on its way.
    Paired {
        #[serde(skip_serializing_if = "Option::is_none")]
        counsellor: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        chat: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<u16>,
        #[serde(skip_serializing_if = "Option::is_none")]
        language: Option<String>,
    },
    /// Counsellor: the young person's handshake arrived and was answered;
    /// messages can flow.
    Ready { chat: u32 },
    /// Client: the chat moved to another counsellor, verified like the first.
    Transferred { counsellor: String },
    /// Our connection dropped; trying to take the chat up again.
    Reconnecting { reason: ReconnectReason },
    /// We are back: in the chat with the same counsellor and keys, or, while
    /// waiting, at our old place in the queue.
    Resumed {
        #[serde(skip_serializing_if = "Option::is_none")]
        chat: Option<u32>,
    },
    /// The other side's connection dropped; they may come back.
    PeerAway {
        #[serde(skip_serializing_if = "Option::is_none")]
        chat: Option<u32>,
    },
    /// The other side is back.
    PeerBack {
        #[serde(skip_serializing_if = "Option::is_none")]
        chat: Option<u32>,
    },
    /// Our message `id` left for the relay.
    Sent {
        id: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        chat: Option<u32>,
    },
    /// The other side confirmed message `id` (inside the encryption).
    Delivered {
        id: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        chat: Option<u32>,
    },
    /// Message `id` did not reach the other side and never will.
    NotDelivered {
        id: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        chat: Option<u32>,
    },
    /// A message from the other side.
    Message {
        text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        chat: Option<u32>,
    },
    /// A chat is over, and why.
    Ended {
        reason: EndedReason,
        #[serde(skip_serializing_if = "Option::is_none")]
        chat: Option<u32>,
        /// For a security failure found here: which check failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// Counsellor: a transfer did not happen; the chat stays.
    TransferRefused { chat: u32, reason: String },
    /// Counsellor: clients waiting, per topic.
    QueueStats { waiting: Vec<Waiting> },
    /// Counsellor: a colleague signed in, changed status or left.
    Colleague { name: String, presence: String },
    /// Counsellor: what it now takes.
    Status { available: bool, capacity: u8 },
    /// Counsellor: its open chats.
    Chats { chats: Vec<u32> },
    /// Counsellor: the line commands.
    Help { commands: Vec<String> },
    /// Something went wrong. `fatal`: the program ends; `code` names the
    /// cause for scripts (`proto/EVENTS.md`).
    Error {
        message: String,
        fatal: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
}

fn minutes(secs: u32) -> String {
    match secs {
        0..=59 => "less than a minute".into(),
        60..=119 => "about a minute".into(),
        _ => format!("about {} minutes", (secs + 30) / 60),
    }
}

fn utc(unix: u64) -> String {
    chrono::DateTime::from_timestamp(unix as i64, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| unix.to_string())
}

impl ChatEvent {
    /// The event as one JSON object with the list's version.
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("v".into(), EVENTS_VERSION.into());
        }
        value.to_string()
    }

    /// A non-fatal error with a message.
    pub fn error(message: impl Into<String>) -> ChatEvent {
        ChatEvent::Error {
            message: message.into(),
            fatal: false,
            code: None,
        }
    }

    /// The error that ends the program.
    pub fn fatal(e: &ClientError) -> ChatEvent {
        ChatEvent::Error {
            message: e.to_string(),
            fatal: true,
            code: Some(e.code().into()),
        }
    }

    /// A chat (or a wait) ended for `reason`.
    pub fn ended(reason: EndedReason, chat: Option<u32>) -> ChatEvent {
        ChatEvent::Ended {
            reason,
            chat,
            detail: None,
        }
    }

    /// A line (or lines) for a person to read.
    pub fn to_text(&self) -> String {
        let at = |chat: &Option<u32>| chat.map(|c| format!("[@{c}] ")).unwrap_or_default();
        match self {
            ChatEvent::Connected { .. } => "Connected to the relay.".into(),
            ChatEvent::Queued {
                position,
                estimated_wait_secs,
            } => match estimated_wait_secs {
                Some(s) => format!(
                    "Waiting for a counsellor: you are number {position} in line; {}.",
                    minutes(*s)
                ),
                None => format!("Waiting for a counsellor: you are number {position} in line."),
            },
            ChatEvent::Closed { next_open } => match next_open {
                Some(t) => format!("The chat is closed now. It opens again at {}.", utc(*t)),
                None => "The chat is closed now.".into(),
            },
            ChatEvent::Paired {
                counsellor: Some(name),
                ..
            } => format!(
                "You are now chatting with {name} (identity verified, end-to-end encrypted)."
            ),
            ChatEvent::Paired {
                chat,
                topic,
                language,
                ..
            } => {
                let topic = topic.map_or("no topic".to_owned(), |t| format!("topic {t}"));
                let language = language.as_deref().unwrap_or("any language");
                format!(
                    "{}A young person was paired with you ({topic}, {language}); waiting for them to connect.",
                    at(chat)
                )
            }
            ChatEvent::Ready { chat } => format!(
                "[@{chat}] The young person is connected (end-to-end encrypted); you can type."
            ),
            ChatEvent::Transferred { counsellor } => {
                format!(
                    "You are now chatting with {counsellor} (identity verified, end-to-end encrypted)."
                )
            }
            ChatEvent::Message { text, chat } => format!("{}> {text}", at(chat)),
            ChatEvent::Reconnecting {
                reason: ReconnectReason::RelayRestarting,
            } => "The service is restarting; reconnecting…".into(),
            ChatEvent::Reconnecting { .. } => "Connection lost; reconnecting…".into(),
            ChatEvent::Resumed { chat } => format!("{}Reconnected; the chat continues.", at(chat)),
            ChatEvent::PeerAway { chat } => format!(
                "{}The other side lost their connection; waiting for them.",
                at(chat)
            ),
            ChatEvent::PeerBack { chat } => format!("{}The other side is back.", at(chat)),
            ChatEvent::Sent { id, chat } => format!("{}  (#{id} sent)", at(chat)),
            ChatEvent::Delivered { id, chat } => format!("{}  (#{id} delivered)", at(chat)),
            ChatEvent::NotDelivered { id, chat } => format!("{}  (#{id} NOT delivered)", at(chat)),
            ChatEvent::Ended {
                reason,
                chat,
                detail,
            } => match detail {
                Some(detail) => format!("{}Chat ended: {} ({detail}).", at(chat), reason.text()),
                None => format!("{}Chat ended: {}.", at(chat), reason.text()),
            },
            ChatEvent::TransferRefused { chat, reason } => {
                format!("[@{chat}] Transfer refused: {reason}.")
            }
            ChatEvent::QueueStats { waiting } => {
                let total: u32 = waiting.iter().map(|w| u32::from(w.count)).sum();
                let parts: Vec<String> = waiting
                    .iter()
                    .map(|w| match w.topic {
                        Some(t) => format!("topic {t}: {}", w.count),
                        None => format!("no topic: {}", w.count),
                    })
                    .collect();
                format!("Queue: {total} waiting ({}).", parts.join(", "))
            }
            ChatEvent::Colleague { name, presence } => match presence.as_str() {
                "signed_out" => format!("Colleague {name} signed out."),
                "away" => format!("Colleague {name} is away."),
                "full" => format!("Colleague {name} has no room for another chat."),
                _ => format!("Colleague {name} is available."),
            },
            ChatEvent::Status {
                available,
                capacity,
            } => format!(
                "You are {} with room for {capacity} chat(s).",
                if *available { "available" } else { "away" }
            ),
            ChatEvent::Chats { chats } if chats.is_empty() => "No open chats.".into(),
            ChatEvent::Chats { chats } => {
                let list: Vec<String> = chats.iter().map(|c| format!("@{c}")).collect();
                format!("Open chats: {}", list.join(" "))
            }
            ChatEvent::Help { commands } => commands.join("\n"),
            ChatEvent::Error { message, .. } => format!("Error: {message}"),
        }
    }
}

pub(crate) async fn emit(events: &mpsc::Sender<ChatEvent>, event: ChatEvent) {
    let _ = events.send(event).await;
}

/// A counsellor's event for a colleague.
pub(crate) fn colleague_event(name: &Label, presence: Presence) -> ChatEvent {
    ChatEvent::Colleague {
        name: name.to_string(),
        presence: presence.as_str().into(),
    }
}

pub(crate) use crate::org::now_unix;

/// What the relay said in WELCOME and the TOPIC frames after it.
pub struct Welcome {
    pub topics: Vec<(TopicId, Label, Label)>,
    pub languages: Vec<Language>,
    pub pow: PowChallenge,
}

impl Welcome {
    pub fn event(&self) -> ChatEvent {
        ChatEvent::Connected {
            topics: self
                .topics
                .iter()
                .map(|(id, nl, en)| TopicInfo {
                    id: id.get(),
                    nl: nl.to_string(),
                    en: en.to_string(),
                })
                .collect(),
            languages: self
                .languages
                .iter()
                .map(|l| l.as_str().to_owned())
                .collect(),
        }
    }
}

/// How long to wait for the relay's answer to HELLO or RESUME before the
/// connection counts as lost. A connection can look up on our side while the
/// relay never completed it (the network moved us mid-handshake).
pub const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends HELLO and reads WELCOME and its TOPIC frames.
pub async fn hello(relay: &mut RelayStream, role: Role) -> Result<Welcome, ClientError> {
    tokio::time::timeout(ANSWER_TIMEOUT, hello_unbounded(relay, role))
        .await
        .map_err(|_| ClientError::Lost("the relay did not answer".into()))?
}

/// Sends JOIN: the young person's place in the queue, with the solution
/// to WELCOME's proof-of-work challenge. JOINED (or UNAVAILABLE) follows.
pub async fn join(
    relay: &mut RelayStream,
    topic: Option<TopicId>,
    language: Option<Language>,
    pow_solution: [u8; 8],
) -> Result<(), ClientError> {
    relay
        .send(&Frame::Join {
            topic,
            language,
            pow_solution,
        })
        .await
}

async fn hello_unbounded(relay: &mut RelayStream, role: Role) -> Result<Welcome, ClientError> {
    relay
        .send(&Frame::Hello {
            version: PROTOCOL_VERSION,
            role,
        })
        .await?;
    let (count, languages, pow) = match relay.next().await? {
        Some(Frame::Welcome {
            version,
            role: accepted,
            topics,
            languages,
            pow,
        }) => {
            if version != PROTOCOL_VERSION {
                return Err(ClientError::Version(version));
            }
            if accepted != role {
                return Err(ClientError::UnexpectedFrame);
            }
            (topics, languages, pow)
        }
        Some(_) => return Err(ClientError::UnexpectedFrame),
        None => return Err(ClientError::Lost("the relay ended the stream".into())),
    };
    let mut topics = Vec::new();
    for _ in 0..count {
        match relay.next().await? {
            Some(Frame::Topic {
                id,
                label_nl,
                label_en,
            }) => topics.push((id, label_nl, label_en)),
            _ => return Err(ClientError::UnexpectedFrame),
        }
    }
    Ok(Welcome {
        topics,
        languages,
        pow,
    })
}

/// How often owed acknowledgements go out. Acks ride a fixed tick, not the
/// moment a message arrives, so their timing does not mirror typing.
pub const ACK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A message sealed and not yet acknowledged, kept for resending.
struct Pending {
    id: u64,
    first_seq: u64,
    blobs: Vec<Blob>,
    /// `sent` was reported for it.
    announced: bool,
}

impl Pending {
    fn last_seq(&self) -> u64 {
        self.first_seq + self.blobs.len() as u64 - 1
    }
}

/// A transport message waiting for its turn under the pacing rule.
struct Outgoing {
    blob: Blob,
    /// The message id this blob completes, if it is a message's last chunk.
    completes: Option<u64>,
}

/// Why a message could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Longer than the protocol allows.
    TooLong,
    /// Too much is waiting for acknowledgement already.
    Full,
}

/// One established chat: the end-to-end session, reassembly of incoming
/// messages, and delivery bookkeeping for outgoing ones. Sealed blobs go
/// out through a pacer that follows the spec's sending rule (PROTOCOL.md
/// §8.1), so the relay never has to slow this sender down.
pub(crate) struct Conversation {
    chat: ChatNumber,
    /// The chat number as shown to the user (counsellors see it; clients not).
    shown: Option<u32>,
    session: Session,
    reassembler: Reassembler,
    unacked: VecDeque<Pending>,
    /// Our own ACKs, by sequence number, until the peer's cumulative ACK
    /// covers them. They take sequence numbers too: one lost with a dropped
    /// connection would otherwise leave a gap the peer can never fill.
    acks_sent: VecDeque<(u64, Blob)>,
    outbox: VecDeque<Outgoing>,
    pacer: TokenBucket,
    owe_ack: bool,
    /// The handshake message that opened this chat, until the first
    /// transport message: a repeat of it (after the peer was away) is not
    /// a transport message and is ignored.
    handshake_echo: Option<Blob>,
}

impl Conversation {
    /// `shown` is the number the user sees for this chat (counsellors), or
    /// `None` (clients, who have one chat).
    pub fn new(chat: ChatNumber, session: Session, shown: Option<u32>) -> Self {
        Conversation {
            chat,
            shown,
            session,
            reassembler: Reassembler::default(),
            unacked: Default::default(),
            acks_sent: Default::default(),
            outbox: Default::default(),
            pacer: TokenBucket::new(
                PACE_FORWARD_PER_SEC,
                PACE_FORWARD_BURST,
                std::time::Instant::now(),
            ),
            owe_ack: false,
            handshake_echo: None,
        }
    }

    /// Remembers the handshake message that opened the chat (see
    /// `handshake_echo`).
    pub fn remember_handshake(&mut self, blob: Blob) {
        self.handshake_echo = Some(blob);
    }

    pub fn chat(&self) -> ChatNumber {
        self.chat
    }

    /// After a resume the relay numbers the chat anew on the new connection.
    pub fn set_chat(&mut self, chat: ChatNumber) {
        self.chat = chat;
    }

    fn unacked_frames(&self) -> usize {
        self.unacked.iter().map(|p| p.blobs.len()).sum()
    }

    /// Splits and seals message `id` and queues it to be sent. It is kept
    /// until acknowledged: if the connection is lost, it goes out again
    /// after a resume (or is reported not delivered).
    pub fn queue(&mut self, id: u64, text: &str) -> Result<(), Refused> {
        let chunks = split_text(text).map_err(|_| Refused::TooLong)?;
        if self.unacked_frames() + chunks.len() > MAX_UNACKED_FRAMES {
            return Err(Refused::Full);
        }
        let first_seq = self.session.next_seq();
        let mut blobs = Vec::with_capacity(chunks.len());
        for chunk in &chunks {
            // Sealing fails only when 2^64 - 1 messages were sent.
            blobs.push(self.session.seal(chunk).map_err(|_| Refused::Full)?);
        }
        let last = blobs.len() - 1;
        for (i, blob) in blobs.iter().enumerate() {
            self.outbox.push_back(Outgoing {
                blob: blob.clone(),
                completes: (i == last).then_some(id),
            });
        }
        self.unacked.push_back(Pending {
            id,
            first_seq,
            blobs,
            announced: false,
        });
        Ok(())
    }

    /// Sends what the pacer allows now; reports each message whose last
    /// chunk left as sent. A write that fails leaves the rest for the
    /// resume, which sends everything unacknowledged again.
    pub async fn flush(
        &mut self,
        relay: &mut RelayStream,
        events: &mpsc::Sender<ChatEvent>,
    ) -> Result<(), ClientError> {
        while !self.outbox.is_empty() && self.pacer.take(std::time::Instant::now(), 1.0) {
            let Some(out) = self.outbox.pop_front() else {
                break;
            };
            match relay
                .send(&Frame::Forward {
                    chat: self.chat,
                    blob: out.blob,
                })
                .await
            {
                Ok(()) => {}
                Err(ClientError::Lost(_) | ClientError::Closed(_)) => return Ok(()),
                Err(e) => return Err(e),
            }
            if let Some(id) = out.completes
                && let Some(p) = self.unacked.iter_mut().find(|p| p.id == id)
                && !p.announced
            {
                p.announced = true;
                emit(
                    events,
                    ChatEvent::Sent {
                        id,
                        chat: self.shown,
                    },
                )
                .await;
            }
        }
        Ok(())
    }

    /// When [`Conversation::flush`] has more to send, if anything waits.
    pub fn next_flush(&mut self) -> Option<tokio::time::Instant> {
        if self.outbox.is_empty() {
            return None;
        }
        let now = std::time::Instant::now();
        Some(tokio::time::Instant::from_std(
            self.pacer.ready_at(now, 1.0),
        ))
    }

    /// Queues again everything not yet acknowledged, messages and our own
    /// ACKs, in sequence order (after a resume, or when the peer is back);
    /// the receiver drops what it already has.
    pub fn resend(&mut self) {
        let mut all: Vec<(u64, Outgoing)> = self
            .acks_sent
            .iter()
            .map(|(seq, blob)| {
                (
                    *seq,
                    Outgoing {
                        blob: blob.clone(),
                        completes: None,
                    },
                )
            })
            .collect();
        for p in &self.unacked {
            let last = p.blobs.len() - 1;
            all.extend(p.blobs.iter().enumerate().map(|(j, blob)| {
                (
                    p.first_seq + j as u64,
                    Outgoing {
                        blob: blob.clone(),
                        completes: (j == last).then_some(p.id),
                    },
                )
            }));
        }
        all.sort_by_key(|(seq, _)| *seq);
        self.outbox = all.into_iter().map(|(_, out)| out).collect();
    }

    /// Opens one transport blob and reports what it completes: a message,
    /// or deliveries it acknowledges. Content that breaks §6.4 (malformed,
    /// reserved flags, not UTF-8, too long, an ACK of what was never sent)
    /// is an error: the chat must end as a security failure.
    pub async fn receive(
        &mut self,
        blob: &Blob,
        events: &mpsc::Sender<ChatEvent>,
    ) -> Result<(), e2e::E2eError> {
        if self.handshake_echo.as_ref() == Some(blob) {
            return Ok(());
        }
        let received = self.session.open(blob)?;
        self.handshake_echo = None;
        match received {
            Received::Duplicate | Received::Early => {}
            Received::Content(Content::Ack { up_to }) => {
                if up_to > self.session.next_seq() {
                    return Err(ContentError::AckBeyondSent.into());
                }
                while self.acks_sent.front().is_some_and(|(seq, _)| *seq < up_to) {
                    self.acks_sent.pop_front();
                }
                while self.unacked.front().is_some_and(|p| p.last_seq() < up_to) {
                    if let Some(p) = self.unacked.pop_front() {
                        emit(
                            events,
                            ChatEvent::Delivered {
                                id: p.id,
                                chat: self.shown,
                            },
                        )
                        .await;
                    }
                }
            }
            Received::Content(Content::Unknown(_)) => self.owe_ack = true,
            Received::Content(chunk) => {
                self.owe_ack = true;
                if let Some(text) = self.reassembler.push(chunk)? {
                    emit(
                        events,
                        ChatEvent::Message {
                            text,
                            chat: self.shown,
                        },
                    )
                    .await;
                }
            }
        }
        Ok(())
    }

    /// Queues an acknowledgement if anything arrived since the last one.
    pub fn ack_if_owed(&mut self) -> Result<(), ClientError> {
        if !self.owe_ack {
            return Ok(());
        }
        self.owe_ack = false;
        let seq = self.session.next_seq();
        let blob = self.session.seal(&Content::Ack {
            up_to: self.session.received(),
        })?;
        if self.acks_sent.len() >= MAX_ACK_LOG {
            self.acks_sent.pop_front();
        }
        self.acks_sent.push_back((seq, blob.clone()));
        self.outbox.push_back(Outgoing {
            blob,
            completes: None,
        });
        Ok(())
    }

    /// The chat is over: every message not acknowledged is reported as not
    /// delivered, so nothing is lost without the sender knowing.
    pub async fn give_up(self, events: &mpsc::Sender<ChatEvent>) {
        for p in self.unacked {
            emit(
                events,
                ChatEvent::NotDelivered {
                    id: p.id,
                    chat: self.shown,
                },
            )
            .await;
        }
    }

    /// Whether a sent message still waits for its acknowledgement.
    pub fn has_unacked_messages(&self) -> bool {
        !self.unacked.is_empty()
    }
}

/// Ends a chat whose end-to-end check failed; the peer learns only that.
pub(crate) async fn abort(relay: &mut RelayStream, chat: ChatNumber) {
    let _ = relay
        .send(&Frame::End {
            chat,
            reason: EndReason::SecurityFailure,
        })
        .await;
}

/// Reports lines that will never be sent (typed while the chat could not
/// take them, or still unread when it ended) as not delivered.
pub(crate) async fn not_delivered(
    events: &mpsc::Sender<ChatEvent>,
    ids: impl IntoIterator<Item = u64>,
    chat: Option<u32>,
) {
    for id in ids {
        emit(events, ChatEvent::NotDelivered { id, chat }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::frame::PairingId;
    use crate::crypto::e2e::{ClientHandshake, E2eError, counsellor_respond, test_counsellor_keys};
    use x25519_dalek::StaticSecret;

    /// A client's and a counsellor's session of one chat.
    fn sessions() -> (Session, Session) {
        let keys = test_counsellor_keys(StaticSecret::from([2; 32]));
        let org = keys.org;
        let pairing = PairingId([3; 16]);
        let (hs, m1) = ClientHandshake::start(&org, &pairing, &mut rand_core::OsRng);
        let (counsellor, m2) =
            counsellor_respond(&keys, &pairing, &m1, &mut rand_core::OsRng).unwrap();
        let (client, _) = hs.finish(&m2, 1_000).unwrap();
        (client, counsellor)
    }

    fn receiver(
        session: Session,
    ) -> (
        Conversation,
        mpsc::Receiver<ChatEvent>,
        mpsc::Sender<ChatEvent>,
    ) {
        let (tx, rx) = mpsc::channel(64);
        (Conversation::new(ChatNumber::FIRST, session, None), rx, tx)
    }

    #[tokio::test]
    async fn content_that_breaks_the_rules_is_a_security_failure() {
        // An ACK of messages never sent.
        let (mut sender, counsellor) = sessions();
        let (mut conversation, _rx, tx) = receiver(counsellor);
        let ack = sender.seal(&Content::Ack { up_to: 1 }).unwrap();
        assert_eq!(
            conversation.receive(&ack, &tx).await,
            Err(E2eError::Content(ContentError::AckBeyondSent))
        );
        // TEXT with a reserved flag bit, and a chunk that is not UTF-8.
        for (bytes, error) in [
            (vec![0x01, 0x02, b'x'], ContentError::BadFlags),
            (vec![0x01, 0x01, 0xc3], ContentError::NotUtf8),
            (
                vec![0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ContentError::Truncated,
            ),
        ] {
            let (mut sender, counsellor) = sessions();
            let (mut conversation, _rx, tx) = receiver(counsellor);
            let blob = sender.seal_unchecked(&bytes).unwrap();
            assert_eq!(
                conversation.receive(&blob, &tx).await,
                Err(E2eError::Content(error)),
                "{bytes:?}"
            );
        }
        // A message longer than 16 384 bytes, in chunks that are each fine.
        let (mut sender, counsellor) = sessions();
        let (mut conversation, _rx, tx) = receiver(counsellor);
        let chunk = "x".repeat(1004);
        let mut result = Ok(());
        for _ in 0..17 {
            let blob = sender
                .seal(&Content::Text {
                    last: false,
                    text: chunk.clone(),
                })
                .unwrap();
            result = conversation.receive(&blob, &tx).await;
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(E2eError::Content(ContentError::TooLong)));
    }

    #[tokio::test]
    async fn an_ack_up_to_what_was_sent_is_fine_and_delivers() {
        let (mut client, counsellor) = sessions();
        let (mut conversation, mut rx, tx) = receiver(counsellor);
        conversation.queue(1, "hallo").unwrap();
        let ack = client.seal(&Content::Ack { up_to: 1 }).unwrap();
        conversation.receive(&ack, &tx).await.unwrap();
        assert_eq!(
            rx.recv().await,
            Some(ChatEvent::Delivered { id: 1, chat: None })
        );
    }

    #[test]
    fn the_send_buffer_refuses_past_its_limit_and_never_loses_silently() {
        let (client, _) = sessions();
        let mut conversation = Conversation::new(ChatNumber::FIRST, client, None);
        let long = "x".repeat(16_000); // 16 frames
        for id in 1..=8 {
            conversation.queue(id, &long).unwrap();
        }
        assert_eq!(conversation.queue(9, "nog een"), Err(Refused::Full));
        assert_eq!(
            conversation.queue(10, &"x".repeat(16_385)),
            Err(Refused::TooLong)
        );
    }

    #[test]
    fn events_carry_the_list_version() {
        let json = ChatEvent::ended(EndedReason::PeerEnded, Some(2)).to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"event": "ended", "reason": "peer_ended", "chat": 2, "v": 1})
        );
    }
}
