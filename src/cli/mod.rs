//! The `fluister` command: argument parsing (clap) and the glue from each
//! subcommand to the library.
//!
//! Every failure ends as one line on stderr (`error: ...`) and exit code 1;
//! clap's own usage errors exit with 2. With `--json`, the chat commands
//! write one JSON event per line on stdout and report a fatal error as an
//! `error` event too.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use rand_core::OsRng;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::client::chat::{self, ChatEvent};
use crate::client::{self, ClientError, ConnectOptions};
use crate::config::RelayConfig;
use crate::crypto::cert::OrgPublicKey;
use crate::org;
use crate::relay;
use crate::tls;

type CliResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Parser)]
#[command(
    name = "fluister",
    version,
    about = "Anonymous, end-to-end encrypted helpline chat over QUIC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Organisation keys and counsellor identities (run on an admin machine).
    #[command(subcommand)]
    Org(OrgCommand),
    /// Case statistics: the report of the counts counsellors coded.
    #[command(subcommand)]
    Stats(StatsCommand),
    /// Run the relay. Without --config: embedded defaults on 127.0.0.1:7443.
    /// Single keys can be overridden with FLUISTER__KEY or
    /// FLUISTER__TABLE__KEY environment variables (see deploy/fluister.toml).
    Relay {
        /// Relay config file (see deploy/fluister.toml).
        #[arg(long, value_name = "FILE", conflicts_with = "check_config")]
        config: Option<PathBuf>,
        /// Check a config file and the files it names (certificate, key,
        /// counsellor CA, revocation list), then exit: 0 if usable, 1 if not.
        #[arg(long, value_name = "FILE")]
        check_config: Option<PathBuf>,
        /// Log lines on stderr as text or as JSON objects.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Run a relay with a throw-away organisation and one counsellor, and
    /// print the commands to join as client and as counsellor.
    Demo {
        /// UDP address to listen on.
        #[arg(long, default_value = crate::config::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
        /// TCP address of the admin listener (metrics, health).
        #[arg(long, default_value = crate::config::DEFAULT_ADMIN_LISTEN)]
        admin_listen: std::net::SocketAddr,
        /// Loopback TCP address of the young person's page (plain HTTP).
        #[arg(long, default_value = DEMO_PAGE_LISTEN)]
        page_listen: std::net::SocketAddr,
    },
    /// Sign in as a counsellor and take chats. One line = one message;
    /// "/help" lists the commands (several chats, @N, /end, /block, /transfer, /away ...).
    Counsellor {
        #[command(flatten)]
        conn: ConnArgs,
        /// Counsellor identity file from `fluister org add-counsellor`.
        #[arg(long, value_name = "FILE")]
        identity: PathBuf,
        #[command(flatten)]
        taking: Taking,
    },
    /// Sign in as a counsellor and work in the browser: serves the
    /// counsellor's console on loopback and prints a one-time link to it.
    Console {
        /// Relay address.
        #[arg(long, value_name = "HOST:PORT")]
        relay: String,
        /// Another relay of the same service (a cluster), tried in turn when
        /// the one in use is gone or leaves. Repeatable.
        #[arg(long = "other-relay", value_name = "HOST:PORT")]
        other_relays: Vec<String>,
        /// PEM certificate to trust for the relay (default: the public web PKI).
        #[arg(long, value_name = "CERT")]
        ca: Option<PathBuf>,
        /// Seconds to wait for the relay to answer.
        #[arg(long, value_name = "SECS", default_value_t = 10)]
        connect_timeout: u64,
        /// Counsellor identity file from `fluister org add-counsellor`.
        #[arg(long, value_name = "FILE")]
        identity: PathBuf,
        #[command(flatten)]
        taking: Taking,
        /// Where the console's web UI listens (port 0: any free port).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Listen on an address beyond loopback: anyone who can reach it and
        /// gets the link can read and write your chats, unencrypted.
        #[arg(long)]
        risk_plaintext_on_network: bool,
        /// Canned replies, one per line (default: replies.txt beside the identity file).
        #[arg(long, value_name = "FILE")]
        replies: Option<PathBuf>,
        /// Open the link in the desktop's browser.
        #[arg(long)]
        open: bool,
    },
    /// Chat anonymously with a counsellor (one line = one message; end of input ends the chat).
    Chat {
        #[command(flatten)]
        conn: ConnArgs,
        /// The organisation's public key (64 hex digits, or a file holding it).
        #[arg(long, value_name = "ORG_PUBLIC_KEY")]
        org_key: String,
        /// What the chat is about: a topic id or its label (see the relay's list).
        #[arg(long, value_name = "TOPIC")]
        topic: Option<String>,
        /// Preferred language, e.g. nl or en.
        #[arg(long, value_name = "CODE")]
        language: Option<String>,
    },
}

