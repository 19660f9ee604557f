//! The young person's side (PROTOCOL.md §7.1).
//!
//! HELLO, then the topic list from the relay; JOIN with the chosen topic and
//! language, unless the relay says the service is closed or full. While
//! waiting, position and estimated wait are reported. When paired, the
//! Noise initiator runs; no content is sent until the counsellor's
//! certificate has verified, and lines typed before then wait. A transfer is
//! an END(TRANSFERRED) followed by a new pairing, verified the same way.
//!
//! If the connection drops (or the relay stays silent) the client reconnects
//! by itself, when it may: before JOINED it simply starts again; while
//! waiting it presents its queue ticket and gets its old place back; in a
//! chat it presents the chat's resume capability: same counsellor, same
//! keys, unacknowledged messages sent again.

use std::collections::VecDeque;

use rand_core::OsRng;
use tokio::sync::mpsc;

use super::chat::{self, ChatEvent, Conversation, emit, now_unix};
use super::{ClientError, Reconnect, RelayStream};
use crate::core::frame::{
    Blob, ChatNumber, EndReason, Frame, Language, ResumeCapability, Role, TopicId, Unavailable,
};
use crate::core::ratelimit::pow_solve;
use crate::crypto::cert::OrgPublicKey;
use crate::crypto::e2e::ClientHandshake;

/// Lines a client may type before a counsellor is connected.
pub const MAX_LINES_BEFORE_PAIRED: usize = 100;

/// What the young person asks for; all optional.
#[derive(Debug, Clone, Default)]
pub struct ClientRequest {
    /// A topic id or label (Dutch or English, any case).
    pub topic: Option<String>,
    /// A two-letter language code.
    pub language: Option<String>,
    /// How to reconnect and resume if the connection drops mid-chat.
    pub reconnect: Option<Reconnect>,
}

// One value of this lives per client; its size does not matter.
#[allow(clippy::large_enum_variant)]
enum State {
    /// In the queue; `transferring` after the first counsellor handed over.
    Waiting {
        transferring: bool,
    },
    Handshaking {
        chat: ChatNumber,
        handshake: Box<ClientHandshake>,
        /// Handshake message 1, sent again if the counsellor drops and
        /// comes back before answering.
        hello: Blob,
        transferring: bool,
        resume: ResumeCapability,
    },
    Chatting(Conversation, ResumeCapability),
}

fn resolve_topic(welcome: &chat::Welcome, wanted: &str) -> Result<TopicId, ClientError> {
    let wanted = wanted.trim();
    welcome
        .topics
        .iter()
        .find(|(id, nl, en)| {
            id.get().to_string() == wanted
                || nl.eq_ignore_ascii_case(wanted)
                || en.eq_ignore_ascii_case(wanted)
        })
        .map(|(id, _, _)| *id)
        .ok_or_else(|| {
            let offered: Vec<String> = welcome
                .topics
                .iter()
                .map(|(id, _, en)| format!("{} ({en})", id.get()))
                .collect();
            ClientError::Request(format!(
                "unknown topic {wanted:?}; the relay offers: {}",
                offered.join(", ")
            ))
        })
}

fn resolve_language(welcome: &chat::Welcome, wanted: &str) -> Result<Language, ClientError> {
    Language::parse(wanted.trim())
        .filter(|l| welcome.languages.contains(l))
        .ok_or_else(|| {
            let offered: Vec<&str> = welcome.languages.iter().map(Language::as_str).collect();
            ClientError::Request(format!(
                "language {wanted:?} is not offered; choose one of: {}",
                offered.join(", ")
            ))
        })
}

