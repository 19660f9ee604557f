//! Chaos: concurrent chats through a UDP proxy that drops (2%), duplicates
//! (1%), delays and reorders (10%) packets and moves clients to new source
//! ports (NAT rebinding), while some clients' connections are killed
//! outright and resume. Every message must arrive exactly once and in order,
//! or its sender must be told it was not delivered. Bounded in time.
//!
//! It runs 100 chats and 10,000 messages (5,000 each way, every client
//! message echoed by its counsellor) and takes about 15 s. Besides
//! loss and reordering, the proxy's NAT rebinding can move a client during
//! its QUIC handshake; the relay then never completes that connection
//! (packets from a new address are dropped before the handshake is
//! confirmed), and the client must notice the silence and start again.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use fluister::client::chat::{ChatEvent, ClientRequest, CounsellorSettings};
use fluister::client::{ConnectOptions, Reconnect};
use fluister::core::EndpointClose;
use fluister::org::Identity;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::Mutex;

const CHATS: usize = 100;
const MESSAGES_PER_SIDE: usize = 50;
const COUNSELLORS: usize = 13;
const CAPACITY: u8 = 8;

#[derive(Default)]
struct Faults {
    dropped: AtomicU64,
    duplicated: AtomicU64,
    delayed: AtomicU64,
    rebound: AtomicU64,
    forwarded: AtomicU64,
}

/// Sends one datagram with the proxy's faults applied.
fn forward(
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    data: Vec<u8>,
    rng: &mut ChaCha20Rng,
    faults: &Arc<Faults>,
) {
    let roll = rng.next_u32() % 1000;
    if roll < 20 {
        faults.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let copies = if roll < 30 {
        faults.duplicated.fetch_add(1, Ordering::Relaxed);
        2
    } else {
        1
    };
    let delay = if roll < 130 {
        faults.delayed.fetch_add(1, Ordering::Relaxed);
        Duration::from_millis(u64::from(rng.next_u32() % 30))
    } else {
        Duration::ZERO
    };
    faults.forwarded.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        for _ in 0..copies {
            let _ = socket.send_to(&data, to).await;
        }
    });
}

/// A faulty UDP proxy on 127.0.0.1 in front of `relay`.
async fn proxy(
    relay: SocketAddr,
    faults: Arc<Faults>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let upstreams: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Default::default();
        let mut rng = ChaCha20Rng::seed_from_u64(42);
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, client)) = front.recv_from(&mut buf).await else {
                return;
            };
            let mut map = upstreams.lock().await;
            // Now and then the client's "NAT" moves it to a new source port.
            let rebind = map.contains_key(&client) && rng.next_u32() % 2000 == 0;
            if rebind {
                faults.rebound.fetch_add(1, Ordering::Relaxed);
                map.remove(&client);
            }
            let up = match map.get(&client) {
                Some(up) => up.clone(),
                None => {
                    let up = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    map.insert(client, up.clone());
                    let (front, up2, faults, upstreams) =
                        (front.clone(), up.clone(), faults.clone(), upstreams.clone());
                    let mut rng = ChaCha20Rng::seed_from_u64(u64::from(client.port()));
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        loop {
                            let recv = tokio::time::timeout(
                                Duration::from_secs(30),
                                up2.recv_from(&mut buf),
                            )
                            .await;
                            let Ok(Ok((n, _))) = recv else {
                                // A quiet mapping expires, as in a NAT.
                                let mut map = upstreams.lock().await;
                                if map.get(&client).is_some_and(|u| Arc::ptr_eq(u, &up2)) {
                                    map.remove(&client);
                                }
                                return;
                            };
                            // Stop once this mapping was replaced.
                            let current = upstreams
                                .lock()
                                .await
                                .get(&client)
                                .map(|u| Arc::ptr_eq(u, &up2));
                            if current == Some(false) {
                                return;
                            }
                            forward(front.clone(), client, buf[..n].to_vec(), &mut rng, &faults);
                        }
                    });
                    up
                }
            };
            drop(map);
            forward(up, relay, buf[..n].to_vec(), &mut rng, &faults);
        }
    });
    (addr, task)
}

/// A first connection can fail when the network moves the client during the
/// handshake (its retry token no longer matches); a person would try again.
async fn connect_with_retries(opts: &ConnectOptions) -> fluister::client::RelayStream {
    let mut last = None;
    for _ in 0..5 {
        match fluister::client::connect(opts.clone()).await {
            Ok(s) => return s,
            Err(e) => last = Some(e),
        }
    }
    panic!("could not connect: {last:?}");
}

