//! What the people who run the relay rely on: config errors that say where
//! they are, `relay --check-config`, environment overrides, the admin
//! listener's metrics and health checks, certificate rotation without
//! dropping chats, and revoking a counsellor.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;
use fluister::client::chat::ChatEvent;
use fluister::config::{ConfigError, RelayConfig};
use fluister::org::{self, Identity};
use rand_core::OsRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Writes a config next to the organisation's files and loads it.
fn load(org: &Org, text: &str, vars: &[(&str, &str)]) -> Result<RelayConfig, ConfigError> {
    let path = org.dir.path().join("check.toml");
    std::fs::write(&path, text).unwrap();
    RelayConfig::load_with_env(&path, env(vars))
}

/// `fluister relay --check-config` on `text`: exit code and the one line.
fn check_config(org: &Org, text: &str) -> (i32, String) {
    let path = org.dir.path().join("check.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fluister"))
        .args(["relay", "--check-config"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text.trim().to_owned())
}

const MINIMAL: &str = "";
const WITH_FILES: &str = "tls_cert = \"relay-cert.pem\"\n\
                          tls_key = \"relay-key.pem\"\n\
                          counsellor_ca = \"counsellor-ca.pem\"\n";

#[test]
fn config_errors_name_the_key_and_where_it_was_written() {
    let org = Org::new();
    // The full example in deploy/ and a minimal file are both fine.
    let full =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/fluister.toml"))
            .unwrap();
    RelayConfig::parse(&full).unwrap();
    load(&org, MINIMAL, &[]).unwrap();
    let cases: [(&str, &[&str]); 3] = [
        (
            "listen = \"127.0.0.1:1\"\nbogus = 1\n",
            &["bogus", "line 2"],
        ),
        (
            "[limits]\nmax_queue = \"ten\"\n",
            &["max_queue", "line 2", "invalid type"],
        ),
        (
            "# a comment\n\n[limits]\nmax_queue = 0\n",
            &["limits.max_queue", "line 4", "out of range"],
        ),
    ];
    for (text, wanted) in cases {
        let e = load(&org, text, &[]).unwrap_err().to_string();
        for w in wanted {
            assert!(e.contains(w), "{w:?} missing from: {e}");
        }
        assert!(e.contains("check.toml"), "the file is not named: {e}");
    }
}

