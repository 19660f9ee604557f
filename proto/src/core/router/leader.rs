//! The cluster's queue (proto/CLUSTER.md): one [`LocalRouter`] shared by
//! every relay, run by whichever relay holds the lease, without I/O.
//!
//! Each relay is a **node** with a 16-bit id. The leader takes a node's
//! [`RouteCommand`]s with [`Leader::command`], with the node's connection
//! ids qualified by the node (so that ids of different relays never meet
//! in the queue) and its queue turns turned into global ones (so that the
//! order of joining holds across relays). [`Leader::poll_event`] runs the
//! shared router's pass and says which node hears what:
//! - a pair of two connections of one node stays a
//!   [`RouteEvent::Paired`]; a pair across nodes becomes two
//!   [`RouteEvent::PairedRemote`] halves under a new random pairing id;
//! - a QUEUED goes to the client's node, and QUEUE_STATS to every node;
//! - a claim ([`RouteCommand::Claim`]) goes to the node holding the hash
//!   ([`RouteCommand::Hold`]), and its handover comes back to the claimant
//!   ([`RouteEvent::HandedOver`]), with turns renamed for the new node.
//!
//! Messages between the two sides of a chat ([`RouteCommand::Deliver`])
//! do not pass through the leader: in a cluster they go from relay to
//! relay, and the in-process `Linked` carries them itself.
//!
//! A node that leaves ([`Leader::leave`]) takes its waiting clients and
//! counsellors out of the queue. What it held (each [`RouteCommand::Hold`]
//! says what the hash resumes) the leader hands over itself to whoever
//! claims it, within its resume window: a young person's place at its old
//! turn, or a chat side, whose other side hears PEER_BACK when it resumes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::{
    CapHash, ClaimId, Claimant, Handed, LocalRouter, Request, Resumes, RouteCommand, RouteEvent,
    Router,
};
use crate::core::frame::{Language, PairingId, Presence, Role, TopicId};
use crate::core::pairing::{ConnId, QueueView};

/// Bits of a qualified connection id that hold the relay's local id.
const LOCAL_BITS: u32 = 48;

/// A node's connection id, qualified by the node.
pub fn qualify(node: u16, conn: ConnId) -> ConnId {
    ConnId((u64::from(node) << LOCAL_BITS) | (conn.0 & ((1 << LOCAL_BITS) - 1)))
}

/// The node and the node's own connection id.
pub fn split(conn: ConnId) -> (u16, ConnId) {
    let node = u16::try_from(conn.0 >> LOCAL_BITS).unwrap_or(u16::MAX);
    (node, ConnId(conn.0 & ((1 << LOCAL_BITS) - 1)))
}

/// What a node that left held under one hash.
struct Orphan {
    from: u16,
    resumes: Resumes,
    until: Instant,
}

/// A claim sent to the node holding its hash.
struct Claim {
    /// The claiming node, its connection, the hash and who claims.
    node: u16,
    conn: ConnId,
    hash: CapHash,
    claimant: Claimant,
    /// The node asked.
    holder: u16,
}

/// Where new pairing ids come from: random in a cluster, counted in tests.
pub type PairingIds = Box<dyn FnMut() -> PairingId + Send>;

/// The queue of a whole cluster.
pub struct Leader {
    router: LocalRouter,
    pairing_ids: PairingIds,
    /// Every node that has said anything, and not left since.
    nodes: BTreeSet<u16>,
    /// Waiting clients (qualified) and what they chose, for the
    /// counsellor's half.
    clients: HashMap<ConnId, (Option<TopicId>, Option<Language>)>,
    counsellors: HashSet<ConnId>,
    /// Queue turns by the node and turn they were given with.
    turns: HashMap<(u16, u64), u64>,
    next_turn: u64,
    /// Which node holds each capability and ticket hash, and what it
    /// resumes there.
    holders: HashMap<CapHash, (u16, Option<Resumes>)>,
    /// What nodes that left held, until its resume window ends: the
    /// leader hands it over itself (`resume_window` after the node left,
    /// for what was live there).
    orphans: HashMap<CapHash, Orphan>,
    resume_window: Duration,
    /// Claims on their way: the claiming node, connection and hash, and
    /// the node asked.
    claims: HashMap<ClaimId, Claim>,
    next_claim: u64,
    /// Each counsellor's presence on each node, as the nodes told it.
    presence: BTreeMap<String, BTreeMap<u16, Presence>>,
    /// What each node was last told of each name: the best elsewhere.
    told: HashMap<(u16, String), Presence>,
    /// Clients this leader has had in its queue, and since when: a resync
    /// does not put back one it already knows (it may have paired it
    /// while the resync was on its way).
    seen: HashMap<ConnId, Instant>,
    out: VecDeque<(u16, RouteEvent)>,
}

