//! The counsellor's side as a state machine (PROTOCOL.md §7.2): several
//! chats at once, driven by typed lines or commands.
//!
//! After HELLO the counsellor says what it takes (STATUS: available or away,
//! capacity, topics, languages). Each PAIRED opens a chat slot that answers
//! the young person's handshake with the certified key. Lines are messages
//! or commands: `@N text` addresses chat N, a plain line goes to the only
//! open chat, and `/`-commands change status, list chats, end, block or
//! transfer. Chats keep the number first shown for them, and a PAIRED shows
//! at once (with the young person's topic and language) while their
//! handshake is on its way; `ready` follows when it arrives.
//!
//! If the connection drops, the machine comes back with backoff, signs in
//! again and resumes every open chat with its capability; when the relay
//! restarts its chats have ended, and it signs in again when the relay is
//! back. A revoked or refused sign-in, or a relay that stays away, ends
//! every chat honestly: each message not confirmed is reported not
//! delivered. The end of input signs out once every chat's last messages
//! are confirmed (or [`ENDING_WAIT`] is over).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::coding::{Choice, Coder};
use super::conversation::Conversation;
use super::link::{ENDING_WAIT, Greeting, Link, Start, Verdict};
use super::{Input, LinkEvent, Machine, Transmit};
use crate::client::ClientError;
use crate::client::chat::{self, ChatEvent, EndedReason, ReconnectReason, Waiting, Welcome};
use crate::core::CloseCode;
use crate::core::coding::Month;
use crate::core::frame::{
    Blob, ChatNumber, EndReason, FromRelay, Label, Language, MAX_LANGUAGES, MAX_TOPICS, PairingId,
    ResumeCapability, Role, ToRelay, TopicId, TransferTarget,
};
use crate::crypto::e2e::{self, CounsellorKeys};

/// How long signing out waits for the last codings to be counted.
pub const CODING_WAIT: Duration = Duration::from_secs(5);

/// What a counsellor takes, and how long to try to come back.
#[derive(Debug, Clone)]
pub struct Preferences {
    pub available: bool,
    pub capacity: u8,
    /// Topic ids; `None` = all the relay offers.
    pub topics: Option<Vec<u16>>,
    /// Language codes; `None` = all the relay offers.
    pub languages: Option<Vec<String>>,
    /// Keep trying to come back this long after a loss; `None`: never.
    pub give_up_after: Option<Duration>,
}

impl Default for Preferences {
    fn default() -> Self {
        Preferences {
            available: true,
            capacity: 1,
            topics: None,
            languages: None,
            give_up_after: None,
        }
    }
}

/// The line commands, as `/help` shows them.
pub const HELP: &[&str] = &[
    "Commands (N is a chat number; @N may be left out when one chat is open):",
    "  text            send to the only open chat",
    "  @N text         send to chat N",
    "  /chats          list open chats",
    "  /end [@N]       end a chat (once your last messages are confirmed, at most 3 s)",
    "  /block [@N]     end a chat and block it (the young person's connection is closed)",
    "  /transfer [@N] NAME    hand a chat to a colleague",
    "  /transfer [@N] queue   hand a chat back to the queue, ahead of newcomers",
    "  /available      take new chats",
    "  /away           take no new chats (open chats continue)",
    "  /capacity N     take at most N chats at once",
    "  /code           show the case coding form",
    "  /code F=V, ...  code a chat you had: field F, value V (numbers or names); month=YYYY-MM for an earlier month",
    "  /code send      send the codings held now (they go in batches of 5, and at sign-out)",
    "  /help           this list",
    "End of input signs out (open chats end the same way).",
];

/// A parsed input line, or a command from a richer frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Say(Option<u32>, String),
    Chats,
    End(Option<u32>),
    Block(Option<u32>),
    Transfer(Option<u32>, TransferTarget),
    Available(bool),
    Capacity(u8),
    Help,
    /// Show the coding form.
    CodeShow,
    /// Code one chat: the choices, and the month if not the current one.
    Code(Vec<Choice>, Option<Month>),
    /// Send the codings held now.
    CodeSend,
}

