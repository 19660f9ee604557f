//! Load on a real relay process: counsellors and clients that speak the
//! protocol, over connections that share a few client endpoints.
//!
//! For forwarding and latency the two ends pair through the relay exactly
//! as real ones do (HELLO, STATUS, JOIN, PAIRED) and then exchange FORWARD
//! frames of the fixed size; the blobs carry a send timestamp instead of
//! ciphertext, which the relay cannot tell apart and does not look at. The
//! surge uses the real client and counsellor roles, Noise handshake and
//! certificate check included.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::{BenchError, Latencies, blob_with_stamp, stamp_of};
use fluister::client::chat::{self, ChatEvent, ClientRequest, CounsellorSettings};
use fluister::client::{self, RelayStream};
use fluister::core::frame::{ChatNumber, Frame, PROTOCOL_VERSION, Role};
use fluister::core::ratelimit::pow_solve;
use fluister::crypto::cert::OrgPublicKey;
use fluister::org::Identity;

/// How long a frame may take to come back before the run fails.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Chats each bench counsellor takes in forwarding and latency.
pub const CAPACITY: u8 = 8;
/// Chats each counsellor takes in the memory part. Every counsellor hears
/// of every colleague's sign-in and of each time one fills up (COLLEAGUE),
/// so presence costs the relay counsellors² frames: at capacity 8, the
/// 1,250 counsellors of 10,000 chats made 3 million of them and held the
/// relay back past the JOIN deadline. 313 make 200,000.
pub const MEMORY_CAPACITY: u8 = 32;

/// What a counsellor connection does with a FORWARD.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Send it back on the same chat (closed loop).
    Echo = 0,
    /// Record how long it took to arrive (open loop).
    Record = 1,
}

/// The counsellor side of many chats.
pub struct Counsellors {
    mode: Arc<std::sync::atomic::AtomicU8>,
    samples: Arc<Mutex<Vec<u32>>>,
    received: Arc<AtomicU64>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Counsellors {
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }
    /// Latency samples and the count of frames received since the last call.
    pub fn take(&self) -> (Vec<u32>, u64) {
        let samples = std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()));
        (samples, self.received.swap(0, Ordering::Relaxed))
    }
}

/// An anonymous connection that said HELLO and got its WELCOME (the
/// client's own code), with the proof-of-work challenge for its JOIN.
async fn welcomed_client(
    endpoint: &quinn::Endpoint,
    relay: SocketAddr,
) -> Result<(RelayStream, fluister::core::frame::PowChallenge), BenchError> {
    let mut stream = client::connect_on(endpoint, relay, "localhost", None).await?;
    let welcome = chat::hello(&mut stream, Role::Client).await?;
    Ok((stream, welcome.pow))
}

/// JOIN with no topic or language preference (the client's own code).
async fn join(stream: &mut RelayStream, pow_solution: [u8; 8]) -> Result<(), BenchError> {
    chat::join(stream, None, None, pow_solution).await?;
    Ok(())
}

