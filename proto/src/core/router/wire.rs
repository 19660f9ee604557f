//! The routing seam's messages as bytes, for a router whose relays run in
//! different processes (proto/CLUSTER.md): [`encode`] and [`decode`] turn
//! any of [`RouteCommand`], [`RouteEvent`] and [`PeerMessage`] (or a
//! batch of them) into postcard bytes and back.
//!
//! An [`Instant`] means something only in the process that took it, so on
//! the wire it is the signed number of milliseconds from the moment of
//! encoding, and becomes an instant again relative to the moment of
//! decoding. The time a message spends between the two is lost, which is
//! a millisecond on a LAN. `encode` and `decode` set that moment for the
//! thread while they run; an instant serialised any other way is an
//! error, never a wrong time.
//!
//! What leaves the process is only what the seam already carries: no
//! source tag (a relay's keyed hash of an address, meaningless elsewhere:
//! it is left out and arrives as `None`), no capability or ticket (only
//! their hashes), and FORWARD blobs as the 1,039 opaque bytes they are.
//!
//! [`RouteCommand`]: super::RouteCommand
//! [`RouteEvent`]: super::RouteEvent
//! [`PeerMessage`]: super::PeerMessage

use std::cell::Cell;
use std::time::{Duration, Instant};

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::core::frame::{BLOB_LEN, Blob, Language, PairingId, TopicId};
use crate::core::pairing::ConnId;

/// Bytes that are not a message of the expected type.
#[derive(Debug, Error)]
#[error("not a routing message: {0}")]
pub struct WireError(String);

thread_local! {
    /// The moment instants are counted from, while `encode` or `decode` runs.
    static MOMENT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Sets the moment for the thread while `f` runs.
fn at_moment<T>(now: Instant, f: impl FnOnce() -> T) -> T {
    let before = MOMENT.with(|m| m.replace(Some(now)));
    let out = f();
    MOMENT.with(|m| m.set(before));
    out
}

/// `value` as bytes, its instants counted from `now`.
pub fn encode<T: Serialize>(now: Instant, value: &T) -> Result<Vec<u8>, WireError> {
    at_moment(now, || postcard::to_stdvec(value)).map_err(|e| WireError(e.to_string()))
}

/// A `T` from bytes, its instants counted from `now`.
pub fn decode<T: DeserializeOwned>(now: Instant, bytes: &[u8]) -> Result<T, WireError> {
    at_moment(now, || postcard::from_bytes(bytes)).map_err(|e| WireError(e.to_string()))
}

/// Largest offset carried: a day, far beyond any deadline of the seam.
const MAX_OFFSET_MS: i64 = 86_400_000;

/// `#[serde(with = "instant")]`: an instant as milliseconds from the moment.
pub(crate) mod instant {
    use super::*;

    pub fn serialize<S: Serializer>(at: &Instant, s: S) -> Result<S::Ok, S::Error> {
        let Some(now) = MOMENT.with(Cell::get) else {
            return Err(serde::ser::Error::custom("an instant outside wire::encode"));
        };
        let ms = if *at >= now {
            i64::try_from(at.duration_since(now).as_millis()).unwrap_or(i64::MAX)
        } else {
            -i64::try_from(now.duration_since(*at).as_millis()).unwrap_or(i64::MAX)
        };
        ms.clamp(-MAX_OFFSET_MS, MAX_OFFSET_MS).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Instant, D::Error> {
        let ms = i64::deserialize(d)?.clamp(-MAX_OFFSET_MS, MAX_OFFSET_MS);
        let Some(now) = MOMENT.with(Cell::get) else {
            return Err(D::Error::custom("an instant outside wire::decode"));
        };
        let offset = Duration::from_millis(ms.unsigned_abs());
        Ok(if ms >= 0 {
            now + offset
        } else {
            // An instant before the process's clock began reads as now.
            now.checked_sub(offset).unwrap_or(now)
        })
    }
}

/// `#[serde(with = "optional_instant")]`.
pub(crate) mod optional_instant {
    use super::*;

    #[derive(Serialize, Deserialize)]
    struct At(#[serde(with = "instant")] Instant);

    pub fn serialize<S: Serializer>(at: &Option<Instant>, s: S) -> Result<S::Ok, S::Error> {
        at.map(At).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Instant>, D::Error> {
        Ok(Option::<At>::deserialize(d)?.map(|At(at)| at))
    }
}

impl Serialize for TopicId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

impl<'de> Deserialize<'de> for TopicId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        TopicId::new(u16::deserialize(d)?).ok_or_else(|| D::Error::custom("topic 0"))
    }
}

impl Serialize for Language {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_str().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Language {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Language::parse(&text).ok_or_else(|| D::Error::custom("not a language code"))
    }
}

impl Serialize for PairingId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PairingId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(PairingId(<[u8; 16]>::deserialize(d)?))
    }
}

