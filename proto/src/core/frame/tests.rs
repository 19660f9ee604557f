//! Round trips, vectors and hostile input for the frame codec.

use super::*;
use crate::core::coding::BatchId;
use proptest::prelude::*;

// The wire enums' strategies come from their tables (`ALL`), so a new
// variant is in every round trip at once.
fn arb_role() -> impl Strategy<Value = Role> {
    proptest::sample::select(Role::ALL)
}
fn arb_reason() -> impl Strategy<Value = EndReason> {
    proptest::sample::select(EndReason::ALL)
}
fn arb_chat() -> impl Strategy<Value = ChatNumber> {
    (1u32..).prop_map(|n| ChatNumber::new(n).unwrap())
}
fn arb_topic() -> impl Strategy<Value = TopicId> {
    (1u16..).prop_map(|n| TopicId::new(n).unwrap())
}
fn arb_language() -> impl Strategy<Value = Language> {
    (b'a'..=b'z', b'a'..=b'z').prop_map(|(a, b)| Language::new([a, b]).unwrap())
}
fn arb_label() -> impl Strategy<Value = Label> {
    "[A-Za-z0-9][A-Za-z0-9 ()éë.-]{0,40}[A-Za-z0-9)]"
        .prop_filter_map("valid", |s| Label::new(s).ok())
}
fn arb_languages() -> impl Strategy<Value = Vec<Language>> {
    proptest::collection::vec(arb_language(), 0..=MAX_LANGUAGES)
}

fn arb_form_field() -> impl Strategy<Value = Frame> {
    use crate::core::coding::{CodingField, FormId, MAX_FIELD_VALUES, MAX_FORM_FIELDS};
    prop_oneof![
        Just(Frame::FormField {
            form: FormId::default(),
            fields: 0,
            index: 0,
            field: None,
        }),
        (
            any::<[u8; 8]>(),
            1..=MAX_FORM_FIELDS as u8,
            any::<u8>(),
            arb_label(),
            proptest::collection::vec(arb_label(), 1..=MAX_FIELD_VALUES)
        )
            .prop_map(|(form, fields, index, name, values)| Frame::FormField {
                form: FormId(form),
                fields,
                index: index % fields,
                field: Some(CodingField { name, values }),
            }),
    ]
}

fn arb_codings() -> impl Strategy<Value = Frame> {
    use crate::core::coding::{Coding, FormId, MAX_CODINGS, Month};
    let coding = (2000u16..=9999, 1u8..=12, any::<[u8; 12]>()).prop_map(|(y, m, values)| Coding {
        month: Month::new(y, m).unwrap(),
        values,
    });
    (
        any::<[u8; 16]>(),
        any::<[u8; 8]>(),
        proptest::collection::vec(coding, 1..=MAX_CODINGS),
    )
        .prop_map(|(batch, form, codings)| Frame::Codings {
            batch: BatchId(batch),
            form: FormId(form),
            codings,
        })
}

