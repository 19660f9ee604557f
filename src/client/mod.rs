//! The client side, used by the CLI and by tests: a QUIC connection to the
//! relay with its one control stream, and the two chat roles on top.
//!
//! [`connect`] resolves the relay, opens a QUIC connection (ALPN
//! `fluister/1`, no resumption, optionally presenting a counsellor
//! credential) and the control stream. [`RelayStream`] turns that stream
//! into frames in both directions. [`chat`] runs the client and counsellor
//! roles over it, reporting [`chat::ChatEvent`]s.

pub mod anonymous;
pub mod chat;
pub mod counsellor;

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

use crate::core::CloseCode;
use crate::core::frame::{Frame, FrameDecoder, FrameError, MAX_FRAME_LEN};
use crate::relay::tls::{self, TlsError};

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
    /// The relay closed the connection with a protocol close code.
    #[error("relay closed the connection: {0}")]
    Closed(String),
    /// The connection broke.
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
        crate::core::content::MAX_MESSAGE_BYTES
    )]
    MessageTooLong,
    /// The end-to-end check of the counsellor failed; nothing was sent.
    #[error("security check failed, chat aborted before sending anything: {0}")]
    Security(#[from] crate::crypto::e2e::E2eError),
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
}

impl std::fmt::Debug for Reconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reconnect(..)")
    }
}

impl Reconnect {
    /// Tries to connect until it works or the time is up.
    pub async fn connect(&self) -> Option<RelayStream> {
        let deadline = tokio::time::Instant::now() + self.give_up_after;
        while tokio::time::Instant::now() < deadline {
            match connect(self.options.clone()).await {
                Ok(stream) => return Some(stream),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        None
    }
}

fn describe_close(reason: &quinn::ConnectionError) -> ClientError {
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => {
            let text = CloseCode::from_code(close.error_code.into_inner())
                .map(|c| c.reason().to_owned())
                .unwrap_or_else(|| format!("code {}", close.error_code));
            ClientError::Closed(text)
        }
        quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code == quinn::TransportErrorCode::crypto(120) =>
        {
            ClientError::Closed(
                "the relay does not speak protocol fluister/1; please update Fluister".into(),
            )
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
        Ok(Err(quinn::ConnectionError::TransportError(e))) => {
            return Err(unreachable(e.to_string()));
        }
        Ok(Err(e)) => return Err(describe_close(&e)),
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
        Err(quinn::ConnectionError::TransportError(e)) => return Err(unreachable(e.to_string())),
        Err(e) => return Err(describe_close(&e)),
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
                // connection; report the close reason if it comes promptly.
                return match tokio::time::timeout(Duration::from_secs(3), self.connection.closed())
                    .await
                {
                    Ok(reason) => Err(describe_close(&reason)),
                    Err(_) => Ok(None),
                };
            };
            let mut frames = Vec::new();
            self.decoder.push(&chunk.bytes, &mut frames)?;
            self.pending.extend(frames);
        }
    }

    /// Puts a frame back, to be returned by the next [`RelayStream::next`].
    pub(crate) fn unread(&mut self, frame: Frame) {
        self.pending.push_front(frame);
    }

    /// Finishes the stream and closes the connection cleanly, giving the
    /// relay a moment to receive what was sent.
    pub async fn close(mut self) {
        let _ = self.send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.send.stopped()).await;
        self.connection
            .close(CloseCode::NoError.code().into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
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
