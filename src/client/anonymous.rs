//! The young person's side (PROTOCOL.md §7.1).
//!
//! HELLO, then the topic list from the relay; JOIN with the chosen topic and
//! language and a proof of work, unless the relay says the service is closed
//! or full. While waiting, position and estimated wait are reported, and in
//! a crowded queue a fresh proof of work is solved when the relay asks
//! (CHALLENGE, PROOF). When paired, the Noise initiator runs; no content is
//! sent until the counsellor's certificate has verified, and lines typed
//! before then wait. A transfer is an END(TRANSFERRED) followed by a new
//! pairing, verified the same way.
//!
//! If the connection drops (or the relay stays silent) the client reconnects
//! by itself, when it may: before JOINED it simply starts again; while
//! waiting it presents its queue ticket and gets its old place back; in a
//! chat it presents the chat's resume capability: same counsellor, same
//! keys, unacknowledged messages sent again. Close codes that trying again
//! cannot change (§3.3) end the client at once with their own message.
//!
//! Leaving is explicit: at the end of input the client sends END (in a
//! chat), finishes its stream and waits for the relay's close; a quick exit
//! closes at once. Either way the relay ends the chat for the counsellor
//! immediately. Every line typed gets an id and ends as delivered or not
//! delivered, whatever happens.

use std::collections::VecDeque;

use rand_core::OsRng;
use tokio::sync::{mpsc, watch};

use super::chat::{self, ChatEvent, Conversation, EndedReason, ReconnectReason, Refused, emit};
use super::{ClientError, Reconnect, RelayStream};
use crate::core::CloseCode;
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
    /// Becomes true for a quick exit: the client leaves at once.
    pub quick_exit: Option<watch::Receiver<bool>>,
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
    Chatting(Box<Conversation>, ResumeCapability),
}

