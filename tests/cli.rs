//! The `fluister` binary as a user runs it: org set-up, a relay process, a
//! scripted chat through `--json`, the demo's printed commands, and the
//! one-line errors for bad input.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_fluister");
const WAIT: Duration = Duration::from_secs(20);

/// A child process killed when the test ends, whatever happens.
/// Its stderr is collected for audits.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(args: &[&str]) -> Proc {
    spawn_with_env(args, &[])
}

fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = child.stderr.take().unwrap();
    let collected = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = collected.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    Proc {
        stdin: child.stdin.take(),
        child,
        lines: rx,
        stderr: collected,
    }
}

impl Proc {
    fn line(&self) -> String {
        self.lines.recv_timeout(WAIT).expect("no output in time")
    }
    /// The next event, checked to carry the event list's version, which
    /// is taken off so that tests compare what the event says.
    fn event_any(&self) -> Value {
        let line = self.line();
        let mut e: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
        let version = e.as_object_mut().and_then(|o| o.remove("v"));
        assert_eq!(version, Some(Value::from(1)), "{line}");
        e
    }
    /// The next event, skipping status, queue statistics, colleagues, sent,
    /// delivered, and a counsellor's `ready` and coding form.
    fn event(&self) -> Value {
        loop {
            let e = self.event_any();
            if ![
                "status",
                "queue_stats",
                "colleague",
                "sent",
                "delivered",
                "ready",
                "form",
            ]
            .contains(&e["event"].as_str().unwrap_or(""))
            {
                return e;
            }
        }
    }
    /// The next event, which must be `connected`.
    fn connected(&self) {
        let e = self.event();
        assert_eq!(e["event"], "connected", "{e}");
    }
    fn say(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{text}").unwrap();
        stdin.flush().unwrap();
    }
    /// Like `say`, but false once the process no longer reads.
    fn try_say(&mut self, text: &str) -> bool {
        let Some(stdin) = self.stdin.as_mut() else {
            return false;
        };
        writeln!(stdin, "{text}").is_ok() && stdin.flush().is_ok()
    }
    fn eof(&mut self) {
        self.stdin = None;
    }
    fn wait_success(&mut self) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                return;
            }
            assert!(std::time::Instant::now() < deadline, "process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Asserts a failed run printed exactly one error line naming `needle`.
fn assert_one_line_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected: {stderr:?}"
    );
    assert!(stderr.starts_with("error: "), "{stderr:?}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    assert!(
        !stderr.contains("panicked")
            && !stderr.contains("backtrace")
            && !stderr.contains("RUST_BACKTRACE")
    );
}

struct Setup {
    dir: tempfile::TempDir,
    org_key: String,
}

