//! The relay state machine (PROTOCOL.md §7.3): connections, the queue, and
//! the chats that link a client to a counsellor, here or on another relay.
//!
//! Inputs: [`Relay::handle_connect`] when a QUIC connection with its control
//! stream is up, [`Relay::handle_data`] with bytes read from that stream,
//! [`Relay::handle_finish`] when the peer finished its stream,
//! [`Relay::handle_disconnect`] when the connection is gone (and how: left
//! or lost), [`Relay::handle_timeout`] when [`Relay::poll_timeout`]'s instant
//! has passed, and [`Relay::handle_shutdown`]. Outputs:
//! [`Relay::poll_output`] yields bytes to write to a connection,
//! connections to close, and paused connections that may be read again.
//!
//! Bytes are decoded into a small per-connection backlog and acted on at
//! the rate the connection's budgets allow: FORWARD frames against a budget
//! per chat, everything else against one per connection. A frame over
//! budget waits; [`Relay::handle_data`] then tells the shell to stop reading
//! ([`Flow::Pause`]) until [`Output::Unblock`], so QUIC flow control holds a
//! fast sender back instead of the relay cutting it off (§8.1).
//!
//! A client says HELLO, learns the topics and languages (WELCOME, TOPIC),
//! and JOINs the queue with a proof of work unless the service is closed or
//! full. While it waits it hears its position and estimated wait (QUEUED),
//! and in a crowded queue it proves work again from time to time
//! (CHALLENGE, PROOF). Counsellors say what they take (STATUS) and hear of
//! their colleagues (COLLEAGUE). The queue and the choice of pairs are the
//! [`Router`]'s: the core hands it commands (a client enters or leaves the
//! queue, a counsellor's room changes) and acts on its events after every
//! input, and at its `poll_timeout`. An answer may come late; the core
//! never relies on one being immediate. The core announces pairs (PAIRED),
//! forwards FORWARD blobs without interpreting them, and carries out END,
//! block and TRANSFER. A chat's other side is a local connection, a side
//! that is away, or a side on another relay, which the router reaches by
//! the chat's pairing id (`remote.rs`). Every state
//! an anonymous connection can be in has a deadline, and a pairing whose
//! young person never starts the handshake is undone.
//!
//! A connection that ends on purpose (an application close, or the end of
//! its stream) has left: its chats end at once. One that is lost keeps its
//! chats, and a waiting client its place, for the resume window: the
//! capability it holds (JOINED, PAIRED) brings it back on a new connection
//! (RESUME). A bad frame closes only the connection that sent it; its chat
//! partners are told with END and carry on. When a chat ends every trace of
//! it is dropped; the wait estimate is one running average.
//!
//! No step scans every connection: deadlines sit in a sorted index
//! (`timers.rs`) that each event updates for the connections it touched,
//! tickets and capabilities are found through maps, and the queue reports
//! only the positions that moved.
//!
//! This file holds the state (connections, chat sides, what is away, the
//! indexes); the behaviour is split by job, one file each: `connections.rs`
//! (admission, decoding and pacing, dispatch, HELLO, closing, the end of
//! each event), `queue.rs` (JOIN, rent, the router's answers: pairs, QUEUED
//! and QUEUE_STATS), `chats.rs` (PAIRED, FORWARD, END, TRANSFER, offers and
//! presence), `remote.rs` (chats whose other side is on another relay:
//! pairing halves and the messages between the sides), `resumption.rs`
//! (detaching, RESUME, tickets), `codings.rs` (the case coding form and
//! batches of codings), `handover.rs` (a RESUME on one relay of
//! what another holds), `timers.rs`, and
//! `stage.rs` ([`Stage`]: what a connection may send, which its own task
//! checks too).

mod chats;
mod codings;
mod connections;
mod handover;
mod queue;
mod remote;
mod resumption;
mod stage;
mod timers;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand_core::{CryptoRng, RngCore};

use super::frame::{
    Blob, ChatNumber, EndReason, Frame, FrameDecoder, FromRelay, Label, Language, MAX_LANGUAGES,
    MAX_TOPICS, PROTOCOL_VERSION, PairingId, PowChallenge, Presence, Refusal, ResumeCapability,
    Role, ToRelay, TopicId, TransferTarget, Unavailable,
};
use super::limits::{Limits, Service};
pub use super::pairing::ConnId;
use super::pairing::{Offer, Request};
use super::ratelimit::{Pow, SourceTag, TokenBucket, challenge_lifetime, pow_valid};
use super::router::{
    CapHash, ClaimId, Claimant, Handed, HandedSide, LocalRouter, PeerMessage, Resumes,
    RouteCommand, RouteEvent, Router, SideKey,
};
use super::stats::{Gauges, Stats};
use super::{CloseCode, Departure, Now};
use sha2::{Digest, Sha256};
pub use stage::Stage;
use timers::Deadlines;

