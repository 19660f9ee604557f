//! The relay core under arbitrary input: bytes from several connections,
//! disconnects and time passing, in any order, with a router that answers
//! at once or late (the first byte says which). It must never panic.
#![no_main]

use std::time::{Duration, Instant};

use fluister::core::frame::EndReason;
use fluister::core::{Departure, Now};
use fluister::core::limits::{Limits, Service};
use fluister::core::relay::{Credential, Relay};
use fluister::core::router::{LocalRouter, Router};
use fluister_proto::core::router::Delayed;
use libfuzzer_sys::fuzz_target;
use rand_core::SeedableRng;

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut now = Now {
        mono: start,
        unix: 1_800_000_000,
    };
    let rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let limits = Limits {
        pow_min_difficulty: 0,
        pow_max_difficulty: 0,
        ..Limits::default()
    };
    let Some((choice, mut rest)) = data.split_first() else {
        return;
    };
    let local = LocalRouter::new(limits.topic_fallback);
    let router: Box<dyn Router> = match choice % 2 {
        0 => Box::new(local),
        _ => Box::new(Delayed::new(local, Duration::from_millis(u64::from(*choice) * 10))),
    };
    let mut relay = Relay::with_router(limits, Service::default(), Box::new(rng), router, start);
    let mut conns = Vec::new();
    while let [op, arg, tail @ ..] = rest {
        rest = tail;
        match op % 6 {
            0 => {
                let cred = if arg % 2 == 0 {
                    Credential::Anonymous
                } else {
                    Credential::Counsellor {
                        pseudonym: "Sam".into(),
                    }
                };
                if let Ok(id) = relay.handle_connect(now, cred) {
                    conns.push(id);
                }
            }
            1 | 2 if !conns.is_empty() => {
                let id = conns[*arg as usize % conns.len()];
                let n = (rest.len()).min(1 + *arg as usize * 5);
                relay.handle_data(now, id, &rest[..n]);
                rest = &rest[n..];
            }
            3 if !conns.is_empty() => {
                let id = conns[*arg as usize % conns.len()];
                let departure = match arg % 4 {
                    0 => Departure::Lost,
                    1 => Departure::Left(EndReason::UserEnded),
                    2 => Departure::Left(EndReason::SecurityFailure),
                    _ => Departure::Left(EndReason::PeerDisconnected),
                };
                relay.handle_disconnect(now, id, departure);
            }
            4 if !conns.is_empty() => {
                let id = conns[*arg as usize % conns.len()];
                relay.handle_finish(now, id);
            }
            _ => {
                now.advance(Duration::from_secs(u64::from(*arg)));
                relay.handle_timeout(now);
            }
        }
        while relay.poll_output().is_some() {}
        // The deadline index agrees with a scan of the core's tables.
        assert_eq!(relay.poll_timeout(), relay.poll_timeout_by_scan());
    }
});
