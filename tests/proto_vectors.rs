//! The annotated hex vectors in proto/vectors: every frame type, a
//! counsellor certificate, and a full handshake and transport transcript from
//! fixed keys. The implementation must reproduce each byte; a frontend in
//! another language checks itself against the same files.
//!
//! To rewrite the files after an intended protocol change:
//! `FLUISTER_WRITE_VECTORS=1 cargo test --test proto_vectors`.

use ed25519_dalek::{SigningKey, Verifier};
use fluister::core::coding::{BatchId, Coding, CodingField, CodingsOutcome, FormId, Month};
use fluister::core::frame::{
    BLOB_LEN, Blob, ChatNumber, EndReason, Frame, Label, Language, PairingId, PowChallenge,
    Presence, Refusal, ResumeCapability, Role, TopicId, TransferTarget, Unavailable,
};
use fluister::core::ratelimit::pow_solve;
use fluister::crypto::cert::{self, CertificateBody, OrgPublicKey};
use fluister::crypto::content::Content;
use fluister::crypto::e2e::{self, ClientHandshake, CounsellorKeys, Received};
use serde_json::{Value, json};
use x25519_dalek::{PublicKey, StaticSecret};

fn dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/vectors")
}

/// Compares with the stored file, or rewrites it when asked to.
fn check_file(name: &str, value: &Value) {
    let path = dir().join(name);
    let text = serde_json::to_string_pretty(value).unwrap() + "\n";
    if std::env::var_os("FLUISTER_WRITE_VECTORS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let stored =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(
        &stored, value,
        "{name} differs from what the implementation produces"
    );
}

/// A field of an annotated vector: name, bytes, meaning.
fn field(name: &str, bytes: &[u8], meaning: &str) -> Value {
    json!({ "field": name, "hex": hex::encode(bytes), "meaning": meaning })
}

