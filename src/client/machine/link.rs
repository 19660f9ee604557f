//! What both roles share about their connection to the relay, without any
//! I/O: the queues a machine fills ([`Transmit`]s for the driver, events
//! for the user), the greeting (HELLO, WELCOME and its TOPIC frames), the
//! wait for the relay's answer, and coming back after a lost connection
//! with backoff and jitter until the resume window is over.
//!
//! A role calls [`Link::send`] and [`Link::emit`]; the driver drains
//! [`Link::poll_transmit`] and [`Link::poll_event`]. When the connection
//! goes down the role asks [`Link::lost`] what to do: try again (a
//! `Connect` follows at the backoff's time), or stop for good.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;

use super::Transmit;
use crate::client::ClientError;
use crate::client::chat::{ChatEvent, Welcome};
use crate::core::frame::{FromRelay, PROTOCOL_VERSION, Role, ToRelay};

/// How long to wait for the relay's answer to HELLO or RESUME before the
/// connection counts as lost. A connection can look up on our side while
/// the relay never completed it (the network moved us mid-handshake).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often owed acknowledgements go out. Acks ride a fixed tick, not the
/// moment a message arrives, so their timing does not mirror typing.
pub const ACK_INTERVAL: Duration = Duration::from_secs(1);

/// How long a chat that is ending waits for the confirmations of what was
/// sent in it.
pub const ENDING_WAIT: Duration = Duration::from_secs(3);

/// Reconnect backoff, as the browser library's (`web/src/driver.js`): the
/// first attempt after a loss goes at once; after a failed one the wait is
/// [`BACKOFF_FIRST`], doubling up to [`BACKOFF_CEILING`], each with up to
/// half again of random jitter, so that the clients of a relay that
/// restarted do not all come back in the same instant.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// The longest wait before jitter.
pub const BACKOFF_CEILING: Duration = Duration::from_secs(8);
/// The longest wait between two attempts, jitter included.
pub const BACKOFF_MAX: Duration = Duration::from_secs(12);

/// The wall clock, derived from the machine's monotonic `now`: certificate
/// validity is checked in unix seconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    unix_at_start: u64,
}

impl Clock {
    pub fn new(start: Instant, unix_at_start: u64) -> Clock {
        Clock {
            start,
            unix_at_start,
        }
    }

    pub fn unix(&self, now: Instant) -> u64 {
        self.unix_at_start + now.saturating_duration_since(self.start).as_secs()
    }

    /// The next tick of a clock that ticks every `interval` since start.
    pub fn next_tick(&self, now: Instant, interval: Duration) -> Instant {
        let since = now.saturating_duration_since(self.start).as_nanos();
        let step = interval.as_nanos().max(1);
        let ticks = (since / step + 1) as u32;
        self.start + interval * ticks
    }
}

/// What every machine starts from: the time, the wall clock at that time
/// (certificates are checked in unix seconds), and its randomness.
pub struct Start {
    pub now: Instant,
    pub unix_now: u64,
    pub rng: ChaCha20Rng,
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A connection is up; frames can be sent.
    Open,
    /// The driver is connecting (a `Connect` went out).
    Connecting,
    /// Down; the next attempt is at this instant.
    Retrying(Instant),
    /// Down, and nothing more will be tried.
    Closed,
}

/// What to do after the connection was lost.
#[derive(Debug)]
pub enum Verdict {
    /// An attempt to come back is scheduled.
    Retrying,
    /// Trying again cannot help, or the time is up: stop with this error.
    Stop(ClientError),
}

/// The shared half of a role's machine.
pub struct Link {
    transmits: VecDeque<Transmit>,
    events: VecDeque<ChatEvent>,
    /// The event that ends the run, shown after everything else.
    last_word: Option<ChatEvent>,
    outcome: Option<Result<(), ClientError>>,
    finished: bool,
    state: State,
    /// Bumped for every new connection; proofs of work carry it so that a
    /// solution for a connection given up is not sent on the next one.
    generation: u64,
    /// How long to keep trying after a loss; `None`: never reconnect.
    give_up_after: Option<Duration>,
    /// While away: when to give up, and how many attempts were made.
    away: Option<(Instant, u32)>,
    /// The relay must answer (WELCOME, or a RESUME's answer) by then.
    answer_by: Option<Instant>,
    pub clock: Clock,
    pub rng: ChaCha20Rng,
}

impl Link {
    /// A link over a connection that is already open, with HELLO for
    /// `role` on its way.
    pub fn open(start: Start, role: Role, give_up_after: Option<Duration>) -> (Link, Greeting) {
        let clock = Clock::new(start.now, start.unix_now);
        let mut link = Link::new(clock, start.rng, give_up_after);
        let greeting = link.greet(start.now, role);
        (link, greeting)
    }

    /// A link over a connection that is already open.
    pub fn new(clock: Clock, rng: ChaCha20Rng, give_up_after: Option<Duration>) -> Link {
        Link {
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            last_word: None,
            outcome: None,
            finished: false,
            state: State::Open,
            generation: 0,
            give_up_after,
            away: None,
            answer_by: None,
            clock,
            rng,
        }
    }

    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Queues a frame for the current connection. Without one it is
    /// dropped: whatever matters is sent again after the resume.
    pub fn send(&mut self, frame: ToRelay) {
        if self.is_open() {
            self.transmits.push_back(Transmit::Frame(frame));
        }
    }

    /// Queues an instruction for the driver (leave, exit, solve).
    pub fn instruct(&mut self, transmit: Transmit) {
        self.transmits.push_back(transmit);
    }

