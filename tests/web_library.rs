//! The browser library's own tests (`web/`, run with `node --test`), as
//! part of `cargo test`: frames, Noise and the end-to-end session against
//! `proto/vectors` and `../shared/vectors`; and a chat between the
//! JavaScript client and the Rust counsellor, each decrypting what the
//! other encrypted. Node.js 20 or later must be installed (`.ci/run`
//! installs it, and `npm ci` in `web/`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use fluister::core::frame::{Blob, PairingId};
use fluister::core::ratelimit::pow_valid;
use fluister::crypto::cert::{CertificateBody, OrgPublicKey};
use fluister::crypto::content::{Content, split_text};
use fluister::crypto::e2e::{self, CounsellorKeys, Received};
use rand_core::{OsRng, RngCore};
use x25519_dalek::PublicKey;

/// `web/`, with its locked npm packages installed (`npm ci`) the first
/// time, so that `cargo test` alone works on a fresh clone.
fn web() -> PathBuf {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    INSTALLED.call_once(|| {
        if web.join("node_modules/@noble").is_dir() {
            return;
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&web)
            .status()
            .unwrap_or_else(|e| panic!("npm (Node.js 20 or later) must be installed: {e}"));
        assert!(status.success(), "npm ci failed in web/");
    });
    web
}

#[test]
fn the_web_library_passes_its_node_tests() {
    let out = Command::new("node")
        .args(["--test", "test/"])
        .current_dir(web())
        .output()
        .unwrap_or_else(|e| panic!("node (20 or later) must be installed to test web/: {e}"));
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "node --test failed in web/:\n{report}"
    );
    assert!(report.contains("# fail 0"), "{report}");
}

/// One line from the JavaScript side, with its tag taken off.
fn read_tagged(lines: &mut impl BufRead, tag: &str) -> String {
    let mut line = String::new();
    lines.read_line(&mut line).expect("a line from node");
    let line = line.trim_end();
    line.strip_prefix(tag)
        .and_then(|rest| rest.strip_prefix(' '))
        .unwrap_or_else(|| panic!("expected {tag}, got {line:?}"))
        .to_owned()
}

fn blob(hex_text: &str) -> Blob {
    let bytes = hex::decode(hex_text).expect("hex from node");
    Blob::from_slice(&bytes).expect("a whole blob")
}

#[test]
fn the_javascript_client_and_the_rust_counsellor_chat_end_to_end() {
    let org_key = SigningKey::from_bytes(&[9; 32]);
    let org = OrgPublicKey::from_signing_key(&org_key);
    let static_secret = e2e::generate_static_secret(&mut OsRng);
    let certificate = CertificateBody {
        org_key: *org.as_bytes(),
        static_key: PublicKey::from(&static_secret).to_bytes(),
        not_before: 0,
        not_after: u64::MAX / 2,
        pseudonym: fluister::core::frame::Label::new("Noor").unwrap(),
    }
    .sign(&org_key)
    .expect("a certificate");
    let keys = CounsellorKeys {
        static_secret,
        certificate,
        org,
    };
    let pairing = PairingId([7; 16]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut node = Command::new("node")
        .arg("tools/roundtrip-peer.js")
        .args([org.to_hex(), hex::encode(pairing.0), now.to_string()])
        .current_dir(web())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("node (20 or later) must be installed: {e}"));
    let mut to_js = node.stdin.take().expect("stdin");
    let mut from_js = BufReader::new(node.stdout.take().expect("stdout"));

    let message_1 = blob(&read_tagged(&mut from_js, "M1"));
    let (mut session, message_2) =
        e2e::counsellor_respond(&keys, &pairing, &message_1, &mut OsRng).expect("message 1");
    writeln!(to_js, "M2 {}", hex::encode(message_2.as_bytes())).expect("write");
    assert_eq!(
        read_tagged(&mut from_js, "OK"),
        "Noor",
        "JS verified Rust's certificate"
    );

    let from_javascript = blob(&read_tagged(&mut from_js, "B"));
    match session.open(&from_javascript).expect("Rust decrypts JS") {
        Received::Content(Content::Text { last: true, text }) => {
            assert_eq!(text, "Hoi vanuit JavaScript — één ✓")
        }
        other => panic!("not the text: {other:?}"),
    }
    let reply = split_text("Hallo vanuit Rust — ç’est ça").expect("text");
    let sealed = session.seal(&reply[0]).expect("seal");
    writeln!(to_js, "B {}", hex::encode(sealed.as_bytes())).expect("write");
    assert_eq!(
        read_tagged(&mut from_js, "T"),
        "Hallo vanuit Rust — ç’est ça",
        "JS decrypts Rust"
    );
    assert!(node.wait().expect("node exits").success());
}