/// Checks the annotations concatenate to the whole, then builds the entry.
fn annotated(name: &str, description: &str, bytes: &[u8], fields: Vec<Value>) -> Value {
    let joined: String = fields
        .iter()
        .map(|f| f["hex"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        joined,
        hex::encode(bytes),
        "annotation of {name} does not add up"
    );
    json!({ "name": name, "description": description, "length": bytes.len(), "hex": hex::encode(bytes), "fields": fields })
}

fn chat1() -> ChatNumber {
    ChatNumber::new(1).unwrap()
}

fn frame_vector(name: &str, description: &str, frame: &Frame, body_fields: Vec<Value>) -> Value {
    let bytes = frame.encode();
    // Every vector decodes back to its frame.
    assert_eq!(&Frame::decode(&bytes).unwrap(), frame);
    let mut fields = vec![
        field("type", &bytes[..1], "frame type"),
        field("length", &bytes[1..3], "body length, u16 big-endian"),
    ];
    fields.extend(body_fields);
    annotated(name, description, &bytes, fields)
}

/// The challenge in the WELCOME vector: difficulty 8, nonce 00 01 .. 0f.
fn pow_challenge() -> PowChallenge {
    let mut nonce = [0u8; 16];
    for (i, b) in nonce.iter_mut().enumerate() {
        *b = i as u8;
    }
    PowChallenge {
        difficulty: 8,
        nonce,
    }
}

fn lang(s: &str) -> Language {
    Language::parse(s).unwrap()
}

/// A frame annotated by cutting its body into named fields of given lengths.
fn by_layout(
    name: &str,
    description: &str,
    frame: &Frame,
    layout: &[(&str, usize, &str)],
) -> Value {
    let bytes = frame.encode();
    let mut at = 3;
    let body = layout
        .iter()
        .map(|(field_name, len, meaning)| {
            let f = field(field_name, &bytes[at..at + len], meaning);
            at += len;
            f
        })
        .collect();
    frame_vector(name, description, frame, body)
}

#[test]
fn frame_vectors() {
    let pairing_id =
        PairingId(*b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc\xdd\xee\xff");
    let mut blob = [0u8; BLOB_LEN];
    for (i, b) in blob.iter_mut().enumerate() {
        *b = i as u8;
    }
    let blob = Blob::new(blob);
    let vectors = vec![
        frame_vector(
            "HELLO (client)",
            "first frame of an anonymous client",
            &Frame::Hello {
                version: 1,
                role: Role::Client,
            },
            vec![
                field("version", &[1], "protocol version 1"),
                field("role", &[1], "0x01 client"),
            ],
        ),
        frame_vector(
            "HELLO (counsellor)",
            "first frame of a counsellor; needs a TLS client credential",
            &Frame::Hello {
                version: 1,
                role: Role::Counsellor,
            },
            vec![
                field("version", &[1], "protocol version 1"),
                field("role", &[2], "0x02 counsellor"),
            ],
        ),
        frame_vector(
            "WELCOME",
            "relay accepted the HELLO; to JOIN, solve the proof of work at difficulty 8",
            &Frame::Welcome {
                version: 1,
                role: Role::Client,
                topics: 6,
                languages: vec![lang("nl"), lang("en")],
                pow: pow_challenge(),
            },
            vec![
                field("version", &[1], "protocol version 1"),
                field("role", &[1], "role as accepted"),
                field("topics", &[6], "number of TOPIC frames that follow"),
                field("language_count", &[2], "languages offered"),
                field(
                    "languages",
                    b"nlen\0\0\0\0\0\0\0\0\0\0\0\0",
                    "8 slots of 2 ASCII letters; unused slots zero",
                ),
                field(
                    "pow_difficulty",
                    &[8],
                    "leading zero bits the proof of work needs",
                ),
                field(
                    "pow_challenge",
                    &pow_challenge().nonce,
                    "16 random bytes, fresh per connection",
                ),
            ],
        ),
        frame_vector(
            "QUEUED",
            "client is number 3 in line, about 4 minutes to wait",
            &Frame::Queued {
                position: 3,
                estimated_wait_secs: Some(240),
            },
            vec![
                field("position", &3u32.to_be_bytes(), "u32 big-endian, 1 = next"),
                field(
                    "estimated_wait_secs",
                    &240u32.to_be_bytes(),
                    "u32 big-endian; ffffffff = not known yet",
                ),
            ],
        ),
        frame_vector(
            "PAIRED (to the client)",
            "a chat begins; both sides get the same pairing id, each its own resume capability; the client learns nothing of what it chose",
            &Frame::Paired {
                chat: chat1(),
                pairing_id,
                resume: ResumeCapability([0xcc; 32]),
                topic: None,
                language: None,
            },
            vec![
                field(
                    "chat",
                    &1u32.to_be_bytes(),
                    "connection-local chat number, u32 big-endian, never 0",
                ),
                field(
                    "pairing_id",
                    &pairing_id.0,
                    "16 random bytes, bound into the Noise prologue",
                ),
                field(
                    "resume",
                    &[0xcc; 32],
                    "32 random bytes: this side's capability to resume the chat; secret, keep in memory only",
                ),
                field("topic", &[0, 0], "always 0 to the client"),
                field("language", &[0, 0], "always 00 00 to the client"),
            ],
        ),
        frame_vector(
            "PAIRED (to the counsellor)",
            "the counsellor's side of the same chat: its own chat number and capability, and the young person's choice",
            &Frame::Paired {
                chat: ChatNumber::new(4).unwrap(),
                pairing_id,
                resume: ResumeCapability([0xee; 32]),
                topic: TopicId::new(3),
                language: Some(lang("nl")),
            },
            vec![
                field(
                    "chat",
                    &4u32.to_be_bytes(),
                    "the counsellor's number for this chat",
                ),
                field("pairing_id", &pairing_id.0, "the same pairing id"),
                field("resume", &[0xee; 32], "the counsellor's own capability"),
                field(
                    "topic",
                    &3u16.to_be_bytes(),
                    "the topic the young person chose; 0 = none",
                ),
                field(
                    "language",
                    b"nl",
                    "the language the young person chose; 00 00 = no preference",
                ),
            ],
        ),
        by_layout(
            "COLLEAGUE",
            "relay to counsellor: colleague Noor is available and has room",
            &Frame::Colleague {
                name: Label::new("Noor").unwrap(),
                presence: Presence::Available,
            },
            &[
                (
                    "presence",
                    1,
                    "0x00 signed out, 0x01 away, 0x02 available but full, 0x03 available with room",
                ),
                ("name_len", 1, "4"),
                ("name", 64, "pseudonym, zero-padded to 64 bytes"),
            ],
        ),
        by_layout(
            "CHALLENGE",
            "relay to a waiting client in a crowded queue: prove work again to keep the place",
            &Frame::Challenge {
                pow: pow_challenge(),
            },
            &[
                ("pow_difficulty", 1, "leading zero bits, 0..=20"),
                (
                    "pow_challenge",
                    16,
                    "16 random bytes, fresh for this challenge",
                ),
            ],
        ),
        by_layout(
            "PROOF",
            "client to relay: the answer to the CHALLENGE vector",
            &Frame::Proof {
                solution: pow_solve(&pow_challenge().nonce, 8),
            },
            &[(
                "solution",
                8,
                "solves the challenge exactly as a JOIN's pow_solution does",
            )],
        ),
        by_layout(
            "FORM_ASK",
            "counsellor to relay: send me the case coding form",
            &Frame::FormAsk,
            &[("reserved", 1, "always 0")],
        ),
        by_layout(
            "FORM_FIELD",
            "relay to counsellor: field 2 (of 7) of the coding form, with two of its values",
            &Frame::FormField {
                form: FormId([0x5a; 8]),
                fields: 7,
                index: 2,
                field: Some(CodingField {
                    name: Label::new("Type").unwrap(),
                    values: vec![
                        Label::new("Sexual exploitation").unwrap(),
                        Label::new("Criminal exploitation (drugs)").unwrap(),
                    ],
                }),
            },
            &[
                (
                    "form",
                    8,
                    "the form's id: the first 8 bytes of its SHA-256 (§4.2)",
                ),
                ("fields", 1, "fields in the form, 1..=12"),
                ("index", 1, "this field's position, from 0"),
                ("name", 65, "label slot: the field's name"),
                ("count", 1, "values, 1..=14"),
                (
                    "values",
                    14 * 65,
                    "label slots: value 1, value 2, ...; unused slots zero",
                ),
            ],
        ),
        by_layout(
            "FORM_FIELD (no form)",
            "relay to counsellor: this relay collects no case statistics",
            &Frame::FormField {
                form: FormId::default(),
                fields: 0,
                index: 0,
                field: None,
            },
            &[
                ("form", 8, "zero"),
                ("fields", 1, "0: no form"),
                ("index", 1, "zero"),
                ("name", 65, "zero"),
                ("count", 1, "zero"),
                ("values", 14 * 65, "zero"),
            ],
        ),
        by_layout(
            "CODINGS",
            "counsellor to relay: a batch of two codings, shuffled, for March 2020",
            &Frame::Codings {
                batch: BatchId([0xb7; 16]),
                form: FormId([0x5a; 8]),
                codings: vec![
                    Coding {
                        month: Month::new(2020, 3).unwrap(),
                        values: [1, 2, 2, 1, 2, 1, 1, 0, 0, 0, 0, 0],
                    },
                    Coding {
                        month: Month::new(2020, 3).unwrap(),
                        values: [1, 0, 4, 0, 0, 1, 0, 0, 0, 0, 0, 0],
                    },
                ],
            },
            &[
                (
                    "batch",
                    16,
                    "random batch id; a repeat is answered STORED and not counted twice",
                ),
                ("form", 8, "the id of the form the codings were made with"),
                ("count", 1, "codings in this batch, 1..=64"),
                ("coding 1: year", 2, "u16 big-endian"),
                ("coding 1: month", 1, "1..=12"),
                (
                    "coding 1: values",
                    12,
                    "per field in order: the value's number from 1, 0 = not coded; unused slots zero",
                ),
                ("coding 2: year", 2, "u16 big-endian"),
                ("coding 2: month", 1, "1..=12"),
                (
                    "coding 2: values",
                    12,
                    "age band not coded, type 4, language 1",
                ),
                ("unused", 62 * 15, "zero"),
            ],
        ),
        by_layout(
            "CODINGS_RESULT",
            "relay to counsellor: the batch was counted",
            &Frame::CodingsResult {
                batch: BatchId([0xb7; 16]),
                outcome: CodingsOutcome::Stored,
            },
            &[
                ("batch", 16, "the batch's id"),
                (
                    "result",
                    1,
                    "0x00 stored, 0x01 stale form, 0x02 month refused, 0x03 not collecting, 0x04 later",
                ),
            ],
        ),
        by_layout(
            "JOINED",
            "relay to client: JOIN accepted; QUEUED or PAIRED follows",
            &Frame::Joined {
                resume: ResumeCapability([0xdd; 32]),
            },
            &[(
                "resume",
                32,
                "32 random bytes: the client's ticket to its place in the queue; secret, keep in memory only",
            )],
        ),
        by_layout(
            "RESUME",
            "endpoint to relay, on a new connection: take the chat (or the place in the queue) up again",
            &Frame::Resume {
                capability: ResumeCapability([0xcc; 32]),
            },
            &[(
                "capability",
                32,
                "the capability from PAIRED, or a waiting client's ticket from JOINED",
            )],
        ),
        by_layout(
            "RESUMED",
            "relay to endpoint: resumed; held frames follow",
            &Frame::Resumed { chat: chat1() },
            &[("chat", 4, "the chat's number on this connection")],
        ),
        by_layout(
            "RESUME_FAILED",
            "relay to endpoint: nothing to resume (unknown, wrong and expired are the same)",
            &Frame::ResumeFailed,
            &[("reason", 1, "always 0")],
        ),
        by_layout(
            "PEER_AWAY",
            "relay to endpoint: the other side's connection dropped",
            &Frame::PeerAway { chat: chat1() },
            &[("chat", 4, "chat number")],
        ),
        by_layout(
            "PEER_BACK",
            "relay to endpoint: the other side is back; resend what it has not acknowledged",
            &Frame::PeerBack { chat: chat1() },
            &[("chat", 4, "chat number")],
        ),
        frame_vector(
            "FORWARD",
            "an end-to-end blob; here bytes 00 01 02 ... as a placeholder",
            &Frame::Forward {
                chat: chat1(),
                blob: blob.clone(),
            },
            vec![
                field("chat", &1u32.to_be_bytes(), "chat number"),
                field(
                    "blob",
                    blob.as_bytes(),
                    "1032 opaque bytes (see handshake.json)",
                ),
            ],
        ),
        frame_vector(
            "END (user)",
            "the sender ends the chat",
            &Frame::End {
                chat: chat1(),
                reason: EndReason::UserEnded,
            },
            vec![
                field("chat", &1u32.to_be_bytes(), "chat number"),
                field("reason", &[1], "0x01 user ended"),
            ],
        ),
        frame_vector(
            "END (security failure)",
            "the sender aborts: an end-to-end check failed",
            &Frame::End {
                chat: chat1(),
                reason: EndReason::SecurityFailure,
            },
            vec![
                field("chat", &1u32.to_be_bytes(), "chat number"),
                field("reason", &[2], "0x02 security failure"),
            ],
        ),
        frame_vector(
            "END (peer disconnected)",
            "relay to endpoint: the other side's connection went away",
            &Frame::End {
                chat: chat1(),
                reason: EndReason::PeerDisconnected,
            },
            vec![
                field("chat", &1u32.to_be_bytes(), "chat number"),
                field("reason", &[0x10], "0x10 peer disconnected"),
            ],
        ),
        frame_vector(
            "END (relay shutdown)",
            "relay to endpoint: the relay is stopping",
            &Frame::End {
                chat: chat1(),
                reason: EndReason::RelayShutdown,
            },
            vec![
                field("chat", &1u32.to_be_bytes(), "chat number"),
                field("reason", &[0x11], "0x11 relay shutdown"),
            ],
        ),
        by_layout(
            "TOPIC",
            "one topic of the service, after WELCOME",
            &Frame::Topic {
                id: TopicId::new(3).unwrap(),
                label_nl: Label::new("Sextortion").unwrap(),
                label_en: Label::new("Sextortion").unwrap(),
            },
            &[
                ("id", 2, "topic id, u16 big-endian, never 0"),
                ("label_nl_len", 1, "10"),
                ("label_nl", 64, "UTF-8 label, zero-padded to 64 bytes"),
                ("label_en_len", 1, "10"),
                ("label_en", 64, "UTF-8 label, zero-padded to 64 bytes"),
            ],
        ),
        by_layout(
            "JOIN",
            "client joins the queue for topic 2 in Dutch, answering the WELCOME vector's challenge",
            &Frame::Join {
                topic: TopicId::new(2),
                language: Some(lang("nl")),
                pow_solution: pow_solve(&pow_challenge().nonce, 8),
            },
            &[
                ("topic", 2, "topic id; 0 = no topic chosen"),
                ("language", 2, "ASCII code; 00 00 = no preference"),
                (
                    "pow_solution",
                    8,
                    "the first u64 (big-endian, counting from 0) whose SHA-256(\"fluister pow v1\" || challenge || solution) starts with 8 zero bits",
                ),
            ],
        ),
        by_layout(
            "UNAVAILABLE (closed)",
            "outside opening hours; opens again at 2027-01-04 08:00 UTC",
            &Frame::Unavailable {
                reason: Unavailable::Closed,
                next_open: Some(1_799_049_600),
            },
            &[
                ("reason", 1, "0x01 closed, 0x02 busy, 0x03 wait exceeded"),
                (
                    "next_open",
                    8,
                    "unix seconds, u64 big-endian; 0 = not applicable",
                ),
            ],
        ),
        by_layout(
            "STATUS",
            "counsellor: available, 2 chats at once, topics 1 and 2, Dutch and English",
            &Frame::Status {
                available: true,
                capacity: 2,
                topics: vec![TopicId::new(1).unwrap(), TopicId::new(2).unwrap()],
                languages: vec![lang("nl"), lang("en")],
            },
            &[
                ("available", 1, "1 = takes new chats, 0 = away"),
                ("capacity", 1, "chats at once (the relay caps it)"),
                ("topic_count", 1, "0 = every topic"),
                ("topics", 32, "16 slots of u16 topic ids; unused slots zero"),
                ("language_count", 1, "0 = every language"),
                (
                    "languages",
                    16,
                    "8 slots of 2 ASCII letters; unused slots zero",
                ),
            ],
        ),
        by_layout(
            "QUEUE_STATS",
            "relay to counsellor: 1 waiting without a topic, 2 for topic 2",
            &Frame::QueueStats {
                waiting: vec![(None, 1), (TopicId::new(2), 2)],
            },
            &[
                ("count", 1, "entries used"),
                (
                    "entries",
                    68,
                    "17 slots of (topic u16, waiting u16); topic 0 = none chosen",
                ),
            ],
        ),
        by_layout(
            "TRANSFER (colleague)",
            "counsellor hands chat 1 to Noor",
            &Frame::Transfer {
                chat: chat1(),
                target: TransferTarget::Colleague(Label::new("Noor").unwrap()),
            },
            &[
                ("chat", 4, "chat number"),
                ("target", 1, "0x01 colleague, 0x02 queue"),
                ("name_len", 1, "4"),
                ("name", 64, "pseudonym, zero-padded; all zero for the queue"),
            ],
        ),
        by_layout(
            "TRANSFER (queue)",
            "counsellor hands chat 1 back to the queue",
            &Frame::Transfer {
                chat: chat1(),
                target: TransferTarget::Queue,
            },
            &[
                ("chat", 4, "chat number"),
                ("target", 1, "0x02 queue"),
                ("name_len", 1, "0"),
                ("name", 64, "zeros"),
            ],
        ),
        by_layout(
            "TRANSFER_REFUSED",
            "the colleague is away; the chat stays",
            &Frame::TransferRefused {
                chat: chat1(),
                reason: Refusal::ColleagueAway,
            },
            &[
                ("chat", 4, "chat number"),
                (
                    "reason",
                    1,
                    "0x01 unknown colleague, 0x02 away, 0x03 full, 0x04 the young person's connection is away",
                ),
            ],
        ),
        by_layout(
            "END (blocked)",
            "counsellor ends and blocks the chat",
            &Frame::End {
                chat: chat1(),
                reason: EndReason::Blocked,
            },
            &[("chat", 4, "chat number"), ("reason", 1, "0x03 blocked")],
        ),
        by_layout(
            "END (transferred)",
            "relay to both: the chat moves on",
            &Frame::End {
                chat: chat1(),
                reason: EndReason::Transferred,
            },
            &[
                ("chat", 4, "chat number"),
                ("reason", 1, "0x12 transferred"),
            ],
        ),
        by_layout(
            "END (counsellor revoked)",
            "relay to client: the helpline withdrew the counsellor's access",
            &Frame::End {
                chat: chat1(),
                reason: EndReason::CounsellorRevoked,
            },
            &[
                ("chat", 4, "chat number"),
                ("reason", 1, "0x13 counsellor revoked"),
            ],
        ),
    ];
    check_file(
        "frames.json",
        &json!({
            "description": "Every relay frame of fluister/1 (PROTOCOL.md section 4). Each `hex` is one whole frame; `fields` annotate it in order.",
            "vectors": vectors,
        }),
    );
}

struct Fixed {
    org: SigningKey,
    counsellor_static: StaticSecret,
    client_ephemeral: StaticSecret,
    counsellor_ephemeral: StaticSecret,
    pairing_id: PairingId,
    body: CertificateBody,
}

fn fixed() -> Fixed {
    let org = SigningKey::from_bytes(&[0x01; 32]);
    let counsellor_static = StaticSecret::from([0x02; 32]);
    let body = CertificateBody {
        org_key: org.verifying_key().to_bytes(),
        static_key: PublicKey::from(&counsellor_static).to_bytes(),
        not_before: 1_798_761_600, // 2027-01-01T00:00:00Z
        not_after: 1_801_353_600,  // 2027-01-31T00:00:00Z
        pseudonym: fluister::core::frame::Label::new("Sam").unwrap(),
    };
    Fixed {
        org,
        counsellor_static,
        client_ephemeral: StaticSecret::from([0x03; 32]),
        counsellor_ephemeral: StaticSecret::from([0x04; 32]),
        pairing_id: PairingId([0x05; 16]),
        body,
    }
}

/// The group order ℓ, little-endian.
const ELL: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];
/// The neutral point (small order 1), canonically encoded.
const IDENTITY: [u8; 32] = {
    let mut b = [0u8; 32];
    b[0] = 1;
    b
};
/// The neutral point again, with y = p + 1: a non-canonical encoding.
const IDENTITY_NON_CANONICAL: [u8; 32] = {
    let mut b = [0xffu8; 32];
    b[0] = 0xee;
    b[31] = 0x7f;
    b
};

/// A certificate for `body` whose signature is (R, S) with S computed so
/// that the cofactorless equation [S]B = R + [k]A holds for R of small
/// order (R = r·B with r = 0): a lax verifier accepts it.
fn signed_with_r(body: &CertificateBody, org: &SigningKey, r: [u8; 32]) -> Vec<u8> {
    use curve25519_dalek::Scalar;
    use sha2::{Digest, Sha512};
    let mut cert = body.encode().unwrap();
    let mut message = cert::SIGNING_CONTEXT.to_vec();
    message.extend_from_slice(&cert);
    let k = Scalar::from_bytes_mod_order_wide(
        &Sha512::new()
            .chain_update(r)
            .chain_update(body.org_key)
            .chain_update(&message)
            .finalize()
            .into(),
    );
    let mut expanded: [u8; 32] = Sha512::digest(org.to_bytes())[..32].try_into().unwrap();
    expanded[0] &= 248;
    expanded[31] &= 127;
    expanded[31] |= 64;
    let a = Scalar::from_bytes_mod_order(expanded);
    cert.extend_from_slice(&r);
    cert.extend_from_slice((k * a).as_bytes());
    cert
}

#[test]
fn certificate_vector() {
    let f = fixed();
    let certificate = f.body.sign(&f.org).unwrap();
    let org = OrgPublicKey::from_signing_key(&f.org);
    let verified = cert::verify(&certificate, &org, 1_800_000_000, &f.body.static_key).unwrap();
    assert_eq!(verified.pseudonym(), "Sam");
    let n = certificate.len();
    let mut signed = cert::SIGNING_CONTEXT.to_vec();
    signed.extend_from_slice(&certificate[..n - 64]);

    // Signatures a strict verifier refuses (section 6.2 step 3 and 4); the
    // small-order ones satisfy the cofactorless equation, so a verifier
    // without those checks accepts them.
    let mut s_plus_ell = certificate.clone();
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(certificate[n - 32 + i]) + u16::from(ELL[i]) + carry;
        s_plus_ell[n - 32 + i] = sum as u8;
        carry = sum >> 8;
    }
    let small_r = signed_with_r(&f.body, &f.org, IDENTITY);
    let non_canonical_r = signed_with_r(&f.body, &f.org, IDENTITY_NON_CANONICAL);
    let small_a_body = CertificateBody {
        org_key: IDENTITY,
        ..f.body.clone()
    };
    let mut small_a = small_a_body.encode().unwrap();
    small_a.extend_from_slice(&IDENTITY);
    small_a.extend_from_slice(&[0; 32]);
    let small_a_org = OrgPublicKey::from_bytes(&IDENTITY).unwrap();
    // The small-order vectors are not just broken bytes: a lax verifier
    // (RFC 8032 without the small-order checks) accepts them.
    let lax = |bytes: &[u8], key: &[u8; 32]| {
        let mut message = cert::SIGNING_CONTEXT.to_vec();
        message.extend_from_slice(&bytes[..bytes.len() - 64]);
        let sig = ed25519_dalek::Signature::from_slice(&bytes[bytes.len() - 64..]).unwrap();
        ed25519_dalek::VerifyingKey::from_bytes(key)
            .unwrap()
            .verify(&message, &sig)
            .is_ok()
    };
    assert!(lax(&small_r, &f.body.org_key));
    assert!(lax(&small_a, &IDENTITY));
    let rejections = [
        (
            "S not below the group order",
            "the valid certificate with l added to S: verifies under a lax check",
            &s_plus_ell,
            org,
            cert::CertError::NonCanonicalSignature,
        ),
        (
            "small-order R",
            "R is the neutral point and S = k*a, so [S]B = R + [k]A holds",
            &small_r,
            org,
            cert::CertError::BadSignature,
        ),
        (
            "non-canonical R",
            "R encodes the neutral point with y = p + 1 (ee ff .. ff 7f); S = k*a over those bytes",
            &non_canonical_r,
            org,
            cert::CertError::BadSignature,
        ),
        (
            "small-order A",
            "organisation key and R are the neutral point, S = 0: every message 'verifies' under a lax check",
            &small_a,
            small_a_org,
            cert::CertError::BadSignature,
        ),
    ];
    let rejections: Vec<Value> = rejections
        .into_iter()
        .map(|(name, why, bytes, pinned, error)| {
            assert_eq!(
                cert::verify(bytes, &pinned, 1_800_000_000, &f.body.static_key),
                Err(error),
                "{name}"
            );
            json!({
                "name": name,
                "description": why,
                "pinned_org_key": pinned.to_hex(),
                "certificate": hex::encode(bytes),
                "expected": "refused",
            })
        })
        .collect();
    check_file(
        "certificate.json",
        &json!({
            "description": "A counsellor certificate (PROTOCOL.md section 6.2). The organisation key is the Ed25519 key with seed 01 01 .. 01; the counsellor's X25519 static secret is 02 02 .. 02. Valid at unix time 1800000000.",
            "org_signing_seed": hex::encode([0x01; 32]),
            "org_public_key": org.to_hex(),
            "counsellor_static_secret": hex::encode([0x02; 32]),
            "signed_message": hex::encode(&signed),
            "signed_message_note": "what Ed25519 signs: the ASCII context 'fluister counsellor certificate v1' followed by every certificate byte before the signature",
            "rejections": rejections,
            "rejections_note": "each must be refused at unix time 1800000000 with the static key of the valid certificate; see PROTOCOL.md section 6.2 for the checks",
            "certificate": annotated("certificate", "encoded certificate", &certificate, vec![
                field("version", &certificate[0..1], "certificate format 1"),
                field("org_key", &certificate[1..33], "Ed25519 public key of the issuing organisation"),
                field("static_key", &certificate[33..65], "the counsellor's X25519 static public key"),
                field("not_before", &certificate[65..73], "unix seconds, u64 big-endian (2027-01-01)"),
                field("not_after", &certificate[73..81], "unix seconds, u64 big-endian (2027-01-31)"),
                field("pseudonym_len", &certificate[81..82], "3"),
                field("pseudonym", &certificate[82..85], "UTF-8 'Sam'"),
                field("signature", &certificate[85..], "Ed25519 signature (R || S) over signed_message"),
            ]),
        }),
    );
}

