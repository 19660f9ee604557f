//! The client side, used by the CLI and by tests: a QUIC connection to the
//! relay with its one control stream, and the two chat roles on top.
//!
//! [`connect`] resolves the relay, opens a QUIC connection (ALPN
//! `fluister/1`, no resumption, optionally presenting a counsellor
//! credential) and the control stream. [`RelayStream`] turns that stream
//! into frames in both directions. The chat roles are sans-IO state
//! machines ([`machine`]) that one tokio driver ([`driver`]) runs over it,
//! reporting [`chat::ChatEvent`]s.

pub mod chat;
pub mod driver;
pub mod machine;
pub mod web;

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

use crate::core::frame::{Frame, FrameDecoder, FrameError, MAX_FRAME_LEN};
use crate::core::{CloseCode, EndpointClose};
use crate::tls::{self, TlsError};

/// Why talking to the relay failed. The texts are what a user sees.
#[derive(Debug, Error)]
pub enum ClientError {
    /// `--relay` is not HOST:PORT or does not resolve.
    #[error("cannot resolve relay address {0}")]
    Resolve(String),
    /// No QUIC connection could be made in time.
    #[error("cannot reach relay at {target}: {reason}")]
    Unreachable { target: String, reason: String },
    /// TLS material (CA, credential) is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The relay closed the connection with one of the protocol's close
    /// codes (PROTOCOL.md §3.3); the text is what a frontend shows.
    #[error("{}", close_text(*.0))]
    Closed(CloseCode),
    /// The relay closed the connection with a code this version does not know.
    #[error("the relay closed the connection (code {0})")]
    ClosedUnknown(u64),
    /// The relay refused this counsellor's sign-in credential during the
    /// TLS handshake.
    #[error("the relay refused your sign-in: {0}")]
    CredentialRefused(&'static str),
    /// The relay's certificate did not verify: a wrong `--ca`, or not the
    /// real relay.
    #[error("the relay's certificate was not accepted ({0}); check --ca and the relay address")]
    RelayNotTrusted(String),
    /// The relay speaks no protocol version this client speaks.
    #[error("the relay does not speak protocol fluister/1; please update Fluister")]
    NoCommonVersion,
    /// The connection broke (timeout, reset, network).
    #[error("connection to relay lost: {0}")]
    Lost(String),
    /// The relay sent bytes that are not a valid frame.
    #[error("relay sent a malformed frame: {0}")]
    BadFrame(#[from] FrameError),
    /// The relay sent a frame that makes no sense now.
    #[error("relay sent an unexpected frame")]
    UnexpectedFrame,
    /// The relay speaks another protocol version.
    #[error("the relay speaks protocol version {0}; please update Fluister")]
    Version(u8),
    /// The relay does not offer what was asked for (topic, language).
    #[error("{0}")]
    Request(String),
    /// A message longer than the protocol allows; it was not sent.
    #[error(
        "message too long: at most {} bytes",
        crate::crypto::content::MAX_MESSAGE_BYTES
    )]
    MessageTooLong,
    /// An end-to-end check failed; the chat was aborted.
    #[error("security check failed, chat aborted: {0}")]
    Security(#[from] crate::crypto::e2e::E2eError),
}

/// What a frontend shows for a close code (PROTOCOL.md §3.3).
pub fn close_text(code: CloseCode) -> &'static str {
    match code {
        CloseCode::NoError => "the relay closed the connection",
        CloseCode::MalformedFrame
        | CloseCode::FrameTooLarge
        | CloseCode::UnexpectedFrame
        | CloseCode::SlowConsumer => "connection error",
        CloseCode::UnsupportedVersion => "please update Fluister: the relay speaks a newer version",
        CloseCode::NotAuthorized => "sign-in refused",
        CloseCode::Busy => "the helpline is very busy; try again later",
        CloseCode::Timeout => "connection error (timeout); try again",
        CloseCode::ShuttingDown => "the service is restarting; try again in a moment",
        CloseCode::InternalError => "the relay had a problem; try again",
        CloseCode::ProofOfWorkFailed => "connection error (proof of work); try again",
        CloseCode::Revoked => "your sign-in was revoked by the helpline",
        CloseCode::Draining => "the relay is moving you to another one",
    }
}

