//! The pairing seam: who is waiting for what, who can take which chat, and
//! who goes with whom (PROTOCOL.md §7.3, "Pairing").
//!
//! A [`PairingBackend`] is the queue's data structure behind the in-process
//! router ([`LocalRouter`](super::router::LocalRouter)): it hears of waiting
//! clients ([`Request`]) and counsellors' current [`Offer`]s, and gives the
//! next pair. The relay core never calls it: it talks to a
//! [`Router`](super::router::Router) in commands and events.
//! [`LocalQueue`] is the single-relay backend. Its rules:
//! - queue order: transferred clients first (in order), then everyone else
//!   by when they joined, so a client that comes back after its connection
//!   dropped gets its old place back;
//! - a client goes to a counsellor who is available, has room, speaks its
//!   language and serves its topic; after `topic_fallback` of waiting, a
//!   counsellor of its language who does not serve the topic will do;
//! - among those, the least-loaded, then the one paired least recently.
//!
//! State shared between relays goes behind the router seam, not this trait.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::frame::{Language, TopicId};
use super::ratelimit::SourceTag;

/// The relay core's handle for one connection. It is a local counter, never
/// sent on the wire and never logged.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub(crate) u64);

impl ConnId {
    /// A handle made up for the tests of a shell (feature `test-support`).
    #[cfg(any(test, feature = "test-support"))]
    pub fn for_tests(n: u64) -> ConnId {
        ConnId(n)
    }
}

impl std::fmt::Debug for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnId(..)")
    }
}

/// The queue is at its configured maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// What a waiting client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub topic: Option<TopicId>,
    pub language: Option<Language>,
    /// When the client (re)entered the queue.
    #[serde(with = "crate::core::router::wire::instant")]
    pub since: Instant,
    /// Its turn: a number that grows with every (re)entry into the queue,
    /// so that queue order survives a client leaving and coming back.
    pub turn: u64,
    /// Transferred back to the queue: goes ahead of newcomers and is not
    /// counted against the queue limit.
    pub priority: bool,
    /// The tag of the source it came from, when the shell tags sources:
    /// what the limit of places per source counts.
    #[serde(skip)]
    pub source: Option<SourceTag>,
}

/// What a counsellor can take right now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Offer {
    pub available: bool,
    pub load: usize,
    pub capacity: usize,
    /// How many of the router's pairings with this counsellor its relay
    /// had taken in (started, or refused) when it made this offer. A
    /// router that made more counts the rest into `load`: they are on
    /// their way, and the relay's `load` does not show them yet.
    pub pairings_seen: u64,
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
    /// Whether `self` can take no client that `before` could not.
    fn no_wider_than(&self, before: &Offer) -> bool {
        !self.has_room()
            || (before.has_room()
                && self.load >= before.load
                && self.capacity <= before.capacity
                && self.topics == before.topics
                && self.languages == before.languages)
    }
}

/// A waiting client whose position may have changed, with its position
/// (1 = next in line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub position: u32,
    pub client: ConnId,
    pub request: Request,
}

/// How many clients wait, as far as the one asked knows: the queue itself,
/// or a router whose view may lag behind the commands it was given.
pub trait QueueView {
    /// How many clients wait.
    fn waiting_count(&self) -> usize;
    /// How many of them are newcomers (not handed back by a counsellor):
    /// what the queue's limit and fullness count.
    fn newcomers_waiting(&self) -> usize;
    /// How many came from `source`.
    fn waiting_from(&self, source: SourceTag) -> usize;
    /// How many wait per topic (`None`: no topic), in topic order.
    fn waiting_per_topic(&self) -> Vec<(Option<TopicId>, usize)>;
}

