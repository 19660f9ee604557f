//! Honest under failure, over real QUIC on loopback: pastes and network
//! outages do not end chats, every line typed ends delivered or not
//! delivered, and what the relay says (busy, restarting, a refused sign-in)
//! is shown at once with its own message instead of a silent retry.
//!
//! Some tests run a party through [`Proxy`], a UDP relay of our own on
//! 127.0.0.1 that can take the network away and give it back.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use fluister::client::chat::{ChatEvent, ClientRequest, CounsellorSettings, ReconnectReason};
use fluister::client::{ClientError, ConnectOptions, Reconnect};
use fluister::org::Identity;
use tokio::net::UdpSocket;
use tokio::sync::Mutex;

/// What "at once" means to a person: well inside the idle timeout.
const AT_ONCE: Duration = Duration::from_secs(5);

/// A UDP forwarder between clients and the relay that can go down.
struct Proxy {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(relay: SocketAddr) -> Proxy {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let backs: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Default::default();
        let (f, d) = (front.clone(), down.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, client)) = f.recv_from(&mut buf).await {
                if d.load(Ordering::Relaxed) {
                    continue;
                }
                let back = {
                    let mut backs = backs.lock().await;
                    match backs.get(&client) {
                        Some(b) => b.clone(),
                        None => {
                            let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                            backs.insert(client, b.clone());
                            let (f, d, b2) = (f.clone(), d.clone(), b.clone());
                            tokio::spawn(async move {
                                let mut buf = vec![0u8; 65536];
                                while let Ok((n, _)) = b2.recv_from(&mut buf).await {
                                    if !d.load(Ordering::Relaxed) {
                                        let _ = f.send_to(&buf[..n], client).await;
                                    }
                                }
                            });
                            b
                        }
                    }
                };
                let _ = back.send_to(&buf[..n], relay).await;
            }
        });
        Proxy { addr, down }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    fn options(&self, org: &Org, credential: Option<fluister::org::Credential>) -> ConnectOptions {
        ConnectOptions {
            relay: self.addr.to_string(),
            ca: Some(ca(org)),
            credential,
            connect_timeout: WAIT,
            bind: None,
        }
    }
}

/// Waits for every id in `ids` to be delivered; fails on any loss or error.
async fn all_delivered(party: &mut Party, ids: impl IntoIterator<Item = u64>) {
    let mut want: Vec<u64> = ids.into_iter().collect();
    while !want.is_empty() {
        match party.next_any().await {
            ChatEvent::Delivered { id, .. } => want.retain(|w| *w != id),
            ChatEvent::NotDelivered { id, .. } => panic!("message {id} not delivered"),
            ChatEvent::Error { message, .. } => panic!("{message}"),
            ChatEvent::Ended { reason, .. } => panic!("ended: {reason:?}"),
            _ => {}
        }
    }
}

/// A relay that notices a dead path within a few seconds, reached through
/// a proxy the test can cut.
async fn relay_behind_a_proxy(org: &Org) -> (fluister::relay::RunningRelay, Proxy) {
    let mut config = org.config();
    config.transport.idle_timeout_secs = 5;
    config.transport.keep_alive_secs = 1;
    let relay = fluister::relay::start(&config, Default::default())
        .await
        .unwrap();
    let proxy = Proxy::start(relay.local_addr()).await;
    (relay, proxy)
}