impl ClientError {
    /// Whether trying again cannot help: the relay or the helpline said no,
    /// or this client cannot talk to it. Such an error ends the client at
    /// once with its own message.
    pub fn is_final(&self) -> bool {
        match self {
            ClientError::Closed(code) => matches!(
                code,
                CloseCode::Revoked
                    | CloseCode::NotAuthorized
                    | CloseCode::UnsupportedVersion
                    | CloseCode::ProofOfWorkFailed
                    | CloseCode::MalformedFrame
                    | CloseCode::FrameTooLarge
                    | CloseCode::UnexpectedFrame
            ),
            ClientError::CredentialRefused(_)
            | ClientError::RelayNotTrusted(_)
            | ClientError::NoCommonVersion
            | ClientError::Tls(_)
            | ClientError::Resolve(_)
            | ClientError::BadFrame(_)
            | ClientError::UnexpectedFrame
            | ClientError::Version(_)
            | ClientError::Request(_)
            | ClientError::Security(_) => true,
            ClientError::ClosedUnknown(_)
            | ClientError::Unreachable { .. }
            | ClientError::Lost(_)
            | ClientError::MessageTooLong => false,
        }
    }

    /// A stable snake_case name for `--json` error events.
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::Closed(code) => code.name(),
            ClientError::ClosedUnknown(_) => "closed",
            ClientError::CredentialRefused(_) => "credential_refused",
            ClientError::RelayNotTrusted(_) => "relay_not_trusted",
            ClientError::NoCommonVersion | ClientError::Version(_) => "unsupported_version",
            ClientError::Resolve(_) | ClientError::Unreachable { .. } => "unreachable",
            ClientError::Tls(_) => "tls",
            ClientError::Lost(_) => "lost",
            ClientError::BadFrame(_) | ClientError::UnexpectedFrame => "protocol_error",
            ClientError::Request(_) => "request",
            ClientError::MessageTooLong => "message_too_long",
            ClientError::Security(_) => "security_failure",
        }
    }
}

/// What to connect to and how to prove who we are.
pub struct ConnectOptions {
    /// `HOST:PORT` as the user gave it.
    pub relay: String,
    /// Certificates to trust for the relay; `None` = public web PKI.
    pub ca: Option<Vec<CertificateDer<'static>>>,
    /// A counsellor's relay credential.
    pub credential: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// How long to try before giving up.
    pub connect_timeout: Duration,
    /// Local UDP address to use; `None` = any port (the normal case).
    pub bind: Option<SocketAddr>,
}

impl Clone for ConnectOptions {
    fn clone(&self) -> Self {
        ConnectOptions {
            relay: self.relay.clone(),
            ca: self.ca.clone(),
            credential: self
                .credential
                .as_ref()
                .map(|(chain, key)| (chain.clone(), key.clone_key())),
            connect_timeout: self.connect_timeout,
            bind: self.bind,
        }
    }
}

/// How a role reconnects to resume its chats when its connection drops.
#[derive(Clone)]
pub struct Reconnect {
    pub options: ConnectOptions,
    /// Give up resuming after this long (the relay's resume window).
    pub give_up_after: Duration,
    /// Other addresses of the same service (`HOST:PORT`), tried in turn
    /// after `options.relay` when a connection attempt fails.
    pub alternates: Vec<String>,
}

impl std::fmt::Debug for Reconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reconnect(..)")
    }
}

impl Reconnect {
    /// The relay addresses to try in turn: the first one, then the others.
    pub fn addresses(&self) -> Vec<String> {
        std::iter::once(self.options.relay.clone())
            .chain(self.alternates.iter().cloned())
            .collect()
    }
}

/// How long a leaving endpoint waits for the relay's close after it
/// finished its stream (PROTOCOL.md §7.1).
pub const LEAVE_WAIT: Duration = Duration::from_secs(3);

