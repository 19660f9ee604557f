//! The chat roles' state machines against the relay's own core, on one
//! virtual clock, without sockets or sleeps (after quinn-proto's
//! deterministic pair of endpoints): resumption, reconnect with backoff,
//! the deadline for ending a chat, held messages, every close code, and
//! the promise that every line typed ends delivered or not delivered.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use fluister::client::ClientError;
use fluister::client::chat::{ChatEvent, EndedReason, ReconnectReason};
use fluister::client::machine::anonymous::{Anonymous, MAX_LINES_BEFORE_PAIRED, Wish};
use fluister::client::machine::counsellor::{Counsellor, Preferences};
use fluister::client::machine::link::{
    BACKOFF_CEILING, BACKOFF_FIRST, BACKOFF_MAX, ENDING_WAIT, Start,
};
use fluister::client::machine::{Input, LinkEvent, Machine, Transmit};
use fluister::core::frame::{EndReason, FrameDecoder, FromRelay};
use fluister::core::limits::{Limits, Service};
use fluister::core::ratelimit::pow_solve;
use fluister::core::relay::{ConnId, Credential, Output, Relay};
use fluister::core::{CloseCode, Departure, Now};
use fluister::crypto::e2e::test_counsellor_keys;
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use x25519_dalek::StaticSecret;

const UNIX_START: i64 = 1_799_053_200;
const RESUME_WINDOW: Duration = Duration::from_secs(60);

/// One endpoint of the world: a role's machine and its connection.
struct Peer {
    machine: Box<dyn Machine>,
    credential: Credential,
    conn: Option<ConnId>,
    /// Whether a new connection from this peer reaches the relay.
    reachable: bool,
    events: Vec<ChatEvent>,
    outcome: Option<Result<(), ClientError>>,
    /// When each `Connect` was asked for.
    connects: Vec<Instant>,
}

/// The relay core and the peers, on one virtual clock.
struct World {
    now: Now,
    relay: Relay,
    peers: Vec<Peer>,
    owner: HashMap<ConnId, usize>,
}

impl World {
    fn new() -> World {
        let start = Instant::now();
        let limits = Limits {
            pow_min_difficulty: 0,
            pow_max_difficulty: 0,
            resume_window: RESUME_WINDOW,
            ..Limits::default()
        };
        let rng = Box::new(ChaCha20Rng::seed_from_u64(1));
        World {
            now: Now {
                mono: start,
                unix: UNIX_START,
            },
            relay: Relay::new(limits, Service::default(), rng, start),
            peers: Vec::new(),
            owner: HashMap::new(),
        }
    }

    fn add(
        &mut self,
        credential: Credential,
        make: impl FnOnce(Instant) -> Box<dyn Machine>,
    ) -> usize {
        let conn = self
            .relay
            .handle_connect(self.now, credential.clone())
            .unwrap();
        let n = self.peers.len();
        self.owner.insert(conn, n);
        self.peers.push(Peer {
            machine: make(self.now.mono),
            credential,
            conn: Some(conn),
            reachable: true,
            events: Vec::new(),
            outcome: None,
            connects: Vec::new(),
        });
        self.settle();
        n
    }

    /// A young person with a resume window of [`RESUME_WINDOW`].
    fn young(&mut self) -> usize {
        self.young_with(Wish {
            give_up_after: Some(RESUME_WINDOW),
            ..Wish::default()
        })
    }

    fn young_with(&mut self, wish: Wish) -> usize {
        let org = test_counsellor_keys(StaticSecret::from([2; 32])).org;
        let seed = self.peers.len() as u64 + 100;
        self.add(Credential::Anonymous, move |now| {
            Box::new(Anonymous::new(start(now, seed), org, wish))
        })
    }

    fn counsellor(&mut self, capacity: u8) -> usize {
        let keys = test_counsellor_keys(StaticSecret::from([2; 32]));
        let seed = self.peers.len() as u64 + 200;
        let preferences = Preferences {
            capacity,
            give_up_after: Some(RESUME_WINDOW),
            ..Preferences::default()
        };
        let credential = Credential::Counsellor {
            pseudonym: "Sam".into(),
        };
        self.add(credential, move |now| {
            Box::new(Counsellor::new(start(now, seed), keys, preferences))
        })
    }

