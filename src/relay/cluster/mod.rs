//! Cluster mode (`[cluster]`, proto/CLUSTER.md): several relays share one
//! queue, and carry chats between them, through NATS.
//!
//! Data flow:
//! - the core hands its [`RouteCommand`]s to this relay's [`NatsRouter`].
//!   Queue commands (a client enters or leaves the queue, a counsellor's
//!   offer, holdings, claims) go in order to the leader on
//!   `<prefix>.leader`. A message for a chat side on another relay goes to
//!   `<prefix>.side.<route>`, a subject named by a hash of the random
//!   pairing id and the side's role. `HostSide` and `LeaveSide` subscribe
//!   to and leave the subject of a side this relay hosts;
//! - what comes back (the leader's events on `<prefix>.node.<id>`, and the
//!   messages for the sides hosted here) lands in the router's inbox and
//!   wakes the driver, which lets the core poll the router;
//! - the lease task (`leading.rs`) keeps this relay's node id alive in the
//!   key-value bucket `<prefix>_nodes` and tries for the lease in
//!   `<prefix>_lease`. While it holds the lease it runs the cluster's queue
//!   (the core's [`Leader`]) and tells every relay to say again what it
//!   holds (a resync), which the router answers from its mirror of what it
//!   has told the leader;
//! - every stream between relays is a `link::Sender`: batches as NATS
//!   requests, answered once taken in, sent again until they are, and
//!   deduplicated by sequence number.
//!
//! What goes through NATS is what the seam carries (`router::wire`): no
//! address or port, no source tag, no capability (only hashes), FORWARD
//! blobs as the opaque 1,039 bytes they are; and all of it sealed with the
//! cluster's secret (`seal.rs`), so that NATS itself reads none of it. The
//! buckets hold node ids and the leader's node id, in memory, for
//! seconds. Nothing here logs a subject, a node's traffic or anything
//! about a chat.
//!
//! [`Leader`]: crate::core::router::leader::Leader

mod leading;
mod link;
mod seal;
mod stats;
pub use stats::StatsLink;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::Client;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::sync::{Notify, mpsc, watch};

use crate::config::ClusterConfig;
use crate::core::frame::{Presence, TopicId};
use crate::core::pairing::{ConnId, Offer, QueueView, Request};
use crate::core::ratelimit::SourceTag;
use crate::core::router::{
    CapHash, PeerMessage, Resumes, RouteCommand, RouteEvent, Router, SideKey, wire,
};
use link::Sender;
pub use seal::Seal;

/// How long a message for a chat side is tried: the longest a side can be
/// away (`resume_window_secs`' upper bound) and come back to take it.
const SIDE_PATIENCE: Duration = Duration::from_secs(3600);
/// How long the leader tries an event for a relay that may have died.
const NODE_PATIENCE: Duration = Duration::from_secs(30);
/// How long NATS may be out of reach before `/readyz` fails.
const UNREACHABLE_GRACE: Duration = Duration::from_secs(10);

/// Why cluster mode could not start.
#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("cannot reach NATS at {servers}: {reason}")]
    Connect { servers: String, reason: String },
    #[error("NATS JetStream key-value bucket {bucket}: {reason}")]
    Bucket { bucket: String, reason: String },
    #[error("no free node id in the cluster's bucket {bucket}")]
    NoNodeId { bucket: String },
    /// The keeper of the statistics store cannot answer on NATS.
    #[error("cannot answer batches of codings on NATS subject {subject}: {reason}")]
    Stats { subject: String, reason: String },
    #[error(transparent)]
    Secret(#[from] crate::config::ConfigError),
}

/// What `/metrics` and `/readyz` show of the cluster.
#[derive(Default)]
pub struct Status {
    connected: AtomicBool,
    /// Since when NATS has been out of reach, if it is.
    unreachable_since: Mutex<Option<Instant>>,
    leading: AtomicBool,
    members: AtomicUsize,
    resent: AtomicU64,
    given_up: AtomicU64,
}

/// A snapshot of [`Status`] for the metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusSnapshot {
    pub connected: bool,
    pub leading: bool,
    pub members: usize,
    pub resent: u64,
    pub given_up: u64,
}

