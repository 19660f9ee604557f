//! Resumption across relays (PROTOCOL.md §7.4): a RESUME on one relay of a
//! capability or ticket that another relay holds.
//!
//! The router knows which relay holds which hash: at the end of every
//! event the core tells it the hashes it took on or dropped
//! ([`RouteCommand::Hold`], [`RouteCommand::Release`]). A RESUME that the
//! core cannot resume at once, for whatever reason, goes to the router as
//! a [`RouteCommand::Claim`] naming who presents it; the connection reads
//! nothing more until the answer, so that what it sent after the RESUME
//! keeps its order. The router hands the claim to the relay holding the
//! hash ([`RouteEvent::Claimed`]). That relay checks the claimant as it
//! would its own RESUME, lets go of the place or chat side (taking it
//! over from a connection that died unheard, as locally) and hands it
//! over ([`RouteCommand::HandOver`]): a place with its request, a side
//! with its keys, what was held for it and its deadlines. A side's local
//! peer now reaches it through the router by the chat's pairing id. The
//! relay of the claim then resumes it as if it had been its own
//! ([`RouteEvent::HandedOver`]): RESUMED and what was held, or PAIRED for
//! a side claimed by ticket, or the place in the queue. A side or place
//! that arrives for a connection that is gone stays on this relay,
//! resumable here, until its window ends: nothing is lost. A claim nobody
//! holds fails with RESUME_FAILED, the same as one that fails here.

use super::*;

impl Relay {
    /// Tells the router which of the hashes this event touched the relay
    /// holds now, and which it dropped; and the same of the chat sides
    /// whose other side is on another relay.
    pub(super) fn tell_router_holdings(&mut self, now: Instant) {
        let mut changed = std::mem::take(&mut self.index.hashes_changed);
        changed.sort_unstable();
        changed.dedup();
        for hash in changed {
            let command = if self.holds(&hash) {
                let resumes = self.resumes(now, &hash);
                RouteCommand::Hold { hash, resumes }
            } else {
                RouteCommand::Release { hash }
            };
            self.router.handle_command(command);
        }
        let mut sides = std::mem::take(&mut self.index.sides_changed);
        sides.sort_unstable_by_key(|s| (s.pairing.0, s.role.to_byte()));
        sides.dedup();
        for side in sides {
            let command = if self.index.remote_sides.contains_key(&side) {
                RouteCommand::HostSide { side }
            } else {
                RouteCommand::LeaveSide { side }
            };
            self.router.handle_command(command);
        }
    }

    /// Whether a RESUME with this hash could find anything here.
    fn holds(&self, hash: &CapHash) -> bool {
        self.index.tickets.contains_key(hash)
            || self.away_from_queue.contains_key(hash)
            || self.index.unconfirmed_live.contains_key(hash)
            || self.index.unconfirmed_away.contains_key(hash)
            || self.index.capabilities.contains_key(hash)
            || self.detached.contains_key(hash)
    }

    /// What a RESUME with `hash` would resume here now, without letting go
    /// of it: what the router hands over should this relay die.
    fn resumes(&self, now: Instant, hash: &CapHash) -> Option<Resumes> {
        let waiting = self
            .index
            .tickets
            .get(hash)
            .and_then(|id| match self.conns.get(id) {
                Some(Conn {
                    state: State::Client(ClientStage::Waiting(w)),
                    ..
                }) => Some(w.request),
                _ => None,
            });
        if let Some(request) = waiting.or(self.away_from_queue.get(hash).map(|a| a.waiting.request))
        {
            return Some(Resumes::Place { request });
        }
        if let Some((conn, chat)) = self.index.unconfirmed_live.get(hash) {
            return self.live_side(now, *conn, *chat, true);
        }
        if let Some(key) = self.index.unconfirmed_away.get(hash) {
            return self.detached.get(key).map(|d| self.away_side(d, true));
        }
        if let Some((conn, chat)) = self.index.capabilities.get(hash) {
            return self.live_side(now, *conn, *chat, false);
        }
        self.detached.get(hash).map(|d| self.away_side(d, false))
    }

