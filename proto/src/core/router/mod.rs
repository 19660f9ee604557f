//! The routing seam (PROTOCOL.md §7.3, "Pairing"): between the relay core,
//! which owns connections and chats, and the router, which owns the queue
//! and decides who goes with whom.
//!
//! The two talk in messages only, the way quinn's endpoint and its
//! connections do. The core hands the router [`RouteCommand`]s (a client
//! enters or leaves the queue, a counsellor's room changes, a counsellor
//! signs out, every waiting client is due news) with
//! [`Router::handle_command`], and drains [`RouteEvent`]s (a pair, a
//! client's position and estimate, the counts per topic) with
//! [`Router::poll_event`]. It never waits for an answer, so an answer may
//! come late and find that what it paired has changed: the core then puts
//! the client back at its place and tells the router the counsellor's real
//! room (`Relay::on_paired`). What the core must know at once to admit a
//! JOIN (how many wait, from which source) it reads from the router's view,
//! which may lag behind its commands.
//!
//! [`LocalRouter`] is the router of a single relay: the [`LocalQueue`],
//! the wait estimate and the topic-fallback timer. It is deterministic and
//! answers on the next poll, so the core's tests run on a virtual clock.
//! `Delayed` (feature `test-support`) holds every command back for a
//! while, the way a router shared between relays would, and shows that
//! the core does not depend on an answer being immediate. `Linked`
//! (feature `test-support`, `linked.rs`) is one queue shared by several
//! relays in one process: the shape of the cluster's router, without the
//! network.
//!
//! Keys are the core's [`ConnId`]s. A router shared between relays
//! qualifies them with the relay they came from.
//!
//! A chat's two sides may be on different relays. The router then pairs
//! them in halves ([`RouteEvent::PairedRemote`]: each relay opens its own
//! side under the pairing id the router chose), and the two sides talk
//! through it: the core hands it a [`PeerMessage`] for the other side
//! ([`RouteCommand::Deliver`], keyed by [`SideKey`]: the pairing id and
//! the side's role) and takes what the other side sent
//! ([`RouteEvent::Delivered`]). FORWARD, END, PEER_AWAY and PEER_BACK,
//! a transfer and a refused half cross this way; the relay where a side
//! lives holds what comes for it while it is away, as for a local chat.
//!
//! Any relay can answer a RESUME. The router knows which relay holds which
//! capability and ticket hash (the core tells it with
//! [`RouteCommand::Hold`] and [`RouteCommand::Release`] at the end of each
//! event); a RESUME the core cannot resume itself becomes a
//! [`RouteCommand::Claim`], which the router takes to the relay holding
//! the hash ([`RouteEvent::Claimed`]); that relay hands the place or chat
//! side over ([`RouteCommand::HandOver`], [`Handed`]) and the router gives
//! it to the claimant ([`RouteEvent::HandedOver`]). A router answers every
//! claim, with `None` where nobody holds the hash. The in-process router
//! answers every claim with `None`: on one relay the core has already
//! looked.
//!
//! What holds whatever the router's latency: no young person is paired
//! twice (a pair takes the client out of the queue, and the core starts a
//! chat only for a client it still has waiting); no counsellor goes over
//! capacity (the core starts a chat only where it sees room, and answers a
//! pair it refuses with the counsellor's real room); a refused client keeps
//! its place (it re-enters at its old turn). An offer made before the
//! relay took in the router's latest pairings does not undo them: it says
//! how many it took in ([`Offer::pairings_seen`]), and the router counts
//! the rest into the room, so that it does not pair with a counsellor who
//! is full. A half that its relay refuses
//! undoes the other half: a young person who heard PAIRED (and may have
//! begun its handshake, which nobody answered) hears END(TRANSFERRED) and
//! is back at its place, a counsellor hears END(PEER_DISCONNECTED).

pub mod leader;
pub mod lease;
#[cfg(any(test, feature = "test-support"))]
mod linked;
pub mod wire;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::frame::{Blob, EndReason, Language, PairingId, Presence, Role, TopicId};
use super::pairing::{ConnId, LocalQueue, Offer, PairingBackend, QueueView, Request};
#[cfg(any(test, feature = "test-support"))]
pub use linked::{Linked, LinkedRouter};

