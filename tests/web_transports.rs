//! The web transports over real sockets on loopback (PROTOCOL.md §3.4): a
//! young person's chat over WebSocket and over WebTransport with the Rust
//! counsellor, what every response of the TCP listener carries, and bad
//! input on the web paths, each of which gets a clear close and harms no
//! other chat.

mod common;

use common::web::{self, WebEnd, both_ways, join_and_pair};
use common::*;
use fluister::core::frame::{EndReason, Frame, PROTOCOL_VERSION, Role};
use fluister::relay::RunningRelay;

const PAGE_ORIGIN: &str = "https://hulp.example";

/// A relay that lets only [`PAGE_ORIGIN`] in over the web.
async fn relay_with_origins(org: &Org) -> RunningRelay {
    let mut config = org.config();
    config.web_origins = vec![PAGE_ORIGIN.into()];
    fluister::relay::start(&config, Default::default())
        .await
        .unwrap()
}

fn browser_headers() -> Vec<(&'static str, &'static str)> {
    vec![("origin", PAGE_ORIGIN), ("user-agent", "Mozilla/5.0 test")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_young_person_chats_over_websocket_and_over_webtransport() {
    let org = Org::new();
    let relay = relay_with_origins(&org).await;
    let web_addr = relay.web_addr().unwrap();
    assert_eq!(
        web_addr.port(),
        relay.local_addr().port(),
        "one port number"
    );
    let mut sam = sam_with_room(&org, &relay, 2).await;
    let ca = ca(&org);
    let mut ws = web::websocket(web_addr, &ca, "/fluister/1", &browser_headers(), None)
        .await
        .unwrap();
    let (ws_chat, mut ws_session) = join_and_pair(&mut ws, &org).await;
    let mut wt = web::webtransport(
        relay.local_addr(),
        &ca,
        "/fluister/1",
        &browser_headers(),
        None,
    )
    .await
    .unwrap();
    let (wt_chat, mut wt_session) = join_and_pair(&mut wt, &org).await;
    both_ways(&mut ws, ws_chat, &mut ws_session, &mut sam, "ws").await;
    both_ways(&mut wt, wt_chat, &mut wt_session, &mut sam, "wt").await;
    // Leaving by a close with NO_ERROR ends the chat for Sam at once.
    ws.leave().await;
    assert_eq!(
        sam.expect(is_ended).await,
        ended_in(1, "peer_ended"),
        "the WebSocket page left"
    );
    wt.send(&Frame::End {
        chat: wt_chat,
        reason: EndReason::UserEnded,
    })
    .await;
    assert!(is_ended(&sam.expect(is_ended).await));
    wt.leave().await;
    relay.shutdown().await;
}

/// Sam, signed in with room for `capacity` chats.
async fn sam_with_room(org: &Org, relay: &RunningRelay, capacity: u8) -> Party {
    let identity = fluister::org::Identity::load(&org.counsellor("Sam")).unwrap();
    let stream = connect_counsellor(org, relay, &identity).await;
    let mut sam = counsellor_party(stream, identity);
    assert!(is_connected(&sam.next().await));
    sam.say(&format!("/capacity {capacity}")).await;
    sam
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_the_web_paths_gets_a_clear_close_and_harms_no_other_chat() {
    let org = Org::new();
    let relay = relay_with_origins(&org).await;
    let web_addr = relay.web_addr().unwrap();
    let udp = relay.local_addr();
    let ca = ca(&org);
    let mut sam = sam_with_room(&org, &relay, 1).await;
    // A healthy chat over WebSocket runs through all of it.
    let mut good = web::websocket(web_addr, &ca, "/fluister/1", &browser_headers(), None)
        .await
        .unwrap();
    let (chat, mut session) = join_and_pair(&mut good, &org).await;
    both_ways(&mut good, chat, &mut session, &mut sam, "before").await;

    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Client,
    }
    .encode();
    let counsellor_hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Counsellor,
    }
    .encode();
    let headers = browser_headers();

    // A text message.
    let mut ws = web::websocket(web_addr, &ca, "/fluister/1", &headers, None)
        .await
        .unwrap();
    ws.send_text("hello").await;
    assert_eq!(ws.next().await.err(), Some(WebEnd::Closed(0x01)), "text");
    // Half a frame in one message, and two frames in one.
    assert_eq!(
        ws_end_after(web_addr, &ca, &hello[..2]).await,
        Some(WebEnd::Closed(0x01)),
        "half"
    );
    assert_eq!(
        ws_end_after(web_addr, &ca, &[hello.clone(), hello.clone()].concat()).await,
        Some(WebEnd::Closed(0x01)),
        "two in one"
    );
    // A header that declares too long a body.
    assert_eq!(
        ws_end_after(web_addr, &ca, &[0x05, 0xff, 0xff]).await,
        Some(WebEnd::Closed(0x02)),
        "too large"
    );
    // The counsellor role, on either web transport.
    assert_eq!(
        ws_end_after(web_addr, &ca, &counsellor_hello).await,
        Some(WebEnd::Closed(0x05)),
        "ws counsellor"
    );
    let mut wt = web::webtransport(udp, &ca, "/fluister/1", &headers, None)
        .await
        .unwrap();
    wt.send_raw(&counsellor_hello).await;
    assert_eq!(
        wt.next().await.err(),
        Some(WebEnd::Closed(0x05)),
        "wt counsellor"
    );
    // A second WebTransport stream.
    let two = web::webtransport_session(udp, &ca, "/fluister/1", &headers, None)
        .await
        .unwrap();
    let (mut first, _first_recv) = two.open_bi().await.unwrap();
    first.write_all(&hello).await.unwrap();
    let (mut second, _second_recv) = two.open_bi().await.unwrap();
    let _ = second.write_all(&hello).await;
    assert_eq!(
        web::session_end(&two).await,
        WebEnd::Closed(0x03),
        "second stream"
    );
    // An Origin off the allow-list, a missing Origin, and another version's path.
    let foreign = [("origin", "https://evil.example")];
    let refused = web::websocket(web_addr, &ca, "/fluister/1", &foreign, None).await;
    assert!(
        refused.err().is_some_and(|e| e.contains("403")),
        "ws origin"
    );
    let refused = web::websocket(web_addr, &ca, "/fluister/1", &[], None).await;
    assert!(
        refused.err().is_some_and(|e| e.contains("403")),
        "ws no origin"
    );
    let refused = web::webtransport(udp, &ca, "/fluister/1", &foreign, None).await;
    assert!(refused.is_err(), "wt origin");
    let refused = web::websocket(web_addr, &ca, "/fluister/2", &headers, None).await;
    assert!(
        refused.err().is_some_and(|e| e.contains("404")),
        "ws version"
    );
    let refused = web::webtransport(udp, &ca, "/fluister/2", &headers, None).await;
    assert!(refused.is_err(), "wt version");

    // The healthy chat never noticed.
    both_ways(&mut good, chat, &mut session, &mut sam, "after").await;
    good.leave().await;
    assert_eq!(sam.expect(is_ended).await, ended_in(1, "peer_ended"));
    relay.shutdown().await;
}

/// How a fresh WebSocket from the allowed page ends after sending `raw`
/// as one binary message.
async fn ws_end_after(
    web_addr: std::net::SocketAddr,
    ca: &[rustls::pki_types::CertificateDer<'static>],
    raw: &[u8],
) -> Option<WebEnd> {
    let mut ws = web::websocket(web_addr, ca, "/fluister/1", &browser_headers(), None)
        .await
        .unwrap();
    ws.send_raw(raw).await;
    ws.next().await.err()
}

/// Raw HTTP/1.1 over TLS to the relay's TCP port: the head of the answer.
async fn get(relay: &RunningRelay, org: &Org, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in ca(org) {
        roots.add(c).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(relay.web_addr().unwrap())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: a=b\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_of_the_tcp_port_is_private_and_the_page_is_locked_down() {
    let org = Org::new();
    let relay = relay_with_origins(&org).await;
    for path in [
        "/",
        "/config.json",
        "/app.js",
        "/i18n/nl.json",
        "/nothing",
        "/fluister/1",
        "/../etc/passwd",
    ] {
        let answer = get(&relay, &org, path).await;
        assert!(
            answer.contains("cache-control: no-store"),
            "{path}: {answer}"
        );
        assert!(answer.contains("referrer-policy: no-referrer"), "{path}");
        assert!(!answer.contains("set-cookie"), "{path}");
    }
    let index = get(&relay, &org, "/").await;
    assert!(index.starts_with("http/1.1 200"), "{index}");
    assert!(index.contains("content-security-policy: default-src 'none'; script-src 'self'"));
    assert!(
        get(&relay, &org, "/nothing")
            .await
            .starts_with("http/1.1 404")
    );
    assert!(
        get(&relay, &org, "/../etc/passwd")
            .await
            .starts_with("http/1.1 404")
    );
    let config = get(&relay, &org, "/config.json").await;
    assert!(config.contains("\"relays\":[]"), "{config}");
    relay.shutdown().await;
}
