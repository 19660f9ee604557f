//! One established chat, the same for both roles: the end-to-end session,
//! reassembly of what comes in, and the delivery bookkeeping of what goes
//! out (PROTOCOL.md §6 and §8.1).
//!
//! A line is split, sealed and kept until the peer's cumulative ACK covers
//! it ([`Conversation::queue`]); sealed blobs leave through a pacer that
//! follows the spec's sending rule, so the relay never has to slow this
//! sender down ([`Conversation::flush`]). After a resume, or when the peer
//! is back, everything unacknowledged goes out again in sequence order
//! ([`Conversation::resend`]); when the chat ends, what was never confirmed
//! is reported not delivered ([`Conversation::give_up`]). Time comes in as
//! an argument; frames and events go out through the [`Link`].

use std::collections::VecDeque;
use std::time::Instant;

use super::link::{ACK_INTERVAL, Link};
use crate::client::chat::ChatEvent;
use crate::core::frame::{Blob, ChatNumber, ToRelay};
use crate::core::limits::{
    MAX_ACK_LOG, MAX_UNACKED_FRAMES, PACE_FORWARD_BURST, PACE_FORWARD_PER_SEC,
};
use crate::core::ratelimit::TokenBucket;
use crate::crypto::content::{Content, ContentError, Reassembler, split_text};
use crate::crypto::e2e::{E2eError, Received, Session};

/// Why a message could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Longer than the protocol allows.
    TooLong,
    /// Too much is waiting for acknowledgement already.
    Full,
}

impl Refused {
    /// What the user is told; the message itself is reported not delivered.
    pub fn text(self) -> String {
        match self {
            Refused::TooLong => crate::client::ClientError::MessageTooLong.to_string(),
            Refused::Full => "too many messages are waiting for delivery; \
                              this one was not sent, try again shortly"
                .into(),
        }
    }
}

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

/// One established chat.
pub struct Conversation {
    chat: ChatNumber,
    /// The chat number as shown to the user (counsellors see it; the young
    /// person, who has one chat, does not).
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
    /// The tick on which the owed acknowledgement goes out.
    ack_at: Option<Instant>,
    /// The handshake message that opened this chat, until the first
    /// transport message: a repeat of it (after the peer was away) is not
    /// a transport message and is ignored.
    handshake_echo: Option<Blob>,
}

