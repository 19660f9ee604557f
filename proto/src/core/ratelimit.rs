//! Abuse control that needs no identity (PROTOCOL.md §8.1): token buckets,
//! the proof-of-work puzzle and its load-driven difficulty, and a keyed
//! per-source limiter that forgets everything each epoch.
//!
//! All of it is pure: time and randomness are passed in. The relay core uses
//! [`TokenBucket`] per connection and for queue admissions, [`Pow`] for
//! anonymous admission; the shell uses [`KeyedLimiter`] on connection
//! attempts, handing it opaque source bytes that never leave it unkeyed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hkdf::hmac::{Hmac, Mac};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// A classic token bucket: `rate` tokens per second, at most `burst` saved.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        TokenBucket {
            rate: f64::from(rate_per_sec),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Takes `n` tokens if there are enough; false (and nothing taken) if not.
    pub fn take(&mut self, now: Instant, n: f64) -> bool {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// The earliest instant at which `n` tokens will be there.
    pub fn ready_at(&mut self, now: Instant, n: f64) -> Instant {
        self.refill(now);
        if self.tokens >= n || self.rate <= 0.0 {
            return now;
        }
        now + Duration::from_secs_f64((n - self.tokens) / self.rate)
    }
}

/// How long a proof-of-work challenge of `difficulty` bits stays valid
/// (PROTOCOL.md §8.1): 10 s for the network, plus six times the expected
/// solving time on the reference slow device ([`SLOW_DEVICE_HASHES_PER_SEC`]),
/// so that fewer than 1 in 400 of the slowest phones run out of time, while
/// a cheap challenge cannot be banked for later.
pub fn challenge_lifetime(difficulty: u8) -> Duration {
    let hashes = 2f64.powi(i32::from(difficulty.min(super::frame::MAX_POW_DIFFICULTY)));
    Duration::from_secs(10) + Duration::from_secs_f64(6.0 * hashes / SLOW_DEVICE_HASHES_PER_SEC)
}

/// Hashes per second of the reference solver in a slow phone's browser:
/// a sixth of what headless Chromium reaches on the project's 2-core
/// machines (about 0.6 million; PROTOCOL.md §8.1).
pub const SLOW_DEVICE_HASHES_PER_SEC: f64 = 100_000.0;

/// An opaque tag for a connection's source (its address or address block)
/// under the keyed limiter's current key; it cannot be turned back into an
/// address and means nothing after the key is replaced.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceTag(pub [u8; 16]);

impl std::fmt::Debug for SourceTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SourceTag(..)")
    }
}

/// The label hashed in front of every proof-of-work input.
pub const POW_LABEL: &[u8] = b"fluister pow v1";

/// Whether `solution` solves `challenge` at `difficulty` (PROTOCOL.md §8.1):
/// SHA-256(label || challenge || solution) starts with `difficulty` zero bits.
pub fn pow_valid(challenge: &[u8; 16], difficulty: u8, solution: &[u8; 8]) -> bool {
    let digest = Sha256::new()
        .chain_update(POW_LABEL)
        .chain_update(challenge)
        .chain_update(solution)
        .finalize();
    leading_zero_bits(&digest) >= u32::from(difficulty)
}

fn leading_zero_bits(bytes: &[u8]) -> u32 {
    let mut n = 0;
    for b in bytes {
        if *b == 0 {
            n += 8;
        } else {
            return n + b.leading_zeros();
        }
    }
    n
}

/// Finds a solution by counting up from zero (what clients do).
pub fn pow_solve(challenge: &[u8; 16], difficulty: u8) -> [u8; 8] {
    let mut counter: u64 = 0;
    loop {
        let candidate = counter.to_be_bytes();
        if pow_valid(challenge, difficulty, &candidate) {
            return candidate;
        }
        counter = counter.wrapping_add(1);
    }
}

/// The load part of the proof-of-work difficulty, driven by the rate of
/// solved JOINs (arrivals the sender paid for, so that nobody can raise the
/// price for everyone for free): each window with more arrivals than the
/// target raises it by one bit, each window with fewer than half the target
/// lowers it by one, within bounds.
#[derive(Debug, Clone)]
pub struct Pow {
    min: u8,
    max: u8,
    target_per_window: u32,
    difficulty: u8,
    window_start: Instant,
    arrivals: u32,
}

impl Pow {
    /// Length of one measuring window.
    pub const WINDOW: Duration = Duration::from_secs(1);

    pub fn new(min: u8, max: u8, target_per_sec: u32, now: Instant) -> Self {
        Pow {
            min,
            max: max.max(min),
            target_per_window: target_per_sec.max(1),
            difficulty: min,
            window_start: now,
            arrivals: 0,
        }
    }

    /// The difficulty in force now.
    pub fn difficulty(&self) -> u8 {
        self.difficulty
    }

    /// One anonymous arrival.
    pub fn record_arrival(&mut self, now: Instant) {
        self.tick(now);
        self.arrivals = self.arrivals.saturating_add(1);
    }

    /// Closes every window that has ended by `now` and adjusts.
    pub fn tick(&mut self, now: Instant) {
        while now.saturating_duration_since(self.window_start) >= Self::WINDOW {
            if self.arrivals > self.target_per_window {
                self.difficulty = (self.difficulty + 1).min(self.max);
            } else if self.arrivals < self.target_per_window / 2 {
                self.difficulty = self.difficulty.saturating_sub(1).max(self.min);
            }
            self.arrivals = 0;
            self.window_start += Self::WINDOW;
            // After a long quiet spell, one step per window is enough: skip
            // ahead without looping over every missed window.
            if self.difficulty == self.min
                && now.saturating_duration_since(self.window_start) >= Self::WINDOW
            {
                self.window_start = now;
            }
        }
    }