    pub fn emit(&mut self, event: ChatEvent) {
        self.events.push_back(event);
    }

    /// A message for the user that is not fatal.
    pub fn error(&mut self, message: impl Into<String>) {
        self.emit(ChatEvent::error(message));
    }

    /// The run is over: `last_word` is shown after every other event.
    pub fn finish(&mut self, last_word: Option<ChatEvent>, outcome: Result<(), ClientError>) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.state = State::Closed;
        self.answer_by = None;
        self.last_word = last_word;
        self.outcome = Some(outcome);
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ChatEvent> {
        self.events.pop_front().or_else(|| self.last_word.take())
    }

    pub fn take_outcome(&mut self) -> Option<Result<(), ClientError>> {
        self.outcome.take()
    }

    /// Sends HELLO; WELCOME must follow within [`ANSWER_TIMEOUT`].
    pub fn greet(&mut self, now: Instant, role: Role) -> Greeting {
        self.send(ToRelay::Hello {
            version: PROTOCOL_VERSION,
            role,
        });
        self.expect_answer(now);
        Greeting::new(role)
    }

    /// The relay must answer what was just sent within [`ANSWER_TIMEOUT`].
    pub fn expect_answer(&mut self, now: Instant) {
        self.answer_by = Some(now + ANSWER_TIMEOUT);
    }

    /// The answer came: the connection works, and a loss is over.
    pub fn answered(&mut self) {
        self.answer_by = None;
        self.away = None;
    }

    /// The connection went down, or an attempt to reach the relay failed:
    /// schedules the next attempt, or says why there will be none.
    pub fn lost(&mut self, now: Instant, why: ClientError) -> Verdict {
        self.answer_by = None;
        // Frames for the connection that is gone: the resume sends again
        // whatever matters.
        self.transmits.retain(|t| !matches!(t, Transmit::Frame(_)));
        let Some(give_up_after) = self.give_up_after else {
            self.state = State::Closed;
            return Verdict::Stop(why);
        };
        if why.is_final() {
            self.state = State::Closed;
            return Verdict::Stop(why);
        }
        let (give_up_at, attempts) = *self.away.get_or_insert((now + give_up_after, 0));
        let at = now + self.backoff(attempts);
        if at >= give_up_at {
            self.state = State::Closed;
            return Verdict::Stop(why);
        }
        self.away = Some((give_up_at, attempts + 1));
        self.state = State::Retrying(at);
        Verdict::Retrying
    }

    /// How long to wait before the next attempt to reach the relay, after
    /// `failed` attempts since the loss.
    fn backoff(&mut self, failed: u32) -> Duration {
        if failed == 0 {
            return Duration::ZERO;
        }
        let base = BACKOFF_FIRST
            .saturating_mul(1 << (failed - 1).min(16))
            .min(BACKOFF_CEILING);
        let jitter = f64::from(self.rng.next_u32()) / f64::from(u32::MAX) * 0.5;
        base + base.mul_f64(jitter)
    }

    /// The driver reported a new connection.
    pub fn up(&mut self) {
        self.state = State::Open;
    }

    /// Applies the link's timers; `Some` when the relay did not answer in
    /// time, which counts as a lost connection.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<ClientError> {
        if let State::Retrying(at) = self.state
            && now >= at
        {
            self.state = State::Connecting;
            self.generation += 1;
            let by = self.away.map_or(now, |(give_up_at, _)| give_up_at);
            self.instruct(Transmit::Connect { by });
        }
        if self.answer_by.is_some_and(|by| now >= by) {
            self.answer_by = None;
            return Some(ClientError::Lost("the relay did not answer".into()));
        }
        None
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let retry = match self.state {
            State::Retrying(at) => Some(at),
            _ => None,
        };
        [retry, self.answer_by].into_iter().flatten().min()
    }
}

/// Reads WELCOME and the TOPIC frames that follow it (PROTOCOL.md §7).
pub struct Greeting {
    role: Role,
    /// WELCOME arrived; how many TOPIC frames are still to come.
    welcome: Option<(Welcome, u8)>,
}

impl Greeting {
    /// Waits for the WELCOME that answers a HELLO for `role`.
    pub fn new(role: Role) -> Greeting {
        Greeting {
            role,
            welcome: None,
        }
    }

    /// One frame of the greeting; `Some` when the welcome is complete.
    pub fn frame(&mut self, frame: FromRelay) -> Result<Option<Welcome>, ClientError> {
        match (self.welcome.take(), frame) {
            (
                None,
                FromRelay::Welcome {
                    version,
                    role,
                    topics,
                    languages,
                    pow,
                },
            ) => {
                if version != PROTOCOL_VERSION {
                    return Err(ClientError::Version(version));
                }
                if role != self.role {
                    return Err(ClientError::UnexpectedFrame);
                }
                self.welcome = Some((
                    Welcome {
                        topics: Vec::new(),
                        languages,
                        pow,
                    },
                    topics,
                ));
            }
            (
                Some((mut welcome, remaining)),
                FromRelay::Topic {
                    id,
                    label_nl,
                    label_en,
                },
            ) if remaining > 0 => {
                welcome.topics.push((id, label_nl, label_en));
                self.welcome = Some((welcome, remaining - 1));
            }
            _ => return Err(ClientError::UnexpectedFrame),
        }
        match self.welcome.take() {
            Some((welcome, 0)) => Ok(Some(welcome)),
            pending => {
                self.welcome = pending;
                Ok(None)
            }
        }
    }
}
