//! The relay core's test harness: a core with a seeded RNG and a virtual
//! clock, driven frame by frame, its outputs decoded back into frames.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use fluister::core::frame::{
    BLOB_LEN, Blob, ChatNumber, Frame, FrameDecoder, Language, PROTOCOL_VERSION, PowChallenge,
    Role, TopicId,
};
use fluister::core::limits::{Limits, Service};
use fluister::core::ratelimit::pow_solve;
use fluister::core::relay::{ConnId, Credential, Output, Relay};
use fluister::core::router::{Delayed, LocalRouter, Router};
use fluister::core::{CloseCode, Now};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// 2027-01-04 10:00 Europe/Amsterdam, a Monday.
pub const MONDAY_10AM: i64 = 1_799_053_200;

pub struct Harness {
    pub relay: Relay,
    pub now: Now,
    /// The wall clock's fraction of a second, so that it follows
    /// sub-second steps.
    sub_second_nanos: u128,
}

#[derive(Debug, PartialEq)]
pub enum Out {
    Frame(ConnId, Frame),
    Close(ConnId, CloseCode, bool),
}

pub fn chat(n: u32) -> ChatNumber {
    ChatNumber::new(n).unwrap()
}

pub fn topic(n: u16) -> TopicId {
    TopicId::new(n).unwrap()
}

pub fn lang(s: &str) -> Language {
    Language::parse(s).unwrap()
}

pub fn blob(byte: u8) -> Blob {
    Blob::new([byte; BLOB_LEN])
}

/// The proof-of-work challenge in a WELCOME among `outs`.
pub fn challenge_in(outs: &[Out]) -> PowChallenge {
    outs.iter()
        .find_map(|o| match o {
            Out::Frame(_, Frame::Welcome { pow, .. }) => Some(*pow),
            _ => None,
        })
        .expect("a WELCOME")
}

pub fn frames_to(outs: &[Out], conn: ConnId) -> Vec<Frame> {
    outs.iter()
        .filter_map(|o| match o {
            Out::Frame(id, f) if *id == conn => Some(f.clone()),
            _ => None,
        })
        .collect()
}

/// Frames without the COLLEAGUE news counsellors get about each other.
pub fn without_presence(frames: Vec<Frame>) -> Vec<Frame> {
    frames
        .into_iter()
        .filter(|f| !matches!(f, Frame::Colleague { .. }))
        .collect()
}

/// The counts of each QUEUE_STATS sent to `conn`.
pub fn queue_stats_to(outs: &[Out], conn: ConnId) -> Vec<Vec<(Option<TopicId>, u16)>> {
    frames_to(outs, conn)
        .into_iter()
        .filter_map(|f| match f {
            Frame::QueueStats { waiting } => Some(waiting),
            _ => None,
        })
        .collect()
}

pub fn positions(outs: &[Out]) -> Vec<(ConnId, u32)> {
    outs.iter()
        .filter_map(|o| match o {
            Out::Frame(id, Frame::Queued { position, .. }) => Some((*id, *position)),
            _ => None,
        })
        .collect()
}

pub fn paired(outs: &[Out]) -> Vec<ConnId> {
    outs.iter()
        .filter_map(|o| match o {
            Out::Frame(id, Frame::Paired { .. }) => Some(*id),
            _ => None,
        })
        .collect()
}

impl Harness {
    pub fn new(limits: Limits) -> Self {
        Self::with_service(limits, Service::default())
    }

    pub fn with_service(limits: Limits, service: Service) -> Self {
        let router = Box::new(LocalRouter::new(limits.topic_fallback));
        Self::with_router(limits, service, router)
    }

    /// A core whose router holds every command back for `delay`, as a
    /// router shared between relays would.
    pub fn with_slow_router(limits: Limits, delay: Duration) -> Self {
        let local = LocalRouter::new(limits.topic_fallback);
        let router = Box::new(Delayed::new(local, delay));
        Self::with_router(limits, Service::default(), router)
    }

    pub fn with_router(limits: Limits, service: Service, router: Box<dyn Router>) -> Self {
        let start = Instant::now();
        Harness {
            relay: Relay::with_router(
                limits,
                service,
                Box::new(ChaCha20Rng::seed_from_u64(7)),
                router,
                start,
            ),
            now: Now {
                mono: start,
                unix: MONDAY_10AM,
            },
            sub_second_nanos: 0,
        }
    }

    pub fn connect(&mut self, credential: Credential) -> ConnId {
        self.relay.handle_connect(self.now, credential).unwrap()
    }

    pub fn send(&mut self, conn: ConnId, frame: Frame) -> Vec<Out> {
        self.relay.handle_data(self.now, conn, &frame.encode());
        self.drain()
    }

    pub fn hello(&mut self, conn: ConnId, role: Role) -> Vec<Out> {
        self.send(
            conn,
            Frame::Hello {
                version: PROTOCOL_VERSION,
                role,
            },
        )
    }

    /// Lets `secs` pass on the virtual clock the way the shell's driver
    /// does: from one `poll_timeout()` instant to the next, each handled at
    /// that instant. Before each, a timeout a millisecond early must do
    /// nothing, so that a deadline the index reports late, or a step taken
    /// early, fails the test.
    pub fn wait(&mut self, secs: u64) -> Vec<Out> {
        self.wait_for(Duration::from_secs(secs))
    }