impl Conversation {
    pub fn new(now: Instant, chat: ChatNumber, session: Session, shown: Option<u32>) -> Self {
        Conversation {
            chat,
            shown,
            session,
            reassembler: Reassembler::default(),
            unacked: Default::default(),
            acks_sent: Default::default(),
            outbox: Default::default(),
            pacer: TokenBucket::new(PACE_FORWARD_PER_SEC, PACE_FORWARD_BURST, now),
            owe_ack: false,
            ack_at: None,
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

    /// Sends what the pacer allows now and reports each message whose last
    /// chunk left as sent. Without a connection nothing leaves: the resume
    /// sends everything unacknowledged again.
    pub fn flush(&mut self, now: Instant, link: &mut Link) {
        while link.is_open() && !self.outbox.is_empty() && self.pacer.take(now, 1.0) {
            let Some(out) = self.outbox.pop_front() else {
                break;
            };
            link.send(ToRelay::Forward {
                chat: self.chat,
                blob: out.blob,
            });
            if let Some(id) = out.completes
                && let Some(p) = self.unacked.iter_mut().find(|p| p.id == id)
                && !p.announced
            {
                p.announced = true;
                link.emit(ChatEvent::Sent {
                    id,
                    chat: self.shown,
                });
            }
        }
    }

    /// When [`Conversation::flush`] has more to send, if anything waits.
    pub fn next_flush(&mut self, now: Instant) -> Option<Instant> {
        if self.outbox.is_empty() {
            return None;
        }
        Some(self.pacer.ready_at(now, 1.0))
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
    pub fn receive(&mut self, now: Instant, blob: &Blob, link: &mut Link) -> Result<(), E2eError> {
        let received = self.open(blob, link);
        if self.owe_ack && self.ack_at.is_none() {
            self.ack_at = Some(link.clock.next_tick(now, ACK_INTERVAL));
        }
        received
    }

    fn open(&mut self, blob: &Blob, link: &mut Link) -> Result<(), E2eError> {
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
                        link.emit(ChatEvent::Delivered {
                            id: p.id,
                            chat: self.shown,
                        });
                    }
                }
            }
            Received::Content(Content::Unknown(_)) => self.owe_ack = true,
            Received::Content(chunk) => {
                self.owe_ack = true;
                if let Some(text) = self.reassembler.push(chunk)? {
                    link.emit(ChatEvent::Message {
                        text,
                        chat: self.shown,
                    });
                }
            }
        }
        Ok(())
    }

    /// Sends the owed acknowledgement when its tick has come, and what
    /// the pacer allows.
    pub fn handle_timeout(&mut self, now: Instant, link: &mut Link) {
        if self.ack_at.is_some_and(|at| now >= at) {
            self.ack_if_owed();
        }
        self.flush(now, link);
    }

    /// When [`Conversation::handle_timeout`] has work: the ack tick, or
    /// the pacer. Without a connection to send on there is none: what is
    /// owed goes out after the resume.
    pub fn poll_timeout(&mut self, now: Instant, connected: bool) -> Option<Instant> {
        if !connected {
            return None;
        }
        [self.ack_at, self.next_flush(now)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Queues an acknowledgement if anything arrived since the last one.
    pub fn ack_if_owed(&mut self) {
        if !self.owe_ack {
            return;
        }
        let seq = self.session.next_seq();
        // Sealing fails only when 2^64 - 1 messages were sent; the ACK is
        // then owed still, and the chat cannot go on anyway.
        let Ok(blob) = self.session.seal(&Content::Ack {
            up_to: self.session.received(),
        }) else {
            return;
        };
        self.owe_ack = false;
        self.ack_at = None;
        if self.acks_sent.len() >= MAX_ACK_LOG {
            self.acks_sent.pop_front();
        }
        self.acks_sent.push_back((seq, blob.clone()));
        self.outbox.push_back(Outgoing {
            blob,
            completes: None,
        });
    }

    /// The chat is over: every message not acknowledged is reported as not
    /// delivered, so nothing is lost without the sender knowing.
    pub fn give_up(self, link: &mut Link) {
        for p in self.unacked {
            link.emit(ChatEvent::NotDelivered {
                id: p.id,
                chat: self.shown,
            });
        }
    }

    /// Whether a sent message still waits for its acknowledgement.
    pub fn has_unacked_messages(&self) -> bool {
        !self.unacked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::machine::link::Clock;
    use crate::core::frame::PairingId;
    use crate::crypto::e2e::{ClientHandshake, counsellor_respond, test_counsellor_keys};
    use rand_core::SeedableRng;
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

    fn link(now: Instant) -> Link {
        Link::new(
            Clock::new(now, 1_000),
            rand_chacha::ChaCha20Rng::seed_from_u64(7),
            None,
        )
    }

    #[test]
    fn content_that_breaks_the_rules_is_a_security_failure() {
        let now = Instant::now();
        let mut out = link(now);
        // An ACK of messages never sent.
        let (mut sender, counsellor) = sessions();
        let mut conversation = Conversation::new(now, ChatNumber::FIRST, counsellor, None);
        let ack = sender.seal(&Content::Ack { up_to: 1 }).unwrap();
        assert_eq!(
            conversation.receive(now, &ack, &mut out),
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
            let mut conversation = Conversation::new(now, ChatNumber::FIRST, counsellor, None);
            let blob = sender.seal_unchecked(&bytes).unwrap();
            assert_eq!(
                conversation.receive(now, &blob, &mut out),
                Err(E2eError::Content(error)),
                "{bytes:?}"
            );
        }
        // A message longer than 16 384 bytes, in chunks that are each fine.
        let (mut sender, counsellor) = sessions();
        let mut conversation = Conversation::new(now, ChatNumber::FIRST, counsellor, None);
        let chunk = "x".repeat(1004);
        let mut result = Ok(());
        for _ in 0..17 {
            let blob = sender
                .seal(&Content::Text {
                    last: false,
                    text: chunk.clone(),
                })
                .unwrap();
            result = conversation.receive(now, &blob, &mut out);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(E2eError::Content(ContentError::TooLong)));
    }

    #[test]
    fn an_ack_up_to_what_was_sent_is_fine_and_delivers() {
        let now = Instant::now();
        let mut out = link(now);
        let (mut client, counsellor) = sessions();
        let mut conversation = Conversation::new(now, ChatNumber::FIRST, counsellor, None);
        conversation.queue(1, "hallo").unwrap();
        let ack = client.seal(&Content::Ack { up_to: 1 }).unwrap();
        conversation.receive(now, &ack, &mut out).unwrap();
        assert_eq!(
            out.poll_event(),
            Some(ChatEvent::Delivered { id: 1, chat: None })
        );
    }

    #[test]
    fn the_send_buffer_refuses_past_its_limit_and_never_loses_silently() {
        let (client, _) = sessions();
        let mut conversation = Conversation::new(Instant::now(), ChatNumber::FIRST, client, None);
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
}