pub(crate) fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u8>(), arb_role()).prop_map(|(version, role)| Frame::Hello { version, role }),
        (
            any::<u8>(),
            arb_role(),
            0..=MAX_TOPICS as u8,
            arb_languages(),
            (0..=MAX_POW_DIFFICULTY, any::<[u8; 16]>())
        )
            .prop_map(|(version, role, topics, languages, (difficulty, nonce))| {
                Frame::Welcome {
                    pow: PowChallenge { difficulty, nonce },
                    version,
                    role,
                    topics,
                    languages,
                }
            }),
        (1u32.., proptest::option::of(0..u32::MAX)).prop_map(|(position, estimated_wait_secs)| {
            Frame::Queued {
                position,
                estimated_wait_secs,
            }
        }),
        (
            arb_chat(),
            any::<[u8; 16]>(),
            any::<[u8; 32]>(),
            proptest::option::of(arb_topic()),
            proptest::option::of(arb_language())
        )
            .prop_map(|(chat, id, cap, topic, language)| Frame::Paired {
                chat,
                pairing_id: PairingId(id),
                resume: ResumeCapability(cap),
                topic,
                language,
            }),
        (arb_label(), proptest::sample::select(Presence::ALL))
            .prop_map(|(name, presence)| Frame::Colleague { name, presence }),
        (0..=MAX_POW_DIFFICULTY, any::<[u8; 16]>()).prop_map(|(difficulty, nonce)| {
            Frame::Challenge {
                pow: PowChallenge { difficulty, nonce },
            }
        }),
        any::<[u8; 8]>().prop_map(|solution| Frame::Proof { solution }),
        Just(Frame::FormAsk),
        arb_form_field(),
        arb_codings(),
        (
            any::<[u8; 16]>(),
            proptest::sample::select(CodingsOutcome::ALL)
        )
            .prop_map(|(batch, outcome)| Frame::CodingsResult {
                batch: BatchId(batch),
                outcome
            }),
        any::<[u8; 32]>().prop_map(|c| Frame::Resume {
            capability: ResumeCapability(c)
        }),
        any::<[u8; 32]>().prop_map(|c| Frame::Joined {
            resume: ResumeCapability(c)
        }),
        arb_chat().prop_map(|chat| Frame::Resumed { chat }),
        Just(Frame::ResumeFailed),
        arb_chat().prop_map(|chat| Frame::PeerAway { chat }),
        arb_chat().prop_map(|chat| Frame::PeerBack { chat }),
        (arb_chat(), proptest::collection::vec(any::<u8>(), BLOB_LEN)).prop_map(|(chat, b)| {
            Frame::Forward {
                chat,
                blob: Blob::from_slice(&b).unwrap(),
            }
        }),
        (arb_chat(), arb_reason()).prop_map(|(chat, reason)| Frame::End { chat, reason }),
        (arb_topic(), arb_label(), arb_label()).prop_map(|(id, label_nl, label_en)| {
            Frame::Topic {
                id,
                label_nl,
                label_en,
            }
        }),
        (
            proptest::option::of(arb_topic()),
            proptest::option::of(arb_language()),
            any::<[u8; 8]>()
        )
            .prop_map(|(topic, language, pow_solution)| Frame::Join {
                topic,
                language,
                pow_solution
            }),
        (
            proptest::sample::select(Unavailable::ALL),
            proptest::option::of(1u64..)
        )
            .prop_map(|(reason, next_open)| Frame::Unavailable { reason, next_open }),
        (
            any::<bool>(),
            any::<u8>(),
            proptest::collection::vec(arb_topic(), 0..=MAX_TOPICS),
            arb_languages()
        )
            .prop_map(|(available, capacity, topics, languages)| Frame::Status {
                available,
                capacity,
                topics,
                languages
            }),
        proptest::collection::vec(
            (proptest::option::of(arb_topic()), any::<u16>()),
            0..=MAX_TOPICS + 1
        )
        .prop_map(|waiting| Frame::QueueStats { waiting }),
        (
            arb_chat(),
            prop_oneof![
                Just(TransferTarget::Queue),
                arb_label().prop_map(TransferTarget::Colleague)
            ]
        )
            .prop_map(|(chat, target)| Frame::Transfer { chat, target }),
        (arb_chat(), proptest::sample::select(Refusal::ALL))
            .prop_map(|(chat, reason)| Frame::TransferRefused { chat, reason }),
    ]
}

proptest! {
    #[test]
    fn every_frame_round_trips(frame in arb_frame()) {
        let bytes = frame.encode();
        prop_assert_eq!(bytes.len(), frame.encoded_len());
        prop_assert_eq!(Frame::decode(&bytes).unwrap(), frame);
    }

    #[test]
    fn a_stream_split_anywhere_decodes_the_same(
        frames in proptest::collection::vec(arb_frame(), 1..6),
        cuts in proptest::collection::vec(1usize..200, 1..40),
    ) {
        let bytes: Vec<u8> = frames.iter().flat_map(|f| f.encode()).collect();
        let mut decoder = FrameDecoder::default();
        let mut got = Vec::new();
        let mut rest = &bytes[..];
        for cut in cuts.iter().cycle() {
            if rest.is_empty() { break; }
            let n = (*cut).min(rest.len());
            prop_assert_eq!(decoder.push(&rest[..n], &mut got).unwrap(), n);
            rest = &rest[n..];
        }
        prop_assert_eq!(got, frames);
        prop_assert!(decoder.is_idle());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let mut decoder = FrameDecoder::default();
        let mut out = Vec::new();
        let _ = decoder.push(&bytes, &mut out);
        prop_assert!(decoder.buf.len() <= MAX_FRAME_LEN);
    }
}

