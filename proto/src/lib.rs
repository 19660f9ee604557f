//! Fluister's protocol, as PROTOCOL.md in this folder specifies it: what
//! travels on the wire, what the relay decides, and what only the two ends
//! of a chat can read. No sockets, no async runtime and no clock: this
//! crate does not depend on tokio, quinn or rustls, so the compiler keeps
//! the relay's decisions free of I/O (quinn-proto is the model).
//!
//! [`core`] is the relay's side: frames ([`core::frame`]), the queue and
//! pairing ([`core::pairing`]), opening hours, rate limits and proof of
//! work, and the relay state machine ([`core::relay`]) that a shell feeds
//! with events and drains of output. [`crypto`] is the ends' side: the
//! content format, Noise NX, counsellor certificates, padding and the
//! end-to-end session. `crypto` uses `core`'s frame types; `core` uses
//! nothing of `crypto`.
#![forbid(unsafe_code)]

pub mod core;
pub mod crypto;

/// For [`limits_table!`]: the serde its tables derive with.
#[doc(hidden)]
pub use serde as __serde;
