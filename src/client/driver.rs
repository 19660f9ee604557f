//! The one tokio driver for both chat roles: it does the I/O that a
//! [`Machine`] asks for, and nothing else.
//!
//! Each turn it carries out the machine's transmits in order (write a
//! frame, open a new connection to the next relay address, solve a proof
//! of work on a blocking thread, leave), hands the machine's events to the
//! user, and then waits for whichever comes first: a frame or a loss on
//! the connection, a line of input, a solved proof, a quick exit, or the
//! machine's next timeout. Every decision (when to reconnect and for how
//! long, what to resend, when a chat may end) is the machine's.

use std::time::Instant;

use rand_chacha::ChaCha20Rng;
use rand_core::{OsRng, SeedableRng};
use tokio::sync::{mpsc, watch};

use super::chat::ChatEvent;
use super::machine::anonymous::{Anonymous, Wish};
use super::machine::counsellor::{Counsellor, Preferences};
use super::machine::link::Start;
use super::machine::{Input, LinkEvent, Machine, Transmit};
use super::{ClientError, Reconnect, RelayStream};
use crate::core::frame::{Frame, FromRelay};
use crate::core::ratelimit::pow_solve;
use crate::crypto::cert::OrgPublicKey;
use crate::crypto::e2e::CounsellorKeys;

/// What the young person asks for; all optional.
#[derive(Debug, Clone, Default)]
pub struct ClientRequest {
    /// A topic id or label (Dutch or English, any case).
    pub topic: Option<String>,
    /// A two-letter language code.
    pub language: Option<String>,
    /// How to reconnect and resume if the connection drops mid-chat.
    pub reconnect: Option<Reconnect>,
    /// Becomes true for a quick exit: the client leaves at once.
    pub quick_exit: Option<watch::Receiver<bool>>,
}

/// What a counsellor takes, as given on the command line.
#[derive(Debug, Clone)]
pub struct CounsellorSettings {
    /// How to reconnect and resume open chats if the connection drops.
    pub reconnect: Option<Reconnect>,
    pub available: bool,
    pub capacity: u8,
    /// Topic ids; `None` = all the relay offers.
    pub topics: Option<Vec<u16>>,
    /// Language codes; `None` = all the relay offers.
    pub languages: Option<Vec<String>>,
    /// Becomes true to sign out at once, without waiting for confirmations.
    pub quick_exit: Option<watch::Receiver<bool>>,
}

impl Default for CounsellorSettings {
    fn default() -> Self {
        CounsellorSettings {
            reconnect: None,
            available: true,
            capacity: 1,
            topics: None,
            languages: None,
            quick_exit: None,
        }
    }
}

/// A machine starts now, with a CSPRNG seeded by the system.
fn start() -> Start {
    Start {
        now: Instant::now(),
        unix_now: crate::org::now_unix(),
        rng: ChaCha20Rng::from_rng(OsRng).unwrap_or_else(|_| ChaCha20Rng::from_seed(rand_seed())),
    }
}

/// A seed straight from the system, should seeding through `OsRng` fail.
fn rand_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut OsRng, &mut seed);
    seed
}

/// Runs the young person's role until the chat ends. Whatever ends it,
/// every line typed is reported delivered or not delivered first.
pub async fn run_client(
    relay: RelayStream,
    org: OrgPublicKey,
    request: ClientRequest,
    input: mpsc::Receiver<impl Into<Input> + Send>,
    events: mpsc::Sender<ChatEvent>,
) -> Result<(), ClientError> {
    let wish = Wish {
        topic: request.topic,
        language: request.language,
        give_up_after: request.reconnect.as_ref().map(|r| r.give_up_after),
    };
    let machine = Anonymous::new(start(), org, wish);
    let io = Io::new(relay, request.reconnect, request.quick_exit, input, events);
    io.drive(machine).await
}