#[derive(Default)]
struct Tally {
    sent: u64,
    delivered: u64,
    not_delivered: u64,
    received: u64,
    /// Connections this test killed on purpose.
    killed: u64,
    /// `reconnecting` and `resumed` events the clients reported, for
    /// any cause (a kill, or the proxy's faults).
    reconnecting: u64,
    resumed: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_through_a_faulty_network_lose_nothing_silently() {
    let org = Org::new();
    let mut config = org.config();
    // Room for the whole test at once; the limits themselves are tested elsewhere.
    config.limits.admissions_per_sec = 1000;
    config.limits.admissions_burst = 1000;
    config.limits.pow_max_difficulty = 10;
    config.limits.max_held_frames = 1024;
    let relay = fluister::relay::start(&config, Default::default())
        .await
        .unwrap();
    let faults = Arc::new(Faults::default());
    let (proxy_addr, proxy_task) = proxy(relay.local_addr(), faults.clone()).await;
    let options = |credential| ConnectOptions {
        relay: proxy_addr.to_string(),
        ca: Some(ca(&org)),
        credential,
        connect_timeout: Duration::from_secs(20),
        bind: None,
    };

    // Counsellors echo every message back to its chat.
    let mut counsellor_tasks = Vec::new();
    let seen_by_counsellors = Arc::new(std::sync::Mutex::new(HashMap::<String, usize>::new()));
    for k in 0..COUNSELLORS {
        let identity = Identity::load(&org.counsellor(&format!("C{k}"))).unwrap();
        let credential = identity.relay_credential().unwrap();
        let opts = options(Some(credential));
        let stream = connect_with_retries(&opts).await;
        let settings = CounsellorSettings {
            capacity: CAPACITY,
            reconnect: Some(Reconnect {
                options: opts,
                give_up_after: Duration::from_secs(60),
                alternates: Vec::new(),
            }),
            ..Default::default()
        };
        let mut party = counsellor_party_with(stream, identity, settings);
        let seen = seen_by_counsellors.clone();
        counsellor_tasks.push(tokio::spawn(async move {
            // Per chat: the last message number seen, to check order.
            let mut last: HashMap<u32, (String, usize)> = HashMap::new();
            while let Some(e) = party.events.recv().await {
                if let ChatEvent::Message {
                    text,
                    chat: Some(n),
                } = e
                {
                    let (client, number) = text
                        .split_once('-')
                        .map(|(c, k)| (c.to_owned(), k.parse::<usize>().unwrap()))
                        .unwrap();
                    let entry = last.entry(n).or_insert((client.clone(), 0));
                    assert_eq!(entry.0, client, "a chat carried two clients");
                    assert_eq!(
                        number,
                        entry.1 + 1,
                        "counsellor saw {client} message {number} after {}",
                        entry.1
                    );
                    entry.1 = number;
                    *seen.lock().unwrap().entry(client).or_default() += 1;
                    party.say(&format!("@{n} echo-{number}")).await;
                }
            }
            let result = party.task.await;
            eprintln!("counsellor {k} stopped: {result:?}");
        }));
    }

    // Clients: each sends its messages, reads the echoes, and tallies what
    // it was told about each message it sent.
    let mut client_tasks = Vec::new();
    for i in 0..CHATS {
        let opts = options(None);
        let org_key = org.public;
        client_tasks.push(tokio::spawn(async move {
            let stream = connect_with_retries(&opts).await;
            let killer = stream.connection().clone();
            let request = ClientRequest {
                reconnect: Some(Reconnect {
                    options: opts,
                    give_up_after: Duration::from_secs(60),
                    alternates: Vec::new(),
                }),
                ..Default::default()
            };
            let mut party = client_party_for(stream, org_key, request);
            let mut tally = Tally::default();
            let mut echoes = 0usize;
            let mut outcome: HashMap<u64, &'static str> = HashMap::new();
            // Wait for the counsellor.
            let mut before = Vec::new();
            loop {
                match tokio::time::timeout(Duration::from_secs(60), party.events.recv()).await {
                    Ok(Some(ChatEvent::Paired { .. })) => break,
                    Ok(Some(e)) => before.push(e),
                    _ => {
                        let result = party.task.await.unwrap();
                        panic!("client {i} not paired: {result:?} after {before:?}");
                    }
                }
            }
            for k in 1..=MESSAGES_PER_SIDE {
                if party
                    .input
                    .as_ref()
                    .unwrap()
                    .send(format!("c{i}-{k}"))
                    .await
                    .is_err()
                {
                    let mut events = Vec::new();
                    while let Ok(e) = party.events.try_recv() {
                        events.push(e);
                    }
                    let result = party.task.await.unwrap();
                    panic!(
                        "client {i} stopped at {k}: {result:?}; last events {:?}",
                        &events[events.len().saturating_sub(5)..]
                    );
                }
                tally.sent += 1;
                if i % 10 == 0 && k == MESSAGES_PER_SIDE / 2 {
                    // The app is killed mid-chat: to the relay, a lost connection.
                    killer.close(EndpointClose::Reconnecting.code().into(), b"");
                    tally.killed += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Read until every echo arrived and every message has an outcome.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            while (echoes < MESSAGES_PER_SIDE || outcome.len() < MESSAGES_PER_SIDE)
                && tokio::time::Instant::now() < deadline
            {
                let e = match tokio::time::timeout_at(deadline, party.events.recv()).await {
                    Ok(Some(e)) => e,
                    _ => break,
                };
                match e {
                    ChatEvent::Message { text, .. } => {
                        let k: usize = text.strip_prefix("echo-").unwrap().parse().unwrap();
                        assert_eq!(k, echoes + 1, "client {i}: echo {k} after {echoes}");
                        echoes = k;
                        tally.received += 1;
                    }
                    ChatEvent::Delivered { id, .. } => {
                        assert!(
                            outcome.insert(id, "delivered").is_none(),
                            "client {i}: message {id} confirmed twice"
                        );
                    }
                    ChatEvent::NotDelivered { id, .. } => {
                        assert!(
                            outcome.insert(id, "not").is_none(),
                            "client {i}: message {id} confirmed twice"
                        );
                    }
                    ChatEvent::Reconnecting { .. } => tally.reconnecting += 1,
                    ChatEvent::Resumed { .. } => tally.resumed += 1,
                    ChatEvent::Ended { .. } => break,
                    _ => {}
                }
            }
            if outcome.len() < MESSAGES_PER_SIDE {
                let mut rest = Vec::new();
                while let Ok(e) = party.events.try_recv() {
                    rest.push(e);
                }
                eprintln!(
                    "client {i}: echoes {echoes}, outcomes {}; then {rest:?}",
                    outcome.len()
                );
            }
            tally.delivered = outcome.values().filter(|v| **v == "delivered").count() as u64;
            tally.not_delivered = outcome.values().filter(|v| **v == "not").count() as u64;
            assert_eq!(
                tally.delivered + tally.not_delivered,
                tally.sent,
                "client {i}: {} messages neither delivered nor reported",
                tally.sent - tally.delivered - tally.not_delivered
            );
            party.hang_up();
            tally
        }));
    }

    let mut total = Tally::default();
    let all = async {
        for t in client_tasks {
            let t = t.await.unwrap();
            total.sent += t.sent;
            total.delivered += t.delivered;
            total.not_delivered += t.not_delivered;
            total.received += t.received;
            total.killed += t.killed;
            total.reconnecting += t.reconnecting;
            total.resumed += t.resumed;
        }
    };
    tokio::time::timeout(Duration::from_secs(240), all)
        .await
        .expect("chaos run took too long");
    let seen: usize = seen_by_counsellors.lock().unwrap().values().sum();
    println!(
        "chaos: {CHATS} chats; clients sent {} messages: {} delivered, {} reported not delivered; counsellors received {seen} (each once, in order) and echoed; clients received {} echoes. Proxy: {} datagrams forwarded, {} dropped, {} duplicated, {} delayed, {} NAT rebinds; {} client connections killed; clients reported {} reconnects begun and {} resumed.",
        total.sent,
        total.delivered,
        total.not_delivered,
        total.received,
        faults.forwarded.load(Ordering::Relaxed),
        faults.dropped.load(Ordering::Relaxed),
        faults.duplicated.load(Ordering::Relaxed),
        faults.delayed.load(Ordering::Relaxed),
        faults.rebound.load(Ordering::Relaxed),
        total.killed,
        total.reconnecting,
        total.resumed,
    );
    assert_eq!(total.sent, (CHATS * MESSAGES_PER_SIDE) as u64);
    assert!(
        total.delivered as usize <= seen,
        "a delivery confirmed that the counsellor never saw"
    );
    proxy_task.abort();
    for t in counsellor_tasks {
        t.abort();
    }
    relay.shutdown().await;
}