impl Leader {
    pub fn new(topic_fallback: Duration, resume_window: Duration, pairing_ids: PairingIds) -> Self {
        Leader {
            router: LocalRouter::new(topic_fallback),
            pairing_ids,
            nodes: BTreeSet::new(),
            clients: HashMap::new(),
            counsellors: HashSet::new(),
            turns: HashMap::new(),
            next_turn: 0,
            holders: HashMap::new(),
            orphans: HashMap::new(),
            resume_window,
            claims: HashMap::new(),
            next_claim: 0,
            presence: BTreeMap::new(),
            told: HashMap::new(),
            seen: HashMap::new(),
            out: VecDeque::new(),
        }
    }

    /// The nodes that hear QUEUE_STATS.
    pub fn nodes(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes.iter().copied()
    }

    /// A node is known (it hears QUEUE_STATS) before it says anything.
    /// A new node hears who is signed in elsewhere.
    pub fn join(&mut self, node: u16) {
        if self.nodes.insert(node) {
            let names: Vec<String> = self.presence.keys().cloned().collect();
            for name in names {
                self.tell_presence(&name);
            }
        }
    }

    /// A node is gone: its waiting clients and counsellors leave the
    /// queue, and what it held the leader hands over itself from now on
    /// (claims that waited for it are answered at once). Its turns stay,
    /// so that its young people come back at their places.
    pub fn leave(&mut self, node: u16, now: Instant) {
        if !self.nodes.remove(&node) {
            return;
        }
        self.orphans.retain(|_, orphan| orphan.until > now);
        let held: Vec<CapHash> = (self.holders.iter())
            .filter(|(_, (holder, _))| *holder == node)
            .map(|(hash, _)| *hash)
            .collect();
        for hash in held {
            let Some((_, Some(resumes))) = self.holders.remove(&hash) else {
                continue;
            };
            let (resumes, until) = match resumes {
                Resumes::Side { mut side, live } => {
                    if live {
                        side.window_ends = now + self.resume_window;
                    }
                    let until = side.window_ends;
                    (Resumes::Side { side, live: false }, until)
                }
                place => (place, now + self.resume_window),
            };
            self.orphans.insert(
                hash,
                Orphan {
                    from: node,
                    resumes,
                    until,
                },
            );
        }
        let waited: Vec<ClaimId> = (self.claims.iter())
            .filter(|(_, c)| c.holder == node)
            .map(|(id, _)| *id)
            .collect();
        for id in waited {
            if let Some(claim) = self.claims.remove(&id) {
                let handed = self.hand_orphan(&claim.hash, &claim.claimant, claim.node, now);
                let answer = RouteEvent::HandedOver {
                    conn: claim.conn,
                    hash: claim.hash,
                    handed,
                };
                self.out.push_back((claim.node, answer));
            }
        }
        let of_node = |conn: &ConnId| split(*conn).0 == node;
        let clients: Vec<ConnId> = self.clients.keys().copied().filter(of_node).collect();
        for client in clients {
            self.clients.remove(&client);
            self.router
                .handle_command(RouteCommand::Withdraw { client });
        }
        let counsellors: Vec<ConnId> = self.counsellors.iter().copied().filter(of_node).collect();
        for counsellor in counsellors {
            self.counsellors.remove(&counsellor);
            self.router
                .handle_command(RouteCommand::SignOut { counsellor });
        }
        self.claims.retain(|_, claim| claim.node != node);
        self.told.retain(|(n, _), _| *n != node);
        let names: Vec<String> = (self.presence.iter_mut())
            .filter_map(|(name, nodes)| nodes.remove(&node).map(|_| name.clone()))
            .collect();
        for name in names {
            self.tell_presence(&name);
        }
    }

