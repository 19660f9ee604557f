//! The relay shell: a quinn endpoint around the sans-IO [`core::relay::Relay`].
//!
//! Tasks and data flow:
//! - the **accept loop** takes incoming QUIC connections and spawns one
//!   **connection task** each;
//! - a connection task completes the handshake, reads the counsellor
//!   credential (if any) from TLS, accepts the one control stream, registers
//!   with the driver, then forwards every chunk it reads as an [`Event`] and
//!   runs a writer that drains the connection's bounded outbound queue;
//! - the **driver** owns the core. It feeds events in, drains the core's
//!   outputs to the outbound queues, and wakes for the core's timers. A
//!   connection whose queue is full is closed as a slow consumer; nobody
//!   else waits for it. After every step it adds the core's counts to the
//!   [`metrics`];
//! - the **admin listener** ([`admin`]) serves metrics and health checks;
//! - the **reloader** ([`reload`]) rereads the TLS files and the revocation
//!   list on SIGHUP and when they change: new connections get the new
//!   certificate, and counsellors whose credential was revoked are cut off.
//!
//! Nothing clever lives here, and nothing here logs an address, a port, a
//! connection or pairing id, a key or a byte of content.
//!
//! [`core::relay::Relay`]: crate::core::relay::Relay

mod admin;
mod metrics;
mod reload;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rand_core::OsRng;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{ConfigError, RelayConfig};
use crate::core::frame::MAX_FRAME_LEN;
use crate::core::ratelimit::KeyedLimiter;
use crate::core::relay::{ConnId, Credential, Output, Relay};
use crate::core::{CloseCode, Now};

/// Capacity of the channel from connection tasks to the driver.
const DRIVER_QUEUE: usize = 1024;
/// How long a closing connection may take to flush its last frames.
const FLUSH_ON_CLOSE: Duration = Duration::from_secs(2);

