//! Who leads the cluster's queue: the leader lease as a state machine,
//! without I/O (proto/CLUSTER.md, "The lease").
//!
//! The lease is one key in a key-value store whose entries expire `ttl`
//! after they were last written (a JetStream bucket with `max_age`). A
//! relay becomes leader by creating the key (which succeeds only while it
//! is absent) and stays leader by updating it, each time expecting the
//! revision it last wrote. The revision of the create is the leader's
//! **epoch**: every event it sends carries it, and relays drop events
//! from older epochs.
//!
//! The shell asks [`Lease::poll_action`] what to do now (try to create,
//! renew, or nothing), does it, and reports the outcome with
//! [`Lease::on_written`] or [`Lease::on_refused`]; [`Lease::poll_timeout`]
//! says when to ask again. [`Lease::epoch`] is the epoch this relay may
//! lead under now, if any. A leader whose renewals have not succeeded
//! for `step_down_after` stops leading at once, before its key can
//! expire at `ttl`, so that two relays never lead at the same time: the
//! next leader can only create the key after it has expired.
//!
//! Writes can be slow or lost: an outcome reported after another action
//! was asked for is ignored, and a write asked for counts as failed if no
//! outcome comes within `write_timeout`.

use std::time::{Duration, Instant};

/// The lease's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimes {
    /// How long the key lives after its last write.
    pub ttl: Duration,
    /// How often the leader renews, and a follower tries to take over.
    pub renew_every: Duration,
    /// A leader that has not renewed for this long stops leading.
    pub step_down_after: Duration,
    /// A write with no outcome after this long has failed.
    pub write_timeout: Duration,
}

impl Default for LeaseTimes {
    fn default() -> Self {
        LeaseTimes {
            ttl: Duration::from_secs(6),
            renew_every: Duration::from_secs(2),
            step_down_after: Duration::from_secs(4),
            write_timeout: Duration::from_secs(1),
        }
    }
}

impl LeaseTimes {
    /// Whether these times keep two leaders apart: a leader stops before
    /// its key expires, and renews often enough to keep it.
    pub fn is_safe(&self) -> bool {
        self.step_down_after < self.ttl
            && self.renew_every + self.write_timeout <= self.step_down_after
            && !self.renew_every.is_zero()
    }
}

/// What the shell should write now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAction {
    /// Create the key, only if it is absent.
    Create,
    /// Update the key, only if its revision is still `revision`.
    Renew { revision: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not leading; the next attempt to take over at `next_try`.
    Following { next_try: Instant },
    /// Leading under `epoch`; the key was last written at `renewed` with
    /// `revision`, and is renewed next at `next_renew`.
    Leading {
        epoch: u64,
        revision: u64,
        renewed: Instant,
        next_renew: Instant,
    },
}

/// One relay's view of the lease.
#[derive(Debug, Clone)]
pub struct Lease {
    times: LeaseTimes,
    state: State,
    /// The write under way: what it was, and when it was asked for.
    pending: Option<(LeaseAction, Instant)>,
}

impl Lease {
    /// A relay that starts following, and tries to lead at once.
    pub fn new(times: LeaseTimes, now: Instant) -> Lease {
        Lease {
            times,
            state: State::Following { next_try: now },
            pending: None,
        }
    }

    /// The epoch this relay leads under now, if it leads.
    pub fn epoch(&self, now: Instant) -> Option<u64> {
        match self.state {
            State::Leading { epoch, renewed, .. }
                if now.saturating_duration_since(renewed) < self.times.step_down_after =>
            {
                Some(epoch)
            }
            _ => None,
        }
    }

    /// What to write now, if anything. Asked again after every outcome
    /// and at [`Lease::poll_timeout`].
    pub fn poll_action(&mut self, now: Instant) -> Option<LeaseAction> {
        self.expire(now);
        if self.pending.is_some() {
            return None;
        }
        let action = match self.state {
            State::Following { next_try } if now >= next_try => LeaseAction::Create,
            State::Leading {
                revision,
                next_renew,
                ..
            } if now >= next_renew => LeaseAction::Renew { revision },
            _ => return None,
        };
        self.pending = Some((action, now));
        Some(action)
    }

