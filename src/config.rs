//! The relay's config file: TOML, every key documented in
//! `deploy/fluister.toml`, unknown keys refused.
//!
//! [`RelayConfig::load`] reads a file, resolves relative paths against the
//! file's folder and checks every value; [`RelayConfig::default`] is the
//! embedded default used when no file is given (loopback, a generated
//! certificate, no counsellor sign-in). The shell turns the result into core
//! [`Limits`] and QUIC transport settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::core::limits::Limits;

/// Where the relay listens when nothing else is said.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";

/// Why a config could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a wrong type; the message names
    /// the key and the line.
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value out of range, or keys that must come together.
    #[error("config key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
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
    #[serde(default)]
    pub limits: LimitsConfig,
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
    /// Seconds without any packet before QUIC closes a connection (5..=600).
    pub idle_timeout_secs: u64,
    /// Seconds between keep-alive packets; below `idle_timeout_secs`.
    pub keep_alive_secs: u64,
    /// Frames the relay buffers for one connection before it closes it as a
    /// slow consumer (8..=4096).
    pub max_buffered_frames: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: Limits::DEFAULT_MAX_CONNECTIONS,
            max_queue: Limits::DEFAULT_MAX_QUEUE,
            hello_timeout_secs: Limits::DEFAULT_HELLO_TIMEOUT.as_secs(),
            idle_timeout_secs: 60,
            keep_alive_secs: 15,
            max_buffered_frames: 64,
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
            limits: LimitsConfig::default(),
        }
    }
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

impl RelayConfig {
    /// Reads, parses, resolves and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.tls_cert,
            &mut config.tls_key,
            &mut config.counsellor_ca,
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
        let config: RelayConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: describe_toml_error(text, &e),
        })?;
        config.validate()?;
        Ok(config)
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
        let l = &self.limits;
        range("limits.max_connections", l.max_connections, 1, 1_000_000)?;
        range("limits.max_queue", l.max_queue, 1, 100_000)?;
        range("limits.hello_timeout_secs", l.hello_timeout_secs, 1, 120)?;
        range("limits.idle_timeout_secs", l.idle_timeout_secs, 5, 600)?;
        range(
            "limits.keep_alive_secs",
            l.keep_alive_secs,
            1,
            l.idle_timeout_secs - 1,
        )?;
        range("limits.max_buffered_frames", l.max_buffered_frames, 8, 4096)?;
        Ok(())
    }

    /// The limits the core enforces.
    pub fn core_limits(&self) -> Limits {
        Limits {
            max_queue: self.limits.max_queue,
            max_connections: self.limits.max_connections,
            hello_timeout: Duration::from_secs(self.limits.hello_timeout_secs),
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
    }
}
