//! What a config holds: the serde structs, their defaults, and what the
//! core is given.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::*;

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
    /// `[limits]`: what the core enforces, from its table.
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub transport: TransportLimits,
    /// Origins (`scheme://host[:port]`) whose pages may open the web
    /// transports. Empty: any origin. A browser always sends its page's
    /// origin; a request from elsewhere is refused before any frame.
    #[serde(default)]
    pub web_origins: Vec<String>,
    #[serde(default)]
    pub web: WebConfig,
    /// `[cluster]`: several relays share one queue through NATS. Absent:
    /// this relay is on its own, and needs no NATS.
    pub cluster: Option<ClusterConfig>,
    /// `[stats]`: counsellors code each chat and the relay keeps monthly
    /// counts. Absent: no case statistics.
    pub stats: Option<StatsConfig>,
}

/// `[cluster]`: the NATS servers through which several relays share one
/// queue and carry chats between them (proto/CLUSTER.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URLs, `nats://host:port` or `tls://host:port`. At least
    /// one; the client learns the rest of a NATS cluster from them.
    pub servers: Vec<String>,
    /// A file with the cluster's secret, 64 hex digits (`openssl rand -hex
    /// 32`), the same on every relay: everything relays say to each other
    /// through NATS is sealed with it. Required.
    pub secret_file: PathBuf,
    /// A NATS credentials file (user JWT and NKey seed). Default: none.
    pub creds: Option<PathBuf>,
    /// PEM CA certificates that NATS servers' certificates must chain to.
    /// Setting it requires TLS to NATS. Default: none.
    pub tls_ca: Option<PathBuf>,
    /// A PEM client certificate and key for NATS, together. Default: none.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// What the relays' subjects and key-value buckets start with: relays
    /// with the same prefix form one cluster. 1 to 32 of `A-Z a-z 0-9 _ -`.
    /// Default "fluister".
    #[serde(default = "default_cluster_prefix")]
    pub prefix: String,
    /// Copies NATS keeps of each key-value bucket (memory storage): 3 on a
    /// three-server NATS cluster, so that losing one loses nothing. 1..=5;
    /// default 1.
    #[serde(default = "default_cluster_replicas")]
    pub replicas: usize,
}

fn default_cluster_prefix() -> String {
    "fluister".into()
}

fn default_cluster_replicas() -> usize {
    1
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
    /// Other relays of the same service (`host:port`, a cluster), which
    /// the page tries in turn after this one when a relay is gone or
    /// leaves; the chat resumes there. Default: none.
    pub relays: Vec<String>,
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
            relays: Vec::new(),
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
            limits: Limits::default(),
            transport: TransportLimits::default(),
            web_origins: Vec::new(),
            web: WebConfig::default(),
            cluster: None,
            stats: None,
        }
    }
}

impl RelayConfig {
    /// The limits the core enforces.
    pub fn core_limits(&self) -> Limits {
        self.limits.clone()
    }
}
