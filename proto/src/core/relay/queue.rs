//! The queue as the core sees it: JOIN with its proof of work, tickets
//! (JOINED), the waiting state and its rent in a crowded queue (CHALLENGE,
//! PROOF), and the router's answers: pairs (PAIRED, through
//! [`Relay::on_paired`]) and what waiting clients (QUEUED) and counsellors
//! (QUEUE_STATS) hear of the queue. The queue itself, the pairing and the
//! wait estimate are the [`Router`]'s.

use super::*;

impl Relay {
    /// The proof-of-work difficulty asked of new clients now: the load part
    /// (solved JOINs per second) or the queue part (how full it is),
    /// whichever is higher.
    pub fn pow_difficulty(&self) -> u8 {
        self.pow.difficulty().max(self.queue_difficulty())
    }

    /// The difficulty the queue's fullness asks (PROTOCOL.md §8.1): the
    /// minimum up to half full, then rising evenly to the maximum when full.
    pub(super) fn queue_difficulty(&self) -> u8 {
        let (min, max) = (
            self.limits.pow_min_difficulty,
            self.limits
                .pow_max_difficulty
                .max(self.limits.pow_min_difficulty),
        );
        let fill = self.queue_fill();
        if fill <= 0.5 {
            return min;
        }
        let extra = (f64::from(max - min) * (2.0 * fill - 1.0)).ceil();
        min.saturating_add(extra.clamp(0.0, f64::from(max - min)) as u8)
    }

    /// Waiting newcomers as a share of `max_queue` (0 to 1).
    pub(super) fn queue_fill(&self) -> f64 {
        let waiting = self.router.view().newcomers_waiting();
        (waiting as f64 / self.limits.max_queue.max(1) as f64).min(1.0)
    }

    pub(super) fn handle_join(
        &mut self,
        now: Now,
        conn: ConnId,
        topic: Option<TopicId>,
        language: Option<Language>,
        pow_solution: [u8; 8],
    ) -> Result<(), CloseCode> {
        let c = self.conns.get(&conn).ok_or(CloseCode::InternalError)?;
        let State::Client(ClientStage::Welcomed {
            challenge,
            deadline,
        }) = &c.state
        else {
            return Err(CloseCode::UnexpectedFrame);
        };
        if *deadline <= now.mono {
            return Err(CloseCode::Timeout);
        }
        if topic.is_some_and(|t| !self.service.knows_topic(t))
            || language.is_some_and(|l| !self.service.knows_language(l))
        {
            return Err(CloseCode::MalformedFrame);
        }
        // The challenge was fresh for this connection and is spent now:
        // a solution is worth one JOIN on one connection.
        if !pow_valid(&challenge.nonce, challenge.difficulty, &pow_solution) {
            return Err(CloseCode::ProofOfWorkFailed);
        }
        // Paid-for arrivals, and only those, drive the load difficulty.
        self.pow.record_arrival(now.mono);
        if !self.service.hours.is_open(now.unix) {
            let next_open = self
                .service
                .hours
                .next_open(now.unix)
                .and_then(|t| u64::try_from(t).ok());
            self.send(
                conn,
                FromRelay::Unavailable {
                    reason: Unavailable::Closed,
                    next_open,
                },
            );
            self.close(conn, CloseCode::NoError, true);
            return Ok(());
        }
        let source = c.source;
        let request = Request {
            topic,
            language,
            since: now.mono,
            turn: self.next_turn(),
            priority: false,
            source,
        };
        let places = self.limits.per_source_places;
        let over_source_limit =
            places > 0 && source.is_some_and(|tag| self.places_held_by(tag) >= places);
        let queue_full = self.router.view().newcomers_waiting() >= self.limits.max_queue;
        if over_source_limit || queue_full || !self.admissions.take(now.mono, 1.0) {
            self.send(
                conn,
                FromRelay::Unavailable {
                    reason: Unavailable::Busy,
                    next_open: None,
                },
            );
            self.close(conn, CloseCode::NoError, true);
            return Ok(());
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.choice = (topic, language);
        }
        self.router.handle_command(RouteCommand::Enqueue {
            client: conn,
            request,
        });
        self.issue_ticket(conn);
        self.set_waiting(now, conn, request);
        self.pump_router(now);
        Ok(())
    }