/// An RNG fit for pairing ids: cryptographically strong, owned by the core.
pub trait RelayRng: RngCore + CryptoRng + Send {}
impl<T: RngCore + CryptoRng + Send> RelayRng for T {}

/// What the relay learned from the TLS handshake about who is connecting.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// No client certificate: an anonymous client.
    Anonymous,
    /// A client certificate issued by the organisation's counsellor CA.
    Counsellor { pseudonym: String },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Counsellor { .. } => f.write_str("Counsellor"),
        }
    }
}

/// Something the shell must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Write these encoded frames to the connection's stream, in order.
    Send { conn: ConnId, bytes: Vec<u8> },
    /// Close the connection with this code. With `flush`, after what was
    /// queued for it has been written; without, at once, dropping it. The
    /// core has already forgotten the connection.
    Close {
        conn: ConnId,
        code: CloseCode,
        flush: bool,
    },
    /// A connection whose reading was paused may be read again.
    Unblock { conn: ConnId },
    /// FORWARD frames that `conn` sends in `chat` may go straight to this
    /// [`Route`], without the core (`None`: no longer). A route is granted
    /// once the core has sent the other side everything that must come
    /// before (PAIRED, RESUMED, held frames) and the pairing stands, and it
    /// is withdrawn before anything that must come after (END, PEER_AWAY).
    /// A shell may ignore routes: the core forwards every FORWARD it is
    /// given either way.
    Route {
        conn: ConnId,
        chat: ChatNumber,
        to: Option<Route>,
    },
    /// Add this batch of codings, checked against `form`, to the month's
    /// counters, all of it or none, and answer with
    /// [`Relay::handle_codings_stored`]. Nothing ties it to `conn` but the
    /// answer.
    StoreCodings {
        conn: ConnId,
        batch: crate::core::coding::BatchId,
        form: std::sync::Arc<crate::core::coding::CodingForm>,
        codings: Vec<crate::core::coding::Coding>,
    },
}

impl Output {
    /// The connection this output is for.
    pub fn conn(&self) -> ConnId {
        match self {
            Output::Send { conn, .. }
            | Output::Close { conn, .. }
            | Output::Unblock { conn }
            | Output::Route { conn, .. }
            | Output::StoreCodings { conn, .. } => *conn,
        }
    }
}

/// Where FORWARD frames of one chat side go: the other side's connection
/// and its chat number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub conn: ConnId,
    pub chat: ChatNumber,
}

/// Whether the shell may go on reading a connection after
/// [`Relay::handle_data`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read on.
    Read,
    /// Stop reading until [`Output::Unblock`]: the connection is over its
    /// budget and the frames already read wait their turn.
    Pause,
}

/// The relay refused a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// `max_connections` or `max_anonymous_connections` are reached and no
    /// idle connection could make room, or the relay is shutting down.
    #[error("too many connections")]
    TooManyConnections,
}

/// The length of every FORWARD frame, header included.
const FORWARD_FRAME_LEN: u64 = (super::frame::HEADER_LEN + 4 + super::frame::BLOB_LEN) as u64;

fn cap_hash(capability: &ResumeCapability) -> CapHash {
    Sha256::digest(capability.0).into()
}

/// Where the other side of a chat is.
#[derive(Debug, Clone, Copy)]
enum Peer {
    /// Connected: its connection and its chat number there.
    Live { conn: ConnId, chat: ChatNumber },
    /// Its connection dropped; it may resume with the capability whose hash this is.
    Away(CapHash),
    /// On another relay: messages go through the router to this side.
    Remote(RemotePeer),
}

/// The topic and language a young person chose in JOIN.
type Choice = (Option<TopicId>, Option<Language>);

/// The other side of a chat, on another relay.
#[derive(Debug, Clone, Copy)]
struct RemotePeer {
    key: SideKey,
    /// It said it is away (its relay holds what is sent to it).
    away: bool,
    /// The young person's topic and language, kept on the counsellor's
    /// side for a colleague's PAIRED should the chat be transferred.
    choice: Choice,
}

/// Where a chat side of this relay whose peer is remote is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Live(ConnId, ChatNumber),
    Away(CapHash),
}

