//! The two chat roles over a [`RelayStream`] (PROTOCOL.md §7.1, §7.2).
//!
//! Each role reads lines from an input channel (closed = end of input) and
//! frames from the relay, and reports [`ChatEvent`]s on an output channel.
//! The client queues, runs the Noise initiator when paired, and sends no
//! content until the counsellor's certificate has verified; lines typed
//! before then wait. The counsellor answers handshakes with its certified
//! key and takes one chat after another until its input ends.

use std::collections::VecDeque;

use rand_core::OsRng;
use serde::Serialize;
use tokio::sync::mpsc;

use super::{ClientError, RelayStream};
use crate::core::content::{Content, Reassembler, split_text};
use crate::core::frame::{ChatNumber, EndReason, Frame, PROTOCOL_VERSION, Role};
use crate::crypto::cert::OrgPublicKey;
use crate::crypto::e2e::{self, ClientHandshake, CounsellorKeys, Received, Session};

/// Lines a client may type before a counsellor is connected.
pub const MAX_LINES_BEFORE_PAIRED: usize = 100;
/// A counsellor's input line that ends the current chat.
pub const END_COMMAND: &str = "/end";

/// Something the user should see. Serialised one per line with `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ChatEvent {
    /// The relay accepted us.
    Connected,
    /// Our place in the queue; 1 = next.
    Queued { position: u32 },
    /// A chat began. For the client, the counsellor's verified pseudonym.
    Paired {
        #[serde(skip_serializing_if = "Option::is_none")]
        counsellor: Option<String>,
    },
    /// A message from the other side.
    Message { text: String },
    /// The chat is over, and why.
    Ended { reason: String },
    /// Something went wrong; the text says what.
    Error { message: String },
}

