//! What the core is told about the service: named limits (PROTOCOL.md §8)
//! and the helpline's topics, languages and opening hours. Each limit has a
//! documented default; the operator sets them in the config file.

use std::time::Duration;

use super::frame::{Label, Language, TopicId};
use super::hours::OpeningHours;

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

/// Limits the core enforces. Built from the config by the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most clients waiting in the queue (transfers back to the queue do not
    /// count); a client beyond it is told "busy" at once.
    pub max_queue: usize,
    /// Most connections (both roles) the core tracks at once.
    pub max_connections: usize,
    /// Time from connection to HELLO before the connection is closed with
    /// `Timeout`.
    pub hello_timeout: Duration,
    /// Time from PAIRED to the young person's handshake message 1; past it
    /// the pairing is undone and the counsellor's capacity freed.
    pub handshake_timeout: Duration,
    /// Longest a client waits in the queue before it is told so and let go.
    pub max_wait: Duration,
    /// After this wait a client whose topic no counsellor serves may go to
    /// any counsellor of its language.
    pub topic_fallback: Duration,
    /// Most chats one counsellor may take at once.
    pub max_capacity: u8,
    /// Most anonymous connections at once (below `max_connections`, so
    /// counsellors always find room).
    pub max_anonymous_connections: usize,
    /// Queue admissions (JOINs) per second, and the burst allowed above it.
    pub admissions_per_sec: u32,
    pub admissions_burst: u32,
    /// FORWARD frames per second the relay reads for one side of one chat,
    /// and the burst above it. Past it the relay reads more slowly (QUIC
    /// flow control holds the sender back); it never closes for it.
    pub forward_frames_per_sec: u32,
    pub forward_frames_burst: u32,
    /// Other frames per second the relay reads from one connection, and
    /// the burst above it; paced the same way.
    pub control_frames_per_sec: u32,
    pub control_frames_burst: u32,
    /// Proof-of-work difficulty bounds (leading zero bits) and the rate of
    /// solved JOINs per second above which it rises.
    pub pow_min_difficulty: u8,
    pub pow_max_difficulty: u8,
    pub pow_target_arrivals_per_sec: u32,
    /// While the queue is more than half full, a waiting client proves work
    /// again this often to keep its place (`None`: never).
    pub queue_rent_interval: Option<Duration>,
    /// Places in the queue one source (an IPv4 address or IPv6 /64, as the
    /// shell tags it) may hold at once; 0 = no limit.
    pub per_source_places: usize,
    /// How long a chat waits for a side whose connection dropped.
    pub resume_window: Duration,
    /// Frames held for a side that is away; past it the chat ends.
    pub max_held_frames: usize,
}

impl Limits {
    pub const DEFAULT_MAX_QUEUE: usize = 500;
    pub const DEFAULT_MAX_CONNECTIONS: usize = 2000;
    pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(45 * 60);
    pub const DEFAULT_TOPIC_FALLBACK: Duration = Duration::from_secs(120);
    pub const DEFAULT_MAX_CAPACITY: u8 = 8;
    pub const DEFAULT_MAX_ANONYMOUS_CONNECTIONS: usize = 1500;
    pub const DEFAULT_ADMISSIONS_PER_SEC: u32 = 10;
    pub const DEFAULT_ADMISSIONS_BURST: u32 = 30;
    /// Twice the senders' pacing rule ([`PACE_FORWARD_PER_SEC`]), so that
    /// a paced sender is never slowed down.
    pub const DEFAULT_FORWARD_FRAMES_PER_SEC: u32 = 2 * PACE_FORWARD_PER_SEC;
    pub const DEFAULT_FORWARD_FRAMES_BURST: u32 = 2 * PACE_FORWARD_BURST;
    pub const DEFAULT_CONTROL_FRAMES_PER_SEC: u32 = 2 * PACE_CONTROL_PER_SEC;
    pub const DEFAULT_CONTROL_FRAMES_BURST: u32 = 2 * PACE_CONTROL_BURST;
    pub const DEFAULT_POW_MIN_DIFFICULTY: u8 = 8;
    pub const DEFAULT_POW_MAX_DIFFICULTY: u8 = super::frame::MAX_POW_DIFFICULTY;
    pub const DEFAULT_POW_TARGET_ARRIVALS_PER_SEC: u32 = 10;
    pub const DEFAULT_QUEUE_RENT_INTERVAL: Duration = Duration::from_secs(300);
    pub const DEFAULT_PER_SOURCE_PLACES: usize = 5;
    pub const DEFAULT_RESUME_WINDOW: Duration = Duration::from_secs(120);
    /// Room for everything a paced sender may have unacknowledged
    /// ([`MAX_UNACKED_FRAMES`] and [`MAX_ACK_LOG`]).
    pub const DEFAULT_MAX_HELD_FRAMES: usize = MAX_UNACKED_FRAMES + MAX_ACK_LOG;
    /// A waiting client hears from the relay at least this often.
    pub const QUEUE_UPDATE_INTERVAL: Duration = Duration::from_secs(30);
    /// Counsellors hear QUEUE_STATS at most this often (PROTOCOL.md §7.3,
    /// "Queue feedback"): on a busy evening every JOIN would otherwise
    /// send a frame to every counsellor signed in.
    pub const QUEUE_STATS_INTERVAL: Duration = Duration::from_secs(1);
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_queue: Self::DEFAULT_MAX_QUEUE,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            hello_timeout: Self::DEFAULT_HELLO_TIMEOUT,
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
            max_wait: Self::DEFAULT_MAX_WAIT,
            topic_fallback: Self::DEFAULT_TOPIC_FALLBACK,
            max_capacity: Self::DEFAULT_MAX_CAPACITY,
            max_anonymous_connections: Self::DEFAULT_MAX_ANONYMOUS_CONNECTIONS,
            admissions_per_sec: Self::DEFAULT_ADMISSIONS_PER_SEC,
            admissions_burst: Self::DEFAULT_ADMISSIONS_BURST,
            forward_frames_per_sec: Self::DEFAULT_FORWARD_FRAMES_PER_SEC,
            forward_frames_burst: Self::DEFAULT_FORWARD_FRAMES_BURST,
            control_frames_per_sec: Self::DEFAULT_CONTROL_FRAMES_PER_SEC,
            control_frames_burst: Self::DEFAULT_CONTROL_FRAMES_BURST,
            pow_min_difficulty: Self::DEFAULT_POW_MIN_DIFFICULTY,
            pow_max_difficulty: Self::DEFAULT_POW_MAX_DIFFICULTY,
            pow_target_arrivals_per_sec: Self::DEFAULT_POW_TARGET_ARRIVALS_PER_SEC,
            queue_rent_interval: Some(Self::DEFAULT_QUEUE_RENT_INTERVAL),
            per_source_places: Self::DEFAULT_PER_SOURCE_PLACES,
            resume_window: Self::DEFAULT_RESUME_WINDOW,
            max_held_frames: Self::DEFAULT_MAX_HELD_FRAMES,
        }
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
        }
    }
}
