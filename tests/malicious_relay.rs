//! A malicious relay: it pairs a client with itself and answers the Noise
//! handshake with its own responder key, carrying a certificate it forged
//! or one it copied from a real counsellor. The client must abort and send
//! zero bytes of content: after handshake message 1, nothing but END.

mod common;

use common::*;
use ed25519_dalek::SigningKey;
use fluister::client::ClientError;
use fluister::core::frame::{
    ChatNumber, EndReason, Frame, FrameDecoder, PROTOCOL_VERSION, PairingId, Role,
};
use fluister::crypto::cert::{CertError, CertificateBody, OrgPublicKey};
use fluister::crypto::e2e::{self, CounsellorKeys, E2eError};
use fluister::org::Identity;
use fluister::tls;
use rand_core::OsRng;
use x25519_dalek::{PublicKey, StaticSecret};

/// Runs a one-connection fake relay; returns every frame the client sent.
async fn evil_relay(
    org: &Org,
    keys: CounsellorKeys,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<Frame>>) {
    let (chain, key) = org.relay_tls();
    let transport = tls::transport_config(tls::TransportSizes::default());
    let files = tls::ServerFiles {
        chain_pem: String::new(),
        chain,
        key,
        counsellor_ca: None,
        crls: Vec::new(),
        revoked: Vec::new(),
    };
    let server = tls::server_config(&files, transport).unwrap().quic;
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let conn = endpoint.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let mut decoder = FrameDecoder::default();
        let mut seen = Vec::new();
        let chat = ChatNumber::new(1).unwrap();
        let pairing_id = PairingId([42; 16]);
        let mut answered = false;
        while let Ok(Some(chunk)) = recv.read_chunk(4096, true).await {
            let mut frames = Vec::new();
            decoder.push(&chunk.bytes, &mut frames).unwrap();
            for frame in frames {
                match &frame {
                    Frame::Hello { .. } => {
                        let welcome = Frame::Welcome {
                            version: PROTOCOL_VERSION,
                            role: Role::Client,
                            topics: 0,
                            languages: vec![],
                            pow: fluister::core::frame::PowChallenge::NONE,
                        };
                        send.write_all(&welcome.encode()).await.unwrap();
                    }
                    Frame::Join { .. } => {
                        let resume = fluister::core::frame::ResumeCapability([9; 32]);
                        let paired = Frame::Paired {
                            chat,
                            pairing_id,
                            resume,
                            topic: None,
                            language: None,
                        };
                        send.write_all(&paired.encode()).await.unwrap();
                    }
                    Frame::Forward { blob, .. } if !answered => {
                        answered = true;
                        let (_, reply) =
                            e2e::counsellor_respond(&keys, &pairing_id, blob, &mut OsRng).unwrap();
                        send.write_all(&Frame::Forward { chat, blob: reply }.encode())
                            .await
                            .unwrap();
                    }
                    _ => seen.push(frame.clone()),
                }
            }
        }
        seen
    });
    (addr, task)
}

async fn client_against(org: &Org, keys: CounsellorKeys) -> (Result<(), ClientError>, Vec<Frame>) {
    let (addr, evil) = evil_relay(org, keys).await;
    let stream = fluister::client::connect(fluister::client::ConnectOptions {
        relay: addr.to_string(),
        ca: Some(ca(org)),
        credential: None,
        connect_timeout: WAIT,
        bind: None,
    })
    .await
    .unwrap();
    let client = client_party(stream, org.public);
    client.say("mijn adres is Kerkstraat 1").await;
    client.say("help me").await;
    let result = client.finish().await;
    let after_handshake = tokio::time::timeout(WAIT, evil).await.unwrap().unwrap();
    (result, after_handshake)
}

fn assert_aborted_silently(result: Result<(), ClientError>, frames: Vec<Frame>, want: E2eError) {
    match result {
        Err(ClientError::Security(e)) => assert_eq!(e, want),
        other => panic!("expected a security abort, got {other:?}"),
    }
    assert_eq!(
        frames,
        vec![Frame::End {
            chat: ChatNumber::new(1).unwrap(),
            reason: EndReason::SecurityFailure
        }],
        "after the handshake the client may send END and nothing else"
    );
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn a_relay_with_its_own_key_and_a_forged_certificate_is_refused() {
    let org = Org::new();
    let relay_static = StaticSecret::random_from_rng(OsRng);
    let relay_org = SigningKey::generate(&mut OsRng);
    let forged = |claimed_org: [u8; 32]| {
        CertificateBody {
            org_key: claimed_org,
            static_key: PublicKey::from(&relay_static).to_bytes(),
            not_before: now() - 60,
            not_after: now() + 3600,
            pseudonym: fluister::core::frame::Label::new("Sam").unwrap(),
        }
        .sign(&relay_org)
        .unwrap()
    };

    // Claiming the real organisation, signed with the relay's own key.
    let keys = CounsellorKeys {
        static_secret: relay_static.clone(),
        certificate: forged(*org.public.as_bytes()),
        org: org.public,
    };
    let (result, frames) = client_against(&org, keys).await;
    assert_aborted_silently(
        result,
        frames,
        E2eError::Certificate(CertError::BadSignature),
    );

    // Honestly naming its own organisation.
    let keys = CounsellorKeys {
        static_secret: relay_static.clone(),
        certificate: forged(
            OrgPublicKey::from_signing_key(&relay_org)
                .as_bytes()
                .to_owned(),
        ),
        org: org.public,
    };
    let (result, frames) = client_against(&org, keys).await;
    assert_aborted_silently(
        result,
        frames,
        E2eError::Certificate(CertError::WrongOrganisation),
    );
}

#[tokio::test]
async fn a_relay_replaying_a_real_certificate_with_its_own_key_is_refused() {
    let org = Org::new();
    let real = Identity::load(&org.counsellor("Sam")).unwrap();
    let keys = CounsellorKeys {
        static_secret: StaticSecret::random_from_rng(OsRng),
        certificate: real.keys.certificate.clone(),
        org: org.public,
    };
    let (result, frames) = client_against(&org, keys).await;
    assert_aborted_silently(
        result,
        frames,
        E2eError::Certificate(CertError::KeyMismatch),
    );
}

#[tokio::test]
async fn the_real_counsellor_key_passes_the_same_fake_relay() {
    // Control: the harness itself is sound. With the genuine identity the
    // same fake relay completes the handshake and the client sends content.
    let org = Org::new();
    let real = Identity::load(&org.counsellor("Sam")).unwrap();
    let (addr, evil) = evil_relay(&org, real.keys).await;
    let stream = fluister::client::connect(fluister::client::ConnectOptions {
        relay: addr.to_string(),
        ca: Some(ca(&org)),
        credential: None,
        connect_timeout: WAIT,
        bind: None,
    })
    .await
    .unwrap();
    let mut client = client_party(stream, org.public);
    client.say("hallo").await;
    client.expect(is_paired).await;
    client.hang_up();
    client.finish().await.unwrap();
    let frames = tokio::time::timeout(WAIT, evil).await.unwrap().unwrap();
    assert!(
        matches!(frames.first(), Some(Frame::Forward { .. })),
        "{frames:?}"
    );
}
