//! The relay core driven with a virtual clock and no sockets: pairing,
//! routing, queue feedback, opening hours, capacity, transfer, end and
//! block, bad frames, and random interleavings.

mod harness;

use std::collections::BTreeMap;
use std::time::Duration;

use fluister::core::frame::{
    BLOB_LEN, Blob, ChatNumber, EndReason, Frame, FrameDecoder, Label, Refusal, Role, TopicId,
    TransferTarget, Unavailable, kind,
};
use fluister::core::hours::{OpeningHours, Range};
use fluister::core::limits::{Limits, Service};
use fluister::core::ratelimit::pow_solve;
use fluister::core::relay::{ConnId, Credential, Flow, Output};
use fluister::core::{CloseCode, Departure};
use harness::*;

#[test]
fn hello_is_answered_with_the_topics_and_languages() {
    let mut h = Harness::new(Limits::default());
    let y = h.connect(Credential::Anonymous);
    let outs = h.hello(y, Role::Client);
    let frames = frames_to(&outs, y);
    assert!(matches!(
        &frames[0],
        Frame::Welcome { version: 1, role: Role::Client, topics: 6, languages, pow }
            if *languages == vec![lang("nl"), lang("en")] && pow.difficulty == Limits::default().pow_min_difficulty
    ));
    assert_eq!(frames.len(), 7);
    assert!(
        matches!(&frames[3], Frame::Topic { id, label_en, .. } if id.get() == 3 && label_en.as_str().starts_with("Sextortion"))
    );
}

