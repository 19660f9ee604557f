//! What a user of either chat role sees: the events ([`ChatEvent`], the
//! versioned list in `proto/EVENTS.md`) with their JSON and text forms,
//! and the relay's welcome.
//!
//! The roles are state machines in [`super::machine`], run by
//! [`run_client`] and [`run_counsellor`] (`super::driver`); each reads
//! lines from an input channel (closed = end of input) and frames from the
//! relay, and reports [`ChatEvent`]s on an output channel. Every line a
//! person types as a message gets an id and ends, always, as `delivered` or
//! `not_delivered`. [`hello`] and [`join`] are the raw steps, for load
//! tests that drive the wire themselves.

use serde::Serialize;

use super::machine::link::Greeting;
use super::{ClientError, RelayStream};
use crate::core::frame::{
    EndReason, Frame, FromRelay, Label, Language, PROTOCOL_VERSION, PowChallenge, Presence,
    Refusal, Role, TopicId,
};

pub use super::driver::{ClientRequest, CounsellorSettings, run_client, run_counsellor};
pub use super::machine::link::{ACK_INTERVAL, ANSWER_TIMEOUT};

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

/// One field of the case coding form, as the counsellor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FormFieldInfo {
    pub name: String,
    pub values: Vec<String>,
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
    /// Counsellor: the text just typed for chat `chat` is message `id`
    /// (for the console, which shows it; `--json` leaves it out, as the
    /// terminal already shows what was typed).
    Said { id: u64, chat: u32, text: String },
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
    /// Counsellor: a transfer did not happen; the chat stays. `reason` in
    /// words, `code` for scripts and translations.
    TransferRefused {
        chat: u32,
        reason: String,
        code: Refusal,
    },
    /// Counsellor: clients waiting, per topic.
    QueueStats { waiting: Vec<Waiting> },
    /// Counsellor: a colleague signed in, changed status or left.
    Colleague { name: String, presence: Presence },
    /// Counsellor: what it now takes.
    Status { available: bool, capacity: u8 },
    /// Counsellor: its open chats.
    Chats { chats: Vec<u32> },
    /// Counsellor: the line commands.
    Help { commands: Vec<String> },
    /// Counsellor: the case coding form, fields in order (after sign-in,
    /// and for `/code`).
    Form { fields: Vec<FormFieldInfo> },
    /// Counsellor: a coding was kept (`counted` absent), or a batch of
    /// `counted` codings was counted; `held` are still waiting to go.
    Coded {
        held: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        counted: Option<usize>,
    },
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
            ChatEvent::Said { chat, text, .. } => format!("[@{chat}] you: {text}"),
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
            ChatEvent::TransferRefused { chat, reason, .. } => {
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
            ChatEvent::Colleague { name, presence } => match presence {
                Presence::SignedOut => format!("Colleague {name} signed out."),
                Presence::Away => format!("Colleague {name} is away."),
                Presence::Full => format!("Colleague {name} has no room for another chat."),
                Presence::Available => format!("Colleague {name} is available."),
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
            ChatEvent::Form { fields } => {
                let mut lines = vec![
                    "Case coding form (every field optional; \"/code 2=3, 3=1\" codes a chat):"
                        .to_owned(),
                ];
                for (i, field) in fields.iter().enumerate() {
                    let values: Vec<String> = field
                        .values
                        .iter()
                        .enumerate()
                        .map(|(j, v)| format!("{} {v}", j + 1))
                        .collect();
                    lines.push(format!("  {} {}: {}", i + 1, field.name, values.join(", ")));
                }
                lines.join("\n")
            }
            ChatEvent::Coded {
                held,
                counted: None,
            } => format!("Coding kept; {held} waiting to be sent (in batches, and at sign-out)."),
            ChatEvent::Coded {
                held,
                counted: Some(n),
            } => format!("{n} coding(s) counted; {held} still waiting."),
            ChatEvent::Error { message, .. } => format!("Error: {message}"),
        }
    }
}

/// A counsellor's event for a colleague.
pub(crate) fn colleague_event(name: &Label, presence: Presence) -> ChatEvent {
    ChatEvent::Colleague {
        name: name.to_string(),
        presence,
    }
}

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

/// HELLO, then WELCOME and its TOPIC frames, read as the state machines
/// read them ([`Greeting`]).
async fn hello_unbounded(relay: &mut RelayStream, role: Role) -> Result<Welcome, ClientError> {
    relay
        .send(&Frame::Hello {
            version: PROTOCOL_VERSION,
            role,
        })
        .await?;
    let mut greeting = Greeting::new(role);
    loop {
        let Some(frame) = relay.next().await? else {
            return Err(ClientError::Lost("the relay ended the stream".into()));
        };
        let frame = FromRelay::try_from(frame).map_err(|_| ClientError::UnexpectedFrame)?;
        if let Some(welcome) = greeting.frame(frame)? {
            return Ok(welcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