/// The queue's pairing decisions, behind the in-process router.
pub trait PairingBackend: QueueView {
    /// Puts a client in the queue.
    fn enqueue(&mut self, client: ConnId, request: Request) -> Result<(), QueueFull>;
    /// Puts a client that came back on a new connection back at the place
    /// its `request.turn` gives it; the queue limit does not apply.
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
    /// Waiting clients in queue order, first = position 1 (a copy: for
    /// metrics, not for every event).
    fn waiting(&self) -> Vec<(ConnId, Request)>;
    /// A count that grows with every change to who waits: while it stays
    /// the same, so do the counts per topic.
    fn changes(&self) -> u64;
    /// The waiting clients whose position may have changed since the last
    /// call, or every waiting client if `all` or if who can be served
    /// changed ([`PairingBackend::could_serve`]), in queue order.
    fn take_moved(&mut self, all: bool) -> Vec<Moved>;
    /// Whether a signed-in, available counsellor speaks the request's
    /// language (its topic can always fall back): if not, nobody can give
    /// the client an estimate of its wait.
    fn could_serve(&self, request: &Request) -> bool;
    /// When the next topic fallback begins, if a counsellor has room:
    /// the instant at which a pass could pair someone it could not before.
    fn next_fallback(&self, topic_fallback: Duration) -> Option<Instant>;
}

/// A client's place in queue order: transferred clients first, then by
/// turn; ties (only in tests, where turns repeat) by arrival.
type Place = (bool, u64, u64);

/// Which languages some available counsellor speaks (`any`: one speaks
/// every language).
#[derive(Debug, Default, PartialEq, Eq)]
struct Serving {
    any: bool,
    languages: BTreeSet<Language>,
}

/// One relay's in-memory queue. Queue order is a sorted map, so a client's
/// arrival, departure and pairing cost O(log n); a pass that looks for a
/// pair looks only at clients that could pair now and could not before.
#[derive(Debug)]
pub struct LocalQueue {
    max_queue: usize,
    clients: BTreeMap<Place, (ConnId, Request)>,
    places: HashMap<ConnId, Place>,
    arrivals: u64,
    newcomers: usize,
    per_topic: BTreeMap<Option<TopicId>, usize>,
    per_source: HashMap<SourceTag, usize>,
    changes: u64,
    /// Positions from this place on may have changed since `take_moved`.
    moved_from: Option<Place>,
    /// Who can be served changed since `take_moved`: every estimate may have.
    serving_changed: bool,
    /// Clients with a topic whose fallback has not begun, by when they
    /// (re)entered the queue.
    before_fallback: BTreeSet<(Instant, Place)>,
    /// Clients to look at in the next search for a pair: newcomers and
    /// clients whose fallback began. `None`: look at everyone (an offer
    /// widened).
    unchecked: Option<BTreeSet<Place>>,
    /// Counsellors in sign-in order, with when each was last given a chat.
    counsellors: BTreeMap<u64, (ConnId, Offer, Option<Instant>)>,
    signed_in: HashMap<ConnId, u64>,
    sign_ins: u64,
    /// Pairings made with each counsellor, for [`Offer::pairings_seen`].
    pairings_made: HashMap<ConnId, u64>,
    with_room: usize,
    serving: Serving,
}

impl LocalQueue {
    pub fn new(max_queue: usize) -> Self {
        LocalQueue {
            max_queue,
            clients: BTreeMap::new(),
            places: HashMap::new(),
            arrivals: 0,
            newcomers: 0,
            per_topic: BTreeMap::new(),
            per_source: HashMap::new(),
            changes: 0,
            moved_from: None,
            serving_changed: false,
            before_fallback: BTreeSet::new(),
            unchecked: Some(BTreeSet::new()),
            counsellors: BTreeMap::new(),
            signed_in: HashMap::new(),
            sign_ins: 0,
            pairings_made: HashMap::new(),
            with_room: 0,
            serving: Serving::default(),
        }
    }

    /// The best counsellor for `request`, as a key of `counsellors`.
    fn best_for(&self, request: &Request, now: Instant, topic_fallback: Duration) -> Option<u64> {
        let fits = |strict_topic: bool| {
            self.counsellors
                .iter()
                .filter(|(_, (_, o, _))| o.has_room() && o.speaks(request.language))
                .filter(move |(_, (_, o, _))| !strict_topic || o.serves(request.topic))
                .min_by_key(|(_, (_, o, last))| (o.load, *last))
                .map(|(key, _)| *key)
        };
        fits(true).or_else(|| {
            let waited = now.saturating_duration_since(request.since);
            (waited >= topic_fallback).then(|| fits(false)).flatten()
        })
    }