/// Signs in `configs.len()` counsellors (one client TLS config each, with
/// its credential) and runs them.
pub async fn counsellors(
    endpoints: &[quinn::Endpoint],
    relay: SocketAddr,
    configs: Vec<quinn::ClientConfig>,
    capacity: u8,
    epoch: Instant,
) -> Result<Counsellors, BenchError> {
    let mode = Arc::new(std::sync::atomic::AtomicU8::new(Mode::Echo as u8));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, config) in configs.into_iter().enumerate() {
        let endpoint = &endpoints[i % endpoints.len()];
        let mut stream = client::connect_on(endpoint, relay, "localhost", Some(config)).await?;
        chat::hello(&mut stream, Role::Counsellor).await?;
        stream
            .send(&Frame::Status {
                available: true,
                capacity,
                topics: Vec::new(),
                languages: Vec::new(),
            })
            .await?;
        let (mode, samples, received) = (mode.clone(), samples.clone(), received.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let frame = match stream.next().await {
                    Ok(Some(f)) => f,
                    _ => return,
                };
                let Frame::Forward { chat, blob } = frame else {
                    continue;
                };
                if mode.load(Ordering::Relaxed) == Mode::Echo as u8 {
                    received.fetch_add(1, Ordering::Relaxed);
                    if stream.send(&Frame::Forward { chat, blob }).await.is_err() {
                        return;
                    }
                } else {
                    let latency = stamp_of(epoch, blob.as_bytes());
                    samples
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(latency);
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    Ok(Counsellors {
        mode,
        samples,
        received,
        _tasks: tasks,
    })
}

/// A paired client: its stream and its chat number.
pub struct ChatClient {
    stream: RelayStream,
    chat: ChatNumber,
}

/// Joins `count` anonymous clients; returns them once each is paired (or,
/// with `wait_for_pairing` false, once each is queued).
pub async fn clients(
    endpoints: &[quinn::Endpoint],
    relay: SocketAddr,
    count: usize,
    wait_for_pairing: bool,
) -> Result<Vec<ChatClient>, BenchError> {
    let gate = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::new();
    for i in 0..count {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(BenchError::other)?;
            let (mut stream, pow) = welcomed_client(&endpoint, relay).await?;
            join(&mut stream, pow_solve(&pow.nonce, pow.difficulty)).await?;
            loop {
                match stream.next().await? {
                    Some(Frame::Paired { chat, .. }) => return Ok(ChatClient { stream, chat }),
                    Some(Frame::Queued { .. }) if !wait_for_pairing => {
                        // Not paired: the chat number is never used.
                        return Ok(ChatClient {
                            stream,
                            chat: ChatNumber::FIRST,
                        });
                    }
                    Some(Frame::Unavailable { .. }) | None => {
                        return Err(BenchError::Lost("the relay did not queue a client".into()));
                    }
                    Some(_) => {}
                }
            }
        }));
    }
    let mut out = Vec::with_capacity(count);
    for t in tasks {
        out.push(t.await.map_err(BenchError::other)??);
    }
    Ok(out)
}

/// Closed loop: every client sends a frame and waits for its echo, for
/// `duration`. Returns frames delivered per second (two per round trip).
pub async fn closed_loop(
    clients: Vec<ChatClient>,
    duration: Duration,
    epoch: Instant,
) -> Result<(f64, Vec<ChatClient>), BenchError> {
    super::closed_loop(
        clients,
        duration,
        move |mut c: ChatClient, seq| async move {
            c.stream
                .send(&Frame::Forward {
                    chat: c.chat,
                    blob: blob_with_stamp(epoch, seq),
                })
                .await?;
            loop {
                let next = tokio::time::timeout(ANSWER_WAIT, c.stream.next())
                    .await
                    .map_err(|_| BenchError::Lost("an echo did not come back".into()))?;
                match next? {
                    Some(Frame::Forward { .. }) => return Ok(c),
                    Some(_) => {}
                    None => return Err(BenchError::Lost("relay stream ended".into())),
                }
            }
        },
    )
    .await
}

/// Open loop: every client sends its share of `rate` frames per second for
/// `duration`; the counsellors record each frame's one-way latency.
pub async fn open_loop(
    clients: Vec<ChatClient>,
    counsellors: &Counsellors,
    rate: f64,
    duration: Duration,
    epoch: Instant,
) -> Result<(Latencies, Vec<ChatClient>), BenchError> {
    counsellors.set_mode(Mode::Record);
    counsellors.take();
    let per_client = rate / clients.len() as f64;
    let interval = Duration::from_secs_f64(1.0 / per_client.max(0.001));
    let sends = (duration.as_secs_f64() * per_client).round().max(1.0) as u64;
    let mut tasks = Vec::new();
    for mut c in clients {
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for seq in 0..sends {
                tick.tick().await;
                c.stream
                    .send(&Frame::Forward {
                        chat: c.chat,
                        blob: blob_with_stamp(epoch, seq),
                    })
                    .await?;
            }
            Ok::<_, BenchError>(c)
        }));
    }
    let mut back = Vec::new();
    for t in tasks {
        back.push(t.await.map_err(BenchError::other)??);
    }
    let sent = sends * back.len() as u64;
    // Let the last frames arrive.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut samples = Vec::new();
    let mut received = 0;
    while received < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (s, r) = counsellors.take();
        samples.extend(s);
        received += r;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s, r) = counsellors.take();
    samples.extend(s);
    received += r;
    counsellors.set_mode(Mode::Echo);
    if received != sent {
        return Err(BenchError::Lost(format!(
            "open loop: {sent} frames sent, {received} received"
        )));
    }
    Ok((Latencies { sent, samples }, back))
}

