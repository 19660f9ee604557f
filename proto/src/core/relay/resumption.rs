//! Resumption (PROTOCOL.md §7.4): a lost connection's chat sides wait,
//! detached, for the resume window and a waiting client's place is kept
//! under its ticket; RESUME brings either back on a new connection, takes
//! over from a connection that died unheard, or fails the same way for
//! every wrong capability.

use super::*;

impl Relay {
    pub(super) fn insert_detached(&mut self, key: CapHash, d: Detached) {
        self.remove_detached(&key);
        self.index.detached.set(key, Some(d.next_deadline()));
        self.index.hashes_changed.push(key);
        if let Some(u) = d.unconfirmed {
            self.index.unconfirmed_away.insert(u.ticket, key);
            self.index.hashes_changed.push(u.ticket);
        }
        if let Peer::Remote(r) = d.peer {
            self.index.host_side(r.key.other(), Place::Away(key));
        }
        self.detached.insert(key, d);
    }

    pub(super) fn remove_detached(&mut self, key: &CapHash) -> Option<Detached> {
        let d = self.detached.remove(key)?;
        self.index.detached.set(*key, None);
        self.index.hashes_changed.push(*key);
        if let Some(u) = d.unconfirmed
            && self.index.unconfirmed_away.get(&u.ticket) == Some(key)
        {
            self.index.unconfirmed_away.remove(&u.ticket);
            self.index.hashes_changed.push(u.ticket);
        }
        if let Peer::Remote(r) = d.peer
            && self.index.remote_sides.get(&r.key.other()) == Some(&Place::Away(*key))
        {
            self.index.leave_side(r.key.other());
        }
        Some(d)
    }

    pub(super) fn insert_away(&mut self, ticket: CapHash, away: AwayFromQueue) {
        self.index.away_from_queue.set(ticket, Some(away.until));
        self.index.hashes_changed.push(ticket);
        if let Some(source) = away.waiting.request.source {
            *self.index.away_per_source.entry(source).or_default() += 1;
        }
        if let Some(old) = self.away_from_queue.insert(ticket, away) {
            self.uncount_away(&old);
        }
    }

    pub(super) fn remove_away(&mut self, ticket: &CapHash) -> Option<AwayFromQueue> {
        let away = self.away_from_queue.remove(ticket)?;
        self.index.away_from_queue.set(*ticket, None);
        self.index.hashes_changed.push(*ticket);
        self.uncount_away(&away);
        Some(away)
    }