    fn insert(&mut self, client: ConnId, request: Request) {
        self.remove_client(client);
        self.arrivals += 1;
        let place = (!request.priority, request.turn, self.arrivals);
        self.clients.insert(place, (client, request));
        self.places.insert(client, place);
        if !request.priority {
            self.newcomers += 1;
        }
        *self.per_topic.entry(request.topic).or_default() += 1;
        if let Some(source) = request.source {
            *self.per_source.entry(source).or_default() += 1;
        }
        if request.topic.is_some() {
            self.before_fallback.insert((request.since, place));
        }
        if let Some(unchecked) = &mut self.unchecked {
            unchecked.insert(place);
        }
        self.moved(place);
    }

    fn moved(&mut self, place: Place) {
        self.changes += 1;
        self.moved_from = Some(self.moved_from.map_or(place, |p| p.min(place)));
    }

    fn recount_room(&mut self, before: Option<&Offer>, after: Option<&Offer>) {
        let room = |o: Option<&Offer>| usize::from(o.is_some_and(Offer::has_room));
        self.with_room = (self.with_room + room(after)).saturating_sub(room(before));
    }

    fn reserve_serving(&mut self) {
        let mut serving = Serving::default();
        for (_, o, _) in self.counsellors.values().filter(|(_, o, _)| o.available) {
            serving.any |= o.languages.is_empty();
            serving.languages.extend(o.languages.iter().copied());
        }
        if serving != self.serving {
            self.serving = serving;
            self.serving_changed = true;
        }
    }
}

/// Counts one down; true when it reached zero (the entry can go).
fn decrement(count: Option<&mut usize>) -> bool {
    match count {
        Some(n) => {
            *n = n.saturating_sub(1);
            *n == 0
        }
        None => false,
    }
}

impl QueueView for LocalQueue {
    fn waiting_count(&self) -> usize {
        self.clients.len()
    }

    fn waiting_per_topic(&self) -> Vec<(Option<TopicId>, usize)> {
        self.per_topic.iter().map(|(t, n)| (*t, *n)).collect()
    }

    fn newcomers_waiting(&self) -> usize {
        self.newcomers
    }

    fn waiting_from(&self, source: SourceTag) -> usize {
        self.per_source.get(&source).copied().unwrap_or(0)
    }
}

impl PairingBackend for LocalQueue {
    fn enqueue(&mut self, client: ConnId, request: Request) -> Result<(), QueueFull> {
        if !request.priority && self.newcomers >= self.max_queue {
            return Err(QueueFull);
        }
        self.insert(client, request);
        Ok(())
    }

    fn requeue(&mut self, client: ConnId, request: Request) {
        self.insert(client, request);
    }

    fn remove_client(&mut self, client: ConnId) -> Option<Request> {
        let place = self.places.remove(&client)?;
        let (_, request) = self.clients.remove(&place)?;
        if !request.priority {
            self.newcomers = self.newcomers.saturating_sub(1);
        }
        if decrement(self.per_topic.get_mut(&request.topic)) {
            self.per_topic.remove(&request.topic);
        }
        if let Some(source) = request.source
            && decrement(self.per_source.get_mut(&source))
        {
            self.per_source.remove(&source);
        }
        self.before_fallback.remove(&(request.since, place));
        if let Some(unchecked) = &mut self.unchecked {
            unchecked.remove(&place);
        }
        self.moved(place);
        Some(request)
    }

