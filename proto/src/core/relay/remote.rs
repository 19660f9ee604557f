//! Chats whose other side is on another relay (see [`super::super::router`]).
//!
//! The router pairs such a chat in halves: each relay opens its own side
//! ([`Relay::on_paired_remote`]) with its own chat number and capability,
//! and the side's peer is [`Peer::Remote`], known by its [`SideKey`]. From
//! then on what one side does reaches the other as a [`PeerMessage`]
//! through the router, and [`Relay::on_delivered`] turns what comes in
//! into the frames a local peer would have caused: FORWARD, END, PEER_AWAY
//! and PEER_BACK, a transfer, or a pairing undone. Budgets are spent where
//! a frame was sent; a side that is away here holds what comes for it.
//! A message for a side that is gone is answered with
//! END(PEER_DISCONNECTED), and an END is never answered, so two ends that
//! cross settle.

use super::chats::Colleague;
use super::*;

impl Relay {
    /// Hands the router a message for the other side of a chat.
    pub(super) fn deliver(&mut self, to: SideKey, message: PeerMessage) {
        self.router
            .handle_command(RouteCommand::Deliver { to, message });
    }

    /// The router paired `local` (in `role`) with a side on another relay.
    /// A half that no longer fits (the young person left the queue, the
    /// counsellor has no room) is counted as a late pairing and undoes the
    /// other half.
    pub(super) fn on_paired_remote(
        &mut self,
        now: Now,
        local: ConnId,
        role: Role,
        pairing: PairingId,
        choice: Choice,
    ) {
        let other = SideKey { pairing, role }.other();
        let fits = match (role, self.conns.get(&local)) {
            (
                Role::Client,
                Some(Conn {
                    state: State::Client(ClientStage::Waiting(_)),
                    ..
                }),
            ) => true,
            (
                Role::Counsellor,
                Some(
                    c @ Conn {
                        state: State::Counsellor(s),
                        ..
                    },
                ),
            ) => s.available && c.links.len() < s.capacity,
            _ => false,
        };
        if fits && self.open_half(now, local, role, pairing, choice).is_some() {
            return;
        }
        self.stats.late_pairings += 1;
        match role {
            Role::Client => self.deliver(other, PeerMessage::End(EndReason::PeerDisconnected)),
            Role::Counsellor => {
                if self.conns.contains_key(&local) {
                    self.refresh_offer(local);
                } else {
                    self.router
                        .handle_command(RouteCommand::SignOut { counsellor: local });
                }
                self.deliver(other, PeerMessage::Refused);
            }
        }
    }

    /// Opens `conn`'s side (in `role`) of the chat `pairing`, whose other
    /// side is on another relay, and sends its PAIRED. `None` if `conn`
    /// cannot take another chat number.
    pub(super) fn open_half(
        &mut self,
        now: Now,
        conn: ConnId,
        role: Role,
        pairing: PairingId,
        choice: Choice,
    ) -> Option<ChatNumber> {
        let key = SideKey { pairing, role };
        let (unconfirmed, choice) = match role {
            Role::Client => self.unconfirmed_side(now, conn, pairing)?,
            Role::Counsellor => (None, choice),
        };
        let chat = self.issue_chat(conn)?;
        let mut resume = ResumeCapability([0; 32]);
        self.rng.fill_bytes(&mut resume.0);
        let peer = Peer::Remote(RemotePeer {
            key: key.other(),
            away: false,
            choice,
        });
        let link = self.new_link(now, pairing, peer, cap_hash(&resume), unconfirmed);
        let (topic, language) = match role {
            Role::Client => {
                let handshake_due = Some(now.mono + self.limits.handshake_timeout);
                self.link(
                    conn,
                    chat,
                    Link {
                        handshake_due,
                        ..link
                    },
                );
                self.client_paired(now, conn);
                // The young person learns nothing of the counsellor's side.
                (None, None)
            }
            Role::Counsellor => {
                self.link(conn, chat, link);
                self.refresh_offer(conn);
                choice
            }
        };
        self.send(
            conn,
            FromRelay::Paired {
                chat,
                pairing_id: pairing,
                resume,
                topic,
                language,
            },
        );
        Some(chat)
    }

    /// Opens a young person's side of the chat `pairing` with a colleague
    /// it was moved to. Should the colleague's relay refuse its half, the
    /// young person goes back to the queue ahead of newcomers.
    pub(super) fn open_moved_half(
        &mut self,
        now: Now,
        client: ConnId,
        pairing: PairingId,
        choice: Choice,
    ) -> bool {
        let place = self.priority_request(now, client);
        let Some(chat) = self.open_half(now, client, Role::Client, pairing, choice) else {
            return false;
        };
        if let Some(link) = self.link_mut(client, chat) {
            link.place_if_refused = place;
        }
        true
    }

    /// Asks the relay where the colleague `name` is to open its side of
    /// the chat `pairing`.
    pub(super) fn transfer_to(&mut self, name: String, pairing: PairingId, choice: Choice) {
        let (topic, language) = choice;
        self.router.handle_command(RouteCommand::TransferTo {
            name,
            pairing,
            topic,
            language,
        });
    }

    /// A colleague on another relay moved a chat to `name` here: its side
    /// opens, or (nobody here can take it) the young person's side hears
    /// that it was refused.
    pub(super) fn on_transfer_in(
        &mut self,
        now: Now,
        name: &str,
        pairing: PairingId,
        choice: Choice,
    ) {
        let opened = match self.find_colleague(None, name) {
            Ok(colleague) => {
                (self.open_half(now, colleague, Role::Counsellor, pairing, choice)).is_some()
            }
            Err(_) => false,
        };
        if !opened {
            let client = SideKey {
                pairing,
                role: Role::Client,
            };
            self.deliver(client, PeerMessage::Refused);
        }
    }

    /// What the other relays say of the colleague `name` changed.
    pub(super) fn on_presence_elsewhere(&mut self, name: String, presence: Presence) {
        if presence == Presence::SignedOut {
            self.presence_elsewhere.remove(&name);
        } else {
            self.presence_elsewhere.insert(name.clone(), presence);
        }
        self.update_presence(&name);
    }

