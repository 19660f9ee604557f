//! Fluister: an anonymous, end-to-end encrypted chat relay between young
//! people and the counsellors of a helpline.
//!
//! Layers, from the wire inwards: [`relay`] (the tokio/quinn shell) and
//! [`client`] (both chat roles over QUIC) move bytes, and [`console`]
//! puts the counsellor's client behind a web UI on loopback; [`core`] decides, with
//! no I/O; [`crypto`] makes sure only the two ends can read a chat. `core`
//! and `crypto` are the `fluister-proto` crate in `proto/`, next to the
//! spec, re-exported here: a crate without tokio, quinn or a clock.
//! [`tls`] holds the TLS and QUIC settings both ends use. [`config`] and
//! [`org`] read and write the operator's files; [`cli`] is the `fluister`
//! command.
#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod files;
pub mod org;
pub mod relay;
pub mod stats;
pub mod tls;

pub use fluister_proto::{core, crypto};
