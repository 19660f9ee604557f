//! The web bindings for the loopback tests: the library's young-person
//! connection over WebSocket and WebTransport (`fluister::client::web`),
//! and a chat on it with the Rust counsellor.

pub use fluister::client::web::*;

use fluister::client::chat::ChatEvent;
use fluister::core::frame::{Frame, PROTOCOL_VERSION, Role};
use fluister::core::ratelimit::pow_solve;
use fluister::crypto::content::Content;
use fluister::crypto::e2e::{ClientHandshake, Received};
use x25519_dalek::StaticSecret;

/// HELLO, JOIN with the proof of work, the handshake with the counsellor:
/// a young person's chat on `link`, verified. Returns what sends and opens.
pub async fn join_and_pair(
    link: &mut WebLink,
    org: &super::Org,
) -> (
    fluister::core::frame::ChatNumber,
    fluister::crypto::e2e::Session,
) {
    link.send(&Frame::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Client,
    })
    .await;
    let Ok(Frame::Welcome { pow, .. }) = link.next().await else {
        panic!("expected WELCOME")
    };
    link.send(&Frame::Join {
        topic: None,
        language: None,
        pow_solution: pow_solve(&pow.nonce, pow.difficulty),
    })
    .await;
    let (chat, pairing_id) = loop {
        match link.next().await.unwrap() {
            Frame::Paired {
                chat, pairing_id, ..
            } => break (chat, pairing_id),
            _ => continue,
        }
    };
    let e = StaticSecret::random_from_rng(rand_core::OsRng);
    let (handshake, hs1) = ClientHandshake::start_with_ephemeral(&org.public, &pairing_id, e);
    link.send(&Frame::Forward { chat, blob: hs1 }).await;
    let Ok(Frame::Forward { blob: hs2, .. }) = link.next().await else {
        panic!("expected the counsellor's handshake")
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (session, certificate) = handshake.finish(&hs2, now).unwrap();
    assert_eq!(certificate.pseudonym(), "Sam");
    (chat, session)
}

/// One line each way between `link` and Sam, end to end.
pub async fn both_ways(
    link: &mut WebLink,
    chat: fluister::core::frame::ChatNumber,
    session: &mut fluister::crypto::e2e::Session,
    sam: &mut super::Party,
    word: &str,
) {
    let blob = session
        .seal(&Content::Text {
            last: true,
            text: format!("{word} from the web"),
        })
        .unwrap();
    link.send(&Frame::Forward { chat, blob }).await;
    let n = match sam.expect(|e| matches!(e, ChatEvent::Message { .. })).await {
        ChatEvent::Message {
            text,
            chat: Some(n),
        } => {
            assert_eq!(text, format!("{word} from the web"));
            n
        }
        other => panic!("{other:?}"),
    };
    sam.say(&format!("@{n} {word} from Sam")).await;
    loop {
        let Ok(Frame::Forward { blob, .. }) = link.next().await else {
            panic!("expected a FORWARD")
        };
        match session.open(&blob).unwrap() {
            Received::Content(Content::Text { text, .. }) => {
                assert_eq!(text, format!("{word} from Sam"));
                return;
            }
            _ => continue,
        }
    }
}