#[test]
fn handshake_and_transport_transcript() {
    let f = fixed();
    let org = OrgPublicKey::from_signing_key(&f.org);
    let certificate = f.body.sign(&f.org).unwrap();
    let now = 1_800_000_000;

    let (client_hs, hs1) =
        ClientHandshake::start_with_ephemeral(&org, &f.pairing_id, f.client_ephemeral.clone());
    let keys = CounsellorKeys {
        static_secret: f.counsellor_static.clone(),
        certificate: certificate.clone(),
        org,
    };
    let (mut counsellor, hs2) = e2e::counsellor_respond_with_ephemeral(
        &keys,
        &f.pairing_id,
        &hs1,
        f.counsellor_ephemeral.clone(),
    )
    .unwrap();
    let (mut client, verified) = client_hs.finish(&hs2, now).unwrap();
    assert_eq!(verified.pseudonym(), "Sam");
    assert_eq!(client.handshake_hash(), counsellor.handshake_hash());

    let text = |t: &str| Content::Text {
        last: true,
        text: t.into(),
    };
    let t1 = client.seal(&text("Hoi")).unwrap();
    let t2 = counsellor.seal(&text("Hallo, ik ben Sam.")).unwrap();
    let t3 = client.seal(&text("")).unwrap();
    assert_eq!(
        counsellor.open(&t1).unwrap(),
        Received::Content(text("Hoi"))
    );
    assert_eq!(
        client.open(&t2).unwrap(),
        Received::Content(text("Hallo, ik ben Sam."))
    );
    assert_eq!(counsellor.open(&t3).unwrap(), Received::Content(text("")));
    assert_eq!(
        counsellor.open(&t1).unwrap(),
        Received::Duplicate,
        "a replay is dropped"
    );

    let hs1b = hs1.as_bytes();
    let hs2b = hs2.as_bytes();
    let transport = |name: &str, from: &str, content: &str, blob: &Blob| {
        let b = blob.as_bytes();
        annotated(
            name,
            &format!("{from}: TEXT {content:?}, final chunk"),
            b,
            vec![
                field(
                    "seq",
                    &b[..8],
                    "sequence number = Noise nonce, u64 big-endian",
                ),
                field(
                    "ciphertext",
                    &b[8..8 + 1008],
                    "ChaCha20-Poly1305 of the 1008-byte padded plaintext (empty AD)",
                ),
                field("tag", &b[8 + 1008..], "Poly1305 tag"),
            ],
        )
    };
    let mut prologue = e2e::PROLOGUE_LABEL.to_vec();
    prologue.extend_from_slice(org.as_bytes());
    prologue.extend_from_slice(&f.pairing_id.0);
    check_file(
        "handshake.json",
        &json!({
            "description": "A full Noise_NX_25519_ChaChaPoly_SHA256 handshake and three transport messages from fixed keys (PROTOCOL.md section 6). Every blob is exactly 1032 bytes and travels in a FORWARD frame.",
            "inputs": {
                "org_signing_seed": hex::encode([0x01; 32]),
                "org_public_key": org.to_hex(),
                "counsellor_static_secret": hex::encode([0x02; 32]),
                "client_ephemeral_secret": hex::encode([0x03; 32]),
                "counsellor_ephemeral_secret": hex::encode([0x04; 32]),
                "pairing_id": hex::encode(f.pairing_id.0),
                "now_unix": now,
                "certificate": hex::encode(&certificate),
            },
            "prologue": annotated("prologue", "Noise prologue", &prologue, vec![
                field("label", e2e::PROLOGUE_LABEL, "ASCII 'fluister prologue v1'"),
                field("org_public_key", org.as_bytes(), "organisation Ed25519 public key"),
                field("pairing_id", &f.pairing_id.0, "from PAIRED"),
            ]),
            "message_1": annotated("handshake message 1", "client to counsellor: -> e, payload in clear", hs1b, vec![
                field("e", &hs1b[..32], "client ephemeral X25519 public key"),
                field("payload", &hs1b[32..], "1000 bytes: padded empty content (length 0000, then zeros)"),
            ]),
            "message_2": annotated("handshake message 2", "counsellor to client: <- e, ee, s, es, encrypted payload", hs2b, vec![
                field("e", &hs2b[..32], "counsellor ephemeral X25519 public key"),
                field("encrypted_s", &hs2b[32..80], "counsellor static key, encrypted (32 + 16 tag)"),
                field("encrypted_payload", &hs2b[80..], "936-byte padded certificate, encrypted (936 + 16 tag)"),
            ]),
            "handshake_hash": hex::encode(client.handshake_hash()),
            "transport": [
                transport("transport 1", "client to counsellor, seq 0", "Hoi", &t1),
                transport("transport 2", "counsellor to client, seq 0", "Hallo, ik ben Sam.", &t2),
                transport("transport 3", "client to counsellor, seq 1", "", &t3),
            ],
            "replay": {
                "description": "transport 1 again, after the counsellor received transports 1 and 3 (its next expected seq is 2). seq 0 < 2: a duplicate or replay. The receiver MUST drop it without decrypting or showing it (section 6.5).",
                "hex": hex::encode(t1.as_bytes()),
                "receiver_next_seq": 2,
                "expected": "dropped",
            },
            "transport_plaintext_1": hex::encode(&{
                let mut p = vec![0u8; 1008];
                let c = text("Hoi").encode();
                p[..2].copy_from_slice(&(c.len() as u16).to_be_bytes());
                p[2..2 + c.len()].copy_from_slice(&c);
                p
            }[..16]),
            "transport_plaintext_1_note": "first 16 of the 1008 padded plaintext bytes of transport 1: length 0005, kind 01 (TEXT), flags 01 (final), 'Hoi', then zeros",
        }),
    );
}

