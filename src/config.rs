//! The relay's config file: TOML, every key documented in
//! `deploy/fluister.toml`, unknown keys refused.
//!
//! [`RelayConfig::load`] reads a file, applies `FLUISTER__…` environment
//! overrides ([`ENV_PREFIX`]), resolves relative paths against the file's
//! folder and checks every value; every error names the key and the line
//! (or the variable) it came from. [`RelayConfig::from_env`] is the embedded
//! default (loopback, a generated certificate, no counsellor sign-in) with
//! the same overrides. [`crate::relay::server_files::load`] opens the files
//! the config names, also for `fluister relay --check-config`. The shell turns the
//! result into core [`Limits`] and QUIC transport settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::core::frame::{
    Label, Language, MAX_FRAME_LEN, MAX_LANGUAGES, MAX_POW_DIFFICULTY, MAX_TOPICS, TopicId,
};
use crate::core::hours::{OpeningHours, Range};
use crate::core::limits::{
    Limits, MAX_UNACKED_FRAMES, PACE_CONTROL_BURST, PACE_CONTROL_PER_SEC, PACE_FORWARD_BURST,
    PACE_FORWARD_PER_SEC, Service, Topic,
};

/// Default QUIC receive window per stream: 64 maximum-size frames.
pub const DEFAULT_STREAM_WINDOW: u32 = 64 * MAX_FRAME_LEN as u32;

/// QUIC idle timeout: a dead relay or peer is noticed within this many
/// seconds. Keep-alives every [`DEFAULT_KEEP_ALIVE_SECS`] keep a live but
/// quiet connection (and its NAT mapping) open: one small packet each way
/// per interval, which keeps a phone's radio from sleeping while a chat is
/// open (PROTOCOL.md §3.1).
pub use crate::tls::{DEFAULT_IDLE_TIMEOUT_SECS, DEFAULT_KEEP_ALIVE_SECS};

/// Where the relay listens when nothing else is said.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";

/// Where the admin listener (metrics, health) listens when nothing else is said.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7444";

/// Environment variables that override single config keys start with this;
/// `__` separates the levels of the key, which is upper-cased:
/// `FLUISTER__LISTEN`, `FLUISTER__LIMITS__MAX_QUEUE`,
/// `FLUISTER__ADMIN__LISTEN`. Values are TOML values (`200`, `true`,
/// `["nl"]`); anything that does not parse as one is taken as a string.
pub const ENV_PREFIX: &str = "FLUISTER__";

/// Why a config could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: crate::files::FileError,
    },
    /// Not valid TOML, an unknown key, or a wrong type; the message names
    /// the key and the line.
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value out of range, or keys that must come together.
    #[error("config key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    /// [`ConfigError::Invalid`] with where the value came from: "line 12"
    /// of the file, or an environment variable.
    #[error("config {path}, {source_of_value}: key `{key}`: {reason}")]
    InvalidAt {
        path: PathBuf,
        source_of_value: String,
        key: &'static str,
        reason: String,
    },
    /// An environment override that is not a config key, or not of its type.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    /// A file the config names is missing or unusable (`--check-config`).
    #[error("config key `{key}`: {path}: {reason}")]
    File {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// The whole relay config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// UDP address for QUIC.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// PEM certificate chain for the relay's TLS. With `tls_key`; if both are
    /// absent a self-signed certificate is generated in memory (loopback only).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM certificate of the organisation's counsellor CA. Counsellors sign
    /// in with client certificates it issued. Absent: nobody can sign in as
    /// a counsellor.
    pub counsellor_ca: Option<PathBuf>,
    /// PEM certificate revocation list from `fluister org revoke`, signed by
    /// the counsellor CA. Reloaded with the TLS files.
    pub counsellor_crl: Option<PathBuf>,
    /// Seconds between checks whether the TLS files or the revocation list
    /// changed on disk (0 = only on SIGHUP). Default 10.
    #[serde(default = "default_watch_secs")]
    pub tls_watch_secs: u64,
    /// Log level when RUST_LOG is not set: error, warn, info, debug or trace.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    #[serde(default)]
    pub admin: AdminConfig,
    /// Languages offered, as two-letter codes. Default `["nl", "en"]`.
    pub languages: Option<Vec<String>>,
    /// Topics a young person can choose. Default: the built-in list.
    pub topics: Option<Vec<TopicConfig>>,
    /// Opening hours. Absent: always open.
    pub hours: Option<HoursConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Origins (`scheme://host[:port]`) whose pages may open the web
    /// transports. Empty: any origin. A browser always sends its page's
    /// origin; a request from elsewhere is refused before any frame.
    #[serde(default)]
    pub web_origins: Vec<String>,
    #[serde(default)]
    pub web: WebConfig,
}

