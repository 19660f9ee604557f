//! Counsellor certificates from handshake message 2: any bytes must parse
//! or be refused without panicking, and nothing but a real signature by the
//! pinned organisation key may verify.
#![no_main]

use ed25519_dalek::SigningKey;
use fluister::crypto::cert::{self, OrgPublicKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let org = OrgPublicKey::from_signing_key(&SigningKey::from_bytes(&[1; 32]));
    let _ = cert::parse(data);
    if let Ok((body, _)) = cert::parse(data) {
        // The fuzzer cannot forge the organisation's signature.
        assert!(cert::verify(data, &org, body.not_before, &body.static_key).is_err());
    }
});