/// Runs the counsellor's role: takes chats until input ends.
pub async fn run_counsellor(
    relay: RelayStream,
    keys: CounsellorKeys,
    settings: CounsellorSettings,
    input: mpsc::Receiver<impl Into<Input> + Send>,
    events: mpsc::Sender<ChatEvent>,
) -> Result<(), ClientError> {
    let preferences = Preferences {
        available: settings.available,
        capacity: settings.capacity,
        topics: settings.topics,
        languages: settings.languages,
        give_up_after: settings.reconnect.as_ref().map(|r| r.give_up_after),
    };
    let machine = Counsellor::new(start(), keys, preferences);
    let io = Io::new(
        relay,
        settings.reconnect,
        settings.quick_exit,
        input,
        events,
    );
    io.drive(machine).await
}

/// The driver's side of the world.
struct Io<I> {
    relay: Option<RelayStream>,
    reconnect: Option<Reconnect>,
    /// Which of the relay addresses the next connection tries.
    next_address: usize,
    quick_exit: Option<watch::Receiver<bool>>,
    input: mpsc::Receiver<I>,
    input_open: bool,
    events: mpsc::Sender<ChatEvent>,
    proofs_tx: mpsc::Sender<(u64, [u8; 8])>,
    proofs: mpsc::Receiver<(u64, [u8; 8])>,
}

impl<I: Into<Input>> Io<I> {
    fn new(
        relay: RelayStream,
        reconnect: Option<Reconnect>,
        quick_exit: Option<watch::Receiver<bool>>,
        input: mpsc::Receiver<I>,
        events: mpsc::Sender<ChatEvent>,
    ) -> Io<I> {
        let (proofs_tx, proofs) = mpsc::channel(4);
        Io {
            relay: Some(relay),
            reconnect,
            next_address: 0,
            quick_exit,
            input,
            input_open: true,
            events,
            proofs_tx,
            proofs,
        }
    }

    async fn drive(mut self, mut machine: impl Machine) -> Result<(), ClientError> {
        loop {
            self.transmit(&mut machine).await;
            if let Some(outcome) = machine.take_outcome() {
                // Lines typed but not read yet: the machine reports them.
                while let Ok(line) = self.input.try_recv() {
                    machine.handle_input(Instant::now(), line.into());
                }
                self.transmit(&mut machine).await;
                self.show(&mut machine).await;
                return outcome;
            }
            self.show(&mut machine).await;
            let wake = machine
                .poll_timeout(Instant::now())
                .map(tokio::time::Instant::from_std);
            let connected = self.relay.is_some();
            let quick_exit_armed = self.quick_exit.is_some();
            let woke = tokio::select! {
                frame = next_frame(&mut self.relay), if connected => Woke::Relay(frame),
                _ = sleep_until(wake), if wake.is_some() => Woke::Timeout,
                line = self.input.recv(), if self.input_open => Woke::Input(line),
                Some((generation, solution)) = self.proofs.recv() => {
                    Woke::Proof(generation, solution)
                }
                _ = quick_exit(&mut self.quick_exit), if quick_exit_armed => Woke::QuickExit,
            };
            let now = Instant::now();
            match woke {
                Woke::Relay(Ok(Some(frame))) => match FromRelay::try_from(frame) {
                    Ok(frame) => machine.handle_link(now, LinkEvent::Frame(frame)),
                    // A frame only an endpoint sends: the relay broke the
                    // protocol (§4.2).
                    Err(_) => {
                        self.relay = None;
                        let unexpected = LinkEvent::Down(ClientError::UnexpectedFrame);
                        machine.handle_link(now, unexpected);
                    }
                },
                Woke::Relay(Ok(None)) => {
                    self.relay = None;
                    let lost = ClientError::Lost("the relay ended the stream".into());
                    machine.handle_link(now, LinkEvent::Down(lost));
                }
                Woke::Relay(Err(e)) => {
                    self.relay = None;
                    // A relay leaving its cluster: resume on the next one.
                    if matches!(e, ClientError::Closed(crate::core::CloseCode::Draining)) {
                        self.next_address += 1;
                    }
                    machine.handle_link(now, LinkEvent::Down(e));
                }
                Woke::Timeout => machine.handle_timeout(now),
                Woke::Input(Some(line)) => machine.handle_input(now, line.into()),
                Woke::Input(None) => {
                    self.input_open = false;
                    machine.handle_input(now, Input::EndOfInput);
                }
                Woke::Proof(generation, solution) => {
                    machine.handle_proof(now, generation, solution)
                }
                Woke::QuickExit => {
                    self.quick_exit = None;
                    machine.handle_input(now, Input::QuickExit);
                }
            }
        }
    }

