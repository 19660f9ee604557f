//! `fluister-bench`: how fast and how lean the relay is, as ratios against
//! a baseline measured in the same run (BENCHMARKS.md). A binary of its
//! own, so that none of it ships in the `fluister` binary.
//!
//! It makes a throw-away organisation, then for each measurement starts a
//! fresh relay process (`fluister relay`, limits raised so they do not
//! throttle) or the baseline echo process (`fluister-bench echo`, see
//! [`baseline`]) and drives it from this process over loopback
//! ([`load`]):
//! 0. core: what one step of the relay core costs at 100 to 10,000
//!    connections, without sockets ([`micro`]);
//! 1. forwarding: frames delivered per second with 1, 100 and 1,000 paired
//!    chats, closed loop;
//! 2. latency: p50/p99/p99.9 at 10, 50 and 90 % of the 100-chat maximum,
//!    open loop;
//! 3. web: forwarding over WebSocket and over WebTransport against native
//!    QUIC, 100 chats each on one relay, in interleaved rounds;
//! 4. memory: the process's resident memory per idle paired chat and per
//!    waiting client, at 1,000 and 10,000;
//! 5. surge: new chats per second, proof of work off and on;
//! 6. attack: a young person's time to be paired while 1,500 connections
//!    sit idle after HELLO and a paced attacker fills the queue, and what
//!    each place cost the attacker, with the per-address limit off and on.
//!
//! Results are a table on stdout and a JSON file. `--smoke` runs a few
//! chats for a few seconds and checks that every frame arrived.

pub mod baseline;
mod cluster;
pub mod load;
pub mod micro;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand_core::OsRng;
use serde::Serialize;
use thiserror::Error;

use fluister::core::frame::{BLOB_LEN, Blob, ChatNumber, Frame, HEADER_LEN};
use fluister::org::{self, Identity};
use fluister::tls;

/// Every FORWARD frame, header included.
pub const FRAME_LEN: usize = HEADER_LEN + 4 + BLOB_LEN;

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("{0}")]
    Lost(String),
    #[error(transparent)]
    Client(#[from] fluister::client::ClientError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Org(#[from] org::OrgError),
    #[error("{0}")]
    Other(String),
}

impl BenchError {
    pub fn other(e: impl std::fmt::Display) -> BenchError {
        BenchError::Other(e.to_string())
    }
}

/// A blob whose first bytes are the send time (nanoseconds since `epoch`)
/// and a sequence number; the rest is filler.
pub fn blob_with_stamp(epoch: Instant, seq: u64) -> Blob {
    let mut bytes = [0x5au8; BLOB_LEN];
    let nanos = epoch.elapsed().as_nanos() as u64;
    bytes[..8].copy_from_slice(&nanos.to_be_bytes());
    bytes[8..16].copy_from_slice(&seq.to_be_bytes());
    Blob::new(bytes)
}

/// A whole FORWARD frame with a stamped blob (the baseline sends these).
pub fn frame_with_stamp(epoch: Instant, seq: u64) -> Vec<u8> {
    Frame::Forward {
        chat: ChatNumber::FIRST,
        blob: blob_with_stamp(epoch, seq),
    }
    .encode()
}

/// Where the blob starts in a whole FORWARD frame.
pub const BLOB_OFFSET: usize = HEADER_LEN + 4;

/// Microseconds since the stamp at the start of `blob`.
pub fn stamp_of(epoch: Instant, blob: &[u8]) -> u32 {
    let mut stamp = [0u8; 8];
    stamp.copy_from_slice(&blob[..8]);
    let sent = Duration::from_nanos(u64::from_be_bytes(stamp));
    let micros = epoch.elapsed().saturating_sub(sent).as_micros();
    u32::try_from(micros).unwrap_or(u32::MAX)
}