/// A client's side of a chat before it was heard from in the chat: what a
/// client whose PAIRED was lost with its connection needs to get the chat
/// (its ticket, the pairing id) or its place back (its request).
#[derive(Debug, Clone, Copy)]
struct Unconfirmed {
    ticket: CapHash,
    pairing_id: PairingId,
    request: Request,
}

/// One side of a live chat: where its frames go, the hash of this side's
/// own resume capability, and its budget of FORWARD frames.
#[derive(Debug, Clone)]
struct Link {
    /// The chat's pairing id: with the role, this side's key in a cluster.
    pairing: PairingId,
    peer: Peer,
    mine: CapHash,
    unconfirmed: Option<Unconfirmed>,
    forward: TokenBucket,
    /// A client's side until its handshake message 1: when the pairing is
    /// undone if that message has not come.
    handshake_due: Option<Instant>,
    /// A young person's side whose counsellor is on another relay, from
    /// its handshake message 1 until the counsellor's side first answers:
    /// its place in the queue, should the counsellor's relay refuse its
    /// half (no room any more: the router's view of it was late).
    place_if_refused: Option<Request>,
    /// The route the shell was last given for this side.
    route: Option<Route>,
}

/// A connection's live chats by its own chat number, in order. A young
/// person has one and a counsellor a handful, so a sorted list that grows
/// one place at a time: a B-tree's first node holds room for eleven links
/// on every connection, chatting or not.
#[derive(Debug, Default)]
struct Links(Vec<(ChatNumber, Link)>);

impl Links {
    fn find(&self, chat: &ChatNumber) -> Result<usize, usize> {
        self.0.binary_search_by_key(chat, |(c, _)| *c)
    }

    fn get(&self, chat: &ChatNumber) -> Option<&Link> {
        let at = self.find(chat).ok()?;
        self.0.get(at).map(|(_, link)| link)
    }

    fn get_mut(&mut self, chat: &ChatNumber) -> Option<&mut Link> {
        let at = self.find(chat).ok()?;
        self.0.get_mut(at).map(|(_, link)| link)
    }

    fn contains_key(&self, chat: &ChatNumber) -> bool {
        self.find(chat).is_ok()
    }

    fn insert(&mut self, chat: ChatNumber, link: Link) -> Option<Link> {
        match self.find(&chat) {
            Ok(at) => self
                .0
                .get_mut(at)
                .map(|(_, old)| std::mem::replace(old, link)),
            Err(at) => {
                self.0.reserve_exact(1);
                self.0.insert(at, (chat, link));
                None
            }
        }
    }

    fn remove(&mut self, chat: &ChatNumber) -> Option<Link> {
        let at = self.find(chat).ok()?;
        let (_, link) = self.0.remove(at);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(link)
    }