/// What a counsellor takes.
#[derive(Args)]
struct Taking {
    /// How many chats to take at once.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    capacity: u8,
    /// Topic ids to serve, comma-separated (default: all).
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    topics: Option<Vec<u16>>,
    /// Languages to serve, comma-separated (default: all the relay offers).
    #[arg(long, value_name = "CODES", value_delimiter = ',')]
    languages: Option<Vec<String>>,
    /// Sign in as away (take no chats until "/available", or the console's switch).
    #[arg(long)]
    away: bool,
}

impl Taking {
    fn settings(self, options: &ConnectOptions, others: &[String]) -> chat::CounsellorSettings {
        chat::CounsellorSettings {
            reconnect: Some(reconnect(options, others)),
            available: !self.away,
            capacity: self.capacity,
            topics: self.topics,
            languages: self.languages,
            quick_exit: None,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
struct ConnArgs {
    /// Relay address.
    #[arg(long, value_name = "HOST:PORT")]
    relay: String,
    /// Another relay of the same service (a cluster), tried in turn when
    /// the one in use is gone or leaves; the chat resumes there.
    /// Repeatable.
    #[arg(long = "other-relay", value_name = "HOST:PORT")]
    other_relays: Vec<String>,
    /// PEM certificate to trust for the relay (default: the public web PKI).
    #[arg(long, value_name = "CERT")]
    ca: Option<PathBuf>,
    /// Print one JSON event per line instead of text.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the relay to answer.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    connect_timeout: u64,
}

#[derive(Subcommand)]
enum StatsCommand {
    /// The case statistics of a range of months, with counts below
    /// `stats.k` hidden (THREAT-MODEL.md §16). Reads the store; the relay
    /// may keep running.
    Report {
        /// The relay config whose [stats] section gives the form, the
        /// cross-tables, k, noise and the store.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Read this store instead of the config's `stats.store` (a copy,
        /// or the keeper's file in a cluster).
        #[arg(long, value_name = "FILE")]
        store: Option<PathBuf>,
        /// First month, YYYY-MM. Default: 11 months before --to.
        #[arg(long, value_name = "YYYY-MM")]
        from: Option<String>,
        /// Last month, YYYY-MM. Default: this month.
        #[arg(long, value_name = "YYYY-MM")]
        to: Option<String>,
        #[arg(long, value_enum, default_value_t = crate::stats::Format::Table)]
        format: crate::stats::Format,
    },
}

#[derive(Subcommand)]
enum OrgCommand {
    /// Create an organisation folder: signing key, public key, relay TLS
    /// certificate and key, counsellor CA, and a relay config.
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Extra DNS name or IP for the relay certificate (repeatable); loopback names are always included.
        #[arg(long = "hostname", value_name = "NAME")]
        hostnames: Vec<String>,
    },
    /// Issue a counsellor identity file: end-to-end key, certificate, relay credential.
    AddCounsellor {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The counsellor's pseudonym, shown to young people.
        #[arg(long, value_name = "PSEUDONYM")]
        name: String,
        /// Lifetime of the certificate and credential.
        #[arg(long, value_name = "N", default_value_t = org::DEFAULT_COUNSELLOR_DAYS)]
        days: u32,
        /// Where to write the identity file (default DIR/counsellors/NAME.identity).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// List the counsellor credentials issued, with expiry and status.
    List {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Renew a counsellor's certificate and credential (same keys); the
    /// identity file is replaced in place.
    Renew {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[arg(long, value_name = "PSEUDONYM")]
        name: String,
        #[arg(long, value_name = "N", default_value_t = org::DEFAULT_COUNSELLOR_DAYS)]
        days: u32,
    },
    /// Revoke a counsellor's credentials (by pseudonym or serial number) and
    /// write the revocation list the relay reads.
    Revoke {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// A pseudonym (all its credentials) or one serial number.
        #[arg(long, value_name = "PSEUDONYM_OR_SERIAL")]
        name: String,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line: clap's first line names the problem.
            let text = e.render().to_string();
            let summary: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
                .map(str::trim)
                .collect();
            eprintln!("{} (see fluister --help)", summary.join(" "));
            return ExitCode::from(2);
        }
    };
    // The relay sets up logging once its config (and log level) is read.
    match cli.command {
        Command::Relay { .. } => {}
        Command::Demo { .. } => init_logging("info", LogFormat::Text),
        _ => init_logging("warn", LogFormat::Text),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command));
    // A blocking read of stdin may still be pending; do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr at RUST_LOG's level, or `default` without it.
fn init_logging(default: &str, format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // The QUIC stack formats peer addresses into its messages (quinn-udp
    // even at warn, for send errors), and the web stack formats requests
    // with their headers (web-transport-quinn logs each CONNECT with its
    // User-Agent and Origin at debug), so their logs are off whatever
    // RUST_LOG says; rustls may speak only of errors. The privacy audit
    // (tests/audit.rs) runs at trace and checks.
    for dep in [
        "quinn=off",
        "quinn_proto=off",
        "quinn_udp=off",
        "web_transport_quinn=off",
        "web_transport_proto=off",
        "tungstenite=off",
        "tokio_tungstenite=off",
        "hyper=off",
        "hyper_util=off",
        "axum=off",
        "rustls=error",
    ] {
        if let Ok(d) = dep.parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn run(command: Command) -> CliResult {
    match command {
        Command::Stats(StatsCommand::Report {
            config,
            store,
            from,
            to,
            format,
        }) => {
            let config = RelayConfig::load(&config)?;
            let stats = config
                .stats
                .as_ref()
                .ok_or("the config has no [stats] section")?
                .stats()?;
            let path = store
                .or(stats.store.clone())
                .ok_or("the config names no stats.store; give --store FILE")?;
            let (from, to) = crate::stats::report::months(from.as_deref(), to.as_deref())?;
            let counts = crate::stats::Store::open_read_only(&path)?.counts(from, to)?;
            let report = crate::stats::Report::build(&stats, &counts, from, to);
            print!("{}", crate::stats::render(&report, format));
            Ok(())
        }
        Command::Org(OrgCommand::Init { dir, hostnames }) => {
            let mut hosts = org::loopback_hosts();
            hosts.extend(hostnames);
            let report = org::init(&dir, &hosts, &mut OsRng)?;
            println!("Organisation created in {}", report.dir.display());
            println!("Organisation public key (give this to frontends):");
            println!("{}", report.org_public_key.to_hex());
            println!(
                "Keep {} and {} offline; the relay needs only {}, {}, {} and {}.",
                org::ORG_KEY_FILE,
                org::CA_KEY_FILE,
                org::RELAY_CERT_FILE,
                org::RELAY_KEY_FILE,
                org::CA_CERT_FILE,
                org::RELAY_CONFIG_FILE
            );
            Ok(())
        }
        Command::Org(OrgCommand::AddCounsellor {
            dir,
            name,
            days,
            out,
        }) => {
            let path = org::add_counsellor(&dir, &name, days, out.as_deref(), &mut OsRng)?;
            println!(
                "Counsellor identity for {name} written to {} (valid {days} days).",
                path.display()
            );
            println!("Hand it to the counsellor over a secure channel; it is secret.");
            Ok(())
        }
        Command::Org(OrgCommand::List { dir }) => {
            org::check_keys(&dir)?;
            let register = org::lifecycle::Register::load(&dir)?;
            let now = org::now_unix();
            println!(
                "{:<24} {:<34} {:<22} status",
                "pseudonym", "serial", "expires (UTC)"
            );
            for issued in &register.credentials {
                let expires = chrono::DateTime::from_timestamp(issued.not_after as i64, 0)
                    .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_default();
                let status = match issued.status(now) {
                    org::lifecycle::Status::Valid => {
                        format!("valid, {} days left", (issued.not_after - now) / 86_400)
                    }
                    org::lifecycle::Status::Expired => "expired".into(),
                    org::lifecycle::Status::Revoked => "revoked".into(),
                };
                println!(
                    "{:<24} {:<34} {:<22} {status}",
                    issued.pseudonym, issued.serial, expires
                );
            }
            Ok(())
        }
        Command::Org(OrgCommand::Renew { dir, name, days }) => {
            let (path, _) = org::renew_counsellor(&dir, &name, days, &mut OsRng)?;
            println!(
                "Renewed {name} for {days} days; {} was replaced. Hand it to the counsellor again.",
                path.display()
            );
            println!(
                "The previous credential stays valid until it expires, unless you revoke it by its serial."
            );
            Ok(())
        }
        Command::Org(OrgCommand::Revoke { dir, name }) => {
            org::check_keys(&dir)?;
            let (revoked, crl) = org::lifecycle::revoke(&dir, &name)?;
            for issued in &revoked {
                println!("Revoked {} (serial {}).", issued.pseudonym, issued.serial);
            }
            println!(
                "Revocation list written to {}. Copy it to the relay (counsellor_crl); the relay \
                 picks it up within tls_watch_secs, or at once on SIGHUP, and cuts off the \
                 counsellor if signed in.",
                crl.display()
            );
            Ok(())
        }
        Command::Relay {
            check_config: Some(path),
            ..
        } => {
            let config = RelayConfig::load(&path)?;
            relay::server_files::load(&config)?;
            if let Some(cluster) = &config.cluster {
                relay::cluster::Seal::load(&cluster.secret_file)?;
            }
            let service = config.service()?;
            if config.counsellor_ca.is_none() {
                println!(
                    "warning: no counsellor_ca: nobody can sign in as a counsellor, so this relay \
                     can queue young people but never pair them. Set counsellor_ca (from \
                     `fluister org init`) for a working helpline."
                );
            }
            println!(
                "{}: OK. Relay on {} (UDP); admin listener {}; {} topics, {} languages; counsellor sign-in {}; revocation list {}.",
                path.display(),
                config.listen,
                if config.admin.enabled {
                    config.admin.listen.to_string()
                } else {
                    "off".into()
                },
                service.topics.len(),
                service.languages.len(),
                if config.counsellor_ca.is_some() {
                    "on"
                } else {
                    "off"
                },
                if config.counsellor_crl.is_some() {
                    "on"
                } else {
                    "none"
                },
            );
            Ok(())
        }
        Command::Relay {
            config, log_format, ..
        } => {
            let config = match &config {
                Some(path) => RelayConfig::load(path)?,
                None => RelayConfig::from_env()?,
            };
            init_logging(&config.log_level, log_format);
            let running = relay::start(&config, Default::default()).await?;
            println!(
                "Fluister relay listening on {} (UDP, ALPN fluister/1).",
                running.local_addr()
            );
            if let Some(admin) = running.admin_addr() {
                println!(
                    "Metrics and health checks on http://{admin} (/metrics, /healthz, /readyz)."
                );
            }
            if config.tls_cert.is_none() {
                let pem_path = write_public_cert(running.certificate_pem())?;
                println!(
                    "Generated relay certificate: {} (pass it to clients with --ca)",
                    pem_path.display()
                );
            }
            if config.counsellor_ca.is_none() {
                println!("No counsellor_ca configured: nobody can sign in as a counsellor.");
            }
            wait_for_signal().await;
            println!("Shutting down.");
            running.shutdown().await;
            Ok(())
        }
        Command::Demo {
            listen,
            admin_listen,
            page_listen,
        } => demo(listen, admin_listen, page_listen).await,
        Command::Counsellor {
            conn,
            identity,
            taking,
        } => {
            let identity = org::Identity::load(&identity)?;
            let credential = identity.relay_credential()?;
            let json = conn.json;
            let options = connect_options(&conn, Some(credential))?;
            let (quick_exit, exit_rx) = tokio::sync::watch::channel(false);
            let mut settings = taking.settings(&options, &conn.other_relays);
            settings.quick_exit = Some(exit_rx);
            let stream = client::connect(options).await?;
            if !json {
                println!(
                    "Signed in as {}. Type to reply; \"/help\" lists the commands; end of input signs out.",
                    identity.pseudonym
                );
            }
            run_chat(json, quick_exit, |input, events| {
                chat::run_counsellor(stream, identity.keys, settings, input, events)
            })
            .await
        }
        Command::Console {
            relay,
            other_relays,
            ca,
            connect_timeout,
            identity: identity_file,
            taking,
            listen,
            risk_plaintext_on_network,
            replies,
            open,
        } => {
            let identity = org::Identity::load(&identity_file)?;
            let credential = identity.relay_credential()?;
            let conn = ConnArgs {
                relay,
                other_relays,
                ca,
                json: false,
                connect_timeout,
            };
            let options = connect_options(&conn, Some(credential))?;
            let settings = taking.settings(&options, &conn.other_relays);
            let replies = replies.unwrap_or_else(|| {
                identity_file
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join("replies.txt")
            });
            let console = crate::console::ConsoleOptions {
                listen,
                beyond_loopback: risk_plaintext_on_network,
                replies,
                open,
            };
            let prepared = crate::console::prepare(console).await?;
            let stream = client::connect(options).await?;
            let pseudonym = identity.pseudonym.to_string();
            crate::console::run(prepared, stream, identity.keys, pseudonym, settings).await
        }
        Command::Chat {
            conn,
            org_key,
            topic,
            language,
        } => {
            let org = parse_org_key(&org_key)?;
            let json = conn.json;
            let options = connect_options(&conn, None)?;
            let (quick_exit, exit_rx) = tokio::sync::watch::channel(false);
            let request = chat::ClientRequest {
                topic,
                language,
                reconnect: Some(reconnect(&options, &conn.other_relays)),
                quick_exit: Some(exit_rx),
            };
            let stream = client::connect(options).await?;
            run_chat(json, quick_exit, |input, events| {
                chat::run_client(stream, org, request, input, events)
            })
            .await
        }
    }
}

/// Resume a dropped connection for as long as the relay's default resume
/// window keeps the chat, on `others` in turn if the relay is gone.
fn reconnect(options: &ConnectOptions, others: &[String]) -> client::Reconnect {
    client::Reconnect {
        options: options.clone(),
        give_up_after: crate::core::limits::Limits::default().resume_window,
        alternates: others.to_vec(),
    }
}

fn parse_org_key(arg: &str) -> Result<OrgPublicKey, Box<dyn std::error::Error>> {
    if let Ok(key) = OrgPublicKey::from_hex(arg) {
        return Ok(key);
    }
    let path = Path::new(arg);
    if path.is_file() {
        return Ok(org::read_org_public(path)?);
    }
    Err("--org-key: not an organisation public key (64 hex digits) or a file holding one".into())
}

fn connect_options(
    conn: &ConnArgs,
    credential: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
) -> Result<ConnectOptions, Box<dyn std::error::Error>> {
    let ca = match &conn.ca {
        Some(path) => Some(tls::certs_from_pem(
            &path.display().to_string(),
            &tls::read_pem(path)?,
        )?),
        None => None,
    };
    Ok(ConnectOptions {
        relay: conn.relay.clone(),
        ca,
        credential,
        connect_timeout: Duration::from_secs(conn.connect_timeout.max(1)),
        bind: None,
    })
}

/// Wires stdin lines into a chat role and its events to stdout. Ctrl-C is
/// a quick exit: the role leaves at once.
async fn run_chat<F, Fut>(
    json: bool,
    quick_exit: tokio::sync::watch::Sender<bool>,
    role: F,
) -> CliResult
where
    F: FnOnce(mpsc::Receiver<String>, mpsc::Sender<ChatEvent>) -> Fut,
    Fut: std::future::Future<Output = Result<(), ClientError>>,
{
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = quick_exit.send(true);
        }
    });
    let (line_tx, line_rx) = mpsc::channel::<String>(64);
    let (event_tx, mut event_rx) = mpsc::channel::<ChatEvent>(64);
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line_tx.send(line).await.is_err() {
                break;
            }
        }
    });
    let printer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(event) = event_rx.recv().await {
            // The terminal already shows what was typed.
            if matches!(event, ChatEvent::Said { .. }) {
                continue;
            }
            let line = if json {
                event.to_json()
            } else {
                event.to_text()
            };
            let _ = stdout.write_all(format!("{line}\n").as_bytes()).await;
            let _ = stdout.flush().await;
        }
    });
    let result = role(line_rx, event_tx).await;
    let _ = printer.await;
    if let Err(e) = &result
        && json
    {
        println!("{}", ChatEvent::fatal(e).to_json());
    }
    result.map_err(Into::into)
}