/// One side of a chat anywhere in a cluster: the chat's pairing id and
/// which side. Pairing ids are random, so the key is cluster-unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SideKey {
    pub pairing: PairingId,
    pub role: Role,
}

impl SideKey {
    /// The other side of the same chat.
    pub fn other(self) -> SideKey {
        let role = match self.role {
            Role::Client => Role::Counsellor,
            Role::Counsellor => Role::Client,
        };
        SideKey { role, ..self }
    }
}

/// What one side of a chat tells the other side when that side is on
/// another relay. The relay where the receiving side lives turns it into
/// frames, exactly as it would for a local peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// A FORWARD blob (its budget was spent where it was sent).
    Forward(Blob),
    /// The chat is over, for this reason. To a young person's side,
    /// `Transferred` means: back to the queue, with priority.
    End(EndReason),
    /// The sending side's connection dropped; it may resume.
    Away,
    /// The sending side resumed.
    Back,
    /// The chat moves to a colleague: the young person's side ends this
    /// chat (END(TRANSFERRED)) and opens the chat with this pairing id,
    /// whose counsellor side is already open on the sender's relay. A
    /// router learns from it where the new chat's two sides are.
    Moved { pairing: PairingId },
    /// The counsellor's relay refused its half of a new pairing (no room
    /// any more): the young person goes back to its place in the queue.
    Refused,
}

/// The SHA-256 of a resume capability or queue ticket: all a relay keeps
/// of one, and what the router knows them by.
pub type CapHash = [u8; 32];

/// Who presents a capability or ticket in a RESUME (PROTOCOL.md §7.4):
/// what the relay holding it checks before it lets it go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Claimant {
    /// A new anonymous connection, RESUME as its first frame.
    Client,
    /// A counsellor's connection, signed in under this pseudonym.
    Counsellor { pseudonym: String },
}

/// A router's handle for one RESUME that went to another relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClaimId(pub u64);

/// What a capability or ticket resumes, as the relay holding it last told
/// the router: what the router hands over for it if that relay dies
/// (proto/CLUSTER.md, "A relay dies").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resumes {
    /// A waiting young person's place.
    Place { request: Request },
    /// A chat side, without what was held for it (that dies with its
    /// relay; the other side's client sends it again). `live`: its
    /// connection was up, so its resume window starts when its relay dies.
    Side { side: Box<HandedSide>, live: bool },
}

/// What a relay hands over to the relay where it is resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Handed {
    /// A waiting young person's place in the queue (its ticket).
    Place { request: Request },
    /// A chat side: by its own capability, or by the ticket of a young
    /// person paired while away who never heard its PAIRED.
    Side(Box<HandedSide>),
}

/// A chat side on its way from one relay to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedSide {
    /// This side, and the side it chats with (now on another relay).
    pub key: SideKey,
    pub peer: SideKey,
    /// The other side is away too.
    pub peer_away: bool,
    /// The young person's topic and language, if known.
    pub topic: Option<TopicId>,
    pub language: Option<Language>,
    /// A counsellor's side is resumed only under this pseudonym.
    pub pseudonym: Option<String>,
    /// What the other side sent while this side was away, in order.
    pub held: Vec<Blob>,
    /// A young person's side not yet heard from in the chat: the place it
    /// had, should the pairing be undone.
    pub unconfirmed: Option<Request>,
    /// When the pairing is undone if the young person's handshake message
    /// 1 has not come, and when the resume window ends.
    #[serde(with = "wire::optional_instant")]
    pub handshake_due: Option<Instant>,
    #[serde(with = "wire::instant")]
    pub window_ends: Instant,
}

