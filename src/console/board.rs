//! What a page that opens now must be told: the console's state as the
//! events that made it, kept in memory while it matters.
//!
//! The counsellor's events flow through the board on their way to the
//! page. It keeps the last word on the sign-in (what the relay offers, the
//! status, a reconnect or a fatal error), the queue's counts, each
//! colleague's presence, the case coding form and how many codings wait,
//! and every event of each open chat with the time it came. A page that opens (or reloads) gets them replayed, each with its
//! age, and builds the same view as one that saw them live. When a chat
//! ends, its events are dropped and the texts in them overwritten: nothing
//! of a chat outlives it here.

use std::collections::BTreeMap;
use std::time::Instant;

use zeroize::Zeroize;

use crate::client::chat::{ChatEvent, EVENTS_VERSION};
use crate::core::frame::Presence;

/// The console's state, as events.
#[derive(Default)]
pub struct Board {
    connected: Option<Kept>,
    status: Option<Kept>,
    /// A reconnect under way, or the error that ended the console.
    link: Option<Kept>,
    queue: Option<Kept>,
    colleagues: BTreeMap<String, Kept>,
    chats: BTreeMap<u32, Vec<Kept>>,
    /// The case coding form, and how many codings wait to be sent.
    form: Option<Kept>,
    coded: Option<Kept>,
}

struct Kept {
    at: Instant,
    event: ChatEvent,
}

impl Drop for Kept {
    fn drop(&mut self) {
        match &mut self.event {
            ChatEvent::Said { text, .. } | ChatEvent::Message { text, .. } => text.zeroize(),
            _ => {}
        }
    }
}

/// The chat an event belongs to, for a counsellor's events.
fn chat_of(event: &ChatEvent) -> Option<u32> {
    match event {
        ChatEvent::Paired { chat, .. }
        | ChatEvent::Resumed { chat }
        | ChatEvent::PeerAway { chat }
        | ChatEvent::PeerBack { chat }
        | ChatEvent::Sent { chat, .. }
        | ChatEvent::Delivered { chat, .. }
        | ChatEvent::NotDelivered { chat, .. }
        | ChatEvent::Message { chat, .. }
        | ChatEvent::Ended { chat, .. } => *chat,
        ChatEvent::Ready { chat }
        | ChatEvent::Said { chat, .. }
        | ChatEvent::TransferRefused { chat, .. } => Some(*chat),
        _ => None,
    }
}

impl Board {
    /// Takes in one event, as it goes to the page.
    pub fn apply(&mut self, at: Instant, event: &ChatEvent) {
        let kept = || Kept {
            at,
            event: event.clone(),
        };
        match event {
            ChatEvent::Ended { chat: Some(n), .. } => {
                self.chats.remove(n);
            }
            ChatEvent::Connected { .. } => self.connected = Some(kept()),
            // A status comes with every sign-in, the first and each after
            // a reconnect.
            ChatEvent::Status { .. } => {
                self.status = Some(kept());
                self.link = None;
            }
            ChatEvent::Reconnecting { .. } => self.link = Some(kept()),
            ChatEvent::Error { fatal: true, .. } => self.link = Some(kept()),
            ChatEvent::QueueStats { .. } => self.queue = Some(kept()),
            ChatEvent::Form { .. } => self.form = Some(kept()),
            ChatEvent::Coded { .. } => self.coded = Some(kept()),
            ChatEvent::Colleague { name, presence } => {
                if *presence == Presence::SignedOut {
                    self.colleagues.remove(name);
                } else {
                    self.colleagues.insert(name.clone(), kept());
                }
            }
            _ => {
                if let Some(n) = chat_of(event)
                    && (matches!(event, ChatEvent::Paired { .. }) || self.chats.contains_key(&n))
                {
                    self.chats.entry(n).or_default().push(kept());
                }
            }
        }
    }

    /// Every kept event, oldest first, as JSON with its age in
    /// milliseconds (`ago_ms`).
    pub fn replay(&self, now: Instant) -> Vec<String> {
        let mut kept: Vec<&Kept> = [
            &self.connected,
            &self.status,
            &self.queue,
            &self.form,
            &self.coded,
        ]
        .into_iter()
        .flatten()
        .chain(self.colleagues.values())
        .chain(self.chats.values().flatten())
        .chain(&self.link)
        .collect();
        kept.sort_by_key(|k| k.at);
        kept.into_iter()
            .map(|k| {
                to_json(
                    &k.event,
                    Some(now.saturating_duration_since(k.at).as_millis() as u64),
                )
            })
            .collect()
    }

    /// The open chats' numbers.
    pub fn open_chats(&self) -> Vec<u32> {
        self.chats.keys().copied().collect()
    }
}

/// An event as the page gets it: the `--json` object, with `ago_ms` when
/// it is replayed.
pub fn to_json(event: &ChatEvent, ago_ms: Option<u64>) -> String {
    let mut value = serde_json::to_value(event).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("v".into(), EVENTS_VERSION.into());
        if let Some(ago) = ago_ms {
            object.insert("ago_ms".into(), ago.into());
        }
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::chat::EndedReason;
    use std::time::Duration;

    #[test]
    fn a_page_opened_late_sees_open_chats_and_nothing_of_ended_ones() {
        let t0 = Instant::now();
        let mut board = Board::default();
        let at = |s| t0 + Duration::from_secs(s);
        board.apply(
            at(0),
            &ChatEvent::Status {
                available: true,
                capacity: 2,
            },
        );
        for chat in [1, 2] {
            board.apply(
                at(chat as u64),
                &ChatEvent::Paired {
                    counsellor: None,
                    chat: Some(chat),
                    topic: Some(1),
                    language: Some("nl".into()),
                },
            );
            board.apply(at(3), &ChatEvent::Ready { chat });
            board.apply(
                at(4),
                &ChatEvent::Message {
                    text: format!("geheim {chat}"),
                    chat: Some(chat),
                },
            );
        }
        board.apply(
            at(5),
            &ChatEvent::Colleague {
                name: "Noor".into(),
                presence: Presence::Available,
            },
        );
        board.apply(at(6), &ChatEvent::ended(EndedReason::PeerEnded, Some(1)));
        board.apply(
            at(7),
            &ChatEvent::Colleague {
                name: "Noor".into(),
                presence: Presence::SignedOut,
            },
        );
        // Events of a chat that is not open are not kept.
        board.apply(
            at(8),
            &ChatEvent::Message {
                text: "laat".into(),
                chat: Some(1),
            },
        );
        let replay = board.replay(at(10)).join("\n");
        assert_eq!(board.open_chats(), [2]);
        assert!(
            replay.contains("geheim 2") && !replay.contains("geheim 1") && !replay.contains("laat")
        );
        assert!(!replay.contains("Noor"));
        assert!(replay.contains(r#""ago_ms":10000"#), "{replay}");
        assert!(
            replay.contains(r#""event":"paired","language":"nl","topic":1"#)
                || replay.contains(r#""chat":2"#)
        );
    }

    #[test]
    fn a_reconnect_shows_until_the_next_sign_in() {
        let t0 = Instant::now();
        let mut board = Board::default();
        board.apply(
            t0,
            &ChatEvent::Reconnecting {
                reason: crate::client::chat::ReconnectReason::Lost,
            },
        );
        assert!(board.replay(t0).join("").contains("reconnecting"));
        board.apply(
            t0,
            &ChatEvent::Status {
                available: true,
                capacity: 1,
            },
        );
        assert!(!board.replay(t0).join("").contains("reconnecting"));
    }
}
