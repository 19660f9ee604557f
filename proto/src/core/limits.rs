//! What the core is told about the service: named limits (PROTOCOL.md §8)
//! and the helpline's topics, languages and opening hours. Each limit has a
//! documented default; the operator sets them in the config file.

use std::time::Duration;

use super::frame::{Label, Language, TopicId};
use super::hours::OpeningHours;
use super::limit_table::LimitError;

/// The pacing rule every conforming sender follows (PROTOCOL.md §8.1):
/// per chat, at most [`PACE_FORWARD_BURST`] FORWARD frames at once and
/// [`PACE_FORWARD_PER_SEC`] per second after that.
pub const PACE_FORWARD_PER_SEC: u32 = 32;
pub const PACE_FORWARD_BURST: u32 = 64;
/// The same rule for all other frames of one connection.
pub const PACE_CONTROL_PER_SEC: u32 = 5;
pub const PACE_CONTROL_BURST: u32 = 40;
/// Most FORWARD frames of messages a sender keeps unacknowledged per chat
/// (PROTOCOL.md §8): a further message is refused until ACKs arrive.
pub const MAX_UNACKED_FRAMES: usize = 128;
/// Most of its own ACKs a sender keeps for resending per chat; the oldest
/// is dropped.
pub const MAX_ACK_LOG: usize = 64;

crate::limits_table! {
    /// Limits the core enforces: the `[limits]` section of the relay's
    /// config, read straight into this struct.
    pub struct Limits in "limits" {
        /// Most open connections, anonymous clients and counsellors together.
        max_connections: usize = "max_connections", default 2000, range 1..=1_000_000;
        /// Most clients waiting in the queue (transfers back to the queue do not
        /// count); a client beyond it is told "busy" at once.
        max_queue: usize = "max_queue", default 500, range 1..=100_000;
        /// Time from connection to HELLO before the connection is closed with
        /// `Timeout`.
        hello_timeout: Duration = "hello_timeout_secs", default 10, range 1..=120;
        /// Time from PAIRED to the young person's handshake message 1; past it
        /// the pairing is undone and the counsellor's capacity freed.
        handshake_timeout: Duration = "handshake_timeout_secs", default 10, range 5..=600;
        /// Longest a client waits in the queue before it is told so and let go.
        max_wait: Duration = "max_wait_secs", default 45 * 60, range 60..=86_400;
        /// After this wait a client whose topic no counsellor serves may go to
        /// any counsellor of its language.
        topic_fallback: Duration = "topic_fallback_secs", default 120, range 0..=86_400;
        /// Most chats one counsellor may take at once.
        max_capacity: u8 = "max_capacity", default 8, range 1..=32;
        /// Most anonymous connections at once (at most `max_connections`, and
        /// below it so that counsellors always find room).
        max_anonymous_connections: usize = "max_anonymous_connections", default 1500,
            range 1..=1_000_000;
        /// Queue admissions (JOINs) per second over the whole relay.
        admissions_per_sec: u32 = "admissions_per_sec", default 10, range 1..=10_000;
        /// The burst of admissions allowed above `admissions_per_sec`.
        admissions_burst: u32 = "admissions_burst", default 30, range 1..=100_000;
        /// FORWARD frames per second the relay reads for one side of one chat.
        /// Past it the relay reads more slowly (QUIC flow control holds the
        /// sender back); it never closes for it. Never below the senders'
        /// pacing rule (§8.1).
        forward_frames_per_sec: u32 = "forward_frames_per_sec",
            default 2 * PACE_FORWARD_PER_SEC, range 32..=1_000_000;
        /// The burst of FORWARD frames above `forward_frames_per_sec`.
        forward_frames_burst: u32 = "forward_frames_burst",
            default 2 * PACE_FORWARD_BURST, range 64..=1_000_000;
        /// Other frames per second the relay reads from one connection, paced
        /// the same way.
        control_frames_per_sec: u32 = "control_frames_per_sec",
            default 2 * PACE_CONTROL_PER_SEC, range 5..=1_000_000;
        /// The burst of other frames above `control_frames_per_sec`.
        control_frames_burst: u32 = "control_frames_burst",
            default 2 * PACE_CONTROL_BURST, range 40..=1_000_000;
        /// The proof-of-work difficulty's floor, in leading zero bits.
        pow_min_difficulty: u8 = "pow_min_difficulty", default 8, range 0..=20;
        /// The proof-of-work difficulty's ceiling (at least the floor).
        pow_max_difficulty: u8 = "pow_max_difficulty",
            default super::frame::MAX_POW_DIFFICULTY, range 0..=20;
        /// Solved JOINs per second above which the difficulty rises one bit per
        /// second; below half of it, it falls again.
        pow_target_arrivals_per_sec: u32 = "pow_target_arrivals_per_sec", default 10,
            range 1..=100_000;
        /// While the queue is more than half full, a waiting client proves work
        /// again this often to keep its place (`None`, 0 in the config: never).
        queue_rent_interval: Option<Duration> = "queue_rent_secs", default 300,
            range 60..=86_400, or 0 off;
        /// Places in the queue one source (an IPv4 address or IPv6 /64, as the
        /// shell tags it) may hold at once; 0 = no limit.
        per_source_places: usize = "per_address_places", default 5, range 0..=10_000;
        /// How long a chat waits for a side whose connection dropped.
        resume_window: Duration = "resume_window_secs", default 120, range 1..=3600;
        /// Frames held for a side that is away; past it the chat ends. Room
        /// for everything a paced sender may have unacknowledged
        /// ([`MAX_UNACKED_FRAMES`] and [`MAX_ACK_LOG`]).
        max_held_frames: usize = "max_held_frames",
            default MAX_UNACKED_FRAMES + MAX_ACK_LOG, range 129..=4096;
    }
}

