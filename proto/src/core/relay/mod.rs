//! The relay state machine (PROTOCOL.md §7.3): connections, the queue, and
//! the chats that link a client to a counsellor.
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
//! their colleagues (COLLEAGUE). The [`PairingBackend`] chooses pairs; the
//! core announces them (PAIRED), forwards FORWARD blobs without
//! interpreting them, and carries out END, block and TRANSFER. Every state
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
//! ([`timers`]) that each event updates for the connections it touched,
//! tickets and capabilities are found through maps, and the queue reports
//! only the positions that moved.

mod timers;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand_core::{CryptoRng, RngCore};

use super::frame::{
    Blob, ChatNumber, EndReason, Frame, FrameDecoder, Label, Language, MAX_LANGUAGES, MAX_TOPICS,
    PROTOCOL_VERSION, PairingId, PowChallenge, Presence, Refusal, ResumeCapability, Role, TopicId,
    TransferTarget, Unavailable,
};
use super::limits::{Limits, Service};
pub use super::pairing::ConnId;
use super::pairing::{LocalQueue, Offer, PairingBackend, Request};
use super::ratelimit::{Pow, SourceTag, TokenBucket, challenge_lifetime, pow_valid};
use super::stats::{Gauges, Stats};
use super::{CloseCode, Departure, Now};
use sha2::{Digest, Sha256};
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

/// The SHA-256 of a resume capability: all the relay keeps of it.
type CapHash = [u8; 32];

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
    peer: Peer,
    mine: CapHash,
    unconfirmed: Option<Unconfirmed>,
    forward: TokenBucket,
    /// A client's side until its handshake message 1: when the pairing is
    /// undone if that message has not come.
    handshake_due: Option<Instant>,
}

/// One side of a chat whose connection dropped, waiting to be resumed.
struct Detached {
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
    /// When the topic fallback starts; `None` once it has passed.
    fallback_at: Option<Instant>,
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
    Frame(Frame),
    /// The bytes after the frames before it were not a valid frame.
    Invalid(CloseCode),
    /// The peer finished its stream: it leaves.
    Finished,
}

struct Conn {
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
    state: State,
    /// Live chats of this connection by its own chat number.
    links: BTreeMap<ChatNumber, Link>,
    /// A client's queue ticket (the hash of what JOINED gave it).
    ticket: Option<CapHash>,
    /// The topic and language a client chose in JOIN.
    choice: (Option<TopicId>, Option<Language>),
    /// Chat numbers below this were issued; those not in `links` have ended.
    next_chat: u32,
    /// What the relay's indexes hold for this connection: the ticket it is
    /// found under, and whether it counts as an anonymous connection that
    /// has not joined.
    indexed_ticket: Option<CapHash>,
    indexed_unjoined: bool,
    indexed_deadline: Option<Instant>,
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
                for at in [w.fallback_at, w.rent.next_at, w.rent.owed.map(|o| o.1)]
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

/// Estimates waits from the recent pace of pairings: a running average of
/// the time between two pairings, and nothing else.
#[derive(Debug, Default)]
struct WaitEstimate {
    average_gap_secs: Option<f64>,
    last_pairing: Option<Instant>,
}

impl WaitEstimate {
    /// Weight of the newest gap in the running average.
    const WEIGHT: f64 = 0.3;

    fn record_pairing(&mut self, now: Instant) {
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
    fn for_position(&self, position: u32) -> Option<u32> {
        let secs = self.average_gap_secs? * f64::from(position);
        Some(secs.round().clamp(1.0, f64::from(u32::MAX - 1)) as u32)
    }
}

/// The relay core. See the module docs for the flow.
pub struct Relay<P: PairingBackend = LocalQueue> {
    limits: Limits,
    service: Service,
    rng: Box<dyn RelayRng>,
    pairing: P,
    conns: HashMap<ConnId, Conn>,
    next_conn: u64,
    /// Anonymous connections open now.
    anonymous: usize,
    out: VecDeque<Output>,
    estimate: WaitEstimate,
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
    /// Chat sides of clients not yet heard from in the chat, by ticket:
    /// live ones where they are, away ones by their key in `detached`.
    unconfirmed_live: HashMap<CapHash, (ConnId, ChatNumber)>,
    unconfirmed_away: HashMap<CapHash, CapHash>,
    /// Places kept in `away_from_queue`, per source.
    away_per_source: HashMap<SourceTag, usize>,
    /// The QUEUE_STATS counsellors were last told, all of them.
    queue_stats: Option<Vec<(Option<TopicId>, u16)>>,
    /// Every waiting client is due news (an estimate or heartbeat).
    tell_whole_queue: bool,
}

impl Relay<LocalQueue> {
    pub fn new(limits: Limits, service: Service, rng: Box<dyn RelayRng>, start: Instant) -> Self {
        let pairing = LocalQueue::new(limits.max_queue);
        Relay::with_backend(limits, service, rng, pairing, start)
    }
}

impl<P: PairingBackend> Relay<P> {
    /// `start` is the time the relay starts; rate limits count from it.
    pub fn with_backend(
        limits: Limits,
        service: Service,
        rng: Box<dyn RelayRng>,
        pairing: P,
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
            pairing,
            conns: HashMap::new(),
            next_conn: 1,
            anonymous: 0,
            out: VecDeque::new(),
            estimate: WaitEstimate::default(),
            detached: HashMap::new(),
            away_from_queue: HashMap::new(),
            turns: 0,
            by_name: HashMap::new(),
            presence: BTreeMap::new(),
            stats: Stats::default(),
            shutting_down: false,
            index: Indexes::default(),
        }
    }

    /// A connection and its control stream are up. The peer has
    /// `limits.hello_timeout` to send HELLO.
    pub fn handle_connect(
        &mut self,
        now: Now,
        credential: Credential,
    ) -> Result<ConnId, ConnectError> {
        self.handle_connect_from(now, credential, None)
    }

    /// As [`Relay::handle_connect`], with the tag of the connection's source
    /// when the shell tags sources (PROTOCOL.md §8.1, per-address limits).
    /// At the anonymous cap the oldest anonymous connection that has not
    /// joined the queue makes room, so that connections which never join
    /// cannot keep out those that will.
    pub fn handle_connect_from(
        &mut self,
        now: Now,
        credential: Credential,
        source: Option<SourceTag>,
    ) -> Result<ConnId, ConnectError> {
        if self.shutting_down {
            return Err(ConnectError::TooManyConnections);
        }
        let anonymous = credential == Credential::Anonymous;
        if anonymous && self.anonymous >= self.limits.max_anonymous_connections {
            // Whatever its age: a flood that reconnects as fast as it is
            // pushed out must not keep newcomers out; a newcomer can only be
            // pushed out in turn by as many newer connections as there are
            // connections that have not joined.
            match self.index.unjoined.first() {
                Some(&(_, id)) => {
                    self.close(id, CloseCode::Busy, true);
                    self.settle();
                }
                None => return Err(ConnectError::TooManyConnections),
            }
        }
        if self.conns.len() >= self.limits.max_connections {
            return Err(ConnectError::TooManyConnections);
        }
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        if anonymous {
            self.anonymous += 1;
        }
        self.conns.insert(
            id,
            Conn {
                credential,
                source,
                connected_at: now.mono,
                decoder: FrameDecoder::default(),
                control: TokenBucket::new(
                    self.limits.control_frames_per_sec,
                    self.limits.control_frames_burst,
                    now.mono,
                ),
                backlog: VecDeque::new(),
                blocked_until: None,
                paused: false,
                state: State::AwaitingHello {
                    deadline: now.mono + self.limits.hello_timeout,
                },
                links: BTreeMap::new(),
                ticket: None,
                choice: (None, None),
                next_chat: 1,
                indexed_ticket: None,
                indexed_unjoined: false,
                indexed_deadline: None,
            },
        );
        self.touch(id);
        self.end_event(now);
        Ok(id)
    }