    /// A live side as it would be handed over, its window from `now`.
    fn live_side(
        &self,
        now: Instant,
        conn: ConnId,
        chat: ChatNumber,
        by_ticket: bool,
    ) -> Option<Resumes> {
        let c = self.conns.get(&conn)?;
        let link = c.links.get(&chat)?;
        let role = if c.pseudonym().is_some() {
            Role::Counsellor
        } else {
            Role::Client
        };
        let (topic, language) = match role {
            Role::Client => c.choice,
            Role::Counsellor => self.young_persons_choice(role, link.peer, None),
        };
        let key = SideKey {
            pairing: link.pairing,
            role,
        };
        let side = HandedSide {
            key,
            peer: key.other(),
            peer_away: false,
            topic,
            language,
            pseudonym: c.pseudonym().map(str::to_owned),
            held: Vec::new(),
            unconfirmed: link.unconfirmed.filter(|_| by_ticket).map(|u| u.request),
            handshake_due: link.handshake_due,
            window_ends: now + self.limits.resume_window,
        };
        Some(Resumes::Side {
            side: Box::new(side),
            live: true,
        })
    }

    /// A side away here as it would be handed over.
    fn away_side(&self, d: &Detached, by_ticket: bool) -> Resumes {
        let key = SideKey {
            pairing: d.pairing,
            role: d.role,
        };
        let (topic, language) = self.young_persons_choice(d.role, d.peer, d.unconfirmed.as_ref());
        let side = HandedSide {
            key,
            peer: key.other(),
            peer_away: false,
            topic,
            language,
            pseudonym: d.pseudonym.clone(),
            held: Vec::new(),
            unconfirmed: d.unconfirmed.filter(|_| by_ticket).map(|u| u.request),
            handshake_due: d.handshake_due,
            window_ends: d.deadline,
        };
        Resumes::Side {
            side: Box::new(side),
            live: false,
        }
    }

    /// What the young person of a side's chat chose: its own choice for
    /// its side, its peer's for a counsellor's.
    fn young_persons_choice(
        &self,
        role: Role,
        peer: Peer,
        unconfirmed: Option<&Unconfirmed>,
    ) -> (Option<TopicId>, Option<Language>) {
        match (role, peer, unconfirmed) {
            (Role::Client, _, Some(u)) => (u.request.topic, u.request.language),
            (Role::Counsellor, Peer::Live { conn, .. }, _) => {
                self.conns.get(&conn).map(|c| c.choice).unwrap_or_default()
            }
            (Role::Counsellor, Peer::Away(other), _) => self
                .detached
                .get(&other)
                .and_then(|o| o.unconfirmed)
                .map(|u| (u.request.topic, u.request.language))
                .unwrap_or_default(),
            (_, Peer::Remote(r), _) => r.choice,
            _ => (None, None),
        }
    }

