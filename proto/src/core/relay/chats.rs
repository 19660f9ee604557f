//! Chats: a pairing becomes two linked chat sides (PAIRED), FORWARD blobs
//! go from one side to the other (or are held for a side that is away),
//! END, block and TRANSFER end or move a chat, and counsellors' offers and
//! presence (COLLEAGUE) follow their load. Every link is indexed by its
//! capability, and a client's unconfirmed side by its ticket.

use super::*;

/// Whom a chat is transferred to: a colleague on this relay, or one
/// available on another relay of the cluster (by pseudonym).
pub(super) enum Colleague {
    Here(ConnId),
    Elsewhere(String),
}

impl Relay {
    pub(super) fn handle_forward(
        &mut self,
        conn: ConnId,
        chat: ChatNumber,
        blob: Blob,
    ) -> Result<(), CloseCode> {
        let link = self.link_mut(conn, chat).map(|link| {
            // The client has its PAIRED and started the handshake: the
            // ticket no longer leads here, and the pairing stands, unless
            // a counsellor's relay elsewhere refuses its half: until that
            // side answers, the place is kept for that.
            link.handshake_due = None;
            let unconfirmed = link.unconfirmed.take();
            if let (Peer::Remote(_), Some(u)) = (&link.peer, &unconfirmed) {
                link.place_if_refused = Some(u.request);
            }
            (link.peer, unconfirmed)
        });
        if let Some((_, Some(u))) = link {
            self.index.unconfirmed_live.remove(&u.ticket);
            self.index.hashes_changed.push(u.ticket);
        }
        let link = link.map(|(peer, _)| peer);
        let Some(peer) = link else {
            let c = self.conns.get(&conn).ok_or(CloseCode::InternalError)?;
            // A frame racing the end of its chat is not an error.
            return if c.is_ended_chat(chat) {
                Ok(())
            } else {
                Err(CloseCode::UnexpectedFrame)
            };
        };
        self.stats.frames_forwarded += 1;
        self.stats.bytes_forwarded += FORWARD_FRAME_LEN;
        match peer {
            Peer::Live {
                conn: peer,
                chat: peer_chat,
            } => self.send(
                peer,
                FromRelay::Forward {
                    chat: peer_chat,
                    blob,
                },
            ),
            Peer::Away(h) => self.hold(conn, chat, h, blob),
            Peer::Remote(r) => self.deliver(r.key, PeerMessage::Forward(blob)),
        }
        // The first FORWARD of a client confirms the pairing: from now on
        // the shell may send this side's frames straight on.
        self.reroute(conn, chat);
        Ok(())
    }

    pub(super) fn handle_end(
        &mut self,
        now: Now,
        conn: ConnId,
        role: Role,
        chat: ChatNumber,
        reason: EndReason,
    ) {
        let peer = match self.conns.get(&conn).and_then(|c| c.links.get(&chat)) {
            Some(Link {
                peer: Peer::Live { conn: p, .. },
                ..
            }) => Some(*p),
            _ => None,
        };
        self.end_chat(conn, chat, reason);
        match (role, reason, peer) {
            // The client's end is immediate: nothing more goes to it.
            (Role::Client, _, _) => self.close(conn, CloseCode::NoError, false),
            // A blocked client can never send again: its connection goes
            // (it was closed, after its END, when its chat ended).
            (Role::Counsellor, EndReason::Blocked, Some(client)) => {
                self.close(client, CloseCode::NoError, true)
            }
            _ => {}
        }
        self.pump_router(now);
    }