#[test]
fn a_decoder_between_frames_holds_no_memory() {
    let chat = ChatNumber::new(1).unwrap();
    let bytes = Frame::Forward {
        chat,
        blob: Blob::new([7; BLOB_LEN]),
    }
    .encode();
    let mut decoder = FrameDecoder::default();
    let mut out = Vec::new();
    decoder.push(&bytes, &mut out).unwrap();
    assert_eq!(decoder.buf.capacity(), 0, "a whole frame is not copied");
    decoder.push(&bytes[..500], &mut out).unwrap();
    decoder.push(&bytes[500..], &mut out).unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(decoder.buf.capacity(), 0, "a split one is let go");
}

#[test]
fn encoded_lengths_match_the_spec() {
    let chat = ChatNumber::new(1).unwrap();
    let topic = TopicId::new(1).unwrap();
    let cases = [
        (
            Frame::Hello {
                version: 1,
                role: Role::Client,
            },
            5,
        ),
        (
            Frame::Welcome {
                pow: PowChallenge::NONE,
                version: 1,
                role: Role::Counsellor,
                topics: 6,
                languages: vec![],
            },
            40,
        ),
        (
            Frame::Queued {
                position: 3,
                estimated_wait_secs: None,
            },
            11,
        ),
        (
            Frame::Paired {
                chat,
                pairing_id: PairingId([0; 16]),
                resume: ResumeCapability([0; 32]),
                topic: None,
                language: None,
            },
            59,
        ),
        (
            Frame::Colleague {
                name: Label::new("Noor").unwrap(),
                presence: Presence::Available,
            },
            69,
        ),
        (
            Frame::Challenge {
                pow: PowChallenge::NONE,
            },
            20,
        ),
        (Frame::Proof { solution: [0; 8] }, 11),
        (Frame::FormAsk, 4),
        (
            Frame::FormField {
                form: crate::core::coding::FormId::default(),
                fields: 0,
                index: 0,
                field: None,
            },
            989,
        ),
        (
            Frame::CodingsResult {
                batch: BatchId([0; 16]),
                outcome: CodingsOutcome::Stored,
            },
            20,
        ),
        (
            Frame::Resume {
                capability: ResumeCapability([0; 32]),
            },
            35,
        ),
        (
            Frame::Joined {
                resume: ResumeCapability([0; 32]),
            },
            35,
        ),
        (Frame::Resumed { chat }, 7),
        (
            Frame::Codings {
                batch: BatchId([0; 16]),
                form: crate::core::coding::FormId::default(),
                codings: vec![crate::core::coding::Coding {
                    month: crate::core::coding::Month::new(2020, 1).unwrap(),
                    values: [0; 12],
                }],
            },
            988,
        ),
        (Frame::ResumeFailed, 4),
        (Frame::PeerAway { chat }, 7),
        (Frame::PeerBack { chat }, 7),
        (
            Frame::Forward {
                chat,
                blob: Blob::new([0; BLOB_LEN]),
            },
            1039,
        ),
        (
            Frame::End {
                chat,
                reason: EndReason::UserEnded,
            },
            8,
        ),
        (
            Frame::Topic {
                id: topic,
                label_nl: Label::new("a").unwrap(),
                label_en: Label::new("b").unwrap(),
            },
            135,
        ),
        (
            Frame::Join {
                topic: None,
                language: None,
                pow_solution: [0; 8],
            },
            15,
        ),
        (
            Frame::Unavailable {
                reason: Unavailable::Busy,
                next_open: None,
            },
            12,
        ),
        (
            Frame::Status {
                available: true,
                capacity: 1,
                topics: vec![],
                languages: vec![],
            },
            55,
        ),
        (Frame::QueueStats { waiting: vec![] }, 72),
        (
            Frame::Transfer {
                chat,
                target: TransferTarget::Queue,
            },
            73,
        ),
        (
            Frame::TransferRefused {
                chat,
                reason: Refusal::ColleagueFull,
            },
            8,
        ),
    ];
    for (frame, len) in cases {
        assert_eq!(frame.encode().len(), len, "{frame:?}");
    }
    assert_eq!(MAX_FRAME_LEN, 1039);
}