#[test]
fn environment_variables_override_single_keys() {
    let org = Org::new();
    let c = load(
        &org,
        "[limits]\nmax_queue = 10\n",
        &[
            ("FLUISTER__LIMITS__MAX_QUEUE", "250"),
            ("FLUISTER__LANGUAGES", "[\"nl\"]"),
            ("FLUISTER__ADMIN__LISTEN", "127.0.0.1:9999"),
            ("FLUISTER_SHARED_VECTORS", "not ours: a single underscore"),
        ],
    )
    .unwrap();
    assert_eq!(c.limits.max_queue, 250);
    assert_eq!(c.languages, Some(vec!["nl".to_owned()]));
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9999");
    // A bad value, an unknown key and a wrong type each name the variable.
    let e = load(&org, "", &[("FLUISTER__LIMITS__MAX_QUEUE", "0")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("FLUISTER__LIMITS__MAX_QUEUE") && e.contains("out of range"),
        "{e}"
    );
    let e = load(&org, "", &[("FLUISTER__LIMITS__MAX_QEUE", "5")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("FLUISTER__LIMITS__MAX_QEUE") && e.contains("max_qeue"),
        "{e}"
    );
    let e = load(&org, "", &[("FLUISTER__LIMITS__MAX_QUEUE", "many")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("FLUISTER__LIMITS__MAX_QUEUE"), "{e}");
}

#[test]
fn check_config_exits_0_for_a_usable_config_and_1_with_the_reason() {
    let org = Org::new();
    let (code, out) = check_config(&org, MINIMAL);
    assert_eq!(code, 0, "{out}");
    let (code, out) = check_config(&org, WITH_FILES);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK"), "{out}");
    // The documented example, every key set, next to `org init`'s files.
    let full =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/fluister.toml"))
            .unwrap();
    let (code, out) = check_config(&org, &full);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("revocation list on"), "{out}");

    let (code, out) = check_config(&org, "bogus = 1\n");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("bogus") && out.contains("line 1"), "{out}");
    let (code, out) = check_config(&org, "[limits]\nmax_queue = \"ten\"\n");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("max_queue") && out.contains("line 2"), "{out}");
    // A missing certificate names the key and the file.
    let (code, out) = check_config(&org, &WITH_FILES.replace("relay-cert.pem", "gone.pem"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("tls_cert") && out.contains("gone.pem"),
        "{out}"
    );
    // A key that belongs to another certificate.
    let (_, other_key) = org::self_signed_relay_cert(&org::loopback_hosts(), 1).unwrap();
    std::fs::write(org.dir.path().join("other-key.pem"), other_key.as_bytes()).unwrap();
    let (code, out) = check_config(&org, &WITH_FILES.replace("relay-key.pem", "other-key.pem"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("tls_key") && out.contains("other-key.pem") && out.contains("does not belong"),
        "{out}"
    );
    // A revocation list that the counsellor CA did not sign.
    let stranger = Org::new();
    stranger.counsellor("Eve");
    org::lifecycle::revoke(stranger.dir.path(), "Eve").unwrap();
    std::fs::copy(
        stranger.dir.path().join(org::CRL_FILE),
        org.dir.path().join("foreign.crl.pem"),
    )
    .unwrap();
    let (code, out) = check_config(
        &org,
        &format!("{WITH_FILES}counsellor_crl = \"foreign.crl.pem\"\n"),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("counsellor_crl") && out.contains("not signed"),
        "{out}"
    );
}

/// A DER certificate as PEM text.
fn pem_certificate(der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// GET `path` from the admin listener: status code and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Sample name with labels → value, from the Prometheus text format.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn metrics_and_health_show_the_service_without_anything_about_anyone() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let admin = relay.admin_addr().expect("admin listener on by default");
    assert!(admin.ip().is_loopback());
    assert_eq!(get(admin, "/healthz").await.0, 200);
    assert_eq!(get(admin, "/readyz").await.0, 200);

    let mut sam = sam(&org, &relay).await;
    let mut client = paired_client(&org, &relay, &mut sam).await;
    client.say("hallo").await;
    assert_eq!(sam.next().await, message_in(1, "hallo"));
    sam.say("hoi").await;
    assert_eq!(client.next().await, message("hoi"));

    let (status, body) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    let m = samples(&body);
    let value = |name: &str| {
        *m.get(name)
            .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
    };
    assert_eq!(value("fluister_connections{role=\"client\"}"), 1.0);
    assert_eq!(value("fluister_connections{role=\"counsellor\"}"), 1.0);
    assert_eq!(value("fluister_chats"), 1.0);
    assert_eq!(value("fluister_pairings_total"), 1.0);
    assert_eq!(value("fluister_queue_waiting{topic=\"none\"}"), 0.0);
    assert_eq!(value("fluister_queue_wait_seconds_count"), 1.0);
    assert!(
        value("fluister_frames_forwarded_total") >= 4.0,
        "handshake and two messages"
    );
    assert_eq!(
        value("fluister_forwarded_bytes_total"),
        value("fluister_frames_forwarded_total") * 1039.0
    );
    assert_eq!(value("fluister_counsellors_with_room"), 0.0);
    assert_eq!(value("fluister_service_open"), 1.0);
    assert_eq!(value("fluister_ready"), 1.0);
    assert!(m.contains_key("fluister_pow_difficulty"));
    // Every label value is one of the documented fixed names or a topic id.
    let allowed = |v: &str| {
        v.parse::<u16>().is_ok()
            || v.parse::<f64>().is_ok() // histogram bounds
            || v == "+Inf"
            || v.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    };
    for name in m.keys() {
        if let Some((_, labels)) = name.split_once('{') {
            for pair in labels.trim_end_matches('}').split(',') {
                let value = pair.split_once('=').unwrap().1.trim_matches('"');
                assert!(allowed(value), "label value {value:?} in {name}");
            }
        }
    }
    for secret in ["hallo", "hoi", "Sam", "127.0.0.1"] {
        assert!(!body.contains(secret), "{secret:?} appears in the metrics");
    }

    client.hang_up();
    sam.expect(|e| matches!(e, ChatEvent::Ended { .. })).await;
    let m = samples(&get(admin, "/metrics").await.1);
    assert_eq!(m["fluister_chats_ended_total{reason=\"user_ended\"}"], 1.0);

    // Draining: not ready any more, while the process still answers.
    let draining = tokio::spawn(relay.shutdown());
    let mut flipped = false;
    for _ in 0..50 {
        match get(admin, "/readyz").await.0 {
            503 => {
                flipped = true;
                break;
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    assert!(flipped, "/readyz did not turn 503 during the drain");
    draining.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_busy_the_unfinished_and_no_departure_as_slow() {
    let org = Org::new();
    let mut config = org.config();
    config.limits.max_anonymous_connections = 40;
    config.limits.admissions_per_sec = 1000;
    config.limits.admissions_burst = 1000;
    // All of them come from 127.0.0.1.
    config.limits.per_source_places = 0;
    let relay = fluister::relay::start(&config, Default::default())
        .await
        .unwrap();
    let admin = relay.admin_addr().unwrap();
    let value = |m: &BTreeMap<String, f64>, name: &str| m.get(name).copied().unwrap_or(0.0);
    // Forty young people wait (no counsellor), and then all leave at once:
    // the relay's news of their new positions meets connections already
    // gone, which is no slow consumer.
    let mut waiting = Vec::new();
    for _ in 0..40 {
        waiting.push(raw_joined_client(&org, &relay).await.0);
    }
    // The anonymous cap is full of joined young people: the next is busy.
    let busy = try_connect(&relay, ca(&org), None).await;
    if let Ok(mut s) = busy {
        let _ = s
            .send(&fluister::core::frame::Frame::Hello {
                version: 1,
                role: fluister::core::frame::Role::Client,
            })
            .await;
        let err = s.next().await.unwrap_err();
        assert!(
            matches!(
                err,
                fluister::client::ClientError::Closed(fluister::core::CloseCode::Busy)
            ),
            "{err}"
        );
    }
    for s in &waiting {
        s.connection()
            .close(fluister::core::EndpointClose::Left.code().into(), b"");
    }
    drop(waiting);
    // A connection that never opens its control stream, and one that said
    // HELLO and never joins.
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = fluister::tls::client_config(
        Some(ca(&org)),
        None,
        fluister::tls::transport_config(Default::default()),
    )
    .unwrap();
    let _streamless = endpoint
        .connect_with(config, relay.local_addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    let mut hello_only = connect_anonymous(&org, &relay).await;
    hello_only
        .send(&fluister::core::frame::Frame::Hello {
            version: 1,
            role: fluister::core::frame::Role::Client,
        })
        .await
        .unwrap();
    let mut m = BTreeMap::new();
    for _ in 0..100 {
        m = samples(&get(admin, "/metrics").await.1);
        if value(&m, "fluister_clients_not_joined") == 1.0
            && value(&m, "fluister_connections{role=\"handshake\"}") == 1.0
            && value(&m, "fluister_queue_waiting{topic=\"none\"}") == 0.0
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(value(&m, "fluister_clients_not_joined"), 1.0);
    assert_eq!(value(&m, "fluister_connections{role=\"handshake\"}"), 1.0);
    assert_eq!(value(&m, "fluister_queue_waiting{topic=\"none\"}"), 0.0);
    assert_eq!(
        value(&m, "fluister_connections_closed_total{code=\"busy\"}"),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "fluister_connections_closed_total{code=\"slow_consumer\"}"
        ),
        0.0,
        "departures are not slow consumers"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_new_certificate_is_taken_without_dropping_chats_and_a_broken_one_is_refused() {
    let org = Org::new();
    let relay = start_relay(&org, &Tap::default()).await;
    let mut sam = sam(&org, &relay).await;
    let mut client = paired_client(&org, &relay, &mut sam).await;
    let old_ca = ca(&org);

    // The operator puts a new certificate and key in place.
    let (cert, key) = org::self_signed_relay_cert(&org::loopback_hosts(), 30).unwrap();
    std::fs::write(org.dir.path().join(org::RELAY_KEY_FILE), key.as_bytes()).unwrap();
    std::fs::write(org.dir.path().join(org::RELAY_CERT_FILE), cert.as_bytes()).unwrap();
    assert!(relay.reload().await, "the new certificate was refused");
    let new_ca = ca(&org);
    assert_ne!(old_ca, new_ca);

    // New connections see the new certificate; the running chat goes on.
    let connect_with = |roots| try_connect(&relay, roots, None);
    assert!(connect_with(new_ca.clone()).await.is_ok());
    assert!(
        connect_with(old_ca).await.is_err(),
        "the old certificate is still served"
    );
    client.say("nog steeds hier").await;
    assert_eq!(sam.next().await, message_in(1, "nog steeds hier"));

    // A broken file is refused and the certificate in use stays.
    std::fs::write(
        org.dir.path().join(org::RELAY_CERT_FILE),
        "not a certificate",
    )
    .unwrap();
    assert!(!relay.reload().await, "a broken certificate was taken");
    assert!(connect_with(new_ca.clone()).await.is_ok());
    // So is one with a single flipped bit, which still looks like a
    // certificate and still matches its key.
    let mut der = new_ca[0].to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    std::fs::write(
        org.dir.path().join(org::RELAY_CERT_FILE),
        pem_certificate(&der),
    )
    .unwrap();
    assert!(!relay.reload().await, "a damaged certificate was taken");
    assert!(connect_with(new_ca).await.is_ok());
    sam.say("en ik ook").await;
    assert_eq!(client.next().await, message("en ik ook"));
    relay.shutdown().await;
}

#[tokio::test]
async fn a_revoked_counsellor_is_cut_off_and_cannot_sign_in_again() {
    let org = Org::new();
    let noor_identity = Identity::load(&org.counsellor("Noor")).unwrap();
    let sam_path = org.counsellor("Sam");
    let sam_identity = Identity::load(&sam_path).unwrap();
    // `org init` wrote an empty revocation list and a config that names it.
    let config = org.config();
    assert!(config.counsellor_crl.is_some());
    let relay = fluister::relay::start(&config, Default::default())
        .await
        .unwrap();
    // Sam's client would reconnect after a lost connection; a revocation
    // must end it at once all the same.
    let settings = fluister::client::chat::CounsellorSettings {
        reconnect: Some(reconnect_options(
            &org,
            &relay,
            Some(&sam_identity),
            std::time::Duration::from_secs(120),
        )),
        ..Default::default()
    };
    let mut sam = counsellor_party_with(
        connect_counsellor(&org, &relay, &sam_identity).await,
        Identity::load(&sam_path).unwrap(),
        settings,
    );
    let mut client = paired_client(&org, &relay, &mut sam).await;
    let mut noor = counsellor_party(
        connect_counsellor(&org, &relay, &noor_identity).await,
        Identity::load(&org.dir.path().join("counsellors/Noor.identity")).unwrap(),
    );
    noor.expect(|e| matches!(e, ChatEvent::Connected { .. }))
        .await;

    // The admin revokes Sam; the relay reloads (as on SIGHUP or a file change).
    let (revoked, _) = org::lifecycle::revoke(org.dir.path(), "Sam").unwrap();
    assert_eq!(revoked.len(), 1);
    assert!(relay.reload().await);

    // The young person is told why the chat ended; Sam's client is closed.
    assert_eq!(
        client
            .expect(|e| matches!(e, ChatEvent::Ended { .. }))
            .await,
        ended("counsellor_revoked")
    );
    // Sam's open chat is resolved and the client ends with its own message.
    assert_eq!(
        sam.expect(|e| matches!(e, ChatEvent::Ended { .. })).await,
        ended_in(1, "revoked")
    );
    let sam_result = sam.finish().await;
    assert!(
        matches!(
            sam_result,
            Err(fluister::client::ClientError::Closed(
                fluister::core::CloseCode::Revoked
            ))
        ),
        "{sam_result:?}"
    );
    assert_eq!(
        sam_result.unwrap_err().to_string(),
        "your sign-in was revoked by the helpline"
    );
    // Sam cannot sign in again, and is told why; Noor carries on.
    let credential = sam_identity.relay_credential().unwrap();
    let refusal = match try_connect(&relay, ca(&org), Some(credential)).await {
        Err(e) => e,
        Ok(mut stream) => {
            let hello = fluister::core::frame::Frame::Hello {
                version: fluister::core::frame::PROTOCOL_VERSION,
                role: fluister::core::frame::Role::Counsellor,
            };
            let _ = stream.send(&hello).await;
            match stream.next().await {
                Err(e) => e,
                Ok(frame) => panic!("a revoked counsellor got {frame:?}"),
            }
        }
    };
    assert!(
        refusal.to_string().contains("revoked by the helpline"),
        "{refusal}"
    );
    let _next = paired_client(&org, &relay, &mut noor).await;
    relay.shutdown().await;
}

#[test]
fn renewing_keeps_the_keys_and_listing_shows_every_credential() {
    let org = Org::new();
    let path = org.counsellor("Sam");
    let before = Identity::load(&path).unwrap();
    let (renewed, not_after) =
        org::renew_counsellor(org.dir.path(), "Sam", 10, &mut OsRng).unwrap();
    assert_eq!(renewed, path);
    let after = Identity::load(&path).unwrap();
    assert_eq!(after.not_after, not_after);
    assert_ne!(before.relay_credential_cert, after.relay_credential_cert);
    assert_eq!(
        before.keys.static_secret.to_bytes(),
        after.keys.static_secret.to_bytes(),
        "renewal keeps the end-to-end key"
    );
    let register = org::lifecycle::Register::load(org.dir.path()).unwrap();
    assert_eq!(register.credentials.len(), 2);
    let out = Command::new(env!("CARGO_BIN_EXE_fluister"))
        .args(["org", "list", "--dir"])
        .arg(org.dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert_eq!(text.matches("Sam").count(), 2, "{text}");
    // Issued for 10 days a moment ago: 9 or 10 whole days left.
    assert!(
        text.contains("valid, 10 days left") || text.contains("valid, 9 days left"),
        "{text}"
    );
}

#[tokio::test]
async fn a_changed_certificate_file_is_picked_up_without_a_signal() {
    let org = Org::new();
    let mut config = org.config();
    config.tls_watch_secs = 1;
    let relay = fluister::relay::start(&config, Default::default())
        .await
        .unwrap();
    let (cert, key) = org::self_signed_relay_cert(&org::loopback_hosts(), 30).unwrap();
    std::fs::write(org.dir.path().join(org::RELAY_KEY_FILE), key.as_bytes()).unwrap();
    std::fs::write(org.dir.path().join(org::RELAY_CERT_FILE), cert.as_bytes()).unwrap();
    let new_ca = ca(&org);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if try_connect(&relay, new_ca.clone(), None).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    relay.shutdown().await;
}
