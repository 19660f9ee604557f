//! Several relays in one process that share one queue (feature
//! `test-support`): the shape of a router shared between relays, without
//! the network, so that chats whose two sides are on different relays can
//! be tested on the virtual clock.
//!
//! [`Linked`] holds the cluster's queue, a [`Leader`], for every relay,
//! and an inbox per relay. Each relay's [`LinkedRouter`] hands its
//! commands to the leader and, when polled, runs the leader and sorts what
//! it says into the inboxes (see `leader.rs` for who hears what). A
//! [`RouteCommand::Deliver`], which in a cluster goes from relay to relay,
//! goes here to the inbox of the relay where the side lives; `Linked`
//! learns where sides are from the halves the leader pairs, from
//! [`PeerMessage::Moved`] and from handovers, and forgets a chat's sides
//! at its END. An inbox with events makes its relay's `poll_timeout` due,
//! the way a message from the network would wake a relay.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::leader::Leader;
use super::{Handed, PeerMessage, RouteCommand, RouteEvent, Router, SideKey};
use crate::core::frame::{PairingId, Role, TopicId};
use crate::core::pairing::QueueView;
use crate::core::ratelimit::SourceTag;

/// The queue and inboxes that several in-process relays share.
#[derive(Clone)]
pub struct Linked {
    shared: Arc<Mutex<Shared>>,
}

struct Shared {
    leader: Leader,
    /// How long every event takes to reach its relay.
    latency: Duration,
    /// Every relay's events, each with the instant it was produced.
    inboxes: HashMap<u16, VecDeque<(Instant, RouteEvent)>>,
    /// Where each chat side of a pair across relays lives.
    sides: HashMap<SideKey, u16>,
    /// Which relay says it hosts which side ([`RouteCommand::HostSide`]):
    /// what a cluster subscribes to, checked against `sides` by tests.
    hosted: HashMap<SideKey, u16>,
}

impl Linked {
    pub fn new(topic_fallback: Duration) -> Self {
        Linked::with_latency(topic_fallback, Duration::ZERO)
    }

    /// Relays whose events each take `latency` to arrive: answers come
    /// late, and messages between two sides of a chat cross.
    pub fn with_latency(topic_fallback: Duration, latency: Duration) -> Self {
        let mut counted = 0u64;
        let pairing_ids = Box::new(move || {
            counted += 1;
            let mut id = [0x5a; 16];
            id[..8].copy_from_slice(&counted.to_be_bytes());
            PairingId(id)
        });
        Linked {
            shared: Arc::new(Mutex::new(Shared {
                leader: Leader::new(
                    topic_fallback,
                    crate::core::limits::Limits::default().resume_window,
                    pairing_ids,
                ),
                latency,
                inboxes: HashMap::new(),
                sides: HashMap::new(),
                hosted: HashMap::new(),
            })),
        }
    }

    /// The router of relay number `node`.
    pub fn router(&self, node: u16) -> LinkedRouter {
        let mut shared = self.lock();
        shared.inboxes.entry(node).or_default();
        shared.leader.join(node);
        drop(shared);
        LinkedRouter {
            node,
            linked: self.clone(),
            given: Vec::new(),
            last_poll: None,
        }
    }

    /// Relay `node` died: the leader hands over what it held from now on.
    /// Its inbox is dropped.
    pub fn relay_died(&self, node: u16, now: Instant) {
        let mut shared = self.lock();
        shared.inboxes.remove(&node);
        shared.sides.retain(|_, at| *at != node);
        shared.hosted.retain(|_, at| *at != node);
        shared.leader.leave(node, now);
        shared.run(now);
    }