#[test]
fn clients_queue_in_order_and_see_their_position_change() {
    let mut h = Harness::new(Limits::default());
    let clients: Vec<ConnId> = (0..3)
        .map(|i| {
            let (c, outs) = h.client();
            assert_eq!(positions(&outs), vec![(c, i + 1)]);
            c
        })
        .collect();
    let (counsellor, outs) = h.counsellor("Sam");
    assert_eq!(paired(&outs), vec![clients[0], counsellor]);
    assert_eq!(positions(&outs), vec![(clients[1], 1), (clients[2], 2)]);

    // The counsellor ends the first chat and gets the next client in line.
    let outs = h.send(
        counsellor,
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
    assert_eq!(paired(&outs), vec![clients[1], counsellor]);
    assert_eq!(positions(&outs), vec![(clients[2], 1)]);
}

#[test]
fn both_sides_get_the_same_pairing_id_and_forwarding_goes_both_ways() {
    let mut h = Harness::new(Limits::default());
    let (c, _) = h.counsellor("Sam");
    let (y, outs) = h.client();
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
fn the_clients_end_is_immediate_and_frees_the_counsellor() {
    let mut h = Harness::new(Limits::default());
    let (y, c) = h.pair();
    let outs = h.send(
        y,
        Frame::End {
            chat: chat(1),
            reason: EndReason::UserEnded,
        },
    );
    assert_eq!(
        frames_to(&outs, c),
        vec![Frame::End {
            chat: chat(1),
            reason: EndReason::UserEnded
        }]
    );
    // Closed at once, without flushing anything still queued for it.
    assert!(outs.contains(&Out::Close(y, CloseCode::NoError, false)));
    assert!(frames_to(&outs, y).is_empty());
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
    let (y2, outs) = h.client();
    assert_eq!(paired(&outs), vec![y2, c]);
}

#[test]
fn a_counsellor_can_end_and_block_an_abusive_chat() {
    let mut h = Harness::new(Limits::default());
    let (y, c) = h.pair();
    let outs = h.send(
        c,
        Frame::End {
            chat: chat(1),
            reason: EndReason::Blocked,
        },
    );
    assert_eq!(
        frames_to(&outs, y),
        vec![Frame::End {
            chat: chat(1),
            reason: EndReason::Blocked
        }]
    );
    // The blocked session's connection is closed: it can never send again.
    assert!(outs.contains(&Out::Close(y, CloseCode::NoError, true)));
    h.relay.handle_data(
        h.now,
        y,
        &Frame::Forward {
            chat: chat(1),
            blob: blob(1),
        }
        .encode(),
    );
    assert_eq!(h.drain(), vec![]);
    // A client cannot "block" a counsellor.
    let (y2, _) = h.client();
    let outs = h.send(
        y2,
        Frame::End {
            chat: chat(1),
            reason: EndReason::Blocked,
        },
    );
    assert!(outs.contains(&Out::Close(y2, CloseCode::UnexpectedFrame, true)));
}

#[test]
fn a_disconnect_on_either_side_ends_the_chat_for_the_other_after_the_resume_window() {
    for client_drops in [true, false] {
        let mut h = Harness::new(Limits::default());
        let (y, c) = h.pair();
        let (gone, stays) = if client_drops { (y, c) } else { (c, y) };
        h.relay.handle_disconnect(h.now, gone, Departure::Lost);
        let outs = h.drain();
        assert_eq!(
            frames_to(&outs, stays),
            vec![Frame::PeerAway { chat: chat(1) }]
        );
        // Frames for the absent side are held, not lost.
        assert_eq!(
            h.send(
                stays,
                Frame::Forward {
                    chat: chat(1),
                    blob: blob(4)
                }
            ),
            vec![]
        );
        assert_eq!(h.wait(119), vec![]);
        let outs = h.wait(1);
        assert_eq!(
            frames_to(&outs, stays),
            vec![Frame::End {
                chat: chat(1),
                reason: EndReason::PeerDisconnected
            }]
        );
        if client_drops {
            assert_eq!(h.relay.counts(), (1, 0), "the counsellor stays signed in");
        } else {
            // A young person whose chat is over is let go after the END.
            assert!(outs.contains(&Out::Close(stays, CloseCode::NoError, true)));
            assert_eq!(h.relay.counts(), (0, 0));
        }
    }
}

/// PAIRED's resume capability for `conn` among `outs`.
fn capability_in(outs: &[Out], conn: ConnId) -> fluister::core::frame::ResumeCapability {
    outs.iter()
        .find_map(|o| match o {
            Out::Frame(id, Frame::Paired { resume, .. }) if *id == conn => Some(*resume),
            _ => None,
        })
        .expect("a PAIRED")
}

#[test]
fn a_client_resumes_its_chat_on_a_new_connection_and_gets_what_was_held() {
    let mut h = Harness::new(Limits::default());
    let (c, _) = h.counsellor("Sam");
    let (y, outs) = h.client();
    let cap = capability_in(&outs, y);
    h.hs1(y, 1);
    h.relay.handle_disconnect(h.now, y, Departure::Lost);
    h.drain();
    h.send(
        c,
        Frame::Forward {
            chat: chat(1),
            blob: blob(1),
        },
    );
    h.send(
        c,
        Frame::Forward {
            chat: chat(1),
            blob: blob(2),
        },
    );
    h.wait(60);
    let y2 = h.connect(Credential::Anonymous);
    let outs = h.send(y2, Frame::Resume { capability: cap });
    assert_eq!(
        frames_to(&outs, y2),
        vec![
            Frame::Resumed { chat: chat(1) },
            Frame::Forward {
                chat: chat(1),
                blob: blob(1)
            },
            Frame::Forward {
                chat: chat(1),
                blob: blob(2)
            },
        ]
    );
    assert_eq!(frames_to(&outs, c), vec![Frame::PeerBack { chat: chat(1) }]);
    // The chat carries on both ways; the window no longer applies.
    let outs = h.send(
        y2,
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
    assert!(frames_to(&h.wait(600), c).is_empty());
    // Presented again while the chat looks connected (the first new
    // connection may have died without the relay hearing), it moves the chat
    // to the newest connection and closes the old one.
    let again = h.connect(Credential::Anonymous);
    let outs = h.send(again, Frame::Resume { capability: cap });
    assert!(outs.contains(&Out::Close(y2, CloseCode::NoError, false)));
    assert!(frames_to(&outs, again).contains(&Frame::Resumed { chat: chat(1) }));
    let outs = h.send(
        c,
        Frame::Forward {
            chat: chat(1),
            blob: blob(9),
        },
    );
    assert_eq!(
        outs,
        vec![Out::Frame(
            again,
            Frame::Forward {
                chat: chat(1),
                blob: blob(9)
            }
        )]
    );
    // Once the chat has ended, the capability is worth nothing.
    h.send(
        c,
        Frame::End {
            chat: chat(1),
            reason: EndReason::UserEnded,
        },
    );
    let late = h.connect(Credential::Anonymous);
    let outs = h.send(late, Frame::Resume { capability: cap });
    assert_eq!(
        outs,
        vec![
            Out::Frame(late, Frame::ResumeFailed),
            Out::Close(late, CloseCode::NoError, true)
        ]
    );
}

#[test]
fn a_counsellor_resumes_after_signing_in_again() {
    let mut h = Harness::new(Limits::default());
    let (c, outs) = h.counsellor("Sam");
    let _ = outs;
    let (y, outs) = h.client();
    let cap = capability_in(&outs, c);
    h.relay.handle_disconnect(h.now, c, Departure::Lost);
    h.drain();
    // Another counsellor's credential cannot take Sam's chat.
    let (noor, _) = h.counsellor("Noor");
    let outs = h.send(noor, Frame::Resume { capability: cap });
    assert_eq!(frames_to(&outs, noor), vec![Frame::ResumeFailed]);
    // Nor can an anonymous connection.
    let anon = h.connect(Credential::Anonymous);
    let outs = h.send(anon, Frame::Resume { capability: cap });
    assert_eq!(frames_to(&outs, anon), vec![Frame::ResumeFailed]);
    // Sam, signed in again, can.
    let c2 = h.connect(Credential::Counsellor {
        pseudonym: "Sam".into(),
    });
    h.hello(c2, Role::Counsellor);
    let outs = h.send(c2, Frame::Resume { capability: cap });
    assert_eq!(frames_to(&outs, c2)[0], Frame::Resumed { chat: chat(1) });
    assert_eq!(frames_to(&outs, y), vec![Frame::PeerBack { chat: chat(1) }]);
    let outs = h.send(
        y,
        Frame::Forward {
            chat: chat(1),
            blob: blob(8),
        },
    );
    assert_eq!(
        outs,
        vec![Out::Frame(
            c2,
            Frame::Forward {
                chat: chat(1),
                blob: blob(8)
            }
        )]
    );
}

#[test]
fn wrong_expired_and_unknown_capabilities_get_the_same_answer() {
    let mut h = Harness::new(Limits::default());
    let (c, _) = h.counsellor("Sam");
    let (y, outs) = h.client();
    let cap = capability_in(&outs, y);
    h.relay.handle_disconnect(h.now, y, Departure::Lost);
    h.drain();
    let mut wrong = cap;
    wrong.0[0] ^= 1;
    let answer = |h: &mut Harness, capability| {
        let x = h.connect(Credential::Anonymous);
        let outs = h.send(x, Frame::Resume { capability });
        outs.into_iter()
            .map(|o| match o {
                Out::Frame(_, f) => format!("{f:?}"),
                Out::Close(_, code, flush) => format!("close {code:?} {flush}"),
            })
            .collect::<Vec<_>>()
    };
    let for_wrong = answer(&mut h, wrong);
    let for_unknown = answer(&mut h, fluister::core::frame::ResumeCapability([7; 32]));
    h.wait(121);
    let for_expired = answer(&mut h, cap);
    assert_eq!(for_wrong, for_unknown);
    assert_eq!(for_wrong, for_expired);
    assert_eq!(
        for_wrong,
        vec!["ResumeFailed".to_owned(), "close NoError true".to_owned()]
    );
    let _ = c;
}

/// JOINED's queue ticket for `conn` among `outs`.
fn ticket_in(outs: &[Out], conn: ConnId) -> fluister::core::frame::ResumeCapability {
    outs.iter()
        .find_map(|o| match o {
            Out::Frame(id, Frame::Joined { resume }) if *id == conn => Some(*resume),
            _ => None,
        })
        .expect("a JOINED")
}

#[test]
fn a_waiting_client_whose_connection_drops_gets_its_place_back() {
    let mut h = Harness::new(Limits::default());
    let (a, outs) = h.client();
    assert_eq!(
        frames_to(&outs, a)[1..],
        [Frame::Queued {
            position: 1,
            estimated_wait_secs: None
        }],
        "JOINED comes first"
    );
    let ticket = ticket_in(&outs, a);
    let (b, _) = h.client();
    h.relay.handle_disconnect(h.now, a, Departure::Lost);
    assert_eq!(positions(&h.drain()), vec![(b, 1)]);
    h.wait(60);
    let (c, _) = h.client();
    // Back within the window: ahead of everyone who joined after it.
    let a2 = h.connect(Credential::Anonymous);
    let outs = h.send(a2, Frame::Resume { capability: ticket });
    assert_eq!(positions(&outs), vec![(a2, 1), (b, 2), (c, 3)]);
    assert_eq!(h.relay.counts(), (3, 3));
    let (sam, outs) = h.counsellor("Sam");
    assert_eq!(paired(&outs), vec![a2, sam]);
    // The ticket does not outlive the wait: once paired and heard from, it
    // leads nowhere.
    h.send(
        a2,
        Frame::Forward {
            chat: chat(1),
            blob: blob(1),
        },
    );
    let late = h.connect(Credential::Anonymous);
    assert_eq!(
        h.send(late, Frame::Resume { capability: ticket }),
        vec![
            Out::Frame(late, Frame::ResumeFailed),
            Out::Close(late, CloseCode::NoError, true)
        ]
    );
}

#[test]
fn a_queue_ticket_expires_with_the_resume_window_like_any_capability() {
    let mut h = Harness::new(Limits::default());
    let (a, outs) = h.client();
    let ticket = ticket_in(&outs, a);
    h.relay.handle_disconnect(h.now, a, Departure::Lost);
    h.drain();
    h.wait(121);
    let x = h.connect(Credential::Anonymous);
    let expired = h.send(x, Frame::Resume { capability: ticket });
    let y = h.connect(Credential::Anonymous);
    let unknown = h.send(
        y,
        Frame::Resume {
            capability: fluister::core::frame::ResumeCapability([7; 32]),
        },
    );
    assert_eq!(
        expired,
        vec![
            Out::Frame(x, Frame::ResumeFailed),
            Out::Close(x, CloseCode::NoError, true)
        ]
    );
    assert_eq!(
        unknown,
        vec![
            Out::Frame(y, Frame::ResumeFailed),
            Out::Close(y, CloseCode::NoError, true)
        ]
    );
    assert_eq!(h.relay.counts(), (0, 0));
}

#[test]
fn a_ticket_takes_the_place_of_a_connection_that_died_silently() {
    let mut h = Harness::new(Limits::default());
    let (a, outs) = h.client();
    let ticket = ticket_in(&outs, a);
    let (b, _) = h.client();
    // The relay never heard that `a` died; the client comes back anyway.
    let a2 = h.connect(Credential::Anonymous);
    let outs = h.send(a2, Frame::Resume { capability: ticket });
    assert!(outs.contains(&Out::Close(a, CloseCode::NoError, false)));
    assert_eq!(positions(&outs), vec![(a2, 1)], "b keeps its place behind");
    assert_eq!(h.relay.counts(), (2, 2));
    let _ = b;
}

#[test]
fn a_client_paired_while_its_connection_failed_gets_the_chat_with_its_ticket() {
    let mut h = Harness::new(Limits::default());
    let (y, outs) = h.client();
    let ticket = ticket_in(&outs, y);
    // A counsellor comes; PAIRED goes to a connection that is already dead.
    let (c, outs) = h.counsellor("Sam");
    assert_eq!(paired(&outs), vec![y, c]);
    let pairing = |outs: &[Out], conn| {
        outs.iter().find_map(|o| match o {
            Out::Frame(id, Frame::Paired { pairing_id, .. }) if *id == conn => Some(*pairing_id),
            _ => None,
        })
    };
    let pairing_id = pairing(&outs, c).unwrap();
    let y2 = h.connect(Credential::Anonymous);
    let outs = h.send(y2, Frame::Resume { capability: ticket });
    assert!(outs.contains(&Out::Close(y, CloseCode::NoError, false)));
    assert_eq!(
        pairing(&outs, y2),
        Some(pairing_id),
        "the same chat, PAIRED again"
    );
    let cap = capability_in(&outs, y2);
    assert_eq!(
        frames_to(&outs, c),
        vec![
            Frame::PeerAway { chat: chat(1) },
            Frame::PeerBack { chat: chat(1) }
        ]
    );
    // The handshake goes through on the new connection.
    let outs = h.send(
        y2,
        Frame::Forward {
            chat: chat(1),
            blob: blob(1),
        },
    );
    assert_eq!(
        outs,
        vec![Out::Frame(
            c,
            Frame::Forward {
                chat: chat(1),
                blob: blob(1)
            }
        )]
    );
    // The new PAIRED's capability resumes the chat from now on.
    h.relay.handle_disconnect(h.now, y2, Departure::Lost);
    h.drain();
    let y3 = h.connect(Credential::Anonymous);
    let outs = h.send(y3, Frame::Resume { capability: cap });
    assert_eq!(frames_to(&outs, y3), vec![Frame::Resumed { chat: chat(1) }]);
}

#[test]
fn a_side_that_stays_away_too_long_with_too_much_held_ends_the_chat() {
    let mut h = Harness::new(Limits {
        max_held_frames: 2,
        ..Limits::default()
    });
    let (y, c) = h.pair();
    h.relay.handle_disconnect(h.now, y, Departure::Lost);
    h.drain();
    h.send(
        c,
        Frame::Forward {
            chat: chat(1),
            blob: blob(1),
        },
    );
    h.send(
        c,
        Frame::Forward {
            chat: chat(1),
            blob: blob(2),
        },
    );
    let outs = h.send(
        c,
        Frame::Forward {
            chat: chat(1),
            blob: blob(3),
        },
    );
    assert_eq!(
        frames_to(&outs, c),
        vec![Frame::End {
            chat: chat(1),
            reason: EndReason::PeerDisconnected
        }]
    );
}

#[test]
fn a_client_leaving_the_queue_moves_the_others_up() {
    let mut h = Harness::new(Limits::default());
    let (a, _) = h.client();
    let (b, _) = h.client();
    h.relay.handle_disconnect(h.now, a, Departure::Lost);
    assert_eq!(positions(&h.drain()), vec![(b, 1)]);
    assert_eq!(h.relay.counts(), (1, 1));
}

#[test]
fn a_full_queue_answers_busy_at_once() {
    let mut h = Harness::new(Limits {
        max_queue: 2,
        ..Limits::default()
    });
    h.client();
    h.client();
    let (c, outs) = h.client();
    assert_eq!(
        outs,
        vec![
            Out::Frame(
                c,
                Frame::Unavailable {
                    reason: Unavailable::Busy,
                    next_open: None
                }
            ),
            Out::Close(c, CloseCode::NoError, true),
        ]
    );
}

#[test]
fn the_maximum_wait_ends_the_wait_with_a_clear_answer() {
    let mut h = Harness::new(Limits {
        max_wait: Duration::from_secs(600),
        ..Limits::default()
    });
    let (y, _) = h.client();
    let outs = h.wait(599);
    assert!(!outs.iter().any(|o| matches!(o, Out::Close(..))));
    let outs = h.wait(1);
    assert_eq!(
        frames_to(&outs, y),
        vec![Frame::Unavailable {
            reason: Unavailable::WaitExceeded,
            next_open: None
        }]
    );
    assert!(outs.contains(&Out::Close(y, CloseCode::NoError, true)));
    assert_eq!(h.relay.counts(), (0, 0));
}

#[test]
fn queue_updates_carry_an_estimate_and_come_at_least_every_30_seconds() {
    let mut h = Harness::new(Limits::default());
    let (c, _) = h.counsellor("Sam");
    // Pairings 120 s apart teach the estimate the pace.
    for n in 1..=2 {
        let (y, _) = h.client();
        h.hs1(y, 1);
        h.wait(120);
        h.send(
            c,
            Frame::End {
                chat: chat(n),
                reason: EndReason::UserEnded,
            },
        );
    }
    let (first, outs) = h.client();
    assert_eq!(paired(&outs).len(), 2);
    h.hs1(first, 1);
    let (waiting, outs) = h.client();
    assert_eq!(
        frames_to(&outs, waiting).last(),
        Some(&Frame::Queued {
            position: 1,
            estimated_wait_secs: Some(120)
        })
    );
    // Nothing changes for 29 s: silence. At 30 s: the same news again.
    assert!(frames_to(&h.wait(29), waiting).is_empty());
    assert_eq!(
        frames_to(&h.wait(1), waiting),
        vec![Frame::Queued {
            position: 1,
            estimated_wait_secs: Some(120)
        }]
    );
}

#[test]
fn routing_prefers_topic_and_language_and_falls_back_after_the_wait() {
    let mut h = Harness::new(Limits {
        topic_fallback: Duration::from_secs(120),
        ..Limits::default()
    });
    let (exploitation_nl, _) = h.counsellor_with("Noor", 2, &[1, 2], &["nl"]);
    let (home_en, _) = h.counsellor_with("Alex", 2, &[5], &["nl", "en"]);

    let (a, outs) = h.client_for(Some(2), Some("nl"));
    assert_eq!(paired(&outs), vec![a, exploitation_nl]);
    let (b, outs) = h.client_for(Some(5), Some("nl"));
    assert_eq!(paired(&outs), vec![b, home_en]);
    // Sextortion in English: nobody serves topic 3; wait, then any English speaker.
    let (c, outs) = h.client_for(Some(3), Some("en"));
    assert_eq!(paired(&outs), vec![]);
    assert_eq!(paired(&h.wait(119)), vec![]);
    assert_eq!(paired(&h.wait(1)), vec![c, home_en]);
    // No language preference, no topic: anyone with room.
    let (d, outs) = h.client();
    assert_eq!(paired(&outs), vec![d, exploitation_nl]);
}

#[test]
fn new_chats_go_to_the_least_loaded_counsellor_within_capacity() {
    let mut h = Harness::new(Limits::default());
    let (a, _) = h.counsellor_with("A", 3, &[], &[]);
    let (b, _) = h.counsellor_with("B", 1, &[], &[]);
    let mut got = Vec::new();
    for _ in 0..4 {
        let (_, outs) = h.client();
        got.extend(paired(&outs).into_iter().skip(1));
    }
    // A (0) → B (0, paired less recently... B never) → A (1) → A (2); B is full at 1.
    assert_eq!(got, vec![a, b, a, a]);
    let (y, outs) = h.client();
    assert_eq!(paired(&outs), vec![], "everyone is at capacity");
    assert_eq!(positions(&outs), vec![(y, 1)]);
    // Capacity can be raised live.
    let outs = h.status(b, true, 2, &[], &[]);
    assert_eq!(paired(&outs), vec![y, b]);
}

#[test]
fn an_away_counsellor_gets_no_new_chats_but_keeps_open_ones() {
    let mut h = Harness::new(Limits::default());
    let (c, _) = h.counsellor_with("Sam", 2, &[], &[]);
    let (y, _) = h.client();
    h.status(c, false, 2, &[], &[]);
    let (y2, outs) = h.client();
    assert_eq!(paired(&outs), vec![]);
    // The open chat still works.
    let outs = h.send(
        y,
        Frame::Forward {
            chat: chat(1),
            blob: blob(1),
        },
    );
    assert_eq!(frames_to(&outs, c).len(), 1);
    let outs = h.status(c, true, 2, &[], &[]);
    assert_eq!(paired(&outs), vec![y2, c]);
}

#[test]
fn counsellors_see_queue_counts_per_topic_only() {
    let mut h = Harness::new(Limits::default());
    let (c, _) = h.counsellor_with("Sam", 1, &[], &["en"]);
    h.client_for(Some(2), Some("nl"));
    h.client_for(Some(2), Some("nl"));
    let (_, mut outs) = h.client_for(None, Some("nl"));
    // Arrivals reach counsellors at most once a second.
    outs.extend(h.wait_for(Limits::QUEUE_STATS_INTERVAL));
    assert_eq!(
        queue_stats_to(&outs, c),
        vec![vec![(None, 1), (Some(topic(2)), 2)]]
    );
}

/// PROTOCOL.md §7.3, "Queue feedback".
#[test]
fn arrivals_reach_counsellors_at_most_once_a_second_and_departures_at_once() {
    let mut h = Harness::new(Limits::default());
    // Sam speaks English only: the Dutch speakers below keep waiting.
    let (sam, _) = h.counsellor_with("Sam", 1, &[], &["en"]);
    let stats = |outs: &[Out]| queue_stats_to(outs, sam);
    h.wait(1);
    let (first, outs) = h.client_for(None, Some("nl"));
    assert_eq!(stats(&outs), vec![vec![(None, 1)]], "the first at once");
    let (leaving, outs) = h.client_for(None, Some("nl"));
    assert_eq!(stats(&outs), Vec::<Vec<_>>::new());
    let (_, outs) = h.client_for(None, Some("nl"));
    assert_eq!(stats(&outs), Vec::<Vec<_>>::new());
    let outs = h.wait_for(Limits::QUEUE_STATS_INTERVAL);
    assert_eq!(stats(&outs), vec![vec![(None, 3)]], "together, a second on");
    let (_, outs) = h.client_for(None, Some("nl"));
    assert_eq!(stats(&outs), Vec::<Vec<_>>::new());
    h.relay.handle_finish(h.now, leaving);
    let outs = h.drain();
    assert_eq!(
        stats(&outs),
        Vec::<Vec<_>>::new(),
        "3 wait, as Sam was told"
    );
    h.relay.handle_finish(h.now, first);
    let outs = h.drain();
    assert_eq!(stats(&outs), vec![vec![(None, 2)]], "fewer, at once");
    assert_eq!(stats(&h.wait(5)), Vec::<Vec<_>>::new(), "nothing new");
}

#[test]
fn a_status_with_an_unknown_topic_is_refused() {
    let mut h = Harness::new(Limits::default());
    let c = h.connect(Credential::Counsellor {
        pseudonym: "Sam".into(),
    });
    h.hello(c, Role::Counsellor);
    let outs = h.status(c, true, 1, &[99], &[]);
    assert_eq!(outs, vec![Out::Close(c, CloseCode::MalformedFrame, true)]);
    let y = h.connect(Credential::Anonymous);
    h.hello(y, Role::Client);
    let outs = h.send(
        y,
        Frame::Join {
            topic: None,
            language: Some(lang("de")),
            pow_solution: [0; 8],
        },
    );
    assert_eq!(outs, vec![Out::Close(y, CloseCode::MalformedFrame, true)]);
}

fn weekday_hours(exceptions: BTreeMap<chrono::NaiveDate, Vec<Range>>) -> Service {
    let day = vec![Range::parse("09:00-17:00").unwrap()];
    let week = [
        day.clone(),
        day.clone(),
        day.clone(),
        day.clone(),
        day,
        vec![],
        vec![],
    ];
    Service {
        hours: OpeningHours::new("Europe/Amsterdam", week, exceptions).unwrap(),
        ..Service::default()
    }
}

#[test]
fn outside_opening_hours_nobody_is_queued_and_the_next_opening_is_told() {
    let mut h = Harness::with_service(Limits::default(), weekday_hours(BTreeMap::new()));
    h.now.unix = MONDAY_10AM - 2 * 3600; // 08:00
    let (y, outs) = h.client();
    assert_eq!(
        frames_to(&outs, y),
        vec![Frame::Unavailable {
            reason: Unavailable::Closed,
            next_open: Some(MONDAY_10AM as u64 - 3600),
        }]
    );
    assert!(outs.contains(&Out::Close(y, CloseCode::NoError, true)));
    assert_eq!(h.relay.counts(), (0, 0));
    // Counsellors can still sign in.
    let (c, outs) = h.counsellor("Sam");
    assert!(
        frames_to(&outs, c)
            .iter()
            .any(|f| matches!(f, Frame::QueueStats { .. }))
            || outs.is_empty()
    );
    assert_eq!(h.relay.counts(), (1, 0));
}

#[test]
fn a_holiday_is_closed_all_day() {
    let mut exceptions = BTreeMap::new();
    exceptions.insert(OpeningHours::parse_date("2027-01-04").unwrap(), vec![]);
    let mut h = Harness::with_service(Limits::default(), weekday_hours(exceptions));
    let (y, outs) = h.client(); // Monday 10:00, but a holiday
    assert_eq!(
        frames_to(&outs, y),
        vec![Frame::Unavailable {
            reason: Unavailable::Closed,
            next_open: Some(MONDAY_10AM as u64 + 23 * 3600), // Tuesday 09:00
        }]
    );
}

#[test]
fn a_chat_running_at_closing_time_is_not_cut_off() {
    let mut h = Harness::with_service(Limits::default(), weekday_hours(BTreeMap::new()));
    h.now.unix = MONDAY_10AM + 7 * 3600 - 60; // 16:59
    let (y, c) = h.pair();
    h.wait(3600); // 17:59, closed
    let outs = h.send(
        y,
        Frame::Forward {
            chat: chat(1),
            blob: blob(7),
        },
    );
    assert_eq!(
        outs,
        vec![Out::Frame(
            c,
            Frame::Forward {
                chat: chat(1),
                blob: blob(7)
            }
        )]
    );
    let (late, outs) = h.client();
    assert!(matches!(
        frames_to(&outs, late)[..],
        [Frame::Unavailable {
            reason: Unavailable::Closed,
            ..
        }]
    ));
}

#[test]
fn a_transfer_to_a_colleague_pairs_the_client_anew() {
    let mut h = Harness::new(Limits::default());
    let (y, sam) = h.pair();
    let (noor, _) = h.counsellor("Noor");
    let outs = h.send(
        sam,
        Frame::Transfer {
            chat: chat(1),
            target: TransferTarget::Colleague(Label::new("Noor").unwrap()),
        },
    );
    // The client: END(TRANSFERRED), then a new chat with a new pairing id.
    let to_client = frames_to(&outs, y);
    assert_eq!(
        to_client[0],
        Frame::End {
            chat: chat(1),
            reason: EndReason::Transferred
        }
    );
    assert!(matches!(to_client[1], Frame::Paired { chat: c, .. } if c == chat(2)));
    assert!(
        frames_to(&outs, noor)
            .iter()
            .any(|f| matches!(f, Frame::Paired { .. }))
    );
    assert_eq!(
        without_presence(frames_to(&outs, sam)),
        vec![Frame::End {
            chat: chat(1),
            reason: EndReason::Transferred
        }]
    );
    // Sam's chat is gone: his frames for it are dropped; Noor's arrive.
    assert_eq!(
        h.send(
            sam,
            Frame::Forward {
                chat: chat(1),
                blob: blob(1)
            }
        ),
        vec![]
    );
    let outs = h.send(
        noor,
        Frame::Forward {
            chat: chat(1),
            blob: blob(2),
        },
    );
    assert_eq!(
        outs,
        vec![Out::Frame(
            y,
            Frame::Forward {
                chat: chat(2),
                blob: blob(2)
            }
        )]
    );
    // Sam is free again for the queue.
    let (y2, outs) = h.client();
    assert_eq!(paired(&outs), vec![y2, sam]);
}

#[test]
fn a_transfer_to_an_away_full_or_unknown_colleague_is_refused_and_the_chat_stays() {
    let mut h = Harness::new(Limits::default());
    let (y, sam) = h.pair();
    let (noor, _) = h.counsellor("Noor");
    h.status(noor, false, 1, &[], &[]);
    for (name, reason) in [
        ("Noor", Refusal::ColleagueAway),
        ("Kim", Refusal::UnknownColleague),
    ] {
        let outs = h.send(
            sam,
            Frame::Transfer {
                chat: chat(1),
                target: TransferTarget::Colleague(Label::new(name).unwrap()),
            },
        );
        assert_eq!(
            outs,
            vec![Out::Frame(
                sam,
                Frame::TransferRefused {
                    chat: chat(1),
                    reason
                }
            )]
        );
    }
    h.status(noor, true, 1, &[], &[]);
    let (_, outs) = h.client(); // Noor takes this one and is full
    assert_eq!(paired(&outs).len(), 2);
    let outs = h.send(
        sam,
        Frame::Transfer {
            chat: chat(1),
            target: TransferTarget::Colleague(Label::new("Noor").unwrap()),
        },
    );
    assert_eq!(
        outs,
        vec![Out::Frame(
            sam,
            Frame::TransferRefused {
                chat: chat(1),
                reason: Refusal::ColleagueFull
            }
        )]
    );
    // The chat is still with Sam.
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
            sam,
            Frame::Forward {
                chat: chat(1),
                blob: blob(3)
            }
        )]
    );
}

