//! The counsellor's side (PROTOCOL.md §7.2): several chats at once, driven
//! by typed lines.
//!
//! After HELLO the counsellor says what it takes (STATUS: available or away,
//! capacity, topics, languages). Each PAIRED opens a chat slot that answers
//! the client's handshake with the certified key. Lines are messages or
//! commands: `@N text` addresses chat N, a plain line goes to the only open
//! chat, and `/`-commands change status, list chats, end, block or transfer.
//! Chats keep the number first shown for them, and a PAIRED shows at once
//! (with the young person's topic and language) while their handshake is on
//! its way; `ready` follows when it arrives. If the connection drops, the
//! counsellor reconnects, signs in again and resumes every open chat with
//! its capability; when the relay restarts it signs in again when the relay
//! is back. A revoked or refused sign-in, or a relay that stays away, ends
//! every chat honestly: each message not confirmed is reported not
//! delivered.

use std::collections::BTreeMap;

use rand_core::OsRng;
use tokio::sync::mpsc;

use super::chat::{
    self, ChatEvent, Conversation, EndedReason, ReconnectReason, Refused, Waiting, emit,
};
use super::{ClientError, Reconnect, RelayStream};
use crate::core::CloseCode;
use crate::core::frame::{
    Blob, ChatNumber, EndReason, Frame, Label, Language, MAX_LANGUAGES, MAX_TOPICS, PairingId,
    ResumeCapability, Role, TopicId, TransferTarget,
};
use crate::crypto::e2e::{self, CounsellorKeys};

