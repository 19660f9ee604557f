//! The relay core under the two things that must never close the helpline:
//! people leaving, and people attacking. With a virtual clock and no
//! sockets.
//!
//! Leaving (PROTOCOL.md §3.3, §7.1): an application close or the end of the
//! stream means "left", and ends chats and queue places at once, with the
//! reason; only a lost connection waits for a RESUME.
//!
//! Availability (PROTOCOL.md §8): every anonymous state has a deadline,
//! idle connections make room for new ones, abandoned pairings are undone,
//! the proof of work follows what attackers pay for and how full the queue
//! is, a crowded queue charges rent, one source holds a bounded number of
//! places, and fast senders are slowed, never cut off.

mod harness;

use std::time::Duration;

use fluister::core::frame::{EndReason, Frame, Label, Presence, Role, TopicId, Unavailable};
use fluister::core::limits::{Limits, Service};
use fluister::core::ratelimit::{SourceTag, challenge_lifetime, pow_solve, pow_valid};
use fluister::core::relay::{ConnId, Credential};
use fluister::core::{CloseCode, Departure};
use harness::*;

fn ticket_of(outs: &[Out], conn: ConnId) -> fluister::core::frame::ResumeCapability {
    outs.iter()
        .find_map(|o| match o {
            Out::Frame(id, Frame::Joined { resume }) if *id == conn => Some(*resume),
            _ => None,
        })
        .expect("a JOINED")
}

/// A counsellor that is signed in and away: clients stay in the queue.
fn away_counsellor(h: &mut Harness) -> ConnId {
    let c = h.connect(Credential::Counsellor {
        pseudonym: "Sam".into(),
    });
    h.hello(c, Role::Counsellor);
    c
}

mod leaving {
    use super::*;

    #[test]
    fn a_young_person_who_leaves_the_queue_is_gone_at_once_with_the_ticket() {
        for finish_stream in [false, true] {
            let mut h = Harness::new(Limits::default());
            let sam = away_counsellor(&mut h);
            let (a, outs) = h.client();
            let ticket = ticket_of(&outs, a);
            let (b, _) = h.client();
            // B's arrival reaches the counsellor within a second.
            h.wait_for(Limits::QUEUE_STATS_INTERVAL);
            let outs = if finish_stream {
                // The end of its stream: the relay closes the connection.
                h.relay.handle_finish(h.now, a);
                let outs = h.drain();
                assert!(outs.contains(&Out::Close(a, CloseCode::NoError, true)));
                outs
            } else {
                h.relay
                    .handle_disconnect(h.now, a, Departure::Left(EndReason::UserEnded));
                h.drain()
            };
            // In the same step: the counsellor's counts and B's position.
            assert_eq!(queue_stats_to(&outs, sam), vec![vec![(None, 1)]]);
            assert_eq!(positions(&outs), vec![(b, 1)]);
            // The ticket leads nowhere any more.
            let back = h.connect(Credential::Anonymous);
            let outs = h.send(back, Frame::Resume { capability: ticket });
            assert_eq!(frames_to(&outs, back), vec![Frame::ResumeFailed]);
        }
    }

    #[test]
    fn a_lost_waiting_connection_keeps_its_place_a_reconnecting_one_too() {
        let mut h = Harness::new(Limits::default());
        away_counsellor(&mut h);
        let (a, outs) = h.client();
        let ticket = ticket_of(&outs, a);
        h.client();
        // RECONNECTING (0x11) is a loss, like a timeout.
        h.relay.handle_disconnect(
            h.now,
            a,
            Departure::from_application_close(u64::from(
                fluister::core::EndpointClose::Reconnecting.code(),
            )),
        );
        h.drain();
        let back = h.connect(Credential::Anonymous);
        let outs = h.send(back, Frame::Resume { capability: ticket });
        assert_eq!(
            frames_to(&outs, back),
            vec![Frame::Queued {
                position: 1,
                estimated_wait_secs: None
            }]
        );
    }

    #[test]
    fn leaving_ends_the_chat_at_once_with_its_reason() {
        for (code, told) in [
            (0x00, EndReason::UserEnded),
            (0x10, EndReason::SecurityFailure),
            (0x01, EndReason::PeerDisconnected),
        ] {
            let mut h = Harness::new(Limits::default());
            let (y, c) = h.pair();
            h.relay
                .handle_disconnect(h.now, y, Departure::from_application_close(code));
            assert_eq!(
                frames_to(&h.drain(), c),
                vec![Frame::End {
                    chat: chat(1),
                    reason: told
                }],
                "close code {code:#x}"
            );
        }
        // A lost connection, by contrast, leaves the chat waiting.
        let mut h = Harness::new(Limits::default());
        let (y, c) = h.pair();
        h.relay.handle_disconnect(h.now, y, Departure::Lost);
        assert_eq!(
            frames_to(&h.drain(), c),
            vec![Frame::PeerAway { chat: chat(1) }]
        );
    }