#[test]
fn a_transfer_back_to_the_queue_goes_ahead_of_newcomers() {
    let mut h = Harness::new(Limits::default());
    let (y, sam) = h.pair();
    let (newcomer, _) = h.client();
    h.status(sam, false, 1, &[], &[]); // Sam steps away after handing over
    let outs = h.send(
        sam,
        Frame::Transfer {
            chat: chat(1),
            target: TransferTarget::Queue,
        },
    );
    assert_eq!(
        frames_to(&outs, y)[0],
        Frame::End {
            chat: chat(1),
            reason: EndReason::Transferred
        }
    );
    assert_eq!(positions(&outs), vec![(y, 1), (newcomer, 2)]);
    let (noor, outs) = h.counsellor("Noor");
    assert_eq!(paired(&outs), vec![y, noor]);
}

#[test]
fn a_stranger_cannot_sign_in_as_counsellor() {
    let mut h = Harness::new(Limits::default());
    let x = h.connect(Credential::Anonymous);
    assert_eq!(
        h.hello(x, Role::Counsellor),
        vec![Out::Close(x, CloseCode::NotAuthorized, true)]
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
    assert_eq!(
        outs,
        vec![Out::Close(x, CloseCode::UnsupportedVersion, true)]
    );
}

#[test]
fn no_hello_in_time_closes_the_connection() {
    let mut h = Harness::new(Limits::default());
    let x = h.connect(Credential::Anonymous);
    let deadline = h.relay.poll_timeout().unwrap();
    assert_eq!(deadline, h.now.mono + Limits::default().hello_timeout);
    assert_eq!(h.wait(9), vec![]);
    assert_eq!(h.wait(1), vec![Out::Close(x, CloseCode::Timeout, true)]);
    assert_eq!(h.relay.poll_timeout(), None);
}

#[test]
fn bad_frames_close_only_their_own_connection() {
    let mut h = Harness::new(Limits::default());
    let (y, c) = h.pair();
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
            Frame::Queued {
                position: 1,
                estimated_wait_secs: None,
            }
            .encode(),
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
            Frame::Status {
                available: true,
                capacity: 1,
                topics: vec![],
                languages: vec![],
            }
            .encode(),
            CloseCode::UnexpectedFrame,
        ),
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
        let (bad, _) = h.client_for(None, Some("nl"));
        h.relay.handle_data(h.now, bad, &bytes);
        let outs = h.drain();
        assert!(
            outs.contains(&Out::Close(bad, code, true)),
            "case {i}: {outs:?}"
        );
    }
    // Before HELLO, anything but HELLO is out of state.
    let early = h.connect(Credential::Anonymous);
    let outs = h.send(
        early,
        Frame::Join {
            topic: None,
            language: None,
            pow_solution: [0; 8],
        },
    );
    assert_eq!(
        outs,
        vec![Out::Close(early, CloseCode::UnexpectedFrame, true)]
    );
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
    let (y, c) = h.pair();
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
    assert!(outs.contains(&Out::Close(y, CloseCode::ShuttingDown, true)));
    assert!(outs.contains(&Out::Close(c, CloseCode::ShuttingDown, true)));
    assert_eq!(h.relay.counts(), (0, 0));
    assert!(
        h.relay
            .handle_connect(h.now, Credential::Anonymous)
            .is_err()
    );
}

