//! The relay core driven with a virtual clock and no sockets: pairing, queue
//! positions, forwarding, end and disconnect on either side, bad frames.

use std::time::{Duration, Instant};

use fluister::core::CloseCode;
use fluister::core::frame::{
    BLOB_LEN, Blob, ChatNumber, EndReason, Frame, FrameDecoder, PROTOCOL_VERSION, Role, kind,
};
use fluister::core::limits::Limits;
use fluister::core::relay::{ConnId, Credential, Output, Relay};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

struct Harness {
    relay: Relay,
    now: Instant,
}

#[derive(Debug, PartialEq)]
enum Out {
    Frame(ConnId, Frame),
    Close(ConnId, CloseCode),
}

fn counsellor() -> Credential {
    Credential::Counsellor {
        pseudonym: "Sam".into(),
    }
}

fn chat(n: u32) -> ChatNumber {
    ChatNumber::new(n).unwrap()
}

fn blob(byte: u8) -> Blob {
    Blob::new([byte; BLOB_LEN])
}

impl Harness {
    fn new(limits: Limits) -> Self {
        Harness {
            relay: Relay::new(limits, Box::new(ChaCha20Rng::seed_from_u64(7))),
            now: Instant::now(),
        }
    }

    fn connect(&mut self, credential: Credential) -> ConnId {
        self.relay.handle_connect(self.now, credential).unwrap()
    }

    fn send(&mut self, conn: ConnId, frame: Frame) -> Vec<Out> {
        self.relay.handle_data(self.now, conn, &frame.encode());
        self.drain()
    }

    fn hello(&mut self, conn: ConnId, role: Role) -> Vec<Out> {
        self.send(
            conn,
            Frame::Hello {
                version: PROTOCOL_VERSION,
                role,
            },
        )
    }

    fn drain(&mut self) -> Vec<Out> {
        let mut outs = Vec::new();
        while let Some(o) = self.relay.poll_output() {
            match o {
                Output::Send { conn, bytes } => {
                    let mut frames = Vec::new();
                    FrameDecoder::default().push(&bytes, &mut frames).unwrap();
                    outs.extend(frames.into_iter().map(|f| Out::Frame(conn, f)));
                }
                Output::Close { conn, code } => outs.push(Out::Close(conn, code)),
            }
        }
        outs
    }

    /// A counsellor and a client, paired; returns (client, counsellor).
    fn paired(&mut self) -> (ConnId, ConnId) {
        let c = self.connect(counsellor());
        self.hello(c, Role::Counsellor);
        let y = self.connect(Credential::Anonymous);
        let outs = self.hello(y, Role::Client);
        assert!(
            outs.iter()
                .any(|o| matches!(o, Out::Frame(id, Frame::Paired { .. }) if *id == y))
        );
        (y, c)
    }
}

fn positions(outs: &[Out]) -> Vec<(ConnId, u32)> {
    outs.iter()
        .filter_map(|o| match o {
            Out::Frame(id, Frame::Queued { position }) => Some((*id, *position)),
            _ => None,
        })
        .collect()
}

