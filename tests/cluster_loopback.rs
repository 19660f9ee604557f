//! Several relays on loopback sharing one queue through a real NATS server
//! (Debian's `nats-server` with JetStream): chats across relays, the
//! shared queue's order and capacities, and what NATS sees.

mod common;

use std::time::Duration;

use common::cluster::{Nats, RelayProcess, start_cluster_relay};
use common::*;
use fluister::client::chat::{ChatEvent, ClientRequest, CounsellorSettings};
use fluister::client::{ConnectOptions, Reconnect};
use fluister::core::frame::Presence;
use fluister::org::Identity;
use fluister::relay::RunningRelay;
use futures_util::StreamExt;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Counsellor `name` of `org`, signed in to `relay` and connected.
async fn counsellor_on(org: &Org, relay: &RunningRelay, name: &str) -> Party {
    let identity = Identity::load(&org.counsellor(name)).unwrap();
    let mut party = counsellor_party(connect_counsellor(org, relay, &identity).await, identity);
    assert!(is_connected(&party.next().await));
    party
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_across_relays_goes_both_ways_and_moves_to_a_colleague_on_a_third() {
    let org = Org::new();
    let nats = Nats::start();
    let a = start_cluster_relay(&org, &nats, "both_ways").await;
    let b = start_cluster_relay(&org, &nats, "both_ways").await;
    let c = start_cluster_relay(&org, &nats, "both_ways").await;
    let mut sam = counsellor_on(&org, &a, "Sam").await;

    let mut young = client_party(connect_anonymous(&org, &b).await, org.public);
    assert_eq!(young.expect(is_paired).await, paired_with("Sam"));
    sam.expect(is_paired).await;
    young.say("hoi, ben je er?").await;
    assert_eq!(strip_chat(sam.next().await), message("hoi, ben je er?"));
    sam.say("Ja, ik ben er.").await;
    assert_eq!(young.next().await, message("Ja, ik ben er."));

    // Noor signs in on C; Sam, on A, sees her and moves the chat to her.
    let mut noor = counsellor_on(&org, &c, "Noor").await;
    sam.expect(|e| {
        matches!(e, ChatEvent::Colleague { name, presence, .. }
            if name == "Noor" && *presence == Presence::Available)
    })
    .await;
    sam.say("/transfer Noor").await;
    assert_eq!(strip_chat(sam.expect(is_ended).await), ended("transferred"));
    // The young person does a fresh handshake and checks Noor's certificate.
    let moved = young
        .expect(|e| matches!(e, ChatEvent::Transferred { .. }))
        .await;
    assert_eq!(
        moved,
        ChatEvent::Transferred {
            counsellor: "Noor".into()
        }
    );
    noor.expect(is_paired).await;
    young.say("ben jij Noor?").await;
    assert_eq!(strip_chat(noor.next().await), message("ben jij Noor?"));
    noor.say("Ja. Ik lees mee met wat je Sam schreef niet; vertel het me.")
        .await;
    assert_eq!(
        young.next().await,
        message("Ja. Ik lees mee met wat je Sam schreef niet; vertel het me.")
    );
    noor.say("/end").await;
    assert_eq!(young.next().await, ended("peer_ended"));
    for relay in [a, b, c] {
        relay.shutdown().await;
    }
}

/// Who an event came from, in the sixty-young-people test.
#[derive(Debug, Clone, Copy)]
enum Who {
    Young(usize),
    Counsellor(usize),
}

/// Forwards a party's events, tagged, into one channel.
fn tag_events(mut party: Party, who: Who, all: mpsc::UnboundedSender<(Who, ChatEvent)>) -> Party {
    let mut events = std::mem::replace(&mut party.events, mpsc::channel(1).1);
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if all.send((who, event)).is_err() {
                return;
            }
        }
    });
    party
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_young_people_on_three_relays_are_paired_once_each_in_joining_order_per_topic() {
    const YOUNG: usize = 60;
    let org = Org::new();
    let nats = Nats::start();
    let mut relays = Vec::new();
    for _ in 0..3 {
        relays.push(start_cluster_relay(&org, &nats, "sixty").await);
    }
    let (all_tx, mut all) = mpsc::unbounded_channel();

    // They join one after the other, over the three relays, half of them
    // on topic 1 and half on topic 2; each is in the queue before the next
    // comes.
    let topic_of = |i: usize| 1 + (i % 2) as u16;
    let mut young = Vec::new();
    for i in 0..YOUNG {
        let relay = &relays[i % 3];
        let request = ClientRequest {
            topic: Some(topic_of(i).to_string()),
            ..ClientRequest::default()
        };
        let mut party = client_party_for(connect_anonymous(&org, relay).await, org.public, request);
        party
            .expect(|e| matches!(e, ChatEvent::Queued { .. }))
            .await;
        young.push(tag_events(party, Who::Young(i), all_tx.clone()));
    }

    // Sam takes any topic (3 chats at once), Noor topic 1 (2), Kim topic 2
    // (1), each on another relay.
    let counsellors = [
        ("Sam", 3u8, vec![]),
        ("Noor", 2, vec![1u16]),
        ("Kim", 1, vec![2]),
    ];
    let mut signed_in = Vec::new();
    for (n, (name, capacity, topics)) in counsellors.iter().enumerate() {
        let identity = Identity::load(&org.counsellor(name)).unwrap();
        let stream = connect_counsellor(&org, &relays[n], &identity).await;
        let settings = CounsellorSettings {
            capacity: *capacity,
            topics: Some(topics.clone()),
            ..CounsellorSettings::default()
        };
        let party = counsellor_party_with(stream, identity, settings);
        signed_in.push(tag_events(party, Who::Counsellor(n), all_tx.clone()));
    }

    let mut paired_at: Vec<Option<usize>> = vec![None; YOUNG];
    let mut pairings = 0;
    let mut in_chat: std::collections::VecDeque<usize> = Default::default();
    let mut open = [0u8; 3];
    let mut ended = 0;
    // Every young person ever paired from a topic is one of the first to
    // join on it: the pairings of each topic follow the order of joining.
    let check_order = |paired_at: &[Option<usize>]| {
        for topic in [1, 2] {
            let on_topic: Vec<bool> = (0..YOUNG)
                .filter(|i| topic_of(*i) == topic)
                .map(|i| paired_at[i].is_some())
                .collect();
            let prefix = on_topic.iter().take_while(|p| **p).count();
            assert!(
                on_topic[prefix..].iter().all(|p| !p),
                "topic {topic}: paired out of joining order: {on_topic:?}"
            );
        }
    };
    let serves =
        |n: usize, topic: u16| counsellors[n].2.is_empty() || counsellors[n].2.contains(&topic);
    while ended < YOUNG {
        // Settled: every chat is seen from both sides, and no counsellor
        // with room serves anybody still waiting. Then the pairings so far
        // must follow the order of joining, and the young person paired
        // first leaves, which makes room for the next pairing.
        let waiting: Vec<usize> = (0..YOUNG).filter(|i| paired_at[*i].is_none()).collect();
        let settled = open.iter().map(|n| usize::from(*n)).sum::<usize>() == in_chat.len()
            && (0..3).all(|n| {
                open[n] == counsellors[n].1 || !waiting.iter().any(|i| serves(n, topic_of(*i)))
            });
        if settled {
            check_order(&paired_at);
            if let Some(leaving) = in_chat.pop_front() {
                young[leaving].hang_up();
            }
        }
        let Ok(next) = tokio::time::timeout(WAIT, all.recv()).await else {
            panic!("stuck: {pairings} paired, {ended} ended, open {open:?}, in chat {in_chat:?}");
        };
        let (who, event) = next.expect("the channel stays open");
        match (who, event) {
            (Who::Young(i), ChatEvent::Paired { .. }) => {
                assert!(paired_at[i].is_none(), "young person {i} paired twice");
                paired_at[i] = Some(pairings);
                pairings += 1;
                in_chat.push_back(i);
            }
            (Who::Young(i), ChatEvent::Ended { .. }) => {
                in_chat.retain(|j| *j != i);
                ended += 1;
            }
            (Who::Counsellor(n), ChatEvent::Paired { .. }) => {
                open[n] += 1;
                assert!(
                    open[n] <= counsellors[n].1,
                    "{} over capacity",
                    counsellors[n].0
                );
            }
            (Who::Counsellor(n), ChatEvent::Ended { .. }) => open[n] -= 1,
            _ => {}
        }
    }
    assert_eq!(pairings, YOUNG, "everybody had a chat, once");
    for relay in relays {
        relay.shutdown().await;
    }
}