    /// Places in the queue held by connections from `source`, waiting or
    /// away, in this epoch of the shell's source key.
    pub(super) fn places_held_by(&self, source: SourceTag) -> usize {
        let away = self.index.away_per_source.get(&source).copied();
        self.router.view().waiting_from(source) + away.unwrap_or(0)
    }

    /// A waiting client's rent is due: while the queue is more than half
    /// full it must solve a fresh challenge in time to keep its place.
    pub(super) fn charge_rent(&mut self, now: Now, conn: ConnId) {
        let Some(interval) = self.limits.queue_rent_interval else {
            return;
        };
        let challenge = (self.queue_fill() > 0.5).then(|| self.fresh_challenge());
        let Some(Conn {
            state: State::Client(ClientStage::Waiting(w)),
            ..
        }) = self.conns.get_mut(&conn)
        else {
            return;
        };
        w.rent.next_at = Some(now.mono + interval);
        if let Some(pow) = challenge {
            w.rent.owed = Some((pow, now.mono + challenge_lifetime(pow.difficulty)));
            self.stats.rent_challenges += 1;
            self.send(conn, FromRelay::Challenge { pow });
        }
    }

    /// PROOF: the answer to the last CHALLENGE. One that raced a pairing,
    /// or came without a CHALLENGE owed, is dropped.
    pub(super) fn handle_proof(
        &mut self,
        conn: ConnId,
        solution: [u8; 8],
    ) -> Result<(), CloseCode> {
        let c = self.conns.get_mut(&conn).ok_or(CloseCode::InternalError)?;
        match &mut c.state {
            State::Client(ClientStage::Waiting(w)) => {
                if let Some((pow, _)) = w.rent.owed {
                    if !pow_valid(&pow.nonce, pow.difficulty, &solution) {
                        return Err(CloseCode::ProofOfWorkFailed);
                    }
                    w.rent.owed = None;
                }
                Ok(())
            }
            State::Client(ClientStage::InChat) => Ok(()),
            _ => Err(CloseCode::UnexpectedFrame),
        }
    }

    pub(super) fn next_turn(&mut self) -> u64 {
        self.turns += 1;
        self.turns
    }