mod random_input {
    use super::*;
    use fluister::core::frame::ChatNumber;
    use fluister::core::frame::ResumeCapability;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    use std::cell::Cell;
    use std::collections::{HashMap, HashSet};

    #[derive(Debug, Clone)]
    enum Op {
        /// A bare connection.
        Connect {
            counsellor: bool,
        },
        /// A well-behaved endpoint: HELLO in its role, then JOIN (a client)
        /// or STATUS available (a counsellor), so that chats happen.
        Arrive {
            counsellor: bool,
            capacity: u8,
            topic: u16,
        },
        Hello {
            conn: usize,
            counsellor: bool,
            version: u8,
        },
        Join {
            conn: usize,
            topic: u16,
        },
        Proof {
            conn: usize,
            solution: [u8; 8],
        },
        Status {
            conn: usize,
            available: bool,
            capacity: u8,
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
        Transfer {
            conn: usize,
            chat: u32,
            to_queue: bool,
        },
        /// RESUME with a capability the relay handed out, or a made-up one.
        Resume {
            conn: usize,
            capability: usize,
            made_up: Option<[u8; 32]>,
        },
        Garbage {
            conn: usize,
            bytes: Vec<u8>,
        },
        Finish {
            conn: usize,
        },
        Disconnect {
            conn: usize,
            departure: Departure,
        },
        Revoke {
            conn: usize,
        },
        Wait {
            secs: u64,
        },
        Shutdown,
    }