/// Everything NATS carried: each message's subject and payload.
type Heard = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Subscribes to every subject (`>`) on `nats` and keeps what it hears.
async fn tap_everything(nats: &Nats) -> (async_nats::Client, Heard) {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut everything = client.subscribe(">").await.unwrap();
    client.flush().await.unwrap();
    let heard: Heard = Arc::default();
    let keep = heard.clone();
    tokio::spawn(async move {
        while let Some(message) = everything.next().await {
            let subject = message.subject.to_string();
            keep.lock()
                .unwrap()
                .push((subject, message.payload.to_vec()));
        }
    });
    (client, heard)
}

/// Every key and value in the cluster's buckets, and every stream's name.
async fn read_buckets(
    client: &async_nats::Client,
    prefix: &str,
) -> (Vec<String>, Vec<(String, Vec<u8>)>) {
    let js = async_nats::jetstream::new(client.clone());
    let streams: Vec<String> = js.stream_names().map(|name| name.unwrap()).collect().await;
    let mut entries = Vec::new();
    for bucket in ["nodes", "lease"] {
        let store = js
            .get_key_value(format!("{prefix}_{bucket}"))
            .await
            .unwrap();
        let keys: Vec<String> = store
            .keys()
            .await
            .unwrap()
            .map(|k| k.unwrap())
            .collect()
            .await;
        for key in keys {
            let value = store.get(&key).await.unwrap().unwrap_or_default();
            entries.push((format!("{bucket}/{key}"), value.to_vec()));
        }
    }
    (streams, entries)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_carries_nothing_readable_and_keeps_nothing_once_the_chats_end() {
    const PREFIX: &str = "audit";
    let org = Org::new();
    let nats = Nats::start();
    let (tap, heard) = tap_everything(&nats).await;
    let a = start_cluster_relay(&org, &nats, PREFIX).await;
    let b = start_cluster_relay(&org, &nats, PREFIX).await;
    let c = start_cluster_relay(&org, &nats, PREFIX).await;
    let [a_port, b_port, c_port] = [&a, &b, &c].map(|r| r.local_addr().port());
    // Long pseudonyms and texts, so that no sealed byte string holds one
    // by chance.
    let (first, second) = ("Samira van den Audit", "Noor-Auditrix de Tweede");
    let mut sam = counsellor_on(&org, &a, first).await;
    let mut young = client_party(connect_anonymous(&org, &b).await, org.public);
    young.expect(is_paired).await;
    sam.expect(is_paired).await;
    let mut canaries = Vec::new();
    let canary = |label: &str| {
        let random = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
        format!("{label}-CANARY-{random:016x}")
    };
    for _ in 0..5 {
        let text = canary("young");
        young.say(&text).await;
        let got = sam.expect(|e| matches!(e, ChatEvent::Message { .. })).await;
        assert_eq!(strip_chat(got), message(&text));
        canaries.push(text);
        let reply = canary("counsellor");
        sam.say(&reply).await;
        let got = young
            .expect(|e| matches!(e, ChatEvent::Message { .. }))
            .await;
        assert_eq!(got, message(&reply));
        canaries.push(reply);
    }
    let mut noor = counsellor_on(&org, &c, second).await;
    sam.expect(|e| {
        matches!(
            e,
            ChatEvent::Colleague {
                presence: Presence::Available,
                ..
            }
        )
    })
    .await;
    sam.say(&format!("/transfer {second}")).await;
    young
        .expect(|e| matches!(e, ChatEvent::Transferred { .. }))
        .await;
    noor.expect(is_paired).await;
    let last = canary("after-transfer");
    young.say(&last).await;
    let got = noor
        .expect(|e| matches!(e, ChatEvent::Message { .. }))
        .await;
    assert_eq!(strip_chat(got), message(&last));
    canaries.push(last);
    young.hang_up();
    young.finish().await.unwrap();
    noor.expect(is_ended).await;

    // What the buckets hold while the relays run, the chats over: node
    // ids and the leader's, in the two buckets, and no other stream.
    let (streams, entries) = read_buckets(&tap, PREFIX).await;
    let mut streams = streams;
    streams.sort();
    assert_eq!(
        streams,
        [format!("KV_{PREFIX}_lease"), format!("KV_{PREFIX}_nodes")]
    );
    for (key, value) in &entries {
        let node_id =
            |text: &[u8]| std::str::from_utf8(text).is_ok_and(|t| t.parse::<u16>().is_ok());
        let ok = match key.split_once('/') {
            Some(("nodes", k)) => {
                k.starts_with('n') && node_id(&k.as_bytes()[1..]) && value == b"up"
            }
            Some(("lease", "leader")) => node_id(value),
            _ => false,
        };
        assert!(ok, "unexpected entry {key} = {value:?}");
    }
    assert_eq!(
        entries
            .iter()
            .filter(|(k, _)| k.starts_with("nodes/"))
            .count(),
        3
    );

    for relay in [a, b, c] {
        relay.shutdown().await;
    }
    let heard = heard.lock().unwrap().clone();
    assert!(
        heard.len() > 50,
        "the tap heard the run: {} messages",
        heard.len()
    );
    let side = regex_like_side(PREFIX);
    let ports: Vec<String> = [&a_port, &b_port, &c_port]
        .iter()
        .map(|p| p.to_string())
        .collect();
    for (subject, payload) in &heard {
        let allowed = subject == &format!("{PREFIX}.leader")
            || subject
                .strip_prefix(&format!("{PREFIX}.node."))
                .is_some_and(|n| n.parse::<u16>().is_ok())
            || side(subject)
            || subject.starts_with("$JS.API.")
            || subject.starts_with("$JS.EVENT.ADVISORY.")
            || subject.starts_with(&format!("$KV.{PREFIX}_nodes.n"))
            || subject == &format!("$KV.{PREFIX}_lease.leader")
            || subject.starts_with("_INBOX.");
        assert!(allowed, "a subject that should not exist: {subject}");
        for secret in canaries
            .iter()
            .map(String::as_str)
            .chain([first, second, "127.0.0.1", "::1"])
        {
            assert!(
                !contains(subject.as_bytes(), secret.as_bytes()),
                "{secret:?} in subject {subject}"
            );
            assert!(
                !contains(payload, secret.as_bytes()),
                "{secret:?} on {subject}"
            );
        }
        for port in &ports {
            assert!(!contains(payload, port.as_bytes()));
        }
    }
}

/// Whether `subject` is a chat side's: the prefix, `side`, and 32 hex digits.
fn regex_like_side(prefix: &str) -> impl Fn(&str) -> bool {
    let head = format!("{prefix}.side.");
    move |subject: &str| {
        subject.strip_prefix(&head).is_some_and(|route| {
            route.len() == 32
                && route
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_go_on_after_nats_restarts_and_every_message_arrives() {
    let org = Org::new();
    let mut nats = Nats::start();
    let a = start_cluster_relay(&org, &nats, "restart").await;
    let b = start_cluster_relay(&org, &nats, "restart").await;
    let mut sam = counsellor_on(&org, &a, "Sam").await;
    let mut young = client_party(connect_anonymous(&org, &b).await, org.public);
    young.expect(is_paired).await;
    sam.expect(is_paired).await;
    young.say("voor de herstart").await;
    assert_eq!(
        strip_chat(sam.expect(|e| matches!(e, ChatEvent::Message { .. })).await),
        message("voor de herstart")
    );

    // A second young person waits: Sam has no room.
    let mut second = client_party(connect_anonymous(&org, &b).await, org.public);
    second
        .expect(|e| matches!(e, ChatEvent::Queued { .. }))
        .await;

    // NATS goes down for two seconds, with everything it held in memory;
    // both sides write meanwhile.
    nats.stop();
    young.say("tijdens de herstart 1").await;
    sam.say("ook tijdens de herstart").await;
    young.say("tijdens de herstart 2").await;
    nats.restart(std::time::Duration::from_secs(2));

    for text in ["tijdens de herstart 1", "tijdens de herstart 2"] {
        let got = sam.expect(|e| matches!(e, ChatEvent::Message { .. })).await;
        assert_eq!(strip_chat(got), message(text));
    }
    let got = young
        .expect(|e| matches!(e, ChatEvent::Message { .. }))
        .await;
    assert_eq!(got, message("ook tijdens de herstart"));
    // Every message of both is confirmed by the other side, none lost.
    let delivered = |e: &ChatEvent| matches!(e, ChatEvent::Delivered { .. });
    for _ in 0..3 {
        young.expect(delivered).await;
    }
    sam.expect(delivered).await;

    // The queue is back as it was (the relays told the new leader): the
    // young person who waited is paired with Noor, who signs in on A.
    let mut noor = counsellor_on(&org, &a, "Noor").await;
    assert_eq!(second.expect(is_paired).await, paired_with("Noor"));
    noor.expect(is_paired).await;
    for relay in [a, b] {
        relay.shutdown().await;
    }
}

/// How a party reconnects: `first`, then the others in turn.
fn reconnect_to(
    org: &Org,
    first: std::net::SocketAddr,
    others: &[std::net::SocketAddr],
    identity: Option<&Identity>,
) -> Reconnect {
    Reconnect {
        options: ConnectOptions {
            relay: first.to_string(),
            ca: Some(ca(org)),
            credential: identity.map(|i| i.relay_credential().unwrap()),
            connect_timeout: Duration::from_secs(2),
            bind: None,
        },
        give_up_after: Duration::from_secs(120),
        alternates: others.iter().map(|a| a.to_string()).collect(),
    }
}

/// A young person on `reconnect`'s first relay that resumes elsewhere.
async fn resuming_young(org: &Org, reconnect: Reconnect) -> Party {
    let stream = fluister::client::connect(reconnect.options.clone())
        .await
        .unwrap();
    let request = ClientRequest {
        reconnect: Some(reconnect),
        ..ClientRequest::default()
    };
    client_party_for(stream, org.public, request)
}

/// Counsellor `name` on `reconnect`'s first relay that resumes elsewhere.
async fn resuming_counsellor(org: &Org, name: &str, relays: [std::net::SocketAddr; 3]) -> Party {
    let identity = Identity::load(&org.counsellor(name)).unwrap();
    let reconnect = reconnect_to(org, relays[0], &relays[1..], Some(&identity));
    let stream = fluister::client::connect(reconnect.options.clone())
        .await
        .unwrap();
    let settings = CounsellorSettings {
        reconnect: Some(reconnect),
        ..CounsellorSettings::default()
    };
    let mut party = counsellor_party_with(stream, identity, settings);
    assert!(is_connected(&party.next().await));
    party
}

/// The next message `party` reads, waiting up to `bound`.
async fn next_message(party: &mut Party, bound: Duration) -> String {
    let wait = async {
        loop {
            match party.events.recv().await {
                Some(ChatEvent::Message { text, .. }) => return text,
                Some(_) => {}
                None => panic!("the party ended"),
            }
        }
    };
    tokio::time::timeout(bound, wait)
        .await
        .expect("a message in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_relay_is_killed_its_people_resume_on_the_others_and_nothing_is_lost() {
    let org = Org::new();
    let nats = Nats::start();
    let a = RelayProcess::start(&org, &nats, "killed", "a");
    let mut b = RelayProcess::start(&org, &nats, "killed", "b");
    let c = RelayProcess::start(&org, &nats, "killed", "c");
    let (a, b_addr, c) = (a, b.addr, c);

    // Sam on A chats with a young person on B; Noor on B with a young
    // person on C.
    let mut sam = resuming_counsellor(&org, "Sam", [a.addr, c.addr, b_addr]).await;
    let mut first = resuming_young(&org, reconnect_to(&org, b_addr, &[a.addr, c.addr], None)).await;
    assert_eq!(first.expect(is_paired).await, paired_with("Sam"));
    sam.expect(is_paired).await;
    let mut noor = resuming_counsellor(&org, "Noor", [b_addr, c.addr, a.addr]).await;
    let mut second =
        resuming_young(&org, reconnect_to(&org, c.addr, &[a.addr, b_addr], None)).await;
    assert_eq!(second.expect(is_paired).await, paired_with("Noor"));
    noor.expect(is_paired).await;
    let bound = Duration::from_secs(15);
    first.say("hallo Sam").await;
    assert_eq!(next_message(&mut sam, bound).await, "hallo Sam");
    noor.say("hallo, ik ben Noor").await;
    assert_eq!(next_message(&mut second, bound).await, "hallo, ik ben Noor");

    // B dies mid-chat, and everybody writes at once.
    b.kill();
    first.say("B is weg (1)").await;
    sam.say("Ben je er nog? (2)").await;
    noor.say("Ik ben er nog (3)").await;
    second.say("Noor? (4)").await;

    // Within the resume window (and the time a dead relay takes to be
    // noticed and to leave the cluster), every message arrives, once.
    let bound = Duration::from_secs(60);
    assert_eq!(next_message(&mut sam, bound).await, "B is weg (1)");
    assert_eq!(next_message(&mut first, bound).await, "Ben je er nog? (2)");
    assert_eq!(next_message(&mut second, bound).await, "Ik ben er nog (3)");
    assert_eq!(next_message(&mut noor, bound).await, "Noor? (4)");
    // The chats go on where their people are now, and nothing came twice:
    // the next message each reads is the next one sent.
    let bound = Duration::from_secs(15);
    first.say("verder (5)").await;
    assert_eq!(next_message(&mut sam, bound).await, "verder (5)");
    sam.say("verder (6)").await;
    assert_eq!(next_message(&mut first, bound).await, "verder (6)");
    second.say("verder (7)").await;
    assert_eq!(next_message(&mut noor, bound).await, "verder (7)");
    noor.say("verder (8)").await;
    assert_eq!(next_message(&mut second, bound).await, "verder (8)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_relay_moves_its_people_to_the_others_with_nothing_lost() {
    let org = Org::new();
    let nats = Nats::start();
    let a = start_cluster_relay(&org, &nats, "drain").await;
    let b = start_cluster_relay(&org, &nats, "drain").await;
    let c = start_cluster_relay(&org, &nats, "drain").await;
    let (a_addr, b_addr, c_addr) = (a.local_addr(), b.local_addr(), c.local_addr());
    let mut sam = resuming_counsellor(&org, "Sam", [a_addr, c_addr, b_addr]).await;
    let mut young = resuming_young(&org, reconnect_to(&org, b_addr, &[c_addr, a_addr], None)).await;
    assert_eq!(young.expect(is_paired).await, paired_with("Sam"));
    sam.expect(is_paired).await;
    let bound = Duration::from_secs(15);
    young.say("voor het verhuizen").await;
    assert_eq!(next_message(&mut sam, bound).await, "voor het verhuizen");

    // Sam writes, and B drains while it is on its way (SIGTERM in a
    // cluster): the young person moves to C, the message with it.
    sam.say("onderweg").await;
    let drained = tokio::spawn(b.shutdown());
    let (mut resumed, mut got) = (false, Vec::new());
    while !resumed || got.is_empty() {
        match young.next_any().await {
            ChatEvent::Resumed { .. } => resumed = true,
            ChatEvent::Message { text, .. } => got.push(text),
            ChatEvent::Ended { .. } => panic!("the chat ended"),
            _ => {}
        }
    }
    assert_eq!(got, ["onderweg"]);
    tokio::time::timeout(bound, drained)
        .await
        .expect("B drains within its deadline")
        .unwrap();
    young.say("na het verhuizen").await;
    assert_eq!(next_message(&mut sam, bound).await, "na het verhuizen");
    sam.say("ik ben er nog").await;
    assert_eq!(next_message(&mut young, bound).await, "ik ben er nog");
    for relay in [a, c] {
        relay.shutdown().await;
    }
}

/// GET `path` from an admin listener: status code and body.
async fn admin_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    let status = (response.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = (response.split_once("\r\n\r\n"))
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A gauge's value in a /metrics body.
fn gauge(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Polls `relay`'s admin listener until `want` holds of its status and
/// metrics, for up to 20 s.
async fn admin_until(relay: &RunningRelay, what: &str, want: impl Fn(u16, &str) -> bool) {
    let admin = relay.admin_addr().expect("the admin listener is on");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (ready, _) = admin_get(admin, "/readyz").await;
        let (_, metrics) = admin_get(admin, "/metrics").await;
        if want(ready, &metrics) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: /readyz {ready}, /metrics:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_show_the_cluster_and_its_nats() {
    let org = Org::new();
    let mut nats = Nats::start();
    let a = start_cluster_relay(&org, &nats, "metrics").await;
    let b = start_cluster_relay(&org, &nats, "metrics").await;
    let leaders = |m: &str| gauge(m, "fluister_cluster_leader").unwrap_or(-1.0);
    for relay in [&a, &b] {
        admin_until(relay, "in the cluster", |ready, m| {
            ready == 200
                && gauge(m, "fluister_cluster_nats_connected") == Some(1.0)
                && (leaders(m) == 0.0 || gauge(m, "fluister_cluster_members") == Some(2.0))
        })
        .await;
    }
    let (_, ma) = admin_get(a.admin_addr().unwrap(), "/metrics").await;
    let (_, mb) = admin_get(b.admin_addr().unwrap(), "/metrics").await;
    assert_eq!(leaders(&ma) + leaders(&mb), 1.0, "exactly one leader");

    // NATS out of reach: newcomers are sent elsewhere after a few seconds.
    nats.stop();
    admin_until(&a, "NATS away", |ready, m| {
        ready == 503 && gauge(m, "fluister_cluster_nats_connected") == Some(0.0)
    })
    .await;
    nats.restart(Duration::ZERO);
    admin_until(&a, "NATS back", |ready, m| {
        ready == 200 && gauge(m, "fluister_cluster_nats_connected") == Some(1.0)
    })
    .await;
    for relay in [a, b] {
        relay.shutdown().await;
    }
}

/// `[stats]` with the default form, and a store when `store` is given.
fn with_stats(
    mut config: fluister::config::RelayConfig,
    store: Option<&std::path::Path>,
) -> fluister::config::RelayConfig {
    let text = match store {
        Some(path) => format!("store = {:?}", path.display().to_string()),
        None => String::new(),
    };
    config.stats = Some(toml::from_str(&text).unwrap());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codings_made_on_any_relay_are_counted_in_the_designated_keepers_store() {
    use common::cluster::cluster_config;
    let org = Org::new();
    let nats = Nats::start();
    let store = org.dir.path().join("stats.sqlite3");
    let keeper = fluister::relay::start(
        &with_stats(cluster_config(&org, &nats, "coding"), Some(&store)),
        Default::default(),
    )
    .await
    .unwrap();
    let other = fluister::relay::start(
        &with_stats(cluster_config(&org, &nats, "coding"), None),
        Default::default(),
    )
    .await
    .unwrap();
    // Sam signs in on the relay without a store and codes six chats.
    let mut sam = counsellor_on(&org, &other, "Sam").await;
    sam.expect(|e| matches!(e, ChatEvent::Form { .. })).await;
    for i in 0..6 {
        sam.say(&format!("/code 2={}, 3=2", 1 + i % 2)).await;
    }
    sam.say("/code send").await;
    let mut counted = 0;
    while counted < 6 {
        if let ChatEvent::Coded {
            counted: Some(n), ..
        } = sam
            .expect(|e| {
                matches!(
                    e,
                    ChatEvent::Coded {
                        counted: Some(_),
                        ..
                    }
                )
            })
            .await
        {
            counted += n;
        }
    }
    let month = fluister::core::coding::Month::of_unix(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    )
    .unwrap();
    let counts = fluister::stats::Store::open_read_only(&store)
        .unwrap()
        .counts(month, month)
        .unwrap();
    assert_eq!(counts.months, [(month, 6)]);
    let (status, _) = admin_get(other.admin_addr().unwrap(), "/stats/report").await;
    assert_eq!(status, 404, "only the keeper serves the report");
    let (status, body) = admin_get(keeper.admin_addr().unwrap(), "/stats/report?format=csv").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("Chats coded per month,Total,Total,<10"),
        "{body}"
    );
    drop(sam);
    other.shutdown().await;
    keeper.shutdown().await;
}
