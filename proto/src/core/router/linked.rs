//! Several relays in one process that share one queue (feature
//! `test-support`): the shape of a router shared between relays, without
//! the network, so that chats whose two sides are on different relays can
//! be tested on the virtual clock.
//!
//! [`Linked`] holds one [`LocalRouter`] for every relay, over connection
//! ids qualified by the relay they came from, and an inbox per relay. Each
//! relay's [`LinkedRouter`] hands its commands to the shared router and,
//! when polled, runs the shared router's pass and sorts its events into the
//! inboxes: a pair of two connections of one relay stays a
//! [`RouteEvent::Paired`], a pair across relays becomes two
//! [`RouteEvent::PairedRemote`] halves under a new pairing id, a QUEUED
//! goes to the client's relay and QUEUE_STATS to every relay. A
//! [`RouteCommand::Deliver`] goes to the inbox of the relay where the side
//! lives; the router learns where sides are from the pairs it makes,
//! from [`PeerMessage::Moved`] and from handovers, and forgets a chat's
//! sides at its END. It keeps which relay holds each capability and ticket
//! hash, and sends a [`RouteCommand::Claim`] there and the handover back.
//! An inbox with events makes its relay's `poll_timeout` due, the
//! way a message from the network would wake a relay.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{
    CapHash, ClaimId, Handed, LocalRouter, PeerMessage, Request, RouteCommand, RouteEvent, Router,
    SideKey,
};
use crate::core::frame::{Language, PairingId, Role, TopicId};
use crate::core::pairing::{ConnId, QueueView};
use crate::core::ratelimit::SourceTag;

/// Bits of a qualified connection id that hold the relay's local id.
const LOCAL_BITS: u32 = 48;

/// The queue and inboxes that several in-process relays share.
#[derive(Clone)]
pub struct Linked {
    shared: Arc<Mutex<Shared>>,
}

struct Shared {
    router: LocalRouter,
    /// How long every event takes to reach its relay.
    latency: Duration,
    /// Every relay's events, each with the instant it was produced.
    inboxes: HashMap<u16, VecDeque<(Instant, RouteEvent)>>,
    /// Where each chat side of a pair across relays lives.
    sides: HashMap<SideKey, u16>,
    /// What each waiting client chose, for the counsellor's half.
    choices: HashMap<ConnId, (Option<TopicId>, Option<Language>)>,
    /// Queue turns by the relay and turn they were given with.
    turns: HashMap<(u16, u64), u64>,
    next_turn: u64,
    next_pairing: u64,
    /// Which relay holds each capability and ticket hash.
    holders: HashMap<CapHash, u16>,
    /// Claims on their way: the claiming relay, connection and hash.
    claims: HashMap<ClaimId, (u16, ConnId, CapHash)>,
    next_claim: u64,
}

impl Linked {
    pub fn new(topic_fallback: Duration) -> Self {
        Linked::with_latency(topic_fallback, Duration::ZERO)
    }

    /// Relays whose events each take `latency` to arrive: answers come
    /// late, and messages between two sides of a chat cross.
    pub fn with_latency(topic_fallback: Duration, latency: Duration) -> Self {
        Linked {
            shared: Arc::new(Mutex::new(Shared {
                router: LocalRouter::new(topic_fallback),
                latency,
                inboxes: HashMap::new(),
                sides: HashMap::new(),
                choices: HashMap::new(),
                turns: HashMap::new(),
                next_turn: 0,
                next_pairing: 0,
                holders: HashMap::new(),
                claims: HashMap::new(),
                next_claim: 0,
            })),
        }
    }

