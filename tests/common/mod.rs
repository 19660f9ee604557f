//! Shared set-up for the loopback tests: a throw-away organisation, a real
//! relay on 127.0.0.1 with an ephemeral port, and chat roles driven through
//! channels.
#![allow(dead_code)]

pub mod cluster;
pub mod web;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluister::client::chat::{self, ChatEvent, ClientRequest, CounsellorSettings, EndedReason};
use fluister::client::{self, ClientError, ConnectOptions, RelayStream};
use fluister::config::RelayConfig;
use fluister::crypto::cert::OrgPublicKey;
use fluister::org::{self, Identity};
use fluister::relay::{self, Direction, RelayOptions, RunningRelay};
use fluister::tls;
use rand_core::OsRng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Generous bound for anything a test waits on; only hit when broken.
pub const WAIT: Duration = Duration::from_secs(15);

pub struct Org {
    pub dir: tempfile::TempDir,
    pub public: OrgPublicKey,
}

impl Org {
    pub fn new() -> Org {
        let dir = tempfile::tempdir().unwrap();
        let report = org::init(dir.path(), &org::loopback_hosts(), &mut OsRng).unwrap();
        Org {
            dir,
            public: report.org_public_key,
        }
    }

    pub fn counsellor(&self, name: &str) -> PathBuf {
        org::add_counsellor(self.dir.path(), name, 1, None, &mut OsRng).unwrap()
    }

    pub fn relay_cert(&self) -> PathBuf {
        self.dir.path().join(org::RELAY_CERT_FILE)
    }

    /// The relay's certificate chain and key, for test servers of our own.
    pub fn relay_tls(
        &self,
    ) -> (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let read = |name| std::fs::read_to_string(self.dir.path().join(name)).unwrap();
        (
            tls::certs_from_pem("relay cert", &read(org::RELAY_CERT_FILE)).unwrap(),
            tls::key_from_pem("relay key", &read(org::RELAY_KEY_FILE)).unwrap(),
        )
    }

    pub fn config(&self) -> RelayConfig {
        let mut c = RelayConfig::load(&self.dir.path().join(org::RELAY_CONFIG_FILE)).unwrap();
        c.listen = "127.0.0.1:0".parse().unwrap();
        c.admin.listen = "127.0.0.1:0".parse().unwrap();
        c
    }
}

/// One buffer the relay read or wrote.
pub type Tapped = (Direction, Vec<u8>);

/// Every buffer the relay read or wrote, for audits.
#[derive(Clone, Default)]
pub struct Tap(pub Arc<Mutex<Vec<Tapped>>>);

impl Tap {
    pub fn options(&self) -> RelayOptions {
        let tap = self.0.clone();
        RelayOptions {
            observer: Some(Arc::new(move |d, b: &[u8]| {
                tap.lock().unwrap().push((d, b.to_vec()))
            })),
        }
    }
    pub fn all_bytes(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, b)| b.clone())
            .collect()
    }
}

pub async fn start_relay(org: &Org, tap: &Tap) -> RunningRelay {
    relay::start(&org.config(), tap.options()).await.unwrap()
}

/// A relay that admits many young people in a few seconds (more than the
/// default admissions burst).
pub async fn start_relay_for_many(org: &Org) -> RunningRelay {
    let mut config = org.config();
    config.limits.admissions_per_sec = 1000;
    config.limits.admissions_burst = 1000;
    relay::start(&config, Default::default()).await.unwrap()
}

pub fn ca(org: &Org) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    tls::certs_from_pem("ca", &std::fs::read_to_string(org.relay_cert()).unwrap()).unwrap()
}

/// Connects trusting `roots`, with an optional credential; the result as
/// it is, for tests that expect a refusal.
pub async fn try_connect(
    relay: &RunningRelay,
    roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    credential: Option<org::Credential>,
) -> Result<RelayStream, ClientError> {
    client::connect(ConnectOptions {
        relay: relay.local_addr().to_string(),
        ca: Some(roots),
        credential,
        connect_timeout: WAIT,
        bind: None,
    })
    .await
}