    pub(super) fn handle_transfer(
        &mut self,
        now: Now,
        conn: ConnId,
        chat: ChatNumber,
        target: TransferTarget,
    ) {
        let Some(link) = self
            .conns
            .get(&conn)
            .and_then(|c| c.links.get(&chat))
            .cloned()
        else {
            return;
        };
        let client = match link.peer {
            Peer::Live { conn: client, .. } => Some(client),
            Peer::Remote(r) if !r.away => None,
            _ => {
                self.send(
                    conn,
                    FromRelay::TransferRefused {
                        chat,
                        reason: Refusal::ClientAway,
                    },
                );
                return;
            }
        };
        let colleague = match &target {
            TransferTarget::Queue => None,
            TransferTarget::Colleague(name) => match self.find_colleague(Some(conn), name.as_str())
            {
                Ok(id) => Some(Colleague::Here(id)),
                Err(refusal) => match self.presence_elsewhere.get(name.as_str()) {
                    Some(Presence::Available) => Some(Colleague::Elsewhere(name.to_string())),
                    elsewhere => {
                        // The better reason: away here, full elsewhere.
                        let reason = match (refusal, elsewhere) {
                            (Refusal::UnknownColleague, Some(Presence::Away)) => {
                                Refusal::ColleagueAway
                            }
                            (
                                Refusal::UnknownColleague | Refusal::ColleagueAway,
                                Some(Presence::Full),
                            ) => Refusal::ColleagueFull,
                            (refusal, _) => refusal,
                        };
                        self.send(conn, FromRelay::TransferRefused { chat, reason });
                        return;
                    }
                },
            },
        };
        self.stats.transfers += 1;
        match (client, link.peer) {
            (None, Peer::Remote(r)) => self.transfer_remote(now, conn, chat, r, colleague),
            (Some(client), _) => self.transfer_local(now, conn, chat, client, colleague),
            _ => {}
        }
        self.pump_router(now);
    }

    /// A transfer of a young person on this relay: to a colleague here, or
    /// back to the queue.
    fn transfer_local(
        &mut self,
        now: Now,
        conn: ConnId,
        chat: ChatNumber,
        client: ConnId,
        colleague: Option<Colleague>,
    ) {
        self.end_chat(conn, chat, EndReason::Transferred);
        // The counsellor hears END(TRANSFERRED) as confirmation, too.
        self.send(
            conn,
            FromRelay::End {
                chat,
                reason: EndReason::Transferred,
            },
        );
        match colleague {
            Some(Colleague::Here(colleague)) => {
                if let Some(c) = self.conns.get_mut(&client) {
                    c.state = State::Client(ClientStage::InChat);
                }
                self.start_chat(now, client, colleague);
            }
            Some(Colleague::Elsewhere(name)) => {
                if let Some(c) = self.conns.get_mut(&client) {
                    c.state = State::Client(ClientStage::InChat);
                }
                let choice = self
                    .conns
                    .get(&client)
                    .map(|c| c.choice)
                    .unwrap_or_default();
                let pairing = self.new_pairing_id();
                if self.open_moved_half(now, client, pairing, choice) {
                    self.transfer_to(name, pairing, choice);
                } else {
                    self.back_to_queue(now, client, None);
                }
            }
            None => self.back_to_queue(now, client, None),
        }
    }

    /// A young person's chat moved away from it (TRANSFER to the queue, or
    /// a pairing refused by the counsellor's relay): it goes back to the
    /// queue, at `place` if it had one, else with priority and what it
    /// chose. It hears JOINED if it never had a ticket, then QUEUED.
    pub(super) fn back_to_queue(&mut self, now: Now, client: ConnId, place: Option<Request>) {
        let Some(request) = place.or_else(|| self.priority_request(now, client)) else {
            return;
        };
        // Not counted against the queue's limit: it always fits.
        self.router
            .handle_command(RouteCommand::Enqueue { client, request });
        self.issue_ticket(client);
        self.set_waiting(now, client, request);
    }

    /// A new place for `client` in the queue, ahead of newcomers, with what
    /// it chose: where a counsellor sends it back.
    pub(super) fn priority_request(&mut self, now: Now, client: ConnId) -> Option<Request> {
        let c = self.conns.get(&client)?;
        let ((topic, language), source) = (c.choice, c.source);
        Some(Request {
            topic,
            language,
            since: now.mono,
            turn: self.next_turn(),
            priority: true,
            source,
        })
    }