impl Status {
    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        let mut since = self
            .unreachable_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *since = match (connected, *since) {
            (true, _) => None,
            (false, Some(at)) => Some(at),
            (false, None) => Some(Instant::now()),
        };
    }

    /// Whether this relay should take new connections: NATS is in reach,
    /// or has been out of reach only briefly.
    pub fn serving(&self) -> bool {
        let since = self
            .unreachable_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        since.is_none_or(|at| at.elapsed() < UNREACHABLE_GRACE)
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        StatusSnapshot {
            connected: self.connected.load(Ordering::Relaxed),
            leading: self.leading.load(Ordering::Relaxed),
            members: self.members.load(Ordering::Relaxed),
            resent: self.resent.load(Ordering::Relaxed),
            given_up: self.given_up.load(Ordering::Relaxed),
        }
    }

    fn batch_resent(&self) {
        self.resent.fetch_add(1, Ordering::Relaxed);
    }

    fn batch_given_up(&self) {
        self.given_up.fetch_add(1, Ordering::Relaxed);
    }
}

/// The subjects and buckets of one cluster, and its secret.
#[derive(Clone)]
struct Names {
    prefix: String,
    seal: Seal,
}

impl Names {
    fn leader(&self) -> String {
        format!("{}.leader", self.prefix)
    }
    fn node(&self, node: u16) -> String {
        format!("{}.node.{node}", self.prefix)
    }
    /// A chat side's subject: nothing in it but a hash of the chat's
    /// random pairing id and the side's role.
    fn side(&self, side: SideKey) -> String {
        let mut hash = Sha256::new();
        hash.update(b"fluister-route");
        hash.update(side.pairing.0);
        hash.update([side.role.to_byte()]);
        format!(
            "{}.side.{}",
            self.prefix,
            hex::encode(&hash.finalize()[..16])
        )
    }
    /// Where batches of codings go to the keeper of the statistics store.
    fn stats(&self) -> String {
        format!("{}.stats", self.prefix)
    }
    fn nodes_bucket(&self) -> String {
        format!("{}_nodes", self.prefix)
    }
    fn lease_bucket(&self) -> String {
        format!("{}_lease", self.prefix)
    }
}

/// What a relay sends the leader.
#[derive(Debug, Serialize, Deserialize)]
enum ToLeader {
    Command(RouteCommand),
    /// What the relay holds, said again because a new leader asked.
    Resync(RouteCommand),
}

/// What the leader sends a relay.
#[derive(Debug, Serialize, Deserialize)]
enum ToNode {
    /// A new leader: say again everything you hold.
    Resync,
    Event(RouteEvent),
}

/// What the router shares with the tasks that receive from NATS: the
/// leader's events and resync requests, in the order they came, and the
/// messages for the sides hosted here.
struct Inbox {
    events: Mutex<VecDeque<ToNode>>,
    /// Wakes the driver when events come.
    wake: Arc<Notify>,
}

