//! `[transport]`: the shell's limits, from one table like the core's.

use super::*;

fluister_proto::limits_table! {
    /// `[transport]`: the limits of the relay's shell, apart from the
    /// core's `[limits]`: QUIC liveness and windows, buffers, handshakes,
    /// per-address attempts and shutdown.
    pub struct TransportLimits in "transport" {
        /// Seconds without any packet before QUIC closes a connection.
        idle_timeout_secs: u64 = "idle_timeout_secs", default DEFAULT_IDLE_TIMEOUT_SECS,
            range 5..=600;
        /// Seconds between keep-alive packets; below `idle_timeout_secs`.
        keep_alive_secs: u64 = "keep_alive_secs", default DEFAULT_KEEP_ALIVE_SECS,
            range 1..=599;
        /// Frames the relay buffers for one connection before it closes it as
        /// a slow consumer.
        max_buffered_frames: usize = "max_buffered_frames", default 64, range 8..=4096;
        /// Connection attempts one source address may make per epoch; 0 = off.
        /// Counted under a random in-memory key, never by raw address. IPv6
        /// addresses count by their /64 block.
        per_address_attempts: u32 = "per_address_attempts", default 0,
            range 1..=1_000_000, or 0 off;
        /// Seconds per rate-limit epoch; key and counts are discarded after each.
        address_epoch_secs: u64 = "address_epoch_secs", default 600, range 10..=86_400;
        /// Handshakes in progress above which new ones get a QUIC stateless
        /// retry first (0 = always retry).
        retry_above_handshakes: usize = "retry_above_handshakes", default 64,
            range 0..=1_000_000;
        /// QUIC receive window per stream, in bytes: room for at least four
        /// maximum-size frames.
        stream_receive_window: u32 = "stream_receive_window", default DEFAULT_STREAM_WINDOW,
            range 4156..=16_777_216;
        /// QUIC receive window per connection, in bytes; at least the
        /// stream's.
        receive_window: u32 = "receive_window", default 2 * DEFAULT_STREAM_WINDOW,
            range 4156..=67_108_864;
        /// Seconds a graceful shutdown (SIGTERM, SIGINT) may take.
        drain_deadline_secs: u64 = "drain_deadline_secs", default 10, range 1..=300;
    }
}

/// Keys that lived in `[limits]` before the transport's limits got a
/// section of their own.
pub(super) const MOVED_TO_TRANSPORT: &[&str] = &[
    "idle_timeout_secs",
    "keep_alive_secs",
    "max_buffered_frames",
    "per_address_attempts",
    "address_epoch_secs",
    "retry_above_handshakes",
    "stream_receive_window",
    "receive_window",
    "drain_deadline_secs",
];

impl TransportLimits {
    /// The table's ranges, and the rules between these limits.
    pub fn check(&self) -> Result<(), LimitError> {
        self.check_ranges()?;
        if self.keep_alive_secs >= self.idle_timeout_secs {
            return Err(LimitError::Relation {
                path: "transport.keep_alive_secs",
                reason: "must be below `idle_timeout_secs`".into(),
            });
        }
        if (self.stream_receive_window as usize) < 4 * MAX_FRAME_LEN {
            return Err(LimitError::Relation {
                path: "transport.stream_receive_window",
                reason: "must hold at least four maximum-size frames".into(),
            });
        }
        if self.receive_window < self.stream_receive_window {
            return Err(LimitError::Relation {
                path: "transport.receive_window",
                reason: "must not be below `stream_receive_window`".into(),
            });
        }
        Ok(())
    }
}

/// A limit's error as a config error naming its key.
pub(super) fn invalid_limit(e: LimitError) -> ConfigError {
    let key = e.path().unwrap_or("limits");
    let reason = match e {
        LimitError::Relation { reason, .. } => reason,
        other => other.to_string(),
    };
    ConfigError::Invalid { key, reason }
}
