//! Membership and the lease: which relays are in the cluster, and which one
//! runs its queue (proto/CLUSTER.md, "The pieces").
//!
//! - Each relay claims a random node id as key `n<id>` in the bucket
//!   `<prefix>_nodes` (create only: a taken id is drawn again) and writes
//!   it again every [`NODE_REFRESH`]; the bucket forgets a key
//!   [`NODE_TTL`] after its last write, so a dead relay leaves by itself.
//! - [`LeaseTask`] runs the core's lease machine ([`Lease`]) against the
//!   key `leader` in `<prefix>_lease`, whose entries live [`LeaseTimes`]'
//!   `ttl`. A create whose answer is lost is read back: if the key names
//!   this node, the lease is ours.
//! - While this relay holds the lease it runs [`lead`]: the core's
//!   [`Leader`] over the commands on `<prefix>.leader`, its events sent to
//!   each relay's `<prefix>.node.<id>`, a resync asked of every member at
//!   the start, and members that left the bucket taken out of the queue.
//!   Losing the lease stops it at once.
//!
//! The buckets hold node ids, and the leader's node id: no address, no
//! time, nothing about a chat. They live in memory.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::kv::{self, Store};
use async_nats::jetstream::stream;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;

use super::link::{self, Sender};
use super::{ClusterError, NODE_PATIENCE, Names, Status, ToLeader, ToNode};
use crate::core::frame::PairingId;
use crate::core::router::leader::Leader;
use crate::core::router::lease::{Lease, LeaseAction, LeaseTimes};
use crate::core::router::wire;

/// How long a node's key lives after its last write, and how often it is
/// written.
const NODE_TTL: Duration = Duration::from_secs(9);
const NODE_REFRESH: Duration = Duration::from_secs(3);
/// How often the leader reads who is in the cluster.
const MEMBERS_EVERY: Duration = Duration::from_secs(2);
/// How many node ids a relay draws before it gives up.
const NODE_ID_DRAWS: usize = 32;

/// The cluster's two key-value buckets.
pub struct Buckets {
    js: async_nats::jetstream::Context,
    configs: [stream::Config; 2],
    nodes: Store,
    lease: Store,
}

/// A bucket's stream by the key-value conventions (`KV_<bucket>` over
/// `$KV.<bucket>.>`), in memory, one value per key.
fn bucket_stream(bucket: String, max_age: Duration, replicas: usize) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: stream::StorageType::Memory,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    }
}

impl Buckets {
    /// Opens (creating if need be) both buckets.
    ///
    /// The buckets' streams are created here rather than by
    /// `create_key_value`: that first reads the account's information,
    /// which async-nats 0.51 cannot parse from Debian's nats-server 2.9.
    pub async fn open(
        client: &Client,
        names: &Names,
        replicas: usize,
    ) -> Result<Buckets, ClusterError> {
        let js = async_nats::jetstream::new(client.clone());
        let configs = [
            bucket_stream(names.nodes_bucket(), NODE_TTL, replicas),
            bucket_stream(names.lease_bucket(), LeaseTimes::default().ttl, replicas),
        ];
        let mut stores = Vec::new();
        for config in &configs {
            let bucket = config.name.trim_start_matches("KV_").to_owned();
            let failed = |reason: String| ClusterError::Bucket {
                bucket: bucket.clone(),
                reason,
            };
            js.get_or_create_stream(config.clone())
                .await
                .map_err(|e| failed(e.to_string()))?;
            let store = js
                .get_key_value(&bucket)
                .await
                .map_err(|e| failed(e.to_string()))?;
            stores.push(store);
        }
        let [nodes, lease] = <[Store; 2]>::try_from(stores).map_err(|_| ClusterError::Bucket {
            bucket: names.nodes_bucket(),
            reason: "not opened".into(),
        })?;
        Ok(Buckets {
            js,
            configs,
            nodes,
            lease,
        })
    }

    /// Creates the buckets again if they are gone: a NATS server that
    /// restarted starts with empty memory storage.
    async fn restore(&self) {
        for config in &self.configs {
            let _ = self.js.get_or_create_stream(config.clone()).await;
        }
    }

    /// Draws node ids until one is free, and claims it.
    pub async fn claim_node_id(&self, names: &Names) -> Result<u16, ClusterError> {
        for _ in 0..NODE_ID_DRAWS {
            let node = (rand_core::RngCore::next_u32(&mut rand_core::OsRng) & 0xffff) as u16;
            if node == 0 {
                continue;
            }
            if self.nodes.create(node_key(node), "up".into()).await.is_ok() {
                return Ok(node);
            }
        }
        Err(ClusterError::NoNodeId {
            bucket: names.nodes_bucket(),
        })
    }
}

