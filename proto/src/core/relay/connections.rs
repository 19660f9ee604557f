//! Connections: admission (caps, the eviction of the oldest connection that
//! has not joined), bytes in through the per-connection decoder and backlog
//! at the pace the connection's budgets allow, dispatch by role and state,
//! HELLO and WELCOME, leaving, closing, and the end of every event, where
//! the queue hears what changed and the indexes catch up.

use super::*;

impl Relay {
    /// A connection and its control stream are up. The peer has
    /// `limits.hello_timeout` to send HELLO.
    pub fn handle_connect(
        &mut self,
        now: Now,
        credential: Credential,
    ) -> Result<ConnId, ConnectError> {
        self.handle_connect_from(now, credential, None)
    }

    /// As [`Relay::handle_connect`], with the tag of the connection's source
    /// when the shell tags sources (PROTOCOL.md §8.1, per-address limits).
    /// At the anonymous cap the oldest anonymous connection that has not
    /// joined the queue makes room, so that connections which never join
    /// cannot keep out those that will.
    pub fn handle_connect_from(
        &mut self,
        now: Now,
        credential: Credential,
        source: Option<SourceTag>,
    ) -> Result<ConnId, ConnectError> {
        if self.shutting_down {
            return Err(ConnectError::TooManyConnections);
        }
        let anonymous = credential == Credential::Anonymous;
        if anonymous && self.anonymous >= self.limits.max_anonymous_connections {
            // Whatever its age: a flood that reconnects as fast as it is
            // pushed out must not keep newcomers out; a newcomer can only be
            // pushed out in turn by as many newer connections as there are
            // connections that have not joined.
            match self.index.unjoined.first() {
                Some(&(_, id)) => {
                    self.close(id, CloseCode::Busy, true);
                    self.settle(now.mono);
                }
                None => return Err(ConnectError::TooManyConnections),
            }
        }
        if self.conns.len() >= self.limits.max_connections {
            return Err(ConnectError::TooManyConnections);
        }
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        if anonymous {
            self.anonymous += 1;
        }
        self.conns.insert(
            id,
            Conn {
                stage: Stage::new(&credential),
                credential,
                source,
                connected_at: now.mono,
                decoder: FrameDecoder::default(),
                control: TokenBucket::new(
                    self.limits.control_frames_per_sec,
                    self.limits.control_frames_burst,
                    now.mono,
                ),
                backlog: VecDeque::new(),
                blocked_until: None,
                paused: false,
                claiming: false,
                state: State::AwaitingHello {
                    deadline: now.mono + self.limits.hello_timeout,
                },
                links: Links::default(),
                ticket: None,
                choice: (None, None),
                next_chat: 1,
                indexed_ticket: None,
                indexed_unjoined: false,
                indexed_deadline: None,
                codings_in_store: 0,
            },
        );
        self.touch(id);
        self.end_event(now);
        Ok(id)
    }

