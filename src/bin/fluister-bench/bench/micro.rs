//! The core micro-benchmark (`fluister-bench --only core`): what one step of
//! the relay core costs as the relay grows, with no sockets and no tasks.
//!
//! A [`Relay`] on a virtual clock is filled with paired chats (every
//! counsellor full) or with a long queue, and then the cost of one FORWARD,
//! one `poll_timeout`, one timer step with nothing due, and one new young
//! person's HELLO+JOIN is timed, outputs drained as the shell drains them.
//! Each figure is reported against the same step at about 100 connections,
//! measured in the same run. Limits are raised so that no budget or proof
//! of work throttles the steps being timed.

use std::time::{Duration, Instant};

use rand_core::OsRng;

use fluister::core::frame::{BLOB_LEN, Blob, ChatNumber, Frame, PROTOCOL_VERSION, Role};
use fluister::core::limits::{Limits, Service};
use fluister::core::relay::{ConnId, Credential, Relay};
use fluister::core::{Departure, Now};

/// Chats per counsellor: the default maximum capacity.
/// As many chats as a counsellor may take by default.
fn capacity() -> usize {
    usize::from(Limits::default().max_capacity)
}

/// One relay size: chats (every counsellor full) and waiting young people.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub chats: usize,
    pub waiting: usize,
}

impl Shape {
    /// Open connections: both sides of every chat and the waiting clients.
    pub fn connections(self) -> usize {
        self.chats * 2 + self.chats.div_ceil(capacity()) + self.waiting
    }
}

/// The cost of one step, in microseconds, at one [`Shape`].
#[derive(Debug, Clone, Copy)]
pub struct Costs {
    pub forward: f64,
    pub poll_timeout: f64,
    pub timer_step: f64,
    pub hello_join: f64,
}

/// A core filled to a [`Shape`], on a virtual clock.
struct Filled {
    relay: Relay,
    now: Now,
    /// The young person's side of each chat (chat number 1 on it).
    clients: Vec<ConnId>,
}

fn limits() -> Limits {
    let many = 1_000_000;
    Limits {
        max_queue: many,
        max_connections: many,
        max_anonymous_connections: many,
        admissions_per_sec: u32::MAX / 4,
        admissions_burst: u32::MAX / 4,
        forward_frames_per_sec: u32::MAX / 4,
        forward_frames_burst: u32::MAX / 4,
        control_frames_per_sec: u32::MAX / 4,
        control_frames_burst: u32::MAX / 4,
        pow_min_difficulty: 0,
        pow_max_difficulty: 0,
        queue_rent_interval: None,
        per_source_places: 0,
        ..Limits::default()
    }
}

fn drain(relay: &mut Relay) {
    while relay.poll_output().is_some() {}
}

fn hello(role: Role) -> Vec<u8> {
    Frame::Hello {
        version: PROTOCOL_VERSION,
        role,
    }
    .encode()
}

fn join() -> Vec<u8> {
    Frame::Join {
        topic: None,
        language: None,
        pow_solution: [0; 8],
    }
    .encode()
}

fn forward(chat: ChatNumber, byte: u8) -> Vec<u8> {
    Frame::Forward {
        chat,
        blob: Blob::new([byte; BLOB_LEN]),
    }
    .encode()
}

fn first_chat() -> ChatNumber {
    ChatNumber::FIRST
}

impl Filled {
    fn new(shape: Shape) -> Filled {
        let start = Instant::now();
        let now = Now {
            mono: start,
            // A weekday morning, within the default opening hours.
            unix: 1_799_053_200,
        };
        let relay = Relay::new(limits(), Service::default(), Box::new(OsRng), start);
        let mut filled = Filled {
            relay,
            now,
            clients: Vec::with_capacity(shape.chats),
        };
        for n in 0..shape.chats.div_ceil(capacity()) {
            filled.counsellor(n);
        }
        for _ in 0..shape.chats {
            let Some(client) = filled.join() else {
                break;
            };
            // Handshake message 1: the pairing stands.
            let now = filled.now;
            filled
                .relay
                .handle_data(now, client, &forward(first_chat(), 0));
            filled.clients.push(client);
        }
        for _ in 0..shape.waiting {
            filled.join();
        }
        drain(&mut filled.relay);
        filled
    }

