//! The young person's side as a state machine (PROTOCOL.md §7.1).
//!
//! HELLO, then the topic list from the relay; JOIN with the chosen topic and
//! language and a proof of work, unless the relay says the service is closed
//! or full. While waiting, position and estimated wait are reported, and in
//! a crowded queue a fresh proof of work is solved when the relay asks
//! (CHALLENGE, PROOF). When paired, the Noise initiator runs; no content is
//! sent until the counsellor's certificate has verified, and lines typed
//! before then are held. A transfer is an END(TRANSFERRED) followed by a
//! new pairing, verified the same way.
//!
//! If the connection drops (or the relay stays silent) the machine comes
//! back by itself, when it may: before JOIN it simply starts again; while
//! waiting it presents its queue ticket and gets its old place back; in a
//! chat it presents the chat's resume capability: same counsellor, same
//! keys, unacknowledged messages sent again. Close codes that trying again
//! cannot change (§3.3) end the run at once with their own message.
//!
//! Leaving is explicit: at the end of input the machine sends END (in a
//! chat) once what it sent is confirmed or [`ENDING_WAIT`] is over, then
//! asks the driver to leave; a quick exit closes at once. Every line typed
//! gets an id and ends as delivered or not delivered, whatever happens.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::conversation::{Conversation, Refused};
use super::counsellor::Command;
use super::link::{ENDING_WAIT, Greeting, Link, Start, Verdict};
use super::{Input, LinkEvent, Machine, Transmit};
use crate::client::ClientError;
use crate::client::chat::{ChatEvent, EndedReason, ReconnectReason, Welcome};
use crate::core::CloseCode;
use crate::core::frame::{
    Blob, ChatNumber, EndReason, FromRelay, Language, ResumeCapability, Role, ToRelay, TopicId,
    Unavailable,
};
use crate::crypto::cert::OrgPublicKey;
use crate::crypto::e2e::{ClientHandshake, E2eError};

/// Lines a young person may type before a counsellor is connected.
pub const MAX_LINES_BEFORE_PAIRED: usize = 100;

/// What the young person asks for, and how long to try to come back.
#[derive(Debug, Clone, Default)]
pub struct Wish {
    /// A topic id or label (Dutch or English, any case).
    pub topic: Option<String>,
    /// A two-letter language code.
    pub language: Option<String>,
    /// Keep trying to come back this long after a loss; `None`: never.
    pub give_up_after: Option<Duration>,
}

// One value of this lives per young person; its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Phase {
    /// HELLO sent; reading WELCOME.
    Greeting(Greeting),
    /// JOIN's proof of work is being solved.
    Solving(PowWait),
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
    Done,
}

/// What JOIN is for, while its proof is solved.
#[derive(Clone, Copy)]
struct PowWait {
    topic: Option<TopicId>,
    language: Option<Language>,
    /// Joining again after the relay forgot our place: the queue state to
    /// return to, and `resumed` is told once JOIN is out.
    rejoin: Option<bool>,
}

/// Where the connection stands, seen from the chat.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Back {
    /// Connected, and the relay knows us.
    Here,
    /// Down; a new connection is on its way.
    Away,
    /// RESUME went out on a new connection; its answer is the next frame.
    Resuming,
}

/// The young person's machine.
pub struct Anonymous {
    link: Link,
    org: OrgPublicKey,
    wish: Wish,
    phase: Phase,
    back: Back,
    /// Re-join (in the queue as `transferring`) once the greeting is done.
    rejoin: Option<bool>,
    /// What keeps our place in the queue (JOINED), once the relay sent it.
    ticket: Option<ResumeCapability>,
    /// Lines typed before the chat could take them, with their ids.
    held: VecDeque<(u64, String)>,
    next_id: u64,
    /// The `connected` event went out.
    announced: bool,
    /// The last chat that ended (transferred); late frames for it are dropped.
    last_ended: Option<ChatNumber>,
    input_done: bool,
    /// Input has ended: leave by then even if acknowledgements are missing.
    leave_by: Option<Instant>,
}