    /// Bytes arrived on the connection's control stream. The frames in them
    /// are acted on as far as the connection's budgets allow; the rest wait.
    pub fn handle_data(&mut self, now: Now, conn: ConnId, bytes: &[u8]) -> Flow {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Flow::Read;
        };
        let mut frames = Vec::new();
        let mut invalid = c
            .decoder
            .push(bytes, &mut frames)
            .err()
            .map(|e| e.close_code());
        let frames = ToRelay::from_decoded(frames, &mut invalid);
        self.handle_frames(now, conn, frames, invalid)
    }

    /// Frames a shell decoded itself from the connection's stream, in
    /// order, and the close code if the bytes after them were not a valid
    /// frame: acted on as [`Relay::handle_data`] acts on what it decodes.
    pub fn handle_frames(
        &mut self,
        now: Now,
        conn: ConnId,
        frames: Vec<ToRelay>,
        invalid: Option<CloseCode>,
    ) -> Flow {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Flow::Read;
        };
        // Frames decoded before a bad one are still acted on, in order.
        c.backlog.extend(frames.into_iter().map(Pending::Frame));
        if let Some(code) = invalid {
            c.backlog.push_back(Pending::Invalid(code));
        }
        self.drain_backlog(now, conn, true);
        self.touch(conn);
        self.end_event(now);
        self.flow(conn)
    }

    /// The peer finished its side of the stream: after the frames it sent,
    /// it leaves (PROTOCOL.md §3.2), and the relay closes the connection.
    pub fn handle_finish(&mut self, now: Now, conn: ConnId) -> Flow {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Flow::Read;
        };
        c.backlog.push_back(Pending::Finished);
        self.drain_backlog(now, conn, true);
        self.touch(conn);
        self.end_event(now);
        self.flow(conn)
    }

    /// The connection is gone. Frames already read are acted on first.
    /// [`Departure::Left`]: its chats end at once, a waiting client leaves
    /// the queue for good. [`Departure::Lost`]: its chats, and a waiting
    /// client's place, wait `resume_window` for it (PROTOCOL.md §7.4).
    pub fn handle_disconnect(&mut self, now: Now, conn: ConnId, departure: Departure) {
        let before = self.out.len();
        self.drain_backlog(now, conn, false);
        // What it sent before it went is acted on, but the connection is
        // gone: nothing more is written to it, closed or unblocked.
        let mut at = 0;
        self.out.retain(|out| {
            at += 1;
            at <= before || out.conn() != conn
        });
        if self.conns.contains_key(&conn) {
            match departure {
                Departure::Lost => self.detach(now, conn),
                Departure::Left(reason) => self.leave(conn, reason),
            }
            self.forget(now, conn);
        }
        self.end_event(now);
    }

    /// Whether the shell may read `conn` on, as things stand after an
    /// event (a RESUME answered within the event unpauses it again).
    fn flow(&self, conn: ConnId) -> Flow {
        match self.conns.get(&conn) {
            Some(c) if c.paused => Flow::Pause,
            _ => Flow::Read,
        }
    }

    /// Acts on the backlog while budget allows (or all of it, when the
    /// connection is gone and `paced` is false).
    pub(super) fn drain_backlog(&mut self, now: Now, conn: ConnId, paced: bool) -> Flow {
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return Flow::Read;
            };
            let Some(front) = c.backlog.front() else {
                // An idle connection keeps no room for frames.
                if c.backlog.capacity() > 0 {
                    c.backlog = VecDeque::new();
                }
                c.blocked_until = None;
                if std::mem::take(&mut c.paused) {
                    self.out.push_back(Output::Unblock { conn });
                }
                return Flow::Read;
            };
            if paced && c.claiming {
                c.paused = true;
                return Flow::Pause;
            }
            if paced {
                let bucket = match front {
                    Pending::Frame(ToRelay::Forward { chat, .. }) => {
                        c.links.get_mut(chat).map(|l| &mut l.forward)
                    }
                    Pending::Frame(_) => Some(&mut c.control),
                    Pending::Invalid(_) | Pending::Finished => None,
                };
                if let Some(bucket) = bucket
                    && !bucket.take(now.mono, 1.0)
                {
                    c.blocked_until = Some(bucket.ready_at(now.mono, 1.0));
                    c.paused = true;
                    return Flow::Pause;
                }
            }
            let Some(item) = c.backlog.pop_front() else {
                continue;
            };
            match item {
                Pending::Frame(frame) => {
                    if let Err(code) = self.handle_frame(now, conn, frame) {
                        self.close(conn, code, true);
                    }
                }
                Pending::Invalid(code) => self.close(conn, code, true),
                Pending::Finished => {
                    self.leave(conn, EndReason::UserEnded);
                    self.close(conn, CloseCode::NoError, true);
                    self.pump_router(now);
                }
            }
        }
    }

    /// Ends every chat with `RelayShutdown` and closes every connection.
    /// New connections are refused from now on.
    /// The relay leaves its cluster (PROTOCOL.md §3.3, DRAINING): every
    /// connection is closed with DRAINING and handled as lost. Its chat
    /// sides wait for a RESUME and their peers hear PEER_AWAY; a waiting
    /// young person keeps its place. The router knows all of it by its
    /// holdings, so each is resumed on another relay, where it is claimed
    /// from here, with what was held for it. No new connection is taken.
    pub fn handle_drain(&mut self, now: Now) {
        self.shutting_down = true;
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        ids.sort();
        for id in ids {
            self.stats.closed(CloseCode::Draining);
            self.out.push_back(Output::Close {
                conn: id,
                code: CloseCode::Draining,
                flush: true,
            });
            self.detach(now, id);
            self.forget(now, id);
        }
        self.end_event(now);
    }

    /// Whether a draining relay still holds anything another relay may
    /// claim (a chat side or a place waiting for its RESUME).
    pub fn holds_anything(&self) -> bool {
        !self.detached.is_empty() || !self.away_from_queue.is_empty()
    }

    pub fn handle_shutdown(&mut self, _now: Now) {
        self.shutting_down = true;
        // Sides on other relays are not shutting down: for them the peer
        // is gone.
        let mut remote: Vec<SideKey> = self
            .detached
            .values()
            .filter_map(|d| match d.peer {
                Peer::Remote(r) => Some(r.key),
                _ => None,
            })
            .collect();
        self.detached.clear();
        self.away_from_queue.clear();
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        ids.sort();
        for id in &ids {
            let c = &self.conns[id];
            // Each chat once: on its counsellor's side, or its client's if
            // the counsellor is away or on another relay.
            let ended = c
                .links
                .values()
                .filter(|l| {
                    matches!(c.state, State::Counsellor(_))
                        || matches!(l.peer, Peer::Away(_) | Peer::Remote(_))
                })
                .count();
            remote.extend(c.links.values().filter_map(|l| match l.peer {
                Peer::Remote(r) => Some(r.key),
                _ => None,
            }));
            for _ in 0..ended {
                self.stats.ended(EndReason::RelayShutdown);
            }
            self.stats.closed(CloseCode::ShuttingDown);
            let chats: Vec<ChatNumber> = c.links.keys().copied().collect();
            for chat in chats {
                self.send(
                    *id,
                    FromRelay::End {
                        chat,
                        reason: EndReason::RelayShutdown,
                    },
                );
            }
        }
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.links.clear();
            }
            self.leave_router(id);
            self.remove_conn(id);
            self.out.push_back(Output::Close {
                conn: id,
                code: CloseCode::ShuttingDown,
                flush: true,
            });
        }
        self.by_name.clear();
        self.presence.clear();
        for name in std::mem::take(&mut self.presence_here).into_keys() {
            let presence = Presence::SignedOut;
            self.router
                .handle_command(RouteCommand::Presence { name, presence });
        }
        self.index = Indexes::default();
        for key in remote {
            self.deliver(key, PeerMessage::End(EndReason::PeerDisconnected));
        }
    }

    /// The organisation revoked this counsellor connection's credential:
    /// each of its chats ends for the young person with
    /// END(COUNSELLOR_REVOKED), and the connection is closed with `REVOKED`.
    pub fn handle_revoked(&mut self, now: Now, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.credential == Credential::Anonymous {
            return;
        }
        let chats: Vec<ChatNumber> = c.links.keys().copied().collect();
        for chat in chats {
            self.end_chat(conn, chat, EndReason::CounsellorRevoked);
        }
        self.close(conn, CloseCode::Revoked, true);
        self.end_event(now);
    }

    pub(super) fn handle_frame(
        &mut self,
        now: Now,
        conn: ConnId,
        frame: ToRelay,
    ) -> Result<(), CloseCode> {
        let c = self.conns.get_mut(&conn).ok_or(CloseCode::InternalError)?;
        // What the connection could never send here is refused by the rules
        // its own task checks too.
        c.stage.check(&frame)?;
        let role = match &c.state {
            State::AwaitingHello { .. } => {
                return match frame {
                    ToRelay::Hello { version, role } => self.handle_hello(now, conn, version, role),
                    ToRelay::Resume { capability } => self.handle_resume(now, conn, capability),
                    _ => Err(CloseCode::UnexpectedFrame),
                };
            }
            State::Client(_) => Role::Client,
            State::Counsellor(_) => Role::Counsellor,
        };
        match (role, frame) {
            (
                Role::Client,
                ToRelay::Join {
                    topic,
                    language,
                    pow_solution,
                },
            ) => self.handle_join(now, conn, topic, language, pow_solution),
            (Role::Client, ToRelay::Proof { solution }) => self.handle_proof(conn, solution),
            (_, ToRelay::Forward { chat, blob }) => self.handle_forward(conn, chat, blob),
            (Role::Counsellor, ToRelay::Resume { capability }) => {
                self.handle_resume(now, conn, capability)
            }
            // The reason was checked by the stage (§4.2).
            (_, ToRelay::End { chat, reason }) => {
                if !c.links.contains_key(&chat) {
                    return if c.is_ended_chat(chat) {
                        Ok(())
                    } else {
                        Err(CloseCode::UnexpectedFrame)
                    };
                }
                self.handle_end(now, conn, role, chat, reason);
                Ok(())
            }
            (
                Role::Counsellor,
                ToRelay::Status {
                    available,
                    capacity,
                    topics,
                    languages,
                },
            ) => {
                if topics.iter().any(|t| !self.service.knows_topic(*t))
                    || languages.iter().any(|l| !self.service.knows_language(*l))
                {
                    return Err(CloseCode::MalformedFrame);
                }
                if let Some(Conn {
                    state: State::Counsellor(s),
                    ..
                }) = self.conns.get_mut(&conn)
                {
                    s.available = available;
                    s.capacity = usize::from(capacity.min(self.limits.max_capacity));
                    s.topics = topics;
                    s.languages = languages;
                }
                self.refresh_offer(conn);
                self.pump_router(now);
                Ok(())
            }
            (Role::Counsellor, ToRelay::Transfer { chat, target }) => {
                if !c.links.contains_key(&chat) {
                    return if c.is_ended_chat(chat) {
                        Ok(())
                    } else {
                        Err(CloseCode::UnexpectedFrame)
                    };
                }
                self.handle_transfer(now, conn, chat, target);
                Ok(())
            }
            (Role::Counsellor, ToRelay::FormAsk) => {
                self.send_form(conn);
                Ok(())
            }
            (
                Role::Counsellor,
                ToRelay::Codings {
                    batch,
                    form,
                    codings,
                },
            ) => self.handle_codings(now, conn, batch, form, codings),
            // HELLO twice, frames of the other role.
            _ => Err(CloseCode::UnexpectedFrame),
        }
    }

    pub(super) fn welcome(&mut self, conn: ConnId, role: Role, pow: PowChallenge) {
        let languages: Vec<Language> = self
            .service
            .languages
            .iter()
            .copied()
            .take(MAX_LANGUAGES)
            .collect();
        let topics: Vec<_> = self
            .service
            .topics
            .iter()
            .take(MAX_TOPICS)
            .cloned()
            .collect();
        self.send(
            conn,
            FromRelay::Welcome {
                version: PROTOCOL_VERSION,
                role,
                topics: topics.len() as u8,
                languages,
                pow,
            },
        );
        for t in topics {
            self.send(
                conn,
                FromRelay::Topic {
                    id: t.id,
                    label_nl: t.label_nl,
                    label_en: t.label_en,
                },
            );
        }
    }

    pub(super) fn fresh_challenge(&mut self) -> PowChallenge {
        let mut pow = PowChallenge {
            difficulty: self.pow_difficulty(),
            nonce: [0; 16],
        };
        self.rng.fill_bytes(&mut pow.nonce);
        pow
    }

    pub(super) fn handle_hello(
        &mut self,
        now: Now,
        conn: ConnId,
        version: u8,
        role: Role,
    ) -> Result<(), CloseCode> {
        if version != PROTOCOL_VERSION {
            return Err(CloseCode::UnsupportedVersion);
        }
        let anonymous = self
            .conns
            .get(&conn)
            .is_some_and(|c| c.credential == Credential::Anonymous);
        // The anonymous role takes no credential (§3.1); a counsellor's
        // connection counts only against the cap for counsellors.
        if anonymous != (role == Role::Client) {
            return Err(CloseCode::NotAuthorized);
        }
        let pow = match role {
            Role::Client => self.fresh_challenge(),
            Role::Counsellor => PowChallenge::NONE,
        };
        let c = self.conns.get_mut(&conn).ok_or(CloseCode::InternalError)?;
        match role {
            Role::Client => {
                c.state = State::Client(ClientStage::Welcomed {
                    challenge: pow,
                    deadline: now.mono + challenge_lifetime(pow.difficulty),
                })
            }
            Role::Counsellor => {
                // Away until the counsellor says what it takes.
                c.state = State::Counsellor(CounsellorState {
                    available: false,
                    capacity: 1,
                    pairings_seen: 0,
                    topics: Vec::new(),
                    languages: Vec::new(),
                    last_stats: None,
                });
            }
        }
        self.welcome(conn, role, pow);
        if role == Role::Counsellor {
            if let Some(name) = self.conns.get(&conn).and_then(|c| c.pseudonym()) {
                let name = name.to_owned();
                self.by_name.entry(name.clone()).or_default().insert(conn);
                let colleagues: Vec<FromRelay> = self
                    .presence
                    .iter()
                    .filter(|(other, _)| **other != name)
                    .filter_map(|(other, presence)| {
                        Some(FromRelay::Colleague {
                            name: Label::new(other.as_str()).ok()?,
                            presence: *presence,
                        })
                    })
                    .collect();
                for frame in colleagues {
                    self.send(conn, frame);
                }
            }
            self.refresh_offer(conn);
            self.tell_queue_stats(conn);
        }
        Ok(())
    }

    /// Marks a connection whose deadlines or indexed entries may change.
    pub(super) fn touch(&mut self, conn: ConnId) {
        self.index.touched.push(conn);
    }

    /// Every public entry point ends here: waiting clients and counsellors
    /// hear what the event changed in the queue, and the indexes are
    /// brought up to date, so that between events they agree with the
    /// tables.
    pub(super) fn end_event(&mut self, now: Now) {
        self.pump_router(now);
        self.settle(now.mono);
    }

    /// Brings the indexes up to date for the connections this event
    /// touched.
    pub(super) fn settle(&mut self, now: Instant) {
        let mut touched = std::mem::take(&mut self.index.touched);
        touched.sort();
        touched.dedup();
        for id in touched {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            let unjoined = c.is_unjoined_client();
            if unjoined != c.indexed_unjoined {
                if unjoined {
                    self.index.unjoined.insert((c.connected_at, id));
                } else {
                    self.index.unjoined.remove(&(c.connected_at, id));
                }
                c.indexed_unjoined = unjoined;
            }
            if c.indexed_ticket != c.ticket {
                if let Some(old) = c.indexed_ticket
                    && self.index.tickets.get(&old) == Some(&id)
                {
                    self.index.tickets.remove(&old);
                    self.index.hashes_changed.push(old);
                }
                if let Some(new) = c.ticket {
                    self.index.tickets.insert(new, id);
                    self.index.hashes_changed.push(new);
                }
                c.indexed_ticket = c.ticket;
            }
            let deadline = c.next_deadline();
            if deadline != c.indexed_deadline {
                self.index.conns.set(id, deadline);
                c.indexed_deadline = deadline;
            }
        }
        self.tell_router_holdings(now);
    }

    /// The connection left on purpose: its chats end with `reason`, and a
    /// waiting client's place and ticket are gone (the caller forgets it,
    /// which takes it out of the router's queue).
    pub(super) fn leave(&mut self, conn: ConnId, reason: EndReason) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.ticket = None;
        let chats: Vec<ChatNumber> = c.links.keys().copied().collect();
        for chat in chats {
            self.end_chat(conn, chat, reason);
        }
    }

    pub(super) fn close(&mut self, conn: ConnId, code: CloseCode, flush: bool) {
        if self.conns.contains_key(&conn) {
            self.stats.closed(code);
            self.forget_without_pairing(conn);
            self.out.push_back(Output::Close { conn, code, flush });
        }
    }

    /// Drops every trace of a connection; its chat partners are told.
    pub(super) fn forget(&mut self, now: Now, conn: ConnId) {
        if self.conns.contains_key(&conn) {
            self.forget_without_pairing(conn);
            self.pump_router(now);
        }
    }

    pub(super) fn forget_without_pairing(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let chats: Vec<ChatNumber> = c.links.keys().copied().collect();
        for chat in chats {
            self.end_chat(conn, chat, EndReason::PeerDisconnected);
        }
        self.leave_router(conn);
        self.remove_conn(conn);
    }

    /// Tells the router that a connection is gone: out of the queue, or
    /// signed out.
    pub(super) fn leave_router(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let command = match c.credential {
            Credential::Anonymous => RouteCommand::Withdraw { client: conn },
            Credential::Counsellor { .. } => RouteCommand::SignOut { counsellor: conn },
        };
        self.router.handle_command(command);
    }

    /// Removes a connection from the tables and the indexes.
    pub(super) fn remove_conn(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if c.credential == Credential::Anonymous {
            self.anonymous = self.anonymous.saturating_sub(1);
        }
        self.index.conns.set(conn, None);
        if c.indexed_unjoined {
            self.index.unjoined.remove(&(c.connected_at, conn));
        }
        if let Some(ticket) = c.indexed_ticket
            && self.index.tickets.get(&ticket) == Some(&conn)
        {
            self.index.tickets.remove(&ticket);
            self.index.hashes_changed.push(ticket);
        }
        for (chat, link) in c.links.iter() {
            Self::unindex_link(&mut self.index, conn, *chat, link);
        }
        if let Some(name) = c.pseudonym()
            && let Some(ids) = self.by_name.get_mut(name)
        {
            ids.remove(&conn);
            if ids.is_empty() {
                self.by_name.remove(name);
            }
            let name = name.to_owned();
            self.update_presence(&name);
        }
    }

    pub(super) fn send(&mut self, conn: ConnId, frame: FromRelay) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        let bytes = Frame::from(frame).encode();
        // Coalesce consecutive frames for one connection into one write.
        if let Some(Output::Send {
            conn: last,
            bytes: buf,
        }) = self.out.back_mut()
            && *last == conn
        {
            buf.extend_from_slice(&bytes);
            return;
        }
        self.out.push_back(Output::Send { conn, bytes });
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{Bench, Did};
    use crate::core::CloseCode;
    use crate::core::limits::Limits;
    use crate::core::relay::Credential;

    #[test]
    fn a_connection_that_never_says_hello_is_closed_for_timeout() {
        let mut b = Bench::new();
        let y = b.connect(Credential::Anonymous);
        let secs = Limits::default().hello_timeout.as_secs();
        assert_eq!(b.after(secs - 1), vec![]);
        assert_eq!(b.after(1), vec![Did::Closed(y, CloseCode::Timeout)]);
        assert_eq!(b.relay.counts(), (0, 0));
    }

    #[test]
    fn at_the_anonymous_cap_the_oldest_connection_that_has_not_joined_makes_room() {
        let mut b = Bench::with(Limits {
            max_anonymous_connections: 3,
            pow_min_difficulty: 0,
            pow_max_difficulty: 0,
            ..Limits::default()
        });
        let (joined, _) = b.client();
        let idle = b.connect(Credential::Anonymous);
        let newer = b.connect(Credential::Anonymous);
        let newest = b.connect(Credential::Anonymous);
        assert_eq!(b.drain(), vec![Did::Closed(idle, CloseCode::Busy)]);
        assert_eq!(b.relay.counts(), (3, 1));
        for kept in [joined, newer, newest] {
            assert!(b.relay.conns.contains_key(&kept));
        }
    }
}
