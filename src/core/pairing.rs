//! The pairing seam: who is waiting for what, who can take which chat, and
//! who goes with whom (PROTOCOL.md §7.3, "Pairing").
//!
//! [`Relay`](super::relay::Relay) tells a [`PairingBackend`] about waiting
//! clients ([`Request`]) and about counsellors' current [`Offer`]s, and asks
//! it for the next pair; it never looks at the queue's representation.
//! [`LocalQueue`] is the single-relay backend. Its rules:
//! - queue order: transferred clients first (in order), then everyone else
//!   by when they joined, so a client that comes back after its connection
//!   dropped gets its old place back;
//! - a client goes to a counsellor who is available, has room, speaks its
//!   language and serves its topic; after `topic_fallback` of waiting, a
//!   counsellor of its language who does not serve the topic will do;
//! - among those, the least-loaded, then the one paired least recently.
//!
//! A backend that shares this state between relays implements the same trait.

use std::time::{Duration, Instant};

use super::frame::{Language, TopicId};

/// The relay core's handle for one connection. It is a local counter, never
/// sent on the wire and never logged.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub(crate) u64);

impl std::fmt::Debug for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnId(..)")
    }
}

/// The queue is at its configured maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// What a waiting client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub topic: Option<TopicId>,
    pub language: Option<Language>,
    /// When the client (re)entered the queue.
    pub since: Instant,
    /// Its turn: a number that grows with every (re)entry into the queue,
    /// so that queue order survives a client leaving and coming back.
    pub turn: u64,
    /// Transferred back to the queue: goes ahead of newcomers and is not
    /// counted against the queue limit.
    pub priority: bool,
}

/// What a counsellor can take right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub available: bool,
    pub load: usize,
    pub capacity: usize,
    /// Empty = every topic.
    pub topics: Vec<TopicId>,
    /// Empty = every language.
    pub languages: Vec<Language>,
}

impl Offer {
    fn has_room(&self) -> bool {
        self.available && self.load < self.capacity
    }
    fn speaks(&self, language: Option<Language>) -> bool {
        match language {
            None => true,
            Some(l) => self.languages.is_empty() || self.languages.contains(&l),
        }
    }
    fn serves(&self, topic: Option<TopicId>) -> bool {
        match topic {
            None => true,
            Some(t) => self.topics.is_empty() || self.topics.contains(&t),
        }
    }
}

/// Pairing and routing decisions, behind one seam.
pub trait PairingBackend {
    /// Puts a client in the queue.
    fn enqueue(&mut self, client: ConnId, request: Request) -> Result<(), QueueFull>;
    /// Puts a client that came back on a new connection back at the place
    /// its `request.since` gives it; the queue limit does not apply.
    fn requeue(&mut self, client: ConnId, request: Request);
    /// Takes a client out of the queue, returning what it asked for.
    fn remove_client(&mut self, client: ConnId) -> Option<Request>;
    /// Sets or replaces what a counsellor can take.
    fn offer(&mut self, counsellor: ConnId, offer: Offer);
    /// Forgets a counsellor.
    fn remove_counsellor(&mut self, counsellor: ConnId);
    /// The next (client, counsellor) pair; the client leaves the queue and
    /// the counsellor's load goes up by one.
    fn next_pair(&mut self, now: Instant, topic_fallback: Duration) -> Option<(ConnId, ConnId)>;
    /// Waiting clients in queue order, first = position 1.
    fn waiting(&self) -> Vec<(ConnId, Request)>;
    /// How many waiting clients are newcomers (not handed back by a
    /// counsellor): what the queue's fullness counts, without a copy of it.
    fn newcomers_waiting(&self) -> usize;
    /// Whether a signed-in, available counsellor speaks the request's
    /// language (its topic can always fall back): if not, nobody can give
    /// the client an estimate of its wait.
    fn could_serve(&self, request: &Request) -> bool;
}

/// One relay's in-memory queue.
#[derive(Debug)]
pub struct LocalQueue {
    max_queue: usize,
    clients: Vec<(ConnId, Request)>,
    /// In sign-in order, with when each was last given a chat.
    counsellors: Vec<(ConnId, Offer, Option<Instant>)>,
}

impl LocalQueue {
    pub fn new(max_queue: usize) -> Self {
        LocalQueue {
            max_queue,
            clients: Vec::new(),
            counsellors: Vec::new(),
        }
    }

    /// The best counsellor for `request`, as an index into `counsellors`.
    fn best_for(&self, request: &Request, now: Instant, topic_fallback: Duration) -> Option<usize> {
        let fits = |strict_topic: bool| {
            self.counsellors
                .iter()
                .enumerate()
                .filter(|(_, (_, o, _))| o.has_room() && o.speaks(request.language))
                .filter(move |(_, (_, o, _))| !strict_topic || o.serves(request.topic))
                .min_by_key(|(_, (_, o, last))| (o.load, *last))
                .map(|(i, _)| i)
        };
        fits(true).or_else(|| {
            let waited = now.saturating_duration_since(request.since);
            (waited >= topic_fallback).then(|| fits(false)).flatten()
        })
    }
}