/// The node ids in the bucket now, or `None` if it cannot be read.
async fn read_members(nodes: &Store) -> Option<BTreeSet<u16>> {
    let mut keys = nodes.keys().await.ok()?;
    let mut members = BTreeSet::new();
    while let Some(key) = keys.next().await {
        let key = key.ok()?;
        if let Some(node) = key.strip_prefix('n').and_then(|n| n.parse().ok()) {
            members.insert(node);
        }
    }
    Some(members)
}

fn node_key(node: u16) -> String {
    format!("n{node}")
}

/// Keeps this relay in the cluster and holds the lease when it can.
pub struct LeaseTask {
    pub client: Client,
    pub names: Names,
    pub node: u16,
    pub buckets: Buckets,
    pub status: Arc<Status>,
    pub topic_fallback: Duration,
    pub resume_window: Duration,
}

impl LeaseTask {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let times = LeaseTimes::default();
        let mut lease = Lease::new(times, std::time::Instant::now());
        let mut leading: Option<(u64, watch::Sender<bool>)> = None;
        let mut next_refresh = Instant::now() + NODE_REFRESH;
        loop {
            if *stop.borrow() {
                break;
            }
            if Instant::now() >= next_refresh {
                let _ = self
                    .buckets
                    .nodes
                    .put(node_key(self.node), "up".into())
                    .await;
                next_refresh = Instant::now() + NODE_REFRESH;
            }
            if let Some(action) = lease.poll_action(std::time::Instant::now()) {
                let outcome = tokio::time::timeout(times.write_timeout, self.write(action)).await;
                let now = std::time::Instant::now();
                match outcome {
                    Ok(Written::Yes(revision)) => lease.on_written(now, action, revision),
                    Ok(Written::Refused) => lease.on_refused(now, action),
                    Ok(Written::Failed) => {
                        lease.on_refused(now, action);
                        self.buckets.restore().await;
                    }
                    // No outcome: the lease machine counts it as failed.
                    Err(_) => {}
                }
            }
            let epoch = lease.epoch(std::time::Instant::now());
            if leading.as_ref().map(|(e, _)| *e) != epoch {
                if let Some((_, stop_leading)) = leading.take() {
                    let _ = stop_leading.send(true);
                }
                if let Some(epoch) = epoch {
                    let (stop_tx, stop_rx) = watch::channel(false);
                    tokio::spawn(lead(self.context(epoch), stop_rx));
                    leading = Some((epoch, stop_tx));
                }
                self.status
                    .leading
                    .store(epoch.is_some(), Ordering::Relaxed);
            }
            let wake = Instant::from_std(lease.poll_timeout()).min(next_refresh);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = stop.changed() => {}
            }
        }
        if let Some((_, stop_leading)) = leading.take() {
            let _ = stop_leading.send(true);
        }
        // Leave at once, rather than when the keys expire.
        let _ = self.buckets.nodes.delete(node_key(self.node)).await;
        if lease.epoch(std::time::Instant::now()).is_some() {
            let _ = self.buckets.lease.delete("leader").await;
        }
    }

    /// Does one write of the lease.
    async fn write(&self, action: LeaseAction) -> Written {
        let me = bytes::Bytes::from(self.node.to_string());
        match action {
            LeaseAction::Create => match self.buckets.lease.create("leader", me.clone()).await {
                Ok(revision) => Written::Yes(revision),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Written::Refused,
                // Perhaps written, its answer lost: read it back.
                Err(_) => match self.buckets.lease.entry("leader").await {
                    Ok(Some(entry)) if entry.value == me => Written::Yes(entry.revision),
                    Ok(_) => Written::Refused,
                    Err(_) => Written::Failed,
                },
            },
            LeaseAction::Renew { revision } => {
                match self.buckets.lease.update("leader", me, revision).await {
                    Ok(revision) => Written::Yes(revision),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        Written::Refused
                    }
                    Err(_) => Written::Failed,
                }
            }
        }
    }

    fn context(&self, epoch: u64) -> Leading {
        Leading {
            client: self.client.clone(),
            names: self.names.clone(),
            node: self.node,
            epoch,
            nodes: self.buckets.nodes.clone(),
            status: self.status.clone(),
            topic_fallback: self.topic_fallback,
            resume_window: self.resume_window,
        }
    }
}

