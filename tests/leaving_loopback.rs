//! Leaving on purpose, over real QUIC on loopback (PROTOCOL.md §3.3, §7.1):
//! a young person who closes a browser tab right after "end chat", one who
//! uses the quick exit, and one who leaves the queue. The counsellor sees
//! the end, with its reason, at once: never PEER_AWAY and the resume
//! window. And a resume with a full send buffer of long messages goes
//! through without anybody being cut off.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fluister::client::chat::ChatEvent;
use fluister::core::EndpointClose;
use fluister::core::frame::{EndReason, Frame, Role};

/// Well below the idle timeout (20 s) and the resume window (120 s): what a
/// counsellor waits for an END that is "at once".
const AT_ONCE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_and_a_close_in_the_same_instant_reach_the_counsellor_fifty_times_over() {
    let org = Org::new();
    // Fifty young people in a few seconds: more than the admissions burst.
    let relay = start_relay_for_many(&org).await;
    let mut sam = sam(&org, &relay).await;
    for i in 0..50u32 {
        // The browser tab closed right after "end chat", or the check of
        // the counsellor failing: END, and the close, without waiting.
        let (reason, close, told) = if i % 2 == 0 {
            (EndReason::UserEnded, EndpointClose::Left, "peer_ended")
        } else {
            (
                EndReason::SecurityFailure,
                EndpointClose::SecurityFailure,
                "security_failure",
            )
        };
        let (mut young, chat) = raw_paired_client(&org, &relay).await;
        sam.expect(is_paired).await;
        young.send(&Frame::End { chat, reason }).await.unwrap();
        young.connection().close(close.code().into(), b"");
        let started = Instant::now();
        let seen = tokio::time::timeout(AT_ONCE, sam.next())
            .await
            .unwrap_or_else(|_| panic!("chat {}: no end in time", i + 1));
        assert_eq!(seen, ended_in(i + 1, told), "chat {}", i + 1);
        assert!(started.elapsed() < AT_ONCE);
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn a_quick_exit_ends_the_chat_for_the_counsellor_at_once() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let mut sam = sam(&org, &relay).await;
    let (mut young, exit) =
        client_party_with_exit(connect_anonymous(&org, &relay).await, org.public);
    young.expect(is_paired).await;
    sam.expect(is_paired).await;
    young.say("hij komt eraan").await;
    assert_eq!(sam.next().await, message_in(1, "hij komt eraan"));
    young
        .expect(|e| matches!(e, ChatEvent::Delivered { id: 1, .. }))
        .await;
    exit.send(true).unwrap();
    assert_eq!(young.next().await, ended("you_ended"));
    young.finish().await.unwrap();
    let seen = tokio::time::timeout(AT_ONCE, sam.next()).await.unwrap();
    assert_eq!(seen, ended_in(1, "peer_ended"), "not peer_away");
    relay.shutdown().await;
}

#[tokio::test]
async fn a_young_person_who_leaves_the_queue_is_gone_at_once_with_the_ticket() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let identity = fluister::org::Identity::load(&org.counsellor("Sam")).unwrap();
    let settings = fluister::client::chat::CounsellorSettings {
        available: false,
        ..Default::default()
    };
    let mut sam = counsellor_party_with(
        connect_counsellor(&org, &relay, &identity).await,
        identity,
        settings,
    );
    let counts = |e: &ChatEvent| match e {
        ChatEvent::QueueStats { waiting } => Some(waiting.iter().map(|w| w.count).sum::<u16>()),
        _ => None,
    };
    // A raw client, so that the test holds its ticket.
    let (leaver, ticket) = raw_joined_client(&org, &relay).await;
    sam.expect(|e| counts(e) == Some(1)).await;
    // The Rust client leaves at the end of its input (END of stream).
    let mut young = client_party(connect_anonymous(&org, &relay).await, org.public);
    young
        .expect(|e| matches!(e, ChatEvent::Queued { position: 2, .. }))
        .await;
    sam.expect(|e| counts(e) == Some(2)).await;
    young.hang_up();
    assert_eq!(young.next().await, ended("left_queue"));
    young.finish().await.unwrap();
    sam.expect(|e| counts(e) == Some(1)).await;
    // The raw one closes the tab: NO_ERROR.
    leaver
        .connection()
        .close(EndpointClose::Left.code().into(), b"");
    let started = Instant::now();
    sam.expect(|e| counts(e) == Some(0)).await;
    assert!(started.elapsed() < AT_ONCE);
    // Its ticket no longer works.
    let mut back = connect_anonymous(&org, &relay).await;
    back.send(&Frame::Resume { capability: ticket })
        .await
        .unwrap();
    assert_eq!(back.next().await.unwrap(), Some(Frame::ResumeFailed));
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_with_a_full_send_buffer_of_long_messages_loses_nothing() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let mut sam = sam(&org, &relay).await;
    let (mut young, connection) = resumable_client(&org, &relay).await;
    young.expect(is_paired).await;
    sam.expect(is_paired).await;
    // The connection dies; then eight messages of 16 000 bytes are typed:
    // 128 frames, the most a sender keeps unacknowledged. All of them go
    // out again after the resume, at once.
    connection.close(EndpointClose::Reconnecting.code().into(), b"");
    let texts: Vec<String> = (0..8)
        .map(|i| format!("{i}{}", "bedreiging ".repeat(1600))[..16_000].to_owned())
        .collect();
    for t in &texts {
        young.say(t).await;
    }
    let got = messages(&mut sam, 8).await;
    assert_eq!(got, texts);
    // Each is confirmed; none is reported lost; nobody was cut off.
    let mut delivered = 0;
    while delivered < 8 {
        match young.next_any().await {
            ChatEvent::Delivered { .. } => delivered += 1,
            ChatEvent::NotDelivered { id, .. } => panic!("message {id} not delivered"),
            ChatEvent::Error { message, .. } => panic!("{message}"),
            _ => {}
        }
    }
    sam.say("alles binnen").await;
    assert_eq!(young.next().await, message("alles binnen"));
    relay.shutdown().await;
}

#[tokio::test]
async fn hello_as_a_client_with_a_counsellor_credential_is_refused() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let identity = fluister::org::Identity::load(&org.counsellor("Sam")).unwrap();
    let mut stream = connect_counsellor(&org, &relay, &identity).await;
    hello(&mut stream, Role::Client).await;
    let err = stream.next().await.unwrap_err();
    assert!(
        matches!(
            err,
            fluister::client::ClientError::Closed(fluister::core::CloseCode::NotAuthorized)
        ),
        "{err}"
    );
    relay.shutdown().await;
}
