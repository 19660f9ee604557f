//! Certificate rotation and revocation without a restart.
//!
//! The reloader rereads the files the config names (TLS certificate and
//! key, counsellor CA, revocation list) on SIGHUP, on
//! [`RunningRelay::reload`](super::RunningRelay::reload), and when a file's
//! modification time or size changes (checked every `tls_watch_secs`). If
//! they load and belong together, the endpoint gets a new server config:
//! connections already open keep the one they started with, new ones get
//! the new certificate. The driver is told the new list of revoked serial
//! numbers and cuts off counsellors on it. If the new files are broken, the
//! error is logged (it names the config key and the file, nothing about any
//! peer) and the old config stays in use. A relay without `tls_cert` (a
//! certificate generated at start, for loopback) has nothing to reload.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};

use super::Event;
use super::metrics::Metrics;
use crate::config::RelayConfig;
use crate::tls;

/// A request to reload now; answered with whether the new files were taken.
pub type Trigger = Option<oneshot::Sender<bool>>;

/// The watched files and what they looked like when last loaded.
pub struct Watched(Vec<(PathBuf, Option<(SystemTime, u64)>)>);

fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Watched {
    pub fn now(config: &RelayConfig) -> Watched {
        let paths = [
            &config.tls_cert,
            &config.tls_key,
            &config.counsellor_ca,
            &config.counsellor_crl,
        ];
        Watched(
            paths
                .into_iter()
                .flatten()
                .map(|p| (p.clone(), stamp(p)))
                .collect(),
        )
    }

    /// Whether any file changed since the last call (or since `now`).
    fn changed(&mut self) -> bool {
        let mut changed = false;
        for (path, seen) in &mut self.0 {
            let current = stamp(path);
            if current != *seen {
                *seen = current;
                changed = true;
            }
        }
        changed
    }
}

pub struct Reloader {
    pub config: RelayConfig,
    pub endpoint: quinn::Endpoint,
    /// The web transports' TCP TLS config, swapped with the QUIC one.
    pub tcp_tls: super::web::TcpTls,
    pub transport: Box<dyn Fn() -> quinn::TransportConfig + Send>,
    pub max_incoming: usize,
    pub events: mpsc::Sender<Event>,
    pub metrics: std::sync::Arc<Metrics>,
    pub watched: Watched,
}

/// Starts listening for SIGHUP. Called before the relay says it is up, so
/// that a SIGHUP sent right after never meets the default action (exit).
pub fn listen_for_hangup() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("SIGHUP reload unavailable: {e}");
            None
        }
    }
}

impl Reloader {
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Trigger>,
        every: Duration,
        mut hangup: Option<tokio::signal::unix::Signal>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                request = requests.recv() => {
                    let Some(reply) = request else { return };
                    let ok = self.reload("on request").await;
                    if let Some(reply) = reply {
                        let _ = reply.send(ok);
                    }
                }
                Some(()) = async { hangup.as_mut()?.recv().await }, if hangup.is_some() => {
                    self.reload("on SIGHUP").await;
                }
                _ = tick.tick(), if !every.is_zero() => {
                    if self.watched.changed() {
                        self.reload("after a file changed").await;
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn reload(&mut self, why: &str) -> bool {
        self.watched.changed();
        if self.config.tls_cert.is_none() {
            // The certificate was generated at start and clients pin it: a
            // new one would lock them out. Nothing on disk to reload.
            tracing::info!("reload {why} skipped: no tls_cert configured");
            return false;
        }
        let loaded = super::server_files::load(&self.config)
            .map_err(|e| e.to_string())
            .and_then(|files| {
                let relay_tls =
                    tls::server_config(&files, (self.transport)()).map_err(|e| e.to_string())?;
                let mut server = relay_tls.quic;
                server.max_incoming(self.max_incoming);
                Ok((files, server, relay_tls.tcp))
            });
        match loaded {
            Ok((files, server, tcp)) => {
                self.endpoint.set_server_config(Some(server));
                *self.tcp_tls.write().unwrap_or_else(|e| e.into_inner()) = tcp;
                let _ = self
                    .events
                    .send(Event::Revoked {
                        serials: files.revoked,
                    })
                    .await;
                self.metrics.reloaded(true);
                tracing::info!("TLS files and revocation list reloaded {why}");
                true
            }
            Err(e) => {
                self.metrics.reloaded(false);
                tracing::error!("reload {why} refused, the old certificate stays in use: {e}");
                false
            }
        }
    }
}