    /// Bytes arrived on the connection's control stream. The frames in them
    /// are acted on as far as the connection's budgets allow; the rest wait.
    pub fn handle_data(&mut self, now: Now, conn: ConnId, bytes: &[u8]) -> Flow {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Flow::Read;
        };
        let mut frames = Vec::new();
        let result = c.decoder.push(bytes, &mut frames);
        // Frames decoded before a bad one are still acted on, in order.
        c.backlog.extend(frames.into_iter().map(Pending::Frame));
        if let Err(e) = result {
            c.backlog.push_back(Pending::Invalid(e.close_code()));
        }
        let flow = self.drain_backlog(now, conn, true);
        self.touch(conn);
        self.end_event(now);
        flow
    }

    /// The peer finished its side of the stream: after the frames it sent,
    /// it leaves (PROTOCOL.md §3.2), and the relay closes the connection.
    pub fn handle_finish(&mut self, now: Now, conn: ConnId) -> Flow {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Flow::Read;
        };
        c.backlog.push_back(Pending::Finished);
        let flow = self.drain_backlog(now, conn, true);
        self.touch(conn);
        self.end_event(now);
        flow
    }

    /// The connection is gone. Frames already read are acted on first.
    /// [`Departure::Left`]: its chats end at once, a waiting client leaves
    /// the queue for good. [`Departure::Lost`]: its chats, and a waiting
    /// client's place, wait `resume_window` for it (PROTOCOL.md §7.4).
    pub fn handle_disconnect(&mut self, now: Now, conn: ConnId, departure: Departure) {
        self.drain_backlog(now, conn, false);
        if self.conns.contains_key(&conn) {
            match departure {
                Departure::Lost => self.detach(now, conn),
                Departure::Left(reason) => self.leave(conn, reason),
            }
            self.forget(now, conn);
        }
        self.end_event(now);
    }

    /// Acts on the backlog while budget allows (or all of it, when the
    /// connection is gone and `paced` is false).
    fn drain_backlog(&mut self, now: Now, conn: ConnId, paced: bool) -> Flow {
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return Flow::Read;
            };
            let Some(front) = c.backlog.front() else {
                c.blocked_until = None;
                if std::mem::take(&mut c.paused) {
                    self.out.push_back(Output::Unblock { conn });
                }
                return Flow::Read;
            };
            if paced {
                let bucket = match front {
                    Pending::Frame(Frame::Forward { chat, .. }) => {
                        c.links.get_mut(chat).map(|l| &mut l.forward)
                    }
                    Pending::Frame(_) => Some(&mut c.control),
                    Pending::Invalid(_) | Pending::Finished => None,
                };
                if let Some(bucket) = bucket
                    && !bucket.take(now.mono, 1.0)
                {
                    c.blocked_until = Some(bucket.ready_at(now.mono, 1.0));
                    c.paused = true;
                    return Flow::Pause;
                }
            }
            let Some(item) = c.backlog.pop_front() else {
                continue;
            };
            match item {
                Pending::Frame(frame) => {
                    if let Err(code) = self.handle_frame(now, conn, frame) {
                        self.close(conn, code, true);
                    }
                }
                Pending::Invalid(code) => self.close(conn, code, true),
                Pending::Finished => {
                    self.leave(conn, EndReason::UserEnded);
                    self.close(conn, CloseCode::NoError, true);
                    self.pair_waiting(now);
                }
            }
        }
    }

    /// Acts on every deadline at or before `now`.
    pub fn handle_timeout(&mut self, now: Now) {
        self.pow.tick(now.mono);
        let mut expired = Vec::new();
        let mut unstarted = Vec::new();
        for h in self.index.detached.due(now.mono) {
            match self.detached.get(&h) {
                Some(d) if d.deadline <= now.mono => expired.push(h),
                Some(_) => unstarted.push(h),
                None => {}
            }
        }
        expired.sort();
        unstarted.sort();
        for h in expired {
            self.expire(h);
        }
        for h in unstarted {
            self.undo_unstarted_pairing(now, h);
        }
        for ticket in self.index.away_from_queue.due(now.mono) {
            self.remove_away(&ticket);
        }

        let mut late = Vec::new();
        let mut wait_over = Vec::new();
        let mut rent_due = Vec::new();
        let mut rent_unpaid = Vec::new();
        let mut unblocked = Vec::new();
        let mut due = self.index.conns.due(now.mono);
        due.sort();
        for id in due {
            self.index.touched.push(id);
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.blocked_until.is_some_and(|t| t <= now.mono) {
                unblocked.push(id);
            }
            if c.links
                .values()
                .any(|l| l.handshake_due.is_some_and(|t| t <= now.mono))
            {
                late.push(id);
            }
            match &mut c.state {
                State::AwaitingHello { deadline }
                | State::Client(ClientStage::Welcomed { deadline, .. })
                    if *deadline <= now.mono =>
                {
                    late.push(id)
                }
                State::Client(ClientStage::Waiting(w)) => {
                    if w.deadline <= now.mono {
                        wait_over.push(id);
                    } else if w.rent.owed.is_some_and(|(_, t)| t <= now.mono) {
                        rent_unpaid.push(id);
                    } else if w.rent.owed.is_none() && w.rent.next_at.is_some_and(|t| t <= now.mono)
                    {
                        rent_due.push(id);
                    }
                    // The pairing pass below pairs anyone the fallback now allows.
                    if w.fallback_at.is_some_and(|at| at <= now.mono) {
                        w.fallback_at = None;
                    }
                    if w.next_update <= now.mono {
                        // Forces a QUEUED on the next update, changed or not.
                        w.last_sent = None;
                        self.index.tell_whole_queue = true;
                    }
                }
                _ => {}
            }
        }
        late.sort();
        for id in unblocked {
            self.drain_backlog(now, id, true);
        }
        // A client too late for HELLO, JOIN, PROOF or its handshake: its
        // pairing, if any, ends for the counsellor, who is free again.
        for id in late.into_iter().chain(rent_unpaid) {
            self.close(id, CloseCode::Timeout, true);
        }
        for id in wait_over {
            self.pairing.remove_client(id);
            self.send(
                id,
                &Frame::Unavailable {
                    reason: Unavailable::WaitExceeded,
                    next_open: None,
                },
            );
            self.close(id, CloseCode::NoError, true);
        }
        for id in rent_due {
            self.charge_rent(now, id);
        }
        self.end_event(now);
    }

    /// The earliest instant at which [`Relay::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.index.conns.first(),
            self.index.detached.first(),
            self.index.away_from_queue.first(),
            self.pow.next_tick(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// [`Relay::poll_timeout`] worked out by a scan of every table instead
    /// of from the deadline index: tests check that the two agree.
    #[doc(hidden)]
    pub fn poll_timeout_by_scan(&self) -> Option<Instant> {
        let conns = self.conns.values().filter_map(Conn::next_deadline).min();
        let resumes = self
            .detached
            .values()
            .map(Detached::next_deadline)
            .chain(self.away_from_queue.values().map(|a| a.until))
            .min();
        [conns, self.pow.next_tick(), resumes]
            .into_iter()
            .flatten()
            .min()
    }

    /// The proof-of-work difficulty asked of new clients now: the load part
    /// (solved JOINs per second) or the queue part (how full it is),
    /// whichever is higher.
    pub fn pow_difficulty(&self) -> u8 {
        self.pow.difficulty().max(self.queue_difficulty())
    }

    /// The difficulty the queue's fullness asks (PROTOCOL.md §8.1): the
    /// minimum up to half full, then rising evenly to the maximum when full.
    fn queue_difficulty(&self) -> u8 {
        let (min, max) = (
            self.limits.pow_min_difficulty,
            self.limits
                .pow_max_difficulty
                .max(self.limits.pow_min_difficulty),
        );
        let fill = self.queue_fill();
        if fill <= 0.5 {
            return min;
        }
        let extra = (f64::from(max - min) * (2.0 * fill - 1.0)).ceil();
        min.saturating_add(extra.clamp(0.0, f64::from(max - min)) as u8)
    }

    /// Waiting newcomers as a share of `max_queue` (0 to 1).
    fn queue_fill(&self) -> f64 {
        let waiting = self.pairing.newcomers_waiting();
        (waiting as f64 / self.limits.max_queue.max(1) as f64).min(1.0)
    }

    /// Ends every chat with `RelayShutdown` and closes every connection.
    /// New connections are refused from now on.
    pub fn handle_shutdown(&mut self, _now: Now) {
        self.shutting_down = true;
        self.detached.clear();
        self.away_from_queue.clear();
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        ids.sort();
        for id in &ids {
            let c = &self.conns[id];
            // Each chat once: on its counsellor's side, or its client's if
            // the counsellor is away.
            let ended = c
                .links
                .values()
                .filter(|l| {
                    matches!(c.state, State::Counsellor(_)) || matches!(l.peer, Peer::Away(_))
                })
                .count();
            for _ in 0..ended {
                self.stats.ended(EndReason::RelayShutdown);
            }
            self.stats.closed(CloseCode::ShuttingDown);
            let chats: Vec<ChatNumber> = c.links.keys().copied().collect();
            for chat in chats {
                self.send(
                    *id,
                    &Frame::End {
                        chat,
                        reason: EndReason::RelayShutdown,
                    },
                );
            }
        }
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.links.clear();
            }
            self.pairing.remove_client(id);
            self.pairing.remove_counsellor(id);
            self.remove_conn(id);
            self.out.push_back(Output::Close {
                conn: id,
                code: CloseCode::ShuttingDown,
                flush: true,
            });
        }
        self.by_name.clear();
        self.presence.clear();
        self.index = Indexes::default();
    }

    /// The next thing the shell must do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Number of open connections and waiting clients, for tests and metrics.
    pub fn counts(&self) -> (usize, usize) {
        (self.conns.len(), self.pairing.waiting_count())
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
        for (_, request) in self.pairing.waiting() {
            *g.waiting.entry(request.topic).or_default() += 1;
        }
        g
    }

    /// The organisation revoked this counsellor connection's credential:
    /// each of its chats ends for the young person with
    /// END(COUNSELLOR_REVOKED), and the connection is closed with `REVOKED`.
    pub fn handle_revoked(&mut self, now: Now, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.credential == Credential::Anonymous {
            return;
        }
        let chats: Vec<ChatNumber> = c.links.keys().copied().collect();
        for chat in chats {
            self.end_chat(conn, chat, EndReason::CounsellorRevoked);
        }
        self.close(conn, CloseCode::Revoked, true);
        self.end_event(now);
    }

    fn handle_frame(&mut self, now: Now, conn: ConnId, frame: Frame) -> Result<(), CloseCode> {
        let c = self.conns.get(&conn).ok_or(CloseCode::InternalError)?;
        let role = match &c.state {
            State::AwaitingHello { .. } => {
                return match frame {
                    Frame::Hello { version, role } => self.handle_hello(now, conn, version, role),
                    Frame::Resume { capability } => self.handle_resume(now, conn, capability),
                    _ => Err(CloseCode::UnexpectedFrame),
                };
            }
            State::Client(_) => Role::Client,
            State::Counsellor(_) => Role::Counsellor,
        };
        match (role, frame) {
            (
                Role::Client,
                Frame::Join {
                    topic,
                    language,
                    pow_solution,
                },
            ) => self.handle_join(now, conn, topic, language, pow_solution),
            (Role::Client, Frame::Proof { solution }) => self.handle_proof(conn, solution),
            (_, Frame::Forward { chat, blob }) => self.handle_forward(conn, chat, blob),
            (Role::Counsellor, Frame::Resume { capability }) => {
                self.handle_resume(now, conn, capability)
            }
            (_, Frame::End { chat, reason }) => {
                let allowed = match role {
                    Role::Client => {
                        matches!(reason, EndReason::UserEnded | EndReason::SecurityFailure)
                    }
                    Role::Counsellor => {
                        matches!(
                            reason,
                            EndReason::UserEnded | EndReason::SecurityFailure | EndReason::Blocked
                        )
                    }
                };
                if !allowed {
                    return Err(CloseCode::UnexpectedFrame);
                }
                if !c.links.contains_key(&chat) {
                    return if c.is_ended_chat(chat) {
                        Ok(())
                    } else {
                        Err(CloseCode::UnexpectedFrame)
                    };
                }
                self.handle_end(now, conn, role, chat, reason);
                Ok(())
            }
            (
                Role::Counsellor,
                Frame::Status {
                    available,
                    capacity,
                    topics,
                    languages,
                },
            ) => {
                if topics.iter().any(|t| !self.service.knows_topic(*t))
                    || languages.iter().any(|l| !self.service.knows_language(*l))
                {
                    return Err(CloseCode::MalformedFrame);
                }
                if let Some(Conn {
                    state: State::Counsellor(s),
                    ..
                }) = self.conns.get_mut(&conn)
                {
                    s.available = available;
                    s.capacity = usize::from(capacity.min(self.limits.max_capacity));
                    s.topics = topics;
                    s.languages = languages;
                }
                self.refresh_offer(conn);
                self.pair_waiting(now);
                Ok(())
            }
            (Role::Counsellor, Frame::Transfer { chat, target }) => {
                if !c.links.contains_key(&chat) {
                    return if c.is_ended_chat(chat) {
                        Ok(())
                    } else {
                        Err(CloseCode::UnexpectedFrame)
                    };
                }
                self.handle_transfer(now, conn, chat, target);
                Ok(())
            }
            // HELLO twice, relay-only frames, frames of the other role.
            _ => Err(CloseCode::UnexpectedFrame),
        }
    }

    fn handle_forward(
        &mut self,
        conn: ConnId,
        chat: ChatNumber,
        blob: Blob,
    ) -> Result<(), CloseCode> {
        let link = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.links.get_mut(&chat))
            .map(|link| {
                // The client has its PAIRED and started the handshake: the
                // ticket no longer leads here, and the pairing stands.
                link.handshake_due = None;
                (link.peer, link.unconfirmed.take())
            });
        if let Some((_, Some(u))) = link {
            self.index.unconfirmed_live.remove(&u.ticket);
        }
        let link = link.map(|(peer, _)| peer);
        let Some(peer) = link else {
            let c = self.conns.get(&conn).ok_or(CloseCode::InternalError)?;
            // A frame racing the end of its chat is not an error.
            return if c.is_ended_chat(chat) {
                Ok(())
            } else {
                Err(CloseCode::UnexpectedFrame)
            };
        };
        self.stats.frames_forwarded += 1;
        self.stats.bytes_forwarded += FORWARD_FRAME_LEN;
        match peer {
            Peer::Live {
                conn: peer,
                chat: peer_chat,
            } => self.send(
                peer,
                &Frame::Forward {
                    chat: peer_chat,
                    blob,
                },
            ),
            Peer::Away(h) => self.hold(conn, chat, h, blob),
        }
        Ok(())
    }

    fn welcome(&mut self, conn: ConnId, role: Role, pow: PowChallenge) {
        let languages: Vec<Language> = self
            .service
            .languages
            .iter()
            .copied()
            .take(MAX_LANGUAGES)
            .collect();
        let topics: Vec<_> = self
            .service
            .topics
            .iter()
            .take(MAX_TOPICS)
            .cloned()
            .collect();
        self.send(
            conn,
            &Frame::Welcome {
                version: PROTOCOL_VERSION,
                role,
                topics: topics.len() as u8,
                languages,
                pow,
            },
        );
        for t in topics {
            self.send(
                conn,
                &Frame::Topic {
                    id: t.id,
                    label_nl: t.label_nl,
                    label_en: t.label_en,
                },
            );
        }
    }

    fn fresh_challenge(&mut self) -> PowChallenge {
        let mut pow = PowChallenge {
            difficulty: self.pow_difficulty(),
            nonce: [0; 16],
        };
        self.rng.fill_bytes(&mut pow.nonce);
        pow
    }

    fn handle_hello(
        &mut self,
        now: Now,
        conn: ConnId,
        version: u8,
        role: Role,
    ) -> Result<(), CloseCode> {
        if version != PROTOCOL_VERSION {
            return Err(CloseCode::UnsupportedVersion);
        }
        let anonymous = self
            .conns
            .get(&conn)
            .is_some_and(|c| c.credential == Credential::Anonymous);
        // The anonymous role takes no credential (§3.1); a counsellor's
        // connection counts only against the cap for counsellors.
        if anonymous != (role == Role::Client) {
            return Err(CloseCode::NotAuthorized);
        }
        let pow = match role {
            Role::Client => self.fresh_challenge(),
            Role::Counsellor => PowChallenge::NONE,
        };
        let c = self.conns.get_mut(&conn).ok_or(CloseCode::InternalError)?;
        match role {
            Role::Client => {
                c.state = State::Client(ClientStage::Welcomed {
                    challenge: pow,
                    deadline: now.mono + challenge_lifetime(pow.difficulty),
                })
            }
            Role::Counsellor => {
                // Away until the counsellor says what it takes.
                c.state = State::Counsellor(CounsellorState {
                    available: false,
                    capacity: 1,
                    topics: Vec::new(),
                    languages: Vec::new(),
                    last_stats: None,
                });
            }
        }
        self.welcome(conn, role, pow);
        if role == Role::Counsellor {
            if let Some(name) = self.conns.get(&conn).and_then(|c| c.pseudonym()) {
                let name = name.to_owned();
                self.by_name.entry(name.clone()).or_default().insert(conn);
                let colleagues: Vec<Frame> = self
                    .presence
                    .iter()
                    .filter(|(other, _)| **other != name)
                    .filter_map(|(other, presence)| {
                        Some(Frame::Colleague {
                            name: Label::new(other.as_str()).ok()?,
                            presence: *presence,
                        })
                    })
                    .collect();
                for frame in colleagues {
                    self.send(conn, &frame);
                }
            }
            self.refresh_offer(conn);
            self.send_queue_stats(Some(conn));
        }
        Ok(())
    }

    fn handle_join(
        &mut self,
        now: Now,
        conn: ConnId,
        topic: Option<TopicId>,
        language: Option<Language>,
        pow_solution: [u8; 8],
    ) -> Result<(), CloseCode> {
        let c = self.conns.get(&conn).ok_or(CloseCode::InternalError)?;
        let State::Client(ClientStage::Welcomed {
            challenge,
            deadline,
        }) = &c.state
        else {
            return Err(CloseCode::UnexpectedFrame);
        };
        if *deadline <= now.mono {
            return Err(CloseCode::Timeout);
        }
        if topic.is_some_and(|t| !self.service.knows_topic(t))
            || language.is_some_and(|l| !self.service.knows_language(l))
        {
            return Err(CloseCode::MalformedFrame);
        }
        // The challenge was fresh for this connection and is spent now:
        // a solution is worth one JOIN on one connection.
        if !pow_valid(&challenge.nonce, challenge.difficulty, &pow_solution) {
            return Err(CloseCode::ProofOfWorkFailed);
        }
        // Paid-for arrivals, and only those, drive the load difficulty.
        self.pow.record_arrival(now.mono);
        if !self.service.hours.is_open(now.unix) {
            let next_open = self
                .service
                .hours
                .next_open(now.unix)
                .and_then(|t| u64::try_from(t).ok());
            self.send(
                conn,
                &Frame::Unavailable {
                    reason: Unavailable::Closed,
                    next_open,
                },
            );
            self.close(conn, CloseCode::NoError, true);
            return Ok(());
        }
        let source = c.source;
        let request = Request {
            topic,
            language,
            since: now.mono,
            turn: self.next_turn(),
            priority: false,
            source,
        };
        let places = self.limits.per_source_places;
        let over_source_limit =
            places > 0 && source.is_some_and(|tag| self.places_held_by(tag) >= places);
        if over_source_limit
            || !self.admissions.take(now.mono, 1.0)
            || self.pairing.enqueue(conn, request).is_err()
        {
            self.send(
                conn,
                &Frame::Unavailable {
                    reason: Unavailable::Busy,
                    next_open: None,
                },
            );
            self.close(conn, CloseCode::NoError, true);
            return Ok(());
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.choice = (topic, language);
        }
        self.issue_ticket(conn);
        self.set_waiting(now, conn, request);
        self.pair_waiting(now);
        Ok(())
    }

    /// Places in the queue held by connections from `source`, waiting or
    /// away, in this epoch of the shell's source key.
    fn places_held_by(&self, source: SourceTag) -> usize {
        let away = self.index.away_per_source.get(&source).copied();
        self.pairing.waiting_from(source) + away.unwrap_or(0)
    }

    /// A waiting client's rent is due: while the queue is more than half
    /// full it must solve a fresh challenge in time to keep its place.
    fn charge_rent(&mut self, now: Now, conn: ConnId) {
        let Some(interval) = self.limits.queue_rent_interval else {
            return;
        };
        let challenge = (self.queue_fill() > 0.5).then(|| self.fresh_challenge());
        let Some(Conn {
            state: State::Client(ClientStage::Waiting(w)),
            ..
        }) = self.conns.get_mut(&conn)
        else {
            return;
        };
        w.rent.next_at = Some(now.mono + interval);
        if let Some(pow) = challenge {
            w.rent.owed = Some((pow, now.mono + challenge_lifetime(pow.difficulty)));
            self.stats.rent_challenges += 1;
            self.send(conn, &Frame::Challenge { pow });
        }
    }

    /// PROOF: the answer to the last CHALLENGE. One that raced a pairing,
    /// or came without a CHALLENGE owed, is dropped.
    fn handle_proof(&mut self, conn: ConnId, solution: [u8; 8]) -> Result<(), CloseCode> {
        let c = self.conns.get_mut(&conn).ok_or(CloseCode::InternalError)?;
        match &mut c.state {
            State::Client(ClientStage::Waiting(w)) => {
                if let Some((pow, _)) = w.rent.owed {
                    if !pow_valid(&pow.nonce, pow.difficulty, &solution) {
                        return Err(CloseCode::ProofOfWorkFailed);
                    }
                    w.rent.owed = None;
                }
                Ok(())
            }
            State::Client(ClientStage::InChat) => Ok(()),
            _ => Err(CloseCode::UnexpectedFrame),
        }
    }

    fn next_turn(&mut self) -> u64 {
        self.turns += 1;
        self.turns
    }

    /// Gives a client that enters the queue a ticket (JOINED) to keep its
    /// place if its connection drops; one per connection.
    fn issue_ticket(&mut self, conn: ConnId) {
        if self.conns.get(&conn).is_none_or(|c| c.ticket.is_some()) {
            return;
        }
        let mut ticket = ResumeCapability([0; 32]);
        self.rng.fill_bytes(&mut ticket.0);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.ticket = Some(cap_hash(&ticket));
        }
        self.touch(conn);
        self.send(conn, &Frame::Joined { resume: ticket });
    }

    /// Puts a client in the waiting state.
    fn set_waiting(&mut self, now: Now, conn: ConnId, request: Request) {
        let waiting = self.waiting_for(now, request);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = State::Client(ClientStage::Waiting(waiting));
        }
        self.touch(conn);
    }

    /// The waiting state of a client whose place is `request` (its turn,
    /// and since when it waits): its wait is over `max_wait` after that, a
    /// topic falls back `topic_fallback` after that, and newcomers pay rent
    /// in a crowded queue while clients handed back by a counsellor do not.
    fn waiting_for(&self, now: Now, request: Request) -> Waiting {
        Waiting {
            request,
            since: request.since,
            deadline: request.since + self.limits.max_wait,
            fallback_at: request
                .topic
                .map(|_| request.since + self.limits.topic_fallback)
                .filter(|at| *at > now.mono),
            next_update: now.mono,
            last_sent: None,
            rent: Rent {
                next_at: self
                    .limits
                    .queue_rent_interval
                    .filter(|_| !request.priority)
                    .map(|interval| now.mono + interval),
                owed: None,
            },
        }
    }

    fn handle_end(
        &mut self,
        now: Now,
        conn: ConnId,
        role: Role,
        chat: ChatNumber,
        reason: EndReason,
    ) {
        let peer = match self.conns.get(&conn).and_then(|c| c.links.get(&chat)) {
            Some(Link {
                peer: Peer::Live { conn: p, .. },
                ..
            }) => Some(*p),
            _ => None,
        };
        self.end_chat(conn, chat, reason);
        match (role, reason, peer) {
            // The client's end is immediate: nothing more goes to it.
            (Role::Client, _, _) => self.close(conn, CloseCode::NoError, false),
            // A blocked client can never send again: its connection goes
            // (it was closed, after its END, when its chat ended).
            (Role::Counsellor, EndReason::Blocked, Some(client)) => {
                self.close(client, CloseCode::NoError, true)
            }
            _ => {}
        }
        self.pair_waiting(now);
    }

    fn handle_transfer(
        &mut self,
        now: Now,
        conn: ConnId,
        chat: ChatNumber,
        target: TransferTarget,
    ) {
        let Some(link) = self
            .conns
            .get(&conn)
            .and_then(|c| c.links.get(&chat))
            .cloned()
        else {
            return;
        };
        let Peer::Live { conn: client, .. } = link.peer else {
            self.send(
                conn,
                &Frame::TransferRefused {
                    chat,
                    reason: Refusal::ClientAway,
                },
            );
            return;
        };
        let colleague = match &target {
            TransferTarget::Queue => None,
            TransferTarget::Colleague(name) => match self.find_colleague(conn, name) {
                Ok(id) => Some(id),
                Err(reason) => {
                    self.send(conn, &Frame::TransferRefused { chat, reason });
                    return;
                }
            },
        };
        self.stats.transfers += 1;
        self.end_chat(conn, chat, EndReason::Transferred);
        // The counsellor hears END(TRANSFERRED) as confirmation, too.
        self.send(
            conn,
            &Frame::End {
                chat,
                reason: EndReason::Transferred,
            },
        );
        match colleague {
            Some(colleague) => {
                if let Some(c) = self.conns.get_mut(&client) {
                    c.state = State::Client(ClientStage::InChat);
                }
                self.start_chat(now, client, colleague);
            }
            None => {
                // Back in the queue with what the young person chose.
                let (topic, language) = self
                    .conns
                    .get(&client)
                    .map(|c| c.choice)
                    .unwrap_or_default();
                let source = self.conns.get(&client).and_then(|c| c.source);
                let request = Request {
                    topic,
                    language,
                    since: now.mono,
                    turn: self.next_turn(),
                    priority: true,
                    source,
                };
                if self.pairing.enqueue(client, request).is_ok() {
                    self.issue_ticket(client);
                    self.set_waiting(now, client, request);
                }
            }
        }
        self.pair_waiting(now);
    }

    /// A signed-in colleague named `name` with room, or why not.
    fn find_colleague(&self, from: ConnId, name: &Label) -> Result<ConnId, Refusal> {
        let mut refusal = Refusal::UnknownColleague;
        for id in self.by_name.get(name.as_str()).into_iter().flatten() {
            let Some(c) = self.conns.get(id).filter(|_| *id != from) else {
                continue;
            };
            let State::Counsellor(s) = &c.state else {
                continue;
            };
            if !s.available {
                if refusal == Refusal::UnknownColleague {
                    refusal = Refusal::ColleagueAway;
                }
            } else if c.links.len() >= s.capacity {
                refusal = Refusal::ColleagueFull;
            } else {
                return Ok(*id);
            }
        }
        Err(refusal)
    }

    /// Pairs while the backend finds pairs, then tells every waiting client
    /// whose position or estimate changed (or is due an update) and every
    /// counsellor whose view of the queue changed.
    fn pair_waiting(&mut self, now: Now) {
        let mut everyone = std::mem::take(&mut self.index.tell_whole_queue);
        while let Some((client, counsellor)) =
            self.pairing.next_pair(now.mono, self.limits.topic_fallback)
        {
            // The pace of pairings changed: so did every estimate.
            self.estimate.record_pairing(now.mono);
            self.start_chat(now, client, counsellor);
            everyone = true;
        }
        for moved in self.pairing.take_moved(everyone) {
            let (position, client, request) = (moved.position, moved.client, moved.request);
            // Nobody signed in who could take this client: no estimate.
            let estimate = self
                .pairing
                .could_serve(&request)
                .then(|| self.estimate.for_position(position))
                .flatten();
            let heartbeat_by = now.mono + HEARTBEAT_SLACK;
            let due = match self.conns.get_mut(&client) {
                Some(Conn {
                    state: State::Client(ClientStage::Waiting(w)),
                    ..
                }) if w.last_sent != Some((position, estimate))
                    || (everyone && w.next_update <= heartbeat_by) =>
                {
                    w.last_sent = Some((position, estimate));
                    w.next_update = now.mono + Limits::QUEUE_UPDATE_INTERVAL;
                    true
                }
                _ => false,
            };
            if due {
                self.touch(client);
                self.send(
                    client,
                    &Frame::Queued {
                        position,
                        estimated_wait_secs: estimate,
                    },
                );
            }
        }
        self.send_queue_stats(None);
    }

    /// Links a client and a counsellor in a new chat and tells both.
    fn start_chat(&mut self, now: Now, client: ConnId, counsellor: ConnId) {
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        let pairing_id = PairingId(id);
        let (Some(client_chat), Some(counsellor_chat)) =
            (self.issue_chat(client), self.issue_chat(counsellor))
        else {
            return;
        };
        let mut client_cap = ResumeCapability([0; 32]);
        let mut counsellor_cap = ResumeCapability([0; 32]);
        self.rng.fill_bytes(&mut client_cap.0);
        self.rng.fill_bytes(&mut counsellor_cap.0);
        let to_counsellor = Peer::Live {
            conn: counsellor,
            chat: counsellor_chat,
        };
        let to_client = Peer::Live {
            conn: client,
            chat: client_chat,
        };
        let Some(c) = self.conns.get(&client) else {
            return;
        };
        let (topic, language) = c.choice;
        let ticket = c.ticket;
        // The place it had, should the pairing be undone.
        let request = match &c.state {
            State::Client(ClientStage::Waiting(w)) => w.request,
            _ => Request {
                topic,
                language,
                since: now.mono,
                turn: 0,
                priority: true,
                source: c.source,
            },
        };
        let unconfirmed = ticket.map(|ticket| Unconfirmed {
            ticket,
            pairing_id,
            request,
        });
        let client_link = self.new_link(now, to_counsellor, cap_hash(&client_cap), unconfirmed);
        self.link(
            client,
            client_chat,
            Link {
                handshake_due: Some(now.mono + self.limits.handshake_timeout),
                ..client_link
            },
        );
        let counsellor_link = self.new_link(now, to_client, cap_hash(&counsellor_cap), None);
        self.link(counsellor, counsellor_chat, counsellor_link);
        if let Some(c) = self.conns.get_mut(&client) {
            if let State::Client(ClientStage::Waiting(w)) = &c.state {
                self.stats
                    .waits
                    .push(now.mono.saturating_duration_since(w.since));
            }
            c.state = State::Client(ClientStage::InChat);
        }
        self.stats.pairings += 1;
        self.refresh_offer(counsellor);
        self.send(
            client,
            &Frame::Paired {
                chat: client_chat,
                pairing_id,
                resume: client_cap,
                topic: None,
                language: None,
            },
        );
        self.send(
            counsellor,
            &Frame::Paired {
                chat: counsellor_chat,
                pairing_id,
                resume: counsellor_cap,
                topic,
                language,
            },
        );
    }

    fn new_link(
        &self,
        now: Now,
        peer: Peer,
        mine: CapHash,
        unconfirmed: Option<Unconfirmed>,
    ) -> Link {
        Link {
            peer,
            mine,
            unconfirmed,
            forward: TokenBucket::new(
                self.limits.forward_frames_per_sec,
                self.limits.forward_frames_burst,
                now.mono,
            ),
            handshake_due: None,
        }
    }

    /// Tells the backend what a counsellor can take now, and its
    /// colleagues whether it can take a transfer.
    fn refresh_offer(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let State::Counsellor(s) = &c.state else {
            return;
        };
        let offer = Offer {
            available: s.available,
            load: c.links.len(),
            capacity: s.capacity,
            topics: s.topics.clone(),
            languages: s.languages.clone(),
        };
        let name = c.pseudonym().map(str::to_owned);
        self.pairing.offer(conn, offer);
        if let Some(name) = name {
            self.update_presence(&name);
        }
    }

    /// Works out what colleagues should see of `name` (the best of its
    /// connections) and tells them if that changed.
    fn update_presence(&mut self, name: &str) {
        let now = self
            .by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(
                |id| match self.conns.get(id).map(|c| (&c.state, c.links.len())) {
                    Some((State::Counsellor(s), load)) => Some(if !s.available {
                        Presence::Away
                    } else if load >= s.capacity {
                        Presence::Full
                    } else {
                        Presence::Available
                    }),
                    _ => None,
                },
            )
            .max()
            .unwrap_or(Presence::SignedOut);
        let before = self
            .presence
            .get(name)
            .copied()
            .unwrap_or(Presence::SignedOut);
        if now == before {
            return;
        }
        if now == Presence::SignedOut {
            self.presence.remove(name);
        } else {
            self.presence.insert(name.to_owned(), now);
        }
        let Ok(label) = Label::new(name) else {
            return;
        };
        let mut others: Vec<ConnId> = self
            .by_name
            .iter()
            .filter(|(other, _)| other.as_str() != name)
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect();
        others.sort();
        let frame = Frame::Colleague {
            name: label,
            presence: now,
        };
        for id in others {
            self.send(id, &frame);
        }
    }

    /// Sends QUEUE_STATS to counsellors whose view changed (or to `only`).
    fn send_queue_stats(&mut self, only: Option<ConnId>) {
        let stats: Vec<(Option<TopicId>, u16)> = self
            .pairing
            .waiting_per_topic()
            .into_iter()
            .take(MAX_TOPICS + 1)
            .map(|(topic, n)| (topic, u16::try_from(n).unwrap_or(u16::MAX)))
            .collect();
        let told = self.index.queue_stats.as_ref() == Some(&stats);
        match only {
            // Every counsellor heard these counts already.
            None if told => return,
            None => self.index.queue_stats = Some(stats.clone()),
            // One counsellor hears counts the others have not.
            Some(_) if !told => self.index.queue_stats = None,
            Some(_) => {}
        }
        let mut ids: Vec<ConnId> = match only {
            Some(id) => vec![id],
            None => self.by_name.values().flatten().copied().collect(),
        };
        ids.sort();
        for id in ids {
            let changed = match self.conns.get_mut(&id) {
                Some(Conn {
                    state: State::Counsellor(s),
                    ..
                }) if only.is_some() || s.last_stats.as_ref() != Some(&stats) => {
                    s.last_stats = Some(stats.clone());
                    true
                }
                _ => false,
            };
            if changed {
                self.send(
                    id,
                    &Frame::QueueStats {
                        waiting: stats.clone(),
                    },
                );
            }
        }
    }

    fn issue_chat(&mut self, conn: ConnId) -> Option<ChatNumber> {
        let c = self.conns.get_mut(&conn)?;
        let chat = ChatNumber::new(c.next_chat)?;
        c.next_chat = c.next_chat.checked_add(1)?;
        Some(chat)
    }

    fn link(&mut self, conn: ConnId, chat: ChatNumber, link: Link) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        self.index.capabilities.insert(link.mine, (conn, chat));
        if let Some(u) = link.unconfirmed {
            self.index.unconfirmed_live.insert(u.ticket, (conn, chat));
        }
        if let Some(old) = c.links.insert(chat, link) {
            Self::unindex_link(&mut self.index, &old);
        }
        self.index.touched.push(conn);
    }

    /// Takes one chat side off its connection, and out of the indexes.
    fn unlink(&mut self, conn: ConnId, chat: ChatNumber) -> Option<Link> {
        let link = self.conns.get_mut(&conn)?.links.remove(&chat)?;
        Self::unindex_link(&mut self.index, &link);
        self.index.touched.push(conn);
        Some(link)
    }

    fn unindex_link(index: &mut Indexes, link: &Link) {
        index.capabilities.remove(&link.mine);
        if let Some(u) = link.unconfirmed {
            index.unconfirmed_live.remove(&u.ticket);
        }
    }

    fn insert_detached(&mut self, key: CapHash, d: Detached) {
        self.remove_detached(&key);
        self.index.detached.set(key, Some(d.next_deadline()));
        if let Some(u) = d.unconfirmed {
            self.index.unconfirmed_away.insert(u.ticket, key);
        }
        self.detached.insert(key, d);
    }

    fn remove_detached(&mut self, key: &CapHash) -> Option<Detached> {
        let d = self.detached.remove(key)?;
        self.index.detached.set(*key, None);
        if let Some(u) = d.unconfirmed
            && self.index.unconfirmed_away.get(&u.ticket) == Some(key)
        {
            self.index.unconfirmed_away.remove(&u.ticket);
        }
        Some(d)
    }

    fn insert_away(&mut self, ticket: CapHash, away: AwayFromQueue) {
        self.index.away_from_queue.set(ticket, Some(away.until));
        if let Some(source) = away.waiting.request.source {
            *self.index.away_per_source.entry(source).or_default() += 1;
        }
        if let Some(old) = self.away_from_queue.insert(ticket, away) {
            self.uncount_away(&old);
        }
    }

    fn remove_away(&mut self, ticket: &CapHash) -> Option<AwayFromQueue> {
        let away = self.away_from_queue.remove(ticket)?;
        self.index.away_from_queue.set(*ticket, None);
        self.uncount_away(&away);
        Some(away)
    }

    fn uncount_away(&mut self, away: &AwayFromQueue) {
        if let Some(source) = away.waiting.request.source
            && let Some(n) = self.index.away_per_source.get_mut(&source)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.index.away_per_source.remove(&source);
            }
        }
    }

    /// Marks a connection whose deadlines or indexed entries may change.
    fn touch(&mut self, conn: ConnId) {
        self.index.touched.push(conn);
    }

    /// Every public entry point ends here: waiting clients and counsellors
    /// hear what the event changed in the queue, and the indexes are
    /// brought up to date, so that between events they agree with the
    /// tables.
    fn end_event(&mut self, now: Now) {
        self.pair_waiting(now);
        self.settle();
    }

    /// Brings the indexes up to date for the connections this event
    /// touched.
    fn settle(&mut self) {
        let mut touched = std::mem::take(&mut self.index.touched);
        touched.sort();
        touched.dedup();
        for id in touched {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            let unjoined = c.is_unjoined_client();
            if unjoined != c.indexed_unjoined {
                if unjoined {
                    self.index.unjoined.insert((c.connected_at, id));
                } else {
                    self.index.unjoined.remove(&(c.connected_at, id));
                }
                c.indexed_unjoined = unjoined;
            }
            if c.indexed_ticket != c.ticket {
                if let Some(old) = c.indexed_ticket
                    && self.index.tickets.get(&old) == Some(&id)
                {
                    self.index.tickets.remove(&old);
                }
                if let Some(new) = c.ticket {
                    self.index.tickets.insert(new, id);
                }
                c.indexed_ticket = c.ticket;
            }
            let deadline = c.next_deadline();
            if deadline != c.indexed_deadline {
                self.index.conns.set(id, deadline);
                c.indexed_deadline = deadline;
            }
        }
    }

    /// Points the peer of a chat side at a new place for that side.
    fn repoint(&mut self, peer: Peer, to: Peer) {
        match peer {
            Peer::Live { conn, chat } => {
                if let Some(link) = self
                    .conns
                    .get_mut(&conn)
                    .and_then(|c| c.links.get_mut(&chat))
                {
                    link.peer = to;
                }
            }
            Peer::Away(h) => {
                if let Some(d) = self.detached.get_mut(&h) {
                    d.peer = to;
                }
            }
        }
    }

    /// Keeps a frame for a side that is away; if it cannot take more, the
    /// chat ends for the side that is here.
    fn hold(&mut self, conn: ConnId, chat: ChatNumber, away: CapHash, blob: Blob) {
        let max = self.limits.max_held_frames;
        if let Some(d) = self.detached.get_mut(&away)
            && d.held.len() < max
        {
            d.held.push_back(blob);
            return;
        }
        self.remove_detached(&away);
        self.peer_gone(conn, chat);
    }

    /// The other side of `chat` is gone for good: the chat ends here.
    fn peer_gone(&mut self, conn: ConnId, chat: ChatNumber) {
        if self.unlink(conn, chat).is_some() {
            self.stats.ended(EndReason::PeerDisconnected);
            self.send(
                conn,
                &Frame::End {
                    chat,
                    reason: EndReason::PeerDisconnected,
                },
            );
            self.chat_over(conn, EndReason::PeerDisconnected);
        }
    }

    /// A connection dropped: each of its chats waits for it to resume, and
    /// each chat's other side is told the peer is away.
    fn detach(&mut self, now: Now, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let role = match c.state {
            State::Client(ClientStage::Waiting(_)) => {
                self.keep_queue_place(now, conn);
                return;
            }
            State::Client(_) => Role::Client,
            State::Counsellor(_) => Role::Counsellor,
            State::AwaitingHello { .. } => return,
        };
        let pseudonym = c.pseudonym().map(str::to_owned);
        let chats: Vec<ChatNumber> = c.links.keys().copied().collect();
        for chat in chats {
            if let Some(link) = self.unlink(conn, chat) {
                self.detach_link(now, role, pseudonym.clone(), link);
            }
        }
    }

    fn detach_link(&mut self, now: Now, role: Role, pseudonym: Option<String>, link: Link) {
        self.repoint(link.peer, Peer::Away(link.mine));
        if let Peer::Live { conn: peer, chat } = link.peer {
            self.send(peer, &Frame::PeerAway { chat });
        }
        self.insert_detached(
            link.mine,
            Detached {
                role,
                pseudonym,
                peer: link.peer,
                deadline: now.mono + self.limits.resume_window,
                held: VecDeque::new(),
                unconfirmed: link.unconfirmed,
                handshake_due: link.handshake_due,
            },
        );
    }

    /// The connection left on purpose: its chats end with `reason`, and a
    /// waiting client's place and ticket are gone (the caller forgets it).
    fn leave(&mut self, conn: ConnId, reason: EndReason) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.ticket = None;
        let chats: Vec<ChatNumber> = c.links.keys().copied().collect();
        for chat in chats {
            self.end_chat(conn, chat, reason);
        }
        self.pairing.remove_client(conn);
    }

    /// Takes a waiting client out of the queue but keeps its place, under
    /// its ticket, for the resume window (or until its wait is over).
    fn keep_queue_place(&mut self, now: Now, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(ticket) = c.ticket else {
            return;
        };
        let State::Client(ClientStage::Waiting(waiting)) = c.state else {
            return;
        };
        c.state = State::Client(ClientStage::InChat);
        self.index.touched.push(conn);
        if self.pairing.remove_client(conn).is_some() {
            let until = waiting.deadline.min(now.mono + self.limits.resume_window);
            self.insert_away(ticket, AwayFromQueue { waiting, until });
        }
    }

    /// A pairing whose young person never sent handshake message 1 while
    /// away: the counsellor is freed, and the young person's place in the
    /// queue is kept under its ticket for the rest of its resume window.
    fn undo_unstarted_pairing(&mut self, now: Now, h: CapHash) {
        let Some(d) = self.remove_detached(&h) else {
            return;
        };
        self.end_for_other_side(d.peer);
        if let Some(u) = d.unconfirmed {
            self.requeue_away(now, u, d.deadline);
        }
    }

    /// Keeps the place of a client that is away, from the request it had.
    fn requeue_away(&mut self, now: Now, u: Unconfirmed, until: Instant) {
        let waiting = self.waiting_for(now, u.request);
        self.insert_away(
            u.ticket,
            AwayFromQueue {
                until: until.min(waiting.deadline),
                waiting,
            },
        );
    }

    /// RESUME with a queue ticket on a new connection. The client gets its
    /// place in the queue back or, if it was paired while away and never
    /// heard its PAIRED, that chat. False if the ticket leads nowhere.
    fn resume_ticket(&mut self, now: Now, conn: ConnId, ticket: CapHash) -> bool {
        // A waiting connection that died without the relay hearing.
        let silent = self.index.tickets.get(&ticket).copied().filter(|id| {
            *id != conn
                && self.conns.get(id).is_some_and(|c| {
                    c.ticket == Some(ticket)
                        && matches!(c.state, State::Client(ClientStage::Waiting(_)))
                })
        });
        if let Some(old) = silent {
            self.keep_queue_place(now, old);
            self.close(old, CloseCode::NoError, false);
        }
        if let Some(away) = self.remove_away(&ticket) {
            let mut waiting = away.waiting;
            waiting.next_update = now.mono;
            waiting.last_sent = None;
            // A challenge owed went with the old connection: a fresh one
            // is due at once (if the queue is still crowded).
            if waiting.rent.owed.take().is_some() {
                waiting.rent.next_at = Some(now.mono);
            }
            if let Some(c) = self.conns.get_mut(&conn) {
                // Its place now counts against the source it came back from.
                waiting.request.source = c.source;
                c.ticket = Some(ticket);
                c.choice = (waiting.request.topic, waiting.request.language);
                c.state = State::Client(ClientStage::Waiting(waiting));
            }
            self.pairing.requeue(conn, waiting.request);
            self.pair_waiting(now);
            return true;
        }
        self.resume_unheard_pairing(now, conn, ticket)
    }

    /// The client was paired while its connection was failing, and the
    /// PAIRED never reached it: it gets the chat, with a new capability.
    /// The counsellor is still waiting for the client's first handshake
    /// message, so nothing else changes for them.
    fn resume_unheard_pairing(&mut self, now: Now, conn: ConnId, ticket: CapHash) -> bool {
        let live = self.index.unconfirmed_live.get(&ticket).copied();
        if let Some((old, chat)) = live {
            if old == conn {
                return false;
            }
            if let Some(link) = self.unlink(old, chat) {
                self.detach_link(now, Role::Client, None, link);
            }
            self.close(old, CloseCode::NoError, false);
        }
        let Some(key) = self.index.unconfirmed_away.get(&ticket).copied() else {
            return false;
        };
        let Some(chat) = self.issue_chat(conn) else {
            return false;
        };
        let Some(d) = self.remove_detached(&key) else {
            return false;
        };
        let Some(u) = d.unconfirmed else {
            return false;
        };
        let mut resume = ResumeCapability([0; 32]);
        self.rng.fill_bytes(&mut resume.0);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.ticket = Some(ticket);
            c.choice = (u.request.topic, u.request.language);
            c.state = State::Client(ClientStage::InChat);
        }
        let link = Link {
            handshake_due: d.handshake_due,
            ..self.new_link(now, d.peer, cap_hash(&resume), d.unconfirmed)
        };
        self.link(conn, chat, link);
        self.repoint(d.peer, Peer::Live { conn, chat });
        self.send(
            conn,
            &Frame::Paired {
                chat,
                pairing_id: u.pairing_id,
                resume,
                topic: None,
                language: None,
            },
        );
        self.after_resume(conn, chat, d);
        true
    }

    /// A RESUME for a side whose old connection still looks alive: it died
    /// without the relay hearing (no close got through). The new connection
    /// takes over; an old client connection is closed, having no other use.
    fn take_over(&mut self, now: Now, new: ConnId, h: CapHash) {
        let Some((old, chat)) = self.index.capabilities.get(&h).copied() else {
            return;
        };
        if old == new {
            return;
        }
        let (Some(o), Some(n)) = (self.conns.get(&old), self.conns.get(&new)) else {
            return;
        };
        let role = match (&o.state, &n.state, o.pseudonym(), n.pseudonym()) {
            (State::Client(_), State::AwaitingHello { .. }, None, None) => Role::Client,
            (State::Counsellor(_), State::Counsellor(_), Some(a), Some(b)) if a == b => {
                Role::Counsellor
            }
            _ => return,
        };
        let pseudonym = o.pseudonym().map(str::to_owned);
        let Some(link) = self.unlink(old, chat) else {
            return;
        };
        self.detach_link(now, role, pseudonym, link);
        if role == Role::Client {
            self.close(old, CloseCode::NoError, false);
        } else {
            self.refresh_offer(old);
        }
    }

    /// The resume window of a side is over: the chat ends for the other
    /// side (or is forgotten, if both are away).
    fn expire(&mut self, h: CapHash) {
        if let Some(d) = self.remove_detached(&h) {
            self.end_for_other_side(d.peer);
        }
    }

    /// A side that was away is gone for good: the chat ends for the other
    /// side, which is told now, or, if it is away too, learns on RESUME.
    fn end_for_other_side(&mut self, peer: Peer) {
        match peer {
            Peer::Live { conn, chat } => self.peer_gone(conn, chat),
            Peer::Away(other) => {
                if self.remove_detached(&other).is_some() {
                    self.stats.ended(EndReason::PeerDisconnected);
                }
            }
        }
    }

    /// RESUME: an unknown, wrong or expired capability, or one presented by
    /// the wrong kind of connection, all get the same RESUME_FAILED. A
    /// capability stays valid while its chat (or place) lives: presenting it
    /// again moves the chat to the newer connection (PROTOCOL.md §7.4).
    fn handle_resume(
        &mut self,
        now: Now,
        conn: ConnId,
        capability: ResumeCapability,
    ) -> Result<(), CloseCode> {
        let h = cap_hash(&capability);
        let first_frame = matches!(
            self.conns.get(&conn).map(|c| &c.state),
            Some(State::AwaitingHello { .. })
        );
        if first_frame
            && self
                .conns
                .get(&conn)
                .is_some_and(|c| c.credential != Credential::Anonymous)
        {
            // RESUME as the first frame is the anonymous role's (§7.4).
            return Err(CloseCode::NotAuthorized);
        }
        if first_frame && !self.detached.contains_key(&h) && self.resume_ticket(now, conn, h) {
            return Ok(());
        }
        if !self.detached.contains_key(&h) {
            self.take_over(now, conn, h);
        }
        let c = self.conns.get(&conn).ok_or(CloseCode::InternalError)?;
        let acceptable = match self.detached.get(&h) {
            Some(d) => match (d.role, &c.state, c.pseudonym()) {
                (Role::Client, State::AwaitingHello { .. }, None) => true,
                (Role::Counsellor, State::Counsellor(_), Some(pseudonym)) => {
                    d.pseudonym.as_deref() == Some(pseudonym)
                }
                _ => false,
            },
            None => false,
        };
        let chat = if acceptable {
            self.issue_chat(conn)
        } else {
            None
        };
        let detached = if chat.is_some() {
            self.remove_detached(&h)
        } else {
            None
        };
        let (Some(chat), Some(d)) = (chat, detached) else {
            self.send(conn, &Frame::ResumeFailed);
            if first_frame {
                self.close(conn, CloseCode::NoError, true);
            }
            return Ok(());
        };
        if first_frame && let Some(c) = self.conns.get_mut(&conn) {
            c.state = State::Client(ClientStage::InChat);
        }
        // Whoever holds the chat's own capability has had its PAIRED.
        let link = Link {
            handshake_due: d.handshake_due,
            ..self.new_link(now, d.peer, h, None)
        };
        self.link(conn, chat, link);
        self.repoint(d.peer, Peer::Live { conn, chat });
        self.send(conn, &Frame::Resumed { chat });
        self.after_resume(conn, chat, d);
        Ok(())
    }

    /// A side is back in `chat`: what was held for it, and news of the
    /// other side, in both directions.
    fn after_resume(&mut self, conn: ConnId, chat: ChatNumber, d: Detached) {
        for blob in d.held {
            self.send(conn, &Frame::Forward { chat, blob });
        }
        match d.peer {
            Peer::Live {
                conn: peer,
                chat: peer_chat,
            } => self.send(peer, &Frame::PeerBack { chat: peer_chat }),
            Peer::Away(_) => self.send(conn, &Frame::PeerAway { chat }),
        }
        self.refresh_offer(conn);
    }

    /// Ends one chat from `conn`'s side: both links go, the peer is told.
    fn end_chat(&mut self, conn: ConnId, chat: ChatNumber, reason: EndReason) {
        let Some(link) = self.unlink(conn, chat) else {
            return;
        };
        self.stats.ended(reason);
        self.refresh_offer(conn);
        match link.peer {
            Peer::Live {
                conn: peer,
                chat: peer_chat,
            } => {
                if self.unlink(peer, peer_chat).is_some() {
                    self.send(
                        peer,
                        &Frame::End {
                            chat: peer_chat,
                            reason,
                        },
                    );
                    self.chat_over(peer, reason);
                }
            }
            // The absent side learns when it tries to resume.
            Peer::Away(h) => {
                self.remove_detached(&h);
            }
        }
    }

    /// The side that was told its chat ended. A young person's chat is
    /// over (unless it moves on): the relay closes the connection after
    /// the END, as the client needs it no longer (§7.1).
    fn chat_over(&mut self, conn: ConnId, reason: EndReason) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        match &c.state {
            State::Client(ClientStage::InChat) if reason != EndReason::Transferred => {
                self.close(conn, CloseCode::NoError, true);
            }
            State::Counsellor(_) => self.refresh_offer(conn),
            _ => {}
        }
    }

    fn close(&mut self, conn: ConnId, code: CloseCode, flush: bool) {
        if self.conns.contains_key(&conn) {
            self.stats.closed(code);
            self.forget_without_pairing(conn);
            self.out.push_back(Output::Close { conn, code, flush });
        }
    }

    /// Drops every trace of a connection; its chat partners are told.
    fn forget(&mut self, now: Now, conn: ConnId) {
        if self.conns.contains_key(&conn) {
            self.forget_without_pairing(conn);
            self.pair_waiting(now);
        }
    }

    fn forget_without_pairing(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let chats: Vec<ChatNumber> = c.links.keys().copied().collect();
        for chat in chats {
            self.end_chat(conn, chat, EndReason::PeerDisconnected);
        }
        self.pairing.remove_client(conn);
        self.pairing.remove_counsellor(conn);
        self.remove_conn(conn);
    }

    /// Removes a connection from the tables and the indexes.
    fn remove_conn(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if c.credential == Credential::Anonymous {
            self.anonymous = self.anonymous.saturating_sub(1);
        }
        self.index.conns.set(conn, None);
        if c.indexed_unjoined {
            self.index.unjoined.remove(&(c.connected_at, conn));
        }
        if let Some(ticket) = c.indexed_ticket
            && self.index.tickets.get(&ticket) == Some(&conn)
        {
            self.index.tickets.remove(&ticket);
        }
        for link in c.links.values() {
            Self::unindex_link(&mut self.index, link);
        }
        if let Some(name) = c.pseudonym()
            && let Some(ids) = self.by_name.get_mut(name)
        {
            ids.remove(&conn);
            if ids.is_empty() {
                self.by_name.remove(name);
            }
            let name = name.to_owned();
            self.update_presence(&name);
        }
    }

    fn send(&mut self, conn: ConnId, frame: &Frame) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        let bytes = frame.encode();
        // Coalesce consecutive frames for one connection into one write.
        if let Some(Output::Send {
            conn: last,
            bytes: buf,
        }) = self.out.back_mut()
            && *last == conn
        {
            buf.extend_from_slice(&bytes);
            return;
        }
        self.out.push_back(Output::Send { conn, bytes });
    }
}
