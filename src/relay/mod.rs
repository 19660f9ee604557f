//! The relay shell: a quinn endpoint around the sans-IO [`core::relay::Relay`].
//!
//! Tasks and data flow:
//! - the **accept loop** takes incoming QUIC connections and spawns one
//!   **connection task** each;
//! - a connection task completes the handshake, reads the counsellor
//!   credential (if any) from TLS, accepts the one control stream, and from
//!   there on works on any transport through `carrier`'s traits
//!   (`serve`): it registers with the driver, and runs a writer that drains the connection's
//!   bounded outbound queue (behind its `Outlet`). It decodes what it
//!   reads itself. A FORWARD in a chat the core has routed goes straight
//!   into the peer's outlet, paced by the chat's budget first: one
//!   hand-off, and the driver never sees it. Every other frame spends the
//!   connection's control budget in the task (waiting for it, unread,
//!   while QUIC holds the sender back) and then goes to the driver as an
//!   `Event`. It reads only while it holds a read permit:
//!   the driver gives one back for each batch the core has taken, and
//!   holds them while the core has paused the connection (over its
//!   budget), so QUIC flow control slows the sender down. When the
//!   connection ends it says how: the peer left (an application close or
//!   the end of its stream) or was lost;
//! - the **driver** owns the core. It feeds events in, drains the core's
//!   outputs to the outlets, passes the core's routes on to the connection
//!   tasks, and wakes for the core's timers. A connection whose queue is
//!   full is closed as a slow consumer; nobody else waits for it. After
//!   every step it adds the core's counts to the `metrics`;
//! - the **admin listener** (`admin`) serves metrics and health checks;
//! - the **reloader** (`reload`) rereads the TLS files and the revocation
//!   list on SIGHUP and when they change: new connections get the new
//!   certificate, and counsellors whose credential was revoked are cut off.
//!
//! Order within a chat is kept by the outlets: every write to a connection
//! goes through its outlet's lock, and a peer's task may deliver into a
//! chat only while the outlet holds it open. The driver opens it when the
//! core grants a route (after PAIRED, RESUMED and held frames) and shuts
//! it when the core withdraws one (before END or PEER_AWAY). A task that
//! gets a route first asks the driver for a barrier, so that frames it
//! sent through the driver before are handled before any it delivers
//! itself.
//!
//! Nothing here logs an address, a port, a connection or pairing id, a key
//! or a byte of content.
//!
//! [`core::relay::Relay`]: crate::core::relay::Relay

mod admin;
mod carrier;
pub mod cluster;
mod metrics;
mod reload;
pub mod server_files;
mod web;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rand_core::OsRng;
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{ConfigError, RelayConfig};
use crate::core::frame::{ChatNumber, Frame, FrameDecoder, ToRelay};
use crate::core::ratelimit::{KeyedLimiter, SourceTag, TokenBucket};
use crate::core::relay::{ConnId, Credential, Flow, Output, Relay, Route, Stage};
use crate::core::router::{LocalRouter, Router};
use crate::core::{CloseCode, Departure, Now};
use crate::tls;
use carrier::{BytesOut, Carrier, ChunksIn, ReadEnd};

/// Capacity of the channel from connection tasks to the driver.
const DRIVER_QUEUE: usize = 1024;
/// How long a closing connection may take to flush its last frames.
const FLUSH_ON_CLOSE: Duration = Duration::from_secs(2);
/// How long the relay waits, after a normal close's last frame, for the
/// peer to close the connection itself.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Chunks one connection may have read and not yet handed to the core: a
/// bound on what the relay holds for it, whatever it sends.
const READ_AHEAD: usize = 4;
/// How late the driver may notice a deadline the core set since it last
/// asked (pacing's shortest wait is a frame's interval, 1/64 s).
const TIMER_RECHECK: Duration = Duration::from_millis(5);
/// How long a connection may take to open its control stream.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// A TCP socket for the web transports could not be bound.
    #[error("cannot listen on TCP {addr} ({key}): {source}")]
    BindWeb {
        addr: SocketAddr,
        key: &'static str,
        source: std::io::Error,
    },
    /// Cluster mode could not start (NATS, its buckets, a node id).
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// The statistics store (`stats.store`) cannot be opened.
    #[error(transparent)]
    Stats(#[from] crate::stats::StoreError),
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
        /// The source's tag, when the per-address limit is on.
        source: Option<SourceTag>,
        /// A counsellor credential's serial number, to match revocations.
        serial: Option<Vec<u8>>,
        outlet: Arc<Outlet>,
        control: Arc<Mailbox>,
        permits: Arc<Semaphore>,
        carrier: Arc<dyn Carrier>,
        reply: oneshot::Sender<Option<ConnId>>,
    },
    /// Frames the task read and did not deliver itself, in order, and the
    /// close code if the bytes after them were not a valid frame.
    Frames {
        conn: ConnId,
        frames: Vec<ToRelay>,
        invalid: Option<CloseCode>,
    },
    /// The task was granted a route in `chat`: it may deliver there itself
    /// once everything it sent before this is handled.
    Barrier {
        conn: ConnId,
        chat: ChatNumber,
    },
    /// A peer's outlet was full when the task delivered into it.
    SlowConsumer {
        conn: ConnId,
    },
    /// The peer finished its side of the stream.
    Finished {
        conn: ConnId,
    },
    Disconnected {
        conn: ConnId,
        departure: Departure,
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

/// What the driver tells a connection task.
enum Control {
    /// FORWARD frames in `chat` may go straight to this peer (or no longer).
    Route {
        chat: ChatNumber,
        to: Option<FastRoute>,
    },
    /// Everything the task sent before its barrier for `chat` is handled.
    BarrierPassed { chat: ChatNumber },
}

/// The driver's messages to one connection task. They are rare (a route
/// granted or withdrawn, a barrier passed), so a plain queue behind a lock
/// does, rather than a channel whose first block of slots every idle
/// connection would carry.
#[derive(Default)]
struct Mailbox {
    queue: std::sync::Mutex<std::collections::VecDeque<Control>>,
    ready: tokio::sync::Notify,
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Control>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, message: Control) {
        self.lock().push_back(message);
        self.ready.notify_one();
    }

    fn try_recv(&self) -> Option<Control> {
        self.lock().pop_front()
    }

    async fn recv(&self) -> Control {
        loop {
            if let Some(message) = self.try_recv() {
                return message;
            }
            // A message sent since the check left a permit: no wake-up lost.
            self.ready.notified().await;
        }
    }
}

/// A route as a connection task holds it.
struct FastRoute {
    peer: ConnId,
    chat: ChatNumber,
    outlet: Arc<Outlet>,
}

/// A connection's way out: its writer's queue, and the chats in which
/// other connections' tasks may deliver FORWARD frames straight into it.
/// Every write goes through its lock, so a frame a peer's task delivers can
/// never pass an END or a PAIRED the driver wrote before it.
struct Outlet {
    inner: std::sync::Mutex<OutletInner>,
}

struct OutletInner {
    queue: mpsc::Sender<Outbound>,
    /// Chats open to delivery by a peer's task; a handful at most.
    open: Vec<ChatNumber>,
}

/// What became of a frame a task delivered into a peer's outlet.
enum Delivery {
    Sent,
    /// The chat is not open (any more): the core must handle the frame.
    NotOpen,
    /// The peer does not read.
    Full,
}