    fn departure() -> impl Strategy<Value = Departure> {
        prop_oneof![
            Just(Departure::Lost),
            Just(Departure::Left(EndReason::UserEnded)),
            Just(Departure::Left(EndReason::SecurityFailure)),
            Just(Departure::Left(EndReason::PeerDisconnected)),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        let conn = 0..8usize;
        prop_oneof![
            10 => any::<bool>().prop_map(|counsellor| Op::Connect { counsellor }),
            40 => (any::<bool>(), 1..4u8, 0..3u16).prop_map(|(counsellor, capacity, topic)| Op::Arrive {
                counsellor,
                capacity,
                topic
            }),
            10 => (conn.clone(), any::<bool>(), prop_oneof![Just(1u8), any::<u8>()])
                .prop_map(|(conn, counsellor, version)| Op::Hello { conn, counsellor, version }),
            10 => (conn.clone(), 0..8u16).prop_map(|(conn, topic)| Op::Join { conn, topic }),
            5 => (conn.clone(), any::<[u8; 8]>()).prop_map(|(conn, solution)| Op::Proof { conn, solution }),
            10 => (conn.clone(), any::<bool>(), 0..4u8)
                .prop_map(|(conn, available, capacity)| Op::Status { conn, available, capacity }),
            40 => (conn.clone(), prop_oneof![3 => Just(1u32), 1 => 0..4u32]).prop_map(|(conn, chat)| Op::Forward { conn, chat }),
            10 => (conn.clone(), 0..4u32, prop_oneof![Just(1u8), Just(2u8), Just(3u8), any::<u8>()])
                .prop_map(|(conn, chat, reason)| Op::End { conn, chat, reason }),
            5 => (conn.clone(), 1..4u32, any::<bool>())
                .prop_map(|(conn, chat, to_queue)| Op::Transfer { conn, chat, to_queue }),
            10 => (conn.clone(), 0..8usize, proptest::option::of(any::<[u8; 32]>()))
                .prop_map(|(conn, capability, made_up)| Op::Resume { conn, capability, made_up }),
            5 => (conn.clone(), proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(conn, bytes)| Op::Garbage { conn, bytes }),
            5 => conn.clone().prop_map(|conn| Op::Finish { conn }),
            10 => (conn.clone(), departure()).prop_map(|(conn, departure)| Op::Disconnect { conn, departure }),
            5 => conn.prop_map(|conn| Op::Revoke { conn }),
            10 => (0..200u64).prop_map(|secs| Op::Wait { secs }),
            1 => Just(Op::Shutdown),
        ]
    }

    /// What one case reached.
    #[derive(Default)]
    struct Reached {
        paired: bool,
        forwarded: bool,
        late_pairing: bool,
    }

    /// Runs one case; with `router_delay`, against a router that answers
    /// that much later.
    fn run(ops: Vec<Op>, router_delay: Option<Duration>) -> Result<Reached, TestCaseError> {
        let limits = Limits {
            max_queue: 3,
            max_wait: Duration::from_secs(600),
            pow_min_difficulty: 0,
            pow_max_difficulty: 0,
            queue_rent_interval: Some(Duration::from_secs(60)),
            ..Limits::default()
        };
        let mut h = match router_delay {
            None => Harness::new(limits),
            Some(delay) => Harness::with_slow_router(limits, delay),
        };
        // The chats each young person's connection is in.
        let mut client_chats: HashMap<ConnId, HashSet<ChatNumber>> = HashMap::new();
        let mut counsellors = HashSet::new();
        let mut conns: Vec<ConnId> = Vec::new();
        let mut closed = std::collections::HashSet::new();
        let mut capabilities: Vec<ResumeCapability> = Vec::new();
        let mut reached = Reached::default();
        let names = ["Sam", "Noor"];
        for op in ops {
            // The i-th most recent connection: recent ones are the live ones.
            let pick = |i: usize| conns.iter().rev().nth(i % conns.len().max(1)).copied();
            let mut frames: Vec<(ConnId, Vec<u8>)> = Vec::new();
            let mut outs = Vec::new();
            if let Some(delay) = router_delay {
                // A router's answer comes a few steps after what it answers.
                outs.extend(h.wait_for(delay / 3));
            }
            match op {
                Op::Connect { counsellor } | Op::Arrive { counsellor, .. } => {
                    let cred = if counsellor {
                        Credential::Counsellor {
                            pseudonym: names[conns.len() % 2].into(),
                        }
                    } else {
                        Credential::Anonymous
                    };
                    let Ok(id) = h.relay.handle_connect(h.now, cred) else {
                        continue;
                    };
                    conns.push(id);
                    if counsellor {
                        counsellors.insert(id);
                    }
                    if let Op::Arrive {
                        capacity, topic, ..
                    } = op
                    {
                        let role = if counsellor {
                            Role::Counsellor
                        } else {
                            Role::Client
                        };
                        frames.push((id, Frame::Hello { version: 1, role }.encode()));
                        let next = if counsellor {
                            Frame::Status {
                                available: true,
                                capacity,
                                topics: vec![],
                                languages: vec![],
                            }
                        } else {
                            Frame::Join {
                                topic: TopicId::new(topic),
                                language: None,
                                pow_solution: [0; 8],
                            }
                        };
                        frames.push((id, next.encode()));
                    }
                }
                Op::Hello {
                    conn,
                    counsellor,
                    version,
                } => frames.extend(pick(conn).map(|id| {
                    let role = if counsellor {
                        Role::Counsellor
                    } else {
                        Role::Client
                    };
                    (id, Frame::Hello { version, role }.encode())
                })),
                Op::Join { conn, topic } => frames.extend(pick(conn).map(|id| {
                    (
                        id,
                        Frame::Join {
                            topic: TopicId::new(topic),
                            language: None,
                            pow_solution: [0; 8],
                        }
                        .encode(),
                    )
                })),
                Op::Proof { conn, solution } => {
                    frames.extend(pick(conn).map(|id| (id, Frame::Proof { solution }.encode())))
                }
                Op::Status {
                    conn,
                    available,
                    capacity,
                } => frames.extend(pick(conn).map(|id| {
                    (
                        id,
                        Frame::Status {
                            available,
                            capacity,
                            topics: vec![],
                            languages: vec![],
                        }
                        .encode(),
                    )
                })),
                Op::Forward { conn, chat } => frames.extend(pick(conn).map(|id| {
                    let mut b = vec![kind::FORWARD, 0x04, 0x0c];
                    b.extend_from_slice(&chat.to_be_bytes());
                    b.extend_from_slice(&[7u8; BLOB_LEN]);
                    (id, b)
                })),
                Op::End { conn, chat, reason } => frames.extend(pick(conn).map(|id| {
                    let mut b = vec![kind::END, 0, 5];
                    b.extend_from_slice(&chat.to_be_bytes());
                    b.push(reason);
                    (id, b)
                })),
                Op::Transfer {
                    conn,
                    chat: n,
                    to_queue,
                } => frames.extend(pick(conn).map(|id| {
                    let target = if to_queue {
                        TransferTarget::Queue
                    } else {
                        TransferTarget::Colleague(Label::new("Noor").unwrap())
                    };
                    (
                        id,
                        Frame::Transfer {
                            chat: chat(n),
                            target,
                        }
                        .encode(),
                    )
                })),
                Op::Resume {
                    conn,
                    capability,
                    made_up,
                } => {
                    let capability = match made_up {
                        Some(bytes) => Some(ResumeCapability(bytes)),
                        None => capabilities
                            .get(capability % capabilities.len().max(1))
                            .copied(),
                    };
                    // A fresh connection, as a client that comes back uses.
                    let id = if conn % 2 == 0 {
                        h.relay
                            .handle_connect(h.now, Credential::Anonymous)
                            .ok()
                            .inspect(|id| conns.push(*id))
                    } else {
                        pick(conn)
                    };
                    frames.extend(
                        id.zip(capability)
                            .map(|(id, capability)| (id, Frame::Resume { capability }.encode())),
                    );
                }
                Op::Garbage { conn, bytes } => frames.extend(pick(conn).map(|id| (id, bytes))),
                Op::Finish { conn } => {
                    if let Some(id) = pick(conn) {
                        h.relay.handle_finish(h.now, id);
                    }
                }
                Op::Disconnect { conn, departure } => {
                    if let Some(id) = pick(conn) {
                        h.relay.handle_disconnect(h.now, id, departure);
                        closed.insert(id);
                    }
                }
                Op::Revoke { conn } => {
                    if let Some(id) = pick(conn) {
                        h.relay.handle_revoked(h.now, id);
                    }
                }
                // Time passes from one poll_timeout() to the next, each
                // checked for work done early or late.
                Op::Wait { secs } => outs.extend(h.wait(secs)),
                Op::Shutdown => h.relay.handle_shutdown(h.now),
            }
            let mut raw = Vec::new();
            for (id, b) in frames {
                h.relay.handle_data(h.now, id, &b);
                while let Some(out) = h.relay.poll_output() {
                    raw.push(out);
                }
            }
            prop_assert_eq!(h.relay.poll_timeout(), h.relay.poll_timeout_by_scan());
            while let Some(out) = h.relay.poll_output() {
                raw.push(out);
            }
            for out in raw {
                match out {
                    Output::Send { conn, bytes } => {
                        prop_assert!(!closed.contains(&conn), "sent to a closed connection");
                        let mut decoded = Vec::new();
                        prop_assert!(FrameDecoder::default().push(&bytes, &mut decoded).is_ok());
                        outs.extend(decoded.into_iter().map(|f| Out::Frame(conn, f)));
                    }
                    Output::Close { conn, code, flush } => {
                        prop_assert!(closed.insert(conn), "closed twice");
                        outs.push(Out::Close(conn, code, flush));
                    }
                    Output::Unblock { conn } => {
                        prop_assert!(!closed.contains(&conn), "unblocked a closed connection");
                    }
                    Output::Route { conn, to, .. } => {
                        if let Some(to) = to {
                            prop_assert!(
                                !closed.contains(&conn) && !closed.contains(&to.conn),
                                "a route to or from a closed connection"
                            );
                        }
                    }
                    Output::StoreCodings { conn, .. } => {
                        prop_assert!(!closed.contains(&conn), "codings from a closed connection");
                    }
                }
            }
            for out in &outs {
                match out {
                    Out::Frame(conn, Frame::Paired { chat, .. } | Frame::Resumed { chat })
                        if !counsellors.contains(conn) =>
                    {
                        let chats = client_chats.entry(*conn).or_default();
                        chats.insert(*chat);
                        prop_assert!(chats.len() <= 1, "a young person in two chats at once");
                    }
                    Out::Frame(conn, Frame::End { chat, .. }) => {
                        if let Some(chats) = client_chats.get_mut(conn) {
                            chats.remove(chat);
                        }
                    }
                    _ => {}
                }
                match out {
                    Out::Frame(_, Frame::Paired { resume, .. }) => {
                        reached.paired = true;
                        capabilities.push(*resume);
                    }
                    Out::Frame(_, Frame::Joined { resume }) => capabilities.push(*resume),
                    Out::Frame(_, Frame::Forward { .. }) => reached.forwarded = true,
                    Out::Close(conn, ..) => {
                        closed.insert(*conn);
                        client_chats.remove(conn);
                    }
                    _ => {}
                }
            }
            reached.late_pairing |= h.relay.take_stats().late_pairings > 0;
            let (open, waiting) = h.relay.counts();
            // (A router that answers late counts clients it has not yet
            // heard are gone.)
            prop_assert!(waiting <= open || router_delay.is_some());
        }
        Ok(reached)
    }

    /// Whatever endpoints send, in any order and at any time, the core
    /// never panics, never sends to a connection it closed, every output
    /// decodes, the queue stays within its limit and the deadline index
    /// agrees with its tables. The cases are shaped so that most of them
    /// get as far as a chat: well-behaved arrivals, proof of work at
    /// difficulty 0, RESUME with capabilities the relay handed out.
    #[test]
    fn the_core_survives_any_interleaving_and_the_cases_reach_chats() {
        survives_any_interleaving(300, None);
    }

    /// The same against a router that answers 700 ms late, as one shared
    /// between relays would: its pairs may find the young person gone or
    /// the counsellor full, and the core must cope.
    #[test]
    fn the_core_survives_a_router_that_answers_late() {
        survives_any_interleaving(400, Some(Duration::from_millis(700)));
    }

    fn survives_any_interleaving(cases: u32, router_delay: Option<Duration>) {
        let paired = Cell::new(0u32);
        let forwarded = Cell::new(0u32);
        let late = Cell::new(0u32);
        let mut runner = TestRunner::new(Config::with_cases(cases));
        runner
            .run(&proptest::collection::vec(op(), 4..80), |ops| {
                let reached = run(ops, router_delay)?;
                late.set(late.get() + u32::from(reached.late_pairing));
                paired.set(paired.get() + u32::from(reached.paired));
                forwarded.set(forwarded.get() + u32::from(reached.forwarded));
                Ok(())
            })
            .unwrap();
        let (paired, forwarded, late) = (paired.get(), forwarded.get(), late.get());
        eprintln!(
            "{paired} of {cases} cases paired, {forwarded} forwarded a message, \
             {late} had a pairing come too late"
        );
        // A late router pairs a few steps later, so fewer cases get as far
        // as a chat or a message; its point is the pairings that come too
        // late. (Shares well below the usual, so that no seed fails them.)
        let (paired_share, forwarded_share) = match router_delay {
            None => (2, 5),
            Some(_) => (3, 12),
        };
        assert!(
            paired * paired_share >= cases,
            "only {paired} of {cases} cases paired"
        );
        assert!(
            forwarded * forwarded_share >= cases,
            "only {forwarded} of {cases} cases forwarded"
        );
        if router_delay.is_some() {
            assert!(late * 20 >= cases, "only {late} of {cases} cases were late");
        } else {
            assert_eq!(late, 0, "an immediate router is never late");
        }
    }
}

mod abuse_control {
    use super::*;