/// Why the relay could not start.
#[derive(Debug, Error)]
pub enum RelayError {
    /// The config is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Certificates or keys are unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Generating the embedded default certificate failed.
    #[error(transparent)]
    Org(#[from] crate::org::OrgError),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The admin listener's TCP socket could not be bound.
    #[error("cannot listen on {addr} (admin.listen): {source}")]
    BindAdmin {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Which way bytes went, for a [`FrameObserver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Read from a connection.
    In,
    /// Written to a connection.
    Out,
}

/// Sees every buffer the relay reads or writes on a control stream. For
/// audit tests that prove what the relay holds; not set in production.
pub type FrameObserver = Arc<dyn Fn(Direction, &[u8]) + Send + Sync>;

/// Options beyond the config file.
#[derive(Default, Clone)]
pub struct RelayOptions {
    pub observer: Option<FrameObserver>,
}

/// What a connection task tells the driver.
enum Event {
    Connected {
        credential: Credential,
        /// A counsellor credential's serial number, to match revocations.
        serial: Option<Vec<u8>>,
        outbound: mpsc::Sender<Outbound>,
        connection: quinn::Connection,
        reply: oneshot::Sender<Option<ConnId>>,
    },
    Data {
        conn: ConnId,
        bytes: bytes::Bytes,
    },
    Disconnected {
        conn: ConnId,
    },
    /// The revocation list now holds these serial numbers.
    Revoked {
        serials: Vec<Vec<u8>>,
    },
}

/// What the driver tells a connection's writer.
enum Outbound {
    Bytes(Vec<u8>),
    Close(CloseCode),
}

/// A relay that is running. Dropping it does not stop it; call
/// [`RunningRelay::shutdown`].
pub struct RunningRelay {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    certificate_pem: String,
    shutdown: watch::Sender<bool>,
    admin_stop: watch::Sender<bool>,
    ready: Arc<AtomicBool>,
    reload: mpsc::Sender<reload::Trigger>,
    driver: JoinHandle<()>,
    endpoint: quinn::Endpoint,
    drain_deadline: Duration,
}

impl RunningRelay {
    /// The UDP address the relay listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The relay's TLS certificate (PEM) at start, for clients to pin with `--ca`.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The admin listener's TCP address, if it is enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Rereads the TLS files and the revocation list now, as SIGHUP does.
    /// Returns whether the new files were taken (a broken file is refused
    /// and logged, and the old ones stay in use).
    pub async fn reload(&self) -> bool {
        let (done_tx, done_rx) = oneshot::channel();
        if self.reload.send(Some(done_tx)).await.is_err() {
            return false;
        }
        done_rx.await.unwrap_or(false)
    }

    /// Graceful drain: stops accepting connections, handles every frame
    /// already read, ends every chat with "relay shutting down" (senders
    /// learn which of their messages were not confirmed), flushes, and
    /// closes every connection, all within `drain_deadline`.
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + self.drain_deadline;
        self.ready.store(false, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout_at(deadline, self.driver).await;
        let flush_until = deadline.min(tokio::time::Instant::now() + FLUSH_ON_CLOSE);
        let _ = tokio::time::timeout_at(flush_until, self.endpoint.wait_idle()).await;
        self.endpoint.close(
            CloseCode::ShuttingDown.code().into(),
            CloseCode::ShuttingDown.reason().as_bytes(),
        );
        let _ = self.admin_stop.send(true);
    }
}

/// Starts a relay from a checked config.
pub async fn start(
    config: &RelayConfig,
    options: RelayOptions,
) -> Result<RunningRelay, RelayError> {
    config.validate()?;
    let files = tls::ServerFiles::load(config)?;
    let sizes = tls::TransportSizes {
        stream_receive_window: config.limits.stream_receive_window,
        receive_window: config.limits.receive_window,
        idle_timeout: Duration::from_secs(config.limits.idle_timeout_secs),
        keep_alive: Duration::from_secs(config.limits.keep_alive_secs),
    };
    let transport = move || tls::transport_config(sizes);
    let mut server = tls::server_config(&files, transport())?;
    server.max_incoming(config.limits.max_connections);
    let endpoint =
        quinn::Endpoint::server(server, config.listen).map_err(|source| RelayError::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = endpoint.local_addr().map_err(|source| RelayError::Bind {
        addr: config.listen,
        source,
    })?;
    let service = config.service()?;
    let topics: Vec<_> = service.topics.iter().map(|t| t.id).collect();
    let metrics = Arc::new(metrics::Metrics::new(&topics));
    metrics.set_ready(true);
    let ready = Arc::new(AtomicBool::new(true));
    let (refresh_tx, refresh_rx) = mpsc::channel(16);
    let (admin_stop, admin_stop_rx) = watch::channel(false);
    let admin_addr = if config.admin.enabled {
        let state = admin::AdminState {
            metrics: metrics.clone(),
            ready: ready.clone(),
            refresh: refresh_tx,
        };
        Some(
            admin::serve(config.admin.listen, state, admin_stop_rx)
                .await
                .map_err(|source| RelayError::BindAdmin {
                    addr: config.admin.listen,
                    source,
                })?,
        )
    } else {
        None
    };

    let (events_tx, events_rx) = mpsc::channel(DRIVER_QUEUE);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let core = Relay::new(
        config.core_limits(),
        service,
        Box::new(OsRng),
        std::time::Instant::now(),
    );
    let driver = Driver {
        core,
        conns: HashMap::new(),
        observer: options.observer,
        metrics: metrics.clone(),
        revoked: files.revoked.iter().cloned().collect(),
    };
    let driver = tokio::spawn(driver.run(events_rx, shutdown_rx.clone(), refresh_rx));
    let reloader = reload::Reloader {
        config: config.clone(),
        endpoint: endpoint.clone(),
        transport: Box::new(transport),
        max_incoming: config.limits.max_connections,
        events: events_tx.clone(),
        metrics: metrics.clone(),
        watched: reload::Watched::now(config),
    };
    let (reload_tx, reload_rx) = mpsc::channel(4);
    tokio::spawn(reloader.run(
        reload_rx,
        Duration::from_secs(config.tls_watch_secs),
        reload::listen_for_hangup(),
        shutdown_rx.clone(),
    ));
    let admission = Admission {
        max_buffered: config.limits.max_buffered_frames,
        max_capacity: usize::from(config.limits.max_capacity),
        retry_above_handshakes: config.limits.retry_above_handshakes,
        handshakes: Arc::new(AtomicUsize::new(0)),
        per_address: (config.limits.per_address_attempts > 0).then(|| {
            KeyedLimiter::new(
                config.limits.per_address_attempts,
                Duration::from_secs(config.limits.address_epoch_secs),
                std::time::Instant::now(),
                &mut OsRng,
            )
        }),
    };
    tokio::spawn(accept_loop(
        endpoint.clone(),
        events_tx,
        shutdown_rx,
        admission,
    ));
    tracing::info!(
        counsellor_sign_in = config.counsellor_ca.is_some(),
        revocation_list = config.counsellor_crl.is_some(),
        admin_listener = admin_addr.is_some(),
        "relay started. Privacy in force: no addresses, ports, connection or \
         session ids, keys or message text are logged at any level; the QUIC \
         stack's own logs are off; nothing per session is written to disk; \
         every end-to-end frame is padded to one size; metrics carry no \
         label from user data"
    );
    Ok(RunningRelay {
        local_addr,
        admin_addr,
        certificate_pem: files.chain_pem,
        shutdown: shutdown_tx,
        admin_stop,
        ready,
        reload: reload_tx,
        driver,
        endpoint,
        drain_deadline: Duration::from_secs(config.limits.drain_deadline_secs),
    })
}

/// What the accept loop decides before a handshake starts.
struct Admission {
    max_buffered: usize,
    /// A counsellor's buffer holds `max_buffered` writes per chat it may take.
    max_capacity: usize,
    retry_above_handshakes: usize,
    /// Handshakes in progress.
    handshakes: Arc<AtomicUsize>,
    /// Attempts per source address, keyed and forgotten each epoch.
    per_address: Option<KeyedLimiter>,
}

impl Admission {
    /// Refuses, retries or lets through one incoming connection. The
    /// address is used here, in memory, and goes nowhere else.
    fn admit(&mut self, incoming: quinn::Incoming) -> Option<quinn::Incoming> {
        if let Some(limiter) = &mut self.per_address {
            let ip = match incoming.remote_address().ip() {
                std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                std::net::IpAddr::V6(v6) => v6.octets(),
            };
            if !limiter.allow(&ip, std::time::Instant::now(), &mut OsRng) {
                incoming.refuse();
                return None;
            }
        }
        // Under a handshake flood, make unvalidated peers prove their
        // address with a stateless retry before we spend a handshake on them.
        if self.handshakes.load(Ordering::Relaxed) >= self.retry_above_handshakes
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            let _ = incoming.retry();
            return None;
        }
        Some(incoming)
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    events: mpsc::Sender<Event>,
    mut shutdown: watch::Receiver<bool>,
    mut admission: Admission,
) {
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { return };
                let Some(incoming) = admission.admit(incoming) else { continue };
                tokio::spawn(connection_task(
                    incoming,
                    events.clone(),
                    shutdown.clone(),
                    (admission.max_buffered, admission.max_capacity),
                    admission.handshakes.clone(),
                ));
            }
            _ = shutdown.changed() => {
                endpoint.set_server_config(None);
                return;
            }
        }
    }
}

fn close(connection: &quinn::Connection, code: CloseCode) {
    connection.close(code.code().into(), code.reason().as_bytes());
}

async fn connection_task(
    incoming: quinn::Incoming,
    events: mpsc::Sender<Event>,
    shutdown: watch::Receiver<bool>,
    (max_buffered, max_capacity): (usize, usize),
    handshakes: Arc<AtomicUsize>,
) {
    if *shutdown.borrow() {
        incoming.refuse();
        return;
    }
    // A failed handshake says nothing useful and its error may carry an
    // address: drop it silently.
    handshakes.fetch_add(1, Ordering::Relaxed);
    let connecting = incoming.await;
    handshakes.fetch_sub(1, Ordering::Relaxed);
    let Ok(connection) = connecting else {
        return;
    };
    let (credential, serial) = match tls::counsellor_credential(&connection) {
        Some(c) => (
            Credential::Counsellor {
                pseudonym: c.pseudonym,
            },
            Some(c.serial),
        ),
        None => (Credential::Anonymous, None),
    };
    // The control stream must open promptly; HELLO's own deadline is the core's.
    let stream = tokio::time::timeout(Duration::from_secs(10), connection.accept_bi()).await;
    let Ok(Ok((mut send, mut recv))) = stream else {
        close(&connection, CloseCode::HelloTimeout);
        return;
    };
    // A counsellor carries up to max_capacity chats on one connection.
    let buffered = match credential {
        Credential::Counsellor { .. } => max_buffered * max_capacity.max(1),
        Credential::Anonymous => max_buffered,
    };
    let (out_tx, mut out_rx) = mpsc::channel::<Outbound>(buffered);
    let (reply_tx, reply_rx) = oneshot::channel();
    let registered = events
        .send(Event::Connected {
            credential,
            serial,
            outbound: out_tx,
            connection: connection.clone(),
            reply: reply_tx,
        })
        .await;
    let conn = match (registered, reply_rx.await) {
        (Ok(()), Ok(Some(conn))) => conn,
        _ => {
            close(&connection, CloseCode::Busy);
            return;
        }
    };

    let writer_conn = connection.clone();
    let writer = tokio::spawn(async move {
        while let Some(out) = out_rx.recv().await {
            match out {
                Outbound::Bytes(bytes) => {
                    if send.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Outbound::Close(code) => {
                    let _ = send.finish();
                    let _ = tokio::time::timeout(FLUSH_ON_CLOSE, send.stopped()).await;
                    close(&writer_conn, code);
                    return;
                }
            }
        }
    });

    // Any further stream is a protocol violation.
    let extra_streams = {
        let connection = connection.clone();
        async move {
            tokio::select! {
                _ = connection.accept_bi() => {}
                _ = connection.accept_uni() => {}
            }
        }
    };
    tokio::pin!(extra_streams);
    loop {
        tokio::select! {
            chunk = recv.read_chunk(MAX_FRAME_LEN, true) => {
                match chunk {
                    Ok(Some(chunk)) => {
                        if events.send(Event::Data { conn, bytes: chunk.bytes }).await.is_err() {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            _ = &mut extra_streams => {
                if connection.close_reason().is_none() {
                    close(&connection, CloseCode::UnexpectedStream);
                }
                break;
            }
        }
    }
    let _ = events.send(Event::Disconnected { conn }).await;
    // Let the writer flush a close it was told to make; then it is done.
    let _ = tokio::time::timeout(FLUSH_ON_CLOSE * 2, writer).await;
}

/// The time for the core: monotonic and wall clock, read together.
fn now() -> Now {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Now {
        mono: Instant::now().into_std(),
        unix,
    }
}

struct ConnEntry {
    outbound: mpsc::Sender<Outbound>,
    connection: quinn::Connection,
    serial: Option<Vec<u8>>,
}

struct Driver {
    core: Relay,
    conns: HashMap<ConnId, ConnEntry>,
    observer: Option<FrameObserver>,
    metrics: Arc<metrics::Metrics>,
    /// Serial numbers on the current revocation list.
    revoked: std::collections::HashSet<Vec<u8>>,
}

impl Driver {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut shutdown: watch::Receiver<bool>,
        mut refresh: mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        loop {
            let timer = self.core.poll_timeout().map(Instant::from_std);
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { return };
                    self.handle(event);
                }
                Some(done) = refresh.recv() => {
                    self.metrics.set_gauges(&self.core.gauges(now()));
                    let _ = done.send(());
                }
                _ = async { tokio::time::sleep_until(timer.unwrap_or_else(Instant::now)).await }, if timer.is_some() => {
                    self.core.handle_timeout(now());
                }
                _ = shutdown.changed() => {
                    // What was already read is handled before the end.
                    while let Ok(event) = events.try_recv() {
                        self.handle(event);
                        self.dispatch();
                    }
                    self.core.handle_shutdown(now());
                    self.dispatch();
                    self.metrics.set_ready(false);
                    self.metrics.set_gauges(&self.core.gauges(now()));
                    return;
                }
            }
            self.dispatch();
        }
    }

    fn handle(&mut self, event: Event) {
        let now = now();
        match event {
            Event::Connected {
                credential,
                serial,
                outbound,
                connection,
                reply,
            } => {
                // Revoked between its TLS handshake and now: no sign-in.
                if serial.as_ref().is_some_and(|s| self.revoked.contains(s)) {
                    close(&connection, CloseCode::Revoked);
                    self.metrics.closed(CloseCode::Revoked);
                    let _ = reply.send(None);
                    return;
                }
                let id = self.core.handle_connect(now, credential).ok();
                if let Some(id) = id {
                    self.conns.insert(
                        id,
                        ConnEntry {
                            outbound,
                            connection,
                            serial,
                        },
                    );
                }
                let _ = reply.send(id);
            }
            Event::Revoked { serials } => {
                self.revoked = serials.into_iter().collect();
                let mut cut: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(_, e)| e.serial.as_ref().is_some_and(|s| self.revoked.contains(s)))
                    .map(|(id, _)| *id)
                    .collect();
                cut.sort();
                for conn in cut {
                    self.metrics.revoked();
                    self.core.handle_revoked(now, conn);
                }
            }
            Event::Data { conn, bytes } => {
                if let Some(observe) = &self.observer {
                    observe(Direction::In, &bytes);
                }
                self.core.handle_data(now, conn, &bytes);
            }
            Event::Disconnected { conn } => {
                self.conns.remove(&conn);
                self.core.handle_disconnect(now, conn);
            }
        }
    }

    fn dispatch(&mut self) {
        self.metrics.add(self.core.take_stats());
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Send { conn, bytes } => {
                    let Some(entry) = self.conns.get(&conn) else {
                        continue;
                    };
                    if let Some(observe) = &self.observer {
                        observe(Direction::Out, &bytes);
                    }
                    // The queue holds `max_buffered_frames` writes; a peer that
                    // lets it fill is not reading.
                    if entry.outbound.try_send(Outbound::Bytes(bytes)).is_err() {
                        close(&entry.connection, CloseCode::SlowConsumer);
                        self.metrics.closed(CloseCode::SlowConsumer);
                        self.conns.remove(&conn);
                        self.core.handle_disconnect(now(), conn);
                    }
                }
                Output::Close { conn, code, flush } => {
                    if let Some(entry) = self.conns.remove(&conn)
                        && (!flush || entry.outbound.try_send(Outbound::Close(code)).is_err())
                    {
                        close(&entry.connection, code);
                    }
                }
            }
        }
    }
}