impl PairingBackend for LocalQueue {
    fn enqueue(&mut self, client: ConnId, request: Request) -> Result<(), QueueFull> {
        if request.priority {
            let at = self.clients.iter().take_while(|(_, r)| r.priority).count();
            self.clients.insert(at, (client, request));
            return Ok(());
        }
        if self.clients.iter().filter(|(_, r)| !r.priority).count() >= self.max_queue {
            return Err(QueueFull);
        }
        self.clients.push((client, request));
        Ok(())
    }

    fn requeue(&mut self, client: ConnId, request: Request) {
        // Queue order: transferred clients first, then by when they joined.
        let order = |r: &Request| (!r.priority, r.turn);
        let at = self
            .clients
            .iter()
            .position(|(_, r)| order(r) > order(&request))
            .unwrap_or(self.clients.len());
        self.clients.insert(at, (client, request));
    }

    fn remove_client(&mut self, client: ConnId) -> Option<Request> {
        let at = self.clients.iter().position(|(c, _)| *c == client)?;
        Some(self.clients.remove(at).1)
    }

    fn offer(&mut self, counsellor: ConnId, offer: Offer) {
        match self
            .counsellors
            .iter_mut()
            .find(|(c, _, _)| *c == counsellor)
        {
            Some(entry) => entry.1 = offer,
            None => self.counsellors.push((counsellor, offer, None)),
        }
    }

    fn remove_counsellor(&mut self, counsellor: ConnId) {
        self.counsellors.retain(|(c, _, _)| *c != counsellor);
    }

    fn next_pair(&mut self, now: Instant, topic_fallback: Duration) -> Option<(ConnId, ConnId)> {
        let (qi, ci) = self
            .clients
            .iter()
            .enumerate()
            .find_map(|(qi, (_, r))| Some((qi, self.best_for(r, now, topic_fallback)?)))?;
        let (client, _) = self.clients.remove(qi);
        let entry = &mut self.counsellors[ci];
        entry.1.load += 1;
        entry.2 = Some(now);
        Some((client, entry.0))
    }

    fn waiting(&self) -> Vec<(ConnId, Request)> {
        self.clients.clone()
    }

    fn newcomers_waiting(&self) -> usize {
        self.clients.iter().filter(|(_, r)| !r.priority).count()
    }

    fn could_serve(&self, request: &Request) -> bool {
        self.counsellors
            .iter()
            .any(|(_, o, _)| o.available && o.speaks(request.language))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any instant will do as the start of a virtual clock; the code under
    /// test never reads the clock itself.
    fn virtual_start() -> Instant {
        std::time::Instant::now()
    }

    fn offer(load: usize, capacity: usize, topics: &[u16], languages: &[&str]) -> Offer {
        Offer {
            available: true,
            load,
            capacity,
            topics: topics.iter().filter_map(|t| TopicId::new(*t)).collect(),
            languages: languages
                .iter()
                .filter_map(|l| Language::parse(l))
                .collect(),
        }
    }

    fn request(topic: u16, language: &str, since: Instant) -> Request {
        Request {
            turn: 0,
            topic: TopicId::new(topic),
            language: Language::parse(language),
            since,
            priority: false,
        }
    }

    #[test]
    fn first_come_first_served_with_a_limit() {
        let now = virtual_start();
        let mut q = LocalQueue::new(2);
        q.enqueue(ConnId(1), request(0, "nl", now)).unwrap();
        q.enqueue(ConnId(2), request(0, "nl", now)).unwrap();
        assert_eq!(q.enqueue(ConnId(3), request(0, "nl", now)), Err(QueueFull));
        let mut transferred = request(0, "nl", now);
        transferred.priority = true;
        q.enqueue(ConnId(4), transferred).unwrap();
        q.offer(ConnId(10), offer(0, 3, &[], &[]));
        let order: Vec<_> = std::iter::from_fn(|| q.next_pair(now, Duration::ZERO))
            .map(|p| p.0)
            .collect();
        assert_eq!(order, vec![ConnId(4), ConnId(1), ConnId(2)]);
    }

    #[test]
    fn topic_and_language_routing_with_fallback_and_least_load() {
        let t0 = virtual_start();
        let fallback = Duration::from_secs(120);
        let mut q = LocalQueue::new(10);
        q.offer(ConnId(10), offer(0, 2, &[1], &["nl"])); // exploitation, Dutch
        q.offer(ConnId(11), offer(1, 2, &[5], &["nl", "en"])); // home, bilingual, busy
        q.offer(ConnId(12), offer(0, 2, &[5], &["nl"])); // home, Dutch, idle
        q.enqueue(ConnId(1), request(5, "nl", t0)).unwrap();
        // Home + Dutch: 11 and 12 serve it; 12 is less loaded.
        assert_eq!(q.next_pair(t0, fallback), Some((ConnId(1), ConnId(12))));
        // English + exploitation: nobody serves the topic in English yet.
        q.enqueue(ConnId(2), request(1, "en", t0)).unwrap();
        assert_eq!(q.next_pair(t0 + Duration::from_secs(119), fallback), None);
        // After the fallback wait any English speaker will do.
        assert_eq!(
            q.next_pair(t0 + fallback, fallback),
            Some((ConnId(2), ConnId(11)))
        );
        // Full counsellors take nobody.
        q.enqueue(ConnId(3), request(0, "en", t0)).unwrap();
        assert_eq!(
            q.next_pair(t0 + fallback, fallback),
            None,
            "11 is at capacity"
        );
    }
}