    /// When the difficulty may next change, if it can still fall or a
    /// window has arrivals to judge.
    pub fn next_tick(&self) -> Option<Instant> {
        (self.difficulty > self.min || self.arrivals > 0).then(|| self.window_start + Self::WINDOW)
    }
}

/// Counts attempts per source under a random key that lives only in memory,
/// and throws key and counts away every epoch. Sources are stored only as
/// truncated HMAC-SHA256 values, never raw.
pub struct KeyedLimiter {
    key: Zeroizing<[u8; 32]>,
    epoch: Duration,
    epoch_start: Instant,
    limit: u32,
    counts: HashMap<[u8; 16], u32>,
}

impl std::fmt::Debug for KeyedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("tracked", &self.counts.len())
            .finish_non_exhaustive()
    }
}

impl KeyedLimiter {
    pub fn new(
        limit_per_epoch: u32,
        epoch: Duration,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(key.as_mut());
        KeyedLimiter {
            key,
            epoch,
            epoch_start: now,
            limit: limit_per_epoch,
            counts: HashMap::new(),
        }
    }

    fn rotate_if_due(&mut self, now: Instant, rng: &mut (impl RngCore + CryptoRng)) {
        if now.saturating_duration_since(self.epoch_start) >= self.epoch {
            rng.fill_bytes(self.key.as_mut());
            self.counts = HashMap::new();
            self.epoch_start = now;
        }
    }

    /// Counts one attempt from `source`; its tag for this epoch, and false
    /// if it is over the limit.
    pub fn check(
        &mut self,
        source: &[u8],
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> (SourceTag, bool) {
        self.rotate_if_due(now, rng);
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(self.key.as_ref()) else {
            return (SourceTag([0; 16]), false);
        };
        mac.update(source);
        let digest = mac.finalize().into_bytes();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        let n = self.counts.entry(id).or_insert(0);
        *n = n.saturating_add(1);
        (SourceTag(id), *n <= self.limit)
    }

    /// As [`KeyedLimiter::check`], the verdict alone.
    pub fn allow(
        &mut self,
        source: &[u8],
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> bool {
        self.check(source, now, rng).1
    }

    /// Sources tracked in the current epoch (for tests and metrics).
    pub fn tracked(&mut self, now: Instant, rng: &mut (impl RngCore + CryptoRng)) -> usize {
        self.rotate_if_due(now, rng);
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any instant will do as the start of a virtual clock; the code under
    /// test never reads the clock itself.
    fn virtual_start() -> Instant {
        std::time::Instant::now()
    }
    use rand_core::OsRng;

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let t0 = virtual_start();
        let mut b = TokenBucket::new(2, 3, t0);
        assert!((0..3).all(|_| b.take(t0, 1.0)));
        assert!(!b.take(t0, 1.0));
        assert!(b.take(t0 + Duration::from_millis(500), 1.0));
        assert!(!b.take(t0 + Duration::from_millis(500), 1.0));
        assert!((0..3).all(|_| b.take(t0 + Duration::from_secs(100), 1.0)));
        assert!(!b.take(t0 + Duration::from_secs(100), 1.0));
    }

    #[test]
    fn proof_of_work_solutions_verify_and_others_do_not() {
        let challenge = [7u8; 16];
        let solution = pow_solve(&challenge, 12);
        assert!(pow_valid(&challenge, 12, &solution));
        assert!(!pow_valid(&[8u8; 16], 12, &solution) || !pow_valid(&[9u8; 16], 12, &solution));
        assert!(
            pow_valid(&challenge, 0, &[0; 8]),
            "difficulty 0 accepts anything"
        );
        assert_eq!(leading_zero_bits(&[0, 0x10, 0xff]), 11);
    }

    #[test]
    fn difficulty_rises_under_load_and_falls_after() {
        let t0 = virtual_start();
        let mut pow = Pow::new(4, 20, 10, t0);
        let mut t = t0;
        for _ in 0..5 {
            for _ in 0..50 {
                pow.record_arrival(t);
            }
            t += Pow::WINDOW;
            pow.tick(t);
        }
        assert_eq!(pow.difficulty(), 9);
        for _ in 0..3 {
            t += Pow::WINDOW;
            pow.tick(t);
        }
        assert_eq!(pow.difficulty(), 6);
        t += Duration::from_secs(3600);
        pow.tick(t);
        assert!(pow.difficulty() >= 4);
        for _ in 0..10 {
            t += Pow::WINDOW;
            pow.tick(t);
        }
        assert_eq!(pow.difficulty(), 4);
        assert_eq!(pow.next_tick(), None);
    }

    #[test]
    fn the_keyed_limiter_counts_per_source_and_forgets_each_epoch() {
        let t0 = virtual_start();
        let mut l = KeyedLimiter::new(2, Duration::from_secs(60), t0, &mut OsRng);
        assert!(l.allow(b"198.51.100.7", t0, &mut OsRng));
        assert!(l.allow(b"198.51.100.7", t0, &mut OsRng));
        assert!(!l.allow(b"198.51.100.7", t0, &mut OsRng));
        assert!(l.allow(b"203.0.113.9", t0, &mut OsRng));
        assert_eq!(l.tracked(t0, &mut OsRng), 2);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            l.tracked(later, &mut OsRng),
            0,
            "the state is empty after the epoch"
        );
        assert!(l.allow(b"198.51.100.7", later, &mut OsRng));
        assert!(!format!("{l:?}").contains("198"));
    }
}