/// `[web]`: the browser's ways in (WebTransport on the UDP port, WebSocket
/// over TLS on the same port number over TCP; PROTOCOL.md §3.4) and the
/// young person's page.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Accept WebTransport and WebSocket, and serve the page. Default true.
    pub enabled: bool,
    /// Serve the young person's page at `/` on the TCP port. Default true.
    pub page: bool,
    /// A folder with the page's files to serve instead of the built-in page.
    pub page_dir: Option<PathBuf>,
    /// The organisation's name, shown on the page.
    pub organisation: String,
    /// The organisation's public key (64 hex digits), with which the page
    /// verifies counsellors. Without it the page cannot start a chat.
    pub org_key: Option<String>,
    /// Where quick exit takes the young person.
    pub exit_url: String,
    /// The page's language until the young person picks one: "nl" or "en"
    /// for the built-in page; any language a `page_dir` page has.
    pub default_language: String,
    /// Plain HTTP on a loopback address, for the demo: the page and
    /// WebSocket without TLS (a loopback page is a secure context).
    pub loopback_http: Option<SocketAddr>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            page: true,
            page_dir: None,
            organisation: "Fluister".into(),
            org_key: None,
            exit_url: DEFAULT_EXIT_URL.into(),
            default_language: "nl".into(),
            loopback_http: None,
        }
    }
}

/// Where quick exit goes when the config does not say.
pub const DEFAULT_EXIT_URL: &str = "https://www.google.com/";

/// Languages the page has text for.
pub const PAGE_LANGUAGES: [&str; 2] = ["nl", "en"];

/// `[admin]`: the HTTP listener for metrics and health checks.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve `/metrics`, `/healthz` and `/readyz`. Default true.
    pub enabled: bool,
    /// TCP address; keep it on loopback or a private network. Default
    /// 127.0.0.1:7444.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: DEFAULT_ADMIN_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7444))),
        }
    }
}

fn default_watch_secs() -> u64 {
    10
}

fn default_log_level() -> String {
    "info".into()
}

/// `[[topics]]`: one topic with a stable id and its labels.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Stable id, 1..=65535; never reuse one for another meaning.
    pub id: u16,
    /// Dutch label, at most 64 bytes.
    pub nl: String,
    /// English label, at most 64 bytes.
    pub en: String,
}

/// `[hours]`: when young people can be queued.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HoursConfig {
    /// IANA time zone name. Default "Europe/Amsterdam".
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// Ranges "HH:MM-HH:MM" per weekday; a day left out or empty is closed.
    #[serde(default)]
    pub monday: Vec<String>,
    #[serde(default)]
    pub tuesday: Vec<String>,
    #[serde(default)]
    pub wednesday: Vec<String>,
    #[serde(default)]
    pub thursday: Vec<String>,
    #[serde(default)]
    pub friday: Vec<String>,
    #[serde(default)]
    pub saturday: Vec<String>,
    #[serde(default)]
    pub sunday: Vec<String>,
    /// Dated exceptions that replace that weekday's ranges.
    #[serde(default)]
    pub exceptions: Vec<ExceptionConfig>,
}

/// `[[hours.exceptions]]`: one special day.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExceptionConfig {
    /// "YYYY-MM-DD" in the hours' time zone.
    pub date: String,
    /// Ranges that day; empty = closed all day.
    #[serde(default)]
    pub open: Vec<String>,
}

fn default_time_zone() -> String {
    "Europe/Amsterdam".into()
}