impl Anonymous {
    /// A machine over a connection that is already open: HELLO goes out.
    pub fn new(start: Start, org: OrgPublicKey, wish: Wish) -> Self {
        let (link, greeting) = Link::open(start, Role::Client, wish.give_up_after);
        Anonymous {
            link,
            org,
            wish,
            phase: Phase::Greeting(greeting),
            back: Back::Here,
            rejoin: None,
            ticket: None,
            held: VecDeque::new(),
            next_id: 1,
            announced: false,
            last_ended: None,
            input_done: false,
            leave_by: None,
        }
    }

    fn joining(&self) -> bool {
        matches!(self.phase, Phase::Greeting(_) | Phase::Solving(_))
    }

    /// The run is over. Everything unresolved is not delivered first:
    /// unacknowledged messages and lines held for a chat that never came.
    fn finish(&mut self, last_word: Option<ChatEvent>, outcome: Result<(), ClientError>) {
        if let Phase::Chatting(c, _) = std::mem::replace(&mut self.phase, Phase::Done) {
            c.give_up(&mut self.link);
        }
        for (id, _) in self.held.drain(..) {
            self.link.emit(ChatEvent::NotDelivered { id, chat: None });
        }
        self.link.finish(last_word, outcome);
    }

    fn end(&mut self, reason: EndedReason) {
        self.finish(Some(ChatEvent::ended(reason, None)), Ok(()));
    }

    /// Ends the run on an error; what a user sees for it.
    fn fail(&mut self, e: ClientError) {
        match e {
            ClientError::Security(cause) => {
                let detail = Some(cause.to_string());
                self.finish(
                    Some(ChatEvent::Ended {
                        reason: EndedReason::SecurityFailure,
                        chat: None,
                        detail,
                    }),
                    Err(ClientError::Security(cause)),
                );
            }
            ClientError::Closed(CloseCode::ShuttingDown) => self.end(EndedReason::RelayShutdown),
            e => self.finish(None, Err(e)),
        }
    }

    /// An end-to-end check failed: END(SECURITY_FAILURE) and nothing else,
    /// then away (§6.1).
    fn security_failure(&mut self, chat: ChatNumber, e: E2eError) {
        self.link.send(ToRelay::End {
            chat,
            reason: EndReason::SecurityFailure,
        });
        self.link.instruct(Transmit::AbortSecurity);
        self.fail(ClientError::Security(e));
    }

    fn refused(&mut self, id: u64, refused: Refused) {
        self.link.emit(ChatEvent::NotDelivered { id, chat: None });
        self.link.error(refused.text());
    }

    fn flush(&mut self, now: Instant) {
        if let Phase::Chatting(c, _) = &mut self.phase {
            c.flush(now, &mut self.link);
        }
    }

    // ---- the greeting and JOIN ----

    fn greeted(&mut self, welcome: Welcome) {
        self.link.answered();
        let topic = self.wish.topic.clone();
        let language = self.wish.language.clone();
        let topic = match topic.map(|t| resolve_topic(&welcome, &t)).transpose() {
            Ok(t) => t,
            Err(e) => return self.fail(e),
        };
        let language = match language.map(|l| resolve_language(&welcome, &l)).transpose() {
            Ok(l) => l,
            Err(e) => return self.fail(e),
        };
        if !self.announced {
            self.link.emit(welcome.event());
            self.announced = true;
        }
        // The relay asks for proof of work before it queues anyone.
        self.phase = Phase::Solving(PowWait {
            topic,
            language,
            rejoin: self.rejoin.take(),
        });
        self.link.instruct(Transmit::SolveProof {
            generation: self.link.generation(),
            challenge: welcome.pow,
        });
    }

    fn joined(&mut self, wait: PowWait, pow_solution: [u8; 8]) {
        self.link.send(ToRelay::Join {
            topic: wait.topic,
            language: wait.language,
            pow_solution,
        });
        self.phase = Phase::Waiting {
            transferring: wait.rejoin.unwrap_or(false),
        };
        if wait.rejoin.is_some() {
            self.link.emit(ChatEvent::Resumed { chat: None });
        }
    }