impl Outlet {
    fn new(queue: mpsc::Sender<Outbound>) -> Outlet {
        Outlet {
            inner: std::sync::Mutex::new(OutletInner {
                queue,
                open: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutletInner> {
        // Nothing panics while holding it; if something did, the state is
        // still a queue handle and a list.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The driver's writes.
    fn push(&self, out: Outbound) -> Result<(), mpsc::error::TrySendError<Outbound>> {
        self.lock().queue.try_send(out)
    }

    /// A peer task's FORWARD, if `chat` is open.
    fn deliver(&self, chat: ChatNumber, bytes: Vec<u8>) -> Delivery {
        let inner = self.lock();
        if !inner.open.contains(&chat) {
            return Delivery::NotOpen;
        }
        match inner.queue.try_send(Outbound::Bytes(bytes)) {
            Ok(()) => Delivery::Sent,
            Err(mpsc::error::TrySendError::Full(_)) => Delivery::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::NotOpen,
        }
    }

    fn open(&self, chat: ChatNumber) {
        let mut inner = self.lock();
        if !inner.open.contains(&chat) {
            inner.open.push(chat);
        }
    }

    fn shut(&self, chat: ChatNumber) {
        self.lock().open.retain(|c| *c != chat);
    }

    fn shut_all(&self) {
        self.lock().open.clear();
    }
}

/// A relay that is running. Dropping it does not stop it; call
/// [`RunningRelay::shutdown`].
pub struct RunningRelay {
    local_addr: SocketAddr,
    web_addr: Option<SocketAddr>,
    loopback_http_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    certificate_pem: String,
    shutdown: watch::Sender<bool>,
    admin_stop: watch::Sender<bool>,
    ready: Arc<AtomicBool>,
    reload: mpsc::Sender<reload::Trigger>,
    driver: JoinHandle<()>,
    endpoint: quinn::Endpoint,
    drain_deadline: Duration,
    /// In a cluster: stops the lease task, which leaves the cluster.
    cluster_stop: watch::Sender<bool>,
    cluster_task: Option<JoinHandle<()>>,
}

impl RunningRelay {
    /// The UDP address the relay listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The TCP address of WebSocket and the page over TLS, if `[web]` is on.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web_addr
    }

    /// The plain-HTTP loopback address of the page and WebSocket
    /// (`web.loopback_http`), if set.
    pub fn loopback_http_addr(&self) -> Option<SocketAddr> {
        self.loopback_http_addr
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
    ///
    /// In a cluster the chats do not end: every connection is closed with
    /// DRAINING, its people resume on the other relays, and this relay
    /// hands over what it held for them as they claim it; then it leaves
    /// the cluster.
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
        let _ = self.cluster_stop.send(true);
        if let Some(task) = self.cluster_task {
            let _ = tokio::time::timeout(FLUSH_ON_CLOSE, task).await;
        }
    }
}

/// Starts a relay from a checked config.
pub async fn start(
    config: &RelayConfig,
    options: RelayOptions,
) -> Result<RunningRelay, RelayError> {
    config.validate()?;
    let files = server_files::load(config)?;
    let sizes = tls::TransportSizes {
        stream_receive_window: config.transport.stream_receive_window,
        receive_window: config.transport.receive_window,
        idle_timeout: Duration::from_secs(config.transport.idle_timeout_secs),
        keep_alive: Duration::from_secs(config.transport.keep_alive_secs),
    };
    let transport = move || tls::transport_config(sizes);
    let relay_tls = tls::server_config(&files, transport())?;
    let mut server = relay_tls.quic;
    server.max_incoming(config.limits.max_connections);
    let tcp_tls: web::TcpTls = Arc::new(std::sync::RwLock::new(relay_tls.tcp));
    let bind_err = |source| RelayError::Bind {
        addr: config.listen,
        source,
    };
    let (socket, web_listener) = bind_ports(config)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| bind_err(std::io::Error::other("no async runtime")))?;
    // A reset key that survives a restart: a relay that restarts answers
    // packets of connections it no longer knows with a stateless reset, so
    // their peers learn at once that they must reconnect.
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(files.stateless_reset_key()));
    let cid_key = files.connection_id_key();
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let endpoint =
        quinn::Endpoint::new(endpoint_config, Some(server), socket, runtime).map_err(bind_err)?;
    let local_addr = endpoint.local_addr().map_err(|source| RelayError::Bind {
        addr: config.listen,
        source,
    })?;
    let service = config.service()?;
    let topics: Vec<_> = service.topics.iter().map(|t| t.id).collect();
    let metrics = Arc::new(metrics::Metrics::new(&topics));
    metrics.set_ready(true);
    let ready = Arc::new(AtomicBool::new(true));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // The cluster's tasks outlive the driver: a draining relay hands over
    // what it held before it leaves the cluster.
    let (cluster_stop, cluster_stop_rx) = watch::channel(false);
    let mut cluster_task = None;
    let mut stats_link = None;
    let (router, cluster): (Box<dyn Router>, _) = match &config.cluster {
        Some(cluster_config) => {
            let limits = config.core_limits();
            let joined = cluster::join(cluster_config, &limits, cluster_stop_rx).await?;
            cluster_task = Some(joined.task);
            stats_link = Some(joined.stats);
            (Box::new(joined.router), Some((joined.status, joined.wake)))
        }
        None => (
            Box::new(LocalRouter::new(config.core_limits().topic_fallback)),
            None,
        ),
    };
    let (refresh_tx, refresh_rx) = mpsc::channel(16);
    // `[stats]`: the form went into the service; the store and the report
    // settings are the shell's.
    let stats = match &config.stats {
        Some(stats) => Some(Arc::new(stats.stats()?)),
        None => None,
    };
    let (admin_stop, admin_stop_rx) = watch::channel(false);
    let admin_addr = if config.admin.enabled {
        let state = admin::AdminState {
            metrics: metrics.clone(),
            ready: ready.clone(),
            refresh: refresh_tx,
            cluster: cluster.as_ref().map(|(status, _)| status.clone()),
            stats: stats.clone().filter(|s| s.store.is_some()),
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
    // Where batches of codings go: this relay's store, or in a cluster the
    // designated keeper's (cluster/stats.rs), which this relay may be.
    let keeper = match stats.as_ref().and_then(|s| Some((s.store.as_ref()?, s))) {
        Some((path, stats)) => Some((
            crate::stats::keeper::Keeper::start(path, stats.cross.clone())?,
            Arc::clone(&stats.form),
        )),
        None => None,
    };
    let codings = match (keeper, stats_link) {
        (Some((keeper, form)), link) => {
            if let Some(link) = link {
                link.serve(keeper.clone(), form).await?;
            }
            Some(StatsSink::Store(keeper))
        }
        (None, Some(link)) => Some(StatsSink::Cluster(link)),
        (None, None) => None,
    };
    let (answers_tx, answers_rx) = mpsc::channel(crate::stats::keeper::QUEUE + 64);
    let core = Relay::with_router(
        config.core_limits(),
        service,
        Box::new(OsRng),
        router,
        std::time::Instant::now(),
    );
    // Connections in their QUIC handshake or before their control stream.
    let handshakes = Arc::new(AtomicUsize::new(0));
    let driver = Driver {
        core,
        conns: HashMap::new(),
        observer: options.observer.clone(),
        metrics: metrics.clone(),
        revoked: files.revoked.iter().cloned().collect(),
        handshakes: handshakes.clone(),
        routes: HashMap::new(),
        cluster: cluster.clone(),
        // What the driver may spend handing over, within the deadline.
        drain_for: Duration::from_secs(config.transport.drain_deadline_secs)
            .saturating_sub(FLUSH_ON_CLOSE),
        codings,
        answers: answers_tx,
    };
    let driver = tokio::spawn(driver.run(events_rx, shutdown_rx.clone(), refresh_rx, answers_rx));
    let reloader = reload::Reloader {
        config: config.clone(),
        endpoint: endpoint.clone(),
        tcp_tls: tcp_tls.clone(),
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
    let core_limits = config.core_limits();
    let admission = Admission {
        tasks: TaskSettings {
            max_buffered: config.transport.max_buffered_frames,
            max_capacity: usize::from(config.limits.max_capacity),
            forward_per_sec: core_limits.forward_frames_per_sec,
            forward_burst: core_limits.forward_frames_burst,
            control_per_sec: core_limits.control_frames_per_sec,
            control_burst: core_limits.control_frames_burst,
            observer: options.observer.clone(),
            handshakes: handshakes.clone(),
            metrics: metrics.clone(),
        },
        retry_above_handshakes: config.transport.retry_above_handshakes,
        // Sources are tagged for the attempts limit and for the limit on
        // places in the queue; without either, not at all.
        per_address: (config.transport.per_address_attempts > 0
            || config.limits.per_source_places > 0)
            .then(|| {
                let attempts = match config.transport.per_address_attempts {
                    0 => u32::MAX,
                    n => n,
                };
                Arc::new(std::sync::Mutex::new(KeyedLimiter::new(
                    attempts,
                    Duration::from_secs(config.transport.address_epoch_secs),
                    std::time::Instant::now(),
                    &mut OsRng,
                )))
            }),
        origins: web::Origins::new(&config.web_origins),
        web: config.web.enabled,
    };
    let (web_addr, loopback_http_addr) = if config.web.enabled {
        let context = web::WebContext {
            events: events_tx.clone(),
            settings: admission.tasks.clone(),
            origins: admission.origins.clone(),
            per_address: admission.per_address.clone(),
            page: None,
            idle_timeout: Duration::from_secs(config.transport.idle_timeout_secs),
            keep_alive: Duration::from_secs(config.transport.keep_alive_secs),
            tcp_slots: Arc::new(Semaphore::new(config.limits.max_connections)),
        };
        let listener = web_listener.ok_or_else(|| RelayError::BindWeb {
            addr: local_addr,
            key: "listen",
            source: std::io::Error::other("no TCP listener"),
        })?;
        start_web(config, &files, listener, tcp_tls, context, &shutdown_rx).await?
    } else {
        (None, None)
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
        web_addr,
        loopback_http_addr,
        admin_addr,
        certificate_pem: files.chain_pem,
        shutdown: shutdown_tx,
        admin_stop,
        ready,
        reload: reload_tx,
        driver,
        endpoint,
        drain_deadline: Duration::from_secs(config.transport.drain_deadline_secs),
        cluster_stop,
        cluster_task,
    })
}

/// Binds the web transports' TCP listeners: TLS on `udp`'s port number
/// (WebSocket and the page), and plain HTTP on `web.loopback_http` if set.
async fn start_web(
    config: &RelayConfig,
    files: &tls::ServerFiles,
    tls_listener: std::net::TcpListener,
    tcp_tls: web::TcpTls,
    mut context: web::WebContext,
    shutdown: &watch::Receiver<bool>,
) -> Result<(Option<SocketAddr>, Option<SocketAddr>), RelayError> {
    let bind = |addr: SocketAddr, key: &'static str| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| RelayError::BindWeb { addr, key, source })
    };
    let udp = tls_listener
        .local_addr()
        .map_err(|source| RelayError::BindWeb {
            addr: config.listen,
            key: "listen",
            source,
        })?;
    let web_addr = Some(udp);
    let tls_listener = tls_listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(tls_listener))
        .map_err(|source| RelayError::BindWeb {
            addr: udp,
            key: "listen",
            source,
        })?;
    let loopback = match config.web.loopback_http {
        Some(addr) => Some(bind(addr, "web.loopback_http").await?),
        None => None,
    };
    let loopback_addr = loopback.as_ref().and_then(|l| l.local_addr().ok());
    if config.web.page {
        let addresses = web::page::Addresses {
            udp,
            loopback_http: loopback_addr,
        };
        let hashes = web::page::pinnable_hashes(&files.chain);
        context.page = Some(Arc::new(web::page::Site::new(
            &config.web,
            &addresses,
            hashes,
        )));
    }
    web::serve_tcp(
        tls_listener,
        Some(tcp_tls),
        context.clone(),
        shutdown.clone(),
    );
    if let Some(listener) = loopback {
        web::serve_tcp(listener, None, context, shutdown.clone());
    }
    Ok((web_addr, loopback_addr))
}

/// Binds the UDP socket and, with the web transports on, a TCP listener on
/// the same port number. With port 0 the kernel draws UDP and TCP ports
/// apart, so the number it gave UDP may be taken for TCP (by any outgoing
/// connection): then both are drawn again, a few times.
fn bind_ports(
    config: &RelayConfig,
) -> Result<(std::net::UdpSocket, Option<std::net::TcpListener>), RelayError> {
    const DRAWS: usize = 16;
    let mut draw = 0;
    loop {
        draw += 1;
        let udp = bind_udp(config.listen).map_err(|source| RelayError::Bind {
            addr: config.listen,
            source,
        })?;
        if !config.web.enabled {
            return Ok((udp, None));
        }
        let port = udp.local_addr().map_err(|source| RelayError::Bind {
            addr: config.listen,
            source,
        })?;
        match std::net::TcpListener::bind(port) {
            Ok(tcp) => return Ok((udp, Some(tcp))),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && config.listen.port() == 0
                    && draw < DRAWS => {}
            Err(source) => {
                return Err(RelayError::BindWeb {
                    addr: port,
                    key: "listen",
                    source,
                });
            }
        }
    }
}

/// What the accept loop decides before a handshake starts.
struct Admission {
    tasks: TaskSettings,
    retry_above_handshakes: usize,
    /// Attempts per source address, keyed and forgotten each epoch; shared
    /// with the web transports' TCP listener.
    per_address: Option<Arc<std::sync::Mutex<KeyedLimiter>>>,
    /// The `Origin` allow-list for WebTransport.
    origins: web::Origins,
    /// Whether `h3` connections (WebTransport) are served.
    web: bool,
}

/// What every connection task is given.
#[derive(Clone)]
struct TaskSettings {
    max_buffered: usize,
    /// A counsellor's buffer holds `max_buffered` writes per chat it may take.
    max_capacity: usize,
    /// The budget of FORWARD frames per chat, as the core's.
    forward_per_sec: u32,
    forward_burst: u32,
    /// The budget of other frames per connection, as the core's: spent in
    /// the connection's task, before a frame reaches the driver.
    control_per_sec: u32,
    control_burst: u32,
    observer: Option<FrameObserver>,
    /// Connections in their handshake or before their control stream.
    handshakes: Arc<AtomicUsize>,
    metrics: Arc<metrics::Metrics>,
}

/// The part of an address that names one source: the whole IPv4 address,
/// or the /64 block of an IPv6 one (one subscriber usually has a whole /64).
fn source_bytes(ip: std::net::IpAddr) -> Vec<u8> {
    match ip {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets()[..8].to_vec(),
        },
    }
}

impl Admission {
    /// Refuses, retries or lets through one incoming connection, with its
    /// source's tag when the per-address limit is on. The address is used
    /// here, in memory, and goes nowhere else.
    fn admit(&mut self, incoming: quinn::Incoming) -> Option<(quinn::Incoming, Option<SourceTag>)> {
        let mut tag = None;
        if let Some(limiter) = &self.per_address {
            let source = source_bytes(incoming.remote_address().ip());
            let mut limiter = limiter.lock().unwrap_or_else(|e| e.into_inner());
            let (source_tag, allowed) =
                limiter.check(&source, std::time::Instant::now(), &mut OsRng);
            if !allowed {
                self.tasks.metrics.refused_attempt();
                incoming.refuse();
                return None;
            }
            tag = Some(source_tag);
        }
        // Under a handshake flood, make unvalidated peers prove their
        // address with a stateless retry before we spend a handshake on them.
        if self.tasks.handshakes.load(Ordering::Relaxed) >= self.retry_above_handshakes
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            let _ = incoming.retry();
            return None;
        }
        Some((incoming, tag))
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
                let Some((incoming, source)) = admission.admit(incoming) else { continue };
                tokio::spawn(connection_task(
                    Box::new(incoming),
                    source,
                    events.clone(),
                    shutdown.clone(),
                    admission.tasks.clone(),
                    admission.web.then(|| admission.origins.clone()),
                ));
            }
            _ = shutdown.changed() => {
                endpoint.set_server_config(None);
                return;
            }
        }
    }
}