    #[test]
    fn a_counsellor_who_leaves_ends_every_chat_for_the_young_people() {
        let mut h = Harness::new(Limits::default());
        let (sam, _) = h.counsellor_with("Sam", 2, &[], &[]);
        let (a, _) = h.client();
        let (b, _) = h.client();
        h.relay
            .handle_disconnect(h.now, sam, Departure::Left(EndReason::UserEnded));
        let outs = h.drain();
        for y in [a, b] {
            assert_eq!(
                frames_to(&outs, y),
                vec![Frame::End {
                    chat: chat(1),
                    reason: EndReason::UserEnded
                }]
            );
            assert!(outs.contains(&Out::Close(y, CloseCode::NoError, true)));
        }
    }

    #[test]
    fn frames_before_the_end_of_the_stream_are_acted_on_first() {
        let mut h = Harness::new(Limits::default());
        let (y, c) = h.pair();
        // END(SECURITY_FAILURE), then the end of the stream, in one read.
        h.relay.handle_data(
            h.now,
            y,
            &Frame::End {
                chat: chat(1),
                reason: EndReason::SecurityFailure,
            }
            .encode(),
        );
        h.relay.handle_finish(h.now, y);
        assert_eq!(
            frames_to(&h.drain(), c),
            vec![Frame::End {
                chat: chat(1),
                reason: EndReason::SecurityFailure
            }]
        );
    }

    #[test]
    fn a_young_person_whose_chat_ended_is_let_go() {
        let mut h = Harness::new(Limits::default());
        let (y, c) = h.pair();
        let outs = h.send(
            c,
            Frame::End {
                chat: chat(1),
                reason: EndReason::UserEnded,
            },
        );
        assert_eq!(
            outs,
            vec![
                Out::Frame(
                    y,
                    Frame::End {
                        chat: chat(1),
                        reason: EndReason::UserEnded
                    }
                ),
                Out::Close(y, CloseCode::NoError, true)
            ]
        );
    }
}

mod deadlines {
    use super::*;

    #[test]
    fn every_anonymous_state_has_a_deadline() {
        let mut h = Harness::new(Limits::default());
        // Before HELLO: hello_timeout.
        let silent = h.connect(Credential::Anonymous);
        // After HELLO, no JOIN: the challenge's lifetime.
        let idle = h.connect(Credential::Anonymous);
        let challenge = challenge_in(&h.hello(idle, Role::Client));
        let lifetime = challenge_lifetime(challenge.difficulty);
        assert!(lifetime > Duration::from_secs(10));
        assert!(h.wait(9).is_empty());
        assert_eq!(
            h.wait(1),
            vec![Out::Close(silent, CloseCode::Timeout, true)]
        );
        assert!(
            h.wait(0).is_empty(),
            "still within its challenge's lifetime"
        );
        h.now.advance(lifetime - Duration::from_secs(10));
        h.relay.handle_timeout(h.now);
        assert_eq!(h.drain(), vec![Out::Close(idle, CloseCode::Timeout, true)]);
        // Paired, no handshake message 1: handshake_timeout (below).
        // Waiting: max_wait, tested in core_relay.
    }

    #[test]
    fn a_challenge_cannot_be_banked() {
        let mut h = Harness::new(Limits::default());
        let c = h.connect(Credential::Anonymous);
        let challenge = challenge_in(&h.hello(c, Role::Client));
        // 8 bits: ten seconds of validity, then the JOIN is too late.
        assert_eq!(challenge.difficulty, 8);
        assert!(challenge_lifetime(8) < Duration::from_secs(11));
        h.now.advance(challenge_lifetime(8));
        let outs = h.send(
            c,
            Frame::Join {
                topic: None,
                language: None,
                pow_solution: pow_solve(&challenge.nonce, challenge.difficulty),
            },
        );
        assert_eq!(outs, vec![Out::Close(c, CloseCode::Timeout, true)]);
        // The slowest phone still gets a minute for the hardest challenge.
        assert!(challenge_lifetime(20) >= Duration::from_secs(60));
    }