    /// Tells every node that has not heard it the best presence of `name`
    /// on the other nodes.
    fn tell_presence(&mut self, name: &str) {
        let on_nodes = self.presence.get(name).cloned().unwrap_or_default();
        for node in self.nodes.iter().copied() {
            let elsewhere = (on_nodes.iter())
                .filter(|(n, _)| **n != node)
                .map(|(_, p)| *p)
                .max()
                .unwrap_or(Presence::SignedOut);
            let key = (node, name.to_owned());
            let before = self.told.get(&key).copied().unwrap_or(Presence::SignedOut);
            if elsewhere == before {
                continue;
            }
            if elsewhere == Presence::SignedOut {
                self.told.remove(&key);
            } else {
                self.told.insert(key, elsewhere);
            }
            let event = RouteEvent::Presence {
                name: name.to_owned(),
                presence: elsewhere,
            };
            self.out.push_back((node, event));
        }
        if on_nodes.is_empty() {
            self.presence.remove(name);
        }
    }

    /// What a node that left held under `hash`, handed to `to` if
    /// `claimant` may have it.
    fn hand_orphan(
        &mut self,
        hash: &CapHash,
        claimant: &Claimant,
        to: u16,
        now: Instant,
    ) -> Option<Handed> {
        let orphan = self.orphans.get(hash)?;
        let fits = match (&orphan.resumes, claimant) {
            (Resumes::Place { .. }, Claimant::Client) => true,
            (Resumes::Side { side, .. }, Claimant::Client) => side.key.role == Role::Client,
            (Resumes::Side { side, .. }, Claimant::Counsellor { pseudonym }) => {
                side.key.role == Role::Counsellor && side.pseudonym.as_ref() == Some(pseudonym)
            }
            (Resumes::Place { .. }, Claimant::Counsellor { .. }) => false,
        };
        if !fits || orphan.until <= now {
            return None;
        }
        let orphan = self.orphans.remove(hash)?;
        let handed = match orphan.resumes {
            Resumes::Place { request } => Handed::Place { request },
            Resumes::Side { side, .. } => Handed::Side(side),
        };
        Some(self.moved(orphan.from, to, handed))
    }

    /// Takes one command of `node`'s resync: what it holds, said again
    /// for a new leader. A client this leader already knows is left as it
    /// is: the leader's own view of it is newer.
    pub fn resync(&mut self, node: u16, now: Instant, command: RouteCommand) {
        if let RouteCommand::Enqueue { client, .. } = &command
            && self.seen.contains_key(&qualify(node, *client))
        {
            return;
        }
        self.command(node, now, command);
    }