    fn clear(&mut self) {
        self.0 = Vec::new();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn keys(&self) -> impl Iterator<Item = &ChatNumber> {
        self.0.iter().map(|(chat, _)| chat)
    }

    fn values(&self) -> impl Iterator<Item = &Link> {
        self.0.iter().map(|(_, link)| link)
    }

    fn iter(&self) -> impl Iterator<Item = (&ChatNumber, &Link)> {
        self.0.iter().map(|(chat, link)| (chat, link))
    }
}

/// One side of a chat whose connection dropped, waiting to be resumed.
struct Detached {
    pairing: PairingId,
    role: Role,
    /// A counsellor must come back with the same sign-in name.
    pseudonym: Option<String>,
    peer: Peer,
    deadline: Instant,
    /// Frames from the other side, held until this side is back.
    held: VecDeque<Blob>,
    unconfirmed: Option<Unconfirmed>,
    handshake_due: Option<Instant>,
}

/// A waiting client whose connection dropped: its place, kept until `until`.
struct AwayFromQueue {
    waiting: Waiting,
    until: Instant,
}

/// The periodic proof of work a waiting client owes in a crowded queue.
#[derive(Debug, Clone, Copy)]
struct Rent {
    /// When the next CHALLENGE may be due; `None`: this client pays none
    /// (transferred back to the queue, or rent is off).
    next_at: Option<Instant>,
    /// A CHALLENGE sent and not yet answered, and its deadline.
    owed: Option<(PowChallenge, Instant)>,
}

#[derive(Debug, Clone, Copy)]
struct Waiting {
    /// What it asked for, and its turn: its place in the queue.
    request: Request,
    /// When the client joined the queue.
    since: Instant,
    /// Wait over at this instant: the client is let go.
    deadline: Instant,
    /// When the client must next hear from the relay.
    next_update: Instant,
    last_sent: Option<(u32, Option<u32>)>,
    rent: Rent,
}

#[derive(Debug)]
enum ClientStage {
    /// WELCOME sent with this challenge; JOIN expected by `deadline`.
    Welcomed {
        challenge: PowChallenge,
        deadline: Instant,
    },
    /// In the queue.
    Waiting(Waiting),
    /// In a chat (or between the two halves of a transfer).
    InChat,
}

#[derive(Debug)]
struct CounsellorState {
    available: bool,
    capacity: usize,
    /// The router's pairings with this counsellor taken in so far
    /// ([`Offer::pairings_seen`]).
    pairings_seen: u64,
    topics: Vec<TopicId>,
    languages: Vec<Language>,
    last_stats: Option<Vec<(Option<TopicId>, u16)>>,
}

#[derive(Debug)]
enum State {
    AwaitingHello { deadline: Instant },
    Client(ClientStage),
    Counsellor(CounsellorState),
}

/// Something read from a connection and not yet acted on.
enum Pending {
    Frame(ToRelay),
    /// The bytes after the frames before it were not a valid frame.
    Invalid(CloseCode),
    /// The peer finished its stream: it leaves.
    Finished,
}

struct Conn {
    /// What this connection may send, by who it is and whether it said HELLO.
    stage: Stage,
    credential: Credential,
    /// The source tag the shell gave, when it tags sources.
    source: Option<SourceTag>,
    connected_at: Instant,
    decoder: FrameDecoder,
    /// Budget for frames other than FORWARD.
    control: TokenBucket,
    /// Decoded frames waiting for budget, in order.
    backlog: VecDeque<Pending>,
    /// When the frame at the front of the backlog has budget.
    blocked_until: Option<Instant>,
    /// The shell was told to stop reading.
    paused: bool,
    /// A RESUME of this connection went to the router: what it sent after
    /// waits for the answer.
    claiming: bool,
    state: State,
    /// Live chats of this connection by its own chat number.
    links: Links,
    /// A client's queue ticket (the hash of what JOINED gave it).
    ticket: Option<CapHash>,
    /// The topic and language a client chose in JOIN.
    choice: Choice,
    /// Chat numbers below this were issued; those not in `links` have ended.
    next_chat: u32,
    /// What the relay's indexes hold for this connection: the ticket it is
    /// found under, and whether it counts as an anonymous connection that
    /// has not joined.
    indexed_ticket: Option<CapHash>,
    indexed_unjoined: bool,
    indexed_deadline: Option<Instant>,
    /// Batches of codings this connection sent that are with the store.
    codings_in_store: u8,
}

impl Conn {
    fn is_ended_chat(&self, chat: ChatNumber) -> bool {
        chat.get() < self.next_chat && !self.links.contains_key(&chat)
    }

    fn is_unjoined_client(&self) -> bool {
        self.credential == Credential::Anonymous
            && matches!(
                self.state,
                State::AwaitingHello { .. } | State::Client(ClientStage::Welcomed { .. })
            )
    }

    fn pseudonym(&self) -> Option<&str> {
        match &self.credential {
            Credential::Counsellor { pseudonym } => Some(pseudonym),
            Credential::Anonymous => None,
        }
    }