    #[test]
    fn a_pairing_without_a_handshake_is_undone_and_frees_the_counsellor() {
        let mut h = Harness::new(Limits::default());
        let (sam, _) = h.counsellor("Sam");
        let (squatter, outs) = h.client();
        assert_eq!(paired(&outs), vec![squatter, sam]);
        let (next, _) = h.client();
        assert!(h.wait(9).iter().all(|o| !matches!(o, Out::Close(..))));
        let outs = h.wait(1);
        assert!(outs.contains(&Out::Close(squatter, CloseCode::Timeout, true)));
        assert!(frames_to(&outs, sam).contains(&Frame::End {
            chat: chat(1),
            reason: EndReason::PeerDisconnected
        }));
        // Sam's capacity is free again: the next young person is paired.
        assert_eq!(paired(&outs), vec![next, sam]);
    }

    #[test]
    fn a_young_person_away_when_the_pairing_is_undone_keeps_their_place() {
        let mut h = Harness::new(Limits::default());
        let (sam, _) = h.counsellor("Sam");
        let (y, outs) = h.client();
        let ticket = ticket_of(&outs, y);
        // The connection fails right as the pairing happens.
        h.relay.handle_disconnect(h.now, y, Departure::Lost);
        h.drain();
        let outs = h.wait(10);
        assert!(frames_to(&outs, sam).contains(&Frame::End {
            chat: chat(1),
            reason: EndReason::PeerDisconnected
        }));
        // Someone joins later; Sam goes away, so both wait.
        h.status(sam, false, 1, &[], &[]);
        let (later, _) = h.client();
        h.drain();
        let back = h.connect(Credential::Anonymous);
        let outs = h.send(back, Frame::Resume { capability: ticket });
        assert_eq!(
            frames_to(&outs, back),
            vec![Frame::Queued {
                position: 1,
                estimated_wait_secs: None
            }],
            "back at the front, ahead of the later one"
        );
        assert_eq!(positions(&outs), vec![(back, 1), (later, 2)]);
    }
}

mod crowding {
    use super::*;

    #[test]
    fn connections_that_never_join_cannot_keep_a_young_person_out() {
        let mut h = Harness::new(Limits::default());
        h.counsellor("Sam");
        let idle: Vec<ConnId> = (0..1500)
            .map(|_| {
                let c = h.connect(Credential::Anonymous);
                h.hello(c, Role::Client);
                c
            })
            .collect();
        // A young person arrives: the oldest idle connection makes room.
        let y = h.connect(Credential::Anonymous);
        assert_eq!(h.drain(), vec![Out::Close(idle[0], CloseCode::Busy, true)]);
        let challenge = challenge_in(&h.hello(y, Role::Client));
        let outs = h.send(
            y,
            Frame::Join {
                topic: None,
                language: None,
                pow_solution: pow_solve(&challenge.nonce, challenge.difficulty),
            },
        );
        assert_eq!(paired(&outs).first(), Some(&y));
        h.hs1(y, 1);
        // The idle ones expire with their challenges; none is left after.
        h.wait(11);
        let (open, _) = h.relay.counts();
        assert_eq!(open, 2, "Sam and the young person");
    }

    #[test]
    fn a_counsellor_credential_cannot_take_the_anonymous_role() {
        let mut h = Harness::new(Limits::default());
        let c = h.connect(Credential::Counsellor {
            pseudonym: "Sam".into(),
        });
        assert_eq!(
            h.hello(c, Role::Client),
            vec![Out::Close(c, CloseCode::NotAuthorized, true)]
        );
    }

    #[test]
    fn the_difficulty_rises_as_the_queue_fills() {
        let mut h = Harness::new(Limits {
            max_queue: 10,
            pow_min_difficulty: 4,
            pow_max_difficulty: 16,
            ..Limits::default()
        });
        away_counsellor(&mut h);
        let mut seen = Vec::new();
        for _ in 0..10 {
            let c = h.connect(Credential::Anonymous);
            let challenge = challenge_in(&h.hello(c, Role::Client));
            seen.push(challenge.difficulty);
            h.send(
                c,
                Frame::Join {
                    topic: None,
                    language: None,
                    pow_solution: pow_solve(&challenge.nonce, challenge.difficulty),
                },
            );
            h.wait(1);
        }
        // Up to half full the minimum, then evenly up to the maximum.
        assert_eq!(seen, vec![4, 4, 4, 4, 4, 4, 7, 9, 12, 14]);
        assert_eq!(h.relay.pow_difficulty(), 16, "full");
    }

    /// Fills `n` places in a queue whose counsellor is away.
    fn fill(h: &mut Harness, n: usize) -> Vec<ConnId> {
        (0..n).map(|_| h.client().0).collect()
    }

