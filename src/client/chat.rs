//! What both chat roles share: the events a user sees ([`ChatEvent`]), the
//! welcome exchange, and sealing and opening end-to-end messages.
//!
//! The roles themselves are [`super::anonymous::run_client`] and
//! [`super::counsellor::run_counsellor`]; each reads lines from an input
//! channel (closed = end of input) and frames from the relay, and reports
//! [`ChatEvent`]s on an output channel.

use serde::Serialize;
use tokio::sync::mpsc;

use super::{ClientError, RelayStream};
use crate::core::content::{Content, Reassembler, split_text};
use crate::core::frame::PowChallenge;
use crate::core::frame::{
    Blob, ChatNumber, EndReason, Frame, Language, PROTOCOL_VERSION, Role, TopicId,
};
use crate::crypto::e2e::{self, Received, Session};

pub use super::anonymous::{ClientRequest, run_client};
pub use super::counsellor::{CounsellorSettings, run_counsellor};

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

/// Something the user should see. Serialised one per line with `--json`.
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
    /// A chat began. The client sees the counsellor's verified pseudonym;
    /// the counsellor sees the chat number.
    Paired {
        #[serde(skip_serializing_if = "Option::is_none")]
        counsellor: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        chat: Option<u32>,
    },
    /// Client: the chat moved to another counsellor, verified like the first.
    Transferred { counsellor: String },
    /// Our connection dropped; trying to take the chat up again.
    Reconnecting,
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
    /// Our message `id` (numbered from 1 per chat) left for the relay.
    Sent {
        id: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        chat: Option<u32>,
    },
    /// The other side confirmed, end to end, that message `id` arrived.
    Delivered {
        id: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        chat: Option<u32>,
    },
    /// Message `id` was not confirmed before the chat ended.
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
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        chat: Option<u32>,
    },
    /// Counsellor: a transfer did not happen; the chat stays.
    TransferRefused { chat: u32, reason: String },
    /// Counsellor: clients waiting, per topic.
    QueueStats { waiting: Vec<Waiting> },
    /// Counsellor: what it now takes.
    Status { available: bool, capacity: u8 },
    /// Counsellor: its open chats.
    Chats { chats: Vec<u32> },
    /// Counsellor: the line commands.
    Help { commands: Vec<String> },
    /// Something went wrong; the text says what.
    Error { message: String },
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
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{\"event\":\"error\"}".into())
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
            ChatEvent::Paired { chat, .. } => format!("{}A new chat has started.", at(chat)),
            ChatEvent::Transferred { counsellor } => {
                format!(
                    "You are now chatting with {counsellor} (identity verified, end-to-end encrypted)."
                )
            }
            ChatEvent::Message { text, chat } => format!("{}> {text}", at(chat)),
            ChatEvent::Reconnecting => "Connection lost; reconnecting…".into(),
            ChatEvent::Resumed { chat } => format!("{}Reconnected; the chat continues.", at(chat)),
            ChatEvent::PeerAway { chat } => format!(
                "{}The other side lost their connection; waiting for them.",
                at(chat)
            ),
            ChatEvent::PeerBack { chat } => format!("{}The other side is back.", at(chat)),
            ChatEvent::Sent { id, chat } => format!("{}  (#{id} sent)", at(chat)),
            ChatEvent::Delivered { id, chat } => format!("{}  (#{id} delivered)", at(chat)),
            ChatEvent::NotDelivered { id, chat } => format!("{}  (#{id} NOT delivered)", at(chat)),
            ChatEvent::Ended { reason, chat } if reason == "relay_shutdown" => format!(
                "{}The service is restarting; the chat has ended. Please try again in a moment.",
                at(chat)
            ),
            ChatEvent::Ended { reason, chat } if reason == "counsellor_revoked" => format!(
                "{}This counsellor can no longer chat for the helpline; the chat has ended. \
                 You can start a new chat with another counsellor.",
                at(chat)
            ),
            ChatEvent::Ended { reason, chat } => {
                format!("{}Chat ended ({}).", at(chat), reason.replace('_', " "))
            }
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
            ChatEvent::Error { message } => format!("Error: {message}"),
        }
    }
}

pub(crate) async fn emit(events: &mpsc::Sender<ChatEvent>, event: ChatEvent) {
    let _ = events.send(event).await;
}

pub(crate) use crate::org::now_unix;

