//! The browser's ways in (PROTOCOL.md §3.4): WebTransport on the relay's
//! QUIC endpoint (`webtransport`), and WebSocket plus the young person's
//! page over TLS on the same port number over TCP (this module,
//! `websocket`, `page`). Both bindings end in the same connection task as
//! native QUIC, through `carrier`'s traits; the core never learns which
//! transport a connection uses.
//!
//! TCP data flow: the accept loop admits a connection (the per-address
//! limit, and a cap on open TCP connections), a task of its own does the
//! TLS handshake (the web config: never a client-certificate request) and
//! serves HTTP/1.1 with hyper. `GET /fluister/1` with an allowed `Origin`
//! upgrades to a WebSocket, whose connection task is the native one;
//! every other path is the page or 404. Every response carries
//! `Cache-Control: no-store` and `Referrer-Policy: no-referrer`, and none
//! sets a cookie. No request line, header or address is logged or kept:
//! the `Origin` is compared and dropped, and nothing else is read.
//!
//! A loopback-only plain-HTTP listener (`web.loopback_http`) serves the
//! same routes without TLS, for the demo: a page on a loopback origin is a
//! secure context, so a stock browser runs it without a certificate
//! warning.

pub(super) mod page;
pub(super) mod websocket;
pub(super) mod webtransport;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::extract::{Request, State, WebSocketUpgrade};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::core::frame::MAX_FRAME_LEN;
use crate::core::ratelimit::{KeyedLimiter, SourceTag};
use crate::core::relay::Credential;

use super::{Event, Peer, TaskSettings};

/// The path of this protocol version on both web transports (§3.4).
pub const PATH: &str = "/fluister/1";

/// How long a TCP connection may take for its TLS handshake and for each
/// request's headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `Origin` allow-list (`web_origins`): empty allows any origin.
#[derive(Debug, Clone, Default)]
pub(super) struct Origins(Arc<[String]>);

impl Origins {
    pub(super) fn new(list: &[String]) -> Origins {
        Origins(list.iter().cloned().collect())
    }

    /// Whether a request with this `Origin` may open a web transport. A
    /// request without one (not a browser page) is allowed only when the
    /// list is empty.
    pub(super) fn allows(&self, origin: Option<&str>) -> bool {
        self.0.is_empty() || origin.is_some_and(|o| self.0.iter().any(|a| a == o))
    }
}

/// The relay's TCP TLS config, swapped by the reloader.
pub(super) type TcpTls = Arc<RwLock<Arc<rustls::ServerConfig>>>;

/// What every web connection needs: the connection tasks' settings and
/// the driver, the allow-list, the source limiter and the page.
#[derive(Clone)]
pub(super) struct WebContext {
    pub events: mpsc::Sender<Event>,
    pub settings: TaskSettings,
    pub origins: Origins,
    pub per_address: Option<Arc<Mutex<KeyedLimiter>>>,
    pub page: Option<Arc<page::Site>>,
    pub idle_timeout: Duration,
    pub keep_alive: Duration,
    /// Open TCP connections, bounded like QUIC's incoming connections.
    pub tcp_slots: Arc<Semaphore>,
}

/// Which listener a request came in on: it decides the page's config.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Listener {
    Tls,
    LoopbackHttp,
}

/// A request's connection: its listener and its source's tag.
#[derive(Clone)]
struct ConnInfo {
    listener: Listener,
    source: Option<SourceTag>,
}

/// Serves `listener` until `shutdown`: TLS if `tls` is given, else plain
/// HTTP (loopback only; the config refuses anything else).
pub(super) fn serve_tcp(
    listener: TcpListener,
    tls: Option<TcpTls>,
    context: WebContext,
    mut shutdown: watch::Receiver<bool>,
) {
    let kind = if tls.is_some() {
        Listener::Tls
    } else {
        Listener::LoopbackHttp
    };
    let router = router(context.clone());
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            // Accept errors (out of file descriptors) carry no address;
            // wait a moment rather than spin.
            let Ok((tcp, peer)) = accepted else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(slot) = context.tcp_slots.clone().try_acquire_owned() else {
                context.settings.metrics.refused_attempt();
                continue;
            };
            let mut source = None;
            if let Some(limiter) = &context.per_address {
                let bytes = super::source_bytes(peer.ip());
                let mut limiter = limiter.lock().unwrap_or_else(|e| e.into_inner());
                let (tag, allowed) =
                    limiter.check(&bytes, std::time::Instant::now(), &mut rand_core::OsRng);
                if !allowed {
                    context.settings.metrics.refused_attempt();
                    continue;
                }
                source = Some(tag);
            }
            let _ = tcp.set_nodelay(true);
            let info = ConnInfo {
                listener: kind,
                source,
            };
            let tls = tls
                .as_ref()
                .map(|t| t.read().unwrap_or_else(|e| e.into_inner()).clone());
            let router = router.clone();
            tokio::spawn(async move {
                let _slot = slot;
                match tls {
                    Some(config) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(config);
                        let handshake =
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                        if let Ok(Ok(stream)) = handshake {
                            serve_http(stream, router, info).await;
                        }
                    }
                    None => serve_http(tcp, router, info).await,
                }
            });
        }
    });
}

/// HTTP/1.1 on one connection, with upgrades for the WebSocket.
async fn serve_http<S>(stream: S, router: Router, info: ConnInfo)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(info.clone());
        let mut router = router.clone();
        async move {
            let response =
                tower_service::Service::call(&mut router, request.map(axum::body::Body::new)).await;
            Ok::<_, std::convert::Infallible>(response.unwrap_or_else(|e| match e {}))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

fn router(context: WebContext) -> Router {
    Router::new()
        .route(PATH, get(websocket_upgrade))
        .route("/", get(page::index))
        .route("/config.json", get(page::config))
        .route("/{*file}", get(page::file))
        .layer(axum::middleware::map_response(privacy_headers))
        .with_state(context)
}

/// The headers every response carries (module doc).
async fn privacy_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.remove(header::SET_COOKIE);
    response
}

/// `GET /fluister/1`: the WebSocket binding.
async fn websocket_upgrade(
    State(context): State<WebContext>,
    Extension(info): Extension<ConnInfo>,
    headers: axum::http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if !context.origins.allows(origin) {
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    let source = info.source;
    upgrade
        .max_message_size(MAX_FRAME_LEN)
        .max_frame_size(MAX_FRAME_LEN)
        .on_failed_upgrade(|_| {})
        .on_upgrade(move |socket| async move {
            let (carrier, recv, send) =
                websocket::split(socket, context.idle_timeout, context.keep_alive);
            let peer = Peer {
                credential: Credential::Anonymous,
                serial: None,
                source,
            };
            super::serve(carrier, recv, send, peer, context.events, context.settings).await;
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_allow_list_allows_any_origin_and_a_list_only_its_own() {
        let any = Origins::new(&[]);
        assert!(any.allows(Some("https://example.org")) && any.allows(None));
        let list = Origins::new(&["https://hulp.example".into()]);
        assert!(list.allows(Some("https://hulp.example")));
        assert!(!list.allows(Some("https://evil.example")));
        assert!(!list.allows(Some("https://hulp.example.evil.example")));
        assert!(!list.allows(None));
    }
}