    fn challenge_to(outs: &[Out], conn: ConnId) -> Option<fluister::core::frame::PowChallenge> {
        frames_to(outs, conn).into_iter().find_map(|f| match f {
            Frame::Challenge { pow } => Some(pow),
            _ => None,
        })
    }

    #[test]
    fn a_crowded_queue_charges_rent_and_an_unpaid_place_is_lost() {
        let mut h = Harness::new(Limits {
            max_queue: 4,
            admissions_burst: 100,
            queue_rent_interval: Some(Duration::from_secs(300)),
            ..Limits::default()
        });
        away_counsellor(&mut h);
        let [payer, dodger, cheat] = fill(&mut h, 3)[..] else {
            unreachable!()
        };
        assert!(
            h.wait(299)
                .iter()
                .all(|o| !matches!(o, Out::Frame(_, Frame::Challenge { .. })))
        );
        // Three of four places taken: more than half. Rent is due.
        let outs = h.wait(1);
        let owed: Vec<_> = [payer, dodger, cheat]
            .iter()
            .map(|c| challenge_to(&outs, *c).expect("a CHALLENGE"))
            .collect();
        assert!(owed.iter().all(|pow| pow.difficulty > 8));
        let outs = h.send(
            payer,
            Frame::Proof {
                solution: pow_solve(&owed[0].nonce, owed[0].difficulty),
            },
        );
        assert!(outs.is_empty());
        let mut wrong = 0u64;
        while pow_valid(&owed[2].nonce, owed[2].difficulty, &wrong.to_be_bytes()) {
            wrong += 1;
        }
        let outs = h.send(
            cheat,
            Frame::Proof {
                solution: wrong.to_be_bytes(),
            },
        );
        assert!(outs.contains(&Out::Close(cheat, CloseCode::ProofOfWorkFailed, true)));
        // The dodger's place is gone when its challenge expires.
        h.now.advance(challenge_lifetime(owed[1].difficulty));
        h.relay.handle_timeout(h.now);
        let outs = h.drain();
        assert!(outs.contains(&Out::Close(dodger, CloseCode::Timeout, true)));
        assert_eq!(h.relay.counts().1, 1, "only the payer still waits");
    }

    #[test]
    fn an_uncrowded_queue_charges_no_rent() {
        let mut h = Harness::new(Limits {
            max_queue: 10,
            queue_rent_interval: Some(Duration::from_secs(300)),
            ..Limits::default()
        });
        away_counsellor(&mut h);
        let waiting = fill(&mut h, 5);
        let outs = h.wait(900);
        assert!(waiting.iter().all(|c| challenge_to(&outs, *c).is_none()));
    }

    #[test]
    fn one_source_holds_a_bounded_number_of_places() {
        let mut h = Harness::new(Limits {
            per_source_places: 2,
            ..Limits::default()
        });
        away_counsellor(&mut h);
        let join_from = |h: &mut Harness, tag: u8| {
            let c = h
                .relay
                .handle_connect_from(h.now, Credential::Anonymous, Some(SourceTag([tag; 16])))
                .unwrap();
            let challenge = challenge_in(&h.hello(c, Role::Client));
            let outs = h.send(
                c,
                Frame::Join {
                    topic: None,
                    language: None,
                    pow_solution: pow_solve(&challenge.nonce, challenge.difficulty),
                },
            );
            (c, outs)
        };
        join_from(&mut h, 1);
        join_from(&mut h, 1);
        let (third, outs) = join_from(&mut h, 1);
        assert_eq!(
            frames_to(&outs, third),
            vec![Frame::Unavailable {
                reason: Unavailable::Busy,
                next_open: None
            }]
        );
        let (other, outs) = join_from(&mut h, 2);
        assert_eq!(positions(&outs), vec![(other, 3)]);
    }

    #[test]
    fn nobody_who_could_serve_means_no_estimate() {
        let mut h = Harness::new(Limits::default());
        let (sam, _) = h.counsellor_with("Sam", 1, &[], &["nl"]);
        // Two pairings a minute apart teach the estimate a pace.
        for _ in 0..2 {
            let (y, _) = h.client_for(None, Some("nl"));
            h.hs1(y, 1);
            h.wait(60);
            h.send(
                sam,
                Frame::End {
                    chat: chat(1),
                    reason: EndReason::UserEnded,
                },
            );
        }
        let (busy, _) = h.client_for(None, Some("nl"));
        h.hs1(busy, 1);
        let (dutch, outs) = h.client_for(None, Some("nl"));
        assert!(matches!(
            frames_to(&outs, dutch).last(),
            Some(Frame::Queued {
                estimated_wait_secs: Some(_),
                ..
            })
        ));
        // Nobody signed in speaks English: "not known", never 0.
        let (english, outs) = h.client_for(None, Some("en"));
        assert_eq!(
            frames_to(&outs, english).last(),
            Some(&Frame::Queued {
                position: 2,
                estimated_wait_secs: None
            })
        );
    }
}