impl Inbox {
    fn push(&self, events: impl IntoIterator<Item = ToNode>) {
        self.lock().extend(events);
        self.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<ToNode>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A relay in a cluster: its router, and what the admin listener shows.
pub struct Joined {
    pub router: NatsRouter,
    pub status: Arc<Status>,
    /// The driver waits on this beside its other inputs.
    pub wake: Arc<Notify>,
    /// The lease task: it leaves the cluster once `stop` turns true.
    pub task: tokio::task::JoinHandle<()>,
    /// The way to the keeper of the statistics store.
    pub stats: StatsLink,
}

/// Connects to NATS, takes a node id, and starts the lease and the
/// receiving tasks. They run until `stop` turns true.
pub async fn join(
    config: &ClusterConfig,
    limits: &crate::core::limits::Limits,
    stop: watch::Receiver<bool>,
) -> Result<Joined, ClusterError> {
    let seal = Seal::load(&config.secret_file)?;
    let status = Arc::new(Status::default());
    let client = connect(config, status.clone()).await?;
    let names = Names {
        prefix: config.prefix.clone(),
        seal,
    };
    let buckets = leading::Buckets::open(&client, &names, config.replicas).await?;
    let node = buckets.claim_node_id(&names).await?;
    let wake = Arc::new(Notify::new());
    let inbox = Arc::new(Inbox {
        events: Mutex::new(VecDeque::new()),
        wake: wake.clone(),
    });
    let events = client
        .subscribe(names.node(node))
        .await
        .map_err(|e| connect_error(config, e))?;
    tokio::spawn(receive_events(
        client.clone(),
        names.seal.clone(),
        events,
        inbox.clone(),
    ));
    let (hosting, hosting_rx) = mpsc::unbounded_channel();
    tokio::spawn(host_sides(
        client.clone(),
        names.clone(),
        hosting_rx,
        inbox.clone(),
    ));
    let lease = leading::LeaseTask {
        client: client.clone(),
        names: names.clone(),
        node,
        buckets,
        status: status.clone(),
        topic_fallback: limits.topic_fallback,
        resume_window: limits.resume_window,
    };
    let task = tokio::spawn(lease.run(stop));
    let to_leader = Sender::spawn(
        client.clone(),
        names.leader(),
        node,
        0,
        None,
        status.clone(),
        names.seal.clone(),
    );
    let stats = StatsLink::new(client.clone(), names.clone());
    let router = NatsRouter {
        client,
        names,
        node,
        status: status.clone(),
        inbox,
        to_leader,
        to_sides: HashMap::new(),
        hosting,
        mirror: Mirror::default(),
        cluster_waiting: Vec::new(),
    };
    Ok(Joined {
        router,
        status,
        wake,
        task,
        stats,
    })
}

fn connect_error(config: &ClusterConfig, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Connect {
        servers: config.servers.join(", "),
        reason: e.to_string(),
    }
}

/// A NATS connection that reconnects by itself, forever, and reports
/// whether it is connected to `status`.
async fn connect(config: &ClusterConfig, status: Arc<Status>) -> Result<Client, ClusterError> {
    let mut options = async_nats::ConnectOptions::new()
        .name("fluister-relay")
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .ping_interval(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(2)));
    if let Some(creds) = &config.creds {
        options = options
            .credentials_file(creds)
            .await
            .map_err(|e| connect_error(config, format!("cluster.creds: {e}")))?;
    }
    if config.uses_tls() {
        options = options.require_tls(true);
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let events_status = status.clone();
    options = options.event_callback(move |event| {
        let status = events_status.clone();
        async move {
            match event {
                async_nats::Event::Connected => status.set_connected(true),
                async_nats::Event::Disconnected => status.set_connected(false),
                _ => {}
            }
        }
    });
    let client = options
        .connect(config.servers.clone())
        .await
        .map_err(|e| connect_error(config, e))?;
    status.set_connected(true);
    Ok(client)
}

/// Takes in the leader's events for this relay.
async fn receive_events(
    client: Client,
    seal: Seal,
    mut events: async_nats::Subscriber,
    inbox: Arc<Inbox>,
) {
    let mut dedup = link::Dedup::default();
    // The newest leader's epoch, and when it was last heard. A leader
    // whose lease has lapsed cannot send any more, so after the lease's
    // time to live a lower epoch is taken too: after NATS restarts with
    // empty memory, revisions (and epochs) start again from 1.
    let mut newest: Option<(u64, Instant)> = None;
    let lease_ttl = crate::core::router::lease::LeaseTimes::default().ttl;
    while let Some(message) = events.next().await {
        if let Some(batch) = link::batch_of(&seal, &message)
            && newest.is_none_or(|(epoch, at)| batch.epoch >= epoch || at.elapsed() > lease_ttl)
            && dedup.is_new(&batch)
        {
            newest = Some((batch.epoch, Instant::now()));
            let now = Instant::now();
            let taken =
                (batch.items.iter()).filter_map(|item| wire::decode::<ToNode>(now, item).ok());
            inbox.push(taken.collect::<Vec<_>>());
        }
        link::answer(&client, &message).await;
    }
}

/// Whether this relay hosts a side now.
enum Hosting {
    Host(SideKey),
    Leave(SideKey),
}

/// Subscribes to the subjects of the sides this relay hosts.
async fn host_sides(
    client: Client,
    names: Names,
    mut hosting: mpsc::UnboundedReceiver<Hosting>,
    inbox: Arc<Inbox>,
) {
    let mut hosted: HashMap<SideKey, tokio::task::JoinHandle<()>> = HashMap::new();
    while let Some(change) = hosting.recv().await {
        match change {
            Hosting::Host(side) => {
                if hosted.get(&side).is_some_and(|task| !task.is_finished()) {
                    continue;
                }
                let Ok(subscriber) = client.subscribe(names.side(side)).await else {
                    // Only when the client is closing.
                    continue;
                };
                let task = tokio::spawn(receive_side(
                    client.clone(),
                    names.seal.clone(),
                    subscriber,
                    side,
                    inbox.clone(),
                ));
                hosted.insert(side, task);
            }
            Hosting::Leave(side) => {
                if let Some(task) = hosted.remove(&side) {
                    task.abort();
                }
            }
        }
    }
}

/// Takes in the messages for one side hosted here.
async fn receive_side(
    client: Client,
    seal: Seal,
    mut subscriber: async_nats::Subscriber,
    side: SideKey,
    inbox: Arc<Inbox>,
) {
    let mut dedup = link::Dedup::default();
    while let Some(message) = subscriber.next().await {
        if let Some(batch) = link::batch_of(&seal, &message)
            && dedup.is_new(&batch)
        {
            let now = Instant::now();
            let taken = (batch.items.iter())
                .filter_map(|item| wire::decode::<PeerMessage>(now, item).ok())
                .map(|message| ToNode::Event(RouteEvent::Delivered { to: side, message }));
            inbox.push(taken.collect::<Vec<_>>());
        }
        link::answer(&client, &message).await;
    }
}

/// What this relay has told the leader and still holds: what it says
/// again to a new leader, and its own share of the queue.
#[derive(Default)]
struct Mirror {
    waiting: BTreeMap<ConnId, Request>,
    /// Of them, how many came from each source (the limit of places per
    /// source) and how many were handed back with priority: kept as they
    /// change, since the core asks at every JOIN.
    per_source: HashMap<SourceTag, usize>,
    priority: usize,
    offers: BTreeMap<ConnId, Offer>,
    holds: HashMap<CapHash, Option<Resumes>>,
    /// Counsellors' presence here, by pseudonym (for transfers).
    presence: BTreeMap<String, Presence>,
}

impl Mirror {
    fn note_command(&mut self, command: &RouteCommand) {
        match command {
            RouteCommand::Enqueue { client, request } => self.enter_queue(*client, *request),
            RouteCommand::Withdraw { client } => self.leave_queue(*client),
            RouteCommand::Offer { counsellor, offer } => {
                self.offers.insert(*counsellor, offer.clone());
            }
            RouteCommand::SignOut { counsellor } => {
                self.offers.remove(counsellor);
            }
            RouteCommand::Hold { hash, resumes } => {
                self.holds.insert(*hash, resumes.clone());
            }
            RouteCommand::Release { hash } => {
                self.holds.remove(hash);
            }
            RouteCommand::Presence { name, presence } => {
                if *presence == Presence::SignedOut {
                    self.presence.remove(name);
                } else {
                    self.presence.insert(name.clone(), *presence);
                }
            }
            _ => {}
        }
    }

    fn note_event(&mut self, event: &RouteEvent) {
        match event {
            RouteEvent::Paired { client, .. } => self.leave_queue(*client),
            RouteEvent::PairedRemote {
                local,
                role: crate::core::frame::Role::Client,
                ..
            } => self.leave_queue(*local),
            _ => {}
        }
    }

    fn enter_queue(&mut self, client: ConnId, request: Request) {
        self.leave_queue(client);
        if let Some(source) = request.source {
            *self.per_source.entry(source).or_default() += 1;
        }
        self.priority += usize::from(request.priority);
        self.waiting.insert(client, request);
    }

    fn leave_queue(&mut self, client: ConnId) {
        let Some(request) = self.waiting.remove(&client) else {
            return;
        };
        if let Some(source) = request.source
            && let Some(count) = self.per_source.get_mut(&source)
        {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&source);
            }
        }
        self.priority -= usize::from(request.priority);
    }