    /// The sides relay `node` says it hosts, in key order.
    pub fn hosted_by(&self, node: u16) -> Vec<SideKey> {
        let shared = self.lock();
        let mut sides: Vec<SideKey> = (shared.hosted.iter())
            .filter(|(_, at)| **at == node)
            .map(|(side, _)| *side)
            .collect();
        sides.sort_unstable_by_key(|s| (s.pairing.0, s.role.to_byte()));
        sides
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Shared {
    fn push(&mut self, node: u16, now: Instant, event: RouteEvent) {
        let at = now + self.latency;
        self.inboxes.entry(node).or_default().push_back((at, event));
    }

    fn command(&mut self, node: u16, now: Instant, command: RouteCommand) {
        match &command {
            RouteCommand::Deliver { to, message } => {
                let Some(&at) = self.sides.get(to).or_else(|| self.hosted.get(to)) else {
                    // The chat is over: its sides are forgotten.
                    return;
                };
                match message {
                    PeerMessage::End(_) | PeerMessage::Refused => {
                        self.sides.remove(to);
                        self.sides.remove(&to.other());
                    }
                    PeerMessage::Moved { pairing } => {
                        self.sides.remove(to);
                        self.sides.remove(&to.other());
                        let client = SideKey {
                            pairing: *pairing,
                            role: Role::Client,
                        };
                        self.sides.insert(client, at);
                        self.sides.insert(client.other(), node);
                    }
                    PeerMessage::Forward(_) | PeerMessage::Away | PeerMessage::Back => {}
                }
                let delivered = RouteEvent::Delivered {
                    to: *to,
                    message: message.clone(),
                };
                self.push(at, now, delivered);
                return;
            }
            RouteCommand::HostSide { side } => {
                self.hosted.insert(*side, node);
            }
            RouteCommand::LeaveSide { side } if self.hosted.get(side) == Some(&node) => {
                self.hosted.remove(side);
            }
            // A side handed over leaves its peer (if it was here) behind.
            RouteCommand::HandOver {
                handed: Some(Handed::Side(side)),
                ..
            } => {
                self.sides.entry(side.peer).or_insert(node);
            }
            _ => {}
        }
        self.leader.command(node, now, command);
    }

    /// Runs the shared queue and sorts what it says into the inboxes,
    /// noting where the sides of new chats are.
    fn run(&mut self, now: Instant) {
        while let Some((node, event)) = self.leader.poll_event(now) {
            match &event {
                RouteEvent::PairedRemote { pairing, role, .. } => {
                    let side = SideKey {
                        pairing: *pairing,
                        role: *role,
                    };
                    self.sides.insert(side, node);
                }
                RouteEvent::HandedOver {
                    handed: Some(Handed::Side(side)),
                    ..
                } => {
                    self.sides.insert(side.key, node);
                }
                RouteEvent::TransferIn { pairing, .. } => {
                    let side = SideKey {
                        pairing: *pairing,
                        role: Role::Counsellor,
                    };
                    self.sides.insert(side, node);
                }
                _ => {}
            }
            self.push(node, now, event);
        }
    }
}

/// One relay's handle on a [`Linked`] queue.
pub struct LinkedRouter {
    node: u16,
    linked: Linked,
    /// Commands given since the last poll: they reach the shared router,
    /// stamped with the time, at the next poll (which is due at once).
    given: Vec<RouteCommand>,
    last_poll: Option<Instant>,
}

impl Router for LinkedRouter {
    fn handle_command(&mut self, command: RouteCommand) {
        self.given.push(command);
    }

    fn poll_event(&mut self, now: Instant) -> Option<RouteEvent> {
        self.last_poll = Some(now);
        let mut shared = self.linked.lock();
        for command in self.given.drain(..) {
            shared.command(self.node, now, command);
        }
        shared.run(now);
        let inbox = shared.inboxes.entry(self.node).or_default();
        match inbox.front() {
            Some((at, _)) if *at <= now => inbox.pop_front().map(|(_, event)| event),
            _ => None,
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let shared = self.linked.lock();
        let inbox = shared.inboxes.get(&self.node).and_then(|i| i.front());
        let given = self.last_poll.filter(|_| !self.given.is_empty());
        [
            inbox.map(|(at, _)| *at),
            shared.leader.poll_timeout(),
            given,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn view(&self) -> &dyn QueueView {
        self
    }
}

/// The shared queue's counts, read under the lock (without the commands
/// given since the last poll).
impl QueueView for LinkedRouter {
    fn waiting_count(&self) -> usize {
        self.linked.lock().leader.view().waiting_count()
    }
    fn newcomers_waiting(&self) -> usize {
        self.linked.lock().leader.view().newcomers_waiting()
    }
    fn waiting_from(&self, source: SourceTag) -> usize {
        self.linked.lock().leader.view().waiting_from(source)
    }
    fn waiting_per_topic(&self) -> Vec<(Option<TopicId>, usize)> {
        self.linked.lock().leader.view().waiting_per_topic()
    }
}
