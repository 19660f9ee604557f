//! A young person's connection over the web bindings (PROTOCOL.md §3.4), as
//! a browser makes it, for tests and benchmarks: WebSocket over TLS
//! (tokio-tungstenite on tokio-rustls) and WebTransport
//! (web-transport-quinn), each with the request headers the caller chooses
//! (Origin, User-Agent) and an optional local port. Frames go in and out as
//! on native QUIC ([`super::RelayStream`]); the browser's own client is
//! `web/`.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::core::frame::{Frame, FrameDecoder, MAX_FRAME_LEN};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use web_transport_quinn::http;

/// How long [`WebLink::next`] waits before it calls the connection lost.
pub const NEXT_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// How a web connection ended, as a browser would report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebEnd {
    /// Closed with a code (WebSocket: the 4000 + code of §3.4.2 taken off).
    Closed(u32),
    /// Gone without a close.
    Lost,
}

#[allow(clippy::large_enum_variant)]
pub enum WebLink {
    Ws(Box<WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>>),
    Wt {
        session: web_transport_quinn::Session,
        send: web_transport_quinn::SendStream,
        recv: web_transport_quinn::RecvStream,
        decoder: FrameDecoder,
        pending: std::collections::VecDeque<Frame>,
    },
}

fn tls_config(ca: &[CertificateDer<'static>], alpn: &[u8]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        let _ = roots.add(c.clone());
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// Request headers from (name, value) pairs.
fn header_map(headers: &[(&str, &str)]) -> Result<http::HeaderMap, String> {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
        let value = http::HeaderValue::from_str(value).map_err(|e| e.to_string())?;
        map.insert(name, value);
    }
    Ok(map)
}

/// `wss://127.0.0.1:PORT/fluister/1` (or `path`) with these headers.
pub async fn websocket(
    addr: SocketAddr,
    ca: &[CertificateDer<'static>],
    path: &str,
    headers: &[(&str, &str)],
    local_port: Option<u16>,
) -> Result<WebLink, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if let Some(port) = local_port {
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .map_err(|e| e.to_string())?;
    }
    let tcp = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(ca, b"http/1.1")?));
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut request = format!("wss://127.0.0.1:{}{path}", addr.port())
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().extend(header_map(headers)?);
    let (stream, _) = tokio_tungstenite::client_async(request, tls)
        .await
        .map_err(|e| e.to_string())?;
    Ok(WebLink::Ws(Box::new(stream)))
}

/// A WebTransport session to `https://127.0.0.1:PORT/fluister/1` (or
/// `path`) with these headers, and its one stream.
pub async fn webtransport(
    addr: SocketAddr,
    ca: &[CertificateDer<'static>],
    path: &str,
    headers: &[(&str, &str)],
    local_port: Option<u16>,
) -> Result<WebLink, String> {
    let session = webtransport_session(addr, ca, path, headers, local_port).await?;
    let (send, recv) = session.open_bi().await.map_err(|e| e.to_string())?;
    Ok(WebLink::Wt {
        session,
        send,
        recv,
        decoder: FrameDecoder::default(),
        pending: Default::default(),
    })
}

/// The WebTransport session alone (tests that open streams themselves).
pub async fn webtransport_session(
    addr: SocketAddr,
    ca: &[CertificateDer<'static>],
    path: &str,
    headers: &[(&str, &str)],
    local_port: Option<u16>,
) -> Result<web_transport_quinn::Session, String> {
    let bind = SocketAddr::from(([127, 0, 0, 1], local_port.unwrap_or(0)));
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| e.to_string())?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls_config(ca, b"h3")?)
        .map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connection = endpoint
        .connect(addr, "127.0.0.1")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let url: url::Url = format!("https://127.0.0.1:{}{path}", addr.port())
        .parse()
        .map_err(|e: url::ParseError| e.to_string())?;
    let mut request = web_transport_quinn::proto::ConnectRequest::new(url);
    request.headers.extend(header_map(headers)?);
    web_transport_quinn::Session::connect(connection, request)
        .await
        .map_err(|e| e.to_string())
}

impl WebLink {
    pub async fn send(&mut self, frame: &Frame) {
        self.send_raw(&frame.encode()).await;
    }

    /// Bytes as they are: one WebSocket message, or stream bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        match self {
            WebLink::Ws(ws) => {
                let _ = ws.send(Message::Binary(bytes.to_vec().into())).await;
            }
            WebLink::Wt { send, .. } => {
                let _ = send.write_all(bytes).await;
            }
        }
    }

    /// A WebSocket text message.
    pub async fn send_text(&mut self, text: &str) {
        if let WebLink::Ws(ws) = self {
            let _ = ws.send(Message::Text(text.into())).await;
        }
    }

    /// The next frame, or how the connection ended (within [`NEXT_WAIT`]).
    pub async fn next(&mut self) -> Result<Frame, WebEnd> {
        tokio::time::timeout(NEXT_WAIT, self.next_unbounded())
            .await
            .unwrap_or(Err(WebEnd::Lost))
    }

    async fn next_unbounded(&mut self) -> Result<Frame, WebEnd> {
        match self {
            WebLink::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(bytes))) => {
                        // One whole, valid frame per message, or the
                        // relay broke the binding.
                        let mut frames = Vec::new();
                        let decoded = FrameDecoder::default().push(&bytes, &mut frames);
                        if decoded.is_err() || frames.len() != 1 || bytes.len() > MAX_FRAME_LEN {
                            return Err(WebEnd::Lost);
                        }
                        return Ok(frames.remove(0));
                    }
                    Some(Ok(Message::Close(Some(close)))) => {
                        return Err(WebEnd::Closed(u32::from(u16::from(close.code)) - 4000));
                    }
                    Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                        return Err(WebEnd::Lost);
                    }
                    Some(Ok(_)) => continue,
                }
            },
            WebLink::Wt {
                session,
                recv,
                decoder,
                pending,
                ..
            } => loop {
                if let Some(frame) = pending.pop_front() {
                    return Ok(frame);
                }
                match recv.read_chunk(MAX_FRAME_LEN, true).await {
                    Ok(Some(chunk)) => {
                        let mut frames = Vec::new();
                        let decoded = decoder.push(&chunk.bytes, &mut frames);
                        pending.extend(frames);
                        if decoded.is_err() {
                            return Err(WebEnd::Lost);
                        }
                    }
                    _ => return Err(session_end(session).await),
                }
            },
        }
    }

    /// Leaves as a page does when the person ends the chat: a close with
    /// `NO_ERROR`.
    pub async fn leave(&mut self) {
        match self {
            WebLink::Ws(ws) => {
                let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: 4000.into(),
                    reason: "left".into(),
                };
                let _ = ws.send(Message::Close(Some(frame))).await;
                while let Some(Ok(_)) = ws.next().await {}
            }
            WebLink::Wt { session, .. } => {
                session.close(0, b"left");
                let _ = session.closed().await;
            }
        }
    }
}

/// How a WebTransport session ended.
pub async fn session_end(session: &web_transport_quinn::Session) -> WebEnd {
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), session.closed()).await;
    match closed {
        Ok(web_transport_quinn::SessionError::WebTransportError(
            web_transport_quinn::WebTransportError::Closed(code, _),
        )) => WebEnd::Closed(code),
        _ => WebEnd::Lost,
    }
}