/// What the core tells the router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteCommand {
    /// A client enters the queue, or re-enters it at the place its
    /// `request.turn` gives it. The core has checked the queue's limit
    /// against the router's view.
    Enqueue {
        client: ConnId,
        request: Request,
    },
    /// A client leaves the queue (paired elsewhere, away, gone).
    Withdraw {
        client: ConnId,
    },
    /// What a counsellor can take now: sets or replaces its offer.
    Offer {
        counsellor: ConnId,
        offer: Offer,
    },
    /// A counsellor is gone.
    SignOut {
        counsellor: ConnId,
    },
    /// Every waiting client is due its position and estimate.
    Announce,
    /// A message for the other side of a chat, on another relay.
    Deliver {
        to: SideKey,
        message: PeerMessage,
    },
    /// This relay holds a capability or ticket by this hash (or no longer
    /// does): a RESUME anywhere else is sent here. What it resumes, as of
    /// now, is what the router hands over for it should this relay die.
    Hold {
        hash: CapHash,
        resumes: Option<Resumes>,
    },
    Release {
        hash: CapHash,
    },
    /// This relay hosts a chat side whose other side is on another relay
    /// (or no longer does): messages for `side` come here.
    HostSide {
        side: SideKey,
    },
    LeaveSide {
        side: SideKey,
    },
    /// A RESUME on `conn` with a capability or ticket this relay does not
    /// hold (or holds for someone else): the router finds the relay that
    /// does. Every claim is answered with [`RouteEvent::HandedOver`].
    Claim {
        conn: ConnId,
        hash: CapHash,
        claimant: Claimant,
    },
    /// The answer to [`RouteEvent::Claimed`]: what this relay let go for
    /// the claim (`None`: nothing, or not to this claimant).
    HandOver {
        claim: ClaimId,
        handed: Option<Handed>,
    },
    /// What colleagues should see of the counsellor `name` on this relay
    /// (the best of its connections here) changed.
    Presence {
        name: String,
        presence: Presence,
    },
    /// A chat moves to the colleague `name`, who is not on this relay:
    /// a relay where `name` is available opens the counsellor's side of
    /// the new chat `pairing` ([`RouteEvent::TransferIn`]). The young
    /// person's side opens wherever it is.
    TransferTo {
        name: String,
        pairing: PairingId,
        topic: Option<TopicId>,
        language: Option<Language>,
    },
}

/// What the router tells the core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteEvent {
    /// This client goes to this counsellor. The client has left the queue
    /// and the router counts one more chat on the counsellor.
    Paired { client: ConnId, counsellor: ConnId },
    /// Half of a pairing whose other side is on another relay: `local`
    /// opens its side, in the `role` it has, of the chat `pairing`. The
    /// young person's choice (for the counsellor's PAIRED) comes along.
    PairedRemote {
        local: ConnId,
        role: Role,
        pairing: PairingId,
        topic: Option<TopicId>,
        language: Option<Language>,
    },
    /// A message from the other side of a chat, for the side `to` here.
    Delivered { to: SideKey, message: PeerMessage },
    /// Another relay has a RESUME for what this relay holds under `hash`:
    /// the core answers with [`RouteCommand::HandOver`].
    Claimed {
        claim: ClaimId,
        hash: CapHash,
        claimant: Claimant,
    },
    /// The answer to a [`RouteCommand::Claim`] for `conn`.
    HandedOver {
        conn: ConnId,
        hash: CapHash,
        handed: Option<Handed>,
    },
    /// A waiting client's place: its position (1 = next) and estimated
    /// wait (`None`: not known). `announce`: the whole queue is told, so a
    /// client due a heartbeat hears it even if nothing changed.
    Queued {
        client: ConnId,
        position: u32,
        estimated_wait_secs: Option<u32>,
        announce: bool,
    },
    /// How many clients wait per topic changed (`None`: no topic), in
    /// topic order.
    QueueStats {
        waiting: Vec<(Option<TopicId>, usize)>,
    },
    /// The best presence of the counsellor `name` on the other relays
    /// changed.
    Presence { name: String, presence: Presence },
    /// Open the side of the colleague `name` here in the chat `pairing`,
    /// moved to them from another relay; if nobody by that name here can
    /// take it, the young person's side hears [`PeerMessage::Refused`].
    TransferIn {
        name: String,
        pairing: PairingId,
        topic: Option<TopicId>,
        language: Option<Language>,
    },
}