/// `/code` and what follows it.
fn parse_code(rest: &str) -> Result<Command, String> {
    let rest = rest.trim();
    match rest {
        "" => return Ok(Command::CodeShow),
        "send" => return Ok(Command::CodeSend),
        _ => {}
    }
    let parts: Vec<&str> = if rest.contains(',') {
        rest.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect()
    } else {
        rest.split_whitespace().collect()
    };
    let mut choices = Vec::new();
    let mut month = None;
    for part in parts {
        let (field, value) = part
            .split_once('=')
            .map(|(f, v)| (f.trim(), v.trim()))
            .filter(|(f, v)| !f.is_empty() && !v.is_empty())
            .ok_or_else(|| format!("/code takes FIELD=VALUE pairs, not {part:?}"))?;
        if field.eq_ignore_ascii_case("month") {
            month = Some(Month::parse(value).ok_or_else(|| format!("month={value}: use YYYY-MM"))?);
        } else {
            choices.push(Choice {
                field: field.to_owned(),
                value: value.to_owned(),
            });
        }
    }
    Ok(Command::Code(choices, month))
}

/// Splits an optional leading `@N` off `rest`.
fn chat_prefix(rest: &str) -> Result<(Option<u32>, &str), String> {
    let rest = rest.trim_start();
    match rest.strip_prefix('@') {
        None => Ok((None, rest)),
        Some(tail) => {
            let (num, tail) = tail.split_once(char::is_whitespace).unwrap_or((tail, ""));
            let n = num
                .parse()
                .map_err(|_| format!("@{num} is not a chat number"))?;
            Ok((Some(n), tail.trim_start()))
        }
    }
}

fn parse(line: &str) -> Result<Command, String> {
    let Some(command) = line.strip_prefix('/') else {
        let (chat, text) = chat_prefix(line)?;
        return Ok(Command::Say(
            chat,
            if chat.is_some() {
                text.to_owned()
            } else {
                line.to_owned()
            },
        ));
    };
    let (word, rest) = command
        .split_once(char::is_whitespace)
        .unwrap_or((command, ""));
    let no_args = |c: Command| {
        if rest.trim().is_empty() {
            Ok(c)
        } else {
            Err(format!("/{word} takes no arguments"))
        }
    };
    match word {
        "help" => Ok(Command::Help),
        "chats" => no_args(Command::Chats),
        "available" => no_args(Command::Available(true)),
        "away" => no_args(Command::Available(false)),
        "capacity" => rest
            .trim()
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .map(Command::Capacity)
            .ok_or_else(|| "/capacity needs a number from 1".to_owned()),
        "end" | "block" => {
            let (chat, tail) = chat_prefix(rest)?;
            if !tail.is_empty() {
                return Err(format!("/{word} takes only @N"));
            }
            Ok(if word == "end" {
                Command::End(chat)
            } else {
                Command::Block(chat)
            })
        }
        "code" => parse_code(rest),
        "transfer" => {
            let (chat, name) = chat_prefix(rest)?;
            match name.trim() {
                "" => Err("/transfer needs a colleague's name or \"queue\"".into()),
                "queue" => Ok(Command::Transfer(chat, TransferTarget::Queue)),
                name => Label::new(name)
                    .map(|name| Command::Transfer(chat, TransferTarget::Colleague(name)))
                    .map_err(|e| format!("{name:?} cannot be a counsellor's name: it {e}")),
            }
        }
        _ => Err(format!("unknown command /{word}; /help lists them")),
    }
}

enum SlotState {
    AwaitingHandshake(PairingId),
    /// With the handshake's message 1 and our answer, until the young
    /// person's first transport message shows the answer arrived: a
    /// repeated message 1 (sent again after we were away) gets the same
    /// answer.
    Chatting(Box<Conversation>, Option<(Blob, Blob)>),
}

/// One chat of this counsellor, under the number the counsellor sees.
struct Slot {
    /// The relay's number for it on the current connection.
    chat: ChatNumber,
    resume: ResumeCapability,
    state: SlotState,
    /// `/end` was asked: the chat ends once what we sent is confirmed, or
    /// at this instant, whichever comes first. Nothing more can be sent.
    ending: Option<Instant>,
    /// The id of the next message typed into this chat.
    next_id: u64,
}

impl Slot {
    fn conversation(&mut self) -> Option<&mut Conversation> {
        match &mut self.state {
            SlotState::Chatting(c, _) => Some(c),
            SlotState::AwaitingHandshake(_) => None,
        }
    }

    fn waits_for_acks(&self) -> bool {
        matches!(&self.state, SlotState::Chatting(c, _) if c.has_unacked_messages())
    }