    pub(super) fn new_pairing_id(&mut self) -> PairingId {
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        PairingId(id)
    }

    /// A signed-in colleague here named `name` with room (other than
    /// `from`), or why not.
    pub(super) fn find_colleague(
        &self,
        from: Option<ConnId>,
        name: &str,
    ) -> Result<ConnId, Refusal> {
        let mut refusal = Refusal::UnknownColleague;
        for id in self.by_name.get(name).into_iter().flatten() {
            let Some(c) = self.conns.get(id).filter(|_| Some(*id) != from) else {
                continue;
            };
            let State::Counsellor(s) = &c.state else {
                continue;
            };
            if !s.available {
                if refusal == Refusal::UnknownColleague {
                    refusal = Refusal::ColleagueAway;
                }
            } else if c.links.len() >= s.capacity {
                refusal = Refusal::ColleagueFull;
            } else {
                return Ok(*id);
            }
        }
        Err(refusal)
    }

    /// Links a client and a counsellor in a new chat and tells both.
    pub(super) fn start_chat(&mut self, now: Now, client: ConnId, counsellor: ConnId) {
        let pairing_id = self.new_pairing_id();
        let (Some(client_chat), Some(counsellor_chat)) =
            (self.issue_chat(client), self.issue_chat(counsellor))
        else {
            return;
        };
        let mut client_cap = ResumeCapability([0; 32]);
        let mut counsellor_cap = ResumeCapability([0; 32]);
        self.rng.fill_bytes(&mut client_cap.0);
        self.rng.fill_bytes(&mut counsellor_cap.0);
        let to_counsellor = Peer::Live {
            conn: counsellor,
            chat: counsellor_chat,
        };
        let to_client = Peer::Live {
            conn: client,
            chat: client_chat,
        };
        let Some((unconfirmed, (topic, language))) = self.unconfirmed_side(now, client, pairing_id)
        else {
            return;
        };
        let client_link = self.new_link(
            now,
            pairing_id,
            to_counsellor,
            cap_hash(&client_cap),
            unconfirmed,
        );
        self.link(
            client,
            client_chat,
            Link {
                handshake_due: Some(now.mono + self.limits.handshake_timeout),
                ..client_link
            },
        );
        let counsellor_link =
            self.new_link(now, pairing_id, to_client, cap_hash(&counsellor_cap), None);
        self.link(counsellor, counsellor_chat, counsellor_link);
        self.client_paired(now, client);
        self.refresh_offer(counsellor);
        self.send(
            client,
            FromRelay::Paired {
                chat: client_chat,
                pairing_id,
                resume: client_cap,
                topic: None,
                language: None,
            },
        );
        self.send(
            counsellor,
            FromRelay::Paired {
                chat: counsellor_chat,
                pairing_id,
                resume: counsellor_cap,
                topic,
                language,
            },
        );
        // After both PAIRED: the counsellor's side may go straight on; the
        // young person's once its handshake message 1 confirms the pairing.
        self.reroute(counsellor, counsellor_chat);
        self.reroute(client, client_chat);
    }

    /// What a client's side of a new chat keeps until the client is heard
    /// from in it (its ticket, the pairing id, the place it had should the
    /// pairing be undone), and the client's topic and language.
    pub(super) fn unconfirmed_side(
        &self,
        now: Now,
        client: ConnId,
        pairing_id: PairingId,
    ) -> Option<(Option<Unconfirmed>, Choice)> {
        let c = self.conns.get(&client)?;
        let (topic, language) = c.choice;
        let request = match &c.state {
            State::Client(ClientStage::Waiting(w)) => w.request,
            _ => Request {
                topic,
                language,
                since: now.mono,
                turn: 0,
                priority: true,
                source: c.source,
            },
        };
        let unconfirmed = c.ticket.map(|ticket| Unconfirmed {
            ticket,
            pairing_id,
            request,
        });
        Some((unconfirmed, c.choice))
    }

