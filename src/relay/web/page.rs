//! The young person's page, served by the relay (`[web]` in the config).
//!
//! The files are the built page in `web/dist/` (compiled into the binary)
//! or, with `web.page_dir`, a folder of the operator's. `config.json` is
//! made here from the relay's config: the organisation's name and key, the
//! exit URL, the default language, where the relay is, and the hash of a
//! short-lived certificate for WebTransport to pin. HTML gets a strict
//! Content-Security-Policy that allows the page's own files and the relay
//! and nothing else.

use std::path::{Path, PathBuf};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{ConnInfo, Listener, PATH, WebContext};

/// The built page, compiled in.
const EMBEDDED: &[(&str, &[u8])] = &[
    ("index.html", include_bytes!("../../../web/dist/index.html")),
    ("app.js", include_bytes!("../../../web/dist/app.js")),
    (
        "pow-worker.js",
        include_bytes!("../../../web/dist/pow-worker.js"),
    ),
    ("style.css", include_bytes!("../../../web/dist/style.css")),
    (
        "i18n/nl.json",
        include_bytes!("../../../web/dist/i18n/nl.json"),
    ),
    (
        "i18n/en.json",
        include_bytes!("../../../web/dist/i18n/en.json"),
    ),
    (
        "i18n/languages.json",
        include_bytes!("../../../web/dist/i18n/languages.json"),
    ),
];

/// The largest file served from `page_dir`.
const MAX_FILE_BYTES: u64 = 8 << 20;

/// What the page's `config.json` says (web/README.md documents it).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PageConfig {
    organisation: String,
    org_key: Option<String>,
    exit_url: String,
    default_language: String,
    /// Empty: the relay the page came from (`https://` and `wss://` on its host).
    relays: Vec<RelayUrls>,
    /// SHA-256 of the relay's certificate, base64, when it is short-lived
    /// enough for browsers to pin (at most 14 days).
    certificate_hashes: Vec<String>,
}

#[derive(Serialize)]
struct RelayUrls {
    /// Absent: the host the page came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    webtransport: Option<String>,
    /// Absent: the host the page came from (`ws:` or `wss:` as the page).
    #[serde(skip_serializing_if = "Option::is_none")]
    websocket: Option<String>,
}

impl RelayUrls {
    /// Another relay of the service (`[web] relays`), over TLS.
    fn other(host_port: &str) -> RelayUrls {
        RelayUrls {
            webtransport: Some(format!("https://{host_port}{PATH}")),
            websocket: Some(format!("wss://{host_port}{PATH}")),
        }
    }
}

/// The page as one relay serves it.
pub(in crate::relay) struct Site {
    dir: Option<PathBuf>,
    /// config.json and the CSP for each listener.
    tls: Served,
    loopback: Option<Served>,
}

struct Served {
    config: String,
    csp: HeaderValue,
}

/// Where the relay is, for the page's config.
pub(in crate::relay) struct Addresses {
    /// The UDP address (WebTransport).
    pub udp: std::net::SocketAddr,
    /// The plain loopback listener, if any.
    pub loopback_http: Option<std::net::SocketAddr>,
}

impl Site {
    pub(in crate::relay) fn new(
        web: &crate::config::WebConfig,
        addresses: &Addresses,
        certificate_hashes: Vec<String>,
    ) -> Site {
        // The page tries its own relay first, then the others in turn.
        let others = || web.relays.iter().map(|r| RelayUrls::other(r));
        let others_csp: String = (web.relays.iter())
            .map(|r| format!(" https://{r} wss://{r}"))
            .collect();
        let config = |relays: Vec<RelayUrls>| {
            serde_json::to_string(&PageConfig {
                organisation: web.organisation.clone(),
                org_key: web.org_key.clone(),
                exit_url: web.exit_url.clone(),
                default_language: web.default_language.clone(),
                relays,
                certificate_hashes: certificate_hashes.clone(),
            })
            .unwrap_or_default()
        };
        let csp = |connect: &str| {
            let policy = format!(
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                 connect-src 'self'{connect}; worker-src 'self'; manifest-src 'none'; \
                 base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            );
            HeaderValue::from_str(&policy)
                .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
        };
        let loopback = addresses.loopback_http.map(|http| {
            let host = match http.ip() {
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            };
            let webtransport = format!("https://{host}:{}", addresses.udp.port());
            Served {
                // WebSocket on the host the page came from, so that the
                // page also works behind a proxy on another port.
                config: config(
                    std::iter::once(RelayUrls {
                        webtransport: Some(format!("{webtransport}{PATH}")),
                        websocket: None,
                    })
                    .chain(others())
                    .collect(),
                ),
                csp: csp(&format!(" {webtransport}{others_csp}")),
            }
        });
        Site {
            dir: web.page_dir.clone(),
            tls: Served {
                config: config(match web.relays.is_empty() {
                    true => Vec::new(),
                    false => std::iter::once(RelayUrls {
                        webtransport: None,
                        websocket: None,
                    })
                    .chain(others())
                    .collect(),
                }),
                csp: csp(&others_csp),
            },
            loopback,
        }
    }

