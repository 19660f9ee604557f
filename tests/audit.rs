//! The privacy audit: a real relay process at TRACE logging, with its own
//! empty working directory, HOME and TMPDIR, carries 20 chats with known
//! canary texts from clients bound to known local ports, and 4 more over
//! WebSocket and WebTransport with canaries in the User-Agent and Origin
//! headers as well. Afterwards
//! everything the relay produced is scanned (stdout, stderr, every file
//! under its directories) for the clients' addresses and ports, pairing ids,
//! key bytes in hex and base64, and the canaries. The relay must also have
//! written no file at all.
//!
//! The admin listener's `/metrics`, scraped after the chats, joins the scan.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine;
use common::web;
use common::*;
use fluister::client::chat::ChatEvent;
use fluister::client::{self, ConnectOptions};
use fluister::core::frame::{EndReason, Frame, Role};
use fluister::core::ratelimit::pow_solve;
use fluister::crypto::content::Content;
use fluister::crypto::e2e::{ClientHandshake, Received};
use fluister::org::Identity;
use rand_core::{OsRng, RngCore};
use x25519_dalek::{PublicKey, StaticSecret};

const BIN: &str = env!("CARGO_BIN_EXE_fluister");
const CHATS: usize = 20;
/// Chats over the web transports, alternating WebSocket and WebTransport.
const WEB_CHATS: usize = 4;

/// Everything that must never show up in the relay's output.
#[derive(Default)]
struct Needles {
    /// Matched as text, case-sensitively.
    text: BTreeSet<String>,
    /// Ports: matched as whole numbers (not inside a longer number).
    ports: BTreeSet<u16>,
    /// Matched as raw bytes.
    raw: Vec<Vec<u8>>,
}

impl Needles {
    fn key_bytes(&mut self, bytes: &[u8]) {
        let b64 = base64::engine::general_purpose::STANDARD;
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        self.text.insert(hex::encode(bytes));
        self.text.insert(hex::encode_upper(bytes));
        self.text
            .insert(b64.encode(bytes).trim_end_matches('=').to_owned());
        self.text.insert(b64url.encode(bytes));
        self.raw.push(bytes.to_vec());
    }

    /// Every finding in `haystack`, described without repeating the secret.
    fn findings(&self, haystack: &[u8]) -> Vec<String> {
        let mut found = Vec::new();
        let text = String::from_utf8_lossy(haystack);
        for n in &self.text {
            if text.contains(n.as_str()) {
                found.push(format!("text needle of {} chars", n.len()));
            }
        }
        for raw in &self.raw {
            if haystack.windows(raw.len()).any(|w| w == &raw[..]) {
                found.push(format!("raw needle of {} bytes", raw.len()));
            }
        }
        for port in &self.ports {
            let p = port.to_string();
            let bytes = text.as_bytes();
            let mut start = 0;
            while let Some(i) = text[start..].find(&p) {
                let at = start + i;
                let before = at
                    .checked_sub(1)
                    .map(|j| bytes[j].is_ascii_digit())
                    .unwrap_or(false);
                let after = bytes.get(at + p.len()).is_some_and(u8::is_ascii_digit);
                if !before && !after {
                    found.push(format!("port {port}"));
                    break;
                }
                start = at + p.len();
            }
        }
        found
    }
}