#[test]
fn clients_queue_in_order_and_see_their_position_change() {
    let mut h = Harness::new(Limits::default());
    let clients: Vec<ConnId> = (0..3).map(|_| h.connect(Credential::Anonymous)).collect();
    for (i, c) in clients.iter().enumerate() {
        let outs = h.hello(*c, Role::Client);
        assert_eq!(
            outs[0],
            Out::Frame(
                *c,
                Frame::Welcome {
                    version: 1,
                    role: Role::Client
                }
            )
        );
        assert_eq!(positions(&outs), vec![(*c, i as u32 + 1)]);
    }

    let counsellor_conn = h.connect(counsellor());
    let outs = h.hello(counsellor_conn, Role::Counsellor);
    let paired: Vec<ConnId> = outs
        .iter()
        .filter_map(|o| match o {
            Out::Frame(id, Frame::Paired { .. }) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(paired, vec![clients[0], counsellor_conn]);
    assert_eq!(positions(&outs), vec![(clients[1], 1), (clients[2], 2)]);

    // The counsellor ends the first chat and gets the next client in line.
    let outs = h.send(
        counsellor_conn,
        Frame::End {
            chat: chat(1),
            reason: EndReason::UserEnded,
        },
    );
    assert!(outs.contains(&Out::Frame(
        clients[0],
        Frame::End {
            chat: chat(1),
            reason: EndReason::UserEnded
        }
    )));
    assert!(outs.iter().any(|o| matches!(o, Out::Frame(id, Frame::Paired { chat: c, .. }) if *id == clients[1] && *c == chat(1))));
    assert!(outs.iter().any(|o| matches!(o, Out::Frame(id, Frame::Paired { chat: c, .. }) if *id == counsellor_conn && *c == chat(2))));
    assert_eq!(positions(&outs), vec![(clients[2], 1)]);
}

#[test]
fn both_sides_get_the_same_pairing_id_and_forwarding_goes_both_ways() {
    let mut h = Harness::new(Limits::default());
    let c = h.connect(counsellor());
    h.hello(c, Role::Counsellor);
    let y = h.connect(Credential::Anonymous);
    let outs = h.hello(y, Role::Client);
    let ids: Vec<_> = outs
        .iter()
        .filter_map(|o| match o {
            Out::Frame(_, Frame::Paired { pairing_id, .. }) => Some(*pairing_id),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1]);

    let outs = h.send(
        y,
        Frame::Forward {
            chat: chat(1),
            blob: blob(0xaa),
        },
    );
    assert_eq!(
        outs,
        vec![Out::Frame(
            c,
            Frame::Forward {
                chat: chat(1),
                blob: blob(0xaa)
            }
        )]
    );
    let outs = h.send(
        c,
        Frame::Forward {
            chat: chat(1),
            blob: blob(0xbb),
        },
    );
    assert_eq!(
        outs,
        vec![Out::Frame(
            y,
            Frame::Forward {
                chat: chat(1),
                blob: blob(0xbb)
            }
        )]
    );
}

#[test]
fn the_client_ending_tells_the_counsellor_and_frees_them() {
    let mut h = Harness::new(Limits::default());
    let (y, c) = h.paired();
    let outs = h.send(
        y,
        Frame::End {
            chat: chat(1),
            reason: EndReason::UserEnded,
        },
    );
    assert_eq!(
        outs,
        vec![Out::Frame(
            c,
            Frame::End {
                chat: chat(1),
                reason: EndReason::UserEnded
            }
        )]
    );
    // A late frame for the ended chat is dropped, not an error.
    assert_eq!(
        h.send(
            c,
            Frame::Forward {
                chat: chat(1),
                blob: blob(1)
            }
        ),
        vec![]
    );
    // The counsellor is free again: a new client is paired at once.
    let y2 = h.connect(Credential::Anonymous);
    let outs = h.hello(y2, Role::Client);
    assert!(
        outs.iter()
            .any(|o| matches!(o, Out::Frame(id, Frame::Paired { .. }) if *id == c))
    );
}

#[test]
fn a_disconnect_on_either_side_ends_the_chat_for_the_other() {
    let mut h = Harness::new(Limits::default());
    let (y, c) = h.paired();
    h.relay.handle_disconnect(h.now, y);
    assert_eq!(
        h.drain(),
        vec![Out::Frame(
            c,
            Frame::End {
                chat: chat(1),
                reason: EndReason::PeerDisconnected
            }
        )]
    );

    assert_eq!(h.relay.counts(), (1, 0), "only the counsellor remains");

    let mut h = Harness::new(Limits::default());
    let (y, c) = h.paired();
    h.relay.handle_disconnect(h.now, c);
    let outs = h.drain();
    assert_eq!(
        outs,
        vec![Out::Frame(
            y,
            Frame::End {
                chat: chat(1),
                reason: EndReason::PeerDisconnected
            }
        )]
    );
    assert_eq!(
        h.relay.counts(),
        (1, 0),
        "only the client remains, not queued"
    );
}

#[test]
fn a_client_leaving_the_queue_moves_the_others_up() {
    let mut h = Harness::new(Limits::default());
    let a = h.connect(Credential::Anonymous);
    let b = h.connect(Credential::Anonymous);
    h.hello(a, Role::Client);
    h.hello(b, Role::Client);
    h.relay.handle_disconnect(h.now, a);
    assert_eq!(positions(&h.drain()), vec![(b, 1)]);
    assert_eq!(h.relay.counts(), (1, 1));
}

#[test]
fn a_full_queue_answers_busy_at_once() {
    let mut h = Harness::new(Limits {
        max_queue: 2,
        ..Limits::default()
    });
    for _ in 0..2 {
        let c = h.connect(Credential::Anonymous);
        h.hello(c, Role::Client);
    }
    let c = h.connect(Credential::Anonymous);
    assert_eq!(
        h.hello(c, Role::Client),
        vec![Out::Close(c, CloseCode::Busy)]
    );
}

#[test]
fn too_many_connections_are_refused() {
    let mut h = Harness::new(Limits {
        max_connections: 1,
        ..Limits::default()
    });
    h.connect(Credential::Anonymous);
    assert!(
        h.relay
            .handle_connect(h.now, Credential::Anonymous)
            .is_err()
    );
}

#[test]
fn a_stranger_cannot_sign_in_as_counsellor() {
    let mut h = Harness::new(Limits::default());
    let x = h.connect(Credential::Anonymous);
    assert_eq!(
        h.hello(x, Role::Counsellor),
        vec![Out::Close(x, CloseCode::NotAuthorized)]
    );
}

#[test]
fn an_unknown_version_is_refused_with_its_own_code() {
    let mut h = Harness::new(Limits::default());
    let x = h.connect(Credential::Anonymous);
    let outs = h.send(
        x,
        Frame::Hello {
            version: 2,
            role: Role::Client,
        },
    );
    assert_eq!(outs, vec![Out::Close(x, CloseCode::UnsupportedVersion)]);
}

#[test]
fn no_hello_in_time_closes_the_connection() {
    let mut h = Harness::new(Limits::default());
    let x = h.connect(Credential::Anonymous);
    let deadline = h.relay.poll_timeout().unwrap();
    assert_eq!(deadline, h.now + Limits::DEFAULT_HELLO_TIMEOUT);
    h.relay.handle_timeout(deadline - Duration::from_millis(1));
    assert_eq!(h.drain(), vec![]);
    h.relay.handle_timeout(deadline);
    assert_eq!(h.drain(), vec![Out::Close(x, CloseCode::HelloTimeout)]);
    assert_eq!(h.relay.poll_timeout(), None);
}

#[test]
fn bad_frames_close_only_their_own_connection() {
    let mut h = Harness::new(Limits::default());
    let (y, c) = h.paired();
    let cases: Vec<(Vec<u8>, CloseCode)> = vec![
        (vec![0x7f, 0, 0], CloseCode::MalformedFrame),
        (vec![kind::FORWARD, 0xff, 0xff], CloseCode::FrameTooLarge),
        (vec![kind::END, 0, 4, 0, 0, 0, 1], CloseCode::MalformedFrame),
        (
            Frame::Hello {
                version: 1,
                role: Role::Client,
            }
            .encode(),
            CloseCode::UnexpectedFrame,
        ),
        (
            Frame::Queued { position: 1 }.encode(),
            CloseCode::UnexpectedFrame,
        ),
        (
            Frame::Forward {
                chat: chat(9),
                blob: blob(0),
            }
            .encode(),
            CloseCode::UnexpectedFrame,
        ),
        (
            Frame::Forward {
                chat: chat(1),
                blob: blob(0),
            }
            .encode(),
            CloseCode::UnexpectedFrame,
        ), // before HELLO
        (
            Frame::End {
                chat: chat(1),
                reason: EndReason::RelayShutdown,
            }
            .encode(),
            CloseCode::UnexpectedFrame,
        ),
    ];
    for (i, (bytes, code)) in cases.into_iter().enumerate() {
        let bad = h.connect(Credential::Anonymous);
        if i != 6 {
            h.hello(bad, Role::Client);
        }
        h.relay.handle_data(h.now, bad, &bytes);
        assert_eq!(h.drain(), vec![Out::Close(bad, code)], "case {i}");
    }
    // The chat beside them is untouched.
    let outs = h.send(
        y,
        Frame::Forward {
            chat: chat(1),
            blob: blob(3),
        },
    );
    assert_eq!(
        outs,
        vec![Out::Frame(
            c,
            Frame::Forward {
                chat: chat(1),
                blob: blob(3)
            }
        )]
    );
}

#[test]
fn shutdown_ends_every_chat_and_closes_everyone() {
    let mut h = Harness::new(Limits::default());
    let (y, c) = h.paired();
    h.relay.handle_shutdown(h.now);
    let outs = h.drain();
    assert!(outs.contains(&Out::Frame(
        y,
        Frame::End {
            chat: chat(1),
            reason: EndReason::RelayShutdown
        }
    )));
    assert!(outs.contains(&Out::Frame(
        c,
        Frame::End {
            chat: chat(1),
            reason: EndReason::RelayShutdown
        }
    )));
    assert!(outs.contains(&Out::Close(y, CloseCode::ShuttingDown)));
    assert!(outs.contains(&Out::Close(c, CloseCode::ShuttingDown)));
    assert_eq!(h.relay.counts(), (0, 0));
    assert!(
        h.relay
            .handle_connect(h.now, Credential::Anonymous)
            .is_err()
    );
}

mod random_input {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Connect {
            counsellor: bool,
        },
        Hello {
            conn: usize,
            counsellor: bool,
            version: u8,
        },
        Forward {
            conn: usize,
            chat: u32,
        },
        End {
            conn: usize,
            chat: u32,
            reason: u8,
        },
        Garbage {
            conn: usize,
            bytes: Vec<u8>,
        },
        Disconnect {
            conn: usize,
        },
        Wait {
            secs: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<bool>().prop_map(|counsellor| Op::Connect { counsellor }),
            (
                0..8usize,
                any::<bool>(),
                prop_oneof![Just(1u8), any::<u8>()]
            )
                .prop_map(|(conn, counsellor, version)| Op::Hello {
                    conn,
                    counsellor,
                    version
                }),
            (0..8usize, 0..4u32).prop_map(|(conn, chat)| Op::Forward { conn, chat }),
            (
                0..8usize,
                0..4u32,
                prop_oneof![Just(1u8), Just(2u8), any::<u8>()]
            )
                .prop_map(|(conn, chat, reason)| Op::End { conn, chat, reason }),
            (0..8usize, proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(conn, bytes)| Op::Garbage { conn, bytes }),
            (0..8usize).prop_map(|conn| Op::Disconnect { conn }),
            (0..15u64).prop_map(|secs| Op::Wait { secs }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Whatever endpoints send, in any order, the core never panics,
        /// never sends to a connection it closed, and every output decodes.
        #[test]
        fn the_core_survives_any_interleaving(ops in proptest::collection::vec(op(), 1..60)) {
            let mut h = Harness::new(Limits { max_queue: 3, ..Limits::default() });
            let mut conns: Vec<ConnId> = Vec::new();
            let mut closed = std::collections::HashSet::new();
            for op in ops {
                let pick = |i: usize| conns.get(i % conns.len().max(1)).copied();
                match op {
                    Op::Connect { counsellor: c } => {
                        let cred = if c { counsellor() } else { Credential::Anonymous };
                        conns.push(h.connect(cred));
                    }
                    Op::Hello { conn, counsellor, version } => if let Some(id) = pick(conn) {
                        let role = if counsellor { Role::Counsellor } else { Role::Client };
                        h.relay.handle_data(h.now, id, &Frame::Hello { version, role }.encode());
                    },
                    Op::Forward { conn, chat } => if let Some(id) = pick(conn) {
                        let mut bytes = vec![kind::FORWARD, 0x04, 0x0c];
                        bytes.extend_from_slice(&chat.to_be_bytes());
                        bytes.extend_from_slice(&[7u8; BLOB_LEN]);
                        h.relay.handle_data(h.now, id, &bytes);
                    },
                    Op::End { conn, chat, reason } => if let Some(id) = pick(conn) {
                        let mut bytes = vec![kind::END, 0, 5];
                        bytes.extend_from_slice(&chat.to_be_bytes());
                        bytes.push(reason);
                        h.relay.handle_data(h.now, id, &bytes);
                    },
                    Op::Garbage { conn, bytes } => if let Some(id) = pick(conn) {
                        h.relay.handle_data(h.now, id, &bytes);
                    },
                    Op::Disconnect { conn } => if let Some(id) = pick(conn) {
                        h.relay.handle_disconnect(h.now, id);
                        closed.insert(id);
                    },
                    Op::Wait { secs } => {
                        h.now += Duration::from_secs(secs);
                        h.relay.handle_timeout(h.now);
                    }
                }
                while let Some(out) = h.relay.poll_output() {
                    match out {
                        Output::Send { conn, bytes } => {
                            prop_assert!(!closed.contains(&conn), "sent to a closed connection");
                            let mut frames = Vec::new();
                            prop_assert!(FrameDecoder::default().push(&bytes, &mut frames).is_ok());
                        }
                        Output::Close { conn, .. } => {
                            prop_assert!(closed.insert(conn), "closed twice");
                        }
                    }
                }
                let (open, waiting) = h.relay.counts();
                prop_assert!(waiting <= 3 && waiting <= open);
            }
        }
    }
}