#[test]
fn a_proof_of_work_solved_in_javascript_is_what_the_relay_accepts() {
    let mut challenge = [0u8; 16];
    OsRng.fill_bytes(&mut challenge);
    let script = "import { solve } from './src/pow.js'; \
        const challenge = Uint8Array.from(Buffer.from(process.argv[1], 'hex')); \
        process.stdout.write(Buffer.from(await solve(challenge, 14)).toString('hex'));";
    let out = Command::new("node")
        .args(["--input-type=module", "-e", script, &hex::encode(challenge)])
        .current_dir(web())
        .output()
        .unwrap_or_else(|e| panic!("node (20 or later) must be installed: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let solution: [u8; 8] = hex::decode(out.stdout)
        .expect("hex")
        .try_into()
        .expect("8 bytes");
    assert!(pow_valid(&challenge, 14, &solution), "the relay's check");
}

/// Every file of `dir` below it, as (relative path, bytes), sorted.
fn files_below(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                found.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    found.sort();
    found
}

/// The relay compiles `web/dist/` in: it must be what `npm run build`
/// makes of the page's sources today.
#[test]
fn the_built_page_in_dist_matches_its_sources() {
    let web = web();
    let fresh = tempfile::tempdir().unwrap();
    let status = Command::new("node")
        .arg("tools/build.mjs")
        .arg(fresh.path())
        .current_dir(&web)
        .status()
        .unwrap();
    assert!(status.success(), "the page's build failed");
    let built = files_below(fresh.path());
    let committed = files_below(&web.join("dist"));
    let names = |f: &[(String, Vec<u8>)]| f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&built), names(&committed));
    for ((name, new), (_, old)) in built.iter().zip(&committed) {
        assert!(
            new == old,
            "web/dist/{name} is stale: run `npm run build` in web/ and commit dist/"
        );
    }
}

/// The young person's page and the counsellor's console in headless
/// Chromium (Debian's `chromium`, driven by playwright-core) against
/// `fluister demo`, real counsellors and real consoles: WebTransport,
/// WebSocket, a cut connection, transfers, quick exit, closed hours; the
/// console's chats, marks, routing, end-and-block and guard; axe-core on
/// every screen, and screenshots in `target/screenshots/`
/// (web/test-browser/).
#[test]
fn the_page_and_the_console_work_in_chromium() {
    let web = web();
    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    // Bounded: the suite takes about a minute; a browser or process that
    // hangs fails the test instead of holding the whole run.
    let out = Command::new("timeout")
        .args(["--kill-after=10", "300", "node"])
        .args(["--test", "--test-concurrency=1", "test-browser/"])
        .env("FLUISTER_BIN", env!("CARGO_BIN_EXE_fluister"))
        .env("SCREENSHOT_DIR", &screenshots)
        .current_dir(&web)
        .output()
        .unwrap();
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.contains("# fail 0"),
        "the browser tests failed (Chromium at /usr/bin/chromium is needed):\n{report}"
    );
    // What each test used and found, for the record.
    for line in report.lines().filter(|l| l.contains("{\"test\"")) {
        println!("{line}");
    }
}