    /// The router of relay number `node`.
    pub fn router(&self, node: u16) -> LinkedRouter {
        self.lock().inboxes.entry(node).or_default();
        LinkedRouter {
            node,
            linked: self.clone(),
            given: Vec::new(),
            last_poll: None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn qualify(node: u16, conn: ConnId) -> ConnId {
    ConnId((u64::from(node) << LOCAL_BITS) | conn.0)
}

fn split(conn: ConnId) -> (u16, ConnId) {
    let node = u16::try_from(conn.0 >> LOCAL_BITS).unwrap_or(u16::MAX);
    (node, ConnId(conn.0 & ((1 << LOCAL_BITS) - 1)))
}

impl Shared {
    fn push(&mut self, node: u16, now: Instant, event: RouteEvent) {
        let at = now + self.latency;
        self.inboxes.entry(node).or_default().push_back((at, event));
    }

    fn command(&mut self, node: u16, now: Instant, command: RouteCommand) {
        let command = match command {
            RouteCommand::Enqueue { client, request } => {
                let turn = self.global_turn(node, request.turn);
                let client = qualify(node, client);
                self.choices
                    .insert(client, (request.topic, request.language));
                RouteCommand::Enqueue {
                    client,
                    request: super::Request { turn, ..request },
                }
            }
            RouteCommand::Withdraw { client } => RouteCommand::Withdraw {
                client: qualify(node, client),
            },
            RouteCommand::Offer { counsellor, offer } => RouteCommand::Offer {
                counsellor: qualify(node, counsellor),
                offer,
            },
            RouteCommand::SignOut { counsellor } => RouteCommand::SignOut {
                counsellor: qualify(node, counsellor),
            },
            RouteCommand::Announce => RouteCommand::Announce,
            RouteCommand::Deliver { to, message } => {
                let Some(&at) = self.sides.get(&to) else {
                    // The chat is over: its sides are forgotten.
                    return;
                };
                match &message {
                    PeerMessage::End(_) | PeerMessage::Refused => {
                        self.sides.remove(&to);
                        self.sides.remove(&to.other());
                    }
                    PeerMessage::Moved { pairing } => {
                        self.sides.remove(&to);
                        self.sides.remove(&to.other());
                        let pairing = *pairing;
                        let client = SideKey {
                            pairing,
                            role: Role::Client,
                        };
                        self.sides.insert(client, at);
                        self.sides.insert(client.other(), node);
                    }
                    PeerMessage::Forward(_) | PeerMessage::Away | PeerMessage::Back => {}
                }
                self.push(at, now, RouteEvent::Delivered { to, message });
                return;
            }
            RouteCommand::Hold { hash } => {
                self.holders.insert(hash, node);
                return;
            }
            RouteCommand::Release { hash } => {
                if self.holders.get(&hash) == Some(&node) {
                    self.holders.remove(&hash);
                }
                return;
            }
            RouteCommand::Claim {
                conn,
                hash,
                claimant,
            } => {
                match self.holders.get(&hash).copied() {
                    Some(holder) => {
                        self.next_claim += 1;
                        let claim = ClaimId(self.next_claim);
                        self.claims.insert(claim, (node, conn, hash));
                        let claimed = RouteEvent::Claimed {
                            claim,
                            hash,
                            claimant,
                        };
                        self.push(holder, now, claimed);
                    }
                    None => {
                        let answer = RouteEvent::HandedOver {
                            conn,
                            hash,
                            handed: None,
                        };
                        self.push(node, now, answer);
                    }
                }
                return;
            }
            RouteCommand::HandOver { claim, handed } => {
                let Some((claimant, conn, hash)) = self.claims.remove(&claim) else {
                    return;
                };
                let handed = handed.map(|handed| self.moved(node, claimant, handed));
                let answer = RouteEvent::HandedOver { conn, hash, handed };
                self.push(claimant, now, answer);
                return;
            }
        };
        self.router.handle_command(command);
    }

    /// The shared queue's turn for a turn a relay gave.
    fn global_turn(&mut self, node: u16, turn: u64) -> u64 {
        if let Some(global) = self.turns.get(&(node, turn)) {
            return *global;
        }
        self.next_turn += 1;
        self.turns.insert((node, turn), self.next_turn);
        self.next_turn
    }

    /// What goes from relay `from` to relay `to`: the sides' places
    /// follow it, and a request's turn is given a name on the new relay
    /// (one no relay gives itself) for the same place in the queue.
    fn moved(&mut self, from: u16, to: u16, handed: Handed) -> Handed {
        let rename = |shared: &mut Shared, request: Request| {
            let global = shared.global_turn(from, request.turn);
            let turn = (1 << 63) | global;
            shared.turns.insert((to, turn), global);
            Request { turn, ..request }
        };
        match handed {
            Handed::Place { request } => Handed::Place {
                request: rename(self, request),
            },
            Handed::Side(mut side) => {
                self.sides.insert(side.key, to);
                self.sides.entry(side.peer).or_insert(from);
                side.unconfirmed = side.unconfirmed.map(|request| rename(self, request));
                Handed::Side(side)
            }
        }
    }

    /// Runs the shared router and sorts what it says into the inboxes.
    fn run(&mut self, now: Instant) {
        while let Some(event) = self.router.poll_event(now) {
            match event {
                RouteEvent::Paired { client, counsellor } => {
                    let (client_node, client) = split(client);
                    let (counsellor_node, counsellor) = split(counsellor);
                    if client_node == counsellor_node {
                        let paired = RouteEvent::Paired { client, counsellor };
                        self.push(client_node, now, paired);
                        continue;
                    }
                    self.next_pairing += 1;
                    let mut id = [0x5a; 16];
                    id[..8].copy_from_slice(&self.next_pairing.to_be_bytes());
                    let pairing = PairingId(id);
                    let (topic, language) = self
                        .choices
                        .get(&qualify(client_node, client))
                        .copied()
                        .unwrap_or_default();
                    for (node, local, role) in [
                        (client_node, client, Role::Client),
                        (counsellor_node, counsellor, Role::Counsellor),
                    ] {
                        self.sides.insert(SideKey { pairing, role }, node);
                        let half = RouteEvent::PairedRemote {
                            local,
                            role,
                            pairing,
                            topic,
                            language,
                        };
                        self.push(node, now, half);
                    }
                }
                RouteEvent::Queued {
                    client,
                    position,
                    estimated_wait_secs,
                    announce,
                } => {
                    let (node, client) = split(client);
                    let queued = RouteEvent::Queued {
                        client,
                        position,
                        estimated_wait_secs,
                        announce,
                    };
                    self.push(node, now, queued);
                }
                RouteEvent::QueueStats { waiting } => {
                    let nodes: Vec<u16> = self.inboxes.keys().copied().collect();
                    for node in nodes {
                        let stats = RouteEvent::QueueStats {
                            waiting: waiting.clone(),
                        };
                        self.push(node, now, stats);
                    }
                }
                RouteEvent::PairedRemote { .. }
                | RouteEvent::Delivered { .. }
                | RouteEvent::Claimed { .. }
                | RouteEvent::HandedOver { .. } => {}
            }
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
            shared.router.poll_timeout(),
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
        self.linked.lock().router.view().waiting_count()
    }
    fn newcomers_waiting(&self) -> usize {
        self.linked.lock().router.view().newcomers_waiting()
    }
    fn waiting_from(&self, source: SourceTag) -> usize {
        self.linked.lock().router.view().waiting_from(source)
    }
    fn waiting_per_topic(&self) -> Vec<(Option<TopicId>, usize)> {
        self.linked.lock().router.view().waiting_per_topic()
    }
}