/// TLS alerts (RFC 8446 §6) a relay sends when it refuses a client
/// certificate, and what they mean to a counsellor.
fn credential_alert(alert: u8) -> Option<&'static str> {
    Some(match alert {
        44 => "your credential was revoked by the helpline",
        45 => "your credential has expired; ask the helpline to renew it",
        // bad, unsupported or unknown certificate, unknown CA, access
        // denied, decode or signature errors, certificate required
        42 | 43 | 46 | 48 | 49 | 50 | 51 | 116 => {
            "your credential was not accepted (not issued by this helpline, or damaged)"
        }
        _ => return None,
    })
}

/// Why the QUIC handshake failed: what the relay (or our TLS stack) said,
/// or, when nothing was said, that the relay could not be reached.
fn handshake_failed(
    error: &quinn::ConnectionError,
    unreachable: impl Fn(String) -> ClientError,
) -> ClientError {
    match describe_close(error) {
        ClientError::Lost(reason) => unreachable(reason),
        other => other,
    }
}

fn describe_close(reason: &quinn::ConnectionError) -> ClientError {
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => {
            let code = close.error_code.into_inner();
            CloseCode::from_code(code).map_or(ClientError::ClosedUnknown(code), ClientError::Closed)
        }
        // The relay's TLS stack refused what we presented.
        quinn::ConnectionError::ConnectionClosed(c) => {
            let raw = u64::from(c.error_code);
            if c.error_code == quinn::TransportErrorCode::crypto(120) {
                ClientError::NoCommonVersion
            } else if let Some(text) = (0x100..0x200)
                .contains(&raw)
                .then(|| credential_alert((raw - 0x100) as u8))
                .flatten()
            {
                ClientError::CredentialRefused(text)
            } else {
                ClientError::Lost(c.to_string())
            }
        }
        // Our TLS stack refused the relay's certificate.
        quinn::ConnectionError::TransportError(e)
            if (0x100..0x200).contains(&u64::from(e.code)) =>
        {
            ClientError::RelayNotTrusted(e.reason.clone())
        }
        quinn::ConnectionError::Reset => {
            ClientError::Lost("the relay restarted and no longer knows this connection".into())
        }
        other => ClientError::Lost(other.to_string()),
    }
}

/// Splits `HOST:PORT`, resolves it, and returns the address with the name
/// to check in the relay's certificate.
pub async fn resolve(relay: &str) -> Result<(SocketAddr, String), ClientError> {
    let host = match relay.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        _ => {
            return Err(ClientError::Resolve(format!(
                "{relay} (expected HOST:PORT)"
            )));
        }
    };
    let addr = tokio::net::lookup_host(relay)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ClientError::Resolve(relay.to_owned()))?;
    Ok((addr, host))
}

/// A connection to the relay with its control stream.
pub struct RelayStream {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    pending: std::collections::VecDeque<Frame>,
}

/// Connects and opens the control stream.
pub async fn connect(options: ConnectOptions) -> Result<RelayStream, ClientError> {
    let (addr, server_name) = resolve(&options.relay).await?;
    let transport = tls::transport_config(tls::TransportSizes::default());
    let config = tls::client_config(options.ca, options.credential, transport)?;
    let bind: SocketAddr = match options.bind {
        Some(bind) => bind,
        None if addr.is_ipv4() => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        None => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let unreachable = |reason: String| ClientError::Unreachable {
        target: options.relay.clone(),
        reason,
    };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| unreachable(e.to_string()))?;
    endpoint.set_default_client_config(config);
    let connecting = endpoint
        .connect(addr, &server_name)
        .map_err(|e| unreachable(e.to_string()))?;
    let connection = match tokio::time::timeout(options.connect_timeout, connecting).await {
        Err(_) => return Err(unreachable("timed out".into())),
        Ok(Err(e)) => return Err(handshake_failed(&e, unreachable)),
        Ok(Ok(c)) => c,
    };
    open_control_stream(endpoint, connection).await
}

/// Connects over an endpoint shared by many connections (load tests); the
/// TLS config is `config`, or the endpoint's default.
pub async fn connect_on(
    endpoint: &quinn::Endpoint,
    relay: SocketAddr,
    server_name: &str,
    config: Option<quinn::ClientConfig>,
) -> Result<RelayStream, ClientError> {
    let unreachable = |reason: String| ClientError::Unreachable {
        target: relay.to_string(),
        reason,
    };
    let connecting = match config {
        Some(config) => endpoint.connect_with(config, relay, server_name),
        None => endpoint.connect(relay, server_name),
    }
    .map_err(|e| unreachable(e.to_string()))?;
    let connection = match connecting.await {
        Err(e) => return Err(handshake_failed(&e, unreachable)),
        Ok(c) => c,
    };
    open_control_stream(endpoint.clone(), connection).await
}