    fn counsellor(&mut self, n: usize) {
        let credential = Credential::Counsellor {
            pseudonym: format!("counsellor-{n}"),
        };
        let Ok(conn) = self.relay.handle_connect(self.now, credential) else {
            return;
        };
        let status = Frame::Status {
            available: true,
            capacity: capacity() as u8,
            topics: Vec::new(),
            languages: Vec::new(),
        };
        self.relay
            .handle_data(self.now, conn, &hello(Role::Counsellor));
        self.relay.handle_data(self.now, conn, &status.encode());
        drain(&mut self.relay);
    }

    /// A new young person's HELLO and JOIN, outputs drained; `None` if
    /// the core refused the connection (the limits are raised, so it
    /// should not).
    fn join(&mut self) -> Option<ConnId> {
        let conn = self
            .relay
            .handle_connect(self.now, Credential::Anonymous)
            .ok()?;
        self.relay.handle_data(self.now, conn, &hello(Role::Client));
        drain(&mut self.relay);
        self.relay.handle_data(self.now, conn, &join());
        drain(&mut self.relay);
        Some(conn)
    }

    fn tick(&mut self) {
        self.now.mono += Duration::from_micros(1);
    }
}

/// Microseconds per call of `step`, over `count` calls after a tenth as
/// many untimed ones (caches and the CPU's clock warm up first).
fn per_call(count: usize, mut step: impl FnMut(usize)) -> f64 {
    for i in 0..count / 10 {
        step(i);
    }
    let started = Instant::now();
    for i in 0..count {
        step(i);
    }
    started.elapsed().as_secs_f64() * 1e6 / count as f64
}

/// Measures every step at one shape; `smoke` takes a few repetitions only.
pub fn measure(shape: Shape, smoke: bool) -> Costs {
    let mut f = Filled::new(shape);
    let reps = |n: usize| if smoke { (n / 50).max(5) } else { n };
    let forward_at = if f.clients.is_empty() {
        f64::NAN
    } else {
        per_call(reps(50_000), |i| {
            let client = f.clients[i % f.clients.len()];
            f.tick();
            f.relay
                .handle_data(f.now, client, &forward(first_chat(), i as u8));
            drain(&mut f.relay);
        })
    };
    let mut sink = None;
    let poll_timeout = per_call(reps(2_000), |_| {
        sink = std::hint::black_box(f.relay.poll_timeout());
    });
    let timer_step = per_call(reps(2_000), |_| {
        f.tick();
        f.relay.handle_timeout(f.now);
        drain(&mut f.relay);
    });
    // New young people join behind the queue (every counsellor is full);
    // each leaves again, untimed, so that the shape stays as it is.
    let count = reps(500);
    let mut total = Duration::ZERO;
    for _ in 0..count {
        f.tick();
        let started = Instant::now();
        let joined = f.join();
        total += started.elapsed();
        let Some(conn) = joined else {
            continue;
        };
        f.relay.handle_disconnect(
            f.now,
            conn,
            Departure::Left(fluister::core::frame::EndReason::UserEnded),
        );
        drain(&mut f.relay);
    }
    Costs {
        forward: forward_at,
        poll_timeout,
        timer_step,
        hello_join: total.as_secs_f64() * 1e6 / count as f64,
    }
}

/// The shapes measured: about 100, 1,000 and 10,000 connections in chats,
/// and 10,000 young people waiting behind a small relay's full chats.
pub fn shapes(smoke: bool) -> Vec<(String, Shape)> {
    let chats = |connections: usize| {
        // Two sides per chat and a counsellor per CAPACITY chats; every
        // counsellor full.
        let per_counsellor = 2 * capacity() + 1;
        connections.div_ceil(per_counsellor) * capacity()
    };
    let sizes: &[usize] = if smoke {
        &[100, 1_000]
    } else {
        &[100, 1_000, 10_000]
    };
    let mut shapes: Vec<(String, Shape)> = sizes
        .iter()
        .map(|&n| {
            let shape = Shape {
                chats: chats(n),
                waiting: 0,
            };
            (format!("{} connections", shape.connections()), shape)
        })
        .collect();
    let waiting = if smoke { 1_000 } else { 10_000 };
    let shape = Shape {
        chats: chats(100),
        waiting,
    };
    shapes.push((
        format!("{} connections, {waiting} waiting", shape.connections()),
        shape,
    ));
    shapes
}