impl Limits {
    /// A waiting client hears from the relay at least this often.
    pub const QUEUE_UPDATE_INTERVAL: Duration = Duration::from_secs(30);
    /// Counsellors hear QUEUE_STATS at most this often (PROTOCOL.md §7.3,
    /// "Queue feedback"): on a busy evening every JOIN would otherwise
    /// send a frame to every counsellor signed in.
    pub const QUEUE_STATS_INTERVAL: Duration = Duration::from_secs(1);

    /// The ranges of the table, and the rules between limits: at most as
    /// many anonymous connections as connections, a ceiling at or above
    /// the floor, and rates never below the senders' pacing rule.
    pub fn check(&self) -> Result<(), LimitError> {
        self.check_ranges()?;
        let relation = |path, reason: &str| {
            Err(LimitError::Relation {
                path,
                reason: reason.into(),
            })
        };
        if self.max_anonymous_connections > self.max_connections {
            return relation(
                "limits.max_anonymous_connections",
                "must not be above `max_connections`",
            );
        }
        if self.pow_max_difficulty < self.pow_min_difficulty {
            return relation(
                "limits.pow_max_difficulty",
                "must not be below `pow_min_difficulty`",
            );
        }
        // Kept with the pacing constants, which the table's ranges repeat
        // as numbers: a paced sender is never slowed.
        let paced = [
            (
                "limits.forward_frames_per_sec",
                self.forward_frames_per_sec,
                PACE_FORWARD_PER_SEC,
            ),
            (
                "limits.forward_frames_burst",
                self.forward_frames_burst,
                PACE_FORWARD_BURST,
            ),
            (
                "limits.control_frames_per_sec",
                self.control_frames_per_sec,
                PACE_CONTROL_PER_SEC,
            ),
            (
                "limits.control_frames_burst",
                self.control_frames_burst,
                PACE_CONTROL_BURST,
            ),
        ];
        for (path, value, pace) in paced {
            if value < pace {
                return relation(path, "must not be below the senders' pacing rule (§8.1)");
            }
        }
        if self.max_held_frames <= MAX_UNACKED_FRAMES {
            return relation(
                "limits.max_held_frames",
                "must hold all a paced sender may have unacknowledged, and its ACK",
            );
        }
        Ok(())
    }
}

/// One topic a young person can choose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub id: TopicId,
    pub label_nl: Label,
    pub label_en: Label,
}

/// The helpline as the relay presents it.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub topics: Vec<Topic>,
    pub languages: Vec<Language>,
    pub hours: OpeningHours,
    /// The case coding form, when the relay collects case statistics.
    pub coding: Option<std::sync::Arc<crate::core::coding::CodingForm>>,
}

impl Service {
    /// The default topic list: stable ids with Dutch and English labels.
    pub fn default_topics() -> Vec<Topic> {
        [
            (1, "Seksuele uitbuiting", "Sexual exploitation"),
            (
                2,
                "Criminele uitbuiting (bijv. gedwongen drugs dealen)",
                "Criminal exploitation (e.g. forced drug dealing)",
            ),
            (
                3,
                "Sextortion (bedreiging met beelden)",
                "Sextortion (threats over images)",
            ),
            (4, "Seksueel geweld", "Sexual violence"),
            (5, "Thuis en familie", "Home and family"),
            (6, "Iets anders", "Something else"),
        ]
        .into_iter()
        .filter_map(|(id, nl, en)| {
            Some(Topic {
                id: TopicId::new(id)?,
                label_nl: Label::new(nl).ok()?,
                label_en: Label::new(en).ok()?,
            })
        })
        .collect()
    }

    pub fn default_languages() -> Vec<Language> {
        ["nl", "en"]
            .into_iter()
            .filter_map(Language::parse)
            .collect()
    }

    pub fn knows_topic(&self, id: TopicId) -> bool {
        self.topics.iter().any(|t| t.id == id)
    }

    pub fn knows_language(&self, l: Language) -> bool {
        self.languages.contains(&l)
    }
}

impl Default for Service {
    fn default() -> Self {
        Service {
            topics: Self::default_topics(),
            languages: Self::default_languages(),
            hours: OpeningHours::always(),
            coding: None,
        }
    }
}
