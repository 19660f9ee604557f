//! The helpline workflow over real QUIC on 127.0.0.1: topic and language
//! routing between two counsellors, a transfer mid-chat with a fresh
//! handshake, and proof that the first counsellor's keys stop working.

mod common;

use common::*;
use fluister::client::RelayStream;
use fluister::client::chat::{ChatEvent, ClientRequest, CounsellorSettings};
use fluister::core::frame::{ChatNumber, EndReason, Frame, Label, Role, TransferTarget};
use fluister::crypto::content::Content;
use fluister::crypto::e2e::{self, E2eError, Received, Session};
use fluister::crypto::noise::NoiseError;
use fluister::org::Identity;
use fluister::relay::Direction;
use rand_core::{OsRng, RngCore};
use x25519_dalek::StaticSecret;

fn request(topic: &str, language: &str) -> ClientRequest {
    ClientRequest {
        topic: Some(topic.into()),
        language: Some(language.into()),
        ..ClientRequest::default()
    }
}

fn settings(capacity: u8, topics: &[u16], languages: &[&str]) -> CounsellorSettings {
    CounsellorSettings {
        reconnect: None,
        available: true,
        capacity,
        topics: Some(topics.to_vec()),
        languages: Some(languages.iter().map(|l| l.to_string()).collect()),
        quick_exit: None,
    }
}

async fn signed_in(
    org: &Org,
    relay: &fluister::relay::RunningRelay,
    name: &str,
    s: CounsellorSettings,
) -> Party {
    let identity = Identity::load(&org.counsellor(name)).unwrap();
    let mut party =
        counsellor_party_with(connect_counsellor(org, relay, &identity).await, identity, s);
    assert!(is_connected(&party.next().await));
    party
}

#[tokio::test]
async fn five_clients_land_with_the_counsellor_for_their_topic_and_language() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    // Noor: sexual and criminal exploitation, Dutch. Alex: violence and home, Dutch and English.
    let mut noor = signed_in(&org, &relay, "Noor", settings(3, &[1, 2], &["nl"])).await;
    let mut alex = signed_in(&org, &relay, "Alex", settings(3, &[4, 5], &["nl", "en"])).await;

    let cases = [
        (request("1", "nl"), "Noor"),
        (request("Home and family", "en"), "Alex"),
        (
            request("criminele uitbuiting (bijv. gedwongen drugs dealen)", "nl"),
            "Noor",
        ),
        (request("4", "nl"), "Alex"),
        (request("Sexual exploitation", "nl"), "Noor"),
    ];
    let mut clients = Vec::new();
    for (i, (req, expected)) in cases.into_iter().enumerate() {
        let mut client = client_party_for(connect_anonymous(&org, &relay).await, org.public, req);
        let paired = client.expect(is_paired).await;
        assert_eq!(paired, paired_with(expected), "client {}", i + 1);
        let text = format!("bericht van client {}", i + 1);
        client.say(&text).await;
        let who = if expected == "Noor" {
            &mut noor
        } else {
            &mut alex
        };
        who.expect(is_paired).await;
        match who.next().await {
            ChatEvent::Message { text: got, .. } => assert_eq!(got, text),
            other => panic!("{expected} got {other:?}"),
        }
        clients.push(client);
    }
    relay.shutdown().await;
}

/// A counsellor driven frame by frame, so the test holds its session keys.
struct ManualCounsellor {
    stream: RelayStream,
    keys: e2e::CounsellorKeys,
}

impl ManualCounsellor {
    async fn sign_in(org: &Org, relay: &fluister::relay::RunningRelay, name: &str) -> Self {
        let (stream, identity) = raw_counsellor(org, relay, name).await;
        ManualCounsellor {
            stream,
            keys: identity.keys,
        }
    }

    /// The next frame that is not relay bookkeeping.
    async fn next(&mut self) -> Frame {
        next_substantive(&mut self.stream).await
    }

    /// Answers the next handshake; returns the chat, the session, and a
    /// second, identical session kept unused for the audit.
    async fn accept_chat(&mut self) -> (ChatNumber, Session, Session) {
        let Frame::Paired {
            chat, pairing_id, ..
        } = self.next().await
        else {
            panic!("expected PAIRED")
        };
        let Frame::Forward { blob, .. } = self.next().await else {
            panic!("expected handshake 1")
        };
        let mut e = [0u8; 32];
        OsRng.fill_bytes(&mut e);
        let (session, reply) = e2e::counsellor_respond_with_ephemeral(
            &self.keys,
            &pairing_id,
            &blob,
            StaticSecret::from(e),
        )
        .unwrap();
        let (shadow, same) = e2e::counsellor_respond_with_ephemeral(
            &self.keys,
            &pairing_id,
            &blob,
            StaticSecret::from(e),
        )
        .unwrap();
        assert_eq!(reply, same);
        self.stream
            .send(&Frame::Forward { chat, blob: reply })
            .await
            .unwrap();
        (chat, session, shadow)
    }
}

fn text(t: &str) -> Content {
    Content::Text {
        last: true,
        text: t.into(),
    }
}