/// `[limits]`: every bound the relay enforces.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most open connections, both roles (1..=1_000_000).
    pub max_connections: usize,
    /// Most clients waiting; past it a client is told "busy" at once (1..=100_000).
    pub max_queue: usize,
    /// Seconds from connecting to HELLO (1..=120).
    pub hello_timeout_secs: u64,
    /// Seconds from PAIRED to the young person's first handshake message;
    /// past it the pairing is undone and the counsellor's capacity freed
    /// (5..=600).
    pub handshake_timeout_secs: u64,
    /// Seconds without any packet before QUIC closes a connection (5..=600).
    pub idle_timeout_secs: u64,
    /// Seconds between keep-alive packets; below `idle_timeout_secs`.
    pub keep_alive_secs: u64,
    /// Frames the relay buffers for one connection before it closes it as a
    /// slow consumer (8..=4096).
    pub max_buffered_frames: usize,
    /// Seconds a client may wait in the queue before it is told so (60..=86400).
    pub max_wait_secs: u64,
    /// Seconds after which a client whose topic nobody serves goes to any
    /// counsellor of its language (0..=86400).
    pub topic_fallback_secs: u64,
    /// Most chats one counsellor may take at once (1..=32).
    pub max_capacity: u8,
    /// Most anonymous connections at once (1..=max_connections).
    pub max_anonymous_connections: usize,
    /// Queue admissions per second over the whole relay (1..=10000), and
    /// the burst allowed above it (1..=100000).
    pub admissions_per_sec: u32,
    pub admissions_burst: u32,
    /// FORWARD frames per second the relay reads for one side of one chat
    /// (32..=1000000), and the burst (64..=1000000). At least the senders'
    /// pacing rule (32/s, burst 64); past it the relay reads more slowly,
    /// it never closes a connection for it.
    pub forward_frames_per_sec: u32,
    pub forward_frames_burst: u32,
    /// Other frames per second the relay reads from one connection
    /// (5..=1000000), and the burst (40..=1000000); paced the same way.
    pub control_frames_per_sec: u32,
    pub control_frames_burst: u32,
    /// Proof-of-work difficulty in leading zero bits: the floor (0..=20)
    /// and the ceiling (floor..=20) it moves between.
    pub pow_min_difficulty: u8,
    pub pow_max_difficulty: u8,
    /// Solved JOINs per second above which the difficulty rises one bit per
    /// second; below half of it, it falls again (1..=100000).
    pub pow_target_arrivals_per_sec: u32,
    /// While the queue is more than half full, a waiting client solves a
    /// fresh proof-of-work challenge this often to keep its place; 0 = off
    /// (0, or 60..=86400).
    pub queue_rent_secs: u64,
    /// Connection attempts one source address may make per epoch; 0 = off.
    /// Counted under a random in-memory key, never by raw address. IPv6
    /// addresses count by their /64 block.
    pub per_address_attempts: u32,
    /// Places in the queue one source (an IPv4 address or an IPv6 /64) may
    /// hold at once, counted under the same kind of key; 0 = no limit
    /// (0..=10000).
    pub per_address_places: usize,
    /// Seconds per rate-limit epoch; key and counts are discarded after each
    /// (10..=86400).
    pub address_epoch_secs: u64,
    /// Handshakes in progress above which new ones get a QUIC stateless
    /// retry first (0 = always retry).
    pub retry_above_handshakes: usize,
    /// QUIC receive window per stream and per connection, in bytes.
    pub stream_receive_window: u32,
    pub receive_window: u32,
    /// Seconds a chat waits for a side whose connection dropped to resume
    /// (1..=3600).
    pub resume_window_secs: u64,
    /// Frames held for a side that is away; past it the chat ends (8..=4096).
    pub max_held_frames: usize,
    /// Seconds a graceful shutdown (SIGTERM, SIGINT) may take (1..=300).
    pub drain_deadline_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: Limits::DEFAULT_MAX_CONNECTIONS,
            max_queue: Limits::DEFAULT_MAX_QUEUE,
            hello_timeout_secs: Limits::DEFAULT_HELLO_TIMEOUT.as_secs(),
            handshake_timeout_secs: Limits::DEFAULT_HANDSHAKE_TIMEOUT.as_secs(),
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            keep_alive_secs: DEFAULT_KEEP_ALIVE_SECS,
            max_buffered_frames: 64,
            max_wait_secs: Limits::DEFAULT_MAX_WAIT.as_secs(),
            topic_fallback_secs: Limits::DEFAULT_TOPIC_FALLBACK.as_secs(),
            max_capacity: Limits::DEFAULT_MAX_CAPACITY,
            max_anonymous_connections: Limits::DEFAULT_MAX_ANONYMOUS_CONNECTIONS,
            admissions_per_sec: Limits::DEFAULT_ADMISSIONS_PER_SEC,
            admissions_burst: Limits::DEFAULT_ADMISSIONS_BURST,
            forward_frames_per_sec: Limits::DEFAULT_FORWARD_FRAMES_PER_SEC,
            forward_frames_burst: Limits::DEFAULT_FORWARD_FRAMES_BURST,
            control_frames_per_sec: Limits::DEFAULT_CONTROL_FRAMES_PER_SEC,
            control_frames_burst: Limits::DEFAULT_CONTROL_FRAMES_BURST,
            pow_min_difficulty: Limits::DEFAULT_POW_MIN_DIFFICULTY,
            pow_max_difficulty: Limits::DEFAULT_POW_MAX_DIFFICULTY,
            pow_target_arrivals_per_sec: Limits::DEFAULT_POW_TARGET_ARRIVALS_PER_SEC,
            queue_rent_secs: Limits::DEFAULT_QUEUE_RENT_INTERVAL.as_secs(),
            per_address_attempts: 0,
            per_address_places: Limits::DEFAULT_PER_SOURCE_PLACES,
            address_epoch_secs: 600,
            retry_above_handshakes: 64,
            stream_receive_window: DEFAULT_STREAM_WINDOW,
            receive_window: 2 * DEFAULT_STREAM_WINDOW,
            resume_window_secs: Limits::DEFAULT_RESUME_WINDOW.as_secs(),
            max_held_frames: Limits::DEFAULT_MAX_HELD_FRAMES,
            drain_deadline_secs: 10,
        }
    }
}