/// The seam: a router takes commands and gives events back, later.
pub trait Router: Send {
    /// Takes one command. The core polls after every event, so a router
    /// that needs the time a command was given reads it at the next poll.
    fn handle_command(&mut self, command: RouteCommand);
    /// The next event, if any, as of `now`.
    fn poll_event(&mut self, now: Instant) -> Option<RouteEvent>;
    /// When the router next has events without a new command (a topic
    /// fallback begins, a held command comes due).
    fn poll_timeout(&self) -> Option<Instant>;
    /// What the core must know at once to admit a JOIN: how many wait,
    /// as far as the router knows (it may lag behind its commands).
    fn view(&self) -> &dyn QueueView;
}

/// Estimates waits from the recent pace of pairings: a running average of
/// the time between two pairings, and nothing else.
#[derive(Debug, Default)]
pub(crate) struct WaitEstimate {
    average_gap_secs: Option<f64>,
    last_pairing: Option<Instant>,
}

impl WaitEstimate {
    /// Weight of the newest gap in the running average.
    const WEIGHT: f64 = 0.3;

    pub(crate) fn record_pairing(&mut self, now: Instant) {
        if let Some(last) = self.last_pairing {
            let gap = now.saturating_duration_since(last).as_secs_f64();
            self.average_gap_secs = Some(match self.average_gap_secs {
                Some(avg) => Self::WEIGHT * gap + (1.0 - Self::WEIGHT) * avg,
                None => gap,
            });
        }
        self.last_pairing = Some(now);
    }

    /// At least a second per place ahead: an estimate of 0 would promise
    /// what nobody can keep.
    pub(crate) fn for_position(&self, position: u32) -> Option<u32> {
        let secs = self.average_gap_secs? * f64::from(position);
        Some(secs.round().clamp(1.0, f64::from(u32::MAX - 1)) as u32)
    }
}

/// The router of a single relay. Commands apply at once; the next poll
/// runs a pairing pass if anything changed since the last one, and yields
/// its pairs, then the positions that moved, then the counts per topic.
#[derive(Debug)]
pub struct LocalRouter<P: PairingBackend = LocalQueue> {
    queue: P,
    topic_fallback: Duration,
    estimate: WaitEstimate,
    /// Something changed since the last pass.
    dirty: bool,
    /// The next pass tells every waiting client.
    announce: bool,
    /// The queue's change count when the counts per topic were last told.
    stats_at: Option<u64>,
    events: VecDeque<RouteEvent>,
}

impl LocalRouter {
    /// A router over a [`LocalQueue`]. `max_queue` is kept by the core's
    /// admission; the router takes whatever it is given.
    pub fn new(topic_fallback: Duration) -> Self {
        LocalRouter::with_queue(LocalQueue::new(usize::MAX), topic_fallback)
    }
}

impl<P: PairingBackend> LocalRouter<P> {
    pub fn with_queue(queue: P, topic_fallback: Duration) -> Self {
        LocalRouter {
            queue,
            topic_fallback,
            estimate: WaitEstimate::default(),
            dirty: false,
            announce: false,
            stats_at: None,
            events: VecDeque::new(),
        }
    }

    /// Pairs while the queue finds pairs, then reports the positions that
    /// moved (all of them after a pairing: every estimate changed) and the
    /// counts per topic if they changed.
    fn pass(&mut self, now: Instant) {
        let mut everyone = std::mem::take(&mut self.announce);
        while let Some((client, counsellor)) = self.queue.next_pair(now, self.topic_fallback) {
            self.estimate.record_pairing(now);
            self.events
                .push_back(RouteEvent::Paired { client, counsellor });
            everyone = true;
        }
        for moved in self.queue.take_moved(everyone) {
            // Nobody signed in who could take this client: no estimate.
            let estimated_wait_secs = self
                .queue
                .could_serve(&moved.request)
                .then(|| self.estimate.for_position(moved.position))
                .flatten();
            self.events.push_back(RouteEvent::Queued {
                client: moved.client,
                position: moved.position,
                estimated_wait_secs,
                announce: everyone,
            });
        }
        let changes = self.queue.changes();
        if self.stats_at != Some(changes) {
            self.stats_at = Some(changes);
            self.events.push_back(RouteEvent::QueueStats {
                waiting: self.queue.waiting_per_topic(),
            });
        }
    }
}