    /// A RESUME on `conn` that this relay cannot resume: the router is
    /// asked, and the connection waits for its answer.
    pub(super) fn claim_elsewhere(&mut self, conn: ConnId, hash: CapHash, first_frame: bool) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let claimant = match (first_frame, c.pseudonym()) {
            (true, None) => Claimant::Client,
            (false, Some(pseudonym)) => Claimant::Counsellor {
                pseudonym: pseudonym.to_owned(),
            },
            _ => {
                self.resume_failed(conn, first_frame);
                return;
            }
        };
        c.claiming = true;
        self.router.handle_command(RouteCommand::Claim {
            conn,
            hash,
            claimant,
        });
    }

    fn resume_failed(&mut self, conn: ConnId, first_frame: bool) {
        self.send(conn, FromRelay::ResumeFailed);
        if first_frame {
            self.close(conn, CloseCode::NoError, true);
        }
    }

    /// Another relay has a RESUME for what this relay holds under `hash`.
    pub(super) fn on_claimed(
        &mut self,
        now: Now,
        claim: ClaimId,
        hash: CapHash,
        claimant: Claimant,
    ) {
        let handed = self.hand_over(now, hash, &claimant);
        self.router
            .handle_command(RouteCommand::HandOver { claim, handed });
    }

    /// Lets go of what `hash` resumes, if `claimant` may resume it: the
    /// checks of a RESUME here (§7.4), and the same take-overs of
    /// connections that died unheard.
    fn hand_over(&mut self, now: Now, hash: CapHash, claimant: &Claimant) -> Option<Handed> {
        match claimant {
            Claimant::Client => {
                // A ticket: a waiting connection that died unheard.
                let silent = self.index.tickets.get(&hash).copied().filter(|id| {
                    self.conns
                        .get(id)
                        .is_some_and(|c| matches!(c.state, State::Client(ClientStage::Waiting(_))))
                });
                if let Some(old) = silent {
                    self.keep_queue_place(now, old);
                    self.close(old, CloseCode::NoError, false);
                }
                if let Some(away) = self.remove_away(&hash) {
                    return Some(Handed::Place {
                        request: away.waiting.request,
                    });
                }
                // A ticket of a client paired while its connection failed.
                if let Some((old, chat)) = self.index.unconfirmed_live.get(&hash).copied() {
                    if let Some(link) = self.unlink(old, chat) {
                        self.detach_link(now, Role::Client, None, link);
                    }
                    self.close(old, CloseCode::NoError, false);
                }
                if let Some(key) = self.index.unconfirmed_away.get(&hash).copied() {
                    let d = self.remove_detached(&key)?;
                    return Some(self.hand_side(d, true));
                }
                // A chat capability.
                let live = self.index.capabilities.get(&hash).copied();
                if let Some((old, chat)) = live
                    && self
                        .conns
                        .get(&old)
                        .is_some_and(|c| c.pseudonym().is_none())
                {
                    if let Some(link) = self.unlink(old, chat) {
                        self.detach_link(now, Role::Client, None, link);
                    }
                    self.close(old, CloseCode::NoError, false);
                }
                if self.detached.get(&hash)?.role != Role::Client {
                    return None;
                }
            }
            Claimant::Counsellor { pseudonym } => {
                let live = self.index.capabilities.get(&hash).copied();
                if let Some((old, chat)) = live
                    && self
                        .conns
                        .get(&old)
                        .is_some_and(|c| c.pseudonym() == Some(pseudonym))
                {
                    if let Some(link) = self.unlink(old, chat) {
                        let name = Some(pseudonym.clone());
                        self.detach_link(now, Role::Counsellor, name, link);
                    }
                    self.refresh_offer(old);
                }
                let d = self.detached.get(&hash)?;
                if d.role != Role::Counsellor || d.pseudonym.as_ref() != Some(pseudonym) {
                    return None;
                }
            }
        }
        let d = self.remove_detached(&hash)?;
        Some(self.hand_side(d, false))
    }

    /// A side that was away here, ready to go to another relay: its peer,
    /// if it is here, reaches it through the router from now on.
    fn hand_side(&mut self, d: Detached, by_ticket: bool) -> Handed {
        let key = SideKey {
            pairing: d.pairing,
            role: d.role,
        };
        let young_persons_choice =
            self.young_persons_choice(d.role, d.peer, d.unconfirmed.as_ref());
        let (peer, peer_away) = match d.peer {
            Peer::Remote(r) => (r.key, r.away),
            local => {
                let away = matches!(local, Peer::Away(_));
                let to = Peer::Remote(RemotePeer {
                    key,
                    // Until it says it is back, from its new relay.
                    away: true,
                    choice: young_persons_choice,
                });
                self.repoint(local, to);
                (key.other(), away)
            }
        };
        let (topic, language) = young_persons_choice;
        Handed::Side(Box::new(HandedSide {
            key,
            peer,
            peer_away,
            topic,
            language,
            pseudonym: d.pseudonym,
            held: d.held.into(),
            unconfirmed: d.unconfirmed.filter(|_| by_ticket).map(|u| u.request),
            handshake_due: d.handshake_due,
            window_ends: d.deadline,
        }))
    }

    /// The router's answer to a claim of `conn`.
    pub(super) fn on_handed_over(
        &mut self,
        now: Now,
        conn: ConnId,
        hash: CapHash,
        handed: Option<Handed>,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            if let Some(handed) = handed {
                self.keep_handed(now, hash, handed);
            }
            return;
        };
        c.claiming = false;
        let first_frame = matches!(c.state, State::AwaitingHello { .. });
        let fits = match &handed {
            None => false,
            Some(Handed::Place { .. }) => first_frame,
            Some(Handed::Side(s)) => match s.key.role {
                Role::Client => first_frame,
                Role::Counsellor => {
                    matches!(c.state, State::Counsellor(_))
                        && c.pseudonym() == s.pseudonym.as_deref()
                }
            },
        };
        match handed {
            Some(Handed::Place { request }) if fits => {
                let waiting = self.waiting_for(now, request);
                self.rejoin(now, conn, hash, waiting);
            }
            Some(Handed::Side(s)) if fits => self.resume_handed(now, conn, hash, *s),
            other => {
                if let Some(handed) = other {
                    self.keep_handed(now, hash, handed);
                }
                self.resume_failed(conn, first_frame);
            }
        }
        self.touch(conn);
        self.drain_backlog(now, conn, true);
    }

    /// A side handed over from another relay, resumed on `conn`: by its
    /// capability (RESUMED), or by the ticket of a young person who never
    /// heard its PAIRED (PAIRED again, with a new capability).
    fn resume_handed(&mut self, now: Now, conn: ConnId, hash: CapHash, s: HandedSide) {
        let Some(chat) = self.issue_chat(conn) else {
            self.keep_handed(now, hash, Handed::Side(Box::new(s)));
            self.send(conn, FromRelay::ResumeFailed);
            return;
        };
        let d = self.detached_from(hash, s);
        let by_ticket = d.unconfirmed.is_some();
        let resume = by_ticket.then(|| {
            let mut resume = ResumeCapability([0; 32]);
            self.rng.fill_bytes(&mut resume.0);
            resume
        });
        let mine = resume.as_ref().map_or(hash, cap_hash);
        if let Some(c) = self.conns.get_mut(&conn)
            && d.role == Role::Client
        {
            if let Some(u) = d.unconfirmed {
                c.ticket = Some(hash);
                c.choice = (u.request.topic, u.request.language);
            }
            c.state = State::Client(ClientStage::InChat);
        }
        let link = Link {
            handshake_due: d.handshake_due,
            ..self.new_link(now, d.pairing, d.peer, mine, d.unconfirmed)
        };
        self.link(conn, chat, link);
        match resume {
            Some(resume) => self.send(
                conn,
                FromRelay::Paired {
                    chat,
                    pairing_id: d.pairing,
                    resume,
                    topic: None,
                    language: None,
                },
            ),
            None => self.send(conn, FromRelay::Resumed { chat }),
        }
        self.after_resume(conn, chat, d);
    }

    /// What was handed over for a connection that is gone (or no longer
    /// fits) stays here, resumable, until its window ends.
    fn keep_handed(&mut self, now: Now, hash: CapHash, handed: Handed) {
        match handed {
            Handed::Place { request } => {
                let waiting = self.waiting_for(now, request);
                let until = waiting.deadline.min(now.mono + self.limits.resume_window);
                self.insert_away(hash, AwayFromQueue { waiting, until });
            }
            Handed::Side(s) => {
                let d = self.detached_from(hash, *s);
                // A side claimed by ticket is found by its ticket; its own
                // capability never reached the young person.
                let key = if d.unconfirmed.is_some() {
                    let mut key = [0u8; 32];
                    self.rng.fill_bytes(&mut key);
                    key
                } else {
                    hash
                };
                self.insert_detached(key, d);
            }
        }
    }

    /// A handed-over side as a side away from this relay, peer remote.
    fn detached_from(&self, hash: CapHash, s: HandedSide) -> Detached {
        Detached {
            pairing: s.key.pairing,
            role: s.key.role,
            pseudonym: s.pseudonym,
            peer: Peer::Remote(RemotePeer {
                key: s.peer,
                away: s.peer_away,
                choice: (s.topic, s.language),
            }),
            deadline: s.window_ends,
            held: s.held.into(),
            unconfirmed: s.unconfirmed.map(|request| Unconfirmed {
                ticket: hash,
                pairing_id: s.key.pairing,
                request,
            }),
            handshake_due: s.handshake_due,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{A, Across, B, Cluster, Did, forward, paired, to};
    use crate::core::CloseCode;
    use crate::core::frame::{ChatNumber, EndReason, Frame, Label, Presence, ResumeCapability};

    fn joined(frames: &[Frame]) -> Option<ResumeCapability> {
        frames.iter().find_map(|f| match f {
            Frame::Joined { resume } => Some(*resume),
            _ => None,
        })
    }

    #[test]
    fn when_a_relay_dies_its_chat_sides_and_places_are_resumed_on_the_others() {
        const C: usize = 2;
        let mut c = Cluster::with_nodes(3, std::time::Duration::ZERO);
        let sam = c.counsellor(A, "Sam", 1);
        let kim = c.counsellor(B, "Kim", 1);
        // A young person on B chats with Sam on A; another on B with Kim,
        // on B too; a third waits on B.
        let (y, did) = c.client(B, None);
        let (y_chat, _, y_cap) = paired(&to(&did[B], y)).expect("paired");
        let (s_chat, _, _) = paired(&to(&did[A], sam)).expect("Sam has it");
        c.send(B, y, forward(y_chat, 1));
        let (z, did) = c.client(B, None);
        let (z_chat, _, z_cap) = paired(&to(&did[B], z)).expect("paired");
        let (_, _, k_cap) = paired(&to(&did[B], kim)).expect("Kim has it");
        let (w, did) = c.client(B, None);
        let w_ticket = joined(&to(&did[B], w)).expect("waits, with a ticket");
        let _ = z_chat;

        // B dies without a word. Its relay's leader hands over what it held.
        let now = c.nodes[A].now;
        c.linked.relay_died(B as u16, now.mono);

        // The young person comes back on C: its chat with Sam goes on.
        let (y_back, did) = c.resume(C, None, y_cap);
        let Some(Frame::Resumed { chat }) = to(&did[C], y_back).first().cloned() else {
            panic!("{did:?}");
        };
        let sam_heard = to(&did[A], sam);
        assert!(
            sam_heard.contains(&Frame::PeerBack { chat: s_chat }),
            "{sam_heard:?}"
        );
        assert!(
            sam_heard.contains(&Frame::Colleague {
                name: Label::new("Kim").expect("a label"),
                presence: Presence::SignedOut
            }),
            "Kim left with her relay"
        );
        let did = c.send(C, y_back, forward(chat, 2));
        assert_eq!(to(&did[A], sam), vec![forward(s_chat, 2)]);
        let did = c.send(A, sam, forward(s_chat, 3));
        assert_eq!(to(&did[C], y_back), vec![forward(chat, 3)]);

        // Kim and her young person, both on B, come back on different
        // relays: their chat now runs across the two.
        let (kim_back, did) = c.resume(A, Some("Kim"), k_cap);
        let Some(Frame::Resumed { chat: k_chat }) = to(&did[A], kim_back).first().cloned() else {
            panic!("{did:?}");
        };
        let (z_back, did) = c.resume(C, None, z_cap);
        let Some(Frame::Resumed { chat: z_chat }) = to(&did[C], z_back).first().cloned() else {
            panic!("{did:?}");
        };
        assert_eq!(
            to(&did[A], kim_back),
            vec![Frame::PeerBack { chat: k_chat }]
        );
        let did = c.send(C, z_back, forward(z_chat, 4));
        assert_eq!(to(&did[A], kim_back), vec![forward(k_chat, 4)]);
        // Somebody else cannot take Kim's side with her capability.
        let (_, did) = c.resume(C, Some("Noor"), k_cap);
        assert!(
            did[C]
                .iter()
                .any(|d| matches!(d, Did::Sent(_, Frame::ResumeFailed)))
        );

        // The one who waited is back in the queue, first.
        let (w_back, did) = c.resume(C, None, w_ticket);
        let frames = to(&did[C], w_back);
        assert!(
            frames
                .iter()
                .any(|f| matches!(f, Frame::Queued { position: 1, .. })),
            "{frames:?}"
        );
    }

    #[test]
    fn a_draining_relay_sends_its_people_to_the_others_with_what_it_held() {
        let mut c = Cluster::new();
        let sam = c.counsellor(A, "Sam", 1);
        let (y, did) = c.client(B, None);
        let (y_chat, _, y_cap) = paired(&to(&did[B], y)).expect("paired");
        let (s_chat, _, _) = paired(&to(&did[A], sam)).expect("Sam has it");
        c.send(B, y, forward(y_chat, 1));
        let (w, did) = c.client(B, None);
        let w_ticket = joined(&to(&did[B], w)).expect("waits, with a ticket");

        let now = c.nodes[B].now;
        c.nodes[B].relay.handle_drain(now);
        let mut did = c.nothing();
        did[B] = c.nodes[B].drain();
        let did = c.settle(did);
        assert!(did[B].contains(&Did::Closed(y, CloseCode::Draining)));
        assert!(did[B].contains(&Did::Closed(w, CloseCode::Draining)));
        assert_eq!(to(&did[A], sam), vec![Frame::PeerAway { chat: s_chat }]);
        assert!(c.nodes[B].relay.holds_anything());
        // Sam writes while the young person moves.
        c.send(A, sam, forward(s_chat, 2));

        let (y_back, did) = c.resume(A, None, y_cap);
        let frames = to(&did[A], y_back);
        let Some(Frame::Resumed { chat }) = frames.first().cloned() else {
            panic!("{did:?}");
        };
        assert_eq!(frames[1..], [forward(chat, 2)], "what B held came along");
        assert_eq!(to(&did[A], sam), vec![Frame::PeerBack { chat: s_chat }]);
        let (w_back, did) = c.resume(A, None, w_ticket);
        assert!(
            to(&did[A], w_back)
                .iter()
                .any(|f| matches!(f, Frame::Queued { position: 1, .. }))
        );
        assert!(!c.nodes[B].relay.holds_anything(), "B can stop now");
    }

    #[test]
    fn a_counsellor_resumes_on_another_relay_with_what_was_held() {
        let mut c = Cluster::new();
        let Across {
            y,
            y_chat,
            sam,
            s_cap,
            ..
        } = c.chat_across();
        c.send(A, y, forward(y_chat, 1));
        let did = c.lose(B, sam);
        assert_eq!(did[A], vec![Did::Sent(y, Frame::PeerAway { chat: y_chat })]);
        c.send(A, y, forward(y_chat, 2));

        // Sam's relay is the one he cannot reach: he comes back on A.
        let (back, did) = c.resume(A, Some("Sam"), s_cap);
        let frames = to(&did[A], back);
        let Some(Frame::Resumed { chat }) = frames.first().cloned() else {
            panic!("{did:?}");
        };
        assert_eq!(frames[1..], [forward(chat, 2)], "what was held came along");
        assert_eq!(to(&did[A], y), vec![Frame::PeerBack { chat: y_chat }]);
        let did = c.send(A, back, forward(chat, 3));
        assert_eq!(to(&did[A], y), vec![forward(y_chat, 3)]);
        let did = c.send(A, y, forward(y_chat, 4));
        assert_eq!(to(&did[A], back), vec![forward(chat, 4)]);
        // The side left B for good: presenting the capability there again
        // moves it back, it does not copy it.
        assert!(c.nodes[B].relay.detached.is_empty());
    }

    #[test]
    fn a_young_person_takes_its_chat_to_another_relay_and_the_local_counsellor_follows() {
        let mut c = Cluster::new();
        let sam = c.counsellor(A, "Sam", 1);
        let (y, did) = c.client(A, None);
        let (y_chat, pairing, y_cap) = paired(&to(&did[A], y)).expect("paired");
        let (s_chat, s_pairing, _) = paired(&to(&did[A], sam)).expect("paired");
        assert_eq!(pairing, s_pairing, "a chat on one relay");
        c.send(A, y, forward(y_chat, 1));
        c.lose(A, y);
        c.send(A, sam, forward(s_chat, 2));

        let (back, did) = c.resume(B, None, y_cap);
        let frames = to(&did[B], back);
        let Some(Frame::Resumed { chat }) = frames.first().cloned() else {
            panic!("{did:?}");
        };
        assert_eq!(frames[1..], [forward(chat, 2)]);
        assert_eq!(to(&did[A], sam), vec![Frame::PeerBack { chat: s_chat }]);
        let did = c.send(B, back, forward(chat, 3));
        assert_eq!(to(&did[A], sam), vec![forward(s_chat, 3)]);
        let end = Frame::End {
            chat: s_chat,
            reason: EndReason::UserEnded,
        };
        let did = c.send(A, sam, end);
        assert_eq!(
            did[B],
            vec![
                Did::Sent(
                    back,
                    Frame::End {
                        chat,
                        reason: EndReason::UserEnded
                    }
                ),
                Did::Closed(back, CloseCode::NoError)
            ]
        );
    }

    #[test]
    fn a_waiting_young_person_keeps_its_place_on_another_relay() {
        let mut c = Cluster::new();
        let (first, _) = c.client(A, None);
        let (y, did) = c.client(A, None);
        let ticket = joined(&to(&did[A], y)).expect("a ticket");
        c.lose(A, y);
        let (back, did) = c.resume(B, None, ticket);
        assert_eq!(
            to(&did[B], back),
            vec![Frame::Queued {
                position: 2,
                estimated_wait_secs: None
            }],
            "second, behind the one who came first"
        );
        // One counsellor with room for one: the first in the queue goes
        // first, and the one who moved relays is next.
        let (sam, did) = c.sign_in(A, "Sam", 1);
        assert!(paired(&to(&did[A], first)).is_some());
        assert!(paired(&to(&did[A], sam)).is_some());
        assert_eq!(
            to(&did[B], back),
            vec![Frame::Queued {
                position: 1,
                estimated_wait_secs: None
            }]
        );
    }

    #[test]
    fn a_young_person_paired_while_its_connection_failed_gets_the_chat_on_another_relay() {
        let mut c = Cluster::new();
        let (y, did) = c.client(A, None);
        let ticket = joined(&to(&did[A], y)).expect("a ticket");
        // The PAIRED goes to a connection that is already dead.
        let (sam, did) = c.sign_in(B, "Sam", 1);
        let (_, pairing, _) = paired(&to(&did[B], sam)).expect("Sam is paired");
        assert!(paired(&to(&did[A], y)).is_some(), "lost on the way");
        c.lose(A, y);
        let (back, did) = c.resume(B, None, ticket);
        let (chat, again, _) = paired(&to(&did[B], back)).expect("PAIRED again");
        assert_eq!(again, pairing, "the same chat, so the same handshake");
        let s_chat = ChatNumber::FIRST;
        assert_eq!(to(&did[B], sam), vec![Frame::PeerBack { chat: s_chat }]);
        let did = c.send(B, back, forward(chat, 1));
        assert_eq!(to(&did[B], sam), vec![forward(s_chat, 1)]);
    }

    #[test]
    fn a_capability_nobody_holds_fails_on_every_relay_alike() {
        let mut c = Cluster::new();
        for n in [A, B] {
            let (conn, did) = c.resume(n, None, ResumeCapability([9; 32]));
            assert_eq!(
                did[n],
                vec![
                    Did::Sent(conn, Frame::ResumeFailed),
                    Did::Closed(conn, CloseCode::NoError)
                ]
            );
        }
    }

    #[test]
    fn a_counsellor_side_goes_only_to_its_own_pseudonym_and_stays_resumable() {
        let mut c = Cluster::new();
        let Across {
            y,
            y_chat,
            sam,
            s_cap,
            ..
        } = c.chat_across();
        c.lose(B, sam);
        let (noor, did) = c.resume(A, Some("Noor"), s_cap);
        assert_eq!(to(&did[A], noor), vec![Frame::ResumeFailed]);
        assert_eq!(to(&did[A], y), vec![], "the young person notices nothing");
        let (back, did) = c.resume(A, Some("Sam"), s_cap);
        assert!(matches!(
            to(&did[A], back).first(),
            Some(Frame::Resumed { .. })
        ));
        assert_eq!(to(&did[A], y), vec![Frame::PeerBack { chat: y_chat }]);
    }

    #[test]
    fn a_counsellor_connection_that_died_unheard_is_taken_over_from_another_relay() {
        let mut c = Cluster::new();
        let Across {
            y,
            y_chat,
            sam,
            s_cap,
            ..
        } = c.chat_across();
        // B still thinks Sam's old connection is alive.
        let (back, did) = c.resume(A, Some("Sam"), s_cap);
        let Some(Frame::Resumed { chat }) = to(&did[A], back).first().cloned() else {
            panic!("{did:?}");
        };
        assert_eq!(
            to(&did[A], y),
            vec![
                Frame::PeerAway { chat: y_chat },
                Frame::PeerBack { chat: y_chat }
            ]
        );
        assert!(
            !did[B]
                .iter()
                .any(|d| matches!(d, Did::Closed(conn, _) if *conn == sam)),
            "a counsellor's old connection stays: it may have other chats"
        );
        let did = c.send(A, y, forward(y_chat, 5));
        assert_eq!(to(&did[A], back), vec![forward(chat, 5)]);
    }
}