#[test]
fn bad_headers_are_refused_at_the_header() {
    let mut d = FrameDecoder::default();
    let mut out = Vec::new();
    assert_eq!(
        d.push(&[0x7f, 0, 1], &mut out),
        Err(FrameError::UnknownType(0x7f))
    );
    let mut d = FrameDecoder::default();
    assert_eq!(
        d.push(&[kind::FORWARD, 0xff, 0xff], &mut out),
        Err(FrameError::TooLarge(0xffff))
    );
    let mut d = FrameDecoder::default();
    assert!(matches!(
        d.push(&[kind::HELLO, 0, 3], &mut out),
        Err(FrameError::WrongLength { .. })
    ));
    assert_eq!(
        Frame::decode(&[kind::QUEUED, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]),
        Err(FrameError::BadField("position"))
    );
    // Unused slots must be zero, labels printable, flags in range.
    let mut join = Frame::Join {
        topic: None,
        language: None,
        pow_solution: [0; 8],
    }
    .encode();
    join[5] = b'n';
    assert_eq!(Frame::decode(&join), Err(FrameError::BadField("language")));
    let status = || {
        Frame::Status {
            available: true,
            capacity: 1,
            topics: vec![],
            languages: vec![],
        }
        .encode()
    };
    let mut bad = status();
    bad[3] = 2;
    assert_eq!(Frame::decode(&bad), Err(FrameError::BadField("available")));
    let mut bad = status();
    bad[10] = 1;
    assert_eq!(Frame::decode(&bad), Err(FrameError::BadField("topics")));
    let mut topic = Frame::Topic {
        id: TopicId::new(1).unwrap(),
        label_nl: Label::new("a").unwrap(),
        label_en: Label::new("b").unwrap(),
    }
    .encode();
    topic[6] = b'\n';
    assert_eq!(Frame::decode(&topic), Err(FrameError::BadField("label_nl")));
    assert_eq!(
        Frame::decode(&[kind::END, 0, 5, 0, 0, 0, 0, 1]),
        Err(FrameError::BadField("chat"))
    );
    assert_eq!(
        Frame::decode(&[kind::HELLO, 0, 2, 1, 9]),
        Err(FrameError::BadField("role"))
    );
    assert_eq!(
        Frame::decode(&[kind::END, 0, 5, 0, 0, 0, 1, 0x55]),
        Err(FrameError::BadField("reason"))
    );
    let mut welcome = Frame::Welcome {
        version: 1,
        role: Role::Client,
        topics: 0,
        languages: vec![],
        pow: PowChallenge::NONE,
    }
    .encode();
    welcome[3 + 4 + 16] = MAX_POW_DIFFICULTY + 1;
    assert_eq!(
        Frame::decode(&welcome),
        Err(FrameError::BadField("difficulty"))
    );
}

#[test]
fn labels_follow_the_unicode_rules() {
    for good in ["Sam", "Noor el Amrani", "é", "秘密", "a b", &"x".repeat(64)] {
        assert!(Label::new(good).is_ok(), "{good:?}");
    }
    for bad in [
        "",
        " Sam",
        "Sam ",
        "Sam\u{a0}",   // no-break space: White_Space at the end
        "\u{3000}Sam", // ideographic space at the start
        "Sa\tm",       // Cc
        "Sa\u{7f}m",   // Cc (DEL)
        "\u{200b}",    // zero-width space: Cf
        "Sa\u{202e}m", // right-to-left override: Cf
        "Sa\u{2066}m", // isolate: Cf
        "Sa\u{feff}m", // byte order mark: Cf
        "Sa\u{2028}m", // line separator: Zl
        "Sa\u{2029}m", // paragraph separator: Zp
        &"x".repeat(65),
    ] {
        assert!(Label::new(bad).is_err(), "{bad:?}");
    }
}

proptest! {
    /// An invalid label cannot be encoded: whatever the string, either the
    /// one check refuses it, or it goes into a frame slot and a certificate
    /// and comes back out unchanged.
    #[test]
    fn only_valid_labels_can_be_made_and_every_one_made_survives_the_wire(
        s in prop_oneof![
            any::<String>(),
            "[ \\t\\u{a0}\\u{200b}\\u{202e}a-zé秘]{0,70}",
        ]
    ) {
        let Ok(label) = Label::new(s.clone()) else {
            prop_assert!(!valid_label(&s));
            return Ok(());
        };
        prop_assert!(valid_label(&s));
        let frame = Frame::Colleague { name: label.clone(), presence: Presence::Away };
        prop_assert_eq!(Frame::decode(&frame.encode()), Ok(frame));
        let org = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let body = crate::crypto::cert::CertificateBody {
            org_key: org.verifying_key().to_bytes(),
            static_key: [5; 32],
            not_before: 0,
            not_after: 1,
            pseudonym: label,
        };
        let signed = body.sign(&org).unwrap();
        prop_assert_eq!(crate::crypto::cert::parse(&signed).map(|(b, _)| b), Ok(body));
    }
}

