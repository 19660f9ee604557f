//! The relay state machine (PROTOCOL.md §7.3): connections, the queue, and
//! the chats that link a client to a counsellor.
//!
//! Inputs: [`Relay::handle_connect`] when a QUIC connection with its control
//! stream is up, [`Relay::handle_data`] with bytes read from that stream,
//! [`Relay::handle_disconnect`] when it is gone, [`Relay::handle_timeout`]
//! when [`Relay::poll_timeout`]'s instant has passed, and
//! [`Relay::handle_shutdown`]. Outputs: [`Relay::poll_output`] yields bytes to
//! write to a connection and connections to close with a code.
//!
//! The core forwards FORWARD blobs between the two sides of a chat without
//! interpreting them. A bad frame closes only the connection that sent it;
//! its chat partner is told with END (peer disconnected) and carries on.
//! When a chat ends every trace of it is dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use rand_core::{CryptoRng, RngCore};

use super::CloseCode;
use super::frame::{ChatNumber, EndReason, Frame, FrameDecoder, PROTOCOL_VERSION, PairingId, Role};
use super::limits::Limits;
pub use super::pairing::ConnId;
use super::pairing::{LocalQueue, PairingBackend};

/// An RNG fit for pairing ids: cryptographically strong, owned by the core.
pub trait RelayRng: RngCore + CryptoRng + Send {}
impl<T: RngCore + CryptoRng + Send> RelayRng for T {}

/// What the relay learned from the TLS handshake about who is connecting.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// No client certificate: an anonymous client.
    Anonymous,
    /// A client certificate issued by the organisation's counsellor CA.
    Counsellor { pseudonym: String },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Counsellor { .. } => f.write_str("Counsellor"),
        }
    }
}

/// Something the shell must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Write these encoded frames to the connection's stream, in order.
    Send { conn: ConnId, bytes: Vec<u8> },
    /// Close the connection with this code. The core has already forgotten it.
    Close { conn: ConnId, code: CloseCode },
}

/// The relay refused a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// `max_connections` are already open.
    #[error("too many connections")]
    TooManyConnections,
}

/// One side of a live chat: where its frames go.
#[derive(Debug, Clone, Copy)]
struct Link {
    peer: ConnId,
    peer_chat: ChatNumber,
}

#[derive(Debug)]
enum State {
    AwaitingHello { deadline: Instant },
    Client { last_position: Option<u32> },
    Counsellor,
}

struct Conn {
    credential: Credential,
    decoder: FrameDecoder,
    state: State,
    /// Live chats of this connection by its own chat number.
    links: BTreeMap<ChatNumber, Link>,
    /// Chat numbers below this were issued; those not in `links` have ended.
    next_chat: u32,
}

impl Conn {
    fn is_ended_chat(&self, chat: ChatNumber) -> bool {
        chat.get() < self.next_chat && !self.links.contains_key(&chat)
    }
}

/// Chats a counsellor takes at once in protocol version 1.
pub const COUNSELLOR_CAPACITY: usize = 1;

/// The relay core. See the module docs for the flow.
pub struct Relay<P: PairingBackend = LocalQueue> {
    limits: Limits,
    rng: Box<dyn RelayRng>,
    pairing: P,
    conns: HashMap<ConnId, Conn>,
    next_conn: u64,
    out: VecDeque<Output>,
    shutting_down: bool,
}

impl Relay<LocalQueue> {
    pub fn new(limits: Limits, rng: Box<dyn RelayRng>) -> Self {
        let pairing = LocalQueue::new(limits.max_queue);
        Relay::with_backend(limits, rng, pairing)
    }
}

impl<P: PairingBackend> Relay<P> {
    pub fn with_backend(limits: Limits, rng: Box<dyn RelayRng>, pairing: P) -> Self {
        Relay {
            limits,
            rng,
            pairing,
            conns: HashMap::new(),
            next_conn: 1,
            out: VecDeque::new(),
            shutting_down: false,
        }
    }