    /// The earliest instant at which the core has work for this connection.
    fn next_deadline(&self) -> Option<Instant> {
        let state = match &self.state {
            State::AwaitingHello { deadline }
            | State::Client(ClientStage::Welcomed { deadline, .. }) => Some(*deadline),
            State::Client(ClientStage::Waiting(w)) => {
                let mut t = w.deadline.min(w.next_update);
                for at in [w.rent.next_at, w.rent.owed.map(|o| o.1)]
                    .into_iter()
                    .flatten()
                {
                    t = t.min(at);
                }
                Some(t)
            }
            _ => None,
        };
        let handshakes = self.links.values().filter_map(|l| l.handshake_due).min();
        [state, handshakes, self.blocked_until]
            .into_iter()
            .flatten()
            .min()
    }
}

impl Detached {
    fn next_deadline(&self) -> Instant {
        self.handshake_due
            .map_or(self.deadline, |due| due.min(self.deadline))
    }
}

/// How much earlier than due a waiting client may hear its periodic QUEUED
/// when the relay is telling the queue anyway: heartbeats fall together
/// into one pass instead of one pass per client.
const HEARTBEAT_SLACK: Duration = Duration::from_secs(10);

/// The relay core. See the module docs for the flow.
pub struct Relay {
    limits: Limits,
    service: Service,
    rng: Box<dyn RelayRng>,
    router: Box<dyn Router>,
    conns: HashMap<ConnId, Conn>,
    next_conn: u64,
    /// Anonymous connections open now.
    anonymous: usize,
    out: VecDeque<Output>,
    admissions: TokenBucket,
    pow: Pow,
    /// Chat sides whose connection dropped, by capability hash.
    detached: HashMap<CapHash, Detached>,
    /// Waiting clients whose connection dropped, by ticket hash.
    away_from_queue: HashMap<CapHash, AwayFromQueue>,
    /// The next [`Request::turn`].
    turns: u64,
    /// Signed-in counsellor connections by pseudonym, and what their
    /// colleagues were last told about each pseudonym.
    by_name: HashMap<String, BTreeSet<ConnId>>,
    presence: BTreeMap<String, Presence>,
    /// In a cluster: what the router was last told of each pseudonym
    /// here, and what it told of each on the other relays. Colleagues here
    /// see the better of the two.
    presence_here: BTreeMap<String, Presence>,
    presence_elsewhere: BTreeMap<String, Presence>,
    stats: Stats,
    shutting_down: bool,
    /// The indexes that spare every step a scan (see the module docs).
    index: Indexes,
}

/// Lookups kept next to the tables they index.
#[derive(Default)]
struct Indexes {
    /// When each connection, side away and place kept next has work.
    conns: Deadlines<ConnId>,
    detached: Deadlines<CapHash>,
    away_from_queue: Deadlines<CapHash>,
    /// Connections this event changed: their deadlines and entries below
    /// are brought up to date when the event is done.
    touched: Vec<ConnId>,
    /// Anonymous connections that have not joined, oldest first.
    unjoined: BTreeSet<(Instant, ConnId)>,
    /// Connections by the queue ticket they hold.
    tickets: HashMap<CapHash, ConnId>,
    /// Live chat sides by the hash of their own capability.
    capabilities: HashMap<CapHash, (ConnId, ChatNumber)>,
    /// Chat sides here whose other side is on another relay, by their own
    /// key: where messages from that side go.
    remote_sides: HashMap<SideKey, Place>,
    /// Chat sides of clients not yet heard from in the chat, by ticket:
    /// live ones where they are, away ones by their key in `detached`.
    unconfirmed_live: HashMap<CapHash, (ConnId, ChatNumber)>,
    unconfirmed_away: HashMap<CapHash, CapHash>,
    /// Places kept in `away_from_queue`, per source.
    away_per_source: HashMap<SourceTag, usize>,
    /// The QUEUE_STATS counsellors were last told, all of them, and when.
    queue_stats: Option<Vec<(Option<TopicId>, u16)>>,
    queue_stats_sent: Option<Instant>,
    /// Counts that came within [`Limits::QUEUE_STATS_INTERVAL`] of the
    /// last QUEUE_STATS: sent when the interval is over.
    queue_stats_held: Option<Vec<(Option<TopicId>, u16)>>,
    /// Every waiting client is due news (an estimate or heartbeat).
    tell_whole_queue: bool,
    /// Capability and ticket hashes this event issued or dropped: the
    /// router hears which the relay holds when the event is done.
    hashes_changed: Vec<CapHash>,
    /// Keys in `remote_sides` this event added or removed: the router
    /// hears which sides the relay hosts when the event is done.
    sides_changed: Vec<SideKey>,
}

impl Indexes {
    /// A chat side here whose other side is on another relay.
    fn host_side(&mut self, key: SideKey, place: Place) {
        self.remote_sides.insert(key, place);
        self.sides_changed.push(key);
    }

    fn leave_side(&mut self, key: SideKey) {
        self.remote_sides.remove(&key);
        self.sides_changed.push(key);
    }
}

impl Relay {
    /// A relay with the in-process router. `start` is the time the relay
    /// starts; rate limits count from it.
    pub fn new(limits: Limits, service: Service, rng: Box<dyn RelayRng>, start: Instant) -> Self {
        let router = Box::new(LocalRouter::new(limits.topic_fallback));
        Relay::with_router(limits, service, rng, router, start)
    }