#[test]
fn label_vectors() {
    use fluister::core::frame::valid_label;
    let cases: Vec<(&str, String, bool, &str)> = vec![
        ("plain", "Sam".into(), true, ""),
        ("inner spaces", "Noor el Amrani".into(), true, ""),
        ("non-ASCII letters", "Zoë 秘密".into(), true, ""),
        ("64 bytes", "x".repeat(64), true, ""),
        ("empty", String::new(), false, "1..=64 bytes"),
        ("65 bytes", "x".repeat(65), false, "1..=64 bytes"),
        (
            "leading space",
            " Sam".into(),
            false,
            "White_Space at the start",
        ),
        (
            "trailing no-break space",
            "Sam\u{a0}".into(),
            false,
            "White_Space at the end (U+00A0)",
        ),
        (
            "leading ideographic space",
            "\u{3000}Sam".into(),
            false,
            "White_Space at the start (U+3000)",
        ),
        (
            "tab inside",
            "Sa\tm".into(),
            false,
            "General_Category Cc (U+0009)",
        ),
        (
            "delete inside",
            "Sa\u{7f}m".into(),
            false,
            "General_Category Cc (U+007F)",
        ),
        (
            "zero-width space only",
            "\u{200b}".into(),
            false,
            "General_Category Cf (U+200B)",
        ),
        (
            "right-to-left override",
            "Sa\u{202e}m".into(),
            false,
            "General_Category Cf (U+202E)",
        ),
        (
            "isolate",
            "Sa\u{2066}m".into(),
            false,
            "General_Category Cf (U+2066)",
        ),
        (
            "byte order mark",
            "\u{feff}Sam".into(),
            false,
            "General_Category Cf (U+FEFF)",
        ),
        (
            "line separator",
            "Sa\u{2028}m".into(),
            false,
            "General_Category Zl (U+2028)",
        ),
        (
            "paragraph separator",
            "Sa\u{2029}m".into(),
            false,
            "General_Category Zp (U+2029)",
        ),
    ];
    let vectors: Vec<Value> = cases
        .into_iter()
        .map(|(name, text, valid, rule)| {
            assert_eq!(valid_label(&text), valid, "{name}");
            assert_eq!(Label::new(text.as_str()).is_ok(), valid, "{name}");
            json!({ "name": name, "utf8": hex::encode(text.as_bytes()), "valid": valid, "rule": rule })
        })
        .collect();
    check_file(
        "labels.json",
        &json!({
            "description": "Topic labels and pseudonyms (PROTOCOL.md section 4.1, and the certificate's pseudonym in 6.2): 1 to 64 bytes of UTF-8; no character of General_Category Cc, Cf, Zl or Zp; no White_Space character first or last. `utf8` is the label's bytes in hex.",
            "vectors": vectors,
        }),
    );
}

