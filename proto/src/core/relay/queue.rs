//! The queue: JOIN with its proof of work, tickets (JOINED), the waiting
//! state and its rent in a crowded queue (CHALLENGE, PROOF), the pairing
//! pass that asks the [`PairingBackend`] for pairs, and what waiting clients
//! (QUEUED) and counsellors (QUEUE_STATS) hear of it. The wait estimate is
//! one running average of the time between pairings.

use super::*;

/// Estimates waits from the recent pace of pairings: a running average of
/// the time between two pairings, and nothing else.
#[derive(Debug, Default)]
pub(super) struct WaitEstimate {
    average_gap_secs: Option<f64>,
    last_pairing: Option<Instant>,
}

impl WaitEstimate {
    /// Weight of the newest gap in the running average.
    const WEIGHT: f64 = 0.3;

    fn record_pairing(&mut self, now: Instant) {
        if let Some(last) = self.last_pairing {
            let gap = now.saturating_duration_since(last).as_secs_f64();
            self.average_gap_secs = Some(match self.average_gap_secs {
                Some(avg) => Self::WEIGHT * gap + (1.0 - Self::WEIGHT) * avg,
                None => gap,
            });
        }
        self.last_pairing = Some(now);
    }

    /// At least a second per place ahead: an estimate of 0 would promise
    /// what nobody can keep.
    fn for_position(&self, position: u32) -> Option<u32> {
        let secs = self.average_gap_secs? * f64::from(position);
        Some(secs.round().clamp(1.0, f64::from(u32::MAX - 1)) as u32)
    }
}

impl<P: PairingBackend> Relay<P> {
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
        let waiting = self.pairing.newcomers_waiting();
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
                &Frame::Unavailable {
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
        if over_source_limit
            || !self.admissions.take(now.mono, 1.0)
            || self.pairing.enqueue(conn, request).is_err()
        {
            self.send(
                conn,
                &Frame::Unavailable {
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
        self.issue_ticket(conn);
        self.set_waiting(now, conn, request);
        self.pair_waiting(now);
        Ok(())
    }

    /// Places in the queue held by connections from `source`, waiting or
    /// away, in this epoch of the shell's source key.
    pub(super) fn places_held_by(&self, source: SourceTag) -> usize {
        let away = self.index.away_per_source.get(&source).copied();
        self.pairing.waiting_from(source) + away.unwrap_or(0)
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
            self.send(conn, &Frame::Challenge { pow });
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
        self.send(conn, &Frame::Joined { resume: ticket });
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
    /// and since when it waits): its wait is over `max_wait` after that, a
    /// topic falls back `topic_fallback` after that, and newcomers pay rent
    /// in a crowded queue while clients handed back by a counsellor do not.
    pub(super) fn waiting_for(&self, now: Now, request: Request) -> Waiting {
        Waiting {
            request,
            since: request.since,
            deadline: request.since + self.limits.max_wait,
            fallback_at: request
                .topic
                .map(|_| request.since + self.limits.topic_fallback)
                .filter(|at| *at > now.mono),
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

    /// Pairs while the backend finds pairs, then tells every waiting client
    /// whose position or estimate changed (or is due an update) and every
    /// counsellor whose view of the queue changed.
    pub(super) fn pair_waiting(&mut self, now: Now) {
        let mut everyone = std::mem::take(&mut self.index.tell_whole_queue);
        while let Some((client, counsellor)) =
            self.pairing.next_pair(now.mono, self.limits.topic_fallback)
        {
            // The pace of pairings changed: so did every estimate.
            self.estimate.record_pairing(now.mono);
            self.start_chat(now, client, counsellor);
            everyone = true;
        }
        for moved in self.pairing.take_moved(everyone) {
            let (position, client, request) = (moved.position, moved.client, moved.request);
            // Nobody signed in who could take this client: no estimate.
            let estimate = self
                .pairing
                .could_serve(&request)
                .then(|| self.estimate.for_position(position))
                .flatten();
            let heartbeat_by = now.mono + HEARTBEAT_SLACK;
            let due = match self.conns.get_mut(&client) {
                Some(Conn {
                    state: State::Client(ClientStage::Waiting(w)),
                    ..
                }) if w.last_sent != Some((position, estimate))
                    || (everyone && w.next_update <= heartbeat_by) =>
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
                    &Frame::Queued {
                        position,
                        estimated_wait_secs: estimate,
                    },
                );
            }
        }
        self.send_queue_stats(None);
    }

    /// Sends QUEUE_STATS to counsellors whose view changed (or to `only`).
    pub(super) fn send_queue_stats(&mut self, only: Option<ConnId>) {
        let changes = self.pairing.changes();
        if only.is_none() && self.index.queue_stats_at == Some(changes) {
            // Nobody joined or left since every counsellor was told.
            return;
        }
        let stats: Vec<(Option<TopicId>, u16)> = self
            .pairing
            .waiting_per_topic()
            .into_iter()
            .take(MAX_TOPICS + 1)
            .map(|(topic, n)| (topic, u16::try_from(n).unwrap_or(u16::MAX)))
            .collect();
        let told = self.index.queue_stats.as_ref() == Some(&stats);
        match only {
            // Every counsellor heard these counts already.
            None if told => {
                self.index.queue_stats_at = Some(changes);
                return;
            }
            None => {
                self.index.queue_stats = Some(stats.clone());
                self.index.queue_stats_at = Some(changes);
            }
            // One counsellor hears counts the others have not.
            Some(_) if !told => {
                self.index.queue_stats = None;
                self.index.queue_stats_at = None;
            }
            Some(_) => {}
        }
        let mut ids: Vec<ConnId> = match only {
            Some(id) => vec![id],
            None => self.by_name.values().flatten().copied().collect(),
        };
        ids.sort();
        for id in ids {
            let changed = match self.conns.get_mut(&id) {
                Some(Conn {
                    state: State::Counsellor(s),
                    ..
                }) if only.is_some() || s.last_stats.as_ref() != Some(&stats) => {
                    s.last_stats = Some(stats.clone());
                    true
                }
                _ => false,
            };
            if changed {
                self.send(
                    id,
                    &Frame::QueueStats {
                        waiting: stats.clone(),
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{Bench, to};
    use super::WaitEstimate;
    use crate::core::frame::Frame;
    use std::time::{Duration, Instant};

    #[test]
    fn the_estimate_needs_two_pairings_and_promises_at_least_a_second() {
        let t0 = Instant::now();
        let mut e = WaitEstimate::default();
        assert_eq!(e.for_position(3), None);
        e.record_pairing(t0);
        assert_eq!(e.for_position(3), None, "one pairing is no pace yet");
        e.record_pairing(t0 + Duration::from_secs(60));
        assert_eq!(e.for_position(3), Some(180));
        e.record_pairing(t0 + Duration::from_secs(60));
        // 0.3 × 0 s + 0.7 × 60 s = 42 s a place.
        assert_eq!(e.for_position(1), Some(42));
        let mut quick = WaitEstimate::default();
        quick.record_pairing(t0);
        quick.record_pairing(t0);
        assert_eq!(quick.for_position(1), Some(1), "never 0 s");
    }

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