    /// [`Harness::wait`] for any span of time.
    pub fn wait_for(&mut self, span: Duration) -> Vec<Out> {
        let until = self.now.mono + span;
        let mut outs = Vec::new();
        let mut steps_at_this_instant = 0;
        while let Some(next) = self.relay.poll_timeout().filter(|t| *t <= until) {
            let next = next.max(self.now.mono);
            steps_at_this_instant = if next == self.now.mono {
                steps_at_this_instant + 1
            } else {
                0
            };
            assert!(
                steps_at_this_instant < 100,
                "handle_timeout leaves poll_timeout where it was: a busy loop"
            );
            let early = next - Duration::from_millis(1);
            if early > self.now.mono {
                self.set_clock(early);
                self.relay.handle_timeout(self.now);
                let before_due = self.drain();
                assert!(
                    before_due.is_empty(),
                    "work before the instant poll_timeout gave: {before_due:?}"
                );
            }
            self.set_clock(next);
            self.relay.handle_timeout(self.now);
            outs.extend(self.drain());
        }
        self.set_clock(until);
        self.relay.handle_timeout(self.now);
        outs.extend(self.drain());
        outs
    }

    /// Moves the virtual clock to `to`, the wall clock with it.
    fn set_clock(&mut self, to: Instant) {
        let by = to.saturating_duration_since(self.now.mono);
        self.now.mono = to;
        self.sub_second_nanos += by.as_nanos();
        self.now.unix += (self.sub_second_nanos / 1_000_000_000) as i64;
        self.sub_second_nanos %= 1_000_000_000;
    }

    pub fn drain(&mut self) -> Vec<Out> {
        self.drain_with_unblocks().0
    }

    /// The outputs, and the connections the core says may be read again.
    pub fn drain_with_unblocks(&mut self) -> (Vec<Out>, Vec<ConnId>) {
        // The deadline index agrees with a scan of every table.
        assert_eq!(
            self.relay.poll_timeout(),
            self.relay.poll_timeout_by_scan(),
            "the deadline index disagrees with the tables"
        );
        let mut outs = Vec::new();
        let mut unblocked = Vec::new();
        while let Some(o) = self.relay.poll_output() {
            match o {
                Output::Send { conn, bytes } => {
                    let mut frames = Vec::new();
                    FrameDecoder::default().push(&bytes, &mut frames).unwrap();
                    outs.extend(frames.into_iter().map(|f| Out::Frame(conn, f)));
                }
                Output::Close { conn, code, flush } => outs.push(Out::Close(conn, code, flush)),
                Output::Unblock { conn } => unblocked.push(conn),
                // Where a shell may forward without the core: not an output
                // these tests look at.
                Output::Route { .. } => {}
                // These relays collect no codings (no form in their service).
                Output::StoreCodings { .. } => unreachable!("no coding form"),
            }
        }
        (outs, unblocked)
    }

    /// A client that joined with this topic and language; returns it and the outputs of its JOIN.
    pub fn client_for(&mut self, t: Option<u16>, l: Option<&str>) -> (ConnId, Vec<Out>) {
        let c = self.connect(Credential::Anonymous);
        let challenge = challenge_in(&self.hello(c, Role::Client));
        let outs = self.send(
            c,
            Frame::Join {
                topic: t.map(topic),
                language: l.map(lang),
                pow_solution: pow_solve(&challenge.nonce, challenge.difficulty),
            },
        );
        (c, outs)
    }

    pub fn client(&mut self) -> (ConnId, Vec<Out>) {
        self.client_for(None, None)
    }

    /// A signed-in counsellor with the given status.
    pub fn counsellor_with(
        &mut self,
        name: &str,
        capacity: u8,
        topics: &[u16],
        languages: &[&str],
    ) -> (ConnId, Vec<Out>) {
        let c = self.connect(Credential::Counsellor {
            pseudonym: name.into(),
        });
        self.hello(c, Role::Counsellor);
        let outs = self.status(c, true, capacity, topics, languages);
        (c, outs)
    }

    pub fn counsellor(&mut self, name: &str) -> (ConnId, Vec<Out>) {
        self.counsellor_with(name, 1, &[], &[])
    }

    pub fn status(
        &mut self,
        c: ConnId,
        available: bool,
        capacity: u8,
        topics: &[u16],
        languages: &[&str],
    ) -> Vec<Out> {
        self.send(
            c,
            Frame::Status {
                available,
                capacity,
                topics: topics.iter().map(|t| topic(*t)).collect(),
                languages: languages.iter().map(|l| lang(l)).collect(),
            },
        )
    }

    /// A counsellor and a client, paired, the client's handshake under
    /// way; returns (client, counsellor).
    pub fn pair(&mut self) -> (ConnId, ConnId) {
        let (c, _) = self.counsellor("Sam");
        let (y, outs) = self.client();
        assert_eq!(paired(&outs), vec![y, c]);
        self.hs1(y, 1);
        (y, c)
    }

    /// The young person's handshake message 1 in `chat`: the pairing stands
    /// (without it, it is undone after `handshake_timeout`).
    pub fn hs1(&mut self, y: ConnId, n: u32) -> Vec<Out> {
        self.send(
            y,
            Frame::Forward {
                chat: chat(n),
                blob: blob(0xaa),
            },
        )
    }
}