    pub(super) fn uncount_away(&mut self, away: &AwayFromQueue) {
        if let Some(source) = away.waiting.request.source
            && let Some(n) = self.index.away_per_source.get_mut(&source)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.index.away_per_source.remove(&source);
            }
        }
    }

    /// A connection dropped: each of its chats waits for it to resume, and
    /// each chat's other side is told the peer is away.
    pub(super) fn detach(&mut self, now: Now, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let role = match c.state {
            State::Client(ClientStage::Waiting(_)) => {
                self.keep_queue_place(now, conn);
                return;
            }
            State::Client(_) => Role::Client,
            State::Counsellor(_) => Role::Counsellor,
            State::AwaitingHello { .. } => return,
        };
        let pseudonym = c.pseudonym().map(str::to_owned);
        let chats: Vec<ChatNumber> = c.links.keys().copied().collect();
        for chat in chats {
            if let Some(link) = self.unlink(conn, chat) {
                self.detach_link(now, role, pseudonym.clone(), link);
            }
        }
    }

    pub(super) fn detach_link(
        &mut self,
        now: Now,
        role: Role,
        pseudonym: Option<String>,
        link: Link,
    ) {
        self.repoint(link.peer, Peer::Away(link.mine));
        match link.peer {
            Peer::Live { conn: peer, chat } => self.send(peer, FromRelay::PeerAway { chat }),
            Peer::Remote(r) => self.deliver(r.key, PeerMessage::Away),
            Peer::Away(_) => {}
        }
        self.insert_detached(
            link.mine,
            Detached {
                pairing: link.pairing,
                role,
                pseudonym,
                peer: link.peer,
                deadline: now.mono + self.limits.resume_window,
                held: VecDeque::new(),
                unconfirmed: link.unconfirmed,
                handshake_due: link.handshake_due,
            },
        );
    }

    /// Takes a waiting client out of the queue but keeps its place, under
    /// its ticket, for the resume window (or until its wait is over).
    pub(super) fn keep_queue_place(&mut self, now: Now, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(ticket) = c.ticket else {
            return;
        };
        let State::Client(ClientStage::Waiting(waiting)) = c.state else {
            return;
        };
        c.state = State::Client(ClientStage::InChat);
        self.index.touched.push(conn);
        self.router
            .handle_command(RouteCommand::Withdraw { client: conn });
        let until = waiting.deadline.min(now.mono + self.limits.resume_window);
        self.insert_away(ticket, AwayFromQueue { waiting, until });
    }

    /// A pairing whose young person never sent handshake message 1 while
    /// away: the counsellor is freed, and the young person's place in the
    /// queue is kept under its ticket for the rest of its resume window.
    pub(super) fn undo_unstarted_pairing(&mut self, now: Now, h: CapHash) {
        let Some(d) = self.remove_detached(&h) else {
            return;
        };
        self.end_for_other_side(d.peer);
        if let Some(u) = d.unconfirmed {
            self.requeue_away(now, u, d.deadline);
        }
    }

    /// Keeps the place of a client that is away, from the request it had.
    pub(super) fn requeue_away(&mut self, now: Now, u: Unconfirmed, until: Instant) {
        let waiting = self.waiting_for(now, u.request);
        self.insert_away(
            u.ticket,
            AwayFromQueue {
                until: until.min(waiting.deadline),
                waiting,
            },
        );
    }

    /// RESUME with a queue ticket on a new connection. The client gets its
    /// place in the queue back or, if it was paired while away and never
    /// heard its PAIRED, that chat. False if the ticket leads nowhere.
    pub(super) fn resume_ticket(&mut self, now: Now, conn: ConnId, ticket: CapHash) -> bool {
        // A waiting connection that died without the relay hearing.
        let silent = self.index.tickets.get(&ticket).copied().filter(|id| {
            *id != conn
                && self.conns.get(id).is_some_and(|c| {
                    c.ticket == Some(ticket)
                        && matches!(c.state, State::Client(ClientStage::Waiting(_)))
                })
        });
        if let Some(old) = silent {
            self.keep_queue_place(now, old);
            self.close(old, CloseCode::NoError, false);
        }
        if let Some(away) = self.remove_away(&ticket) {
            self.rejoin(now, conn, ticket, away.waiting);
            self.pump_router(now);
            return true;
        }
        self.resume_unheard_pairing(now, conn, ticket)
    }

    /// A waiting client is back, on `conn`, at the place it had.
    pub(super) fn rejoin(&mut self, now: Now, conn: ConnId, ticket: CapHash, waiting: Waiting) {
        let mut waiting = waiting;
        waiting.next_update = now.mono;
        waiting.last_sent = None;
        // A challenge owed went with the old connection: a fresh one
        // is due at once (if the queue is still crowded).
        if waiting.rent.owed.take().is_some() {
            waiting.rent.next_at = Some(now.mono);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            // Its place now counts against the source it came back from.
            waiting.request.source = c.source;
            c.ticket = Some(ticket);
            c.choice = (waiting.request.topic, waiting.request.language);
            c.state = State::Client(ClientStage::Waiting(waiting));
        }
        self.touch(conn);
        self.router.handle_command(RouteCommand::Enqueue {
            client: conn,
            request: waiting.request,
        });
    }

    /// The client was paired while its connection was failing, and the
    /// PAIRED never reached it: it gets the chat, with a new capability.
    /// The counsellor is still waiting for the client's first handshake
    /// message, so nothing else changes for them.
    pub(super) fn resume_unheard_pairing(
        &mut self,
        now: Now,
        conn: ConnId,
        ticket: CapHash,
    ) -> bool {
        let live = self.index.unconfirmed_live.get(&ticket).copied();
        if let Some((old, chat)) = live {
            if old == conn {
                return false;
            }
            if let Some(link) = self.unlink(old, chat) {
                self.detach_link(now, Role::Client, None, link);
            }
            self.close(old, CloseCode::NoError, false);
        }
        let Some(key) = self.index.unconfirmed_away.get(&ticket).copied() else {
            return false;
        };
        let Some(chat) = self.issue_chat(conn) else {
            return false;
        };
        let Some(d) = self.remove_detached(&key) else {
            return false;
        };
        let Some(u) = d.unconfirmed else {
            return false;
        };
        let mut resume = ResumeCapability([0; 32]);
        self.rng.fill_bytes(&mut resume.0);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.ticket = Some(ticket);
            c.choice = (u.request.topic, u.request.language);
            c.state = State::Client(ClientStage::InChat);
        }
        let link = Link {
            handshake_due: d.handshake_due,
            ..self.new_link(now, d.pairing, d.peer, cap_hash(&resume), d.unconfirmed)
        };
        self.link(conn, chat, link);
        self.repoint(d.peer, Peer::Live { conn, chat });
        self.send(
            conn,
            FromRelay::Paired {
                chat,
                pairing_id: u.pairing_id,
                resume,
                topic: None,
                language: None,
            },
        );
        self.after_resume(conn, chat, d);
        true
    }

    /// A RESUME for a side whose old connection still looks alive: it died
    /// without the relay hearing (no close got through). The new connection
    /// takes over; an old client connection is closed, having no other use.
    pub(super) fn take_over(&mut self, now: Now, new: ConnId, h: CapHash) {
        let Some((old, chat)) = self.index.capabilities.get(&h).copied() else {
            return;
        };
        if old == new {
            return;
        }
        let (Some(o), Some(n)) = (self.conns.get(&old), self.conns.get(&new)) else {
            return;
        };
        let role = match (&o.state, &n.state, o.pseudonym(), n.pseudonym()) {
            (State::Client(_), State::AwaitingHello { .. }, None, None) => Role::Client,
            (State::Counsellor(_), State::Counsellor(_), Some(a), Some(b)) if a == b => {
                Role::Counsellor
            }
            _ => return,
        };
        let pseudonym = o.pseudonym().map(str::to_owned);
        let Some(link) = self.unlink(old, chat) else {
            return;
        };
        self.detach_link(now, role, pseudonym, link);
        if role == Role::Client {
            self.close(old, CloseCode::NoError, false);
        } else {
            self.refresh_offer(old);
        }
    }

    /// The resume window of a side is over: the chat ends for the other
    /// side (or is forgotten, if both are away).
    pub(super) fn expire(&mut self, h: CapHash) {
        if let Some(d) = self.remove_detached(&h) {
            self.end_for_other_side(d.peer);
        }
    }

    /// A side that was away is gone for good: the chat ends for the other
    /// side, which is told now, or, if it is away too, learns on RESUME.
    pub(super) fn end_for_other_side(&mut self, peer: Peer) {
        match peer {
            Peer::Live { conn, chat } => self.peer_gone(conn, chat),
            Peer::Away(other) => {
                if self.remove_detached(&other).is_some() {
                    self.stats.ended(EndReason::PeerDisconnected);
                }
            }
            Peer::Remote(r) => {
                self.stats.ended(EndReason::PeerDisconnected);
                self.deliver(r.key, PeerMessage::End(EndReason::PeerDisconnected));
            }
        }
    }

    /// RESUME: an unknown, wrong or expired capability, or one presented by
    /// the wrong kind of connection, all get the same RESUME_FAILED. A
    /// capability stays valid while its chat (or place) lives: presenting it
    /// again moves the chat to the newer connection (PROTOCOL.md §7.4).
    pub(super) fn handle_resume(
        &mut self,
        now: Now,
        conn: ConnId,
        capability: ResumeCapability,
    ) -> Result<(), CloseCode> {
        let h = cap_hash(&capability);
        let first_frame = matches!(
            self.conns.get(&conn).map(|c| &c.state),
            Some(State::AwaitingHello { .. })
        );
        if first_frame
            && self
                .conns
                .get(&conn)
                .is_some_and(|c| c.credential != Credential::Anonymous)
        {
            // RESUME as the first frame is the anonymous role's (§7.4).
            return Err(CloseCode::NotAuthorized);
        }
        if first_frame && !self.detached.contains_key(&h) && self.resume_ticket(now, conn, h) {
            return Ok(());
        }
        if !self.detached.contains_key(&h) {
            self.take_over(now, conn, h);
        }
        let c = self.conns.get(&conn).ok_or(CloseCode::InternalError)?;
        let acceptable = match self.detached.get(&h) {
            Some(d) => match (d.role, &c.state, c.pseudonym()) {
                (Role::Client, State::AwaitingHello { .. }, None) => true,
                (Role::Counsellor, State::Counsellor(_), Some(pseudonym)) => {
                    d.pseudonym.as_deref() == Some(pseudonym)
                }
                _ => false,
            },
            None => false,
        };
        let chat = if acceptable {
            self.issue_chat(conn)
        } else {
            None
        };
        let detached = if chat.is_some() {
            self.remove_detached(&h)
        } else {
            None
        };
        let (Some(chat), Some(d)) = (chat, detached) else {
            // Not here, or not for this connection: perhaps another relay
            // holds it. Every RESUME not resumed at once goes this way, so
            // all wrong ones fail alike.
            self.claim_elsewhere(conn, h, first_frame);
            return Ok(());
        };
        if first_frame && let Some(c) = self.conns.get_mut(&conn) {
            c.state = State::Client(ClientStage::InChat);
        }
        // Whoever holds the chat's own capability has had its PAIRED.
        let link = Link {
            handshake_due: d.handshake_due,
            ..self.new_link(now, d.pairing, d.peer, h, None)
        };
        self.link(conn, chat, link);
        self.repoint(d.peer, Peer::Live { conn, chat });
        self.send(conn, FromRelay::Resumed { chat });
        self.after_resume(conn, chat, d);
        Ok(())
    }

    /// A side is back in `chat`: what was held for it, and news of the
    /// other side, in both directions.
    pub(super) fn after_resume(&mut self, conn: ConnId, chat: ChatNumber, d: Detached) {
        for blob in d.held {
            self.send(conn, FromRelay::Forward { chat, blob });
        }
        match d.peer {
            Peer::Live {
                conn: peer,
                chat: peer_chat,
            } => self.send(peer, FromRelay::PeerBack { chat: peer_chat }),
            Peer::Away(_) => self.send(conn, FromRelay::PeerAway { chat }),
            Peer::Remote(r) => {
                self.deliver(r.key, PeerMessage::Back);
                if r.away {
                    self.send(conn, FromRelay::PeerAway { chat });
                }
            }
        }
        self.refresh_offer(conn);
        self.reroute(conn, chat);
        if let Peer::Live {
            conn: peer,
            chat: peer_chat,
        } = d.peer
        {
            self.reroute(peer, peer_chat);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{Bench, Did, to};
    use crate::core::frame::{BLOB_LEN, Blob, ChatNumber, Frame, ResumeCapability, Role};
    use crate::core::relay::Credential;
    use crate::core::{CloseCode, Departure};

    #[test]
    fn a_made_up_capability_fails_like_any_other_wrong_one() {
        let mut b = Bench::new();
        let y = b.connect(Credential::Anonymous);
        let did = b.send(
            y,
            Frame::Resume {
                capability: ResumeCapability([9; 32]),
            },
        );
        assert_eq!(
            did,
            vec![
                Did::Sent(y, Frame::ResumeFailed),
                Did::Closed(y, CloseCode::NoError)
            ]
        );
    }

    #[test]
    fn a_lost_counsellor_side_waits_and_comes_back_with_what_was_held() {
        let mut b = Bench::new();
        let sam = b.counsellor("Sam", 1);
        let (y, did) = b.client();
        let capability = to(&did, sam)
            .into_iter()
            .find_map(|f| match f {
                Frame::Paired { resume, .. } => Some(resume),
                _ => None,
            })
            .unwrap_or(ResumeCapability([0; 32]));
        let first = ChatNumber::FIRST;
        let blob = Blob::new([3; BLOB_LEN]);
        b.send(
            y,
            Frame::Forward {
                chat: first,
                blob: blob.clone(),
            },
        );
        b.relay.handle_disconnect(b.now, sam, Departure::Lost);
        assert_eq!(
            b.drain(),
            vec![Did::Sent(y, Frame::PeerAway { chat: first })]
        );
        // Held while Sam is away, then given to Sam's new connection.
        assert_eq!(
            b.send(
                y,
                Frame::Forward {
                    chat: first,
                    blob: blob.clone()
                }
            ),
            vec![]
        );
        let back = b.connect(Credential::Counsellor {
            pseudonym: "Sam".into(),
        });
        b.hello(back, Role::Counsellor);
        let did = b.send(back, Frame::Resume { capability });
        assert_eq!(
            to(&did, back),
            vec![
                Frame::Resumed { chat: first },
                Frame::Forward { chat: first, blob }
            ]
        );
        assert_eq!(to(&did, y), vec![Frame::PeerBack { chat: first }]);
    }
}