    /// The write asked for succeeded; the key now has `revision`.
    pub fn on_written(&mut self, now: Instant, action: LeaseAction, revision: u64) {
        let Some(asked) = self.take_pending(action) else {
            return;
        };
        // Counted from when it was asked: the store wrote it (and started
        // the key's time to live) at that instant or later.
        let renewed = asked;
        let next_renew = asked + self.times.renew_every;
        self.state = match (action, self.state) {
            (LeaseAction::Create, _) => State::Leading {
                epoch: revision,
                revision,
                renewed,
                next_renew,
            },
            (LeaseAction::Renew { .. }, State::Leading { epoch, .. }) => State::Leading {
                epoch,
                revision,
                renewed,
                next_renew,
            },
            (LeaseAction::Renew { .. }, State::Following { .. }) => self.following(now),
        };
    }

    /// The write asked for was refused (the key exists, or its revision
    /// moved on: another relay leads) or failed. Try again later.
    pub fn on_refused(&mut self, now: Instant, action: LeaseAction) {
        if self.take_pending(action).is_some() {
            self.state = self.following(now);
        }
    }

    /// When to call [`Lease::poll_action`] (or look at
    /// [`Lease::epoch`]) again.
    pub fn poll_timeout(&self) -> Instant {
        if let Some((_, asked)) = self.pending {
            let timeout = asked + self.times.write_timeout;
            return match self.state {
                State::Leading { renewed, .. } => timeout.min(renewed + self.times.step_down_after),
                State::Following { .. } => timeout,
            };
        }
        match self.state {
            State::Following { next_try } => next_try,
            State::Leading {
                renewed,
                next_renew,
                ..
            } => next_renew.min(renewed + self.times.step_down_after),
        }
    }

    /// The write under way, if it is `action`: when it was asked for.
    fn take_pending(&mut self, action: LeaseAction) -> Option<Instant> {
        match self.pending {
            Some((pending, asked)) if pending == action => {
                self.pending = None;
                Some(asked)
            }
            _ => None,
        }
    }

    fn following(&self, now: Instant) -> State {
        State::Following {
            next_try: now + self.times.renew_every,
        }
    }