impl Serialize for ConnId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ConnId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ConnId(u64::deserialize(d)?))
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.as_bytes())
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{BLOB_LEN} bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Blob::from_slice(v).ok_or_else(|| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        Claimant, Handed, HandedSide, PeerMessage, RouteCommand, RouteEvent, SideKey,
    };
    use super::*;
    use crate::core::frame::{EndReason, Role};
    use crate::core::pairing::{Offer, Request};
    use crate::core::ratelimit::SourceTag;

    fn side(role: Role) -> SideKey {
        SideKey {
            pairing: PairingId([7; 16]),
            role,
        }
    }

    #[test]
    fn every_kind_of_message_comes_back_as_it_went_with_its_instants_moved_to_the_new_moment() {
        let sent = Instant::now() + Duration::from_secs(100);
        let request = Request {
            topic: TopicId::new(3),
            language: Language::parse("nl"),
            since: sent - Duration::from_secs(30),
            turn: 12,
            priority: true,
            source: None,
        };
        let commands = vec![
            RouteCommand::Enqueue {
                client: ConnId(5),
                request,
            },
            RouteCommand::Offer {
                counsellor: ConnId(6),
                offer: Offer {
                    available: true,
                    load: 1,
                    capacity: 3,
                    pairings_seen: 9,
                    topics: TopicId::new(3).into_iter().collect(),
                    languages: Language::parse("en").into_iter().collect(),
                },
            },
            RouteCommand::Deliver {
                to: side(Role::Client),
                message: PeerMessage::Forward(Blob::new([0xab; BLOB_LEN])),
            },
            RouteCommand::Deliver {
                to: side(Role::Counsellor),
                message: PeerMessage::End(EndReason::Transferred),
            },
            RouteCommand::Claim {
                conn: ConnId(8),
                hash: [1; 32],
                claimant: Claimant::Counsellor {
                    pseudonym: "Sam".into(),
                },
            },
            RouteCommand::HostSide {
                side: side(Role::Client),
            },
        ];
        let events = vec![RouteEvent::HandedOver {
            conn: ConnId(8),
            hash: [1; 32],
            handed: Some(Handed::Side(Box::new(HandedSide {
                key: side(Role::Counsellor),
                peer: side(Role::Client),
                peer_away: false,
                topic: None,
                language: None,
                pseudonym: Some("Sam".into()),
                held: vec![Blob::new([1; BLOB_LEN])],
                unconfirmed: Some(request),
                handshake_due: Some(sent + Duration::from_secs(20)),
                window_ends: sent + Duration::from_secs(600),
            }))),
        }];
        let later = sent + Duration::from_secs(5);
        let bytes = encode(sent, &commands).unwrap();
        let back: Vec<RouteCommand> = decode(later, &bytes).unwrap();
        let mut moved = request;
        moved.since = later - Duration::from_secs(30);
        assert_eq!(
            back[0],
            RouteCommand::Enqueue {
                client: ConnId(5),
                request: moved
            }
        );
        assert_eq!(back[1..], commands[1..]);
        let back: Vec<RouteEvent> = decode(sent, &encode(sent, &events).unwrap()).unwrap();
        assert_eq!(back, events);
    }

    fn plain_request(now: Instant) -> Request {
        Request {
            topic: None,
            language: None,
            since: now,
            turn: 1,
            priority: false,
            source: None,
        }
    }

    #[test]
    fn a_source_tag_stays_on_its_relay() {
        let now = Instant::now();
        let request = Request {
            source: Some(SourceTag([9; 16])),
            ..plain_request(now)
        };
        let back: Request = decode(now, &encode(now, &request).unwrap()).unwrap();
        assert_eq!(back.source, None);
    }

    #[test]
    fn bad_bytes_are_an_error_and_an_instant_needs_a_moment() {
        let now = Instant::now();
        assert!(decode::<Vec<RouteEvent>>(now, &[0xff; 40]).is_err());
        let wrong_blob = encode(now, &(0u32, vec![0u8; 10])).unwrap();
        assert!(decode::<PeerMessage>(now, &wrong_blob).is_err());
        let request = Request {
            topic: None,
            language: None,
            since: now,
            turn: 1,
            priority: false,
            source: None,
        };
        assert!(
            postcard::to_stdvec(&request).is_err(),
            "no moment, no instant"
        );
    }
}