mod counsellors {
    use super::*;

    #[test]
    fn the_counsellor_learns_the_young_persons_choice_the_young_person_nothing() {
        let mut h = Harness::new(Limits::default());
        let (sam, _) = h.counsellor("Sam");
        let (y, outs) = h.client_for(Some(3), Some("nl"));
        let to = |conn| {
            frames_to(&outs, conn).into_iter().find_map(|f| match f {
                Frame::Paired {
                    topic, language, ..
                } => Some((topic, language)),
                _ => None,
            })
        };
        assert_eq!(
            to(sam),
            Some((
                TopicId::new(3),
                fluister::core::frame::Language::parse("nl")
            ))
        );
        assert_eq!(to(y), Some((None, None)));
    }

    fn presence_to(outs: &[Out], conn: ConnId) -> Vec<(String, Presence)> {
        frames_to(outs, conn)
            .into_iter()
            .filter_map(|f| match f {
                Frame::Colleague { name, presence } => Some((name.to_string(), presence)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn colleagues_see_who_is_signed_in_and_has_room() {
        let mut h = Harness::new(Limits::default());
        let (sam, _) = h.counsellor("Sam");
        // Noor signs in: she hears of Sam at once; Sam of her, away at first.
        let noor = h.connect(Credential::Counsellor {
            pseudonym: "Noor".into(),
        });
        let outs = h.hello(noor, Role::Counsellor);
        assert_eq!(
            presence_to(&outs, noor),
            vec![("Sam".into(), Presence::Available)]
        );
        assert_eq!(
            presence_to(&outs, sam),
            vec![("Noor".into(), Presence::Away)]
        );
        let outs = h.status(noor, true, 1, &[], &[]);
        assert_eq!(
            presence_to(&outs, sam),
            vec![("Noor".into(), Presence::Available)]
        );
        // Sam takes a chat and is full; Noor sees it.
        h.status(noor, false, 1, &[], &[]);
        let (_, outs) = h.client();
        assert_eq!(
            presence_to(&outs, noor),
            vec![("Sam".into(), Presence::Full)]
        );
        // Sam's connection goes: signed out.
        h.relay.handle_disconnect(h.now, sam, Departure::Lost);
        assert_eq!(
            presence_to(&h.drain(), noor),
            vec![("Sam".into(), Presence::SignedOut)]
        );
        // A transfer to a name that cannot be a pseudonym cannot be encoded.
        assert!(Label::new("No\tor").is_err());
    }
}

mod pacing {
    use super::*;

    #[test]
    fn a_resume_with_a_full_send_buffer_is_slowed_never_refused() {
        let mut h = Harness::new(Limits::default());
        let (y, sam) = h.pair();
        // What a paced sender may have unacknowledged after a resume:
        // 128 message frames and 64 of its own ACKs, all at once.
        let resend: Vec<Frame> = (0..192)
            .map(|i| Frame::Forward {
                chat: chat(1),
                blob: fluister::core::frame::Blob::new([i as u8; fluister::core::frame::BLOB_LEN]),
            })
            .collect();
        let bytes: Vec<u8> = resend.iter().flat_map(Frame::encode).collect();
        h.relay.handle_data(h.now, y, &bytes);
        let mut outs = h.drain();
        for _ in 0..10 {
            outs.extend(h.wait(1));
        }
        assert!(!outs.iter().any(|o| matches!(o, Out::Close(..))));
        assert_eq!(frames_to(&outs, sam).len(), 192);
    }

    #[test]
    fn the_hold_for_an_away_side_takes_a_full_send_buffer() {
        let limits = Limits::default();
        assert!(
            limits.max_held_frames > fluister::core::limits::MAX_UNACKED_FRAMES,
            "a paced sender never overflows what is held for its peer"
        );
        let mut h = Harness::with_service(limits, Service::default());
        let (y, sam) = h.pair();
        h.relay.handle_disconnect(h.now, y, Departure::Lost);
        h.drain();
        for _ in 0..129 {
            h.now.advance(Duration::from_millis(40));
            let outs = h.send(
                sam,
                Frame::Forward {
                    chat: chat(1),
                    blob: fluister::core::frame::Blob::new([1; fluister::core::frame::BLOB_LEN]),
                },
            );
            assert!(outs.is_empty(), "{outs:?}");
        }
    }
}