    /// A write that took too long has failed (a follower tries again
    /// later, a leader at once); a leader that could not renew in time
    /// follows.
    fn expire(&mut self, now: Instant) {
        if let Some((_, asked)) = self.pending
            && now >= asked + self.times.write_timeout
        {
            self.pending = None;
            if let State::Following { .. } = self.state {
                self.state = self.following(now);
            }
        }
        if let State::Leading { renewed, .. } = self.state
            && now.saturating_duration_since(renewed) >= self.times.step_down_after
        {
            self.pending = None;
            self.state = self.following(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key-value store on a virtual clock: the key's revision, the
    /// instant of its last write, and its TTL.
    struct Store {
        key: Option<(u64, Instant)>,
        last_revision: u64,
        ttl: Duration,
    }

    impl Store {
        fn new(ttl: Duration) -> Store {
            Store {
                key: None,
                last_revision: 0,
                ttl,
            }
        }

        fn expire(&mut self, now: Instant) {
            if self.key.is_some_and(|(_, at)| now >= at + self.ttl) {
                self.key = None;
            }
        }

        fn write(&mut self, now: Instant, action: LeaseAction) -> Option<u64> {
            self.expire(now);
            let ok = match (action, self.key) {
                (LeaseAction::Create, None) => true,
                (LeaseAction::Renew { revision }, Some((current, _))) => revision == current,
                _ => false,
            };
            if !ok {
                return None;
            }
            self.last_revision += 1;
            self.key = Some((self.last_revision, now));
            Some(self.last_revision)
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_default_times_are_safe_and_unsafe_ones_are_told() {
        assert!(LeaseTimes::default().is_safe());
        let late = LeaseTimes {
            step_down_after: Duration::from_secs(7),
            ..LeaseTimes::default()
        };
        assert!(!late.is_safe());
    }

    #[test]
    fn one_relay_leads_and_keeps_leading_while_it_renews() {
        let t0 = Instant::now();
        let mut store = Store::new(LeaseTimes::default().ttl);
        let mut a = Lease::new(LeaseTimes::default(), t0);
        let mut b = Lease::new(LeaseTimes::default(), t0);
        for lease in [&mut a, &mut b] {
            let action = lease.poll_action(t0).unwrap();
            match store.write(t0, action) {
                Some(revision) => lease.on_written(t0, action, revision),
                None => lease.on_refused(t0, action),
            }
        }
        assert_eq!(a.epoch(t0), Some(1));
        assert_eq!(b.epoch(t0), None);
        let mut now = t0;
        for _ in 0..100 {
            now += 100 * MS;
            for lease in [&mut a, &mut b] {
                if let Some(action) = lease.poll_action(now) {
                    match store.write(now, action) {
                        Some(revision) => lease.on_written(now, action, revision),
                        None => lease.on_refused(now, action),
                    }
                }
            }
            assert_eq!(a.epoch(now), Some(1), "at {:?}", now - t0);
            assert_eq!(b.epoch(now), None);
        }
    }

    /// Three relays whose writes fail or come back late at random: at no
    /// instant do two lead, and someone leads again soon after a leader
    /// stops renewing.
    #[test]
    fn never_two_leaders_whatever_the_writes_do() {
        let times = LeaseTimes::default();
        let t0 = Instant::now();
        let mut store = Store::new(times.ttl);
        let mut leases: Vec<Lease> = (0..3).map(|_| Lease::new(times, t0)).collect();
        // Writes in flight: relay, action, when the outcome arrives, outcome.
        let mut flying: Vec<(usize, LeaseAction, Instant, Option<u64>)> = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut random = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut now = t0;
        let mut epochs_seen = Vec::new();
        let (mut ticks, mut led) = (0usize, 0usize);
        // Whoever leads at 20 s is cut off from the store for 20 s: its
        // writes vanish.
        let cut = (t0 + Duration::from_secs(20), t0 + Duration::from_secs(40));
        let mut cut_relay = None;
        for _ in 0..6000 {
            now += 20 * MS;
            // Outcomes that arrive now.
            let (due, rest): (Vec<_>, Vec<_>) = flying.into_iter().partition(|f| f.2 <= now);
            flying = rest;
            for (i, action, _, outcome) in due {
                match outcome {
                    Some(revision) => leases[i].on_written(now, action, revision),
                    None => leases[i].on_refused(now, action),
                }
            }
            if now >= cut.0 && cut_relay.is_none() {
                cut_relay = leases.iter().position(|l| l.epoch(now).is_some());
                assert!(cut_relay.is_some(), "nobody leads at 20 s");
            }
            for (i, lease) in leases.iter_mut().enumerate() {
                if let Some(action) = lease.poll_action(now) {
                    let cut_off = cut_relay == Some(i) && now < cut.1;
                    if cut_off || random(20) == 0 {
                        continue; // lost: the lease times it out
                    }
                    // The store applies it now; the answer takes up to
                    // 0.3 s to come back, and one in ten up to 1.5 s (past
                    // the write timeout at times).
                    let late = random(10) == 0;
                    let delay = MS * random(if late { 1500 } else { 300 }) as u32;
                    let outcome = store.write(now, action);
                    flying.push((i, action, now + delay, outcome));
                }
            }
            let leaders: Vec<u64> = leases.iter().filter_map(|l| l.epoch(now)).collect();
            assert!(
                leaders.len() <= 1,
                "two leaders at {:?}: {leaders:?}",
                now - t0
            );
            ticks += 1;
            led += leaders.len();
            if let Some(&epoch) = leaders.first()
                && epochs_seen.last() != Some(&epoch)
            {
                assert!(epochs_seen.last().is_none_or(|last| *last < epoch));
                epochs_seen.push(epoch);
            }
        }
        // The relay cut off was replaced; someone led for most of the run.
        assert!(epochs_seen.len() >= 2, "{epochs_seen:?}");
        assert!(led * 10 >= ticks * 7, "led {led} of {ticks} ticks");
    }

    #[test]
    fn a_leader_that_cannot_renew_steps_down_before_its_key_expires() {
        let times = LeaseTimes::default();
        let t0 = Instant::now();
        let mut store = Store::new(times.ttl);
        let mut a = Lease::new(times, t0);
        let action = a.poll_action(t0).unwrap();
        let revision = store.write(t0, action).unwrap();
        a.on_written(t0, action, revision);
        // From now on every renewal is lost.
        let mut now = t0;
        while a.epoch(now).is_some() {
            now += 10 * MS;
            let _ = a.poll_action(now);
        }
        assert!(
            now - t0 <= times.step_down_after + 10 * MS,
            "{:?}",
            now - t0
        );
        assert!(now - t0 < times.ttl);
        // Another relay takes over once the key has expired.
        let mut b = Lease::new(times, now);
        loop {
            now += 10 * MS;
            if let Some(action) = b.poll_action(now) {
                match store.write(now, action) {
                    Some(revision) => b.on_written(now, action, revision),
                    None => b.on_refused(now, action),
                }
            }
            if b.epoch(now).is_some() {
                break;
            }
        }
        assert!(now - t0 >= times.ttl);
        assert!(
            now - t0 <= times.ttl + times.renew_every + 20 * MS,
            "{:?}",
            now - t0
        );
        assert!(b.epoch(now).unwrap() > 1);
    }
}
