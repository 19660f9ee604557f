//! Nothing lost on a phone, over real QUIC on 127.0.0.1: connection
//! migration when the client's address changes mid-chat.

mod common;

use common::*;
use fluister::client::chat::ReconnectReason;
use fluister::core::EndpointClose;

#[tokio::test]
async fn a_client_that_moves_to_a_new_port_keeps_its_chat() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let mut sam = sam(&org, &relay).await;
    let stream = connect_anonymous(&org, &relay).await;
    let endpoint = stream.endpoint();
    let before = endpoint.local_addr().unwrap();
    let mut client = client_party(stream, org.public);
    client.expect(is_paired).await;
    sam.expect(is_paired).await;
    client.say("vanaf de wifi van school").await;
    assert_eq!(
        strip_chat(sam.next().await),
        message("vanaf de wifi van school")
    );

    // The phone leaves the wifi: same connection, new address.
    endpoint
        .rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .unwrap();
    assert_ne!(endpoint.local_addr().unwrap(), before);
    for i in 0..5 {
        client.say(&format!("via 4G, bericht {i}")).await;
        assert_eq!(
            strip_chat(sam.next().await),
            message(&format!("via 4G, bericht {i}"))
        );
        sam.say(&format!("ontvangen {i}")).await;
        assert_eq!(client.next().await, message(&format!("ontvangen {i}")));
    }
    client.hang_up();
    assert_eq!(client.next().await, ended("you_ended"));
    client.finish().await.unwrap();
    relay.shutdown().await;
}