    /// A relay whose queue and pairing are `router`'s.
    pub fn with_router(
        limits: Limits,
        service: Service,
        rng: Box<dyn RelayRng>,
        router: Box<dyn Router>,
        start: Instant,
    ) -> Self {
        Relay {
            admissions: TokenBucket::new(limits.admissions_per_sec, limits.admissions_burst, start),
            pow: Pow::new(
                limits.pow_min_difficulty,
                limits.pow_max_difficulty,
                limits.pow_target_arrivals_per_sec,
                start,
            ),
            limits,
            service,
            rng,
            router,
            conns: HashMap::new(),
            next_conn: 1,
            anonymous: 0,
            out: VecDeque::new(),
            detached: HashMap::new(),
            away_from_queue: HashMap::new(),
            turns: 0,
            by_name: HashMap::new(),
            presence: BTreeMap::new(),
            presence_here: BTreeMap::new(),
            presence_elsewhere: BTreeMap::new(),
            stats: Stats::default(),
            shutting_down: false,
            index: Indexes::default(),
        }
    }

    /// The next thing the shell must do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Number of open connections and waiting clients, for tests and metrics.
    pub fn counts(&self) -> (usize, usize) {
        (self.conns.len(), self.router.view().waiting_count())
    }

    /// What was counted since the last call; counting starts afresh.
    pub fn take_stats(&mut self) -> Stats {
        std::mem::take(&mut self.stats)
    }

    /// The relay's state right now, for metrics.
    pub fn gauges(&self, now: Now) -> Gauges {
        let mut g = Gauges {
            open: self.service.hours.is_open(now.unix),
            pow_difficulty: self.pow_difficulty(),
            waiting_away: self.away_from_queue.len(),
            sides_away: self.detached.len(),
            ..Gauges::default()
        };
        for c in self.conns.values() {
            match &c.state {
                State::AwaitingHello { .. } => g.unidentified += 1,
                State::Client(stage) => {
                    g.clients += 1;
                    if matches!(stage, ClientStage::Welcomed { .. }) {
                        g.clients_not_joined += 1;
                    }
                }
                State::Counsellor(s) => {
                    g.counsellors += 1;
                    g.chats += c.links.len();
                    if s.available && c.links.len() < s.capacity {
                        g.counsellors_with_room += 1;
                    }
                }
            }
        }
        // Chats whose counsellor side is away are counted once, there.
        g.chats += self
            .detached
            .values()
            .filter(|d| d.role == Role::Counsellor)
            .count();
        g.waiting.extend(self.router.view().waiting_per_topic());
        g
    }
}

/// A relay on a virtual clock for the unit tests next to each job's file.
#[cfg(test)]
mod test_support {
    use std::time::{Duration, Instant};

    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::{ConnId, Credential, LocalRouter, Output, Relay, Router};
    use crate::core::frame::{
        BLOB_LEN, Blob, ChatNumber, EndReason, Frame, FrameDecoder, PROTOCOL_VERSION, PairingId,
        ResumeCapability, Role, TopicId,
    };
    use crate::core::limits::{Limits, Service};
    use crate::core::router::Linked;
    use crate::core::{CloseCode, Departure, Now};

    pub(super) struct Bench {
        pub relay: Relay,
        pub now: Now,
    }

    /// What the relay did, decoded.
    #[derive(Debug, Clone, PartialEq)]
    pub(super) enum Did {
        Sent(ConnId, Frame),
        Closed(ConnId, CloseCode),
        /// A batch of this many codings went to the store, which stored it.
        Stored(ConnId, usize),
    }

    impl Bench {
        /// A relay without proof of work, on a weekday morning.
        pub fn new() -> Bench {
            Bench::with(Limits {
                pow_min_difficulty: 0,
                pow_max_difficulty: 0,
                ..Limits::default()
            })
        }

        pub fn with(limits: Limits) -> Bench {
            let router = Box::new(LocalRouter::new(limits.topic_fallback));
            Bench::with_router(limits, router, Instant::now(), 1)
        }

        /// A relay whose queue is `router`'s; `seed` seeds its RNG.
        pub fn with_router(
            limits: Limits,
            router: Box<dyn Router>,
            start: Instant,
            seed: u64,
        ) -> Bench {
            let rng = Box::new(ChaCha20Rng::seed_from_u64(seed));
            Bench {
                relay: Relay::with_router(limits, Service::default(), rng, router, start),
                now: Now {
                    mono: start,
                    unix: 1_799_053_200,
                },
            }
        }

        pub fn connect(&mut self, credential: Credential) -> ConnId {
            let conn = self.relay.handle_connect(self.now, credential);
            conn.unwrap_or_else(|e| panic!("connect: {e}"))
        }

        pub fn send(&mut self, conn: ConnId, frame: Frame) -> Vec<Did> {
            self.relay.handle_data(self.now, conn, &frame.encode());
            self.drain()
        }

        pub fn after(&mut self, secs: u64) -> Vec<Did> {
            self.now.advance(Duration::from_secs(secs));
            self.relay.handle_timeout(self.now);
            self.drain()
        }

