//! The real relay over real QUIC on 127.0.0.1: chats both ways, the queue,
//! ending from either side, counsellor sign-in, bad frames, and what the
//! relay's buffers hold.

mod common;

use common::*;
use fluister::client::ClientError;
use fluister::client::chat::ChatEvent;
use fluister::core::CloseCode;
use fluister::core::frame::{BLOB_LEN, Blob, ChatNumber, Frame, Role, kind};
use fluister::crypto::e2e::E2eError;
use fluister::org::Identity;
use fluister::relay::Direction;

#[tokio::test]
async fn a_full_chat_both_ways() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let mut counsellor = sam(&org, &relay).await;
    assert!(is_connected(&counsellor.next().await));

    let mut client = client_party(connect_anonymous(&org, &relay).await, org.public);
    client.say("Hallo? Is daar iemand?").await; // typed before pairing: held back
    assert_eq!(client.expect(is_paired).await, paired_with("Sam"));
    counsellor.expect(is_paired).await;
    assert_eq!(
        strip_chat(counsellor.next().await),
        message("Hallo? Is daar iemand?")
    );

    counsellor
        .say("Ja, ik ben er. Je bent veilig om hier te praten.")
        .await;
    assert_eq!(
        client.next().await,
        message("Ja, ik ben er. Je bent veilig om hier te praten.")
    );

    let long: String = "Dit is een lang bericht. ".repeat(400); // ~10 KB: split and joined
    client.say(&long).await;
    assert_eq!(strip_chat(counsellor.next().await), message(&long));
    client.say("").await;
    assert_eq!(strip_chat(counsellor.next().await), message(""));

    client.hang_up();
    assert_eq!(client.next().await, ended("you_ended"));
    assert_eq!(strip_chat(counsellor.next().await), ended("peer_ended"));
    client.finish().await.unwrap();
    counsellor.hang_up();
    counsellor.finish().await.unwrap();
    relay.shutdown().await;
}

#[tokio::test]
async fn a_queue_of_three_is_served_in_order() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let mut clients = Vec::new();
    for i in 1..=3u32 {
        let mut c = client_party(connect_anonymous(&org, &relay).await, org.public);
        assert!(is_connected(&c.next().await));
        assert!(matches!(c.next().await, ChatEvent::Queued { position, .. } if position == i));
        clients.push(c);
    }
    let mut counsellor = sam(&org, &relay).await;

    for (served, client) in clients.iter_mut().enumerate() {
        client.expect(is_paired).await;
        counsellor.expect(is_paired).await;
        client.say(&format!("ik ben nummer {}", served + 1)).await;
        assert_eq!(
            strip_chat(counsellor.next().await),
            message(&format!("ik ben nummer {}", served + 1))
        );
        counsellor.say("/end").await;
        assert_eq!(strip_chat(counsellor.next().await), ended("you_ended"));
        assert_eq!(client.next().await, ended("peer_ended"));
    }
    // Those still waiting were told when they moved up.
    // (Client 2 saw position 1 after client 1 was paired; checked by the core tests.)
    for c in clients {
        c.finish().await.unwrap();
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn waiting_clients_move_up_the_queue() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let mut first = client_party(connect_anonymous(&org, &relay).await, org.public);
    first
        .expect(|e| matches!(e, ChatEvent::Queued { position: 1, .. }))
        .await;
    let mut second = client_party(connect_anonymous(&org, &relay).await, org.public);
    second
        .expect(|e| matches!(e, ChatEvent::Queued { position: 2, .. }))
        .await;
    first.hang_up();
    assert_eq!(first.next().await, ended("left_queue"));
    assert!(matches!(second.next().await, ChatEvent::Queued { position, .. } if position == 1));
    relay.shutdown().await;
}

#[tokio::test]
async fn the_counsellor_disconnecting_ends_the_chat_for_the_client_after_the_resume_window() {
    let org = Org::new();
    let mut config = org.config();
    config.limits.resume_window = std::time::Duration::from_secs(1);
    let relay = fluister::relay::start(&config, Default::default())
        .await
        .unwrap();
    let mut counsellor = sam(&org, &relay).await;
    let mut client = paired_client(&org, &relay, &mut counsellor).await;
    counsellor.task.abort(); // the laptop lid closes: no END, the connection just goes
    let _ = counsellor.task.await;
    assert_eq!(client.next().await, ChatEvent::PeerAway { chat: None });
    assert_eq!(client.expect(is_ended).await, ended("peer_disconnected"));
    relay.shutdown().await;
}

