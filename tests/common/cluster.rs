//! A NATS server with JetStream on loopback for the cluster tests: Debian's
//! `nats-server`, on a port it picks itself, with its store in a temporary
//! folder, killed when the test drops it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fluister::config::{ClusterConfig, RelayConfig};
use fluister::relay::{self, RunningRelay};

use super::Org;

pub struct Nats {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Nats {
    /// Starts `nats-server -js` on 127.0.0.1 and waits until it listens.
    pub fn start() -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let (child, port) = spawn(&dir, None);
        Nats { child, port, dir }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port, once `down` has passed
    /// since now (after [`Nats::stop`]; memory storage starts empty).
    pub fn restart(&mut self, down: Duration) {
        self.stop();
        std::thread::sleep(down);
        let (child, _) = spawn(&self.dir, Some(self.port));
        self.child = child;
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(dir: &tempfile::TempDir, port: Option<u16>) -> (Child, u16) {
    let port_arg = port.map_or("-1".to_owned(), |p| p.to_string());
    let mut child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the cluster tests need Debian's nats-server (apt install nats-server)");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // Reads the log until the end, so that the pipe never fills.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let marker = "Listening for client connections on 127.0.0.1:";
            if let Some(at) = line.find(marker) {
                let port: u16 = line[at + marker.len()..].trim().parse().unwrap();
                let _ = tx.send(port);
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("nats-server did not start listening");
    (child, port)
}

/// The org's relay config in a cluster on `nats` under `prefix`, admitting
/// many young people at once, all from loopback.
pub fn cluster_config(org: &Org, nats: &Nats, prefix: &str) -> RelayConfig {
    let mut config = org.config();
    config.limits.admissions_per_sec = 1000;
    config.limits.admissions_burst = 1000;
    config.limits.per_source_places = 0;
    config.cluster = Some(ClusterConfig {
        servers: vec![nats.url()],
        secret_file: cluster_secret(org),
        creds: None,
        tls_ca: None,
        tls_cert: None,
        tls_key: None,
        prefix: prefix.into(),
        replicas: 1,
    });
    config
}

/// The cluster's secret, in a file beside the org's.
pub fn cluster_secret(org: &Org) -> std::path::PathBuf {
    let path = org.dir.path().join("cluster.secret");
    if !path.exists() {
        let mut key = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
        std::fs::write(&path, hex::encode(key)).unwrap();
    }
    path
}

pub async fn start_cluster_relay(org: &Org, nats: &Nats, prefix: &str) -> RunningRelay {
    relay::start(&cluster_config(org, nats, prefix), Default::default())
        .await
        .unwrap()
}

/// A relay of the cluster running as its own process (`fluister relay`),
/// so that a test can kill it as SIGKILL would.
pub struct RelayProcess {
    child: Child,
    pub addr: std::net::SocketAddr,
}

impl RelayProcess {
    /// Starts `fluister relay` with the org's config in a cluster on
    /// `nats`: connections idle for 5 s count as lost, so that clients
    /// notice a dead relay soon.
    pub fn start(org: &Org, nats: &Nats, prefix: &str, name: &str) -> RelayProcess {
        let base =
            std::fs::read_to_string(org.dir.path().join(fluister::org::RELAY_CONFIG_FILE)).unwrap();
        let mut config: toml::Table = base.parse().unwrap();
        config.insert("listen".into(), "127.0.0.1:0".into());
        let table = |config: &mut toml::Table, key: &str| -> toml::Table {
            config
                .get(key)
                .and_then(|v| v.as_table())
                .cloned()
                .unwrap_or_default()
        };
        let mut admin = table(&mut config, "admin");
        admin.insert("enabled".into(), false.into());
        config.insert("admin".into(), admin.into());
        let mut web = table(&mut config, "web");
        web.insert("enabled".into(), false.into());
        config.insert("web".into(), web.into());
        let mut limits = table(&mut config, "limits");
        limits.insert("admissions_per_sec".into(), 1000.into());
        limits.insert("admissions_burst".into(), 1000.into());
        limits.insert("per_address_places".into(), 0.into());
        config.insert("limits".into(), limits.into());
        let mut transport = table(&mut config, "transport");
        transport.insert("idle_timeout_secs".into(), 5.into());
        transport.insert("keep_alive_secs".into(), 1.into());
        config.insert("transport".into(), transport.into());
        let mut cluster = toml::Table::new();
        cluster.insert(
            "servers".into(),
            toml::Value::Array(vec![nats.url().into()]),
        );
        cluster.insert(
            "secret_file".into(),
            cluster_secret(org).to_string_lossy().into_owned().into(),
        );
        cluster.insert("prefix".into(), prefix.into());
        config.insert("cluster".into(), cluster.into());
        let path = org.dir.path().join(format!("relay-{name}.toml"));
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();

        let mut child = Command::new(env!("CARGO_BIN_EXE_fluister"))
            .arg("relay")
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("Fluister relay listening on ") {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the relay process started")
            .parse()
            .unwrap();
        RelayProcess { child, addr }
    }

    /// Kills the relay at once, as SIGKILL does: it says nothing to
    /// anyone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
