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
//!
//! Split by job: `schema.rs` is what a config holds (the serde structs and
//! their defaults), `transport.rs` the `[transport]` limits table (the
//! core's `[limits]` table is [`Limits`] itself), `load.rs` reading a file
//! with environment overrides and errors that name the line, and
//! `validate.rs` the checks no type can express, and `stats.rs` the
//! `[stats]` section (the case coding form).

mod load;
mod schema;
mod stats;
mod transport;
mod validate;

pub use load::env_var_for;
pub use schema::*;
pub use stats::{FieldConfig, Stats, StatsConfig};
pub use transport::TransportLimits;
use transport::{MOVED_TO_TRANSPORT, invalid_limit};
pub use validate::check_origin;

use std::path::PathBuf;

use serde::Deserialize;
use thiserror::Error;

use crate::core::frame::{Label, Language, MAX_FRAME_LEN, MAX_LANGUAGES, MAX_TOPICS, TopicId};
use crate::core::hours::{OpeningHours, Range};
use crate::core::limit_table::LimitError;
use crate::core::limits::{Limits, Service, Topic};

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

#[cfg(test)]
mod tests;