    /// Takes one command from `node`. Its events come at the next poll.
    pub fn command(&mut self, node: u16, now: Instant, command: RouteCommand) {
        self.join(node);
        let command = match command {
            RouteCommand::Enqueue { client, request } => {
                let turn = self.global_turn(node, request.turn);
                let client = qualify(node, client);
                self.clients
                    .insert(client, (request.topic, request.language));
                self.remember(client, now);
                RouteCommand::Enqueue {
                    client,
                    request: Request { turn, ..request },
                }
            }
            RouteCommand::Withdraw { client } => {
                let client = qualify(node, client);
                self.clients.remove(&client);
                self.seen.remove(&client);
                RouteCommand::Withdraw { client }
            }
            RouteCommand::Offer { counsellor, offer } => {
                let counsellor = qualify(node, counsellor);
                self.counsellors.insert(counsellor);
                RouteCommand::Offer { counsellor, offer }
            }
            RouteCommand::SignOut { counsellor } => {
                let counsellor = qualify(node, counsellor);
                self.counsellors.remove(&counsellor);
                RouteCommand::SignOut { counsellor }
            }
            RouteCommand::Announce => RouteCommand::Announce,
            RouteCommand::Hold { hash, resumes } => {
                self.orphans.remove(&hash);
                self.holders.insert(hash, (node, resumes));
                return;
            }
            RouteCommand::Release { hash } => {
                if self
                    .holders
                    .get(&hash)
                    .is_some_and(|(holder, _)| *holder == node)
                {
                    self.holders.remove(&hash);
                }
                return;
            }
            RouteCommand::Claim {
                conn,
                hash,
                claimant,
            } => {
                match self.holders.get(&hash).map(|(holder, _)| *holder) {
                    Some(holder) => {
                        self.next_claim += 1;
                        let id = ClaimId(self.next_claim);
                        let claim = Claim {
                            node,
                            conn,
                            hash,
                            holder,
                            claimant: claimant.clone(),
                        };
                        self.claims.insert(id, claim);
                        let claimed = RouteEvent::Claimed {
                            claim: id,
                            hash,
                            claimant,
                        };
                        self.out.push_back((holder, claimed));
                    }
                    None => {
                        let handed = self.hand_orphan(&hash, &claimant, node, now);
                        let answer = RouteEvent::HandedOver { conn, hash, handed };
                        self.out.push_back((node, answer));
                    }
                }
                return;
            }
            RouteCommand::HandOver { claim, handed } => {
                let Some(claim) = self.claims.remove(&claim) else {
                    return;
                };
                let handed = handed.map(|handed| self.moved(node, claim.node, handed));
                let (conn, hash) = (claim.conn, claim.hash);
                let answer = RouteEvent::HandedOver { conn, hash, handed };
                self.out.push_back((claim.node, answer));
                return;
            }
            RouteCommand::Presence { name, presence } => {
                let on_nodes = self.presence.entry(name.clone()).or_default();
                if presence == Presence::SignedOut {
                    on_nodes.remove(&node);
                } else {
                    on_nodes.insert(node, presence);
                }
                self.tell_presence(&name);
                return;
            }
            RouteCommand::TransferTo {
                name,
                pairing,
                topic,
                language,
            } => {
                // Where the colleague is available; if nowhere, back to the
                // sender, who finds nobody and undoes the move.
                let on_nodes = self.presence.get(&name);
                let to = (on_nodes.into_iter().flatten())
                    .find(|(n, p)| **n != node && **p == Presence::Available)
                    .map_or(node, |(n, _)| *n);
                let event = RouteEvent::TransferIn {
                    name,
                    pairing,
                    topic,
                    language,
                };
                self.out.push_back((to, event));
                return;
            }
            // Messages between sides go from relay to relay.
            RouteCommand::Deliver { .. }
            | RouteCommand::HostSide { .. }
            | RouteCommand::LeaveSide { .. } => return,
        };
        self.router.handle_command(command);
    }

    /// Notes a client as known, forgetting those known longer than any
    /// resync can take to arrive.
    fn remember(&mut self, client: ConnId, now: Instant) {
        const MEMORY: Duration = Duration::from_secs(600);
        if self.seen.len() >= 1024 && self.seen.len().is_power_of_two() {
            self.seen
                .retain(|_, at| now.saturating_duration_since(*at) < MEMORY);
        }
        self.seen.insert(client, now);
    }

    /// The shared queue's turn for a turn a node gave.
    fn global_turn(&mut self, node: u16, turn: u64) -> u64 {
        if let Some(global) = self.turns.get(&(node, turn)) {
            return *global;
        }
        self.next_turn += 1;
        self.turns.insert((node, turn), self.next_turn);
        self.next_turn
    }