    /// Gives a client that enters the queue a ticket (JOINED) to keep its
    /// place if its connection drops; one per connection.
    pub(super) fn issue_ticket(&mut self, conn: ConnId) {
        if self.conns.get(&conn).is_none_or(|c| c.ticket.is_some()) {
            return;
        }
        let mut ticket = ResumeCapability([0; 32]);
        self.rng.fill_bytes(&mut ticket.0);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.ticket = Some(cap_hash(&ticket));
        }
        self.touch(conn);
        self.send(conn, FromRelay::Joined { resume: ticket });
    }

    /// Puts a client in the waiting state.
    pub(super) fn set_waiting(&mut self, now: Now, conn: ConnId, request: Request) {
        let waiting = self.waiting_for(now, request);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = State::Client(ClientStage::Waiting(waiting));
        }
        self.touch(conn);
    }

    /// The waiting state of a client whose place is `request` (its turn,
    /// and since when it waits): its wait is over `max_wait` after that,
    /// and newcomers pay rent in a crowded queue while clients handed back
    /// by a counsellor do not. (The topic fallback is the router's timer.)
    pub(super) fn waiting_for(&self, now: Now, request: Request) -> Waiting {
        Waiting {
            request,
            since: request.since,
            deadline: request.since + self.limits.max_wait,
            next_update: now.mono,
            last_sent: None,
            rent: Rent {
                next_at: self
                    .limits
                    .queue_rent_interval
                    .filter(|_| !request.priority)
                    .map(|interval| now.mono + interval),
                owed: None,
            },
        }
    }

    /// Hands the router what this event changed and acts on its answers,
    /// until it has none left.
    pub(super) fn pump_router(&mut self, now: Now) {
        if std::mem::take(&mut self.index.tell_whole_queue) {
            self.router.handle_command(RouteCommand::Announce);
        }
        while let Some(event) = self.router.poll_event(now.mono) {
            match event {
                RouteEvent::Paired { client, counsellor } => {
                    self.pairing_seen(counsellor);
                    self.on_paired(now, client, counsellor)
                }
                RouteEvent::Queued {
                    client,
                    position,
                    estimated_wait_secs,
                    announce,
                } => self.on_queued(now, client, position, estimated_wait_secs, announce),
                RouteEvent::QueueStats { waiting } => self.on_queue_stats(now, waiting),
                RouteEvent::PairedRemote {
                    local,
                    role,
                    pairing,
                    topic,
                    language,
                } => {
                    if role == Role::Counsellor {
                        self.pairing_seen(local);
                    }
                    self.on_paired_remote(now, local, role, pairing, (topic, language))
                }
                RouteEvent::Delivered { to, message } => self.on_delivered(now, to, message),
                RouteEvent::Claimed {
                    claim,
                    hash,
                    claimant,
                } => self.on_claimed(now, claim, hash, claimant),
                RouteEvent::HandedOver { conn, hash, handed } => {
                    self.on_handed_over(now, conn, hash, handed)
                }
                RouteEvent::Presence { name, presence } => {
                    self.on_presence_elsewhere(name, presence)
                }
                RouteEvent::TransferIn {
                    name,
                    pairing,
                    topic,
                    language,
                } => self.on_transfer_in(now, &name, pairing, (topic, language)),
            }
        }
    }

    /// One more of the router's pairings with `counsellor` taken in: its
    /// next offer says so, whether the pairing starts or is refused.
    fn pairing_seen(&mut self, counsellor: ConnId) {
        if let Some(Conn {
            state: State::Counsellor(s),
            ..
        }) = self.conns.get_mut(&counsellor)
        {
            s.pairings_seen += 1;
        }
    }

    /// The router paired a client with a counsellor. An answer that comes
    /// late may find the client no longer waiting (gone, away, or handed
    /// to a colleague) or the counsellor without room: then the client, if
    /// it still waits, goes back to its place, and the router hears the
    /// counsellor's real room.
    pub(super) fn on_paired(&mut self, now: Now, client: ConnId, counsellor: ConnId) {
        let waiting = match self.conns.get(&client) {
            Some(Conn {
                state: State::Client(ClientStage::Waiting(w)),
                ..
            }) => Some(w.request),
            _ => None,
        };
        let has_room = match self.conns.get(&counsellor) {
            Some(
                c @ Conn {
                    state: State::Counsellor(s),
                    ..
                },
            ) => s.available && c.links.len() < s.capacity,
            _ => false,
        };
        if waiting.is_some() && has_room {
            self.start_chat(now, client, counsellor);
            return;
        }
        self.stats.late_pairings += 1;
        if let Some(request) = waiting {
            self.router
                .handle_command(RouteCommand::Enqueue { client, request });
        }
        if self.conns.contains_key(&counsellor) {
            self.refresh_offer(counsellor);
        } else {
            self.router
                .handle_command(RouteCommand::SignOut { counsellor });
        }
    }

    /// A waiting client's position and estimate: it hears QUEUED if they
    /// changed, or if the whole queue is told and its heartbeat is near.
    pub(super) fn on_queued(
        &mut self,
        now: Now,
        client: ConnId,
        position: u32,
        estimate: Option<u32>,
        announce: bool,
    ) {
        let heartbeat_by = now.mono + HEARTBEAT_SLACK;
        let due = match self.conns.get_mut(&client) {
            Some(Conn {
                state: State::Client(ClientStage::Waiting(w)),
                ..
            }) if w.last_sent != Some((position, estimate))
                || (announce && w.next_update <= heartbeat_by) =>
            {
                w.last_sent = Some((position, estimate));
                w.next_update = now.mono + Limits::QUEUE_UPDATE_INTERVAL;
                true
            }
            _ => false,
        };
        if due {
            self.touch(client);
            self.send(
                client,
                FromRelay::Queued {
                    position,
                    estimated_wait_secs: estimate,
                },
            );
        }
    }

    /// The counts per topic changed (PROTOCOL.md §7.3, "Queue feedback"):
    /// counsellors hear QUEUE_STATS at once when a count went down (a
    /// client left or was paired) or when they heard none in the last
    /// [`Limits::QUEUE_STATS_INTERVAL`]; counts that only grew within it
    /// wait until it is over, and go out as they are then.
    pub(super) fn on_queue_stats(&mut self, now: Now, waiting: Vec<(Option<TopicId>, usize)>) {
        let stats = queue_stats(waiting);
        let told = self.index.queue_stats.as_deref().unwrap_or_default();
        let fell = told.iter().any(|(topic, before)| {
            let after = stats
                .iter()
                .find(|(t, _)| t == topic)
                .map_or(0, |(_, n)| *n);
            after < *before
        });
        match self.queue_stats_due() {
            Some(due) if now.mono < due && !fell => self.index.queue_stats_held = Some(stats),
            _ => self.broadcast_queue_stats(now, stats),
        }
    }

    /// When held QUEUE_STATS may go out, or when new counts could go out at
    /// once (`None`: now).
    fn queue_stats_due(&self) -> Option<Instant> {
        let sent = self.index.queue_stats_sent?;
        Some(sent + Limits::QUEUE_STATS_INTERVAL)
    }

    /// When held QUEUE_STATS are due, if any are held: a deadline.
    pub(super) fn held_queue_stats_due(&self) -> Option<Instant> {
        self.index
            .queue_stats_held
            .as_ref()
            .and(self.queue_stats_due())
    }

    /// Sends held QUEUE_STATS whose interval is over.
    pub(super) fn release_queue_stats(&mut self, now: Now) {
        if self
            .held_queue_stats_due()
            .is_some_and(|due| due <= now.mono)
            && let Some(stats) = self.index.queue_stats_held.take()
        {
            self.broadcast_queue_stats(now, stats);
        }
    }

    /// Every counsellor whose view differs hears `stats`.
    fn broadcast_queue_stats(&mut self, now: Now, stats: Vec<(Option<TopicId>, u16)>) {
        self.index.queue_stats_held = None;
        if self.index.queue_stats.as_ref() == Some(&stats) {
            // Every counsellor heard these counts already.
            return;
        }
        self.index.queue_stats_sent = Some(now.mono);
        self.index.queue_stats = Some(stats.clone());
        let mut ids: Vec<ConnId> = self.by_name.values().flatten().copied().collect();
        ids.sort();
        for id in ids {
            self.send_queue_stats(id, &stats);
        }
    }

    /// Tells a counsellor who just signed in how many wait, as far as the
    /// router knows now.
    pub(super) fn tell_queue_stats(&mut self, counsellor: ConnId) {
        let stats = queue_stats(self.router.view().waiting_per_topic());
        if self.index.queue_stats.as_ref() != Some(&stats) {
            // This counsellor hears counts the others have not.
            self.index.queue_stats = None;
        }
        if let Some(Conn {
            state: State::Counsellor(s),
            ..
        }) = self.conns.get_mut(&counsellor)
        {
            s.last_stats = None;
        }
        self.send_queue_stats(counsellor, &stats);
    }

    fn send_queue_stats(&mut self, id: ConnId, stats: &[(Option<TopicId>, u16)]) {
        let changed = match self.conns.get_mut(&id) {
            Some(Conn {
                state: State::Counsellor(s),
                ..
            }) if s.last_stats.as_deref() != Some(stats) => {
                s.last_stats = Some(stats.to_vec());
                true
            }
            _ => false,
        };
        if changed {
            self.send(
                id,
                FromRelay::QueueStats {
                    waiting: stats.to_vec(),
                },
            );
        }
    }
}

/// The counts per topic as QUEUE_STATS carries them.
fn queue_stats(waiting: Vec<(Option<TopicId>, usize)>) -> Vec<(Option<TopicId>, u16)> {
    waiting
        .into_iter()
        .take(MAX_TOPICS + 1)
        .map(|(topic, n)| (topic, u16::try_from(n).unwrap_or(u16::MAX)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{Bench, to};
    use crate::core::frame::Frame;

    #[test]
    fn a_newcomer_at_the_back_is_the_only_one_told_a_position() {
        let mut b = Bench::new();
        let (first, _) = b.client();
        let (second, _) = b.client();
        let (third, did) = b.client();
        let queued = |frames: Vec<Frame>| {
            frames
                .into_iter()
                .filter(|f| matches!(f, Frame::Queued { .. }))
                .collect::<Vec<_>>()
        };
        assert_eq!(queued(to(&did, first)), vec![]);
        assert_eq!(queued(to(&did, second)), vec![]);
        assert_eq!(
            queued(to(&did, third)),
            vec![Frame::Queued {
                position: 3,
                estimated_wait_secs: None
            }]
        );
    }
}