    fn offer(&mut self, counsellor: ConnId, mut offer: Offer) {
        // Pairings made since the relay's count are on their way to it. A
        // queue that meets a counsellor for the first time (a new leader's)
        // counts on from what the relay has seen.
        let made = *self
            .pairings_made
            .entry(counsellor)
            .or_insert(offer.pairings_seen);
        let in_flight = made.saturating_sub(offer.pairings_seen);
        offer.load = offer
            .load
            .saturating_add(usize::try_from(in_flight).unwrap_or(usize::MAX));
        let key = match self.signed_in.get(&counsellor) {
            Some(key) => *key,
            None => {
                self.sign_ins += 1;
                self.signed_in.insert(counsellor, self.sign_ins);
                self.sign_ins
            }
        };
        let before = self.counsellors.get(&key).map(|(_, o, _)| o.clone());
        if before.as_ref() == Some(&offer) {
            return;
        }
        if before.as_ref().is_none_or(|b| !offer.no_wider_than(b)) {
            self.unchecked = None;
        }
        self.recount_room(before.as_ref(), Some(&offer));
        let reserve = before
            .as_ref()
            .is_none_or(|b| b.available != offer.available || b.languages != offer.languages);
        match self.counsellors.get_mut(&key) {
            Some(entry) => entry.1 = offer,
            None => {
                self.counsellors.insert(key, (counsellor, offer, None));
            }
        }
        if reserve {
            self.reserve_serving();
        }
    }

    fn remove_counsellor(&mut self, counsellor: ConnId) {
        self.pairings_made.remove(&counsellor);
        let Some(key) = self.signed_in.remove(&counsellor) else {
            return;
        };
        if let Some((_, before, _)) = self.counsellors.remove(&key) {
            self.recount_room(Some(&before), None);
            if before.available {
                self.reserve_serving();
            }
        }
    }

    fn next_pair(&mut self, now: Instant, topic_fallback: Duration) -> Option<(ConnId, ConnId)> {
        if self.with_room == 0 {
            return None;
        }
        // Clients whose topic fallback has begun may pair where they could not.
        while let Some(&(since, place)) = self.before_fallback.first()
            && now.saturating_duration_since(since) >= topic_fallback
        {
            self.before_fallback.pop_first();
            if let Some(unchecked) = &mut self.unchecked {
                unchecked.insert(place);
            }
        }
        let found = match &self.unchecked {
            None => self
                .clients
                .iter()
                .find_map(|(place, (_, r))| Some((*place, self.best_for(r, now, topic_fallback)?))),
            Some(unchecked) => unchecked.iter().find_map(|place| {
                let (_, r) = self.clients.get(place)?;
                Some((*place, self.best_for(r, now, topic_fallback)?))
            }),
        };
        let Some((place, key)) = found else {
            // Nobody can pair until an offer widens, a client arrives or a
            // fallback begins.
            self.unchecked = Some(BTreeSet::new());
            return None;
        };
        let (client, _) = *self.clients.get(&place)?;
        self.remove_client(client);
        let entry = self.counsellors.get_mut(&key)?;
        let before = entry.1.clone();
        entry.1.load += 1;
        entry.2 = Some(now);
        let (counsellor, after) = (entry.0, entry.1.clone());
        *self.pairings_made.entry(counsellor).or_default() += 1;
        self.recount_room(Some(&before), Some(&after));
        Some((client, counsellor))
    }

    fn waiting(&self) -> Vec<(ConnId, Request)> {
        self.clients.values().copied().collect()
    }

    fn changes(&self) -> u64 {
        self.changes
    }

    fn take_moved(&mut self, all: bool) -> Vec<Moved> {
        let all = all || std::mem::take(&mut self.serving_changed);
        let from = self.moved_from.take();
        let tail: Vec<(ConnId, Request)> = match (all, from) {
            (true, _) => self.clients.values().copied().collect(),
            (false, Some(from)) => self.clients.range(from..).map(|(_, v)| *v).collect(),
            (false, None) => Vec::new(),
        };
        let first = self.clients.len() - tail.len() + 1;
        tail.into_iter()
            .enumerate()
            .map(|(i, (client, request))| Moved {
                position: u32::try_from(first + i).unwrap_or(u32::MAX),
                client,
                request,
            })
            .collect()
    }

    fn next_fallback(&self, topic_fallback: Duration) -> Option<Instant> {
        if self.with_room == 0 {
            return None;
        }
        let (since, _) = self.before_fallback.first()?;
        Some(*since + topic_fallback)
    }