    /// What goes from node `from` to node `to`: a request's turn is given
    /// a name on the new node (one no node gives itself) for the same
    /// place in the queue.
    fn moved(&mut self, from: u16, to: u16, handed: Handed) -> Handed {
        let rename = |leader: &mut Leader, request: Request| {
            let global = leader.global_turn(from, request.turn);
            let turn = (1 << 63) | global;
            leader.turns.insert((to, turn), global);
            Request { turn, ..request }
        };
        match handed {
            Handed::Place { request } => Handed::Place {
                request: rename(self, request),
            },
            Handed::Side(mut side) => {
                side.unconfirmed = side.unconfirmed.map(|request| rename(self, request));
                Handed::Side(side)
            }
        }
    }

    /// The next event and the node it is for, as of `now`.
    pub fn poll_event(&mut self, now: Instant) -> Option<(u16, RouteEvent)> {
        while self.out.is_empty() {
            let event = self.router.poll_event(now)?;
            self.sort(event);
        }
        self.out.pop_front()
    }

    /// Sorts one event of the shared router to the nodes it is for.
    fn sort(&mut self, event: RouteEvent) {
        match event {
            RouteEvent::Paired { client, counsellor } => {
                let choice = self.clients.remove(&client).unwrap_or_default();
                let (client_node, client) = split(client);
                let (counsellor_node, counsellor) = split(counsellor);
                if client_node == counsellor_node {
                    let paired = RouteEvent::Paired { client, counsellor };
                    self.out.push_back((client_node, paired));
                    return;
                }
                let pairing = (self.pairing_ids)();
                let (topic, language) = choice;
                for (node, local, role) in [
                    (client_node, client, Role::Client),
                    (counsellor_node, counsellor, Role::Counsellor),
                ] {
                    let half = RouteEvent::PairedRemote {
                        local,
                        role,
                        pairing,
                        topic,
                        language,
                    };
                    self.out.push_back((node, half));
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
                self.out.push_back((node, queued));
            }
            RouteEvent::QueueStats { waiting } => {
                for node in self.nodes.iter().copied() {
                    let stats = RouteEvent::QueueStats {
                        waiting: waiting.clone(),
                    };
                    self.out.push_back((node, stats));
                }
            }
            RouteEvent::PairedRemote { .. }
            | RouteEvent::Delivered { .. }
            | RouteEvent::Claimed { .. }
            | RouteEvent::HandedOver { .. }
            | RouteEvent::Presence { .. }
            | RouteEvent::TransferIn { .. } => {}
        }
    }

    /// When the shared queue next has events without a new command (a
    /// topic fallback begins). It is polled after every command anyway.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.router.poll_timeout()
    }