impl<P: PairingBackend + Send> Router for LocalRouter<P> {
    fn handle_command(&mut self, command: RouteCommand) {
        match command {
            RouteCommand::Enqueue { client, request } => self.queue.requeue(client, request),
            RouteCommand::Withdraw { client } => {
                self.queue.remove_client(client);
            }
            RouteCommand::Offer { counsellor, offer } => self.queue.offer(counsellor, offer),
            RouteCommand::SignOut { counsellor } => self.queue.remove_counsellor(counsellor),
            RouteCommand::Announce => self.announce = true,
            // Every chat of a single relay is local, and whatever it can
            // resume it already found itself.
            RouteCommand::Deliver { .. }
            | RouteCommand::Hold { .. }
            | RouteCommand::Release { .. }
            | RouteCommand::HostSide { .. }
            | RouteCommand::LeaveSide { .. }
            | RouteCommand::Presence { .. }
            | RouteCommand::HandOver { .. } => return,
            // A single relay has found every colleague itself; should one
            // be asked for, nobody here takes it.
            RouteCommand::TransferTo {
                name,
                pairing,
                topic,
                language,
            } => {
                let answer = RouteEvent::TransferIn {
                    name,
                    pairing,
                    topic,
                    language,
                };
                self.events.push_back(answer);
                return;
            }
            RouteCommand::Claim { conn, hash, .. } => {
                let answer = RouteEvent::HandedOver {
                    conn,
                    hash,
                    handed: None,
                };
                self.events.push_back(answer);
                return;
            }
        }
        self.dirty = true;
    }

    fn poll_event(&mut self, now: Instant) -> Option<RouteEvent> {
        if self.events.is_empty() && (self.dirty || self.poll_timeout().is_some_and(|at| at <= now))
        {
            self.dirty = false;
            self.pass(now);
        }
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.queue.next_fallback(self.topic_fallback)
    }

    fn view(&self) -> &dyn QueueView {
        &self.queue
    }
}

/// A router that holds every command back for `delay` before its inner
/// router sees it, the way a router shared between relays answers after a
/// round trip. Its view lags by as much.
#[cfg(any(test, feature = "test-support"))]
pub struct Delayed<R: Router> {
    inner: R,
    delay: Duration,
    /// Commands given since the last poll, and those held until their time.
    given: Vec<RouteCommand>,
    held: VecDeque<(Instant, RouteCommand)>,
}

#[cfg(any(test, feature = "test-support"))]
impl<R: Router> Delayed<R> {
    pub fn new(inner: R, delay: Duration) -> Self {
        Delayed {
            inner,
            delay,
            given: Vec::new(),
            held: VecDeque::new(),
        }
    }
}

#[cfg(any(test, feature = "test-support"))]
impl<R: Router> Router for Delayed<R> {
    fn handle_command(&mut self, command: RouteCommand) {
        self.given.push(command);
    }