impl ChatEvent {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{\"event\":\"error\"}".into())
    }

    /// A line for a person to read.
    pub fn to_text(&self) -> String {
        match self {
            ChatEvent::Connected => "Connected to the relay.".into(),
            ChatEvent::Queued { position } => {
                format!("Waiting for a counsellor; you are number {position} in line.")
            }
            ChatEvent::Paired {
                counsellor: Some(name),
            } => {
                format!(
                    "You are now chatting with {name} (identity verified, end-to-end encrypted)."
                )
            }
            ChatEvent::Paired { counsellor: None } => "A new chat has started.".into(),
            ChatEvent::Message { text } => format!("> {text}"),
            ChatEvent::Ended { reason } => format!("Chat ended ({}).", reason.replace('_', " ")),
            ChatEvent::Error { message } => format!("Error: {message}"),
        }
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn emit(events: &mpsc::Sender<ChatEvent>, event: ChatEvent) {
    let _ = events.send(event).await;
}

async fn send_text(
    relay: &mut RelayStream,
    chat: ChatNumber,
    session: &mut Session,
    text: &str,
) -> Result<(), ClientError> {
    for chunk in split_text(text).map_err(|_| ClientError::MessageTooLong)? {
        let blob = session.seal(&chunk)?;
        relay.send(&Frame::Forward { chat, blob }).await?;
    }
    Ok(())
}

/// What happened to one incoming transport blob.
enum Incoming {
    Nothing,
    Message(String),
}

fn open(
    session: &mut Session,
    reassembler: &mut Reassembler,
    blob: &crate::core::frame::Blob,
) -> Result<Incoming, e2e::E2eError> {
    match session.open(blob)? {
        Received::Duplicate | Received::Content(Content::Unknown(_)) => Ok(Incoming::Nothing),
        Received::Content(chunk) => Ok(match reassembler.push(chunk)? {
            Some(text) => Incoming::Message(text),
            None => Incoming::Nothing,
        }),
    }
}

/// Ends a chat whose end-to-end check failed; the peer learns only that.
async fn abort(relay: &mut RelayStream, chat: ChatNumber) {
    let _ = relay
        .send(&Frame::End {
            chat,
            reason: EndReason::SecurityFailure,
        })
        .await;
}

fn check_welcome(version: u8, role: Role, expected: Role) -> Result<(), ClientError> {
    if version != PROTOCOL_VERSION {
        return Err(ClientError::Version(version));
    }
    if role != expected {
        return Err(ClientError::UnexpectedFrame);
    }
    Ok(())
}

enum ClientState {
    Waiting,
    Handshaking {
        chat: ChatNumber,
        handshake: ClientHandshake,
    },
    Chatting {
        chat: ChatNumber,
        session: Session,
        reassembler: Reassembler,
    },
}

/// Runs the anonymous client role until the chat ends.
pub async fn run_client(
    mut relay: RelayStream,
    org: OrgPublicKey,
    mut input: mpsc::Receiver<String>,
    events: mpsc::Sender<ChatEvent>,
) -> Result<(), ClientError> {
    relay
        .send(&Frame::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
        })
        .await?;
    let mut state = ClientState::Waiting;
    let mut typed: VecDeque<String> = VecDeque::new();
    let mut input_done = false;
    loop {
        // Input has ended and everything typed has gone out: end the chat.
        if input_done && typed.is_empty() {
            let reason = match &state {
                ClientState::Waiting => "left_queue",
                ClientState::Handshaking { chat, .. } | ClientState::Chatting { chat, .. } => {
                    relay
                        .send(&Frame::End {
                            chat: *chat,
                            reason: EndReason::UserEnded,
                        })
                        .await?;
                    "you_ended"
                }
            };
            emit(
                &events,
                ChatEvent::Ended {
                    reason: reason.into(),
                },
            )
            .await;
            relay.close().await;
            return Ok(());
        }
        tokio::select! {
            frame = relay.next() => {
                let Some(frame) = frame? else {
                    return Err(ClientError::Lost("the relay ended the stream".into()));
                };
                state = match (state, frame) {
                    (s, Frame::Welcome { version, role }) => {
                        check_welcome(version, role, Role::Client)?;
                        emit(&events, ChatEvent::Connected).await;
                        s
                    }
                    (s @ ClientState::Waiting, Frame::Queued { position }) => {
                        emit(&events, ChatEvent::Queued { position }).await;
                        s
                    }
                    (ClientState::Waiting, Frame::Paired { chat, pairing_id }) => {
                        let (handshake, blob) = ClientHandshake::start(&org, &pairing_id, &mut OsRng);
                        relay.send(&Frame::Forward { chat, blob }).await?;
                        ClientState::Handshaking { chat, handshake }
                    }
                    (ClientState::Handshaking { chat, handshake }, Frame::Forward { chat: c, blob }) if c == chat => {
                        match handshake.finish(&blob, now_unix()) {
                            Ok((mut session, certificate)) => {
                                emit(&events, ChatEvent::Paired { counsellor: Some(certificate.pseudonym().to_owned()) }).await;
                                while let Some(line) = typed.pop_front() {
                                    send_text(&mut relay, chat, &mut session, &line).await?;
                                }
                                ClientState::Chatting { chat, session, reassembler: Reassembler::default() }
                            }
                            Err(e) => {
                                abort(&mut relay, chat).await;
                                relay.close().await;
                                return Err(ClientError::Security(e));
                            }
                        }
                    }
                    (ClientState::Chatting { chat, mut session, mut reassembler }, Frame::Forward { chat: c, blob }) if c == chat => {
                        match open(&mut session, &mut reassembler, &blob) {
                            Ok(Incoming::Message(text)) => emit(&events, ChatEvent::Message { text }).await,
                            Ok(Incoming::Nothing) => {}
                            Err(e) => {
                                abort(&mut relay, chat).await;
                                relay.close().await;
                                return Err(ClientError::Security(e));
                            }
                        }
                        ClientState::Chatting { chat, session, reassembler }
                    }
                    (ClientState::Handshaking { chat, .. } | ClientState::Chatting { chat, .. }, Frame::End { chat: c, reason }) if c == chat => {
                        emit(&events, ChatEvent::Ended { reason: reason.as_str().into() }).await;
                        relay.close().await;
                        return Ok(());
                    }
                    _ => return Err(ClientError::UnexpectedFrame),
                };
            }
            line = input.recv(), if !input_done => {
                match line {
                    None => input_done = true,
                    Some(line) => match &mut state {
                        ClientState::Chatting { chat, session, .. } => {
                            let chat = *chat;
                            if let Err(e) = send_text(&mut relay, chat, session, &line).await {
                                emit(&events, ChatEvent::Error { message: e.to_string() }).await;
                            }
                        }
                        _ if typed.len() >= MAX_LINES_BEFORE_PAIRED => {
                            emit(&events, ChatEvent::Error { message: "too many lines before a counsellor joined; this one was not kept".into() }).await;
                        }
                        _ => typed.push_back(line),
                    },
                }
            }
        }
    }
}