        pub fn drain(&mut self) -> Vec<Did> {
            assert_eq!(self.relay.poll_timeout(), self.relay.poll_timeout_by_scan());
            let mut did = Vec::new();
            while let Some(out) = self.relay.poll_output() {
                match out {
                    Output::Send { conn, bytes } => {
                        let mut frames = Vec::new();
                        let decoded = FrameDecoder::default().push(&bytes, &mut frames);
                        assert!(decoded.is_ok());
                        did.extend(frames.into_iter().map(|f| Did::Sent(conn, f)));
                    }
                    Output::Close { conn, code, .. } => did.push(Did::Closed(conn, code)),
                    Output::Unblock { .. } | Output::Route { .. } => {}
                    Output::StoreCodings {
                        conn,
                        batch,
                        codings,
                        ..
                    } => {
                        did.push(Did::Stored(conn, codings.len()));
                        self.relay.handle_codings_stored(
                            conn,
                            batch,
                            crate::core::coding::CodingsOutcome::Stored,
                        );
                    }
                }
            }
            did
        }

        pub fn hello(&mut self, conn: ConnId, role: Role) -> Vec<Did> {
            let version = PROTOCOL_VERSION;
            self.send(conn, Frame::Hello { version, role })
        }

        /// A young person in the queue (or paired at once).
        pub fn client(&mut self) -> (ConnId, Vec<Did>) {
            let conn = self.connect(Credential::Anonymous);
            self.hello(conn, Role::Client);
            let join = Frame::Join {
                topic: None,
                language: None,
                pow_solution: [0; 8],
            };
            (conn, self.send(conn, join))
        }

        /// A counsellor who is available for `capacity` chats.
        pub fn counsellor(&mut self, name: &str, capacity: u8) -> ConnId {
            let conn = self.connect(Credential::Counsellor {
                pseudonym: name.into(),
            });
            self.hello(conn, Role::Counsellor);
            let status = Frame::Status {
                available: true,
                capacity,
                topics: Vec::new(),
                languages: Vec::new(),
            };
            self.send(conn, status);
            conn
        }
    }

    /// Relays sharing one queue on one virtual clock: two, A (0) and B
    /// (1), unless made with [`Cluster::with_nodes`].
    pub(in crate::core::relay) struct Cluster {
        pub nodes: Vec<Bench>,
        pub linked: Linked,
    }

    /// A chat across two relays (see [`Cluster::chat_across`]).
    pub(in crate::core::relay) struct Across {
        pub y: ConnId,
        pub y_chat: ChatNumber,
        pub sam: ConnId,
        pub s_chat: ChatNumber,
        pub s_cap: ResumeCapability,
    }

    pub(in crate::core::relay) const A: usize = 0;
    pub(in crate::core::relay) const B: usize = 1;

    impl Cluster {
        pub fn new() -> Cluster {
            Cluster::with_latency(Duration::ZERO)
        }

        pub fn with_latency(latency: Duration) -> Cluster {
            Cluster::with_nodes(2, latency)
        }

        /// `count` relays whose router's answers each take `latency`.
        pub fn with_nodes(count: u16, latency: Duration) -> Cluster {
            let limits = Limits {
                pow_min_difficulty: 0,
                pow_max_difficulty: 0,
                ..Limits::default()
            };
            let linked = Linked::with_latency(limits.topic_fallback, latency);
            let start = Instant::now();
            let node = |n: u16| {
                let router = Box::new(linked.router(n));
                Bench::with_router(limits.clone(), router, start, u64::from(n) + 1)
            };
            Cluster {
                nodes: (0..count).map(node).collect(),
                linked,
            }
        }

        /// Nothing done yet, on any relay.
        pub fn nothing(&self) -> Vec<Vec<Did>> {
            vec![Vec::new(); self.nodes.len()]
        }

        /// Lets each relay act on what the other sent it, until neither
        /// has anything due; what each did.
        pub fn settle(&mut self, mut did: Vec<Vec<Did>>) -> Vec<Vec<Did>> {
            for _ in 0..32 {
                let mut quiet = true;
                for (n, bench) in self.nodes.iter_mut().enumerate() {
                    if bench
                        .relay
                        .poll_timeout()
                        .is_some_and(|t| t <= bench.now.mono)
                    {
                        quiet = false;
                        bench.relay.handle_timeout(bench.now);
                        did[n].extend(bench.drain());
                    }
                }
                if quiet {
                    return did;
                }
            }
            panic!("the relays keep waking each other");
        }