    fn join_with(h: &mut Harness, c: ConnId, solution: [u8; 8]) -> Vec<Out> {
        h.send(
            c,
            Frame::Join {
                topic: None,
                language: None,
                pow_solution: solution,
            },
        )
    }

    #[test]
    fn joins_without_valid_proof_of_work_are_refused_and_a_solver_gets_through() {
        let mut h = Harness::new(Limits {
            pow_min_difficulty: 12,
            ..Limits::default()
        });
        let mut refused = 0;
        for i in 0..20u64 {
            let c = h.connect(Credential::Anonymous);
            let challenge = challenge_in(&h.hello(c, Role::Client));
            assert!(challenge.difficulty >= 12);
            let guess = i.to_be_bytes();
            if fluister::core::ratelimit::pow_valid(&challenge.nonce, challenge.difficulty, &guess)
            {
                continue; // a lucky guess is a valid solution
            }
            let outs = join_with(&mut h, c, guess);
            assert_eq!(
                outs,
                vec![Out::Close(c, CloseCode::ProofOfWorkFailed, true)]
            );
            refused += 1;
        }
        assert!(refused >= 19);
        let (y, outs) = h.client(); // solves its challenge
        assert_eq!(positions(&outs), vec![(y, 1)]);
    }

    #[test]
    fn a_solution_cannot_be_replayed_on_another_connection() {
        let mut h = Harness::new(Limits::default());
        let a = h.connect(Credential::Anonymous);
        let challenge = challenge_in(&h.hello(a, Role::Client));
        let solution = pow_solve(&challenge.nonce, challenge.difficulty);
        let b = h.connect(Credential::Anonymous);
        let other = challenge_in(&h.hello(b, Role::Client));
        assert_ne!(
            other.nonce, challenge.nonce,
            "every connection gets a fresh challenge"
        );
        if !fluister::core::ratelimit::pow_valid(&other.nonce, other.difficulty, &solution) {
            let outs = join_with(&mut h, b, solution);
            assert_eq!(
                outs,
                vec![Out::Close(b, CloseCode::ProofOfWorkFailed, true)]
            );
        }
        // The owner may use it once; a second JOIN on the same connection is out of state.
        let outs = join_with(&mut h, a, solution);
        assert_eq!(positions(&outs), vec![(a, 1)]);
        let outs = join_with(&mut h, a, solution);
        assert_eq!(outs, vec![Out::Close(a, CloseCode::UnexpectedFrame, true)]);
    }