pub(crate) async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

/// Writes the generated relay certificate (public) to a fresh temp file.
fn write_public_cert(pem: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let file = tempfile::Builder::new()
        .prefix("fluister-relay-")
        .suffix(".pem")
        .tempfile()?;
    std::fs::write(file.path(), pem)?;
    let (_, path) = file.keep()?;
    Ok(path)
}

/// Where the demo serves the young person's page.
const DEMO_PAGE_LISTEN: &str = "127.0.0.1:7480";

async fn demo(
    listen: std::net::SocketAddr,
    admin_listen: std::net::SocketAddr,
    page_listen: std::net::SocketAddr,
) -> CliResult {
    let dir = tempfile::Builder::new()
        .prefix("fluister-demo-")
        .tempdir()?;
    let report = org::init(dir.path(), &org::loopback_hosts(), &mut OsRng)?;
    let identity = org::add_counsellor(dir.path(), "Demo counsellor", 1, None, &mut OsRng)?;
    let mut config = RelayConfig::load(&dir.path().join(org::RELAY_CONFIG_FILE))?;
    config.listen = listen;
    config.admin.listen = admin_listen;
    // A certificate generated in memory, valid for two weeks at most, so
    // that a browser pins it for WebTransport by its hash; the page itself
    // comes over plain HTTP on loopback, a secure context without a
    // certificate warning.
    config.tls_cert = None;
    config.tls_key = None;
    config.web.org_key = Some(report.org_public_key.to_hex());
    config.web.organisation = "Fluister demo".into();
    config.web.loopback_http = Some(page_listen);
    // Case statistics with the default form, in the throw-away folder.
    let stats_store = dir.path().join("stats.sqlite3");
    config.stats = Some(toml::from_str(&format!(
        "store = {}",
        toml::Value::String(stats_store.display().to_string())
    ))?);
    let running = relay::start(&config, Default::default()).await?;
    // The CLI clients pin the certificate the relay runs with.
    std::fs::write(
        dir.path().join(org::RELAY_CERT_FILE),
        running.certificate_pem(),
    )?;
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "fluister".into());
    let addr = running.local_addr();
    let ca = dir.path().join(org::RELAY_CERT_FILE);
    println!(
        "Fluister demo relay listening on {addr}, with a throw-away organisation in {}.",
        dir.path().display()
    );
    println!();
    println!(
        "Join as the counsellor, in your browser (in a second terminal; it prints a link to open):"
    );
    println!(
        "  {exe} console --relay {addr} --identity {} --ca {}",
        identity.display(),
        ca.display()
    );
    println!("or in the terminal:");
    println!(
        "  {exe} counsellor --relay {addr} --identity {} --ca {}",
        identity.display(),
        ca.display()
    );
    println!();
    println!("Join as a young person (in a third terminal):");
    println!(
        "  {exe} chat --relay {addr} --org-key {} --ca {}",
        report.org_public_key.to_hex(),
        ca.display()
    );
    if let Some(page) = running.loopback_http_addr() {
        println!();
        println!(
            "Or chat as a young person from the web page, in Chromium, Chrome, Edge or Firefox:"
        );
        println!("  http://{page}/");
    }
    if let Some(admin) = running.admin_addr() {
        println!();
        println!(
            "The counsellor codes each chat with \"/code\" (or the console's form); the case statistics:"
        );
        println!("  http://{admin}/stats/report (also ?format=table, csv, json or svg)");
    }
    println!();
    println!(
        "Type a line and press Enter to send it. Ctrl-D ends the chat. Ctrl-C here stops the demo and deletes its keys and statistics."
    );
    wait_for_signal().await;
    println!("Shutting down.");
    running.shutdown().await;
    drop(dir);
    Ok(())
}