#[tokio::test]
async fn a_stranger_without_credential_cannot_sign_in_as_counsellor() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let mut stream = connect_anonymous(&org, &relay).await;
    hello(&mut stream, Role::Counsellor).await;
    let err = stream.next().await.unwrap_err();
    assert!(
        matches!(err, ClientError::Closed(CloseCode::NotAuthorized)),
        "{err}"
    );
    assert_eq!(err.to_string(), "sign-in refused");

    // A credential from another organisation's CA fails the TLS handshake.
    let other = Org::new();
    let foreign = Identity::load(&other.counsellor("Eve")).unwrap();
    let result = try_connect(&relay, ca(&org), Some(foreign.relay_credential().unwrap())).await;
    match result {
        Err(_) => {}
        // TLS 1.3 client auth may fail only after the client thinks it is
        // connected; then the first read fails.
        Ok(mut s) => {
            let _ = s
                .send(&Frame::Hello {
                    version: 1,
                    role: Role::Counsellor,
                })
                .await;
            assert!(s.next().await.is_err());
        }
    }
    relay.shutdown().await;
}

async fn close_code_after(
    org: &Org,
    relay: &fluister::relay::RunningRelay,
    say_hello: bool,
    bytes: &[u8],
) -> u64 {
    let mut s = connect_anonymous(org, relay).await;
    if say_hello {
        hello(&mut s, Role::Client).await;
    }
    s.send_raw(bytes).await.unwrap();
    let reason = tokio::time::timeout(WAIT, s.connection().closed())
        .await
        .unwrap();
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
        other => panic!("expected an application close, got {other}"),
    }
}

#[tokio::test]
async fn bad_frames_close_only_their_own_connection() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let mut counsellor = sam(&org, &relay).await;
    let mut client = paired_client(&org, &relay, &mut counsellor).await;

    let chat = ChatNumber::new(1).unwrap();
    let forward = Frame::Forward {
        chat,
        blob: Blob::new([0; BLOB_LEN]),
    }
    .encode();
    let cases: Vec<(&str, bool, Vec<u8>, CloseCode)> = vec![
        (
            "unknown type",
            true,
            vec![0x7f, 0, 0],
            CloseCode::MalformedFrame,
        ),
        (
            "oversized",
            true,
            vec![kind::FORWARD, 0xff, 0xff],
            CloseCode::FrameTooLarge,
        ),
        (
            "wrong length",
            true,
            vec![kind::END, 0, 9],
            CloseCode::MalformedFrame,
        ),
        (
            "garbage",
            false,
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            CloseCode::MalformedFrame,
        ),
        (
            "forward before hello",
            false,
            forward.clone(),
            CloseCode::UnexpectedFrame,
        ),
        (
            "forward while queued",
            true,
            forward,
            CloseCode::UnexpectedFrame,
        ),
        (
            "second hello",
            true,
            Frame::Hello {
                version: 1,
                role: Role::Client,
            }
            .encode(),
            CloseCode::UnexpectedFrame,
        ),
        (
            "relay-only frame",
            true,
            Frame::Queued {
                position: 1,
                estimated_wait_secs: None,
            }
            .encode(),
            CloseCode::UnexpectedFrame,
        ),
        (
            "future version",
            false,
            Frame::Hello {
                version: 9,
                role: Role::Client,
            }
            .encode(),
            CloseCode::UnsupportedVersion,
        ),
    ];
    for (name, hello, bytes, code) in cases {
        assert_eq!(
            close_code_after(&org, &relay, hello, &bytes).await,
            code.code() as u64,
            "{name}"
        );
    }

    // The chat running beside them is not disturbed.
    client.say("nog steeds hier").await;
    assert_eq!(
        strip_chat(counsellor.next().await),
        message("nog steeds hier")
    );
    counsellor.say("ik ook").await;
    assert_eq!(client.next().await, message("ik ook"));
    relay.shutdown().await;
}

