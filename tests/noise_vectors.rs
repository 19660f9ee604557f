//! The shared Noise test vectors for `Noise_NX_25519_ChaChaPoly_SHA256`
//! (../shared/vectors), byte for byte: both handshake messages, the handshake
//! hash where given, and the transport messages with nonces 0, 1, ...

use fluister::crypto::noise::{NxInitiator, NxResponder, PROTOCOL_NAME};
use serde::Deserialize;
use x25519_dalek::StaticSecret;

#[derive(Deserialize)]
struct File {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    protocol_name: String,
    init_prologue: String,
    init_ephemeral: String,
    resp_prologue: String,
    resp_static: String,
    resp_ephemeral: String,
    handshake_hash: Option<String>,
    messages: Vec<Message>,
}

#[derive(Deserialize)]
struct Message {
    payload: String,
    ciphertext: String,
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("vector hex")
}

fn secret(s: &str) -> StaticSecret {
    StaticSecret::from(<[u8; 32]>::try_from(unhex(s)).expect("32-byte key"))
}

fn vectors_path() -> std::path::PathBuf {
    std::env::var_os("FLUISTER_SHARED_VECTORS")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../shared/vectors/noise-nx-25519-chachapoly-sha256.json")
        })
}

#[test]
fn shared_noise_vectors_pass_byte_for_byte() {
    let path = vectors_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read Noise vectors at {}: {e}", path.display()));
    let file: File = serde_json::from_str(&text).expect("vector JSON");
    assert!(!file.vectors.is_empty());
    for (i, v) in file.vectors.iter().enumerate() {
        assert_eq!(v.protocol_name.as_bytes(), PROTOCOL_NAME);
        let m = &v.messages;
        let (waiting, msg1) = NxInitiator::start(
            &unhex(&v.init_prologue),
            secret(&v.init_ephemeral),
            &unhex(&m[0].payload),
        );
        assert_eq!(hex::encode(&msg1), m[0].ciphertext, "vector {i} message 1");

        let (ready, payload1) = NxResponder::accept(&unhex(&v.resp_prologue), &msg1).unwrap();
        assert_eq!(hex::encode(&payload1), m[0].payload);
        let (msg2, resp) = ready
            .reply(
                &secret(&v.resp_static),
                secret(&v.resp_ephemeral),
                &unhex(&m[1].payload),
            )
            .unwrap();
        assert_eq!(hex::encode(&msg2), m[1].ciphertext, "vector {i} message 2");

        let done = waiting.finish(&msg2).unwrap();
        assert_eq!(hex::encode(&*done.payload), m[1].payload);
        let resp_static_pub = x25519_dalek::PublicKey::from(&secret(&v.resp_static));
        assert_eq!(&done.remote_static, resp_static_pub.as_bytes());
        let init = done.transport;
        if let Some(h) = &v.handshake_hash {
            assert_eq!(
                &hex::encode(init.handshake_hash()),
                h,
                "vector {i} handshake hash"
            );
            assert_eq!(&hex::encode(resp.handshake_hash()), h);
        }

        // Transport: messages alternate initiator, responder; each direction
        // counts its own nonces from zero.
        for (j, msg) in m.iter().enumerate().skip(2) {
            let n = ((j - 2) / 2) as u64;
            let (sender, receiver) = if j % 2 == 0 {
                (&init, &resp)
            } else {
                (&resp, &init)
            };
            let ct = sender.seal(n, &unhex(&msg.payload)).unwrap();
            assert_eq!(hex::encode(&ct), msg.ciphertext, "vector {i} message {j}");
            assert_eq!(hex::encode(&*receiver.open(n, &ct).unwrap()), msg.payload);
            assert!(
                receiver.open(n + 1, &ct).is_err(),
                "a wrong nonce must fail"
            );
        }
    }
}