struct RelayProcess {
    child: Child,
    addr: String,
    admin: String,
    stdout_first: String,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_keeps_nothing_that_identifies_anyone() {
    // The operator's files live apart from the relay's own directories.
    let org = Org::new();
    let config_path = org.dir.path().join("audit-relay.toml");
    let config = std::fs::read_to_string(org.dir.path().join(fluister::org::RELAY_CONFIG_FILE))
        .unwrap()
        .replace("127.0.0.1:7443", "127.0.0.1:0")
        .replace("127.0.0.1:7444", "127.0.0.1:0")
        .replace(
            "\"counsellors.crl.pem",
            &format!("\"{}/counsellors.crl.pem", org.dir.path().display()),
        )
        .replace("relay-cert.pem", &org.relay_cert().display().to_string())
        .replace(
            "\"relay-key.pem",
            &format!("\"{}/relay-key.pem", org.dir.path().display()),
        )
        .replace(
            "\"counsellor-ca.pem",
            &format!("\"{}/counsellor-ca.pem", org.dir.path().display()),
        );
    std::fs::write(&config_path, config).unwrap();
    let sam_path = org.counsellor("Sam");
    let sam_identity = Identity::load(&sam_path).unwrap();
    let sam_static = sam_identity.keys.static_secret.to_bytes();

    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["relay", "--config", config_path.to_str().unwrap()])
        .current_dir(work.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("TMPDIR", tmp.path())
        .env("XDG_CACHE_HOME", home.path().join(".cache"))
        .env("XDG_DATA_HOME", home.path().join(".local/share"))
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // The first lines say where it listens, for chats and for metrics.
    let mut first = String::new();
    while !first.contains("Metrics") {
        assert!(stdout.read_line(&mut first).unwrap() > 0, "{first}");
    }
    let addr = first
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .expect("listening line")
        .to_owned();
    let admin = first
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .expect("admin line")
        .to_owned();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut s);
        s
    });
    let stdout_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let relay = RelayProcess {
        child,
        addr,
        admin,
        stdout_first: first,
    };

    let mut needles = Needles::default();
    needles.key_bytes(&sam_static);
    needles.key_bytes(PublicKey::from(&StaticSecret::from(sam_static)).as_bytes());
    needles.text.insert(
        sam_identity
            .relay_credential_key
            .trim()
            .lines()
            .nth(1)
            .unwrap()
            .to_owned(),
    );

    let ca = ca(&org);
    let counsellor_stream = client::connect(ConnectOptions {
        relay: relay.addr.clone(),
        ca: Some(ca.clone()),
        credential: Some(sam_identity.relay_credential().unwrap()),
        connect_timeout: WAIT,
        bind: None,
    })
    .await
    .unwrap();
    let mut sam = counsellor_party(counsellor_stream, sam_identity);
    assert!(is_connected(&sam.next().await));

    for i in 0..CHATS {
        let port = free_udp_port();
        needles.ports.insert(port);
        needles.text.insert(format!("127.0.0.1:{port}"));
        let mut tag = [0u8; 6];
        OsRng.fill_bytes(&mut tag);
        let canary_in = format!("canary-in-{i}-{}", hex::encode(tag));
        let canary_out = format!("canary-out-{i}-{}", hex::encode(tag));
        needles.text.insert(canary_in.clone());
        needles.text.insert(canary_out.clone());
        let mut e = [0u8; 32];
        OsRng.fill_bytes(&mut e);
        needles.key_bytes(&e);
        needles.key_bytes(PublicKey::from(&StaticSecret::from(e)).as_bytes());

        let mut stream = client::connect(ConnectOptions {
            relay: relay.addr.clone(),
            ca: Some(ca.clone()),
            credential: None,
            connect_timeout: WAIT,
            bind: Some(format!("127.0.0.1:{port}").parse().unwrap()),
        })
        .await
        .unwrap();
        hello(&mut stream, Role::Client).await;
        let Frame::Welcome { pow, .. } = stream.next().await.unwrap().unwrap() else {
            panic!("expected WELCOME")
        };
        stream
            .send(&Frame::Join {
                topic: None,
                language: None,
                pow_solution: pow_solve(&pow.nonce, pow.difficulty),
            })
            .await
            .unwrap();
        let (chat, pairing_id) = loop {
            match stream.next().await.unwrap().unwrap() {
                Frame::Paired {
                    chat,
                    pairing_id,
                    resume,
                    ..
                } => {
                    needles.key_bytes(&resume.0);
                    break (chat, pairing_id);
                }
                Frame::Joined { resume } => needles.key_bytes(&resume.0),
                Frame::Topic { .. } | Frame::Queued { .. } => {}
                other => panic!("{other:?}"),
            }
        };
        needles.key_bytes(&pairing_id.0);
        let (handshake, hs1) =
            ClientHandshake::start_with_ephemeral(&org.public, &pairing_id, StaticSecret::from(e));
        stream
            .send(&Frame::Forward { chat, blob: hs1 })
            .await
            .unwrap();
        let Frame::Forward { blob: hs2, .. } = stream.next().await.unwrap().unwrap() else {
            panic!()
        };
        let (mut session, certificate) = handshake.finish(&hs2, now_unix()).unwrap();
        assert_eq!(certificate.pseudonym(), "Sam");
        needles.key_bytes(session.handshake_hash());
        let blob = session
            .seal(&Content::Text {
                last: true,
                text: canary_in.clone(),
            })
            .unwrap();
        stream.send(&Frame::Forward { chat, blob }).await.unwrap();

        let n = match sam.expect(|e| matches!(e, ChatEvent::Message { .. })).await {
            ChatEvent::Message {
                text,
                chat: Some(n),
            } => {
                assert_eq!(text, canary_in);
                n
            }
            other => panic!("{other:?}"),
        };
        sam.say(&format!("@{n} {canary_out}")).await;
        // Sam's ACK of our line may come first, on its own tick.
        let received = loop {
            let Frame::Forward { blob, .. } = stream.next().await.unwrap().unwrap() else {
                panic!()
            };
            match session.open(&blob).unwrap() {
                Received::Content(Content::Ack { .. }) => continue,
                other => break other,
            }
        };
        assert_eq!(
            received,
            Received::Content(Content::Text {
                last: true,
                text: canary_out.clone()
            })
        );
        stream
            .send(&Frame::End {
                chat,
                reason: EndReason::UserEnded,
            })
            .await
            .unwrap();
        stream.leave().await;
        sam.expect(is_ended).await;
    }
    // The web transports: canaries in the User-Agent, the Origin and the
    // text, from known local ports, over WebSocket and WebTransport.
    let relay_addr: std::net::SocketAddr = relay.addr.parse().unwrap();
    for i in 0..WEB_CHATS {
        let mut tag = [0u8; 6];
        OsRng.fill_bytes(&mut tag);
        let agent = format!("CanaryAgent/{i}-{}", hex::encode(tag));
        let origin = format!("https://canary-origin-{i}-{}.example", hex::encode(tag));
        let word = format!("canary-web-{i}-{}", hex::encode(tag));
        for needle in [&agent, &origin, &word] {
            needles.text.insert(needle.clone());
        }
        let headers = [("user-agent", agent.as_str()), ("origin", origin.as_str())];
        let port = free_udp_port();
        needles.ports.insert(port);
        needles.text.insert(format!("127.0.0.1:{port}"));
        let mut link = if i % 2 == 0 {
            web::websocket(relay_addr, &ca, "/fluister/1", &headers, Some(port)).await
        } else {
            web::webtransport(relay_addr, &ca, "/fluister/1", &headers, Some(port)).await
        }
        .unwrap();
        let (chat, mut session) = web::join_and_pair(&mut link, &org).await;
        needles.key_bytes(session.handshake_hash());
        web::both_ways(&mut link, chat, &mut session, &mut sam, &word).await;
        link.leave().await;
        sam.expect(is_ended).await;
    }
    sam.hang_up();
    sam.finish().await.unwrap();

    // What the operator's monitoring sees.
    let metrics = {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&relay.admin).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = Vec::new();
        s.read_to_end(&mut body).unwrap();
        body
    };
    assert!(String::from_utf8_lossy(&metrics).contains("fluister_pairings_total"));

    // Stop the relay the way an operator does, and collect what it said.
    let _ = Command::new("kill")
        .arg(relay.child.id().to_string())
        .status();
    let mut relay = relay;
    let status = relay.child.wait().unwrap();
    assert!(status.success(), "relay exit: {status}");
    let mut outputs = vec![("stdout".to_owned(), relay.stdout_first.clone().into_bytes())];
    outputs[0].1.extend(stdout_reader.join().unwrap());
    outputs.push(("stderr".to_owned(), stderr_reader.join().unwrap()));
    outputs.push(("/metrics".to_owned(), metrics));

    let mut files = Vec::new();
    for dir in [work.path(), home.path(), tmp.path()] {
        files_under(dir, &mut files);
    }
    for f in &files {
        outputs.push((f.display().to_string(), std::fs::read(f).unwrap()));
    }

    // The scanner itself must be able to fail: plant each kind of needle.
    let port = *needles.ports.iter().next().unwrap();
    let canary = needles
        .text
        .iter()
        .find(|t| t.starts_with("canary-in-0-"))
        .unwrap()
        .clone();
    assert!(
        !needles
            .findings(format!("peer 127.0.0.1:{port} said").as_bytes())
            .is_empty()
    );
    assert!(
        !needles
            .findings(format!("port={port}").as_bytes())
            .is_empty()
    );
    assert!(
        needles
            .findings(format!("t=0.{port}7").as_bytes())
            .is_empty(),
        "digits inside a longer number are not a port"
    );
    assert!(!needles.findings(canary.as_bytes()).is_empty());
    assert!(!needles.findings(&needles.raw[0].clone()).is_empty());

    let mut findings = Vec::new();
    let mut scanned = 0;
    for (name, bytes) in &outputs {
        scanned += bytes.len();
        for f in needles.findings(bytes) {
            findings.push(format!("{name}: {f}"));
        }
    }
    let stderr_text = String::from_utf8_lossy(&outputs[1].1);
    assert!(
        stderr_text.contains("relay started"),
        "the relay logged at all: {stderr_text}"
    );
    println!(
        "audit: {CHATS} native and {WEB_CHATS} web chats; scanned {scanned} bytes in {} outputs (stdout, stderr, /metrics) and {} files; {} needles; {} findings",
        3,
        files.len(),
        needles.text.len() + needles.raw.len() + needles.ports.len(),
        findings.len()
    );
    assert!(files.is_empty(), "the relay wrote files: {files:?}");
    assert!(findings.is_empty(), "found: {findings:#?}");
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