/// Each wire enum comes from one table: its bytes are distinct and round
/// trip, no other byte decodes, and its serde name is its `as_str`.
fn check_wire_enum<T>(
    all: &[T],
    to: fn(T) -> u8,
    from: fn(u8) -> Result<T, FrameError>,
    name: fn(T) -> &'static str,
) where
    T: Copy + PartialEq + std::fmt::Debug + serde::Serialize,
{
    let bytes: std::collections::BTreeSet<u8> = all.iter().map(|v| to(*v)).collect();
    assert_eq!(bytes.len(), all.len(), "{all:?}: two variants share a byte");
    for v in all {
        assert_eq!(from(to(*v)), Ok(*v));
        assert_eq!(
            serde_json::to_value(v).unwrap(),
            serde_json::json!(name(*v))
        );
    }
    for b in (0..=u8::MAX).filter(|b| !bytes.contains(b)) {
        assert!(from(b).is_err(), "{all:?}: byte {b:#04x} decodes");
    }
}

#[test]
fn every_wire_enum_comes_from_one_table() {
    check_wire_enum(Role::ALL, Role::to_byte, Role::from_byte, Role::as_str);
    check_wire_enum(
        EndReason::ALL,
        EndReason::to_byte,
        EndReason::from_byte,
        EndReason::as_str,
    );
    check_wire_enum(
        Unavailable::ALL,
        Unavailable::to_byte,
        Unavailable::from_byte,
        Unavailable::as_str,
    );
    check_wire_enum(
        Refusal::ALL,
        Refusal::to_byte,
        Refusal::from_byte,
        Refusal::as_str,
    );
    check_wire_enum(
        Presence::ALL,
        Presence::to_byte,
        Presence::from_byte,
        Presence::as_str,
    );
    check_wire_enum(
        CodingsOutcome::ALL,
        CodingsOutcome::to_byte,
        CodingsOutcome::from_byte,
        CodingsOutcome::as_str,
    );
    // The name says what the variant is, on whichever side it is read.
    assert_eq!(EndReason::UserEnded.as_str(), "user_ended");
    // Close codes come from a table of their own (`core::close_codes!`).
    use crate::core::CloseCode;
    let codes: std::collections::BTreeSet<u32> = CloseCode::ALL.iter().map(|c| c.code()).collect();
    let names: std::collections::BTreeSet<&str> = CloseCode::ALL.iter().map(|c| c.name()).collect();
    assert_eq!(
        (codes.len(), names.len()),
        (CloseCode::ALL.len(), CloseCode::ALL.len())
    );
    for c in CloseCode::ALL {
        assert_eq!(CloseCode::from_code(u64::from(c.code())), Some(*c));
    }
    assert_eq!(CloseCode::from_code(0x09), None, "0x09 is reserved");
}

#[test]
fn a_body_with_bytes_no_field_reads_is_refused() {
    // Every body length is fixed per type, so the codec's finish check is
    // reached only through `decode_body`; a longer body must not pass.
    let mut body = Frame::Proof { solution: [1; 8] }.encode()[HEADER_LEN..].to_vec();
    body.push(0);
    assert_eq!(
        Frame::decode_body(kind::PROOF, &body),
        Err(FrameError::BadField("trailing bytes"))
    );
}

proptest! {
    /// Every frame goes one way or both (FORWARD, END), and converts to
    /// its direction and back unchanged; the relay's fast path writes a
    /// FORWARD as the codec does.
    #[test]
    fn every_frame_has_a_direction(frame in arb_frame()) {
        let to = ToRelay::try_from(frame.clone());
        let from = FromRelay::try_from(frame.clone());
        prop_assert!(to.is_ok() || from.is_ok(), "{:?} goes nowhere", frame);
        let both = matches!(frame, Frame::Forward { .. } | Frame::End { .. });
        prop_assert_eq!(to.is_ok() && from.is_ok(), both);
        if let Ok(to) = to {
            prop_assert_eq!(Frame::from(to), frame.clone());
        }
        if let Ok(from) = from {
            prop_assert_eq!(Frame::from(from), frame.clone());
        }
        if let Frame::Forward { chat, blob } = &frame {
            prop_assert_eq!(Frame::forward_bytes(*chat, blob), frame.encode());
        }
    }
}