    #[test]
    fn the_difficulty_rises_with_solved_joins_and_falls_after_them() {
        let mut h = Harness::new(Limits {
            pow_min_difficulty: 6,
            pow_max_difficulty: 16,
            pow_target_arrivals_per_sec: 5,
            admissions_per_sec: 1_000,
            admissions_burst: 1_000,
            max_queue: 10_000,
            max_anonymous_connections: 10_000,
            max_connections: 10_000,
            ..Limits::default()
        });
        assert_eq!(h.relay.pow_difficulty(), 6);
        // HELLO is free, so HELLOs alone must not raise the price for everyone.
        for _ in 0..5 {
            for _ in 0..50 {
                let c = h.connect(Credential::Anonymous);
                h.hello(c, Role::Client);
            }
            h.wait(1);
        }
        assert_eq!(h.relay.pow_difficulty(), 6, "HELLO floods cost nothing");
        // Solved JOINs are paid for: twenty a second for five seconds.
        for _ in 0..5 {
            for _ in 0..20 {
                h.client();
            }
            h.wait(1);
        }
        let peak = h.relay.pow_difficulty();
        assert!(peak >= 10, "difficulty rose to {peak}");
        // New arrivals are asked the raised difficulty.
        let c = h.connect(Credential::Anonymous);
        assert_eq!(challenge_in(&h.hello(c, Role::Client)).difficulty, peak);
        // Quiet again: it falls back to the floor, driven by the timer alone.
        for _ in 0..20 {
            h.wait(1);
        }
        assert_eq!(h.relay.pow_difficulty(), 6);
    }

    /// Feeds `frames` to `conn` as one read, then lets virtual time run,
    /// reading again whenever the core says it may (as the shell does),
    /// until everything is done; returns all outputs.
    fn send_paced(h: &mut Harness, conn: ConnId, frames: &[Frame]) -> (Vec<Out>, usize) {
        let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        let mut pauses = 0;
        if h.relay.handle_data(h.now, conn, &bytes) == Flow::Pause {
            pauses += 1;
        }
        let mut outs = Vec::new();
        loop {
            let (drained, unblocked) = h.drain_with_unblocks();
            outs.extend(drained);
            if unblocked.contains(&conn) {
                break;
            }
            let Some(at) = h.relay.poll_timeout() else {
                break;
            };
            h.now.advance(at.saturating_duration_since(h.now.mono));
            h.relay.handle_timeout(h.now);
        }
        (outs, pauses)
    }

    #[test]
    fn a_sender_over_its_budget_is_slowed_down_never_cut_off() {
        let mut h = Harness::new(Limits {
            forward_frames_per_sec: 32,
            forward_frames_burst: 64,
            ..Limits::default()
        });
        let (sam, _) = h.counsellor_with("Sam", 2, &[], &[]);
        let (calm, _) = h.client();
        let (paster, _) = h.client();
        // 300 frames at once: four times the burst.
        let flood: Vec<Frame> = (0..300)
            .map(|_| Frame::Forward {
                chat: chat(1),
                blob: blob(9),
            })
            .collect();
        let start = h.now.mono;
        let (outs, pauses) = send_paced(&mut h, paster, &flood);
        assert_eq!(pauses, 1, "the shell is told to stop reading");
        assert!(
            !outs.iter().any(|o| matches!(o, Out::Close(..))),
            "nobody is closed: {outs:?}"
        );
        assert_eq!(frames_to(&outs, sam).len(), 300, "every frame arrives");
        // 64 at once, then 32 a second: the rest took about 7.3 s.
        let took = h.now.mono.saturating_duration_since(start);
        assert!(
            took >= Duration::from_secs(7) && took <= Duration::from_secs(8),
            "{took:?}"
        );
        // The calm chat beside it was never slowed.
        let outs = h.send(
            calm,
            Frame::Forward {
                chat: chat(1),
                blob: blob(6),
            },
        );
        assert_eq!(frames_to(&outs, sam).len(), 1);
    }

    #[test]
    fn a_counsellors_budget_counts_per_chat() {
        let mut h = Harness::new(Limits {
            forward_frames_per_sec: 32,
            forward_frames_burst: 64,
            ..Limits::default()
        });
        let (sam, _) = h.counsellor_with("Sam", 3, &[], &[]);
        let clients: Vec<ConnId> = (0..3).map(|_| h.client().0).collect();
        // A paste of four 16 000-byte messages (64 frames) into each chat at
        // once: each chat has its own budget, so nothing waits.
        let mut frames = Vec::new();
        for n in 1..=3 {
            frames.extend((0..64).map(|_| Frame::Forward {
                chat: chat(n),
                blob: blob(n as u8),
            }));
        }
        let flow = h.relay.handle_data(
            h.now,
            sam,
            &frames.iter().flat_map(Frame::encode).collect::<Vec<_>>(),
        );
        assert_eq!(flow, Flow::Read);
        let outs = h.drain();
        for c in clients {
            assert_eq!(frames_to(&outs, c).len(), 64);
        }
    }

    #[test]
    fn anonymous_connections_and_queue_admissions_are_capped() {
        let mut h = Harness::new(Limits {
            max_anonymous_connections: 3,
            admissions_per_sec: 1,
            admissions_burst: 2,
            ..Limits::default()
        });
        let idle: Vec<ConnId> = (0..3).map(|_| h.connect(Credential::Anonymous)).collect();
        // Counsellors still get in.
        h.counsellor("Sam");
        // Full: a newcomer pushes out the oldest connection that has not
        // joined, however young it is.
        let newcomer = h.connect(Credential::Anonymous);
        assert_eq!(h.drain(), vec![Out::Close(idle[0], CloseCode::Busy, true)]);
        for c in idle.into_iter().skip(1).chain([newcomer]) {
            h.relay.handle_disconnect(h.now, c, Departure::Lost);
        }
        h.drain();
        // Two admissions in the burst, the third in the same second is busy.
        let (_, a) = h.client();
        let (_, b) = h.client();
        let (third, outs) = h.client();
        assert!(!a.is_empty() && !b.is_empty());
        assert_eq!(
            frames_to(&outs, third).last(),
            Some(&Frame::Unavailable {
                reason: Unavailable::Busy,
                next_open: None
            })
        );
        h.now.advance(Duration::from_secs(1));
        let (fourth, outs) = h.client();
        assert_eq!(
            positions(&outs),
            vec![(fourth, 2)],
            "Sam has the first; the second waits"
        );
        // Full of young people who joined: nobody is pushed out for a newcomer.
        assert!(
            h.relay
                .handle_connect(h.now, Credential::Anonymous)
                .is_err()
        );
    }
}

/// A model-based test of message delivery through the core: random
/// interleavings of connect, pair, send, drop, resume, end, transfer and
/// time passing. Every FORWARD carries (pairing id, side, counter); the
/// model checks that no message is delivered twice or out of order, and
/// that a message never delivered was sent by a side that was told the chat
/// ended (or that is itself away and will learn it on RESUME).
mod delivery_model {
    use super::*;
    use fluister::core::frame::ResumeCapability;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    #[derive(Debug, Clone)]
    enum Op {
        Client,
        Counsellor,
        Send(usize),
        Drop(usize),
        Resume(usize),
        End(usize),
        TransferToQueue(usize),
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => Just(Op::Client),
            1 => Just(Op::Counsellor),
            8 => any::<usize>().prop_map(Op::Send),
            2 => any::<usize>().prop_map(Op::Drop),
            2 => any::<usize>().prop_map(Op::Resume),
            1 => any::<usize>().prop_map(Op::End),
            1 => any::<usize>().prop_map(Op::TransferToQueue),
            1 => (0..200u64).prop_map(Op::Wait),
        ]
    }

    /// Side 0 = client, 1 = counsellor. A stream is one side of one pairing.
    type Stream = ([u8; 16], u8);

    struct Model {
        h: Harness,
        role: HashMap<ConnId, u8>,
        /// (conn, chat) → stream it sends on.
        chats: HashMap<(ConnId, ChatNumber), Stream>,
        caps: HashMap<Stream, ResumeCapability>,
        /// Streams whose side dropped and may resume.
        away: Vec<Stream>,
        sent: HashMap<Stream, u32>,
        delivered: HashMap<Stream, u32>,
        /// Streams whose sender was told the chat ended.
        told: HashSet<Stream>,
        gone: HashSet<ConnId>,
    }

    fn tag(stream: Stream, n: u32) -> Blob {
        let mut b = [0u8; BLOB_LEN];
        b[..16].copy_from_slice(&stream.0);
        b[16] = stream.1;
        b[17..21].copy_from_slice(&n.to_be_bytes());
        Blob::new(b)
    }