    /// A counsellor here moves a chat whose young person is on another
    /// relay: to a colleague here (a new chat, whose young person's side
    /// that relay opens on [`PeerMessage::Moved`]) or back to the queue
    /// (END(TRANSFERRED) to that side).
    pub(super) fn transfer_remote(
        &mut self,
        now: Now,
        conn: ConnId,
        chat: ChatNumber,
        peer: RemotePeer,
        colleague: Option<Colleague>,
    ) {
        let end = FromRelay::End {
            chat,
            reason: EndReason::Transferred,
        };
        let Some(colleague) = colleague else {
            self.end_chat(conn, chat, EndReason::Transferred);
            // The counsellor hears END(TRANSFERRED) as confirmation, too.
            self.send(conn, end);
            return;
        };
        if self.unlink(conn, chat).is_none() {
            return;
        }
        self.stats.ended(EndReason::Transferred);
        self.refresh_offer(conn);
        self.send(conn, end);
        let pairing = self.new_pairing_id();
        self.deliver(peer.key, PeerMessage::Moved { pairing });
        let colleague = match colleague {
            Colleague::Here(colleague) => colleague,
            Colleague::Elsewhere(name) => return self.transfer_to(name, pairing, peer.choice),
        };
        let opened = self.open_half(now, colleague, Role::Counsellor, pairing, peer.choice);
        if opened.is_none() {
            let client = SideKey {
                pairing,
                role: Role::Client,
            };
            self.deliver(client, PeerMessage::End(EndReason::PeerDisconnected));
        }
    }

    /// A message from a side on another relay for the side `to` here.
    pub(super) fn on_delivered(&mut self, now: Now, to: SideKey, message: PeerMessage) {
        match self.index.remote_sides.get(&to).copied() {
            Some(Place::Live(conn, chat)) => self.delivered_live(now, conn, chat, message),
            Some(Place::Away(h)) => self.delivered_away(now, h, to, message),
            None => match message {
                PeerMessage::End(_) | PeerMessage::Refused => {}
                PeerMessage::Moved { pairing } => {
                    let counsellor = SideKey {
                        pairing,
                        role: Role::Counsellor,
                    };
                    self.deliver(counsellor, PeerMessage::End(EndReason::PeerDisconnected));
                }
                PeerMessage::Forward(_) | PeerMessage::Away | PeerMessage::Back => {
                    self.deliver(to.other(), PeerMessage::End(EndReason::PeerDisconnected));
                }
            },
        }
    }

    fn delivered_live(&mut self, now: Now, conn: ConnId, chat: ChatNumber, message: PeerMessage) {
        let Some(link) = self.link_mut(conn, chat) else {
            return;
        };
        let Peer::Remote(peer) = &mut link.peer else {
            return;
        };
        match message {
            PeerMessage::Forward(blob) => {
                // The counsellor's side answered: its half stands.
                link.place_if_refused = None;
                self.send(conn, FromRelay::Forward { chat, blob })
            }
            PeerMessage::Away | PeerMessage::Back => {
                let away = message == PeerMessage::Away;
                peer.away = away;
                let frame = if away {
                    FromRelay::PeerAway { chat }
                } else {
                    FromRelay::PeerBack { chat }
                };
                self.send(conn, frame);
            }
            PeerMessage::End(reason) => {
                let is_client = self
                    .conns
                    .get(&conn)
                    .is_some_and(|c| c.pseudonym().is_none());
                self.unlink(conn, chat);
                self.send(conn, FromRelay::End { chat, reason });
                if is_client && reason == EndReason::Transferred {
                    self.back_to_queue(now, conn, None);
                } else {
                    self.chat_over(conn, reason);
                }
            }
            PeerMessage::Moved { pairing } => {
                let choice = self.conns.get(&conn).map(|c| c.choice).unwrap_or_default();
                self.unlink(conn, chat);
                self.send(
                    conn,
                    FromRelay::End {
                        chat,
                        reason: EndReason::Transferred,
                    },
                );
                if !self.open_moved_half(now, conn, pairing, choice) {
                    let counsellor = SideKey {
                        pairing,
                        role: Role::Counsellor,
                    };
                    self.deliver(counsellor, PeerMessage::End(EndReason::PeerDisconnected));
                    self.chat_over(conn, EndReason::PeerDisconnected);
                }
            }
            PeerMessage::Refused => {
                let place = link
                    .unconfirmed
                    .map(|u| u.request)
                    .or(link.place_if_refused);
                self.unlink(conn, chat);
                match place {
                    // The young person heard PAIRED and at most started its
                    // handshake, which nobody answered: to it this is a
                    // transfer back to the queue, at its place.
                    Some(place) => {
                        self.send(
                            conn,
                            FromRelay::End {
                                chat,
                                reason: EndReason::Transferred,
                            },
                        );
                        self.back_to_queue(now, conn, Some(place));
                    }
                    None => {
                        let reason = EndReason::PeerDisconnected;
                        self.send(conn, FromRelay::End { chat, reason });
                        self.chat_over(conn, reason);
                    }
                }
            }
        }
    }