    /// Runs everything that follows from what already happened, without
    /// moving the clock.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut busy = false;
            for n in 0..self.peers.len() {
                busy |= self.drain_peer(n);
            }
            while let Some(out) = self.relay.poll_output() {
                busy = true;
                self.deliver(out);
            }
            if !busy {
                return;
            }
        }
        panic!("the world never settles");
    }

    fn drain_peer(&mut self, n: usize) -> bool {
        let now = self.now;
        let mut busy = false;
        while let Some(transmit) = self.peers[n].machine.poll_transmit() {
            busy = true;
            let conn = self.peers[n].conn;
            match transmit {
                Transmit::Frame(frame) => {
                    if let Some(conn) = conn {
                        // Typed end to end: the core takes what the machine sends.
                        self.relay.handle_frames(now, conn, vec![frame], None);
                    }
                }
                Transmit::SolveProof {
                    generation,
                    challenge,
                } => {
                    let solution = pow_solve(&challenge.nonce, challenge.difficulty);
                    self.peers[n]
                        .machine
                        .handle_proof(now.mono, generation, solution);
                }
                Transmit::Connect { by } => {
                    assert!(by > now.mono, "an attempt with no time left");
                    self.peers[n].connects.push(now.mono);
                    if let Some(old) = self.peers[n].conn.take() {
                        // RECONNECTING: the relay keeps the chats.
                        self.relay.handle_disconnect(now, old, Departure::Lost);
                    }
                    let event = if self.peers[n].reachable {
                        let credential = self.peers[n].credential.clone();
                        let conn = self.relay.handle_connect(now, credential).unwrap();
                        self.owner.insert(conn, n);
                        self.peers[n].conn = Some(conn);
                        LinkEvent::Up
                    } else {
                        LinkEvent::Down(ClientError::Lost("unreachable".into()))
                    };
                    self.peers[n].machine.handle_link(now.mono, event);
                }
                Transmit::Leave => {
                    if let Some(conn) = self.peers[n].conn.take() {
                        self.relay.handle_finish(now, conn);
                    }
                }
                Transmit::QuickExit => {
                    if let Some(conn) = self.peers[n].conn.take() {
                        let left = Departure::Left(EndReason::UserEnded);
                        self.relay.handle_disconnect(now, conn, left);
                    }
                }
                Transmit::AbortSecurity => {
                    if let Some(conn) = self.peers[n].conn.take() {
                        let left = Departure::Left(EndReason::SecurityFailure);
                        self.relay.handle_disconnect(now, conn, left);
                    }
                }
            }
        }
        let peer = &mut self.peers[n];
        while let Some(event) = peer.machine.poll_event() {
            busy = true;
            peer.events.push(event);
        }
        if let Some(outcome) = peer.machine.take_outcome() {
            busy = true;
            peer.outcome = Some(outcome);
        }
        busy
    }

    fn deliver(&mut self, out: Output) {
        let now = self.now.mono;
        match out {
            Output::Send { conn, bytes } => {
                let Some(&n) = self.owner.get(&conn) else {
                    return;
                };
                if self.peers[n].conn != Some(conn) {
                    return;
                }
                let mut frames = Vec::new();
                FrameDecoder::default().push(&bytes, &mut frames).unwrap();
                for frame in frames {
                    // The relay's core sends only what relays send.
                    let frame = FromRelay::try_from(frame).expect("a relay-only frame");
                    self.peers[n]
                        .machine
                        .handle_link(now, LinkEvent::Frame(frame));
                }
            }
            // These relays collect no codings (no form in their service).
            Output::StoreCodings { .. } => {}
            Output::Close { conn, code, .. } => {
                let Some(&n) = self.owner.get(&conn) else {
                    return;
                };
                if self.peers[n].conn == Some(conn) {
                    self.peers[n].conn = None;
                    let down = LinkEvent::Down(ClientError::Closed(code));
                    self.peers[n].machine.handle_link(now, down);
                }
            }
            Output::Unblock { .. } | Output::Route { .. } => {}
        }
    }

    /// Moves the clock forward by `by`, firing every timer on the way.
    fn advance(&mut self, by: Duration) {
        let until = self.now.mono + by;
        let mut same_instant = 0;
        loop {
            self.settle();
            let now = self.now.mono;
            let next = self
                .peers
                .iter_mut()
                .filter_map(|p| p.machine.poll_timeout(now))
                .chain(self.relay.poll_timeout())
                .min()
                .filter(|at| *at <= until);
            let Some(at) = next else { break };
            let at = at.max(now);
            // A timer that fires without doing what it was set for would
            // make a driver spin.
            same_instant = if at == now { same_instant + 1 } else { 0 };
            assert!(same_instant < 100, "a timer at {at:?} keeps firing");
            self.now.advance(at - now);
            // `advance` moves unix time by whole seconds only.
            self.now.mono = at;
            self.relay.handle_timeout(self.now);
            for peer in &mut self.peers {
                if peer.machine.poll_timeout(at).is_some_and(|t| t <= at) {
                    peer.machine.handle_timeout(at);
                }
            }
        }
        self.now.mono = until;
        self.settle();
    }

    fn input(&mut self, n: usize, input: Input) {
        let now = self.now.mono;
        self.peers[n].machine.handle_input(now, input);
        self.settle();
    }

    fn say(&mut self, n: usize, line: &str) {
        self.input(n, Input::Line(line.into()));
    }

    /// The network drops `n`'s connection; `n` notices at once, and the
    /// relay holds its chats for a resume.
    fn cut(&mut self, n: usize, reachable: bool) {
        self.peers[n].reachable = reachable;
        if let Some(conn) = self.peers[n].conn.take() {
            self.relay
                .handle_disconnect(self.now, conn, Departure::Lost);
        }
        let lost = LinkEvent::Down(ClientError::Lost("network gone".into()));
        self.peers[n].machine.handle_link(self.now.mono, lost);
        self.settle();
    }

    /// The relay closes `n`'s connection with `code`.
    fn close(&mut self, n: usize, code: CloseCode) {
        if let Some(conn) = self.peers[n].conn.take() {
            self.relay
                .handle_disconnect(self.now, conn, Departure::Lost);
        }
        let down = LinkEvent::Down(ClientError::Closed(code));
        self.peers[n].machine.handle_link(self.now.mono, down);
        self.settle();
    }

    fn events(&mut self, n: usize) -> Vec<ChatEvent> {
        std::mem::take(&mut self.peers[n].events)
    }

    fn messages(&self, n: usize) -> Vec<String> {
        self.peers[n]
            .events
            .iter()
            .filter_map(|e| match e {
                ChatEvent::Message { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    /// A young person paired with a counsellor, both ready.
    fn chat() -> (World, usize, usize) {
        let mut w = World::new();
        let sam = w.counsellor(1);
        let young = w.young();
        w.advance(Duration::from_millis(10));
        assert!(
            w.peers[young].events.iter().any(
                |e| matches!(e, ChatEvent::Paired { counsellor: Some(name), .. } if name == "Sam")
            ),
            "{:?}",
            w.peers[young].events
        );
        assert!(
            w.peers[sam]
                .events
                .iter()
                .any(|e| matches!(e, ChatEvent::Ready { .. }))
        );
        w.events(young);
        w.events(sam);
        (w, young, sam)
    }
}

/// A machine's start on the world's clock, with a seeded RNG.
fn start(now: Instant, seed: u64) -> Start {
    Start {
        now,
        unix_now: UNIX_START as u64,
        rng: ChaCha20Rng::seed_from_u64(seed),
    }
}

/// Each message id's last word: delivered or not delivered.
fn fates(events: &[ChatEvent]) -> BTreeMap<u64, &'static str> {
    let mut fates = BTreeMap::new();
    for e in events {
        match e {
            ChatEvent::Delivered { id, .. } => {
                assert!(fates.insert(*id, "delivered").is_none(), "{id} twice");
            }
            ChatEvent::NotDelivered { id, .. } => {
                assert!(fates.insert(*id, "not_delivered").is_none(), "{id} twice");
            }
            _ => {}
        }
    }
    fates
}

fn ended(events: &[ChatEvent]) -> Option<EndedReason> {
    events.iter().find_map(|e| match e {
        ChatEvent::Ended { reason, .. } => Some(*reason),
        _ => None,
    })
}

#[test]
fn a_chat_flows_both_ways_and_is_acknowledged() {
    let (mut w, young, sam) = World::chat();
    w.say(young, "hallo");
    w.say(sam, "hoi, fijn dat je schrijft");
    w.advance(Duration::from_secs(2));
    assert_eq!(w.messages(sam), vec!["hallo"]);
    assert_eq!(w.messages(young), vec!["hoi, fijn dat je schrijft"]);
    for peer in [young, sam] {
        assert_eq!(
            fates(&w.peers[peer].events),
            BTreeMap::from([(1, "delivered")])
        );
    }
}

#[test]
fn lines_typed_before_a_counsellor_is_there_are_held_and_sent_after_the_handshake() {
    let mut w = World::new();
    let young = w.young();
    w.say(young, "is daar iemand?");
    w.say(young, "ik weet niet wat ik moet doen");
    w.advance(Duration::from_secs(5));
    assert!(w.messages(young).is_empty());
    let sam = w.counsellor(1);
    w.advance(Duration::from_secs(2));
    assert_eq!(
        w.messages(sam),
        vec!["is daar iemand?", "ik weet niet wat ik moet doen"]
    );
    assert_eq!(
        fates(&w.peers[young].events),
        BTreeMap::from([(1, "delivered"), (2, "delivered")])
    );
}

#[test]
fn too_many_held_lines_are_refused_one_by_one_and_never_lost_silently() {
    let mut w = World::new();
    let young = w.young();
    for i in 0..MAX_LINES_BEFORE_PAIRED + 2 {
        w.say(young, &format!("regel {i}"));
    }
    let refused: Vec<u64> = w.peers[young]
        .events
        .iter()
        .filter_map(|e| match e {
            ChatEvent::NotDelivered { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(refused, vec![101, 102]);
    // Input ends before anyone came: the held lines still wait for a
    // counsellor. A quick exit leaves the queue, and every held line is
    // resolved before the end is told.
    w.input(young, Input::EndOfInput);
    w.advance(Duration::from_secs(10));
    assert!(w.peers[young].outcome.is_none());
    w.input(young, Input::QuickExit);
    let events = &w.peers[young].events;
    assert_eq!(fates(events).len(), 102);
    assert!(fates(events).values().all(|f| *f == "not_delivered"));
    assert_eq!(ended(events), Some(EndedReason::LeftQueue));
    assert!(matches!(events.last(), Some(ChatEvent::Ended { .. })));
}

#[test]
fn a_lost_connection_resumes_the_chat_with_its_keys_and_resends_what_was_not_acknowledged() {
    let (mut w, young, sam) = World::chat();
    w.cut(young, false);
    assert_eq!(
        w.events(young),
        vec![ChatEvent::Reconnecting {
            reason: ReconnectReason::Lost
        }]
    );
    // Typed while away: kept, and sent after the resume.
    w.say(young, "ben je er nog?");
    w.say(sam, "ik ben er");
    w.advance(Duration::from_secs(3));
    assert!(w.messages(young).is_empty());
    w.peers[young].reachable = true;
    w.advance(BACKOFF_MAX + Duration::from_secs(2));
    let events = &w.peers[young].events;
    assert!(
        events.contains(&ChatEvent::Resumed { chat: None }),
        "{events:?}"
    );
    assert_eq!(w.messages(young), vec!["ik ben er"]);
    assert_eq!(w.messages(sam), vec!["ben je er nog?"]);
    for peer in [young, sam] {
        assert_eq!(
            fates(&w.peers[peer].events),
            BTreeMap::from([(1, "delivered")])
        );
    }
}

#[test]
fn reconnect_attempts_back_off_with_jitter_and_give_up_with_the_resume_window() {
    let (mut w, young, _sam) = World::chat();
    w.say(young, "een");
    w.cut(young, false);
    w.say(young, "twee");
    w.advance(RESUME_WINDOW + Duration::from_secs(5));
    let connects = &w.peers[young].connects;
    let gaps: Vec<Duration> = connects.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 7, "{gaps:?}");
    // The first retry comes at once; the waits grow, never past the
    // ceiling, and are jittered (not all alike once at the ceiling).
    assert!(gaps.iter().all(|g| *g <= BACKOFF_MAX), "{gaps:?}");
    assert!(gaps[0] >= BACKOFF_FIRST, "{gaps:?}");
    assert!(gaps[1] > gaps[0] && gaps[2] > gaps[1], "{gaps:?}");
    let capped: Vec<&Duration> = gaps.iter().skip(5).collect();
    assert!(capped.iter().all(|g| **g >= BACKOFF_CEILING), "{gaps:?}");
    assert!(capped.windows(2).any(|w| w[0] != w[1]), "{gaps:?}");
    // The window is over: the chat ended while away, and both lines are
    // resolved first.
    let events = &w.peers[young].events;
    assert_eq!(ended(events), Some(EndedReason::EndedWhileAway));
    assert_eq!(
        fates(events),
        BTreeMap::from([(1, "not_delivered"), (2, "not_delivered")])
    );
    assert!(matches!(w.peers[young].outcome, Some(Ok(()))));
}

#[test]
fn a_waiting_young_person_gets_the_old_place_back() {
    let mut w = World::new();
    let first = w.young();
    let second = w.young();
    w.cut(first, true);
    w.advance(Duration::from_secs(1));
    let events = w.events(first);
    assert!(
        events.contains(&ChatEvent::Resumed { chat: None }),
        "{events:?}"
    );
    assert!(
        events.contains(&ChatEvent::Queued {
            position: 1,
            estimated_wait_secs: None
        }) || events
            .iter()
            .any(|e| matches!(e, ChatEvent::Queued { position: 1, .. })),
        "{events:?}"
    );
    // The first in line is still the first to be paired.
    let sam = w.counsellor(1);
    w.advance(Duration::from_millis(10));
    assert!(
        w.events(first)
            .iter()
            .any(|e| matches!(e, ChatEvent::Paired { .. }))
    );
    assert!(
        !w.events(second)
            .iter()
            .any(|e| matches!(e, ChatEvent::Paired { .. }))
    );
    let _ = sam;
}

#[test]
fn the_end_of_input_waits_for_acknowledgements_but_not_past_the_deadline() {
    // Acknowledged in time: the young person leaves as soon as the ack is in.
    let (mut w, young, sam) = World::chat();
    w.say(young, "dank je, doei");
    w.input(young, Input::EndOfInput);
    assert!(w.peers[young].outcome.is_none());
    w.advance(Duration::from_secs(2));
    assert_eq!(ended(&w.peers[young].events), Some(EndedReason::YouEnded));
    assert_eq!(
        fates(&w.peers[young].events),
        BTreeMap::from([(1, "delivered")])
    );
    assert_eq!(ended(&w.peers[sam].events), Some(EndedReason::PeerEnded));

    // The counsellor is away: no ack comes, and the deadline ends it.
    let (mut w, young, sam) = World::chat();
    w.cut(sam, false);
    w.say(young, "hallo?");
    let start = w.now.mono;
    w.input(young, Input::EndOfInput);
    w.advance(ENDING_WAIT - Duration::from_millis(100));
    assert!(w.peers[young].outcome.is_none(), "left before the deadline");
    w.advance(Duration::from_millis(200));
    assert!(w.now.mono - start <= ENDING_WAIT + Duration::from_millis(100));
    let events = &w.peers[young].events;
    assert_eq!(ended(events), Some(EndedReason::YouEnded));
    assert_eq!(fates(events), BTreeMap::from([(1, "not_delivered")]));
}

#[test]
fn a_counsellors_end_waits_for_the_last_acknowledgement() {
    let (mut w, young, sam) = World::chat();
    w.say(sam, "ik sluit nu af, je kunt altijd terugkomen");
    w.say(sam, "/end");
    w.advance(Duration::from_secs(2));
    assert_eq!(
        fates(&w.peers[sam].events),
        BTreeMap::from([(1, "delivered")])
    );
    assert_eq!(ended(&w.peers[sam].events), Some(EndedReason::YouEnded));
    assert_eq!(ended(&w.peers[young].events), Some(EndedReason::PeerEnded));
}

/// A young person in a chat whose connection the relay closed with
/// `code`, a second later.
fn young_person_closed_with(code: CloseCode) -> Peer {
    let (mut w, young, _sam) = World::chat();
    w.say(young, "hallo");
    w.close(young, code);
    w.advance(Duration::from_secs(1));
    w.peers.swap_remove(young)
}

#[test]
fn every_terminal_close_code_ends_a_young_person_at_once_and_every_transient_one_reconnects() {
    for &code in CloseCode::ALL {
        let Peer {
            events,
            outcome,
            connects,
            ..
        } = young_person_closed_with(code);
        let connects = connects.len();
        let terminal = ClientError::Closed(code).is_final();
        if code == CloseCode::ShuttingDown {
            assert_eq!(ended(&events), Some(EndedReason::RelayShutdown), "{code:?}");
            assert_eq!(connects, 0, "{code:?}");
        } else if terminal {
            // Ended at once, with the close code's own message.
            assert_eq!(connects, 0, "{code:?} reconnected");
            assert!(
                matches!(&outcome, Some(Err(ClientError::Closed(c))) if *c == code),
                "{code:?}: {outcome:?}"
            );
        } else {
            assert!(connects >= 1, "{code:?} did not reconnect");
            assert!(
                events.contains(&ChatEvent::Resumed { chat: None }),
                "{code:?}: {events:?}"
            );
            assert!(outcome.is_none(), "{code:?}: {outcome:?}");
        }
        // Whatever the code, the line typed has its fate or is still on
        // its way in a chat that goes on.
        let fates = fates(&events);
        if terminal || code == CloseCode::ShuttingDown {
            assert_eq!(fates.get(&1), Some(&"not_delivered"), "{code:?}");
        } else {
            assert_eq!(fates.get(&1), Some(&"delivered"), "{code:?}");
        }
    }
}

#[test]
fn every_terminal_close_code_ends_a_counsellors_chats_at_once_and_every_transient_one_resumes() {
    for &code in CloseCode::ALL {
        let (mut w, _young, sam) = World::chat();
        w.say(sam, "hoe gaat het?");
        w.close(sam, code);
        w.advance(Duration::from_secs(1));
        let peer = &w.peers[sam];
        let terminal = ClientError::Closed(code).is_final();
        let reason = ended(&peer.events);
        if terminal {
            assert_eq!(peer.connects.len(), 0, "{code:?} reconnected");
            let expected = if code == CloseCode::Revoked {
                EndedReason::Revoked
            } else {
                EndedReason::SignedOut
            };
            assert_eq!(reason, Some(expected), "{code:?}");
            assert!(matches!(peer.outcome, Some(Err(ClientError::Closed(c))) if c == code));
            assert_eq!(fates(&peer.events).get(&1), Some(&"not_delivered"));
        } else if code == CloseCode::ShuttingDown {
            // Its chats ended with the relay; it signs in again.
            assert_eq!(reason, Some(EndedReason::RelayShutdown), "{code:?}");
            assert!(peer.events.contains(&ChatEvent::Reconnecting {
                reason: ReconnectReason::RelayRestarting
            }));
            assert!(!peer.connects.is_empty());
        } else {
            assert!(!peer.connects.is_empty(), "{code:?} did not reconnect");
            assert!(
                peer.events.contains(&ChatEvent::Resumed { chat: Some(1) }),
                "{code:?}: {:?}",
                peer.events
            );
            assert_eq!(fates(&peer.events).get(&1), Some(&"delivered"), "{code:?}");
            assert!(peer.outcome.is_none());
        }
    }
}

#[test]
fn a_transfer_hands_the_young_person_to_a_colleague_verified_anew() {
    let (mut w, young, sam) = World::chat();
    // A second counsellor with room; the first hands the chat back to the
    // queue, and the second takes it.
    let noor = w.counsellor(1);
    w.say(sam, "/transfer queue");
    w.advance(Duration::from_millis(10));
    assert_eq!(ended(&w.peers[sam].events), Some(EndedReason::Transferred));
    assert!(
        w.peers[young]
            .events
            .iter()
            .any(|e| matches!(e, ChatEvent::Transferred { .. }))
    );
    w.say(young, "hallo nieuwe");
    w.advance(Duration::from_secs(2));
    assert_eq!(w.messages(noor), vec!["hallo nieuwe"]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever happens (lines, lost connections on either side, a relay
    /// that lets them back or not, ends and blocks by the counsellor), every line the young person types ends
    /// exactly once as delivered or not delivered, and the run ends.
    #[test]
    fn every_line_typed_ends_delivered_or_not_delivered(
        steps in proptest::collection::vec(0u8..11, 1..40)
    ) {
        let (mut w, young, sam) = World::chat();
        let mut typed = 0u64;
        for step in steps {
            match step {
                0..=2 => {
                    typed += 1;
                    w.say(young, &format!("regel {typed}"));
                }
                3 => w.cut(young, true),
                4 => w.cut(young, false),
                5 => w.peers[young].reachable = true,
                6 => w.say(sam, "antwoord"),
                7 => w.cut(sam, true),
                8 => w.say(sam, if typed % 2 == 0 { "/end" } else { "/block" }),
                _ => w.advance(Duration::from_millis(700)),
            }
        }
        w.peers[young].reachable = true;
        w.input(young, Input::EndOfInput);
        w.advance(RESUME_WINDOW + Duration::from_secs(10));
        let events = &w.peers[young].events;
        prop_assert!(w.peers[young].outcome.is_some(), "{:?}", events);
        let fates = fates(events);
        prop_assert_eq!(fates.keys().copied().collect::<Vec<_>>(), (1..=typed).collect::<Vec<_>>());
        // One end is told; lines typed after it are reported not delivered.
        let ends = events.iter().filter(|e| matches!(e, ChatEvent::Ended { .. })).count();
        prop_assert_eq!(ends, 1, "{:?}", events);
    }
}