    /// The whole cluster's counts.
    pub fn view(&self) -> &dyn QueueView {
        self.router.view()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::pairing::Offer;

    fn leader() -> Leader {
        let ids = Box::new(|| PairingId([3; 16]));
        Leader::new(Duration::from_secs(120), Duration::from_secs(120), ids)
    }

    fn request(turn: u64, now: Instant) -> Request {
        Request {
            topic: TopicId::new(1),
            language: None,
            since: now,
            turn,
            priority: false,
            source: None,
        }
    }

    fn offer() -> Offer {
        Offer {
            available: true,
            load: 0,
            capacity: 1,
            pairings_seen: 0,
            topics: Vec::new(),
            languages: Vec::new(),
        }
    }

    fn drain(leader: &mut Leader, now: Instant) -> Vec<(u16, RouteEvent)> {
        std::iter::from_fn(|| leader.poll_event(now)).collect()
    }

    #[test]
    fn a_pair_across_nodes_is_two_halves_and_every_node_hears_the_counts() {
        let now = Instant::now();
        let mut l = leader();
        l.join(3);
        let (client, counsellor) = (ConnId(1), ConnId(1));
        l.command(
            1,
            now,
            RouteCommand::Enqueue {
                client,
                request: request(7, now),
            },
        );
        l.command(
            2,
            now,
            RouteCommand::Offer {
                counsellor,
                offer: offer(),
            },
        );
        let events = drain(&mut l, now);
        let half = |node, role| {
            (
                node,
                RouteEvent::PairedRemote {
                    local: ConnId(1),
                    role,
                    pairing: PairingId([3; 16]),
                    topic: TopicId::new(1),
                    language: None,
                },
            )
        };
        assert_eq!(
            events[..2],
            [half(1, Role::Client), half(2, Role::Counsellor)]
        );
        let heard: BTreeSet<u16> = (events.iter())
            .filter(|(_, e)| matches!(e, RouteEvent::QueueStats { .. }))
            .map(|(node, _)| *node)
            .collect();
        assert_eq!(heard, BTreeSet::from([1, 2, 3]));
    }

    #[test]
    fn turns_of_different_nodes_keep_the_order_they_reached_the_leader_in() {
        let now = Instant::now();
        let mut l = leader();
        // Node 2's turn 1 came after node 1's turn 5: it waits behind it.
        l.command(
            1,
            now,
            RouteCommand::Enqueue {
                client: ConnId(1),
                request: request(5, now),
            },
        );
        l.command(
            2,
            now,
            RouteCommand::Enqueue {
                client: ConnId(1),
                request: request(1, now),
            },
        );
        l.command(
            2,
            now,
            RouteCommand::Offer {
                counsellor: ConnId(9),
                offer: offer(),
            },
        );
        let first = drain(&mut l, now).into_iter().next();
        assert!(
            matches!(
                first,
                Some((
                    1,
                    RouteEvent::PairedRemote {
                        role: Role::Client,
                        ..
                    }
                ))
            ),
            "{first:?}"
        );
    }

    #[test]
    fn a_node_that_leaves_takes_its_clients_counsellors_and_holdings_along() {
        let now = Instant::now();
        let mut l = leader();
        l.command(
            2,
            now,
            RouteCommand::Offer {
                counsellor: ConnId(9),
                offer: offer(),
            },
        );
        l.command(
            2,
            now,
            RouteCommand::Enqueue {
                client: ConnId(4),
                request: request(1, now),
            },
        );
        l.command(
            2,
            now,
            RouteCommand::Hold {
                hash: [5; 32],
                resumes: None,
            },
        );
        drain(&mut l, now);
        l.command(
            2,
            now,
            RouteCommand::Enqueue {
                client: ConnId(5),
                request: request(2, now),
            },
        );
        l.leave(2, now);
        drain(&mut l, now);
        assert_eq!(l.view().waiting_count(), 0);
        l.command(
            1,
            now,
            RouteCommand::Enqueue {
                client: ConnId(1),
                request: request(1, now),
            },
        );
        let claim = RouteCommand::Claim {
            conn: ConnId(1),
            hash: [5; 32],
            claimant: super::super::Claimant::Client,
        };
        l.command(1, now, claim);
        let events = drain(&mut l, now);
        assert!(
            !events
                .iter()
                .any(|(_, e)| matches!(e, RouteEvent::PairedRemote { .. })),
            "nobody left to pair with"
        );
        assert!(events.contains(&(
            1,
            RouteEvent::HandedOver {
                conn: ConnId(1),
                hash: [5; 32],
                handed: None
            }
        )));
    }

    #[test]
    fn a_resync_does_not_put_back_a_client_the_leader_paired_meanwhile() {
        let now = Instant::now();
        let mut l = leader();
        let enqueue = || RouteCommand::Enqueue {
            client: ConnId(1),
            request: request(1, now),
        };
        l.command(1, now, enqueue());
        l.command(
            2,
            now,
            RouteCommand::Offer {
                counsellor: ConnId(9),
                offer: offer(),
            },
        );
        assert!(
            drain(&mut l, now)
                .iter()
                .any(|(_, e)| matches!(e, RouteEvent::PairedRemote { .. }))
        );
        // The relay's resync left before it heard of the pairing.
        l.resync(1, now, enqueue());
        drain(&mut l, now);
        assert_eq!(l.view().waiting_count(), 0);
        // A client it never knew is taken in.
        l.resync(
            1,
            now,
            RouteCommand::Enqueue {
                client: ConnId(2),
                request: request(2, now),
            },
        );
        drain(&mut l, now);
        assert_eq!(l.view().waiting_count(), 1);
    }
}