/// Runs `round_trip` on every item over and over for `duration` (each
/// item in its own task, `seq` counting up); returns frames delivered per
/// second, two per round trip, and the items for the next measurement.
pub async fn closed_loop<C, F, Fut>(
    items: Vec<C>,
    duration: Duration,
    round_trip: F,
) -> Result<(f64, Vec<C>), BenchError>
where
    C: Send + 'static,
    F: Fn(C, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<C, BenchError>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for mut item in items {
        let (stop, delivered, round_trip) = (stop.clone(), delivered.clone(), round_trip.clone());
        tasks.push(tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                item = round_trip(item, seq).await?;
                delivered.fetch_add(2, Ordering::Relaxed);
            }
            Ok::<_, BenchError>(item)
        }));
    }
    tokio::time::sleep(duration).await;
    let counted = delivered.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut back = Vec::new();
    for t in tasks {
        back.push(t.await.map_err(BenchError::other)??);
    }
    Ok((counted as f64 / duration.as_secs_f64(), back))
}

/// Runs `arrive` `count` times, at most `parallel` at once; returns
/// arrivals per second.
pub async fn surge<F, Fut>(count: usize, parallel: usize, arrive: F) -> Result<f64, BenchError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), BenchError>> + Send + 'static,
{
    let gate = Arc::new(tokio::sync::Semaphore::new(parallel));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..count {
        let (gate, arrival) = (gate.clone(), arrive());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(BenchError::other)?;
            arrival.await
        }));
    }
    for t in tasks {
        t.await.map_err(BenchError::other)??;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// Latency samples of an open-loop run, in microseconds.
#[derive(Debug, Default)]
pub struct Latencies {
    pub sent: u64,
    pub samples: Vec<u32>,
}

impl Latencies {
    /// p50, p99 and p99.9 in microseconds.
    fn percentiles(&mut self) -> [f64; 3] {
        self.samples.sort_unstable();
        let at = |q: f64| {
            if self.samples.is_empty() {
                return 0.0;
            }
            let i = ((self.samples.len() as f64 - 1.0) * q).round() as usize;
            f64::from(self.samples[i])
        };
        [at(0.5), at(0.99), at(0.999)]
    }
}

/// How long and how big.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub smoke: bool,
    /// Run only these parts: core, forwarding, latency, web, memory, surge, attack (all if empty).
    pub only: Vec<String>,
    pub seconds: f64,
    pub json: PathBuf,
}

/// One line of the table.
#[derive(Debug, Serialize)]
pub struct Row {
    pub measurement: String,
    pub unit: String,
    pub fluister: f64,
    pub baseline: f64,
    /// fluister / baseline.
    pub ratio: f64,
    /// What the issue asks for, if anything.
    pub target: String,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    tool: &'static str,
    version: &'static str,
    smoke: bool,
    seconds_per_measurement: f64,
    machine: Machine,
    rows: &'a [Row],
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    kernel: String,
    cpu_model: String,
}

fn machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        cpu_model,
    }
}