pub async fn connect_anonymous(org: &Org, relay: &RunningRelay) -> RelayStream {
    try_connect(relay, ca(org), None).await.unwrap()
}

pub async fn connect_counsellor(
    org: &Org,
    relay: &RunningRelay,
    identity: &Identity,
) -> RelayStream {
    let credential = identity.relay_credential().unwrap();
    try_connect(relay, ca(org), Some(credential)).await.unwrap()
}

/// A running chat role: type into `input`, read `events`.
pub struct Party {
    pub input: Option<mpsc::Sender<String>>,
    pub events: mpsc::Receiver<ChatEvent>,
    pub task: JoinHandle<Result<(), ClientError>>,
}

impl Party {
    pub async fn say(&self, line: &str) {
        self.input
            .as_ref()
            .unwrap()
            .send(line.to_owned())
            .await
            .unwrap();
    }

    /// Closes input (end of stdin).
    pub fn hang_up(&mut self) {
        self.input = None;
    }

    pub async fn next_any(&mut self) -> ChatEvent {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("timed out waiting for an event")
            .expect("event channel closed")
    }

    /// The next event a person would act on (skips status bookkeeping).
    pub async fn next(&mut self) -> ChatEvent {
        loop {
            let e = self.next_any().await;
            if !is_bookkeeping(&e) {
                return e;
            }
        }
    }

    /// Skips events until one matches.
    pub async fn expect(&mut self, want: impl Fn(&ChatEvent) -> bool) -> ChatEvent {
        loop {
            let e = self.next_any().await;
            if want(&e) {
                return e;
            }
        }
    }

    pub async fn finish(self) -> Result<(), ClientError> {
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("role did not finish")
            .unwrap()
    }
}

pub fn client_party(stream: RelayStream, org: OrgPublicKey) -> Party {
    client_party_for(stream, org, ClientRequest::default())
}

pub fn client_party_for(stream: RelayStream, org: OrgPublicKey, request: ClientRequest) -> Party {
    let (in_tx, in_rx) = mpsc::channel(16);
    let (ev_tx, ev_rx) = mpsc::channel(4096);
    Party {
        input: Some(in_tx),
        events: ev_rx,
        task: tokio::spawn(chat::run_client(stream, org, request, in_rx, ev_tx)),
    }
}

pub fn counsellor_party(stream: RelayStream, identity: Identity) -> Party {
    counsellor_party_with(stream, identity, CounsellorSettings::default())
}

pub fn counsellor_party_with(
    stream: RelayStream,
    identity: Identity,
    settings: CounsellorSettings,
) -> Party {
    let (in_tx, in_rx) = mpsc::channel(16);
    let (ev_tx, ev_rx) = mpsc::channel(8192);
    Party {
        input: Some(in_tx),
        events: ev_rx,
        task: tokio::spawn(chat::run_counsellor(
            stream,
            identity.keys,
            settings,
            in_rx,
            ev_tx,
        )),
    }
}

/// The client's "paired" event with a verified counsellor.
pub fn paired_with(name: &str) -> ChatEvent {
    ChatEvent::Paired {
        counsellor: Some(name.into()),
        chat: None,
        topic: None,
        language: None,
    }
}

/// A message as the client sees it.
pub fn message(text: &str) -> ChatEvent {
    ChatEvent::Message {
        text: text.into(),
        chat: None,
    }
}

/// A message as a counsellor sees it, in chat `chat`.
pub fn message_in(chat: u32, text: &str) -> ChatEvent {
    ChatEvent::Message {
        text: text.into(),
        chat: Some(chat),
    }
}

/// An end reason by its `--json` name.
pub fn reason(name: &str) -> EndedReason {
    serde_json::from_value(serde_json::Value::String(name.into()))
        .unwrap_or_else(|_| panic!("{name} is not an end reason"))
}