fn default_listen() -> SocketAddr {
    // A constant that parses; tested below.
    DEFAULT_LISTEN
        .parse()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7443)))
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            listen: default_listen(),
            tls_cert: None,
            tls_key: None,
            counsellor_ca: None,
            counsellor_crl: None,
            tls_watch_secs: default_watch_secs(),
            log_level: default_log_level(),
            admin: AdminConfig::default(),
            languages: None,
            topics: None,
            hours: None,
            limits: LimitsConfig::default(),
            web_origins: Vec::new(),
            web: WebConfig::default(),
        }
    }
}

/// Whether `origin` is an origin as browsers send it: `https://host`,
/// `http://host`, with an optional port, nothing after.
pub fn check_origin(origin: &str) -> Result<(), &'static str> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or("an origin starts with https:// or http://")?;
    if rest.is_empty() {
        return Err("an origin names a host");
    }
    if rest.contains('/') {
        return Err("an origin has no path (not even a trailing /)");
    }
    if !rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        || rest.bytes().any(|b| b.is_ascii_uppercase())
    {
        return Err("an origin is lowercase ASCII: scheme, host and optional port");
    }
    Ok(())
}

fn range<T: PartialOrd + std::fmt::Display>(
    key: &'static str,
    value: T,
    lo: T,
    hi: T,
) -> Result<(), ConfigError> {
    if value < lo || value > hi {
        return Err(ConfigError::Invalid {
            key,
            reason: format!("{value} is out of range {lo}..={hi}"),
        });
    }
    Ok(())
}

/// One line: where (line, and the offending line's text) and what.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let source = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line} (`{source}`): {message}")
        }
        None => message,
    }
}

/// The 1-based line on which a dotted `key` is written in `text`.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let document = toml::de::DeTable::parse(text).ok()?;
    let mut parts = key.split('.');
    let mut value = document.get_ref().get(parts.next()?)?;
    for part in parts {
        value = value.get_ref().get(part)?;
    }
    let start = value.span().start.min(text.len());
    Some(text[..start].matches('\n').count() + 1)
}

/// The environment variable that overrides `key`.
pub fn env_var_for(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase())
}

