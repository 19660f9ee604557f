//! The relay core under arbitrary input: bytes from several connections,
//! disconnects and time passing, in any order, with a router that answers
//! at once, late, or for two relays that share one queue (the first byte
//! says which). It must never panic.
#![no_main]

use std::time::{Duration, Instant};

use fluister::core::frame::EndReason;
use fluister::core::limits::{Limits, Service};
use fluister::core::relay::{ConnId, Credential, Relay};
use fluister::core::router::{LocalRouter, Router};
use fluister::core::{Departure, Now};
use fluister_proto::core::router::{Delayed, Linked};
use libfuzzer_sys::fuzz_target;
use rand_core::SeedableRng;

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut now = Now {
        mono: start,
        unix: 1_800_000_000,
    };
    let limits = Limits {
        pow_min_difficulty: 0,
        pow_max_difficulty: 0,
        ..Limits::default()
    };
    let Some((choice, mut rest)) = data.split_first() else {
        return;
    };
    let relay = |seed: u64, router: Box<dyn Router>| {
        let rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        Relay::with_router(limits.clone(), Service::default(), Box::new(rng), router, start)
    };
    let local = LocalRouter::new(limits.topic_fallback);
    let mut relays = match choice % 3 {
        0 => vec![relay(1, Box::new(local))],
        1 => {
            let delay = Duration::from_millis(u64::from(*choice) * 10);
            vec![relay(1, Box::new(Delayed::new(local, delay)))]
        }
        _ => {
            let latency = Duration::from_millis(u64::from(*choice));
            let linked = Linked::with_latency(limits.topic_fallback, latency);
            vec![
                relay(1, Box::new(linked.router(0))),
                relay(2, Box::new(linked.router(1))),
            ]
        }
    };
    let mut conns: Vec<(usize, ConnId)> = Vec::new();
    while let [op, arg, tail @ ..] = rest {
        rest = tail;
        let pick = |conns: &[(usize, ConnId)]| conns[*arg as usize % conns.len()];
        match op % 6 {
            0 => {
                let cred = if arg % 2 == 0 {
                    Credential::Anonymous
                } else {
                    Credential::Counsellor {
                        pseudonym: "Sam".into(),
                    }
                };
                let n = usize::from(*arg / 2) % relays.len();
                if let Ok(id) = relays[n].handle_connect(now, cred) {
                    conns.push((n, id));
                }
            }
            1 | 2 if !conns.is_empty() => {
                let (n, id) = pick(&conns);
                let len = (rest.len()).min(1 + *arg as usize * 5);
                relays[n].handle_data(now, id, &rest[..len]);
                rest = &rest[len..];
            }
            3 if !conns.is_empty() => {
                let (n, id) = pick(&conns);
                let departure = match arg % 4 {
                    0 => Departure::Lost,
                    1 => Departure::Left(EndReason::UserEnded),
                    2 => Departure::Left(EndReason::SecurityFailure),
                    _ => Departure::Left(EndReason::PeerDisconnected),
                };
                relays[n].handle_disconnect(now, id, departure);
            }
            4 if !conns.is_empty() => {
                let (n, id) = pick(&conns);
                relays[n].handle_finish(now, id);
            }
            _ => {
                // From milliseconds (answers between relays) to minutes
                // (resume windows, waits).
                now.advance(Duration::from_millis(u64::from(*arg).pow(2) * 4));
                for relay in &mut relays {
                    relay.handle_timeout(now);
                }
            }
        }
        // Each relay acts on what is due, what the other sent included.
        for _ in 0..4 {
            for relay in &mut relays {
                if relay.poll_timeout().is_some_and(|t| t <= now.mono) {
                    relay.handle_timeout(now);
                }
                while relay.poll_output().is_some() {}
                // The deadline index agrees with a scan of the core's tables.
                assert_eq!(relay.poll_timeout(), relay.poll_timeout_by_scan());
            }
        }
    }
});
