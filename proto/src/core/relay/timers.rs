//! The relay core's deadline index: for each key (a connection, a chat side
//! that is away, a place kept in the queue) the earliest instant at which
//! the core has work for it, kept sorted so that the next deadline is found
//! in O(log n) and the due keys without a scan.
//!
//! The core sets a key's deadline whenever what it holds for that key may
//! have changed; [`Deadlines::first`] is what [`Relay::poll_timeout`]
//! reports and [`Deadlines::due`] what [`Relay::handle_timeout`] visits:
//! deadlines of HELLO, JOIN, PROOF and the handshake, a wait that is over,
//! rent due, the topic fallback, queue heartbeats, a paused connection's
//! budget, and the resume windows.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

use super::*;

#[derive(Debug)]
pub(super) struct Deadlines<K> {
    sorted: BTreeSet<(Instant, K)>,
    by_key: HashMap<K, Instant>,
}

impl<K: Copy + Ord + Hash> Default for Deadlines<K> {
    fn default() -> Self {
        Deadlines {
            sorted: BTreeSet::new(),
            by_key: HashMap::new(),
        }
    }
}

impl<K: Copy + Ord + Hash> Deadlines<K> {
    /// Sets (or, with `None`, clears) the deadline of `key`.
    pub(super) fn set(&mut self, key: K, at: Option<Instant>) {
        let before = match at {
            Some(at) => self.by_key.insert(key, at),
            None => self.by_key.remove(&key),
        };
        if before == at {
            return;
        }
        if let Some(before) = before {
            self.sorted.remove(&(before, key));
        }
        if let Some(at) = at {
            self.sorted.insert((at, key));
        }
    }

    /// The earliest deadline.
    pub(super) fn first(&self) -> Option<Instant> {
        self.sorted.first().map(|(at, _)| *at)
    }

    /// The keys whose deadline is at or before `now`, earliest first.
    pub(super) fn due(&self, now: Instant) -> Vec<K> {
        self.sorted
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, key)| *key)
            .collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.sorted.len()
    }
}

impl Relay {
    /// Acts on every deadline at or before `now`.
    pub fn handle_timeout(&mut self, now: Now) {
        self.pow.tick(now.mono);
        let mut expired = Vec::new();
        let mut unstarted = Vec::new();
        for h in self.index.detached.due(now.mono) {
            match self.detached.get(&h) {
                Some(d) if d.deadline <= now.mono => expired.push(h),
                Some(_) => unstarted.push(h),
                None => {}
            }
        }
        expired.sort();
        unstarted.sort();
        for h in expired {
            self.expire(h);
        }
        for h in unstarted {
            self.undo_unstarted_pairing(now, h);
        }
        for ticket in self.index.away_from_queue.due(now.mono) {
            self.remove_away(&ticket);
        }

        let mut late = Vec::new();
        let mut wait_over = Vec::new();
        let mut rent_due = Vec::new();
        let mut rent_unpaid = Vec::new();
        let mut unblocked = Vec::new();
        let mut due = self.index.conns.due(now.mono);
        due.sort();
        for id in due {
            self.index.touched.push(id);
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.blocked_until.is_some_and(|t| t <= now.mono) {
                unblocked.push(id);
            }
            if c.links
                .values()
                .any(|l| l.handshake_due.is_some_and(|t| t <= now.mono))
            {
                late.push(id);
            }
            match &mut c.state {
                State::AwaitingHello { deadline }
                | State::Client(ClientStage::Welcomed { deadline, .. })
                    if *deadline <= now.mono =>
                {
                    late.push(id)
                }
                State::Client(ClientStage::Waiting(w)) => {
                    if w.deadline <= now.mono {
                        wait_over.push(id);
                    } else if w.rent.owed.is_some_and(|(_, t)| t <= now.mono) {
                        rent_unpaid.push(id);
                    } else if w.rent.owed.is_none() && w.rent.next_at.is_some_and(|t| t <= now.mono)
                    {
                        rent_due.push(id);
                    }
                    if w.next_update <= now.mono {
                        // Forces a QUEUED when the router next tells this
                        // client its place, changed or not. Its answer may
                        // come later: the deadline moves on meanwhile.
                        w.last_sent = None;
                        w.next_update = now.mono + Limits::QUEUE_UPDATE_INTERVAL;
                        self.index.tell_whole_queue = true;
                    }
                }
                _ => {}
            }
        }
        late.sort();
        for id in unblocked {
            self.drain_backlog(now, id, true);
        }
        // A client too late for HELLO, JOIN, PROOF or its handshake: its
        // pairing, if any, ends for the counsellor, who is free again.
        for id in late.into_iter().chain(rent_unpaid) {
            self.close(id, CloseCode::Timeout, true);
        }
        for id in wait_over {
            self.send(
                id,
                FromRelay::Unavailable {
                    reason: Unavailable::WaitExceeded,
                    next_open: None,
                },
            );
            self.close(id, CloseCode::NoError, true);
        }
        for id in rent_due {
            self.charge_rent(now, id);
        }
        self.release_queue_stats(now);
        self.end_event(now);
    }

    /// The earliest instant at which [`Relay::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.index.conns.first(),
            self.index.detached.first(),
            self.index.away_from_queue.first(),
            self.pow.next_tick(),
            self.router.poll_timeout(),
            self.held_queue_stats_due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// [`Relay::poll_timeout`] worked out by a scan of every table instead
    /// of from the deadline index: tests check that the two agree.
    #[doc(hidden)]
    pub fn poll_timeout_by_scan(&self) -> Option<Instant> {
        let conns = self.conns.values().filter_map(Conn::next_deadline).min();
        let resumes = self
            .detached
            .values()
            .map(Detached::next_deadline)
            .chain(self.away_from_queue.values().map(|a| a.until))
            .min();
        [
            conns,
            self.pow.next_tick(),
            resumes,
            self.router.poll_timeout(),
            self.held_queue_stats_due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::Bench;
    use super::*;
    use std::time::Duration;

    #[test]
    fn poll_timeout_follows_each_connection_through_its_deadlines() {
        let mut b = Bench::new();
        assert_eq!(b.relay.poll_timeout(), None);
        let y = b.connect(Credential::Anonymous);
        let hello_due = b.now.mono + Limits::default().hello_timeout;
        assert_eq!(b.relay.poll_timeout(), Some(hello_due));
        b.hello(y, Role::Client);
        let join_due = b.relay.poll_timeout();
        assert!(join_due.is_some_and(|t| t != hello_due && t > b.now.mono));
        b.relay
            .handle_disconnect(b.now, y, Departure::Left(EndReason::UserEnded));
        b.drain();
        assert_eq!(b.relay.poll_timeout(), None);
    }

    #[test]
    fn the_first_deadline_follows_every_change() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut d = Deadlines::default();
        assert_eq!(d.first(), None);
        d.set(1u8, Some(at(5)));
        d.set(2, Some(at(3)));
        d.set(3, Some(at(3)));
        assert_eq!(d.first(), Some(at(3)));
        assert_eq!(d.due(at(3)), vec![2, 3]);
        d.set(2, Some(at(9)));
        d.set(3, None);
        assert_eq!(d.first(), Some(at(5)));
        assert_eq!(d.due(at(8)), vec![1]);
        assert_eq!(d.due(at(9)), vec![1, 2]);
        d.set(1, Some(at(5)));
        assert_eq!(d.len(), 2, "setting the same deadline again adds nothing");
        d.set(1, None);
        d.set(2, None);
        assert_eq!(d.first(), None);
    }
}