#[test]
fn content_vectors() {
    use fluister::crypto::content::ContentError;
    /// Name, content bytes, what a receiver does, and what decoding gives.
    type Case = (
        &'static str,
        Vec<u8>,
        &'static str,
        Result<Content, ContentError>,
    );
    let cases: Vec<Case> = vec![
        (
            "TEXT, final",
            b"\x01\x01Hoi".to_vec(),
            "a message 'Hoi'",
            Ok(Content::Text {
                last: true,
                text: "Hoi".into(),
            }),
        ),
        (
            "TEXT, more follows",
            b"\x01\x00Ho".to_vec(),
            "a chunk; the message continues",
            Ok(Content::Text {
                last: false,
                text: "Ho".into(),
            }),
        ),
        (
            "TEXT, empty message",
            vec![0x01, 0x01],
            "an empty message",
            Ok(Content::Text {
                last: true,
                text: String::new(),
            }),
        ),
        (
            "ACK",
            vec![0x02, 0, 0, 0, 0, 0, 0, 0, 5],
            "every message below seq 5 arrived",
            Ok(Content::Ack { up_to: 5 }),
        ),
        (
            "unknown kind",
            vec![0x07, 1, 2, 3],
            "ignored (its seq still counts and is acknowledged)",
            Ok(Content::Unknown(7)),
        ),
        (
            "empty",
            vec![],
            "refused: end the chat as a security failure",
            Err(ContentError::Truncated),
        ),
        (
            "TEXT without flags",
            vec![0x01],
            "refused: end the chat as a security failure",
            Err(ContentError::Truncated),
        ),
        (
            "TEXT, reserved flag bit",
            vec![0x01, 0x02, b'x'],
            "refused: end the chat as a security failure",
            Err(ContentError::BadFlags),
        ),
        (
            "TEXT, not UTF-8",
            vec![0x01, 0x01, 0xff],
            "refused: end the chat as a security failure",
            Err(ContentError::NotUtf8),
        ),
        (
            "TEXT, cut inside a character",
            vec![0x01, 0x00, 0xc3],
            "refused: each chunk is UTF-8 on its own",
            Err(ContentError::NotUtf8),
        ),
        (
            "ACK, 8 bytes",
            vec![0x02, 0, 0, 0, 0, 0, 0, 5],
            "refused: an ACK is exactly 9 bytes",
            Err(ContentError::Truncated),
        ),
        (
            "ACK, 10 bytes",
            vec![0x02, 0, 0, 0, 0, 0, 0, 0, 5, 0],
            "refused: an ACK is exactly 9 bytes",
            Err(ContentError::Truncated),
        ),
    ];
    let vectors: Vec<Value> = cases
        .into_iter()
        .map(|(name, bytes, verdict, expected)| {
            assert_eq!(Content::decode(&bytes), expected, "{name}");
            json!({ "name": name, "content": hex::encode(&bytes), "accepted": expected.is_ok(), "verdict": verdict })
        })
        .collect();
    check_file(
        "content.json",
        &json!({
            "description": "Decrypted, unpadded content of transport messages (PROTOCOL.md section 6.4) and what a receiver does with it. Further rules need the chat's state: an ACK whose up_to is above the receiver's own next sequence number, and a message longer than 16384 bytes once joined, are refused the same way.",
            "vectors": vectors,
        }),
    );
}