    /// A connection and its control stream are up. The peer has
    /// `limits.hello_timeout` to send HELLO.
    pub fn handle_connect(
        &mut self,
        now: Instant,
        credential: Credential,
    ) -> Result<ConnId, ConnectError> {
        if self.shutting_down || self.conns.len() >= self.limits.max_connections {
            return Err(ConnectError::TooManyConnections);
        }
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                credential,
                decoder: FrameDecoder::default(),
                state: State::AwaitingHello {
                    deadline: now + self.limits.hello_timeout,
                },
                links: BTreeMap::new(),
                next_chat: 1,
            },
        );
        Ok(id)
    }

    /// Bytes arrived on the connection's control stream.
    pub fn handle_data(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        let mut frames = Vec::new();
        let result = match self.conns.get_mut(&conn) {
            Some(c) => c.decoder.push(bytes, &mut frames),
            None => return,
        };
        // Frames decoded before a bad one are still acted on, in order.
        for frame in frames {
            if let Err(code) = self.handle_frame(now, conn, frame) {
                self.close(conn, code);
                return;
            }
        }
        if let Err(e) = result {
            self.close(conn, e.close_code());
        }
    }

    /// The connection is gone (closed by the peer, timed out, reset).
    pub fn handle_disconnect(&mut self, _now: Instant, conn: ConnId) {
        self.forget(conn);
    }

    /// Acts on every deadline at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<ConnId> = self
            .conns
            .iter()
            .filter(
                |(_, c)| matches!(c.state, State::AwaitingHello { deadline } if deadline <= now),
            )
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.close(id, CloseCode::HelloTimeout);
        }
    }

    /// The earliest instant at which [`Relay::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter_map(|c| match c.state {
                State::AwaitingHello { deadline } => Some(deadline),
                _ => None,
            })
            .min()
    }

    /// Ends every chat with `RelayShutdown` and closes every connection.
    /// New connections are refused from now on.
    pub fn handle_shutdown(&mut self, _now: Instant) {
        self.shutting_down = true;
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        ids.sort();
        for id in &ids {
            let chats: Vec<ChatNumber> = self.conns[id].links.keys().copied().collect();
            for chat in chats {
                self.send(
                    *id,
                    &Frame::End {
                        chat,
                        reason: EndReason::RelayShutdown,
                    },
                );
            }
        }
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.links.clear();
            }
            self.close(id, CloseCode::ShuttingDown);
        }
    }

    /// The next thing the shell must do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Number of open connections and waiting clients, for tests and metrics.
    pub fn counts(&self) -> (usize, usize) {
        (self.conns.len(), self.pairing.waiting().len())
    }

    fn handle_frame(&mut self, _now: Instant, conn: ConnId, frame: Frame) -> Result<(), CloseCode> {
        let c = self.conns.get(&conn).ok_or(CloseCode::InternalError)?;
        match (&c.state, frame) {
            (State::AwaitingHello { .. }, Frame::Hello { version, role }) => {
                self.handle_hello(conn, version, role)
            }
            (State::Client { .. } | State::Counsellor, Frame::Forward { chat, blob }) => {
                let Some(link) = c.links.get(&chat).copied() else {
                    // A frame racing the end of its chat is not an error.
                    return if c.is_ended_chat(chat) {
                        Ok(())
                    } else {
                        Err(CloseCode::UnexpectedFrame)
                    };
                };
                self.send(
                    link.peer,
                    &Frame::Forward {
                        chat: link.peer_chat,
                        blob,
                    },
                );
                Ok(())
            }
            (State::Client { .. } | State::Counsellor, Frame::End { chat, reason }) => {
                if !matches!(reason, EndReason::UserEnded | EndReason::SecurityFailure) {
                    return Err(CloseCode::UnexpectedFrame);
                }
                if c.links.contains_key(&chat) {
                    self.end_chat(conn, chat, reason);
                    self.pair_waiting();
                    Ok(())
                } else if c.is_ended_chat(chat) {
                    Ok(())
                } else {
                    Err(CloseCode::UnexpectedFrame)
                }
            }
            // HELLO twice, relay-only frames from an endpoint, chat frames before HELLO.
            _ => Err(CloseCode::UnexpectedFrame),
        }
    }

    fn handle_hello(&mut self, conn: ConnId, version: u8, role: Role) -> Result<(), CloseCode> {
        if version != PROTOCOL_VERSION {
            return Err(CloseCode::UnsupportedVersion);
        }
        let c = self.conns.get_mut(&conn).ok_or(CloseCode::InternalError)?;
        match role {
            Role::Client => {
                self.pairing
                    .enqueue_client(conn)
                    .map_err(|_| CloseCode::Busy)?;
                c.state = State::Client {
                    last_position: None,
                };
            }
            Role::Counsellor => {
                if !matches!(c.credential, Credential::Counsellor { .. }) {
                    return Err(CloseCode::NotAuthorized);
                }
                c.state = State::Counsellor;
                self.pairing.counsellor_free(conn);
            }
        }
        self.send(
            conn,
            &Frame::Welcome {
                version: PROTOCOL_VERSION,
                role,
            },
        );
        self.pair_waiting();
        Ok(())
    }

    /// Pairs while both a client and a counsellor wait, then tells every
    /// waiting client whose position changed.
    fn pair_waiting(&mut self) {
        while let Some((client, counsellor)) = self.pairing.next_pair() {
            let mut id = [0u8; 16];
            self.rng.fill_bytes(&mut id);
            let pairing_id = PairingId(id);
            let (Some(client_chat), Some(counsellor_chat)) =
                (self.issue_chat(client), self.issue_chat(counsellor))
            else {
                continue;
            };
            self.link(client, client_chat, counsellor, counsellor_chat);
            self.link(counsellor, counsellor_chat, client, client_chat);
            if self
                .conns
                .get(&counsellor)
                .is_some_and(|c| c.links.len() < COUNSELLOR_CAPACITY)
            {
                self.pairing.counsellor_free(counsellor);
            }
            self.send(
                client,
                &Frame::Paired {
                    chat: client_chat,
                    pairing_id,
                },
            );
            self.send(
                counsellor,
                &Frame::Paired {
                    chat: counsellor_chat,
                    pairing_id,
                },
            );
        }
        for (index, client) in self.pairing.waiting().into_iter().enumerate() {
            let position = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let changed = match self.conns.get_mut(&client) {
                Some(Conn {
                    state: State::Client { last_position },
                    ..
                }) if *last_position != Some(position) => {
                    *last_position = Some(position);
                    true
                }
                _ => false,
            };
            if changed {
                self.send(client, &Frame::Queued { position });
            }
        }
    }

    fn issue_chat(&mut self, conn: ConnId) -> Option<ChatNumber> {
        let c = self.conns.get_mut(&conn)?;
        let chat = ChatNumber::new(c.next_chat)?;
        c.next_chat = c.next_chat.checked_add(1)?;
        Some(chat)
    }

    fn link(&mut self, conn: ConnId, chat: ChatNumber, peer: ConnId, peer_chat: ChatNumber) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.links.insert(chat, Link { peer, peer_chat });
        }
    }

    /// Ends one chat from `conn`'s side: both links go, the peer is told.
    fn end_chat(&mut self, conn: ConnId, chat: ChatNumber, reason: EndReason) {
        let Some(link) = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.links.remove(&chat))
        else {
            return;
        };
        self.after_chat_left(conn);
        if let Some(peer) = self.conns.get_mut(&link.peer) {
            peer.links.remove(&link.peer_chat);
            self.send(
                link.peer,
                &Frame::End {
                    chat: link.peer_chat,
                    reason,
                },
            );
            self.after_chat_left(link.peer);
        }
    }

    /// A counsellor with room again is offered to the queue.
    fn after_chat_left(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get(&conn)
            && matches!(c.state, State::Counsellor)
            && c.links.len() < COUNSELLOR_CAPACITY
        {
            self.pairing.counsellor_free(conn);
        }
    }

    fn close(&mut self, conn: ConnId, code: CloseCode) {
        if self.conns.contains_key(&conn) {
            self.forget(conn);
            self.out.push_back(Output::Close { conn, code });
        }
    }

    /// Drops every trace of a connection; its chat partners are told.
    fn forget(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let chats: Vec<ChatNumber> = c.links.keys().copied().collect();
        for chat in chats {
            self.end_chat(conn, chat, EndReason::PeerDisconnected);
        }
        self.pairing.remove_client(conn);
        self.pairing.remove_counsellor(conn);
        self.conns.remove(&conn);
        self.pair_waiting();
    }

    fn send(&mut self, conn: ConnId, frame: &Frame) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        let bytes = frame.encode();
        // Coalesce consecutive frames for one connection into one write.
        if let Some(Output::Send {
            conn: last,
            bytes: buf,
        }) = self.out.back_mut()
            && *last == conn
        {
            buf.extend_from_slice(&bytes);
            return;
        }
        self.out.push_back(Output::Send { conn, bytes });
    }
}