        /// Sam, available for one chat on relay B, paired with a young
        /// person who joins on relay A.
        pub fn chat_across(&mut self) -> Across {
            let sam = self.counsellor(B, "Sam", 1);
            let (y, did) = self.client(A, None);
            let (y_chat, _, _) = paired(&to(&did[A], y)).expect("the young person is paired");
            let (s_chat, _, s_cap) = paired(&to(&did[B], sam)).expect("Sam is paired");
            Across {
                y,
                y_chat,
                sam,
                s_chat,
                s_cap,
            }
        }

        /// A new connection on relay `n` that presents `capability`, and
        /// what both relays did; a counsellor says HELLO first.
        pub fn resume(
            &mut self,
            n: usize,
            counsellor: Option<&str>,
            capability: ResumeCapability,
        ) -> (ConnId, Vec<Vec<Did>>) {
            let credential = match counsellor {
                Some(name) => Credential::Counsellor {
                    pseudonym: name.into(),
                },
                None => Credential::Anonymous,
            };
            let conn = self.nodes[n].connect(credential);
            if counsellor.is_some() {
                self.nodes[n].hello(conn, Role::Counsellor);
            }
            (conn, self.send(n, conn, Frame::Resume { capability }))
        }

        /// Moves the clock on by `by` on every relay, and settles.
        pub fn after(&mut self, by: Duration) -> Vec<Vec<Did>> {
            for bench in &mut self.nodes {
                bench.now.advance(by);
            }
            self.settle(self.nothing())
        }

        /// `frame` from `conn` on relay `n`, and what both relays did.
        pub fn send(&mut self, n: usize, conn: ConnId, frame: Frame) -> Vec<Vec<Did>> {
            let mut did = self.nothing();
            did[n] = self.nodes[n].send(conn, frame);
            self.settle(did)
        }

        pub fn client(&mut self, n: usize, topic: Option<TopicId>) -> (ConnId, Vec<Vec<Did>>) {
            let conn = self.nodes[n].connect(Credential::Anonymous);
            self.nodes[n].hello(conn, Role::Client);
            let join = Frame::Join {
                topic,
                language: None,
                pow_solution: [0; 8],
            };
            (conn, self.send(n, conn, join))
        }

        pub fn counsellor(&mut self, n: usize, name: &str, capacity: u8) -> ConnId {
            self.sign_in(n, name, capacity).0
        }

        /// A counsellor available on relay `n`, and what both relays did.
        pub fn sign_in(&mut self, n: usize, name: &str, capacity: u8) -> (ConnId, Vec<Vec<Did>>) {
            let conn = self.nodes[n].connect(Credential::Counsellor {
                pseudonym: name.into(),
            });
            self.nodes[n].hello(conn, Role::Counsellor);
            let status = Frame::Status {
                available: true,
                capacity,
                topics: Vec::new(),
                languages: Vec::new(),
            };
            (conn, self.send(n, conn, status))
        }

        pub fn lose(&mut self, n: usize, conn: ConnId) -> Vec<Vec<Did>> {
            let now = self.nodes[n].now;
            self.nodes[n]
                .relay
                .handle_disconnect(now, conn, Departure::Lost);
            let mut did = self.nothing();
            did[n] = self.nodes[n].drain();
            self.settle(did)
        }
    }

    pub(in crate::core::relay) fn paired(
        frames: &[Frame],
    ) -> Option<(ChatNumber, PairingId, ResumeCapability)> {
        frames.iter().find_map(|f| match f {
            Frame::Paired {
                chat,
                pairing_id,
                resume,
                ..
            } => Some((*chat, *pairing_id, *resume)),
            _ => None,
        })
    }

    /// A young person hears its chat end, and the relay closes it.
    pub(in crate::core::relay) fn ended(
        y: ConnId,
        chat: ChatNumber,
        reason: EndReason,
    ) -> Vec<Did> {
        vec![
            Did::Sent(y, Frame::End { chat, reason }),
            Did::Closed(y, CloseCode::NoError),
        ]
    }

    pub(in crate::core::relay) fn forward(chat: ChatNumber, byte: u8) -> Frame {
        Frame::Forward {
            chat,
            blob: Blob::new([byte; BLOB_LEN]),
        }
    }

    /// The frames sent to `conn`.
    pub(super) fn to(did: &[Did], conn: ConnId) -> Vec<Frame> {
        did.iter()
            .filter_map(|d| match d {
                Did::Sent(c, f) if *c == conn => Some(f.clone()),
                _ => None,
            })
            .collect()
    }
}