    fn could_serve(&self, request: &Request) -> bool {
        self.serving.any
            || match request.language {
                None => !self.serving.languages.is_empty(),
                Some(l) => self.serving.languages.contains(&l),
            }
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
            pairings_seen: 0,
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
            source: None,
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

    fn positions(moved: &[Moved]) -> Vec<(ConnId, u32)> {
        moved.iter().map(|m| (m.client, m.position)).collect()
    }

    #[test]
    fn only_the_positions_that_moved_are_reported() {
        let now = virtual_start();
        let mut q = LocalQueue::new(10);
        for (id, turn) in [(1, 1), (2, 2), (3, 3)] {
            let mut r = request(0, "nl", now);
            r.turn = turn;
            q.enqueue(ConnId(id), r).unwrap();
        }
        assert_eq!(
            positions(&q.take_moved(false)),
            vec![(ConnId(1), 1), (ConnId(2), 2), (ConnId(3), 3)]
        );
        // A newcomer at the back moves nobody else.
        let mut r = request(0, "nl", now);
        r.turn = 4;
        q.enqueue(ConnId(4), r).unwrap();
        assert_eq!(positions(&q.take_moved(false)), vec![(ConnId(4), 4)]);
        assert_eq!(q.take_moved(false), vec![]);
        // One leaving the middle moves those behind it.
        q.remove_client(ConnId(2));
        assert_eq!(
            positions(&q.take_moved(false)),
            vec![(ConnId(3), 2), (ConnId(4), 3)]
        );
        // A transferred client goes first and moves everyone.
        let mut r = request(0, "nl", now);
        r.turn = 5;
        r.priority = true;
        q.enqueue(ConnId(5), r).unwrap();
        assert_eq!(
            positions(&q.take_moved(false)),
            vec![
                (ConnId(5), 1),
                (ConnId(1), 2),
                (ConnId(3), 3),
                (ConnId(4), 4)
            ]
        );
        assert_eq!(q.take_moved(true).len(), 4, "all, when asked");
        assert_eq!(q.waiting_count(), 4);
        assert_eq!(q.newcomers_waiting(), 3);
        assert_eq!(q.waiting_per_topic(), vec![(None, 4)]);
    }

    #[test]
    fn a_client_nobody_could_take_is_paired_once_an_offer_widens_or_its_fallback_begins() {
        let t0 = virtual_start();
        let fallback = Duration::from_secs(120);
        let mut q = LocalQueue::new(10);
        q.offer(ConnId(10), offer(0, 1, &[1], &["nl"]));
        q.enqueue(ConnId(1), request(5, "en", t0)).unwrap();
        q.enqueue(ConnId(2), request(5, "nl", t0)).unwrap();
        assert_eq!(q.next_pair(t0, fallback), None);
        assert!(!q.could_serve(&request(5, "en", t0)));
        assert!(q.could_serve(&request(5, "nl", t0)));
        // The topic fallback begins for both: the Dutch speaker fits.
        assert_eq!(
            q.next_pair(t0 + fallback, fallback),
            Some((ConnId(2), ConnId(10)))
        );
        // Full now; a second counsellor who speaks English signs in.
        assert_eq!(q.next_pair(t0 + fallback, fallback), None);
        q.offer(ConnId(11), offer(0, 1, &[], &["en"]));
        assert!(q.could_serve(&request(5, "en", t0)));
        assert_eq!(
            q.next_pair(t0 + fallback, fallback),
            Some((ConnId(1), ConnId(11)))
        );
        assert_eq!(q.waiting_count(), 0);
    }

    #[test]
    fn places_are_counted_per_source() {
        let now = virtual_start();
        let mut q = LocalQueue::new(10);
        let school = SourceTag([1; 16]);
        for id in 1..=3 {
            let mut r = request(0, "nl", now);
            r.source = Some(school);
            q.enqueue(ConnId(id), r).unwrap();
        }
        q.enqueue(ConnId(4), request(0, "nl", now)).unwrap();
        assert_eq!(q.waiting_from(school), 3);
        q.remove_client(ConnId(2));
        assert_eq!(q.waiting_from(school), 2);
        assert_eq!(q.waiting_from(SourceTag([2; 16])), 0);
    }
}
