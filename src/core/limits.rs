//! Named limits of the relay core (PROTOCOL.md §8). Each has a documented
//! default; the operator may change the configurable ones in the config file.

use std::time::Duration;

/// Limits the core enforces. Built from the config by the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most clients waiting in the queue; a client beyond it is closed with
    /// `Busy` at once instead of waiting.
    pub max_queue: usize,
    /// Most connections (both roles) the core tracks at once.
    pub max_connections: usize,
    /// Time from connection to HELLO before the connection is closed with
    /// `HelloTimeout`.
    pub hello_timeout: Duration,
}

impl Limits {
    pub const DEFAULT_MAX_QUEUE: usize = 500;
    pub const DEFAULT_MAX_CONNECTIONS: usize = 2000;
    pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_queue: Self::DEFAULT_MAX_QUEUE,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            hello_timeout: Self::DEFAULT_HELLO_TIMEOUT,
        }
    }
}
