//! Nothing lost on a phone, over real QUIC on 127.0.0.1: connection
//! migration when the client's address changes mid-chat.

mod common;

use common::*;

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
            ChatEvent::Message { .. } | ChatEvent::QueueStats { .. } | ChatEvent::Status { .. } => {
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, vec!["sent", "delivered"]);
    relay.shutdown().await;
}
