//! Who may use the console's web UI: the guard every request passes.
//!
//! The console listens on loopback, where any web page the counsellor has
//! open could send it requests, and any local process could connect. So:
//!
//! - **A one-time link.** The console prints `http://HOST:PORT/?token=T`
//!   (32 random bytes). The first request with `T` gets a session cookie
//!   (`HttpOnly`, `SameSite=Strict`, no expiry: gone with the browser) and a
//!   redirect to `/`; `T` is then spent. Every other request, the page's
//!   files and the live connection alike, needs that cookie. A new link
//!   (Enter in the console's terminal) replaces both, so that a link left
//!   in a history or a scrollback opens nothing.
//! - **`Host`** must name the address the console listens on (`127.0.0.1`,
//!   `localhost` or `[::1]` with its port): a DNS-rebinding page reaches
//!   the console under a foreign name, and is refused.
//! - **`Origin`**, when sent (always for the live connection), must be the
//!   console's own; `Sec-Fetch-Site: cross-site` is refused too. No CORS
//!   header is ever sent, and only `GET` is answered.
//!
//! Tokens are compared through their SHA-256 digests, so that the time a
//! comparison takes says nothing about the secret.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, Method, StatusCode, header};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The name of the session cookie, with the port: cookies are not kept
/// apart by port.
pub fn cookie_name(port: u16) -> String {
    format!("fluister_console_{port}")
}

/// What the guard decides for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Pass,
    /// The one-time link: set this cookie and send the browser to `/`.
    StartSession { cookie: String },
    /// Refuse it, with the status and a line that says why.
    Refuse(StatusCode, &'static str),
}

/// The console's secrets and the names it answers to.
pub struct Guard {
    port: u16,
    hosts: Vec<String>,
    /// The link's token, until it is used.
    token: Option<Zeroizing<String>>,
    /// The session the link started, if any.
    session: Option<Zeroizing<String>>,
}

/// 32 random bytes as 64 hex digits.
fn random_secret() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(bytes.as_mut());
    Zeroizing::new(hex::encode(bytes.as_ref()))
}

fn same_secret(given: &str, secret: &str) -> bool {
    Sha256::digest(given.as_bytes()) == Sha256::digest(secret.as_bytes())
}

impl Guard {
    /// A guard for a console listening on `addr`; nothing opens it until
    /// [`Guard::new_link`].
    pub fn new(addr: SocketAddr) -> Guard {
        let port = addr.port();
        let mut hosts = match addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => vec![format!("{ip}:{port}")],
            IpAddr::V6(ip) if ip.is_loopback() => vec![format!("[{ip}]:{port}")],
            IpAddr::V4(ip) => vec![format!("{ip}:{port}")],
            IpAddr::V6(ip) => vec![format!("[{ip}]:{port}")],
        };
        if addr.ip().is_loopback() {
            hosts.push(format!("localhost:{port}"));
        }
        Guard {
            port,
            hosts,
            token: None,
            session: None,
        }
    }

    /// The link to open: a fresh token, which also ends the session the
    /// last link started.
    pub fn new_link(&mut self) -> String {
        let token = random_secret();
        let link = format!("http://{}/?token={}", self.hosts[0], token.as_str());
        self.token = Some(token);
        self.session = None;
        link
    }

    /// The origins a page of the console has.
    pub fn origins(&self) -> impl Iterator<Item = String> + '_ {
        self.hosts.iter().map(|h| format!("http://{h}"))
    }

    /// Decides one request.
    pub fn check(
        &mut self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Verdict {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if !host.is_some_and(|h| self.hosts.iter().any(|known| known.eq_ignore_ascii_case(h))) {
            return Verdict::Refuse(
                StatusCode::FORBIDDEN,
                "this console answers only to its own address",
            );
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let own = origin
                .to_str()
                .is_ok_and(|o| self.origins().any(|known| known.eq_ignore_ascii_case(o)));
            if !own {
                return Verdict::Refuse(
                    StatusCode::FORBIDDEN,
                    "requests from other sites are refused",
                );
            }
        }
        if headers
            .get("sec-fetch-site")
            .is_some_and(|site| site.as_bytes().eq_ignore_ascii_case(b"cross-site"))
        {
            return Verdict::Refuse(
                StatusCode::FORBIDDEN,
                "requests from other sites are refused",
            );
        }
        if method != Method::GET {
            return Verdict::Refuse(StatusCode::METHOD_NOT_ALLOWED, "only GET is answered");
        }
        if let Some(token) = query.and_then(token_in) {
            if path != "/" {
                return Verdict::Refuse(StatusCode::FORBIDDEN, "the link's token belongs on /");
            }
            return match &self.token {
                Some(secret) if same_secret(token, secret) => {
                    self.token = None;
                    let session = random_secret();
                    let cookie = format!(
                        "{}={}; HttpOnly; SameSite=Strict; Path=/",
                        cookie_name(self.port),
                        session.as_str()
                    );
                    self.session = Some(session);
                    Verdict::StartSession { cookie }
                }
                _ => Verdict::Refuse(
                    StatusCode::FORBIDDEN,
                    "this link is not valid (any more): press Enter in the console's terminal for a new one",
                ),
            };
        }
        let name = cookie_name(self.port);
        let given = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v);
        match (&self.session, given) {
            (Some(session), Some(given)) if same_secret(given, session) => Verdict::Pass,
            _ => Verdict::Refuse(
                StatusCode::UNAUTHORIZED,
                "open the link the console printed (press Enter in its terminal for a new one)",
            ),
        }
    }
}