/// The client's "chat ended" event.
pub fn ended(name: &str) -> ChatEvent {
    ChatEvent::ended(reason(name), None)
}

/// A counsellor's "chat ended" event for chat `chat`.
pub fn ended_in(chat: u32, name: &str) -> ChatEvent {
    ChatEvent::ended(reason(name), Some(chat))
}

pub fn is_connected(e: &ChatEvent) -> bool {
    matches!(e, ChatEvent::Connected { .. })
}

/// Noise a test may skip: status, queue statistics, colleagues, sent,
/// delivered, and a counsellor's `ready` (the young person's handshake came).
pub fn is_bookkeeping(e: &ChatEvent) -> bool {
    matches!(
        e,
        ChatEvent::Status { .. }
            | ChatEvent::QueueStats { .. }
            | ChatEvent::Colleague { .. }
            | ChatEvent::Said { .. }
            | ChatEvent::Sent { .. }
            | ChatEvent::Delivered { .. }
            | ChatEvent::Ready { .. }
    )
}

pub fn is_paired(e: &ChatEvent) -> bool {
    matches!(e, ChatEvent::Paired { .. })
}

pub fn is_ended(e: &ChatEvent) -> bool {
    matches!(e, ChatEvent::Ended { .. })
}

/// Counsellor "Sam" of `org`, signed in to `relay`.
pub async fn sam(org: &Org, relay: &RunningRelay) -> Party {
    let identity = Identity::load(&org.counsellor("Sam")).unwrap();
    counsellor_party(connect_counsellor(org, relay, &identity).await, identity)
}

/// A new anonymous client, paired with `counsellor`.
pub async fn paired_client(org: &Org, relay: &RunningRelay, counsellor: &mut Party) -> Party {
    let mut client = client_party(connect_anonymous(org, relay).await, org.public);
    client.expect(is_paired).await;
    counsellor.expect(is_paired).await;
    client
}

/// The same event without its chat number (for one-chat counsellor tests).
pub fn strip_chat(e: ChatEvent) -> ChatEvent {
    match e {
        ChatEvent::Message { text, .. } => ChatEvent::Message { text, chat: None },
        ChatEvent::Ended { reason, detail, .. } => ChatEvent::Ended {
            reason,
            chat: None,
            detail,
        },
        ChatEvent::Paired { counsellor, .. } => ChatEvent::Paired {
            counsellor,
            chat: None,
            topic: None,
            language: None,
        },
        other => other,
    }
}

/// Says HELLO in `role` on a raw stream.
pub async fn hello(stream: &mut RelayStream, role: fluister::core::frame::Role) {
    stream
        .send(&fluister::core::frame::Frame::Hello {
            version: fluister::core::frame::PROTOCOL_VERSION,
            role,
        })
        .await
        .unwrap();
}

/// A counsellor signed in frame by frame: HELLO, then STATUS available for
/// one chat. Returns the stream and the identity (its keys answer
/// handshakes).
pub async fn raw_counsellor(
    org: &Org,
    relay: &RunningRelay,
    name: &str,
) -> (RelayStream, Identity) {
    use fluister::core::frame::{Frame, Role};
    let identity = Identity::load(&org.counsellor(name)).unwrap();
    let mut stream = connect_counsellor(org, relay, &identity).await;
    hello(&mut stream, Role::Counsellor).await;
    stream
        .send(&Frame::Status {
            available: true,
            capacity: 1,
            topics: vec![],
            languages: vec![],
        })
        .await
        .unwrap();
    (stream, identity)
}

/// The next frame that is not relay bookkeeping (WELCOME, TOPIC, QUEUED,
/// QUEUE_STATS, COLLEAGUE), within [`WAIT`].
pub async fn next_substantive(stream: &mut RelayStream) -> fluister::core::frame::Frame {
    use fluister::core::frame::Frame;
    loop {
        let frame = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("a frame in time")
            .expect("the stream works")
            .expect("the stream is open");
        if !matches!(
            frame,
            Frame::Welcome { .. }
                | Frame::Topic { .. }
                | Frame::Queued { .. }
                | Frame::QueueStats { .. }
                | Frame::Colleague { .. }
        ) {
            return frame;
        }
    }
}