    // ---- losing the connection and coming back ----

    fn down(&mut self, now: Instant, why: ClientError) {
        if matches!(self.phase, Phase::Done) {
            return;
        }
        if self.joining() {
            // Nobody was queued yet: start over, unless the relay will
            // take nobody now.
            match why {
                ClientError::Closed(CloseCode::Busy) => return self.end(EndedReason::Busy),
                ClientError::Closed(CloseCode::ShuttingDown) => {
                    return self.end(EndedReason::RelayShutdown);
                }
                _ => {}
            }
            self.back = Back::Away;
            if let Verdict::Stop(e) = self.link.lost(now, why) {
                self.fail(e);
            }
            return;
        }
        if self.back == Back::Here {
            if matches!(why, ClientError::Closed(CloseCode::ShuttingDown)) {
                return self.end(EndedReason::RelayShutdown);
            }
            if why.is_final() || self.wish.give_up_after.is_none() {
                return self.fail(why);
            }
            self.link.emit(ChatEvent::Reconnecting {
                reason: ReconnectReason::Lost,
            });
            self.back = Back::Away;
            if let Verdict::Stop(_) = self.link.lost(now, why) {
                self.end(EndedReason::EndedWhileAway);
            }
            return;
        }
        // Already away: an attempt to come back failed.
        self.back = Back::Away;
        match self.link.lost(now, why) {
            Verdict::Retrying => {}
            Verdict::Stop(e) if e.is_final() => self.fail(e),
            Verdict::Stop(_) => self.end(EndedReason::EndedWhileAway),
        }
    }

    /// A new connection is open: start over, or present what keeps our
    /// place or our chat.
    fn up(&mut self, now: Instant) {
        self.link.up();
        if self.joining() {
            self.phase = Phase::Greeting(self.link.greet(now, Role::Client));
            self.back = Back::Here;
            return;
        }
        let capability = match &self.phase {
            Phase::Waiting { transferring } => match self.ticket {
                Some(ticket) => ticket,
                None => return self.join_again(now, *transferring),
            },
            Phase::Handshaking { resume, .. } | Phase::Chatting(_, resume) => *resume,
            _ => return,
        };
        self.link.send(ToRelay::Resume { capability });
        self.link.expect_answer(now);
        self.back = Back::Resuming;
    }

    /// The relay no longer knows our place (it restarted), or JOIN was
    /// never confirmed: join again.
    fn join_again(&mut self, now: Instant, transferring: bool) {
        self.ticket = None;
        self.rejoin = Some(transferring);
        self.back = Back::Here;
        self.phase = Phase::Greeting(self.link.greet(now, Role::Client));
    }

    /// The relay's answer to RESUME.
    fn resume_answer(&mut self, now: Instant, frame: FromRelay) {
        self.link.answered();
        self.back = Back::Here;
        match (std::mem::replace(&mut self.phase, Phase::Done), frame) {
            (Phase::Waiting { transferring }, FromRelay::ResumeFailed) => {
                self.phase = Phase::Waiting { transferring };
                self.join_again(now, transferring);
            }
            // Our place in the queue: the answer (QUEUED or PAIRED) is an
            // ordinary frame in the queue.
            (phase @ Phase::Waiting { .. }, frame) => {
                self.phase = phase;
                self.link.emit(ChatEvent::Resumed { chat: None });
                self.frame(now, frame);
            }
            (
                Phase::Handshaking {
                    handshake,
                    hello,
                    transferring,
                    resume,
                    ..
                },
                FromRelay::Resumed { chat },
            ) => {
                // The counsellor answers a repeated message 1 with the
                // same message 2.
                self.link.send(ToRelay::Forward {
                    chat,
                    blob: hello.clone(),
                });
                self.phase = Phase::Handshaking {
                    chat,
                    handshake,
                    hello,
                    transferring,
                    resume,
                };
                self.link.emit(ChatEvent::Resumed { chat: None });
            }
            (Phase::Chatting(mut conversation, resume), FromRelay::Resumed { chat }) => {
                conversation.set_chat(chat);
                conversation.resend();
                self.phase = Phase::Chatting(conversation, resume);
                self.link.emit(ChatEvent::Resumed { chat: None });
                self.flush(now);
            }
            // Unknown, wrong and expired all look alike: it is over.
            (phase, _) => {
                self.phase = phase;
                self.end(EndedReason::EndedWhileAway);
            }
        }
    }

