//! The counsellor's console as a process (`fluister console`), driven
//! over its loopback HTTP and WebSocket the way its page drives it, with a
//! young person on a real relay:
//!
//! - the one-time link, the session cookie and the guard's refusals;
//! - the live connection: events in, commands out, bad commands answered
//!   with `bad_command` and nothing else disturbed, a reload replayed, a
//!   second page replacing the first;
//! - the audit: at TRACE, with its own empty working directory, HOME and
//!   TMPDIR, the console's output holds no message text, no session secret
//!   and none of the counsellor's key bytes, and the only file it wrote is
//!   the canned replies it was asked to save; an ended chat is not replayed;
//! - a listen address beyond loopback is refused before signing in.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use fluister::client::chat::ChatEvent;
use fluister::org::Identity;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const BIN: &str = env!("CARGO_BIN_EXE_fluister");

type Live = tokio_tungstenite::WebSocketStream<TcpStream>;

/// One raw HTTP/1.1 GET; the status line and headers.
async fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// Opens the live connection with `cookie`, as the page does.
async fn live(port: u16, cookie: &str) -> Live {
    let mut request = format!("ws://127.0.0.1:{port}/live")
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("Cookie", cookie.parse().unwrap());
    headers.insert(
        "Origin",
        format!("http://127.0.0.1:{port}").parse().unwrap(),
    );
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (socket, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    socket
}

/// The next event on the live connection.
async fn next(socket: &mut Live) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("no event in time")
            .expect("live connection ended")
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

/// Events until one named `event` (with `chat`, if given).
async fn until(socket: &mut Live, event: &str, chat: Option<u64>) -> Value {
    loop {
        let e = next(socket).await;
        if e["event"] == event && chat.is_none_or(|c| e["chat"] == c) {
            return e;
        }
    }
}

async fn send(socket: &mut Live, command: Value) {
    socket
        .send(Message::Text(command.to_string().into()))
        .await
        .unwrap();
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_serves_its_page_to_the_link_alone_and_keeps_nothing() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let identity_path = org.counsellor("Sam");
    let identity = Identity::load(&identity_path).unwrap();
    let key_bytes = identity.keys.static_secret.to_bytes();

    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let replies_dir = tempfile::tempdir().unwrap();
    let replies = replies_dir.path().join("replies.txt");
    let mut child = Command::new(BIN)
        .args(["console", "--relay", &relay.local_addr().to_string()])
        .args(["--identity", identity_path.to_str().unwrap()])
        .args(["--ca", org.relay_cert().to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--capacity", "2"])
        .args(["--replies", replies.to_str().unwrap()])
        .current_dir(work.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("TMPDIR", tmp.path())
        .env("RUST_LOG", "trace")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    while !printed.contains("token=") {
        assert!(stdout.read_line(&mut printed).unwrap() > 0, "{printed}");
    }
    let link = printed
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    let url = url::Url::parse(&link).unwrap();
    let port = url.port().unwrap();
    let host = format!("127.0.0.1:{port}");
    let path_and_query = format!("/?{}", url.query().unwrap());
    let stderr_pipe = child.stderr.take();
    let stderr_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr_pipe.unwrap().read_to_end(&mut s);
        s
    });

    // The guard: nothing without the link; a foreign Host or Origin is
    // refused even with it, and does not spend it.
    assert_eq!(get(port, "/", &[("Host", &host)]).await.0, 401);
    assert_eq!(get(port, "/app.js", &[("Host", &host)]).await.0, 401);
    let rebound = format!("attacker.example:{port}");
    assert_eq!(
        get(port, &path_and_query, &[("Host", &rebound)]).await.0,
        403
    );
    let foreign = [
        ("Host", host.as_str()),
        ("Origin", "http://attacker.example"),
    ];
    assert_eq!(get(port, &path_and_query, &foreign).await.0, 403);
    let (status, response) = get(port, &path_and_query, &[("Host", &host)]).await;
    assert_eq!(status, 303, "{response}");
    assert!(!response.to_ascii_lowercase().contains("access-control-"));
    let set_cookie = response
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a session cookie");
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let session = cookie.split('=').nth(1).unwrap().to_owned();
    // Spent.
    assert_eq!(get(port, &path_and_query, &[("Host", &host)]).await.0, 403);
    let (status, page) = get(port, "/", &[("Host", &host), ("Cookie", &cookie)]).await;
    assert_eq!(status, 200);
    assert!(page.contains("cache-control: no-store"), "{page}");
    assert!(page.contains("content-security-policy: default-src 'none'"));

    // The live connection: who we are, then the sign-in.
    let mut page1 = live(port, &cookie).await;
    let hello = next(&mut page1).await;
    assert_eq!(hello["event"], "console");
    assert_eq!(hello["pseudonym"], "Sam");
    assert_eq!(hello["replies"].as_array().unwrap().len(), 5);
    until(&mut page1, "status", None).await;

    // A young person; messages both ways.
    let mut young = client_party(connect_anonymous(&org, &relay).await, org.public);
    let paired = until(&mut page1, "paired", None).await;
    assert_eq!(paired["chat"], 1);
    until(&mut page1, "ready", Some(1)).await;
    young
        .expect(|e| matches!(e, ChatEvent::Paired { .. }))
        .await;
    let canary_in = "kanarie-binnen-7f3a: hij dwingt me om te dealen";
    let canary_out = "kanarie-buiten-91c2: ben je nu veilig?";
    young.say(canary_in).await;
    let got = until(&mut page1, "message", Some(1)).await;
    assert_eq!(got["text"], canary_in);
    send(
        &mut page1,
        json!({"command": "say", "chat": 1, "text": canary_out}),
    )
    .await;
    let said = until(&mut page1, "said", Some(1)).await;
    assert_eq!(said["text"], canary_out);
    assert_eq!(young.next().await, message(canary_out));
    let delivered = until(&mut page1, "delivered", Some(1)).await;
    assert_eq!(delivered["id"], said["id"]);

    // Bad commands: a clear error for this page, and nothing else changes.
    for bad in [
        "not json",
        r#"{"command":"say","chat":1}"#,
        r#"{"command":"launch","chat":1}"#,
        r#"{"command":"say","chat":1,"text":"x","extra":true}"#,
        r#"{"command":"capacity","capacity":0}"#,
        r#"{"command":"transfer","chat":1,"to":"two\nlines"}"#,
    ] {
        page1.send(Message::Text(bad.into())).await.unwrap();
        let e = until(&mut page1, "error", None).await;
        assert_eq!(e["code"], "bad_command", "{bad}: {e}");
    }
    page1
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(
        until(&mut page1, "error", None).await["code"],
        "bad_command"
    );
    send(
        &mut page1,
        json!({"command": "say", "chat": 9, "text": "nergens"}),
    )
    .await;
    let e = until(&mut page1, "error", None).await;
    assert!(
        e["message"].as_str().unwrap().contains("no open chat @9"),
        "{e}"
    );
    young.say("nog hier").await;
    assert_eq!(
        until(&mut page1, "message", Some(1)).await["text"],
        "nog hier"
    );

    // A reload: the new page gets the open chat replayed, with ages; the
    // old one is told it was replaced.
    let mut page2 = live(port, &cookie).await;
    assert_eq!(next(&mut page2).await["event"], "console");
    let mut replayed = Vec::new();
    loop {
        let e = next(&mut page2).await;
        let last = e["event"] == "message" && e["text"] == "nog hier";
        assert!(e["ago_ms"].is_u64(), "{e}");
        replayed.push(e);
        if last {
            break;
        }
    }
    let replay = serde_json::to_string(&replayed).unwrap();
    assert!(replay.contains(canary_in) && replay.contains(canary_out));
    assert_eq!(
        until(&mut page1, "replaced", None).await["event"],
        "replaced"
    );

    // Canned replies are saved to the file named, and only there.
    send(
        &mut page2,
        json!({"command": "replies", "replies": ["Eén", "Twee"]}),
    )
    .await;
    assert_eq!(
        until(&mut page2, "replies", None).await["replies"],
        json!(["Eén", "Twee"])
    );
    assert!(
        std::fs::read_to_string(&replies)
            .unwrap()
            .ends_with("Eén\nTwee\n")
    );

    // Ending the chat: it is not replayed any more.
    send(&mut page2, json!({"command": "end", "chat": 1})).await;
    assert_eq!(
        until(&mut page2, "ended", Some(1)).await["reason"],
        "you_ended"
    );
    young.expect(is_ended).await;
    let mut page3 = live(port, &cookie).await;
    assert_eq!(next(&mut page3).await["event"], "console");
    send(
        &mut page3,
        json!({"command": "available", "available": false}),
    )
    .await;
    let mut after_end = Vec::new();
    loop {
        let e = next(&mut page3).await;
        let done = e["event"] == "status" && e["available"] == false;
        after_end.push(e);
        if done {
            break;
        }
    }
    let after_end = serde_json::to_string(&after_end).unwrap();
    assert!(
        !after_end.contains("kanarie") && !after_end.contains("\"chat\":1"),
        "{after_end}"
    );

    // Signing out from the page ends the process.
    send(&mut page3, json!({"command": "sign_out"})).await;
    until(&mut page3, "signed_out", None).await;
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the console did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    printed.push_str(&rest);
    assert!(printed.contains("Signed out."), "{printed}");

    // The audit.
    let logs = String::from_utf8_lossy(&stderr_reader.join().unwrap()).into_owned();
    let output = format!("{printed}\n{logs}");
    for needle in [
        canary_in,
        canary_out,
        "kanarie",
        "nog hier",
        session.as_str(),
    ] {
        assert!(
            !output.contains(needle),
            "{needle:?} in the console's output"
        );
    }
    for encoded in [hex::encode(key_bytes), hex::encode_upper(key_bytes)] {
        assert!(
            !output.contains(&encoded),
            "key bytes in the console's output"
        );
    }
    let mut written = Vec::new();
    for dir in [work.path(), home.path(), tmp.path()] {
        files_under(dir, &mut written);
    }
    assert!(written.is_empty(), "the console wrote {written:?}");
    let mut beside = Vec::new();
    files_under(replies_dir.path(), &mut beside);
    assert_eq!(beside, [replies]);
}

#[test]
fn a_console_beyond_loopback_is_refused_before_signing_in() {
    let org = Org::new();
    let identity = org.counsellor("Sam");
    let out = Command::new(BIN)
        .args(["console", "--relay", "127.0.0.1:9", "--identity"])
        .arg(&identity)
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: the console listens on loopback only"),
        "{stderr}"
    );
    assert!(stderr.contains("--risk-plaintext-on-network"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