    fn poll_event(&mut self, now: Instant) -> Option<RouteEvent> {
        for command in self.given.drain(..) {
            self.held.push_back((now + self.delay, command));
        }
        while let Some((at, _)) = self.held.front()
            && *at <= now
        {
            if let Some((_, command)) = self.held.pop_front() {
                self.inner.handle_command(command);
            }
        }
        self.inner.poll_event(now)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let held = self.held.front().map(|(at, _)| *at);
        [held, self.inner.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    fn view(&self) -> &dyn QueueView {
        self.inner.view()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(turn: u64, since: Instant) -> Request {
        Request {
            topic: None,
            language: None,
            since,
            turn,
            priority: false,
            source: None,
        }
    }

    fn offer(load: usize, capacity: usize) -> Offer {
        Offer {
            pairings_seen: 0,
            available: true,
            load,
            capacity,
            topics: Vec::new(),
            languages: Vec::new(),
        }
    }

    #[test]
    fn the_estimate_needs_two_pairings_and_promises_at_least_a_second() {
        let t0 = Instant::now();
        let mut e = WaitEstimate::default();
        assert_eq!(e.for_position(3), None);
        e.record_pairing(t0);
        assert_eq!(e.for_position(3), None, "one pairing is no pace yet");
        e.record_pairing(t0 + Duration::from_secs(60));
        assert_eq!(e.for_position(3), Some(180));
        e.record_pairing(t0 + Duration::from_secs(60));
        // 0.3 × 0 s + 0.7 × 60 s = 42 s a place.
        assert_eq!(e.for_position(1), Some(42));
        let mut quick = WaitEstimate::default();
        quick.record_pairing(t0);
        quick.record_pairing(t0);
        assert_eq!(quick.for_position(1), Some(1), "never 0 s");
    }

    fn drain(router: &mut impl Router, now: Instant) -> Vec<RouteEvent> {
        std::iter::from_fn(|| router.poll_event(now)).collect()
    }

    #[test]
    fn the_local_router_answers_on_the_next_poll_with_pairs_then_positions_then_counts() {
        let now = Instant::now();
        let mut router = LocalRouter::new(Duration::from_secs(120));
        for n in 1..=2 {
            let (client, request) = (ConnId(n), request(n, now));
            router.handle_command(RouteCommand::Enqueue { client, request });
        }
        let (counsellor, offer) = (ConnId(10), offer(0, 1));
        router.handle_command(RouteCommand::Offer { counsellor, offer });
        assert_eq!(
            drain(&mut router, now),
            vec![
                RouteEvent::Paired {
                    client: ConnId(1),
                    counsellor: ConnId(10)
                },
                RouteEvent::Queued {
                    client: ConnId(2),
                    position: 1,
                    estimated_wait_secs: None,
                    announce: true
                },
                RouteEvent::QueueStats {
                    waiting: vec![(None, 1)]
                },
            ]
        );
        assert_eq!(drain(&mut router, now), vec![], "nothing changed since");
        assert_eq!(router.view().waiting_count(), 1);
    }

    #[test]
    fn a_delayed_router_answers_only_once_its_commands_come_due() {
        let now = Instant::now();
        let delay = Duration::from_millis(300);
        let mut router = Delayed::new(LocalRouter::new(Duration::from_secs(120)), delay);
        let (client, request) = (ConnId(1), request(1, now));
        router.handle_command(RouteCommand::Enqueue { client, request });
        assert_eq!(drain(&mut router, now), vec![]);
        assert_eq!(router.view().waiting_count(), 0, "the view lags too");
        assert_eq!(router.poll_timeout(), Some(now + delay));
        let events = drain(&mut router, now + delay);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(router.poll_timeout(), None);
    }

    #[test]
    fn the_topic_fallback_is_the_routers_timer() {
        let now = Instant::now();
        let fallback = Duration::from_secs(120);
        let mut router = LocalRouter::new(fallback);
        let mut wants_topic = request(1, now);
        wants_topic.topic = TopicId::new(1);
        let client = ConnId(1);
        router.handle_command(RouteCommand::Enqueue {
            client,
            request: wants_topic,
        });
        let mut other_topic = offer(0, 1);
        other_topic.topics = TopicId::new(2).into_iter().collect();
        let counsellor = ConnId(10);
        router.handle_command(RouteCommand::Offer {
            counsellor,
            offer: other_topic,
        });
        assert!(
            !drain(&mut router, now)
                .iter()
                .any(|e| matches!(e, RouteEvent::Paired { .. }))
        );
        assert_eq!(router.poll_timeout(), Some(now + fallback));
        assert_eq!(
            drain(&mut router, now + fallback).first(),
            Some(&RouteEvent::Paired { client, counsellor })
        );
        assert_eq!(router.poll_timeout(), None);
    }
}