/// The surge: `count` young people arrive (real client role, own endpoint
/// each, at most `parallel` at once) and are paired with real counsellor
/// roles, Noise handshake and certificate check included. Returns new
/// chats per second.
pub async fn surge(
    relay: SocketAddr,
    ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    org: OrgPublicKey,
    count: usize,
    parallel: usize,
) -> Result<f64, BenchError> {
    super::surge(count, parallel, || {
        let ca = ca.clone();
        async move {
            let stream = client::connect(client::ConnectOptions {
                relay: relay.to_string(),
                ca: Some(ca),
                credential: None,
                connect_timeout: Duration::from_secs(30),
                bind: None,
            })
            .await?;
            let (input_tx, input_rx) = tokio::sync::mpsc::channel::<String>(4);
            let (events_tx, mut events_rx) = tokio::sync::mpsc::channel(64);
            let role = tokio::spawn(chat::run_client(
                stream,
                org,
                ClientRequest::default(),
                input_rx,
                events_tx,
            ));
            let mut paired = false;
            while let Some(e) = events_rx.recv().await {
                if matches!(e, ChatEvent::Paired { .. }) {
                    paired = true;
                    break;
                }
            }
            // Leave at once, freeing the counsellor's place; the goodbye
            // is not part of the measurement.
            drop(input_tx);
            tokio::spawn(async move {
                while events_rx.recv().await.is_some() {}
                let _ = role.await;
            });
            if paired {
                Ok(())
            } else {
                Err(BenchError::Lost("a surge client was not paired".into()))
            }
        }
    })
    .await
}

/// Real counsellor roles for the surge: they take chats and say nothing.
pub async fn surge_counsellors(
    relay: SocketAddr,
    ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    identities: Vec<Identity>,
) -> Result<
    Vec<(
        tokio::sync::mpsc::Sender<String>,
        tokio::task::JoinHandle<()>,
    )>,
    BenchError,
> {
    let mut roles = Vec::new();
    for identity in identities {
        roles.push(counsellor_role(relay, ca.clone(), identity, 32).await?);
    }
    Ok(roles)
}

/// How an attack on the queue runs (bench part 5).
pub struct AttackPlan {
    /// Connections that say HELLO and nothing else, kept open (reopened as
    /// the relay closes them), from their own address.
    pub idle: usize,
    /// How long the attack runs before a young person arrives.
    pub attack: Duration,
    /// JOINs per second the attacker tries, from one address, solving the
    /// proof of work on one thread.
    pub rate: f64,
    /// How long the young person is given to be paired.
    pub patience: Duration,
}

impl AttackPlan {
    /// No attack: the baseline.
    pub fn none() -> AttackPlan {
        AttackPlan {
            idle: 0,
            attack: Duration::ZERO,
            rate: 0.0,
            patience: Duration::from_secs(60),
        }
    }
}

/// What an attack achieved and cost.
pub struct AttackOutcome {
    /// The young person's time from connecting to a verified counsellor.
    pub pair_secs: Option<f64>,
    /// What happened to the young person, in words.
    pub legit_outcome: String,
    /// Places the attacker held in the queue when the young person came.
    pub places: usize,
    /// Places the attacker got (JOINED) in all.
    pub bought: u64,
    /// Hashes the attacker computed (JOINs and PROOFs).
    pub hashes: u64,
}