    // ---- frames in the queue and in a chat ----

    /// Whether a frame is for a chat that already ended here (§7.1: such
    /// frames raced the end and are dropped).
    fn for_ended_chat(&self, frame: &FromRelay) -> bool {
        let chat = match frame {
            FromRelay::Forward { chat, .. }
            | FromRelay::End { chat, .. }
            | FromRelay::PeerAway { chat }
            | FromRelay::PeerBack { chat } => *chat,
            _ => return false,
        };
        self.last_ended.is_some_and(|ended| chat <= ended)
    }

    fn frame(&mut self, now: Instant, frame: FromRelay) {
        if self.for_ended_chat(&frame) {
            return;
        }
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        self.phase = match (phase, frame) {
            (Phase::Greeting(mut greeting), frame) => match greeting.frame(frame) {
                Ok(None) => Phase::Greeting(greeting),
                Ok(Some(welcome)) => return self.greeted(welcome),
                Err(e) => return self.fail(e),
            },
            (s @ Phase::Waiting { .. }, FromRelay::Joined { resume }) => {
                self.ticket = Some(resume);
                s
            }
            (
                s @ Phase::Waiting { .. },
                FromRelay::Queued {
                    position,
                    estimated_wait_secs,
                },
            ) => {
                self.link.emit(ChatEvent::Queued {
                    position,
                    estimated_wait_secs,
                });
                s
            }
            (s @ Phase::Waiting { .. }, FromRelay::Challenge { pow }) => {
                // Keep the place in a crowded queue: solved by the driver,
                // answered in `handle_proof`.
                self.link.instruct(Transmit::SolveProof {
                    generation: self.link.generation(),
                    challenge: pow,
                });
                s
            }
            (Phase::Waiting { .. }, FromRelay::Unavailable { reason, next_open }) => {
                let last_word = match reason {
                    Unavailable::Closed => {
                        self.link.emit(ChatEvent::Closed { next_open });
                        None
                    }
                    Unavailable::Busy => Some(ChatEvent::ended(EndedReason::Busy, None)),
                    Unavailable::WaitExceeded => {
                        Some(ChatEvent::ended(EndedReason::WaitExceeded, None))
                    }
                };
                self.link.instruct(Transmit::Leave);
                return self.finish(last_word, Ok(()));
            }
            (
                Phase::Waiting { transferring },
                FromRelay::Paired {
                    chat,
                    pairing_id,
                    resume,
                    ..
                },
            ) => {
                let (handshake, blob) =
                    ClientHandshake::start(&self.org, &pairing_id, &mut self.link.rng);
                self.link.send(ToRelay::Forward {
                    chat,
                    blob: blob.clone(),
                });
                Phase::Handshaking {
                    chat,
                    handshake: Box::new(handshake),
                    hello: blob,
                    transferring,
                    resume,
                }
            }
            (s @ Phase::Handshaking { .. }, FromRelay::PeerAway { .. })
            | (s @ Phase::Chatting(..), FromRelay::PeerAway { .. }) => {
                self.link.emit(ChatEvent::PeerAway { chat: None });
                s
            }
            (s @ Phase::Handshaking { .. }, FromRelay::PeerBack { .. }) => {
                // The counsellor may have lost message 1; it answers a
                // repeat with the same message 2.
                if let Phase::Handshaking { chat, hello, .. } = &s {
                    self.link.send(ToRelay::Forward {
                        chat: *chat,
                        blob: hello.clone(),
                    });
                }
                self.link.emit(ChatEvent::PeerBack { chat: None });
                s
            }
            (
                Phase::Handshaking {
                    chat,
                    handshake,
                    transferring,
                    resume,
                    ..
                },
                FromRelay::Forward { chat: c, blob },
            ) if c == chat => match handshake.finish(&blob, self.link.clock.unix(now)) {
                Ok((session, certificate)) => {
                    let counsellor = certificate.pseudonym().to_owned();
                    self.link.emit(if transferring {
                        ChatEvent::Transferred { counsellor }
                    } else {
                        ChatEvent::Paired {
                            counsellor: Some(counsellor),
                            chat: None,
                            topic: None,
                            language: None,
                        }
                    });
                    let mut conversation = Box::new(Conversation::new(now, chat, session, None));
                    conversation.remember_handshake(blob);
                    while let Some((id, line)) = self.held.pop_front() {
                        if let Err(refused) = conversation.queue(id, &line) {
                            self.refused(id, refused);
                        }
                    }
                    conversation.flush(now, &mut self.link);
                    Phase::Chatting(conversation, resume)
                }
                Err(e) => return self.security_failure(chat, e),
            },
            (Phase::Chatting(mut conversation, resume), FromRelay::Forward { chat: c, blob })
                if c == conversation.chat() =>
            {
                let received = conversation.receive(now, &blob, &mut self.link);
                self.phase = Phase::Chatting(conversation, resume);
                if let Err(e) = received {
                    self.security_failure(c, e);
                }
                return;
            }
            (Phase::Chatting(mut conversation, resume), FromRelay::PeerBack { .. }) => {
                conversation.resend();
                conversation.flush(now, &mut self.link);
                self.link.emit(ChatEvent::PeerBack { chat: None });
                Phase::Chatting(conversation, resume)
            }
            // The counsellor handed the chat on: the old keys are dropped
            // here, a new pairing (or the queue) follows.
            (
                Phase::Handshaking { chat, .. },
                FromRelay::End {
                    chat: c,
                    reason: EndReason::Transferred,
                },
            ) if c == chat => {
                self.last_ended = Some(c);
                Phase::Waiting { transferring: true }
            }
            (
                Phase::Chatting(conversation, _),
                FromRelay::End {
                    chat: c,
                    reason: EndReason::Transferred,
                },
            ) if c == conversation.chat() => {
                conversation.give_up(&mut self.link);
                self.last_ended = Some(c);
                Phase::Waiting { transferring: true }
            }
            (phase, FromRelay::End { chat: c, reason }) if self.chat_of(&phase) == Some(c) => {
                self.phase = phase;
                self.link.instruct(Transmit::Leave);
                return self.end(EndedReason::from_wire(reason));
            }
            (Phase::Done, _) => Phase::Done,
            (phase, _) => {
                self.phase = phase;
                return self.fail(ClientError::UnexpectedFrame);
            }
        };
    }