#[tokio::test]
async fn the_relay_never_holds_plaintext_and_every_forward_is_one_size() {
    let org = Org::new();
    let tap = Tap::default();
    let relay = start_relay(&org, &tap).await;
    let mut counsellor = sam(&org, &relay).await;
    let mut client = paired_client(&org, &relay, &mut counsellor).await;

    // From one byte to 5,000 (five chunks): every FORWARD is the same size.
    let long = "ik schrijf alles op wat er gebeurd is. ".repeat(200)[..5000].to_owned();
    let secrets = [
        "mijn stiefvader slaat me",
        "hij heeft mijn fotos",
        "x",
        long.as_str(),
    ];
    for s in secrets {
        client.say(s).await;
        assert_eq!(strip_chat(counsellor.next().await), message(s));
        counsellor.say(&s.to_uppercase()).await;
        assert_eq!(client.next().await, message(&s.to_uppercase()));
    }
    client.hang_up();
    client.expect(is_ended).await;
    relay.shutdown().await;

    let all = tap.all_bytes();
    for s in [
        "mijn stiefvader slaat me",
        "hij heeft mijn fotos",
        "MIJN STIEFVADER",
        "stiefvader",
        "fotos",
    ] {
        assert!(
            !all.windows(s.len()).any(|w| w == s.as_bytes()),
            "plaintext {s:?} seen by the relay"
        );
    }
    assert!(
        !all.windows(3).any(|w| w == b"Sam"),
        "the certificate travels encrypted"
    );

    // Every FORWARD frame the relay sent on had the same size, whatever the
    // message length (1 to 5,000 bytes) and whether handshake or text. (What
    // it reads arrives in stream chunks that may split frames; what it writes
    // is whole frames.)
    let mut sizes = std::collections::BTreeSet::new();
    let mut forwards = 0;
    for (_, buf) in tap
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(d, _)| *d == Direction::Out)
    {
        let mut frames = Vec::new();
        let mut decoder = fluister::core::frame::FrameDecoder::default();
        decoder.push(buf, &mut frames).unwrap();
        for f in frames {
            if let Frame::Forward { .. } = f {
                forwards += 1;
                sizes.insert(f.encoded_len());
            }
        }
    }
    // Two handshake messages, then each message both ways (5,000 bytes are
    // five chunks), plus acknowledgements, which look the same.
    assert!(
        forwards >= 2 + 2 * (secrets.len() + 4),
        "{forwards} forwards"
    );
    assert_eq!(sizes.into_iter().collect::<Vec<_>>(), vec![1039]);
}

#[tokio::test]
async fn a_client_with_the_wrong_org_key_aborts_before_sending_content() {
    let org = Org::new();
    let tap = Tap::default();
    let relay = start_relay(&org, &tap).await;
    let mut counsellor = sam(&org, &relay).await;
    let other = Org::new();
    let mut client = client_party(connect_anonymous(&org, &relay).await, other.public);
    client.say("dit mag niet aankomen").await;
    client.hang_up();
    let result = client.finish().await;
    assert!(
        matches!(
            &result,
            Err(ClientError::Security(E2eError::HandshakeFailed))
        ),
        "{result:?}"
    );
    // The counsellor sees the chat open and end, and not one message.
    assert!(is_connected(&counsellor.next().await));
    assert_eq!(
        counsellor.next().await,
        ChatEvent::Paired {
            counsellor: None,
            chat: Some(1),
            topic: None,
            language: None,
        }
    );
    assert_eq!(
        strip_chat(counsellor.next().await),
        ended("security_failure")
    );
    let forwards_from_client = tap
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(d, b)| *d == fluister::relay::Direction::In && b.first() == Some(&kind::FORWARD))
        .count();
    assert_eq!(
        forwards_from_client, 2,
        "handshake 1 from the client and handshake 2 from the counsellor only"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_relay_shutdown_tells_both_sides() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let mut counsellor = sam(&org, &relay).await;
    let mut client = paired_client(&org, &relay, &mut counsellor).await;
    relay.shutdown().await;
    assert_eq!(client.next().await, ended("relay_shutdown"));
    assert_eq!(
        counsellor.expect(is_ended).await,
        ended_in(1, "relay_shutdown")
    );
    client.finish().await.unwrap();
}