fn resolve_topic(welcome: &chat::Welcome, wanted: &str) -> Result<TopicId, ClientError> {
    let wanted = wanted.trim();
    welcome
        .topics
        .iter()
        .find(|(id, nl, en)| {
            id.get().to_string() == wanted
                || nl.as_str().eq_ignore_ascii_case(wanted)
                || en.as_str().eq_ignore_ascii_case(wanted)
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

/// Runs the anonymous client role until the chat ends. Whatever ends it,
/// every line typed is reported delivered or not delivered first.
pub async fn run_client(
    relay: RelayStream,
    org: OrgPublicKey,
    request: ClientRequest,
    mut input: mpsc::Receiver<String>,
    events: mpsc::Sender<ChatEvent>,
) -> Result<(), ClientError> {
    let (proofs_tx, proofs) = mpsc::channel(4);
    let mut client = Client {
        relay,
        org,
        request,
        events,
        state: State::Waiting {
            transferring: false,
        },
        ticket: None,
        held: VecDeque::new(),
        next_id: 1,
        announced: false,
        last_ended: None,
        proofs_tx,
        proofs,
        generation: 0,
    };
    let outcome = client.run(&mut input).await;
    client.resolve(&mut input).await;
    match outcome {
        Ok(reason) => {
            if let Some(reason) = reason {
                emit(&client.events, ChatEvent::ended(reason, None)).await;
            }
            Ok(())
        }
        Err(e) => {
            let event = match &e {
                ClientError::Security(cause) => ChatEvent::Ended {
                    reason: EndedReason::SecurityFailure,
                    chat: None,
                    detail: Some(cause.to_string()),
                },
                ClientError::Closed(CloseCode::ShuttingDown) => {
                    ChatEvent::ended(EndedReason::RelayShutdown, None)
                }
                _ => return Err(e),
            };
            emit(&client.events, event).await;
            match e {
                ClientError::Security(_) => Err(e),
                _ => Ok(()),
            }
        }
    }
}

struct Client {
    relay: RelayStream,
    org: OrgPublicKey,
    request: ClientRequest,
    events: mpsc::Sender<ChatEvent>,
    state: State,
    /// What keeps our place in the queue (JOINED), once the relay sent it.
    ticket: Option<ResumeCapability>,
    /// Lines typed before the chat could take them, with their ids.
    held: VecDeque<(u64, String)>,
    next_id: u64,
    /// The `connected` event went out.
    announced: bool,
    /// The last chat that ended (transferred); late frames for it are dropped.
    last_ended: Option<ChatNumber>,
    /// Solutions to CHALLENGE frames, solved off the async threads, by the
    /// connection generation they belong to.
    proofs_tx: mpsc::Sender<(u64, [u8; 8])>,
    proofs: mpsc::Receiver<(u64, [u8; 8])>,
    generation: u64,
}

impl Client {
    async fn emit(&self, event: ChatEvent) {
        emit(&self.events, event).await;
    }

    fn conversation(&mut self) -> Option<&mut Conversation> {
        match &mut self.state {
            State::Chatting(c, _) => Some(c),
            _ => None,
        }
    }

    /// The main loop: until the chat (or the wait) ends, and why (`None`
    /// when an event said it already: the service is closed).
    async fn run(
        &mut self,
        input: &mut mpsc::Receiver<String>,
    ) -> Result<Option<EndedReason>, ClientError> {
        if let Some(end) = self.join().await? {
            return Ok(Some(end));
        }
        let mut input_done = false;
        // When input has ended, wait this long for outstanding acknowledgements.
        let mut leave_by: Option<tokio::time::Instant> = None;
        let mut ack_tick = tokio::time::interval(chat::ACK_INTERVAL);
        ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut quick_exit = self.request.quick_exit.clone();
        loop {
            // Input has ended and everything typed has gone out: leave, once
            // what was sent is confirmed (or the wait for that is over).
            if input_done && self.held.is_empty() {
                let deadline = *leave_by
                    .get_or_insert_with(|| tokio::time::Instant::now() + 3 * chat::ACK_INTERVAL);
                let waiting_for_acks =
                    matches!(&self.state, State::Chatting(c, _) if c.has_unacked_messages());
                if !waiting_for_acks || tokio::time::Instant::now() >= deadline {
                    return self.leave().await.map(Some);
                }
            }
            let flush_at = self.conversation().and_then(|c| c.next_flush());
            tokio::select! {
                frame = self.relay.next() => {
                    match frame {
                        Ok(Some(frame)) => {
                            if let Some(end) = self.handle_frame(frame).await? {
                                return Ok(end);
                            }
                        }
                        Ok(None) => {
                            let lost = ClientError::Lost("the relay ended the stream".into());
                            if let Some(end) = self.come_back(lost).await? {
                                return Ok(Some(end));
                            }
                        }
                        Err(e) => {
                            if let Some(end) = self.come_back(e).await? {
                                return Ok(Some(end));
                            }
                        }
                    }
                }
                _ = async { tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)).await }, if flush_at.is_some() => {
                    self.flush().await?;
                }
                _ = ack_tick.tick() => {
                    if let Some(c) = self.conversation() {
                        c.ack_if_owed()?;
                    }
                    self.flush().await?;
                }
                line = input.recv(), if !input_done => match line {
                    None => input_done = true,
                    Some(line) => self.typed(line).await?,
                },
                Some((generation, solution)) = self.proofs.recv() => {
                    // A solution for a connection given up since is no use.
                    if generation == self.generation && matches!(self.state, State::Waiting { .. }) {
                        let _ = self.relay.send(&Frame::Proof { solution }).await;
                    }
                }
                _ = async { quick_exit.as_mut()?.wait_for(|exit| *exit).await.ok().map(|_| ()) }, if quick_exit.is_some() => {
                    self.relay.quick_exit().await;
                    return Ok(Some(match self.state {
                        State::Waiting { .. } => EndedReason::LeftQueue,
                        _ => EndedReason::YouEnded,
                    }));
                }
            }
        }
    }

    /// Sends what the chat's pacer allows now.
    async fn flush(&mut self) -> Result<(), ClientError> {
        if let State::Chatting(c, _) = &mut self.state {
            c.flush(&mut self.relay, &self.events).await?;
        }
        Ok(())
    }

    /// A line the young person typed: a message with the next id.
    async fn typed(&mut self, line: String) -> Result<(), ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        match &mut self.state {
            State::Chatting(c, _) => {
                if let Err(refused) = c.queue(id, &line) {
                    self.refused(id, refused).await;
                }
                self.flush().await
            }
            _ if self.held.len() >= MAX_LINES_BEFORE_PAIRED => {
                self.emit(ChatEvent::NotDelivered { id, chat: None }).await;
                self.emit(ChatEvent::error(
                    "too many lines before a counsellor joined; this one was not kept",
                ))
                .await;
                Ok(())
            }
            _ => {
                self.held.push_back((id, line));
                Ok(())
            }
        }
    }

    async fn refused(&self, id: u64, refused: Refused) {
        self.emit(ChatEvent::NotDelivered { id, chat: None }).await;
        let message = match refused {
            Refused::TooLong => ClientError::MessageTooLong.to_string(),
            Refused::Full => {
                "too many messages are waiting for delivery; this one was not sent, try again shortly"
                    .into()
            }
        };
        self.emit(ChatEvent::error(message)).await;
    }

    /// Leaves at the end of input: END in a chat, then the end of the
    /// stream, and the relay's close (PROTOCOL.md §7.1).
    async fn leave(&mut self) -> Result<EndedReason, ClientError> {
        let (chat, reason) = match &mut self.state {
            State::Waiting { .. } => (None, EndedReason::LeftQueue),
            State::Handshaking { chat, .. } => (Some(*chat), EndedReason::YouEnded),
            State::Chatting(c, _) => {
                // Confirm what arrived before saying goodbye.
                c.ack_if_owed()?;
                c.flush(&mut self.relay, &self.events).await?;
                (Some(c.chat()), EndedReason::YouEnded)
            }
        };
        if let Some(chat) = chat {
            let _ = self
                .relay
                .send(&Frame::End {
                    chat,
                    reason: EndReason::UserEnded,
                })
                .await;
        }
        self.relay.leave().await;
        Ok(reason)
    }

    /// Everything still unresolved is not delivered: unacknowledged
    /// messages, lines held for a chat that never came, and lines typed
    /// but not yet read.
    async fn resolve(&mut self, input: &mut mpsc::Receiver<String>) {
        let state = std::mem::replace(
            &mut self.state,
            State::Waiting {
                transferring: false,
            },
        );
        if let State::Chatting(c, _) = state {
            c.give_up(&self.events).await;
        }
        let mut ids: Vec<u64> = self.held.drain(..).map(|(id, _)| id).collect();
        while let Ok(_line) = input.try_recv() {
            ids.push(self.next_id);
            self.next_id += 1;
        }
        chat::not_delivered(&self.events, ids, None).await;
    }

    /// Whether a frame is for a chat that already ended here (§7.1: such
    /// frames raced the end and are dropped).
    fn for_ended_chat(&self, frame: &Frame) -> bool {
        let chat = match frame {
            Frame::Forward { chat, .. }
            | Frame::End { chat, .. }
            | Frame::PeerAway { chat }
            | Frame::PeerBack { chat } => *chat,
            _ => return false,
        };
        self.last_ended.is_some_and(|ended| chat <= ended)
    }

    /// Acts on one frame; `Some` when it ends the chat (`Some(None)`: an
    /// event said so already).
    async fn handle_frame(
        &mut self,
        frame: Frame,
    ) -> Result<Option<Option<EndedReason>>, ClientError> {
        if self.for_ended_chat(&frame) {
            return Ok(None);
        }
        let state = std::mem::replace(
            &mut self.state,
            State::Waiting {
                transferring: false,
            },
        );
        self.state = match (state, frame) {
            (s @ State::Waiting { .. }, Frame::Joined { resume }) => {
                self.ticket = Some(resume);
                s
            }
            (
                s @ State::Waiting { .. },
                Frame::Queued {
                    position,
                    estimated_wait_secs,
                },
            ) => {
                self.emit(ChatEvent::Queued {
                    position,
                    estimated_wait_secs,
                })
                .await;
                s
            }
            (s @ State::Waiting { .. }, Frame::Challenge { pow }) => {
                // Keep the place in a crowded queue: solve off the async
                // threads, answer when done.
                let (tx, generation) = (self.proofs_tx.clone(), self.generation);
                tokio::task::spawn_blocking(move || {
                    let solution = pow_solve(&pow.nonce, pow.difficulty);
                    let _ = tx.blocking_send((generation, solution));
                });
                s
            }
            (State::Waiting { .. }, Frame::Unavailable { reason, next_open }) => {
                let end = match reason {
                    Unavailable::Closed => {
                        self.emit(ChatEvent::Closed { next_open }).await;
                        None
                    }
                    Unavailable::Busy => Some(EndedReason::Busy),
                    Unavailable::WaitExceeded => Some(EndedReason::WaitExceeded),
                };
                self.relay.leave().await;
                return Ok(Some(end));
            }
            (
                State::Waiting { transferring },
                Frame::Paired {
                    chat,
                    pairing_id,
                    resume,
                    ..
                },
            ) => {
                let (handshake, blob) = ClientHandshake::start(&self.org, &pairing_id, &mut OsRng);
                self.relay
                    .send(&Frame::Forward {
                        chat,
                        blob: blob.clone(),
                    })
                    .await?;
                State::Handshaking {
                    chat,
                    handshake: Box::new(handshake),
                    hello: blob,
                    transferring,
                    resume,
                }
            }
            (s @ State::Handshaking { .. }, Frame::PeerAway { .. })
            | (s @ State::Chatting(..), Frame::PeerAway { .. }) => {
                self.emit(ChatEvent::PeerAway { chat: None }).await;
                s
            }
            (
                State::Handshaking {
                    chat,
                    handshake,
                    hello,
                    transferring,
                    resume,
                },
                Frame::PeerBack { .. },
            ) => {
                // The counsellor may have lost message 1; it answers a
                // repeat with the same message 2.
                self.relay
                    .send(&Frame::Forward {
                        chat,
                        blob: hello.clone(),
                    })
                    .await?;
                self.emit(ChatEvent::PeerBack { chat: None }).await;
                State::Handshaking {
                    chat,
                    handshake,
                    hello,
                    transferring,
                    resume,
                }
            }
            (
                State::Handshaking {
                    chat,
                    handshake,
                    transferring,
                    resume,
                    ..
                },
                Frame::Forward { chat: c, blob },
            ) if c == chat => match handshake.finish(&blob, chat::now_unix()) {
                Ok((session, certificate)) => {
                    let counsellor = certificate.pseudonym().to_owned();
                    self.emit(if transferring {
                        ChatEvent::Transferred { counsellor }
                    } else {
                        ChatEvent::Paired {
                            counsellor: Some(counsellor),
                            chat: None,
                            topic: None,
                            language: None,
                        }
                    })
                    .await;
                    let mut conversation = Box::new(Conversation::new(chat, session, None));
                    conversation.remember_handshake(blob.clone());
                    while let Some((id, line)) = self.held.pop_front() {
                        if let Err(refused) = conversation.queue(id, &line) {
                            self.refused(id, refused).await;
                        }
                    }
                    conversation.flush(&mut self.relay, &self.events).await?;
                    State::Chatting(conversation, resume)
                }
                Err(e) => return Err(self.security_failure(chat, e).await),
            },
            (State::Chatting(mut conversation, resume), Frame::Forward { chat: c, blob })
                if c == conversation.chat() =>
            {
                if let Err(e) = conversation.receive(&blob, &self.events).await {
                    self.state = State::Chatting(conversation, resume);
                    return Err(self.security_failure(c, e).await);
                }
                State::Chatting(conversation, resume)
            }
            (State::Chatting(mut conversation, resume), Frame::PeerBack { .. }) => {
                conversation.resend();
                conversation.flush(&mut self.relay, &self.events).await?;
                self.emit(ChatEvent::PeerBack { chat: None }).await;
                State::Chatting(conversation, resume)
            }
            // The counsellor handed the chat on: the old keys are dropped
            // here, a new pairing (or the queue) follows.
            (
                State::Handshaking { chat, .. },
                Frame::End {
                    chat: c,
                    reason: EndReason::Transferred,
                },
            ) if c == chat => {
                self.last_ended = Some(c);
                State::Waiting { transferring: true }
            }
            (
                State::Chatting(conversation, _),
                Frame::End {
                    chat: c,
                    reason: EndReason::Transferred,
                },
            ) if c == conversation.chat() => {
                conversation.give_up(&self.events).await;
                self.last_ended = Some(c);
                State::Waiting { transferring: true }
            }
            (s @ State::Handshaking { .. }, Frame::End { chat: c, reason })
            | (s @ State::Chatting(..), Frame::End { chat: c, reason })
                if Some(c) == current_chat(&s) =>
            {
                self.state = s;
                self.relay.leave().await;
                return Ok(Some(Some(EndedReason::from_wire(reason))));
            }
            _ => return Err(ClientError::UnexpectedFrame),
        };
        Ok(None)
    }

    /// An end-to-end check failed: END(SECURITY_FAILURE) and nothing else,
    /// then away (§6.1).
    async fn security_failure(
        &mut self,
        chat: ChatNumber,
        e: crate::crypto::e2e::E2eError,
    ) -> ClientError {
        chat::abort(&mut self.relay, chat).await;
        self.relay.abort_security().await;
        ClientError::Security(e)
    }

    /// HELLO, WELCOME, proof of work and JOIN. If the connection breaks or
    /// the relay stays silent on the way, and reconnecting is allowed, it
    /// starts over on a new connection: nobody was queued yet, so nothing is
    /// lost. `Some` if the relay will take nobody now (busy, restarting).
    async fn join(&mut self) -> Result<Option<EndedReason>, ClientError> {
        let give_up = self
            .request
            .reconnect
            .as_ref()
            .map(|r| tokio::time::Instant::now() + r.give_up_after);
        loop {
            let error = match self.join_once().await {
                Ok(()) => return Ok(None),
                Err(ClientError::Closed(CloseCode::Busy)) => return Ok(Some(EndedReason::Busy)),
                Err(ClientError::Closed(CloseCode::ShuttingDown)) => {
                    return Ok(Some(EndedReason::RelayShutdown));
                }
                Err(e) if e.is_final() => return Err(e),
                Err(e) => e,
            };
            let (Some(reconnect), Some(give_up)) = (self.request.reconnect.clone(), give_up) else {
                return Err(error);
            };
            if tokio::time::Instant::now() >= give_up {
                return Err(error);
            }
            self.relay = reconnect.connect().await?;
            self.generation += 1;
        }
    }

    async fn join_once(&mut self) -> Result<(), ClientError> {
        let welcome = chat::hello(&mut self.relay, Role::Client).await?;
        let topic = self
            .request
            .topic
            .as_deref()
            .map(|t| resolve_topic(&welcome, t))
            .transpose()?;
        let language = self
            .request
            .language
            .as_deref()
            .map(|l| resolve_language(&welcome, l))
            .transpose()?;
        if !self.announced {
            self.emit(welcome.event()).await;
            self.announced = true;
        }
        // The relay asks for proof of work before it queues anyone; solving
        // it is CPU work, kept off the async threads.
        let challenge = welcome.pow;
        let pow_solution =
            tokio::task::spawn_blocking(move || pow_solve(&challenge.nonce, challenge.difficulty))
                .await
                .map_err(|e| ClientError::Lost(format!("proof of work: {e}")))?;
        chat::join(&mut self.relay, topic, language, pow_solution).await
    }

    /// The connection ended without the chat ending: come back if we may
    /// and can (`Ok(None)`), or say how it ended.
    async fn come_back(&mut self, why: ClientError) -> Result<Option<EndedReason>, ClientError> {
        match why {
            ClientError::Closed(CloseCode::ShuttingDown) => {
                return Ok(Some(EndedReason::RelayShutdown));
            }
            e if e.is_final() => return Err(e),
            _ => {}
        }
        let Some(reconnect) = self.request.reconnect.clone() else {
            return Err(why);
        };
        self.emit(ChatEvent::Reconnecting {
            reason: ReconnectReason::Lost,
        })
        .await;
        self.generation += 1;
        let deadline = tokio::time::Instant::now() + reconnect.give_up_after;
        let state = std::mem::replace(
            &mut self.state,
            State::Waiting {
                transferring: false,
            },
        );
        let (state, back) = match state {
            // Our place in the queue: the relay answers with QUEUED (or
            // PAIRED), which the main loop reads. If the relay no longer
            // knows the place (it restarted) or JOIN was never confirmed,
            // join again.
            State::Waiting { .. } => {
                if let Some(ticket) = self.ticket {
                    match self.present(&reconnect, ticket, deadline).await? {
                        Answer::Back(mut stream, answer) => {
                            stream.unread(answer);
                            self.relay = stream;
                            self.state = state;
                            self.emit(ChatEvent::Resumed { chat: None }).await;
                            return Ok(None);
                        }
                        Answer::TimeUp => {
                            self.state = state;
                            return Ok(Some(EndedReason::EndedWhileAway));
                        }
                        Answer::Refused => {}
                    }
                }
                self.ticket = None;
                self.state = state;
                self.relay = reconnect.connect().await?;
                return match self.join().await? {
                    None => {
                        self.emit(ChatEvent::Resumed { chat: None }).await;
                        Ok(None)
                    }
                    Some(end) => Ok(Some(end)),
                };
            }
            State::Handshaking {
                chat: old_chat,
                handshake,
                hello,
                transferring,
                resume,
            } => {
                let answer = self.present(&reconnect, resume, deadline).await?;
                match answer {
                    Answer::Back(mut stream, Frame::Resumed { chat }) => {
                        // The counsellor answers a repeated message 1 with the same message 2.
                        let repeat = Frame::Forward {
                            chat,
                            blob: hello.clone(),
                        };
                        let sent = stream.send(&repeat).await;
                        self.relay = stream;
                        let state = State::Handshaking {
                            chat,
                            handshake,
                            hello,
                            transferring,
                            resume,
                        };
                        match sent {
                            Ok(()) => (state, true),
                            // Lost again: the next read notices and comes back.
                            Err(_) => (state, true),
                        }
                    }
                    _ => (
                        State::Handshaking {
                            chat: old_chat,
                            handshake,
                            hello,
                            transferring,
                            resume,
                        },
                        false,
                    ),
                }
            }
            State::Chatting(mut conversation, resume) => {
                match self.present(&reconnect, resume, deadline).await? {
                    Answer::Back(stream, Frame::Resumed { chat }) => {
                        self.relay = stream;
                        conversation.set_chat(chat);
                        conversation.resend();
                        (State::Chatting(conversation, resume), true)
                    }
                    _ => (State::Chatting(conversation, resume), false),
                }
            }
        };
        self.state = state;
        if !back {
            return Ok(Some(EndedReason::EndedWhileAway));
        }
        self.emit(ChatEvent::Resumed { chat: None }).await;
        self.flush().await?;
        Ok(None)
    }

    /// Reconnects and presents `capability` until the relay answers, the
    /// time is up, or the relay refuses for good.
    async fn present(
        &self,
        reconnect: &Reconnect,
        capability: ResumeCapability,
        deadline: tokio::time::Instant,
    ) -> Result<Answer, ClientError> {
        while tokio::time::Instant::now() < deadline {
            let mut stream = match reconnect.connect().await {
                Ok(stream) => stream,
                Err(e) if e.is_final() => return Err(e),
                Err(_) => return Ok(Answer::TimeUp),
            };
            if stream.send(&Frame::Resume { capability }).await.is_err() {
                continue;
            }
            // An attempt that hears nothing is tried again, not waited on
            // forever; the connection given up says RECONNECTING.
            match tokio::time::timeout(chat::ANSWER_TIMEOUT, stream.next()).await {
                // Unknown, wrong and expired all look alike: it is over.
                Ok(Ok(Some(Frame::ResumeFailed))) => return Ok(Answer::Refused),
                Ok(Ok(Some(answer))) => return Ok(Answer::Back(stream, answer)),
                Ok(Err(e)) if e.is_final() => return Err(e),
                _ => continue,
            }
        }
        Ok(Answer::TimeUp)
    }
}

fn current_chat(state: &State) -> Option<ChatNumber> {
    match state {
        State::Handshaking { chat, .. } => Some(*chat),
        State::Chatting(c, _) => Some(c.chat()),
        State::Waiting { .. } => None,
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