/// Overrides from the environment: (variable, dotted key, value).
fn env_overrides(
    env: impl IntoIterator<Item = (String, String)>,
) -> Vec<(String, Vec<String>, toml::Value)> {
    let mut out: Vec<_> = env
        .into_iter()
        .filter_map(|(var, raw)| {
            let path = var.strip_prefix(ENV_PREFIX)?;
            let path: Vec<String> = path.split("__").map(|p| p.to_lowercase()).collect();
            // A TOML value if it is one (200, true, ["nl"]), else a string.
            let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw));
            Some((var, path, value))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("names no key".into());
    };
    let mut here = table;
    for p in parents {
        let entry = here
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        here = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a table"))?;
    }
    here.insert(last.clone(), value);
    Ok(())
}

impl RelayConfig {
    /// Reads, parses, resolves and validates a config file, with the
    /// process's `FLUISTER__…` overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// The embedded default with the process's `FLUISTER__…` overrides.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::parse_with_env("", std::env::vars())
    }

    /// [`RelayConfig::load`] with the given environment.
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = crate::files::read_text(path, crate::files::MAX_CONFIG_BYTES).map_err(|e| {
            ConfigError::Read {
                path: path.to_owned(),
                source: e,
            }
        })?;
        let mut config = Self::parse_with_env(&text, env).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            ConfigError::InvalidAt {
                source_of_value,
                key,
                reason,
                ..
            } => ConfigError::InvalidAt {
                path: path.to_owned(),
                source_of_value,
                key,
                reason,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.tls_cert,
            &mut config.tls_key,
            &mut config.counsellor_ca,
            &mut config.counsellor_crl,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }

    /// Parses and validates config text (relative paths stay relative).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::parse_with_env(text, std::iter::empty())
    }

    /// Parses config text, applies environment overrides, validates.
    pub fn parse_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // The file alone first, so that its errors carry their lines.
        let from_file: RelayConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: describe_toml_error(text, &e),
        })?;
        let overrides = env_overrides(env);
        let config = if overrides.is_empty() {
            from_file
        } else {
            let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
                path: PathBuf::new(),
                message: describe_toml_error(text, &e),
            })?;
            // One at a time, so that an error names its variable.
            for (var, path, value) in &overrides {
                set_path(&mut table, path, value.clone()).map_err(|message| ConfigError::Env {
                    var: var.clone(),
                    message,
                })?;
                toml::Value::Table(table.clone())
                    .try_into::<RelayConfig>()
                    .map_err(|e| ConfigError::Env {
                        var: var.clone(),
                        message: e.message().trim().replace('\n', " "),
                    })?;
            }
            toml::Value::Table(table)
                .try_into()
                .map_err(|e| ConfigError::Env {
                    var: "FLUISTER__*".into(),
                    message: e.message().to_string(),
                })?
        };
        config.validate().map_err(|e| match e {
            ConfigError::Invalid { key, reason } => {
                let var = env_var_for(key);
                let source_of_value = if overrides.iter().any(|(v, _, _)| *v == var) {
                    format!("environment variable {var}")
                } else {
                    match line_of_key(text, key) {
                        Some(line) => format!("line {line}"),
                        None => "default value".into(),
                    }
                };
                ConfigError::InvalidAt {
                    path: PathBuf::new(),
                    source_of_value,
                    key,
                    reason,
                }
            }
            other => other,
        })?;
        Ok(config)
    }

    /// Checks `web_origins` and `[web]`.
    fn validate_web(&self) -> Result<(), ConfigError> {
        for origin in &self.web_origins {
            if let Err(reason) = check_origin(origin) {
                return Err(ConfigError::Invalid {
                    key: "web_origins",
                    reason: format!("{origin:?}: {reason}"),
                });
            }
        }
        let web = &self.web;
        if let Some(key) = &web.org_key
            && !(key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(ConfigError::Invalid {
                key: "web.org_key",
                reason: "not an organisation public key (64 hex digits)".into(),
            });
        }
        let name_len = web.organisation.chars().count();
        if name_len == 0 || name_len > 100 || web.organisation.chars().any(char::is_control) {
            return Err(ConfigError::Invalid {
                key: "web.organisation",
                reason: "must be 1 to 100 characters without control characters".into(),
            });
        }
        if !(web.exit_url.starts_with("https://") || web.exit_url.starts_with("http://"))
            || web
                .exit_url
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ConfigError::Invalid {
                key: "web.exit_url",
                reason: format!("{:?} is not an http(s) URL", web.exit_url),
            });
        }
        // The built-in page has Dutch and English; a page of the operator's
        // own (`page_dir`) may have any language, listed in its
        // i18n/languages.json.
        let two_letters = web.default_language.len() == 2
            && web.default_language.bytes().all(|b| b.is_ascii_lowercase());
        let known = match web.page_dir {
            None => PAGE_LANGUAGES.contains(&web.default_language.as_str()),
            Some(_) => two_letters,
        };
        if !known {
            return Err(ConfigError::Invalid {
                key: "web.default_language",
                reason: format!(
                    "{:?}: the built-in page has text for {} (a page in page_dir may \
                     have any two-letter language code)",
                    web.default_language,
                    PAGE_LANGUAGES.join(", ")
                ),
            });
        }
        if let Some(addr) = web.loopback_http
            && !addr.ip().is_loopback()
        {
            return Err(ConfigError::Invalid {
                key: "web.loopback_http",
                reason: format!(
                    "{addr} is not a loopback address: plain HTTP carries chats \
                     unencrypted to the network; use the TLS port instead"
                ),
            });
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid {
                key: "tls_cert",
                reason: "tls_cert and tls_key must be given together".into(),
            });
        }
        if self.tls_cert.is_none() && !self.listen.ip().is_loopback() {
            return Err(ConfigError::Invalid {
                key: "tls_cert",
                reason: "a generated certificate is only allowed on a loopback address; \
                         set tls_cert and tls_key to listen elsewhere"
                    .into(),
            });
        }
        if self.counsellor_crl.is_some() && self.counsellor_ca.is_none() {
            return Err(ConfigError::Invalid {
                key: "counsellor_crl",
                reason: "a revocation list needs `counsellor_ca`, whose CA signed it".into(),
            });
        }
        range("tls_watch_secs", self.tls_watch_secs, 0, 3600)?;
        self.validate_web()?;
        if !["error", "warn", "info", "debug", "trace"].contains(&self.log_level.as_str()) {
            return Err(ConfigError::Invalid {
                key: "log_level",
                reason: format!(
                    "{:?} is not one of error, warn, info, debug, trace",
                    self.log_level
                ),
            });
        }
        let l = &self.limits;
        range("limits.max_connections", l.max_connections, 1, 1_000_000)?;
        range("limits.max_queue", l.max_queue, 1, 100_000)?;
        range("limits.hello_timeout_secs", l.hello_timeout_secs, 1, 120)?;
        range(
            "limits.handshake_timeout_secs",
            l.handshake_timeout_secs,
            5,
            600,
        )?;
        range("limits.idle_timeout_secs", l.idle_timeout_secs, 5, 600)?;
        range(
            "limits.keep_alive_secs",
            l.keep_alive_secs,
            1,
            l.idle_timeout_secs - 1,
        )?;
        range("limits.max_buffered_frames", l.max_buffered_frames, 8, 4096)?;
        range("limits.max_wait_secs", l.max_wait_secs, 60, 86_400)?;
        range(
            "limits.topic_fallback_secs",
            l.topic_fallback_secs,
            0,
            86_400,
        )?;
        range("limits.max_capacity", l.max_capacity, 1, 32)?;
        range(
            "limits.max_anonymous_connections",
            l.max_anonymous_connections,
            1,
            l.max_connections,
        )?;
        range("limits.admissions_per_sec", l.admissions_per_sec, 1, 10_000)?;
        range("limits.admissions_burst", l.admissions_burst, 1, 100_000)?;
        // Never below the senders' pacing rule: a paced sender is never slowed.
        range(
            "limits.forward_frames_per_sec",
            l.forward_frames_per_sec,
            PACE_FORWARD_PER_SEC,
            1_000_000,
        )?;
        range(
            "limits.forward_frames_burst",
            l.forward_frames_burst,
            PACE_FORWARD_BURST,
            1_000_000,
        )?;
        range(
            "limits.control_frames_per_sec",
            l.control_frames_per_sec,
            PACE_CONTROL_PER_SEC,
            1_000_000,
        )?;
        range(
            "limits.control_frames_burst",
            l.control_frames_burst,
            PACE_CONTROL_BURST,
            1_000_000,
        )?;
        range(
            "limits.pow_min_difficulty",
            l.pow_min_difficulty,
            0,
            MAX_POW_DIFFICULTY,
        )?;
        range(
            "limits.pow_max_difficulty",
            l.pow_max_difficulty,
            l.pow_min_difficulty,
            MAX_POW_DIFFICULTY,
        )?;
        range(
            "limits.pow_target_arrivals_per_sec",
            l.pow_target_arrivals_per_sec,
            1,
            100_000,
        )?;
        if l.queue_rent_secs != 0 {
            range("limits.queue_rent_secs", l.queue_rent_secs, 60, 86_400)?;
        }
        range("limits.per_address_places", l.per_address_places, 0, 10_000)?;
        range(
            "limits.address_epoch_secs",
            l.address_epoch_secs,
            10,
            86_400,
        )?;
        range(
            "limits.stream_receive_window",
            l.stream_receive_window,
            4 * MAX_FRAME_LEN as u32,
            16 << 20,
        )?;
        range(
            "limits.receive_window",
            l.receive_window,
            l.stream_receive_window,
            64 << 20,
        )?;
        range("limits.resume_window_secs", l.resume_window_secs, 1, 3600)?;
        // Room for all a paced sender may have unacknowledged, and its ACK.
        range(
            "limits.max_held_frames",
            l.max_held_frames,
            MAX_UNACKED_FRAMES + 1,
            4096,
        )?;
        range("limits.drain_deadline_secs", l.drain_deadline_secs, 1, 300)?;
        self.service()?;
        Ok(())
    }

    /// The helpline as configured: topics, languages, opening hours.
    pub fn service(&self) -> Result<Service, ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid { key, reason };
        let languages = match &self.languages {
            None => Service::default_languages(),
            Some(list) => {
                let mut out = Vec::new();
                for code in list {
                    let l = Language::parse(code).ok_or_else(|| {
                        invalid(
                            "languages",
                            format!("{code:?} is not a two-letter lowercase code"),
                        )
                    })?;
                    if out.contains(&l) {
                        return Err(invalid("languages", format!("{code:?} is listed twice")));
                    }
                    out.push(l);
                }
                out
            }
        };
        if languages.is_empty() || languages.len() > MAX_LANGUAGES {
            return Err(invalid(
                "languages",
                format!("give 1 to {MAX_LANGUAGES} languages"),
            ));
        }
        let topics = match &self.topics {
            None => Service::default_topics(),
            Some(list) => {
                let mut out: Vec<Topic> = Vec::new();
                for t in list {
                    let id = TopicId::new(t.id)
                        .ok_or_else(|| invalid("topics.id", "0 is not a topic id".into()))?;
                    if out.iter().any(|o| o.id == id) {
                        return Err(invalid("topics.id", format!("{} is used twice", t.id)));
                    }
                    let label = |key: &'static str, text: &str| {
                        Label::new(text).map_err(|e| invalid(key, format!("{text:?}: {e}")))
                    };
                    out.push(Topic {
                        id,
                        label_nl: label("topics.nl", &t.nl)?,
                        label_en: label("topics.en", &t.en)?,
                    });
                }
                out
            }
        };
        if topics.len() > MAX_TOPICS {
            return Err(invalid("topics", format!("at most {MAX_TOPICS} topics")));
        }
        let hours = match &self.hours {
            None => OpeningHours::always(),
            Some(h) => {
                let ranges =
                    |key: &'static str, list: &[String]| -> Result<Vec<Range>, ConfigError> {
                        list.iter()
                            .map(|r| Range::parse(r).map_err(|e| invalid(key, e.to_string())))
                            .collect()
                    };
                let week = [
                    ranges("hours.monday", &h.monday)?,
                    ranges("hours.tuesday", &h.tuesday)?,
                    ranges("hours.wednesday", &h.wednesday)?,
                    ranges("hours.thursday", &h.thursday)?,
                    ranges("hours.friday", &h.friday)?,
                    ranges("hours.saturday", &h.saturday)?,
                    ranges("hours.sunday", &h.sunday)?,
                ];
                let mut exceptions = std::collections::BTreeMap::new();
                for e in &h.exceptions {
                    let date = OpeningHours::parse_date(&e.date)
                        .map_err(|err| invalid("hours.exceptions.date", err.to_string()))?;
                    exceptions.insert(date, ranges("hours.exceptions.open", &e.open)?);
                }
                OpeningHours::new(&h.time_zone, week, exceptions)
                    .map_err(|e| invalid("hours.time_zone", e.to_string()))?
            }
        };
        Ok(Service {
            topics,
            languages,
            hours,
        })
    }

    /// The limits the core enforces.
    pub fn core_limits(&self) -> Limits {
        Limits {
            max_queue: self.limits.max_queue,
            max_connections: self.limits.max_connections,
            hello_timeout: Duration::from_secs(self.limits.hello_timeout_secs),
            handshake_timeout: Duration::from_secs(self.limits.handshake_timeout_secs),
            max_wait: Duration::from_secs(self.limits.max_wait_secs),
            topic_fallback: Duration::from_secs(self.limits.topic_fallback_secs),
            max_capacity: self.limits.max_capacity,
            max_anonymous_connections: self.limits.max_anonymous_connections,
            admissions_per_sec: self.limits.admissions_per_sec,
            admissions_burst: self.limits.admissions_burst,
            forward_frames_per_sec: self.limits.forward_frames_per_sec,
            forward_frames_burst: self.limits.forward_frames_burst,
            control_frames_per_sec: self.limits.control_frames_per_sec,
            control_frames_burst: self.limits.control_frames_burst,
            pow_min_difficulty: self.limits.pow_min_difficulty,
            pow_max_difficulty: self.limits.pow_max_difficulty,
            pow_target_arrivals_per_sec: self.limits.pow_target_arrivals_per_sec,
            queue_rent_interval: (self.limits.queue_rent_secs != 0)
                .then(|| Duration::from_secs(self.limits.queue_rent_secs)),
            per_source_places: self.limits.per_address_places,
            resume_window: Duration::from_secs(self.limits.resume_window_secs),
            max_held_frames: self.limits.max_held_frames,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_is_valid_and_on_loopback() {
        let c = RelayConfig::default();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        c.validate().unwrap();
        assert_eq!(RelayConfig::parse("").unwrap(), c);
    }

    #[test]
    fn the_example_config_in_deploy_parses() {
        let text = include_str!("../deploy/fluister.toml");
        let c = RelayConfig::parse(text).unwrap();
        assert!(c.counsellor_ca.is_some());
    }

    #[test]
    fn a_topic_label_of_invisible_or_reordering_characters_is_refused() {
        for label in ["\u{200b}", "Hulp\u{202e}pleH", "Hulp\u{2028}"] {
            let text = format!("[[topics]]\nid = 1\nnl = \"{label}\"\nen = \"Help\"\n");
            let e = RelayConfig::parse(&text).unwrap_err().to_string();
            assert!(e.contains("topics.nl"), "{e}");
        }
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let e = RelayConfig::parse("listen = \"127.0.0.1:1\"\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus") && e.contains("line 2"), "{e}");
        let e = RelayConfig::parse("[limits]\nmax_queue = \"ten\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_queue") && e.contains("line 2"), "{e}");
        let e = RelayConfig::parse("[limits]\nmax_queue = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.max_queue"), "{e}");
        let e = RelayConfig::parse("tls_cert = \"a.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("together"), "{e}");
        let e = RelayConfig::parse("listen = \"0.0.0.0:443\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("loopback"), "{e}");
        for origin in [
            "https://chat.example.org/",
            "chat.example.org",
            "https://Chat.example",
        ] {
            let text = format!("web_origins = [\"{origin}\"]\n");
            let e = RelayConfig::parse(&text).unwrap_err().to_string();
            assert!(e.contains("web_origins"), "{e}");
        }
        RelayConfig::parse("web_origins = [\"https://chat.example.org:8443\"]\n").unwrap();
        let e = RelayConfig::parse("[web]\nloopback_http = \"0.0.0.0:80\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("web.loopback_http") && e.contains("loopback"),
            "{e}"
        );
        let e = RelayConfig::parse("[web]\norg_key = \"abc\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("web.org_key"), "{e}");
    }
}