/// Socket buffers the relay asks for: room for a surge of handshakes and
/// for keep-alives of many connections arriving together. The kernel caps
/// them at `net.core.rmem_max` and `wmem_max` (deploy/README.md).
pub const UDP_BUFFER_BYTES: usize = 4 << 20;

/// A UDP socket bound to `addr` with [`UDP_BUFFER_BYTES`] of buffer each
/// way (or what the kernel allows): with the default 208 KiB, packets are
/// dropped under load and handshakes stall in retransmission back-off.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer is no reason not to run.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn close(connection: &quinn::Connection, code: CloseCode) {
    connection.close(code.code().into(), code.reason().as_bytes());
}

async fn connection_task(
    incoming: Box<quinn::Incoming>,
    source: Option<SourceTag>,
    events: mpsc::Sender<Event>,
    shutdown: watch::Receiver<bool>,
    settings: TaskSettings,
    web: Option<web::Origins>,
) {
    // The connection is served by a task of its own: a task keeps the
    // size of its largest state for its whole life, and what the
    // handshake needed is gone once the connection is up.
    if *shutdown.borrow() {
        incoming.refuse();
        return;
    }
    // Counted from the handshake until the control stream is up. A failed
    // handshake says nothing useful and its error may carry an address:
    // drop it silently.
    settings.handshakes.fetch_add(1, Ordering::Relaxed);
    let opened = Box::pin(open(*incoming, source, web, &settings)).await;
    settings.handshakes.fetch_sub(1, Ordering::Relaxed);
    match opened {
        Some(Opened::Native(carrier, recv, send, peer)) => {
            tokio::spawn(serve(carrier, recv, send, peer, events, settings));
        }
        Some(Opened::Web(carrier, recv, send, peer)) => {
            tokio::spawn(serve(carrier, recv, send, peer, events, settings));
        }
        None => {}
    }
}