    /// A client's pairing is made: its wait is counted, and it is in a chat.
    pub(super) fn client_paired(&mut self, now: Now, client: ConnId) {
        if let Some(c) = self.conns.get_mut(&client) {
            if let State::Client(ClientStage::Waiting(w)) = &c.state {
                self.stats
                    .waits
                    .push(now.mono.saturating_duration_since(w.since));
            }
            c.state = State::Client(ClientStage::InChat);
        }
        self.stats.pairings += 1;
    }

    /// Tells the shell where `conn`'s side of `chat` forwards now, if that
    /// changed: straight to a live peer once the pairing stands, else
    /// through the core. Call it to grant only where every frame the core
    /// owes the peer in this chat has been sent; withdrawing is safe at any
    /// time.
    pub(super) fn reroute(&mut self, conn: ConnId, chat: ChatNumber) {
        let Some(link) = self.link_mut(conn, chat) else {
            return;
        };
        let to = match link.peer {
            Peer::Live {
                conn: peer,
                chat: peer_chat,
            } if link.unconfirmed.is_none() && link.handshake_due.is_none() => Some(Route {
                conn: peer,
                chat: peer_chat,
            }),
            _ => None,
        };
        if link.route != to {
            link.route = to;
            self.out.push_back(Output::Route { conn, chat, to });
        }
    }

    pub(super) fn new_link(
        &self,
        now: Now,
        pairing: PairingId,
        peer: Peer,
        mine: CapHash,
        unconfirmed: Option<Unconfirmed>,
    ) -> Link {
        Link {
            pairing,
            peer,
            mine,
            unconfirmed,
            forward: TokenBucket::new(
                self.limits.forward_frames_per_sec,
                self.limits.forward_frames_burst,
                now.mono,
            ),
            handshake_due: None,
            place_if_refused: None,
            route: None,
        }
    }

    /// Tells the backend what a counsellor can take now, and its
    /// colleagues whether it can take a transfer.
    pub(super) fn refresh_offer(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let State::Counsellor(s) = &c.state else {
            return;
        };
        let offer = Offer {
            pairings_seen: s.pairings_seen,
            available: s.available,
            load: c.links.len(),
            capacity: s.capacity,
            topics: s.topics.clone(),
            languages: s.languages.clone(),
        };
        let name = c.pseudonym().map(str::to_owned);
        self.router.handle_command(RouteCommand::Offer {
            counsellor: conn,
            offer,
        });
        if let Some(name) = name {
            self.update_presence(&name);
        }
    }

    /// Works out what colleagues should see of `name` (the best of its
    /// connections here and, in a cluster, on the other relays) and tells
    /// them if that changed. The router hears what changed here.
    pub(super) fn update_presence(&mut self, name: &str) {
        let here = self
            .by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(
                |id| match self.conns.get(id).map(|c| (&c.state, c.links.len())) {
                    Some((State::Counsellor(s), load)) => Some(if !s.available {
                        Presence::Away
                    } else if load >= s.capacity {
                        Presence::Full
                    } else {
                        Presence::Available
                    }),
                    _ => None,
                },
            )
            .max()
            .unwrap_or(Presence::SignedOut);
        let told = self.presence_here.get(name).copied();
        if told.unwrap_or(Presence::SignedOut) != here {
            if here == Presence::SignedOut {
                self.presence_here.remove(name);
            } else {
                self.presence_here.insert(name.to_owned(), here);
            }
            self.router.handle_command(RouteCommand::Presence {
                name: name.to_owned(),
                presence: here,
            });
        }
        let elsewhere = self.presence_elsewhere.get(name).copied();
        let now = here.max(elsewhere.unwrap_or(Presence::SignedOut));
        let before = self
            .presence
            .get(name)
            .copied()
            .unwrap_or(Presence::SignedOut);
        if now == before {
            return;
        }
        if now == Presence::SignedOut {
            self.presence.remove(name);
        } else {
            self.presence.insert(name.to_owned(), now);
        }
        let Ok(label) = Label::new(name) else {
            return;
        };
        let mut others: Vec<ConnId> = self
            .by_name
            .iter()
            .filter(|(other, _)| other.as_str() != name)
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect();
        others.sort();
        let frame = FromRelay::Colleague {
            name: label,
            presence: now,
        };
        for id in others {
            self.send(id, frame.clone());
        }
    }