/// How a write of the lease went.
enum Written {
    /// It took; the key's revision now.
    Yes(u64),
    /// Another relay holds the lease.
    Refused,
    /// The bucket could not be written (NATS away, or the bucket gone).
    Failed,
}

/// What the leader's task needs.
struct Leading {
    client: Client,
    names: Names,
    node: u16,
    epoch: u64,
    nodes: Store,
    status: Arc<Status>,
    topic_fallback: Duration,
    resume_window: Duration,
}

/// The leader's queue and its streams to the relays.
struct Queue<'a> {
    ctx: &'a Leading,
    leader: Leader,
    to_nodes: HashMap<u16, Sender>,
    /// Relays asked to say again what they hold (a resync): each once,
    /// when this leader first knows of it (from the bucket or from its
    /// commands), and again if it left and came back.
    asked: BTreeSet<u16>,
}

impl Queue<'_> {
    fn ask(&mut self, node: u16) {
        if self.asked.insert(node) {
            self.leader.join(node);
            self.send(node, &ToNode::Resync);
        }
    }

    /// Takes in who is in the cluster now.
    fn members(&mut self, members: &BTreeSet<u16>) {
        let gone: Vec<u16> = (self.leader.nodes())
            .filter(|n| !members.contains(n))
            .collect();
        for node in gone {
            self.leader.leave(node, std::time::Instant::now());
            self.to_nodes.remove(&node);
            self.asked.remove(&node);
        }
        for node in members {
            self.ask(*node);
        }
        self.ctx
            .status
            .members
            .store(members.len(), Ordering::Relaxed);
    }

    /// Sends what the queue has to say.
    fn flush(&mut self) {
        let now = std::time::Instant::now();
        while let Some((node, event)) = self.leader.poll_event(now) {
            self.send(node, &ToNode::Event(event));
        }
    }

    /// Sends one message to a relay, on its stream from this leader.
    fn send(&mut self, node: u16, message: &ToNode) {
        let Ok(bytes) = wire::encode(std::time::Instant::now(), message) else {
            return;
        };
        let ctx = self.ctx;
        let sender = self.to_nodes.entry(node).or_insert_with(|| {
            Sender::spawn(
                ctx.client.clone(),
                ctx.names.node(node),
                ctx.node,
                ctx.epoch,
                Some(NODE_PATIENCE),
                ctx.status.clone(),
                ctx.names.seal.clone(),
            )
        });
        sender.send(bytes);
    }
}

/// Runs the cluster's queue under `epoch` until `stop` turns true.
async fn lead(ctx: Leading, mut stop: watch::Receiver<bool>) {
    let Ok(mut commands) = ctx.client.subscribe(ctx.names.leader()).await else {
        return;
    };
    let pairing_ids = Box::new(|| {
        let mut id = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        PairingId(id)
    });
    let mut queue = Queue {
        ctx: &ctx,
        leader: Leader::new(ctx.topic_fallback, ctx.resume_window, pairing_ids),
        to_nodes: HashMap::new(),
        asked: BTreeSet::new(),
    };
    // This leader starts empty: every relay says again what it holds.
    let members = read_members(&ctx.nodes).await.unwrap_or_default();
    queue.members(&members);
    let mut dedup = link::Dedup::default();
    let mut members_due = Instant::now() + MEMBERS_EVERY;
    loop {
        let fallback = queue.leader.poll_timeout().map(Instant::from_std);
        let wake = fallback.map_or(members_due, |at| at.min(members_due));
        tokio::select! {
            message = commands.next() => {
                let Some(message) = message else { return };
                if let Some(batch) = link::batch_of(&ctx.names.seal, &message)
                    && dedup.is_new(&batch)
                {
                    queue.ask(batch.from);
                    let now = std::time::Instant::now();
                    for item in &batch.items {
                        match wire::decode::<ToLeader>(now, item) {
                            Ok(ToLeader::Command(command)) => {
                                queue.leader.command(batch.from, now, command)
                            }
                            Ok(ToLeader::Resync(command)) => {
                                queue.leader.resync(batch.from, now, command)
                            }
                            Err(_) => {}
                        }
                    }
                }
                link::answer(&ctx.client, &message).await;
            }
            _ = tokio::time::sleep_until(wake) => {
                if Instant::now() >= members_due {
                    members_due = Instant::now() + MEMBERS_EVERY;
                    if let Some(members) = read_members(&ctx.nodes).await {
                        queue.members(&members);
                    }
                }
            }
            _ = stop.changed() => return,
        }
        queue.flush();
    }
}