    fn chat_of(&self, phase: &Phase) -> Option<ChatNumber> {
        match phase {
            Phase::Handshaking { chat, .. } => Some(*chat),
            Phase::Chatting(c, _) => Some(c.chat()),
            _ => None,
        }
    }

    // ---- input and leaving ----

    /// A line the young person typed: a message with the next id.
    fn typed(&mut self, now: Instant, line: String) {
        let id = self.next_id;
        self.next_id += 1;
        match &mut self.phase {
            Phase::Done => self.link.emit(ChatEvent::NotDelivered { id, chat: None }),
            Phase::Chatting(c, _) => {
                if let Err(refused) = c.queue(id, &line) {
                    self.refused(id, refused);
                }
                self.flush(now);
            }
            _ if self.held.len() >= MAX_LINES_BEFORE_PAIRED => {
                self.link.emit(ChatEvent::NotDelivered { id, chat: None });
                self.link
                    .error("too many lines before a counsellor joined; this one was not kept");
            }
            _ => self.held.push_back((id, line)),
        }
    }

    /// Input has ended and everything typed has gone out: leave, once what
    /// was sent is confirmed (or the wait for that is over).
    fn leave_if_due(&mut self, now: Instant) {
        let settled = matches!(
            self.phase,
            Phase::Waiting { .. } | Phase::Handshaking { .. } | Phase::Chatting(..)
        );
        if !self.input_done || !self.held.is_empty() || !settled || self.back != Back::Here {
            return;
        }
        let deadline = *self.leave_by.get_or_insert(now + ENDING_WAIT);
        let waiting_for_acks =
            matches!(&self.phase, Phase::Chatting(c, _) if c.has_unacked_messages());
        if waiting_for_acks && now < deadline {
            return;
        }
        let (chat, reason) = match &mut self.phase {
            Phase::Handshaking { chat, .. } => (Some(*chat), EndedReason::YouEnded),
            Phase::Chatting(c, _) => {
                // Confirm what arrived before saying goodbye.
                c.ack_if_owed();
                c.flush(now, &mut self.link);
                (Some(c.chat()), EndedReason::YouEnded)
            }
            _ => (None, EndedReason::LeftQueue),
        };
        if let Some(chat) = chat {
            self.link.send(ToRelay::End {
                chat,
                reason: EndReason::UserEnded,
            });
        }
        self.link.instruct(Transmit::Leave);
        self.end(reason);
    }