    /// Reports every message not confirmed as not delivered.
    fn give_up(self, link: &mut Link) {
        if let SlotState::Chatting(conversation, _) = self.state {
            conversation.give_up(link);
        }
    }
}

enum Phase {
    /// HELLO sent; `first`: this is the sign-in, not a return.
    Greeting {
        greeting: Greeting,
        first: bool,
    },
    Working,
    Done,
}

/// The counsellor's machine.
pub struct Counsellor {
    link: Link,
    keys: CounsellorKeys,
    preferences: Preferences,
    phase: Phase,
    /// Away after a loss; `Reconnecting` was told.
    away: bool,
    /// Open chats by the number shown to the counsellor.
    slots: BTreeMap<u32, Slot>,
    next_shown: u32,
    /// Chats asked back with RESUME, oldest first; answers come in order.
    resuming: VecDeque<u32>,
    available: bool,
    capacity: u8,
    topics: Vec<TopicId>,
    languages: Vec<Language>,
    signing_out: bool,
    /// Signing out waits for codings to be counted until then.
    signing_out_by: Option<Instant>,
    coder: Coder,
}

impl Counsellor {
    /// A machine over a connection that is already open: HELLO goes out.
    pub fn new(start: Start, keys: CounsellorKeys, preferences: Preferences) -> Self {
        let (link, greeting) = Link::open(start, Role::Counsellor, preferences.give_up_after);
        Counsellor {
            link,
            keys,
            available: preferences.available,
            capacity: preferences.capacity.max(1),
            preferences,
            phase: Phase::Greeting {
                greeting,
                first: true,
            },
            away: false,
            slots: BTreeMap::new(),
            next_shown: 1,
            resuming: VecDeque::new(),
            topics: Vec::new(),
            languages: Vec::new(),
            signing_out: false,
            signing_out_by: None,
            coder: Coder::default(),
        }
    }

    /// Ends every open chat here, for `reason`: what was not confirmed is
    /// reported not delivered.
    fn end_all(&mut self, reason: EndedReason) {
        for (shown, slot) in std::mem::take(&mut self.slots) {
            slot.give_up(&mut self.link);
            self.link.emit(ChatEvent::ended(reason, Some(shown)));
        }
        self.resuming.clear();
    }

    /// Whatever ends the session ends every chat still open, honestly.
    fn fail(&mut self, e: ClientError) {
        let reason = match &e {
            ClientError::Closed(CloseCode::Revoked) => EndedReason::Revoked,
            e if e.is_final() => EndedReason::SignedOut,
            _ => EndedReason::EndedWhileAway,
        };
        self.end_all(reason);
        self.phase = Phase::Done;
        self.link.finish(None, Err(e));
    }

    fn done(&mut self) {
        self.phase = Phase::Done;
        self.link.finish(None, Ok(()));
    }

    fn send_status(&mut self) {
        self.link.send(ToRelay::Status {
            available: self.available,
            capacity: self.capacity,
            topics: self.topics.clone(),
            languages: self.languages.clone(),
        });
        self.link.emit(ChatEvent::Status {
            available: self.available,
            capacity: self.capacity,
        });
    }

    /// The number shown for the relay's chat `chat`.
    fn shown(&self, chat: ChatNumber) -> Option<u32> {
        self.slots
            .iter()
            .find(|(_, s)| s.chat == chat)
            .map(|(n, _)| *n)
    }

    /// The chat a command is for: the one named, or the only open one.
    /// A chat that is ending takes no more commands.
    fn pick(&self, chat: Option<u32>) -> Result<u32, String> {
        let open: Vec<u32> = self
            .slots
            .iter()
            .filter(|(_, s)| s.ending.is_none())
            .map(|(n, _)| *n)
            .collect();
        match chat {
            Some(n) if open.contains(&n) => Ok(n),
            Some(n) if self.slots.contains_key(&n) => Err(format!("chat @{n} is ending")),
            Some(n) => Err(format!("no open chat @{n}")),
            None => match open.as_slice() {
                [] => Err("no chat is open".into()),
                [n] => Ok(*n),
                _ => Err("several chats are open; address one with @N".into()),
            },
        }
    }

    // ---- signing in, and coming back ----