#[tokio::test]
async fn a_transfer_mid_chat_moves_the_chat_and_locks_the_first_counsellor_out() {
    let org = Org::new();
    let tap = Tap::default();
    let relay = start_relay(&org, &tap).await;
    let mut sam = ManualCounsellor::sign_in(&org, &relay, "Sam").await;
    let mut client = client_party(connect_anonymous(&org, &relay).await, org.public);
    let (chat, mut sam_session, mut sam_shadow) = sam.accept_chat().await;
    assert_eq!(client.expect(is_paired).await, paired_with("Sam"));

    // A normal exchange with Sam.
    client.say("ik wil met iemand anders praten").await;
    let Frame::Forward { blob, .. } = sam.next().await else {
        panic!()
    };
    assert_eq!(
        sam_session.open(&blob).unwrap(),
        Received::Content(text("ik wil met iemand anders praten"))
    );
    let reply = sam_session
        .seal(&text("Ik verbind je door met Noor."))
        .unwrap();
    sam.stream
        .send(&Frame::Forward { chat, blob: reply })
        .await
        .unwrap();
    assert_eq!(client.next().await, message("Ik verbind je door met Noor."));

    // Noor signs in; Sam hands the chat over.
    let mut noor = signed_in(&org, &relay, "Noor", settings(2, &[], &[])).await;
    let transfer_at = tap.0.lock().unwrap().len();
    sam.stream
        .send(&Frame::Transfer {
            chat,
            target: TransferTarget::Colleague(Label::new("Noor").unwrap()),
        })
        .await
        .unwrap();
    assert_eq!(
        sam.next().await,
        Frame::End {
            chat,
            reason: EndReason::Transferred
        }
    );

    // Sam (driven by hand here) never acknowledged the client's message, so
    // the client is told it was not confirmed before the handover.
    assert_eq!(
        client.next().await,
        ChatEvent::NotDelivered { id: 1, chat: None }
    );
    // The client did a fresh handshake and verified Noor's certificate.
    assert_eq!(
        client.next().await,
        ChatEvent::Transferred {
            counsellor: "Noor".into()
        }
    );
    noor.expect(is_paired).await;
    client.say("hallo Noor").await;
    assert_eq!(strip_chat(noor.next().await), message("hallo Noor"));
    noor.say("Hoi, ik ben Noor. Ik heb je.").await;
    assert_eq!(client.next().await, message("Hoi, ik ben Noor. Ik heb je."));

    // Sam can no longer send in that chat: the relay drops it.
    let late = sam_session.seal(&text("nog één ding")).unwrap();
    sam.stream
        .send(&Frame::Forward { chat, blob: late })
        .await
        .unwrap();
    noor.say("Ben je er nog?").await;
    assert_eq!(
        client.next().await,
        message("Ben je er nog?"),
        "Sam's late message never arrived"
    );

    // Nor read it: nothing after the transfer went to Sam, and Sam's keys
    // cannot open any blob of the new chat, even one the relay could hand him.
    client.hang_up();
    client.expect(is_ended).await;
    relay.shutdown().await;
    let after: Vec<_> = tap.0.lock().unwrap()[transfer_at..].to_vec();
    let mut new_chat_blobs = 0;
    let mut tried = 0;
    for (direction, bytes) in after {
        let mut frames = Vec::new();
        fluister::core::frame::FrameDecoder::default()
            .push(&bytes, &mut frames)
            .unwrap();
        for f in frames {
            if let (Direction::Out, Frame::Forward { blob, .. }) = (direction, f) {
                new_chat_blobs += 1;
                let seq = u64::from_be_bytes(blob.as_bytes()[..8].try_into().unwrap());
                if seq == 0 {
                    tried += 1;
                    assert_eq!(
                        sam_shadow.open(&blob),
                        Err(E2eError::Noise(NoiseError::Decrypt))
                    );
                }
            }
        }
    }
    assert!(
        new_chat_blobs >= 4,
        "handshake and messages of the new chat were seen"
    );
    assert!(
        tried >= 2,
        "the first message each way of the new chat was tried with Sam's keys"
    );
}

#[tokio::test]
async fn a_transfer_to_an_away_colleague_is_refused_and_the_chat_stays() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let mut sam = signed_in(&org, &relay, "Sam", settings(1, &[], &[])).await;
    let mut noor = signed_in(&org, &relay, "Noor", settings(1, &[], &[])).await;
    noor.say("/away").await;
    // Wait until the relay has Noor's new status.
    noor.expect(|e| {
        matches!(
            e,
            ChatEvent::Status {
                available: false,
                ..
            }
        )
    })
    .await;
    let mut client = client_party(connect_anonymous(&org, &relay).await, org.public);
    client.expect(is_paired).await;
    sam.expect(is_paired).await;
    sam.say("/transfer Noor").await;
    assert_eq!(
        sam.next().await,
        ChatEvent::TransferRefused {
            chat: 1,
            reason: "that counsellor is away".into(),
            code: fluister::core::frame::Refusal::ColleagueAway,
        }
    );
    sam.say("Ik blijf bij je.").await;
    assert_eq!(client.next().await, message("Ik blijf bij je."));
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counsellor_signing_in_among_many_colleagues_gets_the_whole_list() {
    // A send queue of 8 writes per counsellor (capacity 1), and a dozen
    // colleagues signed in: the list a newcomer gets at sign-in has more
    // frames than that queue has room for, and must not count as a slow
    // reader.
    let org = Org::new();
    let mut config = org.config();
    config.transport.max_buffered_frames = 8;
    config.limits.max_capacity = 1;
    let relay = fluister::relay::start(&config, Default::default())
        .await
        .unwrap();
    let mut signed_in = Vec::new();
    for i in 0..13 {
        let identity = Identity::load(&org.counsellor(&format!("Collega {i}"))).unwrap();
        let mut stream = connect_counsellor(&org, &relay, &identity).await;
        hello(&mut stream, Role::Counsellor).await;
        let mut colleagues = 0;
        // Everything up to the last colleague in the list arrives, and the
        // connection stays open.
        while colleagues < i {
            match tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
                Ok(Some(Frame::Colleague { .. })) => colleagues += 1,
                Ok(Some(_)) => {}
                other => panic!("counsellor {i} after {colleagues} colleagues: {other:?}"),
            }
        }
        signed_in.push(stream);
    }
    relay.shutdown().await;
}