    /// Carries out what the machine asks, in order.
    async fn transmit(&mut self, machine: &mut impl Machine) {
        while let Some(transmit) = machine.poll_transmit() {
            match transmit {
                Transmit::Frame(frame) => {
                    let Some(relay) = self.relay.as_mut() else {
                        continue;
                    };
                    if let Err(e) = relay.send(&Frame::from(frame)).await {
                        self.relay = None;
                        machine.handle_link(Instant::now(), LinkEvent::Down(e));
                    }
                }
                Transmit::SolveProof {
                    generation,
                    challenge,
                } => {
                    // CPU work, kept off the async threads.
                    let tx = self.proofs_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let solution = pow_solve(&challenge.nonce, challenge.difficulty);
                        let _ = tx.blocking_send((generation, solution));
                    });
                }
                Transmit::Connect { by } => {
                    // The connection given up closes with RECONNECTING.
                    self.relay = None;
                    let by = tokio::time::Instant::from_std(by);
                    let attempt = tokio::time::timeout_at(by, self.connect()).await;
                    let attempt = attempt.unwrap_or_else(|_| {
                        Err(ClientError::Lost("could not reconnect in time".into()))
                    });
                    let event = match attempt {
                        Ok(relay) => {
                            self.relay = Some(relay);
                            LinkEvent::Up
                        }
                        Err(e) => LinkEvent::Down(e),
                    };
                    machine.handle_link(Instant::now(), event);
                }
                Transmit::Leave => {
                    if let Some(relay) = self.relay.as_mut() {
                        relay.leave().await;
                    }
                }
                Transmit::QuickExit => {
                    if let Some(relay) = self.relay.as_mut() {
                        relay.quick_exit().await;
                    }
                }
                Transmit::AbortSecurity => {
                    if let Some(relay) = self.relay.as_mut() {
                        relay.abort_security().await;
                    }
                }
            }
        }
    }

    /// One attempt at the next relay address; a failure moves on to the
    /// address after it, so that a relay that is gone is not tried twice
    /// in a row while others may be up.
    async fn connect(&mut self) -> Result<RelayStream, ClientError> {
        let Some(reconnect) = &self.reconnect else {
            return Err(ClientError::Lost("cannot reconnect".into()));
        };
        let addresses = reconnect.addresses();
        let address = addresses[self.next_address % addresses.len()].clone();
        let mut options = reconnect.options.clone();
        options.relay = address;
        let result = super::connect(options).await;
        if result.is_err() {
            self.next_address = (self.next_address + 1) % addresses.len();
        }
        result
    }

    async fn show(&mut self, machine: &mut impl Machine) {
        while let Some(event) = machine.poll_event() {
            let _ = self.events.send(event).await;
        }
    }
}

/// What woke the driver.
enum Woke<I> {
    Relay(Result<Option<Frame>, ClientError>),
    Timeout,
    Input(Option<I>),
    Proof(u64, [u8; 8]),
    QuickExit,
}

/// The next frame on the connection; never ready without one.
async fn next_frame(relay: &mut Option<RelayStream>) -> Result<Option<Frame>, ClientError> {
    match relay {
        Some(relay) => relay.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(wake: Option<tokio::time::Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn quick_exit(watch: &mut Option<watch::Receiver<bool>>) {
    let Some(rx) = watch else {
        return std::future::pending().await;
    };
    if rx.wait_for(|exit| *exit).await.is_err() {
        // The sender is gone: no quick exit can come any more.
        std::future::pending::<()>().await;
    }
}