/// What a counsellor takes, as given on the command line.
#[derive(Debug, Clone)]
pub struct CounsellorSettings {
    /// How to reconnect and resume open chats if the connection drops.
    pub reconnect: Option<Reconnect>,
    pub available: bool,
    pub capacity: u8,
    /// Topic ids; `None` = all the relay offers.
    pub topics: Option<Vec<u16>>,
    /// Language codes; `None` = all the relay offers.
    pub languages: Option<Vec<String>>,
    /// Becomes true to sign out at once, without waiting for confirmations.
    pub quick_exit: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Default for CounsellorSettings {
    fn default() -> Self {
        CounsellorSettings {
            reconnect: None,
            available: true,
            capacity: 1,
            topics: None,
            languages: None,
            quick_exit: None,
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
    "  /help           this list",
    "End of input signs out (open chats end the same way).",
];

enum SlotState {
    AwaitingHandshake(PairingId),
    /// With the handshake's message 1 and our answer, until the client's
    /// first transport message shows the answer arrived: a repeated message
    /// 1 (the client resends it after we were away) gets the same answer.
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
    ending: Option<tokio::time::Instant>,
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

    /// Reports every message not confirmed as not delivered.
    async fn give_up(self, events: &mpsc::Sender<ChatEvent>) {
        if let SlotState::Chatting(conversation, _) = self.state {
            conversation.give_up(events).await;
        }
    }
}

/// A parsed input line.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Say(Option<u32>, String),
    Chats,
    End(Option<u32>),
    Block(Option<u32>),
    Transfer(Option<u32>, TransferTarget),
    Available(bool),
    Capacity(u8),
    Help,
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

struct Counsellor {
    relay: RelayStream,
    keys: CounsellorKeys,
    events: mpsc::Sender<ChatEvent>,
    /// Open chats by the number shown to the counsellor.
    slots: BTreeMap<u32, Slot>,
    next_shown: u32,
    /// Chats asked back with RESUME, oldest first; answers come in order.
    resuming: std::collections::VecDeque<u32>,
    available: bool,
    capacity: u8,
    topics: Vec<TopicId>,
    languages: Vec<Language>,
}

impl Counsellor {
    async fn error(&self, message: impl Into<String>) {
        emit(&self.events, ChatEvent::error(message)).await;
    }

    /// Ends every open chat here, for `reason`: what was not confirmed is
    /// reported not delivered.
    async fn end_all(&mut self, reason: EndedReason) {
        let slots = std::mem::take(&mut self.slots);
        for (shown, slot) in slots {
            slot.give_up(&self.events).await;
            emit(&self.events, ChatEvent::ended(reason, Some(shown))).await;
        }
        self.resuming.clear();
    }

    /// Sends what each chat's pacer allows now.
    async fn flush(&mut self) -> Result<(), ClientError> {
        for slot in self.slots.values_mut() {
            if let Some(c) = slot.conversation() {
                c.flush(&mut self.relay, &self.events).await?;
            }
        }
        Ok(())
    }

    /// When a chat's pacer has more to send.
    fn next_flush(&mut self) -> Option<tokio::time::Instant> {
        self.slots
            .values_mut()
            .filter_map(|s| s.conversation().and_then(Conversation::next_flush))
            .min()
    }

    async fn send_status(&mut self) -> Result<(), ClientError> {
        self.relay
            .send(&Frame::Status {
                available: self.available,
                capacity: self.capacity,
                topics: self.topics.clone(),
                languages: self.languages.clone(),
            })
            .await?;
        emit(
            &self.events,
            ChatEvent::Status {
                available: self.available,
                capacity: self.capacity,
            },
        )
        .await;
        Ok(())
    }

    /// The number shown for the relay's chat `chat`.
    fn shown(&self, chat: ChatNumber) -> Option<u32> {
        self.slots
            .iter()
            .find(|(_, s)| s.chat == chat)
            .map(|(n, _)| *n)
    }

    /// The chat a command means: the one named, or the only one open.
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

    /// Ends a chat once what we sent in it is confirmed (or after a short
    /// wait), so that its last messages are not reported undelivered just
    /// because the young person's acknowledgement was still on its way.
    fn end_when_confirmed(&mut self, shown: u32) {
        if let Some(slot) = self.slots.get_mut(&shown) {
            slot.ending
                .get_or_insert(tokio::time::Instant::now() + 3 * chat::ACK_INTERVAL);
        }
    }

    /// Ends the chats whose wait for confirmations is over.
    async fn end_confirmed(&mut self) -> Result<(), ClientError> {
        let now = tokio::time::Instant::now();
        let due: Vec<u32> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                s.ending.is_some_and(|deadline| {
                    let waiting =
                        matches!(&s.state, SlotState::Chatting(c, _) if c.has_unacked_messages());
                    !waiting || now >= deadline
                })
            })
            .map(|(n, _)| *n)
            .collect();
        for n in due {
            self.end(n, EndReason::UserEnded).await?;
        }
        Ok(())
    }

    async fn handle_frame(&mut self, frame: Frame) -> Result<(), ClientError> {
        match frame {
            Frame::Paired {
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
                emit(
                    &self.events,
                    ChatEvent::Paired {
                        counsellor: None,
                        chat: Some(shown),
                        topic: topic.map(TopicId::get),
                        language: language.map(|l| l.as_str().to_owned()),
                    },
                )
                .await;
            }
            Frame::Forward { chat, blob } => {
                // A chat this side already ended or aborted: frames sent
                // before our END crossed it are dropped (§7.2).
                let Some(shown) = self.shown(chat) else {
                    return Ok(());
                };
                let Some(slot) = self.slots.get_mut(&shown) else {
                    return Ok(());
                };
                let result = match &mut slot.state {
                    SlotState::AwaitingHandshake(pairing_id) => {
                        match e2e::counsellor_respond(&self.keys, pairing_id, &blob, &mut OsRng) {
                            Ok((session, reply)) => {
                                slot.state = SlotState::Chatting(
                                    Box::new(Conversation::new(chat, session, Some(shown))),
                                    Some((blob.clone(), reply.clone())),
                                );
                                self.relay
                                    .send(&Frame::Forward { chat, blob: reply })
                                    .await?;
                                emit(&self.events, ChatEvent::Ready { chat: shown }).await;
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    }
                    SlotState::Chatting(_, Some((hello, reply))) if *hello == blob => {
                        let reply = reply.clone();
                        self.relay
                            .send(&Frame::Forward { chat, blob: reply })
                            .await?;
                        Ok(())
                    }
                    SlotState::Chatting(conversation, replay) => {
                        let received = conversation.receive(&blob, &self.events).await;
                        if received.is_ok() {
                            *replay = None;
                        }
                        received
                    }
                };
                if let Err(e) = result {
                    if let Some(slot) = self.slots.remove(&shown) {
                        slot.give_up(&self.events).await;
                    }
                    chat::abort(&mut self.relay, chat).await;
                    emit(
                        &self.events,
                        ChatEvent::Ended {
                            reason: EndedReason::SecurityFailure,
                            chat: Some(shown),
                            detail: Some(e.to_string()),
                        },
                    )
                    .await;
                }
            }
            Frame::End { chat, reason } => {
                if let Some(shown) = self.shown(chat)
                    && let Some(slot) = self.slots.remove(&shown)
                {
                    slot.give_up(&self.events).await;
                    emit(
                        &self.events,
                        ChatEvent::ended(EndedReason::from_wire(reason), Some(shown)),
                    )
                    .await;
                }
            }
            Frame::TransferRefused { chat, reason } => {
                let shown = self.shown(chat).unwrap_or(chat.get());
                emit(
                    &self.events,
                    ChatEvent::TransferRefused {
                        chat: shown,
                        reason: reason.as_str().into(),
                    },
                )
                .await;
            }
            Frame::QueueStats { waiting } => {
                let waiting = waiting
                    .into_iter()
                    .map(|(topic, count)| Waiting {
                        topic: topic.map(TopicId::get),
                        count,
                    })
                    .collect();
                emit(&self.events, ChatEvent::QueueStats { waiting }).await;
            }
            Frame::Colleague { name, presence } => {
                emit(&self.events, chat::colleague_event(&name, presence)).await;
            }
            Frame::Resumed { chat } => {
                let Some(shown) = self.resuming.pop_front() else {
                    return Err(ClientError::UnexpectedFrame);
                };
                if let Some(slot) = self.slots.get_mut(&shown) {
                    slot.chat = chat;
                    if let Some(conversation) = slot.conversation() {
                        conversation.set_chat(chat);
                        conversation.resend();
                    }
                    emit(&self.events, ChatEvent::Resumed { chat: Some(shown) }).await;
                    self.flush().await?;
                }
            }
            Frame::ResumeFailed => {
                let Some(shown) = self.resuming.pop_front() else {
                    return Err(ClientError::UnexpectedFrame);
                };
                if let Some(slot) = self.slots.remove(&shown) {
                    slot.give_up(&self.events).await;
                    emit(
                        &self.events,
                        ChatEvent::ended(EndedReason::EndedWhileAway, Some(shown)),
                    )
                    .await;
                }
            }
            Frame::PeerAway { chat } => {
                if let Some(shown) = self.shown(chat) {
                    emit(&self.events, ChatEvent::PeerAway { chat: Some(shown) }).await;
                }
            }
            Frame::PeerBack { chat } => {
                if let Some(shown) = self.shown(chat) {
                    if let Some(conversation) =
                        self.slots.get_mut(&shown).and_then(Slot::conversation)
                    {
                        conversation.resend();
                    }
                    emit(&self.events, ChatEvent::PeerBack { chat: Some(shown) }).await;
                    self.flush().await?;
                }
            }
            _ => return Err(ClientError::UnexpectedFrame),
        }
        Ok(())
    }

    async fn end(&mut self, shown: u32, reason: EndReason) -> Result<(), ClientError> {
        let Some(mut slot) = self.slots.remove(&shown) else {
            return Ok(());
        };
        if let Some(conversation) = slot.conversation() {
            // Confirm what arrived before saying goodbye.
            conversation.ack_if_owed()?;
            conversation.flush(&mut self.relay, &self.events).await?;
        }
        let chat = slot.chat;
        slot.give_up(&self.events).await;
        self.relay.send(&Frame::End { chat, reason }).await?;
        let said = if reason == EndReason::Blocked {
            EndedReason::YouBlocked
        } else {
            EndedReason::YouEnded
        };
        emit(&self.events, ChatEvent::ended(said, Some(shown))).await;
        Ok(())
    }

    /// The connection dropped (or the relay is restarting): reconnect, sign
    /// in again, and ask for every chat back, those still in their
    /// handshake too. A sign-in that cannot succeed ends everything at once.
    async fn reconnect(
        &mut self,
        reconnect: &Reconnect,
        reason: ReconnectReason,
    ) -> Result<(), ClientError> {
        emit(&self.events, ChatEvent::Reconnecting { reason }).await;
        let deadline = tokio::time::Instant::now() + reconnect.give_up_after;
        loop {
            match self.try_reconnect(reconnect).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_final() => return Err(e),
                // A network that failed again mid-way: try again in time.
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_reconnect(&mut self, reconnect: &Reconnect) -> Result<(), ClientError> {
        let mut relay = reconnect.connect().await?;
        chat::hello(&mut relay, Role::Counsellor).await?;
        self.relay = relay;
        self.send_status().await?;
        self.resuming.clear();
        let shown: Vec<u32> = self.slots.keys().copied().collect();
        for n in shown {
            let Some(slot) = self.slots.get(&n) else {
                continue;
            };
            let capability = slot.resume;
            self.relay.send(&Frame::Resume { capability }).await?;
            self.resuming.push_back(n);
        }
        Ok(())
    }

    async fn handle_line(&mut self, line: &str) -> Result<(), ClientError> {
        let command = match parse(line) {
            Ok(c) => c,
            Err(message) => {
                self.error(message).await;
                return Ok(());
            }
        };
        match command {
            Command::Help => {
                emit(
                    &self.events,
                    ChatEvent::Help {
                        commands: HELP.iter().map(|s| s.to_string()).collect(),
                    },
                )
                .await
            }
            Command::Chats => {
                let chats = self.slots.keys().copied().collect();
                emit(&self.events, ChatEvent::Chats { chats }).await
            }
            Command::Available(available) => {
                self.available = available;
                self.send_status().await?;
            }
            Command::Capacity(n) => {
                self.capacity = n;
                self.send_status().await?;
            }
            Command::Say(chat, text) => match self.pick(chat) {
                Ok(n) => {
                    let Some(slot) = self.slots.get_mut(&n) else {
                        return Ok(());
                    };
                    if !matches!(slot.state, SlotState::Chatting(..)) {
                        self.error(format!(
                            "@{n}: the young person is not connected yet; the line was not sent"
                        ))
                        .await;
                        return Ok(());
                    }
                    let id = slot.next_id;
                    slot.next_id += 1;
                    let Some(conversation) = slot.conversation() else {
                        return Ok(());
                    };
                    match conversation.queue(id, &text) {
                        Ok(()) => conversation.flush(&mut self.relay, &self.events).await?,
                        Err(refused) => {
                            emit(&self.events, ChatEvent::NotDelivered { id, chat: Some(n) }).await;
                            self.error(match refused {
                                Refused::TooLong => ClientError::MessageTooLong.to_string(),
                                Refused::Full => "too many messages are waiting for delivery; \
                                                  this one was not sent, try again shortly"
                                    .into(),
                            })
                            .await;
                        }
                    }
                }
                Err(message) => {
                    self.error(format!("{message}; the line was not sent"))
                        .await
                }
            },
            Command::End(chat) | Command::Block(chat) => {
                let reason = if matches!(command, Command::Block(_)) {
                    EndReason::Blocked
                } else {
                    EndReason::UserEnded
                };
                match (self.pick(chat), reason) {
                    // Blocking is at once: an abusive chat gets nothing more.
                    (Ok(n), EndReason::Blocked) => self.end(n, reason).await?,
                    (Ok(n), _) => {
                        self.end_when_confirmed(n);
                        self.end_confirmed().await?;
                    }
                    (Err(message), _) => self.error(message).await,
                }
            }
            Command::Transfer(chat, target) => match self.pick(chat) {
                // The slot stays until the relay confirms with END(TRANSFERRED)
                // or refuses; a refused chat carries on as it was.
                Ok(n) => {
                    let chat = self.slots[&n].chat;
                    self.relay.send(&Frame::Transfer { chat, target }).await?
                }
                Err(message) => self.error(message).await,
            },
        }
        Ok(())
    }
}

/// Runs the counsellor role: takes chats until input ends.
pub async fn run_counsellor(
    mut relay: RelayStream,
    keys: CounsellorKeys,
    settings: CounsellorSettings,
    mut input: mpsc::Receiver<String>,
    events: mpsc::Sender<ChatEvent>,
) -> Result<(), ClientError> {
    let welcome = chat::hello(&mut relay, Role::Counsellor).await?;
    let topics = match &settings.topics {
        None => Vec::new(),
        Some(ids) => ids
            .iter()
            .map(|id| {
                welcome
                    .topics
                    .iter()
                    .find(|(t, _, _)| t.get() == *id)
                    .map(|(t, _, _)| *t)
                    .ok_or_else(|| ClientError::Request(format!("the relay offers no topic {id}")))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let languages = match &settings.languages {
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
    emit(&events, welcome.event()).await;
    let mut me = Counsellor {
        relay,
        keys,
        events,
        slots: BTreeMap::new(),
        next_shown: 1,
        resuming: Default::default(),
        available: settings.available,
        capacity: settings.capacity.max(1),
        topics,
        languages,
    };
    let outcome = me.run(&settings, &mut input).await;
    if let Err(e) = &outcome {
        // Whatever ended the session ends every chat still open, honestly.
        let reason = match e {
            ClientError::Closed(CloseCode::Revoked) => EndedReason::Revoked,
            e if e.is_final() => EndedReason::SignedOut,
            _ => EndedReason::EndedWhileAway,
        };
        me.end_all(reason).await;
    }
    outcome
}

impl Counsellor {
    async fn run(
        &mut self,
        settings: &CounsellorSettings,
        input: &mut mpsc::Receiver<String>,
    ) -> Result<(), ClientError> {
        self.send_status().await?;
        let mut ack_tick = tokio::time::interval(chat::ACK_INTERVAL);
        ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut signing_out = false;
        let mut quick_exit = settings.quick_exit.clone();
        loop {
            let flush_at = self.next_flush();
            let step: Result<(), ClientError> = tokio::select! {
                _ = ack_tick.tick() => {
                    let mut owed = Ok(());
                    for slot in self.slots.values_mut() {
                        if let Some(conversation) = slot.conversation()
                            && let Err(e) = conversation.ack_if_owed()
                        {
                            owed = Err(e);
                        }
                    }
                    match owed {
                        Ok(()) => match self.flush().await {
                            Ok(()) => self.end_confirmed().await,
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    }
                }
                _ = async { tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)).await }, if flush_at.is_some() => {
                    self.flush().await
                }
                frame = self.relay.next() => match frame {
                    Ok(Some(frame)) => self.handle_frame(frame).await,
                    Ok(None) => Err(ClientError::Lost("the relay ended the stream".into())),
                    Err(e) => Err(e),
                },
                line = input.recv(), if !signing_out => {
                    match line {
                        // Sign out: every chat ends once what was sent in it is
                        // confirmed (or after the short wait).
                        None => {
                            signing_out = true;
                            // No new chats from now on.
                            self.available = false;
                            self.send_status().await
                        }
                        Some(line) => self.handle_line(&line).await,
                    }
                }
                _ = async { quick_exit.as_mut()?.wait_for(|exit| *exit).await.ok().map(|_| ()) }, if quick_exit.is_some() => {
                    self.relay.quick_exit().await;
                    self.end_all(EndedReason::YouEnded).await;
                    return Ok(());
                }
            };
            if signing_out {
                // Every chat, one that was paired just before the relay heard
                // we were leaving too.
                let open: Vec<u32> = self.slots.keys().copied().collect();
                for n in open {
                    self.end_when_confirmed(n);
                }
                self.end_confirmed().await?;
                if self.slots.is_empty() {
                    self.relay.leave().await;
                    return Ok(());
                }
            }
            match (step, settings.reconnect.as_ref()) {
                (Ok(()), _) => {}
                (Err(e), _) if e.is_final() => return Err(e),
                // The relay is restarting: its chats have ended (END
                // RELAY_SHUTDOWN); sign in again when it is back.
                (Err(ClientError::Closed(CloseCode::ShuttingDown)), Some(reconnect)) => {
                    self.end_all(EndedReason::RelayShutdown).await;
                    self.reconnect(reconnect, ReconnectReason::RelayRestarting)
                        .await?;
                }
                // The connection is gone, whichever step noticed: resume.
                (Err(_), Some(reconnect)) => {
                    self.reconnect(reconnect, ReconnectReason::Lost).await?;
                }
                (Err(e), None) => return Err(e),
            }
        }
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