    impl Model {
        fn absorb(&mut self, outs: Vec<Out>) -> Result<(), TestCaseError> {
            for o in outs {
                match o {
                    Out::Close(conn, ..) => {
                        self.gone.insert(conn);
                    }
                    Out::Frame(
                        conn,
                        Frame::Paired {
                            chat,
                            pairing_id,
                            resume,
                            ..
                        },
                    ) => {
                        let side = self.role[&conn];
                        let stream = (pairing_id.0, side);
                        self.chats.insert((conn, chat), stream);
                        self.caps.insert(stream, resume);
                    }
                    Out::Frame(conn, Frame::Forward { chat, blob }) => {
                        let b = blob.as_bytes();
                        let mut pairing = [0u8; 16];
                        pairing.copy_from_slice(&b[..16]);
                        let from: Stream = (pairing, b[16]);
                        let n = u32::from_be_bytes([b[17], b[18], b[19], b[20]]);
                        let mine = self.chats.get(&(conn, chat)).copied();
                        prop_assert_eq!(
                            mine.map(|s| (s.0, 1 - s.1)),
                            Some(from),
                            "delivered to the wrong chat"
                        );
                        let d = self.delivered.entry(from).or_insert(0);
                        prop_assert_eq!(n, *d + 1, "duplicate, reordered or skipped message");
                        *d = n;
                    }
                    Out::Frame(conn, Frame::End { chat, .. }) => {
                        if let Some(stream) = self.chats.get(&(conn, chat)) {
                            self.told.insert(*stream);
                        }
                    }
                    Out::Frame(..) => {}
                }
            }
            Ok(())
        }

        fn live(&self) -> Vec<(ConnId, ChatNumber, Stream)> {
            let mut v: Vec<_> = self
                .chats
                .iter()
                .filter(|((c, _), _)| !self.gone.contains(c))
                .map(|((c, ch), s)| (*c, *ch, *s))
                .collect();
            v.sort_by_key(|(c, ch, _)| (*c, *ch));
            v
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn messages_arrive_once_and_in_order_or_their_sender_is_told(ops in proptest::collection::vec(op(), 1..120)) {
            let mut m = Model {
                h: Harness::new(Limits { pow_min_difficulty: 0, pow_max_difficulty: 0, max_held_frames: 8, ..Limits::default() }),
                role: HashMap::new(), chats: HashMap::new(), caps: HashMap::new(), away: Vec::new(),
                sent: HashMap::new(), delivered: HashMap::new(), told: HashSet::new(), gone: HashSet::new(),
            };
            for op in ops {
                let outs = match op {
                    Op::Client => {
                        let c = m.h.connect(Credential::Anonymous);
                        m.role.insert(c, 0);
                        let mut outs = m.h.hello(c, Role::Client);
                        outs.extend(m.h.send(c, Frame::Join { topic: None, language: None, pow_solution: [0; 8] }));
                        outs
                    }
                    Op::Counsellor => {
                        let c = m.h.connect(Credential::Counsellor { pseudonym: "C".into() });
                        m.role.insert(c, 1);
                        let mut outs = m.h.hello(c, Role::Counsellor);
                        outs.extend(m.h.status(c, true, 2, &[], &[]));
                        outs
                    }
                    Op::Send(i) => {
                        let live = m.live();
                        if live.is_empty() { continue; }
                        let (conn, chat, stream) = live[i % live.len()];
                        let n = m.sent.entry(stream).or_insert(0);
                        *n += 1;
                        let blob = tag(stream, *n);
                        m.h.send(conn, Frame::Forward { chat, blob })
                    }
                    Op::Drop(i) => {
                        let mut conns: Vec<ConnId> = m.live().into_iter().map(|(c, _, _)| c).collect();
                        conns.dedup();
                        if conns.is_empty() { continue; }
                        let conn = conns[i % conns.len()];
                        for (c, _, s) in m.live() {
                            if c == conn { m.away.push(s); }
                        }
                        m.gone.insert(conn);
                        m.h.relay.handle_disconnect(m.h.now, conn, Departure::Lost);
                        m.h.drain()
                    }
                    Op::Resume(i) => {
                        if m.away.is_empty() { continue; }
                        let stream = m.away.remove(i % m.away.len());
                        let cap = m.caps[&stream];
                        let (c, mut outs) = if stream.1 == 0 {
                            (m.h.connect(Credential::Anonymous), Vec::new())
                        } else {
                            let c = m.h.connect(Credential::Counsellor { pseudonym: "C".into() });
                            let mut outs = m.h.hello(c, Role::Counsellor);
                            outs.extend(m.h.status(c, true, 2, &[], &[]));
                            (c, outs)
                        };
                        m.role.insert(c, stream.1);
                        let resumed = m.h.send(c, Frame::Resume { capability: cap });
                        if let Some(chat) = resumed.iter().find_map(|o| match o {
                            Out::Frame(id, Frame::Resumed { chat }) if *id == c => Some(*chat),
                            _ => None,
                        }) {
                            m.chats.insert((c, chat), stream);
                        } else {
                            // RESUME_FAILED is how an away side learns its chat ended.
                            m.told.insert(stream);
                        }
                        outs.extend(resumed);
                        outs
                    }
                    Op::End(i) => {
                        let live = m.live();
                        if live.is_empty() { continue; }
                        let (conn, chat, stream) = live[i % live.len()];
                        m.told.insert(stream); // the sender ended it itself
                        m.h.send(conn, Frame::End { chat, reason: EndReason::UserEnded })
                    }
                    Op::TransferToQueue(i) => {
                        let live: Vec<_> = m.live().into_iter().filter(|(_, _, s)| s.1 == 1).collect();
                        if live.is_empty() { continue; }
                        let (conn, chat, _) = live[i % live.len()];
                        m.h.send(conn, Frame::Transfer { chat, target: TransferTarget::Queue })
                    }
                    Op::Wait(secs) => m.h.wait(secs),
                };
                m.absorb(outs)?;
            }
            // Let every resume window run out, then account for everything.
            let outs = m.h.wait(10_000);
            m.absorb(outs)?;
            for (stream, sent) in &m.sent {
                let delivered = m.delivered.get(stream).copied().unwrap_or(0);
                prop_assert!(delivered <= *sent);
                if delivered < *sent {
                    prop_assert!(
                        m.told.contains(stream) || m.away.contains(stream),
                        "{} of {} messages lost and the sender was not told", sent - delivered, sent
                    );
                }
            }
        }
    }
}

/// The core against a router that answers late, as one shared between
/// relays does: nothing the core does may depend on an immediate answer.
mod slow_router {
    use super::*;

    const DELAY: Duration = Duration::from_millis(500);

    fn harness() -> Harness {
        Harness::with_slow_router(Limits::default(), DELAY)
    }

    #[test]
    fn a_pair_and_a_place_come_when_the_router_answers() {
        let mut h = harness();
        let (sam, _) = h.counsellor("Sam");
        let (y, outs) = h.client();
        assert!(
            matches!(frames_to(&outs, y).as_slice(), [Frame::Joined { .. }]),
            "JOINED at once, the rest from the router: {outs:?}"
        );
        let outs = h.wait_for(DELAY);
        assert_eq!(paired(&outs), vec![y, sam]);
        assert_eq!(h.relay.take_stats().late_pairings, 0);
    }

    #[test]
    fn a_pair_that_finds_the_young_person_gone_frees_the_counsellor() {
        let mut h = harness();
        let (sam, _) = h.counsellor("Sam");
        let (gone, _) = h.client();
        h.wait_for(DELAY / 2);
        let (next, _) = h.client();
        // The first leaves before the router's answer reaches the core.
        h.relay.handle_finish(h.now, gone);
        h.drain();
        let outs = h.wait_for(DELAY / 2);
        assert_eq!(paired(&outs), vec![], "{outs:?}");
        assert_eq!(h.relay.take_stats().late_pairings, 1);
        // Sam's real room reaches the router, and the next one gets Sam.
        let outs = h.wait_for(DELAY * 2);
        assert_eq!(paired(&outs), vec![next, sam]);
        assert!(
            !outs
                .iter()
                .any(|o| matches!(o, Out::Frame(c, _) if *c == gone))
        );
    }

    #[test]
    fn a_pair_that_finds_the_counsellor_away_keeps_the_young_person_first() {
        let mut h = harness();
        let (sam, _) = h.counsellor("Sam");
        let (first, _) = h.client();
        h.wait_for(DELAY / 2);
        let (second, _) = h.client();
        // Sam steps away before the router's answer reaches the core.
        h.status(sam, false, 1, &[], &[]);
        h.wait_for(DELAY / 2);
        assert_eq!(h.relay.take_stats().late_pairings, 1);
        h.wait_for(DELAY * 2);
        let (noor, _) = h.counsellor("Noor");
        let outs = h.wait_for(DELAY * 2);
        assert_eq!(
            paired(&outs),
            vec![first, noor],
            "first in line stays first"
        );
        assert!(positions(&outs).contains(&(second, 1)), "{outs:?}");
    }
}