    fn greeted(&mut self, welcome: Welcome, first: bool) {
        self.link.answered();
        self.away = false;
        if first {
            match self.choose(&welcome) {
                Ok((topics, languages)) => {
                    self.topics = topics;
                    self.languages = languages;
                }
                Err(e) => return self.fail(e),
            }
            self.link.emit(welcome.event());
        }
        self.phase = Phase::Working;
        self.send_status();
        self.coder.signed_in(&mut self.link);
        // Ask for every chat back, those still in their handshake too.
        self.resuming.clear();
        let open: Vec<(u32, ResumeCapability)> =
            self.slots.iter().map(|(n, s)| (*n, s.resume)).collect();
        for (n, capability) in open {
            self.link.send(ToRelay::Resume { capability });
            self.resuming.push_back(n);
        }
    }

    /// The topics and languages asked for, as the relay offers them.
    fn choose(&self, welcome: &Welcome) -> Result<(Vec<TopicId>, Vec<Language>), ClientError> {
        let topics = match &self.preferences.topics {
            None => Vec::new(),
            Some(ids) => ids
                .iter()
                .map(|id| {
                    welcome
                        .topics
                        .iter()
                        .find(|(t, _, _)| t.get() == *id)
                        .map(|(t, _, _)| *t)
                        .ok_or_else(|| {
                            ClientError::Request(format!("the relay offers no topic {id}"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let languages = match &self.preferences.languages {
            None => Vec::new(),
            Some(codes) => codes
                .iter()
                .map(|code| {
                    Language::parse(code)
                        .filter(|l| welcome.languages.contains(l))
                        .ok_or_else(|| {
                            ClientError::Request(format!("the relay offers no language {code:?}"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        if topics.len() > MAX_TOPICS || languages.len() > MAX_LANGUAGES {
            return Err(ClientError::Request("too many topics or languages".into()));
        }
        Ok((topics, languages))
    }

    fn down(&mut self, now: Instant, why: ClientError) {
        self.coder.lost();
        match self.phase {
            Phase::Done => return,
            // The sign-in itself failed: nothing to come back to.
            Phase::Greeting { first: true, .. } => return self.fail(why),
            _ => {}
        }
        if !self.away {
            if why.is_final() || self.preferences.give_up_after.is_none() {
                return self.fail(why);
            }
            let reason = match why {
                // The relay is restarting: its chats have ended (END
                // RELAY_SHUTDOWN); sign in again when it is back.
                ClientError::Closed(CloseCode::ShuttingDown) => {
                    self.end_all(EndedReason::RelayShutdown);
                    ReconnectReason::RelayRestarting
                }
                _ => ReconnectReason::Lost,
            };
            self.away = true;
            self.link.emit(ChatEvent::Reconnecting { reason });
            if let Verdict::Stop(e) = self.link.lost(now, why) {
                self.fail(e);
            }
            return;
        }
        if let Verdict::Stop(e) = self.link.lost(now, why) {
            self.fail(e);
        }
    }

    fn up(&mut self, now: Instant) {
        self.link.up();
        let greeting = self.link.greet(now, Role::Counsellor);
        self.phase = Phase::Greeting {
            greeting,
            first: false,
        };
    }

    // ---- frames ----

    fn frame(&mut self, now: Instant, frame: FromRelay) {
        match &mut self.phase {
            Phase::Done => return,
            Phase::Greeting { greeting, first } => {
                let first = *first;
                match greeting.frame(frame) {
                    Ok(None) => {}
                    Ok(Some(welcome)) => self.greeted(welcome, first),
                    Err(e) => self.fail(e),
                }
                return;
            }
            Phase::Working => {}
        }
        match frame {
            FromRelay::Paired {
                chat,
                pairing_id,
                resume,
                topic,
                language,
            } => {
                let shown = self.next_shown;
                self.next_shown += 1;
                self.slots.insert(
                    shown,
                    Slot {
                        chat,
                        resume,
                        state: SlotState::AwaitingHandshake(pairing_id),
                        ending: None,
                        next_id: 1,
                    },
                );
                self.link.emit(ChatEvent::Paired {
                    counsellor: None,
                    chat: Some(shown),
                    topic: topic.map(TopicId::get),
                    language: language.map(|l| l.as_str().to_owned()),
                });
            }
            FromRelay::Forward { chat, blob } => self.forward(now, chat, blob),
            FromRelay::End { chat, reason } => {
                if let Some(shown) = self.shown(chat)
                    && let Some(slot) = self.slots.remove(&shown)
                {
                    slot.give_up(&mut self.link);
                    self.link.emit(ChatEvent::ended(
                        EndedReason::from_wire(reason),
                        Some(shown),
                    ));
                }
            }
            FromRelay::TransferRefused { chat, reason } => {
                let shown = self.shown(chat).unwrap_or(chat.get());
                self.link.emit(ChatEvent::TransferRefused {
                    chat: shown,
                    reason: reason.text().into(),
                    code: reason,
                });
            }
            FromRelay::QueueStats { waiting } => {
                let waiting = waiting
                    .into_iter()
                    .map(|(topic, count)| Waiting {
                        topic: topic.map(TopicId::get),
                        count,
                    })
                    .collect();
                self.link.emit(ChatEvent::QueueStats { waiting });
            }
            FromRelay::Colleague { name, presence } => {
                self.link.emit(chat::colleague_event(&name, presence));
            }
            FromRelay::Resumed { chat } => {
                let Some(shown) = self.resuming.pop_front() else {
                    return self.fail(ClientError::UnexpectedFrame);
                };
                if let Some(slot) = self.slots.get_mut(&shown) {
                    slot.chat = chat;
                    if let Some(conversation) = slot.conversation() {
                        conversation.set_chat(chat);
                        conversation.resend();
                        conversation.flush(now, &mut self.link);
                    }
                    self.link.emit(ChatEvent::Resumed { chat: Some(shown) });
                }
            }
            FromRelay::ResumeFailed => {
                let Some(shown) = self.resuming.pop_front() else {
                    return self.fail(ClientError::UnexpectedFrame);
                };
                if let Some(slot) = self.slots.remove(&shown) {
                    slot.give_up(&mut self.link);
                    self.link
                        .emit(ChatEvent::ended(EndedReason::EndedWhileAway, Some(shown)));
                }
            }
            FromRelay::PeerAway { chat } => {
                if let Some(shown) = self.shown(chat) {
                    self.link.emit(ChatEvent::PeerAway { chat: Some(shown) });
                }
            }
            FromRelay::PeerBack { chat } => {
                if let Some(shown) = self.shown(chat) {
                    if let Some(conversation) =
                        self.slots.get_mut(&shown).and_then(Slot::conversation)
                    {
                        conversation.resend();
                        conversation.flush(now, &mut self.link);
                    }
                    self.link.emit(ChatEvent::PeerBack { chat: Some(shown) });
                }
            }
            FromRelay::FormField {
                form,
                fields,
                index,
                field,
            } => self
                .coder
                .form_field(now, &mut self.link, form, fields, index, field),
            FromRelay::CodingsResult { batch, outcome } => {
                self.coder.result(now, &mut self.link, batch, outcome)
            }
            _ => self.fail(ClientError::UnexpectedFrame),
        }
    }

    fn forward(&mut self, now: Instant, chat: ChatNumber, blob: Blob) {
        // A chat this side already ended or aborted: frames sent before our
        // END crossed it are dropped (§7.2).
        let Some(shown) = self.shown(chat) else {
            return;
        };
        let Some(slot) = self.slots.get_mut(&shown) else {
            return;
        };
        let result = match &mut slot.state {
            SlotState::AwaitingHandshake(pairing_id) => {
                match e2e::counsellor_respond(&self.keys, pairing_id, &blob, &mut self.link.rng) {
                    Ok((session, reply)) => {
                        slot.state = SlotState::Chatting(
                            Box::new(Conversation::new(now, chat, session, Some(shown))),
                            Some((blob, reply.clone())),
                        );
                        self.link.send(ToRelay::Forward { chat, blob: reply });
                        self.link.emit(ChatEvent::Ready { chat: shown });
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            SlotState::Chatting(_, Some((hello, reply))) if *hello == blob => {
                self.link.send(ToRelay::Forward {
                    chat,
                    blob: reply.clone(),
                });
                Ok(())
            }
            SlotState::Chatting(conversation, replay) => {
                let received = conversation.receive(now, &blob, &mut self.link);
                if received.is_ok() {
                    *replay = None;
                }
                received
            }
        };
        if let Err(e) = result {
            if let Some(slot) = self.slots.remove(&shown) {
                slot.give_up(&mut self.link);
            }
            // The young person learns only that a check failed.
            self.link.send(ToRelay::End {
                chat,
                reason: EndReason::SecurityFailure,
            });
            self.link.emit(ChatEvent::Ended {
                reason: EndedReason::SecurityFailure,
                chat: Some(shown),
                detail: Some(e.to_string()),
            });
        }
    }

    // ---- ending chats ----

    fn end(&mut self, now: Instant, shown: u32, reason: EndReason) {
        let Some(mut slot) = self.slots.remove(&shown) else {
            return;
        };
        if let Some(conversation) = slot.conversation() {
            // Confirm what arrived before saying goodbye.
            conversation.ack_if_owed();
            conversation.flush(now, &mut self.link);
        }
        let chat = slot.chat;
        slot.give_up(&mut self.link);
        self.link.send(ToRelay::End { chat, reason });
        let said = if reason == EndReason::Blocked {
            EndedReason::YouBlocked
        } else {
            EndedReason::YouEnded
        };
        self.link.emit(ChatEvent::ended(said, Some(shown)));
    }

    /// Ends a chat once what we sent in it is confirmed (or after
    /// [`ENDING_WAIT`]), so that its last messages are not reported
    /// undelivered just because the acknowledgement was still on its way.
    fn end_when_confirmed(&mut self, now: Instant, shown: u32) {
        if let Some(slot) = self.slots.get_mut(&shown) {
            slot.ending.get_or_insert(now + ENDING_WAIT);
        }
    }

    /// Ends the chats whose wait for confirmations is over; signs out
    /// when signing out and no chat is left.
    fn end_confirmed(&mut self, now: Instant) {
        if !self.link.is_open() || !matches!(self.phase, Phase::Working) {
            return;
        }
        if self.signing_out {
            // Every chat, one paired just before the relay heard we were
            // leaving too.
            let open: Vec<u32> = self.slots.keys().copied().collect();
            for n in open {
                self.end_when_confirmed(now, n);
            }
        }
        let due: Vec<u32> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                s.ending
                    .is_some_and(|deadline| !s.waits_for_acks() || now >= deadline)
            })
            .map(|(n, _)| *n)
            .collect();
        for n in due {
            self.end(now, n, EndReason::UserEnded);
        }
        if self.signing_out && self.slots.is_empty() {
            // Codings still held go now; sign-out waits for their answer
            // until `signing_out_by`.
            self.coder.pump(now, &mut self.link, true);
            if self.coder.busy() && self.signing_out_by.is_some_and(|by| now < by) {
                return;
            }
            self.coder.give_up(&mut self.link);
            self.link.instruct(Transmit::Leave);
            self.done();
        }
    }

    // ---- input ----

    fn line(&mut self, now: Instant, line: &str) {
        match parse(line) {
            Ok(command) => self.command(now, command),
            Err(message) => self.link.error(message),
        }
    }

    /// Carries out one command.
    pub fn command(&mut self, now: Instant, command: Command) {
        match command {
            Command::Help => self.link.emit(ChatEvent::Help {
                commands: HELP.iter().map(|s| s.to_string()).collect(),
            }),
            Command::Chats => {
                let chats = self.slots.keys().copied().collect();
                self.link.emit(ChatEvent::Chats { chats })
            }
            Command::Available(available) => {
                self.available = available;
                self.send_status();
            }
            Command::Capacity(n) => {
                self.capacity = n;
                self.send_status();
            }
            Command::Say(chat, text) => self.say(now, chat, &text),
            Command::CodeShow => self.coder.show(&mut self.link),
            Command::Code(choices, month) => self.coder.code(now, &mut self.link, &choices, month),
            Command::CodeSend => self.coder.pump(now, &mut self.link, true),
            Command::End(chat) => match self.pick(chat) {
                Ok(n) => self.end_when_confirmed(now, n),
                Err(message) => self.link.error(message),
            },
            // Blocking is at once: an abusive chat gets nothing more.
            Command::Block(chat) => match self.pick(chat) {
                Ok(n) => self.end(now, n, EndReason::Blocked),
                Err(message) => self.link.error(message),
            },
            // The slot stays until the relay confirms with END(TRANSFERRED)
            // or refuses; a refused chat carries on as it was.
            Command::Transfer(chat, target) => match self.pick(chat) {
                Ok(n) => {
                    let chat = self.slots[&n].chat;
                    self.link.send(ToRelay::Transfer { chat, target })
                }
                Err(message) => self.link.error(message),
            },
        }
    }

    fn say(&mut self, now: Instant, chat: Option<u32>, text: &str) {
        let n = match self.pick(chat) {
            Ok(n) => n,
            Err(message) => return self.link.error(format!("{message}; the line was not sent")),
        };
        let Some(slot) = self.slots.get_mut(&n) else {
            return;
        };
        if !matches!(slot.state, SlotState::Chatting(..)) {
            return self.link.error(format!(
                "@{n}: the young person is not connected yet; the line was not sent"
            ));
        }
        let id = slot.next_id;
        slot.next_id += 1;
        let Some(conversation) = slot.conversation() else {
            return;
        };
        match conversation.queue(id, text) {
            Ok(()) => {
                // For a frontend that shows what was sent: which id the
                // text got.
                self.link.emit(ChatEvent::Said {
                    id,
                    chat: n,
                    text: text.to_owned(),
                });
                conversation.flush(now, &mut self.link)
            }
            Err(refused) => {
                self.link
                    .emit(ChatEvent::NotDelivered { id, chat: Some(n) });
                self.link.error(refused.text());
            }
        }
    }
}

impl Machine for Counsellor {
    fn link(&mut self) -> &mut Link {
        &mut self.link
    }

    fn handle_link(&mut self, now: Instant, event: LinkEvent) {
        match event {
            LinkEvent::Up => self.up(now),
            LinkEvent::Down(why) => self.down(now, why),
            LinkEvent::Frame(frame) => self.frame(now, frame),
        }
        self.end_confirmed(now);
    }

    fn handle_input(&mut self, now: Instant, input: Input) {
        if matches!(self.phase, Phase::Done) {
            return;
        }
        match input {
            Input::Line(line) => self.line(now, &line),
            Input::Command(command) => self.command(now, command),
            Input::EndOfInput => {
                // Sign out: no new chats from now on; every chat ends once
                // what was sent in it is confirmed.
                self.signing_out = true;
                self.signing_out_by = Some(now + CODING_WAIT);
                self.available = false;
                self.send_status();
            }
            Input::QuickExit => {
                self.link.instruct(Transmit::QuickExit);
                self.end_all(EndedReason::YouEnded);
                return self.done();
            }
        }
        self.end_confirmed(now);
    }

    fn handle_proof(&mut self, _now: Instant, _generation: u64, _solution: [u8; 8]) {}

    fn handle_timeout(&mut self, now: Instant) {
        if let Some(silent) = self.link.handle_timeout(now) {
            self.down(now, silent);
        }
        if self.link.is_open() && matches!(self.phase, Phase::Working) {
            for slot in self.slots.values_mut() {
                if let Some(conversation) = slot.conversation() {
                    conversation.handle_timeout(now, &mut self.link);
                }
            }
            self.coder.pump(now, &mut self.link, false);
        }
        self.end_confirmed(now);
    }

    fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        if self.link.is_finished() {
            return None;
        }
        let open = self.link.is_open() && matches!(self.phase, Phase::Working);
        let mut next = self.link.poll_timeout();
        for slot in self.slots.values_mut() {
            let chat = slot.conversation().and_then(|c| c.poll_timeout(now, open));
            // Ending waits for a connection to send END on.
            let ending = slot.ending.filter(|_| open);
            for at in [chat, ending].into_iter().flatten() {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        let coding = [self.coder.poll_timeout(), self.signing_out_by];
        for at in coding.into_iter().flatten().filter(|_| open) {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_into_commands() {
        assert_eq!(parse("hallo"), Ok(Command::Say(None, "hallo".into())));
        assert_eq!(
            parse("@2 hoe gaat het?"),
            Ok(Command::Say(Some(2), "hoe gaat het?".into()))
        );
        assert_eq!(parse("/end"), Ok(Command::End(None)));
        assert_eq!(parse("/block @3"), Ok(Command::Block(Some(3))));
        assert_eq!(
            parse("/transfer @1 Noor"),
            Ok(Command::Transfer(
                Some(1),
                TransferTarget::Colleague(Label::new("Noor").unwrap())
            ))
        );
        // A name that cannot be a pseudonym never reaches the wire.
        assert!(parse("/transfer No\tor").is_err());
        assert!(parse(&format!("/transfer {}", "é".repeat(33))).is_err());
        assert_eq!(
            parse("/transfer queue"),
            Ok(Command::Transfer(None, TransferTarget::Queue))
        );
        assert_eq!(parse("/capacity 3"), Ok(Command::Capacity(3)));
        assert!(parse("/capacity 0").is_err());
        assert!(parse("/transfer").is_err());
        assert!(parse("/frobnicate").is_err());
        assert!(parse("@x hi").is_err());
    }
}
