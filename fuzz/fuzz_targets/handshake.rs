//! Noise handshake and transport messages from the relay: arbitrary blobs as
//! message 1 (counsellor side), message 2 (client side) and transport
//! messages must be refused cleanly, never panic, never authenticate.
#![no_main]

use ed25519_dalek::SigningKey;
use fluister::crypto::content::Content;
use fluister::core::frame::{BLOB_LEN, Blob, PairingId};
use fluister::crypto::cert::{CertificateBody, OrgPublicKey};
use fluister::crypto::e2e::{self, ClientHandshake, CounsellorKeys};
use libfuzzer_sys::fuzz_target;
use x25519_dalek::{PublicKey, StaticSecret};

fn blob(data: &[u8]) -> Blob {
    let mut b = [0u8; BLOB_LEN];
    let n = data.len().min(BLOB_LEN);
    b[..n].copy_from_slice(&data[..n]);
    Blob::new(b)
}

fuzz_target!(|data: &[u8]| {
    let org_key = SigningKey::from_bytes(&[1; 32]);
    let org = OrgPublicKey::from_signing_key(&org_key);
    let static_secret = StaticSecret::from([2; 32]);
    let certificate = CertificateBody {
        org_key: *org.as_bytes(),
        static_key: PublicKey::from(&static_secret).to_bytes(),
        not_before: 0,
        not_after: u64::MAX / 2,
        pseudonym: fluister::core::frame::Label::new("Sam").unwrap(),
    }
    .sign(&org_key)
    .unwrap();
    let keys = CounsellorKeys {
        static_secret,
        certificate,
        org,
    };
    let pairing = PairingId([3; 16]);
    let fuzzed = blob(data);

    // As message 1 at the counsellor: any outcome but a panic.
    let _ = e2e::counsellor_respond_with_ephemeral(
        &keys,
        &pairing,
        &fuzzed,
        StaticSecret::from([4; 32]),
    );

    // As message 2 at the client: never accepted.
    let (hs, _) =
        ClientHandshake::start_with_ephemeral(&org, &pairing, StaticSecret::from([5; 32]));
    assert!(hs.finish(&fuzzed, 1_000).is_err());

    // As a transport message inside a real session: never authenticates.
    let (hs, m1) =
        ClientHandshake::start_with_ephemeral(&org, &pairing, StaticSecret::from([5; 32]));
    let (mut counsellor, m2) =
        e2e::counsellor_respond_with_ephemeral(&keys, &pairing, &m1, StaticSecret::from([4; 32]))
            .unwrap();
    let (mut client, _) = hs.finish(&m2, 1_000).unwrap();
    assert!(counsellor.open(&fuzzed).is_err() || fuzzed.as_bytes()[..8] != [0; 8]);
    let genuine = client
        .seal(&Content::Text {
            last: true,
            text: "x".into(),
        })
        .unwrap();
    assert!(counsellor.open(&genuine).is_ok());
});
