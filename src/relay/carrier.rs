//! What a connection task needs of the transport under a control stream:
//! a connection it can close or wait on ([`Carrier`]), and the stream's two
//! halves as chunks in ([`ChunksIn`]) and bytes out ([`BytesOut`]). Native
//! QUIC implements them here; WebTransport and WebSocket implement them in
//! `web`, and the connection task, the driver and the core do not know
//! which transport they serve.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::core::frame::{EndReason, MAX_FRAME_LEN};
use crate::core::{CloseCode, Departure};

/// The connection under a control stream.
pub(super) trait Carrier: Send + Sync + 'static {
    /// Closes it with one of the relay's close codes (PROTOCOL.md §3.3).
    fn close(&self, code: CloseCode);
    /// Resolves once it is closed, by either side or by the network.
    fn closed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
}

/// Why reading a control stream stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadEnd {
    /// The connection ended (§3.3).
    Departed(Departure),
    /// The transport's own framing was broken (a WebSocket text message,
    /// or a message that is not one whole frame): closed with this code.
    Broken(CloseCode),
}

/// The reading half of a control stream.
pub(super) trait ChunksIn: Send + 'static {
    /// The next bytes read (at most a frame's worth), `Ok(None)` when the
    /// peer finished the stream, or why reading stopped.
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<bytes::Bytes>, ReadEnd>> + Send;
}

/// The writing half of a control stream.
pub(super) trait BytesOut: Send + 'static {
    /// Writes all of `bytes`; false if the stream is gone.
    fn write_all(&mut self, bytes: &[u8]) -> impl Future<Output = bool> + Send;
    /// Ends the stream and waits, at most `wait`, for the peer to take
    /// what was written, so that a close after it does not cut it off.
    fn finish(&mut self, wait: Duration) -> impl Future<Output = ()> + Send;
}

/// A QUIC connection.
pub(super) struct Quic(pub(super) quinn::Connection);

impl Carrier for Quic {
    fn close(&self, code: CloseCode) {
        self.0.close(code.code().into(), code.reason().as_bytes());
    }

    fn closed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let connection = self.0.clone();
        Box::pin(async move {
            connection.closed().await;
        })
    }
}

impl ChunksIn for quinn::RecvStream {
    async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, ReadEnd> {
        match self.read_chunk(MAX_FRAME_LEN, true).await {
            Ok(chunk) => Ok(chunk.map(|c| c.bytes)),
            Err(e) => Err(ReadEnd::Departed(departure_of(&e))),
        }
    }
}

impl BytesOut for quinn::SendStream {
    async fn write_all(&mut self, bytes: &[u8]) -> bool {
        quinn::SendStream::write_all(self, bytes).await.is_ok()
    }

    async fn finish(&mut self, wait: Duration) {
        // The end of the stream tells the peer the close follows.
        let _ = quinn::SendStream::finish(self);
        let _ = tokio::time::timeout(wait, self.stopped()).await;
    }
}

/// How a connection ended, from the error its stream read gave (§3.3).
fn departure_of(error: &quinn::ReadError) -> Departure {
    match error {
        quinn::ReadError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(close)) => {
            Departure::from_application_close(close.error_code.into_inner())
        }
        // A peer that abandons its stream has given up on the chat.
        quinn::ReadError::Reset(_) => Departure::Left(EndReason::PeerDisconnected),
        _ => Departure::Lost,
    }
}