    fn delivered_away(&mut self, now: Now, h: CapHash, to: SideKey, message: PeerMessage) {
        let Some(d) = self.detached.get_mut(&h) else {
            return;
        };
        match message {
            PeerMessage::Forward(blob) => {
                if d.held.len() < self.limits.max_held_frames {
                    d.held.push_back(blob);
                } else {
                    self.remove_detached(&h);
                    self.stats.ended(EndReason::PeerDisconnected);
                    self.deliver(to.other(), PeerMessage::End(EndReason::PeerDisconnected));
                }
            }
            PeerMessage::Away | PeerMessage::Back => {
                if let Peer::Remote(peer) = &mut d.peer {
                    peer.away = message == PeerMessage::Away;
                }
            }
            // The side that is away learns when it tries to resume.
            PeerMessage::End(_) => {
                self.remove_detached(&h);
            }
            PeerMessage::Moved { pairing } => {
                self.remove_detached(&h);
                let counsellor = SideKey {
                    pairing,
                    role: Role::Counsellor,
                };
                self.deliver(counsellor, PeerMessage::End(EndReason::PeerDisconnected));
            }
            PeerMessage::Refused => {
                if let Some(d) = self.remove_detached(&h)
                    && let Some(u) = d.unconfirmed
                {
                    self.requeue_away(now, u, d.deadline);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::{A, Across, B, Cluster, Did, ended, forward, paired, to};
    use crate::core::frame::{
        ChatNumber, EndReason, Frame, Label, PairingId, Presence, ResumeCapability, Role, TopicId,
        TransferTarget,
    };
    use crate::core::limits::Limits;
    use crate::core::relay::{ConnId, Credential};
    use crate::core::router::SideKey;
    use crate::core::{CloseCode, Departure};

    #[test]
    fn a_young_person_on_one_relay_chats_with_a_counsellor_on_another() {
        let mut c = Cluster::new();
        let sam = c.counsellor(B, "Sam", 1);
        let topic = TopicId::new(1);
        let (y, did) = c.client(A, topic);
        let (y_chat, y_pairing, _) = paired(&to(&did[A], y)).expect("the young person is paired");
        let sam_paired = to(&did[B], sam);
        let (s_chat, s_pairing, _) = paired(&sam_paired).expect("the counsellor is paired");
        assert_eq!(y_pairing, s_pairing, "one chat, one pairing id");
        let side = |role| SideKey {
            pairing: y_pairing,
            role,
        };
        assert_eq!(c.linked.hosted_by(A as u16), [side(Role::Client)]);
        assert_eq!(c.linked.hosted_by(B as u16), [side(Role::Counsellor)]);
        assert!(
            sam_paired
                .iter()
                .any(|f| matches!(f, Frame::Paired { topic: t, .. } if *t == topic)),
            "the counsellor hears the young person's topic"
        );
        assert_eq!(c.nodes[A].relay.take_stats().pairings, 1, "counted once");
        assert_eq!(c.nodes[B].relay.take_stats().pairings, 0);

        let did = c.send(A, y, forward(y_chat, 1));
        assert_eq!(to(&did[B], sam), vec![forward(s_chat, 1)]);
        let did = c.send(B, sam, forward(s_chat, 2));
        assert_eq!(to(&did[A], y), vec![forward(y_chat, 2)]);

        let end = Frame::End {
            chat: s_chat,
            reason: EndReason::UserEnded,
        };
        let did = c.send(B, sam, end);
        assert_eq!(did[A], ended(y, y_chat, EndReason::UserEnded));
        assert_eq!(c.linked.hosted_by(A as u16), [], "nothing to listen for");
        assert_eq!(c.linked.hosted_by(B as u16), []);
        // Sam has room again: the next young person, anywhere, is his.
        let (y2, did) = c.client(A, None);
        assert!(paired(&to(&did[A], y2)).is_some());
        assert!(paired(&to(&did[B], sam)).is_some());
    }

    #[test]
    fn a_side_away_on_its_relay_holds_what_the_other_relay_sends_until_it_resumes() {
        let mut c = Cluster::new();
        let Across {
            y,
            y_chat,
            sam,
            s_chat,
            s_cap,
            ..
        } = c.chat_across();
        c.send(A, y, forward(y_chat, 1));

        let did = c.lose(B, sam);
        assert_eq!(did[A], vec![Did::Sent(y, Frame::PeerAway { chat: y_chat })]);
        let did = c.send(A, y, forward(y_chat, 2));
        assert_eq!(did, [vec![], vec![]], "held on Sam's relay");

        let back = c.nodes[B].connect(Credential::Counsellor {
            pseudonym: "Sam".into(),
        });
        c.nodes[B].hello(back, Role::Counsellor);
        let did = c.send(B, back, Frame::Resume { capability: s_cap });
        assert_eq!(
            to(&did[B], back),
            vec![Frame::Resumed { chat: s_chat }, forward(s_chat, 2)]
        );
        assert_eq!(did[A], vec![Did::Sent(y, Frame::PeerBack { chat: y_chat })]);
        let did = c.send(B, back, forward(s_chat, 3));
        assert_eq!(to(&did[A], y), vec![forward(y_chat, 3)]);

        // The young person's side goes away and comes back the same way.
        let did = c.lose(A, y);
        assert_eq!(to(&did[B], back), vec![Frame::PeerAway { chat: s_chat }]);
    }

    fn status(available: bool) -> Frame {
        Frame::Status {
            available,
            capacity: 1,
            topics: Vec::new(),
            languages: Vec::new(),
        }
    }

    /// Sam on relay B; a young person joins on relay A, whose half of the
    /// pair comes first (and who begins its handshake, if
    /// `handshake_begun`); Sam goes away on his relay before his half
    /// arrives there, so that it is refused. Sam, the young person, its
    /// chat, and what the relays then did.
    fn refused_half(handshake_begun: bool) -> (Cluster, ConnId, ConnId, ChatNumber, Vec<Vec<Did>>) {
        let mut c = Cluster::new();
        let sam = c.counsellor(B, "Sam", 1);
        let y = c.nodes[A].connect(Credential::Anonymous);
        c.nodes[A].hello(y, Role::Client);
        let join = Frame::Join {
            topic: None,
            language: None,
            pow_solution: [0; 8],
        };
        let did_a = c.nodes[A].send(y, join);
        let (y_chat, _, _) = paired(&to(&did_a, y)).expect("its half came first");
        if handshake_begun {
            let _ = c.nodes[A].send(y, forward(y_chat, 1));
        }
        let did_b = c.nodes[B].send(sam, status(false));
        assert!(paired(&to(&did_b, sam)).is_none(), "no room: refused");
        assert_eq!(c.nodes[B].relay.take_stats().late_pairings, 1);
        let did = c.settle(vec![Vec::new(); 2]);
        (c, sam, y, y_chat, did)
    }

    /// To the young person, a refused half is a transfer back to its place.
    fn back_at_its_place(y_chat: ChatNumber) -> Vec<Frame> {
        vec![
            Frame::End {
                chat: y_chat,
                reason: EndReason::Transferred,
            },
            Frame::Queued {
                position: 1,
                estimated_wait_secs: None,
            },
        ]
    }

    #[test]
    fn a_half_refused_by_the_counsellors_relay_puts_the_young_person_back_at_its_place() {
        let (mut c, sam, y, y_chat, did) = refused_half(false);
        assert_eq!(to(&did[A], y), back_at_its_place(y_chat));
        // And it is the next one when Sam is back.
        let did = c.send(B, sam, status(true));
        assert!(paired(&to(&did[A], y)).is_some());
        assert!(paired(&to(&did[B], sam)).is_some());
    }

    /// The same when the young person had already sent its handshake's
    /// first message (which nobody on Sam's side will answer): it is
    /// still a transfer back to its place, not a lost chat.
    #[test]
    fn a_half_refused_after_the_young_person_began_its_handshake_still_puts_it_back() {
        let (mut c, sam, y, y_chat, did) = refused_half(true);
        assert_eq!(to(&did[A], y), back_at_its_place(y_chat));
        // Once Sam's side answers, the chat stands.
        let did = c.send(B, sam, status(true));
        let (y_chat, _, _) = paired(&to(&did[A], y)).expect("paired again");
        let (s_chat, _, _) = paired(&to(&did[B], sam)).expect("Sam is paired");
        let _ = c.send(A, y, forward(y_chat, 1));
        let did = c.send(B, sam, forward(s_chat, 2));
        assert_eq!(to(&did[A], y), vec![forward(y_chat, 2)]);
    }

    #[test]
    fn a_half_whose_young_person_left_ends_at_once_for_the_counsellor() {
        let mut c = Cluster::new();
        let (y, _) = c.client(A, None);
        // Sam signs in and his relay opens his half at once; the young
        // person leaves before its relay hears of the pair.
        let sam = c.nodes[B].connect(Credential::Counsellor {
            pseudonym: "Sam".into(),
        });
        c.nodes[B].hello(sam, Role::Counsellor);
        let status = Frame::Status {
            available: true,
            capacity: 1,
            topics: Vec::new(),
            languages: Vec::new(),
        };
        let did_b = c.nodes[B].send(sam, status);
        let (s_chat, _, _) = paired(&to(&did_b, sam)).expect("Sam's half came");
        let now = c.nodes[A].now;
        let left = Departure::Left(EndReason::UserEnded);
        c.nodes[A].relay.handle_disconnect(now, y, left);
        c.nodes[A].drain();
        let did = c.settle(vec![Vec::new(); 2]);
        assert_eq!(
            to(&did[B], sam),
            vec![Frame::End {
                chat: s_chat,
                reason: EndReason::PeerDisconnected
            }]
        );
        assert_eq!(c.nodes[A].relay.take_stats().late_pairings, 1);
    }

    #[test]
    fn a_chat_across_relays_moves_to_a_colleague_and_back_to_the_queue() {
        let mut c = Cluster::new();
        let sam = c.counsellor(B, "Sam", 1);
        let topic = TopicId::new(1);
        let (y, did) = c.client(A, topic);
        let (y_chat, pairing, _) = paired(&to(&did[A], y)).expect("paired");
        let (s_chat, _, _) = paired(&to(&did[B], sam)).expect("paired");
        c.send(A, y, forward(y_chat, 1));
        let kim = c.counsellor(B, "Kim", 1);

        let name = Label::new("Kim").expect("a label");
        let transfer = Frame::Transfer {
            chat: s_chat,
            target: TransferTarget::Colleague(name),
        };
        let did = c.send(B, sam, transfer);
        assert_eq!(
            to(&did[B], sam).first(),
            Some(&Frame::End {
                chat: s_chat,
                reason: EndReason::Transferred
            })
        );
        let kim_frames = to(&did[B], kim);
        let (k_chat, new_pairing, _) = paired(&kim_frames).expect("Kim has the chat");
        assert!(
            kim_frames
                .iter()
                .any(|f| matches!(f, Frame::Paired { topic: t, .. } if *t == topic))
        );
        let y_frames = to(&did[A], y);
        assert_eq!(
            y_frames.first(),
            Some(&Frame::End {
                chat: y_chat,
                reason: EndReason::Transferred
            })
        );
        let (y_chat2, y_pairing, _) = paired(&y_frames).expect("the young person is paired anew");
        assert_eq!(y_pairing, new_pairing);
        assert_ne!(new_pairing, pairing);
        let did = c.send(A, y, forward(y_chat2, 2));
        assert_eq!(to(&did[B], kim), vec![forward(k_chat, 2)]);

        // Kim hands the young person back to the queue, where a
        // counsellor with room takes it.
        let back = Frame::Transfer {
            chat: k_chat,
            target: TransferTarget::Queue,
        };
        let did = c.send(B, kim, back);
        let y_frames = to(&did[A], y);
        assert_eq!(
            y_frames.first(),
            Some(&Frame::End {
                chat: y_chat2,
                reason: EndReason::Transferred
            })
        );
        assert!(paired(&y_frames).is_some(), "and paired again");
        let again = [sam, kim].map(|conn| paired(&to(&did[B], conn)).is_some());
        assert_eq!(again.iter().filter(|p| **p).count(), 1, "{did:?}");
        // Each relay listens for exactly its side of the one chat there is.
        let (a, b) = (c.linked.hosted_by(A as u16), c.linked.hosted_by(B as u16));
        assert_eq!((a.len(), b.len()), (1, 1), "{a:?} {b:?}");
        assert_eq!(a[0], b[0].other());
        assert_eq!(a[0].role, Role::Client);
    }

    const C: usize = 2;

    fn colleague(name: &str, presence: Presence) -> Frame {
        Frame::Colleague {
            name: Label::new(name).expect("a label"),
            presence,
        }
    }

    fn transferred_end(chat: ChatNumber) -> Frame {
        Frame::End {
            chat,
            reason: EndReason::Transferred,
        }
    }

    fn transfer(chat: ChatNumber, name: &str) -> Frame {
        Frame::Transfer {
            chat,
            target: TransferTarget::Colleague(Label::new(name).expect("a label")),
        }
    }

    #[test]
    fn colleagues_see_each_other_across_relays_and_a_chat_moves_to_one_elsewhere() {
        let mut c = Cluster::with_nodes(3, Duration::ZERO);
        let sam = c.counsellor(A, "Sam", 1);
        let (noor, did) = c.sign_in(C, "Noor", 1);
        assert!(
            to(&did[A], sam).contains(&colleague("Noor", Presence::Available)),
            "Sam on A hears of Noor on C: {did:?}"
        );
        let (y, did) = c.client(B, TopicId::new(1));
        let (y_chat, _, _) = paired(&to(&did[B], y)).expect("paired");
        // The first counsellor to sign in takes the first chat.
        let (s_chat, _, _) = paired(&to(&did[A], sam)).expect("Sam has the chat");
        assert!(paired(&to(&did[C], noor)).is_none());
        c.send(B, y, forward(y_chat, 1));

        let did = c.send(A, sam, transfer(s_chat, "Noor"));
        assert_eq!(to(&did[A], sam).first(), Some(&transferred_end(s_chat)));
        let y_frames = to(&did[B], y);
        assert_eq!(y_frames.first(), Some(&transferred_end(y_chat)));
        let (y_chat2, y_pairing, _) = paired(&y_frames).expect("the young person is paired anew");
        let noor_frames = to(&did[C], noor);
        let (n_chat, n_pairing, _) = paired(&noor_frames).expect("Noor, on C, has the chat");
        assert_eq!(y_pairing, n_pairing);
        assert!(
            noor_frames
                .iter()
                .any(|f| matches!(f, Frame::Paired { topic, .. } if *topic == TopicId::new(1))),
            "with the young person's topic"
        );
        let did = c.send(B, y, forward(y_chat2, 2));
        assert_eq!(to(&did[C], noor), vec![forward(n_chat, 2)]);
        let did = c.send(C, noor, forward(n_chat, 3));
        assert_eq!(to(&did[B], y), vec![forward(y_chat2, 3)]);
        // Noor is full now, and Sam on A hears so.
        assert!(
            c.nodes[A].relay.presence.get("Noor") == Some(&Presence::Full),
            "{:?}",
            c.nodes[A].relay.presence
        );
    }

    #[test]
    fn a_young_person_on_the_counsellors_relay_moves_to_a_colleague_elsewhere() {
        let mut c = Cluster::with_nodes(3, Duration::ZERO);
        let sam = c.counsellor(A, "Sam", 1);
        let (y, did) = c.client(A, None);
        let (y_chat, _, _) = paired(&to(&did[A], y)).expect("paired");
        let (s_chat, _, _) = paired(&to(&did[A], sam)).expect("paired");
        c.send(A, y, forward(y_chat, 1));
        let noor = c.counsellor(C, "Noor", 1);

        let did = c.send(A, sam, transfer(s_chat, "Noor"));
        let y_frames = to(&did[A], y);
        assert_eq!(y_frames.first(), Some(&transferred_end(y_chat)));
        let (y_chat2, _, _) = paired(&y_frames).expect("paired anew");
        let (n_chat, _, _) = paired(&to(&did[C], noor)).expect("Noor has the chat");
        let did = c.send(A, y, forward(y_chat2, 2));
        assert_eq!(to(&did[C], noor), vec![forward(n_chat, 2)]);
        let did = c.send(C, noor, forward(n_chat, 3));
        assert_eq!(to(&did[A], y), vec![forward(y_chat2, 3)]);
    }

    #[test]
    fn a_colleague_elsewhere_who_went_away_meanwhile_sends_the_young_person_back_to_the_queue() {
        let mut c = Cluster::with_nodes(3, Duration::ZERO);
        let sam = c.counsellor(A, "Sam", 1);
        let (y, did) = c.client(B, None);
        let (y_chat, _, _) = paired(&to(&did[B], y)).expect("paired");
        let (s_chat, _, _) = paired(&to(&did[A], sam)).expect("paired");
        c.send(B, y, forward(y_chat, 1));
        let noor = c.counsellor(C, "Noor", 1);
        // Noor goes away on her relay; Sam's relay has not heard it yet
        // when Sam moves the chat to her.
        c.nodes[C].send(noor, status(false));
        let did = c.send(A, sam, transfer(s_chat, "Noor"));
        assert!(paired(&to(&did[C], noor)).is_none(), "Noor takes nothing");
        let y_frames = to(&did[B], y);
        let transferred = |f: &&Frame| {
            matches!(
                f,
                Frame::End {
                    reason: EndReason::Transferred,
                    ..
                }
            )
        };
        assert_eq!(
            y_frames.iter().filter(transferred).count(),
            2,
            "moved to Noor, and back from her half that was refused: {y_frames:?}"
        );
        // Back in the queue ahead of newcomers, where Sam (free again)
        // takes it at once.
        let paired_frames = |f: &&Frame| matches!(f, Frame::Paired { .. });
        assert_eq!(
            y_frames.iter().filter(paired_frames).count(),
            2,
            "{y_frames:?}"
        );
        assert!(
            paired(&to(&did[A], sam)).is_some(),
            "Sam has the young person again"
        );
    }

    #[test]
    fn a_relay_that_shuts_down_ends_its_chats_for_sides_on_other_relays() {
        let mut c = Cluster::new();
        let sam = c.counsellor(B, "Sam", 1);
        let (y, did) = c.client(A, None);
        assert!(paired(&to(&did[A], y)).is_some());
        let (s_chat, _, _) = paired(&to(&did[B], sam)).expect("paired");
        let now = c.nodes[A].now;
        c.nodes[A].relay.handle_shutdown(now);
        c.nodes[A].relay.handle_timeout(now);
        let mut did = vec![c.nodes[A].drain(), Vec::new()];
        did = c.settle(did);
        assert!(did[A].contains(&Did::Closed(y, CloseCode::ShuttingDown)));
        assert_eq!(
            to(&did[B], sam),
            vec![Frame::End {
                chat: s_chat,
                reason: EndReason::PeerDisconnected
            }]
        );
    }

    #[test]
    fn ends_that_cross_between_relays_settle_with_one_end_each() {
        let latency = Duration::from_millis(50);
        let mut c = Cluster::with_latency(latency);
        let sam = c.counsellor(B, "Sam", 1);
        let (y, _) = c.client(A, None);
        let did = c.after(latency);
        let (y_chat, _, _) = paired(&to(&did[A], y)).expect("paired");
        let (s_chat, _, _) = paired(&to(&did[B], sam)).expect("paired");
        c.send(A, y, forward(y_chat, 1));
        c.after(latency);
        // Sam ends while the young person's next message is on its way:
        // it reaches a side that is gone, whose relay answers with an END
        // that reaches a side that is gone too, and is not answered.
        let end = Frame::End {
            chat: s_chat,
            reason: EndReason::UserEnded,
        };
        let did_b = c.nodes[B].send(sam, end);
        assert_eq!(
            did_b,
            vec![],
            "nothing for Sam: his END is its own confirmation"
        );
        let did_a = c.nodes[A].send(y, forward(y_chat, 2));
        assert_eq!(did_a, vec![]);
        let mut did = c.after(latency);
        for (all, more) in did.iter_mut().zip(c.after(latency)) {
            all.extend(more);
        }
        assert_eq!(did[A], ended(y, y_chat, EndReason::UserEnded));
        assert_eq!(did[B], vec![]);
        for bench in &c.nodes {
            assert!(
                bench.relay.index.remote_sides.is_empty(),
                "nothing left over"
            );
            assert!(bench.relay.detached.is_empty());
        }
    }

    #[test]
    fn a_resume_window_that_passes_on_one_relay_ends_the_chat_on_the_other() {
        let mut c = Cluster::new();
        let sam = c.counsellor(B, "Sam", 1);
        let (y, did) = c.client(A, None);
        let (y_chat, _, _) = paired(&to(&did[A], y)).expect("paired");
        c.send(A, y, forward(y_chat, 1));
        c.lose(B, sam);
        let window = Limits::default().resume_window;
        for bench in &mut c.nodes {
            bench.now.advance(window + Duration::from_secs(1));
        }
        let did = c.settle(vec![Vec::new(); 2]);
        assert_eq!(did[A], ended(y, y_chat, EndReason::PeerDisconnected));
    }

    /// The shared queue under joins that cross on their way to it: 60
    /// young people join three relays in turn, 5 ms apart (their JOINs
    /// are in flight together: the router answers after 40 ms), with
    /// topics 1 to 3, while three counsellors on the three relays take 3, 2
    /// and 1 chats at once and end each chat 200 ms after it began. The
    /// relays' offers reach the router 40 ms late, while its own pairings
    /// are on their way to them; it counts those into the room
    /// (`Offer::pairings_seen`), so it never pairs with a counsellor who is
    /// full. Nobody is in two chats at once, no chat is lost or undone, no
    /// counsellor ever has more chats than its capacity, everybody has a
    /// chat that stands, and per topic the queue pairs in the order of
    /// joining.
    #[test]
    fn three_relays_pair_in_joining_order_per_topic_within_capacity() {
        use std::collections::HashMap;

        /// What the test counts as the relays act.
        #[derive(Default)]
        struct Tally {
            /// Each counsellor's chats now, and its capacity.
            load: HashMap<(usize, ConnId), (usize, usize)>,
            /// The young people, in the order they joined.
            joined: Vec<(usize, ConnId, Option<TopicId>)>,
            /// When each young person first heard PAIRED.
            first_paired: HashMap<usize, Duration>,
            /// Each young person's chat now, by pairing id.
            in_chat: HashMap<usize, PairingId>,
            /// Pairings that reached their counsellor: they stand.
            stood: std::collections::HashSet<PairingId>,
            /// Halves refused and undone.
            undone: usize,
            /// Chats that stood and were ended by their counsellor.
            done: usize,
            /// Counsellors' chats to end, and when.
            ending: Vec<(Duration, usize, ConnId, ChatNumber)>,
            elapsed: Duration,
        }

        impl Tally {
            fn young(&self, n: usize, conn: ConnId) -> Option<usize> {
                self.joined
                    .iter()
                    .position(|(jn, jc, _)| *jn == n && *jc == conn)
            }

            /// Counts what the relays did and answers for the young
            /// people (their handshake's first message), until nothing
            /// more happens.
            fn take(&mut self, c: &mut Cluster, mut did: Vec<Vec<Did>>) {
                loop {
                    let mut more = vec![Vec::new(); c.nodes.len()];
                    for (n, did) in did.iter().enumerate() {
                        for d in did {
                            let Did::Sent(conn, frame) = d else { continue };
                            if let Some((now, capacity)) = self.load.get_mut(&(n, *conn)) {
                                if let Frame::Paired {
                                    chat, pairing_id, ..
                                } = frame
                                {
                                    *now += 1;
                                    assert!(*now <= *capacity, "a counsellor over capacity");
                                    self.stood.insert(*pairing_id);
                                    let at = self.elapsed + Duration::from_millis(200);
                                    self.ending.push((at, n, *conn, *chat));
                                }
                                continue;
                            }
                            let Some(i) = self.young(n, *conn) else {
                                continue;
                            };
                            match frame {
                                Frame::Paired {
                                    chat, pairing_id, ..
                                } => {
                                    assert!(!self.in_chat.contains_key(&i), "{i} in two chats");
                                    self.in_chat.insert(i, *pairing_id);
                                    self.first_paired.entry(i).or_insert(self.elapsed);
                                    more[n].extend(c.nodes[n].send(*conn, forward(*chat, 1)));
                                }
                                // Its counsellor ended a chat that stood.
                                Frame::End {
                                    reason: EndReason::UserEnded,
                                    ..
                                } => {
                                    let pairing = self.in_chat.remove(&i);
                                    assert!(pairing.is_some_and(|p| self.stood.contains(&p)));
                                    self.done += 1;
                                }
                                // A half refused: back at its place.
                                Frame::End { reason, .. } => {
                                    assert_eq!(
                                        *reason,
                                        EndReason::Transferred,
                                        "{i} lost its chat"
                                    );
                                    let pairing = self.in_chat.remove(&i);
                                    assert!(pairing.is_some_and(|p| !self.stood.contains(&p)));
                                    self.undone += 1;
                                }
                                _ => {}
                            }
                        }
                    }
                    if more.iter().all(Vec::is_empty) {
                        return;
                    }
                    did = c.settle(more);
                }
            }

            /// Moves the clock on by `step` and takes what happens.
            fn wait(&mut self, c: &mut Cluster, step: Duration) {
                self.elapsed += step;
                let did = c.after(step);
                self.take(c, did);
            }
        }

        let latency = Duration::from_millis(40);
        let step = Duration::from_millis(5);
        let mut c = Cluster::with_nodes(3, latency);
        let mut tally = Tally::default();
        for (n, name, capacity) in [(0, "Sam", 3u8), (1, "Noor", 2), (2, "Ali", 1)] {
            let conn = c.counsellor(n, name, capacity);
            tally.load.insert((n, conn), (0, usize::from(capacity)));
        }
        tally.wait(&mut c, latency * 3);
        let topic = |i: usize| TopicId::new(1 + (i / 2 % 3) as u16);
        for i in 0..60 {
            let n = i % 3;
            let (conn, did) = c.client(n, topic(i));
            tally.joined.push((n, conn, topic(i)));
            tally.take(&mut c, did);
            tally.wait(&mut c, step);
        }
        // Counsellors end chats as they come due, until everybody has had
        // a chat that stood (a young person's chat ends with its
        // counsellor's END, and it leaves).
        for _ in 0..4000 {
            if tally.done == 60 {
                break;
            }
            let elapsed = tally.elapsed;
            let (due, later): (Vec<_>, Vec<_>) =
                tally.ending.drain(..).partition(|e| e.0 <= elapsed);
            tally.ending = later;
            let mut did = vec![Vec::new(); 3];
            for (_, n, conn, chat) in due {
                let end = Frame::End {
                    chat,
                    reason: EndReason::UserEnded,
                };
                did[n].extend(c.nodes[n].send(conn, end));
                if let Some((now, _)) = tally.load.get_mut(&(n, conn)) {
                    *now -= 1;
                }
            }
            let did = c.settle(did);
            tally.take(&mut c, did);
            tally.wait(&mut c, step);
        }
        assert_eq!(tally.done, 60, "not everybody had a chat that stood");
        assert_eq!(tally.stood.len(), 60);
        // The router counts the pairings on their way into each
        // counsellor's room, so no half is refused for want of room.
        assert_eq!(tally.undone, 0, "halves refused");
        // Per topic, the queue paired in joining order (a young person put
        // back at its place may then wait for the next counsellor free).
        for i in 0..60 {
            for j in i + 1..60 {
                if tally.joined[i].2 == tally.joined[j].2 {
                    let (a, b) = (tally.first_paired[&i], tally.first_paired[&j]);
                    assert!(
                        a <= b,
                        "{j} was first paired at {b:?}, before {i} (who joined first) at {a:?}"
                    );
                }
            }
        }
        // Pairs crossed relays as well as staying on one.
        assert!(tally.joined.iter().any(|(n, ..)| *n != 0));
    }

    mod interleavings {
        use std::collections::{HashMap, HashSet};

        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            Client {
                node: usize,
            },
            Counsellor {
                node: usize,
                name: usize,
                capacity: u8,
            },
            Forward {
                who: usize,
                chat: u32,
            },
            End {
                who: usize,
                chat: u32,
                block: bool,
            },
            Transfer {
                who: usize,
                chat: u32,
                to_queue: bool,
            },
            Status {
                who: usize,
                available: bool,
                capacity: u8,
            },
            Lose {
                who: usize,
            },
            Leave {
                who: usize,
            },
            Resume {
                which: usize,
                elsewhere: bool,
            },
            Wait {
                ms: u64,
            },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0..2usize).prop_map(|node| Op::Client { node }),
                3 => (0..2usize, 0..2usize, 1..3u8)
                    .prop_map(|(node, name, capacity)| Op::Counsellor { node, name, capacity }),
                6 => (any::<usize>(), 1..4u32).prop_map(|(who, chat)| Op::Forward { who, chat }),
                2 => (any::<usize>(), 1..4u32, any::<bool>())
                    .prop_map(|(who, chat, block)| Op::End { who, chat, block }),
                2 => (any::<usize>(), 1..4u32, any::<bool>())
                    .prop_map(|(who, chat, to_queue)| Op::Transfer { who, chat, to_queue }),
                2 => (any::<usize>(), any::<bool>(), 0..3u8)
                    .prop_map(|(who, available, capacity)| Op::Status { who, available, capacity }),
                2 => any::<usize>().prop_map(|who| Op::Lose { who }),
                1 => any::<usize>().prop_map(|who| Op::Leave { who }),
                3 => (any::<usize>(), any::<bool>())
                    .prop_map(|(which, elsewhere)| Op::Resume { which, elsewhere }),
                4 => (0..120u64).prop_map(|ms| Op::Wait { ms }),
            ]
        }

        /// A connection as the test knows it.
        #[derive(Clone)]
        struct Known {
            node: usize,
            conn: ConnId,
            name: Option<&'static str>,
            available: bool,
            capacity: usize,
        }

        #[derive(Default)]
        struct Reached {
            across: bool,
            forwarded: bool,
            resumed_elsewhere: bool,
        }

        /// One case: two relays, 40 ms apart, and what their endpoints do.
        fn run(ops: Vec<Op>) -> Result<Reached, TestCaseError> {
            let latency = Duration::from_millis(40);
            let mut c = Cluster::with_latency(latency);
            let names = ["Sam", "Noor"];
            let mut known: Vec<Known> = Vec::new();
            let mut closed: HashSet<(usize, ConnId)> = HashSet::new();
            let mut chats: HashMap<(usize, ConnId), HashSet<ChatNumber>> = HashMap::new();
            let mut caps: Vec<(usize, Option<&'static str>, ResumeCapability)> = Vec::new();
            let mut pairings: HashMap<PairingId, Vec<usize>> = HashMap::new();
            // Who holds each chat side now: a RESUME moves it (§7.4).
            let mut holders: HashMap<[u8; 32], (usize, ConnId, ChatNumber)> = HashMap::new();
            // Chats a RESUME elsewhere may be taking from a connection that
            // still looks alive (§7.4): that connection hears nothing, may
            // still get frames in them until the move, and they no longer
            // count against its capacity.
            let mut moving: HashMap<(usize, ConnId), HashSet<ChatNumber>> = HashMap::new();
            let mut reached = Reached::default();
            // What each RESUME presented, until it is answered.
            let mut resuming: HashMap<(usize, ConnId), ResumeCapability> = HashMap::new();
            let mut came_back_elsewhere: HashSet<(usize, ConnId)> = HashSet::new();
            for op in ops {
                let live: Vec<Known> = known
                    .iter()
                    .filter(|k| !closed.contains(&(k.node, k.conn)))
                    .cloned()
                    .collect();
                let pick = |who: usize| live.get(who % live.len().max(1)).cloned();
                let mut did = vec![Vec::new(); 2];
                match op {
                    Op::Client { node } => {
                        let (conn, d) = c.client(node, None);
                        known.push(Known {
                            node,
                            conn,
                            name: None,
                            available: false,
                            capacity: 0,
                        });
                        did = d;
                    }
                    Op::Counsellor {
                        node,
                        name,
                        capacity,
                    } => {
                        let name = names[name];
                        let conn = c.nodes[node].connect(Credential::Counsellor {
                            pseudonym: name.into(),
                        });
                        c.nodes[node].hello(conn, Role::Counsellor);
                        known.push(Known {
                            node,
                            conn,
                            name: Some(name),
                            available: true,
                            capacity: usize::from(capacity),
                        });
                        let status = Frame::Status {
                            available: true,
                            capacity,
                            topics: Vec::new(),
                            languages: Vec::new(),
                        };
                        did = c.send(node, conn, status);
                    }
                    // Mostly in a chat the sender is in; now and then in
                    // any chat number.
                    Op::Forward { who, chat } => {
                        let mut in_chats: Vec<(usize, ConnId, ChatNumber)> = chats
                            .iter()
                            .filter(|(at, _)| !closed.contains(at))
                            .flat_map(|((n, conn), mine)| mine.iter().map(|c| (*n, *conn, *c)))
                            .collect();
                        in_chats.sort_by_key(|(n, conn, c)| (*n, *conn, *c));
                        let any = pick(who)
                            .zip(ChatNumber::new(chat))
                            .map(|(k, c)| (k.node, k.conn, c));
                        let sent = match in_chats.get(who % in_chats.len().max(1)) {
                            Some(ours) if chat < 3 => Some(*ours),
                            _ => any,
                        };
                        if let Some((node, conn, chat)) = sent {
                            did = c.send(node, conn, forward(chat, 9));
                        }
                    }
                    Op::End { who, chat, block } => {
                        if let (Some(k), Some(chat)) = (pick(who), ChatNumber::new(chat)) {
                            let reason = if block && k.name.is_some() {
                                EndReason::Blocked
                            } else {
                                EndReason::UserEnded
                            };
                            // An END is its own confirmation: no END comes back.
                            if let Some(mine) = chats.get_mut(&(k.node, k.conn)) {
                                mine.remove(&chat);
                            }
                            did = c.send(k.node, k.conn, Frame::End { chat, reason });
                        }
                    }
                    Op::Transfer {
                        who,
                        chat,
                        to_queue,
                    } => {
                        if let (Some(k), Some(chat)) = (pick(who), ChatNumber::new(chat))
                            && k.name.is_some()
                        {
                            let target = if to_queue {
                                TransferTarget::Queue
                            } else {
                                let other = names.iter().find(|n| Some(**n) != k.name);
                                let name = Label::new(other.copied().unwrap_or("Sam"));
                                TransferTarget::Colleague(name.expect("a label"))
                            };
                            did = c.send(k.node, k.conn, Frame::Transfer { chat, target });
                        }
                    }
                    Op::Status {
                        who,
                        available,
                        capacity,
                    } => {
                        if let Some(k) = pick(who).filter(|k| k.name.is_some()) {
                            for known in known.iter_mut() {
                                if (known.node, known.conn) == (k.node, k.conn) {
                                    known.available = available;
                                    known.capacity = usize::from(capacity);
                                }
                            }
                            let status = Frame::Status {
                                available,
                                capacity,
                                topics: Vec::new(),
                                languages: Vec::new(),
                            };
                            did = c.send(k.node, k.conn, status);
                        }
                    }
                    Op::Lose { who } => {
                        if let Some(k) = pick(who) {
                            closed.insert((k.node, k.conn));
                            did = c.lose(k.node, k.conn);
                        }
                    }
                    Op::Leave { who } => {
                        if let Some(k) = pick(who) {
                            closed.insert((k.node, k.conn));
                            let now = c.nodes[k.node].now;
                            let left = Departure::Left(EndReason::UserEnded);
                            c.nodes[k.node].relay.handle_disconnect(now, k.conn, left);
                            did[k.node] = c.nodes[k.node].drain();
                            did = c.settle(did);
                        }
                    }
                    // On the relay that gave the capability, or the other.
                    Op::Resume { which, elsewhere } => {
                        if let Some((node, name, capability)) =
                            caps.get(which % caps.len().max(1)).copied()
                        {
                            let node = if elsewhere { 1 - node } else { node };
                            if let Some((n, old, chat)) = holders.get(&capability.0).copied()
                                && let Some(theirs) = chats.get_mut(&(n, old))
                                && theirs.remove(&chat)
                            {
                                moving.entry((n, old)).or_default().insert(chat);
                            }
                            let (conn, d) = c.resume(node, name, capability);
                            did = d;
                            known.push(Known {
                                node,
                                conn,
                                name,
                                available: false,
                                capacity: 0,
                            });
                            resuming.insert((node, conn), capability);
                            if elsewhere {
                                came_back_elsewhere.insert((node, conn));
                            }
                        }
                    }
                    Op::Wait { ms } => did = c.after(Duration::from_millis(ms)),
                }
                // Time runs on between two steps, so that answers arrive
                // (half the latency: some still cross).
                let later = c.after(latency / 2);
                for (all, more) in did.iter_mut().zip(later) {
                    all.extend(more);
                }
                for (node, did) in did.iter().enumerate() {
                    for d in did {
                        let (conn, frame) = match d {
                            Did::Closed(conn, _) => {
                                closed.insert((node, *conn));
                                chats.remove(&(node, *conn));
                                continue;
                            }
                            Did::Sent(conn, frame) => (*conn, frame),
                            Did::Stored(..) => continue,
                        };
                        prop_assert!(
                            !closed.contains(&(node, conn)),
                            "sent to a closed connection"
                        );
                        let who = known.iter().find(|k| (k.node, k.conn) == (node, conn));
                        let presented = resuming.get(&(node, conn)).copied();
                        reached.resumed_elsewhere |= came_back_elsewhere.contains(&(node, conn))
                            && matches!(
                                frame,
                                Frame::Resumed { .. } | Frame::Paired { .. } | Frame::Queued { .. }
                            );
                        if let (Frame::Resumed { chat }, Some(cap)) = (frame, presented) {
                            // The chat left the connection that held it.
                            if let Some((n, old, old_chat)) =
                                holders.insert(cap.0, (node, conn, *chat))
                                && let Some(theirs) = chats.get_mut(&(n, old))
                            {
                                theirs.remove(&old_chat);
                            }
                        }
                        let mine = chats.entry((node, conn)).or_default();
                        match frame {
                            Frame::Paired {
                                chat,
                                pairing_id,
                                resume,
                                ..
                            } => {
                                if let Some(k) = who.filter(|k| k.name.is_some()) {
                                    prop_assert!(k.available, "paired while away");
                                    prop_assert!(
                                        mine.len() < k.capacity,
                                        "over capacity: node {} has {:?} for {:?} of {}; {:?}",
                                        node,
                                        mine,
                                        k.conn,
                                        k.capacity,
                                        did
                                    );
                                } else {
                                    prop_assert!(mine.is_empty(), "a young person in two chats");
                                }
                                mine.insert(*chat);
                                holders.insert(resume.0, (node, conn, *chat));
                                caps.push((node, who.and_then(|k| k.name), *resume));
                                let nodes = pairings.entry(*pairing_id).or_default();
                                nodes.push(node);
                                reached.across |= nodes.len() == 2 && nodes[0] != nodes[1];
                            }
                            Frame::Resumed { chat } => {
                                if who.is_some_and(|k| k.name.is_none()) {
                                    prop_assert!(mine.is_empty(), "a young person in two chats");
                                }
                                mine.insert(*chat);
                            }
                            Frame::End { chat, .. } => {
                                mine.remove(chat);
                                if let Some(going) = moving.get_mut(&(node, conn)) {
                                    going.remove(chat);
                                }
                            }
                            Frame::Forward { chat, .. } => {
                                let going = moving.get(&(node, conn));
                                prop_assert!(
                                    mine.contains(chat) || going.is_some_and(|g| g.contains(chat)),
                                    "a FORWARD outside a chat"
                                );
                                reached.forwarded = true;
                            }
                            Frame::Joined { resume } => caps.push((node, None, *resume)),
                            _ => {}
                        }
                    }
                }
            }
            Ok(reached)
        }

        /// Whatever the endpoints on two relays do, and however their
        /// messages cross: nobody is sent anything after their connection
        /// closed, no young person is in two chats at once, no counsellor
        /// is paired while away or over capacity, and a FORWARD only
        /// reaches a side of a chat it is in. Many cases pair across the
        /// two relays, forward a message, and resume a place or a chat on
        /// the relay that did not give its ticket or capability.
        #[test]
        fn chats_across_two_relays_survive_any_interleaving() {
            let cases = 300;
            let across = std::cell::Cell::new(0u32);
            let forwarded = std::cell::Cell::new(0u32);
            let elsewhere = std::cell::Cell::new(0u32);
            let mut runner = TestRunner::new(Config::with_cases(cases));
            let result = runner.run(&proptest::collection::vec(op(), 4..60), |ops| {
                let reached = run(ops)?;
                across.set(across.get() + u32::from(reached.across));
                forwarded.set(forwarded.get() + u32::from(reached.forwarded));
                elsewhere.set(elsewhere.get() + u32::from(reached.resumed_elsewhere));
                Ok(())
            });
            if let Err(e) = result {
                panic!("{e}");
            }
            let (across, forwarded, elsewhere) = (across.get(), forwarded.get(), elsewhere.get());
            eprintln!(
                "{across} of {cases} cases paired across relays, {forwarded} forwarded, \
                 {elsewhere} resumed on the other relay"
            );
            // (Shares well below the usual, so that no seed fails them.)
            assert!(
                across * 4 >= cases,
                "only {across} of {cases} paired across relays"
            );
            assert!(
                forwarded * 5 >= cases,
                "only {forwarded} of {cases} forwarded"
            );
            assert!(
                elsewhere * 10 >= cases,
                "only {elsewhere} of {cases} resumed on the other relay"
            );
        }
    }
}