    fn quick_exit(&mut self) {
        if matches!(self.phase, Phase::Done) {
            return;
        }
        self.link.instruct(Transmit::QuickExit);
        let reason = match self.phase {
            Phase::Handshaking { .. } | Phase::Chatting(..) => EndedReason::YouEnded,
            _ => EndedReason::LeftQueue,
        };
        self.end(reason);
    }
}

impl Machine for Anonymous {
    fn link(&mut self) -> &mut Link {
        &mut self.link
    }

    fn handle_link(&mut self, now: Instant, event: LinkEvent) {
        match event {
            LinkEvent::Up => self.up(now),
            LinkEvent::Down(why) => self.down(now, why),
            LinkEvent::Frame(frame) if self.back == Back::Resuming => {
                self.resume_answer(now, frame)
            }
            LinkEvent::Frame(frame) => self.frame(now, frame),
        }
        self.leave_if_due(now);
    }

    fn handle_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Line(line) => self.typed(now, line),
            Input::Command(Command::Say(None, text)) => self.typed(now, text),
            Input::Command(_) => self.link.error("only messages can be sent here"),
            Input::EndOfInput => self.input_done = true,
            Input::QuickExit => self.quick_exit(),
        }
        self.leave_if_due(now);
    }

    fn handle_proof(&mut self, _now: Instant, generation: u64, solution: [u8; 8]) {
        // A solution for a connection given up since is no use.
        if generation != self.link.generation() || self.back != Back::Here {
            return;
        }
        match self.phase {
            Phase::Solving(wait) => self.joined(wait, solution),
            Phase::Waiting { .. } => self.link.send(ToRelay::Proof { solution }),
            _ => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Some(silent) = self.link.handle_timeout(now) {
            self.down(now, silent);
        }
        if self.back == Back::Here
            && let Phase::Chatting(c, _) = &mut self.phase
        {
            c.handle_timeout(now, &mut self.link);
        }
        self.leave_if_due(now);
    }

    fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        if self.link.is_finished() {
            return None;
        }
        let open = self.link.is_open() && self.back == Back::Here;
        let chat = match &mut self.phase {
            Phase::Chatting(c, _) => c.poll_timeout(now, open),
            _ => None,
        };
        // Leaving waits for a connection to leave on.
        let leave_by = self.leave_by.filter(|_| open);
        [self.link.poll_timeout(), leave_by, chat]
            .into_iter()
            .flatten()
            .min()
    }
}

fn resolve_topic(welcome: &Welcome, wanted: &str) -> Result<TopicId, ClientError> {
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

fn resolve_language(welcome: &Welcome, wanted: &str) -> Result<Language, ClientError> {
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
