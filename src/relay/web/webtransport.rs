//! The WebTransport binding (PROTOCOL.md §3.4.1) as a connection task sees
//! it: a QUIC connection that negotiated ALPN `h3` on the relay's own
//! endpoint becomes a WebTransport session, whose one bidirectional stream
//! carries the frames byte for byte as native QUIC's control stream does.
//!
//! `web-transport-quinn` rather than `wtransport`: it upgrades a
//! `quinn::Connection` the relay has already accepted, so native QUIC and
//! WebTransport share one endpoint, one UDP port, one accept loop and the
//! same admission (per-address limit, retry under a flood). `wtransport`
//! owns its endpoint, which would take a second port or a proxy.
//!
//! Data flow: [`open`] raises the stream limits for HTTP/3 (three
//! unidirectional streams for its control and QPACK streams, and room for
//! a second bidirectional stream so that opening one gets a clear close),
//! reads the CONNECT request, refuses a path other than `/fluister/1`
//! (404) and an `Origin` off the allow-list (403), and accepts the first
//! stream. A watcher closes the session with `UNEXPECTED_FRAME` if the
//! browser opens any further stream. The session's close code is the code
//! of §3.3 itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use web_transport_quinn::{Request, SessionError, WebTransportError};

use crate::core::frame::{EndReason, MAX_FRAME_LEN};
use crate::core::{CloseCode, Departure};
use crate::relay::carrier::{BytesOut, Carrier, ChunksIn, ReadEnd};

/// The HTTP/3 error code for "no error", which a browser uses to close a
/// connection when its page goes away.
const H3_NO_ERROR: u64 = 0x100;

/// Why a WebTransport session was not opened (nothing is logged about it).
#[derive(Debug)]
pub(in crate::relay) enum Refused {
    /// The HTTP/3 handshake or the stream did not come in time, or failed.
    Handshake,
    /// A path other than the version's, answered 404.
    Path,
    /// An `Origin` off the allow-list, answered 403.
    Origin,
}

/// Opens the WebTransport session on an `h3` connection and accepts its one
/// stream.
pub(in crate::relay) async fn open(
    connection: quinn::Connection,
    allowed: &super::Origins,
    timeout: Duration,
) -> Result<(Arc<WtCarrier>, WtIn, WtOut), Refused> {
    connection.set_max_concurrent_uni_streams(3u8.into());
    connection.set_max_concurrent_bi_streams(3u8.into());
    let request = tokio::time::timeout(timeout, Request::accept(connection))
        .await
        .map_err(|_| Refused::Handshake)?
        .map_err(|_| Refused::Handshake)?;
    if request.url.path() != super::PATH {
        let _ = request.reject(http_status(404)).await;
        return Err(Refused::Path);
    }
    let origin = request
        .headers
        .get("origin")
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    if !allowed.allows(origin.as_deref()) {
        let _ = request.reject(http_status(403)).await;
        return Err(Refused::Origin);
    }
    let session = request.ok().await.map_err(|_| Refused::Handshake)?;
    let stream = tokio::time::timeout(timeout, session.accept_bi()).await;
    let Ok(Ok((send, recv))) = stream else {
        session.close(
            CloseCode::Timeout.code(),
            CloseCode::Timeout.reason().as_bytes(),
        );
        return Err(Refused::Handshake);
    };
    tokio::spawn(refuse_more_streams(session.clone()));
    Ok((Arc::new(WtCarrier(session)), WtIn(recv), WtOut(send)))
}

fn http_status(code: u16) -> web_transport_quinn::http::StatusCode {
    web_transport_quinn::http::StatusCode::from_u16(code)
        .unwrap_or(web_transport_quinn::http::StatusCode::BAD_REQUEST)
}

/// Closes the session if the browser opens a second stream of any kind.
async fn refuse_more_streams(session: web_transport_quinn::Session) {
    let extra = tokio::select! {
        bi = session.accept_bi() => bi.is_ok(),
        uni = session.accept_uni() => uni.is_ok(),
        _ = session.closed() => false,
    };
    if extra {
        let code = CloseCode::UnexpectedFrame;
        session.close(code.code(), code.reason().as_bytes());
    }
}

/// The session as a whole.
pub(in crate::relay) struct WtCarrier(web_transport_quinn::Session);

impl Carrier for WtCarrier {
    fn close(&self, code: CloseCode) {
        self.0.close(code.code(), code.reason().as_bytes());
    }

    fn closed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let session = self.0.clone();
        Box::pin(async move {
            session.closed().await;
        })
    }
}

/// How a session ended, from the error its stream read gave (§3.3).
fn departure_of(error: &web_transport_quinn::ReadError) -> Departure {
    use web_transport_quinn::ReadError;
    match error {
        ReadError::SessionError(SessionError::WebTransportError(WebTransportError::Closed(
            code,
            _,
        ))) => Departure::from_application_close(u64::from(*code)),
        ReadError::SessionError(SessionError::ConnectionError(
            quinn::ConnectionError::ApplicationClosed(close),
        )) if close.error_code.into_inner() == H3_NO_ERROR => Departure::Left(EndReason::UserEnded),
        ReadError::Reset(_) => Departure::Left(EndReason::PeerDisconnected),
        _ => Departure::Lost,
    }
}

/// The reading half of the session's stream.
pub(in crate::relay) struct WtIn(web_transport_quinn::RecvStream);

impl ChunksIn for WtIn {
    async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, ReadEnd> {
        match self.0.read_chunk(MAX_FRAME_LEN, true).await {
            Ok(chunk) => Ok(chunk.map(|c| c.bytes)),
            Err(e) => Err(ReadEnd::Departed(departure_of(&e))),
        }
    }
}

/// The writing half of the session's stream.
pub(in crate::relay) struct WtOut(web_transport_quinn::SendStream);

impl BytesOut for WtOut {
    async fn write_all(&mut self, bytes: &[u8]) -> bool {
        self.0.write_all(bytes).await.is_ok()
    }

    async fn finish(&mut self, wait: Duration) {
        let _ = self.0.finish();
        let _ = tokio::time::timeout(wait, self.0.stopped()).await;
    }
}