/// The `token` parameter of a query string.
fn token_in(query: &str) -> Option<&str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v)
}

/// Whether the console may listen on `addr`: loopback, or anything when
/// the counsellor insisted.
pub fn may_listen(addr: SocketAddr, beyond_loopback: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || beyond_loopback {
        return Ok(());
    }
    Err(format!(
        "the console listens on loopback only ({addr} is not): anyone who can reach it could read \
         and write your chats in plain text. Use 127.0.0.1, or pass \
         --risk-plaintext-on-network if you really mean it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn token_of(link: &str) -> String {
        link.split("token=").nth(1).unwrap().to_owned()
    }

    fn cookie_of(verdict: Verdict) -> String {
        let Verdict::StartSession { cookie } = verdict else {
            panic!("{verdict:?}")
        };
        cookie.split(';').next().unwrap().to_owned()
    }

    #[test]
    fn the_link_works_once_and_its_cookie_opens_everything_else() {
        let mut guard = Guard::new("127.0.0.1:7490".parse().unwrap());
        let link = guard.new_link();
        assert!(link.starts_with("http://127.0.0.1:7490/?token="));
        let query = format!("token={}", token_of(&link));
        let host = [("host", "127.0.0.1:7490")];
        let cookie = cookie_of(guard.check(&Method::GET, "/", Some(&query), &headers(&host)));
        assert!(cookie.starts_with("fluister_console_7490="));
        // Spent.
        assert!(matches!(
            guard.check(&Method::GET, "/", Some(&query), &headers(&host)),
            Verdict::Refuse(StatusCode::FORBIDDEN, _)
        ));
        let with_cookie = headers(&[
            ("host", "localhost:7490"),
            ("cookie", &format!("a=b; {cookie}")),
        ]);
        assert_eq!(
            guard.check(&Method::GET, "/app.js", None, &with_cookie),
            Verdict::Pass
        );
        assert!(matches!(
            guard.check(&Method::GET, "/live", None, &headers(&host)),
            Verdict::Refuse(StatusCode::UNAUTHORIZED, _)
        ));
        let wrong = headers(&[
            ("host", "127.0.0.1:7490"),
            ("cookie", "fluister_console_7490=00"),
        ]);
        assert!(matches!(
            guard.check(&Method::GET, "/", None, &wrong),
            Verdict::Refuse(..)
        ));
        // A new link ends the old session.
        let _ = guard.new_link();
        assert!(matches!(
            guard.check(&Method::GET, "/", None, &with_cookie),
            Verdict::Refuse(..)
        ));
    }

    #[test]
    fn a_foreign_host_origin_or_method_is_refused_even_with_the_token() {
        let mut guard = Guard::new("127.0.0.1:7490".parse().unwrap());
        let query = format!("token={}", token_of(&guard.new_link()));
        for bad in [
            vec![("host", "evil.example:7490")],
            vec![("host", "127.0.0.1:7491")],
            vec![],
            vec![
                ("host", "127.0.0.1:7490"),
                ("origin", "http://evil.example"),
            ],
            vec![("host", "127.0.0.1:7490"), ("origin", "null")],
            vec![("host", "127.0.0.1:7490"), ("sec-fetch-site", "cross-site")],
        ] {
            assert!(
                matches!(
                    guard.check(&Method::GET, "/", Some(&query), &headers(&bad)),
                    Verdict::Refuse(StatusCode::FORBIDDEN, _)
                ),
                "{bad:?}"
            );
        }
        let host = [("host", "127.0.0.1:7490")];
        assert!(matches!(
            guard.check(&Method::POST, "/", Some(&query), &headers(&host)),
            Verdict::Refuse(StatusCode::METHOD_NOT_ALLOWED, _)
        ));
        // None of that spent the token.
        let own = [
            ("host", "127.0.0.1:7490"),
            ("origin", "http://127.0.0.1:7490"),
        ];
        assert!(matches!(
            guard.check(&Method::GET, "/", Some(&query), &headers(&own)),
            Verdict::StartSession { .. }
        ));
    }

    #[test]
    fn only_loopback_unless_insisted() {
        assert!(may_listen("127.0.0.1:0".parse().unwrap(), false).is_ok());
        assert!(may_listen("[::1]:0".parse().unwrap(), false).is_ok());
        assert!(may_listen("0.0.0.0:7490".parse().unwrap(), false).is_err());
        assert!(may_listen("192.168.1.5:7490".parse().unwrap(), true).is_ok());
        let v6 = Guard::new("[::1]:7490".parse().unwrap());
        assert_eq!(
            v6.origins().collect::<Vec<_>>(),
            ["http://[::1]:7490", "http://localhost:7490"]
        );
    }
}