/// Runs the anonymous client role until the chat ends.
pub async fn run_client(
    mut relay: RelayStream,
    org: OrgPublicKey,
    request: ClientRequest,
    mut input: mpsc::Receiver<String>,
    events: mpsc::Sender<ChatEvent>,
) -> Result<(), ClientError> {
    let mut announced = false;
    relay = join(relay, &request, &events, &mut announced).await?;
    let mut state = State::Waiting {
        transferring: false,
    };
    // What keeps our place in the queue (JOINED), once the relay sent it.
    let mut ticket: Option<ResumeCapability> = None;
    let mut typed: VecDeque<String> = VecDeque::new();
    let mut input_done = false;
    // When input has ended, wait this long for outstanding acknowledgements.
    let mut leave_by: Option<tokio::time::Instant> = None;
    let mut ack_tick = tokio::time::interval(chat::ACK_INTERVAL);
    ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Input has ended and everything typed has gone out: end the chat,
        // once what was sent is confirmed (or the wait for that is over).
        if input_done && typed.is_empty() {
            let waiting_for_acks =
                matches!(&state, State::Chatting(c, _) if c.has_unacked_messages());
            let deadline = *leave_by
                .get_or_insert_with(|| tokio::time::Instant::now() + 3 * chat::ACK_INTERVAL);
            if !waiting_for_acks || tokio::time::Instant::now() >= deadline {
                let reason = match state {
                    State::Waiting { .. } => "left_queue",
                    State::Handshaking { chat, .. } => {
                        relay
                            .send(&Frame::End {
                                chat,
                                reason: EndReason::UserEnded,
                            })
                            .await?;
                        "you_ended"
                    }
                    State::Chatting(mut conversation, _) => {
                        // Confirm what arrived before saying goodbye.
                        conversation.ack_if_owed(&mut relay).await?;
                        let chat = conversation.chat();
                        relay
                            .send(&Frame::End {
                                chat,
                                reason: EndReason::UserEnded,
                            })
                            .await?;
                        conversation.give_up(&events).await;
                        "you_ended"
                    }
                };
                emit(
                    &events,
                    ChatEvent::Ended {
                        reason: reason.into(),
                        chat: None,
                    },
                )
                .await;
                relay.close().await;
                return Ok(());
            }
        }
        tokio::select! {
            frame = relay.next() => {
                let frame = match (frame, state, request.reconnect.as_ref()) {
                    (Ok(Some(frame)), s, _) => {
                        state = s;
                        frame
                    }
                    // The connection dropped: take up where we were, if we know how.
                    (
                        Ok(None) | Err(ClientError::Lost(_) | ClientError::Closed(_)),
                        s,
                        Some(reconnect),
                    ) => {
                        emit(&events, ChatEvent::Reconnecting).await;
                        let back = Back { reconnect, ticket, request: &request, events: &events };
                        match back.come_back(s, &mut announced).await {
                            Ok((stream, s)) => {
                                relay = stream;
                                emit(&events, ChatEvent::Resumed { chat: None }).await;
                                state = s;
                                continue;
                            }
                            Err(s) => {
                                if let State::Chatting(conversation, _) = s {
                                    conversation.give_up(&events).await;
                                }
                                emit(&events, ChatEvent::Ended { reason: "ended_while_away".into(), chat: None }).await;
                                return Ok(());
                            }
                        }
                    }
                    (Ok(None), _, _) => return Err(ClientError::Lost("the relay ended the stream".into())),
                    (Err(e), _, _) => return Err(e),
                };
                state = match (state, frame) {
                    (s @ State::Waiting { .. }, Frame::Joined { resume }) => {
                        ticket = Some(resume);
                        s
                    }
                    (s @ State::Waiting { .. }, Frame::Queued { position, estimated_wait_secs }) => {
                        emit(&events, ChatEvent::Queued { position, estimated_wait_secs }).await;
                        s
                    }
                    (State::Waiting { .. }, Frame::Unavailable { reason, next_open }) => {
                        let event = match reason {
                            Unavailable::Closed => ChatEvent::Closed { next_open },
                            other => ChatEvent::Ended { reason: other.as_str().into(), chat: None },
                        };
                        emit(&events, event).await;
                        relay.close().await;
                        return Ok(());
                    }
                    (State::Waiting { transferring }, Frame::Paired { chat, pairing_id, resume }) => {
                        let (handshake, blob) = ClientHandshake::start(&org, &pairing_id, &mut OsRng);
                        relay.send(&Frame::Forward { chat, blob: blob.clone() }).await?;
                        State::Handshaking { chat, handshake: Box::new(handshake), hello: blob, transferring, resume }
                    }
                    (s @ State::Handshaking { .. }, Frame::PeerAway { .. }) => {
                        emit(&events, ChatEvent::PeerAway { chat: None }).await;
                        s
                    }
                    (State::Handshaking { chat, handshake, hello, transferring, resume }, Frame::PeerBack { .. }) => {
                        // The counsellor may have lost message 1; it answers
                        // a repeat with the same message 2.
                        relay.send(&Frame::Forward { chat, blob: hello.clone() }).await?;
                        emit(&events, ChatEvent::PeerBack { chat: None }).await;
                        State::Handshaking { chat, handshake, hello, transferring, resume }
                    }
                    (State::Handshaking { chat, handshake, transferring, resume, .. }, Frame::Forward { chat: c, blob }) if c == chat => {
                        match handshake.finish(&blob, now_unix()) {
                            Ok((session, certificate)) => {
                                let counsellor = certificate.pseudonym().to_owned();
                                let event = if transferring {
                                    ChatEvent::Transferred { counsellor }
                                } else {
                                    ChatEvent::Paired { counsellor: Some(counsellor), chat: None }
                                };
                                emit(&events, event).await;
                                let mut conversation = Conversation::new(chat, session, None);
                                conversation.remember_handshake(blob.clone());
                                while let Some(line) = typed.pop_front() {
                                    conversation.send(&mut relay, &events, &line).await?;
                                }
                                State::Chatting(conversation, resume)
                            }
                            Err(e) => {
                                chat::abort(&mut relay, chat).await;
                                relay.close().await;
                                return Err(ClientError::Security(e));
                            }
                        }
                    }
                    (State::Chatting(mut conversation, resume), Frame::Forward { chat: c, blob }) if c == conversation.chat() => {
                        if let Err(e) = conversation.receive(&blob, &events).await {
                            chat::abort(&mut relay, c).await;
                            relay.close().await;
                            return Err(ClientError::Security(e));
                        }
                        State::Chatting(conversation, resume)
                    }
                    (s @ State::Chatting(..), Frame::PeerAway { .. }) => {
                        emit(&events, ChatEvent::PeerAway { chat: None }).await;
                        s
                    }
                    (State::Chatting(conversation, resume), Frame::PeerBack { .. }) => {
                        // If this fails the connection is gone; the resume resends.
                        let _ = conversation.resend(&mut relay).await;
                        emit(&events, ChatEvent::PeerBack { chat: None }).await;
                        State::Chatting(conversation, resume)
                    }
                    // The counsellor handed the chat on: the old keys are
                    // dropped here, a new pairing (or the queue) follows.
                    (State::Handshaking { chat, .. }, Frame::End { chat: c, reason: EndReason::Transferred }) if c == chat => {
                        State::Waiting { transferring: true }
                    }
                    (State::Chatting(conversation, _), Frame::End { chat: c, reason: EndReason::Transferred }) if c == conversation.chat() => {
                        conversation.give_up(&events).await;
                        State::Waiting { transferring: true }
                    }
                    (State::Handshaking { chat, .. }, Frame::End { chat: c, reason }) if c == chat => {
                        emit(&events, ChatEvent::Ended { reason: reason.as_str().into(), chat: None }).await;
                        relay.close().await;
                        return Ok(());
                    }
                    (State::Chatting(conversation, _), Frame::End { chat: c, reason }) if c == conversation.chat() => {
                        conversation.give_up(&events).await;
                        emit(&events, ChatEvent::Ended { reason: reason.as_str().into(), chat: None }).await;
                        relay.close().await;
                        return Ok(());
                    }
                    _ => return Err(ClientError::UnexpectedFrame),
                };
            }
            _ = ack_tick.tick() => {
                if let State::Chatting(conversation, _) = &mut state {
                    // A lost connection shows on the reading side, which resumes.
                    match conversation.ack_if_owed(&mut relay).await {
                        Ok(()) | Err(ClientError::Lost(_) | ClientError::Closed(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            line = input.recv(), if !input_done => {
                match line {
                    None => input_done = true,
                    Some(line) => match &mut state {
                        State::Chatting(conversation, _) => {
                            if let Err(e) = conversation.send(&mut relay, &events, &line).await {
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

/// HELLO, WELCOME, proof of work and JOIN. If the connection breaks or the
/// relay stays silent on the way, and reconnecting is allowed, it starts
/// over on a new connection: nobody was queued yet, so nothing is lost.
/// `announced` says whether the `connected` event went out already.
async fn join(
    mut relay: RelayStream,
    request: &ClientRequest,
    events: &mpsc::Sender<ChatEvent>,
    announced: &mut bool,
) -> Result<RelayStream, ClientError> {
    let give_up = request
        .reconnect
        .as_ref()
        .map(|r| tokio::time::Instant::now() + r.give_up_after);
    loop {
        let error = match join_once(&mut relay, request, events, announced).await {
            Ok(()) => return Ok(relay),
            Err(e @ (ClientError::Lost(_) | ClientError::Closed(_))) => e,
            Err(e) => return Err(e),
        };
        let (Some(reconnect), Some(give_up)) = (request.reconnect.as_ref(), give_up) else {
            return Err(error);
        };
        if tokio::time::Instant::now() >= give_up {
            return Err(error);
        }
        relay = reconnect.connect().await.ok_or(error)?;
    }
}

async fn join_once(
    relay: &mut RelayStream,
    request: &ClientRequest,
    events: &mpsc::Sender<ChatEvent>,
    announced: &mut bool,
) -> Result<(), ClientError> {
    let welcome = chat::hello(relay, Role::Client).await?;
    let topic = request
        .topic
        .as_deref()
        .map(|t| resolve_topic(&welcome, t))
        .transpose()?;
    let language = request
        .language
        .as_deref()
        .map(|l| resolve_language(&welcome, l))
        .transpose()?;
    if !*announced {
        emit(events, welcome.event()).await;
        *announced = true;
    }
    // The relay asks for proof of work before it queues anyone; solving it
    // is CPU work, kept off the async threads.
    let challenge = welcome.pow;
    let pow_solution =
        tokio::task::spawn_blocking(move || pow_solve(&challenge.nonce, challenge.difficulty))
            .await
            .map_err(|e| ClientError::Lost(format!("proof of work: {e}")))?;
    relay
        .send(&Frame::Join {
            topic,
            language,
            pow_solution,
        })
        .await
}

/// How to come back after the connection dropped.
struct Back<'a> {
    reconnect: &'a Reconnect,
    ticket: Option<ResumeCapability>,
    request: &'a ClientRequest,
    events: &'a mpsc::Sender<ChatEvent>,
}

impl Back<'_> {
    /// Reconnects and takes up `state` again: the place in the queue, the
    /// handshake, or the chat. Gives the state back if that is not possible
    /// any more (the relay forgot it, or the time is up).
    async fn come_back(
        &self,
        state: State,
        announced: &mut bool,
    ) -> Result<(RelayStream, State), State> {
        let deadline = tokio::time::Instant::now() + self.reconnect.give_up_after;
        match state {
            // Our place in the queue: the relay answers with QUEUED (or
            // PAIRED), which the main loop reads. If the relay no longer
            // knows the place (it restarted) or JOIN was never confirmed,
            // join again.
            State::Waiting { .. } => {
                if let Some(ticket) = self.ticket {
                    match self.present(ticket, deadline).await {
                        Answer::Back(mut stream, answer) => {
                            stream.unread(answer);
                            return Ok((stream, state));
                        }
                        Answer::TimeUp => return Err(state),
                        Answer::Refused => {}
                    }
                }
                let Some(stream) = self.reconnect.connect().await else {
                    return Err(state);
                };
                match join(stream, self.request, self.events, announced).await {
                    Ok(stream) => Ok((stream, state)),
                    Err(_) => Err(state),
                }
            }
            State::Handshaking {
                chat: old_chat,
                handshake,
                hello,
                transferring,
                resume,
            } => loop {
                let Answer::Back(mut stream, Frame::Resumed { chat }) =
                    self.present(resume, deadline).await
                else {
                    return Err(State::Handshaking {
                        chat: old_chat,
                        handshake,
                        hello,
                        transferring,
                        resume,
                    });
                };
                // The counsellor answers a repeated message 1 with the same message 2.
                let repeat = Frame::Forward {
                    chat,
                    blob: hello.clone(),
                };
                if stream.send(&repeat).await.is_ok() {
                    let state = State::Handshaking {
                        chat,
                        handshake,
                        hello,
                        transferring,
                        resume,
                    };
                    return Ok((stream, state));
                }
            },
            State::Chatting(mut conversation, resume) => loop {
                let Answer::Back(mut stream, Frame::Resumed { chat }) =
                    self.present(resume, deadline).await
                else {
                    return Err(State::Chatting(conversation, resume));
                };
                conversation.set_chat(chat);
                if conversation.resend(&mut stream).await.is_ok() {
                    return Ok((stream, State::Chatting(conversation, resume)));
                }
            },
        }
    }

    /// Reconnects and presents `capability` until the relay answers.
    async fn present(
        &self,
        capability: ResumeCapability,
        deadline: tokio::time::Instant,
    ) -> Answer {
        while tokio::time::Instant::now() < deadline {
            let Some(mut stream) = self.reconnect.connect().await else {
                return Answer::TimeUp;
            };
            if stream.send(&Frame::Resume { capability }).await.is_err() {
                continue;
            }
            // An attempt that hears nothing is tried again, not waited on forever.
            match tokio::time::timeout(chat::ANSWER_TIMEOUT, stream.next()).await {
                // Unknown, wrong and expired all look alike: it is over.
                Ok(Ok(Some(Frame::ResumeFailed))) => return Answer::Refused,
                Ok(Ok(Some(answer))) => return Answer::Back(stream, answer),
                _ => continue,
            }
        }
        Answer::TimeUp
    }
}

/// The relay's answer to a RESUME.
// One value lives at a time, briefly; its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Answer {
    /// Back on a new connection; the relay's first frame.
    Back(RelayStream, Frame),
    /// RESUME_FAILED: the relay does not know the capability (any more).
    Refused,
    /// No answer before the time was up.
    TimeUp,
}