#[tokio::test]
async fn messages_are_confirmed_end_to_end_in_both_directions() {
    use fluister::client::chat::ChatEvent;
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let mut sam = sam(&org, &relay).await;
    let mut client = paired_client(&org, &relay, &mut sam).await;
    for i in 1..=3u64 {
        client.say(&format!("bericht {i}")).await;
    }
    // Sent at once, delivered when Sam's batched acknowledgement comes back.
    let mut delivered = Vec::new();
    let mut sent = Vec::new();
    while delivered.len() < 3 {
        match client.next_any().await {
            ChatEvent::Sent { id, chat: None } => sent.push(id),
            ChatEvent::Delivered { id, chat: None } => {
                assert!(sent.contains(&id), "delivered before sent");
                delivered.push(id);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(delivered, vec![1, 2, 3]);
    sam.say("gezien").await;
    let mut seen = Vec::new();
    while !seen.contains(&"delivered") {
        match sam.next_any().await {
            ChatEvent::Sent {
                id: 1,
                chat: Some(1),
            } => seen.push("sent"),
            ChatEvent::Delivered {
                id: 1,
                chat: Some(1),
            } => seen.push("delivered"),
            ChatEvent::Said { id: 1, .. } => seen.push("said"),
            ChatEvent::Message { .. }
            | ChatEvent::QueueStats { .. }
            | ChatEvent::Status { .. }
            | ChatEvent::Ready { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, vec!["said", "sent", "delivered"]);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_killed_client_connection_resumes_with_the_same_counsellor_and_loses_nothing() {
    use fluister::client::chat::ChatEvent;
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let mut sam = sam(&org, &relay).await;
    let (mut client, connection) = resumable_client(&org, &relay).await;
    assert_eq!(client.expect(is_paired).await, paired_with("Sam"));
    sam.expect(is_paired).await;

    client.say("een").await;
    client.say("twee").await;
    // The stairwell: the connection dies with messages possibly in flight.
    // Lost, to the relay (as after a timeout, without waiting for one).
    connection.close(EndpointClose::Reconnecting.code().into(), b"");
    client.say("drie").await;
    assert_eq!(
        client
            .expect(|e| matches!(e, ChatEvent::Resumed { .. }))
            .await,
        ChatEvent::Resumed { chat: None }
    );
    client.say("vier").await;
    // Every message arrives exactly once, in order, at the same counsellor.
    assert_eq!(
        messages(&mut sam, 4).await,
        vec!["een", "twee", "drie", "vier"]
    );
    sam.say("alles ontvangen").await;
    assert_eq!(client.next().await, message("alles ontvangen"));
    relay.shutdown().await;
}

#[tokio::test]
async fn after_the_resume_window_both_sides_are_told_the_chat_ended() {
    use fluister::client::chat::{ChatEvent, ClientRequest};
    let org = Org::new();
    let mut config = org.config();
    config.limits.resume_window = std::time::Duration::from_secs(1);
    let relay = fluister::relay::start(&config, Default::default())
        .await
        .unwrap();
    let mut sam = sam(&org, &relay).await;
    let stream = connect_anonymous(&org, &relay).await;
    let connection = stream.connection().clone();
    // This client gives up at once, as one whose phone stays off would.
    let request = ClientRequest {
        reconnect: Some(reconnect_options(
            &org,
            &relay,
            None,
            std::time::Duration::ZERO,
        )),
        ..Default::default()
    };
    let mut client = client_party_for(stream, org.public, request);
    client.expect(is_paired).await;
    sam.expect(is_paired).await;
    // Lost, to the relay (as after a timeout, without waiting for one).
    connection.close(EndpointClose::Reconnecting.code().into(), b"");
    assert_eq!(client.expect(is_ended).await, ended("ended_while_away"));
    assert_eq!(sam.next().await, ChatEvent::PeerAway { chat: Some(1) });
    assert_eq!(sam.expect(is_ended).await, ended_in(1, "peer_disconnected"));
    relay.shutdown().await;
}

#[tokio::test]
async fn a_counsellor_drop_and_resume_keeps_the_chat() {
    use fluister::client::chat::{ChatEvent, CounsellorSettings};
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let identity = fluister::org::Identity::load(&org.counsellor("Sam")).unwrap();
    let again =
        fluister::org::Identity::load(&org.dir.path().join("counsellors/Sam.identity")).unwrap();
    let stream = connect_counsellor(&org, &relay, &identity).await;
    let connection = stream.connection().clone();
    let settings = CounsellorSettings {
        reconnect: Some(reconnect_options(&org, &relay, Some(&again), WAIT)),
        ..Default::default()
    };
    let mut sam = counsellor_party_with(stream, identity, settings);
    let mut client = paired_client(&org, &relay, &mut sam).await;
    client.say("hallo").await;
    assert_eq!(messages(&mut sam, 1).await, vec!["hallo"]);

    // Lost, to the relay (as after a timeout, without waiting for one).
    connection.close(EndpointClose::Reconnecting.code().into(), b""); // the laptop sleeps
    assert_eq!(client.next().await, ChatEvent::PeerAway { chat: None });
    client.say("ik wacht wel").await; // held by the relay meanwhile
    assert_eq!(
        sam.expect(|e| matches!(e, ChatEvent::Resumed { .. })).await,
        ChatEvent::Resumed { chat: Some(1) }
    );
    assert_eq!(client.next().await, ChatEvent::PeerBack { chat: None });
    assert_eq!(messages(&mut sam, 1).await, vec!["ik wacht wel"]);
    sam.say("@1 Ik ben er weer.").await;
    assert_eq!(client.next().await, message("Ik ben er weer."));
    relay.shutdown().await;
}

#[tokio::test]
async fn a_wrong_capability_is_refused_like_an_unknown_one() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    for capability in [[0u8; 32], [0xab; 32]] {
        let mut s = connect_anonymous(&org, &relay).await;
        s.send(&fluister::core::frame::Frame::Resume {
            capability: fluister::core::frame::ResumeCapability(capability),
        })
        .await
        .unwrap();
        assert_eq!(
            s.next().await.unwrap(),
            Some(fluister::core::frame::Frame::ResumeFailed)
        );
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn a_waiting_client_whose_connection_dies_keeps_its_place_in_the_queue() {
    use fluister::client::chat::{ChatEvent, ClientRequest};
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let waiting_client = |stream| {
        let request = ClientRequest {
            reconnect: Some(reconnect_options(&org, &relay, None, WAIT)),
            ..Default::default()
        };
        client_party_for(stream, org.public, request)
    };
    let first_stream = connect_anonymous(&org, &relay).await;
    let connection = first_stream.connection().clone();
    let mut first = waiting_client(first_stream);
    first
        .expect(|e| matches!(e, ChatEvent::Queued { position: 1, .. }))
        .await;
    let mut second = waiting_client(connect_anonymous(&org, &relay).await);
    second
        .expect(|e| matches!(e, ChatEvent::Queued { position: 2, .. }))
        .await;
    // A line typed while waiting waits for the counsellor, across the drop.
    first.say("ben je er?").await;
    // Lost, to the relay (as after a timeout, without waiting for one).
    connection.close(EndpointClose::Reconnecting.code().into(), b"");
    first
        .expect(|e| {
            matches!(
                e,
                ChatEvent::Reconnecting {
                    reason: ReconnectReason::Lost
                }
            )
        })
        .await;
    first
        .expect(|e| *e == ChatEvent::Resumed { chat: None })
        .await;
    // Back at the front, not behind the client who joined later.
    first
        .expect(|e| matches!(e, ChatEvent::Queued { position: 1, .. }))
        .await;
    let mut sam = sam(&org, &relay).await;
    first.expect(is_paired).await;
    sam.expect(is_paired).await;
    assert_eq!(messages(&mut sam, 1).await, vec!["ben je er?"]);
    second
        .expect(|e| matches!(e, ChatEvent::Queued { position: 1, .. }))
        .await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_counsellor_who_ends_right_after_sending_sees_the_message_delivered() {
    use fluister::client::chat::ChatEvent;
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let mut sam = sam(&org, &relay).await;
    let mut client = paired_client(&org, &relay, &mut sam).await;
    // The goodbye and the end, at once: the acknowledgement is still to come.
    sam.say("sterkte, je kunt altijd terugkomen").await;
    sam.say("/end").await;
    let mut seen = Vec::new();
    loop {
        match sam.next_any().await {
            ChatEvent::Delivered { id: 1, .. } => seen.push("delivered"),
            ChatEvent::NotDelivered { id: 1, .. } => seen.push("not_delivered"),
            ChatEvent::Ended { .. } => {
                seen.push("ended");
                break;
            }
            _ => {}
        }
    }
    assert_eq!(seen, vec!["delivered", "ended"]);
    assert_eq!(
        client.next().await,
        message("sterkte, je kunt altijd terugkomen")
    );
    assert_eq!(client.next().await, ended("peer_ended"));
    relay.shutdown().await;
}

#[tokio::test]
async fn a_client_whose_first_relay_address_is_gone_comes_back_through_the_next() {
    use fluister::client::chat::{ChatEvent, ClientRequest};
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let mut sam = sam(&org, &relay).await;
    let stream = connect_anonymous(&org, &relay).await;
    let connection = stream.connection().clone();
    // The first address the client knows is a relay that is gone (nothing
    // answers on it); the second is the one it is chatting through.
    let gone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut reconnect = reconnect_options(&org, &relay, None, WAIT);
    reconnect.options.relay = gone.local_addr().unwrap().to_string();
    reconnect.options.connect_timeout = std::time::Duration::from_secs(1);
    reconnect.alternates = vec![relay.local_addr().to_string()];
    let request = ClientRequest {
        reconnect: Some(reconnect),
        ..Default::default()
    };
    let mut client = client_party_for(stream, org.public, request);
    client.expect(is_paired).await;
    sam.expect(is_paired).await;
    // Lost, to the relay (as after a timeout, without waiting for one).
    connection.close(EndpointClose::Reconnecting.code().into(), b"");
    client
        .expect(|e| matches!(e, ChatEvent::Resumed { .. }))
        .await;
    client.say("via het tweede adres").await;
    assert_eq!(messages(&mut sam, 1).await, vec!["via het tweede adres"]);
    drop(gone);
    relay.shutdown().await;
}