enum CounsellorState {
    Idle,
    AwaitingHandshake {
        chat: ChatNumber,
        pairing_id: crate::core::frame::PairingId,
    },
    Chatting {
        chat: ChatNumber,
        session: Session,
        reassembler: Reassembler,
    },
}

/// Runs the counsellor role: takes chats one after another until input ends.
pub async fn run_counsellor(
    mut relay: RelayStream,
    keys: CounsellorKeys,
    mut input: mpsc::Receiver<String>,
    events: mpsc::Sender<ChatEvent>,
) -> Result<(), ClientError> {
    relay
        .send(&Frame::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Counsellor,
        })
        .await?;
    let mut state = CounsellorState::Idle;
    loop {
        tokio::select! {
            frame = relay.next() => {
                let Some(frame) = frame? else {
                    return Err(ClientError::Lost("the relay ended the stream".into()));
                };
                state = match (state, frame) {
                    (s, Frame::Welcome { version, role }) => {
                        check_welcome(version, role, Role::Counsellor)?;
                        emit(&events, ChatEvent::Connected).await;
                        s
                    }
                    (CounsellorState::Idle, Frame::Paired { chat, pairing_id }) => {
                        CounsellorState::AwaitingHandshake { chat, pairing_id }
                    }
                    (CounsellorState::AwaitingHandshake { chat, pairing_id }, Frame::Forward { chat: c, blob }) if c == chat => {
                        match e2e::counsellor_respond(&keys, &pairing_id, &blob, &mut OsRng) {
                            Ok((session, reply)) => {
                                relay.send(&Frame::Forward { chat, blob: reply }).await?;
                                emit(&events, ChatEvent::Paired { counsellor: None }).await;
                                CounsellorState::Chatting { chat, session, reassembler: Reassembler::default() }
                            }
                            Err(e) => {
                                abort(&mut relay, chat).await;
                                emit(&events, ChatEvent::Error { message: ClientError::Security(e).to_string() }).await;
                                CounsellorState::Idle
                            }
                        }
                    }
                    (CounsellorState::Chatting { chat, mut session, mut reassembler }, Frame::Forward { chat: c, blob }) if c == chat => {
                        match open(&mut session, &mut reassembler, &blob) {
                            Ok(Incoming::Message(text)) => {
                                emit(&events, ChatEvent::Message { text }).await;
                                CounsellorState::Chatting { chat, session, reassembler }
                            }
                            Ok(Incoming::Nothing) => CounsellorState::Chatting { chat, session, reassembler },
                            Err(e) => {
                                abort(&mut relay, chat).await;
                                emit(&events, ChatEvent::Error { message: ClientError::Security(e).to_string() }).await;
                                CounsellorState::Idle
                            }
                        }
                    }
                    (CounsellorState::AwaitingHandshake { chat, .. } | CounsellorState::Chatting { chat, .. }, Frame::End { chat: c, reason }) if c == chat => {
                        emit(&events, ChatEvent::Ended { reason: reason.as_str().into() }).await;
                        CounsellorState::Idle
                    }
                    _ => return Err(ClientError::UnexpectedFrame),
                };
            }
            line = input.recv() => {
                let Some(line) = line else {
                    if let CounsellorState::AwaitingHandshake { chat, .. } | CounsellorState::Chatting { chat, .. } = state {
                        relay.send(&Frame::End { chat, reason: EndReason::UserEnded }).await?;
                        emit(&events, ChatEvent::Ended { reason: "you_ended".into() }).await;
                    }
                    relay.close().await;
                    return Ok(());
                };
                state = match state {
                    CounsellorState::Chatting { chat, .. } if line.trim() == END_COMMAND => {
                        relay.send(&Frame::End { chat, reason: EndReason::UserEnded }).await?;
                        emit(&events, ChatEvent::Ended { reason: "you_ended".into() }).await;
                        CounsellorState::Idle
                    }
                    CounsellorState::Chatting { chat, mut session, reassembler } => {
                        if let Err(e) = send_text(&mut relay, chat, &mut session, &line).await {
                            emit(&events, ChatEvent::Error { message: e.to_string() }).await;
                        }
                        CounsellorState::Chatting { chat, session, reassembler }
                    }
                    other => {
                        emit(&events, ChatEvent::Error { message: "no chat is open; the line was not sent".into() }).await;
                        other
                    }
                };
            }
        }
    }
}