    /// `conn`'s side of `chat`, if it is live.
    pub(super) fn link_mut(&mut self, conn: ConnId, chat: ChatNumber) -> Option<&mut Link> {
        self.conns.get_mut(&conn)?.links.get_mut(&chat)
    }

    pub(super) fn issue_chat(&mut self, conn: ConnId) -> Option<ChatNumber> {
        let c = self.conns.get_mut(&conn)?;
        let chat = ChatNumber::new(c.next_chat)?;
        c.next_chat = c.next_chat.checked_add(1)?;
        Some(chat)
    }

    pub(super) fn link(&mut self, conn: ConnId, chat: ChatNumber, link: Link) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Some(old) = c.links.remove(&chat) {
            Self::unindex_link(&mut self.index, conn, chat, &old);
        }
        self.index.capabilities.insert(link.mine, (conn, chat));
        self.index.hashes_changed.push(link.mine);
        if let Some(u) = link.unconfirmed {
            self.index.unconfirmed_live.insert(u.ticket, (conn, chat));
            self.index.hashes_changed.push(u.ticket);
        }
        if let Peer::Remote(r) = link.peer {
            let place = Place::Live(conn, chat);
            self.index.host_side(r.key.other(), place);
        }
        c.links.insert(chat, link);
        self.index.touched.push(conn);
    }

    /// Takes one chat side off its connection, and out of the indexes.
    pub(super) fn unlink(&mut self, conn: ConnId, chat: ChatNumber) -> Option<Link> {
        let link = self.conns.get_mut(&conn)?.links.remove(&chat)?;
        Self::unindex_link(&mut self.index, conn, chat, &link);
        self.index.touched.push(conn);
        if link.route.is_some() {
            self.out.push_back(Output::Route {
                conn,
                chat,
                to: None,
            });
        }
        Some(link)
    }

    pub(super) fn unindex_link(index: &mut Indexes, conn: ConnId, chat: ChatNumber, link: &Link) {
        index.capabilities.remove(&link.mine);
        index.hashes_changed.push(link.mine);
        if let Some(u) = link.unconfirmed {
            index.unconfirmed_live.remove(&u.ticket);
            index.hashes_changed.push(u.ticket);
        }
        if let Peer::Remote(r) = link.peer {
            let key = r.key.other();
            if index.remote_sides.get(&key) == Some(&Place::Live(conn, chat)) {
                index.leave_side(key);
            }
        }
    }

    /// Points the peer of a chat side at a new place for that side.
    pub(super) fn repoint(&mut self, peer: Peer, to: Peer) {
        match peer {
            Peer::Live { conn, chat } => {
                if let Some(link) = self.link_mut(conn, chat) {
                    link.peer = to;
                    if let Peer::Remote(r) = to {
                        let place = Place::Live(conn, chat);
                        self.index.host_side(r.key.other(), place);
                    }
                }
                // Away or on another relay: withdrawn now. Back: granted
                // once the core has sent what was held (after_resume).
                if !matches!(to, Peer::Live { .. }) {
                    self.reroute(conn, chat);
                }
            }
            Peer::Away(h) => {
                if let Some(d) = self.detached.get_mut(&h) {
                    d.peer = to;
                    if let Peer::Remote(r) = to {
                        self.index.host_side(r.key.other(), Place::Away(h));
                    }
                }
            }
            // Its relay hears PEER_AWAY and PEER_BACK from this side
            // (detach_link, after_resume); its key stays the same.
            Peer::Remote(_) => {}
        }
    }

    /// Keeps a frame for a side that is away; if it cannot take more, the
    /// chat ends for the side that is here.
    pub(super) fn hold(&mut self, conn: ConnId, chat: ChatNumber, away: CapHash, blob: Blob) {
        let max = self.limits.max_held_frames;
        if let Some(d) = self.detached.get_mut(&away)
            && d.held.len() < max
        {
            d.held.push_back(blob);
            return;
        }
        self.remove_detached(&away);
        self.peer_gone(conn, chat);
    }

    /// The other side of `chat` is gone for good: the chat ends here.
    pub(super) fn peer_gone(&mut self, conn: ConnId, chat: ChatNumber) {
        if self.unlink(conn, chat).is_some() {
            self.stats.ended(EndReason::PeerDisconnected);
            self.send(
                conn,
                FromRelay::End {
                    chat,
                    reason: EndReason::PeerDisconnected,
                },
            );
            self.chat_over(conn, EndReason::PeerDisconnected);
        }
    }

    /// Ends one chat from `conn`'s side: both links go, the peer is told.
    pub(super) fn end_chat(&mut self, conn: ConnId, chat: ChatNumber, reason: EndReason) {
        let Some(link) = self.unlink(conn, chat) else {
            return;
        };
        self.stats.ended(reason);
        self.refresh_offer(conn);
        match link.peer {
            Peer::Live {
                conn: peer,
                chat: peer_chat,
            } => {
                if self.unlink(peer, peer_chat).is_some() {
                    self.send(
                        peer,
                        FromRelay::End {
                            chat: peer_chat,
                            reason,
                        },
                    );
                    self.chat_over(peer, reason);
                }
            }
            // The absent side learns when it tries to resume.
            Peer::Away(h) => {
                self.remove_detached(&h);
            }
            Peer::Remote(r) => self.deliver(r.key, PeerMessage::End(reason)),
        }
    }

    /// The side that was told its chat ended. A young person's chat is
    /// over (unless it moves on): the relay closes the connection after
    /// the END, as the client needs it no longer (§7.1).
    pub(super) fn chat_over(&mut self, conn: ConnId, reason: EndReason) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        match &c.state {
            State::Client(ClientStage::InChat) if reason != EndReason::Transferred => {
                self.close(conn, CloseCode::NoError, true);
            }
            State::Counsellor(_) => self.refresh_offer(conn),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{Bench, Did, to};
    use crate::core::frame::{BLOB_LEN, Blob, ChatNumber, EndReason, Frame};

    fn chat(n: u32) -> ChatNumber {
        ChatNumber::new(n).unwrap_or(ChatNumber::FIRST)
    }

    #[test]
    fn a_forward_reaches_the_other_side_under_its_own_chat_number() {
        let mut b = Bench::new();
        let sam = b.counsellor("Sam", 2);
        b.client();
        let (y, _) = b.client();
        let blob = Blob::new([7; BLOB_LEN]);
        let did = b.send(
            y,
            Frame::Forward {
                chat: chat(1),
                blob: blob.clone(),
            },
        );
        assert_eq!(
            did,
            vec![Did::Sent(
                sam,
                Frame::Forward {
                    chat: chat(2),
                    blob
                }
            )]
        );
    }

    #[test]
    fn a_forward_racing_the_end_of_its_chat_is_dropped_quietly() {
        let mut b = Bench::new();
        let sam = b.counsellor("Sam", 1);
        let (y, _) = b.client();
        let did = b.send(
            y,
            Frame::End {
                chat: chat(1),
                reason: EndReason::UserEnded,
            },
        );
        assert!(to(&did, sam).contains(&Frame::End {
            chat: chat(1),
            reason: EndReason::UserEnded
        }));
        let late = Frame::Forward {
            chat: chat(1),
            blob: Blob::new([1; BLOB_LEN]),
        };
        assert_eq!(b.send(sam, late), vec![], "no error, nothing sent");
    }
}