    /// Everything again, for a new leader: counsellors first, then the
    /// queue in this relay's order of turns, then the holdings and who is
    /// signed in.
    fn resync(&self) -> Vec<RouteCommand> {
        let offers = (self.offers.iter()).map(|(counsellor, offer)| RouteCommand::Offer {
            counsellor: *counsellor,
            offer: offer.clone(),
        });
        let mut waiting: Vec<(&ConnId, &Request)> = self.waiting.iter().collect();
        waiting.sort_by_key(|(_, request)| request.turn);
        let queue = waiting
            .into_iter()
            .map(|(client, request)| RouteCommand::Enqueue {
                client: *client,
                request: *request,
            });
        let holds = (self.holds.iter()).map(|(hash, resumes)| RouteCommand::Hold {
            hash: *hash,
            resumes: resumes.clone(),
        });
        let presence = (self.presence.iter()).map(|(name, presence)| RouteCommand::Presence {
            name: name.clone(),
            presence: *presence,
        });
        offers.chain(queue).chain(holds).chain(presence).collect()
    }
}

/// This relay's router in a cluster.
pub struct NatsRouter {
    client: Client,
    names: Names,
    node: u16,
    status: Arc<Status>,
    inbox: Arc<Inbox>,
    to_leader: Sender,
    /// One stream per chat side on another relay that this relay writes to.
    to_sides: HashMap<SideKey, Sender>,
    hosting: mpsc::UnboundedSender<Hosting>,
    mirror: Mirror,
    /// How many wait per topic in the whole cluster, as last told.
    cluster_waiting: Vec<(Option<TopicId>, usize)>,
}

impl NatsRouter {
    fn tell_leader(&mut self, message: &ToLeader) {
        if let Ok(bytes) = wire::encode(Instant::now(), message) {
            self.to_leader.send(bytes);
        }
    }