async fn open_control_stream(
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
) -> Result<RelayStream, ClientError> {
    let (send, recv) = connection.open_bi().await.map_err(|e| describe_close(&e))?;
    Ok(RelayStream {
        endpoint,
        connection,
        send,
        recv,
        decoder: FrameDecoder::default(),
        pending: Default::default(),
    })
}

impl RelayStream {
    /// Sends one frame.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), ClientError> {
        self.send_raw(&frame.encode()).await
    }

    /// Sends raw bytes on the control stream (tests use this to misbehave).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send.write_all(bytes).await.map_err(|e| match e {
            quinn::WriteError::ConnectionLost(c) => describe_close(&c),
            other => ClientError::Lost(other.to_string()),
        })
    }

    /// The next frame from the relay. `Ok(None)` when the relay finished the
    /// stream; an error when it closed the connection (with its reason).
    /// Cancel-safe: a frame is never lost when this future is dropped.
    pub async fn next(&mut self) -> Result<Option<Frame>, ClientError> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Ok(Some(frame));
            }
            let chunk = self
                .recv
                .read_chunk(MAX_FRAME_LEN, true)
                .await
                .map_err(|e| match e {
                    quinn::ReadError::ConnectionLost(c) => describe_close(&c),
                    other => ClientError::Lost(other.to_string()),
                })?;
            let Some(chunk) = chunk else {
                // The relay finishes the stream just before it closes the
                // connection (§3.3): report the close code, not a loss.
                return match tokio::time::timeout(LEAVE_WAIT, self.connection.closed()).await {
                    Ok(reason) => Err(describe_close(&reason)),
                    Err(_) => Ok(None),
                };
            };
            let mut frames = Vec::new();
            self.decoder.push(&chunk.bytes, &mut frames)?;
            self.pending.extend(frames);
        }
    }

    /// Leaves on purpose and without losing what was sent (PROTOCOL.md
    /// §7.1): finishes the stream, waits (at most [`LEAVE_WAIT`]) for the
    /// relay, which acts on everything before the end of the stream and
    /// then closes, and closes with NO_ERROR ("left") in any case.
    pub async fn leave(&mut self) {
        self.finish_and_close(EndpointClose::Left).await;
    }

    /// Leaves at once (a quick exit): closes with NO_ERROR, which the relay
    /// takes as "left" even if frames sent just before are lost with it.
    pub async fn quick_exit(&mut self) {
        self.close_now(EndpointClose::Left).await;
    }

    /// Aborts after an end-to-end check failed: END(SECURITY_FAILURE) has
    /// been sent; the close code says the same should END be lost.
    pub async fn abort_security(&mut self) {
        self.finish_and_close(EndpointClose::SecurityFailure).await;
    }

    async fn finish_and_close(&mut self, how: EndpointClose) {
        let _ = self.send.finish();
        let _ = tokio::time::timeout(LEAVE_WAIT, self.connection.closed()).await;
        self.close_now(how).await;
    }

    async fn close_now(&self, how: EndpointClose) {
        self.connection.close(how.code().into(), b"bye");
        // Give the endpoint a moment to send the close.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    /// The QUIC connection, for tests that inspect close codes.
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// The local QUIC endpoint; moving it to a new socket
    /// (`Endpoint::rebind`) migrates the connection, as a phone does when it
    /// changes network.
    pub fn endpoint(&self) -> quinn::Endpoint {
        self.endpoint.clone()
    }
}

/// A connection dropped without [`RelayStream::leave`] or a quick exit is
/// given up for another one: RECONNECTING tells the relay to keep its chats
/// for a RESUME (PROTOCOL.md §3.3). On a closed connection this does nothing.
impl Drop for RelayStream {
    fn drop(&mut self) {
        self.connection
            .close(EndpointClose::Reconnecting.code().into(), b"reconnecting");
    }
}