/// A QUIC connection with its control stream up, by ALPN.
enum Opened {
    Native(
        Arc<carrier::Quic>,
        quinn::RecvStream,
        quinn::SendStream,
        Peer,
    ),
    Web(
        Arc<web::webtransport::WtCarrier>,
        web::webtransport::WtIn,
        web::webtransport::WtOut,
        Peer,
    ),
}

/// The QUIC handshake and the control stream (native, or the
/// WebTransport session's one stream), with who is on the other end.
async fn open(
    incoming: quinn::Incoming,
    source: Option<SourceTag>,
    web: Option<web::Origins>,
    settings: &TaskSettings,
) -> Option<Opened> {
    let metrics = settings.metrics.clone();
    let connection = incoming.await.ok()?;
    let alpn = connection
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if alpn.as_deref() == Some(tls::by_alpn::WEB_ALPN) {
        let Some(origins) = web else {
            close(&connection, CloseCode::NotAuthorized);
            return None;
        };
        // Only the young person's role comes in over the web: no
        // certificate was asked for, and none is looked at.
        let peer = Peer {
            credential: Credential::Anonymous,
            serial: None,
            source,
        };
        return match web::webtransport::open(connection, &origins, STREAM_TIMEOUT).await {
            Ok((carrier, recv, send)) => Some(Opened::Web(carrier, recv, send, peer)),
            Err(_) => None,
        };
    }
    let stream = tokio::time::timeout(STREAM_TIMEOUT, connection.accept_bi()).await;
    let Ok(Ok((send, recv))) = stream else {
        close(&connection, CloseCode::Timeout);
        metrics.closed(CloseCode::Timeout);
        return None;
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
    let carrier = Arc::new(carrier::Quic(connection));
    let peer = Peer {
        credential,
        serial,
        source,
    };
    Some(Opened::Native(carrier, recv, send, peer))
}

/// Takes one frame's worth from `budget`, waiting until it has it.
async fn spend_one(budget: &mut TokenBucket) {
    let now = std::time::Instant::now();
    if !budget.take(now, 1.0) {
        let ready = budget.ready_at(now, 1.0);
        // Boxed: a timer in every idle connection's task would cost memory
        // for a wait that is rare.
        Box::pin(tokio::time::sleep_until(Instant::from_std(ready))).await;
        budget.take(std::time::Instant::now(), 1.0);
    }
}

/// Hands an event to the driver; false if the driver is gone. Boxed: a
/// channel send's future is about 400 bytes, and held in place it would
/// sit in every idle connection's task.
async fn to_driver(events: &mpsc::Sender<Event>, event: Event) -> bool {
    Box::pin(events.send(event)).await.is_ok()
}

/// Who is on the other end of a connection, as far as the relay may know.
struct Peer {
    credential: Credential,
    /// A counsellor credential's serial number, to match revocations.
    serial: Option<Vec<u8>>,
    /// The source's tag, when the per-address limit is on.
    source: Option<SourceTag>,
}

/// Runs one connection whose control stream is up, whatever carries it:
/// registers with the driver, writes what its outlet queues, and reads,
/// decodes and delivers until it ends.
async fn serve(
    carrier: Arc<impl Carrier>,
    mut recv: impl ChunksIn,
    mut send: impl BytesOut,
    peer: Peer,
    events: mpsc::Sender<Event>,
    settings: TaskSettings,
) {
    let metrics = settings.metrics.clone();
    let Peer {
        credential,
        serial,
        source,
    } = peer;
    // A counsellor carries up to max_capacity chats on one connection.
    let buffered = match credential {
        Credential::Counsellor { .. } => settings.max_buffered * settings.max_capacity.max(1),
        Credential::Anonymous => settings.max_buffered,
    };
    let (out_tx, mut out_rx) = mpsc::channel::<Outbound>(buffered);
    let outlet = Arc::new(Outlet::new(out_tx));
    let control = Arc::new(Mailbox::default());
    let permits = Arc::new(Semaphore::new(READ_AHEAD));
    let (reply_tx, reply_rx) = oneshot::channel();
    let stage = Stage::new(&credential);
    let connected = Event::Connected {
        credential,
        source,
        serial,
        outlet: outlet.clone(),
        control: control.clone(),
        permits: permits.clone(),
        carrier: carrier.clone(),
        reply: reply_tx,
    };
    let registered = to_driver(&events, connected).await;
    let conn = match (registered, reply_rx.await) {
        (true, Ok(Some(conn))) => conn,
        _ => {
            carrier.close(CloseCode::Busy);
            metrics.closed(CloseCode::Busy);
            return;
        }
    };

    let writer_carrier = carrier.clone();
    let writer = tokio::spawn(async move {
        while let Some(out) = out_rx.recv().await {
            match out {
                Outbound::Bytes(bytes) => {
                    if !send.write_all(&bytes).await {
                        return;
                    }
                }
                Outbound::Close(code) => {
                    send.finish(FLUSH_ON_CLOSE).await;
                    // A normal close follows a last frame the peer must
                    // read (UNAVAILABLE, RESUME_FAILED, a young person's
                    // END). Closing first can make a browser drop what it
                    // had not read yet (a WebTransport session's close
                    // aborts its streams), so the peer is given a moment
                    // to close itself.
                    if code == CloseCode::NoError {
                        let _ = tokio::time::timeout(CLOSE_LINGER, writer_carrier.closed()).await;
                    }
                    writer_carrier.close(code);
                    return;
                }
            }
        }
    });

    let mut reader = Reader::new(conn, stage, settings, events);
    let mut closed = carrier.closed();
    // Whether the peer ended the connection itself: then nothing is left
    // to write to it.
    let mut peer_ended = false;
    let departure = loop {
        // What the driver says comes first: a route granted or withdrawn
        // applies to everything read after it.
        let mut driver_gone = false;
        while let Some(message) = control.try_recv() {
            driver_gone |= !reader.on_control(message).await;
        }
        if driver_gone {
            break Departure::Lost;
        }
        // Read only with a permit (the driver holds them back while the
        // core has paused this connection), and not while a barrier is
        // pending or after a bad frame.
        let readable = reader.barriers == 0 && !reader.broken;
        let got_permit = readable && permits.try_acquire().map(|p| p.forget()).is_ok();
        if !got_permit {
            tokio::select! {
                biased;
                message = control.recv() => if !reader.on_control(message).await {
                    break Departure::Lost;
                },
                // A permit is free again: dropped here, taken above.
                permit = permits.acquire(), if readable => if permit.is_err() {
                    break Departure::Lost;
                },
                _ = &mut closed => break Departure::Lost,
            }
            continue;
        }
        match recv.next_chunk().await {
            Ok(Some(chunk)) => {
                if !reader.on_chunk(&chunk, &permits).await {
                    break Departure::Lost;
                }
            }
            Ok(None) => {
                // The peer leaves; the core acts on what it sent, then closes.
                to_driver(&reader.events, Event::Finished { conn }).await;
                closed.await;
                break Departure::Lost;
            }
            Err(ReadEnd::Departed(departure)) => {
                peer_ended = true;
                break departure;
            }
            Err(ReadEnd::Broken(code)) => {
                // The core closes with the code; nothing more is read.
                reader.broken = true;
                reader.routes.clear();
                let frames = Event::Frames {
                    conn,
                    frames: Vec::new(),
                    invalid: Some(code),
                };
                if !to_driver(&reader.events, frames).await {
                    break Departure::Lost;
                }
            }
        }
    };
    to_driver(&reader.events, Event::Disconnected { conn, departure }).await;
    // Let the writer flush a close it was told to make; then it is done,
    // and so is the transport (a peer's task may still hold this
    // connection's outlet until its route is withdrawn, which must not
    // keep a WebSocket's TCP connection open).
    let mut writer = writer;
    if peer_ended
        || tokio::time::timeout(FLUSH_ON_CLOSE * 2, &mut writer)
            .await
            .is_err()
    {
        writer.abort();
    }
}

/// A chat side's route as its connection task holds it, with the chat's
/// budget of FORWARD frames.
struct HeldRoute {
    to: FastRoute,
    budget: TokenBucket,
    /// The barrier passed: frames sent through the driver before are handled.
    ready: bool,
}

/// A connection task's routes by chat. A young person has one chat and a
/// counsellor a handful, so a short list that grows one place at a time
/// does better than a hash map, whose first allocation is four buckets of
/// a route each on every idle connection.
#[derive(Default)]
struct ChatRoutes(Vec<(ChatNumber, HeldRoute)>);

impl ChatRoutes {
    fn insert(&mut self, chat: ChatNumber, route: HeldRoute) {
        if let Some(held) = self.get_mut(&chat) {
            *held = route;
            return;
        }
        self.0.reserve_exact(1);
        self.0.push((chat, route));
    }

    fn remove(&mut self, chat: &ChatNumber) -> Option<HeldRoute> {
        let at = self.0.iter().position(|(c, _)| c == chat)?;
        let (_, route) = self.0.swap_remove(at);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(route)
    }

    fn get_mut(&mut self, chat: &ChatNumber) -> Option<&mut HeldRoute> {
        self.0.iter_mut().find(|(c, _)| c == chat).map(|(_, r)| r)
    }

    fn clear(&mut self) {
        self.0 = Vec::new();
    }
}

/// The reading half of a connection task: decodes, delivers FORWARD frames
/// on routed chats itself, and hands everything else to the driver.
struct Reader {
    conn: ConnId,
    settings: TaskSettings,
    events: mpsc::Sender<Event>,
    decoder: FrameDecoder,
    /// What the connection may send: a frame it could never send here
    /// closes it without the driver acting on anything after it.
    stage: Stage,
    /// The budget for frames other than FORWARD.
    control: TokenBucket,
    routes: ChatRoutes,
    /// Barriers asked for and not yet passed.
    barriers: usize,
    /// A bad frame was read: nothing more is delivered or read.
    broken: bool,
}

impl Reader {
    fn new(
        conn: ConnId,
        stage: Stage,
        settings: TaskSettings,
        events: mpsc::Sender<Event>,
    ) -> Reader {
        let (rate, burst) = (settings.control_per_sec, settings.control_burst);
        Reader {
            conn,
            settings,
            events,
            decoder: FrameDecoder::default(),
            stage,
            control: TokenBucket::new(rate, burst, std::time::Instant::now()),
            routes: ChatRoutes::default(),
            barriers: 0,
            broken: false,
        }
    }

    /// Takes a message from the driver; false if the driver is gone.
    async fn on_control(&mut self, message: Control) -> bool {
        match message {
            Control::Route { chat, to: Some(to) } => {
                let budget = TokenBucket::new(
                    self.settings.forward_per_sec,
                    self.settings.forward_burst,
                    std::time::Instant::now(),
                );
                self.routes.insert(
                    chat,
                    HeldRoute {
                        to,
                        budget,
                        ready: false,
                    },
                );
                // Reading stops until the driver has handled what this task
                // sent before; the barrier travels behind it.
                let barrier = Event::Barrier {
                    conn: self.conn,
                    chat,
                };
                if !to_driver(&self.events, barrier).await {
                    return false;
                }
                self.barriers += 1;
            }
            Control::Route { chat, to: None } => {
                self.routes.remove(&chat);
            }
            Control::BarrierPassed { chat } => {
                self.barriers = self.barriers.saturating_sub(1);
                if let Some(route) = self.routes.get_mut(&chat) {
                    route.ready = true;
                }
            }
        }
        true
    }

    /// Handles one chunk read from the stream; false if the driver is gone.
    async fn on_chunk(&mut self, bytes: &[u8], permits: &Semaphore) -> bool {
        if let Some(observe) = &self.settings.observer {
            observe(Direction::In, bytes);
        }
        let mut decoded = Vec::new();
        let mut invalid = self
            .decoder
            .push(bytes, &mut decoded)
            .err()
            .map(|e| e.close_code());
        // A frame the connection could never send closes it; nothing from
        // there on is acted on.
        let mut frames = ToRelay::from_decoded(decoded, &mut invalid);
        for (i, frame) in frames.iter().enumerate() {
            if let Err(code) = self.stage.check(frame) {
                frames.truncate(i);
                invalid = Some(code);
                break;
            }
        }
        let mut others = Vec::new();
        for frame in frames {
            match frame {
                ToRelay::Forward { chat, blob } => match self.deliver(chat, blob).await {
                    Ok(()) => {}
                    Err((frame, slow_peer)) => {
                        if let Some(peer) = slow_peer
                            && !to_driver(&self.events, Event::SlowConsumer { conn: peer }).await
                        {
                            return false;
                        }
                        others.push(frame);
                    }
                },
                // After these the chat's frames go through the core, which
                // knows whether the chat is still there.
                ToRelay::End { chat, .. } | ToRelay::Transfer { chat, .. } => {
                    self.routes.remove(&chat);
                    others.push(frame);
                }
                other => others.push(other),
            }
        }
        if invalid.is_some() {
            // Nothing after a bad frame is acted on; the core closes.
            self.broken = true;
            self.routes.clear();
        }
        if others.is_empty() && invalid.is_none() {
            // Nothing for the driver: the permit comes straight back.
            permits.add_permits(1);
            return true;
        }
        // Frames other than FORWARD spend the connection's budget here,
        // before the shared driver sees them (§8.1): meanwhile nothing is
        // read, and QUIC holds the sender back.
        let control = others
            .iter()
            .filter(|f| !matches!(f, ToRelay::Forward { .. }))
            .count();
        for _ in 0..control {
            spend_one(&mut self.control).await;
        }
        let frames = Event::Frames {
            conn: self.conn,
            frames: others,
            invalid,
        };
        to_driver(&self.events, frames).await
    }

    /// Delivers a FORWARD straight into the peer's outlet if the chat is
    /// routed, within the chat's budget (waiting for it: meanwhile nothing
    /// is read, and QUIC holds the sender back). Otherwise gives the frame
    /// back for the driver, with the peer if its outlet was full.
    async fn deliver(
        &mut self,
        chat: ChatNumber,
        blob: crate::core::frame::Blob,
    ) -> Result<(), (ToRelay, Option<ConnId>)> {
        let Some(route) = self.routes.get_mut(&chat).filter(|r| r.ready) else {
            // A frame on this chat goes through the driver: so must every
            // later one until a new route (and barrier) says otherwise.
            self.routes.remove(&chat);
            return Err((ToRelay::Forward { chat, blob }, None));
        };
        spend_one(&mut route.budget).await;
        let bytes = Frame::forward_bytes(route.to.chat, &blob);
        let len = bytes.len() as u64;
        let observed = self.settings.observer.clone().map(|o| (o, bytes.clone()));
        let outcome = route.to.outlet.deliver(route.to.chat, bytes);
        let peer = route.to.peer;
        if let Delivery::Sent = outcome {
            if let Some((observe, bytes)) = observed {
                observe(Direction::Out, &bytes);
            }
            self.settings.metrics.forwarded(len);
            return Ok(());
        }
        // With this side's own chat number, for the core.
        self.routes.remove(&chat);
        let slow_peer = matches!(outcome, Delivery::Full).then_some(peer);
        Err((ToRelay::Forward { chat, blob }, slow_peer))
    }
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
    outlet: Arc<Outlet>,
    /// To the connection task: routes and barriers.
    control: Arc<Mailbox>,
    carrier: Arc<dyn Carrier>,
    serial: Option<Vec<u8>>,
    /// The connection task's read permits, and how many the core owes it
    /// while it is paused.
    permits: Arc<Semaphore>,
    owed: usize,
}

struct Driver {
    core: Relay,
    conns: HashMap<ConnId, ConnEntry>,
    observer: Option<FrameObserver>,
    metrics: Arc<metrics::Metrics>,
    /// Serial numbers on the current revocation list.
    revoked: std::collections::HashSet<Vec<u8>>,
    /// Connections in their handshake or before their control stream.
    handshakes: Arc<AtomicUsize>,
    /// The routes granted now, by the sending side.
    routes: HashMap<(ConnId, ChatNumber), Route>,
    /// In a cluster: what the metrics show of it, and what wakes the
    /// driver when the router has news.
    cluster: Option<(Arc<cluster::Status>, Arc<tokio::sync::Notify>)>,
    /// How long a draining relay in a cluster waits for its people to
    /// claim what it holds.
    drain_for: Duration,
    /// Where batches of codings go.
    codings: Option<StatsSink>,
    /// Where the store's answers come back to the driver.
    answers: mpsc::Sender<CodingsAnswer>,
}

/// Where a relay's batches of codings are counted.
enum StatsSink {
    /// The store on this relay.
    Store(crate::stats::keeper::Keeper),
    /// The designated keeper of the cluster, through NATS.
    Cluster(cluster::StatsLink),
}

/// The store's answer to a batch of codings.
struct CodingsAnswer {
    conn: ConnId,
    batch: crate::core::coding::BatchId,
    outcome: crate::core::coding::CodingsOutcome,
}

impl Driver {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut shutdown: watch::Receiver<bool>,
        mut refresh: mpsc::Receiver<oneshot::Sender<()>>,
        mut answers: mpsc::Receiver<CodingsAnswer>,
    ) {
        // The core's next deadline, asked again at most every
        // TIMER_RECHECK while events arrive: asking walks every connection,
        // and every deadline the core sets is far longer than that.
        let mut timer = self.core.poll_timeout().map(Instant::from_std);
        let mut checked = Instant::now();
        let mut stale = false;
        let router_news = self.cluster.as_ref().map(|(_, wake)| wake.clone());
        // In a cluster, a shutdown drains first: until when.
        let mut draining: Option<Instant> = None;
        loop {
            if let Some(until) = draining
                && (!self.core.holds_anything() || Instant::now() >= until)
            {
                self.core.handle_shutdown(now());
                self.dispatch();
                self.set_gauges();
                return;
            }
            if stale && checked.elapsed() >= TIMER_RECHECK {
                timer = self.core.poll_timeout().map(Instant::from_std);
                checked = Instant::now();
                stale = false;
            }
            let wake = match (timer, stale) {
                (Some(t), true) => Some(t.min(checked + TIMER_RECHECK)),
                (None, true) => Some(checked + TIMER_RECHECK),
                (t, false) => t,
            };
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { return };
                    self.handle(event);
                    stale = true;
                }
                Some(done) = refresh.recv() => {
                    self.set_gauges();
                    let _ = done.send(());
                }
                Some(answer) = answers.recv() => {
                    self.core.handle_codings_stored(answer.conn, answer.batch, answer.outcome);
                }
                _ = async { router_news.as_ref()?.notified().await; Some(()) }, if router_news.is_some() => {
                    self.core.handle_timeout(now());
                    stale = true;
                }
                _ = async { tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)).await }, if wake.is_some() => {
                    if timer.is_some_and(|t| t <= Instant::now()) {
                        self.core.handle_timeout(now());
                    }
                    timer = self.core.poll_timeout().map(Instant::from_std);
                    checked = Instant::now();
                    stale = false;
                }
                _ = async { tokio::time::sleep_until(draining.unwrap_or_else(Instant::now)).await }, if draining.is_some() => {}
                _ = shutdown.changed(), if draining.is_none() => {
                    // What was already read is handled before the end.
                    while let Ok(event) = events.try_recv() {
                        self.handle(event);
                        self.dispatch();
                    }
                    if self.cluster.is_some() {
                        self.metrics.set_ready(false);
                        self.core.handle_drain(now());
                        self.dispatch();
                        draining = Some(Instant::now() + self.drain_for);
                        continue;
                    }
                    self.core.handle_shutdown(now());
                    self.dispatch();
                    self.metrics.set_ready(false);
                    self.set_gauges();
                    return;
                }
            }
            self.dispatch();
        }
    }

    fn set_gauges(&self) {
        let mut gauges = self.core.gauges(now());
        gauges.handshaking = self.handshakes.load(Ordering::Relaxed);
        self.metrics.set_gauges(&gauges);
        if let Some((status, _)) = &self.cluster {
            self.metrics.set_cluster(&status.snapshot());
        }
    }

    /// The core took a chunk (or the end of the stream): the connection
    /// task may read the next one, unless the core paused it.
    fn after_read(&mut self, conn: ConnId, flow: Flow) {
        if let Some(entry) = self.conns.get_mut(&conn) {
            match flow {
                Flow::Read => entry.permits.add_permits(1),
                Flow::Pause => entry.owed += 1,
            }
        }
    }

    fn handle(&mut self, event: Event) {
        let now = now();
        match event {
            Event::Connected {
                credential,
                source,
                serial,
                outlet,
                control,
                permits,
                carrier,
                reply,
            } => {
                // Revoked between its TLS handshake and now: no sign-in.
                if serial.as_ref().is_some_and(|s| self.revoked.contains(s)) {
                    carrier.close(CloseCode::Revoked);
                    self.metrics.closed(CloseCode::Revoked);
                    let _ = reply.send(None);
                    return;
                }
                let id = self.core.handle_connect_from(now, credential, source).ok();
                if let Some(id) = id {
                    self.conns.insert(
                        id,
                        ConnEntry {
                            outlet,
                            control,
                            carrier,
                            serial,
                            permits,
                            owed: 0,
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
            Event::Frames {
                conn,
                frames,
                invalid,
            } => {
                let flow = self.core.handle_frames(now, conn, frames, invalid);
                self.after_read(conn, flow);
            }
            Event::Barrier { conn, chat } => {
                if let Some(entry) = self.conns.get(&conn) {
                    entry.control.send(Control::BarrierPassed { chat });
                }
            }
            Event::SlowConsumer { conn } => self.slow_consumer(conn),
            Event::Finished { conn } => {
                let flow = self.core.handle_finish(now, conn);
                self.after_read(conn, flow);
            }
            Event::Disconnected { conn, departure } => {
                self.forget(conn);
                self.core.handle_disconnect(now, conn, departure);
            }
        }
    }

    /// A connection whose queue is full is not reading: it is closed, and
    /// its chats wait for it to come back on a better connection.
    fn slow_consumer(&mut self, conn: ConnId) {
        if let Some(entry) = self.forget(conn) {
            entry.carrier.close(CloseCode::SlowConsumer);
            self.metrics.closed(CloseCode::SlowConsumer);
            self.core.handle_disconnect(now(), conn, Departure::Lost);
        }
    }

    /// Drops a connection's entry; its outlet takes no more deliveries.
    fn forget(&mut self, conn: ConnId) -> Option<ConnEntry> {
        let entry = self.conns.remove(&conn)?;
        entry.outlet.shut_all();
        Some(entry)
    }

    /// The core granted or withdrew a route: the receiving outlet opens or
    /// shuts the chat, and the sending task hears of it.
    fn route(&mut self, conn: ConnId, chat: ChatNumber, to: Option<Route>) {
        if let Some(old) = self.routes.remove(&(conn, chat))
            && let Some(peer) = self.conns.get(&old.conn)
        {
            peer.outlet.shut(old.chat);
        }
        let granted = to.and_then(|to| {
            let peer = self.conns.get(&to.conn)?;
            peer.outlet.open(to.chat);
            Some(FastRoute {
                peer: to.conn,
                chat: to.chat,
                outlet: peer.outlet.clone(),
            })
        });
        if let Some(route) = &granted {
            self.routes.insert(
                (conn, chat),
                Route {
                    conn: route.peer,
                    chat: route.chat,
                },
            );
        }
        if let Some(entry) = self.conns.get(&conn) {
            entry.control.send(Control::Route { chat, to: granted });
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
                    // lets it fill is not reading. Its chats wait for it to
                    // come back on a better connection. A writer that is
                    // gone belongs to a connection that is going: its reader
                    // reports how it ended.
                    if let Err(mpsc::error::TrySendError::Full(_)) =
                        entry.outlet.push(Outbound::Bytes(bytes))
                    {
                        self.slow_consumer(conn);
                    }
                }
                Output::Unblock { conn } => {
                    if let Some(entry) = self.conns.get_mut(&conn) {
                        entry.permits.add_permits(std::mem::take(&mut entry.owed));
                    }
                }
                Output::Close { conn, code, flush } => {
                    if let Some(entry) = self.forget(conn)
                        && (!flush || entry.outlet.push(Outbound::Close(code)).is_err())
                    {
                        entry.carrier.close(code);
                    }
                }
                Output::Route { conn, chat, to } => self.route(conn, chat, to),
                Output::StoreCodings {
                    conn,
                    batch,
                    form,
                    codings,
                } => {
                    let answers = self.answers.clone();
                    // The channel holds more answers than can be waiting.
                    let answer = Box::new(move |outcome| {
                        let _ = answers.try_send(CodingsAnswer {
                            conn,
                            batch,
                            outcome,
                        });
                    });
                    let job = crate::stats::keeper::Job {
                        batch,
                        form,
                        codings,
                        answer,
                    };
                    match &self.codings {
                        Some(StatsSink::Store(keeper)) => keeper.submit(job),
                        Some(StatsSink::Cluster(link)) => link.submit(job),
                        None => (job.answer)(crate::core::coding::CodingsOutcome::Later),
                    }
                }
            }
        }
    }
}

/// The reading half of a connection task, without sockets: which frames it
/// delivers itself and which go to the driver, and in what order.
#[cfg(test)]
mod reader_tests {
    use super::*;
    use crate::core::frame::{BLOB_LEN, Blob, EndReason};

    fn chat(n: u32) -> ChatNumber {
        ChatNumber::new(n).unwrap_or(ChatNumber::FIRST)
    }

    fn forward(n: u32, byte: u8) -> Frame {
        Frame::Forward {
            chat: chat(n),
            blob: Blob::new([byte; BLOB_LEN]),
        }
    }

    fn bytes(frames: &[Frame]) -> Vec<u8> {
        frames.iter().flat_map(Frame::encode).collect()
    }

    /// A reader for connection 1 whose chat 1 leads to a peer's chat 7.
    struct Fixture {
        reader: Reader,
        driver: mpsc::Receiver<Event>,
        peer: Arc<Outlet>,
        peer_queue: mpsc::Receiver<Outbound>,
        permits: Semaphore,
    }

    fn fixture() -> Fixture {
        fixture_with_control(1000, 1000)
    }

    fn fixture_with_control(control_per_sec: u32, control_burst: u32) -> Fixture {
        let (events, driver) = mpsc::channel(16);
        let (peer_tx, peer_queue) = mpsc::channel(16);
        let settings = TaskSettings {
            max_buffered: 8,
            max_capacity: 1,
            forward_per_sec: 1000,
            forward_burst: 1000,
            control_per_sec,
            control_burst,
            observer: None,
            handshakes: Arc::new(AtomicUsize::new(0)),
            metrics: Arc::new(metrics::Metrics::new(&[])),
        };
        // A young person's connection that said HELLO.
        let mut stage = Stage::new(&Credential::Anonymous);
        let hello = ToRelay::Hello {
            version: crate::core::frame::PROTOCOL_VERSION,
            role: crate::core::frame::Role::Client,
        };
        assert_eq!(stage.check(&hello), Ok(()));
        let reader = Reader::new(ConnId::for_tests(1), stage, settings, events);
        Fixture {
            reader,
            driver,
            peer: Arc::new(Outlet::new(peer_tx)),
            peer_queue,
            permits: Semaphore::new(0),
        }
    }

    impl Fixture {
        /// The driver grants the route (opening the peer's chat) and the
        /// barrier passes.
        async fn grant(&mut self) {
            self.peer.open(chat(7));
            let to = FastRoute {
                peer: ConnId::for_tests(2),
                chat: chat(7),
                outlet: self.peer.clone(),
            };
            let message = Control::Route {
                chat: chat(1),
                to: Some(to),
            };
            assert!(self.reader.on_control(message).await);
        }

        fn sent_to_driver(&mut self) -> Vec<Frame> {
            let mut frames = Vec::new();
            while let Ok(event) = self.driver.try_recv() {
                if let Event::Frames { frames: f, .. } = event {
                    frames.extend(f.into_iter().map(Frame::from));
                }
            }
            frames
        }

        fn delivered_to_peer(&mut self) -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            while let Ok(Outbound::Bytes(b)) = self.peer_queue.try_recv() {
                out.push(b);
            }
            out
        }
    }

    #[tokio::test]
    async fn a_frame_the_connection_could_never_send_stops_it_in_its_own_task() {
        let mut f = fixture();
        // A young person's connection cannot say what a counsellor can.
        let status = Frame::Status {
            available: true,
            capacity: 1,
            topics: Vec::new(),
            languages: Vec::new(),
        };
        let chunk = bytes(&[forward(1, 1), status, forward(1, 2)]);
        assert!(f.reader.on_chunk(&chunk, &f.permits).await);
        match f.driver.try_recv() {
            Ok(Event::Frames {
                frames, invalid, ..
            }) => {
                let frames: Vec<Frame> = frames.into_iter().map(Frame::from).collect();
                assert_eq!(
                    frames,
                    vec![forward(1, 1)],
                    "what came before it, not after"
                );
                assert_eq!(invalid, Some(CloseCode::UnexpectedFrame));
            }
            _ => panic!("the driver hears of it, to close the connection"),
        }
        assert!(f.reader.broken);
    }

    #[tokio::test]
    async fn frames_over_the_control_budget_wait_in_the_connection_task() {
        // One frame a second, none saved up beyond one.
        let mut f = fixture_with_control(1, 1);
        let end = |n| Frame::End {
            chat: chat(n),
            reason: EndReason::UserEnded,
        };
        assert!(f.reader.on_chunk(&bytes(&[end(1)]), &f.permits).await);
        assert_eq!(f.sent_to_driver(), vec![end(1)], "within the budget");
        let second = bytes(&[end(2)]);
        let waited = tokio::time::timeout(
            Duration::from_millis(20),
            f.reader.on_chunk(&second, &f.permits),
        )
        .await;
        assert!(waited.is_err(), "the second waits for its budget");
        assert_eq!(f.sent_to_driver(), vec![], "and the driver never saw it");
    }

    #[tokio::test]
    async fn frames_before_a_route_go_to_the_driver_and_the_barrier_follows_them() {
        let mut f = fixture();
        assert!(
            f.reader
                .on_chunk(&bytes(&[forward(1, 1)]), &f.permits)
                .await
        );
        f.grant().await;
        assert_eq!(f.reader.barriers, 1, "reading waits for the barrier");
        // In the driver's queue: the early frame first, then the barrier.
        match f.driver.try_recv() {
            Ok(Event::Frames { frames, .. }) => {
                let frames: Vec<Frame> = frames.into_iter().map(Frame::from).collect();
                assert_eq!(frames, vec![forward(1, 1)])
            }
            _ => panic!("the early frame first"),
        }
        assert!(matches!(f.driver.try_recv(), Ok(Event::Barrier { .. })));
        assert!(f.delivered_to_peer().is_empty());
        // Until the barrier passes, nothing is delivered straight.
        assert!(
            f.reader
                .on_chunk(&bytes(&[forward(1, 2)]), &f.permits)
                .await
        );
        assert_eq!(f.sent_to_driver(), vec![forward(1, 2)]);
    }

    #[tokio::test]
    async fn once_the_barrier_passed_frames_go_straight_and_an_end_sends_the_rest_through_the_driver()
     {
        let mut f = fixture();
        f.grant().await;
        let passed = Control::BarrierPassed { chat: chat(1) };
        assert!(f.reader.on_control(passed).await);
        f.sent_to_driver();
        let end = Frame::End {
            chat: chat(1),
            reason: EndReason::UserEnded,
        };
        let chunk = bytes(&[forward(1, 1), end.clone(), forward(1, 2)]);
        assert!(f.reader.on_chunk(&chunk, &f.permits).await);
        // The first under the peer's chat number, straight; the END and
        // what the sender wrote after it, through the core.
        assert_eq!(f.delivered_to_peer(), vec![forward(7, 1).encode()]);
        assert_eq!(f.sent_to_driver(), vec![end, forward(1, 2)]);
    }

    #[tokio::test]
    async fn a_chat_the_peer_shut_goes_through_the_driver_from_then_on() {
        let mut f = fixture();
        f.grant().await;
        let passed = Control::BarrierPassed { chat: chat(1) };
        assert!(f.reader.on_control(passed).await);
        f.sent_to_driver();
        // The driver withdrew the route (END, PEER_AWAY) before the
        // message reached the task.
        f.peer.shut(chat(7));
        let chunk = bytes(&[forward(1, 1), forward(1, 2)]);
        assert!(f.reader.on_chunk(&chunk, &f.permits).await);
        assert!(f.delivered_to_peer().is_empty());
        assert_eq!(f.sent_to_driver(), vec![forward(1, 1), forward(1, 2)]);
        // Even if the chat opens again: a new route and barrier first.
        f.peer.open(chat(7));
        assert!(
            f.reader
                .on_chunk(&bytes(&[forward(1, 3)]), &f.permits)
                .await
        );
        assert_eq!(f.sent_to_driver(), vec![forward(1, 3)]);
    }
}