fn org_setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let org = dir.path().join("org");
    let out = run(&["org", "init", "--dir", org.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["Sam", "Noor"] {
        let out = run(&[
            "org",
            "add-counsellor",
            "--dir",
            org.to_str().unwrap(),
            "--name",
            name,
            "--days",
            "2",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let org_key = std::fs::read_to_string(org.join("org.pub"))
        .unwrap()
        .trim()
        .to_owned();
    // Same config as `org init` wrote, but on an ephemeral port.
    let config = std::fs::read_to_string(org.join("relay.toml"))
        .unwrap()
        .replace("127.0.0.1:7443", "127.0.0.1:0")
        .replace("127.0.0.1:7444", "127.0.0.1:0");
    std::fs::write(org.join("test-relay.toml"), config).unwrap();
    Setup { dir, org_key }
}

impl Setup {
    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).to_str().unwrap().to_owned()
    }
}

fn start_relay(setup: &Setup) -> (Proc, String) {
    start_relay_with_env(setup, &[])
}

fn start_relay_with_env(setup: &Setup, env: &[(&str, &str)]) -> (Proc, String) {
    let relay = spawn_with_env(
        &["relay", "--config", &setup.path("org/test-relay.toml")],
        env,
    );
    let first = relay.line();
    let addr = first
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();
    (relay, addr)
}

/// `fluister counsellor --json` as Sam.
fn spawn_counsellor(setup: &Setup, addr: &str) -> Proc {
    let identity = setup.path("org/counsellors/Sam.identity");
    let ca = setup.path("org/relay-cert.pem");
    spawn(&[
        "counsellor",
        "--relay",
        addr,
        "--identity",
        &identity,
        "--ca",
        &ca,
        "--json",
    ])
}

/// `fluister chat --json` pinned to this organisation.
fn spawn_chat(setup: &Setup, addr: &str) -> Proc {
    let ca = setup.path("org/relay-cert.pem");
    spawn(&[
        "chat",
        "--relay",
        addr,
        "--org-key",
        &setup.org_key,
        "--ca",
        &ca,
        "--json",
    ])
}

#[test]
fn a_scripted_json_chat_runs_end_to_end() {
    let setup = org_setup();
    let (_relay, addr) = start_relay(&setup);
    let mut counsellor = spawn_counsellor(&setup, &addr);
    counsellor.connected();

    let mut client = spawn_chat(&setup, &addr);
    client.connected();
    assert_eq!(
        client.event(),
        json!({"event": "paired", "counsellor": "Sam"})
    );
    assert_eq!(counsellor.event(), json!({"event": "paired", "chat": 1}));

    client.say("hoi, ik moet iets vertellen");
    assert_eq!(
        counsellor.event(),
        json!({"event": "message", "text": "hoi, ik moet iets vertellen", "chat": 1})
    );
    counsellor.say("Ik luister. Neem je tijd.");
    assert_eq!(
        client.event(),
        json!({"event": "message", "text": "Ik luister. Neem je tijd."})
    );

    client.eof();
    assert_eq!(
        client.event(),
        json!({"event": "ended", "reason": "you_ended"})
    );
    client.wait_success();
    assert_eq!(
        counsellor.event(),
        json!({"event": "ended", "reason": "peer_ended", "chat": 1})
    );

    // The counsellor stays signed in and takes the next young person.
    let mut second = spawn_chat(&setup, &addr);
    second.connected();
    assert_eq!(
        second.event(),
        json!({"event": "paired", "counsellor": "Sam"})
    );
    counsellor.event();
    counsellor.say("/end");
    assert_eq!(
        counsellor.event(),
        json!({"event": "ended", "reason": "you_ended", "chat": 2})
    );
    assert_eq!(
        second.event(),
        json!({"event": "ended", "reason": "peer_ended"})
    );
    second.wait_success();
    counsellor.eof();
    counsellor.wait_success();
}

#[test]
fn the_demo_prints_commands_that_work() {
    let mut demo = spawn(&[
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let mut counsellor_cmd = None;
    let mut console_cmd = None;
    let mut chat_cmd = None;
    while counsellor_cmd.is_none() || chat_cmd.is_none() || console_cmd.is_none() {
        let line = demo.line();
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        match words.get(1).map(String::as_str) {
            Some("counsellor") if words[0].ends_with("fluister") => counsellor_cmd = Some(words),
            Some("console") if words[0].ends_with("fluister") => console_cmd = Some(words),
            Some("chat") if words[0].ends_with("fluister") => chat_cmd = Some(words),
            _ => {}
        }
    }
    // The console's command signs in and prints a link that opens it.
    let mut console_args = console_cmd.unwrap();
    console_args.remove(0);
    let console = spawn(&console_args.iter().map(String::as_str).collect::<Vec<_>>());
    let link = loop {
        let line = console.line();
        if let Some(link) = line.trim().strip_prefix("http://") {
            break link.to_owned();
        }
    };
    let (host, query) = link.split_once('/').unwrap();
    let mut http = std::net::TcpStream::connect(host).unwrap();
    write!(
        http,
        "GET /{query} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut http, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    // SIGTERM signs it out (a killed one would stay signed in until the
    // relay's idle timeout, and could be given the young person below).
    let mut console = console;
    let _ = Command::new("kill")
        .arg(console.child.id().to_string())
        .status();
    console.wait_success();
    let with_json = |mut w: Vec<String>| {
        w.remove(0);
        w.push("--json".into());
        w
    };
    let c = with_json(counsellor_cmd.unwrap());
    let y = with_json(chat_cmd.unwrap());
    let mut counsellor = spawn(&c.iter().map(String::as_str).collect::<Vec<_>>());
    counsellor.connected();
    let mut client = spawn(&y.iter().map(String::as_str).collect::<Vec<_>>());
    client.event();
    assert_eq!(
        client.event(),
        json!({"event": "paired", "counsellor": "Demo counsellor"})
    );
    client.say("werkt de demo?");
    counsellor.event();
    assert_eq!(
        counsellor.event(),
        json!({"event": "message", "text": "werkt de demo?", "chat": 1})
    );
    client.eof();
    client.wait_success();
    counsellor.eof();
    counsellor.wait_success();
    // SIGTERM stops the demo cleanly and deletes its throw-away keys.
    let dir = y
        .iter()
        .find(|w| w.ends_with("relay-cert.pem"))
        .unwrap()
        .clone();
    let _ = Command::new("kill")
        .arg(demo.child.id().to_string())
        .status();
    demo.wait_success();
    assert!(!Path::new(&dir).exists(), "demo keys left behind");
}

#[test]
fn bad_input_gives_one_line_errors() {
    let setup = org_setup();
    let (_relay, addr) = start_relay(&setup);
    let ca = setup.path("org/relay-cert.pem");
    let identity = setup.path("org/counsellors/Sam.identity");

    // Bad arguments.
    let out = run(&["chat", "--relay", &addr]);
    assert_one_line_error(&out, "--org-key");
    assert_eq!(out.status.code(), Some(2));
    assert_one_line_error(
        &run(&["chat", "--relay", "no-port", "--org-key", &setup.org_key]),
        "HOST:PORT",
    );
    assert_one_line_error(
        &run(&["chat", "--relay", &addr, "--org-key", "12345"]),
        "--org-key",
    );
    assert_one_line_error(
        &run(&[
            "org",
            "add-counsellor",
            "--dir",
            &setup.path("org"),
            "--name",
            " x",
        ]),
        "pseudonym",
    );
    assert_one_line_error(
        &run(&["org", "init", "--dir", &setup.path("org")]),
        "already exists",
    );

    // Unreadable and malformed key files.
    assert_one_line_error(
        &run(&[
            "counsellor",
            "--relay",
            &addr,
            "--identity",
            "/nonexistent/id",
            "--ca",
            &ca,
        ]),
        "/nonexistent/id",
    );
    let junk = setup.path("junk.identity");
    std::fs::write(&junk, "kind = 3\n").unwrap();
    assert_one_line_error(
        &run(&[
            "counsellor",
            "--relay",
            &addr,
            "--identity",
            &junk,
            "--ca",
            &ca,
        ]),
        "junk.identity",
    );
    let tampered = setup.path("tampered.identity");
    // The last hex digit of the signature, before the closing quote.
    let text = flip_hex_digit(Path::new(&identity), "certificate = ", 2);
    std::fs::write(&tampered, text).unwrap();
    assert_one_line_error(
        &run(&[
            "counsellor",
            "--relay",
            &addr,
            "--identity",
            &tampered,
            "--ca",
            &ca,
        ]),
        "signature",
    );
    assert_one_line_error(&run(&["relay", "--config", &identity]), "unknown field");
    assert_one_line_error(
        &run(&[
            "chat",
            "--relay",
            &addr,
            "--org-key",
            &setup.org_key,
            "--ca",
            &identity,
        ]),
        "certificate",
    );

    // An unreachable relay, and one whose TLS certificate is not trusted.
    assert_one_line_error(
        &run(&[
            "chat",
            "--relay",
            "127.0.0.1:9",
            "--org-key",
            &setup.org_key,
            "--ca",
            &ca,
            "--connect-timeout",
            "1",
        ]),
        "cannot reach relay",
    );
    let other = org_setup();
    assert_one_line_error(
        &run(&[
            "chat",
            "--relay",
            &addr,
            "--org-key",
            &setup.org_key,
            "--ca",
            &other.path("org/relay-cert.pem"),
        ]),
        "certificate",
    );
}

#[test]
fn a_counsellor_of_another_organisation_fails_the_clients_check() {
    let setup = org_setup();
    let (_relay, addr) = start_relay(&setup);
    let ca = setup.path("org/relay-cert.pem");
    let mut counsellor = spawn_counsellor(&setup, &addr);
    counsellor.event();
    let other = org_setup();
    let mut client = Command::new(BIN)
        .args([
            "chat",
            "--relay",
            &addr,
            "--org-key",
            &other.org_key,
            "--ca",
            &ca,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(client.stdin.take().unwrap(), "dit is geheim").unwrap();
    let out = client.wait_with_output().unwrap();
    assert_one_line_error(&out, "security check failed");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("paired"));
    assert_eq!(counsellor.event(), json!({"event": "paired", "chat": 1}));
    assert_eq!(
        counsellor.event(),
        json!({"event": "ended", "reason": "security_failure", "chat": 1})
    );
    counsellor.eof();
    counsellor.wait_success();
}

#[test]
fn the_relay_logs_no_address_and_no_content_even_at_trace_level() {
    let setup = org_setup();
    let (mut relay, addr) = start_relay_with_env(&setup, &[("RUST_LOG", "trace")]);
    let mut counsellor = spawn_counsellor(&setup, &addr);
    counsellor.event();
    let mut client = spawn_chat(&setup, &addr);
    client.event();
    client.event();
    client.say("ik woon in de Kerkstraat");
    counsellor.event();
    assert_eq!(counsellor.event()["text"], "ik woon in de Kerkstraat");
    client.eof();
    client.wait_success();
    counsellor.eof();
    counsellor.wait_success();
    let _ = Command::new("kill")
        .arg(relay.child.id().to_string())
        .status();
    relay.wait_success();
    let logs = relay.stderr.lock().unwrap().clone();
    assert!(logs.contains("relay started"), "the relay did log: {logs}");
    for forbidden in ["127.0.0.1", "Kerkstraat", "Sam", &setup.org_key[..16]] {
        assert!(
            !logs.contains(forbidden),
            "{forbidden:?} in relay logs:\n{logs}"
        );
    }
}

/// `fluister counsellor --json` as `name`, with extra flags.
fn spawn_named_counsellor(setup: &Setup, addr: &str, name: &str, extra: &[&str]) -> Proc {
    let identity = setup.path(&format!("org/counsellors/{name}.identity"));
    let ca = setup.path("org/relay-cert.pem");
    let mut args = vec![
        "counsellor",
        "--relay",
        addr,
        "--identity",
        &identity,
        "--ca",
        &ca,
        "--json",
    ];
    args.extend_from_slice(extra);
    spawn(&args)
}

#[test]
fn two_counsellors_a_queue_and_a_transfer_through_the_cli() {
    let setup = org_setup();
    let (_relay, addr) = start_relay(&setup);
    let mut sam = spawn_named_counsellor(&setup, &addr, "Sam", &["--capacity", "1"]);
    sam.connected();
    let mut noor = spawn_named_counsellor(&setup, &addr, "Noor", &["--capacity", "2", "--away"]);
    noor.connected();
    assert_eq!(noor.event_any()["event"], "status");

    let ca = setup.path("org/relay-cert.pem");
    let chat = |topic: &str| {
        spawn(&[
            "chat",
            "--relay",
            &addr,
            "--org-key",
            &setup.org_key,
            "--ca",
            &ca,
            "--json",
            "--topic",
            topic,
            "--language",
            "nl",
        ])
    };
    let mut first = chat("Sextortion (threats over images)");
    first.connected();
    assert_eq!(
        first.event(),
        json!({"event": "paired", "counsellor": "Sam"})
    );
    // The counsellor sees the young person's choice at once.
    assert_eq!(
        sam.event(),
        json!({"event": "paired", "chat": 1, "topic": 3, "language": "nl"})
    );
    let mut second = chat("5");
    second.connected();
    assert_eq!(second.event(), json!({"event": "queued", "position": 1}));

    // Noor is away: the transfer is refused and the chat stays with Sam.
    sam.say("/transfer Noor");
    assert_eq!(
        sam.event(),
        json!({"event": "transfer_refused", "chat": 1, "reason": "that counsellor is away", "code": "colleague_away"})
    );
    // Noor comes back and takes the waiting client; then Sam hands over.
    noor.say("/available");
    assert_eq!(
        second.event(),
        json!({"event": "paired", "counsellor": "Noor"})
    );
    assert_eq!(
        noor.event(),
        json!({"event": "paired", "chat": 1, "topic": 5, "language": "nl"})
    );
    sam.say("/transfer Noor");
    assert_eq!(
        sam.event(),
        json!({"event": "ended", "reason": "transferred", "chat": 1})
    );
    assert_eq!(
        first.event(),
        json!({"event": "transferred", "counsellor": "Noor"})
    );
    // A transferred young person keeps their topic and language.
    assert_eq!(
        noor.event(),
        json!({"event": "paired", "chat": 2, "topic": 3, "language": "nl"})
    );

    // Noor now has two chats: lines are addressed with @N.
    first.say("ben jij nu mijn hulpverlener?");
    assert_eq!(
        noor.event(),
        json!({"event": "message", "text": "ben jij nu mijn hulpverlener?", "chat": 2})
    );
    noor.say("hallo");
    assert_eq!(
        noor.event()["event"],
        "error",
        "a plain line is ambiguous with two chats"
    );
    noor.say("@2 Ja, ik ben Noor.");
    assert_eq!(
        first.event(),
        json!({"event": "message", "text": "Ja, ik ben Noor."})
    );
    noor.say("/chats");
    assert_eq!(noor.event(), json!({"event": "chats", "chats": [1, 2]}));
    noor.say("/block @1");
    assert_eq!(
        noor.event(),
        json!({"event": "ended", "reason": "you_blocked", "chat": 1})
    );
    assert_eq!(
        second.event(),
        json!({"event": "ended", "reason": "blocked"})
    );
    second.wait_success();
    first.eof();
    assert_eq!(
        first.event(),
        json!({"event": "ended", "reason": "you_ended"})
    );
    first.wait_success();
    assert_eq!(
        noor.event(),
        json!({"event": "ended", "reason": "peer_ended", "chat": 2})
    );
    for mut c in [sam, noor] {
        c.eof();
        c.wait_success();
    }
}

#[test]
fn outside_opening_hours_the_client_hears_when_the_chat_opens() {
    let setup = org_setup();
    // Closed today and tomorrow (UTC), open all day after that: robust
    // even if the test runs across midnight.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let today = chrono::DateTime::from_timestamp(now.as_secs() as i64, 0)
        .unwrap()
        .date_naive();
    let day = |n: u64| {
        (today + chrono::Days::new(n))
            .format("%Y-%m-%d")
            .to_string()
    };
    let hours = format!(
        "\n[hours]\ntime_zone = \"UTC\"\n\n[[hours.exceptions]]\ndate = \"{}\"\nopen = []\n\n[[hours.exceptions]]\ndate = \"{}\"\nopen = []\n\n[[hours.exceptions]]\ndate = \"{}\"\nopen = [\"00:00-24:00\"]\n",
        day(0),
        day(1),
        day(2)
    );
    let path = setup.path("org/test-relay.toml");
    let config = std::fs::read_to_string(&path).unwrap() + &hours;
    std::fs::write(&path, config).unwrap();
    let (_relay, addr) = start_relay(&setup);
    let mut client = spawn_chat(&setup, &addr);
    client.connected();
    let closed = client.event();
    assert_eq!(closed["event"], "closed");
    let next_open = closed["next_open"].as_i64().unwrap();
    let expected = (today + chrono::Days::new(2))
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp();
    assert!(
        next_open == expected || next_open == expected + 86_400,
        "{closed}"
    );
    client.wait_success();
}

#[test]
fn sigterm_drains_the_relay_and_no_message_is_lost_silently() {
    let setup = org_setup();
    let path = setup.path("org/test-relay.toml");
    let config =
        std::fs::read_to_string(&path).unwrap() + "\n[transport]\ndrain_deadline_secs = 5\n";
    std::fs::write(&path, config).unwrap();
    let (mut relay, addr) = start_relay(&setup);
    let mut counsellor = spawn_counsellor(&setup, &addr);
    counsellor.connected();
    let mut client = spawn_chat(&setup, &addr);
    client.connected();
    assert_eq!(client.event()["event"], "paired");

    let mut sent = std::collections::BTreeSet::new();
    let mut confirmed = std::collections::BTreeMap::new();
    let mut ended = None;
    let note = |e: &Value,
                sent: &mut std::collections::BTreeSet<u64>,
                confirmed: &mut std::collections::BTreeMap<u64, String>| {
        match e["event"].as_str() {
            Some("sent") => {
                sent.insert(e["id"].as_u64().unwrap());
            }
            Some(kind @ ("delivered" | "not_delivered")) => {
                confirmed.insert(e["id"].as_u64().unwrap(), kind.to_owned());
            }
            _ => {}
        }
    };
    for i in 0..20 {
        if !client.try_say(&format!("bericht {i}")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        if i == 10 {
            let _ = Command::new("kill")
                .arg(relay.child.id().to_string())
                .status();
        }
    }
    // Read the client's events until the chat has ended.
    while ended.is_none() {
        let e = client.event_any();
        note(&e, &mut sent, &mut confirmed);
        if e["event"] == "ended" {
            ended = Some(e["reason"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ended.as_deref(), Some("relay_shutdown"));
    // Every message the client sent is confirmed or reported unconfirmed.
    for id in &sent {
        assert!(
            confirmed.contains_key(id),
            "message {id} neither delivered nor reported: {confirmed:?}"
        );
    }
    assert!(sent.len() >= 5, "messages flowed before the drain");
    // The relay exits by itself, well within its deadline, and cleanly.
    relay.wait_success();
    // Nothing accepts new chats any more.
    let ca = setup.path("org/relay-cert.pem");
    let out = run(&[
        "chat",
        "--relay",
        &addr,
        "--org-key",
        &setup.org_key,
        "--ca",
        &ca,
        "--connect-timeout",
        "2",
    ]);
    assert!(!out.status.success());
    let _ = counsellor.child.kill();
}

#[test]
fn sighup_reloads_the_certificate_and_json_logs_say_so() {
    let setup = org_setup();
    let relay = spawn_with_env(
        &[
            "relay",
            "--config",
            &setup.path("org/test-relay.toml"),
            "--log-format",
            "json",
        ],
        &[],
    );
    let first = relay.line();
    let addr = first
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();
    // The operator puts a new certificate and key in place and sends SIGHUP.
    let (cert, key) =
        fluister::org::self_signed_relay_cert(&fluister::org::loopback_hosts(), 30).unwrap();
    std::fs::write(setup.path("org/relay-key.pem"), key.as_bytes()).unwrap();
    std::fs::write(setup.path("org/relay-cert.pem"), cert.as_bytes()).unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &relay.child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + WAIT;
    while !relay.stderr.lock().unwrap().contains("reloaded on SIGHUP") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload logged: {}",
            relay.stderr.lock().unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // A client that trusts only the new certificate gets in.
    let client = spawn_chat(&setup, &addr);
    client.connected();
    // Every log line is one JSON object.
    let logs = relay.stderr.lock().unwrap().clone();
    for line in logs.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
    assert!(logs.contains("Privacy in force"), "{logs}");
}

/// Runs the binary and fails the test if it does not finish in time: a
/// file that never ends must be an error, not a hang.
fn run_within(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("`fluister {}` did not finish in {limit:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn endless_and_damaged_files_are_refused_with_the_file_named() {
    let setup = org_setup();
    let org = setup.path("org");
    let zero = "/dev/zero";
    let limit = Duration::from_secs(20);
    let (_relay, addr) = start_relay(&setup);
    let ca = setup.path("org/relay-cert.pem");
    // A file that never ends, wherever a file is read.
    assert_one_line_error(
        &run_within(&["relay", "--check-config", zero], limit),
        "larger than",
    );
    let config = setup.path("zero.toml");
    std::fs::write(
        &config,
        format!("tls_cert = \"{zero}\"\ntls_key = \"{org}/relay-key.pem\"\n"),
    )
    .unwrap();
    let out = run_within(&["relay", "--check-config", &config], limit);
    assert_one_line_error(&out, "tls_cert");
    assert_one_line_error(&out, "larger than");
    assert_one_line_error(
        &run_within(
            &["chat", "--relay", &addr, "--org-key", zero, "--ca", &ca],
            limit,
        ),
        "--org-key",
    );
    assert_one_line_error(
        &run_within(
            &[
                "chat",
                "--relay",
                &addr,
                "--org-key",
                &setup.org_key,
                "--ca",
                zero,
            ],
            limit,
        ),
        "larger than",
    );
    assert_one_line_error(
        &run_within(
            &[
                "counsellor",
                "--relay",
                &addr,
                "--identity",
                zero,
                "--ca",
                &ca,
            ],
            limit,
        ),
        "larger than",
    );

    // One flipped bit in the relay certificate's signature: it still
    // parses as PEM and its key still matches, but no client would accept
    // it. It is refused before any client meets it.
    use base64::Engine;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(setup.path("org/relay-cert.pem")).unwrap();
    let mut der = CertificateDer::from_pem_slice(&pem).unwrap().to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let body = base64::engine::general_purpose::STANDARD.encode(&der);
    let mut damaged = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        damaged.push_str(std::str::from_utf8(line).unwrap());
        damaged.push('\n');
    }
    damaged.push_str("-----END CERTIFICATE-----\n");
    std::fs::write(setup.path("org/damaged-cert.pem"), damaged).unwrap();
    let config = setup.path("org/damaged.toml");
    std::fs::write(
        &config,
        "tls_cert = \"damaged-cert.pem\"\ntls_key = \"relay-key.pem\"\n",
    )
    .unwrap();
    let out = run_within(&["relay", "--check-config", &config], limit);
    assert_one_line_error(&out, "damaged-cert.pem");
    assert_one_line_error(&out, "bad signature");

    // A damaged organisation key is named before it issues anything.
    let key_path = setup.path("org/org.key");
    let text = flip_hex_digit(Path::new(&key_path), "secret_key = ", 3);
    std::fs::write(&key_path, text).unwrap();
    let out = run_within(
        &["org", "add-counsellor", "--dir", &org, "--name", "Lisa"],
        limit,
    );
    assert_one_line_error(&out, "org.key");
    assert_one_line_error(&out, "does not match");
    assert!(!Path::new(&setup.path("org/counsellors/Lisa.identity")).exists());
    assert_one_line_error(
        &run_within(&["org", "list", "--dir", &org], limit),
        "org.key",
    );

    // A config without counsellor sign-in passes, and says what that means.
    let empty = setup.path("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let out = run_within(&["relay", "--check-config", &empty], limit);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("warning: no counsellor_ca") && stdout.contains("never pair"),
        "{stdout}"
    );
}

#[test]
fn a_relay_killed_and_restarted_is_noticed_at_once() {
    let setup = org_setup();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = std::fs::read_to_string(setup.path("org/test-relay.toml"))
        .unwrap()
        // The relay's port only: the admin listener keeps an ephemeral
        // one (the web transports take the relay's port number on TCP).
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
            1,
        );
    std::fs::write(setup.path("org/fixed.toml"), config).unwrap();
    let relay = || spawn(&["relay", "--config", &setup.path("org/fixed.toml")]);
    let mut first = relay();
    let addr = format!("127.0.0.1:{port}");
    assert!(first.line().contains(&addr));
    let sam = spawn_counsellor(&setup, &addr);
    sam.connected();
    let mut young = spawn_chat(&setup, &addr);
    young.connected();
    assert_eq!(young.event()["event"], "paired");
    young.say("hallo");
    assert_eq!(sam.event()["event"], "paired");
    assert_eq!(sam.event()["event"], "message");
    while young.event_any() != json!({"event": "delivered", "id": 1}) {}

    // The relay dies without a word, and is back a moment later.
    let killed = std::time::Instant::now();
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let second = relay();
    assert!(second.line().contains(&addr));
    // Its stateless resets tell both sides at their next packet (a
    // keep-alive within 5 s), long before the 20 s idle timeout.
    assert_eq!(young.event()["event"], "reconnecting");
    assert!(
        killed.elapsed() < Duration::from_secs(12),
        "noticed after {:?}",
        killed.elapsed()
    );
    assert_eq!(
        young.event(),
        json!({"event": "ended", "reason": "ended_while_away"})
    );
    young.wait_success();
    assert_eq!(sam.event()["event"], "reconnecting");
    assert_eq!(
        sam.event(),
        json!({"event": "ended", "reason": "ended_while_away", "chat": 1})
    );
    drop(second);
}

/// The text of `path` with one hex digit changed: the one `from_end`
/// characters before the end of the line that starts with `prefix`.
fn flip_hex_digit(path: &Path, prefix: &str, from_end: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text.lines().find(|l| l.starts_with(prefix)).unwrap();
    let mut flipped = line.to_owned();
    let at = flipped.len() - from_end;
    let digit = if &flipped[at..at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    flipped.replace_range(at..at + 1, digit);
    text.replace(line, &flipped)
}

// ---- case statistics (issue: counsellors code each chat; the relay keeps monthly counts) ----

/// The relay config of `setup` with a `[stats]` section.
fn with_stats(setup: &Setup, months_back: u16) {
    let path = setup.path("org/test-relay.toml");
    let mut config = std::fs::read_to_string(&path).unwrap();
    config.push_str(&format!(
        "\n[stats]\nstore = \"stats.sqlite3\"\nmonths_back = {months_back}\n"
    ));
    std::fs::write(&path, config).unwrap();
}

/// The month `back` months before this one, as YYYY-MM.
fn month_before(back: i32) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let this = fluister::core::coding::Month::of_unix(now).unwrap();
    this.plus(-back).unwrap().to_string()
}

/// 180 codings shaped like the helpline figures: 30, 30, 60 and 60 a
/// month; 89 % made contact themselves; two thirds minors, a quarter 15
/// or younger; one in five more than one perpetrator; criminal
/// exploitation growing from a sixth to a third; nearly all in Dutch.
/// Each coding is `/code` arguments by field and value number.
fn synthetic_season(months: &[String; 4]) -> Vec<String> {
    // Per field: (value number, count in the first two months, in the last two).
    type Counts = &'static [(u8, usize, usize)];
    let fields: [(usize, Counts); 7] = [
        (1, &[(1, 53, 107), (2, 4, 8), (3, 3, 5)]),
        (
            2,
            &[(1, 3, 7), (2, 12, 23), (3, 25, 50), (4, 16, 32), (5, 4, 8)],
        ),
        (
            3,
            &[
                (1, 25, 40),
                (2, 10, 40),
                (3, 3, 4),
                (4, 10, 15),
                (5, 5, 10),
                (6, 5, 8),
                (7, 2, 3),
            ],
        ),
        (4, &[(1, 40, 80), (2, 17, 33), (3, 3, 7)]),
        (5, &[(1, 12, 24), (2, 42, 84), (3, 6, 12)]),
        (6, &[(1, 57, 113), (2, 3, 7)]),
        (7, &[(1, 33, 67), (2, 20, 40), (3, 7, 13)]),
    ];
    // A fixed shuffle per field, so that values mix across codings.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut columns: Vec<Vec<String>> = Vec::new();
    for (field, counts) in fields {
        let mut column = Vec::new();
        for period in 0..2 {
            let mut part: Vec<String> = Vec::new();
            for &(value, first, second) in counts {
                let n = if period == 0 { first } else { second };
                part.extend((0..n).map(|_| format!("{field}={value}")));
            }
            for i in (1..part.len()).rev() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                part.swap(i, (seed % (i as u64 + 1)) as usize);
            }
            assert_eq!(part.len(), if period == 0 { 60 } else { 120 });
            column.extend(part);
        }
        columns.push(column);
    }
    (0..180)
        .map(|i| {
            let month = match i {
                0..30 => &months[0],
                30..60 => &months[1],
                60..120 => &months[2],
                _ => &months[3],
            };
            let pairs: Vec<&str> = columns.iter().map(|c| c[i].as_str()).collect();
            format!("/code {}, month={month}", pairs.join(", "))
        })
        .collect()
}

/// `fluister stats report --format json` of the setup's relay.
fn stats_report(setup: &Setup, from: &str, to: &str, format: &str) -> String {
    let out = run(&[
        "stats",
        "report",
        "--config",
        &setup.path("org/test-relay.toml"),
        "--from",
        from,
        "--to",
        to,
        "--format",
        format,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn count(cell: &Value) -> Option<f64> {
    (cell["shown"] == "count").then(|| cell["n"].as_f64().unwrap())
}

/// The share (percent) of the values `columns` of field `title`.
fn share(report: &Value, title: &str, columns: &[&str]) -> f64 {
    let table = report["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["title"] == title)
        .unwrap_or_else(|| panic!("no field {title}"));
    let names: Vec<&str> = table["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let totals = table["cells"].as_array().unwrap().last().unwrap();
    let grand = count(totals.as_array().unwrap().last().unwrap()).expect("grand total shown");
    let part: f64 = columns
        .iter()
        .map(|c| {
            let j = names.iter().position(|n| n == c).unwrap();
            count(&totals[j]).unwrap_or_else(|| panic!("{title}: {c} hidden"))
        })
        .sum();
    100.0 * part / grand
}

#[test]
fn a_season_coded_through_the_cli_counsellor_gives_the_helplines_figures() {
    let setup = org_setup();
    with_stats(&setup, 4);
    let (_relay, addr) = start_relay(&setup);
    let months = [3, 2, 1, 0].map(month_before);
    let mut counsellor = spawn_counsellor(&setup, &addr);
    counsellor.connected();
    let form = loop {
        let e = counsellor.event_any();
        if e["event"] == "form" {
            break e;
        }
    };
    assert_eq!(form["fields"].as_array().unwrap().len(), 7, "{form}");
    let codings = synthetic_season(&months);
    for line in &codings {
        counsellor.say(line);
    }
    counsellor.eof();
    let mut counted = 0;
    while let Ok(line) = counsellor.lines.recv_timeout(WAIT) {
        let e: Value = serde_json::from_str(&line).unwrap();
        assert_ne!(e["event"], "error", "{e}");
        if e["event"] == "coded" {
            counted += e["counted"].as_u64().unwrap_or(0);
        }
    }
    counsellor.wait_success();
    assert_eq!(counted, 180, "every coding counted once");

    let whole: Value =
        serde_json::from_str(&stats_report(&setup, &months[0], &months[3], "json")).unwrap();
    let per_month: Vec<Option<f64>> = whole["contacts"]["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| count(&row[0]))
        .collect();
    assert_eq!(
        per_month,
        [Some(30.0), Some(30.0), Some(60.0), Some(60.0), Some(180.0)]
    );
    let near = |got: f64, want: f64| assert!((got - want).abs() < 1.0, "{got} vs {want}");
    near(
        share(&whole, "Contact made by", &["The young person"]),
        88.9,
    );
    near(
        share(&whole, "Age band", &["12 or younger", "13–15", "16–17"]),
        66.7,
    );
    near(share(&whole, "Age band", &["12 or younger", "13–15"]), 25.0);
    near(share(&whole, "More than one perpetrator", &["Yes"]), 20.0);
    near(share(&whole, "Language", &["Dutch"]), 94.4);

    // The doubling, and criminal exploitation growing, period by period.
    let first: Value =
        serde_json::from_str(&stats_report(&setup, &months[0], &months[1], "json")).unwrap();
    let second: Value =
        serde_json::from_str(&stats_report(&setup, &months[2], &months[3], "json")).unwrap();
    let grand = |r: &Value| {
        count(
            r["contacts"]["cells"]
                .as_array()
                .unwrap()
                .last()
                .unwrap()
                .get(0)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!((grand(&first), grand(&second)), (60.0, 120.0));
    near(
        share(&first, "Type", &["Criminal exploitation (drugs)"]),
        16.7,
    );
    near(
        share(&second, "Type", &["Criminal exploitation (drugs)"]),
        33.3,
    );

    let table = stats_report(&setup, &months[0], &months[3], "table");
    assert!(table.contains("Chats coded per month"), "{table}");
    println!("{table}");

    // The store on disk holds counters and nothing else.
    let db = rusqlite::Connection::open_with_flags(
        setup.path("org/stats.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut tables: Vec<(String, String)> = db
        .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    tables.sort();
    let names: Vec<&str> = tables.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["cross_counts", "field_counts", "months"]);
    let form_words: Vec<String> = form["fields"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| {
            std::iter::once(f["name"].as_str().unwrap().to_owned()).chain(
                f["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned()),
            )
        })
        .collect();
    for (table, _) in &tables {
        let mut q = db.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let columns = q.column_count();
        let rows = q
            .query_map([], |r| {
                (0..columns)
                    .map(|i| r.get::<_, rusqlite::types::Value>(i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap();
        for row in rows {
            let row = row.unwrap();
            let rusqlite::types::Value::Text(month) = &row[0] else {
                panic!("{table}: a first column that is not a month: {row:?}");
            };
            assert!(
                months.contains(month),
                "{table}: {month:?} is not a coded month"
            );
            for value in &row[1..] {
                match value {
                    rusqlite::types::Value::Integer(n) => assert!(*n > 0 && *n <= 180),
                    rusqlite::types::Value::Text(t) => {
                        assert!(form_words.contains(t), "{table}: {t:?} is not in the form")
                    }
                    other => panic!("{table}: {other:?} is neither a name nor a count"),
                }
            }
        }
    }
    let bytes = std::fs::read(setup.path("org/stats.sqlite3")).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("Sam"), "no pseudonym in the file");
    let day = text.as_bytes().windows(10).any(|w| {
        w[4] == b'-'
            && w[7] == b'-'
            && w.iter()
                .enumerate()
                .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit())
    });
    assert!(!day, "no YYYY-MM-DD anywhere in the file");
    assert!(!Path::new(&setup.path("org/stats.sqlite3-journal")).exists());
}

/// Codings per month in the store, read as a restarted relay would (a
/// read-write open rolls back what a crash left half-written).
fn months_in_store(path: &str) -> Vec<(String, i64, i64)> {
    let db = rusqlite::Connection::open(path).unwrap();
    db.prepare(
        "SELECT m.month, m.codings, (SELECT sum(n) FROM field_counts f
             WHERE f.month = m.month AND f.field = 'Type') FROM months m ORDER BY m.month",
    )
    .unwrap()
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[test]
fn a_relay_killed_in_the_middle_of_a_batch_keeps_all_of_it_or_none() {
    let setup = org_setup();
    with_stats(&setup, 2);
    // The writer pauses 200 ms after each coding inside its transaction,
    // so a batch of 5 takes a second to write.
    let env = [("FLUISTER_STATS_SLOW_WRITES_FOR_TESTS", "200")];
    let (mut relay, addr) = start_relay_with_env(&setup, &env);
    let mut counsellor = spawn_counsellor(&setup, &addr);
    counsellor.connected();
    while counsellor.event_any()["event"] != "form" {}
    let this_month = month_before(0);
    let last_month = month_before(1);
    // A first batch, counted.
    for _ in 0..5 {
        counsellor.say(&format!("/code 3=2, 2=2, month={last_month}"));
    }
    loop {
        let e = counsellor.event();
        if e["event"] == "coded" && e["counted"] == 5 {
            break;
        }
    }
    // A second: the relay dies while it writes it.
    for _ in 0..5 {
        counsellor.say(&format!("/code 3=1, 2=3, month={this_month}"));
    }
    // The rollback journal exists only while a transaction writes.
    let store = setup.path("org/stats.sqlite3");
    let journal = format!("{store}-journal");
    let deadline = std::time::Instant::now() + WAIT;
    while !Path::new(&journal).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the second batch was never written"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();
    drop(counsellor);
    assert!(
        Path::new(&journal).exists(),
        "the kill came in the middle of the transaction"
    );
    let months = months_in_store(&store);
    assert_eq!(
        months,
        [(last_month.clone(), 5, 5)],
        "the whole first batch, none of the second"
    );

    // The relay comes back with the counters as they were, and counts on.
    let (_relay, addr) = start_relay(&setup);
    let mut counsellor = spawn_counsellor(&setup, &addr);
    counsellor.connected();
    while counsellor.event_any()["event"] != "form" {}
    for _ in 0..5 {
        counsellor.say(&format!("/code 3=1, month={this_month}"));
    }
    loop {
        let e = counsellor.event();
        if e["event"] == "coded" && e["counted"] == 5 {
            break;
        }
    }
    counsellor.eof();
    counsellor.wait_success();
    assert_eq!(
        months_in_store(&store),
        [(last_month, 5, 5), (this_month, 5, 5)]
    );
}