/// What the relay said in WELCOME and the TOPIC frames after it.
pub(crate) struct Welcome {
    pub topics: Vec<(TopicId, String, String)>,
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
                    nl: nl.clone(),
                    en: en.clone(),
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
pub(crate) async fn hello(relay: &mut RelayStream, role: Role) -> Result<Welcome, ClientError> {
    tokio::time::timeout(ANSWER_TIMEOUT, hello_unbounded(relay, role))
        .await
        .map_err(|_| ClientError::Lost("the relay did not answer".into()))?
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
/// Most sent messages kept for resending until acknowledged.
pub const MAX_UNACKED: usize = 256;
/// Most sent acknowledgements kept for resending (about a minute of ticks).
pub const MAX_ACK_LOG: usize = 64;

/// A message sent and not yet acknowledged, kept for resending.
struct Pending {
    id: u64,
    last_seq: u64,
    blobs: Vec<Blob>,
}

/// One established chat: the end-to-end session, reassembly of incoming
/// messages, and delivery bookkeeping for outgoing ones.
pub(crate) struct Conversation {
    chat: ChatNumber,
    /// The chat number as shown to the user (counsellors see it; clients not).
    shown: Option<u32>,
    session: Session,
    reassembler: Reassembler,
    next_id: u64,
    unacked: std::collections::VecDeque<Pending>,
    owe_ack: bool,
    /// The handshake message that opened this chat, until the first
    /// transport message: a repeat of it (after the peer was away) is not
    /// a transport message and is ignored.
    handshake_echo: Option<Blob>,
    /// Our own ACKs, by sequence number, until the peer's cumulative ACK
    /// covers them. They take sequence numbers too: one lost with a dropped
    /// connection would otherwise leave a gap the peer can never fill.
    acks_sent: std::collections::VecDeque<(u64, Blob)>,
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
            next_id: 1,
            unacked: Default::default(),
            owe_ack: false,
            handshake_echo: None,
            acks_sent: Default::default(),
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

    /// Sends again every message not yet acknowledged (after a resume, or
    /// when the peer is back); the receiver drops what it already has.
    pub async fn resend(&self, relay: &mut RelayStream) -> Result<(), ClientError> {
        for blob in self.unacked_blobs() {
            relay
                .send(&Frame::Forward {
                    chat: self.chat,
                    blob,
                })
                .await?;
        }
        Ok(())
    }

    /// Splits, seals and sends one message; reports it as sent. The message
    /// is kept until acknowledged: if the connection is lost while sending,
    /// it goes out again after a resume (or is reported not delivered).
    pub async fn send(
        &mut self,
        relay: &mut RelayStream,
        events: &mpsc::Sender<ChatEvent>,
        text: &str,
    ) -> Result<(), ClientError> {
        if self.unacked.len() >= MAX_UNACKED {
            return Err(ClientError::Request(
                "too many messages are waiting for delivery; try again shortly".into(),
            ));
        }
        let mut blobs = Vec::new();
        for chunk in split_text(text).map_err(|_| ClientError::MessageTooLong)? {
            blobs.push(self.session.seal(&chunk)?);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.unacked.push_back(Pending {
            id,
            last_seq: self.session.next_seq() - 1,
            blobs: blobs.clone(),
        });
        for blob in blobs {
            let sent = relay
                .send(&Frame::Forward {
                    chat: self.chat,
                    blob,
                })
                .await;
            match sent {
                Ok(()) => {}
                // Kept for resending; the reading side notices the loss.
                Err(ClientError::Lost(_) | ClientError::Closed(_)) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        emit(
            events,
            ChatEvent::Sent {
                id,
                chat: self.shown,
            },
        )
        .await;
        Ok(())
    }

    /// Opens one transport blob and reports what it completes: a message,
    /// or deliveries it acknowledges.
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
                while self.acks_sent.front().is_some_and(|(seq, _)| *seq < up_to) {
                    self.acks_sent.pop_front();
                }
                while self.unacked.front().is_some_and(|p| p.last_seq < up_to) {
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

    /// Sends an acknowledgement if anything arrived since the last one.
    pub async fn ack_if_owed(&mut self, relay: &mut RelayStream) -> Result<(), ClientError> {
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
        relay
            .send(&Frame::Forward {
                chat: self.chat,
                blob,
            })
            .await
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

    /// Everything sent that the peer has not acknowledged, messages and our
    /// own ACKs alike, in sequence order (for resending).
    pub fn unacked_blobs(&self) -> Vec<Blob> {
        let mut all: Vec<(u64, Blob)> = self.acks_sent.iter().cloned().collect();
        for p in &self.unacked {
            let first = p.last_seq + 1 - p.blobs.len() as u64;
            all.extend(
                p.blobs
                    .iter()
                    .cloned()
                    .enumerate()
                    .map(|(j, b)| (first + j as u64, b)),
            );
        }
        all.sort_by_key(|(seq, _)| *seq);
        all.into_iter().map(|(_, b)| b).collect()
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