/// A child process (relay or echo) that is killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts `fluister relay ...` (the `fluister` binary next to this
    /// one) or this binary's own `echo`.
    fn start(args: &[&str]) -> Result<Server, BenchError> {
        let this = std::env::current_exe().map_err(BenchError::other)?;
        let exe = match args.first() {
            Some(&"relay") => {
                this.with_file_name(format!("fluister{}", std::env::consts::EXE_SUFFIX))
            }
            _ => this,
        };
        let mut child = Command::new(exe)
            .args(args)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(BenchError::other)?;
        let stdout = child
            .stdout
            .take()
            .ok_or(BenchError::Lost("stdout".into()))?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(BenchError::other)?;
        let addr = line
            .split_whitespace()
            .find_map(|w| w.parse::<SocketAddr>().ok())
            .ok_or_else(|| BenchError::Lost(format!("no address in {line:?}")))?;
        Ok(Server { child, addr })
    }

    /// CPU time (user and system) the process has used, in seconds.
    fn cpu_secs(&self) -> Result<f64, BenchError> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .map_err(BenchError::other)?;
        // Fields after the command name (which may hold spaces): state is
        // field 3, utime 14 and stime 15, in clock ticks of 1/100 s.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| BenchError::Lost("no /proc stat".into()))?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok((ticks(11) + ticks(12)) / 100.0)
    }

    /// Resident memory in bytes.
    fn rss(&self) -> Result<f64, BenchError> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .map_err(BenchError::other)?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb * 1024.0)
            .ok_or_else(|| BenchError::Lost("no VmRSS".into()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Idle timeout and keep-alive of the load's connections (forwarding,
/// latency, memory, surge): 60 s and 15 s, not the defaults' 20 s and 5 s.
/// Thousands of connections opened within seconds keep their keep-alives in
/// step; every 5 s they would arrive as one burst, overflow the loopback
/// socket buffers of a load generator that shares the two cores with the
/// relay, and time connections out. Memory and forwarding do not depend on
/// them; the attack part uses the defaults.
const LOAD_LIVENESS: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(15));

/// The throw-away organisation and what the load needs from it.
struct Setup {
    dir: tempfile::TempDir,
    ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    org: fluister::crypto::cert::OrgPublicKey,
    identities: Vec<PathBuf>,
}

impl Setup {
    fn new(counsellors: usize) -> Result<Setup, BenchError> {
        let dir = tempfile::Builder::new()
            .prefix("fluister-bench-")
            .tempdir()
            .map_err(BenchError::other)?;
        let report = org::init(dir.path(), &org::loopback_hosts(), &mut OsRng)?;
        let mut identities = Vec::new();
        for i in 0..counsellors {
            identities.push(org::add_counsellor(
                dir.path(),
                &format!("Bench {i}"),
                1,
                None,
                &mut OsRng,
            )?);
        }
        let ca = tls::certs_from_pem(
            "relay certificate",
            &tls::read_pem(&dir.path().join(org::RELAY_CERT_FILE))?,
        )?;
        Ok(Setup {
            dir,
            ca,
            org: report.org_public_key,
            identities,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a relay config with limits that do not throttle the load.
    fn relay_config(&self, pow: bool) -> Result<PathBuf, BenchError> {
        let (pow_min, pow_max) = if pow { (8, 20) } else { (0, 0) };
        let text = format!(
            "{}\
             [limits]\n\
             max_connections = 30000\nmax_anonymous_connections = 25000\nmax_queue = 25000\n\
             max_capacity = 32\n\
             admissions_per_sec = 10000\nadmissions_burst = 100000\n\
             forward_frames_per_sec = 1000000\nforward_frames_burst = 1000000\n\
             control_frames_per_sec = 1000000\ncontrol_frames_burst = 1000000\n\
             pow_min_difficulty = {pow_min}\npow_max_difficulty = {pow_max}\n\
             queue_rent_secs = 0\nper_address_places = 0\n\
             hello_timeout_secs = 60\nhandshake_timeout_secs = 600\n\
             [transport]\n\
             max_buffered_frames = 1024\nretry_above_handshakes = 100000\n\
             idle_timeout_secs = {idle}\nkeep_alive_secs = {keep_alive}\n",
            self.config_head(),
            idle = LOAD_LIVENESS.0.as_secs(),
            keep_alive = LOAD_LIVENESS.1.as_secs(),
        );
        let path = self.path(if pow { "bench-pow.toml" } else { "bench.toml" });
        std::fs::write(&path, text).map_err(BenchError::other)?;
        Ok(path)
    }

    /// The top of every bench config: listen address, files, no admin.
    fn config_head(&self) -> String {
        format!(
            "listen = \"127.0.0.1:0\"\n\
             tls_cert = \"{}\"\ntls_key = \"{}\"\ncounsellor_ca = \"{}\"\n\
             log_level = \"error\"\n\
             [admin]\nenabled = false\n",
            self.path(org::RELAY_CERT_FILE).display(),
            self.path(org::RELAY_KEY_FILE).display(),
            self.path(org::CA_CERT_FILE).display(),
        )
    }

    /// A relay with the default limits, as a helpline runs it, with the
    /// limit on places per source on (the default) or off.
    fn default_relay(&self, places_per_source: bool) -> Result<Server, BenchError> {
        let mut text = self.config_head();
        if !places_per_source {
            text.push_str("[limits]\nper_address_places = 0\n");
        }
        let path = self.path(if places_per_source {
            "bench-defaults.toml"
        } else {
            "bench-defaults-no-source-limit.toml"
        });
        std::fs::write(&path, text).map_err(BenchError::other)?;
        Server::start(&["relay", "--config", &path.display().to_string()])
    }

    fn relay(&self, pow: bool) -> Result<Server, BenchError> {
        let config = self.relay_config(pow)?;
        Server::start(&["relay", "--config", &config.display().to_string()])
    }

    /// A relay of the cluster `prefix` on the NATS server at `nats`, with
    /// the bench's limits.
    fn cluster_relay(&self, nats: &str, prefix: &str, name: &str) -> Result<Server, BenchError> {
        let secret = self.path("cluster.secret");
        if !secret.exists() {
            let mut key = [0u8; 32];
            rand_core::RngCore::fill_bytes(&mut OsRng, &mut key);
            std::fs::write(&secret, hex::encode(key)).map_err(BenchError::other)?;
        }
        let base = std::fs::read_to_string(self.relay_config(false)?).map_err(BenchError::other)?;
        let text = format!(
            "{base}[cluster]\nservers = [\"{nats}\"]\nsecret_file = \"{}\"\nprefix = \"{prefix}\"\n",
            secret.display()
        );
        let path = self.path(&format!("bench-cluster-{prefix}-{name}.toml"));
        std::fs::write(&path, text).map_err(BenchError::other)?;
        Server::start(&["relay", "--config", &path.display().to_string()])
    }

    fn echo(&self) -> Result<Server, BenchError> {
        Server::start(&[
            "echo",
            "--cert",
            &self.path(org::RELAY_CERT_FILE).display().to_string(),
            "--key",
            &self.path(org::RELAY_KEY_FILE).display().to_string(),
        ])
    }

    fn client_config(
        &self,
        credential: Option<&Identity>,
    ) -> Result<quinn::ClientConfig, BenchError> {
        let credential = credential.map(Identity::relay_credential).transpose()?;
        let transport = tls::transport_config(tls::TransportSizes {
            idle_timeout: LOAD_LIVENESS.0,
            keep_alive: LOAD_LIVENESS.1,
            ..Default::default()
        });
        Ok(tls::client_config(
            Some(self.ca.clone()),
            credential,
            transport,
        )?)
    }

    /// A few client endpoints shared by many connections.
    fn endpoints(&self, n: usize) -> Result<Vec<quinn::Endpoint>, BenchError> {
        let config = self.client_config(None)?;
        (0..n)
            .map(|_| client_endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), config.clone()))
            .collect()
    }

    fn counsellor_configs(&self, count: usize) -> Result<Vec<quinn::ClientConfig>, BenchError> {
        self.identities[..count]
            .iter()
            .map(|p| self.client_config(Some(&Identity::load(p)?)))
            .collect()
    }
}

fn counsellors_for(chats: usize, capacity: u8) -> usize {
    chats.div_ceil(usize::from(capacity)).max(1)
}

/// A relay with `chats` paired chats, ready for load.
async fn paired_relay(
    setup: &Setup,
    chats: usize,
    epoch: Instant,
) -> Result<(Server, load::Counsellors, Vec<load::ChatClient>), BenchError> {
    let relay = setup.relay(false)?;
    let (counsellors, clients) = pair(
        setup,
        &relay,
        &setup.endpoints(4)?,
        (chats, load::CAPACITY),
        epoch,
    )
    .await?;
    Ok((relay, counsellors, clients))
}

/// Signs in enough counsellors taking `capacity` chats each for `chats`,
/// and pairs that many young people.
async fn pair(
    setup: &Setup,
    relay: &Server,
    endpoints: &[quinn::Endpoint],
    (chats, capacity): (usize, u8),
    epoch: Instant,
) -> Result<(load::Counsellors, Vec<load::ChatClient>), BenchError> {
    let configs = setup.counsellor_configs(counsellors_for(chats, capacity))?;
    let counsellors = load::counsellors(endpoints, relay.addr, configs, capacity, epoch).await?;
    let clients = load::clients(endpoints, relay.addr, chats, true).await?;
    Ok((counsellors, clients))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// A client endpoint for load, with the relay's socket buffers: many
/// connections share it, and with the default buffers their keep-alives,
/// arriving together, crowd out handshake packets.
fn client_endpoint(
    addr: SocketAddr,
    config: quinn::ClientConfig,
) -> Result<quinn::Endpoint, BenchError> {
    let socket = fluister::relay::bind_udp(addr).map_err(BenchError::other)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| BenchError::other(std::io::Error::other("no async runtime")))?;
    let mut endpoint =
        quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
            .map_err(BenchError::other)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs every measurement and writes the report.
/// The parts that drive relay processes over loopback.
const NETWORK_PARTS: [&str; 7] = [
    "forwarding",
    "latency",
    "web",
    "memory",
    "surge",
    "attack",
    "cluster",
];

pub async fn run(options: BenchOptions) -> Result<Vec<Row>, BenchError> {
    let part = |name: &str| options.only.is_empty() || options.only.iter().any(|o| o == name);
    let mut rows = Vec::new();
    if part("core") {
        rows.extend(core_rows(options.smoke));
    }
    if NETWORK_PARTS.iter().any(|p| part(p)) {
        rows.extend(network_rows(&options).await?);
    }
    print_table(&rows);
    let report = Report {
        tool: "fluister-bench",
        version: env!("CARGO_PKG_VERSION"),
        smoke: options.smoke,
        seconds_per_measurement: options.seconds,
        machine: machine(),
        rows: &rows,
    };
    write_json(&options.json, &report)?;
    Ok(rows)
}

/// 0: the core micro-benchmark ([`micro`]), each step against the same
/// step at about 100 connections.
fn core_rows(smoke: bool) -> Vec<Row> {
    let shapes = micro::shapes(smoke);
    let measured: Vec<(String, micro::Costs)> = shapes
        .into_iter()
        .map(|(label, shape)| {
            eprintln!("bench: core at {label}");
            (label, micro::measure(shape, smoke))
        })
        .collect();
    let Some((base_label, base)) = measured.first().cloned() else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for (label, costs) in &measured {
        let waiting = label.contains("waiting");
        let steps: [(&str, f64, f64, String); 4] = [
            (
                "one FORWARD",
                costs.forward,
                base.forward,
                "≤ 2× at 10,000".into(),
            ),
            (
                "one poll_timeout",
                costs.poll_timeout,
                base.poll_timeout,
                "≤ 2× at 10,000".into(),
            ),
            (
                "one timer step, nothing due",
                costs.timer_step,
                base.timer_step,
                "≤ 2× at 10,000".into(),
            ),
            (
                "one HELLO+JOIN",
                costs.hello_join,
                base.hello_join,
                if waiting {
                    "< 20 µs".into()
                } else {
                    "≤ 2× at 10,000".into()
                },
            ),
        ];
        for (step, fluister, baseline, target) in steps {
            if !fluister.is_finite() {
                continue;
            }
            let row = Row {
                measurement: format!("core: {step} at {label}; baseline at {base_label}"),
                unit: "µs".into(),
                fluister,
                baseline,
                ratio: fluister / baseline,
                target,
            };
            eprintln!(
                "bench: {}: {} vs {} µs ({:.2})",
                row.measurement,
                figure(row.fluister),
                figure(row.baseline),
                row.ratio
            );
            rows.push(row);
        }
    }
    rows
}

async fn network_rows(options: &BenchOptions) -> Result<Vec<Row>, BenchError> {
    let secs = Duration::from_secs_f64(options.seconds);
    let rounds: u32 = if options.smoke { 1 } else { 3 };
    let part = |name: &str| options.only.is_empty() || options.only.iter().any(|o| o == name);
    let chat_counts: &[usize] = if options.smoke {
        &[1, 10]
    } else {
        &[1, 100, 1000]
    };
    let memory_counts: &[usize] = if options.smoke {
        &[50]
    } else {
        &[1000, 10_000]
    };
    let surge_count = if options.smoke { 20 } else { 1000 };
    // Chats per binding in the web part.
    let web_chats = if options.smoke { 4 } else { 100 };
    // Chats across two relays, and arrivals, in the cluster part.
    let (cluster_chats, cluster_arrivals) = if options.smoke { (10, 20) } else { (100, 500) };
    let chat_counts: &[usize] = if part("forwarding") || part("latency") {
        chat_counts
    } else {
        &[]
    };
    let memory_counts: &[usize] = if part("memory") { memory_counts } else { &[] };
    let needed = chat_counts
        .iter()
        .map(|&n| counsellors_for(n, load::CAPACITY))
        .chain(
            memory_counts
                .iter()
                .map(|&n| counsellors_for(n, load::MEMORY_CAPACITY)),
        )
        .chain(part("web").then(|| counsellors_for(3 * web_chats, load::CAPACITY)))
        .chain(part("cluster").then(|| counsellors_for(cluster_chats, load::CAPACITY)))
        .max()
        .unwrap_or(1)
        .max(8);
    eprintln!("bench: setting up an organisation with {needed} counsellors");
    let setup = Setup::new(needed)?;
    let epoch = Instant::now();
    let mut rows = Vec::new();
    // `ratio` given: the median of interleaved rounds; else fluister / baseline.
    let mut row = |measurement: String,
                   unit: &str,
                   fluister: f64,
                   baseline: f64,
                   ratio: Option<f64>,
                   target: &str| {
        let ratio = ratio.unwrap_or(if baseline > 0.0 {
            fluister / baseline
        } else {
            0.0
        });
        eprintln!(
            "bench: {measurement}: {} vs {} {unit} ({ratio:.2})",
            figure(fluister),
            figure(baseline)
        );
        rows.push(Row {
            measurement,
            unit: unit.into(),
            fluister,
            baseline,
            ratio,
            target: target.into(),
        });
    };

    // 1 and 2: forwarding and latency.
    let latency_at = *chat_counts.get(1).unwrap_or(&1);
    for &chats in chat_counts {
        let (relay, counsellors, mut clients) = paired_relay(&setup, chats, epoch).await?;
        let echo = setup.echo()?;
        let echo_endpoints = setup.endpoints(4)?;
        let mut conns = Vec::new();
        for i in 0..chats {
            conns.push(baseline::connect(&echo_endpoints[i % 4], echo.addr).await?);
        }
        // Relay and baseline take turns, so that a noisy moment hits both;
        // the figures are the means, the ratio the median of the rounds.
        let (mut relay_rates, mut echo_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (r, back) = load::closed_loop(clients, secs / rounds, epoch).await?;
            clients = back;
            let (e, back) = baseline::closed_loop(conns, secs / rounds).await?;
            conns = back;
            relay_rates.push(r);
            echo_rates.push(e);
            ratios.push(r / e);
        }
        let relay_rate = mean(&relay_rates);
        let echo_rate = mean(&echo_rates);
        drop(conns);
        let forwarding_ratio = median(&mut ratios);
        let target = if chats == 100 { ">= 0.4" } else { "" };
        row(
            format!("forwarding, {chats} chats, closed loop"),
            "frames/s",
            relay_rate,
            echo_rate,
            Some(forwarding_ratio),
            target,
        );
        if chats == latency_at && part("latency") {
            let mut clients = clients;
            for fraction in [0.1, 0.5, 0.9] {
                let (mut relay_lat, back) =
                    load::open_loop(clients, &counsellors, relay_rate * fraction, secs, epoch)
                        .await?;
                clients = back;
                let mut conns = Vec::new();
                for i in 0..chats {
                    conns.push(baseline::connect(&echo_endpoints[i % 4], echo.addr).await?);
                }
                let mut echo_lat = baseline::open_loop(conns, echo_rate * fraction, secs).await?;
                if echo_lat.samples.len() as u64 != echo_lat.sent {
                    return Err(BenchError::Lost("baseline lost frames".into()));
                }
                let pct = (fraction * 100.0) as u32;
                let [r50, r99, r999] = relay_lat.percentiles();
                let [b50, b99, b999] = echo_lat.percentiles();
                row(
                    format!(
                        "open loop at {pct} % ({chats} chats), sent {} frames: p50",
                        relay_lat.sent
                    ),
                    "µs",
                    r50,
                    b50,
                    None,
                    "",
                );
                row(
                    format!("open loop at {pct} % ({chats} chats): p99"),
                    "µs",
                    r99,
                    b99,
                    None,
                    if pct == 50 { "<= 2" } else { "" },
                );
                row(
                    format!("open loop at {pct} % ({chats} chats): p99.9"),
                    "µs",
                    r999,
                    b999,
                    None,
                    "",
                );
            }
        }
        drop(relay);
        drop(echo);
    }

    // 3: the web bindings against native QUIC, on one relay.
    if part("web") {
        let chats = web_chats;
        let relay = setup.relay(false)?;
        let endpoints = setup.endpoints(4)?;
        let configs = setup.counsellor_configs(counsellors_for(3 * chats, load::CAPACITY))?;
        let _counsellors =
            load::counsellors(&endpoints, relay.addr, configs, load::CAPACITY, epoch).await?;
        let mut native = load::clients(&endpoints, relay.addr, chats, true).await?;
        let mut ws =
            load::web_clients(relay.addr, &setup.ca, chats, load::WebBinding::WebSocket).await?;
        let mut wt =
            load::web_clients(relay.addr, &setup.ca, chats, load::WebBinding::WebTransport).await?;
        let (mut rates, mut ws_ratios, mut wt_ratios) =
            ([Vec::new(), Vec::new(), Vec::new()], Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (n, back) = load::closed_loop(native, secs / rounds, epoch).await?;
            native = back;
            let (w, back) = load::web_closed_loop(ws, secs / rounds, epoch).await?;
            ws = back;
            let (t, back) = load::web_closed_loop(wt, secs / rounds, epoch).await?;
            wt = back;
            rates[0].push(n);
            rates[1].push(w);
            rates[2].push(t);
            ws_ratios.push(w / n);
            wt_ratios.push(t / n);
        }
        let native_rate = mean(&rates[0]);
        row(
            format!("forwarding over WebSocket, {chats} chats, against native QUIC"),
            "frames/s",
            mean(&rates[1]),
            native_rate,
            Some(median(&mut ws_ratios)),
            "",
        );
        row(
            format!("forwarding over WebTransport, {chats} chats, against native QUIC"),
            "frames/s",
            mean(&rates[2]),
            native_rate,
            Some(median(&mut wt_ratios)),
            "",
        );
        drop((native, ws, wt));
    }

    // 4: memory.
    for &count in memory_counts {
        let endpoints = setup.endpoints(8)?;
        // Waiting clients: no counsellors, everyone queued.
        let relay = setup.relay(false)?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = relay.rss()?;
        let waiting = load::clients(&endpoints, relay.addr, count, false).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let per_waiting = (relay.rss()? - before) / count as f64;
        drop(waiting);
        drop(relay);
        // Idle paired chats.
        let relay = setup.relay(false)?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = relay.rss()?;
        let (counsellors, chats) = pair(
            &setup,
            &relay,
            &endpoints,
            (count, load::MEMORY_CAPACITY),
            epoch,
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let per_chat = (relay.rss()? - before) / count as f64;
        drop((chats, counsellors, relay));
        // Baseline: idle echo connections.
        let echo = setup.echo()?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = echo.rss()?;
        let mut conns = Vec::new();
        for i in 0..count {
            conns.push(baseline::connect(&endpoints[i % endpoints.len()], echo.addr).await?);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let per_conn = (echo.rss()? - before) / count as f64;
        drop((conns, echo));
        row(
            format!("memory per idle paired chat, {count} chats"),
            "KiB",
            per_chat / 1024.0,
            per_conn / 1024.0,
            None,
            "<= 64 KiB",
        );
        row(
            format!("memory per waiting client, {count} clients"),
            "KiB",
            per_waiting / 1024.0,
            per_conn / 1024.0,
            None,
            "",
        );
    }

    // 5: surge.
    let surges: &[bool] = if part("surge") { &[false, true] } else { &[] };
    for &pow in surges {
        let relay = setup.relay(pow)?;
        let identities = setup.identities[..8]
            .iter()
            .map(|p| Identity::load(p))
            .collect::<Result<Vec<_>, _>>()?;
        let _counsellors =
            load::surge_counsellors(relay.addr, setup.ca.clone(), identities).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu_before = relay.cpu_secs()?;
        let rate = load::surge(relay.addr, setup.ca.clone(), setup.org, surge_count, 64).await?;
        let relay_cpu = relay.cpu_secs()? - cpu_before;
        drop(relay);
        let echo = setup.echo()?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu_before = echo.cpu_secs()?;
        let echo_rate =
            baseline::surge(echo.addr, setup.client_config(None)?, surge_count, 64).await?;
        let echo_cpu = echo.cpu_secs()? - cpu_before;
        drop(echo);
        let per_cpu = |cpu: f64| {
            if cpu > 0.0 {
                surge_count as f64 / cpu
            } else {
                0.0
            }
        };
        row(
            format!(
                "new chats per CPU-second of the server process, proof of work {}",
                if pow { "on" } else { "off" }
            ),
            "chats/CPU-s",
            per_cpu(relay_cpu),
            per_cpu(echo_cpu),
            None,
            "",
        );
        row(
            format!(
                "new chats, proof of work {}",
                if pow { "on (8 to 20 bits)" } else { "off" }
            ),
            "chats/s",
            rate,
            echo_rate,
            None,
            if pow { "" } else { ">= 500 chats/s" },
        );
    }

    // 6: a cluster of two relays on NATS, against one relay.
    if part("cluster") {
        match cluster::Nats::start() {
            Some(nats) => {
                let (chats, arrivals) = (cluster_chats, cluster_arrivals);
                for (measurement, unit, fluister, baseline) in
                    cluster::measure(&setup, &nats, chats, arrivals, secs, epoch).await?
                {
                    row(measurement, unit, fluister, baseline, None, "");
                }
            }
            None => eprintln!("bench: no nats-server here: the cluster part is left out"),
        }
    }

    // 7: a young person's way in while the helpline is under attack.
    if part("attack") {
        let plan = if options.smoke {
            load::AttackPlan {
                idle: 100,
                attack: Duration::from_secs(4),
                rate: 8.0,
                patience: Duration::from_secs(40),
            }
        } else {
            load::AttackPlan {
                idle: 1500,
                attack: Duration::from_secs(60),
                rate: 8.0,
                patience: Duration::from_secs(120),
            }
        };
        let native = load::native_hash_rate(Duration::from_secs(1));
        row(
            "proof of work: hashes per second of the reference solver, native, one thread; baseline the slow phone the spec assumes".into(),
            "hashes/s",
            native,
            fluister::core::ratelimit::SLOW_DEVICE_HASHES_PER_SEC,
            None,
            "",
        );
        for places_per_source in [true, false] {
            let label = if places_per_source {
                "defaults (5 places per source)"
            } else {
                "no limit on places per source"
            };
            let quiet = setup.default_relay(places_per_source)?;
            let calm = load::attack(&setup, quiet.addr, &load::AttackPlan::none()).await?;
            drop(quiet);
            let relay = setup.default_relay(places_per_source)?;
            let attacked = load::attack(&setup, relay.addr, &plan).await?;
            drop(relay);
            let secs = |o: &load::AttackOutcome| o.pair_secs.unwrap_or(f64::INFINITY);
            // At the rate measured before the attack, on a quiet machine.
            let cpu_secs = attacked.hashes as f64 / native.max(1.0);
            row(
                format!(
                    "attack, {label}: a young person's time to be paired ({} idle connections, attacker {}/s); baseline without attack",
                    plan.idle, plan.rate
                ),
                "s",
                secs(&attacked),
                secs(&calm),
                None,
                "paired, bounded",
            );
            row(
                format!(
                    "attack, {label}: places the attacker held when the young person came ({}); baseline the queue's size",
                    attacked.legit_outcome
                ),
                "places",
                attacked.places as f64,
                fluister::core::limits::Limits::default().max_queue as f64,
                None,
                "",
            );
            row(
                format!(
                    "attack, {label}: attacker CPU per place bought ({} places, {:.3} CPU-s, {:.2e} hashes); baseline at the minimum difficulty",
                    attacked.bought, cpu_secs, attacked.hashes as f64
                ),
                "CPU-ms/place",
                1000.0 * cpu_secs / attacked.bought.max(1) as f64,
                1000.0 * 256.0 / native.max(1.0),
                None,
                "",
            );
        }
    }

    Ok(rows)
}

fn write_json(path: &Path, report: &Report<'_>) -> Result<(), BenchError> {
    let text = serde_json::to_string_pretty(report).map_err(BenchError::other)?;
    std::fs::write(path, text + "\n").map_err(BenchError::other)
}

fn print_table(rows: &[Row]) {
    println!(
        "| measurement | unit | fluister | baseline | ratio | target |\n|---|---|---:|---:|---:|---|"
    );
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {:.2} | {} |",
            r.measurement,
            r.unit,
            figure(r.fluister),
            figure(r.baseline),
            r.ratio,
            r.target
        );
    }
}

/// A figure with one decimal, or three significant digits when below one.
fn figure(x: f64) -> String {
    if !x.is_finite() || x == 0.0 || x.abs() >= 1.0 {
        return format!("{x:.1}");
    }
    let decimals = (2 - x.abs().log10().floor() as i32).clamp(1, 12) as usize;
    format!("{x:.decimals$}")
}
