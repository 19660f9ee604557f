//! The relay's Prometheus metrics (prometheus-client), served by the admin
//! listener at `/metrics`.
//!
//! The driver adds what the core counted ([`Stats`]) after every step and
//! sets the gauges from a [`Gauges`] snapshot before every scrape. Label
//! values come only from fixed names (roles, end reasons, close codes) and
//! from the operator's configured topic ids; nothing a peer sends becomes a
//! label. Every metric is documented in `deploy/README.md`.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::core::CloseCode;
use crate::core::frame::TopicId;
use crate::core::stats::{Gauges, Stats};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Role {
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Topic {
    /// A configured topic id, or "none".
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Code {
    code: &'static str,
}

fn topic_label(topic: Option<TopicId>) -> Topic {
    Topic {
        topic: topic.map_or_else(|| "none".to_owned(), |t| t.get().to_string()),
    }
}

/// Upper bounds of the queue-wait histogram, in seconds.
const WAIT_BUCKETS: [f64; 12] = [
    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];

/// Every metric the relay exports.
pub struct Metrics {
    registry: Registry,
    /// "No topic" and the configured topics: the queue's label values.
    topics: Vec<Option<TopicId>>,
    connections: Family<Role, Gauge>,
    counsellors_with_room: Gauge,
    waiting: Family<Topic, Gauge>,
    waiting_away: Gauge,
    chats: Gauge,
    chat_sides_away: Gauge,
    pow_difficulty: Gauge,
    service_open: Gauge,
    ready: Gauge,
    wait_seconds: Histogram,
    pairings: Counter,
    transfers: Counter,
    chats_ended: Family<Reason, Counter>,
    frames_forwarded: Counter,
    bytes_forwarded: Counter,
    closes: Family<Code, Counter>,
    tls_reloads: Family<Reason, Counter>,
    revocations: Counter,
    clients_not_joined: Gauge,
    rent_challenges: Counter,
    late_pairings: Counter,
    refused_attempts: Counter,
    cluster_nats_connected: Gauge,
    cluster_leader: Gauge,
    cluster_members: Gauge,
    cluster_resent: Gauge,
    cluster_given_up: Gauge,
}

impl Metrics {
    /// Metrics for a relay offering `topics` (they appear with 0 waiting).
    pub fn new(topics: &[TopicId]) -> Metrics {
        let mut m = Metrics {
            connections: Family::default(),
            counsellors_with_room: Gauge::default(),
            waiting: Family::default(),
            waiting_away: Gauge::default(),
            chats: Gauge::default(),
            chat_sides_away: Gauge::default(),
            pow_difficulty: Gauge::default(),
            service_open: Gauge::default(),
            ready: Gauge::default(),
            wait_seconds: Histogram::new(WAIT_BUCKETS),
            pairings: Counter::default(),
            transfers: Counter::default(),
            chats_ended: Family::default(),
            frames_forwarded: Counter::default(),
            bytes_forwarded: Counter::default(),
            closes: Family::default(),
            tls_reloads: Family::default(),
            revocations: Counter::default(),
            clients_not_joined: Gauge::default(),
            rent_challenges: Counter::default(),
            late_pairings: Counter::default(),
            refused_attempts: Counter::default(),
            cluster_nats_connected: Gauge::default(),
            cluster_leader: Gauge::default(),
            cluster_members: Gauge::default(),
            cluster_resent: Gauge::default(),
            cluster_given_up: Gauge::default(),
            registry: Registry::with_prefix("fluister"),
            topics: std::iter::once(None)
                .chain(topics.iter().copied().map(Some))
                .collect(),
        };
        for role in ["client", "counsellor", "unidentified", "handshake"] {
            let _ = m.connections.get_or_create(&Role { role });
        }
        for topic in &m.topics {
            let _ = m.waiting.get_or_create(&topic_label(*topic));
        }
        let r = &mut m.registry;
        r.register(
            "connections",
            "Open connections by role (handshake: QUIC handshake or no control stream yet; unidentified: before HELLO)",
            m.connections.clone(),
        );
        r.register(
            "counsellors_with_room",
            "Signed-in counsellors who are available and below their capacity",
            m.counsellors_with_room.clone(),
        );
        r.register(
            "queue_waiting",
            "Clients waiting in the queue, by chosen topic id (none: no topic chosen)",
            m.waiting.clone(),
        );
        r.register(
            "queue_waiting_away",
            "Waiting clients whose connection dropped, keeping their place",
            m.waiting_away.clone(),
        );
        r.register("chats", "Chats in progress", m.chats.clone());
        r.register(
            "chat_sides_away",
            "Chat sides whose connection dropped and may resume",
            m.chat_sides_away.clone(),
        );
        r.register(
            "pow_difficulty",
            "Proof-of-work difficulty asked of new clients, in leading zero bits",
            m.pow_difficulty.clone(),
        );
        r.register(
            "service_open",
            "1 while the opening hours say the helpline is open, else 0",
            m.service_open.clone(),
        );
        r.register(
            "cluster_nats_connected",
            "In a cluster: 1 while the NATS connection is up, else 0 (0 without [cluster])",
            m.cluster_nats_connected.clone(),
        );
        r.register(
            "cluster_leader",
            "In a cluster: 1 while this relay holds the lease and runs the queue",
            m.cluster_leader.clone(),
        );
        r.register(
            "cluster_members",
            "In a cluster: relays in the cluster, as the leader last read them (0 elsewhere)",
            m.cluster_members.clone(),
        );
        r.register(
            "cluster_batches_resent",
            "In a cluster: batches between relays sent again, unanswered (since start)",
            m.cluster_resent.clone(),
        );
        r.register(
            "cluster_batches_given_up",
            "In a cluster: batches between relays dropped after their patience ran out (since start)",
            m.cluster_given_up.clone(),
        );
        r.register(
            "ready",
            "1 while the relay accepts connections, 0 while it drains",
            m.ready.clone(),
        );
        r.register(
            "queue_wait_seconds",
            "How long clients waited in the queue before a counsellor took them",
            m.wait_seconds.clone(),
        );
        r.register("pairings", "Chats started", m.pairings.clone());
        r.register(
            "transfers",
            "Chats transferred to a colleague or back to the queue",
            m.transfers.clone(),
        );
        r.register(
            "chats_ended",
            "Chats ended, by the protocol's end reason",
            m.chats_ended.clone(),
        );
        r.register(
            "frames_forwarded",
            "End-to-end frames forwarded (or held for a side that is away)",
            m.frames_forwarded.clone(),
        );
        r.register(
            "forwarded_bytes",
            "Bytes of end-to-end frames forwarded",
            m.bytes_forwarded.clone(),
        );
        r.register(
            "connections_closed",
            "Connections the relay closed, by the protocol's close code",
            m.closes.clone(),
        );
        r.register(
            "tls_reloads",
            "Reloads of the TLS files and revocation list, by result (ok, refused)",
            m.tls_reloads.clone(),
        );
        r.register(
            "counsellors_revoked",
            "Signed-in counsellors cut off because their credential was revoked",
            m.revocations.clone(),
        );
        r.register(
            "clients_not_joined",
            "Clients that said HELLO and have not joined the queue (solving the proof of work, or idle)",
            m.clients_not_joined.clone(),
        );
        r.register(
            "queue_rent_challenges",
            "Proof-of-work challenges sent to waiting clients to keep their place in a crowded queue",
            m.rent_challenges.clone(),
        );
        r.register(
            "late_pairings",
            "Pairs the queue chose that came too late to start: the client had gone or the counsellor had no room",
            m.late_pairings.clone(),
        );
        r.register(
            "attempts_refused",
            "Connection attempts refused by the per-address limit",
            m.refused_attempts.clone(),
        );
        m
    }

    /// Adds what the core counted since the last call.
    pub fn add(&self, stats: Stats) {
        self.pairings.inc_by(stats.pairings);
        self.transfers.inc_by(stats.transfers);
        self.frames_forwarded.inc_by(stats.frames_forwarded);
        self.bytes_forwarded.inc_by(stats.bytes_forwarded);
        self.rent_challenges.inc_by(stats.rent_challenges);
        self.late_pairings.inc_by(stats.late_pairings);
        for (reason, n) in stats.chats_ended {
            self.chats_ended.get_or_create(&Reason { reason }).inc_by(n);
        }
        for (code, n) in stats.closes {
            self.closes.get_or_create(&Code { code }).inc_by(n);
        }
        for wait in stats.waits {
            self.wait_seconds.observe(wait.as_secs_f64());
        }
    }

    /// A connection the shell closed itself (busy, slow consumer, ...).
    pub fn closed(&self, code: CloseCode) {
        self.closes.get_or_create(&Code { code: code.name() }).inc();
    }

    pub fn revoked(&self) {
        self.revocations.inc();
    }

    /// A FORWARD frame a connection task delivered straight to its peer.
    pub fn forwarded(&self, bytes: u64) {
        self.frames_forwarded.inc();
        self.bytes_forwarded.inc_by(bytes);
    }

    /// An attempt over the per-address limit, refused before its handshake.
    pub fn refused_attempt(&self) {
        self.refused_attempts.inc();
    }

    pub fn reloaded(&self, ok: bool) {
        let reason = if ok { "ok" } else { "refused" };
        self.tls_reloads.get_or_create(&Reason { reason }).inc();
    }

    pub fn set_cluster(&self, status: &super::cluster::StatusSnapshot) {
        self.cluster_nats_connected.set(i64::from(status.connected));
        self.cluster_leader.set(i64::from(status.leading));
        self.cluster_members
            .set(i64::try_from(status.members).unwrap_or(i64::MAX));
        self.cluster_resent
            .set(i64::try_from(status.resent).unwrap_or(i64::MAX));
        self.cluster_given_up
            .set(i64::try_from(status.given_up).unwrap_or(i64::MAX));
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Sets the gauges from a snapshot of the core.
    pub fn set_gauges(&self, g: &Gauges) {
        let set = |gauge: &Gauge<i64, AtomicI64>, v: usize| {
            gauge.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(
            &self.connections.get_or_create(&Role { role: "client" }),
            g.clients,
        );
        set(
            &self.connections.get_or_create(&Role { role: "counsellor" }),
            g.counsellors,
        );
        set(
            &self.connections.get_or_create(&Role {
                role: "unidentified",
            }),
            g.unidentified,
        );
        set(
            &self.connections.get_or_create(&Role { role: "handshake" }),
            g.handshaking,
        );
        set(&self.clients_not_joined, g.clients_not_joined);
        set(&self.counsellors_with_room, g.counsellors_with_room);
        for topic in &self.topics {
            let n = g.waiting.get(topic).copied().unwrap_or(0);
            set(&self.waiting.get_or_create(&topic_label(*topic)), n);
        }
        set(&self.waiting_away, g.waiting_away);
        set(&self.chats, g.chats);
        set(&self.chat_sides_away, g.sides_away);
        self.pow_difficulty.set(i64::from(g.pow_difficulty));
        self.service_open.set(i64::from(g.open));
    }

    /// The Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric the Grafana dashboard asks for exists, by the name the
    /// relay exports it under.
    #[test]
    fn the_dashboard_asks_only_for_metrics_the_relay_exports() {
        let exported = Metrics::new(&[]).encode();
        let dashboard = include_str!("../../deploy/grafana/fluister-dashboard.json");
        let names: std::collections::BTreeSet<&str> = dashboard
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("fluister_"))
            .collect();
        assert!(names.len() >= 10, "{names:?}");
        for name in names {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            assert!(
                exported.contains(&format!("\n{base}"))
                    || exported.contains(&format!("# TYPE {base} ")),
                "the dashboard asks for {name}, which the relay does not export"
            );
        }
    }
}