/// Hashes per second of the reference solver on one thread of this machine.
pub fn native_hash_rate(duration: Duration) -> f64 {
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < duration {
        for _ in 0..10_000 {
            fluister::core::ratelimit::pow_valid(&[7; 16], 32, &n.to_be_bytes());
            n += 1;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// A client endpoint on its own loopback address (127.0.0.x), so that the
/// relay sees it as its own source.
fn endpoint_at(ip: [u8; 4], config: quinn::ClientConfig) -> Result<quinn::Endpoint, BenchError> {
    super::client_endpoint(SocketAddr::from((ip, 0)), config)
}

/// Runs `plan` against the relay at `relay`: one real counsellor (two chats
/// at once), the idle connections, the attacker, then one real young
/// person, and measures.
pub(super) async fn attack(
    setup: &super::Setup,
    relay: SocketAddr,
    plan: &AttackPlan,
) -> Result<AttackOutcome, BenchError> {
    use std::sync::atomic::AtomicBool;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let identity = Identity::load(&setup.identities[0])?;
    let _counsellor = counsellor_role(relay, setup.ca.clone(), identity, 2).await?;

    // The idle flood, from 127.0.0.4.
    let idle_endpoint = endpoint_at([127, 0, 0, 4], setup.client_config(None)?)?;
    for _ in 0..plan.idle {
        let (endpoint, stop) = (idle_endpoint.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut stream) = client::connect_on(&endpoint, relay, "localhost", None).await
                else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let hello = Frame::Hello {
                    version: PROTOCOL_VERSION,
                    role: Role::Client,
                };
                if stream.send(&hello).await.is_err() {
                    continue;
                }
                // Hold it until the relay lets it go.
                while let Ok(Some(_)) = stream.next().await {}
            }
        }));
    }

    // The attacker, from 127.0.0.2: one solving thread, `rate` tries a second.
    let held = Arc::new(AtomicU64::new(0));
    let bought = Arc::new(AtomicU64::new(0));
    let hashes = Arc::new(AtomicU64::new(0));
    if plan.rate > 0.0 {
        let endpoint = endpoint_at([127, 0, 0, 2], setup.client_config(None)?)?;
        let solver = Arc::new(Semaphore::new(1));
        let (stop, held, bought, hashes) =
            (stop.clone(), held.clone(), bought.clone(), hashes.clone());
        let interval = Duration::from_secs_f64(1.0 / plan.rate);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let (endpoint, solver, stop, held, bought, hashes) = (
                    endpoint.clone(),
                    solver.clone(),
                    stop.clone(),
                    held.clone(),
                    bought.clone(),
                    hashes.clone(),
                );
                tokio::spawn(async move {
                    let _ = squat(&endpoint, relay, &solver, &stop, &held, &bought, &hashes).await;
                });
            }
        }));
    }
    tokio::time::sleep(plan.attack).await;

    // A young person arrives, from 127.0.0.3.
    let places = held.load(Ordering::Relaxed) as usize;
    let started = Instant::now();
    let stream = client::connect(client::ConnectOptions {
        relay: relay.to_string(),
        ca: Some(setup.ca.clone()),
        credential: None,
        connect_timeout: Duration::from_secs(30),
        bind: Some(SocketAddr::from(([127, 0, 0, 3], 0))),
    })
    .await?;
    let (input_tx, input_rx) = tokio::sync::mpsc::channel::<String>(4);
    let (events_tx, mut events_rx) = tokio::sync::mpsc::channel(64);
    let role = tokio::spawn(chat::run_client(
        stream,
        setup.org,
        ClientRequest::default(),
        input_rx,
        events_tx,
    ));
    let outcome = tokio::time::timeout(plan.patience, async {
        while let Some(e) = events_rx.recv().await {
            match e {
                ChatEvent::Paired { .. } => return Ok(started.elapsed().as_secs_f64()),
                ChatEvent::Ended { reason, .. } => return Err(format!("{reason:?}")),
                _ => {}
            }
        }
        Err("the client stopped".to_owned())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    drop(input_tx);
    role.abort();
    let (pair_secs, legit_outcome) = match outcome {
        Ok(Ok(secs)) => (Some(secs), format!("paired after {secs:.1} s")),
        Ok(Err(why)) => (None, format!("turned away: {why}")),
        Err(_) => (
            None,
            format!("not paired within {} s", plan.patience.as_secs()),
        ),
    };
    Ok(AttackOutcome {
        pair_secs,
        legit_outcome,
        places,
        bought: bought.load(Ordering::Relaxed),
        hashes: hashes.load(Ordering::Relaxed),
    })
}

/// One attacker connection: solve, JOIN, hold the place (paying any rent),
/// and when paired, never start the handshake.
async fn squat(
    endpoint: &quinn::Endpoint,
    relay: SocketAddr,
    solver: &Semaphore,
    stop: &std::sync::atomic::AtomicBool,
    held: &AtomicU64,
    bought: &AtomicU64,
    hashes: &AtomicU64,
) -> Result<(), BenchError> {
    let (mut stream, pow) = welcomed_client(endpoint, relay).await?;
    let solve = |pow: fluister::core::frame::PowChallenge| async move {
        let _one_core = solver.acquire().await.map_err(BenchError::other)?;
        let solution = tokio::task::spawn_blocking(move || pow_solve(&pow.nonce, pow.difficulty))
            .await
            .map_err(BenchError::other)?;
        // The reference solver counts up from 0.
        hashes.fetch_add(u64::from_be_bytes(solution) + 1, Ordering::Relaxed);
        Ok::<_, BenchError>(solution)
    };
    join(&mut stream, solve(pow).await?).await?;
    let mut holding = false;
    while !stop.load(Ordering::Relaxed) {
        match stream.next().await {
            Ok(Some(Frame::Joined { .. })) => {
                bought.fetch_add(1, Ordering::Relaxed);
                held.fetch_add(1, Ordering::Relaxed);
                holding = true;
            }
            Ok(Some(Frame::Challenge { pow })) => {
                let solution = solve(pow).await?;
                stream.send(&Frame::Proof { solution }).await?;
            }
            Ok(Some(Frame::Paired { .. })) => {
                if std::mem::take(&mut holding) {
                    held.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    if holding {
        held.fetch_sub(1, Ordering::Relaxed);
    }
    Ok(())
}

/// One real counsellor role taking `capacity` chats, saying nothing, for
/// as long as the returned input sender lives.
async fn counsellor_role(
    relay: SocketAddr,
    ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    identity: Identity,
    capacity: u8,
) -> Result<
    (
        tokio::sync::mpsc::Sender<String>,
        tokio::task::JoinHandle<()>,
    ),
    BenchError,
> {
    let credential = identity.relay_credential()?;
    let stream = client::connect(client::ConnectOptions {
        relay: relay.to_string(),
        ca: Some(ca),
        credential: Some(credential),
        connect_timeout: Duration::from_secs(30),
        bind: None,
    })
    .await?;
    let (input_tx, input_rx) = tokio::sync::mpsc::channel(4);
    let (events_tx, mut events_rx) = tokio::sync::mpsc::channel(256);
    let settings = CounsellorSettings {
        capacity,
        ..Default::default()
    };
    tokio::spawn(chat::run_counsellor(
        stream,
        identity.keys,
        settings,
        input_rx,
        events_tx,
    ));
    let drain = tokio::spawn(async move { while events_rx.recv().await.is_some() {} });
    Ok((input_tx, drain))
}

/// A young person paired over a web binding (WebSocket or WebTransport).
pub struct WebChatClient {
    link: fluister::client::web::WebLink,
    chat: ChatNumber,
}

/// Which web binding [`web_clients`] use.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum WebBinding {
    WebSocket,
    WebTransport,
}

/// Joins `count` young people over `binding` and returns them once each is
/// paired (the relay's TCP port number is its UDP one).
pub async fn web_clients(
    relay: SocketAddr,
    ca: &[rustls::pki_types::CertificateDer<'static>],
    count: usize,
    binding: WebBinding,
) -> Result<Vec<WebChatClient>, BenchError> {
    use fluister::client::web;
    let lost = |what: &str| BenchError::Lost(format!("a web client: {what}"));
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let path = "/fluister/1";
        let mut link = match binding {
            WebBinding::WebSocket => web::websocket(relay, ca, path, &[], None).await,
            WebBinding::WebTransport => web::webtransport(relay, ca, path, &[], None).await,
        }
        .map_err(|e| lost(&e))?;
        link.send(&Frame::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
        })
        .await;
        let Ok(Frame::Welcome { pow, .. }) = link.next().await else {
            return Err(lost("no WELCOME"));
        };
        link.send(&Frame::Join {
            topic: None,
            language: None,
            pow_solution: pow_solve(&pow.nonce, pow.difficulty),
        })
        .await;
        let chat = loop {
            match link.next().await {
                Ok(Frame::Paired { chat, .. }) => break chat,
                Ok(_) => {}
                Err(e) => return Err(lost(&format!("not paired: {e:?}"))),
            }
        };
        out.push(WebChatClient { link, chat });
    }
    Ok(out)
}

/// [`closed_loop`] over web clients.
pub async fn web_closed_loop(
    clients: Vec<WebChatClient>,
    duration: Duration,
    epoch: Instant,
) -> Result<(f64, Vec<WebChatClient>), BenchError> {
    super::closed_loop(
        clients,
        duration,
        move |mut c: WebChatClient, seq| async move {
            c.link
                .send(&Frame::Forward {
                    chat: c.chat,
                    blob: blob_with_stamp(epoch, seq),
                })
                .await;
            loop {
                match c.link.next().await {
                    Ok(Frame::Forward { .. }) => return Ok(c),
                    Ok(_) => {}
                    Err(_) => return Err(BenchError::Lost("a web echo did not come back".into())),
                }
            }
        },
    )
    .await
}