fn long(n: usize) -> String {
    format!("{n} {}", "ze sturen screenshots naar iedereen ".repeat(500))[..16_000].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_young_persons_paste_of_four_long_messages_is_delivered() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let mut sam = sam(&org, &relay).await;
    let mut young = paired_client(&org, &relay, &mut sam).await;
    let pasted: Vec<String> = (0..4).map(long).collect();
    for text in &pasted {
        young.say(text).await;
    }
    assert_eq!(messages(&mut sam, 4).await, pasted);
    all_delivered(&mut young, 1..=4).await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counsellors_paste_in_one_chat_leaves_the_others_alone() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let identity = Identity::load(&org.counsellor("Sam")).unwrap();
    let settings = CounsellorSettings {
        capacity: 3,
        ..Default::default()
    };
    let mut sam = counsellor_party_with(
        connect_counsellor(&org, &relay, &identity).await,
        identity,
        settings,
    );
    let mut young = Vec::new();
    for _ in 0..3 {
        young.push(paired_client(&org, &relay, &mut sam).await);
    }
    let pasted: Vec<String> = (0..4).map(long).collect();
    for text in &pasted {
        sam.say(&format!("@1 {text}")).await;
    }
    sam.say("@2 ben je er nog?").await;
    sam.say("@3 ik ben zo bij je").await;
    assert_eq!(young[1].next().await, message("ben je er nog?"));
    assert_eq!(young[2].next().await, message("ik ben zo bij je"));
    for text in pasted {
        assert_eq!(young[0].next().await, message(&text));
    }
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_out_of_a_tunnel_delivers_its_backlog() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let proxy = Proxy::start(relay.local_addr()).await;
    let mut sam = sam(&org, &relay).await;
    let options = proxy.options(&org, None);
    let request = ClientRequest {
        reconnect: Some(Reconnect {
            options: options.clone(),
            give_up_after: WAIT,
            alternates: Vec::new(),
        }),
        ..Default::default()
    };
    let stream = fluister::client::connect(options).await.unwrap();
    let mut young = client_party_for(stream, org.public, request);
    young.expect(is_paired).await;
    sam.expect(is_paired).await;
    // Four seconds without network, typing two lines a second.
    proxy.set_down(true);
    let lines: Vec<String> = (1..=8).map(|i| format!("regel {i}")).collect();
    for line in &lines {
        young.say(line).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    proxy.set_down(false);
    assert_eq!(messages(&mut sam, 8).await, lines);
    all_delivered(&mut young, 1..=8).await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_typed_while_reconnecting_are_resolved_when_the_chat_is_lost() {
    let org = Org::new();
    let (relay, proxy) = relay_behind_a_proxy(&org).await;
    let mut sam = sam(&org, &relay).await;
    let options = proxy.options(&org, None);
    let request = ClientRequest {
        reconnect: Some(Reconnect {
            options: options.clone(),
            give_up_after: Duration::from_secs(3),
            alternates: Vec::new(),
        }),
        ..Default::default()
    };
    let stream = fluister::client::connect(options).await.unwrap();
    let mut young = client_party_for(stream, org.public, request);
    young.expect(is_paired).await;
    sam.expect(is_paired).await;
    proxy.set_down(true);
    young.say("een").await;
    young
        .expect(|e| matches!(e, ChatEvent::Reconnecting { .. }))
        .await;
    young.say("twee").await;
    young.say("drie").await;
    // The way back never opens: every line is resolved, then the end.
    let mut lost = Vec::new();
    loop {
        match young.next_any().await {
            ChatEvent::NotDelivered { id, .. } => lost.push(id),
            ChatEvent::Ended { reason, .. } => {
                assert_eq!(reason, fluister::client::chat::EndedReason::EndedWhileAway);
                break;
            }
            _ => {}
        }
    }
    lost.sort();
    assert_eq!(lost, vec![1, 2, 3]);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counsellor_cut_off_from_the_relay_resolves_every_chat() {
    let org = Org::new();
    let (relay, proxy) = relay_behind_a_proxy(&org).await;
    let identity = Identity::load(&org.counsellor("Sam")).unwrap();
    let options = proxy.options(&org, Some(identity.relay_credential().unwrap()));
    let settings = CounsellorSettings {
        reconnect: Some(Reconnect {
            options: options.clone(),
            give_up_after: Duration::from_secs(3),
            alternates: Vec::new(),
        }),
        ..Default::default()
    };
    let stream = fluister::client::connect(options).await.unwrap();
    let mut sam = counsellor_party_with(stream, identity, settings);
    let _young = paired_client(&org, &relay, &mut sam).await;
    sam.expect(|e| matches!(e, ChatEvent::Ready { .. })).await;
    proxy.set_down(true);
    sam.say("ik ben er").await;
    let mut events = Vec::new();
    loop {
        let e = sam.next_any().await;
        let last = matches!(e, ChatEvent::Ended { .. });
        events.push(e);
        if last {
            break;
        }
    }
    assert!(events.contains(&ChatEvent::NotDelivered {
        id: 1,
        chat: Some(1)
    }));
    assert_eq!(events.last(), Some(&ended_in(1, "ended_while_away")));
    let result = sam.finish().await;
    assert!(matches!(result, Err(ref e) if !e.is_final()), "{result:?}");
    relay.shutdown().await;
}

#[tokio::test]
async fn a_young_person_turned_away_at_the_door_is_told_at_once() {
    let org = Org::new();
    let mut config = org.config();
    config.limits.max_anonymous_connections = 1;
    let relay = fluister::relay::start(&config, Default::default())
        .await
        .unwrap();
    let identity = Identity::load(&org.counsellor("Sam")).unwrap();
    let settings = CounsellorSettings {
        available: false,
        ..Default::default()
    };
    let _sam = counsellor_party_with(
        connect_counsellor(&org, &relay, &identity).await,
        identity,
        settings,
    );
    // One young person waits (a joined connection is never pushed out).
    let (_first, _) = raw_joined_client(&org, &relay).await;
    let started = Instant::now();
    let (mut second, _) = resumable_client(&org, &relay).await;
    assert_eq!(second.next().await, ended("busy"));
    assert!(started.elapsed() < AT_ONCE, "not a silent retry");
    second.finish().await.unwrap();
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarting_service_is_said_so() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let identity = Identity::load(&org.counsellor("Sam")).unwrap();
    let settings = CounsellorSettings {
        available: false,
        reconnect: Some(reconnect_options(
            &org,
            &relay,
            Some(&identity),
            Duration::from_secs(2),
        )),
        ..Default::default()
    };
    let mut sam = counsellor_party_with(
        connect_counsellor(&org, &relay, &identity).await,
        identity,
        settings,
    );
    let (mut young, _) = resumable_client(&org, &relay).await;
    young
        .expect(|e| matches!(e, ChatEvent::Queued { .. }))
        .await;
    let started = Instant::now();
    relay.shutdown().await;
    assert_eq!(young.next().await, ended("relay_shutdown"));
    assert_eq!(
        sam.expect(|e| matches!(e, ChatEvent::Reconnecting { .. }))
            .await,
        ChatEvent::Reconnecting {
            reason: ReconnectReason::RelayRestarting
        }
    );
    assert!(started.elapsed() < AT_ONCE);
}

#[tokio::test]
async fn a_damaged_sign_in_credential_is_blamed_on_the_credential() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let identity = Identity::load(&org.counsellor("Sam")).unwrap();
    let (mut chain, key) = identity.relay_credential().unwrap();
    // One flipped bit in the signature: it parses, the key matches, the
    // relay refuses it.
    let mut der = chain[0].to_vec();
    let last = der.len() - 1;
    der[last] ^= 1;
    chain[0] = der.into();
    let err = match try_connect(&relay, ca(&org), Some((chain, key))).await {
        Err(e) => e,
        Ok(mut s) => {
            let _ = s
                .send(&fluister::core::frame::Frame::Hello {
                    version: 1,
                    role: fluister::core::frame::Role::Counsellor,
                })
                .await;
            s.next().await.unwrap_err()
        }
    };
    assert!(matches!(err, ClientError::CredentialRefused(_)), "{err:?}");
    assert!(err.is_final());
    assert!(err.to_string().contains("refused your sign-in"), "{err}");
    relay.shutdown().await;
}

#[tokio::test]
async fn one_address_holds_five_places_in_the_queue_and_no_more() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let identity = Identity::load(&org.counsellor("Sam")).unwrap();
    let settings = CounsellorSettings {
        available: false,
        ..Default::default()
    };
    let _sam = counsellor_party_with(
        connect_counsellor(&org, &relay, &identity).await,
        identity,
        settings,
    );
    // Five from 127.0.0.1 wait.
    let mut waiting = Vec::new();
    for _ in 0..5 {
        waiting.push(raw_joined_client(&org, &relay).await);
    }
    // The sixth from the same address is told the helpline is busy...
    let mut sixth = client_party(connect_anonymous(&org, &relay).await, org.public);
    assert_eq!(sixth.expect(is_ended).await, ended("busy"));
    // ...while a young person from another address gets a place.
    let stream = fluister::client::connect(ConnectOptions {
        bind: Some("127.0.0.2:0".parse().unwrap()),
        ..reconnect_options(&org, &relay, None, WAIT).options
    })
    .await
    .unwrap();
    let mut other = client_party(stream, org.public);
    assert_eq!(
        other
            .expect(|e| matches!(e, ChatEvent::Queued { .. }))
            .await,
        ChatEvent::Queued {
            position: 6,
            estimated_wait_secs: None
        }
    );
    relay.shutdown().await;
}