    fn served(&self, listener: Listener) -> &Served {
        match (listener, &self.loopback) {
            (Listener::LoopbackHttp, Some(served)) => served,
            _ => &self.tls,
        }
    }

    /// A page file by its path below the page's root.
    fn read(&self, name: &str) -> Option<Vec<u8>> {
        if !safe_name(name) {
            return None;
        }
        match &self.dir {
            None => EMBEDDED
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, bytes)| bytes.to_vec()),
            Some(dir) => read_limited(&dir.join(name)),
        }
    }
}

/// A path of plain names (letters, digits, `-`, `_`, `.`) joined by `/`,
/// none of them starting with a dot: nothing outside the page's folder.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
}

fn read_limited(path: &Path) -> Option<Vec<u8>> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
        return None;
    }
    std::fs::read(path).ok()
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn listener_of(request: &Request) -> Listener {
    request
        .extensions()
        .get::<ConnInfo>()
        .map(|i| i.listener)
        .unwrap_or(Listener::Tls)
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// Serves one file, with the CSP on HTML.
fn respond(site: &Site, listener: Listener, name: &str) -> Response {
    let Some(bytes) = site.read(name) else {
        return not_found();
    };
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(name)),
        )],
        bytes,
    )
        .into_response();
    if name.ends_with(".html") {
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            site.served(listener).csp.clone(),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            "cross-origin-opener-policy",
            HeaderValue::from_static("same-origin"),
        );
    }
    response
}

/// `GET /`.
pub(super) async fn index(State(context): State<WebContext>, request: Request) -> Response {
    match &context.page {
        Some(site) => respond(site, listener_of(&request), "index.html"),
        None => not_found(),
    }
}

/// `GET /config.json`.
pub(super) async fn config(State(context): State<WebContext>, request: Request) -> Response {
    match &context.page {
        Some(site) => (
            [(header::CONTENT_TYPE, "application/json")],
            site.served(listener_of(&request)).config.clone(),
        )
            .into_response(),
        None => not_found(),
    }
}

/// `GET /<file>`.
pub(super) async fn file(State(context): State<WebContext>, request: Request) -> Response {
    let name = request.uri().path().trim_start_matches('/').to_owned();
    match &context.page {
        Some(site) => respond(site, listener_of(&request), &name),
        None => not_found(),
    }
}

/// The SHA-256 hash (base64) of a certificate valid for at most 14 days,
/// which browsers accept in `serverCertificateHashes`.
pub(in crate::relay) fn pinnable_hashes(
    chain: &[rustls::pki_types::CertificateDer<'_>],
) -> Vec<String> {
    use base64::Engine as _;
    let Some(leaf) = chain.first() else {
        return Vec::new();
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return Vec::new();
    };
    let validity = cert.validity();
    if validity.not_after.timestamp() - validity.not_before.timestamp() > 14 * 86_400 {
        return Vec::new();
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
    vec![base64::engine::general_purpose::STANDARD.encode(digest.as_ref())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_inside_the_folder_are_served() {
        for good in ["index.html", "i18n/nl.json", "app.js"] {
            assert!(safe_name(good), "{good}");
        }
        for bad in [
            "",
            "../etc/passwd",
            "i18n/../../x",
            ".env",
            "a//b",
            "/abs",
            "a\\b",
            "%2e%2e/x",
        ] {
            assert!(!safe_name(bad), "{bad}");
        }
    }
}