    fn deliver(&mut self, to: SideKey, message: &PeerMessage) {
        let Ok(bytes) = wire::encode(Instant::now(), message) else {
            return;
        };
        let sender = self.to_sides.entry(to).or_insert_with(|| {
            Sender::spawn(
                self.client.clone(),
                self.names.side(to),
                self.node,
                0,
                Some(SIDE_PATIENCE),
                self.status.clone(),
                self.names.seal.clone(),
            )
        });
        sender.send(bytes);
        // The last message this relay sends to that side: its stream
        // finishes what it holds, and ends.
        if matches!(
            message,
            PeerMessage::End(_) | PeerMessage::Refused | PeerMessage::Moved { .. }
        ) {
            self.to_sides.remove(&to);
        }
    }
}

impl Router for NatsRouter {
    fn handle_command(&mut self, command: RouteCommand) {
        match command {
            RouteCommand::Deliver { to, message } => self.deliver(to, &message),
            RouteCommand::HostSide { side } => {
                let _ = self.hosting.send(Hosting::Host(side));
            }
            RouteCommand::LeaveSide { side } => {
                let _ = self.hosting.send(Hosting::Leave(side));
                // Nothing more goes from this side to the other.
                self.to_sides.remove(&side.other());
            }
            command => {
                self.mirror.note_command(&command);
                self.tell_leader(&ToLeader::Command(command));
            }
        }
    }

    fn poll_event(&mut self, _now: std::time::Instant) -> Option<RouteEvent> {
        loop {
            let next = self.inbox.lock().pop_front()?;
            let event = match next {
                // In order: what the events before it changed is in it.
                ToNode::Resync => {
                    for command in self.mirror.resync() {
                        self.tell_leader(&ToLeader::Resync(command));
                    }
                    continue;
                }
                ToNode::Event(event) => event,
            };
            self.mirror.note_event(&event);
            if let RouteEvent::QueueStats { waiting } = &event {
                self.cluster_waiting = waiting.clone();
            }
            return Some(event);
        }
    }

    fn poll_timeout(&self) -> Option<std::time::Instant> {
        // The inbox wakes the driver itself.
        None
    }

    fn view(&self) -> &dyn QueueView {
        self
    }
}

/// The cluster's counts as last told (at least this relay's own), and
/// this relay's own clients per source.
impl QueueView for NatsRouter {
    fn waiting_count(&self) -> usize {
        let cluster: usize = self.cluster_waiting.iter().map(|(_, n)| n).sum();
        cluster.max(self.mirror.waiting.len())
    }
    fn newcomers_waiting(&self) -> usize {
        self.waiting_count().saturating_sub(self.mirror.priority)
    }
    fn waiting_from(&self, source: SourceTag) -> usize {
        self.mirror.per_source.get(&source).copied().unwrap_or(0)
    }
    fn waiting_per_topic(&self) -> Vec<(Option<TopicId>, usize)> {
        self.cluster_waiting.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(turn: u64, priority: bool, source: Option<SourceTag>) -> Request {
        Request {
            topic: None,
            language: None,
            since: Instant::now(),
            turn,
            priority,
            source,
        }
    }

    #[test]
    fn the_mirror_counts_places_per_source_and_priority_as_they_change() {
        let (s, t) = (SourceTag([1; 16]), SourceTag([2; 16]));
        let mut m = Mirror::default();
        let enqueue = |client, request| RouteCommand::Enqueue {
            client: ConnId::for_tests(client),
            request,
        };
        m.note_command(&enqueue(1, request(1, false, Some(s))));
        m.note_command(&enqueue(2, request(2, true, Some(s))));
        // Back at its place after a refused pairing: counted once.
        m.note_command(&enqueue(2, request(2, true, Some(s))));
        m.note_command(&enqueue(3, request(3, false, Some(t))));
        assert_eq!((m.per_source[&s], m.per_source[&t], m.priority), (2, 1, 1));
        m.note_event(&RouteEvent::Paired {
            client: ConnId::for_tests(2),
            counsellor: ConnId::for_tests(9),
        });
        m.note_command(&RouteCommand::Withdraw {
            client: ConnId::for_tests(3),
        });
        m.note_command(&RouteCommand::Withdraw {
            client: ConnId::for_tests(3),
        });
        assert_eq!(
            (m.per_source.get(&s), m.per_source.get(&t), m.priority),
            (Some(&1), None, 0)
        );
        let resync = m.resync();
        let one = ConnId::for_tests(1);
        assert!(
            matches!(resync.as_slice(), [RouteCommand::Enqueue { client, .. }] if *client == one)
        );
    }
}
