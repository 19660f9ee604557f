//! The relay core's deadline index: for each key (a connection, a chat side
//! that is away, a place kept in the queue) the earliest instant at which
//! the core has work for it, kept sorted so that the next deadline is found
//! in O(log n) and the due keys without a scan.
//!
//! The core sets a key's deadline whenever what it holds for that key may
//! have changed; [`Deadlines::first`] is what `poll_timeout` reports and
//! [`Deadlines::due`] what `handle_timeout` visits.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Instant;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