/// A raw client that says HELLO and JOINs (solving the proof of work);
/// returns the stream and its queue ticket. QUEUED or PAIRED comes next.
pub async fn raw_joined_client(
    org: &Org,
    relay: &RunningRelay,
) -> (RelayStream, fluister::core::frame::ResumeCapability) {
    use fluister::core::frame::{Frame, Role};
    let mut s = connect_anonymous(org, relay).await;
    hello(&mut s, Role::Client).await;
    let Some(Frame::Welcome { pow, .. }) = s.next().await.unwrap() else {
        panic!("WELCOME")
    };
    s.send(&Frame::Join {
        topic: None,
        language: None,
        pow_solution: fluister::core::ratelimit::pow_solve(&pow.nonce, pow.difficulty),
    })
    .await
    .unwrap();
    loop {
        match s.next().await.unwrap().unwrap() {
            Frame::Joined { resume } => return (s, resume),
            Frame::Topic { .. } => {}
            other => panic!("{other:?}"),
        }
    }
}

/// A raw client in the queue that waits for PAIRED; returns the stream and
/// its chat number.
pub async fn raw_paired_client(
    org: &Org,
    relay: &RunningRelay,
) -> (RelayStream, fluister::core::frame::ChatNumber) {
    use fluister::core::frame::Frame;
    let (mut s, _) = raw_joined_client(org, relay).await;
    loop {
        match tokio::time::timeout(WAIT, s.next()).await.unwrap().unwrap() {
            Some(Frame::Paired { chat, .. }) => return (s, chat),
            Some(Frame::Queued { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}

/// A client that can quick-exit: set the sender to true.
pub fn client_party_with_exit(
    stream: RelayStream,
    org: OrgPublicKey,
) -> (Party, tokio::sync::watch::Sender<bool>) {
    let (exit, exit_rx) = tokio::sync::watch::channel(false);
    let request = ClientRequest {
        quick_exit: Some(exit_rx),
        ..ClientRequest::default()
    };
    (client_party_for(stream, org, request), exit)
}

/// How a party reconnects to `relay`, giving up after `give_up_after`.
pub fn reconnect_options(
    org: &Org,
    relay: &fluister::relay::RunningRelay,
    identity: Option<&fluister::org::Identity>,
    give_up_after: std::time::Duration,
) -> fluister::client::Reconnect {
    let credential = identity.map(|i| i.relay_credential().unwrap());
    fluister::client::Reconnect {
        options: fluister::client::ConnectOptions {
            relay: relay.local_addr().to_string(),
            ca: Some(ca(org)),
            credential,
            connect_timeout: WAIT,
            bind: None,
        },
        give_up_after,
        alternates: Vec::new(),
    }
}

/// Collects messages until `n` have arrived; checks none came twice.
pub async fn messages(party: &mut Party, n: usize) -> Vec<String> {
    use fluister::client::chat::ChatEvent;
    let mut got = Vec::new();
    while got.len() < n {
        if let ChatEvent::Message { text, .. } = party.next().await {
            assert!(!got.contains(&text), "{text:?} delivered twice");
            got.push(text);
        }
    }
    got
}

/// A young person's chat role that reconnects and resumes when its
/// connection is lost, and that first connection (for tests that kill it).
pub async fn resumable_client(org: &Org, relay: &RunningRelay) -> (Party, quinn::Connection) {
    let stream = connect_anonymous(org, relay).await;
    let connection = stream.connection().clone();
    let request = ClientRequest {
        reconnect: Some(reconnect_options(org, relay, None, WAIT)),
        ..Default::default()
    };
    (client_party_for(stream, org.public, request), connection)
}
